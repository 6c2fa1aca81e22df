//! Two workers, two `RedisStore`s with their own connections, one Redis: they share
//! quotas, concurrency and cooldowns, directly and through the unchanged layers.

mod suite;
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use suite::{acquire, admit, bounded, fresh_key};
use tokio::time::{Instant, sleep};
use tollgate::quota::Quota;
use tollgate::store::{QuotaAsk, QuotaSet, QuotaStore, WaitPolicy};
use tollgate::{ConcurrencyPerKeyLayer, ErrorKind, QuotaWindowLayer};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_quota_and_one_concurrency_limit() {
    let server = redis_server!();
    let (a, b) = (server.store(), server.store());
    let key = fresh_key("shared");
    let quotas = QuotaSet::from(Quota::sliding(4, Duration::from_secs(30)).unwrap());
    let ask = QuotaAsk::new(&quotas, 1);
    admit(&a, &key, &ask).await.unwrap();
    admit(&b, &key, &ask).await.unwrap();
    admit(&a, &key, &ask).await.unwrap();
    admit(&b, &key, &ask).await.unwrap();
    for store in [&a, &b] {
        let err = admit(store, &key, &ask).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
        assert!(err.retry_after().unwrap() > Duration::from_secs(29));
    }

    let key = fresh_key("slots");
    let pa = acquire(&a, &key, 2, WaitPolicy::Reject).await.unwrap();
    let _pb = acquire(&b, &key, 2, WaitPolicy::Reject).await.unwrap();
    for store in [&a, &b] {
        let err = acquire(store, &key, 2, WaitPolicy::Reject)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::ConcurrencyLimited);
    }
    // A slot released by one worker is taken by the other, which was waiting for it.
    let waiting = tokio::spawn({
        let (b, key) = (b.clone(), key.clone());
        async move { acquire(&b, &key, 2, WaitPolicy::Queue { max_queue: 4 }).await }
    });
    sleep(Duration::from_millis(30)).await;
    assert!(!waiting.is_finished());
    drop(pa);
    bounded("the other worker's waiter", waiting)
        .await
        .unwrap()
        .expect("the released slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooldown_set_by_one_worker_is_obeyed_by_the_other() {
    let server = redis_server!();
    let (a, b) = (server.store(), server.store());
    let key = fresh_key("cooldown");
    let quotas = QuotaSet::from(Quota::sliding(100, Duration::from_secs(1)).unwrap());
    let ask = QuotaAsk::new(&quotas, 1);
    admit(&b, &key, &ask).await.unwrap();

    // A 429 seen by worker A pauses the key for worker B.
    a.cooldown(&key, Instant::now() + Duration::from_millis(600));
    let deadline = Instant::now() + Duration::from_millis(300);
    let err = loop {
        // The cooldown reaches Redis in the background, within one round trip.
        match admit(&b, &key, &ask).await {
            Err(err) => break err,
            Ok(_) if Instant::now() < deadline => sleep(Duration::from_millis(2)).await,
            Ok(_) => panic!("worker B never saw worker A's cooldown"),
        }
    };
    assert_eq!(err.kind(), ErrorKind::Throttled);
    // The cooldown's end reaches Redis one request later than it was set: it may end
    // that much later for the other workers, never earlier.
    let wait = err.retry_after().unwrap();
    assert!(wait <= Duration::from_millis(600) + LATENCY, "{wait:?}");
    sleep(wait).await;
    admit(&b, &key, &ask).await.expect("the cooldown is over");

    // A global cooldown by A holds every key of B within B's refresh interval (50 ms).
    let other = fresh_key("other");
    a.cooldown_all(Instant::now() + Duration::from_millis(800));
    sleep(Duration::from_millis(200)).await;
    let err = admit(&b, &other, &ask).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled);
    // Worker B learns the end as "now + what Redis said was left", so it is late by
    // one round trip at most, never early.
    let wait = err.retry_after().unwrap();
    assert!(wait <= Duration::from_millis(600) + LATENCY, "{wait:?}");
}

/// Room for round trips and scheduling on a loaded 2-core machine.
const LATENCY: Duration = Duration::from_millis(150);

/// The layers take a `RedisStore` with no change: two workers' stacks on one mailbox
/// admit no more than the quota between them, and never more than the limit at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layers_enforce_one_limit_across_workers() {
    let server = redis_server!();
    let key = fresh_key("mailbox").to_string();
    let in_flight = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let served = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let store = server.store();
        let (in_flight, peak, served) = (in_flight.clone(), peak.clone(), served.clone());
        let mailbox = {
            let key = key.clone();
            move |_: &http::Request<()>| tollgate::key::Key::new(key.as_str())
        };
        let client = ServiceBuilder::new()
            .layer(
                QuotaWindowLayer::new(
                    Quota::sliding(6, Duration::from_secs(30)).unwrap(),
                    mailbox.clone(),
                )
                .store(store.clone())
                .reject(),
            )
            .layer(ConcurrencyPerKeyLayer::new(2, mailbox).store(store))
            .service(service_fn(move |_req: http::Request<()>| {
                let (in_flight, peak, served) = (in_flight.clone(), peak.clone(), served.clone());
                async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    sleep(Duration::from_millis(20)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    served.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(http::Response::new(()))
                }
            }));
        for _ in 0..5 {
            let client = client.clone();
            workers.push(tokio::spawn(async move {
                let result: Result<_, BoxError> = client.oneshot(http::Request::new(())).await;
                result.map(|_| ()).map_err(|e| {
                    e.downcast_ref::<tollgate::Error>()
                        .map(tollgate::Error::kind)
                        .expect("a tollgate error")
                })
            }));
        }
    }
    let mut refused = 0;
    for worker in workers {
        match bounded("request", worker).await.unwrap() {
            Ok(()) => {}
            Err(kind) => {
                assert_eq!(kind, ErrorKind::QuotaExceeded);
                refused += 1;
            }
        }
    }
    assert_eq!(served.load(Ordering::SeqCst), 6);
    assert_eq!(refused, 4);
    assert!(peak.load(Ordering::SeqCst) <= 2);
    // The quota counted the six served requests, and only them.
    let store = server.store();
    let quotas = QuotaSet::from(Quota::sliding(6, Duration::from_secs(30)).unwrap());
    let key = tollgate::key::Key::new(key.as_str()).unwrap();
    assert!(matches!(
        suite::decide(store.admit(&key, &QuotaAsk::new(&quotas, 1))).await,
        Err(e) if e.kind() == ErrorKind::QuotaExceeded
    ));
}

/// Wait mode through the layer, two workers on one key: every request is served, and
/// the service, counting on its own side, never sees more than the quota in any window
/// (the layer's safety margin covers the latency between Redis's admission and the
/// service's count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_workers_are_all_served_and_paced_across_the_fleet() {
    let server = redis_server!();
    let key = fresh_key("paced").to_string();
    let window = Duration::from_millis(400);
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut requests = Vec::new();
    for _ in 0..2 {
        let store = server.store();
        let arrivals = arrivals.clone();
        let key = key.clone();
        let client = ServiceBuilder::new()
            .layer(
                QuotaWindowLayer::new(
                    Quota::sliding(4, window).unwrap(),
                    move |_: &http::Request<()>| tollgate::key::Key::new(key.as_str()),
                )
                .safety_margin(Duration::from_millis(100))
                .unwrap()
                .max_wait(Duration::from_secs(20))
                .store(store),
            )
            .service(service_fn(move |_req: http::Request<()>| {
                arrivals.lock().unwrap().push(Instant::now());
                async { Ok::<_, Infallible>(http::Response::new(())) }
            }));
        for _ in 0..6 {
            let client = client.clone();
            requests.push(tokio::spawn(client.oneshot(http::Request::new(()))));
        }
    }
    for request in requests {
        bounded("a waiting request", request)
            .await
            .unwrap()
            .expect("served after waiting");
    }
    let mut arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 12);
    arrivals.sort();
    for (i, at) in arrivals.iter().enumerate() {
        let in_window = arrivals[i..]
            .iter()
            .take_while(|t| **t - *at < window)
            .count();
        assert!(in_window <= 4, "{in_window} arrivals within {window:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_shows_what_every_worker_did_to_a_key() {
    let server = redis_server!();
    let (a, b) = (server.store(), server.store());
    let key = fresh_key("snapshot");
    let quotas = QuotaSet::new([
        Quota::sliding(4, Duration::from_secs(30)).unwrap(),
        Quota::fixed(10, Duration::from_secs(3600)).unwrap(),
    ])
    .unwrap();
    let fresh = a.snapshot(&key, &quotas).await.unwrap();
    assert_eq!((fresh.in_flight, fresh.cooldown_until), (0, None));
    assert_eq!(fresh.usage[0].remaining, 4);
    assert_eq!(fresh.usage[1].reset_after, Duration::ZERO);

    admit(&a, &key, &QuotaAsk::new(&quotas, 2)).await.unwrap();
    let _held = acquire(&b, &key, 3, WaitPolicy::Reject).await.unwrap();
    let _also = acquire(&a, &key, 3, WaitPolicy::Reject).await.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    b.cooldown(&key, until);
    sleep(Duration::from_millis(100)).await; // the cooldown reaches Redis meanwhile
    let seen = a.snapshot(&key, &quotas).await.unwrap();
    assert_eq!(seen.in_flight, 2);
    assert_eq!(seen.usage[0].remaining, 2);
    assert_eq!(seen.usage[1].remaining, 8);
    let cooldown = seen.cooldown_until.expect("b's cooldown");
    assert!(cooldown > until - Duration::from_millis(5) && cooldown < until + LATENCY);
}
