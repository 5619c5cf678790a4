//! The agent's main loop: wait for source changes, pace syncs, report
//! problems, keep the Services' health check servers in step. I/O lives
//! at the edges (sources, map writer, event publisher, listeners); the
//! decisions are in `runner`, `sync`, `problems` and `healthcheck`.

use std::{
    future::Future,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::{
    conntrack,
    frontend_metrics::FrontendDirectory,
    health::ProxyHealth,
    healthcheck::{Failure, HealthCheckAddresses, ServiceHealthServers},
    metrics::{SyncMetrics, SyncOutcome},
    model::Problem,
    problems::ProblemLog,
    runner::SyncPacer,
    source::{file::FileSource, kubernetes::KubeSource, objects::Objects, tracker::Changes},
    sync::{MapWriter, SyncReport, Syncer},
};

/// Where objects come from.
#[derive(Debug)]
pub enum Source {
    File { source: FileSource, latest: Option<Objects> },
    Kubernetes(Box<KubeSource>),
}

impl Source {
    pub fn file(source: FileSource) -> Self {
        Source::File { source, latest: None }
    }

    /// Ready once a complete view exists (file read once; both API lists done).
    fn ready(&self) -> bool {
        match self {
            Source::File { latest, .. } => latest.is_some(),
            Source::Kubernetes(k) => k.ready(),
        }
    }

    /// Waits for a change; `Ok(true)` if the view may have changed.
    async fn changed(&mut self) -> anyhow::Result<bool> {
        match self {
            Source::File { source, latest } => {
                *latest = Some(source.next().await?);
                Ok(true)
            }
            Source::Kubernetes(k) => k.changed().await,
        }
    }

    /// This node's zone as its Node object says (`Some(None)`: the Node
    /// has no zone label); `None` when the source does not know the Node.
    fn zone(&self) -> Option<Option<String>> {
        match self {
            Source::File { .. } => None,
            Source::Kubernetes(k) => k.tracker().zone(),
        }
    }

    /// This node's Node object, when the source watches it.
    fn node(&self) -> Option<&k8s_openapi::api::core::v1::Node> {
        match self {
            Source::File { .. } => None,
            Source::Kubernetes(k) => k.tracker().node(),
        }
    }
}

/// Where sync outcomes go beyond the log: the metrics and the health
/// check, both read by the agent's HTTP endpoints, the Services' health
/// check servers, and the conntrack worker (stale UDP flows).
#[derive(Clone, Debug)]
pub struct Observers {
    pub metrics: Arc<SyncMetrics>,
    pub health: Arc<ProxyHealth>,
    pub service_health: Arc<ServiceHealthServers>,
    pub conntrack: Option<Arc<conntrack::worker::Handle>>,
    /// Who each frontend id belongs to, for the per-Service counters.
    pub frontends: Arc<FrontendDirectory>,
}

impl Observers {
    /// `health_timeout`: how long a change may wait for its sync before
    /// the agent reports itself unhealthy (kube-proxy: 2 × sync period).
    /// `health_check_addresses`: where Services' health check ports listen.
    pub fn new(health_timeout: Duration, health_check_addresses: HealthCheckAddresses) -> Self {
        let metrics: Arc<SyncMetrics> = Arc::default();
        let health = Arc::new(ProxyHealth::new(health_timeout));
        let service_health =
            Arc::new(ServiceHealthServers::new(health_check_addresses, health.clone(), metrics.clone()));
        Self { metrics, health, service_health, conntrack: None, frontends: Arc::default() }
    }

    fn queued(&self) {
        let now = SystemTime::now();
        self.metrics.queued(now);
        self.health.queued(now);
    }
}

/// Publishes problems beyond the log (Kubernetes Events).
pub trait ProblemSink {
    fn publish(&mut self, problem: &Problem);
    /// A Service's health check port could not be opened.
    fn health_check_failed(&mut self, _failure: &Failure) {}
}

/// How often to sync.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// At most one sync per this interval (bursts are coalesced).
    pub min_sync_interval: Duration,
    /// A full resync at least this often.
    pub sync_period: Duration,
}

/// Runs until `shutdown` completes, or `attach` fails. `attach` attaches
/// the datapath's programs; it runs beside the syncs, so that the first
/// one need not wait for the programs to be verified. Once both `attach`
/// and a sync have succeeded, `ready_file` (if any) is created: a
/// readiness signal for probes and tests that the datapath is attached
/// and programmed. `node_addresses` holds the node's current NodePort
/// addresses (`node_addresses::follow`); a change re-translates
/// everything.
#[allow(clippy::too_many_arguments, reason = "the agent's parts, each used once; a struct would only rename them")]
pub async fn run<W: MapWriter>(
    syncer: &mut Syncer<W>,
    source: &mut Source,
    sink: &mut dyn ProblemSink,
    pacing: Pacing,
    ready_file: Option<&Path>,
    observers: &Observers,
    mut node_addresses: tokio::sync::watch::Receiver<Vec<std::net::IpAddr>>,
    attach: impl Future<Output = anyhow::Result<()>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut pacer = SyncPacer::new(pacing.min_sync_interval, pacing.sync_period);
    let mut problems = ProblemLog::default();
    let mut announced_ready = false;
    let mut readiness = Readiness { attached: false, synced: false, file: ready_file };
    let mut node_changed = false;
    tokio::pin!(shutdown);
    tokio::pin!(attach);
    // The first sync is pending from the start: an agent that never
    // manages one turns unhealthy.
    observers.queued();
    loop {
        let due = pacer.due(Instant::now().into_std());
        tokio::select! {
            attached = &mut attach, if !readiness.attached => {
                attached?;
                readiness.attached = true;
                readiness.announce();
            }
            changed = source.changed() => {
                match changed {
                    Ok(true) => {
                        pacer.request();
                        observers.queued();
                    }
                    Ok(false) => {}
                    Err(e) => warn!(error = %format!("{e:#}"), "source error; keeping the current datapath"),
                }
                observers.health.node(source.node());
            }
            Ok(()) = node_addresses.changed() => {
                syncer.node_mut().node_addresses = node_addresses.borrow_and_update().clone();
                observers.service_health.node_addresses_changed(&syncer.node().node_addresses);
                node_changed = true;
                pacer.request();
                observers.queued();
            }
            () = tokio::time::sleep_until(due.into()), if source.ready() => {
                if !announced_ready {
                    info!("initial state complete; programming the datapath");
                    announced_ready = true;
                }
                let now = Instant::now().into_std();
                let mut full = pacer.full_due(now) || syncer.needs_full() || std::mem::take(&mut node_changed);
                if let Some(zone) = source.zone()
                    && syncer.node().zone != zone
                {
                    info!(zone = ?zone, "node zone");
                    syncer.node_mut().zone = zone;
                    full = true;
                }
                let ok = sync_once(syncer, source, full, &mut problems, sink, observers);
                if ok && let Some(conntrack) = &observers.conntrack {
                    conntrack.synced(syncer.listed_udp_pairs());
                }
                // After the maps are written: opening ports never delays the datapath.
                reconcile_health_checks(syncer, sink, observers);
                pacer.synced(Instant::now().into_std(), full, ok);
                if ok && !readiness.synced {
                    readiness.synced = true;
                    readiness.announce();
                }
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

/// What readiness waits for: the programs attached and a sync done.
struct Readiness<'a> {
    attached: bool,
    synced: bool,
    /// The ready file, until written.
    file: Option<&'a Path>,
}

impl Readiness<'_> {
    /// Writes the ready file once both are done.
    fn announce(&mut self) {
        if !(self.attached && self.synced) {
            return;
        }
        if let Some(path) = self.file.take()
            && let Err(e) = std::fs::write(path, b"ready\n")
        {
            warn!(path = %path.display(), error = %e, "cannot write the ready file");
        }
    }
}

/// Opens, updates and closes the Services' health check servers when a
/// check changed, or to retry a port that failed to open.
fn reconcile_health_checks<W: MapWriter>(syncer: &mut Syncer<W>, sink: &mut dyn ProblemSink, observers: &Observers) {
    let changed = syncer.health_checks().take_changed();
    if !changed && !observers.service_health.has_failures() {
        return;
    }
    let desired = syncer.health_checks().desired();
    for failure in observers.service_health.reconcile(&desired) {
        let (namespace, name) = &failure.service;
        warn!(namespace = %namespace, name = %name, port = failure.port, reason = %failure.reason, "health check not served; retrying at each sync");
        sink.health_check_failed(&failure);
    }
}

/// Runs the sync a source calls for: incremental when only some Services
/// changed, full after a relist, a file change, or as the periodic resync
/// (`full`).
fn run_sync<W: MapWriter>(
    syncer: &mut Syncer<W>,
    source: &mut Source,
    full: bool,
) -> (anyhow::Result<SyncReport>, Vec<Problem>) {
    match source {
        Source::File { latest: Some(o), .. } => (syncer.sync(&o.services, &o.slices), o.problems.clone()),
        Source::File { latest: None, .. } => (syncer.sync([], []), Vec::new()),
        Source::Kubernetes(k) => {
            let tracker = k.tracker_mut();
            match tracker.take_changes() {
                Changes::Services(changed) if !full => {
                    let changes = changed.into_iter().map(|key| {
                        let (svc, slices) = tracker.service_objects(&key);
                        (key, svc, slices)
                    });
                    (syncer.update(changes.collect::<Vec<_>>()), Vec::new())
                }
                _ => (syncer.sync(tracker.services(), tracker.slices()), Vec::new()),
            }
        }
    }
}

/// After a successful sync: how long the EndpointSlice changes it
/// programmed took from their trigger to the datapath. After a failed
/// one the times stay pending, so the latency includes the retries.
fn observe_programming_latency(source: &mut Source, observers: &Observers, now: SystemTime) {
    if let Source::Kubernetes(k) = source {
        for triggered in k.tracker_mut().take_trigger_times() {
            observers.metrics.programmed(triggered, now);
        }
    }
}

/// One sync with its reporting; returns whether it succeeded.
fn sync_once<W: MapWriter>(
    syncer: &mut Syncer<W>,
    source: &mut Source,
    full: bool,
    problems: &mut ProblemLog,
    sink: &mut dyn ProblemSink,
    observers: &Observers,
) -> bool {
    let started = Instant::now();
    let (result, mut unreadable) = run_sync(syncer, source, full);
    let mut outcome =
        SyncOutcome { full, took: started.elapsed(), writes: None, repaired: 0, invalid_now: 0, invalid_new: 0 };
    let now = SystemTime::now();
    match result {
        Ok(report) => {
            unreadable.extend(report.problems);
            let fresh = problems.fresh(&unreadable);
            outcome = SyncOutcome {
                writes: Some(report.writes),
                repaired: report.repaired,
                invalid_now: problems.current(),
                invalid_new: fresh.len(),
                ..outcome
            };
            observers.metrics.synced(&outcome, now);
            observers.frontends.synced(syncer.frontend_labels(), full);
            observers.health.updated(now);
            observe_programming_latency(source, observers, SystemTime::now());
            for problem in fresh {
                warn!(kind = problem.kind, namespace = %problem.namespace, name = %problem.name, reason = %problem.message, "object skipped");
                sink.publish(&problem);
            }
            if report.repaired > 0 {
                warn!(entries = report.repaired, "map entries changed behind the agent's back were put back");
            }
            let level_info = report.writes > 0;
            if level_info {
                info!(
                    frontends = report.frontends,
                    backends = report.backends,
                    writes = report.writes,
                    invalid_objects = problems.current(),
                    invalid_objects_seen = problems.total,
                    took_us = report.took.as_micros() as u64,
                    "datapath programmed"
                );
            } else {
                debug!(frontends = report.frontends, took_us = report.took.as_micros() as u64, "datapath in sync");
            }
            true
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "sync failed; retrying with a full sync");
            observers.metrics.synced(&outcome, now);
            // Unlike kube-proxy, a failed sync counts as pending work even
            // when nothing new was queued: the maps may be half-written.
            observers.health.queued(now);
            false
        }
    }
}
