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
#include <linux/sched/mm.h>
#include <linux/pgtable.h>
#include <linux/rcupdate.h>

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
 * The struct page of @pfn, or NULL when @pfn has none: pfn_valid (mem_section
 * lookup) and pfn_to_page (vmemmap) are static inline.
 */
struct page *torpor_pfn_to_page(unsigned long pfn)
{
	return pfn_valid(pfn) ? pfn_to_page(pfn) : NULL;
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

/*
 * PRIORITY_MAP helpers: each is one static inline or macro that bindgen cannot
 * give Rust; the logic that uses them is in src/pgwalk.rs.
 */

/* page_folio() is a macro (_compound_head, with the fake-head check). */
struct folio *torpor_page_folio(struct page *page)
{
	return page_folio(page);
}

/* rcu_read_lock()/rcu_read_unlock() are static inline; the kernel crate has no RCU guard in 6.12. */
void torpor_rcu_read_lock(void)
{
	rcu_read_lock();
}

void torpor_rcu_read_unlock(void)
{
	rcu_read_unlock();
}

/*
 * One step of for_each_process() (next_task() is a macro over list_entry_rcu):
 * the process after @p, NULL after the last. The caller holds rcu_read_lock.
 */
struct task_struct *torpor_next_process(struct task_struct *p)
{
	p = next_task(p);
	return p == &init_task ? NULL : p;
}

/*
 * One step of for_each_thread(@p, t) (a list_for_each_entry_rcu macro): the
 * thread after @t in @p's thread group, the first one when @t is NULL, NULL
 * after the last. The caller holds rcu_read_lock.
 */
struct task_struct *torpor_next_thread(struct task_struct *p, struct task_struct *t)
{
	struct list_head *h = &p->signal->thread_head;
	struct list_head *n = READ_ONCE((t ? &t->thread_node : h)->next);

	return n == h ? NULL : list_entry(n, struct task_struct, thread_node);
}

/*
 * Page-table levels: pgd_offset/p4d_offset/pud_offset/pmd_offset (5-level
 * folding decided at boot), pXd_none/pXd_bad/pud_leaf are static inline. Each
 * returns the entry for @addr, or NULL when the level above it is empty or
 * bad (the entry is read once, READ_ONCE). The caller holds the mmap lock.
 */
pgd_t *torpor_pgd_offset(struct mm_struct *mm, unsigned long addr)
{
	pgd_t *pgd = pgd_offset(mm, addr), v = READ_ONCE(*pgd);

	return pgd_none(v) || pgd_bad(v) ? NULL : pgd;
}

p4d_t *torpor_p4d_offset(pgd_t *pgd, unsigned long addr)
{
	p4d_t *p4d = p4d_offset(pgd, addr), v = READ_ONCE(*p4d);

	return p4d_none(v) || p4d_bad(v) ? NULL : p4d;
}

pud_t *torpor_pud_offset(p4d_t *p4d, unsigned long addr)
{
	pud_t *pud = pud_offset(p4d, addr), v = READ_ONCE(*pud);

	return pud_none(v) || pud_leaf(v) || pud_bad(v) ? NULL : pud;
}

/* pmd_offset and pmdp_get_lockless are static inline; returns the PMD snapshot. */
pmdval_t torpor_pmd_get_lockless(pud_t *pud, unsigned long addr)
{
	return pmd_val(pmdp_get_lockless(pmd_offset(pud, addr)));
}

/* pmd_none/pmd_present/pmd_leaf/pmd_bad/pmd_pfn are static inline. */
bool torpor_pmd_none_or_absent(pmdval_t v)
{
	return pmd_none(__pmd(v)) || !pmd_present(__pmd(v));
}

bool torpor_pmd_leaf(pmdval_t v)
{
	return pmd_leaf(__pmd(v));
}

bool torpor_pmd_bad(pmdval_t v)
{
	return pmd_bad(__pmd(v));
}

unsigned long torpor_pmd_pfn(pmdval_t v)
{
	return pmd_pfn(__pmd(v));
}

/* pte_offset_kernel is static inline: the PTE for @addr in the table @v points to. */
pte_t *torpor_pte_offset(pmdval_t v, unsigned long addr)
{
	pmd_t pmd = __pmd(v);

	return pte_offset_kernel(&pmd, addr);
}

/* ptep_get/pte_present/pte_pfn are static inline: the PFN a present PTE maps, else -1. */
long torpor_pte_pfn(pte_t *pte)
{
	pte_t v = ptep_get(pte);

	return pte_present(v) ? (long)pte_pfn(v) : -1;
}

/* cond_resched() is a macro. */
void torpor_cond_resched(void)
{
	cond_resched();
}
