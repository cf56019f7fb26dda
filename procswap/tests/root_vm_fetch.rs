//! procswap::vm mechanism on a real QEMU (root, swap): purge QEMU, fetch only given guest
//! ranges (procswap's prefetch restricted by `fetch_ranges`), Twinkle's segment rule on real
//! faults, QEMU's own ranges, content checked with HMP `pmemsave`.
//!   procswap/tests/with-swap.sh cargo test -p procswap --test root_vm_fetch -- --ignored --nocapture
//! (run by local-controller/tests/run-root-tests.sh)

use procswap::vm::{self, Background, GuestRam, PageClass, Plan, Qmp, TwinkleConfig};
use procswap::{Freezer, PrefetchOptions, PurgeOptions, Range, StockBackend};
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const PS: u64 = 4096;
const K: u64 = 64 * MIB;
const END: u64 = 128 * MIB;

struct Kill(std::process::Child, std::path::PathBuf);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as u8
        })
        .collect()
}

fn counts(pid: i32, ram: &GuestRam, a: u64, b: u64) -> vm::PageCounts {
    vm::page_counts(pid, &[Range { start: ram.gpa_to_hva(a).unwrap(), len: b - a }]).unwrap()
}

#[test]
#[ignore = "root + swap: run through local-controller/tests/run-root-tests.sh"]
fn purge_fetch_ranges_twinkle_on_real_qemu() {
    assert_eq!(nix::unistd::geteuid().as_raw(), 0, "needs root");
    assert!(procswap::sys::meminfo().unwrap().swap_total > 0, "needs swap (with-swap.sh)");
    let dir = std::env::temp_dir().join(format!("procswap-vmfetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let qmp_path = dir.join("qmp.sock");
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-S", "-display", "none", "-nodefaults", "-m", "512", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let q = Kill(child, dir.clone());
    let pid = q.0.id() as i32;
    let mut qmp = Qmp::connect_retry(&qmp_path, Duration::from_secs(10), Instant::now() + Duration::from_secs(20)).unwrap();
    let ram = GuestRam::discover(&mut qmp, pid).unwrap();
    let pat = pattern((END - K) as usize);
    {
        let mut mem = std::fs::OpenOptions::new().write(true).open(format!("/proc/{pid}/mem")).unwrap();
        mem.seek(SeekFrom::Start(ram.gpa_to_hva(K).unwrap())).unwrap();
        mem.write_all(&pat).unwrap();
    }
    drop(qmp); // a stopped QEMU cannot answer; reconnect after the thaw.

    // QEMU's own memory is everything private outside guest RAM.
    let own = vm::qemu_own_ranges(pid, &ram).unwrap();
    assert!(!own.is_empty());
    for o in &own {
        for g in ram.hva_ranges() {
            assert!(o.end() <= g.start || o.start >= g.end(), "own range {o:?} overlaps guest RAM {g:?}");
        }
    }

    let fz = Freezer::Signal(pid);
    fz.freeze(Duration::from_secs(10)).unwrap();
    let region = (END - K) / PS;
    // Fresh pages still in a CPU's LRU batch cannot be paged out yet (THP-backed guest RAM: a
    // batch holds megabytes): purge again until the region is out (at most 3 times).
    for i in 0..3 {
        let r = procswap::purge_with(&StockBackend, pid, &PurgeOptions::default(), &procswap::NoProgress).unwrap();
        eprintln!("purge {i}: {} MiB swapped in {:.3}s", r.swapped_bytes >> 20, r.seconds);
        if counts(pid, &ram, K, END).swapped == region {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(counts(pid, &ram, K, END).swapped, region);

    let base = PrefetchOptions { threads: 2, free_floor_bytes: 64 * MIB, ..Default::default() };
    // Nothing asked: nothing fetched (and the cost of one call is the scan).
    let t = Instant::now();
    let e = vm::fetch_ranges(&StockBackend, pid, vec![], &base).unwrap();
    eprintln!("fetch_ranges([]): {:.1} ms (scan overhead of one prefetch call on QEMU)", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!((e.candidate_pages, e.read_issued_bytes), (0, 0));
    assert_eq!(counts(pid, &ram, K, END).swapped, region);
    // 16 MiB asked: exactly those come back.
    let t = Instant::now();
    let a = vm::fetch_ranges(&StockBackend, pid, vec![Range { start: ram.gpa_to_hva(K).unwrap(), len: 16 * MIB }], &base).unwrap();
    eprintln!("fetch_ranges(16 MiB): {:.1} ms, {} pages", t.elapsed().as_secs_f64() * 1e3, a.read_issued_bytes / PS);
    assert_eq!(a.read_issued_bytes, 16 * MIB);
    assert_eq!(counts(pid, &ram, K, K + 16 * MIB).swapped, 0);
    assert_eq!(counts(pid, &ram, K + 16 * MIB, END).swapped, region - 4096);

    // Twinkle on real faults: thaw (the VM stays in prelaunch: no guest runs), then "fault" every
    // other page of [80, 88) MiB in through /proc/PID/mem; no rest phase.
    fz.thaw(Duration::from_secs(10)).unwrap();
    let plan = Plan::build(&ram, PS, |_| PageClass::Outside);
    let cfg = TwinkleConfig { rest_pages_per_round: 0, linger: Duration::from_secs(2), prefetch: base.clone(), ..Default::default() };
    let bg = Background::spawn(Box::new(StockBackend), pid, &plan, 8, ram.hva_ranges(), cfg).unwrap();
    let s0 = bg.stats();
    assert!(s0.segments >= 128 && s0.segments_with_swapped >= 12, "{s0:?}");
    {
        let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
        let mut b = [0u8; 1];
        for p in (0..(8 * MIB / PS)).step_by(2) {
            mem.seek(SeekFrom::Start(ram.gpa_to_hva(80 * MIB + p * PS).unwrap())).unwrap();
            mem.read_exact(&mut b).unwrap();
        }
    }
    let t = Instant::now();
    while bg.is_running() {
        assert!(t.elapsed() < Duration::from_secs(60), "background fetcher did not end: {:?}", bg.stats());
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = bg.stop();
    eprintln!("twinkle: {s:?}");
    assert_eq!(s.ended.as_deref(), Some("finished"), "{s:?}");
    assert!(s.segments_triggered >= 1 && s.twinkle_pages >= 500, "{s:?}");
    assert_eq!(s.rest_pages, 0);
    assert!(counts(pid, &ram, 80 * MIB, 88 * MIB).swapped <= 512, "triggered segments fetched whole");
    assert_eq!(counts(pid, &ram, 96 * MIB, END).swapped, 8192, "untouched segments stay on swap");
    // A stopped fetcher stops promptly.
    let quiet = TwinkleConfig { rest_pages_per_round: 0, ..TwinkleConfig::default() };
    let bg = Background::spawn(Box::new(StockBackend), pid, &plan, 8, ram.hva_ranges(), quiet).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let s = bg.stop();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(s.ended.as_deref(), Some("stopped"), "{s:?}");

    // Class-ordered fetch with one shared budget: the first set whole, the second cut, the
    // third not fetched at all.
    let hva = |gpa: u64| ram.gpa_to_hva(gpa).unwrap();
    let sets = vec![
        vec![Range { start: hva(96 * MIB), len: 8 * MIB }],
        vec![],
        vec![Range { start: hva(104 * MIB), len: 8 * MIB }],
        vec![Range { start: hva(112 * MIB), len: 8 * MIB }],
    ];
    let res = vm::fetch_ordered(&StockBackend, pid, sets, &PrefetchOptions { budget_bytes: Some(10 * MIB), ..base.clone() }).unwrap();
    assert_eq!(res.len(), 4);
    let (a, _) = res[0].as_ref().unwrap();
    assert_eq!((a.read_issued_bytes, a.stopped.is_none()), (8 * MIB, true), "{a:?}");
    assert!(res[1].is_none(), "empty set: no call");
    let (b, _) = res[2].as_ref().unwrap();
    assert_eq!(b.read_issued_bytes, 2 * MIB, "{b:?}");
    assert!(matches!(b.stopped, Some(procswap::StopReason::Budget { .. })), "{b:?}");
    assert!(res[3].is_none(), "after a cut, later sets are not fetched");
    assert_eq!(counts(pid, &ram, 96 * MIB, 104 * MIB).swapped, 0);
    assert_eq!(counts(pid, &ram, 104 * MIB, 112 * MIB).swapped, 2048 - 512);
    assert_eq!(counts(pid, &ram, 112 * MIB, END).swapped, 4096);

    // The guest sees exactly what was written, fetched or not.
    let mut qmp = Qmp::connect(&qmp_path, Duration::from_secs(10)).unwrap();
    let out = dir.join("pmem");
    let r = qmp.hmp(&format!("pmemsave {K:#x} {:#x} \"{}\"", END - K, out.display())).unwrap();
    assert!(r.trim().is_empty(), "{r}");
    let mut back = Vec::new();
    std::fs::File::open(&out).unwrap().read_to_end(&mut back).unwrap();
    assert!(back == pat, "guest RAM content changed");
}
