//! procswap: what can be done to one process's memory.
//!
//! Mechanism only (inspect, purge, prefetch, freeze/thaw); when to do it is the
//! controller's business (`local-controller/`).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod kmod;
pub mod uapi;
