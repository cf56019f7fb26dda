//! Experiment 5, repeated placement: Stop/Start cycles of one app.

use crate::common::*;
use anyhow::{Context, Result};
use bench::machine::loadavg;
use bench::plot::{self, Bar};
use bench::resume::MIB;
use bench::stats::Spread;
use procswap::PrefetchOptions;
use std::fmt::Write as _;
use std::time::Instant;

pub fn repeated(ctx: &Ctx) -> Result<String> {
    let t_start = Instant::now();
    let load0 = loadavg();
    let (mib, trials, pct) = if ctx.quick {
        (128, 10, 20)
    } else {
        (512, 12, 20)
    };
    let req = format!("TOUCHSET {pct}");
    eprintln!("repeated: {mib} MiB, {trials} trials, working set {pct}%");
    let mut s = ctx.spawn(mib)?;
    // Layout, then one placement that served load on demand paging: present = what it touched.
    timed_resume(&mut s, "warm-up", 0, &How::Stock, "TOUCH")?;
    timed_resume(&mut s, "warm-up", 0, &How::Stock, &req)?;
    s.freeze()?;
    let ws = procswap::workingset::from_residency(s.pid)?;
    s.thaw()?;
    let ws_mib = ws.bytes() as f64 / MIB as f64;
    let configs: [(&str, How); 3] = [
        ("stock", How::Stock),
        ("full prefetch", full_prefetch()),
        (
            "working set only",
            How::Prefetch(Box::new(PrefetchOptions {
                working_set: Some(ws.clone()),
                working_set_only: true,
                ..Default::default()
            })),
        ),
    ];
    let mut ts: Vec<Timed> = Vec::new();
    for trial in 1..=trials {
        for j in 0..3 {
            let i = (j + trial) % 3;
            let t = timed_resume(&mut s, configs[i].0, trial, &configs[i].1, &req)?;
            eprintln!("  {} trial {trial}: {:.3} s", configs[i].0, t.seconds);
            ts.push(t);
        }
    }
    s.verify_data()?;
    let (md_path, json_path, png_path) = ctx.files("repeated")?;
    let bars = bars_of(&configs, &ts);
    plot::bars(&png_path, &format!("Repeated placement, {mib} MiB app, first request touches a {pct}% working set (mean, min-max, {trials} trials)"), "resume request -> answer (s)", &bars, false)?;
    let mut o = ctx.header(
        "repeated",
        "Experiment 5 of the bench issue: repeated placement (the paper's Figure 10).",
        load0,
        t_start.elapsed().as_secs_f64(),
    );
    let _ = writeln!(
        o,
        "## What is measured\n\nOne child with {mib} MiB of random data. The \"load\" it serves is `{req}`: read one word of each page in a fixed \
         pseudo-random {pct}% of its pages. Setup (excluded): one resume that writes the swap layout (torpor purge), one placement on demand paging \
         that served the load; then its working set is recorded by residency (`procswap::workingset::from_residency`: pages present after a \
         demand-paged run = pages touched): {ws_mib:.1} MiB. Each trial: freeze, purge, proof that memory is out, then timed from resume request to \
         the answer to `{req}` (the first request after the placement):\n\n\
         - **stock**: thaw, demand paging;\n\
         - **full prefetch**: `procswap::prefetch_with` of every swapped page, then thaw;\n\
         - **working set only**: `prefetch_with` with the recorded working set and `working_set_only` (the rest would come back on demand), then thaw.\n\n\
         The three alternate (rotating order) for {trials} trials on the same child.\n"
    );
    let _ = writeln!(o, "## Results (seconds)\n\n| variant | mean | sd | median | min | max | mean speed-up vs stock | prefetched MiB (median) |\n|---|---|---|---|---|---|---|---|");
    results_rows(&mut o, &configs, &ts)?;
    o.push_str(
        "\nPaper (Figure 10, prose): on repeated placement regular resume gets faster (only the pages the app used come back) while \
         \"the enhanced resume time remains stable because it prefetches all the memory footprint anyway\". Ratios above are of means \
         from this one interleaved run.\n\n",
    );
    plot_and_proofs(&mut o, &png_path, &ts);
    write_results(
        &md_path,
        &o,
        &json_path,
        &serde_json::json!({"mib": mib, "trials": trials, "working_set_pct": pct, "working_set_bytes": ws.bytes(), "timed": ts}),
    )
}

/// One configuration's mean, standard deviation and spread.
fn stats_of(ts: &[Timed], c: &str) -> (f64, f64, Option<Spread>) {
    let x = secs_of(ts.iter().filter(|t| t.config == c));
    let (m, sd) = mean_sd(&x);
    (m, sd, Spread::of(&x))
}

/// One bar per configuration: mean, min-max.
fn bars_of(configs: &[(&str, How)], ts: &[Timed]) -> Vec<Bar> {
    let stats = |c: &str| stats_of(ts, c);
    configs
        .iter()
        .enumerate()
        .map(|(i, (c, _))| {
            let (m, _, sp) = stats(c);
            Bar {
                label: c.to_string(),
                value: m,
                lo: sp.map(|s| s.min).unwrap_or(m),
                hi: sp.map(|s| s.max).unwrap_or(m),
                color: i,
            }
        })
        .collect()
}

/// The results table, one row per configuration.
fn results_rows(o: &mut String, configs: &[(&str, How)], ts: &[Timed]) -> Result<()> {
    let stats = |c: &str| stats_of(ts, c);
    let (sm, _, _) = stats("stock");
    for (c, _) in configs {
        let (m, sd, sp) = stats(c);
        let sp = sp.context("no samples")?;
        let pf = Spread::of(
            &ts.iter()
                .filter(|t| t.config == *c)
                .map(|t| t.prefetch_read_bytes.unwrap_or(0) as f64 / MIB as f64)
                .collect::<Vec<_>>(),
        )
        .map(|s| s.median)
        .unwrap_or(0.0);
        let _ = writeln!(
            o,
            "| {c} | {m:.3} | {sd:.3} | {:.3} | {:.3} | {:.3} | **{:.2}×** | {pf:.0} |",
            sp.median,
            sp.min,
            sp.max,
            sm / m
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- experiments 1 and 6: a real server
