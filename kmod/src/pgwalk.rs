// SPDX-License-Identifier: GPL-2.0
//! The kernel-structure reading behind the guest maps: page-flag
//! classification of a PFN (FREE_BITMAP's buddy test, PRIORITY_MAP pass 1),
//! the active-process scan (pass 2) and the read-only page-table walk of one
//! PMD. The C shim only wraps static inlines and macros bindgen cannot give
//! us (`pfn_valid`+`pfn_to_page`, `page_folio`, `rcu_read_lock`, the
//! `next_task`/`for_each_thread` steps, the `pXd_offset`/`pXd_none`/... page
//! table accessors); every decision is made here.

use core::ptr::{addr_of, addr_of_mut, read_volatile};
use kernel::bindings;
use kernel::ffi::{c_long, c_ulong, c_void};
use kernel::prelude::*;

pub(crate) use crate::refs::MmRef;

// Pointers to kernel structs go through the shim as `void *`: several bindgen types hold
// zero-sized lockdep fields that rustc calls not FFI-safe (see mm.rs).
extern "C" {
    fn torpor_pfn_to_page(pfn: c_ulong) -> *mut c_void;
    fn torpor_page_folio(page: *mut c_void) -> *mut c_void;
    fn torpor_rcu_read_lock();
    fn torpor_rcu_read_unlock();
    fn torpor_next_process(p: *mut c_void) -> *mut c_void;
    fn torpor_next_thread(p: *mut c_void, t: *mut c_void) -> *mut c_void;
    fn torpor_pgd_offset(mm: *mut c_void, addr: c_ulong) -> *mut c_void;
    fn torpor_p4d_offset(pgd: *mut c_void, addr: c_ulong) -> *mut c_void;
    fn torpor_pud_offset(p4d: *mut c_void, addr: c_ulong) -> *mut c_void;
    fn torpor_pmd_get_lockless(pud: *mut c_void, addr: c_ulong) -> bindings::pmdval_t;
    fn torpor_pmd_none_or_absent(v: bindings::pmdval_t) -> bool;
    fn torpor_pmd_leaf(v: bindings::pmdval_t) -> bool;
    fn torpor_pmd_bad(v: bindings::pmdval_t) -> bool;
    fn torpor_pmd_pfn(v: bindings::pmdval_t) -> c_ulong;
    fn torpor_pte_offset(v: bindings::pmdval_t, addr: c_ulong) -> *mut c_void;
    fn torpor_pte_pfn(pte: *mut c_void) -> c_long;
    // kernel/sched/clock.c, exported (EXPORT_SYMBOL_GPL); sched/clock.h is not in the 6.12
    // bindings. The runqueue clock that exec_start and last_arrival are taken from.
    fn local_clock() -> u64;
}

// Page-flag summary bits of one PFN (internal; `guest::classify` maps them to categories).
pub(crate) const PF_VALID: u32 = 1 << 0;
pub(crate) const PF_BUDDY: u32 = 1 << 1;
pub(crate) const PF_RESERVED: u32 = 1 << 2;
pub(crate) const PF_SLAB: u32 = 1 << 3;
pub(crate) const PF_PGTABLE: u32 = 1 << 4;
pub(crate) const PF_WRITEBACK: u32 = 1 << 5;
pub(crate) const PF_LRU: u32 = 1 << 6;
pub(crate) const PF_ACTIVE: u32 = 1 << 7;
pub(crate) const PF_ANON: u32 = 1 << 8;
pub(crate) const PF_FILE: u32 = 1 << 9;
pub(crate) const PF_LOCKED: u32 = 1 << 10;
pub(crate) const PF_UPTODATE: u32 = 1 << 11;
pub(crate) const PF_HEAD: u32 = 1 << 12;
/// Bits 24.. hold a free buddy block's order, or a large folio's order on its head page.
pub(crate) const PF_ORDER_SHIFT: u32 = 24;
/// Largest folio order reported (clamped: the value is read racily).
const MAX_FOLIO_ORDER: u32 = 20;

/// PTEs per page-table page (x86-64).
pub(crate) const PTRS_PER_PTE: usize = bindings::PTRS_PER_PTE as usize;
const PAGE_SIZE: u64 = bindings::PAGE_SIZE as u64;
const PAGE_SHIFT: u32 = bindings::PAGE_SHIFT;
// Sizes of the ranges one entry maps at each level (x86-64: 512 GiB, 1 GiB, 2 MiB); shifts
// of constants, checked at compile time.
const P4D_SIZE: u64 = 1 << bindings::P4D_SHIFT;
const PUD_SIZE: u64 = 1 << bindings::PUD_SHIFT;
const PMD_SIZE: u64 = 1 << bindings::PMD_SHIFT;
const PMD_OFFSET_MASK: u64 = PMD_SIZE - 1;

type Page = bindings::page;

/// The struct page of `pfn`, or `None` when it has none (a hole in the memory map).
fn pfn_page(pfn: u64) -> Option<*const Page> {
    // SAFETY: any pfn may be passed: the shim checks pfn_valid (mem_section) before
    // pfn_to_page, and only computes an address.
    let p = unsafe { torpor_pfn_to_page(pfn as c_ulong) };
    if p.is_null() {
        None
    } else {
        Some(p.cast_const().cast())
    }
}

// Racy reads of struct page words, the way /proc/kpageflags (fs/proc/page.c) reads them
// (READ_ONCE / data_race): the page may be allocated, freed, split or merged meanwhile, so a
// value may be stale or torn between words, never a fault: struct pages of a valid PFN live
// in the vmemmap for the life of the kernel (no memory hotplug in our guest kernel).

/// # Safety
/// `p` points to the struct page of a valid PFN (the same holds for the three readers below).
unsafe fn page_flags(p: *const Page) -> c_ulong {
    // SAFETY: `p` is a valid struct page (caller); volatile = READ_ONCE of one aligned word.
    unsafe { read_volatile(addr_of!((*p).flags)) }
}

/// # Safety
/// As [`page_flags`].
unsafe fn page_type(p: *const Page) -> u32 {
    // SAFETY: as in `page_flags`; `page_type` shares its word with `_mapcount` (a union of
    // plain integers), read racily like PageBuddy()'s data_race().
    unsafe { read_volatile(addr_of!((*p).__bindgen_anon_2.page_type)) }
}

/// # Safety
/// As [`page_flags`].
unsafe fn page_private(p: *const Page) -> c_ulong {
    // SAFETY: as in `page_flags`; the union member is a plain integer in every variant.
    unsafe { read_volatile(addr_of!((*p).__bindgen_anon_1.__bindgen_anon_1.private)) }
}

/// # Safety
/// As [`page_flags`].
unsafe fn page_mapping(p: *const Page) -> usize {
    // SAFETY: as in `page_flags`; read as a value (low bits are PAGE_MAPPING_* flags), never
    // dereferenced.
    unsafe { read_volatile(addr_of!((*p).__bindgen_anon_1.__bindgen_anon_1.mapping)) as usize }
}

/// # Safety
/// As [`page_flags`].
unsafe fn page_compound_head(p: *const Page) -> c_ulong {
    // SAFETY: as in `page_flags`; the union member is a plain integer in every variant.
    unsafe { read_volatile(addr_of!((*p).__bindgen_anon_1.__bindgen_anon_3.compound_head)) }
}

/// `Page##uname()` of page-flags.h: the page-type byte of `page_type`.
fn has_type(page_type: u32, ty: bindings::pagetype) -> bool {
    // Constant shift amount (24 < 32): cannot panic.
    page_type >> 24 == ty
}

fn bit(word: c_ulong, flag: bindings::pageflags) -> bool {
    // Page-flag numbers are below BITS_PER_LONG (the kernel's own build asserts it).
    (word >> (flag % c_ulong::BITS)) & 1 != 0
}

/// Buddy order of the free block that `pfn` heads, or `None` when `pfn` has no struct page
/// or is not the head of a free buddy block (FREE_BITMAP: the caller holds the zone lock, so
/// the order is stable; it is clamped anyway).
pub(crate) fn buddy_order(pfn: u64) -> Option<u32> {
    let page = pfn_page(pfn)?;
    // SAFETY: `page` is the struct page of a valid PFN.
    unsafe {
        if !has_type(page_type(page), bindings::pagetype_PGTY_buddy) {
            return None;
        }
        Some(core::cmp::min(page_private(page), bindings::MAX_PAGE_ORDER as c_ulong) as u32)
    }
}

/// The `PF_*` bits of `pfn` that decide its category (0 when it has no struct page). For a
/// free buddy head, bits 24.. hold its order (clamped to MAX_PAGE_ORDER); for the head page of
/// a large folio (`PF_HEAD`) they hold the folio's order (clamped to 20), so the caller can
/// classify the whole folio at once. Folio-level flags come from the head page's flags word
/// with plain bit tests, so no VM_BUG_ON_PGFLAGS-style check can fire on a page that is being
/// split or freed meanwhile.
pub(crate) fn pfn_flags(pfn: u64) -> u32 {
    let Some(page) = pfn_page(pfn) else {
        return 0;
    };
    let mut f = PF_VALID;
    // SAFETY: `page` is the struct page of a valid PFN; `page_folio` returns its head page
    // (a struct page of the same compound allocation, or `page` itself), equally valid; the
    // head's successor is read only when the head's flags say PG_head (a compound page of
    // order >= 1, so `head + 1` is the struct page of the next, aligned PFN in the same
    // memory section). All reads are racy single words (see above).
    unsafe {
        let pt = page_type(page);
        if has_type(pt, bindings::pagetype_PGTY_buddy) {
            let order = core::cmp::min(page_private(page), bindings::MAX_PAGE_ORDER as c_ulong) as u32;
            // order <= MAX_PAGE_ORDER (10) < 2^8: the shifted value fits the top byte (constant
            // shift amount 24 < 32: cannot panic).
            let bits = order << PF_ORDER_SHIFT;
            return f | PF_BUDDY | bits;
        }
        let pfl = page_flags(page);
        if bit(pfl, bindings::pageflags_PG_reserved) {
            f |= PF_RESERVED;
        }
        if has_type(pt, bindings::pagetype_PGTY_table) {
            f |= PF_PGTABLE;
        }
        // page_folio(): a page that is neither a head (PG_head) nor a tail (compound_head bit 0)
        // is its own folio, which is what _compound_head() answers for it too (a vmemmap "fake
        // head" has PG_head set); only compound pages go through the shim.
        let head: *const Page = if !bit(pfl, bindings::pageflags_PG_head) && page_compound_head(page) & 1 == 0 {
            page
        } else {
            torpor_page_folio(page.cast_mut().cast()).cast_const().cast()
        };
        let fl = if head == page { pfl } else { page_flags(head) };
        if has_type(page_type(head), bindings::pagetype_PGTY_slab) {
            f |= PF_SLAB;
        }
        if bit(fl, bindings::pageflags_PG_writeback) {
            f |= PF_WRITEBACK;
        }
        if bit(fl, bindings::pageflags_PG_lru) {
            f |= PF_LRU;
        }
        if bit(fl, bindings::pageflags_PG_active) {
            f |= PF_ACTIVE;
        }
        if bit(fl, bindings::pageflags_PG_locked) {
            f |= PF_LOCKED;
        }
        if bit(fl, bindings::pageflags_PG_uptodate) {
            f |= PF_UPTODATE;
        }
        if head == page && bit(fl, bindings::pageflags_PG_head) {
            // folio->_flags_1: the flags word of the first tail page; its low byte is the order.
            let order = core::cmp::min((page_flags(head.add(1)) & 0xff) as u32, MAX_FOLIO_ORDER);
            // order <= 20 < 2^8: the shifted value fits the top byte of the u32 (and the shift
            // amount is the constant 24 < 32, so it cannot panic).
            let bits = order << PF_ORDER_SHIFT;
            f |= PF_HEAD | bits;
        }
        let mapping = page_mapping(head);
        if mapping & bindings::PAGE_MAPPING_ANON as usize != 0 {
            f |= PF_ANON;
        } else if mapping != 0 && f & PF_SLAB == 0 {
            f |= PF_FILE;
        }
    }
    f
}

/// First capacity for the active-process scan, and how many times the scan is redone with a
/// larger buffer when more processes were active than it had room for.
const FIRST_CAPACITY: usize = 256;
const SCAN_ATTEMPTS: u32 = 4;

/// Whether any thread of `p` is on a CPU now or was scheduled at or after `cutoff` (runqueue
/// clock): the latest of `sched_info.last_arrival` (CONFIG_SCHED_INFO: when it last got a
/// CPU) and `se.exec_start` (advanced while it runs).
///
/// # Safety
/// The caller holds the RCU read lock and `p` is a task found under it.
unsafe fn any_thread_since(p: *mut bindings::task_struct, cutoff: u64) -> bool {
    let mut t: *mut c_void = core::ptr::null_mut();
    loop {
        // SAFETY: RCU read lock held (caller), `p` valid under it; `t` is null or the previous
        // thread returned for `p` under the same lock hold.
        t = unsafe { torpor_next_thread(p.cast(), t) };
        if t.is_null() {
            return false;
        }
        let tt: *mut bindings::task_struct = t.cast();
        // SAFETY: `tt` is a thread found under the RCU read lock, so its task_struct is not
        // freed before we unlock (delayed_put_task_struct is an RCU callback). The fields are
        // updated by the scheduler without our knowledge: racy READ_ONCE-style word reads.
        let (on_cpu, last) = unsafe {
            let last = read_volatile(addr_of!((*tt).se.exec_start));
            #[cfg(CONFIG_SCHED_INFO)]
            let last = core::cmp::max(last, read_volatile(addr_of!((*tt).sched_info.last_arrival)));
            (read_volatile(addr_of!((*tt).on_cpu)), last)
        };
        if on_cpu != 0 || last >= cutoff {
            return true;
        }
    }
}

/// One pass over every process under one RCU read-lock hold: an mm reference for each active
/// user process (at most `cap`), the number of user processes seen and of active ones.
fn scan_processes(cutoff: u64, cap: usize) -> Result<(KVVec<MmRef>, u32, usize)> {
    let mut mms = KVVec::<MmRef>::with_capacity(cap, GFP_KERNEL)?;
    // Counts of tasks on the task list: bounded by pid_max (at most 2^22), so they fit; the
    // additions saturate all the same.
    let (mut seen, mut active) = (0u32, 0usize);
    // SAFETY: no lock held here; paired with the unlock below, with nothing in between that
    // sleeps (get_task_mm takes task_lock, a spinlock; pushes stay within capacity).
    unsafe { torpor_rcu_read_lock() };
    // `init_task` is the static head of the task list; only its address is taken.
    let mut p: *mut c_void = addr_of_mut!(bindings::init_task).cast();
    loop {
        // SAFETY: RCU read lock held; `p` is init_task or the previous task of this walk.
        p = unsafe { torpor_next_process(p) };
        if p.is_null() {
            break;
        }
        let pt: *mut bindings::task_struct = p.cast();
        // SAFETY: a task found under the RCU read lock stays allocated until we unlock;
        // `flags` is a plain word (PF_KTHREAD is set at creation and never cleared).
        if unsafe { read_volatile(addr_of!((*pt).flags)) } & bindings::PF_KTHREAD != 0 {
            continue;
        }
        seen = seen.saturating_add(1);
        // SAFETY: RCU read lock held, `pt` found under it.
        if !unsafe { any_thread_since(pt, cutoff) } {
            continue;
        }
        active = active.saturating_add(1);
        if mms.len() >= mms.capacity() {
            continue;
        }
        // SAFETY: `pt` is valid under the RCU read lock; get_task_mm takes task_lock (a
        // spinlock, allowed under RCU) and returns a counted reference or NULL.
        let mm = unsafe { bindings::get_task_mm(pt) };
        // SAFETY: `mm` is NULL or the reference get_task_mm just gave us, handed over.
        if let Some(m) = unsafe { MmRef::from_counted(mm) } {
            // There is room (checked above), so push does not allocate and cannot fail (a
            // failure would drop the MmRef, i.e. mmput, which may sleep, under RCU).
            let _ = mms.push(m, GFP_NOWAIT);
        }
    }
    // SAFETY: pairs with the lock above.
    unsafe { torpor_rcu_read_unlock() };
    Ok((mms, seen, active))
}

/// An `mm_users` reference to every user process scheduled within `window_ns`, taken in one
/// consistent pass over the task list (so no process is counted twice or skipped because the
/// list changed between batches), and the number of user processes seen. If more processes
/// were active than the buffer had room for, the pass is redone with room for all of them
/// plus a quarter; after `SCAN_ATTEMPTS` passes the last one's references are used as they are.
pub(crate) fn active_mms(window_ns: u64) -> Result<(KVVec<MmRef>, u32)> {
    let mut cap = FIRST_CAPACITY;
    let mut attempt = 1;
    loop {
        // SAFETY: local_clock has no preconditions (it disables preemption itself).
        let now = unsafe { local_clock() };
        let cutoff = now.saturating_sub(window_ns);
        let (mms, seen, active) = scan_processes(cutoff, cap)?;
        if active <= mms.capacity() || attempt >= SCAN_ATTEMPTS {
            return Ok((mms, seen));
        }
        // Released here, outside the RCU read lock.
        drop(mms);
        cap = active.saturating_add(active / 4).saturating_add(64);
        attempt = attempt.saturating_add(1);
    }
}

/// `pXd_addr_end`: the next `size`-aligned boundary after `addr`, or `end` if that comes first.
/// Wrapping on purpose, as the kernel's macro: at the top of the address space the boundary
/// wraps to 0 and the `- 1` comparisons make `end` win. `size` is a power of two.
fn addr_end(addr: u64, end: u64, size: u64) -> u64 {
    let boundary = (addr.wrapping_add(size)) & !size.wrapping_sub(1);
    if boundary.wrapping_sub(1) < end.wrapping_sub(1) {
        boundary
    } else {
        end
    }
}

/// The PFNs of the present pages mapped in `[addr, end)` of `mm` (which lies inside one VMA),
/// up to the end of the PMD holding `addr`, stored in `pfns`; returns how many, and the address
/// to continue from (the next PMD, or the end of an empty upper level). Read-only: the part of
/// `__pte_offset_map()` (not exported) that reads: the PTE table is read under the RCU read
/// lock, which holds off pte_free_defer() after a THP collapse, from a lockless PMD snapshot;
/// no page-table lock, so a value may be stale (a snapshot). Nothing is written.
///
/// # Safety
/// The caller holds `mm`'s mmap read lock (so the upper page-table levels under a VMA cannot
/// be freed), `mm` is kept alive by a reference, and `[addr, end)` lies inside one VMA.
pub(crate) unsafe fn scan_pmd(
    mm: *mut bindings::mm_struct,
    mut addr: u64,
    end: u64,
    pfns: &mut [c_ulong; PTRS_PER_PTE],
) -> (usize, u64) {
    // SAFETY: `pgdir_shift` is set once at boot (4- or 5-level paging) and exported.
    let shift = unsafe { read_volatile(addr_of!(bindings::pgdir_shift)) };
    // 39 or 48 in practice; a shift of 64 or more (impossible) would give 0: no skipping.
    let pgdir_size = 1u64.checked_shl(shift as u32).unwrap_or(0);
    let a = addr as c_ulong;
    // The three upper levels: the mmap read lock is held and `addr` is inside a VMA (caller);
    // each shim returns a pointer into a live page-table page, or NULL when the entry is empty
    // or bad, in which case we skip to the end of that level's range.
    // SAFETY: see above; `mm` is alive (caller's reference).
    let pgd = unsafe { torpor_pgd_offset(mm.cast(), a) };
    if pgd.is_null() {
        return (0, if pgdir_size == 0 { end } else { addr_end(addr, end, pgdir_size) });
    }
    // SAFETY: see above; `pgd` is a present, good entry.
    let p4d = unsafe { torpor_p4d_offset(pgd, a) };
    if p4d.is_null() {
        return (0, addr_end(addr, end, P4D_SIZE));
    }
    // SAFETY: see above; `p4d` is a present, good entry.
    let pud = unsafe { torpor_pud_offset(p4d, a) };
    if pud.is_null() {
        return (0, addr_end(addr, end, PUD_SIZE));
    }
    let e_pmd = addr_end(addr, end, PMD_SIZE);
    let mut n: usize = 0;
    // SAFETY: paired with the unlock below; nothing in between sleeps.
    unsafe { torpor_rcu_read_lock() };
    // SAFETY: `pud` is a present, good, non-leaf entry under the mmap read lock, so the PMD
    // table it points to is live; the shim reads the PMD once (pmdp_get_lockless).
    let pmd = unsafe { torpor_pmd_get_lockless(pud, a) };
    // SAFETY: pure functions of the snapshot value; no memory is read.
    let (absent, leaf, bad) =
        unsafe { (torpor_pmd_none_or_absent(pmd), torpor_pmd_leaf(pmd), torpor_pmd_bad(pmd)) };
    if absent {
        // Empty, or a PMD migration entry.
    } else if leaf {
        // A huge PMD (THP): every page of it is mapped.
        // SAFETY: pure function of the snapshot value.
        let head = unsafe { torpor_pmd_pfn(pmd) } as u64;
        // A PFN of physical memory (< 2^52) plus an index below 512: saturating never bites.
        let mut pfn = head.saturating_add((addr & PMD_OFFSET_MASK) >> PAGE_SHIFT);
        // One slot per page of this PMD (`e_pmd - addr <= PMD_SIZE` = PTRS_PER_PTE pages).
        for slot in pfns.iter_mut() {
            if addr >= e_pmd {
                break;
            }
            *slot = pfn as c_ulong;
            n = n.saturating_add(1);
            pfn = pfn.saturating_add(1);
            addr = addr.saturating_add(PAGE_SIZE);
        }
    } else if !bad {
        // SAFETY: the snapshot points to a PTE table; the RCU read lock keeps it from being
        // freed (pte_free_defer) while we read it; pte_offset_kernel only computes an address.
        let mut pte = unsafe { torpor_pte_offset(pmd, a) };
        while addr < e_pmd {
            // SAFETY: `pte` stays inside the live PTE table (see above): `addr` stays inside this
            // PMD's range, one entry per page. One racy word read, as ptep_get's READ_ONCE.
            let raw = unsafe { read_volatile(pte.cast::<bindings::pte_t>()) }.pte;
            // An all-zero entry is pte_none, never present: skip it without a call (most
            // entries of a sparse table). Otherwise the shim decodes the entry (it reads it
            // again: either value is a valid snapshot).
            let pfn = if raw == 0 {
                -1
            } else {
                // SAFETY: as above: `pte` points into the live PTE table.
                unsafe { torpor_pte_pfn(pte) }
            };
            if pfn >= 0 {
                if let Some(slot) = pfns.get_mut(n) {
                    *slot = pfn as c_ulong;
                    n = n.saturating_add(1);
                }
            }
            // `addr < e_pmd`, a PMD boundary or `end` of a VMA: far below u64::MAX.
            addr = addr.saturating_add(PAGE_SIZE);
            // SAFETY: see above (at most one past the last entry read, never dereferenced).
            pte = unsafe { pte.cast::<bindings::pte_t>().add(1) }.cast();
        }
    }
    // SAFETY: pairs with the lock above.
    unsafe { torpor_rcu_read_unlock() };
    (n, e_pmd)
}
