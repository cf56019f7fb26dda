//! Guest RAM layout: the "System RAM" ranges of `/proc/iomem` as PFN ranges.
//!
//! Every map is indexed by position in the layout: map index 0 is the first page of the
//! first range, and the ranges follow each other with no gaps in the index space
//! (the physical holes between them, e.g. the PCI hole below 4 GiB, are simply absent).

use crate::Error;
use serde::Serialize;

/// `count` pages starting at PFN `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PfnRange {
    pub start: u64,
    pub count: u64,
}

impl PfnRange {
    pub fn end(&self) -> u64 {
        self.start + self.count
    }
}

/// Sorted, non-overlapping, non-empty PFN ranges.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize)]
pub struct RamLayout {
    pub ranges: Vec<PfnRange>,
}

impl RamLayout {
    /// Validating constructor.
    pub fn new(ranges: Vec<PfnRange>) -> Result<Self, Error> {
        let mut prev_end = 0u64;
        for (i, r) in ranges.iter().enumerate() {
            if r.count == 0 {
                return Err(Error::Parse(format!("range {i} is empty")));
            }
            if r.start.checked_add(r.count).is_none() {
                return Err(Error::Parse(format!("range {i} overflows")));
            }
            if i > 0 && r.start < prev_end {
                return Err(Error::Parse(format!("range {i} overlaps or is unsorted")));
            }
            prev_end = r.end();
        }
        Ok(RamLayout { ranges })
    }

    /// Total pages (the length of every map).
    pub fn total_pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.count).sum()
    }

    /// Map index of a PFN, or `None` outside System RAM.
    pub fn index_of(&self, pfn: u64) -> Option<u64> {
        let mut base = 0u64;
        // Few ranges (typically 2-4): a linear scan beats the bookkeeping of a search.
        for r in &self.ranges {
            if pfn < r.start {
                return None;
            }
            if pfn < r.end() {
                return Some(base + pfn - r.start);
            }
            base += r.count;
        }
        None
    }

    /// PFN at a map index.
    pub fn pfn_at(&self, mut index: u64) -> Option<u64> {
        for r in &self.ranges {
            if index < r.count {
                return Some(r.start + index);
            }
            index -= r.count;
        }
        None
    }

    /// Parse `/proc/iomem` text: top-level (unindented) "System RAM" entries. Partial
    /// pages at either end of a range are left out. Fails if every address is zero
    /// (unprivileged readers see zeros).
    pub fn parse_iomem(text: &str, page_size: u64) -> Result<Self, Error> {
        let mut ranges: Vec<PfnRange> = Vec::new();
        let mut any_nonzero = false;
        for line in text.lines() {
            if line.starts_with(' ') || line.starts_with('\t') {
                continue;
            }
            let Some((addrs, name)) = line.split_once(" : ") else {
                continue;
            };
            if name.trim() != "System RAM" {
                continue;
            }
            let (a, b) = addrs
                .trim()
                .split_once('-')
                .ok_or_else(|| Error::Parse(format!("bad iomem line {line:?}")))?;
            let a =
                u64::from_str_radix(a, 16).map_err(|e| Error::Parse(format!("{line:?}: {e}")))?;
            let b =
                u64::from_str_radix(b, 16).map_err(|e| Error::Parse(format!("{line:?}: {e}")))?;
            if b != 0 {
                any_nonzero = true;
            }
            if b < a {
                return Err(Error::Parse(format!("bad iomem range {line:?}")));
            }
            let start = a.div_ceil(page_size);
            let end = (b + 1) / page_size;
            if end > start {
                // Adjacent entries (split only by a page-aligned boundary) are merged.
                match ranges.last_mut() {
                    Some(last) if last.end() == start => last.count += end - start,
                    _ => ranges.push(PfnRange {
                        start,
                        count: end - start,
                    }),
                }
            }
        }
        if !any_nonzero {
            return Err(Error::NoRamVisible);
        }
        ranges.sort_by_key(|r| r.start);
        RamLayout::new(ranges)
    }

    /// This machine's layout (needs root).
    pub fn from_proc() -> Result<Self, Error> {
        let text =
            std::fs::read_to_string("/proc/iomem").map_err(|e| Error::io("/proc/iomem", e))?;
        Self::parse_iomem(&text, page_size())
    }
}

/// The kernel's page size.
pub fn page_size() -> u64 {
    procfs::page_size()
}

#[cfg(test)]
mod tests {
    use super::*;

    const IOMEM: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-bffdefff : System RAM
  01000000-01ffffff : Kernel code
bffdf000-bfffffff : Reserved
feffc000-feffffff : Reserved
100000000-63fffffff : System RAM
  5c3000000-5c3ffffff : Kernel bss
";

    #[test]
    fn parses_iomem() {
        let l = RamLayout::parse_iomem(IOMEM, 4096).unwrap();
        assert_eq!(
            l.ranges,
            vec![
                PfnRange {
                    start: 1,
                    count: 0x9f - 1
                },
                PfnRange {
                    start: 0x100,
                    count: 0xbffdf - 0x100
                },
                PfnRange {
                    start: 0x100000,
                    count: 0x640000 - 0x100000
                },
            ]
        );
        assert_eq!(l.index_of(0), None);
        assert_eq!(l.index_of(1), Some(0));
        assert_eq!(l.index_of(0x9f), None);
        assert_eq!(l.index_of(0x100), Some(0x9e));
        assert_eq!(l.pfn_at(0x9e), Some(0x100));
        let last = l.total_pages() - 1;
        assert_eq!(l.pfn_at(last), Some(0x63ffff));
        assert_eq!(l.index_of(0x63ffff), Some(last));
        assert_eq!(l.pfn_at(last + 1), None);
        assert_eq!(l.index_of(0x640000), None);
    }

    #[test]
    fn unprivileged_iomem_is_refused() {
        let zeros = "00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n";
        assert!(matches!(
            RamLayout::parse_iomem(zeros, 4096),
            Err(Error::NoRamVisible)
        ));
    }

    #[test]
    fn rejects_bad_layouts() {
        assert!(RamLayout::new(vec![PfnRange { start: 5, count: 0 }]).is_err());
        assert!(RamLayout::new(vec![
            PfnRange {
                start: 5,
                count: 10
            },
            PfnRange {
                start: 10,
                count: 1
            }
        ])
        .is_err());
        assert!(RamLayout::new(vec![PfnRange {
            start: u64::MAX,
            count: 2
        }])
        .is_err());
    }
}
