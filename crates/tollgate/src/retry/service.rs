use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::body::replay;
use super::future::ResponseFuture;
use super::layer::Config;
use super::{DefaultPolicy, ReplayBody, RetryAfterBackoffLayer, RetryPolicy};
use crate::reject::BoxError;

/// Re-drives a request after a throttle or a transient failure; see the
/// [module docs](super).
pub struct RetryAfterBackoff<S, P = DefaultPolicy> {
    inner: S,
    config: Arc<Config<P>>,
}

impl<S> RetryAfterBackoff<S> {
    /// Wraps `inner` with the [`standard`](RetryAfterBackoffLayer::standard) preset.
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&RetryAfterBackoffLayer::standard(), inner)
    }

    /// A layer for this service; the same as [`RetryAfterBackoffLayer::standard`].
    pub fn layer() -> RetryAfterBackoffLayer {
        RetryAfterBackoffLayer::standard()
    }
}

impl<S, P> RetryAfterBackoff<S, P> {
    pub(super) fn from_config(inner: S, config: Arc<Config<P>>) -> Self {
        RetryAfterBackoff { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P> Clone for RetryAfterBackoff<S, P> {
    fn clone(&self) -> Self {
        RetryAfterBackoff {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for RetryAfterBackoff<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RetryAfterBackoff");
        d.field("inner", &self.inner);
        self.config.fmt_fields(d)
    }
}

impl<S, P, B, ResBody> Service<Request<B>> for RetryAfterBackoff<S, P>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
    P: RetryPolicy<B, ResBody>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(budget) = &self.config.budget {
            budget.deposit();
        }
        match replay(&request) {
            Some(spare) => {
                // The ready service goes into the future, which sends every attempt
                // with it (polling it ready before each retry); `self` keeps a clone
                // that must be polled ready again before its next call.
                let clone = self.inner.clone();
                let mut service = mem::replace(&mut self.inner, clone);
                let future = service.call(request);
                ResponseFuture::new(future, Some((service, spare)), Arc::clone(&self.config))
            }
            None => {
                tracing::trace!(target: "tollgate::retry", decision = "send_once");
                let future = self.inner.call(request);
                ResponseFuture::new(future, None, Arc::clone(&self.config))
            }
        }
    }
}
