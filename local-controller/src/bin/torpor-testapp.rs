//! `torpor-testapp`: a tiny HTTP server holding N MiB of random, checksummed memory.
//!   GET /        null request
//!   GET /touch   touch every page
//!   GET /verify  recompute the checksums (500 when any differs)
//!   GET /files   each --map file read through its mapping and each --read file re-read
//!                (`map|read <path> <bytes> <fnv>` lines, up to the file's current size: a
//!                file truncated since is read only as far as it goes now, never past its end)
//!   GET /close   close the --read files (as a database's backend closes the tables it read)
//! Options: --port P (required), --bind ADDR (an IPv4 or IPv6 address to listen on, default
//! 127.0.0.1), --mib N (default 64), --seed S, --startup-delay-ms D,
//! --never-ready (allocate, then never listen), --no-accept (listen, then never accept: a TCP
//! connect is answered by the kernel while the app sleeps, touching nothing), --map FILE (map it shared read-only and read
//! it; repeatable), --read FILE (read it and keep it open; repeatable), --shm-mib N (N MiB of
//! shared memory too: a memfd mapped shared, random and checksummed like the rest; `/touch`
//! and `/verify` cover it).

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

/// FNV-1a over bytes (the `/files` checksum; tests compute the same).
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

/// A file mapped shared and read-only, kept open (its size is checked before each read).
struct MappedFile {
    path: String,
    file: std::fs::File,
    map: procswap::sys::FileMapping,
}

impl MappedFile {
    fn open(path: &str) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
        let len = file.metadata()?.len() as usize;
        anyhow::ensure!(len > 0, "{path} is empty");
        // Only read through `read_current`, never past the file's size at the time of the read.
        let map =
            procswap::sys::FileMapping::new(&file, len).with_context(|| format!("mmap {path}"))?;
        let m = Self {
            path: path.to_string(),
            file,
            map,
        };
        m.read_current();
        Ok(m)
    }

    /// Read the mapping up to the file's current size (a file truncated since is read only as
    /// far as it goes now: reading past its end would be a SIGBUS). Single-threaded server:
    /// nothing of ours truncates it while we read.
    fn read_current(&self) -> (usize, u64) {
        let n = self
            .file
            .metadata()
            .map(|m| (m.len() as usize).min(self.map.len()))
            .unwrap_or(0);
        // SAFETY: the mapping has `len()` readable bytes and `n <= len()` is within the file's
        // current size, so every byte read is backed by the file.
        let b = unsafe { std::slice::from_raw_parts(self.map.ptr(), n) };
        (n, fnv(b))
    }
}

/// How many `CHUNK`s of `b` no longer match their checksums in `sums`.
fn bad_chunks(b: &[u8], sums: &[u64]) -> usize {
    b.chunks(CHUNK)
        .zip(sums)
        .filter(|(c, s)| checksum(c) != **s)
        .count()
}

/// The whole file as it is now, read through the descriptor kept open (`pread` from 0).
fn read_all_at(f: &std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::os::unix::fs::FileExt::read_at(f, &mut buf, v.len() as u64)?;
        if n == 0 {
            return Ok(v);
        }
        v.extend_from_slice(&buf[..n]);
    }
}

const CHUNK: usize = 1 << 20;

/// The command line (see the file's doc).
struct Opts {
    port: u16,
    bind: std::net::IpAddr,
    mib: usize,
    seed: u64,
    delay_ms: u64,
    never: bool,
    no_accept: bool,
    map: Vec<String>,
    read: Vec<String>,
    shm_mib: usize,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let opt = |k: &str| {
            args.iter()
                .position(|a| a == k)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let all = |k: &str| -> Vec<String> {
            args.windows(2)
                .filter(|w| w[0] == k)
                .map(|w| w[1].clone())
                .collect()
        };
        Ok(Opts {
            port: opt("--port").context("--port P is required")?.parse()?,
            bind: match opt("--bind") {
                Some(a) => a
                    .parse()
                    .with_context(|| format!("--bind {a:?}: not an IP address"))?,
                None => std::net::Ipv4Addr::LOCALHOST.into(),
            },
            mib: opt("--mib").map(|s| s.parse()).transpose()?.unwrap_or(64),
            seed: opt("--seed")
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(0x9e3779b97f4a7c15)
                | 1,
            delay_ms: opt("--startup-delay-ms")
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(0),
            never: args.iter().any(|a| a == "--never-ready"),
            no_accept: args.iter().any(|a| a == "--no-accept"),
            map: all("--map"),
            read: all("--read"),
            shm_mib: opt("--shm-mib")
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(0),
        })
    }
}

/// What the server holds: its checksummed memory and the files it maps or keeps open.
struct App {
    mib: usize,
    mem: Vec<u8>,
    sums: Vec<u64>,
    mapped: Vec<MappedFile>,
    read: Vec<(String, std::fs::File)>,
    shm: Option<Shm>,
}

/// `--shm-mib`: a memfd mapped shared read-write, filled once, with its checksums.
struct Shm {
    ptr: *mut u8,
    len: usize,
    sums: Vec<u64>,
}

impl Shm {
    fn new(mib: usize, mut seed: u64) -> Result<Shm> {
        let len = mib * CHUNK;
        // SAFETY: a NUL-terminated name literal; the fd is checked.
        let fd = unsafe { libc::memfd_create(c"torpor-testapp".as_ptr(), libc::MFD_CLOEXEC) };
        anyhow::ensure!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: integer arguments on the fd just created.
        let rc = unsafe { libc::ftruncate(fd, len as i64) };
        // SAFETY: a fresh shared mapping of that fd, the kernel picks the address; checked
        // against MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        // SAFETY: the mapping (if any) holds its own reference to the memfd.
        unsafe { libc::close(fd) };
        anyhow::ensure!(rc == 0, "ftruncate of the memfd failed");
        anyhow::ensure!(
            ptr != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let mut shm = Shm {
            ptr: ptr as *mut u8,
            len,
            sums: Vec::new(),
        };
        // SAFETY: `ptr` is a fresh writable mapping of `len` bytes, owned by `shm` and never
        // unmapped while the process runs; no other reference to it exists yet.
        let b = unsafe { std::slice::from_raw_parts_mut(shm.ptr, len) };
        for w in b.chunks_exact_mut(8) {
            w.copy_from_slice(&xorshift(&mut seed).to_le_bytes());
        }
        shm.sums = b.chunks(CHUNK).map(checksum).collect();
        Ok(shm)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: a live mapping of `len` bytes (never unmapped); single-threaded server, only
        // `new` writes it.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl App {
    fn new(o: &Opts) -> Result<App> {
        let mapped: Vec<MappedFile> = o
            .map
            .iter()
            .map(|p| MappedFile::open(p))
            .collect::<Result<_>>()?;
        let mut read: Vec<(String, std::fs::File)> = Vec::new();
        for p in &o.read {
            let mut f = std::fs::File::open(p).with_context(|| format!("open {p}"))?;
            let mut v = Vec::new();
            f.read_to_end(&mut v).with_context(|| format!("read {p}"))?;
            read.push((p.clone(), f));
        }
        let mut seed = o.seed;
        let mut mem = vec![0u8; o.mib * CHUNK];
        for w in mem.chunks_exact_mut(8) {
            w.copy_from_slice(&xorshift(&mut seed).to_le_bytes());
        }
        let sums: Vec<u64> = mem.chunks(CHUNK).map(checksum).collect();
        let shm = match o.shm_mib {
            0 => None,
            n => Some(Shm::new(n, seed)?),
        };
        Ok(App {
            mib: o.mib,
            mem,
            sums,
            mapped,
            read,
            shm,
        })
    }

    /// The answer to a GET of `path`: status and body.
    fn answer(&mut self, path: &str) -> (u16, String) {
        let mib = self.mib;
        match path {
            "/" => (200, "ok\n".to_string()),
            "/close" => {
                let n = self.read.len();
                self.read.clear();
                (200, format!("closed {n}\n"))
            }
            "/touch" => {
                let mut x = 0u64;
                let shm = self.shm.as_ref().map(|s| s.bytes()).unwrap_or_default();
                for c in self.mem.chunks(4096).chain(shm.chunks(4096)) {
                    x = x.wrapping_add(c[0] as u64);
                }
                (200, format!("touched {mib} MiB ({x})\n"))
            }
            "/verify" => {
                let bad = bad_chunks(&self.mem, &self.sums);
                let shm_bad = self
                    .shm
                    .as_ref()
                    .map_or(0, |s| bad_chunks(s.bytes(), &s.sums));
                if shm_bad > 0 {
                    (
                        500,
                        format!("CORRUPT: {shm_bad} MiB of shared memory differ\n"),
                    )
                } else if bad == 0 {
                    (200, format!("verified {mib} MiB\n"))
                } else {
                    (500, format!("CORRUPT: {bad} of {mib} MiB differ\n"))
                }
            }
            "/files" => (200, self.files()),
            _ => (404, "not found\n".to_string()),
        }
    }

    /// `/files`: each mapped file read through its mapping, each kept-open file re-read.
    fn files(&self) -> String {
        let mut body = String::new();
        for m in &self.mapped {
            let (n, h) = m.read_current();
            body += &format!("map {} {n} {h:016x}\n", m.path);
        }
        for (p, f) in &self.read {
            match read_all_at(f) {
                Ok(v) => body += &format!("read {p} {} {:016x}\n", v.len(), fnv(&v)),
                Err(e) => body += &format!("read {p} error {e}\n"),
            }
        }
        body
    }
}

/// The request's path (up to the end of its header, at most 2 KiB read).
fn request_path(s: &mut std::net::TcpStream) -> String {
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
    req.split_whitespace().nth(1).unwrap_or("/").to_string()
}

/// Sleep until killed (`--never-ready`, `--no-accept`).
fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let o = Opts::parse(&args)?;
    let mut app = App::new(&o)?;
    eprintln!(
        "torpor-testapp: pid {} holds {} MiB (checksummed)",
        std::process::id(),
        o.mib
    );
    std::thread::sleep(std::time::Duration::from_millis(o.delay_ms));
    if o.never {
        eprintln!("torpor-testapp: --never-ready: not listening");
        sleep_forever();
    }
    let addr = std::net::SocketAddr::new(o.bind, o.port);
    let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    eprintln!("torpor-testapp: listening on {addr}");
    if o.no_accept {
        eprintln!("torpor-testapp: --no-accept: never accepting");
        sleep_forever();
    }
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let path = request_path(&mut s);
        let (code, body) = app.answer(&path);
        let _ = write!(
            s,
            "HTTP/1.1 {code} {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            if code == 200 { "OK" } else { "ERR" },
            body.len()
        );
    }
    Ok(())
}
