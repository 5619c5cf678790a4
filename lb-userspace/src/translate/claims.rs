//! One owner per (address, port, protocol): the datapath keys frontends by
//! that triple, so when several Services claim it, one is served and the
//! others are reported. The one resolver, used by the full translation and
//! by the agent's incremental state alike.
//!
//! Precedence, as kube-proxy's nftables proxier checks its maps: ClusterIP,
//! externalIP and LoadBalancer frontends (the `service-ips` map) before
//! NodePorts (`service-nodeports`, consulted only when no Service IP
//! matched). Among claims of the same rank, the Service that sorts first
//! by (namespace, name) wins; kube-proxy leaves that case undefined.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, btree_map::Entry},
    net::IpAddr,
};

use crate::model::{Frontend, FrontendKind, Problem, Protocol};

/// A Service by (namespace, name).
pub type ServiceRef = (String, String);

/// What the datapath keys a frontend by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendAddr {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl FrontendAddr {
    pub fn of(frontend: &Frontend) -> Self {
        Self { address: frontend.address, port: frontend.port, protocol: frontend.protocol() }
    }
}

/// Among claims on one [`FrontendAddr`], the smallest key wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ClaimKey {
    /// 0 for Service IPs, 1 for NodePorts.
    rank: u8,
    namespace: String,
    name: String,
    kind: FrontendKind,
    port_name: String,
}

impl ClaimKey {
    fn of(frontend: &Frontend) -> Self {
        let service = &frontend.service;
        Self {
            rank: u8::from(frontend.kind == FrontendKind::NodePort),
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            kind: frontend.kind,
            port_name: service.port.clone(),
        }
    }
}

/// Every Service's claims, and the winner at each frontend address.
#[derive(Debug, Default)]
pub struct Claims {
    by_service: HashMap<ServiceRef, Vec<FrontendAddr>>,
    by_address: BTreeMap<FrontendAddr, ClaimList>,
}

/// The claims on one address, sorted by key. A sorted list, not a map:
/// nearly every address has exactly one claim, and a one-entry BTreeMap
/// allocates room for eleven (kilobytes per frontend, tens of megabytes
/// at 10,000 Services).
#[derive(Debug)]
struct ClaimList(Vec<(ClaimKey, Frontend)>);

impl ClaimList {
    fn one(key: ClaimKey, frontend: Frontend) -> Self {
        Self(vec![(key, frontend)])
    }

    /// Adds a claim, replacing one with the same key.
    fn insert(&mut self, key: ClaimKey, frontend: Frontend) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(at) => self.0[at].1 = frontend,
            Err(at) => self.0.insert(at, (key, frontend)),
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&ClaimKey) -> bool) {
        self.0.retain(|(key, _)| keep(key));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// The claims, winner first.
    fn values(&self) -> impl Iterator<Item = &Frontend> {
        self.0.iter().map(|(_, frontend)| frontend)
    }
}

impl Claims {
    /// Replaces what `service` claims (nothing: it is gone). Returns the
    /// addresses whose winner may have changed.
    pub fn set_service(&mut self, service: &ServiceRef, frontends: Vec<Frontend>) -> BTreeSet<FrontendAddr> {
        let mut affected = BTreeSet::new();
        for address in self.by_service.remove(service).unwrap_or_default() {
            if let Some(claims) = self.by_address.get_mut(&address) {
                claims.retain(|key| (&key.namespace, &key.name) != (&service.0, &service.1));
                if claims.is_empty() {
                    self.by_address.remove(&address);
                }
            }
            affected.insert(address);
        }
        let addresses: Vec<FrontendAddr> = frontends.iter().map(FrontendAddr::of).collect();
        for frontend in frontends {
            let key = ClaimKey::of(&frontend);
            match self.by_address.entry(FrontendAddr::of(&frontend)) {
                Entry::Occupied(mut claims) => claims.get_mut().insert(key, frontend),
                Entry::Vacant(slot) => {
                    slot.insert(ClaimList::one(key, frontend));
                }
            }
        }
        affected.extend(addresses.iter().copied());
        if !addresses.is_empty() {
            self.by_service.insert(service.clone(), addresses);
        }
        affected
    }

    /// The frontend served at `address`, if any Service claims it.
    pub fn winner(&self, address: &FrontendAddr) -> Option<&Frontend> {
        self.by_address.get(address)?.values().next()
    }

    /// Every served frontend, sorted by address.
    pub fn winners(&self) -> impl Iterator<Item = &Frontend> {
        self.by_address.values().filter_map(|claims| claims.values().next())
    }

    /// Services with at least one claim.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRef> {
        self.by_service.keys()
    }

    pub fn has_service(&self, service: &ServiceRef) -> bool {
        self.by_service.contains_key(service)
    }

    /// One problem per claim that lost.
    pub fn conflicts(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for claims in self.by_address.values().filter(|claims| claims.len() > 1) {
            let mut claims = claims.values();
            let owner = claims.next().expect("non-empty");
            problems.extend(claims.map(|loser| conflict(owner, loser)));
        }
        problems
    }
}

fn conflict(owner: &Frontend, loser: &Frontend) -> Problem {
    let message = format!(
        "{} frontend {}:{}/{} of {} is already served by {} ({}); skipped",
        loser.kind.as_str(),
        loser.address,
        loser.port,
        loser.protocol(),
        loser.service,
        owner.service,
        owner.kind.as_str(),
    );
    Problem { kind: "Service", namespace: loser.service.namespace.clone(), name: loser.service.name.clone(), message }
}
