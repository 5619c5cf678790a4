//! Which Services get a health check server on this node, and what it
//! reports: kube-proxy opens `spec.healthCheckNodePort` for every
//! LoadBalancer Service with `externalTrafficPolicy: Local` and answers
//! with the number of this node's ready endpoints, so a cloud load
//! balancer sends only to nodes that have one
//! (`pkg/proxy/healthcheck/service_health.go`; the Services from
//! `ServicePortMap.HealthCheckNodePorts`, the counts from
//! `EndpointsMap.LocalReadyEndpoints`).

use std::{collections::BTreeSet, net::IpAddr};

use k8s_openapi::api::core::v1::Service;

use super::{SliceRecord, fields, namespaced_name, service, service_problem, slices::SliceIndex};
use crate::model::{IpFamily, NodeContext, Problem};

/// One Service's health check: the port it is served on and the count it
/// reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    /// Distinct addresses of this node's ready endpoints, over all the
    /// Service's ports: one Pod serving two ports counts once, as in
    /// kube-proxy. Terminating endpoints do not count (the controller
    /// marks them not ready): a node left with only those fails its check,
    /// so the load balancer drains it.
    pub local_endpoints: usize,
}

/// The health check of one Service (`None`: it gets no server here), from
/// the Service and the EndpointSlices labelled with its name. An
/// `externalTrafficPolicy: Local` LoadBalancer Service without a usable
/// `healthCheckNodePort` is reported: the API server always allocates one,
/// so its absence means hand-written input that a load balancer cannot
/// check.
pub fn health_check<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a SliceRecord>,
    node: &NodeContext,
) -> Result<Option<HealthCheck>, Problem> {
    if !needs_health_check(svc, node) {
        return Ok(None);
    }
    let spec = svc.spec.as_ref().map(|spec| spec.health_check_node_port);
    let port = match spec.flatten() {
        None | Some(0) => {
            return Err(service_problem(
                svc,
                "externalTrafficPolicy Local without healthCheckNodePort: no health check served".into(),
            ));
        }
        Some(value) => fields::port(value)
            .map_err(|e| service_problem(svc, format!("healthCheckNodePort: {e}; no health check served")))?,
    };
    // Slice problems are the frontends' translation's to report.
    let index = SliceIndex::build(slices, node, &mut Vec::new());
    let (namespace, name) = namespaced_name(&svc.metadata);
    Ok(Some(HealthCheck { port, local_endpoints: local_ready_addresses(&index, namespace, name, node).len() }))
}

/// kube-proxy's `NeedsHealthCheck` (a LoadBalancer with a Local external
/// policy; a NodePort Service gets none), for a Service this node proxies
/// in its table's family (as each per-family proxier serves only the
/// Services it has a cluster IP for; an IPv6-only Service gets none from
/// this IPv4 agent), with at least one port (kube-proxy lists health check
/// ports from its per-port table).
fn needs_health_check(svc: &Service, node: &NodeContext) -> bool {
    let Some(spec) = svc.spec.as_ref() else { return false };
    // The cheap test first: a full sync asks this of every Service.
    if spec.type_.as_deref() != Some("LoadBalancer") || spec.external_traffic_policy.as_deref() != Some("Local") {
        return false;
    }
    let in_family = service::cluster_ips(spec)
        .iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .any(|ip| IpFamily::of(ip) == node.family);
    service::is_proxied(&svc.metadata, spec, node)
        && in_family
        && spec.ports.as_ref().is_some_and(|ports| !ports.is_empty())
}

/// This node's ready endpoint addresses, from every port the slices list
/// (each merged across slices as for the frontends).
fn local_ready_addresses(index: &SliceIndex, namespace: &str, name: &str, node: &NodeContext) -> BTreeSet<IpAddr> {
    index
        .port_names(namespace, name)
        .into_iter()
        .flat_map(|(port, protocol)| index.endpoints(namespace, name, &port, protocol))
        .filter(|ep| ep.ready && ep.is_on(node))
        .map(|ep| ep.address)
        .collect()
}
