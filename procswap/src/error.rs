//! The library's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in procswap. Refusals (bad target, missing privilege, no swap)
/// are distinct variants so callers can tell them from failures; all of them are reported
/// before any change is made to the target.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such process: pid {0}")]
    NoSuchProcess(i32),
    #[error("refusing to operate on pid 1 (init): freezing or swapping it out would stall the whole system")]
    Init,
    #[error("refusing to operate on pid {0}: it is this process itself")]
    SelfTarget(i32),
    #[error("pid {pid} ({comm}) is a kernel thread: it has no user memory to swap")]
    KernelThread { pid: i32, comm: String },
    #[error("pid {pid} ({comm}) is a zombie (exited, not yet reaped): it has no memory left")]
    Zombie { pid: i32, comm: String },
    #[error("permission denied: {what} needs root (CAP_SYS_ADMIN and CAP_SYS_PTRACE); running as uid {uid}")]
    NotRoot { what: &'static str, uid: u32 },
    #[error("no swap configured (SwapTotal is 0 in /proc/meminfo): a purge would page nothing out; enable a swap device first")]
    NoSwap,
    #[error("pid {pid} is neither frozen nor stopped ({detail}); freeze it first (cgroup freezer or SIGSTOP) or force the operation")]
    NotQuiesced { pid: i32, detail: String },
    #[error("pid {pid} exited during {op}")]
    TargetExited { pid: i32, op: &'static str },
    #[error("{op} on pid {pid} failed: {source}")]
    Sys {
        op: &'static str,
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("reading /proc: {0}")]
    Procfs(#[from] procfs::ProcError),
    #[error("working-set recording: {0}")]
    WorkingSet(String),
    #[error(transparent)]
    Kmod(#[from] crate::kmod::KmodError),
    #[error("not supported here: {0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Map a procfs error about `pid` (NotFound → [`Error::NoSuchProcess`]).
    pub(crate) fn proc(pid: i32, e: procfs::ProcError) -> Self {
        match e {
            procfs::ProcError::NotFound(_) => Error::NoSuchProcess(pid),
            procfs::ProcError::Io(ref io, _) if io.raw_os_error() == Some(libc::ESRCH) => {
                Error::NoSuchProcess(pid)
            }
            e => Error::Procfs(e),
        }
    }

    /// Map a syscall error on `pid` (ESRCH → [`Error::TargetExited`]).
    pub(crate) fn sys(op: &'static str, pid: i32, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ESRCH) {
            Error::TargetExited { pid, op }
        } else {
            Error::Sys { op, pid, source }
        }
    }

    /// True for refusals made before any change (bad target, privilege, swap, quiescence).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::NoSuchProcess(_)
                | Error::Init
                | Error::SelfTarget(_)
                | Error::KernelThread { .. }
                | Error::Zombie { .. }
                | Error::NotRoot { .. }
                | Error::NoSwap
                | Error::NotQuiesced { .. }
        )
    }
}
