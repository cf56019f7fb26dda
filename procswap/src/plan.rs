//! The Start plan, computed at Stop (after the purge) so that Start walks nothing big: which
//! pages to fetch before the thaw (`first`: the loading set's part needed before the first
//! response), which right after (`loading_rest`), and which in the background (`rest`), per kind,
//! with anonymous pages in swap-slot order. [`fetch_unmapped`] executes one part with
//! `MADV_WILLNEED`/`posix_fadvise(WILLNEED)` only — nothing is mapped into the target, so a
//! [`crate::loadingset::LoadingSetRecorder`] running after the thaw still sees every touch.

use crate::error::{Error, Result};
use crate::inspect::{classify, Pagemap};
use crate::loadingset::LoadingSet;
use crate::memkind::{
    self, intersect, normalize, pages, subtract, ByKind, Gone, MemKind, MemObject, ObjectView,
    PageRun,
};
use crate::residency::ResidencySnapshot;
use crate::sys::{self, Range};
use crate::target::Target;
use std::collections::HashMap;
use std::time::{Instant, SystemTime};

/// Consecutive anonymous pages on consecutive swap slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwapRun {
    pub addr: u64,
    pub pages: u64,
    pub swap_type: u8,
    pub offset: u64,
}

impl SwapRun {
    /// Its pages as address page numbers (`ps`: the page size).
    pub fn page_run(&self, ps: u64) -> PageRun {
        PageRun {
            first: self.addr / ps,
            count: self.pages,
        }
    }
}

/// File pages of one object in a plan part.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectPart {
    /// Index into [`ActivationPlan::objects`].
    pub object: u32,
    pub runs: Vec<PageRun>,
}

/// One part of a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanPart {
    /// In swap-slot order.
    pub anon: Vec<SwapRun>,
    /// Anonymous (copy-on-write) pages of *private file mappings* (a library's `.data`), in
    /// swap-slot order. `MADV_WILLNEED` cannot reach them (on a file VMA it advises the file),
    /// so [`fetch_unmapped`] faults them in with `process_vm_readv` (they are then mapped, and
    /// invisible to a loading-set recorder: few pages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anon_cow: Vec<SwapRun>,
    /// Objects in order of first touch (loading-set parts) or snapshot order (rest).
    pub shmem: Vec<ObjectPart>,
    pub file: Vec<ObjectPart>,
}

impl PlanPart {
    pub fn pages(&self) -> ByKind<u64> {
        ByKind {
            anon: self
                .anon
                .iter()
                .chain(&self.anon_cow)
                .map(|r| r.pages)
                .sum(),
            shmem: self.shmem.iter().map(|o| pages(&o.runs)).sum(),
            file: self.file.iter().map(|o| pages(&o.runs)).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.anon.is_empty()
            && self.anon_cow.is_empty()
            && self.shmem.is_empty()
            && self.file.is_empty()
    }

    /// Runs of consecutive swap slots (what one sequential read each costs).
    pub fn swap_extents(&self) -> u64 {
        let mut n = 0;
        let mut prev: Option<(u8, u64)> = None;
        for r in self.anon.iter().chain(&self.anon_cow) {
            if prev != Some((r.swap_type, r.offset)) {
                n += 1;
            }
            prev = Some((r.swap_type, r.offset + r.pages));
        }
        n
    }

    fn objects_mut(&mut self, k: MemKind) -> &mut Vec<ObjectPart> {
        match k {
            MemKind::Shmem => &mut self.shmem,
            _ => &mut self.file,
        }
    }
}

/// What Start will fetch, computed at Stop.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActivationPlan {
    pub format_version: u32,
    pub pid: i32,
    pub comm: String,
    pub page_size: u64,
    pub computed_at: u64,
    /// Shmem and file objects the parts refer to (reopened and checked at Start).
    pub objects: Vec<MemObject>,
    /// Loading-set pages touched before the first response: fetch before the thaw.
    pub first: PlanPart,
    /// The rest of the loading set: fetch right after the thaw.
    pub loading_rest: PlanPart,
    /// Everything else that is out now (anonymous: every private page on swap; shmem and
    /// files: what was resident at Stop): background.
    pub rest: PlanPart,
    pub notes: Vec<String>,
}

/// Which part of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    First,
    LoadingRest,
    Rest,
}

impl ActivationPlan {
    pub const FORMAT_VERSION: u32 = 1;

    pub fn part(&self, p: Part) -> &PlanPart {
        match p {
            Part::First => &self.first,
            Part::LoadingRest => &self.loading_rest,
            Part::Rest => &self.rest,
        }
    }

    /// Compute the plan of a (purged) target from its Stop-time snapshot and loading set: a
    /// pagemap walk over the snapshot's anonymous pages (their swap slots now), one `mincore`
    /// per object (what is out now).
    pub fn compute(pid: i32, snap: &ResidencySnapshot, ls: Option<&LoadingSet>) -> Result<Self> {
        let t = Target::open(pid, "activation plan")?;
        let ps = snap.page_size;
        let mut notes = Vec::new();
        let ls = set_for(pid, ls, &mut notes);
        let buckets = anon_buckets(&t, snap, ls.as_ref())?;
        let parts = swap_runs(buckets, ps);
        Self::with_objects(&t, snap, ls.as_ref(), parts, notes)
    }

    /// The plan of a (purged) target's shmem and file objects only, from a snapshot taken
    /// before the purge ([`ResidencySnapshot::take_objects`]) and its loading set: one `mincore`
    /// per object, no pagemap walk. A VM's Start fetches QEMU's own file pages by it (QEMU's
    /// anonymous memory has a plan of its own, [`crate::vm::loading`]).
    pub fn of_objects(pid: i32, snap: &ResidencySnapshot, ls: Option<&LoadingSet>) -> Result<Self> {
        let t = Target::open(pid, "activation plan")?;
        let mut notes = Vec::new();
        let ls = set_for(pid, ls, &mut notes);
        Self::with_objects(&t, snap, ls.as_ref(), Default::default(), notes)
    }

    /// The plan of `parts` (anonymous) plus `snap`'s objects by the loading set.
    fn with_objects(
        t: &Target,
        snap: &ResidencySnapshot,
        ls: Option<&LoadingSet>,
        mut parts: [PlanPart; 3],
        mut notes: Vec<String>,
    ) -> Result<Self> {
        let pid = t.pid();
        let objects = object_parts(pid, snap, ls, &mut notes, &mut parts);
        t.check_alive("activation plan")?;
        let [first, loading_rest, rest] = parts;
        Ok(Self {
            format_version: Self::FORMAT_VERSION,
            pid,
            comm: t.comm().to_string(),
            page_size: snap.page_size,
            computed_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            objects,
            first,
            loading_rest,
            rest,
            notes,
        })
    }

    /// Parse; a plan of another format version is refused with a note.
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Self, String> {
        let v = crate::loadingset::format_version(bytes, "an activation plan")?;
        if v != Some(Self::FORMAT_VERSION) {
            return Err(format!(
                "activation plan format {v:?}, this torpor reads {}: ignored",
                Self::FORMAT_VERSION
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("activation plan: {e}: ignored"))
    }
}

/// `ls` as it applies to `pid` ([`LoadingSet::for_pid`]), its note added to `notes`.
fn set_for(pid: i32, ls: Option<&LoadingSet>, notes: &mut Vec<String>) -> Option<LoadingSet> {
    ls.map(|l| {
        let (s, note) = l.for_pid(pid);
        notes.extend(note);
        s
    })
}

/// Swapped anonymous pages as (swap type, offset, address), in six buckets: the loading set's
/// `first` part, its rest, everything else; then the same three for copy-on-write pages of
/// private file mappings.
type AnonBuckets = [Vec<(u8, u64, u64)>; 6];

/// The pages to walk for swapped anonymous pages: the snapshot's, and every private (anonymous
/// or private file) mapping.
fn anon_scan_ranges(
    snap: &ResidencySnapshot,
    all_vmas: &[crate::inspect::VmaInfo],
    ps: u64,
) -> Vec<PageRun> {
    // Every private page on swap now, not only the snapshot's: pages fetched by the last
    // Start's background pass but never mapped by the app were not resident at Stop (they
    // sat in the swap cache) and went back to swap with the reclaim; left out, each cycle's
    // plan would shrink to what the app happened to touch, and the rest would come back
    // one major fault at a time (redis with 1 GiB: 86k faults over 20 s of random GETs).
    normalize(
        snap.anon
            .iter()
            .copied()
            .chain(
                all_vmas
                    .iter()
                    .filter(|v| {
                        matches!(
                            v.kind,
                            crate::inspect::VmaKind::Anon | crate::inspect::VmaKind::FilePrivate
                        )
                    })
                    .map(|v| PageRun {
                        first: v.start / ps,
                        count: (v.end - v.start) / ps,
                    }),
            )
            .collect(),
    )
}

/// Whether sorted, non-overlapping `v` contains page `p`.
fn runs_contain(v: &[PageRun], p: u64) -> bool {
    let i = v.partition_point(|r| r.first <= p);
    i > 0 && p < v[i - 1].end()
}

/// Anonymous: swap slots of the snapshot's pages now, by plan part; those in private file
/// mappings (copy-on-write pages) apart.
fn anon_buckets(
    t: &Target,
    snap: &ResidencySnapshot,
    ls: Option<&LoadingSet>,
) -> Result<AnonBuckets> {
    let ps = snap.page_size;
    let (f_anon, l_anon) = match ls {
        Some(l) => (
            l.runs_of(MemKind::Anon, None, Some(true)),
            l.runs_of(MemKind::Anon, None, Some(false)),
        ),
        None => (vec![], vec![]),
    };
    let all_vmas = crate::inspect::vmas(t)?;
    let mut file_vmas: Vec<(u64, u64)> = all_vmas
        .iter()
        .filter(|v| v.kind == crate::inspect::VmaKind::FilePrivate)
        .map(|v| (v.start, v.end))
        .collect();
    file_vmas.sort_unstable();
    let in_file_vma = |a: u64| {
        let i = file_vmas.partition_point(|v| v.0 <= a);
        i > 0 && a < file_vmas[i - 1].1
    };
    let mut buckets: AnonBuckets = Default::default();
    let mut pm = Pagemap::open(t.pid())?;
    for r in &anon_scan_ranges(snap, &all_vmas, ps) {
        pm.scan(r.first * ps, r.end() * ps, |addr, info| {
            if let (false, _, Some((ty, off))) = classify(&info) {
                let p = addr / ps;
                let b = if runs_contain(&f_anon, p) {
                    0
                } else if runs_contain(&l_anon, p) {
                    1
                } else {
                    2
                };
                buckets[b + if in_file_vma(addr) { 3 } else { 0 }].push((ty, off, addr));
            }
        })?;
    }
    Ok(buckets)
}

/// The three parts' anonymous runs from the buckets: each in slot order, pages consecutive in
/// both slot and address merged.
fn swap_runs(mut buckets: AnonBuckets, ps: u64) -> [PlanPart; 3] {
    let mut parts = [
        PlanPart::default(),
        PlanPart::default(),
        PlanPart::default(),
    ];
    for (i, b) in buckets.iter_mut().enumerate() {
        b.sort_unstable();
        let list = if i < 3 {
            &mut parts[i].anon
        } else {
            &mut parts[i - 3].anon_cow
        };
        for &(ty, off, addr) in b.iter() {
            match list.last_mut() {
                Some(r)
                    if r.swap_type == ty
                        && r.offset + r.pages == off
                        && r.addr + r.pages * ps == addr =>
                {
                    r.pages += 1
                }
                _ => list.push(SwapRun {
                    addr,
                    pages: 1,
                    swap_type: ty,
                    offset: off,
                }),
            }
        }
    }
    parts
}

/// Each object's first touch in the loading set (its rank in touch order).
fn first_touch_ranks(ls: Option<&LoadingSet>) -> HashMap<(MemKind, memkind::ObjectKey), u64> {
    let mut m = HashMap::new();
    if let Some(l) = ls {
        for (i, r) in l.runs.iter().enumerate() {
            if let Some(o) = l.object_of(r) {
                m.entry((o.kind, o.key)).or_insert(i as u64);
            }
        }
    }
    m
}

/// The pages of a snapshot object that are out now (neither in the page cache nor the swap
/// cache). Files: of those resident at Stop. Shared memory: of *every* page of the object the
/// app maps or holds, holes left out (`SEEK_DATA`: a swapped page is data), like anonymous
/// memory's "every private page on swap now" — pages the last Start fetched but the app never
/// mapped sat in the swap cache, not resident in the Stop-time view of a process that does not
/// touch them (PostgreSQL's postmaster never touches most of `shared_buffers`; its backends
/// do, and exit), so with the Stop-time residency alone each plan held half the segment and the
/// other half came back one major fault at a time.
fn out_pages(
    v: &ObjectView,
    o: &crate::residency::ObjectResidency,
) -> std::io::Result<Vec<PageRun>> {
    let want = if o.object.kind == MemKind::Shmem {
        memkind::data_runs(v.file(), &o.object.interest)?
    } else {
        o.resident.clone()
    };
    Ok(subtract(&want, &normalize(v.resident(&want)?)))
}

/// Shmem and file objects: what was resident at Stop and is out now, split into the three
/// parts (loading-set parts in order of first touch, the rest in snapshot order) and added to
/// `parts`. Returns the objects the parts refer to; one that cannot be reopened is left out
/// with a note.
fn object_parts(
    pid: i32,
    snap: &ResidencySnapshot,
    ls: Option<&LoadingSet>,
    notes: &mut Vec<String>,
    parts: &mut [PlanPart; 3],
) -> Vec<MemObject> {
    let mut objects: Vec<MemObject> = Vec::new();
    // part -> [(first touch rank, ObjectPart)]
    let mut obj_parts: Vec<Vec<(u64, ObjectPart)>> = vec![vec![], vec![], vec![]];
    let rank_of = first_touch_ranks(ls);
    for o in &snap.objects {
        let now = match memkind::reopen(pid, &o.object).and_then(|f| {
            let v = ObjectView::new(f, None).map_err(|e| Gone::Unreadable(e.to_string()))?;
            out_pages(&v, o).map_err(|e| Gone::Unreadable(e.to_string()))
        }) {
            Ok(out) => out,
            Err(g) => {
                notes.push(format!(
                    "{} {}: {g}: left out of the plan",
                    o.object.kind, o.object.path
                ));
                continue;
            }
        };
        let out = now;
        if out.is_empty() {
            continue;
        }
        let idx = objects.len() as u32;
        objects.push(o.object.clone());
        let (f, l) = match ls {
            Some(ls) => {
                let k = Some(o.object.key);
                let f = intersect(&out, &ls.runs_of(o.object.kind, k, Some(true)));
                let l = subtract(
                    &intersect(&out, &ls.runs_of(o.object.kind, k, Some(false))),
                    &f,
                );
                (f, l)
            }
            None => (vec![], vec![]),
        };
        let rest = subtract(&subtract(&out, &f), &l);
        let rank = rank_of
            .get(&(o.object.kind, o.object.key))
            .copied()
            .unwrap_or(u64::MAX);
        for (i, runs) in [f, l, rest].into_iter().enumerate() {
            if !runs.is_empty() {
                obj_parts[i].push((
                    if i == 2 { idx as u64 } else { rank },
                    ObjectPart { object: idx, runs },
                ));
            }
        }
    }
    for (i, mut v) in obj_parts.into_iter().enumerate() {
        v.sort_by_key(|(r, p)| (*r, p.object));
        for (_, p) in v {
            let kind = objects[p.object as usize].kind;
            parts[i].objects_mut(kind).push(p);
        }
    }
    objects
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Never let `MemAvailable` drop below this: stop and report instead.
    pub free_floor_bytes: u64,
    /// Stop after this many bytes (all kinds).
    pub budget_bytes: Option<u64>,
    /// Anonymous ranges per `process_madvise` batch.
    pub batch_bytes: u64,
    /// Shmem and file: `MADV_POPULATE_READ` on our own mapping (synchronous: returns when the
    /// data is in) instead of `WILLNEED` (asynchronous). Never maps anything into the target.
    pub populate: bool,
    /// Shmem: after `MADV_WILLNEED`, `MADV_POPULATE_READ` of the same pages on our own mapping
    /// (then unmapped): waits for the reads, and moves each page from the swap cache into the
    /// object's page cache. A page left in the swap cache costs the app a fault of its own
    /// (which moves it); one in the page cache is mapped with its neighbours, 16 a fault
    /// (fault-around), as a warm app's are. For a background fetch, not before a thaw.
    pub shmem_to_page_cache: bool,
    /// Issue file read-ahead from a helper process in this memory cgroup (the app's: see
    /// [`crate::cgroup::Memcg::dir`]) so the page cache is charged to the app and the next
    /// Stop's memcg reclaim evicts it again. `None`: charged to the caller's cgroup.
    /// The helper's join (its write to `cgroup.procs`) holds the kernel's cgroup locks for an
    /// RCU grace period (10-50 ms): anything else that writes a cgroup file meanwhile — a
    /// thaw, the app's own threads being created — waits for it.
    pub charge_files_to: Option<std::path::PathBuf>,
    /// I/O priority of the reads issued (e.g. `BestEffort(7)` or `Idle` for the background
    /// parts, so the app's own faults go first). `None`: the caller's.
    pub io_priority: Option<sys::IoPriority>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            free_floor_bytes: 256 << 20,
            budget_bytes: None,
            batch_bytes: 16 << 20,
            populate: false,
            shmem_to_page_cache: false,
            charge_files_to: None,
            io_priority: None,
        }
    }
}

/// An object a fetch skipped.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SkippedFetch {
    pub kind: MemKind,
    pub path: String,
    pub reason: String,
    pub bytes: u64,
}

/// What [`fetch_unmapped`] did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FetchReport {
    /// Bytes for which reads were issued (or, with `populate`, completed), per kind.
    pub issued_bytes: ByKind<u64>,
    /// Objects skipped (deleted, replaced, truncated, not held any more).
    pub skipped: Vec<SkippedFetch>,
    /// Runs of consecutive swap slots read (anonymous).
    pub swap_extents: u64,
    /// Copy-on-write pages of private file mappings faulted in (mapped) by `process_vm_readv`.
    #[serde(default)]
    pub cow_mapped_pages: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub stopped: Option<crate::prefetch::StopReason>,
    pub seconds: f64,
}

/// Fetch one part of `plan` into the swap cache / page cache without mapping anything into the
/// target. Anonymous pages: `process_madvise(MADV_WILLNEED)` in the plan's slot order (pages no
/// longer swapped are a no-op). Shmem: `madvise(MADV_WILLNEED)` on our own read-only mapping of
/// the object (swaps it in; charged to the memcg the pages were swapped out from). Files:
/// `posix_fadvise(POSIX_FADV_WILLNEED)`. Objects are reopened and checked first
/// ([`memkind::reopen`]): one deleted, replaced or truncated since Stop is skipped and
/// reported; nothing is ever read past the end of a file.
pub fn fetch_unmapped(
    t: &Target,
    plan: &ActivationPlan,
    part: &PlanPart,
    opts: &FetchOptions,
) -> Result<FetchReport> {
    let t0 = Instant::now();
    let ps = plan.page_size;
    let mut rep = FetchReport {
        swap_extents: part.swap_extents(),
        ..Default::default()
    };
    let _prio = match opts.io_priority.map(sys::io_priority) {
        Some(Err(e)) => {
            rep.notes.push(format!("I/O priority not set: {e}"));
            None
        }
        Some(Ok(g)) => Some(g),
        None => None,
    };
    let mut room = Room {
        t,
        ps,
        opts,
        spent: 0,
    };
    let mut stopped = fetch_anon(part, &mut room, &mut rep)?;
    if !stopped {
        stopped = fetch_cow(part, &mut room, &mut rep)?;
    }
    let in_memcg = if stopped {
        Vec::new()
    } else {
        fetch_objects(plan, part, &mut room, &mut rep)?
    };
    if let (Some(dir), false) = (&opts.charge_files_to, in_memcg.is_empty()) {
        if let Some(n) = fadvise_in_memcg_or_here(dir, &in_memcg, ps) {
            rep.notes.push(n);
        }
    }
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

/// The second half of [`FetchOptions::shmem_to_page_cache`], for a part whose shmem was
/// fetched without it: `MADV_POPULATE_READ` of its shmem pages on our own mapping (waits for
/// their reads, moves them from the swap cache into the object's page cache, maps nothing
/// into the target). Issued some steps behind the `MADV_WILLNEED`s, it lets those queue ahead
/// instead of waiting for each step's reads in turn (1 GiB of shmem on this machine's disk,
/// 1 MiB steps: 2.0-2.3 s step by step, 0.8-1.2 s with 4-16 steps in flight). Returns the
/// objects skipped.
pub fn shmem_to_page_cache(plan: &ActivationPlan, part: &PlanPart) -> Vec<SkippedFetch> {
    let ps = plan.page_size;
    let mut skipped = Vec::new();
    for op in &part.shmem {
        let o = &plan.objects[op.object as usize];
        let res = memkind::reopen(plan.pid, o)
            .map_err(|g| g.to_string())
            .and_then(|f| ObjectView::new(f, None).map_err(|e| e.to_string()))
            .and_then(|v| {
                v.madvise(&op.runs, libc::MADV_POPULATE_READ)
                    .map_err(|e| format!("fetch failed: {e}"))
            });
        if let Err(reason) = res {
            skipped.push(SkippedFetch {
                kind: MemKind::Shmem,
                path: o.path.clone(),
                reason,
                bytes: pages(&op.runs) * ps,
            });
        }
    }
    skipped
}

/// [`fadvise_in_memcg`]; if that fails, the read-ahead is issued from this process (charged
/// to its cgroup, but still fetched), and the note says so.
fn fadvise_in_memcg_or_here(
    dir: &std::path::Path,
    work: &[(std::fs::File, Vec<PageRun>)],
    ps: u64,
) -> Option<String> {
    let e = fadvise_in_memcg(dir, work, ps).err()?;
    for (f, runs) in work {
        let _ = memkind::fadvise(f, runs, libc::POSIX_FADV_WILLNEED);
    }
    Some(format!(
        "file read-ahead from {}: {e}; issued from this process instead",
        dir.display()
    ))
}

/// A fetch under way: its target and page size, its budget and free-memory floor, and what it
/// has spent so far.
struct Room<'a> {
    t: &'a Target,
    ps: u64,
    opts: &'a FetchOptions,
    spent: u64,
}

impl Room<'_> {
    /// Whether `need` more bytes fit (under the budget, above the free floor): spent if so,
    /// else `rep.stopped` says why.
    fn take(&mut self, need: u64, rep: &mut FetchReport) -> Result<bool> {
        if let Some(b) = self.opts.budget_bytes {
            if self.spent + need > b {
                rep.stopped = Some(crate::prefetch::StopReason::Budget { budget_bytes: b });
                return Ok(false);
            }
        }
        let m = sys::meminfo()?;
        if m.mem_available < self.opts.free_floor_bytes.saturating_add(need) {
            rep.stopped = Some(crate::prefetch::StopReason::FreeFloor {
                available_bytes: m.mem_available,
                floor_bytes: self.opts.free_floor_bytes,
            });
            return Ok(false);
        }
        self.spent += need;
        Ok(true)
    }
}

/// Anonymous pages, in slot order, in batches of `batch_bytes`
/// (`process_madvise(MADV_WILLNEED)`). Returns whether the room ran out.
fn fetch_anon(part: &PlanPart, room: &mut Room<'_>, rep: &mut FetchReport) -> Result<bool> {
    let (t, ps) = (room.t, room.ps);
    let per_batch = (room.opts.batch_bytes / ps).max(1);
    let mut batch: Vec<Range> = Vec::new();
    let mut batch_pages = 0u64;
    let flush = |batch: &mut Vec<Range>, rep: &mut FetchReport| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        t.check_alive("fetch")?;
        let (done, _) = sys::madvise_all(t.pidfd(), batch, libc::MADV_WILLNEED, &mut |_| {})
            .map_err(|e| Error::sys("process_madvise(MADV_WILLNEED)", t.pid(), e))?;
        rep.issued_bytes.anon += done;
        batch.clear();
        Ok(())
    };
    let anon_pages = part.pages().anon;
    for r in &part.anon {
        if batch_pages + r.pages > per_batch && !batch.is_empty() {
            flush(&mut batch, rep)?;
            batch_pages = 0;
        }
        if batch_pages == 0 && !room.take(per_batch.min(anon_pages) * ps, rep)? {
            return Ok(true);
        }
        batch.push(Range {
            start: r.addr,
            len: r.pages * ps,
        });
        batch_pages += r.pages;
    }
    flush(&mut batch, rep)?;
    Ok(false)
}

/// Copy-on-write pages of private file mappings: only a fault brings them in
/// (`process_vm_readv`). Returns whether the room ran out.
fn fetch_cow(part: &PlanPart, room: &mut Room<'_>, rep: &mut FetchReport) -> Result<bool> {
    let (t, ps) = (room.t, room.ps);
    if part.anon_cow.is_empty() {
        return Ok(false);
    }
    let addrs: Vec<u64> = part
        .anon_cow
        .iter()
        .flat_map(|r| (0..r.pages).map(move |i| r.addr + i * ps))
        .collect();
    if !room.take(addrs.len() as u64 * ps, rep)? {
        return Ok(true);
    }
    let (ok, _) = map_cow_pages(t.pid(), &addrs)?;
    rep.cow_mapped_pages = ok;
    rep.issued_bytes.anon += ok * ps;
    Ok(false)
}

/// Threads that fault copy-on-write pages in at once ([`map_cow_pages`]).
const COW_THREADS: usize = 8;

/// The pages of `ranges` of `pid` (in the order given; page size `ps`) faulted in with
/// `process_vm_readv` from up to eight threads ([`map_cow_pages`]): copy-on-write pages of
/// private file mappings, which `MADV_WILLNEED` does not read from swap. A page not on swap is
/// mapped as well (it was there or is read from its file). Returns (pages mapped, pages
/// unreadable).
pub fn map_cow_ranges(pid: i32, ranges: &[Range], ps: u64) -> Result<(u64, u64)> {
    let addrs: Vec<u64> = ranges
        .iter()
        .flat_map(|r| (0..r.len / ps).map(move |i| r.start + i * ps))
        .collect();
    map_cow_pages(pid, &addrs)
}

/// Fault `addrs` (in swap-slot order) into `pid` with `process_vm_readv`, from up to
/// [`COW_THREADS`] threads, each taking a contiguous share. A fault reads its page (and the
/// kernel's swap read-ahead around it) synchronously: one thread has one read in flight at a
/// time. Tomcat's plans hold ~3,000 copy-on-write pages (the JVM's class-data archive,
/// libraries' data), its first part 500-800 of them; its time to the thaw was 20-27 ms with
/// one thread (at load 5-6) and 11.6-16.8 ms with eight (quiet): not a side-by-side
/// measurement. Returns (pages mapped, pages unreadable).
fn map_cow_pages(pid: i32, addrs: &[u64]) -> Result<(u64, u64)> {
    const MIN_SHARE: usize = 64;
    let threads = addrs.len().div_ceil(MIN_SHARE).clamp(1, COW_THREADS);
    if threads == 1 {
        return crate::prefetch::map_pages_vm_readv(pid, addrs);
    }
    let share = addrs.len().div_ceil(threads);
    std::thread::scope(|sc| {
        let handles: Vec<_> = addrs
            .chunks(share)
            .map(|c| sc.spawn(move || crate::prefetch::map_pages_vm_readv(pid, c)))
            .collect();
        let mut sum = (0, 0);
        for h in handles {
            // A panic in a share is a bug: raised again here, as if it had happened here.
            let (ok, bad) = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            sum = (sum.0 + ok, sum.1 + bad);
        }
        Ok(sum)
    })
}

/// Shmem, then files: each object reopened and checked (skipped and reported if gone), then
/// `MADV_WILLNEED` (shmem), `MADV_POPULATE_READ` (with `populate`) or
/// `posix_fadvise(WILLNEED)`. Returns the file reads left to issue from the app's memory
/// cgroup ([`FetchOptions::charge_files_to`]).
fn fetch_objects(
    plan: &ActivationPlan,
    part: &PlanPart,
    room: &mut Room<'_>,
    rep: &mut FetchReport,
) -> Result<Vec<(std::fs::File, Vec<PageRun>)>> {
    let (ps, opts) = (plan.page_size, room.opts);
    let mut in_memcg: Vec<(std::fs::File, Vec<PageRun>)> = Vec::new();
    for (kind, list) in [(MemKind::Shmem, &part.shmem), (MemKind::File, &part.file)] {
        for op in list {
            let o = &plan.objects[op.object as usize];
            let bytes = pages(&op.runs) * ps;
            let f = match memkind::reopen(plan.pid, o) {
                Ok(f) => f,
                Err(g) => {
                    rep.skipped.push(SkippedFetch {
                        kind,
                        path: o.path.clone(),
                        reason: g.to_string(),
                        bytes,
                    });
                    continue;
                }
            };
            if !room.take(bytes, rep)? {
                return Ok(in_memcg);
            }
            if kind == MemKind::File && !opts.populate && opts.charge_files_to.is_some() {
                // Issued later, all at once, from a helper in the app's memory cgroup.
                let limit = f.metadata().map(|m| m.len().div_ceil(ps)).unwrap_or(0);
                let runs = memkind::clip(&op.runs, limit);
                *rep.issued_bytes.get_mut(kind) += pages(&runs) * ps;
                in_memcg.push((f, runs));
                continue;
            }
            let res = if kind == MemKind::Shmem || opts.populate {
                let advice = if opts.populate {
                    libc::MADV_POPULATE_READ
                } else {
                    libc::MADV_WILLNEED
                };
                ObjectView::new(f, None).and_then(|v| {
                    let n = v.madvise(&op.runs, advice)?;
                    if kind == MemKind::Shmem
                        && advice == libc::MADV_WILLNEED
                        && opts.shmem_to_page_cache
                    {
                        v.madvise(&op.runs, libc::MADV_POPULATE_READ)?;
                    }
                    Ok(n)
                })
            } else {
                memkind::fadvise(&f, &op.runs, libc::POSIX_FADV_WILLNEED)
            };
            match res {
                Ok(n) => *rep.issued_bytes.get_mut(kind) += n,
                Err(e) => rep.skipped.push(SkippedFetch {
                    kind,
                    path: o.path.clone(),
                    reason: format!("fetch failed: {e}"),
                    bytes,
                }),
            }
        }
    }
    Ok(in_memcg)
}

/// The request queues of the block devices that hold the swap areas, seen through
/// `/sys/dev/block/MAJ:MIN/inflight` (reads and writes in flight; a partition has its own).
/// A background fetch that waits for the queue to drain before each step keeps it shallow, so
/// the app's own faults never wait behind megabytes of read-ahead: I/O priorities do not do
/// that with the `none` scheduler (virtio, NVMe), and `MADV_WILLNEED` returns before its reads
/// complete, so nothing else limits how much a loop of them queues.
#[derive(Debug, Clone, Default)]
pub struct IoQueue {
    files: Vec<std::path::PathBuf>,
}

/// `major`/`minor` of a Linux `dev_t` (glibc's encoding).
fn dev_major_minor(dev: u64) -> (u64, u64) {
    (
        ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
        (dev & 0xff) | ((dev >> 12) & !0xff),
    )
}

/// Reads in flight from the contents of an `inflight` file ("reads writes").
pub fn parse_inflight(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
}

/// Discards completed, from the contents of a block device's `stat` file (field 12; a kernel
/// without discard statistics, before 4.18, or a malformed line: `None`).
pub fn parse_discard_stat(s: &str) -> Option<u64> {
    let f: Vec<u64> = s
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    f.get(11).copied()
}

impl IoQueue {
    /// The queues behind every active swap area of `/proc/swaps` (a swap file: the device of
    /// its file system; a swap partition: itself). Empty when none can be found (e.g. a file
    /// system on an anonymous device): then [`IoQueue::wait_below`] never waits.
    pub fn of_swap() -> Self {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        Self::of_devices(swaps.lines().skip(1).filter_map(|line| {
            let md = std::fs::metadata(line.split_whitespace().next()?).ok()?;
            Some(if md.file_type().is_block_device() {
                md.rdev()
            } else {
                md.dev()
            })
        }))
    }

    /// The queues of the block devices `devs` (`st_dev` of files on them, or a device's
    /// `st_rdev`); devices without a queue in sysfs (e.g. a file system on an anonymous device)
    /// are left out, and an empty list never waits.
    pub fn of_devices(devs: impl IntoIterator<Item = u64>) -> Self {
        let mut files = Vec::new();
        for dev in devs {
            let (maj, min) = dev_major_minor(dev);
            let f = std::path::PathBuf::from(format!("/sys/dev/block/{maj}:{min}/inflight"));
            if !files.contains(&f) && f.exists() {
                files.push(f);
            }
        }
        Self { files }
    }

    /// Whether any queue was found.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Reads in flight now, summed over the queues (`None`: no queue).
    pub fn reads_in_flight(&self) -> Option<u64> {
        if self.files.is_empty() {
            return None;
        }
        Some(
            self.files
                .iter()
                .filter_map(|f| std::fs::read_to_string(f).ok())
                .filter_map(|s| parse_inflight(&s))
                .sum(),
        )
    }

    /// Wait until the devices have completed no discard for `quiet` (polling every 5 ms), or
    /// `timeout` passed. Swap areas enabled with discard
    /// (`swapon --discard=pages`, which also makes the allocator prefer free clusters: the
    /// purge's layout needs it) discard a cluster once all its slots are freed, from a worker,
    /// after the call that freed them returned: a step that frees a gigabyte of slots (the
    /// shmem re-layout reads every page back) leaves seconds of discards behind, and on a
    /// virtual disk reads wait behind them (PostgreSQL, 2026-12-03: a Start right after such a
    /// Stop met ~260 MiB of discards in its first quarter second, its reads took 1.6 ms instead
    /// of 0.03, its first query 0.9 s). Returns (discards completed meanwhile, time waited);
    /// a device without discard statistics is not waited for.
    pub fn wait_discards(
        &self,
        quiet: std::time::Duration,
        timeout: std::time::Duration,
    ) -> (u64, std::time::Duration) {
        // Discards completed, summed over the devices (another tenant's reads and writes do
        // not hold the wait up).
        let read = || -> Option<u64> {
            let mut sum = 0u64;
            for f in &self.files {
                let s = std::fs::read_to_string(f.with_file_name("stat")).ok()?;
                sum = sum.saturating_add(parse_discard_stat(&s)?);
            }
            Some(sum)
        };
        let t = Instant::now();
        let Some(first) = read() else {
            return (0, t.elapsed());
        };
        let (mut done, mut since) = (first, Instant::now());
        while since.elapsed() < quiet && t.elapsed() < timeout {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let Some(d) = read() else { break };
            if d != done {
                (done, since) = (d, Instant::now());
            }
        }
        (done.saturating_sub(first), t.elapsed())
    }

    /// Wait (polling every 200 µs) until at most `max` reads are in flight, or `timeout`
    /// passed. Returns how long it waited.
    pub fn wait_below(&self, max: u64, timeout: std::time::Duration) -> std::time::Duration {
        let t = Instant::now();
        while self.reads_in_flight().is_some_and(|n| n > max) && t.elapsed() < timeout {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        t.elapsed()
    }
}

/// Issue `posix_fadvise(WILLNEED)` for `work` from a short-lived child process that first
/// joins the memory cgroup `dir` (writes 0 to its `cgroup.procs`), so the page cache it reads
/// is charged to that cgroup (the app's: its next Stop's memcg reclaim evicts it again), not
/// to the caller's. The child only makes system calls (no allocation after `fork`, which is safe
/// in a multi-threaded caller). Returns when the child has issued everything (the reads
/// themselves stay asynchronous).
pub fn fadvise_in_memcg(
    dir: &std::path::Path,
    work: &[(std::fs::File, Vec<PageRun>)],
    ps: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    // Everything the child needs, prepared before fork.
    let jobs: Vec<(i32, i64, i64)> = work
        .iter()
        .flat_map(|(f, runs)| {
            runs.iter()
                .map(move |r| (f.as_raw_fd(), (r.first * ps) as i64, (r.count * ps) as i64))
        })
        .collect();
    let pfd = procs.as_raw_fd();
    // The descriptors the child keeps; it closes every other one at once, so that a caller's
    // listening socket (torpord's) is not held open by a child that outlives a killed caller.
    let mut keep: Vec<u32> = jobs.iter().map(|j| j.0 as u32).collect();
    keep.push(pfd as u32);
    keep.sort_unstable();
    keep.dedup();
    // SAFETY: fork() in a possibly multi-threaded process: the child below only calls
    // async-signal-safe system calls (close_range, write, posix_fadvise, _exit) on data prepared
    // before the fork, never allocates and never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; `jobs`, `keep` and `pfd` are valid in the child's copy of the memory.
        unsafe {
            close_all_but(&keep);
            if libc::write(pfd, b"0\n".as_ptr() as *const libc::c_void, 2) != 2 {
                libc::_exit(2);
            }
            for &(fd, off, len) in &jobs {
                libc::posix_fadvise(fd, off, len, libc::POSIX_FADV_WILLNEED);
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for the child just forked; `status` is a valid out pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(std::io::Error::other(format!(
            "helper could not join {} (status {status:#x})",
            dir.display()
        )));
    }
    Ok(())
}

/// Closes every descriptor from 3 up except those in `keep` (sorted, deduplicated), with
/// `close_range(2)` over the gaps: one system call per gap, no allocation (safe after `fork`).
/// A kernel without `close_range` (< 5.9) leaves them open, as before.
///
/// # Safety
/// Closes descriptors behind any owner's back: only for a forked child that ends with `_exit`.
unsafe fn close_all_but(keep: &[u32]) {
    let mut from: u32 = 3;
    for &k in keep {
        if k > from {
            // SAFETY: a plain system call on integers; see the function's contract.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
        }
        // `k` is a descriptor number (< 2^31): the sum cannot wrap.
        from = from.max(k + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}

/// How much of a part's shmem and file pages are resident now (`mincore`; anonymous pages in
/// the swap cache of another process cannot be seen from outside, so only mapped anonymous
/// pages would count: not reported). Returns (pages in the part, resident now) per kind.
pub fn completion(plan: &ActivationPlan, part: &PlanPart) -> (ByKind<u64>, ByKind<u64>) {
    let mut want = part.pages();
    want.anon = 0;
    let mut have = ByKind::default();
    for (kind, list) in [(MemKind::Shmem, &part.shmem), (MemKind::File, &part.file)] {
        for op in list {
            let o = &plan.objects[op.object as usize];
            if let Ok(v) = memkind::reopen(plan.pid, o)
                .and_then(|f| ObjectView::new(f, None).map_err(|e| Gone::Unreadable(e.to_string())))
            {
                if let Ok(r) = v.resident(&op.runs) {
                    *have.get_mut(kind) += pages(&r);
                }
            }
        }
    }
    (want, have)
}

#[cfg(test)]
mod tests_plan {
    use super::*;

    /// Shares of `map_cow_pages` (150 pages: 3 threads) fault in exactly the pages asked, in a
    /// forked child (untouched anonymous pages: each read maps the zero page).
    #[test]
    fn cow_pages_are_mapped_by_shares_exactly() {
        use std::os::unix::fs::FileExt;
        let ps = sys::page_size();
        let m = sys::AnonMapping::new(300);
        let child = sys::PausedChild::fork();
        let base = m.base as u64;
        let addrs: Vec<u64> = (0..150).map(|i| base + 2 * i * ps).collect();
        let got = map_cow_pages(child.pid(), &addrs);
        let pm = std::fs::File::open(format!("/proc/{}/pagemap", child.pid())).unwrap();
        let mut present = Vec::new();
        for i in 0..300u64 {
            let mut e = [0u8; 8];
            pm.read_exact_at(&mut e, (base / ps + i) * 8).unwrap();
            if u64::from_ne_bytes(e) >> 63 == 1 {
                present.push(i);
            }
        }
        drop(child);
        assert_eq!(got.unwrap(), (150, 0));
        assert_eq!(present, (0..150).map(|i| 2 * i).collect::<Vec<u64>>());
    }

    #[test]
    fn candidates_from_plan_cover_every_part() {
        use crate::memkind::{Handle, ObjectKey};
        let o = MemObject {
            kind: MemKind::File,
            key: ObjectKey { dev: 1, ino: 2 },
            path: "/f".into(),
            size: 1 << 20,
            mtime_sec: 0,
            mtime_nsec: 0,
            unheld_stops: 0,
            by_path: true,
            handles: vec![Handle::Fd { fd: 3 }],
            interest: vec![PageRun {
                first: 0,
                count: 256,
            }],
        };
        let sr = |addr, pages| SwapRun {
            addr,
            pages,
            swap_type: 0,
            offset: 0,
        };
        let part = |a: Vec<SwapRun>, f: Vec<PageRun>| PlanPart {
            anon: a,
            file: if f.is_empty() {
                vec![]
            } else {
                vec![ObjectPart { object: 0, runs: f }]
            },
            ..Default::default()
        };
        let plan = ActivationPlan {
            format_version: ActivationPlan::FORMAT_VERSION,
            pid: 1,
            comm: "x".into(),
            page_size: 4096,
            computed_at: 0,
            objects: vec![o],
            first: part(vec![sr(0x5000, 2)], vec![PageRun { first: 4, count: 2 }]),
            loading_rest: part(vec![sr(0x7000, 1)], vec![]),
            rest: PlanPart {
                anon_cow: vec![sr(0x1000, 1)],
                ..part(vec![], vec![PageRun { first: 0, count: 4 }])
            },
            notes: vec![],
        };
        let c = crate::loadingset::Candidates::from_plan(&plan);
        assert_eq!(
            c.anon,
            vec![
                PageRun { first: 1, count: 1 },
                PageRun { first: 5, count: 3 }
            ]
        );
        assert_eq!(c.object_runs, vec![vec![PageRun { first: 0, count: 6 }]]);
        assert_eq!(
            plan.first.pages(),
            ByKind {
                anon: 2,
                shmem: 0,
                file: 2
            }
        );
        let j = serde_json::to_vec(&plan).unwrap();
        assert_eq!(ActivationPlan::from_json(&j).unwrap(), plan);
        assert!(ActivationPlan::from_json(b"{\"format_version\":0}")
            .unwrap_err()
            .contains("ignored"));
    }

    #[test]
    fn inflight_and_dev_numbers_parse() {
        assert_eq!(parse_inflight("       3        7\n"), Some(3));
        assert_eq!(parse_inflight("0 0"), Some(0));
        assert_eq!(parse_inflight(""), None);
        assert_eq!(parse_inflight("x 1"), None);
        // 254:0 (virtio vda), 8:17 (sda1), 259:65536 (a large NVMe minor).
        assert_eq!(dev_major_minor(0xfe00), (254, 0));
        assert_eq!(dev_major_minor(0x811), (8, 17));
        // glibc's makedev(259, 65536): major bits 8..20, minor bits 0..8 and 20..32.
        let big = (259u64 << 8) | ((65536u64 & !0xff) << 12);
        assert_eq!(dev_major_minor(big), (259, 65536));
        // No queue (dev 0:0 has none in sysfs): never waits, reports nothing.
        assert!(IoQueue::of_devices([0u64, 0]).is_empty());
        let q = IoQueue::default();
        assert!(q.is_empty());
        assert_eq!(q.reads_in_flight(), None);
        assert!(
            q.wait_below(0, std::time::Duration::from_secs(60))
                < std::time::Duration::from_secs(60)
        );
    }

    #[test]
    fn discard_stat_gives_the_discards_done() {
        // /sys/block/vda/stat of a 6.18 kernel: 17 fields.
        let s = "  1041690  34201 120389226  541286  403044  254391 50470728 1795392   3  697696 2470417  12081  0 47683584  4183  91283 128549\n";
        assert_eq!(parse_discard_stat(s), Some(12081));
        // Before 4.18: 11 fields, no discard statistics.
        assert_eq!(parse_discard_stat("1 2 3 4 5 6 7 8 0 10 11"), None);
        assert_eq!(parse_discard_stat("1 2 x 4 5 6 7 8 0 10 11 12"), None);
    }

    #[test]
    fn swap_extents_count_slot_breaks() {
        let r = |addr, pages, offset| SwapRun {
            addr,
            pages,
            swap_type: 0,
            offset,
        };
        let p = PlanPart {
            anon: vec![r(0x1000, 2, 10), r(0x9000, 3, 12), r(0x2000, 1, 20)],
            ..Default::default()
        };
        assert_eq!(p.swap_extents(), 2);
        assert_eq!(p.pages().anon, 6);
    }
}
