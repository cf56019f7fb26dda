//! torpor benchmarks: shared helpers for the criterion benches and the scenario harness.

pub mod activation;
pub mod floor;
pub mod machine;
pub mod plot;
pub mod resume;
pub mod server;
// Medians and spreads: one copy, in the test-support crate.
pub use torpor_testsupport::stats;
