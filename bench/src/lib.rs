//! torpor benchmarks: shared helpers for the criterion benches and the scenario harness.

pub mod activation;
pub mod floor;
pub mod machine;
pub mod plot;
pub mod resume;
pub mod server;
pub mod stats;
