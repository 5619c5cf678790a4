//! The route an established flow keeps on each of its entries
//! (`lb_common::conntrack::RouteCache`), as `lbctl conntrack` shows it:
//! only while it is current, that is kept under the route epoch the
//! datapath uses now. A stale or absent one means the flow's next packet
//! looks its route up.

use lb_common::conntrack::RouteCache;

/// A current kept route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeptRoute {
    /// The stack decides (a local destination, no route, forwarding off).
    Stack,
    /// Out of interface `ifindex` to the next hop at `next_hop`.
    Out { ifindex: u32, next_hop: [u8; 6] },
}

/// The route kept in `cache`, if it was kept under `epoch`, the current
/// one (0: no agent has written one, nothing is used).
pub fn current(cache: &RouteCache, epoch: u32) -> Option<KeptRoute> {
    if epoch == 0 || cache.epoch != epoch {
        return None;
    }
    Some(match cache.ifindex {
        0 => KeptRoute::Stack,
        ifindex => KeptRoute::Out { ifindex, next_hop: cache.dmac },
    })
}

impl KeptRoute {
    /// "stack", or "out IFACE to MAC", the interface named by `name_of`
    /// when it can.
    pub fn describe(&self, name_of: impl Fn(u32) -> Option<String>) -> String {
        match *self {
            KeptRoute::Stack => "stack".to_owned(),
            KeptRoute::Out { ifindex, next_hop } => {
                let interface = name_of(ifindex).unwrap_or_else(|| format!("if{ifindex}"));
                let mac = next_hop.map(|b| format!("{b:02x}")).join(":");
                format!("out {interface} to {mac}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEPT: RouteCache = RouteCache {
        epoch: 7,
        ingress_ifindex: 2,
        ifindex: 3,
        dmac: [2, 0, 0, 0, 0, 0x14],
        smac: [2, 0, 0, 0, 0, 0x0a],
        fits_len: 1500,
        backend_port: 8080,
        backend_address: [10, 244, 9, 2],
    };

    #[test]
    fn only_a_route_kept_under_the_current_epoch_is_shown() {
        assert_eq!(current(&KEPT, 7), Some(KeptRoute::Out { ifindex: 3, next_hop: [2, 0, 0, 0, 0, 0x14] }));
        assert_eq!(current(&KEPT, 8), None, "stale: looked up again");
        assert_eq!(current(&RouteCache::default(), 0), None, "no agent, nothing used");
        assert_eq!(current(&RouteCache { ifindex: 0, ..KEPT }, 7), Some(KeptRoute::Stack));
    }

    #[test]
    fn a_route_names_its_interface_and_next_hop() {
        let out = current(&KEPT, 7).unwrap();
        assert_eq!(out.describe(|i| (i == 3).then(|| "eth1".to_owned())), "out eth1 to 02:00:00:00:00:14");
        assert_eq!(out.describe(|_| None), "out if3 to 02:00:00:00:00:14");
        assert_eq!(KeptRoute::Stack.describe(|_| None), "stack");
    }
}
