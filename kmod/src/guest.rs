// SPDX-License-Identifier: GPL-2.0
//! Guest-side maps. FREE_BITMAP: one bit per page frame, set for every page of
//! every free buddy block (head and the rest of the block), read under each
//! zone's lock chunk by chunk. PFN bounds come from the exported node data
//! (`contig_page_data`: node_start_pfn + node_spanned_pages) and `pfn_valid`
//! (mem_section), never from `max_pfn` (not exported).

use crate::uapi;
use kernel::bindings;
use kernel::error::code::{EINVAL, ENOSPC};
use kernel::ffi::{c_int, c_long, c_ulong};
use kernel::prelude::*;
use kernel::uaccess::UserSlice;

/// PFNs per chunk: a multiple of the largest buddy block (2^MAX_PAGE_ORDER = 1024 pages
/// on x86-64), so no free block straddles two chunks (blocks are aligned to their size).
const CHUNK_PFNS: u64 = 32768;

extern "C" {
    fn torpor_pfn_buddy_order(pfn: c_ulong) -> c_int;
    fn torpor_zone_lock(zone: *mut core::ffi::c_void) -> c_ulong;
    fn torpor_zone_unlock(zone: *mut core::ffi::c_void, flags: c_ulong);
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
        let n = (*pgdat).nr_zones.clamp(0, (*pgdat).node_zones.len() as c_int) as usize;
        for i in 0..n {
            let z = core::ptr::addr_of_mut!((*pgdat).node_zones[i]);
            let (s, len) = ((*z).zone_start_pfn as u64, (*z).spanned_pages as u64);
            if len > 0 && v.push((z, s, s + len), GFP_KERNEL).is_err() {
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
        ((*pgdat).node_start_pfn + (*pgdat).node_spanned_pages) as u64
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
        req.ns = now_ns() - t0;
        w.write(&req)?;
        return Ok(0);
    }
    if req.bitmap_bytes < needed {
        req.ns = now_ns() - t0;
        w.write(&req)?;
        return Err(ENOSPC);
    }
    let zones = zones();
    let mut buf = KVec::<u8>::from_elem(0, (CHUNK_PFNS / 8) as usize, GFP_KERNEL)?;
    let mut free = 0u64;
    let mut chunk = 0u64;
    while chunk < end {
        let chunk_end = core::cmp::min(end, chunk + CHUNK_PFNS);
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
                // SAFETY: any pfn may be passed: the shim checks pfn_valid first; the zone lock
                // is held, as reading a buddy page's order requires.
                let order = unsafe { torpor_pfn_buddy_order(pfn as c_ulong) };
                if order < 0 {
                    pfn += 1;
                    continue;
                }
                let n = core::cmp::min(1u64 << order, hi - pfn);
                for p in pfn..pfn + n {
                    let i = (p - chunk) as usize;
                    buf[i / 8] |= 1 << (i % 8);
                }
                free += n;
                pfn += n;
            }
            // SAFETY: releases the lock taken above with its saved flags.
            unsafe { torpor_zone_unlock(z.cast(), flags) };
        }
        let bytes = (chunk_end - chunk).div_ceil(8) as usize;
        let mut out = UserSlice::new((req.bitmap + chunk / 8) as usize, bytes).writer();
        out.write_slice(&buf[..bytes])?;
        chunk = chunk_end;
    }
    req.free_pages = free;
    req.ns = now_ns() - t0;
    w.write(&req)?;
    Ok(0)
}
