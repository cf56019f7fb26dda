// SPDX-License-Identifier: GPL-2.0
//! Operations on another process's address space: PREFETCH (fault swapped
//! pages back in and map them, no data copied) and DISCARD (zap ranges).
//!
//! Everything here uses symbols a stock 6.12 kernel exports to modules:
//! `find_get_pid`, `get_pid_task`, `get_task_mm`, `mmput`,
//! `get_user_pages_remote`, `find_vma`, `zap_page_range_single`, `ktime_get`;
//! the mmap lock and `fatal_signal_pending` go through the C shim because
//! they are static inline.

use crate::refs::MmRef;
use crate::uapi::{self, TorporRange};
use kernel::bindings;
use kernel::error::code::{E2BIG, EFAULT, EINTR, EINVAL, ENOMEM};
use kernel::ffi::{c_int, c_long, c_void};
use kernel::prelude::*;
use kernel::uaccess::{UserSlice, UserSliceReader};

const PAGE_SIZE: u64 = bindings::PAGE_SIZE as u64;
const PAGE_MASK: u64 = !(PAGE_SIZE - 1);
/// Pages handled per mmap-lock hold, so munmap/mremap/fork of the target and
/// fatal signals are not held off for long.
const PAGES_PER_LOCK: u64 = 256;
/// `-ERESTARTSYS`, which GUP returns for a pending (fatal) signal (besides `-EINTR`).
const NEG_ERESTARTSYS: c_long = -512;

// The shim takes `struct mm_struct *`; declared as `void *` here because the bindgen
// type holds a zero-sized lockdep field that rustc calls not FFI-safe.
extern "C" {
    fn torpor_mmap_read_lock_killable(mm: *mut c_void) -> c_int;
    fn torpor_mmap_read_unlock(mm: *mut c_void);
    fn torpor_fatal_signal_pending() -> bool;
    // lib/sort.c (exported, not in the 6.12 bindings): heapsort, no allocation, no panics.
    fn sort(
        base: *mut c_void,
        num: usize,
        size: usize,
        cmp: Option<unsafe extern "C" fn(*const c_void, *const c_void) -> c_int>,
        swap: Option<unsafe extern "C" fn(*mut c_void, *mut c_void, c_int)>,
    );
}

/// `sort()` comparator for [`TorporRange`] by start address.
///
/// # Safety
/// `a` and `b` point to valid `TorporRange`s (`sort` passes elements of the array it sorts).
unsafe extern "C" fn cmp_range_start(a: *const c_void, b: *const c_void) -> c_int {
    // SAFETY: `sort` passes pointers to two elements of the `TorporRange` array it sorts.
    let (a, b) = unsafe { ((*(a as *const TorporRange)).start, (*(b as *const TorporRange)).start) };
    a.cmp(&b) as c_int
}

fn sort_ranges_by_start(v: &mut [TorporRange]) {
    // SAFETY: `v` is a valid, exclusively borrowed slice of `v.len()` elements of
    // `size_of::<TorporRange>()` bytes; the comparator reads only those elements; the
    // default swap (NULL) swaps raw bytes, which is fine for a plain-integer type.
    unsafe {
        sort(
            v.as_mut_ptr().cast(),
            v.len(),
            core::mem::size_of::<TorporRange>(),
            Some(cmp_range_start),
            None,
        )
    };
}

fn now_ns() -> u64 {
    // SAFETY: ktime_get has no preconditions (callable from any context after timekeeping init).
    unsafe { bindings::ktime_get() as u64 }
}

fn fatal_signal() -> bool {
    // SAFETY: reads `current`'s pending signals; always valid in process context (ioctl).
    unsafe { torpor_fatal_signal_pending() }
}

/// A reference on a target process's address space (`mm_users`, counted in
/// [`crate::refs`]), taken by pid in the caller's pid namespace; dropping it calls `mmput`.
pub(crate) struct TargetMm {
    mm: MmRef,
}

impl TargetMm {
    /// Resolve `pid`: ESRCH for no such process or one with no mm left
    /// (zombie, exiting), EINVAL for pid <= 0 or a kernel thread.
    pub(crate) fn get(pid: i32) -> Result<Self> {
        Ok(Self { mm: MmRef::of_pid(pid)? })
    }

    fn ptr(&self) -> *mut bindings::mm_struct {
        self.mm.as_ptr()
    }

    fn lock(&self) -> Result<MmapReadGuard<'_>> {
        // SAFETY: `self.ptr()` is kept alive by our mm_users reference.
        if unsafe { torpor_mmap_read_lock_killable(self.ptr().cast()) } != 0 {
            return Err(EINTR);
        }
        Ok(MmapReadGuard { mm: self })
    }
}

/// mmap_read_lock held on a [`TargetMm`]; released on drop. Guards borrow the `TargetMm`, so
/// the mm reference (whose release may sleep) always outlives the lock hold.
struct MmapReadGuard<'a> {
    mm: &'a TargetMm,
}

impl MmapReadGuard<'_> {
    /// One GUP call on up to `nr` pages from `addr`, no page references taken (pages ==
    /// NULL). Returns how many leading pages it handled (at most `nr`), or a negative errno.
    fn gup(&self, addr: u64, nr: u64, flags: u32) -> c_long {
        // `nr` is at most PAGES_PER_LOCK (the callers' batch), so it fits any integer type.
        let nr = core::cmp::min(nr, PAGES_PER_LOCK);
        // SAFETY: the mmap read lock is held (this guard exists) and `locked` is NULL, so GUP
        // never drops it; `pages` is NULL so no page references are taken (PAGE_REFS stays
        // 0); the flags are public FOLL_* flags only (FOLL_NOFAULT, FOLL_DUMP), which
        // is_valid_gup_args accepts; GUP checks `addr` itself (any value is refused or
        // handled), and `nr` is small and nonzero-checked by GUP.
        unsafe {
            bindings::get_user_pages_remote(
                self.mm.ptr(),
                addr as _,
                nr as _,
                flags,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
            )
        }
    }

    /// The first VMA that ends above `addr`, as (start, end, flags, anonymous). `start < end`
    /// always holds for a VMA in the tree.
    fn vma_from(&self, addr: u64) -> Option<(u64, u64, u64, bool)> {
        // SAFETY: the mmap read lock is held, as find_vma requires; the VMA it returns stays
        // valid while the lock is held and we only read plain fields of it.
        unsafe {
            let vma = bindings::find_vma(self.mm.ptr(), addr as _);
            if vma.is_null() {
                return None;
            }
            let start = (*vma).__bindgen_anon_1.__bindgen_anon_1.vm_start as u64;
            let end = (*vma).__bindgen_anon_1.__bindgen_anon_1.vm_end as u64;
            let flags = (*vma).__bindgen_anon_2.vm_flags as u64;
            let anon = (*vma).vm_ops.is_null();
            Some((start, end, flags, anon))
        }
    }

    /// Zap `[start, end)`, which must lie inside one VMA found under this lock.
    fn zap(&self, start: u64, end: u64) {
        let len = end.saturating_sub(start);
        if len == 0 {
            return;
        }
        // SAFETY: mmap read lock held; the caller found [start, end) inside a single VMA under
        // this same lock hold (zap_page_range_single's requirement), as MADV_DONTNEED does.
        unsafe {
            let vma = bindings::find_vma(self.mm.ptr(), start as _);
            if !vma.is_null() {
                bindings::zap_page_range_single(vma, start as _, len as _, core::ptr::null_mut());
            }
        }
    }
}

impl Drop for MmapReadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard was created by a successful lock on this mm.
        unsafe { torpor_mmap_read_unlock(self.mm.ptr().cast()) };
    }
}

/// VMAs PREFETCH_WHOLE walks and DISCARD touches: private anonymous memory only.
fn plain_private_anon(flags: u64, anon: bool) -> bool {
    let bad = (bindings::VM_SHARED
        | bindings::VM_IO
        | bindings::VM_PFNMAP
        | bindings::VM_HUGETLB
        | bindings::VM_LOCKED
        | bindings::VM_MIXEDMAP) as u64;
    anon && flags & bad == 0
}

/// Page counts of one PREFETCH call. Each is at most the number of pages the call walked,
/// itself bounded by the 2^52 pages of a 64-bit address space per range, summed over at most
/// 2^24 ranges: the additions saturate rather than prove that sum fits.
#[derive(Default)]
struct PrefetchStats {
    mapped: u64,
    present: u64,
    unpopulated: u64,
    failed: u64,
}

/// Validate and page-align a user range: `[start & PAGE_MASK, roundup(start + len))`.
/// EINVAL when `start + len` (rounded up) does not fit in 64 bits: such a range wraps.
fn align(r: &TorporRange) -> Result<(u64, u64)> {
    let end = r.start.checked_add(r.len).ok_or(EINVAL)?;
    let end = end.checked_add(PAGE_SIZE - 1).ok_or(EINVAL)? & PAGE_MASK;
    Ok((r.start & PAGE_MASK, end))
}

fn errno(e: Error) -> c_long {
    e.to_errno() as c_long
}

/// `addr + pages * PAGE_SIZE`, saturating (GUP never reports more pages than asked, and the
/// callers ask for pages below `end`, so the true value is below `end` anyway).
fn advance(addr: u64, pages: u64) -> u64 {
    addr.saturating_add(pages.saturating_mul(PAGE_SIZE))
}

/// Pages the byte budget still allows (`None`: no budget), from the pages mapped so far.
fn budget_left(budget: u64, mapped: u64) -> Option<u64> {
    if budget == 0 {
        None
    } else {
        Some(budget.saturating_sub(mapped.saturating_mul(PAGE_SIZE)) / PAGE_SIZE)
    }
}

/// Fault in and map the pages of `[start, end)` that exist (swapped or already
/// present), in runs (one GUP call per run of present, or of faulted, pages),
/// skipping addresses no VMA covers. Returns `Some(addr)`
/// if the byte budget stopped it at `addr`.
fn prefetch_range(t: &TargetMm, start: u64, end: u64, budget: u64, st: &mut PrefetchStats) -> Result<Option<u64>> {
    let mut addr = start;
    while addr < end {
        if fatal_signal() {
            return Err(EINTR);
        }
        let g = t.lock()?;
        let Some((vs, ve, _, _)) = g.vma_from(addr) else { return Ok(None) };
        if vs >= end {
            return Ok(None);
        }
        addr = core::cmp::max(addr, vs);
        let batch_end = core::cmp::min(core::cmp::min(end, ve), advance(addr, PAGES_PER_LOCK));
        while addr < batch_end {
            // `addr < batch_end` (loop condition): no underflow; at most PAGES_PER_LOCK pages.
            let mut n = batch_end.saturating_sub(addr) / PAGE_SIZE;
            if let Some(left) = budget_left(budget, st.mapped) {
                if left == 0 {
                    return Ok(Some(addr));
                }
                n = core::cmp::min(n, left);
            }
            if n == 0 {
                // `batch_end - addr` below one page cannot happen (both page-aligned); stop
                // rather than spin if it ever did.
                break;
            }
            // The run of pages already present: FOLL_NOFAULT never faults, it stops at the
            // first page that is not mapped.
            let r = g.gup(addr, n, bindings::FOLL_NOFAULT | bindings::FOLL_DUMP);
            if r > 0 {
                let r = core::cmp::min(r as u64, n);
                st.present = st.present.saturating_add(r);
                addr = advance(addr, r);
                continue;
            }
            // `addr` is not present: fault in the run starting there, for read. FOLL_DUMP
            // makes a hole (pte_none or no page table in an anonymous VMA) fail with -EFAULT
            // instead of mapping the zero page, so only pages that exist (swapped, or
            // file-backed) are brought in; the run stops at the first hole.
            match g.gup(addr, n, bindings::FOLL_DUMP) {
                r if r > 0 => {
                    let r = core::cmp::min(r as u64, n);
                    st.mapped = st.mapped.saturating_add(r);
                    addr = advance(addr, r);
                }
                r if r == errno(EFAULT) => {
                    st.unpopulated = st.unpopulated.saturating_add(1);
                    addr = advance(addr, 1);
                }
                r if r == errno(EINTR) || r == NEG_ERESTARTSYS => return Err(EINTR),
                r if r == errno(ENOMEM) => return Err(ENOMEM),
                _ => {
                    st.failed = st.failed.saturating_add(1);
                    addr = advance(addr, 1);
                }
            }
        }
        drop(g);
    }
    Ok(None)
}

/// PREFETCH_WHOLE: every private anonymous VMA, in address order.
fn prefetch_whole(t: &TargetMm, budget: u64, st: &mut PrefetchStats) -> Result<Option<u64>> {
    let mut addr = 0u64;
    loop {
        let vma = {
            let g = t.lock()?;
            g.vma_from(addr)
        };
        let Some((start, end, flags, anon)) = vma else { return Ok(None) };
        let start = core::cmp::max(start, addr);
        if plain_private_anon(flags, anon) {
            if let Some(stop) = prefetch_range(t, start, end, budget, st)? {
                return Ok(Some(stop));
            }
        }
        // The VMA may have changed while unlocked; continue from its old end either way
        // (`end > addr`: find_vma returns a VMA ending above `addr`, so this always advances).
        addr = end;
    }
}

/// Bytes of `nr` user ranges: at most MAX_RANGES (2^24) × 16 = 2^28, checked anyway.
fn ranges_bytes(nr: u32) -> Result<usize> {
    (nr as usize).checked_mul(core::mem::size_of::<TorporRange>()).ok_or(EINVAL)
}

/// The ranges of an ORDER_ADDRESS request (at most MAX_SORTED_RANGES × 16 B = 1 MiB), in a
/// kvmalloc buffer: a fragmented machine falls back to vmalloc instead of failing (and
/// logging) a high-order allocation.
fn read_ranges(reader: &mut UserSliceReader, n: u32) -> Result<KVVec<TorporRange>> {
    let mut v = KVVec::with_capacity(n as usize, GFP_KERNEL)?;
    for _ in 0..n {
        v.push(reader.read::<TorporRange>()?, GFP_KERNEL)?;
    }
    Ok(v)
}

/// PREFETCH the given ranges, in the order the iterator yields them, until one stops
/// (budget, error).
fn prefetch_ranges(
    t: &TargetMm,
    ranges: impl Iterator<Item = Result<TorporRange>>,
    budget: u64,
    st: &mut PrefetchStats,
) -> Result<Option<u64>> {
    for range in ranges {
        let (s, e) = align(&range?)?;
        if let Some(stop) = prefetch_range(t, s, e, budget, st)? {
            return Ok(Some(stop));
        }
    }
    Ok(None)
}

pub(crate) fn prefetch(arg: usize) -> Result<c_long> {
    let size = core::mem::size_of::<uapi::TorporPrefetch>();
    let (mut r, mut w) = UserSlice::new(arg, size).reader_writer();
    let mut req: uapi::TorporPrefetch = r.read()?;
    if req.flags & !uapi::PREFETCH_FLAGS_ALL != 0 || !matches!(req.order, uapi::ORDER_GIVEN | uapi::ORDER_ADDRESS) {
        return Err(EINVAL);
    }
    let whole = req.flags & uapi::PREFETCH_WHOLE != 0;
    if !whole && req.nr_ranges > uapi::MAX_RANGES {
        return Err(EINVAL);
    }
    if !whole && req.order == uapi::ORDER_ADDRESS && req.nr_ranges > uapi::MAX_SORTED_RANGES {
        return Err(E2BIG);
    }
    let t = TargetMm::get(req.pid)?;
    let t0 = now_ns();
    let mut st = PrefetchStats::default();
    let res = if whole {
        prefetch_whole(&t, req.byte_budget, &mut st)
    } else {
        let mut rr = UserSlice::new(req.ranges as usize, ranges_bytes(req.nr_ranges)?).reader();
        if req.order == uapi::ORDER_ADDRESS {
            match read_ranges(&mut rr, req.nr_ranges) {
                Ok(mut v) => {
                    sort_ranges_by_start(&mut v);
                    prefetch_ranges(&t, v.iter().map(|r| Ok(*r)), req.byte_budget, &mut st)
                }
                Err(e) => Err(e),
            }
        } else {
            let ranges = (0..req.nr_ranges).map(|_| rr.read::<TorporRange>());
            prefetch_ranges(&t, ranges, req.byte_budget, &mut st)
        }
    };
    drop(t);
    req.pages_mapped = st.mapped;
    req.pages_present = st.present;
    req.pages_unpopulated = st.unpopulated;
    req.pages_failed = st.failed;
    req.ns = now_ns().saturating_sub(t0);
    req.stop_addr = match res {
        Ok(Some(a)) => a,
        _ => 0,
    };
    // Stats are written back even when the walk was interrupted, so the caller sees
    // how far it got; the return value carries the error.
    w.write(&req)?;
    res.map(|_| 0)
}

/// Byte counts of one DISCARD call. Each range adds at most its own length (< 2^64) and
/// there are up to 2^24 ranges, so the sums can exceed 2^64 (hostile overlapping ranges):
/// they saturate. (An unchecked `+=` here panicked the kernel: the bug this file was audited
/// for.)
#[derive(Default)]
struct DiscardStats {
    zapped: u64,
    skipped: u64,
}

impl DiscardStats {
    fn skip(&mut self, from: u64, to: u64) {
        self.skipped = self.skipped.saturating_add(to.saturating_sub(from));
    }

    fn zap(&mut self, from: u64, to: u64) {
        self.zapped = self.zapped.saturating_add(to.saturating_sub(from));
    }
}

/// Zap the private anonymous parts of `[addr, end)`, one VMA per lock hold.
fn discard_range(t: &TargetMm, mut addr: u64, end: u64, st: &mut DiscardStats) -> Result {
    while addr < end {
        if fatal_signal() {
            return Err(EINTR);
        }
        let g = t.lock()?;
        let Some((vs, ve, flags, anon)) = g.vma_from(addr) else {
            st.skip(addr, end);
            return Ok(());
        };
        if vs >= end {
            st.skip(addr, end);
            return Ok(());
        }
        if vs > addr {
            st.skip(addr, vs);
            addr = vs;
        }
        // `ve > addr` (find_vma: the VMA ends above the address asked), so this advances.
        let e = core::cmp::min(end, ve);
        if plain_private_anon(flags, anon) {
            g.zap(addr, e);
            st.zap(addr, e);
        } else {
            st.skip(addr, e);
        }
        addr = e;
    }
    Ok(())
}

pub(crate) fn discard(arg: usize) -> Result<c_long> {
    let size = core::mem::size_of::<uapi::TorporDiscard>();
    let (mut r, mut w) = UserSlice::new(arg, size).reader_writer();
    let mut req: uapi::TorporDiscard = r.read()?;
    if req.flags != 0 || req.reserved != 0 || req.nr_ranges > uapi::MAX_RANGES {
        return Err(EINVAL);
    }
    let t = TargetMm::get(req.pid)?;
    let t0 = now_ns();
    let mut rr = UserSlice::new(req.ranges as usize, ranges_bytes(req.nr_ranges)?).reader();
    let mut st = DiscardStats::default();
    let mut res = Ok(());
    for _ in 0..req.nr_ranges {
        res = rr.read::<TorporRange>().and_then(|range| align(&range)).and_then(|(s, e)| discard_range(&t, s, e, &mut st));
        if res.is_err() {
            break;
        }
    }
    drop(t);
    req.bytes_zapped = st.zapped;
    req.bytes_skipped = st.skipped;
    req.ns = now_ns().saturating_sub(t0);
    w.write(&req)?;
    res.map(|()| 0)
}
