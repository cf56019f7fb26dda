//! The I/O floor: how long reading the same number of bytes sequentially with `O_DIRECT` from
//! a *written* file (not fallocated, not sparse: those read as zeros without I/O) on the swap
//! device's filesystem takes, with the file's page cache dropped first.

use anyhow::{ensure, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use torpor_testsupport::pattern::Xorshift;

/// Default read size: 4 MiB requests (large enough to reach the device's streaming rate).
pub const DEFAULT_BLOCK: usize = 4 << 20;

/// A written file of `bytes` pseudo-random bytes, removed on drop.
pub struct FloorFile {
    pub path: PathBuf,
    pub bytes: u64,
}

impl FloorFile {
    /// Write `bytes` (a multiple of 1 MiB) of pseudo-random data to a new file in `dir` and
    /// fsync it. Random, so that no layer below (thin provisioning, zero detection) can answer
    /// reads without reading.
    pub fn create(dir: &Path, bytes: u64) -> Result<FloorFile> {
        ensure!(
            bytes > 0 && bytes & ((1 << 20) - 1) == 0,
            "floor file size must be a positive multiple of 1 MiB"
        );
        let path = dir.join(format!(
            "torpor-bench-floor-{}-{}.dat",
            std::process::id(),
            bytes >> 20
        ));
        let ff = FloorFile { path, bytes };
        let mut f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&ff.path)
            .with_context(|| format!("create {}", ff.path.display()))?;
        let mut x = Xorshift(0x2545_F491_4F6C_DD1Du64 ^ bytes);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..bytes >> 20 {
            for c in buf.chunks_exact_mut(8) {
                c.copy_from_slice(&x.next().to_ne_bytes());
            }
            f.write_all(&buf)
                .with_context(|| format!("write {}", ff.path.display()))?;
        }
        f.sync_all()
            .with_context(|| format!("fsync {}", ff.path.display()))?;
        Ok(ff)
    }

    /// Drop the file's page cache, then read it whole, sequentially, with `O_DIRECT` in
    /// `block`-byte requests. Returns the seconds the reads took.
    pub fn read_direct(&self, block: usize) -> Result<f64> {
        ensure!(
            block >= 4096 && block & 4095 == 0,
            "O_DIRECT block must be a multiple of 4096"
        );
        {
            let f =
                File::open(&self.path).with_context(|| format!("open {}", self.path.display()))?;
            f.sync_all()?;
            nix::fcntl::posix_fadvise(
                f.as_raw_fd(),
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            )
            .with_context(|| format!("posix_fadvise(DONTNEED) {}", self.path.display()))?;
        }
        let mut f = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)
            .with_context(|| {
                format!(
                    "open O_DIRECT {} (filesystem without O_DIRECT support?)",
                    self.path.display()
                )
            })?;
        // O_DIRECT needs an aligned buffer: take the 4096-aligned window of a larger Vec.
        let mut raw = vec![0u8; block + 4096];
        let off = raw.as_ptr().align_offset(4096);
        let buf = &mut raw[off..off + block];
        let t0 = Instant::now();
        let mut total = 0u64;
        loop {
            let n = f
                .read(buf)
                .with_context(|| format!("O_DIRECT read {}", self.path.display()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(&buf[..]);
        ensure!(
            total == self.bytes,
            "read {total} of {} bytes from {}",
            self.bytes,
            self.path.display()
        );
        Ok(secs)
    }
}

impl Drop for FloorFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
