//! Twinkle's demand prediction, in the background after the VM runs again: guest RAM not
//! fetched before `cont` is watched in segments of 1024 pages; once 30 % of a segment's
//! swapped pages (swapped when watching began) have been faulted in by the guest, the whole
//! segment is fetched. Between rounds with nothing triggered, the remaining classes are fetched
//! in class order at lower priority (never the pages the guest reported free: those stay on
//! demand paging).
//!
//! [`Tracker`] is the pure segment logic (tested on synthetic present-bitmaps);
//! [`Background`] runs it on a QEMU process with pagemap and [`super::fetch_ranges`].

use super::plan::Plan;
use crate::backend::Backend;
use crate::inspect::{classify, Pagemap};
use crate::sys::{self, Range};
use crate::PrefetchOptions;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Parameters (defaults: Twinkle's N = 1024 pages, 30 %).
#[derive(Debug, Clone)]
pub struct TwinkleConfig {
    pub segment_pages: u64,
    /// Fraction of a segment's swapped pages that must have faulted in to fetch the segment.
    pub threshold: f64,
    /// Pagemap polling period.
    pub poll: Duration,
    /// After Twinkle rounds with nothing triggered, fetch this many pages of the remaining
    /// classes per round (0 = never fetch the rest).
    pub rest_pages_per_round: u64,
    /// Prefetch options for every fetch (threads, free floor).
    pub prefetch: PrefetchOptions,
    /// Once the rest phase has nothing left, keep watching the segments that are still on swap
    /// (free pages, untouched) this long after the last fetch, then end.
    pub linger: Duration,
    /// Host ranges fetched first, in this order, before the segments are watched (a VM
    /// loading set's later part, then what else comes before the rest classes).
    pub preload: Vec<Range>,
    /// I/O priority of the fetcher thread (its reads are issued from it), e.g. below the VM's.
    pub io_priority: Option<sys::IoPriority>,
    /// Wait until this flag is set (the app answered its first request) or the duration
    /// passed before the first fetch: the first requests' faults get the device to themselves.
    pub start_after: Option<(Arc<AtomicBool>, Duration)>,
}

impl Default for TwinkleConfig {
    fn default() -> Self {
        Self {
            segment_pages: 1024,
            threshold: 0.30,
            poll: Duration::from_millis(50),
            rest_pages_per_round: 4096,
            prefetch: PrefetchOptions::default(),
            linger: Duration::from_secs(10),
            preload: Vec::new(),
            io_priority: None,
            start_after: None,
        }
    }
}

/// One watched segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Host address of the first page.
    pub start: u64,
    pub pages: u64,
    /// Pages swapped when watching began.
    pub swapped: Vec<bool>,
    pub swapped_count: u64,
    /// Lowest class of its non-free pages (the rest phase's order); `None`: nothing for the
    /// rest phase (all free, or all fetched before `cont`).
    pub rest_class: Option<u8>,
    /// Host ranges the rest phase fetches (its non-free pages of classes fetched in the
    /// background).
    pub rest_ranges: Vec<Range>,
    pub done: bool,
}

/// Why a segment was finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Triggered,
    Rest,
}

/// Split `ranges` into segments of `segment_pages` pages (each range split on its own).
pub fn split(ranges: &[Range], segment_pages: u64, page_size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for r in ranges {
        let pages = r.len / page_size;
        let mut i = 0;
        while i < pages {
            let n = (pages - i).min(segment_pages);
            out.push((r.start + i * page_size, n));
            i += n;
        }
    }
    out
}

/// The segment rule, without I/O.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub segments: Vec<Segment>,
    pub threshold: f64,
}

impl Tracker {
    pub fn new(segments: Vec<Segment>, threshold: f64) -> Self {
        Self {
            segments,
            threshold,
        }
    }

    /// Faulted-in pages of segment `i`: swapped at the start and present in `present` now.
    pub fn faulted(&self, i: usize, present: &[bool]) -> u64 {
        self.segments[i]
            .swapped
            .iter()
            .zip(present)
            .filter(|(s, p)| **s && **p)
            .count() as u64
    }

    /// Feed segment `i`'s present-bitmap; true when this triggers it (then it is done).
    pub fn observe(&mut self, i: usize, present: &[bool]) -> bool {
        let f = self.faulted(i, present);
        let s = &mut self.segments[i];
        if s.done || s.swapped_count == 0 {
            return false;
        }
        if f as f64 >= self.threshold * s.swapped_count as f64 {
            s.done = true;
            return true;
        }
        false
    }

    /// Segments left for the rest phase, up to `max_pages`, lowest class first (ties: address
    /// order); they are marked done.
    pub fn take_rest(&mut self, max_pages: u64) -> Vec<usize> {
        let mut cand: Vec<(u8, usize)> = self
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.done)
            .filter_map(|(i, s)| s.rest_class.map(|c| (c, i)))
            .collect();
        cand.sort_unstable();
        let mut out = Vec::new();
        let mut pages = 0;
        for (_, i) in cand {
            if pages >= max_pages.max(1) {
                break;
            }
            pages += self.segments[i].pages;
            self.segments[i].done = true;
            out.push(i);
        }
        out
    }

    /// Segments still watched (not done, with swapped pages).
    pub fn watching(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| !s.done && s.swapped_count > 0)
            .count()
    }

    /// True when the rest phase has nothing left (segments may still be watched for faults).
    pub fn rest_done(&self) -> bool {
        self.segments
            .iter()
            .all(|s| s.done || s.rest_class.is_none())
    }

    /// True when nothing is left: every segment done or without swapped pages and no rest.
    pub fn finished(&self) -> bool {
        self.segments
            .iter()
            .all(|s| s.done || (s.swapped_count == 0 && s.rest_class.is_none()))
    }
}

/// Figures of a background fetch: defined once, in the API crate (torpord reports them as is).
pub use torpor_api::TwinkleStats;

/// A background fetcher thread.
pub struct Background {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<TwinkleStats>>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Build the segments of everything `plan` leaves to the background: guest RAM pages of
/// classes `> before_hi` and free pages. `swapped_of` gives the pages' swapped bits.
pub fn build_segments(
    plan: &Plan,
    before_hi: u8,
    guest: &[Range],
    cfg: &TwinkleConfig,
    page_size: u64,
    mut swapped_of: impl FnMut(u64, u64) -> crate::Result<Vec<bool>>,
) -> crate::Result<Vec<Segment>> {
    let mut segs = Vec::new();
    for (start, pages) in split(guest, cfg.segment_pages, page_size) {
        let swapped = swapped_of(start, pages)?;
        let swapped_count = swapped.iter().filter(|b| **b).count() as u64;
        let mut rest_class = None;
        let mut rest_ranges: Vec<Range> = Vec::new();
        for k in 0..pages {
            let a = start + k * page_size;
            if let Some(c) = plan.class_of(a).filter(|c| *c > before_hi) {
                rest_class = Some(rest_class.map_or(c, |x: u8| x.min(c)));
                match rest_ranges.last_mut() {
                    Some(r) if r.end() == a => r.len += page_size,
                    _ => rest_ranges.push(Range {
                        start: a,
                        len: page_size,
                    }),
                }
            }
        }
        if swapped_count == 0 {
            // Nothing of it is on swap: nothing to fetch, now or later.
            rest_class = None;
            rest_ranges.clear();
        }
        segs.push(Segment {
            start,
            pages,
            swapped,
            swapped_count,
            rest_class,
            rest_ranges,
            done: false,
        });
    }
    Ok(segs)
}

fn scan_bits(
    pm: &mut Pagemap,
    start: u64,
    pages: u64,
    page_size: u64,
    want_swapped: bool,
) -> crate::Result<Vec<bool>> {
    let mut v = Vec::with_capacity(pages as usize);
    pm.scan(start, start + pages * page_size, |_, info| {
        let (present, _, swap) = classify(&info);
        v.push(if want_swapped {
            !present && swap.is_some()
        } else {
            present
        });
    })?;
    Ok(v)
}

impl Background {
    /// Start watching `pid` (QEMU, running again). `plan`: the Start's plan; classes
    /// `0..=before_hi` were fetched before `cont`; `guest`: all guest RAM host ranges.
    pub fn spawn(
        backend: Box<dyn Backend>,
        pid: i32,
        plan: &Plan,
        before_hi: u8,
        guest: Vec<Range>,
        cfg: TwinkleConfig,
    ) -> crate::Result<Background> {
        let ps = sys::page_size();
        let mut pm = Pagemap::open(pid)?;
        let segs = build_segments(plan, before_hi, &guest, &cfg, ps, |s, n| {
            scan_bits(&mut pm, s, n, ps, true)
        })?;
        let mut tracker = Tracker::new(segs, cfg.threshold);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(TwinkleStats {
            running: true,
            segments: tracker.segments.len() as u64,
            segments_with_swapped: tracker
                .segments
                .iter()
                .filter(|s| s.swapped_count > 0)
                .count() as u64,
            ..Default::default()
        }));
        let (stop2, stats2) = (Arc::clone(&stop), Arc::clone(&stats));
        let handle = std::thread::Builder::new()
            .name(format!("twinkle-{pid}"))
            .spawn(move || {
                let t0 = Instant::now();
                let _io = cfg.io_priority.and_then(|p| sys::io_priority(p).ok());
                let res = preload(&*backend, pid, &cfg, ps, &stop2, &stats2).and_then(|_| {
                    run(
                        &*backend,
                        pid,
                        &mut pm,
                        &mut tracker,
                        &cfg,
                        ps,
                        &stop2,
                        &stats2,
                    )
                });
                let mut s = stats2.lock().unwrap_or_else(|p| p.into_inner());
                s.running = false;
                s.seconds = t0.elapsed().as_secs_f64();
                match res {
                    Ok(why) => s.ended = Some(why.into()),
                    Err(e) => {
                        s.ended = Some("error".into());
                        s.error = Some(e.to_string());
                    }
                }
            })
            .map_err(|e| {
                crate::Error::Unsupported(format!("spawning the background fetcher: {e}"))
            })?;
        Ok(Background {
            stop,
            stats,
            handle: Some(handle),
        })
    }

    pub fn stats(&self) -> TwinkleStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Stop (at the next poll or after the current fetch) and wait for the thread.
    pub fn stop(mut self) -> TwinkleStats {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.stats()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Before the segments are watched: wait for `cfg.start_after`, then fetch `cfg.preload` in
/// order, at most `rest_pages_per_round` pages (1024 at least) per call, the stop flag checked
/// between calls.
fn preload(
    backend: &dyn Backend,
    pid: i32,
    cfg: &TwinkleConfig,
    ps: u64,
    stop: &AtomicBool,
    stats: &Mutex<TwinkleStats>,
) -> crate::Result<()> {
    if let Some((flag, max)) = &cfg.start_after {
        let t = Instant::now();
        while !flag.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) && t.elapsed() < *max {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let step = cfg.rest_pages_per_round.max(1024) * ps;
    let mut chunk: Vec<Range> = Vec::new();
    let mut bytes = 0;
    let flush = |chunk: &mut Vec<Range>| -> crate::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let r = super::fetch_ranges(backend, pid, std::mem::take(chunk), &cfg.prefetch)?;
        let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
        s.preload_pages += r.read_issued_bytes / ps;
        Ok(())
    };
    for r in &cfg.preload {
        let mut cur = *r;
        while cur.len > 0 {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let take = cur.len.min(step - bytes);
            chunk.push(Range {
                start: cur.start,
                len: take,
            });
            (cur.start, cur.len, bytes) = (cur.start + take, cur.len - take, bytes + take);
            if bytes == step {
                flush(&mut chunk)?;
                bytes = 0;
            }
        }
    }
    flush(&mut chunk)
}

#[allow(clippy::too_many_arguments)]
fn run(
    backend: &dyn Backend,
    pid: i32,
    pm: &mut Pagemap,
    tr: &mut Tracker,
    cfg: &TwinkleConfig,
    ps: u64,
    stop: &AtomicBool,
    stats: &Mutex<TwinkleStats>,
) -> crate::Result<&'static str> {
    let upd =
        |f: &dyn Fn(&mut TwinkleStats)| f(&mut stats.lock().unwrap_or_else(|p| p.into_inner()));
    let mut last_fetch = Instant::now();
    loop {
        if tr.finished() {
            return Ok("finished");
        }
        if (tr.rest_done() || cfg.rest_pages_per_round == 0) && last_fetch.elapsed() >= cfg.linger {
            return Ok("finished");
        }
        // Sleep one poll period in small steps, so a stop is honoured quickly.
        let until = Instant::now() + cfg.poll;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return Ok("stopped");
            }
            std::thread::sleep(Duration::from_millis(5).min(cfg.poll));
        }
        let mut triggered = Vec::new();
        for i in 0..tr.segments.len() {
            let s = &tr.segments[i];
            if s.done || s.swapped_count == 0 {
                continue;
            }
            let present = scan_bits(pm, s.start, s.pages, ps, false)?;
            if tr.observe(i, &present) {
                triggered.push(i);
            }
        }
        if !triggered.is_empty() {
            let ranges: Vec<Range> = triggered
                .iter()
                .map(|&i| Range {
                    start: tr.segments[i].start,
                    len: tr.segments[i].pages * ps,
                })
                .collect();
            let r = super::fetch_ranges(backend, pid, ranges, &cfg.prefetch)?;
            let n = triggered.len() as u64;
            last_fetch = Instant::now();
            upd(&|s| {
                s.segments_triggered += n;
                s.twinkle_pages += r.read_issued_bytes / ps;
            });
        } else if cfg.rest_pages_per_round > 0 {
            let take = tr.take_rest(cfg.rest_pages_per_round);
            if !take.is_empty() {
                let ranges: Vec<Range> = take
                    .iter()
                    .flat_map(|&i| tr.segments[i].rest_ranges.clone())
                    .collect();
                let r = super::fetch_ranges(backend, pid, ranges, &cfg.prefetch)?;
                let n = take.len() as u64;
                last_fetch = Instant::now();
                upd(&|s| {
                    s.segments_rest += n;
                    s.rest_pages += r.read_issued_bytes / ps;
                });
            }
        }
        upd(&|s| s.rounds += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(swapped: Vec<bool>, rest_class: Option<u8>) -> Segment {
        let swapped_count = swapped.iter().filter(|b| **b).count() as u64;
        Segment {
            start: 0,
            pages: swapped.len() as u64,
            swapped,
            swapped_count,
            rest_class,
            rest_ranges: vec![],
            done: false,
        }
    }

    #[test]
    fn split_into_1024_page_segments_per_range() {
        let ps = 4096;
        let r = [
            Range {
                start: 0x1000_0000,
                len: 2500 * ps,
            },
            Range {
                start: 0x9000_0000,
                len: 10 * ps,
            },
        ];
        let s = split(&r, 1024, ps);
        assert_eq!(
            s,
            vec![
                (0x1000_0000, 1024),
                (0x1000_0000 + 1024 * ps, 1024),
                (0x1000_0000 + 2048 * ps, 452),
                (0x9000_0000, 10)
            ]
        );
    }

    #[test]
    fn triggers_at_30_percent_of_originally_swapped_pages() {
        // 1024 pages, 1000 of them swapped at the start.
        let mut sw = vec![true; 1024];
        for b in sw.iter_mut().take(24) {
            *b = false;
        }
        let mut t = Tracker::new(vec![seg(sw, Some(8))], 0.30);
        let mut present = vec![false; 1024];
        // The 24 pages that were never swapped are present: they do not count.
        for p in present.iter_mut().take(24) {
            *p = true;
        }
        assert!(!t.observe(0, &present));
        // 299 faulted of 1000: not yet.
        for p in present.iter_mut().skip(24).take(299) {
            *p = true;
        }
        assert_eq!(t.faulted(0, &present), 299);
        assert!(!t.observe(0, &present));
        // 300: trigger, once.
        present[24 + 299] = true;
        assert!(t.observe(0, &present));
        assert!(t.segments[0].done);
        assert!(!t.observe(0, &present));
        assert!(t.finished());
    }

    #[test]
    fn scattered_faults_trigger_only_their_segment_and_rest_goes_by_class() {
        let n = 1024;
        let mut t = Tracker::new(
            vec![
                seg(vec![true; n], Some(8)),
                seg(vec![true; n], Some(6)),
                seg(vec![false; n], None),
                seg(vec![true; n], Some(7)),
                seg(vec![true; n], None),
            ],
            0.30,
        );
        // Segment 1 gets every third page faulted (34 %), segment 0 10 %.
        let p1: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
        let p0: Vec<bool> = (0..n).map(|i| i % 10 == 0).collect();
        assert!(!t.observe(0, &p0));
        assert!(t.observe(1, &p1));
        // A segment with nothing swapped never triggers.
        assert!(!t.observe(2, &vec![true; n]));
        assert_eq!(t.watching(), 3);
        // Rest phase: class 7 (segment 3) before class 8 (segment 0); segment 4 has no rest.
        assert_eq!(t.take_rest(1024), vec![3]);
        assert_eq!(t.take_rest(1 << 20), vec![0]);
        assert!(t.take_rest(1 << 20).is_empty());
        assert!(t.rest_done());
        // Segment 4 (all free: no rest) is still watched for faults.
        assert!(!t.finished());
        assert!(t.observe(4, &vec![true; n]));
        assert!(t.finished());
    }

    #[test]
    fn segments_from_a_plan_leave_early_classes_and_free_pages_out_of_the_rest() {
        use crate::vm::plan::ClassPlan;
        let ps = 4096;
        let base = 0x4000_0000u64;
        // 2048 pages: 0..100 class 0, 100..1024 free, 1024..1500 class 6, 1500..2048 class 9.
        let mut classes: Vec<ClassPlan> = (0..10)
            .map(|c| ClassPlan {
                class: c,
                ..Default::default()
            })
            .collect();
        classes[0].ranges = vec![Range {
            start: base,
            len: 100 * ps,
        }];
        classes[6].ranges = vec![Range {
            start: base + 1024 * ps,
            len: 476 * ps,
        }];
        classes[9].ranges = vec![Range {
            start: base + 1500 * ps,
            len: 548 * ps,
        }];
        let plan = Plan {
            classes,
            free_ranges: vec![Range {
                start: base + 100 * ps,
                len: 924 * ps,
            }],
            skipped_free_pages: 924,
            guest_pages: 2048,
        };
        let cfg = TwinkleConfig::default();
        // The guest's 2048 pages, all swapped or none.
        let segments = |swapped: bool| {
            let all = [Range {
                start: base,
                len: 2048 * ps,
            }];
            build_segments(&plan, 5, &all, &cfg, ps, |_, n| {
                Ok(vec![swapped; n as usize])
            })
            .unwrap()
        };
        let segs = segments(true);
        assert_eq!(segs.len(), 2);
        assert_eq!(
            segs[0].rest_class, None,
            "class 0 was fetched before cont, the rest is free"
        );
        assert!(segs[0].rest_ranges.is_empty());
        assert_eq!(segs[1].rest_class, Some(6));
        assert_eq!(
            segs[1].rest_ranges,
            vec![Range {
                start: base + 1024 * ps,
                len: 1024 * ps
            }]
        );
        // Nothing swapped: nothing for later.
        let segs = segments(false);
        assert!(segs.iter().all(|s| s.rest_class.is_none()));
        assert!(Tracker::new(segs, 0.3).finished());
    }
}
