//! Traffic policies, topology-aware routing and session affinity.

use serde_json::json;

use super::*;
use crate::model::WhenEmpty;

/// Ready endpoints on node-a (10.244.1.x) and node-b (10.244.2.x).
fn spread_slice() -> Value {
    web_slice("web-abc12", &[ready("10.244.1.5", "node-a"), ready("10.244.2.7", "node-b")])
}

const CLUSTER_IP: (&str, u16) = ("10.96.0.10", 80);
const NODE_PORT: (&str, u16) = ("192.168.0.10", 30080);

fn at<'a>(table: &'a ServiceTable, (address, port): (&str, u16)) -> &'a Frontend {
    frontend(table, address, port, Protocol::Tcp)
}

#[test]
fn internal_traffic_policy_local_keeps_node_local_endpoints() {
    let mut svc = web_node_port_service();
    svc["spec"]["internalTrafficPolicy"] = json!("Local");
    let table = run(&[svc], &[spread_slice()]);
    let cluster_ip = at(&table, CLUSTER_IP);
    assert_eq!(backends(cluster_ip), ["10.244.1.5:8080"]);
    assert!(cluster_ip.local_only);
    // NodePort follows externalTrafficPolicy, still Cluster.
    let node_port = at(&table, NODE_PORT);
    assert_eq!(backends(node_port), ["10.244.1.5:8080", "10.244.2.7:8080"]);
    assert!(!node_port.local_only);
}

#[test]
fn external_traffic_policy_local_keeps_node_local_endpoints() {
    let mut svc = web_node_port_service();
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    svc["spec"]["externalIPs"] = json!(["203.0.113.7"]);
    svc["status"]["loadBalancer"]["ingress"] = json!([{"ip": "198.51.100.1", "ipMode": "VIP"}]);
    let table = run(&[svc], &[spread_slice()]);
    for external in [NODE_PORT, ("203.0.113.7", 80), ("198.51.100.1", 80)] {
        let frontend = at(&table, external);
        assert_eq!(backends(frontend), ["10.244.1.5:8080"], "{external:?}");
        assert!(frontend.local_only, "{external:?}");
    }
    let cluster_ip = at(&table, CLUSTER_IP);
    assert_eq!(backends(cluster_ip), ["10.244.1.5:8080", "10.244.2.7:8080"]);
    assert!(!cluster_ip.local_only);
}

/// kube-proxy's short-circuit: with the Pod CIDRs known, Pods reaching an
/// external frontend of a Local-policy Service get endpoints anywhere.
#[test]
fn external_traffic_policy_local_gives_pods_the_cluster_wide_endpoints_when_pod_cidrs_are_known() {
    let mut svc = web_node_port_service();
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    let pods_known = NodeContext { cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()], ..node() };
    let table = run_on(&pods_known, &[svc.clone()], &[spread_slice()]);
    let node_port = at(&table, NODE_PORT);
    assert_eq!(backends(node_port), ["10.244.1.5:8080"], "outside traffic: this node's endpoints");
    let in_cluster = node_port.in_cluster.as_ref().expect("an in-cluster entry");
    assert_eq!(backends(in_cluster), ["10.244.1.5:8080", "10.244.2.7:8080"], "Pod traffic: every endpoint");
    assert!(!in_cluster.local_only && in_cluster.in_cluster.is_none());
    assert!(at(&table, CLUSTER_IP).in_cluster.is_none(), "ClusterIPs follow internalTrafficPolicy only");

    let table = run(&[svc], &[spread_slice()]);
    assert!(at(&table, NODE_PORT).in_cluster.is_none(), "without Pod CIDRs, Pod traffic is not told apart");
}

#[test]
fn external_traffic_policy_cluster_needs_no_in_cluster_entry() {
    let pods_known = NodeContext { cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()], ..node() };
    let table = run_on(&pods_known, &[web_node_port_service()], &[spread_slice()]);
    assert!(at(&table, NODE_PORT).in_cluster.is_none());
}

#[test]
fn local_policy_falls_back_to_local_serving_terminating_endpoints() {
    // A ready endpoint elsewhere does not stop the fallback: under Local
    // only this node's endpoints are candidates.
    let mut svc = web_node_port_service();
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    let slice = web_slice(
        "web-abc12",
        &[
            ready("10.244.2.7", "node-b"),
            serving_terminating("10.244.1.4", "node-a"),
            serving_terminating("10.244.2.8", "node-b"),
        ],
    );
    let table = run(&[svc], &[slice]);
    assert_eq!(backends(at(&table, NODE_PORT)), ["10.244.1.4:8080 terminating"]);
    assert_eq!(backends(at(&table, CLUSTER_IP)), ["10.244.2.7:8080"]);
}

#[test]
fn local_policy_without_local_endpoints_has_no_backends() {
    let mut svc = web_service();
    svc["spec"]["internalTrafficPolicy"] = json!("Local");
    let slice = web_slice("web-abc12", &[ready("10.244.2.7", "node-b")]);
    let table = run(&[svc], &[slice]);
    assert!(at(&table, CLUSTER_IP).backends.is_empty());
    assert!(at(&table, CLUSTER_IP).local_only);
}

/// kube-proxy: endpointslicecache.go isLocal — with no (or an empty) node
/// name no endpoint is local, not even one without a nodeName.
#[test]
fn local_policy_with_unknown_node_name_selects_nothing() {
    let mut svc = web_service();
    svc["spec"]["internalTrafficPolicy"] = json!("Local");
    let mut nameless = web_slice("web-def34", &[ready("10.244.3.3", "node-c"), ready("10.244.3.4", "node-c")]);
    nameless["endpoints"][0].as_object_mut().unwrap().remove("nodeName");
    nameless["endpoints"][1]["nodeName"] = json!("");
    for node_name in [None, Some(String::new())] {
        let nodes = NodeContext { node_name, ..node() };
        let table = run_on(&nodes, &[svc.clone()], &[spread_slice(), nameless.clone()]);
        assert!(at(&table, CLUSTER_IP).backends.is_empty(), "{:?}", at(&table, CLUSTER_IP).backends);
    }
}

/// kube-proxy: nftables/proxier.go syncProxyRules — a Local policy that
/// leaves no endpoint here while the Service has ready ones elsewhere gets
/// the "drop" filter verdict, for internal and external traffic alike.
#[test]
fn local_policy_without_local_endpoints_drops() {
    let mut svc = web_node_port_service();
    svc["spec"]["internalTrafficPolicy"] = json!("Local");
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    let table = run(&[svc], &[web_slice("web-abc12", &[ready("10.244.2.7", "node-b")])]);
    for frontend in [CLUSTER_IP, NODE_PORT] {
        assert!(at(&table, frontend).backends.is_empty(), "{frontend:?}");
        assert_eq!(at(&table, frontend).when_empty, WhenEmpty::Drop, "{frontend:?}");
    }
}

/// kube-proxy: topology.go CategorizeEndpoints hasAnyEndpoints — a
/// serving-terminating endpoint elsewhere also counts as "the Service has
/// endpoints", so a Local frontend drops rather than rejects.
#[test]
fn local_policy_with_only_terminating_endpoints_elsewhere_drops() {
    let mut svc = web_service();
    svc["spec"]["internalTrafficPolicy"] = json!("Local");
    let table = run(&[svc], &[web_slice("web-abc12", &[serving_terminating("10.244.2.7", "node-b")])]);
    assert!(at(&table, CLUSTER_IP).backends.is_empty());
    assert_eq!(at(&table, CLUSTER_IP).when_empty, WhenEmpty::Drop);
}

/// kube-proxy: nftables/proxier.go syncProxyRules — a Service with no usable
/// endpoint anywhere gets the "reject" verdict on every frontend, Local or
/// not; not-ready and non-serving terminating endpoints do not count.
#[test]
fn no_usable_endpoint_anywhere_rejects() {
    let mut svc = web_node_port_service();
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    let gone = endpoint("10.244.2.8", "node-b", &json!({"ready": false, "serving": false, "terminating": true}));
    let table = run(&[svc], &[web_slice("web-abc12", &[not_ready("10.244.2.7", "node-b"), gone])]);
    for frontend in [CLUSTER_IP, NODE_PORT] {
        assert!(at(&table, frontend).backends.is_empty(), "{frontend:?}");
        assert_eq!(at(&table, frontend).when_empty, WhenEmpty::Reject, "{frontend:?}");
    }
}

/// web with topology-aware routing requested by `trafficDistribution`, as
/// the EndpointSlice controller needs before it writes hints.
fn prefer_close_service() -> Value {
    let mut svc = web_node_port_service();
    svc["spec"]["trafficDistribution"] = json!("PreferClose");
    svc
}

/// An endpoint on `node` hinted for `zones`.
fn hinted(ip: &str, node: &str, zones: &[&str]) -> Value {
    let mut ep = ready(ip, node);
    let for_zones: Vec<Value> = zones.iter().map(|zone| json!({"name": zone})).collect();
    ep["hints"] = json!({"forZones": for_zones});
    ep
}

/// An endpoint on `node` in `zone`, hinted for both, as the controller
/// writes them for `trafficDistribution: PreferSameNode`.
fn node_hinted(ip: &str, node: &str, zone: &str) -> Value {
    let mut ep = ready(ip, node);
    ep["zone"] = json!(zone);
    ep["hints"] = json!({"forNodes": [{"name": node}], "forZones": [{"name": zone}]});
    ep
}

fn hinted_slice() -> Value {
    web_slice(
        "web-abc12",
        &[
            hinted("10.244.1.5", "node-a", &["zone-a"]),
            hinted("10.244.1.6", "node-a2", &["zone-a"]),
            hinted("10.244.2.7", "node-b", &["zone-b"]),
        ],
    )
}

/// kube-proxy: topology.go topologyModeFromHints / availableForTopology —
/// complete zone hints covering this node's zone keep the endpoints
/// hinted for it.
#[test]
fn topology_zone_hints_keep_same_zone_endpoints() {
    let table = run(&[prefer_close_service()], &[hinted_slice()]);
    assert_eq!(backends(at(&table, CLUSTER_IP)), ["10.244.1.5:8080", "10.244.1.6:8080"]);
    assert_eq!(backends(at(&table, NODE_PORT)), ["10.244.1.5:8080", "10.244.1.6:8080"]);
    assert!(!at(&table, CLUSTER_IP).local_only);
}

/// kube-proxy: topology.go topologyModeFromHints — the mode comes from the
/// hints alone, not from the Service's annotation or trafficDistribution
/// (e.g. hints still present while the controller catches up with a
/// Service that stopped asking, or written by another controller).
#[test]
fn topology_hints_followed_whatever_the_service_asks() {
    let mut disabled = web_service();
    disabled["metadata"]["annotations"] = json!({"service.kubernetes.io/topology-mode": "Disabled"});
    for svc in [web_service(), disabled] {
        let table = run(&[svc], &[hinted_slice()]);
        assert_eq!(backends(at(&table, CLUSTER_IP)), ["10.244.1.5:8080", "10.244.1.6:8080"]);
    }
}

/// kube-proxy: topology.go topologyModeFromHints — node hints (PreferSameNode)
/// come before zone hints.
#[test]
fn topology_node_hints_keep_this_nodes_endpoints() {
    let mut svc = web_node_port_service();
    svc["spec"]["trafficDistribution"] = json!("PreferSameNode");
    let slice = web_slice(
        "web-abc12",
        &[
            node_hinted("10.244.1.5", "node-a", "zone-a"),
            node_hinted("10.244.1.6", "node-a2", "zone-a"),
            node_hinted("10.244.2.7", "node-b", "zone-b"),
        ],
    );
    let table = run(&[svc], &[slice]);
    assert_eq!(backends(at(&table, CLUSTER_IP)), ["10.244.1.5:8080"]);
    assert!(!at(&table, CLUSTER_IP).local_only);
}

/// kube-proxy: topology.go topologyModeFromHints — node hints that do not
/// name this node fall back to zone hints.
#[test]
fn topology_node_hints_without_this_node_fall_back_to_zone_hints() {
    let mut svc = web_node_port_service();
    svc["spec"]["trafficDistribution"] = json!("PreferSameNode");
    // node-a has no endpoint; node-a2 shares its zone.
    let slice = web_slice(
        "web-abc12",
        &[node_hinted("10.244.1.6", "node-a2", "zone-a"), node_hinted("10.244.2.7", "node-b", "zone-b")],
    );
    let table = run(&[svc], &[slice]);
    assert_eq!(backends(at(&table, CLUSTER_IP)), ["10.244.1.6:8080"]);
}

/// kube-proxy: topology.go topologyModeFromHints — hints are used only if
/// every ready endpoint has them.
#[test]
fn topology_hints_incomplete_falls_back_to_all() {
    let slice = web_slice("web-abc12", &[hinted("10.244.1.5", "node-a", &["zone-a"]), ready("10.244.2.7", "node-b")]);
    let table = run(&[prefer_close_service()], &[slice]);
    assert_eq!(backends(at(&table, CLUSTER_IP)), ["10.244.1.5:8080", "10.244.2.7:8080"]);
}

/// kube-proxy: topology.go topologyModeFromHints — only ready endpoints
/// need hints.
#[test]
fn topology_hints_ignore_not_ready_endpoints() {
    let slice = web_slice(
        "web-abc12",
        &[
            hinted("10.244.1.5", "node-a", &["zone-a"]),
            hinted("10.244.2.7", "node-b", &["zone-b"]),
            not_ready("10.244.2.8", "node-b"),
        ],
    );
    let table = run(&[prefer_close_service()], &[slice]);
    assert_eq!(backends(at(&table, CLUSTER_IP)), ["10.244.1.5:8080"]);
}

/// kube-proxy: topology.go CategorizeEndpoints — the serving-terminating
/// fallback ignores topology.
#[test]
fn topology_not_applied_to_serving_terminating_fallback() {
    let mut a = serving_terminating("10.244.1.4", "node-a");
    a["hints"] = json!({"forZones": [{"name": "zone-a"}]});
    let mut b = serving_terminating("10.244.2.8", "node-b");
    b["hints"] = json!({"forZones": [{"name": "zone-b"}]});
    let table = run(&[prefer_close_service()], &[web_slice("web-abc12", &[a, b])]);
    assert_eq!(backends(at(&table, CLUSTER_IP)), ["10.244.1.4:8080 terminating", "10.244.2.8:8080 terminating"]);
}

/// kube-proxy: topology.go topologyModeFromHints — hints that name no
/// endpoint for this zone are ignored.
#[test]
fn topology_hints_without_this_zone_fall_back_to_all() {
    let slice = web_slice(
        "web-abc12",
        &[hinted("10.244.2.7", "node-b", &["zone-b"]), hinted("10.244.3.3", "node-c", &["zone-c"])],
    );
    let table = run(&[prefer_close_service()], &[slice]);
    assert_eq!(backends(at(&table, CLUSTER_IP)), ["10.244.2.7:8080", "10.244.3.3:8080"]);
}

/// kube-proxy: topology.go topologyModeFromHints — a node without a zone
/// label (e.g. removed) uses no zone hints.
#[test]
fn topology_node_without_zone_uses_all() {
    let zoneless = NodeContext { zone: None, ..node() };
    let table = run_on(&zoneless, &[prefer_close_service()], &[hinted_slice()]);
    assert_eq!(backends(at(&table, CLUSTER_IP)).len(), 3);
}

/// kube-proxy: topology.go CategorizeEndpoints — topology narrows only the
/// Cluster-policy endpoints; Local keeps all of this node's endpoints.
#[test]
fn topology_not_applied_under_local_policy() {
    let mut svc = prefer_close_service();
    svc["spec"]["internalTrafficPolicy"] = json!("Local");
    let slice = web_slice(
        "web-abc12",
        &[
            hinted("10.244.1.5", "node-a", &["zone-a"]),
            hinted("10.244.1.6", "node-a", &["zone-b"]),
            hinted("10.244.2.7", "node-b", &["zone-b"]),
        ],
    );
    let table = run(&[svc], &[slice]);
    assert_eq!(backends(at(&table, CLUSTER_IP)), ["10.244.1.5:8080", "10.244.1.6:8080"]);
    // The NodePort (Cluster policy) follows the hints.
    assert_eq!(backends(at(&table, NODE_PORT)), ["10.244.1.5:8080"]);
}

#[test]
fn session_affinity_client_ip_uses_configured_timeout() {
    let mut svc = web_node_port_service();
    svc["spec"]["sessionAffinity"] = json!("ClientIP");
    svc["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 600}});
    let table = run(&[svc], &[]);
    assert_eq!(at(&table, CLUSTER_IP).affinity_timeout_s, Some(600));
    assert_eq!(at(&table, NODE_PORT).affinity_timeout_s, Some(600));
}

#[test]
fn session_affinity_client_ip_defaults_to_three_hours() {
    let mut svc = web_service();
    svc["spec"]["sessionAffinity"] = json!("ClientIP");
    let table = run(&[svc], &[]);
    assert_eq!(at(&table, CLUSTER_IP).affinity_timeout_s, Some(10_800));
}

#[test]
fn session_affinity_none_has_no_timeout() {
    let mut svc = web_service();
    // A config without ClientIP affinity is inert.
    svc["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 600}});
    let table = run(&[svc], &[]);
    assert_eq!(at(&table, CLUSTER_IP).affinity_timeout_s, None);
}
