//! `torpor-bench activation`: the benchmark of issue 12's acceptance ("near-warm activation").
//!
//! Every app is a real server run **by torpord with its default configuration** (only socket,
//! state directory and cgroup parent set); the benchmark talks to torpord's API like any client.
//! For each app, trials rotate over the modes (round-robin, the starting mode shifting by one
//! each trial):
//!
//! - `warm`: torpord restarted with `purge = "never"` (it adopts the app: the same process),
//!   Start with prefetch `full` + the app's settle step so everything is in memory, Stop (freeze,
//!   no purge), memory **proven in** (memcg swap ≈ 0), timed Start with `{"prefetch": "none"}`
//!   = a plain thaw; torpord restarted with the default configuration afterwards;
//! - every prefetch mode torpord's configuration accepts (read from the binary: `torpord --check`
//!   of a config with an unknown mode lists them), so a new mode — the new default — is measured
//!   the moment it lands; the mode torpord uses without a body is marked *default*. Its `none`
//!   is demand paging after torpor's own ordered purge (the loading set laid out first on swap);
//! - `demand-stock` (process apps): stock Linux demand paging — every Stop of the trial asks for
//!   the kernel purge (`{"purge": "kernel"}`: the kernel reclaims the app's memory cgroup, no
//!   layout, no plan), every Start is `{"prefetch": "none"}`. Every "× demand paging" ratio is
//!   printed against both baselines.
//!
//! Before each timed Start of mode M the app goes through `condition` untimed cycles of
//! Stop → Start(M) → the same workload (other random requests) → so that what torpord records at
//! Stop (working set, loading set) comes from M's own history, then Stop; then the memory is
//! **proven out** (the app's memcg: anon + page cache resident ≤ the limit; torpord's status is
//! printed too) or the trial is refused. The timed part: counters (host `pswpin`, the memcg's
//! major faults) → the Start request goes out on one thread while the app's client (its first
//! request, then its workload) starts on this one → the client's own time to its first
//! successful response, torpord's answer (breakdown), swap-in and major faults to the first
//! response and to the end of the workload. Then (with conditioning cycles, not after `warm`)
//! the app is stopped at once: that Stop's answer (`timed_stop_answer`) tells what the timed
//! Start's recorder and background fetch did, and the next trial's conditioning begins from it.
//!
//! Results: `<out>/<date>-<app>[-quick].{md,json,png}` and the index table in `<out>/README.md`.

mod apps;
mod daemon;
mod postgres;

use crate::floor::{FloorFile, DEFAULT_BLOCK};
use crate::machine::{loadavg, Machine};
use crate::plot::{self, Bar};
use crate::stats;
use anyhow::{bail, ensure, Context, Result};
use apps::{At, Outcome, Workload};
use daemon::{Daemon, MemSnap, Memcg};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use torpor_api::{AppState, MemoryStatus, PurgeMethod, StartAnswer, StopAnswer, VmStart};

pub const ALL_APPS: [&str; 7] = [
    "tomcat",
    "tomcat-256",
    "redis",
    "postgres",
    "child-touch",
    "child-null",
    "vm",
];
const MIB: u64 = 1 << 20;
/// Stock Linux demand paging: Stop with the kernel purge, Start with prefetch `none`.
const STOCK_MODE: &str = "demand-stock";

const USAGE: &str = "usage: torpor-bench activation [--quick] [--apps LIST] [--trials N] [--out DIR] [--torpord PATH] [--modes LIST] [--condition N] [--tag TAG]
  apps (default all): tomcat, tomcat-256, redis, postgres, child-touch, child-null, vm
  modes: warm, every prefetch mode torpord accepts (none = demand paging after torpor's ordered purge), demand-stock (process apps:
  Stop with the kernel's purge, Start with prefetch none = stock Linux demand paging)
  env (flags win): ACTIVATION_APPS, ACTIVATION_TRIALS (default 5, quick 2), ACTIVATION_QUICK=1, ACTIVATION_MODES (default: warm + every
  prefetch mode torpord accepts), ACTIVATION_CONDITION (untimed same-mode cycles before each timed Start, default 1),
  ACTIVATION_MAX_RESIDENT_KIB (memory-out limit, default 4096), ACTIVATION_REDIS_MIB (1024), ACTIVATION_REDIS_GETS (200000),
  ACTIVATION_PG_SCALE (70), ACTIVATION_PG_SHARED_BUFFERS_MIB (1024), ACTIVATION_CHILD_MIB (1024), ACTIVATION_TOMCAT_APP_MIB (256),
  ACTIVATION_VM_WS_MIB (16), ACTIVATION_TAG (added to the result file names: <date>-<app>-<tag>[-quick]), ACTIVATION_SOURCE (a note on what torpord was built from, kept in the results)
  needs root and swap: run it through bench/run-activation.sh (make bench-activation)
       torpor-bench activation --render [DIR]   (re-render the md/png files and the index from the JSON files; measures nothing)";

/// Options.
#[derive(Debug, Clone, Serialize)]
pub struct Opts {
    pub apps: Vec<String>,
    pub trials: usize,
    pub quick: bool,
    pub out: PathBuf,
    pub torpord: PathBuf,
    pub modes: Option<Vec<String>>,
    pub condition: usize,
    pub tag: String,
    pub max_resident: u64,
    pub redis_mib: u64,
    pub redis_gets: u64,
    pub pg_scale: u64,
    pub pg_sb_mib: u64,
    pub child_mib: u64,
    pub tomcat_app_mib: u64,
    pub vm_ws_mib: u64,
    pub bin_dir: PathBuf,
    pub work: PathBuf,
}

fn env_u64(k: &str, d: u64) -> Result<u64> {
    match std::env::var(k) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| format!("{k}={v:?}")),
        _ => Ok(d),
    }
}

fn list(s: &str) -> Vec<String> {
    s.split([',', ' '])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

impl Opts {
    pub fn parse(args: &[String]) -> Result<Opts> {
        let me = std::env::current_exe()?;
        let bin_dir = me.parent().context("exe dir")?.to_path_buf();
        let envs = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut quick = envs("ACTIVATION_QUICK").is_some_and(|v| v != "0");
        let mut apps = envs("ACTIVATION_APPS").map(|v| list(&v));
        let mut trials = envs("ACTIVATION_TRIALS")
            .map(|v| v.trim().parse::<usize>())
            .transpose()
            .context("ACTIVATION_TRIALS")?;
        let mut out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results/activation"));
        let mut torpord = bin_dir.join("torpord");
        let mut modes = envs("ACTIVATION_MODES").map(|v| list(&v));
        let mut condition = env_u64("ACTIVATION_CONDITION", 1)? as usize;
        let mut tag = envs("ACTIVATION_TAG").unwrap_or_default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{a} needs a value\n{USAGE}"))
            };
            match a.as_str() {
                "--quick" => quick = true,
                "--apps" => apps = Some(list(&val()?)),
                "--trials" => trials = Some(val()?.parse().context("--trials")?),
                "--out" => out = PathBuf::from(val()?),
                "--torpord" => torpord = PathBuf::from(val()?),
                "--modes" => modes = Some(list(&val()?)),
                "--condition" => condition = val()?.parse().context("--condition")?,
                "--tag" => tag = val()?,
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        let apps = match apps {
            Some(v) if !v.is_empty() && v != ["all"] => v,
            _ => ALL_APPS.iter().map(|s| s.to_string()).collect(),
        };
        for a in &apps {
            ensure!(
                ALL_APPS.contains(&a.as_str()),
                "unknown app {a:?} (known: {})",
                ALL_APPS.join(", ")
            );
        }
        ensure!(
            tag.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "tag {tag:?}: letters, digits, - and _ only"
        );
        let trials = trials.unwrap_or(if quick { 2 } else { 5 });
        ensure!(trials >= 1, "at least one trial");
        Ok(Opts {
            apps,
            trials,
            quick,
            out,
            torpord,
            modes,
            condition,
            tag,
            max_resident: env_u64("ACTIVATION_MAX_RESIDENT_KIB", 4096)? * 1024,
            redis_mib: env_u64("ACTIVATION_REDIS_MIB", 1024)?,
            redis_gets: env_u64("ACTIVATION_REDIS_GETS", 200_000)?,
            pg_scale: env_u64("ACTIVATION_PG_SCALE", 70)?,
            pg_sb_mib: env_u64("ACTIVATION_PG_SHARED_BUFFERS_MIB", 1024)?,
            child_mib: env_u64("ACTIVATION_CHILD_MIB", 1024)?,
            tomcat_app_mib: env_u64("ACTIVATION_TOMCAT_APP_MIB", 256)?,
            vm_ws_mib: env_u64("ACTIVATION_VM_WS_MIB", 16)?,
            bin_dir,
            work: PathBuf::from(format!("/var/tmp/torpor-activation-{}", std::process::id())),
        })
    }
}

/// Evidence about the app's memory right before a timed Start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Proof {
    /// `out` (purged) or `in` (warm).
    pub kind: String,
    pub ok: bool,
    pub why: String,
    pub memcg: MemSnap,
    /// torpord's `memory` of the app status (resident = sum of the processes' RSS, which
    /// includes file pages mapped from elsewhere, e.g. shared libraries).
    pub torpord_memory: MemoryStatus,
    pub state: String,
    pub frozen: bool,
    /// Stop → Start cycles done before the proof held (1 = the first).
    pub attempts: usize,
}

fn prove(d: &Daemon, warm: bool, limit: u64, attempts: usize) -> Result<(Proof, Memcg)> {
    let st = d.app_status()?;
    let mc = Memcg::from_status(&st).context("no memory cgroup in torpord's app status")?;
    let m = mc.snap();
    let mut why = Vec::new();
    let state = st.state.as_str().to_string();
    let frozen = st.frozen;
    if !frozen {
        why.push("not frozen".to_string());
    }
    if warm {
        // Everything in memory: no more than 1% of it (+ the limit) on swap.
        if m.swap > m.resident / 100 + limit {
            why.push(format!(
                "{} KiB on swap (warm must be all in memory)",
                m.swap >> 10
            ));
        }
        if state != "suspended" {
            why.push(format!(
                "state {state} (warm: suspended = frozen, not purged)"
            ));
        }
    } else {
        if m.resident > limit {
            why.push(format!(
                "memcg resident {} KiB (anon {} KiB, page cache {} KiB) > {} KiB",
                m.resident >> 10,
                m.anon >> 10,
                m.file >> 10,
                limit >> 10
            ));
        }
        let ra = st.memory.resident_anon_bytes;
        if ra > limit {
            why.push(format!(
                "resident anon (torpord) {} KiB > {} KiB",
                ra >> 10,
                limit >> 10
            ));
        }
        if state != "standby" {
            why.push(format!("state {state} (expected standby)"));
        }
    }
    let p = Proof {
        kind: if warm { "in" } else { "out" }.into(),
        ok: why.is_empty(),
        why: why.join("; "),
        memcg: m,
        torpord_memory: st.memory.clone(),
        state,
        frozen,
        attempts,
    };
    Ok((p, mc))
}

/// One trial: one timed Start of one mode.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Trial {
    /// Run order (all trials of the app).
    pub seq: usize,
    pub trial: usize,
    pub mode: String,
    /// The mode torpord says it ran (`timing.prefetch_mode` / `vm.effective`).
    pub effective_mode: String,
    pub load_before: (f64, f64, f64),
    pub load_after: (f64, f64, f64),
    pub proof: Option<Proof>,
    pub refused: bool,
    pub error: String,
    pub outcome: Option<Outcome>,
    /// Start request sent → torpord's answer, seconds.
    pub start_return_s: f64,
    pub start_answer: Value,
    pub stop_answer: Value,
    /// The answer of the Stop that ended this trial's timed Start's cycle, right after its
    /// workload: what *that* Start's recorder and background fetch did (`stop_answer` is the
    /// Stop before it, so it tells of the conditioning cycle's). Null without conditioning
    /// cycles (the next trial's first Stop is then its Stop before the proof) and for `warm`.
    #[serde(default)]
    pub timed_stop_answer: Value,
    /// Host `pswpin` × page size, Start request → first response / → end of the workload.
    pub swapin_first_bytes: u64,
    pub swapin_total_bytes: u64,
    /// The app memcg's major faults over the same intervals (torpord's own faults of the app's
    /// pages too; the app's own are `app_majflt_first`/`app_majflt_total` in its metrics).
    pub majflt_first: u64,
    pub majflt_total: u64,
    /// The O_DIRECT floor measured before this trial round: bytes and seconds.
    pub floor_bytes: u64,
    pub floor_s: Option<f64>,
    pub conditioning_s: f64,
    /// Active swap areas at the Stop before the timed Start (`/proc/swaps`: name, priority,
    /// used KiB): the kernel spreads allocations over areas of equal priority, so another at
    /// the benchmark's priority interleaves the purge's loading-set-first layout.
    #[serde(default)]
    pub swap_areas: Vec<String>,
}

impl Trial {
    fn ok(&self) -> bool {
        self.error.is_empty() && !self.refused && self.outcome.is_some()
    }
}

fn body_mode(mode: &str) -> Option<&str> {
    // warm's timed Start is a plain thaw; demand-stock's a thaw after the kernel's purge.
    Some(if mode == "warm" || mode == STOCK_MODE {
        "none"
    } else {
        mode
    })
}

/// torpord's Start answer, typed (`None`: not an answer of torpord's API).
fn start_answer(v: &Value) -> Option<StartAnswer> {
    serde_json::from_value(v.clone()).ok()
}

/// torpord's own time for a Start, either kind of answer.
fn torpord_total_s(v: &Value) -> Option<f64> {
    start_answer(v).map(|a| match a {
        StartAnswer::AlreadyRunning(r) => r.timing.total_s,
        StartAnswer::Started(s) => s.timing.total_s,
    })
}

/// The mode torpord reports for a Start answer (a VM's effective mode, else the process
/// prefetch mode; empty when the answer says none).
fn effective(ans: &Value) -> String {
    let Some(StartAnswer::Started(s)) = start_answer(ans) else {
        return String::new();
    };
    match s.vm {
        Some(VmStart::Resume(r)) => r.effective,
        Some(VmStart::Cold(c)) => c.mode,
        None => s.timing.prefetch_mode.unwrap_or_default(),
    }
}

fn page_size() -> u64 {
    procswap::sys::page_size()
}

fn pswpin() -> u64 {
    vm_e2e::mem::vmstat("pswpin").unwrap_or(0)
}

struct Ctx<'a> {
    o: &'a Opts,
    machine: &'a Machine,
    day: String,
}

/// Untimed Stop → Start(mode) → workload cycles (warm: in `full`, then settled), the Stop
/// before the timed Start, and the memory proven out (in, for warm) — one more cycle if not.
fn condition_and_prove(
    ctx: &Ctx,
    d: &mut Daemon,
    wl: &mut dyn Workload,
    mode: &str,
    trial: usize,
    tr: &mut Trial,
) -> Result<(Proof, Memcg)> {
    let o = ctx.o;
    let warm = mode == "warm";
    let cond_mode = if warm {
        "full"
    } else {
        body_mode(mode).unwrap_or(mode)
    };
    let cycles = if warm {
        o.condition.max(1)
    } else {
        o.condition
    };
    // The last trial's own Stop (see `Trial::timed_stop_answer`) is this one's first, when it
    // purged the same way and torpord has not been restarted since.
    let stopped = d.stopped_after_trial.take() == Some(d.stop_purge);
    for c in 0..cycles {
        if c > 0 || !stopped {
            d.stop_app().context("conditioning Stop")?;
        }
        d.start_app(Some(cond_mode)).context("conditioning Start")?;
        wl.run(&At::now(), 1_000_003 + (trial * 31 + c) as u64, &mut || {})
            .context("conditioning workload")?;
    }
    if warm {
        wl.settle(d).context("settle (warm)")?;
    }
    tr.swap_areas = swap_areas();
    wl.before_timed_stop().context("before the timed Stop")?;
    tr.stop_answer = d.stop_app()?;
    let (mut proof, mut mc) = prove(d, warm, o.max_resident, 1)?;
    if !proof.ok {
        // One more cycle in the same mode, then give up on this trial.
        eprintln!("activation: {} {mode} trial {trial}: memory not {} after Stop: {}; one more Stop/Start cycle", wl.name(), proof.kind, proof.why);
        // The clock starts before the Start: a workload that looks for the Start's readiness
        // probe among the app's commands (redis' MONITOR, opened before the Stop) finds it.
        let at = At::now();
        d.start_app(Some(cond_mode))?;
        wl.run(&at, 2_000_003 + trial as u64, &mut || {})?;
        if warm {
            wl.settle(d)?;
        }
        wl.before_timed_stop()?;
        tr.stop_answer = d.stop_app()?;
        (proof, mc) = prove(d, warm, o.max_resident, 2)?;
    }
    Ok((proof, mc))
}

/// The timed Start: the Start request and the app's first request at the same instant; swap-in
/// and major faults to the first response and to the end of the workload.
fn timed_start(
    d: &mut Daemon,
    wl: &mut dyn Workload,
    mode: &str,
    seed: u64,
    mc: &Memcg,
    tr: &mut Trial,
) -> Result<()> {
    let (sw0, mf0, own0) = (pswpin(), mc.snap().majflt, mc.procs_majflt());
    let at = At::now();
    let sock_d = (d.sock.clone(), d.app.clone());
    let body = body_mode(mode).map(|m| json!({ "prefetch": m }));
    let h = std::thread::spawn(move || {
        let r = vm_e2e::torpord::call(
            &sock_d.0,
            "POST",
            &format!("/v1/apps/{}/start", sock_d.1),
            body.as_ref(),
            Duration::from_secs(900),
        );
        (r, at.secs())
    });
    let mut first = None;
    let res = wl.run(&at, seed, &mut || {
        first = Some((pswpin(), mc.snap().majflt, mc.procs_majflt()))
    });
    let (ans, ret_s) = h
        .join()
        .map_err(|_| anyhow::anyhow!("Start thread panicked"))?;
    let (sw1, mf1, own1) = (pswpin(), mc.snap().majflt, mc.procs_majflt());
    tr.start_return_s = ret_s;
    match ans {
        Ok((200, v)) => {
            match start_answer(&v) {
                Some(StartAnswer::Started(s)) if !s.cold => {}
                Some(_) => tr.error = format!("Start was not a resume: {v}"),
                None => tr.error = format!("not a Start answer of torpord's API: {v}"),
            }
            tr.effective_mode = effective(&v);
            tr.start_answer = v;
        }
        Ok((st, v)) => {
            tr.error = format!("Start answered {st}: {v}");
            tr.start_answer = v;
        }
        Err(e) => tr.error = format!("Start request: {e:#}"),
    }
    let (swf, mff, ownf) = first.unwrap_or((sw1, mf1, own1));
    match res {
        Ok(mut out) => {
            ready_after_answer(&mut out, &tr.start_answer);
            // The app's own major faults (its processes' counters; the memcg's count below
            // includes torpord's faults charged to the app).
            out.metrics
                .insert("app_majflt_first".into(), ownf.saturating_sub(own0) as f64);
            out.metrics
                .insert("app_majflt_total".into(), own1.saturating_sub(own0) as f64);
            tr.outcome = Some(out);
        }
        Err(e) => {
            if tr.error.is_empty() {
                tr.error = format!("workload: {e:#}");
            }
        }
    }
    tr.swapin_first_bytes = swf.saturating_sub(sw0) * page_size();
    tr.swapin_total_bytes = sw1.saturating_sub(sw0) * page_size();
    tr.majflt_first = mff.saturating_sub(mf0);
    tr.majflt_total = mf1.saturating_sub(mf0);
    Ok(())
}

/// An app's answer time to the readiness probe (the workload's [`apps::APP_ANSWER_UNIX`])
/// becomes the time from it to torpord's `ready` (the Start answer's `timing.unix_time`), ms.
fn ready_after_answer(out: &mut Outcome, start: &Value) {
    let Some(answered) = out.metrics.remove(apps::APP_ANSWER_UNIX) else {
        return;
    };
    if let Some(StartAnswer::Started(s)) = start_answer(start) {
        out.metrics.insert(
            apps::READY_AFTER_ANSWER_MS.into(),
            (s.timing.unix_time - answered) * 1e3,
        );
    }
}

fn run_one(
    ctx: &Ctx,
    d: &mut Daemon,
    wl: &mut dyn Workload,
    mode: &str,
    trial: usize,
    seq: usize,
) -> Result<Trial> {
    let warm = mode == "warm";
    let mut tr = Trial {
        seq,
        trial,
        mode: mode.into(),
        load_before: loadavg(),
        ..Default::default()
    };
    d.switch(warm)?;
    let tc = Instant::now();
    let (proof, mc) = condition_and_prove(ctx, d, wl, mode, trial, &mut tr)?;
    tr.conditioning_s = tc.elapsed().as_secs_f64();
    let ok = proof.ok;
    tr.proof = Some(proof);
    let seed = trial as u64 + 1;
    if !ok {
        tr.refused = true;
        let at = At::now();
        d.start_app(body_mode(mode))?;
        wl.run(&at, seed, &mut || {})?;
    } else {
        timed_start(d, wl, mode, seed, &mc, &mut tr)?;
    }
    // Not after `warm`: torpord is restarted with its default configuration next, and the
    // next trial's conditioning stops the app with it, as before this Stop existed (the app
    // thawed by `warm` is running, not frozen unpurged by the warm torpord).
    if ctx.o.condition > 0 && !warm {
        tr.timed_stop_answer = d.stop_app().context("the Stop after the timed Start")?;
        d.stopped_after_trial = Some(d.stop_purge);
    }
    if warm {
        d.switch(false)?;
    }
    tr.load_after = loadavg();
    Ok(tr)
}

/// `/proc/swaps` now: "name prio P used U KiB" per active area.
fn swap_areas() -> Vec<String> {
    crate::machine::SwapArea::all()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            format!(
                "{} prio {} used {} KiB",
                a.path.display(),
                a.priority,
                a.used_kib
            )
        })
        .collect()
}

fn mib(b: f64) -> f64 {
    b / MIB as f64
}

fn fmt_load(l: (f64, f64, f64)) -> String {
    format!("{:.2}", l.0)
}

/// Median, min and max of some trials (also read back from the JSON).
pub use stats::Spread;

/// Per-mode medians.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeSummary {
    pub mode: String,
    pub ok: usize,
    pub refused: usize,
    pub failed: usize,
    pub first_response: Option<Spread>,
    pub start_return: Option<Spread>,
    pub torpord_total: Option<Spread>,
    pub swapin_first_mib: Option<Spread>,
    pub swapin_total_mib: Option<Spread>,
    pub majflt_first: Option<Spread>,
    pub majflt_total: Option<Spread>,
    pub metrics: BTreeMap<String, Spread>,
    /// Median of each second of the per-second series.
    pub series_median: Vec<f64>,
    pub effective_modes: Vec<String>,
}

fn summarize(trials: &[Trial], mode: &str) -> ModeSummary {
    let ts: Vec<&Trial> = trials.iter().filter(|t| t.mode == mode).collect();
    let ok: Vec<&&Trial> = ts.iter().filter(|t| t.ok()).collect();
    let col = |f: &dyn Fn(&Trial) -> Option<f64>| {
        Spread::of(&ok.iter().filter_map(|t| f(t)).collect::<Vec<_>>())
    };
    let mut metrics = BTreeMap::new();
    let keys: std::collections::BTreeSet<String> = ok
        .iter()
        .filter_map(|t| t.outcome.as_ref())
        .flat_map(|o| o.metrics.keys().cloned())
        .collect();
    for k in keys {
        if let Some(s) = col(&|t| t.outcome.as_ref().and_then(|o| o.metrics.get(&k).copied())) {
            metrics.insert(k, s);
        }
    }
    let n = ok
        .iter()
        .filter_map(|t| t.outcome.as_ref().map(|o| o.series.len()))
        .max()
        .unwrap_or(0);
    let series_median = (0..n)
        .map(|i| {
            Spread::of(
                &ok.iter()
                    .filter_map(|t| t.outcome.as_ref().and_then(|o| o.series.get(i).copied()))
                    .collect::<Vec<_>>(),
            )
            .map(|s| s.median)
            .unwrap_or(f64::NAN)
        })
        .collect();
    let mut eff: Vec<String> = ts
        .iter()
        .map(|t| t.effective_mode.clone())
        .filter(|e| !e.is_empty())
        .collect();
    eff.sort();
    eff.dedup();
    ModeSummary {
        mode: mode.into(),
        ok: ok.len(),
        refused: ts.iter().filter(|t| t.refused).count(),
        failed: ts.iter().filter(|t| !t.error.is_empty()).count(),
        first_response: col(&|t| t.outcome.as_ref().map(|o| o.first_response_s)),
        start_return: col(&|t| Some(t.start_return_s)),
        torpord_total: col(&|t| torpord_total_s(&t.start_answer)),
        swapin_first_mib: col(&|t| Some(mib(t.swapin_first_bytes as f64))),
        swapin_total_mib: col(&|t| Some(mib(t.swapin_total_bytes as f64))),
        majflt_first: col(&|t| Some(t.majflt_first as f64)),
        majflt_total: col(&|t| Some(t.majflt_total as f64)),
        metrics,
        series_median,
        effective_modes: eff,
    }
}

/// The whole result of one app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppResult {
    pub schema: String,
    pub app: String,
    pub date: String,
    pub quick: bool,
    /// Added to the file names (`ACTIVATION_TAG`).
    #[serde(default)]
    pub tag: String,
    pub machine: Value,
    /// The machine table rows of the results file.
    pub machine_md: String,
    pub load_start: (f64, f64, f64),
    pub load_end: (f64, f64, f64),
    pub seconds: f64,
    pub torpord: Value,
    pub config_default: String,
    pub config_warm: String,
    pub modes: Vec<String>,
    pub default_mode: String,
    pub demand_mode: String,
    pub condition: usize,
    pub max_resident_bytes: u64,
    pub app_info: Value,
    pub description: String,
    pub trials: Vec<Trial>,
    pub summary: Vec<ModeSummary>,
    pub check: String,
    pub error: String,
    /// App-specific summary columns: (metric key, label, higher is better).
    #[serde(default)]
    pub columns: Vec<(String, String, bool)>,
}

fn git(args: &[&str]) -> String {
    std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR")])
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn make_workload(o: &Opts, app: &str, work: &Path) -> Result<Box<dyn Workload>> {
    Ok(match app {
        "tomcat" => Box::new(apps::Tomcat::new(work, None)?),
        "tomcat-256" => Box::new(apps::Tomcat::new(work, Some(o.tomcat_app_mib))?),
        "redis" => Box::new(apps::Redis::new(work, o.redis_mib, o.redis_gets)?),
        "postgres" => Box::new(postgres::Postgres::new(work, o.pg_scale, o.pg_sb_mib, 10)?),
        "child-touch" => Box::new(apps::Child::new(&o.bin_dir, o.child_mib, true)?),
        "child-null" => Box::new(apps::Child::new(&o.bin_dir, o.child_mib, false)?),
        "vm" => Box::new(apps::Vm::new(o)?),
        _ => bail!("unknown app {app}"),
    })
}

fn run_app(ctx: &Ctx, app: &str, floor: &mut Option<FloorFile>) -> Result<AppResult> {
    let o = ctx.o;
    let t_app = Instant::now();
    let work = o.work.join(app);
    std::fs::create_dir_all(&work)?;
    let mut wl = make_workload(o, app, &work)?;
    let accepted = daemon::accepted_modes(&o.torpord, &work, wl.is_vm())?;
    let modes = select_modes(o, &accepted, wl.is_vm())?;
    let mut d = Daemon::new(
        &o.torpord,
        &work.join("torpord"),
        &wl.name(),
        &wl.app_toml(),
    )?;
    let mut res = new_result(ctx, app, &d, wl.as_ref(), &modes, &accepted)?;
    eprintln!(
        "activation: {app}: modes {modes:?} (torpord accepts {accepted:?}), {} trials, work dir {}",
        o.trials,
        work.display()
    );
    let r = (|| -> Result<()> {
        prepare(&mut d, wl.as_mut(), &mut res)?;
        let mut seq = 0;
        for t in 0..o.trials {
            let (floor_bytes, floor_s) = round_floor(ctx, app, floor)?;
            let fresh_s = fresh_floor(ctx, app)?;
            for k in 0..modes.len() {
                let mode = &modes[(t + k) % modes.len()];
                // demand-stock: every Stop of the trial is the kernel's purge.
                d.stop_purge = (mode == STOCK_MODE).then_some(PurgeMethod::Kernel);
                let one = run_one(ctx, &mut d, wl.as_mut(), mode, t, seq);
                d.stop_purge = None;
                let mut tr = match one {
                    Ok(tr) => tr,
                    Err(e) => {
                        res.trials
                            .push(failed_trial(&mut d, app, mode, t, seq, &e)?);
                        seq += 1;
                        continue;
                    }
                };
                tr.floor_bytes = floor_bytes;
                tr.floor_s = floor_s;
                if app == "child-touch" {
                    // Touch-all against the I/O floor of the same number of bytes (this round's).
                    if let (Some(out), Some(f)) = (tr.outcome.as_mut(), floor_s) {
                        out.metrics
                            .insert("floor_ratio".into(), out.first_response_s / f);
                    }
                    // And against a file written just before (see fresh_floor).
                    if let (Some(out), Some(f)) = (tr.outcome.as_mut(), fresh_s) {
                        out.metrics.insert("fresh_floor_s".into(), f);
                        out.metrics
                            .insert("fresh_floor_ratio".into(), out.first_response_s / f);
                    }
                }
                log_trial(app, t, mode, &tr);
                res.trials.push(tr);
                seq += 1;
            }
        }
        // The last trial ended with a Stop: the check talks to the app, so it runs again.
        if d.stopped_after_trial.take().is_some() {
            d.start_app(None).context("Start for the final check")?;
        }
        res.check = wl.check(&d).unwrap_or_else(|e| format!("FAILED: {e:#}"));
        Ok(())
    })();
    if let Err(e) = r {
        res.error = format!("{e:#}");
        eprintln!(
            "activation: {app}: FAILED: {}\n{}",
            res.error,
            d.log_tail(15)
        );
    }
    d.cleanup();
    res.load_end = loadavg();
    res.seconds = t_app.elapsed().as_secs_f64();
    res.summary = modes.iter().map(|m| summarize(&res.trials, m)).collect();
    let _ = std::fs::remove_dir_all(&work);
    Ok(res)
}

/// The modes to measure: the chosen ones (each must be one torpord accepts, or `warm`, or
/// `demand-stock` for a process app whose torpord has `none`), or warm plus every mode torpord
/// accepts plus `demand-stock`.
fn select_modes(o: &Opts, accepted: &[String], vm: bool) -> Result<Vec<String>> {
    let stock = !vm && accepted.iter().any(|a| a == "none");
    let mut modes = match &o.modes {
        Some(m) => m.clone(),
        None => std::iter::once("warm".to_string())
            .chain(accepted.iter().cloned())
            .chain(stock.then(|| STOCK_MODE.to_string()))
            .collect(),
    };
    modes.dedup();
    for m in &modes {
        ensure!(
            m == "warm" || (m == STOCK_MODE && stock) || accepted.iter().any(|a| a == m),
            "mode {m:?} is not one torpord accepts for this app ({}{})",
            accepted.join(", "),
            if stock { ", demand-stock" } else { "" }
        );
    }
    Ok(modes)
}

/// An app's result before any trial: setup, configuration, modes.
fn new_result(
    ctx: &Ctx,
    app: &str,
    d: &Daemon,
    wl: &dyn Workload,
    modes: &[String],
    accepted: &[String],
) -> Result<AppResult> {
    let o = ctx.o;
    let demand_mode = if accepted.iter().any(|m| m == "none") {
        "none".to_string()
    } else {
        String::new()
    };
    Ok(AppResult {
        schema: "torpor-activation/1".into(),
        app: app.into(),
        date: now_date(),
        quick: o.quick,
        tag: o.tag.clone(),
        machine: serde_json::to_value(ctx.machine)?,
        machine_md: ctx.machine.markdown_rows(),
        load_start: loadavg(),
        load_end: (0.0, 0.0, 0.0),
        seconds: 0.0,
        torpord: json!({"binary": o.torpord.display().to_string(), "accepted_modes": accepted,
            "repo_commit": git(&["rev-parse", "HEAD"]), "repo_dirty_paths": git(&["status", "--porcelain", "--", "local-controller", "procswap"]),
            "source": std::env::var("ACTIVATION_SOURCE").unwrap_or_default()}),
        config_default: d.config_text(false),
        config_warm: d.config_text(true),
        modes: modes.to_vec(),
        default_mode: String::new(),
        demand_mode,
        condition: o.condition,
        max_resident_bytes: o.max_resident,
        app_info: Value::Null,
        description: String::new(),
        trials: Vec::new(),
        summary: Vec::new(),
        check: String::new(),
        error: String::new(),
        columns: wl
            .columns()
            .into_iter()
            .map(|c| (c.key.to_string(), c.label.to_string(), c.higher_better))
            .collect(),
    })
}

/// torpord started, the app cold-started and set up, and one untimed cycle with an empty
/// Start body (which mode is the default).
fn prepare(d: &mut Daemon, wl: &mut dyn Workload, res: &mut AppResult) -> Result<()> {
    let app = res.app.clone();
    d.start(false)?;
    let t = Instant::now();
    let cold = d.start_app(None).context("cold start")?;
    eprintln!(
        "activation: {app}: cold start by torpord in {:.2} s; setting up",
        t.elapsed().as_secs_f64()
    );
    res.app_info = wl.setup(d).context("setup")?;
    res.app_info["cold_start_torpord_s"] = json!(torpord_total_s(&cold));
    res.description = wl.describe();
    d.stop_app()?;
    let ans = d.start_app(None)?;
    res.default_mode = effective(&ans);
    wl.run(&At::now(), 999, &mut || {})?;
    eprintln!("activation: {app}: default mode {:?}", res.default_mode);
    Ok(())
}

/// This trial round's O_DIRECT floor (1 GiB for touch-all, else 256 MiB): bytes and seconds.
fn round_floor(ctx: &Ctx, app: &str, floor: &mut Option<FloorFile>) -> Result<(u64, Option<f64>)> {
    let floor_bytes = if app == "child-touch" {
        ctx.o.child_mib * MIB
    } else {
        256 * MIB
    };
    if floor.as_ref().map(|f| f.bytes) != Some(floor_bytes) {
        *floor = Some(FloorFile::create(&floor_dir(ctx), floor_bytes)?);
    }
    let floor_s = floor
        .as_ref()
        .map(|f| f.read_direct(DEFAULT_BLOCK))
        .transpose()?;
    Ok((floor_bytes, floor_s))
}

/// Where floor files go: beside the swap file (the same file system), else /var/tmp.
fn floor_dir(ctx: &Ctx) -> PathBuf {
    ctx.machine
        .swap
        .as_ref()
        .and_then(|s| s.path.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// Touch-all only: the O_DIRECT floor of a file written (and fsynced) right before it is read,
/// as a Stop writes the swap slots a Start reads. [`round_floor`] re-reads one file every
/// round, and in session 6's quiet run a re-read got faster round after round (1.15, 0.71,
/// 0.57 s per GiB while `full` stayed at 1.15-1.24 s); a host cache was suspected. Session 7's
/// quiet run measured both side by side: fresh 0.567-0.590 s, re-read 0.565-0.582 s — no cache
/// effect there. Recorded beside the re-read floor (`fresh_floor_s`, `fresh_floor_ratio` in
/// the app metrics), not instead of it: the acceptance line keeps the re-read floor.
fn fresh_floor(ctx: &Ctx, app: &str) -> Result<Option<f64>> {
    if app != "child-touch" {
        return Ok(None);
    }
    let dir = floor_dir(ctx);
    // Its own directory: a FloorFile's name is the pid and size, the same as the round's.
    let dir = dir.join(format!("torpor-bench-fresh-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let secs =
        FloorFile::create(&dir, ctx.o.child_mib * MIB).and_then(|f| f.read_direct(DEFAULT_BLOCK));
    let _ = std::fs::remove_dir_all(&dir);
    secs.map(Some)
}

/// A trial that failed with `e`: recorded, and the app brought back to running with the
/// default configuration (or an error: give up).
fn failed_trial(
    d: &mut Daemon,
    app: &str,
    mode: &str,
    t: usize,
    seq: usize,
    e: &anyhow::Error,
) -> Result<Trial> {
    let tr = Trial {
        seq,
        trial: t,
        mode: mode.into(),
        error: format!("{e:#}"),
        load_after: loadavg(),
        ..Default::default()
    };
    eprintln!(
        "activation: {app} trial {t} {mode}: FAILED: {e:#}\n{}",
        d.log_tail(8)
    );
    d.stopped_after_trial = None;
    d.switch(false).ok();
    if d.app_status().ok().map(|s| s.state) != Some(AppState::Running) {
        d.start_app(None)
            .context("recovering after a failed trial")?;
    }
    Ok(tr)
}

/// The trial's lines in the log.
fn log_trial(app: &str, t: usize, mode: &str, tr: &Trial) {
    let p = tr.proof.clone().unwrap_or_default();
    let line = match &tr.outcome {
        Some(out) if tr.error.is_empty() => format!(
            "first response {:.3} s, Start answered {:.3} s (torpord total {:.3} s), swap-in {:.1}/{:.1} MiB, majflt {}/{}{}",
            out.first_response_s,
            tr.start_return_s,
            torpord_total_s(&tr.start_answer).unwrap_or(f64::NAN),
            mib(tr.swapin_first_bytes as f64),
            mib(tr.swapin_total_bytes as f64),
            tr.majflt_first,
            tr.majflt_total,
            out.metrics.iter().map(|(k, v)| format!(", {k} {}", num(*v))).collect::<String>()
        ),
        _ if tr.refused => "REFUSED (memory not proven)".into(),
        _ => format!("FAILED: {}", tr.error),
    };
    eprintln!(
        "activation: {app} trial {t} {mode:<17} memory {} ({}): memcg resident {} KiB, swap {} MiB, torpord resident {} KiB | {line} | load {:.2}->{:.2}",
        p.kind,
        if p.ok { "proven" } else { "NOT proven" },
        p.memcg.resident >> 10,
        p.memcg.swap >> 20,
        p.torpord_memory.resident_bytes >> 10,
        tr.load_before.0,
        tr.load_after.0
    );
    eprintln!(
        "activation: {app} trial {t} {mode}: Start activation {} | Stop activation {} | swap areas: {}",
        start_answer(&tr.start_answer)
            .and_then(|a| a.started().and_then(|s| s.timing.activation.clone()))
            .map(|a| json!(a))
            .unwrap_or_default(),
        json!(stop_activation(&tr.stop_answer)),
        tr.swap_areas.join(", ")
    );
    let after = stop_activation(&tr.timed_stop_answer);
    if !after.is_empty() {
        eprintln!(
            "activation: {app} trial {t} {mode}: the timed Start's activation (its Stop's answer): {}",
            json!(after)
        );
    }
}

/// The activation notes of a Stop answer (the recorders and the background fetch of the Start
/// it ended); none for another answer.
fn stop_activation(stop: &Value) -> Vec<String> {
    match serde_json::from_value::<StopAnswer>(stop.clone()) {
        Ok(StopAnswer::Process(p)) => p.activation,
        _ => Vec::new(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn cell(s: &Option<Spread>, prec: usize) -> String {
    match s {
        Some(s) => format!("{:.p$} ({:.p$}–{:.p$})", s.median, s.min, s.max, p = prec),
        None => "–".into(),
    }
}

/// A number with as many decimals as its size calls for.
fn num(v: f64) -> String {
    match v.abs() {
        m if m >= 100.0 => format!("{v:.0}"),
        m if m >= 10.0 => format!("{v:.1}"),
        m if m >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

/// A cell with as many decimals as the size of the numbers calls for.
fn cell_auto(s: &Option<Spread>) -> String {
    let prec = match s.map(|x| x.median.abs()) {
        Some(m) if m >= 100.0 => 0,
        Some(m) if m >= 10.0 => 1,
        Some(m) if m >= 1.0 => 2,
        _ => 3,
    };
    cell(s, prec)
}

fn mode_label(r: &AppResult, m: &str) -> String {
    let mut s = match m {
        "warm" => "warm (never purged, thaw only)".to_string(),
        x if x == r.demand_mode => format!("{x} (demand paging after torpor's ordered purge)"),
        STOCK_MODE => format!("{STOCK_MODE} (stock demand paging: the kernel's purge, thaw)"),
        x => x.to_string(),
    };
    if m == r.default_mode {
        s += " **default**";
    }
    s
}

/// The files of one app's result.
fn paths(out: &Path, r: &AppResult) -> (PathBuf, PathBuf, PathBuf) {
    let tag = if r.tag.is_empty() {
        String::new()
    } else {
        format!("-{}", r.tag)
    };
    let base = format!(
        "{}-{}{tag}{}",
        &r.date[..10.min(r.date.len())],
        r.app,
        if r.quick { "-quick" } else { "" }
    );
    (
        out.join(format!("{base}.md")),
        out.join(format!("{base}.json")),
        out.join(format!("{base}.png")),
    )
}

/// The demand-paging baselines of a result, (mode, label): torpord's `none` after torpor's
/// ordered purge, and `demand-stock` (the kernel's purge) when it was measured — results from
/// before it have only the first.
fn baselines(r: &AppResult) -> Vec<(&str, &'static str)> {
    let mut v = Vec::new();
    if !r.demand_mode.is_empty() {
        v.push((r.demand_mode.as_str(), "demand paging (ordered purge)"));
    }
    if r.summary.iter().any(|s| s.mode == STOCK_MODE) {
        v.push((STOCK_MODE, "stock demand paging (kernel purge)"));
    }
    v
}

fn median_of(r: &AppResult, mode: &str, f: &dyn Fn(&ModeSummary) -> Option<f64>) -> Option<f64> {
    r.summary.iter().find(|s| s.mode == mode).and_then(f)
}

fn fr(s: &ModeSummary) -> Option<f64> {
    s.first_response.map(|x| x.median)
}

/// Issue 12's acceptance lines for this app, evaluated for the default mode (informational:
/// the benchmark prints, it does not assert).
/// Tomcat's warm-relative lines: first response `a` vs warm `w` (3× warm, or warm + the bytes
/// the first response needed ÷ the floor bandwidth + 10 ms).
fn acceptance_tomcat(r: &AppResult, a: f64, w: f64) -> Vec<String> {
    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let m = |mode: &str, f: &dyn Fn(&ModeSummary) -> Option<f64>| median_of(r, mode, f);
    let mut v = Vec::new();
    v.push(format!(
        "first response ≤ 3× warm: {:.2}× ({:.3} vs {:.3} s) — {}",
        a / w,
        a,
        w,
        met(a <= 3.0 * w)
    ));
    let need = m(&r.demand_mode, &|s| s.swapin_first_mib.map(|x| x.median));
    let floor: Vec<f64> = r
        .trials
        .iter()
        .filter_map(|t| t.floor_s.map(|s| t.floor_bytes as f64 / s))
        .collect();
    if let (Some(need), Some(bw)) = (need, Spread::of(&floor)) {
        let bound = w + need * MIB as f64 / bw.median + 0.010;
        v.push(format!(
            "first response ≤ warm + bytes the first response needed ÷ floor bandwidth + 10 ms = {:.3} + {:.1} MiB ÷ {:.0} MiB/s + 0.010 = {:.3} s: {:.3} s — {}",
            w,
            need,
            bw.median / MIB as f64,
            bound,
            a,
            met(a <= bound.max(3.0 * w))
        ));
    }
    v
}

fn acceptance(r: &AppResult) -> Vec<String> {
    let d = r.default_mode.as_str();
    let mut v = Vec::new();
    if d.is_empty() {
        return v;
    }
    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let m = |mode: &str, f: &dyn Fn(&ModeSummary) -> Option<f64>| median_of(r, mode, f);
    let metric = |k: &'static str| move |s: &ModeSummary| s.metrics.get(k).map(|x| x.median);
    let (fd, fw) = (m(d, &fr), m("warm", &fr));
    for (bm, bl) in baselines(r) {
        let Some((a, b)) = fd.zip(m(bm, &fr)) else {
            continue;
        };
        if matches!(r.app.as_str(), "tomcat" | "vm") {
            v.push(format!(
                "first response ≤ 0.5× {bl}: {:.2}× — {}",
                a / b,
                met(a <= 0.5 * b)
            ));
        }
        v.push(format!(
            "first response never worse than 1.1× {bl}: {:.2}× — {}",
            a / b,
            met(a <= 1.1 * b)
        ));
    }
    if r.app == "tomcat" {
        if let (Some(a), Some(w)) = (fd, fw) {
            v.extend(acceptance_tomcat(r, a, w));
        }
    }
    if r.app == "postgres" {
        if let (Some(a), Some(w)) = (
            m(d, &metric("tps_window")),
            m("warm", &metric("tps_window")),
        ) {
            v.push(format!(
                "TPS over the first 10 s ≥ 0.8× warm: {:.2}× ({a:.0} vs {w:.0}) — {}",
                a / w,
                met(a >= 0.8 * w)
            ));
        }
    }
    for (bm, bl) in baselines(r).into_iter().filter(|_| r.app == "redis") {
        if let (Some(a), Some(b)) = (m(d, &metric("gets_done_s")), m(bm, &metric("gets_done_s"))) {
            v.push(format!(
                "200k GETs done ≤ 0.8× {bl}: {:.2}× ({a:.2} vs {b:.2} s) — {}",
                a / b,
                met(a <= 0.8 * b)
            ));
        }
    }
    if r.app == "child-touch" {
        let floor: Vec<f64> = r.trials.iter().filter_map(|t| t.floor_s).collect();
        if let (Some(a), Some(f)) = (fd, Spread::of(&floor)) {
            v.push(format!(
                "touch-all ≤ 1.1× the O_DIRECT floor: {:.2}× ({a:.3} vs {:.3} s) — {}",
                a / f.median,
                f.median,
                met(a <= 1.1 * f.median)
            ));
        }
    }
    let worst = r
        .trials
        .iter()
        // torpor's purge only: `demand-stock` is the kernel's (the baseline), whose leftovers
        // are the kernel's choice and are shown in its row, not held against torpor.
        .filter(|t| t.mode != "warm" && t.mode != STOCK_MODE)
        .filter_map(|t| t.proof.as_ref().filter(|p| p.ok))
        .map(|p| p.memcg.resident)
        .max();
    if let Some(w) = worst {
        v.push(format!("a suspended app keeps ≤ 3 MiB resident (memcg anon + page cache after torpor's Stop, worst of its purged trials): {:.2} MiB — {}", mib(w as f64), met(w <= 3 * MIB)));
    }
    v
}

fn write_md(r: &AppResult, png: &Path) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Activation: {} — {}{}\n",
        r.app,
        r.date,
        if r.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(o, "Issue 12's acceptance benchmark (`make bench-activation`, `torpor-bench activation`, bench/src/activation.rs).\n");
    let _ = writeln!(o, "{}\n", r.description);
    let _ = writeln!(
        o,
        "Every trial: the app was running; `{}` untimed Stop → Start(mode) → workload cycle(s) in the trial's mode (other random requests), so what \
         torpord records at Stop comes from that mode's own history; Stop; the memory **proven out** (the app's memcg: anon + page cache resident \
         ≤ {} KiB, torpord's resident anon too; state standby) — for `warm` proven **in** (swap ≤ 1% of resident + that limit; state suspended) — \
         else the trial is refused; then the Start request and the app's first request go out at the same instant. Times are the client's own; \
         \"Start answered\" is torpord's answer arriving, `total_s` torpord's own breakdown total. Swap-in = host `pswpin` delta × page size \
         (host-wide: other work on this shared machine can add to it); major faults = the app memcg's (every swap-in read charged to the app, torpord's own \
         `process_vm_readv` faults of copy-on-write pages among them); `app_majflt_first`/`_total` in the app metrics = the app's processes' own. Modes rotate per trial (round-robin, the \
         first mode shifting by one each trial). After the workload the app is stopped at once, except after `warm` (that Stop's answer is the timed Start's own \
         report, below the trials; the next trial's conditioning starts from it unless torpord is restarted or the purge differs). \
         Ratios are of medians of this run.\n",
        r.condition,
        r.max_resident_bytes >> 10
    );
    if !r.error.is_empty() {
        let _ = writeln!(o, "**The run failed**: {}\n", r.error);
    }
    md_setup(&mut o, r);
    md_results(&mut o, r);
    md_tps(&mut o, r);
    let acc = acceptance(r);
    if !acc.is_empty() {
        let _ = writeln!(o, "\n## Issue 12's acceptance, for the default mode `{}` (informational: printed, not asserted)\n", r.default_mode);
        for a in acc {
            let _ = writeln!(o, "- {a}");
        }
    }
    let _ = writeln!(
        o,
        "\n![first response per mode]({})\n",
        png.file_name().unwrap_or_default().to_string_lossy()
    );
    let _ = writeln!(o, "## Trials (run order)\n");
    let _ = writeln!(o, "| # | trial | mode | load before → after | memory before Start (memcg resident / swap, torpord resident) | first response s | Start answered s | torpord breakdown | swap-in MiB (first / total) | major faults (first / total) | app metrics | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|");
    for t in &r.trials {
        let _ = writeln!(o, "{}", md_trial_row(t));
    }
    let fetches: Vec<(&Trial, String)> = r
        .trials
        .iter()
        .flat_map(|t| {
            stop_activation(&t.timed_stop_answer)
                .into_iter()
                .filter(|n| n.starts_with("background fetch"))
                .map(move |n| (t, n))
        })
        .collect();
    if !fetches.is_empty() {
        let _ = writeln!(o, "\nEach timed Start's background fetch, as the Stop that ended its cycle (right after the workload) reported it:\n\n| # | mode | background fetch |\n|---|---|---|");
        for (t, n) in fetches {
            let _ = writeln!(o, "| {} | {} | {} |", t.seq, t.mode, n.replace('|', "/"));
        }
    }
    o
}

/// The 1-min load averages read before and after each trial (0: not read), as a spread.
fn trial_loads(r: &AppResult) -> Option<Spread> {
    let loads: Vec<f64> = r
        .trials
        .iter()
        .flat_map(|t| [t.load_before.0, t.load_after.0])
        .filter(|x| *x > 0.0)
        .collect();
    Spread::of(&loads)
}

/// Trials per mode (trials are numbered from 0).
fn trials_per_mode(r: &AppResult) -> usize {
    r.trials.iter().map(|t| t.trial).max().map_or(0, |x| x + 1)
}

/// The results file's setup table and torpord's configuration.
fn md_setup(o: &mut String, r: &AppResult) {
    let _ = writeln!(o, "## Setup\n\n| | |\n|---|---|");
    o.push_str(&r.machine_md);
    let _ = writeln!(o, "| date | {} |", r.date);
    let lr = trial_loads(r)
        .map(|s| {
            format!(
                "{:.2}–{:.2} (1-min, before/after each trial; median {:.2})",
                s.min, s.max, s.median
            )
        })
        .unwrap_or_default();
    let _ = writeln!(o, "| load average | at start {:.2} / {:.2} / {:.2}, at end {:.2} / {:.2} / {:.2}; trials {lr} |", r.load_start.0, r.load_start.1, r.load_start.2, r.load_end.0, r.load_end.1, r.load_end.2);
    let _ = writeln!(o, "{}", md_torpord_row(r));
    let _ = writeln!(
        o,
        "| modes | {} (torpord accepts: {}); default (Start without a body): `{}` |",
        r.modes.join(", "),
        r.torpord["accepted_modes"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        r.default_mode
    );
    let _ = writeln!(
        o,
        "| trials | {} per mode{}; run took {:.0} s |",
        trials_per_mode(r),
        if r.quick { " (quick)" } else { "" },
        r.seconds
    );
    let _ = writeln!(
        o,
        "| app | `{}` |",
        r.app_info.to_string().replace('|', "\\|")
    );
    if !r.check.is_empty() {
        let _ = writeln!(o, "| data check after the last trial | {} |", r.check);
    }
    let _ = writeln!(o, "\ntorpord's configuration (default; `warm` adds `purge = \"never\"`, torpord restarted around each warm trial and adopting the same app process):\n\n```toml\n{}```\n", r.config_default);
}

/// The setup table's torpord row: binary, repository commit, source, uncommitted changes.
fn md_torpord_row(r: &AppResult) -> String {
    format!(
        "| torpord | `{}`; repository at `{}`{}{} |",
        r.torpord["binary"].as_str().unwrap_or("?"),
        r.torpord["repo_commit"].as_str().unwrap_or("?"),
        {
            let src = r.torpord["source"].as_str().unwrap_or("");
            if src.is_empty() {
                String::new()
            } else {
                format!("; built from: {src}")
            }
        },
        {
            let dirty = r.torpord["repo_dirty_paths"].as_str().unwrap_or("");
            if dirty.is_empty() {
                String::new()
            } else {
                format!(
                    " (uncommitted changes in local-controller/procswap: `{}`)",
                    dirty.replace('\n', "; ")
                )
            }
        }
    )
}

/// The results table: one row per mode, medians and ratios.
fn md_results(o: &mut String, r: &AppResult) {
    let cols = &r.columns;
    let _ = writeln!(o, "## Results (medians of the trials, min–max)\n");
    let base = |m: &str| median_of(r, m, &fr);
    let bases = baselines(r);
    let w = base("warm");
    let dms: Vec<Option<f64>> = bases.iter().map(|(m, _)| base(m)).collect();
    let times: String = bases.iter().map(|(_, l)| format!(" × {l} |")).collect();
    let dashes = "---|".repeat(bases.len());
    let mut head = format!("| mode | ok / refused / failed | first response, s | × warm |{times} Start answered, s | torpord total_s | swap-in to first response, MiB | major faults to first response (the memcg's: torpord's own faults of the app's pages too) | swap-in total, MiB | major faults total (the memcg's) |");
    let mut sep = format!("|---|---|---|---|{dashes}---|---|---|---|---|---|");
    for (_, label, _) in cols {
        head += &format!(" {label} | × warm |{times}");
        sep += &format!("---|---|{dashes}");
    }
    let _ = writeln!(o, "{head}\n{sep}");
    for s in &r.summary {
        let f = s.first_response.map(|x| x.median);
        let vs_dm: String = dms.iter().map(|b| format!(" {} |", ratio(f, *b))).collect();
        let mut row = format!(
            "| {}{} | {} / {} / {} | {} | {} |{vs_dm} {} | {} | {} | {} | {} | {} |",
            mode_label(r, &s.mode),
            if s.effective_modes
                .iter()
                .any(|e| e != &s.mode && s.mode != "warm")
            {
                format!(" (torpord ran: {})", s.effective_modes.join(", "))
            } else {
                String::new()
            },
            s.ok,
            s.refused,
            s.failed,
            cell(&s.first_response, 3),
            ratio(f, w),
            cell(&s.start_return, 3),
            cell(&s.torpord_total, 3),
            cell(&s.swapin_first_mib, 1),
            cell(&s.majflt_first, 0),
            cell(&s.swapin_total_mib, 1),
            cell(&s.majflt_total, 0)
        );
        for (k, _, _) in cols {
            let v = s.metrics.get(k).copied();
            let of = |m: &str| median_of(r, m, &|x| x.metrics.get(k).map(|y| y.median));
            let vm = v.map(|x| x.median);
            let vs_dm: String = bases
                .iter()
                .map(|(m, _)| format!(" {} |", ratio(vm, of(m))))
                .collect();
            row += &format!(" {} | {} |{vs_dm}", cell_auto(&v), ratio(vm, of("warm")));
        }
        let _ = writeln!(o, "{row}");
    }
}

/// Transactions per second after the Start request, per mode (apps with a series).
fn md_tps(o: &mut String, r: &AppResult) {
    if r.summary.iter().any(|s| !s.series_median.is_empty()) {
        let n = r
            .summary
            .iter()
            .map(|s| s.series_median.len())
            .max()
            .unwrap_or(0);
        let _ = writeln!(o, "\nTransactions per second after the Start request (median of the trials, per second):\n");
        let _ = writeln!(
            o,
            "| mode | {} |\n|---|{}",
            (0..n)
                .map(|i| format!("{i}–{} s", i + 1))
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(n)
        );
        for s in &r.summary {
            let _ = writeln!(
                o,
                "| {} | {} |",
                mode_label(r, &s.mode),
                s.series_median
                    .iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
    }
}

/// One row of the trials table.
fn md_trial_row(t: &Trial) -> String {
    let p = t.proof.clone().unwrap_or_default();
    let mem = if t.proof.is_some() {
        format!(
            "{} {}: {:.2} / {:.1} MiB, {:.1} MiB{}",
            p.kind,
            if p.ok { "proven" } else { "**not proven**" },
            mib(p.memcg.resident as f64),
            mib(p.memcg.swap as f64),
            mib(p.torpord_memory.resident_bytes as f64),
            if p.ok {
                String::new()
            } else {
                format!(" ({})", p.why)
            }
        ) + if p.attempts > 1 {
            " — the first Stop did not get it out: one more Stop/Start cycle"
        } else {
            ""
        }
    } else {
        "–".into()
    };
    let bd = breakdown(&t.start_answer);
    let (first, metrics, note) = match &t.outcome {
        Some(out) => (
            format!("{:.3}", out.first_response_s),
            out.metrics
                .iter()
                .map(|(k, v)| format!("{k} {}", num(*v)))
                .collect::<Vec<_>>()
                .join(", "),
            out.note.clone(),
        ),
        None => ("–".into(), String::new(), String::new()),
    };
    let note = [
        note,
        if t.refused {
            "REFUSED".into()
        } else {
            String::new()
        },
        t.error.clone(),
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join("; ");
    format!(
        "| {} | {} | {}{} | {} → {} | {} | {} | {:.3} | {} | {:.1} / {:.1} | {} / {} | {} | {} |",
        t.seq,
        t.trial,
        t.mode,
        if !t.effective_mode.is_empty() && t.effective_mode != t.mode && t.mode != "warm" {
            format!(" ({})", t.effective_mode)
        } else {
            String::new()
        },
        fmt_load(t.load_before),
        fmt_load(t.load_after),
        mem,
        first,
        t.start_return_s,
        bd.join(", "),
        mib(t.swapin_first_bytes as f64),
        mib(t.swapin_total_bytes as f64),
        t.majflt_first,
        t.majflt_total,
        metrics,
        note.replace('|', "\\|")
    )
}

/// torpord's Start breakdown: every positive `*_s` of `timing` and of the objects in it (e.g. the
/// loading-set Start's `timing.activation`), and the byte counts.
fn breakdown(ans: &Value) -> Vec<String> {
    let mut bd = Vec::new();
    let mut walk = |prefix: &str, v: &Value| {
        if let Some(m) = v.as_object() {
            for (k, x) in m {
                match x.as_f64() {
                    Some(f) if f > 0.0 && k.ends_with("_s") => {
                        bd.push(format!("{prefix}{k} {f:.3}"))
                    }
                    Some(f) if f > 0.0 && k.ends_with("_bytes") => {
                        bd.push(format!("{prefix}{k} {:.1} MiB", mib(f)))
                    }
                    _ => {}
                }
            }
        }
    };
    let timing = &ans["timing"];
    walk("", timing);
    if let Some(m) = timing.as_object() {
        for (k, v) in m {
            if v.is_object() {
                walk(&format!("{k}."), v);
            }
        }
    }
    let vm = start_answer(ans).and_then(|a| a.started()?.vm.as_ref()?.resume().cloned());
    if let Some(r) = vm {
        for (k, f) in [
            ("prefetch_ms", r.prefetch_ms),
            ("plan_ms", r.plan_ms),
            ("fetch_call_ms", r.fetch_call_ms),
            ("ready_ms", r.ready_ms),
        ] {
            bd.push(format!("vm.{k} {f:.0}"));
        }
    }
    bd
}

/// Re-render the md, png and index of every result JSON in `out` (no measuring).
pub fn render(out: &Path) -> Result<()> {
    for e in std::fs::read_dir(out)
        .with_context(|| format!("read {}", out.display()))?
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "json") {
            if let Ok(r) = serde_json::from_slice::<AppResult>(&std::fs::read(e.path())?) {
                if r.schema.starts_with("torpor-activation/") {
                    let md = write_results(out, &r, false)?;
                    eprintln!("activation: rendered {}", md.display());
                }
            }
        }
    }
    write_index(out)
}

/// Write the md and png (and the JSON when `json`: a re-render leaves the measured data as it is).
fn write_results(out: &Path, r: &AppResult, json: bool) -> Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let (md, js, png) = paths(out, r);
    if json {
        std::fs::write(&js, serde_json::to_string_pretty(r)?)?;
    }
    let bars: Vec<Bar> = r
        .summary
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            s.first_response.map(|f| Bar {
                label: if s.mode == r.default_mode {
                    format!("{} (default)", s.mode)
                } else {
                    s.mode.clone()
                },
                value: f.median,
                lo: f.min,
                hi: f.max,
                color: i,
            })
        })
        .collect();
    let mut md_text = write_md(r, &png);
    if !bars.is_empty() {
        if let Err(e) = plot::bars(
            &png,
            &format!(
                "{}: time to first response after Start, {}",
                r.app,
                &r.date[..10.min(r.date.len())]
            ),
            "seconds (median, min–max)",
            &bars,
            true,
        ) {
            md_text += &format!("\n(plot failed: {e:#})\n");
        }
    }
    std::fs::write(&md, md_text)?;
    Ok(md)
}

/// Regenerate the index table of `out/README.md` from every result JSON there (the text
/// outside the markers is kept).
/// One row of the index: an app's run.
fn index_row(r: &AppResult) -> String {
    let (md, _, png) = paths(Path::new(""), r);
    let load = trial_loads(r)
        .map(|s| format!("{:.1}–{:.1}", s.min, s.max))
        .unwrap_or_else(|| "–".into());
    let per = r
        .summary
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s.mode,
                s.first_response
                    .map(|f| format!("{:.3}", f.median))
                    .unwrap_or_else(|| "–".into())
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let d = r.default_mode.as_str();
    let g = |m: &str| median_of(r, m, &fr);
    let metric = [
        "gets_done_s",
        "tps_window",
        "all_data_s",
        "floor_ratio",
        "all_data_back_s",
    ]
    .iter()
    .find_map(|k| {
        let v = |m: &str| {
            median_of(r, m, &|s| s.metrics.get(*k).map(|x| x.median))
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "–".into())
        };
        r.summary
            .iter()
            .any(|s| s.metrics.contains_key(*k))
            .then(|| {
                format!(
                    "{k}: {} / {} / {} / {}",
                    v(d),
                    v("warm"),
                    v(&r.demand_mode),
                    v(STOCK_MODE)
                )
            })
    });
    format!(
        "| {} | {} | {}{}{} | {load} | `{d}` | {per} | {} | {} / {} | {} | [md]({}), [png]({}){} |",
        r.app,
        r.date,
        trials_per_mode(r),
        if r.quick { " (quick)" } else { "" },
        if r.tag.is_empty() {
            String::new()
        } else {
            format!(", `{}`", r.tag)
        },
        ratio(g(d), g("warm")),
        ratio(g(d), g(&r.demand_mode)),
        ratio(g(d), g(STOCK_MODE)),
        metric.unwrap_or_else(|| "–".into()),
        md.display(),
        png.display(),
        if r.error.is_empty() {
            String::new()
        } else {
            " — **run failed**".into()
        }
    )
}

pub fn write_index(out: &Path) -> Result<()> {
    const BEGIN: &str = "<!-- activation-index:begin (generated by torpor-bench activation from the .json files) -->";
    const END: &str = "<!-- activation-index:end -->";
    let mut rs: Vec<AppResult> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(out) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "json") {
                if let Ok(r) = serde_json::from_slice::<AppResult>(&std::fs::read(e.path())?) {
                    if r.schema.starts_with("torpor-activation/") {
                        rs.push(r);
                    }
                }
            }
        }
    }
    rs.sort_by(|a, b| {
        (ALL_APPS.iter().position(|x| *x == a.app), &b.date)
            .cmp(&(ALL_APPS.iter().position(|x| *x == b.app), &a.date))
    });
    let mut t = String::new();
    let _ = writeln!(t, "{BEGIN}\n");
    let _ = writeln!(t, "| app | date | trials | load (1-min, min–max) | default mode | first response, median s, per mode | default × warm | default × demand paging (after torpor's ordered purge / stock: the kernel's purge) | app metric (default / warm / demand paging ordered / stock) | files |\n|---|---|---|---|---|---|---|---|---|---|");
    for r in &rs {
        let _ = writeln!(t, "{}", index_row(r));
    }
    let _ = writeln!(t, "\n{END}");
    let path = out.join("README.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &old[..a], t.trim_end(), &old[b + END.len()..]),
        _ if old.trim().is_empty() => format!("# Activation benchmark (issue 12)\n\n`make bench-activation` (`bench/run-activation.sh` → `torpor-bench activation`). One row per app and run.\n\n{t}"),
        _ => format!("{}\n\n{t}", old.trim_end()),
    };
    std::fs::write(&path, new)?;
    Ok(())
}

fn now_date() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d %H:%M:%S %Z")
        .output()
        .ok()
        .and_then(|x| String::from_utf8(x.stdout).ok())
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Tomcat as this benchmark runs it, for another benchmark (the agility one, one definition):
/// its CATALINA_BASE made in `work/catalina-base`, HTTP on 127.0.0.1:`port`, Debian's default
/// ROOT webapp, or with `mib` `bench/tomcat-app` holding `mib` MiB as `/app`. Returns its
/// `[[app]]` entry named `name` and the path its readiness probe asks for.
pub fn tomcat_entry(
    work: &Path,
    name: &str,
    port: u16,
    mib: Option<u64>,
    ready_path: Option<&str>,
) -> Result<(String, &'static str)> {
    let t = apps::Tomcat::on_port(work, mib, port)?;
    Ok((
        t.entry_ready(name, ready_path.unwrap_or(t.path())),
        t.path(),
    ))
}

pub fn main(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("--render") {
        let out = args.get(1).map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results/activation"))
        });
        return render(&out);
    }
    let o = Opts::parse(args)?;
    crate::machine::require_root_and_swap()?;
    ensure!(
        o.torpord.exists(),
        "{} not found (cargo build --release -p local-controller, or --torpord PATH)",
        o.torpord.display()
    );
    let date = now_date();
    let machine = Machine::probe()?;
    let ctx = Ctx {
        o: &o,
        machine: &machine,
        day: date.get(..10).unwrap_or("unknown").to_string(),
    };
    std::fs::create_dir_all(&o.work)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&o.work, std::fs::Permissions::from_mode(0o755))?;
    eprintln!(
        "activation: apps {:?}, {} trials, out {}, torpord {}, {} ({} CPUs), load {:?}",
        o.apps,
        o.trials,
        o.out.display(),
        o.torpord.display(),
        ctx.day,
        machine.nproc,
        loadavg()
    );
    let mut floor = None;
    let mut failed = Vec::new();
    let mut written = Vec::new();
    for app in &o.apps {
        let r = match run_app(&ctx, app, &mut floor) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("activation: {app}: not run: {e:#}");
                failed.push(format!("{app}: {e:#}"));
                continue;
            }
        };
        if !r.error.is_empty() {
            failed.push(format!("{app}: {}", r.error));
        }
        let md = write_results(&o.out, &r, true)?;
        eprintln!("activation: {app}: wrote {}", md.display());
        written.push(md);
        write_index(&o.out)?;
    }
    drop(floor);
    let _ = std::fs::remove_dir_all(&o.work);
    for w in &written {
        let text = std::fs::read_to_string(w).unwrap_or_default();
        println!("== {}", w.display());
        for l in text
            .lines()
            .skip_while(|l| !l.starts_with("## Results"))
            .take_while(|l| !l.starts_with("!["))
        {
            println!("{l}");
        }
    }
    ensure!(
        failed.is_empty(),
        "{} app(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(mode: &str, fr: f64, ok: bool) -> Trial {
        Trial {
            mode: mode.into(),
            effective_mode: mode.into(),
            outcome: ok.then(|| Outcome {
                first_response_s: fr,
                ..Default::default()
            }),
            refused: !ok,
            start_answer: process_answer(fr / 2.0, mode),
            ..Default::default()
        }
    }

    /// A whole process Start answer as torpord gives it (torpor-api's type, on the wire).
    fn process_answer(total_s: f64, mode: &str) -> Value {
        serde_json::to_value(StartAnswer::Started(torpor_api::Started {
            timing: torpor_api::StartTiming {
                total_s,
                prefetch_mode: Some(mode.into()),
                ..Default::default()
            },
            ..Default::default()
        }))
        .unwrap()
    }

    /// A whole VM resume answer, `mode` asked for and `effective` done.
    fn vm_answer(mode: &str, effective: &str) -> Value {
        serde_json::to_value(StartAnswer::Started(torpor_api::Started {
            vm: Some(VmStart::Resume(Box::new(torpor_api::VmResume {
                mode: mode.into(),
                effective: effective.into(),
                ..Default::default()
            }))),
            ..Default::default()
        }))
        .unwrap()
    }

    #[test]
    fn summaries_skip_refused_trials() {
        let ts = vec![
            trial("none", 1.0, true),
            trial("none", 3.0, true),
            trial("none", 100.0, false),
            trial("full", 2.0, true),
        ];
        let s = summarize(&ts, "none");
        assert_eq!((s.ok, s.refused), (2, 1));
        assert_eq!(s.first_response.unwrap().median, 2.0);
        assert_eq!(s.torpord_total.unwrap().median, 1.0);
        assert_eq!(s.effective_modes, vec!["none".to_string()]);
    }

    #[test]
    fn effective_mode_of_answers() {
        assert_eq!(effective(&process_answer(0.1, "full")), "full");
        assert_eq!(effective(&vm_answer("priority", "full")), "full");
        // Not an answer of torpord's API: no mode.
        assert_eq!(effective(&json!({"timing": {"prefetch_mode": "full"}})), "");
        assert_eq!(body_mode("warm"), Some("none"));
    }

    fn opts(modes: Option<&[&str]>) -> Opts {
        let mut o = Opts::parse(&[]).unwrap();
        o.modes = modes.map(|m| m.iter().map(|x| x.to_string()).collect());
        o
    }

    #[test]
    fn demand_stock_is_a_mode_of_process_apps() {
        let acc: Vec<String> = ["loading-set", "full", "none"].map(String::from).to_vec();
        assert_eq!(
            select_modes(&opts(None), &acc, false).unwrap(),
            ["warm", "loading-set", "full", "none", STOCK_MODE]
        );
        assert_eq!(
            select_modes(&opts(None), &acc, true).unwrap(),
            ["warm", "loading-set", "full", "none"]
        );
        let chosen = opts(Some(&["warm", "none", STOCK_MODE]));
        assert_eq!(select_modes(&chosen, &acc, false).unwrap().len(), 3);
        let e = select_modes(&chosen, &acc, true).unwrap_err().to_string();
        assert!(
            e.contains("\"demand-stock\" is not one torpord accepts"),
            "{e}"
        );
        // Without torpord's none there is no demand paging to compare with.
        let no_none: Vec<String> = vec!["full".into()];
        assert!(select_modes(&opts(Some(&[STOCK_MODE])), &no_none, false).is_err());
        assert_eq!(body_mode(STOCK_MODE), Some("none"));
    }

    /// A result of `modes` with one trial each, first response `fr` seconds, redis' GETs metric.
    fn result(modes: &[(&str, f64)]) -> AppResult {
        let mut trials: Vec<Trial> = modes.iter().map(|(m, f)| trial(m, *f, true)).collect();
        for t in &mut trials {
            let gets = t.outcome.as_ref().unwrap().first_response_s * 10.0;
            t.outcome
                .as_mut()
                .unwrap()
                .metrics
                .insert("gets_done_s".into(), gets);
        }
        AppResult {
            schema: "torpor-activation/1".into(),
            app: "redis".into(),
            date: "2026-12-02 20:00:00 UTC".into(),
            quick: false,
            tag: String::new(),
            machine: Value::Null,
            machine_md: String::new(),
            load_start: (1.0, 1.0, 1.0),
            load_end: (1.0, 1.0, 1.0),
            seconds: 1.0,
            torpord: json!({}),
            config_default: String::new(),
            config_warm: String::new(),
            modes: modes.iter().map(|(m, _)| m.to_string()).collect(),
            default_mode: "loading-set".into(),
            demand_mode: "none".into(),
            condition: 1,
            max_resident_bytes: 4 << 20,
            app_info: Value::Null,
            description: String::new(),
            summary: modes.iter().map(|(m, _)| summarize(&trials, m)).collect(),
            trials,
            check: String::new(),
            error: String::new(),
            columns: vec![("gets_done_s".into(), "200k GETs, s".into(), false)],
        }
    }

    #[test]
    fn ratios_against_both_demand_paging_baselines() {
        let r = result(&[
            ("warm", 0.1),
            ("loading-set", 0.2),
            ("none", 0.4),
            (STOCK_MODE, 0.8),
        ]);
        let md = write_md(&r, Path::new("x.png"));
        let head = md.lines().find(|l| l.starts_with("| mode | ok")).unwrap();
        assert_eq!(
            head.matches("× demand paging (ordered purge)").count(),
            2,
            "{head}"
        );
        assert_eq!(
            head.matches("× stock demand paging (kernel purge)").count(),
            2,
            "{head}"
        );
        let row = md.lines().find(|l| l.starts_with("| loading-set")).unwrap();
        // × warm, × ordered, × stock: first response, then the GETs.
        assert_eq!(row.matches(" 2.00× |").count(), 2, "{row}");
        assert_eq!(row.matches(" 0.50× |").count(), 2, "{row}");
        assert_eq!(row.matches(" 0.25× |").count(), 2, "{row}");
        assert!(md.contains("| none (demand paging after torpor's ordered purge)"));
        assert!(md.contains("| demand-stock (stock demand paging: the kernel's purge, thaw)"));
        let acc = acceptance(&r);
        for want in [
            "first response never worse than 1.1× demand paging (ordered purge): 0.50× — met",
            "first response never worse than 1.1× stock demand paging (kernel purge): 0.25× — met",
            "200k GETs done ≤ 0.8× demand paging (ordered purge): 0.50× (2.00 vs 4.00 s) — met",
            "200k GETs done ≤ 0.8× stock demand paging (kernel purge): 0.25× (2.00 vs 8.00 s) — met",
        ] {
            assert!(acc.iter().any(|a| a == want), "{want}: {acc:#?}");
        }
        let idx = index_row(&r);
        assert!(idx.contains("| 0.50× / 0.25× |"), "{idx}");
        assert!(
            idx.contains("gets_done_s: 2.00 / 1.00 / 4.00 / 8.00"),
            "{idx}"
        );
    }

    #[test]
    fn older_results_without_demand_stock_still_render() {
        let r = result(&[("warm", 0.1), ("loading-set", 0.2), ("none", 0.4)]);
        // Written before demand-stock existed: read back from JSON.
        let r: AppResult = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        let md = write_md(&r, Path::new("x.png"));
        let head = md.lines().find(|l| l.starts_with("| mode | ok")).unwrap();
        assert!(!head.contains("stock"), "{head}");
        let sep = md
            .lines()
            .skip_while(|l| !l.starts_with("| mode | ok"))
            .nth(1)
            .unwrap();
        assert_eq!(
            head.matches('|').count(),
            sep.matches('|').count(),
            "{head}\n{sep}"
        );
        let acc = acceptance(&r);
        assert!(!acc.iter().any(|a| a.contains("stock")), "{acc:#?}");
        assert!(acc
            .iter()
            .any(|a| a.contains("1.1× demand paging (ordered purge): 0.50×")));
        let idx = index_row(&r);
        assert!(idx.contains("| 0.50× / – |"), "{idx}");
    }

    #[test]
    fn breakdown_includes_nested_timings_and_bytes() {
        let a = json!({"timing": {"prefetch_s": 0.3, "thaw_s": 0.0, "prefetch_bytes": 1048576, "activation": {"first_fetch_s": 0.18, "first_pages": 44}}});
        let b = breakdown(&a);
        assert_eq!(
            b,
            vec![
                "prefetch_bytes 1.0 MiB",
                "prefetch_s 0.300",
                "activation.first_fetch_s 0.180"
            ]
        );
    }

    #[test]
    fn index_keeps_text_outside_markers() {
        let dir = std::env::temp_dir().join(format!(
            "torpor-activation-index-test-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("README.md"), "# Title\n\nnotes kept\n").unwrap();
        write_index(&dir).unwrap();
        write_index(&dir).unwrap();
        let s = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(s.starts_with("# Title\n\nnotes kept\n"));
        assert_eq!(s.matches("activation-index:begin").count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
