//! Per-Service counters: the datapath counts new flows per frontend id
//! (`lb_common::frontend_stats`); this labels them with the Service port
//! and address each id serves, at scrape time, and removes the counters
//! of frontends that are gone.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};
use tracing::{debug, warn};

use crate::{
    datapath::maps,
    state::labels::{FrontendLabel, FrontendLabels},
};

type Table = Arc<HashMap<u32, FrontendLabel>>;

/// The frontend labels as of the last sync, shared with the scrapes.
#[derive(Debug, Default)]
pub struct FrontendDirectory {
    /// Where the counters are pinned (`None`: nothing to prune).
    pin_dir: Option<PathBuf>,
    current: RwLock<(u64, Table)>,
}

impl FrontendDirectory {
    pub fn new(pin_dir: PathBuf) -> Self {
        Self { pin_dir: Some(pin_dir), current: RwLock::default() }
    }

    /// After a sync: takes the labels if they changed, and after a full
    /// sync removes the counters of frontends no longer served.
    pub fn synced(&self, labels: &FrontendLabels, full: bool) {
        let table = {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            if current.0 != labels.generation() {
                *current = (labels.generation(), labels.snapshot());
            }
            current.1.clone()
        };
        let (true, Some(pin_dir)) = (full, &self.pin_dir) else { return };
        match maps::prune_frontend_stats(pin_dir, |id| table.contains_key(&id)) {
            Ok(0) => {}
            Ok(removed) => debug!(removed, "counters of removed frontends dropped"),
            Err(e) => warn!(error = %format!("{e:#}"), "could not prune per-frontend counters"),
        }
    }

    fn table(&self) -> Table {
        self.current.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}

/// Reads the per-frontend counters at each scrape.
#[derive(Debug)]
pub struct FrontendCollector {
    pub pin_dir: PathBuf,
    pub directory: Arc<FrontendDirectory>,
}

/// `lb_service_*` label set of one frontend.
fn labels(label: &FrontendLabel) -> [(&'static str, String); 6] {
    [
        ("namespace", label.service.namespace.clone()),
        ("service", label.service.name.clone()),
        ("port", label.service.port.clone()),
        ("protocol", label.service.protocol.to_string()),
        ("kind", label.kind.as_str().to_owned()),
        ("frontend", std::net::SocketAddr::new(label.address, label.port).to_string()),
    ]
}

impl Collector for FrontendCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Unreadable (starting, pins gone): the metrics are missing, the
        // scrape still succeeds.
        let Ok(stats) = maps::frontend_stats(&self.pin_dir) else { return Ok(()) };
        let table = self.directory.table();
        // Counters of a frontend removed since the last full sync have no
        // label any more: left out.
        let rows: Vec<_> = stats.iter().filter_map(|(id, s)| Some((labels(table.get(id)?), *s))).collect();
        type Field = fn(&lb_common::frontend_stats::FrontendStatsV4) -> u64;
        let families: [(&str, &str, Field); 3] = [
            ("lb_service_new_flows", "New flows balanced to a backend, by Service frontend", |s| s.new_flows),
            (
                "lb_service_rejected_flows",
                "New flows refused because the Service has no endpoints, by Service frontend",
                |s| s.rejected,
            ),
            (
                "lb_service_dropped_flows",
                "New flows dropped (loadBalancerSourceRanges, or a Local policy without a local endpoint), by Service frontend",
                |s| s.dropped,
            ),
        ];
        for (name, help, field) in families {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, stats) in &rows {
                ConstCounter::new(field(stats)).encode(metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrontendKind, Protocol, ServicePortName};

    #[test]
    fn an_ipv6_frontend_is_labelled_with_a_bracketed_address() {
        let label = FrontendLabel {
            service: ServicePortName {
                namespace: "ns".into(),
                name: "web".into(),
                port: "http".into(),
                protocol: Protocol::Tcp,
            },
            kind: FrontendKind::ClusterIp,
            address: "fd00:10:96::a".parse().unwrap(),
            port: 80,
        };
        assert_eq!(labels(&label)[5], ("frontend", "[fd00:10:96::a]:80".to_owned()));
    }
}
