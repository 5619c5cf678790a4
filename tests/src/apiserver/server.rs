//! HTTP/1.1 front end: accepts connections, routes requests to the store or
//! a watch, and logs every request with the status it got.

use std::{collections::HashMap, convert::Infallible, io, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{AUTHORIZATION, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot};

use super::{
    LoggedRequest, Shared,
    resources::{Resource, Target, parse_path},
    selectors::Filter,
    status::ApiError,
    store::{ObjectKey, Store},
    watch::{self, WatchRequest},
};

pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// What the real server uses when a watch names no `timeoutSeconds`
/// (`--min-request-timeout`).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Serves connections until `shutdown` fires.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let mut outage = shared.outage.subscribe();
                if *outage.borrow_and_update() {
                    continue; // dropping the stream closes it unanswered
                }
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    // Connection errors (including watches cut on purpose)
                    // are the client's business.
                    tokio::select! {
                        _ = connection => {}
                        // An outage cuts every connection, mid-watch or idle.
                        _ = outage.wait_for(|&on| on) => {}
                    }
                });
            }
        }
    }
}

async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let entry = LoggedRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        query: request.uri().query().unwrap_or_default().to_owned(),
        status: 0,
    };
    let response = respond(shared, request).await.unwrap_or_else(|error| json_response(error.code, &error.to_status()));
    let status = response.status().as_u16();
    shared.log.lock().expect("log lock").push(LoggedRequest { status, ..entry });
    response
}

async fn respond(shared: &Arc<Shared>, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let expected = format!("Bearer {}", shared.options.token);
    if request.headers().get(AUTHORIZATION).is_none_or(|h| h.as_bytes() != expected.as_bytes()) {
        return Err(ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    if request.uri().path() == "/version" {
        return Ok(json_response(200, &version()));
    }
    let target = parse_path(request.uri().path())
        .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))?;
    let params = Params::parse(request.uri().query().unwrap_or_default());
    let method = request.method().clone();
    let ns = target.namespace.as_deref().unwrap_or_default();
    match (method, target.name.as_deref()) {
        (Method::GET, None) if params.flag("watch") => {
            let watch = watch_request(&target, &params)?;
            Ok(streaming_response(watch::serve(shared.clone(), watch)))
        }
        (Method::GET, None) => {
            let store = shared.store.lock().expect("store lock");
            Ok(bytes_response(200, list(&store, &target, &params)?))
        }
        (Method::GET, Some(name)) => {
            let key = ObjectKey::new(target.resource, ns, name);
            let store = shared.store.lock().expect("store lock");
            let obj = store.get(&key).ok_or_else(|| ApiError::not_found(target.resource.plural, name))?;
            Ok(json_response(200, obj))
        }
        (Method::POST, None) if target.namespace.is_some() || !target.resource.namespaced => {
            let obj = read_json(request).await?;
            check_type(target.resource, &obj)?;
            let created = shared.write(|store| store.create(target.resource, ns, obj))?;
            Ok(json_response(201, &created))
        }
        (Method::PATCH, Some(name)) => {
            // kube-rs's event recorder sends merge patches. A strategic
            // merge patch is applied as a plain merge patch, which differs
            // only in how some lists merge. Server-side apply is not served.
            let content_type = request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if !content_type.contains("merge-patch+json") {
                let message = format!("unsupported patch type {content_type:?}; use application/merge-patch+json");
                return Err(ApiError::new(415, "UnsupportedMediaType", message));
            }
            let key = ObjectKey::new(target.resource, ns, name);
            let patch = read_json(request).await?;
            let patched = shared.write(|store| store.merge_patch(&key, &patch))?;
            Ok(json_response(200, &patched))
        }
        (Method::DELETE, Some(name)) => {
            let key = ObjectKey::new(target.resource, ns, name);
            let deleted = shared.write(|store| store.delete(&key));
            Ok(json_response(200, &deleted.ok_or_else(|| ApiError::not_found(target.resource.plural, name))?))
        }
        (method, _) => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported here"))),
    }
}

/// Query parameters, decoded. A repeated parameter keeps its last value;
/// kube-rs never repeats one.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(query: &str) -> Self {
        Self(form_urlencoded::parse(query.as_bytes()).into_owned().collect())
    }

    /// Set and non-empty.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A boolean parameter as Go's `strconv.ParseBool` reads it.
    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
    }

    fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| v.parse().map_err(|_| ApiError::bad_request(format!("invalid {name}: {v:?}"))))
            .transpose()
    }
}

fn watch_request(target: &Target, params: &Params) -> Result<WatchRequest, ApiError> {
    let since = match params.number("resourceVersion")? {
        Some(0) | None => None,
        Some(rv) => Some(rv),
    };
    let send_initial_events = params.flag("sendInitialEvents");
    if send_initial_events && !params.flag("allowWatchBookmarks") {
        return Err(ApiError::new(422, "Invalid", "sendInitialEvents requires allowWatchBookmarks"));
    }
    Ok(WatchRequest {
        resource: target.resource,
        namespace: target.namespace.clone(),
        filter: Filter::parse(params.get("labelSelector"), params.get("fieldSelector"))?,
        since,
        bookmarks: params.flag("allowWatchBookmarks"),
        send_initial_events,
        timeout: params.number("timeoutSeconds")?.map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs),
    })
}

/// The resourceVersion a list without a continue token is served at,
/// following the `resourceVersion` / `resourceVersionMatch` rules.
fn list_version(store: &Store, params: &Params) -> Result<u64, ApiError> {
    let current = store.resource_version();
    let requested = params.number("resourceVersion")?;
    let too_large = |rv| {
        // The real server waits a few seconds for the version to appear,
        // then gives up with this.
        ApiError::new(504, "Timeout", format!("Too large resource version: {rv}, current: {current}"))
    };
    match (requested, params.get("resourceVersionMatch")) {
        (None, None) | (Some(0), None | Some("NotOlderThan")) => Ok(current),
        (None, Some(_)) => {
            Err(ApiError::bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided"))
        }
        (Some(0), Some("Exact")) => {
            Err(ApiError::bad_request("resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\""))
        }
        (Some(rv), None | Some("NotOlderThan")) if rv > current => Err(too_large(rv)),
        (Some(_), None | Some("NotOlderThan")) => Ok(current),
        (Some(rv), Some("Exact")) if rv > current => Err(too_large(rv)),
        (Some(rv), Some("Exact")) => Ok(rv),
        (_, Some(other)) => Err(ApiError::bad_request(format!("unknown resourceVersionMatch {other:?}"))),
    }
}

/// A page of a list. Every page of a paginated list comes from the snapshot
/// the first page was taken at; the continue token carries its version and
/// the last key returned.
fn list(store: &Store, target: &Target, params: &Params) -> Result<Vec<u8>, ApiError> {
    let resource = target.resource;
    let filter = Filter::parse(params.get("labelSelector"), params.get("fieldSelector"))?;
    let limit = params.number("limit")?.filter(|&l| l > 0);
    let (rv, after) = match params.get("continue") {
        Some(_) if params.get("resourceVersion").is_some_and(|rv| rv != "0") => {
            return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
        }
        Some(token) => {
            let (rv, ns, name) = decode_continue(token)?;
            (rv, Some((ns, name)))
        }
        None => (list_version(store, params)?, None),
    };
    let snapshot = store.snapshot(resource, rv).map_err(|error| match after {
        Some(_) => ApiError::expired(
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter.",
        ),
        None => error,
    })?;
    let mut matching = snapshot.into_iter().filter(|(key, obj)| {
        target.namespace.as_deref().is_none_or(|ns| key.namespace == ns)
            && after.as_ref().is_none_or(|(ns, name)| (&key.namespace, &key.name) > (ns, name))
            && filter.matches(obj)
    });
    let page: Vec<(&ObjectKey, &Value)> = matching.by_ref().take(limit.map_or(usize::MAX, |l| l as usize)).collect();
    let remaining = matching.count();

    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if remaining > 0
        && let Some((last, _)) = page.last()
    {
        metadata["continue"] = format!("{rv}/{}/{}", last.namespace, last.name).into();
        // The real server can only count what is left without selectors.
        if filter.is_empty() {
            metadata["remainingItemCount"] = remaining.into();
        }
    }
    let list = ListBody {
        kind: resource.list_kind(),
        api_version: resource.api_version(),
        metadata,
        items: page.into_iter().map(|(_, obj)| WithoutTypeMeta(obj)).collect(),
    };
    // Written straight from the stored objects: the stand-in's own cost
    // stays small next to the client's it is there to measure.
    Ok(serde_json::to_vec(&list).expect("JSON values serialize"))
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ListBody<'a> {
    kind: String,
    api_version: String,
    metadata: Value,
    items: Vec<WithoutTypeMeta<'a>>,
}

/// An object as a list item: items carry no kind/apiVersion on the wire;
/// the list's own kind says what they are.
struct WithoutTypeMeta<'a>(&'a Value);

impl serde::Serialize for WithoutTypeMeta<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let Value::Object(fields) = self.0 else {
            return self.0.serialize(serializer);
        };
        let kept = fields.iter().filter(|(k, _)| *k != "kind" && *k != "apiVersion");
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in kept {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let invalid = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let mut parts = token.splitn(3, '/');
    let rv = parts.next().and_then(|rv| rv.parse().ok()).ok_or_else(invalid)?;
    let ns = parts.next().ok_or_else(invalid)?;
    let name = parts.next().ok_or_else(invalid)?;
    Ok((rv, ns.to_owned(), name.to_owned()))
}

/// Objects posted must be of the resource they are posted to.
fn check_type(resource: &Resource, obj: &Value) -> Result<(), ApiError> {
    let kind_ok = obj["kind"].as_str().is_none_or(|k| k == resource.kind);
    let version_ok = obj["apiVersion"].as_str().is_none_or(|v| v == resource.api_version());
    if kind_ok && version_ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({})",
            obj["apiVersion"],
            resource.api_version()
        )))
    }
}

async fn read_json(request: Request<Incoming>) -> Result<Value, ApiError> {
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-lb-tests",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    bytes_response(code, body.to_string().into_bytes())
}

fn bytes_response(code: u16, body: Vec<u8>) -> Response<Body> {
    let body = Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync();
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .expect("valid response")
}

/// No Content-Length, so hyper sends the body chunked as it is produced.
fn streaming_response(body: Body) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .expect("valid response")
}
