//! Fuzz target: a whole CPG message of either DFSM group
//! (`pmxcfs_dfsm::wire::Frame::decode`).
//!
//! Checks: no panic; a message shorter than 16 bytes is `Short`; every
//! error past the base header carries the header's protocol version; a
//! decoded frame re-encodes to bytes that decode to the same frame, with
//! the same length as the input unless C ignores trailing bytes
//! (SYNC_START, UPDATE_COMPLETE).
//!
//!     cargo +nightly fuzz run dfsm_frame

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmxcfs_dfsm::wire::{DfsmMessage, Frame, WireError, BASE_HEADER_SIZE};

fuzz_target!(|data: &[u8]| {
    match Frame::decode(data) {
        Ok(frame) => {
            let bytes = frame.encode();
            assert_eq!(Frame::decode(&bytes).as_ref(), Ok(&frame));
            match frame.message {
                DfsmMessage::SyncStart { .. } | DfsmMessage::UpdateComplete { .. } => {
                    assert!(bytes.len() <= data.len())
                }
                _ => assert_eq!(bytes.len(), data.len()),
            }
            assert_eq!(frame.protocol_version.to_le_bytes(), data[4..8]);
        }
        Err(WireError::Short { len }) => {
            assert!(len < BASE_HEADER_SIZE);
            assert_eq!(len, data.len());
        }
        Err(e) => {
            let v = e.protocol_version().expect("version after the base header");
            assert_eq!(v.to_le_bytes(), data[4..8]);
        }
    }
});
