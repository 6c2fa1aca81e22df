//! One behaviour suite, generic over the store: run against `MemoryStore` and
//! `RedisStore` alike (see `behaviour.rs`).
//!
//! Time is real (Redis's clock cannot be paused): windows are a few hundred
//! milliseconds, and every check that depends on timing leaves room for a loaded
//! 2-core machine. Bounds are checked on the store's own clock (`admitted_at` of the
//! grants), where they hold exactly whatever the latency between store and test.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};
use tollgate::key::Key;
use tollgate::quota::Quota;
use tollgate::store::{
    Admission, ConcurrencyStore, QuotaAsk, QuotaGrant, QuotaSet, QuotaStore, WaitPolicy,
};
use tollgate::{Error, ErrorKind};

/// Every await in the suite is bounded: a hang is a failure, not a stuck CI job.
pub(crate) async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 20 s"))
}

pub(crate) async fn decide<P, A>(a: Admission<P, A>) -> Result<P, Error>
where
    A: Future<Output = Result<P, Error>>,
{
    match a {
        Admission::Ready(p) => Ok(p),
        Admission::Rejected(e) => Err(e),
        Admission::Wait(w) => bounded("admission", w).await,
    }
}

pub(crate) async fn admit<St: QuotaStore>(
    store: &St,
    key: &Key,
    ask: &QuotaAsk<'_>,
) -> Result<QuotaGrant, Error> {
    decide(store.admit(key, ask)).await
}

pub(crate) async fn acquire<St: ConcurrencyStore>(
    store: &St,
    key: &Key,
    limit: u32,
    policy: WaitPolicy,
) -> Result<St::Permit, Error> {
    decide(store.acquire(key, limit, policy)).await
}

fn set(quotas: &[Quota]) -> QuotaSet {
    QuotaSet::new(quotas.iter().copied()).unwrap()
}

/// A key no other test (or earlier run on the same server) uses.
pub(crate) fn fresh_key(name: &str) -> Key {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Key::new(format!("{name}/{}/{n}", std::process::id())).unwrap()
}

/// Admits as fast as possible for `run`, returning the grants' times (store clock, ns).
async fn hammer<St: QuotaStore>(
    store: &St,
    key: &Key,
    quotas: &QuotaSet,
    run: Duration,
) -> Vec<u64> {
    let end = Instant::now() + run;
    let mut times = Vec::new();
    while Instant::now() < end {
        match admit(store, key, &QuotaAsk::new(quotas, 1)).await {
            Ok(grant) => times.push(grant.admitted_at()),
            Err(err) => {
                assert!(matches!(err.kind(), ErrorKind::QuotaExceeded), "{err}");
                let wait = err.retry_after().expect("a refusal says when");
                // Come back early half of the time, to probe the edge.
                sleep(wait.min(Duration::from_millis(7)) / 2).await;
            }
        }
    }
    times
}

/// The most admissions in any half-open interval of `window` nanoseconds.
fn most_in_any_window(times: &[u64], window: u64) -> usize {
    let mut times = times.to_vec();
    times.sort_unstable();
    let mut most = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

pub(crate) async fn sliding_never_admits_more_than_n_in_any_window<St: QuotaStore>(store: St) {
    let key = fresh_key("sliding");
    let quotas = set(&[Quota::sliding(5, Duration::from_millis(300)).unwrap()]);
    let times = hammer(&store, &key, &quotas, Duration::from_millis(1500)).await;
    assert!(
        times.len() >= 15,
        "sustained load admitted only {}",
        times.len()
    );
    assert!(most_in_any_window(&times, 300_000_000) <= 5, "{times:?}");
}

pub(crate) async fn fixed_never_admits_more_than_n_per_aligned_window<St: QuotaStore>(store: St) {
    let key = fresh_key("fixed");
    let w = 400_000_000u64;
    let quotas = set(&[Quota::fixed(4, Duration::from_nanos(w)).unwrap()]);
    let times = hammer(&store, &key, &quotas, Duration::from_millis(1300)).await;
    let mut per_window = std::collections::HashMap::<u64, usize>::new();
    for t in &times {
        *per_window.entry(t / w).or_default() += 1;
    }
    assert!(per_window.len() >= 3, "{per_window:?}");
    assert!(per_window.values().all(|&n| n <= 4), "{per_window:?}");
    // The documented worst case of a fixed window: 2N in an unaligned interval.
    assert!(most_in_any_window(&times, w) <= 8);
}

pub(crate) async fn smooth_spaces_units_after_the_burst<St: QuotaStore>(store: St) {
    let key = fresh_key("smooth");
    let quota = Quota::smooth(5, Duration::from_millis(500))
        .unwrap()
        .burst(2)
        .unwrap();
    let t = quota.interval().unwrap().as_nanos() as u64;
    let quotas = set(&[quota]);
    let times = hammer(&store, &key, &quotas, Duration::from_millis(1200)).await;
    assert!(times.len() >= 8, "{times:?}");
    // U units within [a, c] need c − a ≥ (U − b)·T; so b + N − 1 in any window W.
    for i in 0..times.len() {
        for j in i..times.len() {
            let units = (j - i + 1) as u64;
            if units > 2 {
                assert!(times[j] - times[i] >= (units - 2) * t, "{times:?}");
            }
        }
    }
    // At most b + N − 1 = 6 units in any window W.
    assert!(most_in_any_window(&times, 500_000_000) <= 6);
}

pub(crate) async fn a_refusal_names_the_exact_wait<St: QuotaStore>(store: St) {
    let key = fresh_key("exact");
    let quotas = set(&[Quota::sliding(2, Duration::from_millis(320)).unwrap()]);
    let ask = QuotaAsk::new(&quotas, 1);
    let first = admit(&store, &key, &ask).await.unwrap();
    admit(&store, &key, &ask).await.unwrap();
    let err = admit(&store, &key, &ask).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    assert_eq!(err.quota_index(), Some(0));
    let wait = err.retry_after().unwrap();
    // Buckets of 10 ms: the first unit stops counting 320 to 330 ms after it was taken.
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(330),
        "{wait:?}"
    );
    // Exact: after the wait (measured from the answer, so a little later on the
    // store's clock), the same request is admitted...
    sleep(wait).await;
    let third = admit(&store, &key, &ask)
        .await
        .expect("admitted once the named wait is over");
    // ...and not early: a full window after the first, on the store's own clock.
    assert!(third.admitted_at() - first.admitted_at() >= 320_000_000);
}

pub(crate) async fn a_request_refused_by_one_window_consumes_nothing_from_the_others<
    St: QuotaStore,
>(
    store: St,
) {
    let key = fresh_key("multi");
    let short = Quota::sliding(3, Duration::from_millis(320)).unwrap();
    let long = Quota::sliding(10, Duration::from_secs(30)).unwrap();
    let both = set(&[short, long]);
    for _ in 0..3 {
        admit(&store, &key, &QuotaAsk::new(&both, 1)).await.unwrap();
    }
    for _ in 0..20 {
        let err = admit(&store, &key, &QuotaAsk::new(&both, 1))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
        assert_eq!(err.quota_index(), Some(0));
    }
    sleep(Duration::from_millis(340)).await;
    let grant = admit(&store, &key, &QuotaAsk::new(&both, 1).report(true))
        .await
        .unwrap();
    // The long window saw 4 admissions, not 24.
    assert_eq!(grant.usage().len(), 2);
    assert_eq!(grant.usage()[1].remaining, 10 - 4);
    assert_eq!(grant.usage()[0].remaining, 2);
    // A cost one window cannot take now is refused whole: nothing is taken from either.
    let err = admit(&store, &key, &QuotaAsk::new(&both, 3))
        .await
        .unwrap_err();
    assert_eq!(err.quota_index(), Some(0));
    let grant = admit(&store, &key, &QuotaAsk::new(&both, 2).report(true))
        .await
        .unwrap();
    assert_eq!(grant.usage()[1].remaining, 10 - 6);
}

/// Refunds are synchronous for the memory store and sent in the background by the
/// Redis store: the capacity comes back within a moment.
async fn eventually_admitted<St: QuotaStore>(
    store: &St,
    key: &Key,
    ask: &QuotaAsk<'_>,
) -> QuotaGrant {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match admit(store, key, ask).await {
            Ok(grant) => return grant,
            Err(err) if Instant::now() < deadline => {
                assert_eq!(err.kind(), ErrorKind::QuotaExceeded, "{err}");
                sleep(Duration::from_millis(5)).await;
            }
            Err(err) => panic!("not admitted within 2 s: {err}"),
        }
    }
}

pub(crate) async fn a_refund_gives_the_capacity_back<St: QuotaStore>(store: St) {
    for quota in [
        Quota::sliding(1, Duration::from_secs(30)).unwrap(),
        Quota::fixed(1, Duration::from_secs(30)).unwrap(),
        Quota::smooth(1, Duration::from_secs(30)).unwrap(),
    ] {
        let key = fresh_key("refund");
        let quotas = set(&[quota]);
        let ask = QuotaAsk::new(&quotas, 1);
        let grant = admit(&store, &key, &ask).await.unwrap();
        admit(&store, &key, &ask).await.unwrap_err();
        store.refund(&key, &quotas, &grant);
        eventually_admitted(&store, &key, &ask).await;
        let err = admit(&store, &key, &ask).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::QuotaExceeded, "{quota}");
    }
}

pub(crate) async fn cooldowns_hold_one_key_or_all_keys<St: QuotaStore>(store: St) {
    let (a, b) = (fresh_key("cool-a"), fresh_key("cool-b"));
    let quotas = set(&[Quota::sliding(100, Duration::from_secs(1)).unwrap()]);
    let ask = QuotaAsk::new(&quotas, 1);
    let until = Instant::now() + Duration::from_millis(400);
    store.cooldown(&a, until);
    let err = admit(&store, &a, &ask).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled);
    let wait = err.retry_after().unwrap();
    assert!(
        // A remote store may learn the cooldown one round trip late: later, never earlier.
        wait > Duration::ZERO && wait <= Duration::from_millis(400 + 150),
        "{wait:?}"
    );
    admit(&store, &b, &ask).await.unwrap();
    // Wait mode waits the cooldown out, and not a moment less.
    let waiting = QuotaAsk::new(&quotas, 1).wait(8, Duration::from_secs(5), Duration::ZERO);
    admit(&store, &a, &waiting).await.unwrap();
    assert!(Instant::now() >= until);

    store.cooldown_all(Instant::now() + Duration::from_millis(300));
    assert_eq!(
        admit(&store, &b, &ask).await.unwrap_err().kind(),
        ErrorKind::Throttled
    );
    sleep(Duration::from_millis(320)).await;
    admit(&store, &b, &ask).await.unwrap();
}

pub(crate) async fn a_cost_above_capacity_is_refused_at_once<St: QuotaStore>(store: St) {
    let key = fresh_key("cost");
    let quotas = set(&[
        Quota::sliding(10, Duration::from_secs(1)).unwrap(),
        Quota::smooth(10, Duration::from_secs(1))
            .unwrap()
            .burst(4)
            .unwrap(),
    ]);
    let ask = QuotaAsk::new(&quotas, 5).wait(16, Duration::from_secs(60), Duration::ZERO);
    let Admission::Rejected(err) = store.admit(&key, &ask) else {
        panic!("a cost no window can hold must be refused without a wait");
    };
    assert_eq!(err.kind(), ErrorKind::CostTooHigh);
    assert_eq!(err.quota_index(), Some(1));
}

pub(crate) async fn waiters_are_all_admitted_within_the_bound<St: QuotaStore>(store: St) {
    let key = fresh_key("queue");
    let quotas = set(&[Quota::sliding(2, Duration::from_millis(200)).unwrap()]);
    let spacing = Duration::from_millis(20);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, key, quotas) = (store.clone(), key.clone(), quotas.clone());
        tasks.push(tokio::spawn(async move {
            let ask = QuotaAsk::new(&quotas, 1).wait(16, Duration::from_secs(10), spacing);
            admit(&store, &key, &ask).await.map(|g| g.admitted_at())
        }));
    }
    let mut times = Vec::new();
    for task in tasks {
        times.push(bounded("waiter", task).await.unwrap().expect("admitted"));
    }
    assert!(most_in_any_window(&times, 200_000_000) <= 2, "{times:?}");
    // A known wait beyond max_wait fails at once.
    let short = QuotaAsk::new(&quotas, 1).wait(16, Duration::from_millis(10), Duration::ZERO);
    let err = admit(&store, &key, &short).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WaitExceeded);
}

pub(crate) async fn concurrency_never_exceeds_the_limit_and_releases_on_drop<
    St: ConcurrencyStore,
>(
    store: St,
) {
    let key = fresh_key("conc");
    let policy = WaitPolicy::Queue { max_queue: 64 };
    let in_flight = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (store, key) = (store.clone(), key.clone());
        let (in_flight, peak) = (Arc::clone(&in_flight), Arc::clone(&peak));
        tasks.push(tokio::spawn(async move {
            let permit = acquire(&store, &key, 3, policy).await.expect("a slot");
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            sleep(Duration::from_millis(15)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        }));
    }
    for task in tasks {
        bounded("holder", task).await.unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= 3);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "the limit was never reached"
    );
    // Every slot came back: three at once again.
    let held: Vec<_> = futures_three(&store, &key, policy).await;
    assert_eq!(held.len(), 3);
}

async fn futures_three<St: ConcurrencyStore>(
    store: &St,
    key: &Key,
    policy: WaitPolicy,
) -> Vec<St::Permit> {
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(acquire(store, key, 3, policy).await.unwrap());
    }
    held
}

pub(crate) async fn reject_mode_refuses_a_full_key_and_a_cancelled_waiter_leaks_nothing<
    St: ConcurrencyStore,
>(
    store: St,
) {
    let (key, other) = (fresh_key("reject"), fresh_key("other"));
    let first = acquire(&store, &key, 2, WaitPolicy::Reject).await.unwrap();
    let _second = acquire(&store, &key, 2, WaitPolicy::Reject).await.unwrap();
    let err = acquire(&store, &key, 2, WaitPolicy::Reject)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind(), ErrorKind::ConcurrencyLimited);
    // One busy key never blocks another.
    let _o = acquire(&store, &other, 1, WaitPolicy::Reject)
        .await
        .unwrap();
    // A waiter cancelled while the key is full takes nothing with it.
    let policy = WaitPolicy::Queue { max_queue: 4 };
    let cancelled = timeout(Duration::from_millis(50), acquire(&store, &key, 2, policy)).await;
    assert!(cancelled.is_err(), "the key was full");
    drop(first);
    let third = acquire(&store, &key, 2, policy).await.unwrap();
    let err = acquire(&store, &key, 2, WaitPolicy::Reject)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind(), ErrorKind::ConcurrencyLimited);
    drop(third);
    // Released on drop: the slot comes back (the Redis store releases in the background).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match acquire(&store, &key, 2, WaitPolicy::Reject).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(5)).await,
            Err(err) => panic!("slot never released: {err}"),
        }
    }
    assert_eq!(
        acquire(&store, &key, 0, WaitPolicy::Reject)
            .await
            .err()
            .expect("refused")
            .kind(),
        ErrorKind::ConcurrencyLimited
    );
}

/// Admits one unit on each of `keys` keys (`<prefix>-<index>`) `per_key` times, all
/// at once: every admission is a task spawned before any is awaited. Returns each
/// admission's key index and outcome.
pub(crate) async fn all_at_once<St>(
    store: &St,
    quotas: &QuotaSet,
    prefix: &str,
    keys: usize,
    per_key: usize,
) -> Vec<(usize, Result<QuotaGrant, Error>)>
where
    St: QuotaStore + Clone + Send + Sync + 'static,
    St::Acquire: Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..per_key {
        for k in 0..keys {
            let (store, quotas) = (store.clone(), quotas.clone());
            let key = Key::new(format!("{prefix}-{k}")).unwrap();
            tasks.spawn(async move {
                let ask = QuotaAsk::new(&quotas, 1);
                (k, admit(&store, &key, &ask).await)
            });
        }
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("an admission task"));
    }
    outcomes
}

/// Many admissions at once over many keys (which a Redis store sends in batches, and
/// on a Cluster node first as a mixed batch it must resend key by key): each key
/// admits exactly its limit, whatever else shares the call.
pub(crate) async fn concurrent_admissions_over_many_keys_are_each_decided_exactly<
    St: QuotaStore + Clone + Send + Sync + 'static,
>(
    store: St,
) where
    St::Acquire: Send,
{
    const KEYS: usize = 24;
    const LIMIT: u32 = 5;
    let quotas = set(&[Quota::sliding(LIMIT, Duration::from_secs(3600)).unwrap()]);
    let mut admitted = [0u32; KEYS];
    for (k, outcome) in all_at_once(&store, &quotas, "many", KEYS, 3 * LIMIT as usize).await {
        match outcome {
            Ok(_) => admitted[k] += 1,
            Err(err) => assert_eq!(err.kind(), ErrorKind::QuotaExceeded, "{err}"),
        }
    }
    assert_eq!(admitted, [LIMIT; KEYS]);
}
