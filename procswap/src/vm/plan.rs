//! The prefetch planner: guest RAM (host addresses) ordered by the guest's priority classes,
//! minus the pages the guest reported free.
//!
//! Safety (docs/guest-maps.md): the maps are stale the moment they were sent; a plan only orders and
//! skips prefetch. Nothing here (or anywhere in torpor) discards memory because of a map: a
//! skipped page stays on swap and comes back on demand, byte-exact.

use super::ram::GuestRam;
use crate::sys::Range;

/// Classes: 0..=8 are the guest's categories (enlightened post-copy's, `guest_enlight::Category`: Kernel,
/// Kernel_Allocated, Memory_I/O, Page_Table, User_Code, User_Data, File_Active,
/// File_Inactive, Other); 9 is guest RAM outside the guest's layout (firmware-reserved
/// ranges, or no map at all).
pub const CLASSES: usize = 10;
/// The class of guest RAM the guest's layout does not cover.
pub const CLASS_OUTSIDE: u8 = 9;

/// Name of a class (the category names of guest-enlight's `Category::name`).
pub fn class_name(c: u8) -> &'static str {
    const NAMES: [&str; CLASSES] = [
        "Kernel",
        "Kernel_Allocated",
        "Memory_I/O",
        "Page_Table",
        "User_Code",
        "User_Data",
        "File_Active",
        "File_Inactive",
        "Other",
        "Outside_Layout",
    ];
    NAMES.get(c as usize).copied().unwrap_or("Outside_Layout")
}

/// What the guest's maps say about one guest page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageClass {
    /// Reported free: never prefetched ahead (comes back on demand).
    Free,
    /// A class 0..=8 (values above 8 count as 8).
    Class(u8),
    /// Not in the guest's layout: [`CLASS_OUTSIDE`].
    Outside,
}

/// One class of the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassPlan {
    pub class: u8,
    /// Host ranges, ascending, adjacent pages merged.
    pub ranges: Vec<Range>,
    pub pages: u64,
}

/// A prefetch plan over guest RAM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// `CLASSES` entries, class 0 first.
    pub classes: Vec<ClassPlan>,
    /// Pages the guest reported free (in no class: never prefetched ahead).
    pub free_ranges: Vec<Range>,
    pub skipped_free_pages: u64,
    /// Guest RAM pages in all.
    pub guest_pages: u64,
}

fn push(ranges: &mut Vec<Range>, addr: u64, ps: u64) {
    match ranges.last_mut() {
        Some(r) if r.end() == addr => r.len += ps,
        _ => ranges.push(Range {
            start: addr,
            len: ps,
        }),
    }
}

impl Plan {
    /// Plan guest RAM: `classify(pfn)` says what the guest's maps say about each guest page
    /// frame (`|_| PageClass::Outside` without maps).
    pub fn build(ram: &GuestRam, page_size: u64, classify: impl Fn(u64) -> PageClass) -> Plan {
        let mut classes: Vec<ClassPlan> = (0..CLASSES as u8)
            .map(|class| ClassPlan {
                class,
                ..Default::default()
            })
            .collect();
        let mut p = Plan::default();
        for r in &ram.ranges {
            let mut gpa = r.gpa.div_ceil(page_size) * page_size;
            while gpa + page_size <= r.gpa_end() {
                let hva = r.hva + (gpa - r.gpa);
                let c = match classify(gpa / page_size) {
                    PageClass::Free => {
                        push(&mut p.free_ranges, hva, page_size);
                        p.skipped_free_pages += 1;
                        None
                    }
                    PageClass::Class(c) => Some(c.min(CLASS_OUTSIDE - 1)),
                    PageClass::Outside => Some(CLASS_OUTSIDE),
                };
                if let Some(c) = c {
                    let cp = &mut classes[c as usize];
                    push(&mut cp.ranges, hva, page_size);
                    cp.pages += 1;
                }
                p.guest_pages += 1;
                gpa += page_size;
            }
        }
        p.classes = classes;
        p
    }

    /// Host ranges of classes `lo..=hi`, class order kept.
    pub fn ranges_of(&self, lo: u8, hi: u8) -> Vec<Range> {
        self.classes
            .iter()
            .filter(|c| c.class >= lo && c.class <= hi)
            .flat_map(|c| c.ranges.iter().copied())
            .collect()
    }

    /// For each host page: its class, or `None` when free. For the background fetcher.
    pub fn class_of(&self, hva: u64) -> Option<u8> {
        for c in &self.classes {
            let i = c.ranges.partition_point(|r| r.start <= hva);
            if i > 0 && hva < c.ranges[i - 1].end() {
                return Some(c.class);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::ram::RamRange;

    const PS: u64 = 4096;

    /// A pc-like guest: RAM 0..16 pages and 32..48 (as if a hole sat at 16..32), HVA
    /// contiguous in the block (the hole is absent from the block).
    fn ram() -> GuestRam {
        GuestRam {
            pid: 1,
            ranges: vec![
                RamRange {
                    gpa: 0,
                    len: 16 * PS,
                    block: "pc.ram".into(),
                    block_offset: 0,
                    hva: 0x10_0000,
                },
                RamRange {
                    gpa: 32 * PS,
                    len: 16 * PS,
                    block: "pc.ram".into(),
                    block_offset: 16 * PS,
                    hva: 0x10_0000 + 16 * PS,
                },
            ],
        }
    }

    /// The guest's layout leaves out pfn 0 (firmware) and 40..42 (reserved); 11..16 and 32 are
    /// free; 1, 2 Kernel; 3 User_Data; 33 Page_Table; the rest Other.
    fn classify(pfn: u64) -> PageClass {
        match pfn {
            0 | 40 | 41 => PageClass::Outside,
            11..=15 | 32 => PageClass::Free,
            1 | 2 => PageClass::Class(0),
            3 => PageClass::Class(5),
            33 => PageClass::Class(3),
            _ => PageClass::Class(8),
        }
    }

    #[test]
    fn classes_order_skip_free_and_cover_everything() {
        let p = Plan::build(&ram(), PS, classify);
        assert_eq!(p.guest_pages, 32);
        let hva = |gpa_page: u64| {
            if gpa_page < 16 {
                0x10_0000 + gpa_page * PS
            } else {
                0x10_0000 + (gpa_page - 16) * PS
            }
        };
        assert_eq!(
            p.classes[0].ranges,
            vec![Range {
                start: hva(1),
                len: 2 * PS
            }]
        );
        assert_eq!(
            p.classes[3].ranges,
            vec![Range {
                start: hva(33),
                len: PS
            }]
        );
        assert_eq!(
            p.classes[5].ranges,
            vec![Range {
                start: hva(3),
                len: PS
            }]
        );
        assert_eq!(p.skipped_free_pages, 6);
        // Free ranges merge across the hole where the host addresses are adjacent (15 | 32).
        assert_eq!(
            p.free_ranges,
            vec![Range {
                start: hva(11),
                len: 6 * PS
            }]
        );
        assert_eq!(
            p.classes[CLASS_OUTSIDE as usize].ranges,
            vec![
                Range {
                    start: hva(0),
                    len: PS
                },
                Range {
                    start: hva(40),
                    len: 2 * PS
                }
            ]
        );
        let total: u64 = p.classes.iter().map(|c| c.pages).sum::<u64>() + p.skipped_free_pages;
        assert_eq!(total, 32);
        assert_eq!(p.classes[8].pages, 32 - 3 - 6 - 2 - 1 - 1);
        assert_eq!(p.class_of(hva(33)), Some(3));
        assert_eq!(p.class_of(hva(12)), None, "free");
        assert_eq!(p.ranges_of(0, 5).len(), 3);
        // The hole (gpa pages 16..32) is never produced: the high range continues in the block.
        assert!(p
            .classes
            .iter()
            .flat_map(|c| &c.ranges)
            .all(|r| r.start >= 0x10_0000 && r.end() <= 0x10_0000 + 32 * PS));
        assert_eq!(class_name(0), "Kernel");
        assert_eq!(class_name(9), "Outside_Layout");
    }

    #[test]
    fn without_maps_everything_is_outside() {
        let p = Plan::build(&ram(), PS, |_| PageClass::Outside);
        assert_eq!(p.classes[CLASS_OUTSIDE as usize].pages, 32);
        assert_eq!(
            p.classes[CLASS_OUTSIDE as usize].ranges,
            vec![Range {
                start: 0x10_0000,
                len: 32 * PS
            }]
        );
        assert_eq!(p.skipped_free_pages, 0);
        // Values above 8 from a classifier count as Other.
        let p = Plan::build(&ram(), PS, |_| PageClass::Class(200));
        assert_eq!(p.classes[8].pages, 32);
    }
}
