//! `torpor-vm-e2e`: end-to-end acceptance of torpor on a QEMU TCG guest.
//!   torpor-vm-e2e smoke DIR                 host ↔ guest reachability: HTTP, agent over virtio-serial, QMP
//!   torpor-vm-e2e bench DIR [--trials N] [--driver torpord|direct] [--out DIR] [--torpord BIN] [--torpor BIN]
//!                                           Stop/purge/Start interleaved none/full/priority
//! DIR was prepared by `vm-e2e/guest.sh prepare DIR`. See vm-e2e/README.md.
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;
use vm_e2e::guest::GuestEnv;

fn guest_sh() -> PathBuf {
    std::env::var_os("E2E_GUEST_SH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/guest.sh")))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, dir) = match (args.first(), args.get(1)) {
        (Some(c), Some(d)) => (c.as_str(), PathBuf::from(d)),
        _ => bail!("usage: torpor-vm-e2e smoke|bench DIR [options]"),
    };
    let env = GuestEnv::load(&dir)?;
    let opt = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let boot_timeout = Duration::from_secs(
        opt("--boot-timeout")
            .map(|s| s.parse())
            .transpose()
            .context("--boot-timeout")?
            .unwrap_or(300),
    );
    match cmd {
        "smoke" => vm_e2e::smoke::run(&env, &guest_sh(), boot_timeout),
        "bench" => {
            let bin_dir = std::env::current_exe()?
                .parent()
                .context("exe dir")?
                .to_path_buf();
            let o = vm_e2e::bench::Opts {
                trials: opt("--trials")
                    .map(|s| s.parse())
                    .transpose()
                    .context("--trials")?
                    .unwrap_or(3),
                out_dir: match opt("--out") {
                    Some(o) => PathBuf::from(o),
                    None => std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))?
                        .join("bench/results/vm-resume"),
                },
                guest_sh: guest_sh(),
                driver: opt("--driver").unwrap_or_else(|| "torpord".into()),
                torpord_bin: opt("--torpord")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| bin_dir.join("torpord")),
                torpor_bin: opt("--torpor")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| bin_dir.join("torpor")),
                boot_timeout,
            };
            vm_e2e::bench::run(&env, &o)
        }
        _ => bail!("unknown command {cmd:?}"),
    }
}
