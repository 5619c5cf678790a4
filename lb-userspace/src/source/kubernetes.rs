//! Services, EndpointSlices and this node's Node from the Kubernetes API,
//! through kube-runtime watchers (list, then watch; relist with backoff
//! after errors and `410 Gone`).
//!
//! Nothing is handed out before Services *and* EndpointSlices have both
//! completed their first list: a half-synced view (Services without their
//! endpoints) would make live Services reject traffic.

use std::{path::Path, pin::Pin};

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

use super::cache::ObjectCache;

const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Slices kube-proxy ignores: headless Services' and unowned ones.
const SLICE_SELECTOR: &str = "kubernetes.io/service-name,!service.kubernetes.io/headless";

enum Update {
    Service(Result<watcher::Event<Service>, watcher::Error>),
    Slice(Result<watcher::Event<EndpointSlice>, watcher::Error>),
    Node(Result<watcher::Event<Node>, watcher::Error>),
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

pub struct KubeSource {
    services: ObjectCache<Service>,
    slices: ObjectCache<EndpointSlice>,
    nodes: ObjectCache<Node>,
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
        let config = watcher::Config::default();
        let services = watcher(Api::<Service>::all(client.clone()), config.clone())
            .default_backoff()
            .map(Update::Service)
            .boxed();
        let slices = watcher(Api::<EndpointSlice>::all(client.clone()), config.clone().labels(SLICE_SELECTOR))
            .default_backoff()
            .map(Update::Slice)
            .boxed();
        let mut streams = vec![services, slices];
        if let Some(name) = node_name {
            let node_config = config.fields(&format!("metadata.name={name}"));
            streams.push(watcher(Api::<Node>::all(client), node_config).default_backoff().map(Update::Node).boxed());
        }
        Self {
            services: ObjectCache::default(),
            slices: ObjectCache::default(),
            nodes: ObjectCache::default(),
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
            Update::Service(event) => self.services.apply(event?),
            Update::Slice(event) => self.slices.apply(event?),
            Update::Node(event) => self.nodes.apply(event?),
        })
    }

    pub fn services(&self) -> Vec<Service> {
        self.services.objects().cloned().collect()
    }

    pub fn slices(&self) -> Vec<EndpointSlice> {
        self.slices.objects().cloned().collect()
    }

    /// This node's zone, from its Node object's topology label.
    pub fn zone(&self) -> Option<String> {
        self.nodes.objects().next()?.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned()
    }
}
