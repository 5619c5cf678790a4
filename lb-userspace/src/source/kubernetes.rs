//! Services, EndpointSlices and this node's Node from the Kubernetes API,
//! through kube-runtime watchers (list, then watch; relist with backoff
//! after errors and `410 Gone`).
//!
//! Nothing is handed out before Services *and* EndpointSlices have both
//! completed their first list: a half-synced view (Services without their
//! endpoints) would make live Services reject traffic.

use std::path::Path;

use anyhow::Context as _;
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};

use tokio::sync::mpsc;

use super::tracker::ChangeTracker;
use crate::translate::SliceRecord;

const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// The label selectors kube-proxy watches with: no headless Services, and
/// only the Services of this proxy (unlabelled ones without a proxy name,
/// those labelled with it otherwise). Slices must also name their Service.
/// Translation applies the same rules; filtering on the server saves the
/// traffic and the memory.
fn selectors(proxy_name: Option<&str>) -> (String, String) {
    let proxy = match proxy_name {
        None => format!("!{PROXY_NAME_LABEL}"),
        Some(name) => format!("{PROXY_NAME_LABEL}={name}"),
    };
    let services = format!("{proxy},!service.kubernetes.io/headless");
    (services.clone(), format!("kubernetes.io/service-name,{services}"))
}

/// One event from any of the watchers (boxed: the objects are large and
/// differ in size).
enum Update {
    Service(Result<Box<watcher::Event<Service>>, watcher::Error>),
    Slice(Result<Box<watcher::Event<SliceRecord>>, watcher::Error>),
    Node(Result<Box<watcher::Event<Node>>, watcher::Error>),
}

/// Drives `updates` on a task of its own and hands each over the
/// returned channel. Unbounded, like the buffer of listed objects the
/// watcher itself keeps: the consumer takes them as fast as it can, and
/// the task ends when the consumer is gone.
fn forward(mut updates: impl Stream<Item = Update> + Send + Unpin + 'static) -> mpsc::UnboundedReceiver<Update> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(update) = updates.next().await {
            if tx.send(update).is_err() {
                return;
            }
        }
    });
    rx
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
    tracker: ChangeTracker,
    /// Events from the watchers' task, in the order they arrived.
    updates: mpsc::UnboundedReceiver<Update>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource").field("tracker", &self.tracker).finish()
    }
}

impl KubeSource {
    /// Starts the watchers, on a task of their own: the initial lists (the
    /// requests and decoding the answers, long in a large cluster) go on
    /// while the agent loads and attaches the datapath, before anyone
    /// asks for [`KubeSource::changed`]. `node_name` selects this node's
    /// Node object (for its topology zone); without it no Node is
    /// watched. `proxy_name` is `--proxy-name`. Needs a Tokio runtime.
    pub fn new(client: Client, node_name: Option<&str>, proxy_name: Option<&str>) -> Self {
        let (service_selector, slice_selector) = selectors(proxy_name);
        // Lists are served from the API server's watch cache (resourceVersion
        // "0"), as kube-proxy's informers do: a fleet of agents relisting
        // after an API server restart must not each force a quorum read
        // of every Service and EndpointSlice from etcd. The cache serves a
        // list whole, so no page size (kube's client drops resourceVersion
        // "0" from a paginated list, which would make it a quorum read).
        let mut config = watcher::Config::default().any_semantic();
        config.page_size = None;
        let services = watcher(Api::<Service>::all(client.clone()), config.clone().labels(&service_selector))
            .default_backoff()
            .map(|e| Update::Service(e.map(Box::new)))
            .boxed();
        // Slices are decoded straight into what the agent keeps of them.
        let slices = watcher(Api::<SliceRecord>::all(client.clone()), config.clone().labels(&slice_selector))
            .default_backoff()
            .map(|e| Update::Slice(e.map(Box::new)))
            .boxed();
        let mut streams = vec![services, slices];
        if let Some(name) = node_name {
            let node_config = config.fields(&format!("metadata.name={name}"));
            streams.push(
                watcher(Api::<Node>::all(client), node_config)
                    .default_backoff()
                    .map(|e| Update::Node(e.map(Box::new)))
                    .boxed(),
            );
        }
        Self { tracker: ChangeTracker::default(), updates: forward(futures::stream::select_all(streams)) }
    }

    /// Both Services and EndpointSlices have been listed at least once.
    pub fn ready(&self) -> bool {
        self.tracker.ready()
    }

    /// Waits for the next watcher event. `Ok(true)` when what the caches
    /// show may have changed; watcher errors are returned (the watcher
    /// itself retries with backoff).
    pub async fn changed(&mut self) -> anyhow::Result<bool> {
        let update = self.updates.recv().await.context("all watch streams ended")?;
        Ok(match update {
            Update::Service(event) => self.tracker.service_event(*event?),
            Update::Slice(event) => self.tracker.slice_event(*event?),
            Update::Node(event) => self.tracker.node_event(*event?),
        })
    }

    pub fn tracker(&self) -> &ChangeTracker {
        &self.tracker
    }

    pub fn tracker_mut(&mut self) -> &mut ChangeTracker {
        &mut self.tracker
    }
}
