//! The behaviour suite (`suite/mod.rs`) against both stores: what holds for the
//! in-memory store holds for the Redis store.

mod suite;
mod support;

use tollgate::store::MemoryStore;

macro_rules! both_stores {
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
    };
}

both_stores!(
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
);
