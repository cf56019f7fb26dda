//! A validated target process, held through a pidfd so a recycled pid is never touched.

use crate::error::{Error, Result};
use crate::sys;
use std::os::fd::OwnedFd;

/// Flag in `/proc/pid/stat` for kernel threads.
const PF_KTHREAD: u32 = 0x0020_0000;

/// A process procswap may operate on: exists, is not init, not a kernel thread, not a zombie,
/// and the caller is root. Holds a pidfd (opened after the checks, re-validated against the
/// process start time so a pid reused in between is detected).
#[derive(Debug)]
pub struct Target {
    pid: i32,
    pidfd: OwnedFd,
    starttime: u64,
    comm: String,
}

/// Fail with [`Error::NotRoot`] unless the effective uid is 0.
pub fn require_root(what: &'static str) -> Result<()> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot {
            what,
            uid: uid.as_raw(),
        })
    }
}

impl Target {
    /// Validate `pid` for `what` (used in the messages, e.g. "purge").
    pub fn open(pid: i32, what: &'static str) -> Result<Self> {
        if pid <= 0 {
            return Err(Error::NoSuchProcess(pid));
        }
        if pid == 1 {
            return Err(Error::Init);
        }
        require_root(what)?;
        if pid == std::process::id() as i32 {
            return Err(Error::SelfTarget(pid));
        }
        let stat = Self::stat(pid)?;
        let pidfd = sys::pidfd_open(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => Error::NoSuchProcess(pid),
            _ => Error::Sys {
                op: "pidfd_open",
                pid,
                source: e,
            },
        })?;
        // Same process as the one we checked? (pid reuse between the stat and the pidfd)
        let again = Self::stat(pid)?;
        if again.starttime != stat.starttime {
            return Err(Error::NoSuchProcess(pid));
        }
        Ok(Self {
            pid,
            pidfd,
            starttime: stat.starttime,
            comm: stat.comm,
        })
    }

    fn stat(pid: i32) -> Result<procfs::process::Stat> {
        let p = procfs::process::Process::new(pid).map_err(|e| Error::proc(pid, e))?;
        let stat = p.stat().map_err(|e| Error::proc(pid, e))?;
        if stat.flags & PF_KTHREAD != 0 {
            return Err(Error::KernelThread {
                pid,
                comm: stat.comm,
            });
        }
        if matches!(stat.state, 'Z' | 'X' | 'x') {
            return Err(Error::Zombie {
                pid,
                comm: stat.comm,
            });
        }
        Ok(stat)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }

    pub fn comm(&self) -> &str {
        &self.comm
    }

    /// The procfs handle of the target.
    pub fn process(&self) -> Result<procfs::process::Process> {
        procfs::process::Process::new(self.pid).map_err(|e| Error::proc(self.pid, e))
    }

    /// Still alive and still the same process (not exited, not a zombie, pid not reused)?
    pub fn check_alive(&self, op: &'static str) -> Result<()> {
        if sys::pidfd_exited(&self.pidfd) {
            return Err(Error::TargetExited { pid: self.pid, op });
        }
        match Self::stat(self.pid) {
            Ok(s) if s.starttime == self.starttime => Ok(()),
            _ => Err(Error::TargetExited { pid: self.pid, op }),
        }
    }

    /// Major and minor fault counters of the whole process (all threads).
    pub fn faults(&self) -> Result<(u64, u64)> {
        let s = self
            .process()?
            .stat()
            .map_err(|e| Error::proc(self.pid, e))?;
        Ok((s.majflt, s.minflt))
    }
}

/// Fail with [`Error::NoSwap`] when no swap is configured.
pub fn require_swap() -> Result<()> {
    let m = sys::meminfo()?;
    if m.swap_total == 0 {
        Err(Error::NoSwap)
    } else {
        Ok(())
    }
}
