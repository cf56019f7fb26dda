//! The placement controller (`torpor-fleet controller`): campaigns in etcd's election; as the
//! leader, each tick it reads the fleet from etcd, brings HAProxy to the wanted state (which
//! also re-syncs a restarted HAProxy), reads back what HAProxy drained, decides (the pure
//! [`policy`](crate::policy)) and writes the placements in transactions fenced by its leader
//! key, so a deposed leader cannot write.

use crate::agent::{connect, LeaseKeep};
use crate::haproxy::{Admin, Haproxy, ServerState};
use crate::obs::{ErrorRun, Obs};
use crate::policy::{decide, router, Action, Memory, View};
use crate::schema::{
    decode, encode, unix_now, Desired, Key, Outcome, Placement, Report, ELECTION, PREFIX, SCHEMA,
};
use anyhow::bail;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions, WatchResponse, WatchStream,
};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The controller's configuration (its command line).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub id: String,
    pub etcd: Vec<String>,
    pub haproxy: Option<PathBuf>,
    /// Lease TTL of the leadership, seconds.
    pub ttl: i64,
    pub tick: Duration,
    /// Seconds of light load before an instance is drained.
    pub cooldown: f64,
    pub listen: Option<SocketAddr>,
}

/// The leader's identity: its election key and that key's create revision (the fence).
#[derive(Debug, Clone)]
struct Leadership {
    key: Vec<u8>,
    rev: i64,
}

/// What the controller remembers across ticks (and terms).
#[derive(Debug, Default)]
struct Memo {
    policy: Memory,
    /// (key, mod_revision) of malformed values already flagged.
    flagged: BTreeSet<(String, i64)>,
    haproxy_pid: Option<u32>,
}

/// Run until the process is killed: campaign, lead, and campaign again after losing the lease.
pub async fn run(cfg: ControllerConfig) -> anyhow::Result<()> {
    let obs = Obs::default();
    if let Some(addr) = cfg.listen {
        let o = obs.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::obs::serve(addr, o).await {
                tracing::error!(error = %e, "metrics server on {addr}");
            }
        });
    }
    let mut memo = Memo::default();
    let mut backoff = Duration::from_millis(250);
    loop {
        let t0 = Instant::now();
        let r = term(&cfg, &obs, &mut memo).await;
        let mut led = false;
        obs.update(|g| led = std::mem::take(&mut g.leader));
        if let Err(e) = r {
            let kind = if led {
                "lost_leadership"
            } else {
                "campaign_error"
            };
            obs.event(kind, None, None, format!("{e:#}"), 0.0);
        }
        if led || t0.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(250);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
}

/// Keep the lease alive until it is lost (returns why); a broken keep-alive stream is
/// re-opened in place (on another etcd member when its member died).
async fn keep_lease(mut client: Client, mut lease: LeaseKeep) -> String {
    let mut t = tokio::time::interval(lease.period());
    loop {
        let r = tokio::select! {
            _ = t.tick() => lease.keep_alive(&mut client).await,
            a = lease.next() => lease.ack(a),
        };
        if let Err(why) = r {
            return why;
        }
    }
}

/// A task aborted when its handle is dropped (the lease's keep-alive ends with the term).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A write refused by the fence: another replica leads. Ends the term.
#[derive(Debug, thiserror::Error)]
#[error("no longer the leader (the election key's revision changed)")]
struct Deposed;

/// Campaign with `lease` until elected. A campaign whose connection broke (its etcd member
/// died) is made again with the same lease: the same election key, its place kept.
async fn campaign(
    cfg: &ControllerConfig,
    lease: i64,
    lost: &mut AbortOnDrop<String>,
) -> anyhow::Result<Leadership> {
    // Its own connection: a campaign waits as long as another replica leads.
    let mut elect = crate::agent::connect_with(&cfg.etcd, None).await?;
    loop {
        let r = tokio::select! {
            r = elect.campaign(ELECTION, cfg.id.clone(), lease) => r,
            why = &mut lost.0 => bail!("lease lost while campaigning: {}", why.unwrap_or_default()),
        };
        match r {
            Ok(elected) => {
                let Some(k) = elected.leader() else {
                    bail!("campaign answered without a leader key")
                };
                return Ok(Leadership {
                    key: k.key().to_vec(),
                    rev: k.rev(),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "campaign interrupted; campaigning again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The watch on the whole layout, re-opened in place when its connection breaks.
struct Changes {
    stream: Option<WatchStream>,
    next_rev: Option<i64>,
}

impl Changes {
    async fn reopen(&mut self, client: &mut Client) {
        let mut opts = WatchOptions::new().with_prefix();
        if let Some(r) = self.next_rev {
            opts = opts.with_start_revision(r);
        }
        match client.watch(PREFIX, Some(opts)).await {
            Ok(w) => self.stream = Some(w),
            Err(e) => tracing::warn!(error = %e, "opening the watch on {PREFIX}; next tick"),
        }
    }

    async fn next(&mut self) -> Result<Option<WatchResponse>, etcd_client::Error> {
        match &mut self.stream {
            Some(w) => w.message().await,
            None => std::future::pending().await,
        }
    }

    /// Whether a message calls for a tick now ([`wakes`]). A broken stream is
    /// dropped (re-opened by the caller); a cancelled one too (it starts again from now).
    fn take(&mut self, w: Result<Option<WatchResponse>, etcd_client::Error>) -> bool {
        let Ok(Some(w)) = w else {
            tracing::warn!("the watch on {PREFIX} broke; re-opening");
            self.stream = None;
            return false;
        };
        if w.canceled() {
            self.stream = None;
            self.next_rev = None;
            return false;
        }
        if let Some(h) = w.header() {
            self.next_rev = Some(h.revision() + 1);
        }
        w.events()
            .iter()
            .any(|e| e.kv().is_none_or(|kv| wakes(kv.key(), kv.value())))
    }
}

/// Whether a changed key calls for a tick at once: any change but a report, and a report of an
/// overloaded host (the first report that trips the rule is acted on, not the next tick).
/// A deleted report (its lease expired) has no value and does not.
pub fn wakes(key: &[u8], value: &[u8]) -> bool {
    if !key.starts_with(Key::kind_prefix("reports").as_bytes()) {
        return true;
    }
    !value.is_empty() && crate::agent::parse::<Report>(key, value).is_some_and(|r| r.overloaded())
}

/// One term: lease, campaign (blocks until elected), then lead until the lease is lost or a
/// fenced write fails. An etcd request that fails otherwise (its member died) skips the tick.
async fn term(cfg: &ControllerConfig, obs: &Obs, memo: &mut Memo) -> anyhow::Result<()> {
    let mut client = connect(&cfg.etcd).await?;
    let lease = client.lease_grant(cfg.ttl, None).await?.id();
    let keep = LeaseKeep::open(&mut client, lease, cfg.ttl).await?;
    let mut lost = AbortOnDrop(tokio::spawn(keep_lease(client.clone(), keep)));
    let t0 = Instant::now();
    let me = campaign(cfg, lease, &mut lost).await?;
    obs.event(
        "leader",
        None,
        None,
        format!("{} leads (election key revision {})", cfg.id, me.rev),
        t0.elapsed().as_secs_f64(),
    );
    obs.update(|g| g.leader = true);
    let hap = cfg.haproxy.clone().map(Haproxy::new);
    let mut ticker = tokio::time::interval(cfg.tick);
    // A change of placement, status, host or app is acted on at once (a host's `ready` goes
    // into service without waiting for the next tick), and so is an overloaded host's report;
    // other reports at the tick.
    let mut changes = Changes {
        stream: None,
        next_rev: None,
    };
    changes.reopen(&mut client).await;
    let mut errors = ErrorRun::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => if changes.stream.is_none() {
                changes.reopen(&mut client).await;
            },
            w = changes.next() => if !changes.take(w) {
                continue;
            },
            why = &mut lost.0 => bail!("leadership lost: {}", why.unwrap_or_default()),
        }
        match tick(cfg, &mut client, &me, hap.as_ref(), obs, memo).await {
            Ok(()) => {
                if let Some((n, secs)) = errors.succeeded() {
                    let m = format!("ticks act again after {n} failed");
                    obs.event("tick_recovered", None, None, m, secs);
                }
            }
            Err(e) if e.downcast_ref::<Deposed>().is_some() => {
                // Step down at once: stop the keep-alive and revoke the lease (which deletes
                // the election key), so that another replica leads without waiting for the TTL.
                drop(lost);
                let _ = client.lease_revoke(lease).await;
                return Err(e);
            }
            Err(e) => {
                let m = format!("{e:#}");
                if errors.failed(&m) {
                    obs.event("tick_error", None, None, m, 0.0);
                } else {
                    obs.count("tick_error");
                }
            }
        }
    }
}

/// One tick of the leader.
async fn tick(
    cfg: &ControllerConfig,
    client: &mut Client,
    me: &Leadership,
    hap: Option<&Haproxy>,
    obs: &Obs,
    memo: &mut Memo,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut view = load_view(client, obs, memo).await?;
    view.now = unix_now();
    view.drained = match hap {
        Some(h) => sync_router(h, &view, obs, memo).await,
        // No router: nothing to drain.
        None => draining_servers(&view),
    };
    for a in decide(&view, &mut memo.policy, cfg.cooldown) {
        apply(client, me, &a, obs).await?;
    }
    obs.tick();
    obs.update(|g| gauges(g, &view, t0.elapsed().as_secs_f64()));
    Ok(())
}

fn gauges(g: &mut crate::obs::Gauges, view: &View, seconds: f64) {
    g.hosts = view.hosts.len();
    g.tick_seconds = seconds;
    g.instances.clear();
    for ((host, app), (_, p)) in &view.placements {
        let e = g.instances.entry(app.clone()).or_default();
        match p.desired {
            Desired::Running => {
                e.0 += 1;
                e.1 += usize::from(view.ready(host, app));
            }
            Desired::Draining => e.2 += 1,
            Desired::Standby => {}
        }
    }
}

fn draining_servers(view: &View) -> BTreeSet<(String, String)> {
    view.placements
        .iter()
        .filter(|(_, (_, p))| p.desired == Desired::Draining)
        .filter_map(|((h, a), _)| Some((view.apps.get(a)?.backend.clone(), h.clone())))
        .collect()
}

/// Read the whole layout; malformed values are flagged once (an event) and left out.
async fn load_view(client: &mut Client, obs: &Obs, memo: &mut Memo) -> anyhow::Result<View> {
    let r = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let mut v = View::default();
    for kv in r.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        if key.starts_with(ELECTION) {
            continue;
        }
        if let Err(e) = add_to_view(&mut v, &key, kv.value(), kv.mod_revision()) {
            if memo.flagged.insert((key.clone(), kv.mod_revision())) {
                obs.event("malformed", None, None, format!("ignored: {e}"), 0.0);
            }
        }
    }
    Ok(v)
}

fn add_to_view(v: &mut View, key: &str, value: &[u8], rev: i64) -> Result<(), String> {
    let k = Key::parse(key).map_err(|e| e.to_string())?;
    let e = |e: crate::schema::ValueError| e.to_string();
    match &k {
        Key::Host(h) => {
            v.hosts.insert(h.clone(), decode(&k, value).map_err(e)?);
        }
        Key::Report(h) => {
            v.reports.insert(h.clone(), decode(&k, value).map_err(e)?);
        }
        Key::App(a) => {
            v.apps.insert(a.clone(), decode(&k, value).map_err(e)?);
        }
        Key::Placement { host, app } => {
            let p = decode(&k, value).map_err(e)?;
            v.placements.insert((host.clone(), app.clone()), (rev, p));
        }
        Key::Status { host, app } => {
            v.statuses
                .insert((host.clone(), app.clone()), decode(&k, value).map_err(e)?);
        }
    }
    Ok(())
}

/// Write one decision, fenced by the leader key; a failed fence ends the term.
async fn apply(client: &mut Client, me: &Leadership, a: &Action, obs: &Obs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let (host, app, op, kind, reason) = match a {
        Action::Place {
            host,
            app,
            desired,
            reason,
        } => {
            let p = Placement {
                schema: SCHEMA,
                host: host.clone(),
                app: app.clone(),
                desired: *desired,
                leader_rev: me.rev,
                reason: reason.clone(),
                unix_time: unix_now(),
            };
            let key = Key::Placement {
                host: host.clone(),
                app: app.clone(),
            };
            let kind = match desired {
                Desired::Running => "place_running",
                Desired::Draining => "place_draining",
                Desired::Standby => "place_standby",
            };
            (
                host,
                app,
                TxnOp::put(key.path(), encode(&p), None),
                kind,
                reason,
            )
        }
        Action::Forget { host, app, reason } => {
            let key = Key::Placement {
                host: host.clone(),
                app: app.clone(),
            };
            (host, app, TxnOp::delete(key.path(), None), "forget", reason)
        }
    };
    let fence = Compare::create_revision(me.key.clone(), CompareOp::Equal, me.rev);
    let r = client.txn(Txn::new().when([fence]).and_then([op])).await?;
    if !r.succeeded() {
        return Err(Deposed.into());
    }
    obs.event(
        kind,
        Some(host),
        Some(app),
        reason.clone(),
        t0.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// Bring HAProxy to the wanted state, then report which draining servers are drained. An
/// unreachable HAProxy is an event; then nothing counts as drained.
async fn sync_router(
    hap: &Haproxy,
    view: &View,
    obs: &Obs,
    memo: &mut Memo,
) -> BTreeSet<(String, String)> {
    match sync_router_inner(hap, view, obs, memo).await {
        Ok(d) => d,
        Err(e) => {
            obs.event("router_error", None, None, e.to_string(), 0.0);
            BTreeSet::new()
        }
    }
}

async fn sync_router_inner(
    hap: &Haproxy,
    view: &View,
    obs: &Obs,
    memo: &mut Memo,
) -> Result<BTreeSet<(String, String)>, crate::haproxy::HaproxyError> {
    let pid = hap.pid().await?;
    if memo.haproxy_pid.replace(pid).is_some_and(|old| old != pid) {
        obs.event(
            "haproxy_restart",
            None,
            None,
            format!("HAProxy restarted (pid {pid}): re-synced from etcd"),
            0.0,
        );
    }
    let actual = hap.servers().await?;
    let wanted = router(view);
    for ((backend, server), w) in &wanted {
        let app = view
            .apps
            .iter()
            .find(|(_, s)| &s.backend == backend)
            .map(|(a, _)| a.as_str());
        let have = actual.get(&(backend.clone(), server.clone()));
        converge(hap, view, obs, (backend, server, app), have, w).await?;
    }
    let managed: BTreeSet<&str> = view.apps.values().map(|s| s.backend.as_str()).collect();
    for ((backend, server), st) in &actual {
        let ours = managed.contains(backend.as_str());
        if ours
            && !wanted.contains_key(&(backend.clone(), server.clone()))
            && st.admin() != Admin::Maint
        {
            let t0 = Instant::now();
            hap.set_admin(backend, server, Admin::Maint).await?;
            obs.event(
                "router_maint",
                Some(server),
                None,
                format!("{backend}/{server}: no placement"),
                t0.elapsed().as_secs_f64(),
            );
        }
    }
    let sessions = hap.sessions().await?;
    let after = hap.servers().await?;
    Ok(after
        .iter()
        .filter(|(k, st)| st.admin() != Admin::Ready && sessions.get(*k).copied().unwrap_or(0) == 0)
        .map(|(k, _)| k.clone())
        .collect())
}

/// Bring one server to its wanted state: add it (checks on), move it, weigh it, set its admin state.
async fn converge(
    hap: &Haproxy,
    view: &View,
    obs: &Obs,
    (backend, server, app): (&str, &str, Option<&str>),
    have: Option<&ServerState>,
    w: &crate::policy::Server,
) -> Result<(), crate::haproxy::HaproxyError> {
    let name = format!("{backend}/{server}");
    let t0 = Instant::now();
    let current = match have {
        None if w.admin == Admin::Maint => return Ok(()),
        None => {
            hap.add_server(backend, server, w.addr, (w.weight, w.maxconn))
                .await?;
            obs.event(
                "router_add",
                Some(server),
                app,
                format!("{name} {}", w.addr),
                t0.elapsed().as_secs_f64(),
            );
            Admin::Maint
        }
        Some(st) => {
            let same_addr = st.addr == w.addr.ip().to_string() && st.port == w.addr.port();
            if !same_addr {
                hap.set_admin(backend, server, Admin::Maint).await?;
                hap.set_addr(backend, server, w.addr).await?;
                obs.event(
                    "router_addr",
                    Some(server),
                    app,
                    format!("{name} now {}", w.addr),
                    t0.elapsed().as_secs_f64(),
                );
            }
            if st.weight != w.weight {
                hap.set_weight(backend, server, w.weight).await?;
                obs.event(
                    "router_weight",
                    Some(server),
                    app,
                    format!("{name} weight {}", w.weight),
                    0.0,
                );
            }
            if same_addr {
                st.admin()
            } else {
                Admin::Maint
            }
        }
    };
    if current == w.admin {
        return Ok(());
    }
    let t1 = Instant::now();
    hap.set_admin(backend, server, w.admin).await?;
    let (kind, seconds) = match w.admin {
        Admin::Ready => ("router_ready", ready_age(view, server, app)),
        Admin::Drain => ("router_drain", t1.elapsed().as_secs_f64()),
        Admin::Maint => ("router_maint", t1.elapsed().as_secs_f64()),
    };
    obs.event(kind, Some(server), app, name, seconds);
    if let (Admin::Ready, Some(app)) = (w.admin, app) {
        obs.update(|g| {
            g.ready_to_routed.insert(app.to_string(), seconds);
        });
    }
    Ok(())
}

/// Seconds from the host's `ready` (its status) to now.
fn ready_age(view: &View, host: &str, app: Option<&str>) -> f64 {
    app.and_then(|a| view.statuses.get(&(host.to_string(), a.to_string())))
        .filter(|s| s.outcome == Outcome::Ready)
        .map_or(0.0, |s| (unix_now() - s.done_unix).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::wakes;
    use crate::schema::{encode, Key, Report, SCHEMA};

    /// The first report that trips the CPU rule wakes the controller; other reports wait for
    /// the tick; every other change wakes it.
    #[test]
    fn an_overloaded_report_is_acted_on_at_once() {
        let key = Key::Report("h1".into()).path();
        let mut r = Report {
            schema: SCHEMA,
            host: "h1".into(),
            seq: 1,
            unix_time: 1.0,
            interval_s: 1.0,
            cpu: Default::default(),
            mem_available_bytes: 1,
            share_mem_free_bytes: None,
            paging_rate: 0.0,
            torpord: None,
            torpord_error: None,
            apps: Default::default(),
        };
        r.cpu.share_cores = 0.5;
        r.cpu.fraction = 0.79;
        assert!(!wakes(key.as_bytes(), &encode(&r)));
        r.cpu.fraction = 0.8;
        assert!(wakes(key.as_bytes(), &encode(&r)));
        assert!(!wakes(key.as_bytes(), b""), "a deleted report");
        assert!(!wakes(key.as_bytes(), b"garbage"));
        assert!(wakes(Key::Host("h1".into()).path().as_bytes(), b""));
        assert!(wakes(Key::App("web".into()).path().as_bytes(), b"{}"));
    }
}
