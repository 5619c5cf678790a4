//! What the agent tells operators: Prometheus metrics and kube-proxy's
//! health endpoints, fetched over HTTP from the node namespace the agent
//! runs in, while real traffic flows through it. Needs root; run one test
//! at a time.

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use lb_tests::{
    agent::Agent,
    apiserver::ApiServer,
    observe::{self, HEALTH},
    probe,
    scenario::{self, DemoCluster, NOTHING_HERE, WEB},
    servers,
    topology::Topology,
};
use serde_json::{Value, json};

const NEW_FLOW: &str = "lb_datapath_packets_total{reason=\"new_flow\"}";

#[test]
fn metrics_count_each_new_flow_and_time_the_syncs() {
    // A short garbage collection interval: conntrack's size is shown as
    // of the last pass.
    let cluster = DemoCluster::start_with_args(
        scenario::BACKENDS,
        scenario::DEMO_SERVICES,
        &["--conntrack-gc-interval", "1s"],
        |m| scenario::backend_count(m, WEB) == Some(3),
    )
    .expect("start demo cluster");
    let node = &cluster.topology.node;
    let before = observe::scrape(node).expect("scrape");
    const REQUESTS: usize = 20;
    for _ in 0..REQUESTS {
        servers::http_get(&cluster.topology.client, SocketAddr::V4(WEB)).expect("request through the ClusterIP");
    }
    let after = observe::scrape(node).expect("scrape");

    let new_flows = after[NEW_FLOW] - before.get(NEW_FLOW).copied().unwrap_or(0.0);
    assert!(new_flows >= REQUESTS as f64, "{REQUESTS} connections, new_flow grew by {new_flows}");
    assert!(after["lb_datapath_packets_total{reason=\"reply_nat\"}"] > 0.0, "replies were reverse-NATed");

    let syncs = after["kubeproxy_sync_proxy_rules_duration_seconds_count"];
    assert!(syncs >= 1.0, "the initial sync is timed: {syncs}");
    assert!(after["kubeproxy_sync_full_proxy_rules_duration_seconds_count"] >= 1.0, "the first sync is a full one");
    assert!(after["kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\"}"] == syncs);
    assert!(after["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] > 1.7e9, "a wall-clock time");
    assert!(after["lb_sync_map_writes_total"] > 0.0);

    let maps = cluster.agent.maps().unwrap();
    assert_eq!(after["lb_map_entries{map=\"LB4_BACKENDS\"}"], maps.backends.len() as f64);
    assert_eq!(after["lb_map_entries{map=\"LB4_SERVICES\"}"], maps.services.len() as f64);
    let frontends = maps.services.keys().filter(|k| k.backend_slot == 0).count()
        + maps.services_v6.keys().filter(|k| k.backend_slot == 0).count();
    assert!(frontends > 0);
    assert_eq!(after["lb_frontends"], frontends as f64);
    // Two entries per connection; closed ones stay for the close timeout
    // (10 s), longer than a pass takes to come.
    probe::eventually(Duration::from_secs(5), "conntrack's size in the metrics", || {
        let entries = observe::scrape(node)?.get("lb_conntrack_entries").copied().unwrap_or(0.0);
        anyhow::ensure!(entries >= 2.0 * REQUESTS as f64, "lb_conntrack_entries {entries}");
        Ok(())
    });
}

/// The per-Service counters carry the Service's namespace, name, port
/// and frontend, and count what each frontend's new flows became.
#[test]
fn per_service_counters_name_the_service_and_count_its_new_flows() {
    let cluster = DemoCluster::start().expect("start demo cluster");
    let node = &cluster.topology.node;
    let web =
        r#"{namespace="demo",service="web",port="http",protocol="TCP",kind="ClusterIP",frontend="10.96.0.10:80"}"#;
    let nothing =
        r#"{namespace="demo",service="nothing-here",port="",protocol="TCP",kind="ClusterIP",frontend="10.96.0.30:80"}"#;
    let before = observe::scrape(node).expect("scrape");
    const REQUESTS: usize = 12;
    const REFUSED: usize = 3;
    for _ in 0..REQUESTS {
        servers::http_get(&cluster.topology.client, SocketAddr::V4(WEB)).expect("request through the ClusterIP");
    }
    for _ in 0..REFUSED {
        let result = servers::connect(&cluster.topology.client, SocketAddr::V4(NOTHING_HERE)).expect("connect");
        assert!(result.is_err(), "a Service without endpoints refuses");
    }
    let after = observe::scrape(node).expect("scrape");
    let grew = |metric: &str, labels: &str| {
        let key = format!("{metric}{labels}");
        after.get(&key).copied().unwrap_or(0.0) - before.get(&key).copied().unwrap_or(0.0)
    };
    assert_eq!(grew("lb_service_new_flows_total", web), REQUESTS as f64, "{after:#?}");
    assert_eq!(grew("lb_service_rejected_flows_total", web), 0.0);
    assert_eq!(grew("lb_service_rejected_flows_total", nothing), REFUSED as f64, "{after:#?}");
    assert_eq!(grew("lb_service_new_flows_total", nothing), 0.0);

    // lbctl shows the same counts, from the maps alone.
    let json = observe::lbctl(&cluster.agent.pin_dir, &["services", "-o", "json"]).expect("lbctl services");
    let frontends: Value = serde_json::from_str(&json).expect("json");
    let counted = |address: &str, field: &str| {
        let frontend = frontends.as_array().unwrap().iter().find(|f| f["address"] == address).expect(address);
        frontend[field].as_f64().unwrap()
    };
    assert_eq!(counted("10.96.0.10", "new_flows"), after[&format!("lb_service_new_flows_total{web}")]);
    assert_eq!(counted("10.96.0.30", "rejected"), after[&format!("lb_service_rejected_flows_total{nothing}")]);
}

/// An agent watching the stand-in API server, this node's Node included.
struct KubeNode {
    agent: Agent,
    api: ApiServer,
    topology: Topology,
    kubeconfig: std::path::PathBuf,
}

impl KubeNode {
    /// `prepare` runs on the API server before the agent starts.
    fn start(extra_args: &[&str], prepare: impl FnOnce(&ApiServer)) -> Self {
        let topology = Topology::create(1).expect("topology");
        let api = servers::in_netns(&topology.node, || Ok(ApiServer::start())).expect("API server");
        let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", topology.node));
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        prepare(&api);
        let mut args = vec![
            "--source",
            "kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--hostname-override",
            "node-a",
        ];
        args.extend_from_slice(extra_args);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let agent = Agent::start_with(&topology.node, &args).expect("agent");
        KubeNode { agent, api, topology, kubeconfig }
    }

    fn node(&self, taints: &Value) {
        self.api.apply(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}, "spec": {"taints": taints}}),
        );
    }

    /// Polls `path` until it answers `status`; returns the body.
    fn wait_for(&self, path: &str, status: u16) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = observe::http_get(&self.topology.node, HEALTH, path);
            if let Ok((got, body)) = &answer
                && *got == status
            {
                return serde_json::from_str(body).unwrap_or_else(|e| panic!("{path} body {body:?}: {e}"));
            }
            assert!(Instant::now() < deadline, "{path} never answered {status}: last {answer:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

#[test]
fn healthz_fails_while_the_node_is_tainted_for_scale_down() {
    let mut node = KubeNode::start(&[], |_| {});
    node.node(&json!([]));
    node.agent.wait_ready(Duration::from_secs(30)).expect("agent programmed");
    let body = node.wait_for("/healthz", 200);
    assert_eq!(body["nodeEligible"], true, "{body}");
    assert!(body["lastUpdated"].as_str().is_some_and(|t| t.ends_with("UTC")), "{body}");

    node.node(&json!([{"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"}]));
    let body = node.wait_for("/healthz", 503);
    assert_eq!(body["nodeEligible"], false, "{body}");
    let (status, livez) = observe::http_get(&node.topology.node, HEALTH, "/livez").unwrap();
    assert_eq!(status, 200, "/livez ignores the node's fate: {livez}");

    // The autoscaler changes its mind: healthy again.
    node.node(&json!([]));
    node.wait_for("/healthz", 200);
    let metrics = observe::scrape(&node.topology.node).expect("scrape");
    assert!(metrics["kubeproxy_proxy_healthz_total{code=\"503\"}"] >= 1.0);
}

/// kube-proxy's `network_programming_duration_seconds`: from the
/// EndpointSlice controller's change-trigger annotation to the sync that
/// programmed the change. The trigger is dated 1.5 s in the past, so a
/// latency measured from the event's arrival instead would stay below it;
/// a change triggered before the agent started is not measured.
#[test]
fn network_programming_latency_counts_from_the_slice_trigger_time() {
    let before_start = SystemTime::now() - Duration::from_secs(60);
    let mut node = KubeNode::start(&[], |_| {});
    node.node(&json!([]));
    node.agent.wait_ready(Duration::from_secs(30)).expect("agent programmed");
    std::thread::sleep(Duration::from_secs(2));
    node.api.apply(triggered_slice("old", "10.0.1.3", before_start));
    node.api.apply(triggered_slice("web", "10.0.1.2", SystemTime::now() - Duration::from_millis(1500)));
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = observe::scrape(&node.topology.node).expect("scrape");
        if metrics.get("kubeproxy_network_programming_duration_seconds_count").copied().unwrap_or(0.0) >= 1.0 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "the slice change was never measured");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        metrics["kubeproxy_network_programming_duration_seconds_count"], 1.0,
        "the older trigger is not measured"
    );
    let seconds = metrics["kubeproxy_network_programming_duration_seconds_sum"];
    assert!(seconds >= 1.5, "measured from the trigger time: {seconds} s");
    assert_eq!(metrics["kubeproxy_network_programming_duration_seconds_bucket{le=\"0.5\"}"], 0.0);
}

/// An EndpointSlice of `service` (no Service object needed: the change is
/// measured once programmed, whatever it programs) as the controller
/// writes it after a change at `triggered`.
fn triggered_slice(service: &str, address: &str, triggered: SystemTime) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-abc"), "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": service},
                     "annotations": {"endpoints.kubernetes.io/last-change-trigger-time":
                                     humantime::format_rfc3339_nanos(triggered).to_string()}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

#[test]
fn livez_fails_while_the_first_sync_is_overdue() {
    // The API server is down from the start: the agent never gets a
    // complete view, so the sync queued at start never runs. With a 1 s
    // sync period the health timeout is 2 s.
    let node = KubeNode::start(&["--sync-period", "1s"], |api| api.set_outage(true));
    let started = Instant::now();
    let body = node.wait_for("/livez", 503);
    assert!(started.elapsed() >= Duration::from_millis(1500), "not before the timeout: {:?}", started.elapsed());
    assert!(body.get("nodeEligible").is_none(), "/livez has no node field: {body}");
    node.wait_for("/healthz", 503);

    // The API server comes back: the sync runs, healthy again.
    node.api.set_outage(false);
    node.wait_for("/livez", 200);
    node.wait_for("/healthz", 200);
}

/// `--log-format json` writes one JSON object per line, with the level and
/// the message, for log collectors.
#[test]
fn json_logs_are_one_object_per_line() {
    let topology = Topology::create(1).expect("topology");
    let pin_dir = format!("/sys/fs/bpf/{}", topology.node);
    let mut agent = std::process::Command::new(lb_tests::agent::binary("lb-agent").unwrap())
        .args(["--log-format", "json", "--netns", &topology.node, "--pin-dir", &pin_dir])
        .args(["--source", "file:/nonexistent", "--metrics-bind-address", "", "--healthz-bind-address", ""])
        .args(lb_tests::agent::NO_HOST_CGROUP)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start lb-agent");
    let stderr = std::io::BufReader::new(agent.stderr.take().unwrap());
    let lines: Vec<String> = std::io::BufRead::lines(stderr).take(3).map(Result::unwrap).collect();
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::process::Command::new(lb_tests::agent::binary("lb-agent").unwrap())
        .args(["--cleanup", "--netns", &topology.node, "--pin-dir", &pin_dir])
        .output();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        let record: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
        assert!(record["level"].is_string() && record["fields"]["message"].is_string(), "{record}");
    }
}
