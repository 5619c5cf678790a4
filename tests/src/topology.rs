//! Network-namespace topologies for end-to-end tests and the demo. The
//! whole topology, the "node" included, lives in namespaces created here;
//! none is linked to the root namespace and none has a default route, so
//! every packet stays between these hosts. Dropping a `Topology` deletes
//! its namespaces (and with them their veths), also when a test panics.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside a namespace.
pub fn run_in(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", netns];
    full.extend_from_slice(args);
    run("ip", &full)
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Client namespace ─ node namespace ─ N backend namespaces.
///
/// Addresses: client 10.0.1.2/24 (node side 10.0.1.1); backend i (1-based)
/// 10.244.i.2/24 (node side 10.244.i.1). The client routes only the
/// Service range (10.96.0.0/16) and the node's own subnets via the node;
/// backends route only the client subnet via the node.
#[derive(Debug)]
pub struct Topology {
    pub client: String,
    pub node: String,
    pub backends: Vec<String>,
    /// Node-side interface names, client-facing first.
    pub node_interfaces: Vec<String>,
}

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
pub const NODE_CLIENT_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const SERVICE_RANGE: &str = "10.96.0.0/16";

pub const CLIENT_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
pub const SERVICE_RANGE_V6: &str = "fd00:96::/64";

pub fn backend_ip_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, i as u16, 0, 0, 0, 0, 2)
}

/// Packets an interface in `netns` has received and sent, as `ip -s link`
/// reports them.
pub fn link_packets(netns: &str, interface: &str) -> anyhow::Result<(u64, u64)> {
    let count = |which: &str| -> anyhow::Result<u64> {
        let path = format!("/sys/class/net/{interface}/statistics/{which}_packets");
        Ok(run_in(netns, &["cat", &path])?.trim().parse()?)
    };
    Ok((count("rx")?, count("tx")?))
}

/// Segments and datagrams `netns`'s stack dropped for a bad checksum,
/// both families: `InCsumErrors` of the `Tcp:` and `Udp:` lines of
/// `/proc/net/snmp` (TCP's counts IPv6 too) and `Udp6InCsumErrors`.
pub fn checksum_errors(netns: &str) -> anyhow::Result<u64> {
    let snmp = run_in(netns, &["cat", "/proc/net/snmp"])?;
    let lines: Vec<&str> = snmp.lines().collect();
    let mut errors = 0;
    for pair in lines.windows(2) {
        let (names, values) = (pair[0], pair[1]);
        let protocol = names.split(':').next().unwrap_or_default();
        if !["Tcp", "Udp"].contains(&protocol) || !values.starts_with(&format!("{protocol}:")) {
            continue;
        }
        let column = names.split_whitespace().position(|n| n == "InCsumErrors").context("InCsumErrors column")?;
        errors += values.split_whitespace().nth(column).context("InCsumErrors value")?.parse::<u64>()?;
    }
    let snmp6 = run_in(netns, &["cat", "/proc/net/snmp6"])?;
    for line in snmp6.lines() {
        if let ["Udp6InCsumErrors", value] = line.split_whitespace().collect::<Vec<_>>()[..] {
            errors += value.parse::<u64>()?;
        }
    }
    Ok(errors)
}

pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i as u8, 2)
}

impl Topology {
    /// Makes the node's ends of the veths compute L4 checksums in software
    /// (`ethtool -K … tx off`): a packet the node sends out of them then
    /// carries the checksum its field leads to, which the receiver checks,
    /// where offload would leave a pod's packet unchecked end to end.
    pub fn compute_checksums_on_the_node(&self) -> anyhow::Result<()> {
        for end in &self.node_interfaces {
            run_in(&self.node, &["ethtool", "-K", end, "tx", "off"])?;
        }
        Ok(())
    }

    /// `checksum_errors`, summed over the client and the backends.
    pub fn checksum_errors(&self) -> anyhow::Result<u64> {
        let mut errors = checksum_errors(&self.client)?;
        for backend in &self.backends {
            errors += checksum_errors(backend)?;
        }
        Ok(errors)
    }

    /// Creates the namespaces with a unique prefix (so parallel runs and
    /// leftovers never collide).
    pub fn create(backends: usize) -> anyhow::Result<Self> {
        let prefix = format!("lbt{}x{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let topo = Topology {
            client: format!("{prefix}-client"),
            node: format!("{prefix}-node"),
            backends: (1..=backends).map(|i| format!("{prefix}-b{i}")).collect(),
            node_interfaces: std::iter::once("to-client".to_owned())
                .chain((1..=backends).map(|i| format!("to-b{i}")))
                .collect(),
        };
        // From here on, Drop cleans up whatever was created.
        topo.build().map(|()| topo)
    }

    fn all_namespaces(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.client).chain(std::iter::once(&self.node)).chain(self.backends.iter())
    }

    fn build(&self) -> anyhow::Result<()> {
        for ns in self.all_namespaces() {
            run("ip", &["netns", "add", ns])?;
            run_in(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        let node = &self.node;
        for key in ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"] {
            run_in(node, &["sysctl", "-qw", key])?;
        }
        // Client link.
        self.link(&self.client, "to-client", &format!("{CLIENT_IP}/24"), &format!("{NODE_CLIENT_SIDE_IP}/24"))?;
        for (i, ns) in self.backends.iter().enumerate() {
            let i = i + 1;
            self.link(ns, &format!("to-b{i}"), &format!("{}/24", backend_ip(i)), &format!("10.244.{i}.1/24"))?;
            run_in(ns, &["ip", "route", "add", "10.0.1.0/24", "via", &format!("10.244.{i}.1")])?;
        }
        run_in(&self.client, &["ip", "route", "add", SERVICE_RANGE, "via", &NODE_CLIENT_SIDE_IP.to_string()])?;
        run_in(&self.client, &["ip", "route", "add", "10.244.0.0/16", "via", &NODE_CLIENT_SIDE_IP.to_string()])?;
        Ok(())
    }

    /// Adds IPv6 (ULA, on the test's own links only) beside the IPv4
    /// addresses: client `fd00:1::2/64` (node side `fd00:1::1`), backend i
    /// `fd00:244:i::2/64` (node side `fd00:244:i::1`), routed as IPv4 is:
    /// the client reaches the Service range `fd00:96::/64` and the
    /// backends' range through the node, backends reach the client and
    /// the Service range (so a pod can reach its own Service).
    /// Addresses skip duplicate address detection, so they are usable at
    /// once.
    pub fn add_ipv6(&self) -> anyhow::Result<()> {
        run_in(&self.node, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        self.address_v6(&self.node, "to-client", "fd00:1::1/64")?;
        self.address_v6(&self.client, "eth0", &format!("{CLIENT_IP_V6}/64"))?;
        for (i, ns) in self.backends.iter().enumerate() {
            let i = i + 1;
            self.address_v6(&self.node, &format!("to-b{i}"), &format!("fd00:244:{i}::1/64"))?;
            self.address_v6(ns, "eth0", &format!("{}/64", backend_ip_v6(i)))?;
            for range in ["fd00:1::/64", SERVICE_RANGE_V6] {
                run_in(ns, &["ip", "-6", "route", "add", range, "via", &format!("fd00:244:{i}::1")])?;
            }
        }
        for range in [SERVICE_RANGE_V6, "fd00:244::/32"] {
            run_in(&self.client, &["ip", "-6", "route", "add", range, "via", "fd00:1::1"])?;
        }
        Ok(())
    }

    fn address_v6(&self, ns: &str, dev: &str, address: &str) -> anyhow::Result<()> {
        run_in(ns, &["ip", "-6", "addr", "add", address, "dev", dev, "nodad"])?;
        Ok(())
    }

    /// A veth pair: `eth0` in `peer_ns`, `node_if` in the node namespace.
    fn link(&self, peer_ns: &str, node_if: &str, peer_addr: &str, node_addr: &str) -> anyhow::Result<()> {
        let node = &self.node;
        run_in(node, &["ip", "link", "add", node_if, "type", "veth", "peer", "name", "eth0", "netns", peer_ns])?;
        run_in(node, &["ip", "addr", "add", node_addr, "dev", node_if])?;
        run_in(node, &["ip", "link", "set", node_if, "up"])?;
        run_in(node, &["sysctl", "-qw", &format!("net.ipv4.conf.{node_if}.rp_filter=0")])?;
        run_in(peer_ns, &["ip", "addr", "add", peer_addr, "dev", "eth0"])?;
        run_in(peer_ns, &["ip", "link", "set", "eth0", "up"])?;
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.all_namespaces() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
