//! `lbctl` against a running agent: its tables and JSON agree with the
//! maps the demo Services produce, and `lbctl trace` agrees with what
//! real packets meet. Needs root; run one test at a time.

use std::{collections::BTreeSet, io::ErrorKind, net::SocketAddr};

use lb_tests::{
    observe::lbctl,
    scenario::{self, DemoCluster, ECHO, NOTHING_HERE, WEB},
    servers, topology,
};
use serde_json::Value;

fn json(cluster: &DemoCluster, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let text = lbctl(&cluster.agent.pin_dir, &all).expect("lbctl");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("lbctl {args:?} printed no JSON ({e}): {text}"))
}

fn web_backends() -> BTreeSet<String> {
    (1..=scenario::BACKENDS).map(|i| format!("{}:{}", topology::backend_ip(i), scenario::HTTP_PORT)).collect()
}

fn frontend<'a>(services: &'a Value, address: &str, port: u16) -> &'a Value {
    services
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["address"] == address && f["port"] == port)
        .unwrap_or_else(|| panic!("no frontend {address}:{port} in {services}"))
}

#[test]
fn lbctl_shows_the_demo_services_backends_flows_and_counters() {
    let cluster = DemoCluster::start().expect("start demo cluster");
    let table = lbctl(&cluster.agent.pin_dir, &["services"]).unwrap();
    let web_line =
        table.lines().find(|l| l.starts_with(&format!("{WEB}/TCP"))).unwrap_or_else(|| panic!("no web row:\n{table}"));
    assert!(web_line.contains("ClusterIP"), "{web_line}");
    for backend in web_backends() {
        assert!(web_line.contains(&backend), "{backend} missing from {web_line}");
    }
    assert!(
        table.lines().any(|l| l.starts_with(&format!("{NOTHING_HERE}/TCP")) && l.contains("no endpoints: reject")),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with(&format!("{ECHO}/UDP"))), "{table}");

    let services = json(&cluster, &["services"]);
    let web = frontend(&services, &WEB.ip().to_string(), WEB.port());
    let listed: BTreeSet<String> = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{}:{}", b["address"].as_str().unwrap(), b["port"]))
        .collect();
    assert_eq!(listed, web_backends());
    assert_eq!(frontend(&services, &NOTHING_HERE.ip().to_string(), 80)["empty_action"], "reject");
    let maps = cluster.agent.maps().unwrap();
    let frontends = maps.services.keys().filter(|k| k.backend_slot == 0).count();
    assert_eq!(services.as_array().unwrap().len(), frontends);
    assert_eq!(json(&cluster, &["backends"]).as_array().unwrap().len(), maps.backends.len());

    // A live connection shows up in conntrack, with the backend it uses.
    let mut conn = servers::connect(&cluster.topology.client, SocketAddr::V4(WEB)).unwrap().expect("connect");
    let answered_by = servers::http_request(&mut conn, false).unwrap();
    // Interface names are the node's (`--netns`).
    let flows = json(&cluster, &["--netns", cluster.topology.node.as_str(), "conntrack"]);
    let flow = flows
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["frontend"] == WEB.to_string() && f["client"].as_str().is_some_and(|c| c.starts_with("10.0.1.2:")))
        .unwrap_or_else(|| panic!("no flow to {WEB} in {flows}"));
    let backend = flow["backend"].as_str().unwrap();
    let i: usize = answered_by.trim_start_matches("backend-").parse().unwrap();
    assert_eq!(backend, format!("{}:{}", topology::backend_ip(i), scenario::HTTP_PORT), "the flow's backend answered");
    assert_eq!(flow["state"], "established", "handshake done, request answered: {flow}");
    assert!(flow["idle_s"].as_u64().unwrap() <= flow["age_s"].as_u64().unwrap(), "{flow}");
    // Past its first packets the flow keeps its routes, both ways.
    let to_backend = flow["route_to_backend"].as_str().unwrap_or_else(|| panic!("no route kept: {flow}"));
    assert!(to_backend.starts_with(&format!("out to-b{i} to ")), "{flow}");
    let back = flow["route_back"].as_str().unwrap_or_else(|| panic!("no route kept back: {flow}"));
    assert!(back.starts_with("out to-client to "), "{flow}");

    let stats = json(&cluster, &["stats"]);
    let new_flows = stats.as_array().unwrap().iter().find(|s| s["counter"] == "new_flow").expect("new_flow counter");
    assert!(new_flows["packets"].as_u64().unwrap() >= 1, "{stats}");
}

fn trace(cluster: &DemoCluster, args: &[&str]) -> Value {
    let mut all = vec!["--netns", cluster.topology.node.as_str(), "trace"];
    all.extend_from_slice(args);
    json(cluster, &all)
}

fn moved(trace: &Value) -> Vec<String> {
    trace["counters"].as_array().unwrap().iter().map(|c| c[0].as_str().unwrap().to_owned()).collect()
}

#[test]
fn trace_agrees_with_real_packets() {
    let cluster = DemoCluster::start().expect("start demo cluster");
    let client = topology::CLIENT_IP;

    // Hit: DNAT to one of the Service's backends, as a real request is.
    let hit =
        trace(&cluster, &["--src", &format!("{client}:40000"), "--dst", &WEB.to_string(), "--proto", "tcp", "--syn"]);
    // Sent straight to the backend's interface, as the node routes it.
    assert_eq!(hit["verdict"], "redirect", "{hit}");
    let rewritten = hit["output"]["dst"].as_str().unwrap();
    assert!(web_backends().contains(rewritten), "DNAT to a web backend, got {rewritten}: {hit}");
    assert_eq!(hit["output"]["src"], format!("{client}:40000"));
    assert_eq!(moved(&hit), ["new_flow", "redirected"], "{hit}");
    assert_eq!(hit["conntrack_created"], 2, "both directions tracked: {hit}");
    let answer = servers::http_get(&cluster.topology.client, SocketAddr::V4(WEB)).expect("a real request is answered");
    assert!(answer.starts_with("backend-"), "{answer}");
    let left = lb_userspace::datapath::maps::conntrack_entries(&cluster.agent.pin_dir).unwrap();
    assert!(!left.iter().any(|(k, _)| k.src_port == 40000 || k.dst_port == 40000), "the trace's entries were removed");

    // Miss: not a Service, passed untouched, as a real request to a pod is.
    let pod = SocketAddr::from((topology::backend_ip(1), scenario::HTTP_PORT));
    let miss =
        trace(&cluster, &["--src", &format!("{client}:40001"), "--dst", &pod.to_string(), "--proto", "tcp", "--syn"]);
    assert_eq!(miss["verdict"], "pass", "{miss}");
    assert_eq!(miss["output"], miss["input"], "unchanged: {miss}");
    assert_eq!(moved(&miss), ["passed"], "{miss}");
    assert_eq!(servers::http_get(&cluster.topology.client, pod).expect("direct request"), scenario::backend_name(1));

    // Reject: no endpoints, ICMP port unreachable back where it came from,
    // as a real connection is refused.
    let reject = trace(
        &cluster,
        &[
            "--src",
            &format!("{client}:40002"),
            "--dst",
            &NOTHING_HERE.to_string(),
            "--proto",
            "tcp",
            "--syn",
            "--iface",
            "to-client",
        ],
    );
    assert_eq!(reject["verdict"], "redirect", "{reject}");
    assert_eq!(reject["output"]["proto"], "ICMP", "{reject}");
    assert_eq!(reject["output"]["icmp"], serde_json::json!([3, 3]), "port unreachable: {reject}");
    assert_eq!(reject["output"]["dst"], client.to_string(), "{reject}");
    assert_eq!(moved(&reject), ["reject_no_endpoints"], "{reject}");
    let err = servers::connect(&cluster.topology.client, SocketAddr::V4(NOTHING_HERE)).unwrap().expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    // The human-readable form says the same.
    let text = lbctl(
        &cluster.agent.pin_dir,
        &[
            "--netns",
            &cluster.topology.node,
            "trace",
            "--src",
            &format!("{client}:40003"),
            "--dst",
            &WEB.to_string(),
            "--syn",
        ],
    )
    .unwrap();
    assert!(
        text.contains("verdict:  redirect") && text.contains("new_flow +1") && text.contains("removed again"),
        "{text}"
    );
}
