// SPDX-License-Identifier: GPL-2.0
//! Kernel side of the `/dev/torpor` ABI. Mirrored in userspace by
//! `procswap/src/uapi.rs`, whose layout tests pin sizes, offsets and numbers;
//! the `const` assertions below pin the same values here.

use kernel::ioctl::{_IOR, _IOWR};

/// ioctl type byte (unused in ioctl-number.rst as of 6.12).
pub(crate) const TORPOR_IOC_MAGIC: u32 = 0xD7;
/// Bumped on any incompatible ABI change.
pub(crate) const TORPOR_ABI_VERSION: u32 = 1;

/// Feature bits (`TorporVersion::features`).
pub(crate) const FEAT_GET_VERSION: u64 = 1 << 0;
pub(crate) const FEAT_PREFETCH: u64 = 1 << 1;
pub(crate) const FEAT_DISCARD: u64 = 1 << 2;
pub(crate) const FEAT_FREE_BITMAP: u64 = 1 << 3;
pub(crate) const FEAT_PRIORITY_MAP: u64 = 1 << 4;
pub(crate) const FEAT_GET_STATS: u64 = 1 << 5;

/// `struct torpor_version`.
#[repr(C)]
pub(crate) struct TorporVersion {
    pub(crate) abi_version: u32,
    pub(crate) size: u32,
    pub(crate) features: u64,
    pub(crate) release: [u8; 32],
}

/// `struct torpor_range`: `[start, start + len)` in the target's address space.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct TorporRange {
    pub(crate) start: u64,
    pub(crate) len: u64,
}

/// PREFETCH flag: ignore `ranges`, walk every private anonymous VMA.
pub(crate) const PREFETCH_WHOLE: u32 = 1 << 0;
pub(crate) const PREFETCH_FLAGS_ALL: u32 = PREFETCH_WHOLE;
/// PREFETCH order: ranges as given (userspace sorts them, e.g. by swap offset).
pub(crate) const ORDER_GIVEN: u32 = 0;
/// PREFETCH order: ranges sorted by address (at most `MAX_SORTED_RANGES`).
pub(crate) const ORDER_ADDRESS: u32 = 1;
pub(crate) const MAX_SORTED_RANGES: u32 = 65536;
/// Upper bound on `nr_ranges` (larger is EINVAL: a caller bug, not a request).
pub(crate) const MAX_RANGES: u32 = 1 << 24;

/// `struct torpor_prefetch` (in/out).
#[repr(C)]
pub(crate) struct TorporPrefetch {
    // in
    pub(crate) pid: i32,
    pub(crate) flags: u32,
    pub(crate) ranges: u64,
    pub(crate) nr_ranges: u32,
    pub(crate) order: u32,
    pub(crate) byte_budget: u64,
    // out
    pub(crate) pages_mapped: u64,
    pub(crate) pages_present: u64,
    pub(crate) pages_unpopulated: u64,
    pub(crate) pages_failed: u64,
    pub(crate) ns: u64,
    pub(crate) stop_addr: u64,
}

/// `struct torpor_discard` (in/out).
#[repr(C)]
pub(crate) struct TorporDiscard {
    // in
    pub(crate) pid: i32,
    pub(crate) flags: u32,
    pub(crate) ranges: u64,
    pub(crate) nr_ranges: u32,
    pub(crate) reserved: u32,
    // out
    pub(crate) bytes_zapped: u64,
    pub(crate) bytes_skipped: u64,
    pub(crate) ns: u64,
}

/// `struct torpor_free_bitmap` (in/out): bit `pfn` of the user buffer is set when page frame
/// `pfn` is in a free buddy block.
#[repr(C)]
pub(crate) struct TorporFreeBitmap {
    // in
    pub(crate) bitmap: u64,
    pub(crate) bitmap_bytes: u64,
    pub(crate) flags: u32,
    pub(crate) reserved: u32,
    // out
    pub(crate) end_pfn: u64,
    pub(crate) free_pages: u64,
    pub(crate) ns: u64,
}

/// Number of priority categories (values 0..=8 in the map).
pub(crate) const NR_CATEGORIES: usize = 9;
/// PRIORITY_MAP default activity window (docs/guest-maps.md).
pub(crate) const DEFAULT_WINDOW_MS: u32 = 16_000;

/// `struct torpor_priority_map` (in/out): byte `pfn` of the user buffer is the category
/// (0 Kernel .. 8 Other) of page frame `pfn`.
#[repr(C)]
pub(crate) struct TorporPriorityMap {
    // in
    pub(crate) map: u64,
    pub(crate) map_bytes: u64,
    pub(crate) window_ms: u32,
    pub(crate) flags: u32,
    // out
    pub(crate) end_pfn: u64,
    pub(crate) ns: u64,
    pub(crate) user_ns: u64,
    pub(crate) active_procs: u32,
    pub(crate) total_procs: u32,
    pub(crate) counts: [u64; NR_CATEGORIES],
}

/// `struct torpor_stats` (out): references the module holds now and its call counters.
#[repr(C)]
pub(crate) struct TorporStats {
    pub(crate) size: u32,
    pub(crate) reserved: u32,
    pub(crate) pid_refs: u64,
    pub(crate) task_refs: u64,
    pub(crate) mm_refs: u64,
    pub(crate) page_refs: u64,
    pub(crate) in_flight: u64,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
}

// All impls below: each type is `repr(C)`, made only of integers (and a byte array), and
// has no padding: every field is naturally aligned and the sizes add up exactly (asserted
// below), so every byte pattern is a valid value (FromBytes) and every byte of a value is
// initialized (AsBytes).
// SAFETY: see above.
unsafe impl kernel::types::AsBytes for TorporVersion {}
// SAFETY: see above.
unsafe impl kernel::types::AsBytes for TorporStats {}
// SAFETY: see above.
unsafe impl kernel::types::FromBytes for TorporRange {}
// SAFETY: see above.
unsafe impl kernel::types::FromBytes for TorporPrefetch {}
// SAFETY: see above.
unsafe impl kernel::types::AsBytes for TorporPrefetch {}
// SAFETY: see above.
unsafe impl kernel::types::FromBytes for TorporDiscard {}
// SAFETY: see above.
unsafe impl kernel::types::AsBytes for TorporDiscard {}

// SAFETY: see above.
unsafe impl kernel::types::FromBytes for TorporFreeBitmap {}
// SAFETY: see above.
unsafe impl kernel::types::AsBytes for TorporFreeBitmap {}

// SAFETY: see above.
unsafe impl kernel::types::FromBytes for TorporPriorityMap {}
// SAFETY: see above.
unsafe impl kernel::types::AsBytes for TorporPriorityMap {}

const _: () = assert!(core::mem::size_of::<TorporVersion>() == 48);
const _: () = assert!(core::mem::size_of::<TorporPriorityMap>() == 128);
const _: () = assert!(core::mem::offset_of!(TorporPriorityMap, end_pfn) == 24);
const _: () = assert!(core::mem::offset_of!(TorporPriorityMap, active_procs) == 48);
const _: () = assert!(core::mem::offset_of!(TorporPriorityMap, counts) == 56);
const _: () = assert!(core::mem::size_of::<TorporFreeBitmap>() == 48);
const _: () = assert!(core::mem::size_of::<TorporRange>() == 16);
const _: () = assert!(core::mem::size_of::<TorporPrefetch>() == 80);
const _: () = assert!(core::mem::size_of::<TorporDiscard>() == 48);
const _: () = assert!(core::mem::size_of::<TorporStats>() == 64);
const _: () = assert!(core::mem::offset_of!(TorporStats, in_flight) == 40);

pub(crate) const TORPOR_IOC_GET_VERSION: u32 = _IOR::<TorporVersion>(TORPOR_IOC_MAGIC, 0x00);
pub(crate) const TORPOR_IOC_PREFETCH: u32 = _IOWR::<TorporPrefetch>(TORPOR_IOC_MAGIC, 0x01);
pub(crate) const TORPOR_IOC_DISCARD: u32 = _IOWR::<TorporDiscard>(TORPOR_IOC_MAGIC, 0x02);
pub(crate) const TORPOR_IOC_FREE_BITMAP: u32 = _IOWR::<TorporFreeBitmap>(TORPOR_IOC_MAGIC, 0x03);
pub(crate) const TORPOR_IOC_PRIORITY_MAP: u32 = _IOWR::<TorporPriorityMap>(TORPOR_IOC_MAGIC, 0x04);
pub(crate) const TORPOR_IOC_GET_STATS: u32 = _IOR::<TorporStats>(TORPOR_IOC_MAGIC, 0x05);

const _: () = assert!(TORPOR_IOC_GET_VERSION == 0x8030_D700);
const _: () = assert!(TORPOR_IOC_PREFETCH == 0xC050_D701);
const _: () = assert!(TORPOR_IOC_DISCARD == 0xC030_D702);
const _: () = assert!(TORPOR_IOC_FREE_BITMAP == 0xC030_D703);
const _: () = assert!(TORPOR_IOC_PRIORITY_MAP == 0xC080_D704);
const _: () = assert!(TORPOR_IOC_GET_STATS == 0x8040_D705);
