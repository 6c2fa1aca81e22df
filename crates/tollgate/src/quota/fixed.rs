//! The fixed window: a counter per aligned window `[kW, (k+1)W)`.
//!
//! The state keeps the counts of the newest window `k` it has seen and of the one
//! before, so that a commit whose `now` is slightly behind (it read the clock, then
//! waited for the lock while another request moved the state into the next window) is
//! still counted in its own window: "never more than `N` per aligned window" holds for
//! the callers' timestamps in any processing order. A check in window `k − 1` also
//! requires room in window `k`, which makes the set of admissible times upward-closed
//! (admitted at `t`, then admitted at every later `t'` if nothing else happens), as for
//! the other kinds; windows before `k − 1` are forgotten and count as full.

use super::Quota;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fixed {
    /// The newest window index seen.
    window: u64,
    /// Units admitted in window `window`.
    current: u32,
    /// Units admitted in window `window − 1`.
    previous: u32,
}

impl Fixed {
    pub(super) fn new(quota: &Quota, now: u64) -> Self {
        Fixed {
            window: now / quota.window_nanos(),
            current: 0,
            previous: 0,
        }
    }

    fn start(quota: &Quota, k: u64) -> u64 {
        k.saturating_mul(quota.window_nanos())
    }

    /// The earliest `t ≥ from` at which `cost ≤ limit` units fit.
    pub(super) fn earliest(&self, quota: &Quota, from: u64, cost: u32) -> u64 {
        let fits = |used: u32| u64::from(used) + u64::from(cost) <= u64::from(quota.limit());
        let k = self.window;
        let next = Fixed::start(quota, k + 1);
        let at = from / quota.window_nanos();
        if at > k {
            return from;
        }
        if at == k {
            return if fits(self.current) { from } else { next };
        }
        // In window k − 1, or before it (forgotten: full until window k − 1 starts).
        let from = if at + 1 == k {
            from
        } else {
            Fixed::start(quota, k - 1)
        };
        if fits(self.previous.max(self.current)) {
            from
        } else if fits(self.current) {
            Fixed::start(quota, k)
        } else {
            next
        }
    }

    /// Whether `cost ≤ limit` units fit at `now` in the newest window seen (or a later
    /// one): `true` means `earliest(now) == now`; `false` means "ask `earliest`" (a
    /// `now` in an older window is left to it).
    #[inline]
    pub(super) fn fits_now(&self, quota: &Quota, now: u64, cost: u32) -> bool {
        let at = now / quota.window_nanos();
        at > self.window
            || (at == self.window
                && u64::from(self.current) + u64::from(cost) <= u64::from(quota.limit()))
    }

    pub(super) fn remaining(&self, quota: &Quota, now: u64) -> u32 {
        let at = now / quota.window_nanos();
        let used = if at > self.window {
            0
        } else if at == self.window {
            self.current
        } else if at + 1 == self.window {
            self.previous.max(self.current)
        } else {
            return 0;
        };
        quota.limit().saturating_sub(used)
    }

    #[inline]
    pub(super) fn commit(&mut self, quota: &Quota, now: u64, cost: u32) {
        let at = now / quota.window_nanos();
        if at > self.window {
            self.previous = if at == self.window + 1 {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.window = at;
        }
        // A `now` before window k − 1 (a commit without a successful check) is counted
        // in window k − 1, the oldest one kept.
        let count = if at == self.window {
            &mut self.current
        } else {
            &mut self.previous
        };
        *count = count.saturating_add(cost);
    }

    /// Takes `cost` units out of the window of `admitted_at` if it is one of the two
    /// kept; an older window is over, and its count with it.
    pub(super) fn refund(&mut self, quota: &Quota, admitted_at: u64, cost: u32) {
        let at = admitted_at / quota.window_nanos();
        let count = if at == self.window {
            &mut self.current
        } else if at + 1 == self.window {
            &mut self.previous
        } else {
            return;
        };
        *count = count.saturating_sub(cost);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::testing::{Model, Run, assert_exact_waits, steps};
    use super::super::{Quota, Wait, WindowState};
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn quota(limit: u32, window_secs: u64) -> Quota {
        Quota::fixed(limit, Duration::from_secs(window_secs)).unwrap()
    }

    #[test]
    fn a_full_window_frees_when_the_next_window_starts() {
        let q = quota(2, 60);
        let mut s = WindowState::new(&q, 0);
        s.admit(&q, 10 * SEC, 2).unwrap();
        assert_eq!(
            s.check(&q, 10 * SEC, 1).unwrap_err().nanos(),
            Some(50 * SEC)
        );
        assert!(s.check(&q, 60 * SEC - 1, 1).is_err());
        assert!(s.check(&q, 60 * SEC, 2).is_ok());
    }

    #[test]
    fn two_full_windows_fit_in_two_nanoseconds_across_a_boundary() {
        // The documented worst case: 2N in an unaligned interval of length W.
        let q = quota(3, 60);
        let mut s = WindowState::new(&q, 0);
        s.admit(&q, 60 * SEC - 1, 3).unwrap();
        s.admit(&q, 60 * SEC, 3).unwrap();
    }

    #[test]
    fn a_cost_above_the_limit_is_never_admitted() {
        let q = quota(3, 60);
        assert_eq!(WindowState::new(&q, 0).check(&q, 0, 4), Err(Wait::Never));
    }

    #[test]
    fn a_late_commit_counts_in_its_own_window() {
        let q = quota(3, 60);
        let mut s = Fixed::new(&q, 0);
        s.commit(&q, 59 * SEC, 3);
        s.commit(&q, 61 * SEC, 1);
        // A request that read the clock at 59.5 s finds window 0 full...
        assert_eq!(s.earliest(&q, 59 * SEC + SEC / 2, 1), 60 * SEC);
        // ...and a commit there would be counted in window 0, refundable there.
        s.commit(&q, 59 * SEC, 1);
        assert_eq!(s.previous, 4);
        s.refund(&q, 59 * SEC, 1);
        assert_eq!((s.previous, s.current), (3, 1));
    }

    #[test]
    fn a_check_before_the_previous_window_treats_it_as_full() {
        let q = quota(3, 60);
        let mut s = Fixed::new(&q, 0);
        s.commit(&q, 300 * SEC, 1);
        assert_eq!(s.remaining(&q, 200 * SEC), 0);
        assert_eq!(s.earliest(&q, 200 * SEC, 1), 240 * SEC);
        assert_eq!(s.remaining(&q, 300 * SEC), 2);
    }

    #[test]
    fn refunds_of_a_finished_window_do_nothing() {
        let q = quota(3, 60);
        let mut s = Fixed::new(&q, 0);
        s.commit(&q, 0, 3);
        s.commit(&q, 130 * SEC, 1);
        s.refund(&q, 0, 3);
        assert_eq!((s.window, s.current, s.previous), (2, 1, 0));
        s.refund(&q, 130 * SEC, 5);
        assert_eq!(s.current, 0);
    }

    #[test]
    fn the_state_is_fixed_size_whatever_the_limit() {
        assert_eq!(size_of::<Fixed>(), 16);
    }

    fn fixed_quota() -> impl Strategy<Value = Quota> {
        (1u32..=12, 1_000_000u64..=20_000_000)
            .prop_map(|(n, w)| Quota::fixed(n, Duration::from_nanos(w)).unwrap())
    }

    /// The plain model: a count per window index, kept forever.
    #[derive(Default)]
    struct Counts(HashMap<u64, u64>);

    impl Model for Counts {
        fn commit(&mut self, q: &Quota, now: u64, cost: u32) {
            *self.0.entry(now / q.window_nanos()).or_default() += u64::from(cost);
        }
        fn refund(&mut self, q: &Quota, admitted_at: u64, _now: u64, cost: u32) {
            *self.0.get_mut(&(admitted_at / q.window_nanos())).unwrap() -= u64::from(cost);
        }
        fn earliest(&self, q: &Quota, now: u64, cost: u32) -> Option<u64> {
            let w = q.window_nanos();
            let fits = |k: u64| {
                self.0.get(&k).copied().unwrap_or(0) + u64::from(cost) <= u64::from(q.limit())
            };
            if cost > q.limit() {
                None
            } else if fits(now / w) {
                Some(now)
            } else {
                Some((now / w + 1) * w)
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// `Run::drive` also asserts, at every step, that the two-window state decides
        /// exactly as the plain model and that every wait is exact.
        #[test]
        fn never_more_than_n_per_aligned_window_and_2n_in_any_interval_of_length_w(
            q in fixed_quota(),
            steps in steps(160),
        ) {
            let run = Run::drive(&q, &steps, Some(&mut Counts::default()));
            let n = u64::from(q.limit());
            run.assert_at_most_n_per_aligned_window(q.window_nanos(), n);
            run.assert_at_most_n_per_sliding_window(q.window_nanos(), 2 * n);
        }

        #[test]
        fn guarantees_hold_when_commits_arrive_slightly_out_of_order(
            q in fixed_quota(),
            steps in steps(120),
            jitter in prop::collection::vec(0u64..3_000_000, 120),
        ) {
            let run = Run::drive_jittered(&q, &steps, &jitter);
            run.assert_at_most_n_per_aligned_window(q.window_nanos(), u64::from(q.limit()));
        }

        #[test]
        fn exact_waits_hold_for_every_state_reached(q in fixed_quota(), steps in steps(80)) {
            let run = Run::drive(&q, &steps, None);
            assert_exact_waits(&q, &run.state, run.now);
        }
    }
}
