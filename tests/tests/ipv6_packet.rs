//! IPv6 packet tests through BPF_PROG_TEST_RUN, mirroring `packet.rs`:
//! each row is an input packet, the verdict, the output packet (built
//! independently, checksums from scratch) and the counter. The Services
//! are programmed through the agent's own translation, from a dual-stack
//! Service, an IPv6-only one, an IPv6 Service without endpoints and an
//! IPv6 LoadBalancer with `loadBalancerSourceRanges`.
//! Needs root (CAP_BPF).

use std::net::Ipv6Addr;

use etherparse::{Icmpv6Type, icmpv6::DestUnreachableCode};
use lb_common::{
    config::{DatapathConfig, FLAG_FORWARD_THROUGH_STACK},
    conntrack::{DIR_ORIGINAL, DIR_REPLY, is_snat_port},
    stats::Counter,
};
use lb_tests::{
    datapath::{Counters, Datapath, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    packets::{self, ep},
    packets6::{
        self, Endpoint6, NEXT_DEST_OPTS, NEXT_FRAGMENT, NEXT_HOP_BY_HOP, checksums_verify, ep6, with_extension_headers,
    },
    routed, topology,
};
use lb_userspace::{datapath::loader::TC_PROGRAM, model::NodeContext};

const fn v6(segments: [u16; 8]) -> Ipv6Addr {
    Ipv6Addr::new(
        segments[0],
        segments[1],
        segments[2],
        segments[3],
        segments[4],
        segments[5],
        segments[6],
        segments[7],
    )
}

const CLIENT: Endpoint6 = ep6(v6([0xfd00, 1, 0, 0, 0, 0, 0, 2]), 40000);
const WEB_VIP: Endpoint6 = ep6(v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10]), 80);
const WEB_BACKEND: Endpoint6 = ep6(v6([0xfd00, 0x244, 1, 0, 0, 0, 0, 2]), 8080);
const DNS_VIP: Endpoint6 = ep6(v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x53]), 53);
const DNS_BACKEND: Endpoint6 = ep6(v6([0xfd00, 0x244, 2, 0, 0, 0, 0, 2]), 5353);
const EMPTY_VIP: Endpoint6 = ep6(v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x30]), 80);

/// `web` is dual-stack (its IPv4 side answers too), `dns` IPv6 only,
/// `empty` IPv6 only and without endpoints.
const SERVICES: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: default}
  spec:
    ipFamilyPolicy: RequireDualStack
    ipFamilies: [IPv6, IPv4]
    clusterIP: fd00:96::10
    clusterIPs: [fd00:96::10, 10.96.0.10]
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-v6, namespace: default, labels: {kubernetes.io/service-name: web}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:1::2"], conditions: {ready: true}}]
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-v4, namespace: default, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.2], conditions: {ready: true}}]
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: kube-system}
  spec:
    ipFamilyPolicy: SingleStack
    ipFamilies: [IPv6]
    clusterIP: fd00:96::53
    clusterIPs: [fd00:96::53]
    ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns-v6, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:2::2"], conditions: {ready: true}}]
  ports: [{name: dns, port: 5353, protocol: UDP}]
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: default}
  spec:
    ipFamilyPolicy: SingleStack
    ipFamilies: [IPv6]
    clusterIP: fd00:96::30
    clusterIPs: [fd00:96::30]
    selector: {app: nothing}
    ports: [{port: 80, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: sticky, namespace: default}
  spec:
    ipFamilies: [IPv6]
    clusterIP: fd00:96::77
    clusterIPs: [fd00:96::77]
    sessionAffinity: ClientIP
    ports: [{port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: sticky-v6, namespace: default, labels: {kubernetes.io/service-name: sticky}}
  addressType: IPv6
  endpoints:
  - {addresses: ["fd00:244:1::2"], conditions: {ready: true}}
  - {addresses: ["fd00:244:2::2"], conditions: {ready: true}}
  - {addresses: ["fd00:244:3::2"], conditions: {ready: true}}
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: guarded, namespace: default}
  spec:
    type: LoadBalancer
    ipFamilyPolicy: SingleStack
    ipFamilies: [IPv6]
    clusterIP: fd00:96::85
    clusterIPs: [fd00:96::85]
    loadBalancerSourceRanges: ["fd00:1::/64", 10.0.0.0/8]
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30085}]
  status:
    loadBalancer: {ingress: [{ip: "fd00:203::10"}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: guarded-v6, namespace: default, labels: {kubernetes.io/service-name: guarded}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:1::2"], nodeName: this-node, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
"#;

/// A dual-stack node with an IPv6 node address, real routes to another
/// node's pods (`routed`), and `cluster_cidrs` as its Pod CIDRs.
fn routed_node_v6(cluster_cidrs: &[&str]) -> Datapath {
    let node = NodeContext {
        node_name: Some("node-a".into()),
        node_addresses: vec![routed::NODE_IP_V6.into()],
        dual_stack: true,
        cluster_cidrs: cluster_cidrs.iter().map(|cidr| cidr.parse().unwrap()).collect(),
        ..NodeContext::default()
    };
    let dp = Datapath::load(node).expect("load datapath (root needed)");
    routed::set_up().and_then(|()| routed::set_up_v6()).expect("set up the node's routes");
    dp
}

fn datapath() -> Datapath {
    let node = NodeContext { node_name: Some("this-node".into()), dual_stack: true, ..NodeContext::default() };
    let mut dp = Datapath::load(node).expect("load datapath (root needed)");
    dp.apply(SERVICES).expect("program services");
    dp
}

fn only(counter: Counter) -> Counters {
    [(counter, 1)].into_iter().collect()
}

/// Runs `packet` through the tc program; returns verdict, output, counters moved.
fn run(dp: &mut Datapath, packet: &[u8]) -> (i32, Vec<u8>, Counters) {
    let (result, counters) = dp.run_counted(TC_PROGRAM, packet).expect("test run");
    (result.verdict, result.packet, counters)
}

#[test]
fn service_flows_are_translated_both_ways_with_checksums_from_scratch() {
    let mut dp = datapath();
    // Client → dual-stack ClusterIP: DNAT to the IPv6 endpoint (the
    // routing lookup finds no route in the test's namespace, so the
    // stack gets it).
    let syn = packets6::tcp(CLIENT, WEB_VIP, true, &[]);
    let (verdict, out, moved) = run(&mut dp, &syn);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert_eq!(out, packets6::tcp(CLIENT, WEB_BACKEND, true, &[]), "SYN DNATed to the IPv6 endpoint");
    assert!(checksums_verify(&out));
    assert_eq!(moved, only(Counter::NewFlow));

    let data = packets6::tcp(CLIENT, WEB_VIP, false, b"GET / HTTP/1.1\r\n\r\n");
    let (_, out, moved) = run(&mut dp, &data);
    assert_eq!(out, packets6::tcp(CLIENT, WEB_BACKEND, false, b"GET / HTTP/1.1\r\n\r\n"));
    assert_eq!(moved, only(Counter::Established));

    // Backend → client: the ClusterIP restored as the source.
    let reply = packets6::tcp(WEB_BACKEND, CLIENT, false, b"HTTP/1.1 200 OK\r\n\r\n");
    let (_, out, moved) = run(&mut dp, &reply);
    assert_eq!(out, packets6::tcp(WEB_VIP, CLIENT, false, b"HTTP/1.1 200 OK\r\n\r\n"));
    assert!(checksums_verify(&out));
    assert_eq!(moved, only(Counter::ReplyNat));

    // UDP to an IPv6-only Service, port translated too.
    let query = packets6::udp(CLIENT, DNS_VIP, b"query");
    let (_, out, moved) = run(&mut dp, &query);
    assert_eq!(out, packets6::udp(CLIENT, DNS_BACKEND, b"query"));
    assert!(checksums_verify(&out));
    assert_eq!(moved, only(Counter::NewFlow));

    let flows = dp.conntrack_v6().expect("read LB6_CT");
    let originals = flows.iter().filter(|(k, _)| k.direction == DIR_ORIGINAL).count();
    assert_eq!((flows.len(), originals), (4, 2), "two flows, each tracked both ways: {flows:?}");
}

#[test]
fn a_dual_stack_service_answers_on_its_ipv4_address_too() {
    let mut dp = datapath();
    let client = ep([10, 0, 1, 2], 40000);
    let syn = packets::tcp_syn(client, ep([10, 96, 0, 10], 80));
    let (verdict, out, moved) = run(&mut dp, &syn);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert_eq!(out, packets::tcp_syn(client, ep([10, 244, 1, 2], 8080)), "IPv4 side to the IPv4 endpoint");
    assert_eq!(moved, only(Counter::NewFlow));
}

#[test]
fn a_service_without_endpoints_is_rejected_with_icmpv6_port_unreachable() {
    let mut dp = datapath();
    let syn = packets6::tcp(CLIENT, EMPTY_VIP, true, &[]);
    let (verdict, out, moved) = run(&mut dp, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back out of the interface it came in on");
    assert_eq!(moved, only(Counter::RejectNoEndpoints));
    assert!(checksums_verify(&out), "ICMPv6 checksum over the pseudo header");
    let parsed = etherparse::SlicedPacket::from_ethernet(&out).expect("a parsable reply");
    let Some(etherparse::NetSlice::Ipv6(ip)) = &parsed.net else { panic!("not IPv6: {out:02x?}") };
    assert_eq!(Ipv6Addr::from(ip.header().source()), EMPTY_VIP.ip, "from the frontend");
    assert_eq!(Ipv6Addr::from(ip.header().destination()), CLIENT.ip, "to the client");
    let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &parsed.transport else { panic!("not ICMPv6") };
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (1, 4), "destination unreachable, port unreachable");
    assert_eq!(icmp.payload(), &syn[14..14 + 48], "quotes the IPv6 header and 8 bytes of TCP as sent");
    assert_eq!(&out[0..6], &syn[6..12], "back to the sender's MAC");
    assert!(dp.conntrack_v6().unwrap().is_empty(), "a reject creates no state");
}

#[test]
fn extension_headers_are_walked_up_to_the_bound_and_anything_else_passes_untouched() {
    let mut dp = datapath();
    // Hop-by-hop and destination options before TCP: found, NATed, the
    // headers kept.
    let syn = packets6::tcp(CLIENT, WEB_VIP, true, &[]);
    let headers = [(NEXT_HOP_BY_HOP, 8), (NEXT_DEST_OPTS, 16)];
    let (verdict, out, moved) = run(&mut dp, &with_extension_headers(&syn, &headers));
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert_eq!(out, with_extension_headers(&packets6::tcp(CLIENT, WEB_BACKEND, true, &[]), &headers));
    assert_eq!(moved, only(Counter::NewFlow));

    let untouched: [(&str, Vec<u8>, Counter); 5] = [
        (
            "five extension headers, one more than walked",
            with_extension_headers(&syn, &[(NEXT_DEST_OPTS, 8); 5]),
            Counter::PassExtensionHeaders,
        ),
        ("a fragment header", with_extension_headers(&syn, &[(NEXT_FRAGMENT, 8)]), Counter::PassFragment),
        ("a TCP header cut short", syn[..14 + 40 + 1].to_vec(), Counter::PassTruncated),
        ("a payload length past the packet", with_payload_length(&syn, 200), Counter::PassTruncated),
        ("neighbour discovery", packets6::neighbour_solicitation(CLIENT.ip, WEB_VIP.ip), Counter::PassOtherProtocol),
    ];
    for (what, packet, counter) in untouched {
        let (verdict, out, moved) = run(&mut dp, &packet);
        assert_eq!((verdict, &out), (TC_ACT_UNSPEC, &packet), "{what}: passed untouched");
        assert_eq!(moved, only(counter), "{what}");
    }
    let originals = dp.conntrack_v6().unwrap().iter().filter(|(k, _)| k.direction == DIR_ORIGINAL).count();
    assert_eq!(originals, 1, "only the walkable packet created state");
}

#[test]
fn load_balancer_source_ranges_admit_ipv6_sources_inside_and_drop_the_rest() {
    let mut dp = datapath();
    let load_balancer = ep6(v6([0xfd00, 0x203, 0, 0, 0, 0, 0, 0x10]), 80);
    let inside = ep6(v6([0xfd00, 1, 0, 0, 0, 0, 0, 7]), 40000);
    let outside = ep6(v6([0xfd00, 2, 0, 0, 0, 0, 0, 7]), 40000);

    let (verdict, out, moved) = run(&mut dp, &packets6::tcp(inside, load_balancer, true, &[]));
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert_eq!(out, packets6::tcp(inside, WEB_BACKEND, true, &[]), "a source inside fd00:1::/64 is served");
    assert_eq!(moved, only(Counter::NewFlow));

    let syn = packets6::tcp(outside, load_balancer, true, &[]);
    let (verdict, _, moved) = run(&mut dp, &syn);
    assert_eq!(verdict, TC_ACT_SHOT, "a source outside every range is dropped");
    assert_eq!(moved, only(Counter::DropSourceRange));
    let originals = dp.conntrack_v6().unwrap().iter().filter(|(k, _)| k.direction == DIR_ORIGINAL).count();
    assert_eq!(originals, 1, "the dropped flow left no state");
}

#[test]
fn a_client_ip_affinity_service_sends_an_ipv6_client_s_new_flows_to_one_backend() {
    let mut dp = datapath();
    let sticky = ep6(v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x77]), 80);
    let mut chosen = std::collections::BTreeSet::new();
    for (i, port) in (41000..41012).enumerate() {
        let (verdict, out, moved) = run(&mut dp, &packets6::tcp(ep6(CLIENT.ip, port), sticky, true, &[]));
        assert_eq!(verdict, TC_ACT_UNSPEC);
        let affinity = if i == 0 { Counter::AffinityMiss } else { Counter::AffinityHit };
        assert_eq!(moved, [(Counter::NewFlow, 1), (affinity, 1)].into_iter().collect(), "flow {i}");
        chosen.insert(out[38..54].to_vec());
    }
    assert_eq!(chosen.len(), 1, "every new flow of the client to one backend");
}

/// A NodePort on the node's IPv6 address whose only endpoint runs on
/// another node.
const REMOTE_NODE_PORT: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: remote, namespace: default}
  spec:
    type: NodePort
    ipFamilies: [IPv6]
    clusterIP: fd00:96::90
    clusterIPs: [fd00:96::90]
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30090}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: remote-v6, namespace: default, labels: {kubernetes.io/service-name: remote}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:9::2"], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
"#;

#[test]
fn a_node_port_flow_to_another_node_is_source_nated_and_its_replies_come_back_from_the_node_port() {
    let mut dp = routed_node_v6(&[]);
    dp.apply(REMOTE_NODE_PORT).expect("program services");
    let client = ep6(routed::CLIENT_IP_V6, 40000);
    let node_port = ep6(routed::NODE_IP_V6, 30090);
    let backend = ep6(v6([0xfd00, 0x244, 9, 0, 0, 0, 0, 2]), 8080);

    let (verdict, out, moved) = run(&mut dp, &packets6::tcp(client, node_port, true, &[]));
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent out of ext0 directly");
    let flow = dp.conntrack_v6().unwrap().into_iter().find(|(k, _)| k.direction == DIR_ORIGINAL).expect("tracked");
    let snat = ep6(Ipv6Addr::from(flow.1.nat_address), flow.1.nat_port);
    assert_eq!(snat.ip, routed::NODE_IP_V6, "SNAT to the node's address on the route to the backend");
    assert!(is_snat_port(snat.port), "SNAT port {} in range", snat.port);
    let expected = packets6::routed(packets6::tcp(snat, backend, true, &[]), routed::OTHER_NODE_MAC, routed::NODE_MAC);
    assert_eq!(out, expected, "both translations, MACs of the route, hop limit one lower");
    assert!(checksums_verify(&out));
    assert_eq!(moved, [(Counter::NewFlow, 1), (Counter::Redirected, 1)].into_iter().collect());

    let (verdict, out, moved) = run(&mut dp, &packets6::tcp(backend, snat, false, b"hello"));
    assert_eq!(verdict, TC_ACT_REDIRECT, "the reply, now from a node address, is sent by the datapath");
    let expected =
        packets6::routed(packets6::tcp(node_port, client, false, b"hello"), routed::CLIENT_MAC, routed::NODE_MAC);
    assert_eq!(out, expected, "the client sees the NodePort answer");
    assert!(checksums_verify(&out));
    assert_eq!(moved, [(Counter::ReplyNat, 1), (Counter::Redirected, 1)].into_iter().collect());

    // The backend says the SNATed packet was too big: the error goes to
    // the client, about the packet the client sent, from the NodePort.
    let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let error = packets6::icmp6(backend.ip, snat.ip, too_big, &packets6::tcp(snat, backend, false, b"more")[14..]);
    let (verdict, out, moved) = run(&mut dp, &error);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent to the client by the datapath");
    let sent = packets6::tcp(client, node_port, false, b"more");
    let expected = packets6::icmp6(node_port.ip, client.ip, too_big, &sent[14..]);
    assert_eq!(out, packets6::routed(expected, routed::CLIENT_MAC, routed::NODE_MAC));
    assert!(checksums_verify(&out));
    assert_eq!(moved, [(Counter::IcmpErrorNat, 1), (Counter::Redirected, 1)].into_iter().collect());
}

/// As for IPv4 (`snat.rs`): an established IPv6 flow keeps its route on
/// each of its entries, under the route epoch, and its packets skip the
/// route lookup until the epoch moves.
#[test]
fn an_established_ipv6_flow_keeps_its_route_until_the_route_epoch_moves() {
    let mut dp = routed_node_v6(&[]);
    dp.apply(REMOTE_NODE_PORT).expect("program services");
    let client = ep6(routed::CLIENT_IP_V6, 40000);
    let node_port = ep6(routed::NODE_IP_V6, 30090);
    let backend = ep6(v6([0xfd00, 0x244, 9, 0, 0, 0, 0, 2]), 8080);
    let ack = packets6::tcp(client, node_port, false, b"more");
    run(&mut dp, &packets6::tcp(client, node_port, true, &[]));
    run(&mut dp, &ack);
    assert_eq!(dp.flow_entry_v6(client, node_port).unwrap().route.epoch, 0, "no epoch written: nothing kept");

    dp.set_route_epoch(7).unwrap();
    let (verdict, first, moved) = run(&mut dp, &ack);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(moved, [(Counter::Established, 1), (Counter::Redirected, 1)].into_iter().collect());
    let entry = dp.flow_entry_v6(client, node_port).unwrap();
    assert_eq!(
        (entry.route.epoch, entry.route.dmac, entry.route.smac),
        (7, routed::OTHER_NODE_MAC, routed::NODE_MAC),
        "kept"
    );
    assert_eq!((entry.route.backend_address, entry.route.backend_port), ([0; 4], 0), "no backend kept for IPv6");
    let snat = ep6(Ipv6Addr::from(entry.nat_address), entry.nat_port);
    let (verdict, _, _) = run(&mut dp, &packets6::tcp(backend, snat, false, b"hello"));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let reply_route = dp
        .conntrack_v6()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.direction == DIR_REPLY && k.dst_address == snat.ip.octets())
        .expect("the reply is tracked")
        .1
        .route;
    assert_eq!((reply_route.epoch, reply_route.dmac), (7, routed::CLIENT_MAC), "the reply keeps its own route");

    // The next hop moves to another MAC. Until the agent moves the epoch,
    // the flow's packets keep the route they had: proof that they skip
    // the lookup.
    const MOVED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x15];
    let other_node = routed::OTHER_NODE_IP_V6.to_string();
    topology::run("ip", &["-6", "neigh", "replace", &other_node, "lladdr", &routed::mac(MOVED_MAC), "dev", "ext0"])
        .unwrap();
    let (verdict, kept, _) = run(&mut dp, &ack);
    assert_eq!((verdict, &kept), (TC_ACT_REDIRECT, &first), "sent as before");

    dp.set_route_epoch(8).unwrap();
    let (verdict, moved_on, counted) = run(&mut dp, &ack);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let expected = packets6::routed(packets6::tcp(snat, backend, false, b"more"), MOVED_MAC, routed::NODE_MAC);
    assert_eq!(moved_on, expected, "looked up again: the moved next hop");
    assert_eq!(counted, [(Counter::Established, 1), (Counter::Redirected, 1)].into_iter().collect());
    assert_eq!(dp.flow_entry_v6(client, node_port).unwrap().route.epoch, 8, "kept again, under the new epoch");
}

/// Under `--forward-through-stack` every translated IPv6 packet takes the
/// forward path (it has no martian check), ICMPv6 errors included: the
/// same NodePort flow and error as above, each handed to the stack.
#[test]
fn under_forward_through_stack_an_icmpv6_error_takes_the_forward_path() {
    let mut dp = routed_node_v6(&[]);
    dp.apply(REMOTE_NODE_PORT).expect("program services");
    dp.set_config(DatapathConfig { flags: FLAG_FORWARD_THROUGH_STACK }).expect("--forward-through-stack");
    let client = ep6(routed::CLIENT_IP_V6, 40000);
    let node_port = ep6(routed::NODE_IP_V6, 30090);
    let backend = ep6(v6([0xfd00, 0x244, 9, 0, 0, 0, 0, 2]), 8080);

    let (verdict, _, moved) = run(&mut dp, &packets6::tcp(client, node_port, true, &[]));
    assert_eq!((verdict, moved.get(&Counter::NewFlow)), (TC_ACT_UNSPEC, Some(&1)), "NATed, to the stack");
    let flow = dp.conntrack_v6().unwrap().into_iter().find(|(k, _)| k.direction == DIR_ORIGINAL).expect("tracked");
    let snat = ep6(Ipv6Addr::from(flow.1.nat_address), flow.1.nat_port);

    let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let error = packets6::icmp6(backend.ip, snat.ip, too_big, &packets6::tcp(snat, backend, false, b"more")[14..]);
    let (verdict, out, moved) = run(&mut dp, &error);
    assert_eq!(verdict, TC_ACT_UNSPEC, "to the stack's forward path");
    let sent = packets6::tcp(client, node_port, false, b"more");
    assert_eq!(out, packets6::icmp6(node_port.ip, client.ip, too_big, &sent[14..]), "translated, not routed");
    assert!(checksums_verify(&out));
    assert_eq!(moved, only(Counter::IcmpErrorNat));
}

#[test]
fn a_retransmitted_ipv6_syn_keeps_its_snat_port() {
    let mut dp = routed_node_v6(&[]);
    dp.apply(REMOTE_NODE_PORT).expect("program services");
    let client = ep6(routed::CLIENT_IP_V6, 40000);
    let node_port = ep6(routed::NODE_IP_V6, 30090);
    let syn = packets6::tcp(client, node_port, true, &[]);
    let (_, first, _) = run(&mut dp, &syn);
    // The backend's SYN-ACK has not come back yet: the client sends its
    // SYN again. The backend must see the same connection attempt, not a
    // second one from another port (whose SYN-ACK the client could not
    // take: its next segment would be reset).
    let (verdict, again, moved) = run(&mut dp, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(again, first, "the same SNAT port");
    assert_eq!(moved, [(Counter::NewFlow, 1), (Counter::Redirected, 1)].into_iter().collect());
    let replies = dp.conntrack_v6().unwrap().into_iter().filter(|(k, _)| k.direction != DIR_ORIGINAL).count();
    assert_eq!(replies, 1, "one reply entry: the port was not claimed twice");
}

#[test]
fn icmpv6_errors_about_nated_flows_are_translated_back_to_what_their_host_sent() {
    let mut dp = datapath();
    let data = packets6::tcp(CLIENT, WEB_VIP, false, b"a large segment");
    run(&mut dp, &packets6::tcp(CLIENT, WEB_VIP, true, &[]));
    run(&mut dp, &data);
    let query = packets6::udp(CLIENT, DNS_VIP, b"query");
    run(&mut dp, &query);
    let answer = packets6::udp(DNS_BACKEND, CLIENT, b"answer");
    run(&mut dp, &answer);
    let router = v6([0xfd00, 0x244, 1, 0, 0, 0, 0, 1]);
    let port_unreachable = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
    let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let cases = [
        (
            "a router on the backend's path: packet too big, to the client",
            packets6::icmp6(
                router,
                CLIENT.ip,
                too_big,
                &packets6::tcp(CLIENT, WEB_BACKEND, false, b"a large segment")[14..],
            ),
            packets6::icmp6(WEB_VIP.ip, CLIENT.ip, too_big, &data[14..]),
        ),
        (
            "the backend: port unreachable, to the client",
            packets6::icmp6(
                DNS_BACKEND.ip,
                CLIENT.ip,
                port_unreachable,
                &packets6::udp(CLIENT, DNS_BACKEND, b"query")[14..],
            ),
            packets6::icmp6(DNS_VIP.ip, CLIENT.ip, port_unreachable, &query[14..]),
        ),
        (
            "the client: port unreachable about a reply, to the backend",
            packets6::icmp6(CLIENT.ip, DNS_VIP.ip, port_unreachable, &packets6::udp(DNS_VIP, CLIENT, b"answer")[14..]),
            packets6::icmp6(CLIENT.ip, DNS_BACKEND.ip, port_unreachable, &answer[14..]),
        ),
    ];
    let tracked = dp.conntrack_v6().unwrap().len();
    for (what, error, expected) in cases {
        let (verdict, out, moved) = run(&mut dp, &error);
        assert_eq!(verdict, TC_ACT_UNSPEC, "{what}: no route in this namespace, so to the stack");
        assert_eq!(out, expected, "{what}: quote, outer addresses and every checksum");
        assert!(checksums_verify(&out), "{what}");
        assert_eq!(moved, only(Counter::IcmpErrorNat), "{what}");
    }
    assert_eq!(dp.conntrack_v6().unwrap().len(), tracked, "errors create no state");
}

#[test]
fn other_icmpv6_and_errors_about_no_tracked_flow_pass_untouched() {
    let mut dp = datapath();
    run(&mut dp, &packets6::tcp(CLIENT, WEB_VIP, true, &[]));
    let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let translated = packets6::tcp(CLIENT, WEB_BACKEND, true, &[]);
    let stranger = ep6(v6([0xfd00, 1, 0, 0, 0, 0, 0, 9]), 40000);
    let echo = Icmpv6Type::EchoRequest(etherparse::IcmpEchoHeader { id: 1, seq: 1 });
    let untouched = [
        (
            "an echo request to a ClusterIP",
            packets6::icmp6(CLIENT.ip, WEB_VIP.ip, echo, b"ping"),
            Counter::PassOtherProtocol,
        ),
        (
            "an error about a flow nobody tracks",
            packets6::icmp6(
                WEB_BACKEND.ip,
                stranger.ip,
                too_big,
                &packets6::tcp(stranger, WEB_BACKEND, true, &[])[14..],
            ),
            Counter::PassIcmpErrorUntracked,
        ),
        (
            "a quote cut inside its IPv6 header",
            packets6::icmp6(WEB_BACKEND.ip, CLIENT.ip, too_big, &translated[14..14 + 30]),
            Counter::PassIcmpErrorTruncated,
        ),
        (
            "a quote with an extension header",
            packets6::icmp6(
                WEB_BACKEND.ip,
                CLIENT.ip,
                too_big,
                &with_extension_headers(&translated, &[(NEXT_DEST_OPTS, 8)])[14..],
            ),
            Counter::PassIcmpErrorUntracked,
        ),
    ];
    let tracked = dp.conntrack_v6().unwrap();
    for (what, packet, counter) in untouched {
        let (verdict, out, moved) = run(&mut dp, &packet);
        assert_eq!((verdict, &out), (TC_ACT_UNSPEC, &packet), "{what}: passed untouched");
        assert_eq!(moved, only(counter), "{what}");
    }
    assert_eq!(dp.conntrack_v6().unwrap().len(), tracked.len(), "nothing tracked");
}

/// `packet` with its IPv6 payload length set to `length`.
fn with_payload_length(packet: &[u8], length: u16) -> Vec<u8> {
    let mut out = packet.to_vec();
    out[18..20].copy_from_slice(&length.to_be_bytes());
    out
}

/// A ClusterIP and a NodePort whose endpoints sit behind a route with a
/// smaller MTU (`NARROW_MTU_V6`), the NodePort's on another node (SNAT).
const NARROW_SERVICES: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: narrow, namespace: default}
  spec:
    ipFamilies: [IPv6]
    clusterIP: fd00:96::94
    clusterIPs: [fd00:96::94]
    ports: [{port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: narrow-v6, namespace: default, labels: {kubernetes.io/service-name: narrow}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:8::2"], nodeName: node-a, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: narrow-remote, namespace: default}
  spec:
    type: NodePort
    ipFamilies: [IPv6]
    clusterIP: fd00:96::95
    clusterIPs: [fd00:96::95]
    ports: [{port: 53, protocol: UDP, targetPort: 5353, nodePort: 30095}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: narrow-remote-v6, namespace: default, labels: {kubernetes.io/service-name: narrow-remote}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:8::3"], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 5353, protocol: UDP}]
"#;
const NARROW_MTU_V6: u16 = 1300;

/// `packet` as sent back to its sender: the MACs swapped.
fn back_to_sender(mut packet: Vec<u8>) -> Vec<u8> {
    let (destination, source) = (packet[0..6].to_vec(), packet[6..12].to_vec());
    packet[0..6].copy_from_slice(&source);
    packet[6..12].copy_from_slice(&destination);
    packet
}

/// The answer a packet too big for the narrow route gets: from the
/// frontend it was sent to, quoting its IPv6 header and 8 bytes of TCP or
/// UDP as the client sent them.
fn packet_too_big_answer(sent: &[u8], frontend: Ipv6Addr, client: Ipv6Addr) -> Vec<u8> {
    let too_big = Icmpv6Type::PacketTooBig { mtu: u32::from(NARROW_MTU_V6) };
    back_to_sender(packets6::icmp6(frontend, client, too_big, &sent[14..14 + 48]))
}

#[test]
fn a_packet_too_big_for_the_backend_route_is_answered_before_any_translation() {
    let mut dp = routed_node_v6(&[]);
    let (via, mtu) = (routed::OTHER_NODE_IP_V6.to_string(), NARROW_MTU_V6.to_string());
    lb_tests::topology::run("ip", &["-6", "route", "add", "fd00:244:8::/64", "via", &via, "mtu", "lock", &mtu])
        .expect("narrow route");
    dp.apply(NARROW_SERVICES).expect("program services");
    let client = ep6(routed::CLIENT_IP_V6, 40000);
    let vip = ep6(v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x94]), 80);
    let backend = ep6(v6([0xfd00, 0x244, 8, 0, 0, 0, 0, 2]), 8080);
    let (verdict, _, _) = run(&mut dp, &packets6::tcp(client, vip, true, &[]));
    assert_eq!(verdict, TC_ACT_REDIRECT, "the flow is open");

    // 40 + 20 + 1241 bytes: one over the route's MTU.
    let big = vec![0x42; usize::from(NARROW_MTU_V6) - 59];
    let too_big = packets6::tcp(client, vip, false, &big);
    let (verdict, out, moved) = run(&mut dp, &too_big);
    assert_eq!(verdict, TC_ACT_REDIRECT, "answered back out of the interface it came in on");
    assert_eq!(
        out,
        packet_too_big_answer(&too_big, vip.ip, client.ip),
        "from the ClusterIP, quoting the client's packet"
    );
    assert!(checksums_verify(&out));
    assert_eq!(moved, only(Counter::IcmpFragNeeded));

    let fits = vec![0x42; usize::from(NARROW_MTU_V6) - 60];
    let (verdict, out, moved) = run(&mut dp, &packets6::tcp(client, vip, false, &fits));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let expected =
        packets6::routed(packets6::tcp(client, backend, false, &fits), routed::OTHER_NODE_MAC, routed::NODE_MAC);
    assert_eq!(out, expected, "a packet that fits goes on, translated");
    assert_eq!(moved, [(Counter::Established, 1), (Counter::Redirected, 1)].into_iter().collect());

    // The first datagram of a source-NATed flow: answered from the
    // NodePort, and nothing tracked (the next, smaller one opens the flow).
    let node_port = ep6(routed::NODE_IP_V6, 30095);
    let tracked = dp.conntrack_v6().unwrap().len();
    let datagram = packets6::udp(client, node_port, &vec![0x42; usize::from(NARROW_MTU_V6) - 47]);
    let (verdict, out, moved) = run(&mut dp, &datagram);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, packet_too_big_answer(&datagram, node_port.ip, client.ip), "from the NodePort");
    assert_eq!(moved, only(Counter::IcmpFragNeeded));
    assert_eq!(dp.conntrack_v6().unwrap().len(), tracked, "no state for the answered datagram");
}

/// A LoadBalancer with `externalTrafficPolicy: Local` whose only endpoint
/// runs on another node.
const LOCAL_ELSEWHERE: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: local-elsewhere, namespace: default}
  spec:
    type: LoadBalancer
    ipFamilies: [IPv6]
    clusterIP: fd00:96::97
    clusterIPs: [fd00:96::97]
    externalTrafficPolicy: Local
    healthCheckNodePort: 32097
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30097}]
  status:
    loadBalancer: {ingress: [{ip: "fd00:203::97"}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: local-elsewhere-v6, namespace: default, labels: {kubernetes.io/service-name: local-elsewhere}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:9::2"], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
"#;

#[test]
fn a_pod_reaches_a_local_policy_load_balancer_s_endpoints_elsewhere_while_outside_traffic_is_dropped() {
    let mut dp = routed_node_v6(&["fd00:244::/32", "10.244.0.0/16"]);
    dp.apply(LOCAL_ELSEWHERE).expect("program services");
    let load_balancer = ep6(v6([0xfd00, 0x203, 0, 0, 0, 0, 0, 0x97]), 80);
    let elsewhere = ep6(v6([0xfd00, 0x244, 9, 0, 0, 0, 0, 2]), 8080);

    let (verdict, _, moved) = run(&mut dp, &packets6::tcp(CLIENT, load_balancer, true, &[]));
    assert_eq!(verdict, TC_ACT_SHOT, "outside the cluster: no endpoint on this node, dropped");
    assert_eq!(moved, only(Counter::DropNoLocalEndpoints));

    // A Pod (inside fd00:244::/32) is served by the endpoint elsewhere
    // (kube-proxy's short-circuit), from this node's address as for IPv4.
    let pod = ep6(v6([0xfd00, 0x244, 1, 0, 0, 0, 0, 7]), 41000);
    let (verdict, out, moved) = run(&mut dp, &packets6::tcp(pod, load_balancer, true, &[]));
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent to the other node");
    assert_eq!(moved, [(Counter::NewFlow, 1), (Counter::Redirected, 1)].into_iter().collect());
    let sent = ep6(routed::NODE_IP_V6, u16::from_be_bytes([out[54], out[55]]));
    let expected =
        packets6::routed(packets6::tcp(sent, elsewhere, true, &[]), routed::OTHER_NODE_MAC, routed::NODE_MAC);
    assert_eq!(out, expected, "DNAT to the endpoint on the other node");
}

/// A NIC that sums what it receives (`CHECKSUM_COMPLETE`) hands the
/// packet over with that sum in `skb->csum`; after translation it must
/// still sum the packet, or the receiving stack reports a hardware
/// checksum failure and sums the packet again in software. Each packet
/// of the flows above, run as such a NIC hands it over: the kernel fails
/// the run if `skb->csum` is left stale, and the output is what the plain
/// run gives.
#[test]
fn a_received_packet_s_complete_checksum_still_sums_it_after_translation() {
    let mut dp = datapath();
    let complete = |dp: &mut Datapath, packet: Vec<u8>, what: &str| {
        dp.run_checksum_complete(TC_PROGRAM, &packet).unwrap_or_else(|e| panic!("{what}: {e:#}"))
    };
    let syn = complete(&mut dp, packets6::tcp(CLIENT, WEB_VIP, true, &[]), "SYN to the ClusterIP");
    assert_eq!(syn.verdict, TC_ACT_UNSPEC);
    assert_eq!(syn.packet, packets6::tcp(CLIENT, WEB_BACKEND, true, &[]), "SYN DNATed");
    let data = complete(&mut dp, packets6::tcp(CLIENT, WEB_VIP, false, b"GET /"), "data to the ClusterIP");
    assert_eq!(data.packet, packets6::tcp(CLIENT, WEB_BACKEND, false, b"GET /"));
    let reply = complete(&mut dp, packets6::tcp(WEB_BACKEND, CLIENT, false, b"200 OK"), "the backend's reply");
    assert_eq!(reply.packet, packets6::tcp(WEB_VIP, CLIENT, false, b"200 OK"), "reverse-translated");
    let query = complete(&mut dp, packets6::udp(CLIENT, DNS_VIP, b"query"), "UDP query, port translated");
    assert_eq!(query.packet, packets6::udp(CLIENT, DNS_BACKEND, b"query"));
    let answer = complete(&mut dp, packets6::udp(DNS_BACKEND, CLIENT, b"answer"), "UDP answer");
    assert_eq!(answer.packet, packets6::udp(DNS_VIP, CLIENT, b"answer"));

    // Source and destination NAT at once, routed: a NodePort flow to
    // another node's backend and its reply.
    let mut dp = routed_node_v6(&[]);
    dp.apply(REMOTE_NODE_PORT).expect("program services");
    let client = ep6(routed::CLIENT_IP_V6, 40000);
    let node_port = ep6(routed::NODE_IP_V6, 30090);
    let backend = ep6(v6([0xfd00, 0x244, 9, 0, 0, 0, 0, 2]), 8080);
    let out = complete(&mut dp, packets6::tcp(client, node_port, true, &[]), "SYN to another node's backend");
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let flow = dp.conntrack_v6().unwrap().into_iter().find(|(k, _)| k.direction == DIR_ORIGINAL).expect("tracked");
    let snat = ep6(Ipv6Addr::from(flow.1.nat_address), flow.1.nat_port);
    let expected = packets6::routed(packets6::tcp(snat, backend, true, &[]), routed::OTHER_NODE_MAC, routed::NODE_MAC);
    assert_eq!(out.packet, expected);
    let out = complete(&mut dp, packets6::tcp(backend, snat, false, b"hello"), "the reply to the NodePort client");
    let expected =
        packets6::routed(packets6::tcp(node_port, client, false, b"hello"), routed::CLIENT_MAC, routed::NODE_MAC);
    assert_eq!(out.packet, expected);
    // An ICMPv6 error about the flow, translated back for the client.
    let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let error = packets6::icmp6(backend.ip, snat.ip, too_big, &packets6::tcp(snat, backend, false, b"more")[14..]);
    let out = complete(&mut dp, error, "an ICMPv6 error about the flow");
    let sent = packets6::tcp(client, node_port, false, b"more");
    let expected = packets6::icmp6(node_port.ip, client.ip, too_big, &sent[14..]);
    assert_eq!(out.packet, packets6::routed(expected, routed::CLIENT_MAC, routed::NODE_MAC));
}
