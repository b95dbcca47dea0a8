//! Compiled-in default paths of the C daemon (pmxcfs.c, cfs-utils.h).

pub const DB_FILE: &str = "/var/lib/pve-cluster/config.db";
pub const VARLIB_DIR: &str = "/var/lib/pve-cluster";
pub const LOCK_FILE_NAME: &str = ".pmxcfs.lockfile";
pub const PID_FILE: &str = "/run/pve-cluster.pid";
pub const RUN_DIR: &str = "/run/pve-cluster";
pub const RESTART_FLAG_NAME: &str = "cfs-restart-flag";
pub const MOUNT_POINT: &str = "/etc/pve";
pub const HOST_COROSYNC_CONF: &str = "/etc/corosync/corosync.conf";
pub const RRD_DIR: &str = "/var/lib/rrdcached/db";
pub const RRDCACHED_SOCKET: &str = "/var/run/rrdcached.sock";
pub const IPC_SERVICE: &str = "pve2";
