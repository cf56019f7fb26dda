//! Exact maps from the torpor kernel module: `FREE_BITMAP` and `PRIORITY_MAP` ioctls on
//! `/dev/torpor` (see kmod/README.md). The module indexes its maps by PFN over
//! `[0, end_pfn)`; this source re-indexes them by position in the `/proc/iomem` layout,
//! like every map of the protocol. Maps are exact at the moment the module built them
//! (`approximate = false`) and still only a snapshot (DESIGN.md §4: order or skip
//! prefetch, never discard). `build_us` is the module's own time for the map.

use crate::layout::RamLayout;
use crate::maps::{FreeBitmap, MapInfo, MapSourceKind, PriorityMap};
use crate::source::MapSource;
use crate::Error;
use serde::Serialize;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The guest-side subset of the `/dev/torpor` ABI (kmod/src/uapi.rs; procswap/src/uapi.rs
/// mirrors all of it). A copy rather than a dependency on procswap, so that procswap (the
/// host side) can depend on this crate's protocol client. The tests below pin the same
/// sizes, offsets and ioctl numbers the module asserts at compile time.
pub mod uapi {
    pub const TORPOR_DEV_PATH: &str = "/dev/torpor";
    pub const TORPOR_ABI_VERSION: u32 = 1;
    /// Feature bits of `GET_VERSION`.
    pub const FEAT_FREE_BITMAP: u64 = 1 << 3;
    pub const FEAT_PRIORITY_MAP: u64 = 1 << 4;
    pub const FEATURE_NAMES: [&str; 5] = ["get_version", "prefetch", "discard", "free_bitmap", "priority_map"];

    /// `struct torpor_version`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct TorporVersion {
        pub abi_version: u32,
        pub size: u32,
        pub features: u64,
        pub release: [u8; 32],
    }

    /// `struct torpor_free_bitmap`: bit `pfn` set = page frame `pfn` in a free buddy block.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct TorporFreeBitmap {
        pub bitmap: u64,
        pub bitmap_bytes: u64,
        pub flags: u32,
        pub reserved: u32,
        pub end_pfn: u64,
        pub free_pages: u64,
        pub ns: u64,
    }

    /// `struct torpor_priority_map`: byte `pfn` = category (0..=8) of page frame `pfn`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct TorporPriorityMap {
        pub map: u64,
        pub map_bytes: u64,
        pub window_ms: u32,
        pub flags: u32,
        pub end_pfn: u64,
        pub ns: u64,
        pub user_ns: u64,
        pub active_procs: u32,
        pub total_procs: u32,
        pub counts: [u64; 9],
    }

    const fn iowr(nr: u32, size: usize) -> u32 {
        (3 << 30) | ((size as u32) << 16) | (0xD7 << 8) | nr
    }
    /// `_IOR(0xD7, 0x00, struct torpor_version)`.
    pub const TORPOR_IOC_GET_VERSION: u32 = (2 << 30) | ((core::mem::size_of::<TorporVersion>() as u32) << 16) | (0xD7 << 8);
    pub const TORPOR_IOC_FREE_BITMAP: u32 = iowr(0x03, core::mem::size_of::<TorporFreeBitmap>());
    pub const TORPOR_IOC_PRIORITY_MAP: u32 = iowr(0x04, core::mem::size_of::<TorporPriorityMap>());
}

/// An open `/dev/torpor` (guest-side ioctls only).
pub struct Device {
    file: File,
    path: PathBuf,
    version: uapi::TorporVersion,
}

impl Device {
    /// Open the device and read `GET_VERSION` (ABI version checked).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| {
            Error::Kmod(match e.kind() {
                std::io::ErrorKind::NotFound => format!("module not loaded ({} does not exist)", path.display()),
                std::io::ErrorKind::PermissionDenied => {
                    format!("permission denied opening {} (0600 root, CAP_SYS_ADMIN needed)", path.display())
                }
                _ => format!("open {}: {e}", path.display()),
            })
        })?;
        let mut d = Device { file, path: path.to_owned(), version: uapi::TorporVersion::default() };
        let mut v = uapi::TorporVersion::default();
        // SAFETY: GET_VERSION writes exactly size_of::<TorporVersion>() bytes (encoded in the
        // request number) into the valid, exclusively borrowed `v`.
        unsafe { d.ioctl(uapi::TORPOR_IOC_GET_VERSION, &mut v as *mut _ as usize) }.map_err(|e| ioctl_err("GET_VERSION", e))?;
        if v.abi_version != uapi::TORPOR_ABI_VERSION {
            return Err(Error::Kmod(format!("{} speaks ABI {}, this build needs {}", path.display(), v.abi_version, uapi::TORPOR_ABI_VERSION)));
        }
        d.version = v;
        Ok(d)
    }

    /// Raw ioctl.
    ///
    /// # Safety
    /// `arg` must be valid for the reads and writes request `cmd` makes.
    unsafe fn ioctl(&self, cmd: u32, arg: usize) -> Result<(), std::io::Error> {
        // SAFETY: the caller guarantees `arg` matches `cmd`; the fd is valid while `self` lives.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), cmd as _, arg) };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn features(&self) -> u64 {
        self.version.features
    }

    pub fn feature_names(&self) -> String {
        (0..64)
            .filter(|b| self.version.features >> b & 1 == 1)
            .map(|b| uapi::FEATURE_NAMES.get(b).map(|s| s.to_string()).unwrap_or_else(|| format!("bit{b}")))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn release(&self) -> String {
        let r = &self.version.release;
        String::from_utf8_lossy(&r[..r.iter().position(|&b| b == 0).unwrap_or(r.len())]).into_owned()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// FREE_BITMAP: one bit per PFN in `[0, end_pfn)`, and the module's report.
    pub fn free_bitmap(&self) -> Result<(Vec<u8>, uapi::TorporFreeBitmap), std::io::Error> {
        let mut req = uapi::TorporFreeBitmap::default();
        // SAFETY: with `bitmap == 0` the module only reads and writes the request itself.
        unsafe { self.ioctl(uapi::TORPOR_IOC_FREE_BITMAP, &mut req as *mut _ as usize) }?;
        let mut buf = vec![0u8; (req.end_pfn.div_ceil(8) + 64) as usize];
        req.bitmap = buf.as_mut_ptr() as u64;
        req.bitmap_bytes = buf.len() as u64;
        // SAFETY: the module writes at most `bitmap_bytes` bytes into `buf` (live, exclusively
        // borrowed for the call) and reads/writes the request.
        unsafe { self.ioctl(uapi::TORPOR_IOC_FREE_BITMAP, &mut req as *mut _ as usize) }?;
        buf.truncate(req.end_pfn.div_ceil(8) as usize);
        Ok((buf, req))
    }

    /// PRIORITY_MAP: one category byte per PFN in `[0, end_pfn)`, and the module's report.
    pub fn priority_map(&self, window_ms: u32) -> Result<(Vec<u8>, uapi::TorporPriorityMap), std::io::Error> {
        let mut req = uapi::TorporPriorityMap { window_ms, ..Default::default() };
        // SAFETY: with `map == 0` the module only reads and writes the request itself.
        unsafe { self.ioctl(uapi::TORPOR_IOC_PRIORITY_MAP, &mut req as *mut _ as usize) }?;
        let mut buf = vec![0u8; (req.end_pfn + 4096) as usize];
        req.map = buf.as_mut_ptr() as u64;
        req.map_bytes = buf.len() as u64;
        req.window_ms = window_ms;
        // SAFETY: the module writes at most `map_bytes` bytes into `buf` (live, exclusively
        // borrowed for the call) and reads/writes the request.
        unsafe { self.ioctl(uapi::TORPOR_IOC_PRIORITY_MAP, &mut req as *mut _ as usize) }?;
        buf.truncate(req.end_pfn as usize);
        Ok((buf, req))
    }
}

/// Feature bits the source needs from `GET_VERSION`.
pub const REQUIRED_FEATURES: u64 = uapi::FEAT_FREE_BITMAP | uapi::FEAT_PRIORITY_MAP;

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
        let kmod = Device::open(path)?;
        if kmod.features() & REQUIRED_FEATURES != REQUIRED_FEATURES {
            return Err(Error::Kmod(format!(
                "{} does not advertise free_bitmap+priority_map (features {:#x}: {})",
                path.display(),
                kmod.features(),
                kmod.feature_names()
            )));
        }
        Ok(KmodSource { kmod, default_window, last_stats: KmodStats::default() })
    }

    pub fn device(&self) -> &Device {
        &self.kmod
    }
}

fn ioctl_err(op: &str, e: std::io::Error) -> Error {
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
        let (bits, rep) = self.kmod.free_bitmap().map_err(|e| ioctl_err("FREE_BITMAP", e))?;
        let t = Instant::now();
        let mut b = FreeBitmap::new(layout.clone(), MapInfo::now(MapSourceKind::ModuleExact, Duration::from_nanos(rep.ns), 0));
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
        let (raw, rep) = self.kmod.priority_map(window_ms).map_err(|e| ioctl_err("PRIORITY_MAP", e))?;
        let t = Instant::now();
        let info = MapInfo::now(MapSourceKind::ModuleExact, Duration::from_nanos(rep.ns), rep.window_ms);
        let mut p = PriorityMap::new(layout.clone(), info);
        pfn_bytes_to_layout(&layout, &raw, crate::Category::Other as u8, &mut p.bytes);
        if let Some(bad) = p.bytes.iter().find(|&&b| b as usize >= crate::Category::COUNT) {
            return Err(Error::Kmod(format!("PRIORITY_MAP returned an invalid category {bad}")));
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
        let l = RamLayout::new(vec![PfnRange { start: 1, count: 3 }, PfnRange { start: 8, count: 4 }]).unwrap();
        // raw covers PFNs 0..10: PFNs 10 and 11 lie past end_pfn and get the fill value.
        let raw = [9, 0, 1, 2, 9, 9, 9, 9, 5, 6];
        let mut out = vec![0u8; l.total_pages() as usize];
        pfn_bytes_to_layout(&l, &raw, 8, &mut out);
        assert_eq!(out, vec![0, 1, 2, 5, 6, 8, 8]);
    }

    #[test]
    fn abi_matches_the_module() {
        use core::mem::{offset_of, size_of};
        use uapi::*;
        // The values kmod/src/uapi.rs asserts at compile time.
        assert_eq!(size_of::<TorporVersion>(), 48);
        assert_eq!(TORPOR_IOC_GET_VERSION, 0x8030_D700);
        assert_eq!(size_of::<TorporFreeBitmap>(), 48);
        assert_eq!(offset_of!(TorporFreeBitmap, end_pfn), 24);
        assert_eq!(offset_of!(TorporFreeBitmap, ns), 40);
        assert_eq!(TORPOR_IOC_FREE_BITMAP, 0xC030_D703);
        assert_eq!(size_of::<TorporPriorityMap>(), 128);
        assert_eq!(offset_of!(TorporPriorityMap, window_ms), 16);
        assert_eq!(offset_of!(TorporPriorityMap, end_pfn), 24);
        assert_eq!(offset_of!(TorporPriorityMap, user_ns), 40);
        assert_eq!(offset_of!(TorporPriorityMap, active_procs), 48);
        assert_eq!(offset_of!(TorporPriorityMap, counts), 56);
        assert_eq!(TORPOR_IOC_PRIORITY_MAP, 0xC080_D704);
        assert_eq!((FEAT_FREE_BITMAP, FEAT_PRIORITY_MAP), (1 << 3, 1 << 4));
    }

    #[test]
    fn absent_device_is_a_clear_error() {
        let e = KmodSource::open_path(Path::new("/nonexistent/torpor"), DEFAULT_WINDOW).err().unwrap();
        assert!(e.to_string().contains("not loaded"), "{e}");
    }
}
