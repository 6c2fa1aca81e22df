//! Per-key FIFO queues of this process's waiters.
//!
//! Redis decides admissions; the queues only order this process's own waiters for one
//! key, so that they are served first come, first served and only the head of a
//! queue talks to Redis (the others sleep until they become the head). Across
//! processes there is no shared queue: heads of different processes race, each
//! retrying at the exact time its refusal named (quotas) or by bounded polling
//! (concurrency), which makes fleet-wide order approximate.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::time::Instant;

type Map = HashMap<Arc<[u8]>, VecDeque<Arc<Waiter>>>;

/// The queues of one store, by Redis key name.
#[derive(Default)]
pub(crate) struct Queues {
    map: Mutex<Map>,
}

#[derive(Default)]
struct Waiter {
    waker: Mutex<Option<Waker>>,
    /// Set when something may have changed for the head: a slot released or quota
    /// refunded by this process, or the waiter became the head.
    kicked: AtomicBool,
}

impl Waiter {
    fn register(&self, waker: &Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        match &*slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Queues {
    fn lock(&self) -> MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the queue of `key`, unless more than `max_queue` already wait there (the
    /// head, which is talking to Redis, plus `max_queue` behind it).
    pub(crate) fn join(self: &Arc<Self>, key: &Arc<[u8]>, max_queue: usize) -> Option<Place> {
        let mut map = self.lock();
        let queue = map.entry(Arc::clone(key)).or_default();
        if queue.len() > max_queue {
            return None;
        }
        let waiter = Arc::new(Waiter::default());
        queue.push_back(Arc::clone(&waiter));
        Some(Place {
            queues: Arc::clone(self),
            key: Arc::clone(key),
            waiter,
        })
    }

    /// Tells the head of `key`'s queue to try again now.
    pub(crate) fn kick(&self, key: &[u8]) {
        if let Some(head) = self.lock().get(key).and_then(|q| q.front()) {
            head.kick();
        }
    }

    /// Waiters queued for `key` now.
    #[cfg(test)]
    pub(crate) fn len(&self, key: &[u8]) -> usize {
        self.lock().get(key).map_or(0, VecDeque::len)
    }
}

/// A waiter's place in its key's queue; dropping it leaves the queue.
pub(crate) struct Place {
    queues: Arc<Queues>,
    key: Arc<[u8]>,
    waiter: Arc<Waiter>,
}

impl Place {
    fn head_of(&self, map: &Map) -> bool {
        map.get(&self.key)
            .and_then(|q| q.front())
            .is_some_and(|w| Arc::ptr_eq(w, &self.waiter))
    }

    /// Whether every waiter that came earlier has left.
    pub(crate) fn is_head(&self) -> bool {
        self.head_of(&self.queues.lock())
    }

    /// Waits until this waiter is the head of its queue.
    pub(crate) async fn turn(&self) {
        poll_fn(|cx| {
            let map = self.queues.lock();
            if self.head_of(&map) {
                // The kick that said so is consumed: a later one means something new.
                self.waiter.kicked.store(false, Ordering::Release);
                return Poll::Ready(());
            }
            // Registered under the map's lock, which the waiter ahead holds to leave.
            self.waiter.register(cx.waker());
            Poll::Pending
        })
        .await;
    }

    /// Sleeps until `until`, or less if kicked.
    pub(crate) async fn nap(&self, until: Instant) {
        let mut sleep = pin!(tokio::time::sleep_until(until));
        poll_fn(|cx: &mut Context<'_>| {
            self.waiter.register(cx.waker());
            if self.waiter.kicked.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            sleep.as_mut().poll(cx)
        })
        .await;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut map = self.queues.lock();
        let Some(queue) = map.get_mut(&self.key) else {
            return;
        };
        if let Some(at) = queue.iter().position(|w| Arc::ptr_eq(w, &self.waiter)) {
            queue.remove(at);
            if at == 0 {
                if let Some(head) = queue.front() {
                    head.kick();
                }
            }
        }
        if queue.is_empty() {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_take_turns_in_order_and_a_full_queue_refuses() {
        let queues = Arc::new(Queues::default());
        let key: Arc<[u8]> = Arc::from(&b"k"[..]);
        let first = queues.join(&key, 1).unwrap();
        let second = queues.join(&key, 1).unwrap();
        assert!(queues.join(&key, 1).is_none());
        assert!(first.is_head() && !second.is_head());
        let turn = tokio::spawn(async move {
            second.turn().await;
            second
        });
        tokio::task::yield_now().await;
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), turn)
            .await
            .unwrap()
            .unwrap();
        assert!(second.is_head());
        assert_eq!(queues.len(&key), 1);
        drop(second);
        assert_eq!(queues.len(&key), 0);
        assert!(queues.lock().is_empty());
    }
}
