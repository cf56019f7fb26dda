//! VM targets: a QEMU process whose guest RAM is purged to swap and prefetched back by the
//! guest's priority classes (the host side of VM resume). Mechanism only; torpord decides when.
//!
//! - [`qmp`]: a QMP client (stop, cont, query-status, HMP commands) with timeouts;
//! - [`ram`]: guest RAM discovery (flat view of `info mtree -f` + `gpa2hva`, checked against
//!   `/proc/PID/maps`), guest-physical → host-virtual translation (the PCI hole included);
//! - [`plan`]: host ranges ordered by class, free pages skipped, from a per-page classifier
//!   (the controller builds it from the guest agent's maps; procswap does not depend on
//!   guest-enlight, which depends on procswap);
//! - [`twinkle`]: the background fetcher (segments of 1024 pages, fetched once 30 % of their
//!   swapped pages were faulted in, then the remaining classes);
//! - [`loading`]: the VM's loading set (the process loading set over QEMU's memory): what
//!   to watch from `cont` on, and the set in fetch order (QEMU first, then guest classes,
//!   free pages never).
//!
//! The fetching itself is procswap's prefetch ([`crate::prefetch_with`]) restricted to given
//! ranges ([`fetch_ranges`]), so both backends (stock, kmod) work unchanged.
//!
//! **Safety rule**: the guest's maps only order and skip prefetch. Nothing in this module
//! discards memory.

pub mod loading;
pub mod plan;
pub mod qmp;
pub mod ram;
pub mod twinkle;

pub use plan::{class_name, ClassPlan, PageClass, Plan, CLASSES, CLASS_OUTSIDE};
pub use qmp::{Qmp, QmpError, VmStatus};
pub use ram::{GuestRam, RamRange};
pub use twinkle::{Background, TwinkleConfig, TwinkleStats};

use crate::backend::Backend;
use crate::inspect::{classify, Pagemap};
use crate::progress::NoProgress;
use crate::sys::Range;
use crate::workingset::{WorkingSet, WsMethod};
use crate::{PrefetchOptions, PrefetchReport};
use std::time::Duration;

/// Errors of VM operations.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("parsing QEMU output: {0}")]
    Parse(String),
    #[error("guest RAM discovery: {0}")]
    Discovery(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Procswap(#[from] crate::Error),
}

/// Page states of a set of ranges of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageCounts {
    /// Present pages (excluding `zero_page` when zero pages were looked for).
    pub resident: u64,
    pub swapped: u64,
    /// Neither (never touched, or dropped).
    pub other: u64,
    /// Present pages that map the kernel's shared zero page (read, never written: they hold
    /// no memory and cannot be paged out). Only counted by [`page_counts_exact`].
    pub zero_page: u64,
}

/// Count present / swapped pages of `ranges` in `pid` (pagemap).
pub fn page_counts(pid: i32, ranges: &[Range]) -> Result<PageCounts, crate::Error> {
    counts(pid, ranges, false)
}

/// Like [`page_counts`], and tells zero-page mappings apart (`/proc/kpageflags`
/// `KPF_ZERO_PAGE`, root): the proof that a purge left no memory resident.
pub fn page_counts_exact(pid: i32, ranges: &[Range]) -> Result<PageCounts, crate::Error> {
    counts(pid, ranges, true)
}

const KPF_ZERO_PAGE: u64 = 1 << 24;

fn counts(pid: i32, ranges: &[Range], zero: bool) -> Result<PageCounts, crate::Error> {
    use std::os::unix::fs::FileExt;
    let mut pm = Pagemap::open(pid)?;
    let kpf = if zero {
        std::fs::File::open("/proc/kpageflags").ok()
    } else {
        None
    };
    let mut c = PageCounts::default();
    let mut zero_pfns = std::collections::HashSet::new();
    for r in ranges {
        pm.scan(r.start, r.end(), |_, info| match classify(&info) {
            (true, _, _) => {
                let pfn = match &info {
                    procfs::process::PageInfo::MemoryPage(f) => f.get_page_frame_number().0,
                    _ => 0,
                };
                let is_zero = kpf.as_ref().is_some_and(|k| {
                    pfn != 0
                        && (zero_pfns.contains(&pfn) || {
                            let mut b = [0u8; 8];
                            let z = k.read_exact_at(&mut b, pfn * 8).is_ok()
                                && u64::from_ne_bytes(b) & KPF_ZERO_PAGE != 0;
                            if z {
                                zero_pfns.insert(pfn);
                            }
                            z
                        })
                });
                if is_zero {
                    c.zero_page += 1;
                } else {
                    c.resident += 1;
                }
            }
            (false, _, Some(_)) => c.swapped += 1,
            _ => c.other += 1,
        })?;
    }
    Ok(c)
}

/// QEMU's own memory: every private mapping range of `pid` outside guest RAM, from
/// `/proc/PID/maps` (cheap: no page-table walk, unlike smaps). Inaccessible (`---p`), shared
/// (never paged out by a purge) and kernel-special mappings are left out.
pub fn qemu_own_ranges(pid: i32, ram: &GuestRam) -> Result<Vec<Range>, crate::Error> {
    Ok(own_ranges(&qemu_maps(pid)?, ram))
}

/// `/proc/PID/maps` of `pid`, parsed.
pub fn qemu_maps(pid: i32) -> Result<Vec<ram::MapsLine>, crate::Error> {
    let path = format!("/proc/{pid}/maps");
    let text = std::fs::read_to_string(&path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => crate::Error::NoSuchProcess(pid),
        _ => crate::Error::Io {
            path: path.clone().into(),
            source: e,
        },
    })?;
    ram::parse_maps(&text).map_err(|e| crate::Error::Unsupported(e.to_string()))
}

/// The private file mappings of `maps` (a program's data, a library's relocated pages), sorted:
/// their written pages are anonymous copies on swap after a purge, which `MADV_WILLNEED` does
/// not read (on a file mapping it reads the *file*): only a fault brings them back.
pub fn file_private_ranges(maps: &[ram::MapsLine]) -> Vec<Range> {
    let mut out: Vec<Range> = maps
        .iter()
        .filter(|m| m.perms.as_bytes().get(3) == Some(&b'p') && m.path.starts_with('/'))
        .map(|m| Range {
            start: m.start,
            len: m.end - m.start,
        })
        .collect();
    out.sort_unstable();
    out
}

/// [`qemu_own_ranges`] from maps already read.
pub fn own_ranges(maps: &[ram::MapsLine], ram: &GuestRam) -> Vec<Range> {
    let mut guest = ram.hva_ranges();
    guest.sort_unstable();
    let mut out = Vec::new();
    for m in maps {
        let p = m.perms.as_bytes();
        if p.len() < 4
            || p[3] != b'p'
            || (p[0] != b'r' && p[1] != b'w')
            || m.path.starts_with('[') && m.path != "[heap]" && m.path != "[stack]"
        {
            continue;
        }
        let mut cur = m.start;
        for g in guest
            .iter()
            .filter(|g| g.end() > m.start && g.start < m.end)
        {
            if g.start > cur {
                out.push(Range {
                    start: cur,
                    len: g.start - cur,
                });
            }
            cur = cur.max(g.end());
        }
        if cur < m.end {
            out.push(Range {
                start: cur,
                len: m.end - cur,
            });
        }
    }
    out
}

/// Prefetch exactly the swapped pages of `pid` inside `ranges` (swap-slot order, read-ahead
/// pipelined with the backend's mapping pass), through [`crate::prefetch_with`].
pub fn fetch_ranges(
    backend: &dyn Backend,
    pid: i32,
    ranges: Vec<Range>,
    base: &PrefetchOptions,
) -> Result<PrefetchReport, crate::Error> {
    let opts = PrefetchOptions {
        working_set: Some(WorkingSet::new(
            pid,
            "guest-ram",
            WsMethod::External,
            Duration::ZERO,
            ranges,
        )),
        working_set_only: true,
        scan_working_set_only: true,
        ..base.clone()
    };
    crate::prefetch_with(backend, pid, &opts, &NoProgress)
}

/// Fetch `sets` strictly in order (one prefetch call per non-empty set), sharing one byte
/// budget (`base.budget_bytes`); once a call stops early (budget or free-memory floor), the
/// later sets are not fetched (`None`). For class-ordered prefetch where the order matters:
/// whatever cuts the fetch short cuts the last classes.
pub fn fetch_ordered(
    backend: &dyn Backend,
    pid: i32,
    sets: Vec<Vec<Range>>,
    base: &PrefetchOptions,
) -> Result<Vec<Option<(PrefetchReport, f64)>>, crate::Error> {
    let mut out = Vec::with_capacity(sets.len());
    let mut left = base.budget_bytes;
    let mut stopped = false;
    for set in sets {
        if stopped || set.is_empty() || left == Some(0) {
            stopped |= left == Some(0);
            out.push(None);
            continue;
        }
        let t = std::time::Instant::now();
        let r = fetch_ranges(
            backend,
            pid,
            set,
            &PrefetchOptions {
                budget_bytes: left,
                ..base.clone()
            },
        )?;
        left = left.map(|l| l.saturating_sub(r.read_issued_bytes));
        stopped = r.stopped.is_some();
        out.push(Some((r, t.elapsed().as_secs_f64() * 1e3)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ranges_leave_out_guest_ram_and_unusable_mappings() {
        let maps = ram::parse_maps(
            "1000-3000 r--p 00000000 fe:00 1 /usr/bin/qemu\n\
             10000-20000 rw-p 00000000 00:00 0 [heap]\n\
             20000-30000 ---p 00000000 00:00 0\n\
             30000-40000 rw-s 00000000 00:01 5 /dev/shm/x\n\
             100000-200000 rw-p 00000000 00:00 0\n\
             200000-201000 r--p 00000000 00:00 0 [vvar]\n",
        )
        .unwrap();
        let ram = GuestRam {
            pid: 1,
            ranges: vec![ram::RamRange {
                gpa: 0,
                len: 0x80000,
                block: "pc.ram".into(),
                block_offset: 0,
                hva: 0x140000,
            }],
        };
        assert_eq!(
            own_ranges(&maps, &ram),
            vec![
                Range {
                    start: 0x1000,
                    len: 0x2000
                },
                Range {
                    start: 0x10000,
                    len: 0x10000
                },
                Range {
                    start: 0x100000,
                    len: 0x40000
                },
                Range {
                    start: 0x1c0000,
                    len: 0x40000
                },
            ]
        );
    }
}
