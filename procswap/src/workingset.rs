//! Working-set recording ("snapshot prefetching"): which pages a target touched during an
//! active period, with stock kernel facilities:
//! - DAMON virtual-address monitoring through `/sys/kernel/mm/damon/admin` (region based,
//!   adaptive sampling: the result is a set of address ranges, approximate at region edges);
//! - idle page tracking (`/sys/kernel/mm/page_idle/bitmap`, exact per page) where present.
//!
//! When neither exists, [`WsMethod::detect`] says so and callers fall back to whole-process
//! prefetch.

use crate::cgroup::{read_trim, write_file};
use crate::error::{Error, Result};
use crate::inspect::{classify, Pagemap, VmaKind};
use crate::sys::{self, Range};
use crate::target::Target;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

const DAMON_ADMIN: &str = "/sys/kernel/mm/damon/admin";
const PAGE_IDLE_BITMAP: &str = "/sys/kernel/mm/page_idle/bitmap";

/// How a working set is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WsMethod {
    /// DAMON virtual-address monitoring (sysfs interface).
    DamonVaddr,
    /// Idle page tracking (page_idle bitmap).
    PageIdle,
    /// Residency after a purged resume: the pages present at suspend time, when the target was
    /// purged at its previous suspend and resumed without a full prefetch, are exactly the pages
    /// it touched while active. Needs nothing from the kernel but pagemap; see [`from_residency`].
    Residency,
    /// Supplied by the caller (built with [`WorkingSet::new`] from its own data).
    External,
}

impl std::fmt::Display for WsMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WsMethod::DamonVaddr => "damon-vaddr",
            WsMethod::PageIdle => "page-idle",
            WsMethod::Residency => "residency",
            WsMethod::External => "external",
        })
    }
}

impl WsMethod {
    /// Every method this kernel has, each with whether it can be used right now (DAMON's sysfs
    /// interface is global: when someone else's kdamond is configured, it is not ours to touch).
    pub fn probe() -> Vec<(WsMethod, std::result::Result<(), String>)> {
        let mut v = Vec::new();
        if Path::new(PAGE_IDLE_BITMAP).exists() {
            v.push((WsMethod::PageIdle, Ok(())));
        }
        let nr = Path::new(DAMON_ADMIN).join("kdamonds/nr_kdamonds");
        // Which operation sets the kernel has can only be read from an existing context.
        let avail = std::fs::read_to_string(
            Path::new(DAMON_ADMIN).join("kdamonds/0/contexts/0/avail_operations"),
        )
        .ok();
        if let Some(a) = avail
            .as_deref()
            .filter(|a| !a.split_whitespace().any(|o| o == "vaddr"))
        {
            v.push((
                WsMethod::DamonVaddr,
                Err(format!(
                    "this kernel's DAMON has no vaddr operations (avail_operations: {})",
                    a.trim()
                )),
            ));
        } else if nr.exists() {
            let usable = match read_trim(&nr).map(|s| s.parse::<u32>()) {
                Ok(Ok(0)) => Ok(()),
                Ok(Ok(n)) => Err(format!(
                    "DAMON sysfs busy: {n} kdamond(s) already configured by someone else"
                )),
                Ok(Err(e)) => Err(format!("{}: {e}", nr.display())),
                Err(e) => Err(e.to_string()),
            };
            v.push((WsMethod::DamonVaddr, usable));
        }
        v
    }

    /// The methods usable now, best first (page_idle is exact per page, DAMON approximate).
    pub fn available() -> Vec<WsMethod> {
        Self::probe()
            .into_iter()
            .filter(|(_, ok)| ok.is_ok())
            .map(|(m, _)| m)
            .collect()
    }

    /// The method that runs here, or `None` (then prefetch the whole process).
    pub fn detect() -> Option<WsMethod> {
        Self::available().into_iter().next()
    }

    /// A human sentence saying which method runs, and why the others do not.
    pub fn describe_host() -> String {
        let probe = Self::probe();
        let why: Vec<String> = probe
            .iter()
            .filter_map(|(m, r)| r.as_ref().err().map(|e| format!("{m}: {e}")))
            .collect();
        let mut s = match Self::detect() {
            Some(m) => format!("working-set recording: {m}"),
            None if probe.is_empty() => {
                "working-set recording: unavailable (kernel has neither DAMON sysfs nor page_idle); prefetch falls back to the whole process".into()
            }
            None => "working-set recording: no kernel recorder usable here; prefetch falls back to the whole process \
                     (the residency method needs only pagemap)"
                .into(),
        };
        if !why.is_empty() {
            s.push_str(&format!(" [{}]", why.join("; ")));
        }
        s
    }
}

/// A recorded working set: address ranges the target touched. Serializable so a controller
/// can store it between suspend/resume cycles.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkingSet {
    pub format_version: u32,
    pub pid: i32,
    pub comm: String,
    pub method: WsMethod,
    /// Seconds since the epoch when recording ended.
    pub recorded_at: u64,
    pub duration_ms: u64,
    pub page_size: u64,
    /// Sorted, non-overlapping, page-aligned ranges.
    pub regions: Vec<Range>,
}

impl WorkingSet {
    pub const FORMAT_VERSION: u32 = 1;

    /// Build from arbitrary ranges (sorted and merged here).
    pub fn new(
        pid: i32,
        comm: &str,
        method: WsMethod,
        duration: Duration,
        mut ranges: Vec<Range>,
    ) -> Self {
        let ps = sys::page_size();
        ranges.retain(|r| r.len > 0);
        ranges.sort_unstable();
        let mut merged: Vec<Range> = Vec::new();
        for r in ranges {
            let start = r.start / ps * ps;
            let end = r.end().div_ceil(ps) * ps;
            match merged.last_mut() {
                Some(m) if start <= m.end() => m.len = m.len.max(end - m.start),
                _ => merged.push(Range {
                    start,
                    len: end - start,
                }),
            }
        }
        let recorded_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            format_version: Self::FORMAT_VERSION,
            pid,
            comm: comm.into(),
            method,
            recorded_at,
            duration_ms: duration.as_millis() as u64,
            page_size: ps,
            regions: merged,
        }
    }

    /// Whether `addr` lies in the working set.
    pub fn contains(&self, addr: u64) -> bool {
        let i = self.regions.partition_point(|r| r.start <= addr);
        i > 0 && addr < self.regions[i - 1].end()
    }

    pub fn bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }
}

/// Record the working set of `pid` for `duration` (the target must be running).
pub fn record(pid: i32, duration: Duration, method: Option<WsMethod>) -> Result<WorkingSet> {
    let t = Target::open(pid, "working-set recording")?;
    let method = method
        .or_else(WsMethod::detect)
        .ok_or_else(|| Error::Unsupported(WsMethod::describe_host()))?;
    let ranges = match method {
        WsMethod::DamonVaddr => record_damon(&t, duration)?,
        WsMethod::PageIdle => record_page_idle(&t, duration)?,
        WsMethod::Residency | WsMethod::External => {
            return Err(Error::WorkingSet(format!(
                "{method} is not a recording method (see from_residency)"
            )))
        }
    };
    t.check_alive("working-set recording")?;
    Ok(WorkingSet::new(pid, t.comm(), method, duration, ranges))
}

/// The working set by residency: every page of `pid` present right now, in private mappings and
/// shared anonymous memory (kernel-special mappings excluded). Meaningful when the target was
/// purged at its last suspend and ran on demand paging since: then "present" = "touched".
pub fn from_residency(pid: i32) -> Result<WorkingSet> {
    let t = Target::open(pid, "working-set recording")?;
    let vmas = crate::inspect::vmas(&t)?;
    let mut pm = Pagemap::open(pid)?;
    let ps = sys::page_size();
    let mut out: Vec<Range> = Vec::new();
    for v in vmas
        .iter()
        .filter(|v| v.kind != VmaKind::Special && v.kind != VmaKind::FileShared)
    {
        pm.scan(v.start, v.end, |addr, info| {
            if classify(&info).0 {
                match out.last_mut() {
                    Some(r) if r.end() == addr => r.len += ps,
                    _ => out.push(Range {
                        start: addr,
                        len: ps,
                    }),
                }
            }
        })?;
    }
    Ok(WorkingSet::new(
        pid,
        t.comm(),
        WsMethod::Residency,
        Duration::ZERO,
        out,
    ))
}

// ---------- DAMON ----------

struct Damon {
    kd: PathBuf,
    created: bool,
}

impl Damon {
    fn w(&self, rel: &str, v: &str) -> Result<()> {
        write_file(&self.kd.join(rel), v)
    }
}

impl Drop for Damon {
    fn drop(&mut self) {
        let _ = write_file(&self.kd.join("state"), "off");
        if self.created {
            let _ = write_file(&Path::new(DAMON_ADMIN).join("kdamonds/nr_kdamonds"), "0");
        }
    }
}

fn record_damon(t: &Target, duration: Duration) -> Result<Vec<Range>> {
    let d = damon_setup(t)?;
    let sc = "contexts/0/schemes/0";
    d.w("state", "on")?;
    let deadline = Instant::now() + duration;
    // Regions seen accessed are unioned over the second half of the period only: early
    // snapshots still have coarse regions, whose union would cover cold memory too.
    let keep_from = Instant::now() + duration / 2;
    let mut out = Vec::new();
    let tried = d.kd.join(sc).join("tried_regions");
    loop {
        std::thread::sleep(
            Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())),
        );
        t.check_alive("working-set recording")?;
        // Blocks until kdamond has applied the schemes once more, then fills tried_regions.
        d.w("state", "update_schemes_tried_regions")?;
        let regions = tried_regions(&tried)?;
        if Instant::now() >= keep_from {
            out.extend(regions);
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    drop(d);
    Ok(out)
}

/// One kdamond with one vaddr context over `t` and one `stat` scheme matching every region
/// accessed at least once per aggregation (not started). Refuses a DAMON sysfs someone else
/// uses.
fn damon_setup(t: &Target) -> Result<Damon> {
    let admin = Path::new(DAMON_ADMIN);
    let nr_path = admin.join("kdamonds/nr_kdamonds");
    let nr: u32 = read_trim(&nr_path)?
        .parse()
        .map_err(|e| Error::WorkingSet(format!("nr_kdamonds: {e}")))?;
    if nr != 0 {
        return Err(Error::WorkingSet(format!(
            "DAMON sysfs is already in use ({} has {nr} kdamond(s)); not touching someone else's monitoring",
            nr_path.display()
        )));
    }
    write_file(&nr_path, "1")?;
    let d = Damon {
        kd: admin.join("kdamonds/0"),
        created: true,
    };
    d.w("contexts/nr_contexts", "1")?;
    let avail = read_trim(&d.kd.join("contexts/0/avail_operations")).unwrap_or_default();
    if !avail.is_empty() && !avail.split_whitespace().any(|o| o == "vaddr") {
        return Err(Error::WorkingSet(format!(
            "this kernel's DAMON has no vaddr operations (avail_operations: {avail})"
        )));
    }
    d.w("contexts/0/operations", "vaddr")?;
    // 5 ms samples, 100 ms aggregation, 1 s region update; 200..5000 regions. DAMON starts
    // from a few big regions and splits them adaptively; a high minimum makes the first
    // snapshots fine-grained enough to be worth keeping.
    d.w("contexts/0/monitoring_attrs/intervals/sample_us", "5000")?;
    d.w("contexts/0/monitoring_attrs/intervals/aggr_us", "100000")?;
    d.w("contexts/0/monitoring_attrs/intervals/update_us", "1000000")?;
    d.w("contexts/0/monitoring_attrs/nr_regions/min", "200")?;
    d.w("contexts/0/monitoring_attrs/nr_regions/max", "5000")?;
    d.w("contexts/0/targets/nr_targets", "1")?;
    d.w("contexts/0/targets/0/pid_target", &t.pid().to_string())?;
    // A "stat" scheme matching every region accessed at least once per aggregation: its
    // tried_regions are the accessed regions, which we union over the whole period.
    d.w("contexts/0/schemes/nr_schemes", "1")?;
    let sc = "contexts/0/schemes/0";
    d.w(&format!("{sc}/action"), "stat")?;
    d.w(&format!("{sc}/access_pattern/sz/min"), "0")?;
    let max = |k: &str, v: String| d.w(&format!("{sc}/access_pattern/{k}"), &v);
    max("sz/max", u64::MAX.to_string())?;
    d.w(&format!("{sc}/access_pattern/nr_accesses/min"), "1")?;
    max("nr_accesses/max", u32::MAX.to_string())?;
    d.w(&format!("{sc}/access_pattern/age/min"), "0")?;
    max("age/max", u32::MAX.to_string())?;
    Ok(d)
}

/// The regions of a scheme's `tried_regions` directory (non-empty ones).
fn tried_regions(tried: &Path) -> Result<Vec<Range>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(tried).map_err(|e| Error::io(tried, e))? {
        let e = e.map_err(|e| Error::io(tried, e))?;
        if !e.file_type().map(|f| f.is_dir()).unwrap_or(false) {
            continue;
        }
        let rd = |k: &str| -> Result<u64> {
            read_trim(&e.path().join(k))?
                .parse()
                .map_err(|x| Error::WorkingSet(format!("{k}: {x}")))
        };
        let (start, end) = (rd("start")?, rd("end")?);
        if end > start {
            out.push(Range {
                start,
                len: end - start,
            });
        }
    }
    Ok(out)
}

// ---------- idle page tracking ----------

fn present_pfns(t: &Target) -> Result<Vec<(u64, u64)>> {
    let vmas = crate::inspect::vmas(t)?;
    let mut pm = Pagemap::open(t.pid())?;
    let mut out = Vec::new();
    for v in vmas.iter().filter(|v| v.kind != VmaKind::Special) {
        pm.scan(v.start, v.end, |addr, info| {
            if let (true, _, _) = classify(&info) {
                if let procfs::process::PageInfo::MemoryPage(f) = info {
                    let pfn = f.get_page_frame_number().0;
                    if pfn != 0 {
                        out.push((addr, pfn));
                    }
                }
            }
        })?;
    }
    Ok(out)
}

/// Maps a PFN to the PFN of its compound head via `/proc/kpageflags`
/// (KPF_COMPOUND_HEAD = bit 15, KPF_COMPOUND_TAIL = bit 16).
struct CompoundHeads {
    f: File,
    last_head: Option<u64>,
}

impl CompoundHeads {
    const KPAGEFLAGS: &'static str = "/proc/kpageflags";
    const HEAD: u64 = 1 << 15;
    const TAIL: u64 = 1 << 16;
    /// Largest compound page searched backwards (a PMD-sized THP on x86-64: 512 pages).
    const MAX_ORDER_PAGES: u64 = 512;

    fn open() -> Result<Self> {
        let p = Path::new(Self::KPAGEFLAGS);
        Ok(Self {
            f: File::open(p).map_err(|e| Error::io(p, e))?,
            last_head: None,
        })
    }

    fn flags(&self, pfn: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.f
            .read_exact_at(&mut b, pfn * 8)
            .map_err(|e| Error::io(Self::KPAGEFLAGS, e))?;
        Ok(u64::from_ne_bytes(b))
    }

    fn head_of(&mut self, pfn: u64) -> Result<u64> {
        let fl = self.flags(pfn)?;
        if fl & Self::HEAD != 0 {
            self.last_head = Some(pfn);
            return Ok(pfn);
        }
        if fl & Self::TAIL == 0 {
            return Ok(pfn);
        }
        if let Some(h) = self
            .last_head
            .filter(|&h| h < pfn && pfn - h < Self::MAX_ORDER_PAGES)
        {
            return Ok(h);
        }
        for back in 1..Self::MAX_ORDER_PAGES.min(pfn + 1) {
            if self.flags(pfn - back)? & Self::HEAD != 0 {
                self.last_head = Some(pfn - back);
                return Ok(pfn - back);
            }
        }
        Ok(pfn)
    }
}

fn record_page_idle(t: &Target, duration: Duration) -> Result<Vec<Range>> {
    let bitmap = Path::new(PAGE_IDLE_BITMAP);
    let f: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open(bitmap)
        .map_err(|e| Error::io(bitmap, e))?;
    // The kernel keeps the idle flag of a huge page (THP) on its head page only; tail PFNs
    // always read "not idle" (mm/page_idle.c skips tail pages). Track each page by the PFN
    // that carries its flag: its compound head, found through /proc/kpageflags.
    let pages: Vec<(u64, u64)> = {
        let raw = present_pfns(t)?;
        let mut heads = CompoundHeads::open()?;
        raw.into_iter()
            .map(|(addr, pfn)| Ok((addr, heads.head_of(pfn)?)))
            .collect::<Result<_>>()?
    };
    // Mark every present page idle (one 64-bit word per 64 PFNs).
    let mut words: BTreeMap<u64, u64> = BTreeMap::new();
    for &(_, pfn) in &pages {
        *words.entry(pfn / 64).or_default() |= 1 << (pfn % 64);
    }
    // The kernel answers a 64-PFN chunk that straddles max_pfn with 0 bytes (mm/page_idle.c
    // clamps the walk to max_pfn and only counts whole chunks): those pages cannot be tracked,
    // and are conservatively counted as accessed below.
    let mut untracked = std::collections::BTreeSet::new();
    for (&w, &bits) in &words {
        match f.write_at(&bits.to_ne_bytes(), w * 8) {
            Ok(8) => {}
            Ok(_) => {
                untracked.insert(w);
            }
            Err(e) => return Err(Error::io(bitmap, e)),
        }
    }
    std::thread::sleep(duration);
    t.check_alive("working-set recording")?;
    // A page whose idle bit was cleared has been accessed.
    let mut now: BTreeMap<u64, u64> = BTreeMap::new();
    for &w in words.keys() {
        let mut b = [0u8; 8];
        if untracked.contains(&w)
            || f.read_at(&mut b, w * 8).map_err(|e| Error::io(bitmap, e))? != 8
        {
            now.insert(w, 0); // untrackable: "accessed"
            continue;
        }
        now.insert(w, u64::from_ne_bytes(b));
    }
    let ps = sys::page_size();
    Ok(pages
        .into_iter()
        .filter(|&(_, pfn)| now[&(pfn / 64)] & (1 << (pfn % 64)) == 0)
        .map(|(addr, _)| Range {
            start: addr,
            len: ps,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_merges_and_serializes() {
        let ps = sys::page_size();
        let ws = WorkingSet::new(
            42,
            "x",
            WsMethod::DamonVaddr,
            Duration::from_secs(1),
            vec![
                Range {
                    start: 10 * ps,
                    len: 2 * ps,
                },
                Range {
                    start: 11 * ps,
                    len: 3 * ps,
                },
                Range {
                    start: 20 * ps,
                    len: ps,
                },
                Range {
                    start: 30 * ps,
                    len: 0,
                },
            ],
        );
        assert_eq!(
            ws.regions,
            vec![
                Range {
                    start: 10 * ps,
                    len: 4 * ps
                },
                Range {
                    start: 20 * ps,
                    len: ps
                }
            ]
        );
        assert!(ws.contains(10 * ps) && ws.contains(13 * ps + 5) && ws.contains(20 * ps));
        assert!(!ws.contains(14 * ps) && !ws.contains(9 * ps) && !ws.contains(21 * ps));
        let j = serde_json::to_string(&ws).unwrap();
        assert!(j.contains("\"method\":\"damon-vaddr\""));
        let back: WorkingSet = serde_json::from_str(&j).unwrap();
        assert_eq!(back, ws);
    }
}
