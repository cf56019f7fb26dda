// SPDX-License-Identifier: GPL-2.0
//! Kernel side of the `/dev/torpor` ABI. Mirrored in userspace by
//! `procswap/src/uapi.rs`, whose layout tests pin sizes, offsets and numbers.

use kernel::ioctl::_IOR;

/// ioctl type byte (unused in ioctl-number.rst as of 6.12).
pub(crate) const TORPOR_IOC_MAGIC: u32 = 0xD7;
/// Bumped on any incompatible ABI change.
pub(crate) const TORPOR_ABI_VERSION: u32 = 1;

/// Feature bits (`TorporVersion::features`).
pub(crate) const FEAT_GET_VERSION: u64 = 1 << 0;

/// `struct torpor_version`.
#[repr(C)]
pub(crate) struct TorporVersion {
    pub(crate) abi_version: u32,
    pub(crate) size: u32,
    pub(crate) features: u64,
    pub(crate) release: [u8; 32],
}

// SAFETY: `TorporVersion` is `repr(C)` made only of integers and a byte array, with no
// padding (4 + 4 + 8 + 32 = 48, every field naturally aligned), so every byte is initialized.
unsafe impl kernel::types::AsBytes for TorporVersion {}

const _: () = assert!(core::mem::size_of::<TorporVersion>() == 48);

pub(crate) const TORPOR_IOC_GET_VERSION: u32 =
    _IOR::<TorporVersion>(TORPOR_IOC_MAGIC, 0x00);

const _: () = assert!(TORPOR_IOC_GET_VERSION == 0x8030_D700);
