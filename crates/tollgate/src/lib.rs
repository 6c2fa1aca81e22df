//! Tower middleware that keeps HTTP traffic inside rate limits, per key.
//!
//! tollgate is a stack of composable tower layers, each limiting *per key*: per
//! mailbox, per chat, per space, per bot token, per client IP.
//!
//! | layer | guarantees |
//! |---|---|
//! | [`RetryAfterBackoffLayer`] | retries throttles (any method) and `503`/`504` (idempotent only), never before the server's hint, with full-jitter backoff, bounded attempts and time, a shared budget; hands waits beyond `max_inline_wait` back at once as [`ErrorKind::RetryLater`] with `retry_at` |
//! | [`QuotaWindowLayer`] | at most N per window per key, several windows at once (sliding, fixed, GCRA), all-or-nothing; wait (paced, FIFO) or reject (`429` with `Retry-After` and `RateLimit` headers) |
//! | [`ConcurrencyPerKeyLayer`] | at most N in flight per key, the slot held until the response body ends; wait (FIFO) or reject; learns a lower limit from concurrency signals |
//! | [`ThrottleClassifierLayer`] | recognises throttling answers (headers and bodies of Graph, Telegram, Google, GitHub, IETF `RateLimit`) and attaches a [`Throttle`](classify::Throttle) to the response, which the layers above obey |
//!
//! Client stack, outermost first: `RetryAfterBackoff` → `QuotaWindow` →
//! `ConcurrencyPerKey` → `ThrottleClassifier` → the client.
//!
//! Keys come from a [`KeyExtractor`](key::KeyExtractor) ([`key`] has the built-ins);
//! state lives in a [`store`], shared by every clone of a layer; every decision
//! that stops a request is a typed [`Error`] naming the key's fingerprint and when to
//! come back.
//!
//! # Example: a client that keeps Microsoft Graph's per-mailbox limits
//!
//! ```
//! use std::time::Duration;
//! use tollgate::key::PathSegment;
//! use tollgate::quota::Quota;
//! use tollgate::{ConcurrencyPerKeyLayer, QuotaWindowLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let mailbox = PathSegment::pattern("/v1.0/users/{id}/{*rest}", "id")?;
//! let client = ServiceBuilder::new()
//!     // 10,000 requests per 10 minutes per mailbox...
//!     .layer(QuotaWindowLayer::new(
//!         Quota::sliding(10_000, Duration::from_secs(600))?,
//!         mailbox.clone(),
//!     ))
//!     // ...and at most 4 at once.
//!     .layer(ConcurrencyPerKeyLayer::new(4, mailbox))
//!     .service(service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("{}")))
//!     }));
//!
//! let request = http::Request::get("/v1.0/users/alice@contoso.com/messages")
//!     .body(String::new())?;
//! assert_eq!(client.oneshot(request).await?.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! # Time
//!
//! Decisions use `tokio::time::Instant`, so `#[tokio::test(start_paused = true)]`
//! drives them; waiting needs a Tokio runtime with its time driver.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod classify;
pub mod concurrency;
mod error;
pub mod key;
pub mod quota;
pub mod reject;
pub mod retry;
pub mod store;

pub use classify::{ThrottleClassifier, ThrottleClassifierLayer};
pub use concurrency::{ConcurrencyPerKey, ConcurrencyPerKeyLayer};
pub use error::{Error, ErrorKind};
pub use quota::{QuotaWindow, QuotaWindowLayer};
pub use retry::{RetryAfterBackoff, RetryAfterBackoffLayer};

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
