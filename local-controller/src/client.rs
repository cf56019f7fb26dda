//! A small blocking HTTP/1.1 client for torpord's unix socket (used by the `torpor` CLI and tests).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to torpord at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to torpord: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad answer from torpord: {0}")]
    Protocol(String),
}

/// An HTTP answer: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as untyped JSON (for printing it, and for tests of the JSON format itself).
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        self.parse()
    }
    /// The body as one of the API's answers ([`torpor_api`]).
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&self.body)))
        })
    }
    /// A failure's code and message (`None` when the body is not an error body).
    pub fn error(&self) -> Option<torpor_api::ErrorDetail> {
        self.parse::<torpor_api::ErrorBody>().ok().map(|b| b.error)
    }
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One request (`Connection: close`), waiting up to `timeout` for the answer.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: torpord\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf)
}

/// Parse a complete HTTP/1.1 response (Content-Length, chunked, or read-to-close body).
pub fn parse_response(buf: &[u8]) -> Result<Response, ClientError> {
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol(format!("no header end in {} bytes", buf.len())))?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("bad status line {status_line:?}")))?;
    let mut chunked = false;
    let mut len: Option<usize> = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                len = v.trim().parse().ok();
            }
        }
    }
    let rest = &buf[head_end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = len {
        rest.get(..n)
            .ok_or_else(|| ClientError::Protocol(format!("body shorter than Content-Length {n}")))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| ClientError::Protocol("bad chunk".into()))?;
        let size_s = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_s.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| ClientError::Protocol(format!("bad chunk size {size_s:?}")))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = b
            .get(..size)
            .ok_or_else(|| ClientError::Protocol("truncated chunk".into()))?;
        out.extend_from_slice(chunk);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"{}"[..]));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"garbage").is_err());
    }
}
