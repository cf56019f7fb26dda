//! In-guest benchmark for the module backend (run inside our VM by `make vm-bench`,
//! with swap on a throttled virtio disk): one child with N MiB of random data, resumed
//! three ways, interleaved with the order rotated every round:
//! - `stock`: thaw, then demand paging;
//! - `torpor`: procswap prefetch with the stock backend (WILLNEED + process_vm_readv pass);
//! - `torpor_kmod`: procswap prefetch with the module backend (WILLNEED + PREFETCH ioctl pass);
//!
//! then the mapping pass alone (reads finished first, so only the mapping is timed):
//! process_vm_readv vs the PREFETCH ioctl. Memory is proven out before every timed resume
//! (pagemap, memcg usage, SwapCached). Prints a table and writes markdown to
//! `$TORPOR_VMBENCH_OUT` (default /tmp/job/vmbench.md).

use anyhow::{ensure, Context, Result};
use bench::resume::{FreezerChoice, Measurement, Subject, Variant};
use bench::stats::Spread;
use procswap::backend::KmodBackend;
use procswap::{Backend, InspectOptions, StockBackend, Target};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Mapping pass alone: purge, issue WILLNEED for every swapped page (slot order), wait for the
/// reads to land in the swap cache, then time `backend.map_pages` over every page.
fn map_pass_only(subj: &mut Subject, backend: &dyn Backend) -> Result<(f64, u64, f64)> {
    subj.suspend_and_purge()?;
    let pid = subj.pid;
    let ins = procswap::inspect(
        pid,
        InspectOptions {
            swapped_pages: true,
        },
    )?;
    let mut pages = ins.swapped_pages.clone();
    pages.sort_unstable_by_key(|p| (p.swap_type, p.offset));
    let ps = procswap::sys::page_size();
    let ranges: Vec<procswap::Range> = pages
        .iter()
        .map(|p| procswap::Range {
            start: p.addr,
            len: ps,
        })
        .collect();
    let t = Target::open(pid, "vmbench map pass")?;
    let t_read = Instant::now();
    backend.read_ahead(&t, &ranges)?;
    // Wait until the swap cache holds (nearly) all of them: the reads are done.
    let want = pages.len() as u64 * ps * 98 / 100;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sc = procswap::sys::meminfo()?.swap_cached;
        if sc >= want {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "swap reads did not finish: SwapCached {sc} < {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let read_s = t_read.elapsed().as_secs_f64();
    let mut addrs: Vec<u64> = pages.iter().map(|p| p.addr).collect();
    addrs.sort_unstable();
    let t0 = Instant::now();
    let (mapped, failed) = backend.map_pages(&t, &addrs)?;
    let map_s = t0.elapsed().as_secs_f64();
    ensure!(failed == 0, "{failed} pages failed to map");
    let reply = subj.thaw_and_wait()?;
    ensure!(reply.starts_with("DONE"), "child: {reply}");
    Ok((map_s, mapped, read_s))
}

/// A map pass row: which pass, its seconds, the pages it mapped, how long the reads took before.
type MapRow = (&'static str, f64, u64, f64);

/// What the report says about the run besides its measurements.
struct Meta {
    mib: u64,
    rounds: usize,
    disk: String,
    host_load: String,
    kmod: bool,
    kmod_why: String,
    machine: String,
    desc: String,
}

fn main() -> Result<()> {
    let mib = env_u64("TORPOR_VMBENCH_MIB", 256);
    let rounds = env_u64("TORPOR_VMBENCH_ROUNDS", 5) as usize;
    let out = std::env::var("TORPOR_VMBENCH_OUT").unwrap_or_else(|_| "/tmp/job/vmbench.md".into());
    let disk = std::env::var("TORPOR_VM_DISK").unwrap_or_else(|_| "unknown".into());
    let swap = bench::machine::require_root_and_swap()?;
    // Without the module (it failed to load: e.g. built for another kernel), the stock rows
    // still count; the file says so.
    let (kmod, kmod_why) = open_kmod();
    let host_load = std::env::var("TORPOR_VMBENCH_HOST_LOAD").unwrap_or_default();
    let child = std::env::current_exe()?.with_file_name("torpor-bench-child");
    let mut subj = Subject::spawn(&child, mib, FreezerChoice::from_env()?)?;
    eprintln!(
        "vmbench: {mib} MiB child pid {} ({}), swap {:?}, disk profile {disk}, {rounds} rounds",
        subj.pid, subj.desc, swap
    );

    let variants: Vec<Variant> = if kmod.is_some() {
        vec![Variant::Stock, Variant::Torpor, Variant::TorporKmod]
    } else {
        vec![Variant::Stock, Variant::Torpor]
    };
    let ms = timed_rounds(&mut subj, &variants, rounds)?;
    let maps = map_rounds(&mut subj, kmod.as_ref(), rounds)?;
    let machine = bench::machine::Machine::probe()
        .map(|m| format!("{m:?}"))
        .unwrap_or_default();
    let meta = Meta {
        mib,
        rounds,
        disk,
        host_load,
        kmod: kmod.is_some(),
        kmod_why,
        machine,
        desc: subj.desc.clone(),
    };
    let md = markdown(&meta, &variants, &ms, &maps)?;
    std::fs::write(&out, &md).with_context(|| format!("write {out}"))?;
    write_json(&meta, &out, &ms, &maps)?;
    println!("{md}");
    Ok(())
}

/// The module backend, or none and why (then the stock rows still count).
fn open_kmod() -> (Option<KmodBackend>, String) {
    let kmod = match KmodBackend::open() {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("vmbench: torpor.ko not usable ({e:#}): stock rows only");
            None
        }
    };
    let kmod_why = if kmod.is_none() {
        std::env::var("TORPOR_VMBENCH_KMOD_WHY").unwrap_or_else(|_| "module not loaded".into())
    } else {
        String::new()
    };
    (kmod, kmod_why)
}

/// One warm-up round and `rounds` timed rounds of every variant, the order rotated each round.
fn timed_rounds(
    subj: &mut Subject,
    variants: &[Variant],
    rounds: usize,
) -> Result<Vec<Measurement>> {
    let mut ms: Vec<Measurement> = Vec::new();
    for r in 0..=rounds {
        for k in 0..variants.len() {
            let v = variants[(k + r) % variants.len()];
            let m = subj.measure(v, r, r == 0)?;
            eprintln!(
                "round {r}{} {:<12} {:>7.3} s (prefetch {:?} s, touch {:.3} s, majflt {}; proof: {} of {} pages present, memcg {} KiB, SwapCached {} KiB)",
                if r == 0 { " (warm-up)" } else { "" },
                v.name(),
                m.seconds,
                m.prefetch_seconds.map(|s| (s * 1000.0).round() / 1000.0),
                m.touch_seconds,
                m.child_majflt,
                m.proof.area_present_pages,
                m.proof.area_pages,
                m.proof.memcg_usage_bytes / 1024,
                m.proof.system_swapcached_bytes / 1024
            );
            ms.push(m);
        }
    }
    subj.verify_data()?;
    Ok(ms)
}

/// The mapping pass alone (reads already in the swap cache), each backend per round.
fn map_rounds(
    subj: &mut Subject,
    kmod: Option<&KmodBackend>,
    rounds: usize,
) -> Result<Vec<MapRow>> {
    let mut maps: Vec<MapRow> = Vec::new();
    for r in 0..rounds.max(1) {
        let mut pair: Vec<(&str, &dyn Backend)> = vec![("process_vm_readv", &StockBackend)];
        if let Some(k) = kmod {
            pair.push(("kmod PREFETCH", k));
        }
        for k in 0..pair.len() {
            let (name, b) = pair[(k + r) % pair.len()];
            let (s, mapped, read_s) = map_pass_only(subj, b)?;
            eprintln!("map pass only, {name:<16}: {s:.3} s for {mapped} pages (reads took {read_s:.3} s before)");
            maps.push((name, s, mapped, read_s));
        }
    }
    subj.verify_data()?;
    Ok(maps)
}

/// The timed (not warm-up) seconds of one variant.
fn secs(ms: &[Measurement], v: Variant) -> Vec<f64> {
    ms.iter()
        .filter(|m| m.variant == v && !m.warmup)
        .map(|m| m.seconds)
        .collect()
}

fn med(ms: &[Measurement], v: Variant) -> f64 {
    Spread::of(&secs(ms, v))
        .map(|s| s.median)
        .unwrap_or(f64::NAN)
}

fn map_med(maps: &[MapRow], n: &str) -> f64 {
    Spread::of(
        &maps
            .iter()
            .filter(|m| m.0 == n)
            .map(|m| m.1)
            .collect::<Vec<_>>(),
    )
    .map(|s| s.median)
    .unwrap_or(f64::NAN)
}

/// The markdown report.
fn markdown(
    meta: &Meta,
    variants: &[Variant],
    ms: &[Measurement],
    maps: &[MapRow],
) -> Result<String> {
    let &Meta {
        mib,
        rounds,
        ref disk,
        ref host_load,
        ref kmod_why,
        ref machine,
        ..
    } = meta;
    let (st, tp, tk) = (
        med(ms, Variant::Stock),
        med(ms, Variant::Torpor),
        med(ms, Variant::TorporKmod),
    );
    let (mr, mk) = (
        map_med(maps, "process_vm_readv"),
        map_med(maps, "kmod PREFETCH"),
    );
    let mut md = String::new();
    writeln!(md, "# In-guest resume benchmark: stock vs stock prefetch vs module prefetch ({mib} MiB touch-all)\n")?;
    writeln!(md, "- date: {}", chrono_like_now())?;
    writeln!(md, "- guest: Linux {} under qemu TCG (`make vm-bench`), swap on a virtio disk, disk profile **{disk}**", uname_r())?;
    writeln!(md, "- machine (guest view): {machine}")?;
    writeln!(md, "- host load average when the VM started: {} (2-CPU host shared with other work; qemu TCG itself needs CPU)", if host_load.is_empty() { "not recorded" } else { host_load })?;
    writeln!(
        md,
        "- guest load average at the end: {:?}",
        bench::machine::loadavg()
    )?;
    if !meta.kmod {
        writeln!(md, "- **module rows missing**: torpor.ko was not usable in this guest ({kmod_why}); stock rows only")?;
    }
    writeln!(md, "- child: {} ({}); {rounds} interleaved rounds after one warm-up round, order rotated each round", mib, meta.desc)?;
    writeln!(md, "- memory proven out before every timed resume (pagemap present pages, memcg usage, SwapCached): see the per-run lines below\n")?;
    writeln!(md, "| resume path | median s | min s | max s | vs stock |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    for &v in variants {
        let s = Spread::of(&secs(ms, v));
        if let Some(s) = s {
            writeln!(
                md,
                "| {} | {:.3} | {:.3} | {:.3} | {:.2}× |",
                v.name(),
                s.median,
                s.min,
                s.max,
                st / s.median
            )?;
        }
    }
    writeln!(
        md,
        "\nMapping pass alone (reads already in the swap cache), median of {}:\n",
        rounds.max(1)
    )?;
    writeln!(md, "| mapping pass | median s | pages |")?;
    writeln!(md, "|---|---|---|")?;
    let pages = |name: &str| maps.iter().find(|m| m.0 == name).map_or(0, |m| m.2);
    let (pr, pk) = (pages("process_vm_readv"), pages("kmod PREFETCH"));
    writeln!(md, "| process_vm_readv (stock) | {mr:.3} | {pr} |")?;
    writeln!(md, "| PREFETCH ioctl (module) | {mk:.3} | {pk} |")?;
    writeln!(md, "\nRatios: stock/torpor = {:.2}×, stock/torpor_kmod = {:.2}×, torpor/torpor_kmod = {:.2}×; mapping pass process_vm_readv/PREFETCH = {:.2}×.", st / tp, st / tk, tp / tk, mr / mk)?;
    writeln!(md, "\n## Every timed resume\n\n```")?;
    for m in ms {
        writeln!(md, "round {} {:<12} {:.3} s warmup={} prefetch={:?} touch={:.3} majflt={} present={}/{} memcg={}KiB swapcached={}KiB", m.pair, m.variant.name(), m.seconds, m.warmup, m.prefetch_seconds, m.touch_seconds, m.child_majflt, m.proof.area_present_pages, m.proof.area_pages, m.proof.memcg_usage_bytes / 1024, m.proof.system_swapcached_bytes / 1024)?;
    }
    for m in maps {
        writeln!(
            md,
            "map-only {:<16} {:.3} s pages={} (reads {:.3} s)",
            m.0, m.1, m.2, m.3
        )?;
    }
    writeln!(md, "```")?;
    Ok(md)
}

/// The JSON next to the markdown (`.md` replaced by `.json`).
fn write_json(meta: &Meta, out: &str, ms: &[Measurement], maps: &[MapRow]) -> Result<()> {
    let (mr, mk) = (
        map_med(maps, "process_vm_readv"),
        map_med(maps, "kmod PREFETCH"),
    );
    let spread = |v: Variant| {
        Spread::of(&secs(ms, v))
            .map(|s| serde_json::json!({"median": s.median, "min": s.min, "max": s.max}))
    };
    let json = serde_json::json!({
        "date": chrono_like_now(),
        "disk": meta.disk,
        "mib": meta.mib,
        "rounds": meta.rounds,
        "guest_kernel": uname_r(),
        "machine": meta.machine,
        "host_load": meta.host_load,
        "guest_load_end": bench::machine::loadavg(),
        "kmod": meta.kmod,
        "kmod_why": meta.kmod_why,
        "seconds": {"stock": spread(Variant::Stock), "torpor": spread(Variant::Torpor), "torpor_kmod": spread(Variant::TorporKmod)},
        "map_pass_median": {"process_vm_readv": mr, "kmod_prefetch": if meta.kmod { Some(mk) } else { None }},
        "measurements": ms,
    });
    let json_out = out
        .strip_suffix(".md")
        .map(|s| format!("{s}.json"))
        .unwrap_or_else(|| format!("{out}.json"));
    std::fs::write(&json_out, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("write {json_out}"))?;
    Ok(())
}

fn uname_r() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn chrono_like_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
