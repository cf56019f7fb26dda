//! Loading set: what the app touches from thaw until it has answered its first requests and
//! over a window after, in order of first touch, per memory kind — recorded with nothing but
//! `/proc/PID/pagemap` and `mincore(2)` (any kernel ≥ 5.10, no module) — and kept across
//! cycles with decay (seed 004's "snapshot prefetching", with a policy derived from an LRU
//! stack).
//!
//! ## How touches are seen
//! Start fetches pages into the swap cache / page cache **without mapping them** (`MADV_WILLNEED`
//! only: [`crate::plan::fetch_unmapped`]), thaws, and the recorder polls pagemap's present bit
//! over the candidate pages (those of the Stop-time [`ResidencySnapshot`] not mapped when
//! recording starts). A page becomes present only when the app touches it (a minor fault if it
//! was fetched, a major one if not), so the round in which it first shows present is its
//! touch order. Per kind:
//! - anon: pagemap of the snapshot's anonymous pages (exact per page: swap-cache pages are
//!   mapped one by one by `do_swap_page`);
//! - shmem and file *mappings*: pagemap of the VMAs over the object pages. Exact for shmem pages
//!   fetched into the swap cache (the kernel's fault-around only maps pages already in the
//!   shmem page cache). For file pages in the page cache the kernel's fault-around maps up to
//!   `fault_around_bytes` (64 KiB) of cached neighbours on one fault: the recorded set is then
//!   rounded to 16-page blocks (approximate; the knob is system-wide, not torpor's to change);
//! - files the app *reads* (`read(2)`, no mapping): `mincore` of our own mapping of the file;
//!   only pages that were not cached when recording started can be seen (they appear when the
//!   app reads them, with the kernel's read-ahead neighbours). Pages torpor itself fetches while
//!   recording must be announced with [`LoadingSetRecorder::note_fetched`].
//!
//! ## Across cycles
//! [`LoadingSet::merge`]: pages touched in this cycle get weight 1 (age 0) with this cycle's
//! order; a page of the previous set that was **observable** in this cycle (a candidate not
//! mapped at start) and was not touched decays (weight × `decay`, age + 1) and is dropped below
//! `min_weight`; an anonymous page of the part touched before a first response decays more
//! slowly (× `first_decay`) and **stays in that part** until it is dropped: what an app touches before
//! its first response varies from cycle to cycle (Tomcat: a background thread whose timer may
//! or may not fire in the window, compiler threads, stack depths; 3,100–3,400 pages a cycle of
//! which ~230 were not touched before the first response of the cycle before — each a major
//! fault after the thaw), so the part read before the thaw is the union of the last cycles'
//! (six with the defaults), not the last cycle's alone. Shmem and file pages leave that part at
//! their first missed cycle (Tomcat: 3–9 major faults on file pages per Start either way, and
//! keeping them six cycles grew the part by ~700 file pages). A page that could not be observed
//! (already mapped at thaw, e.g. after a full prefetch *with* a mapping pass) keeps its weight:
//! no evidence, no change. So a Stop after a
//! full prefetch never turns the loading set into the whole process: only what the app mapped
//! counts, never what was merely fetched.

use crate::error::{Error, Result};
use crate::inspect::{classify, Pagemap};
use crate::memkind::{
    self, intersect, normalize, pages, subtract, Handle, MemKind, MemObject, ObjectKey, ObjectView,
    PageRun,
};
use crate::residency::ResidencySnapshot;
use crate::sys;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// An object the loading set refers to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LsObject {
    pub kind: MemKind,
    pub key: ObjectKey,
    pub path: String,
}

/// A run of consecutive pages with the same history.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LsRun {
    pub kind: MemKind,
    /// Index into [`LoadingSet::objects`] (shmem, file); `None` for anon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<u32>,
    /// Anon: page number (address / page size). Objects: file page index.
    pub first: u64,
    pub count: u64,
    /// Round of first touch in the cycle it was last touched in (1 = first poll after start).
    pub round: u32,
    /// Cycles since it was last touched (0: the last recorded cycle).
    pub age: u32,
    pub weight: f32,
    /// Touched before the first response of that cycle (every touched page when the recorder
    /// was never told when the first response came).
    pub first_response: bool,
}

/// Test support: an anon run of `count` pages from page `first`, first touched in `round` of
/// the last cycle (age 0, weight 1).
#[cfg(test)]
pub(crate) fn anon_run(first: u64, count: u64, round: u32, first_response: bool) -> LsRun {
    LsRun {
        kind: MemKind::Anon,
        object: None,
        first,
        count,
        round,
        age: 0,
        weight: 1.0,
        first_response,
    }
}

impl LsRun {
    fn attrs_eq(&self, o: &LsRun) -> bool {
        self.kind == o.kind
            && self.object == o.object
            && self.round == o.round
            && self.age == o.age
            && self.weight == o.weight
            && self.first_response == o.first_response
    }
}

/// Figures of the last recording.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordStats {
    pub rounds: u32,
    pub duration_ms: u64,
    pub interval_us: u64,
    /// Candidate pages when recording started (snapshot pages), per kind.
    pub candidate_pages: memkind::ByKind<u64>,
    /// Of those, observable (not mapped/cached at start).
    pub observable_pages: memkind::ByKind<u64>,
    /// Touched pages seen, per kind.
    pub touched_pages: memkind::ByKind<u64>,
    pub first_response_round: Option<u32>,
    /// Time spent polling, total and the slowest round, microseconds.
    pub poll_us_total: u64,
    pub poll_us_max: u64,
    /// Pages whose pagemap entries one round read, at the first round.
    pub first_round_pages: u64,
    pub stop: String,
}

/// What the recorder saw in one cycle.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recording {
    pub pid: i32,
    pub comm: String,
    pub page_size: u64,
    pub objects: Vec<LsObject>,
    /// Touched runs, in order of first touch (age 0, weight 1).
    pub touched: Vec<LsRun>,
    /// Pages that could be observed (candidates not mapped/cached at start), per (kind, object).
    pub observable: Vec<(MemKind, Option<u32>, Vec<PageRun>)>,
    pub stats: RecordStats,
}

/// Decay policy of [`LoadingSet::merge`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecayPolicy {
    /// Weight multiplier per cycle an observable page was not touched.
    pub decay: f32,
    /// Pages whose weight falls below this are dropped.
    pub min_weight: f32,
    /// Weight multiplier per cycle for an anonymous page of the part touched before the first
    /// response (it keeps that flag until it is dropped; shmem and file pages lose it and decay
    /// by `decay`).
    pub first_decay: f32,
}

impl Default for DecayPolicy {
    fn default() -> Self {
        // 1 → 0.5 → 0.25 → dropped: a page untouched in three observed cycles leaves the set.
        // Touched before a first response: 1 → 0.75 → … → 0.237 → dropped, i.e. the part read
        // before the thaw is the union of the last six cycles' (Tomcat, 11 recorded cycles:
        // the next cycle's pages missing from it 234 → 63 a cycle on average, for 3,227 →
        // 4,020 pages read before the thaw; bench/results/activation/README.md, "Session 7").
        Self {
            decay: 0.5,
            min_weight: 0.2,
            first_decay: 0.75,
        }
    }
}

/// The loading set, merged over cycles. Persist with [`LoadingSet::save`] / [`LoadingSet::load`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadingSet {
    pub format_version: u32,
    pub pid: i32,
    pub comm: String,
    pub page_size: u64,
    /// Cycles merged into this set.
    pub cycles: u32,
    /// Seconds since the epoch of the last merge.
    pub recorded_at: u64,
    pub last: RecordStats,
    pub objects: Vec<LsObject>,
    /// In order: most recent cycle first (age), then first-touch round, then kind/object/page.
    pub runs: Vec<LsRun>,
}

/// What [`LoadingSet::load`] found.
#[derive(Debug)]
pub enum Loaded {
    Set(Box<LoadingSet>),
    /// No file.
    Missing,
    /// A file that is not a loading set of this version: ignored, with a note.
    Ignored(String),
}

type GroupKey = (MemKind, Option<ObjectKey>);

/// The `format_version` of a persisted JSON file (loading set, activation plan), read before
/// the whole file is parsed; `what` names the file in the note when it is not JSON at all.
pub(crate) fn format_version(bytes: &[u8], what: &str) -> std::result::Result<Option<u32>, String> {
    #[derive(serde::Deserialize)]
    struct V {
        format_version: Option<u32>,
    }
    serde_json::from_slice::<V>(bytes)
        .map(|v| v.format_version)
        .map_err(|e| format!("not {what} ({e}): ignored"))
}

impl LoadingSet {
    pub const FORMAT_VERSION: u32 = 1;

    /// Pages per kind.
    pub fn pages(&self) -> memkind::ByKind<u64> {
        let mut b = memkind::ByKind::default();
        for r in &self.runs {
            *b.get_mut(r.kind) += r.count;
        }
        b
    }

    /// The object a run refers to.
    pub fn object_of(&self, r: &LsRun) -> Option<&LsObject> {
        r.object.and_then(|i| self.objects.get(i as usize))
    }

    /// Merge this cycle's recording into the previous set (see the module doc).
    pub fn merge(prev: Option<&LoadingSet>, rec: &Recording, policy: &DecayPolicy) -> LoadingSet {
        // Objects: this cycle's, then the previous set's others.
        let mut objects = ObjectTable::new(rec.objects.clone());
        let mut runs: Vec<LsRun> = rec.touched.clone();
        if let Some(p) = prev {
            let touched = touched_groups(rec);
            let observable = observable_groups(rec);
            carry_over(p, &touched, &observable, policy, &mut objects, &mut runs);
        }
        let mut merged = coalesce(runs);
        let kept = renumber_objects(&mut merged, &objects.objects);
        LoadingSet {
            format_version: Self::FORMAT_VERSION,
            pid: rec.pid,
            comm: rec.comm.clone(),
            page_size: rec.page_size,
            cycles: prev.map(|p| p.cycles).unwrap_or(0) + 1,
            recorded_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            last: rec.stats.clone(),
            objects: kept,
            runs: merged,
        }
    }

    /// The set for `pid`: anonymous runs are addresses of the process they were recorded in, so
    /// they are dropped (with a note) when `pid` is another process; object runs are kept.
    pub fn for_pid(&self, pid: i32) -> (LoadingSet, Option<String>) {
        if pid == self.pid {
            return (self.clone(), None);
        }
        let mut s = self.clone();
        let n = s.pages().anon;
        s.runs.retain(|r| r.kind != MemKind::Anon);
        s.pid = pid;
        (s, Some(format!("loading set recorded for pid {}: its {n} anonymous pages do not apply to pid {pid}", self.pid)))
    }

    /// Page runs of a (kind, object) group, optionally only those touched before the first
    /// response (normalized).
    pub fn runs_of(
        &self,
        kind: MemKind,
        key: Option<ObjectKey>,
        first_response: Option<bool>,
    ) -> Vec<PageRun> {
        normalize(
            self.runs
                .iter()
                .filter(|r| r.kind == kind && r.object.map(|i| self.objects[i as usize].key) == key)
                .filter(|r| first_response.is_none_or(|f| r.first_response == f))
                .map(|r| PageRun {
                    first: r.first,
                    count: r.count,
                })
                .collect(),
        )
    }

    /// Write atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        let j =
            serde_json::to_vec(self).map_err(|e| Error::WorkingSet(format!("loading set: {e}")))?;
        std::fs::write(&tmp, j).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Read a saved set. Never an error for content: a file of another format version (or not a
    /// loading set at all) is [`Loaded::Ignored`] with a note saying why.
    pub fn load(path: &Path) -> Result<Loaded> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(e) => return Err(Error::io(path, e)),
        };
        Ok(Self::from_json(&bytes).map_or_else(
            |n| Loaded::Ignored(format!("{}: {n}", path.display())),
            |s| Loaded::Set(Box::new(s)),
        ))
    }

    /// Parse; a set of another format version is refused with a note (the caller ignores it).
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Self, String> {
        match format_version(bytes, "a loading set")? {
            Some(Self::FORMAT_VERSION) => {}
            Some(n) => {
                return Err(format!("loading set format {n}, this torpor reads {}: ignored (recorded anew)", Self::FORMAT_VERSION))
            }
            None => return Err("no format_version (not a loading set, or written before loading sets existed): ignored".into()),
        }
        serde_json::from_slice(bytes)
            .map_err(|e| format!("loading set format {}: {e}: ignored", Self::FORMAT_VERSION))
    }

    /// [`address_order`](Self::address_order) against `pid`'s current objects: the
    /// [`crate::PurgeOptions::layout_first`] of the next purge.
    pub fn layout_ranges(&self, pid: i32) -> Result<Vec<sys::Range>> {
        let (objs, _) = memkind::objects(pid)?;
        let (s, _) = self.for_pid(pid);
        Ok(s.address_order(&objs))
    }

    /// Address ranges, in touch order, of the set's pages in the target's **current** mappings:
    /// anon runs as they are; shmem and file runs through the VMAs that map them now (`objs`
    /// from [`memkind::objects`]). For the purge's loading-set-first layout. Every run touched
    /// before a first response (whatever its age) comes first: that is the part the next Start
    /// reads before the thaw ([`crate::ActivationPlan::first`]), so it must be one stretch of
    /// the layout, not split by a more recent cycle's later touches (runs are kept most recent
    /// cycle first).
    pub fn address_order(&self, objs: &[MemObject]) -> Vec<sys::Range> {
        let ps = self.page_size;
        let by_key: HashMap<(MemKind, ObjectKey), &MemObject> =
            objs.iter().map(|o| ((o.kind, o.key), o)).collect();
        let mut out: Vec<sys::Range> = Vec::new();
        let mut push = |start: u64, len: u64| match out.last_mut() {
            Some(l) if l.end() == start => l.len += len,
            _ => out.push(sys::Range { start, len }),
        };
        let (first, later): (Vec<&LsRun>, Vec<&LsRun>) =
            self.runs.iter().partition(|r| r.first_response);
        for r in first.into_iter().chain(later) {
            match r.object {
                None => push(r.first * ps, r.count * ps),
                Some(i) => {
                    let o = &self.objects[i as usize];
                    let Some(m) = by_key.get(&(o.kind, o.key)) else {
                        continue;
                    };
                    // The first mapping that covers each part of the run.
                    for h in &m.handles {
                        if let Handle::Mapped {
                            start, end, pgoff, ..
                        } = *h
                        {
                            let vma = PageRun {
                                first: pgoff,
                                count: (end - start) / ps,
                            };
                            for x in intersect(
                                &[PageRun {
                                    first: r.first,
                                    count: r.count,
                                }],
                                &[vma],
                            ) {
                                push(start + (x.first - pgoff) * ps, x.count * ps);
                            }
                            break;
                        }
                    }
                }
            }
        }
        out
    }
}

/// The (kind, object) group of a run.
fn group_of(objs: &[LsObject], r: &LsRun) -> GroupKey {
    (r.kind, r.object.map(|i| objs[i as usize].key))
}

/// This cycle's touched pages, per group (normalized).
fn touched_groups(rec: &Recording) -> HashMap<GroupKey, Vec<PageRun>> {
    let mut touched: HashMap<GroupKey, Vec<PageRun>> = HashMap::new();
    for r in &rec.touched {
        touched
            .entry(group_of(&rec.objects, r))
            .or_default()
            .push(PageRun {
                first: r.first,
                count: r.count,
            });
    }
    touched
        .into_iter()
        .map(|(k, v)| (k, normalize(v)))
        .collect()
}

/// This cycle's observable pages, per group (normalized).
fn observable_groups(rec: &Recording) -> HashMap<GroupKey, Vec<PageRun>> {
    rec.observable
        .iter()
        .map(|(kind, o, runs)| {
            (
                (*kind, o.map(|i| rec.objects[i as usize].key)),
                normalize(runs.clone()),
            )
        })
        .fold(HashMap::new(), |mut m, (k, v)| {
            let e: &mut Vec<PageRun> = m.entry(k).or_default();
            e.extend(v);
            *e = normalize(std::mem::take(e));
            m
        })
}

/// The objects of a merge, indexed by (kind, key).
struct ObjectTable {
    objects: Vec<LsObject>,
    index: HashMap<(MemKind, ObjectKey), u32>,
}

impl ObjectTable {
    fn new(objects: Vec<LsObject>) -> Self {
        let index = objects
            .iter()
            .enumerate()
            .map(|(i, o)| ((o.kind, o.key), i as u32))
            .collect();
        Self { objects, index }
    }

    /// The index of `o`, added if new.
    fn index_of(&mut self, o: &LsObject) -> u32 {
        let objects = &mut self.objects;
        *self.index.entry((o.kind, o.key)).or_insert_with(|| {
            objects.push(o.clone());
            (objects.len() - 1) as u32
        })
    }
}

/// The previous set's runs, minus what this cycle touched: observable and untouched pages
/// decay (dropped below `min_weight`), pages that could not be observed are kept unchanged.
fn carry_over(
    p: &LoadingSet,
    touched: &HashMap<GroupKey, Vec<PageRun>>,
    observable: &HashMap<GroupKey, Vec<PageRun>>,
    policy: &DecayPolicy,
    objects: &mut ObjectTable,
    runs: &mut Vec<LsRun>,
) {
    let empty: Vec<PageRun> = Vec::new();
    for r in &p.runs {
        let g = group_of(&p.objects, r);
        let t = touched.get(&g).unwrap_or(&empty);
        let obs = observable.get(&g).unwrap_or(&empty);
        let object = r.object.map(|i| objects.index_of(&p.objects[i as usize]));
        let rest = subtract_one(
            PageRun {
                first: r.first,
                count: r.count,
            },
            t,
        );
        // Observable and untouched: decays (more slowly, and staying in the part fetched
        // before the thaw, if it is an anonymous page touched before a first response: see the
        // module doc). Not observable: unchanged.
        let keep_first = r.first_response && r.kind == MemKind::Anon;
        let decayed = LsRun {
            age: r.age + 1,
            weight: r.weight
                * if keep_first {
                    policy.first_decay
                } else {
                    policy.decay
                },
            object,
            first_response: keep_first,
            ..*r
        };
        if decayed.weight >= policy.min_weight {
            for x in intersect(&rest, obs) {
                runs.push(LsRun {
                    first: x.first,
                    count: x.count,
                    ..decayed
                });
            }
        }
        for x in subtract(&rest, obs) {
            runs.push(LsRun {
                first: x.first,
                count: x.count,
                object,
                ..*r
            });
        }
    }
}

/// Runs in the set's order (age, round, kind, object, page), neighbours with the same history
/// joined.
fn coalesce(mut runs: Vec<LsRun>) -> Vec<LsRun> {
    let rank = |r: &LsRun| (r.age, r.round, r.kind, r.object, r.first);
    runs.sort_by_key(rank);
    let mut merged: Vec<LsRun> = Vec::with_capacity(runs.len());
    for r in runs {
        match merged.last_mut() {
            Some(l) if l.attrs_eq(&r) && l.first + l.count == r.first => l.count += r.count,
            _ => merged.push(r),
        }
    }
    merged
}

/// Drop objects no run refers to any more, renumbering the runs' references. Returns the
/// objects kept.
fn renumber_objects(merged: &mut [LsRun], objects: &[LsObject]) -> Vec<LsObject> {
    let mut used: Vec<Option<u32>> = vec![None; objects.len()];
    let mut kept: Vec<LsObject> = Vec::new();
    for r in merged.iter_mut() {
        if let Some(i) = r.object {
            let n = *used[i as usize].get_or_insert_with(|| {
                kept.push(objects[i as usize].clone());
                (kept.len() - 1) as u32
            });
            r.object = Some(n);
        }
    }
    kept
}

/// `[r] − list` for one run against a normalized list (binary search for the window).
fn subtract_one(r: PageRun, list: &[PageRun]) -> Vec<PageRun> {
    let i = list.partition_point(|x| x.end() <= r.first);
    let j = list.partition_point(|x| x.first < r.end());
    subtract(&[r], &list[i..j.max(i)])
}

// ---------------------------------------------------------------- recorder

/// When recording stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecorderOptions {
    /// Time between polls.
    pub interval: Duration,
    /// Twinkle's stop rule: stop after this many consecutive rounds that each saw fewer than
    /// `min_new_pages` new pages, or once such rounds have lasted `quiet_time` (two rounds at
    /// least), whichever comes first: a round over a large process takes milliseconds and its
    /// caller pauses a multiple of that after it, so a count of rounds alone is no time at
    /// all (PostgreSQL's 200 quiet rounds lasted seconds, each round reading pagemap over a
    /// gigabyte of shared memory for every one of its processes)...
    pub quiet_rounds: u32,
    pub quiet_time: Duration,
    pub min_new_pages: u64,
    /// ...but not before this much time has passed (e.g. the first response plus a window)...
    pub min_duration: Duration,
    /// ...and always after this much.
    pub max_duration: Duration,
    /// Watch files the app reads through file descriptors (mincore on our own mapping).
    pub files_read: bool,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        // 5 ms rounds; 1 s without a new page ends the recording; never more than 30 s.
        Self {
            interval: Duration::from_millis(5),
            quiet_rounds: 200,
            quiet_time: Duration::from_secs(1),
            min_new_pages: 1,
            min_duration: Duration::ZERO,
            max_duration: Duration::from_secs(30),
            files_read: true,
        }
    }
}

/// Pages to watch: what the app had resident at Stop.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    /// Anonymous page numbers (address / page size).
    pub anon: Vec<PageRun>,
    pub objects: Vec<MemObject>,
    /// Per object (index into `objects`): file page runs to watch.
    pub object_runs: Vec<Vec<PageRun>>,
}

impl Candidates {
    /// Every page resident in the Stop-time snapshot.
    pub fn from_snapshot(snap: &ResidencySnapshot) -> Self {
        Self {
            anon: snap.anon.clone(),
            objects: snap.objects.iter().map(|o| o.object.clone()).collect(),
            object_runs: snap.objects.iter().map(|o| o.resident.clone()).collect(),
        }
    }
}

impl Candidates {
    /// Every page a Start plan fetches (all three parts): what was resident at Stop and out
    /// after the purge. Smaller than [`Candidates::from_snapshot`] (pages that stayed resident,
    /// e.g. shared libraries, are not watched) and needs no snapshot at Start.
    pub fn from_plan(plan: &crate::plan::ActivationPlan) -> Self {
        let ps = plan.page_size;
        let parts = [&plan.first, &plan.loading_rest, &plan.rest];
        let anon = normalize(
            parts
                .iter()
                .flat_map(|p| p.anon.iter().chain(&p.anon_cow))
                .map(|r| r.page_run(ps))
                .collect(),
        );
        Self::with_objects(plan, parts, anon)
    }

    /// [`Candidates::from_plan`] for a recorder started *after* the plan's `first` part was
    /// fetched ([`LoadingSetRecorder::start_all_out`]): without that part's copy-on-write
    /// pages, which the fetch maps itself (`process_vm_readv`) — present, but not the app's
    /// touches. Every other candidate is out until the app maps it.
    pub fn from_plan_after_first(plan: &crate::plan::ActivationPlan) -> Self {
        let mut c = Self::from_plan(plan);
        let cow: Vec<PageRun> = plan
            .first
            .anon_cow
            .iter()
            .map(|r| r.page_run(plan.page_size))
            .collect();
        c.anon = subtract(&c.anon, &normalize(cow));
        c
    }

    /// The plan's shmem and file candidates (every part) with `anon`.
    fn with_objects(
        plan: &crate::plan::ActivationPlan,
        parts: [&crate::plan::PlanPart; 3],
        anon: Vec<PageRun>,
    ) -> Self {
        let mut object_runs: Vec<Vec<PageRun>> = vec![Vec::new(); plan.objects.len()];
        for p in parts {
            for op in p.shmem.iter().chain(&p.file) {
                object_runs[op.object as usize].extend(op.runs.iter().copied());
            }
        }
        Self {
            anon,
            objects: plan.objects.clone(),
            object_runs: object_runs.into_iter().map(normalize).collect(),
        }
    }
}

/// Address pages of object pages mapped by one VMA.
#[derive(Debug)]
struct MappedWatch {
    object: u32,
    vma_page: u64,
    pgoff: u64,
    /// Address page runs still unobserved.
    runs: Vec<PageRun>,
}

#[derive(Debug)]
struct FileWatch {
    object: u32,
    view: ObjectViewBox,
    /// File page runs still unobserved (not cached yet).
    runs: Vec<PageRun>,
}

struct ObjectViewBox(ObjectView);

impl std::fmt::Debug for ObjectViewBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectView({} pages)", self.0.pages())
    }
}

/// Result of one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    pub round: u32,
    pub new_pages: u64,
    pub poll_us: u64,
}

/// Records a loading set by polling (see the module doc). Start it right before the thaw.
pub struct LoadingSetRecorder {
    pid: i32,
    comm: String,
    ps: u64,
    pm: Pagemap,
    opts: RecorderOptions,
    objects: Vec<LsObject>,
    anon: Vec<PageRun>,
    mapped: Vec<MappedWatch>,
    files: Vec<FileWatch>,
    observable: Vec<(MemKind, Option<u32>, Vec<PageRun>)>,
    touched: Vec<LsRun>,
    round: u32,
    quiet: u32,
    /// When the current run of quiet rounds began (the end of the last round with new pages).
    quiet_since: Instant,
    t0: Instant,
    stats: RecordStats,
    exited: bool,
}

/// Whether `PAGEMAP_SCAN` is used (cleared the first time the kernel refuses it;
/// [`use_pagemap_scan`] forces the portable path, for comparison).
static USE_SCAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Use `PAGEMAP_SCAN` when the kernel has it (default), or always the portable pagemap read.
pub fn use_pagemap_scan(on: bool) {
    USE_SCAN.store(on, std::sync::atomic::Ordering::Relaxed);
}

impl std::fmt::Debug for LoadingSetRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadingSetRecorder")
            .field("pid", &self.pid)
            .field("round", &self.round)
            .field("anon_watch_pages", &pages(&self.anon))
            .field("mapped_watches", &self.mapped.len())
            .field("file_watches", &self.files)
            .finish()
    }
}

/// Runs at most this many pages apart are scanned with one `PAGEMAP_SCAN` (8 MiB of 4 KiB pages).
const SCAN_GAP_PAGES: u64 = 2048;

/// Spans covering sorted, non-overlapping `runs`: neighbours with a hole of at most `gap`
/// pages between them are joined.
fn scan_spans(runs: &[PageRun], gap: u64) -> Vec<PageRun> {
    let mut out: Vec<PageRun> = Vec::new();
    for r in runs {
        match out.last_mut() {
            Some(l) if r.first <= l.end() + gap => l.count = l.count.max(r.end() - l.first),
            _ => out.push(*r),
        }
    }
    out
}

/// Present pages among address-page runs (pagemap), as runs. Uses `PAGEMAP_SCAN` where the
/// kernel has it (≥ 6.7), else reads and decodes the pagemap entries.
///
/// Runs at most [`SCAN_GAP_PAGES`] apart are scanned as one span and the answer intersected
/// with the runs: a loading set of scattered pages (redis' random keys) is tens of thousands of
/// runs, and one system call per run made every poll cost ~150 ms of CPU (measured on a 1 GiB
/// redis); a span's page-table walk over the gaps costs far less than the calls it saves.
fn present_in(pm: &mut Pagemap, ps: u64, runs: &[PageRun]) -> Result<Vec<PageRun>> {
    let mut out: Vec<PageRun> = Vec::new();
    if USE_SCAN.load(std::sync::atomic::Ordering::Relaxed) {
        let mut ok = true;
        for r in &scan_spans(runs, SCAN_GAP_PAGES) {
            match pm.present_ranges(r.first * ps, r.end() * ps)? {
                Some(v) => out.extend(v.iter().map(|x| PageRun {
                    first: x.start / ps,
                    count: x.len / ps,
                })),
                None => {
                    USE_SCAN.store(false, std::sync::atomic::Ordering::Relaxed);
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return Ok(intersect(&normalize(out), runs));
        }
        out.clear();
    }
    for r in &scan_spans(runs, SCAN_GAP_PAGES) {
        pm.scan(r.first * ps, r.end() * ps, |addr, info| {
            if classify(&info).0 {
                let p = addr / ps;
                match out.last_mut() {
                    Some(l) if l.end() == p => l.count += 1,
                    _ => out.push(PageRun { first: p, count: 1 }),
                }
            }
        })?;
    }
    Ok(intersect(&out, runs))
}

/// How many pages of `runs` (address page numbers, in any order, not overlapping) `pm`'s
/// process has mapped now (pagemap's present bit; `PAGEMAP_SCAN` where the kernel has it).
/// torpord's background fetch asks it of the pages it is about to read, to tell an app that
/// faults *ahead of the fetch in the fetch's own order* (it waits for those reads anyway)
/// from one that faults elsewhere (its faults must not queue behind the fetch).
pub fn present_pages(pm: &mut Pagemap, ps: u64, runs: &[PageRun]) -> Result<u64> {
    let runs = normalize(runs.to_vec());
    Ok(present_in(pm, ps, &runs)?.iter().map(|r| r.count).sum())
}

/// Watch object `i`'s candidate pages (`runs`, file page indexes) through each of its mappings
/// (pagemap of the VMA's addresses; a page mapped twice is watched once): the watches go to
/// `mapped`. Returns the file pages some mapping covers, and those observable (not present
/// now; with `check` false every one, unread).
fn watch_mappings(
    pm: &mut Pagemap,
    ps: u64,
    (i, o): (u32, &MemObject),
    runs: &[PageRun],
    check: bool,
    mapped: &mut Vec<MappedWatch>,
) -> Result<(Vec<PageRun>, Vec<PageRun>)> {
    let mut seen_mapped: Vec<PageRun> = Vec::new();
    let mut obs: Vec<PageRun> = Vec::new();
    for h in &o.handles {
        let Handle::Mapped {
            start, end, pgoff, ..
        } = *h
        else {
            continue;
        };
        let vma = PageRun {
            first: pgoff,
            count: (end - start) / ps,
        };
        let file_pages = subtract(&intersect(runs, &[vma]), &seen_mapped);
        if file_pages.is_empty() {
            continue;
        }
        seen_mapped = normalize([seen_mapped, file_pages.clone()].concat());
        let vma_page = start / ps;
        let addr: Vec<PageRun> = file_pages
            .iter()
            .map(|r| PageRun {
                first: vma_page + r.first - pgoff,
                count: r.count,
            })
            .collect();
        let watch = if check {
            subtract(&addr, &present_in(pm, ps, &addr)?)
        } else {
            addr
        };
        obs.extend(watch.iter().map(|r| PageRun {
            first: r.first - vma_page + pgoff,
            count: r.count,
        }));
        mapped.push(MappedWatch {
            object: i,
            vma_page,
            pgoff,
            runs: watch,
        });
    }
    Ok((seen_mapped, obs))
}

/// Watch object `i`'s pages no mapping covers (`unmapped`) through `mincore` of our own view
/// of the file (pages the app reads): the watch goes to `files`. Returns the observable pages
/// (not cached now; with `check` false every one, unread); none when the file cannot be opened.
fn watch_reads(
    pid: i32,
    (i, o): (u32, &MemObject),
    unmapped: &[PageRun],
    check: bool,
    files: &mut Vec<FileWatch>,
) -> Vec<PageRun> {
    let Ok(f) = memkind::open_current(pid, o) else {
        return Vec::new();
    };
    let Ok(v) = ObjectView::new(f, None) else {
        return Vec::new();
    };
    let cached = if check {
        v.resident(unmapped).unwrap_or_default()
    } else {
        Vec::new()
    };
    let watch = subtract(unmapped, &normalize(cached));
    files.push(FileWatch {
        object: i,
        view: ObjectViewBox(v),
        runs: watch.clone(),
    });
    watch
}

impl LoadingSetRecorder {
    /// Start watching `cand` in `pid` (typically frozen, right before the thaw). Pages already
    /// mapped (or, for read files, cached) now are not observable and are left out.
    pub fn start(pid: i32, cand: &Candidates, opts: RecorderOptions) -> Result<Self> {
        Self::start_checked(pid, cand, opts, true)
    }

    /// Start watching `cand`, every one of which is known to be out (not mapped, not cached):
    /// the candidates of a plan computed after the purge ([`Candidates::from_plan_after_first`])
    /// of a process frozen since. No pagemap or `mincore` pass, so this can run *after* the
    /// thaw, off the Start's critical path: a page the app maps (or a file page it reads)
    /// before the first poll is still seen by that poll. A candidate that was in fact present
    /// would be recorded as touched at the first poll (never lost; at worst one page too many).
    pub fn start_all_out(pid: i32, cand: &Candidates, opts: RecorderOptions) -> Result<Self> {
        Self::start_checked(pid, cand, opts, false)
    }

    /// [`Self::start`] (`check`: leave out what is present now) or [`Self::start_all_out`].
    fn start_checked(
        pid: i32,
        cand: &Candidates,
        opts: RecorderOptions,
        check: bool,
    ) -> Result<Self> {
        let t = crate::target::Target::open(pid, "loading-set recording")?;
        let ps = sys::page_size();
        let mut pm = Pagemap::open(pid)?;
        let mut stats = RecordStats {
            interval_us: opts.interval.as_micros() as u64,
            ..Default::default()
        };
        let objects: Vec<LsObject> = cand
            .objects
            .iter()
            .map(|o| LsObject {
                kind: o.kind,
                key: o.key,
                path: o.path.clone(),
            })
            .collect();
        let mut observable = Vec::new();
        // Anon.
        let anon_c = normalize(cand.anon.clone());
        stats.candidate_pages.anon = pages(&anon_c);
        let anon = if check {
            subtract(&anon_c, &present_in(&mut pm, ps, &anon_c)?)
        } else {
            anon_c
        };
        stats.observable_pages.anon = pages(&anon);
        observable.push((MemKind::Anon, None, anon.clone()));
        // Objects: through their mappings, and (read files) through mincore.
        let mut mapped = Vec::new();
        let mut files = Vec::new();
        for (i, (o, runs)) in cand.objects.iter().zip(&cand.object_runs).enumerate() {
            let runs = normalize(runs.clone());
            *stats.candidate_pages.get_mut(o.kind) += pages(&runs);
            let (seen_mapped, mut obs) =
                watch_mappings(&mut pm, ps, (i as u32, o), &runs, check, &mut mapped)?;
            let unmapped = subtract(&runs, &seen_mapped);
            if opts.files_read
                && !unmapped.is_empty()
                && o.handles.iter().any(|h| matches!(h, Handle::Fd { .. }))
            {
                obs.extend(watch_reads(
                    pid,
                    (i as u32, o),
                    &unmapped,
                    check,
                    &mut files,
                ));
            }
            let obs = normalize(obs);
            *stats.observable_pages.get_mut(o.kind) += pages(&obs);
            observable.push((o.kind, Some(i as u32), obs));
        }
        stats.first_round_pages = pages(&anon) + mapped.iter().map(|m| pages(&m.runs)).sum::<u64>();
        Ok(Self {
            pid,
            comm: t.comm().to_string(),
            ps,
            pm,
            opts,
            objects,
            anon,
            mapped,
            files,
            observable,
            touched: Vec::new(),
            round: 0,
            quiet: 0,
            quiet_since: Instant::now(),
            t0: Instant::now(),
            stats,
            exited: false,
        })
    }

    fn touch(&mut self, kind: MemKind, object: Option<u32>, runs: &[PageRun]) -> u64 {
        let fr = self.stats.first_response_round.is_none();
        for r in runs {
            self.touched.push(LsRun {
                kind,
                object,
                first: r.first,
                count: r.count,
                round: self.round,
                age: 0,
                weight: 1.0,
                first_response: fr,
            });
        }
        let n = pages(runs);
        *self.stats.touched_pages.get_mut(kind) += n;
        n
    }

    /// One round: read pagemap over the unobserved pages (and mincore of read files); pages
    /// seen for the first time are recorded with this round number.
    pub fn poll(&mut self) -> Result<Poll> {
        let t = Instant::now();
        self.round += 1;
        if self.round == 1 {
            // Quiet time counts from the first look, not from when the recorder was made
            // (its caller waits for the first response before polling).
            self.quiet_since = t;
        }
        let mut new = 0;
        let res: Result<()> = (|| {
            let hit = present_in(&mut self.pm, self.ps, &self.anon)?;
            if !hit.is_empty() {
                self.anon = subtract(&self.anon, &hit);
                new += self.touch(MemKind::Anon, None, &hit);
            }
            for i in 0..self.mapped.len() {
                if self.mapped[i].runs.is_empty() {
                    continue;
                }
                let hit = present_in(&mut self.pm, self.ps, &self.mapped[i].runs)?;
                if hit.is_empty() {
                    continue;
                }
                let m = &mut self.mapped[i];
                m.runs = subtract(&m.runs, &hit);
                let (obj, vp, pg) = (m.object, m.vma_page, m.pgoff);
                let kind = self.objects[obj as usize].kind;
                let file_runs: Vec<PageRun> = hit
                    .iter()
                    .map(|r| PageRun {
                        first: r.first - vp + pg,
                        count: r.count,
                    })
                    .collect();
                new += self.touch(kind, Some(obj), &file_runs);
            }
            for i in 0..self.files.len() {
                if self.files[i].runs.is_empty() {
                    continue;
                }
                let f = &self.files[i];
                let Ok(hit) = f.view.0.resident(&f.runs) else {
                    continue;
                };
                let hit = normalize(hit);
                if hit.is_empty() {
                    continue;
                }
                let obj = f.object;
                self.files[i].runs = subtract(&self.files[i].runs, &hit);
                let kind = self.objects[obj as usize].kind;
                new += self.touch(kind, Some(obj), &hit);
            }
            Ok(())
        })();
        if let Err(e) = res {
            match e {
                Error::TargetExited { .. } | Error::NoSuchProcess(_) => self.exited = true,
                e => return Err(e),
            }
        }
        let us = t.elapsed().as_micros() as u64;
        self.stats.poll_us_total += us;
        self.stats.poll_us_max = self.stats.poll_us_max.max(us);
        if new < self.opts.min_new_pages {
            self.quiet += 1;
        } else {
            self.quiet = 0;
            self.quiet_since = Instant::now();
        }
        Ok(Poll {
            round: self.round,
            new_pages: new,
            poll_us: us,
        })
    }

    /// The first response has been answered: later touches are not `first_response`.
    pub fn mark_first_response(&mut self) {
        if self.stats.first_response_round.is_none() {
            self.stats.first_response_round = Some(self.round);
        }
    }

    /// File pages torpor is about to fetch itself (e.g. the background part of a Start): they
    /// will appear in the page cache without the app, so read-file watches stop looking at them.
    /// Anonymous pages (page numbers: address / page size) that the caller is about to map into
    /// the target itself (copy-on-write pages of private file mappings, read by
    /// `process_vm_readv`): not watched from now on, and not observable this cycle (neither
    /// touched nor decayed), since pagemap cannot tell our fault from the app's. Call it before
    /// mapping them, never between a poll's start and its end.
    pub fn note_mapped_by_us(&mut self, pages: &[PageRun]) {
        let pages = normalize(pages.to_vec());
        self.anon = subtract(&self.anon, &pages);
        for (kind, _, obs) in self.observable.iter_mut() {
            if *kind == MemKind::Anon {
                *obs = subtract(obs, &pages);
            }
        }
    }

    pub fn note_fetched(&mut self, key: ObjectKey, runs: &[PageRun]) {
        let runs = normalize(runs.to_vec());
        for f in self.files.iter_mut() {
            if self.objects[f.object as usize].key == key {
                f.runs = subtract(&f.runs, &runs);
            }
        }
        for (kind, o, obs) in self.observable.iter_mut() {
            if *kind != MemKind::Anon && o.is_some_and(|i| self.objects[i as usize].key == key) {
                // Still observable through mappings; only the read-file watch is blind now.
                let mapped: Vec<PageRun> = self
                    .mapped
                    .iter()
                    .filter(|m| Some(m.object) == *o)
                    .flat_map(|m| {
                        m.runs.iter().map(move |r| PageRun {
                            first: r.first - m.vma_page + m.pgoff,
                            count: r.count,
                        })
                    })
                    .collect();
                let blind = subtract(&runs, &normalize(mapped));
                *obs = subtract(obs, &blind);
            }
        }
    }

    /// [`note_fetched`](Self::note_fetched) for every file and shmem object of a plan part.
    pub fn note_fetched_part(
        &mut self,
        plan: &crate::plan::ActivationPlan,
        part: &crate::plan::PlanPart,
    ) {
        for op in part.shmem.iter().chain(&part.file) {
            self.note_fetched(plan.objects[op.object as usize].key, &op.runs);
        }
    }

    /// Whether the stop rule says to stop (or the target exited).
    pub fn should_stop(&self) -> bool {
        let el = self.t0.elapsed();
        self.exited
            || el >= self.opts.max_duration
            || (el >= self.opts.min_duration && self.quiet_enough())
            || (self.anon.is_empty()
                && self.mapped.iter().all(|m| m.runs.is_empty())
                && self.files.iter().all(|f| f.runs.is_empty()))
    }

    pub fn round(&self) -> u32 {
        self.round
    }

    /// The process recorded.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Twinkle's stop rule ([`RecorderOptions::quiet_rounds`], [`RecorderOptions::quiet_time`]).
    fn quiet_enough(&self) -> bool {
        self.quiet >= self.opts.quiet_rounds
            || (self.quiet >= 2 && self.quiet_since.elapsed() >= self.opts.quiet_time)
    }

    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Poll every `interval` until the stop rule fires; `stop` is checked between rounds (set
    /// it to end early, e.g. when the app is stopped again).
    pub fn run(&mut self, stop: &std::sync::atomic::AtomicBool) -> Result<()> {
        while !self.should_stop() && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let next = Instant::now() + self.opts.interval;
            self.poll()?;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        Ok(())
    }

    /// End the recording.
    pub fn finish(mut self) -> Recording {
        let el = self.t0.elapsed();
        self.stats.rounds = self.round;
        self.stats.duration_ms = el.as_millis() as u64;
        self.stats.stop = if self.exited {
            "target exited".into()
        } else if el >= self.opts.max_duration {
            "max duration".into()
        } else if self.quiet_enough() {
            format!(
                "{} quiet rounds in {:.2} s",
                self.quiet,
                self.quiet_since.elapsed().as_secs_f64()
            )
        } else if self.anon.is_empty() && self.mapped.iter().all(|m| m.runs.is_empty()) {
            "every candidate touched".into()
        } else {
            "stopped by caller".into()
        };
        // Group each round's runs by kind/object/page (they were pushed in scan order).
        let rank = |r: &LsRun| (r.round, r.kind, r.object, r.first);
        self.touched.sort_by_key(rank);
        Recording {
            pid: self.pid,
            comm: self.comm,
            page_size: self.ps,
            objects: self.objects,
            touched: self.touched,
            observable: self.observable,
            stats: self.stats,
        }
    }
}

#[cfg(test)]
mod tests_loadingset {
    use super::*;

    #[test]
    fn scan_spans_join_only_close_runs() {
        let r = |first, count| PageRun { first, count };
        let runs = [r(10, 2), r(13, 1), r(20, 5), r(100, 1)];
        assert_eq!(
            scan_spans(&runs, 0),
            vec![r(10, 2), r(13, 1), r(20, 5), r(100, 1)]
        );
        assert_eq!(scan_spans(&runs, 1), vec![r(10, 4), r(20, 5), r(100, 1)]);
        assert_eq!(scan_spans(&runs, 74), vec![r(10, 15), r(100, 1)]);
        assert_eq!(scan_spans(&runs, 75), vec![r(10, 91)]);
        assert!(scan_spans(&[], 5).is_empty());
    }

    /// Both pagemap paths answer exactly the present pages *among the runs asked*, although
    /// they scan whole spans: present pages in the gaps between runs are not reported.
    #[test]
    fn present_in_reports_only_pages_of_the_runs() {
        let ps = sys::page_size();
        let n = 64usize;
        // SAFETY: a fresh private anonymous mapping of n pages, unmapped below; nothing else
        // refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n * ps as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let touched = [0usize, 1, 5, 6, 7, 20, 40, 63];
        for &i in &touched {
            // SAFETY: page i of the mapping above (i < n), writable.
            unsafe { *(base as *mut u8).add(i * ps as usize) = 1 };
        }
        let p0 = base as u64 / ps;
        let r = |first: u64, count| PageRun {
            first: p0 + first,
            count,
        };
        // Runs leave out touched pages 0, 7 and 40 (in the gaps, or cut off a run's edge).
        let runs = [r(1, 5), r(8, 20), r(41, 23)];
        let want = vec![r(1, 1), r(5, 1), r(20, 1), r(63, 1)];
        let mut pm = Pagemap::open(std::process::id() as i32).unwrap();
        for scan in [true, false] {
            use_pagemap_scan(scan);
            assert_eq!(
                present_in(&mut pm, ps, &runs).unwrap(),
                want,
                "PAGEMAP_SCAN {scan}"
            );
            // The count, for runs in any order.
            let unordered = [r(41, 23), r(1, 5), r(8, 20)];
            assert_eq!(present_pages(&mut pm, ps, &unordered).unwrap(), 4);
            assert_eq!(present_pages(&mut pm, ps, &[r(8, 12)]).unwrap(), 0);
        }
        use_pagemap_scan(true);
        // SAFETY: unmapping the mapping made above, no longer used.
        unsafe { libc::munmap(base, n * ps as usize) };
    }

    /// `start` leaves out what is present when it starts; `start_all_out` watches every
    /// candidate, so a page mapped before it started (the app's first touches, when it is
    /// started after the thaw) is recorded by its first poll. The target is a forked child
    /// (a recorder refuses its own process): it inherits pages 0 and 3 mapped, and maps page
    /// 5 when told to, after both recorders started.
    #[test]
    fn start_all_out_records_pages_mapped_before_it() {
        use std::os::fd::AsRawFd;
        let ps = sys::page_size();
        let m = sys::AnonMapping::new(8);
        let page = |i: u64| (m.base as u64 + i * ps) as *mut u8;
        // SAFETY: pages 0 and 3 of the writable mapping above, alive until the end of the test.
        unsafe { (*page(0), *page(3)) = (1, 1) };
        let (go_r, go_w) = nix::unistd::pipe().unwrap();
        let (done_r, done_w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only reads and writes its pipes, writes one byte of the mapping
        // and pauses (no allocation, no locks) until it is killed.
        let child = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let mut b = [0u8; 1];
                let _ = nix::unistd::read(go_r.as_raw_fd(), &mut b);
                // SAFETY: page 5 of the child's copy of the mapping.
                unsafe { std::ptr::write_volatile(page(5), 1) };
                let _ = nix::unistd::write(&done_w, b"k");
                loop {
                    nix::unistd::pause();
                }
            }
            nix::unistd::ForkResult::Parent { child } => child,
        };
        let p0 = m.base as u64 / ps;
        let cand = anon_candidates(p0, 8);
        let opts = RecorderOptions::default();
        let started = LoadingSetRecorder::start(child.as_raw(), &cand, opts).and_then(|c| {
            LoadingSetRecorder::start_all_out(child.as_raw(), &cand, opts).map(|a| (c, a))
        });
        nix::unistd::write(&go_w, b"g").unwrap();
        let mut b = [0u8; 1];
        nix::unistd::read(done_r.as_raw_fd(), &mut b).unwrap();
        let polled = started.and_then(|(mut c, mut a)| {
            Ok((
                c.poll()?.new_pages,
                a.poll()?.new_pages,
                c.finish(),
                a.finish(),
            ))
        });
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child, None);
        let (n_checked, n_all_out, checked, all_out) = polled.unwrap();
        assert_eq!((n_checked, n_all_out), (1, 3));
        let pages = |r: Recording| -> Vec<(u64, u64)> {
            r.touched.iter().map(|t| (t.first - p0, t.count)).collect()
        };
        assert_eq!(pages(all_out), vec![(0, 1), (3, 1), (5, 1)]);
        assert_eq!(pages(checked), vec![(5, 1)]);
    }

    /// Pages a caller maps into the target itself (announced with `note_mapped_by_us` before it
    /// reads them with `process_vm_readv`) are neither touched nor observable; a page it maps
    /// unannounced looks like the app's touch (why the announcement is needed).
    #[test]
    fn pages_mapped_by_us_are_not_the_apps_touches() {
        let ps = sys::page_size();
        let m = sys::AnonMapping::new(4);
        let child = sys::PausedChild::fork();
        let p0 = m.base as u64 / ps;
        let cand = anon_candidates(p0, 4);
        let got = LoadingSetRecorder::start_all_out(child.pid(), &cand, Default::default())
            .and_then(|mut r| {
                r.note_mapped_by_us(&[PageRun {
                    first: p0 + 1,
                    count: 1,
                }]);
                // Our reads of pages 1 and 2 fault them into the child (the zero page).
                crate::prefetch::map_pages_vm_readv(child.pid(), &[(p0 + 1) * ps, (p0 + 2) * ps])?;
                r.poll()?;
                Ok(r.finish())
            });
        drop(child);
        let rec = got.unwrap();
        let touched: Vec<(u64, u64)> = rec
            .touched
            .iter()
            .map(|t| (t.first - p0, t.count))
            .collect();
        assert_eq!(touched, vec![(2, 1)]);
        let obs: Vec<PageRun> = rec.observable.iter().flat_map(|o| o.2.clone()).collect();
        let rel: Vec<(u64, u64)> = obs.iter().map(|r| (r.first - p0, r.count)).collect();
        assert_eq!(rel, vec![(0, 1), (2, 2)]);
    }

    /// Twinkle's stop rule ends a recording after `quiet_rounds` quiet rounds, or after two at
    /// least once the quiet rounds have lasted `quiet_time`, whichever comes first: exact
    /// round counts, with the time made zero or an hour (a forked child that touches nothing).
    #[test]
    fn quiet_rounds_or_quiet_time_end_a_recording() {
        let ps = sys::page_size();
        let m = sys::AnonMapping::new(4);
        let child = sys::PausedChild::fork();
        let cand = anon_candidates(m.base as u64 / ps, 4);
        let rounds_to_stop = |quiet_time: Duration| -> Result<u32> {
            let opts = RecorderOptions {
                quiet_rounds: 5,
                quiet_time,
                ..RecorderOptions::default()
            };
            let mut r = LoadingSetRecorder::start_all_out(child.pid(), &cand, opts)?;
            while !r.should_stop() && r.round() < 10 {
                r.poll()?;
            }
            let stop = r.round();
            let rec = r.finish();
            assert!(rec.touched.is_empty(), "{:?}", rec.touched);
            Ok(stop)
        };
        let got = (
            rounds_to_stop(Duration::ZERO),
            rounds_to_stop(Duration::from_secs(3600)),
        );
        drop(child);
        assert_eq!((got.0.unwrap(), got.1.unwrap()), (2, 5));
    }

    /// Candidates of the recorder tests: `count` anonymous pages from page number `first`.
    fn anon_candidates(first: u64, count: u64) -> Candidates {
        Candidates {
            anon: vec![PageRun { first, count }],
            ..Default::default()
        }
    }

    fn run(first: u64, count: u64, round: u32) -> LsRun {
        anon_run(first, count, round, true)
    }

    fn rec(touched: Vec<LsRun>, observable: Vec<PageRun>) -> Recording {
        Recording {
            pid: 1,
            comm: "t".into(),
            page_size: 4096,
            objects: vec![],
            touched,
            observable: vec![(MemKind::Anon, None, observable)],
            stats: RecordStats::default(),
        }
    }

    /// The layout puts every run touched before a first response first, whatever its age,
    /// then the rest in the set's order.
    #[test]
    fn layout_order_puts_the_first_response_part_first() {
        let later = |first, round, age| LsRun {
            age,
            first_response: false,
            ..run(first, 1, round)
        };
        let old_first = LsRun {
            age: 1,
            ..run(50, 2, 1)
        };
        let set = LoadingSet::merge(
            None,
            &rec(
                vec![run(10, 1, 1), later(20, 2, 0), later(30, 3, 0)],
                vec![],
            ),
            &DecayPolicy::default(),
        );
        let set = LoadingSet {
            runs: [set.runs, vec![old_first, later(70, 1, 1)]].concat(),
            ..set
        };
        let starts: Vec<u64> = set
            .address_order(&[])
            .iter()
            .map(|r| r.start / 4096)
            .collect();
        assert_eq!(starts, vec![10, 50, 20, 30, 70]);
    }

    #[test]
    fn merge_decays_only_observed_pages_and_keeps_touch_order() {
        let p = DecayPolicy::default();
        // Cycle 1: pages 100..104 in round 2, 10..12 in round 1 (both before the first
        // response), 300..302 after it.
        let s1 = LoadingSet::merge(
            None,
            &rec(
                vec![run(10, 2, 1), run(100, 4, 2), anon_run(300, 2, 3, false)],
                vec![PageRun {
                    first: 0,
                    count: 1000,
                }],
            ),
            &p,
        );
        assert_eq!(
            s1.runs
                .iter()
                .map(|r| (r.first, r.count, r.round))
                .collect::<Vec<_>>(),
            vec![(10, 2, 1), (100, 4, 2), (300, 2, 3)]
        );
        // Cycle 2: only 100..102 touched (round 1); 10..12 and 300..302 observable but
        // untouched → 0.75 (touched before a first response) and 0.5; 102..104 not observable
        // (already mapped at thaw) → unchanged.
        let s2 = LoadingSet::merge(
            Some(&s1),
            &rec(
                vec![run(100, 2, 1)],
                vec![
                    PageRun {
                        first: 0,
                        count: 100,
                    },
                    PageRun {
                        first: 300,
                        count: 2,
                    },
                ],
            ),
            &p,
        );
        let v: Vec<_> = s2
            .runs
            .iter()
            .map(|r| (r.first, r.count, r.age, r.weight, r.first_response))
            .collect();
        assert_eq!(
            v,
            vec![
                (100, 2, 0, 1.0, true),
                (102, 2, 0, 1.0, true),
                (10, 2, 1, 0.75, true),
                (300, 2, 1, 0.5, false)
            ]
        );
        assert_eq!(s2.cycles, 2);
    }

    /// Observed cycles without a touch: a later run is dropped at the third (0.5, 0.25, then
    /// < 0.2); a run touched before a first response stays in that part for five (0.75^5 =
    /// 0.237) and is dropped at the sixth (0.178).
    #[test]
    fn first_response_pages_stay_first_until_they_decay_out() {
        let p = DecayPolicy::default();
        let obs = vec![PageRun {
            first: 0,
            count: 1000,
        }];
        let s1 = LoadingSet::merge(
            None,
            &rec(
                vec![run(10, 2, 1), run(100, 4, 2), anon_run(300, 2, 3, false)],
                obs.clone(),
            ),
            &p,
        );
        let mut s = s1.clone();
        let mut kept = Vec::new();
        for _ in 2..=7 {
            s = LoadingSet::merge(Some(&s), &rec(vec![run(100, 4, 1)], obs.clone()), &p);
            kept.push((
                s.runs
                    .iter()
                    .find(|r| r.first == 10)
                    .map(|r| (r.age, r.first_response)),
                s.runs.iter().any(|r| r.first == 300),
            ));
        }
        assert_eq!(
            kept,
            vec![
                (Some((1, true)), true),
                (Some((2, true)), true),
                (Some((3, true)), false),
                (Some((4, true)), false),
                (Some((5, true)), false),
                (None, false)
            ]
        );
        assert_eq!(s.pages().anon, 4);
        // The part read before the next thaw: every run still flagged, whatever its age.
        let s2 = LoadingSet::merge(Some(&s1), &rec(vec![], obs.clone()), &p);
        let s3 = LoadingSet::merge(Some(&s2), &rec(vec![run(500, 1, 1)], obs), &p);
        assert_eq!(
            s3.runs_of(MemKind::Anon, None, Some(true)),
            vec![
                PageRun {
                    first: 10,
                    count: 2
                },
                PageRun {
                    first: 100,
                    count: 4
                },
                PageRun {
                    first: 500,
                    count: 1
                }
            ]
        );
    }

    #[test]
    fn a_full_prefetch_with_mapping_changes_nothing() {
        let p = DecayPolicy::default();
        let s1 = LoadingSet::merge(
            None,
            &rec(
                vec![run(10, 2, 1)],
                vec![PageRun {
                    first: 0,
                    count: 1000,
                }],
            ),
            &p,
        );
        // Everything was mapped at thaw: nothing observable, nothing touched.
        let s2 = LoadingSet::merge(Some(&s1), &rec(vec![], vec![]), &p);
        assert_eq!(s2.runs, s1.runs);
    }

    /// A file page touched before a first response leaves that part at its first observed
    /// miss (weight × `decay`); an anonymous one keeps it (× `first_decay`).
    #[test]
    fn only_anonymous_pages_stay_first_after_a_miss() {
        let p = DecayPolicy::default();
        let file = LsObject {
            kind: MemKind::File,
            key: ObjectKey { dev: 1, ino: 7 },
            path: "/lib/x.so".into(),
        };
        let all = vec![PageRun {
            first: 0,
            count: 1000,
        }];
        let cycle = |touched: Vec<LsRun>| Recording {
            objects: vec![file.clone()],
            observable: vec![
                (MemKind::Anon, None, all.clone()),
                (MemKind::File, Some(0), all.clone()),
            ],
            ..rec(touched, vec![])
        };
        let f = LsRun {
            kind: MemKind::File,
            object: Some(0),
            ..run(40, 16, 1)
        };
        let s1 = LoadingSet::merge(None, &cycle(vec![run(10, 2, 1), f]), &p);
        let s2 = LoadingSet::merge(Some(&s1), &cycle(vec![]), &p);
        let v: Vec<_> = s2
            .runs
            .iter()
            .map(|r| (r.kind, r.first, r.weight, r.first_response))
            .collect();
        assert_eq!(
            v,
            vec![
                (MemKind::Anon, 10, 0.75, true),
                (MemKind::File, 40, 0.5, false)
            ]
        );
    }

    #[test]
    fn objects_are_renumbered_and_versions_checked() {
        let p = DecayPolicy::default();
        let o = |ino| LsObject {
            kind: MemKind::File,
            key: ObjectKey { dev: 1, ino },
            path: format!("/f{ino}"),
        };
        let fr = |obj: u32, first, round| LsRun {
            kind: MemKind::File,
            object: Some(obj),
            ..run(first, 1, round)
        };
        let r1 = Recording {
            objects: vec![o(1), o(2)],
            touched: vec![fr(1, 5, 1), fr(0, 3, 2)],
            ..rec(vec![], vec![])
        };
        let s1 = LoadingSet::merge(None, &r1, &p);
        // Cycle 2 knows only object 2, as its object 0.
        let r2 = Recording {
            objects: vec![o(2)],
            touched: vec![fr(0, 5, 1)],
            ..rec(vec![], vec![])
        };
        let s2 = LoadingSet::merge(Some(&s1), &r2, &p);
        assert_eq!(s2.objects, vec![o(2), o(1)]);
        assert_eq!(
            s2.runs_of(MemKind::File, Some(ObjectKey { dev: 1, ino: 1 }), None),
            vec![PageRun { first: 3, count: 1 }]
        );
        let j = serde_json::to_vec(&s2).unwrap();
        assert_eq!(LoadingSet::from_json(&j).unwrap(), s2);
        let mut v: serde_json::Value = serde_json::from_slice(&j).unwrap();
        v["format_version"] = 0.into();
        assert!(LoadingSet::from_json(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .contains("ignored"));
        assert!(LoadingSet::from_json(b"{\"regions\":[]}")
            .unwrap_err()
            .contains("ignored"));
        let dir = std::env::temp_dir().join(format!("torpor-ls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ls.json");
        assert!(matches!(LoadingSet::load(&path).unwrap(), Loaded::Missing));
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(matches!(
            LoadingSet::load(&path).unwrap(),
            Loaded::Ignored(_)
        ));
        s2.save(&path).unwrap();
        assert!(matches!(LoadingSet::load(&path).unwrap(), Loaded::Set(s) if *s == s2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
