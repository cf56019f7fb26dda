//! ABI tests against a loaded torpor.ko. They need `/dev/torpor`, which only our
//! guest kernel can provide, so they are `#[ignore]`d on the host and run inside
//! the VM by `make vm-test` (kmod/tests/vm-suite.sh runs them with `--ignored`).

use nix::errno::Errno;
use procswap::kmod::Kmod;
use procswap::uapi::{self, ioc, TorporVersion, IOC_NONE, IOC_READ, IOC_WRITE, TORPOR_IOC_MAGIC};

const NEEDS: &str = "needs /dev/torpor: runs in the VM via make vm-test";

#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn get_version_answers() {
    let k = Kmod::open().expect(NEEDS);
    let v = k.version();
    assert_eq!(v.abi_version, uapi::TORPOR_ABI_VERSION);
    assert_eq!(v.size as usize, std::mem::size_of::<TorporVersion>());
    // Every implemented ioctl is advertised (bits 0..=5), and nothing else.
    let all = uapi::features::NAMES
        .iter()
        .fold(0, |acc, (bit, _)| acc | bit);
    assert_eq!(
        v.features, all,
        "features {:#x}: expected get_version..get_stats",
        v.features
    );
    assert_eq!(v.release_str(), "0.1.0");
    println!(
        "GET_VERSION: abi {} size {} features {:#x} [{}] release {}",
        v.abi_version,
        v.size,
        v.features,
        v.feature_names().join(","),
        v.release_str()
    );
}

#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn unknown_ioctls_get_enotty() {
    let k = Kmod::open().expect(NEEDS);
    let size = std::mem::size_of::<TorporVersion>();
    let cmds = [
        ioc(IOC_NONE, TORPOR_IOC_MAGIC, 0x7f, 0),
        ioc(IOC_READ, TORPOR_IOC_MAGIC, 0xff, 8),
        // GET_VERSION's number with the wrong direction or size is a different command.
        ioc(IOC_WRITE, TORPOR_IOC_MAGIC, 0x00, size),
        ioc(IOC_READ, TORPOR_IOC_MAGIC, 0x00, size - 1),
        ioc(IOC_READ, b'T', 0x00, size),
        0x5401, // TCGETS
        0,
        u32::MAX,
    ];
    let mut buf = [0u8; 4096];
    for cmd in cmds {
        // SAFETY: `buf` is a valid 4 KiB buffer, larger than any size these numbers encode;
        // the module must reject all of them without touching it.
        let r = unsafe { k.raw_ioctl(cmd, buf.as_mut_ptr() as usize) };
        assert_eq!(r, Err(Errno::ENOTTY), "cmd {cmd:#x}");
        println!("cmd {cmd:#010x}: ENOTTY");
    }
    assert!(
        buf.iter().all(|&b| b == 0),
        "a rejected ioctl wrote to the buffer"
    );
}

#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn get_version_bad_pointers_get_efault() {
    let k = Kmod::open().expect(NEEDS);
    for ptr in [0usize, 1, 0xffff_8880_0000_0000, usize::MAX - 8] {
        // SAFETY: deliberately invalid pointers: the module must answer EFAULT, and none of
        // these addresses is mapped writable in this process, so nothing of ours is written.
        let r = unsafe { k.raw_ioctl(uapi::TORPOR_IOC_GET_VERSION, ptr) };
        assert_eq!(r, Err(Errno::EFAULT), "ptr {ptr:#x}");
    }
}

#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn get_stats_answers() {
    let k = Kmod::open().expect(NEEDS);
    let s = k.stats().expect("GET_STATS");
    assert_eq!(s.size as usize, std::mem::size_of::<uapi::TorporStats>());
    // Nothing else runs against the module during this test (--test-threads=1).
    assert_eq!(s.outstanding_refs(), 0, "{s:?}");
    assert_eq!(s.in_flight, 0, "{s:?}");
    let again = k.stats().expect("GET_STATS");
    assert_eq!(
        again.calls,
        s.calls + 1,
        "the first GET_STATS is counted: {s:?} -> {again:?}"
    );
    for ptr in [0usize, 1, 0xffff_8880_0000_0000, usize::MAX - 8] {
        // SAFETY: deliberately invalid pointers (not mapped writable here): EFAULT.
        let r = unsafe { k.raw_ioctl(uapi::TORPOR_IOC_GET_STATS, ptr) };
        assert_eq!(r, Err(Errno::EFAULT), "ptr {ptr:#x}");
    }
    println!("GET_STATS: {again:?}");
}

/// Regression: DISCARD on a live process with range lengths whose sum passes 2^64 panicked the
/// kernel (`attempt to add with overflow` in the skipped-bytes sum, then `kernel BUG`). The
/// sums now saturate: the call succeeds, zaps exactly the child's mapping and reports
/// `u64::MAX` skipped bytes.
#[test]
#[ignore = "needs /dev/torpor: runs in the VM via make vm-test"]
fn discard_byte_sums_past_2_64_saturate() {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, pipe, read, write, ForkResult};
    use std::os::fd::AsRawFd;
    const AT: usize = 0x5e00_0000_0000;
    const LEN: usize = 1 << 20;
    let k = Kmod::open().expect(NEEDS);
    let (rx, tx) = pipe().expect("pipe");
    // SAFETY: the test runs single-threaded (--test-threads=1); the child only calls mmap,
    // writes its own mapping and the pipe, and pauses until it is killed.
    let child = match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // SAFETY: a fresh private anonymous mapping at an address nothing else uses.
            let p = unsafe {
                libc::mmap(
                    AT as *mut libc::c_void,
                    LEN,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                // SAFETY: inside the mapping just created.
                unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0x5a, LEN) };
                let _ = write(&tx, b"r");
            }
            loop {
                // SAFETY: pause() only sleeps until a signal arrives.
                unsafe { libc::pause() };
            }
        }
        ForkResult::Parent { child } => child,
    };
    drop(tx);
    let mut b = [0u8; 1];
    assert_eq!(
        read(rx.as_raw_fd(), &mut b).ok(),
        Some(1),
        "child mapped its memory"
    );
    // The child's mapping, then 64 ranges of 2^63 bytes above user space: each one is valid
    // (no wrap), together they cover 2^69 bytes.
    let mut ranges = vec![uapi::TorporRange {
        start: AT as u64,
        len: LEN as u64,
    }];
    ranges.extend(std::iter::repeat_n(
        uapi::TorporRange {
            start: 0x8000_0000_0000,
            len: 1 << 63,
        },
        64,
    ));
    let r = k.discard(child.as_raw(), &ranges);
    let _ = kill(child, Signal::SIGKILL);
    let _ = waitpid(child, None);
    let d = r.expect("DISCARD with 2^69 bytes of ranges");
    assert_eq!(d.bytes_skipped, u64::MAX, "skipped bytes saturate: {d:?}");
    assert_eq!(
        d.bytes_zapped, LEN as u64,
        "exactly the child's mapping is zapped: {d:?}"
    );
    let s = k.stats().expect("GET_STATS");
    assert_eq!(s.outstanding_refs(), 0, "{s:?}");
    println!(
        "DISCARD past 2^64: zapped {} B, skipped saturated; {s:?}",
        d.bytes_zapped
    );
}
