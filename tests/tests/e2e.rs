//! End to end: real namespaces, the real agent binary attaching the real
//! datapath in the node namespace, real servers and real connections.
//! Needs root; run one test at a time (`--test-threads=1`).

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr},
};

use lb_tests::{
    scenario::{self, DemoCluster, ECHO, NOTHING_HERE, WEB},
    servers, topology,
};

fn requests(cluster: &DemoCluster, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let body =
            servers::http_get(&cluster.topology.client, SocketAddr::V4(WEB)).expect("request through the ClusterIP");
        *seen.entry(body).or_insert(0) += 1;
    }
    seen
}

#[test]
fn clusterip_spreads_300_requests_over_all_backends() {
    let cluster = DemoCluster::start().expect("start demo cluster");
    let seen = requests(&cluster, 300);
    assert_eq!(seen.len(), scenario::BACKENDS, "every backend answered: {seen:?}");
    for (backend, n) in &seen {
        assert!(*n >= 60, "{backend} got {n} of 300 (< 20%): {seen:?}");
    }
}

#[test]
fn udp_echo_through_clusterip_replies_from_the_clusterip() {
    let cluster = DemoCluster::start().expect("start demo cluster");
    for i in 0..10 {
        let payload = format!("ping {i}");
        let (reply, from) = servers::udp_exchange(&cluster.topology.client, SocketAddr::V4(ECHO), payload.as_bytes())
            .expect("UDP reply through the ClusterIP");
        assert!(reply.starts_with("backend-") && reply.ends_with(&payload), "reply {reply:?}");
        assert_eq!(from, SocketAddr::V4(ECHO), "reply source is the ClusterIP, not the pod");
    }
}

#[test]
fn removed_backend_gets_no_new_requests_while_established_connection_survives() {
    let mut cluster = DemoCluster::start().expect("start demo cluster");
    // A keep-alive connection, pinned by conntrack to one backend.
    let mut conn =
        servers::connect(&cluster.topology.client, SocketAddr::V4(WEB)).unwrap().expect("connect to the ClusterIP");
    let pinned = servers::http_request(&mut conn, false).unwrap();
    // Remove a different backend from the file.
    let removed = (1..=scenario::BACKENDS).find(|&i| scenario::backend_name(i) != pinned).unwrap();
    let text = scenario::demo_services_without_web_endpoint(topology::backend_ip(removed));
    cluster.update(&text, |m| scenario::backend_count(m, WEB) == Some(2)).expect("agent applies the change");

    let seen = requests(&cluster, 60);
    assert!(!seen.contains_key(&scenario::backend_name(removed)), "removed backend still chosen: {seen:?}");
    assert_eq!(seen.len(), 2, "both remaining backends answer: {seen:?}");
    for _ in 0..3 {
        assert_eq!(
            servers::http_request(&mut conn, false).unwrap(),
            pinned,
            "established connection keeps its backend"
        );
    }
}

#[test]
fn service_without_endpoints_refuses_at_once() {
    let cluster = DemoCluster::start().expect("start demo cluster");
    let err = servers::connect(&cluster.topology.client, SocketAddr::V4(NOTHING_HERE))
        .unwrap()
        .expect_err("no endpoints: the connection must fail");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "refused, not timed out: {err}");
}

/// An established connection to an endpoint that turns terminating (not
/// ready, still serving, as a pod in its grace period) keeps reaching it:
/// new connections go to the ready endpoints, but the pod finishes what it
/// serves, as with kube-proxy's conntrack.
#[test]
fn established_connection_to_a_terminating_endpoint_keeps_its_backend() {
    let ready = |m: &lb_userspace::tables::DesiredMaps| scenario::web_backend_ids(m).len() == 3;
    let mut cluster =
        DemoCluster::start_with(3, &scenario::web_services_ready(&[1, 2, 3]), ready).expect("start cluster");
    let mut conn =
        servers::connect(&cluster.topology.client, SocketAddr::V4(WEB)).unwrap().expect("connect to the ClusterIP");
    let pinned = servers::http_request(&mut conn, false).unwrap();
    let leaving = (1..=3).find(|&i| scenario::backend_name(i) == pinned).unwrap();
    let endpoints: Vec<(usize, [bool; 3])> =
        (1..=3).map(|i| (i, if i == leaving { scenario::TERMINATING } else { scenario::READY })).collect();
    let others: Vec<usize> = (1..=3).filter(|&i| i != leaving).collect();
    cluster
        .update(&scenario::web_services(&endpoints), |m| {
            scenario::web_backend_ids(m).keys().copied().eq(others.iter().copied())
        })
        .expect("agent applies the terminating endpoint");

    let seen = requests(&cluster, 30);
    assert!(!seen.contains_key(&pinned), "terminating endpoint still chosen for new connections: {seen:?}");
    assert_eq!(
        servers::http_request(&mut conn, false).map_err(|e| format!("{e:#}")),
        Ok(pinned),
        "the established connection still reaches the terminating endpoint"
    );
}

/// A ClusterIP opted in to Maglev by annotation: the agent writes its
/// table, and real connections spread over every backend.
#[test]
fn maglev_clusterip_spreads_300_requests_over_all_backends() {
    let text = scenario::web_services_ready(&[1, 2, 3]).replace(
        "metadata: {name: web, namespace: demo}",
        "metadata: {name: web, namespace: demo, annotations: {lb.kubernetes.io/load-balancing: maglev}}",
    );
    let maglev = |m: &lb_userspace::tables::DesiredMaps| {
        let key = lb_common::service::ServiceKeyV4::frontend(WEB.ip().octets(), WEB.port(), lb_common::proto::TCP);
        let frontend = m.services.get(&key);
        frontend
            .is_some_and(|f| f.flags & lb_common::service::FLAG_MAGLEV != 0 && m.maglev.contains_key(&f.frontend_id))
    };
    let cluster = DemoCluster::start_with(3, &text, maglev).expect("start cluster with a Maglev ClusterIP");
    let seen = requests(&cluster, 300);
    assert_eq!(seen.len(), scenario::BACKENDS, "every backend answered: {seen:?}");
    for (backend, n) in &seen {
        assert!(*n >= 60, "{backend} got {n} of 300 (< 20%): {seen:?}");
    }
}

/// Packets received and sent, summed: on the pods' and the client's
/// `eth0`, and on the node's ends of their veths.
fn veth_packets(cluster: &DemoCluster) -> [u64; 4] {
    let topology = &cluster.topology;
    let (mut pods_received, mut node_sent_to_pods) = (0, 0);
    for (i, pod) in topology.backends.iter().enumerate() {
        pods_received += topology::link_packets(pod, "eth0").unwrap().0;
        node_sent_to_pods += topology::link_packets(&topology.node, &format!("to-b{}", i + 1)).unwrap().1;
    }
    let client_received = topology::link_packets(&topology.client, "eth0").unwrap().0;
    let node_sent_to_client = topology::link_packets(&topology.node, "to-client").unwrap().1;
    [pods_received, node_sent_to_pods, client_received, node_sent_to_client]
}

const EXCHANGES: u64 = 20;

/// UDP exchanges through a ClusterIP, with the agent started with
/// `agent_args`: how many packets the pods and the client received, and
/// how many the node's ends of their veths sent, over `EXCHANGES` of them.
fn exchanges_through_veths(agent_args: &[&str]) -> [u64; 4] {
    let cluster = DemoCluster::start_with_args(scenario::BACKENDS, scenario::DEMO_SERVICES, agent_args, |m| {
        scenario::backend_count(m, WEB) == Some(3)
    })
    .expect("start demo cluster");
    let exchange = || {
        servers::udp_exchange(&cluster.topology.client, SocketAddr::V4(ECHO), b"ping")
            .expect("UDP through the ClusterIP")
    };
    // Until every backend has answered once: the first packets to each
    // resolve the neighbours both ways (`bpf_redirect_neigh`, ARP).
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..100 {
        if answered.len() == scenario::BACKENDS {
            break;
        }
        let (reply, _) = exchange();
        answered.insert(reply.split(':').next().unwrap_or_default().to_owned());
    }
    assert_eq!(answered.len(), scenario::BACKENDS, "every backend answered: {answered:?}");
    let before = veth_packets(&cluster);
    for _ in 0..EXCHANGES {
        exchange();
    }
    let after = veth_packets(&cluster);
    std::array::from_fn(|i| after[i] - before[i])
}

/// A translated packet for a pod enters the pod's namespace straight from
/// the node's ingress hook (`bpf_redirect_peer`), both ways: the pods and
/// the client receive every request and reply, and the node's ends of
/// their veths send none of them (a redirect to those ends would count
/// each one there, then pass the veth's receive queue again). With
/// `--redirect-to-peer=false` they are sent by the node's ends.
#[test]
fn translated_packets_enter_the_pods_namespace_directly() {
    let [pods_received, node_sent_to_pods, client_received, node_sent_to_client] = exchanges_through_veths(&[]);
    assert!(
        pods_received >= EXCHANGES && client_received >= EXCHANGES,
        "delivered: {pods_received}, {client_received}"
    );
    // A few neighbour probes may cross; the exchanges must not.
    assert!(
        node_sent_to_pods < EXCHANGES / 2,
        "{node_sent_to_pods} packets sent by the node's ends of the pods' veths"
    );
    assert!(
        node_sent_to_client < EXCHANGES / 2,
        "{node_sent_to_client} packets sent by the node's end of the client's veth"
    );

    let [pods_received, node_sent_to_pods, client_received, node_sent_to_client] =
        exchanges_through_veths(&["--redirect-to-peer=false"]);
    assert!(
        pods_received >= EXCHANGES && client_received >= EXCHANGES,
        "delivered: {pods_received}, {client_received}"
    );
    assert!(node_sent_to_pods >= EXCHANGES, "{node_sent_to_pods} packets sent by the node's ends of the pods' veths");
    assert!(
        node_sent_to_client >= EXCHANGES,
        "{node_sent_to_client} packets sent by the node's end of the client's veth"
    );
}

/// A pod's TCP segments and UDP datagrams reach the node with their L4
/// checksum left for the device to finish (`CHECKSUM_PARTIAL`: the field
/// holds only the pseudo-header sum). The datapath's translation must
/// update that sum for the new addresses and leave it alone for the new
/// ports. Over veths with checksum offload, a wrong sum reaches nobody's
/// check; here the node's ends of the veths compute checksums in software
/// (`tx off`), and the packets leave through them (no peer redirect), so
/// the pods and the client verify what they receive: every request and
/// reply through the ClusterIPs (whose ports differ from their backends')
/// arrives, and no stack counts a checksum error.
#[test]
fn translated_packets_carry_the_right_checksums_where_the_node_computes_them() {
    let cluster =
        DemoCluster::start_with_args(scenario::BACKENDS, scenario::DEMO_SERVICES, &["--redirect-to-peer=false"], |m| {
            scenario::backend_count(m, WEB) == Some(3)
        })
        .expect("start demo cluster");
    let topology = &cluster.topology;
    topology.compute_checksums_on_the_node().unwrap();
    let errors_before = topology.checksum_errors().unwrap();

    let seen = requests(&cluster, 30);
    assert_eq!(seen.values().sum::<usize>(), 30, "every request answered: {seen:?}");
    for i in 0..10 {
        let payload = format!("ping {i}");
        let (reply, _) = servers::udp_exchange(&topology.client, SocketAddr::V4(ECHO), payload.as_bytes())
            .expect("UDP reply through the ClusterIP");
        assert!(reply.ends_with(&payload), "reply {reply:?}");
    }
    let errors = topology.checksum_errors().unwrap() - errors_before;
    assert_eq!(errors, 0, "checksum errors counted by the pods and the client");
}

/// Packets the node's FORWARD chain counted, per rule, in order.
fn forward_chain_packets(node: &str) -> Vec<u64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", node, "iptables", "-nvxL", "FORWARD"])
        .output()
        .expect("run iptables");
    assert!(out.status.success(), "iptables -L in the node namespace");
    // Two header lines, then one line per rule starting with its packet count.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Requests through the ClusterIP with two counting rules in the node's
/// FORWARD chain (where an iptables-based NetworkPolicy of a chained CNI
/// runs): packets to the backends, and replies from the ClusterIP. Returns
/// what each rule counted.
fn through_the_forward_chain(agent_args: &[&str]) -> (u64, u64) {
    const REQUESTS: usize = 10;
    let cluster = DemoCluster::start_with_args(scenario::BACKENDS, scenario::DEMO_SERVICES, agent_args, |m| {
        scenario::backend_count(m, WEB) == Some(3)
    })
    .expect("start demo cluster");
    let node = &cluster.topology.node;
    let clusterip = WEB.ip().to_string();
    for rule in
        [["-A", "FORWARD", "-d", "10.244.0.0/16", "-j", "ACCEPT"], ["-A", "FORWARD", "-s", &clusterip, "-j", "ACCEPT"]]
    {
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", node, "iptables"])
            .args(rule)
            .status()
            .expect("run iptables");
        assert!(status.success(), "iptables in the node namespace");
    }
    assert_eq!(requests(&cluster, REQUESTS).values().sum::<usize>(), REQUESTS);
    let counted = forward_chain_packets(node);
    (counted[0], counted[1])
}

/// `--forward-through-stack`: Service traffic, both ways, passes the
/// node's netfilter FORWARD chain, where a chained CNI's iptables
/// NetworkPolicy sees it. Without it the datapath sends translated packets
/// out directly and the chain is never consulted.
#[test]
fn forward_through_stack_puts_service_traffic_through_the_forward_chain() {
    let (to_backends, replies) = through_the_forward_chain(&["--forward-through-stack"]);
    // At least SYN, ACK, request and FIN each way per connection.
    assert!(to_backends >= 30, "requests cross FORWARD: {to_backends} packets");
    assert!(replies >= 30, "replies cross FORWARD: {replies} packets");

    let (to_backends, replies) = through_the_forward_chain(&[]);
    assert_eq!((to_backends, replies), (0, 0), "by default the chain is bypassed");
}

/// End to end: an established flow follows a change on the node that the
/// kernel announces. Its packets skip the route lookup (the route is kept
/// on its conntrack entry) until the agent answers the announcement by
/// moving the route epoch. `block` (given the flow's backend) stops the
/// flow's next datagram; `unblock` lets it be answered again. UDP: every
/// datagram of the flow is the same size, so each would take the kept
/// route if it were still used.
fn established_flow_follows(block: impl Fn(&DemoCluster, Ipv4Addr), unblock: impl Fn(&DemoCluster, Ipv4Addr)) {
    use std::time::Duration;
    let cluster = DemoCluster::start().expect("start demo cluster");
    let socket = servers::connected_udp(&cluster.topology.client, SocketAddr::V4(ECHO))
        .expect("a UDP socket in the client namespace");
    let exchange = |timeout: Duration| servers::ping(&socket, timeout);
    let first = exchange(Duration::from_secs(3)).expect("an answer through the ClusterIP");
    for _ in 0..3 {
        assert_eq!(exchange(Duration::from_secs(3)).expect("the same flow answers"), first);
    }
    let backend = (1..=scenario::BACKENDS)
        .find(|&i| first.starts_with(&scenario::backend_name(i)))
        .map(topology::backend_ip)
        .expect("the answer names a backend");
    let epoch = cluster.agent.route_epoch().unwrap();
    block(&cluster, backend);
    cluster.agent.wait_route_epoch_past(epoch, Duration::from_secs(5)).expect("the agent sees the change");
    let blocked = exchange(Duration::from_secs(1));
    assert!(
        matches!(&blocked, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "a datagram the node may no longer forward is not answered: {blocked:?}"
    );

    let epoch = cluster.agent.route_epoch().unwrap();
    unblock(&cluster, backend);
    cluster.agent.wait_route_epoch_past(epoch, Duration::from_secs(5)).expect("the agent sees the change undone");
    assert_eq!(exchange(Duration::from_secs(3)).expect("answered once the change is undone"), first);
}

/// A blackhole route to the flow's backend, then removed.
#[test]
fn an_established_flow_follows_a_routing_change_on_the_node() {
    let route = |cluster: &DemoCluster, backend: Ipv4Addr, verb: &str| {
        topology::run_in(&cluster.topology.node, &["ip", "route", verb, "blackhole", &format!("{backend}/32")])
            .unwrap();
    };
    established_flow_follows(|c, b| route(c, b, "add"), |c, b| route(c, b, "del"));
}

/// The node stops forwarding, then forwards again. Forwarding settings
/// come as netconf notifications, which the agent hears on a socket of
/// their own (`datapath::route_epoch`).
#[test]
fn an_established_flow_stops_when_the_node_stops_forwarding() {
    let forwarding = |cluster: &DemoCluster, on: &str| {
        topology::run_in(&cluster.topology.node, &["sysctl", "-qw", &format!("net.ipv4.conf.all.forwarding={on}")])
            .unwrap();
    };
    established_flow_follows(|c, _| forwarding(c, "0"), |c, _| forwarding(c, "1"));
}
