//! Property: after any sequence of Service / EndpointSlice events, applied
//! incrementally (one Service at a time) or in full syncs, the maps
//! written by the diff writer hold exactly the translation of the final
//! state; each sync writes no more than the entries that changed; and no
//! intermediate state (after any single write) exposes a half-built
//! Service: every reachable slot names an existing backend, and every port
//! in use has its prefilter bit.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_common::port_filter;
use lb_userspace::{
    diff::{self, Write},
    encode::DesiredMaps,
    model::{NodeContext, ServiceTable},
    sync::{ApplyError, MapWriter, Syncer},
    translate,
};
use proptest::prelude::*;
use serde_json::json;

/// Applies writes to memory, checking the invariant after each one.
#[derive(Default)]
struct CheckingWriter {
    maps: DesiredMaps,
    last_writes: usize,
}

fn assert_consistent(maps: &DesiredMaps) {
    for (key, value) in maps.services.iter().filter(|(k, _)| k.backend_slot == 0) {
        assert!(
            maps.port_filter.get(&key.port).is_some_and(|b| b & port_filter::FRONTEND_PORT != 0),
            "frontend port {} without its prefilter bit",
            key.port
        );
        for slot in 1..=value.count {
            let entry = maps.services.get(&key.slot(slot)).unwrap_or_else(|| panic!("{key:?}: slot {slot} missing"));
            let backend = maps.backends.get(&entry.backend_id).unwrap_or_else(|| panic!("{key:?}: backend missing"));
            assert!(
                maps.port_filter.get(&backend.port).is_some_and(|b| b & port_filter::BACKEND_PORT != 0),
                "backend port {} without its prefilter bit",
                backend.port
            );
        }
    }
}

impl MapWriter for CheckingWriter {
    fn apply(&mut self, writes: &[Write]) -> Result<(), ApplyError> {
        for write in writes {
            diff::apply_to(&mut self.maps, std::slice::from_ref(write));
            assert_consistent(&self.maps);
        }
        self.last_writes = writes.len();
        Ok(())
    }
}

/// frontend (address, port, proto) → backends (address, port) in slot order.
type Decoded = BTreeMap<(std::net::IpAddr, u16, u8), Vec<(std::net::IpAddr, u16)>>;

fn decode(maps: &DesiredMaps) -> Decoded {
    maps.services
        .iter()
        .filter(|(k, _)| k.backend_slot == 0)
        .map(|(k, v)| {
            let backends = (1..=v.count)
                .map(|slot| {
                    let b = &maps.backends[&maps.services[&k.slot(slot)].backend_id];
                    (Ipv4Addr::from(b.address).into(), b.port)
                })
                .collect();
            ((Ipv4Addr::from(k.address).into(), k.port, k.proto), backends)
        })
        .collect()
}

fn expected(table: &ServiceTable) -> Decoded {
    table
        .frontends
        .iter()
        .map(|f| {
            let backends = f.backends.iter().map(|b| (b.address, b.port)).collect();
            ((f.address, f.port, f.protocol().number()), backends)
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
    let both_ways = before
        .port_filter
        .iter()
        .filter(|(port, old)| {
            let new = after.port_filter.get(port).copied().unwrap_or(0);
            new & !**old != 0 && **old & !new != 0
        })
        .count();
    changed(&before.services, &after.services)
        + changed(&before.backends, &after.backends)
        + changed(&before.port_filter, &after.port_filter)
        + both_ways
}

#[derive(Clone, Debug)]
enum Op {
    PutService { svc: usize, ports: Vec<(u16, &'static str, u16)> },
    DeleteService { svc: usize },
    PutSlice { svc: usize, slice: usize, endpoints: Vec<u8>, target: u16 },
    DeleteSlice { svc: usize, slice: usize },
}

const PORT_CHOICES: [(u16, &str, u16); 4] = [(80, "TCP", 8080), (53, "UDP", 5353), (53, "TCP", 5353), (443, "TCP", 8443)];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4usize, proptest::sample::subsequence(PORT_CHOICES.to_vec(), 0..=3))
            .prop_map(|(svc, ports)| Op::PutService { svc, ports }),
        (0..4usize).prop_map(|svc| Op::DeleteService { svc }),
        (0..4usize, 0..2usize, proptest::collection::vec(1u8..8, 0..5), prop_oneof![Just(8080u16), Just(5353), Just(8443), Just(9000)])
            .prop_map(|(svc, slice, endpoints, target)| Op::PutSlice { svc, slice, endpoints, target }),
        (0..4usize, 0..2usize).prop_map(|(svc, slice)| Op::DeleteSlice { svc, slice }),
    ]
}

fn service(svc: usize, ports: &[(u16, &str, u16)]) -> Service {
    let ports: Vec<_> = ports
        .iter()
        .map(|(port, proto, target)| json!({"name": format!("p{port}{proto}"), "port": port, "protocol": proto, "targetPort": target}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s{svc}"), "namespace": "prop"},
        "spec": {"clusterIP": format!("10.96.0.{}", svc + 1), "ports": ports}
    }))
    .unwrap()
}

fn slice(svc: usize, slice: usize, endpoints: &[u8], target: u16) -> EndpointSlice {
    let eps: Vec<_> = endpoints.iter().map(|e| json!({"addresses": [format!("10.244.0.{e}")], "conditions": {"ready": true}})).collect();
    let ports: Vec<_> = PORT_CHOICES
        .iter()
        .map(|(port, proto, _)| json!({"name": format!("p{port}{proto}"), "port": target, "protocol": proto}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("s{svc}-{slice}"), "namespace": "prop", "labels": {"kubernetes.io/service-name": format!("s{svc}")}},
        "addressType": "IPv4", "endpoints": eps, "ports": ports
    }))
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn diff_writer_converges_minimally_and_safely(ops in proptest::collection::vec(op(), 1..40)) {
        let node = NodeContext::default();
        let mut syncer = Syncer::new(CheckingWriter::default(), DesiredMaps::default(), node.clone());
        let mut services: BTreeMap<usize, Service> = BTreeMap::new();
        let mut slices: BTreeMap<(usize, usize), EndpointSlice> = BTreeMap::new();
        for (step, op) in ops.into_iter().enumerate() {
            let changed = match &op {
                Op::PutService { svc, .. } | Op::DeleteService { svc } | Op::PutSlice { svc, .. } | Op::DeleteSlice { svc, .. } => *svc,
            };
            match op {
                Op::PutService { svc, ports } => { services.insert(svc, service(svc, &ports)); }
                Op::DeleteService { svc } => { services.remove(&svc); }
                Op::PutSlice { svc, slice: s, endpoints, target } => { slices.insert((svc, s), slice(svc, s, &endpoints, target)); }
                Op::DeleteSlice { svc, slice: s } => { slices.remove(&(svc, s)); }
            }
            let svcs: Vec<_> = services.values().cloned().collect();
            let slcs: Vec<_> = slices.values().cloned().collect();
            let before = syncer.writer().maps.clone();
            // Mostly incremental updates of the one changed Service, now
            // and then a full sync; both must reach the same maps.
            if step % 5 == 4 {
                syncer.sync(&svcs, &slcs).unwrap();
            } else {
                let service = services.get(&changed);
                let its_slices: Vec<&EndpointSlice> =
                    slices.iter().filter(|((svc, _), _)| *svc == changed).map(|(_, s)| s).collect();
                syncer.update([(("prop".to_owned(), format!("s{changed}")), service, its_slices)]).unwrap();
            }
            let after = &syncer.writer().maps;
            prop_assert_eq!(after, syncer.current());
            prop_assert_eq!(decode(after), expected(&translate::translate(&svcs, &slcs, &node)));
            prop_assert_eq!(syncer.writer().last_writes, minimal_writes(&before, after));
        }
        // Incremental updates left nothing for a full sync to fix.
        let svcs: Vec<_> = services.values().cloned().collect();
        let slcs: Vec<_> = slices.values().cloned().collect();
        prop_assert_eq!(syncer.sync(&svcs, &slcs).unwrap().writes, 0);
    }
}
