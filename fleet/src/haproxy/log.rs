//! HAProxy's own record of every request: the router's configuration (one definition, for the
//! tests, the demo and the agility benchmark) logs one line per request in [`LOG_FORMAT`] to
//! its standard output (`log stdout format raw`, HAProxy in the foreground), and [`parse_line`]
//! reads it back. From it: when a server answered its first request ([`earliest`]) —
//! the router's side of "the new instance serves ≤ 100 ms after it reported ready" — and
//! per-request response times under load.

use std::path::Path;

/// The first word of every request line (HAProxy's other output is skipped).
pub const LOG_TAG: &str = "torpor-req";

/// HAProxy 2.6 `log-format`: the accept date (epoch seconds `.` milliseconds), then the timers
/// in ms (Th Ti TR Tw Tc Tr Ta; -1 when the step did not happen), the status, backend, server
/// (`<NOSRV>` when none was chosen) and the termination state (`--` when normal).
pub const LOG_FORMAT: &str = "torpor-req %Ts.%ms %Th %Ti %TR %Tw %Tc %Tr %Ta %ST %b %s %ts";

/// One request as HAProxy logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    /// When HAProxy accepted the connection, ms since the epoch.
    pub accept_ms: i64,
    /// Handshake (Th), idle before the request (Ti), time to receive it (TR), time queued (Tw),
    /// to connect to the server (Tc), for the server's response headers (Tr), active time from
    /// the request's first byte to the response's last (Ta). ms, -1 when not reached.
    pub th: i64,
    pub ti: i64,
    pub treq: i64,
    pub tw: i64,
    pub tc: i64,
    pub tr: i64,
    pub ta: i64,
    /// HTTP status HAProxy sent (-1 when none).
    pub status: i32,
    pub backend: String,
    pub server: String,
    /// Termination state: `--` for a normal end.
    pub term: String,
}

impl RequestLog {
    /// When the request's first byte arrived (accept + Th + Ti), ms since the epoch.
    pub fn request_ms(&self) -> i64 {
        self.accept_ms + self.th.max(0) + self.ti.max(0)
    }

    /// Whether a server answered it (response headers came back from a server).
    pub fn served(&self) -> bool {
        self.server != "<NOSRV>" && self.tr >= 0 && self.status > 0
    }

    /// When the response's last byte left HAProxy (request + Ta), ms since the epoch; `None`
    /// when no server answered.
    pub fn answered_ms(&self) -> Option<i64> {
        self.served().then(|| self.request_ms() + self.ta.max(0))
    }

    /// When HAProxy had connected to the server and passed the request on (request + Tw + Tc),
    /// ms since the epoch; `None` when it never reached a server.
    pub fn sent_ms(&self) -> Option<i64> {
        (self.server != "<NOSRV>" && self.tc >= 0)
            .then(|| self.request_ms() + self.tw.max(0) + self.tc)
    }

    /// A normal end with a 2xx or 3xx status.
    pub fn ok(&self) -> bool {
        self.served() && self.term == "--" && (200..400).contains(&self.status)
    }
}

/// A line tagged [`LOG_TAG`] that is not in [`LOG_FORMAT`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HAProxy request log line not in the expected format ({why}): {line:?}")]
pub struct LogLineError {
    pub line: String,
    pub why: &'static str,
}

/// Parse one line of HAProxy's output: `None` for lines that are not request lines (HAProxy's
/// notices and warnings share its standard output).
pub fn parse_line(line: &str) -> Option<Result<RequestLog, LogLineError>> {
    let rest = line.trim_end().strip_prefix(LOG_TAG)?.strip_prefix(' ')?;
    Some(parse_fields(rest).map_err(|why| LogLineError {
        line: line.into(),
        why,
    }))
}

fn parse_fields(rest: &str) -> Result<RequestLog, &'static str> {
    let f: Vec<&str> = rest.split(' ').collect();
    let [date, th, ti, treq, tw, tc, tr, ta, status, backend, server, term] = f[..] else {
        return Err("not 12 fields");
    };
    let (secs, ms) = date.split_once('.').ok_or("no accept date")?;
    let secs: i64 = secs.parse().map_err(|_| "bad accept date")?;
    let ms: i64 = ms.parse().map_err(|_| "bad accept date")?;
    let t = |s: &str| s.parse::<i64>().map_err(|_| "bad timer");
    Ok(RequestLog {
        accept_ms: secs * 1000 + ms,
        th: t(th)?,
        ti: t(ti)?,
        treq: t(treq)?,
        tw: t(tw)?,
        tc: t(tc)?,
        tr: t(tr)?,
        ta: t(ta)?,
        status: status.parse().map_err(|_| "bad status")?,
        backend: backend.into(),
        server: server.into(),
        term: term.into(),
    })
}

/// Every request line of HAProxy's output file, in file order (a request is logged when it
/// ends). A tagged line in another format is an error; a last line cut short by a writer still
/// writing is left out.
pub fn read(path: &Path) -> anyhow::Result<Vec<RequestLog>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading HAProxy's log {}: {e}", path.display()))?;
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete
        .lines()
        .filter_map(parse_line)
        .map(|r| r.map_err(anyhow::Error::from))
        .collect()
}

/// The request of `backend`/`server` with the earliest `when` (whatever the order of the lines):
/// with [`RequestLog::answered_ms`], the first it answered; with [`RequestLog::sent_ms`], the
/// first HAProxy passed on to it.
pub fn earliest<'a>(
    logs: &'a [RequestLog],
    backend: &str,
    server: &str,
    when: fn(&RequestLog) -> Option<i64>,
) -> Option<&'a RequestLog> {
    logs.iter()
        .filter(|r| r.backend == backend && r.server == server)
        .filter_map(|r| when(r).map(|t| (t, r)))
        .min_by_key(|(t, _)| *t)
        .map(|(_, r)| r)
}

/// One app's frontend in the router's configuration: HAProxy listens on 127.0.0.1:`port` and
/// its backend checks each server with `GET check` (the app's health-check path: `/` unless
/// the app serves something else there, e.g. a Tomcat whose webapp is deployed at `/app/`
/// and which answers 404 on `/`, which HAProxy's check counts as down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub app: String,
    pub port: u16,
    pub check: String,
}

impl Frontend {
    /// A frontend whose servers are checked on `/`.
    pub fn new(app: &str, port: u16) -> Frontend {
        Frontend {
            app: app.into(),
            port,
            check: "/".into(),
        }
    }

    /// `APP=PORT` or `APP=PORT/CHECK/PATH` (the health-check path starts at the first `/`
    /// after the port: `web=8080/app/` checks `GET /app/`). The path must be printable ASCII
    /// without spaces (it goes into HAProxy's `option httpchk` line as one word).
    pub fn parse(s: &str) -> Result<Frontend, String> {
        let (app, rest) = s
            .split_once('=')
            .ok_or("expected APP=PORT or APP=PORT/CHECK-PATH")?;
        if !crate::schema::valid_name(app) {
            return Err(format!("bad app name {app:?} (1-64 of [A-Za-z0-9_.-])"));
        }
        let (port, check) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let port = port.parse().map_err(|e| format!("port {port:?}: {e}"))?;
        if !check.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "health-check path {check:?}: printable ASCII without spaces only"
            ));
        }
        Ok(Frontend {
            app: app.into(),
            port,
            check: check.into(),
        })
    }
}

/// The router's static configuration: the runtime API on `socket` (admin level), one line per
/// request on standard output in [`LOG_FORMAT`], and per app a frontend on 127.0.0.1:PORT with
/// its backend (round robin, HTTP health checks on the app's check path; no servers: the
/// controller adds them, each with [`server_line`]). A check may wait 30 s for its answer: a
/// busy server that answers its requests in turn (a backlog of slow requests ahead of the
/// check) is slow, not down; a refused connection still fails at once. With a per-server
/// `maxconn` (the app's `max_conn`) the backlog waits in the backend's queue, not in the
/// servers' accept queues: a server enabled later takes queued requests at once (HAProxy hands
/// a server that comes up the backend's pending requests), a request may wait there up to
/// `timeout queue` (60 s; without it HAProxy would use `timeout connect`, 5 s, and answer
/// 503), and `option redispatch` sends a request whose server refuses the connection to
/// another server at its last retry.
pub fn router_config(socket: &Path, frontends: &[Frontend]) -> String {
    let mut cfg = format!(
        "global\n    log stdout format raw local0\n    stats socket {} mode 600 level admin\n\n\
         defaults\n    mode http\n    log global\n    log-format \"{LOG_FORMAT}\"\n    \
         timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n    \
         timeout check 30s\n",
        socket.display()
    );
    for Frontend { app, port, check } in frontends {
        cfg += &format!(
            "\nfrontend fe_{app}\n    bind 127.0.0.1:{port}\n    default_backend {app}\n\n\
             backend {app}\n    balance roundrobin\n    option httpchk GET {check}\n    \
             option redispatch\n    timeout queue 60s\n"
        );
    }
    cfg
}

/// The runtime API's `add server` command for one of the router's servers: HTTP health
/// checks every second (down after 2 failures, up after 1 success), `weight`, and `maxconn`
/// when not 0 (0: unlimited; a dynamic server takes nothing from a `default-server` line).
pub fn server_line(
    backend: &str,
    server: &str,
    addr: std::net::SocketAddr,
    weight: u32,
    maxconn: u32,
) -> String {
    let mut cmd = format!(
        "add server {backend}/{server} {addr} check inter 1s fall 2 rise 1 weight {weight}"
    );
    if maxconn > 0 {
        cmd += &format!(" maxconn {maxconn}");
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines HAProxy 2.6 wrote with [`LOG_FORMAT`].
    const LINES: &str = "torpor-req 1796227235.267 0 0 0 -1 -1 -1 0 503 web <NOSRV> SC\n\
        [WARNING]  (29750) : CLI : Server web/h1 is UP/READY (leaving forced maintenance).\n\
        torpor-req 1796227236.041 0 2 0 0 0 1 5 200 web h1 --\n\
        torpor-req 1796227236.040 0 0 0 0 0 1 1 200 web h1 --\n";

    #[test]
    fn parses_haproxy_lines() {
        let logs: Vec<RequestLog> = LINES
            .lines()
            .filter_map(parse_line)
            .map(Result::unwrap)
            .collect();
        assert_eq!(logs.len(), 3);
        assert!(!logs[0].served() && logs[0].answered_ms().is_none() && !logs[0].ok());
        assert_eq!(logs[0].status, 503);
        assert_eq!(logs[1].request_ms(), 1796227236043);
        assert_eq!(logs[1].answered_ms(), Some(1796227236048));
        assert_eq!(logs[1].sent_ms(), Some(1796227236043));
        assert_eq!(logs[0].sent_ms(), None);
        assert!(logs[1].ok());
        let first = earliest(&logs, "web", "h1", RequestLog::answered_ms).unwrap();
        assert_eq!(first.answered_ms(), Some(1796227236041));
        assert!(earliest(&logs, "web", "h2", RequestLog::answered_ms).is_none());
        assert_eq!(
            earliest(&logs, "web", "h1", RequestLog::sent_ms)
                .unwrap()
                .sent_ms(),
            Some(1796227236040)
        );
    }

    #[test]
    fn refuses_other_formats() {
        assert!(parse_line("torpor-reqx 1").is_none());
        for bad in [
            "torpor-req 1796227236.041 0 2 0 0 0 1 5 200 web h1",
            "torpor-req 1796227236 0 2 0 0 0 1 5 200 web h1 --",
            "torpor-req 1796227236.041 0 x 0 0 0 1 5 200 web h1 --",
            "torpor-req 1796227236.041 0 2 0 0 0 1 5 OK web h1 --",
        ] {
            assert!(parse_line(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_logs_every_request() {
        let c = router_config(Path::new("/x/h.sock"), &[Frontend::new("web", 8080)]);
        assert!(c.contains(&format!("log-format \"{LOG_FORMAT}\"")));
        assert!(c.contains("log stdout format raw"));
        assert!(c.contains("bind 127.0.0.1:8080") && c.contains("backend web"));
        assert!(c.contains("timeout queue 60s") && c.contains("option redispatch"));
        let a: std::net::SocketAddr = "127.0.0.2:80".parse().unwrap();
        assert_eq!(
            server_line("web", "h1", a, 50, 1),
            "add server web/h1 127.0.0.2:80 check inter 1s fall 2 rise 1 weight 50 maxconn 1"
        );
        assert!(!server_line("web", "h1", a, 50, 0).contains("maxconn"));
    }

    #[test]
    fn frontends_name_their_health_check_path() {
        assert_eq!(Frontend::parse("web=8080"), Ok(Frontend::new("web", 8080)));
        let tomcat = Frontend::parse("web=8080/app/?x=1").unwrap();
        assert_eq!(
            tomcat,
            Frontend {
                app: "web".into(),
                port: 8080,
                check: "/app/?x=1".into()
            }
        );
        let c = router_config(Path::new("/x/h.sock"), &[Frontend::new("a", 1), tomcat]);
        assert_eq!(
            c.lines()
                .filter(|l| l.contains("httpchk"))
                .collect::<Vec<_>>(),
            [
                "    option httpchk GET /",
                "    option httpchk GET /app/?x=1"
            ]
        );
        for bad in [
            "web",
            "web=",
            "web=x/",
            "b d=1",
            "web=80/a b",
            "web=80/\u{e9}",
            "web=70000",
        ] {
            assert!(Frontend::parse(bad).is_err(), "{bad}");
        }
    }
}
