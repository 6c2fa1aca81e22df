//! The sliding window: a ring of per-bucket counters.
//!
//! Bucket `j` covers `[j·g, (j+1)·g)` of the caller's clock, `g` the quota's
//! granularity `⌈W / 32⌉`. Admissions are counted in the bucket of their `now`. The
//! latest instant of bucket `j` is `(j+1)·g − 1`; it leaves every window `(t − W, t]`
//! once `t ≥ (j+1)·g − 1 + W`, so bucket `j` *expires* at
//!
//! ```text
//! E(j) = (j+1)·g + W − 1
//! ```
//!
//! and a check at `t` counts every bucket with `E(j) > t`. Every admission at `a` has
//! `E(bucket(a)) ≥ a + W`, so it is counted at every `t` whose window `(t − W, t]` can
//! contain it: the guarantee "never more than `N` in any interval of length `W`" holds
//! exactly, for any processing order of the calls (a commit whose `now` is a little
//! behind the state's newest bucket is counted in its own bucket, which is still in the
//! ring).
//!
//! Because `32·g ≥ W`, at most 33 buckets can be unexpired at once, so the ring holds
//! [`RING`] = 33 counters. Buckets older than the ring are forgotten; a check at a time
//! at which a forgotten bucket could still be unexpired (only possible when `now` runs
//! backwards by more than a bucket) treats the window as full until that bucket's
//! expiry: unknown history is never under-counted.

use super::Quota;

/// Counters kept per key: one more than [`Quota::SLIDING_BUCKETS`], because a window
/// `(t − W, t]` with `W ≤ 32·g` overlaps at most 33 aligned buckets.
pub(super) const RING: usize = Quota::SLIDING_BUCKETS as usize + 1;
const RING_U64: u64 = RING as u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Sliding {
    /// The newest bucket index held; the ring holds buckets `newest − 32 ..= newest`.
    newest: u64,
    /// `counts[j % RING]` is the units admitted in bucket `j`, for the buckets held.
    counts: [u32; RING],
    /// At least the sum of `counts`: exactly it, or `u32::MAX` once the sum has
    /// overflowed (sticky until the ring is cleared). It sits in what would be padding,
    /// and lets a check that fits even if no bucket had expired skip the pass over the
    /// ring.
    total: u32,
}

fn slot(j: u64) -> usize {
    // Below RING, so the cast is lossless.
    (j % RING_U64) as usize
}

/// `E(j)`: when bucket `j` stops counting.
fn expiry(quota: &Quota, j: u64) -> u64 {
    (j + 1)
        .saturating_mul(quota.step_nanos())
        .saturating_add(quota.window_nanos() - 1)
}

impl Sliding {
    pub(super) fn new(quota: &Quota, now: u64) -> Self {
        Sliding {
            newest: now / quota.step_nanos(),
            counts: [0; RING],
            total: 0,
        }
    }

    /// The oldest bucket index the ring holds.
    fn oldest(&self) -> u64 {
        self.newest.saturating_sub(RING_U64 - 1)
    }

    /// Until when forgotten history may still count (0 when nothing was forgotten).
    fn unknown_until(&self, quota: &Quota) -> u64 {
        match self.newest.checked_sub(RING_U64) {
            Some(forgotten) => expiry(quota, forgotten),
            None => 0,
        }
    }

    /// Units counted at `t` among the buckets held.
    fn used(&self, quota: &Quota, t: u64) -> u64 {
        (self.oldest()..=self.newest)
            .filter(|&j| expiry(quota, j) > t)
            .map(|j| u64::from(self.counts[slot(j)]))
            .sum()
    }

    /// Whether `cost` units fit at `now` by the fast path of [`earliest`](Self::earliest)
    /// (every unit held in the ring counted, expired or not): `true` means
    /// `earliest(now) == now`; `false` means "ask `earliest`".
    #[inline]
    pub(super) fn fits_now(&self, quota: &Quota, now: u64, cost: u32) -> bool {
        u64::from(self.total) + u64::from(cost) <= u64::from(quota.limit())
            && now >= self.unknown_until(quota)
    }

    /// The earliest `t ≥ from` at which `cost ≤ capacity` units fit, if nothing else
    /// happens. Exact: buckets expire in index order, so the count only falls, one
    /// bucket at a time.
    pub(super) fn earliest(&self, quota: &Quota, from: u64, cost: u32) -> u64 {
        let limit = u64::from(quota.limit());
        let cost = u64::from(cost);
        let unknown_until = self.unknown_until(quota);
        // Fast path: the units held in the ring, expired or not, bound those that count.
        if from >= unknown_until && u64::from(self.total) + cost <= limit {
            return from;
        }
        let mut t = from.max(unknown_until);
        let mut used = self.used(quota, t);
        for j in self.oldest()..=self.newest {
            if used + cost <= limit {
                break;
            }
            let (e, count) = (expiry(quota, j), self.counts[slot(j)]);
            if e > t && count > 0 {
                used -= u64::from(count);
                t = e;
            }
        }
        t
    }

    pub(super) fn remaining(&self, quota: &Quota, now: u64) -> u32 {
        if self.unknown_until(quota) > now {
            return 0;
        }
        let left = u64::from(quota.limit()).saturating_sub(self.used(quota, now));
        // At most the limit, a u32.
        left as u32
    }

    #[inline]
    pub(super) fn commit(&mut self, quota: &Quota, now: u64, cost: u32) {
        let j = now / quota.step_nanos();
        if j > self.newest {
            if j - self.newest >= RING_U64 {
                self.counts = [0; RING];
                self.total = 0;
            } else {
                for k in self.newest + 1..=j {
                    let cleared = std::mem::take(&mut self.counts[slot(k)]);
                    if self.total != u32::MAX {
                        self.total -= cleared;
                    }
                }
            }
            self.newest = j;
        }
        // A `now` older than the ring (a commit without a successful check) is counted
        // in the oldest bucket held: later than it happened, so it is remembered longer,
        // never shorter.
        let target = j.max(self.oldest());
        let count = &mut self.counts[slot(target)];
        let before = *count;
        *count = count.saturating_add(cost);
        self.total = self.total.saturating_add(*count - before);
    }

    /// Takes `cost` units out of the bucket of `admitted_at`, which is where
    /// [`commit`](Sliding::commit) put them whenever that bucket was in the ring; if it
    /// has left the ring, the units were forgotten already and this does nothing.
    /// Taking units out of an expired bucket changes no decision at or after its expiry.
    pub(super) fn refund(&mut self, quota: &Quota, admitted_at: u64, cost: u32) {
        let j = admitted_at / quota.step_nanos();
        if j <= self.newest && j >= self.oldest() {
            let count = &mut self.counts[slot(j)];
            let before = *count;
            *count = count.saturating_sub(cost);
            if self.total != u32::MAX {
                self.total -= before - *count;
            }
        }
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

    fn quota(limit: u32, window_secs: u64) -> Quota {
        Quota::sliding(limit, Duration::from_secs(window_secs)).unwrap()
    }

    proptest! {
        /// The fast path relies on `total` never under-counting the ring.
        #[test]
        fn the_running_total_is_the_sum_of_the_ring(
            ops in prop::collection::vec((0..3u8, 0..40 * SEC, 0..u32::MAX / 8), 1..200)
        ) {
            let q = quota(u32::MAX, 32);
            let mut s = Sliding::new(&q, 0);
            let mut now = 0;
            let mut admitted = Vec::new();
            for (op, gap, cost) in ops {
                now += gap / 8;
                if op < 2 {
                    s.commit(&q, now, cost);
                    admitted.push((now, cost));
                } else if let Some((at, cost)) = admitted.pop() {
                    s.refund(&q, at, cost);
                }
                let sum: u64 = s.counts.iter().map(|&c| u64::from(c)).sum();
                if s.total == u32::MAX {
                    // Sticky: the fast path can no longer admit any unit.
                    prop_assert!(u64::from(s.total) + 1 > u64::from(q.limit()));
                } else {
                    prop_assert_eq!(u64::from(s.total), sum);
                }
            }
        }
    }

    #[test]
    fn a_full_window_frees_when_its_oldest_bucket_expires() {
        // W = 32 s, g = 1 s.
        let q = quota(3, 32);
        let mut s = WindowState::new(&q, 0);
        s.admit(&q, 0, 1).unwrap(); // bucket 0, expires at 1 s + 32 s − 1 ns
        s.admit(&q, 5 * SEC, 2).unwrap(); // bucket 5
        let wait = s.check(&q, 6 * SEC, 1).unwrap_err();
        assert_eq!(wait.nanos(), Some(33 * SEC - 1 - 6 * SEC));
        assert!(s.check(&q, 33 * SEC - 2, 1).is_err());
        assert!(s.check(&q, 33 * SEC - 1, 1).is_ok());
        // Two units need bucket 5 to expire as well.
        let wait = s.check(&q, 6 * SEC, 2).unwrap_err();
        assert_eq!(wait.deadline(6 * SEC), Some(38 * SEC - 1));
    }

    #[test]
    fn a_unit_admitted_late_in_its_bucket_is_held_for_exactly_the_window() {
        let q = quota(1, 32);
        let mut s = WindowState::new(&q, 0);
        let late = SEC - 1; // the last nanosecond of bucket 0
        s.admit(&q, late, 1).unwrap();
        assert_eq!(s.check(&q, late, 1).unwrap_err().nanos(), Some(32 * SEC));
    }

    #[test]
    fn a_unit_admitted_early_in_its_bucket_is_held_for_the_window_plus_a_bucket() {
        let q = quota(1, 32);
        let mut s = WindowState::new(&q, 0);
        s.admit(&q, 0, 1).unwrap();
        assert_eq!(s.check(&q, 0, 1).unwrap_err().nanos(), Some(33 * SEC - 1));
    }

    #[test]
    fn a_cost_above_the_limit_is_never_admitted() {
        let q = quota(3, 32);
        let s = WindowState::new(&q, 0);
        assert_eq!(s.check(&q, 0, 4), Err(Wait::Never));
        assert!(s.check(&q, 0, 3).is_ok());
    }

    #[test]
    fn the_ring_forgets_buckets_after_a_long_idle() {
        let q = quota(2, 32);
        let mut s = WindowState::new(&q, 0);
        s.admit(&q, 0, 2).unwrap();
        s.admit(&q, 1000 * SEC, 2).unwrap();
        assert_eq!(s.remaining(&q, 1000 * SEC), 0);
        assert_eq!(s.remaining(&q, 1033 * SEC), 2);
    }

    #[test]
    fn a_check_far_behind_the_newest_bucket_treats_forgotten_history_as_full() {
        let q = quota(5, 32);
        let mut s = Sliding::new(&q, 0);
        s.commit(&q, 100 * SEC, 1);
        // At 50 s, buckets 18..=50 may hold units the ring (67..=100) forgot.
        let unknown = expiry(&q, 100 - 33);
        assert_eq!(s.earliest(&q, 50 * SEC, 1), unknown);
        assert_eq!(s.remaining(&q, 50 * SEC), 0);
        assert_eq!(s.remaining(&q, 100 * SEC), 4);
    }

    #[test]
    fn a_commit_slightly_behind_the_newest_bucket_counts_in_its_own_bucket() {
        let q = quota(5, 32);
        let mut s = Sliding::new(&q, 0);
        s.commit(&q, 10 * SEC, 1);
        s.commit(&q, 9 * SEC, 1);
        assert_eq!(s.counts[slot(9)], 1);
        s.refund(&q, 9 * SEC, 1);
        assert_eq!(s.counts[slot(9)], 0);
        assert_eq!(s.counts[slot(10)], 1);
    }

    #[test]
    fn refunds_never_drive_a_bucket_below_zero() {
        let q = quota(5, 32);
        let mut s = Sliding::new(&q, 0);
        s.commit(&q, 0, 1);
        s.refund(&q, 0, 3);
        s.refund(&q, 0, 3);
        assert_eq!(s.remaining(&q, 0), 5);
    }

    #[test]
    fn times_near_the_end_of_the_clock_do_not_overflow() {
        // Expiries saturate at u64::MAX, the end of the caller's clock (584 years).
        let q = quota(2, 32);
        let mut s = WindowState::new(&q, u64::MAX - SEC);
        s.admit(&q, u64::MAX - 2, 2).unwrap();
        assert_eq!(s.check(&q, u64::MAX - 1, 1).unwrap_err().nanos(), Some(1));
        assert!(!s.is_fresh(&q, u64::MAX - 1));
        assert!(s.is_fresh(&q, u64::MAX));
    }

    #[test]
    fn the_state_is_fixed_size_whatever_the_limit() {
        assert_eq!(size_of::<Sliding>(), 144);
    }

    fn sliding_quota() -> impl Strategy<Value = Quota> {
        // Windows of 1 ms ..= 20 ms with arbitrary nanoseconds, so that g does not
        // divide W.
        (1u32..=12, 1_000_000u64..=20_000_000)
            .prop_map(|(n, w)| Quota::sliding(n, Duration::from_nanos(w)).unwrap())
    }

    /// The bucketed model written as plainly as possible: a list of (bucket, cost).
    #[derive(Default)]
    struct Buckets(Vec<(u64, u32)>);

    impl Model for Buckets {
        fn commit(&mut self, q: &Quota, now: u64, cost: u32) {
            self.0.push((now / q.step_nanos(), cost));
        }
        fn refund(&mut self, q: &Quota, admitted_at: u64, _now: u64, cost: u32) {
            let j = admitted_at / q.step_nanos();
            let at = self
                .0
                .iter()
                .position(|&(b, c)| b == j && c == cost)
                .unwrap();
            self.0.swap_remove(at);
        }
        fn earliest(&self, q: &Quota, now: u64, cost: u32) -> Option<u64> {
            if cost > q.limit() {
                return None;
            }
            let mut expiries: Vec<(u64, u32)> = self
                .0
                .iter()
                .map(|&(j, c)| (expiry(q, j), c))
                .filter(|&(e, _)| e > now)
                .collect();
            expiries.sort_unstable();
            let mut used: u64 = expiries.iter().map(|&(_, c)| u64::from(c)).sum();
            let mut t = now;
            for (e, c) in expiries {
                if used + u64::from(cost) <= u64::from(q.limit()) {
                    break;
                }
                used -= u64::from(c);
                t = e;
            }
            Some(t)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// `Run::drive` also asserts, at every step, that the ring decides exactly as the
        /// plain model and that every wait admits at now + wait and refuses 1 ns earlier.
        #[test]
        fn never_more_than_n_in_any_interval_of_length_w(
            q in sliding_quota(),
            steps in steps(160),
        ) {
            let run = Run::drive(&q, &steps, Some(&mut Buckets::default()));
            run.assert_at_most_n_per_sliding_window(q.window_nanos(), u64::from(q.limit()));
        }

        #[test]
        fn sustained_load_gets_at_least_n_per_window_plus_a_bucket(
            q in sliding_quota(),
            periods in 2u64..6,
        ) {
            // A client that sends whenever it may: over k·(W + g) it gets ≥ k·N.
            let mut s = WindowState::new(&q, 0);
            let horizon = periods * (q.window_nanos() + q.step_nanos());
            let (mut now, mut admitted) = (0u64, 0u64);
            while now < horizon {
                match s.admit(&q, now, 1) {
                    Ok(()) => admitted += 1,
                    Err(wait) => now = wait.deadline(now).unwrap(),
                }
            }
            prop_assert!(admitted >= periods * u64::from(q.limit()), "{} < {}", admitted, periods * u64::from(q.limit()));
        }

        #[test]
        fn guarantees_hold_when_commits_arrive_slightly_out_of_order(
            q in sliding_quota(),
            steps in steps(120),
            jitter in prop::collection::vec(0u64..3_000_000, 120),
        ) {
            let run = Run::drive_jittered(&q, &steps, &jitter);
            run.assert_at_most_n_per_sliding_window(q.window_nanos(), u64::from(q.limit()));
        }

        #[test]
        fn exact_waits_hold_for_every_state_reached(q in sliding_quota(), steps in steps(80)) {
            let run = Run::drive(&q, &steps, None);
            assert_exact_waits(&q, &run.state, run.now);
        }
    }
}
