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
    // Every implemented ioctl is advertised (bits 0..=4), and nothing else.
    let all = uapi::features::NAMES.iter().fold(0, |acc, (bit, _)| acc | bit);
    assert_eq!(v.features, all, "features {:#x}: expected get_version..priority_map", v.features);
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
    assert!(buf.iter().all(|&b| b == 0), "a rejected ioctl wrote to the buffer");
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
