//! The Prometheus text exposition (`GET /metrics`): a sample of every app and of the host,
//! rendered by [`render`] (a pure function, tested without root).

use super::{lock, AppRecord, AppState, Controller, OverloadStatus, ProcMem};
use std::fmt::Write as _;

/// One app's figures at the moment of a scrape.
pub(super) struct AppSample {
    pub name: String,
    pub record: AppRecord,
    pub mem: ProcMem,
    pub overload: OverloadStatus,
}

/// The host's figures at the moment of a scrape.
pub(super) struct HostSample {
    pub overload: OverloadStatus,
    pub mem_available: Option<u64>,
    pub reserve: u64,
    pub uptime_s: f64,
}

impl Controller {
    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let apps: Vec<AppSample> = self
            .apps
            .iter()
            .map(|(n, sl)| {
                let record = lock(&sl.st).clone();
                let mem = self.observe(&record.cgroups).mem;
                let overload = lock(&sl.mon).status.clone();
                AppSample {
                    name: n.clone(),
                    record,
                    mem,
                    overload,
                }
            })
            .collect();
        let host = HostSample {
            overload: self.host_overload(),
            mem_available: procswap::sys::meminfo().ok().map(|m| m.mem_available),
            reserve: self.cfg.reserve,
            uptime_s: self.uptime().as_secs_f64(),
        };
        render(&apps, &host)
    }
}

fn help(s: &mut String, name: &str, ty: &str, h: &str) {
    let _ = writeln!(s, "# HELP {name} {h}\n# TYPE {name} {ty}");
}

/// The whole exposition.
pub(super) fn render(apps: &[AppSample], host: &HostSample) -> String {
    let mut s = String::new();
    states_and_transitions(&mut s, apps);
    starts_memory_purges(&mut s, apps);
    overload(&mut s, apps, &host.overload);
    if let Some(m) = host.mem_available {
        let _ = writeln!(
            s,
            "# TYPE torpord_mem_available_bytes gauge\ntorpord_mem_available_bytes {m}"
        );
    }
    let _ = writeln!(
        s,
        "# TYPE torpord_reserve_bytes gauge\ntorpord_reserve_bytes {}",
        host.reserve
    );
    let _ = writeln!(
        s,
        "# TYPE torpord_uptime_seconds gauge\ntorpord_uptime_seconds {:.3}",
        host.uptime_s
    );
    s
}

fn states_and_transitions(s: &mut String, apps: &[AppSample]) {
    help(
        s,
        "torpord_app_state",
        "gauge",
        "1 for the app's current state",
    );
    for a in apps {
        for st in AppState::ALL {
            let _ = writeln!(
                s,
                "torpord_app_state{{app=\"{}\",state=\"{}\"}} {}",
                a.name,
                st.as_str(),
                u8::from(a.record.state == st)
            );
        }
    }
    help(
        s,
        "torpord_transitions_total",
        "counter",
        "Transitions by kind",
    );
    for a in apps {
        let c = &a.record.counters;
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
                "torpord_transitions_total{{app=\"{}\",transition=\"{k}\"}} {v}",
                a.name
            );
        }
    }
}

fn starts_memory_purges(s: &mut String, apps: &[AppSample]) {
    help(
        s,
        "torpord_last_start_seconds",
        "gauge",
        "Phases of the last successful Start",
    );
    for a in apps {
        let Some(t) = &a.record.last_start else {
            continue;
        };
        for (ph, v) in [
            ("spawn", t.spawn_s),
            ("prefetch", t.prefetch_s),
            ("thaw", t.thaw_s),
            ("probe", t.probe_s),
            ("total", t.total_s),
        ] {
            let _ = writeln!(
                s,
                "torpord_last_start_seconds{{app=\"{}\",phase=\"{ph}\"}} {v}",
                a.name
            );
        }
    }
    help(
        s,
        "torpord_app_memory_bytes",
        "gauge",
        "App memory (resident, resident_anon, swapped) from /proc",
    );
    for a in apps {
        for (k, v) in [
            ("resident", a.mem.rss),
            ("resident_anon", a.mem.rss_anon),
            ("swapped", a.mem.swap),
        ] {
            let _ = writeln!(
                s,
                "torpord_app_memory_bytes{{app=\"{}\",kind=\"{k}\"}} {v}",
                a.name
            );
        }
    }
    help(
        s,
        "torpord_last_purge_freed_bytes",
        "gauge",
        "Memory cgroup bytes freed by the last purge",
    );
    for a in apps {
        if let Some(p) = &a.record.last_purge {
            let _ = writeln!(
                s,
                "torpord_last_purge_freed_bytes{{app=\"{}\"}} {}",
                a.name, p.freed_bytes
            );
        }
    }
}

fn overload(s: &mut String, apps: &[AppSample], host: &OverloadStatus) {
    help(
        s,
        "torpord_paging_rate",
        "gauge",
        "Paging operations per second in the last sample interval",
    );
    help(
        s,
        "torpord_overloaded",
        "gauge",
        "Overload flags (interval, sustained 8-of-12, hotspot 3-of-5 + AR(1))",
    );
    let mut lines = |scope: &str, ov: &OverloadStatus| {
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
    lines("scope=\"host\"", host);
    for a in apps {
        lines(&format!("scope=\"app\",app=\"{}\"", a.name), &a.overload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{AppCgroups, PurgeSummary, StartTiming};

    #[test]
    fn exposition() {
        let mut record = AppRecord::new(AppCgroups::default());
        record.state = AppState::Standby;
        record.counters.starts = 3;
        record.last_start = Some(StartTiming {
            total_s: 1.5,
            ..Default::default()
        });
        record.last_purge = Some(PurgeSummary {
            freed_bytes: 4096,
            ..Default::default()
        });
        let app = AppSample {
            name: "web".into(),
            record,
            mem: ProcMem {
                rss: 10,
                rss_anon: 5,
                swap: 7,
            },
            overload: OverloadStatus {
                rate: 2.0,
                hotspot: true,
                ..Default::default()
            },
        };
        let host = HostSample {
            overload: OverloadStatus::default(),
            mem_available: Some(1 << 20),
            reserve: 4096,
            uptime_s: 12.0,
        };
        let text = render(&[app], &host);
        for line in [
            "# TYPE torpord_app_state gauge",
            "torpord_app_state{app=\"web\",state=\"standby\"} 1",
            "torpord_app_state{app=\"web\",state=\"running\"} 0",
            "torpord_transitions_total{app=\"web\",transition=\"start\"} 3",
            "torpord_last_start_seconds{app=\"web\",phase=\"total\"} 1.5",
            "torpord_app_memory_bytes{app=\"web\",kind=\"swapped\"} 7",
            "torpord_last_purge_freed_bytes{app=\"web\"} 4096",
            "torpord_paging_rate{scope=\"host\"} 0",
            "torpord_overloaded{scope=\"app\",app=\"web\",kind=\"hotspot\"} 1",
            "torpord_mem_available_bytes 1048576",
            "torpord_reserve_bytes 4096",
            "torpord_uptime_seconds 12.000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        assert_eq!(text.lines().filter(|l| l.starts_with("# HELP")).count(), 7);
    }
}
