//! Portable (stock-kernel) map builders: `/proc/kpageflags` for every PFN of the RAM
//! layout, plus `/proc/PID/pagemap` of active processes. Root is needed (the iomem
//! addresses, kpageflags, and PFNs in pagemap).
//!
//! # How the portable maps differ from exact ones
//! **Free bitmap.** Two modes ([`FreeMode`]):
//! * [`FreeMode::Flagged`] (default) marks exactly the pages whose kpageflags has
//!   `KPF_BUDDY` (bit 10). Which pages carry it depends on the kernel: the bit comes
//!   from `PageBuddy()`, which is true only on the *head* page of a free block, but
//!   kernels since 4.x also report it for tail pages (`fs/proc/page.c`:
//!   `page_count(page) == 0 && is_free_buddy_page(page)`). Measured on this project's
//!   6.18 host: whole free blocks are flagged (1023 x `0x400` + head), and the flagged
//!   total matches `/proc/buddyinfo` (1.75 M vs 1.82 M pages, taken a few s apart). On a
//!   heads-only kernel this mode undercounts by up to 1024x per block.
//! * [`FreeMode::InferOrder`] (for heads-only kernels) additionally extends each
//!   flagged page at PFN `h` over the following **flag-less** pages: it takes the
//!   largest `2^k` (`k <= 10`, `h` aligned to `2^k`) such that pages `h+1 .. h+2^k` all
//!   have no flags and are in the same RAM range. It *overestimates* when a flag-less
//!   allocated page (vmalloc, kernel stack, page frags) follows a small free block.
//!
//! Neither mode sees free pages outside the buddy lists: per-cpu free lists (no
//! flags), and memory the kernel has not handed to the allocator yet (e.g. lazy
//! deferred struct-page init: on this host `MemFree` counts ~3.5 M such flag-less pages
//! that `/proc/buddyinfo` does not, so flagged/MemFree is only ~0.33). `KPF_NOPAGE`,
//! `KPF_OFFLINE`, `KPF_HWPOISON` pages are never marked free. Every map is a snapshot
//! of a running system: pages move while it is read (docs/guest-maps.md: never discard on it).
//!
//! **Priority map.** Per-page from kpageflags, then raised by the user pages of active
//! processes (the highest category wins):
//! * `KPF_NOPAGE`/`KPF_OFFLINE`/`KPF_HWPOISON` → Other; free pages (as above) → Other;
//! * `KPF_RESERVED` (bit 32) or `KPF_ZERO_PAGE` → Kernel (exact: kernel code only;
//!   portable: all reserved memory, including memblock reservations);
//! * `KPF_SLAB` → Kernel_Allocated; flag-less pages that are not inferred free, and
//!   pages with only unclassifiable flags, → Kernel_Allocated (a guess: vmalloc, stacks,
//!   per-cpu lists);
//! * `KPF_PGTABLE` (bit 26) → Page_Table: every page table, as the module does (neither
//!   source names the owning process);
//! * `KPF_WRITEBACK` → Memory_I/O (exact: memory used for I/O; portable: pages under
//!   writeback at the moment of the scan);
//! * `KPF_ANON` (or `KPF_SWAPBACKED`) not raised below → Other (anonymous memory of
//!   inactive processes);
//! * file pages (`KPF_LRU` or `KPF_MMAP` or `KPF_UPTODATE`, not anon): `KPF_ACTIVE` →
//!   File_Active, else File_Inactive;
//! * pages of active processes found through `/proc/PID/pagemap`: VMA executable →
//!   User_Code, else User_Data. "Active" is defined in [`ActivityTracker`].
//!   A page shared with an inactive process still counts (it is mapped by an active
//!   one); a page of an inactive process that is only in its page tables stays where
//!   its flags put it.

use crate::layout::RamLayout;
use crate::maps::{FreeBitmap, MapInfo, MapSourceKind, PriorityMap};
use crate::{Category, Error};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

pub mod kpf {
    pub const LOCKED: u32 = 0;
    pub const ERROR: u32 = 1;
    pub const REFERENCED: u32 = 2;
    pub const UPTODATE: u32 = 3;
    pub const DIRTY: u32 = 4;
    pub const LRU: u32 = 5;
    pub const ACTIVE: u32 = 6;
    pub const SLAB: u32 = 7;
    pub const WRITEBACK: u32 = 8;
    pub const RECLAIM: u32 = 9;
    pub const BUDDY: u32 = 10;
    pub const MMAP: u32 = 11;
    pub const ANON: u32 = 12;
    pub const SWAPCACHE: u32 = 13;
    pub const SWAPBACKED: u32 = 14;
    pub const COMPOUND_HEAD: u32 = 15;
    pub const COMPOUND_TAIL: u32 = 16;
    pub const HUGE: u32 = 17;
    pub const UNEVICTABLE: u32 = 18;
    pub const HWPOISON: u32 = 19;
    pub const NOPAGE: u32 = 20;
    pub const KSM: u32 = 21;
    pub const THP: u32 = 22;
    pub const OFFLINE: u32 = 23;
    pub const ZERO_PAGE: u32 = 24;
    pub const IDLE: u32 = 25;
    pub const PGTABLE: u32 = 26;
    pub const RESERVED: u32 = 32;
}

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Largest buddy order (MAX_PAGE_ORDER on x86-64 since 6.8; MAX_ORDER-1 before).
pub const MAX_ORDER: u32 = 10;
const CHUNK_PAGES: u64 = 64 * 1024;

/// How the free bitmap treats buddy tails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
pub enum FreeMode {
    /// Mark exactly the pages with KPF_BUDDY (whole blocks on kernels >= 4.x).
    #[default]
    Flagged,
    /// Also extend each flagged page over following flag-less pages up to its
    /// alignment (order <= 10): for heads-only kernels; may overcount.
    InferOrder,
}

/// Category of one page from its kpageflags alone (free pages handled by the caller).
pub fn category_from_flags(f: u64) -> Category {
    if f & (bit(kpf::NOPAGE) | bit(kpf::OFFLINE) | bit(kpf::HWPOISON)) != 0 {
        Category::Other
    } else if f & (bit(kpf::RESERVED) | bit(kpf::ZERO_PAGE)) != 0 {
        Category::Kernel
    } else if f & bit(kpf::SLAB) != 0 {
        Category::KernelAllocated
    } else if f & bit(kpf::PGTABLE) != 0 {
        Category::PageTable
    } else if f & bit(kpf::WRITEBACK) != 0 {
        Category::MemoryIo
    } else if f & (bit(kpf::ANON) | bit(kpf::SWAPBACKED)) != 0 {
        Category::Other
    } else if f & (bit(kpf::LRU) | bit(kpf::MMAP) | bit(kpf::UPTODATE)) != 0 {
        if f & bit(kpf::ACTIVE) != 0 {
            Category::FileActive
        } else {
            Category::FileInactive
        }
    } else if f & bit(kpf::BUDDY) != 0 || f == 0 {
        Category::Other
    } else {
        Category::KernelAllocated
    }
}

/// Both maps from one kpageflags pass, plus counters.
pub struct FlagsScan {
    pub free: FreeBitmap,
    pub priority: PriorityMap,
    pub buddy_heads: u64,
    pub elapsed: Duration,
}

/// Scan `/proc/kpageflags` over the layout. `priority.info` is provisional.
pub fn scan_kpageflags(layout: &RamLayout, mode: FreeMode) -> Result<FlagsScan, Error> {
    let t0 = Instant::now();
    let path = "/proc/kpageflags";
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let placeholder = MapInfo::now(MapSourceKind::PortableApprox, Duration::ZERO, 0);
    let mut free = FreeBitmap::new(layout.clone(), placeholder);
    let mut prio = PriorityMap::new(layout.clone(), placeholder);
    let mut buddy_heads = 0u64;
    let mut buf = vec![0u8; (CHUNK_PAGES * 8) as usize];
    let mut base = 0u64; // map index of the range's first page
    for r in &layout.ranges {
        // Pending inferred block: (head index, head pfn, max pages allowed, zero pages seen).
        let mut pending: Option<(u64, u64, u64, u64)> = None;
        let finish = |p: (u64, u64, u64, u64), free: &mut FreeBitmap| {
            let (hi, _hpfn, _maxp, zeros) = p;
            let run = zeros + 1;
            // Largest power of two <= run (run <= max already).
            let block = 1u64 << (63 - run.leading_zeros());
            free.set_range(hi, block);
        };
        let mut off = 0u64;
        while off < r.count {
            let n = (r.count - off).min(CHUNK_PAGES);
            let bytes = &mut buf[..(n * 8) as usize];
            f.read_exact_at(bytes, (r.start + off) * 8)
                .map_err(|e| Error::io(path, e))?;
            for (j, w) in bytes.chunks_exact(8).enumerate() {
                let flags = u64::from_le_bytes(w.try_into().expect("8 bytes"));
                let pfn = r.start + off + j as u64;
                let idx = base + off + j as u64;
                if let Some(p) = pending.as_mut() {
                    if flags == 0 && p.3 + 1 < p.2 {
                        p.3 += 1;
                        prio.bytes[idx as usize] = Category::Other as u8;
                        continue;
                    }
                    let done = pending.take().expect("pending");
                    finish(done, &mut free);
                }
                if flags & bit(kpf::BUDDY) != 0 {
                    buddy_heads += 1;
                    prio.bytes[idx as usize] = Category::Other as u8;
                    match mode {
                        FreeMode::Flagged => free.set(idx, true),
                        FreeMode::InferOrder => {
                            let align = pfn.trailing_zeros().min(MAX_ORDER);
                            pending = Some((idx, pfn, 1u64 << align, 0));
                        }
                    }
                    continue;
                }
                prio.bytes[idx as usize] = category_from_flags(flags) as u8;
            }
            off += n;
        }
        if let Some(p) = pending.take() {
            finish(p, &mut free);
        }
        base += r.count;
    }
    Ok(FlagsScan {
        free,
        priority: prio,
        buddy_heads,
        elapsed: t0.elapsed(),
    })
}

/// Free bitmap only.
pub fn build_free_bitmap(layout: &RamLayout, mode: FreeMode) -> Result<FreeBitmap, Error> {
    let t0 = Instant::now();
    let mut s = scan_kpageflags(layout, mode)?;
    s.free.info = MapInfo::now(MapSourceKind::PortableApprox, t0.elapsed(), 0);
    Ok(s.free)
}

// ------------------------------------------------------------------ activity

/// Identity of a process across PID reuse.
type ProcKey = (i32, u64);

struct Sample {
    at: Instant,
    cpu_ns: HashMap<ProcKey, u64>,
}

/// Which processes are *active*: a process is active over a window `W` if its CPU time
/// (the sum of `sum_exec_runtime` in `/proc/PID/task/*/schedstat`, ns; from
/// `/proc/PID/stat` utime+stime when schedstat is missing) changed between a sample
/// taken at least `W` ago and now, or if it did not exist (by PID and start time) in
/// that sample, i.e. it started within the window. Kernel threads (no memory map) are
/// irrelevant and skipped later. Samples are taken by [`ActivityTracker::sample`]
/// (the agent calls it every `W/4`); with no sample old enough, the oldest one is used
/// and the effective (shorter) window is reported.
pub struct ActivityTracker {
    samples: VecDeque<Sample>,
    max_window: Duration,
}

/// Result of an activity query.
#[derive(Clone, Debug)]
pub struct ActiveSet {
    pub pids: Vec<i32>,
    /// The window actually covered (may be shorter than asked for).
    pub effective_window: Duration,
    pub processes_seen: usize,
}

fn ticks_ns() -> u64 {
    1_000_000_000 / procfs::ticks_per_second().max(1)
}

fn take_sample() -> Sample {
    let at = Instant::now();
    let mut cpu_ns = HashMap::new();
    let Ok(procs) = procfs::process::all_processes() else {
        return Sample { at, cpu_ns };
    };
    let tick = ticks_ns();
    for p in procs.flatten() {
        let Ok(stat) = p.stat() else { continue };
        let mut total = 0u64;
        let mut have_schedstat = false;
        if let Ok(tasks) = p.tasks() {
            for t in tasks.flatten() {
                if let Ok(s) = t.schedstat() {
                    have_schedstat = true;
                    total += s.sum_exec_runtime;
                }
            }
        }
        if !have_schedstat {
            total = (stat.utime + stat.stime) * tick;
        }
        cpu_ns.insert((stat.pid, stat.starttime), total);
    }
    Sample { at, cpu_ns }
}

impl ActivityTracker {
    pub fn new(max_window: Duration) -> Self {
        ActivityTracker {
            samples: VecDeque::new(),
            max_window,
        }
    }

    /// Record a sample now; keep one sample older than `max_window`, drop older ones.
    pub fn sample(&mut self) {
        let s = take_sample();
        let now = s.at;
        self.samples.push_back(s);
        while self.samples.len() >= 2 && now.duration_since(self.samples[1].at) >= self.max_window {
            self.samples.pop_front();
        }
    }

    /// Processes active within `window`. With no sample at all, samples now, waits
    /// `min(window, 1 s)` and samples again.
    pub fn active(&mut self, window: Duration) -> ActiveSet {
        if self.samples.is_empty() {
            self.sample();
            std::thread::sleep(window.min(Duration::from_secs(1)));
        }
        let now = take_sample();
        // Newest sample at least `window` old, else the oldest.
        let old = self
            .samples
            .iter()
            .rev()
            .find(|s| now.at.duration_since(s.at) >= window)
            .or(self.samples.front())
            .expect("at least one sample");
        let effective_window = now.at.duration_since(old.at);
        let mut pids: Vec<i32> = now
            .cpu_ns
            .iter()
            .filter(|(k, v)| old.cpu_ns.get(k) != Some(v))
            .map(|(k, _)| k.0)
            .collect();
        pids.sort_unstable();
        let processes_seen = now.cpu_ns.len();
        self.samples.push_back(now);
        let newest = self.samples.back().expect("pushed").at;
        while self.samples.len() >= 2
            && newest.duration_since(self.samples[1].at) >= self.max_window.max(window)
        {
            self.samples.pop_front();
        }
        ActiveSet {
            pids,
            effective_window,
            processes_seen,
        }
    }
}

// ------------------------------------------------------------------ priority map

/// Options for the portable priority map.
#[derive(Clone, Debug)]
pub struct PriorityOptions {
    pub free_mode: FreeMode,
    /// Do not count these processes as active (the agent excludes itself: "pages used
    /// for the priority bitmap itself belong to Other").
    pub exclude_pids: HashSet<i32>,
    /// Skip VMAs larger than this (reading their pagemap costs 8 bytes per virtual page).
    pub max_vma_bytes: u64,
}

impl Default for PriorityOptions {
    fn default() -> Self {
        PriorityOptions {
            free_mode: FreeMode::Flagged,
            exclude_pids: HashSet::new(),
            max_vma_bytes: 64 << 30,
        }
    }
}

/// Counters from a priority-map build.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PriorityStats {
    pub active_processes: usize,
    pub processes_seen: usize,
    pub effective_window_ms: u64,
    pub user_pages_marked: u64,
    pub vmas_skipped_large: u64,
    pub kpageflags_ms: u64,
    pub pagemap_ms: u64,
}

const PM_PRESENT: u64 = 1 << 63;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Raise the pages mapped by `pid` into `map`. Returns the number of pages seen present.
pub fn mark_process(
    map: &mut PriorityMap,
    pid: i32,
    max_vma_bytes: u64,
    skipped: &mut u64,
) -> Result<u64, Error> {
    let proc_ = procfs::process::Process::new(pid).map_err(|e| Error::Procfs(e.to_string()))?;
    let maps = proc_.maps().map_err(|e| Error::Procfs(e.to_string()))?;
    let path = format!("/proc/{pid}/pagemap");
    let pm = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let page = crate::layout::page_size();
    let mut buf = vec![0u8; (CHUNK_PAGES * 8) as usize];
    let mut marked = 0u64;
    for m in maps {
        let (start, end) = m.address;
        if end <= start || matches!(m.pathname, procfs::process::MMapPath::Vsyscall) {
            continue;
        }
        if end - start > max_vma_bytes {
            *skipped += 1;
            continue;
        }
        let cat = if m.perms.contains(procfs::process::MMPermissions::EXECUTE) {
            Category::UserCode
        } else {
            Category::UserData
        };
        let mut vpn = start / page;
        let end_vpn = end / page;
        while vpn < end_vpn {
            let n = (end_vpn - vpn).min(CHUNK_PAGES);
            let bytes = &mut buf[..(n * 8) as usize];
            match pm.read_at(bytes, vpn * 8) {
                Ok(got) => {
                    for w in bytes[..got - got % 8].chunks_exact(8) {
                        let e = u64::from_le_bytes(w.try_into().expect("8 bytes"));
                        if e & PM_PRESENT == 0 {
                            continue;
                        }
                        let pfn = e & PM_PFN_MASK;
                        if pfn == 0 {
                            return Err(Error::PfnHidden);
                        }
                        if let Some(i) = map.layout.index_of(pfn) {
                            map.raise(i, cat);
                            marked += 1;
                        }
                    }
                    if got < bytes.len() {
                        break;
                    }
                }
                Err(_) => break, // the process went away or the VMA changed
            }
            vpn += n;
        }
    }
    Ok(marked)
}

/// Build the portable priority map for `layout` given an activity tracker.
pub fn build_priority_map(
    layout: &RamLayout,
    tracker: &mut ActivityTracker,
    window: Duration,
    opts: &PriorityOptions,
) -> Result<(PriorityMap, PriorityStats), Error> {
    // The build time excludes waiting for activity samples (only a first call waits).
    let active = tracker.active(window);
    let t0 = Instant::now();
    let scan = scan_kpageflags(layout, opts.free_mode)?;
    let mut stats = PriorityStats {
        processes_seen: active.processes_seen,
        effective_window_ms: active.effective_window.as_millis() as u64,
        kpageflags_ms: scan.elapsed.as_millis() as u64,
        ..Default::default()
    };
    let mut map = scan.priority;
    let t1 = Instant::now();
    for &pid in &active.pids {
        if opts.exclude_pids.contains(&pid) {
            continue;
        }
        match mark_process(
            &mut map,
            pid,
            opts.max_vma_bytes,
            &mut stats.vmas_skipped_large,
        ) {
            Ok(n) => {
                if n > 0 {
                    stats.active_processes += 1;
                }
                stats.user_pages_marked += n;
            }
            Err(Error::PfnHidden) => return Err(Error::PfnHidden),
            Err(e) => tracing::debug!(pid, "skipping process: {e}"),
        }
    }
    stats.pagemap_ms = t1.elapsed().as_millis() as u64;
    map.info = MapInfo::now(
        MapSourceKind::PortableApprox,
        t0.elapsed(),
        active.effective_window.as_millis().min(u32::MAX as u128) as u32,
    );
    Ok((map, stats))
}

/// `MemFree` from `/proc/meminfo`, in pages.
pub fn memfree_pages() -> Option<u64> {
    use procfs::Current;
    let m = procfs::Meminfo::current().ok()?;
    Some(m.mem_free / crate::layout::page_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_classification() {
        assert_eq!(category_from_flags(bit(kpf::RESERVED)), Category::Kernel);
        assert_eq!(
            category_from_flags(bit(kpf::ZERO_PAGE) | bit(kpf::MMAP)),
            Category::Kernel
        );
        assert_eq!(
            category_from_flags(bit(kpf::SLAB) | bit(kpf::COMPOUND_HEAD)),
            Category::KernelAllocated
        );
        assert_eq!(category_from_flags(bit(kpf::PGTABLE)), Category::PageTable);
        assert_eq!(
            category_from_flags(bit(kpf::WRITEBACK) | bit(kpf::LRU)),
            Category::MemoryIo
        );
        assert_eq!(
            category_from_flags(bit(kpf::ANON) | bit(kpf::LRU) | bit(kpf::ACTIVE)),
            Category::Other
        );
        assert_eq!(
            category_from_flags(bit(kpf::LRU) | bit(kpf::ACTIVE) | bit(kpf::UPTODATE)),
            Category::FileActive
        );
        assert_eq!(
            category_from_flags(bit(kpf::LRU) | bit(kpf::MMAP)),
            Category::FileInactive
        );
        assert_eq!(category_from_flags(bit(kpf::NOPAGE)), Category::Other);
        assert_eq!(category_from_flags(0), Category::Other);
        assert_eq!(
            category_from_flags(bit(kpf::COMPOUND_TAIL)),
            Category::KernelAllocated
        );
    }
}
