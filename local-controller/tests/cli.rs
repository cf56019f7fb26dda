//! Root tests of the `torpor` CLI (run by procswap/tests/run-root-tests.sh, with swap on).
//! `#[ignore]`d so a plain `cargo test` needs neither root nor swap.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output};
use torpor_testsupport::child::LineChild;

const MIB: u64 = 1 << 20;

fn torpor() -> &'static str {
    env!("CARGO_BIN_EXE_torpor")
}

fn run(args: &[&str]) -> Output {
    Command::new(torpor())
        .args(args)
        .output()
        .expect("run torpor")
}

fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            torpor(),
        ])
        .args(args)
        .output()
        .expect("run setpriv (util-linux)")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The procswap test child (built next to `torpor` by run-root-tests.sh).
struct TestChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: i32,
    anon: (u64, u64),
    cgroups: Vec<PathBuf>,
    thaw: Vec<procswap::Freezer>,
}

impl TestChild {
    fn spawn() -> Self {
        let exe = Path::new(torpor()).with_file_name("torpor-testchild");
        assert!(
            exe.exists(),
            "{} missing: build procswap's bins first (run-root-tests.sh does)",
            exe.display()
        );
        let LineChild {
            proc: child,
            stdin,
            stdout,
            pid,
        } = LineChild::spawn(&exe).unwrap();
        TestChild {
            child,
            stdin,
            stdout,
            pid,
            anon: (0, 0),
            cgroups: vec![],
            thaw: vec![],
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    fn alloc(&mut self, mib: u64) {
        let r = self.cmd(&format!("ALLOC {mib} - 0"));
        let v: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(v[0], "READY", "{r}");
        self.anon = (v[1].parse().unwrap(), v[2].parse().unwrap());
    }

    /// (major faults while reading the anon area)
    fn verify(&mut self) -> u64 {
        let r = self.cmd("VERIFY");
        assert!(r.starts_with("OK "), "child verification: {r}");
        r.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Present pages of the anonymous area (a running child's stack, heap and file pages come
    /// and go on their own; its filled anonymous area only leaves RAM if something pages it out).
    fn anon_present(&self) -> u64 {
        let mut pm = procswap::inspect::Pagemap::open(self.pid).unwrap();
        let mut n = 0;
        pm.scan(self.anon.0, self.anon.0 + self.anon.1, |_, info| {
            if let procfs::process::PageInfo::MemoryPage(f) = info {
                n += f.contains(procfs::process::MemoryPageFlags::PRESENT) as u64;
            }
        })
        .unwrap();
        n
    }
}

impl Drop for TestChild {
    fn drop(&mut self) {
        for f in self.thaw.drain(..) {
            let _ = f.thaw(std::time::Duration::from_secs(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in self.cgroups.iter().rev() {
            let _ = procswap::cgroup::remove(d);
        }
    }
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn nonroot_caller_is_refused_without_change() {
    let mut c = TestChild::spawn();
    c.alloc(8);
    let p0 = c.anon_present();
    assert!(
        p0 >= 8 * MIB / 4096,
        "the 8 MiB area is not all present to begin with: {p0} pages"
    );
    let pid = c.pid.to_string();
    for args in [
        vec!["inspect", pid.as_str()],
        vec!["purge", "--force", pid.as_str()],
        vec!["prefetch", pid.as_str()],
        vec!["freeze", "--method", "signal", pid.as_str()],
        vec!["thaw", pid.as_str()],
    ] {
        let o = as_nobody(&args);
        let e = stderr(&o);
        eprintln!("torpor {args:?} as nobody: {e}");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(
            e.contains("needs root") && e.contains("uid 65534"),
            "{args:?}: {e}"
        );
    }
    let states = procswap::freeze::thread_states(c.pid).unwrap();
    assert!(
        states.iter().all(|&s| s != 'T'),
        "the child got stopped: {states:?}"
    );
    // A purge that got through would have removed its ~2048 pages (8 MiB).
    let p1 = c.anon_present();
    assert_eq!(
        p1, p0,
        "the refused commands changed the child's anonymous area: present pages {p0} -> {p1}"
    );
    c.verify();
}

#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn bad_targets_have_clear_messages() {
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["inspect".into(), "99999999".into()],
            "no such process: pid 99999999",
        ),
        (
            vec!["purge".into(), "1".into()],
            "refusing to operate on pid 1",
        ),
        (
            vec!["freeze".into(), "1".into()],
            "refusing to operate on pid 1",
        ),
        (
            vec!["purge".into(), "--force".into(), "2".into()],
            "is a kernel thread",
        ),
        (vec!["freeze".into(), "2".into()], "is a kernel thread"),
    ];
    for (args, want) in cases {
        let o = run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: wanted {want:?} in {e:?}");
    }
    // A zombie: a child that exited and is not reaped (waited for, not assumed after a sleep).
    let mut z = Command::new("true").spawn().unwrap();
    let t = std::time::Instant::now();
    while !procfs::process::Process::new(z.id() as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|s| s.state == 'Z')
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(120),
            "`true` did not exit within 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let o = run(&["purge", "--force", &z.id().to_string()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("zombie"), "{e}");
    z.wait().unwrap();
    // Neither a pid nor a cgroup.
    let o = run(&["inspect", "/nonexistent/cgroup"]);
    assert!(
        stderr(&o).contains("neither a pid nor a cgroup directory"),
        "{}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(1));
}

/// The child in cgroups of its own: the v1 memory and freezer hierarchies (as on this CI host),
/// else a v2 group with memory. Returns (memory cgroup, freezer cgroup).
fn own_cgroups(c: &mut TestChild) -> (PathBuf, PathBuf) {
    let own = procswap::cgroup::pid_cgroups(std::process::id() as i32).unwrap();
    let name = format!("torpor-cli-test-{}", c.pid);
    // Memory: the v1 memory hierarchy (as on this CI host) else a v2 group with memory.
    let (memdir, freezedir) = match (&own.v1_memory, &own.v1_freezer, &own.v2) {
        (Some(m), Some(f), _) => {
            let md = procswap::cgroup::create_v1(m, &name).unwrap();
            let fd = procswap::cgroup::create_v1(f, &name).unwrap();
            (md, fd)
        }
        (_, _, Some(v2)) => {
            let d = procswap::cgroup::create_v2(v2, &name, &["memory"])
                .expect("a v2 group with the memory controller");
            (d.clone(), d)
        }
        _ => panic!("neither v1 memory+freezer nor cgroup2 here"),
    };
    c.cgroups.push(memdir.clone());
    if freezedir != memdir {
        c.cgroups.push(freezedir.clone());
        procswap::cgroup::move_pid(&freezedir, c.pid).unwrap();
    }
    procswap::cgroup::move_pid(&memdir, c.pid).unwrap();
    (memdir, freezedir)
}

/// An active period on demand paging, then suspend, record by residency, purge, prefetch the
/// working set first, thaw: the child's data is intact with few major faults.
fn working_set_round_trip(c: &mut TestChild, pid: &str, fpath: &str) {
    // Active period on demand paging: touch MiB 16..32; then suspend and record by residency.
    let o = run(&["thaw", fpath]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.cmd("TOUCH 16 32 100"), "TOUCHED");
    let o = run(&["freeze", fpath]);
    assert!(o.status.success(), "{}", stderr(&o));
    let wsfile = std::env::temp_dir().join(format!("torpor-cli-ws-{}.json", c.pid));
    let o = run(&[
        "record-ws",
        pid,
        "--method",
        "residency",
        "-o",
        wsfile.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["--json", "purge", pid]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Working set first, then the rest.
    let o = run(&[
        "--json",
        "prefetch",
        pid,
        "--working-set",
        wsfile.to_str().unwrap(),
        "--free-floor",
        "64M",
    ]);
    let _ = std::fs::remove_file(&wsfile);
    assert!(o.status.success(), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("prefetch: {p}");
    assert_eq!(p["working_set_method"], "residency");
    assert!(p["working_set_pages"].as_u64().unwrap() >= 16 * MIB / 4096);
    assert!(p["still_swapped_pages"].as_u64().unwrap() * 100 <= 64 * MIB / 4096);
    let o = run(&["thaw", fpath]);
    assert!(o.status.success(), "{}", stderr(&o));
    c.thaw.clear();
    let majflt = c.verify();
    assert!(majflt <= 8, "{majflt} major faults after prefetch");
}

/// Freeze a cgroup by path, purge it by path, record a working set by residency, prefetch by
/// pid, thaw, and let the child check its data — all through the CLI, JSON output parsed.
#[test]
#[ignore = "root suite: procswap/tests/run-root-tests.sh"]
fn cli_lifecycle_on_cgroup_paths() {
    let mut c = TestChild::spawn();
    let (memdir, freezedir) = own_cgroups(&mut c);
    c.alloc(64);
    let pid = c.pid.to_string();
    let (fpath, mpath) = (
        freezedir.display().to_string(),
        memdir.display().to_string(),
    );

    let o = run(&["freeze", &fpath]);
    assert!(o.status.success(), "{}", stderr(&o));
    c.thaw
        .push(procswap::Freezer::for_cgroup(&freezedir).unwrap());
    let o = run(&["--json", "purge", &mpath]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &j.as_array().expect("a cgroup target gives an array")[0];
    eprintln!("purge: {r}");
    assert!(r["swapped_bytes"].as_u64().unwrap() >= 64 * MIB * 95 / 100);
    assert!(r["resident_anon_bytes"].as_u64().unwrap() <= MIB);
    assert!(
        r["reclaim"].is_object(),
        "no reclaim: {}",
        r["reclaim_skipped"]
    );
    // Human output of inspect works too.
    let o = run(&["inspect", &pid]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("swap:"),
        "{}",
        stderr(&o)
    );

    working_set_round_trip(&mut c, &pid, &fpath);
}

/// `torpor start --prefetch` takes every mode torpord takes (the list comes from torpord's own
/// mode enums) and refuses others before talking to torpord.
#[test]
fn start_prefetch_takes_torpords_modes() {
    for mode in local_controller::config::start_prefetch_names() {
        let o = run(&[
            "--socket",
            "/nonexistent/torpord.sock",
            "start",
            "web",
            "--prefetch",
            mode,
        ]);
        let e = stderr(&o);
        assert!(!e.contains("invalid value"), "{mode}: {e}");
        assert!(e.contains("/nonexistent/torpord.sock"), "{mode}: {e}");
    }
    let o = run(&["start", "web", "--prefetch", "bogus"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("invalid value 'bogus'"), "{e}");
    assert!(e.contains("loading-set"), "{e}");
}
