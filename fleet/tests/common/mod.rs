//! The fleet's test bed on one machine: a real etcd and a real HAProxy on loopback in a temp
//! directory, emulated hosts (a torpord each, with its own socket, state directory and cgroup
//! parent, and a host agent), controllers. Every process is killed on drop; the directory is
//! kept (and the logs printed) when the test failed.
#![allow(dead_code)]

use etcd_client::{Client, GetOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use torpor_fleet::schema::{decode, Key, Value};

pub const FLEET: &str = env!("CARGO_BIN_EXE_torpor-fleet");
/// Bounds on waits for something that must happen: they only catch a hang.
pub const HANG: Duration = Duration::from_secs(300);

/// torpord and torpor-testapp, built beside this test (`cargo build -p local-controller`).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: build it first (cargo build -p local-controller)",
        p.display()
    );
    p
}

/// Wait for `f` to hold, polling every 50 ms; panics with `what` after `timeout` (a hang).
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `f` yields `want`; panics with the last value after [`HANG`].
pub async fn wait_eq<T, F, Fut>(what: &str, mut f: F, want: T)
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let t = Instant::now();
    loop {
        let got = f().await;
        if got == want {
            return;
        }
        assert!(
            t.elapsed() < HANG,
            "timed out waiting for {what}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub use torpor_testsupport::http::unused_port;

pub mod cluster;

/// A process with its log in the test directory.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log_text());
        }
    }
}

/// A temporary directory, kept when the test failed.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("torpor-fleet-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test directory kept: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A one-member etcd (Debian's etcd-server) on loopback.
pub struct Etcd {
    pub proc: Proc,
    pub url: String,
    pub peer_url: String,
}

impl Etcd {
    pub async fn start(dir: &Path) -> Etcd {
        let url = format!("http://127.0.0.1:{}", unused_port());
        let peer_url = format!("http://127.0.0.1:{}", unused_port());
        Etcd::spawn(dir, url, peer_url).await
    }

    /// The same member again (same data directory and ports), after `old` was killed.
    pub async fn restart(dir: &Path, mut old: Etcd) -> Etcd {
        old.proc.kill();
        let (url, peer_url) = (old.url.clone(), old.peer_url.clone());
        drop(old);
        Etcd::spawn(dir, url, peer_url).await
    }

    async fn spawn(dir: &Path, url: String, peer_url: String) -> Etcd {
        let proc = Proc::spawn(
            dir,
            "etcd",
            Command::new("etcd")
                .arg("--name=t")
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=t={peer_url}")),
        );
        let e = Etcd {
            proc,
            url,
            peer_url,
        };
        wait_for("etcd to answer", HANG, || async {
            match e.client().await {
                Some(mut c) => c.get("/", None).await.is_ok(),
                None => false,
            }
        })
        .await;
        e
    }

    pub async fn client(&self) -> Option<Client> {
        torpor_fleet::agent::connect(std::slice::from_ref(&self.url))
            .await
            .ok()
    }
}

/// status/HOST/web.
pub fn status_key(host: &str) -> Key {
    Key::Status {
        host: host.into(),
        app: "web".into(),
    }
}

/// placement/HOST/web.
pub fn placement_key(host: &str) -> Key {
    Key::Placement {
        host: host.into(),
        app: "web".into(),
    }
}

/// Every value under `prefix`, parsed (a malformed one fails the test).
pub async fn get_all<V: Value>(c: &mut Client, prefix: &str) -> Vec<(i64, V)> {
    let r = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            let k = Key::parse(kv.key_str().unwrap()).unwrap();
            (kv.mod_revision(), decode::<V>(&k, kv.value()).unwrap())
        })
        .collect()
}

/// One value, parsed, with its mod_revision.
pub async fn get_one<V: Value>(c: &mut Client, key: &Key) -> Option<(i64, V)> {
    let r = c.get(key.path(), None).await.ok()?;
    let kv = r.kvs().first()?;
    Some((kv.mod_revision(), decode::<V>(key, kv.value()).unwrap()))
}

/// The next emulated host's loopback address, 127.0.0.N (N from 2: 127.0.0.1 is etcd's,
/// HAProxy's and the controllers').
static NEXT_HOST_ADDR: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);

/// An emulated host: a torpord with test apps under its own cgroup parent, serving on its own
/// loopback address, and (when started) its host agent.
pub struct Host {
    pub name: String,
    /// Where this host's apps listen (127.0.0.N, its own).
    pub addr: std::net::Ipv4Addr,
    pub dir: PathBuf,
    pub parent: String,
    pub sock: PathBuf,
    pub apps: Vec<(String, u16)>,
    pub torpord: Option<Proc>,
    pub agent: Option<Proc>,
    /// Start the agent with `--enforce-share` (its share confined to its CPU quota).
    pub enforce_share: bool,
}

impl Host {
    /// A torpord whose apps (torpor-testapp, `mib` MiB each) are prestarted into standby.
    pub fn start_torpord(root: &Path, name: &str, apps: &[&str], mib: u64) -> Host {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let parent = format!("torpor-fleet-{name}-{}", std::process::id());
        let sock = dir.join("torpord.sock");
        let apps: Vec<(String, u16)> = apps
            .iter()
            .map(|a| (a.to_string(), unused_port()))
            .collect();
        let n = NEXT_HOST_ADDR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let addr = std::net::Ipv4Addr::new(127, 0, 0, n);
        let testapp = sibling_bin("torpor-testapp");
        let mut toml = format!(
            "socket = {sock:?}\nstate_dir = {:?}\ncgroup_parent = {parent:?}\nreserve = \"64M\"\nsample_interval = \"200ms\"\n",
            dir.join("state")
        );
        for (a, port) in &apps {
            let argv = [
                testapp.display().to_string(),
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                addr.to_string(),
                "--mib".into(),
                mib.to_string(),
            ];
            toml += &format!(
                "\n[[app]]\nname = {a:?}\ncommand = {argv:?}\nready = {{ http = \"http://{addr}:{port}/\" }}\nready_timeout = \"300s\"\nprestart = true\n"
            );
        }
        let cfg = dir.join("torpord.toml");
        std::fs::write(&cfg, toml).unwrap();
        let torpord = Proc::spawn(
            &dir,
            "torpord",
            Command::new(sibling_bin("torpord"))
                .arg("--config")
                .arg(&cfg)
                .env("RUST_LOG", "info"),
        );
        Host {
            name: name.into(),
            addr,
            dir,
            parent,
            sock,
            apps,
            torpord: Some(torpord),
            agent: None,
            enforce_share: false,
        }
    }

    pub fn torpord_api(&self) -> torpor_fleet::torpord::Torpord {
        torpor_fleet::torpord::Torpord::new(self.sock.clone())
    }

    /// Wait until every app is in standby (the pool is ready).
    pub async fn wait_standby(&self) {
        let api = self.torpord_api();
        wait_for("the standby pool", HANG, || async {
            match api.health().await {
                Ok(h) => h.pool_ready,
                Err(_) => false,
            }
        })
        .await;
    }

    pub fn port(&self, app: &str) -> u16 {
        self.apps.iter().find(|(a, _)| a == app).unwrap().1
    }

    /// Start the host agent against `etcd`, with a share of one core.
    pub fn start_agent(&mut self, etcd: &str) {
        self.start_agent_share(etcd, 1.0);
    }

    /// Start the host agent against `etcd`, its share `cores`.
    pub fn start_agent_share(&mut self, etcd: &str, cores: f64) {
        self.start_agent_with(etcd, cores, 2);
    }

    /// Start the host agent against `etcd` (comma-separated endpoints), its share `cores`,
    /// its lease TTL `ttl` seconds.
    pub fn start_agent_with(&mut self, etcd: &str, cores: f64, ttl: u32) {
        let mut cmd = Command::new(FLEET);
        cmd.arg("--etcd")
            .arg(etcd)
            .arg("host")
            .arg("--name")
            .arg(&self.name)
            .arg("--torpord")
            .arg(&self.sock)
            .arg("--cgroup-parent")
            .arg(&self.parent)
            .arg("--share-cores")
            .arg(cores.to_string())
            .arg("--ttl")
            .arg(ttl.to_string())
            .env("RUST_LOG", "info");
        for (a, port) in &self.apps {
            cmd.arg("--serve").arg(format!("{a}={}:{port}", self.addr));
        }
        if self.enforce_share {
            cmd.arg("--enforce-share");
        }
        self.agent = Some(Proc::spawn(&self.dir, "agent", &mut cmd));
    }
}

/// A busy loop in a cgroup of the host's share (cgroup v2): CPU use the agent measures.
pub struct Burner {
    child: Child,
    dir: PathBuf,
}

impl Burner {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn start(h: &Host) -> Burner {
        let v2 = torpor_fleet::measure::cgroup2_mount().unwrap();
        let dir = v2.join(&h.parent).join("burn");
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("sh")
            .arg("-c")
            .arg("while :; do :; done")
            .spawn()
            .unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        Burner { child, dir }
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(a) = self.agent.as_mut() {
            a.kill();
        }
        if let Some(t) = self.torpord.as_mut() {
            t.kill();
        }
        remove_app_cgroups(&self.parent);
        // The share's v1 cpu cgroup (--enforce-share on a hybrid system), empty by now.
        if let Ok(Some(m)) = procswap::cgroup::v1_mount("cpu") {
            let _ = std::fs::remove_dir(m.mount_point.join(&self.parent));
        }
    }
}

/// Thaw and kill what is left in the parent's app cgroups, then remove them (best effort).
pub fn remove_app_cgroups(parent: &str) {
    let Ok(m) = procswap::cgroup::mounts() else {
        return;
    };
    for mt in [m.v2, m.v1_memory, m.v1_freezer].into_iter().flatten() {
        procswap::cgroup::kill_and_remove_children(&mt.mount_point.join(parent));
    }
}

/// A real HAProxy (Debian 2.6) in the foreground: one frontend and one backend per app (no
/// servers: the controller adds them), the runtime API on a unix socket in `dir`, one log line
/// per request on its standard output (its log file).
pub struct Haproxy {
    pub proc: Proc,
    pub cfg: PathBuf,
    pub sock: PathBuf,
    /// app → frontend port.
    pub frontends: Vec<(String, u16)>,
}

impl Haproxy {
    pub async fn start(dir: &Path, apps: &[&str]) -> Haproxy {
        let sock = dir.join("haproxy.sock");
        let frontends: Vec<(String, u16)> = apps
            .iter()
            .map(|a| (a.to_string(), unused_port()))
            .collect();
        let fe: Vec<_> = frontends
            .iter()
            .map(|(a, p)| torpor_fleet::haproxy::log::Frontend::new(a, *p))
            .collect();
        let cfg = torpor_fleet::haproxy::log::router_config(&sock, &fe);
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        Haproxy::spawn(dir, path, sock, frontends).await
    }

    async fn spawn(
        dir: &Path,
        cfg: PathBuf,
        sock: PathBuf,
        frontends: Vec<(String, u16)>,
    ) -> Haproxy {
        let _ = std::fs::remove_file(&sock);
        let proc = Proc::spawn(
            dir,
            "haproxy",
            Command::new("haproxy").arg("-db").arg("-f").arg(&cfg),
        );
        let h = Haproxy {
            proc,
            cfg,
            sock,
            frontends,
        };
        wait_for("HAProxy's stats socket", HANG, || async {
            h.api().pid().await.is_ok()
        })
        .await;
        h
    }

    /// Kill -9 and start again from the same configuration (its dynamic servers are gone).
    pub async fn restart(dir: &Path, mut old: Haproxy) -> Haproxy {
        old.proc.kill();
        let (cfg, sock, fe) = (old.cfg.clone(), old.sock.clone(), old.frontends.clone());
        drop(old);
        Haproxy::spawn(dir, cfg, sock, fe).await
    }

    pub fn api(&self) -> torpor_fleet::haproxy::Haproxy {
        torpor_fleet::haproxy::Haproxy::new(self.sock.clone())
    }

    pub fn frontend(&self, app: &str) -> u16 {
        self.frontends.iter().find(|(a, _)| a == app).unwrap().1
    }

    /// Sessions BACKEND/SERVER has served (`show stat`'s stot; health checks are not sessions).
    pub async fn served(&self, backend: &str, server: &str) -> u64 {
        self.stat(backend, server, "stot").await
    }

    /// One numeric column of `show stat` for BACKEND's row `row` (a server's name, or
    /// "BACKEND" for the backend's own line); 0 when the row is not there (yet).
    pub async fn stat(&self, backend: &str, row: &str, column: &str) -> u64 {
        let csv = self.api().command("show stat").await.unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |n: &str| header.iter().position(|c| *c == n).unwrap();
        let (px, sv, want) = (col("pxname"), col("svname"), col(column));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(px) == Some(&backend) && f.get(sv) == Some(&row))
            .map_or(0, |f| {
                f[want]
                    .parse()
                    .unwrap_or_else(|e| panic!("show stat {backend}/{row} {column}: {e}"))
            })
    }

    /// Every request HAProxy logged so far (its standard output, across restarts).
    pub fn requests(&self) -> Vec<torpor_fleet::haproxy::log::RequestLog> {
        torpor_fleet::haproxy::log::read(&self.proc.log).unwrap()
    }

    /// Wait until BACKEND/SERVER is in admin state `want`.
    pub async fn wait_admin(
        &self,
        backend: &str,
        server: &str,
        want: torpor_fleet::haproxy::Admin,
    ) {
        let what = format!("{backend}/{server} {want:?}");
        wait_eq(&what, || self.admin(backend, server), Some(want)).await;
    }

    /// The admin state of BACKEND/SERVER, if HAProxy has it.
    pub async fn admin(&self, backend: &str, server: &str) -> Option<torpor_fleet::haproxy::Admin> {
        let s = self.api().servers().await.unwrap();
        s.get(&(backend.to_string(), server.to_string()))
            .map(|s| s.admin())
    }
}

/// A controller replica.
pub struct Controller {
    pub proc: Proc,
    pub port: u16,
}

impl Controller {
    pub fn start(
        dir: &Path,
        id: &str,
        etcd: &str,
        haproxy: Option<&Path>,
        cooldown: u32,
    ) -> Controller {
        Controller::start_ttl(dir, id, etcd, haproxy, cooldown, 2)
    }

    /// A replica against `etcd` (comma-separated endpoints) with a leadership lease of `ttl` s.
    pub fn start_ttl(
        dir: &Path,
        id: &str,
        etcd: &str,
        haproxy: Option<&Path>,
        cooldown: u32,
        ttl: u32,
    ) -> Controller {
        let port = unused_port();
        let mut cmd = Command::new(FLEET);
        cmd.arg("--etcd")
            .arg(etcd)
            .arg("controller")
            .arg("--id")
            .arg(id)
            .arg("--ttl")
            .arg(ttl.to_string())
            .arg("--tick-ms")
            .arg("250")
            .arg("--cooldown")
            .arg(cooldown.to_string())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info");
        if let Some(h) = haproxy {
            cmd.arg("--haproxy").arg(h);
        }
        Controller {
            proc: Proc::spawn(dir, id, &mut cmd),
            port,
        }
    }

    fn get(&self, path: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let (status, body) =
            local_controller::probe::http_get(&url, Duration::from_secs(10)).ok()?;
        (status == 200).then(|| String::from_utf8_lossy(&body).into_owned())
    }

    /// A metric's value (the first sample line named exactly `name`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics")?;
        text.lines().find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse().ok())?
        })
    }

    pub fn leads(&self) -> bool {
        self.metric("torpor_fleet_leader") == Some(1.0)
    }

    pub fn events(&self) -> Vec<torpor_fleet::obs::Event> {
        let body = self
            .get("/events")
            .unwrap_or_else(|| panic!("GET /events of {}", self.proc.name));
        serde_json::from_str(&body).unwrap()
    }
}

/// Write apps/APP (retried: a balanced client may first pick a member that was just killed).
pub async fn put_app(c: &mut Client, app: &str, min: u32, max: u32) {
    let spec = torpor_fleet::schema::AppSpec {
        schema: torpor_fleet::schema::SCHEMA,
        app: app.into(),
        backend: app.into(),
        min_running: min,
        max_running: max,
        max_conn: 0,
    };
    let t = Instant::now();
    while let Err(e) = c
        .put(
            Key::App(app.into()).path(),
            torpor_fleet::schema::encode(&spec),
            None,
        )
        .await
    {
        assert!(t.elapsed() < HANG, "writing apps/{app}: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The start of the fault tests: web (min 1, max 1) in service on h1 and in standby on h2,
/// h2's agent reporting; both agents on `eps` (comma-separated etcd endpoints) with lease TTL
/// `ttl`, the controllers started by `ctls` before web is declared.
pub struct WebOnH1 {
    pub hap: Haproxy,
    pub h1: Host,
    pub h2: Host,
    pub ctls: Vec<Controller>,
}

pub async fn web_on_h1(
    dir: &Path,
    c: &Client,
    eps: &str,
    ttl: u32,
    ctls: impl FnOnce(&Haproxy) -> Vec<Controller>,
) -> WebOnH1 {
    let hap = Haproxy::start(dir, &["web"]).await;
    let mut h1 = Host::start_torpord(dir, "h1", &["web"], 16);
    let mut h2 = Host::start_torpord(dir, "h2", &["web"], 16);
    h1.wait_standby().await;
    h2.wait_standby().await;
    h1.start_agent_with(eps, 1.0, ttl);
    let ctls = ctls(&hap);
    put_app(&mut c.clone(), "web", 1, 1).await;
    let ready = Some(torpor_fleet::haproxy::Admin::Ready);
    wait_eq("web/h1 in service", || hap.admin("web", "h1"), ready).await;
    h2.start_agent_with(eps, 1.0, ttl);
    wait_for("h2's first report", HANG, || {
        let mut c = c.clone();
        async move {
            get_one::<torpor_fleet::schema::Report>(&mut c, &Key::Report("h2".into()))
                .await
                .is_some()
        }
    })
    .await;
    WebOnH1 { hap, h1, h2, ctls }
}

/// [`web_on_h1`] on a one-member etcd with one controller (c1, no cooldown to speak of) and
/// lease TTLs of 2 s.
pub async fn web_on_h1_one_controller(tmp: &TempDir) -> (Etcd, Client, WebOnH1) {
    let etcd = Etcd::start(&tmp.0).await;
    let c = etcd.client().await.unwrap();
    let ctl = |hap: &Haproxy| {
        vec![Controller::start(
            &tmp.0,
            "c1",
            &etcd.url,
            Some(&hap.sock),
            1000,
        )]
    };
    let w = web_on_h1(&tmp.0, &c, &etcd.url, 2, ctl).await;
    (etcd, c, w)
}
