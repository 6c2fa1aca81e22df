//! Per-request overhead of `ConcurrencyPerKey`, against a bare service and against
//! tower's unkeyed `ConcurrencyLimit`, in one run.
//!
//! Every benchmark of the `concurrency` group sends one request per iteration through
//! the same `service_fn`, which answers at once with an empty `http::Response<String>`:
//! `ready().await`, `call(request).await`, then the response is dropped (with its body,
//! which is what frees a tollgate slot). Each iteration builds the same minimal request:
//! `http::Request::new(())` with a pre-built [`Key`] cloned into its extensions, the next
//! key of a fixed rotation. The service is built once, outside the measured loop, and
//! the runtime is a current-thread tokio runtime built once. The ids differ only in the
//! layer:
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
//! `MemoryStore` and gives it back when the response is dropped. Because requests do not
//! overlap, each request's key is fresh when it arrives and is evicted when its response
//! is dropped: the number of keys in rotation changes which keys are hashed and where
//! they land in the table, not how many entries the table holds.
//!
//! # Reading the results
//!
//! `bare` is the floor: request construction, the `service_fn` and the response. The
//! cost of a layer is its **added time**, `id − bare`. The target for tollgate is
//!
//! ```text
//! (per_key_10k − bare) ≤ 1.5 × (tower_concurrency_limit − bare)
//! ```
//!
//! that is, a per-key limit costs at most half as much again as tower's single
//! semaphore. `per_key_1` against `per_key_1m` shows how much the key cardinality
//! itself costs (hash-table and cache behaviour).
//!
//! Run: `cargo bench -p tollgate-benches --bench overhead`.

use std::cell::Cell;
use std::convert::Infallible;
use std::fmt::Debug;
use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tollgate::ConcurrencyPerKeyLayer;
use tollgate::key::Key;
use tower::limit::ConcurrencyLimit;
use tower::{Layer, Service, ServiceExt, service_fn};

/// The per-key limit: high enough that no request ever waits.
const PER_KEY_MAX: u32 = 1000;
/// tower's limit: high enough that no request ever waits.
const TOWER_MAX: usize = 1_000_000;

/// `n` distinct keys: decimal ids, stored inline as most real keys are.
fn keys(n: u64) -> Vec<Key> {
    (0..n).map(Key::from).collect()
}

/// The key the per-key layer limits on: the one the bench put in the extensions.
fn key_of(request: &Request<()>) -> Option<Key> {
    request.extensions().get::<Key>().cloned()
}

/// Sends `iters` requests through `service`, one at a time, with the keys of `keys` in
/// rotation from `*next`; returns the time taken.
async fn run<S, B>(service: &mut S, keys: &[Key], next: &mut usize, iters: u64) -> Duration
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        let key = keys[*next].clone();
        *next += 1;
        if *next == keys.len() {
            *next = 0;
        }
        let mut request = Request::new(());
        request.extensions_mut().insert(key);
        let ready = service.ready().await.expect("the service is always ready");
        let response = ready.call(request).await.expect("no request is refused");
        // Dropping the response (and its body) frees a tollgate slot: measured too.
        drop(black_box(response));
    }
    start.elapsed()
}

/// Benchmarks `service` as `id`: built once, then shared by every sample.
fn bench<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    id: &str,
    service: S,
    keys: &[Key],
) where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: Debug,
{
    // The service and the rotation's position, taken out for each sample (not each
    // iteration) and put back after it.
    let state = Cell::new(Some((service, 0usize)));
    let state = &state;
    group.bench_function(id, |b| {
        b.to_async(runtime).iter_custom(|iters| async move {
            let (mut service, mut next) = state.take().expect("one sample at a time");
            let elapsed = run(&mut service, keys, &mut next, iters).await;
            state.set(Some((service, next)));
            elapsed
        });
    });
}

fn concurrency(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let inner = service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let (keys_1, keys_10k, keys_1m) = (keys(1), keys(10_000), keys(1_000_000));

    let mut group = c.benchmark_group("concurrency");
    bench(&mut group, &runtime, "bare", inner, &keys_10k);
    bench(
        &mut group,
        &runtime,
        "tower_concurrency_limit",
        ConcurrencyLimit::new(inner, TOWER_MAX),
        &keys_10k,
    );
    for (id, keys) in [
        ("per_key_1", &keys_1),
        ("per_key_10k", &keys_10k),
        ("per_key_1m", &keys_1m),
    ] {
        let service = ConcurrencyPerKeyLayer::new(PER_KEY_MAX, key_of).layer(inner);
        bench(&mut group, &runtime, id, service, keys);
    }
    group.finish();
}

criterion_group!(benches, concurrency);
criterion_main!(benches);
