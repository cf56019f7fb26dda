//! The placement policy, a pure function of what etcd and HAProxy say (unit-tested without
//! either): activate an app on the least-loaded host that holds it in standby when a host
//! running it is overloaded (or fewer than `min_running` run), drain one instance when load has
//! been low for a while, stop it once drained, and forget placements on hosts whose lease
//! expired. Also the router's wanted state: which server of which backend is in service.

use crate::haproxy::Admin;
use crate::schema::{AppSpec, Desired, HostRecord, Outcome, Placement, Report, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// Below this CPU fraction of its share a host counts as lightly loaded.
pub const LOW_LOAD: f64 = 0.3;

/// Everything the controller knows at one tick.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub hosts: BTreeMap<String, HostRecord>,
    pub reports: BTreeMap<String, Report>,
    pub apps: BTreeMap<String, AppSpec>,
    /// (host, app) → (mod_revision, placement).
    pub placements: BTreeMap<(String, String), (i64, Placement)>,
    pub statuses: BTreeMap<(String, String), Status>,
    /// Now (Unix seconds).
    pub now: f64,
    /// (backend, server) the router has drained: HAProxy shows it out of service (drain or
    /// maintenance) with no session left. Without a router, every draining server.
    pub drained: BTreeSet<(String, String)>,
}

/// A decision: write (or delete) one placement.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Place {
        host: String,
        app: String,
        desired: Desired,
        reason: String,
    },
    /// The host is gone (lease expired): its placement is dropped.
    Forget {
        host: String,
        app: String,
        reason: String,
    },
}

/// What the policy remembers between ticks: since when (Unix seconds) each app has been
/// lightly loaded without a break.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub low_since: BTreeMap<String, f64>,
}

impl View {
    fn placement(&self, host: &str, app: &str) -> Option<&(i64, Placement)> {
        self.placements.get(&(host.to_string(), app.to_string()))
    }

    /// The placement is `Running` and its host answered it `Ready`.
    pub fn ready(&self, host: &str, app: &str) -> bool {
        let key = (host.to_string(), app.to_string());
        match (self.placements.get(&key), self.statuses.get(&key)) {
            (Some((rev, p)), Some(s)) => {
                p.desired == Desired::Running
                    && s.placement_rev == *rev
                    && s.outcome == Outcome::Ready
            }
            _ => false,
        }
    }

    /// The host answered the current placement with a failure.
    pub fn failed(&self, host: &str, app: &str) -> bool {
        let key = (host.to_string(), app.to_string());
        match (self.placements.get(&key), self.statuses.get(&key)) {
            (Some((rev, _)), Some(s)) => s.placement_rev == *rev && s.outcome == Outcome::Failed,
            _ => false,
        }
    }

    /// Live hosts with the app placed in `desired`.
    fn placed(&self, app: &str, desired: Desired) -> Vec<&str> {
        self.placements
            .iter()
            .filter(|((h, a), (_, p))| a == app && p.desired == desired && self.up(h))
            .map(|((h, _), _)| h.as_str())
            .collect()
    }

    /// The host is registered and its torpord answered its last report (a host not reported
    /// yet counts as up).
    pub fn up(&self, host: &str) -> bool {
        self.hosts.contains_key(host) && self.reports.get(host).is_none_or(|r| r.torpord.is_some())
    }

    fn overloaded(&self, host: &str) -> bool {
        self.reports.get(host).is_some_and(Report::overloaded)
    }

    /// Where to activate `app`: a live host holding it in standby, not overloaded, not running
    /// or draining it, whose last placement of it did not fail; the least loaded (CPU fraction,
    /// then the most MemAvailable, then the name).
    pub fn standby_host(&self, app: &str) -> Option<&str> {
        let mut c: Vec<(&str, &Report)> = self
            .reports
            .iter()
            .filter(|(h, r)| {
                self.up(h)
                    && r.apps.get(app).is_some_and(|a| a.standby && !a.busy)
                    && !r.overloaded()
                    && !self.failed(h, app)
                    && !self
                        .placement(h, app)
                        .is_some_and(|(_, p)| p.desired != Desired::Standby)
            })
            .map(|(h, r)| (h.as_str(), r))
            .collect();
        c.sort_by(|(ha, a), (hb, b)| {
            a.cpu
                .fraction
                .total_cmp(&b.cpu.fraction)
                .then(b.mem_available_bytes.cmp(&a.mem_available_bytes))
                .then(ha.cmp(hb))
        });
        c.first().map(|(h, _)| *h)
    }
}

fn place(host: &str, app: &str, desired: Desired, reason: String) -> Action {
    Action::Place {
        host: host.into(),
        app: app.into(),
        desired,
        reason,
    }
}

/// One tick's decisions at `view.now`. `cooldown`: seconds of light load before an instance is
/// drained.
pub fn decide(view: &View, mem: &mut Memory, cooldown: f64) -> Vec<Action> {
    let mut out = vec![];
    for ((host, app), (_, p)) in &view.placements {
        let reason = if !view.apps.contains_key(app) {
            format!("refused: no app {app} in apps/")
        } else if !view.hosts.contains_key(host) {
            // Unknown, or its lease expired; a standby placement goes too: a host that comes
            // back stops what it has no placement for.
            format!("host {host} is not registered (unknown, or its lease expired)")
        } else if !view.up(host) && p.desired != Desired::Standby {
            let why = view.reports.get(host).and_then(|r| r.torpord_error.clone());
            format!(
                "torpord on {host} does not answer: {}",
                why.unwrap_or_default()
            )
        } else {
            continue;
        };
        out.push(Action::Forget {
            host: host.clone(),
            app: app.clone(),
            reason,
        });
    }
    for (app, spec) in &view.apps {
        out.extend(decide_app(view, mem, cooldown, app, spec));
    }
    mem.low_since.retain(|a, _| view.apps.contains_key(a));
    out
}

fn decide_app(
    view: &View,
    mem: &mut Memory,
    cooldown: f64,
    app: &str,
    spec: &AppSpec,
) -> Vec<Action> {
    let running = view.placed(app, Desired::Running);
    let pending = running
        .iter()
        .any(|h| !view.ready(h, app) && !view.failed(h, app));
    let ready: Vec<&str> = running
        .iter()
        .copied()
        .filter(|h| view.ready(h, app))
        .collect();
    let hot: Vec<&str> = ready
        .iter()
        .copied()
        .filter(|h| view.overloaded(h))
        .collect();
    let mut out = vec![];
    // Drained instances are stopped.
    for h in view.placed(app, Desired::Draining) {
        let server = (spec.backend.clone(), h.to_string());
        if view.drained.contains(&server) {
            let why = "drained: out of service, no session left".to_string();
            out.push(place(h, app, Desired::Standby, why));
        }
    }
    let live = running.iter().filter(|h| !view.failed(h, app)).count() as u32;
    let want_more = if live < spec.min_running {
        Some(format!("{live} running < min_running {}", spec.min_running))
    } else if !hot.is_empty() && !pending && live < spec.max_running {
        let r = &view.reports[hot[0]];
        Some(format!(
            "host {} overloaded (cpu {:.2} of its share, flags {:?})",
            hot[0], r.cpu.fraction, r.torpord
        ))
    } else {
        None
    };
    if let Some(why) = want_more {
        mem.low_since.remove(app);
        if !pending {
            if let Some(h) = view.standby_host(app) {
                out.push(place(h, app, Desired::Running, why));
            }
        }
        return out;
    }
    let low = !pending
        && hot.is_empty()
        && ready.iter().all(|h| {
            view.reports
                .get(*h)
                .is_some_and(|r| r.cpu.fraction < LOW_LOAD)
        });
    if !(low && live > spec.min_running && !ready.is_empty()) {
        mem.low_since.remove(app);
        return out;
    }
    let since = *mem.low_since.entry(app.to_string()).or_insert(view.now);
    let low_for = view.now - since;
    if low_for >= cooldown {
        // The most recent activation goes first.
        let last = ready
            .iter()
            .max_by_key(|h| view.placement(h, app).map(|(rev, _)| *rev))
            .copied();
        if let Some(h) = last {
            out.push(place(
                h,
                app,
                Desired::Draining,
                format!("load below {LOW_LOAD} of the share for {low_for:.1} s"),
            ));
            mem.low_since.remove(app);
        }
    }
    out
}

/// What the router should have for one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    pub addr: SocketAddr,
    pub admin: Admin,
    /// HAProxy weight: the host's share in hundredths of a core (1..=256).
    pub weight: u32,
    /// HAProxy `maxconn` (the app's `max_conn`; 0 unlimited).
    pub maxconn: u32,
}

/// The router's wanted state: (backend, server) → [`Server`], for every placement on a live
/// host that serves the app (ready → in service, draining → drain, else maintenance).
pub fn router(view: &View) -> BTreeMap<(String, String), Server> {
    let mut out = BTreeMap::new();
    for ((host, app), (_, p)) in &view.placements {
        let (Some(rec), Some(spec)) = (view.hosts.get(host), view.apps.get(app)) else {
            continue;
        };
        if !view.up(host) {
            continue;
        }
        let Some(addr) = rec.endpoints.get(app) else {
            continue;
        };
        let admin = match p.desired {
            Desired::Running if view.ready(host, app) => Admin::Ready,
            Desired::Draining => Admin::Drain,
            _ => Admin::Maint,
        };
        let share = view.reports.get(host).map_or(1.0, |r| r.cpu.share_cores);
        let weight = (share * 100.0).round().clamp(1.0, 256.0) as u32;
        let server = Server {
            addr: *addr,
            admin,
            weight,
            maxconn: spec.max_conn,
        };
        out.insert((spec.backend.clone(), host.clone()), server);
    }
    out
}

#[cfg(test)]
mod tests;
