//! torpor-guest: the guest agent. Serves the guest-enlightenment protocol
//! (see guest-enlight/PROTOCOL.md) on a virtio-serial port, a unix socket, or
//! stdin/stdout, one request at a time; `dump` prints map summaries.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use guest_enlight::kmod_source::KmodSource;
use guest_enlight::portable::{self, FreeMode, PriorityOptions};
use guest_enlight::protocol::{
    self, encode_frame, negotiate, Client, ErrorCode, FrameReader, ProtoError, ReadEvent, Request,
    Response, WireMap,
};
use guest_enlight::source::{MapSource, PortableSource};
use guest_enlight::{Category, MapSourceKind};
use procswap::units::parse_duration;
use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default virtio-serial port name (QEMU: `-device virtserialport,name=org.torpor.agent.0`).
const DEFAULT_PORT_NAME: &str = "org.torpor.agent.0";

#[derive(Parser)]
#[command(
    name = "torpor-guest",
    version,
    about = "torpor guest agent: page-priority map and free-page bitmap for the host"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct MapArgs {
    /// Activity window: a process is active if it ran within it ("16s", "500ms", "2").
    #[arg(long, default_value = "16s", value_parser = parse_duration)]
    window: Duration,
    /// How the portable free bitmap treats buddy tails.
    #[arg(long, value_enum, default_value_t = FreeMode::Flagged)]
    free_mode: FreeMode,
    /// Map source: the torpor kernel module (exact), the portable procfs source
    /// (approximate), or auto: the module when its device exists and advertises
    /// free_bitmap+priority_map, else portable.
    #[arg(long, value_enum, default_value_t = SourceChoice::Auto)]
    source: SourceChoice,
    /// The module's device node.
    #[arg(long, default_value = "/dev/torpor")]
    kmod_dev: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum SourceChoice {
    Auto,
    Kmod,
    Portable,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve requests (default: on /dev/virtio-ports/org.torpor.agent.0).
    Serve {
        /// Character device to serve on (overrides --port-name).
        #[arg(long)]
        device: Option<PathBuf>,
        /// virtio-serial port name, served at /dev/virtio-ports/NAME.
        #[arg(long, default_value = DEFAULT_PORT_NAME)]
        port_name: String,
        /// Listen on a unix socket instead (testing).
        #[arg(long, conflicts_with = "device")]
        unix: Option<PathBuf>,
        /// Serve on stdin/stdout instead (testing); exits at EOF.
        #[arg(long, conflicts_with_all = ["device", "unix"])]
        stdio: bool,
        /// Largest request payload accepted.
        #[arg(long, default_value_t = 1 << 20)]
        max_payload: u32,
        #[command(flatten)]
        maps: MapArgs,
    },
    /// Build the maps locally and print a summary.
    Dump {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        maps: MapArgs,
        /// Also report the categories of these PFNs (file: one PFN or START-END, end exclusive,
        /// per line; decimal or 0x hex; '#' comments).
        #[arg(long)]
        pfns: Option<PathBuf>,
    },
    /// Ask a running agent (unix socket or character device) and print the summary.
    Query {
        #[arg(long, conflicts_with = "device")]
        unix: Option<PathBuf>,
        #[arg(long)]
        device: Option<PathBuf>,
        /// Activity window to request (ms, 0 = the agent's default).
        #[arg(long, default_value_t = 0)]
        window_ms: u32,
        #[arg(long)]
        json: bool,
        /// Also report the categories of these PFNs (as for `dump --pfns`).
        #[arg(long)]
        pfns: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            device,
            port_name,
            unix,
            stdio,
            max_payload,
            maps,
        } => {
            let mut source = make_source(&maps, true)?;
            let source = source.as_mut();
            if stdio {
                tracing::info!("serving on stdin/stdout");
                let stdin = std::io::stdin().lock();
                let stdout = std::io::stdout().lock();
                serve_stream(stdin, stdout, source, max_payload)?;
                Ok(())
            } else if let Some(path) = unix {
                serve_unix(&path, source, max_payload)
            } else {
                let path = device
                    .unwrap_or_else(|| PathBuf::from(format!("/dev/virtio-ports/{port_name}")));
                serve_device(&path, source, max_payload)
            }
        }
        Cmd::Dump { json, maps, pfns } => {
            let pfns = pfns.map(|p| read_pfn_list(&p)).transpose()?;
            let mut source = make_source(&maps, false)?;
            let s = local_summary(source.as_mut(), maps.window, pfns.as_deref())?;
            print_summary(&s, json)
        }
        Cmd::Query {
            unix,
            device,
            window_ms,
            json,
            pfns,
        } => {
            let pfns = pfns.map(|p| read_pfn_list(&p)).transpose()?;
            let s = if let Some(p) = unix {
                let c =
                    UnixStream::connect(&p).with_context(|| format!("connect {}", p.display()))?;
                remote_summary(Client::new(c), window_ms, pfns.as_deref())?
            } else if let Some(p) = device {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .with_context(|| format!("open {}", p.display()))?;
                remote_summary(Client::new(f), window_ms, pfns.as_deref())?
            } else {
                bail!("give --unix PATH or --device PATH");
            };
            print_summary(&s, json)
        }
    }
}

/// Serves the protocol on a unix socket at `path`, one connection at a time, forever.
fn serve_unix(path: &Path, source: &mut dyn MapSource, max_payload: u32) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    tracing::info!(path = %path.display(), "serving on unix socket");
    for conn in l.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        let w = conn.try_clone().context("clone socket")?;
        if let Err(e) = serve_stream(conn, w, source, max_payload) {
            tracing::warn!("connection ended: {e:#}");
        }
    }
    Ok(())
}

/// Pick the map source (`serving`: the agent, which samples activity in the background
/// for the portable source and leaves itself out of the portable priority map).
fn make_source(maps: &MapArgs, serving: bool) -> Result<Box<dyn MapSource>> {
    let kmod = match maps.source {
        SourceChoice::Portable => None,
        SourceChoice::Kmod => Some(
            KmodSource::open_path(&maps.kmod_dev, maps.window).with_context(|| {
                format!(
                    "--source kmod: cannot use the torpor module at {} (insmod torpor.ko?)",
                    maps.kmod_dev.display()
                )
            })?,
        ),
        SourceChoice::Auto => match KmodSource::open_path(&maps.kmod_dev, maps.window) {
            Ok(k) => Some(k),
            Err(e) => {
                if maps.kmod_dev.exists() {
                    tracing::warn!(
                        "not using {}: {e}; falling back to the portable source",
                        maps.kmod_dev.display()
                    );
                } else {
                    tracing::info!(
                        "{} absent: portable (approximate) source",
                        maps.kmod_dev.display()
                    );
                }
                None
            }
        },
    };
    if let Some(k) = kmod {
        let d = k.device();
        tracing::info!(release = %d.version().release_str(), features = %d.version().feature_names().join(","), "map source: torpor kernel module (exact)");
        return Ok(Box::new(k));
    }
    let mut opts = PriorityOptions {
        free_mode: maps.free_mode,
        ..Default::default()
    };
    if serving {
        opts.exclude_pids.insert(std::process::id() as i32);
    }
    let p = PortableSource::new(maps.window, opts);
    if serving {
        // Detached: samples for the life of the agent.
        drop(p.spawn_sampler());
    }
    Ok(Box::new(p))
}

/// Serve a character device (virtio-serial port). EOF means no host is connected:
/// wait and read again rather than exit.
fn serve_device(
    path: &std::path::Path,
    source: &mut dyn MapSource,
    max_payload: u32,
) -> Result<()> {
    let mut warned = false;
    let mut announced = false;
    // A virtio-serial port with no host connected reads EOF at once (and polls as HUP), so
    // the port is re-read on a timer: 250 ms after a session, backing off to 1 s while idle.
    let mut idle = Duration::from_millis(250);
    loop {
        let f = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => {
                if !warned {
                    tracing::warn!(path = %path.display(), "cannot open port (waiting for it): {e}");
                    warned = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if !announced {
            tracing::info!(path = %path.display(), "serving on character device");
            announced = true;
        }
        let w = f.try_clone().context("dup port fd")?;
        let t = std::time::Instant::now();
        match serve_stream(f, w, source, max_payload) {
            Ok(()) => tracing::debug!("port EOF (host not connected)"),
            Err(e) => tracing::warn!("port error: {e:#}"),
        }
        // A session that lasted (a host talked to us) resets the back-off.
        idle = if t.elapsed() > Duration::from_millis(50) {
            Duration::from_millis(250)
        } else {
            (idle * 2).min(Duration::from_secs(1))
        };
        std::thread::sleep(idle);
    }
}

/// Serve requests until EOF.
fn serve_stream<R: Read, W: Write>(
    r: R,
    mut w: W,
    source: &mut dyn MapSource,
    max_payload: u32,
) -> Result<()> {
    let mut reader = FrameReader::new(r, max_payload);
    loop {
        let (id, resp) = match reader.next_event()? {
            ReadEvent::Eof { garbage_bytes } => {
                if garbage_bytes > 0 {
                    tracing::warn!(garbage_bytes, "EOF after garbage");
                }
                return Ok(());
            }
            ReadEvent::Skipped {
                error,
                garbage_bytes,
            } => {
                tracing::warn!(garbage_bytes, "bad frame skipped: {error}");
                let Some(id) = error.request_id() else {
                    continue;
                };
                let code = match error {
                    ProtoError::UnsupportedVersion { .. } => ErrorCode::VersionMismatch,
                    _ => ErrorCode::BadFrame,
                };
                (
                    id,
                    Response::Error {
                        code,
                        message: error.to_string(),
                    },
                )
            }
            ReadEvent::Frame(f) => (f.request_id, handle(&f, source)),
        };
        w.write_all(&encode_frame(&resp.to_frame(id)))?;
        w.flush()?;
    }
}

fn handle(f: &protocol::Frame, source: &mut dyn MapSource) -> Response {
    let req = match Request::decode(f) {
        Ok(r) => r,
        Err(e @ ProtoError::UnknownType(_)) => {
            return Response::Error {
                code: ErrorCode::UnknownType,
                message: e.to_string(),
            }
        }
        Err(e) => {
            return Response::Error {
                code: ErrorCode::BadPayload,
                message: e.to_string(),
            }
        }
    };
    tracing::debug!(?req, "request");
    let unavailable = |e: guest_enlight::Error| Response::Error {
        code: ErrorCode::Unavailable,
        message: e.to_string(),
    };
    match req {
        Request::Hello {
            min_version,
            max_version,
            client,
        } => match negotiate(min_version, max_version) {
            Some(version) => {
                tracing::info!(client, version, "hello");
                Response::Hello {
                    version,
                    agent: format!("torpor-guest {}", env!("CARGO_PKG_VERSION")),
                    page_size: guest_enlight::layout::page_size() as u32,
                    source: source.kind(),
                }
            }
            None => Response::Error {
                code: ErrorCode::VersionMismatch,
                message: format!(
                    "client speaks {min_version}..={max_version}, agent {}..={}",
                    protocol::MIN_VERSION,
                    protocol::MAX_VERSION
                ),
            },
        },
        Request::Ping { nonce } => Response::Pong { nonce },
        Request::GetLayout => match source.layout() {
            Ok(layout) => Response::Layout {
                page_size: guest_enlight::layout::page_size() as u32,
                layout,
            },
            Err(e) => unavailable(e),
        },
        Request::GetFreeBitmap => match source.free_bitmap() {
            Ok(b) => {
                tracing::info!(
                    free_pages = b.count_free(),
                    build_ms = b.info.build_us / 1000,
                    "free bitmap built"
                );
                Response::FreeBitmap(WireMap::from_free_bitmap(&b))
            }
            Err(e) => unavailable(e),
        },
        Request::GetPriorityMap { window_ms } => {
            let window = (window_ms > 0).then(|| Duration::from_millis(window_ms as u64));
            match source.priority_map(window) {
                Ok(p) => {
                    tracing::info!(build_ms = p.info.build_us / 1000, stats = ?source.stats(), "priority map built");
                    Response::PriorityMap(WireMap::from_priority_map(&p))
                }
                Err(e) => unavailable(e),
            }
        }
    }
}

#[derive(Serialize)]
struct Summary {
    source: MapSourceKind,
    approximate: bool,
    page_size: u64,
    ram_ranges: usize,
    total_pages: u64,
    total_gib: f64,
    free_pages: u64,
    memfree_pages: Option<u64>,
    free_over_memfree: Option<f64>,
    free_build_ms: f64,
    priority_build_ms: f64,
    priority_build_ms_per_gib: f64,
    window_ms: u32,
    categories: Vec<(String, u64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<serde_json::Value>,
    /// `--pfns`: how many of the listed PFNs fall in each category (index = value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pfn_categories: Option<PfnCategories>,
}

#[derive(Serialize, Debug, Default)]
struct PfnCategories {
    listed: u64,
    outside_layout: u64,
    per_category: [u64; Category::COUNT],
}

/// PFN ranges `[start, end)` from a `--pfns` file.
fn read_pfn_list(path: &std::path::Path) -> Result<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let num = |t: &str| -> Result<u64> {
        let t = t.trim();
        Ok(match t.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16)?,
            None => t.parse()?,
        })
    };
    let mut v = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let r = match line.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(line)?, num(line)? + 1),
        };
        if r.1 < r.0 {
            bail!("bad PFN range {line:?}");
        }
        v.push(r);
    }
    Ok(v)
}

fn pfn_categories(prio: &WireMap, pfns: &[(u64, u64)]) -> Result<PfnCategories> {
    let map = prio
        .to_priority_map(prio.layout.total_pages())
        .context("expand priority map")?;
    let mut c = PfnCategories::default();
    for &(a, b) in pfns {
        for pfn in a..b {
            c.listed += 1;
            match map.category_of_pfn(pfn) {
                Some(cat) => c.per_category[cat as usize] += 1,
                None => c.outside_layout += 1,
            }
        }
    }
    Ok(c)
}

fn summarize(
    free: &WireMap,
    prio: &WireMap,
    page_size: u64,
    stats: Option<serde_json::Value>,
) -> Summary {
    let fh = free.runs.histogram();
    let ph = prio.runs.histogram();
    let total_pages = prio.layout.total_pages();
    let total_gib = (total_pages * page_size) as f64 / (1u64 << 30) as f64;
    let memfree_pages = portable::memfree_pages();
    let priority_build_ms = prio.info.build_us as f64 / 1000.0;
    Summary {
        source: prio.info.source,
        approximate: prio.info.approximate || free.info.approximate,
        page_size,
        ram_ranges: prio.layout.ranges.len(),
        total_pages,
        total_gib,
        free_pages: fh[1],
        memfree_pages,
        free_over_memfree: memfree_pages.map(|m| fh[1] as f64 / m.max(1) as f64),
        free_build_ms: free.info.build_us as f64 / 1000.0,
        priority_build_ms,
        priority_build_ms_per_gib: priority_build_ms / total_gib.max(1e-9),
        window_ms: prio.info.window_ms,
        categories: Category::ALL
            .iter()
            .map(|c| (c.name().to_string(), ph[*c as usize]))
            .collect(),
        stats,
        pfn_categories: None,
    }
}

fn local_summary(
    source: &mut dyn MapSource,
    window: Duration,
    pfns: Option<&[(u64, u64)]>,
) -> Result<Summary> {
    let t = Instant::now();
    let free = source.free_bitmap()?;
    let prio = source.priority_map(Some(window))?;
    tracing::debug!(total_ms = t.elapsed().as_millis() as u64, "maps built");
    let prio = WireMap::from_priority_map(&prio);
    let mut s = summarize(
        &WireMap::from_free_bitmap(&free),
        &prio,
        guest_enlight::layout::page_size(),
        source.stats(),
    );
    s.pfn_categories = pfns.map(|p| pfn_categories(&prio, p)).transpose()?;
    Ok(s)
}

fn remote_summary<S: Read + Write>(
    mut c: Client<S>,
    window_ms: u32,
    pfns: Option<&[(u64, u64)]>,
) -> Result<Summary> {
    let page_size = match c.hello("torpor-guest query")? {
        Response::Hello { page_size, .. } => page_size as u64,
        r => bail!("unexpected hello response {r:?}"),
    };
    let free = c.free_bitmap()?;
    let prio = c.priority_map(window_ms)?;
    let mut s = summarize(&free, &prio, page_size, None);
    s.pfn_categories = pfns.map(|p| pfn_categories(&prio, p)).transpose()?;
    Ok(s)
}

fn print_summary(s: &Summary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!(
        "source: {:?}{}",
        s.source,
        if s.approximate {
            " (APPROXIMATE: portable procfs maps, see guest-enlight docs)"
        } else {
            ""
        }
    );
    println!(
        "RAM: {} ranges, {} pages of {} B = {:.2} GiB",
        s.ram_ranges, s.total_pages, s.page_size, s.total_gib
    );
    match (s.memfree_pages, s.free_over_memfree) {
        (Some(m), Some(r)) => println!("free bitmap: {} pages ({:.3} x MemFree {} pages of the machine running this command: compare only when the agent runs here), built in {:.1} ms", s.free_pages, r, m, s.free_build_ms),
        _ => println!("free bitmap: {} pages, built in {:.1} ms", s.free_pages, s.free_build_ms),
    }
    println!(
        "priority map: built in {:.1} ms ({:.2} ms/GiB), activity window {} ms",
        s.priority_build_ms, s.priority_build_ms_per_gib, s.window_ms
    );
    for (name, n) in &s.categories {
        println!(
            "  {:<17} {:>10} pages {:>9.1} MiB",
            name,
            n,
            (*n * s.page_size) as f64 / (1u64 << 20) as f64
        );
    }
    if let Some(st) = &s.stats {
        println!("  stats: {}", serde_json::to_string(st)?);
    }
    if let Some(p) = &s.pfn_categories {
        println!(
            "listed PFNs: {} ({} outside the layout), per category {:?}",
            p.listed, p.outside_layout, p.per_category
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("16s").unwrap(), Duration::from_secs(16));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
