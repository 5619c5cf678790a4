//! A stand-in for kube-apiserver, used because no API server runs on the
//! test machines.
//!
//! It speaks the real list/watch protocol with real Kubernetes JSON over
//! plain HTTP (on 127.0.0.1 unless told otherwise), so the agent's
//! unmodified `kube` client and
//! `kube-runtime` watchers run against it:
//!
//! - Services (`/api/v1/[namespaces/{ns}/]services`), EndpointSlices
//!   (`/apis/discovery.k8s.io/v1/[namespaces/{ns}/]endpointslices`), Nodes
//!   (`/api/v1/nodes[/{name}]`) and Events (core/v1 and events.k8s.io/v1,
//!   which clients create and merge-patch).
//! - Lists with `labelSelector`, `fieldSelector`, `limit`/`continue`
//!   pagination over one consistent snapshot, and the `resourceVersion` /
//!   `resourceVersionMatch` rules; a list at a compacted version gets HTTP
//!   410 `Expired`.
//! - Watches (`?watch=true`) streaming newline-delimited events in a chunked
//!   response: `ADDED`/`MODIFIED`/`DELETED` after the requested version,
//!   periodic `BOOKMARK`s, an in-stream `ERROR` with a 410 `Expired` Status
//!   when the version has been compacted, and a clean end at
//!   `timeoutSeconds`.
//! - One resourceVersion counter across all kinds, like etcd.
//!
//! Tests drive it through [`ApiServer`]: change objects with
//! [`apply`](ApiServer::apply) and [`delete`](ApiServer::delete), and inject
//! faults with [`close_watches`](ApiServer::close_watches),
//! [`set_outage`](ApiServer::set_outage) and [`compact`](ApiServer::compact).
//! The server runs on its own thread and runtime, so it works the same from
//! synchronous and async tests.

mod kubeconfig;
mod resources;
mod selectors;
mod server;
mod status;
mod store;
mod watch;

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde_json::Value;
use tokio::sync::{oneshot, watch as signal};

use self::{
    resources::by_kind,
    store::{ObjectKey, Store, name_of},
};

/// How the server behaves; [`Default`] suits most tests.
#[derive(Clone, Debug)]
pub struct ApiServerOptions {
    /// How often open watches that asked for bookmarks get one. The real
    /// server sends them about once a minute; tests want them sooner.
    pub bookmark_interval: Duration,
    /// The bearer token every request must carry (the kubeconfig has it).
    pub token: String,
    /// Where to listen, in the network namespace of the thread that calls
    /// [`ApiServer::start_with`]. Port 0 picks a free one. Agents on several
    /// namespace nodes share one server on an address they all route to.
    pub listen: std::net::SocketAddr,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(1),
            token: "lb-tests-token".into(),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// One request as the server saw it, with the status it answered. A watch
/// is logged when its stream starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, still URL-encoded.
    pub query: String,
    pub status: u16,
}

impl LoggedRequest {
    /// A decoded query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }

    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }

    /// A GET of a collection that is not a watch.
    pub fn is_list(&self) -> bool {
        self.method == "GET"
            && !self.is_watch()
            && resources::parse_path(&self.path).is_some_and(|target| target.name.is_none())
    }
}

/// State shared by the test's handle, the HTTP front end and watch tasks.
struct Shared {
    store: Mutex<Store>,
    /// Carries the latest resourceVersion; every write wakes every watch.
    writes: signal::Sender<u64>,
    /// Bumped to make every open watch drop its connection.
    drops: signal::Sender<u64>,
    /// While true, connections are closed without an answer.
    outage: signal::Sender<bool>,
    open_watches: AtomicUsize,
    log: Mutex<Vec<LoggedRequest>>,
    options: ApiServerOptions,
}

impl Shared {
    /// Runs a write against the store, then wakes the watches.
    fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let (out, rv) = {
            let mut store = self.store.lock().expect("store lock");
            let out = f(&mut store);
            (out, store.resource_version())
        };
        self.writes.send_replace(rv);
        out
    }
}

/// A running stand-in API server. Dropping it stops the server and closes
/// every connection.
pub struct ApiServer {
    shared: Arc<Shared>,
    url: String,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer").field("url", &self.url).finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Starts a server with default options on an ephemeral port.
    pub fn start() -> Self {
        Self::start_with(ApiServerOptions::default())
    }

    pub fn start_with(options: ApiServerOptions) -> Self {
        // Bind here so the port is known, and listening, before returning.
        let listener =
            std::net::TcpListener::bind(options.listen).unwrap_or_else(|e| panic!("binding {}: {e}", options.listen));
        listener.set_nonblocking(true).expect("non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let shared = Arc::new(Shared {
            store: Mutex::default(),
            writes: signal::Sender::new(0),
            drops: signal::Sender::new(0),
            outage: signal::Sender::new(false),
            open_watches: AtomicUsize::new(0),
            log: Mutex::default(),
            options,
        });
        let (shutdown, shutdown_rx) = oneshot::channel();
        let server_shared = shared.clone();
        // A runtime of its own keeps the server independent of whatever the
        // test runs on (or whether it runs a runtime at all).
        let thread = std::thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("apiserver runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    server::serve(listener, server_shared, shutdown_rx).await;
                });
            })
            .expect("spawning the apiserver thread");
        Self { shared, url, shutdown: Some(shutdown), thread: Some(thread) }
    }

    /// `http://{address}:{port}`, `http://127.0.0.1:{port}` by default.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bearer token clients must send.
    pub fn token(&self) -> &str {
        &self.shared.options.token
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        kubeconfig::render(&self.url, self.token())
    }

    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Creates or updates an object by its `kind` (and `apiVersion`, if
    /// given), namespace (default `default` for namespaced kinds) and name,
    /// and returns it as stored. Watches see `ADDED` or `MODIFIED`; an
    /// update that changes nothing is a no-op, as on the real server.
    ///
    /// Panics on an object of an unserved kind or without a name: that is a
    /// bug in the test.
    pub fn apply(&self, obj: Value) -> Value {
        let kind = obj["kind"].as_str().expect("object has a kind");
        let resource = by_kind(obj["apiVersion"].as_str(), kind)
            .unwrap_or_else(|| panic!("the stand-in API server does not serve {} {kind}", obj["apiVersion"]));
        let name = name_of(&obj).expect("object has metadata.name");
        let namespace = obj["metadata"]["namespace"].as_str().unwrap_or("default");
        let key = ObjectKey::new(resource, namespace, name);
        self.shared.write(|store| store.put(&key, obj))
    }

    /// Deletes an object (`namespace` is ignored for Nodes), returning it as
    /// watches see it in `DELETED`, or `None` if it did not exist.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = self.key(kind, namespace, name);
        self.shared.write(|store| store.delete(&key))
    }

    /// An object as stored.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = self.key(kind, namespace, name);
        self.shared.store.lock().expect("store lock").get(&key).cloned()
    }

    fn key(&self, kind: &str, namespace: &str, name: &str) -> ObjectKey {
        let resource = by_kind(None, kind).unwrap_or_else(|| panic!("the stand-in API server does not serve {kind}"));
        ObjectKey::new(resource, namespace, name)
    }

    /// The resourceVersion of the latest write.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().expect("store lock").resource_version()
    }

    /// Cuts every open watch connection mid-stream, as a network failure
    /// or an apiserver restart would. Clients resume from their last
    /// resourceVersion.
    pub fn close_watches(&self) {
        self.shared.drops.send_modify(|generation| *generation += 1);
    }

    /// While on, the server is unreachable: open connections (watches
    /// included) are cut and new ones are closed before any answer, as
    /// when kube-apiserver is down or restarting. Clients see connection
    /// errors and back off.
    ///
    /// Not HTTP 503: kube-client retries 503 internally, up to 15 times
    /// with exponential backoff (minutes in total), so a watcher would
    /// neither see the outage nor recover promptly after it.
    pub fn set_outage(&self, on: bool) {
        self.shared.outage.send_replace(on);
    }

    /// Forgets the change history. Watches resuming from an older
    /// resourceVersion, and exact lists at one, then get 410 Expired and
    /// clients must relist.
    pub fn compact(&self) {
        self.shared.write(Store::compact);
    }

    /// Events created (and patched) through either Event API, oldest first.
    pub fn events(&self) -> Vec<Value> {
        let store = self.shared.store.lock().expect("store lock");
        let mut events: Vec<Value> =
            resources::RESOURCES.iter().filter(|r| r.kind == "Event").flat_map(|r| store.by_creation(r)).collect();
        events.sort_by(|a, b| a["metadata"]["uid"].as_str().cmp(&b["metadata"]["uid"].as_str()));
        events
    }

    /// Every request so far, in the order they were answered.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().expect("log lock").clone()
    }

    /// How many watch streams are open right now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
