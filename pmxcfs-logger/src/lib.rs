//! pmxcfs cluster log: ring buffer, dedup, merge

#![deny(unsafe_op_in_unsafe_fn)]

//! The cluster log of pmxcfs (C logger.c), compatible with C nodes:
//!
//! * [`ClogEntry`]: one entry in the binary layout of the C `clog_entry_t`
//!   (module [`entry`] documents the bytes), as sent in kvstore LOG messages.
//! * [`ClogBuffer`]: the 131072-byte ring buffer of the C `clog_base_t`
//!   (module [`buffer`]), exchanged as kvstore state during a sync.
//! * [`ClusterLog`]: a node's log with dedup, uid counter, sync merge and the
//!   JSON dump of `.clusterlog` and IPC GET_CLUSTER_LOG.
//! * [`utf8_to_ascii`]: the C message conversion.
//!
//! Deliberate differences from C (everything else follows logger.c):
//!
//! * JSON output escapes tag, node and user strings and backslashes in
//!   messages, so it is always valid JSON ([`json`]).
//! * A message that C would cut below its NUL (a 4096-byte entry whose
//!   converted message ends in a multi-byte escape) loses its last converted
//!   character instead, so other nodes accept the entry.
//! * The JSON dump also shows the oldest surviving entry when the walk ends
//!   at a wrap into overwritten data (C `clog_dump_json` skips that entry
//!   while `clog_dump` and `clog_sort` include it).
//! * Entries of different nodes in the same second are ordered by their
//!   node digest as a number (C compares a truncated difference).
//! * Data from other nodes is never trusted: decoding and walking are
//!   bounds-checked and always terminate.

pub mod ascii;
pub mod buffer;
mod clusterlog;
pub mod entry;
mod error;
pub mod json;

#[cfg(test)]
mod testutil;

pub use ascii::utf8_to_ascii;
pub use buffer::{ClogBuffer, CLOG_DEFAULT_SIZE};
pub use clusterlog::ClusterLog;
pub use entry::{fnv1a_64, string_digest, ClogEntry, CLOG_MAX_ENTRY_SIZE};
pub use error::ClogError;
