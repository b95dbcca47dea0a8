//! How the filesystem submits mutations.
//!
//! The FUSE layer never changes the database itself: it hands an
//! [`Operation`] to a [`Submit`] implementation. In local mode that is
//! [`LocalSubmitter`], which applies it at once with writer 0; in cluster
//! mode the DFSM broadcasts it and answers with the result of applying it
//! on delivery.

use std::sync::Arc;

use pmxcfs_api_types::{now_secs, path_is_lockdir, Errno, Inode, Operation};

use crate::MemDb;

/// Where filesystem mutations go.
pub trait Submit: Send + Sync {
    /// Apply (or broadcast and apply) one mutation; the byte count for
    /// writes, 0 otherwise.
    fn submit(&self, op: Operation) -> Result<usize, Errno>;

    /// Whether mutations are currently allowed (quorum).
    fn quorate(&self) -> bool;

    /// open(O_TRUNC) of the file `inode` at `path`. By default the
    /// truncation is applied at once; a submitter may defer it (see
    /// [`MemDb::defer_truncate`] for the rules that keep that invisible).
    fn open_truncate(&self, path: &str, inode: Inode) -> Result<(), Errno> {
        let _ = inode;
        self.submit(Operation::Write {
            path: path.to_string(),
            offset: 0,
            data: Vec::new(),
            truncate: true,
        })
        .map(|_| ())
    }

    /// A write (or, empty with `truncate`, a truncation) through an open
    /// handle of the file `inode`, wherever that file is now, or to its
    /// detached content once it was unlinked or replaced
    /// ([`MemDb::write_inode`]). `after_open_trunc`: the handle's first
    /// write after open(O_TRUNC).
    fn write_inode(
        &self,
        inode: Inode,
        offset: u64,
        data: &[u8],
        truncate: bool,
        after_open_trunc: bool,
    ) -> Result<usize, Errno>;

    /// The handle opened with O_TRUNC is flushed (close, fsync): a deferred
    /// truncation still owed is applied now.
    fn settle_open_truncate(&self, inode: Inode) -> Result<(), Errno> {
        let _ = inode;
        Ok(())
    }

    /// Before an observer of `inode` on this node (FUSE lookup, getattr,
    /// open, read; IPC GET_CONFIG) is answered: a change of it this node
    /// answered but has not applied yet (cluster mode's open(O_TRUNC)) is
    /// waited for. Local mode's deferral is settled inside memdb instead.
    /// Returns whether it waited (the caller then reads the file again).
    fn before_read(&self, inode: Inode) -> bool {
        let _ = inode;
        false
    }
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

    // Local mode defers open(O_TRUNC) so that the usual overwrite (open with
    // O_TRUNC, one write, close) is one transaction.
    fn open_truncate(&self, _path: &str, inode: Inode) -> Result<(), Errno> {
        self.memdb.defer_truncate(inode, 0)
    }

    fn write_inode(
        &self,
        inode: Inode,
        offset: u64,
        data: &[u8],
        truncate: bool,
        after_open_trunc: bool,
    ) -> Result<usize, Errno> {
        self.memdb.write_inode(
            inode,
            offset,
            data,
            truncate,
            after_open_trunc,
            0,
            now_secs(),
        )
    }

    fn settle_open_truncate(&self, inode: Inode) -> Result<(), Errno> {
        self.memdb.settle_deferred_truncate(inode)
    }
}
