//! The Microsoft Graph mail client of the `mailbox_sync` and `fleet_worker` examples.
//!
//! [`client`] builds the full tollgate client stack, outermost first:
//!
//! ```text
//! RetryAfterBackoff (Graph preset, backoff scaled to the simulator's time)
//!   → QuotaWindow (sliding, per mailbox, with a safety margin)
//!     → ConcurrencyPerKey (per mailbox)
//!       → ThrottleClassifier (Graph preset)
//!         → the HTTP client
//! ```
//!
//! with both limit layers keyed by the mailbox of the path and backed by one store: a
//! [`MemoryStore`](tollgate::store::MemoryStore) limits one process, a
//! `tollgate_redis::RedisStore` a whole fleet. [`get_page`] fetches one page of a
//! mailbox listing through it.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use serde_json::Value;
use tollgate::classify::ThrottleClassifierLayer;
use tollgate::key::PathSegment;
use tollgate::quota::Quota;
use tollgate::retry::Backoff;
use tollgate::store::{ConcurrencyStore, QuotaStore};
use tollgate::{ConcurrencyPerKeyLayer, QuotaWindowLayer, RetryAfterBackoffLayer};
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

/// Messages per page (`$top`).
pub const PAGE: u64 = 25;
/// Graph's concurrency limit per mailbox.
pub const CONCURRENCY: u32 = 4;
/// The examples' quota per mailbox: `QUOTA` requests in any sliding [`WINDOW`]. Graph
/// allows 10,000 per 10 minutes; the simulator keeps that shape with the window shrunk
/// to 2 s and the limit scaled with it, so that a run spans a few windows in seconds.
pub const QUOTA: u32 = 40;
/// The window of [`QUOTA`].
pub const WINDOW: Duration = Duration::from_secs(2);

/// A client: a request in, a response with its body read out.
pub type Svc = BoxCloneService<Request<Empty<Bytes>>, Response<Bytes>, BoxError>;

/// The limits the client keeps per mailbox.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests allowed in any sliding `window`.
    pub quota: u32,
    /// The quota's window.
    pub window: Duration,
    /// Added to the window on the client's side, for the time between the client's
    /// admission and the server's count (see `QuotaWindowLayer::safety_margin`).
    pub margin: Duration,
    /// Requests in flight at once.
    pub concurrency: u32,
}

impl Default for Limits {
    /// The simulator's defaults in the examples: [`QUOTA`] per [`WINDOW`] and
    /// [`CONCURRENCY`] in flight, with 10 ms of margin (loopback takes well under a
    /// millisecond, and a request that waits for a slot waits at most a few of the
    /// simulator's 20 ms latencies, while releases are paced `W/N` = 50 ms apart; every
    /// millisecond of margin costs goodput, the window being 2 s).
    fn default() -> Self {
        Limits {
            quota: QUOTA,
            window: WINDOW,
            margin: Duration::from_millis(10),
            concurrency: CONCURRENCY,
        }
    }
}

/// Reads the body of every response, so that every client is one boxed service and a
/// concurrency slot (held until the body ends) is released as soon as the page is read.
pub fn boxed<S, B>(service: S) -> Svc
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    BoxCloneService::new(
        service
            .map_err(Into::into)
            .and_then(|response: Response<B>| async move {
                let (parts, body) = response.into_parts();
                let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
                Ok::<_, BoxError>(Response::from_parts(parts, bytes))
            }),
    )
}

/// Graph's retry preset with its own backoff (3 s base, 180 s cap) scaled down to the
/// simulator's 2 s window; hints (`Retry-After`) are obeyed as they come.
pub fn retry_layer() -> RetryAfterBackoffLayer {
    RetryAfterBackoffLayer::graph()
        .backoff(Backoff::full_jitter(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .max_inline_wait(Duration::from_secs(10))
        .max_elapsed(Duration::from_secs(30))
}

/// The mailbox of a listing request: `{id}` of `/v1.0/users/{id}/messages`.
///
/// # Errors
///
/// Never for this pattern; the signature is `PathSegment::pattern`'s.
pub fn mailbox_key() -> Result<PathSegment, BoxError> {
    Ok(PathSegment::pattern("/v1.0/users/{id}/messages", "id")?)
}

/// The full tollgate client stack (see the [module docs](self)) over `http`, both
/// limit layers keyed by mailbox and backed by `store`.
///
/// # Errors
///
/// If `limits` make no valid quota (a zero quota or window).
pub fn client<St, H, B>(limits: Limits, store: St, http: H) -> Result<Svc, BoxError>
where
    St: QuotaStore + ConcurrencyStore,
    H: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + Sync,
{
    let mailbox = mailbox_key()?;
    Ok(boxed(
        ServiceBuilder::new()
            .layer(retry_layer())
            .layer(
                QuotaWindowLayer::new(
                    Quota::sliding(limits.quota, limits.window)?,
                    mailbox.clone(),
                )
                .safety_margin(limits.margin)?
                .store(store.clone()),
            )
            .layer(ConcurrencyPerKeyLayer::new(limits.concurrency, mailbox).store(store))
            .layer(ThrottleClassifierLayer::graph())
            .service(http),
    ))
}

/// One page of a listing: the message ids and the next link, if any.
#[derive(Debug)]
pub struct Page {
    /// The ids of the page's messages, in order.
    pub ids: Vec<String>,
    /// `@odata.nextLink`, while the server has more.
    pub next: Option<String>,
}

/// Fetches and parses one page at `uri`; anything but a `200` with a `value` array is
/// an error.
///
/// # Errors
///
/// The client's error, a status other than `200`, or a body that is not a page.
pub async fn get_page(client: Svc, uri: &str) -> Result<Page, String> {
    let request = Request::get(uri)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = client.oneshot(request).await.map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let body: Value = serde_json::from_slice(response.body()).map_err(|e| e.to_string())?;
    let ids = body["value"]
        .as_array()
        .ok_or("no `value` array")?
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    let next = body["@odata.nextLink"].as_str().map(str::to_owned);
    Ok(Page { ids, next })
}
