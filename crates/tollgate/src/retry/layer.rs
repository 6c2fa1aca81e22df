use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::{Backoff, DefaultPolicy, Jitter, RetryAfterBackoff, RetryBudget};

/// Applies [`RetryAfterBackoff`] to a service; see the [module docs](super).
///
/// The layer is its own builder; [`standard`](Self::standard) (also
/// [`new`](Self::new) and `Default`), [`graph`](Self::graph),
/// [`telegram`](Self::telegram) and [`google`](Self::google) are the presets, each
/// pairing with the classifier preset of the same name. Clones of the layer and every
/// service it makes share one [`RetryBudget`].
#[must_use]
#[derive(Clone)]
pub struct RetryAfterBackoffLayer<P = DefaultPolicy> {
    pub(super) config: Config<P>,
}

#[derive(Clone)]
pub(super) struct Config<P> {
    pub(super) policy: P,
    pub(super) backoff: Backoff,
    pub(super) max_retries: u32,
    pub(super) max_elapsed: Duration,
    pub(super) max_inline_wait: Duration,
    pub(super) hint_jitter: f64,
    pub(super) jitter: Jitter,
    pub(super) budget: Option<RetryBudget>,
    pub(super) attempt_header: bool,
    pub(super) exhausted_error: bool,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl RetryAfterBackoffLayer {
    /// The [`standard`](Self::standard) preset.
    pub fn new() -> Self {
        Self::standard()
    }

    /// For any HTTP API: 3 retries, full-jitter backoff from 1 s capped at 60 s, hints
    /// jittered up by at most 10 %, at most 120 s waited inline per wait and 300 s in
    /// all, the default [`RetryBudget`] (20 % + 10/s), no `Retry-Attempt` header.
    pub fn standard() -> Self {
        RetryAfterBackoffLayer {
            config: Config {
                policy: DefaultPolicy,
                backoff: Backoff::full_jitter(secs(1), secs(60)),
                max_retries: 3,
                max_elapsed: secs(300),
                max_inline_wait: secs(120),
                hint_jitter: 0.1,
                jitter: Jitter::default(),
                budget: Some(RetryBudget::default()),
                attempt_header: false,
                exhausted_error: false,
            },
        }
    }

    /// Microsoft Graph, as the Kiota SDKs' `RetryHandler` does it: 3 retries, 3 s base
    /// delay, 180 s cap (also the longest inline wait), the `Retry-Attempt: n` header;
    /// at most 600 s in all.
    pub fn graph() -> Self {
        Self::standard()
            .backoff(Backoff::full_jitter(secs(3), secs(180)))
            .max_inline_wait(secs(180))
            .max_elapsed(secs(600))
            .retry_attempt_header(true)
    }

    /// The Telegram Bot API: flood waits (`retry_after`, up to hours) longer than 60 s
    /// go straight back to the caller as [`ErrorKind::RetryLater`](crate::ErrorKind::RetryLater)
    /// with the instant to retry at; shorter ones are waited, 3 retries, backoff from
    /// 1 s capped at 30 s, at most 120 s in all.
    pub fn telegram() -> Self {
        Self::standard()
            .backoff(Backoff::full_jitter(secs(1), secs(30)))
            .max_inline_wait(secs(60))
            .max_elapsed(secs(120))
    }

    /// Google APIs, with Google's documented formula `min(2^n s + rand(0..1000 ms),
    /// 32 s)`: 5 retries, at most 64 s waited inline, 300 s in all.
    pub fn google() -> Self {
        Self::standard()
            .backoff(Backoff::google(secs(32)))
            .max_retries(5)
            .max_inline_wait(secs(64))
    }
}

impl Default for RetryAfterBackoffLayer {
    fn default() -> Self {
        Self::standard()
    }
}

impl<P> RetryAfterBackoffLayer<P> {
    /// Decides which answers are retried with `policy` instead of [`DefaultPolicy`].
    pub fn policy<P2>(self, policy: P2) -> RetryAfterBackoffLayer<P2> {
        let c = self.config;
        RetryAfterBackoffLayer {
            config: Config {
                policy,
                backoff: c.backoff,
                max_retries: c.max_retries,
                max_elapsed: c.max_elapsed,
                max_inline_wait: c.max_inline_wait,
                hint_jitter: c.hint_jitter,
                jitter: c.jitter,
                budget: c.budget,
                attempt_header: c.attempt_header,
                exhausted_error: c.exhausted_error,
            },
        }
    }

    /// The own backoff (the wait is the larger of it and the server's hint).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// At most `max_retries` retries after the first attempt (0: never retry).
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.config.max_retries = max_retries;
        self
    }

    /// No retry is started whose wait would end more than `max_elapsed` after the call
    /// began.
    pub fn max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.config.max_elapsed = max_elapsed;
        self
    }

    /// The longest wait held inline. A longer required wait ends the call at once with
    /// [`ErrorKind::RetryLater`](crate::ErrorKind::RetryLater) and its
    /// [`retry_at`](crate::Error::retry_at): the worker is never held.
    pub fn max_inline_wait(mut self, max_inline_wait: Duration) -> Self {
        self.config.max_inline_wait = max_inline_wait;
        self
    }

    /// Upward jitter on a server's hint, as a fraction of it (0.1 by default: a 10 s hint
    /// waits 10 to 11 s), so that clients told the same time do not return as a herd.
    /// Never downward, and never past `max_inline_wait`. `0.0` waits exactly the hint.
    pub fn hint_jitter(mut self, fraction: f64) -> Self {
        self.config.hint_jitter = fraction;
        self
    }

    /// The random source of every jitter (tests: [`Jitter::seeded`] or
    /// [`Jitter::from_fn`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.config.jitter = jitter;
        self
    }

    /// The retry budget shared by every clone (the default: [`RetryBudget::default`]).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// No retry budget: only the per-request bounds apply.
    pub fn no_budget(mut self) -> Self {
        self.config.budget = None;
        self
    }

    /// Adds `Retry-Attempt: n` to the `n`-th retry (as the Graph SDKs do). Off by default
    /// except for [`graph`](RetryAfterBackoffLayer::graph).
    pub fn retry_attempt_header(mut self, on: bool) -> Self {
        self.config.attempt_header = on;
        self
    }

    /// When retries run out (attempts, elapsed time, budget) on an answer that is still
    /// retryable: `false` (the default, as tower's `Retry` and the Graph SDKs) returns
    /// that last response, its [`Throttle`](crate::classify::Throttle) extension and
    /// body intact; `true` returns an
    /// [`ErrorKind::RetriesExhausted`](crate::ErrorKind::RetriesExhausted) error carrying
    /// the last hint. An inner error is returned as it is either way.
    pub fn exhausted_error(mut self, on: bool) -> Self {
        self.config.exhausted_error = on;
        self
    }

    /// The retry budget, if any (e.g. to read its balance).
    pub fn get_budget(&self) -> Option<&RetryBudget> {
        self.config.budget.as_ref()
    }
}

impl<S, P: Clone> Layer<S> for RetryAfterBackoffLayer<P> {
    type Service = RetryAfterBackoff<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryAfterBackoff::from_config(inner, Arc::new(self.config.clone()))
    }
}

impl<P> fmt::Debug for RetryAfterBackoffLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config
            .fmt_fields(f.debug_struct("RetryAfterBackoffLayer"))
    }
}

impl<P> Config<P> {
    pub(super) fn fmt_fields(&self, mut d: fmt::DebugStruct<'_, '_>) -> fmt::Result {
        d.field("backoff", &self.backoff)
            .field("max_retries", &self.max_retries)
            .field("max_elapsed", &self.max_elapsed)
            .field("max_inline_wait", &self.max_inline_wait)
            .field("hint_jitter", &self.hint_jitter)
            .field("budget", &self.budget)
            .field("retry_attempt_header", &self.attempt_header)
            .field("exhausted_error", &self.exhausted_error)
            .finish_non_exhaustive()
    }
}
