//! What machine a benchmark ran on: CPU, memory, kernel, load, and the swap device with the
//! filesystem it lives on (the I/O floor is read from that filesystem).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The active swap area that takes new pages (highest priority in `/proc/swaps`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwapArea {
    pub path: PathBuf,
    /// `file` or `partition`.
    pub kind: String,
    pub size_kib: u64,
    pub used_kib: u64,
    pub priority: i64,
}

impl SwapArea {
    /// Parse `/proc/swaps` and return the area the kernel allocates from first.
    pub fn active() -> Result<Option<SwapArea>> {
        Ok(Self::all()?.into_iter().max_by_key(|a| a.priority))
    }

    /// Every active swap area, in `/proc/swaps` order.
    pub fn all() -> Result<Vec<SwapArea>> {
        let s = std::fs::read_to_string("/proc/swaps").context("/proc/swaps")?;
        Ok(parse_swaps(&s))
    }
}

fn parse_swaps(s: &str) -> Vec<SwapArea> {
    s.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 {
                return None;
            }
            Some(SwapArea {
                // /proc/swaps escapes blanks as \040.
                path: PathBuf::from(f[0].replace("\\040", " ")),
                kind: f[1].to_string(),
                size_kib: f[2].parse().ok()?,
                used_kib: f[3].parse().ok()?,
                priority: f[4].parse().ok()?,
            })
        })
        .collect()
}

/// The mount a path lives on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MountOf {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// `/sys/block/<dev>/queue/rotational` of the source's disk, when it can be found.
    pub rotational: Option<bool>,
}

/// The mount holding `path` (longest mount-point prefix in `/proc/self/mountinfo`).
pub fn mount_of(path: &Path) -> Result<MountOf> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let infos = procfs::process::Process::myself()?.mountinfo()?;
    let best = infos
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .with_context(|| format!("no mount holds {}", path.display()))?;
    let source = best.mount_source.clone().unwrap_or_default();
    let rotational = Path::new(&source)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|dev| {
            // vda1 -> vda, nvme0n1p2 -> nvme0n1, sda3 -> sda
            let base = if dev.starts_with("nvme") || dev.starts_with("mmcblk") {
                dev.rsplit_once('p').map(|(b, _)| b).unwrap_or(dev)
            } else {
                dev.trim_end_matches(|c: char| c.is_ascii_digit())
            };
            [dev, base].iter().find_map(|d| {
                std::fs::read_to_string(format!("/sys/block/{d}/queue/rotational")).ok()
            })
        })
        .map(|s| s.trim() == "1");
    Ok(MountOf {
        mount_point: best.mount_point,
        fs_type: best.fs_type,
        source,
        rotational,
    })
}

/// Facts about the machine, for the results file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub hostname: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_kib: u64,
    pub kernel: String,
    pub thp: String,
    pub swap: Option<SwapArea>,
    pub swap_mount: Option<MountOf>,
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

impl Machine {
    pub fn probe() -> Result<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_kib = meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        let swap = SwapArea::active()?;
        let swap_mount = match &swap {
            Some(s) if s.kind == "file" => Some(mount_of(&s.path)?),
            _ => None,
        };
        Ok(Machine {
            hostname: first_line("/proc/sys/kernel/hostname"),
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            mem_total_kib,
            kernel: first_line("/proc/sys/kernel/osrelease"),
            thp: first_line("/sys/kernel/mm/transparent_hugepage/enabled"),
            swap,
            swap_mount,
        })
    }

    /// The results files' machine table rows (host, CPU, memory, kernel, THP, swap and its
    /// filesystem), each a `| name | value |` line; callers add the table head and their own rows.
    pub fn markdown_rows(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(o, "| host | `{}` |", self.hostname);
        let _ = writeln!(o, "| CPU | {} ({} CPUs) |", self.cpu_model, self.nproc);
        let _ = writeln!(
            o,
            "| memory | {:.1} GiB |",
            self.mem_total_kib as f64 / (1 << 20) as f64
        );
        let _ = writeln!(o, "| kernel | `{}` |", self.kernel);
        let _ = writeln!(
            o,
            "| THP | `{}` (the child opts out with MADV_NOHUGEPAGE) |",
            self.thp
        );
        if let Some(sw) = &self.swap {
            let _ = writeln!(
                o,
                "| swap | `{}` ({}, {} MiB, priority {}) |",
                sw.path.display(),
                sw.kind,
                sw.size_kib / 1024,
                sw.priority
            );
        }
        if let Some(mt) = &self.swap_mount {
            let _ = writeln!(
                o,
                "| swap's filesystem | {} on `{}` mounted at `{}`{} |",
                mt.fs_type,
                mt.source,
                mt.mount_point.display(),
                match mt.rotational {
                    Some(true) =>
                        ", rotational per sysfs (a virtual disk may say so whatever backs it)",
                    Some(false) => ", non-rotational per sysfs",
                    None => "",
                }
            );
        }
        o
    }
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> (f64, f64, f64) {
    let s = first_line("/proc/loadavg");
    let v: Vec<f64> = s
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    match v.as_slice() {
        [a, b, c] => (*a, *b, *c),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

/// Fail (not skip) unless we are root and swap is on: the resume bench measures swap-in.
pub fn require_root_and_swap() -> Result<SwapArea> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "resume_touch_all needs root (cgroups, freezer, process_madvise, memcg reclaim) and swap: \
             run bench/run-resume-bench.sh as root"
        );
    }
    match SwapArea::active()? {
        Some(s) => Ok(s),
        None => bail!(
            "resume_touch_all needs swap and none is on: run it through bench/run-resume-bench.sh \
             (or procswap/tests/with-swap.sh cargo bench -p bench --bench resume_touch_all)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_swaps() {
        let s = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                 /dev/vdb                                partition\t1048572\t\t0\t\t-2\n\
                 /var/tmp/torpor-test.swap               file\t\t3145724\t\t12\t\t32000\n";
        let v = parse_swaps(s);
        assert_eq!(v.len(), 2);
        let a = v.into_iter().max_by_key(|a| a.priority).unwrap();
        assert_eq!(a.path, PathBuf::from("/var/tmp/torpor-test.swap"));
        assert_eq!(
            (a.kind.as_str(), a.size_kib, a.used_kib),
            ("file", 3145724, 12)
        );
    }
}
