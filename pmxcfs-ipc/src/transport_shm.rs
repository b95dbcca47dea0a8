//! The shared-memory transport (ipc_shm.c, `QB_IPC_SHM`), what the C
//! pmxcfs announces.
//!
//! Per connection the server creates a directory
//! `/dev/shm/qb-<server pid>-<client pid>-<fd>-XXXXXX` (mode 0770, owned by
//! the client) holding three ring buffers, request, response and event,
//! named `<dir>/qb-<channel>-<service>` (each a `-header` and a `-data`
//! file, see [`crate::shm_ring`]). The client writes a request chunk, posts
//! the request semaphore and then sends one byte on the setup socket; the
//! server answers into the response ring and posts its semaphore, on which
//! the client waits. The event ring is never used by pmxcfs. Everything is
//! removed when the connection ends, however it ends (the session is
//! dropped).

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

use crate::auth::Credentials;
use crate::error::IpcError;
use crate::ops::{Client, Handler, Outcome};
use crate::shm_ring::{RingError, ShmRing};
use crate::wire::{response_header, ConnectionResponse, IpcType, RESPONSE_HEADER_SIZE};

/// Where libqb puts its shared memory on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// Removes the (by then empty) connection directory when dropped.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            tracing::warn!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// The shared memory of one connection.
pub struct ShmSession {
    request: ShmRing,
    response: ShmRing,
    _event: ShmRing,
    names: [Vec<u8>; 3],
    max_msg_size: usize,
    /// Declared last: dropped after the rings have removed their files.
    _dir: DirGuard,
}

impl ShmSession {
    /// Create the directory and the three rings (`handle_new_connection`
    /// and `qb_ipcs_shm_connect`).
    pub fn create(
        service: &str,
        cred: &Credentials,
        fd: i32,
        max_msg_size: usize,
    ) -> Result<ShmSession, IpcError> {
        Self::create_in(Path::new(SHM_DIR), service, cred, fd, max_msg_size)
    }

    pub(crate) fn create_in(
        base: &Path,
        service: &str,
        cred: &Credentials,
        fd: i32,
        max_msg_size: usize,
    ) -> Result<ShmSession, IpcError> {
        let template = base.join(format!(
            "qb-{}-{}-{}-XXXXXX",
            std::process::id(),
            cred.pid,
            fd
        ));
        let dir = nix::unistd::mkdtemp(&template)
            .map_err(|e| IpcError::shm("cannot create", &template, io::Error::from(e)))?;
        let dir = DirGuard(dir);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o770))
            .map_err(|e| IpcError::shm("cannot chmod", &dir.0, e))?;
        // Fails unless we are root; then only our own uid can connect anyway.
        let _ = std::os::unix::fs::chown(&dir.0, Some(cred.uid), Some(cred.gid));

        let owner = (cred.uid, cred.gid);
        let name = |channel: &str| dir.0.join(format!("qb-{channel}-{service}"));
        let (req_name, resp_name, event_name) = (name("request"), name("response"), name("event"));
        let request = ShmRing::create(&req_name, max_msg_size, owner)?;
        let response = ShmRing::create(&resp_name, max_msg_size, owner)?;
        let event = ShmRing::create(&event_name, max_msg_size, owner)?;
        use std::os::unix::ffi::OsStrExt;
        let bytes = |p: &Path| p.as_os_str().as_bytes().to_vec();
        Ok(ShmSession {
            request,
            response,
            _event: event,
            names: [bytes(&req_name), bytes(&resp_name), bytes(&event_name)],
            max_msg_size,
            _dir: dir,
        })
    }

    /// Shared memory a session for `max_msg_size` takes (three rings).
    pub fn bytes(max_msg_size: usize) -> u64 {
        ShmRing::bytes(max_msg_size).saturating_mul(3)
    }

    /// The accepting connection response announcing this session.
    pub fn connection_response(&self, connection: u64) -> ConnectionResponse {
        ConnectionResponse {
            error: 0,
            connection_type: IpcType::Shm,
            max_msg_size: self.max_msg_size as u32,
            connection,
            request: self.names[0].clone(),
            response: self.names[1].clone(),
            event: self.names[2].clone(),
        }
    }

    /// The connection directory (for tests and logs).
    pub fn dir(&self) -> &Path {
        &self._dir.0
    }

    /// Answer into the response ring. A reply the ring can never hold is
    /// answered with ENOBUFS instead; a full ring (a client that does not
    /// read its responses) is an error that ends the connection.
    fn send_reply(&mut self, id: i32, result: Result<Vec<u8>, i32>) -> Result<(), RingError> {
        let result = match result {
            Ok(data) if RESPONSE_HEADER_SIZE + data.len() > self.response.max_chunk() => {
                tracing::warn!(
                    "IPC reply of {} bytes too large for the client's buffer",
                    data.len()
                );
                Err(-libc::ENOBUFS)
            }
            other => other,
        };
        let hdr = response_header(id, &result).encode();
        let payload: &[u8] = match &result {
            Ok(data) => data,
            Err(_) => &[],
        };
        self.response.write_chunk(&[&hdr, payload])
    }

    /// Serve requests until the client goes away or sends DISCONNECT.
    pub async fn serve(
        &mut self,
        stream: &UnixStream,
        client: &Client,
        handler: &Handler,
    ) -> Result<(), IpcError> {
        let one_worker =
            tokio::runtime::Handle::try_current().is_ok_and(|h| h.metrics().num_workers() == 1);
        let mut notes = [0u8; 64];
        loop {
            stream.readable().await?;
            let n = match read_notes(stream, &mut notes, one_worker) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            // One byte per request the client has put into the ring.
            for _ in 0..n {
                let msg = match self.request.read_chunk(self.max_msg_size) {
                    Ok(Some(msg)) => msg,
                    Ok(None) => continue,
                    Err(e) => return Err(ring_error(e)),
                };
                match handler.handle_message(client, &msg) {
                    Outcome::Disconnect => return Ok(()),
                    Outcome::Reply { id, result } => {
                        self.send_reply(id, result).map_err(ring_error)?
                    }
                }
            }
        }
    }
}

/// Read the notification bytes the client sent with its requests.
///
/// On a runtime with one worker, a read that does not fill `buf` clears the
/// socket's readiness at once (`short_read_drains`): a stream socket's recv
/// takes all there is up to the buffer, so the socket was drained, and the
/// second recv that would only return EAGAIN is saved. One recv per request,
/// as libqb does (it reads exactly as many bytes as it took requests). This
/// is what tokio's own `poll_read` does; a byte that arrives after the recv
/// raises a new edge on the epoll registration (and try_io leaves readiness
/// set if that edge was already seen), so nothing is missed. Only a client
/// whose connection is written by several processes with different
/// credentials could see its next byte left for its next request: the
/// socket has no SO_PASSCRED, so the kernel does not split reads by writer.
///
/// With several workers the second recv is kept: when the client has already
/// sent its next request by then (client and worker on one CPU), it finds
/// the byte and the task goes on, where a trip through the I/O driver would
/// hand the task to whichever worker polls it (measured with 4 clients on 2
/// CPUs: 1-2 us more daemon CPU per request without the second recv).
fn read_notes(stream: &UnixStream, buf: &mut [u8], short_read_drains: bool) -> io::Result<usize> {
    if !short_read_drains {
        return stream.try_read(buf);
    }
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let mut got = 0usize;
    let res = stream.try_io(tokio::io::Interest::READABLE, || {
        // SAFETY: buf is valid for buf.len() bytes; fd is the stream's open
        // non-blocking socket, borrowed for the call.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        got = n as usize;
        if got > 0 && got < buf.len() {
            // drained: WouldBlock makes try_io clear the readiness
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    match res {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

/// Is the process `pid` gone (`kill(pid, 0)` fails with ESRCH)?
fn process_is_gone(pid: i32) -> bool {
    pid > 0
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH)
}

/// Remove what a killed server left behind: connection directories of a
/// server process that no longer exists, holding nothing but ring files of
/// `service` (or nothing at all; clients of a dead server unlink the files
/// they know). Returns the number of directories removed.
pub fn remove_stale_sessions(base: &Path, service: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let suffixes = [format!("-{service}-header"), format!("-{service}-data")];
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let mut parts = name.split('-');
        if parts.next() != Some("qb") || parts.clone().count() != 4 {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 || !process_is_gone(pid) {
            continue;
        }
        let dir = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        let files: Vec<_> = files.flatten().map(|f| f.file_name()).collect();
        let ours = |f: &std::ffi::OsString| {
            f.to_str()
                .is_some_and(|f| suffixes.iter().any(|s| f.ends_with(s.as_str())))
        };
        if !files.iter().all(ours) {
            continue;
        }
        for f in &files {
            let _ = std::fs::remove_file(dir.join(f));
        }
        if std::fs::remove_dir(&dir).is_ok() {
            tracing::info!("removed stale IPC shared memory {}", dir.display());
            removed += 1;
        }
    }
    removed
}

fn ring_error(e: RingError) -> IpcError {
    match e {
        RingError::Sem(e) => IpcError::Io(e),
        RingError::Full => IpcError::Io(io::Error::from_raw_os_error(libc::EAGAIN)),
        RingError::BadChunk => IpcError::Io(io::Error::from_raw_os_error(libc::EBADMSG)),
        RingError::Truncated => IpcError::Io(io::Error::from_raw_os_error(libc::EFAULT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_sessions() {
        let base = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let mk = |name: &str, files: &[&str]| {
            let d = base.path().join(name);
            std::fs::create_dir(&d).unwrap();
            for f in files {
                std::fs::write(d.join(f), b"").unwrap();
            }
            d
        };
        let stale = mk(
            &format!("qb-{dead}-12-13-abcDEF"),
            &["qb-request-svc-header", "qb-request-svc-data"],
        );
        let empty = mk(&format!("qb-{dead}-12-14-abcDEF"), &[]);
        let other_service = mk(
            &format!("qb-{dead}-12-15-abcDEF"),
            &["qb-request-cpg-header"],
        );
        let mine = mk(&format!("qb-{me}-12-13-abcDEF"), &["qb-request-svc-header"]);
        let alive = mk("qb-1-12-13-abcDEF", &["qb-request-svc-header"]);
        let odd = mk(&format!("qb-{dead}-x"), &[]);
        assert_eq!(remove_stale_sessions(base.path(), "svc"), 2);
        assert!(!stale.exists() && !empty.exists());
        assert!(other_service.exists() && mine.exists() && alive.exists() && odd.exists());
    }

    async fn wait(r: &UnixStream) -> Result<io::Result<()>, tokio::time::error::Elapsed> {
        tokio::time::timeout(std::time::Duration::from_secs(5), r.readable()).await
    }

    /// Short reads clear the readiness; bytes sent afterwards still wake
    /// the reader, a full buffer keeps it, and EOF reads as 0.
    #[tokio::test(flavor = "current_thread")]
    async fn notes_after_a_short_read_are_not_lost() {
        use tokio::io::AsyncWriteExt;
        let (reader, mut writer) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 8];
        for round in 1..=20usize {
            writer.write_all(&vec![b'x'; round % 5 + 1]).await.unwrap();
            wait(&reader).await.expect("readable").unwrap();
            assert_eq!(read_notes(&reader, &mut buf, true).unwrap(), round % 5 + 1);
        }
        writer.write_all(&[b'y'; 11]).await.unwrap();
        wait(&reader).await.expect("readable").unwrap();
        assert_eq!(read_notes(&reader, &mut buf, true).unwrap(), 8);
        wait(&reader).await.expect("still readable").unwrap();
        assert_eq!(read_notes(&reader, &mut buf, true).unwrap(), 3);
        drop(writer);
        wait(&reader).await.expect("readable at EOF").unwrap();
        assert_eq!(read_notes(&reader, &mut buf, true).unwrap(), 0);
        // the other mode is plain try_read
        let (reader, mut writer) = UnixStream::pair().unwrap();
        writer.write_all(b"ab").await.unwrap();
        wait(&reader).await.expect("readable").unwrap();
        assert_eq!(read_notes(&reader, &mut buf, false).unwrap(), 2);
        let e = read_notes(&reader, &mut buf, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn session_files_and_cleanup() {
        let base = tempfile::tempdir().unwrap();
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let cred = Credentials {
            pid: 4242,
            uid,
            gid,
        };
        let s = ShmSession::create_in(base.path(), "svc", &cred, 17, 1 << 20).unwrap();
        let dir = s.dir().to_path_buf();
        let dname = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            dname.starts_with(&format!("qb-{}-4242-17-", std::process::id())),
            "{dname}"
        );
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "qb-event-svc-data",
                "qb-event-svc-header",
                "qb-request-svc-data",
                "qb-request-svc-header",
                "qb-response-svc-data",
                "qb-response-svc-header"
            ]
        );
        let r = s.connection_response(9);
        assert_eq!(
            r.request,
            dir.join("qb-request-svc").as_os_str().as_encoded_bytes()
        );
        assert_eq!(r.max_msg_size, 1 << 20);
        drop(s);
        assert!(!dir.exists());
    }
}
