//! Guest enlightenment (page-priority map, free-page bitmap, wire protocol).
//! Not implemented yet: see the open guest-enlightenment issue.
#![deny(unsafe_op_in_unsafe_fn)]
