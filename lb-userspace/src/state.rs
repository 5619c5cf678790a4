//! The desired map contents, maintained incrementally, one Service at a
//! time (pure). For each Service it keeps the frontends it claims; for each
//! (address, port, protocol) the winning claim; for each winning frontend
//! its encoded entries; and reference counts for what frontends share
//! (backends, Service ids, port-filter bits). A change to one Service
//! touches only its frontends, and reports exactly which map keys may have
//! changed, so the diff and the writes stay proportional to the change.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use lb_common::{
    backend::{self, BackendV4},
    port_filter,
    service::{ServiceKeyV4, ServiceValue},
};

use crate::{
    encode::{self, DesiredMaps},
    model::{Frontend, Problem, ServicePortName},
    translate::{ClaimKey, conflict_problem},
};

/// A Service by (namespace, name).
pub type ServiceRef = (String, String);

/// (address, port, protocol number): what the datapath keys frontends by.
type Triple = (Ipv4Addr, u16, u8);

fn triple(f: &Frontend) -> Triple {
    (v4(f.address), f.port, f.protocol().number())
}

/// The IPv4 table only ever holds IPv4 frontends and backends.
fn v4(address: std::net::IpAddr) -> Ipv4Addr {
    match address {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(a) => panic!("IPv6 address {a} in the IPv4 table"),
    }
}

/// Map keys that may have changed since the last diff.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeSet<ServiceKeyV4>,
    pub backends: BTreeSet<u32>,
    pub ports: BTreeSet<u16>,
}

impl Touched {
    /// Every key of both maps: a full diff.
    pub fn all(a: &DesiredMaps, b: &DesiredMaps) -> Self {
        Self {
            services: a.services.keys().chain(b.services.keys()).copied().collect(),
            backends: a.backends.keys().chain(b.backends.keys()).copied().collect(),
            ports: a.port_filter.keys().chain(b.port_filter.keys()).copied().collect(),
        }
    }
}

/// A backend's identity: the same endpoint under several Services shares one id.
type BackendIdentity = (Ipv4Addr, u16, u8);

/// Reference-counted ids. Ids are never reused: a conntrack entry naming a
/// removed backend id must find nothing, never a different endpoint.
#[derive(Debug, Default)]
struct Ids {
    backends: HashMap<BackendIdentity, (u32, u32)>,
    services: HashMap<ServicePortName, (u32, u32)>,
    /// After a restart: ids the kernel already uses, to keep them.
    resumed_backends: HashMap<BackendIdentity, u32>,
    resumed_services: HashMap<ServiceKeyV4, u32>,
    next_backend: u32,
    next_service: u32,
}

impl Ids {
    fn resume(existing: &DesiredMaps) -> Self {
        let mut ids = Ids::default();
        for (&id, b) in &existing.backends {
            ids.resumed_backends.insert((Ipv4Addr::from(b.address), b.port, b.proto), id);
            ids.next_backend = ids.next_backend.max(id);
        }
        for (key, value) in existing.services.iter().filter(|(k, _)| k.backend_slot == 0) {
            ids.resumed_services.insert(*key, value.service_id);
            ids.next_service = ids.next_service.max(value.service_id);
        }
        ids
    }

    fn acquire_backend(&mut self, identity: BackendIdentity) -> (u32, bool) {
        let resumed = self.resumed_backends.get(&identity).copied();
        let next = &mut self.next_backend;
        let entry = self.backends.entry(identity).or_insert_with(|| {
            let id = resumed.unwrap_or_else(|| {
                *next += 1;
                *next
            });
            (id, 0)
        });
        entry.1 += 1;
        (entry.0, entry.1 == 1)
    }

    /// Returns the id if this was the last reference.
    fn release_backend(&mut self, identity: BackendIdentity) -> Option<u32> {
        let entry = self.backends.get_mut(&identity)?;
        entry.1 -= 1;
        if entry.1 > 0 {
            return None;
        }
        let id = entry.0;
        self.backends.remove(&identity);
        self.resumed_backends.remove(&identity);
        Some(id)
    }

    fn acquire_service(&mut self, name: &ServicePortName, key: &ServiceKeyV4) -> u32 {
        let resumed = self.resumed_services.get(key).copied();
        let next = &mut self.next_service;
        let entry = self.services.entry(name.clone()).or_insert_with(|| {
            let id = resumed.unwrap_or_else(|| {
                *next += 1;
                *next
            });
            (id, 0)
        });
        entry.1 += 1;
        entry.0
    }

    fn release_service(&mut self, name: &ServicePortName) {
        if let Some(entry) = self.services.get_mut(name) {
            entry.1 -= 1;
            if entry.1 == 0 {
                self.services.remove(name);
            }
        }
    }
}

/// What is encoded for one winning frontend.
#[derive(Debug, Clone)]
struct Encoded {
    service: ServicePortName,
    backends: Vec<BackendIdentity>,
}

#[derive(Debug, Default)]
pub struct DesiredState {
    per_service: HashMap<ServiceRef, (Vec<Frontend>, Vec<Problem>)>,
    claims: BTreeMap<Triple, BTreeMap<ClaimKey, Frontend>>,
    encoded: HashMap<Triple, Encoded>,
    ids: Ids,
    /// Per port: (frontends using it, backend slots using it).
    port_refs: HashMap<u16, (u32, u32)>,
    maps: DesiredMaps,
}

impl DesiredState {
    /// Starts empty, keeping the ids the kernel maps already use.
    pub fn resume(existing: &DesiredMaps) -> Self {
        Self { ids: Ids::resume(existing), ..Self::default() }
    }

    /// The full desired map contents.
    pub fn maps(&self) -> &DesiredMaps {
        &self.maps
    }

    /// Services with claims or problems.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRef> {
        self.per_service.keys()
    }

    pub fn frontend_count(&self) -> usize {
        self.encoded.len()
    }

    /// Replaces what one Service claims (empty: the Service is gone).
    pub fn set_service(&mut self, service: ServiceRef, frontends: Vec<Frontend>, problems: Vec<Problem>, touched: &mut Touched) {
        let old = self.per_service.remove(&service).map(|(f, _)| f).unwrap_or_default();
        let mut affected: BTreeSet<Triple> = BTreeSet::new();
        for f in &old {
            affected.insert(triple(f));
            if let Some(claims) = self.claims.get_mut(&triple(f)) {
                claims.remove(&ClaimKey::of(f));
                if claims.is_empty() {
                    self.claims.remove(&triple(f));
                }
            }
        }
        for f in &frontends {
            affected.insert(triple(f));
            self.claims.entry(triple(f)).or_default().insert(ClaimKey::of(f), f.clone());
        }
        if !frontends.is_empty() || !problems.is_empty() {
            self.per_service.insert(service, (frontends, problems));
        }
        for t in affected {
            self.reencode(t, touched);
        }
    }

    /// All problems: each Service's own, and claims that lost a conflict.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out: Vec<Problem> = self.per_service.values().flat_map(|(_, p)| p.iter().cloned()).collect();
        for claims in self.claims.values().filter(|c| c.len() > 1) {
            let mut it = claims.values();
            let owner = it.next().expect("non-empty");
            out.extend(it.map(|loser| conflict_problem(owner, loser)));
        }
        out.sort();
        out.dedup();
        out
    }

    /// Re-derives the entries of one frontend from its winning claim.
    /// The new encoding acquires its references before the old one
    /// releases them, so a backend kept across the change keeps its id.
    fn reencode(&mut self, t: Triple, touched: &mut Touched) {
        let key = ServiceKeyV4::frontend(t.0.octets(), t.1, t.2);
        let winner = self.claims.get(&t).and_then(|c| c.values().next()).cloned();
        let old = self.encoded.remove(&t);
        let old_count = old.as_ref().map_or(0, |e| e.backends.len());
        if let Some(frontend) = winner {
            let encoded = self.encode_frontend(key, &frontend, touched);
            self.encoded.insert(t, encoded);
        } else {
            self.maps.services.remove(&key);
        }
        touched.services.insert(key);
        let new_count = self.encoded.get(&t).map_or(0, |e| e.backends.len());
        for slot in (new_count + 1)..=old_count {
            let slot_key = key.slot(slot as u16);
            self.maps.services.remove(&slot_key);
            touched.services.insert(slot_key);
        }
        if let Some(old) = old {
            self.release(&old, key.port, touched);
        }
    }

    fn encode_frontend(&mut self, key: ServiceKeyV4, frontend: &Frontend, touched: &mut Touched) -> Encoded {
        let proto = key.proto;
        let backends: Vec<BackendIdentity> = frontend
            .backends
            .iter()
            .take(usize::from(u16::MAX))
            .map(|b| (v4(b.address), b.port, proto))
            .collect();
        for (slot, (b, identity)) in (1u16..).zip(frontend.backends.iter().zip(&backends)) {
            let (id, first) = self.ids.acquire_backend(*identity);
            if first {
                self.add_port_ref(b.port, false, touched);
            }
            // Written even when shared: its flags (terminating) may change.
            let flags = if b.terminating { backend::FLAG_TERMINATING } else { 0 };
            self.maps.backends.insert(id, BackendV4 { address: v4(b.address).octets(), port: b.port, proto, flags });
            touched.backends.insert(id);
            let slot_key = key.slot(slot);
            self.maps.services.insert(slot_key, ServiceValue { backend_id: id, ..Default::default() });
            touched.services.insert(slot_key);
        }
        let service_id = self.ids.acquire_service(&frontend.service, &key);
        self.maps.services.insert(key, encode::frontend_value(frontend, service_id, backends.len() as u16));
        self.add_port_ref(key.port, true, touched);
        Encoded { service: frontend.service.clone(), backends }
    }

    fn release(&mut self, old: &Encoded, frontend_port: u16, touched: &mut Touched) {
        for identity in &old.backends {
            if let Some(id) = self.ids.release_backend(*identity) {
                self.maps.backends.remove(&id);
                touched.backends.insert(id);
                self.remove_port_ref(identity.1, false, touched);
            }
        }
        self.ids.release_service(&old.service);
        self.remove_port_ref(frontend_port, true, touched);
    }

    fn add_port_ref(&mut self, port: u16, frontend: bool, touched: &mut Touched) {
        let refs = self.port_refs.entry(port).or_default();
        if frontend { refs.0 += 1 } else { refs.1 += 1 }
        self.refresh_port(port, touched);
    }

    fn remove_port_ref(&mut self, port: u16, frontend: bool, touched: &mut Touched) {
        if let Some(refs) = self.port_refs.get_mut(&port) {
            if frontend { refs.0 -= 1 } else { refs.1 -= 1 }
        }
        self.refresh_port(port, touched);
    }

    fn refresh_port(&mut self, port: u16, touched: &mut Touched) {
        let (frontends, backends) = self.port_refs.get(&port).copied().unwrap_or_default();
        let bits = if frontends > 0 { port_filter::FRONTEND_PORT } else { 0 }
            | if backends > 0 { port_filter::BACKEND_PORT } else { 0 };
        if bits == 0 {
            self.port_refs.remove(&port);
            self.maps.port_filter.remove(&port);
        } else {
            self.maps.port_filter.insert(port, bits);
        }
        touched.ports.insert(port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, FrontendKind, Protocol};

    fn web(backends: &[u8]) -> Vec<Frontend> {
        let service = ServicePortName { namespace: "ns".into(), name: "web".into(), port: "http".into(), protocol: Protocol::Tcp };
        let backends = backends.iter().map(|&i| Backend { address: Ipv4Addr::new(10, 244, 0, i).into(), port: 8080, terminating: false }).collect();
        vec![Frontend {
            service,
            kind: FrontendKind::ClusterIp,
            address: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 80,
            backends,
            when_empty: crate::model::WhenEmpty::Reject,
            affinity_timeout_s: Some(30),
            local_only: false,
        }]
    }

    fn web_ref() -> ServiceRef {
        ("ns".into(), "web".into())
    }

    fn set(state: &mut DesiredState, backends: &[u8]) -> Touched {
        let mut touched = Touched::default();
        state.set_service(web_ref(), web(backends), vec![], &mut touched);
        touched
    }

    fn id_of(maps: &DesiredMaps, last_octet: u8) -> Option<u32> {
        maps.backends.iter().find(|(_, b)| b.address == [10, 244, 0, last_octet]).map(|(id, _)| *id)
    }

    const WEB: ServiceKeyV4 = ServiceKeyV4::frontend([10, 96, 0, 10], 80, 6);

    #[test]
    fn frontend_entry_carries_count_flags_and_affinity() {
        let mut state = DesiredState::default();
        set(&mut state, &[1, 2]);
        let frontend = state.maps().services[&WEB];
        assert_eq!(frontend.count, 2);
        assert_eq!(frontend.flags, lb_common::service::FLAG_CLUSTER_IP | lb_common::service::FLAG_SESSION_AFFINITY);
        assert_eq!(frontend.affinity_timeout_s, 30);
        assert_ne!(frontend.service_id, 0);
        assert_eq!(state.maps().port_filter[&80], port_filter::FRONTEND_PORT);
        assert_eq!(state.maps().port_filter[&8080], port_filter::BACKEND_PORT);
    }

    #[test]
    fn backend_ids_stay_stable_while_the_backend_exists() {
        let mut state = DesiredState::default();
        set(&mut state, &[1, 2, 3]);
        let before = state.maps().clone();
        set(&mut state, &[2, 3, 4]);
        assert_eq!(id_of(&before, 2), id_of(state.maps(), 2));
        assert_eq!(id_of(&before, 3), id_of(state.maps(), 3));
        assert_eq!(id_of(state.maps(), 1), None, "removed backend is gone");
    }

    #[test]
    fn a_removed_backend_id_is_never_reused() {
        let mut state = DesiredState::default();
        set(&mut state, &[1]);
        let first = id_of(state.maps(), 1);
        set(&mut state, &[]);
        set(&mut state, &[5]);
        assert_ne!(first, id_of(state.maps(), 5));
    }

    #[test]
    fn a_change_touches_only_the_changed_service() {
        let mut state = DesiredState::default();
        set(&mut state, &[1, 2]);
        let mut touched = Touched::default();
        let mut other = web(&[9]);
        other[0].address = Ipv4Addr::new(10, 96, 0, 99).into();
        other[0].service.name = "other".into();
        state.set_service(("ns".into(), "other".into()), other, vec![], &mut touched);
        assert!(touched.services.iter().all(|k| k.address == [10, 96, 0, 99]), "{touched:?}");
        assert!(!touched.services.contains(&WEB));
    }

    #[test]
    fn restart_resumes_ids_from_the_maps() {
        let mut before = DesiredState::default();
        set(&mut before, &[1, 2]);
        let mut resumed = DesiredState::resume(before.maps());
        set(&mut resumed, &[1, 2, 3]);
        assert_eq!(id_of(before.maps(), 1), id_of(resumed.maps(), 1));
        assert_eq!(before.maps().services[&WEB].service_id, resumed.maps().services[&WEB].service_id);
        assert!(id_of(resumed.maps(), 3) > id_of(before.maps(), 2), "new ids come after resumed ones");
    }
}
