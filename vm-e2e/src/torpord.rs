//! torpord's HTTP/JSON API on its unix socket (see local-controller/README.md), and the
//! configuration the e2e bench gives it.

use crate::guest::GuestEnv;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Decode a `Transfer-Encoding: chunked` body.
pub fn dechunk(body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let nl = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_s = std::str::from_utf8(&rest[..nl])?
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let size = usize::from_str_radix(&size_s, 16)
            .with_context(|| format!("bad chunk size {size_s:?}"))?;
        rest = &rest[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Split a raw HTTP response into (status, decoded body).
pub fn parse_raw(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let body = &raw[end + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let header = |k: &str| {
        head.lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(k))
            .map(|(_, v)| v.trim().to_string())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(body)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse()?;
        if body.len() < len {
            bail!("truncated body");
        }
        body[..len].to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

/// One API call; returns (status, JSON body).
pub fn call(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value)> {
    let mut s = UnixStream::connect(sock).with_context(|| format!("connect {}", sock.display()))?;
    s.set_read_timeout(Some(timeout))?;
    let b = body.map(|v| v.to_string()).unwrap_or_default();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: torpord\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("{method} {path}"))?;
    let (status, body) = parse_raw(&raw)?;
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "{method} {path}: not JSON: {}",
                String::from_utf8_lossy(&body)
            )
        })?
    };
    Ok((status, v))
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// torpord's configuration for the e2e guest (app "guest", `kind = "vm"`).
pub fn config(
    env: &GuestEnv,
    argv: &[String],
    state_dir: &Path,
    sock: &Path,
    cgroup_parent: &str,
) -> String {
    let cmd: Vec<String> = argv.iter().map(|a| toml_str(a)).collect();
    format!(
        r#"# written by torpor-vm-e2e
socket = {sock}
state_dir = {state}
reserve = "256M"
purge = "always"
backend = "auto"
cgroup_parent = {cg}
sample_interval = "2s"

[[app]]
name = "guest"
kind = "vm"
command = [{cmd}]
vm = {{ qmp = {qmp}, agent = {agent}, agent_timeout = "120s", qmp_timeout = "60s" }}
ready = {{ http = {url} }}
ready_timeout = "600s"
prestart = true
"#,
        sock = toml_str(&sock.display().to_string()),
        state = toml_str(&state_dir.display().to_string()),
        cg = toml_str(cgroup_parent),
        cmd = cmd.join(", "),
        qmp = toml_str(&env.qmp_path().display().to_string()),
        agent = toml_str(&env.agent_path().display().to_string()),
        url = toml_str(&format!("http://127.0.0.1:{}/", env.port)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_responses() {
        let (s, b) = parse_raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{}"[..]));
        let (s, b) = parse_raw(b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n").unwrap();
        assert_eq!(s, 503);
        assert_eq!(b, b"{\"a\":1}");
        assert!(parse_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
    }

    #[test]
    fn config_is_valid_toml_with_the_vm_app() {
        let env = GuestEnv {
            dir: "/work/x".into(),
            port: 18080,
            check_port: 18081,
            idle_port: 18082,
            mem_mib: 512,
            app_mib: 192,
            ws_mib: 16,
            check_mib: 32,
            idle_mib: 96,
            ko: String::new(),
        };
        let text = config(
            &env,
            &["/w/guest.sh".into(), "launch".into(), "/work/x".into()],
            Path::new("/work/x/state"),
            Path::new("/work/x/t.sock"),
            "torpor-e2e",
        );
        let v: toml::Value = toml::from_str(&text).unwrap();
        let app = &v["app"][0];
        assert_eq!(app["kind"].as_str(), Some("vm"));
        assert_eq!(app["vm"]["qmp"].as_str(), Some("/work/x/qmp.sock"));
        assert_eq!(app["vm"]["agent"].as_str(), Some("/work/x/agent.sock"));
        assert_eq!(app["command"][1].as_str(), Some("launch"));
        assert_eq!(
            app["ready"]["http"].as_str(),
            Some("http://127.0.0.1:18080/")
        );
    }
}
