//! Shared by the experiments: the run context, timed resumes with their proofs, the kernel-reclaim layout, tables.

use anyhow::{ensure, Context, Result};
use bench::machine::{loadavg, Machine};
use bench::plot::Bar;
use bench::resume::{FreezerChoice, Proof, Subject, MIB};
use bench::stats::Spread;
use procswap::cgroup::Memcg;
use procswap::{NoProgress, PrefetchOptions, StockBackend};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct Ctx {
    pub quick: bool,
    pub out: PathBuf,
    pub child: PathBuf,
    pub freezer: FreezerChoice,
    pub date: String,
    pub day: String,
    pub machine: Machine,
    pub page_cluster: String,
    /// This executable (burner processes are `torpor-bench __burn`).
    pub me: PathBuf,
}

/// How the timed resume brings memory back.
#[derive(Clone)]
pub enum How {
    /// Thaw, demand paging.
    Stock,
    /// procswap prefetch (these options), then thaw.
    Prefetch(Box<PrefetchOptions>),
    /// As `Prefetch`, but the prefetch may stop early (its free-memory floor: torpor does not
    /// prefetch into a full machine); the rest comes back on demand. Recorded in `prefetch_stopped`.
    PrefetchMayStop(Box<PrefetchOptions>),
}

/// One timed resume.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Timed {
    /// Configuration name (experiment-specific).
    pub config: String,
    pub mib: u64,
    pub trial: usize,
    /// The request queued before the thaw (`TOUCH`, `NULL`, `TOUCHSET 20`).
    pub request: String,
    /// Resume requested → the child's answer to the request.
    pub seconds: f64,
    pub prefetch_seconds: Option<f64>,
    pub prefetch_read_bytes: Option<u64>,
    /// The child's own time answering the request (after the thaw).
    pub request_seconds: f64,
    pub majflt: u64,
    pub minflt: u64,
    /// Swap extents / offset-ordered runs of the child right before the timed resume.
    pub extents: u64,
    pub offset_runs: u64,
    /// Why the prefetch stopped early (only `How::PrefetchMayStop`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch_stopped: Option<String>,
    pub proof: Proof,
}

/// Freeze, purge (page-out + memcg reclaim; pages already on swap with their slot are only
/// dropped, not rewritten), prove the memory is out, then time: resume (stock or prefetch) →
/// the child's answer to `request`.
pub fn timed_resume(
    s: &mut Subject,
    config: &str,
    trial: usize,
    how: &How,
    request: &str,
) -> Result<Timed> {
    timed_resume_with(s, config, trial, how, request, &mut || Ok(()))
}

/// [`timed_resume`] with `before` run after the proof and right before the timer starts
/// (untimed: e.g. setting up memory pressure elsewhere on the machine).
pub fn timed_resume_with(
    s: &mut Subject,
    config: &str,
    trial: usize,
    how: &How,
    request: &str,
    before: &mut dyn FnMut() -> Result<()>,
) -> Result<Timed> {
    s.freeze()?;
    let proof = s.purge_until_out("torpor-bench")?;
    let contig = procswap::inspect(s.pid, Default::default())?.contiguity;
    before()?;
    s.queue(request)?;
    let t0 = Instant::now();
    let mut pf = None;
    let mut prefetch_stopped = None;
    if let How::Prefetch(o) | How::PrefetchMayStop(o) = how {
        let rep = procswap::prefetch_with(&StockBackend, s.pid, o, &NoProgress)
            .with_context(|| format!("prefetch pid {}", s.pid))?;
        if matches!(how, How::Prefetch(_)) {
            ensure!(
                rep.stopped.is_none(),
                "prefetch stopped early: {:?}",
                rep.stopped
            );
        }
        prefetch_stopped = rep.stopped.as_ref().map(|x| format!("{x:?}"));
        pf = Some((t0.elapsed().as_secs_f64(), rep.read_issued_bytes));
    }
    s.thaw()?;
    let r = s.reply()?;
    let seconds = t0.elapsed().as_secs_f64();
    let v: Vec<&str> = r.split_whitespace().collect();
    ensure!(
        v.first() == Some(&"DONE") && v.len() == 5,
        "child answered {request:?} with {r:?}"
    );
    let n = |i: usize| {
        v[i].parse::<u64>()
            .with_context(|| format!("child reply {r:?}"))
    };
    Ok(Timed {
        config: config.into(),
        mib: s.mib,
        trial,
        request: request.into(),
        seconds,
        prefetch_seconds: pf.map(|p| p.0),
        prefetch_read_bytes: pf.map(|p| p.1),
        request_seconds: n(3)? as f64 / 1e6,
        majflt: n(1)?,
        minflt: n(2)?,
        extents: contig.extents,
        offset_runs: contig.offset_runs,
        prefetch_stopped,
        proof,
    })
}

/// How kernel reclaim laid a child's memory out on swap.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelLayout {
    /// The limit file written (`memory.limit_in_bytes` on v1, `memory.max` on v2).
    pub limit_file: String,
    pub limit_bytes: u64,
    pub churn_pages: u64,
    pub churn_seconds: f64,
    pub total_seconds: f64,
}

pub fn limit_file(m: &Memcg) -> PathBuf {
    match m {
        Memcg::V2(d) => d.join("memory.max"),
        Memcg::V1(d) => d.join("memory.limit_in_bytes"),
    }
}

/// Ordinary kernel reclaim under memory pressure, no torpor purge: lower the child's memcg
/// limit to a quarter of its area (the kernel reclaims in LRU order), make the running child
/// rewrite `churn` pseudo-random pages (each write to a swapped page swaps it in and frees its
/// slot; the kernel reclaims other pages to stay under the limit), then freeze it, reclaim the
/// memcg's remaining pages (v1 `force_empty` / v2 `memory.reclaim`: kernel LRU reclaim, not
/// `MADV_PAGEOUT`) and lift the limit. Leaves the child frozen with its memory on swap.
pub fn kernel_layout(s: &mut Subject, churn: u64, seed: u64) -> Result<KernelLayout> {
    let t0 = Instant::now();
    let lf = limit_file(&s.memcg);
    let limit = s.mib * MIB / 4;
    std::fs::write(&lf, limit.to_string())
        .with_context(|| format!("write {} = {limit}", lf.display()))?;
    let r = s.command(&format!("CHURN {churn} {seed}"));
    let unlimited = if matches!(s.memcg, Memcg::V2(_)) {
        "max"
    } else {
        "-1"
    };
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::write(&lf, unlimited);
            return Err(e);
        }
    };
    ensure!(r.starts_with("DONE "), "child answered CHURN with {r:?}");
    let churn_seconds = r
        .split_whitespace()
        .nth(3)
        .and_then(|x| x.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e6;
    s.freeze()?;
    let rec = s.memcg.reclaim_all();
    std::fs::write(&lf, unlimited)
        .with_context(|| format!("write {} = {unlimited}", lf.display()))?;
    rec.context("memcg reclaim of the remainder")?;
    Ok(KernelLayout {
        limit_file: lf.file_name().unwrap_or_default().to_string_lossy().into(),
        limit_bytes: limit,
        churn_pages: churn,
        churn_seconds,
        total_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The order of `n` configurations in trial `trial` (from 1): forward in odd trials, backward
/// in even ones, so that no configuration always runs first after a warm-up.
pub fn trial_order(trial: usize, n: usize) -> Vec<usize> {
    if trial % 2 == 1 {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

pub fn secs_of<'a>(ts: impl Iterator<Item = &'a Timed>) -> Vec<f64> {
    ts.map(|t| t.seconds).collect()
}

pub fn fmt_spread(s: Option<Spread>) -> String {
    s.map(|s| format!("{:.3} ({:.3}–{:.3})", s.median, s.min, s.max))
        .unwrap_or_else(|| "-".into())
}

/// A results row's first cells: the configuration, its times (median (min–max)) and, bold, its
/// speed-up over `base` (a median time) with `digits` decimals, e.g.
/// `| all | 0.250 (0.250–0.250) | **10.00×** |`.
pub fn spread_cells(config: &str, s: Option<Spread>, base: f64, digits: usize) -> String {
    let speedup = s
        .map(|s| format!("{:.*}×", digits, base / s.median))
        .unwrap_or_else(|| "-".into());
    format!("| {config} | {} | **{speedup}** |", fmt_spread(s))
}

pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

impl Ctx {
    pub fn files(&self, exp: &str) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let dir = self.out.join(exp);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let host: String = self
            .machine
            .hostname
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
            .collect();
        let host = if host.is_empty() || host == "none" {
            "guest".to_string()
        } else {
            host
        };
        let stem = format!(
            "{exp}-{}-{host}{}",
            self.day,
            if self.quick { "-quick" } else { "" }
        );
        Ok((
            dir.join(format!("{stem}.md")),
            dir.join(format!("{stem}.json")),
            dir.join(format!("{stem}.png")),
        ))
    }

    pub fn header(&self, exp: &str, what: &str, load_before: (f64, f64, f64), wall: f64) -> String {
        let m = &self.machine;
        let la = loadavg();
        let mut o = String::new();
        let _ = writeln!(o, "# {exp} — {}\n", self.date);
        let _ = writeln!(
            o,
            "Produced by `bench/run-experiments.sh{} {exp}` (`torpor-bench`, release build). Wall time {wall:.0} s. {what}\n",
            if self.quick { " --quick" } else { "" }
        );
        let _ = writeln!(o, "## Machine\n\n| | |\n|---|---|");
        o.push_str(&m.markdown_rows());
        let _ = writeln!(o, "| page-cluster | `{}` |", self.page_cluster);
        let _ = writeln!(
            o,
            "| load average | before {:.2} {:.2} {:.2}; after {:.2} {:.2} {:.2} (other work shares this 2-CPU machine) |\n",
            load_before.0, load_before.1, load_before.2, la.0, la.1, la.2
        );
        if let Ok(h) = std::env::var("TORPOR_BENCH_HOST_LOAD") {
            // Inside our guest: the host's load when the VM started (qemu TCG shares the host's CPUs).
            o.insert_str(o.len() - 1, &format!("| host load average | {h} |\n"));
        }
        o
    }

    pub fn spawn(&self, mib: u64) -> Result<Subject> {
        Subject::spawn(&self.child, mib, self.freezer)
    }

    pub fn swap_dir(&self) -> PathBuf {
        self.machine
            .swap
            .as_ref()
            .and_then(|s| s.path.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("/var/tmp"))
    }
}

pub fn proof_summary(ts: &[Timed]) -> String {
    let worst = |f: &dyn Fn(&Proof) -> u64| ts.iter().map(|t| f(&t.proof)).max().unwrap_or(0);
    format!(
        "Before each of the {} timed resumes the memory was proven out (thresholds as in `resume.rs`: area present ≤ 0.1% + 8 pages, \
         swapped ≥ 99%, memcg usage ≤ 8 MiB + N/128, memcg swapcached ≤ 1 MiB; up to 3 purges, else the run fails). Worst values seen: \
         area present pages {}, area pages {}, memcg usage {} KiB, memcg swapcached {} KiB (None = not reported), system SwapCached {} KiB \
         (other processes' swap cache included); purges needing a retry: {}.",
        ts.len(),
        worst(&|p| p.area_present_pages),
        worst(&|p| p.area_pages),
        worst(&|p| p.memcg_usage_bytes) / 1024,
        worst(&|p| p.memcg_swapcached_bytes.unwrap_or(0)) / 1024,
        worst(&|p| p.system_swapcached_bytes) / 1024,
        ts.iter().filter(|t| t.proof.purge_attempts > 1).count()
    )
}

pub fn runs_table(ts: &[Timed]) -> String {
    let mut o = String::from(
        "<details><summary>All timed resumes, in run order</summary>\n\n| config | MiB | trial | request | seconds | prefetch s | request s (child) | majflt | extents | offset runs |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in ts {
        let _ = writeln!(
            o,
            "| {} | {} | {} | `{}` | {:.4} | {} | {:.4} | {} | {} | {} |",
            t.config,
            t.mib,
            t.trial,
            t.request,
            t.seconds,
            t.prefetch_seconds
                .map(|x| format!("{x:.4}"))
                .unwrap_or_else(|| "-".into()),
            t.request_seconds,
            t.majflt,
            t.extents,
            t.offset_runs
        );
    }
    o.push_str("\n</details>\n");
    o
}

pub fn full_prefetch() -> How {
    How::Prefetch(Box::default())
}

// ---------------------------------------------------------------- experiment 2: size sweep

/// What the I/O floor is and is not (torpor can beat it).
pub const FLOOR_NOTE: &str = "The \"I/O floor\" is a reference, not a bound: it reads with one 4 MiB `O_DIRECT` request in flight at a time \
    (queue depth 1), while the prefetch keeps many swap reads in flight (`MADV_WILLNEED` batches up to 4 × 16 MiB ahead), which this \
    virtual disk serves faster; where torpor / floor is below 1× that is why. What lies below the virtual disk (host page cache or not) \
    is not visible from inside the machine.\n\n";

pub fn chrono_now() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d %H:%M:%S %Z")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- experiment 3, "free memory only" (fills the machine: run it in the VM)

/// The plot link, the proof that memory was out before every timed resume, and the runs table.
pub fn plot_and_proofs(o: &mut String, png_path: &Path, ts: &[Timed]) {
    let _ = writeln!(
        o,
        "![plot]({})\n",
        png_path.file_name().unwrap_or_default().to_string_lossy()
    );
    let _ = writeln!(
        o,
        "## Memory was out before every timed resume\n\n{}\n",
        proof_summary(ts)
    );
    o.push_str(&runs_table(ts));
}

/// Median of `f` over `sel` (NaN when empty).
pub fn median_by<T>(sel: &[&T], f: &dyn Fn(&T) -> f64) -> f64 {
    Spread::of(&sel.iter().map(|t| f(t)).collect::<Vec<_>>())
        .map(|s| s.median)
        .unwrap_or(f64::NAN)
}

/// One bar per configuration with samples: median, min–max, colour by position.
pub fn spread_bars(names: &[&str], get: impl Fn(&str) -> Option<Spread>) -> Vec<Bar> {
    names
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            get(c).map(|s| Bar {
                label: c.to_string(),
                value: s.median,
                lo: s.min,
                hi: s.max,
                color: i,
            })
        })
        .collect()
}

/// Writes the markdown and the JSON of an experiment; the markdown's path.
pub fn write_results(
    md_path: &Path,
    md: &str,
    json_path: &Path,
    json: &serde_json::Value,
) -> Result<String> {
    std::fs::write(md_path, md)?;
    std::fs::write(json_path, serde_json::to_string_pretty(json)?)?;
    Ok(md_path.display().to_string())
}

/// A timed resume with only its configuration, time and counters set (tests of the tables).
#[cfg(test)]
pub fn test_timed(config: &str, seconds: f64, majflt: u64, prefetch: Option<(f64, u64)>) -> Timed {
    Timed {
        config: config.into(),
        mib: 64,
        trial: 1,
        request: "TOUCH".into(),
        seconds,
        prefetch_seconds: prefetch.map(|p| p.0),
        prefetch_read_bytes: prefetch.map(|p| p.1),
        request_seconds: 0.0,
        majflt,
        minflt: 0,
        extents: majflt / 10,
        offset_runs: 0,
        prefetch_stopped: None,
        proof: Proof::default(),
    }
}
