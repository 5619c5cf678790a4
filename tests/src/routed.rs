//! A node for packet tests whose routing decisions are real. Called after
//! `Datapath::load`, which moved the test thread into a namespace of its
//! own: there `ext0` gets the node address, the other node (gateway to its
//! Pods, 10.244.9.0/24) and the outside client become known neighbours, and
//! forwarding is on, so the datapath's FIB lookups find routes, source
//! addresses and MACs as on a real node.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::topology::run;

pub const NODE_IP: [u8; 4] = [192, 168, 0, 10];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
/// The other node, gateway to its Pods.
pub const OTHER_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 20);
pub const OTHER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x14];
pub const OTHER_NODE_PODS: &str = "10.244.9.0/24";
/// A client outside the cluster, on the node's link.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 100);
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];

/// `aa:bb:...` for `ip`.
pub fn mac(bytes: [u8; 6]) -> String {
    bytes.map(|b| format!("{b:02x}")).join(":")
}

/// Sets up the calling thread's namespace as described above.
pub fn set_up() -> anyhow::Result<()> {
    set_up_with_pods(OTHER_NODE_PODS)
}

/// `set_up`, the other node being the gateway to `other_node_pods`.
pub fn set_up_with_pods(other_node_pods: &str) -> anyhow::Result<()> {
    let (node_mac, other_mac, client_mac) = (mac(NODE_MAC), mac(OTHER_NODE_MAC), mac(CLIENT_MAC));
    let (other, client) = (OTHER_NODE_IP.to_string(), CLIENT_IP.to_string());
    let node_address = format!("{}/24", Ipv4Addr::from(NODE_IP));
    let steps: [&[&str]; 9] = [
        &["ip", "link", "set", "lo", "up"],
        &["ip", "link", "add", "ext0", "address", &node_mac, "type", "veth", "peer", "name", "ext0-peer"],
        &["ip", "link", "set", "ext0", "up"],
        &["ip", "link", "set", "ext0-peer", "up"],
        &["ip", "addr", "add", &node_address, "dev", "ext0"],
        &["ip", "route", "add", other_node_pods, "via", &other],
        &["ip", "neigh", "replace", &other, "lladdr", &other_mac, "dev", "ext0", "nud", "permanent"],
        &["ip", "neigh", "replace", &client, "lladdr", &client_mac, "dev", "ext0", "nud", "permanent"],
        &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
    ];
    for step in steps {
        run(step[0], &step[1..])?;
    }
    Ok(())
}

/// The IPv6 side of the same node: `fd00:ff::10/64` on `ext0`, the other
/// node (`fd00:ff::20`) gateway to its Pods' `fd00:244:9::/64`, the
/// client `fd00:ff::100` on the link, neighbours known, forwarding on.
/// After [`set_up`], which creates `ext0`.
pub const NODE_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xff, 0, 0, 0, 0, 0, 0x10);
pub const OTHER_NODE_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xff, 0, 0, 0, 0, 0, 0x20);
pub const OTHER_NODE_PODS_V6: &str = "fd00:244:9::/64";
pub const CLIENT_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xff, 0, 0, 0, 0, 0, 0x100);

pub fn set_up_v6() -> anyhow::Result<()> {
    let (other_mac, client_mac) = (mac(OTHER_NODE_MAC), mac(CLIENT_MAC));
    let (other, client) = (OTHER_NODE_IP_V6.to_string(), CLIENT_IP_V6.to_string());
    let node_address = format!("{NODE_IP_V6}/64");
    let steps: [&[&str]; 5] = [
        &["ip", "-6", "addr", "add", &node_address, "dev", "ext0", "nodad"],
        &["ip", "-6", "route", "add", OTHER_NODE_PODS_V6, "via", &other],
        &["ip", "-6", "neigh", "replace", &other, "lladdr", &other_mac, "dev", "ext0", "nud", "permanent"],
        &["ip", "-6", "neigh", "replace", &client, "lladdr", &client_mac, "dev", "ext0", "nud", "permanent"],
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
    ];
    for step in steps {
        run(step[0], &step[1..])?;
    }
    Ok(())
}
