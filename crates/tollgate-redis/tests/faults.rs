//! Redis dies (or freezes) mid-run: each failure policy answers as documented within
//! the store's timeout, nothing hangs, and admissions go back to Redis once it returns.

mod suite;
mod support;

use std::time::Duration;

use suite::fresh_key;
use tokio::time::{Instant, sleep, timeout};
use tollgate::key::Key;
use tollgate::quota::Quota;
use tollgate::store::{
    Admission, ConcurrencyStore, QuotaAsk, QuotaGrant, QuotaSet, QuotaStore, WaitPolicy,
};
use tollgate::{Error, ErrorKind};
use tollgate_redis::{FailurePolicy, RedisStore};

const TIMEOUT: Duration = Duration::from_millis(200);
const RETRY: Duration = Duration::from_millis(300);
/// Room for a loaded machine on top of the store's timeout.
const SLACK: Duration = Duration::from_millis(700);

/// Grants made by Redis carry Redis's clock (ns since the Unix epoch): far above the
/// fallback store's and without the top bits the store uses for local grants.
fn from_redis(grant: &QuotaGrant) -> bool {
    let at = grant.admitted_at();
    at < 1 << 62 && at > 1_600_000_000_000_000_000
}

/// One admission, which must be decided within the store's timeout plus slack.
async fn admit_now(
    store: &RedisStore,
    key: &Key,
    ask: &QuotaAsk<'_>,
) -> (Result<QuotaGrant, Error>, Duration) {
    let start = Instant::now();
    let decided = timeout(TIMEOUT + SLACK, async {
        match store.admit(key, ask) {
            Admission::Ready(g) => Ok(g),
            Admission::Rejected(e) => Err(e),
            Admission::Wait(w) => w.await,
        }
    })
    .await
    .expect("an admission hung while Redis was down");
    (decided, start.elapsed())
}

async fn acquire_now<St: ConcurrencyStore>(
    store: &St,
    key: &Key,
    limit: u32,
) -> Result<St::Permit, Error> {
    timeout(TIMEOUT + SLACK, async {
        match store.acquire(key, limit, WaitPolicy::Reject) {
            Admission::Ready(p) => Ok(p),
            Admission::Rejected(e) => Err(e),
            Admission::Wait(w) => w.await,
        }
    })
    .await
    .expect("an acquisition hung while Redis was down")
}

fn store(server: &support::RedisServer, policy: FailurePolicy) -> RedisStore {
    server
        .builder()
        .timeout(TIMEOUT)
        .retry_interval(RETRY)
        .failure_policy(policy)
        .build()
        .unwrap()
}

/// Admissions come from Redis again soon after it is back.
async fn resumes(store: &RedisStore, quotas: &QuotaSet) {
    let key = fresh_key("after");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (decided, _) = admit_now(store, &key, &QuotaAsk::new(quotas, 1)).await;
        match decided {
            Ok(grant) if from_redis(&grant) => break,
            _ if Instant::now() < deadline => sleep(Duration::from_millis(50)).await,
            other => panic!("admissions did not resume after Redis restarted: {other:?}"),
        }
    }
    assert!(store.is_available());
    let permit = acquire_now(store, &key, 1).await.expect("a lease again");
    drop(permit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_with_store_unavailable_within_the_timeout_then_recovers() {
    let mut server = redis_server!();
    let store = store(&server, FailurePolicy::FailClosed);
    let quotas = QuotaSet::from(Quota::sliding(100, Duration::from_secs(10)).unwrap());
    let ask = QuotaAsk::new(&quotas, 1);
    let key = fresh_key("closed");
    let (grant, _) = admit_now(&store, &key, &ask).await;
    assert!(from_redis(&grant.unwrap()));
    let held = acquire_now(&store, &key, 5).await.unwrap();

    // Frozen: the call times out after the store's timeout, not later.
    server.freeze().await;
    let (err, took) = admit_now(&store, &key, &ask).await;
    let err = err.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StoreUnavailable, "{err}");
    assert!(took >= TIMEOUT - Duration::from_millis(5), "{took:?}");
    assert!(took <= TIMEOUT + SLACK, "{took:?}");
    // Meanwhile Redis is not asked again: refusals come at once.
    let (err, took) = admit_now(&store, &key, &ask).await;
    assert_eq!(err.unwrap_err().kind(), ErrorKind::StoreUnavailable);
    assert!(took < TIMEOUT, "{took:?}: it waited for Redis");
    let err = acquire_now(&store, &key, 5).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::StoreUnavailable);
    // Dropping a permit while Redis is down never blocks.
    let start = Instant::now();
    drop(held);
    assert!(start.elapsed() < TIMEOUT);
    server.thaw().await;

    // Killed: refused as well, at once (the connection fails fast) or within the timeout.
    server.kill().await;
    sleep(RETRY).await;
    let (err, took) = admit_now(&store, &key, &ask).await;
    assert_eq!(err.unwrap_err().kind(), ErrorKind::StoreUnavailable);
    assert!(took <= TIMEOUT + SLACK, "{took:?}");

    server.restart().await;
    resumes(&store, &quotas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_admits_everything_while_redis_is_down_then_recovers() {
    let mut server = redis_server!();
    let store = store(&server, FailurePolicy::FailOpen);
    let quotas = QuotaSet::from(Quota::sliding(1, Duration::from_secs(30)).unwrap());
    let ask = QuotaAsk::new(&quotas, 1);
    let key = fresh_key("open");
    assert!(admit_now(&store, &key, &ask).await.0.is_ok());
    assert_eq!(
        admit_now(&store, &key, &ask).await.0.unwrap_err().kind(),
        ErrorKind::QuotaExceeded
    );

    server.kill().await;
    for _ in 0..5 {
        let (grant, took) = admit_now(&store, &key, &ask).await;
        let grant = grant.expect("fail open admits");
        assert!(!from_redis(&grant));
        assert!(took <= TIMEOUT + SLACK, "{took:?}");
        // Refunding an open admission does nothing, and does not block.
        store.refund(&key, &quotas, &grant);
    }
    let permits: Vec<_> = futures(&store, &key, 1, 5).await;
    assert_eq!(permits.len(), 5, "fail open ignores the concurrency limit");

    server.restart().await;
    resumes(&store, &quotas).await;
}

async fn futures<St: ConcurrencyStore>(
    store: &St,
    key: &Key,
    limit: u32,
    n: usize,
) -> Vec<St::Permit> {
    let mut permits = Vec::new();
    for _ in 0..n {
        permits.push(acquire_now(store, key, limit).await.unwrap());
    }
    permits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_enforces_the_fleet_share_locally_while_redis_is_down_then_recovers() {
    let mut server = redis_server!();
    let store = store(&server, FailurePolicy::fallback(2));
    let quotas = QuotaSet::from(Quota::sliding(4, Duration::from_secs(30)).unwrap());
    let ask = QuotaAsk::new(&quotas, 1);
    let key = fresh_key("fallback");
    assert!(from_redis(&admit_now(&store, &key, &ask).await.0.unwrap()));

    server.kill().await;
    // The first call finds Redis gone (at once, or after the timeout), then every call
    // is decided locally: 4 per 30 s shared by 2 workers is 2 here.
    let mut admitted = Vec::new();
    for _ in 0..4 {
        let (decided, took) = admit_now(&store, &key, &ask).await;
        assert!(took <= TIMEOUT + SLACK, "{took:?}");
        if let Ok(grant) = decided {
            assert!(!from_redis(&grant));
            admitted.push(grant);
        } else {
            assert_eq!(decided.unwrap_err().kind(), ErrorKind::QuotaExceeded);
        }
    }
    assert_eq!(admitted.len(), 2);
    // Local grants are refunded locally.
    store.refund(&key, &quotas, &admitted[0]);
    assert!(admit_now(&store, &key, &ask).await.0.is_ok());
    // Concurrency: a limit of 4 shared by 2 is 2 here.
    let permits = futures(&store, &key, 4, 2).await;
    let err = acquire_now(&store, &key, 4).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::ConcurrencyLimited);
    drop(permits);
    // Cooldowns hold in the fallback too, for their key only.
    let cooled = fresh_key("cooled");
    store.cooldown(&cooled, Instant::now() + Duration::from_secs(5));
    assert!(
        admit_now(&store, &fresh_key("unrelated"), &ask)
            .await
            .0
            .is_ok()
    );
    let err = admit_now(&store, &cooled, &ask).await.0.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled);

    server.restart().await;
    resumes(&store, &quotas).await;
}
