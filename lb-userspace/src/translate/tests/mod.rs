//! Tests of `translate`, one per rule. Inputs are Kubernetes objects as
//! `kubectl get -o json` prints them; fixtures here build the common ones
//! and tests adjust fields with `value["spec"][...] = json!(...)`.

mod balancing;
mod endpoints;
mod families;
mod frontends;
mod health_checks;
mod policy;
mod problems;
mod ranges;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};

use super::translate;
use crate::model::{Backend, Frontend, NodeContext, Protocol, ServiceTable};

/// The node translating: `node-a` in `zone-a`, NodePorts on two addresses.
fn node() -> NodeContext {
    NodeContext {
        node_name: Some("node-a".to_owned()),
        zone: Some("zone-a".to_owned()),
        node_addresses: vec!["192.168.0.10".parse().unwrap(), "192.168.0.11".parse().unwrap()],
        proxy_name: None,
        family: crate::model::IpFamily::V4,
        dual_stack: false,
        cluster_cidrs: Vec::new(),
    }
}

fn run_on(node: &NodeContext, services: &[Value], slices: &[Value]) -> ServiceTable {
    let services: Vec<Service> =
        services.iter().map(|v| serde_json::from_value(v.clone()).expect("Service JSON")).collect();
    let slices: Vec<EndpointSlice> =
        slices.iter().map(|v| serde_json::from_value(v.clone()).expect("EndpointSlice JSON")).collect();
    translate(&services, &slices, node)
}

fn run(services: &[Value], slices: &[Value]) -> ServiceTable {
    run_on(&node(), services, slices)
}

/// `kubectl get service web -o json`: ClusterIP 10.96.0.10, port "http"
/// 80 → targetPort 8080.
fn web_service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "creationTimestamp": "2025-05-01T10:00:00Z",
            "labels": {"app": "web"},
            "name": "web",
            "namespace": "default",
            "resourceVersion": "1201",
            "uid": "0b6c2f6e-2f1e-4d55-9c57-1a0c6c8c9a10"
        },
        "spec": {
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": "web"},
            "sessionAffinity": "None",
            "type": "ClusterIP"
        },
        "status": {"loadBalancer": {}}
    })
}

/// `web_service()` turned into a NodePort Service (nodePort 30080).
fn web_node_port_service() -> Value {
    let mut svc = web_service();
    svc["spec"]["type"] = json!("NodePort");
    svc["spec"]["externalTrafficPolicy"] = json!("Cluster");
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    svc
}

/// `kubectl get endpointslice <name> -o json` for Service `web`, port
/// "http" 8080/TCP.
fn web_slice(name: &str, endpoints: &[Value]) -> Value {
    json!({
        "addressType": "IPv4",
        "apiVersion": "discovery.k8s.io/v1",
        "endpoints": endpoints,
        "kind": "EndpointSlice",
        "metadata": {
            "generateName": "web-",
            "labels": {
                "app": "web",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": "web"
            },
            "name": name,
            "namespace": "default",
            "ownerReferences": [{
                "apiVersion": "v1",
                "blockOwnerDeletion": true,
                "controller": true,
                "kind": "Service",
                "name": "web",
                "uid": "0b6c2f6e-2f1e-4d55-9c57-1a0c6c8c9a10"
            }],
            "resourceVersion": "1250"
        },
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// An endpoint with explicit conditions, as the EndpointSlice controller
/// writes it for a Pod.
fn endpoint(ip: &str, node: &str, conditions: &Value) -> Value {
    json!({
        "addresses": [ip],
        "conditions": conditions,
        "nodeName": node,
        "targetRef": {"kind": "Pod", "name": format!("web-{ip}"), "namespace": "default"},
        "zone": format!("zone-{}", node.trim_start_matches("node-"))
    })
}

fn ready(ip: &str, node: &str) -> Value {
    endpoint(ip, node, &json!({"ready": true, "serving": true, "terminating": false}))
}

/// A Pod being deleted that still passes its readiness probe.
fn serving_terminating(ip: &str, node: &str) -> Value {
    endpoint(ip, node, &json!({"ready": false, "serving": true, "terminating": true}))
}

/// A Pod failing its readiness probe.
fn not_ready(ip: &str, node: &str) -> Value {
    endpoint(ip, node, &json!({"ready": false, "serving": false, "terminating": false}))
}

fn frontend<'a>(table: &'a ServiceTable, address: &str, port: u16, protocol: Protocol) -> &'a Frontend {
    let address: std::net::IpAddr = address.parse().unwrap();
    table
        .frontends
        .iter()
        .find(|f| f.address == address && f.port == port && f.protocol() == protocol)
        .unwrap_or_else(|| panic!("no frontend {address}:{port}/{protocol} in {:#?}", table.frontends))
}

/// A frontend's backends as "address:port", with " terminating" appended
/// for serving-terminating fallbacks.
fn backends(frontend: &Frontend) -> Vec<String> {
    let label = |b: &Backend| {
        let suffix = if b.terminating { " terminating" } else { "" };
        format!("{}:{}{suffix}", b.address, b.port)
    };
    frontend.backends.iter().map(label).collect()
}

/// Every frontend as "Kind address:port/PROTO", in table order.
fn frontend_list(table: &ServiceTable) -> Vec<String> {
    let label = |f: &Frontend| format!("{} {}:{}/{}", f.kind.as_str(), f.address, f.port, f.protocol());
    table.frontends.iter().map(label).collect()
}

/// The table's problem messages as "Kind namespace/name: message".
fn problem_list(table: &ServiceTable) -> Vec<String> {
    table.problems.iter().map(ToString::to_string).collect()
}
