//! The scripts' window maths against `tollgate::quota`'s, decision by decision.
//!
//! The scripts run in a real `redis-server` on a clock the test drives (a variant of
//! each script that takes the time as its last argument), next to `tollgate::quota`'s
//! `check_all` / `commit_all` / `refund_all` on the same steps. The scripts count in
//! microseconds, `tollgate::quota` in nanoseconds: fed the same numbers (a quota of
//! `W` µs for the script, of `W` ns for the reference, and the same times), the two
//! must decide exactly alike: the same admissions, the same refusing quota, the same
//! wait, the same `remaining` and reset for headers, with refunds of earlier
//! admissions in between. So the scripts are the in-memory maths on a microsecond
//! clock, with the same guarantees and worst cases.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use redis::Script;
use tollgate::quota::{self, Quota, Wait, WindowState};
use tollgate::store::QuotaSet;

use crate::quota::Params;
use crate::scripts::{ADMIT, REFUND, with_fake_clock};

/// Unix time in µs around now: the scripts' numbers as large as in production.
const BASE: u64 = 1_763_800_000_000_000;

/// A quota kind, limit, window (in clock units) and burst.
#[derive(Clone, Copy, Debug)]
struct Spec(u8, u32, u64, u32);

impl Spec {
    fn quota(self, unit: fn(u64) -> Duration) -> Quota {
        let Spec(kind, n, w, b) = self;
        match kind {
            0 => Quota::sliding(n, unit(w)).unwrap(),
            1 => Quota::fixed(n, unit(w)).unwrap(),
            _ => Quota::smooth(n, unit(w)).unwrap().burst(b).unwrap(),
        }
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    // Windows of 1 ms to 20 ms in nanoseconds (the reference's minimum is 1 ms), that
    // is 1 s to 20 s for the script, with any remainder modulo 32 or N.
    (0u8..3, 1u32..=8, 1_000_000u64..=20_000_000, 1u32..=5)
        .prop_map(|(kind, n, w, b)| Spec(kind, n, w, b))
}

#[derive(Clone, Debug)]
struct Step {
    advance: u64,
    cost: u32,
    refund: Option<usize>,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            prop_oneof![Just(0u64), 0u64..3_000_000, 0u64..25_000_000],
            0u32..=6,
            prop::option::weighted(0.15, any::<usize>()),
        )
            .prop_map(|(advance, cost, refund)| Step {
                advance,
                cost,
                refund,
            }),
        1..60,
    )
}

struct Scripts {
    admit: Script,
    refund: Script,
}

fn run_case(
    con: &mut redis::Connection,
    scripts: &Scripts,
    name: &str,
    specs: &[Spec],
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let script_quotas =
        QuotaSet::new(specs.iter().map(|s| s.quota(Duration::from_micros))).unwrap();
    let params = Params::new(&script_quotas);
    let quotas = &QuotaSet::new(specs.iter().map(|s| s.quota(Duration::from_nanos))).unwrap();
    let mut states: Vec<WindowState> = quota::fresh_states(quotas, BASE).collect();
    let mut now = BASE;
    let mut admitted: Vec<(u64, u32)> = Vec::new();
    for step in steps {
        now += step.advance;
        if let (Some(pick), false) = (step.refund, admitted.is_empty()) {
            let (at, cost) = admitted.swap_remove(pick % admitted.len());
            quota::refund_all(quotas, &mut states, at, now, cost);
            let mut call = scripts.refund.key(name);
            call.arg((at, cost, &params.set, now));
            let done: i64 = call.invoke(con).unwrap();
            prop_assert_eq!(done, 1);
        }
        let mut call = scripts.admit.key(name);
        call.arg((&params.request(step.cost, 0, 0, true)[..], now));
        let reply: Vec<i64> = call.invoke(con).unwrap();
        match quota::check_all(quotas, &states, now, step.cost) {
            Ok(()) => {
                quota::commit_all(quotas, &mut states, now, step.cost);
                admitted.push((now, step.cost));
                prop_assert_eq!(
                    reply[0],
                    1,
                    "admitted in memory, not by the script: {:?}",
                    reply
                );
                prop_assert_eq!(reply[1] as u64, now);
                for (i, (q, s)) in quotas.iter().zip(&states).enumerate() {
                    prop_assert_eq!(
                        reply[2 + 2 * i] as u32,
                        s.remaining(q, now),
                        "remaining of {}",
                        q
                    );
                    let reset = s.reset_after(q, now).as_nanos() as u64;
                    prop_assert_eq!(reply[3 + 2 * i] as u64, reset, "reset of {}", q);
                }
            }
            Err(denied) => match denied.wait() {
                Wait::Never => {
                    prop_assert_eq!(&reply[..], &[2, denied.index() as i64][..]);
                }
                Wait::After(wait) => {
                    prop_assert_eq!(reply[0], 0, "refused in memory, admitted by the script");
                    prop_assert_eq!(reply[1] as u64, wait.get(), "wait");
                    prop_assert_eq!(reply[2], 0, "not a cooldown");
                    prop_assert_eq!(reply[3] as usize, denied.index(), "refusing quota");
                }
            },
        }
    }
    Ok(())
}

#[test]
fn the_scripts_decide_exactly_as_the_in_memory_maths() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(server) = runtime.block_on(support::RedisServer::start()) else {
        return;
    };
    let con = std::cell::RefCell::new(
        redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap(),
    );
    let scripts = Scripts {
        admit: with_fake_clock(ADMIT),
        refund: with_fake_clock(REFUND),
    };
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::with_cases(256)
    });
    let case = std::cell::Cell::new(0u32);
    let strategy = (prop::collection::vec(spec(), 1..=3), steps());
    runner
        .run(&strategy, |(specs, steps)| {
            // A fresh Redis key per case (shrinking reruns get new ones too).
            case.set(case.get() + 1);
            let name = format!("model:{}", case.get());
            run_case(&mut con.borrow_mut(), &scripts, &name, &specs, &steps)
        })
        .unwrap();
}

#[test]
fn a_state_longer_than_one_unpack_decides_alike() {
    // Sliding windows of 32 buckets, one admission per bucket: a state of more than
    // 64 numbers, which the scripts read and write in slices.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(server) = runtime.block_on(support::RedisServer::start()) else {
        return;
    };
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let scripts = Scripts {
        admit: with_fake_clock(ADMIT),
        refund: with_fake_clock(REFUND),
    };
    let specs = [Spec(0, 100, 32_000_000, 1), Spec(0, 90, 31_000_000, 1)];
    let steps: Vec<Step> = (0..80)
        .map(|i| Step {
            advance: if i % 2 == 0 { 1_000_000 } else { 0 },
            cost: 1 + i % 3,
            refund: (i % 7 == 3).then_some(i as usize),
        })
        .collect();
    run_case(&mut con, &scripts, "long", &specs, &steps).unwrap();
    let state: Vec<u8> = redis::cmd("GET").arg("long").query(&mut con).unwrap();
    assert!(state.len() > 8 * 64, "{} bytes", state.len());
}

/// The scripts' own rules beyond the window maths, on a clock the test drives.
struct Driven {
    con: redis::Connection,
    admit: Script,
    cooldown: Script,
    _server: support::RedisServer,
    _runtime: tokio::runtime::Runtime,
}

impl Driven {
    fn start() -> Option<Self> {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let server = runtime.block_on(support::RedisServer::start())?;
        let con = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        Some(Driven {
            con,
            admit: with_fake_clock(ADMIT),
            cooldown: with_fake_clock(include_str!("lua/cooldown.lua")),
            _server: server,
            _runtime: runtime,
        })
    }

    /// Admits `cost` at `now` (µs) with the given hold and spacing: the script's reply.
    fn admit(
        &mut self,
        key: &str,
        quotas: &QuotaSet,
        cost: u32,
        hold: u64,
        spacing: u64,
        now: u64,
    ) -> Vec<i64> {
        let p = Params::new(quotas);
        let mut call = self.admit.key(key);
        call.arg((&p.request(cost, hold, spacing, false)[..], now));
        match call.invoke(&mut self.con).unwrap() {
            // Admitted with nothing to report: `now` alone.
            redis::Value::Int(at) => {
                assert_eq!(at as u64, now.max(at as u64));
                vec![1, at]
            }
            other => redis::from_redis_value(other).unwrap(),
        }
    }

    fn cooldown(&mut self, key: &str, delay: u64, now: u64) -> i64 {
        let mut call = self.cooldown.key(key);
        call.arg((delay, now));
        call.invoke(&mut self.con).unwrap()
    }

    fn pttl(&mut self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query(&mut self.con).unwrap()
    }
}

const SEC: u64 = 1_000_000;

fn one(quota: Quota) -> QuotaSet {
    QuotaSet::from(quota)
}

#[test]
fn a_clock_stepping_back_reopens_nothing_and_waits_count_from_the_real_time() {
    let Some(mut d) = Driven::start() else { return };
    let q = one(Quota::fixed(1, Duration::from_secs(10)).unwrap());
    let t = BASE - BASE % (10 * SEC);
    assert_eq!(d.admit("back", &q, 1, 0, 0, t + SEC)[0], 1);
    // The wall clock steps back 5 s: the key still remembers t + 1 s, and the wait is
    // counted from the clock as it reads now (the window ends at t + 10 s).
    let reply = d.admit("back", &q, 1, 0, 0, t - 4 * SEC);
    assert_eq!(reply[..2], [0, (14 * SEC) as i64]);
    assert_eq!(d.admit("back", &q, 1, 0, 0, t + 10 * SEC)[0], 1);
}

#[test]
fn a_cooldown_before_any_admission_survives_the_first_admission() {
    let Some(mut d) = Driven::start() else { return };
    let q = one(Quota::sliding(5, Duration::from_secs(1)).unwrap());
    assert_eq!(d.cooldown("cool", 3 * SEC, BASE), (3 * SEC) as i64);
    // The state lives as long as the cooldown (3,001 ms set); the TTL counts down on
    // Redis's real clock from then, so a loaded machine may read a few ms less.
    let ttl = d.pttl("cool");
    assert!((2_900..=3_001).contains(&ttl), "PTTL {ttl} ms");
    // Refused as throttled (flag 1), with the exact rest of the cooldown.
    assert_eq!(
        d.admit("cool", &q, 1, 0, 0, BASE + SEC),
        [0, (2 * SEC) as i64, 1, 0]
    );
    // A shorter cooldown does not shorten it.
    d.cooldown("cool", SEC, BASE + SEC);
    assert_eq!(
        d.admit("cool", &q, 1, 0, 0, BASE + 3 * SEC - 1)[..3],
        [0, 1, 1]
    );
    assert_eq!(d.admit("cool", &q, 1, 0, 0, BASE + 3 * SEC)[0], 1);
}

#[test]
fn a_hold_is_a_cooldown_and_a_full_window_beyond_it_is_not_throttling() {
    let Some(mut d) = Driven::start() else { return };
    let q = one(Quota::fixed(1, Duration::from_secs(10)).unwrap());
    let t = BASE - BASE % (10 * SEC);
    assert_eq!(
        d.admit("hold", &q, 1, 2 * SEC, 0, t),
        [0, (2 * SEC) as i64, 1, 0]
    );
    assert_eq!(d.admit("hold", &q, 1, 0, 0, t)[0], 1);
    // Full until t + 10 s; a hold of 2 s is not what keeps it: quota exceeded (flag 0).
    assert_eq!(
        d.admit("hold", &q, 1, 2 * SEC, 0, t + SEC),
        [0, (9 * SEC) as i64, 0, 0]
    );
}

#[test]
fn a_release_from_a_queue_spaces_every_later_admission_of_the_key() {
    let Some(mut d) = Driven::start() else { return };
    let q = one(Quota::sliding(100, Duration::from_secs(1)).unwrap());
    assert_eq!(d.admit("spaced", &q, 1, 0, 50_000, BASE)[0], 1);
    // Nobody (this worker or another) is admitted before BASE + 50 ms.
    assert_eq!(
        d.admit("spaced", &q, 1, 0, 0, BASE + 10_000)[..3],
        [0, 40_000, 0]
    );
    assert_eq!(d.admit("spaced", &q, 1, 0, 0, BASE + 50_000)[0], 1);
    assert_eq!(d.admit("spaced", &q, 1, 0, 0, BASE + 50_000)[0], 1);
}

#[test]
fn another_quota_set_restarts_the_windows_and_keeps_the_cooldown() {
    let Some(mut d) = Driven::start() else { return };
    let small = one(Quota::sliding(1, Duration::from_secs(60)).unwrap());
    let other = one(Quota::sliding(2, Duration::from_secs(60)).unwrap());
    assert_eq!(d.admit("sets", &small, 1, 0, 0, BASE)[0], 1);
    assert_eq!(d.admit("sets", &small, 1, 0, 0, BASE)[0], 0);
    assert_eq!(d.admit("sets", &other, 1, 0, 0, BASE)[0], 1);
    d.cooldown("sets", SEC, BASE);
    assert_eq!(
        d.admit("sets", &small, 1, 0, 0, BASE)[..3],
        [0, SEC as i64, 1]
    );
}

#[test]
fn an_admitted_state_expires_once_it_is_forgotten() {
    let Some(mut d) = Driven::start() else { return };
    let q = QuotaSet::new([
        Quota::sliding(5, Duration::from_secs(64)).unwrap(),
        Quota::smooth(1, Duration::from_secs(10))
            .unwrap()
            .burst(3)
            .unwrap(),
    ])
    .unwrap();
    assert_eq!(d.admit("ttl", &q, 1, 0, 0, BASE)[0], 1);
    // forget_after: the longest of W + g = 66 s and b·T = 30 s, plus 1 ms; the TTL is
    // twice that.
    let ttl = d.pttl("ttl");
    assert!((131_900..=132_002).contains(&ttl), "{ttl}");
    // While the recorded end is far enough, an admission keeps the TTL as it is (a
    // marker TTL survives it)...
    let () = redis::cmd("PEXPIRE")
        .arg("ttl")
        .arg(500_000)
        .query(&mut d.con)
        .unwrap();
    assert_eq!(d.admit("ttl", &q, 1, 0, 0, BASE + 10 * SEC)[0], 1);
    let ttl = d.pttl("ttl");
    assert!((499_000..=500_000).contains(&ttl), "{ttl}");
    // ...and once the state must outlive it (66 s from 70 s is past 132 s), the TTL
    // is set again.
    assert_eq!(d.admit("ttl", &q, 1, 0, 0, BASE + 70 * SEC)[0], 1);
    let ttl = d.pttl("ttl");
    assert!((131_900..=132_002).contains(&ttl), "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_data_under_a_key_fails_that_key_only() {
    use tollgate::key::Key;
    use tollgate::store::{Admission, QuotaAsk, QuotaStore};
    use tollgate::{Error, ErrorKind};

    async fn admit(store: &crate::RedisStore, key: &Key, quotas: &QuotaSet) -> Result<(), Error> {
        match store.admit(key, &QuotaAsk::new(quotas, 1)) {
            Admission::Ready(_) => Ok(()),
            Admission::Rejected(err) => Err(err),
            Admission::Wait(wait) => tokio::time::timeout(Duration::from_secs(5), wait)
                .await
                .expect("decided")
                .map(drop),
        }
    }

    let Some(server) = support::RedisServer::start().await else {
        return;
    };
    let store = server.store();
    let quotas = QuotaSet::from(Quota::sliding(5, Duration::from_secs(1)).unwrap());
    let (key, other) = (Key::from_static("foreign"), Key::from_static("fine"));
    let name = crate::keys::state_key(store.prefix(), &key, b'q');
    let mut conn = store.connection_manager().clone();

    // Another program's hash under the key's name: that key fails (by the policy),
    // Redis is not marked down, other keys go on.
    let () = redis::cmd("HSET")
        .arg(&name)
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = admit(&store, &key, &quotas).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StoreUnavailable);
    assert!(store.is_available());
    admit(&store, &other, &quotas).await.unwrap();

    // A string that is not a state of ours is replaced, not trusted.
    let () = redis::cmd("SET")
        .arg(&name)
        .arg("\u{1}garbage")
        .query_async(&mut conn)
        .await
        .unwrap();
    admit(&store, &key, &quotas).await.unwrap();
}

#[test]
fn a_state_that_is_not_one_of_ours_is_replaced_not_read() {
    let Some(mut d) = Driven::start() else { return };
    let q = one(Quota::fixed(1, Duration::from_secs(10)).unwrap());
    let sig = f64::from_le_bytes(Params::new(&q).set[..8].try_into().unwrap());
    let doubles =
        |numbers: &[f64]| -> Vec<u8> { numbers.iter().flat_map(|n| n.to_le_bytes()).collect() };
    let t = BASE - BASE % (10 * SEC);
    // Each would refuse for a long time if it were read: a window already full, an
    // odd count, a count past the end, a NaN time, a length not of whole doubles.
    let full = [
        sig,
        t as f64,
        0.0,
        0.0,
        0.0,
        2.0,
        (t / (10 * SEC)) as f64,
        1.0,
    ];
    for state in [
        doubles(&[sig, t as f64, 0.0, 0.0, 0.0, 3.0, 1.0, 1.0, 1.0]),
        doubles(&[sig, t as f64, 0.0, 0.0, 0.0, 4.0, 1.0, 1.0]),
        doubles(&[sig, f64::NAN, 0.0, 1e30, 0.0, 2.0, 1.0, 1.0]),
        [doubles(&full), vec![0]].concat(),
    ] {
        let () = redis::cmd("SET")
            .arg("foreign")
            .arg(state)
            .query(&mut d.con)
            .unwrap();
        assert_eq!(d.admit("foreign", &q, 1, 0, 0, t + SEC)[0], 1);
    }
    // The same numbers, well formed, are read: the window is full.
    let () = redis::cmd("SET")
        .arg("foreign")
        .arg(doubles(&full))
        .query(&mut d.con)
        .unwrap();
    assert_eq!(
        d.admit("foreign", &q, 1, 0, 0, t + SEC),
        [0, (9 * SEC) as i64, 0, 0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_leases_are_cleared_only_when_a_key_looks_full() {
    use tollgate::key::Key;
    use tollgate::store::{Admission, ConcurrencyStore, WaitPolicy};

    let Some(server) = support::RedisServer::start().await else {
        return;
    };
    let store = server.store();
    let key = Key::from_static("dead-leases");
    let name = crate::keys::state_key(store.prefix(), &key, b'c');
    let mut conn = store.connection_manager().clone();
    let count = |conn: &mut redis::aio::ConnectionManager| {
        let mut conn = conn.clone();
        let name = name.clone();
        async move {
            let all: u32 = redis::cmd("ZCARD")
                .arg(&name)
                .query_async(&mut conn)
                .await
                .unwrap();
            let live: u32 = redis::cmd("ZCOUNT")
                .arg(&name)
                .arg("(1000")
                .arg("+inf")
                .query_async(&mut conn)
                .await
                .unwrap();
            (all, live)
        }
    };
    // Two leases of a worker that died long ago (expired at 1 µs and 2 µs).
    let () = redis::cmd("ZADD")
        .arg(&name)
        .arg(1)
        .arg("dead-1")
        .arg(2)
        .arg("dead-2")
        .query_async(&mut conn)
        .await
        .map(|_: i64| ())
        .unwrap();
    async fn take(store: &crate::RedisStore, key: &Key) -> crate::RedisPermit {
        match store.acquire(key, 3, WaitPolicy::Reject) {
            Admission::Ready(permit) => permit,
            Admission::Wait(wait) => wait.await.expect("a slot"),
            Admission::Rejected(err) => panic!("refused: {err}"),
        }
    }
    // Below the limit the dead leases are not even looked at.
    let first = take(&store, &key).await;
    assert_eq!(count(&mut conn).await, (3, 1));
    // At the limit they are cleared, and the slot is granted.
    let second = take(&store, &key).await;
    assert_eq!(count(&mut conn).await, (2, 2));
    drop((first, second));
}

/// The batch script decides each admission exactly as the single script would, one
/// after the other at the batch's time: same answers, same states left behind. Random
/// batches of admissions (several per key, mixed costs, queue spacing, headers on or
/// off) on a few keys with a quota set of up to three windows; the same admissions run
/// one by one on a mirror of the keys.
#[test]
fn a_batch_decides_as_its_admissions_one_by_one() {
    use crate::scripts::ADMIT_BATCH;
    let Some(d) = Driven::start() else { return };
    let d = std::cell::RefCell::new(d);
    let batch = with_fake_clock(ADMIT_BATCH);
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::with_cases(64)
    });
    let admission = (0usize..3, 1u32..=4, prop::bool::ANY, 0u64..3);
    let strategy = (
        prop::collection::vec(spec(), 1..=3),
        prop::collection::vec(
            (0u64..3_000_000, prop::collection::vec(admission, 1..=8)),
            1..=12,
        ),
    );
    let case = std::cell::Cell::new(0u32);
    runner
        .run(&strategy, |(specs, batches)| {
            case.set(case.get() + 1);
            let quotas =
                QuotaSet::new(specs.iter().map(|s| s.quota(Duration::from_micros))).unwrap();
            let p = Params::new(&quotas);
            let name = |side: &str, k: usize| format!("batch:{}:{side}:{k}", case.get());
            let d = &mut *d.borrow_mut();
            let mut now = BASE;
            for (advance, admissions) in &batches {
                now += advance;
                let mut call = batch.prepare_invoke();
                for &(k, cost, report, spacing) in admissions {
                    call.key(name("b", k));
                    call.arg(&p.request(cost, 0, spacing * 100_000, report)[..]);
                }
                call.arg(now);
                let together: Vec<redis::Value> = call.invoke(&mut d.con).unwrap();
                prop_assert_eq!(together.len(), admissions.len());
                for (&(k, cost, report, spacing), answer) in admissions.iter().zip(together) {
                    let mut one = d.admit.key(name("a", k));
                    one.arg((&p.request(cost, 0, spacing * 100_000, report)[..], now));
                    let alone: redis::Value = one.invoke(&mut d.con).unwrap();
                    prop_assert_eq!(answer, alone);
                }
                for k in 0..3 {
                    let get = |side: &str, con: &mut redis::Connection| -> Option<Vec<u8>> {
                        redis::cmd("GET").arg(name(side, k)).query(con).unwrap()
                    };
                    let a = get("a", &mut d.con);
                    let b = get("b", &mut d.con);
                    prop_assert_eq!(a, b);
                }
            }
            Ok(())
        })
        .unwrap();
}
