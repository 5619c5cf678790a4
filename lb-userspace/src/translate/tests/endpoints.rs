//! EndpointSlices → backends: which slices count, how they merge, how
//! ports resolve, and endpoint conditions.

use serde_json::json;

use super::*;

fn web_backends(slices: &[Value]) -> Vec<String> {
    web_backends_of(web_service(), slices)
}

fn web_backends_of(svc: Value, slices: &[Value]) -> Vec<String> {
    let table = run(&[svc], slices);
    backends(frontend(&table, "10.96.0.10", 80, Protocol::Tcp))
}

#[test]
fn slices_of_one_service_are_merged() {
    let slices = [
        web_slice("web-abc12", &[ready("10.244.2.7", "node-b")]),
        web_slice("web-def34", &[ready("10.244.1.5", "node-a")]),
    ];
    assert_eq!(web_backends(&slices), ["10.244.1.5:8080", "10.244.2.7:8080"]);
}

#[test]
fn slices_match_service_by_name_label_in_same_namespace() {
    let mut other_namespace = web_slice("web-abc12", &[ready("10.244.9.9", "node-a")]);
    other_namespace["metadata"]["namespace"] = json!("staging");
    let mut unlabelled = web_slice("web-def34", &[ready("10.244.8.8", "node-a")]);
    unlabelled["metadata"]["labels"].as_object_mut().unwrap().remove("kubernetes.io/service-name");
    let mut other_service = web_slice("api-x1y2z", &[ready("10.244.7.7", "node-a")]);
    other_service["metadata"]["labels"]["kubernetes.io/service-name"] = json!("api");
    let own = web_slice("web-ghi56", &[ready("10.244.1.5", "node-a")]);
    assert_eq!(web_backends(&[other_namespace, unlabelled, other_service, own]), ["10.244.1.5:8080"]);
}

#[test]
fn selectorless_service_uses_hand_made_slices() {
    let mut svc = web_service();
    svc["metadata"]["name"] = json!("external-db");
    svc["spec"].as_object_mut().unwrap().remove("selector");
    svc["spec"]["ports"] = json!([{"port": 80, "protocol": "TCP", "targetPort": 5432}]);
    let slice = json!({
        "addressType": "IPv4",
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "labels": {"kubernetes.io/service-name": "external-db"},
            "name": "external-db-1",
            "namespace": "default"
        },
        "endpoints": [{"addresses": ["172.16.5.20"]}],
        "ports": [{"name": "", "port": 5432, "protocol": "TCP"}]
    });
    assert_eq!(web_backends_of(svc, &[slice]), ["172.16.5.20:5432"]);
}

#[test]
fn headless_labelled_slices_are_ignored() {
    let mut headless = web_slice("web-abc12", &[ready("10.244.2.7", "node-b")]);
    headless["metadata"]["labels"]["service.kubernetes.io/headless"] = json!("");
    let plain = web_slice("web-def34", &[ready("10.244.1.5", "node-a")]);
    assert_eq!(web_backends(&[headless, plain]), ["10.244.1.5:8080"]);
}

/// kube-proxy: cmd/kube-proxy server.go — slices follow the same
/// service-proxy-name rule as Services.
#[test]
fn slices_labelled_for_another_proxy_are_ignored() {
    let mut foreign = web_slice("web-abc12", &[ready("10.244.2.7", "node-b")]);
    foreign["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] = json!("other-proxy");
    let plain = web_slice("web-def34", &[ready("10.244.1.5", "node-a")]);
    assert_eq!(web_backends(&[foreign.clone(), plain.clone()]), ["10.244.1.5:8080"]);

    // With --proxy-name other-proxy, it is the other way round.
    let mut svc = web_service();
    svc["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] = json!("other-proxy");
    let named = NodeContext { proxy_name: Some("other-proxy".into()), ..node() };
    let table = run_on(&named, &[svc], &[foreign, plain]);
    assert_eq!(backends(frontend(&table, "10.96.0.10", 80, Protocol::Tcp)), ["10.244.2.7:8080"]);
}

#[test]
fn only_ipv4_slices_are_used() {
    let mut v6 = web_slice("web-v6abc", &[ready("fd00:10:244::5", "node-a")]);
    v6["addressType"] = json!("IPv6");
    let mut fqdn = web_slice("web-fqdn1", &[ready("db.example.com", "node-a")]);
    fqdn["addressType"] = json!("FQDN");
    let v4 = web_slice("web-v4abc", &[ready("10.244.1.5", "node-a")]);
    let table = run(&[web_service()], &[v6, fqdn, v4]);
    assert_eq!(backends(&table.frontends[0]), ["10.244.1.5:8080"]);
    assert!(table.problems.is_empty(), "{:?}", table.problems);
}

#[test]
fn duplicate_endpoints_are_deduplicated_by_address_and_port() {
    // During slice rebalancing an endpoint may appear in two slices.
    let slices = [
        web_slice("web-abc12", &[ready("10.244.1.5", "node-a"), ready("10.244.2.7", "node-b")]),
        web_slice("web-def34", &[ready("10.244.1.5", "node-a")]),
    ];
    assert_eq!(web_backends(&slices), ["10.244.1.5:8080", "10.244.2.7:8080"]);
}

/// kube-proxy: endpointslicecache.go addEndpoints — a copy of an
/// (address, port) that is not terminating replaces a terminating one, so a
/// new Pod that reuses the IP of a Pod still shutting down is served.
#[test]
fn duplicate_address_prefers_the_non_terminating_copy() {
    // The old Pod's slice sorts first; the new Pod's copy must still win.
    let old_pod = web_slice("web-abc12", &[serving_terminating("10.244.1.5", "node-a")]);
    let new_pod = web_slice("web-def34", &[ready("10.244.1.5", "node-a")]);
    assert_eq!(web_backends(&[old_pod.clone(), new_pod.clone()]), ["10.244.1.5:8080"]);
    // Whichever slice comes first.
    let mut renamed_old = old_pod;
    renamed_old["metadata"]["name"] = json!("web-zzz99");
    assert_eq!(web_backends(&[new_pod, renamed_old]), ["10.244.1.5:8080"]);
}

/// kube-proxy: endpointslicecache.go addEndpoints — a terminating copy never
/// replaces one already kept; with the new Pod not ready yet, the old Pod's
/// copy is the only one left to serve from.
#[test]
fn duplicate_address_keeps_a_non_terminating_copy_over_a_later_terminating_one() {
    let new_pod = web_slice("web-abc12", &[not_ready("10.244.1.5", "node-a")]);
    let old_pod = web_slice("web-def34", &[serving_terminating("10.244.1.5", "node-a")]);
    let table = run(&[web_service()], &[new_pod, old_pod]);
    assert!(table.frontends[0].backends.is_empty(), "{:?}", table.frontends[0].backends);
}

#[test]
fn same_address_on_two_target_ports_is_two_backends() {
    let mut a = web_slice("web-abc12", &[ready("10.244.1.5", "node-a")]);
    a["ports"][0]["port"] = json!(8081);
    let b = web_slice("web-def34", &[ready("10.244.1.5", "node-a")]);
    assert_eq!(web_backends(&[a, b]), ["10.244.1.5:8080", "10.244.1.5:8081"]);
}

#[test]
fn named_target_port_resolved_through_slice_ports() {
    // targetPort "web-http" names a container port; the EndpointSlice
    // controller resolved it per Pod, and the slice port is named after
    // the Service port.
    let mut svc = web_service();
    svc["spec"]["ports"] = json!([
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web-http"},
        {"name": "metrics", "port": 9100, "protocol": "TCP", "targetPort": "web-metrics"}
    ]);
    let mut old_pods = web_slice("web-abc12", &[ready("10.244.1.5", "node-a")]);
    old_pods["ports"] = json!([
        {"name": "metrics", "port": 9090, "protocol": "TCP"},
        {"name": "http", "port": 8080, "protocol": "TCP"}
    ]);
    let mut new_pods = web_slice("web-def34", &[ready("10.244.2.7", "node-b")]);
    new_pods["ports"] = json!([
        {"name": "http", "port": 8443, "protocol": "TCP"},
        {"name": "metrics", "port": 9091, "protocol": "TCP"}
    ]);
    let table = run(&[svc], &[old_pods, new_pods]);
    assert_eq!(backends(frontend(&table, "10.96.0.10", 80, Protocol::Tcp)), ["10.244.1.5:8080", "10.244.2.7:8443"]);
    assert_eq!(backends(frontend(&table, "10.96.0.10", 9100, Protocol::Tcp)), ["10.244.1.5:9090", "10.244.2.7:9091"]);
}

#[test]
fn unnamed_service_port_matches_unnamed_slice_port() {
    let mut svc = web_service();
    svc["spec"]["ports"] = json!([{"port": 80, "protocol": "TCP", "targetPort": 8080}]);
    let mut named = web_slice("web-abc12", &[ready("10.244.2.7", "node-b")]);
    named["ports"] = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let mut unnamed = web_slice("web-def34", &[ready("10.244.1.5", "node-a")]);
    unnamed["ports"] = json!([{"name": "", "port": 8080, "protocol": "TCP"}]);
    assert_eq!(web_backends_of(svc, &[named, unnamed]), ["10.244.1.5:8080"]);
}

/// kube-proxy: endpointslicecache.go endpointInfoByServicePort — a slice
/// port without a name is ignored; only `"name": ""` matches an unnamed
/// Service port.
#[test]
fn slice_port_without_name_is_ignored() {
    let mut svc = web_service();
    svc["spec"]["ports"] = json!([{"port": 80, "protocol": "TCP", "targetPort": 8080}]);
    let mut nameless = web_slice("web-abc12", &[ready("10.244.2.7", "node-b")]);
    nameless["ports"] = json!([{"port": 8080, "protocol": "TCP"}]);
    let mut unnamed = web_slice("web-def34", &[ready("10.244.1.5", "node-a")]);
    unnamed["ports"] = json!([{"name": "", "port": 8080, "protocol": "TCP"}]);
    assert_eq!(web_backends_of(svc, &[nameless, unnamed]), ["10.244.1.5:8080"]);
}

#[test]
fn slice_port_protocol_must_match() {
    let mut udp = web_slice("web-abc12", &[ready("10.244.2.7", "node-b")]);
    udp["ports"][0]["protocol"] = json!("UDP");
    let tcp = web_slice("web-def34", &[ready("10.244.1.5", "node-a")]);
    assert_eq!(web_backends(&[udp, tcp]), ["10.244.1.5:8080"]);
}

#[test]
fn slice_without_matching_port_contributes_nothing() {
    let mut other_port = web_slice("web-abc12", &[ready("10.244.2.7", "node-b")]);
    other_port["ports"] = json!([{"name": "grpc", "port": 9000, "protocol": "TCP"}]);
    let mut no_ports = web_slice("web-def34", &[ready("10.244.3.3", "node-c")]);
    no_ports["ports"] = json!([]);
    let matching = web_slice("web-ghi56", &[ready("10.244.1.5", "node-a")]);
    assert_eq!(web_backends(&[other_port, no_ports, matching]), ["10.244.1.5:8080"]);
}

#[test]
fn service_without_endpoints_keeps_frontends_with_no_backends() {
    // The datapath answers such frontends with a reject, as kube-proxy does.
    let table = run(&[web_service()], &[web_slice("web-abc12", &[not_ready("10.244.1.5", "node-a")])]);
    assert_eq!(frontend_list(&table), ["ClusterIP 10.96.0.10:80/TCP"]);
    assert!(table.frontends[0].backends.is_empty());
}

/// kube-proxy: endpointslicecache.go addEndpoints — `ready` unset reads as
/// true.
#[test]
fn missing_conditions_count_as_ready() {
    let mut no_conditions = ready("10.244.1.5", "node-a");
    no_conditions.as_object_mut().unwrap().remove("conditions");
    let empty_conditions = endpoint("10.244.2.7", "node-b", &json!({}));
    assert_eq!(
        web_backends(&[web_slice("web-abc12", &[no_conditions, empty_conditions])]),
        ["10.244.1.5:8080", "10.244.2.7:8080"]
    );
}

/// kube-proxy: endpointslicecache.go addEndpoints — `serving` unset reads
/// as true (not as a copy of `ready`), so a terminating endpoint without
/// the field is a serving-terminating fallback.
#[test]
fn missing_serving_counts_as_serving() {
    let unset_serving = endpoint("10.244.1.5", "node-a", &json!({"ready": false, "terminating": true}));
    let not_serving = endpoint("10.244.2.7", "node-b", &json!({"ready": false, "serving": false, "terminating": true}));
    assert_eq!(web_backends(&[web_slice("web-abc12", &[unset_serving, not_serving])]), ["10.244.1.5:8080 terminating"]);
}

#[test]
fn missing_terminating_counts_as_false() {
    // Serving but not ready and terminating unset: not terminating, so no
    // fallback candidate.
    let unset_terminating = endpoint("10.244.1.5", "node-a", &json!({"ready": false, "serving": true}));
    let table = run(&[web_service()], &[web_slice("web-abc12", &[unset_terminating])]);
    assert!(table.frontends[0].backends.is_empty(), "{:?}", table.frontends[0].backends);
}

#[test]
fn ready_endpoints_preferred_over_terminating() {
    let slice = web_slice(
        "web-abc12",
        &[
            serving_terminating("10.244.1.4", "node-a"),
            ready("10.244.1.5", "node-a"),
            not_ready("10.244.1.6", "node-a"),
        ],
    );
    assert_eq!(web_backends(&[slice]), ["10.244.1.5:8080"]);
}

#[test]
fn falls_back_to_serving_terminating_when_none_ready() {
    let gone = endpoint("10.244.1.3", "node-a", &json!({"ready": false, "serving": false, "terminating": true}));
    let slice = web_slice(
        "web-abc12",
        &[
            gone,
            serving_terminating("10.244.2.7", "node-b"),
            serving_terminating("10.244.1.4", "node-a"),
            not_ready("10.244.1.6", "node-a"),
        ],
    );
    assert_eq!(web_backends(&[slice]), ["10.244.1.4:8080 terminating", "10.244.2.7:8080 terminating"]);
}

/// kube-proxy: the proxy never reads `publishNotReadyAddresses`; the
/// EndpointSlice controller folds it into `ready`. A slice that says "not
/// ready" (e.g. a hand-made one) is taken at its word.
#[test]
fn publish_not_ready_addresses_is_left_to_the_slice_controller() {
    let mut svc = web_service();
    svc["spec"]["publishNotReadyAddresses"] = json!(true);
    let slice = web_slice(
        "web-abc12",
        &[
            ready("10.244.1.5", "node-a"),
            not_ready("10.244.1.6", "node-a"),
            serving_terminating("10.244.1.7", "node-a"),
        ],
    );
    assert_eq!(web_backends_of(svc, &[slice]), ["10.244.1.5:8080"]);
}

#[test]
fn backends_sorted_whatever_the_slice_order() {
    let slice = web_slice(
        "web-abc12",
        &[ready("10.244.3.1", "node-c"), ready("10.244.1.9", "node-a"), ready("10.244.1.10", "node-a")],
    );
    assert_eq!(web_backends(&[slice]), ["10.244.1.9:8080", "10.244.1.10:8080", "10.244.3.1:8080"]);
}

/// kube-proxy leaves established connections alone when an endpoint stops
/// being chosen (its conntrack entries keep them going until the endpoint
/// is gone): here such endpoints are `draining`, kept for established flows
/// only, until they leave the slices.
#[test]
fn endpoints_not_chosen_for_new_flows_are_kept_for_established_ones() {
    let slice = web_slice(
        "web-abc12",
        &[
            ready("10.244.1.5", "node-a"),
            serving_terminating("10.244.1.6", "node-a"),
            not_ready("10.244.1.7", "node-a"),
        ],
    );
    let table = run(&[web_service()], &[slice]);
    let web = frontend(&table, "10.96.0.10", 80, Protocol::Tcp);
    assert_eq!(backends(web), ["10.244.1.5:8080"]);
    let draining: Vec<String> = web.draining.iter().map(|b| format!("{}:{}", b.address, b.port)).collect();
    assert_eq!(draining, ["10.244.1.6:8080", "10.244.1.7:8080"]);
}
