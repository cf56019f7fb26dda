//! Shared harness of the root test suites: the test child, cgroup setups per mode, and the
//! summary of which modes ran.
#![allow(dead_code)]

use procswap::cgroup::{self, Memcg};
use procswap::freeze::Freezer;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout};
use std::time::Duration;
use torpor_testsupport::child::LineChild;

pub const MIB: u64 = 1 << 20;

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the root suite must run as root (procswap/tests/run-root-tests.sh)"
    );
}

/// What the child measured while verifying.
#[derive(Debug, Clone, Copy)]
pub struct Verify {
    /// Major faults while reading its whole anonymous area.
    pub anon_majflt: u64,
    pub anon_minflt: u64,
    /// Time to read and check the anonymous area.
    pub anon_us: u64,
    /// Major faults while checking the file mapping and the extra areas.
    pub rest_majflt: u64,
}

/// The test child process (`torpor-testchild`).
pub struct Child {
    proc: std::process::Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: i32,
    pub anon: (u64, u64),
    pub file: (u64, u64),
    /// Cgroups to thaw/remove on drop.
    pub cgroups: Vec<PathBuf>,
    pub freezer: Option<Freezer>,
    file_path: Option<PathBuf>,
}

impl Child {
    pub fn spawn() -> Child {
        let LineChild {
            proc,
            stdin,
            stdout,
            pid,
        } = LineChild::spawn(Path::new(env!("CARGO_BIN_EXE_torpor-testchild")))
            .expect("spawn torpor-testchild");
        Child {
            proc,
            stdin,
            stdout,
            pid,
            anon: (0, 0),
            file: (0, 0),
            cgroups: vec![],
            freezer: None,
            file_path: None,
        }
    }

    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    /// Allocate `anon_mib` of random anonymous memory, a `file_mib` file mapping, and optional
    /// mlocked / shared-anon areas.
    pub fn alloc(&mut self, anon_mib: u64, file_mib: u64, locked_mib: u64, shared_mib: u64) {
        let path = PathBuf::from(format!("/var/tmp/torpor-testchild-{}.dat", self.pid));
        let r = self.cmd(&format!(
            "ALLOC {anon_mib} {} {file_mib} {locked_mib} {shared_mib}",
            path.display()
        ));
        self.file_path = Some(path);
        let v: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(v.first(), Some(&"READY"), "child: {r}");
        let n = |i: usize| v[i].parse::<u64>().unwrap();
        self.anon = (n(1), n(2));
        self.file = (n(3), n(4));
    }

    /// Ask the child to verify its checksums.
    pub fn verify(&mut self) -> Verify {
        let r = self.cmd("VERIFY");
        let v: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(v.first(), Some(&"OK"), "child verification failed: {r}");
        let n = |i: usize| v[i].parse::<u64>().unwrap();
        Verify {
            anon_majflt: n(1),
            anon_minflt: n(2),
            anon_us: n(3),
            rest_majflt: n(4),
        }
    }

    pub fn kill(&mut self) {
        if let Some(f) = self.freezer.take() {
            let _ = f.thaw(Duration::from_secs(5));
        }
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }

    /// Kill without reaping: leaves a zombie.
    pub fn kill_no_reap(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        for _ in 0..200 {
            if procfs::process::Process::new(self.pid)
                .and_then(|p| p.stat())
                .map(|s| s.state == 'Z')
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("child did not become a zombie");
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
        for d in self.cgroups.iter().rev() {
            if let Err(e) = cgroup::remove(d) {
                eprintln!("warning: could not remove test cgroup {}: {e}", d.display());
            }
        }
        if let Some(p) = &self.file_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The cgroup arrangements the lifecycle test runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// v1 memory + v1 freezer.
    V1,
    /// cgroup2 freezer; memory: v2 if the controller is available, else v1.
    V2,
    /// SIGSTOP/SIGCONT; memory: v2 if available, else v1.
    Signals,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::V1 => "v1",
            Mode::V2 => "v2",
            Mode::Signals => "signals",
        }
    }
}

/// Is this mode selected by `TORPOR_TEST_CGROUP` (v1|v2|signals|auto, comma-separated; default auto)?
pub fn selected(mode: Mode) -> bool {
    let sel = std::env::var("TORPOR_TEST_CGROUP").unwrap_or_else(|_| "auto".into());
    sel.split(',')
        .any(|s| s.trim() == "auto" || s.trim() == mode.name())
}

/// Must this mode run (fail if it cannot)? `TORPOR_TEST_REQUIRE` = comma-separated modes, or
/// `all`. Modes named explicitly in `TORPOR_TEST_CGROUP` are required too.
pub fn required(mode: Mode) -> bool {
    let req = std::env::var("TORPOR_TEST_REQUIRE").unwrap_or_default();
    let sel = std::env::var("TORPOR_TEST_CGROUP").unwrap_or_default();
    req.split(',')
        .chain(sel.split(','))
        .any(|s| s.trim() == "all" || s.trim() == mode.name())
}

/// Record a mode's outcome in the summary file (`TORPOR_TEST_SUMMARY`) and on stderr.
pub fn summary(line: &str) {
    eprintln!("=== {line}");
    if let Ok(p) = std::env::var("TORPOR_TEST_SUMMARY") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn own_cgroups() -> cgroup::PidCgroups {
    cgroup::pid_cgroups(std::process::id() as i32).expect("own cgroups")
}

fn v2_memory_parent() -> Option<PathBuf> {
    let own = own_cgroups().v2?;
    let ctl = std::fs::read_to_string(own.join("cgroup.controllers")).ok()?;
    ctl.split_whitespace().any(|c| c == "memory").then_some(own)
}

/// Memory: v2 memory controller if we can enable it below our own cgroup, else v1 memory.
/// Returns the description of the memory cgroup `child` is in.
fn setup_memory(
    mode: Mode,
    name: &str,
    own: &cgroup::PidCgroups,
    child: &mut Child,
    v2_dir: Option<&PathBuf>,
) -> Result<String, String> {
    if let (Some(_), Some(d)) = (v2_memory_parent(), v2_dir) {
        if d.join("memory.current").exists() {
            return Ok(format!("memory v2 {}", d.display()));
        }
    }
    if mode != Mode::V1 {
        if let Some(parent) = v2_memory_parent() {
            if v2_dir.is_none() {
                if let Ok(d) = cgroup::create_v2(&parent, name, &["memory"]) {
                    child.cgroups.push(d.clone());
                    cgroup::move_pid(&d, child.pid).map_err(|e| e.to_string())?;
                    return Ok(format!("memory v2 {}", d.display()));
                }
            }
        }
    }
    let parent = own
        .v1_memory
        .clone()
        .ok_or("no v1 memory hierarchy and no usable v2 memory controller")?;
    let d = cgroup::create_v1(&parent, name).map_err(|e| e.to_string())?;
    child.cgroups.push(d.clone());
    cgroup::move_pid(&d, child.pid).map_err(|e| e.to_string())?;
    Ok(format!("memory v1 {}", d.display()))
}

/// Put `child` (before it allocates) into the cgroups of `mode`. Returns the freezer and a
/// description, or why the mode cannot run on this host.
pub fn setup(mode: Mode, child: &mut Child) -> Result<(Freezer, String), String> {
    let m = cgroup::mounts().map_err(|e| e.to_string())?;
    let own = own_cgroups();
    let name = format!("torpor-test-{}-{}", child.pid, mode.name());
    let mut memdesc = String::new();
    let mut setup_memory = |child: &mut Child, v2_dir: Option<&PathBuf>| -> Result<(), String> {
        memdesc = setup_memory(mode, &name, &own, child, v2_dir)?;
        Ok(())
    };
    let freezer = match mode {
        Mode::V1 => {
            let fparent = own
                .v1_freezer
                .clone()
                .ok_or("no v1 freezer hierarchy mounted")?;
            if m.v1_memory.is_none() {
                return Err("no v1 memory hierarchy mounted".into());
            }
            setup_memory(child, None)?;
            let fd = cgroup::create_v1(&fparent, &name).map_err(|e| e.to_string())?;
            child.cgroups.push(fd.clone());
            cgroup::move_pid(&fd, child.pid).map_err(|e| e.to_string())?;
            Freezer::CgroupV1(fd)
        }
        Mode::V2 => {
            let parent = own.v2.clone().ok_or("no cgroup2 mount")?;
            // With the v2 memory controller available, one v2 group carries both.
            let d = match v2_memory_parent() {
                Some(_) => cgroup::create_v2(&parent, &name, &["memory"])
                    .or_else(|_| cgroup::create_v2(&parent, &name, &[])),
                None => cgroup::create_v2(&parent, &name, &[]),
            }
            .map_err(|e| e.to_string())?;
            child.cgroups.push(d.clone());
            if !d.join("cgroup.freeze").exists() {
                return Err(format!(
                    "{} has no cgroup.freeze (kernel < 5.2?)",
                    d.display()
                ));
            }
            cgroup::move_pid(&d, child.pid).map_err(|e| e.to_string())?;
            setup_memory(child, Some(&d))?;
            Freezer::CgroupV2(d)
        }
        Mode::Signals => {
            setup_memory(child, None)?;
            Freezer::Signal(child.pid)
        }
    };
    let desc = format!("freezer: {freezer}; {memdesc}");
    // Sanity: the library finds the same memcg.
    let mc = Memcg::of_pid(child.pid)
        .map_err(|e| e.to_string())?
        .ok_or("library finds no memcg for the child")?;
    assert!(
        memdesc.contains(&mc.dir().display().to_string()),
        "library memcg {mc:?} vs setup {memdesc}"
    );
    Ok((freezer, desc))
}

/// System-wide SwapCached, bytes.
pub fn swap_cached() -> u64 {
    procswap::sys::meminfo().unwrap().swap_cached
}
