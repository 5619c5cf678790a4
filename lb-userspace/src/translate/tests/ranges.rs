//! `loadBalancerSourceRanges`: which sources a LoadBalancer frontend
//! admits (kube-proxy's firewall chain).

use serde_json::json;

use super::*;

fn lb_service(ranges: Value) -> Value {
    let mut svc = web_node_port_service();
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["loadBalancerSourceRanges"] = ranges;
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}});
    svc
}

fn ranges_of(table: &ServiceTable, address: &str, port: u16) -> Option<Vec<String>> {
    let ranges = frontend(table, address, port, Protocol::Tcp).source_ranges.as_ref()?;
    Some(ranges.iter().map(ToString::to_string).collect())
}

#[test]
fn ranges_apply_to_load_balancer_ips_only() {
    let table = run(&[lb_service(json!(["198.51.100.0/24", " 10.1.0.0/16 "]))], &[]);
    assert_eq!(ranges_of(&table, "203.0.113.10", 80), Some(vec!["198.51.100.0/24".into(), "10.1.0.0/16".into()]));
    assert_eq!(ranges_of(&table, "10.96.0.10", 80), None, "the ClusterIP admits every source");
    assert_eq!(ranges_of(&table, "192.168.0.10", 30080), None, "NodePorts too, as kube-proxy");
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

#[test]
fn no_ranges_admit_every_source() {
    for ranges in [json!(null), json!([])] {
        let table = run(&[lb_service(ranges)], &[]);
        assert_eq!(ranges_of(&table, "203.0.113.10", 80), None);
    }
}

#[test]
fn a_range_holding_a_node_address_admits_the_load_balancer_ip_itself() {
    let table = run(&[lb_service(json!(["192.168.0.0/24"]))], &[]);
    assert_eq!(ranges_of(&table, "203.0.113.10", 80), Some(vec!["192.168.0.0/24".into(), "203.0.113.10/32".into()]));
}

#[test]
fn an_entry_that_is_not_a_cidr_is_reported_and_admits_nothing() {
    let table = run(&[lb_service(json!(["not-a-cidr"]))], &[]);
    assert_eq!(ranges_of(&table, "203.0.113.10", 80), Some(vec![]), "filtering stays on");
    assert_eq!(table.problems.len(), 1);
    assert!(table.problems[0].message.contains("\"not-a-cidr\" is not a CIDR"), "{:?}", table.problems);
}

#[test]
fn host_bits_are_cleared() {
    let table = run(&[lb_service(json!(["198.51.100.7/24"]))], &[]);
    assert_eq!(ranges_of(&table, "203.0.113.10", 80), Some(vec!["198.51.100.0/24".into()]));
}
