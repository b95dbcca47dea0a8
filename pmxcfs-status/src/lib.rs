//! pmxcfs status: vm list, kv store, RRD data, log storage

#![deny(unsafe_op_in_unsafe_fn)]

pub mod kvstore;
pub mod members;
mod status;
pub mod version;
pub mod vmlist;

pub use status::Status;
