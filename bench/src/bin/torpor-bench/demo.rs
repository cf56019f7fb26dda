//! `torpor-bench demo`: the measuring part of `make demo` (scripts/demo-host.sh installs,
//! builds and sets up a swapfile, then runs this). Cold start of Debian's Tomcat 10
//! (`catalina.sh run`, default ROOT webapp) against `torpor start` of the same server kept in
//! torpord's standby pool (frozen and purged to swap):
//!
//! 1. torpord (own config, socket, state dir, cgroup parent) pre-starts Tomcat, freezes and
//!    purges it (standby);
//! 2. `--cycles` Start/Stop cycles with prefetch = "full"; the first `--cold-runs` are each
//!    preceded by a cold start of a second Tomcat (own CATALINA_BASE and port) timed until its
//!    first HTTP 200 (interleaved, so both see the same machine load);
//! 3. torpord restarted for each further mode (it adopts the frozen app), the same cycles with
//!    prefetch = "none" (plain thaw + demand paging) and "working-set-only";
//! 4. a summary; every number printed is measured in this run. Any failure ends the demo
//!    non-zero, and whatever it started is removed (also on SIGINT/SIGTERM/SIGHUP).

mod report;
mod session;

use anyhow::{bail, ensure, Context, Result};
use bench::machine::{mount_of, SwapArea};
use clap::{Args, ValueEnum};
use report::{mib, Cycle, ModeResult, Standby, Summary};
use session::{Session, Tomcats, APP};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use torpor_api::{AppState, StartAnswer, StopAnswer};
use torpor_testsupport::stats::median;

/// torpord's prefetch modes the demo compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Full,
    /// Plain thaw and demand paging.
    #[value(name = "none")]
    DemandPaging,
    WorkingSetOnly,
}

impl Mode {
    /// The name in torpord's configuration.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::DemandPaging => "none",
            Mode::WorkingSetOnly => "working-set-only",
        }
    }
}

#[derive(Args, Debug)]
pub struct DemoOpts {
    /// The directory holding torpord and torpor (default: this binary's).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Cold starts, each before one of the first Start/Stop cycles (1..=cycles).
    #[arg(long, default_value_t = 3)]
    cold_runs: usize,
    /// Start/Stop cycles per prefetch mode.
    #[arg(long, default_value_t = 5)]
    cycles: usize,
    /// Prefetch modes, in order (one argument, blank-separated, or several).
    #[arg(long, value_enum, num_args = 1.., value_delimiter = ' ',
          default_values_t = [Mode::Full, Mode::DemandPaging, Mode::WorkingSetOnly])]
    pub modes: Vec<Mode>,
    /// The demo's own swapfile (procswap/tests/with-swap.sh's TORPOR_SWAPFILE).
    #[arg(long)]
    swapfile: PathBuf,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// An error once SIGINT, SIGTERM or SIGHUP has arrived (the demo then removes what it started).
pub fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (signal)");
    }
    Ok(())
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Note SIGINT/SIGTERM/SIGHUP instead of dying, so that the demo's loops end through its
/// cleanup. (Not by blocking them: children inherit the signal mask, and torpord must still
/// see its SIGTERM.)
fn catch_signals() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(s, &act) }.with_context(|| format!("sigaction {s}"))?;
    }
    Ok(())
}

/// Runs the demo; the process's exit code (0, 1 on failure, 130 on a signal).
pub fn main(o: DemoOpts) -> i32 {
    let started = catch_signals().and_then(|()| {
        let bin = match &o.bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("this binary's directory")?
                .to_path_buf(),
        };
        Session::new(&bin)
    });
    let mut session = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("\ndemo: FAILED: {e:#}");
            return 1;
        }
    };
    let r = run(&o, &mut session);
    let code = match r {
        Ok(()) => 0,
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("demo: interrupted (signal); removing what it started");
            130
        }
        Err(e) => {
            eprintln!("\ndemo: FAILED: {e:#}");
            eprint!("{}", session.log_tails());
            1
        }
    };
    drop(session);
    code
}

fn hdr(s: &str) {
    println!("\n== {s}");
}

fn run(o: &DemoOpts, s: &mut Session) -> Result<()> {
    ensure!(
        (1..=o.cycles).contains(&o.cold_runs),
        "--cold-runs must be 1..=--cycles (cold starts are interleaved with the Start cycles)"
    );
    let t = Tomcats::prepare(&s.dir)?;
    print_swaps(&o.swapfile)?;
    println!(
        "Tomcat {}, {}, catalina.sh run with CATALINA_BASE={}/catalina-base{{,-cold}}: under torpord on :{}, cold starts on :{}",
        command_out("dpkg-query", &["-W", "-f=${Version}", "tomcat10"]),
        command_out(&format!("{}/bin/java", t.java_home), &["-version"]),
        s.dir.display(),
        t.port,
        t.port_cold
    );
    let mut cold = Vec::new();
    let mut standby = None;
    let mut modes = Vec::new();
    for (i, &mode) in o.modes.iter().enumerate() {
        s.write_config(mode, &t)?;
        if i == 0 {
            hdr(&format!("4. torpord: standby pool (prestart, purge = always, prefetch = {}), cgroups under {}/", mode.name(), s.cg_parent));
        } else {
            let letter = char::from(b'a' + i as u8);
            hdr(&format!("5{letter}. torpord restarted with prefetch = {} (it adopts the frozen app; Tomcat is not restarted)", mode.name()));
        }
        s.start_torpord()?;
        wait_standby(s)?;
        if mode == Mode::WorkingSetOnly {
            let ws = s.app()?.working_set_bytes.with_context(|| {
                format!("no working set recorded for {APP} (needed by prefetch = working-set-only)")
            })?;
            println!(
                "  working set recorded at the last Stop (pages resident then): {} MiB",
                mib(ws)
            );
        }
        if i == 0 {
            standby = Some(show_pool(s, o, &t)?);
        }
        let result = mode_cycles(s, o, &t, mode, (i == 0).then_some(&mut cold))?;
        println!("$ torpor apps");
        print_apps(s)?;
        s.stop_torpord()?;
        modes.push(result);
    }
    let standby = standby.context("no prefetch mode given")?;
    print!(
        "{}",
        Summary {
            cold,
            standby,
            modes,
            cold_runs: o.cold_runs,
            cycles: o.cycles
        }
        .render(&machine_line(&o.swapfile))
    );
    Ok(())
}

/// The first line a command prints (stdout, else stderr); `?` when it cannot run.
fn command_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            [o.stdout, o.stderr].iter().find_map(|b| {
                String::from_utf8_lossy(b)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
        })
        .unwrap_or_else(|| "?".into())
}

/// The active swap devices, and a note for each other one the kernel uses before or alongside
/// the demo's swapfile.
fn print_swaps(swapfile: &Path) -> Result<()> {
    let areas = SwapArea::all()?;
    let list: Vec<String> = areas
        .iter()
        .map(|a| {
            format!(
                "{} ({}, {} MiB, prio {})",
                a.path.display(),
                a.kind,
                a.size_kib / 1024,
                a.priority
            )
        })
        .collect();
    println!("swap devices: {}", list.join(", "));
    let ours = areas
        .iter()
        .find(|a| a.path == swapfile)
        .map_or(i64::MIN, |a| a.priority);
    for a in areas
        .iter()
        .filter(|a| a.path != swapfile && a.priority >= ours)
    {
        println!(
            "note: {} (prio {}) is another active swap device, used before or alongside the demo's swapfile (prio {ours})",
            a.path.display(),
            a.priority
        );
    }
    Ok(())
}

/// "N cores, X GiB, kernel K; swapfile on DEVICE".
fn machine_line(swapfile: &Path) -> String {
    let m = bench::machine::Machine::probe().ok();
    let dir = swapfile.parent().unwrap_or(Path::new("/"));
    format!(
        "{} cores, {:.1} GiB, kernel {}; swapfile on {}",
        m.as_ref().map_or(0, |m| m.nproc),
        m.as_ref()
            .map_or(0.0, |m| m.mem_total_kib as f64 / 1048576.0),
        m.as_ref().map_or("?", |m| m.kernel.as_str()),
        mount_of(dir).map_or_else(|_| "?".into(), |m| m.source)
    )
}

/// Wait until the app is in standby (frozen and purged), showing its transitions.
fn wait_standby(s: &mut Session) -> Result<()> {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        let a = s.app().ok();
        let st = a
            .as_ref()
            .map(|a| format!("{}{}", a.state, if a.busy { "*" } else { "" }));
        if let Some(st) = st.as_ref().filter(|st| **st != last) {
            println!("  {:6.2} s  state: {st}", t0.elapsed().as_secs_f64());
            last = st.clone();
        }
        if let Some(a) = &a {
            if last == "standby" && a.frozen {
                return Ok(());
            }
            if matches!(
                a.state,
                AppState::Stopped | AppState::Running | AppState::Suspended
            ) {
                if let Some(e) = &a.last_error {
                    bail!("app {APP}: {e}");
                }
            }
        }
        s.check_torpord()?;
        ensure!(
            t0.elapsed() < Duration::from_secs(150),
            "app {APP} not in standby after 150 s (state: {last})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_apps(s: &Session) -> Result<()> {
    for l in s.cli(&["apps"])?.lines() {
        println!("  {l}");
    }
    Ok(())
}

/// The pool as torpord reports it after the prestart (first mode only); the standby memory.
fn show_pool(s: &Session, o: &DemoOpts, t: &Tomcats) -> Result<Standby> {
    let h: torpor_api::Health = s.get(torpor_api::paths::HEALTH)?;
    let backend = format!("{} ({})", h.backend, h.backend_why);
    println!("  backend: {backend}");
    println!("  cgroups: {}", h.cgroups);
    println!("$ torpor apps");
    print_apps(s)?;
    let a = s.app()?;
    println!("$ torpor status {APP}   (selected fields)");
    println!(
        "  state {}, frozen {}, pid {}, pids {}, cgroups {}",
        a.state,
        a.frozen,
        js(&a.pid),
        a.pids.len(),
        js(&a.cgroups)
    );
    println!("  memory: {}", js(&a.memory));
    println!("  last_purge: {}", js(&a.last_purge));
    let sb = Standby::of(&a.memory, backend);
    println!("  standby: {}", sb.line);
    let prestart = a
        .last_start
        .as_ref()
        .map_or_else(|| "?".into(), |l| format!("{:.3}", l.total_s));
    println!("  (the prestart was itself a cold start under torpord: ready after {prestart} s)");
    hdr(&format!(
        "5. Cold start vs torpor Start, interleaved: {} cold starts (catalina.sh run → first 200, on :{}),",
        o.cold_runs, t.port_cold
    ));
    println!(
        "   each followed by a torpor Start/Stop cycle of the standby app (on :{})",
        t.port
    );
    Ok(sb)
}

/// Compact JSON of an API value, keys sorted (as torpord's answer read back by `jq tostring`).
fn js<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).map_or_else(|e| e.to_string(), |v| v.to_string())
}

/// One mode's Start/Stop cycles (with the interleaved cold starts when `cold` is given).
fn mode_cycles(
    s: &mut Session,
    o: &DemoOpts,
    t: &Tomcats,
    mode: Mode,
    mut cold: Option<&mut Vec<(f64, u64)>>,
) -> Result<ModeResult> {
    println!(
        "  {} Start/Stop cycles (prefetch = {}); times in s; cli_wall = `torpor start` wall time,",
        o.cycles,
        mode.name()
    );
    println!("  1st_resp = from `torpor start` to the first 200 of a GET issued when it returned:");
    println!("{}", Cycle::head());
    let mut cycles = Vec::new();
    for i in 1..=o.cycles {
        if let Some(cold) = cold.as_deref_mut().filter(|_| i <= o.cold_runs) {
            let (secs, rss) = s.cold_start(t, i)?;
            cold.push((secs, rss));
            println!(
                "  c{i:<2} cold start: catalina.sh run on :{} → first 200 after {secs:.3} s (RSS {} MiB); stopped",
                t.port_cold,
                mib(rss)
            );
        }
        let c = cycle(s, t).with_context(|| format!("cycle {i}"))?;
        println!("{}", c.row(i));
        cycles.push(c);
    }
    if let Some(cold) = cold {
        let secs: Vec<f64> = cold.iter().map(|c| c.0).collect();
        let runs: Vec<String> = secs.iter().map(|x| format!("{x:.3}")).collect();
        println!(
            "  cold start median: {:.3} s (runs: {})",
            median(&secs).unwrap_or(f64::NAN),
            runs.join(" ")
        );
    }
    let r = ModeResult::of(mode, &cycles);
    println!(
        "  medians: torpord total {:.3} s, cli_wall {:.3} s, 1st_resp {:.3} s",
        r.total, r.cli_wall, r.first
    );
    Ok(r)
}

/// One Start (timed by torpord, by the CLI's wall time, and to a client's first 200), the app's
/// running memory, and a Stop back to standby.
fn cycle(s: &mut Session, t: &Tomcats) -> Result<Cycle> {
    interrupted()?;
    let before = s.app()?;
    ensure!(
        before.state == AppState::Standby,
        "app is {}, not standby, before Start",
        before.state
    );
    let t0 = Instant::now();
    let answer: StartAnswer = s.cli_json(&["start", APP])?;
    let cli_wall = t0.elapsed().as_secs_f64();
    let code = bench::server::http_get(t.port, "/", Duration::from_secs(10)).map(|r| r.0);
    let first = t0.elapsed().as_secs_f64();
    match code {
        Ok(200) => {}
        Ok(c) => bail!("GET {} right after Start answered {c}, not 200", t.url()),
        Err(e) => bail!("GET {} right after Start: {e:#}", t.url()),
    }
    let Some(started) = answer.started().filter(|s| !s.cold) else {
        bail!("torpord cold-started the app or found it running (it was not resumed)");
    };
    let running = s.app()?.memory.resident_bytes;
    let stop: StopAnswer = s.cli_json(&["stop", APP])?;
    ensure!(
        stop.state() == AppState::Standby,
        "Stop left the app {}, not standby",
        stop.state()
    );
    Ok(Cycle {
        standby_res: before.memory.resident_bytes,
        standby_swap: before.memory.swapped_bytes,
        start: started.timing.clone(),
        cli_wall,
        first,
        running_res: running,
        stop_s: stop.timing().map_or(f64::NAN, |t| t.total_s),
    })
}
