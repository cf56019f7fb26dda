//! Apps of many processes: a server and the children it forks (PostgreSQL's postmaster, its
//! auxiliary processes and one backend per connection). Every process has its own snapshot and
//! Start plan, but what they share — a shmem segment such as PostgreSQL's `shared_buffers`, a
//! data file several of them read — is one object: counted once for the app and fetched once.
//!
//! Measured with PostgreSQL 15 (shared_buffers 1 GB, six processes at Stop): per-process plans
//! named the 1 GB segment six times (an app of 1.1 GB accounted as 6.4 GB "rest", the background
//! fetch advising the same gigabyte six times over); and the backends that touch the segment after
//! a Start are forked after the thaw, so no loading-set recorder watches them and the segment
//! never enters a loading set — it came back at the lowest priority, after every private page.

use crate::memkind::{normalize, pages, subtract, ByKind, MemKind, ObjectKey, PageRun};
use crate::plan::{ActivationPlan, ObjectPart, PlanPart};
use crate::residency::ResidencySnapshot;
use std::collections::{BTreeMap, BTreeSet};

/// Resident pages of an app per kind, from its processes' snapshots: private anonymous pages
/// summed over the processes; shmem and file objects once per inode (the union of what every
/// process saw resident).
pub fn app_pages<'a>(snaps: impl IntoIterator<Item = &'a ResidencySnapshot>) -> ByKind<u64> {
    let mut by = ByKind::<u64>::default();
    let mut objs: BTreeMap<(MemKind, ObjectKey), Vec<PageRun>> = BTreeMap::new();
    for s in snaps {
        by.anon += pages(&s.anon);
        for o in &s.objects {
            objs.entry((o.object.kind, o.object.key))
                .or_default()
                .extend(o.resident.iter().copied());
        }
    }
    for ((kind, _), runs) in objs {
        *by.get_mut(kind) += pages(&normalize(runs));
    }
    by
}

/// Bytes per kind of [`app_pages`].
pub fn app_bytes<'a>(snaps: impl IntoIterator<Item = &'a ResidencySnapshot>) -> ByKind<u64> {
    let snaps: Vec<&ResidencySnapshot> = snaps.into_iter().collect();
    let ps = snaps
        .first()
        .map_or(crate::sys::page_size(), |s| s.page_size);
    let p = app_pages(snaps);
    ByKind {
        anon: p.anon * ps,
        shmem: p.shmem * ps,
        file: p.file * ps,
    }
}

/// What [`share_objects`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shared {
    /// Shmem objects mapped by two processes or more.
    pub shared_shmem_objects: usize,
    /// Pages of those moved from a plan's `rest` to its `loading_rest`.
    pub promoted_pages: u64,
    /// Object pages dropped because an earlier part (or process) fetches them already.
    pub duplicate_pages: ByKind<u64>,
}

/// The object pages of one part, in order, with the key of each object part.
fn object_parts<'a>(
    plan: &'a ActivationPlan,
    part: &'a PlanPart,
) -> impl Iterator<Item = (MemKind, ObjectKey, &'a ObjectPart)> + 'a {
    let key = move |op: &ObjectPart| plan.objects[op.object as usize].key;
    part.shmem
        .iter()
        .map(move |op| (MemKind::Shmem, key(op), op))
        .chain(part.file.iter().map(move |op| (MemKind::File, key(op), op)))
}

/// Shmem objects that at least two of the plans map.
fn shared_shmem(plans: &[ActivationPlan]) -> BTreeSet<ObjectKey> {
    let mut seen: BTreeMap<ObjectKey, usize> = BTreeMap::new();
    for p in plans {
        let keys: BTreeSet<ObjectKey> = p
            .objects
            .iter()
            .filter(|o| o.kind == MemKind::Shmem)
            .map(|o| o.key)
            .collect();
        for k in keys {
            *seen.entry(k).or_default() += 1;
        }
    }
    seen.into_iter()
        .filter(|(_, n)| *n >= 2)
        .map(|(k, _)| k)
        .collect()
}

/// Move the `rest` pages of `shared` shmem objects into the same plan's `loading_rest`.
fn promote(plan: &mut ActivationPlan, shared: &BTreeSet<ObjectKey>) -> u64 {
    let (keep, moved): (Vec<ObjectPart>, Vec<ObjectPart>) = std::mem::take(&mut plan.rest.shmem)
        .into_iter()
        .partition(|op| !shared.contains(&plan.objects[op.object as usize].key));
    plan.rest.shmem = keep;
    let mut n = 0;
    for op in moved {
        n += pages(&op.runs);
        match plan
            .loading_rest
            .shmem
            .iter_mut()
            .find(|l| l.object == op.object)
        {
            Some(l) => l.runs = normalize(l.runs.iter().chain(&op.runs).copied().collect()),
            None => plan.loading_rest.shmem.push(op),
        }
    }
    n
}

/// Make the plans of one app's processes fetch every object page once, in the earliest part
/// any process has it (parts in Start order: every plan's `first`, then every `loading_rest`,
/// then every `rest`; processes in the order given), and treat shmem mapped by two processes
/// or more as part of the loading set (its `rest` pages move to `loading_rest`): children forked
/// after the thaw touch it where no recorder watches. Private anonymous pages are untouched
/// (no two processes share them). Object parts left empty are removed; `objects` keep their
/// indexes.
pub fn share_objects(plans: &mut [ActivationPlan]) -> Shared {
    let shared = shared_shmem(plans);
    let mut out = Shared {
        shared_shmem_objects: shared.len(),
        ..Default::default()
    };
    if plans.len() > 1 {
        for p in plans.iter_mut() {
            out.promoted_pages += promote(p, &shared);
        }
    }
    let mut taken: BTreeMap<ObjectKey, Vec<PageRun>> = BTreeMap::new();
    for which in 0..3 {
        for p in plans.iter_mut() {
            let mut part = std::mem::take(match which {
                0 => &mut p.first,
                1 => &mut p.loading_rest,
                _ => &mut p.rest,
            });
            let mut kept: Vec<(MemKind, ObjectPart)> = Vec::new();
            for (kind, key, op) in object_parts(p, &part) {
                let had = taken.entry(key).or_default();
                let runs = subtract(&op.runs, had);
                *out.duplicate_pages.get_mut(kind) += pages(&op.runs) - pages(&runs);
                *had = normalize(had.iter().chain(&runs).copied().collect());
                if !runs.is_empty() {
                    kept.push((
                        kind,
                        ObjectPart {
                            object: op.object,
                            runs,
                        },
                    ));
                }
            }
            part.shmem.clear();
            part.file.clear();
            for (kind, op) in kept {
                match kind {
                    MemKind::Shmem => part.shmem.push(op),
                    _ => part.file.push(op),
                }
            }
            *match which {
                0 => &mut p.first,
                1 => &mut p.loading_rest,
                _ => &mut p.rest,
            } = part;
        }
    }
    out
}

/// Pages per kind of every part of the plans together (after [`share_objects`]: the app's).
pub fn plan_pages(plans: &[ActivationPlan]) -> ByKind<u64> {
    let mut by = ByKind::<u64>::default();
    for p in plans {
        for part in [&p.first, &p.loading_rest, &p.rest] {
            by += part.pages();
        }
    }
    by
}

/// The distinct shmem and file objects of the plans (by inode), with the pages planned of each.
pub fn plan_objects(plans: &[ActivationPlan]) -> BTreeMap<ObjectKey, (MemKind, u64)> {
    let mut m: BTreeMap<ObjectKey, (MemKind, u64)> = BTreeMap::new();
    for p in plans {
        for part in [&p.first, &p.loading_rest, &p.rest] {
            for (kind, key, op) in object_parts(p, part) {
                m.entry(key).or_insert((kind, 0)).1 += pages(&op.runs);
            }
        }
    }
    m
}

#[cfg(test)]
mod tests_app {
    use super::*;
    use crate::memkind::{Handle, MemObject};
    use crate::plan::SwapRun;
    use crate::residency::ObjectResidency;

    fn r(first: u64, count: u64) -> PageRun {
        PageRun { first, count }
    }

    fn obj(kind: MemKind, ino: u64) -> MemObject {
        MemObject {
            kind,
            key: ObjectKey { dev: 1, ino },
            path: format!("/o{ino}"),
            size: 1 << 30,
            mtime_sec: 0,
            mtime_nsec: 0,
            unheld_stops: 0,
            by_path: false,
            handles: vec![Handle::Fd { fd: 3 }],
            interest: vec![r(0, 1 << 18)],
        }
    }

    fn part(anon: u64, shmem: &[(u32, PageRun)], file: &[(u32, PageRun)]) -> PlanPart {
        let op = |v: &[(u32, PageRun)]| {
            v.iter()
                .map(|(o, run)| ObjectPart {
                    object: *o,
                    runs: vec![*run],
                })
                .collect()
        };
        PlanPart {
            anon: (0..anon)
                .map(|i| SwapRun {
                    addr: 0x1000 * (i + 1),
                    pages: 1,
                    swap_type: 0,
                    offset: i,
                })
                .collect(),
            anon_cow: vec![],
            shmem: op(shmem),
            file: op(file),
        }
    }

    fn plan(pid: i32, objects: Vec<MemObject>, parts: [PlanPart; 3]) -> ActivationPlan {
        let [first, loading_rest, rest] = parts;
        ActivationPlan {
            format_version: ActivationPlan::FORMAT_VERSION,
            pid,
            comm: "t".into(),
            page_size: 4096,
            computed_at: 0,
            objects,
            first,
            loading_rest,
            rest,
            notes: vec![],
        }
    }

    #[test]
    fn shared_objects_are_fetched_once_in_the_earliest_part() {
        // Object 10: shmem mapped by all three; object 20: a file two of them read; object 30:
        // shmem of the parent only.
        let (sh, f, own) = (
            obj(MemKind::Shmem, 10),
            obj(MemKind::File, 20),
            obj(MemKind::Shmem, 30),
        );
        let mut plans = vec![
            plan(
                1,
                vec![sh.clone(), f.clone(), own.clone()],
                [
                    part(2, &[], &[]),
                    part(1, &[], &[(1, r(0, 8))]),
                    part(5, &[(0, r(0, 1000)), (2, r(0, 7))], &[(1, r(0, 100))]),
                ],
            ),
            plan(
                2,
                vec![f.clone(), sh.clone()],
                [
                    part(1, &[(1, r(10, 5))], &[(0, r(90, 20))]),
                    part(0, &[], &[]),
                    part(3, &[(1, r(0, 1000))], &[]),
                ],
            ),
            plan(
                3,
                vec![sh.clone()],
                [
                    part(0, &[], &[]),
                    part(0, &[], &[]),
                    part(4, &[(0, r(500, 600))], &[]),
                ],
            ),
        ];
        let before = plan_pages(&plans);
        assert_eq!(before.shmem, 1000 + 7 + 5 + 1000 + 600);
        let s = share_objects(&mut plans);
        assert_eq!(s.shared_shmem_objects, 1);
        // Rest pages of the shared segment moved to loading_rest: 1000 + 1000 + 600.
        assert_eq!(s.promoted_pages, 2600);
        let after = plan_pages(&plans);
        // Anonymous pages untouched.
        assert_eq!(after.anon, before.anon);
        // The segment once: pages 0..1100 (5 before thaw in pid 2, the rest in pid 1's
        // loading_rest (0..1000 minus 10..15) and pid 3's (1000..1100)); the parent's own 7.
        assert_eq!(after.shmem, 1100 + 7);
        assert_eq!(plans[1].first.shmem[0].runs, vec![r(10, 5)]);
        assert_eq!(
            plans[0].loading_rest.shmem[0].runs,
            vec![r(0, 10), r(15, 985)]
        );
        assert!(plans[1].loading_rest.shmem.is_empty());
        assert_eq!(plans[2].loading_rest.shmem[0].runs, vec![r(1000, 100)]);
        // Not shared: stays in rest.
        assert_eq!(plans[0].rest.shmem.len(), 1);
        assert_eq!(plans[0].rest.shmem[0].object, 2);
        // The file: 90..110 before thaw (pid 2), 0..8 in loading_rest, 8..90 in rest (pid 1).
        assert_eq!(after.file, 110);
        assert_eq!(plans[0].rest.file[0].runs, vec![r(8, 82)]);
        assert_eq!(s.duplicate_pages.shmem, 5 + 1000 + 500);
        assert_eq!(s.duplicate_pages.file, 8 + 10);
        let objs = plan_objects(&plans);
        assert_eq!(objs.len(), 3);
        assert_eq!(objs[&sh.key], (MemKind::Shmem, 1100));
        // Idempotent.
        let again = plans.clone();
        assert_eq!(share_objects(&mut plans).duplicate_pages, ByKind::default());
        assert_eq!(plans, again);
    }

    #[test]
    fn one_process_keeps_its_plan() {
        let sh = obj(MemKind::Shmem, 10);
        let mut plans = vec![plan(
            1,
            vec![sh],
            [
                part(1, &[], &[]),
                part(0, &[], &[]),
                part(2, &[(0, r(0, 9))], &[]),
            ],
        )];
        let was = plans.clone();
        let s = share_objects(&mut plans);
        assert_eq!(s.promoted_pages, 0);
        assert_eq!(plans, was);
    }

    #[test]
    fn app_pages_count_shared_objects_once() {
        let snap = |pid: i32, anon: Vec<PageRun>, objs: Vec<(MemObject, Vec<PageRun>)>| {
            ResidencySnapshot {
                format_version: ResidencySnapshot::FORMAT_VERSION,
                pid,
                comm: "t".into(),
                taken_at: 0,
                page_size: 4096,
                anon,
                objects: objs
                    .into_iter()
                    .map(|(object, resident)| ObjectResidency { object, resident })
                    .collect(),
                skipped: vec![],
            }
        };
        let (sh, f) = (obj(MemKind::Shmem, 10), obj(MemKind::File, 20));
        let snaps = vec![
            snap(
                1,
                vec![r(0, 10)],
                vec![(sh.clone(), vec![r(0, 100)]), (f.clone(), vec![r(0, 4)])],
            ),
            snap(2, vec![r(0, 3)], vec![(sh.clone(), vec![r(50, 100)])]),
            snap(3, vec![], vec![(sh, vec![r(0, 100)]), (f, vec![r(2, 4)])]),
        ];
        assert_eq!(
            app_pages(&snaps),
            ByKind {
                anon: 13,
                shmem: 150,
                file: 6
            }
        );
        assert_eq!(app_bytes(&snaps).shmem, 150 * 4096);
    }
}
