//! Shared by the root test fixtures.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

/// `parent` (a cgroup path relative to each mount) under the v2 and v1 memory/freezer mounts.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let m = procswap::cgroup::mounts().unwrap();
    [m.v2, m.v1_memory, m.v1_freezer]
        .into_iter()
        .flatten()
        .map(|mt| mt.mount_point.join(parent))
        .collect()
}

/// Thaw, SIGKILL whatever is left in every child cgroup of `parents`, then remove the
/// children and the parents (best effort: a test's cleanup must not panic).
pub fn remove_app_cgroups(parents: &[PathBuf]) {
    for parent in parents {
        let Ok(rd) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in rd
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        {
            let d = e.path();
            let _ = std::fs::write(d.join("cgroup.freeze"), "0");
            let _ = std::fs::write(d.join("freezer.state"), "THAWED");
            for _ in 0..100 {
                let pids = procswap::cgroup::procs(&d).unwrap_or_default();
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = procswap::cgroup::remove(&d);
        }
        let _ = procswap::cgroup::remove(parent);
    }
}

pub mod torpord;
