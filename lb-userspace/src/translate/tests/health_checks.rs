//! `healthCheckNodePort` servers: which Services get one, and the count of
//! this node's ready endpoints it reports.

use serde_json::json;

use super::*;
use crate::{
    model::{IpFamily, Problem},
    translate::{HealthCheck, SliceRecord, health_check},
};

const HEALTH_CHECK_PORT: u16 = 32000;

/// `web` as a LoadBalancer with externalTrafficPolicy Local, as the API
/// server stores it (healthCheckNodePort allocated).
fn local_lb_service() -> Value {
    let mut svc = web_node_port_service();
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    svc["spec"]["healthCheckNodePort"] = json!(HEALTH_CHECK_PORT);
    svc["status"]["loadBalancer"]["ingress"] = json!([{"ip": "198.51.100.1"}]);
    svc
}

fn check_on(node: &NodeContext, svc: &Value, slices: &[Value]) -> Result<Option<HealthCheck>, Problem> {
    let svc: Service = serde_json::from_value(svc.clone()).expect("Service JSON");
    let slices: Vec<SliceRecord> = slices
        .iter()
        .map(|v| serde_json::from_value::<EndpointSlice>(v.clone()).expect("EndpointSlice JSON").into())
        .collect();
    health_check(&svc, &slices, node)
}

fn check(svc: &Value, slices: &[Value]) -> Option<HealthCheck> {
    check_on(&node(), svc, slices).expect("no problem")
}

fn local_count(svc: &Value, slices: &[Value]) -> usize {
    check(svc, slices).expect("a health check").local_endpoints
}

#[test]
fn local_load_balancer_counts_this_nodes_ready_endpoints() {
    let slice = web_slice(
        "web-1",
        &[ready("10.244.1.5", "node-a"), ready("10.244.1.6", "node-a"), ready("10.244.2.7", "node-b")],
    );
    assert_eq!(check(&local_lb_service(), &[slice]), Some(HealthCheck { port: HEALTH_CHECK_PORT, local_endpoints: 2 }));
}

#[test]
fn endpoints_only_on_other_nodes_count_zero() {
    let slice = web_slice("web-1", &[ready("10.244.2.7", "node-b")]);
    assert_eq!(check(&local_lb_service(), &[slice]), Some(HealthCheck { port: HEALTH_CHECK_PORT, local_endpoints: 0 }));
    assert_eq!(local_count(&local_lb_service(), &[]), 0, "no slices at all: still served, reporting 0");
}

/// kube-proxy: endpointschangetracker.go getLocalReadyEndpointIPs — "the
/// health check signal should fail if there are only terminating
/// endpoints on a node", and not-ready ones do not count either.
#[test]
fn terminating_and_not_ready_local_endpoints_do_not_count() {
    let slice = web_slice("web-1", &[serving_terminating("10.244.1.5", "node-a"), not_ready("10.244.1.6", "node-a")]);
    assert_eq!(local_count(&local_lb_service(), &[slice]), 0);
}

/// kube-proxy counts addresses, not address-port pairs: a Pod serving
/// two ports (here from two slices) is one endpoint.
#[test]
fn one_pod_on_two_ports_counts_once() {
    let mut svc = local_lb_service();
    svc["spec"]["ports"] = json!([
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080},
        {"name": "metrics", "port": 9090, "protocol": "TCP", "targetPort": 9090, "nodePort": 30090}
    ]);
    let http = web_slice("web-1", &[ready("10.244.1.5", "node-a")]);
    let mut metrics = web_slice("web-2", &[ready("10.244.1.5", "node-a"), ready("10.244.1.9", "node-a")]);
    metrics["ports"] = json!([{"name": "metrics", "port": 9090, "protocol": "TCP"}]);
    assert_eq!(local_count(&svc, &[http, metrics]), 2);
}

#[test]
fn cluster_policy_gets_no_health_check_even_with_the_field_set() {
    let mut svc = local_lb_service();
    svc["spec"]["externalTrafficPolicy"] = json!("Cluster");
    let slice = web_slice("web-1", &[ready("10.244.1.5", "node-a")]);
    assert_eq!(check(&svc, &[slice]), None);
}

/// kube-proxy: `NeedsHealthCheck` is true for LoadBalancer Services only;
/// a NodePort Service with a Local policy drops on nodes without an
/// endpoint but has no port to say so.
#[test]
fn type_decides_only_load_balancers_get_one() {
    let slice = web_slice("web-1", &[ready("10.244.1.5", "node-a")]);
    for (kind, expected) in [("LoadBalancer", true), ("NodePort", false), ("ClusterIP", false)] {
        let mut svc = local_lb_service();
        svc["spec"]["type"] = json!(kind);
        assert_eq!(check(&svc, std::slice::from_ref(&slice)).is_some(), expected, "{kind}");
    }
}

#[test]
fn the_port_follows_the_service() {
    let mut svc = local_lb_service();
    svc["spec"]["healthCheckNodePort"] = json!(32111);
    assert_eq!(check(&svc, &[]).map(|c| c.port), Some(32111));
}

#[test]
fn a_missing_or_bad_port_is_reported() {
    for port in [json!(null), json!(0), json!(70000)] {
        let mut svc = local_lb_service();
        svc["spec"]["healthCheckNodePort"] = port.clone();
        let problem = check_on(&node(), &svc, &[]).expect_err("reported");
        assert_eq!((problem.kind, problem.name.as_str()), ("Service", "web"), "{port}");
        assert!(problem.message.contains("healthCheckNodePort"), "{port}: {problem}");
    }
}

/// Each family's proxier serves the Services it has a cluster IP for:
/// this IPv4 agent opens nothing for an IPv6-only Service (whose IPv6
/// slices it does not read anyway).
#[test]
fn ipv6_only_service_gets_no_health_check_from_the_ipv4_table() {
    let mut svc = local_lb_service();
    svc["spec"]["clusterIPs"] = json!(["fd00:10:96::a"]);
    svc["spec"]["clusterIP"] = json!("fd00:10:96::a");
    svc["spec"]["ipFamilies"] = json!(["IPv6"]);
    let mut slice = web_slice("web-1", &[ready("fd00:10:244:1::5", "node-a")]);
    slice["addressType"] = json!("IPv6");
    assert_eq!(check(&svc, std::slice::from_ref(&slice)), None);
    let v6 = NodeContext { family: IpFamily::V6, ..node() };
    assert_eq!(check_on(&v6, &svc, &[slice]).unwrap().map(|c| c.local_endpoints), Some(1), "the IPv6 table's");
}

#[test]
fn unknown_node_name_counts_nothing_as_local() {
    let slice = web_slice("web-1", &[ready("10.244.1.5", "node-a")]);
    let anonymous = NodeContext { node_name: None, ..node() };
    assert_eq!(check_on(&anonymous, &local_lb_service(), &[slice]).unwrap().map(|c| c.local_endpoints), Some(0));
}

#[test]
fn services_this_proxy_does_not_serve_get_none() {
    let mut other_proxy = local_lb_service();
    other_proxy["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "other"});
    assert_eq!(check(&other_proxy, &[]), None);
    let mut no_ports = local_lb_service();
    no_ports["spec"]["ports"] = json!([]);
    assert_eq!(check(&no_ports, &[]), None, "kube-proxy lists health check ports from its per-port table");
}
