//! The QEMU launcher of the tests: `qemu-system-x86_64 -accel tcg -S`, no devices, no guest
//! OS, QMP on a unix socket — enough for guest-RAM discovery, QMP and swapping guest RAM.
//! (The end-to-end guest with a kernel and an app is `vm-e2e::guest`, built on [`QEMU`].)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The QEMU binary every test and benchmark runs.
pub const QEMU: &str = "qemu-system-x86_64";

/// Argv (binary first) of a bare, paused TCG QEMU with `mem` of RAM (QEMU's `-m` syntax), an
/// optional machine type (`-M`) and its QMP server at `qmp` (not waiting for a client).
pub fn bare_argv(mem: &str, machine: Option<&str>, qmp: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        QEMU,
        "-accel",
        "tcg",
        "-S",
        "-display",
        "none",
        "-nodefaults",
    ]
    .map(String::from)
    .to_vec();
    if let Some(m) = machine {
        v.extend(["-M".to_string(), m.to_string()]);
    }
    v.extend([
        "-m".to_string(),
        mem.to_string(),
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ]);
    v
}

/// Whether `qemu-system-x86_64 --version` runs.
pub fn available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A bare QEMU (see [`bare_argv`]) in a directory of its own; on drop it is continued (it may
/// be frozen or SIGSTOPped), killed and reaped, and the directory removed.
pub struct Qemu {
    pub child: Child,
    pub dir: PathBuf,
    pub qmp: PathBuf,
}

impl Qemu {
    /// Starts one in a fresh `$TMPDIR/<tag>-<pid>` (removed first if left over).
    pub fn spawn(tag: &str, mem: &str, machine: Option<&str>) -> std::io::Result<Qemu> {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let qmp = dir.join("qmp.sock");
        let argv = bare_argv(mem, machine, &qmp);
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Qemu { child, dir, qmp })
    }

    /// QEMU's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGCONT,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv() {
        let v = bare_argv("512", Some("pc"), Path::new("/x/q.sock"));
        assert_eq!(v[0], QEMU);
        assert_eq!(
            v[7..],
            [
                "-M",
                "pc",
                "-m",
                "512",
                "-qmp",
                "unix:/x/q.sock,server=on,wait=off"
            ]
        );
        assert!(!bare_argv("1G", None, Path::new("q")).contains(&"-M".to_string()));
    }
}
