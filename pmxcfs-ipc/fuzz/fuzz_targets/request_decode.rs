//! Fuzz target: the request decoder `pmxcfs_ipc::parse_request` of every op.
//!
//! Input layout: 4 bytes that choose the op id, then the payload (what
//! follows the 16-byte request header, as the server hands it on).
//!
//! - first byte < 0x80: it indexes [`IDS`], the twelve known ops plus the
//!   unknown ids 0, 9, 14, -1 (authenticate), -3 (disconnect), i32::MIN and
//!   i32::MAX, so that every op is reached from the first input on;
//! - otherwise the 4 bytes are the id itself (little-endian i32).
//!
//! Besides "no panic, no out-of-bounds", the target checks what the decoder
//! promises: a result is deterministic; unknown ids give ECHRNG and known ids
//! never do; a decoded request is of the requested op; every string borrows
//! from the payload and holds no NUL; fixed fields come from their offsets.
//!
//!     cargo +nightly fuzz run request_decode

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmxcfs_ipc::{parse_request, GuestSelector, OpId, Request};

const ECHRNG: i32 = 44;
const EINVAL: i32 = 22;

const IDS: [i32; 19] = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    10,
    11,
    12,
    13,
    0,
    9,
    14,
    -1,
    -3,
    i32::MIN,
    i32::MAX,
];

fn pick_id(sel: [u8; 4]) -> i32 {
    if sel[0] < 0x80 {
        IDS[sel[0] as usize % IDS.len()]
    } else {
        i32::from_le_bytes(sel)
    }
}

/// `s` lies inside `payload` (or is empty) and holds no NUL.
fn check_str(payload: &[u8], s: &[u8]) {
    assert!(!s.contains(&0), "NUL inside a decoded string");
    if s.is_empty() {
        return;
    }
    let base = payload.as_ptr() as usize;
    let start = s.as_ptr() as usize;
    assert!(
        start >= base && start + s.len() <= base + payload.len(),
        "decoded string outside the payload"
    );
}

fn check_guests(guests: GuestSelector, payload: &[u8]) {
    let raw = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
    match guests {
        GuestSelector::All => assert_eq!(raw, 0),
        GuestSelector::Vmid(v) => {
            assert_eq!(v, raw);
            assert!(v >= 100, "VMID {v} below 100 accepted");
        }
    }
}

fn check(id: i32, payload: &[u8]) {
    let result = parse_request(id, payload);
    assert_eq!(result, parse_request(id, payload), "decoder not deterministic");

    let Some(op) = OpId::from_i32(id) else {
        assert_eq!(result.map_err(|e| e.0), Err(ECHRNG));
        return;
    };
    assert_eq!(op as i32, id);
    let req = match result {
        Ok(req) => req,
        Err(e) => {
            assert_ne!(e.0, ECHRNG, "known op {id} answered ECHRNG");
            assert!(e.0 > 0, "errno {} not positive", e.0);
            return;
        }
    };

    let p = payload;
    match (op, req) {
        (OpId::GetFsVersion, Request::GetFsVersion)
        | (OpId::GetClusterInfo, Request::GetClusterInfo)
        | (OpId::GetGuestList, Request::GetGuestList)
        | (OpId::GetRrdDump, Request::GetRrdDump) => assert!(p.is_empty()),
        (OpId::SetStatus, Request::SetStatus { name, data }) => {
            assert!(p.len() >= 256);
            check_str(p, name);
            assert!(name.len() < 256);
            assert_eq!(data, &p[256..]);
        }
        (OpId::GetStatus, Request::GetStatus { name, node }) => {
            assert!(p.len() >= 512);
            check_str(p, name);
            check_str(p, node);
            assert!(name.len() < 256 && node.len() < 256);
        }
        (OpId::GetConfig, Request::GetConfig { path }) => {
            assert!(!p.is_empty());
            check_str(p, path);
            assert!(path.len() < p.len(), "the last byte is never part of the path");
        }
        (
            OpId::LogClusterMsg,
            Request::LogClusterMsg {
                priority,
                ident,
                tag,
                msg,
            },
        ) => {
            assert!(p.len() >= 3);
            assert_eq!(priority, p[0]);
            let (ident_len, tag_len) = (p[1] as usize, p[2] as usize);
            assert!(ident_len >= 1 && tag_len >= 1);
            assert!(p.len() > 3 + ident_len + tag_len, "empty message area accepted");
            check_str(p, ident);
            check_str(p, tag);
            check_str(p, msg);
            assert!(ident.len() < ident_len && tag.len() < tag_len);
        }
        (OpId::GetClusterLog, Request::GetClusterLog { max_entries, user }) => {
            assert!(p.len() > 16);
            assert_eq!(max_entries, u32::from_le_bytes([p[0], p[1], p[2], p[3]]));
            check_str(p, user);
        }
        (OpId::GetGuestConfigProperty, Request::GetGuestConfigProperty { guests, property }) => {
            assert!(p.len() > 4);
            check_guests(guests, p);
            check_str(p, property);
        }
        (
            OpId::GetGuestConfigProperties,
            Request::GetGuestConfigProperties { guests, properties },
        ) => {
            assert!(p.len() > 5);
            check_guests(guests, p);
            assert_eq!(properties.len(), p[4] as usize);
            assert!(!properties.is_empty());
            for prop in &properties {
                check_str(p, prop);
                assert!(prop.first().is_some_and(u8::is_ascii_lowercase));
            }
            // Every byte after the count is accounted for: the properties
            // and their NULs.
            let used: usize = properties.iter().map(|s| s.len() + 1).sum();
            assert_eq!(used, p.len() - 5, "leftover bytes accepted");
        }
        (
            OpId::GetGuestConfigProperty | OpId::GetGuestConfigProperties,
            Request::GuestConfigMalformed { vmid, errno },
        ) => {
            assert!(vmid >= 100, "VMID {vmid} below 100 accepted");
            assert_eq!(vmid, u32::from_le_bytes([p[0], p[1], p[2], p[3]]));
            assert_eq!(errno.0, EINVAL);
        }
        (OpId::VerifyToken, Request::VerifyToken { token }) => {
            check_str(p, token);
            assert!(!token.is_empty() && !token.contains(&b'\n'));
            assert_eq!(token.len() + 1, p.len());
            assert_eq!(p[p.len() - 1], 0);
        }
        (op, req) => panic!("op {op:?} decoded as {req:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    check(pick_id(*sel), payload);
});
