//! Backends: the operations whose implementation depends on what the kernel offers.
//!
//! Page-out is `process_madvise(MADV_PAGEOUT)` for every backend (a module cannot page a
//! process out on a stock kernel: `reclaim_pages` is not exported). What differs is the
//! prefetch mapping pass: the stock backend faults pages in with `process_vm_readv`; the
//! kernel-module backend (to be added next to [`StockBackend`], using [`crate::kmod::Kmod`])
//! will install PTEs with the module's PREFETCH ioctl, without copying.

use crate::error::{Error, Result};
use crate::inspect::{inspect_target, InspectOptions, Inspection};
use crate::sys::{self, Range};
use crate::target::Target;

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
    fn page_out(&self, t: &Target, ranges: &[Range], on_progress: &mut dyn FnMut(u64)) -> Result<(u64, u64)> {
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

/// Which backend the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendPref {
    /// The best one available (today: always stock).
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

/// Pick a backend. The seam for the kernel-module backend is here: `Kmod` must open
/// `/dev/torpor` and check for `features::PREFETCH`; `Auto` should try it first and fall back
/// to stock, saying why in [`Backend::describe`].
pub fn select_backend(pref: BackendPref) -> Result<Box<dyn Backend>> {
    match pref {
        BackendPref::Auto | BackendPref::Stock => Ok(Box::new(StockBackend)),
        BackendPref::Kmod => Err(Error::Unsupported(
            "the kernel-module backend is not implemented yet in this build (use --backend stock)".into(),
        )),
    }
}
