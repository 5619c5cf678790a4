//! External traffic end to end on two namespace nodes, each with its own
//! agent (see `lb_tests::cluster`): a client on the nodes' LAN reaches
//! NodePorts on every node, answered by pods on both nodes; a Cluster
//! policy source-NATs flows sent to another node's pod (the pod sees the
//! node's address, the client sees the NodePort answer); a Local policy
//! keeps the client's address and a node without local endpoints drops;
//! a Service without endpoints refuses. Real TCP and UDP through real
//! namespaces. Needs root.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use lb_common::{proto, service::ServiceKeyV4};
use lb_tests::{
    cluster::{CLIENT_IP, Cluster, node_ip, pod_ip},
    links,
    servers::{self, Servers},
    topology,
};

const WEB_NODE_PORT: u16 = 30080;
const LOCAL_NODE_PORT: u16 = 30081;
const EMPTY_NODE_PORT: u16 = 30082;
const DNS_NODE_PORT: u16 = 30053;

/// `web` (Cluster policy): one pod on each node. `local` (Local policy):
/// one pod, on node 1. `empty`: none. `dns` (UDP): one pod, on node 2.
const SERVICES: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.80
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints:
  - {addresses: [10.244.1.11], nodeName: node-1, conditions: {ready: true}}
  - {addresses: [10.244.2.11], nodeName: node-2, conditions: {ready: true}}
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: local, namespace: default}
  spec:
    type: NodePort
    externalTrafficPolicy: Local
    clusterIP: 10.96.0.81
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30081}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: local-1, namespace: default, labels: {kubernetes.io/service-name: local}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.12], nodeName: node-1, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.82
    selector: {app: nothing}
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30082}]
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.53
    ports: [{port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns-1, namespace: default, labels: {kubernetes.io/service-name: dns}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.2.11], nodeName: node-2, conditions: {ready: true}}]
  ports: [{name: "", port: 5353, protocol: UDP}]
"#;

/// Node 1: pods 1 (`web`) and 2 (`local`); node 2: pod 1 (`web`, `dns`).
fn cluster() -> (Cluster, Servers) {
    cluster_with(&[])
}

/// `cluster()`, every agent started with `agent_args` too.
fn cluster_with(agent_args: &[&str]) -> (Cluster, Servers) {
    let mut cluster = Cluster::create(&[2, 1]).expect("create the cluster (root needed)");
    let mut servers = Servers::new();
    for (node, pod, name) in [(1, 1, "n1p1"), (1, 2, "n1p2"), (2, 1, "n2p1")] {
        let netns = cluster.nodes[node - 1].pods[pod - 1].clone();
        let addr = SocketAddr::from((pod_ip(node, pod), 8080));
        servers.http(&netns, addr, name).expect("start a pod's HTTP server");
    }
    let dns_pod = cluster.nodes[1].pods[0].clone();
    servers.udp_echo(&dns_pod, SocketAddr::from((pod_ip(2, 1), 5353)), "n2p1").expect("start UDP echo");
    cluster.publish(SERVICES).expect("publish the Services");
    cluster.start_agents_with(agent_args).expect("start one agent per node");
    (cluster, servers)
}

fn at(node: usize, port: u16) -> SocketAddr {
    SocketAddr::from((node_ip(node), port))
}

/// One connection: which pod answered, and the client address it saw.
fn who_and_from(cluster: &Cluster, target: SocketAddr) -> (String, Ipv4Addr) {
    let mut conn = servers::connect(&cluster.client, target).expect("enter the client").expect("connect");
    let name = servers::http_request_path(&mut conn, "/", false).expect("GET /");
    let seen = servers::http_request_path(&mut conn, "/client", true).expect("GET /client");
    (name, seen.parse().unwrap_or_else(|_| panic!("an address, got {seen:?}")))
}

/// `connections` connections to the web NodePort through each node: both
/// pods answer through both nodes, and a pod sees the node's address
/// exactly when it runs on the other node (SNAT), else the client's.
fn node_port_serves_both_pods_with_snat_only_off_node(cluster: &Cluster, connections: usize) {
    for node in [1, 2] {
        let mut answered = BTreeSet::new();
        for _ in 0..connections {
            let (pod, seen) = who_and_from(cluster, at(node, WEB_NODE_PORT));
            let pod_node: usize = if pod.starts_with("n1") { 1 } else { 2 };
            let expected = if pod_node == node { CLIENT_IP } else { node_ip(node) };
            assert_eq!(
                seen, expected,
                "via node {node}, {pod} saw {seen}: SNAT exactly when the pod is on another node"
            );
            answered.insert(pod);
        }
        assert_eq!(answered, BTreeSet::from(["n1p1".to_owned(), "n2p1".to_owned()]), "via node {node}");
    }
}

#[test]
fn node_port_answers_on_every_node_from_pods_on_both_nodes_with_snat_only_off_node() {
    let (cluster, _servers) = cluster();
    node_port_serves_both_pods_with_snat_only_off_node(&cluster, 30);
}

/// With `--forward-through-stack`, translated packets go through the
/// node's forward path, except those it would drop as martians: NodePort
/// replies (source: the node's address) and SNATed requests. NodePorts
/// keep answering, with the same SNAT rule.
#[test]
fn node_port_answers_when_forwarding_through_the_stack() {
    let (cluster, _servers) = cluster_with(&["--forward-through-stack"]);
    node_port_serves_both_pods_with_snat_only_off_node(&cluster, 12);
    let (answer, from) =
        servers::udp_exchange(&cluster.client, at(1, DNS_NODE_PORT), b"ping").expect("UDP through the NodePort");
    assert_eq!((answer.as_str(), from), ("n2p1: ping", at(1, DNS_NODE_PORT)));
}

#[test]
fn udp_node_port_to_another_node_answers_from_the_node_port() {
    let (cluster, _servers) = cluster();
    let (reply, from) =
        servers::udp_exchange(&cluster.client, at(1, DNS_NODE_PORT), b"query").expect("UDP exchange via node 1");
    assert_eq!(reply, "n2p1: query");
    assert_eq!(from, at(1, DNS_NODE_PORT), "the reply comes from the NodePort the client asked");
}

#[test]
fn local_policy_keeps_the_client_address_and_drops_on_a_node_without_local_endpoints() {
    let (cluster, _servers) = cluster();
    let (pod, seen) = who_and_from(&cluster, at(1, LOCAL_NODE_PORT));
    assert_eq!((pod.as_str(), seen), ("n1p2", CLIENT_IP), "the local pod sees the real client");

    let started = std::time::Instant::now();
    let outcome = servers::connect(&cluster.client, at(2, LOCAL_NODE_PORT)).expect("enter the client");
    let err = outcome.expect_err("node 2 has no local endpoint");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "dropped, not refused: {err}");
    assert!(started.elapsed() >= Duration::from_secs(2));

    let outcome = servers::connect(&cluster.client, at(1, EMPTY_NODE_PORT)).expect("enter the client");
    let err = outcome.expect_err("no endpoints anywhere");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn pods_reach_a_cluster_ip_served_on_both_nodes_with_their_own_address() {
    let (cluster, _servers) = cluster();
    let pod = cluster.nodes[0].pods[1].clone();
    let vip = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 80), 80));
    let mut answered = BTreeSet::new();
    for _ in 0..30 {
        let mut conn = servers::connect(&pod, vip).expect("enter the pod").expect("connect to the ClusterIP");
        answered.insert(servers::http_request_path(&mut conn, "/", false).expect("GET /"));
        let seen = servers::http_request_path(&mut conn, "/client", true).expect("GET /client");
        assert_eq!(seen, pod_ip(1, 2).to_string(), "pod traffic is never SNATed");
    }
    assert_eq!(answered, BTreeSet::from(["n1p1".to_owned(), "n2p1".to_owned()]));
}

#[test]
fn an_address_added_to_a_running_node_serves_the_node_port_and_a_removed_one_stops() {
    let (mut cluster, _servers) = cluster();
    let added = Ipv4Addr::new(192, 168, 50, 21);
    let node = cluster.nodes[0].netns.clone();
    topology::run_in(&node, &["ip", "addr", "add", "192.168.50.21/24", "dev", "eth0"]).expect("add an address");
    let frontend = ServiceKeyV4::frontend(added.octets(), WEB_NODE_PORT, proto::TCP);
    cluster
        .agent(1)
        .wait_until(Duration::from_secs(5), |maps| maps.services.contains_key(&frontend))
        .expect("the agent serves the NodePort on the new address");
    let target = SocketAddr::from((added, WEB_NODE_PORT));
    let (pod, _) = who_and_from(&cluster, target);
    assert!(pod == "n1p1" || pod == "n2p1", "answered by a web pod, got {pod}");

    topology::run_in(&node, &["ip", "addr", "del", "192.168.50.21/24", "dev", "eth0"]).expect("remove the address");
    cluster
        .agent(1)
        .wait_until(Duration::from_secs(5), |maps| !maps.services.contains_key(&frontend))
        .expect("the agent stops serving the NodePort on the removed address");
}

/// A LoadBalancer Service with an ingress IP and an external IP, neither
/// on any node: traffic the network routes to a node is served there.
const EDGE_SERVICES: &str = r#"
- apiVersion: v1
  kind: Service
  metadata: {name: edge, namespace: default}
  spec:
    type: LoadBalancer
    clusterIP: 10.96.0.84
    externalIPs: [203.0.113.20]
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30084}]
  status:
    loadBalancer: {ingress: [{ip: 203.0.113.10}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: edge-1, namespace: default, labels: {kubernetes.io/service-name: edge}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.2.11], nodeName: node-2, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
"#;

#[test]
fn load_balancer_and_external_ips_routed_to_a_node_are_served_there() {
    let (cluster, _servers) = cluster();
    cluster.publish(&format!("{SERVICES}{EDGE_SERVICES}")).expect("publish");
    let via = node_ip(1).to_string();
    topology::run_in(&cluster.client, &["ip", "route", "add", "203.0.113.0/24", "via", &via]).expect("route");
    for ip in [Ipv4Addr::new(203, 0, 113, 10), Ipv4Addr::new(203, 0, 113, 20)] {
        let target = SocketAddr::from((ip, 80));
        let answered = links::wait_for(Duration::from_secs(5), || {
            servers::connect(&cluster.client, target).is_ok_and(|c| c.is_ok())
        });
        assert!(answered.is_some(), "{target} answers once the agents see the Service");
        let (pod, seen) = who_and_from(&cluster, target);
        assert_eq!(pod, "n2p1");
        assert_eq!(seen, node_ip(1), "{target}: the pod on node 2 sees node 1, which SNATed");
    }
}

/// A LoadBalancer Service that admits only the client's address.
const GUARDED_SERVICES: &str = r#"
- apiVersion: v1
  kind: Service
  metadata: {name: guarded, namespace: default}
  spec:
    type: LoadBalancer
    clusterIP: 10.96.0.85
    loadBalancerSourceRanges: [192.168.50.100/32]
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30085}]
  status:
    loadBalancer: {ingress: [{ip: 203.0.113.30}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: guarded-1, namespace: default, labels: {kubernetes.io/service-name: guarded}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.11], nodeName: node-1, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
"#;

#[test]
fn load_balancer_source_ranges_admit_the_listed_client_and_no_one_else() {
    let (cluster, _servers) = cluster();
    cluster.publish(&format!("{SERVICES}{GUARDED_SERVICES}")).expect("publish");
    let via = node_ip(1).to_string();
    let other = cluster.nodes[1].netns.clone();
    for ns in [&cluster.client, &other] {
        topology::run_in(ns, &["ip", "route", "add", "203.0.113.0/24", "via", &via]).expect("route");
    }
    let target = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 30), 80));
    let answered =
        links::wait_for(Duration::from_secs(5), || servers::connect(&cluster.client, target).is_ok_and(|c| c.is_ok()));
    assert!(answered.is_some(), "the client inside the range is served");

    // Node 2 (192.168.50.12) is outside the range: its SYNs are dropped.
    let outcome = servers::connect(&other, target).expect("enter node 2");
    let err = outcome.expect_err("a source outside the ranges must not connect");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "dropped, not refused: {err}");
}

#[test]
fn pods_reach_a_local_policy_node_port_through_any_node_with_endpoints_anywhere() {
    let (cluster, _servers) = cluster();
    // Node 2 has no endpoint of `local`: outside traffic is dropped there
    // (see above), but a Pod on node 2 is served by the endpoint on node 1,
    // as kube-proxy short-circuits Pod traffic to external destinations.
    let pod = cluster.nodes[1].pods[0].clone();
    let mut conn = servers::connect(&pod, at(2, LOCAL_NODE_PORT)).expect("enter the pod").expect("connect");
    assert_eq!(servers::http_request_path(&mut conn, "/", true).expect("GET /"), "n1p2");

    // lbctl shows both entries of the NodePort on node 2: none for outside
    // clients (drop), the endpoint on node 1 for Pods.
    let listed = lb_tests::observe::lbctl(cluster.pin_dir(2), &["services", "-o", "json"]).expect("lbctl services");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    let entries: Vec<&serde_json::Value> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter(|f| f["address"] == node_ip(2).to_string() && f["port"] == LOCAL_NODE_PORT)
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let for_pods = entries.iter().find(|f| f["for_pods"] == true).expect("an entry for Pods");
    assert_eq!(for_pods["backends"][0]["address"], pod_ip(1, 2).to_string());
    let outside = entries.iter().find(|f| f["for_pods"] == false).expect("an entry for outside clients");
    assert_eq!(outside["empty_action"], "drop");
}

/// A Service whose only endpoint is pod 1 of node 1.
const SOLO_SERVICES: &str = r#"
- apiVersion: v1
  kind: Service
  metadata: {name: solo, namespace: default}
  spec:
    clusterIP: 10.96.0.86
    ports: [{port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: solo-1, namespace: default, labels: {kubernetes.io/service-name: solo}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.11], nodeName: node-1, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
"#;

#[test]
fn a_pod_reaching_its_own_service_is_answered_by_itself_hairpin() {
    let (cluster, _servers) = cluster();
    cluster.publish(&format!("{SERVICES}{SOLO_SERVICES}")).expect("publish");
    let pod = cluster.nodes[0].pods[0].clone();
    let vip = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 86), 80));
    let connected = links::wait_for(Duration::from_secs(5), || servers::connect(&pod, vip).is_ok_and(|c| c.is_ok()));
    assert!(connected.is_some(), "the pod connects to its own Service");
    let mut conn = servers::connect(&pod, vip).expect("enter the pod").expect("connect");
    assert_eq!(servers::http_request_path(&mut conn, "/", false).expect("GET /"), "n1p1");
    let seen = servers::http_request_path(&mut conn, "/client", true).expect("GET /client");
    assert_eq!(seen, "10.96.0.86", "the pod, as server, sees its Service as the peer, never itself");
}
