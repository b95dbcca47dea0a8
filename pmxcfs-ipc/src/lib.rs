//! libqb-compatible IPC server of pmxcfs

#![deny(unsafe_op_in_unsafe_fn)]
