//! pmxcfs distributed finite state machine over corosync CPG

#![deny(unsafe_op_in_unsafe_fn)]
