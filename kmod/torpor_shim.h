/* SPDX-License-Identifier: GPL-2.0 */
/* Interface between the C shim and the Rust module (torpor_rs.rs). */
#ifndef TORPOR_SHIM_H
#define TORPOR_SHIM_H

/* Implemented in Rust. */
long torpor_rust_ioctl(unsigned int cmd, unsigned long arg);

/* Implemented in torpor_shim.c, called from Rust. */
int torpor_shim_register(void);
void torpor_shim_unregister(void);

#endif
