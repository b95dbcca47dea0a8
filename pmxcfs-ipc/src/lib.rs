//! libqb-compatible IPC server of pmxcfs

#![deny(unsafe_op_in_unsafe_fn)]

//! Real, unmodified libqb clients (`qb_ipcc_connect("pve2", ...)` +
//! `qb_ipcc_sendv_recv`, the Perl module PVE::IPCC) talk to this server as
//! they talk to the C pmxcfs: the abstract socket `@pve2`, the libqb
//! handshake, the shared-memory ring buffers (`QB_IPC_SHM`, as the C server
//! announces) and the request ops of cfs-ipc-ops.h with the C server's
//! payload parsing, errno values and reply bytes.
//!
//! Layers: [`wire`] (byte layouts), [`request`] (the typed decoder),
//! [`ops`] (what each op does, [`StatusOps`] for the status data),
//! [`auth`] (who may connect), [`admission`] (how many and how much), `shm_ring` / `transport_shm` (the shared
//! memory), `connection` (handshake) and [`server`] (socket and tasks).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn demo(memdb: Arc<pmxcfs_memdb::MemDb>, status: Arc<dyn pmxcfs_ipc::StatusOps>)
//! #     -> Result<(), pmxcfs_ipc::IpcError> {
//! use pmxcfs_ipc::{Server, ServerConfig};
//! let handle = Server::start(ServerConfig::default(), memdb, status)?;
//! // ... serve until shutdown ...
//! handle.stop().await;
//! # Ok(()) }
//! ```

pub mod admission;
pub mod auth;
mod connection;
mod error;
mod guestconf;
mod mmap;
pub mod ops;
pub mod request;
pub mod server;
mod shm_ring;
mod sigbus;
mod transport_shm;
pub mod wire;

pub use auth::{Access, Credentials};
pub use error::IpcError;
pub use ops::{ClusterLogMessage, StatusOps};
pub use request::{parse_request, GuestSelector, OpId, Request};
pub use server::{Server, ServerConfig, ServerHandle, DEFAULT_MAX_MSG_SIZE};
