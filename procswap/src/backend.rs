//! Backends: the operations whose implementation depends on what the kernel offers.
//!
//! Page-out is `process_madvise(MADV_PAGEOUT)` for every backend (a module cannot page a
//! process out on a stock kernel: `reclaim_pages` is not exported). What differs is the
//! prefetch mapping pass: [`StockBackend`] faults pages in with `process_vm_readv`;
//! [`KmodBackend`] installs PTEs with the module's PREFETCH ioctl ([`crate::kmod::Kmod`]),
//! without copying. [`select_backend`] picks one (`auto`: the module when `/dev/torpor`
//! answers with our ABI and PREFETCH).

use crate::error::{Error, Result};
use crate::inspect::{inspect_target, InspectOptions, Inspection};
use crate::kmod::Kmod;
use crate::sys::{self, Range};
use crate::target::Target;
use crate::uapi;

/// What a backend must provide. The whole-operation drivers ([`crate::purge_with`],
/// [`crate::prefetch_with`]) are written against this trait only.
pub trait Backend: Send + Sync {
    /// Short stable name ("stock", "kmod").
    fn name(&self) -> &'static str;

    /// One line saying which backend runs and how it does each operation.
    fn describe(&self) -> String;

    /// VMAs, page states, swap slots.
    fn inspect(&self, t: &Target, opts: InspectOptions) -> Result<Inspection> {
        inspect_target(t, opts)
    }

    /// Page out `ranges` (address order). Returns (bytes advised, bytes refused).
    /// `on_progress` receives the bytes advised so far within this call.
    fn page_out(
        &self,
        t: &Target,
        ranges: &[Range],
        on_progress: &mut dyn FnMut(u64),
    ) -> Result<(u64, u64)> {
        sys::madvise_all(t.pidfd(), ranges, libc::MADV_PAGEOUT, on_progress)
            .map_err(|e| Error::sys("process_madvise(MADV_PAGEOUT)", t.pid(), e))
    }

    /// Start asynchronous swap reads of `ranges` (given in swap-slot order). Returns bytes advised.
    fn read_ahead(&self, t: &Target, ranges: &[Range]) -> Result<u64> {
        sys::madvise_all(t.pidfd(), ranges, libc::MADV_WILLNEED, &mut |_| {})
            .map(|(done, _)| done)
            .map_err(|e| Error::sys("process_madvise(MADV_WILLNEED)", t.pid(), e))
    }

    /// Mapping pass: make every page at `addrs` present and mapped in the target.
    /// Returns (pages mapped, pages that could not be mapped).
    fn map_pages(&self, t: &Target, addrs: &[u64]) -> Result<(u64, u64)>;
}

/// Stock kernel facilities only: pagemap, process_madvise, process_vm_readv, memcg.
#[derive(Debug, Default, Clone, Copy)]
pub struct StockBackend;

impl Backend for StockBackend {
    fn name(&self) -> &'static str {
        "stock"
    }

    fn describe(&self) -> String {
        "stock backend: page-out process_madvise(MADV_PAGEOUT) + memcg reclaim; prefetch reads \
         process_madvise(MADV_WILLNEED) in swap-slot order, mapping pass process_vm_readv"
            .into()
    }

    fn map_pages(&self, t: &Target, addrs: &[u64]) -> Result<(u64, u64)> {
        crate::prefetch::map_pages_vm_readv(t.pid(), addrs)
    }
}

/// The torpor kernel module: page-out and read-ahead as the stock backend (process_madvise);
/// the mapping pass is the module's PREFETCH ioctl, which faults pages in on the target's mm
/// with `get_user_pages_remote` and installs PTEs without copying any data.
#[derive(Debug)]
pub struct KmodBackend {
    kmod: Kmod,
}

impl KmodBackend {
    /// Open `/dev/torpor`; fails unless the module answers with our ABI and has PREFETCH.
    pub fn open() -> Result<Self> {
        let kmod = Kmod::open()?;
        if !kmod.has(uapi::features::PREFETCH) {
            return Err(Error::Unsupported(format!(
                "{} has no PREFETCH (features {:#x})",
                kmod.path().display(),
                kmod.version().features
            )));
        }
        Ok(Self { kmod })
    }

    /// The open device.
    pub fn kmod(&self) -> &Kmod {
        &self.kmod
    }
}

/// Coalesce page addresses into ranges, keeping the given order (adjacent pages merge).
pub fn page_runs(addrs: &[u64], page_size: u64) -> Vec<uapi::TorporRange> {
    let mut out: Vec<uapi::TorporRange> = Vec::new();
    for &a in addrs {
        match out.last_mut() {
            Some(r) if r.start + r.len == a => r.len += page_size,
            _ => out.push(uapi::TorporRange {
                start: a,
                len: page_size,
            }),
        }
    }
    out
}

impl Backend for KmodBackend {
    fn name(&self) -> &'static str {
        "kmod"
    }

    fn describe(&self) -> String {
        let v = self.kmod.version();
        format!(
            "kmod backend (torpor.ko {} ABI {}, {}): page-out process_madvise(MADV_PAGEOUT) + memcg reclaim; \
             prefetch reads process_madvise(MADV_WILLNEED) in swap-slot order, mapping pass PREFETCH ioctl \
             (in-kernel get_user_pages_remote, no copy)",
            v.release_str(),
            v.abi_version,
            self.kmod.path().display()
        )
    }

    fn map_pages(&self, t: &Target, addrs: &[u64]) -> Result<(u64, u64)> {
        let ps = sys::page_size();
        let ranges = page_runs(addrs, ps);
        match self.kmod.prefetch(t.pid(), &ranges, false, 0) {
            // Pages already present count as mapped: the caller asked for "present after".
            Ok(r) => Ok((
                r.pages_mapped + r.pages_present,
                r.pages_failed + r.pages_unpopulated,
            )),
            Err(nix::errno::Errno::ESRCH) => Err(Error::TargetExited {
                pid: t.pid(),
                op: "prefetch mapping pass (kmod)",
            }),
            Err(e) => Err(Error::Sys {
                op: "ioctl(TORPOR_IOC_PREFETCH)",
                pid: t.pid(),
                source: e.into(),
            }),
        }
    }
}

/// Which backend the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendPref {
    /// The module when `/dev/torpor` answers with a matching ABI and PREFETCH, else stock.
    #[default]
    Auto,
    Stock,
    /// The torpor kernel module (`/dev/torpor`).
    Kmod,
}

impl std::str::FromStr for BackendPref {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "stock" => Ok(Self::Stock),
            "kmod" | "module" => Ok(Self::Kmod),
            _ => Err(format!("unknown backend {s:?} (auto, stock, kmod)")),
        }
    }
}

/// Pick a backend. `Kmod` requires the module (error if absent or incompatible); `Auto`
/// tries the module first and falls back to stock, logging why (see [`select_backend_explained`]).
pub fn select_backend(pref: BackendPref) -> Result<Box<dyn Backend>> {
    select_backend_explained(pref).map(|(b, _)| b)
}

/// Like [`select_backend`], also returning why that backend was chosen (for the CLI and logs).
pub fn select_backend_explained(pref: BackendPref) -> Result<(Box<dyn Backend>, String)> {
    match pref {
        BackendPref::Stock => Ok((Box::new(StockBackend), "stock backend requested".into())),
        BackendPref::Kmod => {
            let k = KmodBackend::open()?;
            Ok((Box::new(k), "kmod backend requested".into()))
        }
        BackendPref::Auto => match KmodBackend::open() {
            Ok(k) => Ok((
                Box::new(k),
                format!(
                    "auto: {} answered with ABI {}",
                    uapi::TORPOR_DEV_PATH,
                    uapi::TORPOR_ABI_VERSION
                ),
            )),
            Err(e) => {
                tracing::info!("torpor module not usable ({e}); using the stock backend");
                Ok((
                    Box::new(StockBackend),
                    format!("auto: module not usable ({e}); stock backend"),
                ))
            }
        },
    }
}
