//! torpord's configuration (TOML).
//!
//! ```toml
//! socket = "/run/torpor/torpord.sock"   # HTTP+JSON API
//! socket_group = "torpor"               # peers in this group may use the API (root always may)
//! state_dir = "/var/lib/torpor"
//! reserve = "512M"                      # keep MemAvailable above this
//! purge = "always"                      # always | never | on-pressure
//! prefetch = "full"                     # full | working-set-only | none
//! backend = "auto"                      # auto | stock | kmod
//! cgroup_parent = "torpor"              # apps go to <hierarchy>/<cgroup_parent>/<app>
//! sample_interval = "10s"               # overload detector sampling
//!
//! [[app]]
//! name = "web"
//! command = ["/usr/bin/python3", "-m", "http.server", "8080"]
//! workdir = "/srv/web"
//! env = { LANG = "C.UTF-8" }
//! ready = { http = "http://127.0.0.1:8080/" }   # or { tcp = 8080 } or { command = ["curl", "-f", "..."] }
//! ready_timeout = "30s"
//! prestart = true
//! purge_method = "ordered"                      # ordered (torpor's, default) | kernel (stock reclaim)
//! shmem_layout = true                           # default: shared memory re-laid in Start order at Stop
//!
//! [[app]]
//! name = "guest"
//! kind = "vm"                                   # default "process"
//! command = ["qemu-system-x86_64", "...", "-qmp", "unix:/run/x/guest.qmp,server=on,wait=off"]
//! vm = { qmp = "/run/x/guest.qmp", agent = "/run/x/guest.agent" }
//! vm_prefetch = "loading-set"                   # loading-set | priority | full | none
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default config path.
pub const DEFAULT_CONFIG: &str = "/etc/torpor/torpord.toml";
/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/torpor/torpord.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/torpor";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: Invalid },
}

/// A configuration that parses but does not make sense (one variant per rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("socket_mode {0:?}: an octal mode such as \"0660\"")]
    SocketMode(String),
    #[error("backend {0:?}: use auto, stock or kmod")]
    Backend(String),
    #[error("cgroup_parent {0:?} must be one directory name of [A-Za-z0-9_.-]")]
    CgroupParent(String),
    #[error("sample_interval must be at least 50ms")]
    SampleInterval,
    #[error("app name {0:?}: use 1-64 characters of [A-Za-z0-9_.-], not starting with '.'")]
    AppName(String),
    #[error("app {0:?} is defined twice")]
    Twice(String),
    #[error("app {0:?}: command is empty")]
    EmptyCommand(String),
    #[error("app {0:?}: give exactly one of command (argv) or unit")]
    CommandOrUnit(String),
    #[error("app {0:?}: ready.command is empty")]
    EmptyReadyCommand(String),
    /// The URL's problem, as the probe words it.
    #[error("app {app:?}: ready.http: {why}")]
    ReadyUrl { app: String, why: String },
    #[error("app {0:?}: kind = \"vm\" needs vm = {{ qmp = \"/path/to/qmp.sock\" }}")]
    VmWithoutVm(String),
    #[error("app {0:?}: a vm app is started with command (the QEMU argv), not unit")]
    VmUnit(String),
    #[error("app {app:?}: vm.{what} {path:?} must be an absolute path")]
    VmRelative {
        app: String,
        what: &'static str,
        path: PathBuf,
    },
    #[error("app {0:?}: vm.qmp_timeout and vm.agent_timeout must be > 0")]
    VmTimeout(String),
    #[error("app {0:?}: vm = {{...}} needs kind = \"vm\"")]
    VmOnProcess(String),
    #[error("app {0:?}: vm_prefetch needs kind = \"vm\"")]
    VmPrefetchOnProcess(String),
    #[error(
        "app {0:?}: purge_method = \"kernel\" is for process apps (a vm app is purged in order)"
    )]
    KernelPurgeOnVm(String),
}

/// When a stopped (frozen) app is purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PurgePolicy {
    /// Right after every Stop (pre-purge, as in the paper).
    #[default]
    Always,
    /// Never purge; the kernel pages out as it sees fit.
    Never,
    /// Only when MemAvailable drops below the reserve (least recently stopped first).
    OnPressure,
}

/// What is fetched before thaw on Start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PrefetchPolicy {
    /// Near-warm activation (the default): before thaw only the pages the app touched before
    /// its first response last time (its loading set, laid out contiguously on swap by the
    /// purge), read into the caches without mapping them; after thaw the rest of the loading
    /// set, then everything else, in the background at low I/O priority, while the app's
    /// touches are recorded for the next cycle. Every kind of memory: anonymous, shmem, file.
    #[default]
    LoadingSet,
    /// Everything swapped, working set first (when one was recorded), before thaw.
    Full,
    /// Only the recorded working set (nothing when none is recorded yet): the rest comes back on
    /// demand, which keeps the residency working-set method exact.
    WorkingSetOnly,
    /// No prefetch: plain thaw and demand paging (the paper's "regular resume").
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Group allowed to use the API (besides root). The socket is chowned to it.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Socket file mode (octal string), default "0660".
    #[serde(default = "default_mode")]
    pub socket_mode: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Free-memory floor (MemAvailable), e.g. "512M".
    #[serde(default = "default_reserve", deserialize_with = "de_size")]
    pub reserve: u64,
    #[serde(default)]
    pub purge: PurgePolicy,
    #[serde(default)]
    pub prefetch: PrefetchPolicy,
    /// auto | stock | kmod
    #[serde(default = "default_backend")]
    pub backend: String,
    #[serde(default = "default_cgroup_parent")]
    pub cgroup_parent: String,
    /// Overload detector sample interval.
    #[serde(default = "default_interval", deserialize_with = "de_duration")]
    pub sample_interval: Duration,
    /// Paging operations per second above which an interval counts as overloaded.
    #[serde(default = "default_threshold")]
    pub overload_threshold: f64,
    /// Mapping-pass threads for prefetch.
    #[serde(default = "default_threads")]
    pub prefetch_threads: usize,
    #[serde(default, rename = "app")]
    pub apps: Vec<AppConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub name: String,
    /// argv of the server (exactly one of `command` and `unit`).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// An existing systemd unit: started with `systemctl start`, its processes moved into the
    /// app's cgroups (memory charged before the move stays where it was: prefer `command`).
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub ready: Option<Probe>,
    #[serde(default = "default_ready_timeout", deserialize_with = "de_duration")]
    pub ready_timeout: Duration,
    #[serde(default)]
    pub prestart: bool,
    /// Optional user to run as (name or uid).
    #[serde(default)]
    pub user: Option<String>,
    /// `process` (default) or `vm` (a QEMU process with a QMP socket; needs `vm = {...}`).
    #[serde(default)]
    pub kind: AppKind,
    /// VM apps: where QEMU's QMP socket and the guest agent's socket are.
    #[serde(default)]
    pub vm: Option<VmConfig>,
    /// VM apps: what Start fetches before `cont` (default `loading-set`).
    #[serde(default)]
    pub vm_prefetch: Option<VmPrefetch>,
    /// How this app's purges take its memory out: `ordered` (torpor's own, the default) or
    /// `kernel` (stock Linux: the kernel reclaims the frozen app's memory cgroup, no layout,
    /// no loading set, no plan; process apps only). A Stop's `{"purge": ...}` overrides it.
    #[serde(default)]
    pub purge_method: PurgeMethod,
    /// Process apps in `loading-set` mode: after each Stop's reclaim, write the app's swapped
    /// shared memory again in the order the next Start reads it (`procswap::shmlayout`: one read
    /// and one write of every page at Stop), and let the Start's background read it in 4 MiB steps
    /// (a few large reads each) behind a deeper queue, moving it into the page cache one step
    /// behind its reads (without it: 1 MiB steps four reads deep, each moved before the next is
    /// read, since a step of scattered slots is one read per page). On by default (an app without
    /// swapped shared memory costs nothing; `false` saves PostgreSQL's Stop ~2 s and a read and a
    /// write of its segment): with PostgreSQL (1 GB `shared_buffers`) the segment comes back in
    /// 1.5-2.5 s instead of 2.6-3.1 s, and TPS over the first 10 s after a Start was higher in
    /// every interleaved pair of runs (2026-12-03, sessions 12-13: 0.75-0.88x warm against
    /// 0.72-0.85x); with the 4 MiB steps (session 15) in ~1-1.4 s. Its first query was sometimes
    /// slow (0.13-1.2 s) until the Stop waited for the swap discards of the old slots
    /// (bench/results/activation/README.md, "Session 13").
    #[serde(default = "shmem_layout_default")]
    pub shmem_layout: bool,
}

/// [`AppConfig::shmem_layout`] unless the app's config says otherwise.
fn shmem_layout_default() -> bool {
    true
}

impl AppConfig {
    pub fn is_vm(&self) -> bool {
        self.kind == AppKind::Vm
    }
    /// The prefetch mode of a VM app (its `vm_prefetch`, default `loading-set`).
    pub fn vm_prefetch_mode(&self) -> VmPrefetch {
        self.vm_prefetch.unwrap_or_default()
    }
}

pub use torpor_api::{AppKind, PurgeMethod};

/// `vm = { qmp = "...", agent = "..." }` of a `kind = "vm"` app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// QEMU's QMP unix socket (`-qmp unix:PATH,server=on,wait=off`).
    pub qmp: PathBuf,
    /// Host end of the guest agent's virtio-serial chardev (a unix socket QEMU listens on:
    /// `-chardev socket,id=tg,path=PATH,server=on,wait=off`). Absent: no guest maps.
    #[serde(default)]
    pub agent: Option<PathBuf>,
    /// Budget for the whole agent exchange at Stop (connect, HELLO, 3 maps); past it, Stop
    /// proceeds without maps.
    #[serde(default = "default_agent_timeout", deserialize_with = "de_duration")]
    pub agent_timeout: Duration,
    /// Timeout of one QMP command (and of connecting to the socket).
    #[serde(default = "default_qmp_timeout", deserialize_with = "de_duration")]
    pub qmp_timeout: Duration,
    /// After a `priority` Start, fetch the rest in the background with Twinkle's segment rule.
    #[serde(default = "default_true")]
    pub background: bool,
}

/// What a VM app's Start fetches before the VM runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VmPrefetch {
    /// The VM's loading set (QEMU's pages touched from `cont` until the app answered, and a
    /// window after, in earlier cycles): the part touched before the first response before
    /// `cont`, ordered by the guest's priority classes, guest-free pages never; the rest of it,
    /// QEMU's own memory and classes 0-5 in the background, then Twinkle. The purge lays the
    /// set out first. Without guest maps: like `full`.
    #[default]
    LoadingSet,
    /// Guest priority classes 0-5 (kernel .. user data of active processes) minus the pages the
    /// guest reported free, before `cont`; the rest in the background (Twinkle). Without guest
    /// maps: like `full`.
    Priority,
    /// All of guest RAM that is on swap, before `cont`.
    Full,
    /// Nothing: demand paging.
    None,
}

impl VmPrefetch {
    pub fn as_str(self) -> &'static str {
        match self {
            VmPrefetch::LoadingSet => "loading-set",
            VmPrefetch::Priority => "priority",
            VmPrefetch::Full => "full",
            VmPrefetch::None => "none",
        }
    }
}

/// A prefetch mode's name that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?} ({})", choices.join(", "))]
pub struct UnknownMode {
    what: &'static str,
    given: String,
    choices: Vec<&'static str>,
}

/// The mode of `modes` named `s`.
fn mode_named<T: Copy>(
    s: &str,
    what: &'static str,
    modes: &[(&'static str, T)],
) -> Result<T, UnknownMode> {
    modes
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, m)| *m)
        .ok_or_else(|| UnknownMode {
            what,
            given: s.to_string(),
            choices: modes.iter().map(|(n, _)| *n).collect(),
        })
}

impl VmPrefetch {
    /// Every VM prefetch mode, the default first.
    pub const ALL: [VmPrefetch; 4] = [
        VmPrefetch::LoadingSet,
        VmPrefetch::Priority,
        VmPrefetch::Full,
        VmPrefetch::None,
    ];
}

impl std::str::FromStr for VmPrefetch {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        let modes = Self::ALL.map(|m| (m.as_str(), m));
        mode_named(s, "VM prefetch mode", &modes)
    }
}

/// Every name a Start's `prefetch` may carry (process and VM modes, each once), for the CLI.
pub fn start_prefetch_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = PrefetchPolicy::ALL.iter().map(|m| m.as_str()).collect();
    for m in VmPrefetch::ALL {
        if !names.contains(&m.as_str()) {
            names.push(m.as_str());
        }
    }
    names
}

impl PrefetchPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PrefetchPolicy::LoadingSet => "loading-set",
            PrefetchPolicy::Full => "full",
            PrefetchPolicy::WorkingSetOnly => "working-set-only",
            PrefetchPolicy::None => "none",
        }
    }
}

impl PrefetchPolicy {
    /// Every process prefetch mode, the default first.
    pub const ALL: [PrefetchPolicy; 4] = [
        PrefetchPolicy::LoadingSet,
        PrefetchPolicy::Full,
        PrefetchPolicy::WorkingSetOnly,
        PrefetchPolicy::None,
    ];
}

impl std::str::FromStr for PrefetchPolicy {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        let modes = Self::ALL.map(|m| (m.as_str(), m));
        mode_named(s, "prefetch mode", &modes)
    }
}

/// Readiness probe: the app is ready when it answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Probe {
    /// GET this URL (http://host:port/path), any 2xx/3xx status.
    Http(String),
    /// TCP connect to 127.0.0.1:port. A frozen app's listening socket accepts too (the kernel
    /// completes the handshake into the backlog), so this says only that the app listens.
    Tcp(u16),
    /// A RESP `PING` to 127.0.0.1:port (redis-server and servers speaking its protocol), ready on
    /// `+PONG`: answered by the app itself, so it is armed before thaw like `http`.
    Redis(u16),
    /// Run this argv; exit status 0 means ready.
    Command(Vec<String>),
}

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}
fn default_mode() -> String {
    "0660".into()
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_reserve() -> u64 {
    256 << 20
}
fn default_backend() -> String {
    "auto".into()
}
fn default_cgroup_parent() -> String {
    "torpor".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_threshold() -> f64 {
    200.0
}
fn default_threads() -> usize {
    2
}
fn default_ready_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_agent_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_qmp_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeOrNum {
    N(u64),
    S(String),
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match SizeOrNum::deserialize(d)? {
        SizeOrNum::N(n) => Ok(n),
        SizeOrNum::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum DurOrNum {
        F(f64),
        S(String),
    }
    match DurOrNum::deserialize(d)? {
        DurOrNum::F(f) if f >= 0.0 && f.is_finite() => Ok(Duration::from_secs_f64(f)),
        DurOrNum::F(f) => Err(serde::de::Error::custom(format!("bad duration {f}"))),
        DurOrNum::S(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

// Sizes and durations: one definition of their unit rules, shared with the command lines.
pub use procswap::units::{parse_duration, parse_size};

/// 1-based (line, column) of a byte offset in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|i| before[i + 1..].chars().count())
        .unwrap_or(before.chars().count())
        + 1;
    (line, col)
}

impl Config {
    /// Parse and validate a config text (`path` only names it in errors).
    pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(src, s.start)).unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        cfg.validate().map_err(|source| ConfigError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&src, path)
    }

    fn validate(&self) -> Result<(), Invalid> {
        let mut seen = std::collections::BTreeSet::new();
        parse_mode(&self.socket_mode)?;
        if self.backend.parse::<procswap::BackendPref>().is_err() {
            return Err(Invalid::Backend(self.backend.clone()));
        }
        if self.cgroup_parent.is_empty() || !valid_name(&self.cgroup_parent) {
            return Err(Invalid::CgroupParent(self.cgroup_parent.clone()));
        }
        if self.sample_interval < Duration::from_millis(50) {
            return Err(Invalid::SampleInterval);
        }
        for a in &self.apps {
            if !valid_name(&a.name) {
                return Err(Invalid::AppName(a.name.clone()));
            }
            if !seen.insert(a.name.clone()) {
                return Err(Invalid::Twice(a.name.clone()));
            }
            a.validate()?;
        }
        Ok(())
    }

    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }

    pub fn socket_mode_bits(&self) -> u32 {
        parse_mode(&self.socket_mode).unwrap_or(0o660)
    }
}

fn parse_mode(s: &str) -> Result<u32, Invalid> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| Invalid::SocketMode(s.to_string()))
}

impl AppConfig {
    /// One app's rules: how it is started, its probe, its kind.
    fn validate(&self) -> Result<(), Invalid> {
        let name = || self.name.clone();
        match (&self.command, &self.unit) {
            (Some(c), None) if !c.is_empty() => {}
            (Some(_), None) => return Err(Invalid::EmptyCommand(name())),
            (None, Some(u)) if !u.is_empty() => {}
            _ => return Err(Invalid::CommandOrUnit(name())),
        }
        match &self.ready {
            Some(Probe::Command(c)) if c.is_empty() => {
                return Err(Invalid::EmptyReadyCommand(name()))
            }
            Some(Probe::Http(u)) => {
                crate::probe::parse_http_url(u).map_err(|e| Invalid::ReadyUrl {
                    app: name(),
                    why: e.to_string(),
                })?;
            }
            _ => {}
        }
        match (self.kind, &self.vm) {
            (AppKind::Vm, None) => return Err(Invalid::VmWithoutVm(name())),
            (AppKind::Vm, Some(v)) => self.validate_vm(v)?,
            (AppKind::Process, Some(_)) => return Err(Invalid::VmOnProcess(name())),
            (AppKind::Process, None) => {}
        }
        if self.kind == AppKind::Process && self.vm_prefetch.is_some() {
            return Err(Invalid::VmPrefetchOnProcess(name()));
        }
        if self.is_vm() && self.purge_method == PurgeMethod::Kernel {
            return Err(Invalid::KernelPurgeOnVm(name()));
        }
        Ok(())
    }

    /// A vm app's rules: started by command, absolute sockets, timeouts above zero.
    fn validate_vm(&self, v: &VmConfig) -> Result<(), Invalid> {
        let relative = |what, path: &Path| Invalid::VmRelative {
            app: self.name.clone(),
            what,
            path: path.to_owned(),
        };
        if self.unit.is_some() {
            return Err(Invalid::VmUnit(self.name.clone()));
        }
        if !v.qmp.is_absolute() {
            return Err(relative("qmp", &v.qmp));
        }
        if let Some(ag) = v.agent.as_ref().filter(|p| !p.is_absolute()) {
            return Err(relative("agent", ag));
        }
        if v.qmp_timeout.is_zero() || v.agent_timeout.is_zero() {
            return Err(Invalid::VmTimeout(self.name.clone()));
        }
        Ok(())
    }
}

/// App names become cgroup and file names.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_prefetch_names_are_every_mode_once() {
        let names = start_prefetch_names();
        assert_eq!(
            names,
            [
                "loading-set",
                "full",
                "working-set-only",
                "none",
                "priority"
            ]
        );
        for n in names {
            let process = n.parse::<PrefetchPolicy>().map(PrefetchPolicy::as_str);
            let vm = n.parse::<VmPrefetch>().map(VmPrefetch::as_str);
            assert!(process == Ok(n) || vm == Ok(n), "{n}");
        }
    }

    #[test]
    fn parses_example() {
        let src = include_str!("../examples/torpord.toml");
        let c = Config::parse(src, Path::new("example")).unwrap();
        assert!(!c.apps.is_empty());
    }

    #[test]
    fn full_config() {
        let src = r#"
socket = "/tmp/x.sock"
reserve = "1G"
purge = "on-pressure"
prefetch = "working-set-only"
sample_interval = "250ms"
[[app]]
name = "a"
command = ["/bin/true"]
ready = { tcp = 8080 }
ready_timeout = "2s"
prestart = true
env = { A = "b" }
[[app]]
name = "b"
unit = "nginx.service"
ready = { http = "http://127.0.0.1:80/" }
"#;
        let c = Config::parse(src, Path::new("t")).unwrap();
        assert_eq!(c.reserve, 1 << 30);
        assert_eq!(c.purge, PurgePolicy::OnPressure);
        assert_eq!(c.prefetch, PrefetchPolicy::WorkingSetOnly);
        assert_eq!(c.sample_interval, Duration::from_millis(250));
        assert_eq!(c.apps[0].ready, Some(Probe::Tcp(8080)));
        assert_eq!(c.apps[0].ready_timeout, Duration::from_secs(2));
        assert_eq!(c.apps[1].unit.as_deref(), Some("nginx.service"));
        assert_eq!(c.socket_mode_bits(), 0o660);
    }

    #[test]
    fn redis_probe() {
        let redis =
            "[[app]]\nname = \"r\"\ncommand = [\"redis-server\"]\nready = { redis = 6379 }\n";
        let c = Config::parse(redis, Path::new("t")).unwrap();
        assert_eq!(c.apps[0].ready, Some(Probe::Redis(6379)));
    }

    #[test]
    fn malformed_toml_reports_line_and_column() {
        let src = "socket = \"/tmp/x\"\n[[app]]\nname = \"a\"\ncommand = [\"/bin/true\"\n";
        match Config::parse(src, Path::new("bad.toml")) {
            Err(ConfigError::Parse { line, column, .. }) => {
                assert!(line >= 4, "line {line}");
                assert!(column >= 1);
            }
            other => panic!("{other:?}"),
        }
        let src = "reserve = \"12Q\"\n";
        let e = Config::parse(src, Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad.toml:1:11:"), "{e}");
        let src = "purge = \"sometimes\"\n";
        let e = Config::parse(src, Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml:1:9"), "{e}");
    }

    #[test]
    fn rejects_invalid() {
        for src in [
            "[[app]]\nname = \"a/b\"\ncommand = [\"x\"]\n",
            "[[app]]\nname = \"a\"\n",
            "[[app]]\nname = \"a\"\ncommand = [\"x\"]\n[[app]]\nname = \"a\"\ncommand = [\"x\"]\n",
            "[[app]]\nname = \"a\"\ncommand = [\"x\"]\nunit = \"u\"\n",
            "bogus = 1\n",
            "backend = \"fast\"\n",
        ] {
            assert!(Config::parse(src, Path::new("t")).is_err(), "{src}");
        }
    }

    #[test]
    fn vm_app() {
        let src = r#"
[[app]]
name = "guest"
kind = "vm"
command = ["qemu-system-x86_64", "-qmp", "unix:/run/x/guest.qmp,server=on,wait=off"]
vm = { qmp = "/run/x/guest.qmp", agent = "/run/x/guest.agent" }
ready = { http = "http://127.0.0.1:18080/" }
vm_prefetch = "full"
[[app]]
name = "g2"
kind = "vm"
command = ["qemu-system-x86_64"]
vm = { qmp = "/run/x/g2.qmp", agent_timeout = "2s", background = false }
[[app]]
name = "p"
command = ["/bin/true"]
"#;
        let c = Config::parse(src, Path::new("t")).unwrap();
        assert!(c.apps[0].is_vm());
        assert_eq!(c.apps[0].vm_prefetch_mode(), VmPrefetch::Full);
        let v = c.apps[0].vm.as_ref().unwrap();
        assert_eq!(v.agent.as_deref(), Some(Path::new("/run/x/guest.agent")));
        assert_eq!(v.agent_timeout, Duration::from_secs(5));
        assert!(v.background);
        assert_eq!(c.apps[1].vm_prefetch_mode(), VmPrefetch::LoadingSet);
        let v2 = c.apps[1].vm.as_ref().unwrap();
        assert_eq!(v2.agent, None);
        assert_eq!(v2.agent_timeout, Duration::from_secs(2));
        assert!(!v2.background);
        assert_eq!(c.apps[2].kind, AppKind::Process);
        assert!(!c.apps[2].is_vm());
    }

    #[test]
    fn vm_app_errors_are_clear() {
        let cases = [
            ("[[app]]\nname = \"g\"\nkind = \"vm\"\ncommand = [\"q\"]\n", "needs vm = "),
            ("[[app]]\nname = \"g\"\ncommand = [\"q\"]\nvm = { qmp = \"/q\" }\n", "needs kind = \"vm\""),
            ("[[app]]\nname = \"g\"\ncommand = [\"q\"]\nvm_prefetch = \"full\"\n", "vm_prefetch needs kind"),
            ("[[app]]\nname = \"g\"\nkind = \"vm\"\ncommand = [\"q\"]\nvm = { qmp = \"rel.qmp\" }\n", "absolute path"),
            ("[[app]]\nname = \"g\"\nkind = \"vm\"\ncommand = [\"q\"]\nvm = { qmp = \"/q\", agent = \"a\" }\n", "absolute path"),
            ("[[app]]\nname = \"g\"\nkind = \"kvm\"\ncommand = [\"q\"]\n", "t:3:8"),
            ("[[app]]\nname = \"g\"\nkind = \"vm\"\ncommand = [\"q\"]\nvm = { qmp = \"/q\" }\nvm_prefetch = \"most\"\n", "t:6:15"),
            ("[[app]]\nname = \"g\"\nkind = \"vm\"\ncommand = [\"q\"]\nvm = { qmp = \"/q\", qmpp = 1 }\n", "unknown field"),
            ("[[app]]\nname = \"g\"\nkind = \"vm\"\ncommand = [\"q\"]\nvm = { agent = \"/a\" }\n", "qmp"),
        ];
        for (src, want) in cases {
            let e = Config::parse(src, Path::new("t")).unwrap_err().to_string();
            assert!(e.contains(want), "{src}: {e}");
        }
        assert_eq!("priority".parse::<VmPrefetch>(), Ok(VmPrefetch::Priority));
        assert!("fast".parse::<VmPrefetch>().is_err());
        assert_eq!(
            "working-set-only".parse::<PrefetchPolicy>(),
            Ok(PrefetchPolicy::WorkingSetOnly)
        );
    }

    #[test]
    fn shmem_layout_is_on_unless_unset() {
        let app = |extra: &str| format!("[[app]]\nname = \"a\"\ncommand = [\"x\"]\n{extra}");
        let c = Config::parse(&app(""), Path::new("t")).unwrap();
        assert!(c.apps[0].shmem_layout);
        let c = Config::parse(&app("shmem_layout = false\n"), Path::new("t")).unwrap();
        assert!(!c.apps[0].shmem_layout);
        assert!(Config::parse(&app("shmem_layout = \"yes\"\n"), Path::new("t")).is_err());
    }

    #[test]
    fn purge_method() {
        let app = |extra: &str| format!("[[app]]\nname = \"a\"\ncommand = [\"x\"]\n{extra}");
        let c = Config::parse(&app(""), Path::new("t")).unwrap();
        assert_eq!(c.apps[0].purge_method, PurgeMethod::Ordered);
        let c = Config::parse(&app("purge_method = \"kernel\"\n"), Path::new("t")).unwrap();
        assert_eq!(c.apps[0].purge_method, PurgeMethod::Kernel);
        let c = Config::parse(&app("purge_method = \"ordered\"\n"), Path::new("t")).unwrap();
        assert_eq!(c.apps[0].purge_method, PurgeMethod::Ordered);
        // Malformed values: where, and what is accepted.
        let e = Config::parse(&app("purge_method = \"stock\"\n"), Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t:4:16:"), "{e}");
        assert!(e.contains("ordered") && e.contains("kernel"), "{e}");
        let e = Config::parse(&app("purge_method = 1\n"), Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t:4:16:"), "{e}");
        // Not a global key, and not for a vm app.
        assert!(Config::parse("purge_method = \"kernel\"\n", Path::new("t")).is_err());
        let vm = "[[app]]\nname = \"g\"\nkind = \"vm\"\ncommand = [\"q\"]\nvm = { qmp = \"/q\" }\npurge_method = \"kernel\"\n";
        let e = Config::parse(vm, Path::new("t")).unwrap_err().to_string();
        assert!(
            e.contains("purge_method = \"kernel\" is for process apps"),
            "{e}"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert!(parse_size("x").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
