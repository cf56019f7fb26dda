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
        procswap::cgroup::kill_and_remove_children(parent);
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub mod torpord;
