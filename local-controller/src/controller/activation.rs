//! Near-warm activation: the `loading-set` prefetch mode (the default) of process apps.
//!
//! Policy over procswap's mechanism (`procswap/src/lib.rs`, "Near-warm activation"):
//! - **Stop**: the recordings of the last Start (what the app mapped from thaw on, in touch
//!   order) are merged into each process's loading set with decay and saved; every purge of
//!   the app (at Stop, or later for the reserve) pages the loading set out first, in touch
//!   order, takes the Stop-time residency snapshot (anonymous, shmem, file pages) and computes
//!   the Start plan from it, so Start walks nothing big.
//! - **Start**: the plan's `first` part (pages touched before the first response last time)
//!   is read into the swap and page caches with `MADV_WILLNEED`/`posix_fadvise` — nothing is
//!   mapped, so the app's touches stay visible —, the readiness request is armed, the app is
//!   thawed, and two threads run: a recorder (pagemap/mincore rounds, Twinkle's stop rule) and
//!   a background fetch of the rest of the loading set, then everything else, at low I/O
//!   priority, never below the reserve, stopping at Stop.
//!
//! A Start without a plan (none computed yet, an unreadable or other-version file) falls back
//! to `full` for that Start, with an event and a note in its answer.
//!
//! Faults (`tests/root_activation.rs`): a shmem or file object deleted, truncated or replaced
//! since Stop is skipped by every fetch and named in the Start answer's notes and events; an
//! app that exits (even during the background fetch) has both threads ended and reported by
//! torpord's exit handling, and its per-process plans and loading sets dropped; a partial purge
//! (swap full) is reported in the Stop answer and loses nothing (the pages stay in RAM).

use super::{lock, AppSlot, Controller, EventKind, StartTiming};
use crate::config::PrefetchPolicy;
use procswap::cgroup::Memcg;
use procswap::inspect::Pagemap;
use procswap::memkind::PageRun;
use procswap::plan::{ObjectPart, SwapRun};
use procswap::sys::IoPriority;
use procswap::{
    fetch_unmapped, ActivationPlan, Candidates, DecayPolicy, FetchOptions, IoQueue, Loaded,
    LoadingSet, LoadingSetRecorder, PlanPart, Range, RecorderOptions, Recording, ResidencySnapshot,
    Target,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use torpor_api as api;

/// How long a Stop waits at most for the writes of its shmem re-layout (1 GiB takes ~1 s on
/// this machine's disk), and then at most again for the discards of the slots it freed.
const RELAYOUT_SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// The re-layout's discards are over when the swap disks have completed no discard for this
/// long (the kernel's discard worker issues them cluster by
/// cluster, ~2 MiB each, back to back: 2026-12-03, ~150-260 MiB per quarter second).
const DISCARD_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

/// Swap extents (separate reads) per background step; see [`steps`].
const STEP_EXTENTS: u64 = 16;

/// Before each background step: wait until at most this many reads are in flight on the swap
/// devices ([`IoQueue`]), but never longer than `QUEUE_WAIT_MAX` (another tenant's I/O must not
/// stall the fetch).
const QUEUE_READS: u64 = 4;
const QUEUE_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// When the app took a major fault since the background's last step, it is reading on demand
/// right now, and on a device that serves reads in order each of its faults waits behind every
/// read of ours queued before it: a 4 MiB step is ~3.6 ms at this disk's ~1.1 GB/s, against
/// ~30 µs for a fault alone. Tomcat with its 256 MiB webapp answered its first request in
/// 0.18-0.29 s instead of ~0.035 s (5 of 6 trials, 2026-12-03): the request's few hundred
/// faults each waited behind a step of the loading set's fetch (and a whole 240 MiB run,
/// before runs were cut). So the next step is cut into `YIELD_STEP` pieces, each issued once
/// the queue holds at most `QUEUE_READS_APP_FAULTING` reads: an app fault then waits behind at
/// most ~256 KiB of ours. Small pieces cost little throughput on this disk (256 KiB reads one
/// or two at a time: 1.0-1.7 GB/s, like 4 MiB steps, in the same noisy minutes).
const QUEUE_READS_APP_FAULTING: u64 = 1;
const YIELD_STEP: StepLimits = StepLimits {
    anon: 64,
    shmem: 64,
    file: 64,
};

/// ... unless the app faults *in the fetch's path*: at least 1/`IN_PATH_SHARE` of the next
/// step's anonymous pages are mapped already (the app got to them before the fetch did), so the
/// app is reading ahead of the fetch in the fetch's own order — the loading set's order, the
/// app's last touch order — and each of its faults is a read the fetch would issue next: the
/// app waits for those pages either way, and small pieces behind a short queue only slow the
/// fetch it is waiting for. A scan of all its memory after a Start (the bench child's touch-all;
/// a garbage collector's marking) took 1.20-1.26 s for 1 GiB with every step in pieces (its
/// faults rose before 198-250 of ~250 steps, 0.48-0.71 s waiting for the queue) against
/// 0.59-0.63 s for `full` (2026-12-04, "Session 14"). An app that faults here and there
/// (Tomcat's request) maps a few pages of a step, not a quarter of it.
const IN_PATH_SHARE: u64 = 4;

/// ... or at least 1/`IN_PATH_SHARE` of the step's first `IN_PATH_HEAD` pages (in the fetch's
/// order) are: the app has just entered the step, reading in the fetch's order. A scan of its
/// memory is ahead of the fetch by a few pages, not by a quarter of a 4 MiB step: in the
/// touch-all (2026-12-04, session 16) 6-103 steps a Start went in pieces behind a one-read
/// queue "after an app fault", the app waiting for each; an app faulting here and there
/// rarely maps 16 of a step's first 64 pages.
const IN_PATH_HEAD: u64 = 64;

/// ... and when the next step is not in the app's path but one of the `FOLLOW_STEPS` after it
/// is (the app faults further along the fetch's order: its order this time is not quite the
/// loading set's, recorded last time), the fetch goes there, and the steps it passed over are
/// read after everything else (pages the app has mapped meanwhile cost nothing then). The
/// touch-all read 112 steps of a Start in pieces "after an app fault" with only 4 in the path
/// (2026-12-04, session 16): the app was faulting ahead, not at the fetch's next step. 16
/// steps (64 MiB) ahead, two `PAGEMAP_SCAN`s a step, only after an app fault.
const FOLLOW_STEPS: usize = 16;

/// The most pages of one kind a background step holds.
struct StepLimits {
    anon: u64,
    shmem: u64,
    file: u64,
}

/// The background's steps when the app is not faulting: see `STEP_PAGES`, `SHM_STEP_PAGES`,
/// `FILE_STEP_PAGES`.
const STEP: StepLimits = StepLimits {
    anon: STEP_PAGES,
    shmem: SHM_STEP_PAGES,
    file: FILE_STEP_PAGES,
};

/// The steps when the app's shared memory is laid out on swap in Start order (its
/// `shmem_layout`, the default): a shared-memory step is then a few large reads of
/// consecutive slots, not one read per page (what `SHM_STEP_PAGES` is sized for), so it is as
/// large as an anonymous one, and is issued once at most `QUEUE_READS_DEEP` reads are
/// in flight (not `QUEUE_READS`: the app's own faults on shared memory — PostgreSQL's backends,
/// a few each — kept the queue above 4 and the fetch waiting 0.4-0.9 s per Start). PostgreSQL
/// (1 GB `shared_buffers`, pgbench select-only, three interleaved pairs of runs, 2026-12-04,
/// "Session 15"): its 1 GiB came back in 0.94-1.36 s instead of 1.54-2.04 s, and its first
/// three seconds after a Start served 5.5k / 42k / 55k transactions a second on average (9
/// Starts each) instead of 2.1k / 26k / 50k.
const STEP_LAID_OUT: StepLimits = StepLimits {
    anon: STEP_PAGES,
    shmem: STEP_PAGES,
    file: FILE_STEP_PAGES,
};
/// See [`STEP_LAID_OUT`]; also the queue of the first part's pages read after the thaw
/// ([`cut_first`]): the app waits for them either way.
const QUEUE_READS_DEEP: u64 = 32;

/// The first response, for the loading set's `first` part (fetched before the next thaw) and
/// for the start of the background fetch, is the readiness probe's answer; without an armed
/// probe (an HTTP GET or a redis `PING` answered by the app itself) never earlier than this
/// after the thaw:
/// a TCP probe is answered by the kernel before the app has served
/// anything (redis: its first client request touches ~150 pages after the probe's answer), and
/// the app's first requests then fault alone, not behind the background's reads.
const FIRST_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

/// The most pages of the plans' `first` parts read before the thaw (64 MiB with 4 KiB pages,
/// 35-60 ms of reads on this machine's disk); the rest of them is read right after it, at the
/// front of the background ([`cut_first`]). Nothing is mapped before the thaw (the recorder
/// must see the app's touches), so the app maps each fetched page itself, a minor fault each:
/// 0.81-0.94 µs a page here (1 GiB out of the swap cache, 2026-12-04), 0.2-0.25 s for a
/// gigabyte. Before the thaw the app can do none of it; after, it maps what was read while the
/// rest is read. The touch-all's first part grew to 400-600 MiB over cycles (everything it
/// touched before torpord's first-response window ended): 0.3-0.58 s of reads with the app
/// frozen, then ~0.15 s of the app's minor faults. Tomcat's first parts are 20-36 MiB,
/// PostgreSQL's and redis' under 3 MiB: unchanged.
const FIRST_BEFORE_THAW_PAGES: u64 = 16384;

/// The longest the background fetch waits for the first response before it starts anyway.
const FIRST_RESPONSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Anonymous or shared-memory pages per background fetch step: the stop flag and the reserve
/// are checked, and the swap queue drained to `QUEUE_READS`, between steps (4 MiB with 4 KiB
/// pages).
const STEP_PAGES: u64 = 1024;

/// Shared-memory pages per background fetch step (1 MiB with 4 KiB pages). Their swap slots are
/// unknown (pagemap shows no swap entry for shared memory) and, for a segment the app touches at
/// random (PostgreSQL's `shared_buffers`), scattered: a step is about one read per page, and an
/// app fault waits behind the whole step. With 1024-page steps PostgreSQL's first second after
/// a Start served 137-636 transactions against 5,000-7,800 with demand paging (2026-12-02/03).
const SHM_STEP_PAGES: u64 = 256;

/// File pages per background fetch step (32 MiB with 4 KiB pages): each file step is issued by
/// a helper process that joins the app's memory cgroup (an RCU grace period, 10-50 ms), so
/// file steps are bigger; the device's queue is drained to `QUEUE_READS` before each.
const FILE_STEP_PAGES: u64 = 8192;

/// Thread names (15 bytes at most: the kernel's comm).
const RECORDER_THREAD: &str = "torpor-record";
const FETCH_THREAD: &str = "torpor-fetch";
/// Test hook: while the file this names exists, the background fetch waits before each step
/// (so a test can act during the fetch, e.g. kill the app, whatever the machine's speed).
const HOLD_ENV: &str = "TORPORD_TEST_HOLD_BACKGROUND";

/// The head of the loading set (the part touched before the first response comes first in the
/// layout: what the next Start reads before the thaw) in which every purge gives the pages that
/// kept an old swap slot a new one (`procswap::PurgeOptions::layout_rewrite_bytes`,
/// `procswap::reslot`): a page read-faulted from swap keeps its slot while mapped, and a later
/// write does not fault, so without this the next page-out puts it back in its old, scattered
/// slot. The earlier rewrite (one byte read and written back while the page was mapped: no
/// fault, slot kept) gained nothing; re-slotting pages the page out first, so the write back is
/// a write fault on the swap entry, which frees the slot. See
/// bench/results/activation/README.md, "Swap layout".
pub(super) const LAYOUT_REWRITE_BYTES: u64 = 32 << 20;

/// The threads a loading-set Start leaves running (runtime only).
#[derive(Default)]
pub(crate) struct ActRuntime {
    stop: Arc<AtomicBool>,
    first_response: Arc<AtomicBool>,
    recorder: Option<JoinHandle<Vec<Recording>>>,
    background: Option<JoinHandle<BackgroundReport>>,
    /// The plans the last purge computed, per pid, kept so that Start does not parse them
    /// again (megabytes of JSON for a large process: ~80 ms of redis' Start before the
    /// thaw); taken by the next Start, and used only while the file is the one written with
    /// it (same length and modification time): otherwise, and after a torpord restart, the
    /// file is read.
    plans: std::collections::HashMap<i32, (ActivationPlan, Option<FileStamp>)>,
    /// The files of the plans the last Start used (every process's, each once: the fewest
    /// Stops unheld), for the next purge of the app's main process to remember those it no
    /// longer holds ([`REMEMBER_UNHELD_STOPS`]).
    remembered: Vec<procswap::memkind::MemObject>,
}

/// A file the app read through descriptors it has since closed (PostgreSQL's tables: its
/// backends come and go) is added to its main process's Stop-time snapshot at each Stop that
/// finds it unheld, until the one that would make this many in a row (five Stops with six;
/// [`procswap::ResidencySnapshot::remember`]): the purge's reclaim evicts its page cache
/// either way, and without it the next Start would not bring it back — PostgreSQL's planned
/// table pages fell from 143k to 34k to 1.4k over three cycles, and its TPS with them
/// (sessions 16-17). The same six cycles the part read before the thaw keeps an anonymous page
/// ([`procswap::DecayPolicy`]).
pub(super) const REMEMBER_UNHELD_STOPS: u32 = 6;

/// The regular files named by path in `plans`, each once (the fewest Stops unheld).
fn plan_files(plans: &[ActivationPlan]) -> Vec<procswap::memkind::MemObject> {
    let mut by_key: HashMap<procswap::memkind::ObjectKey, procswap::memkind::MemObject> =
        HashMap::new();
    for o in plans.iter().flat_map(|p| &p.objects) {
        if o.kind != procswap::memkind::MemKind::File || !o.by_path {
            continue;
        }
        by_key
            .entry(o.key)
            .and_modify(|k| k.unheld_stops = k.unheld_stops.min(o.unheld_stops))
            .or_insert_with(|| o.clone());
    }
    by_key.into_values().collect()
}

/// Length, modification time and first bytes of a file (is it still the one we wrote? The
/// format version is at the start of a plan's JSON).
type FileStamp = (u64, std::time::SystemTime, Vec<u8>);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let m = f.metadata().ok()?;
    let mut head = Vec::with_capacity(256);
    f.by_ref().take(256).read_to_end(&mut head).ok()?;
    Some((m.len(), m.modified().ok()?, head))
}

/// What the background fetch did (in the Stop answer and events).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackgroundReport {
    pub loading_rest_bytes: u64,
    pub rest_bytes: u64,
    /// Both parts' bytes per kind (anonymous, shared memory, files).
    #[serde(default)]
    pub kind_bytes: procswap::memkind::ByKind<u64>,
    pub seconds: f64,
    /// Time spent waiting for the swap devices' queues to drain between steps.
    #[serde(default)]
    pub queue_wait_s: f64,
    /// Time spent waiting in the first response's window after the app's first major fault in
    /// it (see [`Window`]); for a VM's file pages, the wait for the first response.
    #[serde(default)]
    pub waited_s: f64,
    /// When the rest of the loading set was issued (seconds from the first read).
    #[serde(default)]
    pub loading_rest_s: f64,
    /// Steps before which the app had taken a major fault since the step before: issued in
    /// `YIELD_STEP` pieces behind a short queue.
    #[serde(default)]
    pub yielded_steps: u64,
    /// Steps before which the app had taken a major fault in the fetch's path
    /// (`IN_PATH_SHARE`): issued whole.
    #[serde(default)]
    pub in_path_steps: u64,
    /// The wait for the window's end (the app faulted in it) was cut short because the app was
    /// faulting in the fetch's path (see [`Fetcher::window_gate`]).
    #[serde(default)]
    pub started_in_path: bool,
    /// Times the fetch went ahead to where the app was faulting (see [`FOLLOW_STEPS`]).
    #[serde(default)]
    pub followed: u64,
    /// Steps of the first part's pages read after the thaw (see [`cut_first`]).
    #[serde(default)]
    pub first_after_thaw_steps: u64,
    /// Pieces read in the first response's window, before the app's first major fault (see
    /// [`Window`]).
    #[serde(default)]
    pub window_pieces: u64,
    /// When the window ended for the fetch (seconds from the thaw's background start).
    #[serde(default)]
    pub window_s: f64,
    /// Why it ended early: stopped, target exited, free-memory floor.
    pub ended: Option<String>,
    pub skipped: Vec<String>,
}

impl BackgroundReport {
    /// One line for the Stop answer and the events: bytes, time, why it ended early, and the
    /// objects it skipped (deleted, truncated... since Stop).
    pub fn describe(&self) -> String {
        let mut skipped = self.skipped.clone();
        skipped.sort();
        skipped.dedup();
        format!(
            "background fetch: {} MiB of the loading set (issued by {:.2}s), {} MiB of the rest (anonymous {}, shared {}, files {} MiB in all) in {:.2}s ({} steps of the first part after the thaw; {:.2}s waiting for the queue; {} steps in small pieces after an app fault, {} whole with the app faulting in the fetch's path, {} of them after following it ahead); the first response's window: {} pieces read in it before the app's first fault, {:.3}s waiting in it after, over at {:.3}s{}{}{}",
            self.loading_rest_bytes >> 20,
            self.loading_rest_s,
            self.rest_bytes >> 20,
            self.kind_bytes.anon >> 20,
            self.kind_bytes.shmem >> 20,
            self.kind_bytes.file >> 20,
            self.seconds,
            self.first_after_thaw_steps,
            self.queue_wait_s,
            self.yielded_steps,
            self.in_path_steps,
            self.followed,
            self.window_pieces,
            self.waited_s,
            self.window_s,
            if self.started_in_path {
                " (started early: the app faulted in the fetch's path)"
            } else {
                ""
            },
            self.ended
                .as_ref()
                .map(|e| format!(" (ended: {e})"))
                .unwrap_or_default(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped {}", skipped.join(", "))
            }
        )
    }
}

/// The `loading-set` part of a Start's answer (in the API).
pub use torpor_api::ActivationTiming;

/// The per-process loading sets and plans of one app, on disk under the state directory.
fn dir(ctl: &Controller, what: &str, app: &str) -> PathBuf {
    ctl.cfg.state_dir.join(what).join(app)
}

fn plan_path(ctl: &Controller, app: &str, pid: i32) -> PathBuf {
    dir(ctl, "plan", app).join(format!("{pid}.json"))
}

pub(super) fn set_path(ctl: &Controller, app: &str, pid: i32) -> PathBuf {
    dir(ctl, "loading-set", app).join(format!("{pid}.json"))
}

fn write_atomic(path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A plan part cut into steps: at most `limits.anon` anonymous pages (`STEP_PAGES` in a normal
/// step), or `limits.shmem` shmem pages of one object, or `limits.file` file pages of one
/// object.
/// An anonymous step also ends at `STEP_EXTENTS` runs of consecutive swap slots: scattered pages
/// are one read each, and a step's reads are what the app's next fault may have to wait behind.
/// Shared memory is cut like anonymous memory: one `MADV_WILLNEED` over a whole segment (1 GB
/// of PostgreSQL's `shared_buffers`) queues every read at once, and every page the app faults on
/// meanwhile is one of them, locked until the whole queue ahead of it is read (the first second
/// after a Start was nearly idle: 88 transactions vs 4,510 with demand paging).
fn steps(part: &PlanPart, limits: &StepLimits, ps: u64) -> Vec<PlanPart> {
    let mut out: Vec<PlanPart> = swap_steps(&part.anon, limits.anon, ps)
        .into_iter()
        .map(|anon| PlanPart {
            anon,
            ..Default::default()
        })
        .collect();
    // Copy-on-write pages of private file mappings are on swap too (each is read by a fault
    // of ours: `process_vm_readv`), cut the same way; they were left out of every step, so the
    // background never fetched them (Tomcat's and PostgreSQL's outside the first part came
    // back one major fault at a time).
    out.extend(
        swap_steps(&part.anon_cow, limits.anon, ps)
            .into_iter()
            .map(|anon_cow| PlanPart {
                anon_cow,
                ..Default::default()
            }),
    );
    for o in &part.shmem {
        out.extend(
            object_chunks(o, limits.shmem)
                .into_iter()
                .map(|c| PlanPart {
                    shmem: vec![c],
                    ..Default::default()
                }),
        );
    }
    for o in &part.file {
        out.extend(object_chunks(o, limits.file).into_iter().map(|c| PlanPart {
            file: vec![c],
            ..Default::default()
        }));
    }
    out
}

/// Runs on swap cut into steps of at most `max` pages (`max` ≥ 1) and `STEP_EXTENTS` runs of
/// consecutive swap slots, in order; `ps` is the page size.
fn swap_steps(runs: &[SwapRun], max: u64, ps: u64) -> Vec<Vec<SwapRun>> {
    let mut out = Vec::new();
    let mut cur: Vec<SwapRun> = Vec::new();
    let (mut pages, mut extents) = (0, 0);
    let mut next_slot: Option<(u8, u64)> = None;
    // A run longer than a step is cut into step-sized pieces first: one contiguous run can be
    // an app's whole heap (Tomcat's 256 MiB of data: ~61,000 pages on consecutive slots), and
    // issued as one step it queued 240 MiB of reads ahead of the app's own faults.
    let max = max.max(1);
    let pieces = runs.iter().flat_map(|r| {
        (0..r.pages.div_ceil(max)).map(move |i| {
            // i < pages / max rounded up, so skip < r.pages: the piece lies within the run
            // (addresses and slots of a run are in range by construction).
            let skip = i * max;
            SwapRun {
                addr: r.addr + skip * ps,
                pages: (r.pages - skip).min(max),
                swap_type: r.swap_type,
                offset: r.offset + skip,
            }
        })
    });
    for r in pieces {
        let new_extent = next_slot != Some((r.swap_type, r.offset));
        if !cur.is_empty() && (pages + r.pages > max || (new_extent && extents == STEP_EXTENTS)) {
            out.push(std::mem::take(&mut cur));
            (pages, extents) = (0, 0);
        }
        if new_extent || cur.is_empty() {
            extents += 1;
        }
        cur.push(r);
        pages += r.pages;
        next_slot = Some((r.swap_type, r.offset + r.pages));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `o`'s runs cut into pieces of at most `max` pages each, in order (a run longer than `max`
/// is split).
fn object_chunks(o: &ObjectPart, max: u64) -> Vec<ObjectPart> {
    procswap::memkind::chunks(&o.runs, max)
        .into_iter()
        .map(|runs| ObjectPart {
            object: o.object,
            runs,
        })
        .collect()
}

impl Controller {
    /// Whether the configured mode keeps loading sets and plans (a per-request override does
    /// not change what Stop prepares).
    pub(super) fn keeps_plans(&self) -> bool {
        self.cfg.prefetch == PrefetchPolicy::LoadingSet
    }

    /// Stop: end the last Start's threads and (`merge`) merge its recordings into the loading
    /// sets; without `merge` (a kernel purge) they are dropped. Returns notes for the Stop answer.
    pub(super) fn activation_stop(&self, slot: &AppSlot, merge: bool) -> Vec<String> {
        let name = &slot.cfg.name;
        let (recorder, background) = {
            let mut a = lock(&slot.act);
            a.stop.store(true, Ordering::SeqCst);
            (a.recorder.take(), a.background.take())
        };
        let mut notes = Vec::new();
        if let Some(h) = background {
            if let Ok(b) = h.join() {
                notes.push(b.describe());
            }
        }
        let recordings = recorder.and_then(|h| h.join().ok()).unwrap_or_default();
        if merge {
            notes.extend(self.merge_recordings(name, recordings));
        } else if !recordings.is_empty() {
            notes.push(format!(
                "kernel purge: {} recording(s) of the last Start dropped (no loading set kept)",
                recordings.len()
            ));
        }
        for n in &notes {
            self.event(Some(name), EventKind::Activation, n.clone());
        }
        notes
    }

    /// Merge each recording into its process's saved loading set (with decay) and save it;
    /// notes on what was merged, ignored or not saved. VM apps too (QEMU's recording).
    pub(super) fn merge_recordings(&self, name: &str, recordings: Vec<Recording>) -> Vec<String> {
        let mut notes = Vec::new();
        for rec in recordings {
            let path = set_path(self, name, rec.pid);
            let prev = match LoadingSet::load(&path) {
                Ok(Loaded::Set(s)) => Some(*s),
                Ok(Loaded::Missing) => None,
                Ok(Loaded::Ignored(note)) => {
                    notes.push(format!(
                        "pid {}: previous loading set ignored: {note}",
                        rec.pid
                    ));
                    None
                }
                Err(e) => {
                    notes.push(format!(
                        "pid {}: previous loading set unreadable: {e}",
                        rec.pid
                    ));
                    None
                }
            };
            let set = LoadingSet::merge(prev.as_ref(), &rec, &DecayPolicy::default());
            let p = set.pages();
            let st = &rec.stats;
            notes.push(format!(
                "pid {}: recorded {} rounds in {:.2} s (polls {:.3} s, slowest {:.1} ms; {}), \
                 loading set {} anon + {} shmem + {} file pages",
                rec.pid,
                st.rounds,
                st.duration_ms as f64 / 1e3,
                st.poll_us_total as f64 / 1e6,
                st.poll_us_max as f64 / 1e3,
                st.stop,
                p.anon,
                p.shmem,
                p.file
            ));
            if let Some(d) = path.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            if let Err(e) = set.save(&path) {
                notes.push(format!("pid {}: saving the loading set: {e}", rec.pid));
            }
        }
        notes
    }

    /// The files the next purge of `pid` remembers (see [`REMEMBER_UNHELD_STOPS`]): those of
    /// the last Start's plans for the app's main process, none for the others.
    pub(super) fn remembered_files(
        &self,
        slot: &AppSlot,
        pid: i32,
    ) -> Vec<procswap::memkind::MemObject> {
        if lock(&slot.st).pid != Some(pid) {
            return Vec::new();
        }
        lock(&slot.act).remembered.clone()
    }

    /// The purge layout of `pid`: its loading set's pages first, in touch order.
    pub(super) fn purge_layout(&self, slot: &AppSlot, pid: i32) -> Option<Vec<Range>> {
        match LoadingSet::load(&set_path(self, &slot.cfg.name, pid)) {
            Ok(Loaded::Set(s)) => s.layout_ranges(pid).ok().filter(|l| !l.is_empty()),
            _ => None,
        }
    }

    /// After a purge of `pid` (snapshot taken before its page-out): the Start plan.
    pub(super) fn save_plan(&self, slot: &AppSlot, pid: i32, snap: &ResidencySnapshot) {
        let name = &slot.cfg.name;
        let set = match LoadingSet::load(&set_path(self, name, pid)) {
            Ok(Loaded::Set(s)) => Some(*s),
            _ => None,
        };
        let res = ActivationPlan::compute(pid, snap, set.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|p| {
                serde_json::to_vec(&p)
                    .map_err(|e| e.to_string())
                    .map(|v| (p, v))
            })
            .and_then(|(p, v)| {
                write_atomic(&plan_path(self, name, pid), &v)
                    .map_err(|e| e.to_string())
                    .map(|_| p)
            });
        match res {
            Ok(p) => {
                let (f, l, r) = (p.first.pages(), p.loading_rest.pages(), p.rest.pages());
                let st = stamp(&plan_path(self, name, pid));
                lock(&slot.act).plans.insert(pid, (p.clone(), st));
                self.event(
                    Some(name),
                    EventKind::Activation,
                    format!(
                        "pid {pid}: plan: before thaw {} pages ({} swap extents), loading set {} pages, rest {} pages",
                        f.total(),
                        p.first.swap_extents(),
                        l.total(),
                        r.total()
                    ),
                );
            }
            Err(e) => self.event(
                Some(name),
                EventKind::Error,
                format!("pid {pid}: activation plan not computed: {e}"),
            ),
        }
    }

    /// After the plans of `pids` were saved (the reclaim has run): write the app's swapped
    /// shmem again in the order the next Start fetches it ([`procswap::shmlayout`]: one read
    /// and one write of every page, so the Start's read-ahead is sequential), then reclaim the
    /// memory cgroup again (the pages written sit in the swap cache until their write is done).
    /// `None` when the plans hold no shmem.
    pub(super) fn relayout_shmem(
        &self,
        slot: &AppSlot,
        pids: &[i32],
        memcg: Option<&Memcg>,
    ) -> Option<api::ShmemLayout> {
        let mut plans: Vec<ActivationPlan> = {
            let act = lock(&slot.act);
            pids.iter()
                .filter_map(|p| act.plans.get(p).map(|(plan, _)| plan.clone()))
                .collect()
        };
        // The Start's order: what the processes share fetched once, where the Start fetches it.
        procswap::app::share_objects(&mut plans);
        if procswap::shmlayout::start_order(&plans).is_empty() {
            return None;
        }
        let rep = procswap::shmlayout::relayout(
            &plans,
            &procswap::shmlayout::RelayoutOptions {
                free_floor_bytes: self.cfg.reserve,
                ..Default::default()
            },
        );
        let mut notes: Vec<String> = rep.stopped.iter().cloned().collect();
        notes.extend(rep.skipped.iter().cloned());
        if let Some(m) = memcg {
            // The page-outs' writes are still going when the last step returns: the Stop
            // answers once they are done, so a Start right after it does not read behind them
            // (and the reclaim below finds the pages clean). It did not explain PostgreSQL's
            // slower first query with the re-layout (bench/results/activation, "Session 12").
            match m.wait_writeback(RELAYOUT_SETTLE_MAX) {
                Ok((_, 0, _)) => {}
                Ok((_, left, waited)) => notes.push(format!(
                    "{} KiB still under writeback after {} ms",
                    left >> 10,
                    waited.as_millis()
                )),
                Err(e) => notes.push(format!("writeback not waited for: {e}")),
            }
            match m.reclaim_all() {
                Ok(rc) => notes.extend(rc.incomplete),
                Err(e) => notes.push(format!("reclaim after the shmem layout: {e}")),
            }
        }
        // Every old slot the re-layout freed is discarded by the kernel after the fact (swap
        // areas with discard): the Stop answers once those are done, so a Start right after
        // it does not read behind them (see `IoQueue::wait_discards`). Nothing re-laid,
        // nothing freed: no wait.
        let (discards, waited) = if rep.pages > 0 {
            IoQueue::of_swap().wait_discards(DISCARD_QUIET, RELAYOUT_SETTLE_MAX)
        } else {
            (0, std::time::Duration::ZERO)
        };
        if waited >= RELAYOUT_SETTLE_MAX {
            notes.push(format!(
                "swap discards still going after {} ms ({discards} done meanwhile)",
                waited.as_millis()
            ));
        }
        let ps = procswap::sys::page_size();
        let out = api::ShmemLayout {
            bytes: rep.pages * ps,
            seconds: rep.seconds,
            read_seconds: rep.read_seconds,
            notes,
        };
        self.event(
            Some(&slot.cfg.name),
            EventKind::Activation,
            format!(
                "shmem written again in Start order: {} MiB of {} object(s) in {:.2}s (reads {:.2}s), then {} swap discard(s) waited for in {} ms{}",
                out.bytes >> 20,
                rep.objects,
                out.seconds,
                out.read_seconds,
                discards,
                waited.as_millis(),
                if out.notes.is_empty() {
                    String::new()
                } else {
                    format!("; {}", out.notes.join("; "))
                }
            ),
        );
        Some(out)
    }

    /// Forget the Start plans of `pids` (in memory and on disk): a kernel purge moved their
    /// pages to other swap slots, or a Stop begins (only its purge makes new ones). The loading
    /// sets stay. Returns how many files were removed.
    pub(super) fn forget_plans(&self, slot: &AppSlot, pids: &[i32]) -> usize {
        lock(&slot.act).plans.clear();
        pids.iter()
            .filter(|&&pid| std::fs::remove_file(plan_path(self, &slot.cfg.name, pid)).is_ok())
            .count()
    }

    /// The saved plans of `pids` (a missing or unreadable one is left out, with a note).
    fn load_plans(
        &self,
        slot: &AppSlot,
        pids: &[i32],
        notes: &mut Vec<String>,
    ) -> Vec<ActivationPlan> {
        let mut plans = Vec::new();
        let mut cached = std::mem::take(&mut lock(&slot.act).plans);
        for &pid in pids {
            let path = plan_path(self, &slot.cfg.name, pid);
            if let Some((p, st)) = cached.remove(&pid) {
                if st.is_some() && st == stamp(&path) {
                    plans.push(p);
                    continue;
                }
            }
            match std::fs::read(&path) {
                Ok(b) => match ActivationPlan::from_json(&b) {
                    Ok(p) if p.pid == pid => plans.push(p),
                    Ok(p) => notes.push(format!("pid {pid}: plan is for pid {}: ignored", p.pid)),
                    Err(e) => notes.push(format!("pid {pid}: plan ignored: {e}")),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    notes.push(format!("pid {pid}: no plan yet"))
                }
                Err(e) => notes.push(format!("pid {pid}: {}: {e}", path.display())),
            }
        }
        plans
    }

    /// Start, before thaw: fetch each plan's `first` part (nothing else: the recorders start
    /// after the thaw, see [`start_recorder`]). Returns `None` when no process has a plan (the
    /// caller falls back to `full`).
    pub(super) fn activation_before_thaw(
        &self,
        slot: &AppSlot,
        pids: &[i32],
        timing: &mut StartTiming,
    ) -> Option<(Thawing, ActivationTiming)> {
        let mut at = ActivationTiming::default();
        // Under an unmet reserve nothing is fetched (not even in the background): demand paging
        // brings the app back, and the answer says why.
        if let Some(s) = self.reserve_unmet() {
            timing.prefetch_stopped = Some(format!("{s:?}"));
            at.notes
                .push("free memory below the reserve: nothing fetched".into());
            return Some((Thawing::default(), at));
        }
        let tl = Instant::now();
        let mut plans = self.load_plans(slot, pids, &mut at.notes);
        lock(&slot.act).remembered = plan_files(&plans);
        // Many processes, one app: what they share is fetched (and counted) once, and shmem
        // they share belongs to the loading set (children forked after the thaw touch it).
        let shared = procswap::app::share_objects(&mut plans);
        if shared.shared_shmem_objects > 0 {
            at.notes.push(format!(
                "{} shmem object(s) shared by the app's processes: {} pages with the loading set; duplicates dropped: {} shmem + {} file pages",
                shared.shared_shmem_objects,
                shared.promoted_pages,
                shared.duplicate_pages.shmem,
                shared.duplicate_pages.file
            ));
        }
        at.planned_pages = Some(procswap::app::plan_pages(&plans).into());
        at.plan_load_s = tl.elapsed().as_secs_f64();
        if plans.is_empty() {
            for n in &at.notes {
                self.event(
                    Some(&slot.cfg.name),
                    EventKind::Activation,
                    format!("{n}: this Start runs as full"),
                );
            }
            // The answer says so too: the mode that ran and why.
            at.notes
                .push("no usable plan: this Start runs as full".into());
            timing.prefetch_mode = Some(PrefetchPolicy::Full.as_str().to_string());
            timing.activation = Some(at);
            return None;
        }
        let opts = FetchOptions {
            free_floor_bytes: self.cfg.reserve,
            // The first part's file read-ahead is issued by torpord itself, so its page cache
            // is charged to torpord's memory cgroup, not the app's (the background's file steps
            // are charged to the app). A helper joining the app's memcg holds the kernel's
            // cgroup locks for an RCU grace period, and the thaw's write to `cgroup.freeze`
            // waited for it: measured on the quiet machine (2026-12-02, bench child, null
            // request), thaw 11-16 ms with the helper, 0.0 ms without; the null request's first
            // response 0.015-0.020 s -> 0.002 s (demand paging 0.003 s). The price: up to the
            // first part's file pages (Tomcat: ~13 MiB) of reclaimable page cache on torpord's
            // account; the next Stop's page-out still drops the ones the app maps.
            charge_files_to: None,
            ..FetchOptions::default()
        };
        // A first part larger than `FIRST_BEFORE_THAW_PAGES` is read before the thaw up to
        // that, the rest of it right after, at the front of the background.
        let tails = cut_first(&mut plans, FIRST_BEFORE_THAW_PAGES);
        let t = Instant::now();
        for plan in &plans {
            self.fetch_first(slot, plan, &opts, &mut at, timing);
        }
        at.first_fetch_s = t.elapsed().as_secs_f64();
        at.planned_pids = plans.len();
        timing.prefetch_bytes += at.first_issued_bytes;
        let mut after_thaw = Vec::with_capacity(plans.len());
        for (plan, tail) in plans.iter_mut().zip(tails) {
            let n = tail.iter().map(|r| r.pages).sum::<u64>();
            at.first_after_thaw_pages += n;
            after_thaw.push(n);
            plan.loading_rest.anon.splice(0..0, tail);
        }
        Some((Thawing { plans, after_thaw }, at))
    }

    /// Why nothing may be fetched now: free memory below the reserve.
    fn reserve_unmet(&self) -> Option<procswap::StopReason> {
        let m = procswap::sys::meminfo().ok()?;
        (m.mem_available < self.cfg.reserve).then_some(procswap::StopReason::FreeFloor {
            available_bytes: m.mem_available,
            floor_bytes: self.cfg.reserve,
        })
    }

    /// Before thaw: fetch `plan`'s `first` part (unmapped), counting it in `at`; objects
    /// skipped are reported as events and notes (once each).
    fn fetch_first(
        &self,
        slot: &AppSlot,
        plan: &ActivationPlan,
        opts: &FetchOptions,
        at: &mut ActivationTiming,
        timing: &mut StartTiming,
    ) {
        let (f, l, r) = (
            plan.first.pages(),
            plan.loading_rest.pages(),
            plan.rest.pages(),
        );
        at.first_pages += f.total();
        at.loading_rest_pages += l.total();
        at.rest_pages += r.total();
        at.notes
            .extend(plan.notes.iter().map(|n| format!("pid {}: {n}", plan.pid)));
        let ti = Instant::now();
        let fetched = Target::open(plan.pid, "activation")
            .and_then(|tg| fetch_unmapped(&tg, plan, &plan.first, opts));
        at.first_issue_s += ti.elapsed().as_secs_f64();
        match fetched {
            Ok(rep) => {
                at.first_issued_bytes += rep.issued_bytes.total();
                at.first_swap_extents += rep.swap_extents;
                at.first_cow_pages += rep.cow_mapped_pages;
                for s in &rep.skipped {
                    let n = format!("pid {}: skipped {} ({})", plan.pid, s.path, s.reason);
                    if !at.notes.contains(&n) {
                        // Reported like the objects found gone after the thaw.
                        self.event(Some(&slot.cfg.name), EventKind::Activation, n.clone());
                        at.notes.push(n);
                    }
                }
                if let Some(s) = rep.stopped {
                    timing.prefetch_stopped = Some(format!("{s:?}"));
                }
            }
            Err(e) => at
                .notes
                .push(format!("pid {}: fetch before thaw failed: {e}", plan.pid)),
        }
    }

    /// Start, right after thaw: the recorders (see [`start_recorder`]), the recorder and
    /// background threads.
    pub(super) fn activation_after_thaw(
        &self,
        slot: &AppSlot,
        thawing: Thawing,
        at: &mut ActivationTiming,
    ) {
        let Thawing { plans, after_thaw } = thawing;
        let plans = Arc::new(plans);
        // Objects gone since Stop (deleted, truncated, replaced...) are skipped by every fetch
        // and the recorder; the answer names each one, whatever part of the plan it is in.
        // Checked here, after the thaw, while the app works towards its first response (a
        // reopen per object: not worth delaying the thaw for).
        for plan in plans.iter() {
            for (o, g) in gone_objects(plan) {
                let n = format!("pid {}: skipped {} ({g})", plan.pid, o.path);
                if !at.notes.contains(&n) {
                    self.event(Some(&slot.cfg.name), EventKind::Activation, n.clone());
                    at.notes.push(n);
                }
            }
        }
        let mut a = lock(&slot.act);
        let stop = Arc::new(AtomicBool::new(false));
        let first = Arc::new(AtomicBool::new(false));
        a.stop = stop.clone();
        a.first_response = first.clone();
        let (stop_r, first_r) = (stop.clone(), first);
        let ours = MappedByUs::default();
        let ours_r = ours.clone();
        // An armed probe's answer is the app's own first response; any other readiness (a
        // TCP connect, no probe) says nothing about what the app has served yet.
        let window = if at.armed_probe {
            std::time::Duration::ZERO
        } else {
            FIRST_WINDOW
        };
        // Named, so that a test (or an operator) sees them in /proc/PID/task/*/comm. The
        // recorders are made in the thread once the first response is out (nothing is polled
        // before it anyway): neither the app's first request nor the Start's answer waits for
        // them (a plan of scattered slots is 100k+ runs to normalize: 0.12 s at load 16).
        let (name, plans_r) = (slot.cfg.name.clone(), plans.clone());
        a.recorder = self.spawn_recorder(slot, RECORDER_THREAD, move || {
            let thawed = Instant::now();
            let waited = wait_first_response(&first_r, &stop_r, window);
            // When the first response came (not when the recorders are ready: making them
            // takes milliseconds for a large plan).
            let answered = first_r
                .load(Ordering::SeqCst)
                .then(|| std::time::Duration::from_secs_f64(waited));
            let mut notes = Vec::new();
            let recorders: Vec<LoadingSetRecorder> = plans_r
                .iter()
                .filter_map(|p| start_recorder(p, &mut notes))
                .collect();
            for n in notes {
                tracing::warn!("app {name}: {n}");
            }
            record_from(
                recorders,
                &stop_r,
                &first_r,
                (thawed, window, answered),
                &ours_r,
            )
        });
        let reserve = self.cfg.reserve;
        let shm_lag = slot.cfg.shmem_layout;
        let hold = std::env::var_os(HOLD_ENV).map(PathBuf::from);
        let first_b = a.first_response.clone();
        a.background = std::thread::Builder::new()
            .name(FETCH_THREAD.into())
            .spawn(move || {
                let wait = Some((&*first_b, window));
                background(
                    &plans,
                    &after_thaw,
                    &stop,
                    reserve,
                    hold.as_deref(),
                    &ours,
                    shm_lag,
                    wait,
                )
            })
            .map_err(|e| {
                self.event(
                    Some(&slot.cfg.name),
                    EventKind::Error,
                    format!("no background fetch thread: {e}"),
                )
            })
            .ok();
    }

    /// The app has no process left (it exited, or was killed, maybe during the background
    /// fetch): end the last Start's threads (they stop at their next step: the target is
    /// gone), report what the fetch did and why it ended, and drop the per-process plans and
    /// loading sets (they name processes that no longer exist). Nothing is left running or
    /// referring to the app.
    pub(super) fn activation_exited(&self, slot: &AppSlot) {
        let name = &slot.cfg.name;
        let (recorder, background) = {
            let mut a = lock(&slot.act);
            a.stop.store(true, Ordering::SeqCst);
            (a.recorder.take(), a.background.take())
        };
        if let Some(h) = background {
            match h.join() {
                Ok(b) => self.event(
                    Some(name),
                    EventKind::Activation,
                    format!("app exited: {}", b.describe()),
                ),
                Err(_) => self.event(
                    Some(name),
                    EventKind::Error,
                    "background fetch thread panicked".into(),
                ),
            }
        }
        if let Some(h) = recorder {
            // Recordings of a process that no longer exists are of no use.
            let n = h.join().map(|r| r.len()).unwrap_or(0);
            self.event(
                Some(name),
                EventKind::Activation,
                format!("app exited: recorder ended ({n} recordings discarded)"),
            );
        }
        for what in ["plan", "loading-set"] {
            let d = dir(self, what, name);
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => self.event(
                    Some(name),
                    EventKind::Error,
                    format!("removing {}: {e}", d.display()),
                ),
            }
        }
    }

    /// The recorder thread `name` running `f` (`None`, with an event, when it cannot start).
    pub(super) fn spawn_recorder(
        &self,
        slot: &AppSlot,
        name: &str,
        f: impl FnOnce() -> Vec<Recording> + Send + 'static,
    ) -> Option<JoinHandle<Vec<Recording>>> {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|e| {
                self.event(
                    Some(&slot.cfg.name),
                    EventKind::Error,
                    format!("no recorder thread: {e}"),
                )
            })
            .ok()
    }

    /// Start: the app answered its first request.
    pub(super) fn activation_first_response(&self, slot: &AppSlot) {
        lock(&slot.act).first_response.store(true, Ordering::SeqCst);
    }
}

/// A recorder for `plan`'s process, told about the background fetch's parts so they are not
/// mistaken for the app's own reads; `None` with a note if it cannot start.
///
/// Made after the thaw (in the recorder thread), not before it: the plan was computed after the purge, from
/// pages that were out then, and the app has been frozen since, so every candidate is still
/// out ([`LoadingSetRecorder::start_all_out`]: no pagemap or `mincore` pass) — except the
/// `first` part's copy-on-write pages, which the fetch before the thaw mapped itself
/// ([`Candidates::from_plan_after_first`] leaves them out, as the pagemap pass before the
/// thaw did). A page the app maps between the thaw and the recorder's first poll is seen by
/// that poll, so nothing the app touches is lost; the Start no longer waits for the pass
/// (1-5 ms before the thaw: a third of a null request's time).
fn start_recorder(plan: &ActivationPlan, notes: &mut Vec<String>) -> Option<LoadingSetRecorder> {
    match LoadingSetRecorder::start_all_out(
        plan.pid,
        &Candidates::from_plan_after_first(plan),
        RecorderOptions::default(),
    ) {
        Ok(mut rec) => {
            // The `first` part's file read-ahead may still be under way (issued in the
            // background): not the app's reads either.
            rec.note_fetched_part(plan, &plan.first);
            rec.note_fetched_part(plan, &plan.loading_rest);
            rec.note_fetched_part(plan, &plan.rest);
            Some(rec)
        }
        Err(e) => {
            notes.push(format!("pid {}: no recording this time: {e}", plan.pid));
            None
        }
    }
}

/// Poll every recorder in rounds until each one's stop rule (or the stop flag) ends it. Nothing
/// is polled before the first response and its margin ([`first_margin`]; and `window`; at most
/// [`FIRST_RESPONSE_WAIT`]): a touched page stays present in pagemap, so the first poll after it
/// records the whole part touched before the first response (in address order, one round), and
/// until then the app has the CPUs to itself — a poll over a large loading set costs
/// milliseconds, and before this the recorder took up to a quarter of a CPU while the first
/// request was served.
pub(super) fn record(
    recs: Vec<LoadingSetRecorder>,
    stop: &AtomicBool,
    first: &AtomicBool,
    window: std::time::Duration,
) -> Vec<Recording> {
    let none = MappedByUs::default();
    record_from(recs, stop, first, (Instant::now(), window, None), &none)
}

/// Anonymous pages the background fetch maps into a process itself (copy-on-write pages of
/// private file mappings: `process_vm_readv` faults them in), per pid, for the recorders to
/// leave out ([`LoadingSetRecorder::note_mapped_by_us`]): in pagemap our fault looks like the
/// app's touch, and the loading set would become every copy-on-write page the background
/// fetched. The background holds the lock from announcing pages until it has mapped them, and
/// the recorder from taking the announcements until its round's polls end, so no poll sees a
/// page of ours it was not told about.
#[derive(Clone, Default)]
pub(super) struct MappedByUs(Arc<Mutex<Announced>>);

/// Pages announced by the background, per pid (page numbers).
type Announced = Vec<(i32, Vec<PageRun>)>;

impl MappedByUs {
    /// Announce `plan`'s copy-on-write `runs` (none: nothing, no lock); the lock is held until
    /// the guard returned is dropped (after they are mapped).
    fn announce<'a>(
        &'a self,
        plan: &ActivationPlan,
        runs: &[SwapRun],
    ) -> Option<std::sync::MutexGuard<'a, Announced>> {
        if runs.is_empty() {
            return None;
        }
        let mut told = lock(&self.0);
        let ps = plan.page_size;
        told.push((plan.pid, runs.iter().map(|r| r.page_run(ps)).collect()));
        Some(told)
    }
}

/// Poll `recs` (those `which` selects) once, after leaving out the pages announced in `ours`.
fn poll_round(
    recs: &mut [LoadingSetRecorder],
    ours: &MappedByUs,
    which: impl Fn(&LoadingSetRecorder) -> bool,
) {
    let mut told = lock(&ours.0);
    for (pid, pages) in told.drain(..) {
        for r in recs.iter_mut().filter(|r| r.pid() == pid) {
            r.note_mapped_by_us(&pages);
        }
    }
    for r in recs.iter_mut().filter(|r| which(r)) {
        let _ = r.poll();
    }
}

/// [`record`] with the thaw's instant given. Recorders that have not polled when the stop
/// flag comes (a Stop right after the first response: the app is frozen by then) poll once
/// before they finish, so what the app touched is recorded, not decayed as untouched.
fn record_from(
    mut recs: Vec<LoadingSetRecorder>,
    stop: &AtomicBool,
    first: &AtomicBool,
    (thawed, window, answered): (Instant, std::time::Duration, Option<std::time::Duration>),
    ours: &MappedByUs,
) -> Vec<Recording> {
    let interval = RecorderOptions::default().interval;
    let mut marked = false;
    let mut seen = answered;
    while !recs.is_empty() && !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        if seen.is_none() && first.load(Ordering::SeqCst) {
            seen = Some(thawed.elapsed());
        }
        let answered = seen.is_some_and(|s| thawed.elapsed() >= window.max(s + first_margin(s)));
        if !marked && !answered && thawed.elapsed() < FIRST_RESPONSE_WAIT {
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        }
        poll_round(&mut recs, ours, |_| true);
        if !marked && answered {
            recs.iter_mut().for_each(|r| r.mark_first_response());
            marked = true;
        }
        if recs.iter().all(|r| r.should_stop()) {
            break;
        }
        std::thread::sleep(pause(interval, t.elapsed()));
    }
    poll_round(&mut recs, ours, |r| r.round() == 0);
    recs.into_iter().map(|r| r.finish()).collect()
}

/// How long after the first response (seen `answered` after the thaw) the app's touches still
/// count as its first response's: as long again as it took, at least [`FIRST_MARGIN_MIN`], at
/// most [`FIRST_MARGIN_MAX`]. The readiness probe is the first request answered, not the last
/// of the first ones: requests that arrive with it (a client's, sent as the Start is) are
/// served by other threads and answered later. Tomcat (measured, perf major faults by thread):
/// its request thread took 48-128 major faults after the thaw on pages the previous cycle had
/// touched in the 5-25 ms after the probe's answer (loading set rounds 2-5), each read alone.
fn first_margin(answered: std::time::Duration) -> std::time::Duration {
    answered.clamp(FIRST_MARGIN_MIN, FIRST_MARGIN_MAX)
}

/// See [`first_margin`].
const FIRST_MARGIN_MIN: std::time::Duration = std::time::Duration::from_millis(5);
/// See [`first_margin`].
const FIRST_MARGIN_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// Wait until the first response is answered and `window` ([`FIRST_WINDOW`] without an
/// armed probe) has passed since the thaw (the first
/// requests' faults get the device to themselves), the app is stopped, or
/// [`FIRST_RESPONSE_WAIT`] passed. Returns the seconds waited.
fn wait_first_response(first: &AtomicBool, stop: &AtomicBool, window: std::time::Duration) -> f64 {
    wait_first_response_or(first, stop, window, FIRST_RESPONSE_WAIT, || false).0
}

/// [`wait_first_response`] for at most `max`, or until `early()` (asked every millisecond)
/// says to go. Returns the seconds waited and whether `early` ended the wait.
fn wait_first_response_or(
    first: &AtomicBool,
    stop: &AtomicBool,
    window: std::time::Duration,
    max: std::time::Duration,
    mut early: impl FnMut() -> bool,
) -> (f64, bool) {
    let t = Instant::now();
    let answered = |t: &Instant| first.load(Ordering::SeqCst) && t.elapsed() >= window;
    while !answered(&t) && !stop.load(Ordering::SeqCst) && t.elapsed() < max {
        if early() {
            return (t.elapsed().as_secs_f64(), true);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    (t.elapsed().as_secs_f64(), false)
}

/// The pause after a recorder round that took `poll`: the rest of the interval, but at least
/// `RECORDER_DUTY` × `poll`, so recording never takes more than a fraction of a CPU from the
/// app it watches (polls over a large process cost milliseconds each).
fn pause(interval: std::time::Duration, poll: std::time::Duration) -> std::time::Duration {
    interval.saturating_sub(poll).max(poll * RECORDER_DUTY)
}

/// See [`pause`]: a round of `p` is followed by at least `RECORDER_DUTY × p` of sleep (the
/// recorder takes at most 1/(1+RECORDER_DUTY) of one CPU).
const RECORDER_DUTY: u32 = 3;

/// A VM's file pages in the background ([`super::vm`]): once QEMU's first response is out
/// (`first`; at the latest after [`FIRST_RESPONSE_WAIT`]), `plan`'s objects — QEMU's file pages
/// touched after the first response in earlier cycles, then the others that were resident at
/// its Stop — fetched as a process app's background fetches its files (steps, the device's
/// queue kept short, low I/O priority, charged to QEMU's memory cgroup), until `stop`.
pub(super) fn spawn_file_background(
    plan: ActivationPlan,
    stop: Arc<AtomicBool>,
    first: Arc<AtomicBool>,
    reserve: u64,
) -> std::io::Result<JoinHandle<BackgroundReport>> {
    std::thread::Builder::new()
        .name("torpor-vmfiles".into())
        .spawn(move || {
            let waited = wait_first_response(&first, &stop, std::time::Duration::ZERO);
            let plans = [plan];
            let none = MappedByUs::default();
            let mut rep = background(&plans, &[], &stop, reserve, None, &none, false, None);
            rep.waited_s = waited;
            rep
        })
}

/// What a Start carries from before the thaw to after it: the plans, and per plan the pages
/// of its first part read after the thaw (at the front of its `loading_rest`, see
/// [`cut_first`]).
#[derive(Default)]
pub(super) struct Thawing {
    plans: Vec<ActivationPlan>,
    after_thaw: Vec<u64>,
}

/// Cut the plans' `first` parts to at most `max` anonymous pages in all (in plan order, each
/// part's anonymous runs in their order); returns, per plan, the anonymous runs cut off (for
/// the front of its loading set's rest). Copy-on-write pages, shared memory and files stay:
/// they are small in every app measured, and copy-on-write pages are mapped by our own faults.
fn cut_first(plans: &mut [ActivationPlan], max: u64) -> Vec<Vec<SwapRun>> {
    let mut left = max;
    plans
        .iter_mut()
        .map(|p| {
            let mut keep = Vec::new();
            let mut tail = Vec::new();
            for r in p.first.anon.drain(..) {
                if left >= r.pages {
                    left -= r.pages;
                    keep.push(r);
                } else if left > 0 {
                    // 0 < left < r.pages: the run is cut in two.
                    keep.push(SwapRun { pages: left, ..r });
                    tail.push(SwapRun {
                        addr: r.addr.saturating_add(left.saturating_mul(p.page_size)),
                        offset: r.offset.saturating_add(left),
                        pages: r.pages - left,
                        ..r
                    });
                    left = 0;
                } else {
                    tail.push(r);
                }
            }
            p.first.anon = keep;
            tail
        })
        .collect()
}

/// The rest of the loading set, then everything else, in steps, at low I/O priority.
/// `after_thaw`: per plan, the pages of its first part read after the thaw (see
/// [`cut_first`]), at the front of its loading set's rest: read first, whole, behind a deep
/// queue, whatever the window. `shm_lag`: shared memory is moved into the page cache one step
/// behind its reads ([`ShmemLag`], the app's `shmem_layout`), else each step waits for its own.
/// `wait`: the first response's flag and window (see [`Window`]).
#[allow(clippy::too_many_arguments)]
fn background(
    plans: &[ActivationPlan],
    after_thaw: &[u64],
    stop: &AtomicBool,
    reserve: u64,
    hold: Option<&std::path::Path>,
    ours: &MappedByUs,
    shm_lag: bool,
    wait: Option<(&AtomicBool, std::time::Duration)>,
) -> BackgroundReport {
    let mut rep = BackgroundReport::default();
    let mut f = Fetcher {
        stop,
        hold,
        ours,
        maps: HashMap::new(),
        app: AppFaults::of(plans),
        queue: IoQueue::of_swap(),
        files: IoQueue::of_devices(plans.iter().flat_map(|p| {
            p.objects
                .iter()
                .filter(|o| o.kind == procswap::memkind::MemKind::File)
                .map(|o| o.key.dev)
        })),
        // An app whose first part was over the cap (see `cut_first`) reads that much before it
        // answers: its first response's faults are the fetch's own order, no window for them.
        window: wait
            .filter(|_| after_thaw.iter().all(|&n| n == 0))
            .map(|(first, len)| Window::new(first, len, plans)),
    };
    let t = Instant::now();
    'parts: for (which, prio) in [(0, IoPriority::BestEffort(7)), (1, IoPriority::Idle)] {
        if which == 1 {
            rep.loading_rest_s = t.elapsed().as_secs_f64();
        }
        for (i, plan) in plans.iter().enumerate() {
            let (part, ungated) = if which == 0 {
                (&plan.loading_rest, after_thaw.get(i).copied().unwrap_or(0))
            } else {
                (&plan.rest, 0)
            };
            let Ok(tg) = Target::open(plan.pid, "background fetch") else {
                rep.ended = Some(format!("pid {} exited", plan.pid));
                continue;
            };
            let opts = FetchOptions {
                free_floor_bytes: reserve,
                io_priority: Some(prio),
                // The app's page cache is charged to the app (as before thaw), so its next
                // purge evicts it again; from torpord's own cgroup it would stay resident.
                charge_files_to: Memcg::of_pid(plan.pid)
                    .ok()
                    .flatten()
                    .map(|m| m.dir().to_path_buf()),
                // Else moved into the page cache by `ShmemLag`, behind the reads.
                shmem_to_page_cache: !shm_lag,
                ..FetchOptions::default()
            };
            if f.part(&tg, plan, (part, ungated), &opts, which == 0, &mut rep) {
                break 'parts;
            }
        }
    }
    rep.seconds = t.elapsed().as_secs_f64();
    rep
}

/// With the app's `shmem_layout` (its shared memory laid out on swap in Start order): shared
/// memory pieces of one plan whose reads the background issued (`MADV_WILLNEED`) but
/// has not yet moved into the object's page cache ([`procswap::plan::shmem_to_page_cache`],
/// which waits for the reads): done `SHM_LAG_PAGES` behind, so the next step's reads are queued
/// while the last one's complete instead of each step waiting for its own. The queue rule
/// still holds: a step is issued only once the device has at most `QUEUE_READS` reads in
/// flight.
struct ShmemLag<'a> {
    plan: &'a ActivationPlan,
    /// Off: the fetch moved each step itself (`FetchOptions::shmem_to_page_cache`).
    on: bool,
    parts: std::collections::VecDeque<PlanPart>,
    pages: u64,
}

/// How far behind its reads shared memory is moved into the page cache: one step
/// (`STEP_LAID_OUT`'s, 4 MiB since session 15; 1 MiB before). Measured on this machine (2026-12-03,
/// 1 GiB memfd laid out in order on swap, 1 MiB steps, idle): every step waiting for its own reads
/// 2.0-2.3 s in all, one step behind 1.4 s, four 1.15 s, sixteen 0.8 s. With PostgreSQL (1 GB
/// `shared_buffers`) its 1063 MiB came back in 1.45-2.5 s instead of 2.6-3.1 s; its first query
/// after a Start was sometimes slower until the Stop waited for the swap discards of the old slots
/// (see `shmem_layout` in config.rs and bench/results/activation/README.md, "Session 13").
const SHM_LAG_PAGES: u64 = STEP_LAID_OUT.shmem;

impl<'a> ShmemLag<'a> {
    fn new(plan: &'a ActivationPlan, on: bool) -> Self {
        Self {
            plan,
            on,
            parts: Default::default(),
            pages: 0,
        }
    }

    /// `piece` was fetched: its shared memory joins the lag, which catches up to
    /// `SHM_LAG_PAGES`.
    fn fetched(&mut self, piece: PlanPart, rep: &mut BackgroundReport) {
        if !self.on || piece.shmem.is_empty() {
            return;
        }
        self.pages += piece.pages().shmem;
        self.parts.push_back(PlanPart {
            shmem: piece.shmem,
            ..Default::default()
        });
        self.catch_up(SHM_LAG_PAGES, rep);
    }

    /// Move the oldest pieces into the page cache until at most `max` pages lag behind.
    fn catch_up(&mut self, max: u64, rep: &mut BackgroundReport) {
        while self.pages > max {
            let Some(p) = self.parts.pop_front() else {
                break;
            };
            self.pages = self.pages.saturating_sub(p.pages().shmem);
            let skipped = procswap::plan::shmem_to_page_cache(self.plan, &p);
            rep.skipped
                .extend(skipped.iter().map(|s| format!("{} ({})", s.path, s.reason)));
        }
    }
}

/// What the background's steps need besides the plan: the stop flag, the test hold, the
/// pages mapped by our own faults, the app's fault count, the devices' queues.
struct Fetcher<'a> {
    stop: &'a AtomicBool,
    hold: Option<&'a std::path::Path>,
    ours: &'a MappedByUs,
    /// Each process's pagemap, opened at its first [`Fetcher::in_path`].
    maps: HashMap<i32, Pagemap>,
    app: AppFaults,
    queue: IoQueue,
    files: IoQueue,
    /// The first response's window, until it ends (see [`Window`]).
    window: Option<Window<'a>>,
}

/// The first response's window: from the thaw until the first response is out and `len`
/// ([`FIRST_WINDOW`] without an armed probe) has passed, at most [`FIRST_RESPONSE_WAIT`]. The
/// app's first requests must not fault behind the background's reads, so until the window ends
/// the background reads only `YIELD_STEP` pieces behind a one-read queue, and only while the
/// app takes no major fault; at its first, the background waits the window out (the app has the
/// device to itself) — unless the app faults in the fetch's path (see
/// [`Fetcher::window_gate`]). Before session 16 the background sat out the whole window: the
/// touch-all's 1 GiB, answered after the app read it all, left the disk idle for the window's
/// 100 ms while the app mapped the part fetched before the thaw (minor faults, ~0.2 s for
/// 400 MiB) and took no major fault (2026-12-04: 0.30 s first part, 0.10 s idle, 0.39 s rest).
struct Window<'a> {
    first: &'a AtomicBool,
    len: std::time::Duration,
    t: Instant,
    /// The app's memory cgroup: its major faults count every process of the app, those forked
    /// after the thaw too (a PostgreSQL backend serving the first query).
    memcg: Option<Memcg>,
    majflt: Option<u64>,
}

impl<'a> Window<'a> {
    fn new(first: &'a AtomicBool, len: std::time::Duration, plans: &[ActivationPlan]) -> Self {
        let memcg = plans
            .first()
            .and_then(|p| Memcg::of_pid(p.pid).ok().flatten())
            .filter(|m| !m.is_root());
        let mut w = Window {
            first,
            len,
            t: Instant::now(),
            memcg,
            majflt: None,
        };
        w.majflt = w.majflt_now();
        w
    }

    fn majflt_now(&self) -> Option<u64> {
        self.memcg
            .as_ref()
            .and_then(|m| m.stat(MEMCG_MAJFLT).ok().flatten())
    }

    /// Whether the window has ended (the first response out and `len` passed, or
    /// [`FIRST_RESPONSE_WAIT`]).
    fn over(&self) -> bool {
        let e = self.t.elapsed();
        (self.first.load(Ordering::SeqCst) && e >= self.len) || e >= FIRST_RESPONSE_WAIT
    }

    /// Run `f`, whose own major faults in the app's memory (copy-on-write pages mapped by
    /// `process_vm_readv`) are counted in its memory cgroup: they are not the app's. (A fault of
    /// the app's at the same time is missed; an app that faults goes on faulting.)
    fn excluding<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let before = self.majflt_now();
        let r = f();
        if let (Some(base), Some(a), Some(b)) = (self.majflt, before, self.majflt_now()) {
            self.majflt = Some(base.saturating_add(b.saturating_sub(a)));
        }
        r
    }

    /// Whether the app took a major fault since the window opened. Without its memory
    /// cgroup's count, any fault is assumed: the background waits as it did before.
    fn app_faulted(&self) -> bool {
        match (self.majflt, self.majflt_now()) {
            (Some(a), Some(b)) => b > a,
            _ => true,
        }
    }
}

/// The memory cgroup's major-fault counter (`memory.stat`, v1 and v2).
const MEMCG_MAJFLT: &str = "pgmajfault";

impl Fetcher<'_> {
    /// Before a piece of `step` while the first response's window may be open: `true` while
    /// the window is open and the app has taken no major fault (the piece is read, small);
    /// once the app faults, wait the window out — or until the app faults in the fetch's path
    /// (`IN_PATH_SHARE` of `step` mapped: it is reading what the fetch would read next, e.g. a
    /// scan of its memory before it answers) — and `false` from then on.
    fn window_gate(
        &mut self,
        plan: &ActivationPlan,
        step: &PlanPart,
        rep: &mut BackgroundReport,
    ) -> bool {
        let Some(w) = self.window.take() else {
            return false;
        };
        if !w.over() && !self.stop.load(Ordering::SeqCst) {
            if !w.app_faulted() {
                self.window = Some(w);
                return true;
            }
            let t = Instant::now();
            let stop = self.stop;
            // The fault counts the in-path test compares start here.
            self.app.faulted_since_last();
            let left = w.len.saturating_sub(w.t.elapsed());
            let max = FIRST_RESPONSE_WAIT.saturating_sub(w.t.elapsed());
            let (_, early) = wait_first_response_or(w.first, stop, left, max, || {
                self.app.faulted_since_last() && self.in_path(plan, step)
            });
            rep.waited_s += t.elapsed().as_secs_f64();
            rep.started_in_path |= early;
        }
        rep.window_s = w.t.elapsed().as_secs_f64();
        // The next step counts the app's faults from the window's end.
        self.app.faulted_since_last();
        false
    }

    /// Whether the app has mapped at least 1/`IN_PATH_SHARE` (and at least one) of `step`'s
    /// anonymous pages, or of the first `IN_PATH_HEAD` of them in the step's order: it is
    /// faulting in the fetch's path. No anonymous pages, or no pagemap (the process exited): no.
    fn in_path(&mut self, plan: &ActivationPlan, step: &PlanPart) -> bool {
        let ps = plan.page_size;
        let runs: Vec<PageRun> = step.anon.iter().map(|r| r.page_run(ps)).collect();
        if runs.is_empty() {
            return false;
        }
        let pm = match self.maps.entry(plan.pid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match Pagemap::open(plan.pid) {
                Ok(pm) => v.insert(pm),
                Err(_) => return false,
            },
        };
        let mut share = |runs: &[PageRun]| {
            procswap::loadingset::present_pages(pm, ps, runs).is_ok_and(|n| {
                n > 0 && n.saturating_mul(IN_PATH_SHARE) >= procswap::memkind::pages(runs)
            })
        };
        let head = procswap::memkind::chunks(&runs, IN_PATH_HEAD)
            .into_iter()
            .next()
            .unwrap_or_default();
        share(&head) || share(&runs)
    }

    /// How `order`'s step `i` of `all` is read: the step (another one when the fetch follows
    /// the app, see `FOLLOW_STEPS`), its pieces and the most reads in flight before each.
    /// `windowed`: in the first response's window (small pieces, see [`Window`]).
    fn pieces<'s>(
        &mut self,
        plan: &ActivationPlan,
        (all, order, i): (
            &'s [PlanPart],
            &mut std::collections::VecDeque<usize>,
            usize,
        ),
        windowed: bool,
        rep: &mut BackgroundReport,
    ) -> (&'s PlanPart, Vec<PlanPart>, u64) {
        let mut step = &all[i];
        // The app is reading on demand: this step in small pieces, each behind a short queue
        // (see `QUEUE_READS_APP_FAULTING`) — unless it is reading ahead of us in our own order
        // (see `IN_PATH_SHARE`), here or a few steps on (then the fetch goes there).
        let faulted = !windowed && self.app.faulted_since_last();
        let mut in_path = faulted && self.in_path(plan, step);
        if faulted && !in_path {
            if let Some(j) = follow(order, i, |j| self.in_path(plan, &all[j])) {
                step = &all[j];
                in_path = true;
                rep.followed += 1;
            }
        }
        rep.in_path_steps += u64::from(in_path);
        if windowed || (faulted && !in_path) {
            rep.yielded_steps += u64::from(!windowed);
            let pieces = steps(step, &YIELD_STEP, plan.page_size);
            (step, pieces, QUEUE_READS_APP_FAULTING)
        } else {
            (step, vec![step.clone()], QUEUE_READS)
        }
    }

    /// One plan's `part` in steps, added to `rep`. Returns whether the whole background ends
    /// (stopped, free-memory floor); a process that exited or failed ends only its own part.
    fn part(
        &mut self,
        tg: &Target,
        plan: &ActivationPlan,
        (part, ungated): (&PlanPart, u64),
        opts: &FetchOptions,
        loading_rest: bool,
        rep: &mut BackgroundReport,
    ) -> bool {
        // Unless each step moves its own shared memory into the page cache, the reads are
        // issued ahead and each step is moved a step behind (see `ShmemLag`): the app's
        // shared memory is laid out on swap in Start order (`shmem_layout`).
        let laid_out = !opts.shmem_to_page_cache;
        let mut lag = ShmemLag::new(plan, laid_out);
        let limits = if laid_out { &STEP_LAID_OUT } else { &STEP };
        let mut ungated_left = ungated;
        let end_all = 'steps: {
            let all = steps(part, limits, plan.page_size);
            // Step indices in the order they are read: the part's order, except that steps
            // passed over to follow the app go to the back (see `FOLLOW_STEPS`).
            let mut order: std::collections::VecDeque<usize> = (0..all.len()).collect();
            while let Some(i) = order.pop_front() {
                let step = &all[i];
                while self.hold.is_some_and(|h| h.exists()) && !self.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                // A process that exited is not fetched any further (file steps would still
                // read its files), and the report says so rather than "stopped".
                if tg.check_alive("background fetch").is_err() {
                    rep.ended = Some(format!("pid {} exited", plan.pid));
                    break 'steps false;
                }
                if self.stop.load(Ordering::SeqCst) {
                    rep.ended = Some("stopped".into());
                    break 'steps true;
                }
                // The first part's pages read after the thaw (the front of the loading set's
                // rest): the app needs them for its first response, now; whole, a deep queue.
                let anon = step.pages().anon;
                let first_part = ungated_left > 0 && anon > 0;
                // In the first response's window: small pieces while the app does not fault
                // (see `Window`).
                let windowed = !first_part && self.window_gate(plan, step, rep);
                let (step, pieces, max_reads) = if first_part {
                    ungated_left = ungated_left.saturating_sub(anon);
                    rep.first_after_thaw_steps += 1;
                    (step, vec![step.clone()], QUEUE_READS_DEEP)
                } else {
                    self.pieces(plan, (&all, &mut order, i), windowed, rep)
                };
                for piece in pieces {
                    // Each piece read in the window asks again: the app may have faulted since
                    // (then the wait, and the step's other pieces go on as after a fault).
                    if windowed && self.window_gate(plan, step, rep) {
                        rep.window_pieces += 1;
                    }
                    let max_reads =
                        if laid_out && max_reads == QUEUE_READS && !piece.shmem.is_empty() {
                            QUEUE_READS_DEEP
                        } else {
                            max_reads
                        };
                    // Shared memory comes from swap too; file pages from their own device
                    // (the same disk as the swap on most hosts): either way the app's own
                    // faults must not wait behind more than a few reads of ours.
                    let q = if piece.file.is_empty() {
                        &self.queue
                    } else {
                        &self.files
                    };
                    rep.queue_wait_s += q.wait_below(max_reads, QUEUE_WAIT_MAX).as_secs_f64();
                    let ours = self.ours;
                    let mut fetch = || fetch_piece(tg, plan, &piece, opts, ours, loading_rest, rep);
                    // Copy-on-write pages are mapped by our own faults, counted as the app's
                    // memory cgroup's major faults: not the app's.
                    let done = match self.window.as_mut() {
                        Some(w) if !piece.anon_cow.is_empty() => w.excluding(fetch),
                        _ => fetch(),
                    };
                    match done {
                        Piece::Fetched => lag.fetched(piece, rep),
                        Piece::EndFetch => break 'steps true,
                        Piece::EndProcess => break 'steps false,
                    }
                }
            }
            false
        };
        lag.catch_up(0, rep);
        end_all
    }
}

/// The step to read instead of `cur` when the app faults further along the fetch's order: the
/// first of the next `FOLLOW_STEPS` in `order` that is in its path (`in_path`), taken out of
/// `order`; `cur` and the steps before it go to the back of `order`. `None` (nothing moved):
/// none of them is.
fn follow(
    order: &mut std::collections::VecDeque<usize>,
    cur: usize,
    mut in_path: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let ahead = order.len().min(FOLLOW_STEPS);
    let p = (0..ahead).find(|&p| in_path(order[p]))?;
    let passed: Vec<usize> = std::iter::once(cur).chain(order.drain(..p)).collect();
    let j = order.pop_front()?;
    order.extend(passed);
    Some(j)
}

/// What the background does after a piece ([`fetch_piece`]).
enum Piece {
    Fetched,
    /// The free-memory floor: nothing more is fetched.
    EndFetch,
    /// This process's fetch failed: on to the next process.
    EndProcess,
}

/// One piece of a background step, added to `rep` (as the loading set's rest or the rest).
fn fetch_piece(
    tg: &Target,
    plan: &ActivationPlan,
    piece: &PlanPart,
    opts: &FetchOptions,
    ours: &MappedByUs,
    loading_rest: bool,
    rep: &mut BackgroundReport,
) -> Piece {
    // Copy-on-write pages are mapped by our own faults: announced to the recorders first, and
    // the lock kept until they are mapped (see [`MappedByUs`]).
    let _told = ours.announce(plan, &piece.anon_cow);
    match fetch_unmapped(tg, plan, piece, opts) {
        Ok(r) => {
            let b = r.issued_bytes.total();
            rep.kind_bytes += r.issued_bytes;
            if loading_rest {
                rep.loading_rest_bytes += b;
            } else {
                rep.rest_bytes += b;
            }
            rep.skipped.extend(
                r.skipped
                    .iter()
                    .map(|s| format!("{} ({})", s.path, s.reason)),
            );
            match r.stopped {
                Some(s) => {
                    rep.ended = Some(format!("{s:?}"));
                    Piece::EndFetch
                }
                None => Piece::Fetched,
            }
        }
        Err(e) => {
            rep.ended = Some(format!("pid {}: {e}", plan.pid));
            Piece::EndProcess
        }
    }
}

/// The app's major faults, summed over its processes, as the background last saw them: a
/// major fault is a read the app issued itself (a page nobody had fetched), so a rise means
/// it is reading on demand now. (Processes forked after the thaw — PostgreSQL's backends for
/// new connections — are not counted; counting them through the memory cgroup's `pgmajfault`
/// made PostgreSQL's fetch yield throughout: 1063 MiB in 2.5-3.4 s, TPS over 10 s 0.72-0.77x
/// warm, 2026-12-03, "Session 12".)
struct AppFaults {
    targets: Vec<Target>,
    last: u64,
}

impl AppFaults {
    fn of(plans: &[ActivationPlan]) -> Self {
        let targets = plans
            .iter()
            .filter_map(|p| Target::open(p.pid, "background fetch").ok())
            .collect();
        let mut a = AppFaults { targets, last: 0 };
        a.last = a.now();
        a
    }

    /// Major faults so far (a process gone counts nothing).
    fn now(&self) -> u64 {
        self.targets
            .iter()
            .filter_map(|t| t.faults().ok())
            .fold(0u64, |sum, (major, _)| sum.saturating_add(major))
    }

    /// Whether the app took a major fault since the last call (or since [`AppFaults::of`]).
    fn faulted_since_last(&mut self) -> bool {
        let n = self.now();
        self.update(n)
    }

    /// Whether `n` (the count now) is above the last one; keeps it. A count that fell (a
    /// process exited, its faults no longer summed) is not a fault.
    fn update(&mut self, n: u64) -> bool {
        let faulted = n > self.last;
        self.last = n;
        faulted
    }
}

/// The objects of `plan`'s parts that cannot be reopened as they were at Stop, with why.
fn gone_objects(
    plan: &ActivationPlan,
) -> Vec<(&procswap::memkind::MemObject, procswap::memkind::Gone)> {
    let mut used: Vec<u32> = [&plan.first, &plan.loading_rest, &plan.rest]
        .iter()
        .flat_map(|p| p.shmem.iter().chain(&p.file).map(|o| o.object))
        .collect();
    used.sort_unstable();
    used.dedup();
    used.into_iter()
        .filter_map(|i| plan.objects.get(i as usize))
        .filter_map(|o| procswap::memkind::reopen(plan.pid, o).err().map(|g| (o, g)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run(addr_page: u64, pages: u64, offset: u64) -> SwapRun {
        SwapRun {
            addr: addr_page * 4096,
            pages,
            swap_type: 0,
            offset,
        }
    }

    /// The first response's margin is as long as the answer took, within 5-50 ms.
    #[test]
    fn first_margin_is_the_answer_time_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(first_margin(ms(0)), FIRST_MARGIN_MIN);
        assert_eq!(first_margin(ms(17)), ms(17));
        assert_eq!(first_margin(ms(3_000)), FIRST_MARGIN_MAX);
        assert!(FIRST_MARGIN_MIN < FIRST_MARGIN_MAX && FIRST_MARGIN_MAX < FIRST_RESPONSE_WAIT);
    }

    #[test]
    fn steps_end_at_the_page_or_the_extent_limit() {
        // 40 scattered single pages: one read each, cut every STEP_EXTENTS.
        let scattered = PlanPart {
            anon: (0..40).map(|i| run(i * 2, 1, 1000 + i * 7)).collect(),
            ..Default::default()
        };
        let s = steps(&scattered, &STEP, 4096);
        let sizes: Vec<usize> = s.iter().map(|p| p.anon.len()).collect();
        assert_eq!(sizes, vec![16, 16, 8]);
        // Address-discontiguous runs on consecutive slots are one extent: only the page
        // limit cuts them (3 × 400 pages: 1024 fits two).
        let sequential = PlanPart {
            anon: vec![run(0, 400, 0), run(1000, 400, 400), run(5000, 400, 800)],
            file: vec![ObjectPart {
                object: 0,
                runs: vec![PageRun { first: 0, count: 1 }],
            }],
            ..Default::default()
        };
        let s = steps(&sequential, &STEP, 4096);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].anon.len(), 2);
        assert_eq!(s[0].swap_extents(), 1);
        assert_eq!(s[1].anon.len(), 1);
        assert_eq!(s[2].file.len(), 1);
        assert!(s[2].anon.is_empty());
        // Nothing is lost or reordered.
        let back: Vec<SwapRun> = steps(&scattered, &STEP, 4096)
            .into_iter()
            .flat_map(|p| p.anon)
            .collect();
        assert_eq!(back, scattered.anon);
        // Copy-on-write pages (of private file mappings) are steps of their own, after the
        // anonymous ones and before shared memory and files, cut by the same limits.
        let cow = PlanPart {
            anon: vec![run(0, 1, 0)],
            anon_cow: (0..20).map(|i| run(100 + i * 2, 1, 500 + i * 9)).collect(),
            shmem: vec![ObjectPart {
                object: 0,
                runs: vec![PageRun { first: 0, count: 2 }],
            }],
            ..Default::default()
        };
        let s = steps(&cow, &STEP, 4096);
        let shape: Vec<(usize, usize, usize)> = s
            .iter()
            .map(|p| (p.anon.len(), p.anon_cow.len(), p.shmem.len()))
            .collect();
        assert_eq!(shape, vec![(1, 0, 0), (0, 16, 0), (0, 4, 0), (0, 0, 1)]);
        let pages = |p: &PlanPart| p.pages().total();
        assert_eq!(s.iter().map(pages).sum::<u64>(), pages(&cow));
    }

    #[test]
    fn a_run_longer_than_a_step_is_cut_into_steps() {
        // One contiguous run of 2,500 pages (an app's heap on consecutive slots), then a page
        // elsewhere: steps of 1024, 1024, 452 + 1 pages, each piece's address and slot
        // advanced by what the pieces before it hold.
        let part = PlanPart {
            anon: vec![run(10, 2500, 7000), run(9000, 1, 20)],
            ..Default::default()
        };
        let got: Vec<Vec<(u64, u64, u64)>> = steps(&part, &STEP, 4096)
            .iter()
            .map(|p| {
                p.anon
                    .iter()
                    .map(|r| (r.addr / 4096, r.pages, r.offset))
                    .collect()
            })
            .collect();
        assert_eq!(
            got,
            vec![
                vec![(10, 1024, 7000)],
                vec![(1034, 1024, 8024)],
                vec![(2058, 452, 9048), (9000, 1, 20)],
            ]
        );
        // A run of exactly one step stays whole.
        let one = PlanPart {
            anon: vec![run(0, STEP_PAGES, 0)],
            ..Default::default()
        };
        assert_eq!(steps(&one, &STEP, 4096).len(), 1);
    }

    /// A plan of this test's own process (pagemap of itself) with no parts.
    fn own_plan() -> ActivationPlan {
        ActivationPlan {
            format_version: ActivationPlan::FORMAT_VERSION,
            pid: std::process::id() as i32,
            comm: "test".into(),
            page_size: procswap::sys::page_size(),
            computed_at: 0,
            objects: Vec::new(),
            first: PlanPart::default(),
            loading_rest: PlanPart::default(),
            rest: PlanPart::default(),
            notes: Vec::new(),
        }
    }

    /// Following the app: the fetch goes to the first step in its path among the next
    /// `FOLLOW_STEPS`, and reads the ones it passed over (with the one it was at) after all
    /// the others; beyond `FOLLOW_STEPS`, or nowhere in the path, nothing moves.
    #[test]
    fn the_fetch_follows_the_app_a_few_steps_ahead() {
        let mut order: std::collections::VecDeque<usize> = (1..40).collect();
        assert_eq!(follow(&mut order, 0, |j| j == 4 || j == 9), Some(4));
        let got: Vec<usize> = order.iter().copied().collect();
        let want: Vec<usize> = (5..40).chain([0, 1, 2, 3]).collect();
        assert_eq!(got, want);
        let before = order.clone();
        assert_eq!(
            follow(&mut order, 4, |j| j == 5 + FOLLOW_STEPS),
            None,
            "too far"
        );
        assert_eq!(follow(&mut order, 4, |_| false), None);
        assert_eq!(order, before);
        // The very next step: only the current one goes to the back.
        assert_eq!(follow(&mut order, 4, |j| j == 5), Some(5));
        assert_eq!(order.front(), Some(&6));
        assert_eq!(order.back(), Some(&4));
        assert_eq!(order.len(), before.len());
    }

    /// A first part above the cap is cut in its order, across the plans: what is over goes
    /// after the thaw (runs split at the page, address and slot advanced alike); copy-on-write
    /// pages and objects stay; nothing is lost or reordered.
    #[test]
    fn the_first_part_is_cut_at_the_cap_in_its_order() {
        let with_first = |anon: Vec<SwapRun>| {
            let mut p = own_plan();
            p.first = PlanPart {
                anon,
                anon_cow: vec![run(900, 3, 50)],
                file: vec![ObjectPart {
                    object: 0,
                    runs: vec![PageRun { first: 0, count: 9 }],
                }],
                ..Default::default()
            };
            p
        };
        let a = vec![run(0, 600, 1000), run(5000, 600, 10)];
        let b = vec![run(100, 50, 3000)];
        let mut plans = vec![with_first(a.clone()), with_first(b.clone())];
        let tails = cut_first(&mut plans, 1000);
        assert_eq!(
            plans[0].first.anon,
            vec![run(0, 600, 1000), run(5000, 400, 10)]
        );
        assert_eq!(tails[0], vec![run(5400, 200, 410)]);
        assert!(plans[1].first.anon.is_empty(), "the cap is for all plans");
        assert_eq!(tails[1], b);
        for p in &plans {
            assert_eq!(p.first.anon_cow, vec![run(900, 3, 50)]);
            assert_eq!(p.first.file.len(), 1);
        }
        let back: Vec<SwapRun> = plans[0]
            .first
            .anon
            .iter()
            .chain(&tails[0])
            .copied()
            .collect();
        assert_eq!(back.iter().map(|r| r.pages).sum::<u64>(), 1200);
        // Under the cap: nothing moves.
        let mut plans = vec![with_first(a.clone())];
        assert_eq!(cut_first(&mut plans, 1200), vec![Vec::<SwapRun>::new()]);
        assert_eq!(plans[0].first.anon, a);
    }

    /// The background's test of whether the app faults in its path (`IN_PATH_SHARE`): at least
    /// a quarter of the step's anonymous pages, and one, mapped — counted over the step's own
    /// pages only, whatever their order. Pagemap of this test's own process.
    #[test]
    fn a_step_is_in_the_apps_path_once_a_quarter_of_it_or_of_its_head_is_mapped() {
        let plan = own_plan();
        let ps = plan.page_size;
        let n = 512u64;
        // SAFETY: a fresh private anonymous mapping of n pages, unmapped at the end; nothing
        // else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (n * ps) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let touch = |i: u64| {
            assert!(i < n);
            // SAFETY: page i < n of the mapping above, writable.
            unsafe { *(base as *mut u8).add((i * ps) as usize) = 1 };
        };
        let at = |page: u64, pages: u64, offset: u64| SwapRun {
            addr: base as u64 + page * ps,
            pages,
            swap_type: 0,
            offset,
        };
        // A 64-page step over pages 0-63, its runs out of address order (slot order).
        let step = PlanPart {
            anon: vec![at(32, 32, 10), at(0, 32, 42)],
            ..Default::default()
        };
        let stop = AtomicBool::new(false);
        let ours = MappedByUs::default();
        let mut f = Fetcher {
            stop: &stop,
            hold: None,
            ours: &ours,
            maps: HashMap::new(),
            app: AppFaults::of(&[]),
            queue: IoQueue::of_swap(),
            files: IoQueue::of_devices(std::iter::empty()),
            window: None,
        };
        assert!(!f.in_path(&plan, &step), "nothing mapped");
        // Pages mapped outside the step do not count.
        (64..128).for_each(touch);
        assert!(!f.in_path(&plan, &step), "only pages outside the step");
        (0..15).for_each(touch);
        assert!(!f.in_path(&plan, &step), "15 of 64");
        touch(40);
        assert!(f.in_path(&plan, &step), "16 of 64");
        // A 256-page step over pages 128-383, in the order 256-383 then 128-255: 16 pages mapped
        // are not a quarter of it, but they are of its first 64 pages in that order.
        let step = PlanPart {
            anon: vec![at(256, 128, 100), at(128, 128, 228)],
            ..Default::default()
        };
        (128..144).for_each(touch);
        assert!(!f.in_path(&plan, &step), "16 of 256, not at its head");
        (256..271).for_each(touch);
        assert!(!f.in_path(&plan, &step), "15 of its first 64");
        touch(300);
        assert!(f.in_path(&plan, &step), "16 of its first 64");
        // A step of no anonymous pages (shared memory, files) is never in the path.
        let shm = PlanPart {
            shmem: vec![ObjectPart {
                object: 0,
                runs: vec![PageRun { first: 0, count: 4 }],
            }],
            ..Default::default()
        };
        assert!(!f.in_path(&plan, &shm));
        // SAFETY: unmapping the mapping made above, no longer used.
        unsafe { libc::munmap(base, (n * ps) as usize) };
    }

    /// Shared memory laid out in Start order goes in steps as large as anonymous memory's; on
    /// scattered slots (no layout) in the small ones.
    #[test]
    fn laid_out_shared_memory_goes_in_larger_steps() {
        let part = PlanPart {
            shmem: vec![ObjectPart {
                object: 0,
                runs: vec![PageRun {
                    first: 0,
                    count: 3000,
                }],
            }],
            ..Default::default()
        };
        let sizes = |l: &StepLimits| -> Vec<u64> {
            steps(&part, l, 4096)
                .iter()
                .map(|p| p.pages().shmem)
                .collect()
        };
        assert_eq!(sizes(&STEP_LAID_OUT), vec![1024, 1024, 952]);
        let mut small = vec![256; 11];
        small.push(184);
        assert_eq!(sizes(&STEP), small);
    }

    #[test]
    fn a_step_is_cut_into_small_pieces_while_the_app_faults() {
        let pr = |first, count| PageRun { first, count };
        // A normal anonymous step (1024 pages on consecutive slots) and a file step.
        let part = PlanPart {
            anon: vec![run(0, 600, 0), run(5000, 424, 600)],
            file: vec![ObjectPart {
                object: 4,
                runs: vec![pr(0, 100), pr(300, 50)],
            }],
            ..Default::default()
        };
        let normal = steps(&part, &STEP, 4096);
        assert_eq!(normal.len(), 2);
        let pieces = steps(&normal[0], &YIELD_STEP, 4096);
        // Each run cut into 64-page pieces (a run's last piece is not topped up from the next
        // run): 600 = 9 × 64 + 24, 424 = 6 × 64 + 40.
        let sizes: Vec<u64> = pieces.iter().map(|p| p.pages().anon).collect();
        let mut want = vec![64; 9];
        want.push(24);
        want.extend([64; 6]);
        want.push(40);
        assert_eq!(sizes, want);
        // Nothing lost or reordered: the pieces' pages, in order, are the step's.
        let flat = |runs: Vec<SwapRun>| -> Vec<(u64, u64)> {
            runs.iter()
                .flat_map(|r| (0..r.pages).map(move |i| (r.addr / 4096 + i, r.offset + i)))
                .collect()
        };
        assert_eq!(
            flat(pieces.into_iter().flat_map(|p| p.anon).collect()),
            flat(normal[0].anon.clone())
        );
        let files: Vec<Vec<PageRun>> = steps(&normal[1], &YIELD_STEP, 4096)
            .into_iter()
            .map(|p| p.file[0].runs.clone())
            .collect();
        assert_eq!(
            files,
            vec![
                vec![pr(0, 64)],
                vec![pr(64, 36), pr(300, 28)],
                vec![pr(328, 22)]
            ]
        );
    }

    #[test]
    fn app_faults_rise_only_with_a_higher_count() {
        let mut a = AppFaults {
            targets: Vec::new(),
            last: 10,
        };
        assert!(!a.update(10));
        assert!(a.update(11));
        assert!(!a.update(11));
        // A process gone: the sum falls; not a fault, and the next rise counts from there.
        assert!(!a.update(4));
        assert!(a.update(5));
        // Without processes the count is 0 and never rises.
        assert_eq!(a.now(), 0);
    }

    #[test]
    fn shared_memory_and_files_are_cut_into_steps_in_order() {
        let pr = |first, count| PageRun { first, count };
        let part = PlanPart {
            shmem: vec![ObjectPart {
                object: 1,
                runs: vec![pr(0, 1500), pr(2000, 600)],
            }],
            file: vec![
                ObjectPart {
                    object: 2,
                    runs: vec![pr(0, 10_000)],
                },
                ObjectPart {
                    object: 3,
                    runs: vec![pr(5, 1)],
                },
            ],
            ..Default::default()
        };
        let s = steps(&part, &STEP, 4096);
        let got: Vec<(u32, Vec<PageRun>)> = s
            .iter()
            .flat_map(|p| p.shmem.iter().chain(&p.file))
            .map(|o| (o.object, o.runs.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, vec![pr(0, 256)]),
                (1, vec![pr(256, 256)]),
                (1, vec![pr(512, 256)]),
                (1, vec![pr(768, 256)]),
                (1, vec![pr(1024, 256)]),
                (1, vec![pr(1280, 220), pr(2000, 36)]),
                (1, vec![pr(2036, 256)]),
                (1, vec![pr(2292, 256)]),
                (1, vec![pr(2548, 52)]),
                (2, vec![pr(0, 8192)]),
                (2, vec![pr(8192, 1808)]),
                (3, vec![pr(5, 1)]),
            ]
        );
        // One object of one kind per step.
        assert!(s
            .iter()
            .all(|p| p.anon.is_empty() && p.shmem.len() + p.file.len() == 1));
        assert_eq!(s.iter().map(|p| p.pages().shmem).sum::<u64>(), 2100);
        assert_eq!(s.iter().map(|p| p.pages().file).sum::<u64>(), 10_001);
    }

    #[test]
    fn recorder_pause_caps_its_share_of_a_cpu() {
        let ms = Duration::from_millis;
        // Cheap polls keep the interval.
        assert_eq!(pause(ms(5), ms(1)), ms(4));
        assert_eq!(pause(ms(5), Duration::ZERO), ms(5));
        // Expensive ones are followed by RECORDER_DUTY times their own time.
        assert_eq!(pause(ms(5), ms(4)), ms(12));
        assert_eq!(pause(ms(5), ms(150)), ms(450));
    }
}
