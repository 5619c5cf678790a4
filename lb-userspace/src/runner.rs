//! When to sync: a bounded-frequency pacer in the spirit of kube-proxy's
//! BoundedFrequencyRunner. Bursts of changes are coalesced (at most one
//! sync per `min_interval`), a change is never left waiting longer than
//! `min_interval` after the previous sync, a full sync (which re-reads the
//! maps and repairs drift) happens at least every `sync_period` whether or
//! not changes keep coming, and a failed sync is retried with a backoff.
//! Pure: the caller passes the time in, so tests drive it with a
//! synthetic clock.

use std::time::{Duration, Instant};

/// The first retry after a failed sync; doubled per failure up to `sync_period`.
const FIRST_RETRY: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug)]
pub struct SyncPacer {
    min_interval: Duration,
    sync_period: Duration,
    last_sync: Option<Instant>,
    last_full: Option<Instant>,
    pending: bool,
    failures: u32,
}

impl SyncPacer {
    pub fn new(min_interval: Duration, sync_period: Duration) -> Self {
        Self {
            min_interval,
            sync_period: sync_period.max(min_interval),
            last_sync: None,
            last_full: None,
            pending: false,
            failures: 0,
        }
    }

    /// Something changed: a sync is wanted.
    pub fn request(&mut self) {
        self.pending = true;
    }

    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Whether a sync run at `now` must be full: the periodic one is due.
    pub fn full_due(&self, now: Instant) -> bool {
        self.last_full.is_none_or(|last| now >= last + self.sync_period)
    }

    /// The instant the next sync is due (`now` if it is overdue).
    pub fn due(&self, now: Instant) -> Instant {
        let Some(last) = self.last_sync else {
            return now;
        };
        let periodic = self.last_full.map_or(now, |full| full + self.sync_period);
        let wanted = if self.failures > 0 {
            last + self.retry_delay()
        } else if self.pending {
            last + self.min_interval
        } else {
            periodic
        };
        wanted.min(periodic).max(last + self.min_interval).max(now)
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.due(now) <= now
    }

    /// A sync ran at `now`: full or incremental, and whether it succeeded.
    pub fn synced(&mut self, now: Instant, full: bool, ok: bool) {
        self.last_sync = Some(now);
        if ok {
            self.pending = false;
            self.failures = 0;
            if full {
                self.last_full = Some(now);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
        }
    }

    fn retry_delay(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        (FIRST_RETRY * 2u32.pow(doublings)).min(self.sync_period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const PERIOD: Duration = Duration::from_secs(30);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_sync_is_due_at_once_and_full() {
        let t0 = Instant::now();
        let pacer = SyncPacer::new(MIN, PERIOD);
        assert!(pacer.is_due(t0));
        assert!(pacer.full_due(t0));
    }

    #[test]
    fn burst_of_changes_coalesces_into_one_sync_after_min_interval() {
        let t0 = Instant::now();
        let mut pacer = SyncPacer::new(MIN, PERIOD);
        pacer.synced(t0, true, true);
        for n in [1, 5, 20, 60] {
            pacer.request();
            assert!(!pacer.is_due(t0 + ms(n)), "not before min_interval ({n} ms)");
        }
        assert_eq!(pacer.due(t0 + ms(60)), t0 + MIN);
        assert!(!pacer.full_due(t0 + MIN), "an ordinary change is synced incrementally");
        pacer.synced(t0 + MIN, false, true);
        assert!(!pacer.pending());
    }

    #[test]
    fn change_after_a_quiet_period_syncs_immediately() {
        let t0 = Instant::now();
        let mut pacer = SyncPacer::new(MIN, PERIOD);
        pacer.synced(t0, true, true);
        let later = t0 + Duration::from_secs(5);
        pacer.request();
        assert_eq!(pacer.due(later), later);
    }

    #[test]
    fn without_changes_a_full_sync_runs_every_sync_period() {
        let t0 = Instant::now();
        let mut pacer = SyncPacer::new(MIN, PERIOD);
        pacer.synced(t0, true, true);
        assert!(!pacer.is_due(t0 + PERIOD - ms(1)));
        assert!(pacer.is_due(t0 + PERIOD));
        assert!(pacer.full_due(t0 + PERIOD));
    }

    #[test]
    fn constant_churn_does_not_postpone_the_full_sync() {
        let t0 = Instant::now();
        let mut pacer = SyncPacer::new(MIN, PERIOD);
        pacer.synced(t0, true, true);
        let mut now = t0;
        let mut fulls = 0;
        // A change every 50 ms for two periods: every sync has a change pending.
        while now < t0 + PERIOD * 2 {
            pacer.request();
            now = pacer.due(now);
            let full = pacer.full_due(now);
            fulls += usize::from(full);
            pacer.synced(now, full, true);
            now += ms(50);
        }
        assert_eq!(fulls, 2, "one full sync per period despite the churn");
    }

    #[test]
    fn a_failed_sync_is_retried_with_backoff_and_stays_pending() {
        let t0 = Instant::now();
        let mut pacer = SyncPacer::new(MIN, PERIOD);
        pacer.synced(t0, true, true);
        pacer.request();
        pacer.synced(t0 + MIN, false, false);
        assert!(pacer.pending());
        assert_eq!(pacer.due(t0 + MIN), t0 + MIN + FIRST_RETRY);
        pacer.synced(t0 + MIN + FIRST_RETRY, false, false);
        assert_eq!(pacer.due(t0 + MIN + FIRST_RETRY), t0 + MIN + FIRST_RETRY * 3, "doubled");
    }
}
