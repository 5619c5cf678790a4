//! Bad input is skipped and reported; everything else still translates.

use serde_json::json;

use super::*;
use crate::model::{FrontendKind, Problem};

/// A second, valid Service: `api` at 10.96.0.20:443.
fn api_service() -> Value {
    let mut svc = web_service();
    svc["metadata"]["name"] = json!("api");
    svc["spec"]["clusterIP"] = json!("10.96.0.20");
    svc["spec"]["clusterIPs"] = json!(["10.96.0.20"]);
    svc["spec"]["ports"] = json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}]);
    svc
}

#[test]
fn invalid_service_is_reported_and_others_still_translate() {
    let mut broken = web_service();
    broken["spec"]["clusterIP"] = json!("10.96.0.300");
    broken["spec"]["clusterIPs"] = json!(["10.96.0.300"]);
    let table = run(&[broken, api_service()], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.20:443/TCP"]);
    assert_eq!(
        table.problems,
        [Problem {
            kind: "Service",
            namespace: "default".into(),
            name: "web".into(),
            message: "invalid cluster IP \"10.96.0.300\", skipped".into(),
        }]
    );
}

#[test]
fn invalid_external_and_load_balancer_ips_are_reported() {
    let mut svc = web_service();
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["externalIPs"] = json!(["203.0.113.7", "not-an-ip"]);
    svc["status"]["loadBalancer"]["ingress"] = json!([{"ip": "198.51.100.x"}, {"ip": "198.51.100.1"}]);
    let table = run(&[svc], &[]);
    assert_eq!(
        frontend_list(&table),
        ["ClusterIP 10.96.0.10:80/TCP", "LoadBalancer 198.51.100.1:80/TCP", "ExternalIP 203.0.113.7:80/TCP"]
    );
    assert_eq!(
        problem_list(&table),
        [
            "Service default/web: invalid external IP \"not-an-ip\", skipped",
            "Service default/web: invalid load balancer IP \"198.51.100.x\", skipped",
        ]
    );
}

#[test]
fn bad_port_number_skips_only_that_port() {
    let mut svc = web_service();
    svc["spec"]["ports"] = json!([
        {"name": "zero", "port": 0, "protocol": "TCP"},
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"port": 70000, "protocol": "TCP"}
    ]);
    let table = run(&[svc], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP"]);
    assert_eq!(
        problem_list(&table),
        [
            "Service default/web: port \"zero\": port 0 out of range 1-65535; port skipped",
            "Service default/web: port 70000: port 70000 out of range 1-65535; port skipped",
        ]
    );
}

#[test]
fn unknown_protocol_is_reported() {
    let mut svc = web_service();
    svc["spec"]["ports"] = json!([
        {"name": "ping", "port": 7, "protocol": "ICMP"},
        {"name": "lower", "port": 8, "protocol": "tcp"},
        {"name": "http", "port": 80, "protocol": "TCP"}
    ]);
    let table = run(&[svc], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP"]);
    assert_eq!(
        problem_list(&table),
        [
            "Service default/web: port \"lower\": unknown protocol \"tcp\"; port skipped",
            "Service default/web: port \"ping\": unknown protocol \"ICMP\"; port skipped",
        ]
    );
}

/// kube-proxy serves SCTP; this datapath does not yet, so each SCTP port
/// is reported once (not once per address) and skipped, and the Service's
/// other ports still translate.
#[test]
fn sctp_port_is_reported_and_skipped() {
    let mut svc = web_node_port_service();
    svc["spec"]["externalIPs"] = json!(["203.0.113.7"]);
    svc["spec"]["ports"] = json!([
        {"name": "diameter", "nodePort": 30868, "port": 3868, "protocol": "SCTP", "targetPort": 3868},
        {"name": "http", "nodePort": 30080, "port": 80, "protocol": "TCP", "targetPort": 8080}
    ]);
    let mut slice = web_slice("web-abc12", &[ready("10.244.1.5", "node-a")]);
    slice["ports"] = json!([
        {"name": "diameter", "port": 3868, "protocol": "SCTP"},
        {"name": "http", "port": 8080, "protocol": "TCP"}
    ]);
    let table = run(&[svc], &[slice]);
    assert!(table.frontends.iter().all(|f| f.protocol() == Protocol::Tcp), "{:#?}", table.frontends);
    assert_eq!(table.frontends.len(), 4);
    assert_eq!(
        problem_list(&table),
        ["Service default/web: port \"diameter\": SCTP is not served by this datapath yet; port skipped"]
    );
}

#[test]
fn node_port_out_of_range_drops_only_the_node_port_frontends() {
    let mut svc = web_node_port_service();
    svc["spec"]["ports"][0]["nodePort"] = json!(70000);
    let table = run(&[svc], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP"]);
    assert_eq!(
        problem_list(&table),
        ["Service default/web: port \"http\": nodePort: port 70000 out of range 1-65535; NodePort skipped"]
    );
}

#[test]
fn conflicting_frontends_keep_first_and_report_second() {
    // default/web and default/api both claim 10.96.0.10:80/TCP; "api"
    // sorts first. UDP on the same address and port is no conflict.
    let mut api = api_service();
    api["spec"]["clusterIP"] = json!("10.96.0.10");
    api["spec"]["clusterIPs"] = json!(["10.96.0.10"]);
    api["spec"]["ports"] = json!([
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
        {"name": "quic", "port": 80, "protocol": "UDP", "targetPort": 8080}
    ]);
    let table = run(&[web_service(), api], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP", "ClusterIP 10.96.0.10:80/UDP"]);
    assert_eq!(table.frontends[0].service.name, "api");
    assert_eq!(
        problem_list(&table),
        ["Service default/web: ClusterIP frontend 10.96.0.10:80/TCP of default/web:http/TCP is already served by \
         default/api:http/TCP (ClusterIP); skipped"]
    );
}

#[test]
fn conflicts_resolved_by_namespace_before_name() {
    let mut late_name = web_service();
    late_name["metadata"]["namespace"] = json!("a");
    late_name["metadata"]["name"] = json!("zz");
    let mut early_name = web_service();
    early_name["metadata"]["namespace"] = json!("b");
    early_name["metadata"]["name"] = json!("aa");
    let table = run(&[early_name, late_name], &[]);
    assert_eq!(table.frontends.len(), 1);
    assert_eq!(table.frontends[0].service.namespace, "a");
    assert_eq!(table.problems.len(), 1);
    assert_eq!((table.problems[0].namespace.as_str(), table.problems[0].name.as_str()), ("b", "aa"));
}

/// kube-proxy: the nftables proxier looks a packet up in `service-ips`
/// (ClusterIPs, externalIPs, LoadBalancer IPs) before `service-nodeports`,
/// so on one (address, port, protocol) a Service IP frontend wins over a
/// NodePort, whatever the Services' names.
#[test]
fn service_ip_frontends_win_over_node_ports_on_one_address() {
    let mut node_port = web_node_port_service();
    node_port["metadata"]["namespace"] = json!("a");
    let mut external = api_service();
    external["metadata"]["namespace"] = json!("z");
    external["spec"]["externalIPs"] = json!(["192.168.0.10"]);
    external["spec"]["ports"] = json!([{"name": "http", "port": 30080, "protocol": "TCP", "targetPort": 8080}]);
    let table = run(&[node_port, external], &[]);
    let at_node = frontend(&table, "192.168.0.10", 30080, Protocol::Tcp);
    assert_eq!((at_node.kind, at_node.service.namespace.as_str()), (FrontendKind::ExternalIp, "z"));
    // The NodePort is still served on the node's other address.
    assert_eq!(frontend(&table, "192.168.0.11", 30080, Protocol::Tcp).kind, FrontendKind::NodePort);
    assert_eq!(
        problem_list(&table),
        ["Service a/web: NodePort frontend 192.168.0.10:30080/TCP of a/web:http/TCP is already served by \
         z/api:http/TCP (ExternalIP); skipped"]
    );
}

/// kube-proxy: endpointslicecache.go addEndpoints skips endpoints without
/// addresses (and, in older versions, of the wrong family); here they and
/// unparsable addresses are also reported.
#[test]
fn bad_endpoint_address_skips_endpoint_and_reports_slice() {
    let slice = web_slice(
        "web-abc12",
        &[
            ready("10.244.1.5", "node-a"),
            ready("10.244.1.500", "node-a"),
            ready("fd00:10:244::5", "node-a"),
            json!({"addresses": [], "conditions": {"ready": true}}),
        ],
    );
    let table = run(&[web_service()], &[slice]);
    assert_eq!(backends(&table.frontends[0]), ["10.244.1.5:8080"]);
    assert_eq!(
        problem_list(&table),
        [
            "EndpointSlice default/web-abc12: endpoint address fd00:10:244::5 is not IPv4, skipped",
            "EndpointSlice default/web-abc12: endpoint without addresses, skipped",
            "EndpointSlice default/web-abc12: invalid endpoint address \"10.244.1.500\", skipped",
        ]
    );
}

/// kube-proxy: endpointslicecache.go endpointInfoByServicePort skips slice
/// ports without a name or a port number; here they are also reported.
#[test]
fn bad_slice_port_is_reported_and_others_still_used() {
    let mut slice = web_slice("web-abc12", &[ready("10.244.1.5", "node-a")]);
    slice["ports"] = json!([
        {"name": "http", "port": 8080, "protocol": "TCP"},
        {"name": "admin", "port": 0, "protocol": "TCP"},
        {"name": "all"},
        {"name": "gre", "port": 1, "protocol": "GRE"},
        {"port": 8080, "protocol": "TCP"}
    ]);
    let table = run(&[web_service()], &[slice]);
    assert_eq!(backends(&table.frontends[0]), ["10.244.1.5:8080"]);
    assert_eq!(
        problem_list(&table),
        [
            "EndpointSlice default/web-abc12: port \"admin\": port 0 out of range 1-65535; port skipped",
            "EndpointSlice default/web-abc12: port \"all\": no port number; port skipped",
            "EndpointSlice default/web-abc12: port \"gre\": unknown protocol \"GRE\"; port skipped",
            "EndpointSlice default/web-abc12: port 8080: no name; port skipped",
        ]
    );
}

#[test]
fn invalid_affinity_timeout_is_reported_and_defaulted() {
    for timeout in [-5, 0] {
        let mut svc = web_service();
        svc["spec"]["sessionAffinity"] = json!("ClientIP");
        svc["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
        let table = run(&[svc], &[]);
        assert_eq!(table.frontends[0].affinity_timeout_s, Some(10_800));
        assert_eq!(
            problem_list(&table),
            [format!(
                "Service default/web: sessionAffinityConfig.clientIP.timeoutSeconds {timeout} must be positive; using 10800"
            )]
        );
    }
}

#[test]
fn result_does_not_depend_on_input_order() {
    let services = [web_node_port_service(), api_service()];
    let slices = [
        web_slice("web-abc12", &[ready("10.244.2.7", "node-b"), ready("10.244.1.500", "node-a")]),
        web_slice("web-def34", &[ready("10.244.1.5", "node-a")]),
    ];
    let forward = run(&services, &slices);
    let reversed = run(&[services[1].clone(), services[0].clone()], &[slices[1].clone(), slices[0].clone()]);
    assert_eq!(forward, reversed);
    assert_eq!(forward.frontends.len(), 4);
    assert_eq!(forward.problems.len(), 1);
}
