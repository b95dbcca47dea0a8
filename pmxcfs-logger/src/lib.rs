//! pmxcfs cluster log: ring buffer, dedup, merge

#![deny(unsafe_op_in_unsafe_fn)]
