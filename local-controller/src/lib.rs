//! torpord: policy (when to freeze, purge, prefetch, thaw) over the procswap mechanism.
//!
//! - [`config`]: the TOML configuration.
//! - [`controller`]: app state machine (Start/Stop), standby pool, reserve, restart adoption,
//!   overload monitoring, metrics.
//! - [`guestmaps`]: the guest agent's maps for VM apps (guest-enlight protocol).
//! - [`api`]: HTTP/1.1 + JSON on a unix socket (SO_PEERCRED-checked).
//! - [`client`]: a blocking client for that socket (CLI, tests).
//! - [`overload`]: the sustained-overload (Overdriver) and hotspot (Sandpiper) detectors.
//! - [`probe`]: readiness probes; [`notify`]: sd_notify.

pub mod api;
pub mod client;
pub mod config;
pub mod controller;
pub mod guestmaps;
pub mod notify;
pub mod overload;
pub mod probe;
