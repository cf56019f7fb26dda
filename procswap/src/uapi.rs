//! Userspace mirror of the `/dev/torpor` ioctl ABI (`kmod/src/uapi.rs` is the
//! kernel side). Both sides must agree byte for byte: the layout tests below pin
//! sizes, offsets and ioctl numbers, and the module answers `GET_VERSION` with
//! the ABI version and the size of the structure it knows.

/// ioctl "type" byte; unused in Documentation/userspace-api/ioctl/ioctl-number.rst (6.12).
pub const TORPOR_IOC_MAGIC: u8 = 0xD7;
/// Bumped on any incompatible change of an ioctl structure or number.
pub const TORPOR_ABI_VERSION: u32 = 1;
/// Path of the device node the module registers.
pub const TORPOR_DEV_PATH: &str = "/dev/torpor";

/// Feature bits reported by `GET_VERSION` (`TorporVersion::features`).
pub mod features {
    /// `GET_VERSION` itself.
    pub const GET_VERSION: u64 = 1 << 0;
    /// `PREFETCH`: map a target's swapped pages in.
    pub const PREFETCH: u64 = 1 << 1;
    /// `DISCARD`: zap ranges of a target.
    pub const DISCARD: u64 = 1 << 2;
    /// `FREE_BITMAP` (guest side).
    pub const FREE_BITMAP: u64 = 1 << 3;
    /// `PRIORITY_MAP` (guest side).
    pub const PRIORITY_MAP: u64 = 1 << 4;
    /// `GET_STATS`: the module's outstanding references and call counters.
    pub const GET_STATS: u64 = 1 << 5;

    /// Human-readable names, in bit order.
    pub const NAMES: &[(u64, &str)] = &[
        (GET_VERSION, "get_version"),
        (PREFETCH, "prefetch"),
        (DISCARD, "discard"),
        (FREE_BITMAP, "free_bitmap"),
        (PRIORITY_MAP, "priority_map"),
        (GET_STATS, "get_stats"),
    ];
}

/// `struct torpor_version`, filled by `TORPOR_IOC_GET_VERSION`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TorporVersion {
    /// `TORPOR_ABI_VERSION` of the module.
    pub abi_version: u32,
    /// `size_of::<TorporVersion>()` as the module knows it.
    pub size: u32,
    /// Bit set of [`features`].
    pub features: u64,
    /// NUL-padded module release string (e.g. "0.1.0").
    pub release: [u8; 32],
}

impl TorporVersion {
    /// The release string up to the first NUL.
    pub fn release_str(&self) -> String {
        let end = self
            .release
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.release.len());
        String::from_utf8_lossy(&self.release[..end]).into_owned()
    }

    /// Names of the feature bits that are set (unknown bits as `bitN`).
    pub fn feature_names(&self) -> Vec<String> {
        (0..64)
            .filter(|b| self.features & (1u64 << b) != 0)
            .map(|b| {
                features::NAMES
                    .iter()
                    .find(|(bit, _)| *bit == 1u64 << b)
                    .map(|(_, n)| (*n).to_string())
                    .unwrap_or_else(|| format!("bit{b}"))
            })
            .collect()
    }
}

/// `struct torpor_range`: `[start, start + len)` in the target's address space
/// (the module rounds start down and the end up to page boundaries).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TorporRange {
    pub start: u64,
    pub len: u64,
}

/// PREFETCH flag: ignore `ranges` and walk every private anonymous VMA in address order.
pub const PREFETCH_WHOLE: u32 = 1 << 0;
/// PREFETCH order: ranges in the order given (userspace sorts, e.g. by swap slot).
pub const ORDER_GIVEN: u32 = 0;
/// PREFETCH order: the module sorts ranges by address (at most [`MAX_SORTED_RANGES`], else E2BIG).
pub const ORDER_ADDRESS: u32 = 1;
/// Most ranges `ORDER_ADDRESS` accepts.
pub const MAX_SORTED_RANGES: u32 = 65536;
/// Most ranges one request may carry (more is EINVAL).
pub const MAX_RANGES: u32 = 1 << 24;

/// `struct torpor_prefetch`, argument of `TORPOR_IOC_PREFETCH` (in/out).
///
/// For every page of the ranges that exists (swapped out, or already present), the module
/// faults it in for read on the target's mm (`get_user_pages_remote`, no data copied) so its
/// PTE is installed. Holes (never-touched anonymous pages) are skipped, never zero-filled.
/// Stats are written back even when the call fails (EINTR), so the caller sees how far it got.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TorporPrefetch {
    /// Target pid in the caller's pid namespace.
    pub pid: i32,
    /// [`PREFETCH_WHOLE`] or 0.
    pub flags: u32,
    /// User pointer to `nr_ranges` [`TorporRange`]s.
    pub ranges: u64,
    pub nr_ranges: u32,
    /// [`ORDER_GIVEN`] or [`ORDER_ADDRESS`].
    pub order: u32,
    /// Stop after mapping this many bytes (0: no limit); see `stop_addr`.
    pub byte_budget: u64,
    /// Out: pages in runs this call had to fault in (a run starts at a page that was not
    /// present; a present page later in the same run is counted here too).
    pub pages_mapped: u64,
    /// Out: pages found present at the start of a run (nothing to do).
    pub pages_present: u64,
    /// Out: pages with nothing behind them (holes), skipped.
    pub pages_unpopulated: u64,
    /// Out: pages that could not be faulted in.
    pub pages_failed: u64,
    /// Out: time spent in the module.
    pub ns: u64,
    /// Out: where the byte budget stopped the walk (0: it did not).
    pub stop_addr: u64,
}

/// `struct torpor_discard`, argument of `TORPOR_IOC_DISCARD` (in/out): zap (drop without
/// writing anywhere) the private anonymous pages in the ranges, as MADV_DONTNEED would do in the
/// target. Shared, locked, hugetlb, PFN-map and file-backed VMAs are skipped and counted.
/// Only for memory the caller has proven free or dead.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TorporDiscard {
    pub pid: i32,
    /// Must be 0.
    pub flags: u32,
    pub ranges: u64,
    pub nr_ranges: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Out: bytes zapped.
    pub bytes_zapped: u64,
    /// Out: bytes skipped (no VMA, or a VMA of a kind that is never zapped).
    pub bytes_skipped: u64,
    /// Out: time spent in the module.
    pub ns: u64,
}

/// `struct torpor_free_bitmap`, argument of `TORPOR_IOC_FREE_BITMAP` (in/out), guest side:
/// bit `pfn` of the buffer at `bitmap` is set when page frame `pfn` belongs to a free buddy
/// block (every page of the block, not only its head). `bitmap == 0` only reports `end_pfn`
/// (size query); a buffer shorter than `ceil(end_pfn / 8)` bytes gets ENOSPC (with `end_pfn`
/// written back). A snapshot: each 32768-PFN chunk is read under its zone's lock.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TorporFreeBitmap {
    pub bitmap: u64,
    pub bitmap_bytes: u64,
    /// Must be 0.
    pub flags: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Out: one past the last PFN of the node (node_start_pfn + node_spanned_pages).
    pub end_pfn: u64,
    /// Out: bits set.
    pub free_pages: u64,
    /// Out: time spent in the module.
    pub ns: u64,
}

/// Number of priority-map categories (values 0..=8).
pub const NR_CATEGORIES: usize = 9;
/// PRIORITY_MAP's default activity window (ms), used when `window_ms == 0`.
pub const DEFAULT_WINDOW_MS: u32 = 16_000;

/// `struct torpor_priority_map`, argument of `TORPOR_IOC_PRIORITY_MAP` (in/out), guest side:
/// byte `pfn` of the buffer at `map` is the category of page frame `pfn` (enlightened post-copy's order:
/// 0 Kernel, 1 Kernel_Allocated, 2 Memory_I/O, 3 Page_Table, 4 User_Code, 5 User_Data,
/// 6 File_Active, 7 File_Inactive, 8 Other; a page in several categories gets the lowest value).
/// User_* are the pages mapped by processes scheduled within `window_ms`. `map == 0` only
/// reports `end_pfn` (size query); a buffer shorter than `end_pfn` bytes gets ENOSPC (with
/// `end_pfn` written back). A snapshot computed on request.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TorporPriorityMap {
    pub map: u64,
    pub map_bytes: u64,
    /// In: activity window in ms (0: [`DEFAULT_WINDOW_MS`]); out: the window used.
    pub window_ms: u32,
    /// Must be 0.
    pub flags: u32,
    /// Out: one past the last PFN of the node.
    pub end_pfn: u64,
    /// Out: time spent in the module (whole call).
    pub ns: u64,
    /// Out: time of the process pass (page-table walks of the active processes).
    pub user_ns: u64,
    /// Out: processes found active in the window (and walked).
    pub active_procs: u32,
    /// Out: user processes seen.
    pub total_procs: u32,
    /// Out: pages per category.
    pub counts: [u64; NR_CATEGORIES],
}

/// `struct torpor_stats`, filled by `TORPOR_IOC_GET_STATS`: what the module holds right now
/// and what it has answered since it was loaded. Every reference the module takes on a
/// kernel object (`struct pid`, `task_struct`, `mm_struct`, `struct page`) goes through a
/// counting wrapper that increments on acquire and decrements on release, so a reference
/// leaked on any path shows up here as a nonzero count after the calls have returned (and in
/// the module's unload line). Snapshot semantics: counters are read one after the other,
/// without a lock; with no other ioctl running, the reference counts are exact.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TorporStats {
    /// Out: `size_of::<TorporStats>()` as the module knows it.
    pub size: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Out: `struct pid` references held (`find_get_pid`, released with `put_pid`).
    pub pid_refs: u64,
    /// Out: `task_struct` references held (`get_pid_task`, released with `put_task_struct`).
    pub task_refs: u64,
    /// Out: `mm_struct` `mm_users` references held (`get_task_mm`, released with `mmput`).
    pub mm_refs: u64,
    /// Out: `struct page` references held (the module's GUP calls pass no page array, so it
    /// takes none; counted so that a path that ever pins a page is covered).
    pub page_refs: u64,
    /// Out: other ioctls running now (this GET_STATS call not included).
    pub in_flight: u64,
    /// Out: ioctls answered since the module was loaded (this one not included).
    pub calls: u64,
    /// Out: of those, how many returned an errno.
    pub errors: u64,
}

impl TorporStats {
    /// References of any kind the module holds.
    pub fn outstanding_refs(&self) -> u64 {
        self.pid_refs + self.task_refs + self.mm_refs + self.page_refs
    }
}

// Linux asm-generic ioctl encoding (x86, arm64, riscv): dir<<30 | size<<16 | type<<8 | nr.
const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
/// `_IOC_NONE`.
pub const IOC_NONE: u32 = 0;
/// `_IOC_WRITE` (userspace writes, kernel reads).
pub const IOC_WRITE: u32 = 1;
/// `_IOC_READ` (kernel writes, userspace reads).
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << IOC_DIRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
}

/// `_IOR(TORPOR_IOC_MAGIC, 0x00, struct torpor_version)`.
pub const TORPOR_IOC_GET_VERSION: u32 = ioc(
    IOC_READ,
    TORPOR_IOC_MAGIC,
    0x00,
    core::mem::size_of::<TorporVersion>(),
);

/// `_IOWR(TORPOR_IOC_MAGIC, 0x01, struct torpor_prefetch)`.
pub const TORPOR_IOC_PREFETCH: u32 = ioc(
    IOC_READ | IOC_WRITE,
    TORPOR_IOC_MAGIC,
    0x01,
    core::mem::size_of::<TorporPrefetch>(),
);
/// `_IOWR(TORPOR_IOC_MAGIC, 0x02, struct torpor_discard)`.
pub const TORPOR_IOC_DISCARD: u32 = ioc(
    IOC_READ | IOC_WRITE,
    TORPOR_IOC_MAGIC,
    0x02,
    core::mem::size_of::<TorporDiscard>(),
);

/// `_IOWR(TORPOR_IOC_MAGIC, 0x03, struct torpor_free_bitmap)`.
pub const TORPOR_IOC_FREE_BITMAP: u32 = ioc(
    IOC_READ | IOC_WRITE,
    TORPOR_IOC_MAGIC,
    0x03,
    core::mem::size_of::<TorporFreeBitmap>(),
);

/// `_IOWR(TORPOR_IOC_MAGIC, 0x04, struct torpor_priority_map)`.
pub const TORPOR_IOC_PRIORITY_MAP: u32 = ioc(
    IOC_READ | IOC_WRITE,
    TORPOR_IOC_MAGIC,
    0x04,
    core::mem::size_of::<TorporPriorityMap>(),
);

/// `_IOR(TORPOR_IOC_MAGIC, 0x05, struct torpor_stats)`.
pub const TORPOR_IOC_GET_STATS: u32 = ioc(
    IOC_READ,
    TORPOR_IOC_MAGIC,
    0x05,
    core::mem::size_of::<TorporStats>(),
);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn version_layout() {
        assert_eq!(size_of::<TorporVersion>(), 48);
        assert_eq!(offset_of!(TorporVersion, abi_version), 0);
        assert_eq!(offset_of!(TorporVersion, size), 4);
        assert_eq!(offset_of!(TorporVersion, features), 8);
        assert_eq!(offset_of!(TorporVersion, release), 16);
    }

    #[test]
    fn prefetch_discard_layout() {
        assert_eq!(size_of::<TorporRange>(), 16);
        assert_eq!(size_of::<TorporPrefetch>(), 80);
        assert_eq!(offset_of!(TorporPrefetch, pid), 0);
        assert_eq!(offset_of!(TorporPrefetch, flags), 4);
        assert_eq!(offset_of!(TorporPrefetch, ranges), 8);
        assert_eq!(offset_of!(TorporPrefetch, nr_ranges), 16);
        assert_eq!(offset_of!(TorporPrefetch, order), 20);
        assert_eq!(offset_of!(TorporPrefetch, byte_budget), 24);
        assert_eq!(offset_of!(TorporPrefetch, pages_mapped), 32);
        assert_eq!(offset_of!(TorporPrefetch, pages_present), 40);
        assert_eq!(offset_of!(TorporPrefetch, pages_unpopulated), 48);
        assert_eq!(offset_of!(TorporPrefetch, pages_failed), 56);
        assert_eq!(offset_of!(TorporPrefetch, ns), 64);
        assert_eq!(offset_of!(TorporPrefetch, stop_addr), 72);
        assert_eq!(size_of::<TorporDiscard>(), 48);
        assert_eq!(offset_of!(TorporDiscard, ranges), 8);
        assert_eq!(offset_of!(TorporDiscard, nr_ranges), 16);
        assert_eq!(offset_of!(TorporDiscard, reserved), 20);
        assert_eq!(offset_of!(TorporDiscard, bytes_zapped), 24);
        assert_eq!(offset_of!(TorporDiscard, bytes_skipped), 32);
        assert_eq!(offset_of!(TorporDiscard, ns), 40);
    }

    #[test]
    fn ioctl_numbers() {
        // Same values the module asserts at compile time (kmod/src/uapi.rs).
        assert_eq!(TORPOR_IOC_PREFETCH, 0xC050_D701);
        assert_eq!(TORPOR_IOC_DISCARD, 0xC030_D702);
        assert_eq!(TORPOR_IOC_FREE_BITMAP, 0xC030_D703);
        assert_eq!(size_of::<TorporFreeBitmap>(), 48);
        assert_eq!(offset_of!(TorporFreeBitmap, end_pfn), 24);
        assert_eq!(offset_of!(TorporFreeBitmap, ns), 40);
        assert_eq!(
            TORPOR_IOC_PREFETCH as u64,
            nix::request_code_readwrite!(TORPOR_IOC_MAGIC, 0x01, size_of::<TorporPrefetch>())
                as u64
        );
        // _IOR(0xD7, 0, 48) computed by hand: 2<<30 | 48<<16 | 0xD7<<8 | 0
        assert_eq!(TORPOR_IOC_GET_VERSION, 0x8030_D700);
        // Agrees with nix's independent encoder.
        assert_eq!(
            TORPOR_IOC_GET_VERSION as u64,
            nix::request_code_read!(TORPOR_IOC_MAGIC, 0x00, size_of::<TorporVersion>()) as u64
        );
    }

    #[test]
    fn priority_map_layout() {
        assert_eq!(size_of::<TorporPriorityMap>(), 128);
        assert_eq!(offset_of!(TorporPriorityMap, map), 0);
        assert_eq!(offset_of!(TorporPriorityMap, map_bytes), 8);
        assert_eq!(offset_of!(TorporPriorityMap, window_ms), 16);
        assert_eq!(offset_of!(TorporPriorityMap, flags), 20);
        assert_eq!(offset_of!(TorporPriorityMap, end_pfn), 24);
        assert_eq!(offset_of!(TorporPriorityMap, ns), 32);
        assert_eq!(offset_of!(TorporPriorityMap, user_ns), 40);
        assert_eq!(offset_of!(TorporPriorityMap, active_procs), 48);
        assert_eq!(offset_of!(TorporPriorityMap, total_procs), 52);
        assert_eq!(offset_of!(TorporPriorityMap, counts), 56);
        // Same value the module asserts at compile time (kmod/src/uapi.rs).
        assert_eq!(TORPOR_IOC_PRIORITY_MAP, 0xC080_D704);
        assert_eq!(
            TORPOR_IOC_PRIORITY_MAP as u64,
            nix::request_code_readwrite!(TORPOR_IOC_MAGIC, 0x04, size_of::<TorporPriorityMap>())
                as u64
        );
        assert_eq!(features::PRIORITY_MAP, 1 << 4);
    }

    #[test]
    fn stats_layout() {
        assert_eq!(size_of::<TorporStats>(), 64);
        assert_eq!(offset_of!(TorporStats, size), 0);
        assert_eq!(offset_of!(TorporStats, reserved), 4);
        assert_eq!(offset_of!(TorporStats, pid_refs), 8);
        assert_eq!(offset_of!(TorporStats, task_refs), 16);
        assert_eq!(offset_of!(TorporStats, mm_refs), 24);
        assert_eq!(offset_of!(TorporStats, page_refs), 32);
        assert_eq!(offset_of!(TorporStats, in_flight), 40);
        assert_eq!(offset_of!(TorporStats, calls), 48);
        assert_eq!(offset_of!(TorporStats, errors), 56);
        // Same value the module asserts at compile time (kmod/src/uapi.rs).
        assert_eq!(TORPOR_IOC_GET_STATS, 0x8040_D705);
        assert_eq!(
            TORPOR_IOC_GET_STATS as u64,
            nix::request_code_read!(TORPOR_IOC_MAGIC, 0x05, size_of::<TorporStats>()) as u64
        );
        assert_eq!(features::GET_STATS, 1 << 5);
    }

    #[test]
    fn feature_names_and_release() {
        let mut v = TorporVersion {
            abi_version: 1,
            size: 48,
            features: 0b1 | (1 << 40),
            ..Default::default()
        };
        v.release[..5].copy_from_slice(b"0.1.0");
        assert_eq!(v.release_str(), "0.1.0");
        assert_eq!(
            v.feature_names(),
            vec!["get_version".to_string(), "bit40".to_string()]
        );
    }
}
