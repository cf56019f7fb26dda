//! The controller's events (every decision and router operation, with its timing) and its
//! Prometheus metrics, served over HTTP (`GET /events`, `GET /metrics`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Events kept in memory (the oldest are dropped).
pub const KEEP: usize = 4096;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub unix_time: f64,
    /// `leader`, `lost_leadership`, `campaign_error`, `place_running`, `place_draining`, `place_standby`,
    /// `forget`, `router_add`, `router_ready`, `router_drain`, `router_maint`, `router_weight`,
    /// `router_addr`, `router_error`, `haproxy_restart`, `malformed`, `refused`, `tick_error`
    /// (the first of a run of identical failures: see [`ErrorRun`]), `tick_recovered`.
    pub kind: String,
    pub host: Option<String>,
    pub app: Option<String>,
    pub message: String,
    /// What the event measures, seconds: a decision's etcd write, a router operation, the wait
    /// for leadership, or (router_ready) the time from the host's `ready` to in service.
    pub seconds: f64,
}

/// Figures that are gauges (set each tick by the leader).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    pub leader: bool,
    pub hosts: usize,
    pub tick_seconds: f64,
    /// app → (running placements, ready, draining).
    pub instances: BTreeMap<String, (usize, usize, usize)>,
    /// app → the last ready-to-in-service time, seconds.
    pub ready_to_routed: BTreeMap<String, f64>,
}

#[derive(Debug, Default)]
struct Inner {
    next_seq: u64,
    events: VecDeque<Event>,
    /// event kind → count.
    counts: BTreeMap<String, u64>,
    ticks: u64,
    gauges: Gauges,
}

/// Events and metrics, shared by the controller loop and the HTTP server.
#[derive(Debug, Clone, Default)]
pub struct Obs(Arc<Mutex<Inner>>);

impl Obs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record (and log) an event.
    pub fn event(
        &self,
        kind: &str,
        host: Option<&str>,
        app: Option<&str>,
        message: String,
        seconds: f64,
    ) {
        tracing::info!(kind, host, app, seconds, "{message}");
        let mut i = self.lock();
        i.next_seq += 1;
        let e = Event {
            seq: i.next_seq,
            unix_time: crate::schema::unix_now(),
            kind: kind.into(),
            host: host.map(str::to_string),
            app: app.map(str::to_string),
            message,
            seconds,
        };
        *i.counts.entry(e.kind.clone()).or_default() += 1;
        if i.events.len() == KEEP {
            i.events.pop_front();
        }
        i.events.push_back(e);
    }

    /// Count one more `kind` in the metrics without an event (a repeat of the last one).
    pub fn count(&self, kind: &str) {
        *self.lock().counts.entry(kind.into()).or_default() += 1;
    }

    pub fn events(&self) -> Vec<Event> {
        self.lock().events.iter().cloned().collect()
    }

    pub fn tick(&self) {
        self.lock().ticks += 1;
    }

    pub fn update(&self, f: impl FnOnce(&mut Gauges)) {
        f(&mut self.lock().gauges);
    }

    /// The Prometheus exposition.
    pub fn render(&self) -> String {
        let i = self.lock();
        render(&i.counts, i.ticks, &i.gauges)
    }
}

/// A failure that repeats at every tick (an etcd member down: each tick's request to it fails the
/// same way) is one event, not four a second that push every decision out of the event ring: the
/// first of a run of identical messages is an event, the repeats are only counted (the metric
/// `torpor_fleet_events_total{kind="tick_error"}` counts every failed tick), and the first tick
/// that succeeds again says how many failed, over how long.
#[derive(Debug, Default)]
pub struct ErrorRun {
    since: Option<std::time::Instant>,
    message: String,
    failed: u64,
}

impl ErrorRun {
    /// A failed tick with `message`: whether it is an event (a different failure from the last).
    pub fn failed(&mut self, message: &str) -> bool {
        self.failed += 1;
        self.since.get_or_insert_with(std::time::Instant::now);
        if self.message == message {
            return false;
        }
        self.message = message.to_string();
        true
    }

    /// A tick that succeeded: after a run of failures, how many and the seconds since the first.
    pub fn succeeded(&mut self) -> Option<(u64, f64)> {
        let since = self.since.take()?;
        let n = std::mem::take(&mut self.failed);
        self.message.clear();
        Some((n, since.elapsed().as_secs_f64()))
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

/// The Prometheus text exposition of the counts and gauges (a pure function).
pub fn render(counts: &BTreeMap<String, u64>, ticks: u64, g: &Gauges) -> String {
    let mut o = String::new();
    metric(
        &mut o,
        "torpor_fleet_leader",
        "gauge",
        "1 while this controller leads",
    );
    o += &format!("torpor_fleet_leader {}\n", u8::from(g.leader));
    metric(
        &mut o,
        "torpor_fleet_leader_ticks_total",
        "counter",
        "Ticks run as the leader",
    );
    o += &format!("torpor_fleet_leader_ticks_total {ticks}\n");
    metric(
        &mut o,
        "torpor_fleet_events_total",
        "counter",
        "Decisions and router operations, by kind",
    );
    for (k, n) in counts {
        o += &format!("torpor_fleet_events_total{{kind=\"{k}\"}} {n}\n");
    }
    metric(
        &mut o,
        "torpor_fleet_hosts",
        "gauge",
        "Live hosts (registered with a lease)",
    );
    o += &format!("torpor_fleet_hosts {}\n", g.hosts);
    metric(
        &mut o,
        "torpor_fleet_tick_seconds",
        "gauge",
        "Duration of the last tick",
    );
    o += &format!("torpor_fleet_tick_seconds {}\n", g.tick_seconds);
    metric(
        &mut o,
        "torpor_fleet_instances",
        "gauge",
        "Instances per app and state",
    );
    for (app, (running, ready, draining)) in &g.instances {
        for (state, n) in [
            ("running", running),
            ("ready", ready),
            ("draining", draining),
        ] {
            o += &format!("torpor_fleet_instances{{app=\"{app}\",state=\"{state}\"}} {n}\n");
        }
    }
    metric(
        &mut o,
        "torpor_fleet_ready_to_routed_seconds",
        "gauge",
        "Last time from a host's ready to its server in service",
    );
    for (app, s) in &g.ready_to_routed {
        o += &format!("torpor_fleet_ready_to_routed_seconds{{app=\"{app}\"}} {s}\n");
    }
    o
}

/// Serve `GET /metrics` and `GET /events` on `addr` until the process ends.
pub async fn serve(addr: std::net::SocketAddr, obs: Obs) -> anyhow::Result<()> {
    use axum::{routing::get, Json, Router};
    let (m, e) = (obs.clone(), obs);
    let app = Router::new()
        .route("/metrics", get(move || async move { m.render() }))
        .route("/events", get(move || async move { Json(e.events()) }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identical failures in a row are one event; another message is another event; a success
    /// after failures reports them all (and only once); the metric counts every failure.
    #[test]
    fn a_run_of_identical_tick_errors_is_one_event() {
        let obs = Obs::default();
        let mut run = ErrorRun::default();
        let fail = |run: &mut ErrorRun, m: &str| {
            if run.failed(m) {
                obs.event("tick_error", None, None, m.into(), 0.0);
            } else {
                obs.count("tick_error");
            }
        };
        assert_eq!(run.succeeded(), None);
        for m in [
            "member down",
            "member down",
            "member down",
            "timeout",
            "timeout",
        ] {
            fail(&mut run, m);
        }
        let (n, _) = run.succeeded().unwrap();
        assert_eq!(n, 5);
        assert_eq!(run.succeeded(), None);
        fail(&mut run, "timeout");
        let msgs: Vec<String> = obs.events().into_iter().map(|e| e.message).collect();
        assert_eq!(msgs, ["member down", "timeout", "timeout"]);
        assert!(obs
            .render()
            .contains("torpor_fleet_events_total{kind=\"tick_error\"} 6\n"));
    }

    #[test]
    fn renders_the_exposition() {
        let counts = [("place_running".to_string(), 2u64)].into();
        let g = Gauges {
            leader: true,
            hosts: 3,
            tick_seconds: 0.5,
            instances: [("web".to_string(), (2, 1, 0))].into(),
            ready_to_routed: [("web".to_string(), 0.25)].into(),
        };
        let text = render(&counts, 7, &g);
        for line in [
            "torpor_fleet_leader 1",
            "torpor_fleet_leader_ticks_total 7",
            "torpor_fleet_events_total{kind=\"place_running\"} 2",
            "torpor_fleet_hosts 3",
            "torpor_fleet_instances{app=\"web\",state=\"running\"} 2",
            "torpor_fleet_instances{app=\"web\",state=\"ready\"} 1",
            "torpor_fleet_instances{app=\"web\",state=\"draining\"} 0",
            "torpor_fleet_ready_to_routed_seconds{app=\"web\"} 0.25",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Every sample has its TYPE line.
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(types, 7);
    }

    #[test]
    fn events_are_numbered_counted_and_bounded() {
        let o = Obs::default();
        for i in 0..KEEP + 2 {
            o.event("router_add", Some("h1"), Some("web"), format!("{i}"), 0.0);
        }
        let ev = o.events();
        assert_eq!(ev.len(), KEEP);
        assert_eq!((ev[0].seq, ev[KEEP - 1].seq), (3, KEEP as u64 + 2));
        assert!(o.render().contains(&format!(
            "torpor_fleet_events_total{{kind=\"router_add\"}} {}",
            KEEP + 2
        )));
    }
}
