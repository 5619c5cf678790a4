//! `loadBalancerSourceRanges` through BPF_PROG_TEST_RUN: a new flow to a
//! LoadBalancer IP from inside a range is translated, one from outside is
//! dropped and counted and leaves no state, the NodePort of the same
//! Service admits everyone (as kube-proxy), and changing the ranges takes
//! effect for the next flow. Needs root.

use std::net::Ipv4Addr;

use lb_common::stats::Counter;
use lb_tests::{
    datapath::{Counters, Datapath, TC_ACT_SHOT, TC_ACT_UNSPEC},
    packets::{self, Endpoint, ep},
};
use lb_userspace::{datapath::loader::TC_PROGRAM, model::NodeContext};

const NODE_IP: [u8; 4] = [192, 168, 0, 10];
const LB_IP: Endpoint = ep([203, 0, 113, 10], 80);
const NODE_PORT: Endpoint = ep(NODE_IP, 30085);
const BACKEND: Endpoint = ep([10, 244, 1, 2], 8080);
const INSIDE: Endpoint = ep([198, 51, 100, 7], 40000);
const OUTSIDE: Endpoint = ep([192, 0, 2, 7], 40000);

fn services(ranges: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: guarded, namespace: default}}
  spec:
    type: LoadBalancer
    clusterIP: 10.96.0.85
    loadBalancerSourceRanges: {ranges}
    ports: [{{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30085}}]
  status:
    loadBalancer: {{ingress: [{{ip: 203.0.113.10}}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: guarded-1, namespace: default, labels: {{kubernetes.io/service-name: guarded}}}}
  addressType: IPv4
  endpoints: [{{addresses: [10.244.1.2], nodeName: node-a, conditions: {{ready: true}}}}]
  ports: [{{name: "", port: 8080, protocol: TCP}}]
"#
    )
}

fn datapath(ranges: &str) -> Datapath {
    let mut dp = Datapath::load(NodeContext {
        node_name: Some("node-a".into()),
        node_addresses: vec![Ipv4Addr::from(NODE_IP).into()],
        ..NodeContext::default()
    })
    .expect("load datapath (root needed)");
    dp.apply(&services(ranges)).expect("program services");
    dp
}

fn only(counter: Counter) -> Counters {
    Counters::from([(counter, 1)])
}

#[test]
fn a_source_inside_a_range_is_served_and_one_outside_is_dropped_without_state() {
    let mut dp = datapath("[198.51.100.0/24, 10.1.0.0/16]");
    let (inside, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(INSIDE, LB_IP)).expect("run");
    assert_eq!(inside.verdict, TC_ACT_UNSPEC);
    assert_eq!(inside.packet, packets::tcp_syn(INSIDE, BACKEND));
    assert_eq!(moved, only(Counter::NewFlow));

    let flows_before = dp.conntrack().expect("conntrack").len();
    let (outside, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(OUTSIDE, LB_IP)).expect("run");
    assert_eq!(outside.verdict, TC_ACT_SHOT);
    assert_eq!(moved, only(Counter::DropSourceRange));
    assert_eq!(dp.conntrack().expect("conntrack").len(), flows_before, "a dropped flow leaves no state");
}

#[test]
fn the_node_port_of_the_same_service_admits_every_source() {
    let mut dp = datapath("[198.51.100.0/24]");
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(OUTSIDE, NODE_PORT)).expect("run");
    assert_eq!(out.packet, packets::tcp_syn(OUTSIDE, BACKEND));
    assert_eq!(moved, only(Counter::NewFlow));
}

#[test]
fn changed_ranges_apply_to_the_next_flow_and_removed_ranges_admit_everyone() {
    let mut dp = datapath("[198.51.100.0/24]");
    dp.apply(&services("[192.0.2.0/24]")).expect("narrow to the other range");
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(INSIDE, LB_IP)).expect("run");
    assert_eq!((out.verdict, moved), (TC_ACT_SHOT, only(Counter::DropSourceRange)));
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(OUTSIDE, LB_IP)).expect("run");
    assert_eq!((out.verdict, moved), (TC_ACT_UNSPEC, only(Counter::NewFlow)));

    dp.apply(&services("[]")).expect("remove the ranges");
    let stranger = ep([100, 64, 0, 1], 40001);
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_syn(stranger, LB_IP)).expect("run");
    assert_eq!((out.verdict, moved), (TC_ACT_UNSPEC, only(Counter::NewFlow)));
    assert!(dp.syncer_mut().current().source_ranges.is_empty(), "no range entries are left behind");
}
