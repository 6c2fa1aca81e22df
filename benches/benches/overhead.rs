//! Per-request overhead of tollgate's layers, against a bare service and against the
//! anchors, in one run: `ConcurrencyPerKey` against tower's unkeyed `ConcurrencyLimit`
//! (group `concurrency`), `QuotaWindow` against `tower_governor` and governor's keyed
//! limiter (group `quota`).
//!
//! Every benchmark sends one request per iteration through a `service_fn` that answers
//! at once with an empty response: `ready().await`, `call(request).await`, then the
//! response is dropped (with its body, which is what frees a tollgate slot). Each
//! iteration builds its request from the next entry of a fixed rotation of pre-built
//! keys, the same way for every id of a group. The service is built once, outside the
//! measured loop, and the runtime is a current-thread tokio runtime built once, without
//! a timer: a layer that tried to wait would panic rather than sleep. Within a group,
//! the ids differ only in the layer.
//!
//! # Group `concurrency`
//!
//! The request is `http::Request::new(())` with a pre-built [`Key`] cloned into its
//! extensions; the response is an `http::Response<String>`.
//!
//! | id | service | keys in rotation |
//! |---|---|---|
//! | `bare` | the `service_fn` alone | 10,000 (the key is set, nobody reads it) |
//! | `tower_concurrency_limit` | `tower::limit::ConcurrencyLimit` (limit 1,000,000) | 10,000 (unread) |
//! | `per_key_1` | `ConcurrencyPerKeyLayer::new(1000, extractor)` | 1 |
//! | `per_key_10k` | the same | 10,000 |
//! | `per_key_1m` | the same | 1,000,000 |
//!
//! The extractor is a closure that clones the [`Key`] out of the request's extensions,
//! so the per-key ids pay for extraction (a type-map lookup and a 32-byte copy) as any
//! real extractor would; building the request (the extensions map and the boxed key: a
//! few small allocations) is paid by every id, the baselines included. No limit is ever
//! reached: nothing waits, nothing is rejected. The per-key layer runs with its defaults
//! (wait mode, slot released when the body ends), so each request takes a slot from the
//! `MemoryStore` and gives it back when the response is dropped. A key's slot stays in
//! the table while idle until an amortised sweep evicts it (sweeps run when a shard has
//! doubled), so with 10,000 or 1,000,000 keys in rotation the table holds about that
//! many entries and each request looks up a key last touched one rotation ago: the
//! number of keys measures cache behaviour, not just hashing.
//!
//! # Group `quota`
//!
//! The request is the `concurrency` group's (the [`Key`] in the extensions) plus the
//! same key, as decimal text, in an `x-key` header (a pre-built `HeaderValue` cloned
//! in: a reference-count increment). Every limiting id reads the key from the header,
//! as `tower_governor` must (its extractors see only the request): tollgate through
//! [`Header`], the two governor ids through the same hand-written extractor, which
//! clones the `HeaderValue` and uses it as the key. The extension is read by nobody; it
//! keeps `quota/bare` comparable to `concurrency/bare`. The response is an
//! `http::Response<axum::body::Body>` (`Body::empty()`, which does not allocate) for
//! every id: tower_governor's service requires `Response<B>: From<GovernorError>`,
//! which it implements only for axum's and tonic's bodies.
//!
//! | id | service | keys in rotation |
//! |---|---|---|
//! | `bare` | the `service_fn` alone | 10,000 (unread) |
//! | `tower_governor` | `tower_governor::GovernorLayer`, keyed by the header | 10,000 |
//! | `governor_keyed` | `governor::DefaultKeyedRateLimiter::check_key` in a minimal tower layer | 10,000 |
//! | `sliding_10k` | `QuotaWindowLayer::new(Quota::sliding(..), Header)` | 10,000 |
//! | `gcra_10k` | `QuotaWindowLayer::new(Quota::smooth(..).burst(..), Header)` | 10,000 |
//! | `multi_10k` | `QuotaWindowLayer::new(QuotaSet [sliding per minute, sliding per hour], Header)` | 10,000 |
//!
//! No request is ever refused and none waits: each key is hit once every 10,000
//! requests, a few thousand times over an id's run, and
//!
//! - `sliding_10k` allows 1,000,000 per hour per key, `multi_10k` 1,000,000 per minute
//!   and 10,000,000 per hour;
//! - the three GCRA ids share one quota: one unit per second per key after a burst of
//!   1,000,000 (governor's `Quota::with_period(1 s).allow_burst(1_000_000)`, what
//!   tower_governor's builder makes of `period(1 s).burst_size(1_000_000)`, and
//!   tollgate's `Quota::smooth(3600, 1 h).burst(1_000_000)`).
//!
//! The GCRA's emission interval is longer than the time a key takes to come back (a
//! few milliseconds), so every key stays in debt, hence in the store, for the whole
//! run, as with the sliding windows. With an interval shorter than that (say
//! `smooth(1_000_000, 1 h)`, 3.6 ms), each key would have replenished by its next
//! visit: tollgate, which evicts replenished keys in the sweeps of later inserts, would
//! drop and re-create its state on every visit, while governor keeps every key until
//! `retain_recent` is called. That measures eviction, not the check.
//!
//! A refusal would fail the run: tower_governor's error handler panics, governor's
//! layer and tollgate (wait mode, the default, with its queue never used) return
//! errors that the loop `expect`s away, and a tollgate wait would panic on the missing
//! timer. The QuotaWindow ids run with the layer's defaults otherwise (no headers, no
//! classes, a new `MemoryStore`). governor's keyed store grows to 10,000 entries and
//! stays there (nobody calls its `retain_recent`); tollgate's holds every key until its
//! window has replenished, which is longer than a run, so it holds 10,000 too.
//!
//! # Group `stack`
//!
//! The whole client stack of the crate docs, outermost first: `RetryAfterBackoff` →
//! `QuotaWindow` → `ConcurrencyPerKey` → `ThrottleClassifier` → the `service_fn`,
//! against that `service_fn` alone. The request is the `quota` group's (the [`Key`] in
//! the extensions and in the `x-key` header; its body, `()`, is `Clone`, hence a
//! `ReplayBody`, so `RetryAfterBackoff` keeps a copy of every request for a retry that
//! never comes) and the response the `quota` group's (`Body::empty()`, whose `Bytes`
//! data the classifier can read).
//!
//! | id | service | keys in rotation |
//! |---|---|---|
//! | `bare` | the `service_fn` alone | 10,000 (unread) |
//! | `full_10k` | `RetryAfterBackoffLayer::standard()` → `QuotaWindowLayer::new(Quota::sliding(..), Header)` → `ConcurrencyPerKeyLayer::new(1000, Header)` → `ThrottleClassifierLayer::standard()` → the `service_fn` | 10,000 |
//!
//! Both limiting layers read the key from the `x-key` header, as one client sharing an
//! extractor would. Nothing is throttled: every answer is a bare `200`, which the
//! classifier finds nothing in and the retry policy returns at once; the quota allows
//! 1,000,000 per hour per key (as `quota/sliding_10k`) and the concurrency limit is
//! 1000 per key (as the `concurrency` group), so nothing waits and nothing is refused.
//! Each layer runs with its preset or defaults otherwise (a new `MemoryStore` each, the
//! retry budget on). The response dropped in each iteration is the fully wrapped one,
//! so its drop frees the concurrency slot, as in the `concurrency` group.
//!
//! # Reading the results
//!
//! `bare` is each group's floor: request construction, the `service_fn` and the
//! response. The cost of a layer is its **added time**, `id − bare`, against its own
//! group's `bare`. The targets for tollgate are
//!
//! ```text
//! (per_key_10k − bare) ≤ 1.5 × (tower_concurrency_limit − bare)
//! (sliding_10k − bare) ≤ 1.0 × (tower_governor − bare)
//! (gcra_10k − bare)    ≤ 1.0 × (tower_governor − bare)
//! ```
//!
//! that is, a per-key limit costs at most half as much again as tower's single
//! semaphore, and a quota window no more than tower_governor's. `per_key_1` against
//! `per_key_1m` shows how much the key cardinality itself costs (hash-table and cache
//! behaviour); `governor_keyed` against `tower_governor` what tower_governor's
//! plumbing adds to governor's own check; `multi_10k` against `sliding_10k` the cost of
//! a second window.
//!
//! For `stack`, the figures reported are the **added time** of the whole stack,
//! `full_10k − bare`, and the **ratio** `full_10k / bare`: what a request through all
//! four layers costs, as a multiple of the floor. Both are per request, with nothing
//! throttled: the price of having the stack in place, not of what it does when limits
//! bite.
//!
//! Run: `cargo bench -p tollgate-benches --bench overhead` (one group:
//! `... -- quota`).

use std::cell::Cell;
use std::convert::Infallible;
use std::fmt::{self, Debug};
use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use governor::DefaultKeyedRateLimiter;
use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tollgate::key::{Header, Key, KeyExtractor};
use tollgate::quota::{Quota, QuotaSet, QuotaWindowLayer};
use tollgate::{ConcurrencyPerKeyLayer, RetryAfterBackoffLayer, ThrottleClassifierLayer};
use tower::limit::ConcurrencyLimit;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_governor::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;

/// The per-key limit: high enough that no request ever waits.
const PER_KEY_MAX: u32 = 1000;
/// tower's limit: high enough that no request ever waits.
const TOWER_MAX: usize = 1_000_000;

/// The header carrying the key in the `quota` group.
const KEY_HEADER: &str = "x-key";
const SECOND: Duration = Duration::from_secs(1);
/// The GCRA ids' emission interval per key: one per second...
const GCRA_PERIOD: Duration = SECOND;
/// ... after a burst of this many.
const GCRA_BURST: u32 = 1_000_000;

/// `n` distinct keys: decimal ids, stored inline as most real keys are.
fn keys(n: u64) -> Vec<Key> {
    (0..n).map(Key::from).collect()
}

/// The key the per-key layer limits on: the one the bench put in the extensions.
fn key_of(request: &Request<()>) -> Option<Key> {
    request.extensions().get::<Key>().cloned()
}

/// The `concurrency` group's request: the key in the extensions.
fn keyed_request(key: &Key) -> Request<()> {
    let mut request = Request::new(());
    request.extensions_mut().insert(key.clone());
    request
}

/// One entry of the `quota` group's rotation: a key, and the same key as a header value.
struct Tagged {
    key: Key,
    value: HeaderValue,
}

/// `n` distinct tagged keys, the header value being the key's decimal text.
fn tagged(name: &HeaderName, n: u64) -> Vec<Tagged> {
    (0..n)
        .map(|i| {
            let value = HeaderValue::from_str(&i.to_string()).expect("digits are a valid value");
            let tagged = Tagged {
                key: Key::from(i),
                value,
            };
            // The layers read the same key back from the header.
            let request = tagged_request(name, &tagged);
            let read = Header::from_name(name.clone()).extract(&request);
            assert_eq!(read.expect("a key in the header"), tagged.key);
            tagged
        })
        .collect()
}

/// The `quota` group's request: the key in the extensions and in the `x-key` header.
fn tagged_request(name: &HeaderName, tagged: &Tagged) -> Request<()> {
    let mut request = Request::new(());
    request.extensions_mut().insert(tagged.key.clone());
    request.headers_mut().insert(name, tagged.value.clone());
    request
}

/// Sends `iters` requests through `service`, one at a time, made by `make` from the
/// entries of `keys` in rotation from `*next`; returns the time taken.
async fn run<S, B, T, M>(
    service: &mut S,
    keys: &[T],
    make: &M,
    next: &mut usize,
    iters: u64,
) -> Duration
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: Debug,
    M: Fn(&T) -> Request<()>,
{
    let start = Instant::now();
    for _ in 0..iters {
        let request = make(&keys[*next]);
        *next += 1;
        if *next == keys.len() {
            *next = 0;
        }
        let ready = service.ready().await.expect("the service is always ready");
        let response = ready.call(request).await.expect("no request is refused");
        // Dropping the response (and its body) frees a tollgate slot: measured too.
        drop(black_box(response));
    }
    start.elapsed()
}

/// Benchmarks `service` as `id`: built once, then shared by every sample.
fn bench<S, B, T, M>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    id: &str,
    service: S,
    keys: &[T],
    make: &M,
) where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: Debug,
    M: Fn(&T) -> Request<()>,
{
    // The service and the rotation's position, taken out for each sample (not each
    // iteration) and put back after it.
    let state = Cell::new(Some((service, 0usize)));
    let state = &state;
    group.bench_function(id, |b| {
        b.to_async(runtime).iter_custom(|iters| async move {
            let (mut service, mut next) = state.take().expect("one sample at a time");
            let elapsed = run(&mut service, keys, make, &mut next, iters).await;
            state.set(Some((service, next)));
            elapsed
        });
    });
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
}

fn concurrency(c: &mut Criterion) {
    let runtime = runtime();
    let inner = service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let (keys_1, keys_10k, keys_1m) = (keys(1), keys(10_000), keys(1_000_000));
    let make = keyed_request;

    let mut group = c.benchmark_group("concurrency");
    bench(&mut group, &runtime, "bare", inner, &keys_10k, &make);
    bench(
        &mut group,
        &runtime,
        "tower_concurrency_limit",
        ConcurrencyLimit::new(inner, TOWER_MAX),
        &keys_10k,
        &make,
    );
    for (id, keys) in [
        ("per_key_1", &keys_1),
        ("per_key_10k", &keys_10k),
        ("per_key_1m", &keys_1m),
    ] {
        let service = ConcurrencyPerKeyLayer::new(PER_KEY_MAX, key_of).layer(inner);
        bench(&mut group, &runtime, id, service, keys, &make);
    }
    group.finish();
}

/// The key of the governor ids: the `x-key` header's value, cloned (a reference-count
/// increment), as a hand-written tower_governor extractor would take it.
#[derive(Clone)]
struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    fn value<B>(&self, request: &Request<B>) -> Option<HeaderValue> {
        request.headers().get(&self.name).cloned()
    }
}

impl tower_governor::key_extractor::KeyExtractor for HeaderKey {
    type Key = HeaderValue;

    fn extract<B>(&self, request: &Request<B>) -> Result<HeaderValue, GovernorError> {
        self.value(request).ok_or(GovernorError::UnableToExtractKey)
    }
}

/// A minimal keyed rate limit on governor: `check_key` in `call`, an error on refusal.
#[derive(Clone)]
struct GovernorKeyedLayer {
    limiter: Arc<DefaultKeyedRateLimiter<HeaderValue>>,
    key: HeaderKey,
}

impl<S> Layer<S> for GovernorKeyedLayer {
    type Service = GovernorKeyed<S>;

    fn layer(&self, inner: S) -> GovernorKeyed<S> {
        GovernorKeyed {
            inner,
            limiter: Arc::clone(&self.limiter),
            key: self.key.clone(),
        }
    }
}

#[derive(Clone)]
struct GovernorKeyed<S> {
    inner: S,
    limiter: Arc<DefaultKeyedRateLimiter<HeaderValue>>,
    key: HeaderKey,
}

/// governor refused the request (or it had no key).
#[derive(Debug)]
struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limit exceeded")
    }
}

impl std::error::Error for Refused {}

impl<S, B> Service<Request<B>> for GovernorKeyed<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Governed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.key.value(&request) {
            Some(key) if self.limiter.check_key(&key).is_ok() => Governed::Admitted {
                future: self.inner.call(request),
            },
            _ => Governed::Refused,
        }
    }
}

pin_project! {
    /// The inner service's future, or a refusal.
    #[project = GovernedProj]
    enum Governed<F> {
        Admitted { #[pin] future: F },
        Refused,
    }
}

impl<F, T, E> Future for Governed<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GovernedProj::Admitted { future } => future.poll(cx).map_err(Into::into),
            GovernedProj::Refused => Poll::Ready(Err(Refused.into())),
        }
    }
}

fn quota(c: &mut Criterion) {
    let runtime = runtime();
    let inner = service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let name = HeaderName::from_static(KEY_HEADER);
    let keys_10k = tagged(&name, 10_000);
    let make = |tagged: &Tagged| tagged_request(&name, tagged);
    let header_key = HeaderKey { name: name.clone() };
    let by_header = Header::from_name(name.clone());

    let governor_config = GovernorConfigBuilder::default()
        .key_extractor(header_key.clone())
        .period(GCRA_PERIOD)
        .burst_size(GCRA_BURST)
        .finish()
        .expect("a non-zero period and burst");
    let tower_governor = tower_governor::GovernorLayer::new(governor_config).error_handler(
        |error| -> Response<Body> { panic!("tower_governor refused a request: {error}") },
    );
    let burst = NonZeroU32::new(GCRA_BURST).expect("a non-zero burst");
    let governor_quota = governor::Quota::with_period(GCRA_PERIOD)
        .expect("a non-zero period")
        .allow_burst(burst);
    let governor_keyed = GovernorKeyedLayer {
        limiter: Arc::new(DefaultKeyedRateLimiter::keyed(governor_quota)),
        key: header_key,
    };

    let sliding = Quota::sliding(1_000_000, 3600 * SECOND).expect("a valid quota");
    let gcra = Quota::smooth(3600, 3600 * SECOND)
        .and_then(|q| q.burst(GCRA_BURST))
        .expect("a valid quota");
    let multi = QuotaSet::new([
        Quota::sliding(1_000_000, 60 * SECOND).expect("a valid quota"),
        Quota::sliding(10_000_000, 3600 * SECOND).expect("a valid quota"),
    ])
    .expect("two quotas");

    let mut group = c.benchmark_group("quota");
    bench(&mut group, &runtime, "bare", inner, &keys_10k, &make);
    let service = tower_governor.layer(inner);
    bench(
        &mut group,
        &runtime,
        "tower_governor",
        service,
        &keys_10k,
        &make,
    );
    let service = governor_keyed.layer(inner);
    bench(
        &mut group,
        &runtime,
        "governor_keyed",
        service,
        &keys_10k,
        &make,
    );
    for (id, quotas) in [
        ("sliding_10k", QuotaSet::from(sliding)),
        ("gcra_10k", QuotaSet::from(gcra)),
        ("multi_10k", multi),
    ] {
        let service = QuotaWindowLayer::new(quotas, by_header.clone()).layer(inner);
        bench(&mut group, &runtime, id, service, &keys_10k, &make);
    }
    group.finish();
}

fn stack(c: &mut Criterion) {
    let runtime = runtime();
    let inner = service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let name = HeaderName::from_static(KEY_HEADER);
    let keys_10k = tagged(&name, 10_000);
    let make = |tagged: &Tagged| tagged_request(&name, tagged);
    let by_header = Header::from_name(name.clone());
    let sliding = Quota::sliding(1_000_000, 3600 * SECOND).expect("a valid quota");

    // Outermost first, as in the crate docs' client stack.
    let full = RetryAfterBackoffLayer::standard().layer(
        QuotaWindowLayer::new(sliding, by_header.clone()).layer(
            ConcurrencyPerKeyLayer::new(PER_KEY_MAX, by_header)
                .layer(ThrottleClassifierLayer::standard().layer(inner)),
        ),
    );

    let mut group = c.benchmark_group("stack");
    bench(&mut group, &runtime, "bare", inner, &keys_10k, &make);
    bench(&mut group, &runtime, "full_10k", full, &keys_10k, &make);
    group.finish();
}

criterion_group!(benches, concurrency, quota, stack);
criterion_main!(benches);
