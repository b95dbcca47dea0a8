//! Fuzz target: cluster log entries and buffers as received from other
//! nodes over CPG (kvstore LOG messages and sync states).
//!
//! Properties: decoding never panics; a decoded entry re-encodes to bytes
//! that decode to the same entry; walking, sorting, merging and dumping any
//! buffer terminates and the JSON dump is always valid JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmxcfs_logger::{ClogBuffer, ClogEntry, ClusterLog};

fn assert_valid_json(json: &str) {
    if let Err(err) = serde_json::from_str::<serde_json::Value>(json) {
        panic!("invalid JSON ({err}): {json}");
    }
}

fuzz_target!(|data: &[u8]| {
    // As a kvstore LOG message.
    if let Ok(entry) = ClogEntry::decode(data) {
        let again = ClogEntry::decode(&entry.encode()).expect("re-encoded entry decodes");
        assert_eq!(again, entry);
        let mut log = ClusterLog::new();
        log.insert(&entry);
        assert_valid_json(&log.dump_json(50, None));
    }

    // As a sync state: the same bytes with the header size patched to match,
    // so that from_bytes accepts them and the content gets exercised.
    if data.len() > 8 {
        let mut bytes = data.to_vec();
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        if let Ok(buf) = ClogBuffer::from_bytes(&bytes) {
            let count = buf.iter().count();
            assert!(count <= buf.size() / 48);
            assert_valid_json(&buf.dump_json(usize::MAX, None));
            assert_valid_json(&buf.sort().dump_json(usize::MAX, Some("root@pam")));
            let mut log = ClusterLog::new();
            log.add("fuzz", "root", "cluster", 1, 6, 1, "local entry");
            log.merge(&[Some(&buf), None], 1)
                .expect("valid local index");
            assert_valid_json(&log.dump_json(usize::MAX, None));
        }
    }
    let _ = ClogBuffer::from_bytes(data);
});
