//! A small blocking QMP client (QEMU Machine Protocol) over a unix socket.
//!
//! Connect reads the greeting and negotiates capabilities (`qmp_capabilities`); each command
//! waits for its `return` or `error`, skipping asynchronous events (kept in [`Qmp::events`]).
//! Every read and write is bounded by the client's timeout. QEMU serves one QMP client per
//! socket at a time: a second client connects but gets no greeting until the first leaves,
//! which shows here as a greeting timeout (the error says so).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// QMP failures, each naming the socket.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: cannot connect: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP socket {path}: no greeting within {timeout:?} (is QEMU alive and not frozen, and no other QMP client connected?)")]
    NoGreeting { path: PathBuf, timeout: Duration },
    #[error("QMP socket {path}: {cmd}: no answer within {timeout:?} (QEMU frozen or hung?)")]
    Timeout {
        path: PathBuf,
        cmd: String,
        timeout: Duration,
    },
    #[error("QMP socket {path}: {cmd}: I/O error: {source}")]
    Io {
        path: PathBuf,
        cmd: String,
        source: std::io::Error,
    },
    #[error("QMP socket {path}: QEMU closed the connection during {cmd}")]
    Closed { path: PathBuf, cmd: String },
    #[error("QMP socket {path}: {cmd}: malformed answer: {detail}")]
    Protocol {
        path: PathBuf,
        cmd: String,
        detail: String,
    },
    #[error("QMP socket {path}: {cmd} failed: {class}: {desc}")]
    Command {
        path: PathBuf,
        cmd: String,
        class: String,
        desc: String,
    },
}

/// `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmStatus {
    /// QEMU's run state: "running", "paused", "prelaunch", "inmigrate", ...
    pub status: String,
    pub running: bool,
}

/// A connected QMP session.
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    /// The greeting's `QMP` object (version, capabilities).
    pub greeting: Value,
    /// Asynchronous events received while waiting for answers (oldest first, at most 256).
    pub events: Vec<Value>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Qmp {
    /// Connect, read the greeting, enter command mode. `timeout` bounds each step.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let io = |source| QmpError::Io {
            path: path.to_owned(),
            cmd: "connect".into(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut q = Qmp {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
            timeout,
            greeting: Value::Null,
            events: Vec::new(),
        };
        let g = match q.read_message("greeting") {
            Err(QmpError::Timeout { .. }) => {
                return Err(QmpError::NoGreeting {
                    path: path.to_owned(),
                    timeout,
                })
            }
            r => r?,
        };
        q.greeting = g.get("QMP").cloned().ok_or_else(|| QmpError::Protocol {
            path: path.to_owned(),
            cmd: "greeting".into(),
            detail: format!("not a QMP greeting: {g}"),
        })?;
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Connect, retrying while the socket does not exist or refuses, until `deadline`.
    pub fn connect_retry(
        path: &Path,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Qmp, QmpError> {
        loop {
            match Qmp::connect(path, timeout) {
                Ok(q) => return Ok(q),
                Err(e @ QmpError::Connect { .. }) if Instant::now() < deadline => {
                    tracing::debug!("{e}; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// QEMU's version string from the greeting ("7.2.22").
    pub fn qemu_version(&self) -> String {
        let v = &self.greeting["version"]["qemu"];
        format!("{}.{}.{}", v["major"], v["minor"], v["micro"])
    }

    /// A failed read or write of `cmd`: a socket timeout is `Timeout`, anything else `Io`.
    fn io_error(&self, cmd: &str, source: std::io::Error) -> QmpError {
        match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => QmpError::Timeout {
                path: self.path.clone(),
                cmd: cmd.into(),
                timeout: self.timeout,
            },
            _ => QmpError::Io {
                path: self.path.clone(),
                cmd: cmd.into(),
                source,
            },
        }
    }

    fn read_message(&mut self, cmd: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| self.io_error(cmd, source))?;
        if n == 0 {
            return Err(QmpError::Closed {
                path: self.path.clone(),
                cmd: cmd.into(),
            });
        }
        serde_json::from_str(line.trim_end()).map_err(|e| QmpError::Protocol {
            path: self.path.clone(),
            cmd: cmd.into(),
            detail: format!("{e}: {:?}", line.trim_end()),
        })
    }

    /// Run one command; returns its `return` value.
    pub fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let msg = match args {
            Some(a) => json!({"execute": cmd, "arguments": a}),
            None => json!({"execute": cmd}),
        };
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .map_err(|source| self.io_error(cmd, source))?;
        let t0 = Instant::now();
        loop {
            let m = self.read_message(cmd)?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(QmpError::Command {
                    path: self.path.clone(),
                    cmd: cmd.into(),
                    class: e["class"].as_str().unwrap_or("?").into(),
                    desc: e["desc"].as_str().unwrap_or("?").into(),
                });
            }
            if m.get("event").is_some() {
                if self.events.len() >= 256 {
                    self.events.remove(0);
                }
                self.events.push(m);
                // Events do not extend the deadline indefinitely.
                if t0.elapsed() > self.timeout {
                    return Err(QmpError::Timeout {
                        path: self.path.clone(),
                        cmd: cmd.into(),
                        timeout: self.timeout,
                    });
                }
                continue;
            }
            return Err(QmpError::Protocol {
                path: self.path.clone(),
                cmd: cmd.into(),
                detail: format!("unexpected message {m}"),
            });
        }
    }

    /// Pause the guest's CPUs (`stop`).
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).map(|_| ())
    }

    /// Resume the guest's CPUs (`cont`).
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).map(|_| ())
    }

    /// `query-status`.
    pub fn query_status(&mut self) -> Result<VmStatus, QmpError> {
        let v = self.execute("query-status", None)?;
        serde_json::from_value(v.clone()).map_err(|e| QmpError::Protocol {
            path: self.path.clone(),
            cmd: "query-status".into(),
            detail: format!("{e}: {v}"),
        })
    }

    /// An HMP command through `human-monitor-command`; returns its text output (CRLF → LF).
    pub fn hmp(&mut self, command_line: &str) -> Result<String, QmpError> {
        let v = self.execute(
            "human-monitor-command",
            Some(json!({"command-line": command_line})),
        )?;
        let s = v.as_str().ok_or_else(|| QmpError::Protocol {
            path: self.path.clone(),
            cmd: format!("human-monitor-command {command_line:?}"),
            detail: format!("return is not a string: {v}"),
        })?;
        Ok(s.replace("\r\n", "\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QMP server: greeting, an event in the middle, errors.
    #[test]
    fn handshake_events_and_errors() {
        let dir = std::env::temp_dir().join(format!("procswap-qmp-{}", std::process::id()));
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
        let st = q.query_status().unwrap();
        assert_eq!((st.running, st.status.as_str()), (false, "paused"));
        assert_eq!(q.events.len(), 1);
        let e = q.execute("bogus", None).unwrap_err().to_string();
        assert!(e.contains("CommandNotFound"), "{e}");
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
