//! The conntrack lifecycle in the agent. The datapath only creates
//! entries and records on them when they were last used and the TCP state
//! (`lb_common::conntrack::observe`); everything that removes them is here:
//! the periodic garbage collection of flows past their timeout, and the
//! purge of UDP flows whose endpoint left their Service.
//!
//! Pure decisions (`expiry`, `flows`, `stale_udp`) are apart from the
//! kernel I/O (`sweep`, `clock`) and the thread that runs it (`worker`).

pub mod clock;
pub mod expiry;
pub mod flows;
pub mod kept_route;
pub mod metrics;
pub mod stale_udp;
pub mod sweep;
pub mod worker;
