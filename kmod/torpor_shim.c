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
#include <linux/mmap_lock.h>
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
