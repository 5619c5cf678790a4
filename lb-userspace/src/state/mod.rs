//! The desired map contents, maintained incrementally one Service at a
//! time (pure). A change to one Service re-encodes only the frontends whose
//! winning claim may have changed, and records exactly the map keys whose
//! desired value changed, so the diff and the writes stay proportional to
//! the change.
//!
//! - [`Claims`]: which Service owns each (address, port, protocol).
//! - [`ids`]: backend and frontend ids, never handed out twice.
//! - [`slots`]: stable backend slots.
//! - [`ports`]: port-filter bits by reference count.
//! - [`family`]: which family's table an entry goes to.
//!
//! After an agent restart, [`DesiredState::resume`] takes over what the
//! pinned maps hold: the id counters, each frontend's id and slot order,
//! each backend's id. So a restart with nothing changed writes nothing,
//! and a backend kept across a restart keeps its id and slot.

mod addresses;
mod backends;
mod family;
mod ids;
pub mod labels;
mod ports;
mod slots;

use std::collections::{BTreeMap, HashMap};

use lb_common::{
    affinity::{self, AffinityMemberKeyV4},
    ids as counters,
    service::ServiceValue,
    source_ranges::{self, SourceRangeKeyV4, SourceRangeKeyV6},
};

use self::{
    addresses::AddressRefs,
    backends::{BackendIdentity, BackendRefs, Lifecycle, SlotBackend},
    family::ServiceKey,
    ids::IdCounter,
    labels::{FrontendLabel, FrontendLabels},
    ports::{PortRefs, PortUse},
};
pub use crate::translate::ServiceRef;
use crate::{
    encode,
    maglev::TableCache,
    model::{Backend, Balancing, Frontend, IpFamily, Problem},
    tables::{DesiredMaps, Touched},
    translate::{Claims, FrontendAddr},
};

/// What is encoded for one served frontend.
#[derive(Debug, Clone)]
struct Encoded {
    frontend_id: u32,
    slots: Vec<SlotBackend>,
    /// Backends kept for established flows only (no slot).
    draining: Vec<SlotBackend>,
    /// Its `LB4_SRC_RANGES` entries.
    ranges: Vec<SourceRangeKeyV4>,
    /// Its `LB6_SRC_RANGES` entries (an IPv6 frontend's).
    ranges_v6: Vec<SourceRangeKeyV6>,
    /// Its `LB4_AFF_MEMBERS` entries (ClientIP affinity frontends only).
    members: Vec<AffinityMemberKeyV4>,
}

#[derive(Debug, Default)]
pub struct DesiredState {
    claims: Claims,
    problems: HashMap<ServiceRef, Vec<Problem>>,
    encoded: HashMap<ServiceKey, Encoded>,
    /// Frontends the maps held when the agent started, not claimed again yet.
    resumed: HashMap<ServiceKey, Encoded>,
    backends: BackendRefs,
    frontend_ids: IdCounter,
    ports: PortRefs,
    addresses: AddressRefs,
    maps: DesiredMaps,
    touched: Touched,
    /// How many Maglev tables the kernel map holds (`--maglev-max`);
    /// `None`: no limit known.
    maglev_budget: Option<usize>,
    /// Maglev frontends that got no table because the budget was used up:
    /// they balance with the slot hash until a table is free (reported).
    maglev_fallbacks: HashMap<ServiceKey, (FrontendAddr, Problem)>,
    /// Maglev tables by backends, shared between frontends.
    maglev_tables: TableCache,
    /// Who each served frontend id belongs to (metric labels).
    labels: FrontendLabels,
}

/// Ids the conntrack table names, for maps pinned before the id counters
/// were: the counters then resume above these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HighestIds {
    pub backend: u32,
    pub frontend: u32,
}

impl DesiredState {
    /// Starts from what the kernel maps hold (empty on a first start).
    pub fn resume(existing: &DesiredMaps, conntrack: HighestIds) -> Self {
        let counter = |index| existing.ids.get(&index).copied().unwrap_or(0);
        let highest_backend = family::backends(existing).map(|(id, _)| id).max().unwrap_or(0);
        let mut state = DesiredState {
            backends: BackendRefs::resume(
                existing,
                counter(counters::LAST_BACKEND_ID).max(highest_backend).max(conntrack.backend),
            ),
            ..Self::default()
        };
        let mut last_frontend = counter(counters::LAST_FRONTEND_ID).max(conntrack.frontend);
        for (key, value) in family::frontends(existing) {
            last_frontend = last_frontend.max(value.frontend_id);
            let slots: Option<Vec<SlotBackend>> =
                (1..=value.count).map(|slot| state.backends.resumed_slot(existing, key.slot(slot))).collect();
            // A frontend with a missing slot or backend is rebuilt from scratch.
            let slots = slots.unwrap_or_default();
            state.resumed.insert(
                key,
                Encoded {
                    frontend_id: value.frontend_id,
                    slots,
                    draining: Vec::new(),
                    // Whatever the maps hold beyond what is written again
                    // goes with the first (full) sync's diff.
                    ranges: Vec::new(),
                    ranges_v6: Vec::new(),
                    members: Vec::new(),
                },
            );
        }
        state.frontend_ids = IdCounter::resume(last_frontend);
        state.record_counters();
        state
    }

    /// The full desired map contents.
    pub fn maps(&self) -> &DesiredMaps {
        &self.maps
    }

    /// The keys whose desired value changed since the last call.
    pub fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
    }

    /// Services with claims or problems.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRef> {
        self.claims.services().chain(self.problems.keys().filter(|s| !self.claims.has_service(s)))
    }

    /// (frontend id, backend id) of every endpoint each served frontend of
    /// protocol `proto` lists, chosen for new flows or draining.
    pub fn listed_pairs(&self, proto: u8) -> std::collections::BTreeSet<(u32, u32)> {
        self.encoded
            .iter()
            .filter(|(key, _)| key.proto() == proto)
            .flat_map(|(_, e)| e.slots.iter().chain(&e.draining).map(move |b| (e.frontend_id, b.identity)))
            .filter_map(|(frontend_id, identity)| Some((frontend_id, self.backends.id(identity)?)))
            .collect()
    }

    pub fn frontend_count(&self) -> usize {
        self.encoded.len()
    }

    /// Who each served frontend id belongs to.
    pub fn frontend_labels(&self) -> &FrontendLabels {
        &self.labels
    }

    /// Replaces what one Service claims (nothing: the Service is gone).
    pub fn set_service(&mut self, service: ServiceRef, frontends: Vec<Frontend>, problems: Vec<Problem>) {
        let affected = self.claims.set_service(&service, frontends);
        if problems.is_empty() {
            self.problems.remove(&service);
        } else {
            self.problems.insert(service, problems);
        }
        for address in affected {
            self.reencode(address);
        }
        self.retry_maglev_fallbacks();
    }

    /// Runs ahead, on every core, the Maglev population loops that
    /// setting these frontends will need: those of Maglev frontends whose
    /// slot backends differ from what is encoded (a frontend encoded over
    /// the same backends keeps its table). Call before setting a batch of
    /// Services, and [`DesiredState::end_prefill`] after.
    pub fn prefill_maglev<'a>(&mut self, frontends: impl IntoIterator<Item = &'a Frontend>) {
        let mut sets = Vec::new();
        for outer in frontends {
            let key = ServiceKey::frontend(outer.address, outer.port, outer.protocol().number());
            let inner = outer.in_cluster.as_deref().map(|frontend| (key.in_cluster(), frontend));
            for (key, frontend) in std::iter::once((key, outer)).chain(inner) {
                if frontend.balancing != Balancing::Maglev {
                    continue;
                }
                let wanted = sorted_endpoints(wanted_slots(frontend, key));
                let unchanged = self
                    .encoded
                    .get(&key)
                    .is_some_and(|encoded| sorted_endpoints(encoded.slots.iter().copied()) == wanted);
                if !unchanged {
                    sets.push(wanted);
                }
            }
        }
        self.maglev_tables.prefill(sets);
    }

    /// Frees the loops [`DesiredState::prefill_maglev`] ran that no table
    /// took.
    pub fn end_prefill(&mut self) {
        self.maglev_tables.drop_prefilled();
    }

    /// Gives frontends that fell back to the slot hash the tables freed
    /// since (a frontend re-encodes only when its claim changes, so they
    /// would otherwise wait for a change of their own).
    fn retry_maglev_fallbacks(&mut self) {
        let Some(budget) = self.maglev_budget else { return };
        let free = budget.saturating_sub(self.maps.maglev.len());
        let retry: Vec<FrontendAddr> = self.maglev_fallbacks.values().map(|(address, _)| *address).take(free).collect();
        for address in retry {
            self.reencode(address);
        }
    }

    /// All problems: each Service's own, and claims that lost a conflict.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out: Vec<Problem> = self.problems.values().flatten().cloned().collect();
        out.extend(self.claims.conflicts());
        out.extend(self.maglev_fallbacks.values().map(|(_, problem)| problem.clone()));
        out.sort();
        out.dedup();
        out
    }

    /// Re-derives the entries of one frontend from its winning claim.
    fn reencode(&mut self, address: FrontendAddr) {
        let key = ServiceKey::frontend(address.address, address.port, address.protocol.number());
        let winner = self.claims.winner(&address).cloned();
        // The in-cluster entry goes in after the frontend whose flag points
        // to it; until then Pods get the frontend itself (see the datapath).
        match &winner {
            Some(frontend) => self.put_frontend(key, frontend),
            None => self.remove_frontend(key),
        }
        match winner.and_then(|frontend| frontend.in_cluster) {
            Some(in_cluster) => self.put_frontend(key.in_cluster(), &in_cluster),
            None => self.remove_frontend(key.in_cluster()),
        }
    }

    /// The cluster's Pod CIDRs, as `LB4_POD_CIDRS` and `LB6_POD_CIDRS`
    /// must hold them.
    pub fn set_pod_cidrs(&mut self, cidrs: &[ipnet::IpNet]) {
        set_pod_cidr_keys(&mut self.maps.pod_cidrs, &mut self.touched.pod_cidrs, encode::pod_cidr_keys(cidrs));
        set_pod_cidr_keys(&mut self.maps.pod_cidrs_v6, &mut self.touched.pod_cidrs_v6, encode::pod_cidr_keys_v6(cidrs));
    }

    fn put_frontend(&mut self, key: ServiceKey, frontend: &Frontend) {
        let owned = self.encoded.remove(&key);
        let taken_over = if owned.is_none() {
            // Newly served (or taken over from the maps): one more frontend
            // on this port and at this address.
            self.change_port(key.port(), PortUse::Frontend, true);
            self.change_address(key, true);
            self.resumed.remove(&key)
        } else {
            None
        };
        let frontend_id = match (&owned, &taken_over) {
            (Some(owned), _) => owned.frontend_id,
            (None, Some(taken_over)) => {
                self.frontend_ids.adopt(taken_over.frontend_id);
                taken_over.frontend_id
            }
            (None, None) => self.frontend_ids.allocate(),
        };
        self.labels.set(frontend_id, FrontendLabel::of(frontend));
        let wanted: Vec<SlotBackend> = wanted_slots(frontend, key).collect();
        let draining: Vec<SlotBackend> = slot_backends(&frontend.draining, key).collect();
        let old_slots: &[SlotBackend] = owned.as_ref().or(taken_over.as_ref()).map_or(&[], |old| &old.slots);
        let slots = slots::reassign(old_slots, &wanted);
        // New references before old ones go, so a kept backend keeps its id.
        let mut slot_ids = Vec::with_capacity(slots.len());
        for (slot, backend) in (1u16..).zip(&slots) {
            let id = self.acquire_backend(*backend);
            slot_ids.push((backend.identity.endpoint(), id));
            let entry = ServiceValue { backend_id: id, ..Default::default() };
            self.set_service_entry(key.slot(slot), Some(entry));
        }
        for backend in &draining {
            self.acquire_backend(*backend);
        }
        for slot in slots.len() + 1..=old_slots.len() {
            self.set_service_entry(key.slot(slot as u16), None);
        }
        let old_members = owned.as_ref().map_or(&[][..], |o| &o.members);
        let members = self.put_affinity_members(frontend, frontend_id, &slot_ids, old_members);
        let (ranges, ranges_v6) = match key.family() {
            IpFamily::V4 => {
                let old_ranges = owned.as_ref().map_or(&[][..], |o| &o.ranges);
                let new_ranges = encode::source_range_keys(frontend, frontend_id);
                let ranges =
                    put_keys(&mut self.maps.source_ranges, &mut self.touched.source_ranges, new_ranges, old_ranges);
                (ranges, Vec::new())
            }
            IpFamily::V6 => {
                let old = owned.as_ref().map_or(&[][..], |o| &o.ranges_v6);
                let new = encode::source_range_keys_v6(frontend, frontend_id);
                let ranges = put_keys(&mut self.maps.source_ranges_v6, &mut self.touched.source_ranges_v6, new, old);
                (Vec::new(), ranges)
            }
        };
        // A table depends only on the slot backends: the periodic full
        // sync re-encodes every frontend, and need not rebuild them all.
        let same_backends = owned.as_ref().is_some_and(|o| o.slots == slots);
        let has_table = self.maps.maglev.contains_key(&frontend_id);
        let wants_table = self.maglev_table_allowed(key, frontend, has_table, !slots.is_empty());
        if !same_backends || has_table != wants_table {
            let table =
                if wants_table { encode::maglev_table(frontend, &slot_ids, &mut self.maglev_tables) } else { None };
            set(&mut self.maps.maglev, &mut self.touched.maglev, frontend_id, table);
        }
        let mut value = encode::frontend_value(frontend, frontend_id, slots.len() as u16);
        if !wants_table {
            value.flags &= !lb_common::service::FLAG_MAGLEV;
        }
        self.set_service_entry(key, Some(value));
        for backend in owned.iter().flat_map(|o| o.slots.iter().chain(&o.draining)) {
            self.release_backend(*backend);
        }
        self.encoded.insert(key, Encoded { frontend_id, slots, draining, ranges, ranges_v6, members });
        self.record_counters();
    }

    /// Caps the Maglev tables at what the kernel map holds.
    pub fn set_maglev_budget(&mut self, tables: usize) {
        self.maglev_budget = Some(tables);
    }

    /// Whether a frontend gets a Maglev table: it asks for one and has
    /// backends, and either has a table already or one is free. A full
    /// table map must not stop the sync: the frontend balances with the
    /// slot hash instead, reported, and gets a table at a later sync once
    /// one is free.
    fn maglev_table_allowed(
        &mut self,
        key: ServiceKey,
        frontend: &Frontend,
        has_table: bool,
        has_backends: bool,
    ) -> bool {
        let wanted = frontend.balancing == Balancing::Maglev && has_backends;
        let full = self.maglev_budget.is_some_and(|budget| self.maps.maglev.len() >= budget);
        if !wanted || has_table || !full {
            self.maglev_fallbacks.remove(&key);
            return wanted;
        }
        let message = format!(
            "{} uses the slot hash: every Maglev table is in use (--maglev-max {})",
            std::net::SocketAddr::new(frontend.address, frontend.port),
            self.maglev_budget.unwrap_or_default()
        );
        let problem = Problem {
            kind: "Service",
            namespace: frontend.service.namespace.clone(),
            name: frontend.service.name.clone(),
            message,
        };
        self.maglev_fallbacks.insert(key, (FrontendAddr::of(frontend), problem));
        false
    }

    /// Writes a ClientIP affinity frontend's member backends, removes those
    /// it no longer chooses (or all, when affinity is off), and returns
    /// what it has now.
    fn put_affinity_members(
        &mut self,
        frontend: &Frontend,
        frontend_id: u32,
        slot_ids: &[(crate::maglev::Endpoint, u32)],
        old: &[AffinityMemberKeyV4],
    ) -> Vec<AffinityMemberKeyV4> {
        let ids: Vec<u32> = slot_ids.iter().map(|(_, id)| *id).collect();
        let members = encode::affinity_member_keys(frontend, frontend_id, &ids);
        for member in &members {
            set(&mut self.maps.affinity_members, &mut self.touched.affinity_members, *member, Some(affinity::MEMBER));
        }
        for gone in old.iter().filter(|m| !members.contains(m)) {
            set(&mut self.maps.affinity_members, &mut self.touched.affinity_members, *gone, None);
        }
        members
    }

    fn remove_frontend(&mut self, key: ServiceKey) {
        self.resumed.remove(&key);
        let Some(owned) = self.encoded.remove(&key) else {
            return;
        };
        self.set_service_entry(key, None);
        set(&mut self.maps.maglev, &mut self.touched.maglev, owned.frontend_id, None);
        self.maglev_fallbacks.remove(&key);
        for slot in 1..=owned.slots.len() {
            self.set_service_entry(key.slot(slot as u16), None);
        }
        for range in &owned.ranges {
            set(&mut self.maps.source_ranges, &mut self.touched.source_ranges, *range, None);
        }
        for range in &owned.ranges_v6 {
            set(&mut self.maps.source_ranges_v6, &mut self.touched.source_ranges_v6, *range, None);
        }
        for member in &owned.members {
            set(&mut self.maps.affinity_members, &mut self.touched.affinity_members, *member, None);
        }
        for backend in owned.slots.iter().chain(&owned.draining) {
            self.release_backend(*backend);
        }
        self.frontend_ids.release(owned.frontend_id);
        self.labels.remove(owned.frontend_id);
        self.change_port(key.port(), PortUse::Frontend, false);
        self.change_address(key, false);
    }

    fn set_service_entry(&mut self, key: ServiceKey, value: Option<ServiceValue>) {
        family::set_service(&mut self.maps, &mut self.touched, key, value);
    }

    fn acquire_backend(&mut self, backend: SlotBackend) -> u32 {
        let (id, lifecycle) = self.backends.acquire(backend);
        if lifecycle == Lifecycle::Created {
            self.change_port(backend.identity.port, PortUse::Backend, true);
        }
        let flags = self.backends.flags(backend.identity);
        family::set_backend(&mut self.maps, &mut self.touched, id, backend.identity, flags);
        id
    }

    fn release_backend(&mut self, backend: SlotBackend) {
        let Some((id, lifecycle)) = self.backends.release(backend) else {
            return;
        };
        if lifecycle == Lifecycle::Removed {
            self.change_port(backend.identity.port, PortUse::Backend, false);
        }
        // None once removed; otherwise its flags may have changed.
        let flags = self.backends.flags(backend.identity);
        family::set_backend(&mut self.maps, &mut self.touched, id, backend.identity, flags);
    }

    fn change_address(&mut self, key: ServiceKey, add: bool) {
        if let Some((word, bits)) = self.addresses.change(key, add) {
            set(&mut self.maps.address_filter, &mut self.touched.address_filter, word, (bits != 0).then_some(bits));
        }
    }

    fn change_port(&mut self, port: u16, use_: PortUse, add: bool) {
        let bits = self.ports.change(port, use_, add);
        set(&mut self.maps.port_filter, &mut self.touched.port_filter, port, (bits != 0).then_some(bits));
    }

    /// The id counters as they must be persisted.
    fn record_counters(&mut self) {
        let values = [
            (counters::LAST_BACKEND_ID, self.backends.last_id()),
            (counters::LAST_FRONTEND_ID, self.frontend_ids.last()),
        ];
        for (index, value) in values {
            set(&mut self.maps.ids, &mut self.touched.ids, index, (value != 0).then_some(value));
        }
    }
}

/// The backends a frontend gives slots to: those of its family, as many
/// as a slot number can name.
fn wanted_slots(frontend: &Frontend, key: ServiceKey) -> impl Iterator<Item = SlotBackend> + '_ {
    slot_backends(&frontend.backends, key).take(usize::from(u16::MAX))
}

/// What Maglev hashes of these backends, sorted.
fn sorted_endpoints(backends: impl Iterator<Item = SlotBackend>) -> Vec<crate::maglev::Endpoint> {
    let mut endpoints: Vec<_> = backends.map(|backend| backend.identity.endpoint()).collect();
    endpoints.sort_unstable();
    endpoints
}

/// The backends of the frontend's family, as slot entries.
fn slot_backends(backends: &[Backend], key: ServiceKey) -> impl Iterator<Item = SlotBackend> + '_ {
    backends.iter().filter(move |b| IpFamily::of(b.address) == key.family()).map(move |b| SlotBackend {
        identity: BackendIdentity { address: b.address, port: b.port, proto: key.proto() },
        terminating: b.terminating,
        local: b.local,
    })
}

/// Sets or removes one desired entry, recording the key if it changed.
/// Writes a frontend's source-range entries `new` (allowed), removes
/// those of `old` it no longer has, and returns `new`.
fn put_keys<K: Ord + Copy>(
    map: &mut BTreeMap<K, u8>,
    touched: &mut std::collections::BTreeSet<K>,
    new: Vec<K>,
    old: &[K],
) -> Vec<K> {
    for key in &new {
        set(map, touched, *key, Some(source_ranges::ALLOWED));
    }
    for gone in old.iter().filter(|k| !new.contains(k)) {
        set(map, touched, *gone, None);
    }
    new
}

/// Makes `map` hold exactly the Pod CIDR entries `wanted`.
fn set_pod_cidr_keys<K: Ord + Copy>(
    map: &mut BTreeMap<K, u8>,
    touched: &mut std::collections::BTreeSet<K>,
    wanted: Vec<K>,
) {
    let gone: Vec<_> = map.keys().filter(|k| !wanted.contains(k)).copied().collect();
    for key in gone {
        set(map, touched, key, None);
    }
    for key in wanted {
        set(map, touched, key, Some(lb_common::pod_cidrs::POD_CIDR));
    }
}

fn set<K: Ord + Copy, V: PartialEq + Clone>(
    map: &mut BTreeMap<K, V>,
    touched: &mut std::collections::BTreeSet<K>,
    key: K,
    value: Option<V>,
) {
    let changed = match value {
        Some(value) => map.insert(key, value.clone()) != Some(value),
        None => map.remove(&key).is_some(),
    };
    if changed {
        touched.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_common::{port_filter, service::ServiceKeyV4};

    use super::*;
    use crate::{
        model::{Backend, Balancing, FrontendKind, Protocol, ServicePortName, WhenEmpty},
        tables,
    };

    const WEB: ServiceKeyV4 = ServiceKeyV4::frontend([10, 96, 0, 10], 80, 6);
    const WEB_NODE_PORT: ServiceKeyV4 = ServiceKeyV4::frontend([192, 168, 0, 10], 30080, 6);

    fn frontend(kind: FrontendKind, address: [u8; 4], port: u16, backends: &[u8]) -> Frontend {
        let service = ServicePortName {
            namespace: "ns".into(),
            name: "web".into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        };
        let backends = backends
            .iter()
            .map(|&i| Backend {
                address: Ipv4Addr::new(10, 244, 0, i).into(),
                port: 8080,
                terminating: false,
                local: false,
            })
            .collect();
        Frontend {
            service,
            kind,
            address: Ipv4Addr::from(address).into(),
            port,
            backends,
            draining: Vec::new(),
            when_empty: WhenEmpty::Reject,
            affinity_timeout_s: Some(30),
            local_only: false,
            source_ranges: None,
            in_cluster: None,
            balancing: Balancing::Hash,
        }
    }

    fn web(backends: &[u8]) -> Vec<Frontend> {
        vec![frontend(FrontendKind::ClusterIp, [10, 96, 0, 10], 80, backends)]
    }

    fn web_ref() -> ServiceRef {
        ("ns".into(), "web".into())
    }

    fn set(state: &mut DesiredState, backends: &[u8]) -> Touched {
        state.set_service(web_ref(), web(backends), vec![]);
        state.take_touched()
    }

    fn id_of(maps: &DesiredMaps, last_octet: u8) -> Option<u32> {
        maps.backends.iter().find(|(_, b)| b.address == [10, 244, 0, last_octet]).map(|(id, _)| *id)
    }

    /// Backends in slot order.
    fn slots(maps: &DesiredMaps, key: ServiceKeyV4) -> Vec<u8> {
        let count = maps.services[&key].count;
        (1..=count).map(|s| maps.backends[&maps.services[&key.slot(s)].backend_id].address[3]).collect()
    }

    #[test]
    fn frontend_entry_carries_count_flags_and_affinity() {
        let mut state = DesiredState::default();
        set(&mut state, &[1, 2]);
        let frontend = state.maps().services[&WEB];
        assert_eq!(frontend.count, 2);
        assert_eq!(frontend.flags, lb_common::service::FLAG_CLUSTER_IP | lb_common::service::FLAG_SESSION_AFFINITY);
        assert_eq!(frontend.affinity_timeout_s, 30);
        assert_ne!(frontend.frontend_id, 0);
        assert_eq!(state.maps().port_filter[&80], port_filter::FRONTEND_PORT);
        assert_eq!(state.maps().port_filter[&8080], port_filter::BACKEND_PORT);
    }

    #[test]
    fn each_frontend_of_a_service_port_has_its_own_id() {
        let mut state = DesiredState::default();
        let frontends = vec![
            frontend(FrontendKind::ClusterIp, [10, 96, 0, 10], 80, &[1, 2]),
            frontend(FrontendKind::NodePort, [192, 168, 0, 10], 30080, &[1]),
        ];
        state.set_service(web_ref(), frontends, vec![]);
        let maps = state.maps();
        assert_ne!(maps.services[&WEB].frontend_id, maps.services[&WEB_NODE_PORT].frontend_id);
        assert_eq!(slots(maps, WEB_NODE_PORT), [1], "its own backend set");
    }

    #[test]
    fn backend_ids_and_slots_stay_while_the_backend_exists() {
        let mut state = DesiredState::default();
        set(&mut state, &[1, 2, 3, 4, 5]);
        let before = state.maps().clone();
        let touched = set(&mut state, &[1, 2, 4, 5, 6]);
        for kept in [1, 2, 4, 5] {
            assert_eq!(id_of(&before, kept), id_of(state.maps(), kept));
        }
        assert_eq!(slots(state.maps(), WEB), [1, 2, 5, 4, 6], "3's slot taken by the last, 6 appended");
        assert_eq!(id_of(state.maps(), 3), None, "removed backend is gone");
        let writes = tables::diff_keys(&before, state.maps(), &touched);
        // Slot 3 and 5 rewritten, backend 3 deleted, backend 6 added, the
        // id counter advanced, and (an affinity frontend) 3's membership
        // gone, 6's new; the frontend entry and count stay.
        assert_eq!(writes.len(), 7, "{writes:?}");
    }

    #[test]
    fn removing_one_of_many_backends_costs_a_constant_number_of_writes() {
        let mut state = DesiredState::default();
        let all: Vec<u8> = (1..=100).collect();
        set(&mut state, &all);
        let before = state.maps().clone();
        let fewer: Vec<u8> = all.iter().copied().filter(|b| *b != 7).collect();
        let touched = set(&mut state, &fewer);
        let writes = tables::diff_keys(&before, state.maps(), &touched);
        // Slot 7 takes the last backend, the frontend's count drops, the
        // last slot, the backend and (an affinity frontend) its membership go.
        assert_eq!(writes.len(), 5, "{writes:?}");
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
        let mut other = web(&[9]);
        other[0].address = Ipv4Addr::new(10, 96, 0, 99).into();
        other[0].service.name = "other".into();
        state.set_service(("ns".into(), "other".into()), other, vec![]);
        let touched = state.take_touched();
        assert!(touched.services.iter().all(|k| k.address == [10, 96, 0, 99]), "{touched:?}");
    }

    #[test]
    fn restart_resumes_ids_slots_and_counters_from_the_maps() {
        let mut before = DesiredState::default();
        set(&mut before, &[1, 2, 3, 4]);
        set(&mut before, &[1, 2, 4]);
        let mut resumed = DesiredState::resume(before.maps(), HighestIds::default());
        set(&mut resumed, &[1, 2, 4]);
        assert_eq!(resumed.maps(), before.maps(), "nothing to write after a restart without changes");
        set(&mut resumed, &[1, 2, 4, 5]);
        assert!(id_of(resumed.maps(), 5) > Some(3), "the id of removed backend 3 is not handed out again");
    }

    #[test]
    fn restart_without_id_counters_resumes_above_conntrack() {
        let mut before = DesiredState::default();
        set(&mut before, &[1]);
        let mut maps = before.maps().clone();
        maps.ids.clear();
        let conntrack = HighestIds { backend: 40, frontend: 30 };
        let mut resumed = DesiredState::resume(&maps, conntrack);
        set(&mut resumed, &[1, 2]);
        assert_eq!(id_of(resumed.maps(), 2), Some(41));
    }

    #[test]
    fn a_draining_backend_keeps_its_entry_but_no_slot() {
        let mut state = DesiredState::default();
        set(&mut state, &[1, 2]);
        let id = id_of(state.maps(), 2);
        let mut frontends = web(&[1]);
        frontends[0].draining =
            vec![Backend { address: Ipv4Addr::new(10, 244, 0, 2).into(), port: 8080, terminating: true, local: false }];
        state.set_service(web_ref(), frontends, vec![]);
        assert_eq!(slots(state.maps(), WEB), [1], "no new flows to it");
        assert_eq!(id_of(state.maps(), 2), id, "established flows still find it, under the same id");
        set(&mut state, &[1]);
        assert_eq!(id_of(state.maps(), 2), None, "gone once it leaves the slices");
    }

    /// The member backends of `web`, by last octet.
    fn members(maps: &DesiredMaps) -> Vec<u8> {
        let id = maps.services[&WEB].frontend_id;
        let of_web = maps.affinity_members.keys().filter(|m| m.frontend_id == id);
        let mut octets: Vec<u8> = of_web.map(|m| maps.backends[&m.backend_id].address[3]).collect();
        octets.sort_unstable();
        octets
    }

    #[test]
    fn an_affinity_frontends_members_are_its_slot_backends() {
        let mut state = DesiredState::default();
        set(&mut state, &[1, 2, 3]);
        assert_eq!(members(state.maps()), [1, 2, 3]);

        let mut frontends = web(&[1, 3]);
        frontends[0].draining =
            vec![Backend { address: Ipv4Addr::new(10, 244, 0, 2).into(), port: 8080, terminating: true, local: false }];
        state.set_service(web_ref(), frontends, vec![]);
        assert_eq!(members(state.maps()), [1, 3], "a draining backend takes no new flows, affinity or not");
        assert_eq!(state.maps().affinity_members.len(), 2);

        set(&mut state, &[3, 4]);
        assert_eq!(members(state.maps()), [3, 4], "one gone, one new");
        assert_eq!(state.maps().affinity_members.len(), 2);
    }

    #[test]
    fn members_go_with_affinity_and_with_the_frontend() {
        let mut state = DesiredState::default();
        set(&mut state, &[1, 2]);
        let mut frontends = web(&[1, 2]);
        frontends[0].affinity_timeout_s = None;
        state.set_service(web_ref(), frontends, vec![]);
        assert!(state.maps().affinity_members.is_empty(), "affinity off: no members");
        set(&mut state, &[1, 2]);
        assert_eq!(members(state.maps()), [1, 2]);
        state.set_service(web_ref(), Vec::new(), vec![]);
        assert!(state.maps().affinity_members.is_empty(), "frontend gone: no members");
    }

    fn set_maglev(state: &mut DesiredState, backends: &[u8]) -> Touched {
        let mut frontends = web(backends);
        frontends[0].balancing = Balancing::Maglev;
        state.set_service(web_ref(), frontends, vec![]);
        state.take_touched()
    }

    /// The backends a Maglev frontend's table names, by last octet.
    fn table_backends(maps: &DesiredMaps) -> std::collections::BTreeSet<u8> {
        let id = maps.services[&WEB].frontend_id;
        maps.maglev[&id].iter().map(|id| maps.backends[&id].address[3]).collect()
    }

    #[test]
    fn a_maglev_frontend_has_a_full_table_over_its_backends_and_the_flag() {
        let mut state = DesiredState::default();
        set_maglev(&mut state, &[1, 2, 3]);
        let maps = state.maps();
        assert_eq!(maps.maglev.len(), 1);
        assert_eq!(maps.maglev.values().next().unwrap().len(), lb_common::maglev::TABLE_SIZE as usize);
        assert_eq!(table_backends(maps), [1, 2, 3].into());
        assert_ne!(maps.services[&WEB].flags & lb_common::service::FLAG_MAGLEV, 0);
        assert_eq!(maps.services[&WEB].count, 3, "slots kept: the count still tells empty from not");
    }

    #[test]
    fn prefill_runs_the_loops_of_changed_maglev_frontends_only() {
        let mut state = DesiredState::default();
        let maglev = |backends: &[u8]| {
            let mut frontends = web(backends);
            frontends[0].balancing = Balancing::Maglev;
            frontends
        };
        state.prefill_maglev(&maglev(&[1, 2, 3]));
        assert_eq!(state.maglev_tables.prefilled(), 1, "a new Maglev frontend's loop");
        set_maglev(&mut state, &[1, 2, 3]);
        assert_eq!(state.maglev_tables.prefilled(), 0, "taken by its table");
        state.prefill_maglev(&maglev(&[3, 2, 1]));
        assert_eq!(state.maglev_tables.prefilled(), 0, "the same backends keep their table");
        state.prefill_maglev(&maglev(&[1, 2, 4]));
        assert_eq!(state.maglev_tables.prefilled(), 1, "other backends, a new loop");
        state.end_prefill();
        assert_eq!(state.maglev_tables.prefilled(), 0);
        state.prefill_maglev(&web(&[1, 2, 4]));
        assert_eq!(state.maglev_tables.prefilled(), 0, "no loop for a slot-hash frontend");
    }

    #[test]
    fn a_hash_frontend_has_no_table() {
        let mut state = DesiredState::default();
        set(&mut state, &[1, 2, 3]);
        assert!(state.maps().maglev.is_empty());
        assert_eq!(state.maps().services[&WEB].flags & lb_common::service::FLAG_MAGLEV, 0);
    }

    #[test]
    fn a_maglev_table_follows_its_backends_and_goes_with_them() {
        let mut state = DesiredState::default();
        set_maglev(&mut state, &[1, 2, 3]);
        let touched = set_maglev(&mut state, &[1, 3]);
        assert_eq!(table_backends(state.maps()), [1, 3].into());
        assert_eq!(touched.maglev.len(), 1);
        set_maglev(&mut state, &[]);
        assert!(state.maps().maglev.is_empty(), "no backends, no table");
        assert_eq!(state.maps().services[&WEB].flags & lb_common::service::FLAG_MAGLEV, 0);
        set_maglev(&mut state, &[4]);
        state.set_service(web_ref(), vec![], vec![]);
        assert!(state.maps().maglev.is_empty(), "the table goes with its frontend");
    }

    #[test]
    fn maglev_frontends_beyond_the_table_budget_use_the_slot_hash_until_a_table_is_free() {
        let mut state = DesiredState { maglev_budget: Some(1), ..DesiredState::default() };
        let maglev = |name: &str, address: [u8; 4], port| {
            let mut f =
                Frontend { balancing: Balancing::Maglev, ..frontend(FrontendKind::NodePort, address, port, &[1, 2]) };
            f.service.name = name.into();
            f
        };
        let first = ServiceKeyV4::frontend([192, 168, 0, 10], 30080, 6);
        let second = ServiceKeyV4::frontend([192, 168, 0, 10], 30081, 6);
        state.set_service(("ns".into(), "a".into()), vec![maglev("a", first.address, first.port)], Vec::new());
        state.set_service(("ns".into(), "b".into()), vec![maglev("b", second.address, second.port)], Vec::new());
        let flags = |state: &DesiredState, key| state.maps().services[&key].flags & lb_common::service::FLAG_MAGLEV;
        assert_eq!(state.maps().maglev.len(), 1);
        assert_ne!(flags(&state, first), 0);
        assert_eq!(flags(&state, second), 0, "no table, so no flag: the slot hash serves");
        assert!(
            state
                .problems()
                .iter()
                .any(|p| p.message.contains(":30081 uses the slot hash") && p.message.contains("--maglev-max 1"))
        );

        state.set_service(("ns".into(), "a".into()), Vec::new(), Vec::new());
        assert_ne!(flags(&state, second), 0, "a freed table is taken at the next sync");
        assert!(state.problems().is_empty());
    }

    #[test]
    fn restart_rebuilds_the_same_maglev_table() {
        let mut before = DesiredState::default();
        set_maglev(&mut before, &[1, 2, 3, 4]);
        let mut resumed = DesiredState::resume(before.maps(), HighestIds::default());
        set_maglev(&mut resumed, &[1, 2, 3, 4]);
        assert_eq!(resumed.maps(), before.maps(), "nothing to write after a restart without changes");
    }

    #[test]
    fn no_local_endpoints_drop_is_encoded_only_when_empty() {
        let mut state = DesiredState::default();
        let mut frontends = web(&[]);
        frontends[0].when_empty = WhenEmpty::Drop;
        state.set_service(web_ref(), frontends, vec![]);
        assert_ne!(state.maps().services[&WEB].flags & lb_common::service::FLAG_NO_LOCAL_ENDPOINTS, 0);
    }
}
