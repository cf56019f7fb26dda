//! torpor benchmarks: shared helpers for the criterion benches and the scenario harness.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod activation;
pub mod floor;
pub mod machine;
pub mod plot;
pub mod resume;
pub mod server;
pub mod stats;
