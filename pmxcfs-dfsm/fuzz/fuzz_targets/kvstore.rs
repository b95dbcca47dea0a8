//! Fuzz target: the payload of a kvstore NORMAL message
//! (`KvMessage::decode`). The first two input bytes are the message type
//! (little-endian), the rest the payload.
//!
//! Checks: no panic; a decoded message re-encodes with the same type and
//! decodes to itself; LOG payloads are kept byte for byte.
//!
//!     cargo +nightly fuzz run kvstore

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmxcfs_dfsm::kvstore::KvMessage;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let msg_type = u16::from_le_bytes([data[0], data[1]]);
    let payload = &data[2..];
    if let Ok(m) = KvMessage::decode(msg_type, payload) {
        let mut out = Vec::new();
        let ty = m.encode_into(&mut out).expect("a decoded message re-encodes");
        assert_eq!(ty as u16, msg_type);
        assert_eq!(KvMessage::decode(ty as u16, &out).as_ref(), Ok(&m));
        if let KvMessage::Log { .. } = m {
            assert_eq!(out, payload);
        }
    }
});
