//! [`Quota`]: `N` units per window `W`, with one of three window semantics.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// How a [`Quota`] counts its window; see the [module docs](super) for the exact
/// guarantee and worst case of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WindowKind {
    /// Never more than `N` in *any* interval of length `W` (bucketed, conservative).
    Sliding,
    /// Never more than `N` in each aligned window `[kW, (k+1)W)` of the caller's clock.
    Fixed,
    /// GCRA: admissions spaced `W/N` apart, with a burst allowance (1 by default).
    Smooth,
}

/// A quota: at most `limit` units per `window`, counted as [`kind`](Quota::kind) says.
///
/// Built by [`Quota::sliding`], [`Quota::fixed`] or [`Quota::smooth`] (plus
/// [`Quota::burst`]); an invalid quota cannot be built. `Copy` and 32 bytes: the
/// derived values the maths needs (the sliding granularity, the GCRA emission interval)
/// are computed once here, not on every request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    /// `W` in nanoseconds.
    window: u64,
    /// Sliding: bucket width `g = ⌈W / SLIDING_BUCKETS⌉`; fixed: `W`; smooth: emission
    /// interval `T = ⌈W / N⌉`. Always ≥ 1.
    step: u64,
    limit: u32,
    /// Most units admissible at one instant: `limit`, or the burst for smooth quotas.
    capacity: u32,
    kind: WindowKind,
}

impl Quota {
    /// The shortest window a quota may have: 1 ms.
    pub const MIN_WINDOW: Duration = Duration::from_millis(1);

    /// The longest window a quota may have: 365 days. A smooth quota's burst must also
    /// refill within it (`burst × W/N ≤ 365 days`).
    pub const MAX_WINDOW: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// How many buckets a sliding window is divided into; the granularity is
    /// `⌈W / SLIDING_BUCKETS⌉`.
    pub const SLIDING_BUCKETS: u32 = 32;

    /// Never more than `limit` units in any interval of length `window`.
    ///
    /// Counted in [`SLIDING_BUCKETS`](Quota::SLIDING_BUCKETS) buckets; the guarantee is
    /// exact, the price is throughput: a unit is remembered for up to
    /// `window + granularity` (see the [module docs](super#sliding)).
    pub fn sliding(limit: u32, window: Duration) -> Result<Quota, QuotaError> {
        let w = validate(limit, window)?;
        Ok(Quota {
            window: w,
            step: w.div_ceil(u64::from(Quota::SLIDING_BUCKETS)),
            limit,
            capacity: limit,
            kind: WindowKind::Sliding,
        })
    }

    /// Never more than `limit` units in each window `[kW, (k+1)W)` aligned on the
    /// caller's clock origin: up to `2 × limit` in an unaligned interval of length
    /// `window` (see the [module docs](super#fixed)).
    pub fn fixed(limit: u32, window: Duration) -> Result<Quota, QuotaError> {
        let w = validate(limit, window)?;
        Ok(Quota {
            window: w,
            step: w,
            limit,
            capacity: limit,
            kind: WindowKind::Fixed,
        })
    }

    /// `limit` units per `window`, evenly spaced: one unit every `⌈window / limit⌉`
    /// (GCRA), with a burst of 1 unless [`burst`](Quota::burst) says otherwise.
    ///
    /// With the default burst of 1 this is *also* a sliding quota (never more than
    /// `limit` in any interval of length `window`), without the sliding window's
    /// throughput cost; see the [module docs](super#smooth-gcra).
    pub fn smooth(limit: u32, window: Duration) -> Result<Quota, QuotaError> {
        let w = validate(limit, window)?;
        Ok(Quota {
            window: w,
            step: w.div_ceil(u64::from(limit)),
            limit,
            capacity: 1,
            kind: WindowKind::Smooth,
        })
    }

    /// Sets the burst of a smooth quota: how many units may be admitted at once after
    /// an idle period. The most admitted in any interval of length `window` is then
    /// `burst + limit - 1`.
    ///
    /// Fails if the quota is not smooth, if `burst` is 0, or if refilling the burst
    /// (`burst × ⌈window / limit⌉`) would take longer than
    /// [`MAX_WINDOW`](Quota::MAX_WINDOW).
    pub fn burst(self, burst: u32) -> Result<Quota, QuotaError> {
        if self.kind != WindowKind::Smooth {
            return Err(QuotaError(Invalid::BurstNotSmooth));
        }
        if burst == 0 {
            return Err(QuotaError(Invalid::BurstZero));
        }
        let refill = u128::from(burst) * u128::from(self.step);
        if refill > Quota::MAX_WINDOW.as_nanos() {
            return Err(QuotaError(Invalid::BurstTooLong));
        }
        Ok(Quota {
            capacity: burst,
            ..self
        })
    }

    /// The same quota over a window longer by `margin`: the safety margin for the
    /// latency between a local admission and the server's count. If the server counts
    /// a request up to `margin` later than we admitted it, admissions spaced for a
    /// window of `W + margin` locally still fit the server's `W`.
    ///
    /// Keeps the kind and the burst. Fails if the widened window exceeds
    /// [`MAX_WINDOW`](Quota::MAX_WINDOW).
    pub fn with_margin(self, margin: Duration) -> Result<Quota, QuotaError> {
        let window = self.window() + margin;
        let widened = match self.kind {
            WindowKind::Sliding => Quota::sliding(self.limit, window)?,
            WindowKind::Fixed => Quota::fixed(self.limit, window)?,
            WindowKind::Smooth => Quota::smooth(self.limit, window)?.burst(self.capacity)?,
        };
        Ok(widened)
    }

    /// A bound on how long an admission is remembered: a state whose last admission
    /// was at `t` is fresh ([`WindowState::is_fresh`](super::WindowState::is_fresh)) at
    /// `t + forget_after()`, if nothing is blocked. Sliding: `W + g`; fixed: `W` (the
    /// window ends by then); smooth: `burst × T` (the theoretical arrival time is at most
    /// that far ahead). Stores use it to know when a key may be evicted without
    /// re-reading its state.
    pub fn forget_after(&self) -> Duration {
        let nanos = match self.kind {
            WindowKind::Sliding => self.window.saturating_add(self.step),
            WindowKind::Fixed => self.window,
            WindowKind::Smooth => u64::from(self.capacity).saturating_mul(self.step),
        };
        Duration::from_nanos(nanos)
    }

    /// How this quota counts its window.
    pub fn kind(&self) -> WindowKind {
        self.kind
    }

    /// `N`: the units per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// `W`: the window.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window)
    }

    /// The most units one request may cost and ever be admitted: the limit for sliding
    /// and fixed quotas, the burst for smooth ones. A request costing more is refused
    /// with [`Wait::Never`](super::Wait::Never).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// For a sliding quota, the width of its buckets: `⌈W / SLIDING_BUCKETS⌉`.
    pub fn granularity(&self) -> Option<Duration> {
        (self.kind == WindowKind::Sliding).then(|| Duration::from_nanos(self.step))
    }

    /// For a smooth quota, the emission interval `T = ⌈W / N⌉` (rounded up to a whole
    /// nanosecond, so that the rate never exceeds `N / W`).
    pub fn interval(&self) -> Option<Duration> {
        (self.kind == WindowKind::Smooth).then(|| Duration::from_nanos(self.step))
    }

    pub(crate) fn window_nanos(&self) -> u64 {
        self.window
    }

    pub(crate) fn step_nanos(&self) -> u64 {
        self.step
    }
}

fn validate(limit: u32, window: Duration) -> Result<u64, QuotaError> {
    if limit == 0 {
        return Err(QuotaError(Invalid::LimitZero));
    }
    if window < Quota::MIN_WINDOW {
        return Err(QuotaError(Invalid::WindowTooShort));
    }
    if window > Quota::MAX_WINDOW {
        return Err(QuotaError(Invalid::WindowTooLong));
    }
    // At most 365 days: fits in u64 nanoseconds with room to spare.
    Ok(super::nanos(window))
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Quota");
        d.field("kind", &self.kind)
            .field("limit", &self.limit)
            .field("window", &self.window());
        match self.kind {
            WindowKind::Sliding => d.field("granularity", &Duration::from_nanos(self.step)),
            WindowKind::Fixed => &mut d,
            WindowKind::Smooth => d
                .field("burst", &self.capacity)
                .field("interval", &Duration::from_nanos(self.step)),
        };
        d.finish()
    }
}

impl fmt::Display for Quota {
    /// `35 per 60s, sliding`; `60 per 60s, smooth, burst 5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {:?}", self.limit, self.window())?;
        match self.kind {
            WindowKind::Sliding => f.write_str(", sliding"),
            WindowKind::Fixed => f.write_str(", fixed"),
            WindowKind::Smooth => write!(f, ", smooth, burst {}", self.capacity),
        }
    }
}

/// A quota that cannot be built: zero limit or burst, a window outside
/// [`Quota::MIN_WINDOW`]..=[`Quota::MAX_WINDOW`], or a burst on a quota that is not
/// smooth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaError(Invalid);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invalid {
    LimitZero,
    WindowTooShort,
    WindowTooLong,
    BurstZero,
    BurstNotSmooth,
    BurstTooLong,
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Invalid::LimitZero => "quota limit must be at least 1",
            Invalid::WindowTooShort => "quota window must be at least 1ms",
            Invalid::WindowTooLong => "quota window must be at most 365 days",
            Invalid::BurstZero => "quota burst must be at least 1",
            Invalid::BurstNotSmooth => "only smooth quotas take a burst",
            Invalid::BurstTooLong => "quota burst must refill within 365 days",
        })
    }
}

impl StdError for QuotaError {}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_sliding_quota_divides_its_window_into_32_buckets() {
        let q = Quota::sliding(35, MINUTE).unwrap();
        assert_eq!(q.kind(), WindowKind::Sliding);
        assert_eq!(q.limit(), 35);
        assert_eq!(q.capacity(), 35);
        assert_eq!(q.window(), MINUTE);
        assert_eq!(q.granularity(), Some(Duration::from_millis(1875)));
        assert_eq!(q.interval(), None);
    }

    #[test]
    fn granularity_and_interval_round_up_to_whole_nanoseconds() {
        let w = Duration::from_nanos(1_000_001);
        assert_eq!(
            Quota::sliding(1, w).unwrap().granularity(),
            Some(Duration::from_nanos(31_251))
        );
        let q = Quota::smooth(3, Duration::from_secs(1)).unwrap();
        assert_eq!(q.interval(), Some(Duration::from_nanos(333_333_334)));
    }

    #[test]
    fn a_smooth_quota_has_a_burst_of_one_until_told_otherwise() {
        let q = Quota::smooth(60, MINUTE).unwrap();
        assert_eq!(q.capacity(), 1);
        assert_eq!(q.interval(), Some(Duration::from_secs(1)));
        let q = q.burst(10).unwrap();
        assert_eq!(q.capacity(), 10);
        assert_eq!(q.limit(), 60);
    }

    #[test]
    fn invalid_quotas_cannot_be_built() {
        let err = |r: Result<Quota, QuotaError>| r.unwrap_err().to_string();
        assert_eq!(
            err(Quota::sliding(0, MINUTE)),
            "quota limit must be at least 1"
        );
        assert_eq!(
            err(Quota::fixed(1, Duration::from_micros(999))),
            "quota window must be at least 1ms"
        );
        assert_eq!(
            err(Quota::smooth(
                1,
                Quota::MAX_WINDOW + Duration::from_nanos(1)
            )),
            "quota window must be at most 365 days"
        );
        let smooth = Quota::smooth(1, Duration::from_secs(3600)).unwrap();
        assert_eq!(err(smooth.burst(0)), "quota burst must be at least 1");
        assert_eq!(
            err(Quota::sliding(5, MINUTE).unwrap().burst(2)),
            "only smooth quotas take a burst"
        );
        assert_eq!(
            err(smooth.burst(24 * 366)),
            "quota burst must refill within 365 days"
        );
        assert!(smooth.burst(24 * 365).is_ok());
    }

    #[test]
    fn the_extreme_valid_quotas_can_be_built() {
        assert!(Quota::sliding(u32::MAX, Quota::MIN_WINDOW).is_ok());
        assert!(Quota::fixed(1, Quota::MAX_WINDOW).is_ok());
        let q = Quota::smooth(u32::MAX, Quota::MIN_WINDOW).unwrap();
        assert_eq!(q.interval(), Some(Duration::from_nanos(1)));
    }

    #[test]
    fn quotas_print_their_semantics() {
        let q = Quota::smooth(60, MINUTE).unwrap().burst(5).unwrap();
        assert_eq!(q.to_string(), "60 per 60s, smooth, burst 5");
        assert_eq!(
            format!("{q:?}"),
            "Quota { kind: Smooth, limit: 60, window: 60s, burst: 5, interval: 1s }"
        );
        let q = Quota::sliding(35, MINUTE).unwrap();
        assert_eq!(q.to_string(), "35 per 60s, sliding");
        assert_eq!(
            format!("{q:?}"),
            "Quota { kind: Sliding, limit: 35, window: 60s, granularity: 1.875s }"
        );
        assert_eq!(
            Quota::fixed(1, MINUTE).unwrap().to_string(),
            "1 per 60s, fixed"
        );
    }

    #[test]
    fn a_quota_is_small_and_copy() {
        fn is_copy<T: Copy>() {}
        is_copy::<Quota>();
        assert_eq!(size_of::<Quota>(), 32);
    }
}
