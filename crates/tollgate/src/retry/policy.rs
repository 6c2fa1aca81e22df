//! Which answers are retried: the [`RetryPolicy`] trait and its default.

use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode};

use crate::Error;
use crate::classify::{self, Throttle, ThrottleKind};
use crate::reject::BoxError;

/// What a [`RetryPolicy`] says about one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Send the request again, not before `hint` (the server's wait, counted from when
    /// the answer arrived) nor before the layer's own backoff.
    Retry {
        /// The server's wait, when it named one.
        hint: Option<Duration>,
    },
    /// Return this answer to the caller.
    Return,
}

/// Decides whether an answer is retried.
///
/// Implemented by [`DefaultPolicy`], by `()` (never retry), and by closures
/// `Fn(&Request<B>, Result<&Response<ResBody>, &BoxError>) -> Decision`. The request
/// is the copy kept for the next attempt (its method, headers and extensions are the
/// original's).
///
/// A closure that also retries `500` for `GET`, and otherwise defers to the default:
///
/// ```
/// use tollgate::RetryAfterBackoffLayer;
/// use tollgate::retry::{Decision, DefaultPolicy, RetryPolicy};
///
/// let layer = RetryAfterBackoffLayer::standard().policy(
///     |request: &http::Request<String>,
///      result: Result<&http::Response<String>, &tower::BoxError>| match result {
///         Ok(response) if response.status() == 500 && request.method() == "GET" => {
///             Decision::Retry { hint: None }
///         }
///         _ => DefaultPolicy.decide(request, result),
///     },
/// );
/// # let _ = layer;
/// ```
pub trait RetryPolicy<B, ResBody> {
    /// Whether to retry `request` after `result`.
    fn decide(
        &self,
        request: &Request<B>,
        result: Result<&Response<ResBody>, &BoxError>,
    ) -> Decision;
}

impl<B, ResBody> RetryPolicy<B, ResBody> for () {
    fn decide(&self, _: &Request<B>, _: Result<&Response<ResBody>, &BoxError>) -> Decision {
        Decision::Return
    }
}

impl<B, ResBody, F> RetryPolicy<B, ResBody> for F
where
    F: Fn(&Request<B>, Result<&Response<ResBody>, &BoxError>) -> Decision,
{
    fn decide(
        &self,
        request: &Request<B>,
        result: Result<&Response<ResBody>, &BoxError>,
    ) -> Decision {
        self(request, result)
    }
}

/// A request extension that marks a request as idempotent whatever its method (a `POST`
/// with an idempotency key), so that [`DefaultPolicy`] retries it after transient
/// failures too.
///
/// ```
/// let mut request = http::Request::post("/v1/charges").body(String::new()).unwrap();
/// request.headers_mut().insert("idempotency-key", "7f3a".parse().unwrap());
/// request.extensions_mut().insert(tollgate::retry::Idempotent);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Idempotent;

/// Whether `request` may be sent twice: `GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`,
/// `TRACE`, or any request carrying the [`Idempotent`] extension.
pub fn is_idempotent<B>(request: &Request<B>) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || request.extensions().get::<Idempotent>().is_some()
}

/// The default policy:
///
/// - `503 Service Unavailable` and `504 Gateway Timeout` are retried for
///   [idempotent](is_idempotent) requests only, with or without a [`Throttle`] signal
///   (a `POST` may have been processed before the gateway gave up);
/// - any other refusal (`4xx`, `5xx`) with a [`Throttle`] extension (from the
///   `ThrottleClassifier` below) of any kind — rate, quota, concurrency, overload — is
///   retried **for any method**: a `429` was not processed;
/// - a `429` is retried for any method, with or without a signal;
/// - the hint is the signal's [`resume_after`](Throttle::resume_after). Without a
///   `Throttle` extension (no classifier in the stack), a `429`, `503` or `504` is read
///   with [`classify::standard`](crate::classify::standard) (`Retry-After`, `RateLimit`,
///   `X-RateLimit-*`), so the hint is obeyed all the same;
/// - an inner error that is a [`tollgate::Error`](Error) (a local decision further in:
///   quota exceeded, wait exceeded, cooling down, or a nested retry layer's verdict) is
///   **never** retried: it is returned as it is;
/// - any other inner error (a connection refused or reset, a timeout, a TLS failure)
///   is treated as a transport failure: the request may or may not have reached the
///   server, so it is retried for idempotent requests only. The layer cannot tell a
///   connect error (never sent) from a reset after sending without knowing the client;
///   write a closure policy to be more precise (e.g. hyper-util's
///   `Error::is_connect`, which is safe to retry for any method).
///
/// A success is never retried, whatever `Throttle` it carries: one announcing an
/// exhausted window (`RateLimit: r=0`), or a Graph `$batch` `200` whose sub-requests
/// were throttled ([`classify::batch`]): resending the batch would repeat the
/// sub-requests that succeeded. It is returned, and the limiting layers act on the
/// signal (the mailbox cools down until the largest sub-hint); the caller resubmits
/// the throttled ids ([`classify::batch::throttled`]) as a new batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefaultPolicy;

impl<B, ResBody> RetryPolicy<B, ResBody> for DefaultPolicy {
    fn decide(
        &self,
        request: &Request<B>,
        result: Result<&Response<ResBody>, &BoxError>,
    ) -> Decision {
        match result {
            Ok(response) => {
                let status = response.status();
                let candidate = matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                );
                // Without a classifier below, the standard headers still give the hint.
                let fallback;
                let throttle = match response.extensions().get::<Throttle>() {
                    Some(throttle) => Some(throttle),
                    None if candidate => {
                        fallback =
                            classify::standard(status, response.headers(), None, SystemTime::now());
                        fallback.as_ref()
                    }
                    None => None,
                };
                let hint = throttle.and_then(Throttle::resume_after);
                if matches!(
                    status,
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
                ) {
                    // The request may have been (partly) processed.
                    return if is_idempotent(request) {
                        Decision::Retry { hint }
                    } else {
                        Decision::Return
                    };
                }
                if status == StatusCode::TOO_MANY_REQUESTS {
                    return Decision::Retry { hint };
                }
                let Some(throttle) = throttle else {
                    return Decision::Return;
                };
                // A success that announces an exhausted window is not a refusal.
                let refused = status.is_client_error() || status.is_server_error();
                let kind_retried = matches!(
                    throttle.kind(),
                    ThrottleKind::Rate
                        | ThrottleKind::Quota
                        | ThrottleKind::Concurrency
                        | ThrottleKind::Overload
                );
                if refused && kind_retried {
                    Decision::Retry { hint }
                } else {
                    Decision::Return
                }
            }
            Err(err) => {
                if err.downcast_ref::<Error>().is_some() || !is_idempotent(request) {
                    Decision::Return
                } else {
                    Decision::Retry { hint: None }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::classify::ThrottleScope;

    #[test]
    fn a_batch_200_with_throttled_sub_requests_is_not_resent() {
        let body = r#"{"responses":[{"id":"1","status":200,"body":{}},{"id":"2","status":429,"headers":{"Retry-After":"5"}}]}"#;
        let throttle = classify::batch::graph_batch(
            StatusCode::OK,
            &http::HeaderMap::new(),
            Some(body.as_bytes()),
            SystemTime::now(),
        )
        .expect("a throttled sub-request");
        assert_eq!(throttle.scope(), ThrottleScope::Key);
        assert_eq!(throttle.retry_after(), Some(Duration::from_secs(5)));
        let mut response = Response::new(body);
        response.extensions_mut().insert(throttle);
        let request = Request::post("/v1.0/$batch").body("{}").unwrap();
        let decision = DefaultPolicy.decide(&request, Ok::<_, &BoxError>(&response));
        assert_eq!(decision, Decision::Return);
    }
}
