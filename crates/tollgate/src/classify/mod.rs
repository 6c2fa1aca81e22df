//! Throttle classification: read a response and say whether, how and for whom it was
//! throttled.
//!
//! Two halves: pure, synchronous functions from `(status, headers, body, now)` to an
//! optional [`Throttle`] signal, and the [`ThrottleClassifier`] layer that applies one
//! to every response and attaches the signal to it. Each [`Preset`] knows one family of
//! APIs; [`Preset::needs_body`] tells a caller whether a response is worth reading the
//! body of, so that bodies are read only for candidate responses.
//!
//! # The layer
//!
//! [`ThrottleClassifierLayer`] classifies every response of the inner service with a
//! [`ClassifyThrottle`] (a [`Preset`], `()`, or a closure) and inserts the [`Throttle`],
//! if any, into the response's extensions, where the layers above read it:
//!
//! ```
//! use std::time::Duration;
//! use tollgate::classify::{Throttle, ThrottleClassifierLayer, ThrottleKind};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let client = ServiceBuilder::new()
//!     .layer(ThrottleClassifierLayer::telegram())
//!     .service(service_fn(|_req: http::Request<String>| async {
//!         let body = r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;
//!         let response = http::Response::builder()
//!             .status(429)
//!             .header("content-type", "application/json")
//!             .body(String::from(body))?;
//!         Ok::<_, tower::BoxError>(response)
//!     }));
//!
//! let response = client.oneshot(http::Request::new(String::new())).await?;
//! let throttle = response.extensions().get::<Throttle>().expect("a 429 is throttled");
//! assert_eq!(throttle.kind(), ThrottleKind::Rate);
//! assert_eq!(throttle.retry_after(), Some(Duration::from_secs(4310)));
//! # Ok(())
//! # }
//! ```
//!
//! ## Bodies
//!
//! When the classifier's [`needs_body`](ClassifyThrottle::needs_body) says no (every
//! `2xx`, and any response for [`Preset::Standard`] or a closure), the response is
//! classified from its head and returned at once; its body is not touched. When it says
//! yes, the response future reads frames until the body ends or
//! [`body_cap`](ThrottleClassifierLayer::body_cap) data bytes ([`DEFAULT_BODY_CAP`],
//! 16 KiB) are held, classifies with the first `body_cap` bytes, and returns a
//! [`ClassifiedBody`] that replays the frames read (trailers included) and then the
//! rest of the inner body: the caller receives exactly the bytes, frames and trailers
//! the server sent. If the body fails while it is read, the response is classified from
//! its head, and the caller gets the bytes read followed by that same error.
//!
//! Reading the body delays a candidate response until its body has ended or
//! `body_cap` bytes have arrived (a server that stalls mid-body stalls the response:
//! keep a timeout around the stack). Only candidate responses pay for it, with one
//! allocation to move the pinned body into the returned one.
//!
//! ## Time, errors, `poll_ready`, sharing
//!
//! `now` is [`SystemTime::now`], used only to read HTTP dates; tests fix it with
//! [`clock`](ThrottleClassifierLayer::clock). The layer never fails by itself: its
//! error is the inner service's. `poll_ready` is the inner service's. The layer holds
//! no state: clones share nothing but the classifier, which is cloned per request.
//!
//! # Order
//!
//! In a client stack it sits right above the client, under every limiting layer:
//! `RetryAfterBackoff` → `QuotaWindow` → `ConcurrencyPerKey` → `ThrottleClassifier` →
//! the client, so that every attempt, retries included, is classified.
//!
//! # Presets
//!
//! | preset | recognises | scope |
//! |---|---|---|
//! | [`standard`] | `429` and `503`; `Retry-After` (delay-seconds and the three HTTP-date forms, measured against the response `Date`); draft-10 `RateLimit` / `RateLimit-Policy`; the -03 `RateLimit-Limit/Remaining/Reset` and -07 `RateLimit: limit=.., remaining=.., reset=..` forms; `X-RateLimit-Limit/Remaining/Reset/Reset-After` (reset as epoch or delay) | [`Unknown`](ThrottleScope::Unknown) |
//! | [`graph`] | the standard headers; `429` with a Graph error body (`TooManyRequests` as rate, `ApplicationThrottled` "MailboxConcurrency" as concurrency), or with no `Retry-After` and no body; `503` and `504` as overload | `429`: [`Key`](ThrottleScope::Key) (Graph limits are per app and mailbox); `503`/`504`: unknown |
//! | [`batch::graph_batch`] (opt-in, for `$batch` requests) | a `200` whose sub-responses were throttled: one signal, the largest sub-hint, concurrency if any sub-request hit MailboxConcurrency; other statuses as [`graph`] | as [`graph`]: `429` sub-responses are the mailbox's |
//! | [`telegram`] | `429` with `parameters.retry_after` in the body (the larger of it and `Retry-After` wins); the rest as standard | `429`: key (limits are per chat and per bot; the body does not say which, so the key the request went under) |
//! | [`google`] | `429` / `RESOURCE_EXHAUSTED` as quota with `google.rpc.RetryInfo.retryDelay`; `503` / `UNAVAILABLE` as overload; `403` with reason `rateLimitExceeded` / `userRateLimitExceeded` as rate | unknown (the envelope does not say whether a per-space or per-project quota was hit) |
//! | [`github`] | `403`/`429` with `x-ratelimit-remaining: 0` (primary limit: quota, wait until the epoch reset); `403`/`429` with `Retry-After` (secondary limit); `429`, or `403` whose body mentions a rate limit, with neither: one minute, as GitHub documents | key (the token) |
//!
//! Every preset, on any other status, returns a [`Quota`](ThrottleKind::Quota) signal
//! without [`retry_after`](Throttle::retry_after) when the headers say nothing is
//! remaining and when the window resets (`RateLimit: "d";r=0;t=30`,
//! `X-RateLimit-Remaining: 0` with a reset): the request succeeded, but the next one
//! would not before [`reset_after`](Throttle::reset_after). Any other response gives
//! `None`.
//!
//! On a refused response (`429`, `503`, ...) the wait is, in order: `Retry-After`
//! (draft-10 lets it win over `t`); else the body's own hint (Telegram, Google), or the
//! larger of the two when both exist; else the window's reset when the headers say
//! nothing is remaining; else none, and the caller's own backoff applies.
//!
//! # Caps and garbage
//!
//! Parsers ([`parse`]) never panic, whatever the bytes. Values they do not understand
//! are ignored (the response is classified from what remains), negative numbers are
//! dropped, dates in the past mean "now" (zero), and every duration is capped at
//! [`MAX_HINT`] (24 hours), so `Retry-After: 1000000000000` or a reset in year 9999
//! gives 24 hours. Bodies are parsed as JSON only when they are valid JSON; the
//! caller caps how much of a body it reads.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::{HeaderMap, StatusCode};
//! use tollgate::classify::{self, Preset, ThrottleKind, ThrottleScope};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("content-type", "application/json".parse().unwrap());
//! headers.insert("retry-after", "4310".parse().unwrap());
//! let status = StatusCode::TOO_MANY_REQUESTS;
//!
//! // Only candidate responses are worth reading the body of.
//! assert!(Preset::Telegram.needs_body(status, &headers));
//! let body = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;
//!
//! let throttle = classify::telegram(status, &headers, Some(body), SystemTime::now()).unwrap();
//! assert_eq!(throttle.kind(), ThrottleKind::Rate);
//! assert_eq!(throttle.scope(), ThrottleScope::Key);
//! assert_eq!(throttle.retry_after(), Some(Duration::from_secs(4310)));
//! ```

pub mod batch;
mod body;
mod classifier;
pub mod future;
mod layer;
pub mod parse;
mod service;
mod signal;

use std::time::{Duration, SystemTime};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, DATE, RETRY_AFTER};
use http::{HeaderMap, StatusCode};

pub use batch::{DEFAULT_BATCH_BODY_CAP, ThrottledSubRequest};
pub use body::ClassifiedBody;
pub use classifier::ClassifyThrottle;
pub use layer::{DEFAULT_BODY_CAP, ThrottleClassifierLayer};
pub use parse::MAX_HINT;
pub use service::ThrottleClassifier;
pub use signal::{Throttle, ThrottleKind, ThrottleScope, ThrottleSource};

use parse::RateLimitHint;

/// GitHub's documented wait for a secondary rate limit that names no time.
const GITHUB_SECONDARY_WAIT: Duration = Duration::from_secs(60);

/// A named classifier for one family of APIs (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Preset {
    /// [`standard`]: status codes and standard or de-facto headers only.
    Standard,
    /// [`graph`]: Microsoft Graph / Outlook.
    Graph,
    /// [`batch::graph_batch`]: Microsoft Graph `$batch` responses, whose `200` body is
    /// read for throttled sub-requests. Opt-in: put it only on the stack that sends
    /// `$batch` requests (see [`batch`]).
    GraphBatch,
    /// [`telegram`]: the Telegram Bot API.
    Telegram,
    /// [`google`]: Google APIs (Chat and the others using the Google error envelope).
    Google,
    /// [`github`]: the GitHub REST API.
    GitHub,
}

impl Preset {
    /// Classifies a response with this preset; `body` is the start of the response
    /// body when [`needs_body`](Self::needs_body) said to read it.
    pub fn classify(
        self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: SystemTime,
    ) -> Option<Throttle> {
        let classify = match self {
            Self::Standard => standard,
            Self::Graph => graph,
            Self::GraphBatch => batch::graph_batch,
            Self::Telegram => telegram,
            Self::Google => google,
            Self::GitHub => github,
        };
        classify(status, headers, body, now)
    }

    /// Whether this preset would read the body of a response with this head.
    ///
    /// Never for [`Standard`](Self::Standard), which reads headers only, nor for a
    /// body announced as empty (`Content-Length: 0`) or as something other than JSON
    /// (a `Content-Type` that is neither `application/json` nor `*/*+json`; a missing
    /// one counts as JSON). Otherwise only for the statuses whose body can change the
    /// answer:
    ///
    /// - Graph: `429` (concurrency or rate is told only by the body);
    /// - GraphBatch: `429`, and `200` (its sub-responses; see [`batch`]);
    /// - Telegram: `429` (`parameters.retry_after` is the API's own field; a proxy may
    ///   drop or rewrite `Retry-After`);
    /// - Google: `429`, `503` and `403` (`RetryInfo` and the legacy rate-limit reasons
    ///   live only in the body);
    /// - GitHub: `403` without `Retry-After` and without `x-ratelimit-remaining: 0`
    ///   (only the message tells a secondary rate limit from a permission error).
    pub fn needs_body(self, status: StatusCode, headers: &HeaderMap) -> bool {
        if !json_or_unknown(headers) || announced_empty(headers) {
            return false;
        }
        match self {
            Self::Standard => false,
            Self::Graph | Self::Telegram => status == StatusCode::TOO_MANY_REQUESTS,
            Self::GraphBatch => matches!(status, StatusCode::OK | StatusCode::TOO_MANY_REQUESTS),
            Self::Google => matches!(status.as_u16(), 403 | 429 | 503),
            Self::GitHub => {
                status == StatusCode::FORBIDDEN
                    && !headers.contains_key(RETRY_AFTER)
                    && headers
                        .get("x-ratelimit-remaining")
                        .is_none_or(|v| v.as_bytes().trim_ascii() != b"0")
            }
        }
    }
}

/// Classifies by status code and the standard and de-facto headers; ignores the body.
///
/// `429` is a [`Rate`](ThrottleKind::Rate) signal, or [`Quota`](ThrottleKind::Quota)
/// when the headers say nothing is remaining; `503` is
/// [`Overload`](ThrottleKind::Overload). The scope is
/// [`Unknown`](ThrottleScope::Unknown): these headers do not say who was limited.
pub fn standard(
    status: StatusCode,
    headers: &HeaderMap,
    _body: Option<&[u8]>,
    now: SystemTime,
) -> Option<Throttle> {
    let evidence = Evidence::read(headers, now);
    match status.as_u16() {
        429 => Some(evidence.refused(evidence.rate_kind(), ThrottleScope::Unknown)),
        503 => Some(evidence.refused(ThrottleKind::Overload, ThrottleScope::Unknown)),
        _ => evidence.exhausted_notice(ThrottleScope::Unknown),
    }
}

/// Classifies Microsoft Graph / Outlook responses.
///
/// A `429` is a signal for the mailbox ([`Key`](ThrottleScope::Key)): a
/// [`Concurrency`](ThrottleKind::Concurrency) one when the body says
/// `ApplicationThrottled` / "MailboxConcurrency", else [`Rate`](ThrottleKind::Rate)
/// (also without `Retry-After` or body: Graph documents backoff for that case). `503`
/// and `504` are [`Overload`](ThrottleKind::Overload) of unknown scope, with the
/// `Retry-After` wait when there is one.
pub fn graph(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    now: SystemTime,
) -> Option<Throttle> {
    let evidence = Evidence::read(headers, now);
    match status.as_u16() {
        429 => {
            let from_body = body.and_then(parse::graph_body);
            let kind = from_body
                .as_ref()
                .map_or(ThrottleKind::Rate, Throttle::kind);
            let throttle = evidence.refused(kind, ThrottleScope::Key);
            Some(merge_body(throttle, from_body.as_ref()))
        }
        503 | 504 => Some(evidence.refused(ThrottleKind::Overload, ThrottleScope::Unknown)),
        _ => evidence.exhausted_notice(ThrottleScope::Key),
    }
}

/// Classifies Telegram Bot API responses.
///
/// A `429` is a [`Rate`](ThrottleKind::Rate) signal for the key the request was sent
/// under (a chat, or the bot token, as the caller keyed it): Telegram limits per chat
/// and per bot, and its description does not say which limit was hit. The wait is the
/// larger of the body's `parameters.retry_after` and `Retry-After` (they normally
/// agree; waits of thousands of seconds are real, up to [`MAX_HINT`]). Other statuses
/// are classified as by [`standard`].
pub fn telegram(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    now: SystemTime,
) -> Option<Throttle> {
    if status != StatusCode::TOO_MANY_REQUESTS {
        return standard(status, headers, body, now);
    }
    let evidence = Evidence::read(headers, now);
    let throttle = evidence.refused(ThrottleKind::Rate, ThrottleScope::Key);
    Some(merge_body(
        throttle,
        body.and_then(parse::telegram_body).as_ref(),
    ))
}

/// Classifies Google API responses (the `{"error":{"code","status","details"}}`
/// envelope).
///
/// A `429` (`RESOURCE_EXHAUSTED`) is a [`Quota`](ThrottleKind::Quota) signal, a `503`
/// an [`Overload`](ThrottleKind::Overload) one, a `403` whose body gives the legacy
/// reason `rateLimitExceeded` / `userRateLimitExceeded` a [`Rate`](ThrottleKind::Rate)
/// one. The wait is the larger of `RetryInfo.retryDelay` and `Retry-After`. The scope
/// is [`Unknown`](ThrottleScope::Unknown): one request counts against a per-space and
/// a per-project quota at once, and the envelope does not say which ran out.
pub fn google(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    now: SystemTime,
) -> Option<Throttle> {
    let evidence = Evidence::read(headers, now);
    let from_body = body.and_then(parse::google_body);
    let kind = match (status.as_u16(), from_body.as_ref().map(Throttle::kind)) {
        (429, _) => ThrottleKind::Quota,
        (503, _) => ThrottleKind::Overload,
        (403, Some(kind @ (ThrottleKind::Rate | ThrottleKind::Quota))) => kind,
        _ => return evidence.exhausted_notice(ThrottleScope::Unknown),
    };
    let throttle = evidence.refused(kind, ThrottleScope::Unknown);
    Some(merge_body(throttle, from_body.as_ref()))
}

/// Classifies GitHub REST API responses.
///
/// A `403` or `429` is a signal for the key (the token) when:
///
/// - `x-ratelimit-remaining` is `0`: the primary limit, a
///   [`Quota`](ThrottleKind::Quota) signal whose wait is the epoch in
///   `x-ratelimit-reset` (measured against the response `Date`), unless `Retry-After`
///   names one;
/// - `Retry-After` is present: a secondary limit, a [`Rate`](ThrottleKind::Rate) signal
///   with that wait;
/// - neither, and the status is `429` or the body's message mentions a rate limit: a
///   secondary limit with GitHub's documented wait of one minute
///   ([`GitHubSecondaryLimit`](ThrottleSource::GitHubSecondaryLimit)).
///
/// Any other `403` is a permission error, not a throttle. Other statuses are classified
/// as by [`standard`], with the key as scope.
pub fn github(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    now: SystemTime,
) -> Option<Throttle> {
    let evidence = Evidence::read(headers, now);
    match status.as_u16() {
        403 | 429 if evidence.exhausted() || evidence.retry_after.is_some() => {
            Some(evidence.refused(evidence.rate_kind(), ThrottleScope::Key))
        }
        403 | 429 => {
            if status == StatusCode::FORBIDDEN && !body.is_some_and(parse::github_rate_limited_body)
            {
                return None;
            }
            let throttle = evidence
                .refused(ThrottleKind::Rate, ThrottleScope::Key)
                .with_retry_after(GITHUB_SECONDARY_WAIT)
                .with_source(ThrottleSource::GitHubSecondaryLimit);
            Some(throttle)
        }
        503 => Some(evidence.refused(ThrottleKind::Overload, ThrottleScope::Unknown)),
        _ => evidence.exhausted_notice(ThrottleScope::Key),
    }
}

/// What the headers of one response say.
struct Evidence {
    /// The `Retry-After` wait.
    retry_after: Option<Duration>,
    /// The first rate-limit header family present, in order draft-10, older drafts,
    /// `X-RateLimit-*`.
    limit: Option<(RateLimitHint, ThrottleSource)>,
}

impl Evidence {
    fn read(headers: &HeaderMap, now: SystemTime) -> Self {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|value| parse::retry_after(value, headers.get(DATE), now));
        let limit = parse::rate_limit(headers)
            .map(|hint| (hint, ThrottleSource::RateLimit))
            .or_else(|| {
                parse::rate_limit_legacy(headers, now)
                    .map(|hint| (hint, ThrottleSource::RateLimitLegacy))
            })
            .or_else(|| {
                parse::x_rate_limit(headers, now).map(|hint| (hint, ThrottleSource::XRateLimit))
            });
        Self { retry_after, limit }
    }

    /// Whether the headers say nothing is remaining.
    fn exhausted(&self) -> bool {
        self.limit
            .is_some_and(|(hint, _)| hint.remaining == Some(0))
    }

    /// [`ThrottleKind::Quota`] when nothing is remaining, else [`ThrottleKind::Rate`].
    fn rate_kind(&self) -> ThrottleKind {
        if self.exhausted() {
            ThrottleKind::Quota
        } else {
            ThrottleKind::Rate
        }
    }

    /// A signal for a refused response: the `Retry-After` wait, else the reset when
    /// nothing is remaining.
    fn refused(&self, kind: ThrottleKind, scope: ThrottleScope) -> Throttle {
        let mut throttle = self.with_limit(Throttle::new(kind, scope, ThrottleSource::Status));
        if let Some((hint, source)) = self.limit {
            if let (Some(0), Some(reset)) = (hint.remaining, hint.reset_after) {
                throttle = throttle.with_retry_after(reset).with_source(source);
            }
        }
        if let Some(wait) = self.retry_after {
            throttle = throttle
                .with_retry_after(wait)
                .with_source(ThrottleSource::RetryAfter);
        }
        throttle
    }

    /// A signal for a response that was not refused but says nothing is remaining
    /// until a known reset; `None` otherwise.
    fn exhausted_notice(&self, scope: ThrottleScope) -> Option<Throttle> {
        let (hint, source) = self.limit?;
        if hint.remaining != Some(0) || hint.reset_after.is_none() {
            return None;
        }
        Some(self.with_limit(Throttle::new(ThrottleKind::Quota, scope, source)))
    }

    /// Copies remaining and reset into `throttle`, naming their source if it had none.
    fn with_limit(&self, mut throttle: Throttle) -> Throttle {
        let Some((hint, source)) = self.limit else {
            return throttle;
        };
        if throttle.source() == ThrottleSource::Status {
            throttle = throttle.with_source(source);
        }
        if let Some(remaining) = hint.remaining {
            throttle = throttle.with_remaining(remaining);
        }
        if let Some(reset) = hint.reset_after {
            throttle = throttle.with_reset_after(reset);
        }
        throttle
    }
}

/// Folds what a body said into a header-based signal: the body's wait when it is
/// longer (never retry before any hint), and the body as source when nothing more
/// specific than the status code was.
fn merge_body(throttle: Throttle, body: Option<&Throttle>) -> Throttle {
    let Some(body) = body else {
        return throttle;
    };
    match (body.retry_after(), throttle.retry_after()) {
        (Some(wait), header) if header.is_none_or(|header| wait >= header) => {
            throttle.with_retry_after(wait).with_source(body.source())
        }
        _ if matches!(
            throttle.source(),
            ThrottleSource::Status
                | ThrottleSource::RateLimit
                | ThrottleSource::RateLimitLegacy
                | ThrottleSource::XRateLimit
        ) && throttle.retry_after().is_none() =>
        {
            throttle.with_source(body.source())
        }
        _ => throttle,
    }
}

/// Whether the body is JSON by its `Content-Type`, or has none.
fn json_or_unknown(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return true;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .get(essence.len().saturating_sub(5)..)
            .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json"))
}

/// Whether the response announces an empty body.
fn announced_empty(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"0")
}

#[cfg(test)]
mod layer_tests;
#[cfg(test)]
mod tests;
