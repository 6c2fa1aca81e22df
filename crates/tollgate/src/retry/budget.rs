//! The retry budget: retries as a fraction of first attempts, with a floor.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

/// A token bucket that bounds retries across every request of a layer, so that a fleet
/// of failing requests cannot become a retry storm (what per-request retry counts alone
/// do not prevent).
///
/// Every first attempt deposits `ratio` tokens; every retry withdraws one, and a retry
/// that finds less than one token is not made (the last answer is returned). The floor
/// adds `min_per_sec` tokens per second, so a client with little traffic can still
/// retry. The balance starts at `min_per_sec` (at least one token) and never exceeds
/// `max_balance` (by default `max(100, 10 × min_per_sec)`), so a quiet period does not
/// store up a storm.
///
/// Clones share one bucket (an `Arc`), as do every clone of the layer and its services.
/// Time is `tokio::time::Instant`.
///
/// ```
/// use tollgate::retry::RetryBudget;
///
/// // At most 1 retry per 5 first attempts, plus 10 retries a second.
/// let budget = RetryBudget::new(0.2, 10.0);
/// budget.deposit();
/// assert!(budget.try_withdraw());
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    ratio: f64,
    min_per_sec: f64,
    max_balance: f64,
    state: Mutex<State>,
}

struct State {
    balance: f64,
    refilled: Instant,
}

fn non_negative(x: f64) -> f64 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

impl RetryBudget {
    /// `ratio` retries per first attempt (0.2: one retry for five requests), plus a floor
    /// of `min_per_sec` retries per second. Negative or non-finite values count as 0.
    pub fn new(ratio: f64, min_per_sec: f64) -> Self {
        let min_per_sec = non_negative(min_per_sec);
        Self::with_max_balance(ratio, min_per_sec, (10.0 * min_per_sec).max(100.0))
    }

    /// As [`new`](Self::new), with the balance capped at `max_balance` tokens.
    pub fn with_max_balance(ratio: f64, min_per_sec: f64, max_balance: f64) -> Self {
        let min_per_sec = non_negative(min_per_sec);
        let max_balance = non_negative(max_balance).max(1.0);
        RetryBudget {
            inner: Arc::new(Inner {
                ratio: non_negative(ratio),
                min_per_sec,
                max_balance,
                state: Mutex::new(State {
                    balance: min_per_sec.max(1.0).min(max_balance),
                    refilled: Instant::now(),
                }),
            }),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let inner = &*self.inner;
        let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.balance = (state.balance + elapsed * inner.min_per_sec).min(inner.max_balance);
        state.refilled = now;
        f(&mut state)
    }

    /// Records a first attempt: adds `ratio` tokens.
    pub fn deposit(&self) {
        let (ratio, max) = (self.inner.ratio, self.inner.max_balance);
        self.with_state(|s| s.balance = (s.balance + ratio).min(max));
    }

    /// Takes one token for a retry; `false` (and nothing taken) when less than one is
    /// left.
    pub fn try_withdraw(&self) -> bool {
        self.with_state(|s| {
            if s.balance >= 1.0 {
                s.balance -= 1.0;
                true
            } else {
                false
            }
        })
    }

    /// The tokens available now (for tests and diagnostics).
    pub fn balance(&self) -> f64 {
        self.with_state(|s| s.balance)
    }
}

impl Default for RetryBudget {
    /// 20 % of first attempts plus 10 retries a second (tower's `TpsBudget` defaults).
    fn default() -> Self {
        RetryBudget::new(0.2, 10.0)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.inner.ratio)
            .field("min_per_sec", &self.inner.min_per_sec)
            .field("max_balance", &self.inner.max_balance)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_ratio_of_first_attempts() {
        let budget = RetryBudget::new(0.5, 0.0);
        // The initial token.
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        for _ in 0..4 {
            budget.deposit();
        }
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_refills_with_time_up_to_the_cap() {
        let budget = RetryBudget::with_max_balance(0.0, 2.0, 3.0);
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!((budget.balance() - 3.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_bucket() {
        let budget = RetryBudget::new(0.0, 0.0);
        let clone = budget.clone();
        assert!(clone.try_withdraw());
        assert!(!budget.try_withdraw());
    }
}
