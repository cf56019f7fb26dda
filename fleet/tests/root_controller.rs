//! The controller on a real etcd, a real HAProxy and emulated hosts (root: torpord).
//! Run by `make fleet-test` (`fleet/tests/run-fleet-tests.sh`).

mod common;

use common::*;
use std::time::Instant;
use torpor_api::AppState;
use torpor_fleet::haproxy::log::{earliest, RequestLog};
use torpor_fleet::haproxy::Admin;
use torpor_fleet::obs::Event;
use torpor_fleet::schema::{Desired, Key, Outcome, Placement, Status};

/// The seq of the first event of `kind` about `host`, panicking with the list when none.
fn seq(events: &[Event], kind: &str, host: &str) -> u64 {
    events
        .iter()
        .find(|e| e.kind == kind && e.host.as_deref() == Some(host))
        .map(|e| e.seq)
        .unwrap_or_else(|| panic!("no {kind} event for {host} in {events:#?}"))
}

/// GET / through HAProxy's frontend: (status, body).
fn through_router(port: u16) -> (u16, Vec<u8>) {
    local_controller::probe::http_get(&format!("http://127.0.0.1:{port}/"), HANG).unwrap()
}

/// HAProxy's own log: the first request `host`'s server answered was answered after the host
/// reported ready (HAProxy logs in whole ms: 2 ms of slack for its truncation).
async fn first_answer_after_ready(hap: &Haproxy, host: &str, ready_unix: f64) {
    let ready_ms = (ready_unix * 1000.0) as i64;
    let mut answered = None;
    wait_for(
        "HAProxy's log line of a request web/h1 answered",
        HANG,
        || {
            let logs = hap.requests();
            answered = earliest(&logs, "web", host, RequestLog::answered_ms)
                .and_then(RequestLog::answered_ms);
            std::future::ready(answered.is_some())
        },
    )
    .await;
    let answered = answered.unwrap();
    assert!(
        answered >= ready_ms - 2,
        "HAProxy logged an answer from {host} at {answered} ms, before its ready at {ready_ms} ms"
    );
    println!(
        "ready -> first request answered by {host} (HAProxy's log): {} ms",
        answered - ready_ms
    );
}

/// min_running 0 on an idle app: drained, then Standby, then out of service, in that order.
async fn scale_to_zero(etcd: &Etcd, hap: &Haproxy, ctl: &Controller) {
    let mut c = etcd.client().await.unwrap();
    put_app(&mut c, "web", 0, 1).await;
    wait_for("web stopped on h1", HANG, || async {
        let mut c = etcd.client().await.unwrap();
        matches!(get_one::<Status>(&mut c, &status_key("h1")).await, Some((_, s)) if s.outcome == Outcome::Stopped)
    })
    .await;
    wait_eq(
        "web/h1 in maintenance",
        || hap.admin("web", "h1"),
        Some(Admin::Maint),
    )
    .await;
    let ev = ctl.events();
    let (d, r, st, m) = (
        seq(&ev, "place_draining", "h1"),
        seq(&ev, "router_drain", "h1"),
        seq(&ev, "place_standby", "h1"),
        seq(&ev, "router_maint", "h1"),
    );
    assert!(
        d < r && r < st && st < m,
        "draining {d}, drain {r}, standby {st}, maint {m}"
    );
}

/// min_running 1: the controller activates the standby app, adds the server to HAProxy once the
/// host reported ready and serves through it; min_running 0 and an idle app: it drains the
/// server before placing Standby, and takes it out after the Stop. A restarted HAProxy is
/// re-synced from etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root: real etcd, HAProxy, torpord and cgroups (make fleet-test)"]
async fn routes_after_ready_and_drains_before_stop() {
    let tmp = TempDir::new("router");
    let etcd = Etcd::start(&tmp.0).await;
    let mut hap = Haproxy::start(&tmp.0, &["web"]).await;
    let mut h = Host::start_torpord(&tmp.0, "h1", &["web"], 16);
    h.wait_standby().await;
    h.start_agent(&etcd.url);
    let api = h.torpord_api();
    let before = api.apps().await.unwrap().apps[0].counters.clone();
    let ctl = Controller::start(&tmp.0, "c1", &etcd.url, Some(&hap.sock), 1);
    let mut c = etcd.client().await.unwrap();
    put_app(&mut c, "web", 1, 1).await;

    wait_eq(
        "web/h1 in service",
        || hap.admin("web", "h1"),
        Some(Admin::Ready),
    )
    .await;
    let (prev, s) = get_one::<Status>(&mut c, &status_key("h1")).await.unwrap();
    let (prev_p, p) = get_one::<Placement>(&mut c, &placement_key("h1"))
        .await
        .unwrap();
    assert!(prev > 0 && prev_p > 0);
    assert_eq!(
        (p.desired, s.outcome, s.placement_rev),
        (Desired::Running, Outcome::Ready, prev_p)
    );
    let served = hap.served("web", "h1").await;
    assert_eq!(through_router(hap.frontend("web")), (200, b"ok\n".to_vec()));
    assert_eq!(hap.served("web", "h1").await, served + 1);
    // The server is the host's own loopback address (127.0.0.N), as its agent registered it.
    let servers = hap.api().servers().await.unwrap();
    let server = &servers[&("web".to_string(), "h1".to_string())];
    assert_eq!(
        (server.addr.as_str(), server.port),
        (h.addr.to_string().as_str(), h.port("web"))
    );
    let ev = ctl.events();
    assert!(seq(&ev, "place_running", "h1") < seq(&ev, "router_add", "h1"));
    assert!(seq(&ev, "router_add", "h1") < seq(&ev, "router_ready", "h1"));
    let ready_ev = ev.iter().find(|e| e.kind == "router_ready").unwrap();
    assert!(
        ready_ev.unix_time >= s.done_unix,
        "in service before the host said ready"
    );
    println!(
        "ready -> in service: {:.3} s (status watch, runtime API)",
        ready_ev.seconds
    );
    first_answer_after_ready(&hap, "h1", s.done_unix).await;

    // HAProxy restarted: its dynamic server is gone; the controller adds it back.
    hap = Haproxy::restart(&tmp.0, hap).await;
    wait_eq(
        "web/h1 back in service after HAProxy's restart",
        || hap.admin("web", "h1"),
        Some(Admin::Ready),
    )
    .await;
    let ev = ctl.events();
    assert_eq!(ev.iter().filter(|e| e.kind == "haproxy_restart").count(), 1);
    assert_eq!(ev.iter().filter(|e| e.kind == "router_add").count(), 2);

    scale_to_zero(&etcd, &hap, &ctl).await;
    let after = api.apps().await.unwrap().apps[0].clone();
    assert!(after.state.is_frozen(), "{}", after.state);
    assert_eq!(
        (after.counters.starts, after.counters.stops),
        (before.starts + 1, before.stops + 1)
    );
    assert_eq!(ctl.metric("torpor_fleet_leader"), Some(1.0));
}

/// Two controllers: kill -9 the leader; the other leads, and the placement it finds is not
/// enacted again (no duplicate Start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root: real etcd, torpord and cgroups (make fleet-test)"]
async fn leader_failover_without_duplicate_start() {
    let tmp = TempDir::new("failover");
    let etcd = Etcd::start(&tmp.0).await;
    let mut h = Host::start_torpord(&tmp.0, "h1", &["web"], 16);
    h.wait_standby().await;
    h.start_agent(&etcd.url);
    let api = h.torpord_api();
    let before = api.apps().await.unwrap().apps[0].counters.clone();
    let mut ctls = [
        Controller::start(&tmp.0, "c1", &etcd.url, None, 1000),
        Controller::start(&tmp.0, "c2", &etcd.url, None, 1000),
    ];
    wait_for("a leader", HANG, || {
        let n = ctls.iter().filter(|c| c.leads()).count();
        async move { n == 1 }
    })
    .await;
    let leader = ctls.iter().position(|c| c.leads()).unwrap();
    assert!(!ctls[1 - leader].leads());
    let mut c = etcd.client().await.unwrap();
    put_app(&mut c, "web", 1, 1).await;
    wait_for("web ready on h1", HANG, || async {
        let mut c = etcd.client().await.unwrap();
        matches!(get_one::<Status>(&mut c, &status_key("h1")).await, Some((_, s)) if s.outcome == Outcome::Ready)
    })
    .await;
    let (p_rev, _) = get_one::<Placement>(&mut c, &placement_key("h1"))
        .await
        .unwrap();
    let (s_rev, _) = get_one::<Status>(&mut c, &status_key("h1")).await.unwrap();

    ctls[leader].proc.kill();
    let t = Instant::now();
    let other = &ctls[1 - leader];
    wait_for("the other controller to lead", HANG, || {
        let l = other.leads();
        async move { l }
    })
    .await;
    println!(
        "failover: {:.2} s after kill -9 (lease TTL 2 s)",
        t.elapsed().as_secs_f64()
    );
    // The new leader's ticks see the app placed and ready: nothing to do.
    let ticks = other.metric("torpor_fleet_leader_ticks_total").unwrap();
    wait_for("ten ticks of the new leader", HANG, || {
        let n = other
            .metric("torpor_fleet_leader_ticks_total")
            .unwrap_or(0.0);
        async move { n >= ticks + 10.0 }
    })
    .await;
    assert_eq!(
        get_one::<Placement>(&mut c, &placement_key("h1"))
            .await
            .unwrap()
            .0,
        p_rev
    );
    assert_eq!(
        get_one::<Status>(&mut c, &status_key("h1"))
            .await
            .unwrap()
            .0,
        s_rev
    );
    let now = api.apps().await.unwrap().apps[0].clone();
    assert_eq!(now.state, AppState::Running);
    assert_eq!(now.counters.starts, before.starts + 1, "a duplicate Start");
    let ev = other.events();
    assert_eq!(
        ev.iter().filter(|e| e.kind.starts_with("place_")).count(),
        0,
        "{ev:#?}"
    );
}

/// Two hosts holding web; web runs on h1 only. CPU at 80% of h1's share (a busy loop in its
/// cgroup; the share is 0.1 core): the controller activates web on h2, the host holding it in
/// standby, and routes to both; the load gone, it drains and stops the newest instance (h2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root: real etcd, HAProxy, torpord and cgroups (make fleet-test)"]
async fn overload_activates_the_standby_host_and_low_load_stops_it() {
    let tmp = TempDir::new("overload");
    let etcd = Etcd::start(&tmp.0).await;
    let hap = Haproxy::start(&tmp.0, &["web"]).await;
    let mut h1 = Host::start_torpord(&tmp.0, "h1", &["web"], 16);
    let mut h2 = Host::start_torpord(&tmp.0, "h2", &["web"], 16);
    h1.wait_standby().await;
    h2.wait_standby().await;
    h1.start_agent_share(&etcd.url, 0.1);
    let ctl = Controller::start(&tmp.0, "c1", &etcd.url, Some(&hap.sock), 1);
    let mut c = etcd.client().await.unwrap();
    put_app(&mut c, "web", 1, 2).await;
    wait_eq(
        "web/h1 in service",
        || hap.admin("web", "h1"),
        Some(Admin::Ready),
    )
    .await;
    h2.start_agent(&etcd.url);
    let (a1, a2) = (h1.torpord_api(), h2.torpord_api());
    let c1 = a1.apps().await.unwrap().apps[0].counters.clone();
    let c2 = a2.apps().await.unwrap().apps[0].counters.clone();

    let burner = Burner::start(&h1);
    wait_eq(
        "web/h2 in service",
        || hap.admin("web", "h2"),
        Some(Admin::Ready),
    )
    .await;
    assert_eq!(hap.admin("web", "h1").await, Some(Admin::Ready));
    let ev = ctl.events();
    let h2_run = ev
        .iter()
        .find(|e| e.kind == "place_running" && e.host.as_deref() == Some("h2"))
        .unwrap();
    assert!(
        h2_run.message.starts_with("host h1 overloaded"),
        "{h2_run:?}"
    );
    drop(burner);

    wait_eq(
        "web/h2 in maintenance",
        || hap.admin("web", "h2"),
        Some(Admin::Maint),
    )
    .await;
    wait_for("web stopped on h2", HANG, || async {
        let mut c = etcd.client().await.unwrap();
        matches!(get_one::<Status>(&mut c, &status_key("h2")).await, Some((_, s)) if s.outcome == Outcome::Stopped)
    })
    .await;
    let ev = ctl.events();
    let kinds = |kind: &str| -> Vec<String> {
        ev.iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.host.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(kinds("place_running"), ["h1", "h2"]);
    assert_eq!(kinds("place_draining"), ["h2"]);
    assert_eq!(kinds("place_standby"), ["h2"]);
    assert!(seq(&ev, "router_drain", "h2") < seq(&ev, "place_standby", "h2"));
    assert_eq!(hap.admin("web", "h1").await, Some(Admin::Ready));
    let (n1, n2) = (
        a1.apps().await.unwrap().apps[0].clone(),
        a2.apps().await.unwrap().apps[0].clone(),
    );
    assert_eq!(n1.state, AppState::Running);
    assert_eq!(
        (n1.counters.starts, n1.counters.stops),
        (c1.starts, c1.stops)
    );
    assert_eq!(
        (n2.counters.starts, n2.counters.stops),
        (c2.starts + 1, c2.stops + 1)
    );
}

/// web runs on h1, h2 holds it in standby; `fault` strikes h1. Its server is taken out of
/// service before h2's goes in, h1's placement is forgotten with a reason starting with
/// `reason`, and a request through HAProxy is served by h2. Returns h1.
async fn replaced_after(tag: &str, fault: impl FnOnce(&mut Host), reason: &str) -> (TempDir, Host) {
    let tmp = TempDir::new(tag);
    let (_etcd, mut c, w) = web_on_h1_one_controller(&tmp).await;
    let WebOnH1 {
        hap,
        mut h1,
        h2: _h2,
        ctls,
    } = w;
    let ctl = &ctls[0];

    fault(&mut h1);
    wait_eq(
        "web/h2 in service",
        || hap.admin("web", "h2"),
        Some(Admin::Ready),
    )
    .await;
    assert_eq!(hap.admin("web", "h1").await, Some(Admin::Maint));
    let ev = ctl.events();
    assert!(seq(&ev, "router_maint", "h1") < seq(&ev, "router_ready", "h2"));
    let forget: Vec<&Event> = ev.iter().filter(|e| e.kind == "forget").collect();
    assert_eq!(forget.len(), 1, "{forget:?}");
    assert_eq!(forget[0].host.as_deref(), Some("h1"));
    assert!(forget[0].message.starts_with(reason), "{forget:?}");
    assert!(get_one::<Placement>(&mut c, &placement_key("h1"))
        .await
        .is_none());
    let served = (hap.served("web", "h1").await, hap.served("web", "h2").await);
    assert_eq!(through_router(hap.frontend("web")), (200, b"ok\n".to_vec()));
    let now = (hap.served("web", "h1").await, hap.served("web", "h2").await);
    assert_eq!(now, (served.0, served.1 + 1));

    // A host publishing garbage: flagged once, ignored, the controller goes on leading.
    c.put(Key::Report("h9".into()).path(), "garbage", None)
        .await
        .unwrap();
    wait_for("the garbage flagged", HANG, || {
        let n = ctl
            .events()
            .iter()
            .filter(|e| e.kind == "malformed")
            .count();
        async move { n == 1 }
    })
    .await;
    assert!(ctl.leads());
    bad_placements_are_refused(&mut c, ctl).await;
    (tmp, h1)
}

/// Placements naming an app without `apps/` (on live h2) or a host never registered (h7):
/// each refused (deleted) with one `forget` event saying why; the controller goes on leading.
async fn bad_placements_are_refused(c: &mut etcd_client::Client, ctl: &Controller) {
    for (host, app) in [("h2", "ghost"), ("h7", "web")] {
        let p = Placement {
            schema: torpor_fleet::schema::SCHEMA,
            host: host.into(),
            app: app.into(),
            desired: Desired::Running,
            leader_rev: 0,
            reason: "an operator's typo".into(),
            unix_time: torpor_fleet::schema::unix_now(),
        };
        let key = Key::Placement {
            host: host.into(),
            app: app.into(),
        };
        let bytes = torpor_fleet::schema::encode(&p);
        c.put(key.path(), bytes, None).await.unwrap();
        wait_for(&format!("{host}/{app} refused"), HANG, || {
            let mut c = c.clone();
            let key = key.clone();
            async move { get_one::<Placement>(&mut c, &key).await.is_none() }
        })
        .await;
    }
    // The controller deletes a placement, then records its event: wait for both events.
    let forgets = || {
        ctl.events()
            .iter()
            .filter(|e| e.kind == "forget" && e.host.as_deref() != Some("h1"))
            .count()
    };
    wait_for("both forget events", HANG, || async { forgets() >= 2 }).await;
    let ev = ctl.events();
    let refused: Vec<(&str, &str)> = ev
        .iter()
        .filter(|e| e.kind == "forget" && e.host.as_deref() != Some("h1"))
        .map(|e| (e.host.as_deref().unwrap(), e.message.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            ("h2", "refused: no app ghost in apps/"),
            (
                "h7",
                "host h7 is not registered (unknown, or its lease expired)"
            )
        ]
    );
    assert!(ctl.leads());
}

/// h1 is cut off from etcd (its agent killed: its lease expires); its torpord keeps the app
/// as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root: real etcd, HAProxy, torpord and cgroups (make fleet-test)"]
async fn an_isolated_host_is_taken_out_and_replaced() {
    let kill_agent = |h: &mut Host| h.agent.as_mut().unwrap().kill();
    let (_tmp, h1) = replaced_after("isolate", kill_agent, "host h1 is not registered").await;
    let st = h1.torpord_api().apps().await.unwrap().apps[0].state;
    assert_eq!(st, AppState::Running);
}

/// h1's torpord killed (-9): its agent reports it unreachable; the controller re-places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root: real etcd, HAProxy, torpord and cgroups (make fleet-test)"]
async fn a_host_whose_torpord_died_is_taken_out_and_replaced() {
    let kill_torpord = |h: &mut Host| h.torpord.as_mut().unwrap().kill();
    let (_tmp, mut h1) =
        replaced_after("torpord", kill_torpord, "torpord on h1 does not answer").await;
    assert!(h1.agent.as_mut().unwrap().alive());
}
