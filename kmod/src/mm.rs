// SPDX-License-Identifier: GPL-2.0
//! Operations on another process's address space: PREFETCH (fault swapped
//! pages back in and map them, no data copied) and DISCARD (zap ranges).
//!
//! Everything here uses symbols a stock 6.12 kernel exports to modules:
//! `find_get_pid`, `get_pid_task`, `get_task_mm`, `mmput`,
//! `get_user_pages_remote`, `find_vma`, `zap_page_range_single`, `ktime_get`;
//! the mmap lock and `fatal_signal_pending` go through the C shim because
//! they are static inline.

use crate::uapi::{self, TorporRange};
use kernel::bindings;
use kernel::error::code::{E2BIG, EFAULT, EINTR, EINVAL, ENOMEM, ESRCH};
use kernel::ffi::{c_int, c_long, c_void};
use kernel::prelude::*;
use kernel::uaccess::{UserSlice, UserSliceReader};

const PAGE_SIZE: u64 = bindings::PAGE_SIZE as u64;
const PAGE_MASK: u64 = !(PAGE_SIZE - 1);
/// Pages handled per mmap-lock hold, so munmap/mremap/fork of the target and
/// fatal signals are not held off for long.
const PAGES_PER_LOCK: u64 = 256;
/// errnos that GUP returns for a pending (fatal) signal.
const ERESTARTSYS: c_long = 512;

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

/// A reference on a target process's address space (`mm_users`), taken by pid
/// in the caller's pid namespace. Dropping it calls `mmput`.
pub(crate) struct TargetMm {
    mm: *mut bindings::mm_struct,
}

impl TargetMm {
    /// Resolve `pid`: ESRCH for no such process or one with no mm left
    /// (zombie, exiting), EINVAL for pid <= 0 or a kernel thread.
    pub(crate) fn get(pid: i32) -> Result<Self> {
        if pid <= 0 {
            return Err(EINVAL);
        }
        // SAFETY: find_get_pid looks `pid` up in the caller's active pid namespace under RCU
        // and returns a counted reference or NULL.
        let p = unsafe { bindings::find_get_pid(pid) };
        if p.is_null() {
            return Err(ESRCH);
        }
        // SAFETY: `p` is a valid counted `struct pid`; get_pid_task returns a counted task or NULL.
        let task = unsafe { bindings::get_pid_task(p, bindings::pid_type_PIDTYPE_PID) };
        // SAFETY: we own one reference on `p`, released exactly once here.
        unsafe { bindings::put_pid(p) };
        if task.is_null() {
            return Err(ESRCH);
        }
        // SAFETY: `task` is a valid counted task_struct; `flags` is a plain word read racily
        // but PF_KTHREAD never changes after creation.
        let kthread = unsafe { (*task).flags } & bindings::PF_KTHREAD != 0;
        let mm = if kthread {
            core::ptr::null_mut()
        } else {
            // SAFETY: `task` is valid; get_task_mm takes task_lock and returns a counted mm or
            // NULL (no mm: exited, zombie).
            unsafe { bindings::get_task_mm(task) }
        };
        // SAFETY: we own the reference from get_pid_task, released exactly once here.
        unsafe { bindings::put_task_struct(task) };
        if kthread {
            return Err(EINVAL);
        }
        if mm.is_null() {
            return Err(ESRCH);
        }
        Ok(Self { mm })
    }

    fn lock(&self) -> Result<MmapReadGuard<'_>> {
        // SAFETY: `self.mm` is kept alive by our mm_users reference.
        if unsafe { torpor_mmap_read_lock_killable(self.mm.cast()) } != 0 {
            return Err(EINTR);
        }
        Ok(MmapReadGuard { mm: self })
    }
}

impl Drop for TargetMm {
    fn drop(&mut self) {
        // SAFETY: we own one mm_users reference from get_task_mm, released exactly once.
        // If the target exited meanwhile, this may run exit_mmap here, which is allowed
        // in process context with no locks held (none are: guards borrow `self`).
        unsafe { bindings::mmput(self.mm) };
    }
}

/// mmap_read_lock held on a [`TargetMm`]; released on drop.
struct MmapReadGuard<'a> {
    mm: &'a TargetMm,
}

impl MmapReadGuard<'_> {
    /// One GUP call on up to `nr` pages from `addr`, no page references taken (pages ==
    /// NULL). Returns how many leading pages it handled, or a negative errno if none.
    fn gup(&self, addr: u64, nr: u64, flags: u32) -> c_long {
        // SAFETY: the mmap read lock is held (this guard exists) and `locked` is NULL, so GUP
        // never drops it; `pages` is NULL so no references are taken; the flags are public
        // FOLL_* flags only (FOLL_NOFAULT, FOLL_DUMP), which is_valid_gup_args accepts.
        unsafe {
            bindings::get_user_pages_remote(
                self.mm.mm,
                addr as _,
                nr as _,
                flags,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
            )
        }
    }

    /// The first VMA that ends above `addr`, as (start, end, flags, anonymous).
    fn vma_from(&self, addr: u64) -> Option<(u64, u64, u64, bool)> {
        // SAFETY: the mmap read lock is held, as find_vma requires; the VMA it returns stays
        // valid while the lock is held and we only read plain fields of it.
        unsafe {
            let vma = bindings::find_vma(self.mm.mm, addr as _);
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
        // SAFETY: mmap read lock held; the caller found [start, end) inside a single VMA under
        // this same lock hold (zap_page_range_single's requirement), as MADV_DONTNEED does.
        unsafe {
            let vma = bindings::find_vma(self.mm.mm, start as _);
            if !vma.is_null() {
                bindings::zap_page_range_single(vma, start as _, (end - start) as _, core::ptr::null_mut());
            }
        }
    }
}

impl Drop for MmapReadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard was created by a successful lock on this mm.
        unsafe { torpor_mmap_read_unlock(self.mm.mm.cast()) };
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

#[derive(Default)]
struct PrefetchStats {
    mapped: u64,
    present: u64,
    unpopulated: u64,
    failed: u64,
}

/// Validate and page-align a user range: `[start & PAGE_MASK, roundup(start + len))`.
fn align(r: &TorporRange) -> Result<(u64, u64)> {
    let end = r.start.checked_add(r.len).ok_or(EINVAL)?;
    let end = end.checked_add(PAGE_SIZE - 1).ok_or(EINVAL)? & PAGE_MASK;
    Ok((r.start & PAGE_MASK, end))
}

fn errno(e: Error) -> c_long {
    e.to_errno() as c_long
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
        let batch_end = core::cmp::min(core::cmp::min(end, ve), addr.saturating_add(PAGES_PER_LOCK * PAGE_SIZE));
        while addr < batch_end {
            let mut n = (batch_end - addr) / PAGE_SIZE;
            if budget != 0 {
                let left = budget.saturating_sub(st.mapped * PAGE_SIZE) / PAGE_SIZE;
                if left == 0 {
                    return Ok(Some(addr));
                }
                n = core::cmp::min(n, left);
            }
            // The run of pages already present: FOLL_NOFAULT never faults, it stops at the
            // first page that is not mapped.
            let r = g.gup(addr, n, bindings::FOLL_NOFAULT | bindings::FOLL_DUMP);
            if r > 0 {
                st.present += r as u64;
                addr += r as u64 * PAGE_SIZE;
                continue;
            }
            // `addr` is not present: fault in the run starting there, for read. FOLL_DUMP
            // makes a hole (pte_none or no page table in an anonymous VMA) fail with -EFAULT
            // instead of mapping the zero page, so only pages that exist (swapped, or
            // file-backed) are brought in; the run stops at the first hole.
            match g.gup(addr, n, bindings::FOLL_DUMP) {
                r if r > 0 => {
                    st.mapped += r as u64;
                    addr += r as u64 * PAGE_SIZE;
                }
                r if r == errno(EFAULT) => {
                    st.unpopulated += 1;
                    addr += PAGE_SIZE;
                }
                r if r == errno(EINTR) || r == -ERESTARTSYS => return Err(EINTR),
                r if r == errno(ENOMEM) => return Err(ENOMEM),
                _ => {
                    st.failed += 1;
                    addr += PAGE_SIZE;
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
        // The VMA may have changed while unlocked; continue from its old end either way.
        addr = end;
    }
}

fn read_ranges(reader: &mut UserSliceReader, n: u32) -> Result<KVec<TorporRange>> {
    let mut v = KVec::with_capacity(n as usize, GFP_KERNEL)?;
    for _ in 0..n {
        v.push(reader.read::<TorporRange>()?, GFP_KERNEL)?;
    }
    Ok(v)
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
        let bytes = (req.nr_ranges as usize) * core::mem::size_of::<TorporRange>();
        let mut rr = UserSlice::new(req.ranges as usize, bytes).reader();
        if req.order == uapi::ORDER_ADDRESS {
            let mut v = read_ranges(&mut rr, req.nr_ranges)?;
            sort_ranges_by_start(&mut v);
            let mut out = Ok(None);
            for range in v.iter() {
                let (s, e) = align(range)?;
                out = prefetch_range(&t, s, e, req.byte_budget, &mut st);
                if !matches!(out, Ok(None)) {
                    break;
                }
            }
            out
        } else {
            let mut out = Ok(None);
            for _ in 0..req.nr_ranges {
                let range: TorporRange = rr.read()?;
                let (s, e) = align(&range)?;
                out = prefetch_range(&t, s, e, req.byte_budget, &mut st);
                if !matches!(out, Ok(None)) {
                    break;
                }
            }
            out
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

pub(crate) fn discard(arg: usize) -> Result<c_long> {
    let size = core::mem::size_of::<uapi::TorporDiscard>();
    let (mut r, mut w) = UserSlice::new(arg, size).reader_writer();
    let mut req: uapi::TorporDiscard = r.read()?;
    if req.flags != 0 || req.reserved != 0 || req.nr_ranges > uapi::MAX_RANGES {
        return Err(EINVAL);
    }
    let t = TargetMm::get(req.pid)?;
    let t0 = now_ns();
    let bytes = (req.nr_ranges as usize) * core::mem::size_of::<TorporRange>();
    let mut rr = UserSlice::new(req.ranges as usize, bytes).reader();
    let (mut zapped, mut skipped) = (0u64, 0u64);
    let mut res = Ok(());
    'ranges: for _ in 0..req.nr_ranges {
        let range: TorporRange = match rr.read() {
            Ok(v) => v,
            Err(e) => {
                res = Err(e);
                break;
            }
        };
        let (mut addr, end) = match align(&range) {
            Ok(v) => v,
            Err(e) => {
                res = Err(e);
                break;
            }
        };
        while addr < end {
            if fatal_signal() {
                res = Err(EINTR);
                break 'ranges;
            }
            let g = match t.lock() {
                Ok(g) => g,
                Err(e) => {
                    res = Err(e);
                    break 'ranges;
                }
            };
            match g.vma_from(addr) {
                None => {
                    skipped += end - addr;
                    break;
                }
                Some((vs, ve, flags, anon)) => {
                    if vs >= end {
                        skipped += end - addr;
                        break;
                    }
                    if vs > addr {
                        skipped += vs - addr;
                        addr = vs;
                    }
                    let e = core::cmp::min(end, ve);
                    if plain_private_anon(flags, anon) {
                        g.zap(addr, e);
                        zapped += e - addr;
                    } else {
                        skipped += e - addr;
                    }
                    addr = e;
                }
            }
        }
    }
    drop(t);
    req.bytes_zapped = zapped;
    req.bytes_skipped = skipped;
    req.ns = now_ns().saturating_sub(t0);
    w.write(&req)?;
    res.map(|_| 0)
}
