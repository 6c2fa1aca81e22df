//! The [`Throttle`] signal: what a response said about throttling.

use std::time::Duration;

use super::parse::MAX_HINT;

/// A throttling signal read from one response: what was limited, for whom, for how
/// long, and where the answer came from.
///
/// Built by the [presets](super) (or by a custom classifier) and attached to the
/// response, so that the layers above can cool a key down, lower its concurrency or
/// schedule a retry. Every duration it holds is at most [`MAX_HINT`]: the setters cap
/// larger values.
///
/// ```
/// use std::time::Duration;
/// use tollgate::classify::{Throttle, ThrottleKind, ThrottleScope, ThrottleSource};
///
/// let throttle = Throttle::new(ThrottleKind::Rate, ThrottleScope::Key, ThrottleSource::RetryAfter)
///     .with_retry_after(Duration::from_secs(10));
/// assert_eq!(throttle.retry_after(), Some(Duration::from_secs(10)));
/// assert_eq!(throttle.resume_after(), Some(Duration::from_secs(10)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttle {
    kind: ThrottleKind,
    scope: ThrottleScope,
    retry_after: Option<Duration>,
    source: ThrottleSource,
    remaining: Option<u64>,
    reset_after: Option<Duration>,
}

impl Throttle {
    /// A signal with no retry time, remaining count or reset time.
    pub fn new(kind: ThrottleKind, scope: ThrottleScope, source: ThrottleSource) -> Self {
        Self {
            kind,
            scope,
            retry_after: None,
            source,
            remaining: None,
            reset_after: None,
        }
    }

    /// Sets how long to wait before sending again (capped at [`MAX_HINT`]).
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after.min(MAX_HINT));
        self
    }

    /// Sets the number of requests the server says are left in its window.
    #[must_use]
    pub fn with_remaining(mut self, remaining: u64) -> Self {
        self.remaining = Some(remaining);
        self
    }

    /// Sets how long until the server's window refills (capped at [`MAX_HINT`]).
    #[must_use]
    pub fn with_reset_after(mut self, reset_after: Duration) -> Self {
        self.reset_after = Some(reset_after.min(MAX_HINT));
        self
    }

    /// Sets the source (see [`source`](Self::source)).
    #[must_use]
    pub fn with_source(mut self, source: ThrottleSource) -> Self {
        self.source = source;
        self
    }

    /// What was limited: request rate, concurrency, a counted quota, or the server's
    /// capacity.
    pub fn kind(&self) -> ThrottleKind {
        self.kind
    }

    /// Who was limited: the key the request was sent under, every key, or unknown.
    pub fn scope(&self) -> ThrottleScope {
        self.scope
    }

    /// How long the server asked us to wait before sending again, counted from when the
    /// response was received; `None` when the response named no time. Never more than
    /// [`MAX_HINT`]. Only set on responses that refused the request: a successful
    /// response that announces an exhausted quota carries
    /// [`reset_after`](Self::reset_after) instead.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Where the signal came from: the header or body field that gave
    /// [`retry_after`](Self::retry_after) when there is one, otherwise the header or
    /// body that identified the throttle; [`ThrottleSource::Status`] when the status
    /// code alone did.
    pub fn source(&self) -> ThrottleSource {
        self.source
    }

    /// How many requests the server says are left in its current window, when it said
    /// so (`RateLimit`, `RateLimit-Remaining`, `X-RateLimit-Remaining`).
    pub fn remaining(&self) -> Option<u64> {
        self.remaining
    }

    /// How long until the server's window refills, when it said so, counted from when
    /// the response was received. Never more than [`MAX_HINT`].
    pub fn reset_after(&self) -> Option<Duration> {
        self.reset_after
    }

    /// How long the scope should not be sent to: [`retry_after`](Self::retry_after),
    /// or else [`reset_after`](Self::reset_after) when the server said nothing is
    /// [`remaining`](Self::remaining). `None` when the response gave no time (the
    /// caller's own backoff applies).
    pub fn resume_after(&self) -> Option<Duration> {
        self.retry_after.or(match self.remaining {
            Some(0) => self.reset_after,
            _ => None,
        })
    }
}

/// What a [`Throttle`] limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ThrottleKind {
    /// Too many requests too fast, with no counted budget named: Graph
    /// `TooManyRequests`, Telegram flood control, GitHub secondary limits, a bare `429`.
    Rate,
    /// Too many requests at once: Graph's `ApplicationThrottled` "MailboxConcurrency"
    /// answer. The layers lower the key's concurrency rather than only waiting.
    Concurrency,
    /// A counted budget is used up until it resets: remaining `0` in the `RateLimit` /
    /// `X-RateLimit-*` headers, GitHub's primary limit, Google `RESOURCE_EXHAUSTED`.
    Quota,
    /// The server is overloaded or unavailable (`503`, Graph's `504`): not about this
    /// client's usage.
    Overload,
}

/// Who a [`Throttle`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ThrottleScope {
    /// The key the request was sent under (a Graph mailbox, a Telegram chat, a GitHub
    /// token): other keys are unaffected.
    Key,
    /// Everything sent through the layer.
    Global,
    /// The response does not say; the layer that acts on the signal decides.
    Unknown,
}

/// Which part of a response a [`Throttle`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ThrottleSource {
    /// The `Retry-After` header (RFC 9110 §10.2.3).
    RetryAfter,
    /// The `RateLimit` / `RateLimit-Policy` fields of
    /// draft-ietf-httpapi-ratelimit-headers-10.
    RateLimit,
    /// The older drafts' forms: -03 `RateLimit-Limit` / `RateLimit-Remaining` /
    /// `RateLimit-Reset`, or -07 `RateLimit: limit=.., remaining=.., reset=..`.
    RateLimitLegacy,
    /// The de-facto `X-RateLimit-Limit` / `-Remaining` / `-Reset` / `-Reset-After`
    /// headers (GitHub, X, Discord, Envoy).
    XRateLimit,
    /// A Microsoft Graph error body (`error.code`, `error.message`).
    GraphBody,
    /// Throttled sub-responses inside a Microsoft Graph `$batch` response (their
    /// status, `Retry-After` and error bodies; see
    /// [`batch`](super::batch)).
    GraphBatch,
    /// A Telegram Bot API error body (`parameters.retry_after`, `description`).
    TelegramBody,
    /// A Google API error envelope (`error.status`, `google.rpc.RetryInfo.retryDelay`).
    GoogleBody,
    /// GitHub's documented rule for a secondary rate limit that names no time: wait
    /// at least one minute.
    GitHubSecondaryLimit,
    /// The status code alone (`429`, `503`, `504`).
    Status,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setters_cap_durations_at_the_maximum_hint() {
        let throttle = Throttle::new(
            ThrottleKind::Rate,
            ThrottleScope::Key,
            ThrottleSource::Status,
        )
        .with_retry_after(Duration::MAX)
        .with_reset_after(Duration::from_secs(10_u64.pow(12)));
        assert_eq!(throttle.retry_after(), Some(MAX_HINT));
        assert_eq!(throttle.reset_after(), Some(MAX_HINT));
    }

    #[test]
    fn resume_after_prefers_retry_after() {
        let throttle = Throttle::new(
            ThrottleKind::Quota,
            ThrottleScope::Key,
            ThrottleSource::RetryAfter,
        )
        .with_retry_after(Duration::from_secs(5))
        .with_remaining(0)
        .with_reset_after(Duration::from_secs(30));
        assert_eq!(throttle.resume_after(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn resume_after_uses_the_reset_only_when_nothing_remains() {
        let exhausted = Throttle::new(
            ThrottleKind::Quota,
            ThrottleScope::Unknown,
            ThrottleSource::RateLimit,
        )
        .with_remaining(0)
        .with_reset_after(Duration::from_secs(30));
        assert_eq!(exhausted.resume_after(), Some(Duration::from_secs(30)));
        let left = exhausted.with_remaining(3);
        assert_eq!(left.resume_after(), None);
    }

    #[test]
    fn a_signal_without_times_has_no_resume_time() {
        let throttle = Throttle::new(
            ThrottleKind::Overload,
            ThrottleScope::Unknown,
            ThrottleSource::Status,
        );
        assert_eq!(throttle.resume_after(), None);
        assert_eq!(throttle.remaining(), None);
        assert_eq!(throttle.source(), ThrottleSource::Status);
    }
}
