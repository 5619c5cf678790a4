//! Services + EndpointSlices → [`ServiceTable`] for one node.
//!
//! Pure: no I/O, no logging. Anything that cannot be translated is skipped
//! and reported in [`ServiceTable::problems`]; everything else still
//! translates. The rules are Kubernetes' own, as kube-proxy applies them
//! (servicechangetracker.go, endpointslicecache.go, topology.go).
//!
//! - [`service`]: which Services are proxied, and their per-Service settings.
//! - [`frontends`]: Service ports × addresses → the frontends to serve.
//! - [`fields`]: protocols, port numbers and addresses, validated.
//! - [`record`]: what is kept of an EndpointSlice between syncs.
//! - [`slices`]: EndpointSlices → endpoints, grouped by Service.
//! - [`endpoints`]: endpoints → backends (conditions, traffic policy, topology).
//! - [`claims`]: one owner per (address, port, protocol).
//! - [`health_check`]: the `healthCheckNodePort` servers of Local Services.

mod claims;
mod endpoints;
mod fields;
mod frontends;
mod health_check;
mod record;
mod service;
mod slices;
#[cfg(test)]
mod tests;

use ipnet::IpNet;
use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::model::{Frontend, FrontendKind, NodeContext, Problem, ServicePortName, ServiceTable};

use self::{endpoints::Selection, frontends::PortFrontends, service::Settings, slices::SliceIndex};

/// Translates the cluster's Services and EndpointSlices into what this
/// node's datapath must serve. Deterministic: the input order does not
/// matter.
pub fn translate(services: &[Service], slices: &[EndpointSlice], node: &NodeContext) -> ServiceTable {
    let mut problems = Vec::new();
    let records: Vec<SliceRecord> = slices.iter().map(SliceRecord::from).collect();
    let index = SliceIndex::build(&records, node, &mut problems);
    let mut claims = Claims::default();
    for svc in services {
        let (namespace, name) = namespaced_name(&svc.metadata);
        let service = (namespace.to_owned(), name.to_owned());
        claims.set_service(&service, translate_service(svc, &index, node, &mut problems));
    }
    let frontends = claims.winners().cloned().collect();
    problems.extend(claims.conflicts());
    problems.sort();
    problems.dedup();
    ServiceTable { frontends, problems }
}

/// One Service's frontend claims and problems, from the Service (if it
/// exists) and the EndpointSlices labelled with its name, before claims of
/// different Services on one frontend are settled (see [`Claims`]).
/// Translating Services one at a time is what lets the agent apply a
/// change in time proportional to that Service, not to the cluster.
pub fn translate_one<'a>(
    svc: Option<&Service>,
    slices: impl IntoIterator<Item = &'a SliceRecord>,
    node: &NodeContext,
) -> (Vec<Frontend>, Vec<Problem>) {
    let mut problems = Vec::new();
    let index = SliceIndex::build(slices, node, &mut problems);
    let frontends = svc.map(|svc| translate_service(svc, &index, node, &mut problems)).unwrap_or_default();
    problems.sort();
    problems.dedup();
    (frontends, problems)
}

pub use self::claims::{Claims, FrontendAddr, ServiceRef};
pub use self::health_check::{HealthCheck, health_check};
pub use self::record::{EndpointRecord, Hints, LAST_CHANGE_TRIGGER_TIME, SliceRecord};
pub use self::slices::owner as slice_owner;

/// All frontends of one Service, with their backends.
fn translate_service(
    svc: &Service,
    index: &SliceIndex,
    node: &NodeContext,
    problems: &mut Vec<Problem>,
) -> Vec<Frontend> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    if !service::is_proxied(&svc.metadata, spec, node) {
        return Vec::new();
    }
    let ports = frontends::plan(svc, spec, node, problems);
    if ports.is_empty() {
        // E.g. a Service of the other IP family: its settings are the
        // other family's table's business, problems included.
        return Vec::new();
    }
    let settings = Settings::of(svc, spec, problems);
    let (namespace, name) = namespaced_name(&svc.metadata);
    ports
        .into_iter()
        .flat_map(|port| {
            let eps = index.endpoints(namespace, name, &port.service.port, port.service.protocol);
            port_frontends(&port, &eps, &settings, node)
        })
        .collect()
}

/// The frontends of one Service port: ClusterIP frontends get the backends
/// chosen under internalTrafficPolicy, the others those chosen under
/// externalTrafficPolicy.
fn port_frontends(
    port: &PortFrontends,
    eps: &[endpoints::Endpoint],
    settings: &Settings,
    node: &NodeContext,
) -> Vec<Frontend> {
    let internal = endpoints::select(eps, settings.internal_local, node);
    let external = endpoints::select(eps, settings.external_local, node);
    let source_ranges = load_balancer_source_ranges(port, settings, node);
    // kube-proxy's short-circuit: Pods reaching an external frontend of a
    // Local-policy Service use endpoints anywhere, as ClusterIP traffic does.
    let short_circuit =
        (settings.external_local && !node.cluster_cidrs.is_empty()).then(|| endpoints::select(eps, false, node));
    let shared = Shared { service: &port.service, eps, settings, node };
    port.addresses
        .iter()
        .map(|&(kind, address, number)| {
            let selection = if kind.is_external() { &external } else { &internal };
            let ranges = (kind == FrontendKind::LoadBalancer).then(|| source_ranges.clone()).flatten();
            let in_cluster = short_circuit
                .as_ref()
                .filter(|_| kind.is_external())
                .map(|cluster| Box::new(shared.frontend((kind, address, number), cluster, None)));
            Frontend { in_cluster, ..shared.frontend((kind, address, number), selection, ranges) }
        })
        .collect()
}

/// What every frontend of one Service port shares.
struct Shared<'a> {
    service: &'a ServicePortName,
    eps: &'a [endpoints::Endpoint],
    settings: &'a Settings,
    node: &'a NodeContext,
}

impl Shared<'_> {
    fn frontend(
        &self,
        (kind, address, port): (FrontendKind, std::net::IpAddr, u16),
        selection: &Selection,
        source_ranges: Option<Vec<IpNet>>,
    ) -> Frontend {
        Frontend {
            service: self.service.clone(),
            kind,
            address,
            port,
            backends: selection.backends.clone(),
            draining: endpoints::draining(self.eps, &selection.backends, self.node),
            when_empty: selection.when_empty,
            affinity_timeout_s: self.settings.affinity_timeout_s,
            local_only: selection.local_only,
            source_ranges,
            in_cluster: None,
            balancing: self.settings.balancing_for(kind),
        }
    }
}

/// The source ranges of this port's LoadBalancer frontends. As kube-proxy:
/// when a range contains one of the node's addresses, the load balancer
/// IPs themselves are admitted too, because a node that routes its own
/// requests for an LB IP locally sends them with that IP as source.
fn load_balancer_source_ranges(port: &PortFrontends, settings: &Settings, node: &NodeContext) -> Option<Vec<IpNet>> {
    let mut ranges = settings.source_ranges.clone()?;
    let admits_node = ranges.iter().any(|range| node.node_addresses.iter().any(|ip| range.contains(ip)));
    if admits_node {
        let lb_ips = port.addresses.iter().filter(|(kind, ..)| *kind == FrontendKind::LoadBalancer);
        ranges.extend(lb_ips.map(|(_, ip, _)| IpNet::from(*ip)));
    }
    Some(ranges)
}

/// (namespace, name) of an object; absent fields read as "".
fn namespaced_name(meta: &ObjectMeta) -> (&str, &str) {
    (meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default())
}

fn problem(kind: &'static str, meta: &ObjectMeta, message: String) -> Problem {
    let (namespace, name) = namespaced_name(meta);
    Problem { kind, namespace: namespace.to_owned(), name: name.to_owned(), message }
}

fn service_problem(svc: &Service, message: String) -> Problem {
    problem("Service", &svc.metadata, message)
}

fn slice_problem(slice: &SliceRecord, message: String) -> Problem {
    problem("EndpointSlice", &slice.metadata, message)
}
