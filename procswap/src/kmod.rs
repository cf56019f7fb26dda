//! Talking to the `torpor` kernel module through `/dev/torpor`.
//!
//! Only the plumbing lives here (open, ABI check, raw ioctls). The module-backed
//! implementation of the [`Backend`](crate) operations builds on it.

use crate::uapi::{
    self, TorporDiscard, TorporFreeBitmap, TorporPrefetch, TorporPriorityMap, TorporRange,
    TorporStats, TorporVersion,
};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why the module cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("torpor kernel module not loaded ({0} does not exist)")]
    Absent(PathBuf),
    #[error("permission denied opening {0} (the device is 0600 root; CAP_SYS_ADMIN is required)")]
    PermissionDenied(PathBuf),
    #[error("{path} speaks ABI {found}, this build needs {wanted}")]
    AbiMismatch {
        path: PathBuf,
        found: u32,
        wanted: u32,
    },
    #[error("{op} on {path} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An open `/dev/torpor`.
#[derive(Debug)]
pub struct Kmod {
    file: File,
    path: PathBuf,
    version: TorporVersion,
}

impl Kmod {
    /// Open the default device and check its ABI version.
    pub fn open() -> Result<Self, KmodError> {
        Self::open_path(Path::new(uapi::TORPOR_DEV_PATH))
    }

    /// Open `path` and check its ABI version.
    pub fn open_path(path: &Path) -> Result<Self, KmodError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => KmodError::Absent(path.to_owned()),
                std::io::ErrorKind::PermissionDenied => {
                    KmodError::PermissionDenied(path.to_owned())
                }
                _ => KmodError::Io {
                    op: "open",
                    path: path.to_owned(),
                    source: e,
                },
            })?;
        let mut version = TorporVersion::default();
        // SAFETY: GET_VERSION writes exactly size_of::<TorporVersion>() bytes (encoded in the
        // request number) into the valid, exclusively borrowed `version`.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                uapi::TORPOR_IOC_GET_VERSION as _,
                &mut version as *mut TorporVersion,
            )
        };
        if rc < 0 {
            return Err(KmodError::Io {
                op: "GET_VERSION",
                path: path.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        if version.abi_version != uapi::TORPOR_ABI_VERSION {
            return Err(KmodError::AbiMismatch {
                path: path.to_owned(),
                found: version.abi_version,
                wanted: uapi::TORPOR_ABI_VERSION,
            });
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            version,
        })
    }

    /// What `GET_VERSION` answered at open time.
    pub fn version(&self) -> &TorporVersion {
        &self.version
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the module advertises a feature bit (see [`uapi::features`]).
    pub fn has(&self, feature: u64) -> bool {
        self.version.features & feature == feature
    }

    /// PREFETCH: fault in and map the existing pages of `ranges` (in the order given) in
    /// process `pid`. `whole` ignores `ranges` and walks every private anonymous VMA.
    /// Returns the module's statistics; on EINTR the partial statistics are lost with the error.
    pub fn prefetch(
        &self,
        pid: i32,
        ranges: &[TorporRange],
        whole: bool,
        byte_budget: u64,
    ) -> Result<TorporPrefetch, nix::errno::Errno> {
        let mut req = TorporPrefetch {
            pid,
            flags: if whole { uapi::PREFETCH_WHOLE } else { 0 },
            ranges: ranges.as_ptr() as u64,
            nr_ranges: u32::try_from(ranges.len()).map_err(|_| nix::errno::Errno::E2BIG)?,
            order: uapi::ORDER_GIVEN,
            byte_budget,
            ..Default::default()
        };
        // SAFETY: PREFETCH reads and writes exactly one `TorporPrefetch` at the given address
        // (valid, exclusively borrowed) and reads `nr_ranges` `TorporRange`s from `ranges`,
        // which `ranges` (a live slice of that length) provides.
        unsafe { self.raw_ioctl(uapi::TORPOR_IOC_PREFETCH, &mut req as *mut _ as usize) }?;
        Ok(req)
    }

    /// DISCARD: zap the private anonymous pages of `ranges` in process `pid`. Only for
    /// memory proven free or dead: the data is gone.
    pub fn discard(
        &self,
        pid: i32,
        ranges: &[TorporRange],
    ) -> Result<TorporDiscard, nix::errno::Errno> {
        let mut req = TorporDiscard {
            pid,
            ranges: ranges.as_ptr() as u64,
            nr_ranges: u32::try_from(ranges.len()).map_err(|_| nix::errno::Errno::E2BIG)?,
            ..Default::default()
        };
        // SAFETY: as for `prefetch`: one `TorporDiscard` read and written, `nr_ranges` ranges read.
        unsafe { self.raw_ioctl(uapi::TORPOR_IOC_DISCARD, &mut req as *mut _ as usize) }?;
        Ok(req)
    }

    /// FREE_BITMAP (guest side): the free-page bitmap (bit per PFN) and the module's report.
    pub fn free_bitmap(&self) -> Result<(Vec<u8>, TorporFreeBitmap), nix::errno::Errno> {
        let mut req = TorporFreeBitmap::default();
        // SAFETY: with `bitmap == 0` the module only reads and writes the request itself.
        unsafe { self.raw_ioctl(uapi::TORPOR_IOC_FREE_BITMAP, &mut req as *mut _ as usize) }?;
        // Headroom in case the node grew between the two calls (it does not without hotplug).
        let mut buf = vec![0u8; (req.end_pfn.div_ceil(8) + 64) as usize];
        req.bitmap = buf.as_mut_ptr() as u64;
        req.bitmap_bytes = buf.len() as u64;
        // SAFETY: the module writes at most `bitmap_bytes` bytes into `buf`, which is live and
        // exclusively borrowed for the call, and reads/writes the request.
        unsafe { self.raw_ioctl(uapi::TORPOR_IOC_FREE_BITMAP, &mut req as *mut _ as usize) }?;
        Ok((buf, req))
    }

    /// PRIORITY_MAP (guest side): one category byte per PFN in `[0, end_pfn)` and the module's
    /// report. `window_ms`: activity window (0 = the module's default, 16 s).
    pub fn priority_map(
        &self,
        window_ms: u32,
    ) -> Result<(Vec<u8>, TorporPriorityMap), nix::errno::Errno> {
        let mut req = TorporPriorityMap {
            window_ms,
            ..Default::default()
        };
        // SAFETY: with `map == 0` the module only reads and writes the request itself.
        unsafe { self.raw_ioctl(uapi::TORPOR_IOC_PRIORITY_MAP, &mut req as *mut _ as usize) }?;
        // Headroom in case the node grew between the two calls (it does not without hotplug).
        let mut buf = vec![0u8; (req.end_pfn + 4096) as usize];
        req.map = buf.as_mut_ptr() as u64;
        req.map_bytes = buf.len() as u64;
        req.window_ms = window_ms;
        // SAFETY: the module writes at most `map_bytes` bytes into `buf`, which is live and
        // exclusively borrowed for the call, and reads/writes the request.
        unsafe { self.raw_ioctl(uapi::TORPOR_IOC_PRIORITY_MAP, &mut req as *mut _ as usize) }?;
        buf.truncate(req.end_pfn as usize);
        Ok((buf, req))
    }

    /// GET_STATS: references the module holds now (pid, task, mm, page) and its call
    /// counters. With no other ioctl running, `outstanding_refs()` must be 0: anything else is
    /// a reference leaked by the module.
    pub fn stats(&self) -> Result<TorporStats, nix::errno::Errno> {
        let mut s = TorporStats::default();
        // SAFETY: GET_STATS writes exactly one `TorporStats` at the given address (valid,
        // exclusively borrowed for the call).
        unsafe {
            self.raw_ioctl(
                uapi::TORPOR_IOC_GET_STATS,
                &mut s as *mut TorporStats as usize,
            )
        }?;
        Ok(s)
    }

    /// Issue a raw ioctl with an untyped argument (tests and fuzzing use this to
    /// check that the module answers any request with an errno, never a crash).
    /// Returns the ioctl's non-negative return value or the errno.
    ///
    /// # Safety
    /// `arg` is passed to the kernel unchecked; if `cmd` is a request the module
    /// implements, `arg` must be valid for that request's reads and writes.
    pub unsafe fn raw_ioctl(&self, cmd: u32, arg: usize) -> Result<i32, nix::errno::Errno> {
        // SAFETY: the caller guarantees `arg` matches `cmd` (see the function's contract); the
        // fd is valid for the lifetime of `self`.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), cmd as _, arg) };
        if rc < 0 {
            Err(nix::errno::Errno::last())
        } else {
            Ok(rc)
        }
    }
}
