//! Watch streams: `?watch=true` answered with one JSON event per line in a
//! chunked response, kept open until `timeoutSeconds` runs out.
//!
//! Each watch is a task that follows the store's history from a cursor
//! resourceVersion. It wakes on every write, sends what its client has not
//! seen yet, and sends `BOOKMARK`s between writes so the client's cursor
//! keeps up with writes to other resources (the counter is global).

use std::{
    io,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior, interval_at, sleep_until},
};

use super::{
    Shared,
    resources::Resource,
    selectors::Filter,
    server::Body,
    status::ApiError,
    store::{Change, stamped},
};

/// A parsed watch request.
#[derive(Debug)]
pub struct WatchRequest {
    pub resource: &'static Resource,
    /// `None` watches all namespaces.
    pub namespace: Option<String>,
    pub filter: Filter,
    /// Resume after this resourceVersion. `None` (the parameter unset or
    /// "0") starts with the current state as `ADDED` events.
    pub since: Option<u64>,
    pub bookmarks: bool,
    /// Streaming list: send the current state first, then a bookmark
    /// annotated `k8s.io/initial-events-end`.
    pub send_initial_events: bool,
    pub timeout: Duration,
}

impl WatchRequest {
    fn selects(&self, obj: &Value) -> bool {
        let in_namespace = self.namespace.as_deref().is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns));
        in_namespace && self.filter.matches(obj)
    }

    /// The event a change produces for this watch, if any. Objects moving
    /// into or out of the selection appear as `ADDED` or `DELETED`, the way
    /// the real server's watch cache reports them.
    fn event_for(&self, change: &Change) -> Option<Bytes> {
        if change.key.resource() != self.resource {
            return None;
        }
        let was = change.before.as_ref().filter(|o| self.selects(o));
        let is = change.after.as_ref().filter(|o| self.selects(o));
        match (was, is) {
            (None, Some(obj)) => Some(line("ADDED", obj)),
            (Some(_), Some(obj)) => Some(line("MODIFIED", obj)),
            (Some(obj), None) => Some(line("DELETED", &stamped(obj, change.rv))),
            (None, None) => None,
        }
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": self.resource.kind,
            "apiVersion": self.resource.api_version(),
            "metadata": metadata,
        });
        line("BOOKMARK", &object)
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    text.into()
}

fn error_line(error: &ApiError) -> Bytes {
    line("ERROR", &error.to_status())
}

type Chunk = Result<Frame<Bytes>, io::Error>;

/// Starts the watch and returns the response body it streams into.
pub fn serve(shared: Arc<Shared>, request: WatchRequest) -> Body {
    // Everything that must not be missed is set up before the response
    // (and so the client) can see the watch: the writes subscription comes
    // before the store is read, and a `close_watches` right after the
    // client got its headers must still reach this watch.
    let signals =
        Signals { writes: shared.writes.subscribe(), drops: shared.drops.subscribe(), _open: OpenWatch::new(&shared) };
    let (tx, mut rx) = mpsc::channel::<Chunk>(64);
    tokio::spawn(run(shared, request, signals, tx));
    StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))).boxed_unsync()
}

/// Counts the watch as open while it lives, so tests can wait for one.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        Self(shared.clone())
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Signals {
    writes: watch::Receiver<u64>,
    drops: watch::Receiver<u64>,
    _open: OpenWatch,
}

async fn run(shared: Arc<Shared>, request: WatchRequest, signals: Signals, tx: mpsc::Sender<Chunk>) {
    let Signals { mut writes, mut drops, _open } = signals;
    let deadline = Instant::now() + request.timeout;
    let period = shared.options.bookmark_interval;
    let mut ticker = interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let (mut cursor, mut pending) = match start(&shared, &request) {
        Ok(start) => start,
        Err(error) => {
            // The real server answers 200 and reports the error in-stream.
            let _ = tx.send(Ok(Frame::data(error_line(&error)))).await;
            return;
        }
    };
    let mut end_after_sending = false;
    loop {
        for chunk in pending.drain(..) {
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return; // client went away
            }
        }
        if end_after_sending {
            return;
        }
        tokio::select! {
            written = writes.changed() => {
                if written.is_err() {
                    return; // cannot happen while `shared` holds the sender
                }
                match catch_up(&shared, &request, &mut cursor) {
                    Ok(events) => pending = events,
                    Err(error) => {
                        // Compacted past this watch's cursor while it lagged.
                        pending = vec![error_line(&error)];
                        end_after_sending = true;
                    }
                }
            }
            _ = ticker.tick(), if request.bookmarks => pending.push(request.bookmark(cursor, false)),
            // Normal end: hyper writes the terminating chunk.
            () = sleep_until(deadline) => return,
            _ = drops.changed() => {
                // An error frame makes hyper cut the connection mid-body,
                // which the client sees as a dropped connection.
                let _ = tx.send(Err(io::Error::other("watch dropped by the test"))).await;
                return;
            }
            () = tx.closed() => return,
        }
    }
}

/// The cursor to follow history from, and what to send before following it.
fn start(shared: &Shared, request: &WatchRequest) -> Result<(u64, Vec<Bytes>), ApiError> {
    match request.since {
        Some(mut cursor) if !request.send_initial_events => {
            let events = catch_up(shared, request, &mut cursor)?;
            Ok((cursor, events))
        }
        _ => {
            let store = shared.store.lock().expect("store lock");
            let rv = store.resource_version();
            let mut events: Vec<Bytes> = store
                .snapshot(request.resource, rv)?
                .iter()
                .filter(|(_, obj)| request.selects(obj))
                .map(|(_, obj)| line("ADDED", obj))
                .collect();
            if request.send_initial_events {
                events.push(request.bookmark(rv, true));
            }
            Ok((rv, events))
        }
    }
}

/// The events after `cursor`, advancing it past everything written so far.
fn catch_up(shared: &Shared, request: &WatchRequest, cursor: &mut u64) -> Result<Vec<Bytes>, ApiError> {
    let store = shared.store.lock().expect("store lock");
    let events = store.changes_after(*cursor)?.iter().filter_map(|c| request.event_for(c)).collect();
    // A client may resume from a version newer than the store's.
    *cursor = (*cursor).max(store.resource_version());
    Ok(events)
}
