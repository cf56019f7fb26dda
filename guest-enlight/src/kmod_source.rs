//! Exact maps from the torpor kernel module: `FREE_BITMAP` and `PRIORITY_MAP` ioctls on
//! `/dev/torpor` (see kmod/README.md). The module indexes its maps by PFN over
//! `[0, end_pfn)`; this source re-indexes them by position in the `/proc/iomem` layout,
//! like every map of the protocol. Maps are exact at the moment the module built them
//! (`approximate = false`) and still only a snapshot (docs/guest-maps.md: order or skip
//! prefetch, never discard). `build_us` is the module's own time for the map.

use crate::layout::RamLayout;
use crate::maps::{FreeBitmap, MapInfo, MapSourceKind, PriorityMap};
use crate::source::MapSource;
use crate::Error;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// The `/dev/torpor` ABI and its ioctl wrappers are procswap's (one mirror of the module's
/// uapi, with layout tests there).
pub use procswap::kmod::Kmod as Device;
pub use procswap::uapi;

/// Feature bits the source needs from `GET_VERSION`.
pub const REQUIRED_FEATURES: u64 = uapi::features::FREE_BITMAP | uapi::features::PRIORITY_MAP;

/// Counters of the last map the module built.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KmodStats {
    /// PFNs the module covers (`[0, end_pfn)`).
    pub end_pfn: u64,
    /// FREE_BITMAP: time in the module (ns).
    pub free_ns: u64,
    /// FREE_BITMAP: pages the module found free.
    pub free_pages: u64,
    /// PRIORITY_MAP: time in the module (ns), whole call.
    pub priority_ns: u64,
    /// PRIORITY_MAP: of which the page-table walks of active processes (ns).
    pub priority_user_ns: u64,
    /// PRIORITY_MAP: processes scheduled within the window / user processes seen.
    pub active_processes: u32,
    pub processes_seen: u32,
    /// Re-indexing by layout in userspace (µs), both maps.
    pub convert_us: u64,
}

/// The kernel-module map source.
pub struct KmodSource {
    kmod: Device,
    pub default_window: Duration,
    pub last_stats: KmodStats,
}

impl KmodSource {
    /// Open `/dev/torpor`; fails unless the module advertises [`REQUIRED_FEATURES`].
    pub fn open(default_window: Duration) -> Result<Self, Error> {
        Self::open_path(Path::new(uapi::TORPOR_DEV_PATH), default_window)
    }

    pub fn open_path(path: &Path, default_window: Duration) -> Result<Self, Error> {
        let kmod = Device::open_path(path).map_err(|e| Error::Kmod(e.to_string()))?;
        if !kmod.has(REQUIRED_FEATURES) {
            let v = kmod.version();
            return Err(Error::Kmod(format!(
                "{} does not advertise free_bitmap+priority_map (features {:#x}: {})",
                path.display(),
                v.features,
                v.feature_names().join(",")
            )));
        }
        Ok(KmodSource {
            kmod,
            default_window,
            last_stats: KmodStats::default(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.kmod
    }
}

fn ioctl_err(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Kmod(format!("{op} ioctl failed: {e}"))
}

/// Re-index a PFN-indexed byte map (`raw[pfn]`) by layout position; PFNs at or past
/// `raw.len()` get `fill`.
pub fn pfn_bytes_to_layout(layout: &RamLayout, raw: &[u8], fill: u8, out: &mut [u8]) {
    let mut base = 0usize;
    for r in &layout.ranges {
        let (s, e) = (r.start as usize, r.end() as usize);
        let dst = &mut out[base..base + r.count as usize];
        let have = raw.len().clamp(s, e);
        dst[..have - s].copy_from_slice(&raw[s..have]);
        dst[have - s..].iter_mut().for_each(|b| *b = fill);
        base += r.count as usize;
    }
}

impl MapSource for KmodSource {
    fn kind(&self) -> MapSourceKind {
        MapSourceKind::ModuleExact
    }

    fn layout(&mut self) -> Result<RamLayout, Error> {
        RamLayout::from_proc()
    }

    fn free_bitmap(&mut self) -> Result<FreeBitmap, Error> {
        let layout = self.layout()?;
        let (mut bits, rep) = self
            .kmod
            .free_bitmap()
            .map_err(|e| ioctl_err("FREE_BITMAP", e))?;
        bits.truncate(rep.end_pfn.div_ceil(8) as usize);
        let t = Instant::now();
        let mut b = FreeBitmap::new(
            layout.clone(),
            MapInfo::now(MapSourceKind::ModuleExact, Duration::from_nanos(rep.ns), 0),
        );
        let mut i = 0u64;
        for r in &layout.ranges {
            b.or_bits_from(i, &bits, r.start, r.count);
            i += r.count;
        }
        self.last_stats.end_pfn = rep.end_pfn;
        self.last_stats.free_ns = rep.ns;
        self.last_stats.free_pages = rep.free_pages;
        self.last_stats.convert_us = t.elapsed().as_micros() as u64;
        Ok(b)
    }

    fn priority_map(&mut self, window: Option<Duration>) -> Result<PriorityMap, Error> {
        let layout = self.layout()?;
        let window = window.unwrap_or(self.default_window);
        let window_ms = u32::try_from(window.as_millis()).unwrap_or(u32::MAX).max(1);
        let (raw, rep) = self
            .kmod
            .priority_map(window_ms)
            .map_err(|e| ioctl_err("PRIORITY_MAP", e))?;
        let t = Instant::now();
        let info = MapInfo::now(
            MapSourceKind::ModuleExact,
            Duration::from_nanos(rep.ns),
            rep.window_ms,
        );
        let mut p = PriorityMap::new(layout.clone(), info);
        pfn_bytes_to_layout(&layout, &raw, crate::Category::Other as u8, &mut p.bytes);
        if let Some(bad) = p
            .bytes
            .iter()
            .find(|&&b| b as usize >= crate::Category::COUNT)
        {
            return Err(Error::Kmod(format!(
                "PRIORITY_MAP returned an invalid category {bad}"
            )));
        }
        self.last_stats.end_pfn = rep.end_pfn;
        self.last_stats.priority_ns = rep.ns;
        self.last_stats.priority_user_ns = rep.user_ns;
        self.last_stats.active_processes = rep.active_procs;
        self.last_stats.processes_seen = rep.total_procs;
        self.last_stats.convert_us += t.elapsed().as_micros() as u64;
        Ok(p)
    }

    fn stats(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.last_stats).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::DEFAULT_WINDOW;
    use crate::PfnRange;

    #[test]
    fn reindexes_by_layout() {
        let l = RamLayout::new(vec![
            PfnRange { start: 1, count: 3 },
            PfnRange { start: 8, count: 4 },
        ])
        .unwrap();
        // raw covers PFNs 0..10: PFNs 10 and 11 lie past end_pfn and get the fill value.
        let raw = [9, 0, 1, 2, 9, 9, 9, 9, 5, 6];
        let mut out = vec![0u8; l.total_pages() as usize];
        pfn_bytes_to_layout(&l, &raw, 8, &mut out);
        assert_eq!(out, vec![0, 1, 2, 5, 6, 8, 8]);
    }

    #[test]
    fn absent_device_is_a_clear_error() {
        let e = KmodSource::open_path(Path::new("/nonexistent/torpor"), DEFAULT_WINDOW)
            .err()
            .unwrap();
        assert!(e.to_string().contains("not loaded"), "{e}");
    }
}
