//! What the conntrack worker exports: table pressure and what garbage
//! collection removed. Prefixed `lb_conntrack_` (kube-proxy has no
//! conntrack table of its own to name these after).

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::{expiry::State, sweep::SweepReport};

/// Label set `state="closing"`.
type StateLabel = Vec<(&'static str, &'static str)>;

#[derive(Debug)]
pub struct ConntrackMetrics {
    entries: Gauge,
    capacity: Gauge,
    removed: Family<StateLabel, Counter>,
    purged: Counter,
    orphans: Counter,
    sweep_duration: Histogram,
    failures: Counter,
}

impl ConntrackMetrics {
    pub fn new(capacity: u32) -> Self {
        let metrics = Self {
            entries: Gauge::default(),
            capacity: Gauge::default(),
            removed: Family::default(),
            purged: Counter::default(),
            orphans: Counter::default(),
            // 1 ms doubling to ~16 s: a sweep of a full million-entry table
            // takes seconds.
            sweep_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            failures: Counter::default(),
        };
        metrics.capacity.set(i64::from(capacity));
        metrics
    }

    pub fn swept(&self, report: &SweepReport) {
        self.entries.set((report.entries - report.removed_total()) as i64);
        for (state, removed) in &report.removed {
            self.removed.get_or_create(&vec![("state", state.name())]).inc_by(*removed as u64);
        }
        self.orphans.inc_by(report.orphans as u64);
        self.sweep_duration.observe(report.took.as_secs_f64());
    }

    pub fn purged(&self, entries: usize) {
        self.purged.inc_by(entries as u64);
    }

    pub fn failed(&self) {
        self.failures.inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        let lb = registry.sub_registry_with_prefix("lb_conntrack");
        lb.register(
            "entries",
            "Conntrack entries after the last garbage collection (two per flow)",
            self.entries.clone(),
        );
        lb.register("capacity", "Conntrack table size (--conntrack-max)", self.capacity.clone());
        // Every state shows, at 0 until a flow in it expires.
        for state in State::ALL {
            let _ = self.removed.get_or_create(&vec![("state", state.name())]);
        }
        lb.register(
            "gc_removed_entries",
            "Entries garbage collection removed, by the state whose timeout their flow passed",
            self.removed.clone(),
        );
        lb.register(
            "udp_purged_entries",
            "UDP entries removed because their endpoint left the Service",
            self.purged.clone(),
        );
        lb.register(
            "orphan_entries",
            "Idle entries found without their flow's other entry (LRU eviction, an older version)",
            self.orphans.clone(),
        );
        lb.register("gc_duration_seconds", "Time one garbage collection pass took", self.sweep_duration.clone());
        lb.register("gc_failures", "Garbage collection passes or UDP purges that failed", self.failures.clone());
    }
}
