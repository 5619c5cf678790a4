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
//! - [`slices`]: EndpointSlices → endpoints, grouped by Service.
//! - [`endpoints`]: endpoints → backends (conditions, traffic policy, topology).
//! - [`claims`]: one owner per (address, port, protocol).

mod claims;
mod endpoints;
mod fields;
mod frontends;
mod service;
mod slices;
#[cfg(test)]
mod tests;

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::model::{Frontend, NodeContext, Problem, ServiceTable};

use self::{endpoints::Selection, frontends::PortFrontends, service::Settings, slices::SliceIndex};

/// Translates the cluster's Services and EndpointSlices into what this
/// node's datapath must serve. Deterministic: the input order does not
/// matter.
pub fn translate(services: &[Service], slices: &[EndpointSlice], node: &NodeContext) -> ServiceTable {
    let mut problems = Vec::new();
    let index = SliceIndex::build(slices, node, &mut problems);
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
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
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
pub use self::slices::owner as slice_owner;

/// All frontends of one Service, with their backends.
fn translate_service(
    svc: &Service,
    index: &SliceIndex,
    node: &NodeContext,
    problems: &mut Vec<Problem>,
) -> Vec<Frontend> {
    let Some(spec) = svc.spec.as_ref() else { return Vec::new() };
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
            port_frontends(port, &eps, &settings, node)
        })
        .collect()
}

/// The frontends of one Service port: ClusterIP frontends get the backends
/// chosen under internalTrafficPolicy, the others those chosen under
/// externalTrafficPolicy.
fn port_frontends(
    port: PortFrontends,
    eps: &[endpoints::Endpoint],
    settings: &Settings,
    node: &NodeContext,
) -> Vec<Frontend> {
    let internal = endpoints::select(eps, settings.internal_local, node);
    let external = endpoints::select(eps, settings.external_local, node);
    port.addresses
        .into_iter()
        .map(|(kind, address, port_number)| {
            let Selection { backends, local_only, when_empty } = if kind.is_external() { &external } else { &internal };
            Frontend {
                service: port.service.clone(),
                kind,
                address,
                port: port_number,
                backends: backends.clone(),
                draining: endpoints::draining(eps, backends),
                when_empty: *when_empty,
                affinity_timeout_s: settings.affinity_timeout_s,
                local_only: *local_only,
                balancing: settings.balancing_for(kind),
            }
        })
        .collect()
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

fn slice_problem(slice: &EndpointSlice, message: String) -> Problem {
    problem("EndpointSlice", &slice.metadata, message)
}
