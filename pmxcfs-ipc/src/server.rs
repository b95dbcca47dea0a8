//! The listening side: the abstract socket `@<service>`, the accept loop,
//! one task per connection, and the handle that stops it all.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener as StdUnixListener};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use pmxcfs_memdb::MemDb;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::admission::{Admission, Caps};
use crate::connection::{self, Shared};
use crate::error::IpcError;
use crate::ops::{Handler, StatusOps};

/// Largest message (request or response, header included) of the C pmxcfs
/// and of PVE::IPCC (`MAX_MSG_SIZE`, 1 MiB).
pub const DEFAULT_MAX_MSG_SIZE: usize = 1024 * 1024;

/// Longest service name: an abstract socket name fits 107 bytes, libqb
/// clients copy at most 106.
pub const MAX_SERVICE_NAME: usize = 106;

/// How long [`ServerHandle::stop`] lets connections end on their own before
/// it cancels them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Server settings.
///
/// The caps keep any one user, and all users but root together, from
/// taking the server's descriptors or `/dev/shm` away from root
/// (README.md, "Admission"). They apply to users other than root unless
/// said otherwise; [`Server::start`] shrinks them to fit `RLIMIT_NOFILE`
/// and the size of `/dev/shm` (see [`crate::admission::Caps`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// libqb service name; the socket is `@<service_name>` ("pve2").
    pub service_name: String,
    /// Clients with this gid get read-only access (www-data).
    pub www_data_gid: u32,
    /// Largest buffer size of a connection: the largest request or reply,
    /// header included (1 MiB, as PVE::IPCC asks for). A client asking for
    /// less gets what it asked for (as with libqb), never less than a
    /// connection response (12328 bytes).
    pub max_msg_size: usize,
    /// Connections of all users together, root included.
    pub max_connections: usize,
    /// Connections of one uid other than root.
    pub max_connections_per_user: usize,
    /// Connections only root may use: the others together stop at
    /// `max_connections - root_reserved_connections`.
    pub root_reserved_connections: usize,
    /// Handshakes in progress (accepted sockets not yet answered, refused
    /// ones included) of all users but root together; a socket beyond it
    /// is closed at once. Root's handshakes are not limited.
    pub max_handshakes: usize,
    /// Handshakes in progress of one uid other than root.
    pub max_handshakes_per_user: usize,
    /// Shared memory (ring buffer files) of the connections of all users
    /// but root together, in bytes; at most a quarter of `/dev/shm`.
    pub max_shm_bytes: u64,
    /// Shared memory of the connections of one uid other than root.
    pub max_shm_bytes_per_user: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            service_name: pmxcfs_api_types::paths::IPC_SERVICE.to_string(),
            www_data_gid: 33,
            max_msg_size: DEFAULT_MAX_MSG_SIZE,
            max_connections: 1024,
            max_connections_per_user: 256,
            root_reserved_connections: 64,
            max_handshakes: 64,
            max_handshakes_per_user: 16,
            max_shm_bytes: 1 << 30,
            max_shm_bytes_per_user: 256 << 20,
        }
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), IpcError> {
        let name = &self.service_name;
        if name.is_empty()
            || name.len() > MAX_SERVICE_NAME
            || name.bytes().any(|b| b == 0 || b == b'/')
        {
            return Err(IpcError::InvalidServiceName(name.clone()));
        }
        if self.max_msg_size < crate::wire::CONNECTION_RESPONSE_SIZE
            || self.max_msg_size > connection::MAX_MSG_SIZE_LIMIT
        {
            return Err(IpcError::InvalidMaxMsgSize(self.max_msg_size));
        }
        let bad = |what: &'static str| Err(IpcError::InvalidLimit(what));
        if self.max_connections == 0 || self.root_reserved_connections >= self.max_connections {
            return bad("max_connections must exceed root_reserved_connections");
        }
        if self.max_connections_per_user == 0 {
            return bad("max_connections_per_user must not be 0");
        }
        if self.max_handshakes == 0 || self.max_handshakes_per_user == 0 {
            return bad("max_handshakes and max_handshakes_per_user must not be 0");
        }
        if self.max_shm_bytes == 0 || self.max_shm_bytes_per_user == 0 {
            return bad("max_shm_bytes and max_shm_bytes_per_user must not be 0");
        }
        Ok(())
    }
}

/// The soft `RLIMIT_NOFILE` of this process.
fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}

/// Size of the file system holding the shared memory, if known.
fn shm_size(dir: &str) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((st.blocks() as u64).saturating_mul(st.fragment_size() as u64)).filter(|&s| s > 0)
}

/// The configured caps, fitted to the descriptor limit and `/dev/shm`.
fn effective_caps(config: &ServerConfig) -> Caps {
    let configured = Caps::from_config(config);
    let nofile = nofile_limit();
    let mut caps = configured.fit_fd_limit(nofile);
    if caps != configured {
        tracing::warn!(
            "IPC: RLIMIT_NOFILE {nofile} is too low for {} connections: \
             at most {} connections, {} for users other than root",
            configured.connections.all,
            caps.connections.all,
            caps.connections.others
        );
    }
    if let Some(size) = shm_size(crate::transport_shm::SHM_DIR) {
        caps = caps.fit_shm_size(size);
    }
    caps
}

/// The IPC server.
pub struct Server;

impl Server {
    /// Listen on `@<service_name>` and serve clients on the current tokio
    /// runtime until [`ServerHandle::stop`]. Must be called from within a
    /// runtime.
    pub fn start(
        config: ServerConfig,
        memdb: Arc<MemDb>,
        status: Arc<dyn StatusOps>,
    ) -> Result<ServerHandle, IpcError> {
        config.validate()?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| IpcError::NoRuntime)?;
        let _guard = rt.enter();
        let listener = listen(&config.service_name)?;
        crate::sigbus::install();
        crate::transport_shm::remove_stale_sessions(
            std::path::Path::new(crate::transport_shm::SHM_DIR),
            &config.service_name,
        );
        let (tx, rx) = watch::channel(false);
        let service_name = config.service_name.clone();
        let caps = effective_caps(&config);
        tracing::debug!("IPC admission caps: {caps:?}");
        let shared = Arc::new(Shared {
            admission: Admission::new(caps),
            config,
            handler: Handler::new(memdb, status),
            next_connection: AtomicU64::new(1),
        });
        tracing::info!("IPC server listening on @{service_name}");
        let task = rt.spawn(accept_loop(listener, shared, rx));
        Ok(ServerHandle {
            shutdown: tx,
            task: Some(task),
            service_name,
        })
    }
}

/// Length of an abstract socket name as libqb uses it: all of `sun_path`
/// after the leading NUL (libqb passes `sizeof(struct sockaddr_un)` as the
/// address length, so the name is padded with NULs).
pub const ABSTRACT_NAME_LEN: usize = 107;

/// The abstract socket name of a service: the name padded with NULs.
pub fn abstract_name(service: &str) -> Vec<u8> {
    let mut name = service.as_bytes().to_vec();
    name.resize(ABSTRACT_NAME_LEN.max(name.len()), 0);
    name
}

/// Bind `@<name>` (`qb_ipcs_us_publish`) with a backlog large enough for
/// a burst of clients (a full backlog makes their non-blocking connect
/// fail with EAGAIN).
fn listen(name: &str) -> Result<UnixListener, IpcError> {
    let err = |source| IpcError::Listen {
        name: name.to_string(),
        source,
    };
    let addr = SocketAddr::from_abstract_name(abstract_name(name)).map_err(err)?;
    let std_listener = StdUnixListener::bind_addr(&addr).map_err(err)?;
    let backlog =
        nix::sys::socket::Backlog::new(1024).unwrap_or(nix::sys::socket::Backlog::MAXCONN);
    nix::sys::socket::listen(&std_listener, backlog).map_err(|e| err(e.into()))?;
    std_listener.set_nonblocking(true).map_err(err)?;
    UnixListener::from_std(std_listener).map_err(err)
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Credentials and caps decide before anything is read:
                    // a socket without room is closed here and now.
                    let Some(admitted) = connection::admit(stream, &shared) else {
                        continue;
                    };
                    let shared = Arc::clone(&shared);
                    let mut shutdown = shutdown.clone();
                    connections.spawn(async move {
                        tokio::select! {
                            res = connection::run(admitted, &shared) => {
                                if let Err(e) = res {
                                    tracing::debug!("IPC connection ended: {e}");
                                }
                            }
                            _ = shutdown.changed() => {}
                        }
                    });
                }
                Err(e) => {
                    // Out of fds or similar: do not spin.
                    tracing::warn!("IPC accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        tracing::error!("IPC connection task panicked: {e}");
                    }
                }
            }
        }
    }
    drop(listener);
    // Connections see the shutdown themselves and drop their sessions
    // (which removes the shared memory); cancel whatever is left.
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
    tracing::info!("IPC server stopped");
}

/// A running server. Dropping it signals the server to stop without
/// waiting; [`ServerHandle::stop`] also waits until every connection is
/// closed and its shared memory removed.
pub struct ServerHandle {
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    service_name: String,
}

impl ServerHandle {
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// Stop listening, close all connections and remove their shared
    /// memory.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!("IPC server task failed: {e}");
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(ServerConfig::default().validate().is_ok());
        let bad = |f: fn(&mut ServerConfig)| {
            let mut c = ServerConfig::default();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(|c| c.service_name.clear()));
        assert!(bad(|c| c.service_name = "a/b".into()));
        assert!(bad(|c| c.service_name = "a\0b".into()));
        assert!(bad(|c| c.service_name = "x".repeat(107)));
        assert!(bad(|c| c.max_msg_size = 100));
        assert!(bad(|c| c.max_msg_size = 1 << 30));
        assert!(bad(|c| c.max_connections = 0));
        assert!(bad(|c| c.root_reserved_connections = c.max_connections));
        assert!(bad(|c| c.max_connections_per_user = 0));
        assert!(bad(|c| c.max_handshakes = 0));
        assert!(bad(|c| c.max_handshakes_per_user = 0));
        assert!(bad(|c| c.max_shm_bytes = 0));
        assert!(bad(|c| c.max_shm_bytes_per_user = 0));
        assert!(!bad(|c| c.root_reserved_connections = 0));
    }
}
