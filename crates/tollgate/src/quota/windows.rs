//! Several quotas on one key at once ("35/min AND 800/hour"), all or nothing.
//!
//! The functions take the key's quotas and its states as parallel slices (the state at
//! index `i` belongs to the quota at index `i`; they panic if the lengths differ), so
//! the store keeps the states however it likes (an inline array, a boxed slice).

use std::time::Duration;

use super::{Quota, Wait, WindowState};

/// A request refused by at least one of a key's quotas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Denied {
    index: usize,
    wait: Wait,
}

impl Denied {
    /// The index of the quota that refused with the longest wait (the first such, on a
    /// tie): the one to name in the error and in `RateLimit` headers.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The longest wait over the refusing quotas: exactly when the request would be
    /// admitted by *all* of them if nothing else happens (each kind's admissible
    /// instants are upward-closed, so the joint earliest is the latest of the
    /// individual ones). [`Wait::Never`] if any quota can never admit its cost.
    pub fn wait(&self) -> Wait {
        self.wait
    }
}

fn pairs<'a, S>(
    quotas: &'a [Quota],
    states: &'a [S],
) -> impl Iterator<Item = (&'a Quota, &'a S)> + 'a {
    assert_eq!(
        quotas.len(),
        states.len(),
        "one WindowState per Quota: the slices must have the same length"
    );
    quotas.iter().zip(states)
}

/// One fresh state per quota, in order: collect them into whatever the store keeps.
pub fn fresh_states(quotas: &[Quota], now: u64) -> impl Iterator<Item = WindowState> + '_ {
    quotas.iter().map(move |q| WindowState::new(q, now))
}

/// Would `cost` units be admitted by every quota at `now`? Changes nothing.
pub fn check_all(
    quotas: &[Quota],
    states: &[WindowState],
    now: u64,
    cost: u32,
) -> Result<(), Denied> {
    let mut denied: Option<Denied> = None;
    for (index, (quota, state)) in pairs(quotas, states).enumerate() {
        if let Err(wait) = state.check(quota, now, cost) {
            if denied.is_none_or(|d| wait > d.wait) {
                denied = Some(Denied { index, wait });
            }
        }
    }
    denied.map_or(Ok(()), Err)
}

/// The hot path of [`admit_all`]: admits `cost` at `now` and returns `true` when every
/// window's [`fits_now`](WindowState::fits_now) says it fits; otherwise changes nothing
/// and returns `false`, and the caller asks [`check_all`] for the exact answer.
#[inline]
pub(crate) fn admit_all_now(
    quotas: &[Quota],
    states: &mut [WindowState],
    now: u64,
    cost: u32,
) -> bool {
    // One quota, the common case: no iterators.
    if let ([quota], [state]) = (quotas, &mut *states) {
        if !state.fits_now(quota, now, cost) {
            return false;
        }
        state.commit(quota, now, cost);
        return true;
    }
    if quotas.len() != states.len()
        || !quotas
            .iter()
            .zip(&*states)
            .all(|(quota, state)| state.fits_now(quota, now, cost))
    {
        return false;
    }
    for (quota, state) in quotas.iter().zip(states) {
        state.commit(quota, now, cost);
    }
    true
}

/// Records an admission of `cost` units at `now` in every window; meant to follow a
/// successful [`check_all`] at the same `now`.
pub fn commit_all(quotas: &[Quota], states: &mut [WindowState], now: u64, cost: u32) {
    assert_eq!(quotas.len(), states.len(), "one WindowState per Quota");
    for (quota, state) in quotas.iter().zip(states) {
        state.commit(quota, now, cost);
    }
}

/// [`check_all`], then [`commit_all`] if every quota admits: all or nothing, a request
/// refused by one window changes no window.
pub fn admit_all(
    quotas: &[Quota],
    states: &mut [WindowState],
    now: u64,
    cost: u32,
) -> Result<(), Denied> {
    check_all(quotas, states, now, cost)?;
    commit_all(quotas, states, now, cost);
    Ok(())
}

/// Undoes an admission committed at `admitted_at` in every window; see
/// [`WindowState::refund`].
pub fn refund_all(
    quotas: &[Quota],
    states: &mut [WindowState],
    admitted_at: u64,
    now: u64,
    cost: u32,
) {
    assert_eq!(quotas.len(), states.len(), "one WindowState per Quota");
    for (quota, state) in quotas.iter().zip(states) {
        state.refund(quota, admitted_at, now, cost);
    }
}

/// True when every window [is fresh](WindowState::is_fresh) at `now`.
pub fn all_fresh(quotas: &[Quota], states: &[WindowState], now: u64) -> bool {
    pairs(quotas, states).all(|(quota, state)| state.is_fresh(quota, now))
}

/// Time until every window is fully replenished (the latest of their
/// [`replenished_after`](WindowState::replenished_after)).
pub fn replenished_after_all(quotas: &[Quota], states: &[WindowState], now: u64) -> Duration {
    pairs(quotas, states)
        .map(|(quota, state)| state.replenished_after(quota, now))
        .max()
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{any_quota, steps};
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn chat_space_creation() -> [Quota; 2] {
        // Google Chat: fewer than 35 spaces per minute and 800 per hour.
        [
            Quota::sliding(34, Duration::from_secs(60)).unwrap(),
            Quota::sliding(799, Duration::from_secs(3600)).unwrap(),
        ]
    }

    #[test]
    fn the_longest_wait_and_its_quota_are_reported() {
        let quotas = chat_space_creation();
        let mut states: Vec<_> = fresh_states(&quotas, 0).collect();
        admit_all(&quotas, &mut states, 0, 34).unwrap();
        let denied = admit_all(&quotas, &mut states, 0, 1).unwrap_err();
        assert_eq!(denied.index(), 0);
        // Bucket 0 of the minute (1.875 s wide) expires at 61.875 s − 1 ns.
        assert_eq!(denied.wait().nanos(), Some(61_875_000_000 - 1));

        // Fill the hour, a minute at a time.
        let mut now = 0;
        let mut sent = 34;
        while sent < 799 {
            match admit_all(&quotas, &mut states, now, 1) {
                Ok(()) => sent += 1,
                Err(d) => now = d.wait().deadline(now).unwrap(),
            }
        }
        let denied = check_all(&quotas, &states, now + 62 * SEC, 1).unwrap_err();
        assert_eq!(denied.index(), 1);
        let hour_bucket = 3600 * SEC / 32;
        assert_eq!(
            denied.wait().deadline(now + 62 * SEC),
            Some(hour_bucket + 3600 * SEC - 1)
        );
    }

    #[test]
    fn never_wins_over_any_wait() {
        let quotas = [
            Quota::sliding(1, Duration::from_secs(60)).unwrap(),
            Quota::smooth(10, Duration::from_secs(60)).unwrap(),
        ];
        let mut states: Vec<_> = fresh_states(&quotas, 0).collect();
        admit_all(&quotas, &mut states, 0, 1).unwrap();
        let denied = check_all(&quotas, &states, 0, 2).unwrap_err();
        assert_eq!((denied.index(), denied.wait()), (0, Wait::Never));
    }

    #[test]
    fn a_refused_request_changes_no_window() {
        let quotas = chat_space_creation();
        let mut states: Vec<_> = fresh_states(&quotas, 0).collect();
        admit_all(&quotas, &mut states, 0, 30).unwrap();
        let before = states.clone();
        admit_all(&quotas, &mut states, 0, 5).unwrap_err();
        assert_eq!(states, before);
    }

    #[test]
    fn no_quotas_admit_everything() {
        assert_eq!(check_all(&[], &[], 0, u32::MAX), Ok(()));
        assert!(all_fresh(&[], &[], 0));
        assert_eq!(replenished_after_all(&[], &[], 0), Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "one WindowState per Quota")]
    fn mismatched_slices_are_a_bug() {
        let quotas = chat_space_creation();
        let states: Vec<_> = fresh_states(&quotas[..1], 0).collect();
        let _ = check_all(&quotas, &states, 0, 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn admission_is_all_or_nothing_and_joint_waits_are_exact(
            quotas in prop::collection::vec(any_quota(), 1..=3),
            steps in steps(100),
        ) {
            let mut states: Vec<_> = fresh_states(&quotas, 0).collect();
            let mut now = 0u64;
            let mut admitted: Vec<(u64, u32)> = Vec::new();
            let mut last_wait = None;
            for step in &steps {
                now += step.advance(&quotas[0], now, last_wait);
                last_wait = None;
                if let Some(pick) = &step.refund {
                    if !admitted.is_empty() {
                        let (at, cost) = admitted.swap_remove(pick.index(admitted.len()));
                        refund_all(&quotas, &mut states, at, now, cost);
                    }
                }
                let before = states.clone();
                // The stores' hot path: when it admits, `admit_all` admits too, to the
                // same states; when it declines, it has changed nothing.
                let mut fast = states.clone();
                let fast_admitted = admit_all_now(&quotas, &mut fast, now, step.cost);
                if !fast_admitted {
                    prop_assert_eq!(&fast, &before);
                }
                let single: Vec<_> = quotas
                    .iter()
                    .zip(&states)
                    .map(|(q, s)| s.check(q, now, step.cost))
                    .collect();
                match admit_all(&quotas, &mut states, now, step.cost) {
                    Ok(()) => {
                        prop_assert!(single.iter().all(Result::is_ok));
                        if fast_admitted {
                            prop_assert_eq!(&fast, &states);
                        }
                        admitted.push((now, step.cost));
                    }
                    Err(denied) => {
                        prop_assert!(!fast_admitted, "the hot path admitted a refusal");
                        last_wait = Some(denied.wait());
                        prop_assert_eq!(&states, &before);
                        let longest = single.iter().filter_map(|r| r.err()).max().unwrap();
                        prop_assert_eq!(denied.wait(), longest);
                        prop_assert_eq!(single[denied.index()], Err(longest));
                        prop_assert!(single[..denied.index()].iter().all(|r| *r != Err(longest)));
                        if let Wait::After(wait) = denied.wait() {
                            let at = now + wait.get();
                            prop_assert_eq!(check_all(&quotas, &states, at, step.cost), Ok(()));
                            prop_assert!(check_all(&quotas, &states, at - 1, step.cost).is_err());
                        } else {
                            prop_assert!(quotas.iter().any(|q| step.cost > q.capacity()));
                        }
                    }
                }
                prop_assert_eq!(
                    all_fresh(&quotas, &states, now),
                    quotas.iter().zip(&states).all(|(q, s)| s.is_fresh(q, now))
                );
                let full = replenished_after_all(&quotas, &states, now);
                prop_assert!(all_fresh(&quotas, &states, now + crate::quota::nanos(full)));
            }
        }
    }
}
