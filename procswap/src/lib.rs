//! procswap: what can be done to one process's memory.
//!
//! Mechanism only (inspect, purge, prefetch, freeze/thaw, working-set recording); when to do
//! it is the controller's business (`local-controller/`).
//!
//! - [`inspect`]: VMAs with per-VMA present/swapped/unpopulated/file page counts, swap slots,
//!   contiguity.
//! - [`purge`]: page a frozen target out (`process_madvise(MADV_PAGEOUT)`), reclaim its own
//!   memory cgroup so nothing stays in the swap cache, verify and report.
//! - [`prefetch`]: swap-slot-ordered read-ahead pipelined with a PTE-installing mapping pass.
//! - [`freeze`]: cgroup v2/v1 freezers and SIGSTOP; [`cgroup`]: find/create/move.
//! - [`workingset`]: DAMON / idle-page-tracking working sets.
//! - [`memkind`]: the three kinds of memory (anon, shmem, file) and how each is seen from
//!   outside; [`residency`]: the Stop-time residency snapshot; [`loadingset`]: what the app
//!   touches after a thaw, in order, merged across cycles; [`plan`]: the Start plan computed at
//!   Stop and [`plan::fetch_unmapped`].
//! - [`backend`]: the [`Backend`] trait, [`StockBackend`], [`select_backend`].
#![deny(unsafe_op_in_unsafe_fn)]

pub mod backend;
pub mod cgroup;
pub mod error;
pub mod freeze;
pub mod inspect;
pub mod kmod;
pub mod loadingset;
pub mod memkind;
pub mod prefetch;
pub mod progress;
pub mod plan;
pub mod purge;
pub mod residency;
pub mod sys;
pub mod target;
pub mod testdata;
pub mod uapi;
pub mod vm;
pub mod workingset;

pub use backend::{select_backend, Backend, BackendPref, StockBackend};
pub use error::{Error, Result};
pub use freeze::{quiescence, Freezer, FreezerPref, Quiescence};
pub use inspect::{InspectOptions, Inspection, VmaInfo};
pub use loadingset::{Candidates, DecayPolicy, Loaded, LoadingSet, LoadingSetRecorder, RecorderOptions, Recording};
pub use memkind::{ByKind, KindUsage, MemKind};
pub use plan::{fetch_unmapped, ActivationPlan, FetchOptions, FetchReport, Part, PlanPart};
pub use prefetch::{prefetch_with, PrefetchOptions, PrefetchReport, StopReason};
pub use progress::{NoProgress, Progress};
pub use purge::{purge_with, PurgeOptions, PurgeReport};
pub use residency::ResidencySnapshot;
pub use sys::Range;
pub use target::Target;
pub use workingset::{WorkingSet, WsMethod};

/// Inspect `pid` with the stock backend.
pub fn inspect(pid: i32, opts: InspectOptions) -> Result<Inspection> {
    let t = Target::open(pid, "inspect")?;
    StockBackend.inspect(&t, opts)
}

/// Purge `pid` with the stock backend.
pub fn purge(pid: i32, opts: &PurgeOptions) -> Result<PurgeReport> {
    purge_with(&StockBackend, pid, opts, &NoProgress)
}

/// Prefetch `pid` with the stock backend.
pub fn prefetch(pid: i32, opts: &PrefetchOptions) -> Result<PrefetchReport> {
    prefetch_with(&StockBackend, pid, opts, &NoProgress)
}
