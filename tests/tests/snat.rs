//! External traffic through BPF_PROG_TEST_RUN, in a namespace of the
//! test's own with a node address, a route to another node's pods and
//! known neighbours, so the datapath's routing decisions are real:
//! a NodePort flow to a backend on another node is source-NATed to the
//! node's address, sent straight out of the interface its route names
//! (MACs written, TTL decremented), and its replies are translated back
//! to come from the NodePort; ports are claimed uniquely and exhaustion is
//! a counted drop. Needs root.

use std::net::Ipv4Addr;

use lb_common::{
    conntrack::{
        CtKeyV4, CtValueV4, DIR_REPLY, SNAT_PORT_ATTEMPTS, SNAT_PORTS, is_snat_port, snat_candidate, snat_port,
        snat_stride,
    },
    flow, proto,
    stats::Counter,
};
use lb_tests::{
    datapath::{Counters, Datapath, TC_ACT_REDIRECT, TC_ACT_SHOT},
    packets::{self, Endpoint, ep},
    routed::{self, CLIENT_MAC, NODE_IP, NODE_MAC, OTHER_NODE_MAC, mac},
    topology::run,
};
use lb_userspace::{datapath::loader::TC_PROGRAM, model::NodeContext};

const CLIENT: Endpoint = ep([192, 168, 0, 100], 40000);
const NODE_PORT: Endpoint = ep(NODE_IP, 30090);
const REMOTE_BACKEND: Endpoint = ep([10, 244, 9, 2], 8080);
const CLUSTER_IP: Endpoint = ep([10, 96, 0, 90], 80);
/// The only backend of a second NodePort, whose ports the test exhausts.
const CROWDED_NODE_PORT: Endpoint = ep(NODE_IP, 30091);
const CROWDED_BACKEND: Endpoint = ep([10, 244, 9, 3], 8080);
/// A NodePort whose backend no route reaches.
const UNROUTED_NODE_PORT: Endpoint = ep(NODE_IP, 30092);

const SERVICES: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.90
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30090}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.9.2], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: crowded, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.91
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30091}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: crowded-1, namespace: default, labels: {kubernetes.io/service-name: crowded}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.9.3], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: unrouted, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.92
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30092}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: unrouted-1, namespace: default, labels: {kubernetes.io/service-name: unrouted}}
  addressType: IPv4
  endpoints: [{addresses: [10.250.0.2], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
"#;

/// The node: `ext0` with the node address, the other node as gateway to
/// its pods, the client on the same link; neighbours known, forwarding on.
/// Runs in the calling thread's own namespace (see `Datapath::load`).
fn routed_node() -> Datapath {
    let dp = Datapath::load(NodeContext {
        node_name: Some("node-a".into()),
        node_addresses: vec![Ipv4Addr::from(NODE_IP).into()],
        ..NodeContext::default()
    })
    .expect("load datapath (root needed)");
    routed::set_up().expect("set up the node's routes");
    dp
}

fn counters(pairs: &[(Counter, u64)]) -> Counters {
    pairs.iter().copied().collect()
}

#[test]
fn node_port_flow_to_another_node_is_source_nated_and_its_replies_come_back_from_the_node_port() {
    let mut dp = routed_node();
    dp.apply(SERVICES).expect("program services");

    let (syn, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(CLIENT, NODE_PORT)).expect("run SYN");
    let entry = dp.flow_entry(CLIENT, NODE_PORT).expect("the flow is tracked");
    assert_eq!(entry.nat_address, NODE_IP, "SNAT to the node's address on the route to the backend");
    assert!(is_snat_port(entry.nat_port), "SNAT port {} in range", entry.nat_port);
    let snat = ep(NODE_IP, entry.nat_port);
    assert_eq!(syn.verdict, TC_ACT_REDIRECT, "sent out of ext0 directly");
    assert_eq!(syn.packet, packets::routed(packets::tcp_syn(snat, REMOTE_BACKEND), OTHER_NODE_MAC, NODE_MAC));
    assert_eq!(moved, counters(&[(Counter::NewFlow, 1), (Counter::Redirected, 1)]));

    let reply = packets::tcp(REMOTE_BACKEND, snat, false, b"hello");
    let (back, moved) = dp.run_counted(TC_PROGRAM, &reply).expect("run reply");
    assert_eq!(back.verdict, TC_ACT_REDIRECT, "the reply, now from a node address, skips the stack's martian check");
    let expected = packets::routed(packets::tcp(NODE_PORT, CLIENT, false, b"hello"), CLIENT_MAC, NODE_MAC);
    assert!(packets::checksums_verify(&expected));
    assert_eq!(back.packet, expected, "the client sees the NodePort answer");
    assert_eq!(moved, counters(&[(Counter::ReplyNat, 1), (Counter::Redirected, 1)]));

    let (next, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp(CLIENT, NODE_PORT, false, b"more")).expect("run ACK");
    assert_eq!(next.verdict, TC_ACT_REDIRECT);
    assert_eq!(
        next.packet,
        packets::routed(packets::tcp(snat, REMOTE_BACKEND, false, b"more"), OTHER_NODE_MAC, NODE_MAC)
    );
    assert_eq!(moved, counters(&[(Counter::Established, 1), (Counter::Redirected, 1)]));
}

/// The reply-direction entry of `flow_entry`'s SNATed flow.
fn reply_entry(dp: &Datapath, snat: Endpoint) -> CtValueV4 {
    let key = |(k, _): &(CtKeyV4, CtValueV4)| {
        k.direction == DIR_REPLY && k.dst_address == snat.ip.octets() && k.dst_port == snat.port
    };
    dp.conntrack().expect("read conntrack").into_iter().find(key).expect("the reply is tracked").1
}

#[test]
fn an_established_flow_keeps_its_route_until_the_route_epoch_moves() {
    let mut dp = routed_node();
    dp.apply(SERVICES).expect("program services");
    let ack = packets::tcp(CLIENT, NODE_PORT, false, b"more");
    dp.run(TC_PROGRAM, &packets::tcp_syn(CLIENT, NODE_PORT)).expect("run SYN");
    dp.run(TC_PROGRAM, &ack).expect("run ACK");
    assert_eq!(dp.flow_entry(CLIENT, NODE_PORT).unwrap().route.epoch, 0, "no epoch written: nothing kept");

    dp.set_route_epoch(7).unwrap();
    let (first, moved) = dp.run_counted(TC_PROGRAM, &ack).expect("run ACK");
    assert_eq!(moved, counters(&[(Counter::Established, 1), (Counter::Redirected, 1)]));
    let entry = dp.flow_entry(CLIENT, NODE_PORT).unwrap();
    assert_eq!((entry.route.epoch, entry.route.dmac, entry.route.smac), (7, OTHER_NODE_MAC, NODE_MAC), "kept");
    let snat = ep(NODE_IP, entry.nat_port);
    let reply = packets::tcp(REMOTE_BACKEND, snat, false, b"hello");
    dp.run(TC_PROGRAM, &reply).expect("run reply");
    assert_eq!(reply_entry(&dp, snat).route.dmac, CLIENT_MAC, "the reply direction keeps its own route");

    // The next hop moves to another MAC. Until the agent moves the epoch,
    // the flow's packets keep the route they had: proof that they skip
    // the lookup.
    const MOVED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x15];
    run("ip", &["neigh", "replace", &routed::OTHER_NODE_IP.to_string(), "lladdr", &mac(MOVED_MAC), "dev", "ext0"])
        .unwrap();
    let kept = dp.run(TC_PROGRAM, &ack).expect("run ACK");
    assert_eq!((kept.verdict, kept.packet), (first.verdict, first.packet.clone()), "sent as before");

    dp.set_route_epoch(8).unwrap();
    let (moved_on, counted) = dp.run_counted(TC_PROGRAM, &ack).expect("run ACK");
    assert_eq!(moved_on.verdict, TC_ACT_REDIRECT);
    assert_eq!(
        moved_on.packet,
        packets::routed(packets::tcp(snat, REMOTE_BACKEND, false, b"more"), MOVED_MAC, NODE_MAC)
    );
    assert_eq!(counted, counters(&[(Counter::Established, 1), (Counter::Redirected, 1)]));
    assert_eq!(dp.flow_entry(CLIENT, NODE_PORT).unwrap().route.epoch, 8, "kept again, under the new epoch");
}

/// `SERVICES` with `web`'s one endpoint replaced by `MOVED_BACKEND`.
const MOVED_BACKEND: Endpoint = ep([10, 244, 9, 4], 8080);

#[test]
fn an_established_flow_keeps_its_backend_until_a_sync_removes_it() {
    let mut dp = routed_node();
    dp.apply(SERVICES).expect("program services");
    dp.set_route_epoch(7).unwrap();
    let ack = packets::tcp(CLIENT, NODE_PORT, false, b"more");
    dp.run(TC_PROGRAM, &packets::tcp_syn(CLIENT, NODE_PORT)).expect("run SYN");
    let first = dp.run(TC_PROGRAM, &ack).expect("run ACK");
    let kept = dp.flow_entry(CLIENT, NODE_PORT).unwrap().route;
    assert_eq!(
        (kept.epoch, kept.backend_address, kept.backend_port),
        (7, REMOTE_BACKEND.ip.octets(), REMOTE_BACKEND.port),
        "the backend is kept with the route"
    );

    // The backend's entry goes without the agent's knowing (so without an
    // epoch move): the flow's packets still reach it, proof that they
    // skip the backend lookup.
    let address = std::net::SocketAddrV4::new(REMOTE_BACKEND.ip, REMOTE_BACKEND.port);
    dp.remove_backend_entry(address).expect("remove the backend entry");
    let (again, counted) = dp.run_counted(TC_PROGRAM, &ack).expect("run ACK");
    assert_eq!((again.verdict, again.packet), (first.verdict, first.packet.clone()), "sent as before");
    assert_eq!(counted, counters(&[(Counter::Established, 1), (Counter::Redirected, 1)]));
    // The next full sync repairs the entry; nothing was removed, so the
    // epoch stays.
    dp.apply(SERVICES).expect("repair the backend entry");
    assert_eq!(dp.route_epoch().unwrap(), 7);

    // A sync that removes the backend moves the epoch: the next packet
    // finds its backend gone and is balanced afresh.
    let moved = SERVICES.replacen("addresses: [10.244.9.2]", "addresses: [10.244.9.4]", 1);
    dp.apply(&moved).expect("program the moved endpoint");
    assert_eq!(dp.route_epoch().unwrap(), 8, "moved by the sync");
    let (rebalanced, counted) = dp.run_counted(TC_PROGRAM, &ack).expect("run ACK");
    assert_eq!(counted, counters(&[(Counter::Rebalanced, 1), (Counter::Redirected, 1)]));
    let entry = dp.flow_entry(CLIENT, NODE_PORT).unwrap();
    let snat = ep(NODE_IP, entry.nat_port);
    assert_eq!(
        rebalanced.packet,
        packets::routed(packets::tcp(snat, MOVED_BACKEND, false, b"more"), OTHER_NODE_MAC, NODE_MAC)
    );
    let kept = dp.flow_entry(CLIENT, NODE_PORT).unwrap().route;
    assert_eq!(kept.epoch, 0, "a rebalanced flow starts with nothing kept");
    dp.run(TC_PROGRAM, &ack).expect("run ACK");
    let kept = dp.flow_entry(CLIENT, NODE_PORT).unwrap().route;
    assert_eq!(
        (kept.epoch, kept.backend_address),
        (8, MOVED_BACKEND.ip.octets()),
        "kept again under the epoch the sync moved to"
    );
}

#[test]
fn a_retransmitted_syn_keeps_its_snat_port() {
    let mut dp = routed_node();
    dp.apply(SERVICES).expect("program services");
    let syn = packets::tcp_syn(CLIENT, NODE_PORT);
    let first = dp.run(TC_PROGRAM, &syn).expect("run SYN");
    // No SYN-ACK yet: the client sends its SYN again, and the backend
    // must see the same connection attempt (`snat::PreviousSnat`).
    let (again, moved) = dp.run_counted(TC_PROGRAM, &syn).expect("run the SYN again");
    assert_eq!(again.packet, first.packet, "the same SNAT port");
    assert_eq!(moved, counters(&[(Counter::NewFlow, 1), (Counter::Redirected, 1)]));
}

#[test]
fn cluster_ip_flow_keeps_the_client_address() {
    let mut dp = routed_node();
    dp.apply(SERVICES).expect("program services");
    let pod = ep([10, 244, 1, 7], 41000);
    let out = dp.run(TC_PROGRAM, &packets::tcp_syn(pod, CLUSTER_IP)).expect("run SYN");
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(out.packet, packets::routed(packets::tcp_syn(pod, REMOTE_BACKEND), OTHER_NODE_MAC, NODE_MAC));
    assert!(!dp.flow_entry(pod, CLUSTER_IP).expect("tracked").has_snat());
}

#[test]
fn two_clients_with_the_same_port_get_different_snat_ports() {
    let mut dp = routed_node();
    dp.apply(SERVICES).expect("program services");
    let other_client = ep([192, 168, 0, 101], CLIENT.port);
    run("ip", &["neigh", "replace", "192.168.0.101", "lladdr", &mac(CLIENT_MAC), "dev", "ext0", "nud", "permanent"])
        .expect("neighbour");
    for client in [CLIENT, other_client] {
        dp.run(TC_PROGRAM, &packets::tcp_syn(client, NODE_PORT)).expect("run SYN");
    }
    let first = dp.flow_entry(CLIENT, NODE_PORT).expect("first tracked");
    let second = dp.flow_entry(other_client, NODE_PORT).expect("second tracked");
    assert_ne!(first.nat_port, second.nat_port, "one reply tuple per flow");
}

/// The SNAT port `client`'s flow to `NODE_PORT` tries at `attempt`.
fn candidate(client: Endpoint, attempt: u32) -> u16 {
    let hash = flow::hash(client.ip.octets(), NODE_IP, client.port, NODE_PORT.port, proto::TCP);
    snat_candidate(hash, attempt)
}

#[test]
fn a_port_a_node_port_uses_is_never_handed_out() {
    let mut dp = routed_node();
    // A client whose first candidate is in the NodePort range, and a
    // NodePort Service on that very port.
    let client =
        (41000..).map(|port| ep(CLIENT.ip.octets(), port)).find(|c| (30100..=32767).contains(&candidate(*c, 0)));
    let client = client.expect("some client port starts in the NodePort range");
    let blocker = candidate(client, 0);
    let services = format!(
        "{SERVICES}- apiVersion: v1
  kind: Service
  metadata: {{name: blocker, namespace: default}}
  spec:
    type: NodePort
    clusterIP: 10.96.0.93
    ports: [{{port: 80, protocol: TCP, targetPort: 8080, nodePort: {blocker}}}]
"
    );
    dp.apply(&services).expect("program services");
    dp.run(TC_PROGRAM, &packets::tcp_syn(client, NODE_PORT)).expect("run SYN");
    let entry = dp.flow_entry(client, NODE_PORT).expect("tracked");
    assert_eq!(entry.nat_port, candidate(client, 1), "NodePort {blocker} skipped for the next candidate");
}

#[test]
fn exhausted_snat_ports_drop_the_new_flow_and_count_it() {
    let mut dp = routed_node();
    dp.apply(SERVICES).expect("program services");
    let taken = CtValueV4 { backend_id: 1, frontend_id: 1, ..CtValueV4::default() };
    dp.insert_conntrack((0..SNAT_PORTS).map(snat_port).map(|port| {
        let key = CtKeyV4 {
            src_address: CROWDED_BACKEND.ip.octets(),
            dst_address: NODE_IP,
            src_port: CROWDED_BACKEND.port,
            dst_port: port,
            proto: proto::TCP,
            direction: DIR_REPLY,
            _pad: [0; 2],
        };
        (key, taken)
    }))
    .expect("fill the SNAT range");
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(CLIENT, CROWDED_NODE_PORT)).expect("run SYN");
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(moved, counters(&[(Counter::DropSnatPortsExhausted, 1)]));
    assert!(dp.flow_entry(CLIENT, CROWDED_NODE_PORT).is_none(), "a dropped flow leaves no state");
}

#[test]
fn snat_without_a_route_to_the_backend_is_a_counted_drop() {
    let mut dp = routed_node();
    dp.apply(SERVICES).expect("program services");
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(CLIENT, UNROUTED_NODE_PORT)).expect("run SYN");
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(moved, counters(&[(Counter::DropSnatNoAddress, 1)]));
}

/// Flows to one endpoint until 97 % of its SNAT ports are taken: each
/// still finds a free port among its `SNAT_PORT_ATTEMPTS` candidates, as
/// candidates spread over the range should (with stride 1 for every
/// flow, 190 of these flows find none).
#[test]
fn with_most_ports_taken_every_new_flow_still_finds_one() {
    let mut dp = routed_node();
    dp.apply(SERVICES).expect("program services");
    let flows = SNAT_PORTS as usize * 97 / 100;
    let mut dropped = 0;
    for k in 0..flows {
        let client = ep([192, 168, 1 + (k / 50_000) as u8, (k % 250) as u8 + 1], 1024 + ((k / 250) % 200) as u16 * 300);
        let (_, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(client, CROWDED_NODE_PORT)).expect("run SYN");
        dropped += moved.get(&Counter::DropSnatPortsExhausted).copied().unwrap_or(0);
    }
    assert_eq!(dropped, 0, "flows that found no port, of {flows}");
}

/// 600 NodePorts side by side, and a client whose candidate walk begins
/// among them with the smallest stride a flow can have: it still finds a
/// port, outside the block. (With strides from 1, such a flow tried 512
/// NodePorts, all skipped, and was dropped, each time its tuple came.)
#[test]
fn a_flow_whose_walk_begins_among_many_node_ports_still_finds_a_port() {
    const BLOCK: std::ops::Range<u16> = 30100..30700;
    let mut services = SERVICES.to_owned();
    for (i, node_port) in BLOCK.enumerate() {
        let cluster_ip = format!("10.96.{}.{}", 10 + i / 250, 1 + i % 250);
        services.push_str(&format!(
            "- apiVersion: v1
  kind: Service
  metadata: {{name: np-{i}, namespace: default}}
  spec:
    type: NodePort
    clusterIP: {cluster_ip}
    ports: [{{port: 80, protocol: TCP, targetPort: 8080, nodePort: {node_port}}}]
"
        ));
    }
    let smallest_stride = snat_stride(0);
    let client = (0..=u16::MAX)
        .flat_map(|host| (1024..=u16::MAX).map(move |port| ep([192, 168, (host >> 8) as u8, host as u8], port)))
        .find(|client| {
            let hash = flow::hash(client.ip.octets(), NODE_IP, client.port, NODE_PORT.port, proto::TCP);
            snat_stride(hash) == smallest_stride
                && (BLOCK.start..BLOCK.end - SNAT_PORT_ATTEMPTS as u16).contains(&candidate(*client, 0))
        })
        .expect("a client with the smallest stride starting in the block");
    let mut dp = routed_node();
    dp.apply(&services).expect("program services");
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(client, NODE_PORT)).expect("run SYN");
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "{moved:?}");
    let entry = dp.flow_entry(client, NODE_PORT).expect("tracked");
    assert!(!BLOCK.contains(&entry.nat_port), "SNAT port {} is a NodePort", entry.nat_port);
}

/// A NIC that sums what it receives (`CHECKSUM_COMPLETE`) hands the
/// packet over with that sum in `skb->csum`; after translation (both
/// addresses, both ports, TTL) it must still sum the packet, or the
/// receiving stack reports a hardware checksum failure. The kernel fails
/// the run when it does not; the output is the plain run's.
#[test]
fn a_received_packet_s_complete_checksum_still_sums_it_after_both_translations() {
    let mut dp = routed_node();
    dp.apply(SERVICES).expect("program services");
    let syn = dp.run_checksum_complete(TC_PROGRAM, &packets::tcp_syn(CLIENT, NODE_PORT)).expect("SYN");
    let snat = ep(NODE_IP, dp.flow_entry(CLIENT, NODE_PORT).expect("the flow is tracked").nat_port);
    assert_eq!(syn.verdict, TC_ACT_REDIRECT);
    assert_eq!(syn.packet, packets::routed(packets::tcp_syn(snat, REMOTE_BACKEND), OTHER_NODE_MAC, NODE_MAC));
    let reply = packets::tcp(REMOTE_BACKEND, snat, false, b"hello");
    let back = dp.run_checksum_complete(TC_PROGRAM, &reply).expect("the reply");
    assert_eq!(back.packet, packets::routed(packets::tcp(NODE_PORT, CLIENT, false, b"hello"), CLIENT_MAC, NODE_MAC));
}
