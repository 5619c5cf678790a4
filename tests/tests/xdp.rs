//! The XDP fast path end to end, on two namespace nodes (see
//! `lb_tests::cluster`) whose agents also run `lb_xdp` on their LAN
//! interface (`--xdp-interfaces eth0`). A client outside the cluster
//! reaches NodePorts on node 1 with real TCP and UDP:
//! - a Service whose pod runs on node 2 is answered through XDP alone on
//!   node 1: the request is SNATed and sent back out of `eth0`, and so is
//!   the reply to the client (`xdp_sent` counts both ways; tc sends at
//!   most the first packet, before node 2's address is resolved);
//! - a Service whose pod runs on node 1 (behind a veth XDP does not send
//!   to) is passed to tc untouched and answered there;
//! - an agent restart keeps XDP serving: the pinned XDP link runs the old
//!   program while the agent is down and is adopted, its program swapped,
//!   by the next agent; an open connection keeps working throughout;
//! - the same Service over IPv6 (the cluster given IPv6 addresses too) is
//!   answered through XDP alone, both ways, on node 1's IPv6 address.
//!
//! The LAN is set up as a wire would be (`Cluster::wire_lan_for_xdp`): its
//! switch hands node 1's XDP frames, as a NIC would.
//! Needs root.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use lb_tests::{
    cluster::{CLIENT_IP, CLIENT_IP_V6, Cluster, node_ip, node_ip_v6, pod_ip, pod_ip_v6},
    observe,
    servers::{self, Servers},
};

const REMOTE_NODE_PORT: u16 = 30080;
const LOCAL_NODE_PORT: u16 = 30081;
const DNS_NODE_PORT: u16 = 30053;

/// `remote` and `dns`: one pod, on node 2. `local`: one pod, on node 1.
const SERVICES: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: remote, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.80
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: remote-1, namespace: default, labels: {kubernetes.io/service-name: remote}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.2.11], nodeName: node-2, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: local, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.81
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30081}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: local-1, namespace: default, labels: {kubernetes.io/service-name: local}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.11], nodeName: node-1, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
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

/// `remote6` and `dns6`: IPv6 NodePorts, one pod on node 2.
const SERVICES_V6: &str = r#"
- apiVersion: v1
  kind: Service
  metadata: {name: remote6, namespace: default}
  spec:
    type: NodePort
    ipFamilies: [IPv6]
    clusterIP: fd00:96::80
    clusterIPs: [fd00:96::80]
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: remote6-1, namespace: default, labels: {kubernetes.io/service-name: remote6}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:2::11"], nodeName: node-2, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: dns6, namespace: default}
  spec:
    type: NodePort
    ipFamilies: [IPv6]
    clusterIP: fd00:96::53
    clusterIPs: [fd00:96::53]
    ports: [{port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns6-1, namespace: default, labels: {kubernetes.io/service-name: dns6}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:2::11"], nodeName: node-2, conditions: {ready: true}}]
  ports: [{name: "", port: 5353, protocol: UDP}]
"#;

fn cluster() -> (Cluster, Servers) {
    cluster_of(&[IpFamily::V4])
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum IpFamily {
    V4,
    V6,
}

/// The cluster, its Services and its pods' servers in `families`.
fn cluster_of(families: &[IpFamily]) -> (Cluster, Servers) {
    let mut cluster = Cluster::create(&[1, 1]).expect("create the cluster (root needed)");
    let ipv6 = families.contains(&IpFamily::V6);
    if ipv6 {
        cluster.add_ipv6().expect("add IPv6 addresses");
    }
    cluster.wire_lan_for_xdp().expect("set the LAN up as a wire");
    let mut servers = Servers::new();
    for (node, name) in [(1, "n1p1"), (2, "n2p1")] {
        let netns = cluster.nodes[node - 1].pods[0].clone();
        let mut addresses = vec![IpAddr::from(pod_ip(node, 1))];
        if ipv6 {
            addresses.push(pod_ip_v6(node, 1).into());
        }
        for ip in addresses {
            servers.http(&netns, SocketAddr::new(ip, 8080), name).expect("start a pod's HTTP server");
            if node == 2 {
                servers.udp_echo(&netns, SocketAddr::new(ip, 5353), name).expect("start UDP echo");
            }
        }
    }
    let services = if ipv6 { format!("{SERVICES}{SERVICES_V6}") } else { SERVICES.to_owned() };
    cluster.publish(&services).expect("publish the Services");
    cluster.start_agents_with(&["--xdp-interfaces", "eth0"]).expect("start one agent per node");
    (cluster, servers)
}

/// Node 1's datapath counters, by reason.
fn node1_packets(cluster: &Cluster) -> BTreeMap<String, f64> {
    let metrics = observe::scrape(&cluster.nodes[0].netns).expect("scrape node 1's agent");
    metrics
        .into_iter()
        .filter_map(|(name, value)| {
            let reason = name.strip_prefix("lb_datapath_packets_total{reason=\"")?.strip_suffix("\"}")?;
            Some((reason.to_owned(), value))
        })
        .collect()
}

fn grew(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, reason: &str) -> f64 {
    after.get(reason).copied().unwrap_or(0.0) - before.get(reason).copied().unwrap_or(0.0)
}

#[test]
fn node_port_to_a_pod_on_another_node_is_served_by_xdp_both_ways() {
    let (cluster, _servers) = cluster();
    served_by_xdp_both_ways(&cluster, node_ip(1).into());
}

#[test]
fn an_ipv6_node_port_to_a_pod_on_another_node_is_served_by_xdp_both_ways() {
    let (cluster, _servers) = cluster_of(&[IpFamily::V4, IpFamily::V6]);
    served_by_xdp_both_ways(&cluster, node_ip_v6(1).into());
}

/// TCP connections and a UDP exchange through the NodePorts of node 1's
/// `address` (either family) to the pod on node 2: answered, SNATed to
/// that address, and sent both ways by XDP on node 1.
fn served_by_xdp_both_ways(cluster: &Cluster, address: IpAddr) {
    let target = SocketAddr::new(address, REMOTE_NODE_PORT);
    let before = node1_packets(cluster);
    let switched_before = cluster.switched_frames().expect("read the LAN's switch counters");
    const CONNECTIONS: usize = 10;
    for _ in 0..CONNECTIONS {
        let mut conn = servers::connect(&cluster.client, target).expect("enter the client").expect("connect");
        let name = servers::http_request_path(&mut conn, "/", false).expect("GET /");
        let seen = servers::http_request_path(&mut conn, "/client", true).expect("GET /client");
        assert_eq!(name, "n2p1");
        assert_eq!(seen.parse::<IpAddr>().ok(), Some(address), "the pod sees node 1's address (SNAT)");
    }
    let dns = SocketAddr::new(address, DNS_NODE_PORT);
    let (answer, from) = servers::udp_exchange(&cluster.client, dns, b"q").expect("UDP through the NodePort");
    assert_eq!((answer.as_str(), from), ("n2p1: q", dns));

    let after = node1_packets(cluster);
    // A connection is at least SYN, SYN-ACK, ACK, two requests, two
    // responses and the closing FINs: well over 4 packets each way.
    let sent = grew(&before, &after, "xdp_sent");
    assert!(sent >= (8 * CONNECTIONS) as f64, "XDP sent {sent} packets for {CONNECTIONS} connections");
    assert!(grew(&before, &after, "new_flow") >= (CONNECTIONS + 1) as f64);
    assert!(grew(&before, &after, "reply_nat") >= (4 * CONNECTIONS) as f64, "replies reverse-NATed at XDP");
    // At most the very first packet went through tc: XDP passes a packet
    // whose next hop (node 2) is not resolved yet (neighbour discovery
    // passes XDP untouched), and tc resolves it.
    assert!(grew(&before, &after, "redirected") <= 1.0, "tc sent at most the first packet");
    // Node 1's XDP worked on frames, as from a NIC: the LAN's switch sent
    // them on at XDP, each frame node 1 sent back among them.
    let switched = cluster.switched_frames().expect("read the LAN's switch counters") - switched_before;
    assert!(switched as f64 >= sent, "the LAN switched {switched} frames; node 1's XDP sent {sent}");

    // `lbctl trace` through lb_xdp says the same of one more connection:
    // sent back out of eth0 by XDP, SNATed and DNATed to the pod.
    let client = match address {
        IpAddr::V4(_) => IpAddr::from(CLIENT_IP),
        IpAddr::V6(_) => IpAddr::from(CLIENT_IP_V6),
    };
    let pod = match address {
        IpAddr::V4(_) => IpAddr::from(pod_ip(2, 1)),
        IpAddr::V6(_) => IpAddr::from(pod_ip_v6(2, 1)),
    };
    let t = xdp_trace(cluster, SocketAddr::new(client, 40000), target);
    assert_eq!(t["verdict"], "tx", "{t}");
    assert_eq!(t["output"]["dst"], SocketAddr::new(pod, 8080).to_string(), "{t}");
    let source: SocketAddr = t["output"]["src"].as_str().unwrap().parse().unwrap();
    assert_eq!(source.ip(), address, "source-NATed to the node's address: {t}");
    // Other packets on the node (neighbour discovery) may move counters
    // during the trace too.
    assert!(["new_flow", "xdp_sent"].iter().all(|c| moved(&t).contains(c)), "{t}");
    assert_eq!((t["conntrack_created"].as_u64(), t["conntrack_removed"].as_bool()), (Some(2), Some(true)), "{t}");
}

/// `lbctl trace --hook xdp` of a TCP SYN arriving on node 1's eth0.
fn xdp_trace(cluster: &Cluster, src: SocketAddr, dst: SocketAddr) -> serde_json::Value {
    let netns = cluster.nodes[0].netns.clone();
    let (src, dst) = (src.to_string(), dst.to_string());
    let args =
        ["--netns", &netns, "-o", "json", "trace", "--hook", "xdp", "--iface", "eth0", "--src", &src, "--dst", &dst];
    let out = observe::lbctl(cluster.pin_dir(1), &[&args[..], &["--syn"]].concat()).expect("lbctl trace");
    serde_json::from_str(&out).expect("JSON")
}

/// The counters a trace moved, by name.
fn moved(trace: &serde_json::Value) -> Vec<&str> {
    trace["counters"].as_array().unwrap().iter().filter_map(|c| c[0].as_str()).collect()
}

#[test]
fn node_port_to_a_pod_on_this_node_passes_to_tc_and_is_answered() {
    let (cluster, _servers) = cluster();
    // Where the programs run, as an operator sees it.
    let netns = cluster.nodes[0].netns.clone();
    let out = observe::lbctl(cluster.pin_dir(1), &["--netns", &netns, "-o", "json", "links"]).expect("lbctl links");
    let links: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    let hooks: BTreeSet<(String, String)> = links
        .iter()
        .map(|l| (l["hook"].as_str().unwrap_or("-").into(), l["interface"].as_str().unwrap_or("-").into()))
        .collect();
    assert!(hooks.contains(&("xdp".into(), "eth0".into())), "lb_xdp on eth0: {hooks:?}");
    assert!(!hooks.contains(&("xdp".into(), "pod1".into())), "and only there: {hooks:?}");

    let before = node1_packets(&cluster);
    let target = SocketAddr::from((node_ip(1), LOCAL_NODE_PORT));
    let mut conn = servers::connect(&cluster.client, target).expect("enter the client").expect("connect");
    let name = servers::http_request_path(&mut conn, "/", false).expect("GET /");
    let seen = servers::http_request_path(&mut conn, "/client", true).expect("GET /client");
    assert_eq!((name.as_str(), seen.parse::<Ipv4Addr>().ok()), ("n1p1", Some(CLIENT_IP)));
    let after = node1_packets(&cluster);
    assert!(grew(&before, &after, "xdp_pass_to_tc") >= 3.0, "XDP left the flow to tc");
    assert!(grew(&before, &after, "redirected") >= 3.0, "tc sent it to the pod");
    assert_eq!(grew(&before, &after, "xdp_sent"), 0.0);

    // `lbctl trace --hook xdp` shows the same: passed on untouched, untracked.
    let t = xdp_trace(&cluster, SocketAddr::from((CLIENT_IP, 40001)), target);
    assert_eq!(t["verdict"], "pass", "{t}");
    assert_eq!(t["output"], t["input"], "{t}");
    assert!(moved(&t).contains(&"xdp_pass_to_tc") && !moved(&t).contains(&"xdp_sent"), "{t}");
    assert_eq!(t["conntrack_created"], 0, "{t}");
}

/// `lbctl links -o json` of node 1's agent: (link id, program id) of the
/// XDP link on `eth0`.
fn xdp_link(cluster: &Cluster) -> (u64, u64) {
    let netns = cluster.nodes[0].netns.clone();
    let out = observe::lbctl(cluster.pin_dir(1), &["--netns", &netns, "-o", "json", "links"]).expect("lbctl links");
    let links: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    let link = links.iter().find(|l| l["hook"] == "xdp" && l["interface"] == "eth0").expect("an XDP link on eth0");
    (link["link_id"].as_u64().expect("link id"), link["program_id"].as_u64().expect("program id"))
}

#[test]
fn a_connection_through_xdp_survives_an_agent_restart() {
    let (mut cluster, _servers) = cluster();
    let target = SocketAddr::from((node_ip(1), REMOTE_NODE_PORT));
    let mut conn = servers::connect(&cluster.client, target).expect("enter the client").expect("connect");
    assert_eq!(servers::http_request_path(&mut conn, "/", false).expect("GET / before"), "n2p1");
    let (link, program) = xdp_link(&cluster);

    let client = cluster.client.clone();
    cluster
        .agent(1)
        .restart_after(|| {
            // The pinned link keeps the old program running meanwhile.
            let mut fresh = servers::connect(&client, target)?.map_err(anyhow::Error::from)?;
            anyhow::ensure!(servers::http_request_path(&mut fresh, "/", true)? == "n2p1", "answered while down");
            Ok(())
        })
        .expect("restart node 1's agent, serving while it is down");
    cluster.agent(1).wait_ready(std::time::Duration::from_secs(20)).expect("agent ready again");

    let (link_after, program_after) = xdp_link(&cluster);
    assert_eq!(link_after, link, "the pinned XDP link was adopted, not replaced");
    assert_ne!(program_after, program, "the new agent's program was swapped in");
    let before = node1_packets(&cluster);
    assert_eq!(servers::http_request_path(&mut conn, "/", true).expect("GET / after"), "n2p1", "same connection");
    let after = node1_packets(&cluster);
    assert!(grew(&before, &after, "xdp_sent") >= 2.0, "still sent at XDP by the new program");
    assert!(grew(&before, &after, "established") >= 1.0, "the flow's conntrack entry survived");
}
