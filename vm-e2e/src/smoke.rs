//! First milestone: the host reaches the guest's HTTP server, the agent over virtio-serial,
//! and QMP. Every check prints a PASS/FAIL line; any FAIL makes the run fail.

use crate::guest::{Guest, GuestEnv};
use crate::{http, mem, qmp};
use anyhow::{bail, Context, Result};
use guest_enlight::protocol::{Client, Response};
use guest_enlight::{Category, MapSourceKind, RamLayout};
use procswap::vm::VmStatus;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// PASS/FAIL bookkeeping.
#[derive(Default)]
pub struct Checks {
    pub passed: usize,
    pub failed: Vec<String>,
}

impl Checks {
    pub fn check(&mut self, name: &str, r: Result<String>) -> bool {
        match r {
            Ok(detail) => {
                println!("PASS {name}: {detail}");
                self.passed += 1;
                true
            }
            Err(e) => {
                println!("FAIL {name}: {e:#}");
                self.failed.push(name.to_string());
                false
            }
        }
    }
    pub fn finish(&self, what: &str) -> Result<()> {
        println!(
            "{what}: {} passed, {} failed{}",
            self.passed,
            self.failed.len(),
            if self.failed.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.failed.join(", "))
            }
        );
        if self.failed.is_empty() {
            Ok(())
        } else {
            bail!("{what}: {} check(s) failed", self.failed.len())
        }
    }
}

/// Drop ANSI colour escapes (tracing's output in the agent log).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn expect_ok(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> Result<String> {
    let r = http::get(addr, path, timeout)?;
    if r.status != 200 || !r.body.starts_with("ok") {
        bail!(
            "http://{addr}{path}: status {} body {:?}",
            r.status,
            r.body.trim()
        );
    }
    Ok(r.body.trim().to_string())
}

/// The agent exchange over the virtio-serial chardev: HELLO, GET_LAYOUT, GET_FREE_BITMAP,
/// GET_PRIORITY_MAP, each checked against the guest's RAM size and the app's memory.
pub fn agent_checks(c: &mut Checks, env: &GuestEnv, module_loaded: bool) {
    let connect = || -> Result<Client<UnixStream>> {
        let s = UnixStream::connect(env.agent_path())
            .with_context(|| format!("connect {}", env.agent_path().display()))?;
        // HELLO must come back quickly (an absent agent fails here, not after the map budget).
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client::new(s))
    };
    let mut client = match connect() {
        Ok(cl) => cl,
        Err(e) => {
            c.check("agent connect", Err(e));
            return;
        }
    };
    c.check(
        "agent HELLO over virtio-serial",
        check_hello(&mut client, env, module_loaded),
    );
    // Maps may take longer to build under TCG.
    let s = client.into_inner();
    let _ = s.set_read_timeout(Some(Duration::from_secs(180)));
    let mut client = Client::new(s);
    let mut layout = None;
    c.check(
        "agent GET_LAYOUT matches the guest's RAM",
        check_layout(&mut client, env).map(|(msg, l)| {
            layout = Some(l);
            msg
        }),
    );
    c.check(
        "agent GET_FREE_BITMAP covers the layout, app memory not free",
        layout
            .as_ref()
            .context("no layout")
            .and_then(|l| check_free_bitmap(&mut client, l, env.data_pages())),
    );
    // Make both apps active just before the priority map (activity window 10 s).
    let _ = http::get(env.app_addr(), "/", Duration::from_secs(30));
    let _ = http::get(env.check_addr(), "/", Duration::from_secs(30));
    c.check(
        "agent GET_PRIORITY_MAP covers the layout, app data is User_Data",
        layout
            .as_ref()
            .context("no layout")
            .and_then(|l| check_priority_map(&mut client, l, env)),
    );
}

/// HELLO: protocol 1, 4 KiB pages; with torpor.ko loaded, the module source or the agent's
/// logged reason for declining it.
fn check_hello(
    client: &mut Client<UnixStream>,
    env: &GuestEnv,
    module_loaded: bool,
) -> Result<String> {
    let t = Instant::now();
    match client.hello("torpor-vm-e2e")? {
        Response::Hello {
            version,
            agent,
            page_size,
            source: s,
        } => {
            if version != 1 || page_size != 4096 {
                bail!("version {version}, page size {page_size}");
            }
            let mut note = String::new();
            if module_loaded && s != MapSourceKind::ModuleExact {
                // The agent may decline the module (e.g. no PRIORITY_MAP in this build);
                // it must say why in its log, else the auto-selection is broken.
                let log =
                    std::fs::read_to_string(env.dir.join("job/agent.log")).unwrap_or_default();
                let why = log
                    .lines()
                    .find(|l| l.contains("not using /dev/torpor"))
                    .map(strip_ansi);
                match why {
                    Some(w) => note = format!(" (torpor.ko loaded, agent declined it: {})", w.split("not using").nth(1).map(|x| format!("not using{x}")).unwrap_or(w.clone())),
                    None => bail!("torpor.ko was loaded but the agent's source is {s:?} and its log does not say why"),
                }
            }
            Ok(format!(
                "{agent}, protocol v{version}, source {s:?}{note}, {:.0} ms",
                t.elapsed().as_secs_f64() * 1e3
            ))
        }
        r => bail!("unexpected response {r:?}"),
    }
}

/// GET_LAYOUT covers the guest's RAM (less a little the BIOS reserves) and no more.
fn check_layout(client: &mut Client<UnixStream>, env: &GuestEnv) -> Result<(String, RamLayout)> {
    let (ps, l) = client.layout()?;
    let total = l.total_pages() * ps as u64;
    let mem = env.mem_bytes();
    let last = l.ranges.last().context("empty layout")?;
    // A 512 MiB pc guest: all RAM below the PCI hole, a little reserved by the BIOS.
    if total > mem || total < mem - (16 << 20) {
        bail!(
            "layout covers {} KiB, guest has {} KiB",
            total >> 10,
            mem >> 10
        );
    }
    if last.end() * ps as u64 > mem {
        bail!("last PFN {:#x} beyond {} MiB of RAM", last.end(), mem >> 20);
    }
    let msg = format!(
        "{} ranges, {} pages = {:.1} MiB of {} MiB",
        l.ranges.len(),
        l.total_pages(),
        total as f64 / 1048576.0,
        mem >> 20
    );
    Ok((msg, l))
}

/// GET_FREE_BITMAP: over the same layout, some pages free, the apps' pages not.
fn check_free_bitmap(
    client: &mut Client<UnixStream>,
    l: &RamLayout,
    app_pages: u64,
) -> Result<String> {
    let t = Instant::now();
    let m = client.free_bitmap()?;
    if &m.layout != l {
        bail!("bitmap layout differs from GET_LAYOUT");
    }
    if m.runs.total() != l.total_pages() {
        bail!(
            "runs cover {} pages, layout {}",
            m.runs.total(),
            l.total_pages()
        );
    }
    let free = m.runs.histogram()[1];
    if free == 0 || free + app_pages > l.total_pages() {
        bail!(
            "{free} free pages of {} with {app_pages} pages held by the apps",
            l.total_pages()
        );
    }
    Ok(format!(
        "{free} free pages ({:.1} MiB), source {:?}, built in {:.1} ms, fetched in {:.0} ms",
        free as f64 / 256.0,
        m.info.source,
        m.info.build_us as f64 / 1e3,
        t.elapsed().as_secs_f64() * 1e3
    ))
}

/// GET_PRIORITY_MAP: over the same layout, every page categorized, the active apps' data
/// User_Code/User_Data.
fn check_priority_map(
    client: &mut Client<UnixStream>,
    l: &RamLayout,
    env: &GuestEnv,
) -> Result<String> {
    let t = Instant::now();
    let m = client.priority_map(10_000)?;
    if &m.layout != l {
        bail!("priority-map layout differs from GET_LAYOUT");
    }
    let h = m.runs.histogram();
    let sum: u64 = h[..9].iter().sum();
    if sum != l.total_pages() || m.runs.total() != sum {
        bail!("categories sum to {sum} pages, layout {}", l.total_pages());
    }
    if h[Category::Kernel as usize] == 0 {
        bail!("no Kernel pages");
    }
    let user = h[Category::UserData as usize] + h[Category::UserCode as usize];
    // The web app and the checksum process were just active; their data is resident
    // (no swap in the guest).
    let active_pages = (env.app_mib + env.check_mib) << 8;
    if user * 10 < active_pages * 9 {
        bail!("User_Code+User_Data {user} pages < 90% of the active apps' {active_pages} pages (histogram {:?})", &h[..9]);
    }
    let cats: Vec<String> = Category::ALL
        .iter()
        .map(|k| format!("{}={}", k.name(), h[*k as usize]))
        .collect();
    Ok(format!(
        "window {} ms, built in {:.1} ms, fetched in {:.0} ms; {}",
        m.info.window_ms,
        m.info.build_us as f64 / 1e3,
        t.elapsed().as_secs_f64() * 1e3,
        cats.join(" ")
    ))
}

pub fn run(env: &GuestEnv, guest_sh: &Path, boot_timeout: Duration) -> Result<()> {
    let mut c = Checks::default();
    println!(
        "smoke: launching the guest ({} MiB RAM, ports {}/{}, dir {})",
        env.mem_mib,
        env.port,
        env.check_port,
        env.dir.display()
    );
    let guest = Guest::launch(env, guest_sh)?;
    let t0 = Instant::now();
    let booted = c.check(
        "guest boots and its web app answers GET / through hostfwd",
        http::poll_ok(
            env.app_addr(),
            "/",
            t0 + boot_timeout,
            Duration::from_millis(250),
        )
        .map(|(r, at)| {
            format!(
                "{} after {:.1} s",
                r.body.trim(),
                at.duration_since(t0).as_secs_f64()
            )
        }),
    );
    if !booted {
        println!("{}", env.diagnostics(30));
        drop(guest);
        return c.finish("smoke");
    }
    verify_checks(&mut c, env);
    let module_loaded = std::fs::read_to_string(env.console_path())
        .map(|s| s.contains("torpor.ko loaded"))
        .unwrap_or(false);
    println!(
        "smoke: torpor.ko in the guest: {}",
        if module_loaded {
            "loaded"
        } else {
            "not loaded (portable source)"
        }
    );
    agent_checks(&mut c, env, module_loaded);

    c.check(
        "guest RAM mapping found in QEMU, app memory resident",
        check_guest_ram(env, guest.pid()),
    );

    c.check("QMP stop / cont", check_stop_cont(env));
    c.check(
        "web app GET /verify after stop/cont",
        expect_ok(env.app_addr(), "/verify", Duration::from_secs(120)),
    );
    c.check(
        "agent still answers after stop/cont (PING)",
        check_ping(env),
    );
    c.check("guest console has no kernel trouble", check_console(env));
    c.check(
        "QEMU quits on QMP quit",
        guest
            .shutdown(Duration::from_secs(30))
            .map(|()| "exited".into()),
    );
    if !c.failed.is_empty() {
        println!("{}", env.diagnostics(20));
    }
    c.finish("smoke")
}

/// The web app, the checksum process and the idle process each verify their memory.
fn verify_checks(c: &mut Checks, env: &GuestEnv) {
    c.check(
        "web app GET /verify (192 MiB checksum in the guest)",
        expect_ok(env.app_addr(), "/verify", Duration::from_secs(120)),
    );
    // Polled for up to 60 s: the first 200 answer's body.
    let verify = |addr| {
        http::poll_ok(
            addr,
            "/verify",
            Instant::now() + Duration::from_secs(60),
            Duration::from_millis(250),
        )
        .map(|(r, _)| r.body.trim().to_string())
    };
    c.check("checksum process GET /verify", verify(env.check_addr()));
    c.check("idle process GET /verify", verify(env.idle_addr()));
}

/// QEMU's guest-RAM mapping (what the bench measures) holds the apps' memory.
fn check_guest_ram(env: &GuestEnv, pid: i32) -> Result<String> {
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", pid))?;
    let ram = mem::find_guest_ram(&mem::parse_maps(&maps), env.mem_bytes())?;
    let pc = mem::page_counts(pid, ram.start, ram.end)?;
    let app_pages = env.data_pages();
    if pc.present < app_pages {
        bail!(
            "only {} pages present, the apps hold {app_pages}",
            pc.present
        );
    }
    Ok(format!(
        "{:#x}+{} MiB: {} present, {} swapped, {} untouched",
        ram.start,
        ram.len() >> 20,
        pc.present,
        pc.swapped,
        pc.none
    ))
}

/// QMP: stop must really stop the guest, cont must bring it back intact.
fn check_stop_cont(env: &GuestEnv) -> Result<String> {
    let mut q = qmp::Qmp::connect(&env.qmp_path(), Duration::from_secs(30))?;
    let VmStatus {
        running,
        status: st,
    } = q.query_status()?;
    if !running {
        bail!("guest not running before stop: {st}");
    }
    q.execute("stop", None)?;
    let VmStatus {
        running,
        status: st,
    } = q.query_status()?;
    if running || st != "paused" {
        bail!("after stop: running={running} status={st}");
    }
    if let Ok(r) = http::get(env.app_addr(), "/", Duration::from_secs(3)) {
        bail!("the paused guest answered HTTP: {} {:?}", r.status, r.body);
    }
    q.execute("cont", None)?;
    let t = Instant::now();
    let VmStatus {
        running,
        status: st,
    } = q.query_status()?;
    if !running {
        bail!("after cont: status {st}");
    }
    let (r, _) = http::poll_ok(
        env.app_addr(),
        "/",
        Instant::now() + Duration::from_secs(60),
        Duration::from_millis(50),
    )?;
    Ok(format!(
        "paused guest did not answer in 3 s; after cont {} in {:.0} ms",
        r.body.trim(),
        t.elapsed().as_secs_f64() * 1e3
    ))
}

/// The agent still answers after stop/cont.
fn check_ping(env: &GuestEnv) -> Result<String> {
    let s = UnixStream::connect(env.agent_path())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut cl = Client::new(s);
    let n = cl.ping(0xfeed_beef)?;
    if n != 0xfeed_beef {
        bail!("nonce {n:#x}");
    }
    Ok("PONG".into())
}

/// No BUG/WARNING/Oops/general protection/panic line on the guest console.
fn check_console(env: &GuestEnv) -> Result<String> {
    let bad_console = std::fs::read_to_string(env.console_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            [
                "BUG:",
                "WARNING:",
                "Oops",
                "general protection",
                "Kernel panic",
            ]
            .iter()
            .any(|p| l.contains(p))
        })
        .map(str::to_string)
        .collect::<Vec<_>>();
    if bad_console.is_empty() {
        Ok("clean".into())
    } else {
        Err(anyhow::anyhow!("{bad_console:?}"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            super::strip_ansi("\x1b[2mtime\x1b[0m \x1b[33m WARN\x1b[0m x"),
            "time  WARN x"
        );
    }
}
