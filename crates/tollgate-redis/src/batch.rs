//! Admissions sent together: the quota admissions (and, in batches of their own, the
//! lease acquisitions) that are waiting to go out at the same moment share one
//! `EVALSHA`.
//!
//! With many admissions in flight, Redis's CPU bounds their rate, and a good part of
//! an admission's cost is fixed per call: the `EVALSHA` itself (parsing, the script
//! lookup, `KEYS` and `ARGV`), `TIME`, and the script's closures. So the store's
//! admissions go to one dispatcher task through a channel. The dispatcher keeps at
//! most [`CALLS_IN_FLIGHT`] (four) calls in flight on the one multiplexed
//! connection; each time a call slot is free, it takes every admission queued
//! meanwhile (up to the builder's
//! [`admission_batch`](crate::RedisStoreBuilder::admission_batch), 16 by default) and
//! sends them as one call of the batch script, which runs the admission script's
//! function once per admission, in order, on one reading of `TIME`. Below four calls
//! in flight nothing waits: an admission that finds nothing queued and a call slot
//! free goes out at once from its own task, as a call of the single script (no hop
//! through the dispatcher: one run of the bench put one-at-a-time rates at 54–71 %
//! of the baseline's for leases through the dispatcher, 78–85 % without). A batch forms only from admissions that queued while four calls
//! were in flight; they wait for the first of those to end, which is also when
//! Redis, serving the connection in order, would have reached them. (Without the
//! bound, on a multi-thread runtime the dispatcher wakes for every admission and
//! batches never form; measured by the tests in `tests/batches.rs`.)
//!
//! What a batch keeps of single calls:
//!
//! - **Each admission is decided alone**, atomically, exactly as if it were a call of
//!   its own made at the batch's `TIME`: a refusal or a never-fitting cost answers that
//!   admission only, and admissions of one key in one batch see each other's effects
//!   in queue order (FIFO per key holds).
//! - **Each admission fails alone.** The batch script runs each admission under
//!   `pcall`: a command error (another program's value of another type under a key)
//!   fails that admission, whose request gets the failure policy, and no other.
//! - **One round trip per admission**, at most: an admission is sent once, in one
//!   call, whether alone or with others; a batch is not retried as a whole after its
//!   scripts may have run.
//! - **Redis Cluster and proxies.** A batch names keys of several hash slots, which a
//!   Cluster node, or a proxy in front of a cluster, refuses with `CROSSSLOT` before
//!   running anything. On that answer the store sends the batch's admissions again
//!   one per call, and from then on batches only admissions of the same key. A proxy
//!   that refuses such scripts in another way needs `admission_batch(1)`.
//! - **Timeouts and failures** are per call, as before: a batch that times out gives
//!   each of its admissions a timeout, and marks Redis down once.
//!
//! A lease acquisition is batched the same way with the lease script's function
//! (`lua/lease_acquire.lua`); a batch holds calls of one kind. Measured in
//! `benches/benches/redis.rs` (32 admissions in flight on one connection); see the
//! crate docs for the figures.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use redis::{Script, ScriptInvocation, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::scripts::SCRIPTS;
use crate::store::{Shared, StoreFailure};

/// Calls of admissions in flight at once per store. Below it an admission goes out
/// at once; at it, admissions queue in the channel and leave together, in one call,
/// as soon as a call ends. Two would keep Redis busy (one call running, the next
/// queued behind it); four leave room for the network's latency.
const CALLS_IN_FLIGHT: usize = 4;

/// One admission waiting to go out: its key's name, what it asks, and where its
/// answer goes.
pub(crate) struct Pending {
    pub(crate) name: Arc<[u8]>,
    pub(crate) call: Call,
    pub(crate) reply: oneshot::Sender<Result<Value, StoreFailure>>,
}

/// What an admission asks: a batch holds calls of one kind.
pub(crate) enum Call {
    /// A quota admission: the admission script's one argument.
    Quota(Vec<u8>),
    /// A concurrency lease: its member, the limit and the lease's TTL as two doubles,
    /// the key's TTL in milliseconds (see `lua/lease_acquire.lua`).
    Lease {
        member: String,
        numbers: [u8; 16],
        key_ttl: String,
    },
}

impl Call {
    /// Calls of one kind go in one batch.
    fn kind(&self) -> u8 {
        match self {
            Call::Quota(_) => 0,
            Call::Lease { .. } => 1,
        }
    }

    /// The script for this call alone, and for a batch of calls of its kind.
    fn scripts(&self) -> (&'static Script, &'static Script) {
        match self {
            Call::Quota(_) => (&SCRIPTS.admit, &SCRIPTS.admit_batch),
            Call::Lease { .. } => (&SCRIPTS.lease_acquire, &SCRIPTS.lease_batch),
        }
    }

    fn args(&self, invocation: &mut ScriptInvocation<'_>) {
        match self {
            Call::Quota(arg) => {
                invocation.arg(&arg[..]);
            }
            Call::Lease {
                member,
                numbers,
                key_ttl,
            } => {
                invocation
                    .arg(member.as_str())
                    .arg(&numbers[..])
                    .arg(key_ttl.as_str());
            }
        }
    }
}

/// The store's side of the dispatcher: where admissions go.
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
    /// The call slots, shared with the dispatcher.
    calls: Arc<Semaphore>,
    /// Admissions sent to the dispatcher and not yet taken.
    queued: Arc<AtomicUsize>,
}

/// Runs `call` for the key `name`: in a batch with others when `batcher` is on, else
/// alone.
pub(crate) async fn run(
    store: &Shared,
    batcher: Option<&Batcher>,
    name: &Arc<[u8]>,
    call: Call,
) -> Result<Value, StoreFailure> {
    let Some(batcher) = batcher else {
        return alone(store, call.scripts().0, name, &call).await;
    };
    // Nothing queued and a call slot free: this call goes out from here at once,
    // without the two task hops through the dispatcher (a thread to wake on a
    // multi-thread runtime). The slot is held until the answer.
    if batcher.queued.load(Ordering::Relaxed) == 0 {
        if let Ok(_slot) = Arc::clone(&batcher.calls).try_acquire_owned() {
            return alone(store, call.scripts().0, name, &call).await;
        }
    }
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        name: Arc::clone(name),
        call,
        reply,
    };
    batcher.queued.fetch_add(1, Ordering::Relaxed);
    if let Err(mpsc::error::SendError(pending)) = batcher.tx.send(pending) {
        // The dispatcher is gone (its runtime is shutting down): alone, then.
        batcher.queued.fetch_sub(1, Ordering::Relaxed);
        return alone(store, pending.call.scripts().0, name, &pending.call).await;
    }
    // The dispatcher answers every call it takes, unless its runtime stops first.
    answer.await.unwrap_or(Err(StoreFailure::Down))
}

impl Batcher {
    /// Starts the dispatcher on the current runtime, for batches of up to `max`.
    pub(crate) fn start(shared: Weak<Shared>, max: usize) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let calls = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
        let queued = Arc::new(AtomicUsize::new(0));
        // Whether batches may mix keys: cleared for good by the first `CROSSSLOT`.
        let cross_key = Arc::new(AtomicBool::new(true));
        tokio::spawn(dispatch(
            shared,
            rx,
            max,
            Arc::clone(&calls),
            Arc::clone(&queued),
            cross_key,
        ));
        Batcher { tx, calls, queued }
    }
}

/// Takes what is queued, up to `max` at a time, and starts a call for it. Ends when
/// every store clone (and so every sender) is gone.
async fn dispatch(
    shared: Weak<Shared>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    max: usize,
    calls: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    cross_key: Arc<AtomicBool>,
) {
    let mut queued = Vec::with_capacity(max);
    loop {
        // A call slot first: while every slot is taken, admissions queue up and
        // leave together when one frees.
        let Ok(slot) = Arc::clone(&calls).acquire_owned().await else {
            return;
        };
        let slot = Arc::new(slot);
        let taken = rx.recv_many(&mut queued, max).await;
        if taken == 0 {
            return;
        }
        waiting.fetch_sub(taken, Ordering::Relaxed);
        let Some(store) = shared.upgrade() else {
            return;
        };
        let mut batch = std::mem::replace(&mut queued, Vec::with_capacity(max));
        let mixed_keys = cross_key.load(Ordering::Relaxed);
        // One call per kind (quotas, leases) and, once mixed keys were refused, per
        // key; in queue order within each.
        while !batch.is_empty() {
            let (kind, name) = (batch[0].call.kind(), Arc::clone(&batch[0].name));
            let (same, rest): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|p| p.call.kind() == kind && (mixed_keys || p.name == name));
            tokio::spawn(send(
                Arc::clone(&store),
                same,
                Arc::clone(&cross_key),
                Arc::clone(&slot),
            ));
            batch = rest;
        }
    }
}

/// Sends one batch and hands each admission its answer; `_slot` is its call slot,
/// freed when the call ends.
async fn send(
    store: Arc<Shared>,
    mut batch: Vec<Pending>,
    cross_key: Arc<AtomicBool>,
    _slot: Arc<OwnedSemaphorePermit>,
) {
    let (single, batched) = batch[0].call.scripts();
    if batch.len() == 1 {
        if let Some(one) = batch.pop() {
            let answer = alone(&store, single, &one.name, &one.call).await;
            let _ = one.reply.send(answer);
        }
        return;
    }
    let mut invocation = batched.prepare_invoke();
    for pending in &batch {
        invocation.key(&*pending.name);
        pending.call.args(&mut invocation);
    }
    let answer = match store.invoke::<Vec<Value>>(&invocation).await {
        Ok(values) if values.len() != batch.len() => {
            let detail = format!("{} answers for {} admissions", values.len(), batch.len());
            tracing::warn!(target: "tollgate::redis", detail, "a batch of admissions answered wrongly");
            Err(StoreFailure::Redis(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "a batch of admissions answered wrongly",
                detail,
            ))))
        }
        answer => answer,
    };
    match answer {
        Ok(values) => {
            for (pending, value) in batch.into_iter().zip(values) {
                let _ = pending.reply.send(own_answer(value));
            }
        }
        Err(StoreFailure::Redis(err)) if crossslot(&err) => {
            // Refused before anything ran: each again on its own, and no more mixed
            // batches.
            if cross_key.swap(false, Ordering::Relaxed) {
                tracing::info!(target: "tollgate::redis", "the server refuses scripts across hash slots: admissions are batched per key from now on");
            }
            for pending in batch {
                let answer = alone(&store, single, &pending.name, &pending.call).await;
                let _ = pending.reply.send(answer);
            }
        }
        Err(failure) => {
            // One failure for the call (already counted: Redis marked down if it
            // is); each admission gets its own copy of it.
            for pending in batch {
                let _ = pending.reply.send(Err(failure.clone()));
            }
        }
    }
}

/// One call on its own, with the single-call `script` of its kind.
async fn alone(
    store: &Shared,
    script: &Script,
    name: &[u8],
    call: &Call,
) -> Result<Value, StoreFailure> {
    let mut invocation = script.key(name);
    call.args(&mut invocation);
    store.invoke(&invocation).await
}

/// One admission's answer in a batch's: the admission script's own, or `{3,
/// message}` for an error that admission alone met (a failure for its request, which
/// marks nothing down, as the same error answered to a call of its own).
fn own_answer(value: Value) -> Result<Value, StoreFailure> {
    let failed = match &value {
        Value::Array(items) => match &items[..] {
            [Value::Int(3), message] => Some(message),
            _ => None,
        },
        _ => None,
    };
    if let Some(message) = failed {
        let message = match message {
            Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            other => format!("{other:?}"),
        };
        let err = redis::RedisError::from((
            redis::ErrorKind::Extension,
            "an admission's script failed",
            message,
        ));
        tracing::warn!(target: "tollgate::redis", error = %err, "redis refused a call");
        return Err(StoreFailure::Redis(err));
    }
    Ok(value)
}

/// A `CROSSSLOT` refusal: the keys of one call span several hash slots.
fn crossslot(err: &redis::RedisError) -> bool {
    err.code() == Some("CROSSSLOT")
}
