//! `torpor-fleet`: the host agent (`host`) and the placement controller (`controller`).

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use torpor_fleet::haproxy::log::RequestLog;
use torpor_fleet::{agent, controller, haproxy, measure, schema};

#[derive(Parser)]
#[command(
    name = "torpor-fleet",
    about = "torpor's fleet: host agents and the placement controller, through etcd"
)]
struct Cli {
    /// etcd endpoints (comma-separated URLs).
    #[arg(
        long,
        env = "TORPOR_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    etcd: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a host agent: register, report every second, enact this host's placements.
    Host(HostArgs),
    /// Run a placement controller (two or more replicas: etcd elects the one that acts).
    Controller(ControllerArgs),
    /// Declare an app to the fleet (writes /torpor/v1/apps/APP).
    App(AppArgs),
    /// Print HAProxy's configuration for the fleet: runtime API, a log line per request on
    /// standard output, a frontend and an empty backend per app.
    RouterConfig(RouterConfigArgs),
    /// From etcd and HAProxy's log: HOST's `ready` for APP → the first request HOST answered.
    FirstAnswer(FirstAnswerArgs),
}

#[derive(clap::Args)]
struct RouterConfigArgs {
    /// The runtime API's unix socket.
    #[arg(long)]
    socket: PathBuf,
    /// APP=PORT[/CHECK-PATH]: a frontend on 127.0.0.1:PORT to backend APP, whose servers
    /// HAProxy checks with `GET CHECK-PATH` (default `/`) (repeat).
    #[arg(long = "frontend", value_parser = haproxy::log::Frontend::parse)]
    frontends: Vec<haproxy::log::Frontend>,
}

#[derive(clap::Args)]
struct FirstAnswerArgs {
    /// HAProxy's standard output (its per-request log lines).
    #[arg(long)]
    haproxy_log: PathBuf,
    #[arg(long)]
    app: String,
    #[arg(long)]
    host: String,
    /// The app's backend (default: the app's name).
    #[arg(long)]
    backend: Option<String>,
}

/// Print `READY_UNIX SENT_MS ANSWERED_MS`: the host's ready (its status for the app, outcome
/// ready), then, in ms after it, the first request HAProxy passed on to the host's server and
/// the first the server answered, from HAProxy's own log.
async fn first_answer(etcd: &[String], a: FirstAnswerArgs) -> anyhow::Result<()> {
    let key = schema::Key::Status {
        host: a.host.clone(),
        app: a.app.clone(),
    };
    let mut c = agent::connect(etcd).await?;
    let r = c.get(key.path(), None).await?;
    let kv = r
        .kvs()
        .first()
        .with_context(|| format!("no {}", key.path()))?;
    let st: schema::Status = schema::decode(&key, kv.value())?;
    if st.outcome != schema::Outcome::Ready {
        bail!("{}: outcome {:?}, not ready", key.path(), st.outcome);
    }
    let logs = haproxy::log::read(&a.haproxy_log)?;
    let backend = a.backend.unwrap_or(a.app);
    let none = || format!("HAProxy logged no answer from {backend}/{}", a.host);
    let sent = haproxy::log::earliest(&logs, &backend, &a.host, RequestLog::sent_ms)
        .and_then(RequestLog::sent_ms)
        .with_context(none)?;
    let answered = haproxy::log::earliest(&logs, &backend, &a.host, RequestLog::answered_ms)
        .and_then(RequestLog::answered_ms)
        .with_context(none)?;
    let ready_ms = st.done_unix * 1000.0;
    println!(
        "{:.3} {:.1} {:.1}",
        st.done_unix,
        sent as f64 - ready_ms,
        answered as f64 - ready_ms
    );
    Ok(())
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// This replica's name (its election value).
    #[arg(long)]
    id: String,
    /// HAProxy's stats socket (`stats socket PATH level admin`); without it, no routing.
    #[arg(long)]
    haproxy: Option<PathBuf>,
    /// Leadership lease TTL, seconds.
    #[arg(long, default_value_t = 3)]
    ttl: i64,
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
    /// Seconds of light load (every instance's host under 30% of its share) before one
    /// instance is drained and stopped.
    #[arg(long, default_value_t = 30.0)]
    cooldown: f64,
    /// Serve GET /metrics and GET /events here.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(clap::Args)]
struct AppArgs {
    name: String,
    /// Its HAProxy backend (default: the app's name).
    #[arg(long)]
    backend: Option<String>,
    #[arg(long, default_value_t = 1)]
    min_running: u32,
    #[arg(long, default_value_t = 1)]
    max_running: u32,
    /// Requests given to one instance at a time (HAProxy's server `maxconn`; the backlog
    /// waits in HAProxy's backend queue); 0: unlimited.
    #[arg(long, default_value_t = 0)]
    max_conn: u32,
}

async fn put_app(etcd: &[String], a: AppArgs) -> anyhow::Result<()> {
    let spec = schema::AppSpec {
        schema: schema::SCHEMA,
        backend: a.backend.unwrap_or_else(|| a.name.clone()),
        app: a.name.clone(),
        min_running: a.min_running,
        max_running: a.max_running,
        max_conn: a.max_conn,
    };
    let key = schema::Key::App(a.name.clone());
    // The same checks a reader applies: refuse what the controller would refuse.
    let bytes = schema::encode(&spec);
    if !schema::valid_name(&a.name) {
        bail!("bad app name {:?} (1-64 of [A-Za-z0-9_.-])", a.name);
    }
    schema::decode::<schema::AppSpec>(&key, &bytes)?;
    let mut c = agent::connect(etcd).await?;
    c.put(key.path(), bytes, None).await?;
    println!("{}", key.path());
    Ok(())
}

#[derive(clap::Args)]
struct HostArgs {
    /// This host's name (1-64 of [A-Za-z0-9_.-]).
    #[arg(long)]
    name: String,
    /// torpord's socket.
    #[arg(long, default_value = "/run/torpor/torpord.sock")]
    torpord: PathBuf,
    /// torpord's cgroup parent (the host's share): its cgroup v2 and memory cgroup directories
    /// are found from it unless --share-cgroup / --share-memcg name them.
    #[arg(long, default_value = "torpor")]
    cgroup_parent: String,
    #[arg(long)]
    share_cgroup: Option<PathBuf>,
    #[arg(long)]
    share_memcg: Option<PathBuf>,
    /// The share in cores (default: the cgroup's cpu.max, else the online CPUs).
    #[arg(long)]
    share_cores: Option<f64>,
    /// Confine the share to --share-cores with a CFS quota (period 100 ms): cgroup v2
    /// `cpu.max` on the share's cgroup, or on a hybrid system the v1 `cpu` cgroup of the same
    /// name, into which the agent moves the share's processes every interval.
    #[arg(long, requires = "share_cores")]
    enforce_share: bool,
    /// Where this host serves an app: APP=ADDR:PORT (repeat).
    #[arg(long = "serve", value_parser = parse_endpoint)]
    serve: Vec<(String, SocketAddr)>,
    /// Lease TTL, seconds.
    #[arg(long, default_value_t = 3)]
    ttl: i64,
    /// Report interval, milliseconds (a report is also published at once when the CPU rule
    /// trips or clears).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// How often the share's CPU over the last second is measured, milliseconds.
    #[arg(long, default_value_t = 250)]
    sample_ms: u64,
}

fn parse_endpoint(s: &str) -> Result<(String, SocketAddr), String> {
    let (app, addr) = s.split_once('=').ok_or("expected APP=ADDR:PORT")?;
    if !schema::valid_name(app) {
        return Err(format!("bad app name {app:?} (1-64 of [A-Za-z0-9_.-])"));
    }
    let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    Ok((app.to_string(), addr))
}

fn host_config(etcd: Vec<String>, a: HostArgs) -> anyhow::Result<agent::AgentConfig> {
    if !schema::valid_name(&a.name) {
        bail!("bad host name {:?} (1-64 of [A-Za-z0-9_.-])", a.name);
    }
    if a.ttl < 2 {
        bail!("--ttl must be at least 2 seconds");
    }
    let v2 = measure::cgroup2_mount().context("no cgroup v2 hierarchy is mounted")?;
    let share_cgroup = a.share_cgroup.unwrap_or_else(|| v2.join(&a.cgroup_parent));
    let share_memcg = a.share_memcg.unwrap_or_else(|| {
        let v1 = PathBuf::from("/sys/fs/cgroup/memory").join(&a.cgroup_parent);
        if v1.exists() {
            v1
        } else {
            share_cgroup.clone()
        }
    });
    let endpoints: BTreeMap<String, SocketAddr> = a.serve.into_iter().collect();
    let confine = match (a.enforce_share, a.share_cores) {
        (true, Some(cores)) if cores > 0.0 => Some(
            measure::Confine::plan(&share_cgroup, &a.cgroup_parent, cores)
                .map_err(anyhow::Error::msg)?,
        ),
        (true, _) => bail!("--enforce-share needs a positive --share-cores"),
        (false, _) => None,
    };
    Ok(agent::AgentConfig {
        host: a.name,
        etcd,
        torpord: a.torpord,
        ttl: a.ttl,
        interval: Duration::from_millis(a.interval_ms.max(100)),
        sample: Duration::from_millis(a.sample_ms.max(50)),
        endpoints,
        share_cgroup,
        share_memcg,
        share_cores: a.share_cores,
        confine,
    })
}

fn main() -> anyhow::Result<()> {
    // Plain text when logging to a file (no colour escapes in logs that tests and operators grep).
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Host(a) => {
            let cfg = host_config(cli.etcd, a)?;
            rt.block_on(agent::run(cfg))
        }
        Cmd::Controller(a) => {
            if !schema::valid_name(&a.id) || a.ttl < 2 {
                bail!("--id must be 1-64 of [A-Za-z0-9_.-] and --ttl at least 2");
            }
            let cfg = controller::ControllerConfig {
                id: a.id,
                etcd: cli.etcd,
                haproxy: a.haproxy,
                ttl: a.ttl,
                tick: Duration::from_millis(a.tick_ms.max(50)),
                cooldown: a.cooldown.max(0.0),
                listen: a.listen,
            };
            rt.block_on(controller::run(cfg))
        }
        Cmd::App(a) => rt.block_on(put_app(&cli.etcd, a)),
        Cmd::RouterConfig(a) => {
            print!("{}", haproxy::log::router_config(&a.socket, &a.frontends));
            Ok(())
        }
        Cmd::FirstAnswer(a) => rt.block_on(first_answer(&cli.etcd, a)),
    }
}
