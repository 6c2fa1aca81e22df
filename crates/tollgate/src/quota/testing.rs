//! Test support: random arrival patterns, a driver that checks every decision as it
//! goes, and brute-force checks of the stated guarantees over what was admitted.

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;

use super::{Quota, Wait, WindowState, nanos};

/// Time between two steps.
#[derive(Clone, Debug)]
pub(super) enum Gap {
    /// Same instant as the previous step.
    Zero,
    /// A few nanoseconds.
    Nanos(u64),
    /// `k / 256` of the quota's window (up to about 2.3 windows).
    Fraction(u64),
    /// Exactly the wait of the previous step, if it was refused (as a waiting client
    /// is released at its deadline); otherwise the same instant.
    Deadline,
    /// To the next multiple of the quota's step (sliding bucket, fixed window, GCRA
    /// interval), minus 0 or 1 ns: the instants where off-by-one errors live.
    Boundary(u64),
}

/// One step of an arrival pattern: wait, maybe refund an earlier admission, then ask
/// for `cost` units.
#[derive(Clone, Debug)]
pub(super) struct Step {
    pub(super) gap: Gap,
    pub(super) refund: Option<Index>,
    pub(super) cost: u32,
}

impl Step {
    /// The time to advance from `now`, given the wait of the previous refusal, if any.
    pub(super) fn advance(&self, q: &Quota, now: u64, last_wait: Option<Wait>) -> u64 {
        match self.gap {
            Gap::Zero => 0,
            Gap::Nanos(n) => n,
            Gap::Fraction(k) => q.window_nanos() * k / 256,
            Gap::Deadline => last_wait.and_then(Wait::nanos).unwrap_or(0),
            Gap::Boundary(before) => {
                let step = q.step_nanos();
                ((now / step + 1) * step - before).saturating_sub(now)
            }
        }
    }
}

pub(super) fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    let gap = prop_oneof![
        3 => Just(Gap::Zero),
        3 => Just(Gap::Deadline),
        2 => (0u64..=1).prop_map(Gap::Boundary),
        2 => (1u64..2_000).prop_map(Gap::Nanos),
        4 => (0u64..64).prop_map(Gap::Fraction),
        1 => (0u64..600).prop_map(Gap::Fraction),
    ];
    let cost = prop_oneof![6 => Just(1u32), 3 => 0u32..=4, 1 => 0u32..=14];
    let step = (gap, prop::option::weighted(0.15, any::<Index>()), cost)
        .prop_map(|(gap, refund, cost)| Step { gap, refund, cost });
    prop::collection::vec(step, 1..=max)
}

pub(super) fn any_quota() -> impl Strategy<Value = Quota> {
    (0u8..3, 1u32..=10, 1_000_000u64..=20_000_000, 1u32..=5).prop_map(|(kind, n, w, b)| {
        let w = Duration::from_nanos(w);
        match kind {
            0 => Quota::sliding(n, w).unwrap(),
            1 => Quota::fixed(n, w).unwrap(),
            _ => Quota::smooth(n, w).unwrap().burst(b).unwrap(),
        }
    })
}

/// A plain, obviously correct version of one kind's model, to compare the compact state
/// against decision by decision.
pub(super) trait Model {
    fn commit(&mut self, q: &Quota, now: u64, cost: u32);
    fn refund(&mut self, q: &Quota, admitted_at: u64, now: u64, cost: u32);
    fn earliest(&self, q: &Quota, now: u64, cost: u32) -> Option<u64>;
    /// Whether refunds are exact (the state decides exactly as the model) or
    /// conservative (the state is never more permissive than the model).
    fn exact(&self) -> bool {
        true
    }
}

/// What a driven arrival pattern admitted.
pub(super) struct Run {
    pub(super) state: WindowState,
    pub(super) now: u64,
    /// (time, cost, refunded), in commit order.
    admitted: Vec<(u64, u32, bool)>,
}

impl Run {
    /// Drives `steps` through a fresh state with a non-decreasing clock, checking every
    /// answer as it goes: waits are exact, `remaining`/`reset_after`/`is_fresh` agree
    /// with `check`, and (if given) the plain model agrees.
    pub(super) fn drive(q: &Quota, steps: &[Step], model: Option<&mut dyn Model>) -> Run {
        Run::drive_with(q, steps, None, model)
    }

    /// The same with each call's clock reading up to `jitter[i]` behind the step's
    /// time: calls reach the state slightly out of order, as when a request reads the
    /// clock and then waits for the lock.
    pub(super) fn drive_jittered(q: &Quota, steps: &[Step], jitter: &[u64]) -> Run {
        Run::drive_with(q, steps, Some(jitter), None)
    }

    fn drive_with(
        q: &Quota,
        steps: &[Step],
        jitter: Option<&[u64]>,
        mut model: Option<&mut dyn Model>,
    ) -> Run {
        let origin = 10 * q.window_nanos();
        let mut run = Run {
            state: WindowState::new(q, origin),
            now: origin,
            admitted: Vec::new(),
        };
        let mut refunded_any = false;
        let mut time = origin;
        let mut last_wait = None;
        for (i, step) in steps.iter().enumerate() {
            time += step.advance(q, time, last_wait);
            let now = time - jitter.map_or(0, |j| j[i % j.len()].min(time - origin));
            run.now = now;
            assert_consistent(q, &run.state, now);
            if let Some(pick) = &step.refund {
                let open: Vec<usize> = (0..run.admitted.len())
                    .filter(|&k| !run.admitted[k].2)
                    .collect();
                if !open.is_empty() {
                    let k = open[pick.index(open.len())];
                    let (at, cost, _) = run.admitted[k];
                    run.state.refund(q, at, now, cost);
                    if let Some(m) = model.as_deref_mut() {
                        m.refund(q, at, now, cost);
                    }
                    run.admitted[k].2 = true;
                    refunded_any = true;
                }
            }
            let decision = run.state.check(q, now, step.cost);
            last_wait = decision.err();
            if let Some(m) = model.as_deref_mut() {
                let expected = m.earliest(q, now, step.cost);
                let got = decision.err().map_or(Some(now), |w| w.deadline(now));
                if m.exact() || !refunded_any {
                    assert_eq!(got, expected, "state and plain model disagree at {now}");
                } else {
                    assert!(
                        got >= expected,
                        "state more permissive than the model at {now}"
                    );
                }
            }
            match decision {
                Ok(()) => {
                    run.state.commit(q, now, step.cost);
                    if let Some(m) = model.as_deref_mut() {
                        m.commit(q, now, step.cost);
                    }
                    run.admitted.push((now, step.cost, false));
                }
                Err(Wait::After(wait)) => {
                    assert_wait_exact(q, &run.state, now, step.cost, wait.get());
                }
                Err(Wait::Never) => assert!(step.cost > q.capacity()),
            }
        }
        run
    }

    /// The admissions not refunded, as (time, cost), in commit order.
    pub(super) fn effective(&self) -> Vec<(u64, u32)> {
        self.admitted
            .iter()
            .filter(|a| !a.2)
            .map(|&(t, c, _)| (t, c))
            .collect()
    }

    fn effective_sorted(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .effective()
            .into_iter()
            .map(|(t, c)| (t, u64::from(c)))
            .collect();
        v.sort_unstable();
        v
    }

    /// Brute force: in every half-open interval `(s − len, s]`, at most `max` units.
    /// Only intervals ending at an admission need checking: sliding any other interval
    /// right to its last admission loses none of its admissions.
    pub(super) fn assert_at_most_n_per_sliding_window(&self, len: u64, max: u64) {
        let v = self.effective_sorted();
        let mut start = 0;
        let mut sum = 0;
        for end in 0..v.len() {
            sum += v[end].1;
            while v[start].0 + len <= v[end].0 {
                sum -= v[start].1;
                start += 1;
            }
            // Everything at the same instant as `end` belongs to the interval too.
            let same: u64 = v[end + 1..]
                .iter()
                .take_while(|a| a.0 == v[end].0)
                .map(|a| a.1)
                .sum();
            assert!(
                sum + same <= max,
                "{} units in ({}, {}], at most {max} allowed: {v:?}",
                sum + same,
                v[end].0.saturating_sub(len),
                v[end].0,
            );
        }
    }

    /// Brute force: at most `max` units in each aligned window `[kW, (k+1)W)`.
    pub(super) fn assert_at_most_n_per_aligned_window(&self, window: u64, max: u64) {
        let v = self.effective_sorted();
        let mut i = 0;
        while i < v.len() {
            let k = v[i].0 / window;
            let sum: u64 = v[i..]
                .iter()
                .take_while(|a| a.0 / window == k)
                .map(|a| a.1)
                .sum();
            assert!(
                sum <= max,
                "{sum} units in window {k}, at most {max}: {v:?}"
            );
            i += v[i..].iter().take_while(|a| a.0 / window == k).count();
        }
    }

    /// Brute force, the GCRA spacing: the `U` units admitted in any closed interval
    /// `[a, c]` satisfy `U·T ≤ b·T + (c − a)`; so once `b` units have gone, each more
    /// unit needs another `T`.
    pub(super) fn assert_gcra_spacing(&self, interval: u64, burst: u64) {
        let v = self.effective_sorted();
        for i in 0..v.len() {
            // Start at the first admission of each instant.
            if i > 0 && v[i - 1].0 == v[i].0 {
                continue;
            }
            let mut units = 0;
            for j in i..v.len() {
                units += v[j].1;
                // End at the last admission of each instant.
                if v.get(j + 1).is_some_and(|next| next.0 == v[j].0) {
                    continue;
                }
                assert!(
                    units * interval <= burst * interval + (v[j].0 - v[i].0),
                    "{units} units in [{}, {}] with T = {interval}, b = {burst}: {v:?}",
                    v[i].0,
                    v[j].0,
                );
            }
        }
    }
}

/// A refused request with wait `wait` is admitted at `now + wait` and refused one
/// nanosecond earlier (for the same state).
pub(super) fn assert_wait_exact(q: &Quota, s: &WindowState, now: u64, cost: u32, wait: u64) {
    assert!(wait > 0);
    assert_eq!(
        s.check(q, now + wait, cost),
        Ok(()),
        "not admitted at now + wait ({now} + {wait}) for cost {cost}"
    );
    assert!(
        s.check(q, now + wait - 1, cost).is_err(),
        "admitted 1 ns before now + wait ({now} + {wait}) for cost {cost}"
    );
}

/// Every cost from 0 to capacity + 1: `Never` exactly above capacity, exact waits
/// otherwise.
pub(super) fn assert_exact_waits(q: &Quota, s: &WindowState, now: u64) {
    for cost in 0..=q.capacity() + 1 {
        match s.check(q, now, cost) {
            Ok(()) => assert!(cost <= q.capacity()),
            Err(Wait::Never) => assert!(cost > q.capacity()),
            Err(Wait::After(wait)) => assert_wait_exact(q, s, now, cost, wait.get()),
        }
    }
}

/// The reports agree with `check`: `remaining` units are admitted and one more is not,
/// `is_fresh` is "full capacity admitted", `replenished_after` is when that becomes
/// true, `reset_after` is the next unit when exhausted, else `replenished_after`.
pub(super) fn assert_consistent(q: &Quota, s: &WindowState, now: u64) {
    let cap = q.capacity();
    let r = s.remaining(q, now);
    assert!(r <= cap);
    if r > 0 {
        assert_eq!(s.check(q, now, r), Ok(()), "remaining {r} not admitted");
    }
    if r < cap {
        assert!(
            s.check(q, now, r + 1).is_err(),
            "remaining {r} but {} admitted",
            r + 1
        );
    }
    assert_eq!(s.is_fresh(q, now), s.check(q, now, cap).is_ok());
    let full = nanos(s.replenished_after(q, now));
    assert!(s.is_fresh(q, now + full));
    if full > 0 {
        assert!(!s.is_fresh(q, now + full - 1));
    }
    let reset = nanos(s.reset_after(q, now));
    if r == 0 {
        assert!(reset > 0);
        assert_eq!(s.check(q, now + reset, 1), Ok(()));
        assert!(s.check(q, now + reset - 1, 1).is_err());
    } else {
        assert_eq!(reset, full);
    }
}
