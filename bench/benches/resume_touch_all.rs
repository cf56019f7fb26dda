//! `resume_touch_all`: stock thaw + demand paging vs procswap prefetch + thaw, for a child with
//! 64/256/1024 MiB of purged anonymous memory; interleaved pairs, the I/O floor alongside.
//! See `bench/src/resume.rs` for exactly what is timed.
//!
//! Needs root and swap (fails loudly otherwise): run `bench/run-resume-bench.sh`.
//! Env: `TORPOR_BENCH_QUICK=1` (64 and 256 MiB, 3 pairs each, no criterion statistics — criterion
//! needs at least 10 samples), `TORPOR_BENCH_SIZES=64,256` (override sizes), `TORPOR_BENCH_FREEZER`
//! (auto|v2|v1|signal), `TORPOR_BENCH_RESULTS=<file.md>` (write the markdown results there),
//! `TORPOR_BENCH_JSON=<file.json>` (raw measurements; default `target/torpor-bench/resume_touch_all.json`).

use anyhow::{Context, Result};
use bench::floor::{FloorFile, DEFAULT_BLOCK};
use bench::machine::{loadavg, require_root_and_swap};
use bench::resume::{FreezerChoice, Measurement, Record, RunContext, Subject, Variant, MIB};
use criterion::{Criterion, SamplingMode};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CHILD: &str = env!("CARGO_BIN_EXE_torpor-bench-child");
const FULL_SIZES: [u64; 3] = [64, 256, 1024];
const QUICK_SIZES: [u64; 2] = [64, 256];
const QUICK_PAIRS: usize = 3;
const FLOOR_READS: usize = 3;
const TARGET_RATIO: f64 = 3.0;
const TARGET_MIB: u64 = 1024;

struct Run {
    record: Record,
    freezer: FreezerChoice,
    floor_dir: PathBuf,
}

impl Run {
    /// One stock resume then one torpor resume of `subj`; both recorded.
    fn pair(&mut self, subj: &mut Subject, warmup: bool) -> (Measurement, Measurement) {
        let pair = self
            .record
            .measurements
            .iter()
            .filter(|m| m.mib == subj.mib)
            .count()
            / 2;
        let go = |subj: &mut Subject, v: Variant| {
            subj.measure(v, pair, warmup)
                .unwrap_or_else(|e| panic!("resume_touch_all {} MiB {}: {e:#}", subj.mib, v.name()))
        };
        let s = go(subj, Variant::Stock);
        let t = go(subj, Variant::Torpor);
        eprintln!(
            "  {:>4} MiB pair {pair:>2}{}: stock {:.3} s ({} majflt), torpor {:.3} s (prefetch {:.3} s, touch {:.3} s, {} majflt); \
             before each: area present {}/{} pages, memcg {} KiB, SwapCached {} KiB",
            subj.mib,
            if warmup { " (warm-up)" } else { "" },
            s.seconds,
            s.child_majflt,
            t.seconds,
            t.prefetch_seconds.unwrap_or(0.0),
            t.touch_seconds,
            t.child_majflt,
            s.proof.area_present_pages.max(t.proof.area_present_pages),
            s.proof.area_pages,
            s.proof.memcg_usage_bytes.max(t.proof.memcg_usage_bytes) / 1024,
            s.proof.system_swapcached_bytes.max(t.proof.system_swapcached_bytes) / 1024,
        );
        self.record.measurements.push(s.clone());
        self.record.measurements.push(t.clone());
        (s, t)
    }

    fn subject(&mut self, mib: u64) -> Subject {
        let t0 = Instant::now();
        let s = Subject::spawn(Path::new(CHILD), mib, self.freezer)
            .unwrap_or_else(|e| panic!("resume_touch_all: set up the {mib} MiB child: {e:#}"));
        eprintln!(
            "resume_touch_all: {mib} MiB child pid {} ready in {:.1} s ({})",
            s.pid,
            t0.elapsed().as_secs_f64(),
            s.desc
        );
        self.record.subjects.push((mib, s.desc.clone()));
        s
    }

    fn floor(&mut self, ff: &FloorFile, mib: u64) {
        let secs = ff
            .read_direct(DEFAULT_BLOCK)
            .unwrap_or_else(|e| panic!("I/O floor: {e:#}"));
        eprintln!(
            "  {mib:>4} MiB I/O floor: {secs:.3} s ({:.0} MB/s, O_DIRECT 4 MiB reads)",
            (mib * MIB) as f64 / 1e6 / secs
        );
        self.record.floors.push((mib, secs));
    }

    fn floor_file(&self, mib: u64) -> FloorFile {
        FloorFile::create(&self.floor_dir, mib * MIB)
            .unwrap_or_else(|e| panic!("I/O floor file in {}: {e:#}", self.floor_dir.display()))
    }

    fn finish_size(&mut self, mut subj: Subject) {
        subj.verify_data().unwrap_or_else(|e| panic!("{e:#}"));
        self.record.verified.push(subj.mib);
    }
}

fn sizes(quick: bool) -> Result<Vec<u64>> {
    match std::env::var("TORPOR_BENCH_SIZES") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|x| {
                x.trim()
                    .parse::<u64>()
                    .with_context(|| format!("TORPOR_BENCH_SIZES: {x:?}"))
            })
            .collect(),
        _ => Ok(if quick {
            QUICK_SIZES.to_vec()
        } else {
            FULL_SIZES.to_vec()
        }),
    }
}

fn floor_dir(swap: &bench::machine::SwapArea) -> PathBuf {
    if let Ok(d) = std::env::var("TORPOR_BENCH_FLOOR_DIR") {
        return PathBuf::from(d);
    }
    if swap.kind == "file" {
        if let Some(p) = swap.path.parent() {
            return p.to_owned();
        }
    }
    eprintln!("resume_touch_all: swap is a {} ({}); the floor file goes to /var/tmp (set TORPOR_BENCH_FLOOR_DIR)", swap.kind, swap.path.display());
    PathBuf::from("/var/tmp")
}

/// Quick mode: per size, a warm-up pair, then `QUICK_PAIRS` pairs with floor reads between.
fn run_quick(run: &RefCell<Run>, sizes: &[u64]) {
    for &mib in sizes {
        let ff = run.borrow().floor_file(mib);
        let mut subj = run.borrow_mut().subject(mib);
        run.borrow_mut().floor(&ff, mib);
        run.borrow_mut().pair(&mut subj, true);
        for i in 0..QUICK_PAIRS {
            run.borrow_mut().pair(&mut subj, false);
            if i + 1 < FLOOR_READS {
                run.borrow_mut().floor(&ff, mib);
            }
        }
        run.borrow_mut().finish_size(subj);
    }
}

/// Criterion mode: per size, one benchmark group with both variants, floors between.
fn run_criterion(run: &RefCell<Run>, sizes: &[u64]) {
    let mut c = Criterion::default().without_plots().configure_from_args();
    for &mib in sizes {
        let ff = run.borrow().floor_file(mib);
        let subj = RefCell::new(run.borrow_mut().subject(mib));
        run.borrow_mut().floor(&ff, mib);
        let mut g = c.benchmark_group(format!("resume_touch_all/{mib}MiB"));
        // Each sample is one resume (iters = 1): the first call is criterion's warm-up.
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_millis(10));
        for v in [Variant::Stock, Variant::Torpor] {
            let mut first = true;
            g.bench_function(v.name(), |b| {
                b.iter_custom(|iters| {
                    let warm = std::mem::replace(&mut first, false);
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (s, t) = run.borrow_mut().pair(&mut subj.borrow_mut(), warm);
                        total += Duration::from_secs_f64(if v == Variant::Stock {
                            s.seconds
                        } else {
                            t.seconds
                        });
                    }
                    total
                })
            });
            run.borrow_mut().floor(&ff, mib);
        }
        g.finish();
        run.borrow_mut().finish_size(subj.into_inner());
    }
    c.final_summary();
}

/// Write the raw measurements (JSON) and, with `TORPOR_BENCH_RESULTS`, the markdown results.
fn write_results(rec: &Record, ctx: &RunContext, verdict: &str) -> Result<()> {
    let json = std::env::var("TORPOR_BENCH_JSON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("torpor-bench/resume_touch_all.json")
        });
    if let Some(d) = json.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
    }
    std::fs::write(&json, serde_json::to_string_pretty(rec)?)
        .with_context(|| format!("write {}", json.display()))?;
    let json = json.canonicalize().unwrap_or(json);
    println!("raw measurements: {}", json.display());
    if let Ok(md) = std::env::var("TORPOR_BENCH_RESULTS") {
        let mut text = rec.markdown(ctx);
        text.push_str("## Target\n\n");
        text.push_str(verdict);
        text.push('\n');
        if ctx.load_before.0 >= 1.0 || ctx.load_after.0 >= 1.0 {
            text.push_str(&format!(
                "\nThe machine was busy (1-minute load {:.2} before, {:.2} after, on {} CPUs): other work competed for CPU and disk.\n",
                ctx.load_before.0, ctx.load_after.0, ctx.machine.nproc
            ));
        }
        std::fs::write(&md, text).with_context(|| format!("write {md}"))?;
        println!("results: {md}");
    }
    Ok(())
}

fn run() -> Result<()> {
    let wall = Instant::now();
    let swap = require_root_and_swap()?;
    let quick = std::env::var("TORPOR_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let sizes = sizes(quick)?;
    let mut ctx = RunContext::start(quick)?;
    let need = sizes.iter().max().copied().unwrap_or(0) * MIB;
    anyhow::ensure!(
        swap.size_kib.saturating_sub(swap.used_kib) * 1024 > need + 64 * MIB,
        "swap {} has {} MiB free; the {} MiB child needs more",
        swap.path.display(),
        swap.size_kib.saturating_sub(swap.used_kib) / 1024,
        need / MIB
    );
    eprintln!(
        "resume_touch_all: sizes {sizes:?} MiB{}, swap {} ({}), load {:.2}",
        if quick { " (QUICK)" } else { "" },
        swap.path.display(),
        swap.kind,
        ctx.load_before.0
    );
    let run = RefCell::new(Run {
        record: Record::default(),
        freezer: FreezerChoice::from_env()?,
        floor_dir: floor_dir(&swap),
    });

    if quick {
        run_quick(&run, &sizes);
    } else {
        run_criterion(&run, &sizes);
    }

    let run = run.into_inner();
    ctx.load_after = loadavg();
    ctx.wall_seconds = wall.elapsed().as_secs_f64();
    let rec = run.record;
    println!();
    print!("{}", rec.table());
    let verdict = rec.target_verdict(TARGET_RATIO, TARGET_MIB);
    println!("{verdict}");
    println!(
        "bench wall time {:.0} s; load before {:.2}, after {:.2}",
        ctx.wall_seconds, ctx.load_before.0, ctx.load_after.0
    );

    write_results(&rec, &ctx, &verdict)
}

fn main() {
    // `cargo bench` passes `--bench`; a plain listing request must not run the experiment.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Err(e) = run() {
        eprintln!("resume_touch_all: FAILED: {e:#}");
        std::process::exit(1);
    }
}
