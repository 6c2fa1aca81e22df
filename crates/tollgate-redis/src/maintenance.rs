//! The one background task of a store: renews the leases it holds, releases dropped
//! ones, and reads the global cooldown other workers may have set.
//!
//! Permits never talk to Redis themselves: dropping one sends a message here, so a
//! drop never blocks the dropping thread (nor needs a runtime). Releases are batched:
//! everything queued when the task wakes goes out in one pipeline, then the head of
//! this process's wait queue for each released key is woken.
//!
//! The task ends when the store and every permit are gone (the channel closes).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisError, Value};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::queue::Queues;
use crate::scripts::SCRIPTS;
use crate::store::micros_up;

pub(crate) enum Msg {
    /// A lease was taken: renew it until released.
    Acquired { key: Arc<[u8]>, id: u64 },
    /// A lease is given up (or an acquisition was abandoned mid-flight): remove it.
    Released { key: Arc<[u8]>, id: u64 },
}

pub(crate) struct Task {
    pub(crate) conn: ConnectionManager,
    pub(crate) rx: mpsc::UnboundedReceiver<Msg>,
    pub(crate) queues: Arc<Queues>,
    pub(crate) global: Arc<AtomicU64>,
    pub(crate) global_key: Vec<u8>,
    pub(crate) origin: Instant,
    pub(crate) timeout: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) global_refresh: Duration,
    pub(crate) nonce: u64,
}

/// The sorted-set member of lease `id` of the store with `nonce`.
pub(crate) fn member(nonce: u64, id: u64) -> String {
    format!("{nonce:016x}:{id:x}")
}

pub(crate) async fn run(mut task: Task) {
    let mut held: HashMap<Arc<[u8]>, HashSet<u64>> = HashMap::new();
    let mut renew = tokio::time::interval(task.lease_ttl / 3);
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(task.global_refresh);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = task.rx.recv() => {
                let Some(msg) = msg else { break };
                let mut released = Vec::new();
                let mut next = Some(msg);
                while let Some(msg) = next {
                    match msg {
                        Msg::Acquired { key, id } => {
                            held.entry(key).or_default().insert(id);
                        }
                        Msg::Released { key, id } => {
                            if let Some(ids) = held.get_mut(&key) {
                                ids.remove(&id);
                                if ids.is_empty() {
                                    held.remove(&key);
                                }
                            }
                            released.push((key, id));
                        }
                    }
                    next = task.rx.try_recv().ok();
                }
                task.release(&released).await;
            }
            _ = renew.tick() => task.renew(&held).await,
            _ = refresh.tick() => task.refresh_global().await,
        }
    }
}

impl Task {
    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                tracing::debug!(target: "tollgate::redis", what, error = %err, "background call failed");
                None
            }
            Err(_) => {
                tracing::debug!(target: "tollgate::redis", what, timeout = ?self.timeout, "background call timed out");
                None
            }
        }
    }

    async fn release(&self, released: &[(Arc<[u8]>, u64)]) {
        if released.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (key, id) in released {
            pipe.cmd("ZREM")
                .arg(&**key)
                .arg(member(self.nonce, *id))
                .ignore();
        }
        let mut conn = self.conn.clone();
        // A release that fails leaves the lease to expire after its TTL.
        let _: Option<()> = self.bounded("release", pipe.query_async(&mut conn)).await;
        for (key, _) in released {
            self.queues.kick(key);
        }
    }

    async fn renew(&self, held: &HashMap<Arc<[u8]>, HashSet<u64>>) {
        if held.is_empty() {
            return;
        }
        let ttl = micros_up(self.lease_ttl);
        let script = &SCRIPTS.lease_renew;
        let mut pipe = redis::pipe();
        for (key, ids) in held {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(script.get_hash()).arg(1).arg(&**key).arg(ttl);
            for id in ids {
                cmd.arg(member(self.nonce, *id));
            }
            pipe.add_command(cmd);
        }
        let mut conn = self.conn.clone();
        let mut reply: Option<Result<Vec<Value>, RedisError>> = self
            .bounded("renew", async { Ok(pipe.query_async(&mut conn).await) })
            .await;
        if let Some(Err(err)) = &reply {
            if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                // The server lost its scripts (restart, flush, failover): load, resend.
                reply = self
                    .bounded("renew", async {
                        script.prepare_invoke().load_async(&mut conn).await?;
                        Ok(pipe.query_async(&mut conn).await)
                    })
                    .await;
            }
        }
        match reply {
            Some(Ok(lost)) => {
                let lost: i64 = lost
                    .iter()
                    .map(|v| match v {
                        Value::Int(n) => *n,
                        _ => 0,
                    })
                    .sum();
                if lost > 0 {
                    tracing::warn!(target: "tollgate::redis", lost, "concurrency leases were gone at renewal (expired unrenewed, or Redis lost its data); put back");
                }
            }
            Some(Err(err)) => {
                tracing::debug!(target: "tollgate::redis", error = %err, "lease renewal failed");
            }
            None => {}
        }
    }

    async fn refresh_global(&self) {
        let mut conn = self.conn.clone();
        let mut invocation = SCRIPTS.global.key(&self.global_key);
        invocation.arg(0);
        let left: Option<u64> = self
            .bounded("global cooldown", invocation.invoke_async(&mut conn))
            .await;
        if let Some(left) = left.filter(|&left| left > 0) {
            let until = Instant::now() + Duration::from_micros(left);
            let local = micros_up(until.saturating_duration_since(self.origin));
            self.global.fetch_max(local, Ordering::Relaxed);
        }
    }
}
