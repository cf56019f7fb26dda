//! procswap::vm mechanism on a real QEMU (root, swap): purge QEMU, fetch only given guest
//! ranges (procswap's prefetch restricted by `fetch_ranges`), Twinkle's segment rule on real
//! faults, QEMU's own ranges, content checked with HMP `pmemsave`.
//!   procswap/tests/with-swap.sh cargo test -p procswap --test root_vm_fetch -- --ignored --nocapture
//! (run by local-controller/tests/run-root-tests.sh)

use procswap::vm::{self, Background, GuestRam, PageClass, Plan, Qmp, TwinkleConfig};
use procswap::{Freezer, PrefetchOptions, PurgeOptions, Range, StockBackend};
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};
use torpor_testsupport::pattern::pattern_bytes;
use torpor_testsupport::qemu::Qemu;

const MIB: u64 = 1 << 20;
const PS: u64 = 4096;
const K: u64 = 64 * MIB;
const END: u64 = 128 * MIB;

fn pattern(len: usize) -> Vec<u8> {
    pattern_bytes(0x2545_f491_4f6c_dd1d, len)
}

fn counts(pid: i32, ram: &GuestRam, a: u64, b: u64) -> vm::PageCounts {
    vm::page_counts(
        pid,
        &[Range {
            start: ram.gpa_to_hva(a).unwrap(),
            len: b - a,
        }],
    )
    .unwrap()
}

/// Move every CPU's pending LRU batch to the LRU lists: a page still in a CPU's batch cannot be
/// isolated by MADV_PAGEOUT, and only that CPU drains it (here: a thread pinned to each CPU in
/// turn, calling madvise(MADV_COLD), which drains the local batches first).
fn drain_lru_batches() {
    // SAFETY: CPU_ZERO/CPU_ISSET/CPU_SET/sched_{get,set}affinity on a local, initialised cpu_set_t.
    let cpus: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    };
    for cpu in cpus {
        std::thread::spawn(move || {
            // SAFETY: as above; pid 0 is the calling thread. A fresh private anonymous page,
            // touched, advised and unmapped here only.
            unsafe {
                let mut one: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_ZERO(&mut one);
                libc::CPU_SET(cpu, &mut one);
                assert_eq!(
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one),
                    0,
                    "pin to CPU {cpu}"
                );
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    PS as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                *(p as *mut u8) = 1;
                assert_eq!(
                    libc::madvise(p, PS as usize, libc::MADV_COLD),
                    0,
                    "madvise(MADV_COLD)"
                );
                libc::munmap(p, PS as usize);
            }
        })
        .join()
        .unwrap();
    }
}

/// Write the pattern into guest RAM at [K, END) through /proc/PID/mem.
fn write_pattern(pid: i32, ram: &GuestRam, pat: &[u8]) {
    let mut mem = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .unwrap();
    mem.seek(SeekFrom::Start(ram.gpa_to_hva(K).unwrap()))
        .unwrap();
    mem.write_all(pat).unwrap();
}

/// QEMU's own memory is everything private outside guest RAM.
fn check_own_ranges(pid: i32, ram: &GuestRam) {
    let own = vm::qemu_own_ranges(pid, ram).unwrap();
    assert!(!own.is_empty());
    for o in &own {
        for g in ram.hva_ranges() {
            assert!(
                o.end() <= g.start || o.start >= g.end(),
                "own range {o:?} overlaps guest RAM {g:?}"
            );
        }
    }
}

/// Fresh pages still in a CPU's LRU batch cannot be paged out yet: drain every CPU's batches,
/// purge, and repeat until the whole region is out (the deadline only catches a purge that
/// never gets there; how many rounds it takes is not the point).
fn purge_until_out(pid: i32, ram: &GuestRam, region: u64) {
    let t = Instant::now();
    for i in 0.. {
        drain_lru_batches();
        let r = procswap::purge_with(
            &StockBackend,
            pid,
            &PurgeOptions::default(),
            &procswap::NoProgress,
        )
        .unwrap();
        let c = counts(pid, ram, K, END);
        eprintln!(
            "purge {i}: {} MiB swapped in {:.3}s; pattern region {c:?}",
            r.swapped_bytes >> 20,
            r.seconds
        );
        if c.swapped == region {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "pattern region not out after {i} purges: {c:?}"
        );
    }
    assert_eq!(counts(pid, ram, K, END).swapped, region);
}

/// Nothing asked: nothing fetched; 16 MiB asked: exactly those come back.
fn fetch_ranges_exactly(pid: i32, ram: &GuestRam, base: &PrefetchOptions, region: u64) {
    // Nothing asked: nothing fetched (and the cost of one call is the scan).
    let t = Instant::now();
    let e = vm::fetch_ranges(&StockBackend, pid, vec![], base).unwrap();
    eprintln!(
        "fetch_ranges([]): {:.1} ms (scan overhead of one prefetch call on QEMU)",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!((e.candidate_pages, e.read_issued_bytes), (0, 0));
    assert_eq!(counts(pid, ram, K, END).swapped, region);
    // 16 MiB asked: exactly those come back.
    let t = Instant::now();
    let a = vm::fetch_ranges(
        &StockBackend,
        pid,
        vec![Range {
            start: ram.gpa_to_hva(K).unwrap(),
            len: 16 * MIB,
        }],
        base,
    )
    .unwrap();
    eprintln!(
        "fetch_ranges(16 MiB): {:.1} ms, {} pages",
        t.elapsed().as_secs_f64() * 1e3,
        a.read_issued_bytes / PS
    );
    assert_eq!(a.read_issued_bytes, 16 * MIB);
    assert_eq!(counts(pid, ram, K, K + 16 * MIB).swapped, 0);
    assert_eq!(counts(pid, ram, K + 16 * MIB, END).swapped, region - 4096);
}

/// Twinkle on real faults: a fetcher with no rest phase that watches far longer than the
/// test; returned once running.
fn spawn_watching_fetcher(
    pid: i32,
    ram: &GuestRam,
    plan: &Plan,
    base: &PrefetchOptions,
) -> Background {
    let watch = Duration::from_secs(3600);
    let cfg = TwinkleConfig {
        rest_pages_per_round: 0,
        linger: watch,
        prefetch: base.clone(),
        ..Default::default()
    };
    let bg =
        Background::spawn(Box::new(StockBackend), pid, plan, 8, ram.hva_ranges(), cfg).unwrap();
    let s0 = bg.stats();
    assert!(
        s0.segments >= 128 && s0.segments_with_swapped >= 12,
        "{s0:?}"
    );
    bg
}

/// "Fault" every other page of [80, 88) MiB in through /proc/PID/mem.
fn fault_every_other_page(pid: i32, ram: &GuestRam) {
    let t = Instant::now();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut b = [0u8; 1];
    for p in (0..(8 * MIB / PS)).step_by(2) {
        mem.seek(SeekFrom::Start(ram.gpa_to_hva(80 * MIB + p * PS).unwrap()))
            .unwrap();
        mem.read_exact(&mut b).unwrap();
    }
    eprintln!(
        "1024 faults through /proc/{pid}/mem in {:.3} s",
        t.elapsed().as_secs_f64()
    );
}

/// Wait until a whole poll round has run after the last fault, stop the fetcher and check
/// that exactly the triggered segments were fetched.
fn stop_after_two_rounds(pid: i32, ram: &GuestRam, bg: Background) {
    // The round running now may have scanned some segments before the last fault; the one after
    // it starts after all of them.
    let r0 = bg.stats().rounds;
    let t = Instant::now();
    while bg.stats().rounds < r0 + 2 {
        assert!(
            bg.is_running(),
            "background fetcher ended early: {:?}",
            bg.stats()
        );
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "background fetcher made no 2 rounds in 120 s: {:?}",
            bg.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    let s = bg.stop();
    eprintln!("twinkle: {s:?}");
    // Stopped, not finished: it would have watched for an hour; the bound only catches a hang.
    assert_eq!(s.ended.as_deref(), Some("stopped"), "{s:?}");
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(s.segments_triggered >= 1 && s.twinkle_pages >= 500, "{s:?}");
    assert_eq!(s.rest_pages, 0);
    assert!(
        counts(pid, ram, 80 * MIB, 88 * MIB).swapped <= 512,
        "triggered segments fetched whole"
    );
    assert_eq!(
        counts(pid, ram, 96 * MIB, END).swapped,
        8192,
        "untouched segments stay on swap"
    );
}

/// Without faults and with no rest phase, a fetcher ends by itself once it has lingered,
/// having fetched nothing.
fn lingering_fetcher_fetches_nothing(
    pid: i32,
    ram: &GuestRam,
    plan: &Plan,
    base: &PrefetchOptions,
) {
    let brief = TwinkleConfig {
        rest_pages_per_round: 0,
        linger: Duration::from_millis(200),
        prefetch: base.clone(),
        ..Default::default()
    };
    let bg = Background::spawn(
        Box::new(StockBackend),
        pid,
        plan,
        8,
        ram.hva_ranges(),
        brief,
    )
    .unwrap();
    let t = Instant::now();
    while bg.is_running() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "background fetcher did not end after its linger: {:?}",
            bg.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = bg.stop();
    assert_eq!(s.ended.as_deref(), Some("finished"), "{s:?}");
    assert_eq!(
        (s.segments_triggered, s.twinkle_pages, s.rest_pages),
        (0, 0, 0),
        "{s:?}"
    );
    assert_eq!(
        counts(pid, ram, 96 * MIB, END).swapped,
        8192,
        "a lingering fetcher fetches nothing"
    );
}

/// Class-ordered fetch with one shared budget: the first set whole, the second cut, the
/// third not fetched at all.
fn class_ordered_fetch(pid: i32, ram: &GuestRam, base: &PrefetchOptions) {
    let hva = |gpa: u64| ram.gpa_to_hva(gpa).unwrap();
    let sets = vec![
        vec![Range {
            start: hva(96 * MIB),
            len: 8 * MIB,
        }],
        vec![],
        vec![Range {
            start: hva(104 * MIB),
            len: 8 * MIB,
        }],
        vec![Range {
            start: hva(112 * MIB),
            len: 8 * MIB,
        }],
    ];
    let res = vm::fetch_ordered(
        &StockBackend,
        pid,
        sets,
        &PrefetchOptions {
            budget_bytes: Some(10 * MIB),
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!(res.len(), 4);
    let (a, _) = res[0].as_ref().unwrap();
    assert_eq!(
        (a.read_issued_bytes, a.stopped.is_none()),
        (8 * MIB, true),
        "{a:?}"
    );
    assert!(res[1].is_none(), "empty set: no call");
    let (b, _) = res[2].as_ref().unwrap();
    assert_eq!(b.read_issued_bytes, 2 * MIB, "{b:?}");
    assert!(
        matches!(b.stopped, Some(procswap::StopReason::Budget { .. })),
        "{b:?}"
    );
    assert!(res[3].is_none(), "after a cut, later sets are not fetched");
    assert_eq!(counts(pid, ram, 96 * MIB, 104 * MIB).swapped, 0);
    assert_eq!(counts(pid, ram, 104 * MIB, 112 * MIB).swapped, 2048 - 512);
    assert_eq!(counts(pid, ram, 112 * MIB, END).swapped, 4096);
}

/// The guest sees exactly what was written, fetched or not.
fn guest_content_unchanged(q: &Qemu, qmp_path: &std::path::Path, pat: &[u8]) {
    let mut qmp = Qmp::connect(qmp_path, Duration::from_secs(10)).unwrap();
    let out = q.dir.join("pmem");
    let r = qmp
        .hmp(&format!(
            "pmemsave {K:#x} {:#x} \"{}\"",
            END - K,
            out.display()
        ))
        .unwrap();
    assert!(r.trim().is_empty(), "{r}");
    let mut back = Vec::new();
    std::fs::File::open(&out)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == pat, "guest RAM content changed");
}

#[test]
#[ignore = "root + swap: run through local-controller/tests/run-root-tests.sh"]
fn purge_fetch_ranges_twinkle_on_real_qemu() {
    assert_eq!(nix::unistd::geteuid().as_raw(), 0, "needs root");
    assert!(
        procswap::sys::meminfo().unwrap().swap_total > 0,
        "needs swap (with-swap.sh)"
    );
    let q = Qemu::spawn("procswap-vmfetch", "512", None).expect("qemu-system-x86_64");
    let qmp_path = q.qmp.clone();
    let pid = q.pid();
    let mut qmp = Qmp::connect_retry(
        &qmp_path,
        Duration::from_secs(10),
        Instant::now() + Duration::from_secs(20),
    )
    .unwrap();
    let ram = GuestRam::discover(&mut qmp, pid).unwrap();
    let pat = pattern((END - K) as usize);
    write_pattern(pid, &ram, &pat);
    drop(qmp); // a stopped QEMU cannot answer; reconnect after the thaw.

    check_own_ranges(pid, &ram);

    let fz = Freezer::Signal(pid);
    fz.freeze(Duration::from_secs(10)).unwrap();
    let region = (END - K) / PS;
    purge_until_out(pid, &ram, region);

    let base = PrefetchOptions {
        threads: 2,
        free_floor_bytes: 64 * MIB,
        ..Default::default()
    };
    fetch_ranges_exactly(pid, &ram, &base, region);

    // Twinkle on real faults: thaw (the VM stays in prelaunch: no guest runs), then "fault" every
    // other page of [80, 88) MiB in through /proc/PID/mem; no rest phase. The fetcher lingers far
    // longer than this test can take (it must not give up while the faults are still being
    // made, however slowly): once a whole poll round has run after the last fault, every
    // segment those faults trigger has been fetched, and the fetcher is stopped.
    fz.thaw(Duration::from_secs(10)).unwrap();
    let plan = Plan::build(&ram, PS, |_| PageClass::Outside);
    let bg = spawn_watching_fetcher(pid, &ram, &plan, &base);
    fault_every_other_page(pid, &ram);
    stop_after_two_rounds(pid, &ram, bg);
    lingering_fetcher_fetches_nothing(pid, &ram, &plan, &base);

    class_ordered_fetch(pid, &ram, &base);

    guest_content_unchanged(&q, &qmp_path, &pat);
}
