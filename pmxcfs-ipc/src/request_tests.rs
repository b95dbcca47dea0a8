//! Decoder tests: every op, every error case.

use super::*;

const EINVAL: Result<Request<'static>, Errno> = Err(Errno::EINVAL);

fn field(s: &[u8], len: usize) -> Vec<u8> {
    let mut v = s.to_vec();
    v.resize(len, 0);
    v
}

fn vmid(v: u32, rest: &[u8]) -> Vec<u8> {
    let mut p = v.to_le_bytes().to_vec();
    p.extend_from_slice(rest);
    p
}

#[test]
fn op_ids() {
    for id in [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13] {
        assert_eq!(OpId::from_i32(id).map(|o| o as i32), Some(id));
    }
    for id in [0, 9, 14, -1, -3, i32::MIN, i32::MAX] {
        assert_eq!(OpId::from_i32(id), None);
        assert_eq!(parse_request(id, b""), Err(Errno::ECHRNG));
        assert_eq!(parse_request(id, b"\0\0\0\0"), Err(Errno::ECHRNG));
    }
    let writes: Vec<i32> = (0..20)
        .filter_map(OpId::from_i32)
        .filter(|o| o.is_write())
        .map(|o| o as i32)
        .collect();
    assert_eq!(writes, [4, 7]);
}

#[test]
fn ops_without_payload() {
    assert_eq!(parse_request(1, b""), Ok(Request::GetFsVersion));
    assert_eq!(parse_request(2, b""), Ok(Request::GetClusterInfo));
    assert_eq!(parse_request(3, b""), Ok(Request::GetGuestList));
    assert_eq!(parse_request(10, b""), Ok(Request::GetRrdDump));
    for id in [1, 2, 3, 10] {
        assert_eq!(parse_request(id, b"\0"), EINVAL);
        assert_eq!(parse_request(id, &[0; 100]), EINVAL);
    }
}

#[test]
fn set_status() {
    let mut p = field(b"kv/foo", 256);
    p.extend_from_slice(b"bar\0");
    assert_eq!(
        parse_request(4, &p),
        Ok(Request::SetStatus {
            name: b"kv/foo",
            data: b"bar\0"
        })
    );
    // Empty data (delete) is fine.
    assert_eq!(
        parse_request(4, &field(b"nodeip", 256)),
        Ok(Request::SetStatus {
            name: b"nodeip",
            data: b""
        })
    );
    // The name is cut at 255 bytes and at the first NUL.
    let p = [b'a'; 300];
    assert_eq!(
        parse_request(4, &p),
        Ok(Request::SetStatus {
            name: &[b'a'; 255],
            data: &[b'a'; 44]
        })
    );
    let mut p = field(b"x\0y", 256);
    p.push(1);
    assert_eq!(
        parse_request(4, &p),
        Ok(Request::SetStatus {
            name: b"x",
            data: &[1]
        })
    );
    assert_eq!(parse_request(4, &[0; 255]), EINVAL);
    assert_eq!(parse_request(4, b""), EINVAL);
}

#[test]
fn get_status() {
    let mut p = field(b"kv/foo", 256);
    p.extend_from_slice(&field(b"node1", 256));
    assert_eq!(
        parse_request(5, &p),
        Ok(Request::GetStatus {
            name: b"kv/foo",
            node: b"node1"
        })
    );
    // Extra bytes are ignored; both fields are cut at 255 bytes.
    let mut p = vec![b'n'; 512];
    p.extend_from_slice(b"extra");
    assert_eq!(
        parse_request(5, &p),
        Ok(Request::GetStatus {
            name: &[b'n'; 255],
            node: &[b'n'; 255]
        })
    );
    assert_eq!(parse_request(5, &[0; 511]), EINVAL);
    assert_eq!(parse_request(5, &[0; 256]), EINVAL);
}

#[test]
fn get_config() {
    fn cfg(p: &[u8]) -> Result<Request<'_>, Errno> {
        parse_request(6, p)
    }
    assert_eq!(
        cfg(b"storage.cfg\0"),
        Ok(Request::GetConfig {
            path: b"storage.cfg"
        })
    );
    // Without the final NUL the last byte is lost (C writes NUL there).
    assert_eq!(
        cfg(b"storage.cfg"),
        Ok(Request::GetConfig {
            path: b"storage.cf"
        })
    );
    assert_eq!(cfg(b"a\0b\0"), Ok(Request::GetConfig { path: b"a" }));
    assert_eq!(cfg(b"\0"), Ok(Request::GetConfig { path: b"" }));
    assert_eq!(cfg(b"x"), Ok(Request::GetConfig { path: b"" }));
    assert_eq!(cfg(b""), EINVAL);
}

fn log(p: &[u8]) -> Result<Request<'_>, Errno> {
    parse_request(7, p)
}

#[test]
fn log_cluster_msg() {
    assert_eq!(
        log(b"\x05\x09\x04root@pam\0tag\0hello\0"),
        Ok(Request::LogClusterMsg {
            priority: 5,
            ident: b"root@pam",
            tag: b"tag",
            msg: b"hello"
        })
    );
    // A message of just a NUL is fine; a missing final NUL is tolerated.
    assert_eq!(
        log(b"\x06\x02\x02a\0b\0\0"),
        Ok(Request::LogClusterMsg {
            priority: 6,
            ident: b"a",
            tag: b"b",
            msg: b""
        })
    );
    assert_eq!(
        log(b"\x06\x02\x02a\0b\0msg"),
        Ok(Request::LogClusterMsg {
            priority: 6,
            ident: b"a",
            tag: b"b",
            msg: b"msg"
        })
    );
    // Strings end at their first NUL; any priority is passed on.
    assert_eq!(
        log(b"\xff\x04\x02a\0b\0c\0m\0n\0"),
        Ok(Request::LogClusterMsg {
            priority: 255,
            ident: b"a",
            tag: b"c",
            msg: b"m"
        })
    );
}

#[test]
fn log_cluster_msg_errors() {
    // Empty message.
    assert_eq!(log(b"\x06\x02\x02a\0b\0"), EINVAL);
    // Lengths beyond the payload.
    assert_eq!(log(b"\x06\xff\x02a\0b\0m\0"), EINVAL);
    assert_eq!(log(b"\x06\x02\xffa\0b\0m\0"), EINVAL);
    // ident / tag not NUL-terminated at their lengths.
    assert_eq!(log(b"\x06\x02\x02ab\0\0m\0"), EINVAL);
    assert_eq!(log(b"\x06\x02\x02a\0bcm\0"), EINVAL);
    // Zero lengths.
    assert_eq!(log(b"\x06\x00\x02b\0m\0"), EINVAL);
    assert_eq!(log(b"\x06\x02\x00a\0m\0"), EINVAL);
    assert_eq!(log(b"\x06\x00\x00m\0"), EINVAL);
    // Shorter than the three length bytes.
    assert_eq!(log(b""), EINVAL);
    assert_eq!(log(b"\x06\x02"), EINVAL);
    assert_eq!(log(b"\x06\x02\x02"), EINVAL);
}

#[test]
fn get_cluster_log() {
    let mut p = 7u32.to_le_bytes().to_vec();
    p.extend_from_slice(&[0xff; 12]); // reserved, ignored
    p.extend_from_slice(b"root@pam\0");
    assert_eq!(
        parse_request(8, &p),
        Ok(Request::GetClusterLog {
            max_entries: 7,
            user: b"root@pam"
        })
    );
    p.pop();
    assert_eq!(
        parse_request(8, &p),
        Ok(Request::GetClusterLog {
            max_entries: 7,
            user: b"root@pa"
        })
    );
    assert_eq!(
        parse_request(8, &[0; 17]),
        Ok(Request::GetClusterLog {
            max_entries: 0,
            user: b""
        })
    );
    assert_eq!(parse_request(8, &[0; 16]), EINVAL);
    assert_eq!(parse_request(8, &[0; 3]), EINVAL);
    assert_eq!(parse_request(8, b""), EINVAL);
}

#[test]
fn guest_config_property() {
    assert_eq!(
        parse_request(11, &vmid(100, b"memory\0")),
        Ok(Request::GetGuestConfigProperty {
            guests: GuestSelector::Vmid(100),
            property: b"memory"
        })
    );
    assert_eq!(
        parse_request(11, &vmid(0, b"memoryX")),
        Ok(Request::GetGuestConfigProperty {
            guests: GuestSelector::All,
            property: b"memory"
        })
    );
    // Not validated: anything goes, even an empty property.
    assert_eq!(
        parse_request(11, &vmid(u32::MAX, b"\0")),
        Ok(Request::GetGuestConfigProperty {
            guests: GuestSelector::Vmid(u32::MAX),
            property: b""
        })
    );
    for v in [1, 50, 99] {
        assert_eq!(parse_request(11, &vmid(v, b"memory\0")), EINVAL);
    }
    // Empty property after a VMID: existence is checked first.
    assert_eq!(
        parse_request(11, &vmid(100, b"")),
        Ok(Request::GuestConfigMalformed {
            vmid: 100,
            errno: Errno::EINVAL
        })
    );
    assert_eq!(parse_request(11, &vmid(0, b"")), EINVAL);
    assert_eq!(parse_request(11, &vmid(99, b"")), EINVAL);
    assert_eq!(parse_request(11, &[100, 0, 0]), EINVAL);
    assert_eq!(parse_request(11, b""), EINVAL);
}

fn props(v: u32, n: u8, rest: &[u8]) -> Vec<u8> {
    let mut p = vmid(v, &[n]);
    p.extend_from_slice(rest);
    p
}

#[test]
fn guest_config_properties() {
    assert_eq!(
        parse_request(13, &props(100, 2, b"name\0memory\0")),
        Ok(Request::GetGuestConfigProperties {
            guests: GuestSelector::Vmid(100),
            properties: vec![b"name", b"memory"]
        })
    );
    assert_eq!(
        parse_request(13, &props(0, 1, b"a\0")),
        Ok(Request::GetGuestConfigProperties {
            guests: GuestSelector::All,
            properties: vec![b"a"]
        })
    );
    // Duplicates and any characters after the first are fine.
    assert_eq!(
        parse_request(13, &props(0, 2, b"x-1\0x-1\0")),
        Ok(Request::GetGuestConfigProperties {
            guests: GuestSelector::All,
            properties: vec![b"x-1", b"x-1"]
        })
    );
}

#[test]
fn guest_config_properties_errors() {
    let bad = |v: u32, n: u8, rest: &[u8]| {
        parse_request(13, &props(v, n, rest)).map(|r| format!("{r:?}"))
    };
    let malformed = Ok(format!(
        "{:?}",
        Request::GuestConfigMalformed {
            vmid: 100,
            errno: Errno::EINVAL,
        }
    ));
    for (n, rest) in [
        (0u8, &b"name\0"[..]),  // no properties
        (1, b""),               // nothing left
        (1, b"\0"),             // too short
        (1, b"\0\0"),           // empty property
        (1, b"Name\0"),         // not a-z
        (1, b"1name\0"),        // not a-z
        (1, b"\xc3\xa4x\0"),    // not a-z
        (1, b"name"),           // no NUL
        (2, b"name\0"),         // missing second
        (2, b"name\0\0"),       // empty second
        (1, b"name\0memory\0"), // leftover
        (1, b"name\0\0"),       // leftover NUL
    ] {
        assert_eq!(bad(100, n, rest), malformed, "{n} {rest:?}");
        assert_eq!(bad(0, n, rest), Err(Errno::EINVAL), "{n} {rest:?}");
        assert_eq!(bad(99, n, rest), Err(Errno::EINVAL), "{n} {rest:?}");
    }
    assert_eq!(bad(1, 1, b"name\0"), Err(Errno::EINVAL));
    assert_eq!(parse_request(13, &[100, 0, 0, 0]), EINVAL);
    assert_eq!(parse_request(13, b""), EINVAL);
}

#[test]
fn verify_token() {
    assert_eq!(
        parse_request(12, b"root@pam!t 1234\0"),
        Ok(Request::VerifyToken {
            token: b"root@pam!t 1234"
        })
    );
    assert_eq!(
        parse_request(12, b" x \0"),
        Ok(Request::VerifyToken { token: b" x " })
    );
    for p in [
        &b""[..],
        b"\0",
        b"x",
        b"root@pam!t 1234",
        b"a\nb\0",
        b"\n\0",
        b"a\0b\0",
        b"\0\0",
    ] {
        assert_eq!(parse_request(12, p), EINVAL, "{p:?}");
    }
}

#[test]
fn c_strings() {
    assert_eq!(c_str(b"abc\0def"), b"abc");
    assert_eq!(c_str(b"abc"), b"abc");
    assert_eq!(c_str(b""), b"");
    assert_eq!(c_str(b"\0"), b"");
}

/// The decoder must not panic on any input: every op id with payloads of
/// every length up to 600 bytes in a few fill patterns, plus pseudo-random
/// payloads.
#[test]
fn never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for id in -2..16 {
        for len in 0..600 {
            for fill in [0u8, 1, b'a', 0xff] {
                let _ = parse_request(id, &vec![fill; len]);
            }
            let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse_request(id, &random);
            // Small length bytes, so op 7 and 13 get past their first checks.
            let small: Vec<u8> = (0..len).map(|_| (next() % 4) as u8).collect();
            let _ = parse_request(id, &small);
        }
    }
}
