//! `torpor-e2e-app`: the guest web app of the end-to-end test (runs inside the QEMU guest).
//!
//! Holds `--mib` MiB of deterministic data (vm_e2e::pattern) in anonymous memory; the first
//! `--ws-mib` MiB are its working set.
//!   GET /        touch one word per page of the working set, checking it ("ok ws_pages=N")
//!   GET /verify  check every word of the data ("ok words=N ms=T", or 500 "bad ...")
//!   GET /info    "pid=P mib=M ws_mib=W seed=S"
//! The same binary, started with `--ws-mib 0` on another port, is the standalone checksum
//! process: it only holds its data and verifies it on request.
//! Options: --port P (default 80), --bind ADDR (default 0.0.0.0), --mib N (default 192),
//! --ws-mib W (default 16), --seed S (default 1), --name NAME (log prefix).
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use vm_e2e::pattern;

struct App {
    name: String,
    seed: u64,
    mib: usize,
    ws_mib: usize,
    data: Vec<u64>,
}

const WORDS_PER_MIB: usize = (1 << 20) / 8;

impl App {
    fn handle(&self, path: &str) -> (u16, String) {
        match path {
            "/" => {
                let ws = &self.data[..self.ws_mib * WORDS_PER_MIB];
                match pattern::touch_pages(self.seed, 0, ws) {
                    Ok(n) => (200, format!("ok ws_pages={n}\n")),
                    Err(k) => (500, format!("bad working-set word {k}\n")),
                }
            }
            "/verify" => {
                let t = Instant::now();
                match pattern::first_mismatch(self.seed, 0, &self.data) {
                    None => (
                        200,
                        format!(
                            "ok words={} ms={}\n",
                            self.data.len(),
                            t.elapsed().as_millis()
                        ),
                    ),
                    Some((first, n)) => {
                        eprintln!(
                            "{}: VERIFY FAILED: {n} bad words, first at {first} (page {})",
                            self.name,
                            first / pattern::WORDS_PER_PAGE
                        );
                        (500, format!("bad words={n} first={first}\n"))
                    }
                }
            }
            "/info" => (
                200,
                format!(
                    "pid={} mib={} ws_mib={} seed={}\n",
                    std::process::id(),
                    self.mib,
                    self.ws_mib,
                    self.seed
                ),
            ),
            _ => (404, "not found\n".to_string()),
        }
    }

    fn serve(&self, mut s: TcpStream) -> std::io::Result<()> {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while n < buf.len() {
            let k = s.read(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let req = String::from_utf8_lossy(&buf[..n]);
        let mut parts = req.split_whitespace();
        let (code, body) = match (parts.next(), parts.next()) {
            (Some("GET"), Some(path)) => self.handle(path),
            _ => (400, "bad request\n".to_string()),
        };
        let reason = match code {
            200 => "OK",
            404 => "Not Found",
            400 => "Bad Request",
            _ => "Internal Server Error",
        };
        write!(s, "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
        s.flush()
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut port: u16 = 80;
    let mut bind = "0.0.0.0".to_string();
    let mut mib: usize = 192;
    let mut ws_mib: usize = 16;
    let mut seed: u64 = 1;
    let mut name = "torpor-e2e-app".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--port" => port = val()?.parse()?,
            "--bind" => bind = val()?.clone(),
            "--mib" => mib = val()?.parse()?,
            "--ws-mib" => ws_mib = val()?.parse()?,
            "--seed" => seed = val()?.parse()?,
            "--name" => name = val()?.clone(),
            _ => bail!("unknown argument {a:?} (see the source header for usage)"),
        }
    }
    if ws_mib > mib {
        bail!("--ws-mib {ws_mib} > --mib {mib}");
    }
    let t = Instant::now();
    let mut data = vec![0u64; mib * WORDS_PER_MIB];
    pattern::fill(seed, 0, &mut data);
    eprintln!(
        "{name}: pid {} filled {mib} MiB (seed {seed}, working set {ws_mib} MiB) in {} ms",
        std::process::id(),
        t.elapsed().as_millis()
    );
    let app = App {
        name: name.clone(),
        seed,
        mib,
        ws_mib,
        data,
    };
    // Prove the fill before listening: a broken pattern must not look like swap corruption later.
    let (code, body) = app.handle("/verify");
    if code != 200 {
        bail!("self-check after fill failed: {body}");
    }
    let l =
        TcpListener::bind((bind.as_str(), port)).with_context(|| format!("bind {bind}:{port}"))?;
    eprintln!("{name}: listening on {bind}:{port} ({})", body.trim());
    for s in l.incoming() {
        match s {
            Ok(s) => {
                if let Err(e) = app.serve(s) {
                    eprintln!("{name}: connection: {e}");
                }
            }
            Err(e) => eprintln!("{name}: accept: {e}"),
        }
    }
    Ok(())
}
