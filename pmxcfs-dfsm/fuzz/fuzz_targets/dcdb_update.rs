//! Fuzz target: the resync payloads of dcdb: one UPDATE tree entry
//! (`TreeEntry::decode`) and the STATE memdb index
//! (`MemdbIndex::decode`), on the same input.
//!
//! Checks: no panic; a decoded entry re-encodes and decodes to itself
//! (byte-identical when the name had no embedded NUL); a decoded index
//! re-encodes to exactly the input.
//!
//!     cargo +nightly fuzz run dcdb_update

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmxcfs_api_types::TreeEntry;
use pmxcfs_dfsm::dcdb::{MemdbIndex, UpdatePayload};

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = TreeEntry::decode(data) {
        let bytes = entry.encode().expect("a decoded entry re-encodes");
        assert_eq!(TreeEntry::decode(&bytes).as_ref(), Ok(&entry));
        if bytes.len() == data.len() {
            assert_eq!(bytes, data);
        }
    }
    if let Ok(index) = MemdbIndex::decode(data) {
        assert_eq!(index.encode(), data);
    }
});
