//! torpor-testsupport: one copy of what the tests, the test and benchmark children and the
//! benchmarks share. Not part of any production binary (`torpord`, `torpor`, `torpor-guest`
//! do not depend on it); the size and duration parsers production needs live in
//! `procswap::units`.
//!
//! - [`child`]: the line-protocol children, started and greeted;
//! - [`pattern`]: the xorshift64* generator, the per-MiB checksum, this process's fault counters;
//! - [`stats`]: medians and spreads of a handful of samples;
//! - [`http`]: a minimal blocking HTTP/1.1 GET;
//! - [`qemu`]: the QEMU launcher (`qemu-system-x86_64 -accel tcg` with a QMP socket).

pub mod child;
pub mod http;
pub mod pattern;
pub mod qemu;
pub mod stats;
