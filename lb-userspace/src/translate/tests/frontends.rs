//! Service → frontends: kinds, addresses, ports, protocols, and the
//! Services that produce none.

use serde_json::json;

use super::*;
use crate::model::{FrontendKind, ServicePortName};

#[test]
fn cluster_ip_frontend_per_service_port() {
    let mut svc = web_service();
    svc["spec"]["ports"] = json!([
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
        {"name": "metrics", "port": 9090, "protocol": "TCP", "targetPort": 9090}
    ]);
    let table = run(&[svc], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP", "ClusterIP 10.96.0.10:9090/TCP"]);
    let http = frontend(&table, "10.96.0.10", 80, Protocol::Tcp);
    let expected = ServicePortName {
        namespace: "default".into(),
        name: "web".into(),
        port: "http".into(),
        protocol: Protocol::Tcp,
    };
    assert_eq!(http.service, expected);
    assert_eq!(http.kind, FrontendKind::ClusterIp);
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

#[test]
fn every_ipv4_cluster_ip_gets_a_frontend() {
    let mut svc = web_service();
    svc["spec"]["clusterIPs"] = json!(["10.96.0.10", "10.96.0.11"]);
    let table = run(&[svc], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP", "ClusterIP 10.96.0.11:80/TCP"]);
}

#[test]
fn cluster_ip_field_used_when_cluster_ips_absent() {
    let mut svc = web_service();
    svc["spec"].as_object_mut().unwrap().remove("clusterIPs");
    let table = run(&[svc], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP"]);
}

#[test]
fn node_port_frontend_on_every_node_address() {
    let table = run(&[web_node_port_service()], &[web_slice("web-1", &[ready("10.244.1.5", "node-a")])]);
    assert_eq!(
        frontend_list(&table),
        ["ClusterIP 10.96.0.10:80/TCP", "NodePort 192.168.0.10:30080/TCP", "NodePort 192.168.0.11:30080/TCP"]
    );
    assert_eq!(backends(frontend(&table, "192.168.0.11", 30080, Protocol::Tcp)), ["10.244.1.5:8080"]);
}

#[test]
fn node_port_needs_node_port_or_load_balancer_type() {
    // A nodePort left over on a ClusterIP Service is not served.
    let mut svc = web_service();
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    let table = run(&[svc], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP"]);
}

#[test]
fn external_ips_get_frontends() {
    let mut svc = web_service();
    svc["spec"]["externalIPs"] = json!(["203.0.113.7"]);
    let table = run(&[svc], &[web_slice("web-1", &[ready("10.244.1.5", "node-b")])]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP", "ExternalIP 203.0.113.7:80/TCP"]);
    assert_eq!(backends(frontend(&table, "203.0.113.7", 80, Protocol::Tcp)), ["10.244.1.5:8080"]);
}

/// kube-proxy: serviceport.go newBaseServiceInfo and util IsVIPMode —
/// ingress IPs with ipMode VIP or no ipMode are served; Proxy and
/// hostname-only entries are not.
#[test]
fn load_balancer_gets_node_port_and_ingress_ip_frontends() {
    let mut svc = web_node_port_service();
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["allocateLoadBalancerNodePorts"] = json!(true);
    svc["status"]["loadBalancer"]["ingress"] = json!([
        {"ip": "198.51.100.1", "ipMode": "VIP"},
        {"ip": "198.51.100.2"},
        // Proxy mode: the load balancer sends this traffic to the NodePorts.
        {"ip": "198.51.100.3", "ipMode": "Proxy"},
        {"hostname": "lb.example.com"}
    ]);
    let table = run(&[svc], &[]);
    assert_eq!(
        frontend_list(&table),
        [
            "ClusterIP 10.96.0.10:80/TCP",
            "NodePort 192.168.0.10:30080/TCP",
            "NodePort 192.168.0.11:30080/TCP",
            "LoadBalancer 198.51.100.1:80/TCP",
            "LoadBalancer 198.51.100.2:80/TCP",
        ]
    );
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

#[test]
fn load_balancer_without_node_ports_has_no_node_port_frontends() {
    let mut svc = web_service();
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["allocateLoadBalancerNodePorts"] = json!(false);
    svc["status"]["loadBalancer"]["ingress"] = json!([{"ip": "198.51.100.1", "ipMode": "VIP"}]);
    let table = run(&[svc], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP", "LoadBalancer 198.51.100.1:80/TCP"]);
}

#[test]
fn node_port_zero_means_none() {
    // 0 is how the API spells "no nodePort"; not a bad value.
    let mut svc = web_node_port_service();
    svc["spec"]["ports"][0]["nodePort"] = json!(0);
    let table = run(&[svc], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP"]);
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

/// kube-proxy: serviceport.go newBaseServiceInfo reads
/// `status.loadBalancer.ingress` whatever `spec.type` says (the API server
/// clears it when the type changes; a status written by hand is served).
#[test]
fn load_balancer_ingress_read_whatever_the_type() {
    let mut svc = web_service();
    svc["status"]["loadBalancer"]["ingress"] = json!([{"ip": "198.51.100.1"}]);
    let table = run(&[svc], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP", "LoadBalancer 198.51.100.1:80/TCP"]);
}

/// kube-proxy: serviceport.go newBaseServiceInfo — `spec.loadBalancerIP` is
/// a request to the cloud provider, not an address to serve; only the
/// status counts, and an ingress entry without an IP is skipped.
#[test]
fn load_balancer_ip_request_is_not_served() {
    let mut svc = web_service();
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["loadBalancerIP"] = json!("198.51.100.9");
    svc["status"]["loadBalancer"]["ingress"] = json!([{"ip": "", "hostname": "lb.example.com"}]);
    let table = run(&[svc], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP"]);
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

#[test]
fn protocol_defaults_to_tcp() {
    let mut svc = web_service();
    svc["spec"]["ports"] = json!([{"port": 80, "targetPort": 8080}]);
    let mut slice = web_slice("web-1", &[ready("10.244.1.5", "node-a")]);
    slice["ports"] = json!([{"name": "", "port": 8080}]);
    let table = run(&[svc], &[slice]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP"]);
    assert_eq!(backends(&table.frontends[0]), ["10.244.1.5:8080"]);
}

#[test]
fn same_port_tcp_and_udp_are_two_frontends() {
    let mut svc = web_service();
    svc["spec"]["ports"] = json!([
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353}
    ]);
    let mut slice = web_slice("web-1", &[ready("10.244.1.5", "node-a")]);
    slice["ports"] = json!([
        {"name": "dns", "port": 5353, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 5354, "protocol": "TCP"}
    ]);
    let table = run(&[svc], &[slice]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:53/TCP", "ClusterIP 10.96.0.10:53/UDP"]);
    assert_eq!(backends(frontend(&table, "10.96.0.10", 53, Protocol::Udp)), ["10.244.1.5:5353"]);
    assert_eq!(backends(frontend(&table, "10.96.0.10", 53, Protocol::Tcp)), ["10.244.1.5:5354"]);
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

#[test]
fn headless_service_produces_nothing() {
    let mut svc = web_service();
    svc["spec"]["clusterIP"] = json!("None");
    svc["spec"]["clusterIPs"] = json!(["None"]);
    let mut slice = web_slice("web-1", &[ready("10.244.1.5", "node-a")]);
    slice["metadata"]["labels"]["service.kubernetes.io/headless"] = json!("");
    let table = run(&[svc], &[slice]);
    assert_eq!(table, ServiceTable::default());
}

#[test]
fn external_name_service_produces_nothing() {
    let svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {
            "externalName": "db.example.com",
            "ports": [{"port": 5432, "protocol": "TCP", "targetPort": 5432}],
            "sessionAffinity": "None",
            "type": "ExternalName"
        },
        "status": {"loadBalancer": {}}
    });
    let table = run(&[svc, web_service()], &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP"]);
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

#[test]
fn external_name_with_stale_cluster_ip_produces_nothing() {
    let mut svc = web_service();
    svc["spec"]["type"] = json!("ExternalName");
    svc["spec"]["externalName"] = json!("web.example.com");
    let table = run(&[svc], &[]);
    assert_eq!(table, ServiceTable::default());
}

#[test]
fn service_without_allocated_cluster_ip_produces_nothing() {
    let mut svc = web_node_port_service();
    svc["spec"]["clusterIP"] = json!("");
    svc["spec"]["clusterIPs"] = json!([]);
    let table = run(&[svc], &[]);
    assert_eq!(table, ServiceTable::default());
}

/// Three Services: unlabelled `web`, `api` labelled for proxy "lb", `db`
/// labelled for "other-proxy", each with its own cluster IP.
fn services_for_three_proxies() -> [Value; 3] {
    let labelled = |name: &str, ip: &str, proxy: &str| {
        let mut svc = web_service();
        svc["metadata"]["name"] = json!(name);
        svc["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] = json!(proxy);
        svc["spec"]["clusterIP"] = json!(ip);
        svc["spec"]["clusterIPs"] = json!([ip]);
        svc
    };
    [web_service(), labelled("api", "10.96.0.20", "lb"), labelled("db", "10.96.0.30", "other-proxy")]
}

/// kube-proxy: cmd/kube-proxy server.go watches Services and slices with
/// `!service.kubernetes.io/service-proxy-name`. Without a proxy name this
/// proxy serves exactly those.
#[test]
fn without_proxy_name_only_unlabelled_services_are_served() {
    let table = run(&services_for_three_proxies(), &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP"]);
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

/// With `--proxy-name lb`, only Services labelled "lb": the unlabelled ones
/// belong to the cluster's default proxy (kube-proxy), so the two never
/// program the same Service.
#[test]
fn with_proxy_name_only_services_labelled_with_it_are_served() {
    let named = NodeContext { proxy_name: Some("lb".into()), ..node() };
    let table = run_on(&named, &services_for_three_proxies(), &[]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.20:80/TCP"]);
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

/// kube-proxy: cmd/kube-proxy server.go also watches Services with
/// `!service.kubernetes.io/headless`.
#[test]
fn service_labelled_headless_produces_nothing() {
    let mut svc = web_service();
    svc["metadata"]["labels"]["service.kubernetes.io/headless"] = json!("");
    let table = run(&[svc], &[]);
    assert_eq!(table, ServiceTable::default());
}

#[test]
fn frontends_sorted_by_address_port_protocol() {
    let mut svc = web_service();
    svc["spec"]["externalIPs"] = json!(["10.0.0.1"]);
    svc["spec"]["ports"] = json!([
        {"name": "b", "port": 443, "protocol": "UDP"},
        {"name": "a", "port": 443, "protocol": "TCP"},
        {"name": "c", "port": 80, "protocol": "TCP"}
    ]);
    let table = run(&[svc], &[]);
    assert_eq!(
        frontend_list(&table),
        [
            "ExternalIP 10.0.0.1:80/TCP",
            "ExternalIP 10.0.0.1:443/TCP",
            "ExternalIP 10.0.0.1:443/UDP",
            "ClusterIP 10.96.0.10:80/TCP",
            "ClusterIP 10.96.0.10:443/TCP",
            "ClusterIP 10.96.0.10:443/UDP",
        ]
    );
}
