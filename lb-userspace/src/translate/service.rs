//! Which Services this node proxies, and the settings all ports of a
//! Service share (traffic policies, session affinity).

use k8s_openapi::{
    api::core::v1::{Service, ServiceSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use ipnet::IpNet;

use super::service_problem;
use crate::model::{Balancing, FrontendKind, NodeContext, Problem};

const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Marks headless Services' objects, which kube-proxy does not watch.
pub(super) const HEADLESS: &str = "service.kubernetes.io/headless";
/// Chooses a Service's balancing: `maglev` or `hash` (see `Balancing`).
pub(super) const LOAD_BALANCING: &str = "lb.kubernetes.io/load-balancing";
/// Kubernetes' default for `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// Whether this node load-balances the Service at all. Headless Services,
/// Services without an allocated cluster IP and ExternalName Services have
/// nothing to balance (kube-proxy skips them the same way, silently, in
/// ShouldSkipService); a Service labelled headless is skipped as kube-proxy's
/// informers skip it.
pub(super) fn is_proxied(meta: &ObjectMeta, spec: &ServiceSpec, node: &NodeContext) -> bool {
    let has_cluster_ip = cluster_ips(spec).first().is_some_and(|ip| *ip != "None");
    let labelled_headless = meta.labels.as_ref().is_some_and(|labels| labels.contains_key(HEADLESS));
    belongs_to_us(meta, node) && !labelled_headless && has_cluster_ip && spec.type_.as_deref() != Some("ExternalName")
}

/// Which proxy an object belongs to, by its `service-proxy-name` label:
/// an unlabelled object belongs to the cluster's default proxy, a labelled
/// one to the proxy of that name. Without a proxy name we are the default
/// proxy and serve exactly what kube-proxy serves (unlabelled objects
/// only); with one we serve only objects labelled with it, so the default
/// proxy and we never both program a Service. Applies to EndpointSlices
/// too, which inherit the label.
pub(super) fn belongs_to_us(meta: &ObjectMeta, node: &NodeContext) -> bool {
    let label = meta.labels.as_ref().and_then(|labels| labels.get(SERVICE_PROXY_NAME));
    label.map(String::as_str) == node.proxy_name.as_deref()
}

/// `spec.clusterIPs`, or the older single `spec.clusterIP` when the list is
/// absent; empty strings mean "not allocated".
pub(super) fn cluster_ips(spec: &ServiceSpec) -> Vec<&str> {
    let ips: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    ips.into_iter().filter(|ip| !ip.is_empty()).collect()
}

/// Per-Service settings shared by all its ports. Topology is not among
/// them: it follows the endpoints' hints (see `endpoints`).
#[derive(Debug)]
pub(super) struct Settings {
    /// internalTrafficPolicy is `Local`: ClusterIP frontends use only this
    /// node's endpoints.
    pub internal_local: bool,
    /// externalTrafficPolicy is `Local`: NodePort, external IP and
    /// LoadBalancer frontends use only this node's endpoints.
    pub external_local: bool,
    pub affinity_timeout_s: Option<u32>,
    /// `loadBalancerSourceRanges`, parsed (see [`source_ranges`]).
    pub source_ranges: Option<Vec<IpNet>>,
    /// The `LOAD_BALANCING` annotation, when set to a known value.
    pub balancing: Option<Balancing>,
}

impl Settings {
    /// publishNotReadyAddresses is not read here: the EndpointSlice
    /// controller already marks those endpoints ready, and kube-proxy takes
    /// a slice's conditions at their word.
    pub(super) fn of(svc: &Service, spec: &ServiceSpec, problems: &mut Vec<Problem>) -> Self {
        Settings {
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            affinity_timeout_s: affinity_timeout_s(svc, spec, problems),
            source_ranges: source_ranges(svc, spec, problems),
            balancing: balancing(svc, problems),
        }
    }

    /// The annotation's choice, else Maglev for the frontends traffic from
    /// outside reaches (NodePort, externalIP, LoadBalancer: an outside
    /// load balancer may send a flow's packets to any node, and all nodes
    /// must pick the same backend) and the slot hash for ClusterIPs.
    pub(super) fn balancing_for(&self, kind: FrontendKind) -> Balancing {
        self.balancing.unwrap_or(if kind.is_external() { Balancing::Maglev } else { Balancing::Hash })
    }
}

/// The `LOAD_BALANCING` annotation; an unknown value is reported and
/// ignored (each frontend keeps its default).
fn balancing(svc: &Service, problems: &mut Vec<Problem>) -> Option<Balancing> {
    let value = svc.metadata.annotations.as_ref()?.get(LOAD_BALANCING)?;
    match value.as_str() {
        "maglev" => Some(Balancing::Maglev),
        "hash" => Some(Balancing::Hash),
        other => {
            let message = format!("annotation {LOAD_BALANCING}: {other:?} is neither \"maglev\" nor \"hash\"; ignored");
            problems.push(service_problem(svc, message));
            None
        }
    }
}

/// `sessionAffinity: ClientIP` → its timeout; a nonsensical timeout is
/// reported and replaced by the default rather than disabling affinity.
fn affinity_timeout_s(svc: &Service, spec: &ServiceSpec, problems: &mut Vec<Problem>) -> Option<u32> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let configured =
        spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
    let Some(seconds) = configured else {
        return Some(DEFAULT_AFFINITY_TIMEOUT_S);
    };
    match u32::try_from(seconds) {
        Ok(seconds) if seconds > 0 => Some(seconds),
        _ => {
            let field = "sessionAffinityConfig.clientIP.timeoutSeconds";
            let message = format!("{field} {seconds} must be positive; using {DEFAULT_AFFINITY_TIMEOUT_S}");
            problems.push(service_problem(svc, message));
            Some(DEFAULT_AFFINITY_TIMEOUT_S)
        }
    }
}

/// `loadBalancerSourceRanges` → the ranges a LoadBalancer frontend admits;
/// `None` when the list is absent or empty (every source admitted), as
/// kube-proxy reads it. Entries are trimmed, as kube-proxy does. An entry
/// that is not a CIDR is reported and admits nothing: a typo in an
/// allow-list must never open the Service to everyone.
fn source_ranges(svc: &Service, spec: &ServiceSpec, problems: &mut Vec<Problem>) -> Option<Vec<IpNet>> {
    let entries = spec.load_balancer_source_ranges.as_deref().unwrap_or_default();
    if entries.is_empty() {
        return None;
    }
    let mut ranges = Vec::new();
    for entry in entries {
        match entry.trim().parse::<IpNet>() {
            Ok(range) => ranges.push(range.trunc()),
            Err(_) => problems.push(service_problem(
                svc,
                format!("loadBalancerSourceRanges entry {entry:?} is not a CIDR; it admits no source"),
            )),
        }
    }
    Some(ranges)
}
