//! Admissions in flight together share calls (`RedisStoreBuilder::admission_batch`),
//! and nothing of a single call's behaviour is lost: each admission is decided and
//! fails alone, and a Cluster node's `CROSSSLOT` turns mixed batches off.

mod suite;
mod support;

use std::time::Duration;

use tokio::task::JoinSet;
use tollgate::ErrorKind;
use tollgate::key::Key;
use tollgate::quota::Quota;
use tollgate::store::{QuotaAsk, QuotaSet};
use tollgate_redis::RedisStore;

const KEYS: usize = 16;
const PER_KEY: usize = 8;

/// `EVALSHA` calls Redis has run (`INFO commandstats`).
async fn evalsha_calls(url: &str) -> u64 {
    let client = redis::Client::open(url).expect("a valid URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Admits one unit on each of `KEYS` keys `PER_KEY` times, all at once; returns
/// each admission's key index and outcome kind (`None`: admitted).
async fn all_at_once(store: &RedisStore, quotas: &QuotaSet) -> Vec<(usize, Option<ErrorKind>)> {
    let mut tasks = JoinSet::new();
    for _ in 0..PER_KEY {
        for k in 0..KEYS {
            let (store, quotas) = (store.clone(), quotas.clone());
            tasks.spawn(async move {
                let key = Key::new(format!("batch-{k}")).unwrap();
                let ask = QuotaAsk::new(&quotas, 1);
                let outcome = suite::admit(&store, &key, &ask).await;
                (k, outcome.err().map(|e| e.kind()))
            });
        }
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("an admission task"));
    }
    outcomes
}

fn hour(limit: u32) -> QuotaSet {
    Quota::sliding(limit, Duration::from_secs(3600))
        .unwrap()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_in_flight_together_share_calls_and_single_mode_does_not() {
    let server = redis_server!();
    let url = server.url();
    // No background calls (reads of the global cooldown): every EVALSHA counted
    // below is an admission's.
    let quiet = || {
        server
            .builder()
            .global_cooldown_refresh(Duration::from_secs(3600))
    };
    let batched = quiet().build().unwrap();
    // Its first calls (a NOSCRIPT for each script, the first read of the global
    // cooldown) out of the way.
    all_at_once(&batched, &hour(1000)).await;
    let before = evalsha_calls(&url).await;
    let outcomes = all_at_once(&batched, &hour(1000)).await;
    let batched = evalsha_calls(&url).await - before;
    assert!(outcomes.iter().all(|(_, kind)| kind.is_none()));
    let admissions = (KEYS * PER_KEY) as u64;
    assert!(
        batched < admissions,
        "{batched} calls for {admissions} admissions at once"
    );

    let alone = quiet().admission_batch(1).build().unwrap();
    all_at_once(&alone, &hour(1000)).await;
    let before = evalsha_calls(&url).await;
    all_at_once(&alone, &hour(1000)).await;
    assert_eq!(evalsha_calls(&url).await - before, admissions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decides_each_admission_alone_and_a_foreign_value_fails_only_its_key() {
    let server = redis_server!();
    let url = server.url();
    let store = server.store();
    // Key 3's state name holds a hash (another program's data): its scripts fail with
    // WRONGTYPE, inside batches with every other key.
    let client = redis::Client::open(url.as_str()).expect("a valid URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let () = redis::cmd("HSET")
        .arg(format!("tollgate:{{{}}}:q", hex(b"batch-3")))
        .arg("field")
        .arg("value")
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let before = evalsha_calls(&url).await;
    let outcomes = all_at_once(&store, &hour(5)).await;
    let calls = evalsha_calls(&url).await - before;
    assert!(
        calls < (KEYS * PER_KEY) as u64,
        "{calls} calls: never batched"
    );
    let mut admitted = [0; KEYS];
    for (k, kind) in outcomes {
        match kind {
            None => admitted[k] += 1,
            // The failure policy (fail closed) for the foreign key only.
            Some(ErrorKind::StoreUnavailable) => assert_eq!(k, 3, "{kind:?}"),
            Some(kind) => {
                assert_ne!(k, 3);
                assert_eq!(kind, ErrorKind::QuotaExceeded);
            }
        }
    }
    let mut expected = [5; KEYS];
    expected[3] = 0;
    assert_eq!(admitted, expected);
    // A per-request error marks nothing down.
    assert!(store.is_available());
}

/// A Cluster node refuses the first mixed batch (`CROSSSLOT`): its admissions go
/// again one by one, later batches hold one key each, and every decision is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_node_mixed_batches_give_way_to_batches_of_one_key() {
    let server = redis_server!(cluster);
    let store = server.store();
    for round in 0..2 {
        let quotas = hour(3 + round);
        let outcomes = all_at_once(&store, &quotas).await;
        let mut admitted = [0; KEYS];
        for (k, kind) in outcomes {
            match kind {
                None => admitted[k] += 1,
                Some(kind) => assert_eq!(kind, ErrorKind::QuotaExceeded),
            }
        }
        // The second round's set is another one: its windows restart.
        assert_eq!(admitted, [3 + round; KEYS], "round {round}");
    }
    assert!(store.is_available());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lease acquisitions in flight together share calls too, and each key grants exactly
/// its limit, on a standalone server and (one key per call after `CROSSSLOT`) on a
/// Cluster node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_acquisitions_at_once_share_calls_and_grant_exactly_the_limit() {
    use tollgate::store::WaitPolicy;
    const LIMIT: u32 = 3;
    for cluster in [false, true] {
        let server = if cluster {
            redis_server!(cluster)
        } else {
            redis_server!()
        };
        let store = server
            .builder()
            .global_cooldown_refresh(Duration::from_secs(3600))
            .build()
            .unwrap();
        let url = server.url();
        // The scripts loaded, the first background read done.
        let warm = Key::new("warm").unwrap();
        drop(suite::acquire(&store, &warm, LIMIT, WaitPolicy::Reject).await);
        let before = evalsha_calls(&url).await;
        let mut tasks = JoinSet::new();
        for _ in 0..PER_KEY {
            for k in 0..KEYS {
                let store = store.clone();
                tasks.spawn(async move {
                    let key = Key::new(format!("lease-{k}")).unwrap();
                    let taken = suite::acquire(&store, &key, LIMIT, WaitPolicy::Reject).await;
                    (k, taken)
                });
            }
        }
        let mut granted = [0; KEYS];
        // Permits are held until every acquisition has been decided.
        let mut held = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (k, taken) = done.expect("an acquisition task");
            match taken {
                Ok(permit) => {
                    granted[k] += 1;
                    held.push(permit);
                }
                Err(err) => assert_eq!(err.kind(), ErrorKind::ConcurrencyLimited, "{err}"),
            }
        }
        assert_eq!(granted, [LIMIT; KEYS], "cluster: {cluster}");
        let calls = evalsha_calls(&url).await - before;
        if !cluster {
            assert!(
                calls < (KEYS * PER_KEY) as u64,
                "{calls} calls for {} acquisitions at once",
                KEYS * PER_KEY
            );
        }
        drop(held);
    }
}
