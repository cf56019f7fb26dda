//! Experiment 1, CPU-load sweep: Tomcat resume under duty-cycled CPU burners.

use crate::common::*;
use crate::servers::*;
use anyhow::Result;
use bench::machine::loadavg;
use bench::plot::{self, Series};
use bench::server::{Achieved, Burners};
use bench::stats::Spread;
use std::fmt::Write as _;
use std::time::Instant;

/// A level's load: target %, calibration, whole level, load average after.
type LevelLoad = (u32, Achieved, Achieved, (f64, f64, f64));

/// The configurations, as the plot and the table name them.
const NAMES: [&str; 3] = ["cold start", "stock resume", "torpor (purge + prefetch)"];

pub fn cpu_load(ctx: &Ctx) -> Result<String> {
    let t_start = Instant::now();
    let load0 = loadavg();
    let levels: Vec<u32> = vec![0, 20, 40, 60, 80];
    let trials = if ctx.quick { 2 } else { 4 };
    let mib = app_mib(ctx.quick, 128)?;
    let period_ms = 20;
    eprintln!("cpu-load: Tomcat + {mib} MiB webapp, levels {levels:?} %, {trials} trials");
    let mut srv = Servers::start(mib)?;
    let (ts, achieved) = run_levels(ctx, &mut srv, &levels, trials, period_ms)?;
    let (md_path, json_path, png_path) = ctx.files("cpu-load")?;
    let names = NAMES;
    let get = |lvl: u32, c: &str| spread_at(&ts, lvl, c);
    plot_levels(&png_path, mib, &levels, &ts)?;
    let mut o = ctx.header("cpu-load", "Experiment 1 of the bench issue: resume delay vs competing CPU load (the paper's first experiment).", load0, t_start.elapsed().as_secs_f64());
    o.push_str(&server_text(&srv.tc, &srv));
    let _ = writeln!(
        o,
        "**CPU load**: one burner process per CPU, pinned, duty-cycled by wall clock ({period_ms} ms period: spin for load% of it, sleep the \
         rest), running for the whole level (cold starts, evictions and resumes all compete with it). Calibration: the first 2 s of each level \
         measure what the burners achieved before any trial; the achieved columns below are the burners' own CPU time / (wall × CPUs) over \
         the whole level, and all CPUs' busy fraction from /proc/stat (which includes the other work on this shared machine). Within a level \
         the three configurations alternate (order rotated every trial), {trials} trials each.\n"
    );
    let _ = writeln!(
        o,
        "## Results (seconds, median (min–max) of {trials})\n\n| target load | burners achieved (calib. / level) | all CPUs busy (level) | load avg after | cold start | stock resume | torpor resume | cold / torpor | cold / stock | stock / torpor |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let ratio_at = results_rows(&mut o, &achieved, &ts);
    let at = |l: u32| ratio_at.iter().find(|r| r.0 == l).map(|r| r.1);
    let verdict = |l: u32, target: f64| match at(l) {
        Some(r) if r > target => format!("{r:.1}× — MET"),
        Some(r) => format!(
            "{r:.1}× — NOT MET (torpor resume {:.2} s)",
            get(l, names[2]).map(|s| s.median).unwrap_or(f64::NAN)
        ),
        None => "not measured".into(),
    };
    let _ = writeln!(
        o,
        "\nPaper (Agile application placement in hosting platforms, prose): enhanced resume \"over 20×\" faster than a cold start on an idle machine, \"over 30×\" at 40% CPU load. \
         Here: idle {}; 40% {}. Ratios are of medians from this one interleaved run. Where a target is missed, the reason is the \
         denominator: the ratio is bounded by the cold start, and a warm-cache Tomcat with this small webapp starts in seconds where the \
         paper's JBoss application took over 90 s; the resumes themselves take well under a second to a few seconds. The burners also reach \
         less than their target where the machine is already busy with other work (see the achieved columns): competing load here is what \
         the burners add on top of an already loaded machine.\n",
        verdict(0, 20.0),
        verdict(40, 30.0)
    );
    srv_plot_and_proofs(&mut o, &png_path, &ts);
    std::fs::write(&md_path, &o)?;
    let ach_json: Vec<serde_json::Value> =
        achieved.iter().map(|(l, c, a, la)| serde_json::json!({"target_pct": l, "calibration": c, "level": a, "loadavg_after": [la.0, la.1, la.2]})).collect();
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(
            &serde_json::json!({"server": srv.tc.info, "trials": trials, "period_ms": period_ms, "load": ach_json, "timed": ts}),
        )?,
    )?;
    Ok(md_path.display().to_string())
}

/// One configuration's seconds at one load level.
fn spread_at(ts: &[SrvTimed], lvl: u32, c: &str) -> Option<Spread> {
    Spread::of(&secs_of_srv(
        ts.iter().filter(|t| t.load_pct == lvl && t.config == c),
    ))
}

/// Every level: burners started and calibrated for 2 s, then `trials` trials of the three
/// configurations (order rotated); the timings and what the burners achieved.
fn run_levels(
    ctx: &Ctx,
    srv: &mut Servers,
    levels: &[u32],
    trials: usize,
    period_ms: u64,
) -> Result<(Vec<SrvTimed>, Vec<LevelLoad>)> {
    let hows = [SrvHow::Cold, SrvHow::Stock, SrvHow::Enhanced];
    let mut ts: Vec<SrvTimed> = Vec::new();
    let mut achieved: Vec<LevelLoad> = Vec::new();
    for &lvl in levels {
        let b = Burners::start(&ctx.me, lvl as f64 / 100.0, period_ms)?;
        std::thread::sleep(std::time::Duration::from_secs(2));
        let cal = b.achieved();
        eprintln!(
            "  load {lvl}%: calibration 2 s: burners {:.0}%, all CPUs busy {:.0}%",
            cal.burners * 100.0,
            cal.system_busy * 100.0
        );
        for trial in 1..=trials {
            for j in 0..3 {
                let how = hows[(j + trial + lvl as usize / 20) % 3];
                let t = srv.run(how, lvl, trial)?;
                eprintln!("    {} trial {trial}: {:.3} s", t.config, t.seconds);
                ts.push(t);
            }
        }
        achieved.push((lvl, cal, b.achieved(), loadavg()));
    }
    Ok((ts, achieved))
}

/// The plot: one line per configuration against the load level.
fn plot_levels(
    png_path: &std::path::Path,
    mib: u64,
    levels: &[u32],
    ts: &[SrvTimed],
) -> Result<()> {
    let names = NAMES;
    let get = |lvl: u32, c: &str| spread_at(ts, lvl, c);
    let series: Vec<Series> = names
        .iter()
        .map(|c| Series {
            name: c.to_string(),
            points: levels
                .iter()
                .filter_map(|&l| get(l, c).map(|s| (l as f64, s.median, s.min, s.max)))
                .collect(),
            reference: false,
        })
        .collect();
    plot::lines(
        png_path,
        &format!("Resume delay vs competing CPU load, Tomcat + {mib} MiB webapp (median, min-max)"),
        "competing CPU load, target (% of both CPUs)",
        "start/resume -> first answer (s)",
        &series,
        false,
    )?;
    Ok(())
}

/// The results table, one row per level; the cold/torpor ratio at each level.
fn results_rows(o: &mut String, achieved: &[LevelLoad], ts: &[SrvTimed]) -> Vec<(u32, f64)> {
    let names = NAMES;
    let get = |lvl: u32, c: &str| spread_at(ts, lvl, c);
    let mut ratio_at = Vec::new();
    for (lvl, cal, ach, la) in achieved {
        let (c, s, e) = (
            get(*lvl, names[0]),
            get(*lvl, names[1]),
            get(*lvl, names[2]),
        );
        let r = |a: Option<Spread>, b: Option<Spread>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.1}×", a.median / b.median),
            _ => "-".into(),
        };
        if let (Some(c), Some(e)) = (c, e) {
            ratio_at.push((*lvl, c.median / e.median));
        }
        let _ = writeln!(
            o,
            "| {lvl}% | {:.0}% / {:.0}% | {:.0}% | {:.2} | {} | {} | {} | **{}** | {} | {} |",
            cal.burners * 100.0,
            ach.burners * 100.0,
            ach.system_busy * 100.0,
            la.0,
            fmt_spread(c),
            fmt_spread(s),
            fmt_spread(e),
            r(c, e),
            r(c, s),
            r(s, e)
        );
    }
    ratio_at
}
