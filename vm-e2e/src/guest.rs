//! The e2e guest as the host sees it: `vm-e2e/guest.sh prepare` wrote DIR/guest.env;
//! `vm-e2e/guest.sh launch DIR` runs QEMU.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct GuestEnv {
    pub dir: PathBuf,
    pub port: u16,
    pub check_port: u16,
    pub idle_port: u16,
    pub mem_mib: u64,
    pub app_mib: u64,
    pub ws_mib: u64,
    pub check_mib: u64,
    pub idle_mib: u64,
    pub ko: String,
}

/// Parse `KEY=VALUE` tokens (values as written by guest.sh prepare: `printf %q`, no spaces here).
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

impl GuestEnv {
    pub fn load(dir: &Path) -> Result<GuestEnv> {
        let p = dir.join("guest.env");
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("read {} (run guest.sh prepare first)", p.display()))?;
        let m = parse_env(&text);
        let get = |k: &str| m.get(k).with_context(|| format!("{}: no {k}", p.display()));
        Ok(GuestEnv {
            dir: dir.to_path_buf(),
            port: get("PORT")?.parse()?,
            check_port: get("CHECK_PORT")?.parse()?,
            idle_port: get("IDLE_PORT")?.parse()?,
            mem_mib: get("MEM")?.parse()?,
            app_mib: get("APP_MIB")?.parse()?,
            ws_mib: get("WS_MIB")?.parse()?,
            check_mib: get("CHECK_MIB")?.parse()?,
            idle_mib: get("IDLE_MIB")?.parse()?,
            ko: m.get("KO").cloned().unwrap_or_default(),
        })
    }
    pub fn app_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    pub fn check_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.check_port))
    }
    pub fn idle_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.idle_port))
    }
    /// Pages the three guest processes hold.
    pub fn data_pages(&self) -> u64 {
        (self.app_mib + self.check_mib + self.idle_mib) << 8
    }
    pub fn qmp_path(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn agent_path(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }
    /// The argv that runs the guest (what torpord spawns).
    pub fn launch_argv(&self, guest_sh: &Path) -> Vec<String> {
        vec![
            guest_sh.display().to_string(),
            "launch".into(),
            self.dir.display().to_string(),
        ]
    }
    /// Last `n` lines of the guest console and the guest-side logs, for failure reports.
    pub fn diagnostics(&self, n: usize) -> String {
        let mut out = String::new();
        for f in [
            "console.log",
            "job/agent.log",
            "job/app.log",
            "job/checksum.log",
            "job/idle.log",
        ] {
            let text =
                std::fs::read_to_string(self.dir.join(f)).unwrap_or_else(|e| format!("({e})"));
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {f} (last {n} lines)\n");
            for l in &lines[lines.len().saturating_sub(n)..] {
                out += &format!("    {l}\n");
            }
        }
        out
    }
}

/// A guest QEMU run directly (not under torpord).
pub struct Guest {
    pub env: GuestEnv,
    pub child: Child,
}

impl Guest {
    pub fn launch(env: &GuestEnv, guest_sh: &Path) -> Result<Guest> {
        Self::launch_in(env, guest_sh, None)
    }

    /// Launch with QEMU in its own cgroup (`cgroup.procs` written by the launching shell
    /// before it execs, so all of QEMU's memory is charged there from the start).
    pub fn launch_in(env: &GuestEnv, guest_sh: &Path, cgroup: Option<&Path>) -> Result<Guest> {
        let mut argv = env.launch_argv(guest_sh);
        if let Some(cg) = cgroup {
            let mut w = vec![
                "/bin/sh".to_string(),
                "-c".into(),
                r#"echo $$ > "$0/cgroup.procs" && exec "$@""#.into(),
                cg.display().to_string(),
            ];
            w.append(&mut argv);
            argv = w;
        }
        let log = std::fs::File::create(env.dir.join("qemu.log"))?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {argv:?}"))?;
        Ok(Guest {
            env: env.clone(),
            child,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Wait for QMP to quit the guest (or kill it after `timeout`).
    pub fn shutdown(mut self, timeout: Duration) -> Result<()> {
        if let Ok(mut q) = crate::qmp::Qmp::connect(&self.env.qmp_path(), Duration::from_secs(5)) {
            let _ = q.execute("quit", None);
        }
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!("QEMU did not exit within {timeout:?} of QMP quit: killed")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_tokens() {
        let m = parse_env("BZIMAGE=/x/bzImage\nPORT=18080 CHECK_PORT=18081 MEM=512 SMP=1\nAPP_MIB=192 WS_MIB=16 CHECK_MIB=32 KO=''\n");
        assert_eq!(m["PORT"], "18080");
        assert_eq!(m["MEM"], "512");
        assert_eq!(m["KO"], "");
        let dir = std::env::temp_dir().join(format!("vm-e2e-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("guest.env"), "PORT=1 CHECK_PORT=2 IDLE_PORT=5 MEM=512 APP_MIB=3 WS_MIB=1 CHECK_MIB=4 IDLE_MIB=6 KO=/k.ko\n").unwrap();
        let e = GuestEnv::load(&dir).unwrap();
        assert_eq!(
            (
                e.port,
                e.check_port,
                e.idle_port,
                e.mem_bytes(),
                e.ko.as_str()
            ),
            (1, 2, 5, 512 << 20, "/k.ko")
        );
        assert_eq!(e.data_pages(), 13 << 8);
        std::fs::write(dir.join("guest.env"), "PORT=1\n").unwrap();
        assert!(GuestEnv::load(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
