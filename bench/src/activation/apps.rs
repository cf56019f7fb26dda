//! The apps of the activation benchmark and their client workloads. Each app is a real server
//! run by torpord (`[[app]]` entry); its workload is the client side, started at the instant
//! the Start request is sent (the app is frozen then: its first request waits in the socket
//! backlog), and it measures the time to the first successful response itself.

use super::daemon::{q, Daemon};
use crate::server::{catalina_base, cmd_out, copy_dir, free_port};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An outcome metric: when the app answered torpord's readiness probe (wall clock, s); the
/// timed Start turns it into [`READY_AFTER_ANSWER_MS`].
pub const APP_ANSWER_UNIX: &str = "app_answer_unix";
/// torpord's `ready` (the Start answer's `timing.unix_time`) minus [`APP_ANSWER_UNIX`], ms.
pub const READY_AFTER_ANSWER_MS: &str = "ready_after_answer_ms";

/// The instant a Start request is sent (monotonic and wall clock).
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub t0: Instant,
    pub t0_unix: f64,
}

impl At {
    pub fn now() -> At {
        At {
            t0: Instant::now(),
            t0_unix: now_unix(),
        }
    }
    pub fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What a workload measured in one run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Start request sent → first successful response, seconds (the client's own clock).
    pub first_response_s: f64,
    /// App-specific numbers (see [`Workload::columns`]).
    pub metrics: BTreeMap<String, f64>,
    /// Per-second series (PostgreSQL: transactions completed in each second after Start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// A summary column of an app-specific metric.
pub struct Col {
    pub key: &'static str,
    pub label: &'static str,
    /// Higher is better (throughput), else lower is better (time).
    pub higher_better: bool,
}

pub trait Workload {
    /// torpord app name and results name.
    fn name(&self) -> String;
    fn is_vm(&self) -> bool {
        false
    }
    /// The `[[app]]` entry.
    fn app_toml(&self) -> String;
    /// After the cold start: load data, warm up; facts for the results file.
    fn setup(&mut self, d: &Daemon) -> Result<Value>;
    /// Warm only, after a full-prefetch Start: bring in what a full prefetch of private anonymous
    /// memory does not (PostgreSQL's shared buffers), so the warm app is all in memory.
    fn settle(&mut self, _d: &Daemon) -> Result<()> {
        Ok(())
    }
    /// The client side, from `at` (the Start request goes out at the same instant from another
    /// thread). Calls `mark` the moment the first successful response arrives. `seed` picks the
    /// random requests (the same in every mode of one trial).
    fn run(&mut self, at: &At, seed: u64, mark: &mut dyn FnMut()) -> Result<Outcome>;
    /// Just before the Stop that precedes a timed Start, while the app runs (e.g. open a
    /// connection that watches the app's answers to torpord's readiness probe).
    fn before_timed_stop(&mut self) -> Result<()> {
        Ok(())
    }
    /// After the last trial: check the app's data (where it can), untimed.
    fn check(&mut self, _d: &Daemon) -> Result<String> {
        Ok(String::new())
    }
    /// Markdown: what the app is, what the first response and the other metrics are.
    fn describe(&self) -> String;
    fn columns(&self) -> Vec<Col> {
        Vec::new()
    }
}

pub(super) fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub(super) fn dpkg_version(pkg: &str) -> String {
    cmd_out("dpkg-query", &["-W", "-f=${Version}", pkg]).unwrap_or_else(|_| "?".into())
}

fn toml_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
    )
}

pub(super) fn app_entry(
    name: &str,
    command: &[String],
    workdir: Option<&Path>,
    env: &[(&str, String)],
    ready: &str,
    ready_timeout: &str,
) -> String {
    let mut s = format!(
        "[[app]]\nname = {}\ncommand = {}\n",
        q(name),
        toml_list(command)
    );
    if let Some(w) = workdir {
        s += &format!("workdir = {}\n", q(&w.display().to_string()));
    }
    if !env.is_empty() {
        s += &format!(
            "env = {{ {} }}\n",
            env.iter()
                .map(|(k, v)| format!("{k} = {}", q(v)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    s + &format!("ready = {ready}\nready_timeout = {}\n", q(ready_timeout))
}

/// GET `path` until a 2xx/3xx answer; seconds since `at` when it arrived, and the body. The
/// first attempt goes out at once (the app is frozen: it waits in the backlog); after a failure
/// the next one follows 2 ms later.
pub fn http_first_ok(port: u16, path: &str, at: &At, limit: Duration) -> Result<(f64, String)> {
    loop {
        let last = match vm_e2e::http::get(local(port), path, Duration::from_secs(300)) {
            Ok(r) if (200..400).contains(&r.status) => return Ok((at.secs(), r.body)),
            Ok(r) => format!("status {}", r.status),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            at.t0.elapsed() < limit,
            "no successful GET {path} on :{port} within {limit:?} (last: {last})"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ------------------------------------------------------------------------------- Tomcat

pub use crate::server::TOMCAT_HOME;

/// Tomcat 10 from Debian (`catalina.sh run`, own CATALINA_BASE): the package's default ROOT
/// webapp, or `bench/tomcat-app` holding `mib` MiB of heap data.
pub struct Tomcat {
    mib: Option<u64>,
    port: u16,
    base: PathBuf,
    java_home: String,
    info: Value,
    /// The compiled webapp's work dir (kept while the app runs).
    _prep: Option<crate::server::Tomcat>,
}

impl Tomcat {
    pub fn new(work: &Path, mib: Option<u64>) -> Result<Tomcat> {
        Tomcat::on_port(work, mib, free_port()?)
    }

    /// Its CATALINA_BASE made in `work/catalina-base`, HTTP on 127.0.0.1:`port`.
    pub fn on_port(work: &Path, mib: Option<u64>, port: u16) -> Result<Tomcat> {
        ensure!(Path::new(TOMCAT_HOME).join("bin/catalina.sh").exists(), "{TOMCAT_HOME}/bin/catalina.sh missing: apt-get install tomcat10 (bench/run-activation.sh does)");
        let (prep, java_home) = match mib {
            Some(m) => {
                let t = crate::server::Tomcat::prepare(m)?;
                let jh = t.info.java_home.clone();
                (Some(t), jh)
            }
            None => {
                let java = std::fs::canonicalize(
                    which("java").context("no java on PATH (tomcat10 depends on a JRE)")?,
                )?;
                let jh = java
                    .parent()
                    .and_then(Path::parent)
                    .context("JAVA_HOME from java")?
                    .display()
                    .to_string();
                (None, jh)
            }
        };
        let base = work.join("catalina-base");
        let _ = std::fs::remove_dir_all(&base);
        catalina_base(&base, port)?;
        match &prep {
            Some(t) => copy_dir(&t.dir.join("app"), &base.join("webapps/app"))?,
            None => copy_dir(
                Path::new("/usr/share/tomcat10-root/default_root"),
                &base.join("webapps/ROOT"),
            )
            .context("the default ROOT webapp (package tomcat10)")?,
        }
        let java_version = Command::new(format!("{java_home}/bin/java"))
            .arg("-version")
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        let info = json!({"tomcat10": dpkg_version("tomcat10"), "java": java_version, "java_home": java_home, "port": port,
            "webapp": match mib { Some(m) => format!("bench/tomcat-app as /app, {m} MiB of heap data"), None => "Debian's default ROOT webapp (/usr/share/tomcat10-root/default_root)".into() }});
        Ok(Tomcat {
            mib,
            port,
            base,
            java_home,
            info,
            _prep: prep,
        })
    }

    /// What its first request and torpord's readiness probe ask for: `/app/` with the webapp
    /// (which serves nothing at `/`), else `/`.
    pub fn path(&self) -> &'static str {
        if self.mib.is_some() {
            "/app/"
        } else {
            "/"
        }
    }

    /// Its `[[app]]` entry, named `name`: `catalina.sh run` in its CATALINA_BASE, ready when
    /// [`Tomcat::path`] answers 2xx.
    pub fn entry(&self, name: &str) -> String {
        self.entry_ready(name, self.path())
    }

    /// [`Tomcat::entry`], ready when `ready_path` answers 2xx.
    pub fn entry_ready(&self, name: &str, ready_path: &str) -> String {
        let b = self.base.display().to_string();
        let mut env = vec![
            ("CATALINA_HOME", TOMCAT_HOME.to_string()),
            ("CATALINA_BASE", b.clone()),
            ("CATALINA_TMPDIR", format!("{b}/temp")),
            ("JAVA_HOME", self.java_home.clone()),
        ];
        if let Some(m) = self.mib {
            env.push(("TORPOR_APP_MIB", m.to_string()));
        }
        let ready = format!(
            "{{ http = {} }}",
            q(&format!("http://127.0.0.1:{}{ready_path}", self.port))
        );
        app_entry(
            name,
            &[format!("{TOMCAT_HOME}/bin/catalina.sh"), "run".into()],
            Some(&self.base),
            &env,
            &ready,
            "180s",
        )
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

impl Workload for Tomcat {
    fn name(&self) -> String {
        match self.mib {
            Some(m) => format!("tomcat-{m}"),
            None => "tomcat".into(),
        }
    }
    fn app_toml(&self) -> String {
        self.entry(&self.name())
    }
    fn setup(&mut self, _d: &Daemon) -> Result<Value> {
        let (_, body) = http_first_ok(self.port, self.path(), &At::now(), Duration::from_secs(60))?;
        if self.mib.is_some() {
            let (_, b) = http_first_ok(
                self.port,
                "/app/?touch=all",
                &At::now(),
                Duration::from_secs(60),
            )?;
            ensure!(b.starts_with("OK "), "GET /app/?touch=all answered {b:?}");
        }
        let mut v = self.info.clone();
        v["first_answer_bytes"] = json!(body.len());
        Ok(v)
    }
    fn run(&mut self, at: &At, _seed: u64, mark: &mut dyn FnMut()) -> Result<Outcome> {
        let (fr, _) = http_first_ok(self.port, self.path(), at, Duration::from_secs(300))?;
        mark();
        let mut o = Outcome {
            first_response_s: fr,
            ..Default::default()
        };
        if self.mib.is_some() {
            let (all, b) =
                http_first_ok(self.port, "/app/?touch=all", at, Duration::from_secs(600))?;
            ensure!(b.starts_with("OK "), "GET /app/?touch=all answered {b:?}");
            o.metrics.insert("all_data_s".into(), all);
        }
        Ok(o)
    }
    fn describe(&self) -> String {
        match self.mib {
            None => format!(
                "Tomcat {} from Debian, `catalina.sh run` with its own CATALINA_BASE (the package's configuration, HTTP on a free port) and \
                 Debian's default ROOT webapp. **First response**: the first 2xx answer to `GET /`, sent the instant the Start request is sent.",
                self.info["tomcat10"].as_str().unwrap_or("?")
            ),
            Some(m) => format!(
                "Tomcat {} from Debian with `bench/tomcat-app` as `/app` (a servlet holding {m} MiB of pseudo-random heap data). **First response**: \
                 the first 2xx answer to `GET /app/` (touches no data), sent the instant the Start request is sent; **all data**: then \
                 `GET /app/?touch=all` (reads one byte of every page of the {m} MiB), time from the Start request to its answer.",
                self.info["tomcat10"].as_str().unwrap_or("?")
            ),
        }
    }
    fn columns(&self) -> Vec<Col> {
        if self.mib.is_some() {
            vec![Col {
                key: "all_data_s",
                label: "all data (`?touch=all` answered), s",
                higher_better: false,
            }]
        } else {
            Vec::new()
        }
    }
}

// ------------------------------------------------------------------------------- redis

/// A RESP connection.
struct Resp {
    r: BufReader<TcpStream>,
    w: std::io::BufWriter<TcpStream>,
}

impl Resp {
    fn connect(port: u16, timeout: Duration) -> Result<Resp> {
        let s = TcpStream::connect_timeout(&local(port), Duration::from_secs(5))
            .with_context(|| format!("connect redis :{port}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        Ok(Resp {
            r: BufReader::new(s.try_clone()?),
            w: std::io::BufWriter::with_capacity(1 << 16, s),
        })
    }
    fn send(&mut self, args: &[&[u8]]) -> Result<()> {
        write!(self.w, "*{}\r\n", args.len())?;
        for a in args {
            write!(self.w, "${}\r\n", a.len())?;
            self.w.write_all(a)?;
            self.w.write_all(b"\r\n")?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(self.w.flush()?)
    }
    /// One reply: simple/integer as text, bulk as bytes (`None` for nil); errors fail.
    fn reply(&mut self) -> Result<Option<Vec<u8>>> {
        let mut line = String::new();
        ensure!(
            self.r.read_line(&mut line)? > 0,
            "redis closed the connection"
        );
        let l = line.trim_end();
        match l.as_bytes().first() {
            Some(b'+') | Some(b':') => Ok(Some(l.as_bytes()[1..].to_vec())),
            Some(b'-') => bail!("redis error: {}", &l[1..]),
            Some(b'$') => {
                let n: i64 = l[1..]
                    .parse()
                    .with_context(|| format!("bad bulk header {l:?}"))?;
                if n < 0 {
                    return Ok(None);
                }
                let mut b = vec![0u8; n as usize + 2];
                self.r.read_exact(&mut b)?;
                b.truncate(n as usize);
                Ok(Some(b))
            }
            _ => bail!("unexpected redis reply {l:?}"),
        }
    }
}

/// The value stored under key number `i`: `len` pseudo-random letters derived from `i` (so any
/// GET can be checked without a copy).
fn redis_value(i: u64, len: usize) -> Vec<u8> {
    let mut x = torpor_testsupport::pattern::Xorshift(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let r = x.next();
        for k in 0..8 {
            if v.len() < len {
                v.push(b'a' + ((r >> (8 * k)) as u8 % 26));
            }
        }
    }
    v
}

fn redis_key(i: u64) -> String {
    format!("k:{i:09}")
}

/// redis-server from Debian holding `mib` MiB of values (1 KiB each, random letters).
pub struct Redis {
    port: u16,
    dir: PathBuf,
    mib: u64,
    value_len: usize,
    keys: u64,
    gets: u64,
    conns: u64,
    depth: u64,
    info: Value,
    /// A `MONITOR` connection opened before the timed Stop (see [`Redis::ping_unix`]).
    monitor: Option<Resp>,
}

impl Redis {
    pub fn new(work: &Path, mib: u64, gets: u64) -> Result<Redis> {
        ensure!(Path::new("/usr/bin/redis-server").exists(), "/usr/bin/redis-server missing: apt-get install redis-server (bench/run-activation.sh does)");
        let dir = work.join("redis");
        std::fs::create_dir_all(&dir)?;
        let value_len = 1024;
        Ok(Redis {
            port: free_port()?,
            dir,
            mib,
            value_len,
            keys: (mib << 20) / value_len as u64,
            gets,
            conns: 4,
            depth: 16,
            info: Value::Null,
            monitor: None,
        })
    }

    /// When redis executed torpord's readiness `PING` of the Start sent at `after` (wall clock),
    /// from the `MONITOR` feed opened before the Stop: redis stamps each command it executes
    /// (`gettimeofday`, µs) and feeds it to monitors before it writes the command's reply, so
    /// torpord's `ready` minus this stamp bounds from above how long after redis answered the
    /// probe torpord saw it.
    fn ping_unix(m: &mut Resp, after: f64) -> Result<f64> {
        loop {
            let line = m
                .reply()?
                .context("MONITOR: nil")
                .map(|l| String::from_utf8_lossy(&l).into_owned())?;
            let ts: f64 = line
                .split_whitespace()
                .next()
                .and_then(|t| t.parse().ok())
                .with_context(|| format!("MONITOR line {line:?}"))?;
            // "1733150000.123456 [0 127.0.0.1:40000] \"PING\"" (the bench's GETs come too).
            if ts >= after && line.ends_with("\"PING\"") {
                return Ok(ts);
            }
        }
    }

    fn get_many(&self, n: u64, seed: u64, conns: u64) -> Result<()> {
        let per = n / conns;
        let mut hs = Vec::new();
        for c in 0..conns {
            let (port, keys, depth, vlen) = (self.port, self.keys, self.depth, self.value_len);
            let count = if c == conns - 1 {
                n - per * (conns - 1)
            } else {
                per
            };
            hs.push(std::thread::spawn(move || -> Result<()> {
                let mut r = Resp::connect(port, Duration::from_secs(600))?;
                let mut x = torpor_testsupport::pattern::Xorshift(
                    (seed.wrapping_add(1) << 8 | c).wrapping_mul(0x2545_F491_4F6C_DD1D) | 1,
                );
                let mut done = 0;
                while done < count {
                    let batch = depth.min(count - done);
                    let mut ids = Vec::with_capacity(batch as usize);
                    for _ in 0..batch {
                        let i = x.next() % keys;
                        ids.push(i);
                        r.send(&[b"GET", redis_key(i).as_bytes()])?;
                    }
                    r.flush()?;
                    for (j, i) in ids.iter().enumerate() {
                        let v = r
                            .reply()?
                            .with_context(|| format!("GET {} answered nil", redis_key(*i)))?;
                        ensure!(v.len() == vlen, "GET {}: {} bytes", redis_key(*i), v.len());
                        // Spot check of the contents (every 97th), so the data is not only the right size.
                        if (done + j as u64).is_multiple_of(97) {
                            ensure!(
                                v == redis_value(*i, vlen),
                                "GET {}: wrong value",
                                redis_key(*i)
                            );
                        }
                    }
                    done += batch;
                }
                Ok(())
            }));
        }
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("GET thread panicked"))??;
        }
        Ok(())
    }
}

impl Workload for Redis {
    fn name(&self) -> String {
        "redis".into()
    }
    fn app_toml(&self) -> String {
        let p = self.port.to_string();
        let cmd: Vec<String> = [
            "/usr/bin/redis-server",
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &self.dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        app_entry(
            "redis",
            &cmd,
            Some(&self.dir),
            &[],
            &format!("{{ redis = {} }}", self.port),
            "60s",
        )
    }
    fn setup(&mut self, _d: &Daemon) -> Result<Value> {
        let t = Instant::now();
        let mut r = Resp::connect(self.port, Duration::from_secs(120))?;
        let batch = 1000;
        let mut i = 0;
        while i < self.keys {
            let end = (i + batch).min(self.keys);
            for k in i..end {
                r.send(&[
                    b"SET",
                    redis_key(k).as_bytes(),
                    &redis_value(k, self.value_len),
                ])?;
            }
            r.flush()?;
            for _ in i..end {
                r.reply()?;
            }
            i = end;
        }
        r.send(&[b"INFO", b"memory"])?;
        r.flush()?;
        let info = String::from_utf8_lossy(&r.reply()?.unwrap_or_default()).to_string();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix(':')))
                .map(|v| v.trim().to_string())
        };
        let used: u64 = field("used_memory")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        ensure!(
            used >= self.mib << 20,
            "redis used_memory {} MiB < {} MiB after loading {} keys",
            used >> 20,
            self.mib,
            self.keys
        );
        r.send(&[b"INFO", b"server"])?;
        r.flush()?;
        let srv = String::from_utf8_lossy(&r.reply()?.unwrap_or_default()).to_string();
        let ver = srv
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        self.info = json!({"redis_server": dpkg_version("redis-server"), "redis_version": ver, "keys": self.keys, "value_bytes": self.value_len,
            "values_mib": (self.keys * self.value_len as u64) >> 20, "used_memory_bytes": used, "used_memory_rss": field("used_memory_rss"),
            "load_seconds": t.elapsed().as_secs_f64(), "port": self.port, "gets": self.gets, "get_connections": self.conns, "pipeline_depth": self.depth});
        Ok(self.info.clone())
    }
    fn run(&mut self, at: &At, seed: u64, mark: &mut dyn FnMut()) -> Result<Outcome> {
        let mut x =
            torpor_testsupport::pattern::Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let i = x.next() % self.keys;
        let mut r = Resp::connect(self.port, Duration::from_secs(600))?;
        r.send(&[b"GET", redis_key(i).as_bytes()])?;
        r.flush()?;
        let v = r
            .reply()?
            .with_context(|| format!("first GET {}: nil", redis_key(i)))?;
        let fr = at.secs();
        mark();
        ensure!(
            v == redis_value(i, self.value_len),
            "first GET {}: wrong value",
            redis_key(i)
        );
        let mut o = Outcome {
            first_response_s: fr,
            ..Default::default()
        };
        // The monitor ends here (it would slow the GETs down).
        if let Some(mut m) = self.monitor.take() {
            let ts =
                Self::ping_unix(&mut m, at.t0_unix).context("the readiness PING in MONITOR")?;
            o.metrics.insert(APP_ANSWER_UNIX.into(), ts);
        }
        let t1 = Instant::now();
        self.get_many(self.gets, seed, self.conns)?;
        o.metrics.insert("gets_done_s".into(), at.secs());
        o.metrics
            .insert("gets_only_s".into(), t1.elapsed().as_secs_f64());
        Ok(o)
    }
    fn before_timed_stop(&mut self) -> Result<()> {
        let mut m = Resp::connect(self.port, Duration::from_secs(60))?;
        m.send(&[b"MONITOR"])?;
        m.flush()?;
        ensure!(
            m.reply()?.as_deref() == Some(b"OK".as_slice()),
            "MONITOR not OK"
        );
        self.monitor = Some(m);
        Ok(())
    }
    fn describe(&self) -> String {
        format!(
            "redis-server {} from Debian (no persistence), {} keys of {} random letters ({} MiB of values; `used_memory` {} MiB). \
             **First response**: a `GET` of a random key sent the instant the Start request is sent (its value checked). \
             Then **{} random GETs** ({} connections, pipeline depth {}, uniform over all keys, same sequence in every mode of a trial, \
             every 97th value checked): **GETs done** = from the Start request to the last answer; **GETs alone** = from the first answer. \
             Readiness probe `{{ redis = PORT }}` (a `PING` armed before thaw); **ready after redis' answer** = torpord's `ready` \
             (the Start answer's `timing.unix_time`, taken the moment its probe returned) minus the time redis stamped on that `PING` \
             in a `MONITOR` feed opened before the Stop (stamped when the command ran, before its reply is written: an upper bound).",
            self.info["redis_version"].as_str().unwrap_or("?"),
            self.keys,
            self.value_len,
            (self.keys * self.value_len as u64) >> 20,
            self.info["used_memory_bytes"].as_u64().unwrap_or(0) >> 20,
            self.gets,
            self.conns,
            self.depth
        )
    }
    fn columns(&self) -> Vec<Col> {
        vec![
            Col {
                key: "gets_done_s",
                label: "GETs done (from Start), s",
                higher_better: false,
            },
            Col {
                key: "gets_only_s",
                label: "GETs alone, s",
                higher_better: false,
            },
            Col {
                key: READY_AFTER_ANSWER_MS,
                label: "ready after redis' answer, ms",
                higher_better: false,
            },
        ]
    }
}

// ------------------------------------------------------------------------------- the bench child

/// `torpor-bench-child` holding `mib` MiB behind `torpor-bench-netchild` (TCP), with the
/// touch-all (`TOUCH`) or null (`NULL`) request.
pub struct Child {
    port: u16,
    mib: u64,
    touch: bool,
    netchild: PathBuf,
    child: PathBuf,
}

impl Child {
    pub fn new(bin_dir: &Path, mib: u64, touch: bool) -> Result<Child> {
        let netchild = bin_dir.join("torpor-bench-netchild");
        let child = bin_dir.join("torpor-bench-child");
        ensure!(
            netchild.exists() && child.exists(),
            "{} or {} missing (cargo build --release -p bench)",
            netchild.display(),
            child.display()
        );
        Ok(Child {
            port: free_port()?,
            mib,
            touch,
            netchild,
            child,
        })
    }

    fn ask(&self, req: &str, timeout: Duration) -> Result<String> {
        let mut s = TcpStream::connect_timeout(&local(self.port), Duration::from_secs(5))?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(format!("{req}\n").as_bytes())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        Ok(line.trim().to_string())
    }
}

impl Workload for Child {
    fn name(&self) -> String {
        format!("child-{}", if self.touch { "touch" } else { "null" })
    }
    fn app_toml(&self) -> String {
        let cmd = [
            self.netchild.display().to_string(),
            self.port.to_string(),
            self.mib.to_string(),
            self.child.display().to_string(),
        ];
        app_entry(
            &self.name(),
            &cmd,
            None,
            &[],
            &format!("{{ tcp = {} }}", self.port),
            "300s",
        )
    }
    fn setup(&mut self, _d: &Daemon) -> Result<Value> {
        let r = self.ask("TOUCH", Duration::from_secs(120))?;
        ensure!(r.starts_with("DONE "), "child answered TOUCH with {r:?}");
        Ok(
            json!({"mib": self.mib, "port": self.port, "request": if self.touch { "TOUCH" } else { "NULL" }}),
        )
    }
    fn run(&mut self, at: &At, _seed: u64, mark: &mut dyn FnMut()) -> Result<Outcome> {
        let req = if self.touch { "TOUCH" } else { "NULL" };
        let r = self.ask(req, Duration::from_secs(600))?;
        let fr = at.secs();
        mark();
        let v: Vec<&str> = r.split_whitespace().collect();
        ensure!(
            v.first() == Some(&"DONE") && v.len() == 5,
            "child answered {req} with {r:?}"
        );
        let n = |i: usize| v[i].parse::<f64>().unwrap_or(f64::NAN);
        let mut o = Outcome {
            first_response_s: fr,
            ..Default::default()
        };
        o.metrics.insert("child_majflt".into(), n(1));
        o.metrics.insert("child_request_s".into(), n(3) / 1e6);
        Ok(o)
    }
    fn check(&mut self, _d: &Daemon) -> Result<String> {
        let r = self.ask("VERIFY", Duration::from_secs(600))?;
        ensure!(r == "OK", "child VERIFY answered {r:?}");
        Ok(format!("VERIFY of all {} MiB: OK", self.mib))
    }
    fn describe(&self) -> String {
        let what = if self.touch {
            "`TOUCH` (reads one word of every page of the area, in address order: the paper's touch-all); **first response** = its `DONE` \
             answer, i.e. the time until all of the memory is back and read"
        } else {
            "`NULL` (reads one word of the area's first page only: seed 004's Fig. 8b null request); **first response** = its `DONE` answer"
        };
        format!(
            "`torpor-bench-child` holding {} MiB of private anonymous pseudo-random memory (4 KiB pages, `MADV_NOHUGEPAGE`), run by torpord \
             through `torpor-bench-netchild` (torpord gives apps no stdin pipe): the process torpord spawns forks a small TCP front and execs \
             the child, so torpord's main pid is the one holding the memory. The request is sent on a TCP connection the instant the Start \
             request is sent: {what}. The child's data is checked (`VERIFY`, per-MiB checksums) after the last trial.",
            self.mib
        )
    }
    fn columns(&self) -> Vec<Col> {
        let mut v = vec![Col {
            key: "child_majflt",
            label: "child's major faults in the request",
            higher_better: false,
        }];
        if self.touch {
            v.push(Col {
                key: "floor_ratio",
                label: "touch-all ÷ O_DIRECT floor (same bytes, this round)",
                higher_better: false,
            });
        }
        v
    }
}

// ------------------------------------------------------------------------------- the VM app

/// The VM e2e guest of `vm-e2e/` (issue 6): `vm-e2e/guest.sh prepare` and `launch` reused as they
/// are, run by torpord as a `kind = "vm"` app. First response: `GET /` of the guest's web app
/// through hostfwd; all data back: its `GET /verify` (reads and checks all its data).
pub struct Vm {
    env: vm_e2e::guest::GuestEnv,
    guest_sh: PathBuf,
    info: Value,
}

impl Vm {
    pub fn new(o: &super::Opts) -> Result<Vm> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("repository")?
            .to_path_buf();
        let guest_sh = repo.join("vm-e2e/guest.sh");
        let (app, agent) = (
            o.bin_dir.join("torpor-e2e-app"),
            o.bin_dir.join("torpor-guest"),
        );
        ensure!(
            app.exists() && agent.exists(),
            "{} or {} missing (cargo build --release -p vm-e2e -p guest-enlight)",
            app.display(),
            agent.display()
        );
        // The guest runs host binaries and its job dir in place: inside the repository's target dir.
        let dir = o
            .bin_dir
            .parent()
            .context("target dir")?
            .join(format!("activation-vm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ports = [free_port()?, free_port()?, free_port()?];
        let out = Command::new(&guest_sh)
            .arg("prepare")
            .arg(&dir)
            .args([
                "--port",
                &ports[0].to_string(),
                "--check-port",
                &ports[1].to_string(),
                "--idle-port",
                &ports[2].to_string(),
                "--ws-mib",
                &o.vm_ws_mib.to_string(),
            ])
            .env("E2E_APP", &app)
            .env("TORPOR_GUEST", &agent)
            .output()
            .context("run vm-e2e/guest.sh prepare")?;
        ensure!(
            out.status.success(),
            "vm-e2e/guest.sh prepare: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let env = vm_e2e::guest::GuestEnv::load(&dir)?;
        let qemu = cmd_out("qemu-system-x86_64", &["--version"])
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        let info = json!({"guest_dir": dir.display().to_string(), "mem_mib": env.mem_mib, "app_mib": env.app_mib, "ws_mib": env.ws_mib,
            "check_mib": env.check_mib, "idle_mib": env.idle_mib, "torpor_ko": env.ko, "qemu": qemu, "accel": "tcg"});
        Ok(Vm {
            env,
            guest_sh,
            info,
        })
    }

    fn verify(&self, addr: SocketAddr) -> Result<String> {
        let r = vm_e2e::http::get(addr, "/verify", Duration::from_secs(600))?;
        ensure!(
            r.status == 200 && r.body.starts_with("ok"),
            "GET /verify on {addr}: {} {}",
            r.status,
            r.body.trim()
        );
        Ok(r.body.trim().to_string())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.env.dir);
    }
}

impl Workload for Vm {
    fn name(&self) -> String {
        "vm".into()
    }
    fn is_vm(&self) -> bool {
        true
    }
    fn app_toml(&self) -> String {
        let e = &self.env;
        let mut s = app_entry(
            "vm",
            &e.launch_argv(&self.guest_sh),
            None,
            &[],
            &format!(
                "{{ http = {} }}",
                q(&format!("http://127.0.0.1:{}/", e.port))
            ),
            "600s",
        );
        // TCG is slow: the agent's maps (portable source) and QMP get more than the defaults
        // (as vm-e2e's own config); vm_prefetch is left at torpord's default.
        s += &format!(
            "kind = \"vm\"\nvm = {{ qmp = {}, agent = {}, agent_timeout = \"120s\", qmp_timeout = \"60s\" }}\n",
            q(&e.qmp_path().display().to_string()),
            q(&e.agent_path().display().to_string())
        );
        s
    }
    fn setup(&mut self, _d: &Daemon) -> Result<Value> {
        http_first_ok(self.env.port, "/", &At::now(), Duration::from_secs(600))?;
        self.verify(self.env.app_addr())?;
        self.verify(self.env.check_addr())?;
        // The idle process must be older than the agent's 16 s activity window at the first
        // Stop, so its memory is classed as an inactive process's (as vm-e2e does).
        std::thread::sleep(Duration::from_secs(17));
        Ok(self.info.clone())
    }
    fn run(&mut self, at: &At, _seed: u64, mark: &mut dyn FnMut()) -> Result<Outcome> {
        let (fr, _) = http_first_ok(self.env.port, "/", at, Duration::from_secs(900))?;
        mark();
        let v = self.verify(self.env.app_addr())?;
        let mut o = Outcome {
            first_response_s: fr,
            ..Default::default()
        };
        o.metrics.insert("all_data_back_s".into(), at.secs());
        self.verify(self.env.check_addr())?;
        o.note = v;
        Ok(o)
    }
    fn check(&mut self, _d: &Daemon) -> Result<String> {
        let a = self.verify(self.env.idle_addr())?;
        Ok(format!(
            "the guest's idle process ({} MiB, untouched across all trials) GET /verify: {a}",
            self.env.idle_mib
        ))
    }
    fn describe(&self) -> String {
        let e = &self.env;
        format!(
            "The VM e2e guest of `vm-e2e/` (`vm-e2e/guest.sh prepare`/`launch` reused): QEMU **TCG** (no KVM here), {} MiB RAM, 1 vCPU; a web app \
             holding {} MiB (`GET /` touches a {} MiB working set), a checksum process ({} MiB), an idle process ({} MiB, verified once at the end), \
             `torpor-guest serve` on virtio-serial; run by torpord as a `kind = \"vm\"` app (`vm_prefetch` at torpord's default). **First response**: \
             `GET /` through hostfwd, sent the instant the Start request is sent; **all app data back**: then the app's `GET /verify` (reads and \
             checks all its data), time from the Start request to its answer; the checksum process is verified after every trial.",
            e.mem_mib, e.app_mib, e.ws_mib, e.check_mib, e.idle_mib
        )
    }
    fn columns(&self) -> Vec<Col> {
        vec![Col {
            key: "all_data_back_s",
            label: "all app data back (`/verify` done), s",
            higher_better: false,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_values_are_deterministic_letters() {
        let a = redis_value(7, 1024);
        assert_eq!(a.len(), 1024);
        assert_eq!(a, redis_value(7, 1024));
        assert_ne!(a, redis_value(8, 1024));
        assert!(a.iter().all(|c| c.is_ascii_lowercase()));
        assert_eq!(redis_key(42), "k:000000042");
    }

    #[test]
    fn app_entries_are_valid_toml() {
        let s = app_entry(
            "a",
            &["/bin/x".into(), "".into(), "q\"uote".into()],
            Some(Path::new("/w")),
            &[("K", "v v".into())],
            "{ tcp = 1 }",
            "60s",
        );
        let v: toml::Value = toml::from_str(&s).unwrap();
        let app = &v["app"][0];
        assert_eq!(app["command"][1].as_str(), Some(""));
        assert_eq!(app["command"][2].as_str(), Some("q\"uote"));
        assert_eq!(app["env"]["K"].as_str(), Some("v v"));
        assert_eq!(app["ready"]["tcp"].as_integer(), Some(1));
    }
}
