//! Thin, checked wrappers over the raw syscalls procswap needs and that nix
//! does not wrap (pidfd_open, process_madvise), plus small procfs readings.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Page size of this machine.
pub fn page_size() -> u64 {
    procfs::page_size()
}

/// Largest number of iovecs one `process_madvise`/`process_vm_readv` call takes (`UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integer arguments and returns a new fd or -1; no memory is
    // passed to the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: signal exactly the process the pidfd refers to.
pub fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: integer arguments and a NULL siginfo (allowed: the kernel fills a default one).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd() as libc::c_long,
            sig as libc::c_long,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One range of the target's address space.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Range {
    pub start: u64,
    pub len: u64,
}

impl Range {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// `process_madvise(pidfd, iov, n, advice, 0)` over at most [`IOV_MAX`] ranges. Returns the
/// number of bytes advised (the kernel stops at the first range it cannot advise).
pub fn process_madvise(pidfd: &OwnedFd, ranges: &[Range], advice: i32) -> io::Result<u64> {
    assert!(
        ranges.len() <= IOV_MAX,
        "process_madvise takes at most {IOV_MAX} iovecs"
    );
    let iov: Vec<libc::iovec> = ranges
        .iter()
        .map(|r| libc::iovec {
            iov_base: r.start as usize as *mut libc::c_void,
            iov_len: r.len as usize,
        })
        .collect();
    // SAFETY: `iov` is a valid array of `iov.len()` iovecs that lives across the call. The
    // addresses inside are the *target's* and are only interpreted by the kernel against the
    // target's mm (never dereferenced in our address space).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_process_madvise,
            pidfd.as_raw_fd() as libc::c_long,
            iov.as_ptr(),
            iov.len() as libc::size_t,
            advice as libc::c_long,
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as u64)
}

/// Advise all `ranges` (any number), batching [`IOV_MAX`] iovecs per call and resuming after a
/// short count. `on_batch` is called with the bytes advised so far. A range the kernel refuses
/// (EINVAL: locked/hugetlb/pfnmap VMA; ENOMEM: unmapped) is skipped from the point of refusal and
/// counted in the returned `skipped` bytes; ESRCH (target gone) is returned as an error.
/// Returns `(advised, skipped)`.
pub fn madvise_all(
    pidfd: &OwnedFd,
    ranges: &[Range],
    advice: i32,
    on_batch: &mut dyn FnMut(u64),
) -> io::Result<(u64, u64)> {
    use std::collections::VecDeque;
    let mut queue: VecDeque<Range> = ranges.iter().copied().filter(|r| r.len > 0).collect();
    let mut done = 0u64;
    let mut skipped = 0u64;
    while !queue.is_empty() {
        let take = queue.len().min(IOV_MAX);
        let batch: Vec<Range> = queue.drain(..take).collect();
        let total: u64 = batch.iter().map(|r| r.len).sum();
        let advised = match process_madvise(pidfd, &batch, advice) {
            Ok(n) => n,
            // Only "this range cannot be advised" is skippable; anything else (ESRCH: target gone,
            // EPERM, EBADF, ENOSYS) ends the operation.
            Err(e) if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOMEM)) => {
                return Err(e)
            }
            Err(e) => {
                tracing::debug!(range = ?batch[0], error = %e, "process_madvise refused a range");
                0
            }
        };
        done += advised;
        if advised < total {
            // The kernel stopped inside `batch`: find the range and the offset, skip the rest of
            // that range, and requeue the ranges after it.
            let mut left = advised;
            let mut i = 0;
            while left >= batch[i].len {
                left -= batch[i].len;
                i += 1;
            }
            skipped += batch[i].len - left;
            for r in batch[i + 1..].iter().rev() {
                queue.push_front(*r);
            }
        }
        on_batch(done);
    }
    Ok((done, skipped))
}

/// Walk `addrs` (one page each) in calls of at most [`IOV_MAX`] remote iovecs of `len` bytes
/// each (1: a byte per page; the page size: whole pages). `call` gets the index in `addrs` of
/// the batch's first page and the batch, and returns how many of its leading pages it handled;
/// a short count means the page at that index failed: it is counted, skipped, and the walk goes
/// on after it. An error from `call` ends the walk. Returns (pages handled, pages skipped).
pub fn per_page_batches<E>(
    addrs: &[u64],
    len: usize,
    mut call: impl FnMut(usize, &[nix::sys::uio::RemoteIoVec]) -> Result<usize, E>,
) -> Result<(u64, u64), E> {
    let (mut ok, mut bad) = (0u64, 0u64);
    let mut at = 0usize;
    while at < addrs.len() {
        let n = (addrs.len() - at).min(IOV_MAX);
        let remote: Vec<nix::sys::uio::RemoteIoVec> = addrs[at..at + n]
            .iter()
            .map(|&a| nix::sys::uio::RemoteIoVec {
                base: a as usize,
                len,
            })
            .collect();
        let done = call(at, &remote)?.min(n);
        ok += done as u64;
        if done < n {
            bad += 1;
            at += done + 1;
        } else {
            at += n;
        }
    }
    Ok((ok, bad))
}

/// A read-only shared mapping of a file's first `len` bytes (the kernel picks the address),
/// unmapped when dropped. It only hands out a raw pointer: reading through it is the caller's
/// `unsafe`, and never past the file's current size (that would be a SIGBUS).
pub struct FileMapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping belongs to the process, not to a thread, and this type never dereferences
// it; whoever reads through `ptr()` answers for those reads in its own `unsafe`.
unsafe impl Send for FileMapping {}

impl FileMapping {
    pub fn new(file: &std::fs::File, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh read-only shared mapping of an open fd; the kernel picks the address;
        // the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    /// The first byte of the mapping.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr as *mut u8
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (`mmap` refuses an empty mapping).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for FileMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`, once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Whether the process behind `pidfd` has exited (the pidfd polls readable).
pub fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd that lives across the call; timeout 0 never blocks.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

/// System memory figures from `/proc/meminfo`, bytes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct MemFigures {
    pub mem_free: u64,
    pub mem_available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
    pub swap_cached: u64,
}

/// Read `/proc/meminfo`.
pub fn meminfo() -> Result<MemFigures, procfs::ProcError> {
    use procfs::Current;
    let m = procfs::Meminfo::current()?;
    Ok(MemFigures {
        mem_free: m.mem_free,
        mem_available: m.mem_available.unwrap_or(m.mem_free),
        swap_total: m.swap_total,
        swap_free: m.swap_free,
        swap_cached: m.swap_cached,
    })
}

/// An I/O scheduling class and level (`ioprio_set(2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoPriority {
    /// Best effort, level 0 (highest) to 7 (lowest).
    BestEffort(u8),
    /// Only when the disk is otherwise idle.
    Idle,
}

impl IoPriority {
    fn value(self) -> i32 {
        const CLASS_SHIFT: i32 = 13;
        match self {
            IoPriority::BestEffort(l) => (2 << CLASS_SHIFT) | i32::from(l.min(7)),
            IoPriority::Idle => 3 << CLASS_SHIFT,
        }
    }
}

const IOPRIO_WHO_PROCESS: i32 = 1;

/// Set the calling thread's I/O priority until the guard is dropped (then the previous one is
/// restored). Reads issued meanwhile (`MADV_WILLNEED`, `posix_fadvise`) carry it.
pub fn io_priority(p: IoPriority) -> io::Result<IoPriorityGuard> {
    // SAFETY: ioprio_get/ioprio_set take integers only; who = 0 is the calling thread.
    let old = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
    if old < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, p.value()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(IoPriorityGuard(old as i32))
}

/// Restores the previous I/O priority of the thread on drop.
#[derive(Debug)]
pub struct IoPriorityGuard(i32);

impl Drop for IoPriorityGuard {
    fn drop(&mut self) {
        // SAFETY: integers only; restores the value read by `io_priority` for this thread.
        unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, self.0) };
    }
}

/// Test support: a private anonymous read-write mapping of `pages` pages in this process,
/// unmapped when dropped.
#[cfg(test)]
pub(crate) struct AnonMapping {
    pub base: *mut u8,
    len: usize,
}

#[cfg(test)]
impl AnonMapping {
    pub fn new(pages: usize) -> Self {
        let len = pages * page_size() as usize;
        // SAFETY: a fresh private anonymous mapping; the kernel picks the address; no existing
        // memory is touched; the result is checked against MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        Self {
            base: base as *mut u8,
            len,
        }
    }

    /// The address of every page, in order.
    pub fn addrs(&self) -> Vec<u64> {
        let ps = page_size();
        (0..self.len as u64 / ps)
            .map(|i| self.base as u64 + i * ps)
            .collect()
    }
}

#[cfg(test)]
impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used (pages already unmapped by a test
        // are skipped by the kernel).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// Test support: a forked child of this process that only pauses (it shares this process's
/// mappings as they were at the fork, untouched pages unmapped), killed and reaped on drop.
#[cfg(test)]
pub(crate) struct PausedChild(pub nix::unistd::Pid);

#[cfg(test)]
impl PausedChild {
    pub fn fork() -> Self {
        // SAFETY: the child only pauses (no allocation, no locks) until it is killed.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => loop {
                nix::unistd::pause();
            },
            nix::unistd::ForkResult::Parent { child } => Self(child),
        }
    }

    pub fn pid(&self) -> i32 {
        self.0.as_raw()
    }
}

#[cfg(test)]
impl Drop for PausedChild {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.0, None);
    }
}

#[cfg(test)]
mod tests_sys {
    use super::*;

    #[test]
    fn per_page_batches_skips_the_failed_page_and_goes_on() {
        let addrs: Vec<u64> = (0..2500u64).map(|i| i * 4096).collect();
        let mut calls = Vec::new();
        // Every batch stops at its 10th page: that page is skipped, the walk resumes after it.
        let (ok, bad) = per_page_batches(&addrs, 1, |at, b| {
            calls.push((at, b[0].base, b.len()));
            assert!(b.iter().all(|v| v.len == 1));
            Ok::<_, ()>(b.len().min(10))
        })
        .unwrap();
        assert_eq!(calls[0], (0, 0, IOV_MAX));
        assert_eq!(calls[1], (11, 11 * 4096, IOV_MAX));
        assert_eq!(ok + bad, 2500);
        assert_eq!(bad as usize, calls.len() - 1);
        // Errors end the walk.
        let r = per_page_batches(&addrs, 4096, |_, _| Err::<usize, _>("gone"));
        assert_eq!(r, Err("gone"));
    }

    #[test]
    fn io_priority_is_set_and_restored() {
        // SAFETY: integers only; reads this thread's I/O priority.
        let get = || unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) } as i32;
        let before = get();
        {
            let _g = io_priority(IoPriority::Idle).unwrap();
            assert_eq!(get(), IoPriority::Idle.value());
        }
        assert_eq!(get(), before);
        assert_eq!(IoPriority::BestEffort(7).value(), (2 << 13) | 7);
    }
}
