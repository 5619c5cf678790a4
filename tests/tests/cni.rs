//! lb chained after the reference `bridge` + `host-local` plugins, run as
//! a container runtime runs a conflist (the bundled
//! `deploy/cni/10-pods-lb.conflist`), with lb-agent in the node namespace
//! selecting none of the pods' interfaces: lb-cni alone puts the datapath
//! on them. Needs root and Debian's containernetworking-plugins; run one
//! test at a time (`--test-threads=1`).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use lb_tests::{
    agent::{self, Agent},
    cni::{Namespaces, Pod, Runtime, host_veth, pod_gateway, pod_ip},
    links::wait_for,
    servers::{self, Servers},
    topology::run_in,
};
use lb_userspace::{
    cni::{pin_name::AttachmentKey, protocol::code},
    datapath::chained::{self, PodHook},
};
use serde_json::Value;

const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 88), 80);
const HTTP_PORT: u16 = 8080;
const SUBNET: &str = "10.88.0.0/24";
/// The agent attaches only to interfaces named like this: none exists, so
/// every attachment on a pod comes from lb-cni.
const AGENT_INTERFACES: &str = "uplink*";
const EMPTY: &str = "apiVersion: v1\nkind: List\nitems: []\n";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// One Service whose only endpoint is `ip`.
fn service_to(ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: chained, namespace: demo}}
  spec:
    clusterIP: {svc}
    clusterIPs: [{svc}]
    ports: [{{name: http, port: {port}, protocol: TCP}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: chained-1, namespace: demo, labels: {{kubernetes.io/service-name: chained}}}}
  addressType: IPv4
  ports: [{{name: http, port: {HTTP_PORT}, protocol: TCP}}]
  endpoints:
  - addresses: [{ip}]
    conditions: {{ready: true, serving: true, terminating: false}}
",
        svc = SERVICE.ip(),
        port = SERVICE.port(),
    )
}

/// A node namespace, two pod namespaces, the example conflist adapted to
/// them, and where the agent will pin. Field order is drop order.
struct Node {
    runtime: Runtime,
    source_dir: PathBuf,
    pin_dir: PathBuf,
    node: String,
    bridge: String,
    pods: [Pod; 2],
    namespaces: Namespaces,
}

impl Node {
    fn create() -> Self {
        let prefix = format!("lbc{}x{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let node = format!("{prefix}-node");
        let mut namespaces = Namespaces::default();
        namespaces.add(&node).expect("node namespace");
        for key in ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"] {
            run_in(&node, &["sysctl", "-qw", key]).expect("node sysctl");
        }
        let pods = ["a", "b"].map(|p| Pod {
            // Dots in container ids are legal (and refused by bpffs in pin names).
            container_id: format!("{prefix}.pod-{p}"),
            netns: format!("{prefix}-pod-{p}"),
            ifname: "eth0".into(),
        });
        for pod in &pods {
            namespaces.add(&pod.netns).expect("pod namespace");
        }
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{node}"));
        let bridge = format!("{prefix}b");
        let runtime = Runtime::example(&node, &bridge, SUBNET, &pin_dir).expect("conflist");
        let source_dir = std::env::temp_dir().join(format!("{node}-src"));
        std::fs::create_dir_all(&source_dir).expect("source dir");
        agent::write_atomically(&source_dir.join("services.yaml"), EMPTY).expect("services file");
        Self { runtime, source_dir, pin_dir, node, bridge, pods, namespaces }
    }

    fn source_file(&self) -> PathBuf {
        self.source_dir.join("services.yaml")
    }

    fn start_agent(&self) -> Agent {
        let args = ["--interfaces", AGENT_INTERFACES, "--metrics-bind-address", "", "--healthz-bind-address", ""];
        let mut agent = Agent::start(&self.node, &self.source_file(), &args).expect("start the agent");
        agent.wait_ready(Duration::from_secs(30)).expect("agent ready");
        agent
    }

    fn pin_name(&self, pod: &Pod) -> String {
        AttachmentKey::new(self.runtime.conflist["name"].as_str().unwrap(), &pod.container_id, &pod.ifname).pin_name()
    }

    fn link_path(&self, pod: &Pod, hook: PodHook) -> PathBuf {
        chained::cni_links_dir(&self.pin_dir, hook).join(self.pin_name(pod))
    }

    /// Program ids at tcx `hook` of `ifname` in the node namespace.
    fn programs(&self, ifname: &str, hook: PodHook) -> Vec<u32> {
        let ifname = ifname.to_owned();
        servers::in_netns(&self.node, move || chained::attached_programs(&ifname, hook)).expect("query tcx")
    }

    fn pinned_program(&self, hook: PodHook) -> u32 {
        chained::pinned_program_id(&self.pin_dir, hook).unwrap().expect("program pinned")
    }

    /// Writes a Service whose only endpoint is `ip` and waits until the
    /// agent has programmed it.
    fn serve(&self, agent: &mut Agent, ip: Ipv4Addr) {
        agent::write_atomically(&self.source_file(), &service_to(ip)).expect("write the Service");
        agent
            .wait_until(Duration::from_secs(10), |m| m.services.keys().any(|k| k.address == SERVICE.ip().octets()))
            .expect("programmed");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.source_dir);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Bodies of `n` requests from `pod` to the Service.
fn requests(pod: &Pod, n: usize) -> anyhow::Result<BTreeSet<String>> {
    (0..n).map(|_| servers::http_get(&pod.netns, SocketAddr::V4(SERVICE))).collect()
}

/// `lbctl links -o json` in the node namespace: (owner, hook, interface,
/// container id, runs the current program) per link.
fn lbctl_links(node: &Node) -> BTreeSet<(String, String, String, String, bool)> {
    let lbctl = agent::binary("lbctl").unwrap();
    let pin_dir = node.pin_dir.display().to_string();
    let args = ["--netns", &node.node, "--pin-dir", &pin_dir, "-o", "json", "links"];
    let out = lb_tests::topology::run(lbctl.to_str().unwrap(), &args).expect("lbctl links");
    let links: Vec<Value> = serde_json::from_str(&out).expect("JSON");
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    links
        .iter()
        .map(|l| {
            let (owner, hook, interface) = (text(&l["owner"]), text(&l["hook"]), text(&l["interface"]));
            (owner, hook, interface, text(&l["container_id"]), l["current"] == true)
        })
        .collect()
}

fn link_ids(path: &Path) -> chained::LinkIds {
    chained::link_ids(path).expect("open pinned link").unwrap_or_else(|| panic!("{} is not pinned", path.display()))
}

#[test]
fn add_waits_for_the_agent_then_chained_pods_are_served_through_restarts_until_del() {
    let node = Node::create();
    let [client, server] = &node.pods;
    let lb_cni = node.runtime.last_plugin();

    // No agent yet: STATUS says not available, ADD asks to be retried.
    let status = node.runtime.invoke_as("1.1.0", &lb_cni, "STATUS", None, None).expect_err("no agent: not ready");
    assert_eq!(status.code(), Some(u64::from(code::NOT_AVAILABLE)), "{status}");
    let early = node.runtime.add(client).expect_err("ADD before the agent published its program");
    assert_eq!((early.plugin.as_str(), early.code()), ("lb-cni", Some(u64::from(code::TRY_AGAIN_LATER))), "{early}");
    let msg = early.error.as_ref().map(Value::to_string).unwrap_or_default();
    assert!(msg.contains("lb-agent") && msg.contains("progs/lb_tc"), "says what is missing: {msg}");
    // The runtime deletes after a failed ADD (no cached result), then retries.
    node.runtime.del(client, None).expect("DEL after a failed ADD");

    let mut agent = node.start_agent();
    node.runtime.invoke_as("1.1.0", &lb_cni, "STATUS", None, None).expect("STATUS once the agent runs");
    let results: Vec<Value> =
        node.pods.iter().map(|pod| node.runtime.add(pod).expect("ADD through the chain")).collect();
    let veths: Vec<String> = results.iter().map(|r| host_veth(r, &node.bridge).expect("host veth")).collect();
    let server_ip = pod_ip(&results[1]).expect("server pod's address");
    assert!(
        results[0]["interfaces"].as_array().is_some_and(|i| i.len() == 3),
        "lb-cni passes bridge's result on: {}",
        results[0]
    );

    let mut pod_servers = Servers::new();
    pod_servers.http(&server.netns, SocketAddr::from((server_ip, HTTP_PORT)), "server-pod").expect("server");
    node.serve(&mut agent, server_ip);

    // The client's request is DNATed on its veth, the reply reverse-NATed
    // on the server's: both only through lb-cni's links.
    assert_eq!(requests(client, 10).expect("requests to the ClusterIP"), BTreeSet::from(["server-pod".to_owned()]));
    let programs = PodHook::ALL.map(|hook| node.pinned_program(hook));
    let links_of = |pod: &Pod| PodHook::ALL.map(|hook| link_ids(&node.link_path(pod, hook)));
    let before: Vec<_> = node.pods.iter().map(links_of).collect();
    for (veth, links) in veths.iter().zip(&before) {
        for ((hook, ids), program) in PodHook::ALL.into_iter().zip(links).zip(programs) {
            assert_eq!(ids.program_id, program, "the {hook:?} link runs the agent's program");
            assert_eq!(node.programs(veth, hook), [program], "{veth} {hook:?}: only lb-cni's link");
        }
    }
    for (pod, result) in node.pods.iter().zip(&results) {
        node.runtime.check(pod, result).expect("CHECK after ADD");
    }
    let expected: BTreeSet<_> = node
        .pods
        .iter()
        .zip(&veths)
        .flat_map(|(pod, veth)| {
            ["tc", "tc-egress"].map(|hook| ("cni".into(), hook.into(), veth.clone(), pod.container_id.clone(), true))
        })
        .collect();
    assert_eq!(lbctl_links(&node), expected, "lbctl links shows each pod's links on its veth");

    // The datapath stays while the agent is down; the next agent moves
    // the links to its program in place.
    agent
        .restart_after(|| {
            assert_eq!(
                requests(client, 3)?,
                BTreeSet::from(["server-pod".to_owned()]),
                "served while the agent is down"
            );
            Ok(())
        })
        .expect("restart the agent");
    agent.wait_ready(Duration::from_secs(30)).expect("agent ready again");
    let new_programs = PodHook::ALL.map(|hook| node.pinned_program(hook));
    for (old, new) in programs.iter().zip(&new_programs) {
        assert_ne!(old, new, "the restarted agent pinned its own programs");
    }
    for (pod, old) in node.pods.iter().zip(&before) {
        let now = links_of(pod);
        for ((now, old), program) in now.iter().zip(old).zip(new_programs) {
            assert_eq!((now.link_id, now.program_id), (old.link_id, program), "same link, new program");
        }
    }
    for (pod, result) in node.pods.iter().zip(&results) {
        node.runtime.check(pod, result).expect("CHECK after the restart");
    }
    assert_eq!(lbctl_links(&node), expected, "after the restart, on the new program");
    assert_eq!(requests(client, 10).expect("requests after the restart"), BTreeSet::from(["server-pod".to_owned()]));

    // DEL: lb-cni's step alone detaches, then the whole chain; again is fine.
    node.runtime.invoke(&lb_cni, "DEL", Some(client), Some(&results[0])).expect("lb-cni DEL");
    for hook in PodHook::ALL {
        assert!(!node.link_path(client, hook).exists(), "the {hook:?} pin is removed");
        // The kernel frees an unpinned link from a workqueue: a moment later.
        assert!(
            wait_for(Duration::from_secs(1), || node.programs(&veths[0], hook).is_empty()).is_some(),
            "nothing left at {hook:?} of the client's veth"
        );
    }
    let missing = node.runtime.check(client, &results[0]).expect_err("CHECK without the attachment fails");
    assert_eq!((missing.plugin.as_str(), missing.code()), ("lb-cni", Some(u64::from(code::NOT_ATTACHED))), "{missing}");
    node.runtime.del(client, Some(&results[0])).expect("DEL through the chain");
    node.runtime.del(client, Some(&results[0])).expect("DEL again: idempotent");

    // --cleanup removes lb-cni's links too.
    let binary = agent::binary("lb-agent").unwrap();
    let pin_dir = node.pin_dir.display().to_string();
    lb_tests::topology::run(binary.to_str().unwrap(), &["--netns", &node.node, "--cleanup", "--pin-dir", &pin_dir])
        .expect("cleanup");
    for hook in PodHook::ALL {
        assert!(!node.link_path(server, hook).exists(), "--cleanup removed the server's {hook:?} link");
        assert!(
            wait_for(Duration::from_secs(1), || node.programs(&veths[1], hook).is_empty()).is_some(),
            "the server's veth is detached at {hook:?}"
        );
    }
    drop(pod_servers);
}

#[test]
fn a_link_whose_pod_is_gone_is_dropped_by_the_next_agent_and_gc_removes_stale_links() {
    let mut node = Node::create();
    let mut agent = node.start_agent();
    let results: Vec<Value> = node.pods.iter().map(|pod| node.runtime.add(pod).expect("ADD")).collect();
    let (gone, kept) = (node.pods[0].clone(), node.pods[1].clone());
    // The pod's namespace disappears without a DEL (a node crash, say):
    // its veth goes with it, and its link with no interface.
    let gone_veth = host_veth(&results[0], &node.bridge).expect("host veth");
    node.namespaces.delete(&gone.netns).expect("delete the pod's namespace");
    agent
        .restart_after(|| {
            let gone_veth_removed =
                wait_for(Duration::from_secs(5), || !lb_tests::links::interface_exists(&node.node, &gone_veth));
            assert!(gone_veth_removed.is_some(), "{gone_veth} still there");
            Ok(())
        })
        .expect("restart");
    agent.wait_ready(Duration::from_secs(30)).expect("agent ready again");
    for hook in PodHook::ALL {
        assert!(
            !node.link_path(&gone, hook).exists(),
            "the agent removed the {hook:?} pin of a link without interface"
        );
        assert!(node.link_path(&kept, hook).exists(), "and kept the live one");
    }

    // GC without the list of valid attachments removes nothing.
    let bare = node.runtime.invoke_as("1.1.0", &node.runtime.last_plugin(), "GC", None, None);
    let bare = bare.expect_err("GC without valid attachments is refused");
    assert_eq!(bare.code(), Some(u64::from(code::INVALID_CONFIG)), "{bare}");
    assert!(node.link_path(&kept, PodHook::Egress).exists(), "nothing removed by a refused GC");

    // GC with only `gone` listed as valid removes `kept`'s link.
    let mut lb_cni = node.runtime.last_plugin();
    lb_cni["cni.dev/valid-attachments"] =
        serde_json::json!([{ "containerID": gone.container_id, "ifname": gone.ifname }]);
    node.runtime.invoke_as("1.1.0", &lb_cni, "GC", None, None).expect("GC");
    for hook in PodHook::ALL {
        assert!(!node.link_path(&kept, hook).exists(), "GC removed the {hook:?} link of an attachment not listed");
    }
    drop(results);
}

#[test]
fn a_chained_pod_reaches_a_service_whose_endpoint_is_host_network_on_its_node() {
    let node = Node::create();
    let client = &node.pods[0];
    let mut agent = node.start_agent();
    let result = node.runtime.add(client).expect("ADD");
    // A host-network endpoint: a server in the node's namespace, on the
    // bridge's address (the API server behind `kubernetes`, say).
    let gateway = pod_gateway(&result).expect("the bridge's address");
    let mut host = Servers::new();
    host.http(&node.node, SocketAddr::from((gateway, HTTP_PORT)), "host-network").expect("server on the node");
    node.serve(&mut agent, gateway);

    // The reply leaves the node's stack straight onto the pod's veth:
    // only the egress link translates it back to the ClusterIP.
    assert_eq!(requests(client, 5).expect("requests to the ClusterIP"), BTreeSet::from(["host-network".to_owned()]));

    // Without it, the reply's source is the endpoint's own address and the
    // client's connection never completes.
    assert!(chained::remove(&node.pin_dir, PodHook::Egress, &node.pin_name(client)).expect("unpin"));
    let veth = host_veth(&result, &node.bridge).expect("host veth");
    assert!(wait_for(Duration::from_secs(1), || node.programs(&veth, PodHook::Egress).is_empty()).is_some());
    assert!(requests(client, 1).is_err(), "answered without the egress link");
    drop(host);
}
