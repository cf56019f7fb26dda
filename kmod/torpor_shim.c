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
#include <linux/sched/clock.h>
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

/*
 * PRIORITY_MAP: the page flags of @pfn that decide its category, as
 * TORPOR_PF_* bits (0 when @pfn has no struct page). Read racily, the way
 * /proc/kpageflags (fs/proc/page.c) reads them: folio-level flags from the
 * head page's flags word with plain bit tests, so no VM_BUG_ON_PGFLAGS check
 * can fire on a page that is being split or freed meanwhile. For a free buddy
 * head, bits 24.. hold its order (clamped to MAX_PAGE_ORDER); for the head
 * page of a large folio (TORPOR_PF_HEAD) they hold the folio's order (clamped
 * to 20), so the caller can classify the whole folio at once.
 */
unsigned int torpor_pfn_flags(unsigned long pfn)
{
	struct page *page;
	struct folio *folio;
	unsigned long fl;
	unsigned long mapping;
	unsigned int f = TORPOR_PF_VALID;

	if (!pfn_valid(pfn))
		return 0;
	page = pfn_to_page(pfn);
	if (PageBuddy(page)) {
		unsigned long order = data_race(page_private(page));

		if (order > MAX_PAGE_ORDER)
			order = MAX_PAGE_ORDER;
		return f | TORPOR_PF_BUDDY | ((unsigned int)order << TORPOR_PF_ORDER_SHIFT);
	}
	if (test_bit(PG_reserved, &page->flags))
		f |= TORPOR_PF_RESERVED;
	if (PageTable(page))
		f |= TORPOR_PF_PGTABLE;
	folio = page_folio(page);
	fl = READ_ONCE(folio->flags);
	if (data_race(folio->page.page_type >> 24) == PGTY_slab)
		f |= TORPOR_PF_SLAB;
	if (fl & (1UL << PG_writeback))
		f |= TORPOR_PF_WRITEBACK;
	if (fl & (1UL << PG_lru))
		f |= TORPOR_PF_LRU;
	if (fl & (1UL << PG_active))
		f |= TORPOR_PF_ACTIVE;
	if (fl & (1UL << PG_locked))
		f |= TORPOR_PF_LOCKED;
	if (fl & (1UL << PG_uptodate))
		f |= TORPOR_PF_UPTODATE;
	if (&folio->page == page && (fl & (1UL << PG_head))) {
		unsigned int order = data_race(folio->_flags_1) & 0xff;

		f |= TORPOR_PF_HEAD | ((order > 20 ? 20 : order) << TORPOR_PF_ORDER_SHIFT);
	}
	mapping = (unsigned long)READ_ONCE(folio->mapping);
	if (mapping & PAGE_MAPPING_ANON)
		f |= TORPOR_PF_ANON;
	else if (mapping && !(f & TORPOR_PF_SLAB))
		f |= TORPOR_PF_FILE;
	return f;
}

/*
 * PRIORITY_MAP: take an mm_users reference (get_task_mm) on every user process
 * that is running now or was scheduled within @window_ns, skipping the first
 * @skip such processes; store at most @max of them in @mms. *nr_procs counts
 * the user processes seen. for_each_process/for_each_thread and
 * rcu_read_lock are macros / static inline. "Scheduled" is the latest of
 * sched_info.last_arrival (CONFIG_SCHED_INFO, when the task last got a CPU)
 * and se.exec_start (updated while it runs), both on the runqueue clock,
 * which local_clock() reads; a task on a CPU right now counts too.
 */
int torpor_active_mms(u64 window_ns, unsigned int skip, struct mm_struct **mms,
		      unsigned int max, unsigned int *nr_procs)
{
	struct task_struct *p, *t;
	u64 now = local_clock();
	u64 cutoff = now > window_ns ? now - window_ns : 0;
	unsigned int n = 0, seen = 0, active = 0;

	rcu_read_lock();
	for_each_process(p) {
		bool hit = false;

		if (p->flags & PF_KTHREAD)
			continue;
		seen++;
		for_each_thread(p, t) {
			u64 last = READ_ONCE(t->se.exec_start);
#ifdef CONFIG_SCHED_INFO
			u64 arr = READ_ONCE(t->sched_info.last_arrival);

			if (arr > last)
				last = arr;
#endif
			if (READ_ONCE(t->on_cpu) || last >= cutoff) {
				hit = true;
				break;
			}
		}
		if (!hit)
			continue;
		if (active++ < skip)
			continue;
		if (n >= max)
			continue;
		/* task_lock is a spinlock: allowed under rcu_read_lock. */
		mms[n] = get_task_mm(p);
		if (mms[n])
			n++;
	}
	rcu_read_unlock();
	*nr_procs = seen;
	return n;
}

/*
 * PRIORITY_MAP: PFNs of the present pages mapped in [@addr, @end) of @mm,
 * where [@addr, @end) lies inside one VMA and one PMD. The caller holds the
 * mmap read lock, so the upper page-table levels of a VMA's range cannot be
 * freed. The PTE table is read the way __pte_offset_map() (not exported)
 * does: under rcu_read_lock, which holds off pte_free_defer() after a THP
 * collapse, with a lockless snapshot of the PMD; no page-table lock, values
 * may be stale (a snapshot). Nothing is written to the page tables. Returns
 * the number of PFNs stored in @pfns (at most PTRS_PER_PTE), and in *next the
 * address to continue from (the next PMD, or the end of an empty upper level).
 */
int torpor_scan_pmd(struct mm_struct *mm, unsigned long addr, unsigned long end,
		    unsigned long *pfns, unsigned long *next)
{
	pgd_t *pgd;
	p4d_t *p4d;
	pud_t *pud, pudval;
	pmd_t *pmd, pmdval;
	pte_t *pte;
	unsigned long e;
	int n = 0;

	e = pgd_addr_end(addr, end);
	pgd = pgd_offset(mm, addr);
	if (pgd_none(READ_ONCE(*pgd)) || pgd_bad(READ_ONCE(*pgd)))
		goto skip;
	e = p4d_addr_end(addr, end);
	p4d = p4d_offset(pgd, addr);
	if (p4d_none(READ_ONCE(*p4d)) || p4d_bad(READ_ONCE(*p4d)))
		goto skip;
	e = pud_addr_end(addr, end);
	pud = pud_offset(p4d, addr);
	pudval = READ_ONCE(*pud);
	if (pud_none(pudval) || pud_leaf(pudval) || pud_bad(pudval))
		goto skip;
	e = pmd_addr_end(addr, end);
	pmd = pmd_offset(pud, addr);
	rcu_read_lock();
	pmdval = pmdp_get_lockless(pmd);
	if (pmd_none(pmdval) || !pmd_present(pmdval)) {
		/* empty, or a PMD migration entry */
	} else if (pmd_leaf(pmdval)) {
		unsigned long pfn = pmd_pfn(pmdval) + ((addr & ~PMD_MASK) >> PAGE_SHIFT);

		for (; addr < e; addr += PAGE_SIZE)
			pfns[n++] = pfn++;
	} else if (!pmd_bad(pmdval)) {
		pte = pte_offset_kernel(&pmdval, addr);
		for (; addr < e; addr += PAGE_SIZE, pte++) {
			pte_t v = ptep_get(pte);

			if (pte_present(v))
				pfns[n++] = pte_pfn(v);
		}
	}
	rcu_read_unlock();
skip:
	*next = e;
	return n;
}

/* cond_resched() is a macro. */
void torpor_cond_resched(void)
{
	cond_resched();
}
