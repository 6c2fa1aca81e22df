//! The client strategies the examples compare, and what their clients have in common.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body;
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceExt};

/// How a client deals with an API's rate limits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Strategy {
    /// The full tollgate stack, configured with the API's limits: requests are paced
    /// and capped per key before they leave, and throttles are obeyed.
    Tollgate,
    /// `RetryAfterBackoff` alone (with its classifier): no limits, but every throttle
    /// is retried no earlier than the server's hint.
    RetryOnly,
    /// No limits; a failed request is tried again [`NAIVE_TRIES`] times in all, with
    /// exponential backoff from [`NAIVE_BACKOFF`], ignoring `Retry-After`, as common
    /// clients do.
    Naive,
}

impl Strategy {
    /// Every strategy, the one under test first.
    pub const ALL: [Strategy; 3] = [Strategy::Tollgate, Strategy::RetryOnly, Strategy::Naive];

    /// The name on the command line and in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Tollgate => "tollgate",
            Strategy::RetryOnly => "retry-only",
            Strategy::Naive => "naive",
        }
    }

    /// The strategy of that [`name`](Self::name), if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every client of an example, boxed: a request with a body of type `B` in, a
/// response with its body read out.
pub type Svc<B> = BoxCloneService<Request<B>, Response<Bytes>, BoxError>;

/// Boxes a client, reading the body of every response, so that each strategy is one
/// type and a concurrency slot (held until the body ends) is released as soon as the
/// answer is read.
pub fn boxed<S, B, RB>(service: S) -> Svc<B>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: 'static,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    BoxCloneService::new(service.map_err(Into::into).and_then(
        |response: Response<RB>| async move {
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
            Ok::<_, BoxError>(Response::from_parts(parts, bytes))
        },
    ))
}

/// Tries of the naive client, the first one included.
pub const NAIVE_TRIES: u32 = 4;
/// The naive client's first backoff, doubled after every failed try.
pub const NAIVE_BACKOFF: Duration = Duration::from_millis(100);

/// The naive client's retry loop: runs `attempt` until it succeeds or
/// [`NAIVE_TRIES`] tries have failed, sleeping `NAIVE_BACKOFF · 2^n` after the
/// `n`-th failure whatever the server said. Returns the last error.
///
/// # Errors
///
/// The last try's error, when every try failed.
pub async fn naive_retry<T, E, F, Fut>(mut attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if tries + 1 >= NAIVE_TRIES => return Err(e),
            Err(_) => {
                tokio::time::sleep(NAIVE_BACKOFF * 2u32.pow(tries)).await;
                tries += 1;
            }
        }
    }
}
