//! Page-priority categories of enlightened post-copy (*Liberating Virtual Machines from Physical Boundaries through Execution Knowledge*, ch. 5), in priority order.

use serde::Serialize;

/// One byte per PFN in the priority map. **Lower value = higher priority**: the host
/// prefetches category 0 (Kernel) first and category 8 (Other) last. A page in several
/// categories takes the highest priority, i.e. the minimum value ([`Category::merge`]).
/// Values 9..=255 are invalid on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[repr(u8)]
pub enum Category {
    /// Kernel image and reserved memory (portable: `KPF_RESERVED`, the zero page).
    Kernel = 0,
    /// Allocated for kernel use (portable: `KPF_SLAB`, and flag-less non-free pages).
    KernelAllocated = 1,
    /// Used for I/O (portable: pages under writeback, `KPF_WRITEBACK`).
    MemoryIo = 2,
    /// Page tables: every page-table page, user or kernel, in both sources (the module's
    /// page-type test and the portable `KPF_PGTABLE`); neither tells the owning process.
    PageTable = 3,
    /// Executable page mapped by an active process.
    UserCode = 4,
    /// Non-executable page mapped by an active process.
    UserData = 5,
    /// Active file cache (`KPF_LRU`/`KPF_MMAP` file page with `KPF_ACTIVE`).
    FileActive = 6,
    /// Inactive file cache.
    FileInactive = 7,
    /// Everything else: free pages, anonymous memory of inactive processes, holes.
    Other = 8,
}

impl Category {
    pub const COUNT: usize = 9;
    pub const ALL: [Category; 9] = [
        Category::Kernel,
        Category::KernelAllocated,
        Category::MemoryIo,
        Category::PageTable,
        Category::UserCode,
        Category::UserData,
        Category::FileActive,
        Category::FileInactive,
        Category::Other,
    ];

    pub fn from_u8(v: u8) -> Option<Category> {
        Self::ALL.get(v as usize).copied()
    }

    /// The higher-priority (lower-valued) of two categories.
    pub fn merge(self, other: Category) -> Category {
        self.min(other)
    }

    /// The thesis' name for the category.
    pub fn name(self) -> &'static str {
        match self {
            Category::Kernel => "Kernel",
            Category::KernelAllocated => "Kernel_Allocated",
            Category::MemoryIo => "Memory_I/O",
            Category::PageTable => "Page_Table",
            Category::UserCode => "User_Code",
            Category::UserData => "User_Data",
            Category::FileActive => "File_Active",
            Category::FileInactive => "File_Inactive",
            Category::Other => "Other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_merge() {
        for (i, c) in Category::ALL.iter().enumerate() {
            assert_eq!(*c as u8 as usize, i);
            assert_eq!(Category::from_u8(i as u8), Some(*c));
        }
        assert_eq!(Category::from_u8(9), None);
        assert_eq!(
            Category::UserData.merge(Category::UserCode),
            Category::UserCode
        );
        assert_eq!(Category::Other.merge(Category::Kernel), Category::Kernel);
        assert_eq!(
            Category::FileActive.merge(Category::UserData),
            Category::UserData
        );
    }
}
