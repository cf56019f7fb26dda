//! Events: what happened to the apps and the host, kept in a ring of the last 1024 (served
//! by `GET /v1/events`) and logged at the level of their kind.

use super::{lock, now_unix, Controller, Event, EventKind};
use std::sync::atomic::Ordering;
use tracing::{error, info, warn, Level};

/// The log level of an event kind.
pub fn level(kind: EventKind) -> Level {
    match kind {
        EventKind::Error
        | EventKind::StartFailed
        | EventKind::StopFailed
        | EventKind::PurgeFailed => Level::ERROR,
        EventKind::Overload
        | EventKind::Hotspot
        | EventKind::Reserve
        | EventKind::AdoptWarning
        | EventKind::Exited => Level::WARN,
        _ => Level::INFO,
    }
}

impl Controller {
    pub(super) fn event(&self, app: Option<&str>, kind: EventKind, message: String) {
        let app_s = app.unwrap_or("-");
        let kind_s = kind.as_str();
        match level(kind) {
            Level::ERROR => error!(app = app_s, kind = kind_s, "{message}"),
            Level::WARN => warn!(app = app_s, kind = kind_s, "{message}"),
            _ => info!(app = app_s, kind = kind_s, "{message}"),
        }
        let e = Event {
            seq: self.event_seq.fetch_add(1, Ordering::Relaxed) + 1,
            unix_time: now_unix(),
            app: app.map(str::to_string),
            kind,
            message,
        };
        let mut ev = lock(&self.events);
        if ev.len() >= 1024 {
            ev.pop_front();
        }
        ev.push_back(e);
    }

    /// Events with a sequence number above `since`.
    pub fn events(&self, since: u64) -> Vec<Event> {
        lock(&self.events)
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level(EventKind::StartFailed), Level::ERROR);
        assert_eq!(level(EventKind::AdoptWarning), Level::WARN);
        assert_eq!(level(EventKind::Start), Level::INFO);
        let errors = EventKind::ALL
            .iter()
            .filter(|k| level(**k) == Level::ERROR)
            .count();
        assert_eq!(errors, 4);
    }
}
