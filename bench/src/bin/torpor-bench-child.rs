//! The child process of the `resume_touch_all` bench (not a user tool).
//!
//! Line protocol on stdin/stdout, so the bench can move it into its cgroups *before* it
//! allocates (memcg charges pages at allocation time):
//! - prints `HELLO <pid>` at start;
//! - `ALLOC <mib>` → maps `mib` MiB of private anonymous memory (`MADV_NOHUGEPAGE`: 4 KiB pages,
//!   the unit swap works in), fills it with pseudo-random data, records a checksum per MiB;
//!   answers `READY <addr> <len>`;
//! - `TOUCH` → reads one 8-byte word of every page of the area, in address order; answers
//!   `DONE <majflt> <minflt> <micros> <acc>` (fault deltas and time of the touch loop itself);
//! - `NULL` → the paper's null request: reads one word of the area's first page only; answers
//!   `DONE` like `TOUCH`;
//! - `TOUCHSET <pct>` → reads one word of every page in a fixed pseudo-random `pct`% subset of
//!   the area's pages (the "working set" a served load touches), address order; answers `DONE`;
//! - `CHURN <n> <seed>` → rewrites (same value, so checksums hold) one word of `n` pseudo-random
//!   pages: dirties them, so pages swapped in by the writes lose their swap slot and get a new
//!   one when reclaimed again (used to let kernel reclaim under pressure lay the area out);
//!   answers `DONE`;
//! - `DIRTY` → rewrites (same value) one word of every page: brings the whole area back into
//!   memory, dirty (a memory hog that must be written to swap to be reclaimed); answers `DONE`;
//! - `VERIFY` → re-checks every checksum (data integrity after purge/prefetch cycles); answers
//!   `OK` or `BAD <mib index>`;
//! - `EXIT` (or end of input) → exits 0.

use std::num::NonZeroUsize;
use std::ptr::NonNull;

const MIB: usize = 1 << 20;

use torpor_testsupport::child::serve;
use torpor_testsupport::pattern::{checksum, measured, Xorshift};

/// The benchmarked area: a private anonymous mapping owned by this process until exit.
struct Area {
    ptr: NonNull<libc::c_void>,
    len: usize,
    sums: Vec<u64>,
}

impl Area {
    fn alloc(mib: usize) -> Result<Area, String> {
        if mib == 0 {
            return Err("size must be > 0".into());
        }
        let len = mib * MIB;
        // SAFETY: a fresh private anonymous mapping; nothing else aliases it. It is only
        // accessed through `words`/`words_mut` below and never unmapped (the process exits).
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                NonZeroUsize::new(len).ok_or("size")?,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_PRIVATE,
            )
        }
        .map_err(|e| format!("mmap {mib} MiB: {e}"))?;
        // 4 KiB pages: THP would change what one swap fault brings back, per run and per host.
        // SAFETY: advising our own fresh mapping, `ptr`/`len` exactly as returned by mmap.
        unsafe { nix::sys::mman::madvise(ptr, len, nix::sys::mman::MmapAdvise::MADV_NOHUGEPAGE) }
            .map_err(|e| format!("madvise(MADV_NOHUGEPAGE): {e}"))?;
        let mut a = Area {
            ptr,
            len,
            sums: Vec::new(),
        };
        let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
        for w in a.words_mut() {
            *w = rng.next();
        }
        a.sums = a.words().chunks(MIB / 8).map(checksum).collect();
        Ok(a)
    }

    fn words(&self) -> &[u64] {
        // SAFETY: `ptr` is a live, page-aligned (so u64-aligned), readable and writable mapping
        // of `len` bytes, exclusively owned by `self`; the shared borrow of `self` prevents
        // concurrent mutation through `words_mut`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr() as *const u64, self.len / 8) }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `words`; the exclusive borrow of `self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr() as *mut u64, self.len / 8) }
    }

    /// Read one word per page, in address order. Volatile so the compiler cannot drop or
    /// reorder the reads (each one is the page's first access after a resume).
    fn touch(&self) -> u64 {
        let words = self.words();
        let stride = procswap::sys::page_size() as usize / 8;
        let mut acc = 0u64;
        let mut i = 0;
        while i < words.len() {
            // SAFETY: `i < words.len()`, so the pointer is in bounds, aligned and readable.
            acc = acc.wrapping_add(unsafe { std::ptr::read_volatile(words.as_ptr().add(i)) });
            i += stride;
        }
        acc
    }

    /// Read one word of each page in the `pct`% subset (page index hashed; fixed across runs).
    fn touch_set(&self, pct: u64) -> u64 {
        let words = self.words();
        let stride = procswap::sys::page_size() as usize / 8;
        let mut acc = 0u64;
        for (page, i) in (0..words.len()).step_by(stride).enumerate() {
            if in_set(page as u64, pct) {
                // SAFETY: `i < words.len()`, so the pointer is in bounds, aligned and readable.
                acc = acc.wrapping_add(unsafe { std::ptr::read_volatile(words.as_ptr().add(i)) });
            }
        }
        acc
    }

    /// Rewrite one word (same value) of `n` pseudo-random pages.
    fn churn(&mut self, n: u64, seed: u64) -> u64 {
        let stride = procswap::sys::page_size() as usize / 8;
        let words = self.words_mut();
        let pages = (words.len() / stride) as u64;
        let mut rng = Xorshift(seed | 1);
        let mut acc = 0u64;
        for _ in 0..n {
            let i = (rng.next() % pages) as usize * stride;
            let p = words[i..].as_mut_ptr();
            // SAFETY: `i < words.len()` (page index < pages), so `p` is in bounds, aligned, and
            // exclusively borrowed through `words`.
            unsafe {
                let v = std::ptr::read_volatile(p);
                std::ptr::write_volatile(p, v);
                acc = acc.wrapping_add(v);
            }
        }
        acc
    }

    /// Rewrite one word (same value) of every page.
    fn dirty_all(&mut self) -> u64 {
        let stride = procswap::sys::page_size() as usize / 8;
        let words = self.words_mut();
        let mut acc = 0u64;
        let mut i = 0;
        while i < words.len() {
            let p = words[i..].as_mut_ptr();
            // SAFETY: `i < words.len()`, so `p` is in bounds, aligned, and exclusively borrowed
            // through `words`.
            unsafe {
                let v = std::ptr::read_volatile(p);
                std::ptr::write_volatile(p, v);
                acc = acc.wrapping_add(v);
            }
            i += stride;
        }
        acc
    }

    fn verify(&self) -> Result<(), usize> {
        match self
            .words()
            .chunks(MIB / 8)
            .zip(&self.sums)
            .position(|(c, &want)| checksum(c) != want)
        {
            Some(i) => Err(i),
            None => Ok(()),
        }
    }
}

/// Is page `page` in the `pct`% subset?
fn in_set(page: u64, pct: u64) -> bool {
    (page.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 100 < pct
}

/// Run `f`, answering `DONE <majflt> <minflt> <micros> <acc>`.
fn timed(f: impl FnOnce() -> u64) -> String {
    let (acc, c) = measured(f);
    format!(
        "DONE {} {} {} {acc}",
        c.major_faults, c.minor_faults, c.micros
    )
}

fn main() {
    let mut area: Option<Area> = None;
    serve(|line| {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let arg = |i: usize| parts.get(i).and_then(|v| v.parse::<u64>().ok());
        let reply = match (parts.first().copied(), &mut area) {
            (Some("ALLOC"), _) => match parts
                .get(1)
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or("ALLOC <mib>".to_string())
                .and_then(Area::alloc)
            {
                Ok(a) => {
                    let r = format!("READY {} {}", a.ptr.as_ptr() as usize, a.len);
                    area = Some(a);
                    r
                }
                Err(e) => format!("ERR {e}"),
            },
            (Some("TOUCH"), Some(a)) => timed(|| a.touch()),
            (Some("NULL"), Some(a)) => timed(|| {
                // SAFETY: the area is at least one page long; its first word is readable.
                unsafe { std::ptr::read_volatile(a.words().as_ptr()) }
            }),
            (Some("TOUCHSET"), Some(a)) => match arg(1) {
                Some(pct) if pct <= 100 => timed(|| a.touch_set(pct)),
                _ => "ERR TOUCHSET <pct 0..=100>".into(),
            },
            (Some("CHURN"), Some(a)) => match (arg(1), arg(2)) {
                (Some(n), Some(seed)) => timed(|| a.churn(n, seed)),
                _ => "ERR CHURN <pages> <seed>".into(),
            },
            (Some("DIRTY"), Some(a)) => timed(|| a.dirty_all()),
            (Some("VERIFY"), Some(a)) => match a.verify() {
                Ok(()) => "OK".into(),
                Err(i) => format!("BAD {i}"),
            },
            (Some("TOUCH" | "VERIFY" | "NULL" | "TOUCHSET" | "CHURN" | "DIRTY"), None) => {
                "ERR nothing allocated".into()
            }
            (Some("EXIT"), _) => return None,
            _ => format!("ERR unknown command {line:?}"),
        };
        Some(reply)
    });
}
