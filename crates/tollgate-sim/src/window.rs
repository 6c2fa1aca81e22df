//! The simulator's own counting: exact logs of arrival instants, and the per-key
//! admission decision built on them.
//!
//! This is deliberately independent of tollgate's limiters (a judge must not be built
//! from what it judges), and deliberately simple: a `VecDeque` of instants per key,
//! which is exact, as the real server's accounting is assumed to be. The decision is a
//! pure function of (state, now), so it is unit-tested here without a server.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::stats::{KeyStats, Limit};

/// Arrival instants within the last `window`, oldest first.
///
/// The window is half-open, `(now - window, now]`: an arrival at `t` stops counting at
/// exactly `t + window`.
#[derive(Debug)]
pub(crate) struct ArrivalLog {
    window: Duration,
    arrivals: VecDeque<Instant>,
}

impl ArrivalLog {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            arrivals: VecDeque::new(),
        }
    }

    /// Forgets arrivals that are no longer inside the window ending at `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&first) = self.arrivals.front() {
            if now.saturating_duration_since(first) >= self.window {
                self.arrivals.pop_front();
            } else {
                break;
            }
        }
    }

    /// Arrivals in the window as of the last `expire`/`record`.
    pub(crate) fn len(&self) -> usize {
        self.arrivals.len()
    }

    /// Records an arrival at `now` (callers pass non-decreasing instants) and returns
    /// the number of arrivals in the window ending at `now`, this one included.
    pub(crate) fn record(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.arrivals.push_back(now);
        self.arrivals.len()
    }

    /// How long from `now` until fewer than `limit` arrivals remain in the window,
    /// assuming nothing else arrives. Zero if that is already so. Call `expire(now)`
    /// first.
    pub(crate) fn wait_until_below(&self, limit: usize, now: Instant) -> Duration {
        let len = self.arrivals.len();
        if len < limit {
            return Duration::ZERO;
        }
        // Once the arrival at index `len - limit` expires, `limit - 1` remain.
        (self.arrivals[len - limit] + self.window).saturating_duration_since(now)
    }
}

/// The limits of one key (a mailbox).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Requests allowed in any window.
    pub(crate) quota: usize,
    /// The window length.
    pub(crate) window: Duration,
    /// Requests allowed in flight at once.
    pub(crate) concurrency: usize,
    /// Whether rejected (429) requests still count against the quota.
    pub(crate) count_throttled: bool,
}

/// What the server does with one arriving request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Served; the caller must call [`KeyState::depart`] when done.
    Admit,
    /// Over the concurrency limit.
    OverConcurrency,
    /// Over the quota; `wait` is the exact time until a request would be admitted.
    OverQuota {
        /// Time until the quota admits a request again (if nothing else arrives).
        wait: Duration,
    },
}

/// Everything the server knows about one key.
#[derive(Debug)]
pub(crate) struct KeyState {
    /// Arrivals counted against the quota.
    counted: ArrivalLog,
    /// Every arrival, for the `max_in_window` statistic.
    seen: ArrivalLog,
    in_flight: usize,
    pub(crate) stats: KeyStats,
}

impl KeyState {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            counted: ArrivalLog::new(window),
            seen: ArrivalLog::new(window),
            in_flight: 0,
            stats: KeyStats::default(),
        }
    }

    /// Decides on a request arriving at `now` and records it.
    ///
    /// Concurrency is checked first: a request over both limits is answered as over
    /// concurrency. `peak_concurrency` counts the arriving request itself, so a client
    /// that sends one request too many is seen (and judged) as having done so.
    pub(crate) fn arrive(&mut self, now: Instant, limits: &Limits) -> Decision {
        self.stats.requests += 1;
        let seen = self.seen.record(now) as u64;
        self.stats.max_in_window = self.stats.max_in_window.max(seen);
        self.stats.peak_concurrency = self.stats.peak_concurrency.max(self.in_flight as u64 + 1);
        self.counted.expire(now);
        if self.in_flight >= limits.concurrency {
            if limits.count_throttled {
                self.counted.record(now);
            }
            self.stats.throttled_concurrency += 1;
            return Decision::OverConcurrency;
        }
        if self.counted.len() >= limits.quota {
            if limits.count_throttled {
                self.counted.record(now);
            }
            self.stats.throttled_quota += 1;
            let wait = self.counted.wait_until_below(limits.quota, now);
            return Decision::OverQuota { wait };
        }
        self.counted.record(now);
        self.in_flight += 1;
        Decision::Admit
    }

    /// Ends an admitted request.
    pub(crate) fn depart(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// A quota of `limit` arrivals in any window, judged on the arrivals it admitted
/// (rejected arrivals are not counted).
#[derive(Debug)]
pub(crate) struct Quota {
    limit: usize,
    admitted: ArrivalLog,
}

impl Quota {
    pub(crate) fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            admitted: ArrivalLog::new(window),
        }
    }

    /// How long from `now` until this quota admits one more arrival (zero: it does
    /// now), assuming nothing else arrives.
    pub(crate) fn wait(&mut self, now: Instant) -> Duration {
        self.admitted.expire(now);
        self.admitted.wait_until_below(self.limit, now)
    }
}

/// Admits an arrival at `now` only if every quota does, and then counts it in all of
/// them. Otherwise counts it in none and returns the exact wait: the longest of the
/// quotas' waits, after which all of them admit (if nothing else arrives meanwhile),
/// since a quota's wait only shrinks as time passes.
pub(crate) fn admit_all(quotas: &mut [&mut Quota], now: Instant) -> Result<(), Duration> {
    let wait = quotas
        .iter_mut()
        .map(|quota| quota.wait(now))
        .max()
        .unwrap_or(Duration::ZERO);
    if !wait.is_zero() {
        return Err(wait);
    }
    for quota in quotas {
        quota.admitted.record(now);
    }
    Ok(())
}

/// The most arrivals seen in any window of one length (rejected ones included), for
/// the `max_in_window` statistics.
#[derive(Debug)]
pub(crate) struct PeakWindow {
    seen: ArrivalLog,
    max: u64,
}

impl PeakWindow {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            seen: ArrivalLog::new(window),
            max: 0,
        }
    }

    /// Records an arrival at `now` and returns the maximum so far.
    pub(crate) fn see(&mut self, now: Instant) -> u64 {
        let in_window = self.seen.record(now) as u64;
        self.max = self.max.max(in_window);
        self.max
    }

    /// The most arrivals seen in any window so far.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }
}

/// A quota and the peak statistic of its window: one limit a simulator enforces on
/// one key.
#[derive(Debug)]
pub(crate) struct Counted {
    pub(crate) quota: Quota,
    pub(crate) peak: PeakWindow,
}

impl Counted {
    pub(crate) fn new(limit: Limit) -> Self {
        Self {
            quota: Quota::new(
                usize::try_from(limit.limit).unwrap_or(usize::MAX),
                limit.window,
            ),
            peak: PeakWindow::new(limit.window),
        }
    }

    /// Counts one arrival at `now` in `stats`: a request, and the most seen in a
    /// window so far.
    pub(crate) fn arrive(&mut self, stats: &mut KeyStats, now: Instant) {
        stats.requests += 1;
        stats.max_in_window = self.peak.see(now);
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1, so that a client that
/// honours it never comes back early.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limits(quota: usize, concurrency: usize, count_throttled: bool) -> Limits {
        Limits {
            quota,
            window: 1000 * MS,
            concurrency,
            count_throttled,
        }
    }

    /// Arrives and departs at once (a request with no latency).
    fn hit(state: &mut KeyState, at: Instant, limits: &Limits) -> Decision {
        let decision = state.arrive(at, limits);
        if decision == Decision::Admit {
            state.depart();
        }
        decision
    }

    #[test]
    fn an_arrival_stops_counting_exactly_one_window_later() {
        let t0 = Instant::now();
        let mut log = ArrivalLog::new(1000 * MS);
        assert_eq!(log.record(t0), 1);
        log.expire(t0 + 999 * MS);
        assert_eq!(log.len(), 1);
        log.expire(t0 + 1000 * MS);
        assert_eq!(log.len(), 0);
    }

    #[test]
    fn the_quota_admits_n_per_window_and_then_tells_the_exact_wait() {
        let t0 = Instant::now();
        let l = limits(3, 4, false);
        let mut s = KeyState::new(l.window);
        for i in 0..3 {
            assert_eq!(hit(&mut s, t0 + i * 100 * MS, &l), Decision::Admit);
        }
        assert_eq!(
            hit(&mut s, t0 + 500 * MS, &l),
            Decision::OverQuota { wait: 500 * MS }
        );
        // Not counted, so the first arrival's expiry frees a slot.
        assert_eq!(hit(&mut s, t0 + 1000 * MS, &l), Decision::Admit);
        assert_eq!(s.stats.requests, 5);
        assert_eq!(s.stats.throttled_quota, 1);
    }

    #[test]
    fn throttled_requests_count_against_the_quota_when_configured() {
        let t0 = Instant::now();
        let l = limits(2, 4, true);
        let mut s = KeyState::new(l.window);
        assert_eq!(hit(&mut s, t0, &l), Decision::Admit);
        assert_eq!(hit(&mut s, t0 + 100 * MS, &l), Decision::Admit);
        // Rejected, but logged: [0, 100, 200]; two must expire before one is admitted.
        assert_eq!(
            hit(&mut s, t0 + 200 * MS, &l),
            Decision::OverQuota { wait: 900 * MS }
        );
        // Retrying at once makes it worse: [0, 100, 200, 300].
        assert_eq!(
            hit(&mut s, t0 + 300 * MS, &l),
            Decision::OverQuota { wait: 900 * MS }
        );
        // At 1100 ms [200, 300] remain: still full, and now [200, 300, 1100].
        assert_eq!(
            hit(&mut s, t0 + 1100 * MS, &l),
            Decision::OverQuota { wait: 200 * MS }
        );
        // Honouring that hint works: at 1300 ms only [1100] remains.
        assert_eq!(hit(&mut s, t0 + 1300 * MS, &l), Decision::Admit);
    }

    #[test]
    fn concurrency_counts_the_arriving_request_in_the_peak() {
        let t0 = Instant::now();
        let l = limits(100, 2, true);
        let mut s = KeyState::new(l.window);
        assert_eq!(s.arrive(t0, &l), Decision::Admit);
        assert_eq!(s.arrive(t0, &l), Decision::Admit);
        assert_eq!(s.arrive(t0, &l), Decision::OverConcurrency);
        assert_eq!(s.stats.peak_concurrency, 3);
        assert_eq!(s.stats.throttled_concurrency, 1);
        s.depart();
        assert_eq!(s.arrive(t0 + MS, &l), Decision::Admit);
        assert_eq!(s.stats.peak_concurrency, 3);
    }

    #[test]
    fn max_in_window_counts_every_arrival_in_any_window() {
        let t0 = Instant::now();
        let l = limits(2, 4, false);
        let mut s = KeyState::new(l.window);
        for ms in [0, 10, 20, 30] {
            hit(&mut s, t0 + ms * MS, &l);
        }
        // 4 arrived within 30 ms although only 2 were admitted.
        assert_eq!(s.stats.max_in_window, 4);
        for ms in [2000, 2500, 2999] {
            hit(&mut s, t0 + ms * MS, &l);
        }
        assert_eq!(s.stats.max_in_window, 4);
    }

    #[test]
    fn admit_all_counts_only_when_every_quota_admits_and_tells_the_longest_wait() {
        let t0 = Instant::now();
        let mut short = Quota::new(1, 1000 * MS);
        let mut long = Quota::new(2, 5000 * MS);
        assert_eq!(admit_all(&mut [&mut short, &mut long], t0), Ok(()));
        // The short window is full for 1 s more.
        assert_eq!(
            admit_all(&mut [&mut short, &mut long], t0 + 200 * MS),
            Err(800 * MS)
        );
        assert_eq!(
            admit_all(&mut [&mut short, &mut long], t0 + 1000 * MS),
            Ok(())
        );
        // Now the long window is full until the first arrival leaves it at 5 s.
        assert_eq!(
            admit_all(&mut [&mut short, &mut long], t0 + 2000 * MS),
            Err(3000 * MS)
        );
        // The rejection counted nowhere: the short quota still admits at 5 s.
        assert_eq!(
            admit_all(&mut [&mut short, &mut long], t0 + 5000 * MS),
            Ok(())
        );
        assert_eq!(admit_all(&mut [], t0), Ok(()));
    }

    #[test]
    fn peak_window_keeps_the_most_arrivals_in_any_window() {
        let t0 = Instant::now();
        let mut peak = PeakWindow::new(1000 * MS);
        for ms in [0, 100, 200] {
            peak.see(t0 + ms * MS);
        }
        assert_eq!(peak.see(t0 + 1150 * MS), 3);
        assert_eq!(peak.max(), 3);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(MS), 1);
        assert_eq!(retry_after_secs(1000 * MS), 1);
        assert_eq!(retry_after_secs(1001 * MS), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(600)), 600);
    }
}
