/* SPDX-License-Identifier: GPL-2.0 */
/* Interface between the C shim and the Rust module (torpor_rs.rs). */
#ifndef TORPOR_SHIM_H
#define TORPOR_SHIM_H

#include <linux/types.h>

/* Implemented in Rust. */
long torpor_rust_ioctl(unsigned int cmd, unsigned long arg);

/* Implemented in torpor_shim.c, called from Rust. */
int torpor_shim_register(void);
void torpor_shim_unregister(void);

/* Wrappers for static-inline helpers Rust cannot call. */
struct mm_struct;
int torpor_mmap_read_lock_killable(struct mm_struct *mm);
void torpor_mmap_read_unlock(struct mm_struct *mm);
bool torpor_fatal_signal_pending(void);
struct zone;
int torpor_pfn_buddy_order(unsigned long pfn);
unsigned long torpor_zone_lock(struct zone *zone);
void torpor_zone_unlock(struct zone *zone, unsigned long flags);

/* PRIORITY_MAP helpers (torpor_shim.c). */
#define TORPOR_PF_VALID		(1u << 0)
#define TORPOR_PF_BUDDY		(1u << 1)
#define TORPOR_PF_RESERVED	(1u << 2)
#define TORPOR_PF_SLAB		(1u << 3)
#define TORPOR_PF_PGTABLE	(1u << 4)
#define TORPOR_PF_WRITEBACK	(1u << 5)
#define TORPOR_PF_LRU		(1u << 6)
#define TORPOR_PF_ACTIVE	(1u << 7)
#define TORPOR_PF_ANON		(1u << 8)
#define TORPOR_PF_FILE		(1u << 9)
#define TORPOR_PF_LOCKED	(1u << 10)
#define TORPOR_PF_UPTODATE	(1u << 11)
#define TORPOR_PF_HEAD		(1u << 12)
#define TORPOR_PF_ORDER_SHIFT	24
unsigned int torpor_pfn_flags(unsigned long pfn);
int torpor_active_mms(u64 window_ns, unsigned int skip, struct mm_struct **mms,
		      unsigned int max, unsigned int *nr_procs);
int torpor_scan_pmd(struct mm_struct *mm, unsigned long addr, unsigned long end,
		    unsigned long *pfns, unsigned long *next);
void torpor_cond_resched(void);

#endif
