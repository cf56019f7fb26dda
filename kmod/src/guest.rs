// SPDX-License-Identifier: GPL-2.0
//! Guest-side maps. FREE_BITMAP: one bit per page frame, set for every page of
//! every free buddy block (head and the rest of the block), read under each
//! zone's lock chunk by chunk. PRIORITY_MAP: one byte per page frame, the
//! page's category (enlightened post-copy's order, lowest value wins): a page-flag pass over
//! every PFN, then a page-table walk of every process scheduled within the
//! activity window (User_Code / User_Data). PFN bounds come from the exported
//! node data (`contig_page_data`: node_start_pfn + node_spanned_pages) and
//! `pfn_valid` (mem_section), never from `max_pfn` (not exported).

use crate::pgwalk::{self, MmRef, PF_ACTIVE, PF_ANON, PF_BUDDY, PF_FILE, PF_HEAD, PF_LOCKED, PF_LRU, PF_ORDER_SHIFT, PF_PGTABLE, PF_RESERVED, PF_SLAB, PF_UPTODATE, PF_VALID, PF_WRITEBACK, PTRS_PER_PTE};
use crate::uapi;
use kernel::bindings;
use kernel::error::code::{EFAULT, EINTR, EINVAL, ENOSPC};
use kernel::ffi::{c_int, c_long, c_ulong, c_void};
use kernel::prelude::*;
use kernel::uaccess::UserSlice;

/// PFNs per chunk: a multiple of the largest buddy block (2^MAX_PAGE_ORDER = 1024 pages
/// on x86-64), so no free block straddles two chunks (blocks are aligned to their size).
const CHUNK_PFNS: u64 = 32768;
/// Bytes of one chunk of the free bitmap (one bit per PFN).
const CHUNK_BYTES: usize = (CHUNK_PFNS / 8) as usize;

extern "C" {
    fn torpor_zone_lock(zone: *mut core::ffi::c_void) -> c_ulong;
    fn torpor_zone_unlock(zone: *mut core::ffi::c_void, flags: c_ulong);
    // `struct mm_struct *` as `void *`: see mm.rs (the bindgen type is not FFI-safe to rustc).
    fn torpor_cond_resched();
    fn torpor_mmap_read_lock_killable(mm: *mut c_void) -> c_int;
    fn torpor_mmap_read_unlock(mm: *mut c_void);
    fn torpor_fatal_signal_pending() -> bool;
}

fn now_ns() -> u64 {
    // SAFETY: ktime_get has no preconditions.
    unsafe { bindings::ktime_get() as u64 }
}

/// (zone pointer, start pfn, end pfn) of every populated zone of node 0.
fn zones() -> KVec<(*mut bindings::zone, u64, u64)> {
    let mut v = KVec::new();
    // SAFETY: `contig_page_data` is the kernel's only node on a !NUMA kernel (ours); it is
    // static, and zone_start_pfn/spanned_pages change only on memory hotplug, which our guest
    // kernel does not build; we read them without the span seqlock, as /proc/zoneinfo does.
    unsafe {
        let pgdat = core::ptr::addr_of_mut!(bindings::contig_page_data);
        // `clamp(0, len)` with 0 <= len (a constant, MAX_NR_ZONES): cannot panic.
        let n = (*pgdat).nr_zones.clamp(0, (*pgdat).node_zones.len() as c_int) as usize;
        // `take(n)`: at most the array's length (nr_zones is clamped to it above anyway).
        for z in (*pgdat).node_zones.iter_mut().take(n) {
            let z: *mut bindings::zone = z;
            let (s, len) = ((*z).zone_start_pfn as u64, (*z).spanned_pages as u64);
            // Kernel data, < 2^52 PFNs each: saturating only documents that.
            if len > 0 && v.push((z, s, s.saturating_add(len)), GFP_KERNEL).is_err() {
                break;
            }
        }
    }
    v
}

fn node_end_pfn() -> u64 {
    // SAFETY: as in `zones`: static node data read without locks.
    unsafe {
        let pgdat = core::ptr::addr_of!(bindings::contig_page_data);
        ((*pgdat).node_start_pfn as u64).saturating_add((*pgdat).node_spanned_pages as u64)
    }
}

pub(crate) fn free_bitmap(arg: usize) -> Result<c_long> {
    let size = core::mem::size_of::<uapi::TorporFreeBitmap>();
    let (mut r, mut w) = UserSlice::new(arg, size).reader_writer();
    let mut req: uapi::TorporFreeBitmap = r.read()?;
    if req.flags != 0 || req.reserved != 0 {
        return Err(EINVAL);
    }
    let t0 = now_ns();
    let end = node_end_pfn();
    req.end_pfn = end;
    req.free_pages = 0;
    let needed = end.div_ceil(8);
    if req.bitmap == 0 {
        // Size query.
        req.ns = now_ns().saturating_sub(t0);
        w.write(&req)?;
        return Ok(0);
    }
    if req.bitmap_bytes < needed {
        req.ns = now_ns().saturating_sub(t0);
        w.write(&req)?;
        return Err(ENOSPC);
    }
    let zones = zones();
    let mut buf = KVec::<u8>::from_elem(0, CHUNK_BYTES, GFP_KERNEL)?;
    // Free pages counted: at most `end` (each PFN once), so no sum can overflow; saturating.
    let mut free = 0u64;
    let mut chunk = 0u64;
    while chunk < end {
        let chunk_end = core::cmp::min(end, chunk.saturating_add(CHUNK_PFNS));
        buf.iter_mut().for_each(|b| *b = 0);
        for &(z, zs, ze) in zones.iter() {
            let lo = core::cmp::max(zs, chunk);
            let hi = core::cmp::min(ze, chunk_end);
            if lo >= hi {
                continue;
            }
            // SAFETY: `z` points into the static node data; the shim takes zone->lock with
            // interrupts off, so no block is split or merged while we read this range.
            let flags = unsafe { torpor_zone_lock(z.cast()) };
            let mut pfn = lo;
            while pfn < hi {
                // The zone lock is held, so a free block's order is stable while we read it.
                let Some(order) = pgwalk::buddy_order(pfn) else {
                    pfn = pfn.saturating_add(1);
                    continue;
                };
                // order <= MAX_PAGE_ORDER (buddy_order clamps it); `pfn < hi` (loop).
                let n = core::cmp::min(block_pages(order), hi.saturating_sub(pfn));
                let first = pfn.saturating_sub(chunk);
                for i in first..first.saturating_add(n) {
                    // `chunk <= pfn` and `pfn + n <= hi <= chunk_end <= chunk + CHUNK_PFNS`, so
                    // `i < CHUNK_PFNS` and `i / 8 < CHUNK_BYTES`; `get_mut` makes that a no-op
                    // instead of a panic if it were ever wrong.
                    if let Some(b) = buf.get_mut((i / 8) as usize) {
                        // Shift amount `i % 8` < 8 = u8::BITS: cannot panic.
                        *b |= 1u8 << (i % 8);
                    }
                }
                free = free.saturating_add(n);
                pfn = pfn.saturating_add(n);
            }
            // SAFETY: releases the lock taken above with its saved flags.
            unsafe { torpor_zone_unlock(z.cast(), flags) };
        }
        // At most CHUNK_BYTES: `chunk_end - chunk <= CHUNK_PFNS`.
        let bytes = core::cmp::min(chunk_end.saturating_sub(chunk).div_ceil(8) as usize, CHUNK_BYTES);
        // `bitmap` comes from userspace: an address that wraps is EFAULT, not arithmetic.
        let dst = req.bitmap.checked_add(chunk / 8).ok_or(EFAULT)?;
        let mut out = UserSlice::new(dst as usize, bytes).writer();
        out.write_slice(buf.get(..bytes).ok_or(EFAULT)?)?;
        chunk = chunk_end;
    }
    req.free_pages = free;
    req.ns = now_ns().saturating_sub(t0);
    w.write(&req)?;
    Ok(0)
}

// Categories (enlightened post-copy's order; the lowest value wins).
const CAT_KERNEL: u8 = 0;
const CAT_KERNEL_ALLOCATED: u8 = 1;
const CAT_MEMORY_IO: u8 = 2;
const CAT_PAGE_TABLE: u8 = 3;
const CAT_USER_CODE: u8 = 4;
const CAT_USER_DATA: u8 = 5;
const CAT_FILE_ACTIVE: u8 = 6;
const CAT_FILE_INACTIVE: u8 = 7;
const CAT_OTHER: u8 = 8;

/// PMD-sized steps of the page-table walk per mmap-lock hold (512 = 1 GiB of address space).
const PMDS_PER_LOCK: u32 = 512;

fn fatal_signal() -> bool {
    // SAFETY: reads `current`'s pending signals; always valid in process context (ioctl).
    unsafe { torpor_fatal_signal_pending() }
}

fn cond_resched() {
    // SAFETY: process context (ioctl), no spinlock or RCU read lock held by the callers.
    unsafe { torpor_cond_resched() }
}

/// `1 << order` pages; `order` comes from a racily read struct page, so it is clamped by
/// the readers (<= 20) and the shift is checked anyway (an absurd order counts 1 page).
fn block_pages(order: u32) -> u64 {
    1u64.checked_shl(order).unwrap_or(1)
}

/// The order stored in bits 24.. of a `pgwalk::pfn_flags` summary.
fn flags_order(f: u32) -> u32 {
    f.checked_shr(PF_ORDER_SHIFT).unwrap_or(0) & 0x1f
}

/// Category of one page from its flags, and how many PFNs it covers (a free buddy block or
/// the head of a large folio covers `1 << order`: every page of a folio shares its flags).
fn classify(f: u32) -> (u8, u64) {
    if f & PF_VALID == 0 {
        return (CAT_OTHER, 1);
    }
    if f & PF_BUDDY != 0 {
        return (CAT_OTHER, block_pages(flags_order(f)));
    }
    let c = if f & PF_RESERVED != 0 {
        CAT_KERNEL
    } else if f & PF_PGTABLE != 0 {
        CAT_PAGE_TABLE
    } else if f & PF_SLAB != 0 {
        CAT_KERNEL_ALLOCATED
    } else if f & PF_WRITEBACK != 0 || (f & PF_FILE != 0 && f & PF_LOCKED != 0 && f & PF_UPTODATE == 0) {
        // Under writeback, or a file page being read in (locked, not yet uptodate).
        CAT_MEMORY_IO
    } else if f & PF_FILE != 0 {
        if f & PF_ACTIVE != 0 {
            CAT_FILE_ACTIVE
        } else {
            CAT_FILE_INACTIVE
        }
    } else if f & (PF_ANON | PF_LRU) != 0 {
        // Anonymous memory: User_* if an active process maps it (second pass), else Other.
        CAT_OTHER
    } else {
        // Allocated, not free in the buddy allocator, not on an LRU, no mapping: kernel use
        // (also the tails of non-compound multi-page allocations and per-CPU free lists).
        CAT_KERNEL_ALLOCATED
    };
    if f & PF_HEAD != 0 {
        (c, block_pages(flags_order(f)))
    } else {
        (c, 1)
    }
}

/// Lower `buf[pfn]` to `cat` for every present page mapped by `mm` (VM_EXEC: User_Code, else
/// User_Data). The mmap read lock is held for at most `PMDS_PER_LOCK` PMD steps at a time.
fn mark_user_pages(mm: &MmRef, buf: &mut [u8], pfns: &mut [c_ulong; PTRS_PER_PTE]) -> Result {
    let skip_flags = (bindings::VM_IO | bindings::VM_PFNMAP | bindings::VM_HUGETLB) as u64;
    let mut addr: u64 = 0;
    loop {
        // SAFETY: `mm.as_ptr()` is kept alive by our mm_users reference.
        if unsafe { torpor_mmap_read_lock_killable(mm.as_ptr().cast()) } != 0 {
            return Err(EINTR);
        }
        let mut budget = PMDS_PER_LOCK;
        let mut done = false;
        while budget > 0 {
            // SAFETY: the mmap read lock is held, as find_vma requires; the VMA it returns stays
            // valid (and its bounds/flags stable) while the lock is held; we read three words.
            let vma = unsafe {
                let v = bindings::find_vma(mm.as_ptr(), addr as _);
                if v.is_null() {
                    None
                } else {
                    Some((
                        (*v).__bindgen_anon_1.__bindgen_anon_1.vm_start as u64,
                        (*v).__bindgen_anon_1.__bindgen_anon_1.vm_end as u64,
                        (*v).__bindgen_anon_2.vm_flags as u64,
                    ))
                }
            };
            let Some((start, end, flags)) = vma else {
                done = true;
                break;
            };
            let mut a = core::cmp::max(addr, start);
            if flags & skip_flags != 0 {
                addr = end;
                continue;
            }
            let cat = if flags & bindings::VM_EXEC as u64 != 0 { CAT_USER_CODE } else { CAT_USER_DATA };
            while a < end && budget > 0 {
                // SAFETY: the mmap read lock is held, `mm` is kept alive by our reference and
                // [a, end) lies inside one VMA of `mm`; scan_pmd only reads page tables.
                let (n, next) = unsafe { pgwalk::scan_pmd(mm.as_ptr(), a, end, pfns) };
                // `n <= PTRS_PER_PTE` (scan_pmd fills at most the array); a PFN from the page
                // tables beyond the node (device memory) has no byte in the map: skipped.
                for &pfn in pfns.iter().take(n) {
                    if let Some(b) = buf.get_mut(pfn) {
                        *b = core::cmp::min(*b, cat);
                    }
                }
                // scan_pmd always moves forward (to the next PMD or upper-level boundary).
                a = core::cmp::max(next, a.saturating_add(1));
                budget = budget.saturating_sub(1);
            }
            addr = a;
        }
        // SAFETY: releases the read lock taken above.
        unsafe { torpor_mmap_read_unlock(mm.as_ptr().cast()) };
        if done {
            return Ok(());
        }
        if fatal_signal() {
            return Err(EINTR);
        }
        cond_resched();
    }
}

pub(crate) fn priority_map(arg: usize) -> Result<c_long> {
    let size = core::mem::size_of::<uapi::TorporPriorityMap>();
    let (mut r, mut w) = UserSlice::new(arg, size).reader_writer();
    let mut req: uapi::TorporPriorityMap = r.read()?;
    if req.flags != 0 {
        return Err(EINVAL);
    }
    let t0 = now_ns();
    if req.window_ms == 0 {
        req.window_ms = uapi::DEFAULT_WINDOW_MS;
    }
    let end = node_end_pfn();
    req.end_pfn = end;
    req.user_ns = 0;
    req.active_procs = 0;
    req.total_procs = 0;
    req.counts = [0; uapi::NR_CATEGORIES];
    if req.map == 0 || req.map_bytes < end {
        // Size query, or a buffer too short for one byte per PFN.
        req.ns = now_ns().saturating_sub(t0);
        w.write(&req)?;
        return if req.map == 0 { Ok(0) } else { Err(ENOSPC) };
    }
    let mut buf = VVec::<u8>::from_elem(CAT_OTHER, end as usize, GFP_KERNEL)?;

    // Pass 1: page flags of every PFN.
    let mut pfn = 0u64;
    while pfn < end {
        let chunk_end = core::cmp::min(end, pfn.saturating_add(CHUNK_PFNS));
        while pfn < chunk_end {
            let f = pgwalk::pfn_flags(pfn);
            let (cat, n) = classify(f);
            // `pfn < end` (loop), `n >= 1`: the walk always advances and stays in the map.
            let n = core::cmp::min(n, end.saturating_sub(pfn));
            buf.iter_mut().skip(pfn as usize).take(n as usize).for_each(|b| *b = cat);
            pfn = pfn.saturating_add(n);
        }
        if fatal_signal() {
            return Err(EINTR);
        }
        cond_resched();
    }

    // Pass 2: pages mapped by processes scheduled within the window.
    let t1 = now_ns();
    // u32::MAX ms = 4.3e15 ns < 2^64: cannot overflow; saturating documents it.
    let window_ns = (req.window_ms as u64).saturating_mul(1_000_000);
    let mut pfns = KBox::new([0 as c_ulong; PTRS_PER_PTE], GFP_KERNEL)?;
    // One consistent pass over the task list (pgwalk::active_mms); the references are
    // released (mmput) when `mms` is dropped, on every path.
    let (mms, total) = pgwalk::active_mms(window_ns)?;
    req.total_procs = total;
    for m in mms.iter() {
        mark_user_pages(m, &mut buf, &mut pfns)?;
        req.active_procs = req.active_procs.saturating_add(1);
    }
    drop(mms);
    req.user_ns = now_ns().saturating_sub(t1);

    // Every byte is a category 0..=8 (CAT_*); an out-of-range one would count as Other.
    for &b in buf.iter() {
        let i = core::cmp::min(b as usize, uapi::NR_CATEGORIES.saturating_sub(1));
        if let Some(c) = req.counts.get_mut(i) {
            *c = c.saturating_add(1);
        }
    }
    let mut out = UserSlice::new(req.map as usize, end as usize).writer();
    out.write_slice(&buf)?;
    req.ns = now_ns().saturating_sub(t0);
    w.write(&req)?;
    Ok(0)
}
