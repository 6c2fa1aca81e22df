//! The response future of [`RetryAfterBackoff`](super::RetryAfterBackoff).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::backoff;
use super::body::replay;
use super::layer::Config;
use super::{Attempts, Decision, ReplayBody, RetryPolicy};
use crate::reject::BoxError;
use crate::{Error, ErrorKind};

/// Longer than any wait worth naming: a year.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The `Retry-Attempt` request header of the Graph SDKs.
const RETRY_ATTEMPT: HeaderName = HeaderName::from_static("retry-attempt");

pin_project! {
    /// Response future of [`RetryAfterBackoff`](super::RetryAfterBackoff): drives one
    /// attempt, waits, polls its own service ready and sends the next one.
    ///
    /// Dropping it cancels the attempt in flight or the wait.
    pub struct ResponseFuture<S, B, P>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        // `None` when the request cannot be replayed: it is sent once.
        retry: Option<Retry<S, B>>,
        config: Arc<Config<P>>,
        retries: u32,
        started: Instant,
    }
}

struct Retry<S, B> {
    service: S,
    // The copy of the request that the next attempt sends.
    spare: Option<Request<B>>,
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
        },
        // Boxed: the wait is the slow path.
        Waiting {
            sleep: Pin<Box<Sleep>>,
        },
        Readying,
    }
}

impl<S, B, P> ResponseFuture<S, B, P>
where
    S: Service<Request<B>>,
{
    pub(super) fn new(
        future: S::Future,
        retry: Option<(S, Request<B>)>,
        config: Arc<Config<P>>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            retry: retry.map(|(service, spare)| Retry {
                service,
                spare: Some(spare),
            }),
            config,
            retries: 0,
            started: Instant::now(),
        }
    }
}

impl<S, B, P, ResBody> Future for ResponseFuture<S, B, P>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: ReplayBody,
    P: RetryPolicy<B, ResBody>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let sent = *this.retries + 1;
                    let Some(spare) = this.retry.as_ref().and_then(|r| r.spare.as_ref()) else {
                        return Poll::Ready(finish(result, sent, false));
                    };
                    let hint = match this.config.policy.decide(spare, result.as_ref()) {
                        Decision::Retry { hint } => hint,
                        Decision::Return => return Poll::Ready(finish(result, sent, true)),
                    };
                    let config = &**this.config;
                    let now = Instant::now();
                    let own = config.backoff.delay(*this.retries, config.jitter.next());
                    let required = hint.map_or(own, |hint| hint.max(own));
                    if required > config.max_inline_wait {
                        tracing::debug!(target: "tollgate::retry", attempt = sent, decision = "retry_later", wait = ?required);
                        // Capped so that `now + required` cannot overflow (a custom backoff).
                        let required = required.min(FAR_FUTURE);
                        let err = Error::new(ErrorKind::RetryLater).with_retry_after(now, required);
                        return Poll::Ready(Err(err.into()));
                    }
                    // Upward jitter never pushes the wait past the inline bound (and never
                    // below the required wait).
                    let wait = backoff::wait(hint, own, config.hint_jitter, config.jitter.next())
                        .min(config.max_inline_wait)
                        .max(required);
                    // A bound too far to represent is no bound.
                    let deadline = this.started.checked_add(config.max_elapsed);
                    let out_of_time = deadline.is_some_and(|deadline| {
                        now.checked_add(wait).is_none_or(|at| at > deadline)
                    });
                    let refused = if *this.retries >= config.max_retries {
                        Some("max_retries")
                    } else if out_of_time {
                        Some("max_elapsed")
                    } else if config.budget.as_ref().is_some_and(|b| !b.try_withdraw()) {
                        Some("budget")
                    } else {
                        None
                    };
                    if let Some(reason) = refused {
                        tracing::debug!(target: "tollgate::retry", attempt = sent, decision = "exhausted", reason);
                        return Poll::Ready(exhausted(
                            result,
                            sent,
                            hint,
                            config.exhausted_error,
                            now,
                        ));
                    }
                    tracing::debug!(target: "tollgate::retry", attempt = sent, decision = "retry", wait = ?wait, hint = ?hint);
                    // The answer (and its body, and any slot it holds) is dropped here.
                    drop(result);
                    this.state.set(State::Waiting {
                        sleep: Box::pin(tokio::time::sleep(wait)),
                    });
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let retry = this
                        .retry
                        .as_mut()
                        .expect("a retry is only scheduled for a replayable request");
                    ready!(retry.service.poll_ready(cx)).map_err(Into::into)?;
                    let mut request = retry
                        .spare
                        .take()
                        .expect("a retry is only scheduled with a spare request");
                    retry.spare = replay(&request);
                    *this.retries += 1;
                    if this.config.attempt_header {
                        request
                            .headers_mut()
                            .insert(RETRY_ATTEMPT, HeaderValue::from(*this.retries));
                    }
                    let future = retry.service.call(request);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

fn finish<ResBody>(
    result: Result<Response<ResBody>, BoxError>,
    sent: u32,
    replayable: bool,
) -> Result<Response<ResBody>, BoxError> {
    result.map(|mut response| {
        response
            .extensions_mut()
            .insert(Attempts { sent, replayable });
        response
    })
}

fn exhausted<ResBody>(
    result: Result<Response<ResBody>, BoxError>,
    sent: u32,
    hint: Option<Duration>,
    as_error: bool,
    now: Instant,
) -> Result<Response<ResBody>, BoxError> {
    match result {
        Ok(_) if as_error => {
            let err = Error::new(ErrorKind::RetriesExhausted);
            Err(match hint {
                Some(hint) => err.with_retry_after(now, hint),
                None => err,
            }
            .into())
        }
        result => finish(result, sent, true),
    }
}

impl<S, B, P> fmt::Debug for ResponseFuture<S, B, P>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("retries", &self.retries)
            .field("replayable", &self.retry.is_some())
            .finish_non_exhaustive()
    }
}
