//! Packet tests through BPF_PROG_TEST_RUN: a table of (description, input
//! packet, expected verdict, expected output packet, expected counter). The
//! expected packets are built independently with checksums computed from
//! scratch, so a byte-for-byte match also proves the incremental checksum
//! updates; the counter says which path the datapath took. Loading the
//! programs for these tests is itself the proof that the verifier accepts
//! them. Needs root (CAP_BPF).

use std::net::Ipv4Addr;

use lb_common::stats::Counter;
use lb_tests::{
    datapath::{Counters, Datapath, RunResult, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    packets::{self, Endpoint, ep},
};
use lb_userspace::{
    datapath::{
        loader::{Capacities, TC_PROGRAM},
        skb_checksum::StateSource,
    },
    model::NodeContext,
};

const CLIENT: Endpoint = ep([10, 0, 1, 2], 40000);
const WEB_VIP: Endpoint = ep([10, 96, 0, 10], 80);
const WEB_BACKEND: Endpoint = ep([10, 244, 1, 2], 8080);
const DNS_VIP: Endpoint = ep([10, 96, 0, 53], 53);
const DNS_BACKEND: Endpoint = ep([10, 244, 2, 2], 5353);
const EMPTY_VIP: Endpoint = ep([10, 96, 0, 30], 80);
const MULTI_VIP: Endpoint = ep([10, 96, 0, 20], 80);
const MULTI_BACKENDS: [Endpoint; 3] = [ep([10, 244, 1, 2], 9000), ep([10, 244, 2, 2], 9000), ep([10, 244, 3, 2], 9000)];
/// A fourth endpoint that joins `multi` in the middle of the table.
const MULTI_JOINER: Endpoint = ep([10, 244, 4, 2], 9000);
/// The node's own address, where NodePorts are served.
const NODE_IP: [u8; 4] = [192, 168, 0, 10];
const NODE_PORT: Endpoint = ep(NODE_IP, 30080);
const NODE_PORT_BACKEND: Endpoint = ep([10, 244, 1, 2], 8080);
const NODE_PORT_CLIENT: Endpoint = ep([10, 0, 1, 2], 40080);
/// A Service whose only backend entry the table deletes from the kernel map.
const FRAGILE_VIP: Endpoint = ep([10, 96, 0, 60], 80);
const FRAGILE_BACKEND: Endpoint = ep([10, 244, 6, 2], 7000);

/// Every Service of the table except `multi`, whose backends change
/// between rows (see [`services`]).
const SERVICES: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: default}
  spec:
    clusterIP: 10.96.0.10
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.2], conditions: {ready: true}}]
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: kube-system}
  spec:
    clusterIP: 10.96.0.53
    ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.2.2], conditions: {ready: true}}]
  ports: [{name: dns, port: 5353, protocol: UDP}]
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: default}
  spec:
    clusterIP: 10.96.0.30
    selector: {app: nothing}
    ports: [{port: 80, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: node-port, namespace: default}
  spec:
    type: NodePort
    clusterIP: 10.96.0.40
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: node-port-1, namespace: default, labels: {kubernetes.io/service-name: node-port}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.2], nodeName: this-node, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: fragile, namespace: default}
  spec:
    clusterIP: 10.96.0.60
    ports: [{port: 80, protocol: TCP, targetPort: 7000}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: fragile-1, namespace: default, labels: {kubernetes.io/service-name: fragile}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.6.2], conditions: {ready: true}}]
  ports: [{name: "", port: 7000, protocol: TCP}]
"#;

/// All the table's Services, with `multi` balancing over `multi`.
fn services(multi: &[Endpoint]) -> String {
    let ips: Vec<Ipv4Addr> = multi.iter().map(|b| b.ip).collect();
    format!("{SERVICES}{}", multi_items(&ips))
}

fn node() -> NodeContext {
    // The NodePort's endpoint runs on this node, so its flows are not
    // source-NATed (see tests/tests/snat.rs for those).
    NodeContext {
        node_name: Some("this-node".into()),
        node_addresses: vec![Ipv4Addr::from(NODE_IP).into()],
        ..NodeContext::default()
    }
}

fn datapath_with(multi: &[Endpoint]) -> Datapath {
    datapath_reading(multi, &StateSource::detect())
}

/// `datapath_with`, checksum states learned from `source`.
fn datapath_reading(multi: &[Endpoint], source: &StateSource) -> Datapath {
    let mut dp = Datapath::load_reading(node(), Capacities::default(), source).expect("load datapath (root needed)");
    dp.apply(&services(multi)).expect("program services");
    dp
}

fn datapath() -> Datapath {
    datapath_with(&MULTI_BACKENDS)
}

/// The backend of `backends` a new flow from `client` to `vip` lands on:
/// a fresh SYN through `probe` (a SYN is always balanced afresh).
fn landing(probe: &mut Datapath, client: Endpoint, vip: Endpoint, backends: &[Endpoint]) -> Endpoint {
    let out = probe.run(TC_PROGRAM, &packets::tcp_syn(client, vip)).expect("probe run");
    *backends
        .iter()
        .find(|b| out.packet == packets::tcp_syn(client, **b))
        .unwrap_or_else(|| panic!("probe flow from port {} not DNATed to one of {backends:?}", client.port))
}

/// What happens before a row's packet, on top of what earlier rows did.
enum Given {
    Nothing,
    /// The agent syncs these Services (the full set).
    Services(String),
    /// This backend's entry vanishes from LB4_BACKENDS behind the agent's back.
    BackendEntryRemoved(Endpoint),
}

/// One row of the table.
struct Case {
    description: &'static str,
    given: Given,
    input: Vec<u8>,
    verdict: i32,
    /// Expected output; `None` means "unchanged".
    output: Option<Vec<u8>>,
    /// The one counter the packet moves, by exactly 1.
    counter: Counter,
}

impl Case {
    fn after(self, given: Given) -> Self {
        Self { given, ..self }
    }
}

fn check(dp: &mut Datapath, case: &Case) {
    match &case.given {
        Given::Nothing => {}
        Given::Services(text) => dp.apply(text).unwrap_or_else(|e| panic!("{}: sync: {e:#}", case.description)),
        Given::BackendEntryRemoved(backend) => {
            let address = std::net::SocketAddrV4::new(backend.ip, backend.port);
            dp.remove_backend_entry(address).unwrap_or_else(|e| panic!("{}: remove backend: {e:#}", case.description));
        }
    }
    let (RunResult { verdict, packet }, moved) =
        dp.run_counted(TC_PROGRAM, &case.input).unwrap_or_else(|e| panic!("{}: test run: {e:#}", case.description));
    assert_eq!(verdict, case.verdict, "{}: verdict", case.description);
    let expected = case.output.as_ref().unwrap_or(&case.input);
    assert_eq!(&packet, expected, "{}: output packet", case.description);
    assert_eq!(moved, Counters::from([(case.counter, 1)]), "{}: counters moved", case.description);
}

fn dnat(packet: Vec<u8>, description: &'static str, expected: Vec<u8>, counter: Counter) -> Case {
    assert!(packets::checksums_verify(&expected), "{description}: reference packet");
    Case { description, given: Given::Nothing, input: packet, verdict: TC_ACT_UNSPEC, output: Some(expected), counter }
}

fn unchanged(description: &'static str, input: Vec<u8>, counter: Counter) -> Case {
    Case { description, given: Given::Nothing, input, verdict: TC_ACT_UNSPEC, output: None, counter }
}

fn dropped(description: &'static str, input: Vec<u8>, counter: Counter) -> Case {
    Case { description, given: Given::Nothing, input, verdict: TC_ACT_SHOT, output: None, counter }
}

/// A client port whose flow lands on one backend of `before` but would
/// land on another if balanced afresh over `after`: a datapath that
/// re-hashed instead of following conntrack would send it elsewhere.
fn flow_that_rehashing_would_move(
    before: &[Endpoint],
    after: &[Endpoint],
    source: &StateSource,
) -> (Endpoint, Endpoint) {
    let mut old = datapath_reading(before, source);
    let mut new = datapath_reading(after, source);
    (45000..46000u16)
        .map(|port| ep([10, 0, 1, 2], port))
        .map(|client| {
            (client, landing(&mut old, client, MULTI_VIP, before), landing(&mut new, client, MULTI_VIP, after))
        })
        .find(|(_, first, fresh)| first != fresh)
        .map(|(client, first, _)| (client, first))
        .expect("some flow changes backend when re-hashed over the new set")
}

#[test]
fn packet_fixtures() {
    // On this machine the tc programs read each packet's checksum state
    // from the sk_buff and update checksums in place.
    let source = StateSource::detect();
    assert!(matches!(source, StateSource::SkBuff { .. }), "{source:?}");
    fixtures(&source);
}

/// Where the kernel does not let the tc programs read the sk_buff (no
/// `CAP_PERFMON`, no BTF), checksums are updated through the kernel's
/// helper: the same packets come out.
#[test]
fn packet_fixtures_with_checksums_through_the_kernel_s_helper() {
    fixtures(&StateSource::helper("the fallback under test"));
}

/// Every row, through datapaths (the one under test and the probes)
/// that learn checksum states from `source`.
fn fixtures(source: &StateSource) {
    let payload = b"GET / HTTP/1.1\r\n\r\n";
    let grown: Vec<Endpoint> = MULTI_BACKENDS.iter().copied().chain([MULTI_JOINER]).collect();
    let (sticky, sticky_backend) = flow_that_rehashing_would_move(&MULTI_BACKENDS, &grown, source);
    let orphan = ep([10, 0, 1, 2], 47000);
    let orphan_backend = landing(&mut datapath_reading(&grown, source), orphan, MULTI_VIP, &grown);
    let survivor = *grown.iter().find(|b| **b != orphan_backend).unwrap();
    let mut dp = datapath_reading(&MULTI_BACKENDS, source);
    let cases = vec![
        dnat(
            packets::tcp_syn(CLIENT, WEB_VIP),
            "ClusterIP TCP SYN is DNATed to the backend",
            packets::tcp_syn(CLIENT, WEB_BACKEND),
            Counter::NewFlow,
        ),
        dnat(
            packets::tcp_syn(sticky, MULTI_VIP),
            "first SYN of a flow to a Service with several backends",
            packets::tcp_syn(sticky, sticky_backend),
            Counter::NewFlow,
        ),
        dnat(
            packets::tcp(sticky, MULTI_VIP, false, payload),
            "established TCP segment with payload follows conntrack after a backend joined",
            packets::tcp(sticky, sticky_backend, false, payload),
            Counter::Established,
        )
        .after(Given::Services(services(&grown))),
        dnat(
            packets::udp(CLIENT, DNS_VIP, b"query"),
            "ClusterIP UDP is DNATed",
            packets::udp(CLIENT, DNS_BACKEND, b"query"),
            Counter::NewFlow,
        ),
        dnat(
            packets::udp_without_checksum(ep([10, 0, 1, 2], 40001), DNS_VIP, b"query"),
            "UDP checksum 0 stays 0 after DNAT",
            packets::udp_without_checksum(ep([10, 0, 1, 2], 40001), DNS_BACKEND, b"query"),
            Counter::NewFlow,
        ),
        dnat(
            packets::tcp_syn_with_ip_options(ep([10, 0, 1, 2], 40002), WEB_VIP),
            "IP options (IHL 7): L4 found past the options and DNATed",
            packets::tcp_syn_with_ip_options(ep([10, 0, 1, 2], 40002), WEB_BACKEND),
            Counter::NewFlow,
        ),
        dnat(
            packets::tcp(WEB_BACKEND, CLIENT, false, b"HTTP/1.1 200 OK"),
            "reply from the backend is reverse-NATed to come from the ClusterIP",
            packets::tcp(WEB_VIP, CLIENT, false, b"HTTP/1.1 200 OK"),
            Counter::ReplyNat,
        ),
        dnat(
            packets::udp(DNS_BACKEND, CLIENT, b"answer"),
            "UDP reply is reverse-NATed",
            packets::udp(DNS_VIP, CLIENT, b"answer"),
            Counter::ReplyNat,
        ),
        // Another client port than the ClusterIP rows': web's ClusterIP and
        // this NodePort share their backend, and a second flow from one
        // client port to it has its port translated (tests/tests/collisions.rs).
        dnat(
            packets::tcp_syn(NODE_PORT_CLIENT, NODE_PORT),
            "SYN to the node address on a NodePort is DNATed to the backend",
            packets::tcp_syn(NODE_PORT_CLIENT, NODE_PORT_BACKEND),
            Counter::NewFlow,
        ),
        unchanged(
            "pod-to-pod TCP on an unrelated port passes untouched",
            packets::tcp_syn(CLIENT, ep([10, 244, 1, 2], 22)),
            Counter::Passed,
        ),
        unchanged(
            "same port as a Service but another address passes untouched",
            packets::tcp_syn(CLIENT, ep([10, 96, 0, 99], 80)),
            Counter::Passed,
        ),
        unchanged(
            "backend traffic that is not a tracked reply passes untouched",
            packets::tcp(WEB_BACKEND, ep([10, 0, 1, 9], 50000), false, b"x"),
            Counter::Passed,
        ),
        unchanged(
            "wrong protocol for the Service (UDP to a TCP port)",
            packets::udp(CLIENT, WEB_VIP, b"x"),
            Counter::Passed,
        ),
        unchanged(
            "malformed: IHL claims 60 header bytes, more than the total length",
            {
                let mut p = packets::tcp_syn(CLIENT, WEB_VIP);
                p[14] = 0x4f;
                p
            },
            Counter::PassMalformed,
        ),
        unchanged(
            "truncated: IPv4 header without L4 ports",
            packets::tcp_syn(CLIENT, WEB_VIP)[..36].to_vec(),
            Counter::PassTruncated,
        ),
        unchanged(
            "fragment to a ClusterIP is never NATed",
            packets::as_fragment(packets::udp(CLIENT, DNS_VIP, b"frag")),
            Counter::PassFragment,
        ),
        unchanged(
            "non-IPv4 frame (ARP ethertype)",
            {
                let mut arp = packets::udp(CLIENT, DNS_VIP, b"x");
                arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
                arp
            },
            Counter::PassOtherEthertype,
        ),
        Case {
            description: "Service without endpoints rejects a SYN with ICMP port unreachable",
            given: Given::Nothing,
            input: packets::tcp_syn(CLIENT, EMPTY_VIP),
            verdict: TC_ACT_REDIRECT,
            output: Some(packets::icmp_port_unreachable(&packets::tcp_syn(CLIENT, EMPTY_VIP), EMPTY_VIP.ip, CLIENT.ip)),
            counter: Counter::RejectNoEndpoints,
        },
        dropped(
            "Service without endpoints drops a SYN with IP options (no reply quoting them)",
            packets::tcp_syn_with_ip_options(CLIENT, EMPTY_VIP),
            Counter::RejectNoEndpoints,
        ),
        dnat(
            packets::tcp_syn(orphan, MULTI_VIP),
            "first SYN of a flow whose backend will leave",
            packets::tcp_syn(orphan, orphan_backend),
            Counter::NewFlow,
        ),
        dnat(
            packets::tcp(orphan, MULTI_VIP, false, payload),
            "established flow whose backend left moves to the live one",
            packets::tcp(orphan, survivor, false, payload),
            Counter::Rebalanced,
        )
        .after(Given::Services(services(&[survivor]))),
        dropped(
            "new flow whose slot names a backend missing from the backend table is dropped",
            packets::tcp_syn(CLIENT, FRAGILE_VIP),
            Counter::DropMissingBackend,
        )
        .after(Given::BackendEntryRemoved(FRAGILE_BACKEND)),
    ];
    for case in &cases {
        check(&mut dp, case);
    }
}

#[test]
fn reject_reply_verifies_and_quotes_the_original() {
    let mut dp = datapath();
    let input = packets::udp(CLIENT, ep([10, 96, 0, 30], 80), b"hello");
    // The empty Service is TCP only: UDP to it is not a Service packet.
    assert_eq!(dp.run(TC_PROGRAM, &input).unwrap().packet, input);
    let syn = packets::tcp_syn(ep([10, 0, 1, 7], 41000), EMPTY_VIP);
    let out = dp.run(TC_PROGRAM, &syn).unwrap();
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert!(packets::checksums_verify(&out.packet), "ICMP reply checksums");
    assert_eq!(&out.packet[14 + 28..14 + 28 + 28], &syn[14..14 + 28], "quotes IP header + 8 bytes");
}

#[test]
fn new_flows_spread_over_all_backends_and_stick() {
    let mut dp = datapath();
    let mut seen = std::collections::BTreeMap::new();
    for port in 30000..30300u16 {
        let client = ep([10, 0, 1, 2], port);
        let out = dp.run(TC_PROGRAM, &packets::tcp_syn(client, MULTI_VIP)).unwrap();
        assert_eq!(out.verdict, TC_ACT_UNSPEC);
        let backend = MULTI_BACKENDS
            .iter()
            .find(|b| out.packet == packets::tcp_syn(client, **b))
            .unwrap_or_else(|| panic!("flow {port} not DNATed to a backend with valid checksums"));
        *seen.entry(backend.ip).or_insert(0) += 1;
        // The same flow again: same backend.
        let again = dp.run(TC_PROGRAM, &packets::tcp(client, MULTI_VIP, false, b"x")).unwrap();
        assert_eq!(again.packet, packets::tcp(client, *backend, false, b"x"), "flow {port} sticks");
    }
    assert_eq!(seen.len(), 3, "every backend chosen: {seen:?}");
    assert!(seen.values().all(|&n| n >= 60), "each backend gets at least 20% of 300 flows: {seen:?}");
}

#[test]
fn established_flow_keeps_backend_after_backend_set_changes() {
    let mut dp = datapath();
    let client = ep([10, 0, 1, 2], 45000);
    let first = dp.run(TC_PROGRAM, &packets::tcp_syn(client, MULTI_VIP)).unwrap();
    let chosen = *MULTI_BACKENDS.iter().find(|b| first.packet == packets::tcp_syn(client, **b)).unwrap();
    // Remove one of the *other* backends: the flow stays where it was.
    let keep: Vec<Ipv4Addr> =
        MULTI_BACKENDS.iter().map(|b| b.ip).filter(|ip| *ip != chosen.ip).take(1).chain([chosen.ip]).collect();
    dp.apply(&multi_with(&keep)).unwrap();
    let later = dp.run(TC_PROGRAM, &packets::tcp(client, MULTI_VIP, false, b"y")).unwrap();
    assert_eq!(later.packet, packets::tcp(client, chosen, false, b"y"));
    // Remove the chosen backend itself: the flow moves to a live one.
    let other = keep[0];
    dp.apply(&multi_with(&[other])).unwrap();
    let moved = dp.run(TC_PROGRAM, &packets::tcp(client, MULTI_VIP, false, b"z")).unwrap();
    assert_eq!(moved.packet, packets::tcp(client, Endpoint { ip: other, port: 9000 }, false, b"z"));
}

fn multi_with(backends: &[Ipv4Addr]) -> String {
    format!("apiVersion: v1\nkind: List\nitems:\n{}", multi_items(backends))
}

/// The `multi` Service and its EndpointSlice, as List items.
fn multi_items(backends: &[Ipv4Addr]) -> String {
    let endpoints: String =
        backends.iter().map(|ip| format!("  - {{addresses: [{ip}], conditions: {{ready: true}}}}\n")).collect();
    format!(
        "- apiVersion: v1\n  kind: Service\n  metadata: {{name: multi, namespace: default}}\n  spec:\n    clusterIP: 10.96.0.20\n    ports: [{{port: 80, protocol: TCP, targetPort: 9000}}]\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: multi-1, namespace: default, labels: {{kubernetes.io/service-name: multi}}}}\n  addressType: IPv4\n  endpoints:\n{endpoints}  ports: [{{name: \"\", port: 9000, protocol: TCP}}]\n"
    )
}

#[test]
fn syn_reusing_a_tracked_tuple_is_balanced_afresh() {
    let mut dp = datapath();
    let reduced = multi_with(&[MULTI_BACKENDS[0].ip, MULTI_BACKENDS[1].ip]);
    let mut fresh = Datapath::load(NodeContext::default()).unwrap();
    fresh.apply(&reduced).unwrap();
    let clients: Vec<Endpoint> = (46000..46060u16).map(|p| ep([10, 0, 1, 2], p)).collect();
    let first: Vec<Vec<u8>> =
        clients.iter().map(|c| dp.run(TC_PROGRAM, &packets::tcp_syn(*c, MULTI_VIP)).unwrap().packet).collect();
    dp.apply(&reduced).unwrap();
    let mut moved = 0;
    for (client, first) in clients.iter().zip(&first) {
        let chosen = *MULTI_BACKENDS.iter().find(|b| *first == packets::tcp_syn(*client, **b)).unwrap();
        if chosen.ip != MULTI_BACKENDS[2].ip {
            // Its backend still exists: later segments stay with it...
            let ack = dp.run(TC_PROGRAM, &packets::tcp(*client, MULTI_VIP, false, b"a")).unwrap();
            assert_eq!(ack.packet, packets::tcp(*client, chosen, false, b"a"));
        }
        // ...but a new SYN on the same tuple is a new connection, balanced
        // exactly as a never-seen flow would be.
        let syn = dp.run(TC_PROGRAM, &packets::tcp_syn(*client, MULTI_VIP)).unwrap();
        let expected = fresh.run(TC_PROGRAM, &packets::tcp_syn(*client, MULTI_VIP)).unwrap();
        assert_eq!(syn.packet, expected.packet, "client port {}", client.port);
        moved += usize::from(syn.packet != *first);
    }
    assert!(moved > 0, "some SYNs must land elsewhere than their tuple's first connection");
}

/// Sets the IPv4 total length (the header checksum is left alone: the
/// datapath must not act on such a packet whatever its checksum).
fn with_total_length(mut packet: Vec<u8>, total_length: u16) -> Vec<u8> {
    packet[16..18].copy_from_slice(&total_length.to_be_bytes());
    packet
}

/// Frames the kernel would drop are passed untouched, counted by reason,
/// and leave no conntrack entry, whatever Service they are addressed to.
#[test]
fn malformed_frames_are_passed_untouched_and_create_no_state() {
    let mut dp = datapath();
    let client = ep([10, 0, 1, 66], 46000);
    let syn = packets::tcp_syn(client, WEB_VIP);
    let ip_len = (syn.len() - 14) as u16;
    let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
        ("IPv4 total length beyond the frame", with_total_length(syn.clone(), ip_len + 100), Counter::PassTruncated),
        ("IPv4 total length shorter than the headers", with_total_length(syn.clone(), 24), Counter::PassMalformed),
        (
            "TCP data offset below 5",
            {
                let mut p = syn.clone();
                p[14 + 20 + 12] = 0x40;
                p
            },
            Counter::PassMalformed,
        ),
        (
            "TCP data offset past the datagram",
            {
                let mut p = syn.clone();
                p[14 + 20 + 12] = 0xf0;
                p
            },
            Counter::PassMalformed,
        ),
        ("TCP header cut short", with_total_length(syn[..14 + 20 + 12].to_vec(), 32), Counter::PassTruncated),
        (
            "UDP length beyond the datagram",
            {
                let mut p = packets::udp(client, DNS_VIP, b"query");
                p[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&200u16.to_be_bytes());
                p
            },
            Counter::PassMalformed,
        ),
    ];
    for (description, frame, counter) in cases {
        let (out, moved) = dp.run_counted(TC_PROGRAM, &frame).expect("test run");
        assert_eq!(out.verdict, TC_ACT_UNSPEC, "{description}: passed");
        assert_eq!(out.packet, frame, "{description}: untouched");
        assert_eq!(moved, Counters::from([(counter, 1)]), "{description}: counted");
    }
    let state = dp.conntrack().expect("conntrack");
    assert!(state.iter().all(|(k, _)| k.src_port != client.port && k.dst_port != client.port), "no state: {state:?}");
}

/// A NIC that sums what it receives (`CHECKSUM_COMPLETE`) hands the
/// packet over with that sum in `skb->csum`; after translation it must
/// still sum the packet, or the receiving stack reports a hardware
/// checksum failure. The kernel fails the run when it does not; the
/// output is the plain run's.
#[test]
fn a_received_packet_s_complete_checksum_still_sums_it_after_translation() {
    let mut dp = datapath();
    let rows = [
        (packets::tcp_syn(CLIENT, WEB_VIP), packets::tcp_syn(CLIENT, WEB_BACKEND), "SYN to the ClusterIP"),
        (packets::tcp(WEB_BACKEND, CLIENT, false, b"200 OK"), packets::tcp(WEB_VIP, CLIENT, false, b"200 OK"), "reply"),
        (packets::udp(CLIENT, DNS_VIP, b"query"), packets::udp(CLIENT, DNS_BACKEND, b"query"), "UDP, port translated"),
        (packets::udp(DNS_BACKEND, CLIENT, b"answer"), packets::udp(DNS_VIP, CLIENT, b"answer"), "UDP answer"),
    ];
    for (input, expected, what) in rows {
        let out = dp.run_checksum_complete(TC_PROGRAM, &input).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(out.packet, expected, "{what}");
    }
}
