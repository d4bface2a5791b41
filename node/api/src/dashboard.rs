//! The live dashboard: one HTML page embedded in the binary (`GET /` and `GET /dashboard`, no
//! token: the page holds no data) and a server-sent-events stream (`GET /v1/events`, bearer
//! token) that feeds it.
//!
//! The stream carries `snapshot` events: a [`Snapshot`] of the node's state as JSON. One
//! producer task per node reads a snapshot every [`TICK`] while at least one client listens and
//! publishes it only when it changed; a client gets a fresh snapshot as soon as it connects.
//! Each client has a bounded buffer of [`CLIENT_BUFFER`] events: a client that falls that far
//! behind is dropped (its stream ends, the browser reconnects) and counted in
//! [`Hub::dropped`], never buffered without bound; at most [`MAX_CLIENTS`] listen at once.
//!
//! The page takes the token from the URL fragment (`#token=…`, which browsers never send in a
//! request), or asks for it once, keeps it in `sessionStorage` and sends it as the
//! `Authorization` header of a streaming `fetch` (an `EventSource` cannot send headers).

pub mod snapshot;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{ApiError, ApiState, authorize};
pub use snapshot::Snapshot;

/// The page, with its CSS and JS inline.
pub const PAGE: &str = include_str!("dashboard/index.html");

/// How often the producer reads a snapshot while someone listens.
pub const TICK: Duration = Duration::from_secs(1);
/// Events buffered per client before it is dropped as too slow.
pub const CLIENT_BUFFER: usize = 8;
/// Most clients listening at once; more are refused with 503.
pub const MAX_CLIENTS: usize = 16;

/// Headers of the page: nothing but inline code of our own, no network except this origin.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The listeners of the event stream.
#[derive(Clone, Debug, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug, Default)]
struct HubInner {
    clients: Mutex<Vec<mpsc::Sender<Arc<str>>>>,
    dropped: AtomicU64,
    published: AtomicU64,
}

/// Refused: [`MAX_CLIENTS`] already listen.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} dashboard clients already listen to /v1/events (the most allowed); close a \
     dashboard tab and reload"
)]
pub struct HubFull(pub usize);

impl Hub {
    fn clients(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::Sender<Arc<str>>>> {
        self.inner
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new listener, with its bounded buffer.
    pub fn subscribe(&self) -> Result<mpsc::Receiver<Arc<str>>, HubFull> {
        let mut clients = self.clients();
        clients.retain(|c| !c.is_closed());
        if clients.len() >= MAX_CLIENTS {
            return Err(HubFull(clients.len()));
        }
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        clients.push(tx);
        Ok(rx)
    }

    /// Sends `event` to every listener; a listener whose buffer is full is dropped and counted.
    /// Returns how many listeners got it.
    pub fn publish(&self, event: Arc<str>) -> usize {
        let mut clients = self.clients();
        let before = clients.len();
        let mut slow = 0u64;
        clients.retain(|c| match c.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                slow += 1;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if slow > 0 {
            let total = self.inner.dropped.fetch_add(slow, Ordering::Relaxed) + slow;
            tracing::warn!(
                slow,
                total,
                buffer = CLIENT_BUFFER,
                "dashboard clients fell behind the event stream and were dropped"
            );
        }
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(
            before,
            after = clients.len(),
            "dashboard snapshot published"
        );
        clients.len()
    }

    /// Listeners connected now.
    pub fn listeners(&self) -> usize {
        let mut clients = self.clients();
        clients.retain(|c| !c.is_closed());
        clients.len()
    }

    /// Listeners dropped because they fell [`CLIENT_BUFFER`] events behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Events published since start.
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }
}

/// Reads a snapshot with the stream's counters and encodes it as an event payload.
async fn read(api: &ApiState, hub: &Hub) -> Arc<str> {
    let mut s = snapshot::read(api).await;
    s.stream = Some(snapshot::StreamStats {
        listeners: hub.listeners(),
        dropped: hub.dropped(),
    });
    serde_json::to_string(&s)
        .unwrap_or_else(|_| "{}".into())
        .into()
}

/// Reads a snapshot every [`TICK`] while someone listens and publishes it when it changed,
/// until `cancel` fires.
pub async fn produce(api: ApiState, hub: Hub, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Arc<str>> = None;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if hub.listeners() == 0 {
            last = None;
            continue;
        }
        let event = read(&api, &hub).await;
        if last.as_deref() != Some(&*event) {
            hub.publish(event.clone());
            last = Some(event);
        }
    }
}

#[derive(Clone)]
struct DashState {
    api: ApiState,
    hub: Hub,
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(PAGE),
    )
        .into_response()
}

async fn events(State(d): State<DashState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&d.api, &headers)?;
    let rx = d
        .hub
        .subscribe()
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let first = read(&d.api, &d.hub).await;
    let stream = client_stream(first, rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The client's stream: the first snapshot, then whatever the hub sends until it drops us.
fn client_stream(
    first: Arc<str>,
    rx: mpsc::Receiver<Arc<str>>,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold((Some(first), rx), |(first, mut rx)| async move {
        let data = match first {
            Some(f) => f,
            None => rx.recv().await?,
        };
        let event = Event::default().event("snapshot").data(&*data);
        Some((Ok(event), (None, rx)))
    })
}

/// The page and the event stream, with the producer that feeds the stream (spawned here, it
/// stops with `cancel`).
pub fn routes(api: ApiState, cancel: CancellationToken) -> Router {
    let hub = Hub::default();
    tokio::spawn(produce(api.clone(), hub.clone(), cancel));
    Router::new()
        .route("/", get(page))
        .route("/dashboard", get(page))
        .route("/v1/events", get(events))
        .with_state(DashState { api, hub })
}

#[cfg(test)]
mod tests;
