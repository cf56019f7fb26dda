//! Shared memory's swap layout: write an app's swapped-out shmem again, in the order a Start
//! reads it back.
//!
//! Private anonymous pages are paged out by the target's own page tables in the order the purge
//! chooses ([`crate::purge::PurgeOptions::layout_first`]), so a Start reads them in slot order
//! as long sequential runs. Shmem cannot be laid out that way: `MADV_PAGEOUT`/`MADV_COLD` skip a
//! page that two processes map (PostgreSQL's `shared_buffers`: every backend maps what it
//! touched), so it leaves the app only through the memory cgroup's reclaim, in LRU order — its
//! swap slots are scattered across the file's pages, and `MADV_WILLNEED` over the segment reads
//! them one 4 KiB request at a time. Measured with PostgreSQL 15 (1 GB `shared_buffers`, this
//! repository's activation benchmark, 2026-12-03): the background fetch took 2.5 s for 1063 MiB
//! (~420 MB/s) where a sequential read takes ~1 s, and pgbench ran at 10–50 % of warm TPS until
//! it was done.
//!
//! After the reclaim no process maps those pages any more. [`relayout`] maps each object itself
//! (read-only, never dereferenced), reads a chunk back (`MADV_WILLNEED`, then
//! `MADV_POPULATE_READ` to wait: a shmem swap-in frees the old slot) and pages it out again from
//! its own mapping (`MADV_PAGEOUT`: mapped once, so not skipped), chunk after chunk in the order
//! given — the Start's order. Fresh slots are handed out in allocation order, so the segment ends
//! up in a few long runs of consecutive slots and the Start's `MADV_WILLNEED` is merged into
//! large reads. It costs one read and one write of every page at Stop. Pages written this way
//! stay in the swap cache until their write completes: the caller reclaims the memory cgroup
//! once more afterwards.
//!
//! What it bought (torpord's per-app `shmem_layout`, on by default): with a 1 GiB memfd,
//! `MADV_WILLNEED` read the in-order segment in 1.07-1.15 s against 1.9-2.1 s scattered; with
//! PostgreSQL the segment came back in 1.5-2.5 s instead of 2.6-3.1 s once the Start's
//! background also stopped waiting for each step's reads, and its TPS over the first 10 s was
//! higher in every interleaved pair of runs. Its first query after a Start was sometimes slow:
//! on a swap area with discard, the old slots this frees are discarded by the kernel after the
//! fact and the Start's reads waited behind them; the caller waits for those
//! (`crate::plan::IoQueue::wait_discards`). bench/results/activation/README.md, "Session 12"
//! and "Session 13".

use crate::memkind::{self, chunks, clip, pages, ObjectKey, ObjectView, PageRun};
use crate::plan::{ActivationPlan, Part};
use crate::sys;
use std::time::Instant;

/// How to re-lay shmem.
#[derive(Debug, Clone)]
pub struct RelayoutOptions {
    /// Pages read back and written again per step (the memory the step needs).
    pub chunk_bytes: u64,
    /// Stop before a step would take `MemAvailable` below this (a step also needs as much free
    /// swap as it reads back).
    pub free_floor_bytes: u64,
    /// Stop after this many bytes.
    pub budget_bytes: Option<u64>,
}

impl Default for RelayoutOptions {
    fn default() -> Self {
        Self {
            chunk_bytes: 32 << 20,
            free_floor_bytes: 0,
            budget_bytes: None,
        }
    }
}

/// What [`relayout`] did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RelayoutReport {
    /// Shmem objects visited (each once, however many plans name it).
    pub objects: u64,
    /// Pages read back and paged out again.
    pub pages: u64,
    /// Of those, pages that were not resident after the read (a hole in the object: nothing to
    /// write; counted, not an error).
    pub not_read_pages: u64,
    pub seconds: f64,
    /// Time spent waiting for the reads.
    pub read_seconds: f64,
    /// Why it stopped before the end (budget, free memory), if it did.
    pub stopped: Option<String>,
    /// Objects left alone, and why (gone, resized, unreadable).
    pub skipped: Vec<String>,
}

/// The shmem pages of `plans` in Start order: every plan's `first` part, then every
/// `loading_rest`, then every `rest` (plans as given: after [`crate::app::share_objects`], each
/// page once). Yields (plan, object index, runs).
pub fn start_order(plans: &[ActivationPlan]) -> Vec<(usize, u32, &[PageRun])> {
    let mut out = Vec::new();
    for part in [Part::First, Part::LoadingRest, Part::Rest] {
        for (i, p) in plans.iter().enumerate() {
            for op in &p.part(part).shmem {
                out.push((i, op.object, op.runs.as_slice()));
            }
        }
    }
    out
}

/// Read back and page out again the shmem pages of `plans` (swapped out, no process mapping
/// them: after a memory cgroup reclaim of the frozen app) in Start order ([`start_order`]),
/// `opts.chunk_bytes` at a time. An object that is gone or changed is skipped with a note; a
/// failed step ends that object. Never maps anything into the app.
pub fn relayout(plans: &[ActivationPlan], opts: &RelayoutOptions) -> RelayoutReport {
    let t0 = Instant::now();
    let mut rep = RelayoutReport::default();
    let ps = sys::page_size();
    let per_chunk = (opts.chunk_bytes / ps).max(1);
    let mut spent = 0u64;
    // One view per object (an object can appear in several parts, and in several processes'
    // plans).
    let mut views: Vec<(ObjectKey, Option<ObjectView>)> = Vec::new();
    'objects: for (pi, oi, runs) in start_order(plans) {
        let plan = &plans[pi];
        let Some(o) = plan.objects.get(oi as usize) else {
            rep.skipped
                .push(format!("plan of pid {}: no object {oi}", plan.pid));
            continue;
        };
        let idx = match views.iter().position(|(k, _)| *k == o.key) {
            Some(i) => i,
            None => {
                rep.objects += 1;
                let v = memkind::reopen(plan.pid, o)
                    .map_err(|g| g.to_string())
                    .and_then(|f| ObjectView::new(f, None).map_err(|e| e.to_string()));
                let v = match v {
                    Ok(v) => Some(v),
                    Err(e) => {
                        rep.skipped.push(format!("{}: {e}", o.path));
                        None
                    }
                };
                views.push((o.key, v));
                views.len() - 1
            }
        };
        let Some(v) = views[idx].1.as_ref() else {
            continue;
        };
        let mut failed = false;
        for chunk in chunks(&clip(runs, v.pages()), per_chunk) {
            let need = pages(&chunk) * ps;
            if let Err(why) = room(spent, need, opts) {
                rep.stopped = Some(why);
                break 'objects;
            }
            spent += need;
            match step(v, &chunk, &mut rep.read_seconds) {
                Ok(resident) => {
                    rep.pages += resident;
                    rep.not_read_pages += pages(&chunk).saturating_sub(resident);
                }
                Err(e) => {
                    rep.skipped.push(format!("{}: {e}", o.path));
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            // The rest of this object (in later parts) is left alone too.
            views[idx].1 = None;
        }
    }
    rep.seconds = t0.elapsed().as_secs_f64();
    rep
}

/// Whether a step of `need` bytes may run after `spent`: within the budget, above the free
/// memory floor, with as much free swap as it reads back (it frees as many slots as it takes,
/// but another tenant may take the freed ones first: pages read back could stay in memory).
fn room(spent: u64, need: u64, opts: &RelayoutOptions) -> Result<(), String> {
    if let Some(b) = opts.budget_bytes {
        if spent.saturating_add(need) > b {
            return Err(format!("budget of {} MiB reached", b >> 20));
        }
    }
    let m = sys::meminfo().map_err(|e| format!("/proc/meminfo: {e}"))?;
    if m.mem_available < opts.free_floor_bytes.saturating_add(need) {
        return Err(format!(
            "MemAvailable {} MiB: a step of {} MiB would go below the floor of {} MiB",
            m.mem_available >> 20,
            need >> 20,
            opts.free_floor_bytes >> 20
        ));
    }
    if m.swap_free < need {
        return Err(format!(
            "swap nearly full ({} MiB free): a step of {} MiB not taken",
            m.swap_free >> 20,
            need >> 20
        ));
    }
    Ok(())
}

/// One step: read `chunk` back (queued at once, then waited for: the time is added to
/// `read_seconds`) and page it out again from our mapping. Returns the pages that were read.
fn step(v: &ObjectView, chunk: &[PageRun], read_seconds: &mut f64) -> std::io::Result<u64> {
    let t = Instant::now();
    let read = v
        .madvise(chunk, libc::MADV_WILLNEED)
        .and_then(|_| v.madvise(chunk, libc::MADV_POPULATE_READ));
    *read_seconds += t.elapsed().as_secs_f64();
    read?;
    let resident = pages(&v.resident(chunk)?);
    v.madvise(chunk, libc::MADV_PAGEOUT)?;
    Ok(resident)
}
