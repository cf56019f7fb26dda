//! Every kind of memory an app has, and where each kind can be seen from outside the app.
//!
//! - [`MemKind::Anon`]: private anonymous memory (heap, stacks, copy-on-write pages of private
//!   file mappings). Swap-backed; `/proc/PID/pagemap` shows present pages and swap entries
//!   (with their swap slots).
//! - [`MemKind::Shmem`]: shared memory: tmpfs files, memfd, SysV shm, shared anonymous mappings
//!   (and private mappings of tmpfs files). Swap-backed, but once swapped pagemap shows
//!   *nothing* for it (the swap entry lives in the object's page cache, not in a PTE). So it is
//!   seen through the object itself: an fd from `/proc/PID/map_files/<range>` (works for
//!   deleted files, memfd and SysV segments: root only) or `/proc/PID/fd/N`, mapped read-only
//!   in *our* address space, `mincore(2)` per page (page cache and swap cache both count as
//!   resident), `cachestat(2)` (Linux ≥ 6.5: swap entries count as evicted) for the swapped
//!   count, smaps `Swap:` as the fallback.
//! - [`MemKind::File`]: the page cache of regular files the app maps or has open. Seen the same
//!   way (`mincore` on our own read-only mapping of the file); "out" pages come back from the
//!   file, not from swap.
//!
//! Safety rules (no SIGBUS anywhere, no side effects on the app): objects are found with
//! `stat`/`statfs` through the magic links before anything is opened; only regular files on
//! page-cache filesystems are opened (never devices, FIFOs, sockets, procfs/sysfs/FUSE files),
//! read-only, `O_NOATIME | O_NONBLOCK`; our mappings of them are only ever passed to
//! `mincore`/`madvise`, never dereferenced, so a file truncated under us cannot fault.

use crate::error::{Error, Result};
use crate::sys::{self, Range};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The kinds of memory torpor accounts, purges and restores separately.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MemKind {
    /// Private anonymous memory (swap-backed; visible in pagemap).
    Anon,
    /// Shared memory: tmpfs/memfd/SysV/shared anonymous (swap-backed; invisible in pagemap once
    /// swapped).
    Shmem,
    /// Page cache of regular files the app maps or has open.
    File,
}

impl MemKind {
    pub const ALL: [MemKind; 3] = [MemKind::Anon, MemKind::Shmem, MemKind::File];

    pub fn as_str(self) -> &'static str {
        match self {
            MemKind::Anon => "anon",
            MemKind::Shmem => "shmem",
            MemKind::File => "file",
        }
    }
}

impl std::fmt::Display for MemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value per memory kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ByKind<T> {
    pub anon: T,
    pub shmem: T,
    pub file: T,
}

impl<T> ByKind<T> {
    pub fn get(&self, k: MemKind) -> &T {
        match k {
            MemKind::Anon => &self.anon,
            MemKind::Shmem => &self.shmem,
            MemKind::File => &self.file,
        }
    }

    pub fn get_mut(&mut self, k: MemKind) -> &mut T {
        match k {
            MemKind::Anon => &mut self.anon,
            MemKind::Shmem => &mut self.shmem,
            MemKind::File => &mut self.file,
        }
    }
}

impl ByKind<u64> {
    pub fn total(&self) -> u64 {
        self.anon + self.shmem + self.file
    }
}

impl std::ops::AddAssign for ByKind<u64> {
    fn add_assign(&mut self, o: Self) {
        self.anon += o.anon;
        self.shmem += o.shmem;
        self.file += o.file;
    }
}

impl From<ByKind<u64>> for torpor_api::KindCounts {
    fn from(b: ByKind<u64>) -> Self {
        Self {
            anon: b.anon,
            shmem: b.shmem,
            file: b.file,
        }
    }
}

/// Memory of one kind, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KindUsage {
    /// In RAM. Anon: present in the target's page tables. Shmem: object pages in the page cache
    /// or the swap cache. File: pages of the app's file ranges in the page cache.
    pub resident_bytes: u64,
    /// Of the resident bytes, mapped in the target's page tables (pagemap present).
    pub mapped_bytes: u64,
    /// Out of RAM. Anon: swap entries in the page tables. Shmem: object pages on swap
    /// (`cachestat` evicted count; smaps `Swap:` of its mappings before Linux 6.5). File: pages of
    /// the app's file ranges not in the page cache (they come back from the file).
    pub out_bytes: u64,
    /// Shmem and file: objects (distinct inodes) counted.
    pub objects: u64,
}

/// A run of consecutive pages: page indexes of a file, or page numbers (address / page size)
/// of an address space.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PageRun {
    pub first: u64,
    pub count: u64,
}

impl PageRun {
    pub fn end(&self) -> u64 {
        self.first + self.count
    }
}

/// Sort and merge (overlapping or adjacent runs become one).
pub fn normalize(mut v: Vec<PageRun>) -> Vec<PageRun> {
    v.retain(|r| r.count > 0);
    v.sort_unstable();
    let mut out: Vec<PageRun> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(l) if r.first <= l.end() => l.count = l.count.max(r.end() - l.first),
            _ => out.push(r),
        }
    }
    out
}

/// Pages in both (inputs normalized).
pub fn intersect(a: &[PageRun], b: &[PageRun]) -> Vec<PageRun> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let s = a[i].first.max(b[j].first);
        let e = a[i].end().min(b[j].end());
        if s < e {
            out.push(PageRun {
                first: s,
                count: e - s,
            });
        }
        if a[i].end() < b[j].end() {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Pages of `a` not in `b` (inputs normalized).
pub fn subtract(a: &[PageRun], b: &[PageRun]) -> Vec<PageRun> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        let mut s = r.first;
        let e = r.end();
        while j < b.len() && b[j].end() <= s {
            j += 1;
        }
        let mut k = j;
        while s < e {
            match b.get(k) {
                Some(x) if x.first < e => {
                    if x.first > s {
                        out.push(PageRun {
                            first: s,
                            count: x.first - s,
                        });
                    }
                    s = s.max(x.end());
                    k += 1;
                }
                _ => {
                    out.push(PageRun {
                        first: s,
                        count: e - s,
                    });
                    s = e;
                }
            }
        }
    }
    out
}

/// Pages in `v`.
pub fn pages(v: &[PageRun]) -> u64 {
    v.iter().map(|r| r.count).sum()
}

/// Clip runs to the first `limit` pages.
pub fn clip(v: &[PageRun], limit: u64) -> Vec<PageRun> {
    v.iter()
        .filter(|r| r.first < limit)
        .map(|r| PageRun {
            first: r.first,
            count: r.count.min(limit - r.first),
        })
        .collect()
}

/// Page runs of an address range list (page-aligned ranges).
pub fn runs_of_ranges(ranges: &[Range], ps: u64) -> Vec<PageRun> {
    normalize(
        ranges
            .iter()
            .map(|r| PageRun {
                first: r.start / ps,
                count: r.end().div_ceil(ps) - r.start / ps,
            })
            .collect(),
    )
}

/// Address ranges of page runs.
pub fn ranges_of_runs(runs: &[PageRun], ps: u64) -> Vec<Range> {
    runs.iter()
        .map(|r| Range {
            start: r.first * ps,
            len: r.count * ps,
        })
        .collect()
}

/// An inode: what identifies a shmem or file object across handles.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectKey {
    pub dev: u64,
    pub ino: u64,
}

/// How the target holds an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handle {
    /// A VMA `[start, end)` mapping the object from page `pgoff`.
    Mapped {
        start: u64,
        end: u64,
        pgoff: u64,
        shared: bool,
    },
    /// An open file descriptor.
    Fd { fd: i32 },
}

impl Handle {
    /// The magic link in `/proc/PID` that opens the object.
    pub fn proc_path(&self, pid: i32) -> PathBuf {
        match self {
            Handle::Mapped { start, end, .. } => {
                PathBuf::from(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
            }
            Handle::Fd { fd } => PathBuf::from(format!("/proc/{pid}/fd/{fd}")),
        }
    }
}

/// A shmem or file object of the target, with the file pages the target is interested in
/// (what it maps; the whole file when it has it open).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemObject {
    pub kind: MemKind,
    pub key: ObjectKey,
    /// The path `/proc` shows (`/memfd:name (deleted)`, `/SYSV0000002a (deleted)`,
    /// `/dev/zero (deleted)` for shared anonymous memory).
    pub path: String,
    /// Size when found: an object shorter at a restore was truncated ([`reopen`]).
    pub size: u64,
    /// Modification time when found: for the record only ([`reopen`] accepts an object the
    /// app wrote to since).
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    /// The path resolved to this very inode when the object was found (false for memfd, SysV,
    /// shared anonymous memory and deleted files: those are reachable only through the target).
    pub by_path: bool,
    pub handles: Vec<Handle>,
    /// File page indexes the target uses (normalized; clipped to the size).
    pub interest: Vec<PageRun>,
    /// Stops since the target last held it (0: it holds it now). A file the app reads and
    /// closes again (PostgreSQL's tables: a backend's descriptors go with it) is remembered from
    /// the last plan for a few Stops ([`crate::ResidencySnapshot::remember`]); its `handles`
    /// are then those of the Stop that found it.
    #[serde(default)]
    pub unheld_stops: u32,
}

/// A handle the scan did not follow, and why (devices, pseudo files, FUSE...).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SkippedObject {
    pub path: String,
    pub reason: String,
}

// statfs f_type values of filesystems whose "regular files" are not page cache we may read
// (or whose reads could block on the frozen app itself: FUSE).
const PSEUDO_FS: &[(i64, &str)] = &[
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x6265_6570, "configfs"),
    (0xcafe_4a11, "bpffs"),
    (0x1cd1, "devpts"),
    (0x6573_5546, "fuse"),
    (0x6566_6474, "pstore"),
    (0xde5e_81e4, "efivarfs"),
    (0x9584_58f6, "hugetlbfs"),
    (0x6e73_6673, "nsfs"),
    (0x5346_414f, "openpromfs"),
];
const TMPFS_MAGIC: i64 = 0x0102_1994;
const NOT_REGULAR: &str = "not a regular file";

/// `statfs(path).f_type` (follows magic links).
fn fs_type(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `st` is a zeroed statfs the kernel fills; `c` is a valid NUL-terminated path that
    // lives across the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above: both pointers are valid for the call.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Classify the object behind a magic link without opening it: `Ok(kind, metadata)` for a
/// regular file on a page-cache filesystem, `Err(reason)` otherwise.
fn classify_link(link: &Path) -> std::result::Result<(MemKind, std::fs::Metadata), String> {
    let md = std::fs::metadata(link).map_err(|e| format!("stat: {e}"))?;
    if !md.file_type().is_file() {
        return Err(NOT_REGULAR.into());
    }
    let ty = fs_type(link).map_err(|e| format!("statfs: {e}"))?;
    if let Some((_, name)) = PSEUDO_FS.iter().find(|(m, _)| *m == ty) {
        return Err(format!("on {name} (not page cache torpor may read)"));
    }
    Ok((
        if ty == TMPFS_MAGIC {
            MemKind::Shmem
        } else {
            MemKind::File
        },
        md,
    ))
}

/// Open an object read-only through `path` (a magic link or a real path), no atime, never
/// blocking on a lease.
pub fn open_readonly(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .or_else(|e| {
            // O_NOATIME needs ownership or CAP_FOWNER; retry without it.
            if e.raw_os_error() == Some(libc::EPERM) {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open(path)
            } else {
                Err(e)
            }
        })
}

/// The objects found so far, by inode.
#[derive(Default)]
struct Collector {
    by_key: BTreeMap<ObjectKey, MemObject>,
    skipped: Vec<SkippedObject>,
}

impl Collector {
    fn add(
        &mut self,
        kind: MemKind,
        md: &std::fs::Metadata,
        path: String,
        h: Handle,
        interest: PageRun,
    ) {
        let key = ObjectKey {
            dev: md.dev(),
            ino: md.ino(),
        };
        let o = self.by_key.entry(key).or_insert_with(|| MemObject {
            kind,
            key,
            by_path: !path.ends_with(" (deleted)")
                && std::fs::metadata(&path)
                    .map(|m| m.dev() == md.dev() && m.ino() == md.ino())
                    .unwrap_or(false),
            path,
            size: md.size(),
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            handles: Vec::new(),
            interest: Vec::new(),
            unheld_stops: 0,
        });
        o.handles.push(h);
        o.interest.push(interest);
    }

    /// The file-backed VMAs of `pid` (`/proc/PID/maps` + `map_files`).
    fn scan_maps(&mut self, pid: i32) -> Result<()> {
        use procfs::process::{MMPermissions, MMapPath};
        let proc = procfs::process::Process::new(pid).map_err(|e| Error::proc(pid, e))?;
        let maps = proc.maps().map_err(|e| Error::proc(pid, e))?;
        let ps = sys::page_size();
        for m in &maps {
            if m.inode == 0 {
                continue;
            }
            let path = match &m.pathname {
                MMapPath::Path(p) => p.display().to_string(),
                MMapPath::Vsys(k) => format!("/SYSV{k:08x} (deleted)"),
                MMapPath::Other(s) => s.clone(),
                _ => continue,
            };
            let (start, end) = m.address;
            let h = Handle::Mapped {
                start,
                end,
                pgoff: m.offset / ps,
                shared: m.perms.contains(MMPermissions::SHARED),
            };
            match classify_link(&h.proc_path(pid)) {
                Ok((kind, md)) => {
                    let run = PageRun {
                        first: m.offset / ps,
                        count: (end - start) / ps,
                    };
                    self.add(kind, &md, path, h, run);
                }
                Err(reason) => {
                    if !Path::new(&format!("/proc/{pid}/maps")).exists() {
                        return Err(Error::TargetExited {
                            pid,
                            op: "object scan",
                        });
                    }
                    self.skipped.push(SkippedObject { path, reason });
                }
            }
        }
        Ok(())
    }

    /// The open regular files of `pid` (`/proc/PID/fd`): the whole file is of interest.
    fn scan_fds(&mut self, pid: i32) -> Result<()> {
        let ps = sys::page_size();
        let fd_dir = format!("/proc/{pid}/fd");
        let rd = std::fs::read_dir(&fd_dir).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => Error::TargetExited {
                pid,
                op: "object scan",
            },
            _ => Error::io(&fd_dir, e),
        })?;
        for e in rd.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let link = e.path();
            let Ok(target) = std::fs::read_link(&link) else {
                continue;
            };
            let path = target.display().to_string();
            if !path.starts_with('/') {
                continue; // socket:[..], pipe:[..], anon_inode:[..]
            }
            match classify_link(&link) {
                Ok((kind, md)) => {
                    let count = md.size().div_ceil(ps);
                    self.add(
                        kind,
                        &md,
                        path,
                        Handle::Fd { fd },
                        PageRun { first: 0, count },
                    );
                }
                // Devices, pipes, sockets behind a path: not memory of the app's.
                Err(reason) if reason == NOT_REGULAR => {}
                Err(reason) => self.skipped.push(SkippedObject { path, reason }),
            }
        }
        Ok(())
    }

    /// The objects, each one's interest normalized and clipped to its size.
    fn finish(self) -> (Vec<MemObject>, Vec<SkippedObject>) {
        let ps = sys::page_size();
        let mut out: Vec<MemObject> = self.by_key.into_values().collect();
        for o in out.iter_mut() {
            o.interest = clip(
                &normalize(std::mem::take(&mut o.interest)),
                o.size.div_ceil(ps),
            );
        }
        (out, self.skipped)
    }
}

/// The shmem and file objects of `pid`: from its file-backed VMAs (`/proc/PID/maps` +
/// `map_files`) and its open regular files (`/proc/PID/fd`). Needs root (map_files).
pub fn objects(pid: i32) -> Result<(Vec<MemObject>, Vec<SkippedObject>)> {
    let mut c = Collector::default();
    c.scan_maps(pid)?;
    c.scan_fds(pid)?;
    Ok(c.finish())
}

/// Why an object could not be opened for a restore (or a residency check) any more.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gone {
    /// The path no longer exists.
    Deleted,
    /// The path names another inode now.
    Replaced,
    /// Shorter than when it was recorded (truncated): pages past the new end are gone, and
    /// which of the rest still hold what the app used is unknown.
    Truncated { was: u64, now: u64 },
    /// Reachable only through the target, which holds it no more (or exited).
    NotHeld,
    /// Could not be opened or mapped.
    Unreadable(String),
}

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gone::Deleted => f.write_str("deleted"),
            Gone::Replaced => f.write_str("replaced (the path names another inode)"),
            Gone::Truncated { was, now } => write!(f, "truncated ({was} -> {now} bytes)"),
            Gone::NotHeld => f.write_str("no longer held by the target"),
            Gone::Unreadable(e) => write!(f, "unreadable: {e}"),
        }
    }
}

/// Reopen an object recorded earlier, checking it is the same inode, not truncated:
/// - an object reachable by path when recorded is reopened **by path**; deleted, replaced or
///   truncated since → refused with the reason. Written to or grown since is fine: the app
///   runs while the background fetch reopens its objects after the thaw, and an app that
///   writes its own files (a database's tables and WAL) changes their mtime and size within
///   milliseconds — refusing those (as torpor did until session 17, on any mtime or size
///   change) lost PostgreSQL's table page cache at every Start. Reading ahead a file whose
///   content changed is harmless: the page cache holds what the file holds now;
/// - an object reachable only through the target (memfd, SysV, shared anonymous, a file
///   already deleted when recorded) is reopened through the target's own handles, checked
///   by inode (it cannot have been replaced under a path; the caller clips to its size).
pub fn reopen(pid: i32, o: &MemObject) -> std::result::Result<File, Gone> {
    let same = |md: &std::fs::Metadata| -> std::result::Result<(), Gone> {
        if md.dev() != o.key.dev || md.ino() != o.key.ino {
            return Err(Gone::Replaced);
        }
        if md.size() < o.size {
            return Err(Gone::Truncated {
                was: o.size,
                now: md.size(),
            });
        }
        Ok(())
    };
    if o.by_path {
        let md = match std::fs::metadata(&o.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Gone::Deleted),
            Err(e) => return Err(Gone::Unreadable(e.to_string())),
        };
        same(&md)?;
        if !md.file_type().is_file() {
            return Err(Gone::Replaced);
        }
        let f = open_readonly(Path::new(&o.path)).map_err(|e| Gone::Unreadable(e.to_string()))?;
        // The path could have changed between the stat and the open.
        same(&f.metadata().map_err(|e| Gone::Unreadable(e.to_string()))?)?;
        return Ok(f);
    }
    // Reachable only through the target: the same inode is all that matters (the target itself
    // may have written or resized it before it stopped; ranges are clipped to the current size
    // by every user, and nothing ever touches the mapping's memory).
    for h in &o.handles {
        let link = h.proc_path(pid);
        let Ok(md) = std::fs::metadata(&link) else {
            continue;
        };
        if md.dev() != o.key.dev || md.ino() != o.key.ino || !md.file_type().is_file() {
            continue;
        }
        let f = open_readonly(&link).map_err(|e| Gone::Unreadable(e.to_string()))?;
        let md = f.metadata().map_err(|e| Gone::Unreadable(e.to_string()))?;
        if md.dev() != o.key.dev || md.ino() != o.key.ino {
            return Err(Gone::Replaced);
        }
        return Ok(f);
    }
    Err(Gone::NotHeld)
}

/// Open an object found just now by [`objects`] (through the target's handles).
pub fn open_current(pid: i32, o: &MemObject) -> std::io::Result<File> {
    let mut last = std::io::Error::from_raw_os_error(libc::ENOENT);
    for h in &o.handles {
        match open_readonly(&h.proc_path(pid)) {
            Ok(f) => match f.metadata() {
                Ok(md) if md.dev() == o.key.dev && md.ino() == o.key.ino => return Ok(f),
                Ok(_) => last = std::io::Error::from_raw_os_error(libc::ESTALE),
                Err(e) => last = e,
            },
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `runs` cut into pieces of at most `max` pages, in order.
pub fn chunks(runs: &[PageRun], max: u64) -> Vec<Vec<PageRun>> {
    let max = max.max(1);
    let mut out: Vec<Vec<PageRun>> = Vec::new();
    let mut cur: Vec<PageRun> = Vec::new();
    let mut n = 0u64;
    for r in runs {
        let mut r = *r;
        while r.count > 0 {
            let take = r.count.min(max - n);
            cur.push(PageRun {
                first: r.first,
                count: take,
            });
            n += take;
            // No overflow: `take <= r.count` and `r.first + r.count` is a page index of a
            // mapped object (its end fits in u64).
            r.first += take;
            r.count -= take;
            if n == max {
                out.push(std::mem::take(&mut cur));
                n = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A read-only shared mapping of an object in our own address space, used only for
/// `mincore`/`madvise` (never dereferenced: a truncated file cannot SIGBUS us).
pub struct ObjectView {
    file: File,
    map: sys::FileMapping,
    pages: u64,
}

impl ObjectView {
    /// Map `file`'s first `pages` pages (at least one; its size when `None`).
    pub fn new(file: File, pages: Option<u64>) -> std::io::Result<Self> {
        let ps = sys::page_size();
        let size = file.metadata()?.len();
        let pages = pages.unwrap_or_else(|| size.div_ceil(ps)).max(1);
        let map = sys::FileMapping::new(&file, (pages * ps) as usize)?;
        Ok(Self { file, map, pages })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The resident pages (page cache or swap cache) among `runs` (clipped to the mapping).
    pub fn resident(&self, runs: &[PageRun]) -> std::io::Result<Vec<PageRun>> {
        let ps = sys::page_size();
        let mut out: Vec<PageRun> = Vec::new();
        let mut vec = Vec::new();
        for r in clip(runs, self.pages) {
            let mut first = r.first;
            while first < r.end() {
                let n = (r.end() - first).min(1 << 16);
                vec.resize(n as usize, 0u8);
                // SAFETY: [ptr + first*ps, + n*ps) lies inside our live mapping (clipped to
                // `pages`); `vec` has room for one byte per page.
                let rc = unsafe {
                    libc::mincore(
                        self.map.ptr().add((first * ps) as usize) as *mut libc::c_void,
                        (n * ps) as usize,
                        vec.as_mut_ptr(),
                    )
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for (i, b) in vec.iter().enumerate() {
                    if b & 1 != 0 {
                        let p = first + i as u64;
                        match out.last_mut() {
                            Some(l) if l.end() == p => l.count += 1,
                            _ => out.push(PageRun { first: p, count: 1 }),
                        }
                    }
                }
                first += n;
            }
        }
        Ok(out)
    }

    /// `madvise(advice)` over `runs` of our mapping (clipped). Returns bytes advised.
    pub fn madvise(&self, runs: &[PageRun], advice: i32) -> std::io::Result<u64> {
        let ps = sys::page_size();
        let mut done = 0;
        for r in clip(runs, self.pages) {
            // SAFETY: the range lies inside our live mapping; madvise(WILLNEED/POPULATE_READ/
            // DONTNEED/PAGEOUT) on a read-only shared file mapping does not touch our memory
            // safety (a POPULATE_READ failure past EOF is reported as EFAULT, not a signal).
            let rc = unsafe {
                libc::madvise(
                    self.map.ptr().add((r.first * ps) as usize) as *mut libc::c_void,
                    (r.count * ps) as usize,
                    advice,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            done += r.count * ps;
        }
        Ok(done)
    }
}

/// `posix_fadvise(advice)` over `runs` (file page indexes), clipped to the file's current size.
pub fn fadvise(file: &File, runs: &[PageRun], advice: i32) -> std::io::Result<u64> {
    let ps = sys::page_size();
    let limit = file.metadata()?.len().div_ceil(ps);
    let mut done = 0;
    for r in clip(runs, limit) {
        // SAFETY: integer arguments on an fd we own.
        let rc = unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                (r.first * ps) as i64,
                (r.count * ps) as i64,
                advice,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        done += r.count * ps;
    }
    Ok(done)
}

/// The pages of `runs` (file page indexes, normalized) that hold data, by
/// `lseek(SEEK_DATA/SEEK_HOLE)`: holes (never written, or punched) left out. On tmpfs a page on
/// swap is data. A file system without the two (they then see the whole file as data) loses
/// nothing.
pub fn data_runs(file: &File, runs: &[PageRun]) -> std::io::Result<Vec<PageRun>> {
    let ps = sys::page_size();
    let limit = file.metadata()?.len().div_ceil(ps);
    let seek = |off: u64, whence: i32| -> std::io::Result<Option<u64>> {
        // SAFETY: integer arguments on an fd we own; the file offset it moves is our own.
        let r = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        // ENXIO: no data (or no hole) at or after `off`.
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    };
    let mut data = Vec::new();
    let end = limit * ps;
    let mut off = runs.first().map_or(end, |r| r.first * ps);
    while off < end {
        let Some(d) = seek(off, libc::SEEK_DATA)? else {
            break;
        };
        let h = seek(d, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        if h > d {
            data.push(PageRun {
                first: d / ps,
                count: h.div_ceil(ps) - d / ps,
            });
        }
        off = h.max(d + 1);
    }
    Ok(intersect(&clip(runs, limit), &normalize(data)))
}

/// `cachestat(2)` figures of a file range (Linux ≥ 6.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStat {
    pub cache: u64,
    pub dirty: u64,
    pub writeback: u64,
    /// For shmem: pages on swap (whether or not also in the swap cache).
    pub evicted: u64,
    pub recently_evicted: u64,
}

/// `cachestat(fd, [off, off+len), ...)`; `Ok(None)` when the kernel lacks it (ENOSYS).
pub fn cachestat(file: &File, off: u64, len: u64) -> std::io::Result<Option<CacheStat>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        const SYS_CACHESTAT: libc::c_long = 451;
        #[repr(C)]
        struct CsRange {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Cs {
            nr_cache: u64,
            nr_dirty: u64,
            nr_writeback: u64,
            nr_evicted: u64,
            nr_recently_evicted: u64,
        }
        let r = CsRange { off, len };
        let mut cs = Cs::default();
        // SAFETY: `r` and `cs` are valid #[repr(C)] structs matching the kernel's
        // cachestat_range/cachestat layouts, alive across the call.
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &r as *const CsRange,
                &mut cs as *mut Cs,
                0u32,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOSYS) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(CacheStat {
            cache: cs.nr_cache,
            dirty: cs.nr_dirty,
            writeback: cs.nr_writeback,
            evicted: cs.nr_evicted,
            recently_evicted: cs.nr_recently_evicted,
        }))
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (file, off, len);
        Ok(None)
    }
}

/// One object's residency now.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObjectUsage {
    pub kind: MemKind,
    pub path: String,
    pub key: ObjectKey,
    pub size: u64,
    /// Pages of interest (mapped ranges; the whole file when open).
    pub interest_pages: u64,
    /// Of those, resident (page cache or swap cache).
    pub resident_pages: u64,
    /// Shmem: pages on swap (cachestat; `None` before Linux 6.5).
    pub swapped_pages: Option<u64>,
}

/// Residency of every object of `pid` (found by [`objects`]): per object, and resident runs.
pub fn object_usage(
    pid: i32,
    objs: &[MemObject],
) -> (Vec<ObjectUsage>, Vec<Vec<PageRun>>, Vec<SkippedObject>) {
    let ps = sys::page_size();
    let mut usage = Vec::with_capacity(objs.len());
    let mut resident = Vec::with_capacity(objs.len());
    let mut skipped = Vec::new();
    for o in objs {
        let res = open_current(pid, o).and_then(|f| {
            let swapped = if o.kind == MemKind::Shmem {
                let mut sw = Some(0u64);
                for r in &o.interest {
                    match cachestat(&f, r.first * ps, r.count * ps)? {
                        Some(c) => sw = sw.map(|s| s + c.evicted),
                        None => sw = None,
                    }
                }
                sw
            } else {
                None
            };
            let v = ObjectView::new(f, None)?;
            Ok((v.resident(&o.interest)?, swapped))
        });
        let (runs, swapped) = res.unwrap_or_else(|e| {
            skipped.push(SkippedObject {
                path: o.path.clone(),
                reason: format!("open/mincore: {e}"),
            });
            (Vec::new(), None)
        });
        usage.push(ObjectUsage {
            kind: o.kind,
            path: o.path.clone(),
            key: o.key,
            size: o.size,
            interest_pages: pages(&o.interest),
            resident_pages: pages(&runs),
            swapped_pages: swapped,
        });
        resident.push(runs);
    }
    (usage, resident, skipped)
}

#[cfg(test)]
mod tests_memkind {
    use super::*;

    fn r(first: u64, count: u64) -> PageRun {
        PageRun { first, count }
    }

    #[test]
    fn chunks_cut_runs_at_the_size_and_keep_the_order() {
        let c = chunks(&[r(10, 3), r(20, 6), r(40, 1)], 4);
        assert_eq!(
            c,
            vec![
                vec![r(10, 3), r(20, 1)],
                vec![r(21, 4)],
                vec![r(25, 1), r(40, 1)]
            ]
        );
        assert_eq!(chunks(&[], 4), Vec::<Vec<PageRun>>::new());
        assert_eq!(chunks(&[r(0, 2)], 0), vec![vec![r(0, 1)], vec![r(1, 1)]]);
    }

    #[test]
    fn run_algebra() {
        let a = normalize(vec![r(10, 5), r(0, 2), r(14, 4), r(2, 1), r(30, 0)]);
        assert_eq!(a, vec![r(0, 3), r(10, 8)]);
        let b = normalize(vec![r(1, 1), r(12, 2), r(17, 10)]);
        assert_eq!(intersect(&a, &b), vec![r(1, 1), r(12, 2), r(17, 1)]);
        assert_eq!(subtract(&a, &b), vec![r(0, 1), r(2, 1), r(10, 2), r(14, 3)]);
        assert_eq!(pages(&a), 11);
        assert_eq!(clip(&a, 12), vec![r(0, 3), r(10, 2)]);
        assert_eq!(subtract(&a, &[]), a);
        assert_eq!(intersect(&a, &[]), vec![]);
        let ps = 4096;
        let rs = ranges_of_runs(&a, ps);
        assert_eq!(runs_of_ranges(&rs, ps), a);
    }

    #[test]
    fn data_runs_leave_out_the_holes_of_shared_memory() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::fd::FromRawFd;
        let ps = sys::page_size();
        // SAFETY: a valid NUL-terminated name; the fd returned is owned by the File below.
        let fd = unsafe { libc::memfd_create(c"torpor-data-runs".as_ptr(), 0) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let mut f = unsafe { File::from_raw_fd(fd) };
        f.set_len(10 * ps).unwrap();
        for p in [0, 1, 5, 9] {
            f.seek(SeekFrom::Start(p * ps)).unwrap();
            f.write_all(&[1]).unwrap();
        }
        assert_eq!(
            data_runs(&f, &[r(0, 10)]).unwrap(),
            vec![r(0, 2), r(5, 1), r(9, 1)]
        );
        // Only inside the runs asked about, clipped to the size.
        assert_eq!(
            data_runs(&f, &[r(1, 5), r(8, 100)]).unwrap(),
            vec![r(1, 1), r(5, 1), r(9, 1)]
        );
        assert_eq!(data_runs(&f, &[r(2, 3)]).unwrap(), vec![]);
        assert_eq!(data_runs(&f, &[]).unwrap(), vec![]);
    }

    #[test]
    fn view_of_own_file_sees_its_cache_and_never_faults_past_eof() {
        let dir = std::env::temp_dir().join(format!("torpor-memkind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let ps = sys::page_size();
        std::fs::write(&p, vec![7u8; (8 * ps) as usize]).unwrap();
        let f = File::open(&p).unwrap();
        // Map 16 pages of an 8-page file: mincore past EOF answers "not resident".
        let v = ObjectView::new(f, Some(16)).unwrap();
        let res = v.resident(&[r(0, 16)]).unwrap();
        assert!(pages(&res) <= 8, "{res:?}");
        assert!(res.iter().all(|x| x.end() <= 8));
        // WILLNEED past EOF is harmless.
        v.madvise(&[r(0, 16)], libc::MADV_WILLNEED).unwrap();
        fadvise(v.file(), &[r(0, 100)], libc::POSIX_FADV_WILLNEED).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
