//! Stress and property tests of `ConcurrencyPerKey` on a multi-thread runtime.
//!
//! Many tasks over several keys, with random latencies (in yields: real interleaving
//! on two worker threads, no sleeps), random cancellations (of the whole call, at a
//! random point) and random body handling (read to the end, dropped half-read, dropped
//! unread). An independent counter *inside* the inner service counts a request in
//! flight from the moment the inner service is called until its response body ends or
//! is dropped, exactly as a server would, and records every time it exceeds the key's
//! limit. After all tasks end, nothing may be left: no counter above zero, no key in the
//! store.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tollgate::ConcurrencyPerKeyLayer;
use tollgate::concurrency::Release;
use tollgate::key::Key;
use tollgate::store::MemoryStore;
use tower::{Layer, ServiceExt};

const KEYS: usize = 6;

fn limit_of(key: usize) -> u32 {
    1 + (key % 3) as u32
}

#[derive(Default)]
struct Counters {
    in_flight: [AtomicU32; KEYS],
    peak: [AtomicU32; KEYS],
    violations: AtomicU32,
    calls: AtomicU64,
}

/// Counts one request in flight at the inner service, until dropped.
struct InFlight {
    counters: Arc<Counters>,
    key: usize,
}

impl InFlight {
    fn enter(counters: &Arc<Counters>, key: usize) -> Self {
        let now = counters.in_flight[key].fetch_add(1, Ordering::SeqCst) + 1;
        if now > limit_of(key) {
            counters.violations.fetch_add(1, Ordering::SeqCst);
        }
        counters.peak[key].fetch_max(now, Ordering::SeqCst);
        counters.calls.fetch_add(1, Ordering::SeqCst);
        InFlight {
            counters: Arc::clone(counters),
            key,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counters.in_flight[self.key].fetch_sub(1, Ordering::SeqCst);
    }
}

/// A body that is pending for `yields` polls, then sends one frame, then ends; the
/// request stops counting at its end or when it is dropped.
struct TestBody {
    guard: Option<InFlight>,
    yields: u32,
    sent: bool,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.yields > 0 {
            self.yields -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))));
        }
        self.guard = None;
        Poll::Ready(None)
    }
}

#[derive(Clone, Copy)]
struct KeyIndex(usize);

#[derive(Clone, Copy, Debug)]
enum BodyUse {
    ReadAll,
    DropAfterFirstFrame,
    DropUnread,
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    key: usize,
    latency: u32,
    body_yields: u32,
    cancel_after: Option<u32>,
    body: BodyUse,
}

async fn yield_n(n: u32) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

struct Outcome {
    counters: Arc<Counters>,
    store: MemoryStore,
    cancelled: u64,
    errors: u64,
}

fn run(plans: Vec<Plan>, release: Release) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let counters = Arc::new(Counters::default());
    let layer = ConcurrencyPerKeyLayer::new(1, |req: &Request<()>| {
        req.extensions().get::<KeyIndex>().map(|k| Key::from(k.0))
    })
    .limit_per_key(|key| {
        let index: usize = std::str::from_utf8(key.as_bytes())
            .unwrap()
            .parse()
            .unwrap();
        limit_of(index)
    })
    .max_queue(100_000)
    .release(release);
    let store = layer.get_store().clone();
    let inner_counters = Arc::clone(&counters);
    let service = layer.layer(tower::service_fn(move |req: Request<()>| {
        let counters = Arc::clone(&inner_counters);
        async move {
            let key = req.extensions().get::<KeyIndex>().unwrap().0;
            let latency = *req.extensions().get::<u32>().unwrap();
            let guard = InFlight::enter(&counters, key);
            yield_n(latency).await;
            let body_yields = *req.extensions().get::<u64>().unwrap() as u32;
            Ok::<_, Infallible>(Response::new(TestBody {
                guard: Some(guard),
                yields: body_yields,
                sent: false,
            }))
        }
    }));

    let cancelled = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let tasks: Vec<_> = plans
            .into_iter()
            .map(|plan| {
                let service = service.clone();
                let cancelled = Arc::clone(&cancelled);
                let errors = Arc::clone(&errors);
                tokio::spawn(async move {
                    let mut request = Request::new(());
                    request.extensions_mut().insert(KeyIndex(plan.key));
                    request.extensions_mut().insert(plan.latency);
                    request.extensions_mut().insert(u64::from(plan.body_yields));
                    let call = async move {
                        let response = service.oneshot(request).await.map_err(drop)?;
                        let mut body = response.into_body();
                        match plan.body {
                            BodyUse::ReadAll => {
                                body.collect().await.map_err(drop)?;
                            }
                            BodyUse::DropAfterFirstFrame => {
                                body.frame().await;
                            }
                            BodyUse::DropUnread => {}
                        }
                        Ok::<_, ()>(())
                    };
                    let result = match plan.cancel_after {
                        None => Some(call.await),
                        Some(n) => tokio::select! {
                            result = call => Some(result),
                            () = yield_n(n) => None,
                        },
                    };
                    match result {
                        None => {
                            cancelled.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(Err(_)) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(Ok(())) => {}
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    Outcome {
        counters,
        store,
        cancelled: cancelled.load(Ordering::SeqCst),
        errors: errors.load(Ordering::SeqCst),
    }
}

fn plan_strategy() -> impl Strategy<Value = Plan> {
    (
        0..KEYS,
        0..20u32,
        0..6u32,
        prop::option::weighted(0.25, 0..40u32),
        prop_oneof![
            Just(BodyUse::ReadAll),
            Just(BodyUse::DropAfterFirstFrame),
            Just(BodyUse::DropUnread)
        ],
    )
        .prop_map(|(key, latency, body_yields, cancel_after, body)| Plan {
            key,
            latency,
            body_yields,
            cancel_after,
            body,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn never_more_than_the_limit_in_flight_per_key_and_nothing_leaks(
        plans in prop::collection::vec(plan_strategy(), 50..400)
    ) {
        let total = plans.len() as u64;
        let outcome = run(plans, Release::BodyEnd);
        let c = &outcome.counters;
        prop_assert_eq!(c.violations.load(Ordering::SeqCst), 0);
        for key in 0..KEYS {
            prop_assert_eq!(c.in_flight[key].load(Ordering::SeqCst), 0, "key {} leaked", key);
            prop_assert!(c.peak[key].load(Ordering::SeqCst) <= limit_of(key));
        }
        outcome.store.evict_idle();
        prop_assert!(outcome.store.is_empty(), "store kept {} keys", outcome.store.len());
        prop_assert_eq!(outcome.errors, 0, "a request failed (none should: no max_wait hit)");
        prop_assert!(c.calls.load(Ordering::SeqCst) <= total);
    }
}

#[test]
fn a_busy_run_reaches_every_limit_and_cancels_some_requests() {
    // One fixed heavy plan: proves the property above is exercised (limits are reached,
    // cancellations happen), not vacuously true.
    let plans: Vec<Plan> = (0..600)
        .map(|i| Plan {
            key: i % KEYS,
            latency: (i as u32 * 7) % 30,
            body_yields: (i as u32) % 5,
            cancel_after: (i % 4 == 0).then_some((i as u32 * 13) % 50),
            body: match i % 3 {
                0 => BodyUse::ReadAll,
                1 => BodyUse::DropAfterFirstFrame,
                _ => BodyUse::DropUnread,
            },
        })
        .collect();
    let outcome = run(plans, Release::BodyEnd);
    let c = &outcome.counters;
    assert_eq!(c.violations.load(Ordering::SeqCst), 0);
    for key in 0..KEYS {
        assert_eq!(c.in_flight[key].load(Ordering::SeqCst), 0);
        assert_eq!(
            c.peak[key].load(Ordering::SeqCst),
            limit_of(key),
            "key {key}"
        );
    }
    assert!(outcome.cancelled > 0);
    outcome.store.evict_idle();
    assert!(outcome.store.is_empty());
}

#[test]
fn the_checker_catches_slots_released_before_the_body_ends() {
    // With slots released at the response head, bodies still streaming keep the inner
    // service's count up while new requests are admitted: the counter must see it.
    let plans: Vec<Plan> = (0..200)
        .map(|_| Plan {
            key: 0,
            latency: 0,
            body_yields: 20,
            cancel_after: None,
            body: BodyUse::ReadAll,
        })
        .collect();
    let outcome = run(plans, Release::Head);
    assert!(outcome.counters.violations.load(Ordering::SeqCst) > 0);
    outcome.store.evict_idle();
    assert!(outcome.store.is_empty());
}
