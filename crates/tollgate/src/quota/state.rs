//! [`WindowState`]: one key's state for one [`Quota`], and [`Wait`], its refusal.

use std::num::NonZeroU64;
use std::time::Duration;

use super::fixed::Fixed;
use super::sliding::Sliding;
use super::smooth::Smooth;
use super::{Quota, WindowKind, nanos};

/// Why [`WindowState::check`] refused a request, and when to come back.
///
/// Ordered by how long it asks to wait: `After(a) < After(b)` when `a < b`, and
/// `Never` is the greatest, so the longest wait over several windows is their `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Wait {
    /// The same request would be admitted exactly this many nanoseconds after `now`
    /// (never 0), if nothing else is committed, refunded or blocked meanwhile; and not
    /// one nanosecond earlier.
    After(NonZeroU64),
    /// The request costs more than the quota's [`capacity`](Quota::capacity): no wait
    /// will ever admit it.
    Never,
}

impl Wait {
    /// The wait in nanoseconds, or `None` for [`Wait::Never`].
    pub fn nanos(self) -> Option<u64> {
        match self {
            Wait::After(n) => Some(n.get()),
            Wait::Never => None,
        }
    }

    /// The wait as a [`Duration`], or `None` for [`Wait::Never`].
    pub fn duration(self) -> Option<Duration> {
        self.nanos().map(Duration::from_nanos)
    }

    /// The instant (on the caller's clock) at which the request would be admitted:
    /// `now + wait`, saturating; `None` for [`Wait::Never`].
    pub fn deadline(self, now: u64) -> Option<u64> {
        self.nanos().map(|n| now.saturating_add(n))
    }
}

/// One key's state for one [`Quota`]: fixed size (160 bytes, whatever the limit), no
/// heap, `Clone`, and compared with `==`.
///
/// Every method takes the quota the state was made for, and the caller's `now` in
/// nanoseconds (see the [module docs](super#time)). The methods are pure maths on the
/// state: the caller provides the lock and the clock.
///
/// A state passed a quota of another [`WindowKind`] than the one it was made for (the
/// quotas were reconfigured) behaves as a fresh state for that quota, apart from a
/// [`block_until`](WindowState::block_until), which is kept; `commit` then rebuilds it
/// for the new quota. A state passed another quota of the same kind gets decisions
/// that are well defined (no panic, counts saturate) but meaningless: don't.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowState {
    /// Nothing is admitted before this instant (0: not blocked).
    blocked: u64,
    window: Window,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Window {
    Sliding(Sliding),
    Fixed(Fixed),
    Smooth(Smooth),
}

impl Window {
    fn new(quota: &Quota, now: u64) -> Self {
        match quota.kind() {
            WindowKind::Sliding => Window::Sliding(Sliding::new(quota, now)),
            WindowKind::Fixed => Window::Fixed(Fixed::new(quota, now)),
            WindowKind::Smooth => Window::Smooth(Smooth::new(quota, now)),
        }
    }

    fn kind(&self) -> WindowKind {
        match self {
            Window::Sliding(_) => WindowKind::Sliding,
            Window::Fixed(_) => WindowKind::Fixed,
            Window::Smooth(_) => WindowKind::Smooth,
        }
    }

    /// The earliest `t ≥ from` at which `cost ≤ capacity` units fit.
    fn earliest(&self, quota: &Quota, from: u64, cost: u32) -> u64 {
        match self {
            Window::Sliding(w) => w.earliest(quota, from, cost),
            Window::Fixed(w) => w.earliest(quota, from, cost),
            Window::Smooth(w) => w.earliest(quota, from, cost),
        }
    }

    fn remaining(&self, quota: &Quota, now: u64) -> u32 {
        match self {
            Window::Sliding(w) => w.remaining(quota, now),
            Window::Fixed(w) => w.remaining(quota, now),
            Window::Smooth(w) => w.remaining(quota, now),
        }
    }
}

impl WindowState {
    /// A fresh state: as if the key had never been seen.
    pub fn new(quota: &Quota, now: u64) -> Self {
        WindowState {
            blocked: 0,
            window: Window::new(quota, now),
        }
    }

    /// The window to decide with: this one, or a fresh one if it was made for another
    /// kind of quota.
    fn with_window<R>(&self, quota: &Quota, now: u64, f: impl FnOnce(&Window) -> R) -> R {
        if self.window.kind() == quota.kind() {
            f(&self.window)
        } else {
            f(&Window::new(quota, now))
        }
    }

    /// The earliest instant `≥ now` at which `cost` units would be admitted if nothing
    /// else happens; `None` if `cost` exceeds the capacity.
    ///
    /// Every kind's admissible instants are upward-closed (admitted at `t`, admitted at
    /// every later `t'` too, if nothing else happens), so this is also where the
    /// answer switches from "no" to "yes", and blocking composes by `max`.
    fn earliest(&self, quota: &Quota, now: u64, cost: u32) -> Option<u64> {
        if cost > quota.capacity() {
            return None;
        }
        let from = now.max(self.blocked);
        Some(self.with_window(quota, now, |w| w.earliest(quota, from, cost)))
    }

    /// Would `cost` units be admitted at `now`?
    ///
    /// `Err(Wait::After(d))`: not before `now + d`, and exactly then if nothing else
    /// changes the state meanwhile (this is the `Retry-After` to answer; it is never
    /// early). `Err(Wait::Never)`: the cost exceeds [`Quota::capacity`]. A cost of 0 is
    /// admitted unless the state is [blocked](WindowState::block_until).
    ///
    /// Changes nothing: follow a successful check with [`commit`](WindowState::commit)
    /// at the same `now`, under the same lock.
    pub fn check(&self, quota: &Quota, now: u64, cost: u32) -> Result<(), Wait> {
        let Some(at) = self.earliest(quota, now, cost) else {
            return Err(Wait::Never);
        };
        match NonZeroU64::new(at - now) {
            None => Ok(()),
            Some(wait) => Err(Wait::After(wait)),
        }
    }

    /// Whether `cost` units would be admitted at `now`, by each kind's cheap test (no
    /// pass over a sliding ring, no conversion of the wait): `true` means
    /// [`check`](WindowState::check) would answer `Ok`; `false` means nothing, ask
    /// `check`. The store's hot path: most requests fit at once.
    #[inline]
    pub(crate) fn fits_now(&self, quota: &Quota, now: u64, cost: u32) -> bool {
        cost <= quota.capacity()
            && self.blocked <= now
            && match (&self.window, quota.kind()) {
                (Window::Sliding(w), WindowKind::Sliding) => w.fits_now(quota, now, cost),
                (Window::Smooth(w), WindowKind::Smooth) => w.fits_now(quota, now, cost),
                (Window::Fixed(w), WindowKind::Fixed) => w.fits_now(quota, now, cost),
                _ => false,
            }
    }

    /// Records an admission of `cost` units at `now`.
    ///
    /// Meant to follow a successful [`check`](WindowState::check) at the same `now`.
    /// Without one, it records a forced admission (a request that went out anyway):
    /// counts saturate instead of overflowing, and the window then refuses until the
    /// excess has expired.
    #[inline(always)]
    pub fn commit(&mut self, quota: &Quota, now: u64, cost: u32) {
        if cost == 0 {
            return;
        }
        if self.window.kind() != quota.kind() {
            self.window = Window::new(quota, now);
        }
        match &mut self.window {
            Window::Sliding(w) => w.commit(quota, now, cost),
            Window::Fixed(w) => w.commit(quota, now, cost),
            Window::Smooth(w) => w.commit(quota, now, cost),
        }
    }

    /// [`check`](WindowState::check), then [`commit`](WindowState::commit) if admitted.
    pub fn admit(&mut self, quota: &Quota, now: u64, cost: u32) -> Result<(), Wait> {
        self.check(quota, now, cost)?;
        self.commit(quota, now, cost);
        Ok(())
    }

    /// Undoes an admission of `cost` units committed at `admitted_at`, for a request
    /// that never reached the server.
    ///
    /// Gives back what the admission still holds at `now` and nothing more: nothing
    /// once it has left the window (sliding, fixed) or drained (smooth), so it is safe
    /// at any time and never drives a count below zero. Call it at most once per
    /// admission, with the `now` and `cost` of its `commit`: a refund of something never
    /// admitted would give away capacity that other admissions use.
    ///
    /// Sliding and fixed windows give the admission back exactly. A smooth window gives
    /// it back exactly when refunded at the instant of admission, and conservatively
    /// after that (see the [module docs](super#refunds)).
    pub fn refund(&mut self, quota: &Quota, admitted_at: u64, now: u64, cost: u32) {
        if self.window.kind() != quota.kind() {
            return;
        }
        match &mut self.window {
            Window::Sliding(w) => w.refund(quota, admitted_at, cost),
            Window::Fixed(w) => w.refund(quota, admitted_at, cost),
            Window::Smooth(w) => w.refund(quota, admitted_at, now, cost),
        }
    }

    /// True when this state makes the same decisions as [`WindowState::new`] at every
    /// instant from `now` on, whatever is committed or refunded: the store may drop
    /// it. That is exactly when a request of the full [`Quota::capacity`] would be
    /// admitted at `now`.
    pub fn is_fresh(&self, quota: &Quota, now: u64) -> bool {
        self.earliest(quota, now, quota.capacity()) == Some(now)
    }

    /// How many units a request could cost and be admitted at `now`: between 0 and
    /// [`Quota::capacity`]. This is the `r` of a `RateLimit` header field.
    pub fn remaining(&self, quota: &Quota, now: u64) -> u32 {
        if self.blocked > now {
            return 0;
        }
        self.with_window(quota, now, |w| w.remaining(quota, now))
            .min(quota.capacity())
    }

    /// Time until the window is fully replenished: until [`is_fresh`] holds and
    /// [`remaining`] is the full capacity, if nothing else happens. Zero when it is
    /// already.
    ///
    /// [`is_fresh`]: WindowState::is_fresh
    /// [`remaining`]: WindowState::remaining
    pub fn replenished_after(&self, quota: &Quota, now: u64) -> Duration {
        let at = self.earliest(quota, now, quota.capacity()).unwrap_or(now);
        Duration::from_nanos(at - now)
    }

    /// The `t` of a `RateLimit` header field: the time until more quota is available.
    ///
    /// When [`remaining`](WindowState::remaining) is 0, the time until at least one
    /// unit is available (the earliest `Retry-After` any request could get, so
    /// `Retry-After` is never earlier than `t`); otherwise the time until the window is
    /// fully replenished ([`replenished_after`](WindowState::replenished_after), 0 if it
    /// is). See the [module docs](super#ratelimit-header-fields).
    pub fn reset_after(&self, quota: &Quota, now: u64) -> Duration {
        let cost = if self.remaining(quota, now) == 0 {
            1
        } else {
            quota.capacity()
        };
        let at = self.earliest(quota, now, cost).unwrap_or(now);
        Duration::from_nanos(at - now)
    }

    /// Admits nothing before `until` (on the caller's clock); after it, the window's
    /// own accounting applies again. Extends an earlier block, never shortens it.
    ///
    /// This is a per-quota block, for server hints about one quota (`RateLimit:
    /// "hourly";r=0;t=30`). A block does not count as usage: [`refund`] and
    /// [`commit`] leave it alone, and the state is not fresh until it has passed.
    ///
    /// [`refund`]: WindowState::refund
    /// [`commit`]: WindowState::commit
    pub fn block_until(&mut self, until: u64) {
        self.blocked = self.blocked.max(until);
    }

    /// [`block_until`](WindowState::block_until)`(now + reset_after)`: the window
    /// reports 0 remaining until then, as a server answering `r=0;t=…` says.
    pub fn clamp_exhausted(&mut self, now: u64, reset_after: Duration) {
        self.block_until(now.saturating_add(nanos(reset_after)));
    }

    /// The instant before which nothing is admitted, if a block is set and not yet
    /// passed at `now`.
    pub fn blocked_until(&self, now: u64) -> Option<u64> {
        (self.blocked > now).then_some(self.blocked)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{Run, any_quota, assert_consistent, steps};
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const MINUTE: Duration = Duration::from_secs(60);

    fn all_kinds() -> [Quota; 3] {
        [
            Quota::sliding(4, MINUTE).unwrap(),
            Quota::fixed(4, MINUTE).unwrap(),
            Quota::smooth(4, MINUTE).unwrap().burst(4).unwrap(),
        ]
    }

    #[test]
    fn a_window_state_is_fixed_size_and_small() {
        assert_eq!(size_of::<WindowState>(), 160);
    }

    #[test]
    fn waits_order_by_length_and_never_is_the_longest() {
        let after = |n| Wait::After(NonZeroU64::new(n).unwrap());
        assert!(after(1) < after(2));
        assert!(after(u64::MAX) < Wait::Never);
        assert_eq!(after(5).deadline(10), Some(15));
        assert_eq!(after(5).duration(), Some(Duration::from_nanos(5)));
        assert_eq!(Wait::Never.deadline(10), None);
    }

    #[test]
    fn a_blocked_window_admits_nothing_until_the_block_ends() {
        for q in all_kinds() {
            let mut s = WindowState::new(&q, 0);
            s.clamp_exhausted(SEC, Duration::from_secs(30));
            assert_eq!(s.remaining(&q, SEC), 0, "{q}");
            assert_eq!(s.blocked_until(SEC), Some(31 * SEC));
            assert_eq!(s.check(&q, SEC, 0).unwrap_err().nanos(), Some(30 * SEC));
            assert_eq!(s.check(&q, SEC, 1).unwrap_err().nanos(), Some(30 * SEC));
            assert_eq!(s.reset_after(&q, SEC), Duration::from_secs(30));
            assert!(!s.is_fresh(&q, SEC));
            assert_eq!(s.check(&q, SEC, 5), Err(Wait::Never));
            // After the block, the window's own accounting applies again.
            assert_eq!(s.remaining(&q, 31 * SEC), 4, "{q}");
            assert!(s.is_fresh(&q, 31 * SEC));
            assert_eq!(s.blocked_until(31 * SEC), None);
        }
    }

    #[test]
    fn a_block_is_extended_never_shortened() {
        let q = Quota::fixed(1, MINUTE).unwrap();
        let mut s = WindowState::new(&q, 0);
        s.block_until(10 * SEC);
        s.block_until(5 * SEC);
        assert_eq!(s.blocked_until(0), Some(10 * SEC));
    }

    #[test]
    fn a_block_and_a_full_window_wait_for_the_later_of_the_two() {
        let q = Quota::sliding(1, Duration::from_secs(32)).unwrap();
        let mut s = WindowState::new(&q, 0);
        s.admit(&q, 0, 1).unwrap();
        s.block_until(10 * SEC);
        assert_eq!(s.check(&q, 0, 1).unwrap_err().nanos(), Some(33 * SEC - 1));
        s.block_until(40 * SEC);
        assert_eq!(s.check(&q, 0, 1).unwrap_err().nanos(), Some(40 * SEC));
    }

    #[test]
    fn reset_after_is_the_next_unit_when_exhausted_and_full_replenishment_otherwise() {
        let q = Quota::smooth(4, Duration::from_secs(4))
            .unwrap()
            .burst(4)
            .unwrap();
        let mut s = WindowState::new(&q, 0);
        s.admit(&q, 0, 3).unwrap();
        assert_eq!(s.remaining(&q, 0), 1);
        assert_eq!(s.reset_after(&q, 0), Duration::from_secs(3));
        s.admit(&q, 0, 1).unwrap();
        assert_eq!(s.remaining(&q, 0), 0);
        assert_eq!(s.reset_after(&q, 0), Duration::from_secs(1));
        assert_eq!(s.replenished_after(&q, 0), Duration::from_secs(4));
    }

    #[test]
    fn a_fresh_state_reports_full_capacity_and_no_reset() {
        for q in all_kinds() {
            let s = WindowState::new(&q, 7);
            assert!(s.is_fresh(&q, 7));
            assert_eq!(s.remaining(&q, 7), q.capacity());
            assert_eq!(s.reset_after(&q, 7), Duration::ZERO);
        }
    }

    #[test]
    fn a_state_used_with_another_kind_of_quota_starts_afresh_for_it() {
        let [sliding, fixed, _] = all_kinds();
        let mut s = WindowState::new(&sliding, 0);
        s.admit(&sliding, 0, 4).unwrap();
        s.block_until(SEC);
        assert_eq!(s.remaining(&fixed, 2 * SEC), 4);
        s.refund(&fixed, 0, 2 * SEC, 4);
        s.admit(&fixed, 2 * SEC, 1).unwrap();
        assert_eq!(s, {
            let mut t = WindowState::new(&fixed, 2 * SEC);
            t.block_until(SEC);
            t.commit(&fixed, 2 * SEC, 1);
            t
        });
    }

    /// Decisions and reports of two states, from `now` on, for a probe of every cost.
    fn same_decisions(q: &Quota, a: &WindowState, b: &WindowState, now: u64) -> bool {
        (0..=q.capacity() + 1).all(|c| a.check(q, now, c) == b.check(q, now, c))
            && a.remaining(q, now) == b.remaining(q, now)
            && a.reset_after(q, now) == b.reset_after(q, now)
            && a.replenished_after(q, now) == b.replenished_after(q, now)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn remaining_reset_and_freshness_agree_with_check(q in any_quota(), steps in steps(80)) {
            // `Run::drive` calls `assert_consistent` before every step.
            let run = Run::drive(&q, &steps, None);
            assert_consistent(&q, &run.state, run.now);
        }

        #[test]
        fn a_fresh_state_and_a_new_one_decide_alike_forever(
            q in any_quota(),
            past in steps(60),
            future in steps(60),
        ) {
            let run = Run::drive(&q, &past, None);
            let now = run.now;
            let kept = run.state.clone();
            let new = WindowState::new(&q, now);
            prop_assert_eq!(kept.is_fresh(&q, now), same_decisions(&q, &kept, &new, now));
            if !kept.is_fresh(&q, now) {
                // Exactly: a full-capacity request tells them apart at once.
                prop_assert!(kept.check(&q, now, q.capacity()).is_err());
                return Ok(());
            }
            // Drive both through the same future, including refunds of admissions made
            // before the eviction; they must agree at every step.
            let (mut kept, mut new, mut now) = (kept, new, now);
            let mut admitted: Vec<(u64, u32)> = run.effective();
            let mut last_wait = None;
            for step in &future {
                now += step.advance(&q, now, last_wait);
                if let Some(pick) = &step.refund {
                    if !admitted.is_empty() {
                        let (at, cost) = admitted.swap_remove(pick.index(admitted.len()));
                        kept.refund(&q, at, now, cost);
                        new.refund(&q, at, now, cost);
                    }
                }
                prop_assert!(same_decisions(&q, &kept, &new, now));
                let decision = kept.admit(&q, now, step.cost);
                prop_assert_eq!(decision, new.admit(&q, now, step.cost));
                last_wait = decision.err();
                if decision.is_ok() {
                    admitted.push((now, step.cost));
                }
            }
        }

        #[test]
        fn a_refund_at_the_admission_instant_leaves_no_trace(
            q in any_quota(),
            past in steps(60),
            cost in 1u32..=4,
        ) {
            let run = Run::drive(&q, &past, None);
            let (mut s, now) = (run.state.clone(), run.now);
            if s.admit(&q, now, cost).is_ok() {
                s.refund(&q, now, now, cost);
                prop_assert!(same_decisions(&q, &s, &run.state, now));
                for later in [1, q.step_nanos(), q.window_nanos(), 2 * q.window_nanos()] {
                    prop_assert!(same_decisions(&q, &s, &run.state, now + later));
                }
            }
        }

        #[test]
        fn refunds_give_back_exactly_what_replaying_without_them_would_have(
            q in any_quota(),
            steps in steps(100),
        ) {
            // Sliding and fixed: the state after refunds decides exactly as one that saw
            // only the admissions left. Smooth: never more permissively than that.
            let run = Run::drive(&q, &steps, None);
            let mut replay = WindowState::new(&q, 0);
            for (at, cost) in run.effective() {
                replay.commit(&q, at, cost);
            }
            let now = run.now;
            if q.kind() == WindowKind::Smooth {
                for c in 0..=q.capacity() {
                    prop_assert!(run.state.earliest(&q, now, c) >= replay.earliest(&q, now, c));
                }
            } else {
                prop_assert!(same_decisions(&q, &run.state, &replay, now));
            }
        }

        #[test]
        fn arbitrary_refunds_never_underflow_or_overflow(
            q in any_quota(),
            steps in steps(60),
            bogus in prop::collection::vec((0u64..100_000_000, 0u32..=u32::MAX, 0u64..100_000_000), 0..20),
        ) {
            let run = Run::drive(&q, &steps, None);
            let mut s = run.state;
            for (at, cost, later) in bogus {
                s.refund(&q, at, run.now + later, cost);
                s.commit(&q, run.now + later, cost);
                prop_assert!(s.remaining(&q, run.now + later) <= q.capacity());
            }
        }
    }
}
