//! The node's status as the plugin files show it: start time, cluster info
//! version, quorum, the change counters of `.version` and the kv versions.
//! The VM list itself lives in memdb (the write path needs it); this module
//! renders it.

use std::sync::{Mutex, MutexGuard};

use pmxcfs_memdb::{ChangeObserver, MemDb};

use std::collections::HashMap;

use pmxcfs_api_types::Errno;

use crate::kvstore::{parse_nodeip, KvTable, MAX_STATUS_SIZE};
use crate::members::{render_members, ClusterInfo};
use crate::version::{render_version, KvVersions, PathCounters};
use crate::vmlist::render_vmlist;

struct Inner {
    counters: PathCounters,
    clinfo_version: u64,
    cluster: Option<ClusterInfo>,
    quorate: bool,
    /// This node's kv table.
    kv: KvTable,
    /// Tables received from other nodes, by node name.
    remote_kv: HashMap<String, KvTable>,
    /// `nodeip` per node name (status.c `iphash`).
    node_ips: HashMap<String, String>,
}

/// Shared status of this node (status.c `cfs_status`).
pub struct Status {
    nodename: String,
    start_time: u64,
    inner: Mutex<Inner>,
}

impl Status {
    pub fn new(nodename: &str) -> Self {
        let start_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Status {
            nodename: nodename.to_string(),
            start_time,
            inner: Mutex::new(Inner {
                counters: PathCounters::new(),
                clinfo_version: 0,
                cluster: None,
                quorate: false,
                kv: KvTable::default(),
                remote_kv: HashMap::new(),
                node_ips: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a single assignment or counter bump: a poisoned
        // lock still holds consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn nodename(&self) -> &str {
        &self.nodename
    }

    /// `cfs_set_quorate`.
    pub fn set_quorate(&self, quorate: bool) {
        self.lock().quorate = quorate;
    }

    pub fn quorate(&self) -> bool {
        self.lock().quorate
    }

    /// Replace the cluster configuration (nodes from corosync) and bump the
    /// cluster info version.
    pub fn set_cluster_info(&self, info: Option<ClusterInfo>) {
        let mut g = self.lock();
        g.cluster = info;
        g.clinfo_version += 1;
    }

    /// `.version` (status.c `cfs_create_version_msg`).
    pub fn version_file(&self, memdb: &MemDb) -> Vec<u8> {
        let (vmlist_version, _) = memdb.vmlist_version();
        let g = self.lock();
        let mut kv = KvVersions::new(&self.nodename);
        kv.local = g.kv.versions();
        kv.remote = g
            .remote_kv
            .iter()
            .map(|(node, t)| (node.clone(), t.versions()))
            .collect();
        render_version(
            self.start_time,
            g.clinfo_version,
            vmlist_version,
            &g.counters,
            &kv,
        )
    }

    /// `.members` (status.c `cfs_create_memberlist_msg`).
    pub fn members_file(&self) -> Vec<u8> {
        let g = self.lock();
        let cluster = g.cluster.as_ref().map(|c| {
            let mut c = c.clone();
            for n in &mut c.nodes {
                n.ip = g.node_ips.get(&n.name).cloned();
            }
            c
        });
        render_members(
            &self.nodename,
            g.clinfo_version,
            cluster.as_ref(),
            g.quorate,
        )
    }

    /// SET_STATUS of this node (status.c `cfs_status_set`) for the kv
    /// store and `nodeip`. `rrd/` keys are the caller's (RRD layer).
    pub fn set_kv(&self, key: &str, data: &[u8]) -> Result<(), Errno> {
        if data.len() > MAX_STATUS_SIZE {
            return Err(Errno::EFBIG);
        }
        let mut g = self.lock();
        if key == "nodeip" {
            let ip = parse_nodeip(data)?;
            if g.node_ips.get(&self.nodename) != Some(&ip) {
                g.clinfo_version += 1;
                g.node_ips.insert(self.nodename.clone(), ip);
            }
        } else {
            g.kv.set(key, data);
        }
        Ok(())
    }

    /// GET_STATUS (status.c `cfs_create_status_msg`): `node` empty or this
    /// node reads the local table.
    pub fn get_kv(&self, node: &str, key: &str) -> Result<Vec<u8>, Errno> {
        let g = self.lock();
        let table = if node.is_empty() || node == self.nodename {
            Some(&g.kv)
        } else {
            g.remote_kv.get(node)
        };
        table
            .and_then(|t| t.get(key))
            .map(|e| e.data.clone())
            .ok_or(Errno::ENOENT)
    }

    /// `.vmlist` (status.c `cfs_create_vmlist_msg`).
    pub fn vmlist_file(&self, memdb: &MemDb) -> Vec<u8> {
        let (version, entries) = memdb.vmlist();
        render_vmlist(version, &entries)
    }

    /// `.rrd`: `key:data` lines of recent RRD updates (none are kept yet).
    pub fn rrd_file(&self) -> Vec<u8> {
        Vec::new()
    }
}

impl ChangeObserver for Status {
    fn path_changed(&self, path: &str) {
        self.lock().counters.bump(path);
    }

    fn reloaded(&self) {
        self.lock().counters.bump_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pmxcfs_api_types::Operation;

    use super::*;

    #[test]
    fn kv_store() {
        let s = Status::new("n1");
        s.set_kv("kv/foo", b"bar\0").unwrap();
        assert_eq!(s.get_kv("", "kv/foo").unwrap(), b"bar\0");
        assert_eq!(s.get_kv("n1", "kv/foo").unwrap(), b"bar\0");
        assert_eq!(s.get_kv("n2", "kv/foo"), Err(Errno::ENOENT));
        s.set_kv("kv/foo", b"").unwrap();
        assert_eq!(s.get_kv("", "kv/foo"), Err(Errno::ENOENT));
        assert_eq!(s.set_kv("x", &[1u8; 32769]), Err(Errno::EFBIG));
        s.set_kv("x", &[1u8; 32768]).unwrap();
        let before = String::from_utf8(s.members_file()).unwrap();
        s.set_kv("nodeip", b"10.1.1.1\0").unwrap();
        let after = String::from_utf8(s.members_file()).unwrap();
        assert_ne!(before, after, "nodeip bumps the cluster info version");
        assert_eq!(s.set_kv("nodeip", b"10.1.1.1"), Err(Errno::ENOMEM));
    }

    #[test]
    fn counters_follow_memdb() {
        let dir = tempfile::tempdir().unwrap();
        let status = Arc::new(Status::new("n1"));
        let memdb = MemDb::open(&dir.path().join("db"), Some(status.clone())).unwrap();
        let v = |s: &Status| String::from_utf8(s.version_file(&memdb)).unwrap();
        assert!(v(&status).contains("\"storage.cfg\": 1,\n"));
        memdb
            .apply(
                &Operation::Create {
                    path: "storage.cfg".into(),
                },
                0,
                1,
            )
            .unwrap();
        assert!(v(&status).contains("\"storage.cfg\": 2,\n"));
        memdb
            .apply(&Operation::Mkdir { path: "ha".into() }, 0, 1)
            .unwrap();
        assert!(v(&status).contains("\"ha/resources.cfg\": 1,\n"));
        assert!(v(&status).contains("\"storage.cfg\": 2,\n"));
    }
}
