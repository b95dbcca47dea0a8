//! What the IPC server needs from the status layer and the cluster log,
//! wired together here (the ipc crate may not depend on status, which is
//! on its own layer, nor on logger, which is above it).

use std::sync::{Arc, Mutex};

use std::sync::mpsc::Sender;

use pmxcfs_api_types::Errno;
use pmxcfs_dfsm::kvstore_app::{log_message, update_message};

use crate::dcdb::{Cmd, Inflight};
use pmxcfs_ipc::{ClusterLogMessage, StatusOps};
use pmxcfs_logger::ClusterLog;
use pmxcfs_memdb::MemDb;
use pmxcfs_status::Status;

pub struct StatusBridge {
    pub memdb: Arc<MemDb>,
    pub status: Arc<Status>,
    pub clog: Arc<Mutex<ClusterLog>>,
    pub nodename: String,
    /// Cluster mode: the kvstore group's service, which sends this node's
    /// status keys and cluster log entries to the others.
    pub kvstore: Option<Mutex<Sender<Cmd>>>,
    /// Cluster mode: open(O_TRUNC) truncations not delivered yet.
    pub inflight: Option<Arc<Inflight>>,
}

impl StatusBridge {
    fn clog(&self) -> std::sync::MutexGuard<'_, ClusterLog> {
        self.clog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send a kvstore message to the other nodes (no wait, as C).
    fn broadcast(&self, msg: Option<(u16, Vec<u8>)>) {
        if let (Some(kv), Some((subtype, payload))) = (&self.kvstore, msg) {
            let tx = kv.lock().unwrap_or_else(|p| p.into_inner());
            let _ = tx.send(Cmd::Send { subtype, payload });
        }
    }
}

impl StatusOps for StatusBridge {
    fn fs_version(&self) -> Vec<u8> {
        self.status.version_file(&self.memdb)
    }

    fn cluster_info(&self) -> Vec<u8> {
        self.status.members_file()
    }

    fn guest_list(&self) -> Vec<u8> {
        self.status.vmlist_file(&self.memdb)
    }

    fn set_status(&self, name: &str, data: &[u8]) -> Result<(), Errno> {
        if name.starts_with("rrd/") {
            // RRD file I/O (rrdcached or librrd) may take a while: let the
            // runtime move its other tasks off this worker meanwhile.
            tokio::task::block_in_place(|| self.status.set_status(name, data))?
        } else {
            self.status.set_status(name, data)?
        }
        self.broadcast(update_message(name, data));
        Ok(())
    }

    fn get_status(&self, name: &str, node: &str) -> Result<Vec<u8>, Errno> {
        self.status.get_kv(node, name)
    }

    fn log_cluster_msg(&self, m: &ClusterLogMessage) -> Result<(), Errno> {
        // priority >= 8: success, nothing stored (C behaviour)
        let entry = self.clog().add(
            &self.nodename,
            m.ident,
            m.tag,
            m.pid,
            m.priority,
            pmxcfs_api_types::now_secs(),
            m.msg,
        );
        if let Some(e) = entry {
            self.broadcast(log_message(&e.encode()));
        }
        Ok(())
    }

    fn cluster_log(&self, max_entries: u32, user: &[u8]) -> Vec<u8> {
        let user = String::from_utf8_lossy(user);
        let filter = (!user.is_empty()).then_some(user.as_ref());
        self.clog()
            .dump_json(max_entries as usize, filter)
            .into_bytes()
    }

    fn rrd_dump(&self) -> Vec<u8> {
        self.status.rrd_dump_ipc()
    }

    fn before_config_read(&self, path: &str) {
        // the path lookup only when something is in flight at all
        let Some(inflight) = self.inflight.as_ref().filter(|i| i.busy()) else {
            return;
        };
        if let Some(a) = self.memdb.getattr(path) {
            inflight.wait(a.inode);
        }
    }

    fn before_any_config_read(&self) {
        if let Some(inflight) = &self.inflight {
            inflight.wait_all();
        }
    }
}
