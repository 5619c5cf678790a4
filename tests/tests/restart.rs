//! Agent restarts: the maps are pinned, so a new agent re-opens them,
//! writes only the difference, and tracked connections keep flowing.

use std::{net::SocketAddr, time::Duration};

use lb_common::{conntrack::DIR_ORIGINAL, stats::Counter};
use lb_tests::{
    agent,
    datapath::{Counters, Datapath},
    packets::{self, Endpoint, ep},
    pin_dir::PinDir,
    scenario::{self, DemoCluster, WEB},
    servers,
};
use lb_userspace::{
    datapath::{
        loader::{self, Capacities, TC_PROGRAM},
        maps::{self, ServiceMaps},
    },
    model::NodeContext,
    source::objects,
    sync::Syncer,
    tables::DesiredMaps,
};

/// Loads the datapath with maps pinned in `pin_dir` and syncs the demo
/// Services; returns how many writes the sync made.
fn load_and_sync(pin_dir: &std::path::Path) -> usize {
    let mut ebpf = loader::load(Some(pin_dir), Capacities::default()).expect("load");
    let maps = ServiceMaps::from_ebpf(&mut ebpf).expect("maps");
    let mut syncer = Syncer::resume(maps, NodeContext::default()).expect("read pinned maps");
    let objects = objects::parse(scenario::DEMO_SERVICES).unwrap();
    syncer.sync(&objects.services, &objects.slices).expect("sync").writes
}

#[test]
fn restart_with_pinned_maps_writes_nothing_when_nothing_changed() {
    let pin_dir = PinDir::unique("restart");
    let first = load_and_sync(&pin_dir.0);
    assert!(first > 0, "the first start programs the maps");
    assert_eq!(load_and_sync(&pin_dir.0), 0, "a restart finds everything in place");
    let held = ServiceMaps::from_pins(&pin_dir.0).unwrap().read_all().unwrap();
    assert_ne!(held, DesiredMaps::default());
}

#[test]
fn established_connection_survives_an_agent_restart() {
    let mut cluster = DemoCluster::start().expect("start demo cluster");
    let mut conn =
        servers::connect(&cluster.topology.client, SocketAddr::V4(WEB)).unwrap().expect("connect to the ClusterIP");
    let pinned = servers::http_request(&mut conn, false).unwrap();

    cluster.agent.restart().expect("restart the agent");
    // Ready means re-attached and synced against the pinned maps.
    cluster.agent.wait_ready(Duration::from_secs(30)).expect("agent ready again");
    assert_eq!(
        servers::http_request(&mut conn, false).unwrap(),
        pinned,
        "same connection, same backend after the restart"
    );
}

const VIP: Endpoint = ep([10, 96, 0, 10], 80);
const A: Endpoint = ep([10, 244, 1, 2], 8080);
const B: Endpoint = ep([10, 244, 2, 2], 8080);
/// Sorts last, so the first sync gives it the highest backend id.
const H: Endpoint = ep([10, 244, 3, 2], 8080);
/// Joins only after the restart. Sorts first, so it shifts every other
/// backend's slot: balancing afresh would move many flows.
const N: Endpoint = ep([10, 244, 0, 2], 8080);

/// The Service `web` (VIP → port 8080) with these endpoints.
fn web_with(backends: &[Endpoint]) -> String {
    let endpoints: String =
        backends.iter().map(|b| format!("  - {{addresses: [{}], conditions: {{ready: true}}}}\n", b.ip)).collect();
    format!(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {{name: web, namespace: default}}\n  spec:\n    clusterIP: 10.96.0.10\n    ports: [{{port: 80, protocol: TCP, targetPort: 8080}}]\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n  addressType: IPv4\n  endpoints:\n{endpoints}  ports: [{{name: \"\", port: 8080, protocol: TCP}}]\n"
    )
}

/// Which of `backends` a packet from `client` was DNATed to, if any.
fn dnat_target(packet: &[u8], client: Endpoint, syn: bool, payload: &[u8], backends: &[Endpoint]) -> Option<Endpoint> {
    backends.iter().copied().find(|b| packet == packets::tcp(client, *b, syn, payload))
}

/// Opens flows (SYNs) from successive client ports until one lands on
/// `backend` and, when given, would land elsewhere if balanced afresh
/// over `rehashed` (checked on `probe`); returns that client.
fn flow_to(
    dp: &mut Datapath,
    backend: Endpoint,
    backends: &[Endpoint],
    avoid_on: Option<(&mut Datapath, &[Endpoint])>,
) -> Endpoint {
    let mut avoid_on = avoid_on;
    for port in 41000..42000u16 {
        let client = ep([10, 0, 1, 2], port);
        let syn = packets::tcp_syn(client, VIP);
        if let Some((probe, rehashed)) = avoid_on.as_mut() {
            let fresh = probe.run(TC_PROGRAM, &syn).expect("probe run").packet;
            if dnat_target(&fresh, client, true, &[], rehashed) == Some(backend) {
                continue;
            }
        }
        let out = dp.run(TC_PROGRAM, &syn).expect("test run").packet;
        if dnat_target(&out, client, true, &[], backends) == Some(backend) {
            return client;
        }
    }
    panic!("no flow landed on {backend:?}");
}

/// The id the agent gave `backend`.
fn backend_id(dp: &Datapath, backend: Endpoint) -> u32 {
    dp.backends()
        .iter()
        .find(|(_, b)| b.address == backend.ip.octets() && b.port == backend.port)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("{backend:?} not in the backend table"))
}

/// A restart with a changed backend set (one endpoint gone, one new) keeps
/// an established flow on its backend when that backend stays, even where
/// balancing afresh over the new set would pick another one: conntrack
/// survives the restart and still names the same backend.
#[test]
fn restart_with_a_changed_backend_set_keeps_flows_on_backends_that_stay() {
    let pins = PinDir::unique("keep");
    let mut agent = Datapath::load_pinned(NodeContext::default(), &pins.0).expect("load with pinned maps");
    agent.apply(&web_with(&[A, B, H])).unwrap();
    let mut probe = Datapath::load(NodeContext::default()).unwrap();
    probe.apply(&web_with(&[A, B, N])).unwrap();
    let client = flow_to(&mut agent, A, &[A, B, H], Some((&mut probe, &[A, B, N])));
    drop(agent);

    let mut restarted = Datapath::load_pinned(NodeContext::default(), &pins.0).expect("load again from the pins");
    restarted.apply(&web_with(&[A, B, N])).unwrap();
    let (out, moved) = restarted.run_counted(TC_PROGRAM, &packets::tcp(client, VIP, false, b"next")).unwrap();
    assert_eq!(dnat_target(&out.packet, client, false, b"next", &[A, B, N]), Some(A), "the flow stays on its backend");
    assert_eq!(moved, Counters::from([(Counter::Established, 1)]));
}

/// A flow whose backend the running agent removed, and which sends nothing
/// until after a restart, is re-balanced, never handed to an endpoint that
/// joined after the restart under the removed backend's id. Backend ids
/// must not be reused across restarts while conntrack may still name them.
#[test]
fn restart_never_hands_a_removed_backends_flow_to_a_new_backend() {
    let pins = PinDir::unique("ids");
    let mut agent = Datapath::load_pinned(NodeContext::default(), &pins.0).expect("load with pinned maps");
    agent.apply(&web_with(&[A, B, H])).unwrap();
    let h_id = backend_id(&agent, H);
    assert_eq!(agent.backends().keys().max(), Some(&h_id), "H has the highest backend id");
    let client = flow_to(&mut agent, H, &[A, B, H], None);

    // The running agent removes H; the flow is idle meanwhile.
    agent.apply(&web_with(&[A, B])).unwrap();
    assert!(!agent.backends().contains_key(&h_id), "H's id is gone from the backend table");
    let tracked = agent.conntrack().unwrap();
    let entry = tracked
        .iter()
        .find(|(k, _)| k.direction == DIR_ORIGINAL && k.src_port == client.port && k.dst_address == VIP.ip.octets())
        .map(|(_, v)| v.backend_id);
    assert_eq!(entry, Some(h_id), "conntrack still names H");
    drop(agent);

    // Restart; a new endpoint joins.
    let mut restarted = Datapath::load_pinned(NodeContext::default(), &pins.0).expect("load again from the pins");
    restarted.apply(&web_with(&[A, B, N])).unwrap();
    let (out, moved) = restarted.run_counted(TC_PROGRAM, &packets::tcp(client, VIP, false, b"next")).unwrap();
    let to = dnat_target(&out.packet, client, false, b"next", &[A, B, N]);
    assert!(to.is_some(), "DNATed to a live backend");
    assert_eq!(
        moved,
        Counters::from([(Counter::Rebalanced, 1)]),
        "the flow's backend left before the restart: it must be re-balanced, but went to {to:?} (N has id {}, H had {h_id})",
        backend_id(&restarted, N)
    );
}

const AGENT_WAIT: Duration = Duration::from_secs(30);

/// Web's backends (by index) once the agent has programmed exactly these.
fn has_web_backends(backends: &'static [usize]) -> impl Fn(&DesiredMaps) -> bool {
    move |m| scenario::web_backend_ids(m).keys().copied().eq(backends.iter().copied())
}

/// Opens keep-alive connections to web until one is answered by a backend
/// `wanted` accepts; returns it and the backend's name.
fn keep_alive_connection(cluster: &DemoCluster, wanted: impl Fn(&str) -> bool) -> (std::net::TcpStream, String) {
    for _ in 0..50 {
        let mut conn =
            servers::connect(&cluster.topology.client, SocketAddr::V4(WEB)).unwrap().expect("connect to the ClusterIP");
        let name = servers::http_request(&mut conn, false).expect("request on a new connection");
        if wanted(&name) {
            return (conn, name);
        }
    }
    panic!("no connection landed on a wanted backend in 50 tries");
}

/// Who answers `n` new connections to web, by backend name.
fn answers(cluster: &DemoCluster, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| {
            servers::http_get(&cluster.topology.client, SocketAddr::V4(WEB)).expect("request through the ClusterIP")
        })
        .collect()
}

fn names(backends: &[usize]) -> std::collections::BTreeSet<String> {
    backends.iter().map(|&i| scenario::backend_name(i)).collect()
}

/// Backends 2, 3 and 4 serve web, programmed in that order, so 4 has the
/// highest backend id.
fn cluster_where_backend_4_has_the_highest_id() -> DemoCluster {
    let cluster = DemoCluster::start_with(4, &scenario::web_services_ready(&[2, 3, 4]), has_web_backends(&[2, 3, 4]))
        .expect("start cluster");
    let ids = scenario::web_backend_ids(&cluster.agent.maps().unwrap());
    assert_eq!(
        ids.iter().max_by_key(|(_, id)| **id).map(|(i, _)| *i),
        Some(4),
        "backend 4 has the highest id: {ids:?}"
    );
    cluster
}

/// End to end: while the agent is down the Services file loses the backend
/// with the highest id and gains a new one, which sorts first and so
/// shifts every other backend's slot (balancing afresh would move most
/// connections). After the restart an
/// established keep-alive connection to a backend that stayed still works
/// and still reaches the same backend, no new connection reaches the
/// removed backend, and every remaining and new backend answers.
#[test]
fn established_connection_survives_a_restart_that_changes_the_backend_set() {
    let mut cluster = cluster_where_backend_4_has_the_highest_id();
    let removed = scenario::backend_name(4);
    let (mut conn, pinned) = keep_alive_connection(&cluster, |name| name != removed);

    let source = cluster.source_file.clone();
    cluster
        .agent
        .restart_after(|| agent::write_atomically(&source, &scenario::web_services_ready(&[1, 2, 3])))
        .expect("restart the agent");
    cluster.agent.wait_ready(AGENT_WAIT).expect("agent ready again");
    cluster.agent.wait_until(AGENT_WAIT, has_web_backends(&[1, 2, 3])).expect("new backend set programmed");

    for _ in 0..3 {
        assert_eq!(
            servers::http_request(&mut conn, false).unwrap(),
            pinned,
            "same connection, same backend after the restart"
        );
    }
    assert_eq!(
        answers(&cluster, 90),
        names(&[1, 2, 3]),
        "new connections reach exactly the remaining and new backends"
    );
}

/// End to end: a keep-alive connection whose backend (the one with the
/// highest id) the running agent removes, idle until after a restart in
/// which a new backend joins, is re-balanced when it sends again (the
/// `rebalanced` counter moves), never delivered to the new backend as an
/// established flow under the removed backend's id.
#[test]
fn idle_connection_to_a_backend_removed_before_a_restart_is_rebalanced() {
    let mut cluster = cluster_where_backend_4_has_the_highest_id();
    let removed = scenario::backend_name(4);
    let (mut conn, _) = keep_alive_connection(&cluster, |name| name == removed);

    cluster
        .update(&scenario::web_services_ready(&[2, 3]), has_web_backends(&[2, 3]))
        .expect("running agent removes backend 4");
    let source = cluster.source_file.clone();
    cluster
        .agent
        .restart_after(|| agent::write_atomically(&source, &scenario::web_services_ready(&[1, 2, 3])))
        .expect("restart the agent");
    cluster.agent.wait_ready(AGENT_WAIT).expect("agent ready again");
    let maps = cluster.agent.wait_until(AGENT_WAIT, has_web_backends(&[1, 2, 3])).expect("new backend set programmed");

    let before: Counters = maps::counters(&cluster.agent.pin_dir).unwrap().into_iter().collect();
    // The connection's backend is gone: whatever the client sees, the
    // packet must have been re-balanced.
    let outcome = servers::http_request(&mut conn, false);
    let after: Counters = maps::counters(&cluster.agent.pin_dir).unwrap().into_iter().collect();
    let moved = lb_tests::datapath::moved(&before, &after);
    assert!(
        moved.get(&Counter::Rebalanced).copied().unwrap_or(0) >= 1,
        "the request on the orphaned connection was not re-balanced (counters moved: {moved:?}, request: {outcome:?}, backend ids now {:?})",
        scenario::web_backend_ids(&maps)
    );
}

/// An agent upgraded from a datapath without the address filter finds
/// the filter empty beside a full Service table, and attaches its programs
/// before its first sync: it seeds the filter from that table first, or
/// every Service packet would pass untranslated until the sync.
#[test]
fn an_upgrade_to_the_address_filter_serves_services_before_the_first_sync() {
    let pins = PinDir::unique("seed");
    let mut agent = Datapath::load_pinned(NodeContext::default(), &pins.0).expect("load with pinned maps");
    agent.apply(&web_with(&[A, B])).unwrap();
    drop(agent);
    // What the previous datapath left: no filter bits.
    let mut maps = ServiceMaps::from_pins(&pins.0).expect("open the pinned maps");
    for word in maps.read_all().unwrap().address_filter.into_keys() {
        maps.write(&lb_userspace::tables::Write::AddressFilter(word, None)).unwrap();
    }

    let mut upgraded = Datapath::load_pinned(NodeContext::default(), &pins.0).expect("load again from the pins");
    let client = ep([10, 0, 1, 9], 45000);
    let (_, moved) = upgraded.run_counted(TC_PROGRAM, &packets::tcp_syn(client, VIP)).unwrap();
    assert_eq!(moved, Counters::from([(Counter::Passed, 1)]), "an empty filter passes the Service's packets");
    assert!(maps.seed_address_filter().unwrap() > 0, "the filter is seeded");
    assert_eq!(maps.seed_address_filter().unwrap(), 0, "and only once");
    let (_, moved) = upgraded.run_counted(TC_PROGRAM, &packets::tcp_syn(client, VIP)).unwrap();
    assert_eq!(moved, Counters::from([(Counter::NewFlow, 1)]), "served before any sync");
}

/// The bytes of a plain-data value, as bpftool's `hex` arguments.
fn hex_bytes<T: Copy>(value: &T, len: usize) -> Vec<String> {
    assert!(len <= std::mem::size_of::<T>());
    // SAFETY: reads `len` bytes of a plain-data value.
    let bytes = unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), len) };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An upgrade across a change of a conntrack table's value (`LB4_CT`: 32
/// bytes before routes were kept on it, 60 before the kept route had the
/// backend; `LB6_CT`: 56 before routes were kept on it): the agent
/// recreates the map and copies every tracked flow into it, so
/// established connections keep their backends instead of being reset.
#[test]
fn flows_tracked_in_earlier_conntrack_layouts_are_carried_over() {
    // Before routes were kept (32-byte values), and while the kept route
    // had no backend (60).
    for value_size in [32, 60] {
        carry_over_from(value_size);
    }
    carry_over_from_v6();
}

/// Pins, as an earlier build did, a conntrack table `name` with
/// `value_size`-byte values holding the first bytes of `value` under
/// `key`; its path.
fn pin_earlier_table<K: Copy, V: Copy>(
    pin_dir: &PinDir,
    name: &str,
    key: &K,
    value: &V,
    value_size: usize,
) -> std::path::PathBuf {
    pin_dir.create().expect("a pin directory on bpffs");
    let path = pin_dir.0.join(name);
    let path_text = path.to_str().unwrap();
    let key_size = std::mem::size_of::<K>().to_string();
    let value_size_text = value_size.to_string();
    let create = [
        "map",
        "create",
        path_text,
        "type",
        "lru_hash",
        "key",
        &key_size,
        "value",
        &value_size_text,
        "entries",
        "4096",
        "name",
        name,
    ];
    lb_tests::topology::run("bpftool", &create).unwrap();
    let mut update = vec!["map", "update", "pinned", path_text, "key", "hex"];
    let (key_hex, value_hex) = (hex_bytes(key, std::mem::size_of::<K>()), hex_bytes(value, value_size));
    update.extend(key_hex.iter().map(String::as_str));
    update.extend(["value", "hex"]);
    update.extend(value_hex.iter().map(String::as_str));
    lb_tests::topology::run("bpftool", &update).unwrap();
    path
}

fn carry_over_from(value_size: usize) {
    use lb_common::conntrack::{CtKeyV4, CtValueV4, RouteCache};
    let pin_dir = PinDir::unique("carry");
    let key = CtKeyV4 {
        src_address: [10, 0, 1, 2],
        dst_address: [10, 96, 0, 10],
        src_port: 40000,
        dst_port: 80,
        proto: 6,
        direction: DIR_ORIGINAL,
        _pad: [0; 2],
    };
    let value = CtValueV4 {
        backend_id: 7,
        frontend_id: 3,
        frontend_address: [10, 96, 0, 10],
        frontend_port: 80,
        flags: 1,
        created_s: 100,
        last_seen_s: 160,
        ..CtValueV4::default()
    };
    // What the earlier build held: a 60-byte value had a route kept.
    let held = CtValueV4 {
        route: RouteCache { epoch: 9, ingress_ifindex: 2, ifindex: 3, fits_len: 1500, ..RouteCache::default() },
        ..value
    };
    let path = pin_earlier_table(&pin_dir, lb_common::maps::CONNTRACK_V4, &key, &held, value_size);
    let carried: CtValueV4 = entry_after_load(&pin_dir, &path, &key);
    assert_eq!(carried, value, "{value_size}-byte layout: every field, no route kept");
}

/// The value at `key` in the table pinned at `path` once this build has
/// loaded its maps over the pins in `pin_dir`.
fn entry_after_load<K: aya::Pod, V: aya::Pod>(pin_dir: &PinDir, path: &std::path::Path, key: &K) -> V {
    let _ebpf = loader::load_maps(Some(&pin_dir.0), Capacities::default())
        .unwrap_or_else(|e| panic!("load over {}: {e:#}", path.display()));
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(path).unwrap()).unwrap();
    let table: aya::maps::HashMap<_, K, V> = map.try_into().expect("this build's conntrack table");
    table.get(key, 0).unwrap_or_else(|e| panic!("flow not carried over into {}: {e}", path.display()))
}

fn carry_over_from_v6() {
    use lb_common::conntrack::{CtKeyV6, CtValueV6};
    let pin_dir = PinDir::unique("carry6");
    let client: [u8; 16] = "fd00:1::2".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let frontend: [u8; 16] = "fd00:96::10".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let key = CtKeyV6 {
        src_address: client,
        dst_address: frontend,
        src_port: 40000,
        dst_port: 80,
        proto: 6,
        direction: DIR_ORIGINAL,
        _pad: [0; 2],
    };
    let value = CtValueV6 {
        backend_id: 7,
        frontend_id: 3,
        frontend_address: frontend,
        frontend_port: 80,
        flags: 1,
        created_s: 100,
        last_seen_s: 160,
        nat_address: client,
        nat_port: 61000,
        ..CtValueV6::default()
    };
    let path = pin_earlier_table(&pin_dir, lb_common::maps::CONNTRACK_V6, &key, &value, 56);
    let carried: CtValueV6 = entry_after_load(&pin_dir, &path, &key);
    assert_eq!(carried, value, "56-byte IPv6 layout: every field, no route kept");
}

/// The port and address filters are read and written as memory, which
/// the kernel allows only on maps created `BPF_F_MMAPABLE`. Filters an
/// earlier build pinned without the flag are recreated with it (they
/// are rewritten from the Services at the first sync anyway).
#[test]
fn filters_pinned_without_the_mmapable_flag_are_recreated_with_it() {
    use lb_common::maps::{ADDRESS_FILTER, FILTER_FLAGS, PORT_FILTER};
    let pin_dir = PinDir::unique("filters");
    pin_dir.create().expect("a pin directory on bpffs");
    let flags_of = |name: &str| {
        aya::maps::MapData::from_pin(pin_dir.0.join(name)).unwrap().info().unwrap().map_flags() & FILTER_FLAGS
    };
    for (name, value_size) in [(PORT_FILTER, "1"), (ADDRESS_FILTER, "8")] {
        let path = pin_dir.0.join(name);
        let args = ["map", "create", path.to_str().unwrap(), "type", "array", "key", "4", "value", value_size];
        let args: Vec<&str> = args.into_iter().chain(["entries", "65536", "name", name]).collect();
        lb_tests::topology::run("bpftool", &args).unwrap();
        assert_eq!(flags_of(name), 0, "{name} pinned without the flag");
    }
    let _ebpf = loader::load_maps(Some(&pin_dir.0), Capacities::default()).expect("load over the old filters");
    for name in [PORT_FILTER, ADDRESS_FILTER] {
        assert_eq!(flags_of(name), FILTER_FLAGS, "{name} recreated mmapable");
    }
}
