//! The presets against the example responses of `shared/API_FACTS.md`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;

use super::*;

/// 2026-05-28, well past the 10^9 epoch heuristic.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");

const GRAPH_TOO_MANY: &[u8] = br#"{"error":{"code":"TooManyRequests","message":"Please retry again later.","innerError":{"date":"2026-05-28T20:26:40","request-id":"9f1e","client-request-id":"9f1e"}}}"#;
const GRAPH_CONCURRENCY: &[u8] = br#"{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}"#;
const TELEGRAM_4310: &[u8] = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;
const GOOGLE_EXHAUSTED: &[u8] = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"31s"}]}}"#;
const GITHUB_SECONDARY: &[u8] = br#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID 1234.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}"#;

fn secs(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(n))
}

// standard

#[test]
fn a_429_with_retry_after_seconds_is_a_rate_signal_with_that_wait() {
    let t = standard(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[("retry-after", "120")]),
        None,
        now(),
    )
    .unwrap();
    assert_eq!(t.kind(), ThrottleKind::Rate);
    assert_eq!(t.scope(), ThrottleScope::Unknown);
    assert_eq!(t.retry_after(), secs(120));
    assert_eq!(t.source(), ThrottleSource::RetryAfter);
}

#[test]
fn a_429_with_a_retry_after_date_is_measured_against_the_response_date() {
    let map = headers(&[
        ("date", "Fri, 31 Dec 1999 23:58:59 GMT"),
        ("retry-after", "Fri, 31 Dec 1999 23:59:59 GMT"),
    ]);
    // Our clock says 2026: only the `Date` header makes the wait meaningful.
    let t = standard(StatusCode::TOO_MANY_REQUESTS, &map, None, now()).unwrap();
    assert_eq!(t.retry_after(), secs(60));
}

#[test]
fn a_429_with_a_retry_after_date_in_the_past_means_now() {
    let map = headers(&[("retry-after", "Fri, 31 Dec 1999 23:59:59 GMT")]);
    let t = standard(StatusCode::TOO_MANY_REQUESTS, &map, None, now()).unwrap();
    assert_eq!(t.retry_after(), Some(Duration::ZERO));
}

#[test]
fn a_429_with_garbage_retry_after_is_still_a_throttle_without_a_wait() {
    let map = headers(&[("retry-after", "tomorrow-ish")]);
    let t = standard(StatusCode::TOO_MANY_REQUESTS, &map, None, now()).unwrap();
    assert_eq!(t.retry_after(), None);
    assert_eq!(t.source(), ThrottleSource::Status);
}

#[test]
fn a_429_with_an_absurd_retry_after_is_capped() {
    let map = headers(&[("retry-after", "1000000000000")]);
    let t = standard(StatusCode::TOO_MANY_REQUESTS, &map, None, now()).unwrap();
    assert_eq!(t.retry_after(), Some(MAX_HINT));
}

#[test]
fn a_bare_503_is_an_overload_of_unknown_scope() {
    let t = standard(
        StatusCode::SERVICE_UNAVAILABLE,
        &HeaderMap::new(),
        None,
        now(),
    )
    .unwrap();
    assert_eq!(
        t,
        Throttle::new(
            ThrottleKind::Overload,
            ThrottleScope::Unknown,
            ThrottleSource::Status
        )
    );
}

#[test]
fn a_429_with_draft_10_exhausted_quota_waits_for_t() {
    let map = headers(&[
        (
            "ratelimit-policy",
            "\"burst\";q=100;w=60,\"daily\";q=1000;w=86400",
        ),
        ("ratelimit", "\"burst\";r=0;t=30"),
    ]);
    let t = standard(StatusCode::TOO_MANY_REQUESTS, &map, None, now()).unwrap();
    assert_eq!(t.kind(), ThrottleKind::Quota);
    assert_eq!(t.retry_after(), secs(30));
    assert_eq!(t.remaining(), Some(0));
    assert_eq!(t.reset_after(), secs(30));
    assert_eq!(t.source(), ThrottleSource::RateLimit);
}

#[test]
fn retry_after_wins_over_the_draft_10_t() {
    let map = headers(&[("ratelimit", "\"default\";r=0;t=30"), ("retry-after", "45")]);
    let t = standard(StatusCode::TOO_MANY_REQUESTS, &map, None, now()).unwrap();
    assert_eq!(t.retry_after(), secs(45));
    assert_eq!(t.reset_after(), secs(30));
    assert_eq!(t.source(), ThrottleSource::RetryAfter);
}

#[test]
fn a_success_with_remaining_quota_is_not_a_throttle() {
    let map = headers(&[("ratelimit", "\"default\";r=50;t=30")]);
    assert_eq!(standard(StatusCode::OK, &map, None, now()), None);
    let map = headers(&[("ratelimit", "limit=100, remaining=50, reset=5")]);
    assert_eq!(standard(StatusCode::OK, &map, None, now()), None);
}

#[test]
fn a_success_with_exhausted_quota_is_a_notice_without_retry_after() {
    let map = headers(&[("ratelimit", "\"default\";r=0;t=30")]);
    let t = standard(StatusCode::OK, &map, None, now()).unwrap();
    assert_eq!(t.kind(), ThrottleKind::Quota);
    assert_eq!(t.retry_after(), None);
    assert_eq!(t.reset_after(), secs(30));
    assert_eq!(t.resume_after(), secs(30));
    assert_eq!(t.source(), ThrottleSource::RateLimit);
}

#[test]
fn a_success_with_x_rate_limit_remaining_zero_and_an_epoch_reset_is_a_notice() {
    let map = headers(&[
        ("x-ratelimit-limit", "5000"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1780000120"),
    ]);
    let t = standard(StatusCode::OK, &map, None, now()).unwrap();
    assert_eq!(t.reset_after(), secs(120));
    assert_eq!(t.source(), ThrottleSource::XRateLimit);
}

#[test]
fn a_success_with_draft_07_exhausted_quota_is_a_notice() {
    let map = headers(&[("ratelimit", "limit=100, remaining=0, reset=5")]);
    let t = standard(StatusCode::OK, &map, None, now()).unwrap();
    assert_eq!(t.reset_after(), secs(5));
    assert_eq!(t.source(), ThrottleSource::RateLimitLegacy);
}

#[test]
fn a_429_with_draft_03_headers_waits_for_the_reset() {
    let map = headers(&[
        ("ratelimit-limit", "100"),
        ("ratelimit-remaining", "0"),
        ("ratelimit-reset", "7"),
    ]);
    let t = standard(StatusCode::TOO_MANY_REQUESTS, &map, None, now()).unwrap();
    assert_eq!(t.retry_after(), secs(7));
    assert_eq!(t.source(), ThrottleSource::RateLimitLegacy);
}

#[test]
fn other_statuses_without_rate_limit_headers_are_not_throttles() {
    for status in [200, 204, 400, 403, 404, 500, 502, 504] {
        let status = StatusCode::from_u16(status).unwrap();
        let map = headers(&[("retry-after", "10")]);
        assert_eq!(standard(status, &map, None, now()), None, "{status}");
    }
}

// Graph

#[test]
fn a_graph_429_with_retry_after_is_a_rate_signal_for_the_mailbox() {
    let map = headers(&[JSON, ("retry-after", "10")]);
    let t = graph(
        StatusCode::TOO_MANY_REQUESTS,
        &map,
        Some(GRAPH_TOO_MANY),
        now(),
    )
    .unwrap();
    assert_eq!(t.kind(), ThrottleKind::Rate);
    assert_eq!(t.scope(), ThrottleScope::Key);
    assert_eq!(t.retry_after(), secs(10));
    assert_eq!(t.source(), ThrottleSource::RetryAfter);
}

#[test]
fn a_graph_429_without_retry_after_is_a_rate_signal_without_a_wait() {
    let t = graph(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[JSON]),
        Some(GRAPH_TOO_MANY),
        now(),
    )
    .unwrap();
    assert_eq!(t.retry_after(), None);
    assert_eq!(t.source(), ThrottleSource::GraphBody);
    // Without a body too.
    let t = graph(
        StatusCode::TOO_MANY_REQUESTS,
        &HeaderMap::new(),
        None,
        now(),
    )
    .unwrap();
    assert_eq!(
        t,
        Throttle::new(
            ThrottleKind::Rate,
            ThrottleScope::Key,
            ThrottleSource::Status
        )
    );
}

#[test]
fn a_graph_mailbox_concurrency_429_is_a_concurrency_signal_for_the_mailbox() {
    let map = headers(&[JSON]);
    let t = graph(
        StatusCode::TOO_MANY_REQUESTS,
        &map,
        Some(GRAPH_CONCURRENCY),
        now(),
    )
    .unwrap();
    assert_eq!(
        t,
        Throttle::new(
            ThrottleKind::Concurrency,
            ThrottleScope::Key,
            ThrottleSource::GraphBody
        )
    );
    let map = headers(&[JSON, ("retry-after", "2")]);
    let t = graph(
        StatusCode::TOO_MANY_REQUESTS,
        &map,
        Some(GRAPH_CONCURRENCY),
        now(),
    )
    .unwrap();
    assert_eq!(t.kind(), ThrottleKind::Concurrency);
    assert_eq!(t.retry_after(), secs(2));
}

#[test]
fn graph_503_and_504_are_overloads_with_or_without_retry_after() {
    for status in [StatusCode::SERVICE_UNAVAILABLE, StatusCode::GATEWAY_TIMEOUT] {
        let t = graph(status, &HeaderMap::new(), None, now()).unwrap();
        assert_eq!(t.kind(), ThrottleKind::Overload);
        assert_eq!(t.scope(), ThrottleScope::Unknown);
        assert_eq!(t.retry_after(), None);
        let t = graph(status, &headers(&[("retry-after", "5")]), None, now()).unwrap();
        assert_eq!(t.retry_after(), secs(5));
    }
}

#[test]
fn graph_reads_the_body_of_429s_only() {
    let json = headers(&[JSON]);
    assert!(Preset::Graph.needs_body(StatusCode::TOO_MANY_REQUESTS, &json));
    assert!(Preset::Graph.needs_body(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()));
    assert!(!Preset::Graph.needs_body(StatusCode::OK, &json));
    assert!(!Preset::Graph.needs_body(StatusCode::SERVICE_UNAVAILABLE, &json));
    let html = headers(&[("content-type", "text/html")]);
    assert!(!Preset::Graph.needs_body(StatusCode::TOO_MANY_REQUESTS, &html));
    let empty = headers(&[JSON, ("content-length", "0")]);
    assert!(!Preset::Graph.needs_body(StatusCode::TOO_MANY_REQUESTS, &empty));
}

// Telegram

#[test]
fn a_telegram_429_gives_the_4310_second_wait_for_the_chat() {
    let map = headers(&[JSON, ("retry-after", "4310")]);
    let t = telegram(
        StatusCode::TOO_MANY_REQUESTS,
        &map,
        Some(TELEGRAM_4310),
        now(),
    )
    .unwrap();
    assert_eq!(t.kind(), ThrottleKind::Rate);
    assert_eq!(t.scope(), ThrottleScope::Key);
    assert_eq!(t.retry_after(), secs(4310));
    assert_eq!(t.source(), ThrottleSource::TelegramBody);
}

#[test]
fn a_telegram_429_without_the_header_uses_the_body() {
    let t = telegram(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[JSON]),
        Some(TELEGRAM_4310),
        now(),
    )
    .unwrap();
    assert_eq!(t.retry_after(), secs(4310));
}

#[test]
fn a_telegram_429_without_the_body_uses_the_header() {
    let map = headers(&[("retry-after", "4310")]);
    let t = telegram(StatusCode::TOO_MANY_REQUESTS, &map, None, now()).unwrap();
    assert_eq!(t.retry_after(), secs(4310));
    assert_eq!(t.source(), ThrottleSource::RetryAfter);
}

#[test]
fn the_longer_of_telegram_body_and_header_wins() {
    let map = headers(&[("retry-after", "5000")]);
    let t = telegram(
        StatusCode::TOO_MANY_REQUESTS,
        &map,
        Some(TELEGRAM_4310),
        now(),
    )
    .unwrap();
    assert_eq!(t.retry_after(), secs(5000));
    assert_eq!(t.source(), ThrottleSource::RetryAfter);
}

#[test]
fn an_overloaded_telegram_server_answers_a_60_second_wait() {
    let body = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 60","parameters":{"retry_after":60}}"#;
    let t = telegram(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[JSON]),
        Some(body),
        now(),
    )
    .unwrap();
    assert_eq!(t.retry_after(), secs(60));
}

#[test]
fn telegram_errors_that_are_not_floods_are_not_throttles() {
    let body = br#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#;
    assert_eq!(
        telegram(
            StatusCode::BAD_REQUEST,
            &headers(&[JSON]),
            Some(body),
            now()
        ),
        None
    );
    assert!(!Preset::Telegram.needs_body(StatusCode::BAD_REQUEST, &headers(&[JSON])));
    assert!(Preset::Telegram.needs_body(StatusCode::TOO_MANY_REQUESTS, &headers(&[JSON])));
}

// Google

#[test]
fn a_google_resource_exhausted_429_is_a_quota_signal_with_the_retry_info_delay() {
    let t = google(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[JSON]),
        Some(GOOGLE_EXHAUSTED),
        now(),
    )
    .unwrap();
    assert_eq!(
        t,
        Throttle::new(
            ThrottleKind::Quota,
            ThrottleScope::Unknown,
            ThrottleSource::GoogleBody
        )
        .with_retry_after(Duration::from_secs(31))
    );
}

#[test]
fn a_google_429_with_sub_second_retry_info_keeps_the_fraction() {
    let body = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"0.1s"}]}}"#;
    let t = google(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[JSON]),
        Some(body),
        now(),
    )
    .unwrap();
    assert_eq!(t.retry_after(), Some(Duration::from_millis(100)));
}

#[test]
fn a_google_429_without_retry_info_is_a_quota_signal_without_a_wait() {
    let body =
        br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#;
    let t = google(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[JSON]),
        Some(body),
        now(),
    )
    .unwrap();
    assert_eq!(t.kind(), ThrottleKind::Quota);
    assert_eq!(t.retry_after(), None);
    assert_eq!(t.source(), ThrottleSource::GoogleBody);
}

#[test]
fn a_google_403_is_a_throttle_only_when_the_body_says_rate_limit() {
    let legacy = br#"{"error":{"errors":[{"domain":"usageLimits","reason":"rateLimitExceeded","message":"Rate Limit Exceeded"}],"code":403,"message":"Rate Limit Exceeded"}}"#;
    let t = google(
        StatusCode::FORBIDDEN,
        &headers(&[JSON]),
        Some(legacy),
        now(),
    )
    .unwrap();
    assert_eq!(t.kind(), ThrottleKind::Rate);
    let denied = br#"{"error":{"code":403,"message":"The caller does not have permission","status":"PERMISSION_DENIED"}}"#;
    assert_eq!(
        google(
            StatusCode::FORBIDDEN,
            &headers(&[JSON]),
            Some(denied),
            now()
        ),
        None
    );
    assert!(Preset::Google.needs_body(StatusCode::FORBIDDEN, &headers(&[JSON])));
}

// GitHub

#[test]
fn a_github_403_with_remaining_zero_waits_until_the_epoch_reset() {
    let map = headers(&[
        JSON,
        ("date", &httpdate::fmt_http_date(now())),
        ("x-ratelimit-limit", "5000"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-used", "5000"),
        ("x-ratelimit-reset", "1780000900"),
        ("x-ratelimit-resource", "core"),
    ]);
    let t = github(StatusCode::FORBIDDEN, &map, None, now()).unwrap();
    assert_eq!(t.kind(), ThrottleKind::Quota);
    assert_eq!(t.scope(), ThrottleScope::Key);
    assert_eq!(t.retry_after(), secs(900));
    assert_eq!(t.remaining(), Some(0));
    assert_eq!(t.source(), ThrottleSource::XRateLimit);
    assert!(!Preset::GitHub.needs_body(StatusCode::FORBIDDEN, &map));
}

#[test]
fn a_github_secondary_limit_with_retry_after_waits_that_long() {
    for status in [StatusCode::FORBIDDEN, StatusCode::TOO_MANY_REQUESTS] {
        let map = headers(&[
            JSON,
            ("retry-after", "30"),
            ("x-ratelimit-remaining", "4000"),
        ]);
        let t = github(status, &map, Some(GITHUB_SECONDARY), now()).unwrap();
        assert_eq!(t.kind(), ThrottleKind::Rate);
        assert_eq!(t.retry_after(), secs(30));
        assert_eq!(t.source(), ThrottleSource::RetryAfter);
    }
}

#[test]
fn a_github_secondary_limit_without_headers_waits_one_minute() {
    let map = headers(&[JSON]);
    assert!(Preset::GitHub.needs_body(StatusCode::FORBIDDEN, &map));
    let t = github(StatusCode::FORBIDDEN, &map, Some(GITHUB_SECONDARY), now()).unwrap();
    assert_eq!(t.retry_after(), secs(60));
    assert_eq!(t.source(), ThrottleSource::GitHubSecondaryLimit);
    let t = github(StatusCode::TOO_MANY_REQUESTS, &map, None, now()).unwrap();
    assert_eq!(t.retry_after(), secs(60));
}

#[test]
fn a_github_403_that_is_a_permission_error_is_not_a_throttle() {
    let body = br#"{"message":"Resource not accessible by integration","documentation_url":"https://docs.github.com/rest"}"#;
    let map = headers(&[JSON, ("x-ratelimit-remaining", "4999")]);
    assert_eq!(github(StatusCode::FORBIDDEN, &map, Some(body), now()), None);
    assert_eq!(github(StatusCode::FORBIDDEN, &map, None, now()), None);
}

#[test]
fn a_github_success_that_used_the_last_request_is_a_notice_for_the_key() {
    let map = headers(&[
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1780000060"),
    ]);
    let t = github(StatusCode::OK, &map, None, now()).unwrap();
    assert_eq!(t.scope(), ThrottleScope::Key);
    assert_eq!(t.retry_after(), None);
    assert_eq!(t.resume_after(), secs(60));
}

// Preset dispatch and the body rule

#[test]
fn presets_dispatch_to_their_functions() {
    let map = headers(&[JSON]);
    let status = StatusCode::TOO_MANY_REQUESTS;
    let body = Some(GRAPH_CONCURRENCY);
    assert_eq!(
        Preset::Graph.classify(status, &map, body, now()),
        graph(status, &map, body, now())
    );
    assert_eq!(
        Preset::Standard.classify(status, &map, body, now()),
        standard(status, &map, body, now())
    );
}

#[test]
fn the_standard_preset_never_reads_bodies() {
    for status in [403, 429, 503, 504] {
        let status = StatusCode::from_u16(status).unwrap();
        assert!(!Preset::Standard.needs_body(status, &HeaderMap::new()));
    }
}

#[test]
fn json_suffix_content_types_count_as_json() {
    let problem = headers(&[("content-type", "application/problem+JSON")]);
    assert!(Preset::Google.needs_body(StatusCode::TOO_MANY_REQUESTS, &problem));
    let text = headers(&[("content-type", "text/plain")]);
    assert!(!Preset::Google.needs_body(StatusCode::TOO_MANY_REQUESTS, &text));
}

const PRESETS: [Preset; 5] = [
    Preset::Standard,
    Preset::Graph,
    Preset::Telegram,
    Preset::Google,
    Preset::GitHub,
];

fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        "-?[0-9]{0,22}(\\.[0-9]{0,4})?".prop_map(String::into_bytes),
        "\"[a-z]{1,3}\";r=-?[0-9]{0,18};t=-?[0-9]{0,18}".prop_map(String::into_bytes),
        "(Fri|Sun), [0-9]{2} (Dec|Nov) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
            .prop_map(String::into_bytes),
    ]
    .prop_filter_map("not a header value", |bytes| {
        HeaderValue::from_bytes(&bytes).ok()
    })
}

proptest! {
    #[test]
    fn presets_never_panic_nor_exceed_the_cap(
        status in 100_u16..600,
        values in proptest::collection::vec((0_usize..10, header_value()), 0..8),
        body in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        now in 0_u64..300_000_000_000,
    ) {
        let names = [
            "retry-after", "date", "ratelimit", "ratelimit-policy", "ratelimit-remaining",
            "ratelimit-reset", "x-ratelimit-remaining", "x-ratelimit-reset",
            "x-ratelimit-reset-after", "content-type",
        ];
        let mut map = HeaderMap::new();
        for (name, value) in values {
            map.append(names[name], value);
        }
        let status = StatusCode::from_u16(status).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(now);
        for preset in PRESETS {
            let _ = preset.needs_body(status, &map);
            if let Some(t) = preset.classify(status, &map, body.as_deref(), now) {
                prop_assert!(t.retry_after().is_none_or(|d| d <= MAX_HINT));
                prop_assert!(t.reset_after().is_none_or(|d| d <= MAX_HINT));
                prop_assert!(t.resume_after().is_none_or(|d| d <= MAX_HINT));
            }
        }
    }
}
