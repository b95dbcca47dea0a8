//! The plugin entries of the root directory (pmxcfs.c `create_symlinks`):
//! generated status files and the node symlinks. They shadow database
//! entries of the same name.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pmxcfs_api_types::Errno;
use pmxcfs_logger::ClusterLog;
use pmxcfs_memdb::MemDb;
use pmxcfs_status::Status;

/// One plugin entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    Version,
    Members,
    Vmlist,
    Rrd,
    Clusterlog,
    Debug,
    Link(LinkKind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Local,
    QemuServer,
    Openvz,
    Lxc,
}

pub const ALL: [Plugin; 10] = [
    Plugin::Version,
    Plugin::Members,
    Plugin::Vmlist,
    Plugin::Rrd,
    Plugin::Clusterlog,
    Plugin::Debug,
    Plugin::Link(LinkKind::Local),
    Plugin::Link(LinkKind::QemuServer),
    Plugin::Link(LinkKind::Openvz),
    Plugin::Link(LinkKind::Lxc),
];

impl Plugin {
    pub fn name(self) -> &'static str {
        match self {
            Plugin::Version => ".version",
            Plugin::Members => ".members",
            Plugin::Vmlist => ".vmlist",
            Plugin::Rrd => ".rrd",
            Plugin::Clusterlog => ".clusterlog",
            Plugin::Debug => ".debug",
            Plugin::Link(LinkKind::Local) => "local",
            Plugin::Link(LinkKind::QemuServer) => "qemu-server",
            Plugin::Link(LinkKind::Openvz) => "openvz",
            Plugin::Link(LinkKind::Lxc) => "lxc",
        }
    }

    pub fn by_name(name: &str) -> Option<Plugin> {
        ALL.iter().copied().find(|p| p.name() == name)
    }

    pub fn index(self) -> u64 {
        ALL.iter().position(|p| *p == self).unwrap_or(0) as u64
    }

    pub fn by_index(i: u64) -> Option<Plugin> {
        ALL.get(usize::try_from(i).ok()?).copied()
    }

    /// Permission bits before the getattr mask (`cfs_plug_func_new` drops
    /// the write bits of read-only files).
    pub fn file_mode(self) -> u16 {
        match self {
            Plugin::Debug => 0o640,
            _ => 0o440,
        }
    }
}

/// Everything the plugin files are generated from.
pub struct PluginCtx {
    pub memdb: Arc<MemDb>,
    pub status: Arc<Status>,
    pub clog: Arc<Mutex<ClusterLog>>,
    pub nodename: String,
    pub debug: Arc<AtomicBool>,
    /// Called when `.debug` switches the level.
    pub set_debug: Box<dyn Fn(bool) + Send + Sync>,
}

impl PluginCtx {
    /// The current content of a plugin file, or the target of a link.
    pub fn content(&self, p: Plugin) -> Vec<u8> {
        match p {
            Plugin::Version => self.status.version_file(&self.memdb),
            Plugin::Members => self.status.members_file(),
            Plugin::Vmlist => self.status.vmlist_file(&self.memdb),
            Plugin::Rrd => self.status.rrd_file(),
            // the last 50 entries, newest first (`cfs_cluster_log_dump`)
            Plugin::Clusterlog => self
                .clog
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .dump_json(50, None)
                .into_bytes(),
            Plugin::Debug => {
                format!("{}\n", u8::from(self.debug.load(Ordering::Relaxed))).into_bytes()
            }
            Plugin::Link(kind) => {
                let node = &self.nodename;
                match kind {
                    LinkKind::Local => format!("nodes/{node}"),
                    LinkKind::QemuServer => format!("nodes/{node}/qemu-server"),
                    LinkKind::Openvz => format!("nodes/{node}/openvz"),
                    LinkKind::Lxc => format!("nodes/{node}/lxc"),
                }
                .into_bytes()
            }
        }
    }

    /// A write to a plugin file (`cfs_plug_func_write`): only `.debug` is
    /// writable, at offset 0, with `0\n` or `1\n` (2 bytes consumed).
    pub fn write(&self, p: Plugin, offset: i64, data: &[u8]) -> Result<u32, Errno> {
        if p != Plugin::Debug || offset != 0 {
            return Err(Errno::EIO);
        }
        let on = match data.get(..2) {
            Some(b"0\n") => false,
            Some(b"1\n") => true,
            _ => return Err(Errno::EIO),
        };
        if self.debug.swap(on, Ordering::Relaxed) != on {
            (self.set_debug)(on);
            tracing::info!("{} debug mode", if on { "enable" } else { "disable" });
        }
        Ok(2)
    }

    /// truncate of a plugin file: accepted for writable ones only.
    pub fn truncate(&self, p: Plugin) -> Result<(), Errno> {
        if p == Plugin::Debug {
            Ok(())
        } else {
            Err(Errno::EIO)
        }
    }
}
