//! IP families: a table is built for one family, from that family's
//! addresses and EndpointSlices only, as each of kube-proxy's per-family
//! proxiers builds its own.

use serde_json::json;

use super::*;
use crate::model::IpFamily;

/// `web_node_port_service()` made dual-stack (IPv4 first), with an external
/// IP and a load balancer IP in each family.
fn dual_stack_service() -> Value {
    let mut svc = web_node_port_service();
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["clusterIPs"] = json!(["10.96.0.10", "fd00:10:96::a"]);
    svc["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    svc["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
    svc["spec"]["externalIPs"] = json!(["203.0.113.7", "2001:db8::7"]);
    svc["status"]["loadBalancer"]["ingress"] =
        json!([{"ip": "198.51.100.1", "ipMode": "VIP"}, {"ip": "2001:db8:1::1", "ipMode": "VIP"}]);
    svc
}

/// The IPv6 slice the EndpointSlice controller writes next to `web_slice`.
fn web_slice_v6(name: &str, endpoints: &[Value]) -> Value {
    let mut slice = web_slice(name, endpoints);
    slice["addressType"] = json!("IPv6");
    slice
}

/// `node()` with one address in each family.
fn dual_stack_node(family: IpFamily) -> NodeContext {
    let node_addresses = vec!["192.168.0.10".parse().unwrap(), "fd00:192:168::10".parse().unwrap()];
    NodeContext { node_addresses, family, ..node() }
}

/// kube-proxy: serviceport.go newBaseServiceInfo and endpointslicecache.go —
/// the IPv4 proxier takes a dual-stack Service's IPv4 cluster IP, external
/// IPs, load balancer IPs and node addresses, and the IPv4 slice; the IPv6
/// half is no problem, just the other family's.
#[test]
fn dual_stack_service_gets_its_ipv4_frontends_without_problem() {
    let slices = [
        web_slice("web-abc12", &[ready("10.244.1.5", "node-a")]),
        web_slice_v6("web-v6abc", &[ready("fd00:10:244::5", "node-a")]),
    ];
    let table = run_on(&dual_stack_node(IpFamily::V4), &[dual_stack_service()], &slices);
    assert_eq!(
        frontend_list(&table),
        [
            "ClusterIP 10.96.0.10:80/TCP",
            "NodePort 192.168.0.10:30080/TCP",
            "LoadBalancer 198.51.100.1:80/TCP",
            "ExternalIP 203.0.113.7:80/TCP",
        ]
    );
    assert!(table.frontends.iter().all(|f| backends(f) == ["10.244.1.5:8080"]), "{:#?}", table.frontends);
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

/// kube-proxy: servicechangetracker.go serviceToServiceMap skips a Service
/// without a cluster IP of the proxier's family — so no NodePort on IPv4
/// node addresses either. This node serves IPv4 only, so that is reported,
/// once for the Service.
#[test]
fn ipv6_only_service_is_reported_once_and_has_no_ipv4_frontends() {
    let mut svc = web_node_port_service();
    svc["spec"]["clusterIP"] = json!("fd00:10:96::a");
    svc["spec"]["clusterIPs"] = json!(["fd00:10:96::a"]);
    svc["spec"]["ipFamilies"] = json!(["IPv6"]);
    svc["spec"]["externalIPs"] = json!(["203.0.113.7"]);
    svc["spec"]["ports"] = json!([
        {"name": "http", "nodePort": 30080, "port": 80, "protocol": "TCP", "targetPort": 8080},
        {"name": "https", "nodePort": 30443, "port": 443, "protocol": "TCP", "targetPort": 8443}
    ]);
    let slice = web_slice_v6("web-v6abc", &[ready("fd00:10:244::5", "node-a")]);
    let table = run_on(&dual_stack_node(IpFamily::V4), &[svc], &[slice]);
    assert_eq!(frontend_list(&table), Vec::<String>::new());
    assert_eq!(
        problem_list(&table),
        ["Service default/web: IPv6-only Service: this node context builds the IPv4 table only; skipped"]
    );
}

/// kube-proxy: the IPv6 proxier is the IPv4 one with the families swapped:
/// IPv6 addresses and slices only, and IPv4-only Services left silently to
/// the IPv4 table.
#[test]
fn ipv6_table_uses_only_ipv6_addresses_and_slices() {
    let mut v4_only = web_service();
    v4_only["metadata"]["name"] = json!("api");
    v4_only["spec"]["clusterIP"] = json!("10.96.0.20");
    v4_only["spec"]["clusterIPs"] = json!(["10.96.0.20"]);
    let slices = [
        web_slice("web-abc12", &[ready("10.244.1.5", "node-a")]),
        web_slice_v6("web-v6abc", &[ready("fd00:10:244::5", "node-a")]),
    ];
    let table = run_on(&dual_stack_node(IpFamily::V6), &[dual_stack_service(), v4_only], &slices);
    assert_eq!(
        frontend_list(&table),
        [
            "ExternalIP 2001:db8::7:80/TCP",
            "LoadBalancer 2001:db8:1::1:80/TCP",
            "ClusterIP fd00:10:96::a:80/TCP",
            "NodePort fd00:192:168::10:30080/TCP",
        ]
    );
    assert!(table.frontends.iter().all(|f| backends(f) == ["fd00:10:244::5:8080"]), "{:#?}", table.frontends);
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}
