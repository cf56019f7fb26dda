//! Module stress tests: races and fuzz against a loaded torpor.ko. Need
//! `/dev/torpor`, so `#[ignore]`d on the host; `make vm-test` runs them in the
//! guest (kmod/tests/vm-suite.sh, `--ignored --test-threads=1`). The harness
//! fails the run on any `BUG:`/`WARNING:`/`Oops` console line, so "no kernel
//! trouble" is checked there; these tests check that every ioctl answers
//! success or a documented errno, and, through GET_STATS, that the module holds
//! no reference (pid, task, mm, page) once the calls have returned and the
//! children are reaped: an exact count, whatever the machine's load.

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use procswap::kmod::Kmod;
use procswap::uapi::{self, TorporDiscard, TorporPrefetch, TorporRange};
use std::time::Instant;

const ITER: usize = 1000;
/// The structure-aware fuzzer (kmod-fuzz, run by vm-suite.sh) covers hostile ioctls at length;
/// this is the quick in-test smoke of the same.
const FUZZ: usize = 20_000;
/// Fixed address the race children map their region at (and the parent targets).
const A: usize = 0x5e00_0000_0000;
const B: usize = 0x5f00_0000_0000;
const LEN: usize = 256 * 1024;

/// errnos the module documents for PREFETCH/DISCARD.
const ALLOWED: &[Errno] = &[
    Errno::ESRCH,
    Errno::EINVAL,
    Errno::EFAULT,
    Errno::E2BIG,
    Errno::ENOMEM,
    Errno::EINTR,
    Errno::ENOTTY,
    Errno::EPERM,
    Errno::ENOSPC,
];

fn kmod() -> Kmod {
    Kmod::open().expect("needs /dev/torpor (runs in the VM via make vm-test)")
}

/// GET_STATS with no ioctl running and every child reaped: the module must hold no reference
/// and have no call in flight. Prints the counters (the suite shows the line).
fn assert_no_refs(k: &Kmod, what: &str) -> uapi::TorporStats {
    let s = k
        .stats()
        .expect("GET_STATS (needs a torpor.ko with the get_stats feature)");
    println!(
        "{what}: module holds pid {} task {} mm {} page {} references, {} ioctls in flight ({} calls, {} errors since load)",
        s.pid_refs, s.task_refs, s.mm_refs, s.page_refs, s.in_flight, s.calls, s.errors
    );
    assert_eq!(
        s.outstanding_refs(),
        0,
        "{what}: references still held after every call returned and every child was reaped: {s:?}"
    );
    assert_eq!(
        s.in_flight, 0,
        "{what}: ioctls in flight with none running: {s:?}"
    );
    s
}

/// In a forked child: only raw syscalls, then `_exit`.
fn child_map(addr: usize, len: usize) -> *mut u8 {
    // SAFETY: MAP_FIXED_NOREPLACE at an address nothing else uses in this fresh child; the
    // region is private anonymous memory owned by this child alone.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        // SAFETY: terminating the forked child without running the parent's destructors.
        unsafe { libc::_exit(90) };
    }
    let p = p as *mut u8;
    for off in (0..len).step_by(4096) {
        // SAFETY: `off < len`, inside the mapping just created.
        unsafe { p.add(off).write_volatile(off as u8 | 1) };
    }
    p
}

fn child_exit(code: i32) -> ! {
    // SAFETY: `_exit` ends the forked child immediately; nothing of the parent's state is touched.
    unsafe { libc::_exit(code) }
}

/// Fork a child running `f` (which must not return normally: it loops or exits).
fn spawn(f: impl FnOnce()) -> Pid {
    // SAFETY: the test runs single-threaded (--test-threads=1) and the child only makes raw
    // syscalls (mmap/munmap/mremap/fork/_exit) before `_exit`, so no lock held by another
    // thread of the parent can be needed in the child.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            f();
            child_exit(0)
        }
        ForkResult::Parent { child } => child,
    }
}

fn reap(pid: Pid) {
    let _ = kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
}

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    errs: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    fn add<T>(&mut self, what: &str, r: Result<T, Errno>) {
        match r {
            Ok(_) => self.ok += 1,
            Err(e) => {
                assert!(ALLOWED.contains(&e), "{what}: undocumented errno {e:?}");
                *self.errs.entry(format!("{e:?}")).or_default() += 1;
            }
        }
    }
}

fn hammer(k: &Kmod, pid: Pid, t: &mut Tally, i: usize) {
    let ranges = [
        TorporRange {
            start: A as u64,
            len: LEN as u64,
        },
        TorporRange {
            start: B as u64,
            len: LEN as u64,
        },
    ];
    t.add("PREFETCH", k.prefetch(pid.as_raw(), &ranges, false, 0));
    if i.is_multiple_of(2) {
        t.add("PREFETCH whole", k.prefetch(pid.as_raw(), &[], true, 0));
    }
    t.add("DISCARD", k.discard(pid.as_raw(), &ranges[..1]));
}

fn race(name: &str, child: impl Fn() + Copy) {
    let k = kmod();
    let t0 = Instant::now();
    let mut t = Tally::default();
    for i in 0..ITER {
        let pid = spawn(child);
        // Hit it while it runs, and keep going while it dies.
        for _ in 0..3 {
            hammer(&k, pid, &mut t, i);
        }
        if i.is_multiple_of(2) {
            let _ = kill(pid, Signal::SIGKILL);
            hammer(&k, pid, &mut t, i);
        }
        reap(pid);
        // After reaping, the pid is gone: ESRCH (or a reused pid, still a documented answer).
        t.add(
            "PREFETCH after reap",
            k.prefetch(pid.as_raw(), &[], true, 0),
        );
    }
    println!(
        "race {name}: {ITER} iterations in {:.1} s: {} ok, errors {:?}",
        t0.elapsed().as_secs_f64(),
        t.ok,
        t.errs
    );
    // Every child is reaped (`reap` waits for each) and no call is running: a reference taken
    // on any path of any of those calls and not released shows here.
    assert_no_refs(&k, &format!("race {name}"));
}

#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn race_target_exits() {
    race("exit", || {
        child_map(A, LEN);
        child_exit(0);
    });
}

#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn race_target_munmaps() {
    race("munmap", || loop {
        let p = child_map(A, LEN);
        // SAFETY: unmapping the region this child just mapped.
        unsafe { libc::munmap(p.cast(), LEN) };
    });
}

#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn race_target_mremaps() {
    race("mremap", || {
        let mut at = child_map(A, LEN) as usize;
        loop {
            let to = if at == A { B } else { A };
            // SAFETY: moving this child's own mapping between two fixed addresses it owns.
            let p = unsafe {
                libc::mremap(
                    at as *mut libc::c_void,
                    LEN,
                    LEN,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    to as *mut libc::c_void,
                )
            };
            if p == libc::MAP_FAILED {
                child_exit(91);
            }
            at = to;
        }
    });
}

#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn race_target_forks() {
    race("fork", || {
        child_map(A, LEN);
        loop {
            // SAFETY: raw fork in a single-threaded child; the grandchild only calls _exit.
            let g = unsafe { libc::fork() };
            if g == 0 {
                child_exit(0);
            }
            if g > 0 {
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(g, std::ptr::null_mut(), 0) };
            }
        }
    });
}

/// Deterministic, seedable randomness (seed non-zero).
use torpor_testsupport::pattern::Xorshift as Rng;

fn pick<T: Copy>(r: u64, xs: &[T]) -> T {
    xs[(r % xs.len() as u64) as usize]
}

/// Fresh random bytes at the head of the blob and fresh random ranges.
fn randomize(rng: &mut Rng, blob: &mut [u8], ranges: &mut [TorporRange]) {
    for b in blob.iter_mut().take(128) {
        *b = rng.next() as u8;
    }
    for r in ranges.iter_mut() {
        *r = TorporRange {
            start: pick(
                rng.next(),
                &[
                    A as u64,
                    B as u64,
                    0,
                    u64::MAX - 4095,
                    rng.next() & 0x7fff_ffff_f000,
                    rng.next(),
                ],
            ),
            len: pick(
                rng.next(),
                &[
                    4096,
                    LEN as u64,
                    0,
                    u64::MAX,
                    1 << 40,
                    rng.next() & 0xffff_ffff,
                ],
            ),
        };
    }
}

/// Random command numbers, mostly unknown ones.
fn fuzz_random_cmd(k: &Kmod, rng: &mut Rng, blob: &mut [u8], ptr: usize, t: &mut Tally) {
    let cmd = match rng.next() % 3 {
        0 => rng.next() as u32,
        1 => uapi::ioc(
            (rng.next() % 4) as u32,
            uapi::TORPOR_IOC_MAGIC,
            rng.next() as u8,
            (rng.next() % 256) as usize,
        ),
        _ => pick(
            rng.next(),
            &[
                uapi::TORPOR_IOC_GET_VERSION,
                uapi::TORPOR_IOC_PREFETCH,
                uapi::TORPOR_IOC_DISCARD,
            ],
        ),
    };
    // DISCARD with a random blob could name any pid: never let it reach a real process.
    if cmd == uapi::TORPOR_IOC_DISCARD && ptr == blob.as_mut_ptr() as usize {
        blob[..4].copy_from_slice(&(-(rng.next() as i32).abs() - 1).to_ne_bytes());
    }
    // FREE_BITMAP/PRIORITY_MAP (a random nr can hit them) would write through the
    // blob's first word: make it a size query.
    if (cmd == uapi::TORPOR_IOC_FREE_BITMAP || cmd == uapi::TORPOR_IOC_PRIORITY_MAP)
        && ptr == blob.as_mut_ptr() as usize
    {
        blob[..8].fill(0);
    }
    // SAFETY: the module must cope with any (cmd, arg); `ptr` is either invalid (the
    // kernel faults, EFAULT) or our 64 KiB blob, which PREFETCH/DISCARD/GET_VERSION
    // may read or overwrite (first 80 bytes) and whose ranges point only at memory
    // of this process (read faults only) or at invalid pids for DISCARD.
    t.add("random", unsafe { k.raw_ioctl(cmd, ptr) });
}

/// PREFETCH with hostile fields (this process, the victim, or no such pid).
fn fuzz_prefetch(
    k: &Kmod,
    rng: &mut Rng,
    ranges: &[TorporRange],
    (me, victim): (i32, Pid),
    t: &mut Tally,
) {
    let mut req = TorporPrefetch {
        pid: pick(
            rng.next(),
            &[me, victim.as_raw(), 0, -1, i32::MAX, rng.next() as i32],
        ),
        flags: pick(rng.next(), &[0, 1, 2, rng.next() as u32]),
        ranges: pick(rng.next(), &[ranges.as_ptr() as u64, 0, 1, rng.next()]),
        nr_ranges: pick(
            rng.next(),
            &[
                0,
                1,
                64,
                65,
                uapi::MAX_SORTED_RANGES + 1,
                uapi::MAX_RANGES + 1,
                u32::MAX,
            ],
        ),
        order: pick(rng.next(), &[0, 1, 2, rng.next() as u32]),
        byte_budget: pick(rng.next(), &[0, 4096, rng.next()]),
        ..Default::default()
    };
    if req.nr_ranges > 64 && req.ranges == ranges.as_ptr() as u64 {
        req.nr_ranges = 64; // reading past our own array would walk our stack/heap as ranges
    }
    // SAFETY: `req` is a valid TorporPrefetch; its `ranges` pointer is our array (with at
    // most its length), or invalid (EFAULT); prefetch only read-faults existing pages.
    t.add("PREFETCH", unsafe {
        k.raw_ioctl(uapi::TORPOR_IOC_PREFETCH, &mut req as *mut _ as usize)
    });
}

/// DISCARD aimed only at the victim or at pids that cannot exist.
fn fuzz_discard(k: &Kmod, rng: &mut Rng, ranges: &[TorporRange], victim: Pid, t: &mut Tally) {
    let mut req = TorporDiscard {
        pid: pick(
            rng.next(),
            &[
                victim.as_raw(),
                0,
                -1,
                i32::MIN,
                -(rng.next() as i32).abs() - 1,
            ],
        ),
        flags: pick(rng.next(), &[0, 0, 0, rng.next() as u32]),
        ranges: pick(rng.next(), &[ranges.as_ptr() as u64, 0, rng.next()]),
        nr_ranges: pick(rng.next(), &[0, 1, 64, uapi::MAX_RANGES + 1]),
        reserved: pick(rng.next(), &[0, 0, 1]),
        ..Default::default()
    };
    if req.nr_ranges > 64 && req.ranges == ranges.as_ptr() as u64 {
        req.nr_ranges = 64;
    }
    // SAFETY: as above; DISCARD can only affect the victim child (or no process).
    t.add("DISCARD", unsafe {
        k.raw_ioctl(uapi::TORPOR_IOC_DISCARD, &mut req as *mut _ as usize)
    });
}

/// FREE_BITMAP with hostile fields; the bitmap lands in our 64 KiB blob (enough for
/// a 2 GiB guest) or at an address that cannot be written.
fn fuzz_free_bitmap(k: &Kmod, rng: &mut Rng, blob: &mut [u8], t: &mut Tally) {
    let mut req = uapi::TorporFreeBitmap {
        bitmap: pick(
            rng.next(),
            &[
                0,
                blob.as_mut_ptr() as u64,
                8,
                0xffff_8880_0000_0000,
                u64::MAX - 7,
            ],
        ),
        bitmap_bytes: pick(rng.next(), &[0, 16, blob.len() as u64, u64::MAX]),
        flags: pick(rng.next(), &[0, 0, 1, rng.next() as u32]),
        reserved: pick(rng.next(), &[0, 0, 1]),
        ..Default::default()
    };
    if req.bitmap == blob.as_mut_ptr() as u64 {
        req.bitmap_bytes = req.bitmap_bytes.min(blob.len() as u64);
    }
    // SAFETY: the module writes at most `bitmap_bytes` bytes at `bitmap`: within our
    // blob, or to an invalid address (EFAULT).
    t.add("FREE_BITMAP", unsafe {
        k.raw_ioctl(uapi::TORPOR_IOC_FREE_BITMAP, &mut req as *mut _ as usize)
    });
}

#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn fuzz_ioctls() {
    let k = kmod();
    let seed = std::env::var("TORPOR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7070_7270_u64);
    let mut rng = Rng(seed | 1);
    // A sacrificial child: the only real process DISCARD may be aimed at.
    let victim = spawn(|| {
        child_map(A, LEN);
        loop {
            // SAFETY: pause() just sleeps until a signal.
            unsafe { libc::pause() };
        }
    });
    let me = std::process::id() as i32;
    let mut blob = vec![0u8; 1 << 16];
    let mut ranges = vec![TorporRange::default(); 64];
    let mut t = Tally::default();
    let t0 = Instant::now();
    let bad_ptrs = [
        0usize,
        1,
        4095,
        0xffff_8880_0000_0000,
        usize::MAX - 15,
        0x7fff_ffff_f000,
    ];
    for i in 0..FUZZ {
        randomize(&mut rng, &mut blob, &mut ranges);
        let ptr = if rng.next().is_multiple_of(4) {
            pick(rng.next(), &bad_ptrs)
        } else {
            blob.as_mut_ptr() as usize
        };
        match rng.next() % 10 {
            // Random command numbers, mostly unknown ones.
            0..=3 => fuzz_random_cmd(&k, &mut rng, &mut blob, ptr, &mut t),
            // PREFETCH with hostile fields (this process, the victim, or no such pid).
            4..=6 => fuzz_prefetch(&k, &mut rng, &ranges, (me, victim), &mut t),
            // DISCARD aimed only at the victim or at pids that cannot exist.
            7..=8 => fuzz_discard(&k, &mut rng, &ranges, victim, &mut t),
            _ if i % 2 == 0 => {
                // SAFETY: GET_VERSION writes 48 bytes to `ptr`: our blob or an invalid address.
                t.add("GET_VERSION", unsafe {
                    k.raw_ioctl(uapi::TORPOR_IOC_GET_VERSION, ptr)
                });
            }
            _ => fuzz_free_bitmap(&k, &mut rng, &mut blob, &mut t),
        }
        if i.is_multiple_of(20_000) {
            println!("fuzz: {i} ioctls, {:.1} s", t0.elapsed().as_secs_f64());
        }
    }
    reap(victim);
    println!(
        "fuzz: {FUZZ} ioctls (seed {seed:#x}) in {:.1} s: {} ok, errors {:?}",
        t0.elapsed().as_secs_f64(),
        t.ok,
        t.errs
    );
    assert!(
        t.errs.contains_key("ENOTTY") && t.errs.contains_key("EFAULT") && t.ok > 0,
        "fuzz did not reach the handlers: {t:?}"
    );
    assert_no_refs(&k, "fuzz");
}

/// A child with 64 pages touched at A and 64 untouched pages right after (holes).
fn spawn_half_touched() -> Pid {
    spawn(|| {
        // SAFETY: as in child_map, but twice the length and only the first half touched.
        let p = unsafe {
            libc::mmap(
                A as *mut libc::c_void,
                2 * LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            child_exit(90);
        }
        for off in (0..LEN).step_by(4096) {
            // SAFETY: inside the first half of the mapping.
            unsafe { (p as *mut u8).add(off).write_volatile(7) };
        }
        loop {
            // SAFETY: sleep until killed.
            unsafe { libc::pause() };
        }
    })
}

/// PREFETCH of touched pages and holes, DISCARD of the touched half and of a range outside
/// any VMA.
fn prefetch_then_discard(k: &Kmod, pid: Pid, pages: u64) {
    let range = |start: usize, len: usize| {
        [TorporRange {
            start: start as u64,
            len: len as u64,
        }]
    };
    let prefetch = |start, len| {
        k.prefetch(pid.as_raw(), &range(start, len), false, 0)
            .unwrap()
    };
    let discard = |start, len| k.discard(pid.as_raw(), &range(start, len)).unwrap();
    let r = prefetch(A, 2 * LEN);
    println!("prefetch of a touched+untouched region: {r:?}");
    assert_eq!(r.pages_present, pages, "touched pages are present");
    assert_eq!(
        r.pages_unpopulated, pages,
        "untouched pages are holes and must not be faulted in"
    );
    assert_eq!(r.pages_mapped + r.pages_failed, 0);
    // Holes stayed holes (no zero page mapped): a second pass sees the same.
    let r2 = prefetch(A, 2 * LEN);
    assert_eq!(r2.pages_unpopulated, pages);
    // Whole mode sees at least the touched pages.
    let w = k.prefetch(pid.as_raw(), &[], true, 0).unwrap();
    assert!(w.pages_present >= pages, "{w:?}");
    // Budget: a budget stops the walk only after mapping; nothing to map here, so no stop.
    assert_eq!(r.stop_addr, 0);
    // DISCARD the touched half: zapped, then PREFETCH finds holes only.
    let d = discard(A, LEN);
    assert_eq!(d.bytes_zapped, LEN as u64, "{d:?}");
    let r3 = prefetch(A, LEN);
    assert_eq!(r3.pages_unpopulated, pages, "{r3:?}");
    // Range outside any VMA: skipped by DISCARD, nothing for PREFETCH.
    let d2 = discard(B, LEN);
    assert_eq!((d2.bytes_zapped, d2.bytes_skipped), (0, LEN as u64));
}

/// A zombie: exited, not reaped.
fn zombie_has_no_mm(k: &Kmod) {
    let z = spawn(|| child_exit(0));
    // Wait until it is a zombie (state Z) without reaping it.
    let t0 = Instant::now();
    loop {
        let stat =
            std::fs::read_to_string(format!("/proc/{z}/stat")).expect("zombie's /proc entry");
        if stat
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z')
        {
            break;
        }
        assert!(
            t0.elapsed().as_secs() < 10,
            "child never became a zombie: {stat}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        k.prefetch(z.as_raw(), &[], true, 0).unwrap_err(),
        Errno::ESRCH,
        "zombie has no mm"
    );
    reap(z);
}

/// PREFETCH maps swapped pages and counts holes; DISCARD zaps; both report.
#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn prefetch_and_discard_semantics() {
    let k = kmod();
    // A child with 64 pages touched at A and 64 untouched pages right after (holes).
    let pid = spawn_half_touched();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pages = (LEN / 4096) as u64;
    prefetch_then_discard(&k, pid, pages);
    // Bad input.
    assert_eq!(k.prefetch(0, &[], true, 0).unwrap_err(), Errno::EINVAL);
    assert_eq!(k.prefetch(-5, &[], true, 0).unwrap_err(), Errno::EINVAL);
    assert_eq!(
        k.prefetch(2, &[], true, 0).unwrap_err(),
        Errno::EINVAL,
        "pid 2 is kthreadd: refused"
    );
    let overflow = [TorporRange {
        start: u64::MAX - 4095,
        len: 8192,
    }];
    assert_eq!(
        k.prefetch(pid.as_raw(), &overflow, false, 0).unwrap_err(),
        Errno::EINVAL
    );
    reap(pid);
    assert_eq!(
        k.prefetch(pid.as_raw(), &[], true, 0).unwrap_err(),
        Errno::ESRCH
    );
    zombie_has_no_mm(&k);
    assert_no_refs(&k, "prefetch of a touched+untouched region, semantics done");
}

fn meminfo_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// FREE_BITMAP: the count of set bits is the module's free_pages, and matches MemFree read
/// around it within 1%; a size query and a short buffer answer correctly.
#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn free_bitmap_matches_memfree() {
    let k = kmod();
    assert!(k.has(uapi::features::FREE_BITMAP));
    for round in 0..3 {
        let before = meminfo_kib("MemFree:");
        let (bits, rep) = k.free_bitmap().unwrap();
        let after = meminfo_kib("MemFree:");
        let set: u64 = bits.iter().map(|b| b.count_ones() as u64).sum();
        assert_eq!(set, rep.free_pages, "bits set vs the module's count");
        let free_kib = rep.free_pages * 4;
        let memfree = (before + after) / 2;
        let diff = free_kib.abs_diff(memfree);
        println!(
            "free bitmap round {round}: {} free pages = {free_kib} KiB vs MemFree {before}..{after} KiB (diff {:.2}%), end_pfn {}, {:.3} ms in the module",
            rep.free_pages,
            diff as f64 * 100.0 / memfree as f64,
            rep.end_pfn,
            rep.ns as f64 / 1e6
        );
        assert!(
            diff * 100 <= memfree,
            "free bitmap {free_kib} KiB vs MemFree {memfree} KiB: more than 1% apart"
        );
    }
    // Bad input: short buffer -> ENOSPC with end_pfn reported; nonzero flags -> EINVAL.
    let mut small = [0u8; 16];
    let mut req = uapi::TorporFreeBitmap {
        bitmap: small.as_mut_ptr() as u64,
        bitmap_bytes: 16,
        ..Default::default()
    };
    // SAFETY: the module writes at most 16 bytes into `small` (it refuses: too short).
    let r = unsafe { k.raw_ioctl(uapi::TORPOR_IOC_FREE_BITMAP, &mut req as *mut _ as usize) };
    assert_eq!(r, Err(Errno::ENOSPC));
    assert!(req.end_pfn > 4096, "end_pfn reported with ENOSPC: {req:?}");
    let mut req = uapi::TorporFreeBitmap {
        flags: 1,
        ..Default::default()
    };
    // SAFETY: a size query with bad flags: only the request is touched.
    let r = unsafe { k.raw_ioctl(uapi::TORPOR_IOC_FREE_BITMAP, &mut req as *mut _ as usize) };
    assert_eq!(r, Err(Errno::EINVAL));
    let mut req = uapi::TorporFreeBitmap {
        bitmap: 8,
        bitmap_bytes: u64::MAX,
        ..Default::default()
    };
    // SAFETY: an invalid buffer address: the module must answer EFAULT.
    let r = unsafe { k.raw_ioctl(uapi::TORPOR_IOC_FREE_BITMAP, &mut req as *mut _ as usize) };
    assert_eq!(r, Err(Errno::EFAULT));
}

// ---------------------------------------------------------------------------------------
// PRIORITY_MAP (guest side).

const CAT_KERNEL: u8 = 0;
const CAT_USER_CODE: u8 = 4;
const CAT_USER_DATA: u8 = 5;
const CAT_OTHER: u8 = 8;
const PAGE: u64 = 4096;

/// PFNs of the present pages of `[start, start + len)` in process `pid` (`/proc/PID/pagemap`;
/// root sees real PFNs).
fn present_pfns(pid: &str, start: u64, len: u64) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let n = (len / PAGE) as usize;
    let mut raw = vec![0u8; n * 8];
    f.read_exact_at(&mut raw, start / PAGE * 8).unwrap();
    raw.chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .filter(|e| e >> 63 & 1 == 1)
        .map(|e| e & ((1 << 55) - 1))
        .inspect(|&pfn| assert_ne!(pfn, 0, "pagemap hides PFNs: not root?"))
        .collect()
}

/// The PFNs of `before` that are still at the same position in `after` (pages that did not move
/// between two pagemap reads); panics when none are left (nothing would be judged).
fn stable(before: &[u64], after: &[u64]) -> Vec<u64> {
    let same: Vec<u64> = before
        .iter()
        .zip(after)
        .filter(|(a, b)| a == b)
        .map(|(a, _)| *a)
        .collect();
    assert!(
        !same.is_empty(),
        "every page moved between two reads: nothing to judge"
    );
    if same.len() != before.len() {
        println!("{} of {} pages moved during the call (khugepaged/compaction): judged the {} that did not", before.len() - same.len(), before.len(), same.len());
    }
    same
}

/// `(category -> pages)` of `pfns` in `map`, as a readable string, and how many are `want`.
fn tally(map: &[u8], pfns: &[u64], want: u8) -> (usize, String) {
    let mut h = [0usize; 9];
    for &p in pfns {
        h[map[p as usize].min(8) as usize] += 1;
    }
    (h[want as usize], format!("{h:?}"))
}

/// "Kernel code" ranges of /proc/iomem, as PFN ranges (pages fully inside).
fn kernel_code_pfns() -> Vec<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/iomem").unwrap();
    s.lines()
        .filter(|l| l.trim_start().ends_with(": Kernel code"))
        .map(|l| {
            let (a, b) = l.trim().split(' ').next().unwrap().split_once('-').unwrap();
            let (a, b) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            (a.div_ceil(PAGE), (b + 1) / PAGE)
        })
        .collect()
}

/// The present pages (frame numbers) of `buf`, a buffer of this process, from its first page
/// boundary on (its last, partial page left out).
fn buffer_pfns(buf: &[u8]) -> Vec<u64> {
    present_pfns(
        "self",
        buf.as_ptr() as u64 & !(PAGE - 1),
        buf.len() as u64 - PAGE,
    )
}

/// The present pages (frame numbers) of this test binary's executable mappings.
fn own_text_pfns() -> Vec<u64> {
    own_text_ranges()
        .iter()
        .flat_map(|&(a, b)| present_pfns("self", a, b - a))
        .collect()
}

/// Executable mappings of this test binary (`/proc/self/maps`).
fn own_text_ranges() -> Vec<(u64, u64)> {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let exe = exe.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[1].as_bytes()[2] == b'x' && f[5] == exe).then(|| {
                let (a, b) = f[0].split_once('-').unwrap();
                (
                    u64::from_str_radix(a, 16).unwrap(),
                    u64::from_str_radix(b, 16).unwrap(),
                )
            })
        })
        .collect()
}

/// One priority map: the module's counts match it, and kernel code, our text and our
/// touched heap are in their categories. Returns the module's build time, ns.
fn check_priority_round(
    k: &Kmod,
    round: usize,
    kcode: &[(u64, u64)],
    text: &[u64],
    heap_pfns: &[u64],
) -> u64 {
    let (map, rep) = k.priority_map(0).unwrap();
    assert_eq!(map.len() as u64, rep.end_pfn);
    assert_eq!(
        rep.window_ms,
        uapi::DEFAULT_WINDOW_MS,
        "window used when 0 is asked"
    );
    assert!(map.iter().all(|&b| b <= CAT_OTHER), "a byte outside 0..=8");
    let mut h = [0u64; 9];
    map.iter().for_each(|&b| h[b as usize] += 1);
    assert_eq!(h, rep.counts, "module counts vs the map");
    assert!(
        rep.active_procs >= 1 && rep.active_procs <= rep.total_procs,
        "{rep:?}"
    );
    for &(a, b) in kcode {
        let (n, hist) = tally(&map, &(a..b).collect::<Vec<_>>(), CAT_KERNEL);
        assert_eq!(
            n as u64,
            b - a,
            "kernel code PFNs {a:#x}..{b:#x} not all Kernel: {hist}"
        );
    }
    let (n, hist) = tally(&map, text, CAT_USER_CODE);
    assert_eq!(n, text.len(), "own text pages not all User_Code: {hist}");
    let (n, hist) = tally(&map, heap_pfns, CAT_USER_DATA);
    assert_eq!(
        n,
        heap_pfns.len(),
        "own touched heap not all User_Data: {hist}"
    );
    println!(
        "priority map round {round}: end_pfn {} ({} MiB), {:.3} ms in the module ({:.3} ms walking {} of {} processes), counts {:?}; kernel code {} pages Kernel, own text {} pages User_Code, heap {} pages User_Data",
        rep.end_pfn,
        (rep.end_pfn * PAGE) >> 20,
        rep.ns as f64 / 1e6,
        rep.user_ns as f64 / 1e6,
        rep.active_procs,
        rep.total_procs,
        rep.counts,
        kcode.iter().map(|(a, b)| b - a).sum::<u64>(),
        text.len(),
        heap_pfns.len()
    );
    rep.ns
}

/// Bad input: bad flags, a short buffer, invalid buffer and request addresses.
fn priority_map_bad_input(k: &Kmod) {
    let mut req = uapi::TorporPriorityMap {
        flags: 1,
        ..Default::default()
    };
    // SAFETY: a size query with bad flags: only the request is touched.
    let r = unsafe { k.raw_ioctl(uapi::TORPOR_IOC_PRIORITY_MAP, &mut req as *mut _ as usize) };
    assert_eq!(r, Err(Errno::EINVAL));
    let mut small = [0u8; 4096];
    let mut req = uapi::TorporPriorityMap {
        map: small.as_mut_ptr() as u64,
        map_bytes: 4096,
        ..Default::default()
    };
    // SAFETY: the module writes at most 4096 bytes into `small` (it refuses: too short).
    let r = unsafe { k.raw_ioctl(uapi::TORPOR_IOC_PRIORITY_MAP, &mut req as *mut _ as usize) };
    assert_eq!(r, Err(Errno::ENOSPC));
    assert!(req.end_pfn > 4096, "end_pfn reported with ENOSPC: {req:?}");
    assert!(
        small.iter().all(|&b| b == 0),
        "ENOSPC wrote into the short buffer"
    );
    let mut req = uapi::TorporPriorityMap {
        map: 8,
        map_bytes: u64::MAX,
        ..Default::default()
    };
    // SAFETY: an invalid buffer address: the module must answer EFAULT.
    let r = unsafe { k.raw_ioctl(uapi::TORPOR_IOC_PRIORITY_MAP, &mut req as *mut _ as usize) };
    assert_eq!(r, Err(Errno::EFAULT));
    for bad in [0usize, 8, 0xffff_8880_0000_0000] {
        // SAFETY: invalid request pointers: the module must answer EFAULT without touching memory.
        let r = unsafe { k.raw_ioctl(uapi::TORPOR_IOC_PRIORITY_MAP, bad) };
        assert_eq!(r, Err(Errno::EFAULT), "request at {bad:#x}");
    }
}

/// Hostile fields: only success or a documented errno, never anything else.
fn priority_map_hostile_fields(k: &Kmod) {
    let mut rng = Rng(0x5eed_0004);
    let mut buf = vec![0u8; k.priority_map(0).unwrap().1.end_pfn as usize];
    let mut t = Tally::default();
    for _ in 0..300 {
        let good = buf.as_mut_ptr() as u64;
        let mut req = uapi::TorporPriorityMap {
            map: pick(
                rng.next(),
                &[
                    0,
                    good,
                    good,
                    1,
                    0xffff_8880_0000_0000,
                    u64::MAX - 4095,
                    rng.next(),
                ],
            ),
            map_bytes: pick(
                rng.next(),
                &[
                    buf.len() as u64,
                    0,
                    1,
                    buf.len() as u64 - 1,
                    u64::MAX,
                    rng.next(),
                ],
            ),
            window_ms: pick(rng.next(), &[0, 1, 1000, u32::MAX, rng.next() as u32]),
            flags: pick(rng.next(), &[0, 0, 0, 1, rng.next() as u32]),
            ..Default::default()
        };
        if req.map == good {
            req.map_bytes = req.map_bytes.min(buf.len() as u64); // never claim more than we own
        }
        // SAFETY: `map` is either our buffer with at most its length claimed, or an address the
        // kernel must refuse (EFAULT) — never memory of ours the module could corrupt.
        let r = unsafe { k.raw_ioctl(uapi::TORPOR_IOC_PRIORITY_MAP, &mut req as *mut _ as usize) };
        t.add("priority_map", r);
    }
    println!(
        "priority map fuzz: 300 ioctls ({} ok, errors {:?})",
        t.ok, t.errs
    );
}

/// PRIORITY_MAP: a well-formed map (one valid category per PFN, counts agree), kernel text
/// is Kernel, this running process's text pages are User_Code and its touched heap
/// User_Data; bad input answers EINVAL/ENOSPC/EFAULT.
#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn priority_map_categories() {
    let k = kmod();
    assert!(
        k.has(uapi::features::PRIORITY_MAP),
        "GET_VERSION features {:#x} lack priority_map",
        k.version().features
    );
    // Touched heap: 8 MiB, every page written (so present, private, anonymous).
    let mut heap = vec![0u8; 8 << 20];
    for (i, b) in heap.iter_mut().step_by(PAGE as usize).enumerate() {
        *b = i as u8 | 1;
    }
    let heap_pfns = buffer_pfns(&heap);
    let text = own_text_pfns();
    let kcode = kernel_code_pfns();
    assert!(!kcode.is_empty(), "no Kernel code in /proc/iomem");
    assert!(
        heap_pfns.len() as u64 >= (8 << 20) / PAGE - 2,
        "heap not present: {} pages",
        heap_pfns.len()
    );
    assert!(text.len() > 16, "only {} text pages present", text.len());
    let mut times = Vec::new();
    for round in 0..3 {
        times.push(check_priority_round(&k, round, &kcode, &text, &heap_pfns));
    }
    std::hint::black_box(&heap);
    // Bad input.
    priority_map_bad_input(&k);
    // Hostile fields: only success or a documented errno, never anything else.
    priority_map_hostile_fields(&k);
    times.sort();
    println!(
        "priority map build time: median {:.3} ms",
        times[times.len() / 2] as f64 / 1e6
    );
}

/// The idle child's region.
const CLEN: usize = 8 << 20;

/// A child that touches CLEN bytes at A once, says so through a pipe, then sleeps.
fn spawn_touched_child() -> Pid {
    spawn_ready(|| {
        let p = child_map(A, CLEN);
        // SAFETY: `p` is our own fresh CLEN-byte private mapping; no huge pages (khugepaged
        // would move its pages to new frames), touch every page.
        unsafe {
            libc::madvise(p.cast(), CLEN, libc::MADV_NOHUGEPAGE);
            for i in (0..CLEN).step_by(PAGE as usize) {
                *p.add(i) = 1;
            }
        }
    })
}

/// A child that runs `prepare` (raw syscalls only), then tells the parent through a pipe (raw
/// write) and sleeps until killed. Returns once the child has told.
fn spawn_ready(prepare: impl FnOnce()) -> Pid {
    let (rfd, wfd) = nix::unistd::pipe().unwrap();
    let child = spawn(move || {
        prepare();
        // SAFETY: raw write to the pipe, then sleep until killed (pause only waits for a signal).
        unsafe {
            libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&wfd),
                b"x".as_ptr().cast(),
                1,
            );
            loop {
                libc::pause();
            }
        }
    });
    let mut b = [0u8; 1];
    assert_eq!(
        nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&rfd), &mut b),
        Ok(1)
    );
    child
}

/// After 2.5 s asleep, with a 1 s window: the child's pages are Other, ours User_Data.
fn check_idle_drops_to_other(k: &Kmod, child: Pid, pfns: &[u64], mine: &[u64], heap: &[u8]) {
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (map, rep) = k.priority_map(1000).unwrap();
    assert_eq!(rep.window_ms, 1000);
    let pfns = stable(
        pfns,
        &present_pfns(&child.as_raw().to_string(), A as u64, CLEN as u64),
    );
    let mine = stable(mine, &buffer_pfns(heap));
    let (n, hist) = tally(&map, &pfns, CAT_OTHER);
    println!(
        "idle test: child asleep 2.5 s, window 1 s: {n}/{} pages Other {hist} ({} active of {})",
        pfns.len(),
        rep.active_procs,
        rep.total_procs
    );
    assert_eq!(
        n,
        pfns.len(),
        "pages of a process idle longer than the window are not all Other: {hist}"
    );
    let (n, hist) = tally(&map, &mine, CAT_USER_DATA);
    assert_eq!(
        n,
        mine.len(),
        "the running process's heap is not User_Data with a 1 s window: {hist}"
    );
}

/// PRIORITY_MAP: the pages of a process that ran recently are User_Data; after it has slept
/// longer than a short window they drop to Other (while this running process's stay User_Data).
#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn priority_map_idle_process_drops_to_other() {
    let k = kmod();
    let child = spawn_touched_child();
    let pfns = present_pfns(&child.as_raw().to_string(), A as u64, CLEN as u64);
    assert_eq!(
        pfns.len() as u64,
        CLEN as u64 / PAGE,
        "child's region not fully present"
    );
    let mut heap = vec![1u8; 4 << 20];
    // SAFETY: advice on whole pages inside our own live allocation (no huge pages: see above).
    unsafe {
        libc::madvise(
            ((heap.as_ptr() as u64 + PAGE - 1) & !(PAGE - 1)) as *mut libc::c_void,
            heap.len() - PAGE as usize,
            libc::MADV_NOHUGEPAGE,
        )
    };
    heap.iter_mut().step_by(PAGE as usize).for_each(|b| *b = 2);
    let mine = buffer_pfns(&heap);

    let (map, rep) = k.priority_map(60_000).unwrap();
    // Pages can move while the map is built (khugepaged collapsing the heap into a huge page,
    // compaction on a loaded machine): only the pages whose PFN is the same before and after the
    // call are judged (their page frame is theirs throughout), and there must be some.
    let pfns = stable(
        &pfns,
        &present_pfns(&child.as_raw().to_string(), A as u64, CLEN as u64),
    );
    let (n, hist) = tally(&map, &pfns, CAT_USER_DATA);
    println!(
        "idle test: child just ran, window 60 s: {n}/{} pages User_Data {hist} ({} active of {})",
        pfns.len(),
        rep.active_procs,
        rep.total_procs
    );
    assert_eq!(
        n,
        pfns.len(),
        "pages of a process that just ran are not all User_Data: {hist}"
    );

    check_idle_drops_to_other(&k, child, &pfns, &mine, &heap);
    std::hint::black_box(&heap);
    kill(child, Signal::SIGKILL).unwrap();
    waitpid(child, None).unwrap();
}

/// `torpor-guest` next to this test binary (target/debug/torpor-guest; `make vm-test`
/// builds it), or `$TORPOR_GUEST`.
fn torpor_guest_bin() -> std::path::PathBuf {
    let p = std::env::var_os("TORPOR_GUEST")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().join("torpor-guest")
        });
    assert!(
        p.is_file(),
        "{} missing: cargo build -p guest-enlight --bin torpor-guest",
        p.display()
    );
    p
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(torpor_guest_bin())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "torpor-guest {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "torpor-guest {args:?}: bad JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Checks on a `torpor-guest dump/query --json` summary; returns the category counts.
fn check_summary(what: &str, s: &serde_json::Value, source: &str) -> Vec<u64> {
    assert_eq!(s["source"], source, "{what}: {s}");
    assert_eq!(s["approximate"], source != "ModuleExact", "{what}: {s}");
    let cats: Vec<u64> = s["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[1].as_u64().unwrap())
        .collect();
    assert_eq!(cats.len(), 9);
    assert_eq!(
        cats.iter().sum::<u64>(),
        s["total_pages"].as_u64().unwrap(),
        "{what}: categories do not cover the layout"
    );
    assert!(
        cats[0] > 0 && cats[4] > 0,
        "{what}: no Kernel or no User_Code pages: {cats:?}"
    );
    let r = s["free_over_memfree"].as_f64().unwrap();
    println!(
        "agent {what}: source {source}, {:.2} GiB, free bitmap {} pages = {r:.4} x MemFree in {:.2} ms, priority map in {:.2} ms, categories {cats:?}",
        s["total_gib"].as_f64().unwrap(),
        s["free_pages"],
        s["free_build_ms"].as_f64().unwrap(),
        s["priority_build_ms"].as_f64().unwrap()
    );
    cats
}

/// `dump` from each source: the module's exact maps, the portable approximation.
fn dump_sources() {
    for round in 0..2 {
        let s = run_json(&["dump", "--source", "kmod", "--window", "2s", "--json"]);
        check_summary(&format!("dump --source kmod #{round}"), &s, "ModuleExact");
        let r = s["free_over_memfree"].as_f64().unwrap();
        assert!(
            (0.99..=1.01).contains(&r),
            "module free bitmap {r} x MemFree: more than 1% apart"
        );
        assert_eq!(s["window_ms"], 2000);
        assert!(s["stats"]["priority_ns"].as_u64().unwrap() > 0, "{s}");
    }
    let s = run_json(&["dump", "--window", "2s", "--json"]);
    check_summary("dump --source auto", &s, "ModuleExact");
    let s = run_json(&["dump", "--source", "portable", "--window", "2s", "--json"]);
    check_summary("dump --source portable", &s, "PortableApprox");
}

/// `torpor-guest serve --source kmod` on `sock`, once the socket exists.
fn spawn_agent(sock: &std::path::Path) -> std::process::Child {
    let server = std::process::Command::new(torpor_guest_bin())
        .args(["serve", "--source", "kmod", "--unix"])
        .arg(sock)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed().as_secs() < 30,
            "agent did not create {}",
            sock.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server
}

/// Categories of `ranges` (PFNs) through the agent's `query --pfns`.
fn cats_of(sock_s: &str, what: &str, window_ms: &str, ranges: &[(u64, u64)]) -> Vec<u64> {
    let f = std::env::temp_dir().join(format!("torpor-pfns-{}.txt", std::process::id()));
    let text: String = ranges
        .iter()
        .map(|(a, b)| format!("{a:#x}-{b:#x}\n"))
        .collect();
    std::fs::write(&f, text).unwrap();
    let q = run_json(&[
        "query",
        "--unix",
        sock_s,
        "--window-ms",
        window_ms,
        "--json",
        "--pfns",
        f.to_str().unwrap(),
    ]);
    let p = &q["pfn_categories"];
    let listed: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    assert_eq!(p["listed"], listed, "{what}: {q}");
    assert_eq!(
        p["outside_layout"], 0,
        "{what}: PFNs outside the agent's layout: {p}"
    );
    let v: Vec<u64> = p["per_category"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    println!("agent --pfns {what} (window {window_ms} ms): {listed} PFNs, per category {v:?}");
    v
}

/// One PFN range per PFN.
fn single(pfns: &[u64]) -> Vec<(u64, u64)> {
    pfns.iter().map(|&p| (p, p + 1)).collect()
}

/// Kernel text, this process's text and heap through the agent.
fn agent_kernel_text_heap(sock_s: &str) {
    let kcode = kernel_code_pfns();
    let n: u64 = kcode.iter().map(|(a, b)| b - a).sum();
    assert_eq!(
        cats_of(sock_s, "kernel code", "16000", &kcode)[CAT_KERNEL as usize],
        n,
        "kernel code not all Kernel via the agent"
    );
    let mut heap = vec![0u8; 4 << 20];
    heap.iter_mut().step_by(PAGE as usize).for_each(|b| *b = 7);
    let heap_pfns = buffer_pfns(&heap);
    let text = own_text_pfns();
    assert_eq!(
        cats_of(sock_s, "own text", "16000", &single(&text))[CAT_USER_CODE as usize],
        text.len() as u64,
        "own text not all User_Code via the agent"
    );
    assert_eq!(
        cats_of(sock_s, "own heap", "16000", &single(&heap_pfns))[CAT_USER_DATA as usize],
        heap_pfns.len() as u64,
        "own heap not all User_Data via the agent"
    );
    std::hint::black_box(&heap);
}

/// A child that goes idle, through the agent.
fn agent_idle_child(sock_s: &str) {
    const CLEN: usize = 4 << 20;
    let child = spawn_ready(|| {
        child_map(B, CLEN);
    });
    let cpfns = present_pfns(&child.as_raw().to_string(), B as u64, CLEN as u64);
    assert_eq!(cpfns.len(), CLEN / PAGE as usize);
    let ran = cats_of(sock_s, "child that just ran", "60000", &single(&cpfns));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let idle = cats_of(sock_s, "child asleep 2.5 s", "1000", &single(&cpfns));
    reap(child);
    assert_eq!(
        ran[CAT_USER_DATA as usize],
        cpfns.len() as u64,
        "child's pages not User_Data via the agent: {ran:?}"
    );
    assert_eq!(
        idle[CAT_OTHER as usize],
        cpfns.len() as u64,
        "idle child's pages not Other via the agent: {idle:?}"
    );
}

/// `--source kmod` without the module fails with a clear error.
fn absent_module_fails() {
    let out = std::process::Command::new(torpor_guest_bin())
        .args([
            "dump",
            "--source",
            "kmod",
            "--kmod-dev",
            "/nonexistent/torpor",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--source kmod") && err.contains("not loaded"),
        "absent module: {err}"
    );
    println!(
        "agent: --source kmod without the module fails: {}",
        err.lines().last().unwrap_or("")
    );
}

/// The agent path with the module source: `torpor-guest dump` and a served agent queried over
/// a unix socket both use the module (exact maps); the free bitmap is within 1% of MemFree;
/// `--source kmod` without a module is a clear error; `--source portable` still works.
#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn agent_uses_kmod_source() {
    let _k = kmod();
    dump_sources();

    let sock = std::env::temp_dir().join(format!("torpor-guest-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let mut server = spawn_agent(&sock);
    let q = run_json(&[
        "query",
        "--unix",
        sock.to_str().unwrap(),
        "--window-ms",
        "2000",
        "--json",
    ]);
    check_summary("query (serve --source kmod)", &q, "ModuleExact");
    assert_eq!(q["window_ms"], 2000);

    // The same category checks as the ioctl tests, through the wire protocol and the agent's
    // re-indexing by layout (`query --pfns`): kernel text, this process's text and heap, and a
    // child that goes idle.
    let sock_s = sock.to_str().unwrap().to_string();
    agent_kernel_text_heap(&sock_s);
    agent_idle_child(&sock_s);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&sock);

    absent_module_fails();
}
