//! [`QuotaStore`] for [`RedisStore`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use redis::{FromRedisValue, Value};
use tokio::time::Instant;
use tollgate::key::Key;
use tollgate::quota::{Quota, WindowKind};
use tollgate::store::{
    Admission, QuotaAsk, QuotaGrant, QuotaSet, QuotaStore, QuotaUsage, WaitPolicy,
};
use tollgate::{Error, ErrorKind};

use crate::batch::Call;
use crate::keys;
use crate::queue::Place;
use crate::scripts::SCRIPTS;
use crate::store::{FailurePolicy, RedisStore, Shared, StoreFailure, micros_up};

/// Grants not made by Redis have the top bit of `admitted_at` set (Redis's are
/// nanoseconds since the Unix epoch: below 2^63 until 2262; the fallback store's are
/// nanoseconds since it was made).
const LOCAL: u64 = 1 << 63;
/// A grant of [`FailurePolicy::FailOpen`]: nothing to refund.
const OPEN: u64 = LOCAL | (1 << 62);

/// A quota set as the scripts take it: microseconds, rounded up (never more
/// permissive than the nanosecond maths of `tollgate::quota`).
pub(crate) struct Params {
    /// The set's signature, then five numbers per quota (kind, limit, capacity,
    /// window, step), all as little-endian `f64`s (exact: all are below 2^53), which
    /// the scripts read without parsing decimals (see `lua/windows.lua`).
    pub(crate) set: Vec<u8>,
    /// How long the state matters after an admission (µs).
    pub(crate) forget: u64,
}

impl Params {
    pub(crate) fn new(quotas: &QuotaSet) -> Self {
        let mut set = Vec::with_capacity(8 + 40 * quotas.len());
        set.extend_from_slice(&[0; 8]);
        let mut forget = 0;
        for quota in quotas.iter() {
            let window = micros_up(quota.window());
            let (kind, step) = match quota.kind() {
                WindowKind::Fixed => (2, window),
                WindowKind::Smooth => (3, micros_up(quota.interval().unwrap_or_default())),
                // Sliding, and any kind added later: counted as sliding, the strictest.
                _ => (
                    1,
                    micros_up(
                        quota
                            .granularity()
                            .unwrap_or(quota.window() / Quota::SLIDING_BUCKETS),
                    ),
                ),
            };
            let step = step.max(1);
            let cap = u64::from(quota.capacity());
            forget = forget.max(match kind {
                1 => window + step,
                2 => window,
                _ => cap * step,
            });
            for n in [kind, u64::from(quota.limit()), cap, window, step] {
                set.extend_from_slice(&double(n));
            }
        }
        let sig = signature(&set[8..]);
        set[..8].copy_from_slice(&double(sig));
        Params { set, forget }
    }

    /// The admission script's one argument: the request (cost, hold, spacing, report,
    /// forget), then the set.
    pub(crate) fn request(&self, cost: u32, hold: u64, spacing: u64, report: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.set.len());
        for n in [
            u64::from(cost),
            hold,
            spacing,
            u64::from(report),
            self.forget,
        ] {
            out.extend_from_slice(&double(n));
        }
        out.extend_from_slice(&self.set);
        out
    }
}

/// A quota set's signature in a key's state: a 52-bit FNV-1a hash of its quotas'
/// bytes, never 0 (a state made by a cooldown alone has signature 0), exact as an
/// `f64`. Stored in place of the set's own bytes, which the script would have to cut
/// out of the state and compare as a string on every admission (see
/// `lua/windows.lua`). Two different sets used on one key collide with probability
/// 2^-52; the set's windows would then be read as the other's.
fn signature(quotas: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in quotas {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash >> 12) | 1
}

/// `n` as the little-endian double Lua's `struct.unpack('<d')` reads (exact below
/// 2^53, which every number of a quota or a request is).
fn double(n: u64) -> [u8; 8] {
    (n as f64).to_le_bytes()
}

enum Reply {
    Admitted(QuotaGrant),
    Refused {
        wait: Duration,
        throttled: bool,
        index: usize,
    },
    Never(usize),
}

/// `quota` with its limit (and burst) divided among `fleet` processes, at least 1.
fn share(quota: &Quota, fleet: u32) -> Quota {
    let part = |n: u32| (n / fleet).max(1);
    let scaled = match quota.kind() {
        WindowKind::Sliding => Quota::sliding(part(quota.limit()), quota.window()),
        WindowKind::Fixed => Quota::fixed(part(quota.limit()), quota.window()),
        WindowKind::Smooth => Quota::smooth(part(quota.limit()), quota.window())
            .and_then(|q| q.burst(part(quota.capacity()))),
        _ => Ok(*quota),
    };
    scaled.unwrap_or(*quota)
}

fn share_set(quotas: &QuotaSet, fleet: u32) -> QuotaSet {
    QuotaSet::new(quotas.iter().map(|q| share(q, fleet))).unwrap_or_else(|_| quotas.clone())
}

/// What a request asks, owned, for the wait.
struct Request {
    store: RedisStore,
    key: Key,
    name: Arc<[u8]>,
    quotas: QuotaSet,
    params: Params,
    cost: u32,
    report: bool,
    policy: WaitPolicy,
    max_wait: Duration,
    spacing: Duration,
    deadline: Instant,
}

impl RedisStore {
    async fn admit_script(&self, req: &Request, queued: bool) -> Result<Reply, StoreFailure> {
        let shared = &self.shared;
        let spacing = if queued { micros_up(req.spacing) } else { 0 };
        let request = req
            .params
            .request(req.cost, shared.hold(&req.name), spacing, req.report);
        let reply = shared.call(&req.name, Call::Quota(request)).await?;
        let reply: Vec<i64> = match reply {
            // Admitted, nothing reported: the script answers `now` alone.
            Value::Int(now) => {
                let at = now.max(0) as u64;
                return Ok(Reply::Admitted(QuotaGrant::new(
                    at.saturating_mul(1000),
                    req.cost,
                )));
            }
            other => Vec::from_redis_value(other).map_err(|err| StoreFailure::Redis(err.into()))?,
        };
        let num = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok(match reply.first() {
            Some(1) => {
                let mut grant = QuotaGrant::new(num(1).saturating_mul(1000), req.cost);
                if req.report {
                    for index in 0..req.quotas.len() {
                        let usage = QuotaUsage {
                            remaining: u32::try_from(num(2 + 2 * index)).unwrap_or(u32::MAX),
                            reset_after: Duration::from_micros(num(3 + 2 * index)),
                        };
                        grant.set_usage(index, usage);
                    }
                }
                Reply::Admitted(grant)
            }
            Some(2) => Reply::Never(num(1) as usize),
            _ => Reply::Refused {
                wait: Duration::from_micros(num(1).max(1)),
                throttled: num(2) == 1,
                index: num(3) as usize,
            },
        })
    }

    /// The answer of the failure policy, for a request Redis cannot decide.
    fn degraded(
        &self,
        req: &Request,
        failure: StoreFailure,
    ) -> Admission<QuotaGrant, RedisQuotaAcquire> {
        tracing::debug!(target: "tollgate::redis", key = %req.key.id(), policy = ?self.shared.policy, error = %failure, decision = "degraded");
        match self.shared.policy {
            FailurePolicy::FailOpen => Admission::Ready(QuotaGrant::new(OPEN, req.cost)),
            FailurePolicy::Fallback { fleet_size } => {
                let quotas = share_set(&req.quotas, fleet_size.get());
                let mut ask = QuotaAsk::new(&quotas, req.cost).report(req.report);
                if let WaitPolicy::Queue { max_queue } = req.policy {
                    let left = req.deadline.saturating_duration_since(Instant::now());
                    ask = ask.wait(max_queue, left.min(req.max_wait), req.spacing);
                }
                match self.shared.fallback.admit(&req.key, &ask) {
                    Admission::Ready(grant) => Admission::Ready(local_grant(&grant)),
                    Admission::Rejected(err) => Admission::Rejected(err),
                    Admission::Wait(wait) => {
                        Admission::Wait(RedisQuotaAcquire(Box::pin(async move {
                            wait.await.map(|grant| local_grant(&grant))
                        })))
                    }
                }
            }
            FailurePolicy::FailClosed => {
                Admission::Rejected(Shared::unavailable(req.key.id(), failure))
            }
        }
    }

    async fn degraded_wait(
        &self,
        req: &Request,
        failure: StoreFailure,
    ) -> Result<QuotaGrant, Error> {
        match self.degraded(req, failure) {
            Admission::Ready(grant) => Ok(grant),
            Admission::Rejected(err) => Err(err),
            Admission::Wait(wait) => wait.await,
        }
    }
}

fn local_grant(grant: &QuotaGrant) -> QuotaGrant {
    let mut tagged = QuotaGrant::new(grant.admitted_at() | LOCAL, grant.cost());
    for (index, usage) in grant.usage().iter().enumerate() {
        tagged.set_usage(index, *usage);
    }
    tagged
}

impl Request {
    /// `queued`: the request joined its queue behind others. Such a request, or one
    /// refused at least once, is released from a queue: the spacing applies after it.
    async fn run(self, mut place: Option<Place>, mut queued: bool) -> Result<QuotaGrant, Error> {
        let store = &self.store;
        loop {
            if let Some(place) = &place {
                place.turn().await;
            }
            if !store.shared.available() {
                drop(place.take());
                return store.degraded_wait(&self, StoreFailure::Down).await;
            }
            match store.admit_script(&self, queued).await {
                Ok(Reply::Admitted(grant)) => {
                    tracing::trace!(target: "tollgate::redis", key = %self.key.id(), cost = self.cost, decision = "admitted");
                    return Ok(grant);
                }
                Ok(Reply::Never(index)) => return Err(Error::cost_too_high(self.key.id(), index)),
                Ok(Reply::Refused {
                    wait,
                    throttled,
                    index,
                }) => {
                    let Some(waiting) = &place else {
                        return Err(Error::quota_refused(
                            self.key.id(),
                            index,
                            Instant::now(),
                            wait,
                            throttled,
                        ));
                    };
                    let at = Instant::now() + wait;
                    if at > self.deadline {
                        return Err(Error::new(ErrorKind::WaitExceeded)
                            .with_key(self.key.id())
                            .with_retry_after(Instant::now(), wait));
                    }
                    queued = true;
                    waiting.nap(at).await;
                }
                Err(failure) => {
                    drop(place.take());
                    return store.degraded_wait(&self, failure).await;
                }
            }
        }
    }
}

/// The wait for an admission by a [`RedisStore`]: one round trip in reject mode; in
/// wait mode, a place in this process's FIFO queue for the key, whose head retries at
/// the exact time Redis named. Dropping it gives the place up and consumes nothing.
pub struct RedisQuotaAcquire(Pin<Box<dyn Future<Output = Result<QuotaGrant, Error>> + Send>>);

impl Future for RedisQuotaAcquire {
    type Output = Result<QuotaGrant, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for RedisQuotaAcquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQuotaAcquire").finish_non_exhaustive()
    }
}

impl QuotaStore for RedisStore {
    type Acquire = RedisQuotaAcquire;

    fn admit(&self, key: &Key, ask: &QuotaAsk<'_>) -> Admission<QuotaGrant, RedisQuotaAcquire> {
        if ask.cost > ask.quotas.capacity() {
            let index = ask
                .quotas
                .iter()
                .position(|q| q.capacity() < ask.cost)
                .unwrap_or(0);
            return Admission::Rejected(Error::cost_too_high(key.id(), index));
        }
        let now = Instant::now();
        let name: Arc<[u8]> = keys::state_key(&self.shared.prefix, key, b'q').into();
        let req = Request {
            store: self.clone(),
            key: key.clone(),
            name,
            quotas: ask.quotas.clone(),
            params: Params::new(ask.quotas),
            cost: ask.cost,
            report: ask.report,
            policy: ask.policy,
            max_wait: ask.max_wait,
            spacing: ask.spacing,
            deadline: now.checked_add(ask.max_wait).unwrap_or(now + FAR),
        };
        if !self.shared.available() {
            return self.degraded(&req, StoreFailure::Down);
        }
        let place = match ask.policy {
            WaitPolicy::Reject => None,
            WaitPolicy::Queue { max_queue } => {
                match self.shared.queues.join(&req.name, max_queue) {
                    Some(place) => Some(place),
                    None => {
                        return Admission::Rejected(
                            Error::new(ErrorKind::QueueFull).with_key(key.id()),
                        );
                    }
                }
            }
        };
        let queued = place.as_ref().is_some_and(|p| !p.is_head());
        Admission::Wait(RedisQuotaAcquire(Box::pin(req.run(place, queued))))
    }

    fn refund(&self, key: &Key, quotas: &QuotaSet, grant: &QuotaGrant) {
        let at = grant.admitted_at();
        if at & OPEN == OPEN {
            return;
        }
        if at & LOCAL != 0 {
            if let FailurePolicy::Fallback { fleet_size } = self.shared.policy {
                let quotas = share_set(quotas, fleet_size.get());
                let grant = QuotaGrant::new(at & !LOCAL, grant.cost());
                self.shared.fallback.refund(key, &quotas, &grant);
            }
            return;
        }
        let store = self.clone();
        let name = keys::state_key(&self.shared.prefix, key, b'q');
        let params = Params::new(quotas);
        let args = (at / 1000, grant.cost(), params.set);
        self.shared.handle.spawn(async move {
            let shared = &store.shared;
            let done: Result<i64, _> = shared.eval(&SCRIPTS.refund, &name, args).await;
            if done.is_ok() {
                // The head of this process's queue for the key may fit now.
                shared.queues.kick(&name);
            }
        });
    }

    fn cooldown(&self, key: &Key, until: Instant) {
        let delay = until.saturating_duration_since(Instant::now());
        if delay.is_zero() {
            return;
        }
        let shared = &self.shared;
        let name = keys::state_key(&shared.prefix, key, b'q');
        shared.remember_cooldown(&name, until);
        if matches!(shared.policy, FailurePolicy::Fallback { .. }) {
            shared.fallback.cooldown(key, until);
        }
        let store = self.clone();
        shared.handle.spawn(async move {
            // Measured when sent, so that a busy runtime does not lengthen it.
            let delay = until.saturating_duration_since(Instant::now());
            let _: Result<i64, _> = store
                .shared
                .eval(&SCRIPTS.cooldown, &name, micros_up(delay).max(1))
                .await;
        });
    }

    fn cooldown_all(&self, until: Instant) {
        let delay = until.saturating_duration_since(Instant::now());
        if delay.is_zero() {
            return;
        }
        let shared = &self.shared;
        shared.remember_global(until);
        if matches!(shared.policy, FailurePolicy::Fallback { .. }) {
            shared.fallback.cooldown_all(until);
        }
        let store = self.clone();
        shared.handle.spawn(async move {
            let shared = &store.shared;
            let delay = until.saturating_duration_since(Instant::now());
            let _: Result<i64, _> = shared
                .eval(&SCRIPTS.global, &shared.global_key, micros_up(delay).max(1))
                .await;
        });
    }
}

/// Deadlines past `Instant` arithmetic are clamped to about 30 years.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_up_to_microseconds_and_sign_the_set() {
        let set = QuotaSet::new([
            Quota::sliding(35, Duration::from_secs(60)).unwrap(),
            Quota::smooth(3, Duration::from_secs(1))
                .unwrap()
                .burst(2)
                .unwrap(),
            Quota::fixed(5, Duration::from_nanos(1_000_001)).unwrap(),
        ])
        .unwrap();
        let p = Params::new(&set);
        let numbers: Vec<u64> = p
            .set
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as u64)
            .collect();
        assert_eq!(
            numbers[1..],
            [
                1, 35, 35, 60_000_000, 1_875_000, 3, 3, 2, 1_000_000, 333_334, 2, 5, 5, 1_001,
                1_001
            ]
        );
        // The signature: 52 bits, odd, exact as a double, and the set's own.
        let sig = numbers[0];
        assert_eq!(sig, signature(&p.set[8..]));
        assert!(sig % 2 == 1 && sig < 1 << 52);
        assert_eq!(
            f64::from_le_bytes(p.set[..8].try_into().unwrap()),
            sig as f64
        );
        let other = Params::new(&QuotaSet::from(
            Quota::sliding(36, Duration::from_secs(60)).unwrap(),
        ));
        assert_ne!(other.set[..8], p.set[..8]);
        assert_eq!(p.forget, 61_875_000);
        // The request, then the set.
        let request = p.request(2, 0, 7, true);
        assert_eq!(request[16..24], 7f64.to_le_bytes());
        assert_eq!(request[40..], p.set[..]);
    }

    #[test]
    fn a_fleet_share_divides_limits_and_bursts_but_keeps_one_unit() {
        let q = Quota::smooth(100, Duration::from_secs(10))
            .unwrap()
            .burst(10)
            .unwrap();
        let s = share(&q, 4);
        assert_eq!((s.limit(), s.capacity(), s.window()), (25, 2, q.window()));
        let s = share(&Quota::sliding(3, Duration::from_secs(1)).unwrap(), 8);
        assert_eq!(s.limit(), 1);
    }
}
