//! Guest RAM inside a QEMU process: which guest-physical ranges are RAM, and at which host
//! virtual addresses QEMU maps them.
//!
//! Sources (QEMU 7.2 has no HVA column in `info ramblock`):
//! - HMP `info mtree -f`: the flat view of the system address space (`AS "memory"`), i.e. the
//!   guest-physical ranges as the guest sees them, each with its kind (`ram`, `rom`, `i/o`),
//!   its RAM block and the offset into that block (`@offset`). The PCI hole is simply absent
//!   from the RAM ranges: on `pc` RAM above 3 GiB, on `q35` above 2 GiB, continues at 4 GiB
//!   (`pc.ram @00000000c0000000` at `0x100000000`).
//! - HMP `gpa2hva ADDR`: the host address of one guest-physical address and its block name.
//!   One call per RAM range; all ranges of a block must agree on the block's base
//!   (`hva - offset`), else discovery fails.
//! - `/proc/PID/maps`: every range must lie inside one writable private mapping of QEMU.
//! - HMP `info ramblock`: block sizes, to pick the guest's main RAM block (the largest: ROMs,
//!   option ROMs, ACPI tables and VGA memory are other, smaller blocks).

use super::qmp::Qmp;
use super::VmError;
use std::collections::BTreeMap;

/// One range of the flat view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatRange {
    pub start: u64,
    /// Bytes.
    pub len: u64,
    pub prio: i64,
    /// "ram", "rom", "i/o", "romd", ...
    pub kind: String,
    /// Memory region / RAM block name.
    pub name: String,
    /// Offset into the region (`@offset`), 0 when not printed.
    pub offset: u64,
}

/// One line of `info ramblock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlock {
    pub name: String,
    pub page_size: u64,
    pub offset: u64,
    pub used: u64,
    pub total: u64,
}

/// One guest-physical RAM range and where QEMU maps it: defined once, in the API crate.
pub use torpor_api::RamRange;

/// Guest RAM of one QEMU process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestRam {
    pub pid: i32,
    /// Sorted by `gpa`, non-overlapping.
    pub ranges: Vec<RamRange>,
}

fn hex(s: &str, what: &str) -> Result<u64, VmError> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| VmError::Parse(format!("bad hex {what} {s:?}")))
}

/// Parse the flat view of the system address space (`AS "memory"`) out of `info mtree -f`.
pub fn parse_mtree_flat(text: &str) -> Result<Vec<FlatRange>, VmError> {
    let mut views: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        if line.starts_with("FlatView #") {
            views.push(Vec::new());
        } else if let Some(v) = views.last_mut() {
            v.push(line);
        }
    }
    let view = views
        .iter()
        .find(|v| {
            v.iter()
                .any(|l| l.trim_start().starts_with("AS \"memory\","))
        })
        .ok_or_else(|| VmError::Parse("info mtree -f: no FlatView for AS \"memory\"".into()))?;
    let mut out = Vec::new();
    for l in view.iter().map(|l| l.trim()) {
        // 0000000000100000-00000000bfffffff (prio 0, ram): pc.ram @0000000000100000 [KVM]
        let Some((range, rest)) = l.split_once(' ') else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        if a.is_empty()
            || !a.bytes().all(|c| c.is_ascii_hexdigit())
            || !b.bytes().all(|c| c.is_ascii_hexdigit())
        {
            continue;
        }
        let start = hex(a, "range start")?;
        let last = hex(b, "range end")?;
        if last < start {
            return Err(VmError::Parse(format!(
                "info mtree -f: empty range in {l:?}"
            )));
        }
        let rest = rest.trim();
        let inner = rest
            .strip_prefix("(prio ")
            .and_then(|r| r.split_once("): "))
            .ok_or_else(|| VmError::Parse(format!("info mtree -f: cannot parse {l:?}")))?;
        let (prio, kind) = inner
            .0
            .split_once(", ")
            .ok_or_else(|| VmError::Parse(format!("info mtree -f: cannot parse {l:?}")))?;
        let prio: i64 = prio
            .trim()
            .parse()
            .map_err(|_| VmError::Parse(format!("info mtree -f: bad prio in {l:?}")))?;
        let mut words: Vec<&str> = inner.1.split_whitespace().collect();
        if words.last() == Some(&"KVM") {
            words.pop();
        }
        let mut offset = 0;
        if let Some(w) = words.last().filter(|w| w.starts_with('@')) {
            offset = hex(&w[1..], "offset")?;
            words.pop();
        }
        out.push(FlatRange {
            start,
            len: last - start + 1,
            prio,
            kind: kind.trim().to_string(),
            name: words.join(" "),
            offset,
        });
    }
    if out.is_empty() {
        return Err(VmError::Parse(
            "info mtree -f: the system FlatView has no ranges".into(),
        ));
    }
    Ok(out)
}

fn size_with_unit(num: &str, unit: &str) -> Result<u64, VmError> {
    let n: u64 = num
        .parse()
        .map_err(|_| VmError::Parse(format!("bad page size {num:?}")))?;
    let m = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(VmError::Parse(format!("bad page size unit {unit:?}"))),
    };
    Ok(n * m)
}

/// Parse `info ramblock` (QEMU 7.2: `Block Name PSize Offset Used Total`; later versions
/// append an `HVA` column, ignored here).
pub fn parse_ramblock(text: &str) -> Result<Vec<RamBlock>, VmError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let head = lines
        .next()
        .ok_or_else(|| VmError::Parse("info ramblock: empty".into()))?;
    if !head.contains("Block Name") || !head.contains("Offset") {
        return Err(VmError::Parse(format!(
            "info ramblock: unexpected header {head:?}"
        )));
    }
    let mut out = Vec::new();
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() < 6 {
            return Err(VmError::Parse(format!("info ramblock: cannot parse {l:?}")));
        }
        out.push(RamBlock {
            name: w[0].to_string(),
            page_size: size_with_unit(w[1], w[2])?,
            offset: hex(w[3], "offset")?,
            used: hex(w[4], "used")?,
            total: hex(w[5], "total")?,
        });
    }
    Ok(out)
}

/// Parse one `gpa2hva` answer: `Host virtual address for 0x100000 (pc.ram) is 0x7f01abf00000`.
pub fn parse_gpa2hva(text: &str) -> Result<(String, u64), VmError> {
    let t = text.trim();
    let rest = t
        .strip_prefix("Host virtual address for ")
        .ok_or_else(|| VmError::Parse(format!("gpa2hva: {t:?}")))?;
    let open = rest
        .find(" (")
        .ok_or_else(|| VmError::Parse(format!("gpa2hva: {t:?}")))?;
    let close = rest
        .rfind(") is ")
        .ok_or_else(|| VmError::Parse(format!("gpa2hva: {t:?}")))?;
    let name = rest[open + 2..close].to_string();
    let hva = hex(rest[close + 5..].trim(), "host address")?;
    Ok((name, hva))
}

/// A mapping of `/proc/PID/maps`: (start, end, perms, offset, path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub path: String,
}

/// Parse `/proc/PID/maps`.
pub fn parse_maps(text: &str) -> Result<Vec<MapsLine>, VmError> {
    let mut out = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut w = l.split_whitespace();
        let range = w.next().unwrap_or("");
        let perms = w.next().unwrap_or("").to_string();
        let (a, b) = range
            .split_once('-')
            .ok_or_else(|| VmError::Parse(format!("maps: {l:?}")))?;
        let path = w.nth(3).map(str::to_string).unwrap_or_default();
        out.push(MapsLine {
            start: hex(a, "maps start")?,
            end: hex(b, "maps end")?,
            perms,
            path,
        });
    }
    Ok(out)
}

/// The guest's main RAM block: the largest by `used` (ties: the first listed).
pub fn main_block(blocks: &[RamBlock]) -> Option<&RamBlock> {
    blocks
        .iter()
        .fold(None, |best: Option<&RamBlock>, b| match best {
            Some(x) if x.used >= b.used => Some(x),
            _ => Some(b),
        })
}

impl GuestRam {
    /// Build from parsed sources: the flat view, the blocks, the HVA of each RAM block's base
    /// (from gpa2hva), and QEMU's maps (every range must lie in one private writable mapping).
    /// Only `ram` ranges of `main` are guest RAM.
    pub fn assemble(
        pid: i32,
        flat: &[FlatRange],
        main: &str,
        bases: &BTreeMap<String, u64>,
        maps: &[MapsLine],
    ) -> Result<GuestRam, VmError> {
        let base = *bases.get(main).ok_or_else(|| {
            VmError::Discovery(format!("no host address known for RAM block {main:?}"))
        })?;
        let mut ranges: Vec<RamRange> = flat
            .iter()
            .filter(|f| f.kind == "ram" && f.name == main)
            .map(|f| RamRange {
                gpa: f.start,
                len: f.len,
                block: f.name.clone(),
                block_offset: f.offset,
                hva: base + f.offset,
            })
            .collect();
        if ranges.is_empty() {
            return Err(VmError::Discovery(format!(
                "the system flat view has no ram range of block {main:?}"
            )));
        }
        ranges.sort_by_key(|r| r.gpa);
        for w in ranges.windows(2) {
            if w[0].gpa_end() > w[1].gpa {
                return Err(VmError::Discovery(format!(
                    "overlapping RAM ranges at gpa {:#x}",
                    w[1].gpa
                )));
            }
        }
        for r in &ranges {
            let m = maps
                .iter()
                .find(|m| m.start <= r.hva && r.hva < m.end)
                .ok_or_else(|| {
                    VmError::Discovery(format!(
                        "gpa {:#x} -> hva {:#x}: not mapped in /proc/{pid}/maps",
                        r.gpa, r.hva
                    ))
                })?;
            if r.hva + r.len > m.end {
                return Err(VmError::Discovery(format!(
                    "gpa {:#x}+{:#x} -> hva {:#x}: runs past the end of mapping {:#x}-{:#x}",
                    r.gpa, r.len, r.hva, m.start, m.end
                )));
            }
            if !m.perms.starts_with("rw") || m.perms.as_bytes().get(3) != Some(&b'p') {
                return Err(VmError::Discovery(format!(
                    "gpa {:#x} -> hva {:#x}: mapping {:#x}-{:#x} is {} {:?}, not private writable (shared guest RAM cannot be paged out by MADV_PAGEOUT)",
                    r.gpa, r.hva, m.start, m.end, m.perms, m.path
                )));
            }
        }
        Ok(GuestRam { pid, ranges })
    }

    /// Discover guest RAM of QEMU `pid` through its QMP session (works while the VM is stopped;
    /// QEMU itself must not be frozen).
    pub fn discover(qmp: &mut Qmp, pid: i32) -> Result<GuestRam, VmError> {
        let flat = parse_mtree_flat(&qmp.hmp("info mtree -f")?)?;
        let blocks = parse_ramblock(&qmp.hmp("info ramblock")?)?;
        let main = main_block(&blocks)
            .ok_or_else(|| VmError::Discovery("info ramblock lists no block".into()))?
            .name
            .clone();
        let mut bases = BTreeMap::new();
        for f in flat.iter().filter(|f| f.kind == "ram" && f.name == main) {
            let (name, hva) = parse_gpa2hva(&qmp.hmp(&format!("gpa2hva {:#x}", f.start))?)?;
            if name != main {
                return Err(VmError::Discovery(format!(
                    "gpa2hva {:#x} names block {name:?}, the flat view {main:?}",
                    f.start
                )));
            }
            let base = hva.checked_sub(f.offset).ok_or_else(|| {
                VmError::Discovery(format!("gpa2hva {:#x}: hva below offset", f.start))
            })?;
            match bases.get(&name) {
                Some(&b) if b != base => {
                    return Err(VmError::Discovery(format!(
                        "block {name:?}: ranges disagree on its host base ({b:#x} vs {base:#x})"
                    )))
                }
                _ => {
                    bases.insert(name, base);
                }
            }
        }
        let path = format!("/proc/{pid}/maps");
        let maps_text = std::fs::read_to_string(&path).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => {
                VmError::Procswap(crate::Error::NoSuchProcess(pid))
            }
            _ => VmError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        GuestRam::assemble(pid, &flat, &main, &bases, &parse_maps(&maps_text)?)
    }

    /// Total guest RAM bytes.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// Host address of a guest-physical address, if it is guest RAM.
    pub fn gpa_to_hva(&self, gpa: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|r| r.gpa <= gpa);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (gpa < r.gpa_end()).then(|| r.hva + (gpa - r.gpa))
    }

    /// Host ranges of all guest RAM.
    pub fn hva_ranges(&self) -> Vec<crate::Range> {
        self.ranges
            .iter()
            .map(|r| crate::Range {
                start: r.hva,
                len: r.len,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PC512_MTREE: &str = include_str!("testdata/pc-512m.mtree-f.txt");
    const PC4G_MTREE: &str = include_str!("testdata/pc-4g.mtree-f.txt");
    const Q35_MTREE: &str = include_str!("testdata/q35-4g.mtree-f.txt");

    fn assemble(tag: &str, mtree: &str) -> GuestRam {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/vm/testdata/");
        let rb = std::fs::read_to_string(format!("{dir}{tag}.ramblock.txt")).unwrap();
        let g = std::fs::read_to_string(format!("{dir}{tag}.gpa2hva.txt")).unwrap();
        let maps = std::fs::read_to_string(format!("{dir}{tag}.maps.txt")).unwrap();
        let flat = parse_mtree_flat(mtree).unwrap();
        let blocks = parse_ramblock(&rb).unwrap();
        let main = main_block(&blocks).unwrap().name.clone();
        // gpa2hva of gpa 0 (offset 0) gives the block base.
        let (name, hva0) = parse_gpa2hva(g.lines().next().unwrap()).unwrap();
        assert_eq!(name, main);
        let mut bases = BTreeMap::new();
        bases.insert(main.clone(), hva0);
        // Every captured gpa2hva line of the main block agrees with the assembled translation.
        let ram =
            GuestRam::assemble(4242, &flat, &main, &bases, &parse_maps(&maps).unwrap()).unwrap();
        for l in g.lines() {
            let gpa = hex(
                l.split_whitespace().find(|w| w.starts_with("0x")).unwrap(),
                "gpa",
            )
            .unwrap();
            match parse_gpa2hva(l) {
                Ok((n, hva)) if n == main => {
                    assert_eq!(ram.gpa_to_hva(gpa), Some(hva), "{tag}: {l}")
                }
                Ok(_) => assert_eq!(ram.gpa_to_hva(gpa), None, "{tag}: {l} is not main RAM"),
                Err(_) => assert_eq!(ram.gpa_to_hva(gpa), None, "{tag}: {l}"),
            }
        }
        ram
    }

    #[test]
    fn flat_view_pc_4g_shows_the_pci_hole() {
        let f = parse_mtree_flat(PC4G_MTREE).unwrap();
        let ram: Vec<_> = f.iter().filter(|r| r.kind == "ram").collect();
        assert_eq!(ram.len(), 3);
        assert_eq!((ram[0].start, ram[0].len, ram[0].offset), (0, 0xc0000, 0));
        assert_eq!(
            (ram[1].start, ram[1].len, ram[1].offset),
            (0x100000, 0xbff00000, 0x100000)
        );
        assert_eq!(
            (ram[2].start, ram[2].len, ram[2].offset),
            (1 << 32, 1 << 30, 0xc0000000)
        );
        assert!(ram.iter().all(|r| r.name == "pc.ram"));
        let bios = f.iter().find(|r| r.start == 0xe0000).unwrap();
        assert_eq!(
            (
                bios.kind.as_str(),
                bios.name.as_str(),
                bios.offset,
                bios.prio
            ),
            ("rom", "pc.bios", 0x20000, 0)
        );
        let msi = f.iter().find(|r| r.name == "apic-msi").unwrap();
        assert_eq!((msi.kind.as_str(), msi.prio), ("i/o", 4096));
    }

    #[test]
    fn translation_pc_512m_pc_4g_q35_4g() {
        let r = assemble("pc-512m", PC512_MTREE);
        assert_eq!(r.bytes(), (512 << 20) - 0x40000); // 0xc0000-0xfffff are ROMs
        assert_eq!(r.ranges.len(), 2);
        assert_eq!(
            r.gpa_to_hva(0x1000_0000),
            Some(0x7f01abe00000 + 0x1000_0000)
        );
        assert_eq!(r.gpa_to_hva(0xc0000), None);
        assert_eq!(r.gpa_to_hva(512 << 20), None);

        let r = assemble("pc-4g", PC4G_MTREE);
        // pc: 3 GiB below the hole, 1 GiB above 4 GiB, continuing at block offset 3 GiB.
        let hi = r.ranges.last().unwrap();
        assert_eq!(
            (hi.gpa, hi.len, hi.block_offset),
            (1 << 32, 1 << 30, 3 << 30)
        );
        assert_eq!(r.gpa_to_hva(1 << 32), Some(0x7efd7fe00000 + (3 << 30)));
        assert_eq!(r.gpa_to_hva(0xc000_0000), None, "PCI hole");
        assert_eq!(
            r.gpa_to_hva(0xbfff_ffff),
            Some(0x7efd7fe00000 + 0xbfff_ffff)
        );

        let r = assemble("q35-4g", Q35_MTREE);
        let hi = r.ranges.last().unwrap();
        assert_eq!(
            (hi.gpa, hi.len, hi.block_offset),
            (1 << 32, 2 << 30, 2 << 30)
        );
        assert_eq!(r.gpa_to_hva(0x8000_0000), None, "q35 hole starts at 2 GiB");
        assert_eq!(
            r.gpa_to_hva((1 << 32) + 5),
            Some(0x7f313be00000 + (2 << 30) + 5)
        );
    }

    #[test]
    fn ramblock_and_gpa2hva_parsers() {
        let b = parse_ramblock(include_str!("testdata/pc-4g.ramblock.txt")).unwrap();
        assert_eq!(b.len(), 6);
        assert_eq!(
            b[0],
            RamBlock {
                name: "pc.ram".into(),
                page_size: 4096,
                offset: 0,
                used: 1 << 32,
                total: 1 << 32
            }
        );
        assert_eq!(main_block(&b).unwrap().name, "pc.ram");
        assert_eq!(b[1].name, "/rom@etc/acpi/tables");
        assert!(parse_ramblock("garbage\n").is_err());
        assert!(parse_ramblock("").is_err());
        assert_eq!(
            parse_gpa2hva("Host virtual address for 0x0 (pc.ram) is 0x7f313be00000\n").unwrap(),
            ("pc.ram".into(), 0x7f313be00000)
        );
        assert!(parse_gpa2hva("No memory is mapped at address 0x100000000").is_err());
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(parse_mtree_flat("").is_err());
        assert!(parse_mtree_flat("FlatView #0\n AS \"I/O\", root: io\n").is_err());
        assert!(parse_mtree_flat(
            "FlatView #0\n AS \"memory\", root: system\n  0000-zzzz (prio 0, ram): x\n"
        )
        .is_err());
        let flat = parse_mtree_flat(PC512_MTREE).unwrap();
        let mut bases = BTreeMap::new();
        bases.insert("pc.ram".to_string(), 0x7f01abe00000);
        // A mapping too short for guest RAM, and a shared mapping: refused.
        let short = parse_maps("7f01abe00000-7f01abf00000 rw-p 00000000 00:00 0\n").unwrap();
        assert!(GuestRam::assemble(1, &flat, "pc.ram", &bases, &short).is_err());
        let shared =
            parse_maps("7f01abe00000-7f01cbe00000 rw-s 00000000 00:01 7 /dev/shm/x\n").unwrap();
        let e = GuestRam::assemble(1, &flat, "pc.ram", &bases, &shared)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not private writable"), "{e}");
        assert!(GuestRam::assemble(1, &flat, "vga.vram", &bases, &short).is_err());
    }
}
