//! Fuzz target: the payload of a dcdb NORMAL message
//! (`pmxcfs_dfsm::dcdb::decode_operation`, and below it
//! `FuseMessage::decode` and `UnlockMessage::decode`).
//!
//! The first two input bytes are the message type (little-endian), the
//! rest the payload. Checks: no panic; a decoded operation re-encodes with
//! the same type and decodes to the same operation; a fuse message decoded
//! from exact C-style bytes re-encodes to exactly those bytes when its
//! strings had no embedded NUL.
//!
//!     cargo +nightly fuzz run dcdb_operation

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmxcfs_dfsm::dcdb::{decode_operation, encode_operation, FuseMessage, UnlockMessage};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let msg_type = u16::from_le_bytes([data[0], data[1]]);
    let payload = &data[2..];
    if let Ok(op) = decode_operation(msg_type, payload) {
        let mut out = Vec::new();
        let ty = encode_operation(&op, &mut out).expect("a decoded operation re-encodes");
        assert_eq!(decode_operation(ty as u16, &out), Ok(op));
    }
    if let Ok(m) = FuseMessage::decode(payload) {
        let mut out = Vec::new();
        m.encode_into(&mut out).expect("re-encodes");
        assert_eq!(FuseMessage::decode(&out), Ok(m));
        if out.len() == payload.len() {
            assert_eq!(out, payload);
        }
    }
    if let Ok(m) = UnlockMessage::decode(payload) {
        let mut out = Vec::new();
        m.encode_into(&mut out).expect("re-encodes");
        assert_eq!(UnlockMessage::decode(&out), Ok(m));
    }
});
