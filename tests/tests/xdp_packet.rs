//! The XDP fast path through BPF_PROG_TEST_RUN, on the same routed node
//! as `snat.rs` (its own namespace: `ext0` with the node address, the
//! other node as gateway to its Pods, the client on the link, neighbours
//! known):
//! - a NodePort flow from outside to a backend on the other node is
//!   source-NATed and sent back out of `ext0` at XDP (`XDP_TX`), and so is
//!   its reply to the client, with checksums updated in software;
//! - what XDP cannot send itself (a route out of an interface not in
//!   `LB_XDP_DEVICES`, no route at all, a Service to reject) passes to tc
//!   byte for byte, with no flow tracked, and tc then does what it does
//!   without XDP; a source outside `loadBalancerSourceRanges` is dropped
//!   at XDP already;
//! - the same for IPv6 on the node's IPv6 address (`routed::set_up_v6`):
//!   a NodePort flow and its replies sent back out at XDP, and what XDP
//!   cannot finish (a route it cannot send along, no endpoints, a
//!   ClientIP frontend's first packet, a hop limit about to expire)
//!   passed to tc untouched and untracked. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::stats::Counter;
use lb_tests::{
    datapath::{Counters, Datapath, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    packets::{self, Endpoint, ep},
    packets6::{self, Endpoint6, ep6},
    routed::{self, CLIENT_MAC, NODE_IP, NODE_MAC, OTHER_NODE_MAC},
};
use lb_userspace::{datapath::loader::TC_PROGRAM, model::NodeContext};

const CLIENT: Endpoint = ep([192, 168, 0, 100], 40000);
const NODE_PORT: Endpoint = ep(NODE_IP, 30090);
const REMOTE_BACKEND: Endpoint = ep([10, 244, 9, 2], 8080);
const DNS_NODE_PORT: Endpoint = ep(NODE_IP, 30053);
const REMOTE_DNS: Endpoint = ep([10, 244, 9, 3], 53);
/// A NodePort whose backend no route reaches.
const UNROUTED_NODE_PORT: Endpoint = ep(NODE_IP, 30092);
/// A LoadBalancer IP admitting 10.0.0.0/8 only.
const GUARDED_LB: Endpoint = ep([203, 0, 113, 10], 80);
/// A NodePort without endpoints.
const EMPTY_NODE_PORT: Endpoint = ep(NODE_IP, 30093);
/// A ClientIP-affinity NodePort.
const STICKY_NODE_PORT: Endpoint = ep(NODE_IP, 30094);

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
    type: NodePort
    clusterIP: 10.96.0.53
    ports: [{port: 53, protocol: UDP, targetPort: 53, nodePort: 30053}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns-1, namespace: default, labels: {kubernetes.io/service-name: dns}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.9.3], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 53, protocol: UDP}]
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
- apiVersion: v1
  kind: Service
  metadata: {name: guarded, namespace: default}
  spec:
    type: LoadBalancer
    clusterIP: 10.96.0.85
    loadBalancerSourceRanges: [10.0.0.0/8]
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30085}]
  status:
    loadBalancer: {ingress: [{ip: 203.0.113.10}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: guarded-1, namespace: default, labels: {kubernetes.io/service-name: guarded}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.9.4], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.93
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30093}]
- apiVersion: v1
  kind: Service
  metadata: {name: sticky, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.94
    sessionAffinity: ClientIP
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30094}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: sticky-1, namespace: default, labels: {kubernetes.io/service-name: sticky}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.9.5], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
"#;

fn routed_node() -> Datapath {
    let mut dp = Datapath::load(NodeContext {
        node_name: Some("node-a".into()),
        node_addresses: vec![Ipv4Addr::from(NODE_IP).into()],
        ..NodeContext::default()
    })
    .expect("load datapath (root needed)");
    routed::set_up().expect("set up the node's routes");
    dp.apply(SERVICES).expect("program services");
    dp
}

/// `ext0`'s index in the test thread's namespace.
fn ext0() -> u32 {
    // SAFETY: a NUL-terminated name; the call only reads it.
    let index = unsafe { libc::if_nametoindex(c"ext0".as_ptr()) };
    assert_ne!(index, 0, "ext0 exists");
    index
}

fn counters(pairs: &[(Counter, u64)]) -> Counters {
    pairs.iter().copied().collect()
}

#[test]
fn node_port_flow_to_another_node_and_its_replies_are_sent_back_out_at_xdp() {
    let mut dp = routed_node();
    let ext0 = ext0();

    let (syn, moved) = dp.run_xdp_counted(&packets::tcp_syn(CLIENT, NODE_PORT), ext0).expect("run SYN");
    let entry = dp.flow_entry(CLIENT, NODE_PORT).expect("the flow is tracked");
    assert_eq!(entry.nat_address, NODE_IP, "SNAT to the node's address on the route to the backend");
    let snat = ep(NODE_IP, entry.nat_port);
    assert_eq!(syn.verdict, XDP_TX, "the backend's node is reached through the interface the SYN came in on");
    let expected = packets::routed(packets::tcp_syn(snat, REMOTE_BACKEND), OTHER_NODE_MAC, NODE_MAC);
    assert!(packets::checksums_verify(&syn.packet), "checksums updated in software verify");
    assert_eq!(syn.packet, expected);
    assert_eq!(moved, counters(&[(Counter::NewFlow, 1), (Counter::XdpSent, 1)]));

    let reply = packets::tcp(REMOTE_BACKEND, snat, false, b"hello");
    let (back, moved) = dp.run_xdp_counted(&reply, ext0).expect("run reply");
    assert_eq!(back.verdict, XDP_TX);
    let expected = packets::routed(packets::tcp(NODE_PORT, CLIENT, false, b"hello"), CLIENT_MAC, NODE_MAC);
    assert!(packets::checksums_verify(&back.packet));
    assert_eq!(back.packet, expected, "the client sees the NodePort answer");
    assert_eq!(moved, counters(&[(Counter::ReplyNat, 1), (Counter::XdpSent, 1)]));

    let (next, moved) = dp.run_xdp_counted(&packets::tcp(CLIENT, NODE_PORT, false, b"more"), ext0).expect("run ACK");
    assert_eq!(next.verdict, XDP_TX);
    assert_eq!(
        next.packet,
        packets::routed(packets::tcp(snat, REMOTE_BACKEND, false, b"more"), OTHER_NODE_MAC, NODE_MAC)
    );
    assert_eq!(moved, counters(&[(Counter::Established, 1), (Counter::XdpSent, 1)]));
}

#[test]
fn udp_checksums_are_updated_in_software_and_a_zero_checksum_stays_zero() {
    let mut dp = routed_node();
    let ext0 = ext0();

    let query = packets::udp(CLIENT, DNS_NODE_PORT, b"query");
    let (out, moved) = dp.run_xdp_counted(&query, ext0).expect("run query");
    assert_eq!(out.verdict, XDP_TX);
    let snat = ep(NODE_IP, dp.flow_entry(CLIENT, DNS_NODE_PORT).expect("tracked").nat_port);
    assert_eq!(out.packet, packets::routed(packets::udp(snat, REMOTE_DNS, b"query"), OTHER_NODE_MAC, NODE_MAC));
    assert_eq!(moved, counters(&[(Counter::NewFlow, 1), (Counter::XdpSent, 1)]));

    // A datagram without a checksum (0: "none") must not gain a wrong one.
    let unchecked = packets::udp_without_checksum(CLIENT, DNS_NODE_PORT, b"again");
    let out = dp.run_xdp(&unchecked, ext0).expect("run unchecked");
    assert_eq!(out.verdict, XDP_TX);
    let expected = packets::routed(packets::udp_without_checksum(snat, REMOTE_DNS, b"again"), OTHER_NODE_MAC, NODE_MAC);
    assert_eq!(out.packet, expected, "no checksum stays no checksum");
}

#[test]
fn a_route_out_of_an_interface_xdp_cannot_send_to_passes_to_tc_untouched_and_untracked() {
    let mut dp = routed_node();
    // Received on the namespace's loopback: the backend's route leaves by
    // ext0, which is not (yet) in LB_XDP_DEVICES.
    let syn = packets::tcp_syn(CLIENT, NODE_PORT);
    let (out, moved) = dp.run_xdp_counted(&syn, 0).expect("run SYN");
    assert_eq!(out.verdict, XDP_PASS);
    assert_eq!(out.packet, syn, "passed byte for byte");
    assert!(dp.flow_entry(CLIENT, NODE_PORT).is_none(), "no flow tracked");
    assert_eq!(moved, counters(&[(Counter::XdpPassToTc, 1)]));

    // tc then handles it as it would without XDP.
    let (out, moved) = dp.run_counted(TC_PROGRAM, &syn).expect("run tc");
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(moved, counters(&[(Counter::NewFlow, 1), (Counter::Redirected, 1)]));

    // Once ext0 takes XDP frames, XDP redirects there itself.
    dp.allow_xdp_device(ext0()).expect("allow ext0");
    let other = ep([192, 168, 0, 100], 40001);
    let (out, moved) = dp.run_xdp_counted(&packets::tcp_syn(other, NODE_PORT), 0).expect("run second SYN");
    assert_eq!(out.verdict, XDP_REDIRECT);
    let snat = ep(NODE_IP, dp.flow_entry(other, NODE_PORT).expect("tracked").nat_port);
    assert_eq!(out.packet, packets::routed(packets::tcp_syn(snat, REMOTE_BACKEND), OTHER_NODE_MAC, NODE_MAC));
    assert_eq!(moved, counters(&[(Counter::NewFlow, 1), (Counter::XdpSent, 1)]));
}

#[test]
fn what_only_tc_can_finish_passes_to_tc_and_what_tc_would_drop_is_dropped_at_xdp() {
    let mut dp = routed_node();
    let ext0 = ext0();

    // No endpoints: the ICMP answer is tc's to build.
    let syn = packets::tcp_syn(CLIENT, EMPTY_NODE_PORT);
    let (out, moved) = dp.run_xdp_counted(&syn, ext0).expect("run SYN to an empty Service");
    assert_eq!((out.verdict, out.packet == syn), (XDP_PASS, true));
    assert_eq!(moved, counters(&[(Counter::XdpPassToTc, 1)]));
    let (out, moved) = dp.run_counted(TC_PROGRAM, &syn).expect("run tc");
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "tc answers with port unreachable");
    assert_eq!(moved, counters(&[(Counter::RejectNoEndpoints, 1)]));

    // No route to the backend: XDP leaves it; tc drops the SNATed flow.
    let syn = packets::tcp_syn(CLIENT, UNROUTED_NODE_PORT);
    let (out, moved) = dp.run_xdp_counted(&syn, ext0).expect("run SYN to an unrouted backend");
    assert_eq!((out.verdict, out.packet == syn), (XDP_PASS, true));
    assert_eq!(moved, counters(&[(Counter::XdpPassToTc, 1)]));
    assert!(dp.flow_entry(CLIENT, UNROUTED_NODE_PORT).is_none(), "no flow tracked");
    let (out, moved) = dp.run_counted(TC_PROGRAM, &syn).expect("run tc");
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(moved, counters(&[(Counter::DropSnatNoAddress, 1)]));

    // A ClientIP frontend's new flow: chosen (and its affinity counted)
    // once, at tc; its next packets are XDP's.
    let syn = packets::tcp_syn(CLIENT, STICKY_NODE_PORT);
    let (out, moved) = dp.run_xdp_counted(&syn, ext0).expect("run SYN to a ClientIP NodePort");
    assert_eq!((out.verdict, out.packet == syn), (XDP_PASS, true));
    assert_eq!(moved, counters(&[(Counter::XdpPassToTc, 1)]), "no affinity choice at XDP");
    let (out, moved) = dp.run_counted(TC_PROGRAM, &syn).expect("run tc");
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(moved, counters(&[(Counter::NewFlow, 1), (Counter::AffinityMiss, 1), (Counter::Redirected, 1)]));
    let ack = packets::tcp(CLIENT, STICKY_NODE_PORT, false, b"next");
    let (out, moved) = dp.run_xdp_counted(&ack, ext0).expect("run the next segment");
    assert_eq!(out.verdict, XDP_TX, "established: sent at XDP");
    assert_eq!(moved, counters(&[(Counter::Established, 1), (Counter::XdpSent, 1)]));

    // A source outside loadBalancerSourceRanges: dropped at XDP already,
    // as tc would, and nothing tracked.
    let syn = packets::tcp_syn(CLIENT, GUARDED_LB);
    let (out, moved) = dp.run_xdp_counted(&syn, ext0).expect("run SYN from outside the ranges");
    assert_eq!(out.verdict, XDP_DROP);
    assert_eq!(moved, counters(&[(Counter::DropSourceRange, 1)]));
    assert!(dp.flow_entry(CLIENT, GUARDED_LB).is_none(), "no flow tracked");

    // Not Service traffic: passed, and left for tc to count.
    let other = packets::tcp_syn(CLIENT, ep(NODE_IP, 22));
    let (out, moved) = dp.run_xdp_counted(&other, ext0).expect("run SSH SYN");
    assert_eq!((out.verdict, out.packet == other), (XDP_PASS, true));
    assert_eq!(moved, counters(&[]));
}

/// The IPv6 twins of `web`, `dns`, `empty` and `sticky`, on the node's
/// IPv6 address, their endpoints on the other node.
const SERVICES_V6: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web6, namespace: default}
  spec:
    type: NodePort
    ipFamilies: [IPv6]
    clusterIP: fd00:96::90
    clusterIPs: [fd00:96::90]
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30090}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web6-1, namespace: default, labels: {kubernetes.io/service-name: web6}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:9::2"], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: dns6, namespace: default}
  spec:
    type: NodePort
    ipFamilies: [IPv6]
    clusterIP: fd00:96::53
    clusterIPs: [fd00:96::53]
    ports: [{port: 53, protocol: UDP, targetPort: 53, nodePort: 30053}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns6-1, namespace: default, labels: {kubernetes.io/service-name: dns6}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:9::3"], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 53, protocol: UDP}]
- apiVersion: v1
  kind: Service
  metadata: {name: empty6, namespace: default}
  spec:
    type: NodePort
    ipFamilies: [IPv6]
    clusterIP: fd00:96::93
    clusterIPs: [fd00:96::93]
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30093}]
- apiVersion: v1
  kind: Service
  metadata: {name: sticky6, namespace: default}
  spec:
    type: NodePort
    ipFamilies: [IPv6]
    clusterIP: fd00:96::94
    clusterIPs: [fd00:96::94]
    sessionAffinity: ClientIP
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30094}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: sticky6-1, namespace: default, labels: {kubernetes.io/service-name: sticky6}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:9::5"], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
"#;

const CLIENT_V6: Endpoint6 = ep6(routed::CLIENT_IP_V6, 40000);
const NODE_PORT_V6: Endpoint6 = ep6(routed::NODE_IP_V6, 30090);
const DNS_NODE_PORT_V6: Endpoint6 = ep6(routed::NODE_IP_V6, 30053);
const EMPTY_NODE_PORT_V6: Endpoint6 = ep6(routed::NODE_IP_V6, 30093);
const STICKY_NODE_PORT_V6: Endpoint6 = ep6(routed::NODE_IP_V6, 30094);

fn pod_v6(last: u16, port: u16) -> Endpoint6 {
    ep6(Ipv6Addr::new(0xfd00, 0x244, 9, 0, 0, 0, 0, last), port)
}

/// The routed node with its IPv6 side too (`routed::set_up_v6`).
fn routed_node_v6() -> Datapath {
    let mut dp = Datapath::load(NodeContext {
        node_name: Some("node-a".into()),
        node_addresses: vec![routed::NODE_IP_V6.into()],
        dual_stack: true,
        ..NodeContext::default()
    })
    .expect("load datapath (root needed)");
    routed::set_up().and_then(|()| routed::set_up_v6()).expect("set up the node's routes");
    dp.apply(SERVICES_V6).expect("program services");
    dp
}

/// The source NAT of the tracked IPv6 flow from `client` to `frontend`.
fn snat_v6(dp: &Datapath, client: Endpoint6, frontend: Endpoint6) -> Option<Endpoint6> {
    dp.flow_entry_v6(client, frontend).map(|v| ep6(Ipv6Addr::from(v.nat_address), v.nat_port))
}

#[test]
fn an_ipv6_node_port_flow_to_another_node_and_its_replies_are_sent_back_out_at_xdp() {
    let mut dp = routed_node_v6();
    let ext0 = ext0();
    let backend = pod_v6(2, 8080);

    let syn = packets6::tcp(CLIENT_V6, NODE_PORT_V6, true, &[]);
    let (out, moved) = dp.run_xdp_counted(&syn, ext0).expect("run SYN");
    let snat = snat_v6(&dp, CLIENT_V6, NODE_PORT_V6).expect("the flow is tracked");
    assert_eq!(snat.ip, routed::NODE_IP_V6, "SNAT to the node's address on the route to the backend");
    assert_eq!(out.verdict, XDP_TX, "the backend's node is reached through the interface the SYN came in on");
    assert!(packets6::checksums_verify(&out.packet), "checksums updated in software verify");
    assert_eq!(out.packet, packets6::routed(packets6::tcp(snat, backend, true, &[]), OTHER_NODE_MAC, NODE_MAC));
    assert_eq!(moved, counters(&[(Counter::NewFlow, 1), (Counter::XdpSent, 1)]));

    let (back, moved) = dp.run_xdp_counted(&packets6::tcp(backend, snat, false, b"hello"), ext0).expect("run reply");
    assert_eq!(back.verdict, XDP_TX);
    assert!(packets6::checksums_verify(&back.packet));
    let expected = packets6::routed(packets6::tcp(NODE_PORT_V6, CLIENT_V6, false, b"hello"), CLIENT_MAC, NODE_MAC);
    assert_eq!(back.packet, expected, "the client sees the NodePort answer");
    assert_eq!(moved, counters(&[(Counter::ReplyNat, 1), (Counter::XdpSent, 1)]));

    let ack = packets6::tcp(CLIENT_V6, NODE_PORT_V6, false, b"more");
    let (next, moved) = dp.run_xdp_counted(&ack, ext0).expect("run ACK");
    assert_eq!(next.verdict, XDP_TX);
    assert_eq!(next.packet, packets6::routed(packets6::tcp(snat, backend, false, b"more"), OTHER_NODE_MAC, NODE_MAC));
    assert_eq!(moved, counters(&[(Counter::Established, 1), (Counter::XdpSent, 1)]));

    // UDP, whose checksum IPv6 makes mandatory, updated in software too.
    let query = packets6::udp(CLIENT_V6, DNS_NODE_PORT_V6, b"query");
    let (out, moved) = dp.run_xdp_counted(&query, ext0).expect("run query");
    assert_eq!(out.verdict, XDP_TX);
    let snat = snat_v6(&dp, CLIENT_V6, DNS_NODE_PORT_V6).expect("tracked");
    let expected = packets6::routed(packets6::udp(snat, pod_v6(3, 53), b"query"), OTHER_NODE_MAC, NODE_MAC);
    assert!(packets6::checksums_verify(&out.packet));
    assert_eq!(out.packet, expected);
    assert_eq!(moved, counters(&[(Counter::NewFlow, 1), (Counter::XdpSent, 1)]));
}

#[test]
fn ipv6_packets_xdp_cannot_finish_pass_to_tc_untouched_and_untracked() {
    let mut dp = routed_node_v6();
    let ext0 = ext0();
    let passed = |dp: &mut Datapath, packet: &[u8], ingress: u32| {
        let (out, moved) = dp.run_xdp_counted(packet, ingress).expect("run at XDP");
        assert_eq!((out.verdict, out.packet.as_slice()), (XDP_PASS, packet), "passed byte for byte");
        moved
    };

    // Received on the namespace's loopback: the route to the backend
    // leaves by ext0, not in LB_XDP_DEVICES. tc then sends it itself.
    let syn = packets6::tcp(CLIENT_V6, NODE_PORT_V6, true, &[]);
    assert_eq!(passed(&mut dp, &syn, 0), counters(&[(Counter::XdpPassToTc, 1)]));
    assert!(snat_v6(&dp, CLIENT_V6, NODE_PORT_V6).is_none(), "no flow tracked");
    let (out, moved) = dp.run_counted(TC_PROGRAM, &syn).expect("run tc");
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(moved, counters(&[(Counter::NewFlow, 1), (Counter::Redirected, 1)]));
    // Its reply, arriving the same way, also passes untouched.
    let snat = snat_v6(&dp, CLIENT_V6, NODE_PORT_V6).expect("tracked at tc");
    let reply = packets6::tcp(pod_v6(2, 8080), snat, false, b"hello");
    assert_eq!(passed(&mut dp, &reply, 0), counters(&[(Counter::XdpPassToTc, 1)]));

    // No endpoints: the ICMPv6 answer is tc's to build (and count).
    let syn = packets6::tcp(CLIENT_V6, EMPTY_NODE_PORT_V6, true, &[]);
    assert_eq!(passed(&mut dp, &syn, ext0), counters(&[(Counter::XdpPassToTc, 1)]));
    let (out, moved) = dp.run_counted(TC_PROGRAM, &syn).expect("run tc");
    assert_eq!((out.verdict, moved), (TC_ACT_REDIRECT, counters(&[(Counter::RejectNoEndpoints, 1)])));

    // A ClientIP frontend's new flow: its choice is made once, at tc.
    let syn = packets6::tcp(CLIENT_V6, STICKY_NODE_PORT_V6, true, &[]);
    assert_eq!(passed(&mut dp, &syn, ext0), counters(&[(Counter::XdpPassToTc, 1)]), "no affinity choice at XDP");
    assert!(snat_v6(&dp, CLIENT_V6, STICKY_NODE_PORT_V6).is_none(), "no flow tracked");

    // A hop limit about to expire: the stack answers time exceeded.
    let mut last_hop = packets6::tcp(ep6(routed::CLIENT_IP_V6, 40001), NODE_PORT_V6, true, &[]);
    last_hop[14 + 7] = 1;
    assert_eq!(passed(&mut dp, &last_hop, ext0), counters(&[]), "left for tc to count");
}
