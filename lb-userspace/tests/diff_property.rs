//! Property: after any sequence of Service / EndpointSlice events, applied
//! incrementally (one Service at a time) or in full syncs, with agent
//! restarts, failed writes and entries changed behind the agent's back
//! thrown in, the maps hold exactly the translation of the final state
//! once a sync succeeds; each successful sync writes no more than the
//! entries that changed; no intermediate state (after any single write)
//! exposes a half-built Service; and no id is ever handed to a second
//! backend or frontend. Run on an IPv4 node, and on a dual-stack one with
//! Services of either family or both (one id space, two tables each).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_common::{address_filter, port_filter};
use lb_userspace::{
    model::{IpFamily, NodeContext, ServiceTable},
    state::HighestIds,
    sync::{ApplyError, MapWriter, Syncer},
    tables::{self, DesiredMaps, Write},
    translate::{self, SliceRecord},
};
use proptest::prelude::*;
use serde_json::json;

/// Applies writes to memory, checking the invariants after each one.
#[derive(Default)]
struct CheckingWriter {
    maps: DesiredMaps,
    last_writes: usize,
    /// Fail the next apply after this many writes.
    fail_after: Option<usize>,
    /// An entry was removed behind the agent's back: the maps may be
    /// inconsistent until a sync completes.
    tampered: bool,
    /// Every backend id and frontend id ever written, with what it named
    /// (address, port, protocol; and scope for a frontend), both families.
    backend_ids: BTreeMap<u32, (IpAddr, u16, u8)>,
    frontend_ids: BTreeMap<u32, (IpAddr, u16, u8, u8)>,
}

fn assert_consistent(maps: &DesiredMaps) {
    assert_consistent_v4(maps);
    assert_consistent_v6(maps);
}

fn assert_consistent_v4(maps: &DesiredMaps) {
    for (key, value) in maps.services.iter().filter(|(k, _)| k.backend_slot == 0) {
        assert!(
            maps.port_filter.get(&key.port).is_some_and(|b| b & port_filter::FRONTEND_PORT != 0),
            "frontend port {} without its prefilter bit",
            key.port
        );
        assert!(has_address_bit(maps, address_filter::bit_v4(key.address)), "{key:?} without its address bit");
        for slot in 1..=value.count {
            let entry = maps.services.get(&key.slot(slot)).unwrap_or_else(|| panic!("{key:?}: slot {slot} missing"));
            let backend = maps.backends.get(&entry.backend_id).unwrap_or_else(|| panic!("{key:?}: backend missing"));
            assert!(
                maps.port_filter.get(&backend.port).is_some_and(|b| b & port_filter::BACKEND_PORT != 0),
                "backend port {} without its prefilter bit",
                backend.port
            );
            assert!(entry.backend_id <= maps.ids[&lb_common::ids::LAST_BACKEND_ID], "id counter persisted first");
        }
        assert!(value.frontend_id <= maps.ids[&lb_common::ids::LAST_FRONTEND_ID], "id counter persisted first");
        if value.flags & lb_common::service::FLAG_MAGLEV != 0 {
            let table = maps.maglev.get(&value.frontend_id).unwrap_or_else(|| panic!("{key:?}: Maglev table missing"));
            // Each distinct id once (a table has 16,381 positions but few backends).
            let mut named: Vec<u32> = table.to_vec();
            named.sort_unstable();
            named.dedup();
            for id in named {
                assert!(maps.backends.contains_key(&id), "{key:?}: Maglev table names missing backend {id}");
            }
        }
    }
}

/// `assert_consistent_v4` over `LB6_SERVICES` and `LB6_BACKENDS`.
fn assert_consistent_v6(maps: &DesiredMaps) {
    let has_bit = |port: u16, bit: u8| maps.port_filter.get(&port).is_some_and(|b| b & bit != 0);
    for (key, value) in maps.services_v6.iter().filter(|(k, _)| k.backend_slot == 0) {
        assert!(has_bit(key.port, port_filter::FRONTEND_PORT), "frontend port {} without its bit", key.port);
        assert!(has_address_bit(maps, address_filter::bit_v6(key.address)), "{key:?} without its address bit");
        for slot in 1..=value.count {
            let entry = maps.services_v6.get(&key.slot(slot)).unwrap_or_else(|| panic!("{key:?}: slot {slot} missing"));
            let backend = maps.backends_v6.get(&entry.backend_id).unwrap_or_else(|| panic!("{key:?}: backend missing"));
            assert!(has_bit(backend.port, port_filter::BACKEND_PORT), "backend port {} without its bit", backend.port);
            assert!(entry.backend_id <= maps.ids[&lb_common::ids::LAST_BACKEND_ID], "id counter persisted first");
        }
        assert!(value.frontend_id <= maps.ids[&lb_common::ids::LAST_FRONTEND_ID], "id counter persisted first");
        if value.flags & lb_common::service::FLAG_MAGLEV != 0 {
            let table = maps.maglev.get(&value.frontend_id).unwrap_or_else(|| panic!("{key:?}: Maglev table missing"));
            assert!(
                table.iter().all(|id| maps.backends_v6.contains_key(&id)),
                "{key:?}: table names a missing backend"
            );
        }
    }
}

/// Whether `bit` of the address filter is set.
fn has_address_bit(maps: &DesiredMaps, bit: u32) -> bool {
    let (word, mask) = address_filter::word_and_mask(bit);
    maps.address_filter.get(&word).is_some_and(|bits| bits & mask != 0)
}

/// A member backend exists (in either family's table: members are
/// keyed by ids, one space for both) for as long as its entry does.
fn assert_members_exist(maps: &DesiredMaps) {
    for member in maps.affinity_members.keys() {
        let exists =
            maps.backends.contains_key(&member.backend_id) || maps.backends_v6.contains_key(&member.backend_id);
        assert!(exists, "member {member:?} names a missing backend");
    }
}

/// Once a sync is written, the members are exactly the slot backends of
/// each affinity frontend. (Not after every write: while a frontend's
/// winning claim passes to a Service without affinity, its slots change
/// before its flag; a client then briefly follows the old backend.)
fn members_match_slots(maps: &DesiredMaps) -> bool {
    use lb_common::{affinity::AffinityMemberKeyV4 as Member, service::FLAG_SESSION_AFFINITY};
    let v4 = maps
        .services
        .iter()
        .filter(|(k, v)| k.backend_slot == 0 && v.flags & FLAG_SESSION_AFFINITY != 0)
        .flat_map(|(k, v)| (1..=v.count).map(move |slot| (k.slot(slot), v.frontend_id)))
        .map(|(slot, frontend_id)| Member { frontend_id, backend_id: maps.services[&slot].backend_id });
    let v6 = maps
        .services_v6
        .iter()
        .filter(|(k, v)| k.backend_slot == 0 && v.flags & FLAG_SESSION_AFFINITY != 0)
        .flat_map(|(k, v)| (1..=v.count).map(move |slot| (k.slot(slot), v.frontend_id)))
        .map(|(slot, frontend_id)| Member { frontend_id, backend_id: maps.services_v6[&slot].backend_id });
    let wanted: BTreeSet<Member> = v4.chain(v6).collect();
    maps.affinity_members.keys().copied().collect::<BTreeSet<_>>() == wanted
}

impl CheckingWriter {
    fn record_ids(&mut self) {
        let v4 = self.maps.backends.iter().map(|(id, b)| (*id, (IpAddr::from(b.address), b.port, b.proto)));
        let v6 = self.maps.backends_v6.iter().map(|(id, b)| (*id, (IpAddr::from(b.address), b.port, b.proto)));
        for (id, identity) in v4.chain(v6) {
            let first = *self.backend_ids.entry(id).or_insert(identity);
            assert_eq!(first, identity, "backend id {id} reused");
        }
        let v4 = self
            .maps
            .services
            .iter()
            .map(|(k, v)| ((IpAddr::from(k.address), k.port, k.proto, k.scope), k.backend_slot, v));
        let v6 = self
            .maps
            .services_v6
            .iter()
            .map(|(k, v)| ((IpAddr::from(k.address), k.port, k.proto, k.scope), k.backend_slot, v));
        for (key, _, value) in v4.chain(v6).filter(|(_, slot, _)| *slot == 0) {
            let first = *self.frontend_ids.entry(value.frontend_id).or_insert(key);
            assert_eq!(first, key, "frontend id {} reused", value.frontend_id);
        }
    }
}

impl MapWriter for CheckingWriter {
    fn apply(&mut self, writes: &[Write]) -> Result<(), ApplyError> {
        self.last_writes = writes.len();
        // Armed until a sync has enough writes to fail part-way.
        let fail_after = self.fail_after.filter(|after| *after < writes.len());
        if fail_after.is_some() {
            self.fail_after = None;
        }
        for (applied, write) in writes.iter().enumerate() {
            if fail_after == Some(applied) {
                return Err(ApplyError { applied, source: anyhow::anyhow!("injected failure") });
            }
            tables::apply_to(&mut self.maps, std::slice::from_ref(write));
            if !self.tampered {
                assert_consistent(&self.maps);
                assert_members_exist(&self.maps);
            }
            self.record_ids();
        }
        self.tampered = false;
        Ok(())
    }

    fn read_all(&self) -> anyhow::Result<DesiredMaps> {
        Ok(self.maps.clone())
    }

    fn conntrack_highest_ids(&self) -> anyhow::Result<HighestIds> {
        Ok(HighestIds::default())
    }

    /// The affinity map is the datapath's; nothing here holds it.
    fn forget_affinity(&mut self, _frontend_ids: &BTreeSet<u32>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// frontend (address, port, proto) → (backends as a set, count, flags).
type Decoded = BTreeMap<(IpAddr, u16, u8), (BTreeSet<(IpAddr, u16)>, u16)>;

fn decode(maps: &DesiredMaps) -> Decoded {
    let v4 = maps.services.iter().filter(|(k, _)| k.backend_slot == 0).map(|(k, v)| {
        let backends = (1..=v.count)
            .map(|slot| {
                let b = &maps.backends[&maps.services[&k.slot(slot)].backend_id];
                (IpAddr::from(b.address), b.port)
            })
            .collect();
        ((IpAddr::from(k.address), k.port, k.proto), (backends, v.flags))
    });
    let v6 = maps.services_v6.iter().filter(|(k, _)| k.backend_slot == 0).map(|(k, v)| {
        let backends = (1..=v.count)
            .map(|slot| {
                let b = &maps.backends_v6[&maps.services_v6[&k.slot(slot)].backend_id];
                (IpAddr::from(b.address), b.port)
            })
            .collect();
        ((IpAddr::from(k.address), k.port, k.proto), (backends, v.flags))
    });
    v4.chain(v6).collect()
}

/// The translation of every family the node serves.
/// What the agent keeps of each slice.
fn records(slices: &[EndpointSlice]) -> Vec<SliceRecord> {
    slices.iter().map(SliceRecord::from).collect()
}

fn translated(services: &[Service], slices: &[EndpointSlice], node: &NodeContext) -> Vec<ServiceTable> {
    node.families().into_iter().map(|family| translate::translate(services, slices, &node.for_family(family))).collect()
}

fn expected(tables: &[ServiceTable]) -> Decoded {
    tables
        .iter()
        .flat_map(|table| &table.frontends)
        .map(|f| {
            let backends = f.backends.iter().map(|b| (b.address, b.port)).collect();
            ((f.address, f.port, f.protocol().number()), (backends, lb_userspace::encode::frontend_flags(f)))
        })
        .collect()
}

/// Writes a minimal diff must make: every entry whose value differs, plus
/// one extra write for a port that both gains and loses prefilter bits
/// (it must hold both while the old and new entries coexist).
fn minimal_writes(before: &DesiredMaps, after: &DesiredMaps) -> usize {
    fn changed<K: Ord + Copy, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
        let keys: BTreeSet<K> = a.keys().chain(b.keys()).copied().collect();
        keys.iter().filter(|k| a.get(k) != b.get(k)).count()
    }
    // A bit set that gains and loses bits is written twice: the union
    // among the puts, the final bits among the deletions.
    fn both_ways<K: Ord, V: Copy + Default + PartialEq + std::ops::BitAnd<Output = V> + std::ops::Not<Output = V>>(
        before: &BTreeMap<K, V>,
        after: &BTreeMap<K, V>,
    ) -> usize {
        let none = V::default();
        before
            .iter()
            .filter(|(key, old)| {
                let new = after.get(key).copied().unwrap_or_default();
                new & !**old != none && **old & !new != none
            })
            .count()
    }
    changed(&before.services, &after.services)
        + changed(&before.backends, &after.backends)
        + changed(&before.services_v6, &after.services_v6)
        + changed(&before.backends_v6, &after.backends_v6)
        + changed(&before.port_filter, &after.port_filter)
        + changed(&before.address_filter, &after.address_filter)
        + changed(&before.ids, &after.ids)
        + changed(&before.maglev, &after.maglev)
        + changed(&before.affinity_members, &after.affinity_members)
        + both_ways(&before.port_filter, &after.port_filter)
        + both_ways(&before.address_filter, &after.address_filter)
}

#[derive(Clone, Debug)]
enum Op {
    /// Service `svc` with these ports; NodePort type and Local external
    /// policy optional; an external IP equal to the node address optional.
    PutService {
        svc: usize,
        ports: Vec<(u16, &'static str, u16)>,
        node_port: bool,
        local: bool,
        external_on_node: bool,
        /// On a dual-stack node: IPv4, IPv6 or both (index into `FAMILIES`).
        families: usize,
    },
    DeleteService {
        svc: usize,
    },
    PutSlice {
        svc: usize,
        slice: usize,
        endpoints: Vec<(u8, bool, bool)>,
        target: u16,
        /// On a dual-stack node: an IPv6 slice.
        v6: bool,
    },
    DeleteSlice {
        svc: usize,
        slice: usize,
    },
    /// The agent stops and a new one starts from the pinned maps.
    Restart,
    /// The next sync's apply fails after this many writes.
    FailNextWrite(usize),
    /// An entry is removed behind the agent's back.
    Tamper(usize),
}

const PORT_CHOICES: [(u16, &str, u16); 4] =
    [(80, "TCP", 8080), (53, "UDP", 5353), (53, "TCP", 5353), (443, "TCP", 8443)];
const NODE_IP: &str = "192.168.0.10";
const NODE_IP6: &str = "fd00:168::10";
const FAMILIES: [&[&str]; 3] = [&["IPv4"], &["IPv6"], &["IPv4", "IPv6"]];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..5usize, proptest::sample::subsequence(PORT_CHOICES.to_vec(), 0..=3), any::<bool>(), any::<bool>(), prop::bool::weighted(0.2), 0..3usize)
            .prop_map(|(svc, ports, node_port, local, external_on_node, families)| Op::PutService { svc, ports, node_port, local, external_on_node, families }),
        1 => (0..5usize).prop_map(|svc| Op::DeleteService { svc }),
        5 => (0..5usize, 0..2usize, proptest::collection::vec((1u8..8, any::<bool>(), prop::bool::weighted(0.2)), 0..5), prop_oneof![Just(8080u16), Just(5353), Just(8443), Just(9000)], any::<bool>())
            .prop_map(|(svc, slice, endpoints, target, v6)| Op::PutSlice { svc, slice, endpoints, target, v6 }),
        1 => (0..5usize, 0..2usize).prop_map(|(svc, slice)| Op::DeleteSlice { svc, slice }),
        1 => Just(Op::Restart),
        1 => (0..6usize).prop_map(Op::FailNextWrite),
        1 => (0..100usize).prop_map(Op::Tamper),
    ]
}

/// Services 0 and 3 share a cluster IP: their claims on one port conflict.
fn cluster_ip(svc: usize, family: &str) -> String {
    if family == "IPv6" { format!("fd00:96::{}", svc % 3 + 1) } else { format!("10.96.0.{}", svc % 3 + 1) }
}

fn service(
    svc: usize,
    ports: &[(u16, &str, u16)],
    node_port: bool,
    local: bool,
    external_on_node: bool,
    families: &[&str],
) -> Service {
    let ports: Vec<_> = ports
        .iter()
        .map(|(port, proto, target)| {
            let mut p =
                json!({"name": format!("p{port}{proto}"), "port": port, "protocol": proto, "targetPort": target});
            if node_port {
                p["nodePort"] = json!(30000 + svc as u16 * 10 + port % 10);
            }
            p
        })
        .collect();
    let cluster_ips: Vec<String> = families.iter().map(|family| cluster_ip(svc, family)).collect();
    let mut spec = json!({"clusterIP": cluster_ips[0], "clusterIPs": cluster_ips, "ipFamilies": families, "ports": ports,
                          "type": if node_port { "NodePort" } else { "ClusterIP" }});
    if local {
        spec["externalTrafficPolicy"] = json!("Local");
        spec["internalTrafficPolicy"] = json!("Local");
    }
    if external_on_node {
        let node_ips: Vec<&str> = families.iter().map(|f| if *f == "IPv6" { NODE_IP6 } else { NODE_IP }).collect();
        spec["externalIPs"] = json!(node_ips);
    }
    // Varies with the generated ports, so affinity is switched on and off.
    if ports.len() % 2 == 1 {
        spec["sessionAffinity"] = json!("ClientIP");
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s{svc}"), "namespace": "prop"},
        "spec": spec
    }))
    .unwrap()
}

fn slice(svc: usize, slice: usize, endpoints: &[(u8, bool, bool)], target: u16, v6: bool) -> EndpointSlice {
    let eps: Vec<_> = endpoints
        .iter()
        .map(|(e, on_this_node, terminating)| {
            let address = if v6 { format!("fd00:244::{e}") } else { format!("10.244.0.{e}") };
            json!({"addresses": [address],
                   "nodeName": if *on_this_node { "node-a" } else { "node-b" },
                   "conditions": {"ready": !terminating, "serving": true, "terminating": terminating}})
        })
        .collect();
    let ports: Vec<_> = PORT_CHOICES
        .iter()
        .map(|(port, proto, _)| json!({"name": format!("p{port}{proto}"), "port": target, "protocol": proto}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("s{svc}-{slice}"), "namespace": "prop", "labels": {"kubernetes.io/service-name": format!("s{svc}")}},
        "addressType": if v6 { "IPv6" } else { "IPv4" }, "endpoints": eps, "ports": ports
    }))
    .unwrap()
}

fn node() -> NodeContext {
    NodeContext {
        node_name: Some("node-a".into()),
        node_addresses: vec![NODE_IP.parse().unwrap()],
        family: IpFamily::V4,
        ..NodeContext::default()
    }
}

fn dual_stack_node() -> NodeContext {
    NodeContext {
        node_addresses: vec![NODE_IP.parse().unwrap(), NODE_IP6.parse().unwrap()],
        dual_stack: true,
        ..node()
    }
}

/// Removes the `n`-th entry (modulo their number) of the maps.
fn tamper(maps: &mut DesiredMaps, n: usize) {
    let services = maps.services.len();
    if services > 0 && n.is_multiple_of(2) {
        let key = *maps.services.keys().nth(n % services).unwrap();
        maps.services.remove(&key);
    } else if !maps.maglev.is_empty() && n.is_multiple_of(3) {
        let key = *maps.maglev.keys().nth(n % maps.maglev.len()).unwrap();
        maps.maglev.remove(&key);
    } else if !maps.services_v6.is_empty() && n % 5 == 1 {
        let key = *maps.services_v6.keys().nth(n % maps.services_v6.len()).unwrap();
        maps.services_v6.remove(&key);
    } else if !maps.backends_v6.is_empty() && n % 5 == 3 {
        let key = *maps.backends_v6.keys().nth(n % maps.backends_v6.len()).unwrap();
        maps.backends_v6.remove(&key);
    } else if !maps.backends.is_empty() {
        let key = *maps.backends.keys().nth(n % maps.backends.len()).unwrap();
        maps.backends.remove(&key);
    }
}

/// One run of `ops` on `node`, checking the properties above after each.
fn run(ops: Vec<Op>, node: &NodeContext) -> Result<(), TestCaseError> {
    let mut syncer = Some(Syncer::new(CheckingWriter::default(), DesiredMaps::default(), node.clone()));
    let mut services: BTreeMap<usize, Service> = BTreeMap::new();
    let mut slices: BTreeMap<(usize, usize), EndpointSlice> = BTreeMap::new();
    let mut full_next = true;
    for (step, op) in ops.into_iter().enumerate() {
        let mut changed = None;
        match op {
            Op::PutService { svc, ports, node_port, local, external_on_node, families } => {
                let families = if node.dual_stack { FAMILIES[families] } else { FAMILIES[0] };
                services.insert(svc, service(svc, &ports, node_port, local, external_on_node, families));
                changed = Some(svc);
            }
            Op::DeleteService { svc } => {
                services.remove(&svc);
                changed = Some(svc);
            }
            Op::PutSlice { svc, slice: s, endpoints, target, v6 } => {
                slices.insert((svc, s), slice(svc, s, &endpoints, target, v6 && node.dual_stack));
                changed = Some(svc);
            }
            Op::DeleteSlice { svc, slice: s } => {
                slices.remove(&(svc, s));
                changed = Some(svc);
            }
            Op::Restart => {
                let writer = syncer.take().unwrap().into_writer();
                let existing = writer.maps.clone();
                syncer = Some(Syncer::new(writer, existing, node.clone()));
                full_next = true;
            }
            Op::FailNextWrite(after) => {
                syncer.as_mut().unwrap().writer_mut().fail_after = Some(after);
                continue;
            }
            Op::Tamper(n) => {
                let writer = syncer.as_mut().unwrap().writer_mut();
                tamper(&mut writer.maps, n);
                writer.tampered = true;
                full_next = true;
            }
        }
        let syncer = syncer.as_mut().unwrap();
        let svcs: Vec<_> = services.values().cloned().collect();
        let slcs: Vec<_> = slices.values().cloned().collect();
        let before = syncer.writer().maps.clone();
        // Incremental updates of the changed Service, and a full sync
        // now and then, after a restart, a failure or tampering, as
        // the agent runs them.
        let full = full_next || syncer.needs_full() || step % 7 == 6 || changed.is_none();
        let result = if full {
            syncer.sync(&svcs, &records(&slcs))
        } else {
            let changed = changed.unwrap();
            let service = services.get(&changed);
            let its_slices: Vec<SliceRecord> =
                slices.iter().filter(|((svc, _), _)| *svc == changed).map(|(_, s)| s.into()).collect();
            syncer.update([(("prop".to_owned(), format!("s{changed}")), service, its_slices.iter().collect())])
        };
        full_next = false;
        prop_assert_eq!(&syncer.writer().maps, syncer.current());
        match result {
            Ok(_) => {
                let after = &syncer.writer().maps;
                prop_assert_eq!(decode(after), expected(&translated(&svcs, &slcs, node)));
                prop_assert_eq!(syncer.writer().last_writes, minimal_writes(&before, after));
                prop_assert!(members_match_slots(after), "affinity members are the slot backends");
            }
            Err(_) => prop_assert!(syncer.needs_full(), "a failed write forces a full sync"),
        }
    }
    // Whatever happened, a full sync converges and a second finds nothing to write.
    let syncer = syncer.as_mut().unwrap();
    syncer.writer_mut().fail_after = None;
    let svcs: Vec<_> = services.values().cloned().collect();
    let slcs: Vec<_> = slices.values().cloned().collect();
    syncer.sync(&svcs, &records(&slcs)).unwrap();
    prop_assert_eq!(decode(&syncer.writer().maps), expected(&translated(&svcs, &slcs, node)));
    prop_assert_eq!(syncer.sync(&svcs, &records(&slcs)).unwrap().writes, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn sync_converges_minimally_safely_and_never_reuses_ids(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, &node())?;
    }

    #[test]
    fn dual_stack_sync_converges_minimally_safely_and_never_reuses_ids(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, &dual_stack_node())?;
    }
}
