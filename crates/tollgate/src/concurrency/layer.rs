use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tower_layer::Layer;

use super::{ConcurrencyPerKey, Release};
use crate::key::Key;
use crate::reject::{Respond, Throw};
use crate::store::{MemoryStore, WaitPolicy};

/// Applies [`ConcurrencyPerKey`] to a service: at most `max` requests in flight per key.
///
/// The layer is its own builder. Defaults: wait mode with `max_wait` 30 s and
/// `max_queue` 1024 per key, slots released when the response body ends, rejections
/// as errors ([`Throw`]), rejected requests told to retry after 1 s, state in a new
/// [`MemoryStore`].
///
/// Clones of the layer, and every service it makes, share one store, so they share the
/// limits. See the [module docs](super) for an example.
#[must_use]
pub struct ConcurrencyPerKeyLayer<X, St = MemoryStore, O = Throw> {
    pub(super) config: Config<X, St>,
    _output: PhantomData<fn() -> O>,
}

pub(super) type PerKey = Arc<dyn Fn(&Key) -> u32 + Send + Sync>;

pub(super) struct Config<X, St> {
    pub(super) extractor: X,
    pub(super) store: St,
    pub(super) max: u32,
    pub(super) per_key: Option<PerKey>,
    pub(super) policy: WaitPolicy,
    pub(super) max_wait: Duration,
    pub(super) release: Release,
    pub(super) retry_after: Duration,
    pub(super) status: StatusCode,
}

impl<X: Clone, St: Clone> Clone for Config<X, St> {
    fn clone(&self) -> Self {
        Config {
            extractor: self.extractor.clone(),
            store: self.store.clone(),
            max: self.max,
            per_key: self.per_key.clone(),
            policy: self.policy,
            max_wait: self.max_wait,
            release: self.release,
            retry_after: self.retry_after,
            status: self.status,
        }
    }
}

impl<X> ConcurrencyPerKeyLayer<X> {
    /// At most `max` requests in flight for each key that `extractor` finds.
    ///
    /// A `max` of 0 refuses every request.
    pub fn new(max: u32, extractor: X) -> Self {
        ConcurrencyPerKeyLayer {
            config: Config {
                extractor,
                store: MemoryStore::new(),
                max,
                per_key: None,
                policy: WaitPolicy::DEFAULT,
                max_wait: Duration::from_secs(30),
                release: Release::BodyEnd,
                retry_after: Duration::from_secs(1),
                status: StatusCode::TOO_MANY_REQUESTS,
            },
            _output: PhantomData,
        }
    }
}

impl<X, St, O> ConcurrencyPerKeyLayer<X, St, O> {
    fn with_output<O2>(self) -> ConcurrencyPerKeyLayer<X, St, O2> {
        ConcurrencyPerKeyLayer {
            config: self.config,
            _output: PhantomData,
        }
    }

    /// Keeps the state in `store` instead of a new [`MemoryStore`]. Layers given the
    /// same store (or clones of it) share their limits.
    pub fn store<St2>(self, store: St2) -> ConcurrencyPerKeyLayer<X, St2, O> {
        let c = self.config;
        ConcurrencyPerKeyLayer {
            config: Config {
                extractor: c.extractor,
                store,
                max: c.max,
                per_key: c.per_key,
                policy: c.policy,
                max_wait: c.max_wait,
                release: c.release,
                retry_after: c.retry_after,
                status: c.status,
            },
            _output: PhantomData,
        }
    }

    /// The store holding this layer's state, e.g. for
    /// [`MemoryStore::concurrency_snapshot`].
    pub fn get_store(&self) -> &St {
        &self.config.store
    }

    /// Decides the limit per key, instead of `max` for every key.
    ///
    /// The resolver sees the key, not the request: a key has one limit, whatever
    /// request asks. It runs on every request, so keep it cheap (a map lookup).
    pub fn limit_per_key<F>(mut self, resolver: F) -> Self
    where
        F: Fn(&Key) -> u32 + Send + Sync + 'static,
    {
        self.config.per_key = Some(Arc::new(resolver));
        self
    }

    /// Reject mode: a request that finds its key full fails at once with
    /// [`ErrorKind::ConcurrencyLimited`](crate::ErrorKind::ConcurrencyLimited)
    /// (on a server with [`respond`](Self::respond): `429`).
    pub fn reject(mut self) -> Self {
        self.config.policy = WaitPolicy::Reject;
        self
    }

    /// Wait mode (the default) with at most `max_queue` requests waiting per key;
    /// one more fails with [`ErrorKind::QueueFull`](crate::ErrorKind::QueueFull).
    pub fn max_queue(mut self, max_queue: usize) -> Self {
        self.config.policy = WaitPolicy::Queue { max_queue };
        self
    }

    /// Wait mode (the default), waiting at most `max_wait` for a slot; then the request
    /// fails with [`ErrorKind::WaitExceeded`](crate::ErrorKind::WaitExceeded).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.policy = self.config.policy.waiting();
        self.config.max_wait = max_wait;
        self
    }

    /// When a request gives its slot back; see [`Release`].
    pub fn release(mut self, release: Release) -> Self {
        self.config.release = release;
        self
    }

    /// The retry estimate given with a rejection (`Retry-After` on a server): how long
    /// until a slot is likely free. Default 1 s.
    pub fn retry_after(mut self, estimate: Duration) -> Self {
        self.config.retry_after = estimate;
        self
    }

    /// Server side: rejections become responses (`429` with `Retry-After`) instead of
    /// errors, so axum's `Router::layer` takes the layer as it is. See [`Respond`].
    pub fn respond(self) -> ConcurrencyPerKeyLayer<X, St, Respond> {
        self.with_output()
    }

    /// Rejections become errors (the default). See [`Throw`].
    pub fn throw(self) -> ConcurrencyPerKeyLayer<X, St, Throw> {
        self.with_output()
    }

    /// The status of rejection responses for a full key (with [`respond`](Self::respond)):
    /// `429 Too Many Requests` by default, `503 Service Unavailable` is the usual
    /// alternative.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.config.status = status;
        self
    }
}

impl<X: Clone, St: Clone, O> Clone for ConcurrencyPerKeyLayer<X, St, O> {
    fn clone(&self) -> Self {
        ConcurrencyPerKeyLayer {
            config: self.config.clone(),
            _output: PhantomData,
        }
    }
}

impl<S, X: Clone, St: Clone, O> Layer<S> for ConcurrencyPerKeyLayer<X, St, O> {
    type Service = ConcurrencyPerKey<S, X, St, O>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyPerKey::from_config(inner, Arc::new(self.config.clone()))
    }
}

impl<X, St: fmt::Debug, O> fmt::Debug for ConcurrencyPerKeyLayer<X, St, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config
            .fmt_fields(f.debug_struct("ConcurrencyPerKeyLayer"))
    }
}

impl<X, St: fmt::Debug> Config<X, St> {
    pub(super) fn fmt_fields(&self, mut d: fmt::DebugStruct<'_, '_>) -> fmt::Result {
        d.field("max", &self.max)
            .field("per_key", &self.per_key.is_some())
            .field("policy", &self.policy)
            .field("max_wait", &self.max_wait)
            .field("release", &self.release)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}
