//! Pre-purge: page a (frozen) target out completely and verify that its memory is really gone.

use crate::backend::Backend;
use crate::cgroup::{Memcg, ReclaimOutcome};
use crate::error::{Error, Result};
use crate::freeze::{quiescence, Quiescence};
use crate::inspect::{Contiguity, InspectOptions, SwappedPage, Totals, VmaKind};
use crate::memkind::{ByKind, KindUsage};
use crate::progress::Progress;
use crate::residency::ResidencySnapshot;
use crate::sys::{self, Range};
use crate::target::{require_swap, Target};
use std::time::Instant;

/// Purge options.
#[derive(Debug, Clone)]
pub struct PurgeOptions {
    /// Purge even if the target is neither frozen nor stopped (its pages may come straight back).
    pub force: bool,
    /// After paging out, reclaim the target's own memory cgroup so the pages leave the swap cache
    /// (v2 `memory.reclaim`, v1 `memory.force_empty`). Hierarchy roots are never reclaimed.
    pub reclaim: bool,
    /// Reclaim the target's memory cgroup even when other processes (or child cgroups) share
    /// it: their memory is reclaimed too. Off by default.
    pub reclaim_shared: bool,
    /// Ranges are cut to at most this many bytes (progress granularity).
    pub chunk_bytes: u64,
    /// iovecs per `process_madvise` call (at most 1024).
    pub batch_iovecs: usize,
    /// Take a [`ResidencySnapshot`] (every kind) before paging out: returned in
    /// [`PurgeReport::snapshot`], and the per-kind `evicted_bytes` are measured against it.
    pub snapshot: bool,
    /// Layout for the next Start: page these ranges out **first, in this order** (the loading
    /// set in touch order: [`crate::LoadingSet::address_order`]), one range after the other
    /// from one CPU, so the kernel hands out consecutive swap slots; then the rest as usual.
    /// Pages already on swap, and pages clean since their last swap-in (read-faulted), keep
    /// their old slot: the kernel drops them without writing. A layout is written once per
    /// page that was dirtied (or never swapped).
    pub layout_first: Option<Vec<Range>>,
    /// With [`layout_first`](Self::layout_first): in the head of the layout, up to this many
    /// bytes (the pages the app touched first), the present anonymous pages that kept an old
    /// swap slot (read-faulted from swap since their last swap-out) are given up their slot
    /// before the page-out ([`crate::reslot`]: paged out, read back, contents read, paged out
    /// and read back again, written back unchanged — a write fault on the swap entry frees the slot), so the ordered
    /// page-out writes them into the layout's consecutive slots instead of their old scattered
    /// ones. Only for a quiescent (frozen) target; pages shared with another process are left
    /// alone. Costs a read and a write of each such page at Stop. 0 (the default) does nothing.
    pub layout_rewrite_bytes: u64,
    /// With [`snapshot`](Self::snapshot): the objects of the last plan, whose files the target
    /// no longer holds are added to the snapshot if unheld for fewer than
    /// `remember_max_unheld` Stops ([`ResidencySnapshot::remember`]; 0, the default, adds
    /// none).
    pub remember: Vec<crate::memkind::MemObject>,
    pub remember_max_unheld: u32,
}

impl Default for PurgeOptions {
    fn default() -> Self {
        Self {
            force: false,
            reclaim: true,
            reclaim_shared: false,
            chunk_bytes: 32 << 20,
            batch_iovecs: sys::IOV_MAX,
            snapshot: true,
            layout_first: None,
            layout_rewrite_bytes: 0,
            remember: Vec::new(),
            remember_max_unheld: 0,
        }
    }
}

/// Swap layout of the loading set and of the rest after a purge with
/// [`PurgeOptions::layout_first`] (anonymous pages: shmem swap slots are not visible from
/// userspace).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayoutReport {
    /// Pages in the layout ranges (the loading set's addresses).
    pub loading_set_pages: u64,
    /// Of those, anonymous pages on swap now.
    pub loading_set_swapped_pages: u64,
    /// Runs of consecutive swap slots among them in slot order (sequential reads of a
    /// slot-ordered fetch).
    pub loading_set_extents: u64,
    /// Runs of consecutive slots walking them in the given (touch) order.
    pub loading_set_touch_order_extents: u64,
    /// Of the loading set's anonymous pages on swap, those that were on swap already before
    /// this purge (not mapped): they keep their old slot. (Mapped pages that are clean in the
    /// swap cache — read-faulted since their last swap-out — keep theirs too; pagemap cannot
    /// show the slot of a mapped page, so they are not counted here.)
    pub already_swapped_pages: u64,
    /// Every other swapped anonymous page of the target.
    pub rest_pages: u64,
    pub rest_extents: u64,
    /// Time of the ordered page-out of the loading set.
    pub first_seconds: f64,
    /// Pages of the layout's head that kept an old swap slot and were given it up before the
    /// page-out ([`PurgeOptions::layout_rewrite_bytes`], [`crate::reslot`]), and those left
    /// alone (the page-out did not take them, read-only, still in the swap cache).
    #[serde(default)]
    pub rewritten_pages: u64,
    #[serde(default)]
    pub rewrite_refused_pages: u64,
}

/// Resident memory that the purge could not remove, by reason.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Unpurged {
    /// In mlocked VMAs (MADV_PAGEOUT skips them).
    pub locked_bytes: u64,
    /// In hugetlb VMAs.
    pub hugetlb_bytes: u64,
    /// In VM_PFNMAP/VM_IO and kernel-special mappings (vdso, vvar).
    pub special_bytes: u64,
    /// Present pages of shared mappings (shared anon/shmem, shared files, pages mapped by
    /// other processes too).
    pub shared_bytes: u64,
    /// Present file pages of private mappings (e.g. libraries other processes map too).
    pub file_bytes: u64,
    /// Private anonymous pages still present.
    pub anon_bytes: u64,
    /// Of `anon_bytes`, pages mapped by more than one process (copy-on-write after fork):
    /// `MADV_PAGEOUT` leaves them alone.
    pub anon_shared_bytes: u64,
    /// The VMAs holding any of the above: (start, end, path, reason, resident bytes).
    pub vmas: Vec<UnpurgedVma>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UnpurgedVma {
    pub start: u64,
    pub end: u64,
    pub path: String,
    pub reason: String,
    pub resident_bytes: u64,
}

/// What a purge did, measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PurgeReport {
    pub pid: i32,
    pub backend: String,
    pub quiescence: Quiescence,
    pub forced: bool,
    pub page_size: u64,
    pub before: Totals,
    pub after: Totals,
    /// Bytes `process_madvise(MADV_PAGEOUT)` accepted.
    pub advised_bytes: u64,
    /// Bytes of eligible ranges the kernel refused (VMA changed under us).
    pub refused_bytes: u64,
    /// Growth of the target's swapped bytes.
    pub paged_out_bytes: u64,
    pub pageout_seconds: f64,
    pub reclaim: Option<ReclaimOutcome>,
    /// Why no memcg reclaim ran (no own cgroup, disabled, error).
    pub reclaim_skipped: Option<String>,
    pub seconds: f64,
    /// paged_out_bytes / seconds, MB/s (10^6).
    pub mb_per_s: f64,
    /// Resident bytes left (all kinds).
    pub resident_bytes: u64,
    pub resident_file_bytes: u64,
    pub resident_anon_bytes: u64,
    pub swapped_bytes: u64,
    /// Bytes of the target's memcg still in the swap cache (`memory.stat` swapcached).
    pub swap_cache_bytes: Option<u64>,
    /// System-wide `SwapCached` after minus before (other processes contribute too).
    pub system_swap_cached_delta: i64,
    pub memcg: Option<Memcg>,
    pub memcg_usage_before: Option<u64>,
    pub memcg_usage_after: Option<u64>,
    pub contiguity: Contiguity,
    pub unpurged: Unpurged,
    /// Per memory kind before and after (see [`KindUsage`]).
    #[serde(default)]
    pub kinds_before: Option<ByKind<KindUsage>>,
    #[serde(default)]
    pub kinds_after: Option<ByKind<KindUsage>>,
    /// Bytes of the Stop-time snapshot's resident pages that are out of RAM now, per kind
    /// (anon: not mapped; shmem, file: neither in the page cache nor the swap cache).
    #[serde(default)]
    pub evicted_bytes: Option<ByKind<u64>>,
    /// Resident bytes per kind in the snapshot (what the app had in RAM at Stop).
    #[serde(default)]
    pub snapshot_bytes: Option<ByKind<u64>>,
    /// Objects the snapshot or the eviction check could not follow, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kind_notes: Vec<String>,
    #[serde(default)]
    pub layout: Option<LayoutReport>,
    /// Set when the purge is partial: private anonymous memory the page-out should have moved
    /// to swap is still resident (swap full, or the kernel refused); says how much and how much
    /// swap is free. Nothing is lost: those pages simply stay in RAM.
    #[serde(default)]
    pub partial: Option<String>,
    /// The Stop-time residency snapshot (taken before the page-out), for the Start plan
    /// ([`crate::ActivationPlan::compute`]). Not serialized: persist it separately.
    #[serde(skip)]
    pub snapshot: Option<ResidencySnapshot>,
}

/// Purge through `backend` (page-out is `process_madvise` for every backend).
pub fn purge_with(
    backend: &dyn Backend,
    pid: i32,
    opts: &PurgeOptions,
    progress: &dyn Progress,
) -> Result<PurgeReport> {
    let t = Target::open(pid, "purge")?;
    require_swap()?;
    let q = check_quiesced(pid, opts.force)?;
    let t0 = Instant::now();
    let mem0 = sys::meminfo()?;
    let memcg = Memcg::of_pid(pid)?;
    let usage0 = memcg.as_ref().map(|m| m.usage()).transpose()?;
    let before = backend.inspect(&t, InspectOptions::default())?;
    let ps = before.page_size;
    let mut kind_notes = Vec::new();
    let snapshot = take_snapshot(&t, opts, &mut kind_notes)?;
    let mut out = PageOut::default();
    let reslot = opts.layout_rewrite_bytes / ps;
    let reslot = if q.is_quiescent() { reslot } else { 0 };
    let layout_pre = page_out_layout_first(backend, &t, opts, progress, reslot, &mut out)?;
    let ranges = eligible_ranges(&before.vmas, opts.chunk_bytes.max(ps));
    progress.phase("page-out", ranges.iter().map(|r| r.len).sum());
    let tp = Instant::now();
    page_out_ranges(backend, &t, &ranges, opts, progress, &mut out)?;
    let pageout_seconds = tp.elapsed().as_secs_f64();
    let (reclaim, reclaim_skipped) = reclaim_memcg(&t, memcg.as_ref(), opts, progress)?;
    t.check_alive("purge")?;
    let (after, layout) = inspect_after(backend, &t, opts, &layout_pre, &out)?;
    let (snapshot_bytes, evicted_bytes) = eviction(snapshot.as_ref(), pid, ps, &mut kind_notes)?;
    let seconds = t0.elapsed().as_secs_f64();
    let mem1 = sys::meminfo()?;
    let paged_out_bytes = after.totals.swapped.saturating_sub(before.totals.swapped) * ps;
    let unpurged = unpurged(&after.vmas, ps);
    let partial = partial_note(&unpurged, &mem1);
    Ok(PurgeReport {
        pid,
        backend: backend.name().to_string(),
        quiescence: q,
        forced: opts.force,
        page_size: ps,
        before: before.totals,
        after: after.totals,
        advised_bytes: out.advised,
        refused_bytes: out.refused,
        paged_out_bytes,
        pageout_seconds,
        reclaim,
        reclaim_skipped,
        seconds,
        mb_per_s: if seconds > 0.0 {
            paged_out_bytes as f64 / 1e6 / seconds
        } else {
            0.0
        },
        resident_bytes: after.totals.present * ps,
        resident_file_bytes: after.totals.file_pages * ps,
        resident_anon_bytes: after.totals.present_anon * ps,
        swapped_bytes: after.totals.swapped * ps,
        swap_cache_bytes: memcg
            .as_ref()
            .map(|m| m.swapcached())
            .transpose()?
            .flatten(),
        system_swap_cached_delta: mem1.swap_cached as i64 - mem0.swap_cached as i64,
        memcg_usage_before: usage0,
        memcg_usage_after: memcg.as_ref().map(|m| m.usage()).transpose()?,
        memcg,
        contiguity: after.contiguity,
        unpurged,
        kinds_before: before.kinds,
        kinds_after: after.kinds,
        evicted_bytes,
        snapshot_bytes,
        kind_notes,
        layout,
        partial,
        snapshot,
    })
}

/// The target's quiescence; an error if it runs and the purge is not forced.
fn check_quiesced(pid: i32, force: bool) -> Result<Quiescence> {
    let q = quiescence(pid)?;
    if !q.is_quiescent() && !force {
        let Quiescence::Running(detail) = q else {
            unreachable!()
        };
        return Err(Error::NotQuiesced { pid, detail });
    }
    Ok(q)
}

/// The target after the page-out (its swapped pages too with a layout), and the layout report.
fn inspect_after(
    backend: &dyn Backend,
    t: &Target,
    opts: &PurgeOptions,
    layout_pre: &[SwappedPage],
    out: &PageOut,
) -> Result<(crate::inspect::Inspection, Option<LayoutReport>)> {
    let after = backend.inspect(
        t,
        InspectOptions {
            swapped_pages: opts.layout_first.is_some(),
        },
    )?;
    let ps = after.page_size;
    let layout = opts.layout_first.as_ref().map(|first| {
        let mut l = layout_report(
            first,
            layout_pre,
            &after.swapped_pages,
            ps,
            out.first_seconds,
        );
        (l.rewritten_pages, l.rewrite_refused_pages) = out.rewritten;
        l
    });
    Ok((after, layout))
}

/// What the page-out steps did so far.
#[derive(Debug, Default)]
struct PageOut {
    /// Bytes `process_madvise(MADV_PAGEOUT)` accepted, and refused.
    advised: u64,
    refused: u64,
    /// Time of the ordered page-out of the loading set.
    first_seconds: f64,
    /// Pages of the layout's head rewritten, and refused.
    rewritten: (u64, u64),
}

/// The Stop-time residency snapshot, when asked for (a failure other than the target's exit is
/// a note, not an error).
fn take_snapshot(
    t: &Target,
    opts: &PurgeOptions,
    kind_notes: &mut Vec<String>,
) -> Result<Option<ResidencySnapshot>> {
    if !opts.snapshot {
        return Ok(None);
    }
    match ResidencySnapshot::take(t) {
        Ok(mut s) => {
            s.remember(&opts.remember, opts.remember_max_unheld);
            kind_notes.extend(
                s.skipped
                    .iter()
                    .map(|k| format!("{}: {}", k.path, k.reason)),
            );
            Ok(Some(s))
        }
        Err(e @ Error::TargetExited { .. }) => Err(e),
        Err(e) => {
            kind_notes.push(format!("no residency snapshot: {e}"));
            Ok(None)
        }
    }
}

/// The loading set first ([`PurgeOptions::layout_first`]), in the given order, from one CPU
/// (slots come from per-CPU clusters), after giving up the old slots of at most
/// `reslot_pages` of its head ([`crate::reslot`]; 0 with a target that is not quiescent).
/// Returns the layout's pages that were on swap before.
fn page_out_layout_first(
    backend: &dyn Backend,
    t: &Target,
    opts: &PurgeOptions,
    progress: &dyn Progress,
    reslot_pages: u64,
    out: &mut PageOut,
) -> Result<Vec<SwappedPage>> {
    let Some(first) = opts.layout_first.as_ref().filter(|f| !f.is_empty()) else {
        return Ok(Vec::new());
    };
    let layout_pre = crate::prefetch::swapped_pages_in(t, first)?;
    let tf = Instant::now();
    if reslot_pages > 0 {
        let r = crate::reslot::reslot(t, first, reslot_pages)?;
        out.rewritten = (r.reslotted, r.candidates - r.reslotted);
    }
    let _pin = PinCpu::here();
    progress.phase(
        "page-out (loading set first)",
        first.iter().map(|r| r.len).sum(),
    );
    page_out_ranges(backend, t, first, opts, progress, out)?;
    out.first_seconds = tf.elapsed().as_secs_f64();
    Ok(layout_pre)
}

/// Address-ordered ranges of every eligible VMA that holds present pages, cut into chunks of
/// at most `chunk` bytes.
fn eligible_ranges(vmas: &[crate::inspect::VmaInfo], chunk: u64) -> Vec<Range> {
    let mut ranges: Vec<Range> = Vec::new();
    for v in vmas
        .iter()
        .filter(|v| v.pageout_eligible() && v.present > 0)
    {
        let mut s = v.start;
        while s < v.end {
            let len = (v.end - s).min(chunk);
            ranges.push(Range { start: s, len });
            s += len;
        }
    }
    ranges
}

/// `MADV_PAGEOUT` over `ranges`, in batches of [`PurgeOptions::batch_iovecs`], adding to
/// `out`'s advised and refused bytes (progress counts from what `out` had).
fn page_out_ranges(
    backend: &dyn Backend,
    t: &Target,
    ranges: &[Range],
    opts: &PurgeOptions,
    progress: &dyn Progress,
    out: &mut PageOut,
) -> Result<()> {
    for batch in ranges.chunks(opts.batch_iovecs.clamp(1, sys::IOV_MAX)) {
        t.check_alive("purge")?;
        let base = out.advised + out.refused;
        let (a, r) = backend.page_out(t, batch, &mut |d| progress.update(base + d))?;
        out.advised += a;
        out.refused += r;
        progress.update(out.advised + out.refused);
    }
    Ok(())
}

/// The memcg reclaim after the page-out (so pages leave the swap cache), or why none ran.
fn reclaim_memcg(
    t: &Target,
    memcg: Option<&Memcg>,
    opts: &PurgeOptions,
    progress: &dyn Progress,
) -> Result<(Option<ReclaimOutcome>, Option<String>)> {
    let skipped = |s: String| Ok((None, Some(s)));
    match (memcg, opts.reclaim) {
        (_, false) => skipped("disabled by caller".into()),
        (None, true) => skipped("the target has no memory cgroup".into()),
        (Some(m), true) if m.is_root() => skipped(format!(
            "the target's memory cgroup {} is a hierarchy root: pages stay in the swap cache",
            m.dir().display()
        )),
        (Some(m), true) if !opts.reclaim_shared && m.shared_with_others(t.pid())?.is_some() => {
            skipped(format!(
                "the target's memory cgroup is shared ({}); reclaiming it would evict others too, so pages stay in the swap cache \
                 (start the target in its own cgroup, or allow a shared reclaim)",
                m.shared_with_others(t.pid())?.unwrap_or_default()
            ))
        }
        (Some(m), true) => {
            progress.phase("memcg reclaim", 0);
            t.check_alive("purge")?;
            match m.reclaim_all() {
                Ok(o) => Ok((Some(o), None)),
                Err(e) => skipped(format!("reclaim failed: {e}")),
            }
        }
    }
}

/// Bytes per kind: the snapshot's resident bytes, and of them those out of RAM now.
type SnapshotAndEvicted = (Option<ByKind<u64>>, Option<ByKind<u64>>);

/// The snapshot's resident bytes per kind, and how many of them are out of RAM now.
fn eviction(
    snapshot: Option<&ResidencySnapshot>,
    pid: i32,
    ps: u64,
    kind_notes: &mut Vec<String>,
) -> Result<SnapshotAndEvicted> {
    let Some(s) = snapshot else {
        return Ok((None, None));
    };
    match s.check(pid) {
        Ok(c) => {
            kind_notes.extend(c.gone.iter().map(|(p, g)| format!("{p}: {g}")));
            let out = c.out_pages();
            Ok((
                Some(s.bytes()),
                Some(ByKind {
                    anon: out.anon * ps,
                    shmem: out.shmem * ps,
                    file: out.file * ps,
                }),
            ))
        }
        Err(e @ Error::TargetExited { .. }) => Err(e),
        Err(e) => {
            kind_notes.push(format!("eviction check failed: {e}"));
            Ok((Some(s.bytes()), None))
        }
    }
}

/// Resident memory left after the purge, by reason.
fn unpurged(vmas: &[crate::inspect::VmaInfo], ps: u64) -> Unpurged {
    let mut un = Unpurged::default();
    for v in vmas.iter().filter(|v| v.present > 0) {
        let bytes = v.present * ps;
        let reason = if v.locked {
            un.locked_bytes += bytes;
            "mlocked"
        } else if v.hugetlb {
            un.hugetlb_bytes += bytes;
            "hugetlb"
        } else if v.pfnmap || v.kind == VmaKind::Special {
            un.special_bytes += bytes;
            "special mapping"
        } else if v.shared {
            un.shared_bytes += bytes;
            "shared mapping"
        } else {
            un.file_bytes += v.file_pages * ps;
            un.anon_bytes += v.present_anon() * ps;
            // Shared pages are file pages first (libraries), then anonymous COW pages.
            let anon_shared = v
                .present_shared
                .saturating_sub(v.file_pages)
                .min(v.present_anon());
            un.anon_shared_bytes += anon_shared * ps;
            if v.present_anon() > 0 && anon_shared == v.present_anon() {
                "anonymous pages shared with another process (copy-on-write after fork)"
            } else if v.present_anon() > 0 {
                "anonymous pages still present"
            } else {
                "file pages (mapped elsewhere too, or re-read)"
            }
        };
        un.vmas.push(UnpurgedVma {
            start: v.start,
            end: v.end,
            path: v.path.clone(),
            reason: reason.into(),
            resident_bytes: bytes,
        });
    }
    un
}

/// The partial-purge note: private anonymous memory the page-out should have moved to swap is
/// still resident.
fn partial_note(un: &Unpurged, mem1: &sys::MemFigures) -> Option<String> {
    let left = un.anon_bytes.saturating_sub(un.anon_shared_bytes);
    (left > 0).then(|| {
        format!(
            "partial purge: {} KiB of private anonymous memory still resident; swap free {} of {} MiB{}",
            left >> 10,
            mem1.swap_free >> 20,
            mem1.swap_total >> 20,
            if mem1.swap_free < left {
                " (swap full: it does not fit)"
            } else {
                ""
            }
        )
    })
}

/// Pins the calling thread to the CPU it runs on until dropped (best effort).
struct PinCpu(Option<libc::cpu_set_t>);

impl PinCpu {
    fn here() -> Self {
        // SAFETY: sched_getcpu takes no arguments.
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu < 0 {
            return Self(None);
        }
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the get/set calls receive a pointer
        // to it and its size, for the calling thread (pid 0).
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) != 0 {
                return Self(None);
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
                return Self(None);
            }
            Self(Some(old))
        }
    }
}

impl Drop for PinCpu {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: restores the affinity mask read in `here`, for the calling thread.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), old) };
        }
    }
}

/// Layout figures: the loading set's pages (given order) and the rest (`all`: every swapped
/// page after the purge, address order); `pre`: the loading set's pages on swap before.
fn layout_report(
    first: &[Range],
    pre: &[SwappedPage],
    all: &[SwappedPage],
    ps: u64,
    first_seconds: f64,
) -> LayoutReport {
    let mut sorted: Vec<Range> = first.to_vec();
    sorted.sort_unstable();
    let inside = |a: u64| {
        let i = sorted.partition_point(|r| r.start <= a);
        i > 0 && a < sorted[i - 1].end()
    };
    let by_addr: std::collections::HashMap<u64, (u8, u64)> = all
        .iter()
        .map(|p| (p.addr, (p.swap_type, p.offset)))
        .collect();
    let pre: std::collections::HashMap<u64, (u8, u64)> = pre
        .iter()
        .map(|p| (p.addr, (p.swap_type, p.offset)))
        .collect();
    let mut rep = LayoutReport {
        first_seconds,
        ..Default::default()
    };
    let mut prev: Option<(u8, u64)> = None;
    let mut ls_slots = Vec::new();
    for r in first {
        rep.loading_set_pages += r.len / ps;
        for i in 0..r.len / ps {
            let a = r.start + i * ps;
            match by_addr.get(&a) {
                Some(&slot) => {
                    rep.loading_set_swapped_pages += 1;
                    if pre.get(&a) == Some(&slot) {
                        rep.already_swapped_pages += 1;
                    }
                    if prev.is_none_or(|(t, o)| t != slot.0 || o + 1 != slot.1) {
                        rep.loading_set_touch_order_extents += 1;
                    }
                    prev = Some(slot);
                    ls_slots.push(slot);
                }
                None => prev = None,
            }
        }
    }
    let runs = |mut v: Vec<(u8, u64)>| -> u64 {
        v.sort_unstable();
        v.dedup();
        let mut n = 0;
        let mut p: Option<(u8, u64)> = None;
        for s in v {
            if p.is_none_or(|(t, o)| t != s.0 || o + 1 != s.1) {
                n += 1;
            }
            p = Some(s);
        }
        n
    };
    rep.loading_set_extents = runs(ls_slots);
    let rest: Vec<(u8, u64)> = all
        .iter()
        .filter(|p| !inside(p.addr))
        .map(|p| (p.swap_type, p.offset))
        .collect();
    rep.rest_pages = rest.len() as u64;
    rep.rest_extents = runs(rest);
    rep
}
