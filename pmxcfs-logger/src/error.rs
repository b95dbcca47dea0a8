//! Errors of the cluster log.

/// Why an entry or a buffer could not be decoded, packed or stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClogError {
    /// Fewer bytes than the header or the declared entry size need.
    #[error("log entry truncated: need {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },

    /// A received entry whose length differs from the size its header
    /// declares (C: "received log message with wrong size").
    #[error("log entry has wrong size: header says {expected} bytes, got {got}")]
    SizeMismatch { expected: usize, got: usize },

    /// A string field that does not end with a NUL byte (or is empty).
    #[error("unterminated {field} string in log entry")]
    Unterminated { field: &'static str },

    /// An entry larger than `CLOG_MAX_ENTRY_SIZE`.
    #[error("log entry too large: {0} bytes (max 4096)")]
    EntryTooLarge(usize),

    /// An entry not larger than its fixed header (C `clog_alloc_entry`
    /// refuses it).
    #[error("log entry too small: {0} bytes")]
    EntryTooSmall(usize),

    /// Syslog priorities are 0..=7.
    #[error("invalid log priority {0}")]
    InvalidPriority(u8),

    /// A buffer that is not larger than its 8-byte header.
    #[error("log buffer too short: {0} bytes")]
    BufferTooShort(usize),

    /// A buffer whose header `size` differs from its length
    /// (C: "received log with wrong size").
    #[error("log buffer has wrong size: header says {header} bytes, got {actual}")]
    BufferSizeMismatch { header: usize, actual: usize },

    /// A buffer size `clog_new` refuses (less than ten maximal entries).
    #[error("invalid log buffer size {0}")]
    InvalidBufferSize(usize),

    /// The entry does not fit into the buffer even at its start.
    #[error("log entry of {entry} bytes does not fit into a {buffer}-byte buffer")]
    NoSpace { entry: usize, buffer: usize },

    /// `merge` was called with a local index outside the list of states.
    #[error("local index {index} out of range for {count} log states")]
    LocalIndexOutOfRange { index: usize, count: usize },
}
