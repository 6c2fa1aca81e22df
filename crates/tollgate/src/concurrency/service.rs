use std::fmt;
use std::marker::PhantomData;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use tokio::time::Instant;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Config;
use super::{ConcurrencyPerKeyLayer, Release};
use crate::body::ResponseBody;
use crate::key::KeyExtractor;
use crate::reject::{BoxError, Respond, Throw};
use crate::store::{Admission, ConcurrencyStore, MemoryStore};
use crate::{Error, ErrorKind};

/// Caps the requests in flight per key; see the [module docs](super).
pub struct ConcurrencyPerKey<S, X, St = MemoryStore, O = Throw> {
    inner: S,
    config: Arc<Config<X, St>>,
    _output: PhantomData<fn() -> O>,
}

impl<S, X> ConcurrencyPerKey<S, X> {
    /// Wraps `inner`: at most `max` requests in flight per key of `extractor`, with
    /// the defaults of [`ConcurrencyPerKeyLayer`].
    pub fn new(inner: S, max: u32, extractor: X) -> Self
    where
        X: Clone,
    {
        tower_layer::Layer::layer(&ConcurrencyPerKeyLayer::new(max, extractor), inner)
    }

    /// A layer for this service; the same as [`ConcurrencyPerKeyLayer::new`].
    pub fn layer(max: u32, extractor: X) -> ConcurrencyPerKeyLayer<X> {
        ConcurrencyPerKeyLayer::new(max, extractor)
    }
}

impl<S, X, St, O> ConcurrencyPerKey<S, X, St, O> {
    pub(super) fn from_config(inner: S, config: Arc<Config<X, St>>) -> Self {
        ConcurrencyPerKey {
            inner,
            config,
            _output: PhantomData,
        }
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

    /// The store holding the limits.
    pub fn get_store(&self) -> &St {
        &self.config.store
    }
}

impl<S: Clone, X, St, O> Clone for ConcurrencyPerKey<S, X, St, O> {
    fn clone(&self) -> Self {
        ConcurrencyPerKey {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
            _output: PhantomData,
        }
    }
}

impl<S: fmt::Debug, X, St: fmt::Debug, O> fmt::Debug for ConcurrencyPerKey<S, X, St, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ConcurrencyPerKey");
        d.field("inner", &self.inner);
        self.config.fmt_fields(d)
    }
}

impl<S, X, St, R, ResBody> Service<R> for ConcurrencyPerKey<S, X, St, Throw>
where
    S: Service<R, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    X: KeyExtractor<R>,
    St: ConcurrencyStore,
{
    type Response = Response<ResponseBody<ResBody, St::Permit>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, R, St, Throw>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Per-key capacity cannot be reserved here: the key is only known in `call`.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.start(request)
    }
}

impl<S, X, St, R, ResBody> Service<R> for ConcurrencyPerKey<S, X, St, Respond>
where
    S: Service<R, Response = Response<ResBody>> + Clone,
    X: KeyExtractor<R>,
    St: ConcurrencyStore,
{
    type Response = Response<ResponseBody<ResBody, St::Permit>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, R, St, Respond>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.start(request)
    }
}

impl<S, X, St, O> ConcurrencyPerKey<S, X, St, O> {
    /// `call`, for either output.
    fn start<R>(&mut self, request: R) -> ResponseFuture<S, R, St, O>
    where
        S: Service<R> + Clone,
        X: KeyExtractor<R>,
        St: ConcurrencyStore,
    {
        let config = &*self.config;
        let release_on_body = config.release == Release::BodyEnd;
        let key = match config.extractor.extract(&request) {
            Ok(key) => key,
            Err(err) => {
                tracing::debug!(target: "tollgate::concurrency", decision = "no_key", error = %err);
                return ResponseFuture::rejected(Error::from_key_error(err), config.status);
            }
        };
        let limit = match &config.per_key {
            Some(resolve) => resolve(&key),
            None => config.max,
        };
        match config.store.acquire(&key, limit, config.policy) {
            Admission::Ready(permit) => {
                tracing::trace!(target: "tollgate::concurrency", key = %key.id(), decision = "admitted");
                ResponseFuture::calling(self.inner.call(request), permit, release_on_body)
            }
            Admission::Wait(acquire) => {
                tracing::debug!(target: "tollgate::concurrency", key = %key.id(), decision = "wait", max_wait = ?config.max_wait);
                // The ready service goes into the future, to be called once a slot is
                // ours; `self` keeps a clone that must be polled ready again.
                let clone = self.inner.clone();
                let service = mem::replace(&mut self.inner, clone);
                let now = Instant::now();
                let deadline = now
                    .checked_add(config.max_wait)
                    .unwrap_or_else(|| now + super::FAR_FUTURE);
                ResponseFuture::waiting(
                    acquire,
                    deadline,
                    service,
                    request,
                    super::future::WaitContext {
                        key: key.id(),
                        retry_after: config.retry_after,
                        status: config.status,
                        release_on_body,
                    },
                )
            }
            Admission::Rejected(err) => {
                tracing::debug!(target: "tollgate::concurrency", key = %key.id(), decision = "rejected", kind = ?err.kind());
                let err = match err.kind() {
                    ErrorKind::Key => err,
                    _ => err.with_retry_after(Instant::now(), config.retry_after),
                };
                ResponseFuture::rejected(err, config.status)
            }
        }
    }
}
