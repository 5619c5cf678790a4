//! IPv6 end to end, with real traffic: a client, a node running the agent
//! and two backend namespaces, addressed with IPv4 and IPv6 (ULA, on the
//! test's own links only). A dual-stack Service answers on both families
//! from the same client, an IPv6-only UDP Service answers from its
//! ClusterIP, and an IPv6 Service without endpoints refuses at once (the
//! datapath's ICMPv6 port unreachable). NodePorts and health check ports
//! answer on the node's IPv6 addresses, found and followed by the agent.
//! Needs root.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_tests::{
    agent::{self, Agent},
    host::{self, TestCgroup},
    observe,
    probe::{self, Outcome},
    servers::{self, Servers},
    topology::{self, Topology},
};
use lb_userspace::datapath::maps;

const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 5353;
const WEB_V6: &str = "[fd00:96::10]:80";
const WEB_V4: &str = "10.96.0.10:80";
const DNS_V6: &str = "[fd00:96::53]:53";
const EMPTY_V6: &str = "[fd00:96::30]:80";
/// UDP to a backend port where nothing listens.
const DEAF_V6: &str = "[fd00:96::54]:53";
/// Counts the bytes it receives (port 9000 of backend 1).
const SINK_V6: &str = "[fd00:96::70]:80";
const SINK_PORT: u16 = 9000;

const SERVICES: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: demo}
  spec:
    ipFamilyPolicy: PreferDualStack
    ipFamilies: [IPv6, IPv4]
    clusterIP: fd00:96::10
    clusterIPs: [fd00:96::10, 10.96.0.10]
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-v6, namespace: demo, labels: {kubernetes.io/service-name: web}}
  addressType: IPv6
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: ["fd00:244:1::2"], conditions: {ready: true}}
  - {addresses: ["fd00:244:2::2"], conditions: {ready: true}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-v4, namespace: demo, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: [10.244.1.2], conditions: {ready: true}}
  - {addresses: [10.244.2.2], conditions: {ready: true}}
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: demo}
  spec:
    ipFamilyPolicy: SingleStack
    ipFamilies: [IPv6]
    clusterIP: fd00:96::53
    clusterIPs: [fd00:96::53]
    ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns-v6, namespace: demo, labels: {kubernetes.io/service-name: dns}}
  addressType: IPv6
  ports: [{name: dns, port: 5353, protocol: UDP}]
  endpoints:
  - {addresses: ["fd00:244:1::2"], conditions: {ready: true}}
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: demo}
  spec:
    ipFamilyPolicy: SingleStack
    ipFamilies: [IPv6]
    clusterIP: fd00:96::30
    clusterIPs: [fd00:96::30]
    selector: {app: nothing}
    ports: [{port: 80, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: deaf, namespace: demo}
  spec:
    ipFamilies: [IPv6]
    clusterIP: fd00:96::54
    clusterIPs: [fd00:96::54]
    ports: [{port: 53, protocol: UDP, targetPort: 9999}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: deaf-v6, namespace: demo, labels: {kubernetes.io/service-name: deaf}}
  addressType: IPv6
  ports: [{name: "", port: 9999, protocol: UDP}]
  endpoints:
  - {addresses: ["fd00:244:1::2"], conditions: {ready: true}}
- apiVersion: v1
  kind: Service
  metadata: {name: sink, namespace: demo}
  spec:
    ipFamilies: [IPv6]
    clusterIP: fd00:96::70
    clusterIPs: [fd00:96::70]
    ports: [{port: 80, protocol: TCP, targetPort: 9000}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: sink-v6, namespace: demo, labels: {kubernetes.io/service-name: sink}}
  addressType: IPv6
  ports: [{name: "", port: 9000, protocol: TCP}]
  endpoints:
  - {addresses: ["fd00:244:1::2"], conditions: {ready: true}}
- apiVersion: v1
  kind: Service
  metadata: {name: local-elsewhere, namespace: demo}
  spec:
    type: LoadBalancer
    ipFamilies: [IPv6]
    clusterIP: fd00:96::89
    clusterIPs: [fd00:96::89]
    externalTrafficPolicy: Local
    healthCheckNodePort: 32089
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30089}]
  status:
    loadBalancer: {ingress: [{ip: "fd00:96::1:89"}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: local-elsewhere-v6, namespace: demo, labels: {kubernetes.io/service-name: local-elsewhere}}
  addressType: IPv6
  ports: [{name: "", port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: ["fd00:244:2::2"], nodeName: node-b, conditions: {ready: true}}
- apiVersion: v1
  kind: Service
  metadata: {name: admits-client, namespace: demo}
  spec:
    type: LoadBalancer
    ipFamilies: [IPv6]
    clusterIP: fd00:96::85
    clusterIPs: [fd00:96::85]
    loadBalancerSourceRanges: ["fd00:1::/64"]
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30085}]
  status:
    loadBalancer: {ingress: [{ip: "fd00:96::1:85"}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: admits-client-v6, namespace: demo, labels: {kubernetes.io/service-name: admits-client}}
  addressType: IPv6
  ports: [{name: "", port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: ["fd00:244:1::2"], nodeName: node-a, conditions: {ready: true}}
- apiVersion: v1
  kind: Service
  metadata: {name: admits-others, namespace: demo}
  spec:
    type: LoadBalancer
    ipFamilies: [IPv6]
    clusterIP: fd00:96::86
    clusterIPs: [fd00:96::86]
    loadBalancerSourceRanges: ["fd00:9::/64"]
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30086}]
  status:
    loadBalancer: {ingress: [{ip: "fd00:96::1:86"}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: admits-others-v6, namespace: demo, labels: {kubernetes.io/service-name: admits-others}}
  addressType: IPv6
  ports: [{name: "", port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: ["fd00:244:1::2"], nodeName: node-a, conditions: {ready: true}}
- apiVersion: v1
  kind: Service
  metadata: {name: remote, namespace: demo}
  spec:
    type: LoadBalancer
    ipFamilies: [IPv6]
    clusterIP: fd00:96::87
    clusterIPs: [fd00:96::87]
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30087}]
  status:
    loadBalancer: {ingress: [{ip: "fd00:96::1:87"}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: remote-v6, namespace: demo, labels: {kubernetes.io/service-name: remote}}
  addressType: IPv6
  ports: [{name: "", port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: ["fd00:244:2::2"], nodeName: node-b, conditions: {ready: true}}
- apiVersion: v1
  kind: Service
  metadata: {name: itself, namespace: demo}
  spec:
    ipFamilies: [IPv6]
    clusterIP: fd00:96::88
    clusterIPs: [fd00:96::88]
    ports: [{port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: itself-v6, namespace: demo, labels: {kubernetes.io/service-name: itself}}
  addressType: IPv6
  ports: [{name: "", port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: ["fd00:244:1::2"], nodeName: node-a, conditions: {ready: true}}
- apiVersion: v1
  kind: Service
  metadata: {name: sticky, namespace: demo}
  spec:
    ipFamilies: [IPv6]
    clusterIP: fd00:96::77
    clusterIPs: [fd00:96::77]
    sessionAffinity: ClientIP
    ports: [{port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: sticky-v6, namespace: demo, labels: {kubernetes.io/service-name: sticky}}
  addressType: IPv6
  ports: [{name: "", port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: ["fd00:244:1::2"], conditions: {ready: true}}
  - {addresses: ["fd00:244:2::2"], conditions: {ready: true}}
"#;

/// Field order is drop order: the agent, then the servers, then the
/// namespaces.
struct DualStackCluster {
    agent: Agent,
    _servers: Servers,
    topology: Topology,
    source_dir: std::path::PathBuf,
    /// The cgroup the socket-level programs watch, when asked for.
    cgroup: Option<TestCgroup>,
}

impl DualStackCluster {
    fn start() -> Self {
        Self::start_with_cgroup(None)
    }

    /// `start`, with the agent's socket-level programs on `cgroup`.
    fn start_with_cgroup(cgroup: Option<TestCgroup>) -> Self {
        Self::start_with(cgroup, &[])
    }

    /// `start`, the agent given `extra_args` too.
    fn start_with(cgroup: Option<TestCgroup>, extra_args: &[&str]) -> Self {
        let topology = Topology::create(2).expect("namespaces");
        topology.add_ipv6().expect("IPv6 addresses");
        let mut servers = Servers::new();
        for i in 1..=2 {
            let ns = &topology.backends[i - 1];
            let name = format!("backend-{i}");
            for ip in [IpAddr::from(topology::backend_ip(i)), IpAddr::from(topology::backend_ip_v6(i))] {
                servers.http(ns, SocketAddr::new(ip, HTTP_PORT), &name).expect("http server");
                servers.udp_echo(ns, SocketAddr::new(ip, ECHO_PORT), &name).expect("udp server");
            }
        }
        let source_dir = std::env::temp_dir().join(&topology.node);
        std::fs::create_dir_all(&source_dir).unwrap();
        let source_file = source_dir.join("services.yaml");
        agent::write_atomically(&source_file, SERVICES).unwrap();
        // The node is node-a: the LoadBalancer Services' endpoint runs on
        // it (a backend elsewhere would need source NAT).
        let cgroup_path = cgroup.as_ref().map(|c| c.path.display().to_string());
        // Pods are fd00:244::/32 (and 10.244.0.0/16): told apart from
        // outside clients for the short-circuit of Local frontends.
        let mut args = vec!["--node-name", "node-a", "--cluster-cidr", "fd00:244::/32,10.244.0.0/16"];
        if let Some(path) = &cgroup_path {
            args.extend(["--cgroup-path", path.as_str()]);
        }
        args.extend_from_slice(extra_args);
        let mut agent = Agent::start(&topology.node, &source_file, &args).expect("agent");
        agent.wait_ready(Duration::from_secs(30)).expect("agent ready");
        Self { agent, _servers: servers, topology, source_dir, cgroup }
    }
}

impl Drop for DualStackCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.source_dir);
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn a_dual_stack_service_answers_the_same_client_on_both_families() {
    let cluster = DualStackCluster::start();
    let client = &cluster.topology.client;
    let both: Vec<String> = vec!["backend-1".into(), "backend-2".into()];
    probe::eventually_answered_by(client, addr(WEB_V6), &both, 20);
    probe::eventually_answered_by(client, addr(WEB_V4), &both, 20);

    // No source NAT: the pod sees the client's own IPv6 address.
    let mut conn = servers::connect(client, addr(WEB_V6)).unwrap().expect("connect over IPv6");
    let seen = servers::http_request_path(&mut conn, "/client", true).expect("GET /client");
    let seen: IpAddr = seen.trim().parse().unwrap_or_else(|_| panic!("a client address, not {seen:?}"));
    assert_eq!(seen, IpAddr::from(topology::CLIENT_IP_V6));
    let _ = &cluster.agent;
}

/// IPv6's translation keeps a pod's partial checksums right too (see
/// `e2e.rs`, `translated_packets_carry_the_right_checksums_where_the_
/// node_computes_them`): with the node's veth ends computing checksums
/// and no peer redirect, every request and datagram through the IPv6
/// ClusterIPs (ports translated) is answered and no stack counts a
/// checksum error.
#[test]
fn ipv6_translated_packets_carry_the_right_checksums_where_the_node_computes_them() {
    let cluster = DualStackCluster::start_with(None, &["--redirect-to-peer=false"]);
    let topology = &cluster.topology;
    topology.compute_checksums_on_the_node().unwrap();
    let errors_before = topology.checksum_errors().unwrap();
    for _ in 0..20 {
        let body = servers::http_get(&topology.client, addr(WEB_V6)).expect("request through the IPv6 ClusterIP");
        assert!(body.starts_with("backend-"), "answer {body:?}");
    }
    for _ in 0..10 {
        let (pod, _) = probe::udp_answer(&topology.client, addr(DNS_V6)).expect("UDP answer over IPv6");
        assert_eq!(pod, "backend-1");
    }
    let errors = topology.checksum_errors().unwrap() - errors_before;
    assert_eq!(errors, 0, "checksum errors counted by the pods and the client");
}

#[test]
fn an_ipv6_only_udp_service_answers_from_its_cluster_ip() {
    let cluster = DualStackCluster::start();
    let client = &cluster.topology.client;
    let (pod, from) =
        probe::eventually(Duration::from_secs(10), "UDP answer over IPv6", || probe::udp_answer(client, addr(DNS_V6)));
    assert_eq!(pod, "backend-1");
    assert_eq!(from, addr(DNS_V6), "the answer's source is the ClusterIP, reverse-translated");
    // Every new flow (a fresh source port each) is answered.
    let pods: BTreeSet<String> =
        (0..10).map(|_| probe::udp_answer(client, addr(DNS_V6)).expect("UDP answer").0).collect();
    assert_eq!(pods, BTreeSet::from(["backend-1".to_owned()]));
}

/// An established IPv6 flow keeps its route on its conntrack entry; a
/// routing change on the node (a blackhole route to its backend, then
/// removed) reaches it on its next datagram, once the agent has moved the
/// route epoch. UDP: every datagram is the same size, so each would take
/// the kept route if it were still used.
#[test]
fn an_established_ipv6_flow_follows_a_routing_change_on_the_node() {
    let cluster = DualStackCluster::start();
    let client = &cluster.topology.client;
    probe::eventually(Duration::from_secs(10), "UDP answer over IPv6", || probe::udp_answer(client, addr(DNS_V6)));
    let socket = servers::connected_udp(client, addr(DNS_V6)).expect("a UDP socket in the client namespace");
    let exchange = |timeout: Duration| servers::ping(&socket, timeout);
    let first = exchange(Duration::from_secs(3)).expect("the flow answers");
    assert!(first.starts_with("backend-1"), "{first}");
    for _ in 0..3 {
        assert_eq!(exchange(Duration::from_secs(3)).expect("the same flow answers"), first);
    }
    // Past its first packets the flow keeps its routes, both ways, as
    // lbctl shows.
    let node = cluster.topology.node.as_str();
    let text = observe::lbctl(&cluster.agent.pin_dir, &["-o", "json", "--netns", node, "conntrack"]).unwrap();
    let flows: serde_json::Value = serde_json::from_str(&text).expect("lbctl conntrack prints JSON");
    let client_address = socket.local_addr().unwrap().to_string();
    let ours = |f: &&serde_json::Value| f["frontend"] == DNS_V6 && f["client"] == client_address.as_str();
    let flow = flows.as_array().unwrap().iter().find(ours).unwrap_or_else(|| panic!("not tracked: {flows}"));
    let to_backend = flow["route_to_backend"].as_str().unwrap_or_else(|| panic!("no route kept: {flow}"));
    assert!(to_backend.starts_with("out to-b1 to "), "{flow}");
    let back = flow["route_back"].as_str().unwrap_or_else(|| panic!("no route kept back: {flow}"));
    assert!(back.starts_with("out to-client to "), "{flow}");
    let blackhole = format!("{}/128", topology::backend_ip_v6(1));
    let route = |verb: &str| {
        topology::run_in(&cluster.topology.node, &["ip", "-6", "route", verb, "blackhole", &blackhole]).unwrap();
    };

    let epoch = cluster.agent.route_epoch().unwrap();
    route("add");
    cluster.agent.wait_route_epoch_past(epoch, Duration::from_secs(5)).expect("the agent sees the change");
    let blocked = exchange(Duration::from_secs(1));
    assert!(
        matches!(&blocked, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "a datagram the node may no longer route is not answered: {blocked:?}"
    );

    let epoch = cluster.agent.route_epoch().unwrap();
    route("del");
    cluster.agent.wait_route_epoch_past(epoch, Duration::from_secs(5)).expect("the agent sees the change undone");
    assert_eq!(exchange(Duration::from_secs(3)).expect("answered once the change is undone"), first);
}

#[test]
fn an_ipv6_service_without_endpoints_refuses_at_once() {
    let cluster = DualStackCluster::start();
    let client = &cluster.topology.client;
    // Wait until the frontend is programmed (its dual-stack neighbour
    // answers), then a connect is refused, not left to time out.
    probe::eventually(Duration::from_secs(10), "the web Service answering", || probe::answer(client, addr(WEB_V6)));
    // Refused, not timed out (`NoAnswer` after 3 s).
    let outcome = probe::connect(client, addr(EMPTY_V6), Duration::from_secs(3));
    assert!(matches!(outcome, Outcome::Refused), "refused by ICMPv6 port unreachable, got {outcome:?}");
}

#[test]
fn a_connected_udp_client_of_an_ipv6_backend_without_listener_gets_connection_refused() {
    let cluster = DualStackCluster::start();
    let client = &cluster.topology.client;
    probe::eventually(Duration::from_secs(10), "UDP answer over IPv6", || probe::udp_answer(client, addr(DNS_V6)));
    // The backend's ICMPv6 port unreachable quotes the datagram as the
    // node sent it on; translated back, the client's socket matches it.
    let err = servers::in_netns(client, || {
        let socket = std::net::UdpSocket::bind("[::]:0")?;
        socket.connect(addr(DEAF_V6))?;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        socket.send(b"anyone?")?;
        let mut buf = [0u8; 64];
        Ok(socket.recv(&mut buf).expect_err("nothing listens: no answer"))
    })
    .expect("exchange from the client");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "the error reached the client: {err}");
}

#[test]
fn a_large_upload_through_an_ipv6_cluster_ip_completes_over_a_narrower_link() {
    use std::io::{Read as _, Write as _};
    let cluster = DualStackCluster::start();
    let client = &cluster.topology.client;
    // The node side of the link to backend 1 is narrower than both ends
    // (neither end's MSS knows): the client must learn the path MTU from
    // the packet too big the datapath answers with.
    let node_side = &cluster.topology.node_interfaces[1];
    topology::run_in(&cluster.topology.node, &["ip", "link", "set", node_side, "mtu", "1400"]).expect("narrow link");
    let listen = SocketAddr::new(topology::backend_ip_v6(1).into(), SINK_PORT);
    servers::byte_counter(&cluster.topology.backends[0], listen).expect("listen on the backend");
    let mut conn = probe::eventually(Duration::from_secs(10), "connected to the sink", || {
        Ok(servers::connect(client, addr(SINK_V6))??)
    });
    let patience = Some(Duration::from_secs(10));
    conn.set_read_timeout(patience).unwrap();
    conn.set_write_timeout(patience).unwrap();
    conn.write_all(&vec![0x55; 1 << 20]).expect("upload");
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("the backend's count: the upload did not stall");
    assert_eq!(answer, (1 << 20).to_string(), "every byte arrived");
}

#[test]
fn a_pod_reaches_a_local_load_balancer_whose_endpoint_is_elsewhere_and_an_outside_client_does_not() {
    let cluster = DualStackCluster::start();
    let pod_ns = &cluster.topology.backends[0];
    let load_balancer = addr("[fd00:96::1:89]:80");
    let pod = probe::eventually(Duration::from_secs(10), "the Pod served by the endpoint on node-b", || {
        probe::answer(pod_ns, load_balancer)
    });
    assert_eq!(pod, "backend-2");
    let outcome = probe::connect(&cluster.topology.client, load_balancer, Duration::from_secs(2));
    assert!(
        matches!(outcome, Outcome::NoAnswer),
        "no endpoint on this node: dropped for outside clients, got {outcome:?}"
    );
}

#[test]
fn load_balancer_source_ranges_admit_an_ipv6_client_inside_and_no_other() {
    let cluster = DualStackCluster::start();
    let client = &cluster.topology.client;
    let pod = probe::eventually(Duration::from_secs(10), "the admitting load balancer answering", || {
        probe::answer(client, addr("[fd00:96::1:85]:80"))
    });
    assert_eq!(pod, "backend-1");
    let outcome = probe::connect(client, addr("[fd00:96::1:86]:80"), Duration::from_secs(2));
    assert!(matches!(outcome, Outcome::NoAnswer), "a client outside every range gets nothing, got {outcome:?}");
}

#[test]
fn client_ip_affinity_keeps_an_ipv6_client_on_one_pod_shown_by_lbctl_and_cleared_when_switched_off() {
    let cluster = DualStackCluster::start();
    let client = &cluster.topology.client;
    let sticky = addr("[fd00:96::77]:80");
    probe::eventually(Duration::from_secs(10), "the affinity Service answering", || probe::answer(client, sticky));
    let pods = probe::answers(client, sticky, 20).expect("20 connections answered");
    assert_eq!(pods.len(), 1, "every connection of the client on one pod: {pods:?}");

    // What an operator sees: the client, its frontend and its pod.
    let out = observe::lbctl(&cluster.agent.pin_dir, &["-o", "json", "affinity"]).expect("lbctl affinity");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    let [entry] = &entries[..] else { panic!("one entry, for the one client: {entries:?}") };
    assert_eq!(entry["frontend"], "TCP [fd00:96::77]:80");
    assert_eq!(entry["client"], topology::CLIENT_IP_V6.to_string());
    let pod = pods.keys().next().unwrap();
    let expected = if pod == "backend-1" { "[fd00:244:1::2]:8080" } else { "[fd00:244:2::2]:8080" };
    assert_eq!((entry["backend"].as_str(), entry["fresh"].as_bool()), (Some(expected), Some(true)));

    // Affinity switched off: the frontend's entries go.
    let without = SERVICES.replace("    sessionAffinity: ClientIP\n", "");
    agent::write_atomically(&cluster.source_dir.join("services.yaml"), &without).unwrap();
    probe::eventually(Duration::from_secs(10), "the IPv6 affinity entries deleted", || {
        let left = maps::affinity_v6_entries(&cluster.agent.pin_dir)?;
        anyhow::ensure!(left.is_empty(), "still held: {left:?}");
        Ok(())
    });
}

/// What `GET /client` through `frontend` from `netns` shows: the source
/// address the pod saw.
fn client_seen(netns: &str, frontend: &str) -> IpAddr {
    let mut conn = servers::connect(netns, addr(frontend)).unwrap().expect("connect");
    let seen = servers::http_request_path(&mut conn, "/client", true).expect("GET /client");
    seen.trim().parse().unwrap_or_else(|_| panic!("a client address, not {seen:?}"))
}

#[test]
fn external_ipv6_traffic_to_a_backend_on_another_node_is_source_nated_to_the_node() {
    let cluster = DualStackCluster::start();
    let client = &cluster.topology.client;
    let pod = probe::eventually(Duration::from_secs(10), "the load balancer answering", || {
        probe::answer(client, addr("[fd00:96::1:87]:80"))
    });
    assert_eq!(pod, "backend-2");
    // The node's own address on the route to the backend: the reply comes
    // back through the node, which translates both addresses back.
    let node_side: IpAddr = "fd00:244:2::1".parse().unwrap();
    assert_eq!(client_seen(client, "[fd00:96::1:87]:80"), node_side);
}

#[test]
fn node_ports_and_health_checks_answer_on_the_nodes_ipv6_addresses_also_one_added_later() {
    let cluster = DualStackCluster::start();
    let client = &cluster.topology.client;
    // The node's address on the client's link: the agent found it itself.
    let node_port = addr("[fd00:1::1]:30087");
    let pod = probe::eventually(Duration::from_secs(10), "the NodePort on the node's IPv6 address", || {
        probe::answer(client, node_port)
    });
    assert_eq!(pod, "backend-2");
    assert_eq!(client_seen(client, "[fd00:1::1]:30087"), "fd00:244:2::1".parse::<IpAddr>().unwrap(), "SNAT");
    // The Local Service's health check, over IPv6 to the node: its
    // endpoint is on node-b.
    let status = probe::http_status(client, addr("[fd00:1::1]:32089"), "/").expect("health check over IPv6");
    assert_eq!(status, 503, "no local endpoint");

    // An address added while the agent runs serves at once.
    let added = "fd00:1::5";
    topology::run_in(
        &cluster.topology.node,
        &["ip", "-6", "addr", "add", &format!("{added}/64"), "dev", "to-client", "nodad"],
    )
    .expect("add an address");
    let pod = probe::eventually(Duration::from_secs(10), "the NodePort on the added address", || {
        probe::answer(client, addr(&format!("[{added}]:30087")))
    });
    assert_eq!(pod, "backend-2");
}

/// Runs `ip6tables ARGS` in the node namespace; its output.
fn ip6tables(cluster: &DualStackCluster, args: &[&str]) -> String {
    let mut full = vec!["ip6tables"];
    full.extend_from_slice(args);
    topology::run_in(&cluster.topology.node, &full).expect("ip6tables in the node namespace")
}

/// Packets each rule of the node's ip6tables FORWARD chain counted, in
/// order.
fn forward_chain_packets(cluster: &DualStackCluster) -> Vec<u64> {
    // Two header lines, then each rule's packet count first.
    ip6tables(cluster, &["-nvxL", "FORWARD"])
        .lines()
        .skip(2)
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `--forward-through-stack` over IPv6: Service traffic, both ways,
/// crosses the node's FORWARD chain (where a chained CNI's ip6tables
/// NetworkPolicy sees it): ClusterIP traffic, and a NodePort flow to
/// another node's pod, SNATed and answered from the node's own address
/// (which IPv6 forwarding, unlike IPv4's, does not drop as a martian).
#[test]
fn forward_through_stack_puts_ipv6_service_traffic_through_the_forward_chain() {
    let cluster = DualStackCluster::start_with(None, &["--forward-through-stack"]);
    let client = &cluster.topology.client;
    ip6tables(&cluster, &["-A", "FORWARD", "-d", "fd00:244::/32", "-j", "ACCEPT"]);
    ip6tables(&cluster, &["-A", "FORWARD", "-s", "fd00:96::10", "-j", "ACCEPT"]);
    ip6tables(&cluster, &["-A", "FORWARD", "-s", "fd00:1::1", "-p", "tcp", "--sport", "30087", "-j", "ACCEPT"]);
    probe::eventually(Duration::from_secs(10), "web over IPv6", || probe::answer(client, addr(WEB_V6)));
    let before = forward_chain_packets(&cluster);
    probe::answers(client, addr(WEB_V6), 10).expect("10 connections answered");
    let after = forward_chain_packets(&cluster);
    let grew = |rule: usize| after[rule] - before[rule];
    // At least SYN, ACK, request and FIN each way per connection.
    assert!(grew(0) >= 30, "requests cross FORWARD: {} packets", grew(0));
    assert!(grew(1) >= 30, "replies cross FORWARD: {} packets", grew(1));

    let pod = probe::answer(client, addr("[fd00:1::1]:30087")).expect("the NodePort to another node's pod");
    assert_eq!(pod, "backend-2");
    let node_port_replies = forward_chain_packets(&cluster)[2];
    assert!(node_port_replies >= 3, "the NodePort's replies cross FORWARD: {node_port_replies} packets");
}

#[test]
fn an_ipv6_pod_balanced_to_itself_is_answered_with_its_service_as_the_peer() {
    let cluster = DualStackCluster::start();
    let pod_ns = &cluster.topology.backends[0];
    let pod = probe::eventually(Duration::from_secs(10), "hairpin answer", || {
        probe::answer(pod_ns, addr("[fd00:96::88]:80"))
    });
    assert_eq!(pod, "backend-1");
    assert_eq!(client_seen(pod_ns, "[fd00:96::88]:80"), "fd00:96::88".parse::<IpAddr>().unwrap());
}

/// A cluster whose agent translates the node's own sockets in a test
/// cgroup, and a client run in the node namespace inside it.
fn host_client(cluster: &DualStackCluster, mode: &str, frontend: &str) -> Vec<String> {
    let cgroup = cluster.cgroup.as_ref().map(|c| c.path.as_path());
    host::run(&cluster.topology.node, cgroup, mode, frontend).expect("run the client")
}

fn host_cluster() -> DualStackCluster {
    let cgroup = TestCgroup::create(&format!("lbt{}-host6", std::process::id())).expect("test cgroup");
    DualStackCluster::start_with_cgroup(Some(cgroup))
}

#[test]
fn a_node_process_reaches_ipv6_services_and_sees_them_as_peers() {
    let cluster = host_cluster();
    let lines = probe::eventually(Duration::from_secs(10), "a translated IPv6 connect", || {
        let lines = host_client(&cluster, "tcp", WEB_V6);
        anyhow::ensure!(lines.first().map(String::as_str) == Some("peer [fd00:96::10]:80"), "{lines:?}");
        Ok(lines)
    });
    let body = lines.get(1).and_then(|l| l.strip_prefix("body ")).unwrap_or_default();
    assert!(body.starts_with("backend-"), "{lines:?}");

    let lines = host_client(&cluster, "udp", DNS_V6);
    assert_eq!(lines, vec!["reply backend-1: ping from [fd00:96::53]:53".to_owned()]);
}

#[test]
fn a_dual_stack_socket_reaching_an_ipv4_service_through_a_mapped_address_is_translated() {
    let cluster = host_cluster();
    let mapped = "[::ffff:10.96.0.10]:80";
    let lines = probe::eventually(Duration::from_secs(10), "a translated mapped connect", || {
        let lines = host_client(&cluster, "tcp", mapped);
        anyhow::ensure!(lines.first().map(String::as_str) == Some("peer [::ffff:10.96.0.10]:80"), "{lines:?}");
        Ok(lines)
    });
    let body = lines.get(1).and_then(|l| l.strip_prefix("body ")).unwrap_or_default();
    assert!(body.starts_with("backend-"), "{lines:?}");
}

#[test]
fn a_connected_ipv6_udp_socket_of_the_node_moves_off_a_removed_backend() {
    let cluster = host_cluster();
    let cgroup = cluster.cgroup.as_ref().map(|c| c.path.as_path());
    let mut client = probe::eventually(Duration::from_secs(10), "a connected UDP socket to the IPv6 Service", || {
        let mut client = host::Client::start(&cluster.topology.node, cgroup, "udp-connected", DNS_V6)?;
        let peer = client.line()?;
        anyhow::ensure!(peer == "peer [fd00:96::53]:53", "{peer}");
        Ok(client)
    });
    client.send("one").unwrap();
    assert_eq!(client.line().unwrap(), "reply backend-1: one");
    // The Service's endpoint moves to backend-2; backend-1's server keeps
    // running, so only the agent can move the socket away from it.
    let moved = SERVICES.replacen(
        "  - {addresses: [\"fd00:244:1::2\"], conditions: {ready: true}}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: empty",
        "  - {addresses: [\"fd00:244:2::2\"], conditions: {ready: true}}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: empty",
        1,
    );
    assert_ne!(moved, SERVICES, "the dns endpoint was found and moved");
    agent::write_atomically(&cluster.source_dir.join("services.yaml"), &moved).unwrap();
    probe::eventually(Duration::from_secs(10), "answers from the endpoint the Service has now", || {
        client.send("again")?;
        let reply = client.line()?;
        anyhow::ensure!(reply == "reply backend-2: again", "{reply}");
        Ok(())
    });
}

/// `lbctl -o json --netns NODE trace ARGS`.
fn trace(cluster: &DualStackCluster, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-o", "json", "--netns", cluster.topology.node.as_str(), "trace"];
    all.extend_from_slice(args);
    let text = lb_tests::observe::lbctl(&cluster.agent.pin_dir, &all).expect("lbctl trace");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("lbctl trace printed no JSON ({e}): {text}"))
}

#[test]
fn lbctl_traces_ipv6_packets_as_the_datapath_handles_them() {
    let cluster = DualStackCluster::start();
    let client = &cluster.topology.client;
    probe::eventually(Duration::from_secs(10), "the web Service answering", || probe::answer(client, addr(WEB_V6)));
    let source = format!("[{}]:41000", topology::CLIENT_IP_V6);

    let new_flow = trace(&cluster, &["--src", &source, "--dst", WEB_V6, "--proto", "tcp", "--syn"]);
    let backends: BTreeSet<String> =
        (1..=2).map(|i| SocketAddr::new(topology::backend_ip_v6(i).into(), HTTP_PORT).to_string()).collect();
    let to = new_flow["output"]["dst"].as_str().unwrap_or_default().to_owned();
    assert!(backends.contains(&to), "a new IPv6 flow DNATed to an IPv6 endpoint, not {to}: {new_flow}");
    assert_eq!(new_flow["conntrack_created"], 2, "both directions tracked, then removed: {new_flow}");
    assert_eq!(new_flow["conntrack_removed"], true);

    let reject = trace(&cluster, &["--src", &source, "--dst", EMPTY_V6, "--proto", "tcp", "--syn"]);
    assert_eq!(reject["verdict"], "redirect", "{reject}");
    assert_eq!(reject["output"]["proto"], "ICMPv6");
    assert_eq!(reject["output"]["icmp"], serde_json::json!([1, 4]), "port unreachable: {reject}");
}
