//! One sync: objects → table → map entries → minimal ordered writes.
//!
//! An incremental sync re-translates the changed Services and diffs only
//! the map keys their change touched, against an in-memory mirror of the
//! kernel maps. A full sync re-translates everything and diffs every key
//! against the maps as the kernel holds them *now* (read back), so it also
//! repairs entries changed or removed behind the agent's back. A failed
//! write makes the next sync full. Each re-translated Service's health
//! check (`healthCheckNodePort`) is recorded on the way, for the agent
//! to reconcile its servers with.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Service;

use crate::{
    affinity::Forget,
    datapath::maps::ServiceMaps,
    healthcheck::HealthChecks,
    model::{Frontend, NodeContext, Problem},
    state::{DesiredState, HighestIds, ServiceRef},
    tables::{self, DesiredMaps, Write},
    translate::{self, HealthCheck, SliceRecord},
};

/// Services translated before they are set, at most this many at a time:
/// enough to keep every core busy with Maglev population loops, few
/// enough that the loops waiting to be taken (32 KiB each) stay small.
const PREFILL_BATCH: usize = 64;

/// One Service as translated, not yet set.
struct Translated {
    key: ServiceRef,
    frontends: Vec<Frontend>,
    problems: Vec<Problem>,
    check: Option<HealthCheck>,
}

/// The kernel maps as the syncer sees them: the real maps in production,
/// an in-memory stand-in in tests.
pub trait MapWriter {
    /// Applies writes in order. On failure, says how many were applied.
    fn apply(&mut self, writes: &[Write]) -> Result<(), ApplyError>;
    /// Everything the maps hold now.
    fn read_all(&self) -> anyhow::Result<DesiredMaps>;
    /// The highest ids conntrack names (only consulted when the maps hold
    /// no id counters: pinned by a version that kept none).
    fn conntrack_highest_ids(&self) -> anyhow::Result<HighestIds>;
    /// Deletes the datapath's ClientIP affinity entries of these frontends.
    fn forget_affinity(&mut self, frontend_ids: &BTreeSet<u32>) -> anyhow::Result<()>;
    /// Makes frontends with equal Maglev tables share one kernel map
    /// where they do not (maps an earlier build wrote); returns how many
    /// frontends moved. What the maps say does not change.
    fn merge_equal_tables(&mut self) -> anyhow::Result<usize> {
        Ok(0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("map write {applied} of the sync failed: {source:#}")]
pub struct ApplyError {
    pub applied: usize,
    pub source: anyhow::Error,
}

impl MapWriter for ServiceMaps {
    fn apply(&mut self, writes: &[Write]) -> Result<(), ApplyError> {
        self.write_all(writes).map_err(|(applied, source)| ApplyError { applied, source })
    }

    fn read_all(&self) -> anyhow::Result<DesiredMaps> {
        ServiceMaps::read_all(self)
    }

    fn conntrack_highest_ids(&self) -> anyhow::Result<HighestIds> {
        ServiceMaps::conntrack_highest_ids(self)
    }

    fn forget_affinity(&mut self, frontend_ids: &BTreeSet<u32>) -> anyhow::Result<()> {
        let deleted = ServiceMaps::forget_affinity(self, frontend_ids)?;
        tracing::debug!(?frontend_ids, deleted, "affinity entries deleted");
        Ok(())
    }

    fn merge_equal_tables(&mut self) -> anyhow::Result<usize> {
        self.merge_equal_maglev_tables()
    }
}

/// What a sync did.
#[derive(Clone, Debug)]
pub struct SyncReport {
    pub frontends: usize,
    pub backends: usize,
    pub writes: usize,
    /// Entries a full sync found different from what the agent had
    /// written (changed behind its back) and put back.
    pub repaired: usize,
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
    /// A write failed: only a full sync can tell what the maps hold.
    needs_full: bool,
    /// The Services' health check servers, kept with the translation
    /// because it visits exactly the Services that changed.
    health_checks: HealthChecks,
}

/// One Service whose objects changed: its (namespace, name), the Service
/// if it exists, and the EndpointSlices labelled with its name.
pub type ServiceChange<'a> = (ServiceRef, Option<&'a Service>, Vec<&'a SliceRecord>);

impl<W: MapWriter> Syncer<W> {
    /// Starts from what the maps already hold (`existing`, empty on a
    /// first start), keeping their ids and slots.
    pub fn new(writer: W, existing: DesiredMaps, node: NodeContext) -> Self {
        let has_counters = !existing.ids.is_empty();
        let conntrack = if has_counters { Ok(HighestIds::default()) } else { writer.conntrack_highest_ids() };
        let conntrack = conntrack.unwrap_or_else(|e| {
            tracing::warn!(error = %format!("{e:#}"), "cannot read conntrack; new ids start above the maps' own");
            HighestIds::default()
        });
        let state = DesiredState::resume(&existing, conntrack);
        Self { writer, current: existing, state, node, needs_full: false, health_checks: HealthChecks::default() }
    }

    /// Starts from what the maps hold now: an agent starting again over
    /// its pinned maps.
    pub fn resume(writer: W, node: NodeContext) -> anyhow::Result<Self> {
        let existing = writer.read_all()?;
        Ok(Self::new(writer, existing, node))
    }

    pub fn current(&self) -> &DesiredMaps {
        &self.current
    }

    /// (frontend id, backend id) of every endpoint each served UDP
    /// frontend lists (see `conntrack::stale_udp`).
    pub fn listed_udp_pairs(&self) -> std::collections::BTreeSet<(u32, u32)> {
        self.state.listed_pairs(lb_common::proto::UDP)
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }

    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.writer
    }

    /// Gives the maps back (an agent stopping).
    pub fn into_writer(self) -> W {
        self.writer
    }

    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// How many Maglev tables the kernel map holds (`--maglev-max`):
    /// frontends beyond it balance with the slot hash, reported.
    pub fn set_maglev_budget(&mut self, tables: u32) {
        self.state.set_maglev_budget(tables as usize);
    }

    /// Node facts learnt at run time (the zone, from the Node object).
    /// Callers follow a change with a full [`Syncer::sync`].
    pub fn node_mut(&mut self) -> &mut NodeContext {
        &mut self.node
    }

    /// The health checks as of the last sync (whether or not its map
    /// writes succeeded: they do not depend on the maps).
    pub fn health_checks(&mut self) -> &mut HealthChecks {
        &mut self.health_checks
    }

    /// Whether the next sync must be full (a write failed).
    /// Who each served frontend id belongs to.
    pub fn frontend_labels(&self) -> &crate::state::labels::FrontendLabels {
        self.state.frontend_labels()
    }

    pub fn needs_full(&self) -> bool {
        self.needs_full
    }

    /// Full sync: translates every Service, then compares every map entry
    /// with what the kernel holds now.
    pub fn sync<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a SliceRecord>,
    ) -> anyhow::Result<SyncReport> {
        let started = Instant::now();
        self.state.set_pod_cidrs(&self.node.cluster_cidrs);
        let mut slices_by_service: HashMap<ServiceRef, Vec<&SliceRecord>> = HashMap::new();
        for slice in slices {
            if let Some(owner) = translate::slice_owner(slice) {
                slices_by_service.entry(owner).or_default().push(slice);
            }
        }
        let mut by_ref: BTreeMap<ServiceRef, Option<&Service>> =
            self.state.services().map(|r| (r.clone(), None)).collect();
        for owner in slices_by_service.keys() {
            by_ref.insert(owner.clone(), None);
        }
        for svc in services {
            let key =
                (svc.metadata.namespace.clone().unwrap_or_default(), svc.metadata.name.clone().unwrap_or_default());
            by_ref.insert(key, Some(svc));
        }
        let mut batch = Vec::with_capacity(PREFILL_BATCH);
        for (key, svc) in by_ref {
            let slices = slices_by_service.remove(&key).unwrap_or_default();
            batch.push(self.translate_service(key, svc, &slices));
            if batch.len() == PREFILL_BATCH {
                self.set_services(&mut batch);
            }
        }
        self.set_services(&mut batch);
        self.state.take_touched();
        let repaired = self.reread_kernel_maps();
        self.merge_equal_tables();
        let writes = tables::diff(&self.current, self.state.maps());
        let mut report = self.apply(&writes, started)?;
        report.repaired = repaired;
        Ok(report)
    }

    /// Incremental sync: re-translates only the changed Services and
    /// compares only the map entries they touched.
    pub fn update<'a>(&mut self, changes: impl IntoIterator<Item = ServiceChange<'a>>) -> anyhow::Result<SyncReport> {
        let started = Instant::now();
        let mut batch = Vec::new();
        for (key, svc, slices) in changes {
            batch.push(self.translate_service(key, svc, &slices));
            if batch.len() == PREFILL_BATCH {
                self.set_services(&mut batch);
            }
        }
        self.set_services(&mut batch);
        let touched = self.state.take_touched();
        let writes = tables::diff_keys(&self.current, self.state.maps(), &touched);
        self.apply(&writes, started)
    }

    /// Sets a batch of translated Services (and empties it), their Maglev
    /// tables' population loops run first on every core.
    fn set_services(&mut self, batch: &mut Vec<Translated>) {
        self.state.prefill_maglev(batch.iter().flat_map(|translated| &translated.frontends));
        for Translated { key, frontends, problems, check } in batch.drain(..) {
            self.health_checks.set(&key, check);
            self.state.set_service(key, frontends, problems);
        }
        self.state.end_prefill();
    }

    /// One Service's frontends, problems and health check, over the
    /// families the node serves: a dual-stack Service has the frontends of
    /// both, each family's from its own addresses and EndpointSlices.
    fn translate_service(&self, key: ServiceRef, svc: Option<&Service>, slices: &[&SliceRecord]) -> Translated {
        let (mut frontends, mut problems, mut check) = (Vec::new(), Vec::new(), None);
        for family in self.node.families() {
            let node = self.node.for_family(family);
            let (family_frontends, family_problems) = translate::translate_one(svc, slices.iter().copied(), &node);
            frontends.extend(family_frontends);
            problems.extend(family_problems);
            // Both families answer on the same healthCheckNodePort: the
            // first family with a check has it.
            match svc.map(|svc| translate::health_check(svc, slices.iter().copied(), &node)).transpose() {
                Ok(found) => check = check.or(found.flatten()),
                Err(problem) => problems.push(problem),
            }
        }
        problems.sort();
        problems.dedup();
        Translated { key, frontends, problems, check }
    }

    /// Replaces the mirror with what the kernel holds; returns how many
    /// entries differed from the mirror (drift). If the maps cannot be
    /// read, the mirror is kept and the error logged: the sync still
    /// writes what the mirror says is missing.
    fn reread_kernel_maps(&mut self) -> usize {
        match self.writer.read_all() {
            Ok(mut held) => {
                // A table read back as desired shares the desired one's
                // memory (16 KiB or more each) instead of holding a second copy.
                for (frontend_id, table) in &mut held.maglev {
                    if let Some(desired) = self.state.maps().maglev.get(frontend_id).filter(|d| *d == table) {
                        *table = desired.clone();
                    }
                }
                let drift = tables::diff(&self.current, &held).len();
                self.current = held;
                drift
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the maps back; repairing from memory");
                0
            }
        }
    }

    /// Frees the kernel's duplicate Maglev tables. A failure is logged,
    /// not fatal: duplicates cost memory, never a wrong backend.
    fn merge_equal_tables(&mut self) {
        match self.writer.merge_equal_tables() {
            Ok(0) => {}
            Ok(moved) => tracing::info!(frontends = moved, "frontends with equal Maglev tables now share one"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot merge equal Maglev tables"),
        }
    }

    fn apply(&mut self, writes: &[Write], started: Instant) -> anyhow::Result<SyncReport> {
        self.forget_affinity(&Forget::of(&self.current, writes).before);
        let result = self.writer.apply(writes);
        // Only what was applied counts as current.
        let applied = match &result {
            Ok(()) => writes.len(),
            Err(e) => e.applied,
        };
        let forget_after = Forget::of(&self.current, &writes[..applied]).after;
        tables::apply_to(&mut self.current, &writes[..applied]);
        self.forget_affinity(&forget_after);
        self.needs_full = result.is_err();
        result?;
        Ok(SyncReport {
            frontends: self.state.frontend_count(),
            backends: self.current.backends.len() + self.current.backends_v6.len(),
            writes: writes.len(),
            repaired: 0,
            problems: self.state.problems(),
            took: started.elapsed(),
        })
    }

    /// Deletes affinity entries of switched frontends. A failure is
    /// logged, not fatal: entries left behind are never followed while
    /// affinity is off, and the next switch on deletes them.
    fn forget_affinity(&mut self, frontend_ids: &BTreeSet<u32>) {
        if frontend_ids.is_empty() {
            return;
        }
        if let Err(e) = self.writer.forget_affinity(frontend_ids) {
            tracing::warn!(error = %format!("{e:#}"), ?frontend_ids, "cannot delete affinity entries");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use lb_common::service::ServiceKeyV4;

    use super::*;
    use crate::{healthcheck::Listener, model::IpFamily};

    /// The kernel maps, in memory, and the affinity deletions asked for.
    #[derive(Debug, Default)]
    struct Memory(DesiredMaps, Vec<BTreeSet<u32>>);

    impl MapWriter for Memory {
        fn apply(&mut self, writes: &[Write]) -> Result<(), ApplyError> {
            tables::apply_to(&mut self.0, writes);
            Ok(())
        }

        fn read_all(&self) -> anyhow::Result<DesiredMaps> {
            Ok(self.0.clone())
        }

        fn conntrack_highest_ids(&self) -> anyhow::Result<HighestIds> {
            Ok(HighestIds::default())
        }

        fn forget_affinity(&mut self, frontend_ids: &BTreeSet<u32>) -> anyhow::Result<()> {
            self.1.push(frontend_ids.clone());
            Ok(())
        }
    }

    fn syncer() -> Syncer<Memory> {
        let node = NodeContext { node_name: Some("node-a".into()), family: IpFamily::V4, ..NodeContext::default() };
        Syncer::new(Memory::default(), DesiredMaps::default(), node)
    }

    fn web(kind: &str, policy: &str, health_check_port: u16) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "type": kind, "clusterIP": "10.96.0.10", "externalTrafficPolicy": policy,
                "healthCheckNodePort": health_check_port,
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]
            }
        }))
        .unwrap()
    }

    fn slice(endpoints: &[(&str, &str)]) -> SliceRecord {
        let endpoints: Vec<Value> =
            endpoints.iter().map(|(ip, node)| json!({"addresses": [ip], "nodeName": node})).collect();
        serde_json::from_value::<k8s_openapi::api::discovery::v1::EndpointSlice>(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
        .unwrap()
        .into()
    }

    fn key() -> ServiceRef {
        ("shop".into(), "web".into())
    }

    fn listeners(syncer: &mut Syncer<Memory>) -> Vec<(u16, usize)> {
        let desired = syncer.health_checks().desired();
        desired.listeners.iter().map(|(port, Listener { local_endpoints, .. })| (*port, *local_endpoints)).collect()
    }

    #[test]
    fn health_checks_follow_full_and_incremental_syncs() {
        let mut syncer = syncer();
        let local = slice(&[("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")]);
        syncer.sync([&web("LoadBalancer", "Local", 32000)], [&local]).unwrap();
        assert!(syncer.health_checks().take_changed());
        assert_eq!(listeners(&mut syncer), [(32000, 1)]);

        // Endpoints change: the count follows.
        let elsewhere = slice(&[("10.244.2.5", "node-b")]);
        let svc = web("LoadBalancer", "Local", 32000);
        syncer.update([(key(), Some(&svc), vec![&elsewhere])]).unwrap();
        assert_eq!(listeners(&mut syncer), [(32000, 0)]);

        // The port changes.
        let svc = web("LoadBalancer", "Local", 32100);
        syncer.update([(key(), Some(&svc), vec![&local])]).unwrap();
        assert_eq!(listeners(&mut syncer), [(32100, 1)]);

        // The policy, then the type, change: no check; changed back, one again.
        for svc in [web("LoadBalancer", "Cluster", 32100), web("NodePort", "Local", 32100)] {
            syncer.update([(key(), Some(&svc), vec![&local])]).unwrap();
            assert!(syncer.health_checks().take_changed());
            assert_eq!(listeners(&mut syncer), []);
            let back = web("LoadBalancer", "Local", 32100);
            syncer.update([(key(), Some(&back), vec![&local])]).unwrap();
            assert_eq!(listeners(&mut syncer), [(32100, 1)]);
        }

        // Deleted, as a full sync sees it.
        syncer.sync([], [&local]).unwrap();
        assert_eq!(listeners(&mut syncer), []);
    }

    #[test]
    fn switching_affinity_off_deletes_the_frontends_entries_after_the_write() {
        let mut syncer = syncer();
        let local = slice(&[("10.244.1.5", "node-a")]);
        let mut svc = web("ClusterIP", "Cluster", 0);
        svc.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        syncer.sync([&svc], [&local]).unwrap();
        let frontend = ServiceKeyV4::frontend([10, 96, 0, 10], 80, lb_common::proto::TCP);
        let id = syncer.current().services[&frontend].frontend_id;
        assert_eq!(syncer.writer().1, [BTreeSet::from([id])], "switched on: start fresh");

        svc.spec.as_mut().unwrap().session_affinity = Some("None".into());
        syncer.update([(key(), Some(&svc), vec![&local])]).unwrap();
        assert_eq!(syncer.writer().1, [BTreeSet::from([id]), BTreeSet::from([id])], "switched off");
        syncer.update([(key(), Some(&svc), vec![&local])]).unwrap();
        assert_eq!(syncer.writer().1.len(), 2, "nothing switched: no scan");
    }
}
