//! Admissions in flight together share calls (`RedisStoreBuilder::admission_batch`),
//! and nothing of a single call's behaviour is lost: each admission is decided and
//! fails alone. (That mixed batches give way to batches of one key on a Cluster node,
//! with exact decisions, is the behaviour suite's
//! `concurrent_admissions_over_many_keys_are_each_decided_exactly` on Cluster, and the
//! lease test below.)

mod suite;
mod support;

use std::time::Duration;

use tokio::task::JoinSet;
use tollgate::ErrorKind;
use tollgate::key::Key;
use tollgate::quota::Quota;
use tollgate::store::{QuotaSet, WaitPolicy};
use tollgate_redis::RedisStoreBuilder;

const KEYS: usize = 16;
const PER_KEY: usize = 8;

/// `EVALSHA` calls the server has run (`INFO commandstats`).
async fn evalsha_calls(server: &support::RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut server.connection().await)
        .await
        .expect("INFO commandstats");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// A store with no background calls (reads of the global cooldown): every `EVALSHA`
/// counted is an admission's.
fn quiet(server: &support::RedisServer) -> RedisStoreBuilder {
    server
        .builder()
        .global_cooldown_refresh(Duration::from_secs(3600))
}

fn hour(limit: u32) -> QuotaSet {
    Quota::sliding(limit, Duration::from_secs(3600))
        .unwrap()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_in_flight_together_share_calls_and_single_mode_does_not() {
    let server = redis_server!();
    let admissions = (KEYS * PER_KEY) as u64;
    let batched = quiet(&server).build().unwrap();
    // Its first calls (a NOSCRIPT for each script, the first read of the global
    // cooldown) out of the way.
    suite::all_at_once(&batched, &hour(1000), "batch", KEYS, PER_KEY).await;
    let before = evalsha_calls(&server).await;
    let outcomes = suite::all_at_once(&batched, &hour(1000), "batch", KEYS, PER_KEY).await;
    let calls = evalsha_calls(&server).await - before;
    assert!(outcomes.iter().all(|(_, outcome)| outcome.is_ok()));
    assert!(
        calls < admissions,
        "{calls} calls for {admissions} admissions at once"
    );

    let alone = quiet(&server).admission_batch(1).build().unwrap();
    suite::all_at_once(&alone, &hour(1000), "alone", KEYS, PER_KEY).await;
    let before = evalsha_calls(&server).await;
    suite::all_at_once(&alone, &hour(1000), "alone", KEYS, PER_KEY).await;
    assert_eq!(evalsha_calls(&server).await - before, admissions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decides_each_admission_alone_and_a_foreign_value_fails_only_its_key() {
    let server = redis_server!();
    let store = server.store();
    // Key 3's state name holds a hash (another program's data): its scripts fail with
    // WRONGTYPE, inside batches with every other key.
    let () = redis::cmd("HSET")
        .arg(format!("tollgate:{{{}}}:q", hex(b"batch-3")))
        .arg("field")
        .arg("value")
        .query_async(&mut server.connection().await)
        .await
        .expect("HSET");
    let before = evalsha_calls(&server).await;
    let outcomes = suite::all_at_once(&store, &hour(5), "batch", KEYS, PER_KEY).await;
    let calls = evalsha_calls(&server).await - before;
    assert!(
        calls < (KEYS * PER_KEY) as u64,
        "{calls} calls: never batched"
    );
    let mut admitted = [0; KEYS];
    for (k, outcome) in outcomes {
        match outcome.map_err(|err| err.kind()) {
            Ok(_) => admitted[k] += 1,
            // The failure policy (fail closed) for the foreign key only.
            Err(kind @ ErrorKind::StoreUnavailable) => assert_eq!(k, 3, "{kind:?}"),
            Err(kind) => {
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

/// Lease acquisitions in flight together share calls too, and each key grants exactly
/// its limit, on a standalone server and (one key per call after `CROSSSLOT`) on a
/// Cluster node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_acquisitions_at_once_share_calls_and_grant_exactly_the_limit() {
    const LIMIT: u32 = 3;
    for cluster in [false, true] {
        let server = if cluster {
            redis_server!(cluster)
        } else {
            redis_server!()
        };
        let store = quiet(&server).build().unwrap();
        // The scripts loaded, the first background read done.
        let warm = Key::new("warm").unwrap();
        drop(suite::acquire(&store, &warm, LIMIT, WaitPolicy::Reject).await);
        let before = evalsha_calls(&server).await;
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
        let calls = evalsha_calls(&server).await - before;
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
