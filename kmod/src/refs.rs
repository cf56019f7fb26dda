// SPDX-License-Identifier: GPL-2.0
//! Every reference the module takes on a kernel object, counted.
//!
//! A `struct pid`, `task_struct` or `mm_struct` reference is only ever held through one of
//! the owning types below: taking one increments a module-wide counter, dropping it releases
//! the kernel reference and decrements the counter. GET_STATS reports the counters and the
//! unload line prints them, so a reference leaked on any path (an early return, a race with
//! an exiting target) is a nonzero count once the calls have returned, not a slow drift in
//! MemAvailable. The module takes no `struct page` references (its GUP calls pass no page
//! array); the page counter exists so that the ABI and the tests cover a path that ever
//! pins one, and stays 0.
//!
//! Counter arithmetic: `fetch_add`/`fetch_sub` wrap by definition (no overflow panic); a
//! counter can only exceed `u64::MAX` after 2^64 live references, which cannot exist, and it
//! can only go below 0 if a release is unpaired, which the owning types make impossible
//! (one decrement per `Drop`, one increment per successful acquire).

use core::sync::atomic::{AtomicU64, Ordering};
use kernel::bindings;
use kernel::error::code::{EINVAL, ESRCH};
use kernel::prelude::*;

/// Outstanding references by kind.
pub(crate) static PID_REFS: AtomicU64 = AtomicU64::new(0);
pub(crate) static TASK_REFS: AtomicU64 = AtomicU64::new(0);
pub(crate) static MM_REFS: AtomicU64 = AtomicU64::new(0);
pub(crate) static PAGE_REFS: AtomicU64 = AtomicU64::new(0);

fn acquired(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn released(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}

/// (pid, task, mm, page) references held right now.
pub(crate) fn outstanding() -> (u64, u64, u64, u64) {
    (
        PID_REFS.load(Ordering::Relaxed),
        TASK_REFS.load(Ordering::Relaxed),
        MM_REFS.load(Ordering::Relaxed),
        PAGE_REFS.load(Ordering::Relaxed),
    )
}

/// A counted `struct pid` reference (`find_get_pid`); dropping it calls `put_pid`.
struct PidRef(*mut bindings::pid);

impl PidRef {
    /// `nr` in the caller's pid namespace: ESRCH when no such pid exists.
    fn find(nr: i32) -> Result<Self> {
        // SAFETY: find_get_pid looks `nr` up in the caller's active pid namespace under RCU
        // and returns a counted reference or NULL; any value of `nr` is accepted.
        let p = unsafe { bindings::find_get_pid(nr) };
        if p.is_null() {
            return Err(ESRCH);
        }
        acquired(&PID_REFS);
        Ok(Self(p))
    }
}

impl Drop for PidRef {
    fn drop(&mut self) {
        // SAFETY: we own exactly one reference from find_get_pid, released exactly once here.
        unsafe { bindings::put_pid(self.0) };
        released(&PID_REFS);
    }
}

/// A counted `task_struct` reference (`get_pid_task`); dropping it calls `put_task_struct`.
struct TaskRef(*mut bindings::task_struct);

impl TaskRef {
    /// The thread-group task of `pid`: ESRCH when it is gone.
    fn of_pid(pid: &PidRef) -> Result<Self> {
        // SAFETY: `pid.0` is a valid counted `struct pid`; get_pid_task returns a counted task
        // or NULL.
        let task = unsafe { bindings::get_pid_task(pid.0, bindings::pid_type_PIDTYPE_PID) };
        if task.is_null() {
            return Err(ESRCH);
        }
        acquired(&TASK_REFS);
        Ok(Self(task))
    }

    fn is_kthread(&self) -> bool {
        // SAFETY: `self.0` is a valid counted task_struct; `flags` is a plain word read racily,
        // but PF_KTHREAD is set at creation and never changes.
        unsafe { (*self.0).flags & bindings::PF_KTHREAD != 0 }
    }
}

impl Drop for TaskRef {
    fn drop(&mut self) {
        // SAFETY: we own exactly one reference from get_pid_task, released exactly once here.
        unsafe { bindings::put_task_struct(self.0) };
        released(&TASK_REFS);
    }
}

/// A counted `mm_users` reference on an address space (`get_task_mm`); dropping it calls
/// `mmput`, which may sleep (it runs `exit_mmap` when the target has exited meanwhile), so
/// an `MmRef` must be dropped in process context with no spinlock or RCU read lock held.
pub(crate) struct MmRef(*mut bindings::mm_struct);

impl MmRef {
    /// The address space of process `nr` (caller's pid namespace). EINVAL for `nr <= 0` or a
    /// kernel thread; ESRCH for no such process or one without an mm (zombie, exiting). The
    /// pid and task references are released before this returns.
    pub(crate) fn of_pid(nr: i32) -> Result<Self> {
        if nr <= 0 {
            return Err(EINVAL);
        }
        let task = TaskRef::of_pid(&PidRef::find(nr)?)?;
        if task.is_kthread() {
            return Err(EINVAL);
        }
        // SAFETY: `task.0` is a valid counted task_struct; get_task_mm takes task_lock and
        // returns a counted mm or NULL (exited, zombie, kernel thread).
        let mm = unsafe { bindings::get_task_mm(task.0) };
        // SAFETY: `mm` is NULL or a reference we own.
        unsafe { Self::from_counted(mm) }.ok_or(ESRCH)
    }

    /// Take ownership of a reference returned by `get_task_mm` (NULL: `None`).
    ///
    /// # Safety
    /// `mm` is NULL or an `mm_users` reference the caller owns and hands over.
    pub(crate) unsafe fn from_counted(mm: *mut bindings::mm_struct) -> Option<Self> {
        if mm.is_null() {
            return None;
        }
        acquired(&MM_REFS);
        Some(Self(mm))
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::mm_struct {
        self.0
    }
}

impl Drop for MmRef {
    fn drop(&mut self) {
        // SAFETY: we own exactly one mm_users reference, released exactly once; the type's
        // contract (see above) keeps drops out of atomic context.
        unsafe { bindings::mmput(self.0) };
        released(&MM_REFS);
    }
}
