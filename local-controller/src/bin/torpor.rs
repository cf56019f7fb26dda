//! `torpor`: command-line front end.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use procswap::kmod::Kmod;
use procswap::{
    select_backend, BackendPref, Freezer, FreezerPref, InspectOptions, Inspection, PrefetchOptions,
    PrefetchReport, PurgeOptions, PurgeReport, WorkingSet, WsMethod,
};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `torpor stop`.
#[derive(clap::Args)]
struct StopArgs {
    name: String,
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Override the app's purge method for this Stop: ordered (torpor's) | kernel (stock
    /// Linux: the kernel reclaims the app's memory cgroup; process apps only).
    #[arg(long, value_parser = ["ordered", "kernel"])]
    purge: Option<String>,
}

#[derive(Parser)]
#[command(
    name = "torpor",
    version,
    about = "Fast suspend/resume of idle application servers"
)]
struct Cli {
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// torpord's API socket (apps, start, stop, status).
    #[arg(long, global = true, env = "TORPOR_SOCKET", default_value = local_controller::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List torpord's apps and their states.
    Apps,
    /// Ask torpord to start (resume or cold-start) an app; returns once it is ready.
    Start {
        name: String,
        /// Seconds to wait for torpord's answer.
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
        /// Override the configured prefetch for this Start: process apps loading-set | full |
        /// working-set-only | none; vm apps loading-set | priority | full | none.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(local_controller::config::start_prefetch_names()))]
        prefetch: Option<String>,
    },
    /// Ask torpord to stop (freeze, purge) an app.
    Stop(StopArgs),
    /// torpord's health, or one app's full status.
    Status { name: Option<String> },
    /// Show the torpor kernel module's ABI version and features (GET_VERSION ioctl).
    Module {
        /// Device node.
        #[arg(long, default_value = procswap::uapi::TORPOR_DEV_PATH)]
        device: PathBuf,
    },
    /// Say which backend and which working-set recorder run on this host.
    Backend {
        #[arg(long, default_value = "auto")]
        backend: BackendPref,
    },
    /// VMAs and page states (present, swapped, unpopulated, file) of a process or of every process in a cgroup.
    Inspect {
        /// A pid, or a cgroup directory (every process in its cgroup.procs).
        target: String,
        /// List every VMA (default: only VMAs holding present or swapped pages).
        #[arg(long)]
        all_vmas: bool,
        /// Do not list VMAs at all.
        #[arg(long, conflicts_with = "all_vmas")]
        no_vmas: bool,
        /// Include every swapped page (address, swap type, slot) in the JSON output.
        #[arg(long)]
        offsets: bool,
    },
    /// Page a frozen/stopped process out completely and free its memory (memcg reclaim), then verify.
    Purge {
        /// A pid, or a cgroup directory (every process in its cgroup.procs).
        target: String,
        /// Purge even if the process is neither frozen nor stopped.
        #[arg(long)]
        force: bool,
        /// Skip the memcg reclaim (pages stay in the swap cache).
        #[arg(long)]
        no_reclaim: bool,
        /// Reclaim the target's memory cgroup even if other processes share it (they lose memory too).
        #[arg(long, conflicts_with = "no_reclaim")]
        reclaim_shared: bool,
        #[arg(long, default_value = "auto")]
        backend: BackendPref,
    },
    /// Bring swapped pages back (swap-slot order, reads ahead, mapping pass) before a thaw.
    Prefetch {
        /// A pid, or a cgroup directory (every process in its cgroup.procs).
        target: String,
        /// Mapping-pass threads (0: reads only, no PTEs installed).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Stop after this many bytes (e.g. 64M, 1G).
        #[arg(long, value_parser = procswap::units::parse_size)]
        budget: Option<u64>,
        /// Never let MemAvailable drop below this (stop and report).
        #[arg(long, value_parser = procswap::units::parse_size, default_value = "256M")]
        free_floor: u64,
        /// Bytes per read-ahead batch.
        #[arg(long, value_parser = procswap::units::parse_size, default_value = "16M")]
        batch: u64,
        /// A recorded working set (JSON from `torpor record-ws`): fetched first.
        #[arg(long)]
        working_set: Option<PathBuf>,
        /// Fetch only the working set.
        #[arg(long, requires = "working_set")]
        working_set_only: bool,
        #[arg(long, default_value = "auto")]
        backend: BackendPref,
    },
    /// Freeze a process or cgroup (cgroup v2 cgroup.freeze, v1 freezer, or SIGSTOP).
    Freeze {
        /// A pid, or a cgroup directory.
        target: String,
        #[arg(long, value_enum, default_value = "auto")]
        method: Method,
        /// Seconds to wait for the kernel to confirm.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Thaw a process or cgroup frozen by `torpor freeze`.
    Thaw {
        /// A pid, or a cgroup directory.
        target: String,
        #[arg(long, value_enum, default_value = "auto")]
        method: Method,
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Record which pages a running process touches (working set), as JSON.
    RecordWs {
        pid: i32,
        /// Recording time in seconds (DAMON, page_idle).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// auto (what the kernel offers), damon, page-idle, or residency (present pages of a
        /// process purged at its last suspend).
        #[arg(long, default_value = "auto")]
        method: String,
        /// Write the working set here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Method {
    /// The process's own cgroup2 group, else its v1 freezer cgroup, else signals.
    Auto,
    V2,
    V1,
    Signal,
}

impl From<Method> for FreezerPref {
    fn from(m: Method) -> Self {
        match m {
            Method::Auto => FreezerPref::Auto,
            Method::V2 => FreezerPref::CgroupV2,
            Method::V1 => FreezerPref::CgroupV1,
            Method::Signal => FreezerPref::Signal,
        }
    }
}

/// A command's target: one pid, or the processes of a cgroup.
enum Target {
    Pid(i32),
    Cgroup(PathBuf),
}

fn parse_target(s: &str) -> Result<Target> {
    if let Ok(pid) = s.parse::<i32>() {
        return Ok(Target::Pid(pid));
    }
    let p = Path::new(s);
    if p.join("cgroup.procs").exists() {
        return Ok(Target::Cgroup(p.to_owned()));
    }
    bail!(
        "{s:?} is neither a pid nor a cgroup directory (no {}/cgroup.procs)",
        p.display()
    )
}

fn target_pids(t: &Target) -> Result<Vec<i32>> {
    match t {
        Target::Pid(p) => Ok(vec![*p]),
        Target::Cgroup(d) => {
            let pids = procswap::cgroup::procs(d)?;
            if pids.is_empty() {
                bail!("cgroup {} has no processes", d.display());
            }
            Ok(pids)
        }
    }
}

/// indicatif bar on stderr, hidden when stderr is not a terminal.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        let pb = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>14} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {elapsed}",
            )
            .expect("progress template")
            .progress_chars("=> "),
        );
        Bar(pb)
    }
}

impl procswap::Progress for Bar {
    fn phase(&self, name: &str, total: u64) {
        self.0.set_message(name.to_string());
        self.0.set_length(total);
        self.0.set_position(0);
    }
    fn update(&self, done: u64) {
        self.0.set_position(done);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_inspection(i: &Inspection, all_vmas: bool, no_vmas: bool) {
    let ps = i.page_size;
    let t = &i.totals;
    println!("pid {} ({})", i.pid, i.comm);
    if !no_vmas {
        print_vmas(i, all_vmas);
    }
    println!(
        "total: {} VMAs, {} mapped; present {} (file {}, anon {}); swapped {}; unpopulated {}",
        i.vmas.len(),
        mib(t.pages * ps),
        mib(t.present * ps),
        mib(t.file_pages * ps),
        mib(t.present_anon * ps),
        mib(t.swapped * ps),
        mib(t.unpopulated * ps)
    );
    let c = &i.contiguity;
    if t.swapped > 0 {
        println!(
            "swap: {} extents in address order, {} runs in slot order, span {} ({} slots {}..{})",
            c.extents,
            c.offset_runs,
            mib(c.span_pages * ps),
            c.span_pages,
            c.min_offset.unwrap_or(0),
            c.max_offset.unwrap_or(0)
        );
    }
    if let Some(m) = &i.memcg {
        println!(
            "memcg {}: usage {}, swap cache {}",
            m.memcg.dir().display(),
            mib(m.usage_bytes),
            m.swapcached_bytes.map(mib).unwrap_or_else(|| "n/a".into())
        );
    }
    match &i.kinds {
        Some(k) => {
            print_kinds(k);
            if !no_vmas {
                print_objects(i, all_vmas);
            }
        }
        None => println!(
            "kinds: {}",
            i.kinds_note.as_deref().unwrap_or("not available")
        ),
    }
}

/// The VMA table of an inspection: VMAs holding present or swapped pages (all with `all`).
fn print_vmas(i: &Inspection, all: bool) {
    println!(
        "{:>16} {:>16} {:4} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}  mapping",
        "start", "end", "perm", "size KiB", "present", "file", "swapped", "unpop", "extents"
    );
    for v in i
        .vmas
        .iter()
        .filter(|v| all || v.present > 0 || v.swapped > 0)
    {
        let flags: Vec<&str> = [
            (v.locked, "mlocked"),
            (v.hugetlb, "hugetlb"),
            (v.shared, "shared"),
            (v.pfnmap, "pfnmap"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, f)| *f)
        .collect();
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", flags.join(","))
        };
        println!(
            "{:>16x} {:>16x} {:4} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}  {}{}",
            v.start,
            v.end,
            v.perms,
            (v.end - v.start) / 1024,
            v.present,
            v.file_pages,
            v.swapped,
            v.unpopulated,
            v.swap_extents,
            v.path,
            flags
        );
    }
    println!("(page counts in {} KiB pages)", i.page_size / 1024);
}

/// An inspection's memory objects, largest first: the first 20, or all of them with `all`.
fn print_objects(i: &Inspection, all: bool) {
    let ps = i.page_size;
    let mut objs: Vec<_> = i.objects.iter().collect();
    objs.sort_by_key(|o| std::cmp::Reverse((o.resident_pages, o.swapped_pages, o.interest_pages)));
    let shown = if all { objs.len() } else { objs.len().min(20) };
    for o in &objs[..shown] {
        println!(
            "    {:5} {:>10} resident of {:>10}{}  {}",
            o.kind.as_str(),
            mib(o.resident_pages * ps),
            mib(o.interest_pages * ps),
            o.swapped_pages
                .map(|p| format!(", {} on swap", mib(p * ps)))
                .unwrap_or_default(),
            o.path
        );
    }
    if shown < objs.len() {
        println!(
            "    ... {} more objects (--all-vmas lists them)",
            objs.len() - shown
        );
    }
}

/// Per-kind table: anon / shmem / file, resident (mapped) and out.
fn print_kinds(k: &procswap::ByKind<procswap::KindUsage>) {
    for kind in procswap::MemKind::ALL {
        let u = k.get(kind);
        let out = match kind {
            procswap::MemKind::File => "not cached",
            _ => "swapped",
        };
        let objs = if kind == procswap::MemKind::Anon {
            String::new()
        } else {
            format!(" in {} objects", u.objects)
        };
        println!(
            "  {:5}: resident {} (mapped {}), {out} {}{objs}",
            kind.as_str(),
            mib(u.resident_bytes),
            mib(u.mapped_bytes),
            mib(u.out_bytes)
        );
    }
}

fn print_purge(r: &PurgeReport) {
    let ps = r.page_size;
    println!(
        "pid {}: purged with the {} backend ({:?}{})",
        r.pid,
        r.backend,
        r.quiescence,
        if r.forced { ", forced" } else { "" }
    );
    println!(
        "  paged out {} in {:.3} s ({:.0} MB/s); page-out {:.3} s, reclaim {}",
        mib(r.paged_out_bytes),
        r.seconds,
        r.mb_per_s,
        r.pageout_seconds,
        reclaim_note(r)
    );
    println!(
        "  before: present {} swapped {}; after: present {} (file {}, anon {}), swapped {}",
        mib(r.before.present * ps),
        mib(r.before.swapped * ps),
        mib(r.resident_bytes),
        mib(r.resident_file_bytes),
        mib(r.resident_anon_bytes),
        mib(r.swapped_bytes)
    );
    println!(
        "  swap cache: target memcg {}, system SwapCached change {:+.1} MiB; swap extents {}",
        r.swap_cache_bytes.map(mib).unwrap_or_else(|| "n/a".into()),
        r.system_swap_cached_delta as f64 / (1u64 << 20) as f64,
        r.contiguity.extents
    );
    if r.refused_bytes > 0 {
        println!(
            "  the kernel refused {} of eligible ranges",
            mib(r.refused_bytes)
        );
    }
    if let (Some(sb), Some(ev)) = (&r.snapshot_bytes, &r.evicted_bytes) {
        println!(
            "  by kind (resident at Stop -> evicted): anon {} -> {}, shmem {} -> {}, file {} -> {}",
            mib(sb.anon),
            mib(ev.anon),
            mib(sb.shmem),
            mib(ev.shmem),
            mib(sb.file),
            mib(ev.file)
        );
    }
    if let Some(k) = &r.kinds_after {
        println!("  after:");
        print_kinds(k);
    }
    if let Some(l) = &r.layout {
        println!(
            "  layout: loading set {} pages ({} on swap, {} already were) in {} swap extents ({} in touch order), rest {} pages in {} extents; ordered page-out {:.3} s",
            l.loading_set_pages,
            l.loading_set_swapped_pages,
            l.already_swapped_pages,
            l.loading_set_extents,
            l.loading_set_touch_order_extents,
            l.rest_pages,
            l.rest_extents,
            l.first_seconds
        );
    }
    for n in &r.kind_notes {
        println!("  note: {n}");
    }
    if r.resident_bytes > 0 {
        print_unpurged(&r.unpurged);
    }
}

/// What a purge's reclaim did (or why it was skipped).
fn reclaim_note(r: &PurgeReport) -> String {
    match (&r.reclaim, &r.reclaim_skipped) {
        (Some(o), _) => format!(
            "{} of {} {:.3} s ({} -> {}){}",
            o.method,
            o.cgroup.display(),
            o.seconds,
            mib(o.usage_before),
            mib(o.usage_after),
            o.incomplete
                .iter()
                .chain(o.settle.iter())
                .map(|s| format!(" [{s}]"))
                .collect::<String>()
        ),
        (None, Some(why)) => format!("skipped: {why}"),
        (None, None) => "skipped".into(),
    }
}

/// What a purge left resident, and why, VMA by VMA.
fn print_unpurged(u: &procswap::purge::Unpurged) {
    println!(
            "  not purged: mlocked {}, hugetlb {}, special {}, shared {}, file {}, anon {} (of which COW-shared {})",
            mib(u.locked_bytes),
            mib(u.hugetlb_bytes),
            mib(u.special_bytes),
            mib(u.shared_bytes),
            mib(u.file_bytes),
            mib(u.anon_bytes),
            mib(u.anon_shared_bytes)
        );
    for v in u
        .vmas
        .iter()
        .filter(|v| v.reason != "file pages (mapped elsewhere too, or re-read)")
    {
        println!(
            "    {:x}-{:x} {}: {} ({} KiB)",
            v.start,
            v.end,
            v.path,
            v.reason,
            v.resident_bytes / 1024
        );
    }
}

fn print_prefetch(r: &PrefetchReport) {
    let ps = r.page_size;
    println!("pid {}: prefetched with the {} backend", r.pid, r.backend);
    println!(
        "  read {} in {:.3} s ({:.0} MB/s, {} runs of consecutive slots); mapped {} pages{}",
        mib(r.read_issued_bytes),
        r.seconds,
        r.mb_per_s,
        r.read_runs,
        r.mapped_pages,
        if r.map_failed_pages > 0 {
            format!(" ({} failed)", r.map_failed_pages)
        } else {
            String::new()
        }
    );
    if let Some(m) = &r.working_set_method {
        println!(
            "  working set ({m}): {} first",
            mib(r.working_set_pages * ps)
        );
    }
    println!(
        "  swapped before {}, candidates {}, still swapped {}, present now {}",
        mib(r.swapped_before_pages * ps),
        mib(r.candidate_pages * ps),
        mib(r.still_swapped_pages * ps),
        mib(r.present_after_pages * ps)
    );
    let k = &r.restored_bytes;
    println!(
        "  restored by kind: anon {}, shmem {}, file {}",
        mib(k.anon),
        mib(k.shmem),
        mib(k.file)
    );
    for sk in &r.restore_skipped {
        println!(
            "  skipped {} {}: {} ({})",
            sk.kind,
            sk.path,
            sk.reason,
            mib(sk.bytes)
        );
    }
    for n in &r.restore_notes {
        println!("  note: {n}");
    }
    if let Some(s) = &r.stopped {
        println!("  STOPPED EARLY: {s:?}");
    }
}

fn freezers(target: &Target, method: Method) -> Result<Vec<Freezer>> {
    match (target, method) {
        (Target::Cgroup(d), Method::Signal) => Ok(target_pids(&Target::Cgroup(d.clone()))?
            .into_iter()
            .map(Freezer::Signal)
            .collect()),
        (Target::Cgroup(d), _) => Ok(vec![Freezer::for_cgroup(d)?]),
        (Target::Pid(p), m) => {
            // Validate the pid first (pid 1, kernel threads, zombies, privilege) for every method.
            procswap::Target::open(*p, "freeze/thaw")?;
            Ok(vec![Freezer::for_pid(*p, m.into())?])
        }
    }
}

fn freeze_thaw(json: bool, target: &str, method: Method, timeout: f64, freeze: bool) -> Result<()> {
    let t = parse_target(target)?;
    let timeout = Duration::from_secs_f64(timeout);
    let mut done = Vec::new();
    for f in freezers(&t, method)? {
        if freeze {
            f.freeze(timeout)
                .with_context(|| format!("freeze via {f}"))?;
        } else {
            f.thaw(timeout).with_context(|| format!("thaw via {f}"))?;
        }
        done.push(f);
    }
    let verb = if freeze { "frozen" } else { "thawed" };
    if json {
        print_json(&serde_json::json!({ "action": verb, "via": done }))?;
    } else {
        for f in &done {
            println!("{verb}: {f}");
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("torpor: {e:#}");
            // 2: refused before any change (bad target, privilege, no swap, not frozen); 1: failed.
            let refusal = e.chain().any(|c| {
                c.downcast_ref::<procswap::Error>()
                    .is_some_and(|pe| pe.is_refusal())
            });
            std::process::ExitCode::from(if refusal { 2 } else { 1 })
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let json = cli.json;
    match cli.cmd {
        Cmd::Apps => daemon::apps(&cli.socket, json),
        Cmd::Start {
            ref name,
            timeout,
            ref prefetch,
        } => daemon::start(&cli.socket, json, name, timeout, prefetch.clone()),
        Cmd::Stop(a) => daemon::stop(&cli.socket, json, &a),
        Cmd::Status { ref name } => daemon::status(&cli.socket, json, name.as_deref()),
        Cmd::Module { device } => module(json, &device),
        Cmd::Backend { backend } => backend_cmd(json, backend),
        Cmd::Inspect {
            target,
            all_vmas,
            no_vmas,
            offsets,
        } => {
            let opts = InspectOptions {
                swapped_pages: offsets,
            };
            inspect(json, &target, opts, all_vmas, no_vmas)
        }
        Cmd::Purge {
            target,
            force,
            no_reclaim,
            reclaim_shared,
            backend,
        } => {
            let opts = PurgeOptions {
                force,
                reclaim: !no_reclaim,
                reclaim_shared,
                ..Default::default()
            };
            purge(json, &target, backend, &opts)
        }
        Cmd::Prefetch {
            target,
            threads,
            budget,
            free_floor,
            batch,
            working_set,
            working_set_only,
            backend,
        } => {
            let opts = PrefetchOptions {
                threads,
                batch_bytes: batch,
                budget_bytes: budget,
                free_floor_bytes: free_floor,
                working_set: working_set.as_deref().map(read_working_set).transpose()?,
                working_set_only,
                ..Default::default()
            };
            prefetch(json, &target, backend, &opts)
        }
        Cmd::Freeze {
            target,
            method,
            timeout,
        } => freeze_thaw(json, &target, method, timeout, true),
        Cmd::Thaw {
            target,
            method,
            timeout,
        } => freeze_thaw(json, &target, method, timeout, false),
        Cmd::RecordWs {
            pid,
            duration,
            method,
            output,
        } => record_ws(json, pid, duration, &method, output.as_deref()),
    }
}

/// `inspect`, `purge`, `prefetch`: `f` on every pid of the target; with `--json` the report of
/// a pid, or the list of a cgroup's reports.
fn each_pid<T: serde::Serialize>(
    json: bool,
    target: &str,
    mut f: impl FnMut(i32) -> Result<T>,
) -> Result<()> {
    let t = parse_target(target)?;
    let mut out = Vec::new();
    for pid in target_pids(&t)? {
        out.push(f(pid)?);
    }
    if json {
        match t {
            Target::Pid(_) => print_json(&out[0])?,
            Target::Cgroup(_) => print_json(&out)?,
        }
    }
    Ok(())
}

/// `torpor inspect`.
fn inspect(
    json: bool,
    target: &str,
    opts: InspectOptions,
    all_vmas: bool,
    no_vmas: bool,
) -> Result<()> {
    each_pid(json, target, |pid| {
        let i = procswap::inspect(pid, opts).with_context(|| format!("inspect pid {pid}"))?;
        if !json {
            print_inspection(&i, all_vmas, no_vmas);
        }
        Ok(i)
    })
}

/// `torpor purge`.
fn purge(json: bool, target: &str, backend: BackendPref, opts: &PurgeOptions) -> Result<()> {
    let b = select_backend(backend)?;
    each_pid(json, target, |pid| {
        let bar = Bar::new();
        let r = procswap::purge_with(b.as_ref(), pid, opts, &bar)
            .with_context(|| format!("purge pid {pid}"))?;
        drop(bar);
        if !json {
            print_purge(&r);
        }
        Ok(r)
    })
}

/// `torpor module`: the module's ABI version and features.
fn module(json: bool, device: &Path) -> Result<()> {
    let k = Kmod::open_path(device)?;
    let v = k.version();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "device": device,
                "abi_version": v.abi_version,
                "struct_size": v.size,
                "features": v.features,
                "feature_names": v.feature_names(),
                "release": v.release_str(),
            })
        );
    } else {
        println!("device:      {}", device.display());
        println!("release:     {}", v.release_str());
        println!("abi version: {} (struct size {})", v.abi_version, v.size);
        println!(
            "features:    {:#x} [{}]",
            v.features,
            v.feature_names().join(", ")
        );
    }
    Ok(())
}

/// `torpor backend`: the backend and working-set recorder this host runs.
fn backend_cmd(json: bool, backend: BackendPref) -> Result<()> {
    let (b, why) = procswap::backend::select_backend_explained(backend)?;
    let ws = WsMethod::describe_host();
    if json {
        print_json(&serde_json::json!({
            "backend": b.name(),
            "why": why,
            "describe": b.describe(),
            "working_set": ws,
            "working_set_method": WsMethod::detect().map(|m| m.to_string()),
        }))?;
    } else {
        println!("backend: {} ({why})", b.describe());
        println!("{ws}");
    }
    Ok(())
}

/// A working set recorded by `torpor record-ws`.
fn read_working_set(p: &Path) -> Result<WorkingSet> {
    serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("parsing working set {}", p.display()))
}

/// `torpor prefetch`.
fn prefetch(json: bool, target: &str, backend: BackendPref, opts: &PrefetchOptions) -> Result<()> {
    let b = select_backend(backend)?;
    each_pid(json, target, |pid| {
        if let Some(w) = &opts.working_set {
            if w.pid != pid {
                eprintln!(
                    "note: working set was recorded for pid {} ({}), applying it to pid {pid}",
                    w.pid, w.comm
                );
            }
        }
        let bar = Bar::new();
        let r = procswap::prefetch_with(b.as_ref(), pid, opts, &bar)
            .with_context(|| format!("prefetch pid {pid}"))?;
        drop(bar);
        if !json {
            print_prefetch(&r);
        }
        Ok(r)
    })
}

/// `torpor record-ws`.
fn record_ws(
    json: bool,
    pid: i32,
    duration: f64,
    method: &str,
    output: Option<&Path>,
) -> Result<()> {
    let ws = match method {
        "residency" => procswap::workingset::from_residency(pid)?,
        m => {
            let method = match m {
                "auto" => None,
                "damon" | "damon-vaddr" => Some(WsMethod::DamonVaddr),
                "page-idle" | "page_idle" => Some(WsMethod::PageIdle),
                other => bail!(
                    "unknown working-set method {other:?} (auto, damon, page-idle, residency)"
                ),
            };
            eprintln!("{}", WsMethod::describe_host());
            procswap::workingset::record(pid, Duration::from_secs_f64(duration), method)?
        }
    };
    let text = serde_json::to_string_pretty(&ws)?;
    match output {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
            if !json {
                println!(
                    "working set of pid {} by {}: {} regions, {}",
                    ws.pid,
                    ws.method,
                    ws.regions.len(),
                    mib(ws.bytes())
                );
            }
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// Subcommands that talk to torpord.
mod daemon {
    use anyhow::{bail, Result};
    use local_controller::client::{request, Response};
    use serde::de::DeserializeOwned;
    use std::path::Path;
    use std::time::Duration;
    use torpor_api::{self as api, paths, StartAnswer, StopAnswer, VmStart};

    fn call(
        socket: &Path,
        method: &str,
        path: &str,
        timeout: f64,
        body: Option<&str>,
    ) -> Result<Response> {
        Ok(request(
            socket,
            method,
            path,
            body,
            Duration::from_secs_f64(timeout),
        )?)
    }

    /// The answer as `T`; `None` when `--json` printed it already.
    fn answer<T: DeserializeOwned>(r: &Response, json: bool) -> Result<Option<T>> {
        if !r.ok() {
            if json {
                println!("{}", String::from_utf8_lossy(&r.body));
            }
            let (code, msg) = match r.error() {
                Some(e) => (e.code, e.message),
                None => ("?".into(), String::from_utf8_lossy(&r.body).into_owned()),
            };
            bail!("torpord answered {} {code}: {msg}", r.status)
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&r.json()?)?);
            return Ok(None);
        }
        Ok(Some(r.parse()?))
    }

    fn mib(b: impl Into<Option<u64>>) -> String {
        b.into()
            .map(|b| format!("{:.1}", b as f64 / (1u64 << 20) as f64))
            .unwrap_or_else(|| "-".into())
    }

    fn secs(s: impl Into<Option<f64>>) -> String {
        s.into()
            .map(|s| format!("{s:.3}"))
            .unwrap_or_else(|| "-".into())
    }

    /// A JSON-like rendering of an optional number (`null` when absent).
    fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map(|x| x.to_string()).unwrap_or_else(|| "null".into())
    }

    pub fn apps(socket: &Path, json: bool) -> Result<()> {
        let r = call(socket, "GET", paths::APPS, 30.0, None)?;
        let Some(list) = answer::<api::AppList>(&r, json)? else {
            return Ok(());
        };
        println!(
            "{:<16} {:<10} {:>8} {:>10} {:>10} {:>8} {:>8} {:>9}  OVERLOAD",
            "APP", "STATE", "PID", "RSS_MiB", "SWAP_MiB", "STARTS", "STOPS", "LAST_S"
        );
        for a in &list.apps {
            let ov = &a.overload;
            let flags = [("sustained", ov.sustained), ("hotspot", ov.hotspot)]
                .iter()
                .filter(|(_, b)| *b)
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(",");
            println!(
                "{:<16} {:<10} {:>8} {:>10} {:>10} {:>8} {:>8} {:>9}  {}",
                a.name,
                format!("{}{}", a.state, if a.busy { "*" } else { "" }),
                a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                mib(a.memory.resident_bytes),
                mib(a.memory.swapped_bytes),
                a.counters.starts,
                a.counters.stops,
                secs(a.last_start.as_ref().map(|t| t.total_s)),
                if flags.is_empty() {
                    "-".to_string()
                } else {
                    flags
                },
            );
        }
        Ok(())
    }

    pub fn start(
        socket: &Path,
        json: bool,
        name: &str,
        timeout: f64,
        prefetch: Option<String>,
    ) -> Result<()> {
        let req = api::StartRequest { prefetch };
        let body = (req != api::StartRequest::default())
            .then(|| serde_json::to_string(&req))
            .transpose()?;
        let r = call(
            socket,
            "POST",
            &paths::start(name),
            timeout,
            body.as_deref(),
        )?;
        let Some(a) = answer::<StartAnswer>(&r, json)? else {
            return Ok(());
        };
        let s = match a {
            StartAnswer::AlreadyRunning(a) => {
                println!(
                    "{name}: already running, ready (probe {}s)",
                    secs(a.timing.probe_s)
                );
                return Ok(());
            }
            StartAnswer::Started(s) => s,
        };
        let t = &s.timing;
        if s.cold {
            println!(
                "{name}: ready (cold start: spawn {}s, probe {}s, total {}s)",
                secs(t.spawn_s),
                secs(t.probe_s),
                secs(t.total_s)
            );
        } else {
            println!(
                "{name}: ready (prefetch {}s [{} MiB], thaw {}s, probe {}s, total {}s)",
                secs(t.prefetch_s),
                mib(t.prefetch_bytes),
                secs(t.thaw_s),
                secs(t.probe_s),
                secs(t.total_s)
            );
        }
        match &s.vm {
            None => {}
            Some(VmStart::Cold(c)) => println!(
                "  vm: mode {} (maps: ?), prefetch null ms, null pages (- MiB) before cont, null free pages skipped, ready null ms, pswpin +null",
                c.mode
            ),
            Some(VmStart::Resume(vm)) => {
                println!(
                    "  vm: mode {} (maps: {}), prefetch {} ms, {} pages ({} MiB) before cont, {} free pages skipped, ready {} ms, pswpin +{}",
                    vm.mode,
                    vm.maps,
                    vm.prefetch_ms,
                    vm.prefetched_pages,
                    mib(vm.prefetched_bytes),
                    vm.skipped_free_pages,
                    vm.ready_ms,
                    vm.pswpin_delta
                );
                for c in &vm.classes {
                    println!(
                        "    class {} {:<16} {:>9} pages fetched of {} planned",
                        c.class, c.name, c.fetched_pages, c.planned_pages
                    );
                }
            }
        }
        Ok(())
    }

    pub fn stop(socket: &Path, json: bool, a: &super::StopArgs) -> Result<()> {
        let name = &a.name;
        let body = a
            .purge
            .as_ref()
            .map(|p| serde_json::json!({ "purge": p }).to_string());
        let r = call(
            socket,
            "POST",
            &paths::stop(name),
            a.timeout,
            body.as_deref(),
        )?;
        let Some(a) = answer::<StopAnswer>(&r, json)? else {
            return Ok(());
        };
        let Some(t) = a.timing() else {
            println!("{name}: already {}", a.state());
            return Ok(());
        };
        println!(
            "{name}: {} (freeze {}s, purge {}s, total {}s{})",
            a.state(),
            secs(t.freeze_s),
            secs(t.purge_s),
            secs(t.total_s),
            match a.purge() {
                None => String::new(),
                Some(p) => format!(
                    "; {} purge: freed {} MiB, {} MiB moved to swap, {} MiB on swap{}",
                    p.method,
                    mib(p.freed_bytes),
                    mib(p.swap_moved_bytes),
                    mib(p.swapped_bytes),
                    p.reclaim_note
                        .as_ref()
                        .map(|n| format!("; {n}"))
                        .unwrap_or_default()
                ),
            }
        );
        if let Some(vm) = a.vm() {
            let e = &vm.evidence;
            println!(
                "  vm: maps {} ({}); guest RAM resident {} -> {} pages, swapped {} -> {} pages; SwapCached {} -> {} MiB",
                vm.maps,
                vm.agent_note,
                opt(e.before.guest_resident_pages),
                opt(e.after.guest_resident_pages),
                opt(e.before.guest_swapped_pages),
                opt(e.after.guest_swapped_pages),
                mib(e.before.swap_cached_bytes),
                mib(e.after.swap_cached_bytes)
            );
        }
        Ok(())
    }

    pub fn status(socket: &Path, json: bool, name: Option<&str>) -> Result<()> {
        if let Some(n) = name {
            // One app: its whole record, as torpord wrote it.
            let r = call(socket, "GET", &paths::app(n), 30.0, None)?;
            if let Some(a) = answer::<serde_json::Value>(&r, json)? {
                println!("{}", serde_json::to_string_pretty(&a)?);
            }
            return Ok(());
        }
        let r = call(socket, "GET", paths::HEALTH, 30.0, None)?;
        let Some(h) = answer::<api::Health>(&r, json)? else {
            return Ok(());
        };
        println!("torpord: {} (pool ready: {})", h.status, h.pool_ready);
        println!("  apps:      {}", h.apps);
        println!("  backend:   {} ({})", h.backend, h.backend_why);
        println!("  cgroups:   {}", h.cgroups);
        println!(
            "  reserve:   {} MiB (MemAvailable {} MiB)",
            mib(h.reserve_bytes),
            mib(h.mem_available_bytes)
        );
        println!("  uptime:    {}s", secs(h.uptime_s));
        let o = &h.host_overload;
        println!(
            "  paging:    {:.0} ops/s (sustained overload: {}, hotspot: {})",
            o.rate, o.sustained, o.hotspot
        );
        Ok(())
    }
}
