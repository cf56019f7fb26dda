//! The host agent (`torpor-fleet host`): registers the host with a lease, publishes a report
//! every interval, watches the host's placement keys and enacts them through torpord, and
//! writes back the outcome with its timings.
//!
//! The enactor lives across etcd sessions: when etcd is unreachable, apps stay as they are
//! (nothing is started or stopped for want of etcd), finished outcomes wait in memory, and the
//! agent reconnects with exponential backoff, then re-registers and flushes them.

use crate::measure::{Meter, Sample};
use crate::schema::{
    decode, encode, unix_now, AppReport, Desired, Flags, HostRecord, Key, Outcome, Placement,
    Report, Status, SCHEMA,
};
use crate::torpord::Torpord;
use anyhow::{bail, Context};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The agent's configuration (its command line).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host: String,
    pub etcd: Vec<String>,
    pub torpord: PathBuf,
    /// Lease TTL, seconds.
    pub ttl: i64,
    pub interval: Duration,
    pub endpoints: BTreeMap<String, SocketAddr>,
    /// The share's cgroup v2 directory and memory cgroup, and its size in cores if not in `cpu.max`.
    pub share_cgroup: PathBuf,
    pub share_memcg: PathBuf,
    pub share_cores: Option<f64>,
}

/// Placements to enact and outcomes to write back, shared by the etcd session and the enactor.
#[derive(Debug, Default)]
struct Shared {
    /// The latest placement per app, with its `mod_revision`.
    wanted: BTreeMap<String, (i64, Placement)>,
    /// The revision enacted (or found enacted) per app.
    done: BTreeMap<String, i64>,
    /// Outcomes not yet written to etcd (the latest per app).
    unsent: BTreeMap<String, Status>,
}

/// The shared state, a wake-up for the enactor and one for the session (an outcome to flush).
#[derive(Debug, Default)]
struct Sync {
    state: Mutex<Shared>,
    wake: Notify,
    flush: Notify,
}

type SharedState = Arc<Sync>;

fn lock(s: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves plain data: keep using it.
    s.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run the agent until the process is killed.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let shared: SharedState = Arc::default();
    let torpord = Torpord::new(cfg.torpord.clone());
    tokio::spawn(enactor(cfg.host.clone(), torpord.clone(), shared.clone()));
    let mut meter = Meter::new(
        cfg.share_cgroup.clone(),
        cfg.share_memcg.clone(),
        cfg.share_cores,
    );
    let mut seq = 0u64;
    let mut backoff = Duration::from_millis(250);
    loop {
        match session(&cfg, &torpord, &shared, &mut meter, &mut seq).await {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "etcd session ended; apps stay as they are");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
        }
    }
}

/// Connect to etcd with bounded waits (a dead endpoint must not hang the agent).
pub async fn connect(endpoints: &[String]) -> anyhow::Result<Client> {
    connect_with(endpoints, Some(Duration::from_secs(5))).await
}

/// Connect with a bound on each unary request (`None`: unbounded, for a campaign, which
/// blocks until elected; HTTP/2 keep-alives still detect a dead connection). The keep-alive
/// interval stays above etcd's `--grpc-keepalive-min-time` (5 s by default): pinging more
/// often makes etcd close the connection ("too many pings").
pub async fn connect_with(
    endpoints: &[String],
    request_timeout: Option<Duration>,
) -> anyhow::Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some(t) = request_timeout {
        opts = opts.with_timeout(t);
    }
    Client::connect(endpoints, Some(opts))
        .await
        .with_context(|| format!("connecting to etcd {endpoints:?}"))
}

/// One etcd session: lease, registration, the report ticker, the placement watch.
async fn session(
    cfg: &AgentConfig,
    torpord: &Torpord,
    shared: &SharedState,
    meter: &mut Meter,
    seq: &mut u64,
) -> anyhow::Result<()> {
    let mut client = connect(&cfg.etcd).await?;
    let lease = client.lease_grant(cfg.ttl, None).await?.id();
    let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
    let record = HostRecord {
        schema: SCHEMA,
        host: cfg.host.clone(),
        endpoints: cfg.endpoints.clone(),
        ttl_s: cfg.ttl,
        agent_pid: std::process::id(),
        started_unix: unix_now(),
    };
    let with_lease = || Some(PutOptions::new().with_lease(lease));
    client
        .put(
            Key::Host(cfg.host.clone()).path(),
            encode(&record),
            with_lease(),
        )
        .await?;
    let rev = load_placements(&mut client, &cfg.host, shared).await?;
    let prefix = Key::placement_prefix(&cfg.host);
    let mut watch = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        )
        .await?;
    tracing::info!(host = %cfg.host, lease, "registered");
    let mut report_tick = tokio::time::interval(cfg.interval);
    let ka_period = Duration::from_millis((cfg.ttl.max(1) as u64 * 1000) / 3);
    let mut ka_tick = tokio::time::interval(ka_period);
    loop {
        tokio::select! {
            _ = ka_tick.tick() => keeper.keep_alive().await?,
            ack = acks.message() => match ack? {
                Some(a) if a.ttl() > 0 => {}
                _ => bail!("lease {lease} expired or its keep-alive stream ended"),
            },
            _ = report_tick.tick() => {
                *seq += 1;
                let report = measure(cfg, torpord, meter, *seq).await;
                client.put(Key::Report(cfg.host.clone()).path(), encode(&report), with_lease()).await?;
                flush_statuses(&mut client, shared).await?;
            }
            _ = shared.flush.notified() => flush_statuses(&mut client, shared).await?,
            w = watch.message() => {
                let Some(w) = w? else { bail!("the placement watch ended") };
                if w.canceled() {
                    bail!("the placement watch was cancelled: {}", w.cancel_reason());
                }
                for ev in w.events() {
                    if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                        want(shared, kv.key(), kv.value(), kv.mod_revision());
                    }
                }
            }
        }
    }
}

/// Read this host's placements and statuses: placements already answered (a status with
/// their revision, not failed) are done; the others are wanted. Returns the read revision.
async fn load_placements(
    client: &mut Client,
    host: &str,
    shared: &SharedState,
) -> anyhow::Result<i64> {
    let opts = || Some(GetOptions::new().with_prefix());
    let placements = client.get(Key::placement_prefix(host), opts()).await?;
    let status_prefix = Key::Status {
        host: host.into(),
        app: String::new(),
    }
    .path();
    let statuses = client.get(status_prefix, opts()).await?;
    {
        let mut s = lock(shared);
        for kv in statuses.kvs() {
            let Some(st) = parse::<Status>(kv.key(), kv.value()) else {
                continue;
            };
            if st.outcome != Outcome::Failed {
                s.done.insert(st.app.clone(), st.placement_rev);
            }
        }
    }
    for kv in placements.kvs() {
        want(shared, kv.key(), kv.value(), kv.mod_revision());
    }
    Ok(placements.header().map(|h| h.revision()).unwrap_or(0))
}

/// Parse a key and value of the layout; a malformed one is logged (flagged) and skipped.
pub fn parse<V: crate::schema::Value>(key: &[u8], value: &[u8]) -> Option<V> {
    let k = String::from_utf8_lossy(key);
    let parsed = Key::parse(&k)
        .map_err(|e| e.to_string())
        .and_then(|key| decode::<V>(&key, value).map_err(|e| e.to_string()));
    match parsed {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "malformed value ignored");
            None
        }
    }
}

/// A placement was read or changed: make it the app's latest and wake the enactor.
fn want(shared: &SharedState, key: &[u8], value: &[u8], rev: i64) {
    let Some(p) = parse::<Placement>(key, value) else {
        return;
    };
    let mut s = lock(shared);
    if s.done.get(&p.app).is_some_and(|&d| d >= rev) {
        return;
    }
    s.wanted.insert(p.app.clone(), (rev, p));
    drop(s);
    shared.wake.notify_one();
}

async fn flush_statuses(client: &mut Client, shared: &SharedState) -> anyhow::Result<()> {
    let unsent: Vec<Status> = lock(shared).unsent.values().cloned().collect();
    for st in unsent {
        let key = Key::Status {
            host: st.host.clone(),
            app: st.app.clone(),
        };
        client.put(key.path(), encode(&st), None).await?;
        let mut s = lock(shared);
        if s.unsent.get(&st.app) == Some(&st) {
            s.unsent.remove(&st.app);
        }
    }
    Ok(())
}

/// Enact the latest placement of each app, one at a time, forever.
async fn enactor(host: String, torpord: Torpord, shared: SharedState) {
    loop {
        let next = {
            let s = lock(&shared);
            s.wanted
                .iter()
                .find(|(app, (rev, _))| s.done.get(*app).is_none_or(|d| d < rev))
                .map(|(_, (rev, p))| (*rev, p.clone()))
        };
        let Some((rev, p)) = next else {
            shared.wake.notified().await;
            continue;
        };
        let status = enact(&host, &torpord, rev, &p).await;
        let mut s = lock(&shared);
        s.done.insert(p.app.clone(), rev);
        if let Some(st) = status {
            s.unsent.insert(p.app.clone(), st);
            drop(s);
            // Written back at once (the router waits for it), or at the next report.
            shared.flush.notify_one();
        }
    }
}

/// Enact one placement through torpord: the status to write back (none for `Draining`, which
/// leaves the app running).
async fn enact(host: &str, torpord: &Torpord, rev: i64, p: &Placement) -> Option<Status> {
    let seen = unix_now();
    let mut st = Status {
        schema: SCHEMA,
        host: host.into(),
        app: p.app.clone(),
        placement_rev: rev,
        desired: p.desired,
        outcome: Outcome::Failed,
        error: None,
        seen_unix: seen,
        done_unix: seen,
        torpord_s: None,
        cold: None,
    };
    match p.desired {
        Desired::Draining => return None,
        Desired::Running => match torpord.start(&p.app).await {
            Ok(a) if a.ready() => {
                st.outcome = Outcome::Ready;
                st.cold = Some(a.started().is_some_and(|s| s.cold));
                st.torpord_s = a.started().map(|s| s.timing.total_s);
            }
            Ok(a) => st.error = Some(format!("torpord answered state {} not ready", a.state())),
            Err(e) => st.error = Some(e.to_string()),
        },
        Desired::Standby => match torpord.stop(&p.app).await {
            Ok(a) => {
                st.outcome = Outcome::Stopped;
                st.torpord_s = a.timing().map(|t| t.total_s);
            }
            Err(e) => st.error = Some(e.to_string()),
        },
    }
    st.done_unix = unix_now();
    tracing::info!(app = %p.app, rev, desired = ?p.desired, outcome = ?st.outcome, error = ?st.error, "enacted");
    Some(st)
}

/// This interval's report: the share's figures and torpord's flags and apps.
async fn measure(cfg: &AgentConfig, torpord: &Torpord, meter: &mut Meter, seq: u64) -> Report {
    let sample = meter.sample().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "measuring the share");
        Sample {
            interval_s: 0.0,
            cpu: Default::default(),
            mem_available_bytes: 0,
            share_mem_free_bytes: None,
            paging_rate: 0.0,
        }
    });
    let mut report = Report {
        schema: SCHEMA,
        host: cfg.host.clone(),
        seq,
        unix_time: unix_now(),
        interval_s: sample.interval_s,
        cpu: sample.cpu,
        mem_available_bytes: sample.mem_available_bytes,
        share_mem_free_bytes: sample.share_mem_free_bytes,
        paging_rate: sample.paging_rate,
        torpord: None,
        torpord_error: None,
        apps: BTreeMap::new(),
    };
    match tokio::try_join!(torpord.health(), torpord.apps()) {
        Ok((h, apps)) => {
            let o = h.host_overload;
            report.torpord = Some(Flags {
                rate: o.rate,
                overloaded: o.overloaded,
                sustained: o.sustained,
                hotspot: o.hotspot,
            });
            report.apps = apps
                .apps
                .into_iter()
                .map(|a| {
                    let r = AppReport {
                        state: a.state,
                        standby: a.state.is_frozen(),
                        busy: a.busy,
                    };
                    (a.name, r)
                })
                .collect();
        }
        Err(e) => report.torpord_error = Some(e.to_string()),
    }
    report
}
