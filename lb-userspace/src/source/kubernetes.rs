//! Services, EndpointSlices and this node's Node from the Kubernetes API,
//! through kube-runtime watchers (list, then watch; relist with backoff
//! after errors and `410 Gone`).
//!
//! Nothing is handed out before Services *and* EndpointSlices have both
//! completed their first list: a half-synced view (Services without their
//! endpoints) would make live Services reject traffic.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    pin::Pin,
};

use anyhow::Context as _;
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};

use super::cache::{self, ObjectCache};
use crate::{state::ServiceRef, translate};

/// Drops what translation never reads before an object is cached, as
/// kube-proxy strips managed fields: in real clusters managedFields, the
/// last-applied annotation and per-endpoint pod references are most of an
/// object's size.
fn compact_event<K>(event: watcher::Event<K>, compact: fn(&mut K)) -> watcher::Event<K> {
    match event {
        watcher::Event::Apply(mut o) => {
            compact(&mut o);
            watcher::Event::Apply(o)
        }
        watcher::Event::InitApply(mut o) => {
            compact(&mut o);
            watcher::Event::InitApply(o)
        }
        other => other,
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn compact_service(svc: &mut Service) {
    svc.metadata.managed_fields = None;
    if let Some(annotations) = svc.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

fn compact_slice(slice: &mut EndpointSlice) {
    slice.metadata.managed_fields = None;
    slice.metadata.annotations = None;
    slice.metadata.owner_references = None;
    for endpoint in &mut slice.endpoints {
        endpoint.target_ref = None;
        endpoint.hostname = None;
        endpoint.deprecated_topology = None;
    }
}

/// The object an Apply/Delete event is about (None for relist events).
fn touched_key<K: kube::Resource>(event: &watcher::Event<K>) -> Option<ServiceRef> {
    match event {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => Some(cache::key(o)),
        _ => None,
    }
}

const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Objects per list page. Fewer, larger pages make the initial list of a
/// big cluster faster (each page is a round trip and a consistent read on
/// the API server); 5,000 keeps a page of EndpointSlices to a few MB.
const LIST_PAGE_SIZE: u32 = 5_000;
/// Slices kube-proxy ignores: headless Services' and unowned ones.
const SLICE_SELECTOR: &str = "kubernetes.io/service-name,!service.kubernetes.io/headless";

/// One event from any of the watchers (boxed: the objects are large and
/// differ in size).
enum Update {
    Service(Result<Box<watcher::Event<Service>>, watcher::Error>),
    Slice(Result<Box<watcher::Event<EndpointSlice>>, watcher::Error>),
    Node(Result<Box<watcher::Event<Node>>, watcher::Error>),
}

/// A client for `--kubeconfig PATH`, else in-cluster, else `$KUBECONFIG`
/// (or ~/.kube/config), like kube-proxy.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?
        }
        None => match Config::incluster() {
            Ok(config) => config,
            Err(_) => Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .context("not in a cluster and no usable kubeconfig")?,
        },
    };
    Ok(Client::try_from(config)?)
}

/// What changed since the last [`KubeSource::take_changes`].
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// A relist completed: everything may have changed.
    All,
    /// Only these Services (or their slices) changed.
    Services(BTreeSet<ServiceRef>),
}

pub struct KubeSource {
    services: ObjectCache<Service>,
    slices: ObjectCache<EndpointSlice>,
    nodes: ObjectCache<Node>,
    /// Slice keys by the Service they belong to, to hand a changed Service
    /// its slices without scanning them all.
    slices_by_service: HashMap<ServiceRef, BTreeSet<ServiceRef>>,
    changed: BTreeSet<ServiceRef>,
    relisted: bool,
    updates: Pin<Box<dyn Stream<Item = Update> + Send>>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .finish()
    }
}

impl KubeSource {
    /// Starts the watchers. `node_name` selects this node's Node object
    /// (for its topology zone); without it no Node is watched.
    pub fn new(client: Client, node_name: Option<&str>) -> Self {
        let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
        let services = watcher(Api::<Service>::all(client.clone()), config.clone())
            .default_backoff()
            .map(|e| Update::Service(e.map(Box::new)))
            .boxed();
        let slices = watcher(Api::<EndpointSlice>::all(client.clone()), config.clone().labels(SLICE_SELECTOR))
            .default_backoff()
            .map(|e| Update::Slice(e.map(Box::new)))
            .boxed();
        let mut streams = vec![services, slices];
        if let Some(name) = node_name {
            let node_config = config.fields(&format!("metadata.name={name}"));
            streams.push(watcher(Api::<Node>::all(client), node_config).default_backoff().map(|e| Update::Node(e.map(Box::new))).boxed());
        }
        Self {
            services: ObjectCache::default(),
            slices: ObjectCache::default(),
            nodes: ObjectCache::default(),
            slices_by_service: HashMap::new(),
            changed: BTreeSet::new(),
            relisted: false,
            updates: futures::stream::select_all(streams).boxed(),
        }
    }

    /// Both Services and EndpointSlices have been listed at least once.
    pub fn ready(&self) -> bool {
        self.services.synced() && self.slices.synced()
    }

    /// Waits for the next watcher event. `Ok(true)` when what the caches
    /// show may have changed; watcher errors are returned (the watcher
    /// itself retries with backoff).
    pub async fn changed(&mut self) -> anyhow::Result<bool> {
        let update = self.updates.next().await.context("all watch streams ended")?;
        Ok(match update {
            Update::Service(event) => {
                let event = compact_event(*event?, compact_service);
                let touched = touched_key(&event);
                let changed = self.services.apply(event);
                self.note(changed, touched);
                changed
            }
            Update::Slice(event) => self.apply_slice(compact_event(*event?, compact_slice)),
            Update::Node(event) => {
                let changed = self.nodes.apply(*event?);
                // A zone change affects every Service's topology.
                self.relisted |= changed;
                changed
            }
        })
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

    fn apply_slice(&mut self, event: watcher::Event<EndpointSlice>) -> bool {
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
    pub fn service_objects(&self, key: &ServiceRef) -> (Option<&Service>, Vec<&EndpointSlice>) {
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

    pub fn slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.objects()
    }

    /// This node's zone, from its Node object's topology label: `None`
    /// until the Node is seen, `Some(None)` when it carries no zone label.
    pub fn zone(&self) -> Option<Option<String>> {
        let node = self.nodes.objects().next()?;
        Some(node.metadata.labels.as_ref().and_then(|labels| labels.get(ZONE_LABEL)).cloned())
    }
}
