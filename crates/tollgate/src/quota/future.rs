//! The response future of [`QuotaWindow`](super::QuotaWindow).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::headers;
use super::layer::Core;
use super::{ObeyThrottles, QuotaDecision};
use crate::body::ResponseBody;
use crate::classify::{Throttle, ThrottleScope};
use crate::key::Key;
use crate::reject::{BoxError, Respond, Throw, rejection_response};
use crate::store::{QuotaGrant, QuotaSet, QuotaStore, QuotaUsage};
use crate::{Error, ErrorKind};

/// What to give back if the request turns out never to have been sent (to the store
/// of the layer's [`Core`], which the future holds).
pub(super) struct Refund {
    key: Key,
    admitted_at: u64,
    cost: u32,
}

impl Refund {
    pub(super) fn new(key: Key, grant: &QuotaGrant) -> Self {
        Refund {
            key,
            admitted_at: grant.admitted_at(),
            cost: grant.cost(),
        }
    }

    /// Obeys a server's throttle signal found on the response: no request of this key
    /// (or, for a global signal, of any key) is admitted until the server's hint.
    fn obey<St: QuotaStore>(&self, store: &St, throttle: &Throttle, obey: ObeyThrottles) {
        let global = throttle.scope() == ThrottleScope::Global;
        match obey {
            ObeyThrottles::Ignore => return,
            ObeyThrottles::GlobalOnly if !global => return,
            _ => {}
        }
        let Some(after) = throttle.resume_after() else {
            return; // no time given: the retry layer's own backoff applies
        };
        let until = Instant::now() + after + cooldown_jitter(after);
        tracing::debug!(target: "tollgate::quota", key = %self.key.id(), decision = "cooldown", scope = ?throttle.scope(), source = ?throttle.source(), wait = ?after);
        match throttle.scope() {
            ThrottleScope::Global => store.cooldown_all(until),
            // A signal of unknown scope came on this key's response: this key waits
            // (pausing every key on a guess would stall unrelated work).
            _ => store.cooldown(&self.key, until),
        }
    }

    fn give_back<St: QuotaStore>(self, store: &St, quotas: &QuotaSet) {
        tracing::debug!(target: "tollgate::quota", key = %self.key.id(), decision = "refund", cost = self.cost);
        let grant = QuotaGrant::new(self.admitted_at, self.cost);
        store.refund(&self.key, quotas, &grant);
    }
}

/// The upward jitter added to a cooldown: uniform in `[0, min(hint / 10, 1 s)]`, so that
/// the workers of a fleet that saw the same `429` (each with its own store) do not all
/// come back in the same millisecond. Never negative: nothing is released before the
/// server's hint.
pub(super) fn cooldown_jitter(hint: Duration) -> Duration {
    (hint / 10)
        .min(MAX_COOLDOWN_JITTER)
        .mul_f64(fastrand::f64())
}

/// The most upward jitter a cooldown gets.
pub(super) const MAX_COOLDOWN_JITTER: Duration = Duration::from_secs(1);

pin_project! {
    /// A request waiting in a key's quota queue; boxed, as the slow path.
    pub(super) struct Waiting<S, R, A> {
        #[pin]
        acquire: A,
        #[pin]
        deadline: Sleep,
        service: Option<S>,
        request: Option<R>,
        key: Key,
        class: &'static str,
    }
}

impl<S, R, A> Waiting<S, R, A> {
    pub(super) fn new(
        acquire: A,
        deadline: Instant,
        service: S,
        request: R,
        key: Key,
        class: &'static str,
    ) -> Self {
        Waiting {
            acquire,
            deadline: tokio::time::sleep_until(deadline),
            service: Some(service),
            request: Some(request),
            key,
            class,
        }
    }
}

pin_project! {
    /// Response future of [`QuotaWindow`](super::QuotaWindow): waits for the key's
    /// quota if needed, then drives the inner service's future, giving the quota back if
    /// a layer further in rejected the request before it was sent.
    ///
    /// Dropping it while it waits gives its place up and consumes nothing.
    pub struct ResponseFuture<S, R, St, O>
    where
        S: Service<R>,
        St: QuotaStore,
    {
        #[pin]
        state: State<S, R, S::Future, St::Acquire>,
        // The store, the layer's quotas and its settings, behind one reference count.
        core: Arc<Core<St>>,
        // The key's own quotas, when a resolver gave it some; else the layer's.
        quotas: Option<QuotaSet>,
        report: Option<Box<QuotaGrant>>,
        _output: PhantomData<fn() -> O>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, R, F, A> {
        Waiting {
            wait: Pin<Box<Waiting<S, R, A>>>,
        },
        Calling {
            #[pin]
            future: F,
            refund: Option<Refund>,
        },
        Rejected {
            error: Option<Error>,
        },
    }
}

impl<S, R, St, O> ResponseFuture<S, R, St, O>
where
    S: Service<R>,
    St: QuotaStore,
{
    fn with_state(
        state: State<S, R, S::Future, St::Acquire>,
        core: &Arc<Core<St>>,
        quotas: Option<QuotaSet>,
        report: Option<Box<QuotaGrant>>,
    ) -> Self {
        ResponseFuture {
            state,
            core: Arc::clone(core),
            quotas,
            report,
            _output: PhantomData,
        }
    }

    /// `own_quotas`: the key's own set, when a resolver gave one (else the layer's
    /// applies).
    pub(super) fn calling(
        future: S::Future,
        refund: Refund,
        report: Option<Box<QuotaGrant>>,
        own_quotas: Option<QuotaSet>,
        core: &Arc<Core<St>>,
    ) -> Self {
        let state = State::Calling {
            future,
            refund: Some(refund),
        };
        Self::with_state(state, core, own_quotas, report)
    }

    pub(super) fn waiting(
        wait: Waiting<S, R, St::Acquire>,
        own_quotas: Option<QuotaSet>,
        core: &Arc<Core<St>>,
    ) -> Self {
        let state = State::Waiting {
            wait: Box::pin(wait),
        };
        Self::with_state(state, core, own_quotas, None)
    }

    /// A refusal's `RateLimit` headers name the quota that refused, which only a
    /// store's refusal carries: a request refused before (no key) gets none.
    pub(super) fn rejected(
        error: Error,
        own_quotas: Option<QuotaSet>,
        core: &Arc<Core<St>>,
    ) -> Self {
        let state = State::Rejected { error: Some(error) };
        Self::with_state(state, core, own_quotas, None)
    }
}

impl<S, ReqBody, St, O, ResBody> ResponseFuture<S, Request<ReqBody>, St, O>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: QuotaStore,
{
    /// The general path: waiting, or rejected. `Ready(Some(error))` when the request is
    /// refused; `Ready(None)` when it is (or has just been) admitted and called: the
    /// state is `Calling`, which each output's `poll` drives itself (the hot path,
    /// building its output in place, with no intermediate copy of the response).
    #[inline(never)]
    fn poll_slow(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Error>> {
        let mut this = self.project();
        match this.state.as_mut().project() {
            StateProj::Waiting { wait } => {
                let w = wait.as_mut().project();
                match w.acquire.poll(cx) {
                    Poll::Ready(Ok(grant)) => {
                        let mut request = w.request.take().expect("request taken once");
                        if this.core.report {
                            let quotas = this.quotas.as_ref().unwrap_or(&this.core.quotas);
                            let decision = QuotaDecision::new(
                                w.key.id(),
                                w.class,
                                quotas.clone(),
                                grant.clone(),
                            );
                            request.extensions_mut().insert(decision);
                            *this.report = Some(Box::new(grant.clone()));
                        }
                        let refund = Refund::new(w.key.clone(), &grant);
                        let mut service = w.service.take().expect("service taken once");
                        let future = service.call(request);
                        this.state.set(State::Calling {
                            future,
                            refund: Some(refund),
                        });
                        Poll::Ready(None)
                    }
                    Poll::Ready(Err(err)) => {
                        this.state.set(State::Rejected { error: None });
                        Poll::Ready(Some(err))
                    }
                    Poll::Pending => {
                        ready!(w.deadline.poll(cx));
                        tracing::debug!(target: "tollgate::quota", key = %w.key.id(), decision = "wait_exceeded");
                        let err = Error::new(ErrorKind::WaitExceeded).with_key(w.key.id());
                        // Dropping the wait gives its place back; nothing was taken.
                        this.state.set(State::Rejected { error: None });
                        Poll::Ready(Some(err))
                    }
                }
            }
            StateProj::Calling { .. } => Poll::Ready(None),
            StateProj::Rejected { error } => {
                let error = error
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Some(error))
            }
        }
    }

    /// Gives the quota back when a layer further in answered with its own rejection,
    /// and adds the `RateLimit` headers of an admitted request.
    ///
    /// The refund is left in place unless used (moving it out on every response costs
    /// a copy and a drop); a finished future is not polled again.
    #[inline]
    fn finish_response(
        core: &Core<St>,
        own_quotas: Option<&QuotaSet>,
        report: Option<&QuotaGrant>,
        refund: &mut Option<Refund>,
        response: &mut Response<ResBody>,
    ) {
        // A response without extensions carries neither a throttle signal nor a local
        // rejection: one test instead of two map lookups.
        if report.is_some() || !response.extensions().is_empty() {
            Self::finish_slow(core, own_quotas, report, refund, response);
        }
    }

    #[inline(never)]
    fn finish_slow(
        core: &Core<St>,
        own_quotas: Option<&QuotaSet>,
        report: Option<&QuotaGrant>,
        refund: &mut Option<Refund>,
        response: &mut Response<ResBody>,
    ) {
        if !response.extensions().is_empty() {
            Self::read_extensions(core, own_quotas, refund.take(), response);
        }
        if let Some(grant) = report {
            let quotas = own_quotas.unwrap_or(&core.quotas);
            Self::add_headers(quotas, grant, core.x_ratelimit, response);
        }
    }

    /// Obeys a throttle signal on the response, and refunds a local rejection.
    #[inline(never)]
    fn read_extensions(
        core: &Core<St>,
        own_quotas: Option<&QuotaSet>,
        refund: Option<Refund>,
        response: &Response<ResBody>,
    ) {
        if let (Some(throttle), Some(refund)) = (response.extensions().get::<Throttle>(), &refund) {
            refund.obey(&core.store, throttle, core.obey);
        }
        let local = response
            .extensions()
            .get::<Error>()
            .is_some_and(|e| e.kind().never_sent());
        if let (true, Some(refund)) = (local, refund) {
            refund.give_back(&core.store, own_quotas.unwrap_or(&core.quotas));
        }
    }

    /// The `RateLimit` headers of an admitted request.
    #[inline(never)]
    fn add_headers(
        quotas: &QuotaSet,
        grant: &QuotaGrant,
        x_ratelimit: bool,
        response: &mut Response<ResBody>,
    ) {
        let mut usage = [(0, QuotaUsage::default()); QuotaSet::MAX];
        let reported = grant.usage().len();
        for (index, (slot, used)) in usage.iter_mut().zip(grant.usage()).enumerate() {
            *slot = (index, *used);
        }
        headers::insert(
            response.headers_mut(),
            quotas,
            &usage[..reported],
            x_ratelimit,
        );
    }
}

/// Adds the `RateLimit` headers of a refusal by one quota.
fn refusal_headers<B>(
    response: &mut Response<B>,
    quotas: &QuotaSet,
    err: &Error,
    x_ratelimit: bool,
) {
    let (Some(index), Some(after)) = (err.quota_index(), err.retry_after()) else {
        return;
    };
    let usage = [(
        index,
        QuotaUsage {
            remaining: 0,
            reset_after: after,
        },
    )];
    headers::insert(response.headers_mut(), quotas, &usage, x_ratelimit);
}

/// An error of the inner service, in reject-as-error mode: a local rejection further in
/// (the request never left) gives its quota back.
#[inline(never)]
fn inner_error<St: QuotaStore>(
    err: BoxError,
    refund: Option<Refund>,
    core: &Core<St>,
    own_quotas: Option<&QuotaSet>,
) -> BoxError {
    let local = err
        .downcast_ref::<Error>()
        .is_some_and(|e| e.kind().never_sent());
    if let (true, Some(refund)) = (local, refund) {
        refund.give_back(&core.store, own_quotas.unwrap_or(&core.quotas));
    }
    err
}

impl<S, ReqBody, St, ResBody> Future for ResponseFuture<S, Request<ReqBody>, St, Throw>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    St: QuotaStore,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            if let StateProj::Calling { future, refund } = this.state.project() {
                return match future.poll(cx) {
                    Poll::Ready(Ok(mut response)) => {
                        Self::finish_response(
                            this.core,
                            this.quotas.as_ref(),
                            this.report.as_deref(),
                            refund,
                            &mut response,
                        );
                        Poll::Ready(Ok(response))
                    }
                    Poll::Ready(Err(err)) => Poll::Ready(Err(inner_error(
                        err.into(),
                        refund.take(),
                        this.core,
                        this.quotas.as_ref(),
                    ))),
                    Poll::Pending => Poll::Pending,
                };
            }
            if let Some(err) = ready!(self.as_mut().poll_slow(cx)) {
                return Poll::Ready(Err(Box::new(err)));
            }
        }
    }
}

impl<S, ReqBody, St, ResBody> Future for ResponseFuture<S, Request<ReqBody>, St, Respond>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: QuotaStore,
{
    type Output = Result<Response<ResponseBody<ResBody, ()>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            if let StateProj::Calling { future, refund } = this.state.project() {
                let result = ready!(future.poll(cx));
                return Poll::Ready(result.map(|mut response| {
                    Self::finish_response(
                        this.core,
                        this.quotas.as_ref(),
                        this.report.as_deref(),
                        refund,
                        &mut response,
                    );
                    response.map(|body| ResponseBody::new(body, None))
                }));
            }
            if let Some(err) = ready!(self.as_mut().poll_slow(cx)) {
                let core = &self.core;
                let headers_for = err.clone();
                let mut response = rejection_response(err, core.status);
                if core.report {
                    refusal_headers(
                        &mut response,
                        self.quotas.as_ref().unwrap_or(&core.quotas),
                        &headers_for,
                        core.x_ratelimit,
                    );
                }
                return Poll::Ready(Ok(response));
            }
        }
    }
}

impl<S, R, St, O> fmt::Debug for ResponseFuture<S, R, St, O>
where
    S: Service<R>,
    St: QuotaStore,
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
