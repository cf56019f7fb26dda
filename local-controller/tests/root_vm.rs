//! torpord VM apps (`kind = "vm"`), root suite: a real QEMU (`-accel tcg -S`, no guest OS)
//! run by torpord, a fake guest agent on the agent socket (the test serves the guest-enlight
//! protocol with a known layout, free bitmap and priority map), real cgroups and swap.
//! Run through `local-controller/tests/run-root-tests.sh` (root, under with-swap.sh):
//!   cargo test -p local-controller --test root_vm -- --ignored --test-threads=1 --nocapture
//!
//! Guest RAM 64..128 MiB is filled with a random pattern through /proc/PID/mem (at the host
//! address torpord's mechanism translates to) and read back by QEMU itself (HMP `pmemsave`)
//! after every Start: the content must be unchanged whatever the mode, and the pages the fake
//! guest called free (96..112 MiB) must never be prefetched ahead (they come back on demand).
//! The `loading-set` rounds (the default mode) "touch" known guest pages through /proc/PID/mem
//! after `cont` (as guest accesses fault them in): the set recorded holds exactly the touched
//! pages that were on swap and none the guest called free, and the next Start fetches them.

mod common;
use common::torpord::{api_call, wait_for, Answer};

use guest_enlight::protocol::{
    encode_frame, read_frame, Request, Response, WireMap, DEFAULT_MAX_PAYLOAD,
};
use guest_enlight::{
    Category, FreeBitmap, MapInfo, MapSourceKind, PfnRange, PriorityMap, RamLayout,
};
use local_controller::client::request;
use procswap::vm::{GuestRam, Qmp};
use procswap::Range;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use torpor_api::{paths, AppState, AppStatus, StartAnswer, StopAnswer, VmStart};

const TORPORD: &str = env!("CARGO_BIN_EXE_torpord");
const TORPOR: &str = env!("CARGO_BIN_EXE_torpor");
const MIB: u64 = 1 << 20;
const PS: u64 = 4096;
/// Regions (guest-physical): Kernel, User_Data, free, Other.
const K: u64 = 64 * MIB;
const U: u64 = 80 * MIB;
const F: u64 = 96 * MIB;
const O: u64 = 112 * MIB;
const END: u64 = 128 * MIB;
const REGION_PAGES: u64 = 16 * MIB / PS;

fn api<T: DeserializeOwned + Debug>(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Answer<T>) {
    api_call(sock, method, path, body, Duration::from_secs(300))
}

/// The fake agent's maps: a pc guest with 512 MiB (System RAM 4 KiB..636 KiB and 1 MiB..512 MiB).
fn fake_maps() -> (RamLayout, FreeBitmap, PriorityMap) {
    let layout = RamLayout::new(vec![
        PfnRange {
            start: 1,
            count: 0x9e,
        },
        PfnRange {
            start: 0x100,
            count: 0x20000 - 0x100,
        },
    ])
    .unwrap();
    let info = MapInfo::now(
        MapSourceKind::PortableApprox,
        Duration::from_millis(1),
        16000,
    );
    let idx = |gpa: u64| layout.index_of(gpa / PS).unwrap();
    let mut free = FreeBitmap::new(layout.clone(), info);
    free.set_range(idx(F), REGION_PAGES);
    let mut pri = PriorityMap::new(layout.clone(), info);
    for i in 0..REGION_PAGES {
        pri.raise(idx(K) + i, Category::Kernel);
        pri.raise(idx(U) + i, Category::UserData);
    }
    (layout, free, pri)
}

/// Serve the agent protocol on `path` until `stop`; counts connections.
fn fake_agent(
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let l = UnixListener::bind(&path).unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let (layout, free, pri) = fake_maps();
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            conns.fetch_add(1, Ordering::Relaxed);
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            while let Ok(f) = read_frame(&mut s, DEFAULT_MAX_PAYLOAD) {
                let resp = match Request::decode(&f) {
                    Ok(Request::Hello { .. }) => Response::Hello {
                        version: 1,
                        agent: "fake-agent".into(),
                        page_size: 4096,
                        source: MapSourceKind::PortableApprox,
                    },
                    Ok(Request::Ping { nonce }) => Response::Pong { nonce },
                    Ok(Request::GetLayout) => Response::Layout {
                        page_size: 4096,
                        layout: layout.clone(),
                    },
                    Ok(Request::GetFreeBitmap) => {
                        Response::FreeBitmap(WireMap::from_free_bitmap(&free))
                    }
                    Ok(Request::GetPriorityMap { .. }) => {
                        Response::PriorityMap(WireMap::from_priority_map(&pri))
                    }
                    Err(e) => panic!("fake agent: {e}"),
                };
                if s.write_all(&encode_frame(&resp.to_frame(f.request_id)))
                    .is_err()
                {
                    break;
                }
            }
        }
    })
}

struct Fixture {
    dir: PathBuf,
    parent: String,
    sock: PathBuf,
    qmp: PathBuf,
    agent: PathBuf,
    daemon: Option<Child>,
    agent_stop: Arc<AtomicBool>,
    agent_conns: Arc<AtomicU64>,
    agent_thread: Option<std::thread::JoinHandle<()>>,
}

fn qemu_argv(qmp: &Path, mem: &str) -> Vec<String> {
    torpor_testsupport::qemu::bare_argv(mem, Some("pc"), qmp)
}

impl Fixture {
    fn new() -> Fixture {
        assert_eq!(
            nix::unistd::geteuid().as_raw(),
            0,
            "the root suite needs root"
        );
        assert!(
            torpor_testsupport::qemu::available(),
            "qemu-system-x86_64 is needed"
        );
        let parent = format!("torpor-vmtest-{}", std::process::id());
        let dir = std::env::temp_dir().join(&parent);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("torpord.sock");
        let qmp = dir.join("guest.qmp");
        let agent = dir.join("guest.agent");
        // The guest's agent and QMP budgets only catch a hang (the fake agent answers from a
        // thread of this test, QEMU runs under `nice` on a possibly loaded machine): every Stop
        // must get fresh maps. The agent-gone case fails at connect, whatever the budget.
        let toml = format!(
            "socket = {sock:?}\nstate_dir = {:?}\ncgroup_parent = {parent:?}\nreserve = \"128M\"\nsample_interval = \"200ms\"\n\n\
             [[app]]\nname = \"guest\"\nkind = \"vm\"\ncommand = {:?}\nvm = {{ qmp = {qmp:?}, agent = {agent:?}, agent_timeout = \"120s\", qmp_timeout = \"120s\" }}\n\n\
             [[app]]\nname = \"badqmp\"\nkind = \"vm\"\ncommand = {:?}\nvm = {{ qmp = {:?}, qmp_timeout = \"1s\" }}\nready_timeout = \"2s\"\n",
            dir.join("state"),
            qemu_argv(&qmp, "512"),
            qemu_argv(&dir.join("real.qmp"), "64"),
            dir.join("wrong.qmp"),
        );
        std::fs::write(dir.join("torpord.toml"), toml).unwrap();
        let agent_stop = Arc::new(AtomicBool::new(false));
        let agent_conns = Arc::new(AtomicU64::new(0));
        let agent_thread = Some(fake_agent(
            agent.clone(),
            agent_stop.clone(),
            agent_conns.clone(),
        ));
        let log = std::fs::File::create(dir.join("torpord.log")).unwrap();
        let daemon = Command::new(TORPORD)
            .arg("--config")
            .arg(dir.join("torpord.toml"))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let f = Fixture {
            dir,
            parent,
            sock,
            qmp,
            agent,
            daemon: Some(daemon),
            agent_stop,
            agent_conns,
            agent_thread,
        };
        wait_for("torpord's socket", Duration::from_secs(30), || {
            request(&f.sock, "GET", "/v1/health", None, Duration::from_secs(5))
                .map(|r| r.status == 200)
                .unwrap_or(false)
        });
        f
    }

    fn start(&self, name: &str, body: Option<&str>) -> (u16, Answer<StartAnswer>) {
        api(&self.sock, "POST", &paths::start(name), body)
    }

    fn stop(&self, name: &str) -> (u16, Answer<StopAnswer>) {
        api(&self.sock, "POST", &paths::stop(name), None)
    }

    fn status(&self, name: &str) -> AppStatus {
        let (s, v) = api(&self.sock, "GET", &paths::app(name), None);
        assert_eq!(s, 200, "{v:?}");
        v.unwrap()
    }

    fn stop_agent(&mut self) {
        self.agent_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.agent_thread.take() {
            h.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.agent);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("torpord.log")).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.agent_stop.store(true, Ordering::Relaxed);
        common::remove_app_cgroups(&common::cgroup_dirs(&self.parent));
        if std::thread::panicking() {
            eprintln!(
                "---- torpord log ({}) ----\n{}",
                self.dir.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    torpor_testsupport::pattern::pattern_bytes(0x9e37_79b9_7f4a_7c15, len)
}

fn qmp(f: &Fixture) -> Qmp {
    Qmp::connect_retry(
        &f.qmp,
        Duration::from_secs(10),
        Instant::now() + Duration::from_secs(20),
    )
    .expect("QMP")
}

/// QEMU reads guest RAM [K, END) by guest-physical address into a file.
fn pmemsave(f: &Fixture, tag: &str) -> Vec<u8> {
    let mut q = qmp(f);
    let out = f.dir.join(format!("pmem-{tag}"));
    let r = q
        .hmp(&format!(
            "pmemsave {K:#x} {:#x} \"{}\"",
            END - K,
            out.display()
        ))
        .unwrap();
    assert!(r.trim().is_empty(), "pmemsave: {r}");
    let mut b = Vec::new();
    std::fs::File::open(&out)
        .unwrap()
        .read_to_end(&mut b)
        .unwrap();
    std::fs::remove_file(&out).unwrap();
    b
}

fn region(ram: &GuestRam, a: u64, b: u64) -> Vec<Range> {
    vec![Range {
        start: ram.gpa_to_hva(a).unwrap(),
        len: b - a,
    }]
}

fn counts(pid: i32, ram: &GuestRam, a: u64, b: u64) -> procswap::vm::PageCounts {
    procswap::vm::page_counts(pid, &region(ram, a, b)).unwrap()
}

fn u(v: Option<u64>) -> u64 {
    v.unwrap_or_else(|| panic!("not a number: null"))
}

/// The started part of a Start's answer (not "already running").
fn started(v: &Answer<StartAnswer>) -> &torpor_api::Started {
    v.as_ref()
        .expect("Start failed")
        .started()
        .expect("a Start, not already running")
}

/// The guest under test: QEMU's pid, its RAM map, the pattern written to guest RAM [K, END).
struct Guest {
    pid: i32,
    ram: GuestRam,
    pat: Vec<u8>,
}

/// What was on swap in the free region before a Start, and in its untouched tail.
struct FreeBaseline {
    swapped: u64,
    tail_swapped: u64,
}

/// Cold start: QEMU spawned in its cgroup, QMP answers. Then guest RAM [64, 128) MiB is filled
/// through QEMU's memory at the translated addresses.
fn cold_start_and_fill(f: &Fixture) -> Guest {
    let (s, v) = f.start("guest", None);
    assert_eq!(s, 200, "{v:#?}");
    let st = started(&v);
    let Some(VmStart::Cold(cold)) = &st.vm else {
        panic!("not a VM cold start: {v:#?}")
    };
    assert_eq!((st.cold, cold.cold), (true, true), "{v:#?}");
    let pid = st.pid.unwrap();
    assert_eq!(cold.status, "prelaunch", "{v:#?}");

    let ram = {
        let mut q = qmp(f);
        GuestRam::discover(&mut q, pid).unwrap()
    };
    let pat = pattern((END - K) as usize);
    {
        let mut mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .unwrap();
        mem.seek(SeekFrom::Start(ram.gpa_to_hva(K).unwrap()))
            .unwrap();
        mem.write_all(&pat).unwrap();
    }
    assert!(
        pmemsave(f, "initial") == pat,
        "the pattern is not where the guest sees it"
    );
    Guest { pid, ram, pat }
}

/// Stop of round `round`: maps from the agent, QMP stop, freeze, purge, verified evicted.
fn stop_round(f: &Fixture, g: &Guest, round: usize) -> FreeBaseline {
    let (pid, ram) = (g.pid, &g.ram);
    let all = REGION_PAGES * 4;
    let (s, v) = f.stop("guest");
    assert_eq!(s, 200, "{v:#?}");
    let v = v.unwrap();
    let vm = v.vm().expect("a VM Stop");
    assert_eq!(v.state(), AppState::Standby, "{v:#?}");
    assert_eq!(vm.maps, "fresh", "{v:#?}");
    assert_eq!(
        u(vm.agent.as_ref().and_then(|a| a.free_pages)),
        REGION_PAGES,
        "{v:#?}"
    );
    assert_eq!(
        vm.status_after,
        if round == 0 { "prelaunch" } else { "paused" },
        "{v:#?}"
    );
    assert!(vm.evidence.evicted, "{v:#?}");
    // Once the firmware ran, PAM shadowing makes parts of 0xc0000-0xfffff RAM too: the flat
    // view (rediscovered at every Stop) grows by those pages.
    let gb = u(vm.guest_ram.as_ref().map(|g| g.bytes));
    assert!(gb >= ram.bytes() && gb <= ram.bytes() + 0x40000, "{v:#?}");
    let ev_after = &vm.evidence.after;
    assert!(u(ev_after.guest_swapped_pages) >= all, "{v:#?}");
    // procswap's purge is verified by its own figures; on a loaded host MADV_PAGEOUT can
    // leave a few pages (seen once: 140 of 16384), hence the 1 % of `evicted`.
    let c = counts(pid, ram, K, END);
    eprintln!("round {round}: pattern region after the purge: {c:?}");
    assert!(
        c.resident * 100 <= all && c.resident + c.swapped == all,
        "pattern region after the purge (round {round}): {c:?}"
    );
    // Baselines: what is on swap in the free region, and in its untouched tail.
    FreeBaseline {
        swapped: counts(pid, ram, F, O).swapped,
        tail_swapped: counts(pid, ram, F + 12 * MIB, O).swapped,
    }
}

/// Start of round `round` with the mode given per request, and what that mode fetched.
fn start_round(f: &Fixture, g: &Guest, round: usize, mode: &str, base: &FreeBaseline) {
    let all = REGION_PAGES * 4;
    let body = format!("{{\"prefetch\": \"{mode}\"}}");
    let (s, v) = f.start("guest", Some(&body));
    assert_eq!(s, 200, "{v:#?}");
    let st = started(&v);
    let vm = st
        .vm
        .as_ref()
        .and_then(VmStart::resume)
        .expect("a VM resume");
    eprintln!(
        "round {round} {mode}: prefetch {} ms, {} pages, skipped free {}, ready {} ms, pswpin +{} (+{} during prefetch)",
        vm.prefetch_ms, vm.prefetched_pages, vm.skipped_free_pages, vm.ready_ms, vm.pswpin_delta, vm.pswpin_delta_prefetch
    );
    if mode == "priority" {
        let c = &vm.classes;
        eprintln!(
            "  qemu own {} pages; single pass {}: plan+scans {} ms, fetch call {} ms; per class (ordered calls): qemu {} ms, class 0 {} ms, class 5 {} ms",
            vm.qemu_own_pages, vm.single_pass, vm.plan_ms, vm.fetch_call_ms, vm.qemu_own_ms, c[0].ms, c[5].ms
        );
    }
    assert_eq!(
        (vm.mode.as_str(), vm.effective.as_str()),
        (mode, mode),
        "{v:#?}"
    );
    assert_eq!(st.timing.prefetch_mode.as_deref(), Some(mode));
    let after = |a, b| counts(g.pid, &g.ram, a, b);
    match mode {
        "loading-set" => loading_set_start(f, g, round, &v, base),
        "priority" => {
            priority_classes_in(g, round, &v);
            background_rest(f, g, round, base);
        }
        "full" => {
            assert!(vm.prefetched_pages >= all * 99 / 100, "{v:#?}");
            assert_eq!(after(K, END).swapped, 0);
            assert!(vm.background.is_none());
        }
        _ => {
            assert_eq!(vm.prefetched_pages, 0, "{v:#?}");
            assert!(
                after(K, END).swapped >= all * 9 / 10,
                "none: demand paging only"
            );
        }
    }
    assert_eq!(f.status("guest").state, AppState::Running);
    // Whatever was fetched or skipped: the guest sees exactly what was written.
    assert!(
        pmemsave(f, mode) == g.pat,
        "round {round} ({mode}): guest RAM content changed"
    );
}

/// A priority Start: classes 0 and 5 fetched before `cont`, class 8 and the free pages not.
fn priority_classes_in(g: &Guest, round: usize, v: &Answer<StartAnswer>) {
    let vm = started(v)
        .vm
        .as_ref()
        .and_then(VmStart::resume)
        .expect("a VM resume");
    let after = |a, b| counts(g.pid, &g.ram, a, b);
    let cls = &vm.classes;
    assert_eq!(cls.len(), 10);
    let (s0, s5) = (cls[0].swapped_pages, cls[5].swapped_pages);
    assert!(
        s0 * 100 >= REGION_PAGES * 99 && s5 * 100 >= REGION_PAGES * 99,
        "{v:#?}"
    );
    assert_eq!(
        (cls[0].fetched_pages, cls[5].fetched_pages),
        (s0, s5),
        "{v:#?}"
    );
    assert_eq!(
        cls[8].fetched_pages, 0,
        "class 8 is left to the background: {v:#?}"
    );
    assert_eq!(vm.skipped_free_pages, REGION_PAGES, "{v:#?}");
    assert!(
        vm.pswpin_delta_prefetch >= (s0 + s5) * 9 / 10,
        "swap-in evidence: {v:#?}"
    );
    assert_eq!(after(K, F).swapped, 0, "classes 0 and 5 are in");
    // Second priority round: the "guest" faults every other page of [F, F+8 MiB) in (reads
    // through /proc/PID/mem fault swapped pages in, as guest accesses would): every 1024-page
    // segment inside that window passes 30 % and Twinkle fetches its other half.
    if round == 3 {
        let (pid, t) = (g.pid, Instant::now());
        let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
        let mut b = [0u8; 1];
        for p in (0..(8 * MIB / PS)).step_by(2) {
            mem.seek(SeekFrom::Start(g.ram.gpa_to_hva(F + p * PS).unwrap()))
                .unwrap();
            mem.read_exact(&mut b).unwrap();
        }
        eprintln!(
            "round 3: 1024 faults through /proc/{pid}/mem in {:.3} s",
            t.elapsed().as_secs_f64()
        );
    }
}

/// After a priority Start: the background fetcher takes the rest (class 8) but never the free
/// pages (round 3: Twinkle fetched the segments the faults triggered).
fn background_rest(f: &Fixture, g: &Guest, round: usize, base: &FreeBaseline) {
    let after = |a, b| counts(g.pid, &g.ram, a, b);
    let background = |st: &AppStatus| {
        st.vm
            .as_ref()
            .and_then(|v| v.background.clone())
            .expect("a background fetch in the status")
    };
    wait_for("the background fetch", Duration::from_secs(120), || {
        let st = f.status("guest");
        st.vm.and_then(|v| v.background).is_some_and(|b| !b.running)
    });
    let st = f.status("guest");
    let bg = background(&st);
    eprintln!("round {round} background: {bg:?}");
    assert_eq!(bg.ended.as_deref(), Some("finished"), "{st:#?}");
    assert!(bg.rest_pages * 100 >= REGION_PAGES * 99, "{st:#?}");
    // A loading-set Start's background reads without mapping (the recorder must see only the
    // guest's touches): pagemap still shows those pages' swap entries.
    if round < 4 {
        assert_eq!(
            after(O, END).swapped,
            0,
            "class 8 fetched in the background"
        );
    }
    if round >= 4 {
        // The later part (the workload's 384 pages and QEMU's own), then classes 0 and 5
        // whole. Its reads map nothing (pagemap still shows their swap entries), so what it
        // fetched is seen in its figures, and the free pages' exclusion in the set itself
        // (loading_set_start).
        assert!(bg.preload_pages >= 2 * REGION_PAGES + 128, "{st:#?}");
        return;
    }
    if round == 3 {
        assert!(bg.segments_triggered >= 1, "{st:#?}");
        assert!(bg.twinkle_pages >= 500, "{st:#?}");
        let win = after(F, F + 8 * MIB);
        assert!(
            win.swapped <= 512,
            "Twinkle fetched the triggered segments: {win:?}"
        );
        // The untouched tail stays on swap unless a segment there was triggered by faults
        // this test does not make (seen once in ~8 runs: a 4th segment, fully outside the
        // touched window, was faulted in while the VM ran): the rest phase itself never
        // fetches free pages.
        let tail = after(F + 12 * MIB, O).swapped;
        let f_tail_swapped = base.tail_swapped;
        assert!(
            tail == f_tail_swapped || bg.segments_triggered > 3,
            "untouched free pages stay on swap: {tail} of {f_tail_swapped}: {st:#?}"
        );
    } else {
        // This round makes no faults of its own, but the guest runs while the background
        // fetch does: its own faults can pass a segment's 30 % before the fetch gets there
        // (none on a quiet machine; 4 segments seen twice at load ~11, when the fetch is
        // slower), and a triggered segment is fetched whole. So the free pages stay on swap
        // unless a segment was triggered (as round 3 allows for its tail).
        let free_swapped = after(F, O).swapped;
        eprintln!(
            "round {round}: {} segments triggered by the guest's own faults",
            bg.segments_triggered
        );
        assert!(
            free_swapped == base.swapped || bg.segments_triggered > 0,
            "free pages must not be prefetched: {free_swapped} of {} on swap: {st:#?}",
            base.swapped
        );
    }
}

/// The guest workload of a `loading-set` round, after `cont`: every 4th page of
/// [U, U+4 MiB) (User_Data), every 8th of [O, O+4 MiB) (Other) and every 4th of [F, F+1 MiB)
/// (free) read through /proc/PID/mem. Returns the touched pages outside the free region.
fn touch_workload(g: &Guest) -> u64 {
    let mut mem = std::fs::File::open(format!("/proc/{}/mem", g.pid)).unwrap();
    let mut b = [0u8; 1];
    let mut n = 0;
    for (base, len, step) in [(U, 4 * MIB, 4), (O, 4 * MIB, 8), (F, MIB, 4)] {
        for p in (0..len / PS).step_by(step) {
            mem.seek(SeekFrom::Start(g.ram.gpa_to_hva(base + p * PS).unwrap()))
                .unwrap();
            mem.read_exact(&mut b).unwrap();
            n += u64::from(base != F);
        }
    }
    n
}

/// The saved loading set of the guest: its anonymous pages in guest RAM [a, b), and in all.
fn set_pages(f: &Fixture, g: &Guest, a: u64, b: u64) -> (u64, procswap::LoadingSet) {
    let path = f
        .dir
        .join("state/loading-set/guest")
        .join(format!("{}.json", g.pid));
    let procswap::Loaded::Set(set) = procswap::LoadingSet::load(&path).unwrap() else {
        panic!("no loading set at {}", path.display())
    };
    let (lo, hi) = (
        g.ram.gpa_to_hva(a).unwrap() / PS,
        g.ram.gpa_to_hva(b - PS).unwrap() / PS + 1,
    );
    let n = set
        .runs
        .iter()
        .filter(|r| r.kind == procswap::MemKind::Anon)
        .map(|r| r.first.max(lo).min(hi)..(r.first + r.count).max(lo).min(hi))
        .map(|x| x.end - x.start)
        .sum();
    (n, *set)
}

/// A `loading-set` Start. Round 4 (no set yet): nothing read before `cont`, recording; the
/// workload runs. Round 5: the set the Stop merged holds exactly the workload's non-free pages
/// in the pattern region; this Start reports it and the background fetches it, never a free
/// page.
fn loading_set_start(
    f: &Fixture,
    g: &Guest,
    round: usize,
    v: &Answer<StartAnswer>,
    base: &FreeBaseline,
) {
    let vm = started(v)
        .vm
        .as_ref()
        .and_then(VmStart::resume)
        .expect("a VM resume");
    let ls = vm.loading_set.as_ref().expect("a loading-set report");
    assert!(ls.recording, "{v:#?}");
    if round == 4 {
        assert_eq!((ls.cycles, vm.prefetched_pages), (0, 0), "{v:#?}");
        let touched = touch_workload(g);
        assert_eq!(touched, 256 + 128);
        // Its stop rule (1 s without a new page) ends the recording before the content check
        // below (QEMU reading all of [K, END) would be touches too).
        wait_for("the recorder's stop rule", Duration::from_secs(120), || {
            f.status("guest").vm.is_some_and(|v| !v.recording)
        });
        return;
    }
    let (in_region, set) = set_pages(f, g, K, END);
    assert_eq!(in_region, 256 + 128, "exactly the touched pages: {set:?}");
    assert_eq!(set_pages(f, g, F, O).0, 0, "no page the guest called free");
    assert_eq!(set.cycles, 1);
    // The Start's anonymous parts are the set's (its file runs, QEMU's own file pages, are
    // fetched by a plan of their own: `first_file_pages`); the Stop computed them.
    let anon = |first_response: bool| -> u64 {
        set.runs
            .iter()
            .filter(|r| r.kind == procswap::MemKind::Anon && r.first_response == first_response)
            .map(|r| r.count)
            .sum()
    };
    assert_eq!(
        (ls.cycles, ls.first_pages, ls.later_pages),
        (1, anon(true), anon(false)),
        "{v:#?}"
    );
    assert!(ls.first_cow_pages <= ls.first_pages, "{v:#?}");
    background_rest(f, g, round, base);
}

/// Bad requests: a process-only mode, an unknown mode, not JSON, an unknown field.
fn bad_start_requests(f: &Fixture) {
    for body in [
        r#"{"prefetch": "working-set-only"}"#,
        r#"{"prefetch": "most"}"#,
        "prefetch=none",
        r#"{"prefetch": "none", "x": 1}"#,
    ] {
        let (s, v) = f.start("guest", Some(body));
        assert_eq!(
            (s, v.as_ref().err().map(|e| e.code.as_str())),
            (400, Some("bad_request")),
            "{body}: {v:#?}"
        );
    }
}

/// The CLI: torpor stop / start --prefetch none --json, and a mode it refuses.
fn cli_stop_and_start(f: &Fixture) {
    let out = Command::new(TORPOR)
        .args(["--socket"])
        .arg(&f.sock)
        .args(["stop", "guest"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("guest RAM resident"), "{text}");
    let out = Command::new(TORPOR)
        .args(["--json", "--socket"])
        .arg(&f.sock)
        .args(["start", "guest", "--prefetch", "none"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: StartAnswer = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v.started().and_then(|s| s.vm.as_ref()).map(VmStart::mode),
        Some("none"),
        "{v:#?}"
    );
    let bad = Command::new(TORPOR)
        .args(["--socket"])
        .arg(&f.sock)
        .args(["start", "guest", "--prefetch", "sometimes"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// Agent gone: Stop proceeds without maps (and says why); the default (loading-set) then runs
/// as full.
fn agent_gone(f: &mut Fixture, g: &Guest) {
    let conns = f.agent_conns.load(Ordering::Relaxed);
    assert!(conns >= 5, "agent connections {conns}");
    f.stop_agent();
    let (s, v) = f.stop("guest");
    assert_eq!(s, 200, "{v:#?}");
    let vm = v.as_ref().unwrap().vm().expect("a VM Stop");
    assert_eq!(vm.maps, "none", "{v:#?}");
    assert!(vm.agent_note.contains("cannot connect"), "{v:#?}");
    assert!(vm.evidence.evicted, "{v:#?}");
    let (s, v) = f.start("guest", None);
    assert_eq!(s, 200, "{v:#?}");
    let vm = started(&v).vm.as_ref().and_then(VmStart::resume);
    assert_eq!(
        vm.map(|r| (r.mode.as_str(), r.effective.as_str())),
        Some(("loading-set", "full")),
        "{v:#?}"
    );
    assert_eq!(counts(g.pid, &g.ram, K, END).swapped, 0);
    assert!(
        pmemsave(f, "noagent") == g.pat,
        "guest RAM content changed (no agent)"
    );
}

#[test]
#[ignore = "root: run through local-controller/tests/run-root-tests.sh"]
fn vm_app_stop_purge_start_each_mode_content_unchanged() {
    let mut f = Fixture::new();
    let g = cold_start_and_fill(&f);
    let modes = [
        "priority",
        "full",
        "none",
        "priority",
        "loading-set",
        "loading-set",
    ];
    for (round, mode) in modes.into_iter().enumerate() {
        let base = stop_round(&f, &g, round);
        start_round(&f, &g, round, mode, &base);
    }
    bad_start_requests(&f);
    cli_stop_and_start(&f);
    agent_gone(&mut f, &g);

    // QMP socket missing: a clear start failure naming it.
    let (s, v) = f.start("badqmp", None);
    assert!(s == 503 || s == 500, "{s} {v:#?}");
    let msg = v.as_ref().unwrap_err().message.as_str();
    assert!(msg.contains("wrong.qmp") && msg.contains("QMP"), "{msg}");
}
