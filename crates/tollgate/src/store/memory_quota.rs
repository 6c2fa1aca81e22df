//! [`QuotaStore`] for [`MemoryStore`].

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::quota::{QuotaAsk, QuotaGrant, QuotaSet, QuotaStore, QuotaUsage};
use super::table::{Fresh, Full};
use super::{Admission, MemoryStore, WaitPolicy};
use crate::key::Key;
use crate::quota::{self as windows, Wait, WindowState};
use crate::{Error, ErrorKind};

/// A key's window states: inline for the common single quota (no heap block to chase
/// on every admission), boxed for several.
enum Windows {
    One([WindowState; 1]),
    Many(Box<[WindowState]>),
}

impl Windows {
    #[cold]
    fn fresh(quotas: &QuotaSet, now: u64) -> Self {
        let mut states = windows::fresh_states(quotas, now);
        match (quotas.len(), states.next()) {
            (1, Some(state)) => Windows::One([state]),
            (_, first) => Windows::Many(first.into_iter().chain(states).collect()),
        }
    }
}

impl std::ops::Deref for Windows {
    type Target = [WindowState];
    fn deref(&self) -> &[WindowState] {
        match self {
            Windows::One(one) => one,
            Windows::Many(many) => many,
        }
    }
}

impl std::ops::DerefMut for Windows {
    fn deref_mut(&mut self) -> &mut [WindowState] {
        match self {
            Windows::One(one) => one,
            Windows::Many(many) => many,
        }
    }
}

/// One key's quota state.
pub(super) struct QuotaEntry {
    windows: Windows,
    /// Nothing is admitted before this (a server's throttle signal).
    cooldown_until: u64,
    /// Releases from the queue are spaced: none before this.
    next_release: u64,
    /// When every window will be fully replenished, if nothing else is admitted.
    fresh_at: u64,
    queue: VecDeque<Arc<QuotaWaiter>>,
}

impl Fresh for QuotaEntry {
    fn is_fresh(&self, now: u64) -> bool {
        self.queue.is_empty() && now >= self.fresh_at && now >= self.cooldown_until
    }
}

impl QuotaEntry {
    fn new(quotas: &QuotaSet, now: u64) -> Self {
        QuotaEntry {
            windows: Windows::fresh(quotas, now),
            cooldown_until: 0,
            next_release: 0,
            fresh_at: 0,
            queue: VecDeque::new(),
        }
    }

    /// The quota set of a key changed (a resolver's answer): its state restarts.
    #[inline]
    fn fit(&mut self, quotas: &QuotaSet, now: u64) {
        if self.windows.len() != quotas.len() {
            self.windows = Windows::fresh(quotas, now);
        }
    }

    /// Whether `cost` would be admitted now by every window and cooldown; if not, how
    /// long until it would be.
    fn check(&self, ask: &QuotaAsk<'_>, now: u64, global_cooldown: u64) -> Result<(), Refusal> {
        let cooldown = global_cooldown.max(self.cooldown_until);
        let blocked = cooldown.max(self.next_release);
        let waits = blocked.saturating_sub(now);
        match windows::check_all(ask.quotas, &self.windows, now, ask.cost) {
            Err(denied) if denied.wait() == Wait::Never => Err(Refusal::Never(denied.index())),
            Err(denied) => {
                let window = denied.wait().nanos().unwrap_or(u64::MAX);
                Err(Refusal::Wait {
                    nanos: window.max(waits),
                    throttled: waits > window && cooldown >= blocked,
                    index: denied.index(),
                })
            }
            Ok(()) if waits > 0 => Err(Refusal::Wait {
                nanos: waits,
                throttled: cooldown >= blocked,
                index: 0,
            }),
            Ok(()) => Ok(()),
        }
    }

    /// Admits `cost` now if every window and every cooldown allow; otherwise says how
    /// long until they would.
    #[inline]
    fn try_admit(
        &mut self,
        ask: &QuotaAsk<'_>,
        now: u64,
        global_cooldown: u64,
    ) -> Result<QuotaGrant, Refusal> {
        let quotas = ask.quotas;
        // The common case first: nothing blocks and every window admits at once, which
        // the windows' cheap tests tell and commit in one pass. Anything else (a
        // refusal, or a case the cheap tests leave open) takes the exact check.
        let open = now >= global_cooldown && now >= self.cooldown_until && now >= self.next_release;
        if !(open && windows::admit_all_now(quotas, &mut self.windows, now, ask.cost)) {
            self.check(ask, now, global_cooldown)?;
            windows::commit_all(quotas, &mut self.windows, now, ask.cost);
        }
        // A bound, not the exact time: O(1) here instead of a pass over every window.
        self.fresh_at = self
            .fresh_at
            .max(now.saturating_add(quotas.forget_after_nanos()));
        let mut grant = QuotaGrant::new(now, ask.cost);
        if ask.report {
            for (index, (quota, state)) in quotas.iter().zip(&*self.windows).enumerate() {
                grant.set_usage(
                    index,
                    QuotaUsage {
                        remaining: state.remaining(quota, now),
                        reset_after: state.reset_after(quota, now),
                    },
                );
            }
        }
        Ok(grant)
    }
}

enum Refusal {
    /// The cost is above a quota's capacity.
    Never(usize),
    /// Admissible after `nanos`; `throttled` when a cooldown is what holds it.
    Wait {
        nanos: u64,
        throttled: bool,
        index: usize,
    },
}

impl Refusal {
    fn into_error(self, key: &Key, now: Instant) -> Error {
        match self {
            Refusal::Never(index) => Error::cost_too_high(key.id(), index),
            Refusal::Wait {
                nanos,
                throttled,
                index,
            } => Error::quota_refused(
                key.id(),
                index,
                now,
                std::time::Duration::from_nanos(nanos),
                throttled,
            ),
        }
    }
}

/// A waiter in a key's queue; woken when it becomes the head, or when its head-of-line
/// timer might be wrong (a refund, a cancellation ahead of it).
pub(super) struct QuotaWaiter {
    waker: Mutex<Option<Waker>>,
}

impl QuotaWaiter {
    fn set(&self, waker: &Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        match &*slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    fn take(&self) -> Option<Waker> {
        self.waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

fn wake_head(queue: &VecDeque<Arc<QuotaWaiter>>) -> Option<Waker> {
    queue.front().and_then(|w| w.take())
}

impl QuotaStore for MemoryStore {
    type Acquire = MemoryQuotaAcquire;

    fn admit(&self, key: &Key, ask: &QuotaAsk<'_>) -> Admission<QuotaGrant, MemoryQuotaAcquire> {
        if let Some(index) = ask.quotas.too_costly(ask.cost) {
            return Admission::Rejected(Refusal::Never(index).into_error(key, Instant::now()));
        }
        let shared = &self.shared;
        let instant = Instant::now();
        let now = shared.nanos(instant);
        let global = shared.global_cooldown.load(Ordering::Relaxed);
        let table = &shared.quota;
        let hash = table.hash(key);
        let make = || QuotaEntry::new(ask.quotas, now);
        let mut shard = table.lock(hash);
        let entry = match shard.get_or_insert(hash, key, now, make) {
            Ok(entry) => entry,
            Err(Full) => {
                drop(shard);
                table.sweep_all(now);
                shard = table.lock(hash);
                match shard.get_or_insert(hash, key, now, make) {
                    Ok(entry) => entry,
                    Err(Full) => {
                        return Admission::Rejected(
                            Error::new(ErrorKind::TooManyKeys).with_key(key.id()),
                        );
                    }
                }
            }
        };
        entry.fit(ask.quotas, now);
        let refusal = if entry.queue.is_empty() {
            match entry.try_admit(ask, now, global) {
                Ok(grant) => return Admission::Ready(grant),
                Err(refusal) => Some(refusal),
            }
        } else {
            None // others wait: first come, first served
        };
        let max_queue = match (ask.policy, refusal) {
            (_, Some(refusal @ Refusal::Never(_))) | (WaitPolicy::Reject, Some(refusal)) => {
                return Admission::Rejected(refusal.into_error(key, instant));
            }
            (WaitPolicy::Reject, None) => {
                // Only a wait-mode user of the same store queues here; the queue's head
                // goes first, so this request would wait at least one release spacing.
                let refusal = entry
                    .check(ask, now, global)
                    .err()
                    .unwrap_or(Refusal::Wait {
                        nanos: crate::quota::nanos(ask.quotas.release_spacing()).max(1),
                        throttled: false,
                        index: 0,
                    });
                return Admission::Rejected(refusal.into_error(key, instant));
            }
            (WaitPolicy::Queue { max_queue }, refusal) => {
                if let Some(Refusal::Wait { nanos, .. }) = refusal {
                    if nanos > crate::quota::nanos(ask.max_wait) {
                        let err = Error::new(ErrorKind::WaitExceeded)
                            .with_key(key.id())
                            .with_retry_after(instant, std::time::Duration::from_nanos(nanos));
                        return Admission::Rejected(err);
                    }
                }
                max_queue
            }
        };
        if entry.queue.len() >= max_queue {
            return Admission::Rejected(Error::new(ErrorKind::QueueFull).with_key(key.id()));
        }
        let waiter = Arc::new(QuotaWaiter {
            waker: Mutex::new(None),
        });
        entry.queue.push_back(Arc::clone(&waiter));
        drop(shard);
        Admission::Wait(MemoryQuotaAcquire {
            registration: Registration {
                store: self.clone(),
                key: key.clone(),
                hash,
                waiter: Some(waiter),
            },
            quotas: ask.quotas.clone(),
            cost: ask.cost,
            spacing: crate::quota::nanos(ask.spacing),
            report: ask.report,
            timer: tokio::time::sleep_until(instant),
        })
    }

    fn refund(&self, key: &Key, quotas: &QuotaSet, grant: &QuotaGrant) {
        let shared = &self.shared;
        let now = shared.nanos(Instant::now());
        let table = &shared.quota;
        let hash = table.hash(key);
        let wake = {
            let mut shard = table.lock(hash);
            let Some(entry) = shard.get(hash, key) else {
                return; // swept: the admission had expired anyway
            };
            if entry.windows.len() == quotas.len() {
                windows::refund_all(
                    quotas,
                    &mut entry.windows,
                    grant.admitted_at,
                    now,
                    grant.cost,
                );
            }
            wake_head(&entry.queue)
        };
        if let Some(waker) = wake {
            waker.wake();
        }
    }

    fn cooldown(&self, key: &Key, until: Instant) {
        let shared = &self.shared;
        let now = shared.nanos(Instant::now());
        let until = shared.nanos(until);
        let table = &shared.quota;
        let hash = table.hash(key);
        let mut shard = table.lock(hash);
        // A cooldown for a key without state creates it, so that the cooldown holds.
        // The windows are made for no quota (empty) until the key's first request fits
        // them to its quota set.
        let entry = shard.get_or_insert(hash, key, now, || QuotaEntry {
            windows: Windows::Many(Box::new([])),
            cooldown_until: 0,
            next_release: 0,
            fresh_at: 0,
            queue: VecDeque::new(),
        });
        if let Ok(entry) = entry {
            entry.cooldown_until = entry.cooldown_until.max(until);
        }
        // A full table drops the cooldown; the server's own limit still applies.
    }

    fn cooldown_all(&self, until: Instant) {
        let until = self.shared.nanos(until);
        self.shared
            .global_cooldown
            .fetch_max(until, Ordering::Relaxed);
    }
}

/// A key's quota state at one moment, for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaSnapshot {
    /// Requests waiting in the key's queue.
    pub waiting: usize,
    /// When the key's cooldown ends, if one is pending.
    pub cooldown_until: Option<Instant>,
    /// Each quota's usage now, in the order of the set asked about (empty if the key's
    /// state was made for another set).
    pub usage: Vec<QuotaUsage>,
}

impl MemoryStore {
    /// The quota state of `key` (the state key: with its class, see
    /// [`QuotaWindow::cooldown`](crate::QuotaWindow::cooldown)) under `quotas`, or
    /// `None` when the store holds none.
    pub fn quota_snapshot(&self, key: &Key, quotas: &QuotaSet) -> Option<QuotaSnapshot> {
        let shared = &self.shared;
        let now = shared.nanos(Instant::now());
        let table = &shared.quota;
        let hash = table.hash(key);
        let mut shard = table.lock(hash);
        let entry = shard.get(hash, key)?;
        let usage = if entry.windows.len() == quotas.len() {
            quotas
                .iter()
                .zip(&*entry.windows)
                .map(|(quota, state)| QuotaUsage {
                    remaining: state.remaining(quota, now),
                    reset_after: state.reset_after(quota, now),
                })
                .collect()
        } else {
            Vec::new()
        };
        Some(QuotaSnapshot {
            waiting: entry.queue.len(),
            cooldown_until: (entry.cooldown_until > now)
                .then(|| shared.instant(entry.cooldown_until)),
            usage,
        })
    }
}

/// Removes a waiter from its queue when the wait ends without an admission.
struct Registration {
    store: MemoryStore,
    key: Key,
    hash: u64,
    /// `None` once admitted (the admission removed it from the queue).
    waiter: Option<Arc<QuotaWaiter>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let table = &self.store.shared.quota;
        let wake = {
            let mut shard = table.lock(self.hash);
            shard.get(self.hash, &self.key).and_then(|entry| {
                let at = entry.queue.iter().position(|w| Arc::ptr_eq(w, &waiter))?;
                entry.queue.remove(at);
                // The new head must recompute its wait.
                if at == 0 {
                    wake_head(&entry.queue)
                } else {
                    None
                }
            })
        };
        if let Some(waker) = wake {
            waker.wake();
        }
    }
}

pin_project! {
    /// A place in a key's quota queue of a [`MemoryStore`]. The head of the queue sleeps
    /// until the exact time its request fits every window (and every cooldown and the
    /// release spacing); the others sleep until they become the head. Dropping it gives
    /// the place up.
    pub struct MemoryQuotaAcquire {
        registration: Registration,
        quotas: QuotaSet,
        cost: u32,
        spacing: u64,
        report: bool,
        #[pin]
        timer: Sleep,
    }
}

impl Future for MemoryQuotaAcquire {
    type Output = Result<QuotaGrant, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let registration = &mut *this.registration;
        let waiter = Arc::clone(
            registration
                .waiter
                .as_ref()
                .expect("MemoryQuotaAcquire polled after completion"),
        );
        let shared = &registration.store.shared;
        loop {
            let instant = Instant::now();
            let now = shared.nanos(instant);
            let global = shared.global_cooldown.load(Ordering::Relaxed);
            let table = &shared.quota;
            let (outcome, wake) = {
                let mut shard = table.lock(registration.hash);
                let Some(entry) = shard.get(registration.hash, &registration.key) else {
                    unreachable!("a key with waiters is never fresh, so never evicted");
                };
                waiter.set(cx.waker());
                if !entry.queue.front().is_some_and(|w| Arc::ptr_eq(w, &waiter)) {
                    return Poll::Pending;
                }
                entry.fit(this.quotas, now);
                let ask = QuotaAsk {
                    quotas: this.quotas,
                    cost: *this.cost,
                    policy: WaitPolicy::Queue { max_queue: 0 },
                    max_wait: std::time::Duration::MAX,
                    spacing: std::time::Duration::ZERO,
                    report: *this.report,
                };
                match entry.try_admit(&ask, now, global) {
                    Ok(grant) => {
                        entry.queue.pop_front();
                        entry.next_release = now.saturating_add(*this.spacing);
                        (Ok(grant), wake_head(&entry.queue))
                    }
                    Err(Refusal::Never(index)) => (
                        Err(Refusal::Never(index).into_error(&registration.key, instant)),
                        None,
                    ),
                    Err(Refusal::Wait { nanos, .. }) => {
                        let deadline = shared.instant(now.saturating_add(nanos));
                        this.timer.as_mut().reset(deadline);
                        if this.timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        continue;
                    }
                }
            };
            if outcome.is_ok() {
                registration.waiter = None;
            }
            if let Some(waker) = wake {
                waker.wake();
            }
            return Poll::Ready(outcome);
        }
    }
}

impl fmt::Debug for MemoryQuotaAcquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryQuotaAcquire")
            .field("key", &self.registration.key.id())
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_test::{assert_pending, assert_ready_ok, task};

    use super::*;
    use crate::quota::Quota;

    const SEC: Duration = Duration::from_secs(1);

    fn set(quotas: &[Quota]) -> QuotaSet {
        QuotaSet::new(quotas.iter().copied()).unwrap()
    }

    fn grant(a: Admission<QuotaGrant, MemoryQuotaAcquire>) -> QuotaGrant {
        match a {
            Admission::Ready(g) => g,
            Admission::Wait(_) => panic!("expected an admission, got a wait"),
            Admission::Rejected(e) => panic!("expected an admission, got {e}"),
        }
    }

    fn refused(a: Admission<QuotaGrant, MemoryQuotaAcquire>) -> Error {
        match a {
            Admission::Rejected(e) => e,
            _ => panic!("expected a rejection"),
        }
    }

    fn waiting(a: Admission<QuotaGrant, MemoryQuotaAcquire>) -> MemoryQuotaAcquire {
        match a {
            Admission::Wait(w) => w,
            Admission::Ready(_) => panic!("expected a wait, got an admission"),
            Admission::Rejected(e) => panic!("expected a wait, got {e}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reject_mode_refuses_with_the_exact_time_until_admission() {
        let store = MemoryStore::new();
        let key = Key::from_static("space");
        let quotas = set(&[Quota::fixed(2, 10 * SEC).unwrap()]);
        let ask = QuotaAsk::new(&quotas, 1);
        grant(store.admit(&key, &ask));
        tokio::time::advance(3 * SEC).await;
        grant(store.admit(&key, &ask));
        let err = refused(store.admit(&key, &ask));
        assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
        assert_eq!(err.quota_index(), Some(0));
        let wait = err.retry_after().unwrap();
        assert!(wait > Duration::ZERO && wait <= 10 * SEC, "{wait:?}");
        tokio::time::advance(wait - Duration::from_nanos(1)).await;
        assert_eq!(
            refused(store.admit(&key, &ask)).kind(),
            ErrorKind::QuotaExceeded
        );
        tokio::time::advance(Duration::from_nanos(1)).await;
        grant(store.admit(&key, &ask));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_refused_by_one_window_consumes_nothing_from_the_others() {
        let store = MemoryStore::new();
        let key = Key::from_static("space");
        let minute = Quota::sliding(35, 60 * SEC).unwrap();
        let hour = Quota::sliding(800, 3600 * SEC).unwrap();
        let both = set(&[minute, hour]);
        for _ in 0..35 {
            grant(store.admit(&key, &QuotaAsk::new(&both, 1).report(true)));
        }
        for _ in 0..100 {
            let err = refused(store.admit(&key, &QuotaAsk::new(&both, 1)));
            assert_eq!(err.quota_index(), Some(0));
        }
        // Sliding windows forget an admission after W plus one bucket (60/32 s).
        tokio::time::advance(62 * SEC).await;
        let g = grant(store.admit(&key, &QuotaAsk::new(&both, 1).report(true)));
        // The hour window saw 36 admissions, not 136.
        assert_eq!(g.usage()[1].remaining, 800 - 36);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_gives_the_capacity_back() {
        let store = MemoryStore::new();
        let key = Key::from_static("mailbox");
        let quotas = set(&[Quota::sliding(1, 60 * SEC).unwrap()]);
        let ask = QuotaAsk::new(&quotas, 1);
        let g = grant(store.admit(&key, &ask));
        refused(store.admit(&key, &ask));
        store.refund(&key, &quotas, &g);
        grant(store.admit(&key, &ask));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cost_above_capacity_is_refused_at_once_not_waited_for() {
        let store = MemoryStore::new();
        let key = Key::from_static("mailbox");
        let quotas = set(&[Quota::sliding(10, SEC).unwrap()]);
        let ask = QuotaAsk::new(&quotas, 20).wait(16, 60 * SEC, Duration::ZERO);
        assert_eq!(
            refused(store.admit(&key, &ask)).kind(),
            ErrorKind::CostTooHigh
        );
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn cooldowns_hold_one_key_or_all_keys_in_both_modes() {
        let store = MemoryStore::new();
        let (a, b) = (Key::from_static("a"), Key::from_static("b"));
        let quotas = set(&[Quota::sliding(100, SEC).unwrap()]);
        let ask = QuotaAsk::new(&quotas, 1);
        store.cooldown(&a, Instant::now() + 10 * SEC);
        let snapshot = store.quota_snapshot(&a, &quotas).unwrap();
        assert_eq!(snapshot.cooldown_until, Some(Instant::now() + 10 * SEC));
        let err = refused(store.admit(&a, &ask));
        assert_eq!(err.kind(), ErrorKind::Throttled);
        assert_eq!(err.retry_after(), Some(10 * SEC));
        grant(store.admit(&b, &ask));

        // Wait mode: the request waits out the cooldown, then goes.
        let wait = QuotaAsk::new(&quotas, 1).wait(16, 60 * SEC, Duration::ZERO);
        let mut w = task::spawn(waiting(store.admit(&a, &wait)));
        assert_pending!(w.poll());
        tokio::time::advance(10 * SEC - Duration::from_millis(1)).await;
        assert_pending!(w.poll());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(w.is_woken());
        assert_ready_ok!(w.poll());

        store.cooldown_all(Instant::now() + 5 * SEC);
        assert_eq!(refused(store.admit(&b, &ask)).kind(), ErrorKind::Throttled);
        tokio::time::advance(5 * SEC).await;
        grant(store.admit(&b, &ask));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_released_in_order_and_spaced() {
        let store = MemoryStore::new();
        let key = Key::from_static("chat");
        let quotas = set(&[Quota::sliding(3, 3 * SEC).unwrap()]);
        let spacing = quotas.release_spacing();
        assert_eq!(spacing, SEC * 9 / 10, "a tenth under W / N");
        let ask = QuotaAsk::new(&quotas, 1).wait(16, 60 * SEC, spacing);
        for _ in 0..3 {
            grant(store.admit(&key, &ask));
        }
        let mut waiters: Vec<_> = (0..3)
            .map(|_| task::spawn(waiting(store.admit(&key, &ask))))
            .collect();
        let snapshot = store.quota_snapshot(&key, &quotas).unwrap();
        assert_eq!(snapshot.waiting, 3);
        assert_eq!(snapshot.usage[0].remaining, 0);
        for w in &mut waiters {
            assert_pending!(w.poll());
        }
        let start = Instant::now();
        let mut released = Vec::new();
        while released.len() < 3 {
            tokio::time::advance(Duration::from_millis(100)).await;
            for (i, w) in waiters.iter_mut().enumerate() {
                if !released.iter().any(|(j, _)| *j == i) && w.is_woken() {
                    if let Poll::Ready(result) = w.poll() {
                        result.unwrap();
                        released.push((i, start.elapsed()));
                    }
                }
            }
        }
        let order: Vec<usize> = released.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [0, 1, 2]);
        // All three fit the window at about 3 s; spacing holds them 0.9 s apart.
        for pair in released.windows(2) {
            assert!(pair[1].1 - pair[0].1 >= spacing, "{released:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_wait_beyond_max_wait_fails_at_once_and_a_full_queue_too() {
        let store = MemoryStore::new();
        let key = Key::from_static("chat");
        let quotas = set(&[Quota::fixed(1, 60 * SEC).unwrap()]);
        grant(store.admit(&key, &QuotaAsk::new(&quotas, 1)));
        let short = QuotaAsk::new(&quotas, 1).wait(1, 10 * SEC, Duration::ZERO);
        let err = refused(store.admit(&key, &short));
        assert_eq!(err.kind(), ErrorKind::WaitExceeded);
        assert!(err.retry_after().unwrap() > 10 * SEC);
        let long = QuotaAsk::new(&quotas, 1).wait(1, 120 * SEC, Duration::ZERO);
        let _w = waiting(store.admit(&key, &long));
        assert_eq!(
            refused(store.admit(&key, &long)).kind(),
            ErrorKind::QueueFull
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_head_lets_the_next_waiter_through_and_consumes_nothing() {
        let store = MemoryStore::new();
        let key = Key::from_static("chat");
        let quotas = set(&[Quota::fixed(1, 10 * SEC).unwrap()]);
        let ask = QuotaAsk::new(&quotas, 1).wait(16, 60 * SEC, Duration::ZERO);
        grant(store.admit(&key, &ask));
        let mut head = task::spawn(waiting(store.admit(&key, &ask)));
        let mut next = task::spawn(waiting(store.admit(&key, &ask)));
        assert_pending!(head.poll());
        assert_pending!(next.poll());
        drop(head);
        assert!(next.is_woken());
        assert_pending!(next.poll());
        tokio::time::advance(10 * SEC).await;
        assert_ready_ok!(next.poll());
    }

    proptest::proptest! {
        /// `forget_after` is what lets the store skip recomputing freshness on every
        /// admission: it must never call a state fresh too early.
        #[test]
        fn a_state_is_fresh_once_forget_after_has_passed_since_its_last_admission(
            kind in 0..3u8,
            limit in 1..50u32,
            window_ms in 1..5_000u64,
            burst in 1..20u32,
            arrivals in proptest::collection::vec((0..2_000_000_000u64, 1..5u32), 1..60),
        ) {
            let window = Duration::from_millis(window_ms);
            let quota = match kind {
                0 => Quota::sliding(limit, window).unwrap(),
                1 => Quota::fixed(limit, window).unwrap(),
                _ => match Quota::smooth(limit, window).unwrap().burst(burst) {
                    Ok(q) => q,
                    Err(_) => Quota::smooth(limit, window).unwrap(),
                },
            };
            let mut state = WindowState::new(&quota, 0);
            let mut now = 0u64;
            let mut last = None;
            for (gap, cost) in arrivals {
                now += gap % (2 * crate::quota::nanos(window));
                if state.admit(&quota, now, cost).is_ok() {
                    last = Some(now);
                }
            }
            if let Some(last) = last {
                let at = last + crate::quota::nanos(quota.forget_after());
                proptest::prop_assert!(state.is_fresh(&quota, at.max(now)),
                    "{quota:?} not fresh at last admission + forget_after");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_evicted_only_once_their_windows_have_replenished() {
        let store = MemoryStore::new();
        let key = Key::from_static("k");
        let quotas = set(&[Quota::sliding(5, 10 * SEC).unwrap()]);
        grant(store.admit(&key, &QuotaAsk::new(&quotas, 1)));
        store.evict_idle();
        assert_eq!(store.len(), 1);
        tokio::time::advance(9 * SEC).await;
        store.evict_idle();
        assert_eq!(store.len(), 1);
        tokio::time::advance(3 * SEC).await;
        store.evict_idle();
        assert!(store.is_empty());
    }
}
