//! One sync: objects → table → map entries → minimal ordered writes.
//! Keeps an in-memory copy of what the kernel maps hold, so each sync
//! only diffs and writes, never reads the maps back.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    datapath::maps::ServiceMaps,
    diff::{self, Write},
    encode::DesiredMaps,
    model::{NodeContext, Problem},
    state::{DesiredState, ServiceRef, Touched},
    translate,
};

/// Where writes go: the kernel maps in production, a recorder in tests.
pub trait MapWriter {
    /// Applies writes in order. On failure, says how many were applied.
    fn apply(&mut self, writes: &[Write]) -> Result<(), ApplyError>;
}

#[derive(Debug, thiserror::Error)]
#[error("map write {applied} of the sync failed: {source:#}")]
pub struct ApplyError {
    pub applied: usize,
    pub source: anyhow::Error,
}

impl MapWriter for ServiceMaps {
    fn apply(&mut self, writes: &[Write]) -> Result<(), ApplyError> {
        for (applied, write) in writes.iter().enumerate() {
            self.write(write).map_err(|source| ApplyError { applied, source })?;
        }
        Ok(())
    }
}

/// What a sync did.
#[derive(Clone, Debug)]
pub struct SyncReport {
    pub frontends: usize,
    pub backends: usize,
    pub writes: usize,
    pub problems: Vec<Problem>,
    pub took: Duration,
}

/// The agent's view of the maps and of what they should hold.
#[derive(Debug)]
pub struct Syncer<W> {
    writer: W,
    /// What the kernel maps hold (kept in step with every write).
    current: DesiredMaps,
    state: DesiredState,
    node: NodeContext,
}

/// One Service whose objects changed: its (namespace, name), the Service
/// if it exists, and the EndpointSlices labelled with its name.
pub type ServiceChange<'a> = (ServiceRef, Option<&'a Service>, Vec<&'a EndpointSlice>);

impl<W: MapWriter> Syncer<W> {
    /// Starts from what the maps already hold (empty on first start).
    pub fn new(writer: W, existing: DesiredMaps, node: NodeContext) -> Self {
        let state = DesiredState::resume(&existing);
        Self { writer, current: existing, state, node }
    }

    pub fn current(&self) -> &DesiredMaps {
        &self.current
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }

    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// Node facts learnt at run time (the zone, from the Node object).
    /// Callers follow a change with a full [`Syncer::sync`].
    pub fn node_mut(&mut self) -> &mut NodeContext {
        &mut self.node
    }

    /// Full sync: translates every Service, then compares every map entry
    /// (which also repairs entries changed behind the agent's back).
    pub fn sync<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> anyhow::Result<SyncReport> {
        let started = Instant::now();
        let mut slices_by_service: HashMap<ServiceRef, Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            if let Some(owner) = translate::slice_owner(slice) {
                slices_by_service.entry(owner).or_default().push(slice);
            }
        }
        let mut by_ref: BTreeMap<ServiceRef, Option<&Service>> = self.state.services().map(|r| (r.clone(), None)).collect();
        for owner in slices_by_service.keys() {
            by_ref.insert(owner.clone(), None);
        }
        for svc in services {
            let key = (svc.metadata.namespace.clone().unwrap_or_default(), svc.metadata.name.clone().unwrap_or_default());
            by_ref.insert(key, Some(svc));
        }
        let mut touched = Touched::default();
        for (key, svc) in by_ref {
            let slices = slices_by_service.remove(&key).unwrap_or_default();
            let (frontends, problems) = translate::translate_one(svc, slices, &self.node);
            self.state.set_service(key, frontends, problems, &mut touched);
        }
        let writes = diff::diff(&self.current, self.state.maps());
        self.apply(&writes, started)
    }

    /// Incremental sync: re-translates only the changed Services and
    /// compares only the map entries they touch.
    pub fn update<'a>(&mut self, changes: impl IntoIterator<Item = ServiceChange<'a>>) -> anyhow::Result<SyncReport> {
        let started = Instant::now();
        let mut touched = Touched::default();
        for (key, svc, slices) in changes {
            let (frontends, problems) = translate::translate_one(svc, slices, &self.node);
            self.state.set_service(key, frontends, problems, &mut touched);
        }
        let writes = diff::diff_keys(&self.current, self.state.maps(), &touched);
        self.apply(&writes, started)
    }

    fn apply(&mut self, writes: &[Write], started: Instant) -> anyhow::Result<SyncReport> {
        let result = self.writer.apply(writes);
        // Only what was applied counts as current; the next sync diffs
        // against that and retries the rest.
        let applied = match &result {
            Ok(()) => writes.len(),
            Err(e) => e.applied,
        };
        diff::apply_to(&mut self.current, &writes[..applied]);
        result?;
        Ok(SyncReport {
            frontends: self.state.frontend_count(),
            backends: self.current.backends.len(),
            writes: writes.len(),
            problems: self.state.problems(),
            took: started.elapsed(),
        })
    }
}
