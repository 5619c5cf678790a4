//! The agent's HTTP endpoints: `/metrics` on the metrics address,
//! `/healthz` and `/livez` on the health address (kube-proxy's defaults:
//! 0.0.0.0:10249 and 0.0.0.0:10256); the per-Service health check servers
//! (`healthcheck`) use the same server.

use std::{sync::Arc, time::SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinSet};
use tracing::debug;

use crate::{
    health::ProxyHealth,
    metrics::{self, Metrics, SyncMetrics},
};

/// An answer: status, content type, extra headers, body.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    pub(crate) fn new(status: StatusCode, content_type: &'static str, body: String) -> Self {
        Self { status, content_type, headers: Vec::new(), body }
    }
}

fn not_found() -> Reply {
    Reply::new(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "404 page not found\n".into())
}

/// Serves `route` on `listener` until this future is dropped, which also
/// closes the connections it accepted (they are its own tasks).
pub(crate) async fn serve<F>(listener: TcpListener, route: F)
where
    F: Fn(String) -> tokio::task::JoinHandle<Reply> + Send + Sync + 'static,
{
    let route = Arc::new(route);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next() => continue,
        };
        let Ok((stream, _)) = accepted else { continue };
        let route = route.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let reply = route(request.uri().path().to_owned());
                async move {
                    let reply = reply.await.unwrap_or_else(|_| not_found());
                    let mut response = Response::builder()
                        .status(reply.status)
                        .header(header::CONTENT_TYPE, reply.content_type)
                        .header("X-Content-Type-Options", "nosniff");
                    for (name, value) in reply.headers {
                        response = response.header(name, value);
                    }
                    response.body(Full::new(Bytes::from(reply.body)))
                }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// `/metrics`. Rendering reads the pinned maps (blocking syscalls), so it
/// runs off the runtime's worker.
pub async fn metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    serve(listener, move |path| {
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || match path.as_str() {
            "/metrics" => Reply::new(StatusCode::OK, metrics::CONTENT_TYPE, metrics.render()),
            _ => not_found(),
        })
    })
    .await;
}

/// `/healthz` and `/livez`, with kube-proxy's status codes and bodies.
pub async fn health(listener: TcpListener, health: Arc<ProxyHealth>, sync: Arc<SyncMetrics>) {
    serve(listener, move |path| {
        let (health, sync) = (health.clone(), sync.clone());
        tokio::spawn(async move {
            let livez = match path.as_str() {
                "/healthz" => false,
                "/livez" => true,
                _ => return not_found(),
            };
            let now = SystemTime::now();
            let verdict = if livez { health.livez(now) } else { health.healthz(now) };
            let status = if verdict.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            sync.probe(livez, status.as_u16());
            Reply::new(status, "application/json", verdict.json(!livez))
        })
    })
    .await;
}
