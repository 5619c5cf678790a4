//! UDP flows to an endpoint that left their Service (kube-proxy:
//! `pkg/proxy/conntrack/cleanup.go`, `CleanStaleEntries`). UDP has no
//! connection to end: a client sending from a fixed port (a resolver)
//! would keep its tracked backend for as long as it sends. So after a
//! sync, every UDP flow through a frontend that still lists endpoints but
//! whose backend is not one of them is removed, both its entries; the
//! next datagram is balanced afresh. A frontend without endpoints keeps
//! its flows (nothing better to send them to), as does TCP: established
//! connections end on their own.
//!
//! The rule is on the state, not on a change: an agent that was down
//! while an endpoint left still cleans up at its first sync.

use std::collections::BTreeSet;

use lb_common::proto;

use super::flows::{CtEntry as _, FlowKey};

/// (frontend id, backend id).
pub type Pair = (u32, u32);

/// The endpoints each UDP frontend lists, as (frontend id, backend id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listed {
    pairs: BTreeSet<Pair>,
    frontends: BTreeSet<u32>,
}

impl Listed {
    pub fn new(pairs: BTreeSet<Pair>) -> Self {
        let frontends = pairs.iter().map(|(frontend, _)| *frontend).collect();
        Self { pairs, frontends }
    }

    /// Whether this entry (of either family: the ids are shared) belongs
    /// to a UDP flow to be removed.
    pub fn is_stale<K: FlowKey>(&self, key: &K, value: &K::Value) -> bool {
        key.proto() == proto::UDP
            && self.frontends.contains(&value.frontend_id())
            && !self.pairs.contains(&(value.frontend_id(), value.backend_id()))
    }
}

/// Decides after each sync whether conntrack needs a scan: at the first
/// sync, and whenever a frontend stopped listing an endpoint. Other syncs
/// (most of them) cost nothing.
#[derive(Debug, Default)]
pub struct Trigger {
    last: Option<BTreeSet<Pair>>,
}

impl Trigger {
    /// `Some`: scan conntrack with this.
    pub fn after_sync(&mut self, pairs: BTreeSet<Pair>) -> Option<Listed> {
        let lost = match &self.last {
            None => true,
            Some(last) => last.difference(&pairs).next().is_some(),
        };
        let listed = lost.then(|| Listed::new(pairs.clone()));
        self.last = Some(pairs);
        listed
    }
}

#[cfg(test)]
mod tests {
    use lb_common::conntrack::{CtKeyV4, CtKeyV6, CtValueV4, CtValueV6};

    use super::*;

    fn entry(proto: u8, frontend_id: u32, backend_id: u32) -> (CtKeyV4, CtValueV4) {
        (CtKeyV4 { proto, ..CtKeyV4::default() }, CtValueV4 { frontend_id, backend_id, ..CtValueV4::default() })
    }

    fn stale(listed: &Listed, (key, value): (CtKeyV4, CtValueV4)) -> bool {
        listed.is_stale(&key, &value)
    }

    #[test]
    fn a_udp_flow_to_an_endpoint_its_frontend_no_longer_lists_is_stale() {
        // Backend 7 still serves frontend 2: it keeps its id, but
        // frontend 1's flows to it must go.
        let listed = Listed::new([(1, 5), (2, 7)].into());
        assert!(stale(&listed, entry(proto::UDP, 1, 7)));
        assert!(!stale(&listed, entry(proto::UDP, 1, 5)));
        assert!(!stale(&listed, entry(proto::UDP, 2, 7)));
    }

    #[test]
    fn tcp_and_frontends_without_endpoints_keep_their_flows() {
        let listed = Listed::new([(1, 5)].into());
        assert!(!stale(&listed, entry(proto::TCP, 1, 7)));
        assert!(!stale(&listed, entry(proto::UDP, 3, 7)), "frontend 3 lists nothing");
    }

    #[test]
    fn a_scan_follows_the_first_sync_and_every_lost_endpoint_only() {
        let mut trigger = Trigger::default();
        assert!(trigger.after_sync([(1, 5)].into()).is_some(), "first sync");
        assert!(trigger.after_sync([(1, 5), (1, 6)].into()).is_none(), "an endpoint added");
        assert!(trigger.after_sync([(1, 5), (1, 6)].into()).is_none(), "nothing changed");
        assert_eq!(trigger.after_sync([(1, 6)].into()), Some(Listed::new([(1, 6)].into())));
    }

    #[test]
    fn ipv6_flows_are_judged_by_the_same_shared_ids() {
        let listed = Listed::new([(1, 5)].into());
        let entry = |backend_id| {
            (
                CtKeyV6 { proto: proto::UDP, ..CtKeyV6::default() },
                CtValueV6 { frontend_id: 1, backend_id, ..CtValueV6::default() },
            )
        };
        let ((key, stale), (_, listed_backend)) = (entry(7), entry(5));
        assert!(listed.is_stale(&key, &stale));
        assert!(!listed.is_stale(&key, &listed_backend));
    }
}
