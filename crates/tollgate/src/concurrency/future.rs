//! The response future of [`ConcurrencyPerKey`](super::ConcurrencyPerKey).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::classify::{Throttle, ThrottleKind};
use crate::key::KeyId;
use crate::reject::{BoxError, Failure, Respond, Throw};
use crate::store::{ConcurrencyFeedback, ConcurrencyStore};
use crate::{Error, ErrorKind};

pin_project! {
    /// Response future of [`ConcurrencyPerKey`](super::ConcurrencyPerKey): waits for
    /// the key's slot if needed, then drives the inner service's future.
    ///
    /// Dropping it at any point frees what it holds: its place in the queue, a slot
    /// handed to it, or the slot of its call in flight.
    pub struct ResponseFuture<S, R, St, O>
    where
        S: Service<R>,
        St: ConcurrencyStore,
    {
        #[pin]
        state: State<S, R, S::Future, St::Permit, St::Acquire>,
        status: StatusCode,
        release_on_body: bool,
        _output: PhantomData<fn() -> O>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, R, F, P, A> {
        // Boxed: the wait path is the slow path, and keeping its `Sleep`, service and
        // request inline would make every future (and its moves) several times larger.
        Waiting {
            wait: Pin<Box<Waiting<S, R, A>>>,
        },
        Calling {
            #[pin]
            future: F,
            permit: Option<P>,
        },
        // Boxed: rejection is the rare path, and an inline `Error` would make every
        // future (and each move of it) about twice as large.
        Rejected {
            error: Option<Box<Error>>,
        },
    }
}

pin_project! {
    #[project = WaitingProj]
    struct Waiting<S, R, A> {
        #[pin]
        acquire: A,
        #[pin]
        deadline: Sleep,
        service: Option<S>,
        request: Option<R>,
        key: KeyId,
        retry_after: Duration,
    }
}

#[derive(Clone, Copy)]
pub(super) struct WaitContext {
    pub(super) key: KeyId,
    pub(super) retry_after: Duration,
    pub(super) status: StatusCode,
    pub(super) release_on_body: bool,
}

impl<S, R, St, O> ResponseFuture<S, R, St, O>
where
    S: Service<R>,
    St: ConcurrencyStore,
{
    pub(super) fn calling(future: S::Future, permit: St::Permit, release_on_body: bool) -> Self {
        ResponseFuture {
            state: State::Calling {
                future,
                permit: Some(permit),
            },
            status: StatusCode::TOO_MANY_REQUESTS,
            release_on_body,
            _output: PhantomData,
        }
    }

    pub(super) fn waiting(
        acquire: St::Acquire,
        deadline: Instant,
        service: S,
        request: R,
        cx: WaitContext,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                wait: Box::pin(Waiting {
                    acquire,
                    deadline: tokio::time::sleep_until(deadline),
                    service: Some(service),
                    request: Some(request),
                    key: cx.key,
                    retry_after: cx.retry_after,
                }),
            },
            status: cx.status,
            release_on_body: cx.release_on_body,
            _output: PhantomData,
        }
    }

    pub(super) fn rejected(error: Error, status: StatusCode) -> Self {
        ResponseFuture {
            state: State::Rejected {
                error: Some(Box::new(error)),
            },
            status,
            release_on_body: false,
            _output: PhantomData,
        }
    }
}

type Polled<ResBody, P, E> = Result<Response<ResponseBody<ResBody, P>>, Failure<E>>;

impl<S, R, St, O, ResBody> ResponseFuture<S, R, St, O>
where
    S: Service<R, Response = Response<ResBody>>,
    St: ConcurrencyStore,
{
    fn poll_inner(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Polled<ResBody, St::Permit, S::Error>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { wait } => {
                    let WaitingProj {
                        acquire,
                        deadline,
                        service,
                        request,
                        key,
                        retry_after,
                    } = wait.as_mut().project();
                    match acquire.poll(cx) {
                        Poll::Ready(Ok(permit)) => {
                            let mut service = service.take().expect("service taken once");
                            let request = request.take().expect("request taken once");
                            let future = service.call(request);
                            this.state.set(State::Calling {
                                future,
                                permit: Some(permit),
                            });
                        }
                        Poll::Ready(Err(err)) => {
                            let err = err.with_retry_after(Instant::now(), *retry_after);
                            this.state.set(State::Rejected { error: None });
                            return Poll::Ready(Err(Failure::Rejected(err)));
                        }
                        Poll::Pending => {
                            ready!(deadline.poll(cx));
                            let err = Error::new(ErrorKind::WaitExceeded)
                                .with_key(*key)
                                .with_retry_after(Instant::now(), *retry_after);
                            tracing::debug!(target: "tollgate::concurrency", key = %key, decision = "wait_exceeded");
                            // Dropping the wait gives its place in the queue back.
                            this.state.set(State::Rejected { error: None });
                            return Poll::Ready(Err(Failure::Rejected(err)));
                        }
                    }
                }
                StateProj::Calling { future, permit } => {
                    let result = ready!(future.poll(cx));
                    // Released here on error, or at the head, unless the body keeps it.
                    let permit = permit.take();
                    return Poll::Ready(match result {
                        Ok(response) => {
                            if let Some(permit) = &permit {
                                feedback(permit, &response);
                            }
                            let guard = if *this.release_on_body { permit } else { None };
                            Ok(response.map(|body| ResponseBody::new(body, guard)))
                        }
                        Err(err) => Err(Failure::Inner(err)),
                    });
                }
                StateProj::Rejected { error } => {
                    let error = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Err(Failure::Rejected(*error)));
                }
            }
        }
    }
}

impl<S, R, St, ResBody> Future for ResponseFuture<S, R, St, Throw>
where
    S: Service<R, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    St: ConcurrencyStore,
{
    type Output = Result<Response<ResponseBody<ResBody, St::Permit>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_inner(cx).map_err(Failure::throw)
    }
}

impl<S, R, St, ResBody> Future for ResponseFuture<S, R, St, Respond>
where
    S: Service<R, Response = Response<ResBody>>,
    St: ConcurrencyStore,
{
    type Output = Result<Response<ResponseBody<ResBody, St::Permit>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let status = self.status;
        self.poll_inner(cx)
            .map(|result| result.or_else(|failure| failure.respond(status)))
    }
}

/// Adaptive limits: a concurrency throttle on the response (Graph's MailboxConcurrency,
/// recognised by a [`ThrottleClassifier`](crate::classify::ThrottleClassifier) further
/// in) lowers the key's limit in force; a success recovers it.
fn feedback<P: ConcurrencyFeedback, B>(permit: &P, response: &Response<B>) {
    match response.extensions().get::<Throttle>() {
        Some(throttle) if throttle.kind() == ThrottleKind::Concurrency => {
            tracing::debug!(target: "tollgate::concurrency", decision = "congested", source = ?throttle.source());
            permit.congested();
        }
        None if response.status().is_success() => permit.succeeded(),
        _ => {}
    }
}

impl<S, R, St, O> fmt::Debug for ResponseFuture<S, R, St, O>
where
    S: Service<R>,
    St: ConcurrencyStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Calling { .. } => "calling",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
