//! Root suite, part 1: refusals, run with swap OFF (see `run-root-tests.sh`).
//! Every test is `#[ignore]`d so a plain `cargo test` does not need root.

mod common;

use common::*;
use procswap::{Error, Freezer, PrefetchOptions, PurgeOptions};
use std::time::Duration;

/// Present pages in [start, start+len) of `pid`.
fn present_in(pid: i32, start: u64, len: u64) -> u64 {
    let mut pm = procswap::inspect::Pagemap::open(pid).unwrap();
    let mut n = 0;
    pm.scan(start, start + len, |_, info| {
        if let procfs::process::PageInfo::MemoryPage(f) = info {
            n += f.contains(procfs::process::MemoryPageFlags::PRESENT) as u64;
        }
    })
    .unwrap();
    n
}

/// SIGKILL `pid` (our unreaped child) and wait until it is a zombie; the deadline only catches
/// a process that never dies, however loaded the machine.
fn kill_to_zombie(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = std::time::Instant::now();
    while !procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map(|s| s.state == 'Z')
        .unwrap_or(false)
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "pid {pid} not a zombie 120 s after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn no_swap_configured_is_refused_without_change() {
    require_root();
    assert_eq!(
        procswap::sys::meminfo().unwrap().swap_total,
        0,
        "this test must run with swap off"
    );
    let mut c = Child::spawn();
    c.alloc(16, 0, 0, 0);
    Freezer::Signal(c.pid)
        .freeze(Duration::from_secs(5))
        .unwrap();
    // The anonymous area, not the whole process: without swap nothing can take an anonymous
    // page away, while the kernel may drop the child's clean file pages (its binary) whenever
    // other memory is short, purge or not.
    let (a, len) = c.anon;
    let p0 = present_in(c.pid, a, len);
    assert!(
        p0 >= len / procswap::sys::page_size(),
        "anonymous area not all present before the purge: {p0} pages"
    );
    let e = procswap::purge(c.pid, &PurgeOptions::default()).unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, Error::NoSwap), "{e:?}");
    assert!(e.to_string().contains("no swap configured"));
    assert_eq!(
        present_in(c.pid, a, len),
        p0,
        "the refused purge changed the target"
    );
    Freezer::Signal(c.pid).thaw(Duration::from_secs(5)).unwrap();
    c.verify();
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn bad_targets_are_refused() {
    require_root();
    // Unknown pid (above pid_max).
    let e = procswap::inspect(99_999_999, Default::default()).unwrap_err();
    assert!(matches!(e, Error::NoSuchProcess(99_999_999)), "{e:?}");
    assert_eq!(e.to_string(), "no such process: pid 99999999");
    // pid 1, for every operation.
    for e in [
        procswap::inspect(1, Default::default()).unwrap_err(),
        procswap::purge(
            1,
            &PurgeOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap_err(),
        procswap::prefetch(1, &PrefetchOptions::default()).unwrap_err(),
        Freezer::Signal(1)
            .freeze(Duration::from_secs(1))
            .unwrap_err(),
    ] {
        assert!(matches!(e, Error::Init), "{e:?}");
        assert!(e.to_string().contains("pid 1"));
    }
    let init_state = procfs::process::Process::new(1)
        .unwrap()
        .stat()
        .unwrap()
        .state;
    assert_ne!(init_state, 'T', "init got stopped");
    // A kernel thread: kthreadd is pid 2 in the initial pid namespace; find one by flags anyway.
    let kthread = procfs::process::all_processes()
        .unwrap()
        .filter_map(|p| p.ok())
        .find(|p| {
            p.stat()
                .map(|s| s.flags & 0x0020_0000 != 0)
                .unwrap_or(false)
        })
        .expect("a kernel thread");
    let e = procswap::purge(
        kthread.pid,
        &PurgeOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::KernelThread { .. }), "{e:?}");
    assert!(e.to_string().contains("kernel thread"));
    let e = Freezer::Signal(kthread.pid)
        .freeze(Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(e, Error::KernelThread { .. }), "{e:?}");
    // A zombie.
    let c = Child::spawn();
    let pid = c.pid;
    kill_to_zombie(pid);
    let e = procswap::purge(
        pid,
        &PurgeOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Zombie { .. }), "{e:?}");
    assert!(e.to_string().contains("zombie"));
    let e = procswap::prefetch(pid, &PrefetchOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Zombie { .. }), "{e:?}");
    // Ourselves.
    let me = std::process::id() as i32;
    assert!(matches!(
        Freezer::Signal(me)
            .freeze(Duration::from_secs(1))
            .unwrap_err(),
        Error::SelfTarget(_)
    ));
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn freezers_freeze_and_thaw() {
    require_root();
    for mode in [Mode::V1, Mode::V2, Mode::Signals] {
        if !selected(mode) {
            summary(&format!(
                "freezer {}: NOT SELECTED by TORPOR_TEST_CGROUP (not run)",
                mode.name()
            ));
            continue;
        }
        let mut c = Child::spawn();
        let (f, desc) = match setup(mode, &mut c) {
            Ok(x) => x,
            Err(why) => {
                summary(&format!(
                    "freezer {}: SKIPPED, CANNOT RUN ON THIS HOST: {why}",
                    mode.name()
                ));
                assert!(
                    !required(mode),
                    "mode {} required but cannot run: {why}",
                    mode.name()
                );
                continue;
            }
        };
        c.alloc(1, 0, 0, 0);
        f.freeze(Duration::from_secs(5)).unwrap();
        assert!(f.is_frozen().unwrap());
        let q = procswap::quiescence(c.pid).unwrap();
        assert!(q.is_quiescent(), "{mode:?}: {q:?}");
        if mode == Mode::Signals {
            assert!(procswap::freeze::thread_states(c.pid)
                .unwrap()
                .iter()
                .all(|&s| s == 'T'));
        }
        // Auto selection finds the same freezer from the pid.
        if mode != Mode::Signals {
            assert_eq!(
                Freezer::for_pid(c.pid, procswap::FreezerPref::Auto).unwrap(),
                f
            );
        }
        f.thaw(Duration::from_secs(5)).unwrap();
        assert!(!procswap::quiescence(c.pid).unwrap().is_quiescent());
        c.verify();
        summary(&format!("freezer {}: RAN and PASSED ({desc})", mode.name()));
    }
}
