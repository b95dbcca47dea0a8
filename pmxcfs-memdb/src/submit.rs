//! How the filesystem submits mutations.
//!
//! The FUSE layer never changes the database itself: it hands an
//! [`Operation`] to a [`Submit`] implementation. In local mode that is
//! [`LocalSubmitter`], which applies it at once with writer 0; in cluster
//! mode the DFSM broadcasts it and answers with the result of applying it
//! on delivery.

use std::sync::Arc;

use pmxcfs_api_types::{now_secs, path_is_lockdir, Errno, Operation};

use crate::MemDb;

/// Where filesystem mutations go.
pub trait Submit: Send + Sync {
    /// Apply (or broadcast and apply) one mutation; the byte count for
    /// writes, 0 otherwise.
    fn submit(&self, op: Operation) -> Result<usize, Errno>;

    /// Whether mutations are currently allowed (quorum).
    fn quorate(&self) -> bool;
}

/// Local mode: always quorate, writer 0, applied immediately.
pub struct LocalSubmitter {
    memdb: Arc<MemDb>,
}

impl LocalSubmitter {
    pub fn new(memdb: Arc<MemDb>) -> Self {
        LocalSubmitter { memdb }
    }
}

impl Submit for LocalSubmitter {
    fn submit(&self, op: Operation) -> Result<usize, Errno> {
        let ctime = now_secs();
        match op {
            // utime(lock, 0, 0) is an unlock request: in local mode the lock
            // goes away once this node has seen it unchanged for 120 s
            // (cfs-plug-memdb.c `cfs_plug_memdb_utimens`).
            Operation::Mtime { ref path, mtime: 0 } if path_is_lockdir(path) => {
                let expired = self
                    .memdb
                    .getattr(path)
                    .filter(|a| a.kind == pmxcfs_api_types::FileKind::Dir)
                    .and_then(|_| self.memdb.entry_csum(path))
                    .is_some_and(|csum| self.memdb.lock_expired(path, &csum));
                if expired {
                    self.memdb
                        .apply(&Operation::Delete { path: path.clone() }, 0, ctime)
                } else {
                    self.memdb.apply(&op, 0, ctime)
                }
            }
            // Mtime carries its own time; the others happen now.
            _ => self.memdb.apply(&op, 0, ctime),
        }
    }

    fn quorate(&self) -> bool {
        true
    }
}
