//! Property tests of `QuotaWindow` through the layer, on paused time.
//!
//! Each case builds a current-thread runtime with paused time, a layer stack over a
//! recording inner service ("the server"), and one task per planned arrival that sleeps
//! until its arrival offset and then calls the stack. The server writes down what it
//! saw: which key, when (on the paused clock), which request and what cost. The
//! properties are checked on that record, by brute force, not on what the layer
//! believes.
//!
//! Arrival order: tasks are spawned in arrival order and take turns (a counter, and
//! yields, which do not move paused time) so that arrivals at one instant call the
//! stack in their planned order. The call order is the request's `seq`; FIFO is checked
//! against it.
//!
//! Time: the memory store's clock origin is the instant the store is created (inside
//! `QuotaWindowLayer::new`); each run reads `Instant::now()` right before building the
//! layer, on paused time, so that instant *is* the origin and fixed windows are
//! `[kW, (k+1)W)` after it. Tokio's timers fire on whole milliseconds after the
//! runtime's start (which is also the origin), so every arrival, window and hold here is
//! a whole number of milliseconds, and a wait that ends between two milliseconds ends at
//! the next one.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::time::Instant;
use tollgate::key::Header;
use tollgate::quota::{Cost, Quota, QuotaSet, QuotaWindowLayer};
use tollgate::{ConcurrencyPerKeyLayer, Error, ErrorKind};
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service, ServiceExt};

const KEYS: [&str; 3] = ["alice", "bob", "carol"];
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const LONG: Duration = Duration::from_secs(3600);

/// One planned request.
#[derive(Clone, Copy, Debug)]
struct Arrival {
    /// Milliseconds after the origin.
    at: u64,
    key: usize,
    cost: u32,
    /// Milliseconds the server takes to answer it.
    hold: u64,
}

/// The request's place in the call order.
#[derive(Clone, Copy, Debug)]
struct Seq(usize);

#[derive(Clone, Copy, Debug)]
struct Hold(Duration);

/// A request as the server saw it, in the order it saw them.
#[derive(Clone, Copy, Debug)]
struct Seen {
    seq: usize,
    key: usize,
    at: Duration,
    cost: u32,
}

/// What the caller got.
#[derive(Clone, Debug)]
struct Outcome {
    key: usize,
    arrived: Duration,
    ended: Duration,
    result: Result<(), Refusal>,
}

/// A `tollgate::Error`, reduced to what the properties compare.
#[derive(Clone, Debug, PartialEq)]
struct Refusal {
    kind: ErrorKind,
    retry_after: Option<Duration>,
    quota: Option<usize>,
}

struct Run {
    /// In the order the server saw them.
    seen: Vec<Seen>,
    /// Indexed by `seq`.
    outcomes: Vec<Outcome>,
}

impl Run {
    /// When the server saw request `seq`, if it did.
    fn sent(&self, seq: usize) -> Option<Duration> {
        self.seen.iter().find(|s| s.seq == seq).map(|s| s.at)
    }

    /// `(time, cost)` of what the server saw for `key`, in the order it saw them.
    fn seen_by(&self, key: usize) -> Vec<(Duration, u32)> {
        self.seen
            .iter()
            .filter(|s| s.key == key)
            .map(|s| (s.at, s.cost))
            .collect()
    }
}

type Server = BoxCloneService<Request<()>, Response<()>, Infallible>;

/// The recording inner service: writes down `(seq, key, now, cost)` when called, then
/// holds the request for its `Hold` (if any) and answers 200.
fn server(origin: Instant, log: Arc<Mutex<Vec<Seen>>>) -> Server {
    BoxCloneService::new(tower::service_fn(move |request: Request<()>| {
        let seq = request.extensions().get::<Seq>().expect("seq").0;
        let cost = request.extensions().get::<Cost>().map_or(1, |c| c.0);
        let key = KEYS
            .iter()
            .position(|k| request.headers()["x-key"] == *k)
            .expect("a known key");
        log.lock().unwrap().push(Seen {
            seq,
            key,
            at: Instant::now() - origin,
            cost,
        });
        let hold = request
            .extensions()
            .get::<Hold>()
            .map_or(Duration::ZERO, |h| h.0);
        async move {
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
            Ok::<_, Infallible>(Response::new(()))
        }
    }))
}

fn refusal(err: &BoxError) -> Refusal {
    let err = err
        .downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a tollgate::Error: {err}"));
    Refusal {
        kind: err.kind(),
        retry_after: err.retry_after(),
        quota: err.quota_index(),
    }
}

/// Runs `arrivals` (sorted by time) through the stack that `build` makes around the
/// recording server, on a fresh paused current-thread runtime.
fn run<S, B>(arrivals: &[Arrival], build: impl FnOnce(Server) -> S) -> Run
where
    S: Service<Request<()>, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    assert!(
        arrivals.is_sorted_by_key(|a| a.at),
        "arrivals must be sorted"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let server_log = Arc::clone(&log);
    let outcomes = runtime.block_on(async move {
        // Paused: no time passes between this and the store's creation in `build`.
        let origin = Instant::now();
        let service = build(server(origin, server_log));
        let turn = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = arrivals
            .iter()
            .enumerate()
            .map(|(seq, &arrival)| {
                let mut service = service.clone();
                let turn = Arc::clone(&turn);
                tokio::spawn(async move {
                    tokio::time::sleep_until(origin + ms(arrival.at)).await;
                    // Arrivals at one instant call in their planned order.
                    while turn.load(Ordering::SeqCst) != seq {
                        tokio::task::yield_now().await;
                    }
                    let request = Request::builder()
                        .header("x-key", KEYS[arrival.key])
                        .extension(Seq(seq))
                        .extension(Cost(arrival.cost))
                        .extension(Hold(ms(arrival.hold)))
                        .body(())
                        .unwrap();
                    let service = service.ready().await.expect("always ready");
                    let arrived = Instant::now() - origin;
                    let future = service.call(request);
                    turn.store(seq + 1, Ordering::SeqCst);
                    // The response (and any permit in its body) is dropped at once.
                    let result = future.await.map(drop).map_err(|e| refusal(&e));
                    Outcome {
                        key: arrival.key,
                        arrived,
                        ended: Instant::now() - origin,
                        result,
                    }
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    });
    let seen = log.lock().unwrap().clone();
    Run { seen, outcomes }
}

/// Checks what every property relies on: each request called the stack at its planned
/// instant (paused time did not move under the turn-taking), and the server saw each
/// request at most once, only if the caller got a response.
fn check_run(arrivals: &[Arrival], run: &Run) -> Result<(), TestCaseError> {
    for (seq, (arrival, outcome)) in arrivals.iter().zip(&run.outcomes).enumerate() {
        prop_assert_eq!(
            outcome.arrived,
            ms(arrival.at),
            "request {} called late",
            seq
        );
        let times_seen = run.seen.iter().filter(|s| s.seq == seq).count();
        prop_assert_eq!(
            times_seen,
            usize::from(outcome.result.is_ok()),
            "request {} seen {} times, outcome {:?}",
            seq,
            times_seen,
            outcome.result
        );
    }
    Ok(())
}

/// The most units in any half-open interval `(t − w, t]`, by brute force.
fn most_in_any_interval(events: &[(Duration, u32)], w: Duration) -> u32 {
    events
        .iter()
        .map(|&(end, _)| {
            events
                .iter()
                .filter(|&&(t, _)| t <= end && t + w > end)
                .map(|&(_, cost)| cost)
                .sum()
        })
        .max()
        .unwrap_or(0)
}

/// Units per aligned window `[kw, (k+1)w)` after the origin.
fn per_aligned_window(events: &[(Duration, u32)], w: Duration) -> HashMap<u128, u32> {
    let mut windows = HashMap::new();
    for &(t, cost) in events {
        *windows.entry(t.as_nanos() / w.as_nanos()).or_default() += cost;
    }
    windows
}

/// Requests of each key reached the server in the order they called the stack.
fn check_fifo(run: &Run) -> Result<(), TestCaseError> {
    for key in 0..KEYS.len() {
        let order: Vec<usize> = run
            .seen
            .iter()
            .filter(|s| s.key == key)
            .map(|s| s.seq)
            .collect();
        prop_assert!(
            order.is_sorted(),
            "key {} served out of order: {:?}",
            key,
            order
        );
    }
    Ok(())
}

fn check_all_admitted(run: &Run) -> Result<(), TestCaseError> {
    for (seq, outcome) in run.outcomes.iter().enumerate() {
        prop_assert!(
            outcome.result.is_ok(),
            "request {} refused: {:?}",
            seq,
            outcome.result
        );
    }
    Ok(())
}

/// Up to `count` arrivals within `span` ms, half of them on a 25 ms grid so that many
/// share an instant, with costs in `1..=max_cost` and holds in `0..=max_hold` ms.
fn arrivals(
    count: Range<usize>,
    span: u64,
    max_cost: u32,
    max_hold: u64,
) -> impl Strategy<Value = Vec<Arrival>> {
    let at = prop_oneof![0..span, (0..span / 25).prop_map(|slot| slot * 25)];
    let arrival =
        (at, 0..KEYS.len(), 1..=max_cost, 0..=max_hold).prop_map(|(at, key, cost, hold)| Arrival {
            at,
            key,
            cost,
            hold,
        });
    prop::collection::vec(arrival, count).prop_map(|mut all| {
        all.sort_by_key(|a| a.at);
        all
    })
}

/// The next whole millisecond at or after `nanos` (when a tokio timer for it fires).
fn ceil_ms(nanos: u128) -> u128 {
    nanos.div_ceil(1_000_000) * 1_000_000
}

/// When each request should reach the server under one fixed quota `n` per `w` in
/// wait mode with release spacing `spacing`, in nanoseconds after the origin.
///
/// The layer's documented behaviour, modelled per key: a request goes straight through
/// if nobody of its key is waiting, no release spacing holds the key, and its cost fits
/// the current window; otherwise it queues behind its key's earlier requests, and from
/// the moment it is at the head it is admitted at the first instant (rounded up to the
/// timer's millisecond) where the spacing since the last release from the queue has
/// passed and its cost fits the window; each release from the queue holds the key for
/// `spacing`.
fn fixed_wait_schedule(n: u32, w: Duration, spacing: Duration, arrivals: &[Arrival]) -> Vec<u128> {
    #[derive(Default)]
    struct KeyState {
        used: HashMap<u128, u32>,
        last_sent: u128,
        next_release: u128,
    }
    let w = w.as_nanos();
    let mut keys: Vec<KeyState> = KEYS.iter().map(|_| KeyState::default()).collect();
    arrivals
        .iter()
        .map(|a| {
            let k = &mut keys[a.key];
            let fits = |used: &HashMap<u128, u32>, t: u128| {
                used.get(&(t / w)).copied().unwrap_or(0) + a.cost <= n
            };
            let arrived = ms(a.at).as_nanos();
            let sent =
                if k.last_sent <= arrived && k.next_release <= arrived && fits(&k.used, arrived) {
                    arrived
                } else {
                    let mut t = arrived.max(k.last_sent);
                    let sent = loop {
                        t = ceil_ms(t.max(k.next_release));
                        if fits(&k.used, t) {
                            break t;
                        }
                        t = (t / w + 1) * w;
                    };
                    k.next_release = sent + spacing.as_nanos();
                    sent
                };
            *k.used.entry(sent / w).or_default() += a.cost;
            k.last_sent = sent;
            sent
        })
        .collect()
}

fn quota_layer(quotas: impl Into<QuotaSet>) -> QuotaWindowLayer<Header> {
    QuotaWindowLayer::new(quotas, Header::new("x-key"))
}

/// Wait-mode release spacing: the quota set's default, or none.
fn spacing(layer: QuotaWindowLayer<Header>, default: bool) -> QuotaWindowLayer<Header> {
    if default {
        layer
    } else {
        layer.release_spacing(Duration::ZERO)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Wait mode, sliding `n` per `w`: the server never sees more than `n` units of a
    /// key in any `(t − w, t]`; every request gets through (`max_wait` is an hour);
    /// each key's requests reach the server in the order they called; and after a
    /// release from the queue, the key admits nothing for the release spacing (`w/n`
    /// by default: no flood when the window frees up).
    #[test]
    fn wait_mode_sliding_never_exceeds_n_in_any_window_and_serves_each_key_in_order(
        (n, w, default_spacing, plan) in (1..=5u32, 20..=1000u64, any::<bool>())
            .prop_flat_map(|(n, w, s)| (Just(n), Just(w), Just(s), arrivals(1..80, 3000, n, 0)))
    ) {
        let w = ms(w);
        let quota = Quota::sliding(n, w).unwrap();
        let release = QuotaSet::from(quota).release_spacing();
        let result = run(&plan, |server| {
            spacing(quota_layer(quota).max_wait(LONG), default_spacing).layer(server)
        });
        check_run(&plan, &result)?;
        check_all_admitted(&result)?;
        check_fifo(&result)?;
        for key in 0..KEYS.len() {
            let seen = result.seen_by(key);
            let most = most_in_any_interval(&seen, w);
            prop_assert!(most <= n, "key {}: {} units in some {:?}: {:?}", key, most, w, seen);
        }
        if default_spacing {
            for (seq, outcome) in result.outcomes.iter().enumerate() {
                let sent = result.sent(seq).unwrap();
                if sent == outcome.arrived {
                    continue; // went straight through, not released from the queue
                }
                let next = result
                    .seen
                    .iter()
                    .find(|s| s.key == outcome.key && s.seq > seq)
                    .map(|s| s.at);
                if let Some(next) = next {
                    prop_assert!(
                        next >= sent + release,
                        "key {}: released at {:?}, next admitted at {:?} (spacing {:?})",
                        outcome.key, sent, next, release
                    );
                }
            }
        }
    }

    /// Fixed `n` per `w`, wait mode: never more than `n` units per aligned window
    /// `[kw, (k+1)w)` after the store's origin, in order, all admitted, and each request
    /// reaches the server exactly when the model of the documented behaviour says
    /// (`fixed_wait_schedule`): never later than it has to (no lost capacity), never
    /// earlier.
    #[test]
    fn wait_mode_fixed_fills_each_aligned_window_to_n_and_no_further(
        (n, w, default_spacing, plan) in (1..=4u32, 10..=1000u64, any::<bool>())
            .prop_flat_map(|(n, w, s)| (Just(n), Just(w), Just(s), arrivals(1..80, 3000, n, 0)))
    ) {
        let w = ms(w);
        let quota = Quota::fixed(n, w).unwrap();
        let release = if default_spacing {
            QuotaSet::from(quota).release_spacing()
        } else {
            Duration::ZERO
        };
        let result = run(&plan, |server| {
            spacing(quota_layer(quota).max_wait(LONG), default_spacing).layer(server)
        });
        check_run(&plan, &result)?;
        check_all_admitted(&result)?;
        check_fifo(&result)?;
        for key in 0..KEYS.len() {
            for (window, units) in per_aligned_window(&result.seen_by(key), w) {
                prop_assert!(units <= n, "key {}: {} units in window {}", key, units, window);
            }
        }
        let expected = fixed_wait_schedule(n, w, release, &plan);
        for (seq, expected) in expected.into_iter().enumerate() {
            let sent = result.sent(seq).unwrap().as_nanos();
            prop_assert_eq!(
                sent, expected,
                "request {} ({:?}) reached the server at {}ns, model says {}ns",
                seq, plan[seq], sent, expected
            );
        }
    }

    /// Smooth (GCRA) `n` per `w` with burst `b`, emission interval `T = ⌈w/n⌉`, in wait
    /// mode (with or without release spacing: it can only delay) or reject mode:
    ///
    /// - never more than `b + n − 1` units of a key in any `(t − w, t]`;
    /// - spacing, the stronger statement: whenever the server saw `U` units of a key
    ///   within a closed interval `[a, c]` (both ends at requests it saw),
    ///   `c − a ≥ (U − b)·T`. With `b = 1` and cost 1 this says two consecutive
    ///   requests are at least `T` apart; with a burst, that once `b` units went out
    ///   together, every further unit waited `T`;
    /// - wait mode: all admitted, in order.
    #[test]
    fn smooth_quotas_keep_their_burst_and_spacing_bounds(
        (n, w, burst, mode, plan) in (1..=6u32, 10..=1000u64, 1..=4u32, 0..3u8)
            .prop_flat_map(|(n, w, b, mode)| {
                (Just(n), Just(w), Just(b), Just(mode), arrivals(1..80, 3000, b, 0))
            })
    ) {
        let w = ms(w);
        let quota = Quota::smooth(n, w).unwrap().burst(burst).unwrap();
        let t = quota.interval().unwrap();
        let result = run(&plan, |server| {
            let layer = quota_layer(quota);
            match mode {
                0 => layer.max_wait(LONG),
                1 => layer.max_wait(LONG).release_spacing(Duration::ZERO),
                _ => layer.reject(),
            }
            .layer(server)
        });
        check_run(&plan, &result)?;
        if mode < 2 {
            check_all_admitted(&result)?;
            check_fifo(&result)?;
        } else {
            for outcome in &result.outcomes {
                if let Err(refusal) = &outcome.result {
                    prop_assert_eq!(refusal.kind, ErrorKind::QuotaExceeded);
                }
            }
        }
        for key in 0..KEYS.len() {
            let seen = result.seen_by(key);
            let most = most_in_any_interval(&seen, w);
            prop_assert!(most < burst + n, "key {}: {} units in some {:?}", key, most, w);
            for &(a, _) in &seen {
                for &(c, _) in seen.iter().filter(|&&(c, _)| c >= a) {
                    let units: u32 = seen
                        .iter()
                        .filter(|&&(x, _)| a <= x && x <= c)
                        .map(|&(_, cost)| cost)
                        .sum();
                    let need = t * units.saturating_sub(burst);
                    prop_assert!(
                        c - a >= need,
                        "key {}: {} units within [{:?}, {:?}], need {:?} (T = {:?}, b = {})",
                        key, units, a, c, need, t, burst
                    );
                }
            }
        }
    }

    /// Two fixed quotas at once ("n1 per w1 AND n2 per w2"), reject mode, against an
    /// exact reference model. Fixed windows are exact (a sliding window remembers an
    /// admission for up to `w + w/32`, so no simple model predicts its decisions; see
    /// the next property for those), so the model is: admit iff the cost fits the
    /// current aligned window of *both* quotas, counting only admitted requests; a
    /// refusal says `QuotaExceeded`, waits exactly until the latest of the refusing
    /// windows' next starts, and names the refusing quota with the longest wait.
    /// Refused requests consume nothing, from either window: if they did, the model and
    /// the layer would part ways at the next decision.
    #[test]
    fn two_fixed_quotas_admit_all_or_nothing_exactly_as_the_reference_model(
        (n1, w1, n2, w2, plan) in (1..=4u32, 20..=500u64, 1..=4u32, 1..=10u64)
            .prop_flat_map(|(n1, w1, more, times)| {
                let n2 = n1 * more;
                (Just(n1), Just(w1), Just(n2), w1..=w1 * times, arrivals(1..80, 4000, n1, 0))
            })
    ) {
        let quotas = [
            Quota::fixed(n1, ms(w1)).unwrap(),
            Quota::fixed(n2, ms(w2)).unwrap(),
        ];
        let set = QuotaSet::new(quotas).unwrap();
        let result = run(&plan, |server| quota_layer(set).reject().layer(server));
        check_run(&plan, &result)?;

        let mut used: HashMap<(usize, usize, u128), u32> = HashMap::new();
        for (seq, (arrival, outcome)) in plan.iter().zip(&result.outcomes).enumerate() {
            let t = outcome.arrived.as_nanos();
            let waits: Vec<u128> = quotas
                .iter()
                .enumerate()
                .map(|(q, quota)| {
                    let w = quota.window().as_nanos();
                    let units = used.get(&(arrival.key, q, t / w)).copied().unwrap_or(0);
                    if units + arrival.cost <= quota.limit() {
                        0
                    } else {
                        (t / w + 1) * w - t
                    }
                })
                .collect();
            let longest = waits.iter().copied().max().unwrap();
            if longest == 0 {
                prop_assert!(outcome.result.is_ok(), "request {} refused: {:?}", seq, outcome.result);
                for (q, quota) in quotas.iter().enumerate() {
                    let w = quota.window().as_nanos();
                    *used.entry((arrival.key, q, t / w)).or_default() += arrival.cost;
                }
            } else {
                let refusal = outcome.result.as_ref().err();
                prop_assert!(refusal.is_some(), "request {} admitted, model refuses", seq);
                let refusal = refusal.unwrap();
                prop_assert_eq!(refusal.kind, ErrorKind::QuotaExceeded);
                prop_assert_eq!(
                    refusal.retry_after,
                    Some(Duration::from_nanos(u64::try_from(longest).unwrap())),
                    "request {}: waits {:?}", seq, waits
                );
                if waits.iter().filter(|&&x| x == longest).count() == 1 {
                    let q = waits.iter().position(|&x| x == longest);
                    prop_assert_eq!(refusal.quota, q, "request {}: waits {:?}", seq, waits);
                }
            }
        }
        for key in 0..KEYS.len() {
            let seen = result.seen_by(key);
            for quota in &quotas {
                for units in per_aligned_window(&seen, quota.window()).into_values() {
                    prop_assert!(units <= quota.limit());
                }
            }
        }
    }

    /// Two sliding quotas at once, reject mode. Sliding windows forget an admission
    /// between `w` and `w + w/32` after it, so instead of a model: the safety bound (no
    /// more than `n` units of a key in any `(t − w, t]`, for each quota), and "a refused
    /// request never changes a later decision": the same arrivals run again with any
    /// subset of the refused requests left out get exactly the same decisions (admitted,
    /// or refused with the same wait and quota) for every request that is left.
    #[test]
    fn leaving_out_refused_requests_changes_no_other_decision_of_two_sliding_quotas(
        (n1, w1, n2, w2, plan, drop_mask) in (1..=4u32, 20..=500u64, 1..=4u32, 1..=10u64)
            .prop_flat_map(|(n1, w1, more, times)| {
                let n2 = n1 * more;
                (
                    Just(n1),
                    Just(w1),
                    Just(n2),
                    w1..=w1 * times,
                    arrivals(1..80, 4000, n1, 0),
                    prop::collection::vec(any::<bool>(), 80),
                )
            })
    ) {
        let quotas = [
            Quota::sliding(n1, ms(w1)).unwrap(),
            Quota::sliding(n2, ms(w2)).unwrap(),
        ];
        let set = QuotaSet::new(quotas).unwrap();
        let first = run(&plan, |server| quota_layer(set.clone()).reject().layer(server));
        check_run(&plan, &first)?;
        for key in 0..KEYS.len() {
            let seen = first.seen_by(key);
            for quota in &quotas {
                let most = most_in_any_interval(&seen, quota.window());
                prop_assert!(most <= quota.limit(), "key {}: {} in some {:?}", key, most, quota.window());
            }
        }

        let kept: Vec<usize> = (0..plan.len())
            .filter(|&seq| first.outcomes[seq].result.is_ok() || !drop_mask[seq])
            .collect();
        let again: Vec<Arrival> = kept.iter().map(|&seq| plan[seq]).collect();
        let second = run(&again, |server| quota_layer(set).reject().layer(server));
        check_run(&again, &second)?;
        for (i, &seq) in kept.iter().enumerate() {
            prop_assert_eq!(
                &second.outcomes[i].result,
                &first.outcomes[seq].result,
                "request {} ({:?}) decided differently once refused requests were left out",
                seq,
                plan[seq]
            );
        }
    }

    /// Refunds, reject mode: `QuotaWindow` (fixed `n` per `w`) in front of a real
    /// `ConcurrencyPerKey` with 1 slot per key in reject mode, in front of a server that
    /// holds each request for a random time. A request the concurrency layer refuses
    /// never reaches the server and is refunded at once, so the quota a request sees is
    /// exactly what the server saw of its key in the current window. Asserted against
    /// that model, request by request:
    ///
    /// - refused with `QuotaExceeded` (waiting exactly until the next window) iff the
    ///   server already saw `n` of its key in the window: so a window in which quota
    ///   was refused reached `n` at the server, however many requests the concurrency
    ///   layer turned away before (without refunds they would have used it up);
    /// - otherwise `ConcurrencyLimited` if another request of the key was in flight,
    ///   and sent if none was; never more than `n` per aligned window at the server.
    #[test]
    fn requests_refused_further_in_give_their_quota_back_in_reject_mode(
        (n, w, plan) in (1..=4u32, 50..=1000u64)
            .prop_flat_map(|(n, w)| (Just(n), Just(w), arrivals(1..80, 3000, 1, 300)))
    ) {
        let w = ms(w);
        let result = run(&plan, |server| {
            let concurrency = ConcurrencyPerKeyLayer::new(1, Header::new("x-key")).reject();
            let quota = quota_layer(Quota::fixed(n, w).unwrap()).reject();
            tower::ServiceBuilder::new().layer(quota).layer(concurrency).service(server)
        });
        check_run(&plan, &result)?;
        let wn = w.as_nanos();
        for (seq, outcome) in result.outcomes.iter().enumerate() {
            let t = outcome.arrived;
            let window = t.as_nanos() / wn;
            let earlier = || {
                result
                    .seen
                    .iter()
                    .filter(|s| s.key == outcome.key && s.seq < seq)
            };
            let used: u32 = earlier()
                .filter(|s| s.at.as_nanos() / wn == window)
                .map(|s| s.cost)
                .sum();
            let busy = earlier().any(|s| s.at <= t && t < result.outcomes[s.seq].ended);
            let just_freed = earlier().any(|s| result.outcomes[s.seq].ended == t);
            if used >= n {
                let next = Duration::from_nanos(u64::try_from((window + 1) * wn).unwrap());
                prop_assert_eq!(
                    &outcome.result,
                    &Err(Refusal {
                        kind: ErrorKind::QuotaExceeded,
                        retry_after: Some(next - t),
                        quota: Some(0),
                    }),
                    "request {}: the server saw {} in its window", seq, used
                );
            } else if busy {
                prop_assert_eq!(
                    outcome.result.as_ref().map_err(|r| r.kind),
                    Err(ErrorKind::ConcurrencyLimited),
                    "request {}: only {} used, key busy", seq, used
                );
            } else if !just_freed {
                prop_assert!(outcome.result.is_ok(), "request {}: {:?}", seq, outcome.result);
            } else {
                // The slot was released at this very instant: either order is right.
                prop_assert!(matches!(
                    outcome.result.as_ref().map_err(|r| r.kind),
                    Ok(()) | Err(ErrorKind::ConcurrencyLimited)
                ));
            }
        }
        for key in 0..KEYS.len() {
            for units in per_aligned_window(&result.seen_by(key), w).into_values() {
                prop_assert!(units <= n);
            }
        }
    }

    /// Refunds, wait mode (no release spacing): the same stack with the quota layer
    /// queueing. The server never sees more than `n` per aligned window, every request
    /// is either sent or refused by the concurrency layer, and a refused request's
    /// refund lets the queue use the window: whenever a request was still waiting for
    /// quota when a window ended, the server saw exactly `n` of its key in that window.
    #[test]
    fn requests_refused_further_in_give_their_quota_back_to_the_queue_in_wait_mode(
        (n, w, plan) in (1..=4u32, 50..=1000u64)
            .prop_flat_map(|(n, w)| (Just(n), Just(w), arrivals(1..80, 3000, 1, 300)))
    ) {
        let w = ms(w);
        let result = run(&plan, |server| {
            let concurrency = ConcurrencyPerKeyLayer::new(1, Header::new("x-key")).reject();
            let quota = quota_layer(Quota::fixed(n, w).unwrap())
                .max_wait(LONG)
                .release_spacing(Duration::ZERO);
            tower::ServiceBuilder::new().layer(quota).layer(concurrency).service(server)
        });
        check_run(&plan, &result)?;
        check_fifo(&result)?;
        let wn = w.as_nanos();
        let windows: Vec<HashMap<u128, u32>> = (0..KEYS.len())
            .map(|key| per_aligned_window(&result.seen_by(key), w))
            .collect();
        for (seq, outcome) in result.outcomes.iter().enumerate() {
            // When the quota layer let it go: sent, or turned away right after.
            let admitted = match &outcome.result {
                Ok(()) => result.sent(seq).unwrap(),
                Err(r) => {
                    prop_assert_eq!(r.kind, ErrorKind::ConcurrencyLimited, "request {}", seq);
                    outcome.ended
                }
            };
            for window in outcome.arrived.as_nanos() / wn..admitted.as_nanos() / wn {
                let units = windows[outcome.key].get(&window).copied().unwrap_or(0);
                prop_assert_eq!(
                    units, n,
                    "request {} waited through window {} of key {}, which the server saw {} in",
                    seq, window, outcome.key, units
                );
            }
        }
        for key_windows in &windows {
            for &units in key_windows.values() {
                prop_assert!(units <= n);
            }
        }
    }

    /// `max_wait` M, any window kind, wait mode: every request either reaches the
    /// server within M of its arrival, or fails with `WaitExceeded` within M: at once
    /// (then its known wait, `retry_after`, is beyond M), or after exactly M in the
    /// queue. No request waits longer than M; those that get through are in order.
    #[test]
    fn no_request_waits_longer_than_max_wait(
        (kind, n, w, max_wait, default_spacing, plan) in
            (0..3u8, 1..=4u32, 10..=1000u64, 0..=2000u64, any::<bool>())
                .prop_flat_map(|(kind, n, w, m, s)| {
                    let capacity = if kind == 2 { 1 } else { n };
                    (Just(kind), Just(n), Just(w), Just(m), Just(s), arrivals(1..80, 2000, capacity, 0))
                })
    ) {
        let w = ms(w);
        let quota = match kind {
            0 => Quota::sliding(n, w),
            1 => Quota::fixed(n, w),
            _ => Quota::smooth(n, w),
        }
        .unwrap();
        let max_wait = ms(max_wait);
        let result = run(&plan, |server| {
            spacing(quota_layer(quota).max_wait(max_wait), default_spacing).layer(server)
        });
        check_run(&plan, &result)?;
        check_fifo(&result)?;
        for (seq, outcome) in result.outcomes.iter().enumerate() {
            let waited = outcome.ended - outcome.arrived;
            prop_assert!(waited <= max_wait, "request {} waited {:?}", seq, waited);
            match &outcome.result {
                Ok(()) => {
                    let sent = result.sent(seq).unwrap();
                    prop_assert!(sent - outcome.arrived <= max_wait);
                }
                Err(refusal) => {
                    prop_assert_eq!(refusal.kind, ErrorKind::WaitExceeded, "request {}", seq);
                    if waited.is_zero() {
                        let known = refusal.retry_after;
                        prop_assert!(
                            known.is_some_and(|d| d > max_wait),
                            "request {} failed at once, known wait {:?}", seq, known
                        );
                    } else {
                        prop_assert_eq!(waited, max_wait, "request {}", seq);
                    }
                }
            }
        }
    }
}

#[test]
fn the_interval_checker_sees_a_fixed_window_admit_twice_its_limit_across_a_boundary() {
    // The worst case the docs state for fixed windows: n in the last millisecond of one
    // window and n in the first of the next. Proves the brute-force checker above can
    // see an excess (the properties are not vacuously true), and that windows are
    // aligned on the store's origin.
    let plan: Vec<Arrival> = [999, 999, 999, 1000, 1000, 1000]
        .into_iter()
        .map(|at| Arrival {
            at,
            key: 0,
            cost: 1,
            hold: 0,
        })
        .collect();
    let quota = Quota::fixed(3, Duration::from_secs(1)).unwrap();
    let result = run(&plan, |server| quota_layer(quota).reject().layer(server));
    check_run(&plan, &result).unwrap();
    assert_eq!(result.seen.len(), 6);
    assert_eq!(
        most_in_any_interval(&result.seen_by(0), Duration::from_secs(1)),
        6
    );
    // A millisecond earlier, the second burst is in the first window and refused.
    let plan: Vec<Arrival> = plan
        .iter()
        .map(|a| Arrival { at: a.at - 1, ..*a })
        .collect();
    let result = run(&plan, |server| quota_layer(quota).reject().layer(server));
    assert_eq!(result.seen.len(), 3);
    let refused = &result.outcomes[3].result;
    assert_eq!(
        refused.as_ref().unwrap_err().retry_after,
        Some(Duration::from_millis(1))
    );
}

#[test]
fn a_busy_refund_run_turns_requests_away_and_still_fills_windows() {
    // One fixed dense plan for the refund properties: proves they are exercised (the
    // concurrency layer refuses requests, quota is refused too, and windows in which
    // requests were turned away still reach n at the server).
    let n = 3;
    let w = Duration::from_millis(500);
    let plan: Vec<Arrival> = (0..116)
        .map(|i| Arrival {
            at: i * 13,
            key: 0,
            cost: 1,
            hold: 20 + (i * 37) % 60,
        })
        .collect();
    let result = run(&plan, |server| {
        let concurrency = ConcurrencyPerKeyLayer::new(1, Header::new("x-key")).reject();
        let quota = quota_layer(Quota::fixed(n, w).unwrap()).reject();
        tower::ServiceBuilder::new()
            .layer(quota)
            .layer(concurrency)
            .service(server)
    });
    check_run(&plan, &result).unwrap();
    let kinds = |kind| {
        result
            .outcomes
            .iter()
            .filter(|o| o.result.as_ref().is_err_and(|r| r.kind == kind))
            .count()
    };
    assert!(kinds(ErrorKind::ConcurrencyLimited) > 10);
    assert!(kinds(ErrorKind::QuotaExceeded) > 10);
    let windows = per_aligned_window(&result.seen_by(0), w);
    // 116 arrivals 13 ms apart span 1.5 s: windows 0 to 2, each filled.
    assert_eq!(windows.len(), 3);
    assert!(windows.values().all(|&units| units == n), "{windows:?}");
}
