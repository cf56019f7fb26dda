//! A real server for the scenario harness: Tomcat 10 from Debian (`catalina.sh run`) with a
//! small webapp (`bench/tomcat-app/`: a servlet, compiled here with the JDK's `javac`, that
//! allocates and fills N MiB of heap at startup and answers `GET /app/?touch=all` by reading
//! one byte of every page of it). Cold starts, and servers kept for resumes in their own memory
//! cgroup and freezer; a minimal HTTP/1.0 client; duty-cycled CPU burners.

use anyhow::{bail, ensure, Context, Result};
use procswap::cgroup::{self, Memcg};
use procswap::Freezer;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOMCAT_HOME: &str = "/usr/share/tomcat10";
const APP_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tomcat-app");
/// The timed request.
pub const REQUEST: &str = "/app/?touch=all";
const FREEZE_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// What is installed where (for the result files).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerInfo {
    pub tomcat_version: String,
    pub java_version: String,
    pub java_home: String,
    pub app_mib: u64,
    pub request: String,
}

/// A prepared Tomcat installation: the compiled webapp, a work dir, the JDK.
pub struct Tomcat {
    pub dir: PathBuf,
    java_home: String,
    pub info: ServerInfo,
    bases: usize,
}

/// Runs `c args`, its trimmed standard output, or an error with its standard error.
pub fn cmd_out(c: &str, args: &[&str]) -> Result<String> {
    let o = Command::new(c)
        .args(args)
        .output()
        .with_context(|| format!("run {c}"))?;
    ensure!(
        o.status.success(),
        "{c} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    ))
}

impl Tomcat {
    /// Check Tomcat and the JDK are there, compile the webapp into a fresh work dir.
    pub fn prepare(app_mib: u64) -> Result<Tomcat> {
        ensure!(
            Path::new(TOMCAT_HOME).join("bin/catalina.sh").exists(),
            "{TOMCAT_HOME}/bin/catalina.sh missing: apt-get install tomcat10 (bench/run-experiments.sh does)"
        );
        let (javac, java_home) = java_home("javac").context(
            "no javac: apt-get install openjdk-17-jdk-headless (bench/run-experiments.sh does)",
        )?;
        let dir = std::env::temp_dir().join(format!("torpor-bench-tomcat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let classes = dir.join("app/WEB-INF/classes");
        std::fs::create_dir_all(&classes)?;
        std::fs::copy(
            Path::new(APP_SRC).join("web.xml"),
            dir.join("app/WEB-INF/web.xml"),
        )
        .context("copy web.xml")?;
        let o = Command::new(&javac)
            .arg("-d")
            .arg(&classes)
            .arg("-cp")
            .arg(format!("{TOMCAT_HOME}/lib/servlet-api.jar"))
            .arg(Path::new(APP_SRC).join("TorporApp.java"))
            .output()
            .context("run javac")?;
        ensure!(
            o.status.success(),
            "javac TorporApp.java failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let tomcat_version = cmd_out("dpkg-query", &["-W", "-f=${Version}", "tomcat10"])
            .unwrap_or_else(|_| "?".into());
        let java_version = cmd_out(&format!("{java_home}/bin/java"), &["-version"])
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_default();
        Ok(Tomcat {
            dir,
            java_home: java_home.clone(),
            info: ServerInfo {
                tomcat_version,
                java_version,
                java_home,
                app_mib,
                request: REQUEST.into(),
            },
            bases: 0,
        })
    }

    /// A fresh CATALINA_BASE (package config, HTTP on a free port, no shutdown port, our webapp
    /// as `/app`). Returns (base, port).
    fn new_base(&mut self) -> Result<(PathBuf, u16)> {
        self.bases += 1;
        let base = self.dir.join(format!("base-{}", self.bases));
        let port = free_port()?;
        catalina_base(&base, port)?;
        copy_dir(&self.dir.join("app"), &base.join("webapps/app"))?;
        Ok((base, port))
    }

    fn command(&self, base: &Path, cgroups: &[PathBuf]) -> Command {
        let mut c = catalina_run(&self.java_home, base, cgroups);
        c.env("TORPOR_APP_MIB", self.info.app_mib.to_string());
        c
    }

    /// One cold start: exec → first 200 answer to [`REQUEST`]. Stops the server afterwards.
    /// Returns (seconds, resident bytes when it answered).
    pub fn cold_start(&mut self) -> Result<(f64, u64)> {
        let (base, port) = self.new_base()?;
        let log = std::fs::File::create(base.join("logs/stdout.log"))?;
        let t0 = Instant::now();
        let mut child = self
            .command(&base, &[])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn catalina.sh")?;
        let r = wait_ready(&mut child, port, t0, &base);
        let secs = t0.elapsed().as_secs_f64();
        let rss = rss_bytes(child.id() as i32).unwrap_or(0);
        stop(&mut child);
        let _ = std::fs::remove_dir_all(&base);
        r?;
        Ok((secs, rss))
    }

    /// Start a server in its own memory cgroup and freezer (for resumes); returns once it has
    /// answered [`REQUEST`].
    pub fn start_kept(&mut self, name: &str) -> Result<Server> {
        let (base, port) = self.new_base()?;
        let own = cgroup::pid_cgroups(std::process::id() as i32)?;
        let cgname = format!("torpor-bench-{}-{name}", std::process::id());
        let mut dirs = Vec::new();
        let (memcg, freezer) = if let Some(mp) = &own.v1_memory {
            let m = cgroup::create_v1(mp, &cgname)?;
            dirs.push(m.clone());
            let f = match (&own.v1_freezer, &own.v2) {
                (Some(fp), _) => {
                    let f = cgroup::create_v1(fp, &cgname)?;
                    dirs.push(f.clone());
                    Freezer::CgroupV1(f)
                }
                (None, Some(v2)) => {
                    let f = cgroup::create_v2(v2, &cgname, &[])?;
                    dirs.push(f.clone());
                    Freezer::CgroupV2(f)
                }
                _ => bail!("no freezer hierarchy"),
            };
            (Memcg::V1(m), f)
        } else {
            let v2 = own
                .v2
                .clone()
                .context("no v1 memory hierarchy and no cgroup2 mount")?;
            let d = cgroup::create_v2(&v2, &cgname, &["memory"])?;
            dirs.push(d.clone());
            (Memcg::V2(d.clone()), Freezer::CgroupV2(d))
        };
        let log = std::fs::File::create(base.join("logs/stdout.log"))?;
        let t0 = Instant::now();
        let child = self
            .command(&base, &dirs)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn catalina.sh")?;
        let pid = child.id() as i32;
        let mut srv = Server {
            child: Some(child),
            pid,
            port,
            base,
            memcg,
            freezer,
            cgroups: dirs,
            frozen: false,
            start_seconds: 0.0,
        };
        wait_ready(srv.child.as_mut().context("child")?, port, t0, &srv.base)?;
        srv.start_seconds = t0.elapsed().as_secs_f64();
        let found = Memcg::of_pid(pid)?.context("no memcg for the server")?;
        ensure!(
            found == srv.memcg,
            "server pid {pid} is in memcg {found:?}, expected {:?}",
            srv.memcg
        );
        Ok(srv)
    }
}

impl Drop for Tomcat {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server kept for resumes (stopped and its cgroups removed on drop).
pub struct Server {
    child: Option<Child>,
    pub pid: i32,
    pub port: u16,
    base: PathBuf,
    pub memcg: Memcg,
    pub freezer: Freezer,
    cgroups: Vec<PathBuf>,
    frozen: bool,
    /// Its own (setup) cold start, seconds.
    pub start_seconds: f64,
}

impl Server {
    pub fn freeze(&mut self) -> Result<()> {
        crate::resume::set_frozen(&self.freezer, &mut self.frozen, true, FREEZE_TIMEOUT)
    }
    pub fn thaw(&mut self) -> Result<()> {
        crate::resume::set_frozen(&self.freezer, &mut self.frozen, false, FREEZE_TIMEOUT)
    }
    /// GET [`REQUEST`]; the body.
    pub fn request(&self) -> Result<String> {
        let (code, body) = http_get(self.port, REQUEST, Duration::from_secs(120))?;
        ensure!(
            code == 200,
            "GET {REQUEST} on :{} answered {code}: {body}",
            self.port
        );
        Ok(body)
    }
    pub fn rss(&self) -> u64 {
        rss_bytes(self.pid).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.frozen {
            let _ = self.freezer.thaw(FREEZE_TIMEOUT);
        }
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
        for d in self.cgroups.iter().rev() {
            let _ = cgroup::remove(d);
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn wait_ready(child: &mut Child, port: u16, t0: Instant, base: &Path) -> Result<()> {
    wait_http_ok(
        child,
        port,
        REQUEST,
        t0 + START_TIMEOUT,
        &base.join("logs/stdout.log"),
    )
}

/// Poll `GET path` on 127.0.0.1:`port` every 20 ms until a 200, while `child` (the server)
/// lives and `deadline` has not passed; a server that exits is reported with its log's tail.
pub fn wait_http_ok(
    child: &mut Child,
    port: u16,
    path: &str,
    deadline: Instant,
    log: &Path,
) -> Result<()> {
    loop {
        if let Ok((200, _)) = http_get(port, path, Duration::from_secs(30)) {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            bail!(
                "Tomcat exited ({st}) before answering; log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        ensure!(
            Instant::now() < deadline,
            "Tomcat on :{port} did not answer 200 on {path} in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// TERM the process group, KILL after 15 s.
pub fn stop(child: &mut Child) {
    let pg = child.id() as i32;
    terminate(child, -pg, Duration::from_secs(15));
}

/// SIGTERM `target` (`child`'s pid, or its process group as the negative pgid), wait up to
/// `grace` for `child` to exit, else SIGKILL `target` and reap `child`. True when it exited
/// within `grace`.
pub fn terminate(child: &mut Child, target: i32, grace: Duration) -> bool {
    // SAFETY: kill(2) on our own, not yet reaped child (or its process group).
    unsafe { libc::kill(target, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(target, libc::SIGKILL) };
    let _ = child.wait();
    false
}

/// VmRSS of `pid` in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|k| k * 1024)
}

/// The JDK/JRE tool `tool` (`java`, `javac`) found on PATH, symbolic links resolved, and the
/// JAVA_HOME it lives in.
pub fn java_home(tool: &str) -> Option<(PathBuf, String)> {
    let t = which(tool)?;
    let t = std::fs::canonicalize(&t).unwrap_or(t);
    let home = t.parent()?.parent()?.display().to_string();
    Some((t, home))
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Copy a directory tree (symbolic links followed: Debian's webapps link into /usr/share).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let e = e?;
        let p = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &p)?;
        } else {
            std::fs::copy(e.path(), &p).with_context(|| format!("copy {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Make `base` a CATALINA_BASE with no webapp yet: Debian's configuration (`TOMCAT_HOME/etc`),
/// HTTP on `port` instead of 8080, no shutdown port.
pub fn catalina_base(base: &Path, port: u16) -> Result<()> {
    for d in ["conf", "logs", "temp", "work", "webapps", "lib"] {
        std::fs::create_dir_all(base.join(d))?;
    }
    for e in std::fs::read_dir(Path::new(TOMCAT_HOME).join("etc"))? {
        let e = e?;
        if e.path().is_file() {
            std::fs::copy(e.path(), base.join("conf").join(e.file_name()))?;
        }
    }
    let sx = base.join("conf/server.xml");
    let s = std::fs::read_to_string(&sx)?;
    ensure!(
        s.contains("port=\"8080\""),
        "{}: no port=\"8080\" connector",
        sx.display()
    );
    std::fs::write(
        &sx,
        s.replace("port=\"8080\"", &format!("port=\"{port}\""))
            .replace("<Server port=\"8005\"", "<Server port=\"-1\""),
    )?;
    Ok(())
}

/// `catalina.sh run` of Debian's Tomcat for `base`, in its own process group, stdin closed.
/// With `cgroups`, a shell moves itself into them first, then execs catalina.sh (which execs
/// java), so every page the server ever touches is charged to its memcg.
pub fn catalina_run(java_home: &str, base: &Path, cgroups: &[PathBuf]) -> Command {
    let mut script = String::new();
    for d in cgroups {
        script.push_str(&format!(
            "echo $$ > '{}/cgroup.procs' || exit 97; ",
            d.display()
        ));
    }
    script.push_str(&format!("exec '{TOMCAT_HOME}/bin/catalina.sh' run"));
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(script)
        .env("CATALINA_HOME", TOMCAT_HOME)
        .env("CATALINA_BASE", base)
        .env("CATALINA_TMPDIR", base.join("temp"))
        .env("JAVA_HOME", java_home)
        .stdin(Stdio::null())
        .process_group(0);
    c
}

/// GET on 127.0.0.1: (status, trimmed body).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let r = torpor_testsupport::http::get(([127, 0, 0, 1], port).into(), path, timeout)?;
    Ok((r.status, r.body.trim().to_string()))
}

/// Duty-cycled CPU burners, one pinned to each CPU (processes: `torpor-bench __burn`).
pub struct Burners {
    kids: Vec<Child>,
    pub duty: f64,
    t0: Instant,
    cpu0: u64,
    sys0: (u64, u64),
}

/// `(busy, total)` jiffies of all CPUs from /proc/stat.
pub fn cpu_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn proc_cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the comm: state is field 3 → index 0; utime 14 → 11, stime 15 → 12.
    f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
}

/// What burners achieved over their lifetime.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Achieved {
    /// Target duty cycle (0..1).
    pub target: f64,
    /// Burners' own CPU time / (wall × CPUs).
    pub burners: f64,
    /// All CPUs' busy fraction over the same wall time (/proc/stat; other work included).
    pub system_busy: f64,
    pub seconds: f64,
}

impl Burners {
    /// Start one burner per CPU at `duty` (0 = none) with a `period_ms` period.
    pub fn start(exe: &Path, duty: f64, period_ms: u64) -> Result<Burners> {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut kids = Vec::new();
        if duty > 0.0 {
            for cpu in 0..n {
                kids.push(
                    Command::new(exe)
                        .args([
                            "__burn",
                            &duty.to_string(),
                            &period_ms.to_string(),
                            &cpu.to_string(),
                        ])
                        .stdin(Stdio::null())
                        .spawn()
                        .context("spawn burner")?,
                );
            }
        }
        let cpu0 = kids.iter().map(|k| proc_cpu_ticks(k.id() as i32)).sum();
        Ok(Burners {
            kids,
            duty,
            t0: Instant::now(),
            cpu0,
            sys0: cpu_jiffies(),
        })
    }

    /// Achieved load so far.
    pub fn achieved(&self) -> Achieved {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let secs = self.t0.elapsed().as_secs_f64();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ticks: u64 = self
            .kids
            .iter()
            .map(|k| proc_cpu_ticks(k.id() as i32))
            .sum::<u64>()
            - self.cpu0;
        let (b1, t1) = cpu_jiffies();
        let busy = (b1 - self.sys0.0) as f64 / ((t1 - self.sys0.1).max(1)) as f64;
        Achieved {
            target: self.duty,
            burners: ticks as f64 / hz / (secs * n).max(1e-9),
            system_busy: busy,
            seconds: secs,
        }
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for k in &mut self.kids {
            let _ = k.kill();
            let _ = k.wait();
        }
    }
}

/// The burner process body: pin to `cpu`, then spin `duty × period` and sleep the rest of each
/// period (absolute deadlines), forever.
pub fn burn_main(duty: f64, period_ms: u64, cpu: usize) -> ! {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET within its size; sched_setaffinity on ourselves.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let period = Duration::from_millis(period_ms);
    let busy = period.mul_f64(duty.clamp(0.0, 1.0));
    let mut next = Instant::now();
    let mut x: u64 = 1;
    loop {
        let end_busy = next + busy;
        while Instant::now() < end_busy {
            for _ in 0..1000 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
            }
            std::hint::black_box(x);
        }
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
