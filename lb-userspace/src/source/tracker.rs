//! Watch events → the objects a sync reads and which Services changed
//! (pure, no I/O): kube-proxy's change trackers. Fed by the watchers in
//! `kubernetes`, and in tests directly with watcher events.

use std::{
    collections::{BTreeSet, HashMap},
    time::SystemTime,
};

use k8s_openapi::api::core::v1::{Node, Service};
use kube::runtime::watcher;

use super::cache::{self, ObjectCache};
use crate::{
    state::ServiceRef,
    translate::{self, LAST_CHANGE_TRIGGER_TIME, SliceRecord},
};

/// The Node label topology hints are matched against.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Turns a watcher event about one kind of object into the same event
/// about what is cached of it.
fn map_event<A, B>(event: watcher::Event<A>, into: impl Fn(A) -> B) -> watcher::Event<B> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(into(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(into(o)),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(into(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what translation never reads before a Service is cached, as
/// kube-proxy strips managed fields: in real clusters managedFields and
/// the last-applied annotation are most of an object's size. Also gives
/// back the spare room decoding left in every list (a list decoded from
/// a stream grows by doubling). EndpointSlices are cached as
/// [`SliceRecord`]s instead.
fn compact_service(mut svc: Service) -> Service {
    svc.metadata.managed_fields = None;
    if let Some(annotations) = svc.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    if let Some(spec) = svc.spec.as_mut() {
        for list in [&mut spec.cluster_ips, &mut spec.ip_families, &mut spec.external_ips].into_iter().flatten() {
            list.shrink_to_fit();
        }
        if let Some(ranges) = spec.load_balancer_source_ranges.as_mut() {
            ranges.shrink_to_fit();
        }
        if let Some(ports) = spec.ports.as_mut() {
            ports.shrink_to_fit();
        }
    }
    if let Some(ingress) = svc.status.as_mut().and_then(|s| s.load_balancer.as_mut()).and_then(|lb| lb.ingress.as_mut())
    {
        ingress.shrink_to_fit();
    }
    svc
}

/// A slice's change-trigger time, if it carries a valid one (RFC 3339).
fn trigger_time(slice: &SliceRecord) -> Option<SystemTime> {
    let value = slice.metadata.annotations.as_ref()?.get(LAST_CHANGE_TRIGGER_TIME)?;
    value.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

/// The object an Apply/Delete event is about (None for relist events).
fn touched_key<K: kube::Resource>(event: &watcher::Event<K>) -> Option<ServiceRef> {
    match event {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => Some(cache::key(o)),
        _ => None,
    }
}

/// What changed since the last [`ChangeTracker::take_changes`].
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// A relist completed, or this node's zone changed: everything may
    /// have changed.
    All,
    /// Only these Services (or their slices) changed.
    Services(BTreeSet<ServiceRef>),
}

/// The cached objects and what changed in them.
pub struct ChangeTracker {
    services: ObjectCache<Service>,
    slices: ObjectCache<SliceRecord>,
    nodes: ObjectCache<Node>,
    /// Slice keys by the Service they belong to, to hand a changed Service
    /// its slices without scanning them all.
    slices_by_service: HashMap<ServiceRef, BTreeSet<ServiceRef>>,
    changed: BTreeSet<ServiceRef>,
    relisted: bool,
    /// Change-trigger times of the slices applied since the last
    /// [`ChangeTracker::take_trigger_times`], by Service: what
    /// `network_programming_duration_seconds` measures from.
    trigger_times: HashMap<ServiceRef, Vec<SystemTime>>,
    /// Trigger times from before the tracker existed are not measured: they
    /// would count the time the agent was not running.
    started: SystemTime,
}

impl Default for ChangeTracker {
    fn default() -> Self {
        Self::new(SystemTime::now())
    }
}

impl std::fmt::Debug for ChangeTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeTracker")
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .finish()
    }
}

impl ChangeTracker {
    /// A tracker that measures programming latency only for changes
    /// triggered after `started`.
    pub fn new(started: SystemTime) -> Self {
        Self {
            services: ObjectCache::default(),
            slices: ObjectCache::default(),
            nodes: ObjectCache::default(),
            slices_by_service: HashMap::new(),
            changed: BTreeSet::new(),
            relisted: false,
            trigger_times: HashMap::new(),
            started,
        }
    }

    /// Both Services and EndpointSlices have been listed at least once.
    pub fn ready(&self) -> bool {
        self.services.synced() && self.slices.synced()
    }

    /// Applies a Service event; returns whether anything visible changed.
    pub fn service_event(&mut self, event: watcher::Event<Service>) -> bool {
        let event = map_event(event, compact_service);
        let touched = touched_key(&event);
        let changed = self.services.apply(event);
        self.note(changed, touched);
        changed
    }

    /// Applies an EndpointSlice event.
    pub fn slice_event(&mut self, event: watcher::Event<SliceRecord>) -> bool {
        let trigger = match &event {
            watcher::Event::Apply(slice) => Some((translate::slice_owner(slice), Some(trigger_time(slice)))),
            watcher::Event::Delete(slice) => Some((translate::slice_owner(slice), None)),
            _ => None,
        };
        let changed = self.apply_slice(event);
        if changed && let Some((Some(owner), time)) = trigger {
            self.note_trigger(owner, time);
        }
        changed
    }

    /// As kube-proxy: a deleted slice's annotation dates from its last
    /// update, not from the deletion, so a deletion forgets the Service's
    /// pending times instead of adding a wrong one.
    /// `applied`: `None` for a deletion, else the applied slice's trigger
    /// time if it has one.
    fn note_trigger(&mut self, owner: ServiceRef, applied: Option<Option<SystemTime>>) {
        match applied {
            Some(Some(t)) if t > self.started => self.trigger_times.entry(owner).or_default().push(t),
            Some(_) => {}
            None => {
                self.trigger_times.remove(&owner);
            }
        }
    }

    /// Takes the change-trigger times noted since the last call (to be
    /// measured once a sync has programmed them).
    pub fn take_trigger_times(&mut self) -> Vec<SystemTime> {
        std::mem::take(&mut self.trigger_times).into_values().flatten().collect()
    }

    /// Applies an event of this node's Node object. Only a change of the
    /// topology zone matters to translation: the Node's heartbeats and
    /// status updates cost nothing.
    pub fn node_event(&mut self, event: watcher::Event<Node>) -> bool {
        let zone_before = self.zone();
        let changed = self.nodes.apply(event);
        let zone_changed = changed && self.zone() != zone_before;
        self.relisted |= zone_changed;
        zone_changed
    }

    fn note(&mut self, changed: bool, touched: Option<ServiceRef>) {
        match touched {
            Some(key) if changed => {
                self.changed.insert(key);
            }
            None if changed => self.relisted = true,
            _ => {}
        }
    }

    fn apply_slice(&mut self, event: watcher::Event<SliceRecord>) -> bool {
        let slice_key = touched_key(&event);
        let old_owner = slice_key.as_ref().and_then(|(ns, n)| self.slices.get(ns, n)).and_then(translate::slice_owner);
        let changed = self.slices.apply(event);
        if !changed {
            return false;
        }
        let Some(slice_key) = slice_key else {
            // A relist completed: rebuild the index.
            self.slices_by_service.clear();
            for slice in self.slices.objects() {
                if let Some(owner) = translate::slice_owner(slice) {
                    self.slices_by_service.entry(owner).or_default().insert(cache::key(slice));
                }
            }
            self.relisted = true;
            return true;
        };
        let new_owner = self.slices.get(&slice_key.0, &slice_key.1).and_then(translate::slice_owner);
        if let Some(owner) = old_owner {
            if let Some(set) = self.slices_by_service.get_mut(&owner) {
                set.remove(&slice_key);
            }
            self.changed.insert(owner);
        }
        if let Some(owner) = new_owner {
            self.slices_by_service.entry(owner.clone()).or_default().insert(slice_key);
            self.changed.insert(owner);
        }
        true
    }

    /// Takes what changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        let changed = std::mem::take(&mut self.changed);
        if std::mem::take(&mut self.relisted) { Changes::All } else { Changes::Services(changed) }
    }

    /// The Service (if it exists) and its slices.
    pub fn service_objects(&self, key: &ServiceRef) -> (Option<&Service>, Vec<&SliceRecord>) {
        let slices = self
            .slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|(ns, n)| self.slices.get(ns, n))
            .collect();
        (self.services.get(&key.0, &key.1), slices)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.objects()
    }

    pub fn slices(&self) -> impl Iterator<Item = &SliceRecord> {
        self.slices.objects()
    }

    /// This node's Node object, once seen (for the health check's node
    /// eligibility: being deleted, or tainted for scale-down).
    pub fn node(&self) -> Option<&Node> {
        self.nodes.objects().next()
    }

    /// This node's zone, from its Node object's topology label: `None`
    /// until the Node is seen, `Some(None)` when it carries no zone label.
    pub fn zone(&self) -> Option<Option<String>> {
        let node = self.nodes.objects().next()?;
        Some(node.metadata.labels.as_ref().and_then(|labels| labels.get(ZONE_LABEL)).cloned())
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;

    fn service(name: &str) -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str) -> SliceRecord {
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": [], "ports": []
        }))
        .unwrap()
    }

    fn node(zone: Option<&str>, heartbeat: &str) -> Node {
        let labels = zone.map(|z| json!({ZONE_LABEL: z})).unwrap_or(json!({}));
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-a", "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]}
        }))
        .unwrap()
    }

    fn svc_ref(name: &str) -> ServiceRef {
        ("shop".into(), name.into())
    }

    /// A tracker past its initial lists of `services` and `slices`.
    fn listed(services: &[Service], slices: &[SliceRecord]) -> ChangeTracker {
        let mut tracker = ChangeTracker::default();
        tracker.service_event(Event::Init);
        for s in services {
            tracker.service_event(Event::InitApply(s.clone()));
        }
        tracker.service_event(Event::InitDone);
        assert!(!tracker.ready(), "not ready before the slices are listed");
        tracker.slice_event(Event::Init);
        for s in slices {
            tracker.slice_event(Event::InitApply(s.clone()));
        }
        tracker.slice_event(Event::InitDone);
        assert!(tracker.ready());
        assert_eq!(tracker.take_changes(), Changes::All, "the first lists change everything");
        tracker
    }

    fn changed(names: &[&str]) -> Changes {
        Changes::Services(names.iter().map(|n| svc_ref(n)).collect())
    }

    /// A slice of `service` with one endpoint, written by the controller
    /// for a change at `trigger` (RFC 3339), if any.
    fn triggered_slice(service: &str, address: &str, trigger: Option<&str>) -> SliceRecord {
        let annotations = trigger.map(|t| json!({LAST_CHANGE_TRIGGER_TIME: t})).unwrap_or(json!({}));
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-1"), "namespace": "shop", "annotations": annotations,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": [{"addresses": [address]}], "ports": []
        }))
        .unwrap()
    }

    fn at(rfc3339: &str) -> SystemTime {
        SystemTime::from(rfc3339.parse::<jiff::Timestamp>().unwrap())
    }

    #[test]
    fn trigger_times_of_changes_after_the_start_are_kept_until_taken() {
        let mut tracker = listed(&[service("web"), service("api")], &[]);
        tracker.started = at("2026-12-01T10:00:00Z");
        tracker.slice_event(Event::Apply(triggered_slice("web", "10.0.0.1", Some("2026-12-01T10:00:01.5Z"))));
        tracker.slice_event(Event::Apply(triggered_slice("web", "10.0.0.2", Some("2026-12-01T10:00:02+00:00"))));
        tracker.slice_event(Event::Apply(triggered_slice("api", "10.0.0.3", Some("2026-12-01T09:59:59Z"))));
        tracker.slice_event(Event::Apply(triggered_slice("api", "10.0.0.4", Some("not a time"))));
        tracker.slice_event(Event::Apply(triggered_slice("api", "10.0.0.5", None)));
        let mut times = tracker.take_trigger_times();
        times.sort();
        assert_eq!(times, [at("2026-12-01T10:00:01.5Z"), at("2026-12-01T10:00:02Z")], "before the start: not measured");
        assert!(tracker.take_trigger_times().is_empty(), "taken once");
    }

    #[test]
    fn a_deleted_slice_forgets_its_services_pending_trigger_times() {
        let mut tracker = listed(&[service("web")], &[]);
        tracker.started = at("2026-12-01T10:00:00Z");
        let slice = triggered_slice("web", "10.0.0.1", Some("2026-12-01T10:00:01Z"));
        tracker.slice_event(Event::Apply(slice.clone()));
        tracker.slice_event(Event::Delete(slice));
        assert!(tracker.take_trigger_times().is_empty(), "a deletion's annotation dates from an older update");
    }

    #[test]
    fn a_service_event_changes_that_service_only() {
        let mut tracker = listed(&[service("web"), service("api")], &[]);
        assert!(tracker.service_event(Event::Apply(service("web"))));
        assert_eq!(tracker.take_changes(), changed(&["web"]));
        assert!(tracker.service_event(Event::Delete(service("api"))));
        assert_eq!(tracker.take_changes(), changed(&["api"]));
        assert_eq!(tracker.service_objects(&svc_ref("api")).0, None);
    }

    #[test]
    fn a_slice_event_changes_its_service_and_hands_out_its_slices() {
        let mut tracker = listed(&[service("web")], &[slice("web-1", "web")]);
        tracker.slice_event(Event::Apply(slice("web-2", "web")));
        assert_eq!(tracker.take_changes(), changed(&["web"]));
        let (svc, slices) = tracker.service_objects(&svc_ref("web"));
        assert!(svc.is_some());
        let names: Vec<_> = slices.iter().filter_map(|s| s.metadata.name.clone()).collect();
        assert_eq!(names, ["web-1", "web-2"]);
    }

    #[test]
    fn a_slice_relabelled_to_another_service_changes_both() {
        let mut tracker = listed(&[service("web"), service("api")], &[slice("s-1", "web")]);
        tracker.slice_event(Event::Apply(slice("s-1", "api")));
        assert_eq!(tracker.take_changes(), changed(&["api", "web"]));
        assert!(tracker.service_objects(&svc_ref("web")).1.is_empty());
        assert_eq!(tracker.service_objects(&svc_ref("api")).1.len(), 1);
    }

    #[test]
    fn a_relist_changes_everything_and_forgets_what_was_deleted_meanwhile() {
        let mut tracker = listed(&[service("web"), service("api")], &[slice("web-1", "web")]);
        for event in [Event::Init, Event::InitApply(service("web")), Event::InitDone] {
            tracker.service_event(event);
        }
        assert_eq!(tracker.take_changes(), Changes::All);
        let names: Vec<_> = tracker.services().filter_map(|s| s.metadata.name.clone()).collect();
        assert_eq!(names, ["web"]);
    }

    #[test]
    fn node_updates_that_change_no_zone_cost_nothing() {
        let mut tracker = listed(&[service("web")], &[]);
        assert!(
            tracker.node_event(Event::Apply(node(Some("zone-a"), "2026-12-01T10:00:00Z"))),
            "the zone becomes known"
        );
        assert_eq!(tracker.take_changes(), Changes::All);
        assert!(!tracker.node_event(Event::Apply(node(Some("zone-a"), "2026-12-01T10:00:10Z"))), "a heartbeat");
        assert_eq!(tracker.take_changes(), changed(&[]), "nothing to re-translate");
        assert_eq!(tracker.zone(), Some(Some("zone-a".into())));
    }

    #[test]
    fn a_removed_zone_label_changes_everything_and_clears_the_zone() {
        let mut tracker = listed(&[service("web")], &[]);
        tracker.node_event(Event::Apply(node(Some("zone-a"), "2026-12-01T10:00:00Z")));
        tracker.take_changes();
        assert!(tracker.node_event(Event::Apply(node(None, "2026-12-01T10:00:10Z"))));
        assert_eq!(tracker.take_changes(), Changes::All);
        assert_eq!(tracker.zone(), Some(None), "no zone: zone hints are not used");
    }
}
