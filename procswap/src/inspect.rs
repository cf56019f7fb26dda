//! The target's address space as procswap sees it: VMAs (from `/proc/pid/smaps`) with
//! per-VMA page states (from `/proc/pid/pagemap`), swap offsets and swap contiguity.

use crate::cgroup::{Memcg, PidCgroups};
use crate::error::{Error, Result};
use crate::memkind::{ByKind, Handle, KindUsage, MemKind, ObjectUsage, SkippedObject};
use crate::sys::{self, Range};
use crate::target::Target;
use procfs::process::{MMapPath, MemoryMap, PageInfo, VmFlags};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// What kind of mapping a VMA is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmaKind {
    /// Private anonymous memory (incl. heap and stacks).
    Anon,
    /// Shared anonymous memory (shmem).
    SharedAnon,
    /// A private file mapping (pages are file pages until written, then anonymous).
    FilePrivate,
    /// A shared file mapping.
    FileShared,
    /// vdso/vvar/vsyscall and other kernel-provided mappings.
    Special,
}

/// One VMA and the state of its pages.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmaInfo {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub path: String,
    pub kind: VmaKind,
    pub shared: bool,
    /// VM_LOCKED (mlock): MADV_PAGEOUT skips it.
    pub locked: bool,
    /// VM_HUGETLB: MADV_PAGEOUT skips it.
    pub hugetlb: bool,
    /// VM_PFNMAP or VM_IO: no struct pages to swap.
    pub pfnmap: bool,
    /// Pages in the VMA (size / page size).
    pub pages: u64,
    /// Pages present in RAM.
    pub present: u64,
    /// Of the present ones, pages pagemap marks file-page-or-shared-anon.
    pub file_pages: u64,
    /// Of the present ones, pages mapped more than once (not `MMAP_EXCLUSIVE`: shared with another
    /// process, e.g. copy-on-write after fork, or a library page). `MADV_PAGEOUT` skips them.
    pub present_shared: u64,
    /// Pages swapped out (a swap entry in the PTE).
    pub swapped: u64,
    /// Neither present nor swapped (never touched, or file pages not mapped).
    pub unpopulated: u64,
    /// Runs of consecutive swap slots in address order within this VMA.
    pub swap_extents: u64,
    /// `Swap:` of this VMA in smaps, bytes (the kernel's own count; used to skip VMAs).
    pub smaps_swap_bytes: u64,
}

impl VmaInfo {
    /// Whether `process_madvise(MADV_PAGEOUT)` accepts this VMA at all (the kernel refuses
    /// VM_LOCKED, VM_HUGETLB and VM_PFNMAP VMAs; kernel-special mappings hold no LRU pages).
    pub fn pageout_eligible(&self) -> bool {
        !self.locked && !self.hugetlb && !self.pfnmap && self.kind != VmaKind::Special
    }

    /// Present pages that are not file pages (private anonymous data).
    pub fn present_anon(&self) -> u64 {
        self.present - self.file_pages
    }

    pub fn range(&self) -> Range {
        Range {
            start: self.start,
            len: self.end - self.start,
        }
    }
}

/// A swapped page: where it is in the target and where it is on swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwappedPage {
    pub addr: u64,
    pub swap_type: u8,
    pub offset: u64,
}

/// How contiguous the target's swap slots are.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Contiguity {
    /// Runs of consecutive swap slots in address order (consecutive pages of one VMA on
    /// consecutive slots of one device). 1 = the whole footprint is one sequential read.
    pub extents: u64,
    /// Runs of consecutive slots when the slots are sorted by offset (what an offset-ordered
    /// prefetch reads): at most `extents`.
    pub offset_runs: u64,
    /// Sum over swap devices of (highest slot − lowest slot + 1), in pages.
    pub span_pages: u64,
    pub min_offset: Option<u64>,
    pub max_offset: Option<u64>,
    /// Swap devices (types) in use.
    pub swap_types: Vec<u8>,
}

/// Summed page counts.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub pages: u64,
    pub present: u64,
    pub file_pages: u64,
    pub present_anon: u64,
    pub swapped: u64,
    pub unpopulated: u64,
}

/// The full picture of a target.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Inspection {
    pub pid: i32,
    pub comm: String,
    pub page_size: u64,
    pub vmas: Vec<VmaInfo>,
    pub totals: Totals,
    pub contiguity: Contiguity,
    /// Every swapped page in address order (empty unless requested).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub swapped_pages: Vec<SwappedPage>,
    pub cgroups: PidCgroups,
    pub memcg: Option<MemcgFigures>,
    /// Per memory kind (anon, shmem, file). `None` when the object scan failed (`kinds_note`).
    #[serde(default)]
    pub kinds: Option<ByKind<KindUsage>>,
    /// Shmem and file objects (inodes) the target maps or has open, with their residency.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectUsage>,
    /// Handles the object scan did not follow (devices, pseudo files), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects_skipped: Vec<SkippedObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds_note: Option<String>,
}

/// The target's memory cgroup counters.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MemcgFigures {
    pub memcg: Memcg,
    pub usage_bytes: u64,
    pub swapcached_bytes: Option<u64>,
}

impl MemcgFigures {
    pub fn read(m: &Memcg) -> Result<Self> {
        Ok(Self {
            memcg: m.clone(),
            usage_bytes: m.usage()?,
            swapcached_bytes: m.swapcached()?,
        })
    }
}

/// Inspection options.
#[derive(Debug, Clone, Copy, Default)]
pub struct InspectOptions {
    /// Keep every swapped page (address + slot) in [`Inspection::swapped_pages`].
    pub swapped_pages: bool,
}

impl Inspection {
    pub fn bytes(&self, pages: u64) -> u64 {
        pages * self.page_size
    }
}

fn kind_of(m: &MemoryMap) -> VmaKind {
    let shared = m.perms.contains(procfs::process::MMPermissions::SHARED);
    match &m.pathname {
        MMapPath::Vdso | MMapPath::Vvar | MMapPath::Vsyscall => VmaKind::Special,
        MMapPath::Other(s) if s.starts_with("[vvar") || s.starts_with("[uprobes") => {
            VmaKind::Special
        }
        MMapPath::Path(_) if m.inode != 0 && !shared => VmaKind::FilePrivate,
        MMapPath::Path(_) if m.inode != 0 => {
            // /dev/zero and memfd/shm files are shmem: "shared anon" for our purposes.
            if shared && m.dev == (0, 1) {
                VmaKind::SharedAnon
            } else {
                VmaKind::FileShared
            }
        }
        MMapPath::Vsys(_) => VmaKind::SharedAnon,
        _ if shared => VmaKind::SharedAnon,
        _ => VmaKind::Anon,
    }
}

fn path_of(p: &MMapPath) -> String {
    match p {
        MMapPath::Path(p) => p.display().to_string(),
        MMapPath::Heap => "[heap]".into(),
        MMapPath::Stack => "[stack]".into(),
        MMapPath::TStack(t) => format!("[stack:{t}]"),
        MMapPath::Vdso => "[vdso]".into(),
        MMapPath::Vvar => "[vvar]".into(),
        MMapPath::Vsyscall => "[vsyscall]".into(),
        MMapPath::Rollup => "[rollup]".into(),
        MMapPath::Anonymous => String::new(),
        MMapPath::Vsys(k) => format!("/SYSV{k:08x}"),
        MMapPath::Other(s) => s.clone(),
    }
}

/// The target's VMAs with their flags (no page scan).
pub fn vmas(t: &Target) -> Result<Vec<VmaInfo>> {
    let pid = t.pid();
    let maps = t.process()?.smaps().map_err(|e| Error::proc(pid, e))?;
    let mut out = Vec::new();
    for m in maps {
        let fl = m.extension.vm_flags;
        let kind = kind_of(&m);
        let (start, end) = m.address;
        out.push(VmaInfo {
            start,
            end,
            perms: m.perms.as_str(),
            path: path_of(&m.pathname),
            kind,
            shared: fl.contains(VmFlags::SH)
                || m.perms.contains(procfs::process::MMPermissions::SHARED),
            locked: fl.contains(VmFlags::LO),
            hugetlb: fl.contains(VmFlags::HT),
            pfnmap: fl.contains(VmFlags::PF) || fl.contains(VmFlags::IO),
            pages: (end - start) / sys::page_size(),
            present: 0,
            file_pages: 0,
            present_shared: 0,
            swapped: 0,
            unpopulated: 0,
            swap_extents: 0,
            smaps_swap_bytes: m.extension.map.get("Swap").copied().unwrap_or(0),
        });
    }
    Ok(out)
}

/// Reader of `/proc/pid/pagemap` with large positional reads; entries are decoded by procfs.
pub struct Pagemap {
    file: File,
    pid: i32,
    buf: Vec<u8>,
}

/// Entries per pagemap read (512 KiB of pagemap = 256 MiB of address space).
const PAGEMAP_CHUNK: usize = 64 * 1024;

impl Pagemap {
    pub fn open(pid: i32) -> Result<Self> {
        let path = format!("/proc/{pid}/pagemap");
        let file = File::open(&path).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => Error::NoSuchProcess(pid),
            _ => Error::io(&path, e),
        })?;
        Ok(Self {
            file,
            pid,
            buf: vec![0; PAGEMAP_CHUNK * 8],
        })
    }

    /// Call `f(addr, info)` for every page of `[start, end)`.
    pub fn scan(&mut self, start: u64, end: u64, mut f: impl FnMut(u64, PageInfo)) -> Result<()> {
        let ps = sys::page_size();
        let mut page = start / ps;
        let end_page = end.div_ceil(ps);
        while page < end_page {
            let n = ((end_page - page) as usize).min(PAGEMAP_CHUNK);
            let bytes = &mut self.buf[..n * 8];
            let got = self
                .file
                .read_at(bytes, page * 8)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ESRCH) => Error::TargetExited {
                        pid: self.pid,
                        op: "pagemap read",
                    },
                    _ => Error::io(format!("/proc/{}/pagemap", self.pid), e),
                })?;
            if got == 0 {
                // The mm is gone (process exited).
                return Err(Error::TargetExited {
                    pid: self.pid,
                    op: "pagemap read",
                });
            }
            let got = got / 8;
            for (i, c) in self.buf[..got * 8].chunks_exact(8).enumerate() {
                let raw = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
                f((page + i as u64) * ps, PageInfo::parse_info(raw));
            }
            page += got as u64;
        }
        Ok(())
    }
}

/// `PAGEMAP_SCAN` (Linux ≥ 6.7): `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;
const PAGE_IS_PRESENT: u64 = 1 << 3;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

impl Pagemap {
    /// The present pages of `[start, end)` as address ranges, with the kernel filtering
    /// (`PAGEMAP_SCAN`, Linux ≥ 6.7: no 8 bytes per page copied and decoded). `Ok(None)` when
    /// the kernel lacks the ioctl (callers fall back to [`Pagemap::scan`]).
    pub fn present_ranges(&mut self, start: u64, end: u64) -> Result<Option<Vec<Range>>> {
        use std::os::fd::AsRawFd;
        let mut out: Vec<Range> = Vec::new();
        let mut regions = [PageRegion::default(); 256];
        let mut from = start;
        while from < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: from,
                end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                category_mask: PAGE_IS_PRESENT,
                return_mask: PAGE_IS_PRESENT,
                ..Default::default()
            };
            // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `regions` (vec_len
            // entries of the kernel's page_region layout), both alive across the call.
            let rc = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    PAGEMAP_SCAN as _,
                    &mut arg as *mut PmScanArg,
                )
            };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::ENOSYS)
                        if out.is_empty() && from == start =>
                    {
                        Ok(None)
                    }
                    Some(libc::ESRCH) => Err(Error::TargetExited {
                        pid: self.pid,
                        op: "PAGEMAP_SCAN",
                    }),
                    _ => Err(Error::io(
                        format!("/proc/{}/pagemap (PAGEMAP_SCAN)", self.pid),
                        e,
                    )),
                };
            }
            for r in &regions[..rc as usize] {
                match out.last_mut() {
                    Some(l) if l.end() == r.start => l.len += r.end - r.start,
                    _ => out.push(Range {
                        start: r.start,
                        len: r.end - r.start,
                    }),
                }
            }
            if arg.walk_end <= from {
                break;
            }
            from = arg.walk_end;
        }
        Ok(Some(out))
    }
}

/// Whether a present page is mapped exactly once (pagemap bit 56).
pub(crate) fn exclusive(info: &PageInfo) -> bool {
    use procfs::process::MemoryPageFlags;
    matches!(info, PageInfo::MemoryPage(f) if f.contains(MemoryPageFlags::MMAP_EXCLUSIVE))
}

/// Classify one pagemap entry: (present, file, swapped (type, offset)).
pub(crate) fn classify(info: &PageInfo) -> (bool, bool, Option<(u8, u64)>) {
    use procfs::process::{MemoryPageFlags, SwapPageFlags};
    match info {
        PageInfo::MemoryPage(f) => (
            f.contains(MemoryPageFlags::PRESENT),
            f.contains(MemoryPageFlags::FILE),
            None,
        ),
        PageInfo::SwapPage(f) => {
            let present = f.contains(SwapPageFlags::PRESENT);
            (
                present,
                f.contains(SwapPageFlags::FILE),
                Some((f.get_swap_type() as u8, f.get_swap_offset())),
            )
        }
    }
}

/// Counts one VMA's pages from the pagemap into `v` (present, file, shared, swapped,
/// unpopulated, swap extents) and appends its swapped pages to `all_swapped`; the extents.
fn scan_vma(pm: &mut Pagemap, v: &mut VmaInfo, all_swapped: &mut Vec<SwappedPage>) -> Result<u64> {
    let mut prev: Option<SwappedPage> = None;
    let (mut present, mut file, mut swapped, mut extents, mut shared) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let ps = sys::page_size();
    pm.scan(v.start, v.end, |addr, info| {
        let (p, f, s) = classify(&info);
        if p {
            present += 1;
            if f {
                file += 1;
            }
            if !exclusive(&info) {
                shared += 1;
            }
        } else if let Some((ty, off)) = s {
            swapped += 1;
            let sp = SwappedPage {
                addr,
                swap_type: ty,
                offset: off,
            };
            let continues = prev
                .is_some_and(|q| q.addr + ps == addr && q.swap_type == ty && q.offset + 1 == off);
            if !continues {
                extents += 1;
            }
            prev = Some(sp);
            all_swapped.push(sp);
        } else {
            prev = None;
        }
    })?;
    v.present = present;
    v.file_pages = file;
    v.present_shared = shared;
    v.swapped = swapped;
    v.unpopulated = v.pages - present - swapped;
    v.swap_extents = extents;
    Ok(extents)
}

/// Inspect a validated target.
pub fn inspect_target(t: &Target, opts: InspectOptions) -> Result<Inspection> {
    let mut vmas = vmas(t)?;
    let mut pm = Pagemap::open(t.pid())?;
    let mut all_swapped: Vec<SwappedPage> = Vec::new();
    let mut extents_total = 0u64;
    for v in vmas.iter_mut() {
        if v.kind == VmaKind::Special && v.path == "[vsyscall]" {
            // Not part of the mm: pagemap has nothing there.
            v.unpopulated = v.pages;
            continue;
        }
        extents_total += scan_vma(&mut pm, v, &mut all_swapped)?;
    }
    let mut totals = Totals::default();
    for v in &vmas {
        totals.pages += v.pages;
        totals.present += v.present;
        totals.file_pages += v.file_pages;
        totals.swapped += v.swapped;
        totals.unpopulated += v.unpopulated;
    }
    totals.present_anon = totals.present - totals.file_pages;
    let contiguity = contiguity(&all_swapped, extents_total);
    let cgroups = crate::cgroup::pid_cgroups(t.pid())?;
    let memcg = match Memcg::of_pid(t.pid())? {
        Some(m) => Some(MemcgFigures::read(&m)?),
        None => None,
    };
    if !opts.swapped_pages {
        all_swapped = Vec::new();
    }
    let (kinds, objects, objects_skipped, kinds_note) = match kind_usage(t.pid(), &vmas, &totals) {
        Ok((k, o, s)) => (Some(k), o, s, None),
        Err(e) => (
            None,
            vec![],
            vec![],
            Some(format!("object scan failed: {e}")),
        ),
    };
    Ok(Inspection {
        pid: t.pid(),
        comm: t.comm().to_string(),
        page_size: sys::page_size(),
        vmas,
        totals,
        contiguity,
        swapped_pages: all_swapped,
        cgroups,
        memcg,
        kinds,
        objects,
        objects_skipped,
        kinds_note,
    })
}

/// Per-kind usage: anon from the pagemap totals; shmem and file from the objects (mincore,
/// cachestat), their mapped pages from the VMAs that map them.
pub fn kind_usage(
    pid: i32,
    vmas: &[VmaInfo],
    totals: &Totals,
) -> Result<(ByKind<KindUsage>, Vec<ObjectUsage>, Vec<SkippedObject>)> {
    let ps = sys::page_size();
    let (objs, mut skipped) = crate::memkind::objects(pid)?;
    let (usage, _, sk) = crate::memkind::object_usage(pid, &objs);
    skipped.extend(sk);
    let mut k: ByKind<KindUsage> = ByKind {
        anon: KindUsage {
            resident_bytes: totals.present_anon * ps,
            mapped_bytes: totals.present_anon * ps,
            out_bytes: totals.swapped * ps,
            objects: 0,
        },
        ..Default::default()
    };
    for (o, u) in objs.iter().zip(&usage) {
        let ku = k.get_mut(o.kind);
        ku.objects += 1;
        ku.resident_bytes += u.resident_pages * ps;
        for h in &o.handles {
            if let Handle::Mapped { start, .. } = h {
                if let Some(v) = vmas.iter().find(|v| v.start == *start) {
                    ku.mapped_bytes += v.file_pages * ps;
                    // Before Linux 6.5 (no cachestat): smaps Swap of shared mappings of shmem.
                    if o.kind == MemKind::Shmem && u.swapped_pages.is_none() && v.shared {
                        ku.out_bytes += v.smaps_swap_bytes;
                    }
                }
            }
        }
        match o.kind {
            MemKind::Shmem => ku.out_bytes += u.swapped_pages.unwrap_or(0) * ps,
            _ => ku.out_bytes += (u.interest_pages - u.resident_pages.min(u.interest_pages)) * ps,
        }
    }
    Ok((k, usage, skipped))
}

/// Contiguity figures of a set of swapped pages (in address order) with `extents` already
/// counted in address order.
pub fn contiguity(pages: &[SwappedPage], extents: u64) -> Contiguity {
    let mut c = Contiguity {
        extents,
        ..Default::default()
    };
    if pages.is_empty() {
        return c;
    }
    let mut slots: Vec<(u8, u64)> = pages.iter().map(|p| (p.swap_type, p.offset)).collect();
    slots.sort_unstable();
    let mut runs = 0;
    let mut prev: Option<(u8, u64)> = None;
    let mut ty_min: Option<(u8, u64)> = None;
    for &(ty, off) in &slots {
        if !prev.is_some_and(|(pt, po)| pt == ty && po + 1 == off) {
            runs += 1;
        }
        match ty_min {
            Some((t0, _)) if t0 == ty => {}
            _ => {
                if let (Some((_, lo)), Some((_, hi))) = (ty_min, prev) {
                    c.span_pages += hi - lo + 1;
                }
                ty_min = Some((ty, off));
                c.swap_types.push(ty);
            }
        }
        prev = Some((ty, off));
    }
    if let (Some((_, lo)), Some((_, hi))) = (ty_min, prev) {
        c.span_pages += hi - lo + 1;
    }
    c.offset_runs = runs;
    c.min_offset = slots.iter().map(|s| s.1).min();
    c.max_offset = slots.iter().map(|s| s.1).max();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(addr: u64, ty: u8, offset: u64) -> SwappedPage {
        SwappedPage {
            addr,
            swap_type: ty,
            offset,
        }
    }

    #[test]
    fn contiguity_counts_runs_and_span() {
        let pages = [
            sp(0x1000, 0, 10),
            sp(0x2000, 0, 11),
            sp(0x3000, 0, 5),
            sp(0x4000, 0, 6),
            sp(0x5000, 1, 100),
        ];
        let c = contiguity(&pages, 3);
        assert_eq!(c.extents, 3);
        // sorted: (0,5)(0,6) (0,10)(0,11) (1,100) -> 3 runs
        assert_eq!(c.offset_runs, 3);
        // type 0: 11-5+1 = 7, type 1: 1
        assert_eq!(c.span_pages, 8);
        assert_eq!(c.swap_types, vec![0, 1]);
        assert_eq!(c.min_offset, Some(5));
        assert_eq!(c.max_offset, Some(100));
        assert_eq!(contiguity(&[], 0).span_pages, 0);
    }
}
