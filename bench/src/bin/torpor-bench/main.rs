//! `torpor-bench`: the paper-experiment scenario harness (the experiments of *Agile application
//! placement in hosting platforms*, WWW 2009). Needs root and active swap
//! (`bench/run-experiments.sh` sets up its own swapfile). One module per experiment.
//!
//!   torpor-bench [--quick] [--out DIR] size-sweep|contribution|contiguity|repeated|cpu-load|tomcat|all [MORE...]
//!   torpor-bench [--quick] [--out DIR] free-memory    (fills the machine: scripts/vm-free-memory.sh runs it in our guest)
//!   torpor-bench [--out DIR] disk-models              (table + plot from <out>/vm/vmbench-*.json; measures nothing)
//!   torpor-bench activation [OPTIONS]                 (the activation benchmark, `bench::activation`)
//!   torpor-bench demo --swapfile PATH [OPTIONS]       (the measuring part of `make demo`)
//!
//! Experiments (numbers as in the bench issue): 1 `cpu-load`, 2 `size-sweep`, 3 `contribution` +
//! `free-memory`, 4 `contiguity`, 5 `repeated`, 6 `tomcat`, 7 `disk-models`. `cpu-load` and
//! `tomcat` run Tomcat 10 from Debian with `bench/tomcat-app/` (see `bench::server`).
//!
//! Each experiment writes `<out>/<experiment>/<experiment>-<date>-<host>[-quick].{md,json,png}`
//! (default out: `bench/results`). Every timed resume is preceded by a proof that the child's
//! memory is out (pagemap, memcg usage, memcg swapcached); every comparison is interleaved
//! within one run.

mod agility;
mod common;
mod contiguity;
mod contribution;
mod cpu_load;
mod demo;
mod disk_models;
mod free_memory;
mod repeated;
mod servers;
mod size_sweep;
mod tomcat;

use anyhow::{ensure, Context, Result};
use bench::machine::{self, Machine};
use bench::resume::FreezerChoice;
use clap::{Args, Parser, Subcommand, ValueEnum};
use common::Ctx;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "torpor-bench",
    about = "The paper-experiment scenario harness (root, active swap: bench/run-experiments.sh)"
)]
struct Cli {
    /// Fewer sizes and trials (`make bench`).
    #[arg(long)]
    quick: bool,
    /// Results directory: each experiment writes `<out>/<experiment>/`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The measured experiments (`all` is the first six, in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Experiment {
    SizeSweep,
    Contribution,
    Contiguity,
    Repeated,
    CpuLoad,
    Tomcat,
    FreeMemory,
}

impl Experiment {
    const ALL: [Experiment; 6] = [
        Experiment::SizeSweep,
        Experiment::Contribution,
        Experiment::Contiguity,
        Experiment::Repeated,
        Experiment::CpuLoad,
        Experiment::Tomcat,
    ];

    fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    /// Runs the experiment; the path of its markdown results.
    fn run(self, ctx: &Ctx) -> Result<String> {
        match self {
            Experiment::SizeSweep => size_sweep::size_sweep(ctx),
            Experiment::Contribution => contribution::contribution(ctx),
            Experiment::Contiguity => contiguity::contiguity(ctx),
            Experiment::Repeated => repeated::repeated(ctx),
            Experiment::CpuLoad => cpu_load::cpu_load(ctx),
            Experiment::Tomcat => tomcat::tomcat(ctx),
            Experiment::FreeMemory => free_memory::free_memory(ctx),
        }
    }
}

/// Experiments given after the first one run after it, in order.
#[derive(Args, Clone, Default)]
struct Then {
    /// Further experiments to run after this one (`all` only as the first).
    #[arg(value_enum)]
    then: Vec<Experiment>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Experiment 2: resume time against the app size (touch-all and a null request).
    SizeSweep(Then),
    /// Experiment 3: the contribution of each enhancement at one size.
    Contribution(Then),
    /// Experiment 4: swap extents after a torpor purge vs kernel reclaim.
    Contiguity(Then),
    /// Experiment 5: repeated placement (Stop/Start cycles of one app).
    Repeated(Then),
    /// Experiment 1: Tomcat resume under duty-cycled CPU load.
    CpuLoad(Then),
    /// Experiment 6: Tomcat cold start vs torpor resume.
    Tomcat(Then),
    /// The six experiments above, in order.
    All(Then),
    /// Experiment 3's "free memory only" row: fills the machine's memory (in our guest:
    /// scripts/vm-free-memory.sh).
    FreeMemory(Then),
    /// Experiment 7: table and plot from <out>/vm/vmbench-*.json (measures nothing).
    DiskModels,
    /// The near-warm activation benchmark (bench/run-activation.sh); its own options follow.
    #[command(disable_help_flag = true)]
    Activation {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The measuring part of `make demo` (scripts/demo-host.sh): Tomcat cold start vs torpor
    /// Start from torpord's standby pool, per prefetch mode.
    Demo(demo::DemoOpts),
    /// End-to-end agility (Fig. 11): the analysis of a bench/run-agility.sh run (measures
    /// nothing itself).
    Agility(agility::AgilityOpts),
    /// Make a CATALINA_BASE for Debian's Tomcat as the activation benchmark runs it and print
    /// its torpord `[[app]]` entry (bench/run-agility.sh's AGILITY_APP=tomcat); the path its
    /// readiness probe asks for goes to standard error.
    TomcatEntry(TomcatEntryOpts),
    /// A burner process of `cpu-load`: DUTY PERIOD_MS CPU (spawned by bench::server::Burners).
    #[command(name = "__burn", hide = true)]
    Burn {
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Args)]
struct TomcatEntryOpts {
    /// The CATALINA_BASE is made in DIR/catalina-base.
    #[arg(long)]
    dir: PathBuf,
    /// Its HTTP port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// The app's name in torpord.
    #[arg(long)]
    name: String,
    /// bench/tomcat-app as `/app` holding this many MiB (without it: Debian's default ROOT
    /// webapp).
    #[arg(long)]
    webapp_mib: Option<u64>,
    /// torpord's readiness probe asks for this path (default: the first request's, `/app/`
    /// with the webapp, else `/`), e.g. `/app/?touch=all`: ready only once the data is back.
    #[arg(long)]
    ready_path: Option<String>,
}

impl Cmd {
    /// The experiments to run, in order.
    fn experiments(self) -> Vec<Experiment> {
        let (first, then) = match self {
            Cmd::SizeSweep(t) => (vec![Experiment::SizeSweep], t),
            Cmd::Contribution(t) => (vec![Experiment::Contribution], t),
            Cmd::Contiguity(t) => (vec![Experiment::Contiguity], t),
            Cmd::Repeated(t) => (vec![Experiment::Repeated], t),
            Cmd::CpuLoad(t) => (vec![Experiment::CpuLoad], t),
            Cmd::Tomcat(t) => (vec![Experiment::Tomcat], t),
            Cmd::All(t) => (Experiment::ALL.to_vec(), t),
            Cmd::FreeMemory(t) => (vec![Experiment::FreeMemory], t),
            Cmd::DiskModels
            | Cmd::Activation { .. }
            | Cmd::Demo(_)
            | Cmd::Agility(_)
            | Cmd::TomcatEntry(_)
            | Cmd::Burn { .. } => (vec![], Then::default()),
        };
        first.into_iter().chain(then.then).collect()
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Burn { args } => {
            let f = |i: usize| {
                args.get(i)
                    .and_then(|x| x.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            bench::server::burn_main(f(0), f(1) as u64, f(2) as usize);
        }
        Cmd::Activation { args } => {
            ensure!(
                !cli.quick && std::env::args().nth(1).as_deref() == Some("activation"),
                "give activation's options after `activation` (torpor-bench activation --help)"
            );
            bench::activation::main(&args)
        }
        Cmd::Demo(o) => std::process::exit(demo::main(o)),
        Cmd::Agility(o) => agility::main(&cli.out, o),
        Cmd::TomcatEntry(o) => {
            let (entry, path) = bench::activation::tomcat_entry(
                &o.dir,
                &o.name,
                o.port,
                o.webapp_mib,
                o.ready_path.as_deref(),
            )?;
            print!("{entry}");
            eprintln!("{path}");
            Ok(())
        }
        Cmd::DiskModels => {
            let path = disk_models::disk_models(&cli.out)?;
            println!("{}", std::fs::read_to_string(&path).unwrap_or_default());
            Ok(())
        }
        cmd => run(cli.quick, cli.out, &cmd.experiments()),
    }
}

/// Runs `exps` in order (root, active swap), printing each one's tables.
fn run(quick: bool, out: PathBuf, exps: &[Experiment]) -> Result<()> {
    machine::require_root_and_swap()?;
    let me = std::env::current_exe()?;
    let child = me.with_file_name("torpor-bench-child");
    ensure!(
        child.exists(),
        "{} not found (build the bench package's binaries)",
        child.display()
    );
    let date = common::chrono_now();
    let ctx = Ctx {
        quick,
        out,
        child,
        freezer: FreezerChoice::from_env()?,
        day: date.get(..10).unwrap_or("unknown").to_string(),
        date,
        machine: Machine::probe()?,
        page_cluster: std::fs::read_to_string("/proc/sys/vm/page-cluster")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        me,
    };
    let t0 = Instant::now();
    for &e in exps {
        let t = Instant::now();
        let name = e.name();
        let path = e.run(&ctx).with_context(|| format!("experiment {name}"))?;
        eprintln!(
            "torpor-bench: {name} done in {:.0} s -> {path}",
            t.elapsed().as_secs_f64()
        );
        println!(
            "{}",
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .take_while(|l| !l.starts_with("![plot]"))
                .filter(|l| l.starts_with('|') || l.starts_with("**"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    eprintln!(
        "torpor-bench: all requested experiments done in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("torpor-bench").chain(argv.iter().copied()))
    }

    /// Every invocation the scripts and the Makefile use keeps working.
    #[test]
    fn script_invocations() {
        let c = parse(&["--quick", "--out", "/x", "size-sweep", "contribution"]).unwrap();
        assert!(c.quick);
        assert_eq!(c.out, PathBuf::from("/x"));
        assert_eq!(
            c.cmd.experiments(),
            [Experiment::SizeSweep, Experiment::Contribution]
        );
        let c = parse(&["--quick", "all"]).unwrap();
        assert_eq!(c.cmd.experiments(), Experiment::ALL);
        let c = parse(&["--quick", "--out", "/r", "free-memory"]).unwrap();
        assert_eq!(c.cmd.experiments(), [Experiment::FreeMemory]);
        assert!(matches!(
            parse(&["--out", "/r", "disk-models"]).unwrap().cmd,
            Cmd::DiskModels
        ));
        let c = parse(&[
            "activation",
            "--apps",
            "tomcat",
            "--quick",
            "--out",
            "/o",
            "--help",
        ]);
        match c.unwrap().cmd {
            Cmd::Activation { args } => {
                assert_eq!(
                    args,
                    ["--apps", "tomcat", "--quick", "--out", "/o", "--help"]
                )
            }
            _ => panic!("not activation"),
        }
        match parse(&["__burn", "0.5", "100", "1"]).unwrap().cmd {
            Cmd::Burn { args } => assert_eq!(args, ["0.5", "100", "1"]),
            _ => panic!("not __burn"),
        }
        assert_eq!(Experiment::CpuLoad.name(), "cpu-load");
        // scripts/demo-host.sh: `--modes $DEMO_MODES` unquoted (several words) or quoted (one).
        for modes in [&["full", "none"][..], &["full none"][..]] {
            let argv = [
                &["demo", "--swapfile", "/s", "--cycles", "2", "--modes"][..],
                modes,
            ]
            .concat();
            match parse(&argv).unwrap().cmd {
                Cmd::Demo(o) => assert_eq!(o.modes, [demo::Mode::Full, demo::Mode::DemandPaging]),
                _ => panic!("not demo"),
            }
        }
        assert!(parse(&["demo", "--swapfile", "/s", "--modes", "fast"]).is_err());
        assert!(parse(&["demo"]).is_err(), "--swapfile is required");
    }

    #[test]
    fn parses_tomcat_entry() {
        // bench/run-agility.sh, AGILITY_APP=tomcat.
        let argv = [
            "tomcat-entry",
            "--dir",
            "/d",
            "--port",
            "8080",
            "--name",
            "web",
            "--webapp-mib",
            "256",
        ];
        match parse(&argv).unwrap().cmd {
            Cmd::TomcatEntry(o) => {
                assert_eq!(
                    (o.dir, o.port, o.name, o.webapp_mib, o.ready_path),
                    (
                        PathBuf::from("/d"),
                        8080,
                        "web".to_string(),
                        Some(256),
                        None
                    )
                )
            }
            _ => panic!("not tomcat-entry"),
        }
        let argv = [&argv[..], &["--ready-path", "/app/?touch=all"]].concat();
        match parse(&argv).unwrap().cmd {
            Cmd::TomcatEntry(o) => assert_eq!(o.ready_path.as_deref(), Some("/app/?touch=all")),
            _ => panic!("not tomcat-entry"),
        }
    }

    #[test]
    fn refuses_unknown() {
        assert!(parse(&["size-sweep", "nonsense"]).is_err());
        assert!(parse(&["--fast", "all"]).is_err());
        assert!(parse(&[]).is_err());
    }
}
