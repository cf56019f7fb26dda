//! Root suite, part 2: needs swap (run through `with-swap.sh`, see `run-root-tests.sh`).
//! Every test is `#[ignore]`d so a plain `cargo test` does not need root or swap.

mod common;

use common::*;
use procswap::inspect::{InspectOptions, Pagemap};
use procswap::{
    prefetch_with, purge_with, Error, Freezer, NoProgress, PrefetchOptions, PrefetchReport,
    Progress, PurgeOptions, StockBackend, WorkingSet,
};
use std::time::{Duration, Instant};

const ANON_MIB: u64 = 256;
const FILE_MIB: u64 = 16;

fn require_swap() {
    require_root();
    assert!(
        procswap::sys::meminfo().unwrap().swap_total > 0,
        "this suite needs swap: run it through procswap/tests/with-swap.sh"
    );
}

/// (present, swapped) pages in [start, start+len) of `pid`.
fn range_state(pid: i32, start: u64, len: u64) -> (u64, u64) {
    let mut pm = Pagemap::open(pid).unwrap();
    let (mut p, mut s) = (0, 0);
    pm.scan(start, start + len, |_, info| match info {
        procfs::process::PageInfo::MemoryPage(f) => {
            p += f.contains(procfs::process::MemoryPageFlags::PRESENT) as u64
        }
        procfs::process::PageInfo::SwapPage(_) => s += 1,
    })
    .unwrap();
    (p, s)
}

/// The backend the lifecycle tests use: `TORPOR_TEST_BACKEND=stock|kmod|auto` (default stock).
/// `kmod` fails the test if the module is not usable (the VM suite sets it).
fn test_backend() -> Box<dyn procswap::backend::Backend> {
    let pref: procswap::backend::BackendPref = std::env::var("TORPOR_TEST_BACKEND")
        .unwrap_or_else(|_| "stock".into())
        .parse()
        .expect("TORPOR_TEST_BACKEND");
    let (b, why) = procswap::backend::select_backend_explained(pref)
        .expect("TORPOR_TEST_BACKEND backend not usable");
    eprintln!("backend: {} ({why})", b.name());
    b
}

/// The child in the cgroups of `mode`, or None (with a summary line) if the mode is not
/// selected or cannot run on this host.
fn lifecycle_setup(mode: Mode) -> Option<(Child, Freezer, String)> {
    require_swap();
    if !selected(mode) {
        summary(&format!(
            "mode {}: NOT SELECTED by TORPOR_TEST_CGROUP (not run)",
            mode.name()
        ));
        return None;
    }
    let mut c = Child::spawn();
    let (freezer, desc) = match setup(mode, &mut c) {
        Ok(x) => x,
        Err(why) => {
            summary(&format!(
                "mode {}: SKIPPED, CANNOT RUN ON THIS HOST: {why}",
                mode.name()
            ));
            assert!(!required(mode), "mode {} is required (TORPOR_TEST_REQUIRE/TORPOR_TEST_CGROUP) but cannot run: {why}", mode.name());
            return None;
        }
    };
    eprintln!("mode {}: {desc}", mode.name());
    eprintln!("mode {}: {desc}", mode.name());
    Some((c, freezer, desc))
}

/// A purge of a running target is refused without force, and changes nothing.
fn refused_purge_changes_nothing(c: &Child, anon_pages: u64) -> procswap::inspect::Inspection {
    let pid = c.pid;
    let before = procswap::inspect(pid, InspectOptions::default()).unwrap();
    match procswap::purge(pid, &PurgeOptions::default()) {
        Err(Error::NotQuiesced { .. }) => {}
        other => panic!("purge of a running target: expected NotQuiesced, got {other:?}"),
    }
    let (p, s) = range_state(pid, c.anon.0, c.anon.1);
    assert!(
        p >= anon_pages * 99 / 100 && s == 0,
        "refused purge changed the target: present {p} swapped {s}"
    );

    before
}

/// Purge the frozen child with `backend` and check that its anonymous memory left RAM.
fn purge_and_check(
    c: &Child,
    backend: &dyn procswap::backend::Backend,
    before: &procswap::inspect::Inspection,
    anon_pages: u64,
) -> procswap::PurgeReport {
    let (pid, ps) = (c.pid, procswap::sys::page_size());
    let rep = purge_with(backend, pid, &PurgeOptions::default(), &NoProgress).unwrap();
    eprintln!("purge report: {}", serde_json::to_string(&rep).unwrap());
    let (p, s) = range_state(pid, c.anon.0, c.anon.1);
    let after = procswap::inspect(pid, InspectOptions::default()).unwrap();
    let memcg = procswap::cgroup::Memcg::of_pid(pid).unwrap().unwrap();
    let usage = memcg.usage().unwrap();
    let memcg_swapcached = memcg.swapcached().unwrap();
    let sys_swapcached = swap_cached();
    eprintln!(
        "after purge: anon range present {p} swapped {s} of {anon_pages}; process present {} (file {}), memcg usage {} KiB, memcg swapcached {:?}, system SwapCached {} KiB",
        after.totals.present,
        after.totals.file_pages,
        usage / 1024,
        memcg_swapcached,
        sys_swapcached / 1024
    );
    assert!(
        s * 100 >= anon_pages * 95,
        "only {s} of {anon_pages} anonymous pages swapped"
    );
    let beyond_file = (after.totals.present - after.totals.file_pages) * ps;
    assert!(
        beyond_file <= MIB,
        "{beyond_file} bytes resident beyond file pages (> 1 MiB)"
    );
    assert!(
        rep.reclaim.is_some(),
        "no memcg reclaim ran: {:?}",
        rep.reclaim_skipped
    );
    // Not held in the swap cache: the target's memcg says so where the kernel reports it
    // (v1 memory.stat, v2 >= 6.x). The system-wide SwapCached also counts other processes'
    // pages on a shared machine (seen: 14 MiB from a concurrent benchmark), so it is checked
    // only as a fallback, and only through the purge's own before/after delta.
    if let Some(sc) = memcg_swapcached {
        assert!(
            sc <= MIB,
            "target memcg still has {sc} bytes in the swap cache"
        );
    } else {
        assert!(
            rep.system_swap_cached_delta <= 4 * MIB as i64,
            "system SwapCached grew by {} bytes during the purge (this kernel's memcg does not report swapcached)",
            rep.system_swap_cached_delta
        );
    }
    assert!(
        usage <= after.totals.file_pages * ps + 4 * MIB,
        "memcg usage {usage} bytes after purge (file pages {} bytes)",
        after.totals.file_pages * ps
    );
    assert_eq!(
        rep.resident_anon_bytes,
        (after.totals.present - after.totals.file_pages) * ps
    );
    assert!(before.totals.present > after.totals.present);

    rep
}

/// Prefetch the frozen child with `backend`; returns the report and its duration in seconds.
fn prefetch_and_check(
    c: &Child,
    backend: &dyn procswap::backend::Backend,
    anon_pages: u64,
) -> (procswap::PrefetchReport, f64) {
    let pid = c.pid;
    let t0 = Instant::now();
    let pf = prefetch_with(
        backend,
        pid,
        &PrefetchOptions {
            free_floor_bytes: 64 * MIB,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(pf.backend, backend.name());
    let pf_s = t0.elapsed().as_secs_f64();
    eprintln!("prefetch report: {}", serde_json::to_string(&pf).unwrap());
    let (p, s) = range_state(pid, c.anon.0, c.anon.1);
    assert!(
        p * 100 >= anon_pages * 99,
        "only {p} of {anon_pages} anonymous pages present after prefetch ({s} swapped)"
    );
    assert!(pf.stopped.is_none());

    (pf, pf_s)
}

/// Thaw the child and check that reading its prefetched memory takes (almost) no major faults.
fn thaw_and_verify(c: &mut Child, freezer: &Freezer) -> Verify {
    freezer.thaw(Duration::from_secs(10)).unwrap();
    c.freezer = None;
    let v = c.verify();
    eprintln!("child verify: {v:?}");
    assert!(
        v.anon_majflt <= 8,
        "{} major faults touching prefetched anonymous memory",
        v.anon_majflt
    );

    v
}

/// For comparison, the same resume on stock demand paging (purge again, thaw, touch).
fn demand_paging_comparison(c: &mut Child, freezer: &Freezer, mode: Mode, pf_s: f64, v: &Verify) {
    let pid = c.pid;
    freezer.freeze(Duration::from_secs(10)).unwrap();
    c.freezer = Some(freezer.clone());
    let rep2 = purge_with(&StockBackend, pid, &PurgeOptions::default(), &NoProgress).unwrap();
    assert!(rep2.swapped_bytes >= c.anon.1 * 95 / 100);
    freezer.thaw(Duration::from_secs(10)).unwrap();
    c.freezer = None;
    let dv = c.verify();
    eprintln!("demand paging verify: {dv:?}");
    assert!(
        dv.anon_majflt > 0,
        "demand paging after a purge took no major faults: the purge did not evict"
    );
    summary(&format!(
        "mode {}: demand-paging comparison: thaw then read {} MiB: {:.3} s with {} major faults, vs prefetch {:.3} s + read {:.3} s with {} major faults",
        mode.name(),
        ANON_MIB,
        dv.anon_us as f64 / 1e6,
        dv.anon_majflt,
        pf_s,
        v.anon_us as f64 / 1e6,
        v.anon_majflt
    ));
}

fn lifecycle(mode: Mode) {
    let Some((mut c, freezer, desc)) = lifecycle_setup(mode) else {
        return;
    };
    c.alloc(ANON_MIB, FILE_MIB, 0, 0);
    let ps = procswap::sys::page_size();
    let anon_pages = c.anon.1 / ps;
    let pid = c.pid;

    let before = refused_purge_changes_nothing(&c, anon_pages);

    freezer.freeze(Duration::from_secs(10)).unwrap();
    c.freezer = Some(freezer.clone());
    assert!(procswap::quiescence(pid).unwrap().is_quiescent());

    let backend = test_backend();
    let rep = purge_and_check(&c, backend.as_ref(), &before, anon_pages);
    let (pf, pf_s) = prefetch_and_check(&c, backend.as_ref(), anon_pages);
    let v = thaw_and_verify(&mut c, &freezer);
    demand_paging_comparison(&mut c, &freezer, mode, pf_s, &v);
    summary(&format!(
        "mode {} backend {}: RAN and PASSED ({desc}): purge {:.0} MiB in {:.3} s ({:.0} MB/s, page-out {:.3} s, reclaim {}), {} swap extents; \
         prefetch {:.0} MiB in {:.3} s ({:.0} MB/s, {} read runs); after thaw: {} major / {} minor faults reading {} MiB in {:.3} s",
        mode.name(),
        backend.name(),
        rep.paged_out_bytes as f64 / MIB as f64,
        rep.seconds,
        rep.mb_per_s,
        rep.pageout_seconds,
        rep.reclaim.as_ref().map(|r| format!("{} {:.3} s", r.method, r.seconds)).unwrap_or_default(),
        rep.contiguity.extents,
        pf.read_issued_bytes as f64 / MIB as f64,
        pf_s,
        pf.mb_per_s,
        pf.read_runs,
        v.anon_majflt,
        v.anon_minflt,
        ANON_MIB,
        v.anon_us as f64 / 1e6
    ));
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn lifecycle_v1() {
    lifecycle(Mode::V1);
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn lifecycle_v2() {
    lifecycle(Mode::V2);
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn lifecycle_signals() {
    lifecycle(Mode::Signals);
}

/// Kills the target when the page-out has made some progress.
struct KillMidway {
    pid: i32,
    fired: std::sync::atomic::AtomicBool,
}

impl Progress for KillMidway {
    fn update(&self, done: u64) {
        if done > 0 && !self.fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            // Wait until the kernel has torn the mm down (zombie, or reaped by nobody yet): the
            // rest of the purge must meet a dead target, however long the exit takes on a loaded
            // machine (the deadline only catches a process that never dies).
            let t = Instant::now();
            loop {
                let st = procfs::process::Process::new(self.pid)
                    .and_then(|p| p.stat())
                    .map(|s| s.state);
                if !matches!(st, Ok('R' | 'S' | 'D' | 'T' | 't')) {
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(120),
                    "pid {} still alive (state {st:?}) 120 s after SIGKILL",
                    self.pid
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn purge_of_a_target_that_exits_midway() {
    require_swap();
    let mut c = Child::spawn();
    c.alloc(64, 0, 0, 0);
    Freezer::Signal(c.pid)
        .freeze(Duration::from_secs(5))
        .unwrap();
    // 1 MiB ranges, 4 per call: many calls, the target dies after the first.
    let opts = PurgeOptions {
        chunk_bytes: MIB,
        batch_iovecs: 4,
        ..Default::default()
    };
    let k = KillMidway {
        pid: c.pid,
        fired: false.into(),
    };
    let r = purge_with(&StockBackend, c.pid, &opts, &k);
    assert!(
        k.fired.load(std::sync::atomic::Ordering::SeqCst),
        "the progress hook never ran"
    );
    match r {
        Err(e @ Error::TargetExited { .. }) => eprintln!("as expected: {e}"),
        other => panic!("expected TargetExited, got {other:?}"),
    }
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn prefetch_stops_at_free_memory_floor_and_budget() {
    require_swap();
    let mut c = Child::spawn();
    let (freezer, _) = setup(Mode::Signals, &mut c).expect("signals mode needs a memory cgroup");
    c.alloc(64, 0, 0, 0);
    freezer.freeze(Duration::from_secs(5)).unwrap();
    c.freezer = Some(freezer);
    purge_with(&StockBackend, c.pid, &PurgeOptions::default(), &NoProgress).unwrap();
    let ps = procswap::sys::page_size();
    let (_, swapped0) = range_state(c.pid, c.anon.0, c.anon.1);
    // A floor no machine can meet (above its total memory, not above what happens to be
    // available now, which moves with everything else running): nothing is fetched, and the
    // report says why.
    let total = <procfs::Meminfo as procfs::Current>::current()
        .unwrap()
        .mem_total;
    let pf = prefetch_with(
        &StockBackend,
        c.pid,
        &PrefetchOptions {
            free_floor_bytes: total + (1 << 30),
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert!(
        matches!(pf.stopped, Some(procswap::StopReason::FreeFloor { .. })),
        "{:?}",
        pf.stopped
    );
    assert_eq!(pf.read_issued_bytes, 0);
    let (_, swapped1) = range_state(c.pid, c.anon.0, c.anon.1);
    assert!(
        swapped1 * 100 >= swapped0 * 99,
        "pages came in despite the floor: {swapped0} -> {swapped1}"
    );
    // A budget of 8 MiB: about 8 MiB comes in.
    let pf = prefetch_with(
        &StockBackend,
        c.pid,
        &PrefetchOptions {
            budget_bytes: Some(8 * MIB),
            free_floor_bytes: 0,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert!(
        matches!(pf.stopped, Some(procswap::StopReason::Budget { .. })),
        "{:?}",
        pf.stopped
    );
    assert_eq!(pf.read_issued_bytes, 8 * MIB);
    assert_eq!(pf.mapped_pages, 8 * MIB / ps);
    let (_, swapped2) = range_state(c.pid, c.anon.0, c.anon.1);
    let fetched = swapped1 - swapped2;
    // The budget also covers the child's other swapped pages (stack, heap); readahead may bring
    // a few neighbours along; never much more than the budget.
    assert!(
        fetched >= 7 * MIB / ps && fetched <= 12 * MIB / ps,
        "fetched {fetched} pages for an 8 MiB budget"
    );
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn unpurgeable_memory_is_reported() {
    require_swap();
    let mut c = Child::spawn();
    let (freezer, _) = setup(Mode::Signals, &mut c).expect("signals mode needs a memory cgroup");
    c.alloc(32, 0, 4, 4);
    freezer.freeze(Duration::from_secs(5)).unwrap();
    c.freezer = Some(freezer);
    let rep = purge_with(&StockBackend, c.pid, &PurgeOptions::default(), &NoProgress).unwrap();
    eprintln!("unpurged: {:?}", rep.unpurged);
    assert!(
        rep.unpurged.locked_bytes >= 4 * MIB,
        "mlocked memory not reported: {:?}",
        rep.unpurged
    );
    assert!(rep.unpurged.vmas.iter().any(|v| v.reason == "mlocked"));
    // The shared anonymous area is either paged out (shmem swap) or reported as shared.
    let shared_reported = rep.unpurged.shared_bytes;
    eprintln!("shared anon still resident: {shared_reported} bytes");
    let total_reported = rep.unpurged.locked_bytes
        + rep.unpurged.hugetlb_bytes
        + rep.unpurged.special_bytes
        + rep.unpurged.shared_bytes
        + rep.unpurged.file_bytes
        + rep.unpurged.anon_bytes;
    assert_eq!(
        total_reported, rep.resident_bytes,
        "every resident byte is attributed to a reason"
    );
    let v = {
        Freezer::Signal(c.pid).thaw(Duration::from_secs(5)).unwrap();
        c.freezer = None;
        c.verify()
    };
    eprintln!("verify after purge without prefetch (demand paging): {v:?}");
}

/// Working-set recording window, and how long the child reads its hot area meanwhile (the
/// margin covers the recorder's setup and its last DAMON update on a loaded machine).
const RECORD_FOR: Duration = Duration::from_millis(2500);
const TOUCH_FOR: Duration = Duration::from_secs(10);

/// CPU time of `pid` so far, ns (`/proc/PID/schedstat`, else utime+stime).
fn cpu_ns(pid: i32) -> u64 {
    let p = procfs::process::Process::new(pid).unwrap();
    match p.schedstat() {
        Ok(s) => s.sum_exec_runtime,
        Err(_) => {
            let st = p.stat().unwrap();
            (st.utime + st.stime) * (1_000_000_000 / procfs::ticks_per_second())
        }
    }
}

/// Record the working set with `m` while the child reads MiB 32..64, and check that it covers
/// that area and not the rest.
fn record_and_check(c: &mut Child, m: procswap::WsMethod, ps: u64) -> WorkingSet {
    // The child reads MiB 32..64 over and over while we record: recording starts only once the
    // child is running that command (its CPU time moves), and the child keeps reading well past
    // the recording's end; both are checked, not assumed from sleeps.
    let pid = c.pid;
    let cpu0 = cpu_ns(pid);
    let ws: WorkingSet = std::thread::scope(|sc| {
        let toucher = sc.spawn(|| c.cmd(&format!("TOUCH 32 64 {}", TOUCH_FOR.as_millis())));
        let t = Instant::now();
        while cpu_ns(pid) == cpu0 {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "the child did not start the TOUCH command in 120 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let ws = procswap::workingset::record(pid, RECORD_FOR, Some(m)).unwrap();
        assert!(
        !toucher.is_finished(),
        "the child's {TOUCH_FOR:?} of reading ended before the {RECORD_FOR:?} recording by {m} did: no valid working set to check"
    );
        assert_eq!(toucher.join().unwrap(), "TOUCHED");
        ws
    });
    let method = m;
    let json = serde_json::to_string(&ws).unwrap();
    let ws: WorkingSet = serde_json::from_str(&json).unwrap();
    let in_ws = |from: u64, to: u64| -> f64 {
        let (a, b) = (c.anon.0 + from * MIB, c.anon.0 + to * MIB);
        let n = (b - a) / ps;
        (0..n).filter(|i| ws.contains(a + i * ps)).count() as f64 / n as f64
    };
    let hot = in_ws(32, 64);
    let cold = (in_ws(0, 32) * 32.0 + in_ws(64, 128) * 64.0) / 96.0;
    eprintln!("working set by {method}: {} regions, {} KiB; hot area covered {:.0}%, cold area covered {:.0}%", ws.regions.len(), ws.bytes() / 1024, hot * 100.0, cold * 100.0);
    assert!(
        hot >= 0.8,
        "working set covers only {:.0}% of the touched area",
        hot * 100.0
    );
    assert!(
        cold <= 0.5,
        "working set covers {:.0}% of the untouched area",
        cold * 100.0
    );
    summary(&format!(
        "working set: RAN with {method}: hot covered {:.0}%, cold {:.0}%",
        hot * 100.0,
        cold * 100.0
    ));
    ws
}

/// Purge the (frozen) child, then a working-set-only prefetch of `ws` (its report printed
/// under `label`). Returns the report and the pages present in the hot area (32 MiB at
/// 32 MiB) and in the cold one (64 MiB at 64 MiB).
fn purge_and_ws_only_prefetch(
    c: &Child,
    ws: WorkingSet,
    label: &str,
) -> (PrefetchReport, u64, u64) {
    purge_with(&StockBackend, c.pid, &PurgeOptions::default(), &NoProgress).unwrap();
    let opts = PrefetchOptions {
        working_set: Some(ws),
        working_set_only: true,
        free_floor_bytes: 0,
        ..Default::default()
    };
    let pf = prefetch_with(&StockBackend, c.pid, &opts, &NoProgress).unwrap();
    eprintln!("{label}: {}", serde_json::to_string(&pf).unwrap());
    let (hot_p, _) = range_state(c.pid, c.anon.0 + 32 * MIB, 32 * MIB);
    let (cold_p, _) = range_state(c.pid, c.anon.0 + 64 * MIB, 64 * MIB);
    (pf, hot_p, cold_p)
}

/// Purge, then a working-set-only prefetch of `ws`: the hot area comes back, the cold one not.
fn ws_only_prefetch_and_check(c: &mut Child, freezer: &Freezer, ws: WorkingSet, ps: u64) {
    freezer.freeze(Duration::from_secs(5)).unwrap();
    c.freezer = Some(freezer.clone());
    let (_, hot_p, cold_p) = purge_and_ws_only_prefetch(c, ws, "working-set prefetch");
    assert!(
        hot_p * 100 >= (32 * MIB / ps) * 80,
        "hot area {hot_p} pages present"
    );
    assert!(
        cold_p * 2 <= 64 * MIB / ps,
        "cold area {cold_p} pages present after a working-set-only prefetch"
    );
    freezer.thaw(Duration::from_secs(5)).unwrap();
    c.freezer = None;
    c.verify();
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn working_set_record_and_prefetch_first() {
    require_swap();
    let Some(_) = procswap::WsMethod::detect() else {
        summary(&format!(
            "working set: SKIPPED, CANNOT RUN ON THIS HOST: {}",
            procswap::WsMethod::describe_host()
        ));
        assert!(
            std::env::var("TORPOR_TEST_REQUIRE_WS").is_err(),
            "working-set recording required but unavailable"
        );
        return;
    };
    let mut c = Child::spawn();
    let (freezer, _) = setup(Mode::Signals, &mut c).expect("signals mode needs a memory cgroup");
    c.alloc(128, 0, 0, 0);
    let ps = procswap::sys::page_size();
    // Every recorder this kernel offers is checked (page_idle and DAMON vaddr in our guest);
    // the first one's working set then drives the prefetch below.
    let methods = procswap::WsMethod::available();
    let mut first: Option<WorkingSet> = None;
    for m in methods {
        let ws = record_and_check(&mut c, m, ps);
        if first.is_none() {
            first = Some(ws);
        }
    }
    let ws = first.expect("at least one recorder");

    ws_only_prefetch_and_check(&mut c, &freezer, ws, ps);
}

/// Working set by residency (works on any kernel): purge, thaw, the child touches MiB 32..64,
/// freeze, record; then a working-set-only prefetch after the next purge brings back exactly that.
#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn working_set_by_residency_and_ws_first_prefetch() {
    require_swap();
    let mut c = Child::spawn();
    let (freezer, _) = setup(Mode::Signals, &mut c).expect("signals mode needs a memory cgroup");
    c.alloc(128, 0, 0, 0);
    let ps = procswap::sys::page_size();
    freezer.freeze(Duration::from_secs(5)).unwrap();
    c.freezer = Some(freezer.clone());
    purge_with(&StockBackend, c.pid, &PurgeOptions::default(), &NoProgress).unwrap();
    freezer.thaw(Duration::from_secs(5)).unwrap();
    c.freezer = None;
    assert_eq!(c.cmd("TOUCH 32 64 200"), "TOUCHED");
    freezer.freeze(Duration::from_secs(5)).unwrap();
    c.freezer = Some(freezer.clone());
    let ws = procswap::workingset::from_residency(c.pid).unwrap();
    let ws: WorkingSet = serde_json::from_str(&serde_json::to_string(&ws).unwrap()).unwrap();
    let cover = |from: u64, to: u64| -> f64 {
        let (a, b) = (c.anon.0 + from * MIB, c.anon.0 + to * MIB);
        let n = (b - a) / ps;
        (0..n).filter(|i| ws.contains(a + i * ps)).count() as f64 / n as f64
    };
    let (hot, cold) = (
        cover(32, 64),
        (cover(0, 32) * 32.0 + cover(64, 128) * 64.0) / 96.0,
    );
    eprintln!(
        "residency working set: {} regions, {} KiB; hot {:.1}%, cold {:.1}%",
        ws.regions.len(),
        ws.bytes() / 1024,
        hot * 100.0,
        cold * 100.0
    );
    assert!(hot >= 0.99, "hot area covered {:.1}%", hot * 100.0);
    // Swap readahead (page-cluster) may bring neighbours of touched pages back: a little.
    assert!(cold <= 0.05, "cold area covered {:.1}%", cold * 100.0);

    let (pf, hot_p, cold_p) = purge_and_ws_only_prefetch(&c, ws, "working-set-only prefetch");
    assert_eq!(pf.working_set_method.as_deref(), Some("residency"));
    assert!(
        hot_p * 100 >= (32 * MIB / ps) * 99,
        "hot area: {hot_p} pages present"
    );
    assert!(
        cold_p * 20 <= 64 * MIB / ps,
        "cold area: {cold_p} pages present after a working-set-only prefetch"
    );
    freezer.thaw(Duration::from_secs(5)).unwrap();
    c.freezer = None;
    c.verify();
    summary(&format!(
        "working set by residency: RAN and PASSED (hot {:.1}%, cold {:.1}%)",
        hot * 100.0,
        cold * 100.0
    ));
}
