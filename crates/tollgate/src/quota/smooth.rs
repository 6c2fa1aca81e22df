//! The smooth window: GCRA (the generic cell rate algorithm, "virtual scheduling").
//!
//! With emission interval `T = ⌈W/N⌉` and burst `b`, the state is the theoretical
//! arrival time `tat`: the instant at which everything admitted so far would have
//! drained at one unit per `T`. A request of `c` units at `t` is admitted iff
//!
//! ```text
//! max(tat, t) + c·T − t ≤ b·T        ⟺   t ≥ tat − (b − c)·T
//! ```
//!
//! and then `tat ← max(tat, t) + c·T`. So the earliest admission time is
//! `max(t, tat − (b − c)·T)`, exactly, and a cost above `b` never fits.
//!
//! # The bound
//!
//! Unrolled, `tat` after the `n`-th admission is `max_k (t_k + T·Σ_{j≥k} c_j)`. Take
//! the admissions with times in any closed interval `[a, a + L]`, `U` units in all, and
//! let `f` and `l` be the first and last of them to be *processed*. Then `tat` after `l`
//! is at least `t_f + U·T` and, since `l` was admitted, at most `t_l + b·T`, so
//!
//! ```text
//! U·T ≤ b·T + (t_l − t_f) ≤ b·T + L
//! ```
//!
//! whatever order the calls came in. In a half-open interval of length `L` the spread
//! is below `L`, hence `U < b + L/T`: at most `b + ⌈L/T⌉ − 1` units, and since
//! `T ≥ W/N`, at most `b + N − 1` in any interval of length `W`. The bound is reached
//! (`b` units at once, then one every `T`) whenever `(N − 1)·T < W`.
//!
//! # Refunds
//!
//! Removing admission `i` (at `t_i`, `c` units) from the history lowers `tat` by at
//! most the part of `[max(t_i, ·), … + c·T)` still ahead of the refund time `now'`,
//! which is at least `min(c·T, t_i + c·T − now')` as long as every admission so far
//! happened at or before `now'`. [`Smooth::refund`] takes off exactly that much, with
//! `now' = max(now, latest admission time)`, so the refunded state is never more
//! permissive than one that never saw the admission, and the bound above holds for the
//! admissions that were not refunded. A refund at the same instant as the admission
//! (the common case: rejected further in) gives everything back; one made `c·T` or
//! more after it gives nothing back, as the units have drained already.

use super::Quota;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Smooth {
    /// Theoretical arrival time; `tat ≤ now` means the burst is fully available.
    tat: u64,
    /// The latest `now` of any commit, which bounds what a refund may give back.
    latest: u64,
}

/// `c·T`: `c ≤ b` and `b·T ≤ 365 days`, so no overflow for admissible costs; larger
/// ones (commits without a check) saturate.
fn span(quota: &Quota, cost: u32) -> u64 {
    u64::from(cost).saturating_mul(quota.step_nanos())
}

impl Smooth {
    pub(super) fn new(_quota: &Quota, _now: u64) -> Self {
        Smooth { tat: 0, latest: 0 }
    }

    /// The earliest `t ≥ from` at which `cost ≤ b` units fit.
    pub(super) fn earliest(&self, quota: &Quota, from: u64, cost: u32) -> u64 {
        let slack = span(quota, quota.capacity().saturating_sub(cost));
        from.max(self.tat.saturating_sub(slack))
    }

    /// Whether `cost ≤ b` units fit at `now`: `earliest(now) == now`, exactly.
    #[inline]
    pub(super) fn fits_now(&self, quota: &Quota, now: u64, cost: u32) -> bool {
        let slack = span(quota, quota.capacity().saturating_sub(cost));
        self.tat.saturating_sub(slack) <= now
    }

    /// `b − ⌈(tat − now)/T⌉`: the largest `c` with `tat − (b − c)·T ≤ now`.
    pub(super) fn remaining(&self, quota: &Quota, now: u64) -> u32 {
        let ahead = self.tat.saturating_sub(now);
        let used = ahead.div_ceil(quota.step_nanos());
        let left = u64::from(quota.capacity()).saturating_sub(used);
        // At most the burst, a u32.
        left as u32
    }

    #[inline]
    pub(super) fn commit(&mut self, quota: &Quota, now: u64, cost: u32) {
        self.tat = self.tat.max(now).saturating_add(span(quota, cost));
        self.latest = self.latest.max(now);
    }

    pub(super) fn refund(&mut self, quota: &Quota, admitted_at: u64, now: u64, cost: u32) {
        let now = now.max(self.latest);
        let ahead = admitted_at
            .saturating_add(span(quota, cost))
            .saturating_sub(now);
        let back = ahead.min(span(quota, cost));
        self.tat = self.tat.saturating_sub(back);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::testing::{Model, Run, assert_exact_waits, steps};
    use super::super::{Quota, Wait, WindowState};
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_default_burst_admits_one_unit_per_interval() {
        let q = Quota::smooth(60, MINUTE).unwrap();
        let mut s = WindowState::new(&q, 0);
        s.admit(&q, 0, 1).unwrap();
        assert_eq!(s.check(&q, 0, 1).unwrap_err().nanos(), Some(SEC));
        assert!(s.check(&q, SEC - 1, 1).is_err());
        s.admit(&q, SEC, 1).unwrap();
    }

    #[test]
    fn a_burst_is_available_after_an_idle_period_then_units_come_back_one_per_interval() {
        let q = Quota::smooth(60, MINUTE).unwrap().burst(5).unwrap();
        let mut s = WindowState::new(&q, 100 * SEC);
        s.admit(&q, 100 * SEC, 5).unwrap();
        assert_eq!(s.remaining(&q, 100 * SEC), 0);
        assert_eq!(s.remaining(&q, 101 * SEC), 1);
        assert_eq!(
            s.check(&q, 100 * SEC, 2).unwrap_err().nanos(),
            Some(2 * SEC)
        );
        assert_eq!(s.replenished_after(&q, 100 * SEC), Duration::from_secs(5));
    }

    #[test]
    fn governors_per_minute_sixty_case_is_bounded_by_burst_plus_n_minus_one() {
        // governor's `Quota::per_minute(60)` is burst 60: 119 in a sliding minute.
        let q = Quota::smooth(60, MINUTE).unwrap().burst(60).unwrap();
        let mut s = WindowState::new(&q, 0);
        let mut admitted = 0;
        let mut now = 0;
        while now < 60 * SEC {
            match s.admit(&q, now, 1) {
                Ok(()) => admitted += 1,
                Err(wait) => now = wait.deadline(now).unwrap(),
            }
        }
        assert_eq!(admitted, 60 + 60 - 1);
    }

    #[test]
    fn a_cost_above_the_burst_is_never_admitted() {
        let q = Quota::smooth(60, MINUTE).unwrap().burst(3).unwrap();
        assert_eq!(WindowState::new(&q, 0).check(&q, 0, 4), Err(Wait::Never));
    }

    #[test]
    fn a_refund_at_the_admission_instant_gives_everything_back() {
        let q = Quota::smooth(10, Duration::from_secs(10))
            .unwrap()
            .burst(3)
            .unwrap();
        let mut s = Smooth::new(&q, 0);
        s.commit(&q, 5 * SEC, 2);
        s.refund(&q, 5 * SEC, 5 * SEC, 2);
        assert_eq!(s.remaining(&q, 5 * SEC), 3);
    }

    #[test]
    fn a_refund_gives_back_only_what_has_not_drained() {
        let q = Quota::smooth(10, Duration::from_secs(10))
            .unwrap()
            .burst(3)
            .unwrap();
        let mut s = Smooth::new(&q, 0);
        s.commit(&q, 0, 2); // tat = 2 s
        s.commit(&q, SEC, 1); // tat = 3 s
        // At 1.5 s, half of the first admission's 2 s has drained.
        s.refund(&q, 0, SEC + SEC / 2, 2);
        assert_eq!(s.tat, 2 * SEC + SEC / 2);
        // Long after, nothing is given back.
        s.refund(&q, SEC, 100 * SEC, 1);
        assert_eq!(s.tat, 2 * SEC + SEC / 2);
    }

    #[test]
    fn a_refund_never_gives_back_capacity_a_later_admission_used() {
        // b = 1, T = 10: A at 0, B at 10; refunding A at 10 must not let C in at 10.
        let q = Quota::smooth(1, Duration::from_nanos(10_000_000)).unwrap();
        let t = q.step_nanos();
        let mut s = WindowState::new(&q, 0);
        s.admit(&q, 0, 1).unwrap();
        s.admit(&q, t, 1).unwrap();
        s.refund(&q, 0, t, 1);
        assert!(s.check(&q, t, 1).is_err());
    }

    #[test]
    fn a_refund_read_before_a_later_commit_is_held_to_that_commit() {
        let q = Quota::smooth(1, Duration::from_nanos(10_000_000))
            .unwrap()
            .burst(2)
            .unwrap();
        let t = q.step_nanos();
        let mut s = Smooth::new(&q, 0);
        s.commit(&q, 0, 1);
        s.commit(&q, t, 2);
        // A refund whose clock reading (t/2) predates the commit at t gives back only
        // what is still ahead of t.
        s.refund(&q, 0, t / 2, 1);
        assert_eq!(s.tat, 3 * t);
    }

    #[test]
    fn the_state_is_fixed_size_whatever_the_limit() {
        assert_eq!(size_of::<Smooth>(), 16);
    }

    fn smooth_quota() -> impl Strategy<Value = Quota> {
        (1u32..=12, 1_000_000u64..=20_000_000, 1u32..=6).prop_map(|(n, w, b)| {
            Quota::smooth(n, Duration::from_nanos(w))
                .unwrap()
                .burst(b)
                .unwrap()
        })
    }

    /// The plain model: GCRA unrolled, `tat = max_k (t_k + T·Σ_{j≥k} c_j)` over the
    /// admissions not refunded (which is never more restrictive than the real state).
    #[derive(Default)]
    struct Unrolled(Vec<(u64, u32)>);

    impl Unrolled {
        fn tat(&self, q: &Quota) -> u64 {
            let mut suffix = 0;
            let mut tat = 0;
            for &(t, c) in self.0.iter().rev() {
                suffix += span(q, c);
                tat = tat.max(t + suffix);
            }
            tat
        }
    }

    impl Model for Unrolled {
        fn commit(&mut self, _q: &Quota, now: u64, cost: u32) {
            self.0.push((now, cost));
        }
        fn refund(&mut self, _q: &Quota, admitted_at: u64, _now: u64, cost: u32) {
            let at = self
                .0
                .iter()
                .position(|&a| a == (admitted_at, cost))
                .unwrap();
            self.0.remove(at);
        }
        fn earliest(&self, q: &Quota, now: u64, cost: u32) -> Option<u64> {
            (cost <= q.capacity())
                .then(|| now.max(self.tat(q).saturating_sub(span(q, q.capacity() - cost))))
        }
        fn exact(&self) -> bool {
            false
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// `Run::drive` also asserts, at every step, that the state decides exactly as
        /// the unrolled GCRA (never more permissively once refunds happened) and that
        /// every wait is exact.
        #[test]
        fn after_the_burst_units_are_spaced_by_the_interval_so_at_most_b_plus_n_minus_1_fit_in_w(
            q in smooth_quota(),
            steps in steps(160),
        ) {
            let run = Run::drive(&q, &steps, Some(&mut Unrolled::default()));
            run.assert_gcra_spacing(q.step_nanos(), u64::from(q.capacity()));
            let bound = u64::from(q.capacity()) + u64::from(q.limit()) - 1;
            run.assert_at_most_n_per_sliding_window(q.window_nanos(), bound);
        }

        #[test]
        fn guarantees_hold_when_commits_arrive_slightly_out_of_order(
            q in smooth_quota(),
            steps in steps(120),
            jitter in prop::collection::vec(0u64..3_000_000, 120),
        ) {
            let run = Run::drive_jittered(&q, &steps, &jitter);
            run.assert_gcra_spacing(q.step_nanos(), u64::from(q.capacity()));
            let bound = u64::from(q.capacity()) + u64::from(q.limit()) - 1;
            run.assert_at_most_n_per_sliding_window(q.window_nanos(), bound);
        }

        #[test]
        fn exact_waits_hold_for_every_state_reached(q in smooth_quota(), steps in steps(80)) {
            let run = Run::drive(&q, &steps, None);
            assert_exact_waits(&q, &run.state, run.now);
        }
    }
}
