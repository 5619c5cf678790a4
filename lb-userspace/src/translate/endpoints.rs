//! The endpoint categoriser: which endpoints of a Service port become
//! backends of a frontend, after endpoint conditions, traffic policy and
//! topology hints (kube-proxy's topology.go, CategorizeEndpoints).

use std::{collections::BTreeSet, net::IpAddr};

use crate::model::{Backend, NodeContext};

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
}

/// How one kind of frontend picks its backends.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Policy {
    /// The traffic policy is `Local`: only this node's endpoints.
    pub local: bool,
    /// The Service opted into topology-aware routing.
    pub prefer_same_zone: bool,
}

/// The backends of a frontend and whether a Local policy restricted them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Selection {
    pub backends: Vec<Backend>,
    pub local_only: bool,
}

pub(super) fn select(endpoints: &[Endpoint], policy: &Policy, node: &NodeContext) -> Selection {
    let candidates: Vec<&Endpoint> = if policy.local {
        // An unknown node name matches no endpoint: better no backend than
        // sending Local traffic off-node.
        let node_name = node.node_name.as_deref();
        endpoints.iter().filter(|ep| node_name.is_some() && ep.node_name.as_deref() == node_name).collect()
    } else {
        endpoints.iter().collect()
    };
    let (chosen, terminating) = ready_or_terminating(candidates);
    // Topology only narrows Cluster policies, and only among ready
    // endpoints: the hints describe how the ready ones are spread.
    let chosen = if policy.prefer_same_zone && !policy.local && !terminating {
        same_zone(chosen, node.zone.as_deref())
    } else {
        chosen
    };
    let mut backends: Vec<Backend> =
        chosen.into_iter().map(|ep| Backend { address: ep.address, port: ep.port, terminating }).collect();
    backends.sort();
    backends.dedup();
    Selection { backends, local_only: policy.local }
}

/// The ready endpoints; if there are none, the serving-and-terminating
/// ones, so connections still land somewhere while a rollout drains. The
/// flag says which of the two was returned.
fn ready_or_terminating(candidates: Vec<&Endpoint>) -> (Vec<&Endpoint>, bool) {
    let (ready, rest): (Vec<&Endpoint>, Vec<&Endpoint>) = candidates.into_iter().partition(|ep| ep.ready);
    if !ready.is_empty() {
        return (ready, false);
    }
    (rest.into_iter().filter(|ep| ep.serving && ep.terminating).collect(), true)
}

/// The endpoints hinted for this node's zone, if the hints can be trusted:
/// every endpoint has some, and at least one names this zone. Otherwise all
/// of them — partial hints mean the EndpointSlice controller is not (or no
/// longer) assigning zones, and following them would overload a few.
fn same_zone<'a>(endpoints: Vec<&'a Endpoint>, zone: Option<&str>) -> Vec<&'a Endpoint> {
    let Some(zone) = zone else { return endpoints };
    let complete = endpoints.iter().all(|ep| !ep.zone_hints.is_empty());
    let covers_zone = endpoints.iter().any(|ep| ep.zone_hints.contains(zone));
    if complete && covers_zone {
        endpoints.into_iter().filter(|ep| ep.zone_hints.contains(zone)).collect()
    } else {
        endpoints
    }
}
