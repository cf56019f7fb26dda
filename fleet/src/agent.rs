//! The host agent (`torpor-fleet host`): registers the host with a lease, publishes a report
//! every interval (and at once when its CPU rule trips or clears: the CPU is measured every
//! sample, over the last second), watches the host's placement keys and enacts them through
//! torpord, and writes back the outcome with its timings.
//!
//! The enactor lives across etcd sessions: when etcd is unreachable, apps stay as they are
//! (nothing is started or stopped for want of etcd), finished outcomes wait in memory, and the
//! agent reconnects with exponential backoff, then re-registers and flushes them.

use crate::measure::{Meter, Sample};
use crate::schema::{
    decode, encode, unix_now, AppReport, Desired, Flags, HostRecord, Key, Outcome, Placement,
    Report, Status, CPU_OVERLOAD, SCHEMA,
};
use crate::torpord::Torpord;
use anyhow::{bail, Context};
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseKeepAliveResponse, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, WatchOptions, WatchResponse, WatchStream,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use torpor_api::AppState;

/// The agent's configuration (its command line).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host: String,
    pub etcd: Vec<String>,
    pub torpord: PathBuf,
    /// Lease TTL, seconds.
    pub ttl: i64,
    /// Report interval (a report is also published at once when the CPU rule trips or clears).
    pub interval: Duration,
    /// How often the share is measured (its CPU over the last second, each time).
    pub sample: Duration,
    pub endpoints: BTreeMap<String, SocketAddr>,
    /// The share's cgroup v2 directory and memory cgroup, and its size in cores if not in `cpu.max`.
    pub share_cgroup: PathBuf,
    pub share_memcg: PathBuf,
    pub share_cores: Option<f64>,
    /// Confine the share to its CPU quota (`--enforce-share`).
    pub confine: Option<crate::measure::Confine>,
}

/// Placements to enact and outcomes to write back, shared by the etcd session and the enactor.
#[derive(Debug, Default)]
struct Shared {
    /// The latest placement per app, with its `mod_revision`, or [`Job::unplaced`].
    wanted: BTreeMap<String, Job>,
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

/// What to enact for an app.
#[derive(Debug, Clone)]
struct Job {
    /// The placement's `mod_revision` (or, unplaced, the revision that showed it gone).
    rev: i64,
    placement: Placement,
    /// The host has no placement of the app (never had one, or it was deleted, e.g. while
    /// the host was cut off and its apps were placed elsewhere): if torpord runs it, it is
    /// stopped (back to standby), since nothing routes to it. `placement` is then `standby`.
    unplaced: bool,
}

impl Job {
    fn unplaced(host: &str, app: &str, rev: i64, why: &str) -> Job {
        let placement = Placement {
            schema: SCHEMA,
            host: host.into(),
            app: app.into(),
            desired: Desired::Standby,
            leader_rev: 0,
            reason: format!("unplaced: {why}"),
            unix_time: unix_now(),
        };
        Job {
            rev,
            placement,
            unplaced: true,
        }
    }
}

fn lock(s: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves plain data: keep using it.
    s.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run the agent until the process is killed.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let shared: SharedState = Arc::default();
    if let Some(c) = &cfg.confine {
        c.set_up()
            .with_context(|| format!("setting the share's CPU quota on {}", c.dir.display()))?;
        tracing::info!(dir = %c.dir.display(), quota = ?c.quota, "share confined to its CPU quota");
    }
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

/// One etcd session: lease, registration, the report ticker, the placement watch. It ends
/// only when the lease is gone (expired, or no keep-alive answered for a whole TTL): a broken
/// keep-alive or watch stream (its etcd member died) is re-opened in place on the same client,
/// which balances over every endpoint, and the watch resumes from the next revision; a failed
/// report or status write is retried at the next interval.
async fn session(
    cfg: &AgentConfig,
    torpord: &Torpord,
    shared: &SharedState,
    meter: &mut Meter,
    seq: &mut u64,
) -> anyhow::Result<()> {
    let mut s = Session::open(cfg, shared).await?;
    let mut lease = LeaseKeep::open(&mut s.client, s.lease, cfg.ttl).await?;
    let mut watch = None;
    s.reopen_watch(&mut watch).await;
    let mut sample_tick = tokio::time::interval(cfg.sample.min(cfg.interval));
    let mut ka_tick = tokio::time::interval(lease.period());
    let mut pacer = Pacer::new(cfg.interval, cfg.sample.min(cfg.interval));
    loop {
        tokio::select! {
            _ = ka_tick.tick() => lease.keep_alive(&mut s.client).await.map_err(anyhow::Error::msg)?,
            ack = lease.next() => lease.ack(ack).map_err(anyhow::Error::msg)?,
            _ = sample_tick.tick() => {
                if let Some(c) = &cfg.confine {
                    c.sweep();
                }
                let sample = take_sample(meter);
                if !pacer.due(Instant::now(), sample.cpu.fraction >= CPU_OVERLOAD) {
                    continue;
                }
                *seq += 1;
                let report = measure(cfg, torpord, sample, *seq).await;
                s.report(&report).await;
                s.flush(shared).await;
                if watch.is_none() {
                    s.reopen_watch(&mut watch).await;
                }
            }
            _ = shared.flush.notified() => s.flush(shared).await,
            w = next_watched(&mut watch) => s.watched(&mut watch, w, shared).await?,
        }
    }
}

/// A registered host's connection: the client (balanced over every endpoint), the lease,
/// when it was last renewed, and the next placement revision to watch from.
struct Session<'a> {
    cfg: &'a AgentConfig,
    client: Client,
    lease: i64,
    next_rev: i64,
}

async fn next_watched(
    w: &mut Option<WatchStream>,
) -> Result<Option<WatchResponse>, etcd_client::Error> {
    match w {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

impl<'a> Session<'a> {
    /// Connect, take a lease, register, read this host's placements.
    async fn open(cfg: &'a AgentConfig, shared: &SharedState) -> anyhow::Result<Session<'a>> {
        let mut client = connect(&cfg.etcd).await?;
        let lease = client.lease_grant(cfg.ttl, None).await?.id();
        let record = HostRecord {
            schema: SCHEMA,
            host: cfg.host.clone(),
            endpoints: cfg.endpoints.clone(),
            ttl_s: cfg.ttl,
            agent_pid: std::process::id(),
            started_unix: unix_now(),
        };
        let opts = Some(PutOptions::new().with_lease(lease));
        let key = Key::Host(cfg.host.clone()).path();
        client.put(key, encode(&record), opts).await?;
        let rev = load_placements(&mut client, cfg, shared).await?;
        tracing::info!(host = %cfg.host, lease, "registered");
        Ok(Session {
            cfg,
            client,
            lease,
            next_rev: rev + 1,
        })
    }

    async fn report(&mut self, report: &Report) {
        let key = Key::Report(self.cfg.host.clone()).path();
        let opts = Some(PutOptions::new().with_lease(self.lease));
        if let Err(e) = self.client.put(key, encode(report), opts).await {
            tracing::warn!(error = %e, "publishing the report; next interval");
        }
    }

    async fn flush(&mut self, shared: &SharedState) {
        if let Err(e) = flush_statuses(&mut self.client, shared).await {
            tracing::warn!(error = %e, "writing statuses; next interval");
        }
    }

    /// (Re-)open the placement watch from the next revision not seen; on failure it stays
    /// closed and is tried again at the next report.
    async fn reopen_watch(&mut self, watch: &mut Option<WatchStream>) {
        for _ in 0..REOPEN_TRIES {
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(self.next_rev);
            let prefix = Key::placement_prefix(&self.cfg.host);
            match self.client.watch(prefix, Some(opts)).await {
                Ok(w) => {
                    *watch = Some(w);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "opening the placement watch"),
            }
            tokio::time::sleep(REOPEN_PAUSE).await;
        }
    }

    /// A watch message: placements to enact; a broken stream is re-opened at once from the
    /// next revision. A cancelled watch (its revision compacted) ends the session, which
    /// reads the placements again.
    async fn watched(
        &mut self,
        watch: &mut Option<WatchStream>,
        w: Result<Option<WatchResponse>, etcd_client::Error>,
        shared: &SharedState,
    ) -> anyhow::Result<()> {
        let w = match w {
            Ok(Some(w)) => w,
            Ok(None) | Err(_) => {
                tracing::warn!(from = self.next_rev, "placement watch broken; re-opening");
                *watch = None;
                self.reopen_watch(watch).await;
                return Ok(());
            }
        };
        if w.canceled() {
            bail!("the placement watch was cancelled: {}", w.cancel_reason());
        }
        for ev in w.events() {
            if let Some(kv) = ev.kv() {
                self.next_rev = self.next_rev.max(kv.mod_revision() + 1);
                match ev.event_type() {
                    EventType::Put => {
                        want(shared, kv.key(), kv.value(), kv.mod_revision());
                    }
                    EventType::Delete => {
                        deleted(shared, &self.cfg.host, kv.key(), kv.mod_revision())
                    }
                }
            }
        }
        Ok(())
    }
}

/// Read this host's placements and statuses: placements already answered (a status with
/// their revision, not failed) are done; the others are wanted; an app this host serves
/// without a placement is unplaced (stopped if it runs). Returns the read revision.
async fn load_placements(
    client: &mut Client,
    cfg: &AgentConfig,
    shared: &SharedState,
) -> anyhow::Result<i64> {
    let host = cfg.host.as_str();
    let opts = || Some(GetOptions::new().with_prefix());
    let placements = client.get(Key::placement_prefix(host), opts()).await?;
    let status_prefix = Key::Status {
        host: host.into(),
        app: String::new(),
    }
    .path();
    let statuses = client.get(status_prefix, opts()).await?;
    let rev = placements.header().map(|h| h.revision()).unwrap_or(0);
    {
        let mut s = lock(shared);
        s.wanted.clear();
        for kv in statuses.kvs() {
            let Some(st) = parse::<Status>(kv.key(), kv.value()) else {
                continue;
            };
            if st.outcome != Outcome::Failed {
                s.done.insert(st.app.clone(), st.placement_rev);
            }
        }
    }
    let mut placed = BTreeSet::new();
    for kv in placements.kvs() {
        if let Some(app) = want(shared, kv.key(), kv.value(), kv.mod_revision()) {
            placed.insert(app);
        }
    }
    for app in cfg.endpoints.keys().filter(|a| !placed.contains(*a)) {
        unplace(
            shared,
            Job::unplaced(host, app, rev, "no placement at registration"),
        );
    }
    Ok(rev)
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

/// A placement was read or changed: make it the app's latest and wake the enactor. Returns
/// the app (also when already done), none for a malformed value.
fn want(shared: &SharedState, key: &[u8], value: &[u8], rev: i64) -> Option<String> {
    let p = parse::<Placement>(key, value)?;
    let app = p.app.clone();
    let job = Job {
        rev,
        placement: p,
        unplaced: false,
    };
    unplace(shared, job);
    Some(app)
}

/// A placement key of this host was deleted at `rev`.
fn deleted(shared: &SharedState, host: &str, key: &[u8], rev: i64) {
    let k = String::from_utf8_lossy(key);
    if let Ok(Key::Placement { host: h, app }) = Key::parse(&k) {
        if h == host {
            unplace(shared, Job::unplaced(host, &app, rev, "placement deleted"));
        }
    }
}

/// Make `job` the app's latest, unless a later revision is done, and wake the enactor.
fn unplace(shared: &SharedState, job: Job) {
    let mut s = lock(shared);
    let app = job.placement.app.clone();
    if s.done.get(&app).is_some_and(|&d| d >= job.rev) {
        return;
    }
    s.wanted.insert(app, job);
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
                .find(|(app, j)| s.done.get(*app).is_none_or(|d| *d < j.rev))
                .map(|(_, j)| j.clone())
        };
        let Some(job) = next else {
            shared.wake.notified().await;
            continue;
        };
        let (rev, p) = (job.rev, &job.placement);
        let status = if job.unplaced && !runs(&torpord, &p.app).await {
            None
        } else {
            enact(&host, &torpord, rev, p).await
        };
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

/// torpord runs `app` (not frozen, not stopped). Unknown (torpord does not answer): no.
async fn runs(torpord: &Torpord, app: &str) -> bool {
    match torpord.apps().await {
        Ok(list) => list
            .apps
            .iter()
            .any(|a| a.name == app && !a.state.is_frozen() && a.state != AppState::Stopped),
        Err(e) => {
            tracing::warn!(error = %e, app, "unplaced app: torpord does not answer; left as is");
            false
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

/// When to publish a report: every `interval`, and at once when the CPU rule (80 % of the
/// share over the last second) trips or clears, so that the controller sees an overload within
/// one sample of it, not up to an interval later.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    /// Slack against timer jitter: a sample this much early for the interval still publishes.
    slack: Duration,
    last: Option<(Instant, bool)>,
}

impl Pacer {
    pub fn new(interval: Duration, sample: Duration) -> Pacer {
        Pacer {
            interval,
            slack: sample / 2,
            last: None,
        }
    }

    /// Whether the sample taken at `now`, with the CPU rule `tripped` or not, is published
    /// (then it counts as the last one).
    pub fn due(&mut self, now: Instant, tripped: bool) -> bool {
        let due = self.last.is_none_or(|(at, was)| {
            was != tripped || now.duration_since(at) + self.slack >= self.interval
        });
        if due {
            self.last = Some((now, tripped));
        }
        due
    }
}

/// The share's figures over the last second (zeros with a warning when unreadable).
fn take_sample(meter: &mut Meter) -> Sample {
    meter.sample().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "measuring the share");
        Sample {
            interval_s: 0.0,
            cpu: Default::default(),
            mem_available_bytes: 0,
            share_mem_free_bytes: None,
            paging_rate: 0.0,
        }
    })
}

/// A report: the share's figures and torpord's flags and apps.
async fn measure(cfg: &AgentConfig, torpord: &Torpord, sample: Sample, seq: u64) -> Report {
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
                        // Frozen, or deployed and not running (a cold standby: Start
                        // cold-starts it, the paper's "regular startup").
                        standby: a.state.is_frozen() || a.state == torpor_api::AppState::Stopped,
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

/// Attempts at re-opening a broken stream before waiting for the next tick, and the pause
/// between them.
const REOPEN_TRIES: u32 = 5;
const REOPEN_PAUSE: Duration = Duration::from_millis(100);

/// A lease kept alive across broken connections: a broken keep-alive stream is re-opened on
/// the same client (which balances over every etcd endpoint) at the next tick. The lease is
/// lost when etcd says so, or when no keep-alive was answered for a whole TTL.
pub struct LeaseKeep {
    id: i64,
    ttl: Duration,
    last_ack: Instant,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl LeaseKeep {
    /// Open the keep-alive stream of lease `id` (TTL `ttl` seconds).
    pub async fn open(client: &mut Client, id: i64, ttl: i64) -> anyhow::Result<LeaseKeep> {
        let stream = client.lease_keep_alive(id).await?;
        Ok(LeaseKeep {
            id,
            ttl: Duration::from_secs(ttl.max(1) as u64),
            last_ack: Instant::now(),
            stream: Some(stream),
        })
    }

    /// How often to call [`LeaseKeep::keep_alive`]: a third of the TTL.
    pub fn period(&self) -> Duration {
        self.ttl / 3
    }

    /// Send a keep-alive, or re-open a broken stream. `Err`: the lease is lost (why).
    pub async fn keep_alive(&mut self, client: &mut Client) -> Result<(), String> {
        if self.last_ack.elapsed() > self.ttl {
            return Err(format!("lease {} not renewed for a whole TTL", self.id));
        }
        if let Some((keeper, _)) = &mut self.stream {
            if keeper.keep_alive().await.is_ok() {
                return Ok(());
            }
        }
        self.stream = None;
        // The balanced client may pick the dead member again: try again at once, a few times.
        for _ in 0..REOPEN_TRIES {
            match client.lease_keep_alive(self.id).await {
                Ok(k) => {
                    // The stream's first answer (a live TTL) was read by the call.
                    self.last_ack = Instant::now();
                    self.stream = Some(k);
                    tracing::info!(lease = self.id, "keep-alive stream re-opened");
                    return Ok(());
                }
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                    return Err(format!("lease {} expired", self.id));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "re-opening the keep-alive stream");
                    tokio::time::sleep(REOPEN_PAUSE).await;
                }
            }
        }
        Ok(())
    }

    /// The next answer on the stream (pending while it is closed).
    pub async fn next(&mut self) -> Result<Option<LeaseKeepAliveResponse>, etcd_client::Error> {
        match &mut self.stream {
            Some((_, acks)) => acks.message().await,
            None => std::future::pending().await,
        }
    }

    /// Take an answer from [`LeaseKeep::next`]. `Err`: the lease expired.
    pub fn ack(
        &mut self,
        ack: Result<Option<LeaseKeepAliveResponse>, etcd_client::Error>,
    ) -> Result<(), String> {
        match ack {
            Ok(Some(a)) if a.ttl() > 0 => self.last_ack = Instant::now(),
            Ok(Some(_)) => return Err(format!("lease {} expired", self.id)),
            Ok(None) | Err(_) => {
                // Its connection broke: re-opened at the next tick.
                tracing::warn!(lease = self.id, "keep-alive stream broken");
                self.stream = None;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Pacer;
    use std::time::{Duration, Instant};

    /// Samples every 250 ms, reports every second: a trip of the CPU rule is published with
    /// the sample that saw it, and so is its clearing; otherwise one report a second.
    #[test]
    fn reports_every_interval_and_at_once_when_the_rule_trips() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut p = Pacer::new(Duration::from_secs(1), Duration::from_millis(250));
        let published: Vec<u64> = [
            (0, false),
            (250, false),
            (500, false),
            (750, false),
            (1000, false),
            (1250, false),
            (1500, true),
            (1750, true),
            (2000, true),
            (2250, true),
            (2500, true),
            (2750, false),
            (3000, false),
        ]
        .into_iter()
        .filter(|&(t, tripped)| p.due(ms(t), tripped))
        .map(|(t, _)| t)
        .collect();
        assert_eq!(published, vec![0, 1000, 1500, 2500, 2750]);
        // A late tick (timer jitter) a little short of the interval still publishes.
        let mut p = Pacer::new(Duration::from_secs(1), Duration::from_millis(250));
        assert!(p.due(ms(0), false));
        assert!(p.due(ms(900), false));
        assert!(!p.due(ms(1100), false));
    }
}
