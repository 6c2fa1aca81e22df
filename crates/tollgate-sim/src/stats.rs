//! What a simulator saw, counted on its own side.

use std::collections::BTreeMap;
use std::time::Duration;

/// Counters of one key (a Graph mailbox, a Telegram chat, a Chat space's reads or
/// writes, ...), or totals over keys.
///
/// Everything here is measured by the server from its own arrival times, not reported
/// by the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStats {
    /// Requests received (a `$batch` sub-request counts as one request).
    pub requests: u64,
    /// Requests answered with a success.
    pub ok: u64,
    /// Requests answered `429` because a quota was exhausted (Graph's
    /// `TooManyRequests`; for Telegram and Chat every `429`, flood waits included).
    pub throttled_quota: u64,
    /// Requests answered `429` because too many were in flight (Graph's
    /// `ApplicationThrottled`; always 0 for the simulators without a concurrency limit).
    pub throttled_concurrency: u64,
    /// The most requests open at the server at once, the arriving one included: a
    /// client that sends 5 at once against a limit of 4 shows 5 here.
    ///
    /// In totals: the maximum over keys. Only the Graph simulator tracks it (0
    /// elsewhere).
    pub peak_concurrency: u64,
    /// The most requests received in any window of the configured length (rejected
    /// ones included). A client that respects the quota shows at most the quota here.
    ///
    /// In totals: the maximum over keys.
    pub max_in_window: u64,
    /// Messages returned (Graph listings, Chat reads) or delivered (Telegram sends,
    /// Chat writes) in successful responses.
    pub messages_served: u64,
}

impl KeyStats {
    /// All `429` answers: quota and concurrency.
    #[must_use]
    pub fn throttled(&self) -> u64 {
        self.throttled_quota + self.throttled_concurrency
    }

    /// Counts the answer to one arrival: admitted with `messages` served, or refused
    /// by a quota.
    pub(crate) fn settle(&mut self, admitted: bool, messages: u64) {
        if admitted {
            self.ok += 1;
            self.messages_served += messages;
        } else {
            self.throttled_quota += 1;
        }
    }

    /// Adds counters, takes maxima of the peaks.
    pub(crate) fn accumulate(&mut self, other: &Self) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.throttled_quota += other.throttled_quota;
        self.throttled_concurrency += other.throttled_concurrency;
        self.peak_concurrency = self.peak_concurrency.max(other.peak_concurrency);
        self.max_in_window = self.max_in_window.max(other.max_in_window);
        self.messages_served += other.messages_served;
    }
}

/// A snapshot of everything a [`GraphSim`](crate::GraphSim) server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Per mailbox, by name (every configured mailbox is listed, used or not).
    pub per_mailbox: BTreeMap<String, KeyStats>,
    /// Sums over mailboxes; `peak_concurrency` and `max_in_window` are maxima.
    pub totals: KeyStats,
    /// `$batch` requests received (their sub-requests are counted per mailbox).
    pub batches: u64,
    /// Requests (or sub-requests) for an unknown mailbox or path, answered `404`.
    pub not_found: u64,
    /// Malformed requests answered `400` or `405` (bad `$top`, bad `$batch` body, ...).
    pub bad_requests: u64,
    /// The configured quota: requests allowed per mailbox in any window.
    pub limit_in_window: u64,
    /// The configured window length.
    pub window: Duration,
    /// The configured concurrency limit per mailbox.
    pub concurrency_limit: u64,
    /// Requests received over time, in buckets of the configured length (see
    /// [`GraphSim::timeline_bucket`](crate::GraphSim::timeline_bucket)) from the
    /// server's start, all mailboxes together; empty buckets included.
    pub timeline: Vec<TimelineBucket>,
}

/// One configured quota: at most `limit` requests in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limit {
    /// Requests allowed in any window.
    pub limit: u64,
    /// The window length.
    pub window: Duration,
}

impl Limit {
    pub(crate) fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit: limit as u64,
            window,
        }
    }

    /// A limit set through a builder.
    ///
    /// # Panics
    ///
    /// If `limit` or `window` is zero.
    pub(crate) fn checked(limit: u32, window: Duration) -> Self {
        assert!(limit > 0, "a limit must be at least 1");
        assert!(!window.is_zero(), "a window must not be zero");
        Self::new(limit as usize, window)
    }
}

/// Requests the server received in one time bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimelineBucket {
    /// Offset of the bucket's start from the server's start.
    pub start: Duration,
    /// Requests received (a `$batch` sub-request counts as one).
    pub requests: u64,
    /// Of those, admitted (served).
    pub admitted: u64,
    /// Of those, answered `429` (quota or concurrency).
    pub throttled: u64,
}

/// Counts one arrival `offset` after the start into `timeline`, growing it (with
/// empty buckets) as needed. `bucket` is not zero.
pub(crate) fn record_arrival(
    timeline: &mut Vec<TimelineBucket>,
    bucket: Duration,
    offset: Duration,
    admitted: bool,
) {
    let index = usize::try_from(offset.as_nanos() / bucket.as_nanos()).unwrap_or(usize::MAX);
    if index >= timeline.len() {
        let from = timeline.len();
        timeline.extend((from..=index).map(|i| TimelineBucket {
            start: bucket.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX)),
            ..TimelineBucket::default()
        }));
    }
    let slot = &mut timeline[index];
    slot.requests += 1;
    if admitted {
        slot.admitted += 1;
    } else {
        slot.throttled += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_buckets_arrivals_and_keeps_empty_buckets() {
        let ms = Duration::from_millis;
        let mut timeline = Vec::new();
        record_arrival(&mut timeline, ms(100), ms(250), true);
        record_arrival(&mut timeline, ms(100), ms(0), true);
        record_arrival(&mut timeline, ms(100), ms(299), false);
        let counts: Vec<_> = timeline
            .iter()
            .map(|b| (b.start, b.requests, b.admitted, b.throttled))
            .collect();
        assert_eq!(
            counts,
            [(ms(0), 1, 1, 0), (ms(100), 0, 0, 0), (ms(200), 2, 1, 1)]
        );
    }
}
