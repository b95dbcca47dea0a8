//! `RrdWriter`: writes parsed updates to their RRD files, through rrdcached
//! when it answers and directly with librrd otherwise (status.c
//! `update_rrd_data`).
//!
//! Per update:
//! 1. create the file if nothing exists at its path (`create.rs`; on
//!    success and with rrdcached configured, `FORGET` it there, as librrd's
//!    create does when a daemon connection is open);
//! 2. with a socket configured: connect if not connected, send
//!    `UPDATE <realpath> <value>`; a status >= 0 is done;
//! 3. otherwise (no socket, cannot connect, any error or negative status)
//!    `rrd_update_r` directly.
//!
//! Like C, the connection is kept between updates and dropped on errors. A
//! send error on a kept connection (the daemon was restarted) is retried
//! once on a new one, as librrd's client does. Unlike C, every socket
//! operation has a timeout (10 s by default), so a hung rrdcached delays an
//! update and then falls back instead of blocking the caller for good.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::create::ensure_file;
use crate::error::RrdError;
use crate::ffi;
use crate::parse::RrdUpdate;
use crate::rrdcached::{absolute_value, Connection, ProtoError, Response};

/// Default timeout of each rrdcached socket operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How an update reached its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateVia {
    /// Queued in rrdcached (written to disk at its next flush).
    Rrdcached,
    /// Written by librrd directly.
    Direct,
}

/// Writes RRD updates under one RRD directory. Blocking; safe to share
/// between threads (updates are serialized per connection).
#[derive(Debug)]
pub struct RrdWriter {
    rrd_dir: PathBuf,
    socket: Option<PathBuf>,
    timeout: Duration,
    conn: Mutex<Option<Connection>>,
    create_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RrdWriter {
    /// `rrd_dir`: where the `pve-*-9.0` directories live
    /// (`/var/lib/rrdcached/db`); it must exist. `rrdcached_socket`: the
    /// daemon's unix socket (`/var/run/rrdcached.sock`), or `None` to always
    /// write directly.
    pub fn new(rrd_dir: impl Into<PathBuf>, rrdcached_socket: Option<PathBuf>) -> Self {
        RrdWriter {
            rrd_dir: rrd_dir.into(),
            socket: rrdcached_socket,
            timeout: DEFAULT_TIMEOUT,
            conn: Mutex::new(None),
            create_lock: Mutex::new(()),
        }
    }

    /// Sets the timeout of each rrdcached socket operation.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn rrd_dir(&self) -> &Path {
        &self.rrd_dir
    }

    /// Writes one update (creating the file first if needed).
    pub fn update(&self, update: &RrdUpdate) -> Result<UpdateVia, RrdError> {
        let now = now_secs();
        let path = update.path_in(&self.rrd_dir);
        let created = {
            let _guard = lock(&self.create_lock);
            ensure_file(
                &self.rrd_dir,
                update,
                i64::try_from(now).unwrap_or(i64::MAX),
            )?
        };

        if let Some(socket) = &self.socket {
            let value = absolute_value(update.value(), now);
            let mut conn = lock(&self.conn);
            let result = daemon_path(&path).and_then(|file| {
                if created {
                    // best effort, like librrd's rrdc_forget after create
                    if let Err(e) = self.request(&mut conn, socket, &["FORGET", &file]) {
                        tracing::debug!("rrdcached FORGET {file}: {e}");
                    }
                }
                self.request(&mut conn, socket, &["UPDATE", &file, &value])
            });
            match result {
                Ok(_) => return Ok(UpdateVia::Rrdcached),
                Err(ProtoError::Connect(e)) => {
                    tracing::debug!("rrdcached {}: {e}, writing directly", socket.display());
                }
                Err(e) => {
                    tracing::warn!("RRDC update error {}: {e}", path.display());
                }
            }
        }

        ffi::update(&path, update.value()).map_err(|msg| RrdError::Update { path, msg })?;
        Ok(UpdateVia::Direct)
    }

    /// Asks rrdcached to write the pending values of this update's file
    /// now (`FLUSH`). Errors when no socket is configured or the daemon
    /// fails; nothing is written directly.
    pub fn flush(&self, update: &RrdUpdate) -> Result<(), RrdError> {
        let socket = self.socket.as_ref().ok_or(RrdError::NoRrdcached)?;
        let path = update.path_in(&self.rrd_dir);
        let mut conn = lock(&self.conn);
        daemon_path(&path)
            .and_then(|file| self.request(&mut conn, socket, &["FLUSH", &file]))
            .map(|_| ())
            .map_err(|e| RrdError::Rrdcached {
                socket: socket.clone(),
                msg: e.to_string(),
            })
    }

    /// One request on the kept connection, connecting first if needed.
    fn request(
        &self,
        slot: &mut Option<Connection>,
        socket: &Path,
        words: &[&str],
    ) -> Result<Response, ProtoError> {
        let reused = slot.is_some();
        let conn = match slot {
            Some(c) => c,
            None => slot.insert(Connection::connect(socket, self.timeout)?),
        };
        let result = match conn.request(words) {
            Err(ProtoError::Send(e)) if reused => {
                tracing::debug!("rrdcached connection lost ({e}), reconnecting");
                *slot = None;
                let conn = slot.insert(Connection::connect(socket, self.timeout)?);
                conn.request(words)
            }
            other => other,
        };
        match &result {
            // the daemon answered: the connection is fine
            Ok(_) | Err(ProtoError::Failed { .. }) => {}
            Err(_) => *slot = None,
        }
        result
    }
}

/// The file name to send: its real path, as librrd's client does for unix
/// sockets (the file exists by now; if it cannot be resolved the path goes
/// as it is and rrdcached will say what is wrong).
fn daemon_path(path: &Path) -> Result<String, ProtoError> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    real.into_os_string()
        .into_string()
        .map_err(|_| ProtoError::BadWord)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_update;

    #[test]
    fn direct_without_socket() {
        let dir = tempfile::tempdir().unwrap();
        let w = RrdWriter::new(dir.path(), None);
        let up = parse_update("pve2-storage/n1/local", b"1900000000:10:5\0").unwrap();
        assert_eq!(w.update(&up).unwrap(), UpdateVia::Direct);
        assert!(dir.path().join("pve-storage-9.0/n1/local").is_file());
        // the same timestamp again: librrd's error comes back
        let e = w.update(&up).unwrap_err();
        assert!(e.to_string().contains("illegal attempt"), "{e}");
        assert!(matches!(w.flush(&up), Err(RrdError::NoRrdcached)));
    }

    #[test]
    fn direct_when_socket_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let w = RrdWriter::new(dir.path(), Some(dir.path().join("no-such.sock")));
        let up = parse_update("pve2-storage/n1/local", b"1900000000:10:5\0").unwrap();
        assert_eq!(w.update(&up).unwrap(), UpdateVia::Direct);
        assert!(matches!(w.flush(&up), Err(RrdError::Rrdcached { .. })));
    }

    #[test]
    fn missing_rrd_dir() {
        let dir = tempfile::tempdir().unwrap();
        let w = RrdWriter::new(dir.path().join("db"), None);
        let up = parse_update("pve2-storage/n1/local", b"1900000000:10:5\0").unwrap();
        assert!(matches!(w.update(&up), Err(RrdError::RrdDirMissing { .. })));
    }

    #[test]
    fn writer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RrdWriter>();
    }
}
