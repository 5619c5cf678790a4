//! The endpoint categoriser: which endpoints of a Service port become
//! backends of a frontend, after endpoint conditions, traffic policy and
//! topology hints (kube-proxy's topology.go, CategorizeEndpoints).

use std::{collections::BTreeSet, net::IpAddr};

use crate::model::{Backend, NodeContext, WhenEmpty};

/// One endpoint of one Service port, merged from the Service's slices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    /// `hints.forZones`: the zones this endpoint was assigned to.
    pub zone_hints: BTreeSet<String>,
    /// `hints.forNodes`: the nodes this endpoint was assigned to.
    pub node_hints: BTreeSet<String>,
}

impl Endpoint {
    fn is_serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// Runs on this node. An unknown node name matches none: better no
    /// backend than Local traffic sent off-node.
    pub(super) fn is_on(&self, node: &NodeContext) -> bool {
        known_node_name(node).is_some_and(|name| self.node_name.as_deref() == Some(name))
    }

    /// Usable by some node: ready, or the serving-terminating fallback.
    fn is_usable(&self) -> bool {
        self.ready || self.is_serving_terminating()
    }
}

/// The backends of a frontend, whether a Local policy restricted them, and
/// what a new flow meets when there are none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Selection {
    pub backends: Vec<Backend>,
    pub local_only: bool,
    pub when_empty: WhenEmpty,
}

/// The backends under a traffic policy: `local` is a `Local` policy.
pub(super) fn select(endpoints: &[Endpoint], local: bool, node: &NodeContext) -> Selection {
    let (chosen, terminating) =
        if local { local_endpoints(endpoints, node) } else { cluster_endpoints(endpoints, node) };
    let mut backends: Vec<Backend> = chosen
        .into_iter()
        .map(|ep| Backend { address: ep.address, port: ep.port, terminating, local: ep.is_on(node) })
        .collect();
    backends.sort();
    backends.dedup();
    Selection { backends, local_only: local, when_empty: when_empty(endpoints, local) }
}

/// The endpoints not in `chosen`: established flows to them keep going,
/// new ones avoid them (see `Frontend::draining`).
pub(super) fn draining(endpoints: &[Endpoint], chosen: &[Backend], node: &NodeContext) -> Vec<Backend> {
    let chosen: BTreeSet<(IpAddr, u16)> = chosen.iter().map(|b| (b.address, b.port)).collect();
    let mut draining: Vec<Backend> = endpoints
        .iter()
        .filter(|ep| !chosen.contains(&(ep.address, ep.port)))
        .map(|ep| Backend { address: ep.address, port: ep.port, terminating: ep.terminating, local: ep.is_on(node) })
        .collect();
    draining.sort();
    draining.dedup_by_key(|b| (b.address, b.port));
    draining
}

/// kube-proxy's filter verdict for a frontend without backends: reject
/// when the Service has no usable endpoint anywhere, so clients fail at
/// once; drop when only a Local policy keeps this node from the usable
/// endpoints elsewhere (a Cluster policy with usable endpoints always has
/// backends).
fn when_empty(endpoints: &[Endpoint], local: bool) -> WhenEmpty {
    if local && endpoints.iter().any(Endpoint::is_usable) { WhenEmpty::Drop } else { WhenEmpty::Reject }
}

/// Cluster policy: the ready endpoints the topology hints give this node;
/// if none is ready anywhere, every serving-terminating endpoint (hints
/// describe how ready endpoints are spread, so they do not apply then).
/// The flag says the fallback was taken.
fn cluster_endpoints<'a>(endpoints: &'a [Endpoint], node: &NodeContext) -> (Vec<&'a Endpoint>, bool) {
    let topology = Topology::from_hints(endpoints, node);
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|ep| ep.ready && topology.admits(ep)).collect();
    if !ready.is_empty() {
        return (ready, false);
    }
    (endpoints.iter().filter(|ep| ep.is_serving_terminating()).collect(), true)
}

/// Local policy: this node's ready endpoints, else its serving-terminating
/// ones. Topology does not narrow a Local policy.
fn local_endpoints<'a>(endpoints: &'a [Endpoint], node: &NodeContext) -> (Vec<&'a Endpoint>, bool) {
    let here: Vec<&Endpoint> = endpoints.iter().filter(|ep| ep.is_on(node)).collect();
    let ready: Vec<&Endpoint> = here.iter().copied().filter(|ep| ep.ready).collect();
    if !ready.is_empty() {
        return (ready, false);
    }
    (here.into_iter().filter(|ep| ep.is_serving_terminating()).collect(), true)
}

/// This node's name, unless unknown; an empty name is unknown too, as in
/// kube-proxy's isLocal.
fn known_node_name(node: &NodeContext) -> Option<&str> {
    node.node_name.as_deref().filter(|name| !name.is_empty())
}

/// Which ready endpoints topology hints leave to this node. Hints are
/// followed whenever the EndpointSlice controller wrote them, whatever the
/// Service asked for: the controller writes them only for Services that
/// asked (topology-mode, trafficDistribution), and kube-proxy reads them
/// the same way (topologyModeFromHints).
#[derive(Debug, PartialEq, Eq)]
enum Topology<'a> {
    /// No usable hints: every ready endpoint.
    All,
    /// Every ready endpoint names nodes, one of them this node.
    SameNode(&'a str),
    /// Every ready endpoint names zones, one of them this node's zone.
    SameZone(&'a str),
}

impl<'a> Topology<'a> {
    /// Node hints first, then zone hints, then none. A hint set counts only
    /// when complete (on every ready endpoint) and it covers this node:
    /// partial hints mean the controller is not (or no longer) assigning,
    /// and following them would overload the few hinted endpoints.
    fn from_hints(endpoints: &[Endpoint], node: &'a NodeContext) -> Self {
        let ready: Vec<&Endpoint> = endpoints.iter().filter(|ep| ep.ready).collect();
        if let Some(name) = known_node_name(node)
            && hints_cover(&ready, |ep| &ep.node_hints, name)
        {
            return Topology::SameNode(name);
        }
        // A node without a zone label uses no zone hints.
        if let Some(zone) = node.zone.as_deref()
            && hints_cover(&ready, |ep| &ep.zone_hints, zone)
        {
            return Topology::SameZone(zone);
        }
        Topology::All
    }

    fn admits(&self, endpoint: &Endpoint) -> bool {
        match self {
            Topology::All => true,
            Topology::SameNode(name) => endpoint.node_hints.contains(*name),
            Topology::SameZone(zone) => endpoint.zone_hints.contains(*zone),
        }
    }
}

/// Whether every endpoint has hints of this kind and one of them names
/// `target`.
fn hints_cover(ready: &[&Endpoint], hints: impl Fn(&Endpoint) -> &BTreeSet<String>, target: &str) -> bool {
    !ready.is_empty()
        && ready.iter().all(|ep| !hints(ep).is_empty())
        && ready.iter().any(|ep| hints(ep).contains(target))
}
