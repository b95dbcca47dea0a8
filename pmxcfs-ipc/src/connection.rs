//! One client connection: the libqb handshake on the setup socket
//! (ipc_setup.c `process_auth` / `handle_new_connection`), then the
//! transport until the client leaves.
//!
//! Handshake: the client sends a 24-byte connection request
//! (`QB_IPC_MSG_AUTHENTICATE`, its max message size); the server checks the
//! peer credentials, creates the shared memory and sends the 12328-byte
//! connection response (type, negotiated max message size, ring names), or
//! a response with only a non-zero error to refuse.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::auth::{check_access, Credentials, REFUSED_ERROR};
use crate::error::IpcError;
use crate::ops::{Client, Handler};
use crate::server::ServerConfig;
use crate::transport_shm::ShmSession;
use crate::wire::{
    ConnectionRequest, ConnectionResponse, CONNECTION_REQUEST_SIZE, MSG_AUTHENTICATE,
};

/// How long a new connection may take to send its connection request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for the configured buffer size.
pub const MAX_MSG_SIZE_LIMIT: usize = 16 * 1024 * 1024;

/// What every connection task shares.
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub handler: Handler,
    pub next_connection: AtomicU64,
}

/// The buffer size of a connection. libqb takes the larger of the client's
/// wish and the server's minimum (pmxcfs sets none, so a client could make
/// the server allocate any amount of shared memory); this server always
/// uses its configured size, which holds every pmxcfs request and reply.
/// Clients adopt the size the response announces.
pub fn negotiate_msg_size(_client_wish: u32, server: usize) -> usize {
    server
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

/// Serve one accepted connection until it ends.
pub(crate) async fn run(mut stream: UnixStream, shared: &Shared) -> Result<(), IpcError> {
    let cred = peer_credentials(&stream)?;
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

    let Some(access) = check_access(&cred, shared.config.www_data_gid) else {
        tracing::error!("connection from bad user {}! - rejected", cred.uid);
        return send_response(&mut stream, &ConnectionResponse::refused(REFUSED_ERROR)).await;
    };
    tracing::debug!("authenticated connection {}/{}", cred.uid, cred.gid);

    let max = negotiate_msg_size(request.max_msg_size, shared.config.max_msg_size);
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
        assert_eq!(negotiate_msg_size(12328, mib), mib);
        assert_eq!(negotiate_msg_size(mib as u32, mib), mib);
        assert_eq!(negotiate_msg_size(2 * mib as u32, mib), mib);
        assert_eq!(negotiate_msg_size(u32::MAX, mib), mib);
    }
}
