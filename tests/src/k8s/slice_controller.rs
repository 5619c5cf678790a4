//! The EndpointSlice controller's translation of a Service and the Pods its
//! selector matches into EndpointSlices, rule by rule, so a test's slices
//! look exactly like a cluster's:
//!
//! - each Pod becomes one endpoint: its address, `nodeName`, the zone of
//!   its Node, a `targetRef` to the Pod, and conditions from its state
//!   (`ready` only when ready and not terminating, unless the Service
//!   publishes not-ready addresses; `serving` when ready; `terminating`
//!   while being deleted);
//! - each Service port whose target the Pod has becomes a slice port named
//!   as the Service port (`""` when unnamed), with the Pod's port number;
//!   Pods are grouped into slices by that port list, at most
//!   [`MAX_ENDPOINTS_PER_SLICE`] to a slice;
//! - a Service without Pods gets one empty placeholder slice;
//! - labels: `kubernetes.io/service-name`, `endpointslice.kubernetes.io/managed-by`,
//!   the Service's own labels, and `service.kubernetes.io/headless` for a
//!   headless Service; the `endpoints.kubernetes.io/last-change-trigger-time`
//!   annotation; the Service as owner;
//! - `trafficDistribution: PreferClose` or `PreferSameZone` gives every
//!   ready endpoint with a zone a hint for its own zone; `PreferSameNode`
//!   gives it that zone hint and a hint for its own node (`nodeName`);
//!   other endpoints get no hints;
//! - an ExternalName Service, or one without a selector, has no slices
//!   from the controller.
//!
//! Mirrors `k8s.io/endpointslice` (`reconciler.go`, `utils.go`:
//! `podToEndpoint`, `getEndpointPorts`, `setEndpointSliceLabels`;
//! `trafficdist/trafficdist.go`) and `pkg/controller/endpointslice`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde_json::{Value, json};

use super::{NAMESPACE, Protocol, Service, ServiceType, TargetPort};

/// The controller's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A Pod the Service's selector matches, as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: String,
    /// Its Node's `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// The Pod's Ready condition.
    pub ready: bool,
    /// Being deleted (a deletion timestamp is set).
    pub terminating: bool,
    /// Named container ports, for Services that target a port by name.
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// A ready Pod.
    pub fn new(name: &str, ip: Ipv4Addr, node: &str, zone: Option<&str>) -> Self {
        Self {
            name: name.to_owned(),
            ip,
            node: node.to_owned(),
            zone: zone.map(str::to_owned),
            ready: true,
            terminating: false,
            ports: Vec::new(),
        }
    }

    /// Its readiness probe fails.
    pub fn not_ready(mut self) -> Self {
        self.ready = false;
        self
    }

    /// Deleted, still within its grace period (and still passing its
    /// readiness probe: a serving terminating endpoint).
    pub fn terminating(mut self) -> Self {
        self.terminating = true;
        self
    }

    pub fn container_port(mut self, name: &str, port: u16, protocol: Protocol) -> Self {
        self.ports.push(ContainerPort { name: name.to_owned(), port, protocol });
        self
    }

    /// `podutil.FindPort`: a numbered target as is, a named one from the
    /// Pod's container ports of the same protocol.
    fn find_port(&self, target: &TargetPort, protocol: Protocol) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => {
                self.ports.iter().find(|p| &p.name == name && p.protocol == protocol).map(|p| p.port)
            }
        }
    }
}

/// One slice port: name, number, protocol.
type SlicePort = (String, u16, Protocol);

fn endpoint_ports(service: &Service, pod: &Pod) -> Vec<SlicePort> {
    service
        .ports
        .iter()
        .filter_map(|sp| pod.find_port(&sp.target, sp.protocol).map(|port| (sp.name.clone(), port, sp.protocol)))
        .collect()
}

/// One endpoint of a slice, for a Pod.
pub(super) fn endpoint(service: &Service, pod: &Pod) -> Value {
    // "ready" is never true for a terminating Pod unless the Service
    // publishes not-ready addresses.
    let ready = service.publish_not_ready_addresses || (pod.ready && !pod.terminating);
    let mut out = json!({
        "addresses": [pod.ip.to_string()],
        "conditions": {"ready": ready, "serving": pod.ready, "terminating": pod.terminating},
        "nodeName": pod.node,
        "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": pod.name},
    });
    if let Some(zone) = &pod.zone {
        out["zone"] = zone.clone().into();
    }
    if let Some(hints) = hints(service, pod, ready) {
        out["hints"] = hints;
    }
    out
}

/// `trafficdist.preferCloseHeuristic.update`: for the three "close"
/// distributions, a ready endpoint is hinted to its own zone when it has
/// one and, for `PreferSameNode` only, to its own node; any other endpoint
/// (not ready, or of a Service without such a distribution) has no hints.
fn hints(service: &Service, pod: &Pod, ready: bool) -> Option<Value> {
    let node_hints = match service.traffic_distribution.as_deref() {
        Some("PreferClose" | "PreferSameZone") => false,
        Some("PreferSameNode") => true,
        _ => return None,
    };
    if !ready {
        return None;
    }
    let mut hints = serde_json::Map::new();
    if let Some(zone) = &pod.zone {
        hints.insert("forZones".into(), json!([{"name": zone}]));
    }
    // A scheduled Pod always has a node name.
    if node_hints && !pod.node.is_empty() {
        hints.insert("forNodes".into(), json!([{"name": pod.node}]));
    }
    (!hints.is_empty()).then_some(Value::Object(hints))
}

/// The EndpointSlices the controller keeps for `service` (whose uid is
/// `service_uid`) and the Pods its selector matches, stamped with
/// `trigger_time` (RFC 3339) as the time of the change that caused them.
pub fn endpoint_slices(service: &Service, service_uid: &str, pods: &[Pod], trigger_time: &str) -> Vec<Value> {
    if !service.has_selector || matches!(service.type_, ServiceType::ExternalName(_)) {
        return Vec::new();
    }
    let mut groups: BTreeMap<Vec<SlicePort>, Vec<Value>> = BTreeMap::new();
    for pod in pods {
        groups.entry(endpoint_ports(service, pod)).or_default().push(endpoint(service, pod));
    }
    let slice = |key: &str, ports: Value, endpoints: Value| {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name(&service.name, key),
                "generateName": format!("{}-", service.name),
                "namespace": NAMESPACE,
                "labels": labels(service),
                "annotations": {TRIGGER_TIME: trigger_time},
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Service", "name": service.name, "uid": service_uid,
                    "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        })
    };
    if groups.is_empty() {
        // The placeholder: the controller writes nil lists, which the API
        // server serves as null.
        return vec![slice("placeholder", Value::Null, Value::Null)];
    }
    let mut slices = Vec::new();
    for (ports, endpoints) in groups {
        let ports_json: Vec<Value> = ports
            .iter()
            .map(|(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol.as_str()}))
            .collect();
        for (i, chunk) in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE).enumerate() {
            let key = format!("{ports:?}/{i}");
            slices.push(slice(&key, Value::from(ports_json.clone()), Value::from(chunk.to_vec())));
        }
    }
    slices
}

fn labels(service: &Service) -> Value {
    let mut labels: BTreeMap<String, String> = service.labels.clone();
    labels.insert("kubernetes.io/service-name".into(), service.name.clone());
    labels.insert("endpointslice.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    if service.cluster_ip.is_none() {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    } else {
        labels.remove("service.kubernetes.io/headless");
    }
    json!(labels)
}

/// `<service>-<5 characters>`, as the API server's `generateName` makes
/// them; stable for one port list and chunk, so a changed endpoint set
/// updates the same slice in place, as the controller does.
fn slice_name(service: &str, key: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    // FNV-1a: any stable hash will do.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in service.bytes().chain(key.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let suffix: String =
        (0..5).map(|i| char::from(ALPHABET[((hash >> (i * 8)) % ALPHABET.len() as u64) as usize])).collect();
    format!("{service}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::ServicePort;

    fn pod(i: u8) -> Pod {
        Pod::new(&format!("pod{i}"), Ipv4Addr::new(10, 244, 1, i), "node-1", Some("zone-a"))
    }

    fn web() -> Service {
        Service::cluster_ip("web", Ipv4Addr::new(10, 96, 1, 1)).port(ServicePort::tcp(80, 8080).named("http"))
    }

    #[test]
    fn a_service_without_pods_gets_one_empty_placeholder() {
        let slices = endpoint_slices(&web(), "uid", &[], "2026-01-01T00:00:00Z");
        assert_eq!(slices.len(), 1);
        assert!(slices[0]["endpoints"].is_null() && slices[0]["ports"].is_null());
        assert_eq!(slices[0]["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        assert_eq!(slices[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"], MANAGED_BY);
    }

    #[test]
    fn at_most_a_hundred_endpoints_a_slice() {
        let pods: Vec<Pod> = (0..=250u16)
            .map(|i| Pod::new(&format!("p{i}"), Ipv4Addr::from(0x0af5_0000 + u32::from(i)), "node-1", None))
            .collect();
        let slices = endpoint_slices(&web(), "uid", &pods, "t");
        let sizes: Vec<usize> = slices.iter().map(|s| s["endpoints"].as_array().unwrap().len()).collect();
        assert_eq!(sizes, [100, 100, 51]);
        let names: std::collections::BTreeSet<&str> =
            slices.iter().map(|s| s["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names.len(), 3, "distinct names");
    }

    #[test]
    fn pods_with_different_named_ports_go_to_different_slices() {
        let svc = Service::cluster_ip("multi", Ipv4Addr::new(10, 96, 1, 2))
            .port(ServicePort::tcp(80, 0).named("portname1").target_name("svc1"))
            .port(ServicePort::tcp(81, 0).named("portname2").target_name("svc2"));
        let pods =
            [pod(1).container_port("svc1", 100, Protocol::Tcp), pod(2).container_port("svc2", 101, Protocol::Tcp)];
        let slices = endpoint_slices(&svc, "uid", &pods, "t");
        let ports: Vec<Value> = slices.iter().map(|s| s["ports"].clone()).collect();
        assert!(ports.contains(&json!([{"name": "portname1", "port": 100, "protocol": "TCP"}])));
        assert!(ports.contains(&json!([{"name": "portname2", "port": 101, "protocol": "TCP"}])));
    }

    #[test]
    fn conditions_follow_the_pod() {
        let svc = web();
        let conditions = |p: Pod| endpoint(&svc, &p)["conditions"].clone();
        assert_eq!(conditions(pod(1)), json!({"ready": true, "serving": true, "terminating": false}));
        assert_eq!(conditions(pod(1).not_ready()), json!({"ready": false, "serving": false, "terminating": false}));
        assert_eq!(conditions(pod(1).terminating()), json!({"ready": false, "serving": true, "terminating": true}));
    }

    #[test]
    fn prefer_close_hints_ready_endpoints_to_their_own_zone() {
        let svc = web().traffic_distribution("PreferClose");
        assert_eq!(endpoint(&svc, &pod(1))["hints"], json!({"forZones": [{"name": "zone-a"}]}));
        assert!(endpoint(&svc, &pod(1).terminating()).get("hints").is_none());
        assert!(endpoint(&web(), &pod(1)).get("hints").is_none());
    }

    #[test]
    fn prefer_same_zone_hints_as_prefer_close() {
        let svc = web().traffic_distribution("PreferSameZone");
        assert_eq!(endpoint(&svc, &pod(1))["hints"], json!({"forZones": [{"name": "zone-a"}]}));
        assert!(endpoint(&svc, &pod(1).not_ready()).get("hints").is_none());
    }

    #[test]
    fn prefer_same_node_hints_ready_endpoints_to_their_node_and_zone() {
        let svc = web().traffic_distribution("PreferSameNode");
        assert_eq!(
            endpoint(&svc, &pod(1))["hints"],
            json!({"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "node-1"}]})
        );
        assert!(endpoint(&svc, &pod(1).terminating()).get("hints").is_none());
        assert!(endpoint(&svc, &pod(1).not_ready()).get("hints").is_none());
    }

    #[test]
    fn an_endpoint_without_a_zone_gets_only_what_it_can_be_hinted_to() {
        let zoneless = Pod::new("pod9", Ipv4Addr::new(10, 244, 1, 9), "node-1", None);
        let same_node = web().traffic_distribution("PreferSameNode");
        assert_eq!(endpoint(&same_node, &zoneless)["hints"], json!({"forNodes": [{"name": "node-1"}]}));
        for distribution in ["PreferClose", "PreferSameZone"] {
            let svc = web().traffic_distribution(distribution);
            assert!(endpoint(&svc, &zoneless).get("hints").is_none(), "{distribution}");
        }
    }

    #[test]
    fn an_unknown_distribution_gives_no_hints() {
        let svc = web().traffic_distribution("PreferSomewhereElse");
        assert!(endpoint(&svc, &pod(1)).get("hints").is_none());
    }

    #[test]
    fn headless_and_proxy_name_labels_reach_the_slices() {
        let svc = Service::headless("db").label("service.kubernetes.io/service-proxy-name", "other");
        let labels = &endpoint_slices(&svc, "uid", &[pod(1)], "t")[0]["metadata"]["labels"];
        assert_eq!(labels["service.kubernetes.io/headless"], "");
        assert_eq!(labels["service.kubernetes.io/service-proxy-name"], "other");
    }

    #[test]
    fn external_name_services_have_no_slices() {
        let svc = web().with_type(ServiceType::ExternalName("example.com".into()));
        assert!(endpoint_slices(&svc, "uid", &[pod(1)], "t").is_empty());
    }
}
