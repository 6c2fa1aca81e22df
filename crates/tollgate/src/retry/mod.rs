//! Retries that obey the server: re-drive a request after a throttle or a transient
//! failure, never before the server's `Retry-After`, never holding a worker for an hour.
//!
//! [`RetryAfterBackoff`] sits outermost in a client stack and asks a [`RetryPolicy`]
//! about every answer. The [`DefaultPolicy`] retries refusals that carry a
//! [`Throttle`](crate::classify::Throttle) signal (put there by the
//! [`ThrottleClassifier`](crate::ThrottleClassifier) below it) for any method, since a
//! `429` was not processed, and `503`/`504` and transport errors for idempotent
//! requests only ([`Idempotent`] marks a `POST` that is). A tollgate rejection from a
//! layer further in ([`QuotaExceeded`](crate::ErrorKind::QuotaExceeded),
//! [`WaitExceeded`](crate::ErrorKind::WaitExceeded), ...) is returned as it is: those
//! layers already waited as long as they were allowed to.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tollgate::classify::ThrottleClassifierLayer;
//! use tollgate::{ErrorKind, RetryAfterBackoffLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let client = ServiceBuilder::new()
//!     // Flood waits over 60 s go back to the caller.
//!     .layer(RetryAfterBackoffLayer::telegram())
//!     .layer(ThrottleClassifierLayer::telegram())
//!     .service(service_fn(|_req: http::Request<String>| async {
//!         let body = r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;
//!         let response = http::Response::builder().status(429).body(String::from(body))?;
//!         Ok::<_, tower::BoxError>(response)
//!     }));
//!
//! let request = http::Request::post("/bot123:abc/sendMessage").body(String::from("{}"))?;
//! let err = client.oneshot(request).await.unwrap_err();
//! let err = err.downcast_ref::<tollgate::Error>().unwrap();
//! assert_eq!(err.kind(), ErrorKind::RetryLater);
//! assert_eq!(err.retry_after(), Some(Duration::from_secs(4310)));
//! // Reschedule the job at `err.retry_at()`.
//! # Ok(())
//! # }
//! ```
//!
//! # The wait
//!
//! Before retry `n` (0 for the first) the layer waits `max(hint, own)`: `hint` is the
//! server's wait ([`Throttle::resume_after`](crate::classify::Throttle::resume_after)),
//! counted from when the answer arrived, raised by a random part of at most
//! [`hint_jitter`](RetryAfterBackoffLayer::hint_jitter) of itself (10 %) and never
//! lowered: **no retry is sent before the hint**. `own` is the [`Backoff`]: truncated
//! exponential with full jitter, `rand(0, min(cap, base · 2^n))`, or Google's
//! `min(2^n s + rand(0..1000 ms), cap)`. Waits use `tokio::time::sleep`, so a Tokio
//! runtime with its time driver is needed, and paused test time drives them.
//!
//! # Bounds
//!
//! - **max inline wait**: when `max(hint, own)` is longer, the call ends at once with
//!   [`ErrorKind::RetryLater`](crate::ErrorKind::RetryLater), whose
//!   [`retry_at`](crate::Error::retry_at) is now + that wait (the hint itself, without
//!   jitter), so a job queue can reschedule. This holds even when no retry is left.
//! - **max retries**, **max elapsed** (no retry whose wait would end after the call's
//!   start + `max_elapsed`), and the shared [`RetryBudget`]. When one of them stops a
//!   retry, the last response is returned as it is (its `Throttle` extension and body
//!   intact), as tower's `Retry` and the Graph SDKs do; with
//!   [`exhausted_error`](RetryAfterBackoffLayer::exhausted_error) it becomes
//!   [`ErrorKind::RetriesExhausted`](crate::ErrorKind::RetriesExhausted) carrying the last
//!   hint. An inner error is returned as it is.
//!
//! Every response the layer returns carries an [`Attempts`] extension: how many times
//! the request was sent and whether it could have been sent again.
//!
//! # Bodies
//!
//! A request is retried only if its body implements [`ReplayBody`]: every `Clone` body
//! (`String`, `Bytes`, `Full<Bytes>`, `Empty<Bytes>`, ...). Before the first attempt the
//! layer makes a copy (method, URI, version, headers, body, and **all** extensions: they
//! are `Clone` in http 1.x, so [`Cost`](crate::quota::Cost), [`Idempotent`] and the
//! rest survive), and another before each retry. A streaming body (hyper's `Incoming`,
//! a `BoxBody`) is read ahead with [`buffer`] up to a cap: the [`Buffered`] body is
//! replayable when it fits, and sent once, with every byte, when it does not. A body
//! wrapped in [`SendOnce`] is sent exactly once, whatever the answer. Either way
//! [`Attempts::replayable`] says whether the request could have been retried. A retry
//! is never sent without its body.
//!
//! `Retry-Attempt: n` is added to the `n`-th retry with
//! [`retry_attempt_header`](RetryAfterBackoffLayer::retry_attempt_header) (on in
//! [`graph`](RetryAfterBackoffLayer::graph)).
//!
//! # poll_ready and the inner service
//!
//! As tower's `Retry`: `poll_ready` is the inner service's. `call` moves the ready inner
//! service into the response future and keeps a clone (so `S: Clone`); the future sends
//! the first attempt with it, and polls it ready again before each retry. A request that
//! cannot be replayed is sent with `self`'s service directly, with no clone.
//!
//! # Order
//!
//! Outermost in a client stack: `RetryAfterBackoff` → `QuotaWindow` →
//! `ConcurrencyPerKey` → `ThrottleClassifier` → the client. Every retry passes through
//! the limiting layers again and takes quota and a slot like any request, as the server
//! counts it; a key cooling down after the throttle holds the retry there too.
//!
//! # Sharing
//!
//! The configuration and the [`RetryBudget`] are shared (`Arc`) by every clone of the
//! layer and of its services.

mod backoff;
mod body;
mod budget;
pub mod future;
mod layer;
mod policy;
mod service;
#[cfg(test)]
mod tests;

pub use backoff::{Backoff, Jitter, wait};
pub use body::{Buffered, ReplayBody, SendOnce, buffer};
pub use budget::RetryBudget;
pub use layer::RetryAfterBackoffLayer;
pub use policy::{Decision, DefaultPolicy, Idempotent, RetryPolicy, is_idempotent};
pub use service::RetryAfterBackoff;

/// A response extension set by [`RetryAfterBackoff`] on every response it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attempts {
    sent: u32,
    replayable: bool,
}

impl Attempts {
    /// How many times the request was sent (1 when it was not retried).
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Whether the request could be sent again: `false` for a [`SendOnce`] body, which
    /// was never retried whatever the answer.
    pub fn replayable(&self) -> bool {
        self.replayable
    }
}
