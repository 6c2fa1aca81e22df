//! Concurrency leases: renewed while held, reclaimed when their holder dies.

mod suite;
mod support;

use std::time::Duration;

use suite::{acquire, fresh_key};
use tokio::time::{Instant, sleep};
use tollgate::ErrorKind;
use tollgate::store::WaitPolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_is_renewed_past_its_ttl() {
    let server = redis_server!();
    let ttl = Duration::from_millis(300);
    let (holder, other) = (
        server.builder().lease_ttl(ttl).build().unwrap(),
        server.builder().lease_ttl(ttl).build().unwrap(),
    );
    let key = fresh_key("renewed");
    let permit = acquire(&holder, &key, 1, WaitPolicy::Reject).await.unwrap();
    // The server forgets its scripts (as after a restart or failover): renewals load
    // theirs again.
    let mut conn = holder.connection_manager().clone();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..10 {
        sleep(ttl / 3).await;
        let err = acquire(&other, &key, 1, WaitPolicy::Reject)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::ConcurrencyLimited);
    }
    drop(permit);
    let policy = WaitPolicy::Queue { max_queue: 1 };
    tokio::time::timeout(Duration::from_secs(2), acquire(&other, &key, 1, policy))
        .await
        .expect("released on drop")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_whose_holder_died_is_reclaimed_after_the_lease_ttl() {
    let server = redis_server!();
    let ttl = Duration::from_millis(400);
    let key = fresh_key("reclaimed");

    // The holder: a worker with its own runtime that takes a slot, then dies without
    // releasing it: its runtime, and with it the store's background task (renewals,
    // releases) and connection, is shut down before the permit is dropped, so the drop
    // reaches nobody, as when a process is killed.
    let url = server.url();
    let holder_key = key.clone();
    let taken = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (permit, taken) = runtime.block_on(async {
            let store = tollgate_redis::RedisStore::builder(url)
                .lease_ttl(ttl)
                .build()
                .unwrap();
            let permit = acquire(&store, &holder_key, 1, WaitPolicy::Reject).await;
            (permit.unwrap(), Instant::now())
        });
        drop(runtime);
        drop(permit);
        taken
    })
    .join()
    .unwrap();

    let store = server.builder().lease_ttl(ttl).build().unwrap();
    let err = acquire(&store, &key, 1, WaitPolicy::Reject)
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::ConcurrencyLimited);
    let policy = WaitPolicy::Queue { max_queue: 1 };
    let _permit = tokio::time::timeout(Duration::from_secs(3), acquire(&store, &key, 1, policy))
        .await
        .expect("reclaimed after the TTL")
        .unwrap();
    let held_for = taken.elapsed();
    assert!(
        held_for >= ttl - Duration::from_millis(50),
        "reclaimed after only {held_for:?}"
    );
}
