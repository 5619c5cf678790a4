//! Maglev frontends through BPF_PROG_TEST_RUN: a new flow goes to the
//! backend at its position in the table the agent built; removing one
//! backend moves only the flows of positions that changed; and two nodes
//! that know the same endpoints under different ids send a flow to the
//! same endpoint. The kernel's tables follow many frontends added,
//! changed and removed in one sync (new tables are linked and removed
//! ones unlinked in batches); frontends with equal tables share one
//! kernel map, which a change to one of them never writes; and a pinned
//! table map from a build whose tables the agent cannot map into memory
//! is replaced. Needs root (CAP_BPF).

use std::net::Ipv4Addr;

use aya::maps::MapData;
use lb_common::{flow, maglev, maps as names, proto, service::ServiceKeyV4};
use lb_tests::{
    datapath::{Datapath, TC_ACT_UNSPEC},
    packets::{self, Endpoint, ep},
    pin_dir::PinDir,
    topology,
};
use lb_userspace::{
    datapath::loader::TC_PROGRAM,
    metrics::{Metrics, SyncMetrics},
    model::NodeContext,
};

const NODE_IP: [u8; 4] = [192, 168, 0, 10];
const NODE_PORT: Endpoint = ep(NODE_IP, 30070);
const EXTERNAL_IP: Endpoint = ep([203, 0, 113, 70], 80);
const CLUSTER_IP: Endpoint = ep([10, 96, 0, 70], 80);
const BACKEND_PORT: u16 = 8080;

fn backends(n: u8) -> Vec<Endpoint> {
    (1..=n).map(|i| ep([10, 244, i, 7], BACKEND_PORT)).collect()
}

/// A NodePort Service with an external IP (so Maglev by default on both)
/// over `backends`.
fn service(backends: &[Endpoint]) -> String {
    list(&[service_items("lb", 70, backends)])
}

fn list(items: &[String]) -> String {
    format!("apiVersion: v1\nkind: List\nitems:\n{}", items.concat())
}

/// Service `name` (ClusterIP 10.96.0.`n`, external IP 203.0.113.`n`,
/// NodePort 30000 + `n`) over `backends`, as list items.
fn service_items(name: &str, n: u8, backends: &[Endpoint]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|b| format!("  - {{addresses: [{}], nodeName: node-a, conditions: {{ready: true}}}}\n", b.ip))
        .collect();
    format!(
        r#"- apiVersion: v1
  kind: Service
  metadata: {{name: {name}, namespace: default}}
  spec:
    type: NodePort
    clusterIP: 10.96.0.{n}
    externalIPs: [203.0.113.{n}]
    ports: [{{port: 80, protocol: TCP, targetPort: {BACKEND_PORT}, nodePort: {}}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
  addressType: IPv4
  endpoints:
{endpoints}  ports: [{{name: "", port: {BACKEND_PORT}, protocol: TCP}}]
"#,
        30000 + u16::from(n)
    )
}

fn node() -> NodeContext {
    // The endpoints run on this node, so NodePort flows need no SNAT.
    NodeContext {
        node_name: Some("node-a".into()),
        node_addresses: vec![Ipv4Addr::from(NODE_IP).into()],
        ..NodeContext::default()
    }
}

fn datapath_with(backends: &[Endpoint]) -> Datapath {
    let mut dp = Datapath::load(node()).expect("load datapath (root needed)");
    dp.apply(&service(backends)).expect("program services");
    dp
}

/// The backend ids of a frontend's table, as the agent wrote it.
fn table(dp: &Datapath, vip: Endpoint) -> Vec<u32> {
    let key = ServiceKeyV4::frontend(vip.ip.octets(), vip.port, proto::TCP);
    let frontend = dp.maps().services[&key];
    let table = dp.maps().maglev.get(&frontend.frontend_id).unwrap_or_else(|| panic!("{vip:?} has no Maglev table"));
    table.to_vec()
}

fn position(client: Endpoint, vip: Endpoint) -> usize {
    let hash = flow::hash(client.ip.octets(), vip.ip.octets(), client.port, vip.port, proto::TCP);
    maglev::position(hash) as usize
}

/// The endpoint a backend id names.
fn endpoint_of(dp: &Datapath, id: u32) -> Endpoint {
    let backend = dp.backends()[&id];
    ep(backend.address, backend.port)
}

/// Where the datapath sends a new flow (a SYN is always balanced afresh).
/// Only the destination counts: a client port that another frontend's
/// flow to the same backend already uses is translated (see
/// tests/tests/collisions.rs), which is not what this file tests.
fn landing(dp: &mut Datapath, client: Endpoint, vip: Endpoint, candidates: &[Endpoint]) -> Endpoint {
    let out = dp.run(TC_PROGRAM, &packets::tcp_syn(client, vip)).expect("test run");
    assert_eq!(out.verdict, TC_ACT_UNSPEC);
    let destination = |packet: &[u8]| (packet[30..34].to_vec(), packet[36..38].to_vec());
    *candidates
        .iter()
        .find(|b| destination(&out.packet) == destination(&packets::tcp_syn(client, **b)))
        .unwrap_or_else(|| panic!("flow from port {} not DNATed to one of {candidates:?}", client.port))
}

fn clients() -> impl Iterator<Item = Endpoint> {
    (41000..41300u16).map(|port| ep([10, 0, 1, 2], port))
}

#[test]
fn a_new_flow_goes_where_the_table_says() {
    let all = backends(5);
    let mut dp = datapath_with(&all);
    for vip in [NODE_PORT, EXTERNAL_IP] {
        let table = table(&dp, vip);
        assert_eq!(table.len(), maglev::TABLE_SIZE as usize);
        let mut seen = std::collections::BTreeSet::new();
        for client in clients() {
            let expected = endpoint_of(&dp, table[position(client, vip)]);
            assert_eq!(landing(&mut dp, client, vip, &all), expected, "{vip:?} from port {}", client.port);
            seen.insert(expected.ip);
        }
        assert_eq!(seen.len(), all.len(), "300 flows reach every backend: {seen:?}");
    }
    let key = ServiceKeyV4::frontend(CLUSTER_IP.ip.octets(), CLUSTER_IP.port, proto::TCP);
    assert!(!dp.maps().maglev.contains_key(&dp.maps().services[&key].frontend_id), "the ClusterIP keeps the slot hash");
}

#[test]
fn removing_a_backend_moves_only_the_flows_of_changed_positions() {
    let all = backends(5);
    let mut dp = datapath_with(&all);
    let before = table(&dp, EXTERNAL_IP);
    let first: Vec<(Endpoint, Endpoint)> = clients().map(|c| (c, landing(&mut dp, c, EXTERNAL_IP, &all))).collect();
    let removed = all[2];
    let remaining: Vec<Endpoint> = all.iter().copied().filter(|b| *b != removed).collect();
    dp.apply(&service(&remaining)).expect("remove a backend");
    let after = table(&dp, EXTERNAL_IP);
    let (mut kept, mut moved_off_live) = (0, 0);
    for (client, was) in first {
        let now = landing(&mut dp, client, EXTERNAL_IP, &remaining);
        let p = position(client, EXTERNAL_IP);
        if before[p] == after[p] {
            assert_eq!(now, was, "port {}: its position did not change, nor may its backend", client.port);
            kept += 1;
        } else if was != removed {
            moved_off_live += 1;
        }
        assert_ne!(now, removed);
    }
    println!("{kept} of 300 flows kept their backend; {moved_off_live} moved although their backend stayed");
    // About 4/5 of the flows were on a backend that stayed; Maglev moves
    // only a few of those (modulo hashing would move most).
    assert!(kept >= 200, "only {kept} of 300 flows kept their backend");
    assert!(moved_off_live <= 15, "{moved_off_live} flows left a backend that stayed");
}

#[test]
fn two_nodes_send_a_flow_to_the_same_endpoint_whatever_their_ids() {
    let all = backends(5);
    let mut here = datapath_with(&all);
    // The other node saw the endpoints come and go in another order: its
    // backend ids and its slot order differ (slot hashing would send many
    // flows elsewhere there).
    let mut there = Datapath::load(node()).expect("load datapath");
    let six = backends(6);
    for step in [&six[..], &six[1..], &all[..]] {
        there.apply(&service(step)).expect("program services");
    }
    assert_ne!(
        here.backends().keys().collect::<Vec<_>>(),
        there.backends().keys().collect::<Vec<_>>(),
        "the nodes' ids differ"
    );
    for client in clients() {
        assert_eq!(
            landing(&mut here, client, EXTERNAL_IP, &all),
            landing(&mut there, client, EXTERNAL_IP, &all),
            "port {}",
            client.port
        );
    }
}

#[test]
fn a_full_sync_repairs_a_table_position_changed_behind_the_agents_back() {
    let all = backends(5);
    let mut dp = datapath_with(&all);
    let client = ep([10, 0, 1, 2], 42000);
    let position = position(client, EXTERNAL_IP);
    let table = table(&dp, EXTERNAL_IP);
    let right = endpoint_of(&dp, table[position]);
    let wrong_id = *table.iter().find(|&&id| id != table[position]).unwrap();
    let key = ServiceKeyV4::frontend(EXTERNAL_IP.ip.octets(), EXTERNAL_IP.port, proto::TCP);
    let frontend_id = dp.maps().services[&key].frontend_id;
    dp.overwrite_maglev_position(frontend_id, position as u32, wrong_id).expect("tamper");
    assert_eq!(
        landing(&mut dp, client, EXTERNAL_IP, &all),
        endpoint_of(&dp, wrong_id),
        "the tampered position is used"
    );
    let repaired = dp.resync(&service(&all)).expect("full sync");
    assert_eq!(repaired, 2, "the external IP's table differed, and the NodePort's, which is the same kernel map");
    assert_eq!(landing(&mut dp, client, EXTERNAL_IP, &all), right, "the position is put back");
}

/// The kernel map ids of the tables of `vips`' frontends.
fn map_ids(dp: &Datapath, vips: &[Endpoint]) -> Vec<u32> {
    let ids = dp.maglev_map_ids().expect("read the table map");
    vips.iter()
        .map(|vip| {
            let key = ServiceKeyV4::frontend(vip.ip.octets(), vip.port, proto::TCP);
            ids[&dp.maps().services[&key].frontend_id]
        })
        .collect()
}

/// Whether the kernel still has map `id` (a map no outer entry names and
/// no process holds is freed; the id goes at once, the memory after a
/// grace period).
fn map_exists(id: u32) -> bool {
    (0..50).all(|_| {
        let exists = MapData::from_id(id).is_ok();
        if exists {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        exists
    })
}

/// Maps an earlier build wrote held one table per frontend: a full sync
/// makes frontends with equal tables share one again, with nothing to
/// repair, and frees the copies.
#[test]
fn a_full_sync_merges_equal_tables_held_twice() {
    let all = backends(4);
    let mut dp = datapath_with(&all);
    let key = ServiceKeyV4::frontend(EXTERNAL_IP.ip.octets(), EXTERNAL_IP.port, proto::TCP);
    dp.copy_maglev_table(dp.maps().services[&key].frontend_id).expect("copy a table in the kernel");
    let copied = map_ids(&dp, &[NODE_PORT, EXTERNAL_IP]);
    assert_ne!(copied[0], copied[1], "two maps, equal tables");
    assert_eq!(dp.resync(&service(&all)).expect("full sync"), 0, "the tables were right");
    let merged = map_ids(&dp, &[NODE_PORT, EXTERNAL_IP]);
    assert_eq!(merged[0], merged[1], "one map again: {merged:?}");
    let unnamed = if merged[0] == copied[0] { copied[1] } else { copied[0] };
    assert!(!map_exists(unnamed), "the other is freed");
    let client = ep([10, 0, 1, 2], 42000);
    let expected = endpoint_of(&dp, table(&dp, EXTERNAL_IP)[position(client, EXTERNAL_IP)]);
    assert_eq!(landing(&mut dp, client, EXTERNAL_IP, &all), expected);
}

/// `lb_maglev_tables` as `/metrics` shows it, read from the pinned maps.
fn kernel_tables_metric(pins: &PinDir) -> u64 {
    let metrics = Metrics::new(&SyncMetrics::default(), pins.0.clone()).render();
    let line = metrics.lines().find(|l| l.starts_with("lb_maglev_tables ")).expect("lb_maglev_tables shown");
    line["lb_maglev_tables ".len()..].parse().expect("a count")
}

/// Services `a` and `b` over the same endpoints: their NodePorts and
/// external IPs (four frontends) name one kernel table. When `a`'s
/// endpoints change, `a` moves to a new table and `b` keeps the old one
/// untouched; after a restart, `b` taking `a`'s endpoints joins `a`'s
/// table and the old one is freed.
#[test]
fn frontends_with_equal_tables_share_one_kernel_map() {
    const A: [Endpoint; 2] = [ep([203, 0, 113, 1], 80), ep(NODE_IP, 30001)];
    const B: [Endpoint; 2] = [ep([203, 0, 113, 2], 80), ep(NODE_IP, 30002)];
    let pins = PinDir::unique("maglev-shared");
    let mut dp = Datapath::load_pinned(node(), &pins.0).expect("load datapath (root needed)");
    let (four, three) = (backends(4), backends(3));
    dp.apply(&list(&[service_items("a", 1, &four), service_items("b", 2, &four)])).expect("program");
    let ids = map_ids(&dp, &[A[0], A[1], B[0], B[1]]);
    assert!(ids.iter().all(|id| *id == ids[0]), "four frontends, one table: {ids:?}");
    assert_eq!(kernel_tables_metric(&pins), 1, "the metric counts tables, not frontends");
    let shared = ids[0];

    let changed = list(&[service_items("a", 1, &three), service_items("b", 2, &four)]);
    dp.apply(&changed).expect("a loses an endpoint");
    let a = map_ids(&dp, &A);
    assert_eq!(map_ids(&dp, &B), [shared, shared], "b keeps its table");
    assert!(a[0] == a[1] && a[0] != shared, "a's frontends move to one new table: {a:?}");
    assert_eq!(kernel_tables_metric(&pins), 2);
    assert_eq!(dp.resync(&changed).expect("full sync"), 0, "b's table in the kernel is still b's");
    for vip in B {
        let client = ep([10, 0, 1, 2], 42000);
        let expected = endpoint_of(&dp, table(&dp, vip)[position(client, vip)]);
        assert_eq!(landing(&mut dp, client, vip, &four), expected, "{vip:?} balances over all four");
    }

    drop(dp);
    let mut dp = Datapath::load_pinned(node(), &pins.0).expect("restart on the pinned maps");
    let same = list(&[service_items("a", 1, &three), service_items("b", 2, &three)]);
    dp.apply(&same).expect("b loses the same endpoint");
    assert_eq!(map_ids(&dp, &[A[0], A[1], B[0], B[1]]), [a[0]; 4], "b joins a's table");
    assert!(!map_exists(shared), "the table no frontend names is freed");
    assert_eq!(dp.resync(&same).expect("full sync"), 0);
}

/// NodePort Services `s{i}` for `i` in `range`, with external IPs (two
/// Maglev frontends each), Service `i` over `backends(i)` endpoints.
fn many_services(range: std::ops::Range<u16>, backends: impl Fn(u16) -> u8) -> String {
    let mut items = String::new();
    for i in range {
        let (hi, lo) = (i / 200, i % 200 + 1);
        let endpoints: String = (1..=backends(i))
            .map(|b| format!("  - {{addresses: [10.244.{b}.{lo}], nodeName: node-a, conditions: {{ready: true}}}}\n"))
            .collect();
        items.push_str(&format!(
            r#"- apiVersion: v1
  kind: Service
  metadata: {{name: s{i}, namespace: default}}
  spec:
    type: NodePort
    clusterIP: 10.96.{hi}.{lo}
    externalIPs: [203.0.{hi}.{lo}]
    ports: [{{port: 80, protocol: TCP, targetPort: {BACKEND_PORT}, nodePort: {}}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: s{i}-1, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}
  addressType: IPv4
  endpoints:
{endpoints}  ports: [{{name: "", port: {BACKEND_PORT}, protocol: TCP}}]
"#,
            30000 + i
        ));
    }
    format!("apiVersion: v1\nkind: List\nitems:\n{items}")
}

/// After each sync, a full sync (which reads every table back from the
/// kernel and compares it with what the Services say) finds nothing to
/// repair: new, changed and removed tables all reached the kernel.
#[test]
fn tables_of_many_frontends_added_changed_and_removed_in_one_sync_all_reach_the_kernel() {
    let mut dp = Datapath::load(node()).expect("load datapath (root needed)");
    let steps = [
        ("120 Services, 240 tables", many_services(0..120, |_| 3)),
        // The first 30 go, 30 new come, every third one left loses a
        // backend: one sync links, unlinks and changes tables.
        ("changed, removed and added", many_services(30..150, |i| if i % 3 == 0 { 2 } else { 3 })),
        ("none left", many_services(0..0, |_| 3)),
    ];
    for (what, objects) in steps {
        dp.apply(&objects).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let services = objects.matches("kind: Service\n").count();
        assert_eq!(dp.maps().maglev.len(), 2 * services, "{what}: a table per NodePort and external IP frontend");
        let kernel_tables: std::collections::BTreeSet<u32> =
            dp.maglev_map_ids().expect("read the table map").into_values().collect();
        assert_eq!(kernel_tables.len(), services, "{what}: a Service's two frontends share one kernel map");
        assert_eq!(dp.resync(&objects).expect("full sync"), 0, "{what}: the kernel held every table as written");
    }
}

/// An earlier build pinned `LB4_MAGLEV` with tables that cannot be mapped
/// into memory (no `BPF_F_MMAPABLE`); the kernel would refuse this
/// build's tables in it, so the map is replaced and NodePorts balance.
#[test]
fn a_pinned_table_map_whose_tables_are_not_mapped_is_replaced() {
    let pins = PinDir::unique("maglev");
    pins.create().expect("a pin directory on bpffs");
    let template = pins.0.join("old-table");
    let outer = pins.0.join(names::MAGLEV_V4);
    let (template, outer) = (template.to_str().unwrap(), outer.to_str().unwrap());
    let size = maglev::TABLE_SIZE.to_string();
    let capacity = names::MAGLEV_V4_CAPACITY.to_string();
    let create = |args: &[&str]| topology::run("bpftool", &[&["map", "create"], args].concat()).expect("bpftool");
    create(&[template, "type", "array", "key", "4", "value", "4", "entries", &size, "name", "old_table"]);
    create(&[
        outer,
        "type",
        "hash_of_maps",
        "key",
        "4",
        "value",
        "4",
        "entries",
        &capacity,
        "name",
        names::MAGLEV_V4,
        "flags",
        "1",
        "inner_map",
        "pinned",
        template,
    ]);
    let old_id = MapData::from_pin(outer).expect("open").info().expect("info").id();

    let mut dp = Datapath::load_pinned(node(), &pins.0).expect("load with the old pinned map");
    dp.apply(&service(&backends(3))).expect("program a NodePort Service");
    let new_id = MapData::from_pin(outer).expect("open").info().expect("info").id();
    assert_ne!(new_id, old_id, "the old table map is replaced");
    let client = ep([10, 0, 1, 2], 42000);
    let expected = endpoint_of(&dp, table(&dp, NODE_PORT)[position(client, NODE_PORT)]);
    assert_eq!(landing(&mut dp, client, NODE_PORT, &backends(3)), expected, "the NodePort balances by its table");
}
