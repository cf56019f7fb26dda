//! VM apps (`kind = "vm"`): Stop and Start of a QEMU process through QMP and the guest agent.
//!
//! Stop: guest maps from the agent (best effort, never fails the Stop), QMP `stop`, guest RAM
//! discovery, freeze, purge, evidence. Start: prefetch by mode (the loading set's first part for
//! `loading-set`, the default; QEMU's own memory and guest classes 0-5 minus free pages for
//! `priority`; the whole process for `full`; nothing for `none`), thaw, QMP `cont`, Twinkle in
//! the background (`loading-set`, `priority`), probe.
//!
//! `loading-set` (procswap's process loading set over QEMU's memory, `procswap::vm::loading`):
//! Stop merges the last Start's recording (QEMU's pages touched from `cont` on, first-touch
//! order) into the saved set with decay, lays the set out first in the purge (QEMU's own pages,
//! then guest classes, touch order within each, guest-free pages left out), computes the next
//! Start's plan ([`StartPlan`]: the Start walks nothing big), and notes what the next Start
//! watches (QEMU's pages on swap after the purge, minus guest-free pages, and QEMU's file pages
//! — binary, libraries, files it reads — resident before the purge). Start reads the part
//! touched before the first response — copy-on-write pages of QEMU's private file mappings by
//! a fault (`MADV_WILLNEED` does not read those from swap), QEMU's evicted file pages by
//! read-ahead, the rest with `MADV_WILLNEED` (nothing else mapped: the recorder sees every
//! touch) — thaws, `cont`s, records, and fetches the rest of the set, QEMU's own memory and
//! classes 0-5 in the background at low I/O priority once the probe answered, then Twinkle's
//! segments and the later classes; QEMU's other file pages likewise. Without a set yet nothing
//! is read before `cont` (demand paging, recorded).
//! Safety: the guest's maps only order and skip prefetch; nothing is discarded on their strength.

use super::{
    activation, lock, now_unix, proc_mem, AppCgroups, AppSlot, AppState, Controller, EventKind,
    PurgeSummary, StartError, StartTiming, StopError, FREEZE_TIMEOUT,
};
use crate::config::{PurgePolicy, VmConfig, VmPrefetch};
use crate::guestmaps::{GuestMaps, MapsSummary};
use crate::probe;
use procswap::memkind::MemKind;
use procswap::vm::loading::{self, Part};
use procswap::vm::{
    self, Background, GuestRam, PageCounts, Plan, Qmp, QmpError, TwinkleConfig, TwinkleStats,
};
use procswap::{
    ActivationPlan, Candidates, FetchOptions, LoadingSetRecorder, NoProgress, PrefetchOptions,
    Range, Recording, ResidencySnapshot, Target,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use torpor_api as api;

/// Guest classes fetched before `cont` in `priority` mode: 0..=5 (Kernel .. User_Data).
pub const BEFORE_CONT_MAX_CLASS: u8 = 5;

/// Runtime state of a VM app (not persisted, except the guest RAM map: `state_dir/vm/`).
#[derive(Default)]
pub(crate) struct VmRuntime {
    /// Maps from the last Stop, and the agent's name.
    maps: Option<(GuestMaps, String)>,
    ram: Option<GuestRam>,
    background: Option<Background>,
    last_background: Option<TwinkleStats>,
    /// `loading-set`: what the next Start's recorder watches (computed after the purge).
    candidates: Option<Candidates>,
    /// `loading-set`: the purge layout computed at this Stop (taken by the purge).
    layout: Option<Vec<Range>>,
    /// `loading-set` Start: the recorder prepared before the thaw, the ranges the background
    /// fetches first, the recorder thread, its stop flag, and the first-response flag.
    pending_recorder: Option<LoadingSetRecorder>,
    preload: Vec<Range>,
    recorder: Option<JoinHandle<Vec<Recording>>>,
    rec_stop: Arc<AtomicBool>,
    first_response: Arc<AtomicBool>,
    /// `loading-set`: what the next Start fetches, computed by the Stop ([`StartPlan`]).
    start_plan: Option<StartPlan>,
    /// `loading-set` Start: QEMU's file pages for the background, then that fetch under way
    /// (after the first response) and its stop flag.
    pending_files: Option<ActivationPlan>,
    files_background: Option<JoinHandle<activation::BackgroundReport>>,
    files_stop: Arc<AtomicBool>,
}

/// A VM's `loading-set` Start as its Stop computes it — guest RAM, the guest's maps and QEMU's
/// mappings stay as they are while the guest is paused and QEMU frozen — so the Start walks
/// nothing big (computed at Start: 6-9 ms of the time to `cont` with a 512 MiB guest). A Start
/// after a torpord restart computes it from the saved set (without QEMU's file pages).
struct StartPlan {
    /// The QEMU process it is for.
    pid: i32,
    /// Cycles merged into the set.
    cycles: u32,
    /// Guest RAM in classes, free pages apart (the background's segments).
    plan: Plan,
    /// The set's anonymous pages touched before the first response, in fetch order: those read
    /// with `MADV_WILLNEED`, and the copy-on-write pages of QEMU's private file mappings (its
    /// own and its libraries' data), which only a fault reads from swap.
    first: Vec<Range>,
    first_cow: Vec<Range>,
    /// The set's other anonymous pages (the background's first ranges).
    later: Vec<Range>,
    /// QEMU's own memory (its private mappings outside guest RAM): what the recorder watches
    /// besides guest RAM, and what the background fetches after the set.
    own: Vec<Range>,
    /// QEMU's file pages by part: its binary's and libraries' pages resident at Stop (the
    /// purge's memory-cgroup reclaim evicts those charged to QEMU), split by the set.
    files: Option<ActivationPlan>,
}

impl StartPlan {
    /// The anonymous part from `set` over `plan`, cut by QEMU's (`qpid`) private file mappings;
    /// QEMU's own memory outside `ram` (one read of its maps for both).
    fn compute(qpid: i32, ram: &GuestRam, plan: Plan, set: Option<&procswap::LoadingSet>) -> Self {
        let (first, later) = set.map_or_else(Default::default, |s| {
            (
                loading::ordered(s, &plan, Part::First),
                loading::ordered(s, &plan, Part::Later),
            )
        });
        let maps = vm::qemu_maps(qpid).unwrap_or_default();
        let (first, first_cow) = loading::split_cow(&first, &vm::file_private_ranges(&maps));
        Self {
            pid: qpid,
            cycles: set.map_or(0, |s| s.cycles),
            plan,
            first,
            first_cow,
            later,
            own: vm::own_ranges(&maps, ram),
            files: None,
        }
    }
}

pub use torpor_api::{ClassFetch, Evidence};

fn class_fetch(c: &vm::ClassPlan, swapped: u64) -> ClassFetch {
    ClassFetch {
        class: c.class,
        name: vm::class_name(c.class).to_string(),
        planned_pages: c.pages,
        swapped_pages: swapped,
        fetched_pages: 0,
        fetched_bytes: 0,
        ms: 0.0,
    }
}

/// The API's account of guest RAM.
fn ram_report(r: &GuestRam) -> api::GuestRamReport {
    api::GuestRamReport {
        bytes: r.bytes(),
        ranges: r.ranges.clone(),
    }
}

fn pswpin() -> u64 {
    super::vmstat_swaps().map(|(i, _)| i).unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn qmp_connect(v: &VmConfig, deadline: Option<Instant>) -> Result<Qmp, QmpError> {
    match deadline {
        Some(d) => Qmp::connect_retry(&v.qmp, v.qmp_timeout, d),
        None => Qmp::connect(&v.qmp, v.qmp_timeout),
    }
}

/// Why a VM app's Start failed (after a cold start, or resuming it); the state it is left in is
/// chosen by [`Controller::fail_start`].
#[derive(Debug, thiserror::Error)]
pub enum VmStartError {
    /// After a cold start: QMP did not answer within the readiness timeout.
    #[error("{0}")]
    Qmp(QmpError),
    #[error("thaw failed: {0}")]
    Thaw(procswap::Error),
    /// Connecting to QMP or its `cont` (both answered as one step).
    #[error("QMP cont: {0}")]
    Cont(QmpError),
    #[error("{0}")]
    NotReady(probe::ProbeError),
}

/// Why a VM app's Stop failed: the VM is left (or put back) running.
#[derive(Debug, thiserror::Error)]
pub enum VmStopError {
    #[error("QMP: {0}")]
    Connect(QmpError),
    #[error("QMP stop: {0}")]
    Pause(QmpError),
    #[error("freeze failed: {0} (VM continued)")]
    Freeze(procswap::Error),
}

/// Stop step 1: the guest agent's maps (best effort).
struct AgentMaps {
    maps: Option<(GuestMaps, String)>,
    note: String,
    ms: f64,
}

/// Stop steps 2 and 3: QMP `stop` and the guest RAM found behind it.
struct Paused {
    before: String,
    after: String,
    qmp_stop_ms: f64,
    ram: Option<GuestRam>,
}

/// Stop steps 5 and 6: the purge and the evidence around it.
struct VmPurge {
    purge: Option<PurgeSummary>,
    purge_s: f64,
    evidence: api::StopEvidence,
    /// `loading-set`: the recording merged, the layout, what the next Start watches.
    loading_notes: Vec<String>,
}

/// Whether the purge evicted guest RAM: its resident pages fell to 1 % or less (QEMU's resident
/// bytes to 10 % or less when guest RAM is unknown).
fn is_evicted(before: &Evidence, after: &Evidence, purged: bool) -> bool {
    match (before.guest_resident_pages, after.guest_resident_pages) {
        (Some(b), Some(a)) => purged && a * 100 <= b,
        _ => purged && after.qemu_resident_bytes * 100 <= before.qemu_resident_bytes.max(1) * 10,
    }
}

/// `fresh` when the agent's maps came with the last Stop, else `none`.
fn maps_word(fresh: bool) -> String {
    if fresh { "fresh" } else { "none" }.to_string()
}

/// The guest's page counts in its RAM (when RAM is known).
fn guest_counts(qpid: i32, ram: Option<&GuestRam>) -> Option<PageCounts> {
    ram.and_then(|r| vm::page_counts(qpid, &r.hva_ranges()).ok())
}

/// The mode a resume runs with (`priority` needs maps and guest RAM, else it runs as `full`),
/// and the note on the maps it found.
fn effective_mode(
    mode: VmPrefetch,
    maps: Option<&(GuestMaps, String)>,
    ram: Option<&GuestRam>,
) -> (VmPrefetch, String) {
    let mut note = match (maps, ram) {
        (Some((m, a)), Some(_)) => format!(
            "maps from {a} at the last Stop{}",
            if m.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", m.notes.join("; "))
            }
        ),
        (None, _) => "no guest maps from the last Stop".to_string(),
        (Some(_), None) => "guest RAM unknown (discovery failed at the last Stop)".to_string(),
    };
    let effective = match (mode, maps, ram) {
        (m @ (VmPrefetch::Priority | VmPrefetch::LoadingSet), Some(_), Some(_)) => m,
        (m @ (VmPrefetch::Priority | VmPrefetch::LoadingSet), _, _) => {
            note.push_str(&format!("; {} runs as full", m.as_str()));
            VmPrefetch::Full
        }
        (m, _, _) => m,
    };
    (effective, note)
}

/// A prefetch report's bytes and early stop, added to the Start's timing.
fn add_fetched(timing: &mut StartTiming, r: &procswap::PrefetchReport) {
    timing.prefetch_bytes += r.read_issued_bytes;
    if let Some(s) = &r.stopped {
        timing.prefetch_stopped = Some(format!("{s:?}"));
    }
}

/// The VM a Start prefetches for before `cont`: its slot, QEMU's pid, guest RAM and the
/// guest's maps.
#[derive(Clone, Copy)]
struct Prefetching<'a> {
    slot: &'a AppSlot,
    qpid: i32,
    ram: &'a GuestRam,
    maps: &'a GuestMaps,
}

impl Prefetching<'_> {
    /// The guest's RAM in classes, free pages apart, from its maps.
    fn plan(&self) -> Plan {
        Plan::build(self.ram, procswap::sys::page_size(), |pfn| {
            self.maps.classify(pfn)
        })
    }
}

/// What a `priority` prefetch works from: the plan, QEMU's own memory, and how many pages of
/// each (QEMU's own first, then every class) were on swap before it.
struct PriorityInput {
    qpid: i32,
    plan: Plan,
    own: Vec<procswap::Range>,
    own_before: u64,
    before: Vec<u64>,
}

/// What a `priority` prefetch read before `cont`: the prefetch reports (in call order) and
/// the per-class account.
#[derive(Default)]
struct PriorityFetch {
    reports: Vec<procswap::PrefetchReport>,
    classes: Vec<ClassFetch>,
    qemu_own_pages: u64,
    qemu_own_ms: f64,
    fetch_call_ms: f64,
}

impl Controller {
    fn vm_cfg<'a>(&self, slot: &'a AppSlot) -> &'a VmConfig {
        slot.cfg
            .vm
            .as_ref()
            .expect("validated: vm apps have vm = {...}")
    }

    fn vm_ram_path(&self, name: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("vm")
            .join(format!("{name}.ram.json"))
    }

    fn evidence(&self, pid: i32, ram: Option<&GuestRam>) -> Evidence {
        let g: Option<PageCounts> =
            ram.and_then(|r| vm::page_counts_exact(pid, &r.hva_ranges()).ok());
        let m = proc_mem(pid).unwrap_or_default();
        Evidence {
            guest_resident_pages: g.map(|g| g.resident),
            guest_zero_pages: g.map(|g| g.zero_page),
            guest_swapped_pages: g.map(|g| g.swapped),
            qemu_resident_bytes: m.rss,
            qemu_swapped_bytes: m.swap,
            swap_cached_bytes: procswap::sys::meminfo().map(|m| m.swap_cached).unwrap_or(0),
        }
    }

    /// `vm` part of an app's status.
    pub(super) fn vm_status(&self, slot: &AppSlot) -> api::VmStatus {
        let rt = lock(&slot.vm);
        let bg = rt
            .background
            .as_ref()
            .map(|b| b.stats())
            .or_else(|| rt.last_background.clone());
        api::VmStatus {
            qmp: self.vm_cfg(slot).qmp.clone(),
            agent: self.vm_cfg(slot).agent.clone(),
            prefetch: slot.cfg.vm_prefetch_mode().as_str().to_string(),
            maps: rt.maps.as_ref().map(|(m, a)| m.summary(a)),
            guest_ram_bytes: rt.ram.as_ref().map(|r| r.bytes()),
            background: bg,
            recording: rt.recorder.as_ref().is_some_and(|h| !h.is_finished()),
        }
    }

    /// After a cold start of a VM app: QMP answers (within the readiness timeout).
    pub(super) fn vm_after_cold_start(
        &self,
        slot: &AppSlot,
        t0: Instant,
    ) -> Result<api::VmStart, VmStartError> {
        let v = self.vm_cfg(slot);
        let deadline = t0 + slot.cfg.ready_timeout.max(v.qmp_timeout);
        let mut q = qmp_connect(v, Some(deadline)).map_err(VmStartError::Qmp)?;
        let st = q.query_status().map_err(VmStartError::Qmp)?;
        Ok(api::VmStart::Cold(api::VmColdStart {
            cold: true,
            mode: slot.cfg.vm_prefetch_mode().as_str().to_string(),
            qemu: q.qemu_version(),
            status: st.status,
        }))
    }

    /// The background fetchers of the last Start, stopped (joined outside the lock: status reads
    /// never wait for an operation); Twinkle's last statistics kept, and the report of QEMU's
    /// file fetch returned for the Stop's notes.
    fn stop_background(&self, slot: &AppSlot) -> Option<String> {
        let bg = lock(&slot.vm).background.take();
        if let Some(bg) = bg {
            let st = bg.stop();
            lock(&slot.vm).last_background = Some(st);
        }
        let files = {
            let mut rt = lock(&slot.vm);
            rt.files_stop.store(true, Ordering::SeqCst);
            rt.files_background.take()
        };
        match files.map(|h| h.join()) {
            Some(Ok(r)) => Some(format!("QEMU's files: {}", r.describe())),
            Some(Err(_)) => Some("QEMU's file background thread panicked".into()),
            None => None,
        }
    }

    /// Stop of a VM app (its `op` lock held): the guest's maps, QMP `stop` and guest RAM,
    /// freeze, purge with evidence, then the record and the answer.
    pub(super) fn stop_vm(&self, slot: &AppSlot) -> Result<api::StopAnswer, StopError> {
        let t0 = Instant::now();
        let (cgs, o) = match self.begin_stop(slot) {
            Ok(x) => x,
            Err(already) => return Ok(api::StopAnswer::Already(already)),
        };
        let qpid = lock(&slot.st)
            .pid
            .filter(|p| o.pids.contains(p))
            .unwrap_or(o.pids[0]);
        // The background fetcher of the last Start must not run on a stopped/frozen QEMU.
        let files_note = self.stop_background(slot);
        let mut loading_notes = self.vm_recording_stop(slot);
        loading_notes.extend(files_note);
        let v = self.vm_cfg(slot);
        let fail = |e: VmStopError| self.stop_failed(slot, e);
        let agent = self.guest_maps(slot, v);
        let paused = self.pause_vm(slot, v, qpid).map_err(fail)?;
        let before = self.evidence(qpid, paused.ram.as_ref());
        let freeze_s = self.freeze_vm(v, &cgs, &o.pids).map_err(fail)?;
        self.set(slot, |r| {
            r.transition(AppState::Suspended);
            r.pid = Some(qpid);
            r.last_stop_unix = Some(now_unix());
            r.counters.stops += 1;
        });
        let ram = paused.ram.as_ref();
        let files = self.vm_files(slot, qpid, &mut loading_notes);
        let plan = self.vm_layout(slot, qpid, ram, agent.maps.as_ref(), &mut loading_notes);
        let mut purged = self.purge_vm(slot, qpid, ram, before);
        self.vm_candidates(slot, qpid, ram, (plan, files), &mut loading_notes);
        purged.loading_notes = loading_notes;
        self.save_guest_ram(slot, paused.ram.as_ref());
        Ok(self.vm_stopped(slot, t0, agent, paused, freeze_s, purged))
    }

    /// Stop step 1: the guest's maps, while it runs. Never fails the Stop.
    fn guest_maps(&self, slot: &AppSlot, v: &VmConfig) -> AgentMaps {
        let ta = Instant::now();
        let (maps, note) = match &v.agent {
            None => (None, "no agent configured (vm.agent)".into()),
            Some(p) => match GuestMaps::fetch_from_socket(p, v.agent_timeout, 0) {
                Ok((m, agent)) => {
                    let note = format!("{agent} at {}", p.display());
                    (Some((m, agent)), note)
                }
                Err(e) => {
                    let note = format!("agent {}: {e}; stopping without guest maps", p.display());
                    self.event(Some(&slot.cfg.name), EventKind::Agent, note.clone());
                    (None, note)
                }
            },
        };
        AgentMaps {
            maps,
            note,
            ms: ms(ta.elapsed()),
        }
    }

    /// Stop steps 2 and 3: QMP `stop`, then the guest RAM behind it (unknown when discovery
    /// fails: then the whole QEMU process is purged).
    fn pause_vm(&self, slot: &AppSlot, v: &VmConfig, qpid: i32) -> Result<Paused, VmStopError> {
        let tq = Instant::now();
        let mut q = qmp_connect(v, None).map_err(VmStopError::Connect)?;
        let status = |q: &mut Qmp| {
            q.query_status()
                .map(|s| s.status)
                .unwrap_or_else(|e| format!("unknown ({e})"))
        };
        let before = status(&mut q);
        q.stop().map_err(VmStopError::Pause)?;
        let qmp_stop_ms = ms(tq.elapsed());
        let after = status(&mut q);
        let ram = match GuestRam::discover(&mut q, qpid) {
            Ok(r) => Some(r),
            Err(e) => {
                self.event(Some(&slot.cfg.name), EventKind::Error, format!("guest RAM discovery failed ({e}): the whole QEMU process is purged; the next Start fetches it whole"));
                None
            }
        };
        Ok(Paused {
            before,
            after,
            qmp_stop_ms,
            ram,
        })
    }

    /// Stop step 4: freeze (procswap purges only frozen targets); on failure the VM continues.
    fn freeze_vm(&self, v: &VmConfig, cgs: &AppCgroups, pids: &[i32]) -> Result<f64, VmStopError> {
        let tf = Instant::now();
        for f in self.freezers(cgs, pids) {
            if let Err(e) = f.freeze(FREEZE_TIMEOUT) {
                let _ = f.thaw(FREEZE_TIMEOUT);
                if let Ok(mut q) = qmp_connect(v, None) {
                    let _ = q.cont();
                }
                return Err(VmStopError::Freeze(e));
            }
        }
        Ok(tf.elapsed().as_secs_f64())
    }

    /// Stop steps 5 and 6: purge (per policy) and the evidence that guest RAM left.
    fn purge_vm(
        &self,
        slot: &AppSlot,
        qpid: i32,
        ram: Option<&GuestRam>,
        before: Evidence,
    ) -> VmPurge {
        let tp = Instant::now();
        let mut purge = if self.cfg.purge == PurgePolicy::Always {
            self.purge_app(slot, false).ok()
        } else {
            None
        };
        let mut after = self.evidence(qpid, ram);
        let mut evicted = is_evicted(&before, &after, purge.is_some());
        // MADV_PAGEOUT cannot isolate pages still in a CPU's LRU batch: with THP-backed guest
        // RAM a batch holds megabytes (seen: 8192 of 16384 fresh pages left once). They reach
        // the LRU shortly after; one more purge takes them.
        let mut purge_retries = 0;
        if purge.is_some() && !evicted {
            std::thread::sleep(Duration::from_millis(200));
            purge_retries = 1;
            if let Ok(p2) = self.purge_app(slot, false) {
                purge = Some(p2);
            }
            after = self.evidence(qpid, ram);
            evicted = is_evicted(&before, &after, purge.is_some());
        }
        let purge_s = tp.elapsed().as_secs_f64();
        if purge.is_some() && !evicted {
            self.event(
                Some(&slot.cfg.name),
                EventKind::Error,
                format!("purge left guest RAM resident: before {before:?}, after {after:?}"),
            );
        }
        VmPurge {
            purge,
            purge_s,
            evidence: api::StopEvidence {
                before,
                after,
                evicted,
                purge_retries,
            },
            loading_notes: Vec::new(),
        }
    }

    /// The guest RAM map, kept in `state_dir/vm/` for a Start after a torpord restart.
    fn save_guest_ram(&self, slot: &AppSlot, ram: Option<&GuestRam>) {
        let Some(r) = ram else { return };
        let p = self.vm_ram_path(&slot.cfg.name);
        let wr = std::fs::create_dir_all(p.parent().expect("vm dir"))
            .and_then(|_| serde_json::to_vec(r).map_err(std::io::Error::other))
            .and_then(|b| std::fs::write(&p, b));
        if let Err(e) = wr {
            self.event(
                Some(&slot.cfg.name),
                EventKind::Error,
                format!("saving {}: {e}", p.display()),
            );
        }
    }

    /// The end of a VM Stop: maps and RAM kept for the next Start, the event, the reserve,
    /// the answer.
    fn vm_stopped(
        &self,
        slot: &AppSlot,
        t0: Instant,
        agent: AgentMaps,
        paused: Paused,
        freeze_s: f64,
        purged: VmPurge,
    ) -> api::StopAnswer {
        let name = slot.cfg.name.clone();
        let summary: Option<MapsSummary> = agent.maps.as_ref().map(|(m, a)| m.summary(a));
        let guest_ram = paused.ram.as_ref().map(ram_report);
        {
            let mut rt = lock(&slot.vm);
            rt.maps = agent.maps;
            rt.ram = paused.ram;
        }
        let st = self.set(slot, |r| {
            r.in_flight = None;
            r.state
        });
        let ev = &purged.evidence;
        self.event(
            Some(&name),
            EventKind::Stop,
            format!(
                "{} (vm: maps {}, QMP stop {} ms, freeze {freeze_s:.3}s, purge {:.3}s, guest resident {:?} -> {:?} pages, evicted {})",
                st.as_str(),
                maps_word(summary.is_some()),
                paused.qmp_stop_ms,
                purged.purge_s,
                ev.before.guest_resident_pages,
                ev.after.guest_resident_pages,
                ev.evicted
            ),
        );
        self.enforce_reserve(Some(&name));
        let st = lock(&slot.st).state;
        api::StopAnswer::Vm(Box::new(api::VmStopped {
            app: name,
            state: st,
            timing: api::StopTiming {
                freeze_s,
                working_set_s: 0.0,
                purge_s: purged.purge_s,
                total_s: t0.elapsed().as_secs_f64(),
            },
            purge: purged.purge,
            vm: api::VmStop {
                maps: maps_word(summary.is_some()),
                agent_note: agent.note,
                agent_ms: agent.ms,
                agent: summary,
                qmp_stop_ms: paused.qmp_stop_ms,
                status_before: paused.before,
                status_after: paused.after,
                guest_ram,
                evidence: purged.evidence,
                loading_set_notes: purged.loading_notes,
            },
        }))
    }

    /// Resume a frozen VM app: guest RAM and maps, prefetch by `mode`, thaw, QMP `cont`, the
    /// background fetcher, probe.
    pub(super) fn resume_vm(
        &self,
        slot: &AppSlot,
        t0: Instant,
        pids: Vec<i32>,
        mode: VmPrefetch,
    ) -> Result<api::StartAnswer, StartError> {
        let pswpin0 = pswpin();
        self.begin_resume(slot, true);
        let qpid = lock(&slot.st)
            .pid
            .filter(|p| pids.contains(p))
            .unwrap_or(pids[0]);
        let (ram, maps) = self.guest_ram_and_maps(slot, qpid);
        let (effective, maps_note) = effective_mode(mode, maps.as_ref(), ram.as_ref());
        let mut timing = StartTiming {
            prefetch_mode: Some(effective.as_str().to_string()),
            ..Default::default()
        };
        let mut rep = api::VmResume {
            mode: mode.as_str().to_string(),
            effective: effective.as_str().to_string(),
            maps: maps_word(maps.is_some()),
            maps_note,
            guest_ram_bytes: ram.as_ref().map(|r| r.bytes()),
            guest_swapped_before_pages: guest_counts(qpid, ram.as_ref()).map(|g| g.swapped),
            ..Default::default()
        };
        let tpf = Instant::now();
        let plan = match (effective, &ram, &maps) {
            (VmPrefetch::None, _, _) => None,
            (m @ (VmPrefetch::Priority | VmPrefetch::LoadingSet), Some(ram), Some((maps, _))) => {
                let g = Prefetching {
                    slot,
                    qpid,
                    ram,
                    maps,
                };
                Some(if m == VmPrefetch::Priority {
                    self.prefetch_priority(g, &mut timing, &mut rep)
                } else {
                    self.prefetch_loading(g, &mut timing, &mut rep)
                })
            }
            _ => {
                self.prefetch_full(slot, qpid, &mut timing);
                None
            }
        };
        if effective != VmPrefetch::None {
            lock(&slot.st).counters.prefetches += 1;
        }
        let prefetch_d = tpf.elapsed();
        timing.prefetch_s = prefetch_d.as_secs_f64();
        rep.prefetch_ms = ms(prefetch_d);
        rep.guest_swapped_after_prefetch_pages =
            guest_counts(qpid, ram.as_ref()).map(|g| g.swapped);
        rep.pswpin_delta_prefetch = pswpin().saturating_sub(pswpin0);
        rep.skipped_free_pages = plan.as_ref().map(|p| p.skipped_free_pages).unwrap_or(0);
        let run = (qpid, plan.as_ref(), ram.as_ref());
        if let Err(e) = self.run_vm(slot, &pids, run, &mut timing, &mut rep) {
            return Err(self.fail_start(slot, e));
        }
        timing.total_s = t0.elapsed().as_secs_f64();
        timing.unix_time = now_unix();
        rep.prefetched_bytes = timing.prefetch_bytes;
        rep.prefetched_pages = timing.prefetch_bytes / procswap::sys::page_size();
        rep.thaw_ms = ms(Duration::from_secs_f64(timing.thaw_s));
        rep.probe_ms = ms(Duration::from_secs_f64(timing.probe_s));
        rep.ready_ms = ms(t0.elapsed());
        rep.pswpin_delta = pswpin().saturating_sub(pswpin0);
        self.finish_start_vm(slot, timing, Some(api::VmStart::Resume(Box::new(rep))))
    }

    /// Guest RAM: from the Stop, or (after a torpord restart) from state_dir/vm if it is the same
    /// QEMU process; and the maps of the last Stop.
    fn guest_ram_and_maps(
        &self,
        slot: &AppSlot,
        qpid: i32,
    ) -> (Option<GuestRam>, Option<(GuestMaps, String)>) {
        let mut rt = lock(&slot.vm);
        if rt.ram.is_none() {
            rt.ram = std::fs::read(self.vm_ram_path(&slot.cfg.name))
                .ok()
                .and_then(|b| serde_json::from_slice::<GuestRam>(&b).ok())
                .filter(|r| r.pid == qpid);
        }
        (rt.ram.clone(), rt.maps.clone())
    }

    /// A failed prefetch step: an event; the Start goes on (demand paging brings the rest).
    fn note_prefetch_error(&self, slot: &AppSlot, what: &str, e: &dyn std::fmt::Display) {
        self.event(
            Some(&slot.cfg.name),
            EventKind::Error,
            format!("{what} failed (continuing; demand paging brings the rest): {e}"),
        );
    }

    /// `full` mode: the whole QEMU process.
    fn prefetch_full(&self, slot: &AppSlot, qpid: i32, timing: &mut StartTiming) {
        let opts = self.prefetch_options();
        match procswap::prefetch_with(&*self.backend, qpid, &opts, &NoProgress) {
            Ok(r) => add_fetched(timing, &r),
            Err(e) => self.note_prefetch_error(slot, "full prefetch", &e),
        }
    }

    /// `priority` mode: QEMU itself first (its heap, TCG/KVM state: nothing runs without it),
    /// then guest classes 0..=5, free pages excluded. Returns the plan (its later classes are
    /// the background fetcher's).
    fn prefetch_priority(
        &self,
        g: Prefetching,
        timing: &mut StartTiming,
        rep: &mut api::VmResume,
    ) -> Plan {
        let tplan = Instant::now();
        let slot = g.slot;
        let input = self.priority_input(g);
        let ps = procswap::sys::page_size();
        let pre_pages = input.own_before
            + input
                .before
                .iter()
                .take(BEFORE_CONT_MAX_CLASS as usize + 1)
                .sum::<u64>();
        let avail = procswap::sys::meminfo()
            .map(|mi| mi.mem_available)
            .unwrap_or(0);
        // Class order only matters when the fetch can be cut short by the free-memory floor:
        // then one prefetch call per class, in order. Otherwise one call over all of it (each
        // call rescans QEMU: ~0.1-0.5 s here), reads in swap-slot order.
        rep.single_pass = avail >= self.cfg.reserve + pre_pages * ps + (64 << 20);
        rep.plan_ms = ms(tplan.elapsed());
        let f = if rep.single_pass {
            self.fetch_single_pass(slot, &input)
        } else {
            self.fetch_class_ordered(slot, &input)
        };
        for r in &f.reports {
            add_fetched(timing, r);
        }
        rep.classes = f.classes;
        rep.qemu_own_pages = f.qemu_own_pages;
        rep.qemu_own_ms = f.qemu_own_ms;
        rep.fetch_call_ms = f.fetch_call_ms;
        input.plan
    }

    /// The plan from the guest's maps, QEMU's own memory, and what of each is on swap now.
    fn priority_input(&self, g: Prefetching) -> PriorityInput {
        let (plan, qpid) = (g.plan(), g.qpid);
        let own = vm::qemu_own_ranges(qpid, g.ram).unwrap_or_else(|e| {
            self.note_prefetch_error(g.slot, "listing QEMU's own memory", &e);
            vec![]
        });
        let own_before = swapped_in(qpid, &own);
        let before = plan
            .classes
            .iter()
            .map(|c| {
                if c.pages > 0 {
                    swapped_in(qpid, &c.ranges)
                } else {
                    0
                }
            })
            .collect();
        PriorityInput {
            qpid,
            plan,
            own,
            own_before,
            before,
        }
    }

    /// `priority` with room to spare: one call over QEMU's own memory and classes 0..=5.
    fn fetch_single_pass(&self, slot: &AppSlot, input: &PriorityInput) -> PriorityFetch {
        let (qpid, ps) = (input.qpid, procswap::sys::page_size());
        let mut all = input.own.clone();
        all.extend(input.plan.ranges_of(0, BEFORE_CONT_MAX_CLASS));
        let mut f = PriorityFetch::default();
        let tf = Instant::now();
        match vm::fetch_ranges(&*self.backend, qpid, all, &self.prefetch_options()) {
            Ok(r) => f.reports.push(r),
            Err(e) => self.note_prefetch_error(slot, "priority prefetch", &e),
        }
        f.fetch_call_ms = ms(tf.elapsed());
        f.qemu_own_pages = input
            .own_before
            .saturating_sub(swapped_in(qpid, &input.own));
        for (c, &sw) in input.plan.classes.iter().zip(&input.before) {
            let mut cf = class_fetch(c, sw);
            if c.class <= BEFORE_CONT_MAX_CLASS && sw > 0 {
                cf.fetched_pages = sw.saturating_sub(swapped_in(qpid, &c.ranges));
                cf.fetched_bytes = cf.fetched_pages * ps;
            }
            f.classes.push(cf);
        }
        f
    }

    /// `priority` near the free-memory floor: QEMU's own memory, then classes 0..=5, one call
    /// each, in order.
    fn fetch_class_ordered(&self, slot: &AppSlot, input: &PriorityInput) -> PriorityFetch {
        let ps = procswap::sys::page_size();
        let mut sets = vec![input.own.clone()];
        sets.extend(
            input
                .plan
                .classes
                .iter()
                .take(BEFORE_CONT_MAX_CLASS as usize + 1)
                .map(|c| c.ranges.clone()),
        );
        let opts = self.prefetch_options();
        let res = vm::fetch_ordered(&*self.backend, input.qpid, sets, &opts).unwrap_or_else(|e| {
            self.note_prefetch_error(slot, "class-ordered prefetch", &e);
            vec![]
        });
        let mut res = res.into_iter();
        let mut f = PriorityFetch::default();
        if let Some(Some((r, t))) = res.next() {
            f.qemu_own_pages = r.read_issued_bytes / ps;
            f.qemu_own_ms = t;
            f.reports.push(r);
        }
        for (c, &sw) in input.plan.classes.iter().zip(&input.before) {
            let mut cf = class_fetch(c, sw);
            if let Some(Some((r, t))) = (c.class <= BEFORE_CONT_MAX_CLASS)
                .then(|| res.next())
                .flatten()
            {
                cf.fetched_pages = r.read_issued_bytes / ps;
                cf.fetched_bytes = r.read_issued_bytes;
                cf.ms = t;
                f.reports.push(r);
            }
            f.classes.push(cf);
        }
        f
    }

    /// Resume steps after the prefetch: thaw, then `cont` (a frozen QEMU cannot answer QMP),
    /// the background fetcher (priority mode), the readiness probe. `run`: QEMU's pid, the
    /// plan and the guest RAM.
    fn run_vm(
        &self,
        slot: &AppSlot,
        pids: &[i32],
        run: (i32, Option<&Plan>, Option<&GuestRam>),
        timing: &mut StartTiming,
        rep: &mut api::VmResume,
    ) -> Result<(), VmStartError> {
        let v = self.vm_cfg(slot);
        let tt = Instant::now();
        let cgs = lock(&slot.st).cgroups.clone();
        for f in self.freezers(&cgs, pids) {
            f.thaw(FREEZE_TIMEOUT).map_err(VmStartError::Thaw)?;
        }
        timing.thaw_s = tt.elapsed().as_secs_f64();
        let tc = Instant::now();
        qmp_connect(v, Some(Instant::now() + v.qmp_timeout))
            .and_then(|mut q| q.cont())
            .map_err(VmStartError::Cont)?;
        rep.cont_ms = ms(tc.elapsed());
        // The recorder (loading-set mode), the rest in the background (Twinkle).
        let (qpid, plan, ram) = run;
        let loading = rep.loading_set.is_some();
        if loading {
            self.start_recorder_thread(slot);
            self.start_file_background(slot);
        }
        let bg_started = match (plan, ram, v.background) {
            (Some(p), Some(r), true) => self.start_background(slot, qpid, p, r, loading),
            _ => false,
        };
        let tp = Instant::now();
        let res = match &slot.cfg.ready {
            Some(p) => {
                let alive = self.alive(&cgs, &|| "QEMU exited".into());
                probe::wait_ready(p, slot.cfg.ready_timeout, alive)
            }
            None => Ok(0),
        };
        timing.probe_s = tp.elapsed().as_secs_f64();
        match res {
            Ok(n) => timing.probes = n,
            Err(e) => {
                let _ = self.stop_background(slot);
                return Err(VmStartError::NotReady(e));
            }
        }
        lock(&slot.vm).first_response.store(true, Ordering::SeqCst);
        let bg = lock(&slot.vm).background.as_ref().map(|b| b.stats());
        rep.background = if bg_started { bg } else { None };
        Ok(())
    }

    /// The background fetcher (Twinkle) over the plan's classes after `cont`; false (and an
    /// event) when it could not start.
    /// `loading`: the fetches map nothing (the recorder must see only the guest's touches),
    /// the loading set's later part, QEMU's own memory and classes 0-5 come first, at low I/O
    /// priority, once the probe answered.
    fn start_background(
        &self,
        slot: &AppSlot,
        qpid: i32,
        p: &Plan,
        r: &GuestRam,
        loading: bool,
    ) -> bool {
        let mut cfg = TwinkleConfig {
            prefetch: self.prefetch_options(),
            ..TwinkleConfig::default()
        };
        if loading {
            let mut rt = lock(&slot.vm);
            cfg.prefetch.threads = 0;
            cfg.preload = std::mem::take(&mut rt.preload);
            cfg.io_priority = Some(procswap::sys::IoPriority::BestEffort(7));
            cfg.start_after = Some((rt.first_response.clone(), Duration::from_secs(1)));
        }
        match procswap::select_backend(self.backend_pref)
            .and_then(|b| Background::spawn(b, qpid, p, BEFORE_CONT_MAX_CLASS, r.hva_ranges(), cfg))
        {
            Ok(bg) => {
                lock(&slot.vm).background = Some(bg);
                true
            }
            Err(e) => {
                self.event(
                    Some(&slot.cfg.name),
                    EventKind::Error,
                    format!("background fetcher not started: {e}"),
                );
                false
            }
        }
    }
}

/// Pages of `r` on swap in QEMU (0 when they cannot be counted).
fn swapped_in(qpid: i32, r: &[procswap::Range]) -> u64 {
    vm::page_counts(qpid, r).map(|k| k.swapped).unwrap_or(0)
}

/// Pages in `ranges`.
fn range_pages(ranges: &[Range], ps: u64) -> u64 {
    ranges.iter().map(|r| r.len / ps).sum()
}

/// The plan of guest RAM from a Stop's maps (every page `Outside` without maps).
fn plan_of(ram: &GuestRam, maps: Option<&(GuestMaps, String)>) -> Plan {
    Plan::build(ram, procswap::sys::page_size(), |pfn| {
        maps.map_or(vm::PageClass::Outside, |(m, _)| m.classify(pfn))
    })
}

/// `loading-set` mode (see the module doc).
impl Controller {
    fn vm_keeps_loading_set(&self, slot: &AppSlot) -> bool {
        slot.cfg.vm_prefetch_mode() == VmPrefetch::LoadingSet
    }

    /// The purge's layout for a VM (computed by its Stop; taken once).
    pub(super) fn take_vm_layout(&self, slot: &AppSlot) -> Option<Vec<Range>> {
        lock(&slot.vm).layout.take()
    }

    /// Stop: end the last Start's recorder and merge its recording into the saved set.
    fn vm_recording_stop(&self, slot: &AppSlot) -> Vec<String> {
        let h = {
            let mut rt = lock(&slot.vm);
            rt.rec_stop.store(true, Ordering::SeqCst);
            rt.pending_recorder = None;
            rt.recorder.take()
        };
        match h.map(|h| h.join()) {
            Some(Ok(recs)) => self.merge_recordings(&slot.cfg.name, recs),
            Some(Err(_)) => vec!["loading-set recorder thread panicked".into()],
            None => Vec::new(),
        }
    }

    /// The saved set of QEMU process `qpid` (`None`, with a note, when there is none to use).
    fn vm_loading_set(
        &self,
        slot: &AppSlot,
        qpid: i32,
        notes: &mut Vec<String>,
    ) -> Option<procswap::LoadingSet> {
        match procswap::LoadingSet::load(&activation::set_path(self, &slot.cfg.name, qpid)) {
            Ok(procswap::Loaded::Set(s)) => Some(*s),
            Ok(procswap::Loaded::Missing) => {
                notes.push("no loading set yet: nothing read before cont".into());
                None
            }
            Ok(procswap::Loaded::Ignored(n)) => {
                notes.push(n);
                None
            }
            Err(e) => {
                notes.push(format!("loading set unreadable: {e}"));
                None
            }
        }
    }

    /// Stop, before the purge (loading-set mode): QEMU's file pages resident now (its binary,
    /// libraries and the files it has open), for the next Start's recorder and file plan.
    fn vm_files(
        &self,
        slot: &AppSlot,
        qpid: i32,
        notes: &mut Vec<String>,
    ) -> Option<ResidencySnapshot> {
        if !self.vm_keeps_loading_set(slot) {
            return None;
        }
        Target::open(qpid, "QEMU's file pages")
            .and_then(|t| ResidencySnapshot::take_objects(&t, MemKind::File))
            .map_err(|e| notes.push(format!("QEMU's file pages left out: {e}")))
            .ok()
    }

    /// Stop (loading-set mode, guest RAM known): the next Start's plan and the purge layout
    /// from the saved set and this Stop's maps.
    fn vm_layout(
        &self,
        slot: &AppSlot,
        qpid: i32,
        ram: Option<&GuestRam>,
        maps: Option<&(GuestMaps, String)>,
        notes: &mut Vec<String>,
    ) -> Option<(StartPlan, Option<procswap::LoadingSet>)> {
        if !self.vm_keeps_loading_set(slot) {
            return None;
        }
        let ram = ram?;
        let set = self.vm_loading_set(slot, qpid, &mut Vec::new());
        let sp = StartPlan::compute(qpid, ram, plan_of(ram, maps), set.as_ref());
        if let Some(set) = &set {
            let mut l: Vec<Range> = sp.first.clone();
            l.extend_from_slice(&sp.first_cow);
            l.extend_from_slice(&sp.later);
            let ps = procswap::sys::page_size();
            notes.push(format!(
                "purge layout: the loading set first ({} pages in {} ranges, {} cycles merged)",
                range_pages(&l, ps),
                l.len(),
                set.cycles
            ));
            lock(&slot.vm).layout = Some(l).filter(|l| !l.is_empty());
        }
        Some((sp, set))
    }

    /// After the purge (loading-set mode): what the next Start's recorder watches (QEMU's pages
    /// on swap minus guest-free pages, and its file pages resident before the purge) and the
    /// next Start's plan, with QEMU's file pages by part (what the purge evicted of them).
    fn vm_candidates(
        &self,
        slot: &AppSlot,
        qpid: i32,
        ram: Option<&GuestRam>,
        (layout, files): (
            Option<(StartPlan, Option<procswap::LoadingSet>)>,
            Option<ResidencySnapshot>,
        ),
        notes: &mut Vec<String>,
    ) {
        let (Some(ram), Some((mut sp, set))) = (ram, layout) else {
            return;
        };
        let ps = procswap::sys::page_size();
        let ranges = (&ram.hva_ranges()[..], &sp.own[..], &sp.plan.free_ranges[..]);
        match loading::candidates(qpid, ranges, files.as_ref(), ps) {
            Ok(c) => {
                notes.push(format!(
                    "the next Start records over {} pages on swap ({} guest-free pages left out) and {} of QEMU's file pages",
                    procswap::memkind::pages(&c.anon),
                    sp.plan.skipped_free_pages,
                    c.object_runs.iter().map(|r| procswap::memkind::pages(r)).sum::<u64>()
                ));
                lock(&slot.vm).candidates = Some(c);
            }
            Err(e) => notes.push(format!("no recording at the next Start: {e}")),
        }
        sp.files = files.and_then(|f| {
            ActivationPlan::of_objects(qpid, &f, set.as_ref())
                .map_err(|e| notes.push(format!("QEMU's file pages not planned: {e}")))
                .ok()
        });
        lock(&slot.vm).start_plan = Some(sp);
    }

    /// `loading-set` Start before `cont`: the set's first part read — copy-on-write pages
    /// faulted in (synchronous: first, on an idle device), QEMU's file pages touched before
    /// the first response (read-ahead), then the rest with `MADV_WILLNEED` (nothing else mapped:
    /// the recorder sees every touch) — the recorder prepared, the background's preload list.
    /// Returns the plan.
    fn prefetch_loading(
        &self,
        g: Prefetching,
        timing: &mut StartTiming,
        rep: &mut api::VmResume,
    ) -> Plan {
        let (slot, qpid, ram) = (g.slot, g.qpid, g.ram);
        let (ps, tplan) = (procswap::sys::page_size(), Instant::now());
        let mut ls = api::VmLoadingSet::default();
        // The Stop's plan, unless QEMU is another process now.
        let taken = lock(&slot.vm).start_plan.take().filter(|p| p.pid == qpid);
        let sp = taken.unwrap_or_else(|| {
            let set = self.vm_loading_set(slot, qpid, &mut ls.notes);
            StartPlan::compute(qpid, ram, g.plan(), set.as_ref())
        });
        ls.cycles = sp.cycles;
        if sp.cycles == 0 && ls.notes.is_empty() {
            ls.notes
                .push("no loading set yet: nothing read before cont".into());
        }
        ls.first_pages = range_pages(&sp.first, ps) + range_pages(&sp.first_cow, ps);
        ls.later_pages = range_pages(&sp.later, ps);
        rep.plan_ms = ms(tplan.elapsed());
        let tf = Instant::now();
        if !sp.first_cow.is_empty() {
            match procswap::plan::map_cow_ranges(qpid, &sp.first_cow, ps) {
                Ok((mapped, _)) => {
                    ls.first_cow_pages = mapped;
                    timing.prefetch_bytes += mapped * ps;
                }
                Err(e) => self.note_prefetch_error(slot, "loading-set copy-on-write pages", &e),
            }
        }
        if let Some(f) = &sp.files {
            self.fetch_vm_files(slot, f, &mut ls, timing);
        }
        if !sp.first.is_empty() {
            let opts = PrefetchOptions {
                threads: 0,
                ..self.prefetch_options()
            };
            match vm::fetch_ranges(&*self.backend, qpid, sp.first, &opts) {
                Ok(r) => add_fetched(timing, &r),
                Err(e) => self.note_prefetch_error(slot, "loading-set prefetch", &e),
            }
        }
        rep.fetch_call_ms = ms(tf.elapsed());
        let mut preload = sp.later;
        preload.extend(sp.own);
        preload.extend(sp.plan.ranges_of(0, BEFORE_CONT_MAX_CLASS));
        let rec = match lock(&slot.vm).candidates.take() {
            Some(c) => LoadingSetRecorder::start(qpid, &c, procswap::RecorderOptions::default())
                .map_err(|e| ls.notes.push(format!("not recorded this time: {e}")))
                .ok(),
            None => {
                ls.notes
                    .push("not recorded this time: no candidates from the last Stop".into());
                None
            }
        };
        ls.recording = rec.is_some();
        {
            let mut rt = lock(&slot.vm);
            rt.pending_recorder = rec;
            rt.preload = preload;
            rt.pending_files = sp.files;
        }
        rep.loading_set = Some(ls);
        sp.plan
    }

    /// Before `cont`: QEMU's file pages of `files`' first part (read-ahead issued by torpord, as
    /// for a process app's first part: no cgroup join in the way of the thaw); files gone or
    /// changed since the Stop are skipped and named.
    fn fetch_vm_files(
        &self,
        slot: &AppSlot,
        files: &ActivationPlan,
        ls: &mut api::VmLoadingSet,
        timing: &mut StartTiming,
    ) {
        if files.first.is_empty() {
            return;
        }
        let opts = FetchOptions {
            free_floor_bytes: self.cfg.reserve,
            charge_files_to: None,
            ..FetchOptions::default()
        };
        match Target::open(files.pid, "QEMU's file pages")
            .and_then(|t| procswap::fetch_unmapped(&t, files, &files.first, &opts))
        {
            Ok(r) => {
                ls.first_file_pages = r.issued_bytes.file / procswap::sys::page_size();
                timing.prefetch_bytes += r.issued_bytes.total();
                for sk in r.skipped {
                    ls.notes
                        .push(format!("QEMU's file {} skipped ({})", sk.path, sk.reason));
                }
            }
            Err(e) => self.note_prefetch_error(slot, "QEMU's file pages", &e),
        }
    }

    /// After `cont` (loading-set mode): QEMU's other file pages in the background, once the
    /// probe answered (see [`activation::spawn_file_background`]).
    fn start_file_background(&self, slot: &AppSlot) {
        let mut rt = lock(&slot.vm);
        let Some(files) = rt.pending_files.take() else {
            return;
        };
        if files.loading_rest.is_empty() && files.rest.is_empty() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        rt.files_stop = stop.clone();
        match activation::spawn_file_background(
            files,
            stop,
            rt.first_response.clone(),
            self.cfg.reserve,
        ) {
            Ok(h) => rt.files_background = Some(h),
            Err(e) => {
                drop(rt);
                self.event(
                    Some(&slot.cfg.name),
                    EventKind::Error,
                    format!("no background fetch of QEMU's files: {e}"),
                );
            }
        }
    }

    /// After `cont` (loading-set mode): fresh stop and first-response flags, and the recorder
    /// prepared before the thaw polling in its thread.
    fn start_recorder_thread(&self, slot: &AppSlot) {
        let mut rt = lock(&slot.vm);
        let (stop, first) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        rt.rec_stop = stop.clone();
        rt.first_response = first.clone();
        let Some(rec) = rt.pending_recorder.take() else {
            return;
        };
        rt.recorder = self.spawn_recorder(slot, "torpor-vmrecord", move || {
            activation::record(vec![rec], &stop, &first, Duration::ZERO)
        });
    }
}
