//! torpord as the activation benchmark runs it: a configuration that keeps torpord's defaults
//! (only the socket, state directory and cgroup parent are set, to stay apart from other torpord
//! instances on a shared machine), a `warm` variant with `purge = "never"`, restarts between the
//! two (torpord adopts the running or frozen app: the same process throughout), API calls, and
//! the app's memory cgroup.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A TOML basic string.
pub fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// torpord for one app.
pub struct Daemon {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub app: String,
    pub cg_parent: String,
    app_toml: String,
    child: Option<Child>,
    /// The configuration torpord runs with now: `true` = the warm one (`purge = "never"`).
    pub warm: bool,
    pub restarts: usize,
    /// The purge method every Stop asks for (`None`: torpord's configured one, the ordered
    /// purge): `kernel` for the `demand-stock` trials.
    pub stop_purge: Option<torpor_api::PurgeMethod>,
    /// Set when the last trial ended with a Stop (the one that ends its timed Start's cycle)
    /// and this torpord has not been restarted since: that Stop's purge method. The next
    /// trial's conditioning starts from that Stop, when it asks for the same purge, instead of
    /// stopping again.
    pub stopped_after_trial: Option<Option<torpor_api::PurgeMethod>>,
}

impl Daemon {
    pub fn new(bin: &Path, dir: &Path, app: &str, app_toml: &str) -> Result<Daemon> {
        std::fs::create_dir_all(dir.join("state"))
            .with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(Daemon {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            sock: dir.join("torpord.sock"),
            app: app.to_string(),
            cg_parent: format!("torpor-activation-{}-{app}", std::process::id()),
            app_toml: app_toml.to_string(),
            child: None,
            warm: false,
            restarts: 0,
            stop_purge: None,
            stopped_after_trial: None,
        })
    }

    /// The configuration text: torpord's defaults for every policy key (purge, prefetch,
    /// reserve, backend, ...); `warm` adds `purge = "never"`.
    pub fn config_text(&self, warm: bool) -> String {
        let mut s = String::from(
            "# written by torpor-bench activation: torpord's defaults for every policy key; only the socket,\n\
             # state directory and cgroup parent are set (isolation from other torpord instances).\n",
        );
        s += &format!(
            "socket = {}\nstate_dir = {}\ncgroup_parent = {}\n",
            q(&self.sock.display().to_string()),
            q(&self.dir.join("state").display().to_string()),
            q(&self.cg_parent)
        );
        if warm {
            s += "# warm: Stop freezes and never purges; Start is a plain thaw.\npurge = \"never\"\n";
        }
        s + "\n" + &self.app_toml
    }

    fn config_path(&self, warm: bool) -> PathBuf {
        self.dir.join(if warm {
            "torpord-warm.toml"
        } else {
            "torpord.toml"
        })
    }

    /// Start torpord with the default (`warm = false`) or warm configuration.
    pub fn start(&mut self, warm: bool) -> Result<()> {
        ensure!(self.child.is_none(), "torpord already running");
        let cfg = self.config_path(warm);
        std::fs::write(&cfg, self.config_text(warm))?;
        let check = Command::new(&self.bin)
            .arg("--check")
            .arg("--config")
            .arg(&cfg)
            .output()
            .with_context(|| format!("run {}", self.bin.display()))?;
        ensure!(
            check.status.success(),
            "torpord --check {}: {}",
            cfg.display(),
            String::from_utf8_lossy(&check.stderr).trim()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("torpord.log"))?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.child = Some(child);
        self.warm = warm;
        let t = Instant::now();
        loop {
            if let Ok((200, _)) = self.call("GET", "/v1/health", None, Duration::from_secs(5)) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "torpord exited at startup ({st}); log: {}\n{}",
                        self.dir.join("torpord.log").display(),
                        self.log_tail(10)
                    );
                }
            }
            ensure!(
                t.elapsed() < Duration::from_secs(60),
                "torpord's socket did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(self.dir.join("torpord.log")).unwrap_or_default();
        let v: Vec<&str> = s.lines().rev().take(n).collect();
        v.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM torpord (it leaves apps as they are), wait for it.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        bail!("torpord did not exit within 30 s of SIGTERM (killed)")
    }

    /// Run torpord with the warm or the default configuration (restart when it changes); the app
    /// must come back in the same state (adoption).
    pub fn switch(&mut self, warm: bool) -> Result<()> {
        if self.child.is_some() && self.warm == warm {
            return Ok(());
        }
        let before = self.app_status().ok().map(|s| s.state);
        self.stopped_after_trial = None;
        self.stop()?;
        self.start(warm)?;
        self.restarts += 1;
        let st = self.app_status()?.state;
        ensure!(
            before.is_none_or(|b| b == st),
            "torpord restart: app {} was {before:?}, adopted as {st}",
            self.app
        );
        Ok(())
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(u16, Value)> {
        vm_e2e::torpord::call(&self.sock, method, path, body, timeout)
    }

    pub fn status(&self) -> Result<Value> {
        let (st, v) = self.call(
            "GET",
            &format!("/v1/apps/{}", self.app),
            None,
            Duration::from_secs(60),
        )?;
        ensure!(st == 200, "GET /v1/apps/{}: {st} {v}", self.app);
        Ok(v)
    }

    /// The app's status, typed.
    pub fn app_status(&self) -> Result<torpor_api::AppStatus> {
        Ok(serde_json::from_value(self.status()?)?)
    }

    /// POST start (body `{"prefetch": mode}` or none); the answer, which must be a 200.
    pub fn start_app(&self, mode: Option<&str>) -> Result<Value> {
        let body = mode
            .map(|m| {
                serde_json::to_value(torpor_api::StartRequest {
                    prefetch: Some(m.to_string()),
                })
            })
            .transpose()?;
        let (st, v) = self.call(
            "POST",
            &format!("/v1/apps/{}/start", self.app),
            body.as_ref(),
            Duration::from_secs(900),
        )?;
        ensure!(
            st == 200,
            "start {} (prefetch {mode:?}): {st} {v}",
            self.app
        );
        Ok(v)
    }

    pub fn stop_app(&self) -> Result<Value> {
        let body = self
            .stop_purge
            .map(|m| serde_json::to_value(torpor_api::StopRequest { purge: Some(m) }))
            .transpose()?;
        let (st, v) = self.call(
            "POST",
            &format!("/v1/apps/{}/stop", self.app),
            body.as_ref(),
            Duration::from_secs(900),
        )?;
        ensure!(
            st == 200,
            "stop {} (purge {:?}): {st} {v}",
            self.app,
            self.stop_purge
        );
        Ok(v)
    }

    /// The app's cgroup directories (every hierarchy) under our cgroup parent.
    fn app_cgroups(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            roots.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        for r in roots {
            let p = r.join(&self.cg_parent);
            if let Ok(rd) = std::fs::read_dir(&p) {
                v.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        v
    }

    /// Stop torpord, then thaw and end the app (TERM, KILL after 20 s), remove its cgroups.
    pub fn cleanup(&mut self) {
        let _ = self.stop();
        let dirs = self.app_cgroups();
        let procs = |d: &Path| -> Vec<i32> {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        };
        for d in &dirs {
            let _ = std::fs::write(d.join("cgroup.freeze"), "0");
            let _ = std::fs::write(d.join("freezer.state"), "THAWED");
        }
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            for d in &dirs {
                for p in procs(d) {
                    // SAFETY: kill(2) on a process of the app we started.
                    unsafe { libc::kill(p, sig) };
                }
            }
            let t = Instant::now();
            while dirs.iter().any(|d| !procs(d).is_empty()) && t.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for d in &dirs {
            let _ = std::fs::remove_dir(d);
            if let Some(p) = d.parent() {
                let _ = std::fs::remove_dir(p);
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The prefetch modes torpord's configuration accepts, as the binary itself says: a config with
/// an unknown mode is checked (`torpord --check`) and the mode list read from its error
/// ("expected one of `a`, `b`, ..." from serde, or a parenthesised list).
pub fn accepted_modes(torpord: &Path, dir: &Path, vm: bool) -> Result<Vec<String>> {
    const PROBE: &str = "torpor-bench-no-such-mode";
    let text = if vm {
        format!("[[app]]\nname = \"probe\"\nkind = \"vm\"\ncommand = [\"/bin/true\"]\nvm = {{ qmp = \"/nonexistent/probe.qmp\" }}\nvm_prefetch = \"{PROBE}\"\n")
    } else {
        format!("prefetch = \"{PROBE}\"\n")
    };
    std::fs::create_dir_all(dir)?;
    let path = dir.join(if vm {
        "modes-probe-vm.toml"
    } else {
        "modes-probe.toml"
    });
    std::fs::write(&path, text)?;
    let out = Command::new(torpord)
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .with_context(|| format!("run {}", torpord.display()))?;
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(
        !out.status.success(),
        "torpord --check accepted prefetch mode {PROBE:?}: cannot list its modes"
    );
    parse_modes(&msg).with_context(|| {
        format!(
            "no mode list in torpord's answer to an unknown mode: {}",
            msg.trim()
        )
    })
}

/// Mode names from a config error message.
pub fn parse_modes(msg: &str) -> Option<Vec<String>> {
    let mut v: Vec<String> = Vec::new();
    if let Some((_, rest)) = msg.split_once("expected") {
        let parts: Vec<&str> = rest.split('`').collect();
        v = parts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|s| s.to_string())
            .collect();
    }
    if v.is_empty() {
        // "unknown prefetch mode \"x\" (a, b, c)"
        let open = msg.rfind('(')?;
        let close = msg[open..].find(')')? + open;
        v = msg[open + 1..close]
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    v.retain(|m| !m.contains(' ') && !m.is_empty());
    v.dedup();
    (!v.is_empty()).then_some(v)
}

/// One reading of an app's memory cgroup (cgroup v1 `memory.*` or v2), bytes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct MemSnap {
    /// The memcg's charge (v1 `usage_in_bytes`, v2 `memory.current`; includes kernel memory).
    pub usage: u64,
    /// Pages of the app in memory: anon + page cache (shmem included).
    pub resident: u64,
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    /// On swap (anon and shmem).
    pub swap: u64,
    pub swapcached: u64,
    pub majflt: u64,
}

/// The app's memory cgroup.
#[derive(Debug, Clone)]
pub struct Memcg {
    pub dir: PathBuf,
    pub v1: bool,
}

impl Memcg {
    /// From torpord's app status (`cgroups.v1_memory`, else `cgroups.v2` with a memory controller).
    pub fn from_status(st: &torpor_api::AppStatus) -> Option<Memcg> {
        if let Some(d) = st.cgroups.v1_memory.clone() {
            return Some(Memcg { dir: d, v1: true });
        }
        let d = st.cgroups.v2.clone()?;
        d.join("memory.current")
            .exists()
            .then_some(Memcg { dir: d, v1: false })
    }

    /// Major faults the app's own processes took (every thread, `/proc/PID/stat`), summed over
    /// the cgroup's processes. Unlike the memcg's `pgmajfault` ([`Memcg::snap`]), which counts
    /// every swap-in read charged to the app — torpord's own `process_vm_readv` faults of
    /// copy-on-write pages among them (Tomcat: ~250 a Start, 2026-12-05).
    pub fn procs_majflt(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter_map(|pid| procfs::process::Process::new(pid).ok()?.stat().ok())
            .map(|st| st.majflt)
            .sum()
    }

    pub fn snap(&self) -> MemSnap {
        let stat = std::fs::read_to_string(self.dir.join("memory.stat")).unwrap_or_default();
        let get = |k: &str| {
            stat.lines()
                .find_map(|l| {
                    l.strip_prefix(k)
                        .and_then(|r| r.strip_prefix(' '))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .unwrap_or(0)
        };
        let file_u64 = |f: &str| {
            std::fs::read_to_string(self.dir.join(f))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        if self.v1 {
            let (anon, cache) = (get("total_rss"), get("total_cache"));
            MemSnap {
                usage: file_u64("memory.usage_in_bytes"),
                resident: anon + cache,
                anon,
                file: cache,
                shmem: get("total_shmem"),
                swap: get("total_swap"),
                swapcached: get("total_swapcached"),
                majflt: get("total_pgmajfault"),
            }
        } else {
            let (anon, file) = (get("anon"), get("file"));
            MemSnap {
                usage: file_u64("memory.current"),
                resident: anon + file,
                anon,
                file,
                shmem: get("shmem"),
                swap: file_u64("memory.swap.current"),
                swapcached: get("swapcached"),
                majflt: get("pgmajfault"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_serde_and_from_str_errors() {
        let serde = "torpord: configuration error: /x.toml:1:12: unknown variant `torpor-bench-no-such-mode`, expected one of `full`, `working-set-only`, `none`";
        assert_eq!(
            parse_modes(serde).unwrap(),
            ["full", "working-set-only", "none"]
        );
        let two = "unknown variant `zz`, expected `a` or `b`";
        assert_eq!(parse_modes(two).unwrap(), ["a", "b"]);
        let fs = "unknown prefetch mode \"zz\" (full, working-set-only, none)";
        assert_eq!(
            parse_modes(fs).unwrap(),
            ["full", "working-set-only", "none"]
        );
        assert!(parse_modes("something else").is_none());
    }

    #[test]
    fn config_keeps_defaults_and_warm_only_adds_purge_never() {
        let d = Daemon {
            bin: "/bin/false".into(),
            dir: "/x".into(),
            sock: "/x/s.sock".into(),
            app: "a".into(),
            cg_parent: "cg".into(),
            app_toml: "[[app]]\nname = \"a\"\ncommand = [\"/bin/true\"]\n".into(),
            child: None,
            warm: false,
            restarts: 0,
            stop_purge: None,
            stopped_after_trial: None,
        };
        let def = d.config_text(false);
        for k in ["prefetch", "purge", "reserve", "backend"] {
            assert!(
                !def.lines().any(|l| l.starts_with(k)),
                "{k} set in the default config:\n{def}"
            );
        }
        let warm = d.config_text(true);
        assert!(warm.lines().any(|l| l == "purge = \"never\""));
        assert!(!warm.lines().any(|l| l.starts_with("prefetch")));
        std::mem::forget(d);
    }
}
