// SPDX-License-Identifier: GPL-2.0
/*
 * torpor C shim: registration glue and static-inline wrappers only. The 6.12
 * `kernel` crate has no
 * miscdevice abstraction, so the misc device and its file_operations live
 * here and every ioctl is forwarded to Rust (torpor_rust_ioctl) unchanged.
 */
#include <linux/fs.h>
#include <linux/types.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/mmzone.h>
#include <linux/page-flags.h>
#include <linux/spinlock.h>
#include <linux/module.h>
#include <linux/sched/signal.h>

#include "torpor_shim.h"


static long torpor_unlocked_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	return torpor_rust_ioctl(cmd, arg);
}

static const struct file_operations torpor_fops = {
	.owner = THIS_MODULE,
	.open = nonseekable_open,
	.llseek = noop_llseek,
	.unlocked_ioctl = torpor_unlocked_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice torpor_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "torpor",
	.fops = &torpor_fops,
	.mode = 0600,
};

int torpor_shim_register(void)
{
	return misc_register(&torpor_misc);
}

void torpor_shim_unregister(void)
{
	misc_deregister(&torpor_misc);
}

/* mmap_read_lock_killable() and friends are static inline (mmap_lock.h). */
int torpor_mmap_read_lock_killable(struct mm_struct *mm)
{
	return mmap_read_lock_killable(mm);
}

void torpor_mmap_read_unlock(struct mm_struct *mm)
{
	mmap_read_unlock(mm);
}

/* fatal_signal_pending() is static inline (sched/signal.h). */
bool torpor_fatal_signal_pending(void)
{
	return fatal_signal_pending(current);
}

/*
 * Buddy order of the free block starting at @pfn, or -1 when @pfn has no
 * struct page or is not the head of a free buddy block. pfn_valid,
 * pfn_to_page, PageBuddy and page_private are static inline / macros. The
 * caller holds the zone lock, so the order is stable; it is clamped anyway.
 */
int torpor_pfn_buddy_order(unsigned long pfn)
{
	struct page *page;
	unsigned long order;

	if (!pfn_valid(pfn))
		return -1;
	page = pfn_to_page(pfn);
	if (!PageBuddy(page))
		return -1;
	order = page_private(page);
	return order > MAX_PAGE_ORDER ? MAX_PAGE_ORDER : (int)order;
}

/* spin_lock_irqsave/spin_unlock_irqrestore on zone->lock are macros. */
unsigned long torpor_zone_lock(struct zone *zone)
{
	unsigned long flags;

	spin_lock_irqsave(&zone->lock, flags);
	return flags;
}

void torpor_zone_unlock(struct zone *zone, unsigned long flags)
{
	spin_unlock_irqrestore(&zone->lock, flags);
}
