//! `torpor`: command-line front end.
#![deny(unsafe_op_in_unsafe_fn)]

use anyhow::Result;
use clap::{Parser, Subcommand};
use procswap::kmod::Kmod;

#[derive(Parser)]
#[command(name = "torpor", version, about = "Fast suspend/resume of idle application servers")]
struct Cli {
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the torpor kernel module's ABI version and features (GET_VERSION ioctl).
    Module {
        /// Device node.
        #[arg(long, default_value = procswap::uapi::TORPOR_DEV_PATH)]
        device: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Module { device } => {
            let k = Kmod::open_path(&device)?;
            let v = k.version();
            if cli.json {
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
                println!("features:    {:#x} [{}]", v.features, v.feature_names().join(", "));
            }
        }
    }
    Ok(())
}
