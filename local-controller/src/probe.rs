//! Readiness probes: HTTP GET, TCP connect, or a command.

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
    #[error("not ready after {secs:.1}s (armed GET {url} unanswered)")]
    ArmedUnanswered { secs: f64, url: String },
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
        Probe::Tcp(port) => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
            TcpStream::connect_timeout(&addr, timeout)
                .map(|_| ())
                .map_err(|source| ProbeError::Connect {
                    addr: format!("127.0.0.1:{port}"),
                    source,
                })
        }
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

/// A readiness probe sent before the app is thawed (see [`arm`]).
#[derive(Debug)]
pub struct Armed {
    /// The connection with the request already written: a frozen app's listening socket
    /// completes the handshake in the kernel (the accept backlog), so the request waits there
    /// and is the first thing the thawed app reads.
    conn: Option<TcpStream>,
    url: String,
}

impl Armed {
    /// Whether a request is waiting on a pre-connected socket (false: plain polling).
    pub fn is_armed(&self) -> bool {
        self.conn.is_some()
    }
}

/// Before thaw: for an HTTP probe, connect to the (frozen) app and send the GET, so that the
/// answer arrives the moment the app has produced it — readiness is seen without a polling
/// interval in the way. Anything else (TCP and command probes, nobody listening, a send that
/// fails) gives an unarmed probe, and [`wait_armed`] polls as [`wait_ready`] does.
pub fn arm(p: &Probe) -> Armed {
    let Probe::Http(url) = p else {
        return Armed {
            conn: None,
            url: String::new(),
        };
    };
    let conn = (|| -> Option<TcpStream> {
        let (hp, path) = parse_http_url(url).ok()?;
        let addr = resolve(&hp).ok()?;
        // Loopback to a listening socket completes at once even while the app is frozen; the
        // timeout only bounds a remote or filtered address.
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        s.set_nodelay(true).ok();
        let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(&hp);
        s.write_all(request(&path, host).as_bytes()).ok()?;
        Some(s)
    })();
    Armed {
        conn,
        url: url.clone(),
    }
}

/// After thaw: the armed request's answer (2xx/3xx = ready, at the moment it arrives), read in
/// slices so `alive` is asked at least every 100 ms; if the armed request fails or answers
/// with an error status, poll with [`wait_ready`] for what is left of `timeout`. Returns the
/// number of probes (1 when the armed request answered).
pub fn wait_armed(
    a: Armed,
    p: &Probe,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<u32, ProbeError> {
    let deadline = Instant::now() + timeout;
    if let Some(mut s) = a.conn {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        s.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let answered = loop {
            match s.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break false,
            }
            // The status line is all readiness needs: don't wait for the body or the close.
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break true;
            }
            alive().map_err(ProbeError::Gone)?;
            if Instant::now() >= deadline {
                return Err(ProbeError::ArmedUnanswered {
                    secs: timeout.as_secs_f64(),
                    url: a.url,
                });
            }
        };
        if answered && http_status(&buf).is_some_and(|c| (200..400).contains(&c)) {
            return Ok(1);
        }
        // The armed request counts as the first probe.
        return wait_ready(p, deadline.saturating_duration_since(Instant::now()), alive)
            .map(|n| n + 1);
    }
    wait_ready(p, deadline.saturating_duration_since(Instant::now()), alive)
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
