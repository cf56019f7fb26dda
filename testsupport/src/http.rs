//! Minimal blocking HTTP/1.1 GET (`Connection: close`; Content-Length, chunked or read to the
//! end): enough for the guest app, Tomcat and the test apps.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A parsed response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Parse a complete `Connection: close` response.
pub fn parse_response(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no end of headers in {} bytes", raw.len())
    };
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let proto = parts.next().unwrap_or("");
    if !proto.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .unwrap_or("")
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    if head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    {
        return Ok(Response {
            status,
            body: decode_chunked(body)?,
        });
    }
    if let Some(len) = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>())
    {
        let len = len.context("bad Content-Length")?;
        if body.len() < len {
            bail!("truncated body: {} of {len} bytes", body.len());
        }
        return Ok(Response {
            status,
            body: body[..len].to_string(),
        });
    }
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// The body of a `Transfer-Encoding: chunked` response (what an HTTP/1.1 server such as
/// Tomcat sends when it does not know the length in advance).
fn decode_chunked(mut rest: &str) -> Result<String> {
    let mut body = String::new();
    loop {
        let Some((size_line, after)) = rest.split_once("\r\n") else {
            bail!("truncated chunked body")
        };
        let hex = size_line.split(';').next().unwrap_or("").trim();
        let n =
            usize::from_str_radix(hex, 16).with_context(|| format!("bad chunk size {hex:?}"))?;
        if n == 0 {
            return Ok(body);
        }
        let Some(chunk) = after.get(..n) else {
            bail!("truncated chunk: {} of {n} bytes", after.len())
        };
        body.push_str(chunk);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
}

/// GET `path` from `addr`; `timeout` bounds connect and each read/write.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: a server that reads once and closes with unread bytes would reset the connection.
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read {addr}{path}"))?;
    if raw.is_empty() {
        bail!("connection closed without a response");
    }
    parse_response(&raw)
}

/// Poll `GET path` until a 200 arrives or `deadline` passes; returns the response and when
/// it arrived. Connection errors and resets (QEMU's hostfwd accepts before the guest listens)
/// are retried every `every`.
pub fn poll_ok(
    addr: SocketAddr,
    path: &str,
    deadline: Instant,
    every: Duration,
) -> Result<(Response, Instant)> {
    let mut last_err = String::from("no attempt");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no 200 from http://{addr}{path} before the deadline (last: {last_err})");
        }
        match get(addr, path, left.min(Duration::from_secs(60))) {
            Ok(r) if r.status == 200 => return Ok((r, Instant::now())),
            Ok(r) => last_err = format!("status {}: {}", r.status, r.body.trim()),
            Err(e) => last_err = format!("{e:#}"),
        }
        std::thread::sleep(every);
    }
}

/// An unused TCP port on 127.0.0.1 (the kernel's pick; free when this returns).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_status_and_body() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\nextra").unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: "ok\n".into()
            }
        );
        let r = parse_response(b"HTTP/1.0 500 Bad\r\n\r\nbad").unwrap();
        assert_eq!(r.status, 500);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, "abcde");
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nab")
                .is_err()
        );
    }

    #[test]
    fn poll_retries_until_a_200() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            // First connection: closed without an answer (like hostfwd before the guest listens),
            // second: 503, third: 200.
            for (i, s) in l.incoming().take(3).enumerate() {
                let mut s = s.unwrap();
                let mut buf = Vec::new();
                let mut b = [0u8; 512];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                match i {
                    0 => drop(s),
                    1 => s
                        .write_all(b"HTTP/1.1 503 X\r\nContent-Length: 0\r\n\r\n")
                        .unwrap(),
                    _ => s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .unwrap(),
                }
            }
        });
        let (r, _) = poll_ok(
            addr,
            "/",
            Instant::now() + Duration::from_secs(10),
            Duration::from_millis(5),
        )
        .unwrap();
        assert_eq!(r.body, "ok");
        t.join().unwrap();
        // Nothing listens any more: the deadline is honoured.
        let t0 = Instant::now();
        assert!(poll_ok(
            addr,
            "/",
            Instant::now() + Duration::from_millis(200),
            Duration::from_millis(20)
        )
        .is_err());
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
