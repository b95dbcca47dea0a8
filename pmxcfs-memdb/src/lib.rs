//! The pmxcfs configuration database: an in-memory tree backed by SQLite.
//!
//! Layout and conventions follow the C daemon (memdb.c, database.c): one
//! `tree` table, a `__version__` row at inode 0 carrying the root's version,
//! writer and mtime, every mutation one transaction that bumps the global
//! version. All reads are served from memory; every mutation is written to
//! SQLite *before* it is applied in memory, so a failed write changes
//! nothing.
//!
//! Mutations arrive as [`Operation`]s and go through [`MemDb::apply`], the
//! one write path. The FUSE layer submits them through the [`Submit`] trait
//! so that cluster mode can broadcast the same operation instead.

#![deny(unsafe_op_in_unsafe_fn)]

mod backend;
mod db;
mod error;
mod index;
mod locks;
mod path;
mod submit;
mod tree;
pub mod vmlist;
mod walbuf;

#[cfg(test)]
mod deferred_tests;
#[cfg(test)]
mod open_tests;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;

pub use db::{inspect, ChangeObserver, DirEntry, EntryAttr, Inspection, MemDb, StatFs};
pub use error::MemDbError;
pub use index::{IndexHeader, INDEX_ENTRY_SIZE, INDEX_HEADER_SIZE};
pub use path::{path_contains_vm_config, split_path};
pub use submit::{LocalSubmitter, Submit};
pub use vmlist::{VmEntry, VmList};

pub use pmxcfs_api_types::Operation;
