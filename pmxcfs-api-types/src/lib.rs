//! Shared types, errors and constants of pmxcfs-rs.
//!
//! Everything here is plain data: newtypes for the numbers that travel between
//! the layers (inodes, versions, node ids), the typed filesystem operation that
//! both the FUSE layer and (later) the cluster protocol submit to the database,
//! the errno-carrying error type, and the compiled-in defaults of the C daemon.

#![deny(unsafe_op_in_unsafe_fn)]

mod error;
mod op;
pub mod paths;

pub use error::{CfsError, Errno};
pub use op::{Operation, TreeEntry};

use std::fmt;

/// Directory entry type as stored in the `type` column (`DT_DIR`).
pub const DT_DIR: u8 = 4;
/// Regular file entry type as stored in the `type` column (`DT_REG`).
pub const DT_REG: u8 = 8;

/// Largest file the database accepts (`MEMDB_MAX_FILE_SIZE`).
pub const MAX_FILE_SIZE: u64 = 1024 * 1024;
/// Size the filesystem claims to have (`MEMDB_MAX_FSSIZE`).
pub const MAX_FS_SIZE: u64 = 128 * 1024 * 1024;
/// Number of inodes the filesystem claims to have (`MEMDB_MAX_INODES`).
pub const MAX_INODES: u64 = 256 * 1024;
/// Block size reported by stat and statfs (`MEMDB_BLOCKSIZE`).
pub const BLOCK_SIZE: u64 = 4096;
/// Lock directories expire after this many seconds (`CFS_LOCK_TIMEOUT`).
pub const LOCK_TIMEOUT: u32 = 120;

/// Seconds since the epoch, as the C code's `time(NULL)` (0 if the clock
/// is before 1970). The database and the wire formats keep 32-bit times.
pub fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// A database inode number. The root is inode 0; every other entry's inode is
/// the global version at the time it was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Inode(pub u64);

impl Inode {
    pub const ROOT: Inode = Inode(0);
}

impl fmt::Display for Inode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// A database version (global counter, bumped by one on every mutation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(pub u64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A corosync node id; 0 is the writer id used in local mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Kind of a tree entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Dir,
    File,
}

impl FileKind {
    /// The `type` column value (`DT_DIR` / `DT_REG`).
    pub fn dt(self) -> u8 {
        match self {
            FileKind::Dir => DT_DIR,
            FileKind::File => DT_REG,
        }
    }

    pub fn from_dt(dt: u8) -> Option<Self> {
        match dt {
            DT_DIR => Some(FileKind::Dir),
            DT_REG => Some(FileKind::File),
            _ => None,
        }
    }
}

/// Guest type of a registered VMID (`VMTYPE_*` in the C code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmType {
    Qemu,
    Lxc,
    Openvz,
}

impl VmType {
    /// The name used in `.vmlist` (`"qemu"`, `"lxc"`, `"openvz"`).
    pub fn as_str(self) -> &'static str {
        match self {
            VmType::Qemu => "qemu",
            VmType::Lxc => "lxc",
            VmType::Openvz => "openvz",
        }
    }

    /// The directory below `nodes/<node>/` that holds this type's configs.
    pub fn dir_name(self) -> &'static str {
        match self {
            VmType::Qemu => "qemu-server",
            VmType::Lxc => "lxc",
            VmType::Openvz => "openvz",
        }
    }

    pub fn from_dir_name(name: &str) -> Option<Self> {
        match name {
            "qemu-server" => Some(VmType::Qemu),
            "lxc" => Some(VmType::Lxc),
            "openvz" => Some(VmType::Openvz),
            _ => None,
        }
    }
}

/// True for `priv`, `priv/*`, `nodes/*/priv` and `nodes/*/priv/*`
/// (`path_is_private` in cfs-utils.c). Leading slashes are ignored.
pub fn path_is_private(path: &str) -> bool {
    let path = path.trim_start_matches('/');
    fn is_priv(rest: &str) -> bool {
        rest == "priv" || rest.starts_with("priv/")
    }
    if is_priv(path) {
        return true;
    }
    if let Some(rest) = path.strip_prefix("nodes/") {
        if let Some(pos) = rest.find('/') {
            return is_priv(&rest[pos + 1..]);
        }
    }
    false
}

/// True for `priv/lock/<something>` (`path_is_lockdir` in cfs-utils.c).
pub fn path_is_lockdir(path: &str) -> bool {
    let path = path.trim_start_matches('/');
    path.strip_prefix("priv/lock/")
        .is_some_and(|rest| !rest.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_paths() {
        for p in [
            "priv",
            "/priv",
            "priv/x",
            "nodes/a/priv",
            "nodes/a/priv/k",
            "//priv/lock",
        ] {
            assert!(path_is_private(p), "{p}");
        }
        for p in [
            "private",
            "nodes/priv",
            "nodes/a/privx",
            "nodes",
            "x/priv",
            "",
        ] {
            assert!(!path_is_private(p), "{p}");
        }
    }

    #[test]
    fn lock_paths() {
        assert!(path_is_lockdir("priv/lock/a"));
        assert!(path_is_lockdir("/priv/lock/a/b"));
        assert!(!path_is_lockdir("priv/lock/"));
        assert!(!path_is_lockdir("priv/lock"));
    }
}
