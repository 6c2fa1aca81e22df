//! The pure maths of the wait between attempts, and the jitter source.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The layer's own backoff between attempts, before the server's hint is considered.
///
/// A pure function of the retry number and a uniform random value in `[0, 1)`
/// ([`delay`](Self::delay)), so that it is tested without a clock or a random source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    shape: Shape,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    FullJitter,
    Google,
}

/// The random part of Google's formula: up to one second.
const GOOGLE_RANDOM: Duration = Duration::from_secs(1);

impl Backoff {
    /// Truncated exponential backoff with full jitter (AWS's "full jitter"):
    /// `rand(0, min(cap, base · 2^n))` before retry `n` (0 for the first retry).
    pub fn full_jitter(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            shape: Shape::FullJitter,
        }
    }

    /// Google's documented backoff: `min(2^n s + rand(0..1000 ms), cap)` before retry
    /// `n` (0 for the first retry), with `cap` 32 or 64 s.
    pub fn google(cap: Duration) -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap,
            shape: Shape::Google,
        }
    }

    /// The delay before retry `retry` (0 for the first retry), given `unit`, a uniform
    /// random value in `[0, 1)` (values outside are clamped). Never more than the cap.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let unit = clamp_unit(unit);
        // `base · 2^n`, saturating (a zero base stays zero).
        let exponential = if self.base.is_zero() {
            Duration::ZERO
        } else {
            2_u32
                .checked_pow(retry)
                .and_then(|factor| self.base.checked_mul(factor))
                .unwrap_or(Duration::MAX)
        };
        match self.shape {
            Shape::FullJitter => scale(exponential.min(self.cap), unit),
            Shape::Google => exponential
                .saturating_add(scale(GOOGLE_RANDOM, unit))
                .min(self.cap),
        }
    }

    /// The cap: no own delay is longer.
    pub fn cap(&self) -> Duration {
        self.cap
    }
}

/// `d × unit` for `unit` in `[0, 1]`, never more than `d` and never panicking (float
/// rounding near `Duration::MAX` would make `mul_f64` panic).
fn scale(d: Duration, unit: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * clamp_unit(unit))
        .unwrap_or(d)
        .min(d)
}

fn clamp_unit(unit: f64) -> f64 {
    if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    }
}

/// The wait before the next attempt: the larger of the server's `hint` (raised by up to
/// `hint_jitter` × hint, with the same `unit`: jitter on a hint is upward only) and the
/// own `backoff` delay. Never less than `hint`.
pub fn wait(hint: Option<Duration>, backoff: Duration, hint_jitter: f64, unit: f64) -> Duration {
    let Some(hint) = hint else {
        return backoff;
    };
    let extra = scale(hint, clamp_unit(hint_jitter) * clamp_unit(unit));
    hint.saturating_add(extra).max(backoff)
}

/// The source of the uniform random values in `[0, 1)` that jitter the waits.
///
/// By default the thread-local generator of `fastrand`; [`Jitter::seeded`] gives a
/// reproducible sequence and [`Jitter::from_fn`] any function (a constant in tests).
#[derive(Clone)]
pub struct Jitter(Arc<dyn Fn() -> f64 + Send + Sync>);

impl Jitter {
    /// `fastrand`'s thread-local generator (the default).
    pub fn thread_local() -> Self {
        Jitter(Arc::new(fastrand::f64))
    }

    /// A generator seeded with `seed`, shared by every clone: the same sequence for the
    /// same seed.
    pub fn seeded(seed: u64) -> Self {
        let rng = Mutex::new(fastrand::Rng::with_seed(seed));
        Jitter(Arc::new(move || {
            rng.lock().unwrap_or_else(PoisonError::into_inner).f64()
        }))
    }

    /// Values from `f`, clamped to `[0, 1]`; `Jitter::from_fn(|| 0.0)` removes jitter.
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn() -> f64 + Send + Sync + 'static,
    {
        Jitter(Arc::new(f))
    }

    /// The next value, in `[0, 1]`.
    pub fn next(&self) -> f64 {
        clamp_unit((self.0)())
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter::thread_local()
    }
}

impl fmt::Debug for Jitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Jitter")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn full_jitter_doubles_up_to_the_cap() {
        let backoff = Backoff::full_jitter(S(3), S(180));
        assert_eq!(backoff.delay(0, 1.0), S(3));
        assert_eq!(backoff.delay(1, 1.0), S(6));
        assert_eq!(backoff.delay(5, 1.0), S(96));
        assert_eq!(backoff.delay(6, 1.0), S(180));
        assert_eq!(backoff.delay(200, 1.0), S(180));
        assert_eq!(backoff.delay(3, 0.0), Duration::ZERO);
        assert_eq!(backoff.delay(0, 0.5), Duration::from_millis(1500));
    }

    #[test]
    fn google_adds_up_to_a_second_and_caps() {
        let backoff = Backoff::google(S(32));
        assert_eq!(backoff.delay(0, 0.0), S(1));
        assert_eq!(backoff.delay(2, 0.5), Duration::from_millis(4500));
        assert_eq!(backoff.delay(5, 0.9), S(32));
        assert_eq!(backoff.delay(u32::MAX, 0.9), S(32));
    }

    #[test]
    fn hint_jitter_is_upward_only() {
        assert_eq!(wait(Some(S(10)), S(1), 0.1, 0.0), S(10));
        assert_eq!(wait(Some(S(10)), S(1), 0.1, 1.0), S(11));
        assert_eq!(wait(Some(S(10)), S(30), 0.1, 1.0), S(30));
        assert_eq!(wait(None, S(2), 0.1, 1.0), S(2));
        assert_eq!(wait(Some(S(10)), S(1), -5.0, f64::NAN), S(10));
    }

    #[test]
    fn extreme_durations_saturate_instead_of_panicking() {
        let huge = Backoff::full_jitter(Duration::MAX, Duration::MAX);
        assert_eq!(huge.delay(u32::MAX, 1.0), Duration::MAX);
        assert!(huge.delay(3, 0.5) <= Duration::MAX);
        assert_eq!(
            Backoff::google(Duration::MAX).delay(u32::MAX, 1.0),
            Duration::MAX
        );
        assert_eq!(wait(Some(Duration::MAX), S(1), 1.0, 1.0), Duration::MAX);
    }

    #[test]
    fn seeded_jitter_repeats() {
        let a = Jitter::seeded(7);
        let b = Jitter::seeded(7);
        for _ in 0..10 {
            let x = a.next();
            assert_eq!(x, b.next());
            assert!((0.0..=1.0).contains(&x));
        }
        assert_eq!(Jitter::from_fn(|| 7.0).next(), 1.0);
    }

    proptest! {
        #[test]
        fn never_below_the_hint_and_never_above_the_cap(
            hint in proptest::option::of(0_u64..100_000),
            base in 1_u64..10_000,
            cap in 0_u64..1_000_000,
            retry in 0_u32..100,
            unit in any::<f64>(),
            hint_jitter in any::<f64>(),
        ) {
            let backoff = Backoff::full_jitter(Duration::from_millis(base), Duration::from_millis(cap));
            let own = backoff.delay(retry, unit);
            prop_assert!(own <= Duration::from_millis(cap));
            let hint = hint.map(Duration::from_millis);
            let w = wait(hint, own, hint_jitter, unit);
            prop_assert!(w >= own);
            if let Some(hint) = hint {
                prop_assert!(w >= hint);
            }
        }
    }
}
