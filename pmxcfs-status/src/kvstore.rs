//! The key/value status store (status.c `kvhash`, `iphash`,
//! `cfs_status_set`, `cfs_create_status_msg`): small per-node blobs that
//! the Perl stack publishes (`PVE::Cluster::broadcast_node_kv`) and reads
//! back per node.

use std::collections::{BTreeMap, HashMap};

use pmxcfs_api_types::Errno;

/// Largest value SET_STATUS accepts (`CFS_MAX_STATUS_SIZE`).
pub const MAX_STATUS_SIZE: usize = 32 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub data: Vec<u8>,
    /// 0 when created, +1 on every update (identical data included).
    pub version: u64,
}

/// One node's table.
#[derive(Clone, Debug, Default)]
pub struct KvTable {
    entries: HashMap<String, KvEntry>,
}

impl KvTable {
    /// `kventry_hash_set`: empty data deletes the key.
    pub fn set(&mut self, key: &str, data: &[u8]) {
        if data.is_empty() {
            self.entries.remove(key);
        } else if let Some(e) = self.entries.get_mut(key) {
            e.data = data.to_vec();
            e.version += 1;
        } else {
            self.entries.insert(
                key.to_string(),
                KvEntry {
                    data: data.to_vec(),
                    version: 0,
                },
            );
        }
    }

    pub fn get(&self, key: &str) -> Option<&KvEntry> {
        self.entries.get(key)
    }

    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.version))
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &KvEntry)> {
        self.entries.iter()
    }
}

/// Check a `nodeip` value as `nodeip_hash_set` does: 1..255 bytes ending in
/// NUL. Returns the address without the NUL.
pub fn parse_nodeip(data: &[u8]) -> Result<String, Errno> {
    match data.split_last() {
        Some((0, ip)) if data.len() < 256 => Ok(String::from_utf8_lossy(ip).into_owned()),
        _ => Err(Errno::ENOMEM),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_delete() {
        let mut t = KvTable::default();
        t.set("a", b"1\0");
        assert_eq!(t.get("a").map(|e| e.version), Some(0));
        t.set("a", b"1\0");
        assert_eq!(t.get("a").map(|e| e.version), Some(1));
        t.set("a", b"");
        assert!(t.get("a").is_none());
        t.set("a", b"x");
        assert_eq!(t.get("a").map(|e| e.version), Some(0));
        assert_eq!(t.versions().get("a"), Some(&0));
    }

    #[test]
    fn nodeip_values() {
        assert_eq!(parse_nodeip(b"10.0.0.1\0").as_deref(), Ok("10.0.0.1"));
        assert_eq!(parse_nodeip(b""), Err(Errno::ENOMEM));
        assert_eq!(parse_nodeip(b"10.0.0.1"), Err(Errno::ENOMEM));
        assert_eq!(parse_nodeip(&[b'1'; 256]), Err(Errno::ENOMEM));
        let mut long = vec![b'1'; 255];
        long.push(0);
        assert_eq!(parse_nodeip(&long), Err(Errno::ENOMEM));
    }
}
