//! pmxcfs service lifecycle, retry and shutdown: the corosync-facing
//! services of the daemon.
//!
//! - [`cpg::CpgService`]: a closed process group (libcpg), joined under the
//!   same group name as the C daemon (with the trailing NUL), its events
//!   forwarded into a channel, agreed-order multicast through a cloneable
//!   [`cpg::CpgSender`].
//! - [`quorum::QuorumService`]: the quorate flag (libquorum).
//! - [`confdb::ConfdbService`]: cluster name, config version and node list
//!   from cmap, tracked for changes.
//!
//! Each service runs one thread that connects, polls the corosync
//! descriptor and dispatches; when corosync goes away it finalizes and
//! connects again every 5 s (loop.c). Every service stops within a bounded
//! time (`stop()`, 1 s by default): the thread never blocks in a dispatch.
//!
//! rust-corosync calls callbacks as plain function pointers under a global
//! lock; ours only push into a channel or a watch found through the
//! handle's context value (`registry`).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod confdb;
pub mod cpg;
pub mod quorum;
mod registry;
pub mod retry;
mod runner;

use std::time::Duration;

pub use confdb::{
    parse_cluster_config, ClusterConfig, CmapValue, ConfdbError, ConfdbService, NodeInfo,
};
pub use cpg::{CpgError, CpgEvent, CpgMember, CpgSender, CpgService};
pub use quorum::{QuorumError, QuorumService};
pub use retry::{ReconnectTimer, TryAgainPolicy, RECONNECT_INTERVAL};

/// How long `stop()` waits for a service thread by default.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// A corosync error code, as rust-corosync reports it.
pub use rust_corosync::CsError;

/// Why a service did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The thread did not end in time (blocked inside a corosync call); it
    /// was left to end on its own.
    #[error("service thread did not stop within {0:?}")]
    Timeout(Duration),
    /// The thread panicked.
    #[error("service thread panicked")]
    Panicked,
}
