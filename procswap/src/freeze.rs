//! Freezing and thawing a target: cgroup v2 `cgroup.freeze`, v1 `freezer.state`, or
//! SIGSTOP/SIGCONT (verified per thread), and telling whether a target is quiescent.

use crate::cgroup::{self, pid_cgroups, read_trim, write_file};
use crate::error::{Error, Result};
use crate::target::Target;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a target is (to be) frozen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Freezer {
    /// A cgroup2 directory: `cgroup.freeze`, confirmed by `cgroup.events` `frozen 1`.
    CgroupV2(PathBuf),
    /// A v1 freezer cgroup directory: `freezer.state` = `FROZEN`.
    CgroupV1(PathBuf),
    /// SIGSTOP / SIGCONT to one process, confirmed by every thread's state `T` in /proc.
    Signal(i32),
}

impl std::fmt::Display for Freezer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Freezer::CgroupV2(d) => write!(f, "cgroup v2 freezer {}", d.display()),
            Freezer::CgroupV1(d) => write!(f, "cgroup v1 freezer {}", d.display()),
            Freezer::Signal(p) => write!(f, "SIGSTOP/SIGCONT of pid {p}"),
        }
    }
}

/// Which freezer to prefer for a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FreezerPref {
    /// The pid's own non-root v2 cgroup, else its non-root v1 freezer cgroup, else signals.
    Auto,
    CgroupV2,
    CgroupV1,
    Signal,
}

/// Default time to wait for a freeze/thaw to take effect.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn is_root_dir(dir: &Path) -> bool {
    cgroup::mounts()
        .map(|m| {
            [&m.v2, &m.v1_memory, &m.v1_freezer]
                .iter()
                .any(|mt| mt.as_ref().is_some_and(|mt| mt.mount_point == dir))
        })
        .unwrap_or(false)
}

/// Write `cgroup.freeze` and wait until `cgroup.events` confirms it.
fn v2_set(d: &Path, frozen: bool, timeout: Duration) -> Result<()> {
    let v = u8::from(frozen);
    write_file(&d.join("cgroup.freeze"), &v.to_string())?;
    wait_for(
        timeout,
        &format!("{}/cgroup.events frozen {v}", d.display()),
        || v2_frozen(d).map(|f| f == Some(frozen)),
    )
}

/// cgroup v1: write FROZEN or THAWED to `freezer.state` and wait until it reads back so.
fn v1_set(d: &Path, frozen: bool, timeout: Duration) -> Result<()> {
    let state = if frozen { "FROZEN" } else { "THAWED" };
    let file = d.join("freezer.state");
    write_file(&file, state)?;
    wait_for(timeout, &format!("{} {state}", file.display()), || {
        let s = read_trim(&file)?;
        if frozen && s == "FREEZING" {
            // Re-writing FROZEN retries tasks that were busy on the first attempt.
            write_file(&file, state)?;
        }
        Ok(s == state)
    })
}

/// No cgroup: SIGSTOP (or SIGCONT) to `pid`, then wait until every thread is (or no thread
/// is) in state T.
fn signal_set(pid: i32, frozen: bool, timeout: Duration) -> Result<()> {
    let (sig, name, op, what) = if frozen {
        let what = format!("every thread of pid {pid} in state T");
        (libc::SIGSTOP, "SIGSTOP", "pidfd_send_signal(SIGSTOP)", what)
    } else {
        let what = format!("no thread of pid {pid} in state T");
        (libc::SIGCONT, "SIGCONT", "pidfd_send_signal(SIGCONT)", what)
    };
    let t = Target::open(pid, name)?;
    crate::sys::pidfd_send_signal(t.pidfd(), sig).map_err(|e| Error::sys(op, pid, e))?;
    wait_for(timeout, &what, || {
        if frozen {
            all_threads_stopped(pid)
        } else {
            Ok(thread_states(pid)?.iter().all(|s| !matches!(s, 'T')))
        }
    })
}

impl Freezer {
    /// Pick the freezer for `pid`. Cgroup freezers act on the whole cgroup (every process in
    /// it), so a hierarchy root is never chosen.
    pub fn for_pid(pid: i32, pref: FreezerPref) -> Result<Freezer> {
        let cg = pid_cgroups(pid)?;
        let v2 = cg
            .v2
            .filter(|d| !is_root_dir(d) && d.join("cgroup.freeze").exists());
        let v1 = cg
            .v1_freezer
            .filter(|d| !is_root_dir(d) && d.join("freezer.state").exists());
        match pref {
            FreezerPref::Auto => Ok(v2
                .map(Freezer::CgroupV2)
                .or(v1.map(Freezer::CgroupV1))
                .unwrap_or(Freezer::Signal(pid))),
            FreezerPref::CgroupV2 => v2.map(Freezer::CgroupV2).ok_or_else(|| {
                Error::Cgroup(format!(
                    "pid {pid} is not in a non-root cgroup2 group with cgroup.freeze"
                ))
            }),
            FreezerPref::CgroupV1 => v1.map(Freezer::CgroupV1).ok_or_else(|| {
                Error::Cgroup(format!("pid {pid} is not in a non-root v1 freezer cgroup"))
            }),
            FreezerPref::Signal => Ok(Freezer::Signal(pid)),
        }
    }

    /// The freezer of a cgroup directory (v2 if it has `cgroup.freeze`, v1 if `freezer.state`).
    pub fn for_cgroup(dir: &Path) -> Result<Freezer> {
        if is_root_dir(dir) {
            return Err(Error::Cgroup(format!(
                "{} is a hierarchy root; refusing to freeze it",
                dir.display()
            )));
        }
        if dir.join("cgroup.freeze").exists() {
            Ok(Freezer::CgroupV2(dir.to_owned()))
        } else if dir.join("freezer.state").exists() {
            Ok(Freezer::CgroupV1(dir.to_owned()))
        } else {
            Err(Error::Cgroup(format!(
                "{} has neither cgroup.freeze nor freezer.state",
                dir.display()
            )))
        }
    }

    /// Freeze and wait until the kernel confirms it.
    pub fn freeze(&self, timeout: Duration) -> Result<()> {
        self.set(true, timeout)
    }

    /// Thaw and wait until the kernel confirms it.
    pub fn thaw(&self, timeout: Duration) -> Result<()> {
        self.set(false, timeout)
    }

    fn set(&self, frozen: bool, timeout: Duration) -> Result<()> {
        match self {
            Freezer::CgroupV2(d) => v2_set(d, frozen, timeout),
            Freezer::CgroupV1(d) => v1_set(d, frozen, timeout),
            Freezer::Signal(pid) => signal_set(*pid, frozen, timeout),
        }
    }

    /// Whether the kernel reports this freezer as frozen right now.
    pub fn is_frozen(&self) -> Result<bool> {
        match self {
            Freezer::CgroupV2(d) => Ok(v2_frozen(d)? == Some(true)),
            Freezer::CgroupV1(d) => Ok(read_trim(&d.join("freezer.state"))? == "FROZEN"),
            Freezer::Signal(pid) => all_threads_stopped(*pid),
        }
    }
}

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut sleep = Duration::from_micros(200);
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(timeout, what.to_string()));
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(20));
    }
}

/// `frozen` from `cgroup.events`.
fn v2_frozen(dir: &Path) -> Result<Option<bool>> {
    let s = read_trim(&dir.join("cgroup.events"))?;
    Ok(s.lines()
        .find_map(|l| l.strip_prefix("frozen ").map(|v| v.trim() == "1")))
}

/// State letters of every thread of `pid` (from /proc/pid/task/*/stat).
pub fn thread_states(pid: i32) -> Result<Vec<char>> {
    let p = procfs::process::Process::new(pid).map_err(|e| Error::proc(pid, e))?;
    let mut out = Vec::new();
    // A thread may exit while we iterate: skip it.
    for t in p.tasks().map_err(|e| Error::proc(pid, e))?.flatten() {
        if let Ok(s) = t.stat() {
            out.push(s.state);
        }
    }
    if out.is_empty() {
        return Err(Error::NoSuchProcess(pid));
    }
    Ok(out)
}

fn all_threads_stopped(pid: i32) -> Result<bool> {
    Ok(thread_states(pid)?.iter().all(|s| matches!(s, 'T' | 't')))
}

/// Is a target quiescent (cannot touch its memory) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Quiescence {
    /// Every thread is stopped (SIGSTOP, state T) or traced (t).
    Stopped,
    /// Its cgroup2 group reports `frozen 1`.
    FrozenV2(PathBuf),
    /// Its v1 freezer cgroup reports `FROZEN`.
    FrozenV1(PathBuf),
    /// Running (detail says what was checked).
    Running(String),
}

impl Quiescence {
    pub fn is_quiescent(&self) -> bool {
        !matches!(self, Quiescence::Running(_))
    }
}

/// Tell whether `pid` is frozen or stopped, by any of the three mechanisms.
pub fn quiescence(pid: i32) -> Result<Quiescence> {
    let cg = pid_cgroups(pid)?;
    if let Some(d) = &cg.v2 {
        if d.join("cgroup.events").exists() && v2_frozen(d)? == Some(true) {
            return Ok(Quiescence::FrozenV2(d.clone()));
        }
    }
    if let Some(d) = &cg.v1_freezer {
        if d.join("freezer.state").exists() && read_trim(&d.join("freezer.state"))? == "FROZEN" {
            return Ok(Quiescence::FrozenV1(d.clone()));
        }
    }
    let states = thread_states(pid)?;
    if states.iter().all(|s| matches!(s, 'T' | 't')) {
        return Ok(Quiescence::Stopped);
    }
    let s: String = states.iter().collect();
    Ok(Quiescence::Running(format!(
        "thread states {s:?}, cgroup freezers not frozen"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_freezer_stops_and_continues_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let f = Freezer::Signal(child.id() as i32);
        let timeout = Duration::from_secs(30);
        f.freeze(timeout).unwrap();
        assert!(f.is_frozen().unwrap());
        f.thaw(timeout).unwrap();
        assert!(!f.is_frozen().unwrap());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The v1 steps write the state and wait until it reads back (a plain file here).
    #[test]
    fn v1_freezer_writes_the_state_and_reads_it_back() {
        let d = std::env::temp_dir().join(format!("torpor-v1-freezer-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("freezer.state"), "THAWED\n").unwrap();
        let f = Freezer::CgroupV1(d.clone());
        f.freeze(Duration::from_secs(5)).unwrap();
        assert_eq!(read_trim(&d.join("freezer.state")).unwrap(), "FROZEN");
        assert!(f.is_frozen().unwrap());
        f.thaw(Duration::from_secs(5)).unwrap();
        assert!(!f.is_frozen().unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
