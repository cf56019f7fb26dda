//! Guest enlightenment for torpor: the guest's RAM layout, free-page bitmap and
//! page-priority map (the categories of enlightened post-copy, *Liberating Virtual Machines
//! from Physical Boundaries through Execution Knowledge*, ch. 5), a small
//! versioned binary wire protocol to hand them to the host, and the `torpor-guest`
//! agent that serves it over a virtio-serial port.
//!
//! Two kinds of map sources exist behind [`source::MapSource`]:
//! * [`source::PortableSource`] (this crate): built from `/proc/kpageflags` and
//!   `/proc/PID/pagemap` on a stock kernel. **Approximate** (see [`portable`]); every map
//!   it builds carries `approximate = true`, also on the wire.
//! * [`kmod_source::KmodSource`]: exact maps from the torpor kernel module through the
//!   `FREE_BITMAP` and `PRIORITY_MAP` ioctls on `/dev/torpor` (feature bits 3 and 4 of
//!   `GET_VERSION`); `approximate = false`, `build_us` is the module's own time. The agent
//!   (`torpor-guest --source auto`, the default) uses it when the module is loaded and
//!   advertises both bits, else the portable source.
//!
//! Safety rule (docs/guest-maps.md): any map generated while the guest runs is stale the
//! moment it is written. Consumers may use it only to reorder or skip prefetch, never
//! to discard memory.

pub mod category;
pub mod kmod_source;
pub mod layout;
pub mod maps;
pub mod portable;
pub mod protocol;
pub mod rle;
pub mod source;

pub use category::Category;
pub use layout::{PfnRange, RamLayout};
pub use maps::{FreeBitmap, MapInfo, MapSourceKind, PriorityMap};

/// Errors of this library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "/proc/iomem shows no System RAM with non-zero addresses (root is needed to see them)"
    )]
    NoRamVisible,
    #[error("parse error: {0}")]
    Parse(String),
    #[error("pagemap gives PFN 0 for present pages: CAP_SYS_ADMIN (root) is needed")]
    PfnHidden,
    #[error("procfs: {0}")]
    Procfs(String),
    #[error("map does not match the layout: {0}")]
    Mismatch(String),
    #[error("torpor kernel module: {0}")]
    Kmod(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
