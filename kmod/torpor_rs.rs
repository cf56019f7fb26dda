// SPDX-License-Identifier: GPL-2.0
//! torpor: `/dev/torpor`, ioctls that bring a suspended process's memory back
//! faster than stock syscalls can (and, in a VM guest, export page maps).
//!
//! Security model: the device node is 0600 root, and every ioctl additionally
//! requires CAP_SYS_ADMIN in the caller (`ptrace_may_access` is not exported in
//! 6.12, so the module cannot do finer checks). Unknown commands get ENOTTY.
//!
//! Panic freedom by construction: a Rust panic in the kernel is a BUG (an oops that can take
//! the machine down), so the lints below make every operation that can panic visible to the
//! kernel's clippy build (`make kmod` builds with `CLIPPY=1`), and deny it: integer arithmetic
//! (`arithmetic_side_effects`: every `+ - * / % << >>` on a value from userspace, from a
//! target's address space or from kernel structures is `checked_*`/`saturating_*`/
//! `wrapping_*`, or carries an `#[allow]` with the proof of its bound), indexing and slicing
//! (`get`/`get_mut` instead), `unwrap`/`expect`/`panic!`. See kmod/README.md, "Audit".
#![deny(clippy::arithmetic_side_effects)]
#![deny(clippy::indexing_slicing)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::sync::atomic::{AtomicU64, Ordering};
use kernel::error::code::{ENOTTY, EPERM};
use kernel::ffi::{c_int, c_long, c_uint, c_ulong};
use kernel::prelude::*;
use kernel::uaccess::UserSlice;

#[path = "src/guest.rs"]
mod guest;
#[path = "src/mm.rs"]
mod mm;
#[path = "src/pgwalk.rs"]
mod pgwalk;
#[path = "src/refs.rs"]
mod refs;
#[path = "src/uapi.rs"]
mod uapi;

module! {
    type: Torpor,
    name: "torpor",
    author: "torpor developers",
    description: "torpor: whole-process prefetch and guest page maps",
    license: "GPL",
}

/// Module release string reported by GET_VERSION.
const RELEASE: &[u8] = b"0.1.0";

/// `CAP_SYS_ADMIN` from include/uapi/linux/capability.h.
const CAP_SYS_ADMIN: c_int = 21;

extern "C" {
    fn torpor_shim_register() -> c_int;
    fn torpor_shim_unregister();
    // Exported by kernel/capability.c; not an inline helper, so Rust calls it directly.
    fn capable(cap: c_int) -> bool;
}

struct Torpor;

impl kernel::Module for Torpor {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // SAFETY: module init runs once; the shim's static miscdevice is not registered yet,
        // and `Drop` deregisters it exactly once on unload.
        let rc = unsafe { torpor_shim_register() };
        if rc != 0 {
            pr_err!("misc_register failed: {}\n", rc);
            return Err(Error::from_errno(rc));
        }
        pr_info!("loaded, /dev/torpor ABI {}\n", uapi::TORPOR_ABI_VERSION);
        Ok(Torpor)
    }
}

impl Drop for Torpor {
    fn drop(&mut self) {
        // SAFETY: `init` registered the device successfully (else `Torpor` would not exist).
        // misc_deregister waits for no new opens; the module refcount (fops.owner) keeps us
        // loaded while any file is open, so no ioctl can be running here.
        unsafe { torpor_shim_unregister() };
        // No ioctl can run any more: every reference the module ever took must be back. The
        // tests grep this exact line (all zeros) after rmmod.
        let (pid, task, mm, page) = refs::outstanding();
        pr_info!(
            "unloaded, outstanding references: pid {} task {} mm {} page {}; {} ioctls, {} errors\n",
            pid,
            task,
            mm,
            page,
            CALLS.load(Ordering::Relaxed),
            ERRORS.load(Ordering::Relaxed)
        );
    }
}

/// ioctls running now, answered since load, and answered with an errno. Wrapping counters
/// (`fetch_add`/`fetch_sub`): 2^64 calls cannot happen, and each decrement pairs with one
/// increment in `torpor_rust_ioctl`.
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

/// Entry from the shim's `unlocked_ioctl`: returns >= 0 or a negative errno.
#[no_mangle]
pub extern "C" fn torpor_rust_ioctl(cmd: c_uint, arg: c_ulong) -> c_long {
    IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
    let r = match dispatch(cmd, arg) {
        Ok(v) => v,
        Err(e) => {
            ERRORS.fetch_add(1, Ordering::Relaxed);
            e.to_errno() as c_long
        }
    };
    IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    CALLS.fetch_add(1, Ordering::Relaxed);
    r
}

fn dispatch(cmd: u32, arg: usize) -> Result<c_long> {
    // SAFETY: `capable` only reads the current task's credentials; always safe to call
    // from process context (ioctl).
    if !unsafe { capable(CAP_SYS_ADMIN) } {
        return Err(EPERM);
    }
    match cmd {
        uapi::TORPOR_IOC_GET_VERSION => get_version(arg),
        uapi::TORPOR_IOC_PREFETCH => mm::prefetch(arg),
        uapi::TORPOR_IOC_DISCARD => mm::discard(arg),
        uapi::TORPOR_IOC_FREE_BITMAP => guest::free_bitmap(arg),
        uapi::TORPOR_IOC_PRIORITY_MAP => guest::priority_map(arg),
        uapi::TORPOR_IOC_GET_STATS => get_stats(arg),
        _ => Err(ENOTTY),
    }
}

fn get_version(arg: usize) -> Result<c_long> {
    let mut v = uapi::TorporVersion {
        abi_version: uapi::TORPOR_ABI_VERSION,
        size: core::mem::size_of::<uapi::TorporVersion>() as u32,
        features: uapi::FEAT_GET_VERSION
            | uapi::FEAT_PREFETCH
            | uapi::FEAT_DISCARD
            | uapi::FEAT_FREE_BITMAP
            | uapi::FEAT_PRIORITY_MAP
            | uapi::FEAT_GET_STATS,
        release: [0; 32],
    };
    // RELEASE (5 bytes) fits the 32-byte field; zip stops at the shorter of the two anyway.
    for (d, s) in v.release.iter_mut().zip(RELEASE.iter()) {
        *d = *s;
    }
    let mut w = UserSlice::new(arg, core::mem::size_of::<uapi::TorporVersion>()).writer();
    w.write(&v)?;
    Ok(0)
}

fn get_stats(arg: usize) -> Result<c_long> {
    let (pid_refs, task_refs, mm_refs, page_refs) = refs::outstanding();
    let s = uapi::TorporStats {
        size: core::mem::size_of::<uapi::TorporStats>() as u32,
        reserved: 0,
        pid_refs,
        task_refs,
        mm_refs,
        page_refs,
        // This call is in flight itself (counted on entry) and not yet answered.
        in_flight: IN_FLIGHT.load(Ordering::Relaxed).saturating_sub(1),
        calls: CALLS.load(Ordering::Relaxed),
        errors: ERRORS.load(Ordering::Relaxed),
    };
    let mut w = UserSlice::new(arg, core::mem::size_of::<uapi::TorporStats>()).writer();
    w.write(&s)?;
    Ok(0)
}
