//! Prometheus metrics. Sync metrics carry kube-proxy's names and meanings
//! (`pkg/proxy/metrics/metrics.go`), so existing dashboards and alerts
//! work; this datapath's own metrics are prefixed `lb_`.
//!
//! Packet counters and map sizes are read from the pinned maps at scrape
//! time, not copied into the agent: the kernel's counters are the truth,
//! and a scrape costs the agent nothing between scrapes.
//!
//! Per-Service counters (new flows, rejected, dropped, by frontend) are
//! in `frontend_metrics`; packets of established flows are counted per
//! reason only.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::datapath::maps::{self, ServiceMaps};

/// kube-proxy's sync latency buckets: 1 ms doubling to ~16 s.
fn sync_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

/// kube-proxy's network programming latency buckets: 0.25 s and 0.5 s,
/// then every second to 59 s, every 5 s to 115 s, every 30 s to 300 s.
fn network_programming_buckets() -> impl Iterator<Item = f64> {
    let fine = [0.25, 0.5].into_iter();
    let seconds = (1..60).map(f64::from);
    let five = (0..12).map(|i| f64::from(60 + 5 * i));
    let thirty = (0..7).map(|i| f64::from(120 + 30 * i));
    fine.chain(seconds).chain(five).chain(thirty)
}

/// Seconds since the epoch, as kube-proxy's timestamp gauges hold.
fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// Label set `code="200"` (kube-proxy's health counters).
type CodeLabel = Vec<(&'static str, String)>;

/// What the sync loop and the health server record.
#[derive(Debug)]
pub struct SyncMetrics {
    sync_duration: Histogram,
    full_sync_duration: Histogram,
    partial_sync_duration: Histogram,
    network_programming: Histogram,
    last_sync: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_queued: Gauge<f64, std::sync::atomic::AtomicU64>,
    syncs_failed: Counter,
    map_writes: Counter,
    entries_repaired: Counter,
    invalid_objects: Gauge,
    invalid_objects_seen: Counter,
    healthz: Family<CodeLabel, Counter>,
    livez: Family<CodeLabel, Counter>,
    health_check_servers: Gauge,
    health_check_listen_failures: Counter,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self {
            sync_duration: Histogram::new(sync_buckets()),
            full_sync_duration: Histogram::new(sync_buckets()),
            partial_sync_duration: Histogram::new(sync_buckets()),
            network_programming: Histogram::new(network_programming_buckets()),
            last_sync: Gauge::default(),
            last_queued: Gauge::default(),
            syncs_failed: Counter::default(),
            map_writes: Counter::default(),
            entries_repaired: Counter::default(),
            invalid_objects: Gauge::default(),
            invalid_objects_seen: Counter::default(),
            healthz: Family::default(),
            livez: Family::default(),
            health_check_servers: Gauge::default(),
            health_check_listen_failures: Counter::default(),
        }
    }
}

/// One sync's outcome, as the sync loop saw it.
#[derive(Clone, Copy, Debug)]
pub struct SyncOutcome {
    pub full: bool,
    pub took: Duration,
    /// `None`: the sync failed (a map write or read-back failed).
    pub writes: Option<usize>,
    pub repaired: usize,
    /// Objects skipped as untranslatable now, and newly reported ones.
    pub invalid_now: usize,
    pub invalid_new: usize,
}

impl SyncMetrics {
    /// A change was queued for the next sync.
    pub fn queued(&self, now: SystemTime) {
        self.last_queued.set(unix_seconds(now));
    }

    pub fn synced(&self, outcome: &SyncOutcome, now: SystemTime) {
        let seconds = outcome.took.as_secs_f64();
        self.sync_duration.observe(seconds);
        if outcome.full { &self.full_sync_duration } else { &self.partial_sync_duration }.observe(seconds);
        match outcome.writes {
            Some(writes) => {
                self.last_sync.set(unix_seconds(now));
                self.map_writes.inc_by(writes as u64);
                self.entries_repaired.inc_by(outcome.repaired as u64);
                self.invalid_objects.set(outcome.invalid_now as i64);
                self.invalid_objects_seen.inc_by(outcome.invalid_new as u64);
            }
            None => {
                self.syncs_failed.inc();
            }
        }
    }

    /// A sync programmed an EndpointSlice change triggered at `triggered`
    /// (its controller's annotation); observed at `now`, after the sync.
    pub fn programmed(&self, triggered: SystemTime, now: SystemTime) {
        self.network_programming.observe(now.duration_since(triggered).unwrap_or_default().as_secs_f64());
    }

    /// A health probe was answered with `code`.
    pub fn probe(&self, livez: bool, code: u16) {
        let family = if livez { &self.livez } else { &self.healthz };
        family.get_or_create(&vec![("code", code.to_string())]).inc();
    }

    /// Service health check ports open now.
    pub fn health_check_servers(&self, open: usize) {
        self.health_check_servers.set(open as i64);
    }

    /// A Service health check port could not be opened (counted at every
    /// attempt, so a rate above zero means one is still failing).
    pub fn health_check_listen_failed(&self) {
        self.health_check_listen_failures.inc();
    }

    fn register(&self, registry: &mut Registry) {
        let kube = registry.sub_registry_with_prefix("kubeproxy");
        kube.register(
            "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            self.sync_duration.clone(),
        );
        kube.register(
            "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            self.full_sync_duration.clone(),
        );
        kube.register(
            "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            self.partial_sync_duration.clone(),
        );
        kube.register(
            "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            self.network_programming.clone(),
        );
        kube.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            self.last_sync.clone(),
        );
        kube.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            self.last_queued.clone(),
        );
        kube.register("proxy_healthz", "Cumulative proxy healthz HTTP status", self.healthz.clone());
        kube.register("proxy_livez", "Cumulative proxy livez HTTP status", self.livez.clone());
        let lb = registry.sub_registry_with_prefix("lb");
        lb.register(
            "sync_failures",
            "Syncs that failed (a map write or read failed); retried as full syncs",
            self.syncs_failed.clone(),
        );
        lb.register("sync_map_writes", "Map entries written or deleted by syncs", self.map_writes.clone());
        lb.register(
            "sync_map_entries_repaired",
            "Map entries a full sync found changed behind the agent's back and put back",
            self.entries_repaired.clone(),
        );
        lb.register(
            "invalid_objects",
            "Services and EndpointSlices skipped as untranslatable now",
            self.invalid_objects.clone(),
        );
        lb.register(
            "invalid_objects_reported",
            "Distinct untranslatable objects reported since start",
            self.invalid_objects_seen.clone(),
        );
        lb.register(
            "service_health_check_servers",
            "healthCheckNodePort servers listening (LoadBalancer Services with externalTrafficPolicy Local)",
            self.health_check_servers.clone(),
        );
        lb.register(
            "service_health_check_listen_failures",
            "Attempts to open a healthCheckNodePort that failed (retried at every sync)",
            self.health_check_listen_failures.clone(),
        );
    }
}

/// Reads the datapath's counters and map sizes from the pinned maps at
/// each scrape.
#[derive(Debug)]
struct DatapathCollector {
    pin_dir: PathBuf,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A scrape while the maps cannot be read (agent starting, pins
        // gone) shows the metrics missing rather than failing the scrape.
        if let Ok(counters) = maps::counters(&self.pin_dir) {
            let mut metric = encoder.encode_descriptor(
                "lb_datapath_packets",
                "Packets the datapath handled, by what it did with them (summed over CPUs)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (counter, value) in counters {
                let labels = [("reason", counter.name())];
                ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
            }
        }
        // Conntrack is not counted here: reading a full table costs about
        // half a second, and `lb_conntrack_entries` has its size as of the
        // last garbage collection pass, which reads it anyway.
        let Some(sizes) = ServiceMaps::from_pins(&self.pin_dir).and_then(|maps| maps.sizes()).ok() else {
            return Ok(());
        };
        encode_gauge(&mut encoder, "lb_frontends", "Frontends (address, port, protocol) programmed", sizes.frontends)?;
        let help = "Maglev tables the kernel holds, about 130 KiB each (frontends with equal tables share one)";
        encode_gauge(&mut encoder, "lb_maglev_tables", help, sizes.maglev_tables)?;
        let mut metric = encoder.encode_descriptor(
            "lb_map_entries",
            "Entries in each datapath map",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (map, len) in sizes.entries {
            ConstGauge::new(len as i64).encode(metric.encode_family(&[("map", map)])?)?;
        }
        Ok(())
    }
}

/// One unlabelled gauge.
fn encode_gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: usize) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
    ConstGauge::new(value as i64).encode(metric)
}

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// `sync`: shared with the sync loop; `pin_dir`: where the datapath's
    /// maps are pinned.
    pub fn new(sync: &SyncMetrics, pin_dir: PathBuf) -> Self {
        let mut registry = Registry::default();
        sync.register(&mut registry);
        registry.register_collector(Box::new(DatapathCollector { pin_dir }));
        Self { registry }
    }

    /// Adds the per-Service counters (`frontend_metrics`).
    pub fn register_frontends(&mut self, collector: crate::frontend_metrics::FrontendCollector) {
        self.registry.register_collector(Box::new(collector));
    }

    /// Adds the conntrack worker's metrics.
    pub fn register_conntrack(&mut self, conntrack: &crate::conntrack::metrics::ConntrackMetrics) {
        conntrack.register(&mut self.registry);
    }

    /// The Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_metrics_use_kube_proxys_names() {
        let sync = SyncMetrics::default();
        let outcome = SyncOutcome {
            full: true,
            took: Duration::from_millis(3),
            writes: Some(7),
            repaired: 0,
            invalid_now: 1,
            invalid_new: 1,
        };
        sync.synced(&outcome, UNIX_EPOCH + Duration::from_secs(1000));
        sync.synced(&SyncOutcome { full: false, writes: None, ..outcome }, UNIX_EPOCH);
        sync.probe(false, 503);
        sync.health_check_servers(2);
        sync.health_check_listen_failed();
        let text = Metrics::new(&sync, "/nonexistent".into()).render();
        for line in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count 2",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1000",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "lb_sync_map_writes_total 7",
            "lb_sync_failures_total 1",
            "lb_invalid_objects 1",
            "lb_service_health_check_servers 2",
            "lb_service_health_check_listen_failures_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line || l.starts_with(&format!("{line}."))),
                "{line:?} missing from\n{text}"
            );
        }
    }
}
