//! torpor end-to-end acceptance of VM resume: host-side helpers shared by the runner and the tests.
//!
//! - [`pattern`]: the deterministic memory contents of the guest web app (`torpor-e2e-app`),
//!   so `/verify` can recompute every word without keeping a copy;
//! - [`http`]: a minimal blocking HTTP/1.1 GET (the runner polls the guest through QEMU's
//!   `hostfwd`, independently of torpord's own probe);
//! - [`qmp`]: procswap's QMP client on QEMU's unix socket (`stop`, `cont`, `query-status`, HMP);
//! - [`mem`]: the QEMU process's guest-RAM mapping and its present/swapped pages (pagemap),
//!   `/proc/meminfo`, `/proc/vmstat` and block-device counters.

pub mod bench;
pub mod guest;
pub mod mem;
pub mod pattern;
pub mod smoke;
pub mod torpord;

// HTTP GET and medians: one copy, in the test-support crate.
pub use torpor_testsupport::{http, stats};

// The QMP client: procswap's (timeouts, typed errors), the one torpord uses.
pub use procswap::vm::qmp;
