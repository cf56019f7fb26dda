//! PostgreSQL 15 in the activation benchmark: a multi-process app (postmaster, auxiliary
//! processes, one backend per connection) whose working memory is shared memory
//! (`shared_buffers`) and the page cache of its data files. The workload is `pgbench -S`
//! (select-only); the figure of merit is TPS over the first 10 s after the Start request.

use super::apps::{app_entry, dpkg_version, local, At, Col, Outcome, Workload};
use super::daemon::Daemon;
use crate::server::free_port;
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// PostgreSQL 15 from Debian (`postgres` run by torpord as user postgres via `setpriv`), a
/// pgbench database of `scale`, `shared_buffers` of `sb_mib` MiB.
pub struct Postgres {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    scale: u64,
    sb_mib: u64,
    seconds: u64,
    clients: u64,
    runs: u64,
    info: Value,
}

impl Postgres {
    pub fn new(work: &Path, scale: u64, sb_mib: u64, seconds: u64) -> Result<Postgres> {
        let bin = PathBuf::from("/usr/lib/postgresql/15/bin");
        ensure!(bin.join("postgres").exists() && bin.join("pgbench").exists(), "{}/postgres or pgbench missing: apt-get install postgresql-15 (bench/run-activation.sh does)", bin.display());
        let pw = nix::unistd::User::from_name("postgres")?
            .context("no user postgres (package postgresql-common creates it)")?;
        let dir = work.join("pg");
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["", "data", "run"] {
            std::fs::create_dir_all(dir.join(d))?;
            nix::unistd::chown(&dir.join(d), Some(pw.uid), Some(pw.gid))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("data"), std::fs::Permissions::from_mode(0o700))?;
        // The work dir must be reachable by user postgres.
        let mut p = dir.parent();
        while let Some(d) = p {
            if d == Path::new("/") {
                break;
            }
            let m = std::fs::metadata(d)?.permissions().mode();
            ensure!(
                m & 0o001 != 0,
                "{} is not searchable by user postgres (mode {m:o})",
                d.display()
            );
            p = d.parent();
        }
        let o = Command::new("setpriv")
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(bin.join("initdb"))
            .args(["-D"])
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .context("run initdb")?;
        ensure!(
            o.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(Postgres {
            port: free_port()?,
            dir,
            bin,
            scale,
            sb_mib,
            seconds,
            clients: 4,
            runs: 0,
            info: Value::Null,
        })
    }

    fn psql(&self, sql: &str) -> Result<String> {
        let o = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-p",
                &self.port.to_string(),
                "-c",
                sql,
            ])
            .output()
            .context("run psql")?;
        ensure!(
            o.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    fn prewarm(&self) -> Result<()> {
        self.psql("SELECT pg_prewarm('pgbench_accounts'), pg_prewarm('pgbench_accounts_pkey'), pg_prewarm('pgbench_branches'), pg_prewarm('pgbench_tellers')")?;
        Ok(())
    }
}
/// The transaction times of every pgbench log file `<prefix>.*` in `dir` (the files are removed
/// once read); none at all is an error.
fn pgbench_log_times_of(dir: &Path, prefix: &Path) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    let name = prefix
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with(&format!("{name}.")) {
            times.extend(pgbench_log_times(&std::fs::read_to_string(e.path())?));
            let _ = std::fs::remove_file(e.path());
        }
    }
    ensure!(
        !times.is_empty(),
        "pgbench wrote no transaction log ({}*)",
        prefix.display()
    );
    Ok(times)
}

/// Completion times (unix seconds) from pgbench per-transaction logs
/// (`client_id transaction_no time script_no time_epoch time_us`).
pub fn pgbench_log_times(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (s, us) = (
                f.get(4)?.parse::<f64>().ok()?,
                f.get(5)?.parse::<f64>().ok()?,
            );
            Some(s + us / 1e6)
        })
        .collect()
}

/// Transactions completed in each second `[i, i+1)` after `t0`, for `n` seconds.
pub fn per_second(times: &[f64], t0: f64, n: usize) -> Vec<f64> {
    let mut v = vec![0.0; n];
    for t in times {
        let d = t - t0;
        if d >= 0.0 && (d as usize) < n {
            v[d as usize] += 1.0;
        }
    }
    v
}

/// One simple query over the PostgreSQL v3 wire protocol (user and database `postgres`, trust
/// authentication, TCP on 127.0.0.1): the first column of each row.
pub fn pg_query(port: u16, sql: &str, timeout: Duration) -> Result<Vec<String>> {
    let mut s = TcpStream::connect_timeout(&local(port), Duration::from_secs(5))
        .with_context(|| format!("connect postgres :{port}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let mut startup = Vec::new();
    startup.extend_from_slice(&196_608u32.to_be_bytes());
    for kv in ["user", "postgres", "database", "postgres"] {
        startup.extend_from_slice(kv.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut msg = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&startup);
    s.write_all(&msg)?;
    let mut r = BufReader::new(s.try_clone()?);
    let read_msg = |r: &mut BufReader<TcpStream>| -> Result<(u8, Vec<u8>)> {
        let mut h = [0u8; 5];
        r.read_exact(&mut h)?;
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        ensure!((4..1 << 24).contains(&len), "bad message length {len}");
        let mut b = vec![0u8; len - 4];
        r.read_exact(&mut b)?;
        Ok((h[0], b))
    };
    let err = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .replace('\0', " ")
            .trim()
            .to_string()
    };
    loop {
        match read_msg(&mut r)? {
            (b'R', b) => ensure!(
                b.get(..4) == Some(&[0, 0, 0, 0][..]),
                "authentication required (code {:?}): the benchmark's cluster uses trust",
                b.get(..4)
            ),
            (b'E', b) => bail!("postgres: {}", err(&b)),
            (b'Z', _) => break,
            _ => {}
        }
    }
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    s.write_all(&q)?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        match read_msg(&mut r)? {
            (b'D', b) => {
                ensure!(b.len() >= 6, "short DataRow");
                let n = i32::from_be_bytes([b[2], b[3], b[4], b[5]]);
                rows.push(if n < 0 {
                    "NULL".into()
                } else {
                    String::from_utf8_lossy(b.get(6..6 + n as usize).context("short DataRow")?)
                        .to_string()
                });
            }
            (b'E', b) => error = Some(err(&b)),
            (b'Z', _) => break,
            _ => {}
        }
    }
    let _ = s.write_all(&[b'X', 0, 0, 0, 4]);
    if let Some(e) = error {
        bail!("postgres: {e}");
    }
    Ok(rows)
}

impl Workload for Postgres {
    fn name(&self) -> String {
        "postgres".into()
    }
    fn app_toml(&self) -> String {
        let cmd: Vec<String> = vec![
            "setpriv".into(),
            "--reuid=postgres".into(),
            "--regid=postgres".into(),
            "--init-groups".into(),
            "--".into(),
            self.bin.join("postgres").display().to_string(),
            "-D".into(),
            self.dir.join("data").display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-k".into(),
            self.dir.join("run").display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            format!("shared_buffers={}MB", self.sb_mib),
            "-c".into(),
            "max_connections=30".into(),
        ];
        app_entry(
            "postgres",
            &cmd,
            Some(&self.dir),
            &[],
            &format!("{{ tcp = {} }}", self.port),
            "120s",
        )
    }
    fn setup(&mut self, _d: &Daemon) -> Result<Value> {
        let t = Instant::now();
        while self.psql("SELECT 1").is_err() {
            ensure!(
                t.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not accept connections within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let ti = Instant::now();
        let o = Command::new(self.bin.join("pgbench"))
            .args([
                "-i",
                "-q",
                "-s",
                &self.scale.to_string(),
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &self.port.to_string(),
                "postgres",
            ])
            .output()
            .context("run pgbench -i")?;
        ensure!(
            o.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let init_s = ti.elapsed().as_secs_f64();
        self.psql("CREATE EXTENSION IF NOT EXISTS pg_prewarm")?;
        self.prewarm()?;
        let db: u64 = self.psql("SELECT pg_database_size('postgres')")?.parse()?;
        let sb = self.psql("SHOW shared_buffers")?;
        let ver = self.psql("SHOW server_version")?;
        if db < 1 << 30 {
            eprintln!("activation: postgres: the pgbench database is {} MiB, below the 1 GiB issue 12 asks for (ACTIVATION_PG_SCALE)", db >> 20);
        }
        self.info = json!({"postgresql_15": dpkg_version("postgresql-15"), "server_version": ver, "shared_buffers": sb, "pgbench_scale": self.scale,
            "database_bytes": db, "init_seconds": init_s, "port": self.port, "clients": self.clients, "threads": 2, "window_seconds": self.seconds});
        Ok(self.info.clone())
    }
    fn settle(&mut self, _d: &Daemon) -> Result<()> {
        self.prewarm()
    }
    fn run(&mut self, at: &At, seed: u64, mark: &mut dyn FnMut()) -> Result<Outcome> {
        self.runs += 1;
        let prefix = self.dir.join(format!("pgbench-log-{}", self.runs));
        // Our own probe query and pgbench go out together, at once.
        let aid =
            torpor_testsupport::pattern::Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
                .next()
                % (self.scale * 100_000)
                + 1;
        let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}");
        let port = self.port;
        let child = Command::new(self.bin.join("pgbench"))
            .args([
                "-S",
                "-n",
                "-c",
                &self.clients.to_string(),
                "-j",
                "2",
                "-T",
                &(self.seconds + 3).to_string(),
                "-l",
            ])
            .arg(format!("--log-prefix={}", prefix.display()))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &port.to_string(),
                "postgres",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn pgbench")?;
        let probe = pg_query(port, &sql, Duration::from_secs(600));
        let fr = at.secs();
        mark();
        let o = child.wait_with_output()?;
        let answer = probe.with_context(|| format!("first query {sql:?}"))?;
        ensure!(answer.len() == 1, "{sql:?} answered {answer:?}");
        ensure!(
            o.status.success(),
            "pgbench -S: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        let times = pgbench_log_times_of(&self.dir, &prefix)?;
        let first_tx = times.iter().copied().fold(f64::MAX, f64::min);
        let series = per_second(&times, at.t0_unix, self.seconds as usize);
        let mut out = Outcome {
            first_response_s: fr,
            series: series.clone(),
            ..Default::default()
        };
        out.metrics.insert(
            "tps_window".into(),
            series.iter().sum::<f64>() / self.seconds as f64,
        );
        out.metrics
            .insert("pgbench_first_tx_s".into(), first_tx - at.t0_unix);
        out.metrics
            .insert("transactions".into(), times.len() as f64);
        let stdout = String::from_utf8_lossy(&o.stdout);
        if let Some(l) = stdout.lines().find(|l| l.starts_with("latency average")) {
            out.note = l.trim().to_string();
        }
        Ok(out)
    }
    fn describe(&self) -> String {
        format!(
            "PostgreSQL {} from Debian (`postgres` run by torpord as user postgres through `setpriv`), `shared_buffers = {}`, a pgbench \
             database of scale {} ({} MiB), tables prewarmed into shared buffers (`pg_prewarm`) after loading. **First response**: the answer \
             to `SELECT abalance FROM pgbench_accounts WHERE aid = <random>` on our own connection (PostgreSQL wire protocol, trust auth), sent the \
             instant the Start request is sent. **Workload**: `pgbench -S` (select-only, {} clients, 2 threads, per-transaction log) started at \
             the same instant; **TPS over {} s**: transactions completed (pgbench's log, unix time) in [Start, Start + {} s) / {}; the \
             per-second series is in the table below.",
            self.info["server_version"].as_str().unwrap_or("?"),
            self.info["shared_buffers"].as_str().unwrap_or("?"),
            self.scale,
            self.info["database_bytes"].as_u64().unwrap_or(0) >> 20,
            self.clients,
            self.seconds,
            self.seconds,
            self.seconds
        )
    }
    fn columns(&self) -> Vec<Col> {
        vec![
            Col {
                key: "tps_window",
                label: "TPS over the first 10 s",
                higher_better: true,
            },
            Col {
                key: "pgbench_first_tx_s",
                label: "pgbench's first transaction, s",
                higher_better: false,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_logs_and_buckets() {
        let log = "0 1 1520 0 1700000000 250000\n1 1 1600 0 1700000001 900000\n0 2 800 0 1700000012 0\nbad line\n";
        let t = pgbench_log_times(log);
        assert_eq!(t.len(), 3);
        assert!((t[0] - 1_700_000_000.25).abs() < 1e-6);
        assert_eq!(
            per_second(&t, 1_700_000_000.0, 10),
            vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }
}
