//! Errors of opening and loading the database.

use std::path::PathBuf;

/// Why a database could not be opened. Every variant names the file, and
/// load errors name the offending row.
#[derive(Debug, thiserror::Error)]
pub enum MemDbError {
    #[error("unable to open database '{path}': {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database '{path}' is not an SQLite database (or is damaged): {source}")]
    NotADatabase {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database '{path}': {what}: {source}")]
    Sqlite {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database '{path}' is inconsistent: {reason} (row inode = {inode:016X}, parent = {parent:016X}, name = '{name}')")]
    BadRow {
        path: PathBuf,
        inode: u64,
        parent: u64,
        name: String,
        reason: String,
    },
    #[error("database '{path}' is inconsistent: {0}", .reason)]
    Inconsistent { path: PathBuf, reason: String },
    #[error("unable to set permissions of database '{path}': {source}")]
    Chmod {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
