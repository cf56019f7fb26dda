//! The e2e measurement: Stop (purge) → verify memory freed → Start with a prefetch mode →
//! time to first HTTP response and bytes read from swap → `/verify` in the guest; modes
//! interleaved (none = demand paging, full, priority).
//!
//! Two drivers: `torpord` (the real path: torpord's `kind = "vm"` app, Start/Stop over its
//! API) and `direct` (the fallback: QMP stop/cont + the `torpor` CLI's freeze/purge/prefetch/
//! thaw on the QEMU pid; priority = the agent's classes 0-5 minus free pages as a
//! working-set-only prefetch).

use crate::guest::{Guest, GuestEnv};
use crate::{http, mem, qmp, stats, torpord};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use torpor_api as api;

/// The modes compared, rotated per trial: `warm` (QMP stop and cont, never purged: the
/// lower bound), `none` (demand paging), `full`, `priority`, `loading-set` (torpord's default).
pub const MODES: [&str; 5] = ["warm", "none", "full", "priority", "loading-set"];

/// The modes a driver runs (`direct` has no loading set: torpord keeps it).
fn modes_of(driver: &str) -> Vec<&'static str> {
    MODES
        .into_iter()
        .filter(|m| driver == "torpord" || *m != "loading-set")
        .collect()
}
/// torpord's `cgroup_parent` for the e2e guest.
const CGROUP_PARENT: &str = "torpor-e2e";

pub struct Opts {
    pub trials: usize,
    pub out_dir: PathBuf,
    pub guest_sh: PathBuf,
    pub driver: String,
    pub torpord_bin: PathBuf,
    pub torpor_bin: PathBuf,
    pub boot_timeout: Duration,
}

/// Swap-read counters at one instant.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counters {
    pub pswpin: u64,
    pub dev_read_sectors: u64,
}

fn counters(swap_dev: &Option<String>) -> Counters {
    Counters {
        pswpin: mem::vmstat("pswpin").unwrap_or(0),
        dev_read_sectors: swap_dev
            .as_deref()
            .and_then(|d| mem::dev_read_sectors(d).ok())
            .unwrap_or(0),
    }
}

/// Evidence that the guest's memory is out of RAM after a Stop.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Evidence {
    pub ram_present_pages: u64,
    /// Present but mapping the shared zero page (no memory; page-out leaves them).
    pub ram_zero_pages: u64,
    pub ram_swapped_pages: u64,
    pub ram_untouched_pages: u64,
    pub qemu_rss_bytes: u64,
    pub qemu_swap_bytes: u64,
    /// Host-wide `SwapCached` (every process's pages: reported, not judged).
    pub swap_cached_bytes: u64,
    /// QEMU's memory cgroup's `swapcached` (its own pages only), where the kernel reports it.
    pub memcg_swap_cached_bytes: Option<u64>,
}

fn evidence(pid: i32, ram: &mem::Vma) -> Result<Evidence> {
    let pc = mem::page_counts(pid, ram.start, ram.end)?;
    Ok(Evidence {
        ram_present_pages: pc.present,
        ram_zero_pages: pc.zero,
        ram_swapped_pages: pc.swapped,
        ram_untouched_pages: pc.none,
        qemu_rss_bytes: mem::status_bytes(pid, "VmRSS")?,
        qemu_swap_bytes: mem::status_bytes(pid, "VmSwap")?,
        swap_cached_bytes: mem::meminfo_bytes("SwapCached")?,
        memcg_swap_cached_bytes: mem::memcg_swap_cached_bytes(pid)?,
    })
}

/// One Stop → Start → verify cycle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Trial {
    pub trial: usize,
    pub mode: String,
    pub driver: String,
    pub before_stop: Evidence,
    pub after_stop: Evidence,
    pub stop_s: f64,
    pub freed_ok: bool,
    pub freed_note: String,
    pub first_response_s: f64,
    pub start_return_s: f64,
    pub swapin_bytes_to_first_response: u64,
    pub swapin_bytes_to_start_return: u64,
    pub dev_read_bytes_to_first_response: u64,
    pub ram_present_pages_at_first_response: u64,
    /// From Start issued until the app's `/verify` (which reads all 192 MiB) answered.
    pub app_all_data_s: f64,
    pub verify_app: String,
    pub verify_checksum: String,
    pub verify_ok: bool,
    /// torpord's own account: effective mode, bytes prefetched before `cont`, whether the
    /// guest maps were fresh, whether its evidence says the guest was evicted.
    pub effective_mode: String,
    pub prefetched_bytes: u64,
    pub maps: String,
    pub torpord_evicted: Option<bool>,
    /// `loading-set`: the set this Start worked from (cycles merged, pages before `cont`).
    pub loading_set: Option<api::VmLoadingSet>,
    pub torpord_start: Value,
    pub torpord_stop: Value,
    pub error: String,
}

enum Driver {
    Torpord {
        sock: PathBuf,
        child: Child,
        pid: i32,
    },
    Direct {
        guest: Guest,
        torpor: PathBuf,
        ws_file: PathBuf,
        cgroup: PathBuf,
    },
}

fn run_cmd(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("run {argv:?}"))?;
    if !out.status.success() {
        bail!(
            "{argv:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// POST to torpord (a Stop or Start may take minutes under TCG); anything but 200 is an error
/// named `what`.
fn post_ok(sock: &Path, path: &str, body: Option<&Value>, what: &str) -> Result<Value> {
    let (st, v) = torpord::call(sock, "POST", path, body, Duration::from_secs(900))?;
    if st != 200 {
        bail!("{what}: {st} {v}");
    }
    Ok(v)
}

/// POST to torpord, the answer as written and typed.
fn post_typed<T: serde::de::DeserializeOwned>(
    sock: &Path,
    path: &str,
    body: Option<&Value>,
    what: &str,
) -> Result<(Value, Option<T>)> {
    let v = post_ok(sock, path, body, what)?;
    let t = serde_json::from_value(v.clone())?;
    Ok((v, Some(t)))
}

/// The body of a Start with this prefetch mode.
fn start_body(mode: &str) -> Value {
    serde_json::to_value(api::StartRequest {
        prefetch: Some(mode.to_string()),
    })
    .unwrap_or(Value::Null)
}

impl Driver {
    fn pid(&self) -> i32 {
        match self {
            Driver::Torpord { pid, .. } => *pid,
            Driver::Direct { guest, .. } => guest.pid(),
        }
    }

    fn app_status(sock: &Path) -> Result<api::AppStatus> {
        let (st, v) = torpord::call(sock, "GET", "/v1/apps/guest", None, Duration::from_secs(30))?;
        if st != 200 {
            bail!("GET /v1/apps/guest: {st} {v}");
        }
        Ok(serde_json::from_value(v)?)
    }

    /// Stop: the answer as written, and torpord's typed answer (torpord driver).
    fn stop(&mut self, env: &GuestEnv, ram: &mem::Vma) -> Result<(Value, Option<api::StopAnswer>)> {
        match self {
            Driver::Torpord { sock, .. } => post_typed(sock, "/v1/apps/guest/stop", None, "stop"),
            Driver::Direct {
                guest,
                torpor,
                ws_file,
                ..
            } => {
                let pid = guest.pid();
                // The agent's maps, while the guest runs (as torpord does at Stop).
                let ws = priority_ws(env, pid, ram).map_err(|e| anyhow!("agent maps: {e:#}"))?;
                std::fs::write(&*ws_file, serde_json::to_vec(&ws.0)?)?;
                let mut q = qmp::Qmp::connect(&env.qmp_path(), Duration::from_secs(60))?;
                q.execute("stop", None)?;
                drop(q);
                let p = pid.to_string();
                let t = torpor.display().to_string();
                run_cmd(&[&t, "freeze", "--method", "signal", &p])?;
                let purge = run_cmd(&[&t, "--json", "purge", &p])?;
                Ok((
                    json!({ "purge": serde_json::from_str::<Value>(&purge).unwrap_or(Value::Null), "priority_ws_pages": ws.1 }),
                    None,
                ))
            }
        }
    }

    /// Start: the answer as written, and torpord's typed answer (torpord driver).
    fn start(&mut self, env: &GuestEnv, mode: &str) -> Result<(Value, Option<api::StartAnswer>)> {
        match self {
            Driver::Torpord { sock, .. } => post_typed(
                sock,
                "/v1/apps/guest/start",
                Some(&start_body(mode)),
                &format!("start --prefetch {mode}"),
            ),
            Driver::Direct {
                guest,
                torpor,
                ws_file,
                ..
            } => {
                let p = guest.pid().to_string();
                let t = torpor.display().to_string();
                let ws = ws_file.display().to_string();
                let pre = match mode {
                    "none" => Value::Null,
                    "full" => serde_json::from_str(&run_cmd(&[&t, "--json", "prefetch", &p])?)
                        .unwrap_or(Value::Null),
                    "priority" => serde_json::from_str(&run_cmd(&[
                        &t,
                        "--json",
                        "prefetch",
                        &p,
                        "--working-set",
                        &ws,
                        "--working-set-only",
                    ])?)
                    .unwrap_or(Value::Null),
                    m => bail!("unknown mode {m}"),
                };
                run_cmd(&[&t, "thaw", "--method", "signal", &p])?;
                let mut q = qmp::Qmp::connect(&env.qmp_path(), Duration::from_secs(60))?;
                q.execute("cont", None)?;
                Ok((json!({ "prefetch": pre }), None))
            }
        }
    }

    fn shutdown(self, env: &GuestEnv) -> Result<()> {
        match self {
            Driver::Torpord {
                sock,
                mut child,
                pid,
            } => {
                // Leave the guest running, quit it, then stop torpord (SIGTERM leaves apps alone).
                let st = Self::app_status(&sock).ok();
                if st.map(|s| s.state) != Some(api::AppState::Running) {
                    let _ = torpord::call(
                        &sock,
                        "POST",
                        "/v1/apps/guest/start",
                        Some(&start_body("none")),
                        Duration::from_secs(300),
                    );
                }
                if let Ok(mut q) = qmp::Qmp::connect(&env.qmp_path(), Duration::from_secs(10)) {
                    let _ = q.execute("quit", None);
                }
                std::thread::sleep(Duration::from_secs(2));
                // SAFETY: kill(2) on the QEMU pid torpord reported; harmless if it already exited.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // SAFETY: kill(2) on our own child torpord.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let _ = child.wait();
                // torpord leaves app cgroups behind by design; remove ours once QEMU is gone.
                let t = Instant::now();
                while Path::new(&format!("/proc/{pid}")).exists()
                    && t.elapsed() < Duration::from_secs(10)
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                for base in [
                    "/sys/fs/cgroup/unified",
                    "/sys/fs/cgroup/memory",
                    "/sys/fs/cgroup/freezer",
                    "/sys/fs/cgroup",
                ] {
                    let _ = std::fs::remove_dir(Path::new(base).join(CGROUP_PARENT).join("guest"));
                    let _ = std::fs::remove_dir(Path::new(base).join(CGROUP_PARENT));
                }
                Ok(())
            }
            Driver::Direct {
                guest,
                torpor,
                cgroup,
                ..
            } => {
                let _ = run_cmd(&[
                    &torpor.display().to_string(),
                    "thaw",
                    "--method",
                    "signal",
                    &guest.pid().to_string(),
                ]);
                let r = guest.shutdown(Duration::from_secs(30));
                let _ = std::fs::remove_dir(&cgroup);
                r
            }
        }
    }
}

/// The agent's priority classes 0-5 minus free pages, as host-virtual ranges of guest RAM
/// (a procswap working set). Guest-physical = host offset in the RAM block: true for a
/// `pc` guest with RAM below the PCI hole (checked: the layout ends within the mapping).
fn priority_ws(env: &GuestEnv, pid: i32, ram: &mem::Vma) -> Result<(Value, u64)> {
    let s = std::os::unix::net::UnixStream::connect(env.agent_path())?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut c = guest_enlight::protocol::Client::new(s);
    c.hello("torpor-vm-e2e direct")?;
    let free = c.free_bitmap()?;
    let prio = c.priority_map(0)?;
    let total = prio.layout.total_pages();
    let f = free.runs.expand(total).context("free bitmap")?;
    let p = prio.runs.expand(total).context("priority map")?;
    let mut regions: Vec<Value> = Vec::new();
    let mut pages = 0u64;
    let mut idx = 0usize;
    for r in &prio.layout.ranges {
        if r.end() * 4096 > ram.len() {
            bail!(
                "guest RAM range {r:?} beyond the {} MiB mapping",
                ram.len() >> 20
            );
        }
        let mut run: Option<(u64, u64)> = None;
        for pfn in r.start..r.end() {
            let want = p[idx] <= 5 && f.get(idx).copied() != Some(1);
            idx += 1;
            if want {
                pages += 1;
                run = match run {
                    Some((s, n)) if s + n == pfn => Some((s, n + 1)),
                    Some((s, n)) => {
                        regions.push(json!({ "start": ram.start + s * 4096, "len": n * 4096 }));
                        Some((pfn, 1))
                    }
                    None => Some((pfn, 1)),
                };
            }
        }
        if let Some((s, n)) = run {
            regions.push(json!({ "start": ram.start + s * 4096, "len": n * 4096 }));
        }
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok((
        json!({ "format_version": 1, "pid": pid, "comm": "qemu-system-x86", "method": "external", "recorded_at": now,
                "duration_ms": 0, "page_size": 4096, "regions": regions }),
        pages,
    ))
}

/// A fresh memory cgroup for the direct driver's QEMU (cgroup v2 with the memory
/// controller, else v1 memory).
fn direct_memcg() -> Result<PathBuf> {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
    let base =
        if std::fs::read_to_string(v2).is_ok_and(|c| c.split_whitespace().any(|x| x == "memory")) {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/memory")
        };
    let cg = base.join(format!("torpor-e2e-direct-{}", std::process::id()));
    std::fs::create_dir_all(&cg).with_context(|| format!("mkdir {}", cg.display()))?;
    Ok(cg)
}

fn guest_ram(pid: i32, env: &GuestEnv) -> Result<mem::Vma> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("maps of {pid}"))?;
    mem::find_guest_ram(&mem::parse_maps(&maps), env.mem_bytes())
}

fn verify_one(addr: std::net::SocketAddr) -> (bool, String) {
    match http::get(addr, "/verify", Duration::from_secs(300)) {
        Ok(r) if r.status == 200 && r.body.starts_with("ok") => (true, r.body.trim().to_string()),
        Ok(r) => (false, format!("{} {}", r.status, r.body.trim())),
        Err(e) => (false, format!("{e:#}")),
    }
}

fn verify(env: &GuestEnv) -> (bool, String, String) {
    let (a_ok, a) = verify_one(env.app_addr());
    let (c_ok, c) = verify_one(env.check_addr());
    (a_ok && c_ok, a, c)
}

fn preflight() -> Result<Option<String>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the e2e bench must run as root (cgroups, purge, pagemap swap bits)");
    }
    let swaps = mem::swap_devices()?;
    if swaps.is_empty() {
        bail!("no swap is active: run under procswap/tests/with-swap.sh (make vm-e2e does)");
    }
    let free = mem::meminfo_bytes("SwapFree")?;
    if free < 1 << 30 {
        bail!("only {} MiB of swap free; need 1 GiB", free >> 20);
    }
    Ok(swaps.last().map(|s| s.1.clone()))
}

fn wait_state(sock: &Path, want: &[api::AppState], timeout: Duration) -> Result<api::AppStatus> {
    let t = Instant::now();
    let mut last = None;
    while t.elapsed() < timeout {
        if let Ok(v) = Driver::app_status(sock) {
            if want.contains(&v.state) && !v.busy {
                return Ok(v);
            }
            last = Some(v);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("app not in {want:?} after {timeout:?}: {last:?}")
}

pub fn run(env: &GuestEnv, o: &Opts) -> Result<()> {
    let swap_dev = preflight()?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = chrono_like_now();
    println!(
        "bench: driver {}, {} trials per mode, swap device {:?}",
        o.driver,
        o.trials,
        swap_dev.as_deref().map(mem::dev_name)
    );
    let mut driver = match o.driver.as_str() {
        "torpord" => start_torpord(env, o)?,
        "direct" => start_direct(env, o)?,
        d => bail!("unknown driver {d}"),
    };
    let pid = driver.pid();
    let ram = guest_ram(pid, env)?;
    println!(
        "bench: guest RAM at {:#x}, {} MiB",
        ram.start,
        ram.len() >> 20
    );

    warm_up(&mut driver, env, &ram)?;

    let (trials, mut failures) = run_trials(&mut driver, env, o, &ram, &swap_dev);
    // The idle process was never touched since boot: its data crossed every Stop/Start.
    let (idle_ok, idle) = verify_one(env.idle_addr());
    println!(
        "{} idle process ({} MiB, untouched across all trials) GET /verify: {idle}",
        if idle_ok { "PASS" } else { "FAIL" },
        env.idle_mib
    );
    if !idle_ok {
        failures += 1;
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let module = std::fs::read_to_string(env.console_path())
        .map(|s| s.contains("torpor.ko loaded"))
        .unwrap_or(false);
    let _ = driver.shutdown(env);
    let written = write_results(
        env,
        o,
        &trials,
        &started,
        load_before.trim(),
        load_after.trim(),
        swap_dev.as_deref(),
        module,
        &if idle_ok {
            idle.clone()
        } else {
            format!("BAD {idle}")
        },
    )?;
    for w in &written {
        println!("bench: wrote {}", w.display());
    }
    let want = o.trials * modes_of(&o.driver).len();
    if failures > 0 || trials.len() < want {
        bail!("{failures} failed trial(s), {} of {want} run", trials.len());
    }
    println!("bench: all {want} trials passed");
    Ok(())
}

/// torpord as the driver: its config checked, the daemon spawned, the prestarted guest waited for.
fn start_torpord(env: &GuestEnv, o: &Opts) -> Result<Driver> {
    let sock = env.dir.join("torpord.sock");
    let state = env.dir.join("torpord-state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let cfg_path = env.dir.join("torpord.toml");
    std::fs::write(
        &cfg_path,
        torpord::config(
            env,
            &env.launch_argv(&o.guest_sh),
            &state,
            &sock,
            CGROUP_PARENT,
        ),
    )?;
    let check = Command::new(&o.torpord_bin)
        .args(["--check", "--config"])
        .arg(&cfg_path)
        .output()?;
    if !check.status.success() {
        bail!(
            "torpord --check {}: {}",
            cfg_path.display(),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let log = std::fs::File::create(env.dir.join("torpord.log"))?;
    let child = Command::new(&o.torpord_bin)
        .arg("--config")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn torpord")?;
    println!(
        "bench: torpord pid {} (log {}), waiting for the prestarted guest (boot + Stop)",
        child.id(),
        env.dir.join("torpord.log").display()
    );
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = wait_state(
        &sock,
        &[
            api::AppState::Standby,
            api::AppState::Running,
            api::AppState::Suspended,
        ],
        o.boot_timeout + Duration::from_secs(300),
    )?;
    let pid = st.pid.context("no pid in the app status")?;
    println!(
        "bench: guest QEMU pid {pid}, state \"{}\" after {:.0} s",
        st.state,
        t.elapsed().as_secs_f64()
    );
    Ok(Driver::Torpord { sock, child, pid })
}

/// The direct driver: QEMU launched in a memory cgroup of its own, its web app waited for.
fn start_direct(env: &GuestEnv, o: &Opts) -> Result<Driver> {
    // QEMU gets its own memory cgroup so the purge's memcg reclaim touches nothing else.
    let cg = direct_memcg()?;
    let guest = Guest::launch_in(env, &o.guest_sh, Some(&cg))?;
    let t0 = Instant::now();
    http::poll_ok(
        env.app_addr(),
        "/",
        t0 + o.boot_timeout,
        Duration::from_millis(250),
    )
    .map_err(|e| anyhow!("{e:#}\n{}", env.diagnostics(20)))?;
    println!(
        "bench: guest up after {:.0} s (direct driver, QEMU pid {})",
        t0.elapsed().as_secs_f64(),
        guest.pid()
    );
    Ok(Driver::Direct {
        guest,
        torpor: o.torpor_bin.clone(),
        ws_file: env.dir.join("priority-ws.json"),
        cgroup: cg,
    })
}

/// Warm-up (not measured): the guest running and intact, then out of the activity window.
fn warm_up(driver: &mut Driver, env: &GuestEnv, ram: &mem::Vma) -> Result<()> {
    if let Driver::Torpord { sock, .. } = &*driver {
        let st = Driver::app_status(sock)?;
        if st.state != api::AppState::Running {
            let (v, _) = driver.start(env, "full").context("warm-up start")?;
            println!(
                "bench: warm-up Start (full): {}",
                v.get("timing").unwrap_or(&Value::Null)
            );
        }
        // One loading-set cycle, so that the first measured loading-set Start has a set (the
        // next torpord Stop merges what this one records: GET /, then /verify).
        driver.stop(env, ram).context("warm-up stop")?;
        driver
            .start(env, "loading-set")
            .context("warm-up loading-set start")?;
        http::poll_ok(
            env.app_addr(),
            "/",
            Instant::now() + Duration::from_secs(600),
            Duration::from_millis(10),
        )?;
        println!("bench: warm-up loading-set cycle (recorded for the first measured one)");
    }
    let (ok, a, c) = verify(env);
    if !ok {
        bail!("warm-up verify failed: app {a}, checksum {c}");
    }
    // The idle process must be older than the agent's 16 s activity window at the first
    // measured Stop, so the priority map classes its memory as an inactive process's.
    println!(
        "bench: warm-up ok; waiting 17 s so the idle guest process is outside the activity window"
    );
    std::thread::sleep(Duration::from_secs(17));
    Ok(())
}

/// Every mode `o.trials` times, rotated; the trials and how many failed. Stops after a
/// Stop/Start that failed outright.
fn run_trials(
    driver: &mut Driver,
    env: &GuestEnv,
    o: &Opts,
    ram: &mem::Vma,
    swap_dev: &Option<String>,
) -> (Vec<Trial>, usize) {
    let mut trials: Vec<Trial> = Vec::new();
    let mut failures = 0;
    let modes = modes_of(&o.driver);
    for t in 0..o.trials {
        for k in 0..modes.len() {
            let mode = modes[(t + k) % modes.len()];
            let mut tr = Trial {
                trial: t,
                mode: mode.into(),
                driver: o.driver.clone(),
                ..Default::default()
            };
            if let Err(e) = one_trial(driver, env, ram, swap_dev, &mut tr) {
                tr.error = format!("{e:#}");
            }
            let ok = tr.error.is_empty() && tr.freed_ok && tr.verify_ok;
            if !ok {
                failures += 1;
            }
            println!(
                "{} trial {t} {mode:<8} first response {:.3} s, Start returned {:.3} s, swap-in {:.1} MiB (dev {:.1} MiB), freed {} ({}), verify {}{}",
                if ok { "PASS" } else { "FAIL" },
                tr.first_response_s,
                tr.start_return_s,
                tr.swapin_bytes_to_first_response as f64 / 1048576.0,
                tr.dev_read_bytes_to_first_response as f64 / 1048576.0,
                tr.freed_ok,
                tr.freed_note,
                if tr.verify_ok { "ok" } else { "BAD" },
                if tr.error.is_empty() { String::new() } else { format!(", error: {}", tr.error) }
            );
            let fatal = !tr.error.is_empty() && tr.first_response_s == 0.0;
            trials.push(tr);
            if fatal {
                break;
            }
        }
        if trials
            .last()
            .is_some_and(|t| !t.error.is_empty() && t.first_response_s == 0.0)
        {
            println!("bench: stopping after a failed Stop/Start");
            break;
        }
    }
    (trials, failures)
}

/// `warm`: QMP `stop` or `cont` alone (the guest paused, nothing frozen or purged).
fn qmp_pause(env: &GuestEnv, cmd: &str) -> Result<Value> {
    let mut q = qmp::Qmp::connect(&env.qmp_path(), Duration::from_secs(60))?;
    q.execute(cmd, None)?;
    Ok(json!({ "qmp": cmd }))
}

/// `warm`: the proof is the other way round — nothing left RAM while the guest was paused
/// (the previous trial's `/verify` read all the app's data back).
fn judge_warm(tr: &mut Trial) {
    let (b, a) = (&tr.before_stop, &tr.after_stop);
    tr.freed_ok = a.ram_swapped_pages <= b.ram_swapped_pages;
    tr.freed_note = format!(
        "warm (not purged): resident {} -> {} pages, swapped {} -> {}",
        b.ram_present_pages, a.ram_present_pages, b.ram_swapped_pages, a.ram_swapped_pages
    );
}

/// Whether the Stop really moved the guest's RAM out (resident pages, pages on swap, swap
/// cache), into `tr.freed_ok` and `tr.freed_note`.
fn judge_freed(tr: &mut Trial, app_pages: u64) {
    let b = &tr.before_stop;
    let a = &tr.after_stop;
    let limit = (b.ram_present_pages / 50).max(256);
    let mut notes = Vec::new();
    if a.ram_present_pages > limit {
        notes.push(format!(
            "{} guest-RAM pages still resident (limit {limit})",
            a.ram_present_pages
        ));
    }
    if a.ram_swapped_pages < app_pages * 9 / 10 {
        notes.push(format!(
            "only {} guest-RAM pages on swap, the apps hold {app_pages}",
            a.ram_swapped_pages
        ));
    }
    // The guest's pages must not sit in the swap cache (≤ 10% of what it swapped + 64 MiB slack):
    // judged on QEMU's own memory cgroup, which counts nothing but QEMU's pages; host-wide
    // SwapCached (anything else on the machine swapping meanwhile counts there) only where the
    // kernel does not report a cgroup's swap cache.
    let sc_limit = a.ram_swapped_pages * 4096 / 10 + (64 << 20);
    let (sc, sc_what) = match a.memcg_swap_cached_bytes {
        Some(b) => (b, "QEMU's memcg swapcached"),
        None => (a.swap_cached_bytes, "host SwapCached"),
    };
    if sc > sc_limit {
        notes.push(format!(
            "{sc_what} {} MiB > {} MiB",
            sc >> 20,
            sc_limit >> 20
        ));
    }
    tr.freed_ok = notes.is_empty();
    tr.freed_note = if notes.is_empty() {
        format!(
            "resident {} -> {} pages (+{} zero-page), swapped {}, RSS {} MiB, {sc_what} {} MiB (host SwapCached {} MiB)",
            b.ram_present_pages,
            a.ram_present_pages,
            a.ram_zero_pages,
            a.ram_swapped_pages,
            a.qemu_rss_bytes >> 20,
            sc >> 20,
            a.swap_cached_bytes >> 20
        )
    } else {
        notes.join("; ")
    };
}

/// A trial's Stop (QMP `stop` alone for `warm`) with the evidence around it, judged.
fn stop_phase(
    driver: &mut Driver,
    env: &GuestEnv,
    ram: &mem::Vma,
    tr: &mut Trial,
) -> Result<Option<api::StopAnswer>> {
    let pid = driver.pid();
    tr.before_stop = evidence(pid, ram)?;
    let t = Instant::now();
    let (sv, stop_answer) = if tr.mode == "warm" {
        (qmp_pause(env, "stop")?, None)
    } else {
        driver.stop(env, ram)?
    };
    tr.stop_s = t.elapsed().as_secs_f64();
    tr.torpord_stop = sv;
    tr.after_stop = evidence(pid, ram)?;
    if tr.mode == "warm" {
        judge_warm(tr);
    } else {
        judge_freed(tr, env.data_pages());
    }
    Ok(stop_answer)
}

fn one_trial(
    driver: &mut Driver,
    env: &GuestEnv,
    ram: &mem::Vma,
    swap_dev: &Option<String>,
    tr: &mut Trial,
) -> Result<()> {
    let pid = driver.pid();
    let warm = tr.mode == "warm";
    let stop_answer = stop_phase(driver, env, ram, tr)?;

    // Start with the mode; poll GET / from the moment Start is issued, independently of torpord.
    let c0 = counters(swap_dev);
    let t0 = Instant::now();
    let addr = env.app_addr();
    let sd = swap_dev.clone();
    let first: Arc<Mutex<Option<(Duration, Counters, u64)>>> = Arc::new(Mutex::new(None));
    let first2 = first.clone();
    let ram2 = ram.clone();
    let poller = std::thread::spawn(move || -> Result<()> {
        let (_r, at) = http::poll_ok(
            addr,
            "/",
            t0 + Duration::from_secs(900),
            Duration::from_millis(10),
        )?;
        let c = counters(&sd);
        let present = mem::page_counts(pid, ram2.start, ram2.end)
            .map(|p| p.present)
            .unwrap_or(0);
        *first2.lock().map_err(|_| anyhow!("poisoned"))? =
            Some((at.duration_since(t0), c, present));
        Ok(())
    });
    let started = if warm {
        qmp_pause(env, "cont").map(|v| (v, None))
    } else {
        driver.start(env, &tr.mode)
    };
    tr.start_return_s = t0.elapsed().as_secs_f64();
    let c1 = counters(swap_dev);
    tr.swapin_bytes_to_start_return = (c1.pswpin - c0.pswpin) * 4096;
    let (sv, start_answer) = started?;
    let resume = match start_answer.as_ref().and_then(|a| a.started()) {
        Some(api::Started {
            vm: Some(api::VmStart::Resume(r)),
            ..
        }) => Some(r),
        _ => None,
    };
    tr.effective_mode = resume
        .map(|r| r.effective.clone())
        .unwrap_or_else(|| tr.mode.clone());
    tr.prefetched_bytes = resume.map(|r| r.prefetched_bytes).unwrap_or(0);
    tr.loading_set = resume.and_then(|r| r.loading_set.clone());
    let vm_stop = stop_answer.as_ref().and_then(|a| a.vm());
    tr.maps = vm_stop.map(|v| v.maps.clone()).unwrap_or_default();
    tr.torpord_evicted = vm_stop.map(|v| v.evidence.evicted);
    tr.torpord_start = sv;
    poller.join().map_err(|_| anyhow!("poller panicked"))??;
    let (d, c, present) = first
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
        .context("no first response")?;
    tr.first_response_s = d.as_secs_f64();
    tr.swapin_bytes_to_first_response = c.pswpin.saturating_sub(c0.pswpin) * 4096;
    tr.dev_read_bytes_to_first_response =
        c.dev_read_sectors.saturating_sub(c0.dev_read_sectors) * 512;
    tr.ram_present_pages_at_first_response = present;
    // The app's /verify reads all its data: with demand paging the rest comes back now.
    let (a_ok, va) = verify_one(env.app_addr());
    tr.app_all_data_s = t0.elapsed().as_secs_f64();
    let (c_ok, vc) = verify_one(env.check_addr());
    let ok = a_ok && c_ok;
    tr.verify_ok = ok;
    tr.verify_app = va;
    tr.verify_checksum = vc;
    Ok(())
}

/// UTC "YYYY-MM-DD HH:MM" without a date crate.
fn chrono_like_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|x| x.1.trim().to_string())
        })
        .unwrap_or_default();
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memg = mem::meminfo_bytes("MemTotal").unwrap_or(0) as f64 / (1u64 << 30) as f64;
    let kernel = run_cmd(&["uname", "-r"]).unwrap_or_default();
    let qemu = run_cmd(&["qemu-system-x86_64", "--version"]).unwrap_or_default();
    format!(
        "{ncpu} CPUs ({cpu}), {memg:.0} GiB RAM, host kernel {}, {}",
        kernel.trim(),
        qemu.lines().next().unwrap_or("").trim()
    )
}

#[allow(clippy::too_many_arguments)]
fn write_results(
    env: &GuestEnv,
    o: &Opts,
    trials: &[Trial],
    started: &str,
    load_before: &str,
    load_after: &str,
    swap_dev: Option<&str>,
    module: bool,
    idle: &str,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(&o.out_dir)?;
    let stamp = started.replace([' ', ':'], "-").replace("-UTC", "");
    // vm-resume-<driver>-<date>-ws<MiB>-<time>
    let (date, time) = stamp.split_at(stamp.len().min(10));
    let base = o.out_dir.join(format!(
        "vm-resume-{}-{date}-ws{}{time}",
        o.driver, env.ws_mib
    ));
    let json_path = base.with_extension("json");
    let csv_path = base.with_extension("csv");
    let md_path = base.with_extension("md");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(
            &json!({ "started": started, "driver": o.driver, "machine": machine(),
        "load_before": load_before, "load_after": load_after, "guest": { "mem_mib": env.mem_mib, "app_mib": env.app_mib, "ws_mib": env.ws_mib, "check_mib": env.check_mib, "idle_mib": env.idle_mib, "torpor_ko_loaded": module }, "idle_verify_at_end": idle, "trials": trials }),
        )?,
    )?;
    std::fs::write(&csv_path, trials_csv(trials))?;

    let mut md = String::new();
    md += &format!(
        "# VM resume end to end ({} driver), {started}\n\n",
        o.driver
    );
    md += "A QEMU **TCG** guest (no KVM on this host: every guest instruction is emulated, so absolute times are \
           several times those of a KVM guest; the ratios between modes are the result) runs an HTTP app holding \
           deterministic data and a standalone checksum process, plus `torpor-guest serve` on a virtio-serial port. \
           Each trial: Stop (QMP stop, freeze, purge QEMU to swap) → check the guest's RAM is out (pagemap of QEMU's \
           guest-RAM mapping, QEMU RSS, host SwapCached) → Start with a prefetch mode → time to the first `GET /` \
           answer, polled through hostfwd from the moment Start is issued (independently of torpord's probe) → \
           `GET /verify` of the app and the checksum process in the guest (every word checked; the app's `/verify` reads all its data, so its completion time is \"all app data back\"). Modes rotate per trial. With `none` only what the first request touches is read before it is answered; `full` reads the whole QEMU process first; `priority` reads QEMU's own memory and the guest's classes 0-5 minus free pages first; `loading-set` (torpord's default) reads the part of the VM's loading set (QEMU's pages touched after `cont` in earlier cycles, recorded by torpord) touched before the first response, class-ordered, guest-free pages never, and the rest in the background; `warm` is QMP `stop` and `cont` alone (never purged: the lower bound; its \"memory\" check is that nothing left RAM).\n\n";
    md += &format!("- machine: {}\n", machine());
    md += "- QEMU: `-accel tcg,tb-size=128 -m 512 -smp 1`, user networking with hostfwd, virtio-serial agent port, QMP; QEMU's own memory (outside guest RAM) includes TCG's translated-code cache, which a KVM guest does not have\n";
    md += &format!("- load average: before `{load_before}`, after `{load_after}` (2 cores shared with other jobs)\n");
    md += &format!(
        "- guest: {} MiB RAM, 1 vCPU, TCG; app {} MiB (working set `GET /` touches {} MiB), checksum process {} MiB (verified every trial), idle process {} MiB (untouched after boot, verified once at the end: {idle}); torpor.ko in the guest: {}\n",
        env.mem_mib, env.app_mib, env.ws_mib, env.check_mib, env.idle_mib, if module { "loaded (agent source: module)" } else { "not loaded (agent source: portable)" }
    );
    let swapfiles: Vec<String> = mem::swap_devices()
        .unwrap_or_default()
        .into_iter()
        .map(|(p, d)| format!("`{p}` on {}", mem::dev_name(&d)))
        .collect();
    md += &format!("- swap: {} (the runner's 2 GiB swapfile has the highest priority); bytes read = `pswpin` delta × 4096 (host-wide) and the device's read sectors × 512 (includes any other reads on that disk)\n", swapfiles.join(", "));
    let _ = swap_dev;
    md += &format!(
        "- driver: `{}`; trials per mode: {}; raw data: `{}`, `{}`\n\n",
        o.driver,
        o.trials,
        csv_path.file_name().unwrap_or_default().to_string_lossy(),
        json_path.file_name().unwrap_or_default().to_string_lossy()
    );
    md += &modes_table(trials);
    md += &trials_table(trials);
    std::fs::write(&md_path, md)?;
    Ok(vec![md_path, csv_path, json_path])
}

/// One CSV line per trial.
fn trials_csv(trials: &[Trial]) -> String {
    let mut csv = String::from("trial,mode,effective_mode,prefetched_bytes,maps,torpord_evicted,driver,first_response_s,start_return_s,app_all_data_s,swapin_bytes_to_first_response,swapin_bytes_to_start_return,dev_read_bytes_to_first_response,ram_present_pages_at_first_response,stop_s,ram_present_before_stop,ram_present_after_stop,ram_swapped_after_stop,swap_cached_after_stop,freed_ok,verify_ok,error\n");
    for t in trials {
        csv += &format!(
            "{},{},{},{},{},{:?},{},{:.4},{:.4},{:.4},{},{},{},{},{:.3},{},{},{},{},{},{},{:?}\n",
            t.trial,
            t.mode,
            t.effective_mode,
            t.prefetched_bytes,
            t.maps,
            t.torpord_evicted,
            t.driver,
            t.first_response_s,
            t.start_return_s,
            t.app_all_data_s,
            t.swapin_bytes_to_first_response,
            t.swapin_bytes_to_start_return,
            t.dev_read_bytes_to_first_response,
            t.ram_present_pages_at_first_response,
            t.stop_s,
            t.before_stop.ram_present_pages,
            t.after_stop.ram_present_pages,
            t.after_stop.ram_swapped_pages,
            t.after_stop.swap_cached_bytes,
            t.freed_ok,
            t.verify_ok,
            t.error
        );
    }
    csv
}

/// Per mode over the good trials: first response, Start return, all data back, swap-in and
/// device reads (medians), against demand paging.
fn modes_table(trials: &[Trial]) -> String {
    let ok = |t: &&Trial| t.error.is_empty() && t.freed_ok && t.verify_ok;
    let col = |mode: &str, f: &dyn Fn(&Trial) -> f64| -> Vec<f64> {
        trials
            .iter()
            .filter(|t| t.mode == mode)
            .filter(ok)
            .map(f)
            .collect()
    };
    let med_none = stats::median(&col("none", &|t| t.first_response_s));
    let med_none_all = stats::median(&col("none", &|t| t.app_all_data_s));
    let mut md = String::new();
    md += "| mode | ok trials | first response, median (min–max) s | vs demand paging | Start returned, median s | all app data back (`/verify` done), median s | vs demand paging | swap-in to first response, median MiB | device reads, median MiB |\n|---|---|---|---|---|---|---|---|---|\n";
    for mode in MODES {
        let fr = col(mode, &|t| t.first_response_s);
        let n_all = trials.iter().filter(|t| t.mode == mode).count();
        if n_all == 0 {
            continue;
        }
        let m = stats::median(&fr);
        let (lo, hi) = stats::min_max(&fr).unwrap_or((f64::NAN, f64::NAN));
        let ratio = match (med_none, m) {
            (Some(a), Some(b)) if b > 0.0 => format!(
                "{:.2}× {}",
                a / b,
                if mode == "none" {
                    "(baseline)"
                } else if a > b {
                    "faster"
                } else {
                    "slower"
                }
            ),
            _ => "–".into(),
        };
        let f = |v: Option<f64>, scale: f64| {
            v.map(|x| format!("{:.2}", x / scale))
                .unwrap_or_else(|| "–".into())
        };
        let m_all = stats::median(&col(mode, &|t| t.app_all_data_s));
        let ratio_all = match (med_none_all, m_all) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "–".into(),
        };
        md += &format!(
            "| {} | {}/{} | {} ({:.2}–{:.2}) | {} | {} | {} | {} | {} | {} |\n",
            if mode == "none" {
                "none (demand paging)"
            } else {
                mode
            },
            fr.len(),
            n_all,
            f(m, 1.0),
            lo,
            hi,
            ratio,
            f(stats::median(&col(mode, &|t| t.start_return_s)), 1.0),
            f(m_all, 1.0),
            ratio_all,
            f(
                stats::median(&col(mode, &|t| t.swapin_bytes_to_first_response as f64)),
                1048576.0
            ),
            f(
                stats::median(&col(mode, &|t| t.dev_read_bytes_to_first_response as f64)),
                1048576.0
            ),
        );
    }
    md
}

/// One row per trial.
fn trials_table(trials: &[Trial]) -> String {
    let mut md = String::new();
    md += "\n## Trials\n\n| trial | mode (effective, maps) | first response s | Start returned s | prefetched before cont MiB | swap-in MiB | guest RAM resident before/after Stop (pages) | swapped after Stop | SwapCached after Stop MiB | freed | verify |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    for t in trials {
        md += &format!(
            "| {} | {} ({}, {}) | {:.3} | {:.3} | {:.1} | {:.1} | {} / {} | {} | {} | {} | {} |\n",
            t.trial,
            t.mode,
            t.effective_mode,
            if t.maps.is_empty() { "-" } else { &t.maps },
            t.first_response_s,
            t.start_return_s,
            t.prefetched_bytes as f64 / 1048576.0,
            t.swapin_bytes_to_first_response as f64 / 1048576.0,
            t.before_stop.ram_present_pages,
            t.after_stop.ram_present_pages,
            t.after_stop.ram_swapped_pages,
            t.after_stop.swap_cached_bytes >> 20,
            if t.freed_ok { "yes" } else { "**NO**" },
            if t.verify_ok {
                "ok".to_string()
            } else {
                format!(
                    "**BAD** {} / {} {}",
                    t.verify_app, t.verify_checksum, t.error
                )
            }
        );
    }
    md
}
