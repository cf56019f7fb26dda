//! The loading set of a VM: which pages of the QEMU process — guest RAM and QEMU's own
//! memory — it touched from `cont` until the app answered and over a window after, in
//! first-touch order, kept across cycles with decay. It is the process loading set
//! ([`crate::loadingset`]: one recorder, one merge rule, one file format) over QEMU's private
//! anonymous memory: guest RAM is anonymous memory of QEMU, so a guest touch of a page on
//! swap is a host fault that makes the page present in QEMU's pagemap.
//!
//! What is VM-specific here:
//! - [`candidates`]: the pages to watch are QEMU's pages on swap after the purge, **minus the
//!   pages the guest reported free** (free wins: such a page is never recorded, so never
//!   fetched ahead; if the guest uses it again it comes back on demand).
//! - [`ordered`]: the set's pages as host ranges for a fetch or the purge's layout: QEMU's own
//!   memory first (nothing runs without it), then guest RAM by the guest's priority class
//!   (class 0 first), touch order kept within each; pages the guest reported free are left
//!   out. Guest maps only order and skip (docs/guest-maps.md): nothing is discarded.
//!
//! Runs are host page numbers (address / page size) of the QEMU process they were recorded
//! in: a set recorded for another QEMU process is dropped by [`LoadingSet::for_pid`].

use super::plan::Plan;
use crate::inspect::{classify, Pagemap};
use crate::loadingset::{Candidates, LoadingSet};
use crate::memkind::{normalize, MemKind, PageRun};
use crate::sys::Range;

/// `ranges` (in fetch order) cut into those outside and those inside `file_private` (sorted,
/// non-overlapping: [`super::file_private_ranges`]), each in the order given. The second are
/// copy-on-write pages: fetched by a fault ([`crate::plan::map_cow_ranges`]), not by
/// `MADV_WILLNEED`.
pub fn split_cow(ranges: &[Range], file_private: &[Range]) -> (Vec<Range>, Vec<Range>) {
    let (mut plain, mut cow) = (Vec::new(), Vec::new());
    for r in ranges {
        let mut cur = r.start;
        let first = file_private.partition_point(|f| f.end() <= r.start);
        for f in file_private[first..]
            .iter()
            .take_while(|f| f.start < r.end())
        {
            if f.start > cur {
                plain.push(Range {
                    start: cur,
                    len: f.start - cur,
                });
            }
            let end = f.end().min(r.end());
            let start = f.start.max(cur);
            cow.push(Range {
                start,
                len: end - start,
            });
            cur = end;
        }
        if cur < r.end() {
            plain.push(Range {
                start: cur,
                len: r.end() - cur,
            });
        }
    }
    (plain, cow)
}

/// Pages of `ranges` (host addresses of `pid`) that are on swap now, as page runs.
pub fn swapped_runs(pid: i32, ranges: &[Range], page_size: u64) -> crate::Result<Vec<PageRun>> {
    let mut pm = Pagemap::open(pid)?;
    let mut out: Vec<PageRun> = Vec::new();
    for r in ranges {
        pm.scan(r.start, r.end(), |addr, info| {
            if let (false, _, Some(_)) = classify(&info) {
                let p = addr / page_size;
                match out.last_mut() {
                    Some(l) if l.end() == p => l.count += 1,
                    _ => out.push(PageRun { first: p, count: 1 }),
                }
            }
        })?;
    }
    Ok(normalize(out))
}

fn to_runs(ranges: &[Range], page_size: u64) -> Vec<PageRun> {
    normalize(
        ranges
            .iter()
            .map(|r| PageRun {
                first: r.start / page_size,
                count: r.len / page_size,
            })
            .collect(),
    )
}

/// What a VM's recorder watches from `cont` on: `pid`'s pages on swap now in `guest` (guest
/// RAM) and `own` (QEMU's own memory), minus `free` (the pages the guest reported free); and
/// the file pages of `files` (QEMU's binary, libraries and other files, as resident before the
/// purge: [`crate::ResidencySnapshot::take_objects`]).
pub fn candidates(
    pid: i32,
    (guest, own, free): (&[Range], &[Range], &[Range]),
    files: Option<&crate::ResidencySnapshot>,
    page_size: u64,
) -> crate::Result<Candidates> {
    let mut all = guest.to_vec();
    all.extend_from_slice(own);
    let swapped = swapped_runs(pid, &all, page_size)?;
    let objects = files.map_or(&[][..], |f| &f.objects[..]);
    Ok(Candidates {
        anon: crate::memkind::subtract(&swapped, &to_runs(free, page_size)),
        objects: objects.iter().map(|o| o.object.clone()).collect(),
        object_runs: objects.iter().map(|o| o.resident.clone()).collect(),
    })
}

/// Which part of a set [`ordered`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Pages touched before the first response (what Start fetches before `cont`).
    First,
    /// The others (fetched after `cont`, in the background).
    Later,
    /// Both, `First` before `Later` (the purge's layout).
    All,
}

/// Sorted, non-overlapping ranges: does one contain `a`?
fn contains(sorted: &[Range], a: u64) -> bool {
    let i = sorted.partition_point(|r| r.start <= a);
    i > 0 && a < sorted[i - 1].end()
}

/// The set's anonymous pages of `part` as host ranges, in fetch order: QEMU's own memory
/// (pages outside guest RAM) first, then guest RAM by `plan`'s class, set order (most recent
/// cycle, then first touch) within each; pages `plan` calls free are left out.
pub fn ordered(set: &LoadingSet, plan: &Plan, part: Part) -> Vec<Range> {
    match part {
        Part::All => [
            ordered(set, plan, Part::First),
            ordered(set, plan, Part::Later),
        ]
        .concat(),
        Part::First | Part::Later => {
            let want = part == Part::First;
            ordered_runs(
                set,
                plan,
                set.runs
                    .iter()
                    .filter(|r| r.kind == MemKind::Anon && r.first_response == want)
                    .map(|r| PageRun {
                        first: r.first,
                        count: r.count,
                    }),
            )
        }
    }
}

/// See [`ordered`]: `runs` in set order, split by class and stably sorted by it.
fn ordered_runs(set: &LoadingSet, plan: &Plan, runs: impl Iterator<Item = PageRun>) -> Vec<Range> {
    let ps = set.page_size;
    let mut free = plan.free_ranges.clone();
    free.sort_unstable();
    let mut guest: Vec<Range> = plan
        .classes
        .iter()
        .flat_map(|c| c.ranges.iter().copied())
        .collect();
    guest.sort_unstable();
    // (key, range): key 0 = QEMU's own memory, 1 + class for guest RAM.
    let mut pieces: Vec<(u8, Range)> = Vec::new();
    for r in runs {
        for p in r.first..r.end() {
            let a = p * ps;
            if contains(&free, a) {
                continue;
            }
            let key = if contains(&guest, a) {
                plan.class_of(a).map_or(0, |c| c + 1)
            } else {
                0
            };
            match pieces.last_mut() {
                Some((k, l)) if *k == key && l.end() == a => l.len += ps,
                _ => pieces.push((key, Range { start: a, len: ps })),
            }
        }
    }
    pieces.sort_by_key(|(k, _)| *k);
    let mut out: Vec<Range> = Vec::with_capacity(pieces.len());
    for (_, r) in pieces {
        match out.last_mut() {
            Some(l) if l.end() == r.start => l.len += r.len,
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadingset::{anon_run as run, DecayPolicy, LsRun, RecordStats, Recording};
    use crate::vm::plan::ClassPlan;

    const PS: u64 = 4096;

    fn r(page: u64, count: u64) -> Range {
        Range {
            start: page * PS,
            len: count * PS,
        }
    }

    /// Guest RAM pages 100..200: 100..120 class 5, 120..140 free, 140..160 class 0,
    /// 160..200 class 8. Anything else is QEMU's own memory.
    fn plan() -> Plan {
        let mut classes: Vec<ClassPlan> = (0..10)
            .map(|c| ClassPlan {
                class: c,
                ..Default::default()
            })
            .collect();
        classes[5].ranges = vec![r(100, 20)];
        classes[0].ranges = vec![r(140, 20)];
        classes[8].ranges = vec![r(160, 40)];
        Plan {
            classes,
            free_ranges: vec![r(120, 20)],
            skipped_free_pages: 20,
            guest_pages: 100,
        }
    }

    fn set(touched: Vec<LsRun>) -> LoadingSet {
        let rec = Recording {
            pid: 1,
            comm: "qemu".into(),
            page_size: PS,
            objects: vec![],
            touched,
            observable: vec![],
            stats: RecordStats::default(),
        };
        LoadingSet::merge(None, &rec, &DecayPolicy::default())
    }

    #[test]
    fn fetch_order_is_qemu_then_class_then_touch_order_and_free_pages_never() {
        // Touch order: class 8 (190..192), a page run across class 5 / free / class 0
        // (115..145), QEMU's own page 10, class 5 (100..102); later: class 0 (150..152).
        let s = set(vec![
            run(190, 2, 1, true),
            run(115, 30, 2, true),
            run(10, 1, 3, true),
            run(100, 2, 4, true),
            run(150, 2, 5, false),
        ]);
        assert_eq!(
            ordered(&s, &plan(), Part::First),
            vec![r(10, 1), r(140, 5), r(115, 5), r(100, 2), r(190, 2)]
        );
        assert_eq!(ordered(&s, &plan(), Part::Later), vec![r(150, 2)]);
        let all = ordered(&s, &plan(), Part::All);
        assert_eq!(all.last(), Some(&r(150, 2)));
        let pages: u64 = all.iter().map(|x| x.len / PS).sum();
        // 2 + 30 − 20 free + 1 + 2 + 2.
        assert_eq!(pages, 17);
        assert!(all
            .iter()
            .all(|x| x.end() <= 120 * PS || x.start >= 140 * PS));
    }

    #[test]
    fn copy_on_write_pages_are_cut_out_in_order() {
        // File-private mappings at pages 10..20 and 30..40; ranges in fetch order.
        let fp = vec![r(10, 10), r(30, 10)];
        let ranges = vec![r(35, 10), r(0, 5), r(8, 25), r(12, 2)];
        let (plain, cow) = split_cow(&ranges, &fp);
        assert_eq!(plain, vec![r(40, 5), r(0, 5), r(8, 2), r(20, 10)]);
        assert_eq!(cow, vec![r(35, 5), r(10, 10), r(30, 3), r(12, 2)]);
        let total = |v: &[Range]| v.iter().map(|x| x.len).sum::<u64>();
        assert_eq!(
            total(&plain) + total(&cow),
            total(&ranges),
            "nothing lost or doubled"
        );
        assert_eq!(split_cow(&ranges, &[]), (ranges.clone(), vec![]));
    }

    #[test]
    fn candidates_are_swapped_pages_minus_free() {
        // This test process: a fresh mapping has no swapped page, so nothing is a candidate.
        let ps = crate::sys::page_size();
        let v = vec![0u8; 64 * ps as usize];
        let start = v.as_ptr() as u64 / ps * ps;
        let c = candidates(
            std::process::id() as i32,
            (
                &[Range {
                    start,
                    len: 32 * ps,
                }],
                &[],
                &[],
            ),
            None,
            ps,
        )
        .unwrap();
        assert!(c.anon.is_empty() && c.objects.is_empty());
    }
}
