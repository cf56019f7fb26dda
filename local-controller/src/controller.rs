//! The local controller: per-app state machine (Start/Stop), standby pool, reserve, adoption
//! after a restart, overload monitoring. Blocking code: the API layer runs it on blocking threads.
//!
//! Locking: each app has an `op` mutex (held for a whole Start/Stop, so operations on one app
//! are serialized) and a `st` mutex (held only briefly, to read or change the app's record).
//! Nothing holds two apps' `op` locks except the reserve enforcer, which only `try_lock`s.

use crate::config::{AppConfig, Config, PrefetchPolicy, PurgePolicy, VmPrefetch};
use crate::overload::{rate, Hotspot, Sustained};
use crate::probe;
use procswap::cgroup::{self, Memcg};
use procswap::{Backend, Freezer, NoProgress, PrefetchOptions, PurgeOptions, WorkingSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use torpor_api as api;
use tracing::{error, warn};

mod activation;
mod events;
pub mod lifecycle;
mod metrics;
mod persistence;
mod status;
mod stockpurge;
mod vm;

use persistence::StateFile;

const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

pub use torpor_api::{
    ActivationTiming, AppCgroups, AppState, Counters, Event, EventKind, Op, OverloadStatus,
    PurgeMethod, PurgeSummary, StartRequest, StartTiming, StopRequest,
};

/// The directories of an app's cgroups.
trait CgroupDirs {
    fn dirs(&self) -> impl Iterator<Item = &PathBuf>;
    /// The directory whose `cgroup.procs` lists the app's processes.
    fn primary(&self) -> Option<&PathBuf>;
}

impl CgroupDirs for AppCgroups {
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.v2, &self.v1_memory, &self.v1_freezer]
            .into_iter()
            .flatten()
    }
    fn primary(&self) -> Option<&PathBuf> {
        self.v1_memory
            .as_ref()
            .or(self.v2.as_ref())
            .or(self.v1_freezer.as_ref())
    }
}

/// The persisted part of an app's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppRecord {
    pub state: AppState,
    pub pid: Option<i32>,
    pub cgroups: AppCgroups,
    /// Start or Stop while one is in progress (persisted first: see adoption rules).
    pub in_flight: Option<Op>,
    pub last_stop_unix: Option<f64>,
    pub last_start: Option<StartTiming>,
    pub last_purge: Option<PurgeSummary>,
    pub last_error: Option<String>,
    pub counters: Counters,
    /// Bytes of the working set recorded at the last Stop (the set itself is in ws/NAME.json).
    pub working_set_bytes: Option<u64>,
}

impl AppRecord {
    /// Move the app to `to`: the one place a running torpord changes an app's state. An
    /// invalid transition ([`lifecycle::valid_transition`]) is refused (and logged).
    fn transition(&mut self, to: AppState) {
        match lifecycle::valid_transition(self.state, to) {
            Ok(()) => self.state = to,
            Err(e) => {
                error!("{e} refused");
                debug_assert!(false, "{e}");
            }
        }
    }

    fn new(cgroups: AppCgroups) -> Self {
        Self {
            state: AppState::Stopped,
            pid: None,
            cgroups,
            in_flight: None,
            last_stop_unix: None,
            last_start: None,
            last_purge: None,
            last_error: None,
            counters: Counters::default(),
            working_set_bytes: None,
        }
    }
}

/// Runtime monitoring of one app (not persisted).
struct Monitor {
    last: Option<(Instant, u64)>,
    sustained: Sustained,
    hotspot: Hotspot,
    status: OverloadStatus,
}

impl Monitor {
    fn new(threshold: f64) -> Self {
        Self {
            last: None,
            sustained: Sustained::new(threshold),
            hotspot: Hotspot::new(threshold),
            status: OverloadStatus::default(),
        }
    }
    /// Feed a counter sample; returns Some((was sustained, was hotspot)) when a rate was computed.
    fn feed(&mut self, now: Instant, counter: u64) -> Option<(bool, bool)> {
        let prev = self.last.replace((now, counter))?;
        let r = rate(prev.1, counter, now.duration_since(prev.0).as_secs_f64());
        let before = (self.status.sustained, self.status.hotspot);
        let (over, sus) = self.sustained.push(r);
        let (pred, hot) = self.hotspot.push(r);
        self.status = OverloadStatus {
            rate: r,
            overloaded: over,
            overloaded_in_window: self.sustained.overloaded_in_window(),
            sustained: sus,
            hotspot: hot,
            predicted: pred,
        };
        Some(before)
    }
}

struct AppSlot {
    cfg: AppConfig,
    op: Mutex<()>,
    st: Mutex<AppRecord>,
    mon: Mutex<Monitor>,
    /// VM apps: maps, guest RAM and the background fetcher (runtime only).
    vm: Mutex<vm::VmRuntime>,
    /// Process apps in `loading-set` mode: the recorder and background fetch of the last Start.
    act: Mutex<activation::ActRuntime>,
}

/// Finding an app by name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("{0:?} is not a valid app name ([A-Za-z0-9_.-], 1-64 characters)")]
    InvalidName(String),
    #[error("no app named {0:?} in the configuration")]
    Unknown(String),
}

/// A Start that did not make the app ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// The request's prefetch mode does not fit the app.
    #[error("{0}")]
    BadMode(String),
    /// Found running, but its readiness probe failed.
    #[error("app is running but not ready: {0}")]
    NotReady(String),
    /// Spawn, prefetch, thaw or probe failed; `left`: the state the app was left in.
    #[error("{message}")]
    Failed { message: String, left: AppState },
}

/// A Stop that could not freeze the app (it is left running).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// The request asks for what this app cannot do (nothing changed).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Failed(String),
}

/// Why the steps of a process app's Start failed (the state it is left in is chosen by
/// `fail_start`; the API answers [`StartError::Failed`]).
#[derive(Debug, thiserror::Error)]
pub enum ProcessStartError {
    #[error("{0}")]
    Spawn(#[from] SpawnError),
    #[error("thaw failed: {0}")]
    Thaw(procswap::Error),
    #[error("{0}")]
    NotReady(probe::ProbeError),
}

/// Why the steps of a process app's Stop failed (it is left running; the API answers
/// [`StopError::Failed`]).
#[derive(Debug, thiserror::Error)]
pub enum ProcessStopError {
    #[error("freeze failed: {0}")]
    Freeze(procswap::Error),
}

/// The prefetch mode a Start runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartMode {
    Process(PrefetchPolicy),
    Vm(VmPrefetch),
}

/// Host-level errors that stop torpord from starting.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{0}")]
    Procswap(#[from] procswap::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy found (neither cgroup2 nor v1 memory)")]
    NoCgroupHierarchy,
    /// The configured backend is none of procswap's (procswap words why).
    #[error("{0}")]
    Backend(String),
}

/// Which hierarchies apps are placed in.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub v2_parent: Option<PathBuf>,
    pub v2_memory: bool,
    pub v2_freeze: bool,
    pub v1_memory_parent: Option<PathBuf>,
    pub v1_freezer_parent: Option<PathBuf>,
}

impl Layout {
    /// Find the hierarchies and create `<hierarchy>/<parent>` where needed.
    pub fn setup(parent: &str) -> Result<Layout, ControllerError> {
        let m = cgroup::mounts()?;
        let mut l = Layout {
            v2_parent: None,
            v2_memory: false,
            v2_freeze: false,
            v1_memory_parent: None,
            v1_freezer_parent: None,
        };
        if let Some(v2) = &m.v2 {
            let ctl = std::fs::read_to_string(v2.mount_point.join("cgroup.controllers"))
                .unwrap_or_default();
            let mem = ctl.split_whitespace().any(|c| c == "memory");
            let dir =
                cgroup::create_v2(&v2.mount_point, parent, if mem { &["memory"] } else { &[] })?;
            l.v2_memory = mem && dir.join("cgroup.subtree_control").exists();
            if l.v2_memory {
                let sub =
                    std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
                if !sub.split_whitespace().any(|c| c == "memory") {
                    cgroup::create_v2(&v2.mount_point, parent, &["memory"])?;
                    std::fs::write(dir.join("cgroup.subtree_control"), "+memory").map_err(
                        |source| ControllerError::Io {
                            path: dir.join("cgroup.subtree_control"),
                            source,
                        },
                    )?;
                }
            }
            l.v2_freeze = dir.join("cgroup.freeze").exists();
            l.v2_parent = Some(dir);
        }
        if !l.v2_memory {
            if let Some(mm) = &m.v1_memory {
                l.v1_memory_parent = Some(cgroup::create_v1(&mm.mount_point, parent)?);
            }
        }
        if !l.v2_freeze {
            if let Some(fm) = &m.v1_freezer {
                l.v1_freezer_parent = Some(cgroup::create_v1(&fm.mount_point, parent)?);
            }
        }
        if l.v2_parent.is_none() && l.v1_memory_parent.is_none() {
            return Err(ControllerError::NoCgroupHierarchy);
        }
        Ok(l)
    }

    fn app_cgroups(&self, name: &str) -> AppCgroups {
        AppCgroups {
            v2: self
                .v2_parent
                .as_ref()
                .filter(|_| self.v2_memory || self.v2_freeze || self.v1_memory_parent.is_none())
                .map(|d| d.join(name)),
            v1_memory: self.v1_memory_parent.as_ref().map(|d| d.join(name)),
            v1_freezer: self.v1_freezer_parent.as_ref().map(|d| d.join(name)),
        }
    }

    pub fn describe(&self) -> String {
        let mem = if self.v2_memory {
            "memory: cgroup2".to_string()
        } else if let Some(d) = &self.v1_memory_parent {
            format!("memory: v1 {}", d.display())
        } else {
            "memory: none".into()
        };
        let fr = if self.v2_freeze {
            format!(
                "freezer: cgroup2 {}",
                self.v2_parent
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            )
        } else if let Some(d) = &self.v1_freezer_parent {
            format!("freezer: v1 {}", d.display())
        } else {
            "freezer: SIGSTOP".into()
        };
        format!("{mem}; {fr}")
    }
}

/// The controller.
pub struct Controller {
    pub cfg: Config,
    backend: Box<dyn Backend>,
    /// The configured backend, parsed once (the VM background fetcher selects its own).
    backend_pref: procswap::BackendPref,
    pub backend_why: String,
    pub layout: Layout,
    apps: BTreeMap<String, Arc<AppSlot>>,
    events: Mutex<VecDeque<Event>>,
    event_seq: AtomicU64,
    host_mon: Mutex<Monitor>,
    persist_lock: Mutex<()>,
    started: Instant,
    /// Unix seconds of the last monitor tick (the watchdog only pings while it advances).
    pub last_tick: AtomicU64,
    /// Prestart of the standby pool finished.
    pub pool_ready: AtomicBool,
    reserve_warned: AtomicBool,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder must not take the whole daemon down: the data is plain records.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per-process memory figures from /proc/pid/status (bytes).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcMem {
    pub rss: u64,
    pub rss_anon: u64,
    pub swap: u64,
}

fn proc_mem(pid: i32) -> Option<ProcMem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| {
                v.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    Some(ProcMem {
        rss: kb("VmRSS:"),
        rss_anon: kb("RssAnon:"),
        swap: kb("VmSwap:"),
    })
}

fn majflt(pid: i32) -> u64 {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map(|s| s.majflt)
        .unwrap_or(0)
}

/// What the kernel says about an app right now.
#[derive(Debug, Clone)]
struct Observed {
    pids: Vec<i32>,
    /// All freezers report frozen.
    frozen: bool,
    /// A freeze was requested but not confirmed (v2 cgroup.freeze=1, v1 FREEZING).
    freeze_pending: bool,
    mem: ProcMem,
}

impl Controller {
    /// Set up cgroups, choose the backend, load the persisted state and adopt what is running.
    pub fn new(cfg: Config) -> Result<Arc<Controller>, ControllerError> {
        for d in [
            cfg.state_dir.clone(),
            cfg.state_dir.join("ws"),
            cfg.state_dir.join("logs"),
        ] {
            std::fs::create_dir_all(&d).map_err(|source| ControllerError::Io {
                path: d.clone(),
                source,
            })?;
        }
        let layout = Layout::setup(&cfg.cgroup_parent)?;
        let pref: procswap::BackendPref = cfg.backend.parse().map_err(ControllerError::Backend)?;
        let (backend, backend_why) = procswap::backend::select_backend_explained(pref)?;
        let persisted = StateFile::load(&cfg.state_dir);
        let mut apps = BTreeMap::new();
        for a in &cfg.apps {
            let cgs = layout.app_cgroups(&a.name);
            for d in cgs.dirs() {
                std::fs::create_dir_all(d).map_err(|source| ControllerError::Io {
                    path: d.clone(),
                    source,
                })?;
            }
            let rec = match persisted.apps.get(&a.name) {
                Some(r) => AppRecord {
                    cgroups: cgs,
                    ..r.clone()
                },
                None => AppRecord::new(cgs),
            };
            apps.insert(
                a.name.clone(),
                Arc::new(AppSlot {
                    cfg: a.clone(),
                    op: Mutex::new(()),
                    st: Mutex::new(rec),
                    mon: Mutex::new(Monitor::new(cfg.overload_threshold)),
                    vm: Mutex::new(vm::VmRuntime::default()),
                    act: Mutex::new(activation::ActRuntime::default()),
                }),
            );
        }
        let threshold = cfg.overload_threshold;
        let c = Arc::new(Controller {
            cfg,
            backend,
            backend_pref: pref,
            backend_why,
            layout,
            apps,
            events: Mutex::new(VecDeque::new()),
            event_seq: AtomicU64::new(0),
            host_mon: Mutex::new(Monitor::new(threshold)),
            persist_lock: Mutex::new(()),
            started: Instant::now(),
            last_tick: AtomicU64::new(now_unix() as u64),
            pool_ready: AtomicBool::new(false),
            reserve_warned: AtomicBool::new(false),
        });
        c.event(
            None,
            EventKind::Startup,
            format!(
                "backend: {}; cgroups: {}",
                c.backend_why,
                c.layout.describe()
            ),
        );
        for slot in c.apps.values() {
            c.adopt(slot);
        }
        c.persist();
        Ok(c)
    }

    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn slot(&self, name: &str) -> Result<&Arc<AppSlot>, LookupError> {
        if !crate::config::valid_name(name) {
            return Err(LookupError::InvalidName(name.to_string()));
        }
        self.apps
            .get(name)
            .ok_or_else(|| LookupError::Unknown(name.to_string()))
    }

    pub fn app_names(&self) -> Vec<String> {
        self.apps.keys().cloned().collect()
    }

    fn ws_path(&self, name: &str) -> PathBuf {
        self.cfg.state_dir.join("ws").join(format!("{name}.json"))
    }

    // ---------- observing the kernel ----------

    /// A readiness probe's liveness check: `Err(why())` once no process is left in the app's
    /// cgroups (a dead app fails the probe at once).
    fn alive<'a>(
        &'a self,
        cgs: &'a AppCgroups,
        why: &'a dyn Fn() -> String,
    ) -> impl FnMut() -> Result<(), String> + 'a {
        move || {
            if self.observe(cgs).pids.is_empty() {
                Err(why())
            } else {
                Ok(())
            }
        }
    }

    /// Prefetch options of every Start: the configured threads, the reserve as the floor.
    fn prefetch_options(&self) -> PrefetchOptions {
        PrefetchOptions {
            threads: self.cfg.prefetch_threads,
            free_floor_bytes: self.cfg.reserve,
            ..PrefetchOptions::default()
        }
    }

    fn freezers(&self, cgs: &AppCgroups, pids: &[i32]) -> Vec<Freezer> {
        if let Some(d) = cgs.v2.as_ref().filter(|d| d.join("cgroup.freeze").exists()) {
            return vec![Freezer::CgroupV2(d.clone())];
        }
        if let Some(d) = cgs
            .v1_freezer
            .as_ref()
            .filter(|d| d.join("freezer.state").exists())
        {
            return vec![Freezer::CgroupV1(d.clone())];
        }
        pids.iter().map(|p| Freezer::Signal(*p)).collect()
    }

    fn observe(&self, cgs: &AppCgroups) -> Observed {
        let pids = cgs
            .primary()
            .and_then(|d| cgroup::procs(d).ok())
            .unwrap_or_default();
        let fz = self.freezers(cgs, &pids);
        let frozen =
            !pids.is_empty() && !fz.is_empty() && fz.iter().all(|f| f.is_frozen().unwrap_or(false));
        let freeze_pending = !frozen
            && (cgs.v2.as_ref().is_some_and(|d| {
                std::fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
            }) || cgs.v1_freezer.as_ref().is_some_and(|d| {
                std::fs::read_to_string(d.join("freezer.state"))
                    .is_ok_and(|s| s.trim() == "FREEZING")
            }));
        let mut mem = ProcMem::default();
        for p in &pids {
            if let Some(m) = proc_mem(*p) {
                mem.rss += m.rss;
                mem.rss_anon += m.rss_anon;
                mem.swap += m.swap;
            }
        }
        Observed {
            pids,
            frozen,
            freeze_pending,
            mem,
        }
    }

    /// Rebuild one app's state from its cgroups after a (re)start of torpord (the rules:
    /// [`lifecycle::adopt`]). A freeze requested but not confirmed is completed first: an
    /// interrupted Stop is frozen, anything else is thawed.
    fn adopt(&self, slot: &AppSlot) {
        let name = slot.cfg.name.clone();
        let (cgs, in_flight, old_state, old_pid) = {
            let r = lock(&slot.st);
            (r.cgroups.clone(), r.in_flight, r.state, r.pid)
        };
        let mut o = self.observe(&cgs);
        if !o.pids.is_empty() && o.freeze_pending {
            let action = lifecycle::complete_pending_freeze(in_flight);
            for f in &self.freezers(&cgs, &o.pids) {
                let res = match action {
                    lifecycle::PendingFreeze::Freeze => f.freeze(FREEZE_TIMEOUT),
                    lifecycle::PendingFreeze::Thaw => f.thaw(FREEZE_TIMEOUT),
                };
                if let Err(e) = res {
                    self.event(
                        Some(&name),
                        EventKind::AdoptWarning,
                        format!("completing an interrupted freeze/thaw: {e}"),
                    );
                }
            }
            o = self.observe(&cgs);
        }
        let kernel = lifecycle::KernelView {
            processes: o.pids.len(),
            frozen: o.frozen,
            rss_anon: o.mem.rss_anon,
            swap: o.mem.swap,
        };
        let a = lifecycle::adopt(
            old_state,
            in_flight,
            &kernel,
            self.cfg.purge == PurgePolicy::Always,
        );
        if let Some(w) = &a.warning {
            self.event(Some(&name), EventKind::AdoptWarning, w.clone());
        }
        let pid = old_pid
            .filter(|p| o.pids.contains(p))
            .or(o.pids.first().copied());
        {
            // Adoption sets the state afresh (no transition: this process had none before).
            let mut r = lock(&slot.st);
            r.state = a.state;
            r.pid = pid;
            r.in_flight = None;
            if let Some(n) = &a.note {
                r.last_error = Some(n.clone());
            }
        }
        if o.pids.is_empty() {
            return;
        }
        self.event(
            Some(&name),
            EventKind::Adopt,
            format!(
                "adopted {} process(es) (pid {:?}) as {}{}",
                o.pids.len(),
                pid,
                a.state.as_str(),
                a.note.map(|n| format!("; {n}")).unwrap_or_default()
            ),
        );
        if a.redo_purge {
            let _op = lock(&slot.op);
            if self.purge_app(slot, false).is_ok() {
                self.set(slot, |r| {
                    r.last_error = Some(
                        "a Stop was interrupted by a torpord restart: completed (purged) at \
                         adoption"
                            .into(),
                    )
                });
            }
        }
    }

    // ---------- spawning ----------

    /// Spawn the app's command (or start its unit) in its cgroups; a thread reaps it.
    fn spawn(&self, slot: &AppSlot) -> Result<i32, SpawnError> {
        let a = &slot.cfg;
        let cgs = lock(&slot.st).cgroups.clone();
        if let Some(unit) = &a.unit {
            return self.spawn_unit(slot, unit, &cgs);
        }
        let argv = a.command.as_ref().ok_or(SpawnError::NoCommand)?;
        let procs: Vec<CString> = cgs
            .dirs()
            .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?;
        let ids = match &a.user {
            Some(u) => Some(resolve_user(u)?),
            None => None,
        };
        let log_path = self
            .cfg
            .state_dir
            .join("logs")
            .join(format!("{}.log", a.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| SpawnError::Log {
                path: log_path.clone(),
                source,
            })?;
        let log2 = log.try_clone()?;
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .envs(&a.env)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some(d) = &a.workdir {
            cmd.current_dir(d);
        }
        join_before_exec(&mut cmd, procs, ids);
        let child = cmd.spawn().map_err(|source| SpawnError::Exec {
            argv0: argv[0].clone(),
            source,
        })?;
        let slot = Arc::clone(self.apps.get(&a.name).ok_or(SpawnError::Vanished)?);
        reap(child, slot)
    }

    fn spawn_unit(&self, slot: &AppSlot, unit: &str, cgs: &AppCgroups) -> Result<i32, SpawnError> {
        let st = std::process::Command::new("systemctl")
            .args(["start", unit])
            .status()
            .map_err(SpawnError::Systemctl)?;
        if !st.success() {
            return Err(SpawnError::UnitStart {
                unit: unit.to_string(),
                status: st,
            });
        }
        let out = std::process::Command::new("systemctl")
            .args(["show", "-p", "MainPID", "--value", unit])
            .output()
            .map_err(SpawnError::Systemctl)?;
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| SpawnError::NoMainPid(unit.to_string()))?;
        if pid <= 0 {
            return Err(SpawnError::UnitNotRunning(unit.to_string()));
        }
        // The unit's processes move into the app's cgroups (memory charged before the move
        // stays charged where it was).
        let src = cgroup::pid_cgroups(pid)?;
        let pids = src
            .v2
            .as_ref()
            .or(src.v1_memory.as_ref())
            .and_then(|d| cgroup::procs(d).ok())
            .unwrap_or_else(|| vec![pid]);
        for d in cgs.dirs() {
            for p in &pids {
                cgroup::move_pid(d, *p)?;
            }
        }
        let _ = slot;
        Ok(pid)
    }

    // ---------- operations ----------

    /// Purge the (frozen) app by its configured method; caller holds its `op` lock. `reserve`:
    /// counted as a reserve purge.
    fn purge_app(&self, slot: &AppSlot, reserve: bool) -> Result<PurgeSummary, PurgeError> {
        self.purge_app_by(slot, reserve, slot.cfg.purge_method)
    }

    /// Purge the (frozen) app by `method` (a VM app always in order).
    fn purge_app_by(
        &self,
        slot: &AppSlot,
        reserve: bool,
        method: PurgeMethod,
    ) -> Result<PurgeSummary, PurgeError> {
        if method == PurgeMethod::Kernel && !slot.cfg.is_vm() {
            return self.kernel_purge(slot, reserve);
        }
        let cgs = lock(&slot.st).cgroups.clone();
        let o = self.observe(&cgs);
        if o.pids.is_empty() {
            return Err(PurgeError::NoProcess);
        }
        let memcg = o
            .pids
            .first()
            .and_then(|p| Memcg::of_pid(*p).ok().flatten());
        let mut sum = PurgeSummary {
            memcg_before_bytes: memcg.as_ref().and_then(|m| m.usage().ok()),
            unix_time: now_unix(),
            ..Default::default()
        };
        let plans = self.keeps_plans() && !slot.cfg.is_vm();
        let mut snapshots = Vec::new();
        for (i, pid) in o.pids.iter().enumerate() {
            // Reclaim once, after the last process.
            let last = i + 1 == o.pids.len();
            if let Some(snap) = self.purge_pid(slot, *pid, last, plans, &mut sum)? {
                snapshots.push((*pid, snap));
            }
        }
        // Plans after the last process's purge: the memcg reclaim (which evicts shmem and the
        // page cache) has run, so "out now" is true for every kind.
        for (pid, snap) in &snapshots {
            self.save_plan(slot, *pid, snap);
        }
        if !snapshots.is_empty() && slot.cfg.shmem_layout {
            sum.shmem_layout = self.relayout_shmem(slot, &o.pids, memcg.as_ref());
        }
        if !snapshots.is_empty() {
            // Per kind for the whole app: what its processes share counted once.
            sum.resident_kinds_bytes =
                Some(procswap::app::app_bytes(snapshots.iter().map(|(_, s)| s)).into());
        }
        sum.memcg_after_bytes = memcg.as_ref().and_then(|m| m.usage().ok());
        sum.freed_bytes = match (sum.memcg_before_bytes, sum.memcg_after_bytes) {
            (Some(b), Some(a)) => b.saturating_sub(a),
            _ => 0,
        };
        self.purged(slot, reserve, &sum);
        Ok(sum)
    }

    /// One process's purge, added to `sum`; its residency snapshot when `plans` (loading-set
    /// mode). A process that is gone is skipped; any other failure ends the purge.
    fn purge_pid(
        &self,
        slot: &AppSlot,
        pid: i32,
        last: bool,
        plans: bool,
        sum: &mut PurgeSummary,
    ) -> Result<Option<procswap::ResidencySnapshot>, PurgeError> {
        let name = &slot.cfg.name;
        let opts = PurgeOptions {
            // The cgroup is the app's own, so every process in it belongs to the app (unit
            // apps: not ours to reclaim if shared).
            reclaim: last,
            reclaim_shared: slot.cfg.unit.is_none(),
            // loading-set mode: the loading set goes out first, in touch order, and the
            // residency snapshot taken before the page-out is the Start plan's input.
            snapshot: plans,
            layout_first: if plans {
                self.purge_layout(slot, pid)
            } else if slot.cfg.is_vm() {
                // A VM's loading set, class-ordered, guest-free pages left out (computed at
                // its Stop, where the guest's maps are).
                self.take_vm_layout(slot)
            } else {
                None
            },
            layout_rewrite_bytes: activation::LAYOUT_REWRITE_BYTES,
            remember: if plans {
                self.remembered_files(slot, pid)
            } else {
                Vec::new()
            },
            remember_max_unheld: activation::REMEMBER_UNHELD_STOPS,
            ..PurgeOptions::default()
        };
        let r = match procswap::purge_with(&*self.backend, pid, &opts, &NoProgress) {
            Ok(r) => r,
            Err(procswap::Error::NoSuchProcess(_)) => return Ok(None),
            Err(source) => {
                let e = PurgeError::Failed { pid, source };
                let msg = e.to_string();
                self.event(Some(name), EventKind::PurgeFailed, msg.clone());
                self.set(slot, |r| r.last_error = Some(msg));
                return Err(e);
            }
        };
        sum.resident_bytes += r.resident_bytes;
        sum.resident_anon_bytes += r.resident_anon_bytes;
        sum.swapped_bytes += r.swapped_bytes;
        sum.swap_moved_bytes += r.paged_out_bytes;
        sum.seconds += r.seconds;
        if let Some(s) = r.reclaim_skipped {
            sum.reclaim_note = Some(s);
        }
        if let Some(rc) = r.reclaim.as_ref().and_then(|rc| rc.incomplete.clone()) {
            sum.reclaim_note = Some(rc);
        }
        if let Some(p) = r.partial {
            self.event(Some(name), EventKind::Purge, format!("pid {pid}: {p}"));
            sum.partial = Some(format!("pid {pid}: {p}"));
        }
        Ok(r.snapshot.filter(|_| plans))
    }

    /// A purge done: its event, the app Suspended -> Standby, the counters and the summary.
    fn purged(&self, slot: &AppSlot, reserve: bool, sum: &PurgeSummary) {
        self.event(
            Some(&slot.cfg.name),
            if reserve {
                EventKind::ReservePurge
            } else {
                EventKind::Purge
            },
            format!(
                "purged ({}) in {:.3}s: memcg {} -> {} MiB ({} MiB freed), resident anon {} KiB, swapped {} MiB",
                sum.method,
                sum.seconds,
                sum.memcg_before_bytes.unwrap_or(0) >> 20,
                sum.memcg_after_bytes.unwrap_or(0) >> 20,
                sum.freed_bytes >> 20,
                sum.resident_anon_bytes >> 10,
                sum.swapped_bytes >> 20
            ),
        );
        let s2 = sum.clone();
        self.set(slot, |r| {
            if r.state == AppState::Suspended {
                r.transition(AppState::Standby);
            }
            r.counters.purges += 1;
            if reserve {
                r.counters.reserve_purges += 1;
            }
            r.last_purge = Some(s2);
        });
    }

    /// Keep MemAvailable above the reserve by purging suspended apps, least recently stopped
    /// first. `held`: an app whose `op` lock the caller already holds (it may be purged too).
    pub fn enforce_reserve(&self, held: Option<&str>) {
        loop {
            let avail = match procswap::sys::meminfo() {
                Ok(m) => m.mem_available,
                Err(_) => return,
            };
            if avail >= self.cfg.reserve {
                self.reserve_warned.store(false, Ordering::Relaxed);
                return;
            }
            let mut cands: Vec<(f64, &Arc<AppSlot>)> = self
                .apps
                .values()
                .filter_map(|s| {
                    let r = lock(&s.st);
                    (r.state == AppState::Suspended).then(|| (r.last_stop_unix.unwrap_or(0.0), s))
                })
                .collect();
            cands.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut done = false;
            for (_, s) in cands {
                let guard = if held == Some(s.cfg.name.as_str()) {
                    None
                } else {
                    match s.op.try_lock() {
                        Ok(g) => Some(g),
                        Err(_) => continue,
                    }
                };
                if lock(&s.st).state != AppState::Suspended {
                    continue;
                }
                self.event(
                    Some(&s.cfg.name),
                    EventKind::Reserve,
                    format!(
                        "MemAvailable {} MiB < reserve {} MiB: purging",
                        avail >> 20,
                        self.cfg.reserve >> 20
                    ),
                );
                let ok = self.purge_app(s, true).is_ok();
                drop(guard);
                if ok {
                    done = true;
                    break;
                }
            }
            if !done {
                if !self.reserve_warned.swap(true, Ordering::Relaxed) {
                    self.event(
                        None,
                        EventKind::Reserve,
                        format!("MemAvailable {} MiB < reserve {} MiB and no suspended app left to purge", avail >> 20, self.cfg.reserve >> 20),
                    );
                }
                return;
            }
        }
    }

    /// Start(app): resume a suspended/standby app (prefetch, thaw, probe) or cold-start it.
    /// Answers only once the readiness probe succeeded.
    pub fn start(&self, name: &str) -> Result<api::StartAnswer, StartError> {
        self.start_with(name, &StartRequest::default())
    }

    /// Start(app) with a per-request override (see [`StartRequest`]).
    pub fn start_with(
        &self,
        name: &str,
        req: &StartRequest,
    ) -> Result<api::StartAnswer, StartError> {
        let slot = self.slot(name)?;
        let mode = self.start_mode(slot, req)?;
        let _op = lock(&slot.op);
        let t0 = Instant::now();
        let (cgs, state) = {
            let r = lock(&slot.st);
            (r.cgroups.clone(), r.state)
        };
        let o = self.observe(&cgs);
        // The kernel is the truth: an app that died is cold, an app found running is running.
        let state = if o.pids.is_empty() {
            AppState::Stopped
        } else if !o.frozen {
            AppState::Running
        } else if matches!(state, AppState::Suspended | AppState::Standby) {
            state
        } else {
            AppState::Suspended
        };
        match state {
            AppState::Running => {
                let probe_t = Instant::now();
                if let Some(p) = &slot.cfg.ready {
                    probe::wait_ready(p, slot.cfg.ready_timeout, || Ok(()))
                        .map_err(|e| StartError::NotReady(e.to_string()))?;
                }
                self.set(slot, |r| r.transition(AppState::Running));
                Ok(api::StartAnswer::AlreadyRunning(api::AlreadyRunning {
                    app: name.to_string(),
                    state: AppState::Running,
                    ready: true,
                    already_running: true,
                    timing: api::ProbeTiming {
                        probe_s: probe_t.elapsed().as_secs_f64(),
                        total_s: t0.elapsed().as_secs_f64(),
                    },
                }))
            }
            AppState::Stopped => self.cold_start(slot, t0),
            _ => match mode {
                StartMode::Process(p) => self.resume(slot, t0, o.pids, p),
                StartMode::Vm(m) => self.resume_vm(slot, t0, o.pids, m),
            },
        }
    }

    /// The prefetch mode of this Start: the request's override, checked against the app's kind,
    /// else the configuration's.
    fn start_mode(&self, slot: &AppSlot, req: &StartRequest) -> Result<StartMode, StartError> {
        let bad = StartError::BadMode;
        match (slot.cfg.is_vm(), req.prefetch.as_deref()) {
            (false, None) => Ok(StartMode::Process(self.cfg.prefetch)),
            (true, None) => Ok(StartMode::Vm(slot.cfg.vm_prefetch_mode())),
            (false, Some(m)) => m
                .parse::<PrefetchPolicy>()
                .map(StartMode::Process)
                .map_err(|e| bad(format!("app {:?} is a process app: {e}", slot.cfg.name))),
            (true, Some(m)) => m
                .parse::<VmPrefetch>()
                .map(StartMode::Vm)
                .map_err(|e| bad(format!("app {:?} is a vm app: {e}", slot.cfg.name))),
        }
    }

    fn cold_start(&self, slot: &AppSlot, t0: Instant) -> Result<api::StartAnswer, StartError> {
        let name = slot.cfg.name.clone();
        self.activation_exited(slot);
        self.set(slot, |r| {
            r.transition(AppState::Starting);
            r.in_flight = Some(Op::Start);
            r.pid = None;
        });
        let pid = match self.spawn(slot) {
            Ok(p) => p,
            Err(e) => {
                let e = ProcessStartError::Spawn(e).to_string();
                self.set(slot, |r| {
                    r.transition(AppState::Stopped);
                    r.in_flight = None;
                    r.counters.start_failures += 1;
                    r.last_error = Some(e.clone());
                });
                self.event(Some(&name), EventKind::StartFailed, e.clone());
                return Err(StartError::Failed {
                    message: e,
                    left: AppState::Stopped,
                });
            }
        };
        self.set(slot, |r| r.pid = Some(pid));
        let spawn_s = t0.elapsed().as_secs_f64();
        self.event(Some(&name), EventKind::Spawn, format!("spawned pid {pid}"));
        let tp = Instant::now();
        let cgs = lock(&slot.st).cgroups.clone();
        let res = match &slot.cfg.ready {
            Some(p) => {
                let why = || {
                    format!(
                        "the app exited during startup (see {})",
                        self.cfg
                            .state_dir
                            .join("logs")
                            .join(format!("{name}.log"))
                            .display()
                    )
                };
                probe::wait_ready(p, slot.cfg.ready_timeout, self.alive(&cgs, &why))
            }
            None => Ok(0),
        };
        let probe_s = tp.elapsed().as_secs_f64();
        match res {
            Ok(probes) => {
                let timing = StartTiming {
                    cold: true,
                    spawn_s,
                    probe_s,
                    probes,
                    total_s: t0.elapsed().as_secs_f64(),
                    unix_time: now_unix(),
                    ..Default::default()
                };
                let vm = if slot.cfg.is_vm() {
                    match self.vm_after_cold_start(slot, t0) {
                        Ok(v) => Some(v),
                        Err(e) => return Err(self.fail_start(slot, e)),
                    }
                } else {
                    None
                };
                self.finish_start_vm(slot, timing, vm)
            }
            Err(e) => Err(self.fail_start(slot, ProcessStartError::NotReady(e))),
        }
    }

    /// The common start of a resume: the app marked Starting, then room made first (other
    /// suspended apps are purged), so the prefetch can fetch without crossing the floor.
    ///
    /// `persist`: write the state file now. A process app's resume does not: the next write
    /// is the `running` one when the probe answers ([`Self::finish_start`]). The write is two
    /// `fsync`s — 3 ms on a quiet disk, 0.07-1.0 s measured here while other work wrote to the
    /// disk — that the thaw, and so the app's first response, waited for; and what it records
    /// matters only to a torpord restarted in between, which adopts the app from the kernel's
    /// view (frozen: standby; thawed: running) anyway. Lost: the "Start interrupted" note of
    /// such a restart.
    fn begin_resume(&self, slot: &AppSlot, persist: bool) {
        let mark = |r: &mut AppRecord| {
            r.in_flight = Some(Op::Start);
            r.transition(AppState::Starting);
        };
        if persist {
            self.set(slot, mark);
        } else {
            mark(&mut lock(&slot.st));
        }
        self.enforce_reserve(Some(&slot.cfg.name));
    }

    /// Resume a frozen process app: prefetch by `policy` (in `loading-set` mode the plan's first
    /// part), thaw, the activation's background part, probe.
    fn resume(
        &self,
        slot: &AppSlot,
        t0: Instant,
        pids: Vec<i32>,
        policy: PrefetchPolicy,
    ) -> Result<api::StartAnswer, StartError> {
        self.begin_resume(slot, false);
        let tpf = Instant::now();
        let mut timing = StartTiming {
            prefetch_mode: Some(policy.as_str().to_string()),
            ..StartTiming::default()
        };
        // loading-set: the plan's first part before thaw (falls back to full without a plan).
        let act = if policy == PrefetchPolicy::LoadingSet {
            self.activation_before_thaw(slot, &pids, &mut timing)
        } else {
            None
        };
        let policy = if policy == PrefetchPolicy::LoadingSet && act.is_none() {
            self.note_kernel_purge(slot, &mut timing);
            PrefetchPolicy::Full
        } else {
            policy
        };
        self.prefetch_process(slot, &pids, policy, &mut timing);
        timing.prefetch_s = tpf.elapsed().as_secs_f64();
        let after_thaw = |armed_probe: bool, timing: &mut StartTiming| {
            if let Some((plans, mut at)) = act {
                at.armed_probe = armed_probe;
                self.activation_after_thaw(slot, plans, &mut at);
                timing.activation = Some(at);
            }
        };
        match self.thaw_and_probe(slot, t0, &pids, after_thaw, &mut timing) {
            Ok(()) => self.finish_start(slot, timing),
            Err(e) => Err(self.fail_start(slot, e)),
        }
    }

    /// Resume step: prefetch of every process (`full`, or `working-set-only` from the working
    /// set recorded at the last Stop); nothing in `loading-set` and `none` modes.
    fn prefetch_process(
        &self,
        slot: &AppSlot,
        pids: &[i32],
        policy: PrefetchPolicy,
        timing: &mut StartTiming,
    ) {
        // Read only by the modes that use it (megabytes of JSON for a large app).
        let ws: Option<WorkingSet> = (policy != PrefetchPolicy::LoadingSet)
            .then(|| std::fs::read(self.ws_path(&slot.cfg.name)).ok())
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let do_prefetch = match policy {
            PrefetchPolicy::LoadingSet => false,
            PrefetchPolicy::Full => true,
            PrefetchPolicy::WorkingSetOnly => ws.is_some(),
            PrefetchPolicy::None => false,
        };
        let swap = procswap::sys::meminfo()
            .map(|m| m.swap_total > 0)
            .unwrap_or(false);
        if !do_prefetch || !swap {
            return;
        }
        for pid in pids {
            let opts = PrefetchOptions {
                working_set: ws.clone().filter(|w| w.pid == *pid),
                working_set_only: policy == PrefetchPolicy::WorkingSetOnly,
                ..self.prefetch_options()
            };
            if opts.working_set_only && opts.working_set.is_none() {
                continue;
            }
            self.prefetch_pid(slot, *pid, &opts, timing);
        }
        lock(&slot.st).counters.prefetches += 1;
    }

    /// One process's prefetch, added to the Start's timing. Prefetch is an optimisation: when
    /// it fails, demand paging still brings everything back.
    fn prefetch_pid(&self, slot: &AppSlot, pid: i32, opts: &PrefetchOptions, t: &mut StartTiming) {
        let name = &slot.cfg.name;
        match procswap::prefetch_with(&*self.backend, pid, opts, &NoProgress) {
            Ok(r) => {
                t.prefetch_bytes += r.read_issued_bytes;
                t.working_set_pages += r.working_set_pages;
                t.still_swapped_pages += r.still_swapped_pages;
                if let Some(s) = r.stopped {
                    t.prefetch_stopped = Some(format!("{s:?}"));
                    self.event(
                        Some(name),
                        EventKind::Reserve,
                        format!("prefetch of pid {pid} stopped early: {s:?}"),
                    );
                }
            }
            Err(procswap::Error::NoSuchProcess(_)) => {}
            Err(e) => self.event(
                Some(name),
                EventKind::Error,
                format!("prefetch of pid {pid} failed (continuing with demand paging): {e}"),
            ),
        }
    }

    /// Resume steps after the prefetch: arm the readiness request, thaw, `after_thaw` (the
    /// activation's part after thaw, told whether the probe is armed), the probe.
    fn thaw_and_probe(
        &self,
        slot: &AppSlot,
        t0: Instant,
        pids: &[i32],
        after_thaw: impl FnOnce(bool, &mut StartTiming),
        timing: &mut StartTiming,
    ) -> Result<(), ProcessStartError> {
        // The readiness request goes out before thaw (it waits in the frozen app's accept
        // backlog), so its answer marks readiness the moment the app produces it.
        let armed = slot.cfg.ready.as_ref().map(probe::arm);
        let cgs = lock(&slot.st).cgroups.clone();
        let tt = Instant::now();
        timing.to_thaw_s = tt.duration_since(t0).as_secs_f64();
        for f in self.freezers(&cgs, pids) {
            f.thaw(FREEZE_TIMEOUT).map_err(ProcessStartError::Thaw)?;
        }
        timing.thaw_s = tt.elapsed().as_secs_f64();
        // Thawed: from here on a restart finds it running (see adopt()).
        let armed_probe = armed.as_ref().is_some_and(probe::Armed::is_armed);
        timing.probe_armed = armed_probe;
        let ta = Instant::now();
        after_thaw(armed_probe, timing);
        timing.after_thaw_s = ta.elapsed().as_secs_f64();
        let tp = Instant::now();
        let res = match (&slot.cfg.ready, armed) {
            (Some(p), Some(armed)) => {
                let alive = self.alive(&cgs, &|| "the app exited".into());
                probe::wait_armed(armed, p, slot.cfg.ready_timeout, alive)
            }
            _ => Ok(0),
        };
        timing.probe_s = tp.elapsed().as_secs_f64();
        timing.total_s = t0.elapsed().as_secs_f64();
        timing.unix_time = now_unix();
        timing.probes = res.map_err(ProcessStartError::NotReady)?;
        if timing.activation.is_some() {
            self.activation_first_response(slot);
        }
        Ok(())
    }

    fn finish_start(
        &self,
        slot: &AppSlot,
        timing: StartTiming,
    ) -> Result<api::StartAnswer, StartError> {
        self.finish_start_vm(slot, timing, None)
    }

    /// Like [`Self::finish_start`], with a VM app's `vm` report added to the answer.
    fn finish_start_vm(
        &self,
        slot: &AppSlot,
        timing: StartTiming,
        vm: Option<api::VmStart>,
    ) -> Result<api::StartAnswer, StartError> {
        let name = &slot.cfg.name;
        let pid = self.set(slot, |r| {
            r.transition(AppState::Running);
            r.in_flight = None;
            r.counters.starts += 1;
            if timing.cold {
                r.counters.cold_starts += 1;
            }
            r.last_error = None;
            r.last_start = Some(timing.clone());
            r.pid
        });
        self.event(
            Some(name),
            EventKind::Start,
            format!(
                "ready ({}): prefetch {:.3}s ({} MiB), thaw {:.3}s, probe {:.3}s, total {:.3}s",
                if timing.cold { "cold" } else { "resume" },
                timing.prefetch_s,
                timing.prefetch_bytes >> 20,
                timing.thaw_s,
                timing.probe_s,
                timing.total_s
            ),
        );
        Ok(api::StartAnswer::Started(api::Started {
            app: name.clone(),
            state: AppState::Running,
            ready: true,
            pid,
            cold: timing.cold,
            timing,
            vm,
        }))
    }

    /// A Start that did not reach "ready": leave the app frozen and purged (not half-started)
    /// when processes remain, else stopped.
    fn fail_start(&self, slot: &AppSlot, why: impl std::fmt::Display) -> StartError {
        let name = slot.cfg.name.clone();
        let cgs = lock(&slot.st).cgroups.clone();
        let o = self.observe(&cgs);
        let mut left = "stopped";
        if !o.pids.is_empty() {
            let mut frozen = true;
            for f in self.freezers(&cgs, &o.pids) {
                if let Err(e) = f.freeze(FREEZE_TIMEOUT) {
                    self.event(
                        Some(&name),
                        EventKind::Error,
                        format!("freezing after a failed start: {e}"),
                    );
                    frozen = false;
                }
            }
            if frozen {
                self.set(slot, |r| {
                    r.transition(AppState::Suspended);
                    r.last_stop_unix = Some(now_unix());
                });
                left = "suspended";
                // As at a Stop (see `stop_locked_by`): only a purge makes a plan.
                self.forget_plans(slot, &o.pids);
                if self.cfg.purge != PurgePolicy::Never && self.purge_app(slot, false).is_ok() {
                    left = "standby";
                }
            } else {
                left = "running";
            }
        }
        let st = match left {
            "stopped" => AppState::Stopped,
            "suspended" => AppState::Suspended,
            "standby" => AppState::Standby,
            _ => AppState::Running,
        };
        let msg = format!("{why}; app left {left}");
        self.set(slot, |r| {
            r.transition(st);
            r.in_flight = None;
            r.counters.start_failures += 1;
            r.last_error = Some(msg.clone());
            if st == AppState::Stopped {
                r.pid = None;
            }
        });
        self.event(Some(&name), EventKind::StartFailed, msg.clone());
        StartError::Failed {
            message: msg,
            left: st,
        }
    }

    /// Stop(app): record the working set, freeze, purge per policy.
    pub fn stop(&self, name: &str) -> Result<api::StopAnswer, StopError> {
        self.stop_with(name, &StopRequest::default())
    }

    /// Stop(app) with a per-request override (see [`StopRequest`]).
    pub fn stop_with(&self, name: &str, req: &StopRequest) -> Result<api::StopAnswer, StopError> {
        let slot = self.slot(name)?;
        let method = self.stop_purge_method(slot, req)?;
        let _op = lock(&slot.op);
        self.stop_locked_by(slot, method)
    }

    /// A Stop that could not complete: the app is left (or put back) running, the error is
    /// recorded and announced.
    fn stop_failed(&self, slot: &AppSlot, why: impl std::fmt::Display) -> StopError {
        let msg = format!("{why}; app left running");
        self.set(slot, |r| {
            r.transition(AppState::Running);
            r.in_flight = None;
            r.last_error = Some(msg.clone());
        });
        self.event(Some(&slot.cfg.name), EventKind::StopFailed, msg.clone());
        StopError::Failed(msg)
    }

    /// The common start of a Stop: the app's cgroups and what runs in them, with the app
    /// marked Stopping; or (`Err`) the answer when there is nothing to stop (no process left,
    /// or already frozen in Suspended/Standby).
    fn begin_stop(&self, slot: &AppSlot) -> Result<(AppCgroups, Observed), api::AlreadyStopped> {
        let name = slot.cfg.name.clone();
        let (cgs, state) = {
            let r = lock(&slot.st);
            (r.cgroups.clone(), r.state)
        };
        let o = self.observe(&cgs);
        if o.pids.is_empty() {
            self.set(slot, |r| {
                r.transition(AppState::Stopped);
                r.pid = None;
            });
            self.activation_exited(slot);
            return Err(api::AlreadyStopped {
                app: name,
                state: AppState::Stopped,
                already: true,
            });
        }
        if o.frozen && matches!(state, AppState::Suspended | AppState::Standby) {
            return Err(api::AlreadyStopped {
                app: name,
                state,
                already: true,
            });
        }
        self.set(slot, |r| {
            r.in_flight = Some(Op::Stop);
            r.transition(AppState::Stopping);
        });
        Ok((cgs, o))
    }

    /// Stop (its `op` lock held), purging by the app's configured method.
    fn stop_locked(&self, slot: &AppSlot) -> Result<api::StopAnswer, StopError> {
        self.stop_locked_by(slot, slot.cfg.purge_method)
    }

    /// Stop of a process app (its `op` lock held): freeze, the activation's recordings (merged
    /// into the loading sets only for an ordered purge), the working set, purge per policy by
    /// `method`, then the record and the answer.
    fn stop_locked_by(
        &self,
        slot: &AppSlot,
        method: PurgeMethod,
    ) -> Result<api::StopAnswer, StopError> {
        if slot.cfg.is_vm() {
            return self.stop_vm(slot);
        }
        let t0 = Instant::now();
        let (cgs, o) = match self.begin_stop(slot) {
            Ok(x) => x,
            Err(already) => return Ok(api::StopAnswer::Already(already)),
        };
        let freeze_s = self
            .freeze_app(&cgs, &o.pids)
            .map_err(|e| self.stop_failed(slot, e))?;
        // The last Start's recordings become the loading sets the purge lays out first (a
        // kernel purge lays nothing out: they are dropped).
        let activation = self.activation_stop(slot, method == PurgeMethod::Ordered);
        // The saved plans describe what the last purge put out. This Stop may not purge (policy
        // `never` or `on-pressure`, or the purge fails): a Start from such a plan would fetch
        // what is in already, and its recorder (which takes the plan's pages as out at the
        // thaw) would record every resident page as touched before the first response. Made
        // again by the next purge.
        self.forget_plans(slot, &o.pids);
        let pid = lock(&slot.st)
            .pid
            .filter(|p| o.pids.contains(p))
            .unwrap_or(o.pids[0]);
        let tw = Instant::now();
        let ws_bytes = self.record_working_set(slot, pid);
        let ws_s = tw.elapsed().as_secs_f64();
        self.set(slot, |r| {
            r.transition(AppState::Suspended);
            r.pid = Some(pid);
            r.last_stop_unix = Some(now_unix());
            r.counters.stops += 1;
            r.working_set_bytes = ws_bytes.or(r.working_set_bytes);
        });
        let tp = Instant::now();
        let mut purge = None;
        if self.cfg.purge == PurgePolicy::Always {
            purge = self.purge_app_by(slot, false, method).ok();
        }
        let timing = api::StopTiming {
            freeze_s,
            working_set_s: ws_s,
            purge_s: tp.elapsed().as_secs_f64(),
            total_s: 0.0,
        };
        let stopped = api::ProcessStopped {
            app: slot.cfg.name.clone(),
            state: AppState::Suspended,
            timing,
            working_set_bytes: ws_bytes,
            purge,
            activation,
        };
        Ok(self.process_stopped(slot, t0, stopped))
    }

    /// Stop step: freeze every process (procswap purges only frozen targets); on failure the
    /// app is thawed again. Returns the seconds it took.
    fn freeze_app(&self, cgs: &AppCgroups, pids: &[i32]) -> Result<f64, ProcessStopError> {
        let tf = Instant::now();
        for f in self.freezers(cgs, pids) {
            if let Err(e) = f.freeze(FREEZE_TIMEOUT) {
                let _ = f.thaw(FREEZE_TIMEOUT);
                return Err(ProcessStopError::Freeze(e));
            }
        }
        Ok(tf.elapsed().as_secs_f64())
    }

    /// Stop step: the working set by residency (works on every kernel: the pages present now),
    /// saved for a `working-set-only` Start. Failures are events; the Stop goes on.
    fn record_working_set(&self, slot: &AppSlot, pid: i32) -> Option<u64> {
        let name = &slot.cfg.name;
        match procswap::workingset::from_residency(pid) {
            Ok(ws) => {
                let p = self.ws_path(name);
                let tmp = p.with_extension("json.tmp");
                let wr = serde_json::to_vec(&ws)
                    .map_err(std::io::Error::other)
                    .and_then(|v| std::fs::write(&tmp, v))
                    .and_then(|_| std::fs::rename(&tmp, &p));
                if let Err(e) = wr {
                    self.event(
                        Some(name),
                        EventKind::Error,
                        format!("saving working set: {e}"),
                    );
                }
                Some(ws.bytes())
            }
            Err(e) => {
                self.event(
                    Some(name),
                    EventKind::Error,
                    format!("working-set recording failed: {e}"),
                );
                None
            }
        }
    }

    /// The end of a process Stop: the operation done, the event, the reserve, the answer (its
    /// state and total time filled in here).
    fn process_stopped(
        &self,
        slot: &AppSlot,
        t0: Instant,
        mut stopped: api::ProcessStopped,
    ) -> api::StopAnswer {
        let name = &slot.cfg.name;
        let st = self.set(slot, |r| {
            r.in_flight = None;
            r.state
        });
        let t = &stopped.timing;
        self.event(
            Some(name),
            EventKind::Stop,
            format!(
                "{} (freeze {:.3}s, working set {} KiB in {:.3}s, purge {:.3}s)",
                st.as_str(),
                t.freeze_s,
                stopped.working_set_bytes.unwrap_or(0) >> 10,
                t.working_set_s,
                t.purge_s
            ),
        );
        self.enforce_reserve(Some(name));
        stopped.state = lock(&slot.st).state;
        stopped.timing.total_s = t0.elapsed().as_secs_f64();
        api::StopAnswer::Process(stopped)
    }

    /// The standby pool: cold-start every `prestart` app that is not running, wait until ready,
    /// freeze and purge it.
    pub fn prestart_pool(&self) {
        for slot in self.apps.values().filter(|s| s.cfg.prestart) {
            let name = slot.cfg.name.clone();
            if lock(&slot.st).state != AppState::Stopped {
                continue;
            }
            match self.start(&name) {
                Ok(_) => {
                    let _op = lock(&slot.op);
                    if let Err(e) = self.stop_locked(slot) {
                        self.event(
                            Some(&name),
                            EventKind::Error,
                            format!("prestart: stop failed: {e}"),
                        );
                        continue;
                    }
                    // The pool is purged whatever the policy says, unless purging is off.
                    if self.cfg.purge == PurgePolicy::OnPressure
                        && lock(&slot.st).state == AppState::Suspended
                    {
                        let _ = self.purge_app(slot, false);
                    }
                    let st = lock(&slot.st).state;
                    self.event(
                        Some(&name),
                        EventKind::Standby,
                        format!("prestarted, now {}", st.as_str()),
                    );
                }
                Err(e) => self.event(
                    Some(&name),
                    EventKind::Error,
                    format!("prestart failed: {e}"),
                ),
            }
        }
        self.pool_ready.store(true, Ordering::Relaxed);
    }

    // ---------- monitoring ----------

    /// One monitoring tick: paging rates and overload detectors (host and apps), app deaths,
    /// the reserve.
    pub fn tick(&self) {
        let now = Instant::now();
        if let Some((inn, out)) = vmstat_swaps() {
            let mut hm = lock(&self.host_mon);
            if let Some((was_s, was_h)) = hm.feed(now, inn + out) {
                let s = hm.status.clone();
                drop(hm);
                self.overload_events(None, was_s, was_h, &s);
            }
        }
        for slot in self.apps.values() {
            let name = slot.cfg.name.clone();
            let cgs = lock(&slot.st).cgroups.clone();
            let o = self.observe(&cgs);
            let counter = cgs
                .v1_memory
                .as_ref()
                .map(|d| Memcg::V1(d.clone()))
                .or_else(|| {
                    cgs.v2
                        .as_ref()
                        .filter(|d| d.join("memory.stat").exists())
                        .map(|d| Memcg::V2(d.clone()))
                })
                .and_then(|m| {
                    m.stat(if matches!(m, Memcg::V1(_)) {
                        "total_pgmajfault"
                    } else {
                        "pgmajfault"
                    })
                    .ok()
                    .flatten()
                })
                .unwrap_or_else(|| o.pids.iter().map(|p| majflt(*p)).sum());
            {
                let mut mon = lock(&slot.mon);
                if let Some((was_s, was_h)) = mon.feed(now, counter) {
                    let s = mon.status.clone();
                    drop(mon);
                    self.overload_events(Some(&name), was_s, was_h, &s);
                }
            }
            // Deaths: only when no operation runs on the app.
            if let Ok(_op) = slot.op.try_lock() {
                let state = lock(&slot.st).state;
                if o.pids.is_empty() && state != AppState::Stopped {
                    self.set(slot, |r| {
                        r.transition(AppState::Stopped);
                        r.pid = None;
                    });
                    self.event(
                        Some(&name),
                        EventKind::Exited,
                        format!("no process left in its cgroup (was {})", state.as_str()),
                    );
                    self.activation_exited(slot);
                }
            }
        }
        self.enforce_reserve(None);
        self.last_tick.store(now_unix() as u64, Ordering::Relaxed);
    }

    fn overload_events(&self, app: Option<&str>, was_s: bool, was_h: bool, s: &OverloadStatus) {
        let who = app
            .map(|a| format!("app {a}"))
            .unwrap_or_else(|| "host".into());
        if s.sustained != was_s {
            self.event(
                app,
                EventKind::Overload,
                format!(
                    "{who}: sustained overload {} ({} of the last 12 intervals above {} ops/s; last {:.0} ops/s)",
                    if s.sustained { "BEGINS" } else { "ends" },
                    s.overloaded_in_window,
                    self.cfg.overload_threshold,
                    s.rate
                ),
            );
        }
        if s.hotspot != was_h {
            self.event(
                app,
                EventKind::Hotspot,
                format!(
                    "{who}: hotspot {} (rate {:.0} ops/s, AR(1) prediction {:.0})",
                    if s.hotspot { "detected" } else { "cleared" },
                    s.rate,
                    s.predicted.unwrap_or(0.0)
                ),
            );
        }
    }

    pub fn host_overload(&self) -> OverloadStatus {
        lock(&self.host_mon).status.clone()
    }
}

fn vmstat_swaps() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/vmstat").ok()?;
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse::<u64>().ok()))
    };
    Some((get("pswpin ")?, get("pswpout ")?))
}

/// Purging a frozen app.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("no process to purge")]
    NoProcess,
    #[error("purge of pid {pid} failed: {source}")]
    Failed { pid: i32, source: procswap::Error },
    #[error("kernel purge failed: {0}")]
    Kernel(String),
}

/// Starting an app's process (or unit) in its cgroups.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("no command")]
    NoCommand,
    #[error("{0}")]
    BadPath(#[from] std::ffi::NulError),
    #[error("user {user}: {source}")]
    User { user: String, source: nix::Error },
    #[error("no user {0}")]
    NoUser(String),
    #[error("{}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("spawning {argv0:?}: {source}")]
    Exec {
        argv0: String,
        source: std::io::Error,
    },
    #[error("app vanished")]
    Vanished,
    #[error("systemctl: {0}")]
    Systemctl(std::io::Error),
    #[error("systemctl start {unit}: {status}")]
    UnitStart {
        unit: String,
        status: std::process::ExitStatus,
    },
    #[error("{0}: no MainPID")]
    NoMainPid(String),
    #[error("{0}: no MainPID (not running?)")]
    UnitNotRunning(String),
    #[error("{0}")]
    Cgroup(#[from] procswap::Error),
}

/// The child's own session, the app's cgroups and user, set in the forked child before exec.
fn join_before_exec(
    cmd: &mut std::process::Command,
    procs: Vec<CString>,
    ids: Option<(libc::uid_t, libc::gid_t)>,
) {
    // SAFETY: the hook runs in the forked child before exec and only makes async-signal-safe
    // system calls (setsid, open, write, close, setgroups, setgid, setuid) on data prepared
    // before the fork; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            // Own session: no controlling terminal, not in torpord's process group, so a
            // signal to torpord's group (or its death) does not reach the app.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Join the app's cgroups before exec, i.e. before the app allocates anything:
            // "0" moves the writing process itself (v1 and v2).
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            if let Some((uid, gid)) = ids {
                if libc::setgroups(1, &gid) < 0 || libc::setgid(gid) < 0 || libc::setuid(uid) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A thread that reaps the spawned app when it exits (torpord is its parent while torpord
/// lives) and records the exit. Returns its pid.
fn reap(mut child: std::process::Child, slot: Arc<AppSlot>) -> Result<i32, SpawnError> {
    let pid = child.id() as i32;
    let name = slot.cfg.name.clone();
    std::thread::Builder::new()
        .name(format!("reap-{name}"))
        .spawn(move || {
            let st = child.wait();
            let mut r = lock(&slot.st);
            if r.pid == Some(pid) {
                r.counters.exits += 1;
                r.last_error = Some(format!(
                    "process {pid} exited: {}",
                    st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
                ));
                warn!(app = %name, "{}", r.last_error.as_deref().unwrap_or(""));
            }
        })?;
    Ok(pid)
}

fn resolve_user(u: &str) -> Result<(libc::uid_t, libc::gid_t), SpawnError> {
    let user = if let Ok(uid) = u.parse::<u32>() {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
    } else {
        nix::unistd::User::from_name(u)
    }
    .map_err(|source| SpawnError::User {
        user: u.to_string(),
        source,
    })?
    .ok_or_else(|| SpawnError::NoUser(u.to_string()))?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}
