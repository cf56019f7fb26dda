//! Buffers the fuzzer hands to the kernel, and pointers that must fault.
//!
//! Memory-safety rule of the whole fuzzer: every address the module may *write* through is
//! either inside a [`GuardBuf`]'s accessible part with room for everything the request lets
//! the module write, or an address no write can reach (a kernel or non-canonical address, one
//! below `mmap_min_addr` or past `TASK_SIZE`, or the inside of a `PROT_NONE` region). Write
//! buffers are followed by a guard at least as long as the largest write the module may do
//! into them, so even a write that runs past the claimed size faults (EFAULT) instead of
//! landing in another allocation of ours.

use anyhow::{Context, Result};
use nix::sys::mman::{mmap_anonymous, mprotect, munmap, MapFlags, ProtFlags};
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::ptr::NonNull;

pub const PAGE: usize = 4096;

pub fn round_up(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

/// An anonymous private mapping: `data` bytes readable and writable, followed by `guard`
/// bytes of `PROT_NONE`. Unmapped on drop.
pub struct GuardBuf {
    base: NonNull<c_void>,
    data: usize,
    total: usize,
    /// The accessible part is read-only now (`write`/`fill` refuse: they would fault).
    readonly: std::cell::Cell<bool>,
}

impl GuardBuf {
    /// `data` and `guard` are rounded up to whole pages (the guard is at least one page).
    pub fn new(data: usize, guard: usize) -> Result<Self> {
        let data = round_up(data.max(1));
        let guard = round_up(guard.max(PAGE));
        let total = data + guard;
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses: it aliases
        // nothing of ours.
        let base = unsafe {
            mmap_anonymous(
                None,
                NonZeroUsize::new(total).expect("nonzero"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .context("mmap for a guarded buffer")?;
        let b = Self {
            base,
            data,
            total,
            readonly: std::cell::Cell::new(false),
        };
        // SAFETY: the guard is the tail of the mapping just created, page-aligned.
        unsafe { mprotect(b.at(data).cast(), guard, ProtFlags::PROT_NONE) }
            .context("mprotect the guard")?;
        Ok(b)
    }

    /// A region with no accessible byte at all (a "mapped but unusable" address range).
    pub fn inaccessible(len: usize) -> Result<Self> {
        let len = round_up(len.max(PAGE));
        // SAFETY: a fresh anonymous PROT_NONE mapping: nothing can be read or written there.
        let base = unsafe {
            mmap_anonymous(
                None,
                NonZeroUsize::new(len).expect("nonzero"),
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .context("mmap PROT_NONE region")?;
        Ok(Self {
            base,
            data: 0,
            total: len,
            readonly: std::cell::Cell::new(true),
        })
    }

    fn at(&self, off: usize) -> NonNull<c_void> {
        assert!(off <= self.total);
        // SAFETY: `off` is within the mapping (or one past its end), so the result is non-null
        // and in bounds of the same allocation.
        unsafe { NonNull::new_unchecked(self.base.as_ptr().cast::<u8>().add(off).cast()) }
    }

    /// Address of the first accessible byte.
    pub fn addr(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// Accessible bytes.
    pub fn len(&self) -> usize {
        self.data
    }

    /// Address of the first guard byte (one past the accessible part).
    pub fn guard_addr(&self) -> usize {
        self.addr() + self.data
    }

    /// Make the accessible part read-only (or writable again).
    pub fn set_readonly(&self, ro: bool) -> Result<()> {
        let prot = if ro {
            ProtFlags::PROT_READ
        } else {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        };
        // SAFETY: changes the protection of our own accessible pages only; no Rust reference
        // into them is live across this call (all accesses go through `write`/`read`).
        unsafe { mprotect(self.base, self.data, prot) }.context("mprotect")?;
        self.readonly.set(ro);
        Ok(())
    }

    /// Store `v` at byte offset `off` (any alignment). Panics if it does not fit.
    pub fn write<T: Copy>(&self, off: usize, v: &T) {
        assert!(
            off + size_of::<T>() <= self.data,
            "write past the accessible part"
        );
        assert!(!self.readonly.get(), "write into a read-only buffer");
        // SAFETY: in bounds (checked above), the part is readable and writable (callers only
        // write while it is not read-only), and unaligned stores are explicit.
        unsafe { self.at(off).as_ptr().cast::<T>().write_unaligned(*v) }
    }

    /// Load a `T` from byte offset `off` (any alignment). Panics if it does not fit.
    pub fn read<T: Copy>(&self, off: usize) -> T {
        assert!(
            off + size_of::<T>() <= self.data,
            "read past the accessible part"
        );
        // SAFETY: in bounds and readable; `T: Copy` is plain data in every use (ABI structs,
        // integers), valid for any bit pattern.
        unsafe { self.at(off).as_ptr().cast::<T>().read_unaligned() }
    }

    /// `len` bytes from `off`, copied out.
    pub fn bytes(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.data);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds and readable; `v` is a distinct allocation of `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.at(off).as_ptr().cast::<u8>(), v.as_mut_ptr(), len)
        };
        v
    }

    /// Set `len` bytes from `off` to `b`.
    pub fn fill(&self, off: usize, len: usize, b: u8) {
        assert!(off + len <= self.data);
        assert!(!self.readonly.get(), "write into a read-only buffer");
        // SAFETY: in bounds and writable.
        unsafe { std::ptr::write_bytes(self.at(off).as_ptr().cast::<u8>(), b, len) };
    }
}

impl Drop for GuardBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` created; no reference into it outlives
        // `self` (all accesses copy).
        let _ = unsafe { munmap(self.base, self.total) };
    }
}

/// Pointers no access from the kernel can succeed on, with a name for the report. The
/// `PROT_NONE` region's address is added by the caller (it is per process).
pub const BAD_PTRS: &[(u64, &str)] = &[
    (0, "null"),
    (1, "one"),
    (8, "low8"),
    (0xfff, "low-odd"),
    (0xfff0, "below-mmap-min"),
    (0x7fff_ffff_f000, "task-size"),
    (0x7fff_ffff_fff8, "task-size-8"),
    (0x0000_8000_0000_0000, "noncanonical-lo"),
    (0x8000_0000_0000_0000, "noncanonical-mid"),
    (0xffff_7fff_ffff_f000, "noncanonical-hi"),
    (0xffff_8880_0000_0000, "kernel-directmap"),
    (0xffff_ffff_8100_0000, "kernel-text"),
    (0xffff_ffff_ff60_0000, "vsyscall"),
    (u64::MAX - 15, "top-16"),
    (u64::MAX, "top"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_layout() {
        let b = GuardBuf::new(100, 1).unwrap();
        assert_eq!(b.len(), PAGE);
        assert_eq!(b.guard_addr(), b.addr() + PAGE);
        b.write(PAGE - 8, &0x1122_3344_5566_7788u64);
        assert_eq!(b.read::<u64>(PAGE - 8), 0x1122_3344_5566_7788);
        b.write(3, &7u32); // unaligned
        assert_eq!(b.read::<u32>(3), 7);
        b.fill(0, 16, 0xa5);
        assert_eq!(b.bytes(0, 4), vec![0xa5; 4]);
        b.set_readonly(true).unwrap();
        assert_eq!(b.read::<u8>(0), 0xa5);
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.write(0, &1u8))).is_err(),
            "a write into the read-only page is refused, not a SIGSEGV"
        );
        b.set_readonly(false).unwrap();
        // The guard really faults: the kernel refuses to read it for us.
        let mut x = [0u8; 1];
        let iov = [std::io::IoSliceMut::new(&mut x)];
        let remote = [nix::sys::uio::RemoteIoVec {
            base: b.guard_addr(),
            len: 1,
        }];
        assert!(
            nix::sys::uio::process_vm_readv(nix::unistd::Pid::this(), &mut { iov }, &remote)
                .is_err()
        );
    }

    #[test]
    #[should_panic(expected = "write past")]
    fn no_write_into_guard() {
        let b = GuardBuf::new(PAGE, PAGE).unwrap();
        b.write(PAGE - 4, &0u64);
    }
}
