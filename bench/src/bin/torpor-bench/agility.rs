//! End-to-end agility (*Agile application placement in hosting platforms*, WWW 2009, section 5,
//! Fig. 11): the analysis of a `bench/run-agility.sh` run. Every request is read from HAProxy's
//! own log (one line per request, `torpor_fleet::haproxy::log`); per second after the flash
//! crowd: requests, failures, p50 and p99 response time (HAProxy's Ta: request received → last
//! byte of the answer, queueing included); the degraded-service time; the support host's
//! activation from the controller's events and etcd. Writes `<out>/agility/agility-<date>.{md,json}`
//! and a plot of p99 and p50 per second per mechanism.

use anyhow::{Context, Result};
use bench::machine::Machine;
use bench::plot::{self, Series};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use torpor_fleet::haproxy::log::{self as hlog, RequestLog};

#[derive(clap::Args)]
pub struct AgilityOpts {
    /// The run directory of bench/run-agility.sh (a subdirectory per mechanism).
    #[arg(long)]
    run: PathBuf,
    /// A second is degraded when its p99 response time is above this many ms, or a request
    /// started in it failed (no answer, an error status, or cut off).
    #[arg(long, default_value_t = 1000.0)]
    threshold_ms: f64,
    /// The mechanisms, in the order they ran (regular, demand-paging, torpor).
    modes: Vec<String>,
}

/// What run-agility.sh recorded about one mechanism's run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    mode: String,
    /// `testapp` (torpor-testapp; runs before the field existed) or `tomcat`.
    #[serde(default = "testapp")]
    app: String,
    t0_unix: f64,
    flash_unix: f64,
    low_rps: u32,
    high_rps: u32,
    duration_s: u32,
    share_cores: f64,
    mib: u64,
    uri: String,
    cold_delay_ms: u64,
    /// The app's `max_conn` (HAProxy's per-server `maxconn`; 1 before the field existed).
    #[serde(default = "one")]
    max_conn: u32,
    /// `READY_UNIX SENT_MS ANSWERED_MS` from `torpor-fleet first-answer`, empty when none.
    first_answer: String,
    uptime_after: String,
}

fn testapp() -> String {
    "testapp".into()
}

fn one() -> u32 {
    1
}

impl Meta {
    /// The app and its cold start, for the results file.
    fn app_text(&self) -> String {
        match self.app.as_str() {
            "tomcat" => format!(
                "Debian's Tomcat 10 (`catalina.sh run`, its own CATALINA_BASE per host) with bench/tomcat-app as `/app` holding {} MiB of heap data, `GET {}`, cold start = Tomcat's own (JVM, Catalina, the webapp filling its data) in the host's share",
                self.mib, self.uri
            ),
            _ => format!(
                "torpor-testapp, {} MiB, `GET {}`, cold start = allocating its memory + {} ms of start-up delay",
                self.mib, self.uri, self.cold_delay_ms
            ),
        }
    }
}

/// One second of requests (by when HAProxy received them), t seconds after the flash.
#[derive(Debug, Clone, Serialize)]
struct Second {
    t: i64,
    requests: usize,
    failed: usize,
    /// Response times in ms; a failed request counts as infinite (`null` in JSON).
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    by_support: usize,
    /// The same per server (requests it answered or failed), `[p50, p99]`; `None` when it
    /// had none.
    base_ms: Option<[Option<f64>; 2]>,
    support_ms: Option<[Option<f64>; 2]>,
    /// The longest any request of the second waited in HAProxy's queue (Tw), ms.
    max_queued_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
struct ModeResult {
    meta: Meta,
    seconds: Vec<Second>,
    /// Seconds from the flash to the end of the last degraded second.
    degraded_s: f64,
    /// Whether at least 10 good seconds closed the run (else the run ended degraded).
    recovered: bool,
    requests: usize,
    failed: usize,
    by_server: BTreeMap<String, usize>,
    /// Controller events about the support host, seconds after the flash: (kind, t).
    support_events: Vec<(String, f64)>,
    /// The support host's ready, seconds after the flash; then the first request HAProxy
    /// passed on to it and the first it answered, ms after its ready.
    ready_after_flash_s: Option<f64>,
    first_sent_ms: Option<f64>,
    first_answered_ms: Option<f64>,
    httperf_errors: Vec<String>,
}

pub fn main(out: &Path, o: AgilityOpts) -> Result<()> {
    anyhow::ensure!(!o.modes.is_empty(), "name the mechanisms that ran");
    let results: Vec<ModeResult> = o
        .modes
        .iter()
        .map(|m| analyse(&o.run.join(m), o.threshold_ms).with_context(|| format!("mode {m}")))
        .collect::<Result<_>>()?;
    let dir = out.join("agility");
    std::fs::create_dir_all(&dir)?;
    let stamp = crate::common::chrono_now();
    let name = format!(
        "agility-{}",
        stamp.get(..16).unwrap_or("x").replace([' ', ':'], "-")
    );
    let json = serde_json::json!({"date": stamp, "threshold_ms": o.threshold_ms, "modes": results});
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&json)?,
    )?;
    plot_seconds(&dir, &name, &results)?;
    let md = markdown(&stamp, &name, o.threshold_ms, &results)?;
    std::fs::write(dir.join(format!("{name}.md")), &md)?;
    println!("{md}");
    Ok(())
}

/// One mechanism's run: its log, per-second figures and degraded-service time.
fn analyse(dir: &Path, threshold_ms: f64) -> Result<ModeResult> {
    let meta: Meta = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json"))?)?;
    let logs = hlog::read(&dir.join("haproxy.log"))?;
    let seconds = per_second(&logs, &meta);
    let bad = |s: &Second| s.failed > 0 || s.p99_ms.is_none_or(|p| p > threshold_ms);
    let after: Vec<&Second> = seconds.iter().filter(|s| s.t >= 0).collect();
    let last_bad = after.iter().rposition(|s| s.requests > 0 && bad(s));
    let degraded_s = last_bad.map_or(0.0, |i| (after[i].t + 1) as f64);
    let recovered = last_bad.is_none_or(|i| after.len() - i > 10);
    let mut by_server = BTreeMap::new();
    for r in &logs {
        *by_server.entry(r.server.clone()).or_insert(0) += 1;
    }
    let fa: Vec<f64> = meta
        .first_answer
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Ok(ModeResult {
        seconds,
        degraded_s,
        recovered,
        requests: logs.len(),
        failed: logs.iter().filter(|r| !r.ok()).count(),
        by_server,
        support_events: support_events(dir, meta.flash_unix)?,
        ready_after_flash_s: fa.first().map(|r| r - meta.flash_unix),
        first_sent_ms: fa.get(1).copied(),
        first_answered_ms: fa.get(2).copied(),
        httperf_errors: httperf_errors(dir),
        meta,
    })
}

/// Requests binned by the second HAProxy received them, from the start of the load to its end.
fn per_second(logs: &[RequestLog], meta: &Meta) -> Vec<Second> {
    let flash_ms = meta.flash_unix * 1000.0;
    let first = ((meta.t0_unix - meta.flash_unix).floor()) as i64;
    let last = meta.duration_s as i64 - (meta.flash_unix - meta.t0_unix).ceil() as i64 + 60;
    let mut bins: BTreeMap<i64, Vec<&RequestLog>> = (first..last).map(|t| (t, vec![])).collect();
    for r in logs {
        let t = ((r.request_ms() as f64 - flash_ms) / 1000.0).floor() as i64;
        bins.entry(t).or_default().push(r);
    }
    // Seconds after the load ended without a request are left out.
    let end = bins
        .iter()
        .rev()
        .find(|(_, v)| !v.is_empty())
        .map_or(first, |(t, _)| *t);
    bins.into_iter()
        .filter(|(t, _)| *t <= end)
        .map(|(t, rs)| {
            let [p50_ms, p99_ms] = quantiles(rs.iter().copied());
            let on = |server: &'static str| {
                let mut of = rs
                    .iter()
                    .copied()
                    .filter(move |r| r.server == server)
                    .peekable();
                of.peek().is_some().then(|| quantiles(of))
            };
            Second {
                t,
                requests: rs.len(),
                failed: rs.iter().filter(|r| !r.ok()).count(),
                p50_ms,
                p99_ms,
                by_support: rs.iter().filter(|r| r.server == "support").count(),
                base_ms: on("base"),
                support_ms: on("support"),
                max_queued_ms: rs.iter().map(|r| r.tw).max().unwrap_or(-1),
            }
        })
        .collect()
}

/// p50 and p99 of the requests' response times (HAProxy's Ta, ms); a failed request counts as
/// infinite, and a quantile that falls on one is `None`, as is any of no requests.
fn quantiles<'a>(rs: impl Iterator<Item = &'a RequestLog>) -> [Option<f64>; 2] {
    let mut ms: Vec<f64> = rs
        .map(|r| {
            if r.ok() {
                r.ta.max(0) as f64
            } else {
                f64::INFINITY
            }
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    [0.5, 0.99].map(|p: f64| {
        let v = *ms.get(((ms.len() as f64 * p).ceil() as usize).max(1) - 1)?;
        v.is_finite().then_some(v)
    })
}

/// The controller's events about the support host, seconds after the flash.
fn support_events(dir: &Path, flash_unix: f64) -> Result<Vec<(String, f64)>> {
    let text = std::fs::read_to_string(dir.join("events.json")).unwrap_or_else(|_| "[]".into());
    let ev: Vec<torpor_fleet::obs::Event> = serde_json::from_str(&text)?;
    Ok(ev
        .into_iter()
        .filter(|e| e.host.as_deref() == Some("support"))
        .map(|e| (e.kind, e.unix_time - flash_unix))
        .collect())
}

/// httperf's error lines (requests that may never have reached HAProxy: fd-unavail, timeouts).
fn httperf_errors(dir: &Path) -> Vec<String> {
    ["httperf-low.txt", "httperf-flash.txt"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .flat_map(|t| {
            t.lines()
                .filter(|l| l.starts_with("Errors:"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Two PNGs: p99 and p50 per second, one line per mechanism (failed seconds drawn at 60 s).
fn plot_seconds(dir: &Path, name: &str, results: &[ModeResult]) -> Result<()> {
    for (q, pick) in [
        ("p99", (|s: &Second| s.p99_ms) as fn(&Second) -> Option<f64>),
        ("p50", |s: &Second| s.p50_ms),
    ] {
        let series: Vec<Series> = results
            .iter()
            .map(|r| Series {
                name: r.meta.mode.clone(),
                points: r
                    .seconds
                    .iter()
                    .filter(|s| s.requests > 0)
                    .map(|s| {
                        let y = pick(s).unwrap_or(60_000.0).clamp(1.0, 60_000.0);
                        (s.t as f64, y, y, y)
                    })
                    .collect(),
                reference: false,
            })
            .collect();
        plot::lines(
            &dir.join(format!("{name}-{q}.png")),
            &format!("{q} response time per second (flash crowd at t = 0)"),
            "seconds after the flash crowd",
            &format!("{q} response time (ms; failed: 60 s)"),
            &series,
            false,
        )?;
    }
    Ok(())
}

/// The results file: setup, machine, the summary table, per-second rows.
fn markdown(stamp: &str, name: &str, threshold_ms: f64, results: &[ModeResult]) -> Result<String> {
    let m = &results[0].meta;
    let mut o = String::new();
    writeln!(o, "# End-to-end agility (Fig. 11 of *Agile application placement in hosting platforms*), {stamp}\n")?;
    writeln!(o, "Two emulated hosts (a torpord each, its apps capped at **{} core** by a cgroup-v1 CFS quota), etcd, HAProxy 2.6, one controller (CPU ≥ 80 % of the share → activate on the support host). App: {}; HAProxy gives each server {} request(s) at a time (`maxconn`), the rest wait in its queue. Load: httperf, open loop, **{} req/s**, then **{} req/s** from the flash crowd at t = {:.0} s of {} s. The mechanisms ran back to back on this machine, in the order of the table.\n",
        m.share_cores, m.app_text(), m.max_conn, m.low_rps, m.high_rps, m.flash_unix - m.t0_unix, m.duration_s)?;
    writeln!(o, "**Degraded-service time**: seconds from the flash crowd to the end of the last second after it whose requests (by the second HAProxy received them) had a p99 response time above {threshold_ms:.0} ms or a failure; \"not recovered\" when fewer than 10 good seconds closed the run. Response time: HAProxy's Ta (request received → last byte answered, queueing included).\n")?;
    writeln!(
        o,
        "| | |\n|---|---|\n{}| load after each mechanism | {} |\n",
        Machine::probe()?.markdown_rows(),
        results
            .iter()
            .map(|r| format!("{}: `{}`", r.meta.mode, r.meta.uptime_after.trim()))
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    writeln!(o, "| mechanism | degraded service (s) | support ready after the flash (s) | ready → first passed on / answered (ms) | requests (failed) | by server | max p99 (ms) |\n|---|---|---|---|---|---|---|")?;
    for r in results {
        let maxp99 = r
            .seconds
            .iter()
            .filter(|s| s.t >= 0)
            .map(|s| s.p99_ms.unwrap_or(f64::INFINITY))
            .fold(0.0, f64::max);
        writeln!(
            o,
            "| {} | {:.0}{} | {} | {} / {} | {} ({}) | {:?} | {} |",
            r.meta.mode,
            r.degraded_s,
            if r.recovered { "" } else { " (not recovered)" },
            r.ready_after_flash_s
                .map_or("never".into(), |x| format!("{x:.2}")),
            r.first_sent_ms.map_or("-".into(), |x| format!("{x:.0}")),
            r.first_answered_ms
                .map_or("-".into(), |x| format!("{x:.0}")),
            r.requests,
            r.failed,
            r.by_server,
            if maxp99.is_finite() {
                format!("{maxp99:.0}")
            } else {
                "failures".into()
            }
        )?;
    }
    ratios(&mut o, results)?;
    writeln!(o, "\n![p99]({name}-p99.png)\n![p50]({name}-p50.png)\n")?;
    for r in results {
        mode_section(&mut o, r)?;
    }
    Ok(o)
}

/// One mechanism's section: the support host's events, httperf's errors, and per second the
/// requests, p50/p99 overall and per server, and the longest wait in HAProxy's queue.
fn mode_section(o: &mut String, r: &ModeResult) -> Result<()> {
    {
        writeln!(
            o,
            "## {}\n\nsupport host events (s after the flash): {:?}; httperf: {:?}\n",
            r.meta.mode,
            r.support_events
                .iter()
                .map(|(k, t)| format!("{k} {t:.2}"))
                .collect::<Vec<_>>(),
            r.httperf_errors
        )?;
        writeln!(o, "| t (s) | requests | failed | to support | p50 (ms) | p99 (ms) | base p50 / p99 | support p50 / p99 | longest queued (ms) |\n|---|---|---|---|---|---|---|---|---|")?;
        let f = |x: Option<f64>| x.map_or("∞".into(), |v| format!("{v:.0}"));
        let pair = |q: Option<[Option<f64>; 2]>| {
            q.map_or("–".into(), |[a, b]| format!("{} / {}", f(a), f(b)))
        };
        for s in &r.seconds {
            writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.t,
                s.requests,
                s.failed,
                s.by_support,
                f(s.p50_ms),
                f(s.p99_ms),
                pair(s.base_ms),
                pair(s.support_ms),
                s.max_queued_ms
            )?;
        }
        writeln!(o)?;
    }
    Ok(())
}

/// The acceptance's ratios, measured in this run: torpor / suspend-resume, torpor / regular.
fn ratios(o: &mut String, results: &[ModeResult]) -> Result<()> {
    let d = |m: &str| {
        results
            .iter()
            .find(|r| r.meta.mode == m)
            .map(|r| r.degraded_s)
    };
    if let Some(t) = d("torpor") {
        for (other, goal) in [("demand-paging", 0.5), ("regular", 0.1)] {
            if let Some(x) = d(other).filter(|x| *x > 0.0) {
                writeln!(
                    o,
                    "\ntorpor / {other}: **{:.2}×** (target ≤ {goal}×)",
                    t / x
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_names_its_app() {
        let mut v = serde_json::json!({"mode": "torpor", "t0_unix": 1.0, "flash_unix": 21.0, "low_rps": 4,
            "high_rps": 18, "duration_s": 90, "share_cores": 0.5, "mib": 256, "uri": "/verify",
            "cold_delay_ms": 8000, "first_answer": "", "uptime_after": ""});
        let old: Meta = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            old.app_text(),
            "torpor-testapp, 256 MiB, `GET /verify`, cold start = allocating its memory + 8000 ms of start-up delay"
        );
        v["app"] = "tomcat".into();
        v["uri"] = "/app/?touch=all".into();
        let t: Meta = serde_json::from_value(v).unwrap();
        assert_eq!(
            t.app_text(),
            "Debian's Tomcat 10 (`catalina.sh run`, its own CATALINA_BASE per host) with bench/tomcat-app as `/app` holding 256 MiB of heap data, `GET /app/?touch=all`, cold start = Tomcat's own (JVM, Catalina, the webapp filling its data) in the host's share"
        );
    }
}
