//! RRD files of pmxcfs through rrdcached and librrd
//!
//! What status.c does with `rrd/...` status keys, in three parts:
//!
//! - [`parse_update`]: a key (`pve2-node/<n>`, `pve-node-9.0/<n>`,
//!   `pve2.3-vm/<id>`, `pve-vm-<ver>/<id>`, `pve2-storage/<n>/<s>`,
//!   `pve-storage-<ver>/<n>/<s>`) and its data to the target file and the
//!   exact `rrd_update` value (live columns skipped, old formats padded with
//!   `U`, newer ones cut). Pure; never panics.
//! - [`RrdWriter`]: creates missing files with the DS/RRA layout of status.c
//!   ([`RrdKind::create_args`]) and writes updates through rrdcached's unix
//!   socket, or with librrd directly when rrdcached does not answer.
//! - [`RrdDump`]: the last data of every key for GET_RRD_DUMP and `.rrd`
//!   (300 s expiry, 2 s cache).
//!
//! The status layer calls, for a SET_STATUS (or a peer's kvstore update)
//! of `rrd/<key>`: [`RrdDump::set`] (an error answers ENOMEM, see
//! [`RrdError::set_status_errno`]), then [`parse_update`] and
//! [`RrdWriter::update`] off the async workers; errors of those two are
//! logged only, as in C.

#![deny(unsafe_op_in_unsafe_fn)]

mod create;
mod dump;
mod error;
mod ffi;
mod key;
mod parse;
mod rrdcached;
mod schema;
mod value;
mod writer;

#[cfg(test)]
mod random_tests;

pub use dump::{check_status_data, RrdDump, DUMP_CACHE, DUMP_EXPIRE};
pub use error::{RrdError, ValueError};
pub use key::{KeyFormat, KEY_MAX};
pub use parse::{parse_update, RrdUpdate, DATA_MAX};
pub use schema::{Cf, DataSource, DsType, Rra, RrdKind, HEARTBEAT, RRAS, STEP};
pub use writer::{RrdWriter, UpdateVia, DEFAULT_TIMEOUT};
