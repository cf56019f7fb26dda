//! Request generation, execution and checking: one [`Worker`] per fuzzing thread.
//!
//! Each request is built from a valid base and then broken in chosen ways; every deliberate
//! break is recorded as a [`Defect`] with the errno kmod/README.md gives for it, and the live
//! state adds what it can cause (ESRCH: the target child died; ENOMEM: the call faults or
//! allocates). The answer must be in that set ([`expectation`]) and, on success, the results
//! the module wrote back must add up (DISCARD's zapped + skipped bytes equal the page-rounded
//! lengths of the ranges; PREFETCH counts at most the pages asked; FREE_BITMAP's set bits equal
//! `free_pages`; PRIORITY_MAP's bytes are categories whose histogram is `counts`).
//!
//! Replay: all random choices come from the worker's stream, drawn in an order that does not
//! depend on the live state (the targets' pids and mappings, the answers), so the same seed and
//! `--threads 1` give the same request sequence; the values taken from live state (which pid a
//! slot holds, the addresses in /proc/PID/maps) can differ.

use crate::child::Mode::{Churn, Exit, Steady, Threads};
use crate::child::{impossible_pid, WINDOW, WINDOW_LEN};
use crate::mem::{GuardBuf, BAD_PTRS, PAGE};
use crate::oracle::{expectation, outcome_name, Defect, Expect, Outcome, Tally};
use crate::procs::{Registry, Target};
use crate::rng::{pick, stream, Rng};
use anyhow::Result;
use nix::errno::Errno;
use procswap::kmod::Kmod;
use procswap::uapi::{
    self, TorporDiscard, TorporFreeBitmap, TorporPrefetch, TorporPriorityMap, TorporRange,
    TorporStats, TorporVersion, MAX_RANGES, MAX_SORTED_RANGES, NR_CATEGORIES,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The ioctls the module implements, by number.
pub const KNOWN: [u32; 6] = [
    uapi::TORPOR_IOC_GET_VERSION,
    uapi::TORPOR_IOC_PREFETCH,
    uapi::TORPOR_IOC_DISCARD,
    uapi::TORPOR_IOC_FREE_BITMAP,
    uapi::TORPOR_IOC_PRIORITY_MAP,
    uapi::TORPOR_IOC_GET_STATS,
];
/// Commands the VFS answers itself for any file (`do_vfs_ioctl` in fs/ioctl.c, before the
/// driver's `unlocked_ioctl`): FIONBIO, FIONCLEX, FIOCLEX, FIOASYNC, FIOQSIZE, FIFREEZE,
/// FITHAW, FS_IOC_FIEMAP, FICLONE, FICLONERANGE, FIDEDUPERANGE, FS_IOC_GETFSUUID,
/// FS_IOC_GETFSSYSFSPATH, FIBMAP, FIGETBSZ, FS_IOC_GETFLAGS/SETFLAGS and FSGETXATTR/FSSETXATTR.
/// They never reach the module (its call counter does not move; FIOCLEX answers 0), so the
/// unknown-command generator never issues them. Found by a 30-minute run: a random 16-bit
/// command was 0x5451 (FIOCLEX).
const VFS_CMDS: [u32; 19] = [
    0x5421,
    0x5450,
    0x5451,
    0x5452,
    0x5460,
    0xC004_5877,
    0xC004_5878,
    0xC020_660B,
    0x4004_9409,
    0x4020_940D,
    0xC018_9436,
    0x8011_1500,
    0x8081_1501,
    1,
    2,
    0x8008_6601,
    0x4008_6602,
    0x801C_581F,
    0x401C_5820,
];
/// Every feature bit GET_VERSION must advertise.
const ALL_FEATURES: u64 = uapi::features::GET_VERSION
    | uapi::features::PREFETCH
    | uapi::features::DISCARD
    | uapi::features::FREE_BITMAP
    | uapi::features::PRIORITY_MAP
    | uapi::features::GET_STATS;
const RANGE: usize = size_of::<TorporRange>();
/// Ranges the ordinary array holds.
const ARR_CAP: usize = 256;
/// Ranges the big array holds (one more than ORDER_ADDRESS accepts); a request claiming more
/// reads into its guard.
const BIG_CAP: usize = MAX_SORTED_RANGES as usize + 1;
/// Leading entries of the big array rewritten per request; the rest are cheap no-ops.
const BIG_HEAD: usize = 64;
const KERNEL_DIRECT: u64 = 0xffff_8880_0000_0000;
const WPAGES: u64 = WINDOW_LEN / PAGE as u64;

/// Phases of a run, in their default order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// PREFETCH/DISCARD with hostile range sets on live churning targets.
    Ranges,
    /// Every ioctl with request structs, range arrays and output buffers against guard pages,
    /// and NULL/misaligned/kernel/unmapped pointers; unknown numbers and wrong sizes/directions.
    Guard,
    /// FREE_BITMAP and PRIORITY_MAP with hostile sizes, windows, flags and buffers while the
    /// targets' page tables change.
    GuestMaps,
    /// Everything at once, plus a thread rewriting a range array while the module reads it.
    Concurrency,
    /// Targets killed or exiting mid-ioctl at a high rate; caller processes SIGKILLed mid-ioctl.
    Exits,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Ranges,
        Phase::Guard,
        Phase::GuestMaps,
        Phase::Concurrency,
        Phase::Exits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Ranges => "ranges",
            Phase::Guard => "guard",
            Phase::GuestMaps => "guest-maps",
            Phase::Concurrency => "concurrency",
            Phase::Exits => "exits",
        }
    }

    pub fn index(self) -> u64 {
        Phase::ALL.iter().position(|&p| p == self).unwrap_or(0) as u64
    }

    /// The targets alive during the phase (one per entry; respawned when they die).
    pub fn modes(self) -> &'static [crate::child::Mode] {
        match self {
            Phase::Ranges => &[Churn, Churn, Steady, Threads],
            Phase::Guard => &[Steady, Churn],
            Phase::GuestMaps => &[Churn, Churn, Threads],
            Phase::Concurrency => &[Churn, Churn, Steady, Threads, Exit],
            Phase::Exits => &[Exit, Exit, Exit, Churn, Threads],
        }
    }

    /// The supervisor kills one target every `lo..=hi` ms (replacements are ready spares; a
    /// new process takes about a second to start in a TCG guest).
    pub fn kill_interval_ms(self) -> (u64, u64) {
        match self {
            Phase::Ranges => (2000, 5000),
            Phase::Guard => (2000, 5000),
            Phase::GuestMaps => (2000, 5000),
            Phase::Concurrency => (1000, 3000),
            Phase::Exits => (50, 300),
        }
    }

    pub fn callers(self) -> bool {
        self == Phase::Exits
    }

    pub fn mutator(self) -> bool {
        self == Phase::Concurrency
    }

    fn profile(self) -> Profile {
        match self {
            Phase::Ranges => profiles::RANGES,
            Phase::Guard => profiles::GUARD,
            Phase::GuestMaps => profiles::GUEST_MAPS,
            Phase::Concurrency => profiles::CONCURRENCY,
            Phase::Exits => profiles::EXITS,
        }
    }
}

/// What a phase asks for: weights of the ioctl kinds and how often (percent) the request
/// struct, the range array and the output buffer are placed hostilely, and how often the
/// range array is the one another thread rewrites.
struct Profile {
    weights: &'static [(Kind, u32)],
    hostile_req: u64,
    hostile_ranges: u64,
    hostile_buf: u64,
    shared: u64,
    /// Percent of PREFETCH/DISCARD requests with valid flags, a readable array and no wrapping
    /// range (so that the calls really walk and zap the targets).
    clean: u64,
}

/// Each phase's [`Profile`].
mod profiles {
    use super::Kind::*;
    use super::Profile;

    pub(super) const RANGES: Profile = Profile {
        weights: &[
            (Prefetch, 45),
            (Discard, 45),
            (GetVersion, 2),
            (GetStats, 2),
            (Unknown, 3),
            (WrongShape, 3),
        ],
        hostile_req: 10,
        hostile_ranges: 15,
        hostile_buf: 30,
        shared: 0,
        clean: 40,
    };

    pub(super) const GUARD: Profile = Profile {
        weights: &[
            (Prefetch, 20),
            (Discard, 20),
            (FreeBitmap, 15),
            (PriorityMap, 5),
            (GetVersion, 10),
            (GetStats, 10),
            (Unknown, 10),
            (WrongShape, 10),
        ],
        hostile_req: 70,
        hostile_ranges: 70,
        hostile_buf: 80,
        shared: 0,
        clean: 10,
    };

    pub(super) const GUEST_MAPS: Profile = Profile {
        weights: &[
            (FreeBitmap, 50),
            (PriorityMap, 30),
            (Prefetch, 8),
            (Discard, 8),
            (GetStats, 2),
            (GetVersion, 2),
        ],
        hostile_req: 25,
        hostile_ranges: 15,
        hostile_buf: 50,
        shared: 0,
        clean: 30,
    };

    pub(super) const CONCURRENCY: Profile = Profile {
        weights: &[
            (Prefetch, 30),
            (Discard, 30),
            (FreeBitmap, 10),
            (PriorityMap, 5),
            (GetVersion, 5),
            (GetStats, 5),
            (Unknown, 7),
            (WrongShape, 8),
        ],
        hostile_req: 25,
        hostile_ranges: 25,
        hostile_buf: 40,
        shared: 15,
        clean: 30,
    };

    pub(super) const EXITS: Profile = Profile {
        weights: &[
            (Prefetch, 50),
            (Discard, 40),
            (PriorityMap, 3),
            (FreeBitmap, 3),
            (GetVersion, 2),
            (GetStats, 2),
        ],
        hostile_req: 5,
        hostile_ranges: 10,
        hostile_buf: 20,
        shared: 0,
        clean: 40,
    };
}

/// ioctl kinds, as counted in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Prefetch,
    Discard,
    FreeBitmap,
    PriorityMap,
    GetVersion,
    GetStats,
    /// A number the module does not implement (other types, other nrs, random words).
    Unknown,
    /// A known nr with the wrong direction or size, or a known nr/size under another type.
    WrongShape,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prefetch => "PREFETCH",
            Kind::Discard => "DISCARD",
            Kind::FreeBitmap => "FREE_BITMAP",
            Kind::PriorityMap => "PRIORITY_MAP",
            Kind::GetVersion => "GET_VERSION",
            Kind::GetStats => "GET_STATS",
            Kind::Unknown => "unknown-cmd",
            Kind::WrongShape => "wrong-shape",
        }
    }
}

/// A range array another thread keeps rewriting (hostile values) while the module reads it.
pub struct SharedRanges {
    buf: GuardBuf,
}

// SAFETY: the mapping is only ever accessed through atomic 64-bit loads/stores (`mutate`) by
// the fuzzer and by the kernel's copy_from_user; no Rust reference to its contents exists.
unsafe impl Sync for SharedRanges {}
// SAFETY: as above; the owning GuardBuf only holds the mapping's address.
unsafe impl Send for SharedRanges {}

impl SharedRanges {
    pub const N: usize = 64;

    pub fn new() -> Result<Self> {
        Ok(Self {
            buf: GuardBuf::new(Self::N * RANGE, PAGE)?,
        })
    }

    pub fn addr(&self) -> usize {
        self.buf.addr()
    }

    /// Rewrite one word with a hostile value.
    pub fn mutate(&self, r: &mut Rng) {
        let i = r.below((Self::N * 2) as u64) as usize;
        let v = match r.below(6) {
            0 => WINDOW + r.below(WPAGES) * PAGE as u64,
            1 => u64::MAX / 3,
            2 => u64::MAX - r.below(8192),
            3 => KERNEL_DIRECT + r.below(1 << 20) * PAGE as u64,
            4 => 0,
            _ => r.next(),
        };
        // SAFETY: word `i` is inside the accessible part (N ranges = 2N words), 8-aligned
        // (page-aligned base); only atomic accesses are made to it.
        let a = unsafe { AtomicU64::from_ptr((self.buf.addr() as *mut u64).add(i)) };
        a.store(v, Ordering::Relaxed);
    }
}

/// What every worker of a phase shares.
pub struct Env<'a> {
    /// `None` in a dry run (requests are generated and traced, not issued).
    pub kmod: Option<&'a Kmod>,
    pub reg: &'a Registry,
    /// The fuzzer's own pid (a PREFETCH target; never a DISCARD one).
    pub me: i32,
    /// The module's end_pfn (FREE_BITMAP size query at start).
    pub end_pfn: u64,
    /// pid 2 is kthreadd (a kernel thread: PREFETCH must answer EINVAL).
    pub kthreadd: bool,
    pub shared: Option<&'a SharedRanges>,
    pub trace: bool,
    /// Address of a PROT_NONE region (at least 64 KiB).
    pub none_addr: u64,
    pub seed: u64,
}

/// Where the request struct went, for reading the results back.
#[derive(Clone, Copy)]
enum At {
    /// Readable at this offset of the request page after the call.
    Req(usize),
    /// Not readable back (read-only page, straddling the guard, bad pointer).
    Nowhere,
}

/// What to check when the call succeeds.
enum Post {
    None,
    Prefetch {
        at: At,
        whole: bool,
        budget: u64,
        max_pages: Option<u64>,
    },
    Discard {
        at: At,
        total_bytes: Option<u64>,
    },
    FreeBitmap {
        at: At,
        buf: Option<usize>,
    },
    PriorityMap {
        at: At,
        buf: Option<usize>,
        window: u32,
    },
    Version {
        at: At,
    },
    Stats {
        at: At,
    },
}

struct Prepared {
    kind: Kind,
    cmd: u32,
    arg: usize,
    expect: Expect,
    desc: String,
    post: Post,
    /// Keeps the target child unreaped (its pid ours) for the duration of the call.
    hold: Option<Arc<Target>>,
    /// The read-only page was used (make it writable again afterwards).
    ro: bool,
    /// For DISCARD: the pid in the request, checked against the safety rule before the call.
    discard_pid: Option<i32>,
}

/// A chosen target pid with what it implies.
struct Tgt {
    pid: i32,
    hold: Option<Arc<Target>>,
    defects: Vec<Defect>,
    extras: Expect,
    label: String,
    vmas: Vec<(u64, u64)>,
}

/// A range array placed for the module.
struct RangeSet {
    nr: u32,
    ptr: u64,
    defects: Vec<Defect>,
    /// Sum of the page-rounded lengths (saturating), when every range read is known and valid.
    total_bytes: Option<u64>,
    desc: String,
}

/// `[start & ~4095, roundup(start + len))`, or `None` when that end does not fit in 64 bits
/// (kmod/README.md: such a range is EINVAL).
pub fn aligned(r: &TorporRange) -> Option<(u64, u64)> {
    let end = r.start.checked_add(r.len)?.checked_add(PAGE as u64 - 1)? & !(PAGE as u64 - 1);
    Some((r.start & !(PAGE as u64 - 1), end))
}

/// Entry `i` (>= BIG_HEAD) of the big array: alternately empty and one unmapped kernel page,
/// both no-ops for any target.
fn cheap_range(i: usize) -> TorporRange {
    if i.is_multiple_of(2) {
        TorporRange { start: 0, len: 0 }
    } else {
        TorporRange {
            start: KERNEL_DIRECT + (i * PAGE) as u64,
            len: PAGE as u64,
        }
    }
}

/// Page-rounded bytes of the cheap entries `BIG_HEAD..n`.
fn cheap_bytes(n: usize) -> u64 {
    if n <= BIG_HEAD {
        return 0;
    }
    // Odd indices in [BIG_HEAD, n): BIG_HEAD is even.
    ((n - BIG_HEAD) / 2) as u64 * PAGE as u64
}

/// The bytes of an ABI struct.
fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: only called with the repr(C) ABI structs of procswap::uapi, which have no padding
    // (their layouts are pinned field by field by procswap's layout tests), so every byte is
    // initialized; the slice lives only for this copy.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }.to_vec()
}

fn ptr_label(p: u64, none_addr: u64) -> String {
    if let Some((_, n)) = BAD_PTRS.iter().find(|(a, _)| *a == p) {
        return format!("bad:{n}");
    }
    if p >= none_addr && p < none_addr + 65536 {
        return format!("prot-none+{}", p - none_addr);
    }
    format!("{p:#x}")
}

type MapsEntry = (i32, u32, Vec<(u64, u64)>);

/// One fuzzing thread.
pub struct Worker<'a> {
    env: &'a Env<'a>,
    phase: Phase,
    prof: Profile,
    rng: Rng,
    id: usize,
    seq: u64,
    req: GuardBuf,
    ro: GuardBuf,
    arr: GuardBuf,
    big: GuardBuf,
    fb: GuardBuf,
    pm: GuardBuf,
    blob: GuardBuf,
    /// /proc/PID/maps cache: (pid, uses since read, VMAs).
    maps: Vec<MapsEntry>,
    fb_need: usize,
    pub tally: Tally,
}

/// PREFETCH's flags and order from the random `fsel`, `osel` (0..100) and `x`: mostly valid,
/// sometimes with unknown bits (never when `clean`).
fn prefetch_flags_order(fsel: u64, osel: u64, x: u64, clean: bool) -> (u32, u32) {
    let (fsel, osel) = if clean {
        (fsel % 80, osel % 90)
    } else {
        (fsel, osel)
    };
    let flags = match fsel {
        0..=59 => 0,
        60..=79 => uapi::PREFETCH_WHOLE,
        80..=89 => (x as u32) | 2,
        _ => uapi::PREFETCH_WHOLE | (1 << (1 + x % 31)),
    };
    let order = match osel {
        0..=44 => uapi::ORDER_GIVEN,
        45..=89 => uapi::ORDER_ADDRESS,
        _ => (x >> 32) as u32 | 2,
    };
    (flags, order)
}

/// What is wrong with a PREFETCH request's flags, order and range count.
fn prefetch_request_defects(flags: u32, order: u32, nr: u32) -> Vec<Defect> {
    let whole = flags & uapi::PREFETCH_WHOLE != 0;
    let mut defects = Vec::new();
    if flags & !uapi::PREFETCH_WHOLE != 0 {
        defects.push(Defect::hard("unknown-flags", Errno::EINVAL));
    }
    if order != uapi::ORDER_GIVEN && order != uapi::ORDER_ADDRESS {
        defects.push(Defect::hard("bad-order", Errno::EINVAL));
    }
    // With PREFETCH_WHOLE the ranges are ignored; whether their count is still checked is
    // not documented, so there a count over the limits may or may not be refused.
    if nr > MAX_RANGES {
        defects.push(Defect {
            what: "nr>MAX_RANGES",
            errno: Errno::EINVAL,
            soft: whole,
        });
    } else if order == uapi::ORDER_ADDRESS && nr > MAX_SORTED_RANGES {
        defects.push(Defect {
            what: "nr>MAX_SORTED_RANGES",
            errno: Errno::E2BIG,
            soft: whole,
        });
    }
    defects
}

/// A range inside the test window: `a` picks the first page, `b` the length; sometimes
/// (by `c`) misaligned or a byte longer.
fn window_range(a: u64, b: u64, c: u64) -> (u64, u64) {
    let pg = PAGE as u64;
    let off = a % WPAGES;
    let n = 1 + b % (WPAGES - off);
    let mut s = WINDOW + off * pg;
    let mut l = n * pg;
    if c.is_multiple_of(10) {
        s += (c >> 40) & 0xfff;
    }
    if c.is_multiple_of(7) {
        l += 1;
    }
    (s, l)
}

/// A hostile range for `sel` in 45..=80 or 88..=99: huge, wrapping, in kernel space, past
/// user space, empty, starting at or near zero, or unaligned (`first_vma`: the target's first
/// mapping's start).
fn wild_range(sel: u64, a: u64, b: u64, c: u64, first_vma: u64) -> (u64, u64) {
    let pg = PAGE as u64;
    match sel {
        45..=54 => {
            let s = pick(a, &[WINDOW, WINDOW + (b % WPAGES) * pg, first_vma, 0, pg]);
            (
                s,
                pick(
                    c,
                    &[u64::MAX / 3, u64::MAX - s, 1 << 47, u64::MAX / 2, 1 << 40],
                ),
            )
        }
        55..=58 => {
            let s = pick(
                a,
                &[
                    WINDOW,
                    u64::MAX - 4095,
                    KERNEL_DIRECT,
                    u64::MAX - b % 4095,
                    1 << 63,
                ],
            );
            (s, (u64::MAX - s).wrapping_add(1 + c % (1 << 20)))
        }
        59..=68 => {
            let s = pick(
                a,
                &[
                    KERNEL_DIRECT + (b % (1 << 30)) * pg,
                    0xffff_ffff_8000_0000 + (b % 65536) * pg,
                    0xffff_c900_0000_0000,
                    0xffff_ea00_0000_0000,
                ],
            );
            (s, pick(c, &[pg, 1, 1 << 30, 0x10_0000]))
        }
        69..=73 => match c % 3 {
            0 => (0x7fff_ffff_f000, 2 * pg),
            _ => (
                (0x0000_8000_0000_0000 + a % (1 << 46)) & !(pg - 1),
                pick(b, &[pg, 1 << 40, 0]),
            ),
        },
        74..=80 => (
            pick(
                a,
                &[
                    WINDOW + b % WINDOW_LEN,
                    WINDOW,
                    0,
                    KERNEL_DIRECT + 1,
                    u64::MAX,
                    u64::MAX - 4095,
                ],
            ),
            0,
        ),
        88..=92 => (pick(a, &[0, pg, 1]), WINDOW + (b % WPAGES) * pg),
        93..=96 => (a, b >> (c % 64)),
        _ => (WINDOW + a % WINDOW_LEN, 1 + b % pg),
    }
}

/// A guest-map request's `end_pfn` that differs from the size query's, when the call wrote it.
fn end_pfn_mismatch(o: Outcome, got: u64, end_pfn: u64) -> Option<String> {
    ((o.is_ok() || o == Err(Errno::ENOSPC)) && got != end_pfn)
        .then(|| format!("end_pfn {got} (size query at start said {end_pfn})"))
}

/// How many ranges a set has (`cls` 0..100 picks the recipe, `a`/`b` the details), whether
/// they go into the big array, and the recipe's name.
fn range_count(cls: u64, a: u64, b: u64, overflow_n: u64) -> (u64, bool, &'static str) {
    match cls {
        0..=54 => (1 + a % 16, false, "small"),
        55..=69 if b.is_multiple_of(2) => (overflow_n, false, "sum-overflow"),
        55..=69 => (64, false, "64"),
        70..=79 => (17 + a % (ARR_CAP as u64 - 16), false, "medium"),
        80..=84 => (0, false, "none"),
        _ => (
            pick(
                a,
                &[
                    MAX_SORTED_RANGES as u64 - 1,
                    MAX_SORTED_RANGES as u64,
                    MAX_SORTED_RANGES as u64 + 1,
                    MAX_RANGES as u64 - 1,
                    MAX_RANGES as u64,
                    MAX_RANGES as u64 + 1,
                    u32::MAX as u64,
                    1 << 20,
                    BIG_CAP as u64,
                ],
            ),
            true,
            "big",
        ),
    }
}

/// An output buffer as placed: (address, claimed size, offset into our buffer where the module
/// writes, the defects it carries, a label).
type BufPlan = (u64, u64, Option<usize>, Vec<Defect>, String);

/// The random choices of one output-buffer placement.
#[derive(Clone, Copy)]
struct BufChoice {
    /// Our buffer and its guard page.
    addr: usize,
    guard: usize,
    /// The bytes the module needs; a claimed size that suffices and one that does not.
    need64: u64,
    enough: u64,
    short: u64,
    k: u64,
    z: u64,
}

/// A size query (NULL buffer) claiming `b` bytes.
fn size_query(b: u64) -> BufPlan {
    (0u64, b, None, vec![], format!("size-query({b:#x})"))
}

/// A claimed size longer than our buffer (it runs into the guard, or past the end of user
/// space): kmod/README.md allows EFAULT for a claim that runs into a guard page, and success is
/// right too when the module writes only the `need` bytes.
fn claim_past_guard(p: usize, b: u64, guard: usize) -> Vec<Defect> {
    let end = (p as u64).checked_add(b);
    if end.is_none_or(|e| e > guard as u64) {
        vec![Defect::soft("claim-into-guard", Errno::EFAULT)]
    } else {
        vec![]
    }
}

/// An ioctl number for a bad command of `kind` (`Unknown`: not torpor's; `WrongShape`: a
/// torpor number with the wrong direction or size), from the random `sel` (0..4), `a` and `b`.
/// It may still be a known number: the caller moves it off.
fn bad_cmd_number(kind: Kind, sel: u64, a: u64, b: u64) -> u32 {
    let sizes = [
        size_of::<TorporVersion>(),
        size_of::<TorporPrefetch>(),
        size_of::<TorporDiscard>(),
        size_of::<TorporFreeBitmap>(),
        size_of::<TorporPriorityMap>(),
        size_of::<TorporStats>(),
    ];
    if kind == Kind::Unknown {
        match sel {
            0 => a as u32,
            1 => uapi::ioc(
                (a % 4) as u32,
                uapi::TORPOR_IOC_MAGIC,
                (6 + (a >> 8) % 250) as u8,
                ((a >> 16) % 16384) as usize,
            ),
            2 => {
                let nr = ((a >> 8) % 6) as usize;
                let ty = pick(a >> 4, &[0xD6u8, 0xD8, 0, 0xFF, b'T']);
                uapi::ioc(KNOWN[nr] >> 30, ty, nr as u8, sizes[nr])
            }
            _ => (a as u32) & 0xffff,
        }
    } else {
        let nr = (a % 6) as usize;
        let real_dir = KNOWN[nr] >> 30;
        let (dir, size) = match sel {
            0 => (real_dir ^ (1 + (b % 3) as u32), sizes[nr]),
            1 => (
                real_dir,
                pick(
                    b,
                    &[
                        sizes[nr] + 1,
                        sizes[nr] - 1,
                        sizes[nr] + 8,
                        sizes[nr] - 8,
                        0,
                        16383,
                    ],
                ),
            ),
            2 => (real_dir, ((b >> 8) % 16384) as usize),
            _ => ((b % 4) as u32, ((b >> 8) % 16384) as usize),
        };
        uapi::ioc(dir, uapi::TORPOR_IOC_MAGIC, nr as u8, size)
    }
}

impl<'a> Worker<'a> {
    pub fn new(env: &'a Env<'a>, phase: Phase, id: usize) -> Result<Self> {
        let fb_need = env.end_pfn.div_ceil(8) as usize;
        let pm_need = env.end_pfn as usize;
        let big = GuardBuf::new(BIG_CAP * RANGE, PAGE)?;
        for i in BIG_HEAD..BIG_CAP {
            big.write(i * RANGE, &cheap_range(i));
        }
        Ok(Self {
            env,
            phase,
            prof: phase.profile(),
            rng: stream(env.seed, 100 + phase.index(), id as u64),
            id,
            seq: 0,
            req: GuardBuf::new(PAGE, PAGE)?,
            ro: GuardBuf::new(PAGE, PAGE)?,
            // ARR_CAP ranges plus room for a misaligned start.
            arr: GuardBuf::new(ARR_CAP * RANGE + 16, PAGE)?,
            big,
            // Output buffers: room for the whole map plus a page, and a guard longer than the
            // map, so even a write running past the claimed size faults.
            fb: GuardBuf::new(fb_need + PAGE, fb_need + 2 * PAGE)?,
            pm: GuardBuf::new(pm_need + PAGE, pm_need + 2 * PAGE)?,
            // Argument of unknown commands: larger than any ioctl size field (14 bits).
            blob: GuardBuf::new(16 << 10, 16 << 10)?,
            maps: Vec::new(),
            fb_need,
            tally: Tally::default(),
        })
    }

    /// Generate, issue and check one request.
    pub fn step(&mut self) {
        self.seq += 1;
        let p = self.prepare();
        let out = self.exec(&p);
        if p.ro {
            // The read-only page must be writable again for the next request.
            self.ro.set_readonly(false).expect("mprotect our own page");
        }
        if self.env.trace {
            let o = out.map(outcome_name).unwrap_or_else(|| "-".into());
            println!(
                "[{} t{} #{}] {} => {o} (allowed {})",
                self.phase.name(),
                self.id,
                self.seq,
                p.desc,
                p.expect
            );
        }
        if let Some(o) = out {
            self.check(&p, o);
        }
    }

    fn prepare(&mut self) -> Prepared {
        let total: u32 = self.prof.weights.iter().map(|w| w.1).sum();
        let mut r = self.rng.below(total as u64) as u32;
        let mut kind = self.prof.weights[0].0;
        for &(k, w) in self.prof.weights {
            if r < w {
                kind = k;
                break;
            }
            r -= w;
        }
        match kind {
            Kind::Prefetch => self.gen_prefetch(),
            Kind::Discard => self.gen_discard(),
            Kind::FreeBitmap => self.gen_free_bitmap(),
            Kind::PriorityMap => self.gen_priority_map(),
            Kind::GetVersion | Kind::GetStats => self.gen_get(kind),
            Kind::Unknown | Kind::WrongShape => self.gen_bad_cmd(kind),
        }
    }

    // ---- targets -------------------------------------------------------------------------

    /// VMAs of `pid` from /proc/PID/maps, re-read every 16 uses (not in a dry run).
    fn vmas(&mut self, pid: i32) -> Vec<(u64, u64)> {
        if self.env.kmod.is_none() {
            return Vec::new();
        }
        if let Some(e) = self.maps.iter_mut().find(|e| e.0 == pid) {
            e.1 += 1;
            if e.1 < 16 {
                return e.2.clone();
            }
        }
        let v: Vec<(u64, u64)> = procfs::process::Process::new(pid)
            .and_then(|p| p.maps())
            .map(|m| m.into_iter().map(|m| m.address).collect())
            .unwrap_or_default();
        self.maps.retain(|e| e.0 != pid);
        if self.maps.len() > 16 {
            self.maps.remove(0);
        }
        self.maps.push((pid, 0, v.clone()));
        v
    }

    fn child_or_impossible(&mut self, r: u64) -> Tgt {
        match self.env.reg.pick(r >> 8) {
            Some(t) => {
                let vmas = self.vmas(t.pid);
                Tgt {
                    pid: t.pid,
                    label: format!("child:{}:{}", t.mode.name(), t.pid),
                    hold: Some(t),
                    defects: vec![],
                    // The child may be dead (killed, exited, leader thread gone): ESRCH.
                    extras: Expect::err(Errno::ESRCH),
                    vmas,
                }
            }
            None => self.impossible(r >> 16),
        }
    }

    fn impossible(&self, r: u64) -> Tgt {
        let pid = impossible_pid(r);
        let d = if pid <= 0 {
            Defect::hard("pid<=0", Errno::EINVAL)
        } else {
            Defect::hard("no-such-pid", Errno::ESRCH)
        };
        Tgt {
            pid,
            hold: None,
            defects: vec![d],
            extras: Expect::err(Errno::ENOMEM),
            label: format!("impossible:{pid}"),
            vmas: vec![],
        }
    }

    fn prefetch_target(&mut self) -> Tgt {
        let r = self.rng.next();
        match r % 100 {
            0..=69 => self.child_or_impossible(r),
            70..=79 => {
                let vmas = self.vmas(self.env.me);
                Tgt {
                    pid: self.env.me,
                    hold: None,
                    defects: vec![],
                    extras: Expect::err(Errno::ENOMEM),
                    label: "self".into(),
                    vmas,
                }
            }
            80..=81 => Tgt {
                pid: 1,
                hold: None,
                defects: vec![],
                extras: Expect::err(Errno::ENOMEM),
                label: "init".into(),
                vmas: vec![],
            },
            82..=84 if self.env.kthreadd => Tgt {
                pid: 2,
                hold: None,
                defects: vec![Defect::hard("kernel-thread", Errno::EINVAL)],
                extras: Expect::err(Errno::ENOMEM),
                label: "kthreadd".into(),
                vmas: vec![],
            },
            _ => self.impossible(r >> 8),
        }
    }

    /// DISCARD targets: a sacrificial child, or a pid no process can have. Never the fuzzer,
    /// never pid 1, never any other process.
    fn discard_target(&mut self) -> Tgt {
        let r = self.rng.next();
        if r % 100 < 80 {
            self.child_or_impossible(r)
        } else {
            self.impossible(r >> 8)
        }
    }

    // ---- placement ----------------------------------------------------------------------

    /// A pointer no access can succeed on.
    fn bad_ptr(&self, k: u64) -> u64 {
        if k % (BAD_PTRS.len() as u64 + 2) >= BAD_PTRS.len() as u64 {
            self.env.none_addr + (k >> 8) % 65536
        } else {
            BAD_PTRS[(k % BAD_PTRS.len() as u64) as usize].0
        }
    }

    /// Put request `v` where the module will find it: usually page-aligned in the request
    /// page; with probability `hostile`% misaligned, straddling the guard page, in a read-only
    /// page, or at a bad pointer. Returns (arg, where to read it back, defects, label, ro).
    fn place<T: Copy>(&mut self, v: &T, hostile: u64) -> (usize, At, Vec<Defect>, String, bool) {
        let (sel, k) = (self.rng.below(100), self.rng.next());
        let size = size_of::<T>();
        if sel >= hostile {
            self.req.write(0, v);
            return (self.req.addr(), At::Req(0), vec![], "req".into(), false);
        }
        match k % 5 {
            0 => {
                let off = 1 + (k >> 8) as usize % 7;
                self.req.write(off, v);
                (
                    self.req.addr() + off,
                    At::Req(off),
                    vec![],
                    format!("req+{off}"),
                    false,
                )
            }
            1 => {
                // Crosses into the guard: only the first `PAGE - off` bytes are readable.
                let off = PAGE - 1 - (k >> 8) as usize % (size - 1);
                let bytes = bytes_of(v);
                for (i, b) in bytes.iter().take(PAGE - off).enumerate() {
                    self.req.write(off + i, b);
                }
                (
                    self.req.addr() + off,
                    At::Nowhere,
                    vec![Defect::hard("req-into-guard", Errno::EFAULT)],
                    format!("guard-{}", PAGE - off),
                    false,
                )
            }
            2 => {
                self.ro.set_readonly(false).expect("mprotect our own page");
                self.ro.write(0, v);
                self.ro.set_readonly(true).expect("mprotect our own page");
                (
                    self.ro.addr(),
                    At::Nowhere,
                    vec![Defect::hard("req-read-only", Errno::EFAULT)],
                    "read-only".into(),
                    true,
                )
            }
            _ => {
                let p = self.bad_ptr(k >> 3);
                (
                    p as usize,
                    At::Nowhere,
                    vec![Defect::hard("req-bad-ptr", Errno::EFAULT)],
                    ptr_label(p, self.env.none_addr),
                    false,
                )
            }
        }
    }

    // ---- ranges -------------------------------------------------------------------------

    /// One range (always 4 draws, whatever the branch and the live state).
    fn gen_range(&mut self, vmas: &[(u64, u64)], prev: Option<TorporRange>) -> TorporRange {
        let (sel, a, b, c) = (
            self.rng.below(100),
            self.rng.next(),
            self.rng.next(),
            self.rng.next(),
        );
        let pg = PAGE as u64;
        let (start, len) = match (sel, prev) {
            (28..=44, _) if !vmas.is_empty() => {
                let (vs, ve) = vmas[(a % vmas.len() as u64) as usize];
                match b % 7 {
                    0 => (vs, ve - vs),
                    1 => (vs.saturating_sub(pg), ve - vs + 2 * pg),
                    2 => (vs + 1, (ve - vs).saturating_sub(2)),
                    3 => (ve - 1, 2),
                    4 => (vs, u64::MAX / 3),
                    5 => (vs, 1),
                    _ => (vs + (c % (ve - vs)) / pg * pg, pg * (1 + (c >> 32) % 64)),
                }
            }
            (81..=87, Some(p)) => match a % 3 {
                0 => (p.start, p.len),
                1 => (p.start.wrapping_add(p.len / 2), p.len),
                _ => (p.start.saturating_sub(pg), p.len.saturating_add(2 * pg)),
            },
            (0..=44 | 81..=87, _) => window_range(a, b, c),
            _ => wild_range(sel, a, b, c, vmas.first().map_or(WINDOW, |v| v.0)),
        };
        TorporRange { start, len }
    }

    /// A range array aimed at `vmas` (the target's mappings). `soft_fault`/`soft_wrap`: a byte
    /// budget may stop the walk before an unreadable or a wrapping range is reached (ranges
    /// are read lazily with ORDER_GIVEN; ORDER_ADDRESS reads them all first but checks each
    /// one when it gets to it). `clean`: no wrapping range and a readable array (the request
    /// may still be hostile in other ways: huge, kernel, zero-length, overlapping ranges).
    ///
    /// The "sum-overflow" recipe (ranges of u64::MAX/3 from the target's VMAs, whose lengths add
    /// up past 2^64: the input that used to panic the guest kernel) has 64 ranges for DISCARD and `overflow_n` (fewer) for
    /// PREFETCH, which walks every page of each range page by page through the holes.
    fn gen_ranges(
        &mut self,
        vmas: &[(u64, u64)],
        soft_fault: bool,
        soft_wrap: bool,
        clean: bool,
        overflow_n: u64,
    ) -> RangeSet {
        let (cls, a, b) = (self.rng.below(100), self.rng.next(), self.rng.next());
        // A clean set stays readable: none of the counts past the big array.
        let cls = if clean { cls % 85 } else { cls };
        let (n, big, recipe) = range_count(cls, a, b, overflow_n);
        let built = if big { BIG_HEAD } else { n as usize };
        let mut ranges = self.build_ranges(vmas, built, recipe, clean);
        let (ptr, place, fault) = self.place_ranges(&mut ranges, n, big, clean);
        let mut defects = vec![];
        // Ranges the module reads: the built ones, then (big array) the cheap tail.
        let read = (n as usize).min(if big { BIG_CAP } else { ranges.len() });
        let mut total: u64 = 0;
        let mut wraps = 0;
        for r in ranges.iter().take(read) {
            match aligned(r) {
                Some((s, e)) => total = total.saturating_add(e - s),
                None => wraps += 1,
            }
        }
        if big {
            total = total.saturating_add(cheap_bytes(read));
        }
        if fault {
            defects.push(Defect {
                what: "ranges-fault",
                errno: Errno::EFAULT,
                soft: soft_fault,
            });
        }
        if wraps > 0 {
            defects.push(Defect {
                what: "range-wraps",
                errno: Errno::EINVAL,
                soft: soft_wrap,
            });
        }
        let shown: Vec<String> = ranges
            .iter()
            .take(3)
            .map(|r| format!("{:#x}+{:#x}", r.start, r.len))
            .collect();
        let desc = format!(
            "nr={n} {recipe}@{place}{} [{}{}]",
            if wraps > 0 {
                format!(" wraps={wraps}")
            } else {
                String::new()
            },
            shown.join(", "),
            if ranges.len() > 3 { ", ..." } else { "" }
        );
        RangeSet {
            nr: n.min(u32::MAX as u64) as u32,
            ptr,
            total_bytes: if fault || wraps > 0 {
                None
            } else {
                Some(total)
            },
            defects,
            desc,
        }
    }

    /// `built` ranges by `recipe` aimed at `vmas` (`clean`: none wraps).
    fn build_ranges(
        &mut self,
        vmas: &[(u64, u64)],
        built: usize,
        recipe: &str,
        clean: bool,
    ) -> Vec<TorporRange> {
        let mut ranges = Vec::with_capacity(built);
        let mut prev = None;
        for i in 0..built {
            let mut r = if recipe == "sum-overflow" {
                // 64 ranges over a live mapping whose lengths add up past 2^64 (the input that used to panic the guest kernel).
                let base = vmas
                    .get(i % vmas.len().max(1))
                    .map_or(WINDOW + (i * PAGE) as u64, |v| v.0);
                let _ = (
                    self.rng.next(),
                    self.rng.next(),
                    self.rng.next(),
                    self.rng.next(),
                );
                TorporRange {
                    start: base,
                    len: u64::MAX / 3,
                }
            } else {
                self.gen_range(vmas, prev)
            };
            if clean && aligned(&r).is_none() {
                // Same draws, no wrap: the page after the window instead.
                r = TorporRange {
                    start: WINDOW + WINDOW_LEN,
                    len: PAGE as u64,
                };
            }
            prev = Some(r);
            ranges.push(r);
        }
        ranges
    }

    /// Where the range array goes (our array, misaligned, into the guard page, a bad pointer,
    /// the big array): (pointer, label, whether reading the `n` ranges faults). A placement
    /// into the guard keeps only the ranges that are readable in `ranges`.
    fn place_ranges(
        &mut self,
        ranges: &mut Vec<TorporRange>,
        n: u64,
        big: bool,
        clean: bool,
    ) -> (u64, String, bool) {
        let (p, k) = (self.rng.below(100), self.rng.next());
        let p = if clean { 100 } else { p };
        let mut fault = false;
        let (ptr, place) = if big {
            for (i, r) in ranges.iter().enumerate() {
                self.big.write(i * RANGE, r);
            }
            if n as usize > BIG_CAP {
                fault = true;
            }
            (self.big.addr() as u64, "big".to_string())
        } else if n == 0 {
            // Nothing is read: any pointer is fine (and must not matter).
            if p < 50 {
                (self.arr.addr() as u64, "arr".into())
            } else {
                let ptr = self.bad_ptr(k);
                (ptr, ptr_label(ptr, self.env.none_addr))
            }
        } else if p >= self.prof.hostile_ranges {
            for (i, r) in ranges.iter().enumerate() {
                self.arr.write(i * RANGE, r);
            }
            (self.arr.addr() as u64, "arr".into())
        } else {
            match k % 6 {
                0 => {
                    let off = 1 + (k >> 8) as usize % 15;
                    for (i, r) in ranges.iter().enumerate() {
                        self.arr.write(off + i * RANGE, r);
                    }
                    ((self.arr.addr() + off) as u64, format!("arr+{off}"))
                }
                1 | 2 => {
                    // Only the first `fit` ranges are readable; the rest lie in the guard.
                    let fit = (k >> 8) as usize % n as usize;
                    let start = self.arr.len() - fit * RANGE;
                    for (i, r) in ranges.iter().take(fit).enumerate() {
                        self.arr.write(start + i * RANGE, r);
                    }
                    ranges.truncate(fit);
                    fault = true;
                    (
                        (self.arr.addr() + start) as u64,
                        format!("guard-{fit}-ranges"),
                    )
                }
                3 | 4 => {
                    fault = true;
                    let p = self.bad_ptr(k >> 8);
                    (p, ptr_label(p, self.env.none_addr))
                }
                _ => {
                    fault = true;
                    (self.arr.guard_addr() as u64, "guard".into())
                }
            }
        };
        (ptr, place, fault)
    }

    /// With probability `shared`%, the array another thread rewrites during the call.
    fn shared_ranges(&mut self) -> Option<RangeSet> {
        let (p, n) = (
            self.rng.below(100),
            1 + self.rng.below(SharedRanges::N as u64),
        );
        let sh = self.env.shared?;
        if p >= self.prof.shared {
            return None;
        }
        Some(RangeSet {
            nr: n as u32,
            ptr: sh.addr() as u64,
            defects: vec![],
            total_bytes: None,
            desc: format!("nr={n} shared-mutating"),
        })
    }

    // ---- requests -----------------------------------------------------------------------

    fn gen_prefetch(&mut self) -> Prepared {
        let clean = self.rng.below(100) < self.prof.clean;
        let t = self.prefetch_target();
        let (fsel, osel, bsel, x) = (
            self.rng.below(100),
            self.rng.below(100),
            self.rng.next(),
            self.rng.next(),
        );
        let (flags, order) = prefetch_flags_order(fsel, osel, x, clean);
        let budget = pick(bsel, &[0, 0, 0, 0, 1, 4096, 4097, 1 << 20, u64::MAX, x]);
        let whole = flags & uapi::PREFETCH_WHOLE != 0;
        // A budget may stop the walk before a bad range is read (ORDER_GIVEN streams them).
        let vmas = t.vmas.clone();
        let shared = self.shared_ranges();
        let rs = self.gen_ranges(
            &vmas,
            budget != 0 && order != uapi::ORDER_ADDRESS,
            budget != 0,
            clean,
            8,
        );
        let any = shared.is_some();
        let rs = shared.unwrap_or(rs);
        let mut defects = t.defects.clone();
        defects.extend(prefetch_request_defects(flags, order, rs.nr));
        if !whole {
            defects.extend(rs.defects.iter().copied());
        }
        let req = TorporPrefetch {
            pid: t.pid,
            flags,
            ranges: rs.ptr,
            nr_ranges: rs.nr,
            order,
            byte_budget: budget,
            // Output fields carry garbage in: the module must not depend on them.
            pages_mapped: x,
            pages_present: !x,
            pages_unpopulated: x.rotate_left(7),
            pages_failed: 1,
            ns: 2,
            stop_addr: 3,
        };
        let (arg, at, pd, plabel, ro) =
            self.place(&req, if clean { 0 } else { self.prof.hostile_req });
        defects.extend(pd);
        let extras = t.extras.or_err(Errno::ENOMEM);
        let expect = if any && !whole {
            Expect::ANY
        } else {
            expectation(&defects, extras)
        };
        let max_pages = if whole || any {
            None
        } else {
            rs.total_bytes.map(|b| b / PAGE as u64)
        };
        let desc = format!(
            "PREFETCH{} pid={} flags={flags:#x} order={order} budget={budget:#x} {} req@{plabel} defects={:?}",
            if clean { "(clean)" } else { "" },
            t.label,
            if whole { format!("(whole; {})", rs.desc) } else { rs.desc.clone() },
            defects.iter().map(|d| d.what).collect::<Vec<_>>()
        );
        Prepared {
            kind: Kind::Prefetch,
            cmd: uapi::TORPOR_IOC_PREFETCH,
            arg,
            expect,
            desc,
            post: Post::Prefetch {
                at,
                whole,
                budget,
                max_pages,
            },
            hold: t.hold,
            ro,
            discard_pid: None,
        }
    }

    fn gen_discard(&mut self) -> Prepared {
        let clean = self.rng.below(100) < self.prof.clean;
        let t = self.discard_target();
        let (fsel, x) = (self.rng.below(100), self.rng.next());
        let fsel = if clean { fsel % 90 / 10 * 10 } else { fsel };
        let flags = if fsel < 90 { 0 } else { (x as u32) | 1 };
        let reserved = if fsel % 10 == 3 && fsel < 90 {
            ((x >> 32) as u32) | 1
        } else {
            0
        };
        let vmas = t.vmas.clone();
        let shared = self.shared_ranges();
        let rs = self.gen_ranges(&vmas, false, false, clean, 64);
        let any = shared.is_some();
        let rs = shared.unwrap_or(rs);
        let mut defects = t.defects.clone();
        if flags != 0 {
            defects.push(Defect::hard("flags!=0", Errno::EINVAL));
        }
        if reserved != 0 {
            defects.push(Defect::hard("reserved!=0", Errno::EINVAL));
        }
        if rs.nr > MAX_RANGES {
            defects.push(Defect::hard("nr>MAX_RANGES", Errno::EINVAL));
        }
        defects.extend(rs.defects.iter().copied());
        let req = TorporDiscard {
            pid: t.pid,
            flags,
            ranges: rs.ptr,
            nr_ranges: rs.nr,
            reserved,
            bytes_zapped: x,
            bytes_skipped: !x,
            ns: 7,
        };
        let (arg, at, pd, plabel, ro) =
            self.place(&req, if clean { 0 } else { self.prof.hostile_req });
        defects.extend(pd);
        let extras = t.extras.or_err(Errno::ENOMEM);
        let expect = if any {
            Expect::ANY
        } else {
            expectation(&defects, extras)
        };
        let desc = format!(
            "DISCARD{} pid={} flags={flags:#x} reserved={reserved:#x} {} req@{plabel} defects={:?}",
            if clean { "(clean)" } else { "" },
            t.label,
            rs.desc,
            defects.iter().map(|d| d.what).collect::<Vec<_>>()
        );
        Prepared {
            kind: Kind::Discard,
            cmd: uapi::TORPOR_IOC_DISCARD,
            arg,
            expect,
            desc,
            post: Post::Discard {
                at,
                total_bytes: if any { None } else { rs.total_bytes },
            },
            hold: t.hold,
            ro,
            discard_pid: Some(t.pid),
        }
    }

    /// An output buffer for a map of `need` bytes in `buf`: (pointer, claimed size, offset of
    /// an owned buffer that gets the whole map, defects, label). `ptr == 0` is a size query.
    fn map_buffer(&mut self, which: u8, need: usize) -> BufPlan {
        let (sel, k, z) = (self.rng.below(100), self.rng.next(), self.rng.next());
        let (addr, guard) = if which == 0 {
            (self.fb.addr(), self.fb.guard_addr())
        } else {
            (self.pm.addr(), self.pm.guard_addr())
        };
        let need64 = need as u64;
        let enough = pick(
            k,
            &[
                need64,
                need64 + 1,
                need64 + PAGE as u64,
                u64::MAX,
                need64 + (z % (1 << 20)),
            ],
        );
        let b = BufChoice {
            addr,
            guard,
            need64,
            enough,
            short: pick(k, &[0, 1, need64 - 1, z % need64]),
            k,
            z,
        };
        if sel < self.prof.hostile_buf {
            return self.hostile_buffer(&b);
        }
        match sel % 4 {
            0 => size_query(pick(z, &[0, need64, u64::MAX, z])),
            _ => (
                addr as u64,
                enough,
                Some(0),
                claim_past_guard(addr, enough, guard),
                format!("owned({enough:#x})"),
            ),
        }
    }

    /// A hostile placement of the output buffer: a size query, too short, misaligned, running
    /// into the guard page, or a bad pointer.
    fn hostile_buffer(&mut self, b: &BufChoice) -> BufPlan {
        let BufChoice {
            addr,
            guard,
            need64,
            enough,
            short,
            k,
            z,
        } = *b;
        match k % 6 {
            0 => size_query(pick(z, &[0, 1, u64::MAX])),
            1 => (
                addr as u64,
                short,
                None,
                vec![Defect::hard("buffer-short", Errno::ENOSPC)],
                format!("short({short:#x})"),
            ),
            2 => {
                let off = 1 + (z % 7) as usize;
                (
                    (addr + off) as u64,
                    enough,
                    Some(off),
                    claim_past_guard(addr + off, enough, guard),
                    format!("owned+{off}({enough:#x})"),
                )
            }
            3 => {
                // Claimed size is enough, but the accessible part ends `m` bytes in.
                let m = 1 + (z % (need64 - 1)) as usize;
                (
                    (guard - m) as u64,
                    enough,
                    None,
                    vec![Defect::hard("buffer-into-guard", Errno::EFAULT)],
                    format!("guard-{m}({enough:#x})"),
                )
            }
            _ => {
                let p = self.bad_ptr(z);
                let b = if z % 3 == 0 { short } else { enough };
                let mut d = vec![Defect::hard("buffer-bad-ptr", Errno::EFAULT)];
                if b < need64 {
                    d.push(Defect::hard("buffer-short", Errno::ENOSPC));
                }
                // A NULL pointer is a size query, not a fault.
                if p == 0 {
                    return size_query(b);
                }
                (
                    p,
                    b,
                    None,
                    d,
                    format!("{}({b:#x})", ptr_label(p, self.env.none_addr)),
                )
            }
        }
    }

    fn gen_free_bitmap(&mut self) -> Prepared {
        let (fsel, x) = (self.rng.below(100), self.rng.next());
        let flags = if fsel < 90 { 0 } else { (x as u32) | 1 };
        let reserved = if fsel % 9 == 4 && fsel < 90 {
            ((x >> 32) as u32) | 1
        } else {
            0
        };
        let (ptr, bytes, owned, mut defects, blabel) = self.map_buffer(0, self.fb_need);
        if flags != 0 {
            defects.push(Defect::hard("flags!=0", Errno::EINVAL));
        }
        if reserved != 0 {
            defects.push(Defect::hard("reserved!=0", Errno::EINVAL));
        }
        if let Some(off) = owned {
            self.fb.fill(off, self.fb_need, 0xa5);
        }
        let req = TorporFreeBitmap {
            bitmap: ptr,
            bitmap_bytes: bytes,
            flags,
            reserved,
            end_pfn: x,
            free_pages: !x,
            ns: 1,
        };
        let (arg, at, pd, plabel, ro) = self.place(&req, self.prof.hostile_req);
        defects.extend(pd);
        let expect = expectation(&defects, Expect::err(Errno::ENOMEM));
        let desc = format!(
            "FREE_BITMAP buf={blabel} flags={flags:#x} reserved={reserved:#x} req@{plabel} defects={:?}",
            defects.iter().map(|d| d.what).collect::<Vec<_>>()
        );
        Prepared {
            kind: Kind::FreeBitmap,
            cmd: uapi::TORPOR_IOC_FREE_BITMAP,
            arg,
            expect,
            desc,
            post: Post::FreeBitmap { at, buf: owned },
            hold: None,
            ro,
            discard_pid: None,
        }
    }

    fn gen_priority_map(&mut self) -> Prepared {
        let (fsel, wsel, x) = (self.rng.below(100), self.rng.next(), self.rng.next());
        let flags = if fsel < 90 { 0 } else { (x as u32) | 1 };
        let window = pick(wsel, &[0, 0, 1, 1000, 16_000, u32::MAX, x as u32]);
        let (ptr, bytes, owned, mut defects, blabel) =
            self.map_buffer(1, self.env.end_pfn as usize);
        if flags != 0 {
            defects.push(Defect::hard("flags!=0", Errno::EINVAL));
        }
        if let Some(off) = owned {
            self.pm.fill(off, self.env.end_pfn as usize, 0xee);
        }
        let req = TorporPriorityMap {
            map: ptr,
            map_bytes: bytes,
            window_ms: window,
            flags,
            end_pfn: x,
            ns: 1,
            user_ns: 2,
            active_procs: 3,
            total_procs: 4,
            counts: [x; NR_CATEGORIES],
        };
        let (arg, at, pd, plabel, ro) = self.place(&req, self.prof.hostile_req);
        defects.extend(pd);
        let expect = expectation(&defects, Expect::err(Errno::ENOMEM));
        let desc = format!(
            "PRIORITY_MAP buf={blabel} window_ms={window} flags={flags:#x} req@{plabel} defects={:?}",
            defects.iter().map(|d| d.what).collect::<Vec<_>>()
        );
        Prepared {
            kind: Kind::PriorityMap,
            cmd: uapi::TORPOR_IOC_PRIORITY_MAP,
            arg,
            expect,
            desc,
            post: Post::PriorityMap {
                at,
                buf: owned,
                window,
            },
            hold: None,
            ro,
            discard_pid: None,
        }
    }

    fn gen_get(&mut self, kind: Kind) -> Prepared {
        let (cmd, arg, at, defects, plabel, ro) = if kind == Kind::GetVersion {
            let (arg, at, d, l, ro) =
                self.place(&TorporVersion::default(), self.prof.hostile_req.max(30));
            (uapi::TORPOR_IOC_GET_VERSION, arg, at, d, l, ro)
        } else {
            let (arg, at, d, l, ro) =
                self.place(&TorporStats::default(), self.prof.hostile_req.max(30));
            (uapi::TORPOR_IOC_GET_STATS, arg, at, d, l, ro)
        };
        let expect = expectation(&defects, Expect::NONE);
        Prepared {
            kind,
            cmd,
            arg,
            expect,
            desc: format!(
                "{} out@{plabel} defects={:?}",
                kind.name(),
                defects.iter().map(|d| d.what).collect::<Vec<_>>()
            ),
            post: if kind == Kind::GetVersion {
                Post::Version { at }
            } else {
                Post::Stats { at }
            },
            hold: None,
            ro,
            discard_pid: None,
        }
    }

    /// An unknown command, or a known nr with the wrong shape: ENOTTY, whatever the argument.
    fn gen_bad_cmd(&mut self, kind: Kind) -> Prepared {
        let (sel, a, b) = (self.rng.below(4), self.rng.next(), self.rng.next());
        let mut cmd = bad_cmd_number(kind, sel, a, b);
        while KNOWN.contains(&cmd) || VFS_CMDS.contains(&cmd) {
            cmd ^= 1 << 16; // another size: no longer a known (or VFS-handled) number
        }
        // The argument: a 16 KiB buffer of ours that is harmless read as any request (pid -1,
        // all-ones flags and pointers, zero sizes), or a bad pointer.
        let use_blob = b % 10 < 7;
        let arg = if use_blob {
            self.blob.fill(0, 256, 0);
            self.blob.fill(0, 8, 0xff);
            self.blob.addr()
        } else {
            self.bad_ptr(b >> 4) as usize
        };
        Prepared {
            kind,
            cmd,
            arg,
            expect: Expect::err(Errno::ENOTTY),
            desc: format!(
                "{} cmd={cmd:#010x} arg={}",
                kind.name(),
                if use_blob {
                    "blob".into()
                } else {
                    ptr_label(arg as u64, self.env.none_addr)
                }
            ),
            post: Post::None,
            hold: None,
            ro: false,
            discard_pid: None,
        }
    }

    // ---- execution and checks -----------------------------------------------------------

    fn exec(&mut self, p: &Prepared) -> Option<Outcome> {
        let k = self.env.kmod?;
        if let Some(pid) = p.discard_pid {
            // The safety rule, checked on every DISCARD: a held (unreaped) child of ours, or a
            // pid no process can have.
            let child = p.hold.as_ref().is_some_and(|t| t.pid == pid);
            assert!(
                child || pid <= 0 || pid > 4 * 1024 * 1024,
                "DISCARD aimed at pid {pid}: refused by the fuzzer"
            );
        }
        if let Some(t) = &p.hold {
            t.busy.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: every address in this request was built by this worker (see mem.rs): the
        // argument and, inside it, the range array and the map/bitmap buffer point either into
        // this worker's GuardBufs, where everything the module may write (the request struct,
        // at most `end_pfn` map bytes or `ceil(end_pfn / 8)` bitmap bytes) fits in the
        // accessible part or runs into a guard longer than the write, or at addresses any
        // access to faults (mem::BAD_PTRS, the PROT_NONE region). The module only reads range
        // arrays. Unknown commands get the 16 KiB blob, harmless under any interpretation.
        // DISCARD's pid is a child held unreaped for the call, or impossible (asserted above).
        let r = unsafe { k.raw_ioctl(p.cmd, p.arg) };
        if let Some(t) = &p.hold {
            t.busy.fetch_sub(1, Ordering::Relaxed);
        }
        Some(r)
    }

    fn check(&mut self, p: &Prepared, o: Outcome) {
        let name = p.kind.name();
        self.tally.record(name, o);
        if let Err(e) = o {
            if !crate::oracle::is_documented(e) {
                let m = format!(
                    "{} answered {e:?} ({}), not in kmod/README.md's list",
                    self.ctx(p),
                    e.desc()
                );
                self.tally.undocumented(m);
                return;
            }
        }
        if !p.expect.allows(o) {
            let m = format!(
                "{} answered {}, the documented rules allow {}",
                self.ctx(p),
                outcome_name(o),
                p.expect
            );
            self.tally.violation(m);
            return;
        }
        if let Some(problem) = self.post_check(p, o) {
            let m = format!("{} answered {} but {problem}", self.ctx(p), outcome_name(o));
            self.tally.violation(m);
        }
    }

    fn ctx(&self, p: &Prepared) -> String {
        format!(
            "[{} t{} #{} seed {:#x}] {}",
            self.phase.name(),
            self.id,
            self.seq,
            self.env.seed,
            p.desc
        )
    }

    /// Checks on what the module wrote back; `Some(problem)` if it does not add up.
    fn post_check(&self, p: &Prepared, o: Outcome) -> Option<String> {
        match (&p.post, o) {
            (
                &Post::Prefetch {
                    at: At::Req(off),
                    whole,
                    budget,
                    max_pages,
                },
                Ok(_),
            ) => {
                let r: TorporPrefetch = self.req.read(off);
                let counted = r
                    .pages_mapped
                    .saturating_add(r.pages_present)
                    .saturating_add(r.pages_unpopulated)
                    .saturating_add(r.pages_failed);
                if budget == 0 && r.stop_addr != 0 {
                    return Some(format!("stop_addr {:#x} with no budget", r.stop_addr));
                }
                if let (false, Some(max)) = (whole, max_pages) {
                    if counted > max {
                        return Some(format!("counted {counted} pages (mapped {} present {} unpopulated {} failed {}) of {max} asked", r.pages_mapped, r.pages_present, r.pages_unpopulated, r.pages_failed));
                    }
                }
                None
            }
            (
                &Post::Discard {
                    at: At::Req(off),
                    total_bytes: Some(total),
                },
                Ok(_),
            ) => {
                let r: TorporDiscard = self.req.read(off);
                let sum = r.bytes_zapped.saturating_add(r.bytes_skipped);
                (sum != total).then(|| format!("zapped {:#x} + skipped {:#x} != {total:#x}, the page-rounded bytes of the ranges", r.bytes_zapped, r.bytes_skipped))
            }
            (&Post::FreeBitmap { at, buf }, _) => {
                let At::Req(off) = at else { return None };
                self.check_free_bitmap(off, buf, o)
            }
            (&Post::PriorityMap { at, buf, window }, _) => {
                let At::Req(off) = at else { return None };
                self.check_priority_map(off, buf, window, o)
            }
            (&Post::Version { at: At::Req(off) }, Ok(_)) => {
                let v: TorporVersion = self.req.read(off);
                (v.abi_version != uapi::TORPOR_ABI_VERSION
                    || v.size as usize != size_of::<TorporVersion>()
                    || v.features & ALL_FEATURES != ALL_FEATURES)
                    .then(|| format!("GET_VERSION wrote {v:?}"))
            }
            (&Post::Stats { at: At::Req(off) }, Ok(_)) => {
                let s: TorporStats = self.req.read(off);
                (s.size as usize != size_of::<TorporStats>() || s.reserved != 0)
                    .then(|| format!("GET_STATS wrote {s:?}"))
            }
            _ => None,
        }
    }

    /// FREE_BITMAP's request (at `off` in our request buffer) and bitmap after outcome `o`.
    fn check_free_bitmap(&self, off: usize, buf: Option<usize>, o: Outcome) -> Option<String> {
        let end_pfn = self.env.end_pfn;
        let r: TorporFreeBitmap = self.req.read(off);
        if let Some(e) = end_pfn_mismatch(o, r.end_pfn, end_pfn) {
            return Some(e);
        }
        if let (Ok(_), Some(b)) = (o, buf) {
            let bits: u64 = self
                .fb
                .bytes(b, self.fb_need)
                .iter()
                .map(|x| x.count_ones() as u64)
                .sum();
            if bits != r.free_pages || r.free_pages > end_pfn {
                return Some(format!(
                    "{bits} bits set in the bitmap, free_pages {} (end_pfn {end_pfn})",
                    r.free_pages
                ));
            }
        }
        None
    }

    /// PRIORITY_MAP's request (at `off`) and map after outcome `o`.
    fn check_priority_map(
        &self,
        off: usize,
        buf: Option<usize>,
        window: u32,
        o: Outcome,
    ) -> Option<String> {
        let end_pfn = self.env.end_pfn;
        let r: TorporPriorityMap = self.req.read(off);
        if let Some(e) = end_pfn_mismatch(o, r.end_pfn, end_pfn) {
            return Some(e);
        }
        if let (Ok(_), Some(b)) = (o, buf) {
            let want = if window == 0 {
                uapi::DEFAULT_WINDOW_MS
            } else {
                window
            };
            if r.window_ms != want {
                return Some(format!(
                    "window_ms {} written back, {want} used",
                    r.window_ms
                ));
            }
            let mut h = [0u64; NR_CATEGORIES];
            for &c in &self.pm.bytes(b, end_pfn as usize) {
                if c as usize >= NR_CATEGORIES {
                    return Some(format!("category byte {c} outside 0..=8"));
                }
                h[c as usize] += 1;
            }
            if h != r.counts {
                return Some(format!("histogram {h:?} != counts {:?}", r.counts));
            }
            if r.active_procs > r.total_procs {
                return Some(format!(
                    "active_procs {} > total_procs {}",
                    r.active_procs, r.total_procs
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dry run's environment (no module, no shared ranges, no trace) for fuzzer pid 1.
    fn dry_env<'a>(reg: &'a Registry, none: &GuardBuf, kthreadd: bool, seed: u64) -> Env<'a> {
        Env {
            kmod: None,
            reg,
            me: 1,
            end_pfn: 524_288,
            kthreadd,
            shared: None,
            trace: false,
            none_addr: none.addr() as u64,
            seed,
        }
    }

    #[test]
    fn alignment_rule() {
        assert_eq!(
            aligned(&TorporRange {
                start: 0x1001,
                len: 0
            }),
            Some((0x1000, 0x2000))
        );
        assert_eq!(
            aligned(&TorporRange {
                start: 0x1000,
                len: 0
            }),
            Some((0x1000, 0x1000))
        );
        assert_eq!(
            aligned(&TorporRange {
                start: u64::MAX - 4095,
                len: 4096
            }),
            None
        );
        assert_eq!(
            aligned(&TorporRange {
                start: u64::MAX - 100,
                len: 50
            }),
            None,
            "rounding up wraps"
        );
        assert_eq!(
            aligned(&TorporRange {
                start: u64::MAX - 8191,
                len: 4096
            }),
            Some((u64::MAX - 8191, u64::MAX - 4095))
        );
        assert_eq!(
            aligned(&TorporRange {
                start: WINDOW,
                len: u64::MAX / 3
            })
            .map(|(s, _)| s),
            Some(WINDOW)
        );
    }

    #[test]
    fn cheap_tail_bytes() {
        let direct: u64 = (BIG_HEAD..1000)
            .map(|i| aligned(&cheap_range(i)).map(|(s, e)| e - s).unwrap())
            .sum();
        assert_eq!(cheap_bytes(1000), direct);
        assert_eq!(cheap_bytes(BIG_HEAD), 0);
        assert_eq!(cheap_bytes(BIG_HEAD + 1), 0);
        assert_eq!(cheap_bytes(BIG_HEAD + 2), PAGE as u64);
    }

    #[test]
    fn bad_commands_are_never_known() {
        let reg = Registry::new(None, 1, 0, &[]).unwrap();
        let none = GuardBuf::inaccessible(65536).unwrap();
        let env = dry_env(&reg, &none, false, 9);
        let mut w = Worker::new(&env, Phase::Guard, 0).unwrap();
        for i in 0..2000 {
            let p = w.gen_bad_cmd(if i % 2 == 0 {
                Kind::Unknown
            } else {
                Kind::WrongShape
            });
            assert!(!KNOWN.contains(&p.cmd), "{:#x}", p.cmd);
            assert_eq!(p.expect, Expect::err(Errno::ENOTTY));
        }
    }

    #[test]
    fn generation_is_a_function_of_the_seed() {
        let reg = Registry::new(None, 1, 0, &[]).unwrap();
        let none = GuardBuf::inaccessible(65536).unwrap();
        let env = dry_env(&reg, &none, true, 7);
        for phase in Phase::ALL {
            let run = || {
                let mut w = Worker::new(&env, phase, 0).unwrap();
                (0..300)
                    .map(|_| w.prepare())
                    .map(|p| (p.cmd, p.desc, p.expect))
                    .collect::<Vec<_>>()
            };
            let (a, b) = (run(), run());
            if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
                panic!("{phase:?}: request {i} differs:\n{:?}\n{:?}", a[i], b[i]);
            }
            // Every kind of the phase shows up, and DISCARD never names a possible pid here
            // (no children in this test: only impossible pids).
            assert!(a
                .iter()
                .any(|x| x.1.starts_with("PREFETCH") || x.1.starts_with("FREE_BITMAP")));
        }
        let mut w = Worker::new(&env, Phase::Ranges, 0).unwrap();
        for _ in 0..2000 {
            let p = w.prepare();
            if let Some(pid) = p.discard_pid {
                assert!(pid <= 0 || pid > 4 * 1024 * 1024, "{}", p.desc);
            }
            if p.ro {
                w.ro.set_readonly(false).unwrap();
            }
        }
    }

    #[test]
    fn the_crash_recipe_is_generated() {
        let reg = Registry::new(None, 1, 0, &[]).unwrap();
        let none = GuardBuf::inaccessible(65536).unwrap();
        let env = dry_env(&reg, &none, false, 3);
        let mut w = Worker::new(&env, Phase::Ranges, 0).unwrap();
        let descs: Vec<String> = (0..3000)
            .map(|_| {
                let p = w.prepare();
                if p.ro {
                    w.ro.set_readonly(false).unwrap();
                }
                p.desc
            })
            .collect();
        assert!(descs
            .iter()
            .any(|d| d.starts_with("DISCARD") && d.contains("nr=64 sum-overflow")));
        assert!(descs
            .iter()
            .any(|d| d.contains(&format!("nr={}", MAX_SORTED_RANGES + 1))));
        assert!(descs.iter().any(|d| d.contains("range-wraps")));
        assert!(descs.iter().any(|d| d.contains("guard-")));
    }
}
