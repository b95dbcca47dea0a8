//! Errors of the corosync.conf parser.

/// Why a corosync.conf could not be parsed.
///
/// Line numbers are 1-based and count `\n`-terminated lines, like corosync's
/// own "parser error: FILE:LINE: ..." messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The file is not valid UTF-8.
    #[error("line {line}: invalid UTF-8")]
    InvalidUtf8 { line: usize },

    /// The line contains a NUL byte.
    #[error("line {line}: NUL byte")]
    NulByte { line: usize },

    /// The line does not fit corosync's 512 byte line buffer.
    #[error("line {line}: line too long ({len} bytes, at most {max})")]
    LineTooLong { line: usize, len: usize, max: usize },

    /// `{` without a section name in front of it.
    #[error("line {line}: missing section name before opening bracket '{{'")]
    MissingSectionName { line: usize },

    /// Something other than whitespace after a `{`.
    #[error("line {line}: extra characters after opening bracket '{{'")]
    TextAfterOpenBrace { line: usize },

    /// Something other than whitespace around a `}`.
    #[error("line {line}: extra characters before or after closing bracket '}}'")]
    TextAroundCloseBrace { line: usize },

    /// A `}` with no section open.
    #[error("line {line}: unexpected closing brace")]
    UnexpectedCloseBrace { line: usize },

    /// End of file inside a section.
    #[error("line {line}: section '{section}' is never closed")]
    UnclosedSection { section: String, line: usize },

    /// A `key: value` line with nothing before the colon.
    #[error("line {line}: key name can't be empty")]
    EmptyKey { line: usize },

    /// A line that is neither `key: value`, `section {`, `}`, a comment nor
    /// empty.
    #[error("line {line}: missing ':' (line is not opening or closing a section or a key: value)")]
    MissingColon { line: usize },

    /// The dotted path of a key or section reaches corosync's key name limit
    /// (`ICMAP_KEYNAME_MAXLEN`, 256 bytes including separator and NUL).
    #[error("line {line}: key path '{path}' is too long")]
    PathTooLong { line: usize, path: String },

    /// A value that must be a number is not one (or is out of range).
    #[error("line {line}: value '{value}' of '{key}' is not a valid {expected}")]
    InvalidNumber {
        line: usize,
        key: String,
        value: String,
        expected: &'static str,
    },

    /// Two nodes of the nodelist share a node id.
    #[error("line {line}: nodeid {nodeid} appears twice (first on line {first_line})")]
    DuplicateNodeId {
        nodeid: u32,
        line: usize,
        first_line: usize,
    },

    /// A key the cluster configuration cannot do without is missing.
    #[error("missing required key '{key}'")]
    MissingKey { key: &'static str },
}

impl ParseError {
    /// The line the error refers to, if it refers to one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::InvalidUtf8 { line }
            | Self::NulByte { line }
            | Self::LineTooLong { line, .. }
            | Self::MissingSectionName { line }
            | Self::TextAfterOpenBrace { line }
            | Self::TextAroundCloseBrace { line }
            | Self::UnexpectedCloseBrace { line }
            | Self::UnclosedSection { line, .. }
            | Self::EmptyKey { line }
            | Self::MissingColon { line }
            | Self::PathTooLong { line, .. }
            | Self::InvalidNumber { line, .. }
            | Self::DuplicateNodeId { line, .. } => Some(*line),
            Self::MissingKey { .. } => None,
        }
    }
}
