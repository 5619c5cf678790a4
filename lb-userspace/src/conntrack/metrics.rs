//! What the conntrack worker exports: table pressure and what garbage
//! collection removed. Prefixed `lb_conntrack_` (kube-proxy has no
//! conntrack table of its own to name these after) for `LB4_CT`, and
//! `lb_conntrack_v6_` for `LB6_CT`: each table has its own capacity and
//! fills on its own, and the IPv4 series keep the names they had before
//! there was an IPv6 table.

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
    prefix: &'static str,
    /// The flag that sets the capacity, for the help text.
    capacity_flag: &'static str,
    entries: Gauge,
    capacity: Gauge,
    removed: Family<StateLabel, Counter>,
    purged: Counter,
    orphans: Counter,
    sweep_duration: Histogram,
    failures: Counter,
}

impl ConntrackMetrics {
    /// The metrics of `LB4_CT`.
    pub fn new(capacity: u32) -> Self {
        Self::of("lb_conntrack", "--conntrack-max", capacity)
    }

    /// The metrics of `LB6_CT`.
    pub fn new_v6(capacity: u32) -> Self {
        Self::of("lb_conntrack_v6", "--conntrack-max-v6", capacity)
    }

    fn of(prefix: &'static str, capacity_flag: &'static str, capacity: u32) -> Self {
        let metrics = Self {
            prefix,
            capacity_flag,
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
        let lb = registry.sub_registry_with_prefix(self.prefix);
        lb.register(
            "entries",
            "Conntrack entries after the last garbage collection (two per flow)",
            self.entries.clone(),
        );
        lb.register("capacity", format!("Conntrack table size ({})", self.capacity_flag), self.capacity.clone());
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::{Metrics, SyncMetrics};

    #[test]
    fn a_sweep_shows_as_entries_removed_by_state_and_orphans() {
        let conntrack = ConntrackMetrics::new(1 << 20);
        let report = SweepReport {
            entries: 10,
            removed: [(State::Closing, 4)].into(),
            orphans: 1,
            took: Duration::from_millis(2),
        };
        conntrack.swept(&report);
        conntrack.purged(2);
        let mut metrics = Metrics::new(&SyncMetrics::default(), "/nonexistent".into());
        metrics.register_conntrack(&conntrack);
        let text = metrics.render();
        for line in [
            "lb_conntrack_entries 6",
            "lb_conntrack_capacity 1048576",
            "lb_conntrack_gc_removed_entries_total{state=\"closing\"} 4",
            "lb_conntrack_gc_removed_entries_total{state=\"syn\"} 0",
            "lb_conntrack_orphan_entries_total 1",
            "lb_conntrack_udp_purged_entries_total 2",
            "lb_conntrack_gc_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn the_ipv6_table_has_its_own_series() {
        let (v4, v6) = (ConntrackMetrics::new(1 << 20), ConntrackMetrics::new_v6(1 << 18));
        v6.swept(&SweepReport { entries: 3, ..SweepReport::default() });
        let mut metrics = Metrics::new(&SyncMetrics::default(), "/nonexistent".into());
        metrics.register_conntrack(&v4);
        metrics.register_conntrack(&v6);
        let text = metrics.render();
        for line in ["lb_conntrack_entries 0", "lb_conntrack_v6_entries 3", "lb_conntrack_v6_capacity 262144"] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
    }
}
