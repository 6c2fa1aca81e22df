use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tower_layer::Layer;

use super::{ObeyThrottles, QuotaWindow};
use crate::key::Key;
use crate::quota::QuotaError;
use crate::reject::{Respond, Throw};
use crate::store::{MemoryStore, QuotaSet, WaitPolicy};

pub(super) type Resolver = Arc<dyn Fn(&Key, &'static str) -> Option<QuotaSet> + Send + Sync>;

/// Applies [`QuotaWindow`] to a service: at most N per window per key, for every quota
/// of a [`QuotaSet`] at once.
///
/// The layer is its own builder. Defaults: wait mode (`max_wait` 30 s, `max_queue`
/// 1024 per key, releases spaced by the set's
/// [`release_spacing`](QuotaSet::release_spacing)), one class (`()`: cost from the
/// [`Cost`](super::Cost) extension or 1), no safety margin, no headers, rejections as
/// errors ([`Throw`]), state in a new [`MemoryStore`]. [`respond`](Self::respond)
/// switches to server defaults: reject mode, `RateLimit` headers on every response,
/// rejections as `429` responses.
///
/// Clones of the layer, and every service it makes, share one store, so they share the
/// limits. See the [module docs](super) for an example.
#[must_use]
pub struct QuotaWindowLayer<X, C = (), St = MemoryStore, O = Throw> {
    pub(super) config: Config<X, C, St>,
    _output: PhantomData<fn() -> O>,
}

pub(super) struct Config<X, C, St> {
    pub(super) extractor: X,
    pub(super) classify: C,
    pub(super) store: St,
    pub(super) quotas: QuotaSet,
    pub(super) per_key: Option<Resolver>,
    pub(super) policy: WaitPolicy,
    pub(super) max_wait: Duration,
    pub(super) spacing: Option<Duration>,
    pub(super) report: bool,
    pub(super) x_ratelimit: bool,
    pub(super) obey: ObeyThrottles,
    pub(super) status: StatusCode,
}

/// A service's configuration, as [`Layer::layer`] builds it from the layer's.
pub(super) struct Built<X, C, St> {
    pub(super) extractor: X,
    pub(super) classify: C,
    pub(super) per_key: Option<Resolver>,
    pub(super) policy: WaitPolicy,
    pub(super) max_wait: Duration,
    pub(super) spacing: Option<Duration>,
    pub(super) core: Arc<Core<St>>,
}

/// What a service's response futures need after the call: one reference count per
/// request for all of it, instead of one for the store and one for the quota set.
pub(super) struct Core<St> {
    pub(super) store: St,
    pub(super) quotas: QuotaSet,
    pub(super) report: bool,
    pub(super) x_ratelimit: bool,
    pub(super) obey: ObeyThrottles,
    pub(super) status: StatusCode,
}

impl<X: Clone, C: Clone, St: Clone> Config<X, C, St> {
    fn build(&self) -> Built<X, C, St> {
        Built {
            extractor: self.extractor.clone(),
            classify: self.classify.clone(),
            per_key: self.per_key.clone(),
            policy: self.policy,
            max_wait: self.max_wait,
            spacing: self.spacing,
            core: Arc::new(Core {
                store: self.store.clone(),
                quotas: self.quotas.clone(),
                report: self.report,
                x_ratelimit: self.x_ratelimit,
                obey: self.obey,
                status: self.status,
            }),
        }
    }
}

impl<X: Clone, C: Clone, St: Clone> Clone for Config<X, C, St> {
    fn clone(&self) -> Self {
        Config {
            extractor: self.extractor.clone(),
            classify: self.classify.clone(),
            store: self.store.clone(),
            quotas: self.quotas.clone(),
            per_key: self.per_key.clone(),
            policy: self.policy,
            max_wait: self.max_wait,
            spacing: self.spacing,
            report: self.report,
            x_ratelimit: self.x_ratelimit,
            obey: self.obey,
            status: self.status,
        }
    }
}

impl<X> QuotaWindowLayer<X> {
    /// At most what `quotas` allow, for each key that `extractor` finds. `quotas` is a
    /// [`Quota`](super::Quota) or a [`QuotaSet`] (several windows at once).
    pub fn new(quotas: impl Into<QuotaSet>, extractor: X) -> Self {
        QuotaWindowLayer {
            config: Config {
                extractor,
                classify: (),
                store: MemoryStore::new(),
                quotas: quotas.into(),
                per_key: None,
                policy: WaitPolicy::DEFAULT,
                max_wait: Duration::from_secs(30),
                spacing: None,
                report: false,
                x_ratelimit: false,
                obey: ObeyThrottles::Key,
                status: StatusCode::TOO_MANY_REQUESTS,
            },
            _output: PhantomData,
        }
    }
}

impl<X, C, St, O> QuotaWindowLayer<X, C, St, O> {
    /// Rebuilds the layer with another classifier, store or output.
    fn map<C2, St2, O2>(
        self,
        classify: impl FnOnce(C) -> C2,
        store: impl FnOnce(St) -> St2,
    ) -> QuotaWindowLayer<X, C2, St2, O2> {
        let c = self.config;
        QuotaWindowLayer {
            config: Config {
                extractor: c.extractor,
                classify: classify(c.classify),
                store: store(c.store),
                quotas: c.quotas,
                per_key: c.per_key,
                policy: c.policy,
                max_wait: c.max_wait,
                spacing: c.spacing,
                report: c.report,
                x_ratelimit: c.x_ratelimit,
                obey: c.obey,
                status: c.status,
            },
            _output: PhantomData,
        }
    }

    /// Keeps the state in `store` instead of a new [`MemoryStore`]. Layers given the
    /// same store (or clones of it) share their limits.
    pub fn store<St2>(self, store: St2) -> QuotaWindowLayer<X, C, St2, O> {
        self.map(|c| c, |_| store)
    }

    /// Classifies requests ([`Classify`](super::Classify)): the class selects the
    /// quotas through [`quotas_for`](Self::quotas_for) and keeps separate state per
    /// class of a key; the cost is how many units the request takes. See
    /// [`ReadWrite`](super::ReadWrite).
    pub fn classify<C2>(self, classify: C2) -> QuotaWindowLayer<X, C2, St, O> {
        self.map(|_| classify, |s| s)
    }

    /// Decides the quotas per key and class; `None` means the layer's own quotas.
    ///
    /// Runs on every request: return clones of sets built once (cloning a [`QuotaSet`]
    /// is one reference count). The layer's [`safety_margin`](Self::safety_margin)
    /// does not apply to them: build them with [`QuotaSet::with_margin`].
    pub fn quotas_for<F>(mut self, resolver: F) -> Self
    where
        F: Fn(&Key, &'static str) -> Option<QuotaSet> + Send + Sync + 'static,
    {
        self.config.per_key = Some(Arc::new(resolver));
        self
    }

    /// Widens every window of the layer's quotas by `margin`, for the latency between
    /// our admission and the server's count; see [`Quota::with_margin`](super::Quota::with_margin).
    pub fn safety_margin(mut self, margin: Duration) -> Result<Self, QuotaError> {
        self.config.quotas = self.config.quotas.with_margin(margin)?;
        Ok(self)
    }

    /// Reject mode: a request that does not fit fails at once with
    /// [`ErrorKind::QuotaExceeded`](crate::ErrorKind::QuotaExceeded) (or `Throttled`
    /// during a cooldown) carrying the exact time until it would fit.
    pub fn reject(mut self) -> Self {
        self.config.policy = WaitPolicy::Reject;
        self
    }

    /// Wait mode with at most `max_queue` requests waiting per key (and class).
    pub fn max_queue(mut self, max_queue: usize) -> Self {
        self.config.policy = WaitPolicy::Queue { max_queue };
        self
    }

    /// Wait mode, waiting at most `max_wait`. A request whose wait is known to be
    /// longer fails at once with [`ErrorKind::WaitExceeded`](crate::ErrorKind::WaitExceeded)
    /// and the time it would have had to wait; one that runs out of time in the queue
    /// fails then.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.policy = self.config.policy.waiting();
        self.config.max_wait = max_wait;
        self
    }

    /// Wait mode: the least time between two releases from a key's queue, so that a
    /// window freeing up does not release a flood. Default: the quota set's
    /// [`release_spacing`](QuotaSet::release_spacing); `Duration::ZERO` disables it.
    pub fn release_spacing(mut self, spacing: Duration) -> Self {
        self.config.spacing = Some(spacing);
        self
    }

    /// Adds `RateLimit-Policy` and `RateLimit` (draft-10) to every response, and a
    /// [`QuotaDecision`](super::QuotaDecision) to every admitted request's extensions.
    pub fn headers(mut self, on: bool) -> Self {
        self.config.report = on;
        self
    }

    /// Also adds the de-facto `X-RateLimit-Limit/Remaining/Reset` trio (reset in delta
    /// seconds), describing the most constrained quota.
    pub fn x_ratelimit_headers(mut self, on: bool) -> Self {
        self.config.x_ratelimit = on;
        if on {
            self.config.report = true;
        }
        self
    }

    /// Which server throttle signals this layer obeys; see [`ObeyThrottles`]. With
    /// several `QuotaWindow` layers stacked (per chat inside, per bot outside), the
    /// outer ones usually want [`ObeyThrottles::GlobalOnly`]: a per-chat 429 must not
    /// pause the whole bot.
    pub fn obey_throttles(mut self, obey: ObeyThrottles) -> Self {
        self.config.obey = obey;
        self
    }

    /// The status of rejection responses for a used-up quota (with
    /// [`respond`](Self::respond)): `429 Too Many Requests` by default.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.config.status = status;
        self
    }

    /// Server side: reject mode, `RateLimit` headers, and rejections as `429` responses
    /// with `Retry-After` and `RateLimit` instead of errors, so axum's `Router::layer`
    /// takes the layer as it is. Call [`max_wait`](Self::max_wait) afterwards to queue
    /// instead.
    pub fn respond(mut self) -> QuotaWindowLayer<X, C, St, Respond> {
        self.config.policy = WaitPolicy::Reject;
        self.config.report = true;
        self.map(|c| c, |s| s)
    }

    /// Rejections become errors (the default). See [`Throw`].
    pub fn throw(self) -> QuotaWindowLayer<X, C, St, Throw> {
        self.map(|c| c, |s| s)
    }

    /// The store holding this layer's state.
    pub fn get_store(&self) -> &St {
        &self.config.store
    }

    /// The layer's own quotas (what applies when no resolver answers).
    pub fn quotas(&self) -> &QuotaSet {
        &self.config.quotas
    }
}

impl<X: Clone, C: Clone, St: Clone, O> Clone for QuotaWindowLayer<X, C, St, O> {
    fn clone(&self) -> Self {
        QuotaWindowLayer {
            config: self.config.clone(),
            _output: PhantomData,
        }
    }
}

impl<S, X: Clone, C: Clone, St: Clone, O> Layer<S> for QuotaWindowLayer<X, C, St, O> {
    type Service = QuotaWindow<S, X, C, St, O>;

    fn layer(&self, inner: S) -> Self::Service {
        QuotaWindow::from_config(inner, Arc::new(self.config.build()))
    }
}

impl<X, C, St: fmt::Debug, O> fmt::Debug for QuotaWindowLayer<X, C, St, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt_fields(f.debug_struct("QuotaWindowLayer"))
    }
}

impl<X, C, St: fmt::Debug> Config<X, C, St> {
    pub(super) fn fmt_fields(&self, mut d: fmt::DebugStruct<'_, '_>) -> fmt::Result {
        d.field("quotas", &self.quotas)
            .field("per_key", &self.per_key.is_some())
            .field("policy", &self.policy)
            .field("max_wait", &self.max_wait)
            .field("headers", &self.report)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<X, C, St: fmt::Debug> Built<X, C, St> {
    pub(super) fn fmt_fields(&self, mut d: fmt::DebugStruct<'_, '_>) -> fmt::Result {
        d.field("quotas", &self.core.quotas)
            .field("per_key", &self.per_key.is_some())
            .field("policy", &self.policy)
            .field("max_wait", &self.max_wait)
            .field("headers", &self.core.report)
            .field("store", &self.core.store)
            .finish_non_exhaustive()
    }
}
