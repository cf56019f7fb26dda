//! What the demo starts and must remove: its temporary directory, torpord (own socket, state
//! directory and cgroup parent), the cold-started Tomcat, and the app's cgroups. Dropping the
//! session ends and removes all of it, on success, failure or a signal.

use super::{interrupted, Mode};
use anyhow::{bail, ensure, Context, Result};
use bench::server::{self, TOMCAT_HOME};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use torpor_api::paths;

/// The app's name in torpord's configuration.
pub const APP: &str = "tomcat";

/// The two Tomcats: one torpord keeps (`port`), one cold-started beside it (`port_cold`), each
/// with its own CATALINA_BASE holding the package's configuration and default ROOT webapp.
pub struct Tomcats {
    pub java_home: String,
    pub port: u16,
    pub port_cold: u16,
    pub base: PathBuf,
    pub base_cold: PathBuf,
}

impl Tomcats {
    /// Check the package is there, find the JRE, make both CATALINA_BASEs under `dir`.
    pub fn prepare(dir: &Path) -> Result<Tomcats> {
        let catalina = Path::new(TOMCAT_HOME).join("bin/catalina.sh");
        ensure!(
            catalina.exists(),
            "{} missing (apt-get install tomcat10)",
            catalina.display()
        );
        ensure!(
            Path::new(ROOT_WEBAPP).is_dir(),
            "{ROOT_WEBAPP} missing (package tomcat10)"
        );
        let (_, java_home) = server::java_home("java")
            .context("no java on PATH (apt-get install default-jre-headless)")?;
        let port = server::free_port()?;
        let port_cold = (0..100)
            .map(|_| server::free_port())
            .find(|p| p.as_ref().map_or(true, |p| *p != port))
            .context("no second free TCP port")??;
        let t = Tomcats {
            java_home,
            port,
            port_cold,
            base: dir.join("catalina-base"),
            base_cold: dir.join("catalina-base-cold"),
        };
        for (base, port) in [(&t.base, t.port), (&t.base_cold, t.port_cold)] {
            server::catalina_base(base, port)?;
            server::copy_dir(Path::new(ROOT_WEBAPP), &base.join("webapps/ROOT"))?;
        }
        Ok(t)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

/// The package's default ROOT webapp.
const ROOT_WEBAPP: &str = "/usr/share/tomcat10-root/default_root";

/// A TOML basic string.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

pub struct Session {
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub cg_parent: String,
    bin: PathBuf,
    torpord: Option<Child>,
    cold: Option<Child>,
}

impl Session {
    /// A fresh temporary directory; `bin` holds `torpord` and `torpor`.
    pub fn new(bin: &Path) -> Result<Session> {
        for b in ["torpord", "torpor"] {
            ensure!(
                bin.join(b).is_file(),
                "{} missing (build failed?)",
                bin.join(b).display()
            );
        }
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("torpor-demo.{pid}"));
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(Session {
            sock: dir.join("torpord.sock"),
            dir,
            cg_parent: format!("torpor-demo-{pid}"),
            bin: bin.to_path_buf(),
            torpord: None,
            cold: None,
        })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("torpord.toml")
    }

    /// torpord's configuration: the standby pool (prestart, purge always) with `mode`.
    pub fn write_config(&self, mode: Mode, t: &Tomcats) -> Result<()> {
        let d = |p: &Path| q(&p.display().to_string());
        let base = &t.base;
        let text = format!(
            "# written by torpor-bench demo\n\
             socket = {sock}\nsocket_mode = \"0600\"\nstate_dir = {state}\nreserve = \"256M\"\n\
             purge = \"always\"\nprefetch = \"{mode}\"\nbackend = \"auto\"\ncgroup_parent = {cg}\n\
             sample_interval = \"1s\"\n\n\
             [[app]]\nname = \"{APP}\"\ncommand = [{cmd}, \"run\"]\nworkdir = {base_q}\n\
             env = {{ CATALINA_HOME = {home}, CATALINA_BASE = {base_q}, CATALINA_TMPDIR = {tmp}, JAVA_HOME = {java} }}\n\
             ready = {{ http = {url} }}\nready_timeout = \"90s\"\nprestart = true\n",
            sock = d(&self.sock),
            state = d(&self.dir.join("state")),
            mode = mode.name(),
            cg = q(&self.cg_parent),
            cmd = q(&format!("{TOMCAT_HOME}/bin/catalina.sh")),
            base_q = d(base),
            home = q(TOMCAT_HOME),
            tmp = d(&base.join("temp")),
            java = q(&t.java_home),
            url = q(&t.url()),
        );
        std::fs::write(self.config_path(), text).context("write torpord.toml")
    }

    /// `torpord --check`, then torpord itself (RUST_LOG=info, log appended to torpord.log);
    /// returns once its socket answers.
    pub fn start_torpord(&mut self) -> Result<()> {
        let torpord = self.bin.join("torpord");
        let check = Command::new(&torpord)
            .args(["--check", "--config"])
            .arg(self.config_path())
            .output()
            .with_context(|| format!("run {}", torpord.display()))?;
        ensure!(
            check.status.success(),
            "torpord rejected the generated config: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("torpord.log"))?;
        let child = Command::new(&torpord)
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", torpord.display()))?;
        self.torpord = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.get::<torpor_api::Health>(paths::HEALTH).is_ok() {
                return Ok(());
            }
            self.check_torpord()?;
            ensure!(
                Instant::now() < deadline,
                "torpord's socket did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An error once torpord has exited (or a signal asked us to end).
    pub fn check_torpord(&mut self) -> Result<()> {
        interrupted()?;
        match self.torpord.as_mut().map(Child::try_wait).transpose()? {
            Some(Some(st)) => bail!("torpord exited ({st})"),
            Some(None) => Ok(()),
            None => bail!("torpord is not running"),
        }
    }

    /// SIGTERM torpord (it leaves the app frozen) and wait for it; KILL after `secs`.
    fn end_torpord(&mut self, secs: u64) -> Result<()> {
        let Some(mut c) = self.torpord.take() else {
            return Ok(());
        };
        let pid = c.id() as i32;
        ensure!(
            server::terminate(&mut c, pid, Duration::from_secs(secs)),
            "torpord did not exit within {secs} s of SIGTERM (killed)"
        );
        Ok(())
    }

    pub fn stop_torpord(&mut self) -> Result<()> {
        self.end_torpord(15)
    }

    /// GET `path` of torpord's API, typed.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (st, v) =
            vm_e2e::torpord::call(&self.sock, "GET", path, None, Duration::from_secs(60))?;
        ensure!(st == 200, "GET {path}: {st} {v}");
        serde_json::from_value(v).with_context(|| format!("GET {path}: unexpected answer"))
    }

    pub fn app(&self) -> Result<torpor_api::AppStatus> {
        self.get(&paths::app(APP))
    }

    /// `torpor --socket SOCK ARGS...`: its standard output (an error with its stderr).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let o = Command::new(self.bin.join("torpor"))
            .arg("--socket")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run torpor")?;
        ensure!(
            o.status.success(),
            "torpor {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// `torpor --json ARGS...`, its answer typed.
    pub fn cli_json<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        let out = self.cli(&[&["--json"], args].concat())?;
        serde_json::from_str(&out)
            .with_context(|| format!("torpor --json {}: unexpected answer: {out}", args.join(" ")))
    }

    /// One cold start of the second Tomcat: exec of catalina.sh → first 200 on its port.
    /// Returns (seconds, resident bytes when it answered); the server is stopped again.
    pub fn cold_start(&mut self, t: &Tomcats, n: usize) -> Result<(f64, u64)> {
        let log_path = self.dir.join(format!("cold-{n}.log"));
        let log = std::fs::File::create(&log_path)?;
        let t0 = Instant::now();
        let child = server::catalina_run(&t.java_home, &t.base_cold, &[])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn catalina.sh")?;
        let child = self.cold.insert(child);
        server::wait_http_ok(
            child,
            t.port_cold,
            "/",
            t0 + Duration::from_secs(90),
            &log_path,
        )?;
        let secs = t0.elapsed().as_secs_f64();
        let rss = server::rss_bytes(child.id() as i32).unwrap_or(0);
        self.end_cold();
        Ok((secs, rss))
    }

    fn end_cold(&mut self) {
        if let Some(mut c) = self.cold.take() {
            server::stop(&mut c);
        }
    }

    /// The last lines of torpord's and the app's logs (after a failure).
    pub fn log_tails(&self) -> String {
        let tail = |p: PathBuf, n: usize| {
            let s = std::fs::read_to_string(p).unwrap_or_default();
            let v: Vec<&str> = s.lines().rev().take(n).collect();
            v.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        let mut out = String::new();
        for (what, p, n) in [
            ("torpord's log", self.dir.join("torpord.log"), 15),
            (
                "the app's log",
                self.dir.join(format!("state/logs/{APP}.log")),
                10,
            ),
        ] {
            let t = tail(p, n);
            if !t.is_empty() {
                out += &format!("--- last lines of {what}:\n{t}\n");
            }
        }
        out
    }

    /// The app's cgroup directories under our parent, in every hierarchy, and the parents.
    fn cgroups(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let root = Path::new("/sys/fs/cgroup");
        let mut parents = vec![root.join(&self.cg_parent)];
        if let Ok(rd) = std::fs::read_dir(root) {
            parents.extend(rd.flatten().map(|e| e.path().join(&self.cg_parent)));
        }
        parents.retain(|p| p.is_dir());
        let apps = parents
            .iter()
            .filter_map(|p| std::fs::read_dir(p).ok())
            .flat_map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()))
            .collect();
        (apps, parents)
    }

    /// Thaw and kill everything in our cgroups, then remove them.
    fn remove_cgroups(&self) {
        let (apps, parents) = self.cgroups();
        let procs = |d: &Path| procswap::cgroup::procs(d).unwrap_or_default();
        for d in &apps {
            let _ = std::fs::write(d.join("cgroup.freeze"), "0");
            let _ = std::fs::write(d.join("freezer.state"), "THAWED");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while apps.iter().any(|d| !procs(d).is_empty()) && Instant::now() < deadline {
            for p in apps.iter().flat_map(|d| procs(d)) {
                // SAFETY: kill(2) on a process in the demo's own cgroups.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for d in apps.iter().chain(&parents) {
            if let Err(e) = procswap::cgroup::remove(d) {
                eprintln!("demo: could not remove cgroup {}: {e}", d.display());
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end_cold();
        if let Err(e) = self.end_torpord(10) {
            eprintln!("demo: {e:#}");
        }
        self.remove_cgroups();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
