//! HAProxy's runtime API over its stats socket (`stats socket ... level admin`): one command
//! per connection, never a reload. Servers are added with `add server` (dynamic servers, health
//! checks on and enabled), put in service with `enable server`, drained and taken out with
//! `set server ... state drain|maint`. [`log`]: the router's configuration and its per-request
//! log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod log;

#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("HAProxy stats socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("HAProxy stats socket: no answer within {0:?}")]
    Timeout(Duration),
    #[error("HAProxy refused {command:?}: {answer}")]
    Refused { command: String, answer: String },
    #[error("HAProxy's answer to {command:?} is not what was expected: {answer}")]
    Parse { command: String, answer: String },
}

/// The admin state the controller wants for a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// In service (`enable server`).
    Ready,
    /// No new sessions (`set server ... state drain`).
    Drain,
    /// Out (`set server ... state maint`).
    Maint,
}

/// One server as `show servers state` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub name: String,
    pub addr: String,
    pub port: u16,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u32,
    /// `srv_admin_state` bits.
    pub admin_bits: u32,
    pub weight: u32,
}

impl ServerState {
    /// The admin state, from the bits (forced/inherited/config/resolution maintenance, then
    /// forced/inherited drain).
    pub fn admin(&self) -> Admin {
        if self.admin_bits & 0x27 != 0 {
            Admin::Maint
        } else if self.admin_bits & 0x18 != 0 {
            Admin::Drain
        } else {
            Admin::Ready
        }
    }
}

/// Parse `show servers state [BACKEND]`: (backend, server) → state. Lines that do not match the
/// header's columns are an error.
pub fn parse_servers_state(text: &str) -> Result<BTreeMap<(String, String), ServerState>, String> {
    let mut cols: Vec<&str> = vec![];
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(h) = line.strip_prefix("# ") {
            cols = h.split_whitespace().collect();
            continue;
        }
        if cols.is_empty() {
            continue; // the format version line
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |name: &str| -> Result<&str, String> {
            let i = cols.iter().position(|c| *c == name);
            i.and_then(|i| f.get(i).copied())
                .ok_or_else(|| format!("no {name} in {line:?}"))
        };
        let num = |name: &str| -> Result<u32, String> {
            get(name)?
                .parse()
                .map_err(|_| format!("bad {name} in {line:?}"))
        };
        let st = ServerState {
            name: get("srv_name")?.into(),
            addr: get("srv_addr")?.into(),
            port: num("srv_port")? as u16,
            op_state: num("srv_op_state")?,
            admin_bits: num("srv_admin_state")?,
            weight: num("srv_uweight")?,
        };
        out.insert((get("be_name")?.to_string(), st.name.clone()), st);
    }
    Ok(out)
}

/// Parse `show stat` CSV: (backend, server) → current sessions (`scur`), servers only.
pub fn parse_stat_sessions(text: &str) -> Result<BTreeMap<(String, String), u64>, String> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or("no CSV header")?;
    let cols: Vec<&str> = header.split(',').collect();
    let idx = |n: &str| {
        cols.iter()
            .position(|c| *c == n)
            .ok_or(format!("no {n} column"))
    };
    let (px, sv, scur) = (idx("pxname")?, idx("svname")?, idx("scur")?);
    let mut out = BTreeMap::new();
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split(',').collect();
        let (Some(p), Some(s), Some(c)) = (f.get(px), f.get(sv), f.get(scur)) else {
            return Err(format!("short line {l:?}"));
        };
        if *s == "FRONTEND" || *s == "BACKEND" {
            continue;
        }
        let n = c.parse().map_err(|_| format!("bad scur in {l:?}"))?;
        out.insert((p.to_string(), s.to_string()), n);
    }
    Ok(out)
}

/// A client of one HAProxy's stats socket.
#[derive(Debug, Clone)]
pub struct Haproxy {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Haproxy {
    pub fn new(socket: PathBuf) -> Haproxy {
        Haproxy {
            socket,
            timeout: Duration::from_secs(5),
        }
    }

    /// Send one command, return HAProxy's whole answer.
    pub async fn command(&self, cmd: &str) -> Result<String, HaproxyError> {
        let io = |source| HaproxyError::Io {
            path: self.socket.display().to_string(),
            source,
        };
        let fut = async {
            let mut s = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(io)?;
            s.write_all(format!("{cmd}\n").as_bytes())
                .await
                .map_err(io)?;
            let mut out = String::new();
            s.read_to_string(&mut out).await.map_err(io)?;
            Ok(out)
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| HaproxyError::Timeout(self.timeout))?
    }

    /// A command whose success is an empty answer (or one of `ok`, e.g. "New server registered.").
    async fn expect(&self, cmd: &str, ok: &[&str]) -> Result<(), HaproxyError> {
        let a = self.command(cmd).await?;
        let t = a.trim();
        if t.is_empty() || ok.iter().any(|o| t.starts_with(o)) {
            Ok(())
        } else {
            Err(HaproxyError::Refused {
                command: cmd.into(),
                answer: t.into(),
            })
        }
    }

    pub async fn servers(&self) -> Result<BTreeMap<(String, String), ServerState>, HaproxyError> {
        let cmd = "show servers state";
        let a = self.command(cmd).await?;
        parse_servers_state(&a).map_err(|e| HaproxyError::Parse {
            command: cmd.into(),
            answer: e,
        })
    }

    pub async fn sessions(&self) -> Result<BTreeMap<(String, String), u64>, HaproxyError> {
        let cmd = "show stat";
        let a = self.command(cmd).await?;
        parse_stat_sessions(&a).map_err(|e| HaproxyError::Parse {
            command: cmd.into(),
            answer: e,
        })
    }

    /// The running process's pid (from `show info`): a new pid means HAProxy restarted.
    pub async fn pid(&self) -> Result<u32, HaproxyError> {
        let a = self.command("show info").await?;
        a.lines()
            .find_map(|l| l.strip_prefix("Pid:")?.trim().parse().ok())
            .ok_or(HaproxyError::Parse {
                command: "show info".into(),
                answer: "no Pid".into(),
            })
    }

    /// `add server` with health checks, then `enable health` (dynamic servers start in
    /// maintenance with their checks disabled). `maxconn` 0: unlimited (HAProxy's default;
    /// a dynamic server takes nothing from a `default-server` line).
    pub async fn add_server(
        &self,
        backend: &str,
        server: &str,
        addr: SocketAddr,
        (weight, maxconn): (u32, u32),
    ) -> Result<(), HaproxyError> {
        let cmd = log::server_line(backend, server, addr, weight, maxconn);
        self.expect(&cmd, &["New server registered."]).await?;
        self.expect(&format!("enable health {backend}/{server}"), &[])
            .await
    }

    pub async fn set_admin(
        &self,
        backend: &str,
        server: &str,
        admin: Admin,
    ) -> Result<(), HaproxyError> {
        let cmd = match admin {
            Admin::Ready => format!("enable server {backend}/{server}"),
            Admin::Drain => format!("set server {backend}/{server} state drain"),
            Admin::Maint => format!("set server {backend}/{server} state maint"),
        };
        self.expect(&cmd, &[]).await
    }

    pub async fn set_weight(
        &self,
        backend: &str,
        server: &str,
        weight: u32,
    ) -> Result<(), HaproxyError> {
        self.expect(
            &format!("set server {backend}/{server} weight {weight}"),
            &[],
        )
        .await
    }

    /// Point an existing server (in maintenance) at a new address.
    pub async fn set_addr(
        &self,
        backend: &str,
        server: &str,
        addr: SocketAddr,
    ) -> Result<(), HaproxyError> {
        let cmd = format!(
            "set server {backend}/{server} addr {} port {}",
            addr.ip(),
            addr.port()
        );
        self.expect(&cmd, &["IP changed", "no need to change", "port changed"])
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HAProxy 2.6's own output format.
    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 web 1 h1 127.0.0.1 2 0 1 1 4 6 3 1 6 0 0 0 - 8080 - 0 0 - - 0\n3 web 2 h2 127.0.0.1 0 1 1 1 4 6 3 1 6 0 0 0 - 8081 - 0 0 - - 0\n4 api 1 h1 127.0.0.1 2 8 5 5 4 6 3 1 6 0 0 0 - 9000 - 0 0 - - 0\n";

    #[test]
    fn parses_servers_state() {
        let s = parse_servers_state(STATE).unwrap();
        assert_eq!(s.len(), 3);
        let h1 = &s[&("web".to_string(), "h1".to_string())];
        assert_eq!(
            (h1.port, h1.op_state, h1.admin(), h1.weight),
            (8080, 2, Admin::Ready, 1)
        );
        assert_eq!(
            s[&("web".to_string(), "h2".to_string())].admin(),
            Admin::Maint
        );
        assert_eq!(
            s[&("api".to_string(), "h1".to_string())].admin(),
            Admin::Drain
        );
        assert!(parse_servers_state("1\n# be_id be_name\n3\n").is_err());
        assert!(parse_servers_state("1\n").unwrap().is_empty());
    }

    #[test]
    fn parses_stat_sessions() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax\nfe,FRONTEND,,,3,4\nweb,h1,0,0,2,3\nweb,BACKEND,0,0,2,3\n";
        let s = parse_stat_sessions(csv).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[&("web".to_string(), "h1".to_string())], 2);
        assert!(parse_stat_sessions("nonsense").is_err());
        assert!(parse_stat_sessions("# pxname,svname,scur\nweb,h1,x\n").is_err());
    }
}
