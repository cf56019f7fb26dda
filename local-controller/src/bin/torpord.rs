//! `torpord`: the torpor local controller daemon.

use anyhow::{bail, Context, Result};
use clap::Parser;
use local_controller::config::{Config, DEFAULT_CONFIG};
use local_controller::controller::Controller;
use local_controller::{api, notify};
use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "torpord",
    version,
    about = "torpor local controller: Start/Stop of suspended app servers"
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Only check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn init_logging() {
    let tty = std::io::stderr().is_terminal();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(tty);
    // Under journald the journal has the timestamps.
    if std::env::var_os("JOURNAL_STREAM").is_some() && !tty {
        b.without_time().init();
    } else {
        b.init();
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("torpord: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: OK ({} apps)", args.config.display(), cfg.apps.len());
        return std::process::ExitCode::SUCCESS;
    }
    match run(cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("torpord: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn group_gid(name: &str) -> Result<u32> {
    if let Ok(g) = name.parse::<u32>() {
        return Ok(g);
    }
    let g = nix::unistd::Group::from_name(name).with_context(|| format!("group {name}"))?;
    Ok(g.with_context(|| format!("no group named {name}"))?
        .gid
        .as_raw())
}

fn run(cfg: Config) -> Result<()> {
    procswap::target::require_root("torpord").map_err(|e| anyhow::anyhow!("{e}"))?;
    let group = cfg.socket_group.as_deref().map(group_gid).transpose()?;
    let sock = cfg.socket.clone();
    claim_socket(&sock)?;
    let ctl = Controller::new(cfg).context("setting up the controller")?;
    info!(
        "torpord {}: {} apps, backend {} ({}), cgroups: {}",
        env!("CARGO_PKG_VERSION"),
        ctl.app_names().len(),
        ctl.backend_name(),
        ctl.backend_why,
        ctl.layout.describe()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = listen(&sock, &ctl, group)?;
        tokio::spawn(api::serve(listener, Arc::clone(&ctl), group));
        start_background(&ctl)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        info!("shutting down: apps are left as they are (they live in their own cgroups)");
        notify::notify("STOPPING=1");
        ctl.persist();
        let _ = std::fs::remove_file(&sock);
        // Do not wait for in-flight blocking operations: state is persisted before each step.
        std::process::exit(0);
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

/// The API socket's directory made, a stale socket removed; an error when another torpord
/// answers on it.
fn claim_socket(sock: &std::path::Path) -> Result<()> {
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if sock.exists() {
        if std::os::unix::net::UnixStream::connect(sock).is_ok() {
            bail!("{} is in use: is another torpord running?", sock.display());
        }
        std::fs::remove_file(sock).with_context(|| format!("removing stale {}", sock.display()))?;
    }
    Ok(())
}

/// The API socket bound, with the configured mode and group.
fn listen(
    sock: &std::path::Path,
    ctl: &Controller,
    group: Option<u32>,
) -> Result<tokio::net::UnixListener> {
    let listener = tokio::net::UnixListener::bind(sock)
        .with_context(|| format!("binding {}", sock.display()))?;
    std::fs::set_permissions(
        sock,
        std::fs::Permissions::from_mode(ctl.cfg.socket_mode_bits()),
    )?;
    if let Some(g) = group {
        nix::unistd::chown(sock, None, Some(nix::unistd::Gid::from_raw(g)))
            .with_context(|| format!("chown {}", sock.display()))?;
    }
    info!(
        "listening on {} (mode {:o})",
        sock.display(),
        ctl.cfg.socket_mode_bits()
    );
    Ok(listener)
}

/// The monitoring thread, the standby pool (then READY=1) and the watchdog pings.
fn start_background(ctl: &Arc<Controller>) -> Result<()> {
    // Monitoring thread (blocking work: /proc, cgroups, purges for the reserve).
    let m = Arc::clone(ctl);
    std::thread::Builder::new()
        .name("monitor".into())
        .spawn(move || loop {
            std::thread::sleep(m.cfg.sample_interval);
            m.tick();
        })?;
    // Standby pool, then READY=1.
    let p = Arc::clone(ctl);
    notify::notify("STATUS=starting the standby pool");
    tokio::task::spawn_blocking(move || {
        p.prestart_pool();
        let n = p.app_names().len();
        info!("standby pool ready; serving Start/Stop for {n} apps");
        notify::notify(&format!("READY=1\nSTATUS=serving {n} apps"));
    });
    if let Some(wd) = notify::watchdog_interval() {
        tokio::spawn(watchdog(Arc::clone(ctl), wd));
    }
    Ok(())
}

/// systemd's watchdog: pinged every half interval, only while the monitor loop is alive.
async fn watchdog(w: Arc<Controller>, wd: std::time::Duration) {
    let mut iv = tokio::time::interval(wd / 2);
    loop {
        iv.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let age = now.saturating_sub(w.last_tick.load(Ordering::Relaxed));
        // Ping only while the monitor loop is alive.
        let limit = (w.cfg.sample_interval * 3).max(wd).as_secs() + 1;
        if age <= limit {
            notify::notify("WATCHDOG=1");
        } else {
            warn!("monitor loop stalled for {age}s: not pinging the watchdog");
        }
    }
}
