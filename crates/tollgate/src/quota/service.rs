use std::fmt;
use std::marker::PhantomData;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::future::{Refund, ResponseFuture, Waiting};
use super::layer::Built;
use super::{Classified, Classify, QuotaDecision};
use crate::Error;
use crate::body::ResponseBody;
use crate::key::{Key, KeyExtractor};
use crate::reject::{BoxError, Respond, Throw};
use crate::store::{Admission, MemoryStore, QuotaAsk, QuotaStore, WaitPolicy};

/// Keeps each key inside its quota windows; see the [module docs](super).
pub struct QuotaWindow<S, X, C = (), St = MemoryStore, O = Throw> {
    inner: S,
    config: Arc<Built<X, C, St>>,
    _output: PhantomData<fn() -> O>,
}

impl<S, X, C, St, O> QuotaWindow<S, X, C, St, O> {
    pub(super) fn from_config(inner: S, config: Arc<Built<X, C, St>>) -> Self {
        QuotaWindow {
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
        &self.config.core.store
    }

    /// Puts `key` (of requests of `class`; `""` for the default class) in cooldown: no
    /// request of it is admitted before `until`. Waiting requests wait it out (or fail
    /// if that exceeds their `max_wait`); in reject mode they fail with
    /// [`ErrorKind::Throttled`](crate::ErrorKind::Throttled). Other keys are untouched.
    pub fn cooldown(&self, key: &Key, class: &'static str, until: Instant) -> Result<(), Error>
    where
        St: QuotaStore,
    {
        let key = state_key(key.clone(), class)?;
        self.config.core.store.cooldown(&key, until);
        Ok(())
    }

    /// Puts every key of the layer's store in cooldown until `until`.
    pub fn cooldown_all(&self, until: Instant)
    where
        St: QuotaStore,
    {
        self.config.core.store.cooldown_all(until);
    }
}

/// The key under which a class of a key keeps its state.
#[inline]
pub(super) fn state_key(key: Key, class: &'static str) -> Result<Key, Error> {
    if class.is_empty() {
        return Ok(key);
    }
    class_key(&key, class)
}

/// [`state_key`] of a named class: the key and the class, composed.
fn class_key(key: &Key, class: &'static str) -> Result<Key, Error> {
    let class = Key::new(class).map_err(Error::from_key_error)?;
    Key::compose(&[key, &class]).map_err(Error::from_key_error)
}

impl<S: Clone, X, C, St, O> Clone for QuotaWindow<S, X, C, St, O> {
    fn clone(&self) -> Self {
        QuotaWindow {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
            _output: PhantomData,
        }
    }
}

impl<S: fmt::Debug, X, C, St: fmt::Debug, O> fmt::Debug for QuotaWindow<S, X, C, St, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("QuotaWindow");
        d.field("inner", &self.inner);
        self.config.fmt_fields(d)
    }
}

impl<S, X, C, St, ReqBody, ResBody> Service<Request<ReqBody>> for QuotaWindow<S, X, C, St, Throw>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    X: KeyExtractor<Request<ReqBody>>,
    C: Classify<Request<ReqBody>>,
    St: QuotaStore,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<ReqBody>, St, Throw>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        self.start(request)
    }
}

impl<S, X, C, St, ReqBody, ResBody> Service<Request<ReqBody>> for QuotaWindow<S, X, C, St, Respond>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    X: KeyExtractor<Request<ReqBody>>,
    C: Classify<Request<ReqBody>>,
    St: QuotaStore,
{
    type Response = Response<ResponseBody<ResBody, ()>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqBody>, St, Respond>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        self.start(request)
    }
}

impl<S, X, C, St, O> QuotaWindow<S, X, C, St, O> {
    /// `call`, for either output.
    fn start<ReqBody>(
        &mut self,
        mut request: Request<ReqBody>,
    ) -> ResponseFuture<S, Request<ReqBody>, St, O>
    where
        S: Service<Request<ReqBody>> + Clone,
        X: KeyExtractor<Request<ReqBody>>,
        C: Classify<Request<ReqBody>>,
        St: QuotaStore,
    {
        let config = &*self.config;
        let core = &config.core;
        let key = match config.extractor.extract(&request) {
            Ok(key) => key,
            Err(err) => {
                tracing::debug!(target: "tollgate::quota", decision = "no_key", error = %err);
                return ResponseFuture::rejected(Error::from_key_error(err), None, core);
            }
        };
        let Classified { class, cost } = config.classify.classify(&request);
        // The key's own quotas, if a resolver gives it some; else the layer's, which
        // the future finds in `core` (no clone of the set per request).
        let own_quotas = config
            .per_key
            .as_ref()
            .and_then(|resolve| resolve(&key, class));
        let quotas = own_quotas.as_ref().unwrap_or(&core.quotas);
        let key = match state_key(key, class) {
            Ok(key) => key,
            Err(err) => return ResponseFuture::rejected(err, None, core),
        };
        // Built in one go (the builder's defaults, then overwritten, cost stores).
        let ask = match config.policy {
            WaitPolicy::Queue { .. } => QuotaAsk {
                quotas,
                cost,
                policy: config.policy,
                max_wait: config.max_wait,
                spacing: config.spacing.unwrap_or_else(|| quotas.release_spacing()),
                report: core.report,
            },
            WaitPolicy::Reject => QuotaAsk::new(quotas, cost).report(core.report),
        };
        match core.store.admit(&key, &ask) {
            Admission::Ready(grant) => {
                tracing::trace!(target: "tollgate::quota", key = %key.id(), class, cost, decision = "admitted");
                let report = core.report.then(|| {
                    let decision =
                        QuotaDecision::new(key.id(), class, quotas.clone(), grant.clone());
                    request.extensions_mut().insert(decision);
                    Box::new(grant.clone())
                });
                let refund = Refund::new(key, &grant);
                ResponseFuture::calling(self.inner.call(request), refund, report, own_quotas, core)
            }
            Admission::Wait(acquire) => {
                tracing::debug!(target: "tollgate::quota", key = %key.id(), class, cost, decision = "wait");
                let clone = self.inner.clone();
                let service = mem::replace(&mut self.inner, clone);
                let now = Instant::now();
                let deadline = now
                    .checked_add(config.max_wait)
                    .unwrap_or_else(|| now + crate::concurrency::FAR_FUTURE);
                let waiting = Waiting::new(acquire, deadline, service, request, key, class);
                ResponseFuture::waiting(waiting, own_quotas, core)
            }
            Admission::Rejected(err) => {
                tracing::debug!(target: "tollgate::quota", key = %key.id(), class, cost, decision = "rejected", kind = ?err.kind(), retry_after = ?err.retry_after());
                ResponseFuture::rejected(err, own_quotas, core)
            }
        }
    }
}
