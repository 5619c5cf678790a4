//! The datapath's attachments across the agent's life: pinned links that
//! keep traffic flowing while the agent restarts and whose program is
//! replaced in place, interfaces that appear after the agent started,
//! pinned maps from another build, and an agent started with
//! `ip netns exec`. Needs root; run one test at a time (`--test-threads=1`).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_common::maps as names;
use lb_tests::{
    agent,
    links::{self, LoggedAgent, Pod, pinned_link, pinned_link_path, wait_for},
    pin_dir::PinDir,
    scenario::{self, DemoCluster, ECHO, WEB},
    servers::{self, Servers},
    topology::Topology,
    traffic::{Load, LoadSpec},
};
use lb_userspace::datapath::layout;

/// Pinned link ids of every node interface.
fn link_ids(cluster: &DemoCluster) -> Vec<(String, links::LinkIds)> {
    cluster
        .topology
        .node_interfaces
        .iter()
        .map(|i| (i.clone(), pinned_link(&cluster.agent.pin_dir, i).unwrap_or_else(|e| panic!("link of {i}: {e:#}"))))
        .collect()
}

#[test]
fn restarts_and_upgrades_drop_no_connection_and_no_datagram() {
    const RESTARTS: usize = 5;
    const DURATION: Duration = Duration::from_secs(20);
    let mut cluster = DemoCluster::start().expect("start demo cluster");
    let spec = LoadSpec {
        http: SocketAddr::V4(WEB),
        udp: SocketAddr::V4(ECHO),
        connections_per_second: 250,
        udp_interval: Duration::from_millis(50),
        keepalive_interval: Duration::from_millis(100),
    };
    let load = Load::start(&cluster.topology.client, spec).expect("start the clients");
    let started = Instant::now();
    let mut before = link_ids(&cluster);
    let mut not_updated_in_place = Vec::new();
    for restart in 1..=RESTARTS {
        std::thread::sleep(Duration::from_millis(1500));
        cluster.agent.restart().expect("restart the agent");
        cluster.agent.wait_ready(Duration::from_secs(30)).expect("agent ready again");
        // Each start loads a new program and swaps it into the pinned links
        // (an upgrade would do the same with a rebuilt program): same link,
        // new program.
        let after: Vec<_> = cluster
            .topology
            .node_interfaces
            .iter()
            .map(|i| (i.clone(), pinned_link(&cluster.agent.pin_dir, i).ok()))
            .collect();
        for ((interface, old), (_, new)) in before.iter().zip(&after) {
            match new {
                Some(new) if new.link_id == old.link_id && new.program_id != old.program_id => {}
                _ => not_updated_in_place.push(format!("restart {restart}: {interface} was {old:?}, now {new:?}")),
            }
        }
        before = after
            .into_iter()
            .map(|(i, ids)| (i, ids.unwrap_or(links::LinkIds { link_id: 0, program_id: 0 })))
            .collect();
    }
    if let Some(rest) = DURATION.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let report = load.finish();
    let rate = report.connections.ok as f64 / report.elapsed.as_secs_f64();
    eprintln!(
        "{RESTARTS} restarts in {:.1}s: {} connections ({rate:.0}/s), {} failed; {} UDP exchanges, {} lost; \
         keep-alive {} requests, {} failed",
        report.elapsed.as_secs_f64(),
        report.connections.ok,
        report.connections.failures.len(),
        report.udp.ok,
        report.udp.failures.len(),
        report.keepalive.ok,
        report.keepalive.failures.len(),
    );
    assert!(report.connections.failures.is_empty(), "failed connections: {:?}", report.connections.failures);
    assert!(report.udp.failures.is_empty(), "lost UDP exchanges: {:?}", report.udp.failures);
    assert!(report.keepalive.failures.is_empty(), "keep-alive connection broke: {:?}", report.keepalive.failures);
    assert!(rate >= 200.0, "only {rate:.0} new connections a second");
    assert!(not_updated_in_place.is_empty(), "links not kept with a new program: {not_updated_in_place:?}");
}

const POD_SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 44), 80);

/// The demo Services plus one whose only endpoint is `ip`.
fn services_with_pod_service(ip: Ipv4Addr) -> String {
    let extra = format!(
        "- apiVersion: v1
  kind: Service
  metadata: {{name: pod, namespace: demo}}
  spec:
    clusterIP: {svc}
    clusterIPs: [{svc}]
    ports: [{{name: http, port: 80, protocol: TCP}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: pod-1
    namespace: demo
    labels: {{kubernetes.io/service-name: pod}}
  addressType: IPv4
  ports: [{{name: http, port: {port}, protocol: TCP}}]
  endpoints:
  - addresses: [{ip}]
    conditions: {{ready: true, serving: true, terminating: false}}
",
        svc = POD_SERVICE.ip(),
        port = scenario::HTTP_PORT,
    );
    format!("{}{extra}", scenario::DEMO_SERVICES.trim_end_matches('\n').to_owned() + "\n")
}

/// The demo cluster plus a Service whose one endpoint, a pod not created
/// yet, has the returned address.
fn cluster_with_pod_service() -> (DemoCluster, Ipv4Addr) {
    let mut cluster = DemoCluster::start().expect("start demo cluster");
    let pod_ip = Ipv4Addr::new(10, 244, 9, 2);
    cluster
        .update(&services_with_pod_service(pod_ip), |m| {
            m.services.keys().any(|k| k.address == POD_SERVICE.ip().octets())
        })
        .expect("agent programs the pod's Service");
    (cluster, pod_ip)
}

#[test]
fn new_pod_interface_is_attached_and_unpinned_when_gone() {
    let (cluster, pod_ip) = cluster_with_pod_service();

    let pod = Pod::add(&cluster.topology, 9).expect("add a pod");
    let appeared = Instant::now();
    let mut servers = Servers::new();
    servers.http(&pod.netns, SocketAddr::from((pod_ip, scenario::HTTP_PORT)), "new-pod").expect("pod's server");
    // The reply enters the node through the new interface: without the
    // datapath there, it is not translated back and the connection fails.
    let mut attempts = 0;
    let reached = wait_for(Duration::from_secs(3), || {
        attempts += 1;
        // Short timeouts: a stuck attempt is abandoned for a new connection.
        servers::in_netns(&cluster.topology.client, || {
            let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(POD_SERVICE), Duration::from_millis(200))?;
            conn.set_read_timeout(Some(Duration::from_millis(200)))?;
            servers::http_request(&mut conn, true)
        })
        .is_ok_and(|body| body == "new-pod")
    });
    let since_appeared = appeared.elapsed();
    eprintln!(
        "new pod reached through its ClusterIP {since_appeared:?} after its interface appeared ({attempts} attempts)"
    );
    // How soon is reported, not asserted: a timing bound would fail on a
    // loaded machine without anything being wrong.
    assert!(reached.is_some(), "the new pod was never reached through its ClusterIP ({attempts} attempts)");
    let link = pinned_link_path(&cluster.agent.pin_dir, &pod.node_interface);
    assert!(link.exists(), "the new interface's link is pinned");

    drop(servers);
    drop(pod);
    assert!(wait_for(Duration::from_secs(1), || !link.exists()).is_some(), "pinned link of the deleted pod remains");
}

#[test]
fn restart_drops_links_of_deleted_pods_and_replaces_those_of_recreated_ones() {
    let (mut cluster, pod_ip) = cluster_with_pod_service();
    let gone = Pod::add(&cluster.topology, 8).expect("add a pod");
    let recreated = Pod::add(&cluster.topology, 9).expect("add a pod");
    let pin_dir = cluster.agent.pin_dir.clone();
    let (gone_link, recreated_link) =
        (pinned_link_path(&pin_dir, &gone.node_interface), pinned_link_path(&pin_dir, &recreated.node_interface));
    assert!(
        wait_for(Duration::from_secs(1), || gone_link.exists() && recreated_link.exists()).is_some(),
        "pods attached"
    );
    let old = pinned_link(&pin_dir, &recreated.node_interface).unwrap();

    // While no agent runs: one pod goes, the other is deleted and created
    // again under the same interface name (its old link is now detached).
    let topology = &cluster.topology;
    let mut recreated = Some(recreated);
    let mut new_pod = None;
    cluster
        .agent
        .restart_after(|| {
            drop(gone);
            drop(recreated.take());
            // Deleting a namespace destroys its veths asynchronously.
            let node = &topology.node;
            assert!(
                wait_for(Duration::from_secs(5), || !links::interface_exists(node, "to-b9")).is_some(),
                "old veth gone"
            );
            new_pod = Some(Pod::add(topology, 9)?);
            Ok(())
        })
        .expect("restart the agent");
    let new_pod = new_pod.unwrap();
    let mut servers = Servers::new();
    servers.http(&new_pod.netns, SocketAddr::from((pod_ip, scenario::HTTP_PORT)), "new-pod").expect("pod's server");
    cluster.agent.wait_ready(Duration::from_secs(30)).expect("agent ready again");

    assert!(!gone_link.exists(), "the deleted pod's pinned link is removed");
    let new = pinned_link(&pin_dir, &new_pod.node_interface).expect("the recreated pod's link is pinned");
    assert_ne!(new.link_id, old.link_id, "a new link replaces the one left without an interface");
    let body =
        servers::http_get(&cluster.topology.client, SocketAddr::V4(POD_SERVICE)).expect("the recreated pod answers");
    assert_eq!(body, "new-pod");
}

/// The demo Services plus `web` again as a NodePort.
fn services_with_node_port(node_port: u16) -> String {
    let extra = format!(
        "- apiVersion: v1
  kind: Service
  metadata: {{name: web-np, namespace: demo}}
  spec:
    type: NodePort
    clusterIP: 10.96.0.45
    clusterIPs: [10.96.0.45]
    ports: [{{name: http, port: 80, protocol: TCP, nodePort: {node_port}}}]
"
    );
    format!("{}{extra}", scenario::DEMO_SERVICES.trim_end_matches('\n').to_owned() + "\n")
}

/// The kernel drops link and address notifications its socket has no room
/// for. Paused while 300 interfaces with an address each appear, the
/// agent finds the loss reported when it resumes, and lists links and
/// addresses again: every interface gets the datapath, every address its
/// NodePort, not only those whose notifications fit in the buffer.
#[test]
fn notifications_lost_while_the_agent_was_paused_are_caught_up() {
    const LINKS: usize = 300;
    const NODE_PORT: u16 = 30080;
    let mut cluster = DemoCluster::start().expect("start demo cluster");
    cluster
        .update(&services_with_node_port(NODE_PORT), |m| m.services.keys().any(|k| k.port == NODE_PORT))
        .expect("NodePort programmed");
    let batch: String = (0..LINKS)
        .map(|i| format!("link add ovr{i} type bridge\naddr add 10.250.{}.{}/32 dev ovr{i}\n", i / 250, i % 250 + 1))
        .collect();
    let pid = cluster.agent.pid() as i32;
    // SAFETY: plain kill(2) on our own child; resumed below whatever happens.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let created = links::ip_batch(&cluster.topology.node, &batch);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    created.expect("create the interfaces");

    let pin_dir = cluster.agent.pin_dir.clone();
    let unattached = || (0..LINKS).filter(|i| !pinned_link_path(&pin_dir, &format!("ovr{i}")).exists()).count();
    let attached = wait_for(Duration::from_secs(30), || unattached() == 0);
    assert!(attached.is_some(), "{} of {LINKS} interfaces never attached", unattached());
    let last = Ipv4Addr::new(10, 250, ((LINKS - 1) / 250) as u8, ((LINKS - 1) % 250 + 1) as u8);
    cluster
        .agent
        .wait_until(Duration::from_secs(30), |m| {
            m.services.keys().any(|k| k.address == last.octets() && k.port == NODE_PORT)
        })
        .expect("the NodePort is served on the last address added");
}

fn agent_args(topology: &Topology, pin_dir: &std::path::Path, source: &std::path::Path) -> Vec<String> {
    [
        "--netns",
        &topology.node,
        "--pin-dir",
        &pin_dir.display().to_string(),
        "--source",
        &format!("file:{}", source.display()),
        "--poll-interval",
        "20ms",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn services_file(topology: &Topology) -> (PinDir, PathBuf) {
    let dir = std::env::temp_dir().join(format!("{}-src", topology.node));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("services.yaml");
    agent::write_atomically(&file, scenario::DEMO_SERVICES).unwrap();
    (PinDir(dir), file)
}

#[test]
fn incompatible_id_counters_stop_the_agent_with_a_clear_message() {
    let topology = Topology::create(1).expect("topology");
    let (_src, source) = services_file(&topology);
    let pin_dir = PinDir(format!("/sys/fs/bpf/{}", topology.node).into());
    // The id counters with 8-byte values, as a build with u64 ids would pin them.
    links::pin_foreign_map(&pin_dir.0.join(names::IDS), "array", 4, 8, 2, names::IDS).expect("pin a foreign map");
    let mut agent =
        LoggedAgent::spawn(&[], &agent_args(&topology, &pin_dir.0, &source), &topology.node).expect("spawn");
    let status = agent.wait_exit(Duration::from_secs(30)).expect("the agent exits");
    let stderr = agent.stderr();
    assert!(!status.success(), "the agent must refuse to start: {stderr}");
    assert!(stderr.contains("LB_IDS") && stderr.contains("id counters"), "names the map and why: {stderr}");
    assert!(stderr.contains("--cleanup"), "says how to get out: {stderr}");
    let still = layout::pinned_layout(&pin_dir.0.join(names::IDS)).unwrap().expect("still pinned");
    assert_eq!(still.value_size, 8, "the refused map is left as it was");
    assert!(!pinned_link_path(&pin_dir.0, "to-client").exists(), "nothing attached");
}

/// Records `version` for `map` in the pinned `LB_LAYOUT` (pinned first if
/// missing), as a build whose `map` means something else at the same
/// sizes would have left it.
fn record_foreign_version(pin_dir: &std::path::Path, map: &str, version: u32) {
    let layout = pin_dir.join(names::LAYOUT);
    if !layout.exists() {
        links::pin_foreign_map(&layout, "hash", 16, 4, names::LAYOUT_CAPACITY, names::LAYOUT).expect("pin LB_LAYOUT");
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>();
    let path = layout.to_str().unwrap().to_owned();
    let mut args = vec!["map".to_owned(), "update".into(), "pinned".into(), path, "key".into()];
    args.extend(hex(&names::layout_key(map)));
    args.push("value".into());
    args.extend(hex(&version.to_ne_bytes()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lb_tests::topology::run("bpftool", &args).expect("record a version");
}

/// A map whose shape matches but whose recorded layout version is not
/// this build's means something else: a derived map is recreated (with a
/// warning naming both versions), the id counters are refused.
#[test]
fn a_map_of_another_layout_version_is_recreated_and_id_counters_of_one_are_refused() {
    let topology = Topology::create(1).expect("topology");
    let (_src, source) = services_file(&topology);
    let pin_dir = PinDir(format!("/sys/fs/bpf/{}", topology.node).into());
    let capacities = lb_userspace::datapath::loader::Capacities::default();
    let backends = layout::expected(names::BACKENDS_V4, capacities).unwrap().0;
    links::pin_foreign_map(
        &pin_dir.0.join(names::BACKENDS_V4),
        "hash",
        backends.key_size,
        backends.value_size,
        backends.max_entries,
        names::BACKENDS_V4,
    )
    .expect("pin a same-shaped map");
    record_foreign_version(&pin_dir.0, names::BACKENDS_V4, 99);
    let mut agent =
        LoggedAgent::spawn(&[], &agent_args(&topology, &pin_dir.0, &source), &topology.node).expect("spawn");
    agent.wait_ready(Duration::from_secs(30)).expect("the agent starts");
    let stderr = agent.stderr();
    assert!(stderr.contains("another layout") && stderr.contains("version 99"), "warns, with versions: {stderr}");
    let found = layout::pinned_layout(&pin_dir.0.join(names::BACKENDS_V4)).unwrap().expect("pinned");
    assert_eq!(found, backends, "recreated, and this build's version recorded");
    agent.terminate().expect("agent stops");
    drop(agent);

    record_foreign_version(&pin_dir.0, names::IDS, 99);
    let mut agent =
        LoggedAgent::spawn(&[], &agent_args(&topology, &pin_dir.0, &source), &topology.node).expect("spawn");
    let status = agent.wait_exit(Duration::from_secs(30)).expect("the agent exits");
    let stderr = agent.stderr();
    assert!(!status.success() && stderr.contains("LB_IDS"), "the id counters are refused: {stderr}");
}

/// The size flags size the pinned maps; a restart with another size
/// recreates the map (its entries are lost, never misread).
#[test]
fn size_flags_set_the_pinned_maps_capacity() {
    let topology = Topology::create(1).expect("topology");
    let (_src, source) = services_file(&topology);
    let pin_dir = PinDir(format!("/sys/fs/bpf/{}", topology.node).into());
    let capacity = |map: &str| layout::pinned_layout(&pin_dir.0.join(map)).unwrap().expect("pinned").max_entries;
    for (affinity, conntrack) in [("4096", "8192"), ("2048", "8192")] {
        let mut args = agent_args(&topology, &pin_dir.0, &source);
        args.extend(["--affinity-max", affinity, "--conntrack-max", conntrack].map(str::to_owned));
        let mut agent = LoggedAgent::spawn(&[], &args, &topology.node).unwrap();
        agent.wait_ready(Duration::from_secs(30)).expect("the agent starts");
        assert_eq!(capacity(names::AFFINITY_V4).to_string(), affinity);
        assert_eq!(capacity(names::CONNTRACK_V4).to_string(), conntrack);
        agent.terminate().expect("agent stops");
    }
}

#[test]
fn incompatible_derived_maps_and_conntrack_are_recreated_with_a_warning() {
    let cluster_topology = Topology::create(scenario::BACKENDS).expect("topology");
    let mut servers = Servers::new();
    for i in 1..=scenario::BACKENDS {
        let ip = lb_tests::topology::backend_ip(i);
        servers
            .http(
                &cluster_topology.backends[i - 1],
                SocketAddr::from((ip, scenario::HTTP_PORT)),
                &scenario::backend_name(i),
            )
            .unwrap();
    }
    let (_src, source) = services_file(&cluster_topology);
    let pin_dir = PinDir(format!("/sys/fs/bpf/{}", cluster_topology.node).into());
    links::pin_foreign_map(&pin_dir.0.join(names::SERVICES_V4), "hash", 12, 4, 1024, names::SERVICES_V4).unwrap();
    // Conntrack as the version before last-seen times pinned it (28-byte values).
    links::pin_foreign_map(&pin_dir.0.join(names::CONNTRACK_V4), "lru_hash", 16, 28, 1024, names::CONNTRACK_V4)
        .unwrap();
    let mut agent =
        LoggedAgent::spawn(&[], &agent_args(&cluster_topology, &pin_dir.0, &source), &cluster_topology.node).unwrap();
    agent.wait_ready(Duration::from_secs(30)).expect("the agent starts");
    let stderr = agent.stderr();
    assert!(stderr.contains("another layout") && stderr.contains(names::SERVICES_V4), "warns about services: {stderr}");
    assert!(stderr.contains("tracked flows are lost"), "warns that flows are lost: {stderr}");
    let capacities = lb_userspace::datapath::loader::Capacities::default();
    for map in [names::SERVICES_V4, names::CONNTRACK_V4] {
        let found = layout::pinned_layout(&pin_dir.0.join(map)).unwrap().expect("pinned");
        assert_eq!(found, layout::expected(map, capacities).unwrap().0, "{map} recreated with this build's layout");
    }
    let body = servers::http_get(&cluster_topology.client, SocketAddr::V4(WEB)).expect("traffic flows");
    assert!(body.starts_with("backend-"), "{body}");
}

#[test]
fn agent_started_with_ip_netns_exec_mounts_bpffs_and_serves() {
    let topology = Topology::create(scenario::BACKENDS).expect("topology");
    let mut servers = Servers::new();
    for i in 1..=scenario::BACKENDS {
        let ip = lb_tests::topology::backend_ip(i);
        servers
            .http(&topology.backends[i - 1], SocketAddr::from((ip, scenario::HTTP_PORT)), &scenario::backend_name(i))
            .unwrap();
    }
    let (_src, source) = services_file(&topology);
    // Inside `ip netns exec`, /sys/fs/bpf is a plain sysfs directory: the
    // agent mounts a bpffs there, private to that mount namespace.
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", topology.node));
    let host_pins = PinDir(pin_dir.clone());
    let args: Vec<String> = agent_args(&topology, &pin_dir, &source).split_off(2);
    let mut agent = LoggedAgent::spawn(&["ip", "netns", "exec", &topology.node], &args, &topology.node).unwrap();
    agent.wait_ready(Duration::from_secs(30)).expect("the agent starts under ip netns exec");
    assert!(agent.stderr().contains("mounted it"), "the agent mounted bpffs: {}", agent.stderr());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        seen.insert(servers::http_get(&topology.client, SocketAddr::V4(WEB)).expect("request through the ClusterIP"));
    }
    assert_eq!(seen.len(), scenario::BACKENDS, "every backend answered: {seen:?}");
    assert!(!host_pins.0.exists(), "nothing pinned in the host's bpffs");
    agent.terminate().expect("clean shutdown");
    drop(servers);
}
