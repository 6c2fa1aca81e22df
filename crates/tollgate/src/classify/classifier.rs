//! [`ClassifyThrottle`]: the pluggable behaviour of
//! [`ThrottleClassifier`](super::ThrottleClassifier).

use std::time::SystemTime;

use http::{HeaderMap, StatusCode};

use super::{Preset, Throttle};

/// Decides whether a response was throttled, and whether its body is needed to tell.
///
/// [`ThrottleClassifier`](super::ThrottleClassifier) asks [`needs_body`](Self::needs_body)
/// on every response head; only when it answers `true` does the layer read the start of
/// the body (up to its [`body_cap`](super::ThrottleClassifierLayer::body_cap)) before
/// calling [`classify`](Self::classify).
///
/// Implemented by:
///
/// - [`Preset`]: the built-in classifiers (see the [module docs](super));
/// - `()`: never classifies anything (a no-op, e.g. to switch the layer off);
/// - closures `Fn(StatusCode, &HeaderMap, Option<&[u8]>) -> Option<Throttle>`: they
///   classify from the head only, so they never need the body and always get `None`
///   for it. To read bodies, implement this trait on a type of your own (it may
///   delegate to a [`Preset`] for everything else).
///
/// ```
/// use http::StatusCode;
/// use tollgate::classify::{Throttle, ThrottleClassifierLayer, ThrottleKind, ThrottleScope, ThrottleSource};
///
/// // A 509 from an old proxy means "over quota" for this service.
/// let layer = ThrottleClassifierLayer::new(|status: StatusCode, _: &http::HeaderMap, _: Option<&[u8]>| {
///     (status.as_u16() == 509)
///         .then(|| Throttle::new(ThrottleKind::Quota, ThrottleScope::Key, ThrottleSource::Status))
/// });
/// # let _ = layer;
/// ```
pub trait ClassifyThrottle {
    /// Whether the body of a response with this head must be read to classify it.
    fn needs_body(&self, status: StatusCode, headers: &HeaderMap) -> bool;

    /// Classifies a response. `body` is the start of the body (at most the layer's cap)
    /// when [`needs_body`](Self::needs_body) said so and the body could be read, else
    /// `None`. `now` is the wall clock, for HTTP dates (`Retry-After`, `Date`).
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: SystemTime,
    ) -> Option<Throttle>;
}

impl ClassifyThrottle for Preset {
    fn needs_body(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        Preset::needs_body(*self, status, headers)
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: SystemTime,
    ) -> Option<Throttle> {
        Preset::classify(*self, status, headers, body, now)
    }
}

/// Never classifies: every response passes through without a [`Throttle`].
impl ClassifyThrottle for () {
    fn needs_body(&self, _status: StatusCode, _headers: &HeaderMap) -> bool {
        false
    }

    fn classify(
        &self,
        _status: StatusCode,
        _headers: &HeaderMap,
        _body: Option<&[u8]>,
        _now: SystemTime,
    ) -> Option<Throttle> {
        None
    }
}

/// A closure classifies from the response head: it never needs the body (it gets
/// `None`), and does not see the clock.
impl<F> ClassifyThrottle for F
where
    F: Fn(StatusCode, &HeaderMap, Option<&[u8]>) -> Option<Throttle>,
{
    fn needs_body(&self, _status: StatusCode, _headers: &HeaderMap) -> bool {
        false
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        _now: SystemTime,
    ) -> Option<Throttle> {
        self(status, headers, body)
    }
}
