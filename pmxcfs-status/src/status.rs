//! The node's status as the plugin files show it: start time, cluster info
//! version, quorum, the change counters of `.version` and the kv versions.
//! The VM list itself lives in memdb (the write path needs it); this module
//! renders it.

use std::sync::{Mutex, MutexGuard};

use pmxcfs_memdb::{ChangeObserver, MemDb};
use pmxcfs_rrd::{parse_update, RrdDump, RrdWriter};

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
    /// Recent `rrd/` updates for `.rrd` and GET_RRD_DUMP.
    rrd_dump: RrdDump,
}

/// Shared status of this node (status.c `cfs_status`).
pub struct Status {
    nodename: String,
    start_time: u64,
    inner: Mutex<Inner>,
    /// Writes `rrd/` updates to RRD files (None: keep them in the dump only).
    rrd_writer: Option<RrdWriter>,
}

impl Status {
    pub fn new(nodename: &str) -> Self {
        Self::with_rrd(nodename, None)
    }

    /// A status whose `rrd/` updates also go to RRD files.
    pub fn with_rrd(nodename: &str, rrd_writer: Option<RrdWriter>) -> Self {
        Status {
            nodename: nodename.to_string(),
            start_time: u64::from(pmxcfs_api_types::now_secs()),
            rrd_writer,
            inner: Mutex::new(Inner {
                counters: PathCounters::new(),
                clinfo_version: 0,
                cluster: None,
                quorate: false,
                kv: KvTable::default(),
                remote_kv: HashMap::new(),
                node_ips: HashMap::new(),
                rrd_dump: RrdDump::new(),
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

    /// The kv store and `nodeip` part of SET_STATUS.
    fn set_kv(&self, key: &str, data: &[u8]) -> Result<(), Errno> {
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

    /// A SET_STATUS made on another node, delivered by the kvstore group
    /// (status.c `cfs_kvstore_node_set`): `rrd/` keys to the RRD dump,
    /// `nodeip` to the IP table, anything else to that node's kv table.
    pub fn set_remote(&self, node: &str, key: &str, data: &[u8]) {
        let mut g = self.lock();
        if let Some(rrd_key) = key.strip_prefix("rrd/") {
            let now = u64::from(pmxcfs_api_types::now_secs());
            if let Err(e) = g.rrd_dump.set(rrd_key, data, now) {
                tracing::debug!("RRD update of '{rrd_key}' from {node} ignored: {e}");
            }
        } else if key == "nodeip" {
            if let Ok(ip) = parse_nodeip(data) {
                if g.node_ips.get(node) != Some(&ip) {
                    g.clinfo_version += 1;
                    g.node_ips.insert(node.to_string(), ip);
                }
            }
        } else if data.len() <= MAX_STATUS_SIZE {
            g.remote_kv
                .entry(node.to_string())
                .or_default()
                .set(key, data);
        }
    }

    /// This node's kv entries and its `nodeip` (what a kvstore sync sends
    /// to the others, status.c `cfs_kvstore_sync` and `dfsm_synced`).
    pub fn local_entries(&self) -> Vec<(String, Vec<u8>)> {
        let g = self.lock();
        let mut out: Vec<(String, Vec<u8>)> =
            g.kv.iter()
                .map(|(k, e)| (k.clone(), e.data.clone()))
                .collect();
        if let Some(ip) = g.node_ips.get(&self.nodename) {
            let mut v = ip.clone().into_bytes();
            v.push(0);
            out.push(("nodeip".to_string(), v));
        }
        out
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

    /// `.rrd`: `key:data` lines of the RRD updates of the last 300 s.
    pub fn rrd_file(&self) -> Vec<u8> {
        self.lock()
            .rrd_dump
            .dump(u64::from(pmxcfs_api_types::now_secs()))
    }

    /// GET_RRD_DUMP: the `.rrd` lines plus a trailing NUL.
    pub fn rrd_dump_ipc(&self) -> Vec<u8> {
        self.lock()
            .rrd_dump
            .dump_ipc(u64::from(pmxcfs_api_types::now_secs()))
    }

    /// SET_STATUS (status.c `cfs_status_set`): `rrd/<key>` to the RRD
    /// dump and files, `nodeip` to the IP table, anything else to the kv
    /// store.
    pub fn set_status(&self, key: &str, data: &[u8]) -> Result<(), Errno> {
        if data.len() > MAX_STATUS_SIZE {
            return Err(Errno::EFBIG);
        }
        let Some(rrd_key) = key.strip_prefix("rrd/") else {
            return self.set_kv(key, data);
        };
        self.lock()
            .rrd_dump
            .set(rrd_key, data, u64::from(pmxcfs_api_types::now_secs()))
            .map_err(|e| e.set_status_errno().unwrap_or(Errno::ENOMEM))?;
        match parse_update(rrd_key, data) {
            Ok(update) => {
                if let Some(w) = &self.rrd_writer {
                    if let Err(e) = w.update(&update) {
                        tracing::warn!("RRD update of '{rrd_key}' failed: {e}");
                    }
                }
            }
            Err(e) => tracing::debug!("ignoring RRD update '{rrd_key}': {e}"),
        }
        Ok(())
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
        s.set_status("kv/foo", b"bar\0").unwrap();
        assert_eq!(s.get_kv("", "kv/foo").unwrap(), b"bar\0");
        assert_eq!(s.get_kv("n1", "kv/foo").unwrap(), b"bar\0");
        assert_eq!(s.get_kv("n2", "kv/foo"), Err(Errno::ENOENT));
        s.set_status("kv/foo", b"").unwrap();
        assert_eq!(s.get_kv("", "kv/foo"), Err(Errno::ENOENT));
        assert_eq!(s.set_status("x", &[1u8; 32769]), Err(Errno::EFBIG));
        s.set_status("x", &[1u8; 32768]).unwrap();
        let before = String::from_utf8(s.members_file()).unwrap();
        s.set_status("nodeip", b"10.1.1.1\0").unwrap();
        let after = String::from_utf8(s.members_file()).unwrap();
        assert_ne!(before, after, "nodeip bumps the cluster info version");
        assert_eq!(s.set_status("nodeip", b"10.1.1.1"), Err(Errno::ENOMEM));
    }

    #[test]
    fn rrd_dump_entries() {
        let s = Status::new("n1");
        s.set_status("rrd/pve2-node/n1", b"1700000000:1:2\0")
            .unwrap();
        s.set_status("rrd/whatever/key", b"x\0").unwrap();
        let dump = String::from_utf8(s.rrd_file()).unwrap();
        assert!(dump.contains("pve2-node/n1:1700000000:1:2\n"), "{dump}");
        assert!(dump.contains("whatever/key:x\n"), "{dump}");
        assert_eq!(s.rrd_dump_ipc().last(), Some(&0));
        assert_eq!(s.set_status("rrd/a", b"no nul"), Err(Errno::ENOMEM));
        assert_eq!(s.set_status("rrd/a", b""), Err(Errno::ENOMEM));
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
