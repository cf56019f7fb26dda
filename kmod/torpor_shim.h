/* SPDX-License-Identifier: GPL-2.0 */
/* Interface between the C shim and the Rust module (torpor_rs.rs). */
#ifndef TORPOR_SHIM_H
#define TORPOR_SHIM_H

#include <linux/types.h>
#include <asm/pgtable_types.h>

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
unsigned long torpor_zone_lock(struct zone *zone);
void torpor_zone_unlock(struct zone *zone, unsigned long flags);
void torpor_cond_resched(void);

/* Page flags and page-table walk (FREE_BITMAP / PRIORITY_MAP; logic in src/pgwalk.rs). */
struct page;
struct folio;
struct task_struct;
struct page *torpor_pfn_to_page(unsigned long pfn);
struct folio *torpor_page_folio(struct page *page);
void torpor_rcu_read_lock(void);
void torpor_rcu_read_unlock(void);
struct task_struct *torpor_next_process(struct task_struct *p);
struct task_struct *torpor_next_thread(struct task_struct *p, struct task_struct *t);
pgd_t *torpor_pgd_offset(struct mm_struct *mm, unsigned long addr);
p4d_t *torpor_p4d_offset(pgd_t *pgd, unsigned long addr);
pud_t *torpor_pud_offset(p4d_t *p4d, unsigned long addr);
pmdval_t torpor_pmd_get_lockless(pud_t *pud, unsigned long addr);
bool torpor_pmd_none_or_absent(pmdval_t v);
bool torpor_pmd_leaf(pmdval_t v);
bool torpor_pmd_bad(pmdval_t v);
unsigned long torpor_pmd_pfn(pmdval_t v);
pte_t *torpor_pte_offset(pmdval_t v, unsigned long addr);
long torpor_pte_pfn(pte_t *pte);

#endif
