//! `torpor-fleet`: the host agent (`host`) and the placement controller (`controller`).
#![deny(clippy::too_many_lines)]

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use torpor_fleet::{agent, measure, schema};

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
    /// Where this host serves an app: APP=ADDR:PORT (repeat).
    #[arg(long = "serve", value_parser = parse_endpoint)]
    serve: Vec<(String, SocketAddr)>,
    /// Lease TTL, seconds.
    #[arg(long, default_value_t = 3)]
    ttl: i64,
    /// Report interval, milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
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
    Ok(agent::AgentConfig {
        host: a.name,
        etcd,
        torpord: a.torpord,
        ttl: a.ttl,
        interval: Duration::from_millis(a.interval_ms.max(100)),
        endpoints,
        share_cgroup,
        share_memcg,
        share_cores: a.share_cores,
    })
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
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
    }
}
