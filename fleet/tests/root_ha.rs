//! High availability on real etcd, HAProxy and emulated hosts (root: torpord): one member of
//! a three-member etcd cluster lost at a time, and a host back from isolation. Run by
//! `make fleet-test` (`fleet/tests/run-fleet-tests.sh`).

mod common;

use common::cluster::{connected_to, Cluster};
use common::*;
use etcd_client::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use torpor_api::{AppState, Counters};
use torpor_fleet::haproxy::Admin;
use torpor_fleet::obs::Event;
use torpor_fleet::schema::{Desired, Key, Outcome, Placement, Status};

/// The lease a host's registration hangs on.
async fn host_lease(c: &mut Client, host: &str) -> i64 {
    let r = c.get(Key::Host(host.into()).path(), None).await.unwrap();
    r.kvs()[0].lease()
}

/// Wait until web's placement on `host` is `desired` and its status answers it with `outcome`.
async fn wait_answered(c: &Client, host: &str, desired: Desired, outcome: Outcome) {
    wait_for(
        &format!("web {desired:?} on {host} answered {outcome:?}"),
        HANG,
        || {
            let mut c = c.clone();
            async move {
                let p = get_one::<Placement>(&mut c, &placement_key(host)).await;
                let s = get_one::<Status>(&mut c, &status_key(host)).await;
                matches!((p, s), (Some((rev, p)), Some((_, s)))
                    if p.desired == desired && s.placement_rev == rev && s.outcome == outcome)
            }
        },
    )
    .await;
}

/// GET / through HAProxy's frontend: its status.
fn through_router(port: u16) -> u16 {
    let url = format!("http://127.0.0.1:{port}/");
    local_controller::probe::http_get(&url, HANG).unwrap().0
}

async fn counters(h: &Host) -> (AppState, Counters) {
    let a = h.torpord_api().apps().await.unwrap().apps[0].clone();
    (a.state, a.counters)
}

fn count(events: &[Event], kind: &str) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

fn hosts_of(events: &[Event], kind: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.host.clone().unwrap_or_default())
        .collect()
}

/// Lines of a log containing `what`.
fn log_count(p: &Proc, what: &str) -> usize {
    p.log_text().lines().filter(|l| l.contains(what)).count()
}

/// The fleet of the etcd test: a 3-member cluster, HAProxy, web running on h1 and in standby
/// on h2, two controllers; every agent and controller given all three endpoints.
struct Fleet {
    tmp: TempDir,
    etcd: Cluster,
    hap: Haproxy,
    h1: Host,
    h2: Host,
    ctls: Vec<Controller>,
}

/// Leases (hosts and leadership) long enough that no reconnection under load outlasts them.
const TTL: u32 = 10;

async fn fleet_on_three_members() -> Fleet {
    let tmp = TempDir::new("etcd3");
    let etcd = Cluster::start(&tmp.0, 3).await;
    let eps = etcd.endpoints();
    let ctls = |hap: &Haproxy| {
        ["c1", "c2"]
            .iter()
            .map(|id| Controller::start_ttl(&tmp.0, id, &eps, Some(&hap.sock), 1, TTL))
            .collect()
    };
    let c = etcd.client().await;
    let w = web_on_h1(&tmp.0, &c, &eps, TTL, ctls).await;
    Fleet {
        tmp,
        etcd,
        hap: w.hap,
        h1: w.h1,
        h2: w.h2,
        ctls: w.ctls,
    }
}

/// With member `m` dead: web activated on h2 (a placement written after the kill, enacted
/// through the agents' and controllers' watches) and served; then drained and stopped.
async fn scale_out_and_in(f: &Fleet, c: &mut Client) {
    put_app(c, "web", 2, 2).await;
    wait_answered(c, "h2", Desired::Running, Outcome::Ready).await;
    let hap = &f.hap;
    hap.wait_admin("web", "h2", Admin::Ready).await;
    assert_eq!(through_router(hap.frontend("web")), 200);
    put_app(c, "web", 1, 1).await;
    wait_answered(c, "h2", Desired::Standby, Outcome::Stopped).await;
    hap.wait_admin("web", "h2", Admin::Maint).await;
}

/// Kill -9 each member of three in turn, the raft leader first (every agent and controller
/// holds a connection to it), and restart it before the next: placements written while it is
/// dead are enacted (exactly one Start each), web/h1 keeps running and routed, no lease is
/// lost (the hosts' leases are the same ones, no host is forgotten), the leading controller
/// keeps leading, and no agent registers again; their broken streams were re-opened in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root: real etcd, HAProxy, torpord and cgroups (make fleet-test)"]
async fn losing_one_of_three_etcd_members_interrupts_nothing() {
    let mut f = fleet_on_three_members().await;
    let mut c = f.etcd.client().await;
    wait_for("one leader", HANG, || {
        let n = f.ctls.iter().filter(|c| c.leads()).count();
        async move { n == 1 }
    })
    .await;
    let leader = f.ctls.iter().position(|c| c.leads()).unwrap();
    let leases = (
        host_lease(&mut c, "h1").await,
        host_lease(&mut c, "h2").await,
    );
    let p1 = get_one::<Placement>(&mut c, &placement_key("h1"))
        .await
        .unwrap()
        .0;
    let s1 = get_one::<Status>(&mut c, &status_key("h1"))
        .await
        .unwrap()
        .0;
    let (before1, before2) = (counters(&f.h1).await.1, counters(&f.h2).await.1);
    let first = f.etcd.leader().await;
    let order: Vec<usize> = std::iter::once(first)
        .chain((0..3).filter(|&m| m != first))
        .collect();
    for (round, &m) in order.iter().enumerate() {
        let pids = [
            f.h1.agent.as_ref().unwrap().pid(),
            f.h2.agent.as_ref().unwrap().pid(),
            f.ctls[0].proc.pid(),
            f.ctls[1].proc.pid(),
        ];
        for pid in pids {
            assert!(
                connected_to(pid, f.etcd.port(m)),
                "pid {pid} not on member {m}"
            );
        }
        f.etcd.kill(m);
        scale_out_and_in(&f, &mut c).await;
        f.etcd.restart(m).await;
        println!(
            "round {round}: member m{m} (raft leader: {}) killed; h2 activated and stopped",
            m == first
        );
    }
    // A new client: the old one's connection to the last member killed fails its next call.
    let mut c = f.etcd.client().await;
    check_nothing_interrupted(&f, &mut c, leader, leases, (p1, s1)).await;
    let (st1, after1) = counters(&f.h1).await;
    let (st2, after2) = counters(&f.h2).await;
    assert_eq!(st1, AppState::Running);
    assert!(st2.is_frozen(), "{st2}");
    assert_eq!(
        (after1.starts, after1.stops),
        (before1.starts, before1.stops)
    );
    assert_eq!(
        (after2.starts, after2.stops),
        (before2.starts + 3, before2.stops + 3)
    );
    let _ = &f.tmp;
}

async fn check_nothing_interrupted(
    f: &Fleet,
    c: &mut Client,
    leader: usize,
    leases: (i64, i64),
    (p1, s1): (i64, i64),
) {
    // Every member was killed once, so each agent's keep-alive stream and placement watch
    // broke once at least. A keep-alive stream is re-opened at the agent's next tick (a third
    // of the TTL), which may come after the last member is back: wait for it (the lease checks
    // below then see the lease renewed through the re-opened stream).
    for h in [&f.h1, &f.h2] {
        let a = h.agent.as_ref().unwrap();
        wait_for(&format!("{}'s streams re-opened", h.name), HANG, || {
            let broke = log_count(a, "keep-alive stream re-opened") >= 1
                && log_count(a, "placement watch broken") >= 1;
            async move { broke }
        })
        .await;
    }
    assert_eq!(
        (host_lease(c, "h1").await, host_lease(c, "h2").await),
        leases
    );
    assert_eq!(
        get_one::<Placement>(c, &placement_key("h1"))
            .await
            .unwrap()
            .0,
        p1
    );
    assert_eq!(get_one::<Status>(c, &status_key("h1")).await.unwrap().0, s1);
    assert_eq!(f.hap.admin("web", "h1").await, Some(Admin::Ready));
    assert!(f.ctls[leader].leads());
    let ev = f.ctls[leader].events();
    let other = f.ctls[1 - leader].events();
    assert_eq!((count(&ev, "leader"), count(&other, "leader")), (1, 0));
    assert_eq!(count(&ev, "lost_leadership"), 0, "{ev:#?}");
    assert_eq!(count(&ev, "forget"), 0, "{ev:#?}");
    assert_eq!(hosts_of(&ev, "place_running"), ["h1", "h2", "h2", "h2"]);
    assert_eq!(hosts_of(&ev, "place_standby"), ["h2", "h2", "h2"]);
    for h in [&f.h1, &f.h2] {
        let a = h.agent.as_ref().unwrap();
        assert_eq!(
            log_count(a, "registered host="),
            1,
            "{} registered again",
            h.name
        );
        assert_eq!(log_count(a, "etcd session ended"), 0);
        let reopened = log_count(a, "keep-alive stream re-opened");
        let watches = log_count(a, "placement watch broken");
        println!(
            "{}: keep-alive re-opened {reopened}x, watch re-opened {watches}x",
            h.name
        );
    }
    println!(
        "tick errors while a member was down: leader {}",
        count(&ev, "tick_error")
    );
}

/// web runs on h1, h2 holds it in standby. h1's agent is stopped (SIGSTOP: cut off; torpord
/// and the app go on) until its lease expires: h1 is forgotten, web placed on h2. Then h1's
/// agent continues: it registers again, finds no placement of web and stops it (back to
/// standby), answering with a `stopped` status; only h2 is in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root: real etcd, HAProxy, torpord and cgroups (make fleet-test)"]
async fn a_host_back_from_isolation_stops_its_unplaced_app() {
    let tmp = TempDir::new("isolation");
    let (_etcd, mut c, w) = web_on_h1_one_controller(&tmp).await;
    let WebOnH1 { hap, h1, h2, ctls } = w;
    let ctl = &ctls[0];
    let (p1, _) = get_one::<Placement>(&mut c, &placement_key("h1"))
        .await
        .unwrap();
    let (before1, before2) = (counters(&h1).await.1, counters(&h2).await.1);

    let agent = Pid::from_raw(h1.agent.as_ref().unwrap().pid());
    kill(agent, Signal::SIGSTOP).unwrap();
    wait_answered(&c, "h2", Desired::Running, Outcome::Ready).await;
    hap.wait_admin("web", "h2", Admin::Ready).await;
    assert_eq!(hap.admin("web", "h1").await, Some(Admin::Maint));
    assert_eq!(
        counters(&h1).await.0,
        AppState::Running,
        "isolated, h1 keeps web"
    );
    kill(agent, Signal::SIGCONT).unwrap();

    wait_for("h1 stopped its unplaced web", HANG, || {
        let mut c = c.clone();
        async move {
            matches!(get_one::<Status>(&mut c, &status_key("h1")).await,
                Some((_, s)) if s.outcome == Outcome::Stopped)
        }
    })
    .await;
    let (_, s) = get_one::<Status>(&mut c, &status_key("h1")).await.unwrap();
    assert_eq!((s.desired, s.error.as_deref()), (Desired::Standby, None));
    assert!(s.placement_rev > p1, "{s:?}");
    assert!(get_one::<Placement>(&mut c, &placement_key("h1"))
        .await
        .is_none());
    check_one_routed_instance(&hap, ctl, &h1, &h2, (before1, before2)).await;
}

async fn check_one_routed_instance(
    hap: &Haproxy,
    ctl: &Controller,
    h1: &Host,
    h2: &Host,
    (before1, before2): (Counters, Counters),
) {
    let (st1, after1) = counters(h1).await;
    let (st2, after2) = counters(h2).await;
    assert!(st1.is_frozen(), "{st1}");
    assert_eq!(st2, AppState::Running);
    assert_eq!(
        (after1.starts, after1.stops),
        (before1.starts, before1.stops + 1)
    );
    assert_eq!(
        (after2.starts, after2.stops),
        (before2.starts + 1, before2.stops)
    );
    // h1 is registered again, and still nothing routes to it.
    assert_eq!(hap.admin("web", "h1").await, Some(Admin::Maint));
    assert_eq!(hap.admin("web", "h2").await, Some(Admin::Ready));
    let served = (hap.served("web", "h1").await, hap.served("web", "h2").await);
    assert_eq!(through_router(hap.frontend("web")), 200);
    let now = (hap.served("web", "h1").await, hap.served("web", "h2").await);
    assert_eq!(now, (served.0, served.1 + 1));
    let ev = ctl.events();
    assert_eq!(hosts_of(&ev, "place_running"), ["h1", "h2"]);
    assert_eq!(hosts_of(&ev, "forget"), ["h1"]);
    assert_eq!(count(&ev, "place_standby"), 0);
}
