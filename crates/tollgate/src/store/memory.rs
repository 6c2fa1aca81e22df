//! The in-memory store.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use super::table::{Fresh, Full, ShardGuard, Table};
use super::{Admission, ConcurrencyStore, WaitPolicy};
use crate::key::Key;
use crate::{Error, ErrorKind};

/// Limit state kept in this process's memory: the default store.
///
/// - **Sharing.** Cloning is cheap (one `Arc`) and clones share all state.
/// - **Concurrency.** The key table is split into shards (four per available CPU,
///   rounded up to a power of two) behind plain mutexes; a request hashes its key once,
///   locks one shard for a few hash-table operations, and never waits for another key's
///   requests.
/// - **No allocation on the hot path.** Admitting a request whose key fits inline (30
///   bytes, see [`Key`]) allocates nothing unless the shard's table must grow; waiting
///   in a queue allocates one small waiter record.
/// - **Eviction.** A key's entry is removed as soon as its state is indistinguishable
///   from a fresh one (no request in flight, nobody waiting), during normal operation:
///   there is no background task to schedule. An idle key therefore costs no memory.
/// - **`max_keys`** (default 1,000,000) bounds the number of keys held at once, against
///   key-cardinality attacks. When it is reached and no entry is fresh, a request for a
///   new key is refused with [`ErrorKind::TooManyKeys`] (on a server, `503`); keys
///   already held keep working. Refusing is the one choice that never breaks a limit:
///   evicting a live key would forget its in-flight requests.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    concurrency: Table<ConcState>,
}

impl MemoryStore {
    /// The default `max_keys`.
    pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

    /// An empty store holding at most [`MemoryStore::DEFAULT_MAX_KEYS`] keys.
    pub fn new() -> Self {
        Self::with_max_keys(Self::DEFAULT_MAX_KEYS)
    }

    /// An empty store holding at most `max_keys` keys per kind of state.
    pub fn with_max_keys(max_keys: usize) -> Self {
        MemoryStore {
            shared: Arc::new(Shared {
                concurrency: Table::new(max_keys),
            }),
        }
    }

    /// The number of keys whose state is held now.
    pub fn len(&self) -> usize {
        self.shared.concurrency.len()
    }

    /// Whether no key's state is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The concurrency state of `key` now, or `None` when it is fresh (not held).
    pub fn concurrency_snapshot(&self, key: &Key) -> Option<ConcurrencySnapshot> {
        let table = &self.shared.concurrency;
        let hash = table.hash(key);
        let mut shard = table.lock(hash);
        shard.get(hash, key).map(|state| ConcurrencySnapshot {
            in_flight: state.in_flight,
            waiting: state.waiters.len(),
            limit: state.limit,
        })
    }

    /// Whether `self` and `other` are clones of one store (share state).
    pub fn same_store(&self, other: &MemoryStore) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

/// A key's concurrency state at one moment, for operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConcurrencySnapshot {
    /// Requests holding a slot.
    pub in_flight: u32,
    /// Requests waiting for a slot.
    pub waiting: usize,
    /// The limit the latest request for this key was admitted under.
    pub limit: u32,
}

struct ConcState {
    in_flight: u32,
    limit: u32,
    waiters: VecDeque<Arc<Waiter>>,
}

impl Fresh for ConcState {
    fn is_fresh(&self) -> bool {
        self.in_flight == 0 && self.waiters.is_empty()
    }
}

impl ConcState {
    /// Hands free slots to waiters, first come first served. Returns the wakers to wake
    /// once the shard lock is released.
    fn grant_waiters(&mut self, wake: &mut Wakers) {
        while self.in_flight < self.limit {
            let Some(waiter) = self.waiters.pop_front() else {
                break;
            };
            self.in_flight += 1;
            wake.push(waiter.grant());
        }
    }

    /// Frees one slot: passes it to the first waiter if the limit allows.
    fn release(&mut self, wake: &mut Wakers) {
        debug_assert!(self.in_flight > 0, "released more slots than granted");
        self.in_flight -= 1;
        self.grant_waiters(wake);
    }
}

/// At most one waker is woken per release; no allocation for the common case.
#[derive(Default)]
struct Wakers(Option<Waker>, Vec<Waker>);

impl Wakers {
    fn push(&mut self, waker: Option<Waker>) {
        if let Some(waker) = waker {
            if self.0.is_none() {
                self.0 = Some(waker);
            } else {
                self.1.push(waker);
            }
        }
    }

    fn wake(self) {
        if let Some(w) = self.0 {
            w.wake();
        }
        self.1.into_iter().for_each(Waker::wake);
    }
}

struct Waiter {
    state: Mutex<WaiterState>,
}

enum WaiterState {
    Waiting(Option<Waker>),
    Granted,
}

impl Waiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, WaiterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the waiter as owning a slot; called with the shard locked.
    fn grant(&self) -> Option<Waker> {
        match std::mem::replace(&mut *self.lock(), WaiterState::Granted) {
            WaiterState::Waiting(waker) => waker,
            WaiterState::Granted => None,
        }
    }
}

fn release_slot(shared: &Shared, hash: u64, key: &Key) {
    let table = &shared.concurrency;
    let mut wake = Wakers::default();
    {
        let mut shard = table.lock(hash);
        match shard.get(hash, key) {
            Some(state) => state.release(&mut wake),
            None => debug_assert!(false, "permit for a key with no state"),
        }
        shard.remove_if_fresh(hash, key);
    }
    wake.wake();
}

impl ConcurrencyStore for MemoryStore {
    type Permit = MemoryPermit;
    type Acquire = MemoryAcquire;

    fn acquire(
        &self,
        key: &Key,
        limit: u32,
        policy: WaitPolicy,
    ) -> Admission<MemoryPermit, MemoryAcquire> {
        if limit == 0 {
            return Admission::Rejected(
                Error::new(ErrorKind::ConcurrencyLimited).with_key(key.id()),
            );
        }
        let table = &self.shared.concurrency;
        let hash = table.hash(key);
        let mut shard = table.lock(hash);
        let mut wake = Wakers::default();
        let admission = match self.acquire_locked(&mut shard, hash, key, limit, policy, &mut wake) {
            Ok(admission) => admission,
            Err(Full) => {
                drop(shard);
                table.sweep_all();
                shard = table.lock(hash);
                match self.acquire_locked(&mut shard, hash, key, limit, policy, &mut wake) {
                    Ok(admission) => admission,
                    Err(Full) => {
                        Admission::Rejected(Error::new(ErrorKind::TooManyKeys).with_key(key.id()))
                    }
                }
            }
        };
        drop(shard);
        wake.wake();
        admission
    }
}

impl MemoryStore {
    fn acquire_locked(
        &self,
        shard: &mut ShardGuard<'_, ConcState>,
        hash: u64,
        key: &Key,
        limit: u32,
        policy: WaitPolicy,
        wake: &mut Wakers,
    ) -> Result<Admission<MemoryPermit, MemoryAcquire>, Full> {
        let state = shard.get_or_insert(hash, key, || ConcState {
            in_flight: 0,
            limit,
            waiters: VecDeque::new(),
        })?;
        if state.limit != limit {
            state.limit = limit;
            // A raised limit may let waiters in before this request.
            state.grant_waiters(wake);
        }
        if state.waiters.is_empty() && state.in_flight < state.limit {
            state.in_flight += 1;
            return Ok(Admission::Ready(MemoryPermit {
                shared: Arc::clone(&self.shared),
                key: key.clone(),
                hash,
            }));
        }
        let rejected = match policy {
            WaitPolicy::Reject => ErrorKind::ConcurrencyLimited,
            WaitPolicy::Queue { max_queue } if state.waiters.len() >= max_queue => {
                ErrorKind::QueueFull
            }
            WaitPolicy::Queue { .. } => {
                let waiter = Arc::new(Waiter {
                    state: Mutex::new(WaiterState::Waiting(None)),
                });
                state.waiters.push_back(Arc::clone(&waiter));
                return Ok(Admission::Wait(MemoryAcquire {
                    shared: Arc::clone(&self.shared),
                    key: key.clone(),
                    hash,
                    waiter: Some(waiter),
                }));
            }
        };
        Ok(Admission::Rejected(Error::new(rejected).with_key(key.id())))
    }
}

/// A slot of a key in a [`MemoryStore`]; dropping it frees the slot.
pub struct MemoryPermit {
    shared: Arc<Shared>,
    key: Key,
    hash: u64,
}

impl Drop for MemoryPermit {
    fn drop(&mut self) {
        release_slot(&self.shared, self.hash, &self.key);
    }
}

impl fmt::Debug for MemoryPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPermit")
            .field("key", &self.key.id())
            .finish()
    }
}

/// A place in a key's wait queue of a [`MemoryStore`]. Resolves to a permit when a slot
/// is handed over; dropping it leaves the queue (or passes on a slot handed over but
/// not yet collected).
pub struct MemoryAcquire {
    shared: Arc<Shared>,
    key: Key,
    hash: u64,
    /// `None` once the permit has been handed out.
    waiter: Option<Arc<Waiter>>,
}

impl Future for MemoryAcquire {
    type Output = Result<MemoryPermit, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(waiter) = &self.waiter else {
            panic!("MemoryAcquire polled after completion");
        };
        {
            let mut state = waiter.lock();
            match &mut *state {
                WaiterState::Granted => {}
                WaiterState::Waiting(waker) => {
                    match waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
            }
        }
        self.waiter = None;
        Poll::Ready(Ok(MemoryPermit {
            shared: Arc::clone(&self.shared),
            key: self.key.clone(),
            hash: self.hash,
        }))
    }
}

impl Drop for MemoryAcquire {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let table = &self.shared.concurrency;
        let mut wake = Wakers::default();
        {
            let mut shard = table.lock(self.hash);
            // Grants happen under the shard lock, so this read cannot race one.
            let granted = matches!(*waiter.lock(), WaiterState::Granted);
            if let Some(state) = shard.get(self.hash, &self.key) {
                if granted {
                    state.release(&mut wake);
                } else if let Some(at) = state.waiters.iter().position(|w| Arc::ptr_eq(w, &waiter))
                {
                    state.waiters.remove(at);
                }
            }
            shard.remove_if_fresh(self.hash, &self.key);
        }
        wake.wake();
    }
}

impl fmt::Debug for MemoryAcquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAcquire")
            .field("key", &self.key.id())
            .field("done", &self.waiter.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::{assert_pending, assert_ready_ok, task};

    const QUEUE: WaitPolicy = WaitPolicy::Queue { max_queue: 8 };

    fn ready(a: Admission<MemoryPermit, MemoryAcquire>) -> MemoryPermit {
        match a {
            Admission::Ready(p) => p,
            other => panic!("expected a permit, got {other:?}"),
        }
    }

    fn wait(a: Admission<MemoryPermit, MemoryAcquire>) -> MemoryAcquire {
        match a {
            Admission::Wait(w) => w,
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    fn rejected(a: Admission<MemoryPermit, MemoryAcquire>) -> ErrorKind {
        match a {
            Admission::Rejected(e) => e.kind(),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn permits_are_capped_per_key_and_keys_are_independent() {
        let store = MemoryStore::new();
        let (a, b) = (Key::from_static("a"), Key::from_static("b"));
        let p1 = ready(store.acquire(&a, 2, WaitPolicy::Reject));
        let _p2 = ready(store.acquire(&a, 2, WaitPolicy::Reject));
        assert_eq!(
            rejected(store.acquire(&a, 2, WaitPolicy::Reject)),
            ErrorKind::ConcurrencyLimited
        );
        let _pb = ready(store.acquire(&b, 2, WaitPolicy::Reject));
        drop(p1);
        let _p3 = ready(store.acquire(&a, 2, WaitPolicy::Reject));
    }

    #[test]
    fn idle_keys_are_evicted_at_once() {
        let store = MemoryStore::new();
        let a = Key::from_static("a");
        let p = ready(store.acquire(&a, 1, WaitPolicy::Reject));
        assert_eq!(store.len(), 1);
        let snap = store.concurrency_snapshot(&a).unwrap();
        assert_eq!((snap.in_flight, snap.waiting, snap.limit), (1, 0, 1));
        drop(p);
        assert_eq!(store.len(), 0);
        assert!(store.concurrency_snapshot(&a).is_none());
    }

    #[test]
    fn waiters_are_served_in_order_and_new_requests_queue_behind_them() {
        let store = MemoryStore::new();
        let a = Key::from_static("a");
        let p = ready(store.acquire(&a, 1, QUEUE));
        let mut w1 = task::spawn(wait(store.acquire(&a, 1, QUEUE)));
        let mut w2 = task::spawn(wait(store.acquire(&a, 1, QUEUE)));
        assert_pending!(w1.poll());
        assert_pending!(w2.poll());
        drop(p);
        assert!(w1.is_woken());
        assert!(!w2.is_woken());
        let p1 = assert_ready_ok!(w1.poll());
        assert_pending!(w2.poll());
        // A newcomer does not overtake w2, even in the instant a slot is free.
        drop(p1);
        assert_eq!(
            rejected(store.acquire(&a, 1, WaitPolicy::Reject)),
            ErrorKind::ConcurrencyLimited
        );
        let p2 = assert_ready_ok!(w2.poll());
        drop(p2);
        assert!(store.is_empty());
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_queue_and_passes_on_a_granted_slot() {
        let store = MemoryStore::new();
        let a = Key::from_static("a");
        let p = ready(store.acquire(&a, 1, QUEUE));
        let w1 = wait(store.acquire(&a, 1, QUEUE));
        let mut w2 = task::spawn(wait(store.acquire(&a, 1, QUEUE)));
        let mut w3 = task::spawn(wait(store.acquire(&a, 1, QUEUE)));
        assert_pending!(w2.poll());
        assert_pending!(w3.poll());
        drop(w2); // cancelled while waiting
        assert_eq!(store.concurrency_snapshot(&a).unwrap().waiting, 2);
        drop(p); // granted to w1...
        drop(w1); // ...which is cancelled before collecting it: w3 gets it
        assert!(w3.is_woken());
        let p3 = assert_ready_ok!(w3.poll());
        assert_eq!(store.concurrency_snapshot(&a).unwrap().in_flight, 1);
        drop(p3);
        assert!(store.is_empty());
    }

    #[test]
    fn the_queue_is_bounded() {
        let store = MemoryStore::new();
        let a = Key::from_static("a");
        let policy = WaitPolicy::Queue { max_queue: 1 };
        let _p = ready(store.acquire(&a, 1, policy));
        let _w = wait(store.acquire(&a, 1, policy));
        assert_eq!(rejected(store.acquire(&a, 1, policy)), ErrorKind::QueueFull);
    }

    #[test]
    fn a_zero_limit_refuses_without_keeping_state() {
        let store = MemoryStore::new();
        let a = Key::from_static("a");
        assert_eq!(
            rejected(store.acquire(&a, 0, QUEUE)),
            ErrorKind::ConcurrencyLimited
        );
        assert!(store.is_empty());
    }

    #[test]
    fn raising_the_limit_admits_waiters_first() {
        let store = MemoryStore::new();
        let a = Key::from_static("a");
        let _p = ready(store.acquire(&a, 1, QUEUE));
        let mut w = task::spawn(wait(store.acquire(&a, 1, QUEUE)));
        assert_pending!(w.poll());
        // The limit is raised to 2: the waiter gets the new slot, the newcomer queues.
        let newcomer = store.acquire(&a, 2, WaitPolicy::Reject);
        assert!(w.is_woken());
        let _pw = assert_ready_ok!(w.poll());
        assert_eq!(rejected(newcomer), ErrorKind::ConcurrencyLimited);
    }

    #[test]
    fn max_keys_refuses_new_keys_but_serves_held_ones() {
        let store = MemoryStore::with_max_keys(2);
        let keys: Vec<Key> = (0..3u32).map(Key::from).collect();
        let p0 = ready(store.acquire(&keys[0], 1, QUEUE));
        let _p1 = ready(store.acquire(&keys[1], 2, QUEUE));
        assert_eq!(
            rejected(store.acquire(&keys[2], 1, QUEUE)),
            ErrorKind::TooManyKeys
        );
        let _p1b = ready(store.acquire(&keys[1], 2, QUEUE));
        drop(p0); // key 0 becomes fresh and is evicted: room for key 2
        let _p2 = ready(store.acquire(&keys[2], 1, QUEUE));
        assert_eq!(store.len(), 2);
    }
}
