//! New swap slots for pages that kept an old one, so that a purge can lay them out in order.
//!
//! A page read-faulted from swap stays in the swap cache with its slot, mapped writable; a later
//! write does not fault, so the slot survives, and the next page-out writes the page back to it
//! (or, clean, just drops it): wherever the loading-set-first page-out goes, such pages stay
//! scattered. Only a **write fault on a swap entry** frees the slot (the kernel's
//! `do_swap_page` → `should_try_to_free_swap`, for a page mapped once). So, for a frozen
//! target: page each such page out (`process_madvise(MADV_PAGEOUT)`: its pte becomes the swap
//! entry), read it back into the swap cache (`MADV_WILLNEED`) and read its contents
//! (`process_vm_readv`: a read fault, the slot stays), page it out and read it back again, and
//! write the same contents back (`process_vm_writev`: a write fault on the swap entry, which
//! frees the slot). The page is then present, dirty and without
//! a slot, and the ordered page-out that follows gives it a new, consecutive one. A page still
//! **on swap** (a swap entry: paged out by an earlier purge, fetched by the last Start but not
//! touched) goes through the same steps — its first page-out is a no-op — so it leaves its old
//! slot too: without that, every page the loading set's first part keeps from older cycles
//! stays where an older layout put it (Tomcat: the first part's 33–46 swap extents became
//! 160–544 once it kept six cycles' pages).
//!
//! What is written is exactly what was read from the target a moment before, while it was
//! frozen and the page mapped by it alone, and only after a page-out took it (so nothing had it
//! pinned for I/O: a write landing between the read and the write-back is excluded): nothing
//! is guessed, and swap devices are never read directly. A page the page-out did not take (pinned, locked, shared since) is not written.
//! Which pages kept a slot is read from `/proc/kpageflags` (`KPF_SWAPCACHE`, root); huge
//! (compound) pages are left alone. Measured on 6.18 with a C probe (8,192 pages, 5,802 of them
//! in the swap cache, swap file with `--discard=pages`): a page-out in a random order gave 7,494
//! extents before, 1 after; contents checked.

use crate::error::{Error, Result};
use crate::inspect::{classify, exclusive, Pagemap};
use crate::sys::{self, Range};
use crate::target::Target;
use std::fs::File;
use std::os::unix::fs::FileExt;

const KPAGEFLAGS: &str = "/proc/kpageflags";
const KPF_ANON: u64 = 1 << 12;
const KPF_SWAPCACHE: u64 = 1 << 13;
const KPF_COMPOUND_HEAD: u64 = 1 << 15;
const KPF_COMPOUND_TAIL: u64 = 1 << 16;
const KPF_THP: u64 = 1 << 22;
/// Pages per round (contents held in memory: 4 MiB with 4 KiB pages).
const CHUNK: usize = sys::IOV_MAX;
/// Rounds over what still has a slot: a dirty page's page-out writes it back to its old slot,
/// and while that write is in flight the write fault cannot free the slot; the next round
/// finds the page clean.
const ROUNDS: usize = 3;

/// What [`reslot`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReslotReport {
    /// Anonymous pages of the ranges that held a swap slot: present, exclusively mapped ones in
    /// the swap cache, and swap entries.
    pub candidates: u64,
    /// Of those, pages that hold no slot any more.
    pub reslotted: u64,
    /// Pages written back (a page can be written in more than one round).
    pub written: u64,
    /// Pages the page-out did not take, or that could not be read or written: left alone.
    pub refused: u64,
}

/// Free the swap slots of the present, exclusively mapped anonymous pages of `ranges` (in the
/// ranges' order, at most `max_pages`) that kept one (see the module doc). The target must be
/// frozen: the caller checks. Needs root (`/proc/kpageflags`, page frame numbers).
pub fn reslot(t: &Target, ranges: &[Range], max_pages: u64) -> Result<ReslotReport> {
    let flags = File::open(KPAGEFLAGS).map_err(|e| Error::io(KPAGEFLAGS, e))?;
    let mut rep = ReslotReport::default();
    let mut pages = slotted_pages(t, &flags, ranges, max_pages)?;
    rep.candidates = pages.len() as u64;
    for _ in 0..ROUNDS {
        if pages.is_empty() {
            break;
        }
        for chunk in pages.chunks(CHUNK) {
            let (written, refused) = reslot_chunk(t, chunk)?;
            rep.written += written;
            rep.refused += refused;
        }
        pages = still_slotted(t, &flags, &pages)?;
    }
    rep.reslotted = rep.candidates - pages.len() as u64;
    Ok(rep)
}

/// The page flags of `pfn` (`/proc/kpageflags`).
fn page_flags(flags: &File, pfn: u64) -> Result<u64> {
    let mut b = [0u8; 8];
    flags
        .read_exact_at(&mut b, pfn * 8)
        .map_err(|e| Error::io(KPAGEFLAGS, e))?;
    Ok(u64::from_ne_bytes(b))
}

/// Whether a pagemap entry is an anonymous page that holds a swap slot: a present, exclusively
/// mapped, small one in the swap cache, or a swap entry (paged out and not mapped since: a page
/// of the loading set's first part that the last cycle fetched but did not touch keeps the slot
/// an older layout gave it, scattered among the new ones; the same steps move it: its page-out
/// is a no-op, the read-back brings it in).
fn has_slot(flags: &File, info: &procfs::process::PageInfo) -> Result<bool> {
    let (present, file, slot) = classify(info);
    if let (false, false, Some(_)) = (present, file, slot) {
        return Ok(true);
    }
    let procfs::process::PageInfo::MemoryPage(f) = info else {
        return Ok(false);
    };
    let pfn = f.get_page_frame_number().0;
    if !present || file || !exclusive(info) || pfn == 0 {
        return Ok(false);
    }
    let fl = page_flags(flags, pfn)?;
    let huge = KPF_COMPOUND_HEAD | KPF_COMPOUND_TAIL | KPF_THP;
    Ok(fl & KPF_ANON != 0 && fl & KPF_SWAPCACHE != 0 && fl & huge == 0)
}

/// The pages of `ranges` (in order, at most `max`) that hold a swap slot: present ones in the
/// swap cache and swap entries ([`has_slot`]).
fn slotted_pages(t: &Target, flags: &File, ranges: &[Range], max: u64) -> Result<Vec<u64>> {
    let mut pm = Pagemap::open(t.pid())?;
    let mut out = Vec::new();
    let mut err = None;
    for r in ranges {
        if out.len() as u64 >= max {
            break;
        }
        pm.scan(r.start, r.end(), |addr, info| {
            if (out.len() as u64) < max && err.is_none() {
                match has_slot(flags, &info) {
                    Ok(true) => out.push(addr),
                    Ok(false) => {}
                    Err(e) => err = Some(e),
                }
            }
        })?;
    }
    err.map_or(Ok(out), Err)
}

/// Of `pages`, those that still hold a slot.
fn still_slotted(t: &Target, flags: &File, pages: &[u64]) -> Result<Vec<u64>> {
    let ps = sys::page_size();
    let ranges: Vec<Range> = pages.iter().map(|&a| Range { start: a, len: ps }).collect();
    slotted_pages(t, flags, &ranges, u64::MAX)
}

/// One round over at most [`CHUNK`] pages: page out, read the contents, page out again, write
/// them back. Returns (pages written, pages left alone).
///
/// The contents are read only **after** a page-out took the page, never before it: the kernel
/// does not unmap a pinned anonymous page, so a page the page-out took had no I/O in flight
/// into it (a direct-I/O read, a device) and no other process maps it; frozen, the target
/// cannot pin or write it again. Contents read before the page-out could miss a write that
/// landed in between (a DMA completing), and writing them back would undo it.
fn reslot_chunk(t: &Target, pages: &[u64]) -> Result<(u64, u64)> {
    let ps = sys::page_size() as usize;
    // Page out; read back into the swap cache; read the contents (a read fault maps the page
    // again, keeping its slot).
    let taken = page_out_and_back(t, pages)?;
    let mut buf = vec![0u8; taken.len() * ps];
    let read = vm_io(t.pid(), &taken, &mut buf, false)?;
    let readable: Vec<usize> = (0..taken.len()).filter(|&i| read[i]).collect();
    let addrs: Vec<u64> = readable.iter().map(|&i| taken[i]).collect();
    // Page out again (clean now: unmapped, slot kept) and read back, so the write below is a
    // write fault on the swap entry, which frees the slot.
    let again = page_out_and_back(t, &addrs)?;
    let mut contents = Vec::with_capacity(again.len() * ps);
    let mut k = 0;
    for &a in &again {
        // `again` is a subsequence of `addrs`, in the same order.
        while addrs[k] != a {
            k += 1;
        }
        let i = readable[k];
        contents.extend_from_slice(&buf[i * ps..(i + 1) * ps]);
    }
    let written = vm_io(t.pid(), &again, &mut contents, true)?;
    let written = written.iter().filter(|&&w| w).count();
    Ok((written as u64, (pages.len() - written) as u64))
}

/// `MADV_PAGEOUT` over `pages`, then `MADV_WILLNEED` over those whose pte became a swap entry
/// (returned, in order): a page still present (pinned, locked, under write-back) is left
/// exactly as it is.
fn page_out_and_back(t: &Target, pages: &[u64]) -> Result<Vec<u64>> {
    let ps = sys::page_size();
    madvise(t, &coalesce(pages, ps), libc::MADV_PAGEOUT, "MADV_PAGEOUT")?;
    let swapped = swapped_of(t, pages)?;
    let out: Vec<u64> = (0..pages.len())
        .filter(|&k| swapped[k])
        .map(|k| pages[k])
        .collect();
    madvise(t, &coalesce(&out, ps), libc::MADV_WILLNEED, "MADV_WILLNEED")?;
    Ok(out)
}

/// `process_madvise(advice)` over `ranges` (a refused range is skipped: its pages stay as they
/// are).
fn madvise(t: &Target, ranges: &[Range], advice: i32, name: &'static str) -> Result<()> {
    t.check_alive("reslot")?;
    sys::madvise_all(t.pidfd(), ranges, advice, &mut |_| {})
        .map_err(|e| Error::sys(name, t.pid(), e))?;
    Ok(())
}

/// Whether each of `pages` is now a swap entry (not present).
fn swapped_of(t: &Target, pages: &[u64]) -> Result<Vec<bool>> {
    let ps = sys::page_size();
    let mut pm = Pagemap::open(t.pid())?;
    let mut out = Vec::with_capacity(pages.len());
    for &a in pages {
        pm.scan(a, a + ps, |_, info| {
            let (present, _, slot) = classify(&info);
            out.push(!present && slot.is_some());
        })?;
    }
    Ok(out)
}

/// Consecutive pages as ranges.
fn coalesce(pages: &[u64], ps: u64) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::new();
    for &a in pages {
        match out.last_mut() {
            Some(r) if r.end() == a => r.len += ps,
            _ => out.push(Range { start: a, len: ps }),
        }
    }
    out
}

/// Read (`write` false) or write whole pages at `pages` of `pid` from/into `buf` (one page
/// each, in order), [`sys::IOV_MAX`] pages per call. A page that fails (EFAULT: read-only,
/// unmapped) is skipped and the pages after it are still tried. Returns whether each page was
/// done.
fn vm_io(pid: i32, pages: &[u64], buf: &mut [u8], write: bool) -> Result<Vec<bool>> {
    let ps = sys::page_size() as usize;
    let mut ok = vec![false; pages.len()];
    sys::per_page_batches(pages, ps, |at, remote| -> Result<usize> {
        let n = remote.len();
        let whole = vm_io_call(pid, remote, &mut buf[at * ps..(at + n) * ps], write)?;
        ok[at..at + whole].iter_mut().for_each(|d| *d = true);
        Ok(whole)
    })?;
    Ok(ok)
}

/// One `process_vm_readv`/`process_vm_writev` of whole pages; returns the pages done before
/// the first that failed.
fn vm_io_call(
    pid: i32,
    remote: &[nix::sys::uio::RemoteIoVec],
    buf: &mut [u8],
    write: bool,
) -> Result<usize> {
    use nix::sys::uio::{process_vm_readv, process_vm_writev};
    use std::io::{IoSlice, IoSliceMut};
    let npid = nix::unistd::Pid::from_raw(pid);
    let ps = sys::page_size() as usize;
    let r = if write {
        process_vm_writev(npid, &[IoSlice::new(buf)], remote)
    } else {
        process_vm_readv(npid, &mut [IoSliceMut::new(buf)], remote)
    };
    match r {
        Ok(bytes) => Ok(bytes / ps),
        Err(nix::errno::Errno::EFAULT) => Ok(0),
        Err(nix::errno::Errno::ESRCH) => Err(Error::TargetExited { pid, op: "reslot" }),
        Err(e) => Err(Error::Sys {
            op: if write {
                "process_vm_writev"
            } else {
                "process_vm_readv"
            },
            pid,
            source: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole pages read and written back unchanged; a read-only page is refused on the write
    /// (left exactly as it is) and the pages after it are still done.
    #[test]
    fn vm_io_round_trips_pages_and_skips_a_read_only_one() {
        let ps = sys::page_size() as usize;
        let n = 8usize;
        let m = sys::AnonMapping::new(n);
        for i in 0..n {
            // SAFETY: page i of the writable mapping above (i < n), whole page.
            unsafe { std::ptr::write_bytes(m.base.add(i * ps), 0x40 + i as u8, ps) };
        }
        // SAFETY: page 3 of the mapping above becomes read-only (it stays mapped).
        let rc =
            unsafe { libc::mprotect(m.base.add(3 * ps) as *mut libc::c_void, ps, libc::PROT_READ) };
        assert_eq!(rc, 0);
        let pid = std::process::id() as i32;
        let addrs = m.addrs();
        let mut buf = vec![0u8; n * ps];
        assert_eq!(vm_io(pid, &addrs, &mut buf, false).unwrap(), vec![true; n]);
        for i in 0..n {
            assert!(buf[i * ps..(i + 1) * ps]
                .iter()
                .all(|&b| b == 0x40 + i as u8));
        }
        let done = vm_io(pid, &addrs, &mut buf, true).unwrap();
        let want: Vec<bool> = (0..n).map(|i| i != 3).collect();
        assert_eq!(done, want);
        for i in 0..n {
            // SAFETY: page i of the (readable) mapping above.
            let page = unsafe { std::slice::from_raw_parts(m.base.add(i * ps), ps) };
            assert!(page.iter().all(|&b| b == 0x40 + i as u8), "page {i}");
        }
        assert!(vm_io(pid, &[], &mut [], true).unwrap().is_empty());
    }

    #[test]
    fn coalesce_joins_consecutive_pages_only() {
        let r = coalesce(&[0x1000, 0x2000, 0x4000, 0x5000, 0x3000], 0x1000);
        assert_eq!(
            r,
            vec![
                Range {
                    start: 0x1000,
                    len: 0x2000
                },
                Range {
                    start: 0x4000,
                    len: 0x2000
                },
                Range {
                    start: 0x3000,
                    len: 0x1000
                },
            ]
        );
    }
}
