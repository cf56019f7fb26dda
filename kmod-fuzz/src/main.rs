//! torpor-kmod-fuzz: a structure-aware fuzzer for `/dev/torpor` (torpor.ko).
//!
//! Every ioctl (PREFETCH, DISCARD, FREE_BITMAP, PRIORITY_MAP, GET_VERSION, GET_STATS, unknown
//! numbers, known numbers with the wrong size or direction) with hostile fields, range sets and
//! pointers, from many threads at once, against live children that keep changing their address
//! spaces, fork and die. Each phase ends with every thread joined and every child reaped, and
//! then GET_STATS must report 0 references held by the module and 0 calls in flight.

mod child;
mod gen;
mod mem;
mod oracle;
mod procs;
mod rng;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use gen::{Env, Phase, SharedRanges, Worker};
use mem::GuardBuf;
use oracle::Tally;
use procs::{Caller, CallerEnd, Registry};
use procswap::kmod::Kmod;
use procswap::uapi::{self, TorporStats};
use rng::stream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LONG_ABOUT: &str = "\
Structure-aware fuzzer for /dev/torpor (torpor.ko). Runs in phases (ranges, guard, guest-maps, \
concurrency, exits); each ends with its threads joined and its children reaped, then GET_STATS must \
report 0 outstanding references (pid, task, mm, page) and 0 ioctls in flight. Fails (exit 1) on an \
errno kmod/README.md does not document, on an answer the documented rules do not allow for the \
request (e.g. success for a request whose ranges array runs into a guard page), on results that do \
not add up, and on any outstanding reference.

DISCARD is only ever aimed at the fuzzer's own sacrificial children (`target` processes it keeps \
unreaped for the duration of each call) or at pids no process can have.

Replay: the seed is printed at the start. The same --seed with --threads 1 and --count N issues \
the same sequence of requests; the state of the live children (their pids, their mappings, when \
the supervisor kills them) is not replayed and can differ, and with several threads the \
interleaving differs. --dry-run --trace prints the sequence without a module.";

#[derive(Parser)]
#[command(name = "torpor-kmod-fuzz", version, about = "Structure-aware fuzzer for /dev/torpor (torpor.ko)", long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    sub: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Seed of every random choice (decimal or 0x-hex); default: from the clock.
    #[arg(long, value_parser = parse_u64)]
    seed: Option<u64>,
    /// Concurrent callers (threads); default: 2 x CPUs.
    #[arg(long)]
    threads: Option<usize>,
    /// Total time, split evenly between the phases ("60s", "30m"); default 60s.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "count")]
    duration: Option<Duration>,
    /// Requests per phase (split between the threads) instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// Phases to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Phase::ALL.to_vec())]
    phases: Vec<Phase>,
    /// The module's device node.
    #[arg(long, default_value = uapi::TORPOR_DEV_PATH)]
    dev: PathBuf,
    /// Print every request and its answer.
    #[arg(long)]
    trace: bool,
    /// Generate (and with --trace print) requests without a module or children.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum Sub {
    /// A sacrificial target process (spawned by the fuzzer).
    #[command(hide = true)]
    Target {
        #[arg(long, value_enum)]
        mode: child::Mode,
        #[arg(long)]
        seed: u64,
    },
    /// A process issuing slow ioctls until the fuzzer kills it (spawned by the fuzzer).
    #[command(hide = true)]
    Caller {
        #[arg(long)]
        seed: u64,
        #[arg(long, value_delimiter = ',')]
        targets: Vec<i32>,
        #[arg(long)]
        dev: PathBuf,
        #[arg(long)]
        count: u64,
    },
}

fn parse_u64(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.sub {
        Some(Sub::Target { mode, seed }) => child::run_target(mode, seed),
        Some(Sub::Caller {
            seed,
            targets,
            dev,
            count,
        }) => child::run_caller(seed, &targets, &dev, count),
        None => match run(cli.run) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("torpor-kmod-fuzz: FAIL: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// How long a phase runs.
#[derive(Clone, Copy)]
enum Budget {
    Time(Duration),
    Count(u64),
}

/// What every phase shares.
struct Run<'a> {
    kmod: Option<&'a Kmod>,
    exe: Option<PathBuf>,
    dev: PathBuf,
    seed: u64,
    threads: usize,
    budget: Budget,
    end_pfn: u64,
    kthreadd: bool,
    /// A PROT_NONE region (kept mapped by `run`) for pointers that must fault.
    none_addr: u64,
    trace: bool,
}

fn run(a: RunArgs) -> Result<bool> {
    let seed = a.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.as_secs().wrapping_mul(1_000_000_007) ^ u64::from(t.subsec_nanos())
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = a.threads.unwrap_or(2 * cpus).max(1);
    if a.phases.is_empty() {
        bail!("no phases");
    }
    let budget = match (a.count, a.duration) {
        (Some(c), _) => Budget::Count(c),
        (None, d) => Budget::Time(d.unwrap_or(Duration::from_secs(60)) / a.phases.len() as u32),
    };
    print_plan(&a, seed, threads, budget);
    let (kmod, end_pfn) = open_module(&a)?;
    let kthreadd = std::fs::read_to_string("/proc/2/comm").is_ok_and(|s| s.trim() == "kthreadd");
    let none = GuardBuf::inaccessible(65536)?;
    let r = Run {
        kmod: kmod.as_ref(),
        exe: if a.dry_run {
            None
        } else {
            Some(std::env::current_exe().context("current_exe")?)
        },
        dev: a.dev.clone(),
        seed,
        threads,
        budget,
        end_pfn,
        kthreadd,
        none_addr: none.addr() as u64,
        trace: a.trace,
    };
    let t0 = Instant::now();
    let mut total = Tally::default();
    let mut failures = Vec::new();
    let mut prev: Option<TorporStats> = None;
    for &phase in &a.phases {
        let rep = run_phase(&r, phase, prev)?;
        prev = rep.stats;
        total.merge(rep.tally);
        failures.extend(rep.failures);
    }
    Ok(conclude(&a, seed, &total, t0, &failures))
}

/// The seed, threads, phases and budget, and how to replay them.
fn print_plan(a: &RunArgs, seed: u64, threads: usize, budget: Budget) {
    let names: Vec<&str> = a.phases.iter().map(|p| p.name()).collect();
    println!(
        "torpor-kmod-fuzz: seed {seed:#x} ({seed}), {threads} threads, phases {}, {}",
        names.join(","),
        match budget {
            Budget::Time(d) => format!(
                "{} per phase",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            ),
            Budget::Count(c) => format!("{c} requests per phase"),
        }
    );
    println!(
        "torpor-kmod-fuzz: replay with --seed {seed} --threads 1 --count N --phases {}",
        names.join(",")
    );
}

/// The module (none in a dry run) and its end pfn (524288 without a module).
fn open_module(a: &RunArgs) -> Result<(Option<Kmod>, u64)> {
    if a.dry_run {
        return Ok((None, 524_288));
    }
    let k = Kmod::open_path(&a.dev).with_context(|| format!("opening {}", a.dev.display()))?;
    let v = k.version();
    println!(
        "torpor-kmod-fuzz: module release {}, ABI {}, features {}",
        v.release_str(),
        v.abi_version,
        v.feature_names().join(",")
    );
    if !k.has(uapi::features::GET_STATS) {
        bail!("the module does not advertise get_stats: reference accounting cannot be checked (an old torpor.ko?)");
    }
    let mut q = uapi::TorporFreeBitmap::default();
    // SAFETY: a FREE_BITMAP size query (bitmap = 0): the module reads and writes only the
    // request, a valid exclusively borrowed struct.
    unsafe { k.raw_ioctl(uapi::TORPOR_IOC_FREE_BITMAP, &mut q as *mut _ as usize) }
        .context("FREE_BITMAP size query")?;
    let end_pfn = q.end_pfn;
    Ok((Some(k), end_pfn))
}

/// The totals over every phase and the verdict: true when nothing failed.
fn conclude(a: &RunArgs, seed: u64, total: &Tally, t0: Instant, failures: &[String]) -> bool {
    println!(
        "== all phases: {} ioctls in {:.1} s",
        total.calls(),
        t0.elapsed().as_secs_f64()
    );
    for l in total.lines() {
        println!("   {l}");
    }
    if failures.is_empty() {
        println!(
            "torpor-kmod-fuzz: PASS: seed {seed:#x}, {} phases, {} ioctls, 0 undocumented errnos, 0 violations{}",
            a.phases.len(),
            total.calls(),
            if a.dry_run { " (dry run: nothing issued)" } else { ", 0 outstanding references and 0 in flight after every phase" }
        );
        true
    } else {
        for f in failures {
            println!("torpor-kmod-fuzz: FAIL: {f}");
        }
        println!("torpor-kmod-fuzz: FAIL: seed {seed:#x}: {} failure(s); replay with --seed {seed} --threads 1", failures.len());
        false
    }
}

struct PhaseReport {
    tally: Tally,
    stats: Option<TorporStats>,
    failures: Vec<String>,
}

fn stats_line(s: &TorporStats) -> String {
    format!(
        "pid {} task {} mm {} page {}, in_flight {} (module totals: {} calls, {} errors)",
        s.pid_refs, s.task_refs, s.mm_refs, s.page_refs, s.in_flight, s.calls, s.errors
    )
}

/// GET_STATS with nothing running: 0 references held, 0 calls in flight.
fn quiescent_stats(k: &Kmod, when: &str, failures: &mut Vec<String>) -> Result<TorporStats> {
    let s = k.stats().with_context(|| format!("GET_STATS {when}"))?;
    println!("   GET_STATS {when}: {}", stats_line(&s));
    if s.outstanding_refs() != 0 || s.in_flight != 0 {
        failures.push(format!(
            "{when}: the module holds {} references (pid {} task {} mm {} page {}) and reports {} ioctls in flight, with every fuzzer thread joined and every child reaped",
            s.outstanding_refs(),
            s.pid_refs,
            s.task_refs,
            s.mm_refs,
            s.page_refs,
            s.in_flight
        ));
    }
    Ok(s)
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(10)));
    }
}

fn run_phase(r: &Run, phase: Phase, prev: Option<TorporStats>) -> Result<PhaseReport> {
    let mut failures = Vec::new();
    println!(
        "== phase {}: targets {:?}",
        phase.name(),
        phase.modes().iter().map(|m| m.name()).collect::<Vec<_>>()
    );
    let before = match (r.kmod, prev) {
        (Some(k), None) => Some(quiescent_stats(
            k,
            &format!("before phase {}", phase.name()),
            &mut failures,
        )?),
        (_, p) => p,
    };
    let t_setup = Instant::now();
    let reg = Registry::new(r.exe.as_deref(), r.seed, phase.index(), phase.modes())?;
    let setup = t_setup.elapsed();
    // The phase's time starts once its targets are up (an exec takes a while in a TCG guest).
    let t0 = Instant::now();
    let shared = if phase.mutator() {
        Some(SharedRanges::new()?)
    } else {
        None
    };
    let env = Env {
        kmod: r.kmod,
        reg: &reg,
        me: std::process::id() as i32,
        end_pfn: r.end_pfn,
        kthreadd: r.kthreadd,
        shared: shared.as_ref(),
        trace: r.trace,
        none_addr: r.none_addr,
        seed: r.seed,
    };
    let caller_failures = Mutex::new(Vec::<String>::new());
    let deadline = match r.budget {
        Budget::Time(d) => Some(t0 + d),
        Budget::Count(_) => None,
    };
    let tally = fuzz_threads(r, phase, &env, deadline, &caller_failures)?;
    reg.shutdown();
    procs::assert_no_children()?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "   {:.1} s (+{:.1} s starting the targets), {} ioctls ({:.0}/s), {}",
        secs,
        setup.as_secs_f64(),
        tally.calls(),
        tally.calls() as f64 / secs.max(1e-9),
        reg.stats.line()
    );
    tally_failures(phase, &tally, caller_failures, &mut failures);
    let stats = match r.kmod {
        Some(k) => Some(check_counters(r, k, phase, &tally, before, &mut failures)?),
        None => None,
    };
    if failures.is_empty() {
        println!("   phase {}: ok", phase.name());
    }
    Ok(PhaseReport {
        tally,
        stats,
        failures,
    })
}

/// Runs the phase's threads (supervisor, spawner, callers, mutator, workers) until the workers
/// are done, then stops and joins the others; the workers' tally.
fn fuzz_threads(
    r: &Run,
    phase: Phase,
    env: &Env,
    deadline: Option<Instant>,
    caller_failures: &Mutex<Vec<String>>,
) -> Result<Tally> {
    let reg = env.reg;
    let stop = AtomicBool::new(false);
    let stop = &stop;
    std::thread::scope(|s| -> Result<Tally> {
        let sup = s.spawn(|| supervise(r, phase, reg, stop));
        let spawner = r.exe.is_some().then(|| {
            s.spawn(|| -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    reg.fill_spares()?;
                    sleep_unless(stop, Duration::from_millis(5));
                }
                Ok(())
            })
        });
        let callers = (phase.callers() && r.kmod.is_some())
            .then(|| s.spawn(|| run_callers(r, phase, reg, stop, caller_failures)));
        let mutator = env.shared.map(|sh| s.spawn(|| mutate(r, phase, sh, stop)));
        let workers: Vec<_> = (0..r.threads)
            .map(|i| {
                let quota = match r.budget {
                    Budget::Count(c) => {
                        Some(c / r.threads as u64 + u64::from((i as u64) < c % r.threads as u64))
                    }
                    Budget::Time(_) => None,
                };
                s.spawn(move || fuzz_worker(env, phase, i, quota, deadline))
            })
            .collect();
        let mut tally = Tally::default();
        let mut err = None;
        for w in workers {
            match w.join().expect("a fuzzing thread panicked") {
                Ok(t) => tally.merge(t),
                Err(e) => err = Some(e),
            }
        }
        stop.store(true, Ordering::Relaxed);
        reg.abort_starting();
        sup.join().expect("supervisor panicked");
        if let Some(sp) = spawner {
            sp.join().expect("spawner panicked")?;
        }
        if let Some(c) = callers {
            c.join().expect("caller thread panicked")?;
        }
        if let Some(m) = mutator {
            m.join().expect("mutator panicked");
        }
        match err {
            Some(e) => Err(e),
            None => Ok(tally),
        }
    })
}

/// The supervisor: changes the targets every few ms, and kills one now and then.
fn supervise(r: &Run, phase: Phase, reg: &Registry, stop: &AtomicBool) {
    let mut rng = stream(r.seed, 2000 + phase.index(), 0);
    let (lo, hi) = phase.kill_interval_ms();
    let mut next_kill = Instant::now() + Duration::from_millis(lo + rng.below(hi - lo + 1));
    while !stop.load(Ordering::Relaxed) {
        sleep_unless(stop, Duration::from_millis(2 + rng.below(8)));
        let kill = Instant::now() >= next_kill;
        if kill {
            next_kill = Instant::now() + Duration::from_millis(lo + rng.below(hi - lo + 1));
        }
        reg.tick(&mut rng, kill);
    }
}

/// Caller processes, one after the other, each killed somewhere in the middle of its ioctls.
fn run_callers(
    r: &Run,
    phase: Phase,
    reg: &Registry,
    stop: &AtomicBool,
    caller_failures: &Mutex<Vec<String>>,
) -> Result<()> {
    let mut rng = stream(r.seed, 4000 + phase.index(), 0);
    let exe = r.exe.as_deref().unwrap_or(Path::new("/proc/self/exe"));
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let c = Caller::spawn(
            exe,
            &r.dev,
            stream(r.seed, 5000 + phase.index(), n).next(),
            reg.snapshot(),
            reg,
        )?;
        if stop.load(Ordering::Relaxed) && !c.ready {
            // Killed while starting at the end of the phase: not a caller failure.
            let _ = c.finish();
            break;
        }
        n += 1;
        reg.stats.callers.fetch_add(1, Ordering::Relaxed);
        // It is issuing ioctls from now on: kill it somewhere in the middle of one.
        sleep_unless(stop, Duration::from_millis(rng.below(300)));
        let ctr = match c.finish() {
            CallerEnd::Killed => &reg.stats.callers_killed,
            CallerEnd::Finished => &reg.stats.callers_done,
            CallerEnd::Failed(m) => {
                caller_failures.lock().unwrap().push(m);
                &reg.stats.callers_failed
            }
        };
        ctr.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The mutator: keeps rewriting the shared range sets under the workers' requests.
fn mutate(r: &Run, phase: Phase, sh: &SharedRanges, stop: &AtomicBool) {
    let mut rng = stream(r.seed, 3000 + phase.index(), 0);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        sh.mutate(&mut rng);
        i += 1;
        if i.is_multiple_of(256) {
            std::thread::yield_now();
        }
    }
}

/// One fuzzing thread: requests until its quota or the deadline.
fn fuzz_worker(
    env: &Env,
    phase: Phase,
    i: usize,
    quota: Option<u64>,
    deadline: Option<Instant>,
) -> Result<Tally> {
    let mut w = Worker::new(env, phase, i)?;
    let mut n = 0u64;
    loop {
        match (quota, deadline) {
            (Some(q), _) if n >= q => break,
            (None, Some(d)) if Instant::now() >= d => break,
            _ => {}
        }
        w.step();
        n += 1;
    }
    Ok(w.tally)
}

/// Prints the phase's tally and records its undocumented errnos, violations and caller failures.
fn tally_failures(
    phase: Phase,
    tally: &Tally,
    caller_failures: Mutex<Vec<String>>,
    failures: &mut Vec<String>,
) {
    for l in tally.lines() {
        println!("   {l}");
    }
    for e in &tally.examples {
        println!("   {e}");
    }
    if tally.undocumented > 0 {
        failures.push(format!(
            "phase {}: {} answers with an undocumented errno",
            phase.name(),
            tally.undocumented
        ));
    }
    if tally.violations > 0 {
        failures.push(format!(
            "phase {}: {} answers the documented rules do not allow, or results that do not add up",
            phase.name(),
            tally.violations
        ));
    }
    for m in caller_failures.into_inner().unwrap() {
        failures.push(format!("phase {}: {m}", phase.name()));
    }
}

/// GET_STATS after the phase: quiescent, and its call/error counters moved by what this process
/// issued (exactly, or at least that much when callers also issued calls).
fn check_counters(
    r: &Run,
    k: &Kmod,
    phase: Phase,
    tally: &Tally,
    before: Option<TorporStats>,
    failures: &mut Vec<String>,
) -> Result<TorporStats> {
    let s = quiescent_stats(k, &format!("after phase {}", phase.name()), failures)?;
    let Some(b) = before else {
        return Ok(s);
    };
    // The module counts every call it answered: this phase's, plus the GET_STATS that
    // took `before`. Callers (other processes) add calls this process did not count.
    let calls = s.calls.wrapping_sub(b.calls);
    let errors = s.errors.wrapping_sub(b.errors);
    let (want_calls, want_errors) = (tally.calls() + 1, tally.errors());
    let exact = !phase.callers();
    println!(
        "   module counted {calls} calls / {errors} errors since the previous GET_STATS; this process issued {want_calls} / {want_errors}{}",
        if exact { "" } else { " (plus the callers')" }
    );
    let bad = if exact {
        calls != want_calls || errors != want_errors
    } else {
        calls < want_calls || errors < want_errors
    };
    if bad {
        failures.push(format!(
            "phase {}: the module's call/error counters moved by {calls}/{errors}, this process issued {want_calls}/{want_errors} (another process using {}?)",
            phase.name(),
            r.dev.display()
        ));
    }
    Ok(s)
}
