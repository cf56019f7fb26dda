//! The kernel purge (an app's `purge_method = "kernel"`, a Stop's `{"purge": "kernel"}`):
//! stock Linux swapping an idle app out, the baseline of "demand paging". The app is frozen as
//! for every Stop; then its memory cgroup is reclaimed by the kernel alone
//! (`procswap::cgroup::Memcg::reclaim_all`: v2 `memory.reclaim`, v1 `memory.force_empty`):
//! no `MADV_PAGEOUT`, no layout of the loading set, no re-slot, no Start plan. The kernel
//! chooses the order and the swap slots. What it left is measured (procswap's inspection of
//! every process, the memcg's charge) and said in the answer, not hidden.
//!
//! `reclaim_all` clears the processes' referenced bits first (`clear_refs`), as the LRU's
//! aging does for an app idle long enough; without it pages several processes touched
//! (shared memory of forked children) are only moved to the active list. When its first pass
//! leaves pages (refaults the kernel put on the active list), it ages them with `MADV_COLD` and
//! reclaims once more (`Memcg::settle`): still no eviction of our choosing.

use super::{lock, now_unix, AppSlot, Controller, EventKind, PurgeError, StartTiming, StopError};
use procswap::cgroup::Memcg;
use procswap::InspectOptions;
use std::time::Instant;
use torpor_api::{PurgeMethod, PurgeSummary, StopRequest};

/// Reclaim passes at most: v1 `memory.force_empty` gives up after a number of passes without
/// progress and answers success with pages still charged (redis with 1 GiB, just used: 764 of
/// 1064 MiB left at load 15); the kernel purge writes it again while the charge falls.
const RECLAIM_PASSES: usize = 4;

/// Another reclaim pass after one that took the charge from `before` to `after` (bytes), with
/// `passes` done: while more than a MiB is left, the last pass made progress, and passes remain.
pub(super) fn reclaim_again(before: u64, after: u64, passes: usize) -> bool {
    after >= 1 << 20 && after < before && passes < RECLAIM_PASSES
}

/// The app's anonymous memory as pagemap shows it, summed over its processes (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct AnonFigures {
    pub resident: u64,
    pub resident_anon: u64,
    pub swapped: u64,
    /// Processes that could not be inspected (gone, or the inspection failed).
    pub missed: usize,
}

/// Inspect every process (procswap's own count: pagemap, present and swapped pages).
fn inspect_all(pids: &[i32]) -> AnonFigures {
    let mut f = AnonFigures::default();
    for &pid in pids {
        match procswap::inspect(pid, InspectOptions::default()) {
            Ok(i) => {
                f.resident += i.bytes(i.totals.present);
                f.resident_anon += i.bytes(i.totals.present_anon);
                f.swapped += i.bytes(i.totals.swapped);
            }
            Err(_) => f.missed += 1,
        }
    }
    f
}

/// What the kernel left in memory, in words, or `None` when nothing worth saying: the kernel's
/// own complaint, the charge left in the memcg, the resident anonymous memory left.
pub(super) fn left_note(
    incomplete: Option<&str>,
    memcg_after: Option<u64>,
    after: &AnonFigures,
) -> Option<String> {
    let mut parts: Vec<String> = incomplete.map(str::to_string).into_iter().collect();
    // Below a MiB is the page tables' and kernel stacks' noise of any frozen process.
    if let Some(b) = memcg_after.filter(|b| *b >= 1 << 20) {
        parts.push(format!(
            "the kernel left {} KiB charged to the memcg (resident {} KiB, of it anonymous {} KiB)",
            b >> 10,
            after.resident >> 10,
            after.resident_anon >> 10
        ));
    }
    if after.missed > 0 {
        parts.push(format!("{} process(es) not inspected", after.missed));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

impl Controller {
    /// The purge method of a Stop: the request's, else the app's configured one. A VM app is
    /// always purged in order.
    pub(super) fn stop_purge_method(
        &self,
        slot: &AppSlot,
        req: &StopRequest,
    ) -> Result<PurgeMethod, StopError> {
        match req.purge {
            Some(PurgeMethod::Kernel) if slot.cfg.is_vm() => Err(StopError::BadRequest(format!(
                "app {:?} is a vm app: its purge is ordered (\"purge\": \"kernel\" is for process apps)",
                slot.cfg.name
            ))),
            Some(m) => Ok(m),
            None => Ok(slot.cfg.purge_method),
        }
    }

    /// A loading-set Start without a plan after a kernel purge (which computes none): the
    /// answer says why it runs as `full`.
    pub(super) fn note_kernel_purge(&self, slot: &AppSlot, timing: &mut StartTiming) {
        let kernel = lock(&slot.st)
            .last_purge
            .as_ref()
            .is_some_and(|p| p.method == PurgeMethod::Kernel);
        if let Some(at) = timing.activation.as_mut().filter(|_| kernel) {
            at.notes.push(
                "the last purge was the kernel's (no loading set laid out, no plan computed)"
                    .into(),
            );
        }
    }

    /// Purge the (frozen) process app the stock way: the kernel reclaims its memory cgroup.
    /// Its Start plans are forgotten (the pages moved to slots the plans do not name); its
    /// loading sets stay (address lists, still true for an ordered purge later).
    pub(super) fn kernel_purge(
        &self,
        slot: &AppSlot,
        reserve: bool,
    ) -> Result<PurgeSummary, PurgeError> {
        let cgs = lock(&slot.st).cgroups.clone();
        let o = self.observe(&cgs);
        let pid = *o.pids.first().ok_or(PurgeError::NoProcess)?;
        let fail = |why: String| {
            let e = PurgeError::Kernel(why);
            let msg = e.to_string();
            self.event(Some(&slot.cfg.name), EventKind::PurgeFailed, msg.clone());
            self.set(slot, |r| r.last_error = Some(msg));
            e
        };
        if !o.frozen {
            return Err(fail("the app is not frozen".into()));
        }
        let memcg = match Memcg::of_pid(pid) {
            Ok(Some(m)) => m,
            Ok(None) => return Err(fail(format!("pid {pid} has no memory cgroup"))),
            Err(e) => return Err(fail(format!("pid {pid}: {e}"))),
        };
        let before = inspect_all(&o.pids);
        let t = Instant::now();
        let reclaim = || {
            memcg
                .reclaim_all()
                .map_err(|e| fail(format!("{}: {e}", memcg.dir().display())))
        };
        let mut rc = reclaim()?;
        let (mut passes, mut last) = (1, rc.usage_before);
        while reclaim_again(last, rc.usage_after, passes) {
            last = rc.usage_after;
            let again = reclaim()?;
            passes += 1;
            rc.usage_after = again.usage_after;
            rc.incomplete = again.incomplete.or(rc.incomplete);
            rc.settle = again.settle.or(rc.settle);
        }
        let seconds = t.elapsed().as_secs_f64();
        let after = inspect_all(&o.pids);
        let forgotten = self.forget_plans(slot, &o.pids);
        if forgotten > 0 {
            self.event(
                Some(&slot.cfg.name),
                EventKind::Activation,
                format!("kernel purge: {forgotten} Start plan(s) forgotten (the pages moved)"),
            );
        }
        let sum = PurgeSummary {
            memcg_before_bytes: Some(rc.usage_before),
            memcg_after_bytes: Some(rc.usage_after),
            freed_bytes: rc.usage_before.saturating_sub(rc.usage_after),
            resident_bytes: after.resident,
            resident_anon_bytes: after.resident_anon,
            swapped_bytes: after.swapped,
            seconds,
            reclaim_note: left_note(rc.incomplete.as_deref(), Some(rc.usage_after), &after)
                .map(|n| format!("{n} ({passes} reclaim pass(es))"))
                .into_iter()
                .chain(rc.settle.clone())
                .reduce(|a, b| format!("{a}; {b}")),
            method: PurgeMethod::Kernel,
            swap_moved_bytes: after.swapped.saturating_sub(before.swapped),
            unix_time: now_unix(),
            ..PurgeSummary::default()
        };
        self.purged(slot, reserve, &sum);
        Ok(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reclaim_again_while_it_helps() {
        const M: u64 = 1 << 20;
        assert!(reclaim_again(1064 * M, 764 * M, 1));
        assert!(!reclaim_again(764 * M, 764 * M, 2), "no progress");
        assert!(!reclaim_again(1064 * M, M - 1, 1), "done");
        assert!(
            !reclaim_again(900 * M, 500 * M, RECLAIM_PASSES),
            "enough passes"
        );
    }

    #[test]
    fn the_note_says_what_the_kernel_left() {
        let clean = AnonFigures::default();
        assert_eq!(left_note(None, Some(0), &clean), None);
        assert_eq!(left_note(None, Some(512 << 10), &clean), None);
        assert_eq!(left_note(None, None, &clean), None);
        let left = AnonFigures {
            resident: 3 << 20,
            resident_anon: 1 << 20,
            swapped: 9 << 20,
            missed: 0,
        };
        assert_eq!(
            left_note(None, Some(5 << 20), &left).as_deref(),
            Some(
                "the kernel left 5120 KiB charged to the memcg (resident 3072 KiB, of it \
                 anonymous 1024 KiB)"
            )
        );
        let n = left_note(Some("memory.reclaim: EAGAIN"), Some(0), &clean).unwrap();
        assert_eq!(n, "memory.reclaim: EAGAIN");
        let missed = AnonFigures {
            missed: 2,
            ..AnonFigures::default()
        };
        assert_eq!(
            left_note(None, Some(0), &missed).as_deref(),
            Some("2 process(es) not inspected")
        );
    }
}
