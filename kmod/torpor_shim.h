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

#endif
