//! Readiness probes: HTTP GET, TCP connect, or a command.

use crate::config::Probe;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// (host:port, path) of an `http://` URL.
pub fn parse_http_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let hp = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") };
    Ok((hp, path.to_string()))
}

/// One HTTP GET; Ok(status) when an HTTP answer came back.
pub fn http_get(url: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    let (hp, path) = parse_http_url(url)?;
    let addr = hp.to_socket_addrs().map_err(|e| format!("{hp}: {e}"))?.next().ok_or_else(|| format!("{hp}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {hp}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(&hp);
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: torpord\r\n\r\n")
        .map_err(|e| format!("send to {hp}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read from {hp}: {e}"))?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("{hp}: no HTTP answer"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{hp}: bad status line {:?}", head.lines().next()))?;
    Ok((status, buf[head_end + 4..].to_vec()))
}

/// Probe once. Ok(()) = ready, Err(why not).
pub fn probe_once(p: &Probe, timeout: Duration) -> Result<(), String> {
    match p {
        Probe::Http(url) => match http_get(url, timeout)? {
            (s, _) if (200..400).contains(&s) => Ok(()),
            (s, _) => Err(format!("GET {url}: status {s}")),
        },
        Probe::Tcp(port) => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
            TcpStream::connect_timeout(&addr, timeout).map(|_| ()).map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))
        }
        Probe::Command(argv) => {
            let st = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("{}: {e}", argv[0]))?;
            if st.success() {
                Ok(())
            } else {
                Err(format!("{:?}: {st}", argv))
            }
        }
    }
}

/// Probe until ready or `timeout`; `alive` is asked between attempts (a dead app fails at once).
/// Returns the number of attempts.
pub fn wait_ready(p: &Probe, timeout: Duration, mut alive: impl FnMut() -> Result<(), String>) -> Result<u32, String> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    let mut sleep = Duration::from_millis(5);
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(50));
        let last = match probe_once(p, left.min(Duration::from_secs(5))) {
            Ok(()) => return Ok(attempts),
            Err(e) => e,
        };
        alive()?;
        if Instant::now() >= deadline {
            return Err(format!("not ready after {:.1}s ({attempts} probes; last: {last})", timeout.as_secs_f64()));
        }
        std::thread::sleep(sleep.min(deadline.saturating_duration_since(Instant::now())));
        sleep = (sleep * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_http_url("http://127.0.0.1:8080/x").unwrap(), ("127.0.0.1:8080".into(), "/x".into()));
        assert_eq!(parse_http_url("http://localhost").unwrap(), ("localhost:80".into(), "/".into()));
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
        wait_ready(&Probe::Tcp(port), Duration::from_secs(5), || Ok(())).unwrap();
        wait_ready(&Probe::Http(format!("http://127.0.0.1:{port}/")), Duration::from_secs(5), || Ok(())).unwrap();
        // A port nobody listens on: bound, then closed.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = wait_ready(&Probe::Tcp(closed), Duration::from_millis(200), || Ok(())).unwrap_err();
        assert!(e.contains("not ready after"), "{e}");
        wait_ready(&Probe::Command(vec!["true".into()]), Duration::from_secs(2), || Ok(())).unwrap();
        assert!(wait_ready(&Probe::Command(vec!["false".into()]), Duration::from_millis(100), || Ok(())).is_err());
    }
}
