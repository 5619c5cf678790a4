//! The node's addresses, followed while the agent runs. NodePorts are
//! served on every address of the node (or those inside
//! `--nodeport-addresses`), so an address added later must start serving
//! and a removed one must stop, without a restart.
//!
//! Both families are followed: a dual-stack node serves its IPv6 NodePorts
//! on its IPv6 addresses. Loopback never serves NodePorts (as kube-proxy's
//! nftables mode), nor does an IPv6 link-local address (as kube-proxy's
//! IPVS mode): it means something only with the interface it is on, and a
//! frontend is keyed by address alone.
//!
//! The current set comes from an rtnetlink address dump, changes from the
//! kernel's address notifications (RTNLGRP_IPV4_IFADDR and
//! RTNLGRP_IPV6_IFADDR), subscribed before
//! the dump so nothing added in between is missed. The same address may
//! sit on several interfaces (a pod gateway on every pod veth): it counts
//! until the last one goes. When the kernel drops notifications (the
//! socket's buffer was full), the addresses are listed again.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::IpNet;
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage},
    },
};
use tokio::sync::watch;
use tracing::{info, warn};

/// The node's addresses by the interfaces that hold them (pure: fed with
/// dump entries and notifications).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AddressSet {
    holders: BTreeMap<IpAddr, BTreeSet<u32>>,
}

impl AddressSet {
    /// `address` is on interface `index`. True when the set changed.
    pub fn add(&mut self, address: IpAddr, index: u32) -> bool {
        let fresh = !self.holders.contains_key(&address);
        self.holders.entry(address).or_default().insert(index);
        fresh
    }

    /// `address` left interface `index`. True when the set changed.
    pub fn remove(&mut self, address: IpAddr, index: u32) -> bool {
        let Some(holders) = self.holders.get_mut(&address) else {
            return false;
        };
        holders.remove(&index);
        if !holders.is_empty() {
            return false;
        }
        self.holders.remove(&address);
        true
    }

    /// The addresses NodePorts are served on: neither loopback nor IPv6
    /// link-local (see the module comment), and only those inside `filter`
    /// when it is not empty (so a filter of IPv4 CIDRs only serves no IPv6
    /// NodePorts, as kube-proxy's IPv6 proxier finds none of its family).
    pub fn node_port_addresses(&self, filter: &[IpNet]) -> Vec<IpAddr> {
        self.holders
            .keys()
            .filter(|ip| !ip.is_loopback() && !is_link_local_v6(ip))
            .filter(|ip| filter.is_empty() || filter.iter().any(|net| net.contains(*ip)))
            .copied()
            .collect()
    }
}

/// fe80::/10.
fn is_link_local_v6(address: &IpAddr) -> bool {
    const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0);
    matches!(address, IpAddr::V6(ip) if ip.segments()[0] & 0xffc0 == LINK_LOCAL.segments()[0])
}

/// The local address and interface of an address message.
fn address_of(message: &AddressMessage) -> Option<(IpAddr, u32)> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's
    // on point-to-point links, and the same as IFA_LOCAL elsewhere (IPv6
    // messages carry IFA_ADDRESS alone, except on point-to-point links).
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    local.or(address).map(|ip| (ip, message.header.index))
}

/// Lists the node's addresses and follows them; the receiver always holds
/// the current NodePort addresses. Acts on the calling thread's network
/// namespace; must run inside a tokio runtime.
pub async fn follow(filter: Vec<IpNet>) -> anyhow::Result<watch::Receiver<Vec<IpAddr>>> {
    let groups = [MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv6Ifaddr];
    let (connection, handle, mut messages) =
        rtnetlink::new_multicast_connection(&groups).context("subscribing to address notifications")?;
    tokio::spawn(connection);
    let mut set = list(&handle).await?;
    let (sender, receiver) = watch::channel(set.node_port_addresses(&filter));
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let changed = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => {
                    address_of(&m).is_some_and(|(ip, index)| set.add(ip, index))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => {
                    address_of(&m).is_some_and(|(ip, index)| set.remove(ip, index))
                }
                NetlinkPayload::Overrun(_) => {
                    warn!("address notifications were lost (socket buffer full): listing addresses again");
                    match list(&handle).await {
                        Ok(listed) => std::mem::replace(&mut set, listed) != set,
                        Err(e) => {
                            warn!("{e:#}");
                            false
                        }
                    }
                }
                _ => false,
            };
            let addresses = set.node_port_addresses(&filter);
            if changed && *sender.borrow() != addresses {
                info!(nodeport_addresses = ?addresses, "node addresses changed");
                if sender.send(addresses).is_err() {
                    return;
                }
            }
        }
        warn!("address notifications ended: NodePort addresses are no longer followed");
    });
    Ok(receiver)
}

/// The node's addresses now.
async fn list(handle: &rtnetlink::Handle) -> anyhow::Result<AddressSet> {
    let mut set = AddressSet::default();
    let mut dump = handle.address().get().execute();
    while let Some(message) = dump.try_next().await.context("listing addresses")? {
        if let Some((ip, index)) = address_of(&message) {
            set.add(ip, index);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_on_two_interfaces_stays_until_the_last_goes() {
        let mut set = AddressSet::default();
        assert!(set.add(ip("10.244.1.1"), 5));
        assert!(!set.add(ip("10.244.1.1"), 6), "already there");
        assert!(!set.remove(ip("10.244.1.1"), 5), "still on interface 6");
        assert_eq!(set.node_port_addresses(&[]), [ip("10.244.1.1")]);
        assert!(set.remove(ip("10.244.1.1"), 6));
        assert!(set.node_port_addresses(&[]).is_empty());
        assert!(!set.remove(ip("10.244.1.1"), 6), "removing twice changes nothing");
    }

    #[test]
    fn loopback_never_and_the_filter_applies() {
        let mut set = AddressSet::default();
        for (text, index) in [("127.0.0.1", 1), ("192.168.50.11", 2), ("10.244.1.1", 3)] {
            set.add(ip(text), index);
        }
        assert_eq!(set.node_port_addresses(&[]), [ip("10.244.1.1"), ip("192.168.50.11")]);
        let lan: IpNet = "192.168.50.0/24".parse().unwrap();
        assert_eq!(set.node_port_addresses(&[lan]), [ip("192.168.50.11")]);
    }

    #[test]
    fn ipv6_addresses_serve_but_link_local_and_loopback_do_not() {
        let mut set = AddressSet::default();
        for (text, index) in [("::1", 1), ("fe80::1", 2), ("febf::1", 2), ("fd00:50::11", 2), ("192.168.50.11", 2)] {
            set.add(ip(text), index);
        }
        assert_eq!(set.node_port_addresses(&[]), [ip("192.168.50.11"), ip("fd00:50::11")]);
        // A filter names the addresses of both families it serves: IPv4
        // CIDRs alone leave no IPv6 NodePort.
        let lan: IpNet = "192.168.50.0/24".parse().unwrap();
        assert_eq!(set.node_port_addresses(&[lan]), [ip("192.168.50.11")]);
        let lan6: IpNet = "fd00:50::/64".parse().unwrap();
        assert_eq!(set.node_port_addresses(&[lan, lan6]), [ip("192.168.50.11"), ip("fd00:50::11")]);
    }
}
