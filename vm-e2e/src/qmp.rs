//! A QMP client (QEMU Machine Protocol, JSON lines on a unix socket).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Asynchronous events seen while waiting for command replies.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connect, read the greeting and enter command mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let s =
            UnixStream::connect(path).with_context(|| format!("connect QMP {}", path.display()))?;
        s.set_read_timeout(Some(timeout))?;
        let writer = s.try_clone()?;
        let mut q = Qmp {
            reader: BufReader::new(s),
            writer,
            events: Vec::new(),
        };
        let greeting = q.read_msg()?;
        if greeting.get("QMP").is_none() {
            bail!("not a QMP greeting: {greeting}");
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read_msg(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("read QMP")? == 0 {
            bail!("QMP connection closed");
        }
        serde_json::from_str(&line).with_context(|| format!("bad QMP line {line:?}"))
    }

    /// Run a command, return its `return` value (an `error` reply is an Err).
    pub fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value> {
        let mut req = json!({ "execute": cmd });
        if let Some(a) = args {
            req["arguments"] = a;
        }
        writeln!(self.writer, "{req}")?;
        loop {
            let m = self.read_msg()?;
            if m.get("event").is_some() {
                self.events.push(m);
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(anyhow!("QMP {cmd}: {e}"));
            }
            bail!("unexpected QMP reply to {cmd}: {m}");
        }
    }

    /// `query-status`: (running, status string).
    pub fn status(&mut self) -> Result<(bool, String)> {
        let r = self.execute("query-status", None)?;
        let running = r
            .get("running")
            .and_then(Value::as_bool)
            .context("query-status: no running")?;
        let status = r
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Ok((running, status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QMP server: greeting, an event in the middle, errors.
    #[test]
    fn handshake_events_and_errors() {
        let dir = std::env::temp_dir().join(format!("vm-e2e-qmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&sock);
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut line = String::new();
            for reply in [
                r#"{"return": {}}"#.to_string(),
                r#"{"event": "STOP", "timestamp": {}}"#.to_string()
                    + "\n"
                    + r#"{"return": {"running": false, "status": "paused"}}"#,
                r#"{"error": {"class": "CommandNotFound", "desc": "nope"}}"#.to_string(),
            ] {
                line.clear();
                r.read_line(&mut line).unwrap();
                assert!(line.contains("execute"), "{line}");
                writeln!(w, "{reply}").unwrap();
            }
        });
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(q.status().unwrap(), (false, "paused".to_string()));
        assert_eq!(q.events.len(), 1);
        let e = q.execute("bogus", None).unwrap_err().to_string();
        assert!(e.contains("CommandNotFound"), "{e}");
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
