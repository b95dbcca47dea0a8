//! RRD files of pmxcfs through rrdcached and librrd

#![deny(unsafe_op_in_unsafe_fn)]
