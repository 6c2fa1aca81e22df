//! The behaviour suite (`suite/mod.rs`) against both stores: what holds for the
//! in-memory store holds for the Redis store, on a standalone server and on a Redis
//! Cluster node (which refuses any script whose keys span two hash slots).

mod suite;
mod support;

use tollgate::store::MemoryStore;

macro_rules! every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    suite::$name(MemoryStore::new()).await;
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = redis_server!();
                    suite::$name(server.store()).await;
                }
            )*
        }
        mod redis_cluster {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = redis_server!(cluster);
                    suite::$name(server.store()).await;
                }
            )*
        }
    };
}

every_store!(
    sliding_never_admits_more_than_n_in_any_window,
    fixed_never_admits_more_than_n_per_aligned_window,
    smooth_spaces_units_after_the_burst,
    a_refusal_names_the_exact_wait,
    a_request_refused_by_one_window_consumes_nothing_from_the_others,
    a_refund_gives_the_capacity_back,
    cooldowns_hold_one_key_or_all_keys,
    a_cost_above_capacity_is_refused_at_once,
    waiters_are_all_admitted_within_the_bound,
    concurrency_never_exceeds_the_limit_and_releases_on_drop,
    reject_mode_refuses_a_full_key_and_a_cancelled_waiter_leaks_nothing,
    concurrent_admissions_over_many_keys_are_each_decided_exactly,
);

/// The cluster the suite runs on enforces Cluster's rule (else the suite passing there
/// would prove nothing): a script naming keys of two hash slots is refused.
#[tokio::test]
async fn the_cluster_node_refuses_a_script_whose_keys_span_two_slots() {
    let server = redis_server!(cluster);
    let mut connection = server.connection().await;
    let script = ::redis::cmd("EVAL")
        .arg("return 1")
        .arg(2)
        .arg("{a}:q")
        .arg("{b}:q")
        .query_async::<i64>(&mut connection)
        .await;
    let err = script.expect_err("keys of two slots in one script");
    assert!(
        err.to_string().to_lowercase().contains("crossslot"),
        "{err}"
    );
    let same_slot = ::redis::cmd("EVAL")
        .arg("return 1")
        .arg(2)
        .arg("{a}:q")
        .arg("{a}:c")
        .query_async::<i64>(&mut connection)
        .await;
    assert_eq!(same_slot.expect("keys of one slot"), 1);
}
