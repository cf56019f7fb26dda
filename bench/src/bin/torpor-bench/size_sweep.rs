//! Experiment 2, size sweep: touch-all and null-request resume time against the app size.

use crate::common::*;
use anyhow::{Context, Result};
use bench::floor::{FloorFile, DEFAULT_BLOCK};
use bench::machine::loadavg;
use bench::plot::{self, Series};
use bench::resume::MIB;
use bench::stats::Spread;
use std::fmt::Write as _;
use std::time::Instant;

pub fn size_sweep(ctx: &Ctx) -> Result<String> {
    let t_start = Instant::now();
    let load0 = loadavg();
    let sizes: Vec<u64> = match std::env::var("TORPOR_BENCH_SIZES") {
        Ok(v) if !v.is_empty() => v
            .split(',')
            .map(|x| x.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .context("TORPOR_BENCH_SIZES")?,
        _ if ctx.quick => vec![64, 256],
        _ => vec![64, 128, 256, 512, 1024, 2048],
    };
    let trials = if ctx.quick { 3 } else { 5 };
    let configs: [(&str, How, &str); 4] = [
        ("stock touch-all", How::Stock, "TOUCH"),
        ("torpor touch-all", full_prefetch(), "TOUCH"),
        ("stock null", How::Stock, "NULL"),
        ("torpor null", full_prefetch(), "NULL"),
    ];
    let (ts, floors) = measure(ctx, &sizes, trials, &configs)?;
    let (md_path, json_path, png_path) = ctx.files("size-sweep")?;
    plot_series(&png_path, &sizes, &configs, &ts, &floors)?;
    let mut o = ctx.header(
        "size-sweep",
        "Experiment 2 of the bench issue: placement delay vs application size, touch-all and null request.",
        load0,
        t_start.elapsed().as_secs_f64(),
    );
    o.push_str(
        "## What is measured\n\nA child (`torpor-bench-child`) in its own memory cgroup holds N MiB of random anonymous data (4 KiB pages). \
         Before every timed resume: freeze, `procswap::purge_with` (page-out in address order + memcg reclaim), proof that the memory is out. \
         Timed: from \"resume requested\" to the child's answer to one request queued on its pipe before the thaw:\n\n\
         - **touch-all** (`TOUCH`): read one word of every page (the paper's best case for prefetching);\n\
         - **null** (`NULL`): read one word of one page (the paper's worst case: everything prefetched is unneeded).\n\n\
         **stock** = thaw, demand paging. **torpor** = `procswap::prefetch_with` (all swapped pages, swap-slot order, 16 MiB `MADV_WILLNEED` batches + \
         2-thread mapping pass), then thaw. The four configurations alternate within each trial (order reversed every other trial) on the same child, \
         after one excluded warm-up resume that writes the swap layout (address order, contiguous). The I/O floor is an `O_DIRECT` sequential read of \
         N MiB of written random data in 4 MiB requests from a file on the swap file's filesystem, once per trial.\n\n",
    );
    let _ = writeln!(
        o,
        "## Results (seconds: median (min–max) over {trials} trials)\n"
    );
    let _ = writeln!(o, "| size | stock touch-all | torpor touch-all | **touch-all speed-up** | stock null | torpor null | **null: torpor / stock** | I/O floor | torpor touch-all / floor |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
    results_rows(&mut o, &sizes, &ts, &floors);
    o.push_str(
        "\nRatios are of medians measured in this one interleaved run. **Null request: prefetching makes it slower** — the torpor null \
         time is the whole prefetch (it reads all N MiB before the thaw), the stock null time is one page fault. This is the paper's \
         worst case; the paper found enhanced resume \"retains certain performance advantage\" there, presumably because its regular resume \
         also had to page the AppServ itself (JVM, its heap and code) back in; our child has no such footprint (stock null costs ~1 fault), \
         so here the penalty is the whole prefetch. A working-set-only prefetch (see `repeated/`) is torpor's answer to this case.\n\n",
    );
    o.push_str(FLOOR_NOTE);
    plot_and_proofs(&mut o, &png_path, &ts);
    let _ = writeln!(o, "\n{}", bench::resume::floor_reads(&floors));
    write_results(
        &md_path,
        &o,
        &json_path,
        &serde_json::json!({"sizes_mib": sizes, "trials": trials, "timed": ts, "floors": floors}),
    )
}

/// An I/O floor read: size (MiB) and seconds.
type Floor = (u64, f64);

/// Every size: a warm-up, then `trials` trials of the four configurations and an I/O floor read.
fn measure(
    ctx: &Ctx,
    sizes: &[u64],
    trials: usize,
    configs: &[(&str, How, &str)],
) -> Result<(Vec<Timed>, Vec<Floor>)> {
    let mut ts: Vec<Timed> = Vec::new();
    let mut floors: Vec<(u64, f64)> = Vec::new();
    for &mib in sizes {
        eprintln!("size-sweep: {mib} MiB");
        let mut s = ctx.spawn(mib)?;
        // Warm-up (excluded): the first purge writes the layout every later resume reads.
        timed_resume(&mut s, "warm-up", 0, &How::Stock, "TOUCH")?;
        let ff = FloorFile::create(&ctx.swap_dir(), mib * MIB)?;
        for trial in 1..=trials {
            for i in trial_order(trial, 4) {
                let (name, how, req) = &configs[i];
                let t = timed_resume(&mut s, name, trial, how, req)?;
                eprintln!("  {name} trial {trial}: {:.3} s", t.seconds);
                ts.push(t);
            }
            floors.push((mib, ff.read_direct(DEFAULT_BLOCK)?));
        }
        // Data intact after all the purge/prefetch cycles (untimed; pages still out fault back in).
        s.verify_data()?;
    }
    Ok((ts, floors))
}

/// One configuration's seconds at one size.
fn spread_at(ts: &[Timed], mib: u64, c: &str) -> Option<Spread> {
    Spread::of(&secs_of(
        ts.iter().filter(|t| t.mib == mib && t.config == c),
    ))
}

/// The I/O floor's seconds at one size.
fn floor_at(floors: &[(u64, f64)], mib: u64) -> Option<Spread> {
    Spread::of(
        &floors
            .iter()
            .filter(|f| f.0 == mib)
            .map(|f| f.1)
            .collect::<Vec<_>>(),
    )
}

/// The plot: one line per configuration and the I/O floor, against the size.
fn plot_series(
    png_path: &std::path::Path,
    sizes: &[u64],
    configs: &[(&str, How, &str)],
    ts: &[Timed],
    floors: &[(u64, f64)],
) -> Result<()> {
    let get = |mib: u64, c: &str| spread_at(ts, mib, c);
    let floor = |mib: u64| floor_at(floors, mib);
    let mut series: Vec<Series> = configs
        .iter()
        .map(|(c, _, _)| Series {
            name: c.to_string(),
            points: sizes
                .iter()
                .filter_map(|&m| get(m, c).map(|s| (m as f64, s.median, s.min, s.max)))
                .collect(),
            reference: false,
        })
        .collect();
    series.push(Series {
        name: "I/O floor (O_DIRECT sequential read)".into(),
        points: sizes
            .iter()
            .filter_map(|&m| floor(m).map(|s| (m as f64, s.median, s.min, s.max)))
            .collect(),
        reference: true,
    });
    plot::log_lines(
        png_path,
        "Placement delay vs application size (median, min-max)",
        "application size (MiB)",
        "resume request -> answer (s)",
        &series,
    )?;
    Ok(())
}

/// The results table: one row per size.
fn results_rows(o: &mut String, sizes: &[u64], ts: &[Timed], floors: &[(u64, f64)]) {
    let get = |mib: u64, c: &str| spread_at(ts, mib, c);
    let floor = |mib: u64| floor_at(floors, mib);
    for &m in sizes {
        let (st, tt, sn, tn, fl) = (
            get(m, "stock touch-all"),
            get(m, "torpor touch-all"),
            get(m, "stock null"),
            get(m, "torpor null"),
            floor(m),
        );
        let r = |a: Option<Spread>, b: Option<Spread>| {
            a.zip(b)
                .map(|(a, b)| format!("{:.2}×", a.median / b.median))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            o,
            "| {m} MiB | {} | {} | **{}** | {} | {} | **{}** | {} | {} |",
            fmt_spread(st),
            fmt_spread(tt),
            r(st, tt),
            fmt_spread(sn),
            fmt_spread(tn),
            r(tn, sn),
            fmt_spread(fl),
            r(tt, fl)
        );
    }
}

// ---------------------------------------------------------------- experiment 4: contiguity
