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
//! - [`app`]: apps of many processes (a server and its forked children): what they share is
//!   counted once ([`app::app_pages`]) and fetched once ([`app::share_objects`]).
//! - [`shmlayout`]: an app's swapped shared memory written again in the order a Start reads
//!   it (shmem two processes map leaves only through the memcg reclaim, its slots scattered).
//! - [`backend`]: the [`Backend`] trait, [`StockBackend`], [`select_backend`].
//!
//! ## Near-warm activation: the calls a Start/Stop pipeline makes (docs/architecture.md, "Stop and Start of a process app")
//! **Stop** (target frozen):
//! 1. if a [`LoadingSetRecorder`] ran since the last Start: `rec.finish()`, then
//!    [`LoadingSet::merge`]`(previous, &rec, &DecayPolicy::default())`, [`LoadingSet::save`];
//! 2. `layout = set.layout_ranges(pid)?` ([`LoadingSet::layout_ranges`]);
//! 3. [`purge_with`] with [`PurgeOptions::layout_first`]` = Some(layout)`: the loading set is
//!    paged out first in touch order; the report carries the Stop-time
//!    [`PurgeReport::snapshot`] (every kind, taken before the page-out), per-kind
//!    `evicted_bytes` and the [`purge::LayoutReport`];
//! 4. [`ActivationPlan::compute`]`(pid, &snapshot, Some(&set))` (one pagemap walk over the
//!    snapshot's anonymous pages, one `mincore` per object); persist it (JSON, versioned:
//!    [`ActivationPlan::from_json`] refuses other versions with a note);
//! 5. [`shmlayout::relayout`]`(&plans, opts)` over the app's plans (after
//!    [`app::share_objects`]), then the memory cgroup's reclaim once more.
//!
//! **Start** (walks nothing big):
//! 1. [`fetch_unmapped`]`(&target, &plan, &plan.first, &FetchOptions { charge_files_to:
//!    Some(app memcg dir), .. })`: `MADV_WILLNEED` / `posix_fadvise`, nothing mapped;
//! 2. `LoadingSetRecorder::start(pid, &Candidates::from_plan(&plan), opts)` before the thaw,
//!    or `LoadingSetRecorder::start_all_out(pid, &Candidates::from_plan_after_first(&plan),
//!    opts)` any time after it (no pagemap pass: a plan's pages stay out until the app maps
//!    them; torpord does this), then `rec.note_fetched_part(&plan, &plan.loading_rest)` and
//!    the same for `plan.rest` (the background fetch must not be mistaken for the app's reads);
//! 3. thaw; on the first response `rec.mark_first_response()`; poll in a thread
//!    ([`LoadingSetRecorder::run`] until Twinkle's stop rule or a stop flag);
//! 4. in the background: `fetch_unmapped(loading_rest)`, then `fetch_unmapped(rest)` with
//!    [`FetchOptions::io_priority`] (`BestEffort(7)` / `Idle`) so the app's own faults go first.
//!
//! Limits found while building it (measured on Linux 6.18, see `tests/root_kinds.rs`):
//! `MADV_WILLNEED` cannot swap in copy-on-write pages of private *file* mappings (it advises
//! the file): [`fetch_unmapped`] faults those few in with `process_vm_readv` (then they are
//! mapped, and invisible to the recorder); pages read-faulted since their last swap-out keep
//! their old swap slot on the next purge (the kernel drops them without writing), so a layout
//! is written once per dirtied page; a fetched file page is mapped with up to 15 cached
//! neighbours on one fault (fault-around), so file touches are recorded at 64 KiB granularity.

pub mod app;
pub mod backend;
pub mod cgroup;
pub mod error;
pub mod freeze;
pub mod inspect;
pub mod kmod;
pub mod loadingset;
pub mod memkind;
pub mod plan;
pub mod prefetch;
pub mod progress;
pub mod purge;
pub mod residency;
pub mod reslot;
pub mod shmlayout;
pub mod sys;
pub mod target;
pub mod uapi;
pub mod units;
pub mod vm;
pub mod workingset;

pub use backend::{select_backend, Backend, BackendPref, StockBackend};
pub use error::{Error, Result};
pub use freeze::{quiescence, Freezer, FreezerPref, Quiescence};
pub use inspect::{InspectOptions, Inspection, VmaInfo};
pub use loadingset::{
    Candidates, DecayPolicy, Loaded, LoadingSet, LoadingSetRecorder, RecorderOptions, Recording,
};
pub use memkind::{ByKind, KindUsage, MemKind};
pub use plan::{
    fetch_unmapped, ActivationPlan, FetchOptions, FetchReport, IoQueue, Part, PlanPart,
};
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
