//! Which frontends use Maglev: by default those outside traffic reaches
//! (NodePort, externalIP, LoadBalancer), not ClusterIPs; the
//! `lb.kubernetes.io/load-balancing` annotation chooses for all of a
//! Service's frontends.

use serde_json::json;

use super::*;
use crate::model::Balancing;

fn balancing_by_frontend(table: &ServiceTable) -> Vec<(String, Balancing)> {
    table.frontends.iter().map(|f| (format!("{} {}:{}", f.kind.as_str(), f.address, f.port), f.balancing)).collect()
}

fn with_annotation(mut svc: serde_json::Value, value: &str) -> serde_json::Value {
    svc["metadata"]["annotations"] = json!({"lb.kubernetes.io/load-balancing": value});
    svc
}

#[test]
fn external_frontends_use_maglev_and_cluster_ips_the_hash() {
    let mut svc = web_node_port_service();
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["externalIPs"] = json!(["203.0.113.7"]);
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}});
    let table = run(&[svc], &[]);
    assert_eq!(
        balancing_by_frontend(&table),
        [
            ("ClusterIP 10.96.0.10:80".into(), Balancing::Hash),
            ("NodePort 192.168.0.10:30080".into(), Balancing::Maglev),
            ("NodePort 192.168.0.11:30080".into(), Balancing::Maglev),
            ("LoadBalancer 198.51.100.1:80".into(), Balancing::Maglev),
            ("ExternalIP 203.0.113.7:80".into(), Balancing::Maglev),
        ]
    );
}

#[test]
fn the_annotation_opts_a_cluster_ip_in() {
    let table = run(&[with_annotation(web_service(), "maglev")], &[]);
    assert_eq!(frontend(&table, "10.96.0.10", 80, Protocol::Tcp).balancing, Balancing::Maglev);
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

#[test]
fn the_annotation_opts_a_node_port_out() {
    let table = run(&[with_annotation(web_node_port_service(), "hash")], &[]);
    assert!(table.frontends.iter().all(|f| f.balancing == Balancing::Hash), "{:?}", balancing_by_frontend(&table));
}

#[test]
fn an_unknown_value_is_reported_and_the_defaults_kept() {
    let table = run(&[with_annotation(web_node_port_service(), "random")], &[]);
    assert_eq!(frontend(&table, "192.168.0.10", 30080, Protocol::Tcp).balancing, Balancing::Maglev);
    assert_eq!(frontend(&table, "10.96.0.10", 80, Protocol::Tcp).balancing, Balancing::Hash);
    assert_eq!(
        problem_list(&table),
        [
            r#"Service default/web: annotation lb.kubernetes.io/load-balancing: "random" is neither "maglev" nor "hash"; ignored"#
        ]
    );
}
