//! Errors of the IPC server.

use std::io;
use std::path::PathBuf;

/// Errors of starting the server or setting up a connection.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("IPC server must be started inside a tokio runtime")]
    NoRuntime,

    #[error("invalid IPC service name {0:?}")]
    InvalidServiceName(String),

    #[error("invalid IPC max message size {0}")]
    InvalidMaxMsgSize(usize),

    #[error("invalid IPC limit: {0}")]
    InvalidLimit(&'static str),

    #[error("cannot listen on abstract socket @{name}: {source}")]
    Listen { name: String, source: io::Error },

    #[error("{what} {}: {source}", path.display())]
    Shm {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error(transparent)]
    PathTooLong(#[from] crate::wire::PathTooLong),

    #[error("connection I/O: {0}")]
    Io(#[from] io::Error),
}

impl IpcError {
    pub(crate) fn shm(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        IpcError::Shm {
            what,
            path: path.into(),
            source,
        }
    }

    /// The errno to report to the client in a connection response.
    pub(crate) fn errno(&self) -> i32 {
        match self {
            IpcError::Shm { source, .. }
            | IpcError::Listen { source, .. }
            | IpcError::Io(source) => source.raw_os_error().unwrap_or(libc::EIO),
            IpcError::PathTooLong(_) => libc::ENAMETOOLONG,
            _ => libc::EINVAL,
        }
    }
}
