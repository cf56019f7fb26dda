//! What runs in the fuzzer's children (the fuzzer re-executes itself with a hidden subcommand,
//! so nothing is ever forked from the multithreaded fuzzer):
//!
//! - `target --mode M`: a sacrificial process whose address space keeps changing inside a fixed
//!   window ([`WINDOW`], the addresses the fuzzer aims its ranges at): anonymous private,
//!   shared anonymous and file-backed (memfd shared and private, the executable read-only)
//!   mappings created with `MAP_FIXED`, then munmapped, mremapped (moved, resized,
//!   `MREMAP_DONTUNMAP`), mprotected, madvised (DONTNEED, FREE, COLD, PAGEOUT, HUGEPAGE,
//!   POPULATE_*, WIPEONFORK...), mlocked, touched; it forks (grandchildren churn briefly and
//!   exit, and die with it: `PR_SET_PDEATHSIG`) and sometimes exits by itself. These are the
//!   only real processes DISCARD is ever aimed at.
//! - `caller`: a process that issues slow PREFETCH/DISCARD/PRIORITY_MAP calls on the targets
//!   it is given until the fuzzer SIGKILLs it mid-call (the module's fatal-signal paths).
//!
//! Pages are touched through `process_vm_writev` on ourselves, which fails with EFAULT on an
//! unmapped or protected page instead of raising SIGSEGV, so the churn needs no shadow of
//! what is mapped where.

use crate::rng::{pick, stream, Rng};
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;
use procswap::kmod::Kmod;
use procswap::uapi::TorporRange;
use std::ffi::c_void;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// Start of the window every target churns in (same address in each target: they are
/// separate processes) and that the fuzzer's ranges aim at.
pub const WINDOW: u64 = 0x5e00_0000_0000;
/// Length of the window.
pub const WINDOW_LEN: u64 = 16 << 20;
const PAGE: usize = 4096;
const MEMFD_PAGES: usize = 256;
/// madvise values newer than some libc builds name (include/uapi/asm-generic/mman-common.h).
const MADV_COLLAPSE: i32 = 25;

/// What a target does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Endless random mapping churn, forks, occasional exit.
    Churn,
    /// A populated window that stays mapped; re-touches pages now and then (stable target:
    /// PREFETCH and DISCARD really find and zap pages).
    Steady,
    /// Three threads churning disjoint parts of the window; the main thread may exit alone
    /// (the thread-group leader gone while the process lives on).
    Threads,
    /// Map, touch, a few churn steps, exit within milliseconds (targets that die mid-call).
    Exit,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Churn => "churn",
            Mode::Steady => "steady",
            Mode::Threads => "threads",
            Mode::Exit => "exit",
        }
    }
}

/// Tell the fuzzer we are set up (one line on stdout; no allocation: the heap of a protected
/// target must not grow after the lock).
fn ready() {
    let r = crate::procs::READY;
    // SAFETY: writes our own static buffer to fd 1 (the fuzzer's pipe).
    unsafe { libc::write(1, r.as_ptr().cast(), r.len()) };
}

/// Block until the fuzzer gives us a slot (one byte on stdin); exit if it never will.
fn wait_go() {
    let mut b = 0u8;
    // SAFETY: reads one byte from fd 0 (the fuzzer's pipe) into a local.
    if unsafe { libc::read(0, (&mut b as *mut u8).cast(), 1) } != 1 {
        std::process::exit(0);
    }
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Reserve the whole window (PROT_NONE, `MAP_FIXED_NOREPLACE`): from then on every `MAP_FIXED`
/// inside it can only replace our own window mappings.
fn reserve_window() {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the window is ours
    // afterwards.
    let p = unsafe {
        libc::mmap(
            WINDOW as *mut c_void,
            WINDOW_LEN as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_FIXED_NOREPLACE
                | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p != WINDOW as *mut c_void {
        eprintln!("torpor-kmod-fuzz target: cannot reserve the window at {WINDOW:#x}");
        std::process::exit(90);
    }
}

/// Lock everything mapped now except the window (`mlockall(MCL_CURRENT)`, then `munlock` of
/// the window): DISCARD skips `VM_LOCKED` VMAs, so a target protected this way survives the
/// DISCARDs aimed at its whole address space (its stack, heap and libraries) and keeps
/// churning, while its window stays zappable. Most targets are protected; the others die when
/// a DISCARD zaps their stack (targets exiting mid-call, the other case worth having). The
/// churn loop allocates nothing afterwards, so no unlocked heap appears later.
fn protect_outside_window() {
    // SAFETY: locks (and populates) this process's own mappings; no memory content changes.
    unsafe { libc::mlockall(libc::MCL_CURRENT) };
    // SAFETY: unlocks this process's own window reservation.
    unsafe { libc::munlock(WINDOW as *const c_void, WINDOW_LEN as usize) };
}

/// One churning actor over `[base, base + pages * PAGE)`.
struct Churner {
    rng: Rng,
    base: usize,
    pages: usize,
    memfd: OwnedFd,
    exe: std::fs::File,
    exe_pages: usize,
    can_fork: bool,
    kids: Vec<libc::pid_t>,
}

impl Churner {
    fn new(rng: Rng, base: usize, pages: usize, can_fork: bool) -> Self {
        let memfd = nix::sys::memfd::memfd_create(
            c"torpor-fuzz",
            nix::sys::memfd::MemFdCreateFlag::empty(),
        )
        .unwrap_or_else(|e| {
            eprintln!("torpor-kmod-fuzz target: memfd_create: {e}");
            std::process::exit(91)
        });
        if nix::unistd::ftruncate(&memfd, (MEMFD_PAGES * PAGE) as i64).is_err() {
            std::process::exit(91);
        }
        let exe = std::fs::File::open("/proc/self/exe").unwrap_or_else(|_| std::process::exit(91));
        let exe_pages =
            (exe.metadata().map(|m| m.len() as usize).unwrap_or(0) / PAGE).clamp(1, 256);
        Self {
            rng,
            base,
            pages,
            memfd,
            exe,
            exe_pages,
            can_fork,
            kids: Vec::with_capacity(4),
        }
    }

    /// A random page-aligned span of at most `max` pages inside our part of the window.
    fn span(&mut self, max: usize) -> (usize, usize) {
        let off = self.rng.below(self.pages as u64) as usize;
        let n = 1 + self.rng.below(max.min(self.pages - off) as u64) as usize;
        (self.base + off * PAGE, n * PAGE)
    }

    fn map_fixed(&self, addr: usize, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> bool {
        // SAFETY: MAP_FIXED strictly inside our part of the window (reserved at start, used by
        // nothing else in this process), so it can only replace our own window mappings.
        let p = unsafe {
            libc::mmap(
                addr as *mut c_void,
                len,
                prot,
                flags | libc::MAP_FIXED,
                fd,
                off,
            )
        };
        p != libc::MAP_FAILED
    }

    /// Write 8 bytes into up to `n` random pages of `[addr, addr + len)` (faulting them in, COW
    /// included); pages that are unmapped or protected just fail.
    fn touch(&mut self, addr: usize, len: usize, n: usize) {
        let pages = len / PAGE;
        for _ in 0..n.min(pages) {
            let p = addr
                + self.rng.below(pages as u64) as usize * PAGE
                + (self.rng.below(512) as usize) * 8;
            let v = self.rng.next().to_ne_bytes();
            let _ = process_vm_writev(
                Pid::this(),
                &[IoSlice::new(&v)],
                &[RemoteIoVec { base: p, len: 8 }],
            );
        }
    }

    /// Read 8 bytes from up to `n` random pages (faults file pages in).
    fn read(&mut self, addr: usize, len: usize, n: usize) {
        let pages = len / PAGE;
        for _ in 0..n.min(pages) {
            let p = addr + self.rng.below(pages as u64) as usize * PAGE;
            let mut v = [0u8; 8];
            let _ = process_vm_readv(
                Pid::this(),
                &mut [IoSliceMut::new(&mut v)],
                &[RemoteIoVec { base: p, len: 8 }],
            );
        }
    }

    fn reap_kids(&mut self) {
        self.kids.retain(|&k| {
            let mut st = 0;
            // SAFETY: waitpid on our own child with WNOHANG; `st` is a valid out pointer.
            let r = unsafe { libc::waitpid(k, &mut st, libc::WNOHANG) };
            r == 0
        });
    }

    fn step(&mut self) {
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        match self.rng.below(100) {
            sel @ 0..=41 => self.step_map(sel),
            42..=51 => {
                let (a, l) = self.span(64);
                // SAFETY: unmaps part of our own window; nothing else lives there.
                unsafe { libc::munmap(a as *mut c_void, l) };
            }
            52..=59 => self.step_remap(),
            sel @ 60..=80 => self.step_attributes(sel),
            81..=90 => {
                let (a, l) = self.span(self.pages);
                self.touch(a, l, 32);
            }
            91..=94 if self.can_fork && self.kids.len() < 2 => self.fork(),
            91..=94 => {}
            95..=96 => sleep_ms(1),
            97 => {
                // Reset the whole part to one PROT_NONE reservation (everything gone at once).
                let _ = self.map_fixed(
                    self.base,
                    self.pages * PAGE,
                    libc::PROT_NONE,
                    anon | libc::MAP_NORESERVE,
                    -1,
                    0,
                );
            }
            _ => self.step_huge(),
        }
        self.reap_kids();
    }

    /// Map part of the window: private or shared anonymous, a memfd, or the executable.
    fn step_map(&mut self, sel: u64) {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        match sel {
            0..=19 => {
                let (a, l) = self.span(64);
                if self.map_fixed(a, l, rw, anon, -1, 0) {
                    self.touch(a, l, 16);
                }
            }
            20..=26 => {
                let (a, l) = self.span(32);
                if self.map_fixed(a, l, rw, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0) {
                    self.touch(a, l, 8);
                }
            }
            27..=37 => {
                // memfd (shmem file), shared or private (COW anonymous pages in a file VMA).
                let (a, l) = self.span(32);
                let l = l.min(MEMFD_PAGES * PAGE);
                let off = self.rng.below((MEMFD_PAGES - l / PAGE + 1) as u64) as i64 * PAGE as i64;
                let flags = if self.rng.below(2) == 0 {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                };
                if self.map_fixed(a, l, rw, flags, self.memfd.as_raw_fd(), off) {
                    self.touch(a, l, 8);
                }
            }
            _ => {
                // The executable, read-only private: page-cache pages from a real file.
                let (a, l) = self.span(self.exe_pages);
                let l = l.min(self.exe_pages * PAGE);
                if self.map_fixed(
                    a,
                    l,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    self.exe.as_raw_fd(),
                    0,
                ) {
                    self.read(a, l, 8);
                }
            }
        }
    }

    /// Move, duplicate (MREMAP_DONTUNMAP) or resize part of the window.
    fn step_remap(&mut self) {
        let (old, olen) = self.span(64);
        let (new, nlen) = self.span(64);
        let kind = self.rng.below(3);
        // SAFETY: source and destination both inside our part of the window; with
        // MREMAP_FIXED the kernel unmaps whatever is at the destination, which is
        // window memory; an in-place resize never goes past the window's end
        // (`new_len` bounded by the distance to it).
        unsafe {
            match kind {
                0 => libc::mremap(
                    old as *mut c_void,
                    olen,
                    nlen,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    new as *mut c_void,
                ),
                1 => libc::mremap(
                    old as *mut c_void,
                    olen,
                    olen,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP,
                    new as *mut c_void,
                ),
                _ => {
                    let room = self.base + self.pages * PAGE - old;
                    libc::mremap(old as *mut c_void, olen, nlen.min(room), 0)
                }
            }
        };
    }

    /// Change protection, advice or locking of part of the window.
    fn step_attributes(&mut self, sel: u64) {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        match sel {
            60..=66 => {
                let (a, l) = self.span(64);
                let prot = pick(
                    self.rng.next(),
                    &[
                        libc::PROT_NONE,
                        libc::PROT_READ,
                        rw,
                        rw,
                        libc::PROT_READ | libc::PROT_EXEC,
                    ],
                );
                // SAFETY: changes the protection of our own window pages only; nothing in this
                // process dereferences them (touches go through process_vm_writev).
                unsafe { libc::mprotect(a as *mut c_void, l, prot) };
            }
            67..=77 => {
                let (a, l) = self.span(128);
                let advice = pick(
                    self.rng.next(),
                    &[
                        libc::MADV_DONTNEED,
                        libc::MADV_FREE,
                        libc::MADV_COLD,
                        libc::MADV_PAGEOUT,
                        libc::MADV_PAGEOUT,
                        libc::MADV_WILLNEED,
                        libc::MADV_HUGEPAGE,
                        libc::MADV_NOHUGEPAGE,
                        libc::MADV_DONTFORK,
                        libc::MADV_DOFORK,
                        libc::MADV_WIPEONFORK,
                        libc::MADV_KEEPONFORK,
                        libc::MADV_POPULATE_READ,
                        libc::MADV_POPULATE_WRITE,
                        MADV_COLLAPSE,
                    ],
                );
                // SAFETY: advice on our own window pages; none of these can affect memory
                // outside the range, and nothing in this process relies on their contents.
                unsafe { libc::madvise(a as *mut c_void, l, advice) };
            }
            _ => {
                let (a, l) = self.span(16);
                // SAFETY: (un)locking our own window pages; no memory is changed.
                unsafe {
                    if self.rng.below(2) == 0 {
                        libc::mlock(a as *const c_void, l)
                    } else {
                        libc::munlock(a as *const c_void, l)
                    }
                };
            }
        }
    }

    /// A 2 MiB-aligned THP candidate, touched so the kernel may back it huge.
    fn step_huge(&mut self) {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let huge = 512usize;
        if self.pages >= 2 * huge {
            let slot = self.rng.below((self.pages / huge - 1) as u64) as usize;
            let a = self.base + slot * huge * PAGE;
            if self.map_fixed(a, huge * PAGE, rw, anon, -1, 0) {
                // SAFETY: advice on the region just mapped.
                unsafe { libc::madvise(a as *mut c_void, huge * PAGE, libc::MADV_HUGEPAGE) };
                self.touch(a, huge * PAGE, 64);
            }
        }
    }

    fn fork(&mut self) {
        let parent = nix::unistd::getpid();
        // SAFETY: only called in single-threaded targets (churn, exit); the child keeps using
        // its own copy of this Churner (no locks can be held by other threads) and ends with
        // _exit.
        let g = unsafe { libc::fork() };
        if g == 0 {
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            if nix::unistd::getppid() == parent {
                self.can_fork = false;
                self.kids.clear();
                for _ in 0..10 + self.rng.below(40) {
                    self.step();
                }
            }
            // SAFETY: ends the grandchild without running the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        if g > 0 {
            self.kids.push(g);
        }
    }
}

/// `torpor-kmod-fuzz target --mode M --seed S`: never returns.
pub fn run_target(mode: Mode, seed: u64) -> ! {
    // Never outlive the fuzzer (its threads spawn us and reap us).
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    reserve_window();
    let base = WINDOW as usize;
    let pages = (WINDOW_LEN as usize) / PAGE;
    // 3 targets in 4 (not the short-lived ones) lock what lies outside the window.
    let protect = mode != Mode::Exit && stream(seed, 5, 0).below(4) != 0;
    match mode {
        Mode::Churn => run_churn(seed, base, pages, protect),
        Mode::Exit => run_exit(seed, base, pages),
        Mode::Steady => run_steady(seed, base, pages, protect),
        Mode::Threads => run_threads(seed, base, pages, protect),
    }
}

/// A churning target: random mapping changes, paced, until killed (or, rarely, it exits).
fn run_churn(seed: u64, base: usize, pages: usize, protect: bool) -> ! {
    let mut c = Churner::new(stream(seed, 1, 0), base, pages, true);
    if protect {
        protect_outside_window();
    }
    ready();
    wait_go();
    // Paced (a 1 ms nap every other step on average) so that the targets leave CPU to
    // the callers; now and then (about one step in 50000) a target exits by itself.
    loop {
        c.step();
        if c.rng.below(2) == 0 {
            sleep_ms(1);
        }
        if c.rng.below(50_000) == 0 {
            std::process::exit(0);
        }
    }
}

/// A short-lived target: a few changes, then it exits by itself.
fn run_exit(seed: u64, base: usize, pages: usize) -> ! {
    let mut c = Churner::new(stream(seed, 1, 0), base, pages, true);
    if c.map_fixed(
        base,
        64 * PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    ) {
        c.touch(base, 64 * PAGE, 32);
    }
    ready();
    wait_go();
    for _ in 0..c.rng.below(40) {
        c.step();
    }
    sleep_ms(c.rng.below(300));
    std::process::exit(0)
}

/// A steady target: anonymous, shared and memfd memory, retouched, never changed.
fn run_steady(seed: u64, base: usize, pages: usize, protect: bool) -> ! {
    let mut c = Churner::new(stream(seed, 1, 0), base, pages, false);
    let anon_len = base + pages * PAGE - 2 * (1 << 20) - base;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    c.map_fixed(
        base,
        anon_len,
        rw,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    c.map_fixed(
        base + anon_len,
        1 << 20,
        rw,
        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    c.map_fixed(
        base + anon_len + (1 << 20),
        1 << 20,
        rw,
        libc::MAP_SHARED,
        c.memfd.as_raw_fd(),
        0,
    );
    for p in (0..anon_len / 2).step_by(4 * PAGE) {
        let v = [1u8; 8];
        let _ = process_vm_writev(
            Pid::this(),
            &[IoSlice::new(&v)],
            &[RemoteIoVec {
                base: base + p,
                len: 8,
            }],
        );
    }
    c.touch(base + anon_len, 2 << 20, 64);
    if protect {
        protect_outside_window();
    }
    ready();
    wait_go();
    loop {
        sleep_ms(20);
        c.touch(base, anon_len, 16);
    }
}

/// A threaded target: three churning threads; the main thread may exit early.
fn run_threads(seed: u64, base: usize, pages: usize, protect: bool) -> ! {
    let part = pages / 4;
    // Everything is allocated before the lock: the churners here, the threads' stacks
    // (small: the lock populates them) and their std state at spawn.
    let go = std::sync::Arc::new(std::sync::Barrier::new(4));
    for i in 0..3usize {
        let mut c = Churner::new(
            stream(seed, 2, i as u64),
            base + i * part * PAGE,
            part,
            false,
        );
        let go = go.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                go.wait();
                loop {
                    c.step();
                    if c.rng.below(2) == 0 {
                        sleep_ms(1);
                    }
                    if c.rng.below(100_000) == 0 {
                        std::process::exit(0);
                    }
                }
            });
        if spawned.is_err() {
            std::process::exit(92);
        }
    }
    if protect {
        protect_outside_window();
    }
    ready();
    wait_go();
    go.wait();
    let mut r = stream(seed, 3, 0);
    sleep_ms(5 + r.below(300));
    if r.below(4) == 0 {
        // SAFETY: exits only the calling (main) thread; the others keep running and own
        // everything they use; nothing references the main thread's stack.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
    }
    loop {
        sleep_ms(1000);
    }
}

/// A pid no process can have: <= 0 (EINVAL) or above PID_MAX_LIMIT (ESRCH).
pub fn impossible_pid(r: u64) -> i32 {
    const PID_MAX_LIMIT: i64 = 4 * 1024 * 1024;
    let p = match r % 6 {
        0 => 0,
        1 => -1,
        2 => i32::MIN,
        3 => -((r >> 8) as i32 & 0x3fff_ffff) - 1,
        4 => (PID_MAX_LIMIT + 1 + ((r >> 8) % 1_000_000) as i64) as i32,
        _ => i32::MAX,
    };
    assert!(p <= 0 || i64::from(p) > PID_MAX_LIMIT);
    p
}

/// `torpor-kmod-fuzz caller`: slow calls on `targets` (kept unreaped by the fuzzer while this
/// process lives) until killed; exits 0 after `count` calls, 3 on an undocumented errno, 4 if
/// the device cannot be opened.
pub fn run_caller(seed: u64, targets: &[i32], dev: &Path, count: u64) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let k = match Kmod::open_path(dev) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("torpor-kmod-fuzz caller: {e}");
            std::process::exit(4)
        }
    };
    ready();
    let mut r = stream(seed, 4, 0);
    let huge: Vec<TorporRange> = (0..64)
        .map(|i| TorporRange {
            start: WINDOW + i * PAGE as u64,
            len: u64::MAX / 3,
        })
        .collect();
    let window = [TorporRange {
        start: WINDOW,
        len: WINDOW_LEN,
    }];
    for _ in 0..count {
        let pid = if targets.is_empty() || r.below(5) == 0 {
            impossible_pid(r.next())
        } else {
            pick(r.next(), targets)
        };
        let op = r.below(6);
        let res: Result<(), nix::errno::Errno> = match op {
            0 => k.prefetch(pid, &[], true, 0).map(|_| ()),
            1 => k
                .prefetch(pid, &huge, false, pick(r.next(), &[0, 4096, u64::MAX]))
                .map(|_| ()),
            // DISCARD only ever at the fuzzer's targets or at a pid that cannot exist.
            2 => k.discard(pid, &huge).map(|_| ()),
            3 => k.discard(pid, &window).map(|_| ()),
            4 => k.priority_map(pick(r.next(), &[0, 1, 1000])).map(|_| ()),
            _ => k.free_bitmap().map(|_| ()),
        };
        if let Err(e) = res {
            if !crate::oracle::is_documented(e) {
                eprintln!(
                    "torpor-kmod-fuzz caller: op {op} on pid {pid} answered undocumented {e:?}"
                );
                std::process::exit(3);
            }
        }
    }
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_pids() {
        let mut r = stream(1, 2, 3);
        for _ in 0..10_000 {
            let p = impossible_pid(r.next());
            assert!(p <= 0 || p > 4 * 1024 * 1024, "{p}");
        }
    }
}
