//! Experiment 7, disk models: table and plot from the in-guest benchmark's JSON (measures nothing).

use crate::common::*;
use anyhow::{ensure, Context, Result};
use bench::plot::{self, Bar};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
/// One disk model's latest results: the disk, the JSON file, its contents.
type Row = (&'static str, PathBuf, serde_json::Value);

/// A statistic (`median`, `min`, `max`) of one variant's seconds in a vm-bench JSON.
fn sec(v: &serde_json::Value, k: &str, s: &str) -> Option<f64> {
    v["seconds"][k][s].as_f64()
}

/// Combined table + plot of the latest in-guest `make vm-bench VM_DISK=fast|ssd|hdd` results
/// (`<out>/vm/vmbench-<disk>-<date>.json`). Measures nothing itself.
pub fn disk_models(out: &Path) -> Result<String> {
    let vm = out.join("vm");
    let rows = latest_results(&vm)?;
    let dir = out.join("disk-models");
    std::fs::create_dir_all(&dir)?;
    let day = std::process::Command::new("date")
        .arg("+%F")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let stem = format!("disk-models-{}", day.trim());
    let (md_path, json_path, png_path) = (
        dir.join(format!("{stem}.md")),
        dir.join(format!("{stem}.json")),
        dir.join(format!("{stem}.png")),
    );
    plot_bars(&png_path, &rows)?;
    let mut o = format!("# disk-models — {}\n\nExperiment 7 of the bench issue: the in-guest 3-way resume benchmark (`make vm-bench VM_DISK=fast|ssd|hdd`, \
        `bench/src/bin/torpor-vmbench.rs`) on the three disk models of `vm-images/run-vm.sh` (swap on a virtio disk throttled by qemu: \
        **fast** = unthrottled, **ssd** = 400 MB/s + 20k IOPS, **hdd** = 120 MB/s + 150 IOPS), combined by `torpor-bench disk-models` from \
        the latest JSON of each (it measures nothing itself). Guest: our Linux 6.12 under qemu TCG (no KVM), 2 vCPUs, 2 GiB, on a 2-CPU \
        host shared with other work (host load when each VM started is in the table). Each row's ratios were measured interleaved within \
        one VM run; rows are different runs.\n\n", chrono_now());
    o.push_str("| disk | MiB | rounds | stock s (min–max) | torpor s | torpor module s | stock / torpor | stock / module | mapping pass: process_vm_readv / PREFETCH ioctl | host load at VM start | source |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (disk, path, v) in &rows {
        table_row(&mut o, disk, path, v);
    }
    o.push_str("\nPaper (Agile application placement in hosting platforms): prefetching pays most where random reads are expensive (its testbed: local disks). The slower the disk's random \
        reads (IOPS limit), the more demand paging (one fault, one small read) loses against a prefetch that reads in swap-slot order with \
        many requests in flight; where the module row is missing, torpor.ko was not usable in that guest and the stock rows stand alone.\n\n");
    let _ = writeln!(
        o,
        "![plot]({})\n",
        png_path.file_name().unwrap_or_default().to_string_lossy()
    );
    std::fs::write(&md_path, &o)?;
    let j: Vec<serde_json::Value> = rows.iter().map(|(d, p, v)| serde_json::json!({"disk": d, "source": p.display().to_string(), "seconds": v["seconds"], "map_pass_median": v["map_pass_median"], "mib": v["mib"], "host_load": v["host_load"], "date": v["date"]})).collect();
    std::fs::write(&json_path, serde_json::to_string_pretty(&j)?)?;
    Ok(md_path.display().to_string())
}

/// The latest `vmbench-<disk>-*.json` of each disk model in `vm` (models without one are
/// skipped with a note; none at all is an error).
fn latest_results(vm: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for disk in ["fast", "ssd", "hdd"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(vm)
            .with_context(|| format!("read {}", vm.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("vmbench-{disk}-")) && n.ends_with(".json")
                })
            })
            .collect();
        files.sort();
        match files.last() {
            Some(f) => {
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f)?)
                    .with_context(|| format!("parse {}", f.display()))?;
                rows.push((disk, f.clone(), v));
            }
            None => eprintln!(
                "disk-models: no vmbench-{disk}-*.json in {} (run make vm-bench VM_DISK={disk})",
                vm.display()
            ),
        }
    }
    ensure!(!rows.is_empty(), "no vm-bench results in {}", vm.display());
    Ok(rows)
}

/// The plot: one bar per disk model and variant.
fn plot_bars(png_path: &Path, rows: &[Row]) -> Result<()> {
    let f = sec;
    let variants = [
        ("stock", "stock: thaw + demand paging"),
        ("torpor", "torpor prefetch (stock backend)"),
        ("torpor_kmod", "torpor prefetch (module backend)"),
    ];
    let mut bars = Vec::new();
    for (disk, _, v) in rows {
        for (i, (k, _)) in variants.iter().enumerate() {
            if let (Some(m), Some(lo), Some(hi)) =
                (f(v, k, "median"), f(v, k, "min"), f(v, k, "max"))
            {
                bars.push(Bar {
                    label: format!("{disk}: {k}"),
                    value: m,
                    lo,
                    hi,
                    color: i,
                });
            }
        }
    }
    plot::bars(
        png_path,
        "In-guest resume by disk model (touch-all, median, min-max)",
        "resume -> all pages touched (s)",
        &bars,
        true,
    )?;
    Ok(())
}

/// One disk model's row of the table.
fn table_row(o: &mut String, disk: &str, path: &Path, v: &serde_json::Value) {
    let f = sec;
    let cell = |k: &str| match (f(v, k, "median"), f(v, k, "min"), f(v, k, "max")) {
        (Some(m), Some(lo), Some(hi)) => format!("{m:.3} ({lo:.3}–{hi:.3})"),
        _ => "-".into(),
    };
    let ratio = |a: &str, b: &str| match (f(v, a, "median"), f(v, b, "median")) {
        (Some(x), Some(y)) => format!("{:.2}×", x / y),
        _ => "-".into(),
    };
    let mp = match (
        v["map_pass_median"]["process_vm_readv"].as_f64(),
        v["map_pass_median"]["kmod_prefetch"].as_f64(),
    ) {
        (Some(a), Some(b)) => format!("{a:.3} / {b:.3} s = {:.2}×", a / b),
        (Some(a), None) => format!(
            "{a:.3} s / - (module not loaded: {})",
            v["kmod_why"].as_str().unwrap_or("")
        ),
        _ => "-".into(),
    };
    let _ = writeln!(
        o,
        "| **{disk}** | {} | {} | {} | {} | {} | **{}** | {} | {mp} | {} | `vm/{}` ({}) |",
        v["mib"],
        v["rounds"],
        cell("stock"),
        cell("torpor"),
        cell("torpor_kmod"),
        ratio("stock", "torpor"),
        ratio("stock", "torpor_kmod"),
        v["host_load"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("not recorded"),
        path.file_name().unwrap_or_default().to_string_lossy(),
        v["date"].as_str().unwrap_or("?")
    );
}
