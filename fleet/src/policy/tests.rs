use super::*;
use crate::schema::{AppReport, CpuShare, Flags, SCHEMA};
use torpor_api::AppState;

fn host(v: &mut View, h: &str, port: u16, fraction: f64, app_state: AppState) {
    v.hosts.insert(
        h.into(),
        HostRecord {
            schema: SCHEMA,
            host: h.into(),
            endpoints: [(
                "web".to_string(),
                format!("127.0.0.1:{port}").parse().unwrap(),
            )]
            .into(),
            ttl_s: 3,
            agent_pid: 1,
            started_unix: 0.0,
        },
    );
    v.reports.insert(
        h.into(),
        Report {
            schema: SCHEMA,
            host: h.into(),
            seq: 1,
            unix_time: 0.0,
            interval_s: 1.0,
            cpu: CpuShare {
                share_cores: 1.0,
                used_cores: fraction,
                fraction,
            },
            mem_available_bytes: 1 << 30,
            share_mem_free_bytes: None,
            paging_rate: 0.0,
            torpord: Some(Flags::default()),
            torpord_error: None,
            apps: [(
                "web".to_string(),
                AppReport {
                    state: app_state,
                    standby: app_state.is_frozen(),
                    busy: false,
                },
            )]
            .into(),
        },
    );
}

fn spec(v: &mut View, min: u32, max: u32) {
    v.apps.insert(
        "web".into(),
        AppSpec {
            schema: SCHEMA,
            app: "web".into(),
            backend: "be_web".into(),
            min_running: min,
            max_running: max,
            max_conn: 1,
        },
    );
}

fn placed(v: &mut View, h: &str, rev: i64, desired: Desired, outcome: Option<Outcome>) {
    let key = (h.to_string(), "web".to_string());
    let p = Placement {
        schema: SCHEMA,
        host: h.into(),
        app: "web".into(),
        desired,
        leader_rev: 1,
        reason: String::new(),
        unix_time: 0.0,
    };
    v.placements.insert(key.clone(), (rev, p));
    if let Some(outcome) = outcome {
        v.statuses.insert(
            key,
            Status {
                schema: SCHEMA,
                host: h.into(),
                app: "web".into(),
                placement_rev: rev,
                desired,
                outcome,
                error: None,
                seen_unix: 0.0,
                done_unix: 0.0,
                torpord_s: None,
                cold: None,
            },
        );
    }
}

/// One tick, one second after the last.
fn tick(v: &mut View, mem: &mut Memory, cooldown: f64) -> Vec<Action> {
    v.now += 1.0;
    decide(v, mem, cooldown)
}

fn running<'a>(h: &'a str, reason_start: &'a str) -> impl Fn(&Action) -> bool + 'a {
    move |a| {
        matches!(a, Action::Place { host, desired: Desired::Running, reason, .. }
            if host == h && reason.starts_with(reason_start))
    }
}

#[test]
fn min_running_activates_the_least_loaded_standby_host() {
    let mut v = View::default();
    spec(&mut v, 1, 2);
    host(&mut v, "a", 1, 0.5, AppState::Standby);
    host(&mut v, "b", 2, 0.1, AppState::Standby);
    host(&mut v, "c", 3, 0.0, AppState::Stopped); // not in standby
    let acts = decide(&v, &mut Memory::default(), 2.0);
    assert_eq!(acts.len(), 1, "{acts:?}");
    assert!(
        running("b", "0 running < min_running 1")(&acts[0]),
        "{acts:?}"
    );
}

#[test]
fn overload_activates_once_and_waits_for_ready() {
    let mut v = View::default();
    spec(&mut v, 1, 2);
    host(&mut v, "a", 1, 0.85, AppState::Running);
    host(&mut v, "b", 2, 0.2, AppState::Standby);
    placed(&mut v, "a", 10, Desired::Running, Some(Outcome::Ready));
    let mut mem = Memory::default();
    let acts = tick(&mut v, &mut mem, 2.0);
    assert_eq!(acts.len(), 1, "{acts:?}");
    assert!(running("b", "host a overloaded")(&acts[0]), "{acts:?}");
    // Placed, not ready yet: no second activation.
    placed(&mut v, "b", 11, Desired::Running, None);
    assert_eq!(tick(&mut v, &mut mem, 2.0), vec![]);
    // A hotspot flag is overload too; b is ready, max_running 2 reached: nothing more.
    placed(&mut v, "b", 11, Desired::Running, Some(Outcome::Ready));
    v.reports.get_mut("a").unwrap().cpu.fraction = 0.1;
    v.reports
        .get_mut("a")
        .unwrap()
        .torpord
        .as_mut()
        .unwrap()
        .hotspot = true;
    assert_eq!(tick(&mut v, &mut mem, 2.0), vec![]);
}

#[test]
fn overloaded_or_failed_hosts_are_not_candidates() {
    let mut v = View::default();
    spec(&mut v, 1, 3);
    host(&mut v, "a", 1, 0.9, AppState::Standby);
    host(&mut v, "b", 2, 0.0, AppState::Standby);
    placed(&mut v, "b", 5, Desired::Running, Some(Outcome::Failed));
    assert_eq!(v.standby_host("web"), None);
    assert_eq!(decide(&v, &mut Memory::default(), 2.0), vec![]);
    // The failed placement replaced by a Standby one: b is a candidate again.
    placed(&mut v, "b", 6, Desired::Standby, Some(Outcome::Stopped));
    assert_eq!(v.standby_host("web"), Some("b"));
}

#[test]
fn low_load_drains_the_newest_instance_after_cooldown_then_stops_it_when_drained() {
    let mut v = View::default();
    spec(&mut v, 1, 2);
    host(&mut v, "a", 1, 0.1, AppState::Running);
    host(&mut v, "b", 2, 0.1, AppState::Running);
    placed(&mut v, "a", 10, Desired::Running, Some(Outcome::Ready));
    placed(&mut v, "b", 20, Desired::Running, Some(Outcome::Ready));
    let mut mem = Memory::default();
    assert_eq!(tick(&mut v, &mut mem, 2.0), vec![]);
    assert_eq!(tick(&mut v, &mut mem, 2.0), vec![]);
    let acts = tick(&mut v, &mut mem, 2.0);
    assert!(
        matches!(&acts[..], [Action::Place { host, desired: Desired::Draining, .. }] if host == "b"),
        "{acts:?}"
    );
    // Draining with a session left: nothing; none left: Standby.
    placed(&mut v, "b", 21, Desired::Draining, None);
    assert_eq!(tick(&mut v, &mut mem, 2.0), vec![]);
    v.drained.insert(("be_web".into(), "b".into()));
    let acts = tick(&mut v, &mut mem, 2.0);
    assert!(
        matches!(&acts[..], [Action::Place { host, desired: Desired::Standby, .. }] if host == "b"),
        "{acts:?}"
    );
    // One left = min_running: never drained.
    placed(&mut v, "b", 22, Desired::Standby, Some(Outcome::Stopped));
    for _ in 0..10 {
        assert_eq!(tick(&mut v, &mut mem, 2.0), vec![]);
    }
}

#[test]
fn a_load_spike_resets_the_cooldown() {
    let mut v = View::default();
    spec(&mut v, 0, 2);
    host(&mut v, "a", 1, 0.1, AppState::Running);
    placed(&mut v, "a", 10, Desired::Running, Some(Outcome::Ready));
    let mut mem = Memory::default();
    assert_eq!(tick(&mut v, &mut mem, 1.0), vec![]);
    v.reports.get_mut("a").unwrap().cpu.fraction = 0.5;
    assert_eq!(tick(&mut v, &mut mem, 1.0), vec![]);
    v.reports.get_mut("a").unwrap().cpu.fraction = 0.1;
    assert_eq!(tick(&mut v, &mut mem, 1.0), vec![]);
    assert_eq!(tick(&mut v, &mut mem, 1.0).len(), 1);
}

#[test]
fn dead_hosts_are_forgotten_and_replaced() {
    let mut v = View::default();
    spec(&mut v, 1, 2);
    host(&mut v, "a", 1, 0.1, AppState::Running);
    host(&mut v, "b", 2, 0.1, AppState::Standby);
    placed(&mut v, "a", 10, Desired::Running, Some(Outcome::Ready));
    v.hosts.remove("a");
    v.reports.remove("a");
    let acts = decide(&v, &mut Memory::default(), 2.0);
    assert_eq!(acts.len(), 2, "{acts:?}");
    assert!(matches!(&acts[0], Action::Forget { host, .. } if host == "a"));
    assert!(running("b", "0 running")(&acts[1]), "{acts:?}");
    assert!(router(&v).is_empty());
}

#[test]
fn placements_of_unknown_apps_are_refused() {
    let mut v = View::default();
    spec(&mut v, 0, 1);
    host(&mut v, "a", 1, 0.1, AppState::Running);
    placed(&mut v, "a", 10, Desired::Running, Some(Outcome::Ready));
    v.placements.insert(
        ("a".into(), "ghost".into()),
        (
            11,
            Placement {
                app: "ghost".into(),
                ..v.placements[&("a".into(), "web".into())].1.clone()
            },
        ),
    );
    let acts = decide(&v, &mut Memory::default(), 2.0);
    assert!(
        matches!(&acts[..], [Action::Forget { host, app, reason }] if host == "a" && app == "ghost" && reason.starts_with("refused")),
        "{acts:?}"
    );
}

#[test]
fn router_serves_ready_drains_draining_and_keeps_the_rest_out() {
    let mut v = View::default();
    spec(&mut v, 1, 3);
    host(&mut v, "a", 1, 0.1, AppState::Running);
    host(&mut v, "b", 2, 0.1, AppState::Running);
    host(&mut v, "c", 3, 0.1, AppState::Standby);
    host(&mut v, "d", 4, 0.1, AppState::Standby);
    placed(&mut v, "a", 10, Desired::Running, Some(Outcome::Ready));
    placed(&mut v, "b", 11, Desired::Draining, None);
    placed(&mut v, "c", 12, Desired::Running, None); // not ready yet
    placed(&mut v, "d", 13, Desired::Standby, Some(Outcome::Stopped));
    let r = router(&v);
    let get = |h: &str| r[&("be_web".to_string(), h.to_string())];
    assert_eq!(
        get("a"),
        Server {
            addr: "127.0.0.1:1".parse().unwrap(),
            admin: Admin::Ready,
            weight: 100,
            maxconn: 1
        }
    );
    assert_eq!(get("b").admin, Admin::Drain);
    assert_eq!(get("c").admin, Admin::Maint);
    assert_eq!(get("d").admin, Admin::Maint);
    // A ready status of an older placement is not ready for the current one.
    placed(&mut v, "a", 10, Desired::Running, Some(Outcome::Ready));
    v.placements.get_mut(&("a".into(), "web".into())).unwrap().0 = 14;
    assert_eq!(
        router(&v)[&("be_web".to_string(), "a".to_string())].admin,
        Admin::Maint
    );
}

#[test]
fn a_host_whose_torpord_does_not_answer_is_replaced_and_unrouted() {
    let mut v = View::default();
    spec(&mut v, 1, 1);
    host(&mut v, "a", 1, 0.1, AppState::Running);
    host(&mut v, "b", 2, 0.1, AppState::Standby);
    placed(&mut v, "a", 10, Desired::Running, Some(Outcome::Ready));
    assert_eq!(decide(&v, &mut Memory::default(), 2.0), vec![]);
    let r = v.reports.get_mut("a").unwrap();
    r.torpord = None;
    r.torpord_error = Some("connection refused".into());
    r.apps.clear();
    let acts = decide(&v, &mut Memory::default(), 2.0);
    assert_eq!(acts.len(), 2, "{acts:?}");
    assert!(
        matches!(&acts[0], Action::Forget { host, reason, .. }
            if host == "a" && reason == "torpord on a does not answer: connection refused"),
        "{acts:?}"
    );
    assert!(running("b", "0 running")(&acts[1]), "{acts:?}");
    assert!(router(&v).is_empty());
}

#[test]
fn placements_on_unknown_hosts_are_refused() {
    let mut v = View::default();
    spec(&mut v, 0, 1);
    host(&mut v, "a", 1, 0.1, AppState::Standby);
    placed(&mut v, "a", 10, Desired::Standby, None);
    for (h, desired) in [("x", Desired::Standby), ("y", Desired::Running)] {
        let p = Placement {
            host: h.into(),
            desired,
            ..v.placements[&("a".into(), "web".into())].1.clone()
        };
        v.placements.insert((h.into(), "web".into()), (11, p));
    }
    let acts = decide(&v, &mut Memory::default(), 2.0);
    let forgotten: Vec<(&str, &str)> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Forget { host, reason, .. } => Some((host.as_str(), reason.as_str())),
            _ => None,
        })
        .collect();
    let why = "is not registered (unknown, or its lease expired)";
    assert_eq!(
        forgotten,
        [
            ("x", &*format!("host x {why}")),
            ("y", &*format!("host y {why}"))
        ],
        "{acts:?}"
    );
    assert!(router(&v).keys().all(|(_, h)| h == "a"), "{:?}", router(&v));
}
