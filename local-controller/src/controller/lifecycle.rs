//! An app's lifecycle: its states ([`AppState`]), the operation in flight ([`Op`]), the one
//! function that moves an app from one state to another ([`valid_transition`]), and adoption
//! after a restart of torpord ([`adopt`], a pure function of what the kernel shows and what
//! was persisted).
//!
//! ```text
//!            Start                    ready
//!  Stopped ─────────▶ Starting ─────────────────▶ Running ◀──┐
//!     ▲                │  ▲  (failed: left frozen)   │  ▲     │ Stop failed
//!     │ no process     │  │                    Stop  ▼  │     │
//!     └────────────────┘  │ Start          Stopping ───┘─────┘
//!                         │                    │ frozen
//!                  Standby ◀── purge ── Suspended
//! ```
//! The kernel is the truth: an app whose processes are gone is `Stopped` from any state, and
//! an app found thawed is `Running` from any state.

pub use torpor_api::{AppState, Op};

/// A transition the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition {from} -> {to}")]
pub struct InvalidTransition {
    pub from: AppState,
    pub to: AppState,
}

/// May an app go from `from` to `to`? (Staying in a state is always allowed.)
pub fn valid_transition(from: AppState, to: AppState) -> Result<(), InvalidTransition> {
    use AppState::*;
    let ok = from == to
        || match (from, to) {
            // The kernel is the truth: processes gone, or found running (thawed).
            (_, Stopped) | (_, Running) => true,
            // Start: a cold start or a resume of a frozen app.
            (Stopped | Suspended | Standby, Starting) => true,
            // A Start that did not reach "ready" leaves the app frozen (and purged).
            (Starting, Suspended | Standby) => true,
            // Stop: anything with processes that is not frozen already, or frozen apps whose
            // freezer says otherwise.
            (Stopped | Running | Suspended | Standby, Stopping) => true,
            (Stopping, Suspended) => true,
            // Purge.
            (Suspended, Standby) => true,
            _ => false,
        };
    if ok {
        Ok(())
    } else {
        Err(InvalidTransition { from, to })
    }
}

/// What the kernel shows of an app at adoption.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelView {
    /// Processes in the app's cgroup.
    pub processes: usize,
    /// Every freezer reports frozen.
    pub frozen: bool,
    /// Resident anonymous and swapped bytes of its processes.
    pub rss_anon: u64,
    pub swap: u64,
}

/// What an interrupted freeze or thaw (a freeze requested, not confirmed) is completed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingFreeze {
    Freeze,
    Thaw,
}

/// An interrupted Stop is completed (frozen); anything else is thawed.
pub fn complete_pending_freeze(in_flight: Option<Op>) -> PendingFreeze {
    if in_flight == Some(Op::Stop) {
        PendingFreeze::Freeze
    } else {
        PendingFreeze::Thaw
    }
}

/// The outcome of adopting one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    pub state: AppState,
    /// Said in an `adopt_warning` event (no process left of an app that was not stopped).
    pub warning: Option<String>,
    /// What the restart interrupted, recorded as the app's `last_error`.
    pub note: Option<String>,
    /// An interrupted Stop under `purge = "always"`: the purge is redone.
    pub redo_purge: bool,
}

/// Rebuild an app's state after a (re)start of torpord.
///
/// Rules (the kernel is the truth; the persisted record only says what was in flight):
/// - no process in the app's cgroup: `stopped` (a process that exists is always found through
///   its cgroup, whatever the pid in the record);
/// - not frozen: `running` (an interrupted Start had already thawed it; an interrupted Stop
///   had not frozen it yet);
/// - frozen: `standby` when most of its anonymous memory is on swap, else `suspended`. An
///   interrupted Start is NOT resumed: the app stays suspended/standby (its caller never got
///   "ready"; a new Start resumes it). An interrupted Stop is completed: with
///   `purge = "always"` the purge is redone (standby or suspended alike: the kill may have come
///   between page-out and the memcg reclaim, leaving pages in the swap cache).
///
/// `kernel` is observed after a pending freeze was completed (see
/// [`complete_pending_freeze`]).
pub fn adopt(
    persisted: AppState,
    in_flight: Option<Op>,
    kernel: &KernelView,
    purge_always: bool,
) -> Adoption {
    if kernel.processes == 0 {
        return Adoption {
            state: AppState::Stopped,
            warning: (persisted != AppState::Stopped)
                .then(|| format!("was {persisted} but no process is left in its cgroup")),
            note: None,
            redo_purge: false,
        };
    }
    let purged = kernel.swap > 0 && kernel.swap * 2 > kernel.swap + kernel.rss_anon;
    let state = if !kernel.frozen {
        AppState::Running
    } else if purged {
        AppState::Standby
    } else {
        AppState::Suspended
    };
    let note = match (in_flight, state) {
        (Some(Op::Start), AppState::Running) => Some(
            "a Start was interrupted by a torpord restart after the thaw: app is running"
                .to_string(),
        ),
        (Some(Op::Start), s) => Some(format!(
            "a Start was interrupted by a torpord restart before the thaw: app left {s} (send \
             Start again)"
        )),
        (Some(Op::Stop), AppState::Running) => Some(
            "a Stop was interrupted by a torpord restart before the freeze: app is running".into(),
        ),
        (Some(Op::Stop), s) => Some(format!(
            "a Stop was interrupted by a torpord restart: app is {s}"
        )),
        (None, _) => None,
    };
    Adoption {
        state,
        warning: None,
        note,
        redo_purge: kernel.frozen && in_flight == Some(Op::Stop) && purge_always,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AppState::*;

    #[test]
    fn transitions() {
        for s in AppState::ALL {
            assert_eq!(valid_transition(s, s), Ok(()), "{s} -> {s}");
            assert_eq!(valid_transition(s, Stopped), Ok(()), "{s} dies");
            assert_eq!(valid_transition(s, Running), Ok(()), "{s} found running");
        }
        for (from, to) in [
            (Stopped, Starting),
            (Standby, Starting),
            (Suspended, Starting),
            (Starting, Suspended),
            (Starting, Standby),
            (Running, Stopping),
            (Stopping, Suspended),
            (Suspended, Standby),
        ] {
            assert_eq!(valid_transition(from, to), Ok(()), "{from} -> {to}");
        }
        for (from, to) in [
            (Stopped, Suspended),
            (Stopped, Standby),
            (Running, Suspended),
            (Running, Standby),
            (Running, Starting),
            (Stopping, Standby),
            (Stopping, Starting),
            (Starting, Stopping),
            (Standby, Suspended),
        ] {
            assert_eq!(
                valid_transition(from, to),
                Err(InvalidTransition { from, to }),
                "{from} -> {to}"
            );
        }
    }

    fn kernel(processes: usize, frozen: bool, rss_anon: u64, swap: u64) -> KernelView {
        KernelView {
            processes,
            frozen,
            rss_anon,
            swap,
        }
    }

    #[test]
    fn adoption_of_a_vanished_app() {
        let a = adopt(Standby, None, &kernel(0, false, 0, 0), true);
        assert_eq!(a.state, Stopped);
        assert_eq!(
            a.warning.as_deref(),
            Some("was standby but no process is left in its cgroup")
        );
        assert!(!a.redo_purge && a.note.is_none());
        let a = adopt(Stopped, Some(Op::Start), &kernel(0, false, 0, 0), true);
        assert_eq!((a.state, a.warning, a.note), (Stopped, None, None));
    }

    #[test]
    fn adoption_by_freezer_and_swap() {
        let run = adopt(Stopped, None, &kernel(2, false, 100, 900), false);
        assert_eq!((run.state, run.note), (Running, None));
        let standby = adopt(Suspended, None, &kernel(1, true, 100, 900), false);
        assert_eq!(standby.state, Standby);
        let suspended = adopt(Standby, None, &kernel(1, true, 900, 100), false);
        assert_eq!(suspended.state, Suspended);
        // Nothing swapped: not purged.
        assert_eq!(
            adopt(Running, None, &kernel(1, true, 0, 0), false).state,
            Suspended
        );
    }

    #[test]
    fn adoption_of_interrupted_operations() {
        let a = adopt(Starting, Some(Op::Start), &kernel(1, false, 9, 0), true);
        assert_eq!(a.state, Running);
        assert!(a.note.unwrap().contains("after the thaw: app is running"));
        let a = adopt(Starting, Some(Op::Start), &kernel(1, true, 1, 9), true);
        assert_eq!(a.state, Standby);
        assert!(a
            .note
            .unwrap()
            .contains("before the thaw: app left standby"));
        assert!(!a.redo_purge, "an interrupted Start is not completed");
        let a = adopt(Stopping, Some(Op::Stop), &kernel(1, false, 9, 0), true);
        assert_eq!(a.state, Running);
        assert!(a
            .note
            .unwrap()
            .contains("before the freeze: app is running"));
        assert!(!a.redo_purge);
        let a = adopt(Stopping, Some(Op::Stop), &kernel(1, true, 9, 1), true);
        assert_eq!(a.state, Suspended);
        assert_eq!(
            a.note.as_deref(),
            Some("a Stop was interrupted by a torpord restart: app is suspended")
        );
        assert!(
            a.redo_purge,
            "an interrupted Stop is completed under purge = always"
        );
        let a = adopt(Stopping, Some(Op::Stop), &kernel(1, true, 9, 1), false);
        assert!(!a.redo_purge);
    }

    #[test]
    fn pending_freezes() {
        assert_eq!(
            complete_pending_freeze(Some(Op::Stop)),
            PendingFreeze::Freeze
        );
        assert_eq!(
            complete_pending_freeze(Some(Op::Start)),
            PendingFreeze::Thaw
        );
        assert_eq!(complete_pending_freeze(None), PendingFreeze::Thaw);
    }
}
