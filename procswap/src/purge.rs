//! Pre-purge: page a (frozen) target out completely and verify that its memory is really gone.

use crate::backend::Backend;
use crate::cgroup::{Memcg, ReclaimOutcome};
use crate::error::{Error, Result};
use crate::freeze::{quiescence, Quiescence};
use crate::inspect::{Contiguity, InspectOptions, Totals, VmaKind};
use crate::progress::Progress;
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
}

impl Default for PurgeOptions {
    fn default() -> Self {
        Self { force: false, reclaim: true, reclaim_shared: false, chunk_bytes: 32 << 20, batch_iovecs: sys::IOV_MAX }
    }
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
}

/// Purge through `backend` (page-out is `process_madvise` for every backend).
pub fn purge_with(backend: &dyn Backend, pid: i32, opts: &PurgeOptions, progress: &dyn Progress) -> Result<PurgeReport> {
    let t = Target::open(pid, "purge")?;
    require_swap()?;
    let q = quiescence(pid)?;
    if !q.is_quiescent() && !opts.force {
        let Quiescence::Running(detail) = q else { unreachable!() };
        return Err(Error::NotQuiesced { pid, detail });
    }
    let t0 = Instant::now();
    let mem0 = sys::meminfo()?;
    let memcg = Memcg::of_pid(pid)?;
    let usage0 = memcg.as_ref().map(|m| m.usage()).transpose()?;
    let before = backend.inspect(&t, InspectOptions::default())?;
    let ps = before.page_size;

    // Address-ordered ranges of every eligible VMA that holds present pages, cut into chunks.
    let mut ranges: Vec<Range> = Vec::new();
    for v in before.vmas.iter().filter(|v| v.pageout_eligible() && v.present > 0) {
        let mut s = v.start;
        while s < v.end {
            let len = (v.end - s).min(opts.chunk_bytes.max(ps));
            ranges.push(Range { start: s, len });
            s += len;
        }
    }
    let total: u64 = ranges.iter().map(|r| r.len).sum();
    progress.phase("page-out", total);
    let tp = Instant::now();
    let mut advised = 0u64;
    let mut refused = 0u64;
    for batch in ranges.chunks(opts.batch_iovecs.clamp(1, sys::IOV_MAX)) {
        t.check_alive("purge")?;
        let base = advised + refused;
        let (a, r) = backend.page_out(&t, batch, &mut |d| progress.update(base + d))?;
        advised += a;
        refused += r;
        progress.update(advised + refused);
    }
    let pageout_seconds = tp.elapsed().as_secs_f64();

    let mut reclaim = None;
    let mut reclaim_skipped = None;
    match (&memcg, opts.reclaim) {
        (_, false) => reclaim_skipped = Some("disabled by caller".into()),
        (None, true) => reclaim_skipped = Some("the target has no memory cgroup".into()),
        (Some(m), true) if m.is_root() => {
            reclaim_skipped = Some(format!(
                "the target's memory cgroup {} is a hierarchy root: pages stay in the swap cache",
                m.dir().display()
            ))
        }
        (Some(m), true) if !opts.reclaim_shared && m.shared_with_others(pid)?.is_some() => {
            reclaim_skipped = Some(format!(
                "the target's memory cgroup is shared ({}); reclaiming it would evict others too, so pages stay in the swap cache \
                 (start the target in its own cgroup, or allow a shared reclaim)",
                m.shared_with_others(pid)?.unwrap_or_default()
            ))
        }
        (Some(m), true) => {
            progress.phase("memcg reclaim", 0);
            t.check_alive("purge")?;
            match m.reclaim_all() {
                Ok(o) => reclaim = Some(o),
                Err(e) => reclaim_skipped = Some(format!("reclaim failed: {e}")),
            }
        }
    }
    t.check_alive("purge")?;
    let after = backend.inspect(&t, InspectOptions::default())?;
    let seconds = t0.elapsed().as_secs_f64();
    let mem1 = sys::meminfo()?;
    let paged_out_bytes = after.totals.swapped.saturating_sub(before.totals.swapped) * ps;

    let mut un = Unpurged::default();
    for v in after.vmas.iter().filter(|v| v.present > 0) {
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
            let anon_shared = v.present_shared.saturating_sub(v.file_pages).min(v.present_anon());
            un.anon_shared_bytes += anon_shared * ps;
            if v.present_anon() > 0 && anon_shared == v.present_anon() {
                "anonymous pages shared with another process (copy-on-write after fork)"
            } else if v.present_anon() > 0 {
                "anonymous pages still present"
            } else {
                "file pages (mapped elsewhere too, or re-read)"
            }
        };
        un.vmas.push(UnpurgedVma { start: v.start, end: v.end, path: v.path.clone(), reason: reason.into(), resident_bytes: bytes });
    }

    Ok(PurgeReport {
        pid,
        backend: backend.name().to_string(),
        quiescence: q,
        forced: opts.force,
        page_size: ps,
        before: before.totals,
        after: after.totals,
        advised_bytes: advised,
        refused_bytes: refused,
        paged_out_bytes,
        pageout_seconds,
        reclaim,
        reclaim_skipped,
        seconds,
        mb_per_s: if seconds > 0.0 { paged_out_bytes as f64 / 1e6 / seconds } else { 0.0 },
        resident_bytes: after.totals.present * ps,
        resident_file_bytes: after.totals.file_pages * ps,
        resident_anon_bytes: after.totals.present_anon * ps,
        swapped_bytes: after.totals.swapped * ps,
        swap_cache_bytes: memcg.as_ref().map(|m| m.swapcached()).transpose()?.flatten(),
        system_swap_cached_delta: mem1.swap_cached as i64 - mem0.swap_cached as i64,
        memcg_usage_before: usage0,
        memcg_usage_after: memcg.as_ref().map(|m| m.usage()).transpose()?,
        memcg,
        contiguity: after.contiguity,
        unpurged: un,
    })
}
