//! A host's measurements: the CPU use of its share (cgroup v2 `cpu.stat` over wall time, the
//! share from `cpu.max`), the host's MemAvailable, the share's free memory and major-fault rate.

use crate::schema::CpuShare;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a sample's rates are over: the last second (the paper's rule is CPU at 80 % of the
/// share *over the last second*), however often the host samples.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Figures that only make sense as differences between two samples.
#[derive(Debug, Clone, Copy)]
struct Counters {
    at: Instant,
    usage_usec: u64,
    majfaults: u64,
}

/// One interval's measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub interval_s: f64,
    pub cpu: CpuShare,
    pub mem_available_bytes: u64,
    pub share_mem_free_bytes: Option<u64>,
    pub paging_rate: f64,
}

/// Measures the host's share (torpord's cgroup parent): CPU from its cgroup v2 directory
/// (`cpu.stat` exists there in every v2 hierarchy, hybrid included), memory from its memory
/// cgroup (v2, or v1's `total_pgmajfault`).
#[derive(Debug)]
pub struct Meter {
    dir: PathBuf,
    memory_dir: PathBuf,
    /// The share in cores when configured (else `cpu.max`, else the online CPUs).
    share_cores: Option<f64>,
    /// Earlier counters, oldest first: the newest one at least [`WINDOW`] old, then every
    /// later one.
    history: VecDeque<Counters>,
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid system).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct MeasureError {
    path: String,
    message: String,
}

fn read(path: &Path) -> Result<String, MeasureError> {
    std::fs::read_to_string(path).map_err(|e| MeasureError {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The value of `key` in a flat-keyed file (`key value` per line).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == key).then(|| f.next()?.parse().ok())?
    })
}

/// `cpu.max` (`QUOTA PERIOD` or `max PERIOD`) as cores; `None` when unlimited.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut f = text.split_whitespace();
    let quota: f64 = f.next()?.parse().ok()?;
    let period: f64 = f.next()?.parse().ok()?;
    (period > 0.0).then_some(quota / period)
}

/// `/proc/meminfo`'s MemAvailable, bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("MemAvailable:")?;
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
}

fn online_cpus() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

impl Meter {
    /// `dir`: the share's cgroup v2 directory; `memory_dir`: its memory cgroup (the same
    /// directory on a pure v2 system); `share_cores`: the share when it is not in `cpu.max`.
    pub fn new(dir: PathBuf, memory_dir: PathBuf, share_cores: Option<f64>) -> Meter {
        Meter {
            dir,
            memory_dir,
            share_cores,
            history: VecDeque::new(),
        }
    }

    fn counters(&self) -> Result<Counters, MeasureError> {
        let cpu_stat = self.dir.join("cpu.stat");
        let usage_usec = keyed(&read(&cpu_stat)?, "usage_usec").ok_or_else(|| MeasureError {
            path: cpu_stat.display().to_string(),
            message: "no usage_usec".into(),
        })?;
        // memory.stat is absent when the memory controller is not enabled for the share.
        let majfaults = read(&self.memory_dir.join("memory.stat"))
            .ok()
            .and_then(|t| keyed(&t, "pgmajfault").or_else(|| keyed(&t, "total_pgmajfault")))
            .unwrap_or(0);
        Ok(Counters {
            at: Instant::now(),
            usage_usec,
            majfaults,
        })
    }

    fn share_cores(&self) -> f64 {
        self.share_cores
            .or_else(|| {
                read(&self.dir.join("cpu.max"))
                    .ok()
                    .and_then(|t| parse_cpu_max(&t))
            })
            .unwrap_or_else(online_cpus)
    }

    fn share_mem_free(&self) -> Option<u64> {
        let max: u64 = read(&self.memory_dir.join("memory.max"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cur: u64 = read(&self.memory_dir.join("memory.current"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(max.saturating_sub(cur))
    }

    /// The figures over the last [`WINDOW`]: since the newest earlier sample at least that old
    /// (the oldest one while there is none yet; the first call's rates are zero).
    pub fn sample(&mut self) -> Result<Sample, MeasureError> {
        let now = self.counters()?;
        let prev = window_start(&mut self.history, now, WINDOW);
        let dt = now.at.duration_since(prev.at).as_secs_f64();
        let share = self.share_cores();
        let (used, paging) = if dt > 0.0 {
            (
                now.usage_usec.saturating_sub(prev.usage_usec) as f64 / 1e6 / dt,
                now.majfaults.saturating_sub(prev.majfaults) as f64 / dt,
            )
        } else {
            (0.0, 0.0)
        };
        let meminfo = read(Path::new("/proc/meminfo"))?;
        Ok(Sample {
            interval_s: dt,
            cpu: CpuShare {
                share_cores: share,
                used_cores: used,
                fraction: if share > 0.0 { used / share } else { 0.0 },
            },
            mem_available_bytes: parse_mem_available(&meminfo).unwrap_or(0),
            share_mem_free_bytes: self.share_mem_free(),
            paging_rate: paging,
        })
    }
}

/// Add `now` to `history` and return the counters the window starts from: the newest earlier
/// entry at least `window` before `now` (older ones are dropped), else the oldest (`now` itself
/// when there is none).
fn window_start(history: &mut VecDeque<Counters>, now: Counters, window: Duration) -> Counters {
    while history
        .get(1)
        .is_some_and(|c| now.at.duration_since(c.at) >= window)
    {
        history.pop_front();
    }
    let start = history.front().copied().unwrap_or(now);
    history.push_back(now);
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples every 250 ms: each rate is over the last second once a second has passed.
    #[test]
    fn rates_are_over_the_last_second() {
        let t0 = Instant::now();
        let at = |ms: u64, usage_usec: u64| Counters {
            at: t0 + Duration::from_millis(ms),
            usage_usec,
            majfaults: 0,
        };
        let mut h = VecDeque::new();
        let w = Duration::from_secs(1);
        assert_eq!(window_start(&mut h, at(0, 0), w).usage_usec, 0);
        assert_eq!(window_start(&mut h, at(250, 10), w).usage_usec, 0);
        assert_eq!(window_start(&mut h, at(500, 20), w).usage_usec, 0);
        assert_eq!(window_start(&mut h, at(1000, 40), w).usage_usec, 0);
        // 1.25 s: from 0.25 s (the newest at least 1 s old), not from 0 s.
        let s = window_start(&mut h, at(1250, 90), w);
        assert_eq!((s.usage_usec, s.at), (10, t0 + Duration::from_millis(250)));
        assert_eq!(h.len(), 4);
        // A gap longer than the window: from the sample before the gap.
        assert_eq!(window_start(&mut h, at(5000, 100), w).usage_usec, 90);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn parses_kernel_files() {
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("200000 100000"), Some(2.0));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(
            parse_mem_available("MemTotal: 10 kB\nMemAvailable:    2048 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(parse_mem_available("MemTotal: 10 kB\n"), None);
        assert_eq!(
            keyed("usage_usec 17\nuser_usec 5\n", "usage_usec"),
            Some(17)
        );
        assert_eq!(keyed("pgfault 3\npgmajfault 9\n", "pgmajfault"), Some(9));
        assert_eq!(keyed("pgmajfault x\n", "pgmajfault"), None);
    }

    /// The root of the machine's cgroup v2 hierarchy (Debian 12 has one, hybrid or not): the
    /// first sample's rates are zero, and a second sample's fraction is of the given share.
    #[test]
    fn measures_a_real_cgroup() {
        let root = cgroup2_mount().expect("a cgroup v2 hierarchy is mounted");
        let mut m = Meter::new(root.clone(), root, Some(2.0));
        let first = m.sample().unwrap();
        assert_eq!((first.cpu.used_cores, first.paging_rate), (0.0, 0.0));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = m.sample().unwrap();
        assert!(second.interval_s > 0.0);
        assert_eq!(second.cpu.share_cores, 2.0);
        assert_eq!(second.cpu.fraction, second.cpu.used_cores / 2.0);
        assert!(second.cpu.fraction >= 0.0);
        assert!(second.mem_available_bytes > 0);
    }
}

/// The host's share confined to its CPU quota: the limit on `dir` (cgroup v2 `cpu.max` on the
/// share's own cgroup, or on a hybrid system the v1 `cpu` cgroup of the same name, into which
/// every process of the share's v2 subtree is moved at each [`Confine::sweep`]).
#[derive(Debug, Clone)]
pub struct Confine {
    pub quota: procswap::cgroup::CpuQuota,
    pub dir: PathBuf,
    pub v2: bool,
    /// The share's cgroup v2 directory (whose processes a v1 limit must hold).
    pub share: PathBuf,
}

/// The CFS period of a share's quota, microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

impl Confine {
    /// Where to confine a share of `cores` whose v2 directory is `share` (named `parent` under
    /// the hierarchy's root): v2 when the cpu controller is available there, else v1 `cpu`.
    pub fn plan(share: &Path, parent: &str, cores: f64) -> Result<Confine, String> {
        let quota = procswap::cgroup::CpuQuota::of_cores(cores, CPU_PERIOD_US);
        let root = share.parent().unwrap_or(share);
        let avail = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if avail.split_whitespace().any(|c| c == "cpu") {
            let dir = share.to_path_buf();
            let share = dir.clone();
            return Ok(Confine {
                quota,
                dir,
                v2: true,
                share,
            });
        }
        let v1 = procswap::cgroup::v1_mount("cpu")
            .map_err(|e| e.to_string())?
            .ok_or("no cgroup hierarchy offers the cpu controller")?;
        Ok(Confine {
            quota,
            dir: v1.mount_point.join(parent),
            v2: false,
            share: share.to_path_buf(),
        })
    }

    /// Create the cgroup and set the quota.
    pub fn set_up(&self) -> Result<(), procswap::Error> {
        use procswap::cgroup::{create_v1, create_v2};
        let parent = self.dir.parent().unwrap_or(&self.dir);
        let name = self.dir.file_name().unwrap_or_default().to_string_lossy();
        if self.v2 {
            create_v2(parent, &name, &["cpu"])?;
        } else {
            create_v1(parent, &name)?;
        }
        self.quota.apply(&self.dir, self.v2)
    }

    /// v1: move every process of the share's v2 subtree into the limited cgroup (new ones
    /// appear at each Start); v2 needs nothing. Returns how many were moved or already there.
    pub fn sweep(&self) -> usize {
        if self.v2 {
            return 0;
        }
        let mut n = 0;
        for pid in subtree_procs(&self.share) {
            // A process that exited meanwhile cannot be moved: nothing to confine.
            n += usize::from(procswap::cgroup::move_pid(&self.dir, pid).is_ok());
        }
        n
    }
}

/// Every process in the cgroup `dir` and its descendants.
pub fn subtree_procs(dir: &Path) -> Vec<i32> {
    let mut out = procswap::cgroup::procs(dir).unwrap_or_default();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(subtree_procs(&e.path()));
            }
        }
    }
    out
}
