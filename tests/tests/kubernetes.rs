//! The agent against the Kubernetes API: the real lb-agent binary, watching
//! through the real kube client, talking to a stand-in API server that
//! speaks the real list/watch protocol (no kube-apiserver can run on the
//! test machines), with the real datapath in network namespaces and real
//! traffic. Needs root; run one test at a time.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::Agent,
    apiserver::ApiServer,
    scenario::{self, backend_count},
    servers::{self, Servers},
    topology::{self, Topology},
};
use serde_json::{Value, json};

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
const OTHER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80);
const WAIT: Duration = Duration::from_secs(30);

fn service(name: &str, cluster_ip: &str, port: &Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "selector": {"app": name}, "ports": [port]}
    })
}

fn slice(service: &str, backends: &[usize]) -> Value {
    let endpoints: Vec<Value> = backends
        .iter()
        .map(|&i| json!({"addresses": [topology::backend_ip(i).to_string()], "conditions": {"ready": true}, "nodeName": "node-a"}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-abc"), "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": scenario::HTTP_PORT, "protocol": "TCP"}]
    })
}

fn http_port() -> Value {
    json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"})
}

struct Cluster {
    agent: Agent,
    api: ApiServer,
    _servers: Servers,
    topology: Topology,
    kubeconfig: std::path::PathBuf,
}

impl Cluster {
    fn start() -> Self {
        let topology = Topology::create(scenario::BACKENDS).expect("topology");
        let mut servers = Servers::new();
        for i in 1..=scenario::BACKENDS {
            let addr = SocketAddr::from((topology::backend_ip(i), scenario::HTTP_PORT));
            servers.http(&topology.backends[i - 1], addr, &scenario::backend_name(i)).expect("server");
        }
        // The agent runs in the node namespace; so does its API server
        // (on that namespace's loopback), as on a real node.
        let api = servers::in_netns(&topology.node, || Ok(ApiServer::start())).expect("API server");
        let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", topology.node));
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let args =
            ["--source", "kubernetes", "--kubeconfig", kubeconfig.to_str().unwrap(), "--hostname-override", "node-a"];
        let mut agent = Agent::start_with(&topology.node, &args.map(str::to_owned)).expect("agent");
        // Attached and a first sync done: the maps alone can be written
        // before the programs are attached.
        agent.wait_ready(WAIT).expect("agent ready");
        Cluster { agent, api, _servers: servers, topology, kubeconfig }
    }

    fn backends_seen(&self, frontend: SocketAddrV4, requests: usize) -> BTreeSet<String> {
        (0..requests)
            .map(|_| {
                servers::http_get(&self.topology.client, SocketAddr::V4(frontend))
                    .expect("request through the ClusterIP")
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn names(backends: &[usize]) -> BTreeSet<String> {
    backends.iter().map(|&i| scenario::backend_name(i)).collect()
}

#[test]
fn service_created_through_the_api_carries_traffic_and_follows_scaling() {
    let mut cluster = Cluster::start();
    cluster.api.apply(service("web", "10.96.0.10", &http_port()));
    cluster.api.apply(slice("web", &[1, 2, 3]));
    cluster.agent.wait_until(WAIT, |m| backend_count(m, WEB) == Some(3)).expect("programmed from the API");
    assert_eq!(cluster.backends_seen(WEB, 60), names(&[1, 2, 3]));

    // Scale down to one endpoint: all traffic goes there.
    cluster.api.apply(slice("web", &[2]));
    cluster.agent.wait_until(WAIT, |m| backend_count(m, WEB) == Some(1)).expect("scaled down");
    assert_eq!(cluster.backends_seen(WEB, 20), names(&[2]));

    // Scale back up.
    cluster.api.apply(slice("web", &[1, 2, 3]));
    cluster.agent.wait_until(WAIT, |m| backend_count(m, WEB) == Some(3)).expect("scaled up");
    assert_eq!(cluster.backends_seen(WEB, 60), names(&[1, 2, 3]));
}

#[test]
fn deletion_during_a_watch_outage_is_applied_after_the_relist() {
    let mut cluster = Cluster::start();
    cluster.api.apply(service("web", "10.96.0.10", &http_port()));
    cluster.api.apply(slice("web", &[1, 2, 3]));
    cluster.api.apply(service("other", "10.96.0.11", &http_port()));
    cluster.api.apply(slice("other", &[1]));
    cluster.agent.wait_until(WAIT, |m| backend_count(m, WEB) == Some(3) && backend_count(m, OTHER) == Some(1)).unwrap();

    // The watch breaks; while it is down the Service is deleted and the
    // server forgets the history, so the agent's resume gets 410 Gone.
    cluster.api.set_outage(true);
    cluster.api.delete("Service", "shop", "web");
    cluster.api.delete("EndpointSlice", "shop", "web-abc");
    cluster.api.compact();
    std::thread::sleep(Duration::from_millis(300));
    cluster.api.set_outage(false);

    cluster.agent.wait_until(WAIT, |m| backend_count(m, WEB).is_none()).expect("deleted Service removed after relist");
    assert_eq!(backend_count(&cluster.agent.maps().unwrap(), OTHER), Some(1), "the other Service is untouched");
    assert_eq!(cluster.backends_seen(OTHER, 5), names(&[1]));
    let relisted = cluster.api.request_log().iter().filter(|r| r.is_list() && r.path.ends_with("/services")).count();
    assert!(relisted >= 2, "the agent relisted Services after 410 ({relisted} lists)");
    // Every list, first and relist alike, is served from the API server's
    // watch cache (resourceVersion 0), not as a quorum read from etcd, and
    // filtered on the server with kube-proxy's selectors.
    for list in cluster.api.request_log().iter().filter(|r| r.is_list()) {
        assert_eq!(list.param("resourceVersion").as_deref(), Some("0"), "{list:?}");
        if !list.path.ends_with("/nodes") {
            let selector = list.param("labelSelector").unwrap_or_default();
            assert!(selector.contains("!service.kubernetes.io/service-proxy-name"), "{list:?}");
        }
    }
}

#[test]
fn invalid_service_is_reported_while_a_valid_one_works() {
    let mut cluster = Cluster::start();
    cluster.api.apply(service("broken", "10.96.0.12", &json!({"name": "http", "port": 80, "protocol": "QUIC"})));
    cluster.api.apply(service("web", "10.96.0.10", &http_port()));
    cluster.api.apply(slice("web", &[1, 2, 3]));
    cluster.agent.wait_until(WAIT, |m| backend_count(m, WEB) == Some(3)).expect("valid Service programmed");
    assert_eq!(cluster.backends_seen(WEB, 60), names(&[1, 2, 3]));

    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let events = cluster.api.events();
        let about_broken = events.iter().any(|e| {
            let regarding = e.get("regarding").or_else(|| e.get("involvedObject"));
            regarding.and_then(|r| r.get("name")).and_then(Value::as_str) == Some("broken")
        });
        if about_broken {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no Event about the invalid Service: {events:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
