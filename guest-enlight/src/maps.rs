//! In-memory maps: the free-page bitmap and the page-priority map, indexed by layout
//! position (see [`crate::layout`]).

use crate::{Category, RamLayout};
use serde::Serialize;

/// Where a map came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MapSourceKind {
    /// Exact maps from the torpor kernel module (`/dev/torpor` ioctls).
    ModuleExact = 0,
    /// Portable maps from `/proc/kpageflags` + `/proc/PID/pagemap` (approximate).
    PortableApprox = 1,
}

impl MapSourceKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(MapSourceKind::ModuleExact),
            1 => Some(MapSourceKind::PortableApprox),
            _ => None,
        }
    }
}

/// Metadata every map carries (also on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MapInfo {
    pub source: MapSourceKind,
    /// True when the map is known to be approximate (every portable map).
    pub approximate: bool,
    /// Wall-clock time the map was generated (ms since the Unix epoch).
    pub generated_unix_ms: u64,
    /// How long building it took (µs).
    pub build_us: u64,
    /// Priority map: the activity window actually used (ms); 0 for the free bitmap.
    pub window_ms: u32,
}

impl MapInfo {
    pub fn now(source: MapSourceKind, build: std::time::Duration, window_ms: u32) -> Self {
        let generated_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        MapInfo {
            source,
            approximate: source != MapSourceKind::ModuleExact,
            generated_unix_ms,
            build_us: build.as_micros() as u64,
            window_ms,
        }
    }
}

/// 1 bit per page of the layout; set = free (in the buddy allocator when built).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreeBitmap {
    pub layout: RamLayout,
    pub info: MapInfo,
    words: Vec<u64>,
    len: u64,
}

impl FreeBitmap {
    pub fn new(layout: RamLayout, info: MapInfo) -> Self {
        let len = layout.total_pages();
        FreeBitmap {
            layout,
            info,
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn get(&self, i: u64) -> bool {
        self.words[(i / 64) as usize] >> (i % 64) & 1 == 1
    }
    pub fn set(&mut self, i: u64, v: bool) {
        let w = &mut self.words[(i / 64) as usize];
        if v {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }
    pub fn set_range(&mut self, start: u64, count: u64) {
        for i in start..start + count {
            self.set(i, true);
        }
    }
    /// Set index `start + k` for every `k < count` whose bit `src_start + k` is set in `src`
    /// (bit i = byte i/8, bit i%8, as the module's FREE_BITMAP); bits past the end of `src` count
    /// as clear. 64 bits at a time. `start + count` must not exceed [`Self::len`].
    pub fn or_bits_from(&mut self, start: u64, src: &[u8], src_start: u64, count: u64) {
        assert!(start + count <= self.len, "or_bits_from past the end");
        let mut k = 0;
        while k < count {
            let n = (count - k).min(64);
            let bit = src_start + k;
            let byte = (bit / 8) as usize;
            let mut buf = [0u8; 16];
            if byte < src.len() {
                let end = src.len().min(byte + 9);
                buf[..end - byte].copy_from_slice(&src[byte..end]);
            }
            let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            let v = ((u128::from_le_bytes(buf) >> (bit % 8)) as u64) & mask;
            if v != 0 {
                let idx = start + k;
                let (w, sh) = ((idx / 64) as usize, idx % 64);
                self.words[w] |= v << sh;
                if sh != 0 && sh + n > 64 {
                    self.words[w + 1] |= v >> (64 - sh);
                }
            }
            k += n;
        }
    }
    /// Number of free pages.
    pub fn count_free(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }
    /// Is the page at this PFN free? `None` outside the layout.
    pub fn is_free_pfn(&self, pfn: u64) -> Option<bool> {
        self.layout.index_of(pfn).map(|i| self.get(i))
    }
}

/// 1 byte ([`Category`]) per page of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityMap {
    pub layout: RamLayout,
    pub info: MapInfo,
    pub bytes: Vec<u8>,
}

impl PriorityMap {
    /// A map with every page `Other`.
    pub fn new(layout: RamLayout, info: MapInfo) -> Self {
        let n = layout.total_pages() as usize;
        PriorityMap {
            layout,
            info,
            bytes: vec![Category::Other as u8; n],
        }
    }
    pub fn get(&self, i: u64) -> Category {
        Category::from_u8(self.bytes[i as usize]).unwrap_or(Category::Other)
    }
    pub fn category_of_pfn(&self, pfn: u64) -> Option<Category> {
        self.layout.index_of(pfn).map(|i| self.get(i))
    }
    /// Raise page `i` to `c` if `c` has higher priority (the highest category wins).
    pub fn raise(&mut self, i: u64, c: Category) {
        let b = &mut self.bytes[i as usize];
        *b = (*b).min(c as u8);
    }
    /// Pages per category.
    pub fn counts(&self) -> [u64; Category::COUNT] {
        let mut c = [0u64; Category::COUNT];
        for &b in &self.bytes {
            c[(b as usize).min(Category::COUNT - 1)] += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PfnRange;

    fn info() -> MapInfo {
        MapInfo::now(
            MapSourceKind::PortableApprox,
            std::time::Duration::from_millis(3),
            0,
        )
    }

    #[test]
    fn bitmap_basics() {
        let l = RamLayout::new(vec![
            PfnRange {
                start: 10,
                count: 70,
            },
            PfnRange {
                start: 100,
                count: 30,
            },
        ])
        .unwrap();
        let mut b = FreeBitmap::new(l, info());
        assert_eq!(b.len(), 100);
        b.set_range(60, 15);
        assert_eq!(b.count_free(), 15);
        assert_eq!(b.is_free_pfn(70), Some(true));
        assert_eq!(b.is_free_pfn(79), Some(true)); // index 69
        assert_eq!(b.is_free_pfn(100), Some(true)); // index 70
        assert_eq!(b.is_free_pfn(105), Some(false));
        assert_eq!(b.is_free_pfn(90), None);
        assert!(info().approximate);
    }

    #[test]
    fn or_bits_from_matches_bit_by_bit() {
        let src = torpor_testsupport::pattern::pattern_bytes(0x9e37_79b9_7f4a_7c15, 300);
        for (start, src_start, count) in [
            (0, 0, 2000),
            (3, 5, 1000),
            (63, 1, 130),
            (64, 7, 64),
            (100, 2390, 300),
            (5, 0, 1),
        ] {
            let l = RamLayout::new(vec![PfnRange {
                start: 0,
                count: 2500,
            }])
            .unwrap();
            let mut fast = FreeBitmap::new(l.clone(), info());
            let mut slow = FreeBitmap::new(l, info());
            fast.or_bits_from(start, &src, src_start, count);
            for k in 0..count {
                let b = src_start + k;
                if src
                    .get((b / 8) as usize)
                    .is_some_and(|&v| v >> (b % 8) & 1 == 1)
                {
                    slow.set(start + k, true);
                }
            }
            assert_eq!(
                fast, slow,
                "start {start} src_start {src_start} count {count}"
            );
        }
    }

    #[test]
    fn priority_raise() {
        let l = RamLayout::new(vec![PfnRange { start: 0, count: 4 }]).unwrap();
        let mut p = PriorityMap::new(l, info());
        p.raise(1, Category::FileActive);
        p.raise(1, Category::UserData);
        p.raise(1, Category::Other);
        assert_eq!(p.get(1), Category::UserData);
        assert_eq!(p.counts()[Category::Other as usize], 3);
    }
}
