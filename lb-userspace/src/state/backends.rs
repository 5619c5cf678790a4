//! Backends by identity, reference-counted across the frontends that use
//! them: the same endpoint under several frontends is one backend entry
//! with one id, kept while any frontend uses it.

use std::{collections::HashMap, net::IpAddr};

use lb_common::backend::{self, BackendV4, BackendV6};

use super::{
    family::{self, ServiceKey},
    ids::IdCounter,
};
use crate::tables::DesiredMaps;

/// What makes two backends the same backend entry. An IPv4 and an IPv6
/// address are never the same backend, so never share an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendIdentity {
    pub address: IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl BackendIdentity {
    /// What Maglev hashes: the same on every node.
    pub fn endpoint(self) -> crate::maglev::Endpoint {
        crate::maglev::Endpoint { address: self.address, port: self.port, proto: self.proto }
    }

    pub fn v4(backend: &BackendV4) -> Self {
        Self { address: backend.address.into(), port: backend.port, proto: backend.proto }
    }

    pub fn v6(backend: &BackendV6) -> Self {
        Self { address: backend.address.into(), port: backend.port, proto: backend.proto }
    }
}

/// One slot's backend: which endpoint, whether the frontend uses it only
/// as a serving-but-terminating fallback, and whether it runs on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotBackend {
    pub identity: BackendIdentity,
    pub terminating: bool,
    pub local: bool,
}

#[derive(Debug)]
struct Live {
    id: u32,
    refs: u32,
    terminating_refs: u32,
    /// References that see the endpoint on this node. One address runs on
    /// one node, so this is all or none but for an address moving nodes
    /// between two syncs; any local reference keeps the flag.
    local_refs: u32,
}

/// Whether a reference change created or removed the backend entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Created,
    Kept,
    Removed,
}

#[derive(Debug, Default)]
pub struct BackendRefs {
    live: HashMap<BackendIdentity, Live>,
    /// Ids the maps held at start, for backends not referenced again yet.
    resumed: HashMap<BackendIdentity, u32>,
    ids: IdCounter,
}

impl BackendRefs {
    pub fn resume(existing: &DesiredMaps, last_id: u32) -> Self {
        let resumed = family::backends(existing).map(|(id, identity)| (identity, id)).collect();
        Self { live: HashMap::new(), resumed, ids: IdCounter::resume(last_id) }
    }

    pub fn last_id(&self) -> u32 {
        self.ids.last()
    }

    /// The backend a slot entry of the existing maps points to.
    pub fn resumed_slot(&self, existing: &DesiredMaps, slot: ServiceKey) -> Option<SlotBackend> {
        let id = family::service(existing, slot)?.backend_id;
        let (identity, flags) = family::backend(existing, slot.family(), id)?;
        Some(SlotBackend {
            identity,
            terminating: flags & backend::FLAG_TERMINATING != 0,
            local: flags & backend::FLAG_LOCAL != 0,
        })
    }

    /// One more frontend uses `backend`; returns its id.
    pub fn acquire(&mut self, backend: SlotBackend) -> (u32, Lifecycle) {
        let mut lifecycle = Lifecycle::Kept;
        let live = self.live.entry(backend.identity).or_insert_with(|| {
            lifecycle = Lifecycle::Created;
            let id = match self.resumed.remove(&backend.identity) {
                Some(id) => {
                    self.ids.adopt(id);
                    id
                }
                None => self.ids.allocate(),
            };
            Live { id, refs: 0, terminating_refs: 0, local_refs: 0 }
        });
        live.refs += 1;
        live.terminating_refs += u32::from(backend.terminating);
        live.local_refs += u32::from(backend.local);
        (live.id, lifecycle)
    }

    /// One frontend fewer uses `backend`; returns its id.
    pub fn release(&mut self, backend: SlotBackend) -> Option<(u32, Lifecycle)> {
        let live = self.live.get_mut(&backend.identity)?;
        live.refs -= 1;
        live.terminating_refs -= u32::from(backend.terminating);
        live.local_refs -= u32::from(backend.local);
        let id = live.id;
        if live.refs > 0 {
            return Some((id, Lifecycle::Kept));
        }
        self.live.remove(&backend.identity);
        self.ids.release(id);
        Some((id, Lifecycle::Removed))
    }

    /// The id of a live backend.
    pub fn id(&self, identity: BackendIdentity) -> Option<u32> {
        self.live.get(&identity).map(|live| live.id)
    }

    /// The flags of a live backend's entry.
    pub fn flags(&self, identity: BackendIdentity) -> Option<u8> {
        let live = self.live.get(&identity)?;
        let mut flags = 0;
        if live.terminating_refs > 0 {
            flags |= backend::FLAG_TERMINATING;
        }
        if live.local_refs > 0 {
            flags |= backend::FLAG_LOCAL;
        }
        Some(flags)
    }
}
