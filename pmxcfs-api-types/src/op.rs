//! The typed mutations of the tree.
//!
//! Every change to the database is one of these. The FUSE layer builds them,
//! local mode applies them directly, cluster mode broadcasts them through CPG
//! (as the `DCDB_MESSAGE_CFS_*` messages) and applies them on delivery. Paths
//! are relative, without a leading `/`.

/// One mutation of the tree, with the data the C daemon sends for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Write `data` at `offset`; with `truncate`, the file ends at
    /// `offset + data.len()` (a plain truncate is an empty write with
    /// `truncate`).
    Write {
        path: String,
        offset: u64,
        data: Vec<u8>,
        truncate: bool,
    },
    /// Create an empty file; EEXIST if the name exists.
    Create { path: String },
    /// Create a directory.
    Mkdir { path: String },
    /// Remove a file or an empty directory.
    Delete { path: String },
    /// Rename `from` to `to`, replacing `to`.
    Rename { from: String, to: String },
    /// Set the modification time (utimens); on a lock dir also the unlock
    /// request in local mode when `mtime` is 0.
    Mtime { path: String, mtime: u32 },
    /// Ask the cluster to remove an expired lock (cluster mode only).
    UnlockRequest { path: String, csum: [u8; 32] },
    /// Remove a lock if its checksum still matches (cluster mode only).
    Unlock { path: String, csum: [u8; 32] },
}

impl Operation {
    /// The (first) path the operation touches.
    pub fn path(&self) -> &str {
        match self {
            Operation::Write { path, .. }
            | Operation::Create { path }
            | Operation::Mkdir { path }
            | Operation::Delete { path }
            | Operation::Mtime { path, .. }
            | Operation::UnlockRequest { path, .. }
            | Operation::Unlock { path, .. } => path,
            Operation::Rename { from, .. } => from,
        }
    }
}

/// One entry of the tree with everything a node needs to recreate it: what
/// a resync carries (dcdb UPDATE, `memdb_tree_entry_t`). Inode 0 is the
/// root, whose version, writer and mtime are the database's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    pub inode: crate::Inode,
    pub parent: crate::Inode,
    pub version: u64,
    pub writer: u32,
    pub mtime: u32,
    pub kind: crate::FileKind,
    /// Empty for the root.
    pub name: String,
    /// File contents; empty for directories.
    pub data: Vec<u8>,
}
