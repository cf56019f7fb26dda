//! Prefetch: bring a target's swapped pages back before it is thawed, in swap-offset order,
//! with reads issued ahead in large batches (`MADV_WILLNEED`) and a mapping pass pipelined
//! behind them that installs the PTEs, so the thawed target takes no major faults.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::inspect::{classify, Pagemap, SwappedPage, VmaKind};
use crate::memkind::ByKind;
use crate::progress::Progress;
use crate::sys::{self, Range};
use crate::target::Target;
use crate::workingset::WorkingSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Prefetch options.
#[derive(Debug, Clone)]
pub struct PrefetchOptions {
    /// Threads running the mapping pass (0 = no mapping pass: reads only, PTEs stay empty and
    /// the first touch of each page is a minor fault).
    pub threads: usize,
    /// Bytes of swapped pages per read-ahead batch.
    pub batch_bytes: u64,
    /// How many batches reads may run ahead of the mapping pass.
    pub window: usize,
    /// Stop after this many bytes.
    pub budget_bytes: Option<u64>,
    /// Never let `MemAvailable` drop below this: stop and report instead.
    pub free_floor_bytes: u64,
    /// Pages recorded as the working set go first (in swap-offset order), then the rest.
    pub working_set: Option<WorkingSet>,
    /// Only the working set (the rest comes back on demand).
    pub working_set_only: bool,
    /// With `working_set_only`: look only inside the working set's ranges. No smaps read and
    /// no whole-process pagemap walk (a big process, e.g. QEMU with its TCG code buffer, costs
    /// 100+ ms per walk); the report's swapped/present counts then cover those ranges only.
    pub scan_working_set_only: bool,
    /// Shared memory without a snapshot: `process_madvise(MADV_WILLNEED)` over every shared
    /// mapping whose smaps `Swap:` is not 0 (swaps the swapped shmem pages back into the swap
    /// cache; pagemap cannot say which pages they are, so no mapping pass). Full prefetch only
    /// (not with `working_set_only`).
    pub shmem: bool,
    /// A Stop-time residency snapshot: its shmem and file pages that are out now are fetched
    /// too (after the anonymous pages; objects deleted, replaced or truncated since are skipped
    /// and reported). Replaces the `shmem` pass.
    pub residency: Option<crate::residency::ResidencySnapshot>,
}

impl Default for PrefetchOptions {
    fn default() -> Self {
        Self {
            threads: 2,
            batch_bytes: 16 << 20,
            window: 4,
            budget_bytes: None,
            free_floor_bytes: 256 << 20,
            working_set: None,
            working_set_only: false,
            scan_working_set_only: false,
            shmem: true,
            residency: None,
        }
    }
}

/// Why a prefetch stopped before fetching every candidate page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The byte budget was used up.
    Budget { budget_bytes: u64 },
    /// `MemAvailable` would have dropped below the floor.
    FreeFloor {
        available_bytes: u64,
        floor_bytes: u64,
    },
}

/// What a prefetch did, measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PrefetchReport {
    pub pid: i32,
    pub backend: String,
    pub page_size: u64,
    /// Pages pagemap reported swapped when the prefetch started.
    pub swapped_before_pages: u64,
    /// Pages selected (working set and/or the rest, after budget).
    pub candidate_pages: u64,
    /// How the working set was recorded, when one was given.
    pub working_set_method: Option<String>,
    /// Candidate pages that were in the working set (fetched first).
    pub working_set_pages: u64,
    /// Bytes for which reads were issued.
    pub read_issued_bytes: u64,
    /// Pages the mapping pass installed.
    pub mapped_pages: u64,
    /// Pages the mapping pass could not touch (unmapped meanwhile).
    pub map_failed_pages: u64,
    /// Pages still swapped afterwards (pagemap).
    pub still_swapped_pages: u64,
    /// Present pages afterwards (pagemap, whole process; only the working set's ranges with
    /// `scan_working_set_only`).
    pub present_after_pages: u64,
    /// Runs of consecutive swap slots the reads covered.
    pub read_runs: u64,
    pub stopped: Option<StopReason>,
    pub seconds: f64,
    /// read_issued_bytes / seconds, MB/s (10^6).
    pub mb_per_s: f64,
    /// Bytes for which reads were issued, per kind (anon = `read_issued_bytes`).
    #[serde(default)]
    pub restored_bytes: ByKind<u64>,
    /// Shmem/file objects of the snapshot skipped (deleted, replaced, truncated...), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore_skipped: Vec<crate::plan::SkippedFetch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore_notes: Vec<String>,
}

/// The target's swapped pages (VMAs whose smaps `Swap:` is 0 are never walked).
pub fn swapped_pages(t: &Target) -> Result<Vec<SwappedPage>> {
    swapped_pages_of(t, &crate::inspect::vmas(t)?)
}

/// [`swapped_pages`] over VMAs already read.
pub fn swapped_pages_of(t: &Target, vmas: &[crate::inspect::VmaInfo]) -> Result<Vec<SwappedPage>> {
    swapped_pages_over(
        t,
        vmas.iter()
            .filter(|v| v.smaps_swap_bytes > 0 && v.kind != VmaKind::Special)
            .map(|v| (v.start, v.end)),
    )
}

/// The target's swapped pages inside `ranges` only (sorted, non-overlapping; addresses that
/// are not mapped read as empty pagemap entries).
pub fn swapped_pages_in(t: &Target, ranges: &[Range]) -> Result<Vec<SwappedPage>> {
    swapped_pages_over(t, ranges.iter().map(|r| (r.start, r.end())))
}

/// The swapped pages of the spans `(start, end)`, read from the target's pagemap in order.
fn swapped_pages_over(
    t: &Target,
    spans: impl Iterator<Item = (u64, u64)>,
) -> Result<Vec<SwappedPage>> {
    let mut pm = Pagemap::open(t.pid())?;
    let mut out = Vec::new();
    for (start, end) in spans {
        pm.scan(start, end, |addr, info| {
            if let (false, _, Some((ty, off))) = classify(&info) {
                out.push(SwappedPage {
                    addr,
                    swap_type: ty,
                    offset: off,
                });
            }
        })?;
    }
    Ok(out)
}

fn count_present(t: &Target, only: Option<&[Range]>) -> Result<u64> {
    let mut pm = Pagemap::open(t.pid())?;
    let mut n = 0;
    let spans: Vec<(u64, u64)> = match only {
        Some(rs) => rs.iter().map(|r| (r.start, r.end())).collect(),
        None => crate::inspect::vmas(t)?
            .iter()
            .filter(|v| v.kind != VmaKind::Special)
            .map(|v| (v.start, v.end))
            .collect(),
    };
    for (start, end) in spans {
        pm.scan(start, end, |_, info| n += classify(&info).0 as u64)?;
    }
    Ok(n)
}

/// Merge offset-ordered pages into ranges (consecutive in both address and slot).
fn runs(pages: &[SwappedPage], ps: u64) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::new();
    let mut prev: Option<SwappedPage> = None;
    for p in pages {
        match (out.last_mut(), prev) {
            (Some(r), Some(q))
                if q.addr + ps == p.addr
                    && q.swap_type == p.swap_type
                    && q.offset + 1 == p.offset =>
            {
                r.len += ps;
            }
            _ => out.push(Range {
                start: p.addr,
                len: ps,
            }),
        }
        prev = Some(*p);
    }
    out
}

/// Prefetch through `backend`.
pub fn prefetch_with(
    backend: &dyn Backend,
    pid: i32,
    opts: &PrefetchOptions,
    progress: &dyn Progress,
) -> Result<PrefetchReport> {
    let t = Target::open(pid, "prefetch")?;
    let ps = sys::page_size();
    let t0 = Instant::now();
    let scope: Option<&[Range]> = match (
        &opts.working_set,
        opts.working_set_only && opts.scan_working_set_only,
    ) {
        (Some(ws), true) => Some(&ws.regions),
        _ => None,
    };
    let (all, vmas0) = match scope {
        Some(rs) => (swapped_pages_in(&t, rs)?, None),
        None => {
            let v = crate::inspect::vmas(&t)?;
            (swapped_pages_of(&t, &v)?, Some(v))
        }
    };
    let swapped_before = all.len() as u64;
    let (ordered, ws_pages, mut stopped) = order_candidates(all, opts, ps);
    let candidates = ordered.len() as u64;
    progress.phase("prefetch", candidates * ps);
    let pass = read_and_map(backend, &t, &ordered, opts, progress, &mut stopped)?;
    let issued = pass.issued;
    // Shared memory and file pages.
    let mut restored = ByKind {
        anon: issued,
        ..Default::default()
    };
    let (mut restore_skipped, mut restore_notes) = (Vec::new(), Vec::new());
    if stopped.is_none() {
        if let Some(snap) = &opts.residency {
            let r = restore_snapshot(&t, snap, opts, issued, &mut restore_notes)?;
            restored.shmem = r.issued_bytes.shmem;
            restored.file = r.issued_bytes.file;
            restore_skipped = r.skipped;
            stopped = r.stopped;
        } else if opts.shmem && !opts.working_set_only {
            restored.shmem = restore_shmem(&t, vmas0.unwrap_or_default())?;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let still = match scope {
        Some(rs) => swapped_pages_in(&t, rs),
        None => swapped_pages(&t),
    }?
    .len() as u64;
    let present = count_present(&t, scope)?;
    Ok(PrefetchReport {
        pid,
        backend: backend.name().to_string(),
        page_size: ps,
        swapped_before_pages: swapped_before,
        candidate_pages: candidates,
        working_set_method: opts.working_set.as_ref().map(|w| w.method.to_string()),
        working_set_pages: ws_pages,
        read_issued_bytes: issued,
        mapped_pages: pass.mapped,
        map_failed_pages: pass.failed,
        still_swapped_pages: still,
        present_after_pages: present,
        read_runs: pass.read_runs,
        stopped,
        seconds,
        mb_per_s: if seconds > 0.0 {
            issued as f64 / 1e6 / seconds
        } else {
            0.0
        },
        restored_bytes: restored,
        restore_skipped,
        restore_notes,
    })
}

/// The pages to fetch, in order: the working set first (slot order), then the rest (slot
/// order; left out with `working_set_only`), cut to the budget. Returns them, how many are in
/// the working set, and the budget stop if it cut.
fn order_candidates(
    mut all: Vec<SwappedPage>,
    opts: &PrefetchOptions,
    ps: u64,
) -> (Vec<SwappedPage>, u64, Option<StopReason>) {
    let key = |p: &SwappedPage| (p.swap_type, p.offset);
    let mut ws_pages = 0u64;
    let mut ordered: Vec<SwappedPage>;
    if let Some(ws) = &opts.working_set {
        let (mut first, mut rest): (Vec<_>, Vec<_>) =
            all.drain(..).partition(|p| ws.contains(p.addr));
        first.sort_unstable_by_key(key);
        rest.sort_unstable_by_key(key);
        ws_pages = first.len() as u64;
        ordered = first;
        if !opts.working_set_only {
            ordered.extend(rest);
        }
    } else {
        all.sort_unstable_by_key(key);
        ordered = all;
    }
    let mut stopped = None;
    if let Some(b) = opts.budget_bytes {
        let max = (b / ps) as usize;
        if ordered.len() > max {
            ordered.truncate(max);
            stopped = Some(StopReason::Budget { budget_bytes: b });
        }
    }
    (ordered, ws_pages, stopped)
}

/// What the read and mapping passes did.
#[derive(Debug, Default)]
struct Pass {
    stopped: Option<StopReason>,
    issued: u64,
    read_runs: u64,
    mapped: u64,
    failed: u64,
}

/// Reads issued ahead in batches (`MADV_WILLNEED` in slot order), with `opts.threads` mapping
/// threads pipelined behind them (at most `opts.window` batches behind). Stops at the free
/// floor (`stopped` says so).
fn read_and_map(
    backend: &dyn Backend,
    t: &Target,
    ordered: &[SwappedPage],
    opts: &PrefetchOptions,
    progress: &dyn Progress,
    stopped: &mut Option<StopReason>,
) -> Result<Pass> {
    let (tx, rx) = mpsc::sync_channel::<Arc<Vec<u64>>>(opts.window.max(1));
    let rx = Mutex::new(rx);
    let mapped = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let map_error: Mutex<Option<Error>> = Mutex::new(None);
    let mut pass = Pass {
        stopped: stopped.take(),
        ..Pass::default()
    };
    let issue_result: Result<()> = std::thread::scope(|s| {
        for _ in 0..opts.threads {
            s.spawn(|| map_batches(backend, t, &rx, &mapped, &failed, &map_error, progress));
        }
        let res = issue_reads(
            backend,
            t,
            ordered,
            opts,
            progress,
            (&tx, &map_error),
            &mut pass,
        );
        drop(tx);
        res
    });
    *stopped = pass.stopped.take();
    issue_result?;
    if let Some(e) = map_error.into_inner().expect("map error lock") {
        return Err(e);
    }
    pass.mapped = mapped.into_inner();
    pass.failed = failed.into_inner();
    Ok(pass)
}

/// One mapping thread: maps each batch received until the channel closes; the first error is
/// kept in `map_error` (the issuing loop then stops).
fn map_batches(
    backend: &dyn Backend,
    t: &Target,
    rx: &Mutex<mpsc::Receiver<Arc<Vec<u64>>>>,
    mapped: &AtomicU64,
    failed: &AtomicU64,
    map_error: &Mutex<Option<Error>>,
    progress: &dyn Progress,
) {
    let ps = sys::page_size();
    loop {
        let batch = {
            let guard = rx.lock().expect("prefetch channel lock");
            guard.recv()
        };
        let Ok(batch) = batch else { break };
        match backend.map_pages(t, &batch) {
            Ok((ok, bad)) => {
                let done = mapped.fetch_add(ok, Ordering::Relaxed) + ok;
                failed.fetch_add(bad, Ordering::Relaxed);
                progress.update(done * ps);
            }
            Err(e) => {
                let mut g = map_error.lock().expect("map error lock");
                if g.is_none() {
                    *g = Some(e);
                }
            }
        }
    }
}

/// The issuing loop of [`read_and_map`]: per batch, the free floor, the reads, then the batch
/// handed to the mapping threads (`to_map`: their channel, and their first error).
fn issue_reads(
    backend: &dyn Backend,
    t: &Target,
    ordered: &[SwappedPage],
    opts: &PrefetchOptions,
    progress: &dyn Progress,
    to_map: (&mpsc::SyncSender<Arc<Vec<u64>>>, &Mutex<Option<Error>>),
    pass: &mut Pass,
) -> Result<()> {
    let (tx, map_error) = to_map;
    let ps = sys::page_size();
    let per_batch = ((opts.batch_bytes / ps).max(1)) as usize;
    for chunk in ordered.chunks(per_batch) {
        if map_error.lock().expect("map error lock").is_some() {
            break;
        }
        let need = chunk.len() as u64 * ps;
        let m = sys::meminfo()?;
        if m.mem_available < opts.free_floor_bytes.saturating_add(need) {
            pass.stopped = Some(StopReason::FreeFloor {
                available_bytes: m.mem_available,
                floor_bytes: opts.free_floor_bytes,
            });
            break;
        }
        t.check_alive("prefetch")?;
        let ranges = runs(chunk, ps);
        pass.read_runs += ranges.len() as u64;
        // Reads are issued in slot order; the kernel merges contiguous slots into large I/Os.
        backend.read_ahead(t, &ranges)?;
        pass.issued += need;
        if opts.threads > 0 {
            let addrs: Vec<u64> = chunk.iter().map(|p| p.addr).collect();
            if tx.send(Arc::new(addrs)).is_err() {
                break;
            }
        } else {
            progress.update(pass.issued);
        }
    }
    Ok(())
}

/// The snapshot's shmem and file pages that are out now (a plan without anonymous pages, its
/// `rest` fetched unmapped), within what is left of the budget.
fn restore_snapshot(
    t: &Target,
    snap: &crate::residency::ResidencySnapshot,
    opts: &PrefetchOptions,
    issued: u64,
    notes: &mut Vec<String>,
) -> Result<crate::plan::FetchReport> {
    let plan = crate::plan::ActivationPlan::compute(
        t.pid(),
        &crate::residency::ResidencySnapshot {
            anon: vec![],
            ..snap.clone()
        },
        None,
    )?;
    notes.extend(plan.notes.iter().cloned());
    let fo = crate::plan::FetchOptions {
        free_floor_bytes: opts.free_floor_bytes,
        budget_bytes: opts.budget_bytes.map(|b| b.saturating_sub(issued)),
        ..Default::default()
    };
    crate::plan::fetch_unmapped(t, &plan, &plan.rest, &fo)
}

/// Without a snapshot: `MADV_WILLNEED` over every shared mapping with swapped pages. Returns
/// the bytes the kernel reads (their smaps `Swap:`).
fn restore_shmem(t: &Target, vmas: Vec<crate::inspect::VmaInfo>) -> Result<u64> {
    let shm: Vec<crate::inspect::VmaInfo> = vmas
        .into_iter()
        .filter(|v| v.shared && v.smaps_swap_bytes > 0 && v.pageout_eligible())
        .collect();
    let ranges: Vec<Range> = shm.iter().map(|v| v.range()).collect();
    if ranges.is_empty() {
        return Ok(0);
    }
    sys::madvise_all(t.pidfd(), &ranges, libc::MADV_WILLNEED, &mut |_| {})
        .map_err(|e| Error::sys("process_madvise(MADV_WILLNEED)", t.pid(), e))?;
    Ok(shm.iter().map(|v| v.smaps_swap_bytes).sum())
}

/// Stock mapping pass: `process_vm_readv` of one byte per page, [`sys::IOV_MAX`] pages per
/// call. Reading faults each page in through the kernel's GUP path, which installs the PTE in
/// the target. Returns (pages mapped, pages that could not be read).
pub fn map_pages_vm_readv(pid: i32, addrs: &[u64]) -> Result<(u64, u64)> {
    use nix::errno::Errno;
    use nix::sys::uio::process_vm_readv;
    use std::io::IoSliceMut;
    let npid = nix::unistd::Pid::from_raw(pid);
    let mut scratch = vec![0u8; sys::IOV_MAX];
    sys::per_page_batches(addrs, 1, |_, remote| {
        let mut local = [IoSliceMut::new(&mut scratch[..remote.len()])];
        match process_vm_readv(npid, &mut local, remote) {
            Ok(got) => Ok(got),
            // The first page failed: skip it.
            Err(Errno::EFAULT) => Ok(0),
            Err(Errno::ESRCH) => Err(Error::TargetExited {
                pid,
                op: "prefetch mapping pass",
            }),
            Err(e) => Err(Error::Sys {
                op: "process_vm_readv",
                pid,
                source: e.into(),
            }),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_only_doubly_contiguous_pages() {
        let p = |addr, offset| SwappedPage {
            addr,
            swap_type: 0,
            offset,
        };
        let pages = [
            p(0x1000, 7),
            p(0x2000, 8),
            p(0x3000, 9),
            p(0x9000, 10),
            p(0xa000, 20),
        ];
        let r = runs(&pages, 0x1000);
        assert_eq!(
            r,
            vec![
                Range {
                    start: 0x1000,
                    len: 0x3000
                },
                Range {
                    start: 0x9000,
                    len: 0x1000
                },
                Range {
                    start: 0xa000,
                    len: 0x1000
                }
            ]
        );
    }

    #[test]
    fn vm_readv_mapping_pass_skips_an_unmapped_page() {
        let ps = sys::page_size() as usize;
        let m = sys::AnonMapping::new(8);
        // SAFETY: page 5 of the mapping above is unmapped (a hole the pass must skip).
        let rc = unsafe { libc::munmap(m.base.add(5 * ps) as *mut libc::c_void, ps) };
        assert_eq!(rc, 0);
        let addrs = m.addrs();
        let pid = std::process::id() as i32;
        assert_eq!(map_pages_vm_readv(pid, &addrs).unwrap(), (7, 1));
        assert_eq!(map_pages_vm_readv(pid, &addrs[5..6]).unwrap(), (0, 1));
        assert_eq!(map_pages_vm_readv(pid, &[]).unwrap(), (0, 0));
    }
}
