//! The per-node service table: what the datapath must hold, in plain
//! Rust types, independent of Kubernetes objects and of map encodings.
//! `translate` produces it from Services and EndpointSlices; `encode`
//! turns it into map entries.

use std::{fmt, net::IpAddr};

/// L4 protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IANA protocol number, as the datapath keys it.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::proto::TCP,
            Protocol::Udp => lb_common::proto::UDP,
            Protocol::Sctp => lb_common::proto::SCTP,
        }
    }

    pub fn from_number(number: u8) -> Option<Self> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp].into_iter().find(|p| p.number() == number)
    }

    /// The Kubernetes spelling ("TCP", "UDP", "SCTP").
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One port of one Service, as kube-proxy names it: `namespace/name:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's `name` (empty for a single unnamed port).
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        write!(f, "/{}", self.protocol)
    }
}

/// How traffic reaches a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    /// ClusterIP traffic follows internalTrafficPolicy; the others follow
    /// externalTrafficPolicy.
    pub const fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        }
    }
}

/// An IP family. Each family is translated and served on its own, as
/// kube-proxy runs one proxier per family: a family's frontends use only
/// that family's addresses and the EndpointSlices of that address type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    #[default]
    V4,
    V6,
}

impl IpFamily {
    pub const fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The Kubernetes spelling ("IPv4", "IPv6"), as in `ipFamilies` and
    /// an EndpointSlice's `addressType`.
    pub const fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

/// What a new flow to a frontend without backends meets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WhenEmpty {
    /// The Service has no usable endpoint anywhere: reject (ICMP port
    /// unreachable), so clients fail at once, as kube-proxy does.
    #[default]
    Reject,
    /// The Service has endpoints, but a `Local` traffic policy leaves none
    /// on this node: drop, as kube-proxy does (a cloud load balancer's
    /// health check then steers external traffic to other nodes).
    Drop,
}

/// How a frontend picks a new flow's backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Balancing {
    /// The flow hash modulo the backend count picks a slot. Each node
    /// orders its slots its own way: fine where a flow always enters
    /// through the same node (ClusterIP traffic from a local pod).
    #[default]
    Hash,
    /// The flow hash picks a position in a Maglev table built from the
    /// endpoints themselves: every node picks the same backend for the
    /// same flow, and a backend change moves few flows. For traffic an
    /// outside load balancer may send to any node.
    Maglev,
}

/// A backend of a frontend: endpoint address and target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    /// Serving but terminating (used only when no endpoint is ready).
    pub terminating: bool,
    /// The endpoint runs on this node (its `nodeName` is this node's).
    /// External traffic to other nodes' endpoints is source-NATed.
    pub local: bool,
}

/// One (address, port, protocol) the datapath answers on, with the
/// backends it balances over (already filtered by endpoint conditions,
/// traffic policy and topology; sorted and without duplicates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub service: ServicePortName,
    pub kind: FrontendKind,
    pub address: IpAddr,
    pub port: u16,
    pub backends: Vec<Backend>,
    /// Endpoints of this Service port still listed in its EndpointSlices
    /// but not chosen for new flows (terminating while others are ready,
    /// not ready, or left out by a policy or topology). Their backend
    /// entries stay, so connections already established to them keep
    /// flowing until the endpoint leaves the slices, as kube-proxy's
    /// conntrack entries do. Sorted, without duplicates, none in `backends`.
    pub draining: Vec<Backend>,
    /// Only meaningful when `backends` is empty.
    pub when_empty: WhenEmpty,
    /// sessionAffinity ClientIP timeout in seconds; `None` when off.
    pub affinity_timeout_s: Option<u32>,
    /// A `Local` traffic policy restricted `backends` to this node.
    pub local_only: bool,
    /// `loadBalancerSourceRanges` (LoadBalancer frontends only): `None`
    /// admits every source; `Some` only sources inside one of these
    /// (an empty list admits none).
    pub source_ranges: Option<Vec<ipnet::IpNet>>,
    /// An external frontend under `externalTrafficPolicy: Local`, when the
    /// node knows the cluster's Pod CIDRs: the same frontend with the
    /// cluster-wide backends, which Pod traffic uses (kube-proxy's
    /// short-circuit). Never nested further.
    pub in_cluster: Option<Box<Frontend>>,
    /// How new flows pick a backend: slot hash or Maglev table.
    pub balancing: Balancing,
}

impl Frontend {
    pub fn protocol(&self) -> Protocol {
        self.service.protocol
    }
}

/// What a node needs to know about itself to translate Services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name (for `Local` traffic policies); `None` when unknown,
    /// in which case Local policies select no endpoint.
    pub node_name: Option<String>,
    /// This node's `topology.kubernetes.io/zone` (for topology hints).
    pub zone: Option<String>,
    /// Addresses NodePorts are served on (`--nodeport-addresses` applied).
    pub node_addresses: Vec<IpAddr>,
    /// The cluster's Pod CIDRs (`--cluster-cidr`): sources inside them are
    /// Pods. Empty: Pod traffic is not told apart (no short-circuit).
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    /// `--proxy-name`: with it, only Services (and slices) labelled
    /// `service.kubernetes.io/service-proxy-name` with this value are ours;
    /// without it, only unlabelled ones, as for kube-proxy.
    pub proxy_name: Option<String>,
    /// The family this table is built for (see [`IpFamily`]).
    pub family: IpFamily,
    /// Whether the node serves both families: a sync then builds the
    /// table of each, `family` naming the one being built.
    pub dual_stack: bool,
}

impl NodeContext {
    /// The families whose tables a sync builds.
    pub fn families(&self) -> Vec<IpFamily> {
        if self.dual_stack { vec![IpFamily::V4, IpFamily::V6] } else { vec![self.family] }
    }

    /// This context, building the table of `family`.
    pub fn for_family(&self, family: IpFamily) -> Self {
        Self { family, ..self.clone() }
    }
}

/// An object that could not be (fully) translated. It is skipped and
/// reported; every other object is still translated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `Service` or `EndpointSlice`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}: {}", self.kind, self.namespace, self.name, self.message)
    }
}

/// The result of translating a cluster's Services for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    /// Sorted by (address, port, protocol); no two share that triple.
    pub frontends: Vec<Frontend>,
    pub problems: Vec<Problem>,
}
