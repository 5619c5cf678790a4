//! One sync: objects → table → map entries → minimal ordered writes.
//! Keeps an in-memory copy of what the kernel maps hold, so each sync
//! only diffs and writes, never reads the maps back.

use std::time::{Duration, Instant};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    datapath::maps::ServiceMaps,
    diff::{self, Write},
    encode::{self, DesiredMaps, IdAllocator},
    model::{NodeContext, Problem},
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

/// The agent's view of the maps and the ids it handed out.
#[derive(Debug)]
pub struct Syncer<W> {
    writer: W,
    current: DesiredMaps,
    ids: IdAllocator,
    node: NodeContext,
}

impl<W: MapWriter> Syncer<W> {
    /// Starts from what the maps already hold (empty on first start).
    pub fn new(writer: W, existing: DesiredMaps, node: NodeContext) -> Self {
        let ids = IdAllocator::resume(&existing);
        Self { writer, current: existing, ids, node }
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
    pub fn node_mut(&mut self) -> &mut NodeContext {
        &mut self.node
    }

    /// Brings the maps in line with these objects.
    pub fn sync(&mut self, services: &[Service], slices: &[EndpointSlice]) -> anyhow::Result<SyncReport> {
        let started = Instant::now();
        let table = translate::translate(services, slices, &self.node);
        let desired = encode::encode(&table, &mut self.ids);
        let writes = diff::diff(&self.current, &desired);
        if let Err(e) = self.writer.apply(&writes) {
            // Only what was applied counts as current; the next sync diffs
            // against that and retries the rest.
            diff::apply_to(&mut self.current, &writes[..e.applied]);
            return Err(e.into());
        }
        self.current = desired;
        Ok(SyncReport {
            frontends: table.frontends.len(),
            backends: self.current.backends.len(),
            writes: writes.len(),
            problems: table.problems,
            took: started.elapsed(),
        })
    }
}
