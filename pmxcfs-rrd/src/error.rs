//! Errors of the RRD layer.

use std::io;
use std::path::PathBuf;

use pmxcfs_api_types::Errno;

/// Longest piece of user data quoted in an error message.
const QUOTE_MAX: usize = 64;

/// Quote user data for an error message: lossy UTF-8, control characters
/// escaped, cut at [`QUOTE_MAX`] characters.
pub(crate) fn quote(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut out: String = text.chars().take(QUOTE_MAX).collect();
    if text.chars().nth(QUOTE_MAX).is_some() {
        out.push_str("...");
    }
    format!("{out:?}")
}

/// Why an RRD value (the part after the key) is not a valid update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("byte 0x{byte:02x} at offset {offset} is not allowed in an RRD update")]
    BadByte { byte: u8, offset: usize },
    #[error("no timestamp")]
    NoTimestamp,
    #[error("bad timestamp {0}: expected N or seconds since the epoch")]
    BadTimestamp(String),
    #[error("expected {expected} data columns after the timestamp, got {got}")]
    ColumnCount { expected: usize, got: usize },
    #[error("column {ds}: {value} is not a number")]
    NotANumber { ds: &'static str, value: String },
    #[error("column {ds}: {value} is not an integer (DERIVE)")]
    NotAnInteger { ds: &'static str, value: String },
}

/// An error of the RRD layer.
#[derive(Debug, thiserror::Error)]
pub enum RrdError {
    /// Status data of length 0 (C: `g_return_val_if_fail(len > 0)`).
    #[error("RRD data is empty")]
    EmptyData,
    /// Status data of 4096 bytes or more, NUL included (C: `len < 4096`).
    #[error("RRD data is {len} bytes, at most 4095 are allowed")]
    DataTooLong { len: usize },
    /// Status data whose last byte is not NUL (C: `data[len - 1] == 0`).
    #[error("RRD data does not end with a NUL byte")]
    MissingNul,
    /// A key longer than the 255 bytes the IPC and cluster messages can carry.
    #[error("RRD key is {len} bytes, at most 255 are allowed")]
    KeyTooLong { len: usize },
    /// A key of no known family (C: "RRD update error: unknown/wrong key").
    #[error("unknown RRD key {key}")]
    UnknownKey { key: String },
    /// A key of a known family with a bad name part (C: same message).
    #[error("wrong RRD key {key}: {reason}")]
    BadKey { key: String, reason: &'static str },
    /// A value that librrd or rrdcached would refuse, or that is unsafe to pass.
    #[error("bad RRD value for {key}: {reason}")]
    BadValue { key: String, reason: ValueError },
    /// The RRD directory (`/var/lib/rrdcached/db`) does not exist; like C, we
    /// never create it (it belongs to the rrdcached package).
    #[error("RRD directory {path} is missing: {source}")]
    RrdDirMissing { path: PathBuf, source: io::Error },
    #[error("could not create directory {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("RRD create error {path}: {msg}")]
    Create { path: PathBuf, msg: String },
    #[error("RRD update error {path}: {msg}")]
    Update { path: PathBuf, msg: String },
    /// An rrdcached request failed (connection, protocol or a negative status).
    #[error("rrdcached {socket}: {msg}")]
    Rrdcached { socket: PathBuf, msg: String },
    /// An rrdcached-only operation on a writer without rrdcached.
    #[error("no rrdcached socket configured")]
    NoRrdcached,
}

impl RrdError {
    /// The errno a SET_STATUS of `rrd/...` answers with. The C daemon
    /// (`rrdentry_hash_set` returning FALSE, then `cfs_status_set`) answers
    /// every refused data with ENOMEM; a bad key or value is only logged, the
    /// request succeeds (the entry is in the dump), so those map to 0 here.
    pub fn set_status_errno(&self) -> Option<Errno> {
        match self {
            RrdError::EmptyData | RrdError::DataTooLong { .. } | RrdError::MissingNul => {
                Some(Errno::ENOMEM)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_is_short_and_escaped() {
        assert_eq!(quote(b"a\nb"), "\"a\\nb\"");
        let long = vec![b'x'; 1000];
        let q = quote(&long);
        assert!(q.len() < 80, "{q}");
        assert!(q.ends_with("...\""));
        assert_eq!(quote(&[0xff, b'a']), "\"\u{fffd}a\"");
    }

    #[test]
    fn set_status_errno() {
        assert_eq!(RrdError::EmptyData.set_status_errno(), Some(Errno::ENOMEM));
        assert_eq!(RrdError::MissingNul.set_status_errno(), Some(Errno::ENOMEM));
        assert_eq!(
            RrdError::DataTooLong { len: 4096 }.set_status_errno(),
            Some(Errno::ENOMEM)
        );
        assert_eq!(
            RrdError::UnknownKey { key: "x".into() }.set_status_errno(),
            None
        );
    }
}
