//! The error type shared by the filesystem layers: an errno plus context.

use std::fmt;

/// A positive errno value, as returned to FUSE and (negated) over IPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    pub const ECHRNG: Errno = Errno(libc::ECHRNG);
    pub const ENOBUFS: Errno = Errno(libc::ENOBUFS);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

/// Error of a filesystem operation: what the caller sees (an errno), plus
/// an optional message for the log.
#[derive(Debug, thiserror::Error)]
#[error("{errno}{}", .msg.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
pub struct CfsError {
    pub errno: Errno,
    pub msg: Option<String>,
}

impl CfsError {
    pub fn new(errno: Errno) -> Self {
        CfsError { errno, msg: None }
    }

    pub fn with_msg(errno: Errno, msg: impl Into<String>) -> Self {
        CfsError {
            errno,
            msg: Some(msg.into()),
        }
    }
}

impl From<Errno> for CfsError {
    fn from(errno: Errno) -> Self {
        CfsError::new(errno)
    }
}
