//! Host-side memory evidence: the QEMU process's guest-RAM mapping and its pages
//! (present / swapped / never touched, from `/proc/PID/pagemap`), `/proc/PID/status`,
//! `/proc/meminfo`, `/proc/vmstat`, and the read counters of the swap devices.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;

pub const PAGE: u64 = 4096;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub path: String,
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

pub fn parse_maps(text: &str) -> Vec<Vma> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?.to_string();
            let (_off, _dev, _ino) = (f.next()?, f.next()?, f.next()?);
            let path = f.collect::<Vec<_>>().join(" ");
            let (a, b) = range.split_once('-')?;
            Some(Vma {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                perms,
                path,
            })
        })
        .collect()
}

/// The guest-RAM mapping of a QEMU process with `ram_bytes` of RAM: an anonymous, private,
/// read-write mapping of exactly that size (QEMU maps each RAM block on its own, with a
/// guard page after it). Fails, listing the candidates, when there is not exactly one.
pub fn find_guest_ram(vmas: &[Vma], ram_bytes: u64) -> Result<Vma> {
    let anon_rw: Vec<&Vma> = vmas
        .iter()
        .filter(|v| v.path.is_empty() && v.perms == "rw-p")
        .collect();
    let exact: Vec<&&Vma> = anon_rw.iter().filter(|v| v.len() == ram_bytes).collect();
    if exact.len() == 1 {
        return Ok((*exact[0]).clone());
    }
    let big: Vec<String> = anon_rw
        .iter()
        .filter(|v| v.len() >= 64 << 20)
        .map(|v| format!("{:x}-{:x} {} MiB", v.start, v.end, v.len() >> 20))
        .collect();
    bail!(
        "{} anonymous rw mappings of exactly {} MiB (large ones: {big:?})",
        exact.len(),
        ram_bytes >> 20
    )
}

/// Pages of a range by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PageCounts {
    /// Present and not the shared zero page (memory this range really holds).
    pub present: u64,
    /// Present, mapping the shared zero page (or huge zero page): holds no memory, and
    /// page-out leaves it mapped.
    pub zero: u64,
    pub swapped: u64,
    /// Neither (never touched, or dropped).
    pub none: u64,
}

impl PageCounts {
    pub fn total(&self) -> u64 {
        self.present + self.zero + self.swapped + self.none
    }
    /// Count pagemap entries (bit 63 present, bit 62 swapped, bits 0-54 PFN); `is_zero(pfn)`
    /// says whether a present page is the zero page.
    pub fn add_entries(&mut self, entries: &[u8], is_zero: &mut dyn FnMut(u64) -> bool) {
        for e in entries.chunks_exact(8) {
            let v = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
            if v & (1 << 63) != 0 {
                let pfn = v & ((1 << 55) - 1);
                if pfn != 0 && is_zero(pfn) {
                    self.zero += 1;
                } else {
                    self.present += 1;
                }
            } else if v & (1 << 62) != 0 {
                self.swapped += 1;
            } else {
                self.none += 1;
            }
        }
    }
}

/// Present/swapped/none pages of `[start, end)` in process `pid` (root needed for the
/// swap bit on recent kernels; the present bit is always there).
pub fn page_counts(pid: i32, start: u64, end: u64) -> Result<PageCounts> {
    let mut f = fs::File::open(format!("/proc/{pid}/pagemap"))
        .with_context(|| format!("open /proc/{pid}/pagemap"))?;
    // KPF_ZERO_PAGE (bit 24) from /proc/kpageflags, cached per PFN (the zero page is one PFN,
    // the huge zero page 512); without kpageflags (not root) nothing counts as zero.
    let mut kpf = fs::File::open("/proc/kpageflags").ok();
    let mut cache: std::collections::HashMap<u64, bool> = std::collections::HashMap::new();
    let mut is_zero = |pfn: u64| -> bool {
        *cache.entry(pfn).or_insert_with(|| {
            let Some(k) = kpf.as_mut() else { return false };
            let mut b = [0u8; 8];
            k.seek(SeekFrom::Start(pfn * 8)).is_ok()
                && k.read_exact(&mut b).is_ok()
                && u64::from_le_bytes(b) & (1 << 24) != 0
        })
    };
    let mut c = PageCounts::default();
    let mut buf = vec![0u8; 8 * 16384];
    let mut vpn = start / PAGE;
    let end_vpn = end.div_ceil(PAGE);
    while vpn < end_vpn {
        let n = ((end_vpn - vpn) as usize).min(16384);
        f.seek(SeekFrom::Start(vpn * 8))?;
        f.read_exact(&mut buf[..n * 8])
            .with_context(|| format!("read pagemap of {pid} at vpn {vpn:#x}"))?;
        c.add_entries(&buf[..n * 8], &mut is_zero);
        vpn += n as u64;
    }
    Ok(c)
}

fn kv_file(path: &str, key: &str) -> Result<u64> {
    let text = fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    kv(&text, key).with_context(|| format!("no {key} in {path}"))
}

/// `key value [kB]` / `key: value kB` lookup (value as written, no unit conversion).
pub fn kv(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let k = f.next()?.trim_end_matches(':');
        (k == key).then(|| f.next()?.parse().ok()).flatten()
    })
}

/// `/proc/meminfo` field in bytes.
pub fn meminfo_bytes(key: &str) -> Result<u64> {
    Ok(kv_file("/proc/meminfo", key)? * 1024)
}

/// `/proc/vmstat` counter.
pub fn vmstat(key: &str) -> Result<u64> {
    kv_file("/proc/vmstat", key)
}

/// `/proc/PID/status` field in bytes (VmRSS, RssAnon, VmSwap...).
pub fn status_bytes(pid: i32, key: &str) -> Result<u64> {
    Ok(kv_file(&format!("/proc/{pid}/status"), key)? * 1024)
}

/// The memory cgroup directory of `pid`: its cgroup v2 group when that has the memory
/// controller (a `memory.stat`), else its v1 `memory` group; `None` when it has neither.
pub fn memcg_dir(pid: i32) -> Result<Option<std::path::PathBuf>> {
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("/proc/{pid}/cgroup"))?;
    let mounts = fs::read_to_string("/proc/self/mounts").context("/proc/self/mounts")?;
    let mount_of = |fstype: &str, opt: Option<&str>| {
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[2] == fstype && opt.is_none_or(|o| f[3].split(',').any(|x| x == o)))
                .then(|| f[1].to_string())
        })
    };
    let mut v1 = None;
    for l in cg.lines() {
        let mut it = l.splitn(3, ':');
        let (_, ctl, path) = (
            it.next(),
            it.next().unwrap_or(""),
            it.next().unwrap_or("").trim_start_matches('/'),
        );
        if ctl.is_empty() {
            if let Some(m) = mount_of("cgroup2", None) {
                let d = std::path::Path::new(&m).join(path);
                if d.join("memory.stat").exists() {
                    return Ok(Some(d));
                }
            }
        } else if ctl.split(',').any(|c| c == "memory") {
            v1 = mount_of("cgroup", Some("memory")).map(|m| std::path::Path::new(&m).join(path));
        }
    }
    Ok(v1.filter(|d| d.join("memory.stat").exists()))
}

/// Bytes of `pid`'s memory cgroup that sit in the swap cache (`memory.stat` `swapcached`),
/// `None` where the kernel does not report it.
pub fn memcg_swap_cached_bytes(pid: i32) -> Result<Option<u64>> {
    let Some(d) = memcg_dir(pid)? else {
        return Ok(None);
    };
    let text = fs::read_to_string(d.join("memory.stat"))
        .with_context(|| format!("{}/memory.stat", d.display()))?;
    Ok(kv(&text, "swapcached"))
}

/// Active swap areas: (path, block device "major:minor" whose `stat` counts its reads).
pub fn swap_devices() -> Result<Vec<(String, String)>> {
    let text = fs::read_to_string("/proc/swaps")?;
    let mut out = Vec::new();
    for l in text.lines().skip(1) {
        let Some(path) = l.split_whitespace().next() else {
            continue;
        };
        // Swap paths escape spaces as \040; good enough for the files we create.
        let md = fs::metadata(path).with_context(|| format!("stat {path}"))?;
        let dev = if md.file_type().is_file() {
            md.dev()
        } else {
            md.rdev()
        };
        out.push((
            path.to_string(),
            format!("{}:{}", libc::major(dev), libc::minor(dev)),
        ));
    }
    Ok(out)
}

/// Sectors (512 B) read from block device `maj:min` (field 3 of its `stat`).
pub fn dev_read_sectors(majmin: &str) -> Result<u64> {
    let p = format!("/sys/dev/block/{majmin}/stat");
    let text = fs::read_to_string(&p).with_context(|| format!("read {p}"))?;
    text.split_whitespace()
        .nth(2)
        .context("short stat")?
        .parse()
        .context("bad sector count")
}

/// A name for `maj:min` (e.g. "vda1").
pub fn dev_name(majmin: &str) -> String {
    fs::read_link(format!("/sys/dev/block/{majmin}"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| majmin.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memcg_is_found() {
        let pid = std::process::id() as i32;
        let v1_memory = fs::read_to_string("/proc/self/cgroup")
            .unwrap()
            .lines()
            .any(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|x| x == "memory"))
            });
        match memcg_dir(pid).unwrap() {
            Some(d) => {
                assert!(d.join("memory.stat").exists(), "{}", d.display());
                memcg_swap_cached_bytes(pid).unwrap();
            }
            None => assert!(!v1_memory, "in a v1 memory cgroup, but none found"),
        }
    }

    #[test]
    fn maps_and_guest_ram() {
        let text = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fd:01 123 /usr/bin/qemu-system-x86_64
7f0000000000-7f0020000000 rw-p 00000000 00:00 0 
7f0020000000-7f0020001000 ---p 00000000 00:00 0 
7f1000000000-7f1040000000 rwxp 00000000 00:00 0 
7f2000000000-7f2000400000 rw-p 00000000 00:00 0 
7f3000000000-7f3000100000 rw-s 00000000 00:05 9 /memfd:x (deleted)
";
        let v = parse_maps(text);
        assert_eq!(v.len(), 6);
        assert_eq!(v[0].path, "/usr/bin/qemu-system-x86_64");
        assert_eq!(v[5].path, "/memfd:x (deleted)");
        let ram = find_guest_ram(&v, 512 << 20).unwrap();
        assert_eq!((ram.start, ram.len()), (0x7f0000000000, 512 << 20));
        // The 1 GiB TCG buffer is rwx, not a candidate for 1 GiB of RAM.
        assert!(find_guest_ram(&v, 1 << 30).is_err());
        assert!(find_guest_ram(&v, 256 << 20).is_err());
    }

    #[test]
    fn pagemap_entries() {
        let mut c = PageCounts::default();
        let mut e = Vec::new();
        for v in [
            1u64 << 63 | 5,
            1 << 62 | 77,
            0,
            1 << 63,
            1 << 62,
            1 << 63 | 9,
            1 << 63 | 9,
        ] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        c.add_entries(&e, &mut |pfn| pfn == 9);
        assert_eq!(
            c,
            PageCounts {
                present: 2,
                zero: 2,
                swapped: 2,
                none: 1
            }
        );
        assert_eq!(c.total(), 7);
    }

    #[test]
    fn own_pages_are_counted() {
        // A fresh anonymous buffer: touched pages are present.
        let mut buf = vec![0u8; 64 * PAGE as usize];
        for i in (0..buf.len()).step_by(PAGE as usize) {
            buf[i] = 1;
        }
        let start = (buf.as_ptr() as u64).div_ceil(PAGE) * PAGE;
        let end = start + 32 * PAGE;
        let c = page_counts(std::process::id() as i32, start, end).unwrap();
        assert_eq!(c.total(), 32);
        assert_eq!(c.present, 32);
        std::hint::black_box(&buf);
    }

    #[test]
    fn zero_page_mappings_are_told_apart() {
        // Read-only faults on untouched anonymous memory map the shared zero page.
        // SAFETY: a fresh private anonymous mapping, unmapped below; only read through volatile reads.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                16 * PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as *mut u8;
        for i in 0..8 {
            // SAFETY: within the 16-page mapping.
            unsafe { std::ptr::read_volatile(base.add(i * PAGE as usize)) };
        }
        for i in 8..12 {
            // SAFETY: within the 16-page mapping.
            unsafe { std::ptr::write_volatile(base.add(i * PAGE as usize), 1) };
        }
        let c = page_counts(std::process::id() as i32, p as u64, p as u64 + 16 * PAGE).unwrap();
        // SAFETY: unmapping the mapping created above.
        unsafe { libc::munmap(p, 16 * PAGE as usize) };
        assert_eq!(c.total(), 16);
        assert_eq!(c.present + c.zero, 12, "{c:?}");
        // Telling them apart needs the PFNs and kpageflags (root).
        if std::fs::File::open("/proc/kpageflags").is_ok() {
            assert_eq!((c.present, c.zero), (4, 8), "{c:?}");
        }
    }

    #[test]
    fn kv_parsing() {
        assert_eq!(
            kv(
                "MemTotal:       24684012 kB\nSwapCached:  12 kB\n",
                "SwapCached"
            ),
            Some(12)
        );
        assert_eq!(kv("pswpin 77\npswpout 3\n", "pswpin"), Some(77));
        assert_eq!(kv("pswpin 77\n", "pswpout"), None);
        assert!(vmstat("pswpin").is_ok());
        assert!(meminfo_bytes("MemTotal").unwrap() > 0);
    }
}
