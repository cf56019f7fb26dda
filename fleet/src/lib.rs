//! torpor-fleet: many hosts under one placement controller, coordinated through etcd only,
//! with HAProxy as the request router (the platform of *Agile application placement in hosting
//! platforms*, WWW 2009, section 5). See `docs/fleet.md`.
//!
//! - [`schema`]: the etcd key layout and value schema (version 1), one definition.
//! - [`measure`]: a host share's CPU, memory and paging figures.
//! - [`torpord`]: torpord's typed API from async code.
//! - [`agent`]: the host agent (`torpor-fleet host`).
//! - [`policy`]: the placement policy and the router's wanted state (pure).
//! - [`haproxy`]: HAProxy's runtime API.
//! - [`controller`]: the placement controller (`torpor-fleet controller`), leader-elected.
//! - [`obs`]: the controller's events and Prometheus metrics.

pub mod agent;
pub mod controller;
pub mod haproxy;
pub mod measure;
pub mod obs;
pub mod policy;
pub mod schema;
pub mod torpord;
