//! The fleet's etcd key layout and value schema, version 1: the one definition the host agent,
//! the controller and the tests share (documented in `docs/fleet.md`).
//!
//! | key | value | written by | lease |
//! |---|---|---|---|
//! | `/torpor/v1/hosts/<host>` | [`HostRecord`] | host agent | the host's |
//! | `/torpor/v1/reports/<host>` | [`Report`] | host agent, every second | the host's |
//! | `/torpor/v1/apps/<app>` | [`AppSpec`] | operator | none |
//! | `/torpor/v1/placement/<host>/<app>` | [`Placement`] | leading controller (fenced) | none |
//! | `/torpor/v1/status/<host>/<app>` | [`Status`] | host agent | none |
//! | `/torpor/v1/election` (prefix) | the leader's id | etcd's election API | the controller's |
//!
//! Placement and status keys name the host first, so that a host watches exactly its own keys
//! with one prefix watch. Every value is a JSON object whose `schema` field is [`SCHEMA`]; a
//! value that is not valid JSON of its type, carries another schema version, or names another
//! host or app than its key is a [`ValueError`], never a panic.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use torpor_api::AppState;

/// The schema version of every value (and the `v1` in every key).
pub const SCHEMA: u32 = 1;
/// Every key starts with this.
pub const PREFIX: &str = "/torpor/v1/";
/// The prefix of the controllers' election (etcd's election API).
pub const ELECTION: &str = "/torpor/v1/election";

const HOSTS: &str = "hosts/";
const REPORTS: &str = "reports/";
const APPS: &str = "apps/";
const PLACEMENT: &str = "placement/";
const STATUS: &str = "status/";

/// A host or app name as it may appear in a key and in an HAProxy server or backend name:
/// 1 to 64 of `[A-Za-z0-9_.-]`, not `.` or `..`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A key of the layout, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Host(String),
    Report(String),
    App(String),
    Placement { host: String, app: String },
    Status { host: String, app: String },
}

/// A key outside the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key {0:?} is not under {PREFIX}")]
    Prefix(String),
    #[error(
        "key {0:?} is not one of the layout's kinds (hosts, reports, apps, placement, status)"
    )]
    Kind(String),
    #[error("key {key:?}: bad name {name:?} (1-64 of [A-Za-z0-9_.-])")]
    Name { key: String, name: String },
}

impl Key {
    /// The key's path in etcd.
    pub fn path(&self) -> String {
        match self {
            Key::Host(h) => format!("{PREFIX}{HOSTS}{h}"),
            Key::Report(h) => format!("{PREFIX}{REPORTS}{h}"),
            Key::App(a) => format!("{PREFIX}{APPS}{a}"),
            Key::Placement { host, app } => format!("{PREFIX}{PLACEMENT}{host}/{app}"),
            Key::Status { host, app } => format!("{PREFIX}{STATUS}{host}/{app}"),
        }
    }

    /// Parse a key of the layout (names checked with [`valid_name`]).
    pub fn parse(key: &str) -> Result<Key, KeyError> {
        let rest = key
            .strip_prefix(PREFIX)
            .ok_or_else(|| KeyError::Prefix(key.into()))?;
        let name = |n: &str| -> Result<String, KeyError> {
            if valid_name(n) {
                Ok(n.to_string())
            } else {
                Err(KeyError::Name {
                    key: key.into(),
                    name: n.into(),
                })
            }
        };
        let pair = |r: &str| -> Result<(String, String), KeyError> {
            let (h, a) = r
                .split_once('/')
                .ok_or_else(|| KeyError::Kind(key.into()))?;
            Ok((name(h)?, name(a)?))
        };
        if let Some(h) = rest.strip_prefix(HOSTS) {
            Ok(Key::Host(name(h)?))
        } else if let Some(h) = rest.strip_prefix(REPORTS) {
            Ok(Key::Report(name(h)?))
        } else if let Some(a) = rest.strip_prefix(APPS) {
            Ok(Key::App(name(a)?))
        } else if let Some(r) = rest.strip_prefix(PLACEMENT) {
            let (host, app) = pair(r)?;
            Ok(Key::Placement { host, app })
        } else if let Some(r) = rest.strip_prefix(STATUS) {
            let (host, app) = pair(r)?;
            Ok(Key::Status { host, app })
        } else {
            Err(KeyError::Kind(key.into()))
        }
    }

    /// The prefix of every key of one kind (`hosts`, `reports`...), for ranges and watches.
    pub fn kind_prefix(kind: &str) -> String {
        format!("{PREFIX}{kind}/")
    }

    /// The prefix of one host's placement keys (what its agent watches).
    pub fn placement_prefix(host: &str) -> String {
        format!("{PREFIX}{PLACEMENT}{host}/")
    }
}

/// A value that cannot be used. The key it was read from is part of the message.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("{key}: not a JSON value of its kind: {source}")]
    Json {
        key: String,
        source: serde_json::Error,
    },
    #[error("{key}: schema {found}, this build reads schema {SCHEMA}")]
    Schema { key: String, found: u32 },
    #[error("{key}: the value names {field} {found:?}, the key {expected:?}")]
    Mismatch {
        key: String,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// A value of the layout: its schema version and the names it must agree on with its key.
pub trait Value: Serialize + DeserializeOwned {
    /// Check the value against its (parsed) key; the default checks nothing more.
    fn check(&self, _key: &Key) -> Result<(), String> {
        Ok(())
    }
}

/// Serialize a value (always with `schema` = [`SCHEMA`] when built with the constructors).
pub fn encode<V: Value>(v: &V) -> Vec<u8> {
    serde_json::to_vec(v).expect("the schema types serialize to JSON")
}

/// Parse and check a value read from `key`.
pub fn decode<V: Value>(key: &Key, bytes: &[u8]) -> Result<V, ValueError> {
    let k = key.path();
    // The version first, so that a future schema is reported as such, not as bad JSON.
    #[derive(Deserialize)]
    struct Version {
        schema: u32,
    }
    if let Ok(Version { schema }) = serde_json::from_slice::<Version>(bytes) {
        if schema != SCHEMA {
            return Err(ValueError::Schema {
                key: k,
                found: schema,
            });
        }
    }
    let v: V = serde_json::from_slice(bytes).map_err(|source| ValueError::Json {
        key: k.clone(),
        source,
    })?;
    v.check(key)
        .map_err(|message| ValueError::Invalid { key: k, message })?;
    Ok(v)
}

fn same(field: &'static str, found: &str, expected: &str) -> Result<(), String> {
    if found == expected {
        Ok(())
    } else {
        Err(format!(
            "the value names {field} {found:?}, the key {expected:?}"
        ))
    }
}

/// `hosts/<host>`: a live host (kept alive by its lease).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    pub schema: u32,
    pub host: String,
    /// Where the host serves each app (the HAProxy server address).
    pub endpoints: BTreeMap<String, SocketAddr>,
    /// The agent's lease TTL, seconds.
    pub ttl_s: i64,
    pub agent_pid: u32,
    pub started_unix: f64,
}

impl Value for HostRecord {
    fn check(&self, key: &Key) -> Result<(), String> {
        match key {
            Key::Host(h) => same("host", &self.host, h)?,
            _ => return Err("a host record outside hosts/".into()),
        }
        match self.endpoints.keys().find(|a| !valid_name(a)) {
            Some(a) => Err(format!("bad app name {a:?} in endpoints")),
            None => Ok(()),
        }
    }
}

/// The CPU use of the host's share over the last interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuShare {
    /// The share in cores (`cpu.max` quota / period, else the online CPUs).
    pub share_cores: f64,
    /// Cores used (cgroup `usage_usec` over wall time).
    pub used_cores: f64,
    /// `used_cores / share_cores`: the paper's overload rule is `fraction >= 0.8`.
    pub fraction: f64,
}

/// torpord's host overload flags (from its `/v1/health`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flags {
    /// Paging operations per second, as torpord measures them.
    pub rate: f64,
    pub overloaded: bool,
    /// Sustained overload (Overdriver).
    pub sustained: bool,
    /// Hotspot (Sandpiper).
    pub hotspot: bool,
}

/// One app as the host sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppReport {
    pub state: AppState,
    /// Frozen (suspended or standby): a Start is a resume.
    pub standby: bool,
    /// An operation holds the app.
    pub busy: bool,
}

/// `reports/<host>`: one measurement, published every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema: u32,
    pub host: String,
    /// Counts up from 1 per agent run.
    pub seq: u64,
    pub unix_time: f64,
    /// The interval the rates are over, seconds.
    pub interval_s: f64,
    pub cpu: CpuShare,
    /// The host's MemAvailable (`/proc/meminfo`).
    pub mem_available_bytes: u64,
    /// The share's memory left under its limit (`memory.max - memory.current`), if limited.
    pub share_mem_free_bytes: Option<u64>,
    /// Major faults per second in the host's share (`memory.stat` pgmajfault).
    pub paging_rate: f64,
    /// torpord's flags; `None` when torpord did not answer (then `apps` is empty).
    pub torpord: Option<Flags>,
    /// Why torpord did not answer.
    pub torpord_error: Option<String>,
    pub apps: BTreeMap<String, AppReport>,
}

impl Value for Report {
    fn check(&self, key: &Key) -> Result<(), String> {
        match key {
            Key::Report(h) => same("host", &self.host, h)?,
            _ => return Err("a report outside reports/".into()),
        }
        let finite = [
            self.cpu.share_cores,
            self.cpu.used_cores,
            self.cpu.fraction,
            self.paging_rate,
            self.interval_s,
        ];
        if finite.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err("a negative or non-finite measurement".into());
        }
        match self.apps.keys().find(|a| !valid_name(a)) {
            Some(a) => Err(format!("bad app name {a:?}")),
            None => Ok(()),
        }
    }
}

impl Report {
    /// The host is overloaded: CPU at 80% of its share or more over the last interval (the
    /// rule of *Agile application placement in hosting platforms*), or torpord's sustained
    /// overload or hotspot flag.
    pub fn overloaded(&self) -> bool {
        self.cpu.fraction >= CPU_OVERLOAD
            || self
                .torpord
                .as_ref()
                .is_some_and(|f| f.sustained || f.hotspot)
    }
}

/// The CPU fraction of the share at which a host is overloaded.
pub const CPU_OVERLOAD: f64 = 0.8;

/// `apps/<app>`: what the operator asks of an app across the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub schema: u32,
    pub app: String,
    /// The HAProxy backend that routes to it.
    pub backend: String,
    /// Instances kept running whatever the load.
    pub min_running: u32,
    /// Instances the controller may run under overload.
    pub max_running: u32,
    /// Requests one instance is given at a time (HAProxy's per-server `maxconn`); the rest
    /// wait in the backend's queue, from which any server in service takes them, a new one the
    /// moment it is enabled. 0: unlimited (each server's own accept queue holds its backlog).
    /// Absent in older values: 0.
    #[serde(default)]
    pub max_conn: u32,
}

impl Value for AppSpec {
    fn check(&self, key: &Key) -> Result<(), String> {
        match key {
            Key::App(a) => same("app", &self.app, a)?,
            _ => return Err("an app spec outside apps/".into()),
        }
        if !valid_name(&self.backend) {
            return Err(format!("bad backend name {:?}", self.backend));
        }
        if self.min_running > self.max_running {
            return Err(format!(
                "min_running {} > max_running {}",
                self.min_running, self.max_running
            ));
        }
        Ok(())
    }
}

/// What the controller wants of an app on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Started and routed to.
    Running,
    /// Still running, but the router drains it (no new sessions): the step before `Standby`.
    Draining,
    /// Stopped by torpord (frozen, purged: in standby for the next Start).
    Standby,
}

/// `placement/<host>/<app>`: the desired state, written by the leading controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub schema: u32,
    pub host: String,
    pub app: String,
    pub desired: Desired,
    /// The writing leader's election key revision (which leader wrote it).
    pub leader_rev: i64,
    /// Why (the decision's rule and figures).
    pub reason: String,
    pub unix_time: f64,
}

impl Value for Placement {
    fn check(&self, key: &Key) -> Result<(), String> {
        match key {
            Key::Placement { host, app } => {
                same("host", &self.host, host)?;
                same("app", &self.app, app)
            }
            _ => Err("a placement outside placement/".into()),
        }
    }
}

/// The outcome of enacting a placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Started and ready (torpord's Start answered `ready`).
    Ready,
    /// Stopped (in standby).
    Stopped,
    /// torpord refused or failed (see `error`), or could not be reached.
    Failed,
}

/// `status/<host>/<app>`: what the host made of its placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub schema: u32,
    pub host: String,
    pub app: String,
    /// The etcd `mod_revision` of the placement this answers.
    pub placement_rev: i64,
    pub desired: Desired,
    pub outcome: Outcome,
    pub error: Option<String>,
    /// When the agent saw the placement, and when torpord answered.
    pub seen_unix: f64,
    pub done_unix: f64,
    /// torpord's own total (Start or Stop), seconds, when it did something.
    pub torpord_s: Option<f64>,
    /// A Start that had to spawn the app (no standby instance).
    pub cold: Option<bool>,
}

impl Value for Status {
    fn check(&self, key: &Key) -> Result<(), String> {
        match key {
            Key::Status { host, app } => {
                same("host", &self.host, host)?;
                same("app", &self.app, app)
            }
            _ => Err("a status outside status/".into()),
        }
    }
}

/// Now, as Unix seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests;
