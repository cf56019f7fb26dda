//! Tomcat servers for experiments 1 and 6: eviction with proof, timed resumes, tables.

use anyhow::{bail, ensure, Context, Result};
use bench::resume::MIB;
use bench::server::{Server, Tomcat};
use procswap::{NoProgress, PrefetchOptions, PurgeOptions, StockBackend};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// Evidence that a frozen server's memory is out before a timed resume.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SrvProof {
    /// How it was evicted: `kernel` (memcg reclaim only) or `torpor` (procswap purge).
    pub torpor_purge: bool,
    /// Whole process, pagemap (procswap inspect): present anonymous pages, swapped pages,
    /// present pages of any kind (shared libraries charged to other cgroups stay present).
    pub present_anon_pages: u64,
    pub swapped_pages: u64,
    pub present_pages: u64,
    pub memcg_usage_bytes: u64,
    pub memcg_swapcached_bytes: Option<u64>,
    pub system_swapcached_bytes: u64,
    pub evict_seconds: f64,
    pub attempts: u32,
    /// Swap extents of the process (procswap inspect).
    pub extents: u64,
}

impl SrvProof {
    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        let anon = self.present_anon_pages + self.swapped_pages;
        if self.present_anon_pages > anon / 200 + 64 {
            why.push(format!(
                "{} of {anon} anonymous pages still present",
                self.present_anon_pages
            ));
        }
        if self.memcg_usage_bytes > 32 * MIB {
            why.push(format!("memcg usage {} KiB", self.memcg_usage_bytes / 1024));
        }
        match self.memcg_swapcached_bytes {
            Some(sc) if sc > MIB => why.push(format!("memcg swapcached {} KiB", sc / 1024)),
            None if self.system_swapcached_bytes > 16 * MIB => why.push(format!(
                "system SwapCached {} KiB",
                self.system_swapcached_bytes / 1024
            )),
            _ => {}
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Freeze and evict a kept server (kernel memcg reclaim, or torpor purge), prove it is out.
pub fn srv_evict(s: &mut Server, torpor_purge: bool) -> Result<SrvProof> {
    s.freeze()?;
    let mut secs = 0.0;
    for attempt in 1..=3 {
        let t0 = Instant::now();
        if torpor_purge {
            let rep =
                procswap::purge_with(&StockBackend, s.pid, &PurgeOptions::default(), &NoProgress)
                    .with_context(|| format!("purge server pid {}", s.pid))?;
            ensure!(
                rep.reclaim.is_some(),
                "purge ran no memcg reclaim: {:?}",
                rep.reclaim_skipped
            );
        } else {
            s.memcg
                .reclaim_all()
                .context("memcg reclaim of the server")?;
        }
        secs += t0.elapsed().as_secs_f64();
        let insp = procswap::inspect(s.pid, Default::default())?;
        let p = SrvProof {
            torpor_purge,
            present_anon_pages: insp.totals.present_anon,
            swapped_pages: insp.totals.swapped,
            present_pages: insp.totals.present,
            memcg_usage_bytes: s.memcg.usage()?,
            memcg_swapcached_bytes: s.memcg.swapcached()?,
            system_swapcached_bytes: procswap::sys::meminfo()?.swap_cached,
            evict_seconds: secs,
            attempts: attempt,
            extents: insp.contiguity.extents,
        };
        match p.failure() {
            None => return Ok(p),
            Some(why) if attempt == 3 => bail!("server memory is not out after 3 evictions: {why} ({p:?})"),
            Some(why) => eprintln!("torpor-bench: eviction attempt {attempt} of the server left memory in: {why}; again"),
        }
    }
    unreachable!("the loop returns or bails on its last attempt")
}

/// One timed server start or resume.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SrvTimed {
    pub config: String,
    /// Target competing CPU load, percent.
    pub load_pct: u32,
    pub trial: usize,
    /// Start/resume requested → the answer to the request.
    pub seconds: f64,
    pub prefetch_seconds: Option<f64>,
    pub prefetch_read_bytes: Option<u64>,
    /// Resident bytes right after the answer.
    pub rss_bytes: u64,
    /// The server's answer (`OK mib=.. pages=.. request_ms=..`).
    pub answer: String,
    /// None for cold starts.
    pub proof: Option<SrvProof>,
}

/// Server configurations.
#[derive(Clone, Copy, PartialEq)]
pub enum SrvHow {
    /// Exec catalina.sh → first answer.
    Cold,
    /// Kernel memcg reclaim (no torpor purge); thaw, demand paging.
    Stock,
    /// torpor purge; full prefetch, thaw.
    Enhanced,
    /// torpor purge; working-set-only prefetch, thaw.
    WsOnly,
}

pub struct Servers {
    pub tc: Tomcat,
    pub stock: Server,
    pub torpor: Server,
    pub ws: Option<procswap::workingset::WorkingSet>,
}

impl Servers {
    /// Two kept servers (stock, torpor), each evicted and resumed once (excluded) so each has the
    /// swap layout its eviction method writes; the torpor one's first resume is demand-paged
    /// and its working set recorded by residency afterwards.
    pub fn start(app_mib: u64) -> Result<Servers> {
        let mut tc = Tomcat::prepare(app_mib)?;
        let mut stock = tc.start_kept("stock")?;
        let mut torpor = tc.start_kept("torpor")?;
        eprintln!(
            "  kept servers up: stock pid {} ({:.1} s), torpor pid {} ({:.1} s)",
            stock.pid, stock.start_seconds, torpor.pid, torpor.start_seconds
        );
        srv_evict(&mut stock, false)?;
        stock.thaw()?;
        stock.request()?;
        srv_evict(&mut torpor, true)?;
        torpor.thaw()?;
        torpor.request()?;
        torpor.freeze()?;
        let ws = procswap::workingset::from_residency(torpor.pid)?;
        torpor.thaw()?;
        Ok(Servers {
            tc,
            stock,
            torpor,
            ws: Some(ws),
        })
    }

    pub fn run(&mut self, how: SrvHow, load_pct: u32, trial: usize) -> Result<SrvTimed> {
        let name = match how {
            SrvHow::Cold => "cold start",
            SrvHow::Stock => "stock resume",
            SrvHow::Enhanced => "torpor (purge + prefetch)",
            SrvHow::WsOnly => "torpor working-set-only",
        };
        if how == SrvHow::Cold {
            let (secs, rss) = self.tc.cold_start()?;
            return Ok(SrvTimed {
                config: name.into(),
                load_pct,
                trial,
                seconds: secs,
                prefetch_seconds: None,
                prefetch_read_bytes: None,
                rss_bytes: rss,
                answer: String::new(),
                proof: None,
            });
        }
        let s = if how == SrvHow::Stock {
            &mut self.stock
        } else {
            &mut self.torpor
        };
        let proof = srv_evict(s, how != SrvHow::Stock)?;
        let t0 = Instant::now();
        let mut pf = None;
        if how != SrvHow::Stock {
            let o = if how == SrvHow::WsOnly {
                PrefetchOptions {
                    working_set: self.ws.clone(),
                    working_set_only: true,
                    ..Default::default()
                }
            } else {
                PrefetchOptions::default()
            };
            let rep = procswap::prefetch_with(&StockBackend, s.pid, &o, &NoProgress)
                .with_context(|| format!("prefetch server pid {}", s.pid))?;
            ensure!(
                rep.stopped.is_none(),
                "prefetch stopped early: {:?}",
                rep.stopped
            );
            pf = Some((t0.elapsed().as_secs_f64(), rep.read_issued_bytes));
        }
        s.thaw()?;
        let answer = s.request()?;
        let seconds = t0.elapsed().as_secs_f64();
        Ok(SrvTimed {
            config: name.into(),
            load_pct,
            trial,
            seconds,
            prefetch_seconds: pf.map(|p| p.0),
            prefetch_read_bytes: pf.map(|p| p.1),
            rss_bytes: s.rss(),
            answer,
            proof: Some(proof),
        })
    }
}

pub fn srv_proof_summary(ts: &[SrvTimed]) -> String {
    let ps: Vec<&SrvProof> = ts.iter().filter_map(|t| t.proof.as_ref()).collect();
    let worst = |f: &dyn Fn(&SrvProof) -> u64| ps.iter().map(|p| f(p)).max().unwrap_or(0);
    let least = |f: &dyn Fn(&SrvProof) -> u64| ps.iter().map(|p| f(p)).min().unwrap_or(0);
    format!(
        "Before each of the {} timed resumes the server was frozen, evicted (stock: the kernel's memcg reclaim, v1 `force_empty` / v2 \
         `memory.reclaim`; torpor: `procswap::purge_with`) and proven out: present anonymous pages ≤ 0.5% + 64 of its anonymous pages \
         (pagemap), memcg usage ≤ 32 MiB, memcg swapcached ≤ 1 MiB (up to 3 evictions, else the run fails). Worst values seen: present \
         anonymous pages {} (swapped pages at least {}), present pages of any kind {} (shared libraries charged to other cgroups), memcg usage \
         {} KiB, memcg swapcached {} KiB, system SwapCached {} KiB (other processes included); evictions needing a retry: {}.",
        ps.len(),
        worst(&|p| p.present_anon_pages),
        least(&|p| p.swapped_pages),
        worst(&|p| p.present_pages),
        worst(&|p| p.memcg_usage_bytes) / 1024,
        worst(&|p| p.memcg_swapcached_bytes.unwrap_or(0)) / 1024,
        worst(&|p| p.system_swapcached_bytes) / 1024,
        ps.iter().filter(|p| p.attempts > 1).count()
    )
}

pub fn srv_runs_table(ts: &[SrvTimed]) -> String {
    let mut o = String::from(
        "<details><summary>All timed starts and resumes, in run order</summary>\n\n| config | load % | trial | seconds | prefetch s | prefetched MiB | RSS MiB | evicted by | swapped MiB | extents | server's answer |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let ps = procswap::sys::page_size();
    for t in ts {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.3} | {} | {} | {:.0} | {} | {} | {} | `{}` |",
            t.config,
            t.load_pct,
            t.trial,
            t.seconds,
            t.prefetch_seconds
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "-".into()),
            t.prefetch_read_bytes
                .map(|x| format!("{:.0}", x as f64 / MIB as f64))
                .unwrap_or_else(|| "-".into()),
            t.rss_bytes as f64 / MIB as f64,
            t.proof
                .map(|p| if p.torpor_purge {
                    "torpor purge"
                } else {
                    "kernel reclaim"
                })
                .unwrap_or("-"),
            t.proof
                .map(|p| format!("{:.0}", (p.swapped_pages * ps) as f64 / MIB as f64))
                .unwrap_or_else(|| "-".into()),
            t.proof
                .map(|p| p.extents.to_string())
                .unwrap_or_else(|| "-".into()),
            t.answer
        );
    }
    o.push_str("\n</details>\n");
    o
}

pub fn app_mib(quick: bool, full: u64) -> Result<u64> {
    match std::env::var("TORPOR_BENCH_APP_MIB") {
        Ok(v) if !v.is_empty() => v.trim().parse().context("TORPOR_BENCH_APP_MIB"),
        _ => Ok(if quick { 64 } else { full }),
    }
}

pub fn server_text(tc: &Tomcat, srv: &Servers) -> String {
    let i = &tc.info;
    format!(
        "**The server**: Tomcat {} from Debian (`catalina.sh run`, {}, JVM defaults) with torpor-bench's webapp \
         (`bench/tomcat-app/`, one servlet compiled with `javac` at run time, `load-on-startup`): at startup it allocates {} MiB of heap in \
         1 MiB arrays and fills them with pseudo-random bytes; the timed request is `GET {}`, which reads one byte of every 4 KiB page of \
         that data. Cold start = exec of `catalina.sh run` (fresh CATALINA_BASE and port) → first 200 answer to that request (polled every \
         20 ms), then the server is stopped; the JDK's and Tomcat's files stay in the page cache between cold starts (we do not drop the \
         machine's caches on a shared machine), so cold starts here are warm-cache starts — favourable to cold start. Two further servers \
         are kept for resumes, each in its own memory cgroup and freezer: **stock** (evicted by kernel memcg reclaim only, resumed by thaw + \
         demand paging: the paper's plain suspend/resume) and **torpor** (evicted by torpor purge: page-out in address order; resumed by \
         `procswap::prefetch_with`, stock backend, then thaw — what `torpor start` does). Both ran one excluded evict/resume first; the \
         torpor server's working set ({:.1} MiB) was recorded by residency after a demand-paged resume. Resume timed from \"resume \
         requested\" (before the prefetch) → answer to the request.\n\n",
        i.tomcat_version,
        i.java_version,
        i.app_mib,
        i.request,
        srv.ws.as_ref().map(|w| w.bytes() as f64 / MIB as f64).unwrap_or(0.0)
    )
}

pub fn secs_of_srv<'a>(ts: impl Iterator<Item = &'a SrvTimed>) -> Vec<f64> {
    ts.map(|t| t.seconds).collect()
}

/// The plot link, the proof that memory was out before every timed resume, and the runs table.
pub fn srv_plot_and_proofs(o: &mut String, png_path: &Path, ts: &[SrvTimed]) {
    let _ = writeln!(
        o,
        "![plot]({})\n",
        png_path.file_name().unwrap_or_default().to_string_lossy()
    );
    let _ = writeln!(
        o,
        "## Memory was out before every timed resume\n\n{}\n",
        srv_proof_summary(ts)
    );
    o.push_str(&srv_runs_table(ts));
}
