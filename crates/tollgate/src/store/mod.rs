//! Where per-key limit state lives.
//!
//! The layers never keep limit state themselves: they ask a store. A store is cheap to
//! clone and every clone shares the same state, so cloning a layer, a service, or an
//! axum `Router` never creates fresh limits. Two layers share limits exactly when they
//! are given the same store (or clones of it).
//!
//! Each capability is one trait, so that an in-memory and a Redis store can implement
//! it without the layers changing:
//!
//! - [`ConcurrencyStore`]: in-flight slots per key.
//! - [`QuotaStore`]: quota windows per key, cooldowns, refunds.
//!
//! Admission may be asynchronous (a Redis round trip); the in-memory store answers
//! synchronously whenever it can, without allocating or boxing: see [`Admission`].
//!
//! [`MemoryStore`] is the default: embedded, no setup, sharded, with automatic eviction
//! of keys whose state is indistinguishable from fresh and a `max_keys` bound.

use std::future::Future;

use crate::Error;
use crate::key::Key;

mod memory;
mod memory_quota;
mod quota;
mod table;

pub use memory::{ConcurrencySnapshot, MemoryAcquire, MemoryPermit, MemoryStore};
pub use memory_quota::{MemoryQuotaAcquire, QuotaSnapshot};
pub use quota::{QuotaAsk, QuotaGrant, QuotaSet, QuotaSetError, QuotaStore, QuotaUsage};

/// How a store may answer a request for a slot.
#[derive(Debug)]
pub enum Admission<P, A> {
    /// Admitted now: hold the permit while the request is in flight.
    Ready(P),
    /// Not decided yet (waiting in the key's queue, or a round trip to a remote store):
    /// poll the future. Dropping it gives up the place without leaking anything.
    Wait(A),
    /// Refused now (reject mode and no room, queue full, key table full).
    Rejected(Error),
}

/// What to do when a key has no free slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Refuse at once with [`ErrorKind::ConcurrencyLimited`](crate::ErrorKind::ConcurrencyLimited).
    Reject,
    /// Wait in the key's FIFO queue, unless `max_queue` requests already wait there
    /// ([`ErrorKind::QueueFull`](crate::ErrorKind::QueueFull)).
    Queue {
        /// The most requests that may wait for one key.
        max_queue: usize,
    },
}

impl WaitPolicy {
    /// The layers' default: wait, at most 1024 requests deep per key.
    pub const DEFAULT: WaitPolicy = WaitPolicy::Queue { max_queue: 1024 };

    /// This policy if it waits, else the default waiting one: setting a `max_wait`
    /// on a layer in reject mode puts it back in wait mode.
    pub fn waiting(self) -> WaitPolicy {
        match self {
            WaitPolicy::Reject => WaitPolicy::DEFAULT,
            queue => queue,
        }
    }
}

/// What the server said about a request that held a slot, for adaptive limits.
///
/// Both methods default to doing nothing, for stores without adaptive limits.
pub trait ConcurrencyFeedback {
    /// The server refused the request for concurrency (Graph's MailboxConcurrency):
    /// lower the key's limit in force, multiplicatively, once per burst.
    fn congested(&self) {}

    /// The request succeeded: recover the key's limit in force additively, never above
    /// the configured limit (the in-memory store holds at the last refused level for a
    /// while before probing above it).
    fn succeeded(&self) {}
}

/// Per-key in-flight slots: at most `limit` permits alive per key.
///
/// # Contract
///
/// - Never more than `limit` permits for one key exist at once, where `limit` is the
///   value passed by the latest `acquire` for that key. If it shrinks, no permit is
///   taken back, but no new one is granted until the count is below it.
/// - Waiters are served first come, first served; a new request never overtakes a
///   waiting one.
/// - Dropping a permit frees its slot (or hands it to the next waiter); dropping an
///   [`Admission::Wait`] future gives its place up, and if a slot had already been
///   granted to it, passes that slot on. Nothing leaks on cancellation.
/// - One key's state never delays another key's admission beyond the time to update a
///   shared data structure.
pub trait ConcurrencyStore: Clone + Send + Sync + 'static {
    /// Proof of a slot; dropping it releases the slot.
    type Permit: ConcurrencyFeedback + Send + 'static;
    /// The wait for a slot.
    type Acquire: Future<Output = Result<Self::Permit, Error>> + Send;

    /// Asks for one slot of `key`, of which there are `limit`.
    ///
    /// A `limit` of 0 refuses every request for the key, in either policy.
    fn acquire(
        &self,
        key: &Key,
        limit: u32,
        policy: WaitPolicy,
    ) -> Admission<Self::Permit, Self::Acquire>;
}
