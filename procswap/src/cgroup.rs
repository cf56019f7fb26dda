//! Finding, creating and using cgroups (v2 and v1 memory/freezer) of a process.
//!
//! Hosts differ: a pure cgroup2 system has `memory.reclaim` and `cgroup.freeze` in one tree; a
//! v1 host has `memory` and `freezer` hierarchies; hybrids have v1 controllers plus a bare v2
//! mount (no controllers) whose non-root cgroups still offer `cgroup.freeze`. Everything here
//! works per controller, so any mix can be used.

use crate::error::{Error, Result};
use crate::sys;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the cgroup hierarchies are mounted on this host.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Mounts {
    /// The cgroup2 mount (e.g. `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
    pub v2: Option<Mount>,
    /// The v1 hierarchy carrying the `memory` controller.
    pub v1_memory: Option<Mount>,
    /// The v1 hierarchy carrying the `freezer` controller.
    pub v1_freezer: Option<Mount>,
}

/// A mounted hierarchy: where, and which cgroup path is its root (not `/` inside containers).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub root: String,
}

impl Mount {
    /// Absolute path of the cgroup `rel` (as in `/proc/pid/cgroup`) under this mount.
    fn dir_of(&self, rel: &str) -> Option<PathBuf> {
        let root = self.root.trim_end_matches('/');
        let rest = rel.strip_prefix(root)?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        let rest = rest.trim_start_matches('/');
        Some(if rest.is_empty() {
            self.mount_point.clone()
        } else {
            self.mount_point.join(rest)
        })
    }
}

/// Read the cgroup mounts from `/proc/self/mountinfo`.
pub fn mounts() -> Result<Mounts> {
    let infos = procfs::process::Process::myself()?.mountinfo()?;
    let mut m = Mounts::default();
    for mi in infos {
        let mount = Mount {
            mount_point: mi.mount_point.clone(),
            root: mi.root.clone(),
        };
        if mi.fs_type == "cgroup2" {
            if m.v2.is_none() {
                m.v2 = Some(mount);
            }
        } else if mi.fs_type == "cgroup" {
            if mi.super_options.contains_key("memory") && m.v1_memory.is_none() {
                m.v1_memory = Some(mount.clone());
            }
            if mi.super_options.contains_key("freezer") && m.v1_freezer.is_none() {
                m.v1_freezer = Some(mount);
            }
        }
    }
    Ok(m)
}

/// The cgroups a process is in, as absolute directories (only hierarchies that are mounted).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PidCgroups {
    pub v2: Option<PathBuf>,
    pub v1_memory: Option<PathBuf>,
    pub v1_freezer: Option<PathBuf>,
}

/// Find `pid`'s cgroups.
pub fn pid_cgroups(pid: i32) -> Result<PidCgroups> {
    let m = mounts()?;
    let p = procfs::process::Process::new(pid).map_err(|e| Error::proc(pid, e))?;
    let groups = p.cgroups().map_err(|e| Error::proc(pid, e))?;
    let mut out = PidCgroups::default();
    for g in groups.0 {
        if g.hierarchy == 0 && g.controllers.iter().all(|c| c.is_empty()) {
            out.v2 = m.v2.as_ref().and_then(|mt| mt.dir_of(&g.pathname));
        } else {
            if g.controllers.iter().any(|c| c == "memory") {
                out.v1_memory = m.v1_memory.as_ref().and_then(|mt| mt.dir_of(&g.pathname));
            }
            if g.controllers.iter().any(|c| c == "freezer") {
                out.v1_freezer = m.v1_freezer.as_ref().and_then(|mt| mt.dir_of(&g.pathname));
            }
        }
    }
    Ok(out)
}

pub(crate) fn read_trim(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(path, e))
}

pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| Error::io(path, e))
}

fn is_mount_point(dir: &Path, m: &Mounts) -> bool {
    [&m.v2, &m.v1_memory, &m.v1_freezer]
        .iter()
        .any(|mt| mt.as_ref().is_some_and(|mt| mt.mount_point == dir))
}

/// Create (or reuse) the v2 cgroup `parent/name`. When `controllers` are given (e.g.
/// `["memory"]`), they are enabled in `parent`'s `cgroup.subtree_control` first (they must be
/// listed in `parent/cgroup.controllers`).
pub fn create_v2(parent: &Path, name: &str, controllers: &[&str]) -> Result<PathBuf> {
    if !controllers.is_empty() {
        let avail = read_trim(&parent.join("cgroup.controllers"))?;
        let enabled = read_trim(&parent.join("cgroup.subtree_control"))?;
        for c in controllers {
            if !avail.split_whitespace().any(|a| a == *c) {
                return Err(Error::Cgroup(format!(
                    "controller {c} is not available in {} (cgroup.controllers: {avail:?})",
                    parent.display()
                )));
            }
            if !enabled.split_whitespace().any(|a| a == *c) {
                write_file(&parent.join("cgroup.subtree_control"), &format!("+{c}"))?;
            }
        }
    }
    mkdir(&parent.join(name))
}

/// Create (or reuse) the v1 cgroup `parent/name` in one hierarchy (memory or freezer).
pub fn create_v1(parent: &Path, name: &str) -> Result<PathBuf> {
    mkdir(&parent.join(name))
}

fn mkdir(dir: &Path) -> Result<PathBuf> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(dir.to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir.to_owned()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// The v1 hierarchy carrying `controller` (e.g. `cpu`), if one is mounted.
pub fn v1_mount(controller: &str) -> Result<Option<Mount>> {
    let infos = procfs::process::Process::myself()?.mountinfo()?;
    Ok(infos
        .into_iter()
        .find(|mi| mi.fs_type == "cgroup" && mi.super_options.contains_key(controller))
        .map(|mi| Mount {
            mount_point: mi.mount_point,
            root: mi.root,
        }))
}

/// A CPU bandwidth limit (CFS): `quota_us` of CPU time per `period_us`, i.e. quota / period
/// cores. Written as v2 `cpu.max` (`QUOTA PERIOD`) or v1 `cpu.cfs_period_us` and
/// `cpu.cfs_quota_us`; the same limit either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuQuota {
    /// `cores` CPUs per `period_us` (the kernel wants quota ≥ 1 ms, period 1 ms..1 s).
    pub fn of_cores(cores: f64, period_us: u64) -> CpuQuota {
        let quota_us = (cores * period_us as f64).round().max(1000.0) as u64;
        CpuQuota {
            quota_us,
            period_us,
        }
    }

    /// Cores: quota / period.
    pub fn cores(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }

    /// Set it on the cgroup `dir` (`v2`: a cgroup2 directory, else a v1 `cpu` one).
    pub fn apply(&self, dir: &Path, v2: bool) -> Result<()> {
        if v2 {
            let line = format!("{} {}", self.quota_us, self.period_us);
            return write_file(&dir.join("cpu.max"), &line);
        }
        // Lower the quota first: a period shorter than the old quota's would be refused.
        write_file(&dir.join("cpu.cfs_quota_us"), "-1")?;
        write_file(&dir.join("cpu.cfs_period_us"), &self.period_us.to_string())?;
        write_file(&dir.join("cpu.cfs_quota_us"), &self.quota_us.to_string())
    }

    /// The limit set on `dir`, read back; `None` when unlimited.
    pub fn read(dir: &Path, v2: bool) -> Result<Option<CpuQuota>> {
        let bad =
            |what: &str, s: &str| Error::Cgroup(format!("{}: bad {what} {s:?}", dir.display()));
        let (quota, period) = if v2 {
            let s = read_trim(&dir.join("cpu.max"))?;
            let (q, p) = s.split_once(' ').ok_or_else(|| bad("cpu.max", &s))?;
            (q.to_string(), p.to_string())
        } else {
            (
                read_trim(&dir.join("cpu.cfs_quota_us"))?,
                read_trim(&dir.join("cpu.cfs_period_us"))?,
            )
        };
        if quota == "max" || quota == "-1" {
            return Ok(None);
        }
        Ok(Some(CpuQuota {
            quota_us: quota.parse().map_err(|_| bad("quota", &quota))?,
            period_us: period.parse().map_err(|_| bad("period", &period))?,
        }))
    }
}

/// Move `pid` (the whole process) into the cgroup `dir` (v1 or v2).
pub fn move_pid(dir: &Path, pid: i32) -> Result<()> {
    write_file(&dir.join("cgroup.procs"), &pid.to_string())
}

/// Pids in the cgroup `dir`.
pub fn procs(dir: &Path) -> Result<Vec<i32>> {
    let s = read_trim(&dir.join("cgroup.procs"))?;
    Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Thaws, SIGKILLs and removes every child cgroup of `dir`, then `dir` itself. Best effort,
/// for teardown that must not fail (tests, benchmarks): every error is ignored.
pub fn kill_and_remove_children(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
    {
        let d = e.path();
        let _ = fs::write(d.join("cgroup.freeze"), "0");
        let _ = fs::write(d.join("freezer.state"), "THAWED");
        for _ in 0..100 {
            let pids = procs(&d).unwrap_or_default();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = remove(&d);
    }
    let _ = remove(dir);
}

/// Remove the (empty) cgroup `dir`, retrying briefly while the kernel still sees it busy.
pub fn remove(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(Error::io(dir, e)),
        }
    }
}

/// The memory cgroup whose counters and reclaim apply to a process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Memcg {
    /// A cgroup2 directory with the memory controller (`memory.current`, `memory.reclaim`).
    V2(PathBuf),
    /// A v1 memory cgroup directory (`memory.usage_in_bytes`, `memory.force_empty`).
    V1(PathBuf),
}

/// What a memcg reclaim did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ReclaimOutcome {
    /// `memory.reclaim` or `memory.force_empty`.
    pub method: String,
    pub cgroup: PathBuf,
    pub usage_before: u64,
    pub usage_after: u64,
    pub seconds: f64,
    /// The kernel's complaint, if it could not reclaim everything (EAGAIN/EBUSY).
    pub incomplete: Option<String>,
    /// The second pass ([`Memcg::settle`]) when the first left pages charged: what it did and
    /// what was left, in words.
    #[serde(default)]
    pub settle: Option<String>,
}

impl Memcg {
    /// The memory cgroup of `pid`: the v2 cgroup when it has the memory controller, else the v1
    /// memory cgroup; `None` when neither exists.
    pub fn of_pid(pid: i32) -> Result<Option<Memcg>> {
        let cg = pid_cgroups(pid)?;
        if let Some(d) = cg.v2 {
            if d.join("memory.current").exists() {
                return Ok(Some(Memcg::V2(d)));
            }
        }
        Ok(cg
            .v1_memory
            .filter(|d| d.join("memory.usage_in_bytes").exists())
            .map(Memcg::V1))
    }

    pub fn dir(&self) -> &Path {
        match self {
            Memcg::V2(d) | Memcg::V1(d) => d,
        }
    }

    /// A hierarchy root cannot (and must not) be reclaimed as "the target's own" cgroup.
    pub fn is_root(&self) -> bool {
        let m = match mounts() {
            Ok(m) => m,
            Err(_) => return false,
        };
        is_mount_point(self.dir(), &m) || !self.dir().join("cgroup.procs").exists()
    }

    /// Why reclaiming this cgroup would hit more than process `pid`: other member processes or
    /// child cgroups (their charges are reclaimed too). `None` when `pid` is alone in it.
    pub fn shared_with_others(&self, pid: i32) -> Result<Option<String>> {
        let others: Vec<i32> = procs(self.dir())?
            .into_iter()
            .filter(|&p| p != pid)
            .collect();
        if !others.is_empty() {
            return Ok(Some(format!(
                "{} other process(es) in {} (e.g. pid {})",
                others.len(),
                self.dir().display(),
                others[0]
            )));
        }
        let rd = fs::read_dir(self.dir()).map_err(|e| Error::io(self.dir(), e))?;
        let children = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .count();
        if children > 0 {
            return Ok(Some(format!(
                "{} has {children} child cgroup(s)",
                self.dir().display()
            )));
        }
        Ok(None)
    }

    /// Charged bytes (`memory.current` / `memory.usage_in_bytes`).
    pub fn usage(&self) -> Result<u64> {
        let f = match self {
            Memcg::V2(d) => d.join("memory.current"),
            Memcg::V1(d) => d.join("memory.usage_in_bytes"),
        };
        read_trim(&f)?
            .parse()
            .map_err(|e| Error::Cgroup(format!("{}: {e}", f.display())))
    }

    /// One field of `memory.stat` (bytes for the byte-valued ones, e.g. `swapcached`).
    pub fn stat(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.stats(&[key])?[0])
    }

    /// Fields of `memory.stat`, in the order of `keys`, from one read of the file.
    pub fn stats<const N: usize>(&self, keys: &[&str; N]) -> Result<[Option<u64>; N]> {
        let f = self.dir().join("memory.stat");
        let s = fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
        let mut out = [None; N];
        for l in s.lines() {
            let mut it = l.split_whitespace();
            if let Some(i) = it.next().and_then(|k| keys.iter().position(|x| *x == k)) {
                out[i] = it.next().and_then(|v| v.parse().ok());
            }
        }
        Ok(out)
    }

    /// Bytes of this cgroup's pages that sit in the swap cache (`memory.stat` `swapcached`).
    pub fn swapcached(&self) -> Result<Option<u64>> {
        self.stat("swapcached")
    }

    /// Pages still charged to the cgroup (bytes): v1 `total_rss` + `total_cache`, v2 `anon` +
    /// `file` (shmem is counted with the page cache in both). Page tables and kernel stacks, which
    /// no reclaim takes, are not in it.
    pub fn charged_pages(&self) -> Result<u64> {
        let (a, b, _) = self.stat_keys();
        let [a, b] = self.stats(&[a, b])?;
        Ok(a.unwrap_or(0) + b.unwrap_or(0))
    }

    /// The `memory.stat` keys of the anonymous pages, the page cache and the pages under
    /// writeback (the swap's writes too) for this cgroup version.
    fn stat_keys(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            Memcg::V2(_) => ("anon", "file", "file_writeback"),
            Memcg::V1(_) => ("total_rss", "total_cache", "total_writeback"),
        }
    }

    /// Wait (up to `max`, polling every 5 ms) until none of the cgroup's pages is under
    /// writeback (`memory.stat`: v2 `file_writeback`, v1 `total_writeback`; the swap's writes
    /// are counted there too). Returns the bytes under writeback at first and at the end, and
    /// how long it waited.
    pub fn wait_writeback(&self, max: Duration) -> Result<(u64, u64, Duration)> {
        let (_, _, wb_key) = self.stat_keys();
        let t = Instant::now();
        let mut writeback = self.stat(wb_key)?.unwrap_or(0);
        let first = writeback;
        while writeback > 0 && t.elapsed() < max {
            std::thread::sleep(Duration::from_millis(5));
            writeback = self.stat(wb_key)?.unwrap_or(0);
        }
        Ok((first, writeback, t.elapsed()))
    }

    /// Reclaim everything the cgroup holds: v2 `memory.reclaim` (repeated while it makes
    /// progress), v1 `memory.force_empty`, then [`Memcg::settle`] when pages are left.
    /// Refuses hierarchy roots.
    pub fn reclaim_all(&self) -> Result<ReclaimOutcome> {
        if self.is_root() {
            return Err(Error::Cgroup(format!(
                "{} is a hierarchy root; refusing a whole-hierarchy reclaim (start the target in its own cgroup)",
                self.dir().display()
            )));
        }
        let t0 = Instant::now();
        // Every process of the cgroup forgets which pages it referenced (`clear_refs` 1): a
        // page that several processes mapped and touched (shmem shared by forked children, as
        // PostgreSQL's shared_buffers) is otherwise only moved to the active list by reclaim,
        // never evicted. Best effort: a process that exits meanwhile is skipped.
        for pid in procs(self.dir()).unwrap_or_default() {
            let _ = fs::write(format!("/proc/{pid}/clear_refs"), "1");
        }
        let usage_before = self.usage()?;
        let mut out = ReclaimOutcome {
            cgroup: self.dir().to_owned(),
            usage_before,
            ..Default::default()
        };
        self.reclaim_pass(&mut out)?;
        let left = self.charged_pages()?;
        if left > 0 {
            out.settle = Some(self.settle(left, &mut out)?);
        }
        out.usage_after = self.usage()?;
        out.seconds = t0.elapsed().as_secs_f64();
        Ok(out)
    }

    /// The second pass of [`Memcg::reclaim_all`], for the pages the first one left (`left`
    /// bytes): it waits (up to [`SETTLE_WRITEBACK_WAIT`]) for the cgroup's writeback to end (a
    /// page still being written to swap cannot be freed yet), ages the processes' pages with
    /// `MADV_COLD` (deactivates them, evicts nothing), and reclaims once more. The aging is
    /// what the LRU does to an idle app given time: pages an app faulted back soon after they
    /// were evicted are refaults the kernel puts straight onto the active list (workingset
    /// detection), and v1 `force_empty` empties the inactive list and gives up on the active one
    /// (measured, host 6.18: 0.4-7 MiB left per 64 MiB app, growing every cycle since the
    /// residue stays active; after the aging the second pass took it all). The kernel still
    /// chooses the order and the swap slots. Returns what it did, in words.
    fn settle(&self, left: u64, out: &mut ReclaimOutcome) -> Result<String> {
        let (wrote, writeback, waited) = self.wait_writeback(SETTLE_WRITEBACK_WAIT)?;
        let mut aged = 0u64;
        for pid in procs(self.dir()).unwrap_or_default() {
            aged = aged.saturating_add(age_process(pid));
        }
        self.reclaim_pass(out)?;
        let after = self.charged_pages()?;
        let mut note = format!(
            "the first pass left {} KiB charged; MADV_COLD over {} MiB of the processes' mappings",
            left >> 10,
            aged >> 20
        );
        if wrote > 0 {
            note += &format!(
                ", {} KiB under writeback (waited {} ms{})",
                wrote >> 10,
                waited.as_millis(),
                if writeback > 0 { ", not done" } else { "" }
            );
        }
        note += &format!("; the second pass left {} KiB", after >> 10);
        Ok(note)
    }

    /// One reclaim pass over the whole cgroup (v2 `memory.reclaim` while it makes progress,
    /// v1 `memory.force_empty`); the kernel's complaint goes to `out.incomplete`.
    fn reclaim_pass(&self, out: &mut ReclaimOutcome) -> Result<()> {
        match self {
            Memcg::V2(d) => {
                out.method = "memory.reclaim".into();
                let f = d.join("memory.reclaim");
                if !f.exists() {
                    return Err(Error::Unsupported(format!(
                        "{} does not exist (kernel older than 5.19?)",
                        f.display()
                    )));
                }
                let mut last = self.usage()?;
                for _ in 0..8 {
                    let want = last.max(1 << 20);
                    match write_file(&f, &want.to_string()) {
                        Ok(()) => {}
                        Err(Error::Io { source, .. })
                            if source.raw_os_error() == Some(libc::EAGAIN) =>
                        {
                            out.incomplete = Some(format!(
                                "memory.reclaim of {want} bytes: EAGAIN (not all reclaimable)"
                            ));
                        }
                        Err(e) => return Err(e),
                    }
                    let now = self.usage()?;
                    if now == 0 || now >= last {
                        break;
                    }
                    last = now;
                }
            }
            Memcg::V1(d) => {
                out.method = "memory.force_empty".into();
                match write_file(&d.join("memory.force_empty"), "0") {
                    Ok(()) => {}
                    Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                        out.incomplete = Some(
                            "memory.force_empty: EBUSY (some charged pages could not be reclaimed)"
                                .into(),
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// How long [`Memcg::settle`] waits at most for the cgroup's pages under writeback.
pub const SETTLE_WRITEBACK_WAIT: Duration = Duration::from_secs(2);

/// `MADV_COLD` over every mapping of `pid` (`process_madvise`; mappings it refuses, locked or
/// hugetlb or PFN maps, are skipped). Best effort: a process that exits or cannot be advised
/// is skipped. Returns the bytes advised.
fn age_process(pid: i32) -> u64 {
    use procfs::process::MMapPath;
    let Ok(maps) = procfs::process::Process::new(pid).and_then(|p| p.maps()) else {
        return 0;
    };
    let ranges: Vec<sys::Range> = maps
        .iter()
        // [vsyscall] is not the process's own mapping (process_madvise refuses it).
        .filter(|m| m.pathname != MMapPath::Vsyscall && m.address.1 > m.address.0)
        .map(|m| sys::Range {
            start: m.address.0,
            len: m.address.1 - m.address.0,
        })
        .collect();
    let Ok(fd) = sys::pidfd_open(pid) else {
        return 0;
    };
    sys::madvise_all(&fd, &ranges, libc::MADV_COLD, &mut |_| {})
        .map(|(advised, _)| advised)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quota's files, written and read back in a plain directory (v2 `cpu.max`; v1's
    /// quota and period); unlimited reads as none, garbage as an error.
    #[test]
    fn cpu_quota_round_trips() {
        let d = std::env::temp_dir().join(format!("procswap-cpuquota-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        // The kernel's files exist; write_file does not create them.
        for f in ["cpu.max", "cpu.cfs_quota_us", "cpu.cfs_period_us"] {
            fs::write(d.join(f), "").unwrap();
        }
        let q = CpuQuota::of_cores(0.25, 100_000);
        assert_eq!(
            (q.quota_us, q.period_us, q.cores()),
            (25_000, 100_000, 0.25)
        );
        assert_eq!(CpuQuota::of_cores(0.0001, 100_000).quota_us, 1000);
        q.apply(&d, true).unwrap();
        assert_eq!(
            fs::read_to_string(d.join("cpu.max")).unwrap(),
            "25000 100000"
        );
        assert_eq!(CpuQuota::read(&d, true).unwrap(), Some(q));
        q.apply(&d, false).unwrap();
        assert_eq!(CpuQuota::read(&d, false).unwrap(), Some(q));
        fs::write(d.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(CpuQuota::read(&d, true).unwrap(), None);
        fs::write(d.join("cpu.max"), "x\n").unwrap();
        assert!(CpuQuota::read(&d, true).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dir_of_handles_mount_roots() {
        let m = Mount {
            mount_point: "/sys/fs/cgroup/memory".into(),
            root: "/".into(),
        };
        assert_eq!(m.dir_of("/"), Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(
            m.dir_of("/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/a/b"))
        );
        let c = Mount {
            mount_point: "/sys/fs/cgroup".into(),
            root: "/ctr".into(),
        };
        assert_eq!(c.dir_of("/ctr/x"), Some(PathBuf::from("/sys/fs/cgroup/x")));
        assert_eq!(c.dir_of("/ctr"), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(c.dir_of("/other"), None);
        assert_eq!(c.dir_of("/ctr2"), None);
    }

    #[test]
    fn own_cgroups_resolve() {
        // Works unprivileged: just reading /proc/self.
        let cg = pid_cgroups(std::process::id() as i32).unwrap();
        for d in [&cg.v2, &cg.v1_memory, &cg.v1_freezer]
            .into_iter()
            .flatten()
        {
            assert!(
                d.join("cgroup.procs").exists(),
                "{} is not a cgroup dir",
                d.display()
            );
        }
    }
}
