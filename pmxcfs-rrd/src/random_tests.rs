//! Many pseudo-random inputs through the parser and the dump: no panic, and
//! every accepted update keeps the invariants the writer relies on. (The
//! fuzz target in `fuzz/` does the same with coverage guidance.)

use crate::dump::RrdDump;
use crate::parse::parse_update;
use crate::schema::RrdKind;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const KEY_PREFIXES: &[&str] = &[
    "pve2-node/",
    "pve-node-9.0/",
    "pve-node-",
    "pve-node-9.1/",
    "pve2.3-vm/",
    "pve-vm-9.0/",
    "pve-vm-",
    "pve-vm-10/",
    "pve2-storage/",
    "pve-storage-9.0/",
    "pve-storage-",
    "pve-storage-x/",
    "",
    "/",
    "pve2-",
];

const KEY_PARTS: &[&str] = &[
    "n1", "100", "/", ".", "..", "local", " ", "\n", "\0", "é", ":", "a", "-", "\u{7f}",
];

const DATA_PARTS: &[&[u8]] = &[
    b"1700000000",
    b":",
    b":",
    b":",
    b"U",
    b"N",
    b"-",
    b"+",
    b".",
    b"1",
    b"0",
    b"42",
    b"1e5",
    b"1e",
    b"E-3",
    b"nan",
    b"-inf",
    b"\0",
    b"\n",
    b"@",
    b" ",
    b"\\",
    b"\xff",
    b"\xc3\xa9",
    b"99999999999999999999",
    b"running",
    b"e99999999999999999999999",
];

fn random_key(rng: &mut Rng) -> String {
    let mut key = String::new();
    if rng.below(20) == 0 {
        // plain random bytes, made valid UTF-8
        let bytes: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    key.push_str(rng.pick(KEY_PREFIXES));
    for _ in 0..rng.below(6) {
        key.push_str(rng.pick(KEY_PARTS));
    }
    if rng.below(50) == 0 {
        key.push_str(&"x".repeat(rng.below(400)));
    }
    key
}

/// A key and value of the right shape for a kind and format, so that many
/// inputs get past the key checks and the column count.
fn shaped(rng: &mut Rng) -> (String, Vec<u8>) {
    let (prefix, kind, legacy) = rng.pick(&[
        ("pve2-node/", RrdKind::Node, true),
        ("pve-node-9.0/", RrdKind::Node, false),
        ("pve-node-9.4/", RrdKind::Node, false),
        ("pve2.3-vm/", RrdKind::Vm, true),
        ("pve-vm-9.0/", RrdKind::Vm, false),
        ("pve-vm-12.0/", RrdKind::Vm, false),
        ("pve2-storage/", RrdKind::Storage, false),
        ("pve-storage-9.0/", RrdKind::Storage, false),
        ("pve-storage-9.9/", RrdKind::Storage, false),
    ]);
    let mut key = prefix.to_string();
    key.push_str(rng.pick(&["n1", "node-2", "100", "a.b", "x", "..", ""]));
    if kind == RrdKind::Storage || rng.below(10) == 0 {
        key.push('/');
        key.push_str(rng.pick(&["local", "local-lvm", "s", "", "."]));
    }
    let columns = if legacy {
        kind.legacy_columns()
    } else {
        kind.columns()
    };
    let mut n = kind.skipped_fields() + 1 + columns;
    if rng.below(4) == 0 {
        n = (n + rng.below(12)).saturating_sub(rng.below(6));
    }
    let mut out = Vec::new();
    for i in 0..n {
        if i > 0 {
            out.push(b':');
        }
        let field: &[u8] = match rng.below(12) {
            0 => b"U",
            1 => b"1.5",
            2 => b"-7",
            3 => rng.pick(DATA_PARTS),
            4 => b"N",
            _ => b"123",
        };
        out.extend_from_slice(field);
    }
    if rng.below(2) == 0 {
        out.push(0);
    }
    (key, out)
}

fn random_data(rng: &mut Rng) -> Vec<u8> {
    match rng.below(3) {
        0 => (0..rng.below(5000)).map(|_| rng.next() as u8).collect(),
        _ => {
            let mut data = Vec::new();
            for _ in 0..rng.below(80) {
                data.extend_from_slice(rng.pick(DATA_PARTS));
            }
            data
        }
    }
}

fn random_input(rng: &mut Rng) -> (String, Vec<u8>) {
    if rng.below(2) == 0 {
        shaped(rng)
    } else {
        (random_key(rng), random_data(rng))
    }
}

#[test]
fn parse_update_never_panics_and_keeps_invariants() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut accepted = 0;
    for _ in 0..100_000 {
        let (key, data) = random_input(&mut rng);
        let Ok(up) = parse_update(&key, &data) else {
            continue;
        };
        accepted += 1;
        let kind = up.kind();
        assert!(up.file().starts_with(&format!("{}/", kind.dir())), "{up:?}");
        let name = &up.file()[kind.dir().len() + 1..];
        let components: Vec<&str> = name.split('/').collect();
        let expected = if kind == RrdKind::Storage { 2 } else { 1 };
        assert_eq!(components.len(), expected, "{up:?}");
        for c in components {
            assert!(!c.is_empty() && c != "." && c != "..", "{up:?}");
            assert!(!c.chars().any(char::is_control), "{up:?}");
        }
        assert_eq!(up.value().split(':').count(), kind.columns() + 1, "{up:?}");
        assert!(
            up.value()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:+-".contains(&b)),
            "{up:?}"
        );
        assert!(up.value().len() < 4096);
    }
    // the generator must reach the success path often enough to matter
    assert!(accepted > 1000, "only {accepted} accepted");
}

#[test]
fn dump_never_panics() {
    let mut rng = Rng(0x0dd_ba11);
    let mut dump = RrdDump::new();
    let mut now = 1_700_000_000u64;
    for _ in 0..20_000 {
        // time mostly goes forward, sometimes back
        now = match rng.below(20) {
            0 => now.saturating_sub(rng.below(1000) as u64),
            _ => now + rng.below(5) as u64,
        };
        let (key, data) = random_input(&mut rng);
        let stored = dump.set(&key, &data, now).is_ok();
        if stored {
            assert!(data.last() == Some(&0) && data.len() < 4096);
        }
        let bytes = if rng.below(2) == 0 {
            dump.dump(now)
        } else {
            let b = dump.dump_ipc(now);
            assert_eq!(b.last(), Some(&0));
            assert!(!b[..b.len() - 1].contains(&0));
            b
        };
        assert!(
            bytes.is_empty()
                || bytes == b"\0"
                || bytes.ends_with(b"\n")
                || bytes.ends_with(b"\n\0")
        );
    }
}
