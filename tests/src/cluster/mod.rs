//! A cluster of namespace nodes: N nodes and an external client on one LAN
//! (a bridge in a namespace of its own), pods on each node, every node
//! routing to the other nodes' pods. Each node runs its own agent, as every
//! node runs its own kube-proxy, reading either one shared file of Services
//! and EndpointSlices ([`Cluster::start_agents`]) or one stand-in API
//! server ([`Cluster::start_agents_on_api`], then [`Cluster::apply`] writes
//! Services and the EndpointSlices the controller would). As with
//! [`crate::topology::Topology`], nothing is linked to the root namespace
//! and no namespace has a default route; dropping a `Cluster` stops its
//! agents, servers and API server and deletes its namespaces.
//!
//! Addresses:
//! - LAN 192.168.50.0/24: the client .100, node i (1-based) .10+i, the API
//!   server .1 (on the bridge, in the LAN namespace);
//! - pod j of node i: 10.244.i.(10+j)/32 behind the node's `pod<j>` veth;
//!   the node side holds 10.244.i.1/32, every pod's gateway;
//! - node i routes 10.244.k.0/24 via node k;
//! - with [`Cluster::add_ipv6`], the same in IPv6 beside it: LAN
//!   fd00:50::/64 (client ::100, node i ::(10+i)), pod j of node i
//!   fd00:244:i::(10+j)/128 with gateway fd00:244:i::1, node i routing
//!   fd00:244:k::/64 via node k.

mod api;
mod pods;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use aya::programs::xdp::XdpMode;
use lb_userspace::datapath::loader;

use crate::{
    agent::{Agent, write_atomically},
    topology::{run, run_in},
};

pub use self::api::API_SERVER_IP;
use self::{api::ApiState, pods::PodServers};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
/// Every node's Pod addresses (the agents' `--cluster-cidr`).
pub const POD_CIDRS: &str = "10.244.0.0/16";

pub fn node_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, 10 + node as u8)
}

pub fn pod_ip(node: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node as u8, 10 + pod as u8)
}

pub const CLIENT_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x100);
/// Every node's IPv6 Pod addresses, once [`Cluster::add_ipv6`] gave them.
pub const POD_CIDRS_V6: &str = "fd00:244::/32";

pub fn node_ip_v6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x10 + node as u16)
}

pub fn pod_ip_v6(node: usize, pod: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, node as u16, 0, 0, 0, 0, 0x10 + pod as u16)
}

fn pod_gateway_v6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, node as u16, 0, 0, 0, 0, 1)
}

/// The LAN side of the client's link (on the bridge).
const CLIENT_LAN_PORT: &str = "client";

/// The LAN side of node i's link.
fn node_lan_port(node: usize) -> String {
    format!("node{node}")
}

/// Kubernetes name of node i.
pub fn node_name(node: usize) -> String {
    format!("node-{node}")
}

/// Default topology zone of node i: `zone-a` for node 1, `zone-b` for
/// node 2, ... ([`Node::zone`] may change it before the agents start).
pub fn node_zone(node: usize) -> String {
    format!("zone-{}", char::from(b'a' + (node - 1) as u8))
}

/// Name of pod j of node i (what its servers answer with): `n1p2`.
pub fn pod_name(node: usize, pod: usize) -> String {
    format!("n{node}p{pod}")
}

#[derive(Debug)]
pub struct Node {
    /// Network namespace.
    pub netns: String,
    /// Pod namespaces, pod 1 first.
    pub pods: Vec<String>,
    /// Its `topology.kubernetes.io/zone`, as registered with the API
    /// server by [`Cluster::start_agents_on_api`].
    pub zone: String,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct Cluster {
    pub lan: String,
    pub client: String,
    pub nodes: Vec<Node>,
    /// The shared Services and EndpointSlices file.
    pub source: PathBuf,
    agents: Vec<Agent>,
    /// The API server and what was written to it, once agents run on it.
    api: Option<ApiState>,
    /// Servers running in pods, by (node, pod).
    servers: PodServers,
    /// The switch on the LAN ports, once [`Cluster::wire_lan_for_xdp`]
    /// attached it.
    lan_xdp: Option<aya::Ebpf>,
    /// Whether [`Cluster::add_ipv6`] ran (the agents learn the IPv6 Pod
    /// CIDR too).
    ipv6: bool,
}

impl Cluster {
    /// `pods[i]` pods on node i+1.
    pub fn create(pods: &[usize]) -> anyhow::Result<Self> {
        let prefix = format!("lbc{}x{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let cluster = Cluster {
            lan: format!("{prefix}-lan"),
            client: format!("{prefix}-client"),
            nodes: pods
                .iter()
                .enumerate()
                .map(|(i, &n)| Node {
                    netns: format!("{prefix}-n{}", i + 1),
                    pods: (1..=n).map(|j| format!("{prefix}-n{}p{j}", i + 1)).collect(),
                    zone: node_zone(i + 1),
                })
                .collect(),
            source: std::env::temp_dir().join(format!("{prefix}-services.yaml")),
            agents: Vec::new(),
            api: None,
            servers: PodServers::default(),
            lan_xdp: None,
            ipv6: false,
        };
        // From here on, Drop cleans up whatever was created.
        cluster.build().map(|()| cluster)
    }

    fn namespaces(&self) -> impl Iterator<Item = &String> {
        [&self.lan, &self.client]
            .into_iter()
            .chain(self.nodes.iter().flat_map(|n| std::iter::once(&n.netns).chain(n.pods.iter())))
    }

    fn build(&self) -> anyhow::Result<()> {
        for ns in self.namespaces() {
            run("ip", &["netns", "add", ns])?;
            run_in(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        run_in(&self.lan, &["ip", "link", "add", "br0", "type", "bridge"])?;
        run_in(&self.lan, &["ip", "link", "set", "br0", "up"])?;
        self.join_lan(&self.client, CLIENT_LAN_PORT, CLIENT_IP)?;
        for (i, node) in self.nodes.iter().enumerate() {
            let i = i + 1;
            for key in ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"] {
                run_in(&node.netns, &["sysctl", "-qw", key])?;
            }
            self.join_lan(&node.netns, &node_lan_port(i), node_ip(i))?;
            for (j, pod) in node.pods.iter().enumerate() {
                self.add_pod(&node.netns, pod, i, j + 1)?;
            }
            for k in (1..=self.nodes.len()).filter(|&k| k != i) {
                let pods = format!("10.244.{k}.0/24");
                run_in(&node.netns, &["ip", "route", "add", &pods, "via", &node_ip(k).to_string()])?;
            }
        }
        Ok(())
    }

    /// `eth0` in `ns` with `address`, its peer on the LAN bridge.
    fn join_lan(&self, ns: &str, lan_if: &str, address: Ipv4Addr) -> anyhow::Result<()> {
        run_in(&self.lan, &["ip", "link", "add", lan_if, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        run_in(&self.lan, &["ip", "link", "set", lan_if, "master", "br0", "up"])?;
        run_in(ns, &["ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        run_in(ns, &["ip", "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Pod `pod` (1-based) of node `node`, routed as described above.
    fn add_pod(&self, node_ns: &str, pod_ns: &str, node: usize, pod: usize) -> anyhow::Result<()> {
        let node_if = format!("pod{pod}");
        let ip = pod_ip(node, pod).to_string();
        let gateway = format!("10.244.{node}.1");
        run_in(node_ns, &["ip", "link", "add", &node_if, "type", "veth", "peer", "name", "eth0", "netns", pod_ns])?;
        run_in(node_ns, &["ip", "addr", "add", &format!("{gateway}/32"), "dev", &node_if])?;
        run_in(node_ns, &["ip", "link", "set", &node_if, "up"])?;
        run_in(node_ns, &["sysctl", "-qw", &format!("net.ipv4.conf.{node_if}.rp_filter=0")])?;
        run_in(node_ns, &["ip", "route", "add", &format!("{ip}/32"), "dev", &node_if])?;
        run_in(pod_ns, &["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        run_in(pod_ns, &["ip", "link", "set", "eth0", "up"])?;
        run_in(pod_ns, &["ip", "route", "add", &gateway, "dev", "eth0", "scope", "link"])?;
        for prefix in ["10.0.0.0/8", "192.168.50.0/24"] {
            run_in(pod_ns, &["ip", "route", "add", prefix, "via", &gateway])?;
        }
        Ok(())
    }

    /// Gives every namespace its IPv6 addresses and routes (see the module
    /// comment), beside the IPv4 ones. Before the agents start.
    pub fn add_ipv6(&mut self) -> anyhow::Result<()> {
        let address = |ns: &str, cidr: String, dev: &str| {
            run_in(ns, &["ip", "-6", "addr", "add", &cidr, "dev", dev, "nodad"]).map(drop)
        };
        address(&self.client, format!("{CLIENT_IP_V6}/64"), "eth0")?;
        for (i, node) in self.nodes.iter().enumerate() {
            let i = i + 1;
            run_in(&node.netns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
            address(&node.netns, format!("{}/64", node_ip_v6(i)), "eth0")?;
            let gateway = pod_gateway_v6(i).to_string();
            for (j, pod) in node.pods.iter().enumerate() {
                let (node_if, ip) = (format!("pod{}", j + 1), pod_ip_v6(i, j + 1).to_string());
                address(&node.netns, format!("{gateway}/128"), &node_if)?;
                run_in(&node.netns, &["ip", "-6", "route", "add", &format!("{ip}/128"), "dev", &node_if])?;
                address(pod, format!("{ip}/128"), "eth0")?;
                run_in(pod, &["ip", "-6", "route", "add", &gateway, "dev", "eth0"])?;
                run_in(pod, &["ip", "-6", "route", "add", "fd00::/8", "via", &gateway])?;
            }
            for k in (1..=self.nodes.len()).filter(|&k| k != i) {
                let pods = format!("fd00:244:{k}::/64");
                run_in(&node.netns, &["ip", "-6", "route", "add", &pods, "via", &node_ip_v6(k).to_string()])?;
            }
        }
        self.ipv6 = true;
        Ok(())
    }

    /// The LAN side of each station's link: the client's, then node i's.
    fn lan_ports(&self) -> impl Iterator<Item = String> + use<> {
        std::iter::once(CLIENT_LAN_PORT.to_owned()).chain((1..=self.nodes.len()).map(node_lan_port))
    }

    /// Makes the LAN behave as a wire and NICs for XDP on the nodes'
    /// `eth0`:
    /// - Every sender on it (client, pods) computes its checksums in full
    ///   (`tx` offload off). On a wire, a NIC has done that before any
    ///   other node's XDP sees the frame. A veth instead hands on the
    ///   sender's partial checksum, which XDP cannot tell from a complete
    ///   one.
    /// - Each LAN port runs `lb_wire`, a switch at XDP: a frame to a
    ///   station's MAC is redirected to that station's port as an XDP
    ///   frame, so the station's `eth0` receives it in a page with no
    ///   sk_buff yet, as from a NIC's DMA (a node's XDP then runs on it
    ///   as it would on a NIC's frame, not on the sender's copied
    ///   sk_buff); broadcasts and the rest go through the bridge. A port
    ///   running an XDP program also takes the frames a node sends back
    ///   with `XDP_TX`.
    /// - Each station's `eth0` receives through NAPI with GRO (the veth
    ///   takes XDP frames only then, or while an XDP program runs on it),
    ///   and every LAN veth has one queue per CPU, as a NIC's RSS queues:
    ///   a single queue would put each link's receive work on one CPU.
    ///
    /// It stays so while the cluster lives.
    pub fn wire_lan_for_xdp(&mut self) -> anyhow::Result<()> {
        run_in(&self.client, &["ethtool", "-K", "eth0", "tx", "off"])?;
        for pod in self.nodes.iter().flat_map(|n| n.pods.iter()) {
            run_in(pod, &["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        let queues = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
        let stations: Vec<(&String, String)> =
            std::iter::once(&self.client).chain(self.nodes.iter().map(|n| &n.netns)).zip(self.lan_ports()).collect();
        let mut table = Vec::new();
        for (ns, port) in &stations {
            for (netns, dev) in [(ns.as_str(), "eth0"), (self.lan.as_str(), port.as_str())] {
                run_in(netns, &["ethtool", "-L", dev, "rx", &queues, "tx", &queues])?;
            }
            run_in(ns, &["ethtool", "-K", "eth0", "gro", "on"])?;
            table.push((link_field(ns, "eth0", "address")?, link_field(&self.lan, port, "ifindex")?));
        }
        let ports: Vec<String> = stations.into_iter().map(|(_, port)| port).collect();
        let switch = crate::servers::in_netns(&self.lan, move || {
            let mut ebpf = loader::load_maps(None, loader::Capacities::minimal())?;
            let mut wire_ports: aya::maps::HashMap<_, [u8; 6], u32> =
                aya::maps::HashMap::try_from(ebpf.map_mut(lb_common::maps::WIRE_PORTS).context("no wire map")?)?;
            for (mac, ifindex) in &table {
                wire_ports.insert(parse_mac(mac)?, ifindex.parse::<u32>()?, 0)?;
            }
            let prog: &mut aya::programs::Xdp =
                ebpf.program_mut(loader::WIRE_PROGRAM).context("no wire program")?.try_into()?;
            prog.load()?;
            for port in &ports {
                prog.attach(port, XdpMode::Default)?;
            }
            Ok(ebpf)
        })?;
        self.lan_xdp = Some(switch);
        Ok(())
    }

    /// Frames the LAN's switch has sent on at XDP so far, over all its
    /// ports (each veth counts them per receive queue, `ethtool -S`).
    pub fn switched_frames(&self) -> anyhow::Result<u64> {
        let mut switched = 0;
        for port in self.lan_ports() {
            let stats = run_in(&self.lan, &["ethtool", "-S", &port])?;
            for line in stats.lines() {
                let Some((name, value)) = line.trim().split_once(':') else { continue };
                if name.starts_with("rx_queue_") && name.ends_with("_xdp_redirect") {
                    switched += value.trim().parse::<u64>().with_context(|| format!("ethtool -S {port}: {line}"))?;
                }
            }
        }
        Ok(switched)
    }

    /// Writes the shared Services and EndpointSlices file (every agent
    /// re-reads it on change).
    pub fn publish(&self, objects: &str) -> anyhow::Result<()> {
        write_atomically(&self.source, objects)
    }

    /// Starts one agent per node on the published file, attached to the
    /// node's LAN interface and pod veths, and waits until all are ready.
    pub fn start_agents(&mut self) -> anyhow::Result<()> {
        self.start_agents_with(&[])
    }

    /// `start_agents`, each agent given `extra_args` too.
    pub fn start_agents_with(&mut self, extra_args: &[&str]) -> anyhow::Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            let name = node_name(i + 1);
            let pod_cidrs = if self.ipv6 { format!("{POD_CIDRS},{POD_CIDRS_V6}") } else { POD_CIDRS.to_owned() };
            let mut args = vec!["--hostname-override", name.as_str(), "--interfaces", "eth0,pod*", "--cluster-cidr"];
            args.push(&pod_cidrs);
            args.extend_from_slice(extra_args);
            let agent = Agent::start(&node.netns, &self.source, &args)?;
            self.agents.push(agent);
        }
        for agent in &mut self.agents {
            agent.wait_ready(Duration::from_secs(20))?;
        }
        Ok(())
    }

    /// Node i's agent (1-based).
    pub fn agent(&mut self, node: usize) -> &mut Agent {
        &mut self.agents[node - 1]
    }

    /// The pinned maps directory of node i's agent.
    pub fn pin_dir(&self, node: usize) -> &Path {
        &self.agents[node - 1].pin_dir
    }
}

/// One field (`address`, `ifindex`, ...) of `ip -j link show DEV` in `ns`.
fn link_field(ns: &str, dev: &str, field: &str) -> anyhow::Result<String> {
    let shown: serde_json::Value = serde_json::from_str(&run_in(ns, &["ip", "-j", "link", "show", dev])?)?;
    let value = &shown[0][field];
    Ok(value.as_str().map_or_else(|| value.to_string(), str::to_owned))
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("not a MAC address: {text}"))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first (their Drop stops them and removes their pins),
        // then servers and the API server, then the namespaces.
        self.agents.clear();
        self.servers = PodServers::default();
        self.api = None;
        self.lan_xdp = None;
        for ns in self.namespaces() {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_file(&self.source);
    }
}
