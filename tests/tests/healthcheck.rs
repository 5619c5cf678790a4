//! Services' health check servers, probed as a cloud load balancer does:
//! from outside the node (the client namespace), on the node's address and
//! each Service's `healthCheckNodePort`, while the agent runs in the node
//! namespace as `node-a`. Needs root; run one test at a time.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{self, Agent},
    apiserver::ApiServer,
    observe::{self, Response},
    servers,
    topology::{NODE_CLIENT_SIDE_IP, Topology},
};
use serde_json::{Value, json};

const LOCAL_WEB: u16 = 32001;
const REMOTE_WEB: u16 = 32002;
const CLUSTER_WEB: u16 = 32003;
const TAKEN_WEB: u16 = 32004;
const ON_THIS_NODE: (&str, &str) = ("10.244.1.2", "node-a");
const ON_NODE_B: (&str, &str) = ("10.244.2.2", "node-b");

/// A LoadBalancer Service `name` in namespace `shop` with its
/// healthCheckNodePort and one EndpointSlice of ready endpoints, each
/// (address, nodeName). `index` keeps cluster IPs and node ports apart.
fn service(index: u8, name: &str, policy: &str, health_check_port: u16, endpoints: &[(&str, &str)]) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|(ip, node)| format!("  - {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}\n"))
        .collect();
    let endpoints = if endpoints.is_empty() { "  []\n".to_owned() } else { endpoints };
    format!(
        "- apiVersion: v1
  kind: Service
  metadata: {{name: {name}, namespace: shop}}
  spec:
    type: LoadBalancer
    clusterIP: 10.96.0.{index}
    externalTrafficPolicy: {policy}
    healthCheckNodePort: {health_check_port}
    ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 300{index:02}}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}
  addressType: IPv4
  ports: [{{name: http, port: 8080, protocol: TCP}}]
  endpoints:
{endpoints}"
    )
}

fn file(services: &[String]) -> String {
    format!("apiVersion: v1\nkind: List\nitems:\n{}", services.concat())
}

/// The node, the agent (as node-a) and its Services file.
struct Node {
    /// Runs as long as the `Node` (stopped before the namespaces go).
    _agent: Agent,
    topology: Topology,
    /// The Services file (or kubeconfig) given to the agent; removed on drop.
    config_file: std::path::PathBuf,
}

impl Node {
    fn start(services: &str, extra_args: &[&str]) -> Self {
        let topology = Topology::create(1).expect("topology");
        let source_file = std::env::temp_dir().join(format!("{}.services.yaml", topology.node));
        agent::write_atomically(&source_file, services).expect("write services");
        let mut args = vec!["--hostname-override", "node-a"];
        args.extend_from_slice(extra_args);
        let mut agent = Agent::start(&topology.node, &source_file, &args).expect("start agent");
        agent.wait_ready(Duration::from_secs(30)).expect("agent ready");
        Node { _agent: agent, topology, config_file: source_file }
    }

    fn update(&self, services: &str) {
        agent::write_atomically(&self.config_file, services).expect("write services");
    }

    /// A new connection from the client to the node's health check `port`.
    fn connect(&self, port: u16) -> std::io::Result<TcpStream> {
        servers::connect(&self.topology.client, SocketAddr::from((NODE_CLIENT_SIDE_IP, port)))
            .expect("enter client namespace")
    }

    /// One probe on a new connection; connection errors are returned,
    /// those of the exchange too: a connection accepted just as the
    /// agent closes the port is reset (broken pipe), not refused.
    fn probe(&self, port: u16) -> std::io::Result<Response> {
        let mut conn = self.connect(port)?;
        observe::request(&mut conn, "/")
            .map_err(|e| e.downcast::<std::io::Error>().unwrap_or_else(|e| std::io::Error::other(e.to_string())))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_file);
    }
}

/// Polls `attempt` until it gives `Some`, for at most 10 s.
fn eventually<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(done) = attempt() {
            return done;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn body(response: &Response) -> Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("body {:?}: {e}", response.body))
}

fn expected_body(name: &str, local_endpoints: usize) -> Value {
    json!({"service": {"namespace": "shop", "name": name}, "localEndpoints": local_endpoints, "serviceProxyHealthy": true})
}

fn refused<T>(result: &std::io::Result<T>) -> bool {
    matches!(result, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
}

#[test]
fn local_load_balancers_report_this_nodes_ready_endpoints() {
    let local = |endpoints: &[(&str, &str)]| service(41, "local-web", "Local", LOCAL_WEB, endpoints);
    let remote = service(42, "remote-web", "Local", REMOTE_WEB, &[ON_NODE_B]);
    // healthCheckNodePort set by hand on a Cluster-policy Service: the
    // policy decides, not the field.
    let cluster = service(43, "cluster-web", "Cluster", CLUSTER_WEB, &[ON_THIS_NODE]);
    let node = Node::start(&file(&[local(&[ON_THIS_NODE, ON_NODE_B]), remote.clone(), cluster.clone()]), &[]);

    let answer = eventually("local-web's health check opens", || node.probe(LOCAL_WEB).ok());
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(body(&answer), expected_body("local-web", 1), "only node-a's endpoint counts");
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(answer.headers["x-content-type-options"], "nosniff");
    assert_eq!(answer.headers["x-load-balancing-endpoint-weight"], "1");

    let answer = node.probe(REMOTE_WEB).expect("remote-web's health check is open");
    assert_eq!(answer.status, 503, "no endpoint on this node: {answer:?}");
    assert_eq!(body(&answer), expected_body("remote-web", 0));

    assert!(refused(&node.probe(CLUSTER_WEB)), "a Cluster-policy Service gets no server");

    // A load balancer's keep-alive connection: the count changes under it,
    // the listener is not restarted.
    let mut conn = node.connect(LOCAL_WEB).expect("connect");
    assert_eq!(observe::request(&mut conn, "/healthz").unwrap().status, 200);
    node.update(&file(&[local(&[ON_NODE_B]), remote.clone(), cluster.clone()]));
    let answer = eventually("the local endpoint's removal is reported", || {
        let answer = observe::request(&mut conn, "/any/path").expect("same connection still served");
        (answer.status == 503).then_some(answer)
    });
    assert_eq!(body(&answer), expected_body("local-web", 0));
    assert_eq!(answer.headers["x-load-balancing-endpoint-weight"], "0");

    // The Service is deleted: its port closes, the others stay.
    node.update(&file(&[remote, cluster]));
    eventually("local-web's port closes", || refused(&node.probe(LOCAL_WEB)).then_some(()));
    assert_eq!(node.probe(REMOTE_WEB).expect("remote-web still served").status, 503);
    let metrics = observe::scrape(&node.topology.node).expect("scrape");
    assert_eq!(metrics["lb_service_health_check_servers"], 1.0);
}

#[test]
fn a_taken_port_is_reported_and_retried_while_other_services_are_served() {
    let local = service(41, "local-web", "Local", LOCAL_WEB, &[ON_THIS_NODE]);
    let node = Node::start(&file(std::slice::from_ref(&local)), &["--sync-period", "1s"]);
    // Something else on the node holds taken-web's port when it appears.
    let blocker = servers::in_netns(&node.topology.node, || Ok(std::net::TcpListener::bind(("0.0.0.0", TAKEN_WEB))?))
        .expect("take the port");
    node.update(&file(&[local, service(44, "taken-web", "Local", TAKEN_WEB, &[ON_THIS_NODE])]));
    let metrics = eventually("the failure is counted", || {
        let metrics = observe::scrape(&node.topology.node).ok()?;
        (metrics.get("lb_service_health_check_listen_failures_total") >= Some(&1.0)).then_some(metrics)
    });
    assert_eq!(metrics["lb_service_health_check_servers"], 1.0);
    let answer = node.probe(LOCAL_WEB).expect("local-web still served");
    assert_eq!((answer.status, body(&answer)), (200, expected_body("local-web", 1)));

    // The port comes free: a later (periodic) sync opens it.
    drop(blocker);
    let answer = eventually("taken-web served once its port is free", || node.probe(TAKEN_WEB).ok());
    assert_eq!((answer.status, body(&answer)), (200, expected_body("taken-web", 1)));
}

/// kube-proxy's rule: with `--nodeport-addresses`, health check ports
/// listen only on the node addresses it selects, not everywhere.
#[test]
fn nodeport_addresses_limit_where_health_checks_listen() {
    let services = file(&[service(41, "local-web", "Local", LOCAL_WEB, &[ON_THIS_NODE])]);
    let node = Node::start(&services, &["--nodeport-addresses", "10.0.1.0/24"]);
    let answer = eventually("served on the selected address", || node.probe(LOCAL_WEB).ok());
    assert_eq!(answer.status, 200);
    // The node's address towards the backend is not selected.
    let elsewhere = SocketAddr::from(([10, 244, 1, 1], LOCAL_WEB));
    let other = servers::connect(&node.topology.node, elsewhere).expect("enter node namespace");
    assert!(refused(&other), "not served on {elsewhere}: {other:?}");
}

/// `service()` as the API server holds it.
fn service_object(index: u8, name: &str, health_check_port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "clusterIP": format!("10.96.0.{index}"), "clusterIPs": [format!("10.96.0.{index}")],
                 "externalTrafficPolicy": "Local", "healthCheckNodePort": health_check_port,
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30000 + u16::from(index)}]}
    })
}

fn slice_object(name: &str, (ip, node): (&str, &str)) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-1"), "namespace": "shop", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": node}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// The Kubernetes source applies changes one Service at a time; the
/// counts follow those incremental syncs, and a port that cannot be opened
/// becomes kube-proxy's Event on the Service.
#[test]
fn with_the_kubernetes_source_counts_follow_changes_and_a_taken_port_is_an_event() {
    let topology = Topology::create(1).expect("topology");
    let blocker = servers::in_netns(&topology.node, || Ok(std::net::TcpListener::bind(("0.0.0.0", TAKEN_WEB))?))
        .expect("take the port");
    let api = servers::in_netns(&topology.node, || Ok(ApiServer::start())).expect("API server");
    let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", topology.node));
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let args =
        ["--source", "kubernetes", "--kubeconfig", kubeconfig.to_str().unwrap(), "--hostname-override", "node-a"];
    let mut agent = Agent::start_with(&topology.node, &args.map(str::to_owned)).expect("agent");
    agent.wait_ready(Duration::from_secs(30)).expect("agent ready");
    let node = Node { _agent: agent, topology, config_file: kubeconfig };

    api.apply(service_object(41, "local-web", LOCAL_WEB));
    api.apply(slice_object("local-web", ON_THIS_NODE));
    api.apply(service_object(44, "taken-web", TAKEN_WEB));
    let answer = eventually("local-web served", || node.probe(LOCAL_WEB).ok().filter(|a| a.status == 200));
    assert_eq!(body(&answer), expected_body("local-web", 1));

    api.apply(slice_object("local-web", ON_NODE_B));
    let answer =
        eventually("the endpoint's move is reported", || node.probe(LOCAL_WEB).ok().filter(|a| a.status == 503));
    assert_eq!(body(&answer), expected_body("local-web", 0));

    eventually("an Event about taken-web", || {
        api.events().into_iter().find(|e| {
            let regarding = e.get("regarding").or_else(|| e.get("involvedObject"));
            e["reason"] == "FailedToStartServiceHealthcheck"
                && regarding.and_then(|r| r.get("name")).and_then(Value::as_str) == Some("taken-web")
        })
    });
    drop(blocker);
}
