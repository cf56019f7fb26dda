//! torpord: policy (when to freeze, purge, prefetch, thaw) over the procswap mechanism.
#![deny(unsafe_op_in_unsafe_fn)]
