//! ServiceTable → map entries (pure). Assigns backend and service ids that
//! stay stable across syncs, so conntrack entries (which store a backend
//! id) keep meaning the same endpoint.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use lb_common::{
    backend::{self, BackendV4},
    port_filter,
    service::{self, ServiceKeyV4, ServiceValue},
};

use crate::model::{Frontend, FrontendKind, ServicePortName, ServiceTable};

/// Everything the kernel maps should hold, in map-entry form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredMaps {
    /// Frontend entries (slot 0) and backend slots.
    pub services: BTreeMap<ServiceKeyV4, ServiceValue>,
    pub backends: BTreeMap<u32, BackendV4>,
    /// Non-zero port filter bits by port.
    pub port_filter: BTreeMap<u16, u8>,
}

/// A backend's identity: the same endpoint under several Services shares one id.
type BackendIdentity = (Ipv4Addr, u16, u8);

/// Hands out ids. Ids are never reused while the allocator lives: a
/// conntrack entry naming a removed backend id must find nothing, never a
/// different endpoint.
#[derive(Clone, Debug, Default)]
pub struct IdAllocator {
    backends: HashMap<BackendIdentity, u32>,
    services: HashMap<ServicePortName, u32>,
    /// Ids already in the kernel for frontends the agent has not named yet
    /// (after a restart), so a Service keeps its id.
    services_by_frontend: HashMap<ServiceKeyV4, u32>,
    next_backend: u32,
    next_service: u32,
}

impl IdAllocator {
    /// Resumes from what the kernel maps hold (after an agent restart).
    pub fn resume(existing: &DesiredMaps) -> Self {
        let mut ids = Self::default();
        for (&id, b) in &existing.backends {
            ids.backends.insert((Ipv4Addr::from(b.address), b.port, b.proto), id);
            ids.next_backend = ids.next_backend.max(id);
        }
        for (key, value) in existing.services.iter().filter(|(k, _)| k.backend_slot == 0) {
            ids.services_by_frontend.insert(*key, value.service_id);
            ids.next_service = ids.next_service.max(value.service_id);
        }
        ids
    }

    fn backend_id(&mut self, identity: BackendIdentity) -> u32 {
        *self.backends.entry(identity).or_insert_with(|| {
            self.next_backend += 1;
            self.next_backend
        })
    }

    fn service_id(&mut self, name: &ServicePortName, frontend_key: &ServiceKeyV4) -> u32 {
        if let Some(&id) = self.services.get(name) {
            return id;
        }
        let id = match self.services_by_frontend.get(frontend_key) {
            Some(&id) => id,
            None => {
                self.next_service += 1;
                self.next_service
            }
        };
        self.services.insert(name.clone(), id);
        id
    }

    /// Forgets backends and services that are no longer desired, so the
    /// allocator does not grow without bound. Their ids are not reused.
    fn retain(&mut self, desired: &DesiredMaps, table: &ServiceTable) {
        let live: std::collections::HashSet<BackendIdentity> = desired
            .backends
            .values()
            .map(|b| (Ipv4Addr::from(b.address), b.port, b.proto))
            .collect();
        self.backends.retain(|identity, _| live.contains(identity));
        let names: std::collections::HashSet<&ServicePortName> =
            table.frontends.iter().map(|f| &f.service).collect();
        self.services.retain(|name, _| names.contains(name));
        self.services_by_frontend.clear();
    }
}

fn frontend_flags(frontend: &Frontend) -> u16 {
    let kind = match frontend.kind {
        FrontendKind::ClusterIp => service::FLAG_CLUSTER_IP,
        FrontendKind::NodePort => service::FLAG_NODE_PORT,
        FrontendKind::ExternalIp => service::FLAG_EXTERNAL_IP,
        FrontendKind::LoadBalancer => service::FLAG_LOAD_BALANCER,
    };
    let affinity = if frontend.affinity_timeout_s.is_some() { service::FLAG_SESSION_AFFINITY } else { 0 };
    let local = if frontend.local_only { service::FLAG_LOCAL_ONLY } else { 0 };
    kind | affinity | local
}

/// Encodes the table. Frontends with more backends than a slot index can
/// address keep the first `u16::MAX` (sorted) ones.
pub fn encode(table: &ServiceTable, ids: &mut IdAllocator) -> DesiredMaps {
    let mut out = DesiredMaps::default();
    for frontend in &table.frontends {
        let proto = frontend.protocol().number();
        let key = ServiceKeyV4::frontend(frontend.address.octets(), frontend.port, proto);
        let backends = &frontend.backends[..frontend.backends.len().min(usize::from(u16::MAX))];
        for (slot, b) in (1u16..).zip(backends) {
            let backend_id = ids.backend_id((b.address, b.port, proto));
            let flags = if b.terminating { backend::FLAG_TERMINATING } else { 0 };
            let entry = BackendV4 { address: b.address.octets(), port: b.port, proto, flags };
            out.backends.insert(backend_id, entry);
            out.services.insert(key.slot(slot), ServiceValue { backend_id, ..Default::default() });
            *out.port_filter.entry(b.port).or_default() |= port_filter::BACKEND_PORT;
        }
        let value = ServiceValue {
            backend_id: 0,
            service_id: ids.service_id(&frontend.service, &key),
            count: backends.len() as u16,
            flags: frontend_flags(frontend),
            affinity_timeout_s: frontend.affinity_timeout_s.unwrap_or(0),
        };
        out.services.insert(key, value);
        *out.port_filter.entry(frontend.port).or_default() |= port_filter::FRONTEND_PORT;
    }
    ids.retain(&out, table);
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{Backend, Protocol};

    fn table(backends: &[u8]) -> ServiceTable {
        let service = ServicePortName { namespace: "ns".into(), name: "web".into(), port: "http".into(), protocol: Protocol::Tcp };
        let backends = backends.iter().map(|&i| Backend { address: Ipv4Addr::new(10, 244, 0, i), port: 8080, terminating: false }).collect();
        ServiceTable {
            frontends: vec![Frontend {
                service,
                kind: FrontendKind::ClusterIp,
                address: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                backends,
                affinity_timeout_s: Some(30),
                local_only: false,
            }],
            problems: vec![],
        }
    }

    fn id_of(maps: &DesiredMaps, last_octet: u8) -> Option<u32> {
        maps.backends.iter().find(|(_, b)| b.address == [10, 244, 0, last_octet]).map(|(id, _)| *id)
    }

    #[test]
    fn frontend_entry_carries_count_flags_and_affinity() {
        let maps = encode(&table(&[1, 2]), &mut IdAllocator::default());
        let frontend = maps.services[&ServiceKeyV4::frontend([10, 96, 0, 10], 80, 6)];
        assert_eq!(frontend.count, 2);
        assert_eq!(frontend.flags, service::FLAG_CLUSTER_IP | service::FLAG_SESSION_AFFINITY);
        assert_eq!(frontend.affinity_timeout_s, 30);
        assert_ne!(frontend.service_id, 0);
        assert_eq!(maps.port_filter[&80], port_filter::FRONTEND_PORT);
        assert_eq!(maps.port_filter[&8080], port_filter::BACKEND_PORT);
    }

    #[test]
    fn backend_ids_stay_stable_while_the_backend_exists() {
        let mut ids = IdAllocator::default();
        let first = encode(&table(&[1, 2, 3]), &mut ids);
        let second = encode(&table(&[2, 3, 4]), &mut ids);
        assert_eq!(id_of(&first, 2), id_of(&second, 2));
        assert_eq!(id_of(&first, 3), id_of(&second, 3));
    }

    #[test]
    fn a_removed_backend_id_is_never_reused() {
        let mut ids = IdAllocator::default();
        let first = encode(&table(&[1]), &mut ids);
        encode(&table(&[]), &mut ids);
        let third = encode(&table(&[5]), &mut ids);
        assert_ne!(id_of(&first, 1), id_of(&third, 5));
    }

    #[test]
    fn restart_resumes_ids_from_the_maps() {
        let before = encode(&table(&[1, 2]), &mut IdAllocator::default());
        let mut resumed = IdAllocator::resume(&before);
        let after = encode(&table(&[1, 2, 3]), &mut resumed);
        assert_eq!(id_of(&before, 1), id_of(&after, 1));
        let frontend = ServiceKeyV4::frontend([10, 96, 0, 10], 80, 6);
        assert_eq!(before.services[&frontend].service_id, after.services[&frontend].service_id);
        assert!(id_of(&after, 3) > id_of(&before, 2), "new ids come after resumed ones");
    }
}
