//! When to sync: a bounded-frequency pacer in the spirit of kube-proxy's
//! BoundedFrequencyRunner. Bursts of changes are coalesced (at most one
//! sync per `min_interval`), a change is never left waiting longer than
//! `min_interval` after the previous sync, and a full resync happens at
//! least every `sync_period` even without changes (it repairs drift, e.g.
//! a map entry removed by hand). Pure: the caller passes the time in, so
//! tests drive it with a synthetic clock.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct SyncPacer {
    min_interval: Duration,
    sync_period: Duration,
    last_sync: Option<Instant>,
    pending: bool,
}

impl SyncPacer {
    pub fn new(min_interval: Duration, sync_period: Duration) -> Self {
        Self { min_interval, sync_period: sync_period.max(min_interval), last_sync: None, pending: false }
    }

    /// Something changed: a sync is wanted.
    pub fn request(&mut self) {
        self.pending = true;
    }

    pub fn pending(&self) -> bool {
        self.pending
    }

    /// The instant the next sync is due.
    pub fn due(&self, now: Instant) -> Instant {
        match self.last_sync {
            None => now,
            Some(last) if self.pending => (last + self.min_interval).max(now),
            Some(last) => last + self.sync_period,
        }
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.due(now) <= now
    }

    /// A sync ran at `now`.
    pub fn synced(&mut self, now: Instant) {
        self.last_sync = Some(now);
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const PERIOD: Duration = Duration::from_secs(30);

    #[test]
    fn first_sync_is_due_at_once() {
        let t0 = Instant::now();
        assert!(SyncPacer::new(MIN, PERIOD).is_due(t0));
    }

    #[test]
    fn burst_of_changes_coalesces_into_one_sync_after_min_interval() {
        let t0 = Instant::now();
        let mut pacer = SyncPacer::new(MIN, PERIOD);
        pacer.synced(t0);
        for ms in [1, 5, 20, 60] {
            pacer.request();
            assert!(!pacer.is_due(t0 + Duration::from_millis(ms)), "not before min_interval ({ms} ms)");
        }
        assert_eq!(pacer.due(t0 + Duration::from_millis(60)), t0 + MIN);
        assert!(pacer.is_due(t0 + MIN));
        pacer.synced(t0 + MIN);
        assert!(!pacer.pending());
    }

    #[test]
    fn change_after_a_quiet_period_syncs_immediately() {
        let t0 = Instant::now();
        let mut pacer = SyncPacer::new(MIN, PERIOD);
        pacer.synced(t0);
        let later = t0 + Duration::from_secs(5);
        pacer.request();
        assert_eq!(pacer.due(later), later);
    }

    #[test]
    fn without_changes_resyncs_every_sync_period() {
        let t0 = Instant::now();
        let mut pacer = SyncPacer::new(MIN, PERIOD);
        pacer.synced(t0);
        assert!(!pacer.is_due(t0 + PERIOD - Duration::from_millis(1)));
        assert!(pacer.is_due(t0 + PERIOD));
    }
}
