//! At most N requests in flight per key.
//!
//! [`ConcurrencyPerKey`] caps the requests in flight for each key, as Microsoft Graph
//! caps them at 4 per mailbox: one busy mailbox never delays another. The limit may
//! differ per key ([`ConcurrencyPerKeyLayer::limit_per_key`]).
//!
//! # Example
//!
//! A client that sends at most 4 requests at once to each mailbox, waiting up to 10 s
//! for a slot:
//!
//! ```
//! use std::time::Duration;
//! use tollgate::concurrency::ConcurrencyPerKeyLayer;
//! use tollgate::key::PathSegment;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let mailbox = PathSegment::pattern("/v1.0/users/{id}/{*rest}", "id")?;
//! let client = ServiceBuilder::new()
//!     .layer(ConcurrencyPerKeyLayer::new(4, mailbox).max_wait(Duration::from_secs(10)))
//!     .service(service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("{}")))
//!     }));
//!
//! let request = http::Request::get("/v1.0/users/alice@contoso.com/messages")
//!     .body(String::new())?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! On a server, [`respond`](ConcurrencyPerKeyLayer::respond) turns rejections into
//! `429 Too Many Requests` responses with `Retry-After`, so the layer goes straight onto
//! an axum `Router` with no `HandleErrorLayer`:
//!
//! ```
//! # use tollgate::concurrency::ConcurrencyPerKeyLayer;
//! # use tollgate::key::Header;
//! let per_api_key = ConcurrencyPerKeyLayer::new(8, Header::new("x-api-key"))
//!     .reject()
//!     .respond();
//! // axum::Router::new().route("/", get(handler)).layer(per_api_key)
//! # let _ = per_api_key;
//! ```
//!
//! # Modes
//!
//! - **Wait** (default, for clients): a request that finds its key full waits in the
//!   key's FIFO queue, at most `max_queue` deep (1024) and at most `max_wait` long (30
//!   s); beyond either it fails with [`ErrorKind::QueueFull`] or
//!   [`ErrorKind::WaitExceeded`]. Arrivals never overtake waiters.
//! - **Reject** ([`reject`](ConcurrencyPerKeyLayer::reject), for servers): it fails at
//!   once with [`ErrorKind::ConcurrencyLimited`].
//!
//! Waiting uses `tokio::time` for `max_wait`, so wait mode needs a Tokio runtime with
//! its time driver enabled (`#[tokio::main]` and `#[tokio::test]` have it).
//!
//! Every rejection is a [`tollgate::Error`](crate::Error) naming the key's fingerprint
//! and carrying a retry estimate ([`retry_after`](ConcurrencyPerKeyLayer::retry_after),
//! 1 s by default). With [`Throw`](crate::reject::Throw) (default) it is the service's
//! error; with [`Respond`](crate::reject::Respond) it is a `429` (configurable, e.g. to
//! `503`) whose extensions hold the error. A request without a usable key fails with
//! [`ErrorKind::Key`] (`400` on a server).
//!
//! # When a slot is freed
//!
//! A slot is held from admission until the response **body** ends (its last frame is
//! read, it errors, or it is dropped): a streaming download keeps its slot for as long
//! as it streams, as the server counts it. [`Release::Head`] frees it when the response
//! head arrives instead. The slot is also freed when the inner service fails, and when
//! the response future is dropped (cancellation) at any point: nothing leaks.
//!
//! # Adaptive limits
//!
//! When a response carries a [`Throttle`](crate::classify::Throttle) of kind
//! [`Concurrency`](crate::classify::ThrottleKind::Concurrency) (Graph's
//! `ApplicationThrottled` / MailboxConcurrency, recognised by a
//! [`ThrottleClassifier`](crate::classify::ThrottleClassifier) further in), the key's
//! limit in force is halved (at least 1), once per burst: the permits admitted before a
//! decrease cannot decrease it again. Each round of successes as long as the limit in
//! force raises it by one, up to the configured limit and never above. One below the
//! refused level is remembered as a ceiling: recovery holds there for 16 rounds before
//! probing one above it, a refused probe goes back to the ceiling (not halved), and a
//! whole round of successes above it clears it. Against a server whose limit is fixed
//! (Graph accepts 4 per mailbox), that is one refused request per 16 rounds instead
//! of one per round.
//! [`ConcurrencySnapshot::effective_limit`](crate::store::ConcurrencySnapshot::effective_limit)
//! shows it. A key whose limit is lowered is not evicted until it has recovered.
//!
//! # poll_ready and the inner service
//!
//! Per-key capacity cannot be reserved in `poll_ready`, because the key is only known in
//! `call`. So `poll_ready` only asks the inner service; `call` extracts the key and asks
//! the store for a slot:
//!
//! - when it is free, the inner service is called right away (the common path: no clone,
//!   no allocation);
//! - when the request must wait, the ready inner service is moved into the response
//!   future, to be called once the slot is granted, and `self` keeps a clone that must be
//!   polled ready again before its next call (the pattern of tower's docs, so a clone
//!   that was never polled is never called). This is why `S: Clone` is required. While
//!   it waits, the request keeps whatever readiness the inner service reserved for it.
//!
//! # Order
//!
//! In a client stack: `RetryAfterBackoff` → `QuotaWindow` → `ConcurrencyPerKey` →
//! `ThrottleClassifier` → the client. Every retry passes through this layer again and
//! takes a slot like any request, as the server counts it.
//!
//! # Sharing
//!
//! Limits live in the store ([`MemoryStore`](crate::store::MemoryStore) by default), and
//! every clone of the layer or of the service shares it: cloning never creates fresh
//! limits, and an axum `Router` that clones the service per route still enforces one limit
//! per key. Two layers built separately have separate limits unless given the same
//! store with [`store`](ConcurrencyPerKeyLayer::store).
//!
//! [`ErrorKind::QueueFull`]: crate::ErrorKind::QueueFull
//! [`ErrorKind::WaitExceeded`]: crate::ErrorKind::WaitExceeded
//! [`ErrorKind::ConcurrencyLimited`]: crate::ErrorKind::ConcurrencyLimited
//! [`ErrorKind::Key`]: crate::ErrorKind::Key

use std::time::Duration;

pub mod future;
mod layer;
mod service;

pub use layer::ConcurrencyPerKeyLayer;
pub use service::ConcurrencyPerKey;

/// When a request gives its slot back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Release {
    /// When the response body ends, errors or is dropped (default).
    #[default]
    BodyEnd,
    /// When the response head arrives.
    Head,
}

/// Deadlines past `Instant` arithmetic are clamped to about 30 years.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

#[cfg(test)]
mod tests;
