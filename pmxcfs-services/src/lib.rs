//! pmxcfs service lifecycle, retry and shutdown

#![deny(unsafe_op_in_unsafe_fn)]
