//! The fuzzer's children: sacrificial targets (respawned when they die, killed on purpose
//! mid-ioctl by the supervisor) and callers (killed mid-ioctl).
//!
//! Pid safety: a target is reaped only when the last [`Arc<Target>`] is dropped, and every
//! ioctl aimed at it holds one for the duration of the call. Until it is reaped an exited
//! target is a zombie that keeps its pid, so a pid the fuzzer aims at is always its own child
//! (alive or zombie), never a recycled pid of an unrelated process.
//!
//! Readiness: a child writes one line on its stdout when it is set up (a target: its window
//! mapped; a caller: /dev/torpor open), so a target enters service with its mappings in place
//! and a caller is killed while it is issuing ioctls, not while the loader is still running.
//! Replacements come from a pool of ready spares, so a dead target's slot is refilled at once;
//! a spare waits (blocked reading its stdin, no CPU) until it is given a slot.

use crate::child::Mode;
use crate::rng::{stream, Rng};
use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The line a child writes when it is ready.
pub const READY: &[u8] = b"ready\n";

/// Wait for `child`'s ready line; false if it ended first.
fn wait_ready(child: &mut Child) -> bool {
    let Some(out) = child.stdout.take() else {
        return false;
    };
    let mut line = String::new();
    matches!(BufReader::new(out).read_line(&mut line), Ok(n) if n > 0 && line.as_bytes() == READY)
}

/// One sacrificial child.
pub struct Target {
    pub pid: i32,
    pub mode: Mode,
    /// ioctls aimed at it right now (for counting kills that land mid-ioctl).
    pub busy: AtomicU32,
    /// The supervisor killed it (its replacement is not counted as an exit).
    killed: std::sync::atomic::AtomicBool,
    child: Option<Child>,
    /// Written to once when the target gets a slot (it starts churning then).
    go: Mutex<Option<ChildStdin>>,
}

impl Target {
    /// Start a target process (it sets itself up, then writes its ready line).
    fn start(exe: &Path, mode: Mode, seed: u64) -> Result<Child> {
        Command::new(exe)
            .args(["target", "--mode", mode.name(), "--seed", &seed.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // A target whose memory DISCARD zapped dies noisily (glibc aborts): not our news.
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {} target", mode.name()))
    }

    /// Wait until a started target is set up: the target, and whether it got ready (one that
    /// did not is reaped when dropped).
    fn ready(mut child: Child, mode: Mode) -> (Arc<Target>, bool) {
        let ready = wait_ready(&mut child);
        let go = Mutex::new(child.stdin.take());
        let t = Arc::new(Target {
            pid: child.id() as i32,
            mode,
            busy: AtomicU32::new(0),
            killed: std::sync::atomic::AtomicBool::new(false),
            child: Some(child),
            go,
        });
        (t, ready)
    }

    /// Let it start churning (once).
    fn activate(&self) {
        if let Some(mut w) = self.go.lock().unwrap().take() {
            let _ = w.write_all(b"g");
        }
    }

    /// Whether it has exited (without reaping it: the pid stays ours).
    fn exited(&self) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        !matches!(
            waitid(Id::Pid(Pid::from_raw(self.pid)), flags),
            Ok(WaitStatus::StillAlive)
        )
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Counters of what happened to the targets during a phase.
#[derive(Default)]
pub struct ProcStats {
    pub spawned: AtomicU64,
    pub exited: AtomicU64,
    pub killed: AtomicU64,
    pub killed_busy: AtomicU64,
    pub callers: AtomicU64,
    pub callers_killed: AtomicU64,
    pub callers_done: AtomicU64,
    pub callers_failed: AtomicU64,
}

impl ProcStats {
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = format!(
            "targets: {} spawned, {} exited by themselves, {} killed by the supervisor ({} while an ioctl was aimed at them)",
            g(&self.spawned),
            g(&self.exited),
            g(&self.killed),
            g(&self.killed_busy)
        );
        if g(&self.callers) > 0 {
            s.push_str(&format!(
                "; callers: {} spawned, {} killed mid-run, {} finished, {} failed",
                g(&self.callers),
                g(&self.callers_killed),
                g(&self.callers_done),
                g(&self.callers_failed)
            ));
        }
        s
    }
}

/// The live targets of a phase.
pub struct Registry {
    exe: PathBuf,
    seed: u64,
    phase: u64,
    modes: Vec<Mode>,
    slots: Mutex<Vec<Arc<Target>>>,
    /// Ready targets waiting (idle) for a slot.
    spares: Mutex<Vec<Arc<Target>>>,
    generation: AtomicU64,
    /// Children started and not yet ready (killed by `abort_starting` at the end of a phase, so
    /// that nobody waits for a slow exec).
    starting: Mutex<Vec<i32>>,
    pub stats: ProcStats,
}

impl Registry {
    /// Spawn one target per mode (none in a dry run: `exe` is `None`).
    pub fn new(exe: Option<&Path>, seed: u64, phase: u64, modes: &[Mode]) -> Result<Self> {
        let r = Registry {
            exe: exe.map(Path::to_path_buf).unwrap_or_default(),
            seed,
            phase,
            modes: if exe.is_some() {
                modes.to_vec()
            } else {
                Vec::new()
            },
            slots: Mutex::new(Vec::new()),
            spares: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            starting: Mutex::new(Vec::new()),
            stats: ProcStats::default(),
        };
        for _ in 0..20 {
            let missing: Vec<Mode> = r
                .modes
                .iter()
                .skip(r.slots.lock().unwrap().len())
                .copied()
                .collect();
            if missing.is_empty() {
                break;
            }
            for t in r.spawn_ready(&missing)? {
                let mut s = r.slots.lock().unwrap();
                if s.len() < r.modes.len() && t.mode == r.modes[s.len()] {
                    t.activate();
                    s.push(t);
                } else {
                    r.spares.lock().unwrap().push(t);
                }
            }
        }
        if r.slots.lock().unwrap().len() != r.modes.len() {
            bail!("targets keep dying before they are set up");
        }
        Ok(r)
    }

    /// Start one target per entry of `modes` at once, then collect those that got ready (the
    /// processes start in parallel: an exec is slow in a TCG guest).
    fn spawn_ready(&self, modes: &[Mode]) -> Result<Vec<Arc<Target>>> {
        let mut started = Vec::new();
        for &m in modes {
            let g = self.generation.fetch_add(1, Ordering::Relaxed);
            let seed = stream(self.seed, 1000 + self.phase, g).next();
            self.stats.spawned.fetch_add(1, Ordering::Relaxed);
            let c = Target::start(&self.exe, m, seed)?;
            self.starting.lock().unwrap().push(c.id() as i32);
            started.push((c, m));
        }
        let mut ready = Vec::new();
        for (c, m) in started {
            let pid = c.id() as i32;
            let (t, ok) = Target::ready(c, m);
            // Off the list before it can be reaped (dropped): a reaped pid may be reused.
            self.starting.lock().unwrap().retain(|&p| p != pid);
            if ok {
                ready.push(t);
            } else {
                self.stats.exited.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(ready)
    }

    /// A ready spare for a `mode` slot, activated; `None` if there is none right now (the slot
    /// keeps its dead target, answering ESRCH, until the spawner has one).
    fn replacement(&self, mode: Mode) -> Option<Arc<Target>> {
        let t = {
            let mut s = self.spares.lock().unwrap();
            s.retain(|t| !t.exited());
            s.iter()
                .position(|t| t.mode == mode)
                .map(|i| s.swap_remove(i))
        }?;
        t.activate();
        Some(t)
    }

    /// Keep one ready (idle) spare per slot; call repeatedly from a spawner thread.
    pub fn fill_spares(&self) -> Result<()> {
        let mut missing = Vec::new();
        {
            let mut s = self.spares.lock().unwrap();
            s.retain(|t| !t.exited());
            let mut have: Vec<Mode> = s.iter().map(|t| t.mode).collect();
            for &m in &self.modes {
                match have.iter().position(|&h| h == m) {
                    Some(i) => {
                        have.swap_remove(i);
                    }
                    None => missing.push(m),
                }
            }
        }
        if !missing.is_empty() {
            let ready = self.spawn_ready(&missing)?;
            self.spares.lock().unwrap().extend(ready);
        }
        Ok(())
    }

    /// Track a child being started elsewhere (a caller) until it is ready.
    pub fn starting(&self, pid: i32, on: bool) {
        let mut s = self.starting.lock().unwrap();
        if on {
            s.push(pid);
        } else {
            s.retain(|&p| p != pid);
        }
    }

    /// SIGKILL the children still starting (they are ours and unreaped: whoever waits for
    /// their ready line sees EOF and reaps them).
    pub fn abort_starting(&self) {
        for &p in self.starting.lock().unwrap().iter() {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }

    /// Number of target slots (constant during a phase).
    pub fn len(&self) -> usize {
        self.modes.len()
    }

    /// The target in slot `r % len` (`None` when there are none).
    pub fn pick(&self, r: u64) -> Option<Arc<Target>> {
        let s = self.slots.lock().unwrap();
        if s.is_empty() {
            return None;
        }
        Some(s[(r % s.len() as u64) as usize].clone())
    }

    /// All current targets.
    pub fn snapshot(&self) -> Vec<Arc<Target>> {
        self.slots.lock().unwrap().clone()
    }

    /// Replace targets that exited; with `kill`, SIGKILL one and replace it: preferably one
    /// an ioctl is aimed at right now (a kill mid-ioctl), else one chosen by `rng`. The
    /// replaced targets are reaped when the last ioctl holding them lets go.
    pub fn tick(&self, rng: &mut Rng, kill_one: bool) {
        let n = self.len();
        for i in 0..n {
            let cur = self.slots.lock().unwrap()[i].clone();
            if cur.exited() {
                if let Some(t) = self.replacement(cur.mode) {
                    if !cur.killed.load(Ordering::Relaxed) {
                        self.stats.exited.fetch_add(1, Ordering::Relaxed);
                    }
                    self.slots.lock().unwrap()[i] = t;
                }
            }
        }
        if kill_one && n > 0 {
            let r = rng.below(n as u64) as usize;
            let i = {
                let s = self.slots.lock().unwrap();
                (0..n)
                    .map(|k| (r + k) % n)
                    .find(|&k| s[k].busy.load(Ordering::Relaxed) > 0)
                    .unwrap_or(r)
            };
            let cur = self.slots.lock().unwrap()[i].clone();
            if cur.exited() {
                return;
            }
            if cur.busy.load(Ordering::Relaxed) > 0 {
                self.stats.killed_busy.fetch_add(1, Ordering::Relaxed);
            }
            // Still unreaped (we hold an Arc), so the pid is ours.
            cur.killed.store(true, Ordering::Relaxed);
            let _ = kill(Pid::from_raw(cur.pid), Signal::SIGKILL);
            self.stats.killed.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = self.replacement(cur.mode) {
                self.slots.lock().unwrap()[i] = t;
            }
        }
    }

    /// Kill and reap every target and spare (callers must have let go of theirs).
    pub fn shutdown(&self) {
        let mut v = std::mem::take(&mut *self.slots.lock().unwrap());
        v.append(&mut self.spares.lock().unwrap());
        for t in &v {
            if Arc::strong_count(t) > 1 {
                eprintln!("torpor-kmod-fuzz: target {} still held at shutdown", t.pid);
            }
        }
        drop(v);
    }
}

/// A caller process and the targets it was given (kept unreaped while it may aim at them).
pub struct Caller {
    child: Child,
    /// It wrote its ready line (it has the device open and is issuing ioctls).
    pub ready: bool,
    _targets: Vec<Arc<Target>>,
}

/// How a caller ended.
pub enum CallerEnd {
    Killed,
    Finished,
    Failed(String),
}

impl Caller {
    /// Spawn a caller and wait until it has the device open.
    pub fn spawn(
        exe: &Path,
        dev: &Path,
        seed: u64,
        targets: Vec<Arc<Target>>,
        reg: &Registry,
    ) -> Result<Caller> {
        let pids: Vec<String> = targets.iter().map(|t| t.pid.to_string()).collect();
        let mut cmd = Command::new(exe);
        cmd.args([
            "caller",
            "--seed",
            &seed.to_string(),
            "--count",
            "100000",
            "--dev",
        ])
        .arg(dev);
        if !pids.is_empty() {
            cmd.arg("--targets").arg(pids.join(","));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning a caller")?;
        reg.starting(child.id() as i32, true);
        let ready = wait_ready(&mut child);
        reg.starting(child.id() as i32, false);
        Ok(Caller {
            child,
            ready,
            _targets: targets,
        })
    }

    /// SIGKILL it (if still running) and reap it.
    pub fn finish(mut self) -> CallerEnd {
        use std::os::unix::process::ExitStatusExt;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        match self.child.wait() {
            Ok(st) if st.success() => CallerEnd::Finished,
            Ok(st) if st.signal() == Some(libc::SIGKILL) && self.ready => CallerEnd::Killed,
            Ok(st) => CallerEnd::Failed(format!(
                "caller {} ended with {st} (ready: {})",
                self.child.id(),
                self.ready
            )),
            Err(e) => CallerEnd::Failed(format!("waiting for caller {}: {e}", self.child.id())),
        }
    }
}

/// After a phase: the fuzzer must have no child left, alive or zombie.
pub fn assert_no_children() -> Result<()> {
    for _ in 0..50 {
        match waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ) {
            Err(nix::errno::Errno::ECHILD) => return Ok(()),
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            Ok(st) => bail!("an unreaped child after the phase: {st:?}"),
            Err(e) => bail!("waitid: {e}"),
        }
    }
    bail!("children still alive after the phase")
}
