//! One client connection: the libqb handshake on the setup socket
//! (ipc_setup.c `process_auth` / `handle_new_connection`), then the
//! transport until the client leaves.
//!
//! Admission ([`admit`], in the accept loop): the peer credentials
//! (`SO_PEERCRED`) and the caps of [`crate::admission`] decide before
//! anything is read; a socket without room is closed at once.
//!
//! Handshake: the client sends a 24-byte connection request
//! (`QB_IPC_MSG_AUTHENTICATE`, its max message size); the server creates
//! the shared memory for that size and sends the 12328-byte connection
//! response (type, negotiated max message size, ring names), or a response
//! with only a non-zero error to refuse (1 for a user who may not use IPC,
//! as the C accept callback; `-EAGAIN` when the user's caps are reached).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::admission::{Admission, LogLimiter, Permit, Pool};
use crate::auth::{check_access, Access, Credentials, REFUSED_ERROR};
use crate::error::IpcError;
use crate::ops::{Client, Handler};
use crate::server::ServerConfig;
use crate::transport_shm::ShmSession;
use crate::wire::{
    ConnectionRequest, ConnectionResponse, CONNECTION_REQUEST_SIZE, CONNECTION_RESPONSE_SIZE,
    MSG_AUTHENTICATE,
};

/// How long a new connection may take to send its connection request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refused socket is kept for its connection request. libqb
/// clients send it right after `connect`, so it is normally there when
/// the socket is accepted; answering it gives them the refusal's errno
/// (closing before it arrives would make their send fail with EPIPE).
pub const REFUSE_GRACE: Duration = Duration::from_millis(250);

/// Upper bound for the configured buffer size.
pub const MAX_MSG_SIZE_LIMIT: usize = 16 * 1024 * 1024;

/// What every connection task shares.
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub admission: Arc<Admission>,
    pub handler: Handler,
    pub next_connection: AtomicU64,
}

/// The buffer size of a connection: what the client asked for (libqb:
/// the larger of the client's wish and the server's minimum, which pmxcfs
/// does not set), but at most the server's maximum (libqb has none: a
/// client could make the C server allocate any amount of shared memory)
/// and at least a connection response (libqb clients never ask for less).
/// Clients adopt the size the response announces.
pub fn negotiate_msg_size(client_wish: u32, server_max: usize) -> usize {
    (client_wish as usize).clamp(CONNECTION_RESPONSE_SIZE, server_max)
}

fn peer_credentials(stream: &UnixStream) -> Result<Credentials, IpcError> {
    let c = stream.peer_cred()?;
    Ok(Credentials {
        pid: c.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        uid: c.uid(),
        gid: c.gid(),
    })
}

async fn send_response(stream: &mut UnixStream, r: &ConnectionResponse) -> Result<(), IpcError> {
    let bytes = r.encode()?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(&bytes))
        .await
        .map_err(|_| std::io::Error::from_raw_os_error(libc::ETIMEDOUT))??;
    Ok(())
}

static BAD_USER_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));
static NO_ROOM_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));

fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar messages suppressed)")
    }
}

fn log_no_room(what: &str, cred: &Credentials) {
    if let Some(n) = NO_ROOM_LOG.allow() {
        tracing::warn!(
            "IPC: no room for {what} of uid {} (pid {}), refused{}",
            cred.uid,
            cred.pid,
            suppressed(n)
        );
    }
}

/// An accepted socket that got room for its handshake.
pub(crate) struct Admitted {
    stream: UnixStream,
    cred: Credentials,
    /// None: the user may not use IPC.
    access: Option<Access>,
    /// Held until the connection response is sent (users other than root).
    handshake: Option<Permit>,
    /// Held while the connection lives (users who may use IPC and got one).
    connection: Option<Permit>,
}

/// Decide about a freshly accepted socket from its peer credentials alone,
/// before anything is read or allocated. None: the socket is dropped, which
/// closes it at once (no credentials, or no room for another handshake of
/// this user).
pub(crate) fn admit(stream: UnixStream, shared: &Shared) -> Option<Admitted> {
    let cred = match peer_credentials(&stream) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("IPC connection without credentials: {e}");
            return None;
        }
    };
    let adm = &shared.admission;
    let handshake = if cred.uid == 0 {
        None
    } else {
        match adm.try_acquire(Pool::Handshakes, cred.uid, 1) {
            Some(p) => Some(p),
            None => {
                log_no_room("another handshake", &cred);
                return None;
            }
        }
    };
    let access = check_access(&cred, shared.config.www_data_gid);
    let connection = access.and_then(|_| adm.try_acquire(Pool::Connections, cred.uid, 1));
    Some(Admitted {
        stream,
        cred,
        access,
        handshake,
        connection,
    })
}

/// Answer a refused socket's connection request with `error` if it comes
/// within [`REFUSE_GRACE`], then close.
async fn refuse(mut stream: UnixStream, error: i32) {
    let mut buf = [0u8; CONNECTION_REQUEST_SIZE];
    if let Ok(Ok(_)) = tokio::time::timeout(REFUSE_GRACE, stream.read_exact(&mut buf)).await {
        if let Ok(bytes) = ConnectionResponse::refused(error).encode() {
            let _ = tokio::time::timeout(REFUSE_GRACE, stream.write_all(&bytes)).await;
        }
    }
}

/// Serve one admitted connection until it ends.
pub(crate) async fn run(admitted: Admitted, shared: &Shared) -> Result<(), IpcError> {
    let Admitted {
        mut stream,
        cred,
        access,
        handshake,
        connection,
    } = admitted;
    let Some(access) = access else {
        if let Some(n) = BAD_USER_LOG.allow() {
            tracing::error!(
                "connection from bad user {}! - rejected{}",
                cred.uid,
                suppressed(n)
            );
        }
        refuse(stream, REFUSED_ERROR).await;
        return Ok(());
    };
    let Some(_connection) = connection else {
        log_no_room("another connection", &cred);
        refuse(stream, -libc::EAGAIN).await;
        return Ok(());
    };

    let mut buf = [0u8; CONNECTION_REQUEST_SIZE];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .map_err(|_| std::io::Error::from_raw_os_error(libc::ETIMEDOUT))??;
    let request = ConnectionRequest::parse(&buf);
    if request.id != MSG_AUTHENTICATE {
        tracing::debug!(
            "IPC connection from pid {} without authentication",
            cred.pid
        );
        return Ok(());
    }
    tracing::debug!("authenticated connection {}/{}", cred.uid, cred.gid);

    let max = negotiate_msg_size(request.max_msg_size, shared.config.max_msg_size);
    let _shm = if cred.uid == 0 {
        None
    } else {
        let bytes = ShmSession::bytes(max);
        match shared.admission.try_acquire(Pool::Shm, cred.uid, bytes) {
            Some(p) => Some(p),
            None => {
                log_no_room("more shared memory", &cred);
                let refused = ConnectionResponse::refused(-libc::EAGAIN);
                return send_response(&mut stream, &refused).await;
            }
        }
    };
    let fd = stream.as_raw_fd();
    // Creating and allocating the files takes a moment: not on a worker.
    let service = shared.config.service_name.clone();
    let created = tokio::task::spawn_blocking(move || ShmSession::create(&service, &cred, fd, max))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut session = match created {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("IPC connection setup for pid {}: {e}", cred.pid);
            let refused = ConnectionResponse::refused(-e.errno());
            send_response(&mut stream, &refused).await?;
            return Err(e);
        }
    };
    tracing::debug!(
        "IPC connection from pid {} ({}/{}) in {}",
        cred.pid,
        cred.uid,
        cred.gid,
        session.dir().display()
    );
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    send_response(&mut stream, &session.connection_response(id)).await?;
    drop(handshake);

    let client = Client { cred, access };
    let res = session.serve(&stream, &client, &shared.handler).await;
    tracing::debug!("IPC connection to pid {} closed", cred.pid);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_size_negotiation() {
        let mib = 1 << 20;
        // What the client asks for, within [connection response, server max].
        assert_eq!(negotiate_msg_size(12328, mib), 12328);
        assert_eq!(negotiate_msg_size(65536, mib), 65536);
        assert_eq!(negotiate_msg_size(mib as u32, mib), mib);
        assert_eq!(negotiate_msg_size(2 * mib as u32, mib), mib);
        assert_eq!(negotiate_msg_size(u32::MAX, mib), mib);
        assert_eq!(negotiate_msg_size(0, mib), 12328);
        assert_eq!(negotiate_msg_size(100, mib), 12328);
    }
}
