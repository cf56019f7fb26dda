//! torpord's HTTP API (HTTP/1.1 + JSON on a unix socket): the request and response types of
//! every endpoint, shared by torpord, the `torpor` CLI, vm-e2e, the benches and the tests.
//!
//! The document `openapi.json` beside this crate describes the same contract for readers
//! outside Rust; a test checks that its schemas and these types name the same fields.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v1/health` | [`Health`] |
//! | `GET /v1/apps` | [`AppList`] |
//! | `GET /v1/apps/{name}` | [`AppStatus`] |
//! | `POST /v1/apps/{name}/start` (body: [`StartRequest`], optional) | [`StartAnswer`] |
//! | `POST /v1/apps/{name}/stop` (body: [`StopRequest`], optional) | [`StopAnswer`] |
//! | `GET /v1/events?since=SEQ` | [`EventList`] |
//! | `GET /metrics` | Prometheus text |
//! | any failure | [`ErrorBody`] with an HTTP status |
//!
//! Optional values are always present on the wire (`null` when absent), except where a field
//! belongs to one kind of answer only (`vm`, `working_set_bytes`, `activation`) or is a note
//! written only when there is one (`partial` of a purge).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The OpenAPI 3 document of this API (`openapi.json`).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The endpoints' paths.
pub mod paths {
    pub const HEALTH: &str = "/v1/health";
    pub const APPS: &str = "/v1/apps";
    pub const EVENTS: &str = "/v1/events";
    pub const METRICS: &str = "/metrics";

    /// `GET /v1/apps/{name}`.
    pub fn app(name: &str) -> String {
        format!("{APPS}/{name}")
    }
    /// `POST /v1/apps/{name}/start`.
    pub fn start(name: &str) -> String {
        format!("{APPS}/{name}/start")
    }
    /// `POST /v1/apps/{name}/stop`.
    pub fn stop(name: &str) -> String {
        format!("{APPS}/{name}/stop")
    }
    /// `GET /v1/events?since=SEQ`.
    pub fn events_since(since: u64) -> String {
        format!("{EVENTS}?since={since}")
    }
}

/// An app's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// Not running (never started, or exited).
    #[default]
    Stopped,
    /// A Start is in progress.
    Starting,
    /// Running and (at its last Start) ready.
    Running,
    /// A Stop is in progress.
    Stopping,
    /// Frozen, memory not (yet) purged.
    Suspended,
    /// Frozen and purged (memory out on swap).
    Standby,
}

impl AppState {
    pub const ALL: [AppState; 6] = [
        AppState::Stopped,
        AppState::Starting,
        AppState::Running,
        AppState::Stopping,
        AppState::Suspended,
        AppState::Standby,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Stopped => "stopped",
            AppState::Starting => "starting",
            AppState::Running => "running",
            AppState::Stopping => "stopping",
            AppState::Suspended => "suspended",
            AppState::Standby => "standby",
        }
    }

    /// Frozen (Suspended or Standby).
    pub fn is_frozen(self) -> bool {
        matches!(self, AppState::Suspended | AppState::Standby)
    }
}

impl std::fmt::Display for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation in progress on an app (`in_flight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Start,
    Stop,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
        }
    }
}

/// What an app is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AppKind {
    /// An ordinary server process (tree) in its own cgroups.
    #[default]
    Process,
    /// A QEMU process whose guest runs the app: Stop asks the guest agent for its maps, stops
    /// the VM over QMP, freezes and purges QEMU; Start prefetches guest RAM by priority class,
    /// thaws and `cont`s.
    Vm,
}

/// How a purge takes an app's memory out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PurgeMethod {
    /// torpor's own (the default): `process_madvise(MADV_PAGEOUT)` of every range, the loading
    /// set first in touch order into consecutive swap slots (re-slotted where needed), the Start
    /// plan computed, then the memcg reclaim for what is left (swap cache, shmem, page cache).
    #[default]
    Ordered,
    /// Stock Linux, as it swaps an idle app out: the frozen app's memory cgroup is reclaimed by
    /// the kernel alone (v2 `memory.reclaim`, v1 `memory.force_empty`): no ordered page-out, no
    /// layout, no loading set, no plan. The baseline of "demand paging" in the benchmarks.
    Kernel,
}

impl PurgeMethod {
    pub const ALL: [PurgeMethod; 2] = [PurgeMethod::Ordered, PurgeMethod::Kernel];
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeMethod::Ordered => "ordered",
            PurgeMethod::Kernel => "kernel",
        }
    }
}

impl std::fmt::Display for PurgeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every failure: `{"error": {"code": ..., "message": ...}}` with a 4xx/5xx status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A failure's stable code (`unknown_app`, `bad_request`, `start_failed`, `stop_failed`,
/// `not_found`, `method_not_allowed`, `forbidden`, `internal`) and its message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// Prestart of the standby pool finished.
    pub pool_ready: bool,
    /// Number of configured apps.
    pub apps: usize,
    pub backend: String,
    pub backend_why: String,
    /// Which hierarchies apps are placed in, in words.
    pub cgroups: String,
    pub uptime_s: f64,
    /// Seconds since the last monitor tick.
    pub last_tick_age_s: u64,
    pub reserve_bytes: u64,
    pub mem_available_bytes: Option<u64>,
    pub host_overload: OverloadStatus,
}

/// `GET /v1/apps`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppList {
    pub apps: Vec<AppStatus>,
}

/// `GET /v1/apps/{name}`: one app's record and what the kernel says about it now.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub state: AppState,
    /// An operation holds the app's lock.
    pub busy: bool,
    pub in_flight: Option<Op>,
    pub pid: Option<i32>,
    /// The processes in the app's cgroup.
    pub pids: Vec<i32>,
    pub frozen: bool,
    pub prestart: bool,
    pub command: Option<Vec<String>>,
    pub unit: Option<String>,
    pub cgroups: AppCgroups,
    pub memory: MemoryStatus,
    pub last_stop_unix: Option<f64>,
    pub last_start: Option<StartTiming>,
    pub last_purge: Option<PurgeSummary>,
    pub last_error: Option<String>,
    /// Bytes of the working set recorded at the last Stop.
    pub working_set_bytes: Option<u64>,
    pub counters: Counters,
    pub overload: OverloadStatus,
    pub kind: AppKind,
    /// VM apps only (`null` for process apps).
    pub vm: Option<VmStatus>,
}

/// The cgroup directories of one app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCgroups {
    pub v2: Option<PathBuf>,
    pub v1_memory: Option<PathBuf>,
    pub v1_freezer: Option<PathBuf>,
}

/// An app's memory now (bytes; from /proc and its memory cgroup).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStatus {
    pub resident_bytes: u64,
    pub resident_anon_bytes: u64,
    pub swapped_bytes: u64,
    pub memcg_bytes: Option<u64>,
}

/// Transition counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub starts: u64,
    pub cold_starts: u64,
    pub start_failures: u64,
    pub stops: u64,
    pub purges: u64,
    pub reserve_purges: u64,
    pub prefetches: u64,
    pub exits: u64,
}

/// Overload figures of one app or of the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OverloadStatus {
    /// Paging operations per second in the last interval.
    pub rate: f64,
    pub overloaded: bool,
    pub overloaded_in_window: usize,
    /// Sustained overload: 8 of the last 12 intervals overloaded.
    pub sustained: bool,
    /// Hotspot: 3 of the last 5 above the threshold and the AR(1) prediction above.
    pub hotspot: bool,
    pub predicted: Option<f64>,
}

/// Timing of a successful Start, seconds (also the app's `last_start`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartTiming {
    /// A cold start (process spawned) rather than a resume.
    pub cold: bool,
    pub spawn_s: f64,
    pub prefetch_s: f64,
    pub thaw_s: f64,
    pub probe_s: f64,
    pub total_s: f64,
    /// A resume of a process app: from the Start request to the thaw (everything the app
    /// waits for: the prefetch, arming the probe, the app's locks and cgroup reads), and the
    /// work between the thaw and the probe wait (the `loading-set` recorders and threads).
    #[serde(default)]
    pub to_thaw_s: f64,
    #[serde(default)]
    pub after_thaw_s: f64,
    /// Readiness probes it took (1 with an armed probe the app answered ready; 0 without a probe).
    #[serde(default)]
    pub probes: u32,
    /// The probe's request was sent before the thaw (an `http` or `redis` probe reaching the
    /// frozen app's socket backlog): `ready` is the moment the app answered, no polling interval.
    #[serde(default)]
    pub probe_armed: bool,
    pub prefetch_bytes: u64,
    pub working_set_pages: u64,
    pub still_swapped_pages: u64,
    /// Why prefetch stopped early (free-memory floor, budget), if it did.
    pub prefetch_stopped: Option<String>,
    /// The prefetch mode this Start ran with (the configured one or the request's override).
    #[serde(default)]
    pub prefetch_mode: Option<String>,
    /// `loading-set` mode: the plan's parts, what was read before thaw, notes.
    #[serde(default)]
    pub activation: Option<ActivationTiming>,
    /// When the probe returned (the app was ready), Unix seconds.
    pub unix_time: f64,
}

/// The `loading-set` part of a Start's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivationTiming {
    /// Processes with a plan (the others fell back).
    pub planned_pids: usize,
    /// Pages of the plans' parts: before thaw / rest of the loading set / everything else.
    pub first_pages: u64,
    pub loading_rest_pages: u64,
    pub rest_pages: u64,
    /// Pages of the first part read right after the thaw, ahead of the loading set's rest,
    /// instead of before it (a first part above torpord's cap: the app maps each page read
    /// before the thaw itself, and can start on them only after it).
    #[serde(default)]
    pub first_after_thaw_pages: u64,
    /// Bytes whose reads were issued before thaw, and in how many swap extents.
    pub first_issued_bytes: u64,
    pub first_swap_extents: u64,
    /// Of those, copy-on-write pages of private file mappings (read before thaw by our own
    /// faults, `process_vm_readv`, several at a time).
    #[serde(default)]
    pub first_cow_pages: u64,
    pub first_fetch_s: f64,
    /// Where the time before thaw went: loading the saved plans, issuing the `first` reads;
    /// `recorder_start_s` is 0 since the recorders start after the thaw, in their own thread
    /// (older answers: their first pagemap pass before the thaw).
    #[serde(default)]
    pub plan_load_s: f64,
    #[serde(default)]
    pub first_issue_s: f64,
    #[serde(default)]
    pub recorder_start_s: f64,
    /// Objects skipped (deleted, truncated, replaced since Stop) and plan notes.
    pub notes: Vec<String>,
    /// The readiness probe was armed (its request sent before the thaw, like
    /// `StartTiming.probe_armed`): its answer is the app's own first response, so the background
    /// fetch starts and the first part is marked right at it, with no extra window.
    pub armed_probe: bool,
    /// Pages of all parts per kind, for the whole app: an object several processes share
    /// (shmem such as PostgreSQL's `shared_buffers`, a data file) counted once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_pages: Option<KindCounts>,
}

/// A count per kind of memory: private anonymous, shared memory (shmem/tmpfs/SysV/memfd), page
/// cache of files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounts {
    pub anon: u64,
    pub shmem: u64,
    pub file: u64,
}

/// What a purge achieved (also the app's `last_purge`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PurgeSummary {
    pub memcg_before_bytes: Option<u64>,
    pub memcg_after_bytes: Option<u64>,
    /// memcg before - after (the memory really freed).
    pub freed_bytes: u64,
    pub resident_bytes: u64,
    pub resident_anon_bytes: u64,
    pub swapped_bytes: u64,
    pub seconds: f64,
    pub reclaim_note: Option<String>,
    /// Which purge ran (records written before it existed read as `ordered`).
    #[serde(default)]
    pub method: PurgeMethod,
    /// Growth of the app's swapped anonymous bytes (pagemap) by this purge: what it moved to
    /// swap. Shmem written to swap is not in it (pagemap shows no swap entry for it).
    #[serde(default)]
    pub swap_moved_bytes: u64,
    /// The purge is partial (swap full...): procswap's note, per process. Absent when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
    /// Resident at Stop (before the page-out) per kind, in bytes, for the whole app: every
    /// process of its cgroup, an object several of them share counted once. Absent when no
    /// snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_kinds_bytes: Option<KindCounts>,
    /// The app's swapped shmem written again in the order its next Start reads it (loading-set
    /// mode, after the reclaim): see `procswap::shmlayout`. Absent when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shmem_layout: Option<ShmemLayout>,
    pub unix_time: f64,
}

/// The shmem re-layout of a purge ([`PurgeSummary::shmem_layout`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShmemLayout {
    /// Bytes read back and written again.
    pub bytes: u64,
    pub seconds: f64,
    /// Of `seconds`, waiting for the reads.
    pub read_seconds: f64,
    /// Why it stopped early, objects skipped: empty when it did everything.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The optional JSON body of `POST /v1/apps/{name}/start`: `{"prefetch": MODE}` overrides the
/// configured prefetch for this Start only. MODE for a process app: `full`, `working-set-only`,
/// `loading-set`, `none`; for a VM app: `loading-set` (the default), `priority`, `full`, `none`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    #[serde(default)]
    pub prefetch: Option<String>,
}

/// The optional JSON body of `POST /v1/apps/{name}/stop`: `{"purge": "kernel"}` (or
/// `"ordered"`) overrides the app's configured purge method (`purge_method`, default `ordered`)
/// for the purge this Stop does (whether it purges at all stays the `purge` policy's). Process
/// apps only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    #[serde(default)]
    pub purge: Option<PurgeMethod>,
}

/// `POST /v1/apps/{name}/start`: the app is ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
// One answer per request: its size does not matter, matching on it unboxed does.
#[allow(clippy::large_enum_variant)]
pub enum StartAnswer {
    /// It was running already (and answered its readiness probe).
    AlreadyRunning(AlreadyRunning),
    /// Cold-started or resumed.
    Started(Started),
}

impl StartAnswer {
    pub fn app(&self) -> &str {
        match self {
            StartAnswer::AlreadyRunning(a) => &a.app,
            StartAnswer::Started(s) => &s.app,
        }
    }
    pub fn state(&self) -> AppState {
        match self {
            StartAnswer::AlreadyRunning(a) => a.state,
            StartAnswer::Started(s) => s.state,
        }
    }
    pub fn ready(&self) -> bool {
        match self {
            StartAnswer::AlreadyRunning(a) => a.ready,
            StartAnswer::Started(s) => s.ready,
        }
    }
    pub fn already_running(&self) -> bool {
        matches!(self, StartAnswer::AlreadyRunning(_))
    }
    /// The Start's timing (`None` when it was running already).
    pub fn started(&self) -> Option<&Started> {
        match self {
            StartAnswer::AlreadyRunning(_) => None,
            StartAnswer::Started(s) => Some(s),
        }
    }
}

/// A Start of an app that was running already.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlreadyRunning {
    pub app: String,
    pub state: AppState,
    pub ready: bool,
    /// Always true.
    pub already_running: bool,
    pub timing: ProbeTiming,
}

/// The probe of an app found running.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeTiming {
    pub probe_s: f64,
    pub total_s: f64,
}

/// A Start that cold-started or resumed the app.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub app: String,
    pub state: AppState,
    pub ready: bool,
    pub pid: Option<i32>,
    pub cold: bool,
    pub timing: StartTiming,
    /// VM apps only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmStart>,
}

/// The `vm` part of a VM app's Start answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VmStart {
    /// A resume: prefetch by mode, thaw, QMP `cont`.
    Resume(Box<VmResume>),
    /// A cold start: QEMU answers QMP.
    Cold(VmColdStart),
}

impl VmStart {
    /// The prefetch mode asked for (a cold start: the configured one).
    pub fn mode(&self) -> &str {
        match self {
            VmStart::Resume(r) => &r.mode,
            VmStart::Cold(c) => &c.mode,
        }
    }
    pub fn resume(&self) -> Option<&VmResume> {
        match self {
            VmStart::Resume(r) => Some(r),
            VmStart::Cold(_) => None,
        }
    }
}

/// A cold start of a VM app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmColdStart {
    /// Always true.
    pub cold: bool,
    /// The configured prefetch mode.
    pub mode: String,
    pub qemu: String,
    /// QMP `query-status`.
    pub status: String,
}

/// A resume of a VM app (times in ms).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmResume {
    /// The requested mode, and the one that ran (`priority` without maps runs as `full`).
    pub mode: String,
    pub effective: String,
    /// `fresh` (maps from the last Stop) or `none`.
    pub maps: String,
    pub maps_note: String,
    pub prefetch_ms: f64,
    pub prefetched_pages: u64,
    pub prefetched_bytes: u64,
    pub qemu_own_pages: u64,
    pub qemu_own_ms: f64,
    pub single_pass: bool,
    pub plan_ms: f64,
    pub fetch_call_ms: f64,
    pub classes: Vec<ClassFetch>,
    pub skipped_free_pages: u64,
    pub guest_ram_bytes: Option<u64>,
    pub guest_swapped_before_pages: Option<u64>,
    pub guest_swapped_after_prefetch_pages: Option<u64>,
    pub thaw_ms: f64,
    pub cont_ms: f64,
    pub probe_ms: f64,
    pub ready_ms: f64,
    pub pswpin_delta: u64,
    pub pswpin_delta_prefetch: u64,
    /// The background fetcher (`priority` and `loading-set` modes).
    pub background: Option<TwinkleStats>,
    /// `loading-set` mode: the set this Start worked from.
    #[serde(default)]
    pub loading_set: Option<VmLoadingSet>,
}

/// The loading set of a VM Start (`loading-set` mode): QEMU's pages touched after `cont` in
/// earlier cycles, guest-free pages left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmLoadingSet {
    /// Cycles merged into the set (0: no set yet; this Start fetches nothing before `cont`).
    pub cycles: u32,
    /// Pages fetched before `cont` (touched before the first response), and in the
    /// background first (touched after it), free pages excluded.
    pub first_pages: u64,
    pub later_pages: u64,
    /// Of `first_pages`, copy-on-write pages of QEMU's private file mappings, faulted in
    /// (`MADV_WILLNEED` does not read those from swap).
    #[serde(default)]
    pub first_cow_pages: u64,
    /// QEMU's file pages (binary, libraries, files it reads) read ahead before `cont`: those
    /// touched before the first response in earlier cycles and evicted by the purge.
    #[serde(default)]
    pub first_file_pages: u64,
    /// Whether this Start records the next set (the candidates from the last Stop).
    pub recording: bool,
    pub notes: Vec<String>,
}

/// Per-class figures of a VM Start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassFetch {
    pub class: u8,
    pub name: String,
    /// Guest pages of this class (any state; free pages excluded).
    pub planned_pages: u64,
    /// Of them, swapped when the prefetch looked.
    pub swapped_pages: u64,
    /// Pages whose reads were issued before `cont`.
    pub fetched_pages: u64,
    pub fetched_bytes: u64,
    /// Time of this class's prefetch call, ms.
    pub ms: f64,
}

/// Figures of a VM's background fetch (Twinkle).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinkleStats {
    pub running: bool,
    pub segments: u64,
    /// Segments with swapped pages when watching began.
    pub segments_with_swapped: u64,
    pub segments_triggered: u64,
    pub segments_rest: u64,
    /// Pages read by triggered segment fetches.
    pub twinkle_pages: u64,
    /// Pages read by the rest phase.
    pub rest_pages: u64,
    /// Pages read by the preload before watching (a VM loading set's later part, ...).
    #[serde(default)]
    pub preload_pages: u64,
    pub rounds: u64,
    pub seconds: f64,
    /// Why it ended: "finished", "stopped", or an error.
    pub ended: Option<String>,
    pub error: Option<String>,
}

/// `POST /v1/apps/{name}/stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
// One answer per request: its size does not matter, matching on it unboxed does.
#[allow(clippy::large_enum_variant)]
pub enum StopAnswer {
    /// Nothing to stop: no process left (`stopped`), or frozen already.
    Already(AlreadyStopped),
    /// A VM app stopped.
    Vm(Box<VmStopped>),
    /// A process app stopped.
    Process(ProcessStopped),
}

impl StopAnswer {
    pub fn app(&self) -> &str {
        match self {
            StopAnswer::Already(a) => &a.app,
            StopAnswer::Vm(v) => &v.app,
            StopAnswer::Process(p) => &p.app,
        }
    }
    pub fn state(&self) -> AppState {
        match self {
            StopAnswer::Already(a) => a.state,
            StopAnswer::Vm(v) => v.state,
            StopAnswer::Process(p) => p.state,
        }
    }
    pub fn already(&self) -> bool {
        matches!(self, StopAnswer::Already(_))
    }
    pub fn timing(&self) -> Option<&StopTiming> {
        match self {
            StopAnswer::Already(_) => None,
            StopAnswer::Vm(v) => Some(&v.timing),
            StopAnswer::Process(p) => Some(&p.timing),
        }
    }
    pub fn purge(&self) -> Option<&PurgeSummary> {
        match self {
            StopAnswer::Already(_) => None,
            StopAnswer::Vm(v) => v.purge.as_ref(),
            StopAnswer::Process(p) => p.purge.as_ref(),
        }
    }
    pub fn vm(&self) -> Option<&VmStop> {
        match self {
            StopAnswer::Vm(v) => Some(&v.vm),
            _ => None,
        }
    }
}

/// A Stop with nothing to do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlreadyStopped {
    pub app: String,
    pub state: AppState,
    /// Always true.
    pub already: bool,
}

/// A Stop's phases, seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopTiming {
    pub freeze_s: f64,
    pub working_set_s: f64,
    pub purge_s: f64,
    pub total_s: f64,
}

/// A process app's Stop.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStopped {
    pub app: String,
    pub state: AppState,
    pub timing: StopTiming,
    pub working_set_bytes: Option<u64>,
    /// The purge, when the policy purged at Stop.
    pub purge: Option<PurgeSummary>,
    /// `loading-set` mode: what became of the last Start's recordings.
    pub activation: Vec<String>,
}

/// A VM app's Stop.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmStopped {
    pub app: String,
    pub state: AppState,
    pub timing: StopTiming,
    pub purge: Option<PurgeSummary>,
    pub vm: VmStop,
}

/// The `vm` part of a VM app's Stop answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmStop {
    /// `fresh` (the agent answered) or `none`.
    pub maps: String,
    pub agent_note: String,
    pub agent_ms: f64,
    pub agent: Option<MapsSummary>,
    pub qmp_stop_ms: f64,
    /// QMP `query-status` before and after `stop`.
    pub status_before: String,
    pub status_after: String,
    pub guest_ram: Option<GuestRamReport>,
    pub evidence: StopEvidence,
    /// `loading-set` mode: the recording merged, the layout written, what the next Start watches.
    #[serde(default)]
    pub loading_set_notes: Vec<String>,
}

/// What the guest agent's maps held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapsSummary {
    pub agent: String,
    /// "module" (exact) or "portable" (approximate).
    pub source: String,
    pub approximate: bool,
    pub layout_pages: u64,
    pub layout_ranges: usize,
    pub free_pages: Option<u64>,
    /// Pages per category 0..=8.
    pub priority_counts: Option<Vec<u64>>,
    pub window_ms: Option<u32>,
    pub notes: Vec<String>,
}

/// Guest RAM as QEMU maps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRamReport {
    pub bytes: u64,
    pub ranges: Vec<RamRange>,
}

/// One guest-physical RAM range and where QEMU maps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamRange {
    pub gpa: u64,
    pub len: u64,
    pub block: String,
    pub block_offset: u64,
    pub hva: u64,
}

impl RamRange {
    /// The guest-physical address just past the range.
    pub fn gpa_end(&self) -> u64 {
        self.gpa + self.len
    }
}

/// Page evidence around a VM's purge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopEvidence {
    pub before: Evidence,
    pub after: Evidence,
    /// Guest RAM left (almost) nothing resident.
    pub evicted: bool,
    pub purge_retries: u32,
}

/// Page figures of a QEMU process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Guest RAM pages present in QEMU, not counting zero-page mappings.
    pub guest_resident_pages: Option<u64>,
    /// Guest RAM pages that map the shared zero page (read, never written: no memory).
    pub guest_zero_pages: Option<u64>,
    pub guest_swapped_pages: Option<u64>,
    pub qemu_resident_bytes: u64,
    pub qemu_swapped_bytes: u64,
    pub swap_cached_bytes: u64,
}

/// The `vm` part of a VM app's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    pub qmp: PathBuf,
    pub agent: Option<PathBuf>,
    /// The configured prefetch mode.
    pub prefetch: String,
    /// The maps of the last Stop.
    pub maps: Option<MapsSummary>,
    pub guest_ram_bytes: Option<u64>,
    /// The background fetcher (running, or the last one's final figures).
    pub background: Option<TwinkleStats>,
    /// `loading-set` mode: the last Start's recorder is still watching (until its stop rule
    /// or the next Stop).
    #[serde(default)]
    pub recording: bool,
}

/// `GET /v1/events?since=SEQ`: the events after `since` (the last 1024 are kept).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<Event>,
}

/// An event (also logged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub unix_time: f64,
    pub app: Option<String>,
    pub kind: EventKind,
    pub message: String,
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// torpord started (backend, cgroups).
    Startup,
    /// An app adopted after a restart of torpord.
    Adopt,
    /// Adoption found something off (a vanished app, an interrupted freeze).
    AdoptWarning,
    Spawn,
    Start,
    StartFailed,
    Stop,
    StopFailed,
    Purge,
    PurgeFailed,
    ReservePurge,
    /// MemAvailable under the reserve, or a prefetch stopped at the floor.
    Reserve,
    /// A prestarted app parked in the standby pool.
    Standby,
    Exited,
    Overload,
    Hotspot,
    /// The guest agent of a VM app did not answer.
    Agent,
    /// `loading-set` mode: recordings, plans, the background fetch.
    Activation,
    Error,
}

impl EventKind {
    pub const ALL: [EventKind; 19] = [
        EventKind::Startup,
        EventKind::Adopt,
        EventKind::AdoptWarning,
        EventKind::Spawn,
        EventKind::Start,
        EventKind::StartFailed,
        EventKind::Stop,
        EventKind::StopFailed,
        EventKind::Purge,
        EventKind::PurgeFailed,
        EventKind::ReservePurge,
        EventKind::Reserve,
        EventKind::Standby,
        EventKind::Exited,
        EventKind::Overload,
        EventKind::Hotspot,
        EventKind::Agent,
        EventKind::Activation,
        EventKind::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Startup => "startup",
            EventKind::Adopt => "adopt",
            EventKind::AdoptWarning => "adopt_warning",
            EventKind::Spawn => "spawn",
            EventKind::Start => "start",
            EventKind::StartFailed => "start_failed",
            EventKind::Stop => "stop",
            EventKind::StopFailed => "stop_failed",
            EventKind::Purge => "purge",
            EventKind::PurgeFailed => "purge_failed",
            EventKind::ReservePurge => "reserve_purge",
            EventKind::Reserve => "reserve",
            EventKind::Standby => "standby",
            EventKind::Exited => "exited",
            EventKind::Overload => "overload",
            EventKind::Hotspot => "hotspot",
            EventKind::Agent => "agent",
            EventKind::Activation => "activation",
            EventKind::Error => "error",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
