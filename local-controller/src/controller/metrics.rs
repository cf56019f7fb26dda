//! The Prometheus text exposition (`GET /metrics`).

use super::{lock, AppRecord, AppState, Controller, Observed, OverloadStatus};

impl Controller {
    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let help = |s: &mut String, name: &str, ty: &str, h: &str| {
            let _ = writeln!(s, "# HELP {name} {h}\n# TYPE {name} {ty}");
        };
        let recs: Vec<(String, AppRecord, Observed, OverloadStatus)> = self
            .apps
            .iter()
            .map(|(n, sl)| {
                let r = lock(&sl.st).clone();
                let o = self.observe(&r.cgroups);
                let ov = lock(&sl.mon).status.clone();
                (n.clone(), r, o, ov)
            })
            .collect();
        help(
            &mut s,
            "torpord_app_state",
            "gauge",
            "1 for the app's current state",
        );
        for (n, r, _, _) in &recs {
            for st in AppState::ALL {
                let _ = writeln!(
                    s,
                    "torpord_app_state{{app=\"{n}\",state=\"{}\"}} {}",
                    st.as_str(),
                    u8::from(r.state == st)
                );
            }
        }
        help(
            &mut s,
            "torpord_transitions_total",
            "counter",
            "Transitions by kind",
        );
        for (n, r, _, _) in &recs {
            let c = &r.counters;
            for (k, v) in [
                ("start", c.starts),
                ("cold_start", c.cold_starts),
                ("start_failed", c.start_failures),
                ("stop", c.stops),
                ("purge", c.purges),
                ("reserve_purge", c.reserve_purges),
                ("prefetch", c.prefetches),
                ("exit", c.exits),
            ] {
                let _ = writeln!(
                    s,
                    "torpord_transitions_total{{app=\"{n}\",transition=\"{k}\"}} {v}"
                );
            }
        }
        help(
            &mut s,
            "torpord_last_start_seconds",
            "gauge",
            "Phases of the last successful Start",
        );
        for (n, r, _, _) in &recs {
            if let Some(t) = &r.last_start {
                for (ph, v) in [
                    ("spawn", t.spawn_s),
                    ("prefetch", t.prefetch_s),
                    ("thaw", t.thaw_s),
                    ("probe", t.probe_s),
                    ("total", t.total_s),
                ] {
                    let _ = writeln!(
                        s,
                        "torpord_last_start_seconds{{app=\"{n}\",phase=\"{ph}\"}} {v}"
                    );
                }
            }
        }
        help(
            &mut s,
            "torpord_app_memory_bytes",
            "gauge",
            "App memory (resident, resident_anon, swapped) from /proc",
        );
        for (n, _, o, _) in &recs {
            for (k, v) in [
                ("resident", o.mem.rss),
                ("resident_anon", o.mem.rss_anon),
                ("swapped", o.mem.swap),
            ] {
                let _ = writeln!(
                    s,
                    "torpord_app_memory_bytes{{app=\"{n}\",kind=\"{k}\"}} {v}"
                );
            }
        }
        help(
            &mut s,
            "torpord_last_purge_freed_bytes",
            "gauge",
            "Memory cgroup bytes freed by the last purge",
        );
        for (n, r, _, _) in &recs {
            if let Some(p) = &r.last_purge {
                let _ = writeln!(
                    s,
                    "torpord_last_purge_freed_bytes{{app=\"{n}\"}} {}",
                    p.freed_bytes
                );
            }
        }
        help(
            &mut s,
            "torpord_paging_rate",
            "gauge",
            "Paging operations per second in the last sample interval",
        );
        help(
            &mut s,
            "torpord_overloaded",
            "gauge",
            "Overload flags (interval, sustained 8-of-12, hotspot 3-of-5 + AR(1))",
        );
        let host = self.host_overload();
        let mut ov_lines = |scope: &str, ov: &OverloadStatus| {
            let _ = writeln!(s, "torpord_paging_rate{{{scope}}} {}", ov.rate);
            for (k, v) in [
                ("interval", ov.overloaded),
                ("sustained", ov.sustained),
                ("hotspot", ov.hotspot),
            ] {
                let _ = writeln!(
                    s,
                    "torpord_overloaded{{{scope},kind=\"{k}\"}} {}",
                    u8::from(v)
                );
            }
        };
        ov_lines("scope=\"host\"", &host);
        for (n, _, _, ov) in &recs {
            ov_lines(&format!("scope=\"app\",app=\"{n}\""), ov);
        }
        if let Ok(m) = procswap::sys::meminfo() {
            let _ = writeln!(
                s,
                "# TYPE torpord_mem_available_bytes gauge\ntorpord_mem_available_bytes {}",
                m.mem_available
            );
        }
        let _ = writeln!(
            s,
            "# TYPE torpord_reserve_bytes gauge\ntorpord_reserve_bytes {}",
            self.cfg.reserve
        );
        let _ = writeln!(
            s,
            "# TYPE torpord_uptime_seconds gauge\ntorpord_uptime_seconds {:.3}",
            self.uptime().as_secs_f64()
        );
        s
    }
}
