//! The stand-in API server, driven by the real `kube` client and
//! `kube-runtime` watcher the agent uses: lists, watches, bookmarks, and
//! recovery from dropped connections, outages and compaction (410 Gone).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{
    core::v1::{Event as CoreEvent, Node, ObjectReference, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, ResourceExt as _,
    api::{ListParams, PostParams, VersionMatch, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        events::{Event as RecordedEvent, EventType, Recorder, Reporter},
        utils::Backoff,
        watcher,
    },
};
use lb_tests::apiserver::{ApiServer, ApiServerOptions};
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::timeout};

const WAIT: Duration = Duration::from_secs(20);

fn service(namespace: &str, name: &str, cluster_ip: &str, labels: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"clusterIP": cluster_ip, "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]},
    })
}

fn slice(namespace: &str, name: &str, service: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    })
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": "10.244.0.0/24"}})
}

/// A client configured the way the agent is: from a kubeconfig file.
async fn client(server: &ApiServer) -> Client {
    client_from(&server.kubeconfig()).await
}

async fn client_from(kubeconfig_yaml: &str) -> Client {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "lb-tests-kubeconfig-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, kubeconfig_yaml).unwrap();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

/// Retries quickly: the default backoff starts at 800 ms and would make
/// the fault tests slow.
struct Quick;

impl Iterator for Quick {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}

impl Backoff for Quick {
    fn reset(&mut self) {}
}

/// What the watcher reported, reduced to what the tests compare.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String),
    Delete(String),
    /// A watcher error, with the HTTP code it carried if any.
    Error(Option<u16>),
}

fn error_code(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

/// Runs a watcher in the background and hands its events over a channel,
/// keeping the last applied object of each name for content checks.
struct Watch<K> {
    events: mpsc::UnboundedReceiver<(Seen, Option<K>)>,
}

impl<K> Watch<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + k8s_openapi::serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    fn start(api: Api<K>, config: watcher::Config) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = watcher(api, config).backoff(Quick).boxed();
            while let Some(event) = stream.next().await {
                let seen = match event {
                    Ok(watcher::Event::Init) => (Seen::Init, None),
                    Ok(watcher::Event::InitApply(o)) => (Seen::InitApply(o.name_any()), Some(o)),
                    Ok(watcher::Event::InitDone) => (Seen::InitDone, None),
                    Ok(watcher::Event::Apply(o)) => (Seen::Apply(o.name_any()), Some(o)),
                    Ok(watcher::Event::Delete(o)) => (Seen::Delete(o.name_any()), Some(o)),
                    Err(e) => (Seen::Error(error_code(&e)), None),
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        Self { events }
    }

    async fn next(&mut self) -> (Seen, Option<K>) {
        timeout(WAIT, self.events.recv()).await.expect("watcher event in time").expect("watcher running")
    }

    /// The next event that is not an error.
    async fn next_ok(&mut self) -> (Seen, Option<K>) {
        loop {
            let event = self.next().await;
            if !matches!(event.0, Seen::Error(_)) {
                return event;
            }
        }
    }

    /// Consumes a complete initial list and returns the names in it.
    async fn initial_list(&mut self) -> BTreeSet<String> {
        assert_eq!(self.next_ok().await.0, Seen::Init);
        let mut names = BTreeSet::new();
        loop {
            match self.next().await.0 {
                Seen::InitApply(name) => names.insert(name),
                Seen::InitDone => return names,
                other => panic!("unexpected {other:?} during the initial list"),
            };
        }
    }

    async fn expect(&mut self, expected: Seen) -> Option<K> {
        let (seen, obj) = self.next().await;
        assert_eq!(seen, expected);
        obj
    }
}

/// Waits until `condition` holds, polling.
async fn until(what: &str, condition: impl Fn() -> bool) {
    timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items.iter().map(|o| o.meta().name.clone().unwrap()).collect()
}

#[tokio::test]
async fn lists_gets_and_selectors_through_the_kube_client() {
    let server = ApiServer::start();
    server.apply(service("default", "web", "10.96.0.10", &json!({"app": "web"})));
    server.apply(service("kube-system", "dns", "10.96.0.53", &json!({})));
    server.apply(service("default", "db", "None", &json!({"service.kubernetes.io/headless": ""})));
    server.apply(slice("default", "web-1", "web", "10.244.0.5"));
    let n1 = server.apply(node("node-a"));
    let client = client(&server).await;

    let all = Api::<Service>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&all.items), ["db", "web", "dns"], "namespace, then name order");
    assert_eq!(all.metadata.resource_version, Some(server.resource_version().to_string()));
    let web = &all.items[1];
    assert_eq!(web.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));
    assert!(web.metadata.uid.is_some() && web.metadata.creation_timestamp.is_some());

    let default = Api::<Service>::namespaced(client.clone(), "default").list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&default.items), ["db", "web"]);
    let proxied = Api::<Service>::all(client.clone())
        .list(
            &ListParams::default().labels("!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"),
        )
        .await
        .unwrap();
    assert_eq!(names(&proxied.items), ["web", "dns"]);
    let by_label = Api::<Service>::all(client.clone()).list(&ListParams::default().labels("app=web")).await.unwrap();
    assert_eq!(names(&by_label.items), ["web"]);

    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&ListParams::default().labels("kubernetes.io/service-name"))
        .await
        .unwrap();
    assert_eq!(names(&slices.items), ["web-1"]);
    assert_eq!(slices.items[0].endpoints[0].addresses, ["10.244.0.5"]);

    let nodes: Api<Node> = Api::all(client.clone());
    let got = nodes.get("node-a").await.unwrap();
    assert_eq!(
        got.metadata.resource_version.as_ref(),
        n1["metadata"]["resourceVersion"].as_str().map(str::to_owned).as_ref()
    );
    let by_name = nodes.list(&ListParams::default().fields("metadata.name=node-a")).await.unwrap();
    assert_eq!(names(&by_name.items), ["node-a"]);
    assert!(nodes.list(&ListParams::default().fields("metadata.name=node-b")).await.unwrap().items.is_empty());
    match nodes.get("node-b").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"))
        }
        other => panic!("expected 404, got {other:?}"),
    }
    let version = client.apiserver_version().await.unwrap();
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "33"));
}

#[tokio::test]
async fn pagination_serves_one_consistent_snapshot() {
    let server = ApiServer::start();
    for name in ["a", "b", "c", "d", "e"] {
        server.apply(service("default", name, "10.96.0.1", &json!({})));
    }
    let api = Api::<Service>::all(client(&server).await);

    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first.items), ["a", "b"]);
    let snapshot_rv = first.metadata.resource_version.clone();
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    // Writes between pages must not show up in later pages.
    server.delete("Service", "default", "c");
    server.apply(service("default", "d", "10.96.0.99", &json!({})));
    server.apply(service("default", "f", "10.96.0.1", &json!({})));

    let token = first.metadata.continue_.clone().unwrap();
    let second = api.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(&second.items), ["c", "d"]);
    assert_eq!(second.items[1].spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.1"));
    assert_eq!(second.metadata.resource_version, snapshot_rv);
    let token = second.metadata.continue_.clone().unwrap();
    let third = api.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(&third.items), ["e"]);
    assert_eq!(third.metadata.continue_, None);

    // An exact list at the old version still sees the old state...
    let rv = snapshot_rv.unwrap();
    let exact = api.list(&ListParams::default().at(&rv).matching(VersionMatch::Exact)).await.unwrap();
    assert_eq!(names(&exact.items), ["a", "b", "c", "d", "e"]);
    // ...until history is compacted: then 410, for it and for its continue token.
    server.compact();
    for result in [
        api.list(&ListParams::default().at(&rv).matching(VersionMatch::Exact)).await,
        api.list(&ListParams::default().limit(2).continue_token(&token)).await,
    ] {
        match result {
            Err(kube::Error::Api(status)) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
            }
            other => panic!("expected 410 Expired, got {other:?}"),
        }
    }
    let latest = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&latest.items), ["a", "b", "d", "e", "f"]);
}

#[tokio::test]
async fn watcher_sees_creates_updates_deletes_and_bookmarks() {
    let server =
        ApiServer::start_with(ApiServerOptions { bookmark_interval: Duration::from_millis(100), ..Default::default() });
    server.apply(service("default", "a", "10.96.0.1", &json!({})));
    let listed_rv = server.resource_version().to_string();
    let client = client(&server).await;
    let mut watch = Watch::start(Api::<Service>::all(client.clone()), watcher::Config::default());
    assert_eq!(watch.initial_list().await, BTreeSet::from(["a".to_owned()]));

    server.apply(service("default", "b", "10.96.0.2", &json!({})));
    watch.expect(Seen::Apply("b".into())).await;
    server.apply(service("default", "a", "10.96.0.11", &json!({})));
    let a = watch.expect(Seen::Apply("a".into())).await.unwrap();
    assert_eq!(a.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.11"));
    let deleted = server.delete("Service", "default", "b").unwrap();
    let b = watch.expect(Seen::Delete("b".into())).await.unwrap();
    assert_eq!(b.metadata.resource_version.as_deref(), deleted["metadata"]["resourceVersion"].as_str());

    // The watcher paged its list, then watched from the list's version
    // with bookmarks.
    let log = server.request_log();
    let list = log.iter().find(|r| r.is_list()).unwrap();
    assert_eq!(list.param("limit").as_deref(), Some("500"));
    let watch_request = log.iter().find(|r| r.is_watch()).unwrap();
    assert_eq!(watch_request.param("allowWatchBookmarks").as_deref(), Some("true"));
    assert_eq!(watch_request.param("resourceVersion"), Some(listed_rv));

    // A write to another kind moves the global resourceVersion without an
    // event on this watch; only a bookmark can carry the watcher there. It
    // proves it did by resuming from that version after a dropped watch.
    let node_rv = server.apply(node("node-a"))["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watches_before = server.request_log().iter().filter(|r| r.is_watch()).count();
    server.close_watches();
    until("the watcher to resume", || server.request_log().iter().filter(|r| r.is_watch()).count() > watches_before)
        .await;
    let resumed = server.request_log().into_iter().rev().find(|r| r.is_watch()).unwrap();
    assert_eq!(resumed.param("resourceVersion").as_deref(), Some(node_rv.as_str()));
    assert_eq!(server.request_log().iter().filter(|r| r.is_list()).count(), 1, "no relist");

    // And bookmarks are on the wire, as the real server sends them.
    let api = Api::<Service>::all(client);
    let mut raw = api.watch(&WatchParams::default().timeout(5), &node_rv).await.unwrap().boxed();
    match timeout(WAIT, raw.try_next()).await.unwrap().unwrap() {
        Some(WatchEvent::Bookmark(bookmark)) => {
            assert_eq!(bookmark.metadata.resource_version, node_rv);
            assert_eq!((bookmark.types.kind.as_str(), bookmark.types.api_version.as_str()), ("Service", "v1"));
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn watcher_resumes_after_dropped_connections_without_relisting() {
    let server = ApiServer::start();
    server.apply(service("default", "a", "10.96.0.1", &json!({})));
    let mut watch = Watch::start(Api::<Service>::all(client(&server).await), watcher::Config::default());
    assert_eq!(watch.initial_list().await.len(), 1);
    until("the watch to open", || server.open_watches() == 1).await;

    server.close_watches();
    // Written while the watcher may be disconnected: resuming from its
    // resourceVersion must still deliver it.
    server.apply(service("default", "b", "10.96.0.2", &json!({})));
    assert_eq!(watch.next_ok().await.0, Seen::Apply("b".into()));
    until("the watch to reopen", || server.open_watches() == 1).await;

    server.close_watches();
    server.delete("Service", "default", "a");
    assert_eq!(watch.next_ok().await.0, Seen::Delete("a".into()));
    assert_eq!(server.request_log().iter().filter(|r| r.is_list()).count(), 1, "no relist");
}

#[tokio::test]
async fn watcher_retries_through_an_outage() {
    let server = ApiServer::start();
    server.apply(service("default", "a", "10.96.0.1", &json!({})));
    let mut watch = Watch::start(Api::<Service>::all(client(&server).await), watcher::Config::default());
    watch.initial_list().await;
    until("the watch to open", || server.open_watches() == 1).await;

    server.set_outage(true);
    until("the watch to drop", || server.open_watches() == 0).await;
    server.apply(service("default", "b", "10.96.0.2", &json!({})));
    // The watcher keeps trying, and fails to connect, a few times.
    for _ in 0..3 {
        assert_eq!(watch.next().await.0, Seen::Error(None));
    }
    let requests_during_outage = server.request_log().len();
    server.set_outage(false);
    assert_eq!(watch.next_ok().await.0, Seen::Apply("b".into()));
    let log = server.request_log();
    assert_eq!(log.len(), requests_during_outage + 1, "only the resumed watch got through: {log:#?}");
    assert!(log.last().unwrap().is_watch());
    assert_eq!(log.iter().filter(|r| r.is_list()).count(), 1, "resumed, not relisted");
}

#[tokio::test]
async fn watcher_relists_after_410_gone() {
    let server = ApiServer::start();
    server.apply(service("default", "a", "10.96.0.1", &json!({})));
    server.apply(service("default", "b", "10.96.0.2", &json!({})));
    let mut watch = Watch::start(Api::<Service>::all(client(&server).await), watcher::Config::default());
    assert_eq!(watch.initial_list().await.len(), 2);
    until("the watch to open", || server.open_watches() == 1).await;
    let stale_rv = server.resource_version().to_string();

    // Changes the watcher misses while it cannot connect, then compaction
    // of their history: resuming is impossible, only a relist recovers.
    server.set_outage(true);
    until("the watch to drop", || server.open_watches() == 0).await;
    server.delete("Service", "default", "a");
    server.apply(service("default", "c", "10.96.0.3", &json!({})));
    server.compact();
    server.set_outage(false);

    let mut errors = Vec::new();
    loop {
        match watch.next().await.0 {
            Seen::Error(code) => errors.push(code),
            Seen::Init => break,
            other => panic!("unexpected {other:?} before the relist"),
        }
    }
    assert_eq!(errors.last(), Some(&Some(410)), "ended by 410 Gone: {errors:?}");
    let mut relisted = BTreeSet::new();
    loop {
        match watch.next().await.0 {
            Seen::InitApply(name) => relisted.insert(name),
            Seen::InitDone => break,
            other => panic!("unexpected {other:?} during the relist"),
        };
    }
    assert_eq!(relisted, BTreeSet::from(["b".to_owned(), "c".to_owned()]));

    let log = server.request_log();
    let expired_watch = log
        .iter()
        .position(|r| r.is_watch() && r.status == 200 && r.param("resourceVersion").as_ref() == Some(&stale_rv))
        .unwrap();
    assert!(log[expired_watch..].iter().any(|r| r.is_list() && r.status == 200), "relisted after the 410");

    // Afterwards it watches normally again.
    server.apply(service("default", "d", "10.96.0.4", &json!({})));
    assert_eq!(watch.next_ok().await.0, Seen::Apply("d".into()));
}

#[tokio::test]
async fn watch_selectors_and_namespaces() {
    let server = ApiServer::start();
    server.apply(slice("default", "web-1", "web", "10.244.0.5"));
    server.apply(slice("default", "db-1", "db", "10.244.0.6"));
    server.apply(slice("other", "web-1", "web", "10.244.1.5"));
    let client = client(&server).await;
    let mut watch = Watch::start(
        Api::<EndpointSlice>::namespaced(client, "default"),
        watcher::Config::default().labels("kubernetes.io/service-name=web"),
    );
    assert_eq!(watch.initial_list().await, BTreeSet::from(["web-1".to_owned()]));

    server.apply(slice("default", "web-1", "web", "10.244.0.7"));
    let updated = watch.expect(Seen::Apply("web-1".into())).await.unwrap();
    assert_eq!(updated.endpoints[0].addresses, ["10.244.0.7"]);
    // Not selected, other namespace: nothing. Then relabelled out of the
    // selection: a DELETE; back in: an apply.
    server.apply(slice("default", "db-1", "db", "10.244.0.8"));
    server.apply(slice("other", "web-1", "web", "10.244.1.6"));
    server.apply(slice("default", "web-1", "db", "10.244.0.7"));
    watch.expect(Seen::Delete("web-1".into())).await;
    server.apply(slice("default", "web-1", "web", "10.244.0.7"));
    watch.expect(Seen::Apply("web-1".into())).await;
}

#[tokio::test]
async fn watcher_with_streaming_lists() {
    let server = ApiServer::start();
    server.apply(node("node-a"));
    server.apply(node("node-b"));
    let mut watch = Watch::start(Api::<Node>::all(client(&server).await), watcher::Config::default().streaming_lists());
    assert_eq!(watch.initial_list().await, BTreeSet::from(["node-a".to_owned(), "node-b".to_owned()]));
    server.delete("Node", "", "node-a");
    watch.expect(Seen::Delete("node-a".into())).await;
    let log = server.request_log();
    assert!(log.iter().all(|r| r.is_watch()), "no list request: {log:#?}");
    assert_eq!(log[0].param("sendInitialEvents").as_deref(), Some("true"));
}

#[tokio::test]
async fn watch_ends_at_its_timeout() {
    let server = ApiServer::start();
    let api = Api::<Service>::all(client(&server).await);
    let rv = server.resource_version().to_string();
    let started = std::time::Instant::now();
    let stream = api.watch(&WatchParams::default().timeout(1).disable_bookmarks(), &rv).await.unwrap();
    let events: Vec<_> = timeout(WAIT, stream.try_collect::<Vec<_>>()).await.unwrap().unwrap();
    assert!(events.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn events_are_recorded() {
    let server = ApiServer::start();
    let svc = server.apply(service("default", "web", "10.96.0.10", &json!({})));
    let client = client(&server).await;

    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        uid: svc["metadata"]["uid"].as_str().map(str::to_owned),
        ..Default::default()
    };
    let recorder =
        Recorder::new(client.clone(), Reporter { controller: "lb-agent".into(), instance: Some("node-a".into()) });
    let event = RecordedEvent {
        type_: EventType::Warning,
        reason: "NoBackends".into(),
        note: Some("no ready endpoints".into()),
        action: "Program".into(),
        secondary: None,
    };
    // The second time the recorder merge-patches the same Event into a series.
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();

    let core = CoreEvent {
        metadata: kube::api::ObjectMeta { generate_name: Some("web.".into()), ..Default::default() },
        involved_object: reference.clone(),
        reason: Some("Programmed".into()),
        message: Some("3 backends".into()),
        type_: Some("Normal".into()),
        ..Default::default()
    };
    let created = Api::<CoreEvent>::namespaced(client, "default").create(&PostParams::default(), &core).await.unwrap();
    assert!(created.metadata.name.as_deref().unwrap().starts_with("web."));

    let events = server.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0]["apiVersion"], "events.k8s.io/v1");
    assert_eq!(events[0]["reason"], "NoBackends");
    assert_eq!(events[0]["regarding"]["name"], "web");
    assert_eq!(events[0]["reportingController"], "lb-agent");
    assert_eq!(events[0]["series"]["count"], 2);
    assert_eq!(events[1]["apiVersion"], "v1");
    assert_eq!(events[1]["message"], "3 backends");
    assert_eq!(events[1]["metadata"]["namespace"], "default");
}

#[tokio::test]
async fn requests_need_the_kubeconfig_token() {
    let server = ApiServer::start();
    let client = client_from(&server.kubeconfig().replace(server.token(), "wrong")).await;
    match Api::<Service>::all(client).list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 401),
        other => panic!("expected 401, got {other:?}"),
    }
}

/// Sends one HTTP/1.1 request and returns the raw response, read until the
/// server closes the connection.
fn http_request(server: &ApiServer, path_and_query: &str) -> std::io::Result<String> {
    let address = server.url().trim_start_matches("http://");
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(WAIT))?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        server.token()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// [`http_request`] split into status line, (lowercased) headers and the
/// body, de-chunked.
fn http_get(server: &ApiServer, path_and_query: &str) -> (String, String, String) {
    let response = http_request(server, path_and_query).unwrap();
    let (head, mut body) = response.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap();
    let mut decoded = String::new();
    if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        loop {
            let (size, rest) = body.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            if size == 0 {
                break;
            }
            decoded.push_str(&rest[..size]);
            body = &rest[size + 2..];
        }
    } else {
        decoded.push_str(body);
    }
    (status.to_owned(), headers.to_ascii_lowercase(), decoded)
}

/// The wire format itself, from a synchronous test (the server needs no
/// runtime from its user).
#[test]
fn wire_format_from_a_synchronous_test() {
    let server = ApiServer::start();
    let start_rv = server.resource_version();
    server.apply(service("default", "web", "10.96.0.10", &json!({})));
    server.apply(service("default", "web", "10.96.0.11", &json!({})));
    server.delete("Service", "default", "web");
    server.apply(node("node-a"));

    let (status, headers, body) = http_get(&server, "/api/v1/nodes?limit=500");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-type: application/json"));
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "NodeList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["metadata"]["resourceVersion"], server.resource_version().to_string());
    let item = &list["items"][0];
    assert!(item.get("kind").is_none() && item.get("apiVersion").is_none(), "items carry no type: {item}");
    assert_eq!(item["metadata"]["name"], "node-a");

    let (status, headers, body) = http_get(
        &server,
        &format!("/api/v1/namespaces/default/services?watch=1&resourceVersion={start_rv}&timeoutSeconds=1"),
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("transfer-encoding: chunked"));
    let events: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["object"]["spec"]["clusterIP"].as_str().unwrap()))
        .collect();
    assert_eq!(summary, [("ADDED", "10.96.0.10"), ("MODIFIED", "10.96.0.11"), ("DELETED", "10.96.0.11")]);
    assert_eq!(events[0]["object"]["kind"], "Service");
    let versions: Vec<u64> =
        events.iter().map(|e| e["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(versions, [start_rv + 1, start_rv + 2, start_rv + 3]);

    server.compact();
    let (status, _, body) = http_get(&server, &format!("/api/v1/services?watch=true&resourceVersion={start_rv}"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    let error: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["kind"], "Status");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");

    let (status, _, body) =
        http_get(&server, &format!("/api/v1/services?resourceVersion={start_rv}&resourceVersionMatch=Exact"));
    assert_eq!(status, "HTTP/1.1 410 Gone");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["reason"], "Expired");

    // A resourceVersion from the future is refused like the real server
    // does (kube-client retries 504 for minutes, so this is checked here).
    let future = server.resource_version() + 100;
    let (status, _, body) =
        http_get(&server, &format!("/api/v1/services?resourceVersion={future}&resourceVersionMatch=NotOlderThan"));
    assert_eq!(status, "HTTP/1.1 504 Gateway Timeout");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["reason"], "Timeout");

    server.set_outage(true);
    let refused = http_request(&server, "/api/v1/nodes");
    assert!(refused.as_ref().is_ok_and(String::is_empty) || refused.is_err(), "no answer: {refused:?}");
    server.set_outage(false);
    assert_eq!(http_get(&server, "/api/v1/nodes").0, "HTTP/1.1 200 OK");
    let (status, _, _) = http_get(&server, "/api/v1/pods");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}
