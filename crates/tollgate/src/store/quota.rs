//! The quota capability of a store: per-key windows, admitted all-or-nothing.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::{Admission, WaitPolicy};
use crate::Error;
use crate::key::Key;
use crate::quota::Quota;
use crate::quota::headers::PolicyFields;

/// The quotas one key is under at once ("35 per minute AND 800 per hour"): 1 to
/// [`QuotaSet::MAX`] quotas, cheap to clone and to move (one pointer to shared,
/// immutable data).
#[derive(Clone)]
pub struct QuotaSet(Arc<SetInner>);

struct SetInner {
    quotas: Box<[Quota]>,
    /// Derived once, read on every request.
    capacity: u32,
    spacing: Duration,
    forget_after: Duration,
    /// `forget_after` in nanoseconds, as the store's clock counts.
    forget_after_nanos: u64,
    /// The set's `RateLimit-Policy` value and policy names, made on first use.
    fields: OnceLock<PolicyFields>,
}

impl PartialEq for QuotaSet {
    fn eq(&self, other: &Self) -> bool {
        self.0.quotas == other.0.quotas
    }
}

impl QuotaSet {
    /// The most quotas one key can be under in one layer.
    pub const MAX: usize = 4;

    /// A set of quotas, all admitted together. Fails when `quotas` is empty or holds
    /// more than [`QuotaSet::MAX`].
    pub fn new(quotas: impl IntoIterator<Item = Quota>) -> Result<Self, QuotaSetError> {
        let quotas: Box<[Quota]> = quotas.into_iter().collect();
        if quotas.is_empty() || quotas.len() > Self::MAX {
            return Err(QuotaSetError(quotas.len()));
        }
        Ok(Self::derive(quotas))
    }

    fn derive(quotas: Box<[Quota]>) -> Self {
        let forget_after = quotas
            .iter()
            .map(Quota::forget_after)
            .max()
            .unwrap_or(Duration::ZERO);
        QuotaSet(Arc::new(SetInner {
            capacity: quotas.iter().map(Quota::capacity).min().unwrap_or(0),
            spacing: quotas
                .iter()
                .map(|q| q.window() / q.limit() * 9 / 10)
                .min()
                .unwrap_or(Duration::ZERO),
            forget_after,
            forget_after_nanos: crate::quota::nanos(forget_after),
            quotas,
            fields: OnceLock::new(),
        }))
    }

    /// The same set with every window widened by `margin`; see [`Quota::with_margin`].
    pub fn with_margin(&self, margin: Duration) -> Result<Self, crate::quota::QuotaError> {
        let widened: Result<Box<[Quota]>, _> = self
            .0
            .quotas
            .iter()
            .map(|q| q.with_margin(margin))
            .collect();
        Ok(Self::derive(widened?))
    }

    /// The largest cost every quota of the set can admit: a request costing more is
    /// refused at once with [`ErrorKind::CostTooHigh`](crate::ErrorKind::CostTooHigh).
    pub fn capacity(&self) -> u32 {
        self.0.capacity
    }

    /// The index of the first quota of the set that can never admit `cost` units
    /// (a cost above its [`capacity`](Quota::capacity)), or `None` when every quota can.
    /// A store refuses such a request at once with
    /// [`ErrorKind::CostTooHigh`](crate::ErrorKind::CostTooHigh) and this index.
    #[inline]
    pub fn too_costly(&self, cost: u32) -> Option<usize> {
        if cost <= self.0.capacity {
            return None;
        }
        self.0.quotas.iter().position(|q| q.capacity() < cost)
    }

    /// The parts of the `RateLimit` fields that depend on the set alone.
    pub(crate) fn policy_fields(&self) -> &PolicyFields {
        self.0
            .fields
            .get_or_init(|| PolicyFields::new(&self.0.quotas))
    }

    /// The spacing of releases from a wait queue: nine tenths of the shortest
    /// `window / limit` of the set (the average interval at which the most generous
    /// quota replenishes).
    ///
    /// A tenth under `W / N`, because the spacing only breaks up floods: the windows
    /// keep the quota by themselves. At exactly `W / N`, every release that comes late
    /// (tokio's timer fires on whole milliseconds, and the waiter must be scheduled)
    /// would push all later ones back, and a queue drained at the quota's rate would
    /// fall a few percent short of it (0.92 to 0.96 of Telegram's 30/s in the `goodput`
    /// example, against 0.97 to 0.98 with the tenth off).
    pub fn release_spacing(&self) -> Duration {
        self.0.spacing
    }

    /// The longest [`Quota::forget_after`] of the set: a key admitted at `t` and not
    /// since is fresh at `t + forget_after()`.
    pub fn forget_after(&self) -> Duration {
        self.0.forget_after
    }

    /// [`forget_after`](Self::forget_after) in nanoseconds, converted once.
    #[inline]
    pub(crate) fn forget_after_nanos(&self) -> u64 {
        self.0.forget_after_nanos
    }
}

impl From<Quota> for QuotaSet {
    fn from(quota: Quota) -> Self {
        Self::derive(Box::new([quota]))
    }
}

impl Deref for QuotaSet {
    type Target = [Quota];
    fn deref(&self) -> &[Quota] {
        &self.0.quotas
    }
}

impl fmt::Debug for QuotaSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.quotas.iter()).finish()
    }
}

/// A [`QuotaSet`] must hold 1 to [`QuotaSet::MAX`] quotas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaSetError(usize);

impl fmt::Display for QuotaSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a quota set holds 1 to {} quotas, not {}",
            QuotaSet::MAX,
            self.0
        )
    }
}

impl std::error::Error for QuotaSetError {}

/// One request's ask for quota.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QuotaAsk<'a> {
    /// The quotas of the key (all must admit).
    pub quotas: &'a QuotaSet,
    /// Quota units the request costs (a Graph `$batch` of 20 costs 20).
    pub cost: u32,
    /// Wait in the key's queue, or refuse at once.
    pub policy: WaitPolicy,
    /// Wait mode: a request whose wait is known to exceed this fails at once with
    /// [`ErrorKind::WaitExceeded`](crate::ErrorKind::WaitExceeded) instead of waiting.
    pub max_wait: Duration,
    /// Wait mode: the least time between two releases from the queue.
    pub spacing: Duration,
    /// Fill [`QuotaGrant::usage`] (for `RateLimit` headers).
    pub report: bool,
}

impl<'a> QuotaAsk<'a> {
    /// An ask for `cost` units of `quotas`, in reject mode, without usage report.
    pub fn new(quotas: &'a QuotaSet, cost: u32) -> Self {
        QuotaAsk {
            quotas,
            cost,
            policy: WaitPolicy::Reject,
            max_wait: Duration::ZERO,
            spacing: Duration::ZERO,
            report: false,
        }
    }

    /// Wait mode: queue up to `max_queue` deep, for at most `max_wait`, released at
    /// least `spacing` apart.
    pub fn wait(mut self, max_queue: usize, max_wait: Duration, spacing: Duration) -> Self {
        self.policy = WaitPolicy::Queue { max_queue };
        self.max_wait = max_wait;
        self.spacing = spacing;
        self
    }

    /// Asks for [`QuotaGrant::usage`].
    pub fn report(mut self, report: bool) -> Self {
        self.report = report;
        self
    }
}

/// One quota's state right after an admission, for `RateLimit` headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaUsage {
    /// Units still available now.
    pub remaining: u32,
    /// Time until the quota is fully replenished if nothing else is admitted.
    pub reset_after: Duration,
}

/// Proof of an admission: what to refund if the request never reaches the server.
///
/// Small (24 bytes) so that moving it through the layers costs little: the usage
/// report, asked for only when a layer emits `RateLimit` headers, is allocated by the
/// first [`set_usage`](Self::set_usage) and shared by clones (the layer keeps one for
/// the headers and hands one to the handler in its `QuotaDecision`).
#[derive(Clone, Debug)]
pub struct QuotaGrant {
    pub(crate) admitted_at: u64,
    pub(crate) cost: u32,
    usage: Option<Arc<Usage>>,
}

#[derive(Clone, Debug)]
struct Usage {
    quotas: [QuotaUsage; QuotaSet::MAX],
    reported: usize,
}

impl QuotaGrant {
    /// A grant made by a store at `admitted_at` (in the store's own clock, nanoseconds).
    pub fn new(admitted_at: u64, cost: u32) -> Self {
        QuotaGrant {
            admitted_at,
            cost,
            usage: None,
        }
    }

    /// Records the usage of the quota at `index` after this admission.
    pub fn set_usage(&mut self, index: usize, usage: QuotaUsage) {
        if index < QuotaSet::MAX {
            let report = Arc::make_mut(self.usage.get_or_insert_with(|| {
                Arc::new(Usage {
                    quotas: [QuotaUsage::default(); QuotaSet::MAX],
                    reported: 0,
                })
            }));
            report.quotas[index] = usage;
            report.reported = report.reported.max(index + 1);
        }
    }

    /// When the request was admitted, in the store's clock (nanoseconds).
    pub fn admitted_at(&self) -> u64 {
        self.admitted_at
    }

    /// Units admitted.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Each quota's state after the admission, in the order of the set (empty unless
    /// the ask asked for a report).
    pub fn usage(&self) -> &[QuotaUsage] {
        match &self.usage {
            Some(report) => &report.quotas[..report.reported],
            None => &[],
        }
    }
}

/// Per-key quota windows, admitted all-or-nothing.
///
/// # Contract
///
/// - An admission commits `cost` to every quota of the set, or to none: a request
///   refused by one window consumes nothing from the others.
/// - Never more admitted than each quota's semantics allow (see [`crate::quota`]).
/// - A refusal carries the exact time until the same request would be admitted
///   ([`Error::retry_after`]), never earlier.
/// - Wait mode: first come, first served per key; releases from the queue are at least
///   `spacing` apart; dropping the wait gives the place up without consuming quota.
/// - A cooldown (`cooldown`, `cooldown_all`) admits nothing for the key (or for every
///   key) until it ends, in both modes.
/// - `refund` gives back a grant whose request never reached the server. It is
///   synchronous and never fails: a remote store sends it in the background.
pub trait QuotaStore: Clone + Send + Sync + 'static {
    /// The wait for an admission.
    type Acquire: Future<Output = Result<QuotaGrant, Error>> + Send;

    /// Asks for `ask.cost` units of every quota of `key`.
    fn admit(&self, key: &Key, ask: &QuotaAsk<'_>) -> Admission<QuotaGrant, Self::Acquire>;

    /// Gives back an admission whose request never reached the server.
    fn refund(&self, key: &Key, quotas: &QuotaSet, grant: &QuotaGrant);

    /// Admits nothing for `key` until `until` (a later cooldown wins over an earlier).
    fn cooldown(&self, key: &Key, until: Instant);

    /// Admits nothing for any key until `until`.
    fn cooldown_all(&self, until: Instant);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_every_request_moves_stays_small() {
        // Both travel with every request through the layer and its future.
        assert_eq!(size_of::<QuotaSet>(), size_of::<usize>());
        assert!(size_of::<QuotaGrant>() <= 24);
    }

    #[test]
    fn usage_is_reported_only_once_set() {
        let mut grant = QuotaGrant::new(5, 2);
        assert!(grant.usage().is_empty());
        let used = QuotaUsage {
            remaining: 7,
            reset_after: Duration::from_secs(3),
        };
        grant.set_usage(1, used);
        grant.set_usage(QuotaSet::MAX, used); // out of range: ignored
        assert_eq!(grant.usage(), &[QuotaUsage::default(), used]);
        assert_eq!((grant.admitted_at(), grant.cost()), (5, 2));
    }

    #[test]
    fn too_costly_names_the_first_quota_that_can_never_admit() {
        let set = QuotaSet::new([
            Quota::sliding(100, Duration::from_secs(60)).unwrap(),
            Quota::sliding(10, Duration::from_secs(1)).unwrap(),
        ])
        .unwrap();
        assert_eq!(set.too_costly(10), None);
        assert_eq!(set.too_costly(11), Some(1));
        assert_eq!(set.too_costly(101), Some(0));
    }
}
