//! The `resume_touch_all` experiment: a child holding N MiB of touched random anonymous
//! memory, in its own memory cgroup, is frozen and purged (`process_madvise(MADV_PAGEOUT)` +
//! memcg reclaim through `procswap::purge_with`); the bench proves the memory is out (child's
//! present pages from pagemap, its memcg usage, system `SwapCached`), then times one resume:
//!
//! - **stock**: thaw (or SIGCONT), the child reads one word of every page (demand paging), and
//!   says it is done;
//! - **torpor**: `procswap::prefetch_with` (slot-ordered `MADV_WILLNEED` + `process_vm_readv`
//!   mapping pass), then thaw, then the same touch-all.
//!
//! The timed interval runs from "resume requested" (just before the thaw, resp. the prefetch)
//! to the child's `DONE` line. Setup (allocation, freeze, purge, proof) is outside it.

use crate::machine::{loadavg, Machine};
use crate::stats::Spread;
use anyhow::{bail, ensure, Context, Result};
use procswap::cgroup::{self, Memcg};
use procswap::inspect::Pagemap;
use procswap::{Freezer, NoProgress, PrefetchOptions, PurgeOptions, StockBackend};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command};
use std::time::{Duration, Instant};
use torpor_testsupport::child::LineChild;

pub const MIB: u64 = 1 << 20;
const FREEZE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which resume path is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// Thaw, then demand paging.
    Stock,
    /// procswap prefetch, then thaw.
    Torpor,
    /// procswap prefetch with the kernel-module backend (PREFETCH ioctl mapping pass), then thaw.
    TorporKmod,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Stock => "stock",
            Variant::Torpor => "torpor",
            Variant::TorporKmod => "torpor_kmod",
        }
    }
}

/// Which freezer suspends the child (`TORPOR_BENCH_FREEZER` = auto|v2|v1|signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerChoice {
    Auto,
    V2,
    V1,
    Signal,
}

impl FreezerChoice {
    pub fn from_env() -> Result<FreezerChoice> {
        match std::env::var("TORPOR_BENCH_FREEZER")
            .unwrap_or_default()
            .as_str()
        {
            "" | "auto" => Ok(FreezerChoice::Auto),
            "v2" => Ok(FreezerChoice::V2),
            "v1" => Ok(FreezerChoice::V1),
            "signal" | "signals" => Ok(FreezerChoice::Signal),
            other => bail!("TORPOR_BENCH_FREEZER={other:?}: expected auto, v2, v1 or signal"),
        }
    }
}

/// Evidence, taken after the purge and before the timed resume, that the memory is out.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Proof {
    /// Pages of the child's benchmarked area.
    pub area_pages: u64,
    /// Of them, present (pagemap) — must be ~0.
    pub area_present_pages: u64,
    /// Of them, swapped (pagemap) — must be ~all.
    pub area_swapped_pages: u64,
    /// The child's whole-process present anonymous pages (procswap inspect).
    pub process_present_anon_pages: u64,
    /// The child's memcg charge, bytes.
    pub memcg_usage_bytes: u64,
    /// The child's memcg `swapcached`, bytes (where the kernel reports it).
    pub memcg_swapcached_bytes: Option<u64>,
    /// System-wide `SwapCached`, bytes.
    pub system_swapcached_bytes: u64,
    /// Purge time (page-out + memcg reclaim), seconds.
    pub purge_seconds: f64,
    /// Purges needed until the proof held.
    pub purge_attempts: u32,
}

impl Proof {
    /// Does this prove the area is out of memory? Thresholds: ≤ 0.1% (+8) of the area's pages
    /// present, ≥ 99% swapped, memcg usage ≤ 8 MiB + N/128 (page tables and the child's
    /// non-purgeable bits), memcg swapcached ≤ 1 MiB (system SwapCached ≤ 8 MiB where the memcg
    /// does not report swapcached).
    fn failure(&self) -> Option<String> {
        let n_bytes = self.area_pages * procswap::sys::page_size();
        let mut why = Vec::new();
        if self.area_present_pages > self.area_pages / 1000 + 8 {
            why.push(format!(
                "{} of {} area pages still present",
                self.area_present_pages, self.area_pages
            ));
        }
        if self.area_swapped_pages * 100 < self.area_pages * 99 {
            why.push(format!(
                "only {} of {} area pages swapped",
                self.area_swapped_pages, self.area_pages
            ));
        }
        if self.memcg_usage_bytes > 8 * MIB + n_bytes / 128 {
            why.push(format!("memcg usage {} KiB", self.memcg_usage_bytes / 1024));
        }
        // The child's own swap-cache pages: its memcg's `swapcached` where the kernel reports it
        // (exact, and immune to other processes' swap activity on a shared machine), else the
        // system-wide figure.
        match self.memcg_swapcached_bytes {
            Some(sc) if sc > MIB => why.push(format!("memcg swapcached {} KiB", sc / 1024)),
            Some(_) => {}
            None if self.system_swapcached_bytes > 8 * MIB => why.push(format!(
                "system SwapCached {} KiB (memcg reports no swapcached)",
                self.system_swapcached_bytes / 1024
            )),
            None => {}
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// One timed resume.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    pub mib: u64,
    pub variant: Variant,
    /// Index of the stock/torpor pair within this size (run order).
    pub pair: usize,
    /// Criterion warm-up (or explicit warm-up pair): excluded from the statistics.
    pub warmup: bool,
    /// The timed interval: resume requested → child reports it touched every page.
    pub seconds: f64,
    /// torpor: prefetch_with's time (within `seconds`).
    pub prefetch_seconds: Option<f64>,
    /// Time of the thaw call (within `seconds`).
    pub thaw_seconds: f64,
    /// The child's own touch loop time (within `seconds`).
    pub touch_seconds: f64,
    pub child_majflt: u64,
    pub child_minflt: u64,
    /// torpor: bytes prefetch issued reads for, pages its mapping pass installed.
    pub prefetch_read_bytes: Option<u64>,
    pub prefetch_mapped_pages: Option<u64>,
    pub proof: Proof,
}

/// Freeze (`freeze = true`) or thaw through `freezer`, waiting for the kernel's confirmation;
/// `frozen` follows (a holder thaws on drop what it left frozen). `timeout` bounds the wait.
pub fn set_frozen(
    freezer: &Freezer,
    frozen: &mut bool,
    freeze: bool,
    timeout: Duration,
) -> Result<()> {
    let r = if freeze {
        freezer.freeze(timeout)
    } else {
        freezer.thaw(timeout)
    };
    let verb = if freeze { "freeze" } else { "thaw" };
    r.with_context(|| format!("{verb} ({freezer})"))?;
    *frozen = freeze;
    Ok(())
}

/// The child process and its cgroups.
pub struct Subject {
    proc: std::process::Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: i32,
    pub mib: u64,
    pub area: (u64, u64),
    pub freezer: Freezer,
    pub memcg: Memcg,
    /// How it is suspended and where its memory is charged.
    pub desc: String,
    cgroups: Vec<PathBuf>,
    frozen: bool,
}

fn v2_memory_parent(own_v2: &Option<PathBuf>) -> Option<PathBuf> {
    let own = own_v2.clone()?;
    let ctl = std::fs::read_to_string(own.join("cgroup.controllers")).ok()?;
    ctl.split_whitespace().any(|c| c == "memory").then_some(own)
}

impl Subject {
    /// Spawn the child (`exe` = torpor-bench-child), put it in its own memory cgroup and the
    /// chosen freezer, then let it allocate and fill `mib` MiB.
    pub fn spawn(exe: &Path, mib: u64, choice: FreezerChoice) -> Result<Subject> {
        let LineChild {
            proc,
            stdin,
            stdout,
            pid,
        } = LineChild::spawn(exe)?;
        let mut s = Subject {
            proc,
            stdin,
            stdout,
            pid,
            mib,
            area: (0, 0),
            freezer: Freezer::Signal(pid),
            memcg: Memcg::V1(PathBuf::new()),
            desc: String::new(),
            cgroups: Vec::new(),
            frozen: false,
        };
        s.place(choice)?;
        let r = s.cmd(&format!("ALLOC {mib}"))?;
        let v: Vec<&str> = r.split_whitespace().collect();
        ensure!(v.first() == Some(&"READY") && v.len() == 3, "child: {r}");
        s.area = (v[1].parse()?, v[2].parse()?);
        Ok(s)
    }

    /// Own memory cgroup (v2 memory controller if usable, else v1 memory) and freezer.
    fn place(&mut self, choice: FreezerChoice) -> Result<()> {
        let own = cgroup::pid_cgroups(std::process::id() as i32)?;
        let name = format!("torpor-bench-{}-{}", std::process::id(), self.pid);
        let v2_freeze_ok = own
            .v2
            .as_ref()
            .is_some_and(|d| d.join("cgroup.procs").exists());
        // Freezer first (a v2 group may carry memory too).
        let mut v2_dir = None;
        self.freezer = match choice {
            FreezerChoice::V2 | FreezerChoice::Auto if v2_freeze_ok => {
                let parent = own.v2.clone().context("no cgroup2 mount")?;
                let d = match v2_memory_parent(&own.v2) {
                    Some(_) => cgroup::create_v2(&parent, &name, &["memory"])
                        .or_else(|_| cgroup::create_v2(&parent, &name, &[])),
                    None => cgroup::create_v2(&parent, &name, &[]),
                }?;
                self.cgroups.push(d.clone());
                if !d.join("cgroup.freeze").exists() {
                    if choice == FreezerChoice::V2 {
                        bail!("{} has no cgroup.freeze", d.display());
                    }
                    cgroup::remove(&d)?;
                    self.cgroups.pop();
                    self.v1_or_signal_freezer(&own, &name, choice)?
                } else {
                    cgroup::move_pid(&d, self.pid)?;
                    v2_dir = Some(d.clone());
                    Freezer::CgroupV2(d)
                }
            }
            FreezerChoice::V2 => bail!("TORPOR_BENCH_FREEZER=v2 but no usable cgroup2 hierarchy"),
            _ => self.v1_or_signal_freezer(&own, &name, choice)?,
        };
        // Memory.
        let memcg = match v2_dir.filter(|d| d.join("memory.current").exists()) {
            Some(d) => Memcg::V2(d),
            None => {
                let parent = own.v1_memory.clone().context(
                    "no v1 memory hierarchy and no usable v2 memory controller: the child needs its own memory cgroup",
                )?;
                let d = cgroup::create_v1(&parent, &name)?;
                self.cgroups.push(d.clone());
                cgroup::move_pid(&d, self.pid)?;
                Memcg::V1(d)
            }
        };
        let found = Memcg::of_pid(self.pid)?.context("procswap finds no memcg for the child")?;
        ensure!(
            found == memcg,
            "procswap finds memcg {found:?}, the bench set up {memcg:?}"
        );
        self.desc = format!("{}; memcg {}", self.freezer, memcg.dir().display());
        self.memcg = memcg;
        Ok(())
    }

    fn v1_or_signal_freezer(
        &mut self,
        own: &cgroup::PidCgroups,
        name: &str,
        choice: FreezerChoice,
    ) -> Result<Freezer> {
        if choice != FreezerChoice::Signal {
            if let Some(parent) = &own.v1_freezer {
                let d = cgroup::create_v1(parent, name)?;
                self.cgroups.push(d.clone());
                cgroup::move_pid(&d, self.pid)?;
                return Ok(Freezer::CgroupV1(d));
            }
            if choice == FreezerChoice::V1 {
                bail!("TORPOR_BENCH_FREEZER=v1 but no v1 freezer hierarchy is mounted");
            }
        }
        Ok(Freezer::Signal(self.pid))
    }

    fn read_line(&mut self) -> Result<String> {
        let mut l = String::new();
        let n = self.stdout.read_line(&mut l).context("read from child")?;
        ensure!(n > 0, "child {} closed its stdout (died?)", self.pid);
        Ok(l.trim().to_string())
    }

    fn send(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}").context("write to child")?;
        self.stdin.flush().context("write to child")?;
        Ok(())
    }

    fn cmd(&mut self, line: &str) -> Result<String> {
        self.send(line)?;
        self.read_line()
    }

    /// Re-check every checksum of the area (outside any timing).
    pub fn verify_data(&mut self) -> Result<()> {
        let r = self.cmd("VERIFY")?;
        ensure!(
            r == "OK",
            "child data verification failed after purge/resume cycles: {r}"
        );
        Ok(())
    }

    /// Present and swapped pages of the area (pagemap).
    fn area_state(&self) -> Result<(u64, u64)> {
        let mut pm = Pagemap::open(self.pid)?;
        let (mut p, mut s) = (0, 0);
        pm.scan(
            self.area.0,
            self.area.0 + self.area.1,
            |_, info| match info {
                procfs::process::PageInfo::MemoryPage(f) => {
                    p += f.contains(procfs::process::MemoryPageFlags::PRESENT) as u64
                }
                procfs::process::PageInfo::SwapPage(_) => s += 1,
            },
        )?;
        Ok((p, s))
    }

    /// Freeze, purge, and prove the memory is out; then queue the `TOUCH` command (the
    /// frozen child reads it only once resumed).
    pub fn suspend_and_purge(&mut self) -> Result<Proof> {
        self.freeze()?;
        let proof = self.purge_until_out("resume_touch_all")?;
        self.send("TOUCH")?;
        Ok(proof)
    }

    /// Purge the frozen child (page-out + memcg reclaim) until its memory is proven out, at
    /// most 3 times; `who` names the caller in the note of a repeated attempt.
    pub fn purge_until_out(&mut self, who: &str) -> Result<Proof> {
        let mut purge_seconds = 0.0;
        for attempt in 1..=3 {
            let t0 = Instant::now();
            let rep = procswap::purge_with(
                &StockBackend,
                self.pid,
                &PurgeOptions::default(),
                &NoProgress,
            )
            .with_context(|| format!("purge pid {}", self.pid))?;
            purge_seconds += t0.elapsed().as_secs_f64();
            ensure!(
                rep.reclaim.is_some(),
                "purge ran no memcg reclaim: {:?}",
                rep.reclaim_skipped
            );
            let (proof, failure) = self.prove_out(purge_seconds, attempt)?;
            match failure {
                None => return Ok(proof),
                Some(why) if attempt == 3 => {
                    bail!("memory is not out after {attempt} purges: {why} ({proof:?})")
                }
                Some(why) => {
                    eprintln!("{who}: purge attempt {attempt} left memory in: {why}; purging again")
                }
            }
        }
        unreachable!("the loop returns or bails on its last attempt")
    }

    /// Send one command line and read its one-line reply (child running).
    pub fn command(&mut self, line: &str) -> Result<String> {
        self.cmd(line)
    }

    /// Queue a command line on the child's pipe without waiting (a frozen child reads it
    /// once thawed); [`Subject::reply`] reads the answer.
    pub fn queue(&mut self, line: &str) -> Result<()> {
        self.send(line)
    }

    /// Read the child's next reply line.
    pub fn reply(&mut self) -> Result<String> {
        self.read_line()
    }

    /// Freeze (no purge).
    pub fn freeze(&mut self) -> Result<()> {
        set_frozen(&self.freezer, &mut self.frozen, true, FREEZE_TIMEOUT)
    }

    /// Thaw (no wait for any reply).
    pub fn thaw(&mut self) -> Result<()> {
        set_frozen(&self.freezer, &mut self.frozen, false, FREEZE_TIMEOUT)
    }

    /// Collect the same evidence [`Subject::suspend_and_purge`] does, and whether it proves the
    /// memory is out (`Err(why)` when not), for callers that evicted the memory another way.
    pub fn prove_out(
        &self,
        purge_seconds: f64,
        purge_attempts: u32,
    ) -> Result<(Proof, Option<String>)> {
        let (present, swapped) = self.area_state()?;
        let insp = procswap::inspect(self.pid, Default::default())?;
        let proof = Proof {
            area_pages: self.area.1 / procswap::sys::page_size(),
            area_present_pages: present,
            area_swapped_pages: swapped,
            process_present_anon_pages: insp.totals.present_anon,
            memcg_usage_bytes: self.memcg.usage()?,
            memcg_swapcached_bytes: self.memcg.swapcached()?,
            system_swapcached_bytes: procswap::sys::meminfo()?.swap_cached,
            purge_seconds,
            purge_attempts,
        };
        let why = proof.failure();
        Ok((proof, why))
    }

    /// Thaw after [`Subject::suspend_and_purge`] and wait for the queued touch to finish
    /// (for callers that time something else while it is frozen). Returns the child's reply.
    pub fn thaw_and_wait(&mut self) -> Result<String> {
        self.thaw()?;
        self.read_line()
    }

    /// One timed resume of `variant` (setup excluded).
    pub fn measure(&mut self, variant: Variant, pair: usize, warmup: bool) -> Result<Measurement> {
        let proof = self.suspend_and_purge()?;
        let mut prefetch = None;
        let t0 = Instant::now();
        if variant != Variant::Stock {
            let opts = PrefetchOptions::default();
            let kmod;
            let backend: &dyn procswap::Backend = if variant == Variant::TorporKmod {
                kmod = procswap::backend::KmodBackend::open()
                    .context("the module backend needs torpor.ko loaded")?;
                &kmod
            } else {
                &StockBackend
            };
            let rep = procswap::prefetch_with(backend, self.pid, &opts, &NoProgress)
                .with_context(|| format!("prefetch pid {}", self.pid))?;
            ensure!(
                rep.stopped.is_none(),
                "prefetch stopped early: {:?}",
                rep.stopped
            );
            prefetch = Some((
                t0.elapsed().as_secs_f64(),
                rep.read_issued_bytes,
                rep.mapped_pages,
            ));
        }
        let t_thaw = Instant::now();
        self.thaw()?;
        let thaw_seconds = t_thaw.elapsed().as_secs_f64();
        let r = self.read_line()?;
        let seconds = t0.elapsed().as_secs_f64();
        let v: Vec<&str> = r.split_whitespace().collect();
        ensure!(v.first() == Some(&"DONE") && v.len() == 5, "child: {r}");
        let n = |i: usize| {
            v[i].parse::<u64>()
                .with_context(|| format!("child reply {r:?}"))
        };
        Ok(Measurement {
            mib: self.mib,
            variant,
            pair,
            warmup,
            seconds,
            prefetch_seconds: prefetch.map(|p| p.0),
            thaw_seconds,
            touch_seconds: n(3)? as f64 / 1e6,
            child_majflt: n(1)?,
            child_minflt: n(2)?,
            prefetch_read_bytes: prefetch.map(|p| p.1),
            prefetch_mapped_pages: prefetch.map(|p| p.2),
            proof,
        })
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        if self.frozen {
            let _ = self.freezer.thaw(FREEZE_TIMEOUT);
        }
        let _ = writeln!(self.stdin, "EXIT");
        let _ = self.proc.kill();
        let _ = self.proc.wait();
        for d in self.cgroups.iter().rev() {
            if let Err(e) = cgroup::remove(d) {
                eprintln!(
                    "resume_touch_all: could not remove cgroup {}: {e}",
                    d.display()
                );
            }
        }
    }
}

/// Everything measured in one run.
#[derive(Debug, Default, serde::Serialize)]
pub struct Record {
    pub measurements: Vec<Measurement>,
    /// (MiB, seconds) of each O_DIRECT floor read.
    pub floors: Vec<(u64, f64)>,
    /// Subject descriptions per size.
    pub subjects: Vec<(u64, String)>,
    /// Sizes whose data verification passed at the end.
    pub verified: Vec<u64>,
}

/// Per-size summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SizeSummary {
    pub mib: u64,
    pub stock: Option<Spread>,
    pub torpor: Option<Spread>,
    /// Median stock / median torpor.
    pub ratio_of_medians: Option<f64>,
    /// Median, min, max of stock/torpor within each pair.
    pub pair_ratio: Option<Spread>,
    pub floor: Option<Spread>,
    pub torpor_prefetch: Option<Spread>,
    pub torpor_touch: Option<Spread>,
    pub stock_majflt_median: Option<f64>,
    pub torpor_majflt_median: Option<f64>,
    pub warmup_excluded: usize,
}

impl Record {
    fn timed(&self, mib: u64, v: Variant) -> impl Iterator<Item = &Measurement> {
        self.measurements
            .iter()
            .filter(move |m| m.mib == mib && m.variant == v && !m.warmup)
    }

    pub fn sizes(&self) -> Vec<u64> {
        let mut s: Vec<u64> = self
            .measurements
            .iter()
            .map(|m| m.mib)
            .chain(self.floors.iter().map(|f| f.0))
            .collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    pub fn summary(&self, mib: u64) -> SizeSummary {
        let secs = |v| self.timed(mib, v).map(|m| m.seconds).collect::<Vec<_>>();
        let stock = Spread::of(&secs(Variant::Stock));
        let torpor = Spread::of(&secs(Variant::Torpor));
        let pair_ratios: Vec<f64> = self
            .timed(mib, Variant::Stock)
            .filter_map(|s| {
                self.timed(mib, Variant::Torpor)
                    .find(|t| t.pair == s.pair)
                    .map(|t| s.seconds / t.seconds)
            })
            .collect();
        let floors: Vec<f64> = self
            .floors
            .iter()
            .filter(|f| f.0 == mib)
            .map(|f| f.1)
            .collect();
        let majflt = |v| {
            Spread::of(
                &self
                    .timed(mib, v)
                    .map(|m| m.child_majflt as f64)
                    .collect::<Vec<_>>(),
            )
            .map(|s| s.median)
        };
        SizeSummary {
            mib,
            ratio_of_medians: stock.zip(torpor).map(|(s, t)| s.median / t.median),
            stock,
            torpor,
            pair_ratio: Spread::of(&pair_ratios),
            floor: Spread::of(&floors),
            torpor_prefetch: Spread::of(
                &self
                    .timed(mib, Variant::Torpor)
                    .filter_map(|m| m.prefetch_seconds)
                    .collect::<Vec<_>>(),
            ),
            torpor_touch: Spread::of(
                &self
                    .timed(mib, Variant::Torpor)
                    .map(|m| m.touch_seconds)
                    .collect::<Vec<_>>(),
            ),
            stock_majflt_median: majflt(Variant::Stock),
            torpor_majflt_median: majflt(Variant::Torpor),
            warmup_excluded: self
                .measurements
                .iter()
                .filter(|m| m.mib == mib && m.warmup)
                .count(),
        }
    }

    /// The plain-text table printed at the end of the bench.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "resume_touch_all: time from resume request to \"touched every page\" (median, min–max; interleaved pairs)");
        let _ = writeln!(
            o,
            "{:>7} {:>5}  {:>28}  {:>28}  {:>6} {:>13}  {:>28}  {:>7}",
            "size",
            "pairs",
            "stock (thaw + demand paging)",
            "torpor (prefetch + thaw)",
            "ratio",
            "pair ratios",
            "I/O floor (O_DIRECT 4 MiB)",
            "torp/fl"
        );
        for mib in self.sizes() {
            let s = self.summary(mib);
            let sp = |x: &Option<Spread>| x.map(|x| x.secs()).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                o,
                "{:>4}MiB {:>5}  {:>28}  {:>28}  {:>6} {:>13}  {:>28}  {:>7}",
                mib,
                s.stock.map(|x| x.n).unwrap_or(0),
                sp(&s.stock),
                sp(&s.torpor),
                s.ratio_of_medians
                    .map(|r| format!("{r:.2}x"))
                    .unwrap_or_else(|| "-".into()),
                s.pair_ratio
                    .map(|r| format!("{:.2}–{:.2}", r.min, r.max))
                    .unwrap_or_else(|| "-".into()),
                sp(&s.floor),
                s.torpor
                    .zip(s.floor)
                    .map(|(t, f)| format!("{:.2}x", t.median / f.median))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        o
    }

    /// The markdown results file.
    pub fn markdown(&self, ctx: &RunContext) -> String {
        let mut o = String::new();
        self.md_intro(&mut o, ctx);
        self.md_machine(&mut o, ctx);
        self.md_results(&mut o);
        self.md_breakdown(&mut o);
        self.md_proofs(&mut o);
        self.md_all_runs(&mut o);
        o
    }

    /// The title and what is measured.
    fn md_intro(&self, o: &mut String, ctx: &RunContext) {
        let _ = writeln!(o, "# resume_touch_all — {}\n", ctx.date);
        let _ = writeln!(
            o,
            "Produced by `bench/run-resume-bench.sh` (`cargo bench -p bench --bench resume_touch_all`, release profile){}. \
             Bench wall time {:.0} s.\n",
            if ctx.quick { " in QUICK mode (TORPOR_BENCH_QUICK=1: 64/256 MiB, 3 pairs, criterion statistics skipped)" } else { "" },
            ctx.wall_seconds
        );
        let _ = writeln!(o, "## What is measured\n");
        let _ = writeln!(
            o,
            "A child (`torpor-bench-child`) in its own memory cgroup maps N MiB of private anonymous memory \
             (`MADV_NOHUGEPAGE`, 4 KiB pages), fills it with pseudo-random data, and waits on a pipe. Per \
             measurement, outside the timed interval: freeze, `procswap::purge_with` (`process_madvise(MADV_PAGEOUT)` \
             + memcg reclaim), then a proof that the memory is out (pagemap present pages of the area, memcg usage, \
             system `SwapCached`; thresholds below), then `TOUCH` is queued on the child's pipe. Timed: from \
             \"resume requested\" to the child's \"touched every page\" reply (one 8-byte read per page, address order).\n\n\
             - **stock**: thaw, demand paging (kernel swap readahead as configured).\n\
             - **torpor**: `procswap::prefetch_with` (stock backend: swap-slot-ordered `MADV_WILLNEED` in 16 MiB \
             batches, pipelined with a 2-thread `process_vm_readv` mapping pass), then thaw, then the same touch.\n\n\
             Stock and torpor alternate (stock, torpor, stock, torpor…) on the same child, so both see the same swap \
             layout and machine state; every pair is one criterion sample of each variant (criterion's \
             `iter_custom`; its own report is in `target/criterion`). The first pair of each criterion benchmark \
             (quick mode: of each size) is a warm-up and is excluded here. The swap layout is the one the first \
             purge of a child wrote (address order, contiguous slots): after a read-only resume the pages stay \
             in the swap cache with their slots, so later purges drop them without rewriting (purge time falls \
             from e.g. 0.3 s to 0.1 s at 256 MiB) and every timed resume reads the same slots. The I/O floor is the same number of bytes read sequentially \
             with `O_DIRECT` in 4 MiB requests from a written (random data, fsynced, page cache dropped) file on \
             the swap file's filesystem, 3 times per size.\n"
        );
    }

    /// The machine, the suspend method and the load.
    fn md_machine(&self, o: &mut String, ctx: &RunContext) {
        let m = &ctx.machine;
        let _ = writeln!(o, "## Machine\n");
        let _ = writeln!(o, "| | |\n|---|---|");
        o.push_str(&m.markdown_rows());
        let _ = writeln!(o, "| page-cluster | `{}` |", ctx.page_cluster);
        let _ = writeln!(
            o,
            "| suspend / memcg | {} |",
            self.subjects.first().map(|s| s.1.as_str()).unwrap_or("-")
        );
        let _ = writeln!(
            o,
            "| load average | before {:.2} {:.2} {:.2}; after {:.2} {:.2} {:.2} |",
            ctx.load_before.0,
            ctx.load_before.1,
            ctx.load_before.2,
            ctx.load_after.0,
            ctx.load_after.1,
            ctx.load_after.2
        );
        let _ = writeln!(o);
    }

    /// The results table, one row per size.
    fn md_results(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "## Results (seconds; median, min–max over interleaved pairs)\n"
        );
        let _ = writeln!(
            o,
            "| size | pairs | stock median | stock min–max | torpor median | torpor min–max | ratio stock/torpor (medians) | per-pair ratio median (min–max) | I/O floor median (min–max) | torpor / floor |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
        for mib in self.sizes() {
            let s = self.summary(mib);
            let med = |x: &Option<Spread>| {
                x.map(|x| format!("{:.3}", x.median))
                    .unwrap_or_else(|| "-".into())
            };
            let mm = |x: &Option<Spread>| {
                x.map(|x| format!("{:.3}–{:.3}", x.min, x.max))
                    .unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                o,
                "| {mib} MiB | {} | {} | {} | {} | {} | **{}** | {} | {} | {} |",
                s.stock.map(|x| x.n).unwrap_or(0),
                med(&s.stock),
                mm(&s.stock),
                med(&s.torpor),
                mm(&s.torpor),
                s.ratio_of_medians
                    .map(|r| format!("{r:.2}×"))
                    .unwrap_or_else(|| "-".into()),
                s.pair_ratio
                    .map(|r| format!("{:.2}× ({:.2}–{:.2})", r.median, r.min, r.max))
                    .unwrap_or_else(|| "-".into()),
                s.floor
                    .map(|f| format!("{:.3} ({:.3}–{:.3})", f.median, f.min, f.max))
                    .unwrap_or_else(|| "-".into()),
                s.torpor
                    .zip(s.floor)
                    .map(|(t, f)| format!("{:.2}×", t.median / f.median))
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }

    /// The breakdown table (faults, prefetch and touch times, rates).
    fn md_breakdown(&self, o: &mut String) {
        let _ = writeln!(o, "\nBreakdown (medians):\n");
        let _ = writeln!(o, "| size | stock major faults | torpor prefetch | torpor touch after thaw | torpor major faults | MB/s stock | MB/s torpor | MB/s floor |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
        for mib in self.sizes() {
            let s = self.summary(mib);
            let mbs = |x: Option<Spread>| {
                x.map(|x| format!("{:.0}", (mib * MIB) as f64 / 1e6 / x.median))
                    .unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                o,
                "| {mib} MiB | {} | {} | {} | {} | {} | {} | {} |",
                s.stock_majflt_median
                    .map(|x| format!("{x:.0}"))
                    .unwrap_or_else(|| "-".into()),
                s.torpor_prefetch
                    .map(|x| format!("{:.3} s", x.median))
                    .unwrap_or_else(|| "-".into()),
                s.torpor_touch
                    .map(|x| format!("{:.3} s", x.median))
                    .unwrap_or_else(|| "-".into()),
                s.torpor_majflt_median
                    .map(|x| format!("{x:.0}"))
                    .unwrap_or_else(|| "-".into()),
                mbs(s.stock),
                mbs(s.torpor),
                mbs(s.floor),
            );
        }
    }

    /// The proof that memory was out before every timed resume.
    fn md_proofs(&self, o: &mut String) {
        let worst = |f: &dyn Fn(&Proof) -> u64| {
            self.measurements
                .iter()
                .map(|m| f(&m.proof))
                .max()
                .unwrap_or(0)
        };
        let _ = writeln!(o, "\n## Memory was out before every timed resume\n");
        let _ = writeln!(
            o,
            "Checked after each purge, before each of the {} timed resumes (thresholds: area present ≤ 0.1% + 8 pages, \
             swapped ≥ 99%, memcg usage ≤ 8 MiB + N/128, the memcg's own `swapcached` ≤ 1 MiB — system SwapCached ≤ 8 MiB \
             where the memcg does not report it —; a purge is retried up to 3 times, then the bench fails). System \
             SwapCached is recorded too; above a few MiB it is other processes' swap cache (the child's memcg had none). Worst values seen: area present pages {}, whole-process present anon pages {}, \
             memcg usage {} KiB, memcg swapcached {} KiB, system SwapCached {} KiB; purges needing a retry: {}. \
             Data verified intact (per-MiB checksums) after all cycles for: {:?} MiB.\n",
            self.measurements.len(),
            worst(&|p| p.area_present_pages),
            worst(&|p| p.process_present_anon_pages),
            worst(&|p| p.memcg_usage_bytes) / 1024,
            worst(&|p| p.memcg_swapcached_bytes.unwrap_or(0)) / 1024,
            worst(&|p| p.system_swapcached_bytes) / 1024,
            self.measurements.iter().filter(|m| m.proof.purge_attempts > 1).count(),
            self.verified,
        );
    }

    /// Every timed resume, in run order, and the I/O floor reads.
    fn md_all_runs(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "<details><summary>All timed resumes, in run order (seconds)</summary>\n"
        );
        let _ = writeln!(o, "| size | pair | warm-up | stock | stock majflt | torpor | torpor prefetch | torpor touch | stock/torpor |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
        for s in self
            .measurements
            .iter()
            .filter(|m| m.variant == Variant::Stock)
        {
            if let Some(t) = self
                .measurements
                .iter()
                .find(|t| t.variant == Variant::Torpor && t.mib == s.mib && t.pair == s.pair)
            {
                let _ = writeln!(
                    o,
                    "| {} MiB | {} | {} | {:.3} | {} | {:.3} | {:.3} | {:.3} | {:.2}× |",
                    s.mib,
                    s.pair,
                    if s.warmup { "yes" } else { "" },
                    s.seconds,
                    s.child_majflt,
                    t.seconds,
                    t.prefetch_seconds.unwrap_or(0.0),
                    t.touch_seconds,
                    s.seconds / t.seconds
                );
            }
        }
        let _ = writeln!(o, "\n{}\n\n</details>\n", floor_reads(&self.floors));
    }
}

/// The I/O floor reads (size in MiB, seconds) as one sentence, in run order.
pub fn floor_reads(floors: &[(u64, f64)]) -> String {
    let reads: Vec<String> = floors
        .iter()
        .map(|f| format!("{} MiB {:.3}", f.0, f.1))
        .collect();
    format!("I/O floor reads, in run order: {}.", reads.join(", "))
}

/// What the results file needs besides the record.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub date: String,
    pub quick: bool,
    pub machine: Machine,
    pub load_before: (f64, f64, f64),
    pub load_after: (f64, f64, f64),
    pub wall_seconds: f64,
    pub page_cluster: String,
}

impl RunContext {
    pub fn start(quick: bool) -> Result<RunContext> {
        let date = Command::new("date")
            .arg("+%Y-%m-%d %H:%M:%S %Z")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown date".into());
        Ok(RunContext {
            date,
            quick,
            machine: Machine::probe()?,
            load_before: loadavg(),
            load_after: (f64::NAN, f64::NAN, f64::NAN),
            wall_seconds: 0.0,
            page_cluster: std::fs::read_to_string("/proc/sys/vm/page-cluster")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        })
    }
}

impl Record {
    /// The "3× faster than stock at 1 GiB" verdict, with the arithmetic that bounds it.
    pub fn target_verdict(&self, target: f64, mib: u64) -> String {
        let s = self.summary(mib);
        let (Some(stock), Some(torpor)) = (s.stock, s.torpor) else {
            return format!("Target ({target:.0}× at {mib} MiB): NOT MEASURED in this run.");
        };
        let ratio = stock.median / torpor.median;
        let mut o = format!(
            "Target ({target:.0}× faster than stock at {mib} MiB): **{}** — median stock {:.3} s / median torpor {:.3} s = {:.2}× \
             (per-pair ratios {}).",
            if ratio >= target { "MET" } else { "NOT MET" },
            stock.median,
            torpor.median,
            ratio,
            s.pair_ratio.map(|r| format!("{:.2}–{:.2}", r.min, r.max)).unwrap_or_else(|| "-".into()),
        );
        if let Some(f) = s.floor {
            let _ = write!(
                o,
                " The I/O floor for {mib} MiB is {:.3} s, so torpor runs at {:.2}× the floor and the best any prefetch \
                 could do against this stock time is about {:.2}×.",
                f.median,
                torpor.median / f.median,
                stock.median / f.median
            );
            if ratio < target {
                if stock.median / f.median < target {
                    let _ = write!(
                        o,
                        " Stock demand paging is itself within {target:.0}× of the device's sequential O_DIRECT rate here \
                         (kernel swap readahead turns the in-order touch into mostly sequential reads), so {target:.0}× is \
                         out of reach on this machine's storage even for a prefetch that ran exactly at the floor."
                    );
                } else {
                    let _ = write!(
                        o,
                        " A floor-speed prefetch would meet it: torpor's overhead above the floor ({:.3} s: prefetch {}, \
                         touch after thaw {}) is what misses it.",
                        torpor.median - f.median,
                        s.torpor_prefetch.map(|x| format!("{:.3} s", x.median)).unwrap_or_else(|| "-".into()),
                        s.torpor_touch.map(|x| format!("{:.3} s", x.median)).unwrap_or_else(|| "-".into()),
                    );
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn floor_reads_in_run_order() {
        assert_eq!(
            super::floor_reads(&[(64, 0.1234), (128, 0.5)]),
            "I/O floor reads, in run order: 64 MiB 0.123, 128 MiB 0.500."
        );
        assert_eq!(super::floor_reads(&[]), "I/O floor reads, in run order: .");
    }
}
