//! ICMP errors about NATed flows, through BPF_PROG_TEST_RUN on a node
//! whose routing decisions are real (`lb_tests::routed`): errors from a
//! router, a backend or a client are translated back to what the host
//! they are for sent, every checksum recomputed from scratch in the
//! reference; errors that match no flow, truncated quotes and other ICMP
//! pass untouched; and a DF packet too big for its route to the backend
//! is answered with fragmentation needed quoting what the client sent.
//! Needs root.

use std::net::Ipv4Addr;

use etherparse::{
    Icmpv4Type,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
};
use lb_common::{
    config::{DatapathConfig, FLAG_FORWARD_THROUGH_STACK},
    stats::Counter,
};
use lb_tests::{
    datapath::{Counters, Datapath, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    packets::{self, Endpoint, ep},
    routed::{self, CLIENT_MAC, NODE_IP, NODE_MAC, OTHER_NODE_IP, OTHER_NODE_MAC},
    topology::run,
};
use lb_userspace::{datapath::loader::TC_PROGRAM, model::NodeContext};

const CLIENT: Endpoint = ep([192, 168, 0, 100], 40000);
const WEB_VIP: Endpoint = ep([10, 96, 0, 90], 80);
const NODE_PORT: Endpoint = ep(NODE_IP, 30090);
const WEB_BACKEND: Endpoint = ep([10, 244, 9, 2], 8080);
const DNS_VIP: Endpoint = ep([10, 96, 0, 53], 53);
const DNS_BACKEND: Endpoint = ep([10, 244, 9, 3], 5353);
/// A Service whose backend sits behind a route with a smaller MTU.
const NARROW_VIP: Endpoint = ep([10, 96, 0, 94], 80);
const NARROW_BACKEND: Endpoint = ep([10, 244, 8, 2], 8080);
/// The narrow Service's NodePort: its flows from outside are SNATed (the
/// backend runs on another node).
const NARROW_NODE_PORT: Endpoint = ep(NODE_IP, 30094);
const NARROW_PODS: &str = "10.244.8.0/24";
const NARROW_MTU: u16 = 1000;
const FRAG_NEEDED_MTU: u16 = 1400;

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
  metadata: {name: dns, namespace: default}
  spec:
    clusterIP: 10.96.0.53
    ports: [{port: 53, protocol: UDP, targetPort: 5353}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns-1, namespace: default, labels: {kubernetes.io/service-name: dns}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.9.3], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 5353, protocol: UDP}]
- apiVersion: v1
  kind: Service
  metadata: {name: narrow, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.94
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30094}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: narrow-1, namespace: default, labels: {kubernetes.io/service-name: narrow}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.8.2], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
"#;

/// The routed node with the Services programmed, and a route with a
/// smaller MTU to the narrow Service's backend.
fn node() -> Datapath {
    let mut dp = Datapath::load(NodeContext {
        node_name: Some("node-a".into()),
        node_addresses: vec![Ipv4Addr::from(NODE_IP).into()],
        ..NodeContext::default()
    })
    .expect("load datapath (root needed)");
    routed::set_up().expect("set up the node's routes");
    let (via, mtu) = (OTHER_NODE_IP.to_string(), NARROW_MTU.to_string());
    // Locked: forwarding ignores an unlocked route MTU, and so does the FIB lookup.
    run("ip", &["route", "add", NARROW_PODS, "via", &via, "mtu", "lock", &mtu]).expect("narrow route");
    dp.apply(SERVICES).expect("program services");
    dp
}

fn counters(pairs: &[(Counter, u64)]) -> Counters {
    pairs.iter().copied().collect()
}

const TRANSLATED: [(Counter, u64); 2] = [(Counter::IcmpErrorNat, 1), (Counter::Redirected, 1)];

fn frag_needed() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: FRAG_NEEDED_MTU })
}

fn port_unreachable() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
}

/// Runs `input` and checks verdict, output and the counters it moved.
fn expect(dp: &mut Datapath, description: &str, input: &[u8], verdict: i32, output: &[u8], moved: &[(Counter, u64)]) {
    let (out, actual) = dp.run_counted(TC_PROGRAM, input).unwrap_or_else(|e| panic!("{description}: run: {e:#}"));
    assert_eq!(out.verdict, verdict, "{description}: verdict");
    assert_eq!(out.packet, output, "{description}: output packet");
    assert_eq!(actual, counters(moved), "{description}: counters moved");
}

/// Runs `packet` to open a flow; it must be NATed.
fn open(dp: &mut Datapath, packet: &[u8]) {
    let (out, moved) = dp.run_counted(TC_PROGRAM, packet).expect("run the flow's first packet");
    assert_eq!(moved.get(&Counter::NewFlow), Some(&1), "the flow is new and NATed: {moved:?}");
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
}

#[test]
fn errors_about_nated_flows_are_translated_back() {
    let mut dp = node();
    let payload = [0x5a; 64];
    open(&mut dp, &packets::tcp_syn(CLIENT, WEB_VIP));
    let sent = packets::tcp(CLIENT, WEB_BACKEND, false, &payload);
    let client_sent = packets::tcp(CLIENT, WEB_VIP, false, &payload);
    let to_client = |kind: Icmpv4Type, l4_bytes: usize| {
        let error = packets::icmp_error(WEB_VIP.ip, CLIENT.ip, kind, packets::quote(&client_sent, l4_bytes));
        packets::routed(error, CLIENT_MAC, NODE_MAC)
    };
    expect(
        &mut dp,
        "a router's fragmentation needed about a DNATed TCP flow, quoting the whole segment",
        &packets::icmp_error(OTHER_NODE_IP, CLIENT.ip, frag_needed(), packets::quote(&sent, 20 + 64)),
        TC_ACT_REDIRECT,
        &to_client(frag_needed(), 20 + 64),
        &TRANSLATED,
    );
    expect(
        &mut dp,
        "a quote of 8 TCP bytes: translated, the TCP checksum outside it left alone",
        &packets::icmp_error(OTHER_NODE_IP, CLIENT.ip, frag_needed(), packets::quote(&sent, 8)),
        TC_ACT_REDIRECT,
        &to_client(frag_needed(), 8),
        &TRANSLATED,
    );
    let time_exceeded = Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit);
    expect(
        &mut dp,
        "a router's time exceeded about a DNATed TCP flow",
        &packets::icmp_error(OTHER_NODE_IP, CLIENT.ip, time_exceeded.clone(), packets::quote(&sent, 8)),
        TC_ACT_REDIRECT,
        &to_client(time_exceeded, 8),
        &TRANSLATED,
    );
}

#[test]
fn error_about_an_snated_flow_goes_to_the_client() {
    let mut dp = node();
    open(&mut dp, &packets::tcp_syn(CLIENT, NODE_PORT));
    let snat = ep(NODE_IP, dp.flow_entry(CLIENT, NODE_PORT).expect("tracked").nat_port);
    let sent = packets::tcp(snat, WEB_BACKEND, false, b"upload");
    let client_sent = packets::tcp(CLIENT, NODE_PORT, false, b"upload");
    let error = packets::icmp_error(OTHER_NODE_IP, snat.ip, frag_needed(), packets::quote(&sent, 26));
    let expected = packets::icmp_error(NODE_PORT.ip, CLIENT.ip, frag_needed(), packets::quote(&client_sent, 26));
    let expected = packets::routed(expected, CLIENT_MAC, NODE_MAC);
    expect(
        &mut dp,
        "frag needed to the SNAT address reaches the client",
        &error,
        TC_ACT_REDIRECT,
        &expected,
        &TRANSLATED,
    );
}

#[test]
fn under_forward_through_stack_errors_take_the_forward_path_unless_their_source_is_the_nodes() {
    let mut dp = node();
    let fts = DatapathConfig { flags: FLAG_FORWARD_THROUGH_STACK };
    dp.set_config(fts).expect("--forward-through-stack");
    let payload = [0x5a; 64];

    // A ClusterIP flow: its error, translated, goes on through the stack's
    // forward path (and its filter chains), as the flow's packets do.
    let (first, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(CLIENT, WEB_VIP)).expect("run");
    assert_eq!((first.verdict, moved.get(&Counter::NewFlow)), (TC_ACT_UNSPEC, Some(&1)), "NATed, to the stack");
    let sent = packets::tcp(CLIENT, WEB_BACKEND, false, &payload);
    let client_sent = packets::tcp(CLIENT, WEB_VIP, false, &payload);
    let translated = packets::icmp_error(WEB_VIP.ip, CLIENT.ip, frag_needed(), packets::quote(&client_sent, 8));
    expect(
        &mut dp,
        "a router's error about a ClusterIP flow, to the stack",
        &packets::icmp_error(OTHER_NODE_IP, CLIENT.ip, frag_needed(), packets::quote(&sent, 8)),
        TC_ACT_UNSPEC,
        &translated,
        &[(Counter::IcmpErrorNat, 1)],
    );

    // A NodePort flow: the error's source becomes the node's own address,
    // which the forward path would drop as a martian: sent as before.
    open(&mut dp, &packets::tcp_syn(CLIENT, NODE_PORT));
    let snat = ep(NODE_IP, dp.flow_entry(CLIENT, NODE_PORT).expect("tracked").nat_port);
    let sent = packets::tcp(snat, WEB_BACKEND, false, b"upload");
    let client_sent = packets::tcp(CLIENT, NODE_PORT, false, b"upload");
    let expected = packets::icmp_error(NODE_PORT.ip, CLIENT.ip, frag_needed(), packets::quote(&client_sent, 26));
    expect(
        &mut dp,
        "an error about a NodePort flow, sent by the datapath",
        &packets::icmp_error(OTHER_NODE_IP, snat.ip, frag_needed(), packets::quote(&sent, 26)),
        TC_ACT_REDIRECT,
        &packets::routed(expected, CLIENT_MAC, NODE_MAC),
        &TRANSLATED,
    );
}

#[test]
fn port_unreachable_for_a_udp_flow_is_translated_both_ways() {
    let mut dp = node();
    open(&mut dp, &packets::udp(CLIENT, DNS_VIP, b"query"));
    let from_backend = packets::icmp_error(
        DNS_BACKEND.ip,
        CLIENT.ip,
        port_unreachable(),
        packets::quote(&packets::udp(CLIENT, DNS_BACKEND, b"query"), 13),
    );
    let for_client = packets::icmp_error(
        DNS_VIP.ip,
        CLIENT.ip,
        port_unreachable(),
        packets::quote(&packets::udp(CLIENT, DNS_VIP, b"query"), 13),
    );
    let for_client = packets::routed(for_client, CLIENT_MAC, NODE_MAC);
    expect(&mut dp, "backend's port unreachable", &from_backend, TC_ACT_REDIRECT, &for_client, &TRANSLATED);
    // The client closed its socket before the answer came: its error about
    // the reply (from the frontend) goes to the backend, about its packet.
    let from_client = packets::icmp_error(
        CLIENT.ip,
        DNS_VIP.ip,
        port_unreachable(),
        packets::quote(&packets::udp(DNS_VIP, CLIENT, b"answer"), 14),
    );
    let for_backend = packets::icmp_error(
        CLIENT.ip,
        DNS_BACKEND.ip,
        port_unreachable(),
        packets::quote(&packets::udp(DNS_BACKEND, CLIENT, b"answer"), 14),
    );
    let for_backend = packets::routed(for_backend, OTHER_NODE_MAC, NODE_MAC);
    expect(
        &mut dp,
        "client's port unreachable about a reply",
        &from_client,
        TC_ACT_REDIRECT,
        &for_backend,
        &TRANSLATED,
    );
}

#[test]
fn other_icmp_passes_untouched_and_creates_no_state() {
    let mut dp = node();
    let stranger = ep([192, 168, 0, 100], 40999);
    let unrelated = packets::tcp(stranger, WEB_BACKEND, false, b"x");
    let syn = packets::tcp_syn(stranger, WEB_VIP);
    let cases: [(&str, Vec<u8>, Counter); 4] = [
        (
            "error quoting an untracked flow",
            packets::icmp_error(OTHER_NODE_IP, stranger.ip, frag_needed(), packets::quote(&unrelated, 8)),
            Counter::PassIcmpErrorUntracked,
        ),
        (
            "error whose quote stops inside the ports",
            packets::icmp_error(OTHER_NODE_IP, stranger.ip, port_unreachable(), packets::quote(&syn, 3)),
            Counter::PassIcmpErrorTruncated,
        ),
        (
            "error whose quote is not IPv4",
            packets::icmp_error(OTHER_NODE_IP, stranger.ip, port_unreachable(), &[0x60; 28]),
            Counter::PassIcmpErrorTruncated,
        ),
        ("echo request to a ClusterIP", packets::icmp_echo(stranger.ip, WEB_VIP.ip), Counter::PassOtherProtocol),
    ];
    for (description, input, counter) in cases {
        expect(&mut dp, description, &input, TC_ACT_UNSPEC, &input, &[(counter, 1)]);
    }
    let state = dp.conntrack().expect("conntrack");
    assert!(state.is_empty(), "no state: {state:?}");
}

#[test]
fn df_packet_too_big_for_the_backend_route_is_answered_with_frag_needed() {
    let mut dp = node();
    open(&mut dp, &packets::tcp_syn(CLIENT, NARROW_VIP));
    let big = vec![0x42; usize::from(NARROW_MTU)];
    let too_big = packets::tcp(CLIENT, NARROW_VIP, false, &big);
    let frag_needed = DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: NARROW_MTU };
    let answer = packets::icmp_unreachable_reply(&too_big, NARROW_VIP.ip, CLIENT.ip, frag_needed);
    assert!(packets::checksums_verify(&answer), "reference answer");
    expect(&mut dp, "DF segment over the MTU", &too_big, TC_ACT_REDIRECT, &answer, &[(Counter::IcmpFragNeeded, 1)]);
    let fragmentable = packets::without_dont_fragment(too_big);
    let dnated = packets::without_dont_fragment(packets::tcp(CLIENT, NARROW_BACKEND, false, &big));
    let description = "a segment without DF goes to the stack to be fragmented";
    expect(&mut dp, description, &fragmentable, TC_ACT_UNSPEC, &dnated, &[(Counter::Established, 1)]);
    let fits = vec![0x42; usize::from(NARROW_MTU) - 40];
    let routed = packets::routed(packets::tcp(CLIENT, NARROW_BACKEND, false, &fits), OTHER_NODE_MAC, NODE_MAC);
    let input = packets::tcp(CLIENT, NARROW_VIP, false, &fits);
    expect(
        &mut dp,
        "a DF segment that fits",
        &input,
        TC_ACT_REDIRECT,
        &routed,
        &[(Counter::Established, 1), (Counter::Redirected, 1)],
    );
}

/// The first packet of a flow that needs SNAT is checked against the
/// route's MTU before it is translated, as a DNATed one is: too big with
/// DF, it is answered from the NodePort quoting what the client sent, and
/// no flow is tracked; without DF it is dropped (the stack cannot fragment
/// a packet that only the datapath may send).
#[test]
fn df_first_packet_of_an_snated_flow_too_big_is_answered_with_frag_needed() {
    let mut dp = node();
    let big = vec![0x42; usize::from(NARROW_MTU)];
    let too_big = packets::tcp(CLIENT, NARROW_NODE_PORT, true, &big);
    let frag_needed = DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: NARROW_MTU };
    let answer = packets::icmp_unreachable_reply(&too_big, NARROW_NODE_PORT.ip, CLIENT.ip, frag_needed);
    let description = "a DF SYN over the MTU to a NodePort";
    expect(&mut dp, description, &too_big, TC_ACT_REDIRECT, &answer, &[(Counter::IcmpFragNeeded, 1)]);
    assert!(dp.conntrack().expect("conntrack").is_empty(), "no flow is tracked");
    let unfragmentable = packets::without_dont_fragment(too_big);
    let (out, moved) = dp.run_counted(TC_PROGRAM, &unfragmentable).expect("run");
    assert_eq!((out.verdict, moved), (TC_ACT_SHOT, counters(&[(Counter::DropSnatNoAddress, 1)])), "without DF");
    let fits = vec![0x42; usize::from(NARROW_MTU) - 60];
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp(CLIENT, NARROW_NODE_PORT, true, &fits)).expect("run");
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "a SYN that fits is SNATed and sent: {moved:?}");
    assert_eq!(moved.get(&Counter::NewFlow), Some(&1));
}
