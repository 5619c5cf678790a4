//! ClientIP session affinity (`sessionAffinity: ClientIP`). Two maps:
//!
//! - `LB4_AFFINITY` (LRU, written by the datapath): per (frontend, client
//!   address), the backend the client's last new flow went to and when.
//!   A new flow within the frontend's timeout of that follows it, as
//!   kube-proxy's `recent` match (iptables) or affinity set (nftables).
//! - `LB4_AFF_MEMBERS` (written by the agent, for affinity frontends only):
//!   the backends a frontend may send new flows to now. Backend ids are
//!   shared by every frontend that uses an endpoint and slots move when a
//!   backend goes, so neither "the id still exists" nor "slot k still holds
//!   it" says whether this frontend may still choose it; one lookup of
//!   (frontend, backend) here does.

use crate::user_pod;

/// Key of `LB4_AFFINITY`. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKeyV4 {
    /// The frontend (`ServiceValue::frontend_id`; an in-cluster entry has
    /// its own). Host byte order.
    pub frontend_id: u32,
    /// The client's address (`NODE_CLIENT` for the node's own sockets).
    /// Network byte order.
    pub client: [u8; 4],
}
const _: () = assert!(size_of::<AffinityKeyV4>() == 8);

/// Key of `LB6_AFFINITY`: `AffinityKeyV4` with a 16-byte client address.
/// Its values are `AffinityValueV4` (ids and times, of no family). 20
/// bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKeyV6 {
    pub frontend_id: u32,
    /// Network byte order.
    pub client: [u8; 16],
}
const _: () = assert!(size_of::<AffinityKeyV6>() == 20);

/// Value of `LB4_AFFINITY` and `LB6_AFFINITY`. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValueV4 {
    /// The backend the client's last new flow went to. Host byte order.
    pub backend_id: u32,
    /// When that flow started: seconds of the kernel's coarse monotonic
    /// clock (`bpf_ktime_get_coarse_ns`, userspace `CLOCK_MONOTONIC_COARSE`).
    pub last_used_s: u32,
}
const _: () = assert!(size_of::<AffinityValueV4>() == 8);

/// Key of `LB4_AFF_MEMBERS`: a backend an affinity frontend may choose for
/// new flows. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityMemberKeyV4 {
    /// Host byte order.
    pub frontend_id: u32,
    /// Host byte order.
    pub backend_id: u32,
}
const _: () = assert!(size_of::<AffinityMemberKeyV4>() == 8);

/// Value of `LB4_AFF_MEMBERS` entries: the backend is a member.
pub const MEMBER: u8 = 1;

/// The client address the socket-level hooks record the node's own
/// processes under: at connect time the source address is not chosen yet,
/// and every process of the node counts as one client, as kube-proxy sees
/// the node's own traffic (one source address per route). No packet has
/// source 0.0.0.0 on a path the datapath balances, so it never meets a
/// real client's entry.
pub const NODE_CLIENT: [u8; 4] = [0; 4];

impl AffinityKeyV4 {
    pub const fn new(frontend_id: u32, client: [u8; 4]) -> Self {
        Self { frontend_id, client }
    }
}

impl AffinityValueV4 {
    /// Whether a client's last new flow is recent enough for the next to
    /// follow it: less than `timeout_s` seconds ago, as nftables' affinity
    /// element expires `timeout_s` after it was last refreshed. A clock
    /// read before the entry was written (another CPU's coarse clock a tick
    /// behind) counts as age 0.
    pub const fn is_fresh(&self, now_s: u32, timeout_s: u32) -> bool {
        let age = now_s.saturating_sub(self.last_used_s);
        age < timeout_s
    }
}

user_pod!(AffinityKeyV4, AffinityValueV4, AffinityMemberKeyV4, AffinityKeyV6);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_fresh_for_less_than_the_timeout() {
        let entry = AffinityValueV4 { backend_id: 1, last_used_s: 100 };
        assert!(entry.is_fresh(100, 10));
        assert!(entry.is_fresh(109, 10));
        assert!(!entry.is_fresh(110, 10));
        assert!(!entry.is_fresh(5000, 10));
    }

    #[test]
    fn a_clock_behind_the_entry_counts_as_now() {
        let entry = AffinityValueV4 { backend_id: 1, last_used_s: 100 };
        assert!(entry.is_fresh(99, 1));
    }
}
