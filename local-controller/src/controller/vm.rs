//! VM apps (`kind = "vm"`): Stop and Start of a QEMU process through QMP and the guest agent.
//!
//! Stop: guest maps from the agent (best effort, never fails the Stop), QMP `stop`, guest RAM
//! discovery, freeze, purge, evidence. Start: prefetch by mode (QEMU's own memory and guest
//! classes 0-5 minus free pages for `priority`; the whole process for `full`; nothing for
//! `none`), thaw, QMP `cont`, Twinkle in the background (`priority`), probe.
//! Safety: the guest's maps only order and skip prefetch; nothing is discarded on their strength.

use super::{
    lock, now_unix, proc_mem, AppSlot, AppState, Controller, EventKind, Op, StartError,
    StartTiming, StopError, FREEZE_TIMEOUT,
};
use crate::config::{PurgePolicy, VmConfig, VmPrefetch};
use crate::guestmaps::{GuestMaps, MapsSummary};
use crate::probe;
use procswap::vm::{
    self, Background, GuestRam, PageCounts, Plan, Qmp, TwinkleConfig, TwinkleStats,
};
use procswap::{NoProgress, PrefetchOptions};
use std::path::PathBuf;
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

fn qmp_connect(v: &VmConfig, deadline: Option<Instant>) -> Result<Qmp, String> {
    match deadline {
        Some(d) => Qmp::connect_retry(&v.qmp, v.qmp_timeout, d),
        None => Qmp::connect(&v.qmp, v.qmp_timeout),
    }
    .map_err(|e| e.to_string())
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
        }
    }

    /// After a cold start of a VM app: QMP answers (within the readiness timeout).
    pub(super) fn vm_after_cold_start(
        &self,
        slot: &AppSlot,
        t0: Instant,
    ) -> Result<api::VmStart, String> {
        let v = self.vm_cfg(slot);
        let deadline = t0 + slot.cfg.ready_timeout.max(v.qmp_timeout);
        let mut q = qmp_connect(v, Some(deadline))?;
        let st = q.query_status().map_err(|e| e.to_string())?;
        Ok(api::VmStart::Cold(api::VmColdStart {
            cold: true,
            mode: slot.cfg.vm_prefetch_mode().as_str().to_string(),
            qemu: q.qemu_version(),
            status: st.status,
        }))
    }

    /// Stop of a VM app (its `op` lock held).
    pub(super) fn stop_vm(&self, slot: &AppSlot) -> Result<api::StopAnswer, StopError> {
        let name = slot.cfg.name.clone();
        let v = self.vm_cfg(slot).clone();
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
        // (Joined outside the lock: status reads never wait for an operation.)
        let bg = lock(&slot.vm).background.take();
        if let Some(bg) = bg {
            let st = bg.stop();
            lock(&slot.vm).last_background = Some(st);
        }
        let fail = |msg: String| -> StopError { self.stop_failed(slot, msg) };
        // 1. The guest's maps (while it runs). Never fails the Stop.
        let ta = Instant::now();
        let (maps, agent_note): (Option<(GuestMaps, String)>, String) = match &v.agent {
            None => (None, "no agent configured (vm.agent)".into()),
            Some(p) => match GuestMaps::fetch_from_socket(p, v.agent_timeout, 0) {
                Ok((m, agent)) => {
                    let note = format!("{agent} at {}", p.display());
                    (Some((m, agent)), note)
                }
                Err(e) => {
                    let note = format!("agent {}: {e}; stopping without guest maps", p.display());
                    self.event(Some(&name), EventKind::Agent, note.clone());
                    (None, note)
                }
            },
        };
        let agent_ms = ms(ta.elapsed());
        let summary: Option<MapsSummary> = maps.as_ref().map(|(m, a)| m.summary(a));
        // 2. QMP stop, 3. guest RAM.
        let tq = Instant::now();
        let mut q = match qmp_connect(&v, None) {
            Ok(q) => q,
            Err(e) => return Err(fail(format!("QMP: {e}"))),
        };
        let before = q
            .query_status()
            .map(|s| s.status)
            .unwrap_or_else(|e| format!("unknown ({e})"));
        if let Err(e) = q.stop() {
            return Err(fail(format!("QMP stop: {e}")));
        }
        let qmp_stop_ms = ms(tq.elapsed());
        let after = q
            .query_status()
            .map(|s| s.status)
            .unwrap_or_else(|e| format!("unknown ({e})"));
        let ram = match GuestRam::discover(&mut q, qpid) {
            Ok(r) => Some(r),
            Err(e) => {
                self.event(Some(&name), EventKind::Error, format!("guest RAM discovery failed ({e}): the whole QEMU process is purged; the next Start fetches it whole"));
                None
            }
        };
        drop(q);
        let ev_before = self.evidence(qpid, ram.as_ref());
        // 4. Freeze (procswap purges only frozen targets).
        let tf = Instant::now();
        for f in self.freezers(&cgs, &o.pids) {
            if let Err(e) = f.freeze(FREEZE_TIMEOUT) {
                let _ = f.thaw(FREEZE_TIMEOUT);
                if let Ok(mut q) = qmp_connect(&v, None) {
                    let _ = q.cont();
                }
                return Err(fail(format!("freeze failed: {e} (VM continued)")));
            }
        }
        let freeze_s = tf.elapsed().as_secs_f64();
        self.set(slot, |r| {
            r.transition(AppState::Suspended);
            r.pid = Some(qpid);
            r.last_stop_unix = Some(now_unix());
            r.counters.stops += 1;
        });
        // 5. Purge, 6. evidence.
        let tp = Instant::now();
        let mut purge = if self.cfg.purge == PurgePolicy::Always {
            self.purge_app(slot, false).ok()
        } else {
            None
        };
        let mut ev_after = self.evidence(qpid, ram.as_ref());
        let is_evicted = |after: &Evidence, purged: bool| match (
            ev_before.guest_resident_pages,
            after.guest_resident_pages,
        ) {
            (Some(b), Some(a)) => purged && a * 100 <= b,
            _ => {
                purged
                    && after.qemu_resident_bytes * 100 <= ev_before.qemu_resident_bytes.max(1) * 10
            }
        };
        let mut evicted = is_evicted(&ev_after, purge.is_some());
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
            ev_after = self.evidence(qpid, ram.as_ref());
            evicted = is_evicted(&ev_after, purge.is_some());
        }
        let purge_s = tp.elapsed().as_secs_f64();
        if purge.is_some() && !evicted {
            self.event(
                Some(&name),
                EventKind::Error,
                format!("purge left guest RAM resident: before {ev_before:?}, after {ev_after:?}"),
            );
        }
        if let Some(r) = &ram {
            let p = self.vm_ram_path(&name);
            let wr = std::fs::create_dir_all(p.parent().expect("vm dir"))
                .and_then(|_| serde_json::to_vec(r).map_err(std::io::Error::other))
                .and_then(|b| std::fs::write(&p, b));
            if let Err(e) = wr {
                self.event(
                    Some(&name),
                    EventKind::Error,
                    format!("saving {}: {e}", p.display()),
                );
            }
        }
        let guest_ram = ram.as_ref().map(ram_report);
        {
            let mut rt = lock(&slot.vm);
            rt.maps = maps;
            rt.ram = ram;
        }
        let st = self.set(slot, |r| {
            r.in_flight = None;
            r.state
        });
        self.event(
            Some(&name),
            EventKind::Stop,
            format!(
                "{} (vm: maps {}, QMP stop {qmp_stop_ms} ms, freeze {freeze_s:.3}s, purge {purge_s:.3}s, guest resident {:?} -> {:?} pages, evicted {evicted})",
                st.as_str(),
                if summary.is_some() { "fresh" } else { "none" },
                ev_before.guest_resident_pages,
                ev_after.guest_resident_pages
            ),
        );
        self.enforce_reserve(Some(&name));
        let st = lock(&slot.st).state;
        Ok(api::StopAnswer::Vm(Box::new(api::VmStopped {
            app: name,
            state: st,
            timing: api::StopTiming {
                freeze_s,
                working_set_s: 0.0,
                purge_s,
                total_s: t0.elapsed().as_secs_f64(),
            },
            purge,
            vm: api::VmStop {
                maps: if summary.is_some() { "fresh" } else { "none" }.to_string(),
                agent_note,
                agent_ms,
                agent: summary,
                qmp_stop_ms,
                status_before: before,
                status_after: after,
                guest_ram,
                evidence: api::StopEvidence {
                    before: ev_before,
                    after: ev_after,
                    evicted,
                    purge_retries,
                },
            },
        })))
    }

    /// Resume a frozen VM app (prefetch by `mode`, thaw, QMP `cont`, probe).
    pub(super) fn resume_vm(
        &self,
        slot: &AppSlot,
        t0: Instant,
        pids: Vec<i32>,
        mode: VmPrefetch,
    ) -> Result<api::StartAnswer, StartError> {
        let name = slot.cfg.name.clone();
        let v = self.vm_cfg(slot).clone();
        let pswpin0 = pswpin();
        self.set(slot, |r| {
            r.in_flight = Some(Op::Start);
            r.transition(AppState::Starting);
        });
        self.enforce_reserve(Some(&name));
        let qpid = lock(&slot.st)
            .pid
            .filter(|p| pids.contains(p))
            .unwrap_or(pids[0]);
        // Guest RAM: from the Stop, or (after a torpord restart) from state_dir/vm if it is
        // the same QEMU process.
        let (ram, maps) = {
            let mut rt = lock(&slot.vm);
            if rt.ram.is_none() {
                rt.ram = std::fs::read(self.vm_ram_path(&name))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<GuestRam>(&b).ok())
                    .filter(|r| r.pid == qpid);
            }
            (rt.ram.clone(), rt.maps.clone())
        };
        let mut maps_note = match (&maps, &ram) {
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
        let effective = match (mode, &maps, &ram) {
            (VmPrefetch::Priority, Some(_), Some(_)) => VmPrefetch::Priority,
            (VmPrefetch::Priority, _, _) => {
                maps_note.push_str("; priority runs as full");
                VmPrefetch::Full
            }
            (m, _, _) => m,
        };
        let ps = procswap::sys::page_size();
        let base = PrefetchOptions {
            threads: self.cfg.prefetch_threads,
            free_floor_bytes: self.cfg.reserve,
            ..PrefetchOptions::default()
        };
        let guest_before = ram
            .as_ref()
            .and_then(|r| vm::page_counts(qpid, &r.hva_ranges()).ok());
        let tpf = Instant::now();
        let mut timing = StartTiming {
            prefetch_mode: Some(effective.as_str().to_string()),
            ..Default::default()
        };
        let mut classes: Vec<ClassFetch> = Vec::new();
        let mut qemu_own_pages = 0u64;
        let mut qemu_own_ms = 0.0;
        let mut single_pass = false;
        let mut plan_ms = 0.0;
        let mut fetch_call_ms = 0.0;
        let mut plan: Option<Plan> = None;
        let note_err = |what: &str, e: &dyn std::fmt::Display| {
            self.event(
                Some(&name),
                EventKind::Error,
                format!("{what} failed (continuing; demand paging brings the rest): {e}"),
            );
        };
        let add = |timing: &mut StartTiming, r: &procswap::PrefetchReport| {
            timing.prefetch_bytes += r.read_issued_bytes;
            if let Some(s) = &r.stopped {
                timing.prefetch_stopped = Some(format!("{s:?}"));
            }
        };
        match effective {
            VmPrefetch::None => {}
            VmPrefetch::Full => {
                match procswap::prefetch_with(&*self.backend, qpid, &base, &NoProgress) {
                    Ok(r) => add(&mut timing, &r),
                    Err(e) => note_err("full prefetch", &e),
                }
            }
            VmPrefetch::Priority => {
                let ram = ram.as_ref().expect("priority needs guest RAM");
                let (m, _) = maps.as_ref().expect("priority needs maps");
                let tplan = Instant::now();
                let p = Plan::build(ram, ps, |pfn| m.classify(pfn));
                // QEMU itself first (its heap, TCG/KVM state): nothing runs without it; then
                // guest classes 0..=5, free pages excluded.
                let own = vm::qemu_own_ranges(qpid, ram).unwrap_or_else(|e| {
                    note_err("listing QEMU's own memory", &e);
                    vec![]
                });
                let swapped_in = |r: &[procswap::Range]| {
                    vm::page_counts(qpid, r).map(|k| k.swapped).unwrap_or(0)
                };
                let own_before = swapped_in(&own);
                let before: Vec<u64> = p
                    .classes
                    .iter()
                    .map(|c| {
                        if c.pages > 0 {
                            swapped_in(&c.ranges)
                        } else {
                            0
                        }
                    })
                    .collect();
                let pre_pages = own_before
                    + before
                        .iter()
                        .take(BEFORE_CONT_MAX_CLASS as usize + 1)
                        .sum::<u64>();
                let avail = procswap::sys::meminfo()
                    .map(|mi| mi.mem_available)
                    .unwrap_or(0);
                // Class order only matters when the fetch can be cut short by the free-memory
                // floor: then one prefetch call per class, in order. Otherwise one call over all
                // of it (each call rescans QEMU: ~0.1-0.5 s here), reads in swap-slot order.
                single_pass = avail >= self.cfg.reserve + pre_pages * ps + (64 << 20);
                plan_ms = ms(tplan.elapsed());
                if single_pass {
                    let mut all = own.clone();
                    all.extend(p.ranges_of(0, BEFORE_CONT_MAX_CLASS));
                    let tf = Instant::now();
                    match vm::fetch_ranges(&*self.backend, qpid, all, &base) {
                        Ok(r) => add(&mut timing, &r),
                        Err(e) => note_err("priority prefetch", &e),
                    }
                    fetch_call_ms = ms(tf.elapsed());
                    qemu_own_pages = own_before.saturating_sub(swapped_in(&own));
                    for (c, &sw) in p.classes.iter().zip(&before) {
                        let mut cf = class_fetch(c, sw);
                        if c.class <= BEFORE_CONT_MAX_CLASS && sw > 0 {
                            cf.fetched_pages = sw.saturating_sub(swapped_in(&c.ranges));
                            cf.fetched_bytes = cf.fetched_pages * ps;
                        }
                        classes.push(cf);
                    }
                } else {
                    // QEMU's own memory, then classes 0..=5, one call each, in order.
                    let mut sets = vec![own.clone()];
                    sets.extend(
                        p.classes
                            .iter()
                            .take(BEFORE_CONT_MAX_CLASS as usize + 1)
                            .map(|c| c.ranges.clone()),
                    );
                    let res =
                        vm::fetch_ordered(&*self.backend, qpid, sets, &base).unwrap_or_else(|e| {
                            note_err("class-ordered prefetch", &e);
                            vec![]
                        });
                    let mut res = res.into_iter();
                    if let Some(Some((r, t))) = res.next() {
                        qemu_own_pages = r.read_issued_bytes / ps;
                        qemu_own_ms = t;
                        add(&mut timing, &r);
                    }
                    for (c, &sw) in p.classes.iter().zip(&before) {
                        let mut cf = class_fetch(c, sw);
                        if let Some(Some((r, t))) = (c.class <= BEFORE_CONT_MAX_CLASS)
                            .then(|| res.next())
                            .flatten()
                        {
                            cf.fetched_pages = r.read_issued_bytes / ps;
                            cf.fetched_bytes = r.read_issued_bytes;
                            cf.ms = t;
                            add(&mut timing, &r);
                        }
                        classes.push(cf);
                    }
                }
                plan = Some(p);
            }
        }
        if effective != VmPrefetch::None {
            lock(&slot.st).counters.prefetches += 1;
        }
        let prefetch_d = tpf.elapsed();
        timing.prefetch_s = prefetch_d.as_secs_f64();
        let guest_after = ram
            .as_ref()
            .and_then(|r| vm::page_counts(qpid, &r.hva_ranges()).ok());
        let pswpin_prefetch = pswpin().saturating_sub(pswpin0);
        // Thaw, then cont (a frozen QEMU cannot answer QMP).
        let tt = Instant::now();
        let cgs = lock(&slot.st).cgroups.clone();
        for f in self.freezers(&cgs, &pids) {
            if let Err(e) = f.thaw(FREEZE_TIMEOUT) {
                return Err(self.fail_start(slot, format!("thaw failed: {e}")));
            }
        }
        timing.thaw_s = tt.elapsed().as_secs_f64();
        let tc = Instant::now();
        let cont = qmp_connect(&v, Some(Instant::now() + v.qmp_timeout))
            .and_then(|mut q| q.cont().map_err(|e| e.to_string()));
        if let Err(e) = cont {
            return Err(self.fail_start(slot, format!("QMP cont: {e}")));
        }
        let cont_ms = ms(tc.elapsed());
        // The rest in the background (Twinkle), priority mode only.
        let mut bg_started = false;
        if let (Some(p), Some(r), true) = (&plan, &ram, v.background) {
            let pref: procswap::BackendPref = self.cfg.backend.parse().unwrap_or_default();
            let cfg = TwinkleConfig {
                prefetch: base.clone(),
                ..TwinkleConfig::default()
            };
            match procswap::select_backend(pref).and_then(|b| {
                Background::spawn(b, qpid, p, BEFORE_CONT_MAX_CLASS, r.hva_ranges(), cfg)
            }) {
                Ok(bg) => {
                    lock(&slot.vm).background = Some(bg);
                    bg_started = true;
                }
                Err(e) => self.event(
                    Some(&name),
                    EventKind::Error,
                    format!("background fetcher not started: {e}"),
                ),
            }
        }
        let tp = Instant::now();
        let res = match &slot.cfg.ready {
            Some(p) => probe::wait_ready(p, slot.cfg.ready_timeout, || {
                if self.observe(&cgs).pids.is_empty() {
                    Err("QEMU exited".into())
                } else {
                    Ok(())
                }
            }),
            None => Ok(0),
        };
        timing.probe_s = tp.elapsed().as_secs_f64();
        timing.total_s = t0.elapsed().as_secs_f64();
        timing.unix_time = now_unix();
        if let Err(e) = res {
            let bg = lock(&slot.vm).background.take();
            if let Some(bg) = bg {
                let st = bg.stop();
                lock(&slot.vm).last_background = Some(st);
            }
            return Err(self.fail_start(slot, e));
        }
        let bg = lock(&slot.vm).background.as_ref().map(|b| b.stats());
        let prefetched_pages: u64 = timing.prefetch_bytes / ps;
        let vmj = api::VmStart::Resume(Box::new(api::VmResume {
            mode: mode.as_str().to_string(),
            effective: effective.as_str().to_string(),
            maps: if maps.is_some() { "fresh" } else { "none" }.to_string(),
            maps_note,
            prefetch_ms: ms(prefetch_d),
            prefetched_pages,
            prefetched_bytes: timing.prefetch_bytes,
            qemu_own_pages,
            qemu_own_ms,
            single_pass,
            plan_ms,
            fetch_call_ms,
            classes,
            skipped_free_pages: plan.as_ref().map(|p| p.skipped_free_pages).unwrap_or(0),
            guest_ram_bytes: ram.as_ref().map(|r| r.bytes()),
            guest_swapped_before_pages: guest_before.map(|g| g.swapped),
            guest_swapped_after_prefetch_pages: guest_after.map(|g| g.swapped),
            thaw_ms: ms(Duration::from_secs_f64(timing.thaw_s)),
            cont_ms,
            probe_ms: ms(Duration::from_secs_f64(timing.probe_s)),
            ready_ms: ms(t0.elapsed()),
            pswpin_delta: pswpin().saturating_sub(pswpin0),
            pswpin_delta_prefetch: pswpin_prefetch,
            background: if bg_started { bg } else { None },
        }));
        self.finish_start_vm(slot, timing, Some(vmj))
    }
}
