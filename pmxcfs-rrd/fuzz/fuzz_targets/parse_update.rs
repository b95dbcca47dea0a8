//! Fuzzes `parse_update` (and the dump) with arbitrary keys and data:
//! `cargo +nightly fuzz run parse_update` in pmxcfs-rrd/fuzz.
//!
//! Input layout: the first byte is the key length, then the key bytes (made
//! valid UTF-8 lossily, as a caller would have to), then the data.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmxcfs_rrd::{parse_update, RrdDump, RrdKind};

fuzz_target!(|input: &[u8]| {
    let Some((&len, rest)) = input.split_first() else {
        return;
    };
    let split = usize::from(len).min(rest.len());
    let (key, data) = rest.split_at(split);
    let key = String::from_utf8_lossy(key);

    if let Ok(up) = parse_update(&key, data) {
        let kind = up.kind();
        // the file is <kind dir>/<name>[/<storage>], no empty, . or .. part
        let name = up
            .file()
            .strip_prefix(kind.dir())
            .and_then(|n| n.strip_prefix('/'))
            .expect("file under the kind's directory");
        let parts: Vec<&str> = name.split('/').collect();
        assert_eq!(parts.len(), if kind == RrdKind::Storage { 2 } else { 1 });
        assert!(parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != ".."));
        // the value is the timestamp and exactly the layout's columns
        assert_eq!(up.value().split(':').count(), kind.columns() + 1);
        assert!(up
            .value()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:+-".contains(&b)));
    }

    let mut dump = RrdDump::new();
    if dump.set(&key, data, 1_700_000_000).is_ok() {
        let ipc = dump.dump_ipc(1_700_000_000);
        assert_eq!(ipc.last(), Some(&0));
        assert!(!ipc[..ipc.len() - 1].contains(&0));
    }
});
