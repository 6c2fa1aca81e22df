//! The one error type every tollgate layer returns for its own decisions.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::key::{KeyError, KeyId};

/// A tollgate decision that stopped a request, or a failure of tollgate's own state.
///
/// Layers return it boxed (`tower::BoxError`), as tower middleware do; get it back with
/// `err.downcast_ref::<tollgate::Error>()` and match on [`Error::kind`]. Every error
/// says which key it is about (as a redacted [`KeyId`]) and, when it is known, when to
/// come back ([`Error::retry_after`], [`Error::retry_at`]).
///
/// `Error` is `Clone` so that it can also travel as a response extension: a server
/// layer that answers `429` itself puts the error in the response's extensions for
/// anyone who wants the typed value.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    key: Option<KeyId>,
    retry_at: Option<Instant>,
    retry_after: Option<Duration>,
    quota: Option<u8>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

/// What kind of decision or failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request has no usable key; [`Error::source`] is the [`KeyError`].
    Key,
    /// Reject mode: the key already has its maximum of requests in flight.
    ConcurrencyLimited,
    /// Wait mode: the key's wait queue is full.
    QueueFull,
    /// Wait mode: the request would have waited longer than its `max_wait`.
    WaitExceeded,
    /// The store holds `max_keys` keys and none of them can be evicted.
    TooManyKeys,
    /// The store could not be reached or answered an error (a later Redis store).
    StoreUnavailable,
    /// Reject mode: a quota window of the key is used up; [`Error::retry_after`] is the
    /// exact time until the request would be admitted, and [`Error::quota_index`] says
    /// which of the key's quotas refused.
    QuotaExceeded,
    /// The key (or the whole layer) is cooling down after a server's throttle signal;
    /// [`Error::retry_at`] is when the cooldown ends.
    Throttled,
    /// The request costs more than a quota's capacity: no wait would ever admit it.
    CostTooHigh,
    /// `RetryAfterBackoff`: the server asked for a wait longer than the layer's
    /// `max_inline_wait` (Telegram's 4310 s flood wait). The call ended at once, without
    /// waiting; [`Error::retry_at`] is when the request may be sent again, for a job
    /// queue to reschedule it. The request *was* sent (and answered).
    RetryLater,
    /// `RetryAfterBackoff` (with `exhausted_error`): every allowed retry was used, or the
    /// next wait would pass `max_elapsed`, or the retry budget was empty, and the last
    /// answer was still retryable; [`Error::retry_after`] is that answer's hint, if any.
    RetriesExhausted,
}

impl ErrorKind {
    /// The HTTP status a server answers with for this kind, by default.
    ///
    /// `429 Too Many Requests` for limits of the client's own key, `503 Service
    /// Unavailable` for failures that are not the client's doing (key table full, store
    /// down), `400 Bad Request` for a request without a usable key, `413 Content Too
    /// Large` for a request whose cost no quota can ever admit.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Key => StatusCode::BAD_REQUEST,
            ErrorKind::ConcurrencyLimited
            | ErrorKind::QueueFull
            | ErrorKind::WaitExceeded
            | ErrorKind::QuotaExceeded
            | ErrorKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::CostTooHigh => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooManyKeys | ErrorKind::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            // The upstream throttled or failed: not the downstream client's doing.
            ErrorKind::RetryLater | ErrorKind::RetriesExhausted => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether an error of this kind means the request never left this process (a
    /// local rejection): quota taken for it further out is given back.
    pub fn never_sent(self) -> bool {
        // Every kind so far is a local decision; kinds about answers from the server
        // (retries exhausted) will not be.
        matches!(
            self,
            ErrorKind::Key
                | ErrorKind::ConcurrencyLimited
                | ErrorKind::QueueFull
                | ErrorKind::WaitExceeded
                | ErrorKind::TooManyKeys
                | ErrorKind::StoreUnavailable
                | ErrorKind::QuotaExceeded
                | ErrorKind::Throttled
                | ErrorKind::CostTooHigh
        )
    }

    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Key => "no usable key",
            ErrorKind::ConcurrencyLimited => "per-key concurrency limit reached",
            ErrorKind::QueueFull => "per-key wait queue full",
            ErrorKind::WaitExceeded => "per-key wait would exceed max_wait",
            ErrorKind::TooManyKeys => "limiter key table full",
            ErrorKind::StoreUnavailable => "limit store unavailable",
            ErrorKind::QuotaExceeded => "per-key quota exceeded",
            ErrorKind::Throttled => "key cooling down after a throttle signal",
            ErrorKind::CostTooHigh => "request cost exceeds the quota's capacity",
            ErrorKind::RetryLater => "server asked for a wait beyond max_inline_wait",
            ErrorKind::RetriesExhausted => "retries exhausted",
        }
    }
}

impl Error {
    /// An error of `kind`, without key, retry time or source: for stores and layers
    /// outside this crate (a Redis store's [`ErrorKind::StoreUnavailable`]).
    pub fn new(kind: ErrorKind) -> Self {
        Error {
            kind,
            key: None,
            retry_at: None,
            retry_after: None,
            quota: None,
            source: None,
        }
    }

    /// A quota store's refusal of `key`'s request by the quota at `index`: admissible
    /// `wait` after `now`. [`ErrorKind::Throttled`] when a cooldown is what holds it
    /// (`throttled`), else [`ErrorKind::QuotaExceeded`].
    pub fn quota_refused(
        key: KeyId,
        index: usize,
        now: Instant,
        wait: Duration,
        throttled: bool,
    ) -> Self {
        let kind = if throttled {
            ErrorKind::Throttled
        } else {
            ErrorKind::QuotaExceeded
        };
        Error::new(kind)
            .with_key(key)
            .with_quota_index(index)
            .with_retry_after(now, wait)
    }

    /// A quota store's refusal of a cost that the quota at `index` can never admit
    /// ([`ErrorKind::CostTooHigh`]).
    pub fn cost_too_high(key: KeyId, index: usize) -> Self {
        Error::new(ErrorKind::CostTooHigh)
            .with_key(key)
            .with_quota_index(index)
    }

    pub(crate) fn from_key_error(err: KeyError) -> Self {
        Error::new(ErrorKind::Key).with_source(err)
    }

    /// Names the key the decision was about.
    pub fn with_key(mut self, key: KeyId) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets when to come back, as a delay from `now`.
    pub fn with_retry_after(mut self, now: Instant, after: Duration) -> Self {
        self.retry_after = Some(after);
        self.retry_at = Some(now + after);
        self
    }

    /// Names the refusing quota by its position in the key's quota set.
    pub fn with_quota_index(mut self, index: usize) -> Self {
        self.quota = u8::try_from(index).ok();
        self
    }

    /// Attaches the underlying failure ([`Error::source`] returns it).
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// What happened.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The fingerprint of the key the decision was about, when a key was known.
    pub fn key(&self) -> Option<KeyId> {
        self.key
    }

    /// When the request may be tried again, if tollgate knows (a quota that frees at a
    /// known time, a server's `Retry-After`). For concurrency rejections this is the
    /// configured estimate.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// [`Error::retry_at`] as a delay from the moment of the decision.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// For [`ErrorKind::QuotaExceeded`] and [`ErrorKind::CostTooHigh`]: the position of
    /// the refusing quota in the key's quota set.
    pub fn quota_index(&self) -> Option<usize> {
        self.quota.map(usize::from)
    }

    /// The HTTP status a server answers with for this error by default; see
    /// [`ErrorKind::status`].
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(key) = &self.key {
            d.field("key", key);
        }
        if let Some(after) = &self.retry_after {
            d.field("retry_after", after);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.describe())?;
        if let Some(key) = &self.key {
            write!(f, " for key {key}")?;
        }
        if let Some(after) = &self.retry_after {
            write!(f, "; retry after {:.3}s", after.as_secs_f64())?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    #[test]
    fn display_names_the_fingerprint_never_the_key() {
        let key = Key::from_static("alice@contoso.com");
        let err = Error::new(ErrorKind::ConcurrencyLimited)
            .with_key(key.id())
            .with_retry_after(Instant::now(), Duration::from_millis(1500));
        let text = err.to_string();
        assert!(
            text.starts_with("per-key concurrency limit reached for key #"),
            "{text}"
        );
        assert!(text.ends_with("retry after 1.500s"), "{text}");
        assert!(!format!("{err:?}").contains("alice"));
    }

    #[test]
    fn key_errors_are_reachable_as_the_source() {
        let err = Error::from_key_error(KeyError::missing("header `x-api-key`"));
        assert_eq!(err.kind(), ErrorKind::Key);
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let source = err.source().unwrap().downcast_ref::<KeyError>().unwrap();
        assert_eq!(source, &KeyError::missing("header `x-api-key`"));
    }
}
