//! Traffic policies and hairpin through BPF_PROG_TEST_RUN: a Local
//! NodePort without a local endpoint drops outside clients but serves Pods
//! (sources in the cluster's Pod CIDRs) from the cluster-wide endpoints; a
//! Service without endpoints anywhere rejects; a Pod balanced to itself is
//! source-NATed to the frontend and its reply is translated back. Needs root.

use std::net::Ipv4Addr;

use lb_common::{conntrack::is_snat_port, stats::Counter};
use lb_tests::{
    datapath::{Counters, Datapath, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    packets::{self, Endpoint, ep},
    routed::{self, NODE_MAC, OTHER_NODE_MAC},
};
use lb_userspace::{datapath::loader::TC_PROGRAM, model::NodeContext};

const NODE_IP: [u8; 4] = routed::NODE_IP;
/// `local`: externalTrafficPolicy Local, its only endpoint on node-b.
const LOCAL_NODE_PORT: Endpoint = ep(NODE_IP, 30090);
const ELSEWHERE: Endpoint = ep([10, 244, 9, 2], 8080);
/// `empty`: Local too, no endpoints at all.
const EMPTY_NODE_PORT: Endpoint = ep(NODE_IP, 30091);
/// `solo`: a ClusterIP whose only endpoint is the Pod `POD`.
const SOLO_VIP: Endpoint = ep([10, 96, 0, 92], 80);
const POD: Endpoint = ep([10, 244, 1, 2], 41000);
const POD_SERVER: Endpoint = ep([10, 244, 1, 2], 8080);
const OUTSIDE: Endpoint = ep([192, 0, 2, 7], 40000);

const SERVICES: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: local, namespace: default}
  spec:
    type: NodePort
    externalTrafficPolicy: Local
    clusterIP: 10.96.0.90
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30090}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: local-1, namespace: default, labels: {kubernetes.io/service-name: local}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.9.2], nodeName: node-b, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: default}
  spec:
    type: NodePort
    externalTrafficPolicy: Local
    clusterIP: 10.96.0.91
    selector: {app: nothing}
    ports: [{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30091}]
- apiVersion: v1
  kind: Service
  metadata: {name: solo, namespace: default}
  spec:
    clusterIP: 10.96.0.92
    ports: [{port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: solo-1, namespace: default, labels: {kubernetes.io/service-name: solo}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.2], nodeName: node-a, conditions: {ready: true}}]
  ports: [{name: "", port: 8080, protocol: TCP}]
"#;

fn datapath() -> Datapath {
    let mut dp = Datapath::load(NodeContext {
        node_name: Some("node-a".into()),
        node_addresses: vec![Ipv4Addr::from(NODE_IP).into()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..NodeContext::default()
    })
    .expect("load datapath (root needed)");
    dp.apply(SERVICES).expect("program services");
    dp
}

fn only(counter: Counter) -> Counters {
    Counters::from([(counter, 1)])
}

#[test]
fn local_node_port_without_a_local_endpoint_drops_outside_clients_and_serves_pods() {
    let mut dp = datapath();
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(OUTSIDE, LOCAL_NODE_PORT)).expect("run");
    assert_eq!((out.verdict, moved), (TC_ACT_SHOT, only(Counter::DropNoLocalEndpoints)), "outside: dropped");

    let pod = ep([10, 244, 3, 4], 42000);
    routed::set_up().expect("routes to the other node");
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(pod, LOCAL_NODE_PORT)).expect("run");
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "pod: sent to the other node");
    assert_eq!(moved, Counters::from([(Counter::NewFlow, 1), (Counter::Redirected, 1)]));
    // The cluster-wide endpoint, reached from this node's address (SNAT:
    // the endpoint is on another node).
    let sent = ep(NODE_IP, u16::from_be_bytes([out.packet[34], out.packet[35]]));
    assert_eq!(out.packet, packets::routed(packets::tcp_syn(sent, ELSEWHERE), OTHER_NODE_MAC, NODE_MAC));
}

#[test]
fn local_node_port_without_endpoints_anywhere_rejects() {
    let mut dp = datapath();
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(OUTSIDE, EMPTY_NODE_PORT)).expect("run");
    assert_eq!((out.verdict, moved), (TC_ACT_REDIRECT, only(Counter::RejectNoEndpoints)));
}

#[test]
fn hairpin_flow_is_source_nated_to_the_frontend_and_its_reply_translated_back() {
    let mut dp = datapath();
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(POD, SOLO_VIP)).expect("run SYN");
    assert_eq!(moved, only(Counter::NewFlow));
    let entry = dp.flow_entry(POD, SOLO_VIP).expect("the hairpin flow is tracked");
    assert_eq!(entry.nat_address, SOLO_VIP.ip.octets(), "SNAT to the frontend, never the Pod's own address");
    assert!(is_snat_port(entry.nat_port));
    let as_seen = ep(SOLO_VIP.ip.octets(), entry.nat_port);
    assert_eq!(out.verdict, TC_ACT_UNSPEC);
    assert_eq!(out.packet, packets::tcp_syn(as_seen, POD_SERVER));

    let reply = packets::tcp(POD_SERVER, as_seen, false, b"hi");
    let (back, moved) = dp.run_counted(TC_PROGRAM, &reply).expect("run reply");
    assert_eq!(moved, only(Counter::ReplyNat));
    assert_eq!(back.packet, packets::tcp(SOLO_VIP, POD, false, b"hi"));
}
