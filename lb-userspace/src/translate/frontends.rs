//! Service → the (kind, address, port) frontends of each of its ports.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};

use super::{fields, service, service_problem};
use crate::model::{FrontendKind, IpFamily, NodeContext, Problem, Protocol, ServicePortName};

/// The frontends of one Service port, before backends are attached.
#[derive(Debug)]
pub(super) struct PortFrontends {
    pub service: ServicePortName,
    /// (kind, address, port) of every frontend of this Service port.
    pub addresses: Vec<(FrontendKind, IpAddr, u16)>,
}

/// One entry per valid Service port; invalid ports and addresses are
/// reported and left out without affecting the rest of the Service. Only
/// addresses of the family the table is built for are used, as each of
/// kube-proxy's per-family proxiers does; a Service without a cluster IP
/// of that family has no frontends here.
pub(super) fn plan(
    svc: &Service,
    spec: &ServiceSpec,
    node: &NodeContext,
    problems: &mut Vec<Problem>,
) -> Vec<PortFrontends> {
    let addresses = Addresses::of(svc, spec, node.family, problems);
    if addresses.cluster.is_empty() {
        if addresses.other_family_cluster && node.family == IpFamily::V4 && !node.dual_stack {
            problems.push(service_problem(
                svc,
                "IPv6-only Service: this node context builds the IPv4 table only; skipped".into(),
            ));
        }
        return Vec::new();
    }
    let node_addresses = of_family(node.node_addresses.iter().copied(), node.family);
    let ports = spec.ports.as_deref().unwrap_or_default();
    ports.iter().filter_map(|port| port_frontends(svc, spec, port, &addresses, &node_addresses, problems)).collect()
}

/// The Service-wide addresses of one family, parsed once so each bad one
/// is reported once.
#[derive(Debug, Default)]
struct Addresses {
    cluster: Vec<IpAddr>,
    external: Vec<IpAddr>,
    load_balancer: Vec<IpAddr>,
    /// The Service has a cluster IP of the other family, which the other
    /// family's table serves.
    other_family_cluster: bool,
}

impl Addresses {
    fn of(svc: &Service, spec: &ServiceSpec, family: IpFamily, problems: &mut Vec<Problem>) -> Self {
        let mut parse = |values: Vec<&str>, what: &str| -> Vec<IpAddr> {
            let parsed = values.into_iter().map(|value| fields::address(value, what));
            parsed.filter_map(|result| result.map_err(|e| problems.push(service_problem(svc, e))).ok()).collect()
        };
        let cluster = parse(service::cluster_ips(spec), "cluster IP");
        let external = parse(spec.external_ips.iter().flatten().map(String::as_str).collect(), "external IP");
        let load_balancer = parse(load_balancer_ips(svc), "load balancer IP");
        Addresses {
            other_family_cluster: cluster.iter().any(|ip| IpFamily::of(*ip) != family),
            cluster: of_family(cluster, family),
            external: of_family(external, family),
            load_balancer: of_family(load_balancer, family),
        }
    }
}

fn of_family(addresses: impl IntoIterator<Item = IpAddr>, family: IpFamily) -> Vec<IpAddr> {
    addresses.into_iter().filter(|address| IpFamily::of(*address) == family).collect()
}

/// The load balancer IPs to serve, read as kube-proxy's newBaseServiceInfo
/// reads them: every `status.loadBalancer.ingress` entry with an `ip`,
/// whatever `spec.type` says (the API server clears the status when a
/// Service stops being a LoadBalancer), and never `spec.loadBalancerIP`,
/// which is only a request to the cloud provider. Entries with `ipMode`
/// other than VIP (i.e. Proxy) are left out: that load balancer delivers
/// its traffic to the nodes itself, so claiming its IP here would
/// short-cut it.
fn load_balancer_ips(svc: &Service) -> Vec<&str> {
    let status = svc.status.as_ref().and_then(|status| status.load_balancer.as_ref());
    let ingress = status.and_then(|lb| lb.ingress.as_deref()).unwrap_or_default();
    ingress
        .iter()
        .filter(|ingress| ingress.ip_mode.as_deref().is_none_or(|mode| mode == "VIP"))
        .filter_map(|ingress| ingress.ip.as_deref())
        .filter(|ip| !ip.is_empty())
        .collect()
}

fn port_frontends(
    svc: &Service,
    spec: &ServiceSpec,
    port: &ServicePort,
    addresses: &Addresses,
    node_addresses: &[IpAddr],
    problems: &mut Vec<Problem>,
) -> Option<PortFrontends> {
    let reject = |problems: &mut Vec<Problem>, error: String| {
        problems.push(service_problem(svc, format!("port {}: {error}; port skipped", port_label(port))));
    };
    let protocol = fields::protocol(port.protocol.as_deref()).map_err(|e| reject(problems, e)).ok()?;
    if protocol == Protocol::Sctp {
        // The datapath passes SCTP through untouched: a frontend would
        // claim the port without balancing it.
        reject(problems, "SCTP is not served by this datapath yet".to_owned());
        return None;
    }
    let number = fields::port(port.port).map_err(|e| reject(problems, e)).ok()?;
    let mut frontends: Vec<_> = at(FrontendKind::ClusterIp, &addresses.cluster, number).collect();
    if let Some(node_port) = node_port(svc, spec, port, problems) {
        frontends.extend(at(FrontendKind::NodePort, node_addresses, node_port));
    }
    frontends.extend(at(FrontendKind::ExternalIp, &addresses.external, number));
    frontends.extend(at(FrontendKind::LoadBalancer, &addresses.load_balancer, number));
    let (namespace, name) = super::namespaced_name(&svc.metadata);
    let service = ServicePortName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port: port.name.clone().unwrap_or_default(),
        protocol,
    };
    Some(PortFrontends { service, addresses: frontends })
}

/// One frontend of `kind` on each of `addresses`.
fn at(kind: FrontendKind, addresses: &[IpAddr], port: u16) -> impl Iterator<Item = (FrontendKind, IpAddr, u16)> + '_ {
    addresses.iter().map(move |address| (kind, *address, port))
}

/// The port's NodePort, for the Service types that have one. 0 is the
/// API's "none" (e.g. `allocateLoadBalancerNodePorts: false`); a bad value
/// drops only the NodePort frontends of this port.
fn node_port(svc: &Service, spec: &ServiceSpec, port: &ServicePort, problems: &mut Vec<Problem>) -> Option<u16> {
    if !matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
        return None;
    }
    let value = port.node_port.filter(|value| *value != 0)?;
    let label = port_label(port);
    fields::port(value)
        .map_err(|e| problems.push(service_problem(svc, format!("port {label}: nodePort: {e}; NodePort skipped"))))
        .ok()
}

/// How messages name a Service port: its name, or its number if unnamed.
fn port_label(port: &ServicePort) -> String {
    match port.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{name:?}"),
        _ => port.port.to_string(),
    }
}
