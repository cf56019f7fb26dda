//! Readiness probes: HTTP GET, a RESP `PING` (redis), TCP connect, or a command.

use crate::config::Probe;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why a probe (or a probe URL) failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0:?}: only http:// URLs are supported")]
    NotHttp(String),
    #[error("{0:?}: no host")]
    NoHost(String),
    #[error("{addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}: no address")]
    NoAddress(String),
    #[error("connect {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("send to {addr}: {source}")]
    Send {
        addr: String,
        source: std::io::Error,
    },
    #[error("read from {addr}: {source}")]
    Read {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}: no HTTP answer")]
    NoAnswer(String),
    #[error("{addr}: bad status line {line:?}")]
    BadStatusLine { addr: String, line: Option<String> },
    /// An HTTP answer outside 2xx/3xx.
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("{argv0}: {source}")]
    Spawn {
        argv0: String,
        source: std::io::Error,
    },
    /// A command probe that exited unsuccessfully.
    #[error("{argv:?}: {status}")]
    Command {
        argv: Vec<String>,
        status: std::process::ExitStatus,
    },
    /// The caller's liveness check failed (the app exited).
    #[error("{0}")]
    Gone(String),
    #[error("not ready after {secs:.1}s ({attempts} probes; last: {last})")]
    NotReady {
        secs: f64,
        attempts: u32,
        last: Box<ProbeError>,
    },
    /// A RESP answer other than `+PONG` (e.g. `-LOADING` while redis loads its data).
    #[error("PING {addr}: answered {line:?}")]
    NotPong { addr: String, line: String },
    #[error("not ready after {secs:.1}s (armed {what} unanswered)")]
    ArmedUnanswered { secs: f64, what: String },
}

impl ProbeError {
    /// Nobody listens yet (the connection was refused).
    fn refused(&self) -> bool {
        matches!(self, ProbeError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

/// (host:port, path) of an `http://` URL.
pub fn parse_http_url(url: &str) -> Result<(String, String), ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::NotHttp(url.to_string()))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
        return Err(ProbeError::NoHost(url.to_string()));
    }
    let hp = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok((hp, path.to_string()))
}

/// The probe's GET, written with one `write` (one segment: a server that reads once gets it all).
fn request(path: &str, host: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: torpord\r\n\r\n"
    )
}

/// The redis probe's `PING` (RESP array form: what redis-cli sends).
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// The answer that makes a redis probe ready.
const PONG: &[u8] = b"+PONG\r\n";

/// The loopback address of a `tcp` or `redis` probe's port.
fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// One RESP `PING` to 127.0.0.1:`port`: ready when the answer is `+PONG`.
pub fn redis_ping(port: u16, timeout: Duration) -> Result<(), ProbeError> {
    let addr = format!("127.0.0.1:{port}");
    let mut s = TcpStream::connect_timeout(&loopback(port), timeout).map_err(|source| {
        ProbeError::Connect {
            addr: addr.clone(),
            source,
        }
    })?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    s.write_all(PING).map_err(|source| ProbeError::Send {
        addr: addr.clone(),
        source,
    })?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !Answer::Resp.complete(&buf) {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(source) => return Err(ProbeError::Read { addr, source }),
        }
    }
    pong(&addr, &buf)
}

/// Ok on `+PONG`, else what was answered.
fn pong(addr: &str, buf: &[u8]) -> Result<(), ProbeError> {
    if buf.starts_with(PONG) {
        return Ok(());
    }
    Err(ProbeError::NotPong {
        addr: addr.to_string(),
        line: String::from_utf8_lossy(buf.split(|&b| b == b'\n').next().unwrap_or_default())
            .trim_end()
            .to_string(),
    })
}

/// The first address of `host:port`.
fn resolve(hp: &str) -> Result<std::net::SocketAddr, ProbeError> {
    hp.to_socket_addrs()
        .map_err(|source| ProbeError::Resolve {
            addr: hp.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| ProbeError::NoAddress(hp.to_string()))
}

/// One HTTP GET: the status and the body, when an HTTP answer came back (the probes' GET;
/// tests use torpor-testsupport's HTTP client).
pub fn http_get(url: &str, timeout: Duration) -> Result<(u16, Vec<u8>), ProbeError> {
    let (hp, path) = parse_http_url(url)?;
    let addr = resolve(&hp)?;
    let io = |f: fn(String, std::io::Error) -> ProbeError| {
        let hp = hp.clone();
        move |e| f(hp, e)
    };
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(io(|addr, source| ProbeError::Connect { addr, source }))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(&hp);
    s.write_all(request(&path, host).as_bytes())
        .map_err(io(|addr, source| ProbeError::Send { addr, source }))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(io(|addr, source| ProbeError::Read { addr, source }))?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ProbeError::NoAnswer(hp.clone()))?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ProbeError::BadStatusLine {
            addr: hp.clone(),
            line: head.lines().next().map(str::to_string),
        })?;
    Ok((status, buf[head_end + 4..].to_vec()))
}

/// Probe once. Ok(()) = ready, Err(why not).
pub fn probe_once(p: &Probe, timeout: Duration) -> Result<(), ProbeError> {
    match p {
        Probe::Http(url) => match http_get(url, timeout)? {
            (s, _) if (200..400).contains(&s) => Ok(()),
            (status, _) => Err(ProbeError::Status {
                url: url.clone(),
                status,
            }),
        },
        Probe::Redis(port) => redis_ping(*port, timeout),
        Probe::Tcp(port) => TcpStream::connect_timeout(&loopback(*port), timeout)
            .map(|_| ())
            .map_err(|source| ProbeError::Connect {
                addr: format!("127.0.0.1:{port}"),
                source,
            }),
        Probe::Command(argv) => {
            let st = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map_err(|source| ProbeError::Spawn {
                    argv0: argv[0].clone(),
                    source,
                })?;
            if st.success() {
                Ok(())
            } else {
                Err(ProbeError::Command {
                    argv: argv.clone(),
                    status: st,
                })
            }
        }
    }
}

/// What an armed probe waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// An HTTP answer's head; ready on a 2xx/3xx status.
    Http,
    /// A RESP line; ready on `+PONG`.
    Resp,
}

impl Answer {
    /// Enough of the answer has arrived to judge it (the HTTP head; one RESP line).
    fn complete(self, buf: &[u8]) -> bool {
        match self {
            Answer::Http => buf.windows(4).any(|w| w == b"\r\n\r\n"),
            Answer::Resp => buf.windows(2).any(|w| w == b"\r\n"),
        }
    }

    /// A complete answer that says ready.
    fn ready(self, buf: &[u8]) -> bool {
        match self {
            Answer::Http => http_status(buf).is_some_and(|c| (200..400).contains(&c)),
            Answer::Resp => buf.starts_with(PONG),
        }
    }
}

/// A readiness probe sent before the app is thawed (see [`arm`]).
#[derive(Debug)]
pub struct Armed {
    /// The connection with the request already written: a frozen app's listening socket
    /// completes the handshake in the kernel (the accept backlog), so the request waits there
    /// and is the first thing the thawed app reads.
    conn: Option<TcpStream>,
    /// The request, for messages (`GET http://…`, `PING 127.0.0.1:6379`).
    what: String,
    answer: Answer,
}

impl Armed {
    /// Whether a request is waiting on a pre-connected socket (false: plain polling).
    pub fn is_armed(&self) -> bool {
        self.conn.is_some()
    }

    fn unarmed() -> Armed {
        Armed {
            conn: None,
            what: String::new(),
            answer: Answer::Http,
        }
    }
}

/// Connect to `addr` and write `req`: `None` if either fails. Loopback to a listening socket
/// completes at once even while the app is frozen; the timeout only bounds a remote or filtered
/// address.
fn send_early(addr: std::net::SocketAddr, req: &[u8]) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_nodelay(true).ok();
    s.write_all(req).ok()?;
    Some(s)
}

/// Before thaw: for an HTTP or redis probe, connect to the (frozen) app and send the GET or
/// `PING`, so that the answer arrives the moment the app has produced it — readiness is seen
/// without a polling interval in the way. Anything else (TCP and command probes, nobody
/// listening, a send that fails) gives an unarmed probe, and [`wait_armed`] polls as
/// [`wait_ready`] does.
pub fn arm(p: &Probe) -> Armed {
    match p {
        Probe::Http(url) => {
            let conn = parse_http_url(url).ok().and_then(|(hp, path)| {
                let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(&hp);
                send_early(resolve(&hp).ok()?, request(&path, host).as_bytes())
            });
            Armed {
                conn,
                what: format!("GET {url}"),
                answer: Answer::Http,
            }
        }
        Probe::Redis(port) => Armed {
            conn: send_early(loopback(*port), PING),
            what: format!("PING 127.0.0.1:{port}"),
            answer: Answer::Resp,
        },
        Probe::Tcp(_) | Probe::Command(_) => Armed::unarmed(),
    }
}

/// How reading an armed request's answer ended.
enum ArmedRead {
    /// A complete answer (ready or not).
    Answer(Vec<u8>),
    /// The connection ended or failed before a complete answer.
    Failed,
    /// The deadline passed first.
    TimedOut,
}

/// Read the armed request's answer, in 100 ms slices, `alive` asked between them.
fn read_armed(
    s: &mut TcpStream,
    answer: Answer,
    deadline: Instant,
    alive: &mut impl FnMut() -> Result<(), String>,
) -> Result<ArmedRead, ProbeError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    loop {
        match s.read(&mut chunk) {
            Ok(0) if answer.complete(&buf) => return Ok(ArmedRead::Answer(buf)),
            Ok(0) => return Ok(ArmedRead::Failed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(ArmedRead::Failed),
        }
        // The status line (the RESP line) is all readiness needs: don't wait for the body or
        // the close.
        if answer.complete(&buf) {
            return Ok(ArmedRead::Answer(buf));
        }
        alive().map_err(ProbeError::Gone)?;
        if Instant::now() >= deadline {
            return Ok(ArmedRead::TimedOut);
        }
    }
}

/// After thaw: the armed request's answer (HTTP 2xx/3xx, `+PONG` = ready, at the moment it
/// arrives), `alive` asked at least every 100 ms; if the armed request fails or answers
/// otherwise (an error status, redis' `-LOADING`), poll with [`wait_ready`] for what is left of
/// `timeout`. Returns the number of probes (1 when the armed request answered ready).
pub fn wait_armed(
    a: Armed,
    p: &Probe,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<u32, ProbeError> {
    let deadline = Instant::now() + timeout;
    let Some(mut s) = a.conn else {
        return wait_ready(p, timeout, alive);
    };
    match read_armed(&mut s, a.answer, deadline, &mut alive)? {
        ArmedRead::Answer(buf) if a.answer.ready(&buf) => return Ok(1),
        ArmedRead::Answer(_) | ArmedRead::Failed => {}
        ArmedRead::TimedOut => {
            return Err(ProbeError::ArmedUnanswered {
                secs: timeout.as_secs_f64(),
                what: a.what,
            })
        }
    }
    // The armed request counts as the first probe.
    wait_ready(p, deadline.saturating_duration_since(Instant::now()), alive).map(|n| n + 1)
}

/// The status code of an HTTP answer's status line.
fn http_status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Probe until ready or `timeout`; `alive` is asked between attempts (a dead app fails at once).
/// Returns the number of attempts. HTTP and TCP attempts are 1 ms apart while the connection is
/// refused (nobody listens yet: a refused loopback connect costs microseconds and no work in the
/// app), so readiness is seen within about a millisecond of the app starting to listen; any
/// other failure (an error answer, a reset, a proxy such as QEMU's user network accepting for a
/// guest that is not ready) and command probes (a process per attempt) back off from 5 to 100 ms,
/// so a probe never floods an app that is busy starting.
pub fn wait_ready(
    p: &Probe,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<u32, ProbeError> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    let mut backoff = Duration::from_millis(5);
    loop {
        attempts += 1;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50));
        let last = match probe_once(p, left.min(Duration::from_secs(5))) {
            Ok(()) => return Ok(attempts),
            Err(e) => e,
        };
        alive().map_err(ProbeError::Gone)?;
        if Instant::now() >= deadline {
            return Err(ProbeError::NotReady {
                secs: timeout.as_secs_f64(),
                attempts,
                last: Box::new(last),
            });
        }
        let refused = !matches!(p, Probe::Command(_)) && last.refused();
        let sleep = if refused {
            Duration::from_millis(1)
        } else {
            backoff
        };
        std::thread::sleep(sleep.min(deadline.saturating_duration_since(Instant::now())));
        if !refused {
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/x").unwrap(),
            ("127.0.0.1:8080".into(), "/x".into())
        );
        assert_eq!(
            parse_http_url("http://localhost").unwrap(),
            ("localhost:80".into(), "/".into())
        );
        assert!(parse_http_url("https://x/").is_err());
    }

    #[test]
    fn tcp_and_http_probe_against_a_local_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // Serve every connection (probes may retry) until the test process ends.
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        // Probes that must succeed get budgets that only catch a hang (the listener is a thread
        // of this test process, sharing 2 cores with the rest of `cargo test`).
        wait_ready(&Probe::Tcp(port), Duration::from_secs(120), || Ok(())).unwrap();
        wait_ready(
            &Probe::Http(format!("http://127.0.0.1:{port}/")),
            Duration::from_secs(120),
            || Ok(()),
        )
        .unwrap();
        // A port nobody listens on (held bound, not listening: no parallel test can get it).
        let (_held, closed) = super::armed_tests::refusing_port();
        let e = wait_ready(&Probe::Tcp(closed), Duration::from_millis(200), || Ok(())).unwrap_err();
        assert!(e.to_string().contains("not ready after"), "{e}");
        wait_ready(
            &Probe::Command(vec!["true".into()]),
            Duration::from_secs(120),
            || Ok(()),
        )
        .unwrap();
        assert!(wait_ready(
            &Probe::Command(vec!["false".into()]),
            Duration::from_millis(100),
            || Ok(())
        )
        .is_err());
    }
}

#[cfg(test)]
mod armed_tests {
    use super::*;
    use std::net::TcpListener;

    /// Answer `answers` connections in order (status codes), reading each request first.
    fn serve(l: TcpListener, answers: Vec<u16>) -> std::thread::JoinHandle<Vec<String>> {
        std::thread::spawn(move || {
            let mut requests = Vec::new();
            for code in answers {
                let (mut s, _) = l.accept().unwrap();
                // The whole request head (closing with unread data would reset the connection).
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).unwrap();
                    assert!(n > 0, "client closed before the end of its request");
                    req.extend_from_slice(&b[..n]);
                }
                requests.push(String::from_utf8_lossy(&req).into_owned());
                write!(s, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").unwrap();
            }
            requests
        })
    }

    #[test]
    fn armed_request_waits_in_the_backlog_and_is_the_only_probe() {
        // A listener nobody accepts on yet: like a frozen app, the kernel completes the
        // handshake and queues the connection.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = Probe::Http(format!(
            "http://127.0.0.1:{}/ready",
            l.local_addr().unwrap().port()
        ));
        let armed = arm(&p);
        assert!(armed.is_armed());
        // "Thaw": start accepting; the queued request is the first thing read.
        let server = serve(l, vec![200]);
        assert_eq!(
            wait_armed(armed, &p, Duration::from_secs(120), || Ok(())).map_err(|e| e.to_string()),
            Ok(1)
        );
        let reqs = server.join().unwrap();
        assert_eq!(reqs.len(), 1);
        assert!(
            reqs[0].starts_with("GET /ready HTTP/1.1\r\n"),
            "{:?}",
            reqs[0]
        );
    }

    #[test]
    fn armed_error_answer_falls_back_to_polling() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = Probe::Http(format!(
            "http://127.0.0.1:{}/",
            l.local_addr().unwrap().port()
        ));
        let armed = arm(&p);
        let server = serve(l, vec![503, 200]);
        // The armed probe (503) and one poll (200).
        assert_eq!(
            wait_armed(armed, &p, Duration::from_secs(120), || Ok(())).map_err(|e| e.to_string()),
            Ok(2)
        );
        assert_eq!(server.join().unwrap().len(), 2);
    }

    /// Answer one RESP request per connection with `answers` in order, after `go` (the "thaw");
    /// returns each connection's request bytes. `answering` is set just before each answer.
    fn serve_resp(
        l: TcpListener,
        answers: Vec<&'static str>,
        go: std::sync::mpsc::Receiver<()>,
        answering: std::sync::Arc<std::sync::atomic::AtomicU32>,
    ) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
        std::thread::spawn(move || {
            go.recv().unwrap();
            let mut requests = Vec::new();
            for a in answers {
                let (mut s, _) = l.accept().unwrap();
                let mut req = vec![0u8; PING.len()];
                s.read_exact(&mut req).unwrap();
                requests.push(req);
                answering.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                s.write_all(a.as_bytes()).unwrap();
            }
            requests
        })
    }

    #[test]
    fn armed_ping_is_ready_only_once_the_frozen_server_answers() {
        use std::sync::atomic::{AtomicU32, Ordering};
        // Nobody accepts yet (a frozen redis): the kernel queues the connection and the PING.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = Probe::Redis(l.local_addr().unwrap().port());
        let armed = arm(&p);
        assert!(armed.is_armed());
        let answering = std::sync::Arc::new(AtomicU32::new(0));
        let (go, thawed) = std::sync::mpsc::channel();
        let server = serve_resp(l, vec!["+PONG\r\n"], thawed, answering.clone());
        let (p2, seen) = (p.clone(), answering.clone());
        let waiter = std::thread::spawn(move || {
            let r = wait_armed(armed, &p2, Duration::from_secs(120), || Ok(()));
            (r.map_err(|e| e.to_string()), seen.load(Ordering::SeqCst))
        });
        // Frozen: no answer, so no readiness (whatever the time waited).
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "ready before the server answered");
        go.send(()).unwrap();
        let (r, answers_before_ready) = waiter.join().unwrap();
        assert_eq!(r, Ok(1), "one probe: the armed PING");
        assert_eq!(answers_before_ready, 1);
        // The PING sent before the "thaw" is the one request the server read.
        assert_eq!(server.join().unwrap(), vec![PING.to_vec()]);
    }

    #[test]
    fn armed_ping_answered_loading_falls_back_to_polling() {
        use std::sync::atomic::AtomicU32;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = Probe::Redis(l.local_addr().unwrap().port());
        let armed = arm(&p);
        let (go, thawed) = std::sync::mpsc::channel();
        let answers = vec![
            "-LOADING Redis is loading the dataset in memory\r\n",
            "+PONG\r\n",
        ];
        let server = serve_resp(l, answers, thawed, std::sync::Arc::new(AtomicU32::new(0)));
        go.send(()).unwrap();
        // The armed PING (-LOADING) and one poll (+PONG).
        assert_eq!(
            wait_armed(armed, &p, Duration::from_secs(120), || Ok(())).map_err(|e| e.to_string()),
            Ok(2)
        );
        assert_eq!(server.join().unwrap(), vec![PING.to_vec(); 2]);
    }

    #[test]
    fn a_ping_answered_otherwise_is_not_ready_and_says_what_came_back() {
        use std::sync::atomic::AtomicU32;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (go, thawed) = std::sync::mpsc::channel();
        let server = serve_resp(
            l,
            vec!["-ERR nope\r\n"],
            thawed,
            std::sync::Arc::new(AtomicU32::new(0)),
        );
        go.send(()).unwrap();
        let e = redis_ping(port, Duration::from_secs(120)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("PING 127.0.0.1:{port}: answered \"-ERR nope\"")
        );
        server.join().unwrap();
        // A TCP probe is never armed: a frozen app's backlog would accept it.
        let (_held, refused) = refusing_port();
        assert!(!arm(&Probe::Tcp(refused)).is_armed());
        assert!(!arm(&Probe::Redis(refused)).is_armed());
    }

    /// A loopback port that refuses connections for as long as the returned socket lives: bound
    /// but not listening, so no other test (tests run in parallel) can be given the same port,
    /// as could happen with a listener bound and closed.
    pub(super) fn refusing_port() -> (std::os::fd::OwnedFd, u16) {
        use nix::sys::socket::{
            bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(127, 0, 0, 1, 0),
        )
        .unwrap();
        let port = getsockname::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&fd))
            .unwrap()
            .port();
        (fd, port)
    }

    #[test]
    fn nobody_listening_gives_an_unarmed_probe_and_a_dead_app_fails_at_once() {
        let (_held, port) = refusing_port();
        let p = Probe::Http(format!("http://127.0.0.1:{port}/"));
        let armed = arm(&p);
        assert!(!armed.is_armed());
        let e = wait_armed(armed, &p, Duration::from_secs(120), || {
            Err("the app exited".into())
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "the app exited");
        assert!(!arm(&Probe::Tcp(port)).is_armed());
    }
}
