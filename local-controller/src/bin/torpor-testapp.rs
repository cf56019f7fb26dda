//! `torpor-testapp`: a tiny HTTP server holding N MiB of random, checksummed memory.
//!   GET /        null request
//!   GET /touch   touch every page
//!   GET /verify  recompute the checksums (500 when any differs)
//! Options: --port P (required), --mib N (default 64), --seed S, --startup-delay-ms D,
//! --never-ready (allocate, then never listen).

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::TcpListener;

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn checksum(b: &[u8]) -> u64 {
    // FNV-1a over 8-byte words.
    let mut h = 0xcbf29ce484222325u64;
    for w in b.chunks_exact(8) {
        h ^= u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let port: u16 = opt("--port").context("--port P is required")?.parse()?;
    let mib: usize = opt("--mib").map(|s| s.parse()).transpose()?.unwrap_or(64);
    let mut seed: u64 = opt("--seed")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0x9e3779b97f4a7c15)
        | 1;
    let delay: u64 = opt("--startup-delay-ms")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0);
    let never = args.iter().any(|a| a == "--never-ready");

    const CHUNK: usize = 1 << 20;
    let mut mem = vec![0u8; mib * CHUNK];
    for w in mem.chunks_exact_mut(8) {
        w.copy_from_slice(&xorshift(&mut seed).to_le_bytes());
    }
    let sums: Vec<u64> = mem.chunks(CHUNK).map(checksum).collect();
    eprintln!(
        "torpor-testapp: pid {} holds {mib} MiB (checksummed)",
        std::process::id()
    );
    std::thread::sleep(std::time::Duration::from_millis(delay));
    if never {
        eprintln!("torpor-testapp: --never-ready: not listening");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let l =
        TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("bind 127.0.0.1:{port}"))?;
    eprintln!("torpor-testapp: listening on 127.0.0.1:{port}");
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while n < buf.len() {
            match s.read(&mut buf[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    n += k;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
        let req = String::from_utf8_lossy(&buf[..n]);
        let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (code, body) = match path.as_str() {
            "/" => (200, "ok\n".to_string()),
            "/touch" => {
                let mut x = 0u64;
                for c in mem.chunks(4096) {
                    x = x.wrapping_add(c[0] as u64);
                }
                (200, format!("touched {mib} MiB ({x})\n"))
            }
            "/verify" => {
                let bad = mem
                    .chunks(CHUNK)
                    .zip(&sums)
                    .filter(|(c, s)| checksum(c) != **s)
                    .count();
                if bad == 0 {
                    (200, format!("verified {mib} MiB\n"))
                } else {
                    (500, format!("CORRUPT: {bad} of {mib} MiB differ\n"))
                }
            }
            _ => (404, "not found\n".to_string()),
        };
        let _ = write!(
            s,
            "HTTP/1.1 {code} {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            if code == 200 { "OK" } else { "ERR" },
            body.len()
        );
    }
    Ok(())
}
