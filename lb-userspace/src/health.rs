//! The agent's health, with kube-proxy's semantics
//! (`pkg/proxy/healthcheck/proxy_health.go`): healthy unless a change has
//! been waiting for a sync longer than the health timeout (kube-proxy
//! uses twice the sync period). `/healthz` also reports the node
//! ineligible while its Node is being deleted or carries the cluster
//! autoscaler's scale-down taint, so external load balancers stop sending
//! traffic to a node about to go; `/livez` ignores that.
//!
//! Pure: the time is passed in, so tests drive it with a synthetic clock.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::Node;

/// The taint the cluster autoscaler puts on a node it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Debug, Default)]
struct State {
    /// When the oldest change not yet synced was queued.
    oldest_pending: Option<SystemTime>,
    last_updated: Option<SystemTime>,
    node_eligible: Option<bool>,
}

/// Shared between the sync loop (writer) and the health server (reader).
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    state: Mutex<State>,
}

/// What one probe answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
    pub node_eligible: bool,
}

impl ProxyHealth {
    /// `timeout`: how long a queued change may wait for its sync.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A change is waiting for a sync (keeps the oldest such time).
    pub fn queued(&self, now: SystemTime) {
        self.state().oldest_pending.get_or_insert(now);
    }

    /// A sync succeeded: nothing is pending any more.
    pub fn updated(&self, now: SystemTime) {
        let mut state = self.state();
        state.oldest_pending = None;
        state.last_updated = Some(now);
    }

    /// Records this node's Node object (`None`: not known yet, eligible).
    pub fn node(&self, node: Option<&Node>) {
        self.state().node_eligible = node.map(node_eligible);
    }

    /// `/livez`: syncs keep up.
    pub fn livez(&self, now: SystemTime) -> Verdict {
        let state = self.state();
        let overdue = state.oldest_pending.is_some_and(|queued| now > queued + self.timeout);
        Verdict {
            healthy: !overdue,
            last_updated: state.last_updated,
            current_time: now,
            node_eligible: state.node_eligible.unwrap_or(true),
        }
    }

    /// `/healthz`: syncs keep up and the node is not going away.
    pub fn healthz(&self, now: SystemTime) -> Verdict {
        let verdict = self.livez(now);
        Verdict { healthy: verdict.healthy && verdict.node_eligible, ..verdict }
    }
}

/// kube-proxy's rule: a node being deleted, or marked for deletion by the
/// cluster autoscaler, should receive no new traffic from load balancers.
pub fn node_eligible(node: &Node) -> bool {
    let deleting = node.metadata.deletion_timestamp.is_some();
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    !deleting && !tainted
}

impl Verdict {
    /// kube-proxy's body: `/healthz` adds `nodeEligible`, `/livez` does not.
    pub fn json(&self, with_node: bool) -> String {
        // Never synced: Go's zero time, as kube-proxy prints it.
        let last = self.last_updated.map_or_else(|| "0001-01-01 00:00:00 +0000 UTC".to_owned(), go_time);
        let now = go_time(self.current_time);
        if with_node {
            format!(r#"{{"lastUpdated": "{last}","currentTime": "{now}", "nodeEligible": {}}}"#, self.node_eligible)
        } else {
            format!(r#"{{"lastUpdated": "{last}","currentTime": "{now}"}}"#)
        }
    }
}

/// A time as Go's `time.Time.String()` prints it in UTC, the format
/// kube-proxy's health bodies use (`2006-01-02 15:04:05.999999999 +0000 UTC`).
fn go_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let nanos = since.subsec_nanos();
    let fraction = if nanos == 0 { String::new() } else { format!(".{nanos:09}").trim_end_matches('0').to_owned() };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}{fraction} +0000 UTC", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm), to avoid a date crate for one timestamp format.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn healthy_until_a_queued_change_waits_longer_than_the_timeout() {
        let health = ProxyHealth::new(TIMEOUT);
        assert!(health.healthz(at(0)).healthy, "nothing queued yet");
        health.queued(at(0));
        health.queued(at(30));
        assert!(health.healthz(at(60)).healthy);
        assert!(!health.healthz(at(61)).healthy, "the oldest queued change counts");
        health.updated(at(62));
        assert!(health.healthz(at(200)).healthy, "a sync clears the backlog");
        assert_eq!(health.healthz(at(200)).last_updated, Some(at(62)));
    }

    #[test]
    fn a_node_being_deleted_or_scaled_down_fails_healthz_but_not_livez() {
        let health = ProxyHealth::new(TIMEOUT);
        let tainted: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"taints": [{"key": TO_BE_DELETED_TAINT, "effect": "NoSchedule"}]}
        }))
        .unwrap();
        health.node(Some(&tainted));
        assert!(!health.healthz(at(0)).healthy);
        assert!(health.livez(at(0)).healthy);
        let deleting: Node =
            serde_json::from_value(json!({"metadata": {"name": "n", "deletionTimestamp": "2026-01-01T00:00:00Z"}}))
                .unwrap();
        health.node(Some(&deleting));
        assert!(!health.healthz(at(0)).node_eligible);
        health.node(Some(&serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap()));
        assert!(health.healthz(at(0)).healthy);
    }

    #[test]
    fn bodies_look_like_kube_proxys() {
        let verdict = Verdict { healthy: true, last_updated: Some(at(0)), current_time: at(1), node_eligible: true };
        assert_eq!(
            verdict.json(true),
            r#"{"lastUpdated": "2023-11-14 22:13:20 +0000 UTC","currentTime": "2023-11-14 22:13:21 +0000 UTC", "nodeEligible": true}"#
        );
        assert!(!verdict.json(false).contains("nodeEligible"));
        assert_eq!(go_time(UNIX_EPOCH + Duration::from_millis(1500)), "1970-01-01 00:00:01.5 +0000 UTC");
    }
}
