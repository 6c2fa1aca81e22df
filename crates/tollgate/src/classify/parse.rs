//! Parsers for every throttling header and body the [presets](super) read.
//!
//! Each parser is a pure function that never panics: input it does not understand
//! gives `None` (or is skipped, for one bad member of a list), negative numbers are
//! dropped, and every duration returned is capped at [`MAX_HINT`]. Dates in the past
//! give [`Duration::ZERO`] ("now", as RFC 9110 says); dates absurdly far ahead (year
//! 9999) give `MAX_HINT`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::signal::{Throttle, ThrottleKind, ThrottleScope, ThrottleSource};

// The header names read here, made once: a `&str` name is parsed on every lookup.
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const X_RATELIMIT_RESET_AFTER: HeaderName = HeaderName::from_static("x-ratelimit-reset-after");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub(super) const X_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining");

/// The longest wait any parser returns: 24 hours.
///
/// A server hint above it (`Retry-After: 1000000000000`, a reset epoch in year 9999)
/// is capped to it rather than believed: the point of a long hint is "stop sending on
/// this scope and hand the deadline back", which a day already says. Telegram's longest
/// reported waits (over 60,000 s) stay below it.
pub const MAX_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// A reset value at or above this many seconds is a Unix epoch, below it a delay
/// (10^9 s is September 2001; no window is 31 years long).
const EPOCH_THRESHOLD: u64 = 1_000_000_000;

/// What a rate-limit header family says about the server's window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitHint {
    /// The window's quota (`q` of `RateLimit-Policy`, `RateLimit-Limit`,
    /// `X-RateLimit-Limit`).
    pub limit: Option<u64>,
    /// Requests left in the window (`r`, `remaining`, `*-Remaining`).
    pub remaining: Option<u64>,
    /// Time until more quota is available (`t`, `reset`, `*-Reset`, `*-Reset-After`),
    /// at most [`MAX_HINT`].
    pub reset_after: Option<Duration>,
}

impl RateLimitHint {
    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset_after.is_none()
    }
}

/// Parses a `Retry-After` value: delay-seconds (`120`) or an HTTP-date in any of the
/// three forms RFC 9110 requires (IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, RFC 850
/// `Sunday, 06-Nov-94 08:49:37 GMT`, asctime `Sun Nov  6 08:49:37 1994`).
///
/// A date is measured against the response's `Date` header when it is present and
/// valid (so clock skew between client and server does not matter), else against
/// `now`. Dates in the past give zero. Fractional seconds (`1.5`), which RFC 9110 does
/// not allow but some servers send, are accepted and rounded up to the nanosecond.
/// The result is at most [`MAX_HINT`].
pub fn retry_after(
    value: &HeaderValue,
    date: Option<&HeaderValue>,
    now: SystemTime,
) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        return decimal_seconds(text).map(cap);
    }
    let at = http_date(text)?;
    Some(until(at, response_date(date).unwrap_or(now)))
}

/// Parses an HTTP-date in any of its three forms; `None` for anything else, including
/// years outside 1970..=9999.
///
/// RFC 850's two-digit years are read as 1970..=2069. RFC 9110 §5.6.7 would read
/// `70`..=`76` as 2070..=2076 (no more than 50 years ahead); for a `Retry-After` both
/// readings are absurd and end as zero or [`MAX_HINT`].
pub fn http_date(text: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(text.trim()).ok()
}

/// Parses a proto3 JSON `google.protobuf.Duration` (`"31s"`, `"0.1s"`, `"1.500s"`), as
/// in `google.rpc.RetryInfo.retryDelay`. Negative durations give `None`; the result
/// is at most [`MAX_HINT`].
pub fn proto_duration(text: &str) -> Option<Duration> {
    decimal_seconds(text.trim().strip_suffix('s')?).map(cap)
}

/// Parses the draft-10 `RateLimit` field (a Structured Field List such as
/// `"default";r=50;t=30`), with `RateLimit-Policy` (`"burst";q=100;w=60`) for the limit.
///
/// Several field lines are combined, as RFC 9651 says. The most constraining item
/// wins: the one with the fewest remaining (`r`), and among those the longest `t`.
/// Items without a valid non-negative integer `r` are ignored; a field that is not a
/// valid list is ignored as a whole. When the chosen item has `r=0` and no `t`, its
/// policy's window `w` stands in for the reset: within one window some quota must come
/// back, whatever the server's algorithm.
pub fn rate_limit(headers: &HeaderMap) -> Option<RateLimitHint> {
    let field = combined(headers, &RATELIMIT)?;
    let list = sfv::Parser::new(&field).parse::<sfv::List>().ok()?;
    let mut best: Option<(u64, Option<Duration>, Option<String>)> = None;
    for entry in &list {
        let sfv::ListEntry::Item(item) = entry else {
            continue;
        };
        let Some(remaining) = param_u64(&item.params, "r") else {
            continue;
        };
        let reset = param_u64(&item.params, "t").map(seconds);
        let name = item.bare_item.as_string().map(|s| s.as_str().to_owned());
        let better = match &best {
            None => true,
            Some((r, t, _)) => remaining < *r || (remaining == *r && reset > *t),
        };
        if better {
            best = Some((remaining, reset, name));
        }
    }
    let (remaining, mut reset_after, name) = best?;
    let policy = name.and_then(|name| policy(headers, &name));
    let limit = policy.and_then(|(q, _)| q);
    if remaining == 0 && reset_after.is_none() {
        reset_after = policy.and_then(|(_, w)| w);
    }
    Some(RateLimitHint {
        limit,
        remaining: Some(remaining),
        reset_after,
    })
}

/// The `q` and `w` of the `RateLimit-Policy` item named `name`.
fn policy(headers: &HeaderMap, name: &str) -> Option<(Option<u64>, Option<Duration>)> {
    let field = combined(headers, &RATELIMIT_POLICY)?;
    let list = sfv::Parser::new(&field).parse::<sfv::List>().ok()?;
    list.iter().find_map(|entry| match entry {
        sfv::ListEntry::Item(item)
            if item.bare_item.as_string().map(|s| s.as_str()) == Some(name) =>
        {
            Some((
                param_u64(&item.params, "q"),
                param_u64(&item.params, "w").map(seconds),
            ))
        }
        _ => None,
    })
}

/// Parses the older draft forms: -03 `RateLimit-Limit` / `RateLimit-Remaining` /
/// `RateLimit-Reset` (Envoy, SharePoint), or -07 `RateLimit: limit=100, remaining=50,
/// reset=5` (a Structured Field Dictionary).
///
/// A -03 limit like `100, 100;w=60` gives its leading number; a reset at or above 10^9
/// is taken as a Unix epoch (measured against the `Date` header, else `now`).
pub fn rate_limit_legacy(headers: &HeaderMap, now: SystemTime) -> Option<RateLimitHint> {
    if let Some(hint) = rate_limit_07(headers) {
        return Some(hint);
    }
    let hint = RateLimitHint {
        limit: headers.get(&RATELIMIT_LIMIT).and_then(leading_u64),
        remaining: headers.get(&RATELIMIT_REMAINING).and_then(leading_u64),
        reset_after: headers
            .get(&RATELIMIT_RESET)
            .and_then(|v| reset(v, headers, now)),
    };
    (!hint.is_empty()).then_some(hint)
}

fn rate_limit_07(headers: &HeaderMap) -> Option<RateLimitHint> {
    let field = combined(headers, &RATELIMIT)?;
    let dict = sfv::Parser::new(&field).parse::<sfv::Dictionary>().ok()?;
    let get = |key: &str| match dict.get(key) {
        Some(sfv::ListEntry::Item(item)) => item
            .bare_item
            .as_integer()
            .and_then(|i| u64::try_from(i64::from(i)).ok()),
        _ => None,
    };
    let hint = RateLimitHint {
        limit: get("limit"),
        remaining: get("remaining"),
        reset_after: get("reset").map(seconds),
    };
    (!hint.is_empty()).then_some(hint)
}

/// Parses `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` and
/// `X-RateLimit-Reset-After`.
///
/// `X-RateLimit-Reset-After` (Discord, seconds with decimals) wins over
/// `X-RateLimit-Reset`, which is a Unix epoch in seconds (GitHub, X, Discord with
/// decimals) when at or above 10^9, else a delay (Envoy). An epoch is measured against
/// the response's `Date` header when present, else `now`; one in the past gives zero.
pub fn x_rate_limit(headers: &HeaderMap, now: SystemTime) -> Option<RateLimitHint> {
    let reset_after = headers
        .get(&X_RATELIMIT_RESET_AFTER)
        .and_then(|v| decimal_seconds(v.to_str().ok()?.trim()).map(cap))
        .or_else(|| {
            headers
                .get(&X_RATELIMIT_RESET)
                .and_then(|v| reset(v, headers, now))
        });
    let hint = RateLimitHint {
        limit: headers.get(&X_RATELIMIT_LIMIT).and_then(leading_u64),
        remaining: headers.get(&X_RATELIMIT_REMAINING).and_then(leading_u64),
        reset_after,
    };
    (!hint.is_empty()).then_some(hint)
}

/// Reads a Microsoft Graph error body.
///
/// `ApplicationThrottled` whose code or message mentions concurrency ("Application is
/// over its MailboxConcurrency limit.") is a [`Concurrency`](ThrottleKind::Concurrency)
/// signal; `TooManyRequests`, other `ApplicationThrottled`, `activityLimitReached` and
/// `throttledRequest` are [`Rate`](ThrottleKind::Rate). Graph limits are per app and
/// mailbox, so the scope is [`Key`](ThrottleScope::Key). The body names no time.
pub fn graph_body(body: &[u8]) -> Option<Throttle> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let error = json.get("error")?;
    let code = error.get("code")?.as_str()?;
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    let concurrency =
        contains_ignore_case(code, "concurrency") || contains_ignore_case(message, "concurrency");
    let kind = if code.eq_ignore_ascii_case("MailboxConcurrency")
        || (code.eq_ignore_ascii_case("ApplicationThrottled") && concurrency)
    {
        ThrottleKind::Concurrency
    } else if [
        "TooManyRequests",
        "ApplicationThrottled",
        "activityLimitReached",
        "throttledRequest",
    ]
    .iter()
    .any(|known| code.eq_ignore_ascii_case(known))
    {
        ThrottleKind::Rate
    } else {
        return None;
    };
    Some(Throttle::new(
        kind,
        ThrottleScope::Key,
        ThrottleSource::GraphBody,
    ))
}

/// Reads a Telegram Bot API error body
/// (`{"ok":false,"error_code":429,"description":"Too Many Requests: retry after N","parameters":{"retry_after":N}}`).
///
/// A signal when `ok` is not `true` and `error_code` is 429 or `parameters.retry_after`
/// is present; the wait is `parameters.retry_after`, else the number after "retry
/// after" in the description. Telegram's limits are per chat and per bot, and the
/// description does not say which was hit: the scope is
/// [`Key`](ThrottleScope::Key), the key the request was sent under.
pub fn telegram_body(body: &[u8]) -> Option<Throttle> {
    let json: Value = serde_json::from_slice(body).ok()?;
    if json.get("ok").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let parameter = json
        .get("parameters")
        .and_then(|p| p.get("retry_after"))
        .and_then(json_seconds);
    let flood = json.get("error_code").and_then(Value::as_u64) == Some(429);
    if !flood && parameter.is_none() {
        return None;
    }
    let retry = parameter.or_else(|| {
        let description = json.get("description")?.as_str()?;
        let lower = description.to_ascii_lowercase();
        let (_, after) = lower.split_once("retry after")?;
        let digits: String = after
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        decimal_seconds(&digits).map(cap)
    });
    let throttle = Throttle::new(
        ThrottleKind::Rate,
        ThrottleScope::Key,
        ThrottleSource::TelegramBody,
    );
    Some(match retry {
        Some(retry) => throttle.with_retry_after(retry),
        None => throttle,
    })
}

/// Reads a Google API error envelope (`{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[...]}}`).
///
/// `RESOURCE_EXHAUSTED` (or code 429) is a [`Quota`](ThrottleKind::Quota) signal,
/// `UNAVAILABLE` (or 503) an [`Overload`](ThrottleKind::Overload) one, and the older
/// APIs' `403` with reason `rateLimitExceeded` / `userRateLimitExceeded` a
/// [`Rate`](ThrottleKind::Rate) one. The wait is `google.rpc.RetryInfo.retryDelay`, as
/// a proto duration string (`"31s"`) or `{"seconds":..,"nanos":..}`. The envelope does
/// not say whether a per-space or a per-project quota was hit: the scope is
/// [`Unknown`](ThrottleScope::Unknown).
pub fn google_body(body: &[u8]) -> Option<Throttle> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let error = json.get("error")?;
    let status = error.get("status").and_then(Value::as_str).unwrap_or("");
    let code = error.get("code").and_then(Value::as_u64);
    let rate_reason = error
        .get("errors")
        .and_then(Value::as_array)
        .is_some_and(|errors| {
            errors.iter().any(|e| {
                matches!(
                    e.get("reason").and_then(Value::as_str),
                    Some("rateLimitExceeded" | "userRateLimitExceeded")
                )
            })
        });
    let kind = if status == "RESOURCE_EXHAUSTED" || code == Some(429) {
        ThrottleKind::Quota
    } else if status == "UNAVAILABLE" || code == Some(503) {
        ThrottleKind::Overload
    } else if rate_reason {
        ThrottleKind::Rate
    } else {
        return None;
    };
    let delay = error
        .get("details")
        .and_then(Value::as_array)
        .and_then(|details| {
            details.iter().find_map(|detail| {
                let kind = detail.get("@type")?.as_str()?;
                if !kind.ends_with("google.rpc.RetryInfo") {
                    return None;
                }
                match detail.get("retryDelay")? {
                    Value::String(text) => proto_duration(text),
                    Value::Object(fields) => {
                        let secs = fields.get("seconds").map_or(Some(0), json_u64)?;
                        let nanos = fields.get("nanos").map_or(Some(0), json_u64)?;
                        let nanos = u32::try_from(nanos).ok().filter(|n| *n < 1_000_000_000)?;
                        Some(cap(Duration::new(secs, nanos)))
                    }
                    _ => None,
                }
            })
        });
    let throttle = Throttle::new(kind, ThrottleScope::Unknown, ThrottleSource::GoogleBody);
    Some(match delay {
        Some(delay) => throttle.with_retry_after(delay),
        None => throttle,
    })
}

/// Whether a GitHub error body says a secondary rate limit was hit
/// (`{"message":"You have exceeded a secondary rate limit..."}`), or any rate limit
/// ("API rate limit exceeded").
pub fn github_rate_limited_body(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(|json| json.get("message"))
        .and_then(Value::as_str)
        .is_some_and(|message| contains_ignore_case(message, "rate limit"))
}

/// The reset of a -03 or `X-` header: an epoch at or above 10^9, else a delay.
fn reset(value: &HeaderValue, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = decimal_seconds(value.to_str().ok()?.trim())?;
    if value.as_secs() < EPOCH_THRESHOLD {
        return Some(cap(value));
    }
    let base = response_date(headers.get(http::header::DATE)).unwrap_or(now);
    Some(match UNIX_EPOCH.checked_add(value) {
        Some(at) => until(at, base),
        None => MAX_HINT,
    })
}

/// The response's `Date`, if valid.
fn response_date(date: Option<&HeaderValue>) -> Option<SystemTime> {
    http_date(date?.to_str().ok()?)
}

/// Time from `base` until `at`: zero when `at` is past, at most [`MAX_HINT`].
fn until(at: SystemTime, base: SystemTime) -> Duration {
    cap(at.duration_since(base).unwrap_or(Duration::ZERO))
}

fn cap(duration: Duration) -> Duration {
    duration.min(MAX_HINT)
}

fn seconds(secs: u64) -> Duration {
    cap(Duration::from_secs(secs))
}

/// All lines of a header joined with `", "`, as RFC 9110 §5.3 allows for list fields.
fn combined(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut field = Vec::new();
    for value in headers.get_all(name) {
        if !field.is_empty() {
            field.extend_from_slice(b", ");
        }
        field.extend_from_slice(value.as_bytes());
    }
    (!field.is_empty()).then_some(field)
}

/// A non-negative integer parameter of a Structured Field item.
fn param_u64(params: &sfv::Parameters, key: &str) -> Option<u64> {
    let integer = params.get(key)?.as_integer()?;
    u64::try_from(i64::from(integer)).ok()
}

/// The leading non-negative integer of a header (`100` in `100, 100;w=60`).
fn leading_u64(value: &HeaderValue) -> Option<u64> {
    let text = value.to_str().ok()?;
    let first = text.split([',', ';']).next()?.trim();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(first.bytes().fold(0_u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// A JSON number of seconds (integer or non-negative float), at most [`MAX_HINT`].
fn json_seconds(value: &Value) -> Option<Duration> {
    if let Some(secs) = value.as_u64() {
        return Some(seconds(secs));
    }
    let secs = value.as_f64()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).map_or(MAX_HINT, cap))
}

/// A JSON non-negative integer, also as a string (proto3 JSON writes int64 as one).
fn json_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

/// Parses non-negative decimal seconds, `DIGITS[.DIGITS]`, saturating instead of
/// overflowing and rounding sub-nanosecond digits up. Not capped.
fn decimal_seconds(text: &str) -> Option<Duration> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !fraction.is_none_or(digits) {
        return None;
    }
    let mut secs = whole.bytes().fold(0_u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    });
    let mut nanos = 0_u32;
    let mut scale = 100_000_000_u32;
    let mut round_up = false;
    for b in fraction.unwrap_or("").bytes() {
        let digit = u32::from(b - b'0');
        if scale == 0 {
            round_up |= digit != 0;
        } else {
            nanos += digit * scale;
            scale /= 10;
        }
    }
    if round_up {
        nanos += 1;
        if nanos == 1_000_000_000 {
            nanos = 0;
            secs = secs.saturating_add(1);
        }
    }
    Some(Duration::new(secs, nanos))
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    needle.is_empty()
        || haystack
            .as_bytes()
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sun, 06 Nov 1994 08:49:37 GMT.
    fn nov_1994() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    fn value(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, v) in pairs {
            map.append(*name, value(v));
        }
        map
    }

    #[test]
    fn retry_after_reads_delay_seconds() {
        let now = nov_1994();
        assert_eq!(
            retry_after(&value("120"), None, now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(retry_after(&value("0"), None, now), Some(Duration::ZERO));
        assert_eq!(
            retry_after(&value(" 7 "), None, now),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn retry_after_reads_all_three_http_date_forms() {
        let now = nov_1994() - Duration::from_secs(30);
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                retry_after(&value(form), None, now),
                Some(Duration::from_secs(30)),
                "{form}"
            );
        }
    }

    #[test]
    fn retry_after_dates_are_measured_against_the_response_date() {
        // The client's clock is an hour fast: without the `Date` header the date would
        // look past.
        let now = nov_1994() + Duration::from_secs(3600);
        let date = value("Sun, 06 Nov 1994 08:49:07 GMT");
        assert_eq!(
            retry_after(&value("Sun, 06 Nov 1994 08:49:37 GMT"), Some(&date), now),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn retry_after_ignores_a_garbage_date_header() {
        let now = nov_1994() - Duration::from_secs(5);
        let date = value("yesterday");
        assert_eq!(
            retry_after(&value("Sun, 06 Nov 1994 08:49:37 GMT"), Some(&date), now),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn retry_after_dates_in_the_past_mean_now() {
        let now = nov_1994();
        assert_eq!(
            retry_after(&value("Thu, 01 Jan 1970 00:00:00 GMT"), None, now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(
                &value("Fri, 31 Dec 1999 23:59:59 GMT"),
                None,
                now + Duration::from_secs(10u64.pow(9))
            ),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_caps_absurd_values() {
        let now = nov_1994();
        assert_eq!(
            retry_after(&value("1000000000000"), None, now),
            Some(MAX_HINT)
        );
        assert_eq!(
            retry_after(&value("99999999999999999999999999999"), None, now),
            Some(MAX_HINT)
        );
        assert_eq!(
            retry_after(&value("Fri, 31 Dec 9999 23:59:59 GMT"), None, now),
            Some(MAX_HINT)
        );
    }

    #[test]
    fn retry_after_ignores_garbage_and_negative_values() {
        let now = nov_1994();
        for garbage in [
            "",
            "-5",
            "soon",
            "5s",
            "1e3",
            "NaN",
            "+3",
            "1.",
            ".5",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(retry_after(&value(garbage), None, now), None, "{garbage:?}");
        }
        let binary = HeaderValue::from_bytes(b"\xff\xfe").unwrap();
        assert_eq!(retry_after(&binary, None, now), None);
    }

    #[test]
    fn retry_after_rounds_fractional_seconds_up() {
        let now = nov_1994();
        assert_eq!(
            retry_after(&value("1.5"), None, now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&value("0.0000000001"), None, now),
            Some(Duration::from_nanos(1))
        );
    }

    #[test]
    fn proto_durations_parse_like_retry_info_delays() {
        assert_eq!(proto_duration("31s"), Some(Duration::from_secs(31)));
        assert_eq!(proto_duration("0.1s"), Some(Duration::from_millis(100)));
        assert_eq!(proto_duration("1.500s"), Some(Duration::from_millis(1500)));
        assert_eq!(
            proto_duration("0.000000001s"),
            Some(Duration::from_nanos(1))
        );
        assert_eq!(proto_duration("100000000000s"), Some(MAX_HINT));
        for garbage in ["31", "-1s", "s", "", "1.s", "abc", "1.5ms"] {
            assert_eq!(proto_duration(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn draft_10_rate_limit_reads_remaining_and_reset() {
        let map = headers(&[("ratelimit", "\"default\";r=50;t=30")]);
        assert_eq!(
            rate_limit(&map),
            Some(RateLimitHint {
                limit: None,
                remaining: Some(50),
                reset_after: Some(Duration::from_secs(30)),
            })
        );
    }

    #[test]
    fn draft_10_rate_limit_chooses_the_most_constraining_item() {
        let map = headers(&[
            (
                "ratelimit-policy",
                "\"burst\";q=100;w=60,\"daily\";q=1000;w=86400",
            ),
            ("ratelimit", "\"burst\";r=50;t=30"),
            ("ratelimit", "\"daily\";r=0;t=3600"),
        ]);
        assert_eq!(
            rate_limit(&map),
            Some(RateLimitHint {
                limit: Some(1000),
                remaining: Some(0),
                reset_after: Some(Duration::from_secs(3600)),
            })
        );
    }

    #[test]
    fn draft_10_rate_limit_falls_back_to_the_policy_window_when_exhausted_without_t() {
        let map = headers(&[
            ("ratelimit-policy", "\"burst\";q=100;w=60"),
            ("ratelimit", "\"burst\";r=0"),
        ]);
        let hint = rate_limit(&map).unwrap();
        assert_eq!(hint.limit, Some(100));
        assert_eq!(hint.reset_after, Some(Duration::from_secs(60)));
    }

    #[test]
    fn draft_10_rate_limit_skips_bad_items_and_ignores_malformed_fields() {
        let map = headers(&[(
            "ratelimit",
            "\"a\";r=-1;t=5, \"b\";r=7, \"c\";t=1, (1 2);r=0",
        )]);
        assert_eq!(rate_limit(&map).unwrap().remaining, Some(7));
        assert_eq!(rate_limit(&headers(&[("ratelimit", "\"a\";r=")])), None);
        assert_eq!(
            rate_limit(&headers(&[(
                "ratelimit",
                "limit=100, remaining=50, reset=5"
            )])),
            None
        );
        assert_eq!(rate_limit(&HeaderMap::new()), None);
    }

    #[test]
    fn draft_10_rate_limit_caps_an_absurd_t() {
        let map = headers(&[("ratelimit", "\"d\";r=0;t=999999999999999")]);
        assert_eq!(rate_limit(&map).unwrap().reset_after, Some(MAX_HINT));
    }

    #[test]
    fn draft_07_rate_limit_dictionary_is_read() {
        let map = headers(&[("ratelimit", "limit=100, remaining=50, reset=5")]);
        assert_eq!(
            rate_limit_legacy(&map, nov_1994()),
            Some(RateLimitHint {
                limit: Some(100),
                remaining: Some(50),
                reset_after: Some(Duration::from_secs(5)),
            })
        );
    }

    #[test]
    fn draft_03_rate_limit_headers_are_read() {
        let map = headers(&[
            ("ratelimit-limit", "100, 100;w=60"),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "42"),
        ]);
        assert_eq!(
            rate_limit_legacy(&map, nov_1994()),
            Some(RateLimitHint {
                limit: Some(100),
                remaining: Some(0),
                reset_after: Some(Duration::from_secs(42)),
            })
        );
        assert_eq!(rate_limit_legacy(&HeaderMap::new(), nov_1994()), None);
    }

    #[test]
    fn x_rate_limit_reset_is_an_epoch_from_ten_to_the_ninth_on() {
        // GitHub: epoch seconds.
        let now = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let map = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1780000300"),
        ]);
        assert_eq!(
            x_rate_limit(&map, now).unwrap().reset_after,
            Some(Duration::from_secs(300))
        );
        let delta = headers(&[("x-ratelimit-reset", "300")]);
        assert_eq!(
            x_rate_limit(&delta, now).unwrap().reset_after,
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn x_rate_limit_epoch_uses_the_date_header_against_clock_skew() {
        // The server says it is 1_780_000_000; our clock is 100 s slow.
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_780_000_000));
        let map = headers(&[("date", &date), ("x-ratelimit-reset", "1780000060")]);
        let now = UNIX_EPOCH + Duration::from_secs(1_780_000_000 - 100);
        assert_eq!(
            x_rate_limit(&map, now).unwrap().reset_after,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn discord_reset_after_wins_and_decimal_epochs_parse() {
        let now = UNIX_EPOCH + Duration::from_secs(1_470_173_022);
        let map = headers(&[
            ("x-ratelimit-limit", "5"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1470173023.123"),
            ("x-ratelimit-reset-after", "1.123"),
            ("x-ratelimit-bucket", "abcd1234"),
        ]);
        assert_eq!(
            x_rate_limit(&map, now).unwrap().reset_after,
            Some(Duration::from_millis(1123))
        );
        let map = headers(&[("x-ratelimit-reset", "1470173023.123")]);
        assert_eq!(
            x_rate_limit(&map, now).unwrap().reset_after,
            Some(Duration::from_millis(1123))
        );
    }

    #[test]
    fn x_rate_limit_epochs_in_the_past_or_far_future_are_zero_or_capped() {
        let now = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let past = headers(&[("x-ratelimit-reset", "1000000000")]);
        assert_eq!(
            x_rate_limit(&past, now).unwrap().reset_after,
            Some(Duration::ZERO)
        );
        let far = headers(&[("x-ratelimit-reset", "253402300799")]);
        assert_eq!(x_rate_limit(&far, now).unwrap().reset_after, Some(MAX_HINT));
        let huge = headers(&[("x-ratelimit-reset", "99999999999999999999999")]);
        assert_eq!(
            x_rate_limit(&huge, now).unwrap().reset_after,
            Some(MAX_HINT)
        );
        let negative = headers(&[("x-ratelimit-reset", "-5"), ("x-ratelimit-remaining", "-1")]);
        assert_eq!(x_rate_limit(&negative, now), None);
    }

    #[test]
    fn graph_too_many_requests_body_is_a_rate_signal_for_the_mailbox() {
        let body = br#"{"error":{"code":"TooManyRequests","message":"Please retry again later.","innerError":{"date":"2026-01-01T00:00:00","request-id":"x"}}}"#;
        assert_eq!(
            graph_body(body),
            Some(Throttle::new(
                ThrottleKind::Rate,
                ThrottleScope::Key,
                ThrottleSource::GraphBody
            ))
        );
    }

    #[test]
    fn graph_mailbox_concurrency_body_is_a_concurrency_signal_for_the_mailbox() {
        let body = br#"{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}"#;
        assert_eq!(
            graph_body(body),
            Some(Throttle::new(
                ThrottleKind::Concurrency,
                ThrottleScope::Key,
                ThrottleSource::GraphBody
            ))
        );
    }

    #[test]
    fn graph_bodies_that_are_not_throttles_are_ignored() {
        assert_eq!(
            graph_body(br#"{"error":{"code":"ErrorItemNotFound"}}"#),
            None
        );
        assert_eq!(graph_body(br#"{"value":[]}"#), None);
        assert_eq!(graph_body(b"<html>busy</html>"), None);
        assert_eq!(graph_body(b""), None);
    }

    #[test]
    fn telegram_body_gives_the_4310_second_wait() {
        let body = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;
        let throttle = telegram_body(body).unwrap();
        assert_eq!(throttle.retry_after(), Some(Duration::from_secs(4310)));
        assert_eq!(throttle.kind(), ThrottleKind::Rate);
        assert_eq!(throttle.scope(), ThrottleScope::Key);
        assert_eq!(throttle.source(), ThrottleSource::TelegramBody);
    }

    #[test]
    fn telegram_body_falls_back_to_the_description() {
        let body =
            br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 35"}"#;
        assert_eq!(
            telegram_body(body).unwrap().retry_after(),
            Some(Duration::from_secs(35))
        );
    }

    #[test]
    fn telegram_bodies_that_are_not_floods_are_ignored() {
        assert_eq!(telegram_body(br#"{"ok":true,"result":{}}"#), None);
        assert_eq!(
            telegram_body(
                br#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#
            ),
            None
        );
        let negative = br#"{"ok":false,"error_code":429,"parameters":{"retry_after":-3}}"#;
        assert_eq!(telegram_body(negative).unwrap().retry_after(), None);
        let huge = br#"{"ok":false,"error_code":429,"parameters":{"retry_after":1e300}}"#;
        assert_eq!(telegram_body(huge).unwrap().retry_after(), Some(MAX_HINT));
    }

    #[test]
    fn google_resource_exhausted_gives_a_quota_signal_with_the_retry_info_delay() {
        let body = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"31s"}]}}"#;
        assert_eq!(
            google_body(body),
            Some(
                Throttle::new(
                    ThrottleKind::Quota,
                    ThrottleScope::Unknown,
                    ThrottleSource::GoogleBody
                )
                .with_retry_after(Duration::from_secs(31))
            )
        );
    }

    #[test]
    fn google_retry_info_also_reads_seconds_and_nanos() {
        let body = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED"},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":{"seconds":"1","nanos":500000000}}]}}"#;
        assert_eq!(
            google_body(body).unwrap().retry_after(),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn google_legacy_rate_limit_reasons_and_unavailable_are_recognised() {
        let legacy = br#"{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded"}],"code":403,"message":"User Rate Limit Exceeded"}}"#;
        assert_eq!(google_body(legacy).unwrap().kind(), ThrottleKind::Rate);
        let unavailable = br#"{"error":{"code":503,"status":"UNAVAILABLE"}}"#;
        assert_eq!(
            google_body(unavailable).unwrap().kind(),
            ThrottleKind::Overload
        );
        let denied = br#"{"error":{"code":403,"status":"PERMISSION_DENIED"}}"#;
        assert_eq!(google_body(denied), None);
    }

    #[test]
    fn deeply_nested_bodies_are_ignored_without_overflowing_the_stack() {
        let nested = [b"{\"error\":".repeat(50_000), b"1".to_vec()].concat();
        let brackets = vec![b'['; 100_000];
        for body in [&nested[..], &brackets[..]] {
            assert_eq!(graph_body(body), None);
            assert_eq!(telegram_body(body), None);
            assert_eq!(google_body(body), None);
            assert!(!github_rate_limited_body(body));
        }
    }

    #[test]
    fn github_rate_limit_messages_are_recognised() {
        assert!(github_rate_limited_body(
            br#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"https://docs.github.com"}"#
        ));
        assert!(github_rate_limited_body(
            br#"{"message":"API rate limit exceeded for 1.2.3.4."}"#
        ));
        assert!(!github_rate_limited_body(
            br#"{"message":"Resource not accessible by integration"}"#
        ));
        assert!(!github_rate_limited_body(b"rate limit"));
    }

    fn within_cap(duration: Option<Duration>) -> bool {
        duration.is_none_or(|d| d <= MAX_HINT)
    }

    fn throttle_within_cap(throttle: Option<Throttle>) -> bool {
        throttle.is_none_or(|t| within_cap(t.retry_after()) && within_cap(t.reset_after()))
    }

    fn any_header_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..48),
            "[0-9.\\- ]{0,30}".prop_map(String::into_bytes),
            "(Mon|Sun|Fri|Sunday), [0-9]{1,2}[ -](Nov|Dec|Feb)[ -][0-9]{2,4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
                .prop_map(String::into_bytes),
            "(\"[a-z]{0,3}\";)?(r|t|q|w)=-?[0-9]{0,20}(, ?(limit|remaining|reset)=-?[0-9]{0,20})?"
                .prop_map(String::into_bytes),
        ]
        .prop_filter_map("not a header value", |bytes| HeaderValue::from_bytes(&bytes).ok())
    }

    fn any_body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (
                "(TooManyRequests|ApplicationThrottled|RESOURCE_EXHAUSTED|x)",
                "-?[0-9]{0,25}(\\.[0-9]{0,12})?(e[0-9]{1,3})?",
                "-?[0-9]{0,25}(\\.[0-9]{0,12})?s?",
            )
                .prop_map(|(code, number, delay)| {
                    format!(
                        r#"{{"ok":false,"error_code":{number},"description":"retry after {number}","parameters":{{"retry_after":{number}}},"message":"rate limit","error":{{"code":"{code}","status":"{code}","message":"Concurrency","details":[{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"{delay}"}},{{"@type":"google.rpc.RetryInfo","retryDelay":{{"seconds":"{number}","nanos":{number}}}}}]}}}}"#
                    )
                    .into_bytes()
                }),
        ]
    }

    proptest! {
        #[test]
        fn retry_after_never_panics_nor_exceeds_the_cap(
            v in any_header_value(),
            date in proptest::option::of(any_header_value()),
            now in 0_u64..300_000_000_000,
        ) {
            let now = UNIX_EPOCH + Duration::from_secs(now);
            prop_assert!(within_cap(retry_after(&v, date.as_ref(), now)));
        }

        #[test]
        fn string_parsers_never_panic_nor_exceed_the_cap(text in "\\PC{0,40}") {
            prop_assert!(within_cap(proto_duration(&text)));
            let _ = http_date(&text);
        }

        #[test]
        fn header_parsers_never_panic_nor_exceed_the_cap(
            values in proptest::collection::vec(any_header_value(), 0..6),
            now in 0_u64..300_000_000_000,
        ) {
            let names = [
                "ratelimit", "ratelimit-policy", "ratelimit-limit", "ratelimit-remaining",
                "ratelimit-reset", "x-ratelimit-limit", "x-ratelimit-remaining",
                "x-ratelimit-reset", "x-ratelimit-reset-after", "date", "ratelimit",
            ];
            let mut map = HeaderMap::new();
            for (i, v) in values.into_iter().enumerate() {
                map.append(names[i % names.len()], v.clone());
                map.append(names[(i * 7 + 3) % names.len()], v);
            }
            let now = UNIX_EPOCH + Duration::from_secs(now);
            prop_assert!(rate_limit(&map).is_none_or(|h| within_cap(h.reset_after)));
            prop_assert!(rate_limit_legacy(&map, now).is_none_or(|h| within_cap(h.reset_after)));
            prop_assert!(x_rate_limit(&map, now).is_none_or(|h| within_cap(h.reset_after)));
        }

        #[test]
        fn body_parsers_never_panic_nor_exceed_the_cap(body in any_body()) {
            prop_assert!(throttle_within_cap(graph_body(&body)));
            prop_assert!(throttle_within_cap(telegram_body(&body)));
            prop_assert!(throttle_within_cap(google_body(&body)));
            let _ = github_rate_limited_body(&body);
        }
    }
}
