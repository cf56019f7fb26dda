//! Root suite: memory kinds (anon, shmem, file), residency snapshot and restore, loading-set
//! recording, loading-set-first layout, Start plan. Needs swap (run through `with-swap.sh`, see
//! `run-root-tests.sh`). Every test is `#[ignore]`d so a plain `cargo test` needs neither root
//! nor swap. Assertions are exact page counts; timings are only printed (`measure_*`).

mod common;

use common::{require_root, summary};
use procswap::cgroup::{self, Memcg};
use procswap::inspect::Pagemap;
use procswap::loadingset::{
    Candidates, DecayPolicy, Loaded, LoadingSet, LoadingSetRecorder, RecorderOptions,
};
use procswap::memkind::{self, MemKind, ObjectView, PageRun};
use procswap::plan::{completion, fetch_unmapped, ActivationPlan, FetchOptions, PlanPart};
use procswap::{NoProgress, PurgeOptions, PurgeReport, ResidencySnapshot, StockBackend, Target};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout};
use std::time::{Duration, Instant};
use torpor_testsupport::child::LineChild;

fn require_swap() {
    require_root();
    assert!(
        procswap::sys::meminfo().unwrap().swap_total > 0,
        "this suite needs swap: run it through procswap/tests/with-swap.sh"
    );
}

fn ps() -> u64 {
    procswap::sys::page_size()
}

/// `torpor-kindchild` in its own memory cgroup (v2 memory controller where available, else v1).
struct Kid {
    proc: std::process::Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: i32,
    cgroups: Vec<PathBuf>,
    files: Vec<PathBuf>,
    stopped: bool,
}

impl Kid {
    fn spawn(tag: &str) -> Kid {
        let LineChild {
            proc,
            stdin,
            stdout,
            pid,
        } = LineChild::spawn(Path::new(env!("CARGO_BIN_EXE_torpor-kindchild")))
            .expect("spawn torpor-kindchild");
        let mut k = Kid {
            proc,
            stdin,
            stdout,
            pid,
            cgroups: vec![],
            files: vec![],
            stopped: false,
        };
        let own = cgroup::pid_cgroups(std::process::id() as i32).unwrap();
        let name = format!("torpor-kinds-{tag}-{pid}");
        let v2mem = own.v2.clone().filter(|d| {
            std::fs::read_to_string(d.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
        });
        let dir = match v2mem {
            Some(p) => cgroup::create_v2(&p, &name, &["memory"]).expect("create v2 memory cgroup"),
            None => cgroup::create_v1(
                own.v1_memory
                    .as_ref()
                    .expect("no v1 memory hierarchy and no v2 memory controller"),
                &name,
            )
            .expect("create v1 memory cgroup"),
        };
        k.cgroups.push(dir.clone());
        cgroup::move_pid(&dir, pid).unwrap();
        assert!(Memcg::of_pid(pid).unwrap().is_some());
        k
    }

    fn cmd(&mut self, line: &str) -> Vec<u64> {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        let v: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(v.first(), Some(&"OK"), "child: {line:?} -> {l:?}");
        v[1..].iter().map(|x| x.parse().unwrap()).collect()
    }

    fn file(&mut self, name: &str) -> PathBuf {
        let p = PathBuf::from(format!("/var/tmp/torpor-kinds-{}-{name}", self.pid));
        self.files.push(p.clone());
        p
    }

    fn signal(&self, sig: nix::sys::signal::Signal) -> nix::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig)
    }

    fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
        self.stopped = true;
        for _ in 0..500 {
            if procswap::quiescence(self.pid).unwrap().is_quiescent() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("child did not stop");
    }

    fn cont(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT).unwrap();
        self.stopped = false;
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if self.stopped {
            let _ = self.signal(nix::sys::signal::Signal::SIGCONT);
        }
        let _ = self.proc.kill();
        let _ = self.proc.wait();
        for d in self.cgroups.iter().rev() {
            // The kernel needs a moment to release the cgroup of a reaped process.
            for _ in 0..50 {
                if cgroup::remove(d).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// (present, swapped) pages of `pid` in `[addr, addr + pages*ps)`. A page being migrated
/// (compaction, on a busy machine) shows as a non-swap entry of a high "swap type": it is a
/// present page in transit, counted as present.
fn pm_state(pid: i32, addr: u64, pages: u64) -> (u64, u64) {
    let mut pm = Pagemap::open(pid).unwrap();
    let (mut p, mut s) = (0, 0);
    pm.scan(addr, addr + pages * ps(), |_, info| match info {
        procfs::process::PageInfo::MemoryPage(f) => {
            p += f.contains(procfs::process::MemoryPageFlags::PRESENT) as u64
        }
        // Real swap devices have small type numbers; migration, device-private, hwpoison and
        // marker entries use the top of the 5-bit range.
        procfs::process::PageInfo::SwapPage(f) if f.get_swap_type() >= 24 => p += 1,
        procfs::process::PageInfo::SwapPage(_) => s += 1,
    })
    .unwrap();
    (p, s)
}

/// Resident (page cache / swap cache) page runs of a file or of the object a mapping of `pid`
/// at `addr` maps (through map_files).
fn cached(path: &Path, pages: u64) -> Vec<PageRun> {
    let f = memkind::open_readonly(path).unwrap();
    let v = ObjectView::new(f, Some(pages)).unwrap();
    memkind::normalize(
        v.resident(&[PageRun {
            first: 0,
            count: pages,
        }])
        .unwrap(),
    )
}

fn map_file_of(pid: i32, addr: u64, pages: u64) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        addr,
        addr + pages * ps()
    ))
}

fn run(first: u64, count: u64) -> PageRun {
    PageRun { first, count }
}

fn purge(pid: i32, opts: &PurgeOptions) -> PurgeReport {
    procswap::purge_with(&StockBackend, pid, opts, &NoProgress).unwrap()
}

/// Wait until the shmem and file pages of `part` are all resident (WILLNEED is asynchronous).
fn wait_objects(plan: &ActivationPlan, part: &PlanPart) {
    let t0 = Instant::now();
    loop {
        let (want, have) = completion(plan, part);
        if want.shmem == have.shmem && want.file == have.file {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "fetch never completed: want {want:?} have {have:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

const ANON: u64 = 1024;
const MEMFD: u64 = 512;
const SYSV: u64 = 256;
const MFILE: u64 = 64;
const RFILE: u64 = 64;

/// A child with every kind: anon, memfd, SysV, a mapped file with pages 16..48 cached and
/// mapped, a read file with pages 8..40 cached. Returns (anon, memfd, sysv, mfile addr).
fn every_kind(k: &mut Kid) -> (u64, u64, u64, u64) {
    let a = k.cmd(&format!("ANON {ANON}"))[0];
    let m = k.cmd(&format!("MEMFD {MEMFD}"))[0];
    let s = k.cmd(&format!("SYSV {SYSV}"))[0];
    let mf = k.file("mfile");
    let f = k.cmd(&format!("MFILE {} {MFILE} 16 48", mf.display()))[0];
    let rf = k.file("rfile");
    k.cmd(&format!("RFILE {} {RFILE} 8 40", rf.display()));
    // Warm the touch/read code paths (their text pages become part of the snapshot).
    k.cmd("TOUCH anon 0");
    k.cmd("READ 8");
    (a, m, s, f)
}

/// Inspect: per kind.
fn inspect_every_kind(pid: i32, areas: (u64, u64, u64, u64), files: &[PathBuf]) {
    let (a, _, _, _) = areas;
    let (mf, rf) = (files[0].clone(), files[1].clone());
    let i = procswap::inspect(pid, Default::default()).unwrap();
    let kinds = i.kinds.expect("per-kind figures");
    eprintln!("kinds before purge: {kinds:?}");
    assert_eq!(kinds.shmem.objects, 2, "memfd + SysV: {:?}", i.objects);
    assert_eq!(kinds.shmem.resident_bytes, (MEMFD + SYSV) * ps());
    assert_eq!(kinds.shmem.mapped_bytes, (MEMFD + SYSV) * ps());
    assert_eq!(kinds.shmem.out_bytes, 0);
    let obj = |path: &Path| {
        i.objects
            .iter()
            .find(|o| o.path == path.display().to_string())
            .unwrap_or_else(|| panic!("{path:?} not in {:?}", i.objects))
            .clone()
    };
    assert_eq!(
        (
            obj(&mf).kind,
            obj(&mf).interest_pages,
            obj(&mf).resident_pages
        ),
        (MemKind::File, MFILE, 32)
    );
    assert_eq!(
        (
            obj(&rf).kind,
            obj(&rf).interest_pages,
            obj(&rf).resident_pages
        ),
        (MemKind::File, RFILE, 32)
    );
    assert_eq!(pm_state(pid, a, ANON), (ANON, 0));
}

/// Purge: snapshot first, per-kind eviction. Returns the snapshot and the evicted bytes.
fn purge_every_kind(
    pid: i32,
    areas: (u64, u64, u64, u64),
    files: &[PathBuf],
) -> (ResidencySnapshot, memkind::ByKind<u64>) {
    let (a, m, s, _) = areas;
    let (mf, rf) = (files[0].clone(), files[1].clone());
    let rep = purge(pid, &PurgeOptions::default());
    eprintln!(
        "purge: kinds after {:?}, evicted {:?}, snapshot {:?}, notes {:?}",
        rep.kinds_after, rep.evicted_bytes, rep.snapshot_bytes, rep.kind_notes
    );
    let snap = rep.snapshot.clone().expect("snapshot");
    let snap: ResidencySnapshot =
        ResidencySnapshot::from_json(&serde_json::to_vec(&snap).unwrap()).unwrap();
    let in_snap = |path: &Path| {
        snap.objects
            .iter()
            .find(|o| o.object.path == path.display().to_string())
            .map(|o| o.resident.clone())
    };
    assert_eq!(in_snap(&mf), Some(vec![run(16, 32)]));
    assert_eq!(in_snap(&rf), Some(vec![run(8, 32)]));
    let shm: Vec<u64> = snap
        .objects_of(MemKind::Shmem)
        .map(|o| memkind::pages(&o.resident))
        .collect();
    assert_eq!(shm.iter().sum::<u64>(), MEMFD + SYSV, "{shm:?}");
    assert!(
        memkind::intersect(&snap.anon, &[run(a / ps(), ANON)]) == vec![run(a / ps(), ANON)],
        "anon area in the snapshot"
    );
    // Everything of ours is out: anon on swap, shmem on swap (not even in the swap cache), files dropped.
    assert_eq!(pm_state(pid, a, ANON), (0, ANON));
    assert_eq!(cached(&map_file_of(pid, m, MEMFD), MEMFD), vec![]);
    assert_eq!(cached(&map_file_of(pid, s, SYSV), SYSV), vec![]);
    assert_eq!(cached(&mf, MFILE), vec![]);
    assert_eq!(cached(&rf, RFILE), vec![]);
    let ka = rep.kinds_after.unwrap();
    assert_eq!(ka.shmem.resident_bytes, 0);
    assert_eq!(
        ka.shmem.out_bytes,
        (MEMFD + SYSV) * ps(),
        "shmem on swap (cachestat)"
    );
    let ev = rep.evicted_bytes.unwrap();
    assert_eq!(ev.shmem, (MEMFD + SYSV) * ps());
    assert!(ev.anon >= ANON * ps() && ev.file >= 64 * ps(), "{ev:?}");
    (snap, ev)
}

/// Plan (no loading set: everything is "rest") and restore without mapping anything.
fn plan_and_restore_every_kind(
    pid: i32,
    snap: &ResidencySnapshot,
    areas: (u64, u64, u64, u64),
    files: &[PathBuf],
) -> procswap::plan::FetchReport {
    let (a, m, s, f) = areas;
    let (mf, rf) = (files[0].clone(), files[1].clone());
    let plan = ActivationPlan::compute(pid, snap, None).unwrap();
    assert!(plan.first.is_empty() && plan.loading_rest.is_empty());
    let part_of = |path: &Path| {
        plan.rest
            .file
            .iter()
            .find(|p| plan.objects[p.object as usize].path == path.display().to_string())
            .map(|p| p.runs.clone())
    };
    assert_eq!(part_of(&mf), Some(vec![run(16, 32)]));
    assert_eq!(part_of(&rf), Some(vec![run(8, 32)]));
    assert_eq!(plan.rest.pages().shmem, MEMFD + SYSV);
    assert!(plan.rest.pages().anon >= ANON);
    let t = Target::open(pid, "test").unwrap();
    // File read-ahead issued from the child's memory cgroup: charged to it (checked below).
    let memcg = Memcg::of_pid(pid).unwrap().unwrap();
    let shmem_before = memcg.stat("shmem").unwrap().unwrap_or(0);
    let fo = FetchOptions {
        free_floor_bytes: 0,
        charge_files_to: Some(memcg.dir().to_path_buf()),
        shmem_to_page_cache: true,
        ..Default::default()
    };
    let fr = fetch_unmapped(&t, &plan, &plan.rest, &fo).unwrap();
    eprintln!("fetch: {fr:?}");
    assert!(fr.skipped.is_empty(), "{:?}", fr.skipped);
    assert_eq!(fr.issued_bytes.shmem, (MEMFD + SYSV) * ps());
    wait_objects(&plan, &plan.rest);
    // `shmem_to_page_cache`: every shared-memory page was moved from the swap cache into its
    // object's page cache, which the memcg counts as shmem (a page in the swap cache is not).
    // memcg statistics are flushed lazily: waited for (a hang is the failure).
    let want = shmem_before + (MEMFD + SYSV) * ps();
    let t0 = std::time::Instant::now();
    let mut got = 0;
    while t0.elapsed() < Duration::from_secs(30) {
        got = memcg.stat("shmem").unwrap().unwrap_or(0);
        if got >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        got >= want,
        "memcg shmem {got} < {want}: pages left in the swap cache"
    );
    // Exactly those pages: all shmem, the files' recorded runs and no neighbour.
    assert_eq!(
        cached(&map_file_of(pid, m, MEMFD), MEMFD),
        vec![run(0, MEMFD)]
    );
    assert_eq!(cached(&map_file_of(pid, s, SYSV), SYSV), vec![run(0, SYSV)]);
    assert_eq!(cached(&mf, MFILE), vec![run(16, 32)]);
    assert_eq!(cached(&rf, RFILE), vec![run(8, 32)]);
    // Every anonymous page of the plan was advised (WILLNEED) or, for copy-on-write pages of
    // private file mappings, faulted in; the area is entirely in the plan. (Whether a page sits
    // in the swap cache cannot be seen from outside: memcg `swapcached` is flushed lazily and
    // zero-filled pages are swapped in without I/O, so neither it nor pswpin is an exact count.)
    assert_eq!(fr.issued_bytes.anon, plan.rest.pages().anon * ps());
    // Pages of the plan inside the area, each run clipped to it: a run may go on past the
    // area's end where the next mapping is anonymous and swapped too (the kernel merges or
    // places mappings next to each other as it likes; a CI run saw 1026 for 1024 unclipped).
    let (lo, hi) = (a, a + ANON * ps());
    let area_pages: u64 = plan
        .rest
        .anon
        .iter()
        .map(|r| {
            let (s, e) = (r.addr.max(lo), (r.addr + r.pages * ps()).min(hi));
            e.saturating_sub(s) / ps()
        })
        .sum();
    assert_eq!(area_pages, ANON);
    // Nothing was mapped into the target.
    assert_eq!(pm_state(pid, a, ANON), (0, ANON));
    assert_eq!(pm_state(pid, m, MEMFD).0, 0);
    assert_eq!(pm_state(pid, f, MFILE).0, 0);
    fr
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn every_kind_is_accounted_purged_and_restored_exactly() {
    require_swap();
    let mut k = Kid::spawn("restore");
    let (a, m, s, f) = every_kind(&mut k);
    let (mf, rf) = (k.files[0].clone(), k.files[1].clone());
    let pid = k.pid;
    k.stop();

    let areas = (a, m, s, f);
    inspect_every_kind(pid, areas, &k.files);
    let (snap, ev) = purge_every_kind(pid, areas, &k.files);
    let fr = plan_and_restore_every_kind(pid, &snap, areas, &k.files);

    // Thaw: every page of every area comes from the caches, no major fault.
    k.cont();
    let anon = k.cmd(&format!("TOUCHRANGE anon 0 {ANON}"));
    let memfd = k.cmd(&format!("TOUCHRANGE memfd 0 {MEMFD}"));
    let sysv = k.cmd(&format!("TOUCHRANGE sysv 0 {SYSV}"));
    let mfile = k.cmd("TOUCHRANGE mfile 16 48");
    let rfile = k.cmd(&format!(
        "READ {}",
        (8..40).map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
    ));
    // (A touch that waits for a read still in flight, or for a page locked by compaction, is
    // retried and counted as a major fault by the kernel: printed, not asserted.)
    eprintln!("after restore (major, minor, us): anon {anon:?} memfd {memfd:?} sysv {sysv:?} mfile {mfile:?} rfile {rfile:?}");
    let majors: u64 = [&anon, &memfd, &sysv, &mfile, &rfile]
        .iter()
        .map(|v| v[0])
        .sum();
    assert!(fr.notes.is_empty(), "{:?}", fr.notes);
    // The read file's pages were charged to the child's memcg: the next purge evicts them
    // again (only the memcg reclaim can: the child never maps them).
    k.stop();
    purge(pid, &PurgeOptions::default());
    assert_eq!(
        cached(&rf, RFILE),
        vec![],
        "restored read-file pages not charged to the app's memcg"
    );
    assert_eq!(cached(&mf, MFILE), vec![]);
    summary(&format!(
        "kinds restore: RAN and PASSED: snapshot anon {} / shmem {} / file {} pages; evicted {:?}; restored shmem {} B file {} B; \
         {majors} major faults touching {ANON}+{MEMFD}+{SYSV}+32+32 pages",
        snap.pages().anon,
        snap.pages().shmem,
        snap.pages().file,
        ev,
        fr.issued_bytes.shmem,
        fr.issued_bytes.file
    ));
}

/// While suspended: truncate one (to 16 pages), replace one (rename over it), delete one, and
/// write to one (mapped) in place and grow it by 16 pages (as a database writes its tables: it is
/// the app's and is fetched as before).
fn change_files(k: &mut Kid, trunc: &Path, repl: &Path, del: &Path, written: &Path) {
    use std::os::unix::fs::FileExt;
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(written)
        .unwrap();
    w.write_all_at(b"written while suspended", 4096).unwrap();
    w.write_all_at(&vec![2u8; (16 * ps()) as usize], 64 * ps())
        .unwrap();
    drop(w);
    std::fs::OpenOptions::new()
        .write(true)
        .open(trunc)
        .unwrap()
        .set_len(16 * ps())
        .unwrap();
    let other = k.file("other");
    std::fs::write(&other, vec![1u8; (64 * ps()) as usize]).unwrap();
    std::fs::rename(&other, repl).unwrap();
    std::fs::remove_file(del).unwrap();
}

/// The plan computed after the change reports each changed file.
fn plan_reports_changes(
    pid: i32,
    snap: &ResidencySnapshot,
    [trunc, repl, del, written]: [&Path; 4],
) -> ActivationPlan {
    let plan = ActivationPlan::compute(pid, snap, None).unwrap();
    eprintln!("plan notes: {:?}", plan.notes);
    let note = |p: &Path, what: &str| {
        plan.notes
            .iter()
            .any(|n| n.contains(&p.display().to_string()) && n.contains(what))
    };
    assert!(
        note(trunc, "truncated (262144 -> 65536 bytes)"),
        "{:?}",
        plan.notes
    );
    assert!(note(repl, "replaced"), "{:?}", plan.notes);
    assert!(note(del, "deleted"), "{:?}", plan.notes);
    // Written to and grown: no note, and its 64 pages (out since the purge) are planned.
    assert!(
        !plan
            .notes
            .iter()
            .any(|n| n.contains(&written.display().to_string())),
        "{:?}",
        plan.notes
    );
    let w = plan
        .objects
        .iter()
        .position(|o| o.path == written.display().to_string())
        .expect("the written file is in the plan") as u32;
    let planned: u64 = [&plan.first, &plan.loading_rest, &plan.rest]
        .iter()
        .flat_map(|p| p.file.iter().filter(|op| op.object == w))
        .flat_map(|op| op.runs.iter().map(|r| r.count))
        .sum();
    // Page 1 was written (cached again by the write): 63 out.
    assert_eq!(planned, 63, "{plan:?}");
    plan
}

/// A plan computed before the change, executed after it, and the prefetch path: both skip
/// and report the changed files.
fn stale_fetch_and_prefetch_skip(pid: i32, snap: &ResidencySnapshot, plan: &ActivationPlan) {
    // A plan computed before the change, executed after it: skipped at fetch time too.
    let t = Target::open(pid, "test").unwrap();
    let mut rec = snap.clone();
    let prefix = format!("/var/tmp/torpor-kinds-{pid}-");
    rec.objects.retain(|o| o.object.path.starts_with(&prefix));
    assert_eq!(rec.objects.len(), 4);
    let stale = ActivationPlan {
        objects: rec.objects.iter().map(|o| o.object.clone()).collect(),
        ..plan.clone()
    };
    let part = PlanPart {
        file: (0..stale.objects.len() as u32)
            .map(|i| procswap::plan::ObjectPart {
                object: i,
                runs: vec![run(0, 64)],
            })
            .collect(),
        ..Default::default()
    };
    let fr = fetch_unmapped(
        &t,
        &stale,
        &part,
        &FetchOptions {
            free_floor_bytes: 0,
            ..Default::default()
        },
    )
    .unwrap();
    eprintln!("fetch of a stale plan: {fr:?}");
    // The written file's 64 pages only.
    assert_eq!(fr.issued_bytes.file, 64 * ps());
    assert_eq!(fr.skipped.len(), 3, "{:?}", fr.skipped);
    // The prefetch path reports them too.
    let pf = procswap::prefetch(
        pid,
        &procswap::PrefetchOptions {
            residency: Some(snap.clone()),
            free_floor_bytes: 0,
            ..Default::default()
        },
    )
    .unwrap();
    eprintln!("prefetch notes {:?}", pf.restore_notes);
    // Exactly our three files (the child also holds whatever file the test's stdout/stderr is,
    // e.g. a CI log that grows meanwhile: reported too, rightly, but not ours to count).
    let ours: Vec<_> = pf
        .restore_notes
        .iter()
        .filter(|n| n.contains(&prefix))
        .collect();
    assert_eq!(ours.len(), 3, "{:?}", pf.restore_notes);
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn changed_files_are_skipped_and_reported_without_sigbus() {
    require_swap();
    let mut k = Kid::spawn("changed");
    let trunc = k.file("trunc");
    let repl = k.file("repl");
    let del = k.file("del");
    let written = k.file("written");
    let tf = k.cmd(&format!("MFILE {} 64 0 64", trunc.display()))[0];
    k.cmd(&format!("MFILE {} 64 0 64", repl.display()));
    k.cmd(&format!("RFILE {} 64 0 64", del.display()));
    k.cmd(&format!("MFILE {} 64 0 64", written.display()));
    let pid = k.pid;
    k.stop();
    let rep = purge(pid, &PurgeOptions::default());
    let snap = rep.snapshot.unwrap();
    change_files(&mut k, &trunc, &repl, &del, &written);
    let plan = plan_reports_changes(pid, &snap, [&trunc, &repl, &del, &written]);
    stale_fetch_and_prefetch_skip(pid, &snap, &plan);
    // Nothing of the truncated file past its new end is touched; the child lives on.
    assert!(
        cached(&trunc, 64)
            .iter()
            .map(|r| r.end())
            .max()
            .unwrap_or(0)
            <= 16
    );
    k.cont();
    k.cmd("TOUCHRANGE mfile 0 16"); // the truncated file's remaining pages (first MFILE area)
    let _ = tf;
    writeln!(k.stdin, "EXIT").unwrap();
    k.stdin.flush().unwrap();
    let st = k.proc.wait().unwrap();
    assert!(
        st.success(),
        "child exit status {st:?} (a SIGBUS would show here)"
    );
    summary("changed files: RAN and PASSED: truncated, replaced and deleted files skipped and reported (plan, fetch, prefetch), a file written to and grown fetched; no SIGBUS");
}

/// Loading set: the child touches a known sequence after the thaw, one group per poll; the
/// recording is exactly that set in that order.
/// Fetch everything of `snap` except the files, and wait for it.
fn fetch_all_but_files(pid: i32, snap: &ResidencySnapshot) {
    let plan = ActivationPlan::compute(pid, snap, None).unwrap();
    // Fetch everything except the two files (fetched file pages would be mapped by the kernel's
    // fault-around and, for read files, be invisible): anon and shmem into the swap cache.
    let part = PlanPart {
        file: vec![],
        ..plan.rest.clone()
    };
    let t = Target::open(pid, "test").unwrap();
    fetch_unmapped(
        &t,
        &plan,
        &part,
        &FetchOptions {
            free_floor_bytes: 0,
            ..Default::default()
        },
    )
    .unwrap();
    wait_objects(&plan, &part);
}

/// Thaw and record while the child touches five groups, one per poll (the first response
/// after the third).
fn record_touch_groups(
    k: &mut Kid,
    pid: i32,
    snap: &ResidencySnapshot,
) -> procswap::loadingset::Recording {
    // The portable path (pagemap entries read and decoded: any kernel) for this cycle;
    // PAGEMAP_SCAN (≥ 6.7, where present) for the second one below.
    procswap::loadingset::use_pagemap_scan(false);
    let mut r = LoadingSetRecorder::start(
        pid,
        &Candidates::from_snapshot(snap),
        RecorderOptions::default(),
    )
    .unwrap();
    k.cont();
    let groups: Vec<(&str, Vec<u64>)> = vec![
        ("TOUCH anon 5 9 200", vec![]),
        ("TOUCH memfd 3 100", vec![]),
        ("TOUCH mfile 7", vec![]),
        ("READ 11 12", vec![]),
        ("TOUCH anon 5 7", vec![]),
    ];
    let mut faults = Vec::new();
    for (i, (g, _)) in groups.iter().enumerate() {
        faults.push(k.cmd(g));
        let p = r.poll().unwrap();
        assert_eq!(p.round, i as u32 + 1);
        if i == 2 {
            r.mark_first_response();
        }
    }
    eprintln!("faults per group (major, minor, us): {faults:?}");
    r.finish()
}

/// The first cycle's recording is exactly the touched pages, in their rounds.
fn check_first_recording(rec: &procswap::loadingset::Recording, a: u64, mf: &Path, rf: &Path) {
    let mine =
        |kind: MemKind, base: Option<u64>, path: Option<&Path>| -> Vec<(u32, u64, u64, bool)> {
            rec.touched
                .iter()
                .filter(|x| x.kind == kind)
                .filter(|x| match (base, path) {
                    (Some(b), _) => x.first >= b / ps() && x.first < b / ps() + 256,
                    (None, Some(p)) => x
                        .object
                        .is_some_and(|o| rec.objects[o as usize].path == p.display().to_string()),
                    _ => true,
                })
                .map(|x| {
                    (
                        x.round,
                        base.map(|b| x.first - b / ps()).unwrap_or(x.first),
                        x.count,
                        x.first_response,
                    )
                })
                .collect()
        };
    assert_eq!(
        mine(MemKind::Anon, Some(a), None),
        vec![
            (1, 5, 1, true),
            (1, 9, 1, true),
            (1, 200, 1, true),
            (5, 7, 1, false)
        ]
    );
    let memfd_path = rec
        .objects
        .iter()
        .find(|o| o.kind == MemKind::Shmem)
        .unwrap()
        .path
        .clone();
    assert_eq!(
        mine(MemKind::Shmem, None, Some(Path::new(&memfd_path))),
        vec![(2, 3, 1, true), (2, 100, 1, true)]
    );
    assert_eq!(mine(MemKind::File, None, Some(mf)), vec![(3, 7, 1, true)]);
    assert_eq!(mine(MemKind::File, None, Some(rf)), vec![(4, 11, 2, false)]);
}

/// Persist, reload, and ignore an older format; returns the merged set.
fn persist_and_reload(pid: i32, rec: &procswap::loadingset::Recording) -> LoadingSet {
    // Persist, reload, merge a second cycle in which only anon page 9 is touched again.
    let set = LoadingSet::merge(None, rec, &DecayPolicy::default());
    let dir = PathBuf::from(format!("/var/tmp/torpor-kinds-ls-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ls.json");
    set.save(&path).unwrap();
    let Loaded::Set(back) = LoadingSet::load(&path).unwrap() else {
        panic!("reload")
    };
    assert_eq!(*back, set);
    // An older format on disk is ignored with a note, never an error.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["format_version"] = 0.into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    match LoadingSet::load(&path).unwrap() {
        Loaded::Ignored(note) => eprintln!("as expected: {note}"),
        other => panic!("an old loading set must be ignored with a note, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
    set
}

/// The pages of `runs` inside the 256-page area at `a`, as page indexes in the area.
fn area_pages(runs: &[procswap::plan::SwapRun], a: u64) -> Vec<u64> {
    runs.iter()
        .flat_map(|r| (0..r.pages).map(move |i| r.addr + i * ps()))
        .filter(|x| *x >= a && *x < a + 256 * ps())
        .map(|x| (x - a) / ps())
        .collect()
}

/// The plan of the next Start puts the first-response part first.
fn next_plan_puts_first_response_first(
    k: &mut Kid,
    pid: i32,
    set: &LoadingSet,
    a: u64,
    rf: &Path,
) -> ActivationPlan {
    // The plan of the next Start puts the first-response part first.
    k.stop();
    let rep = purge(pid, &PurgeOptions::default());
    let snap2 = rep.snapshot.unwrap();
    let plan2 = ActivationPlan::compute(pid, &snap2, Some(set)).unwrap();
    let anon_first = area_pages(&plan2.first.anon, a);
    let mut sorted = anon_first.clone();
    sorted.sort();
    assert_eq!(sorted, vec![5, 9, 200]);
    let anon_rest = area_pages(&plan2.loading_rest.anon, a);
    assert_eq!(anon_rest, vec![7]);
    let rf_rest: Vec<Vec<PageRun>> = plan2
        .loading_rest
        .file
        .iter()
        .filter(|p| plan2.objects[p.object as usize].path == rf.display().to_string())
        .map(|p| p.runs.clone())
        .collect();
    assert_eq!(rf_rest, vec![vec![run(11, 2)]]);
    plan2
}

/// Cycle 2 from the plan: only anon page 9 is touched.
fn record_second_cycle(
    k: &mut Kid,
    pid: i32,
    plan2: &ActivationPlan,
    rf: &Path,
) -> procswap::loadingset::Recording {
    // Cycle 2, as a Start would run it: fetch the whole plan except the read file (so its pages
    // stay observable), watch the plan's pages, thaw; only anon page 9 is touched.
    let t = Target::open(pid, "test").unwrap();
    let fo = FetchOptions {
        free_floor_bytes: 0,
        ..Default::default()
    };
    procswap::loadingset::use_pagemap_scan(true);
    let mut r = LoadingSetRecorder::start(
        pid,
        &Candidates::from_plan(plan2),
        RecorderOptions::default(),
    )
    .unwrap();
    for part in [&plan2.first, &plan2.loading_rest, &plan2.rest] {
        let p = PlanPart {
            file: part
                .file
                .iter()
                .filter(|o| plan2.objects[o.object as usize].path != rf.display().to_string())
                .cloned()
                .collect(),
            ..part.clone()
        };
        r.note_fetched_part(plan2, &p);
        fetch_unmapped(&t, plan2, &p, &fo).unwrap();
    }
    k.cont();
    k.cmd("TOUCH anon 9");
    r.poll().unwrap();
    r.mark_first_response();
    r.finish()
}

/// The merge of the second cycle decays exactly the observed-untouched pages (first-response
/// anonymous pages more slowly, keeping their place in the first part).
fn check_second_merge(
    set: &LoadingSet,
    rec2: &procswap::loadingset::Recording,
    a: u64,
    rf: &Path,
) -> LoadingSet {
    let set2 = LoadingSet::merge(Some(set), rec2, &DecayPolicy::default());
    let anon_of = |s: &LoadingSet| -> Vec<(u64, u32, f32)> {
        let mut v: Vec<(u64, u32, f32)> = s
            .runs
            .iter()
            .filter(|x| x.kind == MemKind::Anon && x.first >= a / ps() && x.first < a / ps() + 256)
            .flat_map(|x| (0..x.count).map(move |i| (x.first + i - a / ps(), x.age, x.weight)))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    };
    // 9: touched again (age 0, weight 1). 5 and 200: touched before the first response of
    // cycle 1, observed and untouched in cycle 2: × first_decay (0.75), still in the first
    // part. 7: touched after cycle 1's first response, untouched now: × decay (0.5).
    assert_eq!(
        anon_of(&set2),
        vec![(5, 1, 0.75), (7, 1, 0.5), (9, 0, 1.0), (200, 1, 0.75)]
    );
    let first_of = |s: &LoadingSet| -> Vec<u64> {
        let mut v: Vec<u64> = s
            .runs
            .iter()
            .filter(|x| x.kind == MemKind::Anon && x.first_response)
            .filter(|x| x.first >= a / ps() && x.first < a / ps() + 256)
            .flat_map(|x| (0..x.count).map(move |i| x.first + i - a / ps()))
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(
        first_of(&set2),
        vec![5, 9, 200],
        "first-response pages keep their place (9: touched before cycle 2's first response too)"
    );
    let rf_key = set2
        .objects
        .iter()
        .find(|o| o.path == rf.display().to_string())
        .unwrap()
        .key;
    let rf2: Vec<(u64, u32)> = set2
        .runs
        .iter()
        .filter(|x| {
            x.object
                .is_some_and(|o| set2.objects[o as usize].key == rf_key)
        })
        .map(|x| (x.first, x.age))
        .collect();
    assert_eq!(
        rf2,
        vec![(11, 1)],
        "read-file pages observable and unread decay"
    );
    set2
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn loading_set_is_exactly_what_was_touched_in_order() {
    require_swap();
    let mut k = Kid::spawn("ls");
    let a = k.cmd("ANON 256")[0];
    let m = k.cmd("MEMFD 128")[0];
    let mf = k.file("mfile");
    let f = k.cmd(&format!("MFILE {} 64 0 64", mf.display()))[0];
    let rf = k.file("rfile");
    k.cmd(&format!("RFILE {} 64 0 64", rf.display()));
    k.cmd("VERIFY");
    let pid = k.pid;
    k.stop();
    let rep = purge(pid, &PurgeOptions::default());
    let snap = rep.snapshot.unwrap();
    fetch_all_but_files(pid, &snap);
    let rec = record_touch_groups(&mut k, pid, &snap);
    check_first_recording(&rec, a, &mf, &rf);
    let _ = (m, f);
    eprintln!("recording stats: {:?}", rec.stats);

    let set = persist_and_reload(pid, &rec);
    let plan2 = next_plan_puts_first_response_first(&mut k, pid, &set, a, &rf);
    let rec2 = record_second_cycle(&mut k, pid, &plan2, &rf);
    let set2 = check_second_merge(&set, &rec2, a, &rf);
    // The next purge lays the loading set out first (set2's anon pages in touch order).
    k.stop();
    let ranges = set2.layout_ranges(pid).unwrap();
    let rep = purge(
        pid,
        &PurgeOptions {
            layout_first: Some(ranges.clone()),
            ..Default::default()
        },
    );
    let l = rep.layout.unwrap();
    assert_eq!(
        l.loading_set_pages,
        ranges.iter().map(|r| r.len / ps()).sum::<u64>()
    );
    summary(&format!(
        "loading set: RAN and PASSED: 5 groups in 5 rounds exactly (anon, memfd, mapped file, read file), first-response split, \
         merge/persist/old-version note, plan first/loading_rest, second cycle from the plan decays exactly the observed-untouched \
         pages; polls {} us total, max {} us; next purge lays {} loading-set pages out first ({} swap extents)",
        rec.stats.poll_us_total, rec.stats.poll_us_max, l.loading_set_pages, l.loading_set_extents
    ));
}

/// The purge pages the loading set out first, in touch order: its pages land on consecutive
/// swap slots (few extents), unlike an address-ordered purge.
#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn loading_set_first_layout_gives_few_extents() {
    require_swap();
    // The kernel stripes page-out across swap devices of equal (top) priority, page by page:
    // no layout survives that. Say so instead of failing (another suite's swapfile may be on).
    let prios: Vec<i64> = std::fs::read_to_string("/proc/swaps")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(4).and_then(|p| p.parse().ok()))
        .collect();
    let top = prios.iter().copied().max().unwrap_or(0);
    if prios.iter().filter(|p| **p == top).count() > 1 {
        summary(&format!(
            "layout: SKIPPED, CANNOT RUN ON THIS HOST NOW: {} swap devices share the top priority {top} (the kernel stripes across them)",
            prios.iter().filter(|p| **p == top).count()
        ));
        return;
    }
    const N: u64 = 4096;
    const LS: u64 = 256;
    // A scattered touch order over the area.
    let order: Vec<u64> = (0..LS).map(|i| (i * 997 + 13) % N).collect();
    let extents_of = |layout: bool| -> (procswap::purge::LayoutReport, PurgeReport) {
        let mut k = Kid::spawn(if layout { "layout" } else { "plain" });
        let a = k.cmd(&format!("ANON {N}"))[0];
        let ranges: Vec<procswap::Range> = order
            .iter()
            .map(|p| procswap::Range {
                start: a + p * ps(),
                len: ps(),
            })
            .collect();
        k.stop();
        let opts = PurgeOptions {
            layout_first: layout.then(|| ranges.clone()),
            ..Default::default()
        };
        let rep = purge(k.pid, &opts);
        let lr = match rep.layout.clone() {
            Some(l) => l,
            None => {
                // Control: measure the same figures for an address-ordered purge.
                let again = purge(
                    k.pid,
                    &PurgeOptions {
                        layout_first: Some(ranges),
                        ..Default::default()
                    },
                );
                again.layout.unwrap()
            }
        };
        (lr, rep)
    };
    let (plain, _) = extents_of(false);
    let (ordered, rep) = extents_of(true);
    eprintln!("address-ordered purge: {plain:?}\nloading-set-first purge: {ordered:?}");
    assert_eq!(ordered.loading_set_pages, LS);
    assert_eq!(ordered.loading_set_swapped_pages, LS);
    assert_eq!(ordered.already_swapped_pages, 0);
    assert_eq!(plain.loading_set_swapped_pages, LS);
    assert!(
        ordered.loading_set_touch_order_extents * 8 <= plain.loading_set_touch_order_extents,
        "touch-order extents: layout {} vs address order {}",
        ordered.loading_set_touch_order_extents,
        plain.loading_set_touch_order_extents
    );
    summary(&format!(
        "layout: RAN and PASSED: {LS} scattered loading-set pages of {N}: touch-order swap extents {} (slot-order runs {}) with \
         loading-set-first vs {} with an address-ordered purge; rest {} pages in {} extents; ordered page-out {:.3} s",
        ordered.loading_set_touch_order_extents,
        ordered.loading_set_extents,
        plain.loading_set_touch_order_extents,
        ordered.rest_pages,
        ordered.rest_extents,
        rep.layout.as_ref().map(|l| l.first_seconds).unwrap_or(0.0)
    ));
}

/// Clean pages swapped in by a read keep their swap slot: a second loading-set-first purge
/// does not move them (the kernel drops a clean swap-cache page without writing it).
#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn read_faulted_pages_keep_their_slots() {
    let (mut k, a) = read_faulted_kid("kept", false);
    let slots = |pid: i32| -> Vec<u64> {
        let mut pm = Pagemap::open(pid).unwrap();
        let mut v = Vec::new();
        pm.scan(a, a + 64 * ps(), |_, info| {
            if let procfs::process::PageInfo::SwapPage(f) = info {
                v.push(f.get_swap_offset());
            }
        })
        .unwrap();
        v
    };
    let before = slots(k.pid);
    assert_eq!(before.len(), 64);
    k.cont();
    k.cmd("TOUCHRANGE anon 0 64");
    k.stop();
    // Page them out in reverse order: fresh slots would be consecutive in that order.
    let rep = purge(
        k.pid,
        &PurgeOptions {
            layout_first: Some(reversed_pages(a, 64)),
            ..Default::default()
        },
    );
    let l = rep.layout.unwrap();
    let after = slots(k.pid);
    let kept = before.iter().zip(&after).filter(|(x, y)| x == y).count();
    eprintln!("{l:?}; kept {kept} of 64");
    assert_eq!(l.loading_set_swapped_pages, 64);
    assert_eq!(
        l.already_swapped_pages, 0,
        "they were mapped (read-faulted) at the purge"
    );
    assert_eq!(kept, 64, "clean read-faulted pages kept their swap slot (kernel behaviour this layout relies on knowing)");
    assert_eq!(
        l.loading_set_touch_order_extents, 64,
        "kept slots are in the old (address) order, not the new one"
    );
    summary(&format!(
        "kept slots: RAN and PASSED: {kept} of 64 read-faulted (clean) pages kept their old swap slot on the next ordered purge \
         (touch-order extents {}): a layout is written once per dirtied page",
        l.loading_set_touch_order_extents
    ));
}

/// The same read-faulted pages with the layout's head re-slotted (`layout_rewrite_bytes`,
/// procswap::reslot): each gives up its old slot before the ordered page-out, and the
/// contents survive the read, page-out, read-back and write-back.
#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn reslot_gives_read_faulted_pages_new_slots() {
    let (k, a) = read_faulted_kid("reslot", true);
    assert_eq!(pm_state(k.pid, a, 64), (64, 0), "read-faulted back in");
    let l = reslot_all_64(k, a, "read-faulted (clean, in the swap cache)");
    summary(&format!(
        "reslot: RAN and PASSED: 64 of 64 read-faulted pages given new slots, contents verified \
         (touch-order extents {} for 64 pages paged out in reverse order)",
        l.loading_set_touch_order_extents
    ));
}

/// Pages still on swap from an earlier purge (never mapped since) in the layout's re-slotted
/// head: each leaves its old slot too, so the ordered page-out lays them out with the rest of
/// the head instead of leaving them where the earlier layout put them; contents survive.
#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn reslot_moves_pages_still_on_swap() {
    let (k, a) = read_faulted_kid("reslot-swapped", false);
    assert_eq!(pm_state(k.pid, a, 64), (0, 64), "on swap, not mapped");
    let l = reslot_all_64(k, a, "on swap");
    assert_eq!(l.already_swapped_pages, 0, "no page kept its old slot");
    summary(&format!(
        "reslot (on swap): RAN and PASSED: 64 of 64 pages still on swap given new slots, contents verified \
         (touch-order extents {} for 64 pages paged out in reverse order)",
        l.loading_set_touch_order_extents
    ));
}

/// Purge `k` with its first 64 pages at `a` as the layout's re-slotted head (in reverse order);
/// every one of them (`what`) gives up its old slot, all 64 are out again, and the child's
/// contents verify after it runs on. Returns the layout report.
fn reslot_all_64(mut k: Kid, a: u64, what: &str) -> procswap::purge::LayoutReport {
    let rep = purge(
        k.pid,
        &PurgeOptions {
            layout_first: Some(reversed_pages(a, 64)),
            layout_rewrite_bytes: 64 * ps(),
            ..Default::default()
        },
    );
    let l = rep.layout.unwrap();
    eprintln!("{l:?}");
    assert_eq!(
        (l.rewritten_pages, l.rewrite_refused_pages),
        (64, 0),
        "every page {what} gave up its old slot"
    );
    assert_eq!(l.loading_set_swapped_pages, 64);
    assert_eq!(pm_state(k.pid, a, 64), (0, 64), "all paged out again");
    k.cont();
    let v = k.cmd("VERIFY");
    assert_eq!(v.len(), 2, "contents intact after the re-slot: {v:?}");
    l
}

/// A stopped kindchild with 1024 anonymous pages purged; with `touch`, its first 64 pages then
/// read-faulted back in (clean, in the swap cache). Returns it and the area's address.
fn read_faulted_kid(tag: &str, touch: bool) -> (Kid, u64) {
    require_swap();
    let mut k = Kid::spawn(tag);
    let a = k.cmd("ANON 1024")[0];
    k.stop();
    purge(k.pid, &PurgeOptions::default());
    if touch {
        k.cont();
        k.cmd("TOUCHRANGE anon 0 64");
        k.stop();
    }
    (k, a)
}

/// Pages `[a, a + n pages)` as one-page ranges in reverse order (fresh slots would be
/// consecutive in that order).
fn reversed_pages(a: u64, n: u64) -> Vec<procswap::Range> {
    (0..n)
        .rev()
        .map(|p| procswap::Range {
            start: a + p * ps(),
            len: ps(),
        })
        .collect()
}

/// `pswpin` from /proc/vmstat (machine-wide).
fn pswpin() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("pswpin ").map(|v| v.trim().parse().unwrap()))
        .unwrap()
}

/// Wait until the machine-wide `pswpin` has not moved for `quiet`.
fn wait_pswpin_quiet(quiet: Duration) -> Duration {
    let t0 = Instant::now();
    let (mut last, mut since) = (pswpin(), Instant::now());
    while since.elapsed() < quiet && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(2));
        let now = pswpin();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    t0.elapsed()
}

/// The plan's anonymous and shmem parts, each alone.
fn kind_parts(plan: &ActivationPlan) -> (PlanPart, PlanPart) {
    (
        PlanPart {
            anon: plan.rest.anon.clone(),
            ..Default::default()
        },
        PlanPart {
            shmem: plan.rest.shmem.clone(),
            ..Default::default()
        },
    )
}

/// Loading-set polling cost with nothing touched: candidate pages and median ms per round.
struct PollCosts {
    pa: u64,
    ca_read: f64,
    ca: f64,
    psh: u64,
    csh_read: f64,
    csh: f64,
}

/// Step 1, polling cost, nothing touched yet (every candidate page is read each round).
fn polling_costs(pid: i32, snap: &ResidencySnapshot) -> PollCosts {
    let cand_anon = Candidates {
        anon: snap.anon.clone(),
        ..Default::default()
    };
    let cand_shm = Candidates {
        anon: vec![],
        ..Candidates::from_snapshot(snap)
    };
    let poll_cost = |c: &Candidates, scan: bool| -> (u64, f64) {
        procswap::loadingset::use_pagemap_scan(scan);
        let mut r = LoadingSetRecorder::start(pid, c, RecorderOptions::default()).unwrap();
        let rounds = 20;
        let mut us: Vec<u64> = (0..rounds).map(|_| r.poll().unwrap().poll_us).collect();
        us.sort();
        (
            r.finish().stats.first_round_pages,
            us[rounds / 2] as f64 / 1000.0,
        )
    };
    let (pa, ca_read) = poll_cost(&cand_anon, false);
    let (psh, csh_read) = poll_cost(&cand_shm, false);
    let (_, ca) = poll_cost(&cand_anon, true);
    let (_, csh) = poll_cost(&cand_shm, true);
    procswap::loadingset::use_pagemap_scan(true);
    PollCosts {
        pa,
        ca_read,
        ca,
        psh,
        csh_read,
        csh,
    }
}

/// Step 3, minor faults: purge again, fetch without mapping, wait for the reads, thaw, touch
/// every page once while the recorder watches. Returns the touches' (major, minor, us) for
/// anon and memfd and the last poll.
fn minor_fault_touches(
    k: &mut Kid,
    t: &Target,
    fo: &FetchOptions,
    (a, m, n): (u64, u64, u64),
) -> (Vec<u64>, Vec<u64>, procswap::loadingset::Poll) {
    let mut rep = purge(k.pid, &PurgeOptions::default());
    // A page busy during the purge (in a per-CPU LRU batch on a loaded machine) stays mapped:
    // purge again (the snapshot of the first purge is the one that counts).
    let snap = rep.snapshot.clone().unwrap();
    for _ in 0..5 {
        if pm_state(k.pid, a, n).0 == 0 && pm_state(k.pid, m, n).0 == 0 {
            break;
        }
        eprintln!(
            "pages still mapped after the purge: {:?}",
            rep.unpurged.vmas
        );
        rep = purge(k.pid, &PurgeOptions::default());
    }
    let plan = ActivationPlan::compute(k.pid, &snap, None).unwrap();
    let (anon_part, shm_part) = kind_parts(&plan);
    fetch_unmapped(t, &plan, &anon_part, fo).unwrap();
    fetch_unmapped(t, &plan, &shm_part, fo).unwrap();
    let waited = wait_pswpin_quiet(Duration::from_millis(300));
    // Printed, not asserted: on a shared machine another suite's swapoff or cgroup reclaim can
    // move these pages (seen: holes in the memfd's cache with two other swapfiles on).
    let shm_cached = memkind::pages(&cached(&map_file_of(k.pid, m, n), n));
    // Only pages not mapped now can be observed (normally all of them: the fetch maps nothing).
    let (pa0, pm0) = (pm_state(k.pid, a, n).0, pm_state(k.pid, m, n).0);
    eprintln!(
        "before the thaw: memfd pages cached {shm_cached} of {n}; mapped: anon {pa0}, memfd {pm0}"
    );
    let mut r = LoadingSetRecorder::start(
        k.pid,
        &Candidates::from_snapshot(&snap),
        RecorderOptions::default(),
    )
    .unwrap();
    k.cont();
    let ta = k.cmd(&format!("TOUCHRANGE anon 0 {n}"));
    let p1 = r.poll().unwrap();
    let tm = k.cmd(&format!("TOUCHRANGE memfd 0 {n}"));
    let p2 = r.poll().unwrap();
    let p3 = r.poll().unwrap();
    eprintln!("touch (major, minor, us) anon {ta:?} memfd {tm:?}; polls {p1:?} {p2:?} {p3:?}; waited {waited:?} for the reads");
    let rec = r.finish();
    let area = |base: u64| -> u64 {
        rec.touched
            .iter()
            .filter(|x| {
                x.kind == MemKind::Anon && x.first >= base / ps() && x.first < base / ps() + n
            })
            .map(|x| x.count)
            .sum()
    };
    assert_eq!(
        area(a),
        n - pa0,
        "every observable touched anon page recorded"
    );
    assert_eq!(
        rec.touched
            .iter()
            .filter(|x| x.kind == MemKind::Shmem)
            .map(|x| x.count)
            .sum::<u64>(),
        n - pm0
    );
    (ta, tm, p3)
}

/// A purge may leave a page of a memfd resident (one run here issued n - 1 pages: a page the
/// page-out could not isolate then); a measurement of n pages read back needs all n out, so
/// purge again while one is (at most 3 more times), and assert none is.
fn purge_until_shm_out(pid: i32, snap: &ResidencySnapshot) {
    for round in 1..=3 {
        let left = shm_resident_pages(pid, snap);
        if left == 0 {
            break;
        }
        eprintln!(
            "measure: {left} memfd page(s) still resident after purge {round}; purging again"
        );
        purge(pid, &PurgeOptions::default());
    }
    assert_eq!(
        shm_resident_pages(pid, snap),
        0,
        "memfd pages resident after 4 purges"
    );
}

/// Pages of `pid`'s shared-memory objects (as in `snap`) resident now (page or swap cache).
fn shm_resident_pages(pid: i32, snap: &ResidencySnapshot) -> u64 {
    snap.objects
        .iter()
        .filter(|o| o.object.kind == MemKind::Shmem)
        .map(|o| {
            let f = memkind::reopen(pid, &o.object).unwrap();
            let v = ObjectView::new(f, None).unwrap();
            v.resident(&o.object.interest)
                .unwrap()
                .iter()
                .map(|r| r.count)
                .sum::<u64>()
        })
        .sum()
}

/// Measurements (printed, not asserted beyond counts): loading-set polling cost per round,
/// minor-fault cost per page of a fetched-but-unmapped page, shmem WILLNEED throughput vs
/// anon. Size per kind: `TORPOR_KINDS_MEASURE_MIB` (default 64).
#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn measure_polling_minor_faults_and_shmem_throughput() {
    require_swap();
    let mib: u64 = std::env::var("TORPOR_KINDS_MEASURE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let n = mib * 256 * 4096 / ps();
    let mut k = Kid::spawn("measure");
    let a = k.cmd(&format!("ANON {n}"))[0];
    let m = k.cmd(&format!("MEMFD {n}"))[0];
    k.stop();
    let rep = purge(k.pid, &PurgeOptions::default());
    let snap = rep.snapshot.unwrap();
    assert_eq!(pm_state(k.pid, a, n), (0, n));
    purge_until_shm_out(k.pid, &snap);
    let fo = FetchOptions {
        free_floor_bytes: 0,
        ..Default::default()
    };
    let t = Target::open(k.pid, "test").unwrap();

    let PollCosts {
        pa,
        ca_read,
        ca,
        psh,
        csh_read,
        csh,
    } = polling_costs(k.pid, &snap);

    // Stop-side costs: a snapshot of the (purged) target, a plan.
    let t0 = Instant::now();
    let _ = ResidencySnapshot::of_pid(k.pid).unwrap();
    let snap_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t0 = Instant::now();
    let plan = ActivationPlan::compute(k.pid, &snap, None).unwrap();
    let plan_ms = t0.elapsed().as_secs_f64() * 1e3;
    let plan_json = serde_json::to_vec(&plan).unwrap().len();

    // 2. Throughput, same method for both kinds: WILLNEED, then a process_vm_readv pass over
    // the area (waits for every read to complete).
    let (anon_part, shm_part) = kind_parts(&plan);
    let addrs = |base: u64| (0..n).map(|i| base + i * ps()).collect::<Vec<u64>>();
    let t0 = Instant::now();
    let fa = fetch_unmapped(&t, &plan, &anon_part, &fo).unwrap();
    let issue_a = t0.elapsed();
    let (ok_a, _) = procswap::prefetch::map_pages_vm_readv(k.pid, &addrs(a)).unwrap();
    let anon_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let fs = fetch_unmapped(&t, &plan, &shm_part, &fo).unwrap();
    let issue_s = t0.elapsed();
    let (ok_s, _) = procswap::prefetch::map_pages_vm_readv(k.pid, &addrs(m)).unwrap();
    let shm_s = t0.elapsed().as_secs_f64();
    assert_eq!((ok_a, ok_s), (n, n));
    assert_eq!(fs.issued_bytes.shmem, n * ps());

    let (ta, tm, p3) = minor_fault_touches(&mut k, &t, &fo, (a, m, n));
    let line = format!(
        "measure ({mib} MiB per kind, {} KiB pages): loading-set poll with nothing touched: anon {pa} pages {ca:.3} ms/round \
         ({:.1} ns/page) with PAGEMAP_SCAN, {ca_read:.2} ms/round reading pagemap entries; shmem {psh} pages {csh:.3} / \
         {csh_read:.2} ms/round; {} us/round once all touched. Touch of a fetched, unmapped page: \
         anon {:.2} us/page ({} minor, {} major faults), shmem {:.2} us/page ({} minor, {} major). WILLNEED + vm_readv pass: anon \
         {:.0} MB/s (issue {:.1} ms, {} swap extents), shmem {:.0} MB/s (issue {:.1} ms). Stop side: snapshot {snap_ms:.1} ms, \
         plan {plan_ms:.1} ms ({plan_json} bytes of JSON)",
        ps() / 1024,
        ca * 1e6 / pa.max(1) as f64,
        p3.poll_us,
        ta[2] as f64 / n as f64,
        ta[1],
        ta[0],
        tm[2] as f64 / n as f64,
        tm[1],
        tm[0],
        (fa.issued_bytes.anon as f64 / 1e6) / anon_s,
        issue_a.as_secs_f64() * 1e3,
        fa.swap_extents,
        (fs.issued_bytes.shmem as f64 / 1e6) / shm_s,
        issue_s.as_secs_f64() * 1e3,
    );
    summary(&line);
}

/// Send `sig` to `pids`; after SIGSTOP, wait until each one is quiescent.
fn signal_all(pids: &[i32], sig: nix::sys::signal::Signal) {
    for p in pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig).unwrap();
    }
    if sig != nix::sys::signal::Signal::SIGSTOP {
        return;
    }
    for p in pids {
        let t0 = Instant::now();
        while !procswap::quiescence(*p).unwrap().is_quiescent() {
            assert!(t0.elapsed() < Duration::from_secs(10), "{p} did not stop");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Purge every process of an app as torpord does (the memcg reclaim after the last one);
/// their Stop-time snapshots.
fn purge_all(pids: &[i32]) -> Vec<ResidencySnapshot> {
    let mut snaps = Vec::new();
    for (i, p) in pids.iter().enumerate() {
        let opts = PurgeOptions {
            reclaim: i + 1 == pids.len(),
            reclaim_shared: true,
            ..PurgeOptions::default()
        };
        let r = purge(*p, &opts);
        eprintln!(
            "multi: purge {p}: reclaim {:?} skipped {:?} evicted {:?}",
            r.reclaim, r.reclaim_skipped, r.evicted_bytes
        );
        snaps.push(r.snapshot.expect("snapshot"));
    }
    snaps
}

/// Fetch every part of every plan (files charged to `memcg`); the shmem bytes issued.
fn fetch_all(plans: &[ActivationPlan], memcg: &Path) -> u64 {
    let fo = FetchOptions {
        free_floor_bytes: 0,
        charge_files_to: Some(memcg.to_path_buf()),
        ..Default::default()
    };
    let mut issued = 0;
    for p in plans {
        let t = Target::open(p.pid, "test").unwrap();
        for part in [&p.first, &p.loading_rest, &p.rest] {
            let r = fetch_unmapped(&t, p, part, &fo).unwrap();
            assert!(r.skipped.is_empty(), "{:?}", r.skipped);
            issued += r.issued_bytes.shmem;
        }
    }
    issued
}

/// An app of three processes: a parent and two forked children that all map one memfd of
/// `MEMFD` pages and have read all of it (as PostgreSQL's backends share `shared_buffers`).
/// Accounted for the app, the memfd is `MEMFD` pages (once, not three times); the purge (one
/// per process, the memcg reclaim after the last, as torpord runs it) evicts exactly those
/// pages; the plans, made to share their objects, fetch them once, and the fetch restores
/// every one of them.
#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn forked_processes_sharing_a_memfd_count_and_fetch_it_once() {
    use procswap::app;
    require_swap();
    let mut k = Kid::spawn("multi");
    let m = k.cmd(&format!("MEMFD {MEMFD}"))[0];
    let a = k.cmd("ANON 64")[0];
    let kids = k.cmd("FORK 2");
    assert_eq!(kids.len(), 2);
    let pids: Vec<i32> = std::iter::once(k.pid)
        .chain(kids.iter().map(|p| *p as i32))
        .collect();
    let memcg = Memcg::of_pid(k.pid).unwrap().unwrap();
    let mut in_cg = cgroup::procs(memcg.dir()).unwrap();
    in_cg.sort_unstable();
    let mut want = pids.clone();
    want.sort_unstable();
    assert_eq!(
        in_cg, want,
        "the children are in the parent's memory cgroup"
    );
    k.stop();
    signal_all(&pids[1..], nix::sys::signal::Signal::SIGSTOP);
    assert_eq!(
        cached(&map_file_of(k.pid, m, MEMFD), MEMFD),
        vec![run(0, MEMFD)]
    );

    // Purge every process; the memcg reclaim runs after the last one.
    let snaps = purge_all(&pids);
    let per_process: u64 = snaps.iter().map(|s| s.pages().shmem).sum();
    let whole = app::app_pages(&snaps);
    eprintln!("multi: shmem per process summed {per_process}, for the app {whole:?}");
    assert_eq!(
        per_process,
        3 * MEMFD,
        "each process's snapshot has the memfd"
    );
    assert_eq!(whole.shmem, MEMFD, "the app's shmem: the memfd once");
    assert!(whole.anon >= 64, "{whole:?}");
    assert_eq!(
        cached(&map_file_of(k.pid, m, MEMFD), MEMFD),
        vec![],
        "memfd evicted"
    );
    assert_eq!(pm_state(k.pid, a, 64), (0, 64));

    // The plans: the memfd once, with the loading set (shared by the processes).
    let mut plans: Vec<ActivationPlan> = pids
        .iter()
        .zip(&snaps)
        .map(|(p, s)| ActivationPlan::compute(*p, s, None).unwrap())
        .collect();
    assert_eq!(app::plan_pages(&plans).shmem, 3 * MEMFD);
    let sh = app::share_objects(&mut plans);
    eprintln!("multi: {sh:?}");
    assert_eq!(sh.shared_shmem_objects, 1);
    assert_eq!(sh.promoted_pages, 3 * MEMFD);
    assert_eq!(sh.duplicate_pages.shmem, 2 * MEMFD);
    assert_eq!(app::plan_pages(&plans).shmem, MEMFD);
    assert_eq!(plans[0].loading_rest.pages().shmem, MEMFD);
    let shm: Vec<_> = app::plan_objects(&plans)
        .into_values()
        .filter(|(kind, _)| *kind == MemKind::Shmem)
        .collect();
    assert_eq!(shm, vec![(MemKind::Shmem, MEMFD)]);

    // Fetch every part of every plan: the memfd is advised once, and all of it comes back.
    let issued = fetch_all(&plans, memcg.dir());
    assert_eq!(issued, MEMFD * ps());
    wait_objects(&plans[0], &plans[0].loading_rest);
    assert_eq!(
        cached(&map_file_of(k.pid, m, MEMFD), MEMFD),
        vec![run(0, MEMFD)]
    );
    signal_all(&pids[1..], nix::sys::signal::Signal::SIGCONT);
    k.cont();
    let v = k.cmd("VERIFY");
    summary(&format!(
        "kinds multi-process: RAN and PASSED: 3 processes sharing a {MEMFD}-page memfd: app shmem {} pages (per process summed {per_process}), \
         evicted and fetched once ({issued} B); VERIFY majflt {}",
        whole.shmem, v[0]
    ));
}

/// The objects-only path a VM's Stop and Start take for QEMU's own file pages: a snapshot of
/// one kind without anonymous pages (no pagemap walk), a plan of objects only split by the
/// loading set, and its first part fetched — exactly the set's pages, nothing mapped.
#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn objects_only_snapshot_and_plan_follow_the_set() {
    require_swap();
    let mut k = Kid::spawn("objects");
    let (_, _, _, f) = every_kind(&mut k);
    let (mf, rf) = (k.files[0].clone(), k.files[1].clone());
    let pid = k.pid;
    k.stop();
    let t = Target::open(pid, "test").unwrap();
    let snap = ResidencySnapshot::take_objects(&t, MemKind::File).unwrap();
    assert!(snap.anon.is_empty(), "{:?}", snap.anon);
    assert!(snap.objects.iter().all(|o| o.object.kind == MemKind::File));
    let of = |path: &Path| {
        let p = path.display().to_string();
        snap.objects.iter().find(|o| o.object.path == p)
    };
    let (mo, ro) = (of(&mf).unwrap(), of(&rf).unwrap());
    assert_eq!(mo.resident, vec![run(16, 32)]);
    assert_eq!(ro.resident, vec![run(8, 32)]);
    purge(pid, &PurgeOptions::default());
    assert_eq!(cached(&mf, MFILE), vec![]);
    assert_eq!(cached(&rf, RFILE), vec![]);
    // The set: mapped-file pages 16..24 touched before the first response, 24..32 after.
    let file_run = |first, count, first_response| procswap::loadingset::LsRun {
        kind: MemKind::File,
        object: Some(0),
        first,
        count,
        round: 1,
        age: 0,
        weight: 1.0,
        first_response,
    };
    let set = LoadingSet {
        format_version: LoadingSet::FORMAT_VERSION,
        pid,
        comm: String::new(),
        page_size: ps(),
        cycles: 1,
        recorded_at: 0,
        last: Default::default(),
        objects: vec![procswap::loadingset::LsObject {
            kind: MemKind::File,
            key: mo.object.key,
            path: mo.object.path.clone(),
        }],
        runs: vec![file_run(16, 8, true), file_run(24, 8, false)],
    };
    let plan = ActivationPlan::of_objects(pid, &snap, Some(&set)).unwrap();
    let anon = |p: &PlanPart| p.anon.len() + p.anon_cow.len();
    assert_eq!(
        (
            anon(&plan.first),
            anon(&plan.loading_rest),
            anon(&plan.rest)
        ),
        (0, 0, 0),
        "objects only"
    );
    let runs_of = |part: &PlanPart, path: &Path| -> Vec<PageRun> {
        part.file
            .iter()
            .filter(|p| plan.objects[p.object as usize].path == path.display().to_string())
            .flat_map(|p| p.runs.clone())
            .collect()
    };
    assert_eq!(runs_of(&plan.first, &mf), vec![run(16, 8)]);
    assert_eq!(runs_of(&plan.loading_rest, &mf), vec![run(24, 8)]);
    assert_eq!(runs_of(&plan.rest, &mf), vec![run(32, 16)]);
    assert_eq!(runs_of(&plan.rest, &rf), vec![run(8, 32)]);
    assert_eq!(runs_of(&plan.first, &rf), vec![]);
    let fo = FetchOptions {
        free_floor_bytes: 0,
        ..Default::default()
    };
    let fr = fetch_unmapped(&t, &plan, &plan.first, &fo).unwrap();
    assert_eq!(fr.issued_bytes.file, 8 * ps(), "{fr:?}");
    wait_objects(&plan, &plan.first);
    assert_eq!(cached(&mf, MFILE), vec![run(16, 8)]);
    assert_eq!(cached(&rf, RFILE), vec![]);
    assert_eq!(pm_state(pid, f, MFILE).0, 0, "nothing mapped");
    summary("kinds objects-only: RAN and PASSED: file snapshot, plan by the set, first part exactly fetched");
}

/// A swap file of this test's own, written through (not preallocated: a page-out writes to
/// the blocks under the file, and a preallocated extent reads as zeros through the file system
/// whatever was written there), on at the highest priority so every page-out goes to it.
/// Switched off and removed on drop.
struct OwnSwap(PathBuf);

impl OwnSwap {
    const PRIO: &'static str = "32767";

    /// `Err` when another swap area has the highest priority too (the kernel would stripe
    /// page-outs across both).
    fn new(tag: &str, mib: usize) -> Result<OwnSwap, String> {
        let taken = std::fs::read_to_string("/proc/swaps")
            .unwrap()
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(4) == Some(Self::PRIO))
            .count();
        if taken > 0 {
            return Err(format!(
                "another swap area has the highest priority ({})",
                Self::PRIO
            ));
        }
        let path = PathBuf::from(format!("/var/tmp/torpor-{tag}-{}.swap", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..mib {
            f.write_all(&zeros).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        let me = OwnSwap(path);
        let run = |cmd: &str, args: &[&str]| {
            let st = std::process::Command::new(cmd).args(args).status().unwrap();
            assert!(st.success(), "{cmd} {args:?}: {st}");
        };
        std::fs::set_permissions(&me.0, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let p = me.0.to_str().unwrap();
        run("mkswap", &["-q", p]);
        // Discard policy: a new allocation takes a free cluster first (with-swap.sh).
        run("swapon", &["-p", Self::PRIO, "--discard=pages", p]);
        Ok(me)
    }
}

impl Drop for OwnSwap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("swapoff").arg(&self.0).status();
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The pattern word of `torpor-kindchild` for (tag, page): `(tag << 48) ^ page * K`.
const KIND_K: u64 = 0x9E37_79B9_7F4A_7C15;

/// K's inverse mod 2^64 (K is odd): page = (word ^ tag << 48) * K^-1.
fn kind_k_inverse() -> u64 {
    let mut x: u64 = 1;
    for _ in 0..7 {
        x = x.wrapping_mul(2u64.wrapping_sub(KIND_K.wrapping_mul(x)));
    }
    assert_eq!(KIND_K.wrapping_mul(x), 1);
    x
}

/// Where the swap file holds the pages of `torpor-kindchild`'s pattern of `tag` (every word of
/// the page right): per page index below `n`, the slots (page offsets in the file) holding it.
/// Read with O_DIRECT (a page-out writes to the disk, not through the file's page cache).
/// Freed slots keep their old contents, so a page written twice may show twice.
fn slots_holding(swapfile: &Path, tag: u64, n: u64) -> Vec<Vec<u64>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(swapfile)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let ps = ps() as usize;
    let block = 4 << 20;
    // O_DIRECT needs a page-aligned buffer: a page-aligned window of a larger one.
    let mut buf = vec![0u8; block + ps];
    let align = buf.as_ptr().align_offset(ps);
    let b = &mut buf[align..align + block];
    let inv = kind_k_inverse();
    let mut out = vec![Vec::new(); n as usize];
    let mut off = 0u64;
    while off < len {
        let got = f.read_at(b, off).unwrap();
        if got == 0 {
            break;
        }
        for (i, p) in b[..got].chunks_exact(ps).enumerate() {
            let w = u64::from_ne_bytes(p[..8].try_into().unwrap());
            let page = (w ^ (tag << 48)).wrapping_mul(inv);
            if page < n && p.chunks_exact(8).all(|c| c == w.to_ne_bytes()) {
                out[page as usize].push(off / ps as u64 + i as u64);
            }
        }
        off += got as u64;
    }
    out
}

/// Runs of consecutive slots walking pages 0, 1, 2… (one slot chosen per page: the one that
/// continues the run if any, else the one a run starts from).
fn slot_extents(slots: &[Vec<u64>]) -> u64 {
    let mut n = 0;
    let mut prev: Option<u64> = None;
    for (i, s) in slots.iter().enumerate() {
        let next = slots.get(i + 1);
        let pick = match prev.and_then(|p| s.iter().copied().find(|&c| c == p + 1)) {
            Some(c) => c,
            None => {
                n += 1;
                s.iter()
                    .copied()
                    .find(|&c| next.is_some_and(|x| x.contains(&(c + 1))))
                    .or_else(|| s.first().copied())
                    .expect("a page not on swap")
            }
        };
        prev = Some(pick);
    }
    n
}

/// A child whose memfd of `n` pages (pattern `tag`) went to swap in a scattered order: paged
/// out, rewritten page by page in a scattered order, mapped by a second process, purged (with
/// its memory cgroup's reclaim) again. Returns the child (stopped), the memfd's address and the
/// second purge's report.
fn scattered_memfd(n: u64, tag: u64) -> (Kid, u64, PurgeReport) {
    let mut k = Kid::spawn("relayout");
    let m = k.cmd(&format!("MEMFD {n}"))[0];
    k.stop();
    purge(k.pid, &PurgeOptions::default());
    // Rewritten in a scattered order: the pages come back and enter the LRU in that order, so
    // the next reclaim writes them to slots in about that order (as PostgreSQL's
    // shared_buffers, touched at random, leave).
    k.cont();
    let order: Vec<String> = (0..n).map(|i| ((i * 1597 + 7) % n).to_string()).collect();
    k.cmd(&format!("RETAG memfd {tag} {}", order.join(" ")));
    // Mapped by two processes, as PostgreSQL's backends map its shared_buffers: the purge's
    // `MADV_PAGEOUT` leaves such pages alone, so the memory cgroup's reclaim writes them, in
    // LRU order.
    k.cmd("FORK 1");
    k.stop();
    // The cgroup is the child's own: its reclaim may take what its processes share.
    let rep = purge(
        k.pid,
        &PurgeOptions {
            reclaim_shared: true,
            ..Default::default()
        },
    );
    (k, m, rep)
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn shmem_relayout_writes_swapped_shmem_in_start_order() {
    require_swap();
    // 4096 pages of 16 MiB, written three times at most: 256 MiB is room enough.
    let swap = match OwnSwap::new("relayout", 256) {
        Ok(s) => s,
        Err(why) => {
            summary(&format!(
                "shmem relayout: SKIPPED, CANNOT RUN ON THIS HOST NOW: {why}"
            ));
            return;
        }
    };
    const N: u64 = 4096;
    // A tag no other test writes: its pages on swap are this test's.
    const TAG: u64 = 0x5e1a;
    let (mut k, m, rep) = scattered_memfd(N, TAG);
    let memfd = map_file_of(k.pid, m, N);
    assert_eq!(cached(&memfd, N), vec![], "the memfd is out");
    let before = slots_holding(&swap.0, TAG, N);
    assert!(
        before.iter().all(|s| s.len() == 1),
        "every page on swap once: {:?}",
        before
            .iter()
            .filter(|s| s.len() != 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    let ext_before = slot_extents(&before);
    let plan = ActivationPlan::compute(k.pid, &rep.snapshot.expect("snapshot"), None).unwrap();
    assert_eq!(plan.rest.pages().shmem, N);
    let r = procswap::shmlayout::relayout(&[plan], &Default::default());
    eprintln!("relayout: {r:?}");
    assert_eq!((r.objects, r.pages, r.not_read_pages), (1, N, 0));
    assert!(r.stopped.is_none() && r.skipped.is_empty(), "{r:?}");
    Memcg::of_pid(k.pid)
        .unwrap()
        .unwrap()
        .reclaim_all()
        .unwrap();
    assert_eq!(cached(&memfd, N), vec![], "the memfd is out again");
    let after = slots_holding(&swap.0, TAG, N);
    // Each page at its new slot, and maybe still at its old one (a freed slot keeps its
    // contents until it is written again).
    assert!(
        after.iter().all(|s| !s.is_empty()),
        "pages not on swap after the relayout: {:?}",
        (0..N)
            .filter(|&i| after[i as usize].is_empty())
            .take(5)
            .collect::<Vec<_>>()
    );
    let ext_after = slot_extents(&after);
    assert!(
        ext_before >= N / 8,
        "the scattered rewrite did not scatter the slots ({ext_before} extents for {N} pages): the test proves nothing"
    );
    // Consecutive slots in page order, a break at most every 2 MiB swap cluster.
    assert!(
        ext_after <= N / 512 + 1,
        "after the relayout {ext_after} extents for {N} pages"
    );
    k.cont();
    let v = k.cmd("VERIFY");
    assert_eq!(v.len(), 2, "the memfd reads back intact");
    // The child goes before its swap does (swapoff would read every page back).
    drop(k);
    drop(swap);
    summary(&format!(
        "shmem relayout: RAN and PASSED: {N} memfd pages written to swap in a scattered order: {ext_before} runs of \
         consecutive slots in page order; after the relayout {ext_after} ({:.3} s, reads {:.3} s)",
        r.seconds, r.read_seconds
    ));
}
