//! Dual-stack Services through the whole pure pipeline (translate, state,
//! diff): each family's frontends go to that family's tables, built from
//! that family's EndpointSlices only; both share one id space without
//! ever sharing an id; and the IPv6 tables are written in the same safe
//! order as the IPv4 ones.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_common::{address_filter, port_filter, service::ServiceKeyV6};
use lb_userspace::{
    model::{IpFamily, NodeContext},
    state::HighestIds,
    sync::{ApplyError, MapWriter, Syncer},
    tables::{self, DesiredMaps, Write},
    translate::SliceRecord,
};
use serde_json::{Value, json};

const CLUSTER_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLUSTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa);
const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x192, 0x168, 0, 0, 0, 0, 0x10);

/// In-memory maps that check, after every single write, that no IPv6
/// frontend reaches a slot or backend that is not there yet (or any more).
#[derive(Default)]
struct Memory {
    maps: DesiredMaps,
    writes: Vec<Write>,
}

fn assert_v6_reachable_entries_exist(maps: &DesiredMaps) {
    for (key, value) in maps.services_v6.iter().filter(|(k, _)| k.backend_slot == 0) {
        assert!(maps.port_filter.get(&key.port).is_some_and(|b| b & port_filter::FRONTEND_PORT != 0));
        for slot in 1..=value.count {
            let entry = maps.services_v6.get(&key.slot(slot)).unwrap_or_else(|| panic!("{key:?}: slot {slot} missing"));
            let backend = maps.backends_v6.get(&entry.backend_id).unwrap_or_else(|| panic!("{key:?}: backend missing"));
            assert!(maps.port_filter.get(&backend.port).is_some_and(|b| b & port_filter::BACKEND_PORT != 0));
        }
    }
}

impl MapWriter for Memory {
    fn apply(&mut self, writes: &[Write]) -> Result<(), ApplyError> {
        for write in writes {
            tables::apply_to(&mut self.maps, std::slice::from_ref(write));
            assert_v6_reachable_entries_exist(&self.maps);
        }
        self.writes = writes.to_vec();
        Ok(())
    }

    fn read_all(&self) -> anyhow::Result<DesiredMaps> {
        Ok(self.maps.clone())
    }

    fn conntrack_highest_ids(&self) -> anyhow::Result<HighestIds> {
        Ok(HighestIds::default())
    }

    fn forget_affinity(&mut self, _: &BTreeSet<u32>) -> anyhow::Result<()> {
        Ok(())
    }
}

fn node() -> NodeContext {
    NodeContext {
        node_name: Some("node-a".into()),
        node_addresses: vec!["192.168.0.10".parse().unwrap(), IpAddr::V6(NODE_V6)],
        family: IpFamily::V4,
        dual_stack: true,
        ..NodeContext::default()
    }
}

/// A NodePort Service `web` (80 → 8080, node port 30080) with the cluster
/// IPs given, of the families given.
fn web(families: &[&str], cluster_ips: &[IpAddr]) -> Service {
    let ips: Vec<String> = cluster_ips.iter().map(ToString::to_string).collect();
    service(&json!({
        "type": "NodePort",
        "clusterIP": ips[0], "clusterIPs": ips, "ipFamilies": families,
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}],
    }))
}

fn service(spec: &Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

fn dual_stack() -> Service {
    web(&["IPv4", "IPv6"], &[CLUSTER_V4.into(), CLUSTER_V6.into()])
}

/// One ready endpoint on this node, in a slice of the address type given.
fn slice(name: &str, address_type: &str, address: &str) -> SliceRecord {
    serde_json::from_value::<EndpointSlice>(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": address_type,
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}, "nodeName": "node-a"}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap()
    .into()
}

fn slices() -> Vec<SliceRecord> {
    vec![slice("web-v4", "IPv4", "10.244.1.5"), slice("web-v6", "IPv6", "fd00:10:244::5")]
}

fn synced(services: &[Service], slices: &[SliceRecord]) -> Syncer<Memory> {
    let mut syncer = Syncer::new(Memory::default(), DesiredMaps::default(), node());
    let report = syncer.sync(services, slices).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    syncer
}

/// Each frontend of a table as "address:port → backends", backends by
/// address, in slot order.
fn v4_frontends(maps: &DesiredMaps) -> Vec<String> {
    let frontends = maps.services.iter().filter(|(k, _)| k.backend_slot == 0);
    frontends
        .map(|(key, value)| {
            let backends: Vec<String> = (1..=value.count)
                .map(|slot| {
                    let backend = &maps.backends[&maps.services[&key.slot(slot)].backend_id];
                    format!("{}:{}", Ipv4Addr::from(backend.address), backend.port)
                })
                .collect();
            format!("{}:{} → {}", Ipv4Addr::from(key.address), key.port, backends.join(","))
        })
        .collect()
}

fn v6_frontends(maps: &DesiredMaps) -> Vec<String> {
    let frontends = maps.services_v6.iter().filter(|(k, _)| k.backend_slot == 0);
    frontends
        .map(|(key, value)| {
            let backends: Vec<String> = (1..=value.count)
                .map(|slot| {
                    let backend = &maps.backends_v6[&maps.services_v6[&key.slot(slot)].backend_id];
                    format!("[{}]:{}", Ipv6Addr::from(backend.address), backend.port)
                })
                .collect();
            format!("[{}]:{} → {}", Ipv6Addr::from(key.address), key.port, backends.join(","))
        })
        .collect()
}

#[test]
fn a_dual_stack_service_fills_each_familys_tables_from_its_own_slices() {
    let syncer = synced(&[dual_stack()], &slices());
    let maps = &syncer.writer().maps;
    assert_eq!(v4_frontends(maps), ["10.96.0.10:80 → 10.244.1.5:8080", "192.168.0.10:30080 → 10.244.1.5:8080"]);
    assert_eq!(
        v6_frontends(maps),
        ["[fd00:10:96::a]:80 → [fd00:10:244::5]:8080", "[fd00:192:168::10]:30080 → [fd00:10:244::5]:8080"]
    );
    assert_eq!(maps.backends.len(), 1, "one IPv4 backend, from the IPv4 slice only");
    assert_eq!(maps.backends_v6.len(), 1, "one IPv6 backend, from the IPv6 slice only");
    for port in [80, 30080] {
        assert_eq!(maps.port_filter[&port], port_filter::FRONTEND_PORT);
    }
    assert_eq!(maps.port_filter[&8080], port_filter::BACKEND_PORT);
}

#[test]
fn an_ipv6_only_service_has_only_ipv6_entries() {
    let v6_only = web(&["IPv6"], &[CLUSTER_V6.into()]);
    let syncer = synced(&[v6_only], &slices());
    let maps = &syncer.writer().maps;
    assert!(maps.services.is_empty() && maps.backends.is_empty(), "{maps:?}");
    assert_eq!(v6_frontends(maps).len(), 2, "cluster IP and node port");
    assert_eq!(maps.port_filter.len(), 3, "80, 30080 and 8080");
}

#[test]
fn dropping_the_ipv6_family_removes_exactly_the_ipv6_entries() {
    let mut syncer = synced(&[dual_stack()], &slices());
    let before = syncer.writer().maps.clone();
    let v6_ids: BTreeSet<u32> = before.services_v6.values().map(|v| v.frontend_id).filter(|id| *id != 0).collect();
    let v4_only = web(&["IPv4"], &[CLUSTER_V4.into()]);
    syncer.sync(&[v4_only], &slices()).unwrap();
    let after = &syncer.writer().maps;
    assert!(after.services_v6.is_empty() && after.backends_v6.is_empty());
    // Everything of the IPv4 family stays as it was: entries, ids, port
    // bits; only the IPv6 frontends' Maglev tables go with them.
    let mut maglev = before.maglev.clone();
    maglev.retain(|id, _| !v6_ids.contains(id));
    assert_eq!(after.services, before.services);
    assert_eq!(after.backends, before.backends);
    assert_eq!((&after.ids, &after.port_filter), (&before.ids, &before.port_filter));
    assert!(after.maglev == maglev, "IPv4 tables kept, IPv6 ones gone");
    let writes = &syncer.writer().writes;
    // The address filter loses the IPv6 frontends' bits and keeps every
    // IPv4 frontend's.
    let cleared = |word: &u32, bits: &Option<u64>| {
        let old = before.address_filter.get(word).copied().unwrap_or(0);
        bits.unwrap_or(0) & !old == 0
    };
    let only_v6_deletions = writes.iter().all(|w| match w {
        Write::ServiceV6(_, None) | Write::BackendV6(_, None) => true,
        Write::Maglev(id, None) => v6_ids.contains(id),
        Write::AddressFilter(word, bits) => cleared(word, bits),
        _ => false,
    });
    assert!(only_v6_deletions, "{} writes", writes.len());
    for key in after.services.keys().filter(|k| k.backend_slot == 0) {
        let (word, mask) = address_filter::word_and_mask(address_filter::bit_v4(key.address));
        assert!(after.address_filter.get(&word).is_some_and(|bits| bits & mask != 0), "{key:?} keeps its bit");
    }
    let tables = writes.iter().filter(|w| matches!(w, Write::Maglev(..))).count();
    let filter_words = writes.iter().filter(|w| matches!(w, Write::AddressFilter(..))).count();
    assert!(filter_words <= 2, "at most one word per IPv6 frontend address");
    assert_eq!(
        writes.len(),
        4 + 1 + tables + filter_words,
        "two frontends and their slots, one backend, their tables, their filter bits"
    );
}

#[test]
fn ipv4_and_ipv6_backends_and_frontends_never_share_an_id() {
    // Backends on the same port, in both families, under both Services.
    let other = {
        let mut svc = dual_stack();
        svc.metadata.name = Some("api".into());
        let spec = svc.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.96.0.20".into());
        spec.cluster_ips = Some(vec!["10.96.0.20".into(), "fd00:10:96::14".into()]);
        spec.ports.as_mut().unwrap()[0].node_port = Some(30081);
        svc
    };
    let mut api_slices = slices();
    for slice in &mut api_slices {
        slice.metadata.name = Some(format!("api-{}", slice.address_type));
        slice.metadata.labels = Some([("kubernetes.io/service-name".to_owned(), "api".to_owned())].into());
        slice.endpoints[0].address =
            Some(if slice.address_type == "IPv4" { "10.244.1.6".into() } else { "fd00:10:244::6".into() });
    }
    let all_slices: Vec<SliceRecord> = slices().into_iter().chain(api_slices).collect();
    let syncer = synced(&[dual_stack(), other], &all_slices);
    let maps = &syncer.writer().maps;
    let v4: BTreeSet<u32> = maps.backends.keys().copied().collect();
    let v6: BTreeSet<u32> = maps.backends_v6.keys().copied().collect();
    assert_eq!((v4.len(), v6.len()), (2, 2));
    assert!(v4.is_disjoint(&v6), "{v4:?} {v6:?}");
    let frontend_ids: Vec<u32> = maps
        .services
        .values()
        .chain(maps.services_v6.values())
        .filter(|v| v.frontend_id != 0)
        .map(|v| v.frontend_id)
        .collect();
    let distinct: BTreeSet<u32> = frontend_ids.iter().copied().collect();
    assert_eq!((frontend_ids.len(), distinct.len()), (8, 8), "{frontend_ids:?}");
}

#[test]
fn a_restart_resumes_the_ipv6_tables_without_writing() {
    let syncer = synced(&[dual_stack()], &slices());
    let held = syncer.writer().maps.clone();
    let mut restarted = Syncer::new(Memory { maps: held.clone(), writes: Vec::new() }, held.clone(), node());
    let report = restarted.sync(&[dual_stack()], &slices()).unwrap();
    assert_eq!(report.writes, 0, "{:?}", restarted.writer().writes);
    assert_eq!(restarted.writer().maps, held);
}

#[test]
fn each_family_s_ranges_go_to_its_own_frontend_s_table() {
    let mut svc = dual_stack();
    let spec = svc.spec.as_mut().unwrap();
    spec.type_ = Some("LoadBalancer".into());
    spec.load_balancer_source_ranges = Some(vec!["203.0.113.0/24".into(), "2001:db8::/32".into()]);
    svc.status =
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"ip": "2001:db8:1::1"}]}}))
            .unwrap();
    let syncer = synced(&[svc], &slices());
    let maps = &syncer.writer().maps;
    let lb = ServiceKeyV6::frontend("2001:db8:1::1".parse::<Ipv6Addr>().unwrap().octets(), 80, 6);
    let v6 = maps.services_v6[&lb];
    assert_ne!(v6.flags & lb_common::service::FLAG_SOURCE_RANGES, 0);
    let lb_v4_id = maps.services.values().find(|v| v.flags & lb_common::service::FLAG_LOAD_BALANCER != 0).unwrap();
    assert!(
        maps.source_ranges.keys().all(|r| r.frontend_id == lb_v4_id.frontend_id.to_be_bytes()),
        "IPv4 range entries for the IPv4 frontend only: {:?}",
        maps.source_ranges
    );
    let v6_ranges: Vec<_> = maps.source_ranges_v6.keys().copied().collect();
    let expected = lb_common::source_ranges::SourceRangeKeyV6::range(
        v6.frontend_id,
        "2001:db8::".parse::<Ipv6Addr>().unwrap().octets(),
        32,
    );
    assert_eq!(v6_ranges, vec![expected], "the IPv6 range, for the IPv6 frontend");
}

#[test]
fn ipv6_frontends_get_their_metric_labels() {
    let syncer = synced(&[dual_stack()], &slices());
    let labels = syncer.frontend_labels().snapshot();
    let maps = &syncer.writer().maps;
    let v6: Vec<u32> = maps.services_v6.values().map(|v| v.frontend_id).filter(|id| *id != 0).collect();
    assert_eq!(v6.len(), 2);
    for id in v6 {
        let label = labels.get(&id).unwrap_or_else(|| panic!("frontend {id} has no label"));
        assert!(label.address.is_ipv6(), "{label:?}");
    }
    assert_eq!(labels.len(), 4, "both families' frontends");
}
