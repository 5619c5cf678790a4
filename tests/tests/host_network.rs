//! The node's own traffic: a process in the node's network namespace
//! (kubelet, a host-network Pod) reaches ClusterIPs and NodePorts through
//! the socket-level programs the agent attaches to `--cgroup-path`. Here
//! that cgroup is one the test creates; clients join it before they exec.
//! Needs root; run one test at a time (`--test-threads=1`).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    host::{self, Client, TestCgroup},
    observe, probe,
    scenario::{self, DemoCluster, ECHO, NOTHING_HERE, WEB},
    topology::{self, NODE_CLIENT_SIDE_IP},
};

/// A NodePort Service over the web backends, added to the demo file.
const NODE_PORT: u16 = 30080;
const NODE_PORT_SERVICE: &str = "
- apiVersion: v1
  kind: Service
  metadata: {name: web-np, namespace: demo}
  spec:
    type: NodePort
    clusterIP: 10.96.0.11
    ports: [{name: http, port: 80, nodePort: 30080, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-np-1, namespace: demo, labels: {kubernetes.io/service-name: web-np}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - addresses: [10.244.1.2]
";

struct HostCluster {
    // Drop order: the agent and servers first, then the cgroup (empty by then).
    cluster: DemoCluster,
    cgroup: TestCgroup,
}

impl HostCluster {
    fn start() -> Self {
        let cgroup = TestCgroup::create(&format!("lbt{}-host", std::process::id())).expect("test cgroup");
        let services = format!("{}{NODE_PORT_SERVICE}", scenario::DEMO_SERVICES);
        let path = cgroup.path.display().to_string();
        let cluster = DemoCluster::start_with_args(scenario::BACKENDS, &services, &["--cgroup-path", &path], |m| {
            scenario::backend_count(m, WEB) == Some(3)
        })
        .expect("start demo cluster");
        Self { cluster, cgroup }
    }

    fn node(&self) -> &str {
        &self.cluster.topology.node
    }

    /// A counter as `lbctl stats` shows it.
    fn counter(&self, name: &str) -> u64 {
        let table = observe::lbctl(&self.cluster.agent.pin_dir, &["stats"]).expect("lbctl stats");
        let row = table.lines().find(|l| l.split_whitespace().next() == Some(name));
        let value = row.and_then(|l| l.split_whitespace().nth(1)).unwrap_or_else(|| panic!("no {name} in:\n{table}"));
        value.parse().expect("a number")
    }

    /// Runs a client in the node namespace, inside the test's cgroup.
    fn run(&self, mode: &str, addr: SocketAddr) -> Vec<String> {
        host::run(self.node(), Some(&self.cgroup.path), mode, &addr.to_string()).expect("run the client")
    }
}

#[test]
fn node_process_reaches_a_clusterip_over_tcp_and_sees_it_as_peer() {
    let host = HostCluster::start();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let lines = host.run("tcp", SocketAddr::V4(WEB));
        assert_eq!(lines.first().map(String::as_str), Some("peer 10.96.0.10:80"), "{lines:?}");
        let body = lines.get(1).and_then(|l| l.strip_prefix("body ")).unwrap_or_else(|| panic!("{lines:?}"));
        assert!(body.starts_with("backend-"), "{lines:?}");
        seen.insert(body.to_owned());
    }
    assert_eq!(seen.len(), scenario::BACKENDS, "sockets spread over every backend: {seen:?}");
    assert_eq!(host.counter("sock_translated"), 30);
    assert!(host.counter("sock_reverse_nat") >= 30, "getpeername showed the ClusterIP");
}

#[test]
fn node_process_reaches_a_nodeport_on_the_nodes_own_address() {
    let host = HostCluster::start();
    let frontend = SocketAddr::from((NODE_CLIENT_SIDE_IP, NODE_PORT));
    let lines = host.run("tcp", frontend);
    assert_eq!(lines, vec![format!("peer {frontend}"), "body backend-1".to_owned()]);
}

#[test]
fn node_process_udp_replies_come_from_the_clusterip() {
    let host = HostCluster::start();
    for _ in 0..5 {
        let lines = host.run("udp", SocketAddr::V4(ECHO));
        let [line] = lines.as_slice() else { panic!("{lines:?}") };
        assert!(line.starts_with("reply backend-") && line.ends_with(" from 10.96.0.53:53"), "{line}");
    }
}

#[test]
fn service_without_endpoints_refuses_the_connect_at_once() {
    let host = HostCluster::start();
    let started = std::time::Instant::now();
    let lines = host.run("tcp", SocketAddr::V4(NOTHING_HERE));
    assert_eq!(lines, vec!["error ConnectionRefused 111".to_owned()]);
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once, took {:?}", started.elapsed());
    assert_eq!(host.counter("sock_reject_no_endpoints"), 1);
}

#[test]
fn process_outside_the_cgroup_is_not_translated() {
    let host = HostCluster::start();
    // The node namespace has no route for the Service range: untranslated,
    // the connect fails as it would without the agent.
    let lines = host::run(host.node(), None, "tcp", &WEB.to_string()).expect("run the client");
    assert_eq!(lines, vec!["error NetworkUnreachable 101".to_owned()]);
    assert_eq!(host.counter("sock_translated"), 0);
}

#[test]
fn connected_udp_socket_keeps_getting_answers_after_its_backend_is_removed() {
    let mut host = HostCluster::start();
    let mut client =
        Client::start(host.node(), Some(&host.cgroup.path), "udp-connected", &ECHO.to_string()).expect("client");
    assert_eq!(client.line().unwrap(), "peer 10.96.0.53:53");
    client.send("one").unwrap();
    let first = client.line().unwrap();
    let backend = first
        .strip_prefix("reply backend-")
        .and_then(|rest| rest.split(':').next())
        .and_then(|i| i.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("{first}"));
    // Remove that backend from the Service; its server keeps running, so
    // only the agent can move the socket away from it.
    let needle = format!("  - addresses: [{}]\n    conditions: {{ready: true}}\n", topology::backend_ip(backend));
    let services = format!("{}{NODE_PORT_SERVICE}", scenario::DEMO_SERVICES).replacen(&needle, "", 1);
    host.cluster
        .update(&services, |m| scenario::udp_backend_count(m, ECHO) == Some(2))
        .expect("agent applies the removal");
    // Every datagram gets an answer; within the agent's check interval
    // (1 s) the answers come from another backend, and stay there.
    let removed = format!("reply {}:", scenario::backend_name(backend));
    let deadline = Instant::now() + Duration::from_secs(3);
    for i in 0.. {
        let reply = exchange(&mut client, &format!("after {i}"));
        if !reply.starts_with(&removed) {
            break;
        }
        assert!(Instant::now() < deadline, "still pinned to the removed backend: {reply}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..5 {
        let reply = exchange(&mut client, &format!("later {i}"));
        assert!(!reply.starts_with(&removed), "back on the removed backend: {reply}");
    }
    assert!(host.counter("sock_translated") >= 2, "the reconnect was translated again");
}

/// Sends one datagram on the client's connected socket; its answer.
fn exchange(client: &mut Client, payload: &str) -> String {
    client.send(payload).unwrap();
    let reply = client.line().unwrap();
    assert!(reply.starts_with("reply backend-") && reply.ends_with(payload), "{reply}");
    reply
}

/// (link id, program id) of each socket-level program's pinned link.
fn cgroup_links(pin_dir: &std::path::Path) -> Vec<(u32, u32)> {
    use aya::programs::links::{FdLink, PinnedLink};
    lb_userspace::datapath::sock_links::PROGRAMS
        .iter()
        .map(|name| {
            let path = lb_userspace::datapath::sock_links::links_dir(pin_dir).join(name);
            let link = FdLink::from(PinnedLink::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
            let info = link.info().expect("link info");
            (info.id(), info.program_id())
        })
        .collect()
}

#[test]
fn translation_outlives_the_agent_and_a_restart_swaps_the_programs_in_place() {
    let mut host = HostCluster::start();
    let pin_dir = host.cluster.agent.pin_dir.clone();
    let before = cgroup_links(&pin_dir);
    let (node, cgroup) = (host.node().to_owned(), host.cgroup.path.clone());
    host.cluster
        .agent
        .restart_after(|| {
            // No agent: the pinned links keep translating.
            let lines = host::run(&node, Some(&cgroup), "tcp", &WEB.to_string())?;
            anyhow::ensure!(lines.first().map(String::as_str) == Some("peer 10.96.0.10:80"), "{lines:?}");
            Ok(())
        })
        .expect("translated while the agent is down");
    host.cluster.agent.wait_ready(Duration::from_secs(30)).expect("agent back");
    let after = cgroup_links(&pin_dir);
    for ((link_before, prog_before), (link_after, prog_after)) in before.iter().zip(&after) {
        assert_eq!(link_before, link_after, "the same pinned link");
        assert_ne!(prog_before, prog_after, "now running the new agent's program");
    }
    assert_eq!(host.run("tcp", SocketAddr::V4(WEB)).first().map(String::as_str), Some("peer 10.96.0.10:80"));
}

#[test]
fn cleanup_detaches_the_socket_level_programs() {
    let host = HostCluster::start();
    let pin_dir = host.cluster.agent.pin_dir.display().to_string();
    let binary = lb_tests::agent::binary("lb-agent").expect("lb-agent is built");
    topology::run(binary.to_str().unwrap(), &["--netns", host.node(), "--cleanup", "--pin-dir", &pin_dir])
        .expect("cleanup");
    // The agent is still running but its links are gone: nothing translates.
    let lines = host.run("tcp", SocketAddr::V4(WEB));
    assert_eq!(lines, vec!["error NetworkUnreachable 101".to_owned()]);
}

#[test]
fn a_cgroup_made_again_gets_new_links_on_restart() {
    let mut host = HostCluster::start();
    let cgroup = host.cgroup.path.clone();
    host.cluster
        .agent
        .restart_after(|| {
            // The links detach from the removed cgroup; the new one, at
            // the same path, has none until the agent starts.
            std::fs::remove_dir(&cgroup)?;
            std::fs::create_dir(&cgroup)?;
            Ok(())
        })
        .expect("cgroup made again");
    host.cluster.agent.wait_ready(Duration::from_secs(30)).expect("agent back");
    assert_eq!(host.run("tcp", SocketAddr::V4(WEB)).first().map(String::as_str), Some("peer 10.96.0.10:80"));
}

/// A Service whose only endpoint is host-network on this node: the
/// node's own address, as the `kubernetes` Service's apiserver endpoint
/// is on a control-plane node.
const HOST_BACKED: &str = "
- apiVersion: v1
  kind: Service
  metadata: {name: host-backed, namespace: demo}
  spec:
    clusterIP: 10.96.0.12
    ports: [{name: https, port: 443, protocol: TCP, targetPort: 6443}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: host-backed-1, namespace: demo, labels: {kubernetes.io/service-name: host-backed}}
  addressType: IPv4
  ports: [{name: https, port: 6443, protocol: TCP}]
  endpoints:
  - addresses: [10.0.1.1]
    conditions: {ready: true}
";

/// The host's answer leaves from the node's own stack and crosses no
/// ingress hook: `lb_tc_egress` translates it back on its way out.
#[test]
fn a_host_network_backend_on_this_node_answers_clients_and_pods_through_its_cluster_ip() {
    let services = format!("{}{HOST_BACKED}", scenario::DEMO_SERVICES);
    let mut cluster = DemoCluster::start_with(scenario::BACKENDS, &services, |m| {
        scenario::backend_count(m, "10.96.0.12:443".parse().unwrap()) == Some(1)
    })
    .expect("start cluster");
    let host = SocketAddr::from((NODE_CLIENT_SIDE_IP, 6443));
    cluster.servers.http(&cluster.topology.node.clone(), host, "the-host").expect("host-network server");
    let frontend: SocketAddr = "10.96.0.12:443".parse().unwrap();
    // The fixture's pods route only the client's network through the node.
    let pod = &cluster.topology.backends[0];
    topology::run_in(pod, &["ip", "route", "add", topology::SERVICE_RANGE, "via", "10.244.1.1"]).expect("pod route");
    for netns in [cluster.topology.client.clone(), cluster.topology.backends[0].clone()] {
        let answer = probe::eventually(Duration::from_secs(10), "the host-network backend answering", || {
            probe::answer(&netns, frontend)
        });
        assert_eq!(answer, "the-host", "from {netns}");
    }
    let links = observe::lbctl(&cluster.agent.pin_dir, &["--netns", &cluster.topology.node, "-o", "json", "links"])
        .expect("lbctl links");
    assert!(links.contains("\"tc-egress\""), "lb_tc_egress is listed: {links}");
}
