//! A torpord under test with real apps (torpor-testapp) in real cgroups: config, state dir,
//! socket, its own cgroup parent. The one fixture of the torpord root suites (`root_torpord.rs`,
//! and `root_activation.rs`: the loading-set activation's bad input and faults).

use local_controller::client::request;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use torpor_api::{paths, AppStatus, Event, EventList, Health, StartAnswer, StopAnswer};

pub const TORPORD: &str = env!("CARGO_BIN_EXE_torpord");
pub const TESTAPP: &str = env!("CARGO_BIN_EXE_torpor-testapp");
pub const MIB: u64 = 1 << 20;
/// Bounds on waits for something that must happen: they only catch a hang.
pub const HANG: Duration = Duration::from_secs(600);

/// Wait for `f` to hold, polling every 50 ms; panics with `what` after `timeout` (a hang).
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub use torpor_testsupport::http::unused_port;

/// GET http://127.0.0.1:port/path: (status, body).
pub fn http(port: u16, path: &str) -> (u16, String) {
    let addr = ([127, 0, 0, 1], port).into();
    match torpor_testsupport::http::get(addr, path, Duration::from_secs(120)) {
        Ok(r) => (r.status, r.body),
        Err(e) => panic!("GET :{port}{path}: {e:#}"),
    }
}

/// FNV-1a over bytes: torpor-testapp's `/files` checksum.
pub fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

/// Write `data` to `path` and drop it from the page cache, so that the app reading it first
/// brings it in (charged to the app's memory cgroup, which its purge reclaims), not the writer.
pub fn write_uncached(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    nix::fcntl::posix_fadvise(
        std::os::fd::AsRawFd::as_raw_fd(&f),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

/// The comm names of a process's threads.
pub fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// What a process's open file descriptors point to.
pub fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Active swap devices: (path, size KiB, used KiB).
pub fn swaps() -> Vec<(String, u64, u64)> {
    std::fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

/// An answer of torpord: the typed body of a 2xx, else the error body.
pub type Answer<T> = Result<T, torpor_api::ErrorDetail>;

/// One API call; a transport failure or an unreadable body panics (`timeout` only catches a hang).
pub fn api_call<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> (u16, Answer<T>) {
    let r = request(sock, method, path, body, timeout)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let v = if r.ok() {
        Ok(r.parse::<T>()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}")))
    } else {
        Err(r.error().unwrap_or_else(|| {
            panic!(
                "{method} {path}: {} without an error body: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )
        }))
    };
    (r.status, v)
}

/// One app of the fixture.
pub struct App {
    pub name: String,
    pub port: u16,
    pub mib: u64,
    pub prestart: bool,
    pub extra: Vec<String>,
    /// Its readiness timeout: only catches an app that never serves (a cold start fills its
    /// memory with random data, which takes a while on a loaded machine).
    pub timeout: &'static str,
    /// More keys of its `[[app]]` table (TOML lines, may be empty).
    pub keys: String,
    /// The path its readiness probe GETs (`/`: the null request; `/touch` reads all its
    /// memory before it answers).
    pub ready_path: &'static str,
    /// A TCP readiness probe (a connect: answered by the kernel, not by the app) instead of
    /// the HTTP one.
    pub ready_tcp: bool,
}

impl App {
    pub fn new(name: &str, mib: u64) -> App {
        App {
            name: name.into(),
            port: unused_port(),
            mib,
            prestart: true,
            extra: vec![],
            timeout: "300s",
            keys: String::new(),
            ready_path: "/",
            ready_tcp: false,
        }
    }
}

/// A torpord config for the test apps: the paths, the cgroup parent, a reserve and the sample
/// interval, then `global` (more top-level keys, may be empty), then one `[[app]]` each.
pub fn config_toml(sock: &Path, state: &Path, parent: &str, global: &str, apps: &[App]) -> String {
    let mut toml = format!(
        "socket = {sock:?}\nstate_dir = {state:?}\ncgroup_parent = {parent:?}\nreserve = \"128M\"\nsample_interval = \"200ms\"\n{global}\n",
    );
    for a in apps {
        let mut argv = vec![
            TESTAPP.to_string(),
            "--port".into(),
            a.port.to_string(),
            "--mib".into(),
            a.mib.to_string(),
        ];
        argv.extend(a.extra.iter().cloned());
        let ready = if a.ready_tcp {
            format!("{{ tcp = {} }}", a.port)
        } else {
            format!(
                "{{ http = \"http://127.0.0.1:{}{}\" }}",
                a.port, a.ready_path
            )
        };
        toml += &format!(
            "\n[[app]]\nname = {:?}\ncommand = {:?}\nready = {ready}\nready_timeout = {:?}\nprestart = {}\n{}",
            a.name, argv, a.timeout, a.prestart, a.keys
        );
    }
    toml
}

/// A temporary torpord with the default prefetch and purge configuration (only the paths, the
/// cgroup parent, a reserve and the sample interval are set). Dropping it kills torpord and
/// every app process and removes the cgroups (the directory is kept when the test failed).
pub struct Torpord {
    pub dir: PathBuf,
    pub parent: String,
    pub cfg: PathBuf,
    pub sock: PathBuf,
    pub state: PathBuf,
    pub daemon: Option<Child>,
    pub apps: Vec<App>,
}

impl Torpord {
    pub fn new(tag: &str, apps: Vec<App>) -> Torpord {
        Self::with_global(tag, apps, "")
    }

    /// Like [`Torpord::new`], with more top-level keys in the config (`global`, may be empty).
    pub fn with_global(tag: &str, apps: Vec<App>, global: &str) -> Torpord {
        assert_eq!(nix::unistd::geteuid().as_raw(), 0, "needs root");
        let parent = format!("torpor-test-{tag}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&parent);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Let an unprivileged peer reach the socket's directory (the socket's mode decides).
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let sock = dir.join("torpord.sock");
        let state = dir.join("state");
        let cfg = dir.join("torpord.toml");
        std::fs::write(&cfg, config_toml(&sock, &state, &parent, global, &apps)).unwrap();
        Torpord {
            dir,
            parent,
            cfg,
            sock,
            state,
            daemon: None,
            apps,
        }
    }

    /// Start torpord (with `env` added) and wait for its socket and standby pool.
    pub fn start(&mut self, env: &[(&str, &str)]) {
        self.start_daemon(env);
        self.wait_pool();
    }

    /// Start torpord (with `env` added) and wait for its socket.
    pub fn start_daemon(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("torpord.log"))
            .unwrap();
        let child = Command::new(TORPORD)
            .arg("--config")
            .arg(&self.cfg)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let sock = self.sock.clone();
        wait_for("torpord's socket", HANG, || {
            request(&sock, "GET", "/v1/health", None, Duration::from_secs(5))
                .map(|r| r.status == 200)
                .unwrap_or(false)
        });
    }

    /// Wait until torpord's standby pool is ready.
    pub fn wait_pool(&self) {
        wait_for("the standby pool", HANG, || {
            self.get::<Health>(paths::HEALTH).pool_ready
        });
    }

    /// Kill torpord (SIGKILL) and reap it; its apps live on in their cgroups.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// METHOD PATH, whatever it answers: the status and the answer, typed.
    pub fn api<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        &self,
        method: &str,
        path: &str,
    ) -> (u16, Answer<T>) {
        api_call(&self.sock, method, path, None, HANG)
    }

    /// POST /v1/apps/NAME/start, whatever it answers.
    pub fn try_start(&self, name: &str) -> (u16, Answer<StartAnswer>) {
        self.api("POST", &paths::start(name))
    }

    /// POST /v1/apps/NAME/stop, whatever it answers.
    pub fn try_stop(&self, name: &str) -> (u16, Answer<StopAnswer>) {
        self.api("POST", &paths::stop(name))
    }

    /// Every event torpord keeps.
    pub fn all_events(&self) -> Vec<Event> {
        self.get::<EventList>(paths::EVENTS).events
    }

    /// The value of one metric line (`name{labels}`) of /metrics.
    pub fn metric(&self, name_and_labels: &str) -> Option<f64> {
        let r = request(&self.sock, "GET", "/metrics", None, HANG).unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        text.lines().find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// The fixture's cgroup parent under every mount.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        super::cgroup_dirs(&self.parent)
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().unwrap().id()
    }

    /// torpord still runs (not exited, e.g. by a signal).
    pub fn alive(&mut self) -> bool {
        matches!(self.daemon.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// METHOD PATH, which must answer 200: the answer, typed.
    fn call<T: serde::de::DeserializeOwned>(&self, method: &str, path: &str) -> T {
        let r = request(&self.sock, method, path, None, HANG)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(
            r.status,
            200,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.parse().unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.call("GET", path)
    }

    /// POST /v1/apps/NAME/start, which must answer 200.
    pub fn start_app(&self, name: &str) -> StartAnswer {
        self.call("POST", &paths::start(name))
    }

    /// POST /v1/apps/NAME/stop, which must answer 200.
    pub fn stop_app(&self, name: &str) -> StopAnswer {
        self.call("POST", &paths::stop(name))
    }

    pub fn status(&self, name: &str) -> AppStatus {
        self.get(&paths::app(name))
    }

    /// Every event's (kind, message) for `app`.
    pub fn events(&self, app: &str) -> Vec<(String, String)> {
        self.get::<EventList>(paths::EVENTS)
            .events
            .into_iter()
            .filter(|e| e.app.as_deref() == Some(app))
            .map(|e| (e.kind.as_str().to_string(), e.message))
            .collect()
    }

    pub fn port(&self, name: &str) -> u16 {
        self.apps.iter().find(|a| a.name == name).unwrap().port
    }

    pub fn app_pid(&self, name: &str) -> i32 {
        self.status(name).pid.unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("torpord.log")).unwrap_or_default()
    }

    /// The app's memory cgroup directory (v2 with the memory controller, else v1).
    pub fn memcg_dir(&self, name: &str) -> PathBuf {
        let pid = self.app_pid(name);
        procswap::cgroup::Memcg::of_pid(pid)
            .unwrap()
            .expect("the app has a memory cgroup")
            .dir()
            .to_path_buf()
    }

    /// Files under the state directory's `what/APP` (plans, loading sets).
    pub fn state_files(&self, what: &str, app: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.state.join(what).join(app))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    pub fn plan_path(&self, app: &str, pid: i32) -> PathBuf {
        self.state
            .join("plan")
            .join(app)
            .join(format!("{pid}.json"))
    }

    pub fn set_path(&self, app: &str, pid: i32) -> PathBuf {
        self.state
            .join("loading-set")
            .join(app)
            .join(format!("{pid}.json"))
    }
}

impl Drop for Torpord {
    fn drop(&mut self) {
        self.kill9();
        super::remove_app_cgroups(&self.cgroup_dirs());
        if std::thread::panicking() {
            eprintln!(
                "---- torpord log ({}) ----\n{}",
                self.dir.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
