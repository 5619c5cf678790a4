//! ClientIP session affinity. Packet level (BPF_PROG_TEST_RUN, the maps
//! programmed by the agent's own path): a client's new flows follow its
//! recent backend; an entry is ignored once older than the timeout, or
//! when it names a backend this frontend no longer chooses. End to end
//! (the real agent, real servers): one client's connections stay on one
//! backend, new entries after the timeout, and switching affinity off
//! spreads them again. Needs root; run one test at a time.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_common::{
    affinity::{AffinityKeyV4, AffinityValueV4},
    flow, proto,
    service::{FLAG_SESSION_AFFINITY, ServiceKeyV4},
    stats::Counter,
};
use lb_tests::{
    datapath::{Counters, Datapath, monotonic_coarse_s},
    packets::{self, Endpoint, ep},
    scenario::{self, DemoCluster, WEB},
    servers,
};
use lb_userspace::{datapath::loader::TC_PROGRAM, datapath::maps, model::NodeContext, tables::DesiredMaps};

const NODE_IP: [u8; 4] = [192, 168, 0, 10];
const STICKY_VIP: Endpoint = ep([10, 96, 0, 80], 80);
const STICKY_DNS: Endpoint = ep([10, 96, 0, 80], 53);
const STICKY_NODE_PORT: Endpoint = ep(NODE_IP, 30080);
const CLIENT: [u8; 4] = [10, 0, 1, 2];
/// Outside the cluster's Pod CIDR.
const OUTSIDE_CLIENT: [u8; 4] = [203, 0, 113, 9];
const TIMEOUT_S: u32 = 60;

fn backend(i: u8) -> Endpoint {
    ep([10, 244, i, 8], 8080)
}

fn dns_backend(i: u8) -> Endpoint {
    ep([10, 244, i, 8], 5353)
}

/// One endpoint of `sticky`: its index, node and conditions
/// (`scenario::READY`, `scenario::TERMINATING`).
type Member = (u8, &'static str, [bool; 3]);

fn ready(indexes: &[u8]) -> Vec<Member> {
    indexes.iter().map(|&i| (i, "node-a", scenario::READY)).collect()
}

fn endpoints(members: &[Member]) -> String {
    members
        .iter()
        .map(|(i, node, [r, s, t])| {
            format!(
                "  - {{addresses: [{}], nodeName: {node}, conditions: {{ready: {r}, serving: {s}, terminating: {t}}}}}\n",
                backend(*i).ip
            )
        })
        .collect()
}

/// `services_with`, `other` over every backend, so each keeps its id
/// whatever `sticky` does.
fn services(members: &[Member], timeout_s: u32, policy: &str) -> String {
    services_with(members, timeout_s, policy, &[1, 2, 3, 4])
}

/// `sticky`: a NodePort Service with ClientIP affinity (TCP 80, UDP 53)
/// over `members`, with `policy` as its external traffic policy; and
/// `other`, a ClusterIP over backends `other`.
fn services_with(members: &[Member], timeout_s: u32, policy: &str, other: &[u8]) -> String {
    let other = endpoints(&ready(other));
    format!(
        r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: sticky, namespace: default}}
  spec:
    type: NodePort
    clusterIP: 10.96.0.80
    externalTrafficPolicy: {policy}
    sessionAffinity: ClientIP
    sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {timeout_s}}}}}
    ports:
    - {{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}}
    - {{name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: sticky-1, namespace: default, labels: {{kubernetes.io/service-name: sticky}}}}
  addressType: IPv4
  endpoints:
{members}  ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
- apiVersion: v1
  kind: Service
  metadata: {{name: other, namespace: default}}
  spec:
    clusterIP: 10.96.0.81
    ports: [{{port: 80, protocol: TCP, targetPort: 8080}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: other-1, namespace: default, labels: {{kubernetes.io/service-name: other}}}}
  addressType: IPv4
  endpoints:
{other}  ports: [{{name: "", port: 8080, protocol: TCP}}]
"#,
        members = endpoints(members),
    )
}

fn node() -> NodeContext {
    NodeContext {
        node_name: Some("node-a".into()),
        node_addresses: vec![Ipv4Addr::from(NODE_IP).into()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..NodeContext::default()
    }
}

fn datapath(members: &[Member]) -> Datapath {
    let mut dp = Datapath::load(node()).expect("load datapath (root needed)");
    dp.apply(&services(members, TIMEOUT_S, "Cluster")).expect("program services");
    dp
}

fn frontend_id(dp: &Datapath, key: ServiceKeyV4) -> u32 {
    dp.maps().services.get(&key).unwrap_or_else(|| panic!("no frontend {key:?}")).frontend_id
}

fn sticky_id(dp: &Datapath) -> u32 {
    frontend_id(dp, ServiceKeyV4::frontend(STICKY_VIP.ip.octets(), STICKY_VIP.port, proto::TCP))
}

fn backend_id(dp: &Datapath, backend: Endpoint) -> u32 {
    let found = dp.backends().iter().find(|(_, b)| b.address == backend.ip.octets() && b.port == backend.port);
    *found.unwrap_or_else(|| panic!("{backend:?} not in the backend table")).0
}

/// Runs a new flow's first packet (a TCP SYN or a UDP datagram) and
/// returns the backend among `candidates` it was sent to and the counters
/// it moved.
fn landing(dp: &mut Datapath, packet: &[u8], candidates: &[Endpoint]) -> (Endpoint, Counters) {
    let (out, moved) = dp.run_counted(TC_PROGRAM, packet).expect("test run");
    // Destination address and port: the same offsets for TCP and UDP.
    let destination = |b: &Endpoint| [b.ip.octets().as_slice(), &b.port.to_be_bytes()].concat();
    let got = [&out.packet[30..34], &out.packet[36..38]].concat();
    let to = candidates.iter().find(|b| destination(b) == got);
    (*to.unwrap_or_else(|| panic!("not sent to one of {candidates:?} ({moved:?})")), moved)
}

fn syn_landing(dp: &mut Datapath, client: Endpoint, candidates: &[Endpoint]) -> (Endpoint, Counters) {
    landing(dp, &packets::tcp_syn(client, STICKY_VIP), candidates)
}

fn counted(counters: &[Counter]) -> Counters {
    counters.iter().map(|&c| (c, 1)).collect()
}

fn all_backends() -> Vec<Endpoint> {
    (1..=4).map(backend).collect()
}

#[test]
fn a_clients_new_flows_follow_its_first_backend_over_tcp_and_udp() {
    let mut dp = datapath(&ready(&[1, 2, 3]));
    let (first, moved) = syn_landing(&mut dp, ep(CLIENT, 40000), &all_backends());
    assert_eq!(moved, counted(&[Counter::NewFlow, Counter::AffinityMiss]));
    for port in 40001..40020 {
        let (to, moved) = syn_landing(&mut dp, ep(CLIENT, port), &all_backends());
        assert_eq!((to, moved), (first, counted(&[Counter::NewFlow, Counter::AffinityHit])), "from port {port}");
    }
    let key = AffinityKeyV4::new(sticky_id(&dp), CLIENT);
    assert_eq!(dp.affinity().unwrap()[&key].backend_id, backend_id(&dp, first));

    let dns: Vec<Endpoint> = (1..=4).map(dns_backend).collect();
    let datagram = |port| packets::udp(ep(CLIENT, port), STICKY_DNS, b"q");
    let (first, moved) = landing(&mut dp, &datagram(5000), &dns);
    assert_eq!(moved, counted(&[Counter::NewFlow, Counter::AffinityMiss]));
    for port in 5001..5010 {
        let (to, moved) = landing(&mut dp, &datagram(port), &dns);
        assert_eq!((to, moved), (first, counted(&[Counter::NewFlow, Counter::AffinityHit])), "from port {port}");
    }
}

/// A client whose address hashes to another slot once backend 4 joins
/// keeps the backend it had: the entry, not the hash, decides.
#[test]
fn a_client_keeps_its_backend_when_another_joins() {
    let mut dp = datapath(&ready(&[1, 2, 3]));
    let key = ServiceKeyV4::frontend(STICKY_VIP.ip.octets(), STICKY_VIP.port, proto::TCP);
    let slot_pick = |maps: &DesiredMaps, client: [u8; 4]| {
        let count = u32::from(maps.services[&key].count);
        maps.services[&key.slot((flow::client(client) % count) as u16 + 1)].backend_id
    };
    let before = dp.maps().clone();
    dp.apply(&services(&ready(&[1, 2, 3, 4]), TIMEOUT_S, "Cluster")).unwrap();
    let client = (2..=254)
        .map(|last| [10, 0, 1, last])
        .find(|&c| slot_pick(&before, c) != slot_pick(dp.maps(), c))
        .expect("a client the join moves");
    dp.apply(&services(&ready(&[1, 2, 3]), TIMEOUT_S, "Cluster")).unwrap();
    let (first, _) = syn_landing(&mut dp, ep(client, 40000), &all_backends());

    dp.apply(&services(&ready(&[1, 2, 3, 4]), TIMEOUT_S, "Cluster")).unwrap();
    let (to, moved) = syn_landing(&mut dp, ep(client, 40001), &all_backends());
    assert_eq!((to, moved), (first, counted(&[Counter::NewFlow, Counter::AffinityHit])));
}

/// Writes the client's entry: `backend`, last used `age_s` ago.
fn set_entry(dp: &mut Datapath, backend: Endpoint, age_s: u32) {
    let key = AffinityKeyV4::new(sticky_id(dp), CLIENT);
    let value = AffinityValueV4 { backend_id: backend_id(dp, backend), last_used_s: monotonic_coarse_s() - age_s };
    dp.insert_affinity(key, value).unwrap();
}

#[test]
fn an_entry_older_than_the_timeout_is_not_followed_and_a_new_timeout_applies_at_once() {
    let mut dp = datapath(&ready(&[1, 2, 3]));
    let (pick, _) = syn_landing(&mut dp, ep(CLIENT, 40000), &all_backends());
    let elsewhere = (1..=3).map(backend).find(|b| *b != pick).unwrap();

    set_entry(&mut dp, elsewhere, 30);
    let (to, moved) = syn_landing(&mut dp, ep(CLIENT, 40001), &all_backends());
    assert_eq!((to, moved), (elsewhere, counted(&[Counter::NewFlow, Counter::AffinityHit])), "30 s < 60 s");

    set_entry(&mut dp, elsewhere, TIMEOUT_S + 1);
    let (to, moved) = syn_landing(&mut dp, ep(CLIENT, 40002), &all_backends());
    assert_eq!(moved, counted(&[Counter::NewFlow, Counter::AffinityStale]), "61 s > 60 s");
    assert_eq!(to, flow_hash_pick(&dp, ep(CLIENT, 40002)), "balanced by the flow's own hash, as a new client is not");
    let entry = dp.affinity().unwrap()[&AffinityKeyV4::new(sticky_id(&dp), CLIENT)];
    assert_eq!(entry.backend_id, backend_id(&dp, to), "the new choice is recorded");
    assert!(monotonic_coarse_s() - entry.last_used_s <= 1, "and stamped now: {entry:?}");

    dp.apply(&services(&ready(&[1, 2, 3]), 10, "Cluster")).unwrap();
    set_entry(&mut dp, elsewhere, 30);
    let (to, moved) = syn_landing(&mut dp, ep(CLIENT, 40003), &all_backends());
    assert_eq!(moved, counted(&[Counter::NewFlow, Counter::AffinityStale]), "30 s > 10 s");
    assert_eq!(to, flow_hash_pick(&dp, ep(CLIENT, 40003)));
}

/// Where a flow from `client` to the sticky ClusterIP lands when balanced
/// by its 5-tuple hash (the slot the datapath's hash picks).
fn flow_hash_pick(dp: &Datapath, client: Endpoint) -> Endpoint {
    let hash = lb_common::flow::hash(client.ip.octets(), STICKY_VIP.ip.octets(), client.port, STICKY_VIP.port, 6);
    let held = dp.maps();
    let frontend = ServiceKeyV4::frontend(STICKY_VIP.ip.octets(), STICKY_VIP.port, 6);
    let count = u32::from(held.services[&frontend].count);
    let slot = (hash % count) as u16 + 1;
    let id = held.services[&frontend.slot(slot)].backend_id;
    let b = held.backends[&id];
    ep(b.address, b.port)
}

#[test]
fn an_entry_naming_a_removed_backend_is_replaced() {
    let mut dp = datapath(&ready(&[1, 2, 3]));
    let (first, _) = syn_landing(&mut dp, ep(CLIENT, 40000), &all_backends());
    let first_id = backend_id(&dp, first);
    // Gone from both Services: the backend entry itself goes.
    let rest: Vec<u8> = (1..=4).filter(|&i| backend(i) != first).collect();
    dp.apply(&services_with(&ready(&rest[..2]), TIMEOUT_S, "Cluster", &rest)).unwrap();
    assert!(!dp.backends().contains_key(&first_id), "the backend is gone");

    let (to, moved) = syn_landing(&mut dp, ep(CLIENT, 40001), &all_backends());
    assert_ne!(to, first);
    assert_eq!(moved, counted(&[Counter::NewFlow, Counter::AffinityStale]));
    let entry = dp.affinity().unwrap()[&AffinityKeyV4::new(sticky_id(&dp), CLIENT)];
    assert_eq!(entry.backend_id, backend_id(&dp, to), "replaced by the new choice");
}

/// The backend still exists (`other` uses it), but `sticky` no longer
/// chooses it for new flows: removed from this Service, or terminating
/// while ready endpoints remain.
#[test]
fn an_entry_naming_a_backend_this_frontend_no_longer_chooses_is_ignored() {
    for terminating in [false, true] {
        let mut dp = datapath(&ready(&[1, 2, 3]));
        let (first, _) = syn_landing(&mut dp, ep(CLIENT, 40000), &all_backends());
        let mut members: Vec<Member> = ready(&[1, 2, 3]);
        if terminating {
            members.iter_mut().filter(|(i, ..)| backend(*i) == first).for_each(|m| m.2 = scenario::TERMINATING);
        } else {
            members.retain(|(i, ..)| backend(*i) != first);
        }
        dp.apply(&services(&members, TIMEOUT_S, "Cluster")).unwrap();
        assert!(dp.backends().contains_key(&backend_id(&dp, first)), "the backend still exists");

        let (to, moved) = syn_landing(&mut dp, ep(CLIENT, 40001), &all_backends());
        assert_ne!(to, first, "terminating: {terminating}");
        assert_eq!(moved, counted(&[Counter::NewFlow, Counter::AffinityStale]), "terminating: {terminating}");
    }
}

/// Under `externalTrafficPolicy: Local` the NodePort chooses among this
/// node's endpoints, its in-cluster entry (Pods) among all. An entry
/// naming a backend only the in-cluster entry may use is not followed by
/// the external frontend.
#[test]
fn a_local_policy_frontend_ignores_an_entry_naming_a_backend_on_another_node() {
    let members: Vec<Member> = vec![(1, "node-a", scenario::READY), (2, "node-b", scenario::READY)];
    let mut dp = Datapath::load(node()).expect("load datapath (root needed)");
    dp.apply(&services(&members, TIMEOUT_S, "Local")).expect("program services");
    let external = ServiceKeyV4::frontend(NODE_IP, STICKY_NODE_PORT.port, proto::TCP);
    let (external_id, pods_id) = (frontend_id(&dp, external), frontend_id(&dp, external.in_cluster()));
    assert_ne!(external_id, pods_id);
    let remote = backend(2);
    let value = AffinityValueV4 { backend_id: backend_id(&dp, remote), last_used_s: monotonic_coarse_s() };
    dp.insert_affinity(AffinityKeyV4::new(external_id, OUTSIDE_CLIENT), value).unwrap();

    let syn = packets::tcp_syn(ep(OUTSIDE_CLIENT, 40000), STICKY_NODE_PORT);
    let (to, moved) = landing(&mut dp, &syn, &all_backends());
    assert_eq!((to, moved), (backend(1), counted(&[Counter::NewFlow, Counter::AffinityStale])));
}

// End to end.

/// `web` of the demo with ClientIP affinity (`timeout_s`), or without.
fn web(affinity: Option<u32>) -> String {
    let text = scenario::web_services_ready(&[1, 2, 3]);
    match affinity {
        Some(timeout_s) => text.replace(
            "    clusterIP: 10.96.0.10\n",
            &format!(
                "    clusterIP: 10.96.0.10\n    sessionAffinity: ClientIP\n    sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {timeout_s}}}}}\n"
            ),
        ),
        None => text,
    }
}

fn web_key() -> ServiceKeyV4 {
    ServiceKeyV4::frontend(WEB.ip().octets(), WEB.port(), proto::TCP)
}

/// Whether `web` is programmed with affinity `on` and all three backends.
fn web_affinity(on: bool) -> impl Fn(&DesiredMaps) -> bool {
    move |m| m.services.get(&web_key()).is_some_and(|f| f.count == 3 && (f.flags & FLAG_SESSION_AFFINITY != 0) == on)
}

fn requests(cluster: &DemoCluster, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let body = servers::http_get(&cluster.topology.client, SocketAddr::V4(WEB)).expect("request through web");
        *seen.entry(body).or_insert(0) += 1;
    }
    seen
}

fn web_entries(cluster: &DemoCluster) -> Vec<(AffinityKeyV4, AffinityValueV4)> {
    let id = cluster.agent.maps().unwrap().services[&web_key()].frontend_id;
    let mut entries = maps::affinity_entries(&cluster.agent.pin_dir).expect("read affinity");
    entries.retain(|(k, _)| k.frontend_id == id);
    entries
}

fn counter(cluster: &DemoCluster, counter: Counter) -> u64 {
    let counters = maps::counters(&cluster.agent.pin_dir).expect("read counters");
    counters.into_iter().find(|(c, _)| *c == counter).map_or(0, |(_, n)| n)
}

#[test]
fn one_clients_connections_stay_on_one_backend_until_affinity_is_switched_off() {
    let mut cluster = DemoCluster::start_with(3, &web(Some(10800)), web_affinity(true)).expect("start cluster");
    let seen = requests(&cluster, 100);
    assert_eq!(seen.len(), 1, "100 connections from one client, one backend: {seen:?}");
    let entries = web_entries(&cluster);
    assert_eq!(entries.len(), 1, "one entry, for the one client: {entries:?}");
    assert_eq!(entries[0].0.client, scenario_client());

    cluster.update(&web(None), web_affinity(false)).expect("switch affinity off");
    assert_eq!(web_entries(&cluster), [], "switching off deletes the frontend's entries");
    let seen = requests(&cluster, 100);
    assert_eq!(seen.len(), scenario::BACKENDS, "without affinity the client's connections spread: {seen:?}");
}

fn scenario_client() -> [u8; 4] {
    lb_tests::topology::CLIENT_IP.octets()
}

/// With `timeoutSeconds: 2`, a connection after three idle seconds is
/// balanced afresh (a stale entry, counted) and its entry stamped anew.
#[test]
fn after_the_timeout_a_clients_next_connection_is_balanced_afresh() {
    let cluster = DemoCluster::start_with(3, &web(Some(2)), web_affinity(true)).expect("start cluster");
    requests(&cluster, 5);
    let [(_, before)] = web_entries(&cluster)[..] else { panic!("one entry expected") };
    let stale_before = counter(&cluster, Counter::AffinityStale);

    std::thread::sleep(Duration::from_secs(3));
    requests(&cluster, 1);
    let [(_, after)] = web_entries(&cluster)[..] else { panic!("one entry expected") };
    assert!(after.last_used_s >= before.last_used_s + 3, "entry stamped anew: {before:?} then {after:?}");
    assert_eq!(counter(&cluster, Counter::AffinityStale), stale_before + 1, "the expired entry was not followed");
}

/// The pinned maps keep every client's affinity across an agent restart,
/// and a restarted agent rewrites no member; `lbctl affinity` shows the
/// entry.
#[test]
fn a_clients_affinity_survives_an_agent_restart() {
    let mut cluster = DemoCluster::start_with(3, &web(Some(10800)), web_affinity(true)).expect("start cluster");
    let before = requests(&cluster, 10);
    let [(key, entry)] = web_entries(&cluster)[..] else { panic!("one entry expected") };
    let members = cluster.agent.maps().unwrap().affinity_members;

    cluster.agent.restart().expect("restart the agent");
    cluster.agent.wait_ready(Duration::from_secs(30)).expect("agent ready again");
    let hits = counter(&cluster, Counter::AffinityHit);
    let after = requests(&cluster, 10);
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>(), "the same one backend");
    assert_eq!(counter(&cluster, Counter::AffinityHit), hits + 10, "every connection followed the kept entry");
    let [(_, kept)] = web_entries(&cluster)[..] else { panic!("one entry expected") };
    assert_eq!(kept.backend_id, entry.backend_id);
    assert_eq!(cluster.agent.maps().unwrap().affinity_members, members);

    let json = lb_tests::observe::lbctl(&cluster.agent.pin_dir, &["affinity", "-o", "json"]).expect("lbctl affinity");
    let shown: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(shown[0]["client"], Ipv4Addr::from(key.client).to_string(), "{json}");
    assert_eq!(shown[0]["backend_id"], entry.backend_id, "{json}");
    assert_eq!(shown[0]["fresh"], true, "{json}");
}
