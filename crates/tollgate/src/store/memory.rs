//! The in-memory store.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use std::time::Duration;

use tokio::time::Instant;

use super::memory_quota::QuotaEntry;
use super::table::{Fresh, Full, Table};
use super::{Admission, ConcurrencyStore, WaitPolicy};
use crate::key::{Key, KeyId};
use crate::{Error, ErrorKind};

/// Limit state kept in this process's memory: the default store.
///
/// - **Sharing.** Cloning is cheap (one `Arc`) and clones share all state.
/// - **Concurrency.** Keys live in a table split into shards (four per available CPU,
///   rounded up to a power of two) behind plain mutexes. Admitting a request locks one
///   shard just long enough to find the key's slot, then takes a place with one
///   compare-and-swap on the key's own atomic counter; releasing is one atomic
///   decrement on that counter and never touches the table. A key's wait queue has its
///   own lock, taken only when someone waits. One key never waits for another key's
///   requests.
/// - **No allocation on the hot path.** Admitting a request for a key already held
///   allocates nothing; a new key allocates its slot once, and waiting in a queue
///   allocates one small waiter record.
/// - **Eviction.** A key whose state is indistinguishable from fresh (nothing in
///   flight, nobody waiting, no permit or waiter referring to it) is removed by an
///   amortised sweep of its shard, run by an insert when the shard has doubled since
///   its last sweep; there is no background task to schedule. A small shard (under
///   2,048 entries) is swept at most once a second and spares the idle keys used since
///   its previous sweep, so that keys in steady rotation are not dropped and re-created
///   between their requests; a larger one drops every idle key at each sweep. A shard
///   therefore holds its live keys plus at most 2,048 idle ones, or about twice its live
///   keys when those are more. [`MemoryStore::evict_idle`] sweeps every shard at once,
///   with no second chances.
/// - **`max_keys`** (default 1,000,000) bounds the number of keys held at once, against
///   key-cardinality attacks. When it is reached, every shard is swept; if that frees
///   nothing, a request for a new key is refused with [`ErrorKind::TooManyKeys`] (on a
///   server, `503`) while keys already held keep working. Refusing is the one choice
///   that never breaks a limit: evicting a live key would forget its requests.
#[derive(Clone)]
pub struct MemoryStore {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    concurrency: Table<Arc<ConcSlot>>,
    pub(super) quota: Table<QuotaEntry>,
    /// The store's clock: nanoseconds since this instant.
    origin: Instant,
    /// A cooldown of every key (nanoseconds on the store's clock).
    pub(super) global_cooldown: AtomicU64,
}

impl Shared {
    /// `instant` on the store's clock.
    pub(super) fn nanos(&self, instant: Instant) -> u64 {
        crate::quota::nanos(instant.saturating_duration_since(self.origin))
    }

    /// A time on the store's clock as an `Instant` (clamped to about 30 years ahead).
    pub(super) fn instant(&self, nanos: u64) -> Instant {
        let far = Instant::now() + Duration::from_secs(86_400 * 365 * 30);
        self.origin
            .checked_add(Duration::from_nanos(nanos))
            .map_or(far, |at| at.min(far))
    }
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
                quota: Table::new(max_keys),
                origin: Instant::now(),
                global_cooldown: AtomicU64::new(0),
            }),
        }
    }

    /// The number of key states held now (concurrency and quota states count apart),
    /// idle ones not yet swept included.
    pub fn len(&self) -> usize {
        self.shared.concurrency.len() + self.shared.quota.len()
    }

    /// Whether no key's state is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the state of every key that is indistinguishable from fresh, now.
    ///
    /// Never needed for correctness or to bound memory (sweeps also run by themselves);
    /// useful to operators and tests that want [`len`](Self::len) to count live keys.
    pub fn evict_idle(&self) {
        self.shared.concurrency.sweep_all(0);
        let now = self.shared.nanos(Instant::now());
        self.shared.quota.sweep_all(now);
    }

    /// The concurrency state of `key` now, or `None` when the store holds none.
    pub fn concurrency_snapshot(&self, key: &Key) -> Option<ConcurrencySnapshot> {
        let table = &self.shared.concurrency;
        let hash = table.hash(key);
        let slot = Arc::clone(table.lock(hash).get(hash, key)?);
        let (in_flight, _) = split(slot.word.load(Ordering::Acquire));
        Some(ConcurrencySnapshot {
            in_flight,
            waiting: slot.lock_queue().len(),
            limit: slot.limit.load(Ordering::Relaxed),
            effective_limit: slot.effective(),
        })
    }

    /// Whether `self` and `other` are clones of one store (share state).
    pub fn same_store(&self, other: &MemoryStore) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The key's slot, inserted if absent; sweeps all shards once if the table is full.
    fn slot(&self, key: &Key) -> Result<Arc<ConcSlot>, Error> {
        let table = &self.shared.concurrency;
        let hash = table.hash(key);
        let make = || Arc::new(ConcSlot::default());
        if let Ok(slot) = table.lock(hash).get_or_insert(hash, key, 0, make) {
            return Ok(Arc::clone(slot));
        }
        table.sweep_all(0);
        match table.lock(hash).get_or_insert(hash, key, 0, make) {
            Ok(slot) => Ok(Arc::clone(slot)),
            Err(Full) => Err(Error::new(ErrorKind::TooManyKeys).with_key(key.id())),
        }
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
    /// The limit in force: `limit`, or lower after the server signalled congestion.
    pub effective_limit: u32,
}

/// One key's slots.
///
/// `word` packs the requests in flight (low 32 bits) and the waiters (high 32 bits), so
/// one compare-and-swap can check both: a request may take a slot without the queue
/// lock only when nobody waits, which keeps admission strictly first come, first
/// served. The waiter count changes only with the queue locked.
///
/// `learned` is the limit lowered by congestion signals (0: not lowered); the limit in
/// force is the smaller of it and the configured `limit`. `generation` counts
/// decreases, so that the permits of one burst lower the limit once, not once each.
/// `ceiling` is the highest level not yet refused since the last congestion (one below
/// the level that was; 0: none), which recovery holds for [`HOLD_ROUNDS`] rounds
/// (counted in `held`) before probing one above it.
#[derive(Default)]
struct ConcSlot {
    word: AtomicU64,
    limit: AtomicU32,
    learned: AtomicU32,
    generation: AtomicU32,
    successes: AtomicU32,
    ceiling: AtomicU32,
    held: AtomicU32,
    queue: Mutex<VecDeque<Arc<Waiter>>>,
}

/// Rounds of successes at a key's ceiling before one probe above it: a server with a
/// fixed limit (Graph accepts 4 per mailbox) sees one refused probe per this many
/// rounds, instead of one per round.
const HOLD_ROUNDS: u32 = 16;

const ONE_WAITER: u64 = 1 << 32;

fn split(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

impl Fresh for Arc<ConcSlot> {
    fn is_fresh(&self, _now: u64) -> bool {
        // Callers hold the shard lock, and new references are only made under it: a
        // count of one means no permit, waiter or admission in progress refers to it.
        Arc::strong_count(self) == 1
            && self.word.load(Ordering::Acquire) == 0
            && self.learned.load(Ordering::Relaxed) == 0
    }
}

impl ConcSlot {
    fn lock_queue(&self) -> MutexGuard<'_, VecDeque<Arc<Waiter>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The limit in force: the configured one, or lower after congestion.
    fn effective(&self) -> u32 {
        let limit = self.limit.load(Ordering::Relaxed);
        match self.learned.load(Ordering::Relaxed) {
            0 => limit,
            learned => limit.min(learned),
        }
    }

    /// Multiplicative decrease, once per generation of permits; a refused probe above
    /// the ceiling goes back to the ceiling instead.
    fn congested(&self, generation: u32) {
        if self
            .generation
            .compare_exchange(
                generation,
                generation.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            let refused = self.effective();
            let ceiling = self.ceiling.load(Ordering::Relaxed);
            let lowered = if ceiling != 0 && refused > ceiling {
                ceiling
            } else {
                (refused / 2).max(1)
            };
            self.learned.store(lowered, Ordering::Relaxed);
            self.ceiling
                .store(refused.saturating_sub(1).max(1), Ordering::Relaxed);
            self.successes.store(0, Ordering::Relaxed);
            self.held.store(0, Ordering::Relaxed);
        }
    }

    /// Additive increase: one more slot after a round of successes as long as the
    /// limit in force, until the configured limit is back. At the ceiling, the increase
    /// waits [`HOLD_ROUNDS`] rounds; a whole round above it clears it.
    fn succeeded(&self) {
        let learned = self.learned.load(Ordering::Relaxed);
        if learned == 0 {
            return;
        }
        if self.successes.fetch_add(1, Ordering::Relaxed) + 1 < learned {
            return;
        }
        self.successes.store(0, Ordering::Relaxed);
        let ceiling = self.ceiling.load(Ordering::Relaxed);
        if ceiling != 0 {
            if learned > ceiling {
                // A round of successes above the level once refused: it was transient.
                self.ceiling.store(0, Ordering::Relaxed);
            } else if learned == ceiling
                && self.held.fetch_add(1, Ordering::Relaxed) + 1 < HOLD_ROUNDS
            {
                return;
            }
        }
        self.held.store(0, Ordering::Relaxed);
        let raised = learned + 1;
        let restored = raised >= self.limit.load(Ordering::Relaxed);
        if restored {
            self.ceiling.store(0, Ordering::Relaxed);
        }
        self.learned
            .store(if restored { 0 } else { raised }, Ordering::Relaxed);
        let mut wake = Wakers::default();
        self.grant_locked(&mut self.lock_queue(), &mut wake);
        wake.wake();
    }

    /// Takes a slot if nobody waits and one is free.
    fn try_take(&self, limit: u32) -> bool {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let (in_flight, waiters) = split(word);
            if waiters > 0 || in_flight >= limit {
                return false;
            }
            match self.word.compare_exchange_weak(
                word,
                word + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => word = actual,
            }
        }
    }

    /// Hands free slots to waiters, in order. The queue must be locked.
    fn grant_locked(&self, queue: &mut VecDeque<Arc<Waiter>>, wake: &mut Wakers) {
        let limit = self.effective();
        while !queue.is_empty() {
            let word = self.word.load(Ordering::Acquire);
            if split(word).0 >= limit {
                break;
            }
            // One more in flight, one fewer waiting. Only releases race with this, and
            // they only lower the in-flight count.
            if self
                .word
                .compare_exchange(
                    word,
                    word + 1 - ONE_WAITER,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                let waiter = queue.pop_front().expect("queue is not empty");
                wake.push(waiter.grant());
            }
        }
    }

    /// Frees one slot, handing it to the first waiter if there is one.
    ///
    /// One atomic subtraction; only when someone was waiting does the queue get locked.
    /// In between, the freed slot cannot be taken by a newcomer (it sees the waiters and
    /// queues behind them), so it goes to the queue's head: first come, first served.
    #[inline]
    fn release(&self) {
        let before = self.word.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(split(before).0 > 0, "released more slots than granted");
        if split(before).1 > 0 {
            self.release_to_waiter();
        }
    }

    /// [`release`](Self::release) when someone waits: free slots go to the queue.
    #[cold]
    fn release_to_waiter(&self) {
        let mut wake = Wakers::default();
        self.grant_locked(&mut self.lock_queue(), &mut wake);
        wake.wake();
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
    fn lock(&self) -> MutexGuard<'_, WaiterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the waiter as owning a slot; called with the queue locked.
    fn grant(&self) -> Option<Waker> {
        match std::mem::replace(&mut *self.lock(), WaiterState::Granted) {
            WaiterState::Waiting(waker) => waker,
            WaiterState::Granted => None,
        }
    }
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
        let slot = match self.slot(key) {
            Ok(slot) => slot,
            Err(err) => return Admission::Rejected(err),
        };
        if slot.limit.load(Ordering::Relaxed) != limit
            && slot.limit.swap(limit, Ordering::Relaxed) < limit
        {
            // A raised limit may let waiters in, before this request.
            let mut wake = Wakers::default();
            slot.grant_locked(&mut slot.lock_queue(), &mut wake);
            wake.wake();
        }
        if slot.try_take(slot.effective()) {
            return Admission::Ready(MemoryPermit::new(slot));
        }
        let max_queue = match policy {
            WaitPolicy::Reject => {
                return Admission::Rejected(
                    Error::new(ErrorKind::ConcurrencyLimited).with_key(key.id()),
                );
            }
            WaitPolicy::Queue { max_queue } => max_queue,
        };
        let mut wake = Wakers::default();
        let admission = {
            let mut queue = slot.lock_queue();
            if queue.len() >= max_queue {
                Admission::Rejected(Error::new(ErrorKind::QueueFull).with_key(key.id()))
            } else {
                let waiter = Arc::new(Waiter {
                    state: Mutex::new(WaiterState::Waiting(None)),
                });
                queue.push_back(Arc::clone(&waiter));
                slot.word.fetch_add(ONE_WAITER, Ordering::AcqRel);
                // A slot freed since `try_take` goes to the queue's head, maybe us.
                slot.grant_locked(&mut queue, &mut wake);
                Admission::Wait(MemoryAcquire {
                    slot: Some(Arc::clone(&slot)),
                    waiter,
                    key: key.id(),
                })
            }
        };
        wake.wake();
        admission
    }
}

/// A slot of a key in a [`MemoryStore`]; dropping it frees the slot.
pub struct MemoryPermit {
    slot: Arc<ConcSlot>,
    generation: u32,
}

impl MemoryPermit {
    fn new(slot: Arc<ConcSlot>) -> Self {
        let generation = slot.generation.load(Ordering::Relaxed);
        MemoryPermit { slot, generation }
    }
}

impl super::ConcurrencyFeedback for MemoryPermit {
    fn congested(&self) {
        self.slot.congested(self.generation);
    }

    #[inline]
    fn succeeded(&self) {
        // The common case, a key whose limit was never lowered, stays in the caller.
        if self.slot.learned.load(Ordering::Relaxed) != 0 {
            self.slot.succeeded();
        }
    }
}

impl Drop for MemoryPermit {
    #[inline]
    fn drop(&mut self) {
        self.slot.release();
    }
}

impl fmt::Debug for MemoryPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPermit").finish_non_exhaustive()
    }
}

/// A place in a key's wait queue of a [`MemoryStore`]. Resolves to a permit when a slot
/// is handed over; dropping it leaves the queue (or passes on a slot handed over but
/// not yet collected).
pub struct MemoryAcquire {
    /// `None` once the permit has been handed out.
    slot: Option<Arc<ConcSlot>>,
    waiter: Arc<Waiter>,
    key: KeyId,
}

impl Future for MemoryAcquire {
    type Output = Result<MemoryPermit, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(self.slot.is_some(), "MemoryAcquire polled after completion");
        {
            let mut state = self.waiter.lock();
            if let WaiterState::Waiting(waker) = &mut *state {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
        }
        let slot = self.slot.take().expect("checked above");
        Poll::Ready(Ok(MemoryPermit::new(slot)))
    }
}

impl Drop for MemoryAcquire {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let granted = {
            let mut queue = slot.lock_queue();
            // Grants happen with the queue locked, so this read cannot race one.
            let granted = matches!(*self.waiter.lock(), WaiterState::Granted);
            if !granted {
                if let Some(at) = queue.iter().position(|w| Arc::ptr_eq(w, &self.waiter)) {
                    queue.remove(at);
                    slot.word.fetch_sub(ONE_WAITER, Ordering::AcqRel);
                }
            }
            granted
        };
        if granted {
            // The slot was handed over but never collected: pass it on.
            slot.release();
        }
    }
}

impl fmt::Debug for MemoryAcquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAcquire")
            .field("key", &self.key)
            .field("done", &self.slot.is_none())
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
    fn idle_keys_are_evicted_by_a_sweep_and_busy_ones_are_not() {
        let store = MemoryStore::new();
        let a = Key::from_static("a");
        let p = ready(store.acquire(&a, 1, WaitPolicy::Reject));
        store.evict_idle();
        assert_eq!(store.len(), 1);
        let snap = store.concurrency_snapshot(&a).unwrap();
        assert_eq!((snap.in_flight, snap.waiting, snap.limit), (1, 0, 1));
        drop(p);
        assert_eq!(store.concurrency_snapshot(&a).unwrap().in_flight, 0);
        store.evict_idle();
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
        store.evict_idle();
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
        store.evict_idle();
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
        store.evict_idle();
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
    fn congestion_halves_the_limit_once_per_burst_and_successes_restore_it() {
        use crate::store::ConcurrencyFeedback;
        let store = MemoryStore::new();
        let a = Key::from_static("a");
        let effective = || store.concurrency_snapshot(&a).unwrap().effective_limit;
        let burst: Vec<_> = (0..4)
            .map(|_| ready(store.acquire(&a, 4, WaitPolicy::Reject)))
            .collect();
        // All four were refused for concurrency by the server: one halving, not four.
        burst.iter().for_each(ConcurrencyFeedback::congested);
        assert_eq!(effective(), 2);
        drop(burst);
        let p1 = ready(store.acquire(&a, 4, WaitPolicy::Reject));
        let _p2 = ready(store.acquire(&a, 4, WaitPolicy::Reject));
        assert_eq!(
            rejected(store.acquire(&a, 4, WaitPolicy::Reject)),
            ErrorKind::ConcurrencyLimited
        );
        // A permit of the new generation may lower it again: 2 was refused, so 1 is
        // the ceiling.
        p1.congested();
        assert_eq!(effective(), 1);
        // Additive recovery: a round of successes as long as the limit raises it by
        // one, after HOLD_ROUNDS rounds at the ceiling; the round above it clears it.
        drop(p1);
        drop(_p2);
        let mut successes = 0;
        while effective() < 4 {
            let p = ready(store.acquire(&a, 4, WaitPolicy::Reject));
            p.succeeded();
            successes += 1;
            assert!(successes < 100, "never recovered");
        }
        assert_eq!(
            successes,
            HOLD_ROUNDS + 2 + 3,
            "rounds of 1 held at the ceiling, then one round of 2, then of 3"
        );
        // Recovered: never above the configured limit, and the key is fresh again.
        let p = ready(store.acquire(&a, 4, WaitPolicy::Reject));
        p.succeeded();
        assert_eq!(effective(), 4);
        drop(p);
        store.evict_idle();
        assert!(store.is_empty());
    }

    /// Runs `n` successes, one permit at a time.
    fn succeed(store: &MemoryStore, key: &Key, n: u32) {
        use crate::store::ConcurrencyFeedback;
        for _ in 0..n {
            ready(store.acquire(key, 8, WaitPolicy::Reject)).succeeded();
        }
    }

    #[test]
    fn a_fixed_server_limit_is_probed_once_per_hold_not_once_per_round() {
        use crate::store::ConcurrencyFeedback;
        // The server accepts 4 (Graph per mailbox); the client is configured for 8.
        let store = MemoryStore::new();
        let a = Key::from_static("a");
        let effective = || store.concurrency_snapshot(&a).unwrap().effective_limit;
        let refuse_at = |level: u32| {
            let burst: Vec<_> = (0..level)
                .map(|_| ready(store.acquire(&a, 8, WaitPolicy::Reject)))
                .collect();
            burst[0].congested();
        };
        refuse_at(8);
        assert_eq!(effective(), 4, "halved, with 7 as the ceiling");
        succeed(&store, &a, 4 + 5 + 6);
        assert_eq!(effective(), 7);
        // 5 in flight would have been refused already; say the probe at 7 is.
        refuse_at(7);
        assert_eq!(effective(), 3, "7 was not above the ceiling of 7: halved");
        // Recovery to the new ceiling (6) takes rounds of 3, 4, 5, then holds.
        succeed(&store, &a, 3 + 4 + 5);
        assert_eq!(effective(), 6);
        succeed(&store, &a, 6 * (HOLD_ROUNDS - 1));
        assert_eq!(effective(), 6, "held at the ceiling");
        succeed(&store, &a, 6);
        assert_eq!(effective(), 7, "one probe above it");
        // The probe is refused: back to the ceiling, not halved.
        refuse_at(7);
        assert_eq!(effective(), 6);
        succeed(&store, &a, 6 * (HOLD_ROUNDS - 1));
        assert_eq!(effective(), 6, "held again");
        // A probe that survives a whole round clears the ceiling: 8 comes back.
        succeed(&store, &a, 6 + 7);
        assert_eq!(effective(), 8);
        store.evict_idle();
        assert!(store.is_empty(), "recovered keys are fresh");
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
