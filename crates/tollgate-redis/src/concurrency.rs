//! [`ConcurrencyStore`] for [`RedisStore`]: slots as leases with a server-time expiry.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use redis::FromRedisValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tollgate::key::Key;
use tollgate::store::{Admission, ConcurrencyFeedback, ConcurrencyStore, MemoryPermit, WaitPolicy};
use tollgate::{Error, ErrorKind};

use crate::batch::Call;
use crate::keys;
use crate::maintenance::Msg;
use crate::queue::Place;
use crate::store::{FailurePolicy, RedisStore, Shared, StoreFailure, micros_up};

/// The first pause of a waiting request between two tries; it doubles up to the
/// store's `max_poll_interval`.
const FIRST_POLL: Duration = Duration::from_millis(2);

/// A slot of a key in a [`RedisStore`]: a lease in Redis, renewed by the store's
/// background task while the permit lives. Dropping it releases the lease (in the
/// background: the drop never blocks and needs no runtime).
///
/// During a Redis outage a permit may instead hold a slot of the local fallback
/// store, or nothing at all ([`FailurePolicy::FailOpen`]).
///
/// # Adaptive limits
///
/// For a lease, the [`ConcurrencyFeedback`] methods do nothing: a learned limit would
/// have to be shared by the fleet to mean anything (one worker halving its own share
/// does not relieve a mailbox that four workers hit), and the layers pass the
/// configured limit on every request. Lower the configured limit (for example with
/// `limit_per_key`) to react fleet-wide. A permit of the local fallback store passes
/// the feedback on to it, so the per-process share adapts during an outage.
pub struct RedisPermit {
    inner: Held,
}

enum Held {
    Lease {
        name: Arc<[u8]>,
        id: u64,
        tx: mpsc::UnboundedSender<Msg>,
    },
    Local(MemoryPermit),
    Open,
}

impl ConcurrencyFeedback for RedisPermit {
    fn congested(&self) {
        if let Held::Local(permit) = &self.inner {
            permit.congested();
        }
    }

    fn succeeded(&self) {
        if let Held::Local(permit) = &self.inner {
            permit.succeeded();
        }
    }
}

impl Drop for RedisPermit {
    fn drop(&mut self) {
        if let Held::Lease { name, id, tx } = &self.inner {
            // The task is gone only with the runtime: the lease then expires by itself.
            let _ = tx.send(Msg::Released {
                key: Arc::clone(name),
                id: *id,
            });
        }
    }
}

impl fmt::Debug for RedisPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = match &self.inner {
            Held::Lease { .. } => "lease",
            Held::Local(_) => "local",
            Held::Open => "open",
        };
        f.debug_struct("RedisPermit")
            .field("held", &held)
            .finish_non_exhaustive()
    }
}

/// The wait for a slot of a [`RedisStore`]: one round trip in reject mode; in wait
/// mode, a place in this process's FIFO queue for the key, whose head polls Redis.
/// Dropping it gives the place up; a lease granted by a call still in flight is
/// released.
pub struct RedisAcquire(Pin<Box<dyn Future<Output = Result<RedisPermit, Error>> + Send>>);

impl Future for RedisAcquire {
    type Output = Result<RedisPermit, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for RedisAcquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAcquire").finish_non_exhaustive()
    }
}

/// Releases a lease whose acquisition was cut short (cancelled, timed out) in case
/// Redis granted it anyway.
struct Pending<'a> {
    shared: &'a Shared,
    name: &'a Arc<[u8]>,
    id: u64,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.shared.tx.send(Msg::Released {
                key: Arc::clone(self.name),
                id: self.id,
            });
        }
    }
}

struct Request {
    store: RedisStore,
    key: Key,
    name: Arc<[u8]>,
    limit: u32,
    policy: WaitPolicy,
}

enum Taken {
    Yes(RedisPermit),
    /// Full; the oldest lease expires after this.
    No(Duration),
}

impl RedisStore {
    async fn take_lease(&self, req: &Request) -> Result<Taken, StoreFailure> {
        let shared = &self.shared;
        let id = shared.lease_id();
        let mut pending = Pending {
            shared,
            name: &req.name,
            id,
            armed: true,
        };
        // See `lua/lease_acquire.lua`: numbers as doubles (no `strtod`), the key's TTL
        // as the string `PEXPIRE` takes (no formatting in the script).
        let ttl = micros_up(shared.lease_ttl);
        let mut numbers = [0; 16];
        numbers[..8].copy_from_slice(&f64::from(req.limit).to_le_bytes());
        numbers[8..].copy_from_slice(&(ttl as f64).to_le_bytes());
        let call = Call::Lease {
            member: shared.lease_member(id),
            numbers,
            key_ttl: (ttl.div_ceil(1000) + 1).to_string(),
        };
        let answer = shared.call(&req.name, call).await?;
        let wait = i64::from_redis_value(answer).map_err(|err| StoreFailure::Redis(err.into()))?;
        pending.armed = false;
        if wait == 0 {
            let key = Arc::clone(&req.name);
            let _ = shared.tx.send(Msg::Acquired { key, id });
            return Ok(Taken::Yes(RedisPermit {
                inner: Held::Lease {
                    name: Arc::clone(&req.name),
                    id,
                    tx: shared.tx.clone(),
                },
            }));
        }
        let expiry = wait.max(1) as u64;
        Ok(Taken::No(Duration::from_micros(expiry)))
    }

    fn degraded_acquire(
        &self,
        req: &Request,
        failure: StoreFailure,
    ) -> Admission<RedisPermit, RedisAcquire> {
        tracing::debug!(target: "tollgate::redis", key = %req.key.id(), policy = ?self.shared.policy, error = %failure, decision = "degraded");
        match self.shared.policy {
            FailurePolicy::FailOpen => Admission::Ready(RedisPermit { inner: Held::Open }),
            FailurePolicy::Fallback { fleet_size } => {
                let limit = (req.limit / fleet_size.get()).max(1);
                let local = |p| RedisPermit {
                    inner: Held::Local(p),
                };
                match self.shared.fallback.acquire(&req.key, limit, req.policy) {
                    Admission::Ready(p) => Admission::Ready(local(p)),
                    Admission::Rejected(err) => Admission::Rejected(err),
                    Admission::Wait(wait) => {
                        Admission::Wait(RedisAcquire(Box::pin(
                            async move { wait.await.map(local) },
                        )))
                    }
                }
            }
            FailurePolicy::FailClosed => {
                Admission::Rejected(Shared::unavailable(req.key.id(), failure))
            }
        }
    }
}

impl Request {
    async fn run(self, mut place: Option<Place>) -> Result<RedisPermit, Error> {
        let store = &self.store;
        let mut pause = FIRST_POLL;
        loop {
            if let Some(place) = &place {
                place.turn().await;
            }
            let outcome = if store.shared.available() {
                store.take_lease(&self).await
            } else {
                Err(StoreFailure::Down)
            };
            match outcome {
                Ok(Taken::Yes(permit)) => return Ok(permit),
                Ok(Taken::No(expiry)) => {
                    let Some(waiting) = &place else {
                        return Err(
                            Error::new(ErrorKind::ConcurrencyLimited).with_key(self.key.id())
                        );
                    };
                    waiting.nap(Instant::now() + pause.min(expiry)).await;
                    pause = (pause * 2).min(store.shared.max_poll);
                }
                Err(failure) => {
                    drop(place.take());
                    return match store.degraded_acquire(&self, failure) {
                        Admission::Ready(permit) => Ok(permit),
                        Admission::Rejected(err) => Err(err),
                        Admission::Wait(wait) => wait.await,
                    };
                }
            }
        }
    }
}

impl ConcurrencyStore for RedisStore {
    type Permit = RedisPermit;
    type Acquire = RedisAcquire;

    fn acquire(
        &self,
        key: &Key,
        limit: u32,
        policy: WaitPolicy,
    ) -> Admission<RedisPermit, RedisAcquire> {
        if limit == 0 {
            return Admission::Rejected(
                Error::new(ErrorKind::ConcurrencyLimited).with_key(key.id()),
            );
        }
        let req = Request {
            store: self.clone(),
            key: key.clone(),
            name: keys::state_key(&self.shared.prefix, key, b'c').into(),
            limit,
            policy,
        };
        if !self.shared.available() {
            return self.degraded_acquire(&req, StoreFailure::Down);
        }
        let place = match policy {
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
        Admission::Wait(RedisAcquire(Box::pin(req.run(place))))
    }
}
