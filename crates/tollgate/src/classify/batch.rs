//! Microsoft Graph JSON batching: throttled sub-requests inside a `200` `$batch`
//! response.
//!
//! Graph answers `POST /v1.0/$batch` with `200 OK` even when some of its (up to 20)
//! sub-requests were throttled; each sub-response carries its own status, headers and
//! body:
//!
//! ```json
//! {"responses":[
//!   {"id":"1","status":200,"headers":{"Content-Type":"application/json"},"body":{"value":[]}},
//!   {"id":"2","status":429,"headers":{"Retry-After":"5"},"body":{"error":{"code":"TooManyRequests","message":"Please retry again later."}}}
//! ]}
//! ```
//!
//! [`throttled`] reads such a body and returns the sub-requests that were refused,
//! with their signals; [`graph_batch`] turns them into one [`Throttle`] for the whole
//! response, so that the limiting layers cool the mailbox down.
//!
//! # Decisions
//!
//! - **Opt-in, per route.** A `200` is read only by the
//!   [`GraphBatch`](super::Preset::GraphBatch) preset
//!   ([`ThrottleClassifierLayer::graph_batch`](super::ThrottleClassifierLayer::graph_batch)),
//!   which the caller puts on the stack that sends `$batch` requests. The
//!   [`Graph`](super::Preset::Graph) preset never reads a `200` body: every successful
//!   Graph response would otherwise be held until its body was read. The classifier
//!   sees responses, not requests, so it cannot tell a batch response by itself; the
//!   two stacks share their limits by sharing their stores (see the example).
//! - **Each sub-response is classified as a top-level Graph response would be**
//!   ([`graph`](super::graph)): `429` with `Retry-After` (seconds or a date) or without,
//!   the `ApplicationThrottled` / MailboxConcurrency body as a concurrency signal,
//!   `503` and `504` as overload. A sub-response that succeeded, or failed for another
//!   reason (`404`, `400`), is not throttled.
//! - **One signal for the batch**: [`ThrottleKind::Concurrency`] if any sub-request hit
//!   the mailbox's concurrency limit (the concurrency layer halves its limit; the other
//!   kinds only wait), else [`Rate`](ThrottleKind::Rate) (or
//!   [`Quota`](ThrottleKind::Quota)) if any was rate-limited, else
//!   [`Overload`](ThrottleKind::Overload); the widest scope (global, then key, then
//!   unknown: a `429` is the mailbox's, as for [`graph`](super::graph)); the **largest**
//!   sub-hint as its [`retry_after`](Throttle::retry_after), so that nothing is sent to
//!   the mailbox before every throttled sub-request may be retried; source
//!   [`ThrottleSource::GraphBatch`]. Key the batch request by its mailbox (a batch per
//!   mailbox, as Graph limits per mailbox).
//! - **The batch is never resent.** Its status is `200`, and
//!   [`DefaultPolicy`](crate::retry::DefaultPolicy) retries refusals only: resending the
//!   batch would repeat the sub-requests that succeeded (and count against the quota
//!   again). The caller resubmits the throttled ids only, as a new batch (below).
//! - **Bounded, never panicking.** At most [`MAX_SUB_RESPONSES`] sub-responses are read
//!   (Graph's limit on sub-requests; a longer array is not Graph's) and at most
//!   [`MAX_SUB_HEADERS`] headers of each. Hints are capped at
//!   [`MAX_HINT`](super::MAX_HINT) like every other. Anything malformed is skipped.
//! - **A body longer than the cap.** The layer reads at most its
//!   [`body_cap`](super::ThrottleClassifierLayer::body_cap) ([`DEFAULT_BATCH_BODY_CAP`],
//!   1 MiB, for this preset). The body is scanned element by element, so a truncated
//!   body still gives the throttled sub-responses that lie wholly within the cap; those
//!   past it are not seen by the layer (the caller, who reads the whole body, still
//!   finds them with [`throttled`]). Raise the cap for batches of large pages; the
//!   bytes are replayed to the caller, who holds the whole batch response anyway.
//!
//! # Resubmitting only the throttled sub-requests
//!
//! Read the batch response, take the ids [`throttled`] returns, and send a new batch
//! with just those sub-requests **through the same stack, at once**: the mailbox is
//! cooling down until the largest hint, so `QuotaWindow` holds the new batch until
//! then (or fails it with the time to come back if that is past its `max_wait`). The
//! sub-requests that succeeded are never sent again.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::{HeaderMap, StatusCode};
//! use tollgate::classify::{ThrottleKind, ThrottleScope, batch};
//!
//! let body = br#"{"responses":[
//!     {"id":"1","status":200,"headers":{},"body":{"value":[]}},
//!     {"id":"2","status":429,"headers":{"Retry-After":"5"},"body":{"error":{"code":"TooManyRequests","message":"Please retry again later."}}},
//!     {"id":"3","status":429,"headers":{},"body":{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}}
//! ]}"#;
//! let now = SystemTime::now();
//!
//! // What the layer attaches to the `200`: the mailbox cools down 5 s, and its
//! // concurrency limit is halved.
//! let throttle = batch::graph_batch(StatusCode::OK, &HeaderMap::new(), Some(body), now).unwrap();
//! assert_eq!(throttle.kind(), ThrottleKind::Concurrency);
//! assert_eq!(throttle.scope(), ThrottleScope::Key);
//! assert_eq!(throttle.retry_after(), Some(Duration::from_secs(5)));
//!
//! // What the caller resubmits.
//! let ids: Vec<_> = batch::throttled(body, now).iter().map(|t| t.id().to_owned()).collect();
//! assert_eq!(ids, ["2", "3"]);
//! ```
//!
//! Two stacks sharing one set of limits, the batch one reading `200` bodies:
//!
//! ```
//! use std::time::Duration;
//! use tollgate::classify::ThrottleClassifierLayer;
//! use tollgate::key::Header;
//! use tollgate::quota::Quota;
//! use tollgate::{ConcurrencyPerKeyLayer, QuotaWindowLayer, RetryAfterBackoffLayer};
//! use tower::{ServiceBuilder, service_fn};
//!
//! # fn main() -> Result<(), tower::BoxError> {
//! let mailbox = Header::new("x-mailbox");
//! let quota = QuotaWindowLayer::new(Quota::sliding(10_000, Duration::from_secs(600))?, mailbox.clone());
//! let concurrency = ConcurrencyPerKeyLayer::new(4, mailbox);
//! let http = service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! });
//! let plain = ServiceBuilder::new()
//!     .layer(RetryAfterBackoffLayer::graph())
//!     .layer(quota.clone())
//!     .layer(concurrency.clone())
//!     .layer(ThrottleClassifierLayer::graph())
//!     .service(http.clone());
//! // Clones of a layer share its store: both stacks count against the same limits.
//! let batch = ServiceBuilder::new()
//!     .layer(RetryAfterBackoffLayer::graph())
//!     .layer(quota)
//!     .layer(concurrency)
//!     .layer(ThrottleClassifierLayer::graph_batch())
//!     .service(http);
//! # let _ = (plain, batch);
//! # Ok(())
//! # }
//! ```

use std::time::SystemTime;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::{Throttle, ThrottleKind, ThrottleScope, ThrottleSource};

/// The most sub-responses read from one batch: Graph's limit on sub-requests.
pub const MAX_SUB_RESPONSES: usize = 20;

/// The most headers read from one sub-response.
pub const MAX_SUB_HEADERS: usize = 64;

/// The body cap of [`ThrottleClassifierLayer::graph_batch`](super::ThrottleClassifierLayer::graph_batch):
/// 1 MiB, room for 20 sub-responses of ordinary pages.
pub const DEFAULT_BATCH_BODY_CAP: usize = 1024 * 1024;

/// One sub-request of a `$batch` that was refused with a throttling answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottledSubRequest {
    id: String,
    status: StatusCode,
    throttle: Throttle,
}

impl ThrottledSubRequest {
    /// The sub-request's `id`, as the caller sent it (a number is given as its text).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sub-response's status: `429`, `503` or `504`.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The sub-response classified as a top-level Graph response (its
    /// [`retry_after`](Throttle::retry_after) is the sub-response's `Retry-After`).
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }
}

/// The [`GraphBatch`](super::Preset::GraphBatch) preset: for a `200`, one signal for
/// the throttled sub-responses in `body` (see the [module docs](self) for how they are
/// combined), or `None` when none was throttled; any other status is classified by
/// [`graph`](super::graph) (a batch can be refused as a whole).
pub fn graph_batch(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    now: SystemTime,
) -> Option<Throttle> {
    if status != StatusCode::OK {
        return super::graph(status, headers, body, now);
    }
    body.and_then(|body| combine(&throttled(body, now)))
        .or_else(|| super::graph(status, headers, None, now))
}

/// The refused sub-requests of a Graph `$batch` response body
/// (`{"responses":[{"id","status","headers","body"}, ...]}`), in the order they
/// appear; empty for anything else.
///
/// Never panics. The body may be cut anywhere (by a read cap): every sub-response
/// that lies wholly in it is read, the one cut short and those after it are not. At
/// most [`MAX_SUB_RESPONSES`] elements are read.
pub fn throttled(body: &[u8], now: SystemTime) -> Vec<ThrottledSubRequest> {
    let mut found = Vec::new();
    let mut scanner = Scanner { bytes: body, at: 0 };
    if scanner.responses() {
        scanner.each_element(MAX_SUB_RESPONSES, |element| {
            if let Ok(Value::Object(entry)) = serde_json::from_slice::<Value>(element) {
                found.extend(sub_response(&entry, now));
            }
        });
    }
    found
}

/// Classifies one sub-response; `None` unless it was refused with a throttle.
fn sub_response(entry: &Map<String, Value>, now: SystemTime) -> Option<ThrottledSubRequest> {
    let id = match entry.get("id")? {
        Value::String(id) => id.clone(),
        Value::Number(id) => id.to_string(),
        _ => return None,
    };
    let status = entry
        .get("status")?
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())?;
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let mut headers = HeaderMap::new();
    if let Some(Value::Object(fields)) = entry.get("headers") {
        for (name, value) in fields.iter().take(MAX_SUB_HEADERS) {
            let value = match value {
                Value::String(text) => HeaderValue::from_str(text).ok(),
                Value::Number(n) => HeaderValue::from_str(&n.to_string()).ok(),
                _ => None,
            };
            if let (Ok(name), Some(value)) = (HeaderName::from_bytes(name.as_bytes()), value) {
                headers.append(name, value);
            }
        }
    }
    let body = entry.get("body").and_then(|b| serde_json::to_vec(b).ok());
    let throttle = super::graph(status, &headers, body.as_deref(), now)?;
    Some(ThrottledSubRequest {
        id,
        status,
        throttle,
    })
}

/// One signal for a batch: see the module docs.
fn combine(subs: &[ThrottledSubRequest]) -> Option<Throttle> {
    if subs.is_empty() {
        return None;
    }
    let any_kind = |kind| subs.iter().any(|s| s.throttle.kind() == kind);
    let kind = [
        ThrottleKind::Concurrency,
        ThrottleKind::Rate,
        ThrottleKind::Quota,
    ]
    .into_iter()
    .find(|&kind| any_kind(kind))
    .unwrap_or(ThrottleKind::Overload);
    let any_scope = |scope| subs.iter().any(|s| s.throttle.scope() == scope);
    let scope = [ThrottleScope::Global, ThrottleScope::Key]
        .into_iter()
        .find(|&scope| any_scope(scope))
        .unwrap_or(ThrottleScope::Unknown);
    let throttle = Throttle::new(kind, scope, ThrottleSource::GraphBatch);
    Some(
        match subs.iter().filter_map(|s| s.throttle.resume_after()).max() {
            Some(wait) => throttle.with_retry_after(wait),
            None => throttle,
        },
    )
}

/// Steps over JSON text without building it, so that a body cut short still yields
/// its complete elements. Iterative: nesting depth costs no stack. It finds the
/// boundaries of values only; `serde_json` validates each element it hands out.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` after optional whitespace.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_space();
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    /// Moves past the value that starts here (after whitespace) and returns its bytes;
    /// `None` when the text ends inside it.
    fn value(&mut self) -> Option<&'a [u8]> {
        self.skip_space();
        let start = self.at;
        match self.peek()? {
            b'"' => self.string()?,
            b'{' | b'[' => self.nested()?,
            _ => {
                while matches!(
                    self.peek(),
                    Some(b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'+' | b'-' | b'.')
                ) {
                    self.at += 1;
                }
                if self.at == start {
                    return None;
                }
            }
        }
        self.bytes.get(start..self.at)
    }

    /// At a `"`: moves past the closing quote.
    fn string(&mut self) -> Option<()> {
        self.at += 1;
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                // The escaped byte cannot close the string.
                b'\\' => self.at += 2,
                _ => self.at += 1,
            }
        }
    }

    /// At a `{` or `[`: moves past its matching close.
    fn nested(&mut self) -> Option<()> {
        let mut depth = 0_usize;
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        self.at += 1;
                        return Some(());
                    }
                }
                _ => {}
            }
            self.at += 1;
        }
    }

    /// At the start of the body: moves into the top-level object's `"responses"` array
    /// (its first occurrence); `false` if there is none.
    fn responses(&mut self) -> bool {
        if !self.eat(b'{') {
            return false;
        }
        loop {
            self.skip_space();
            if self.peek() != Some(b'"') {
                return false;
            }
            let Some(key) = self.value() else {
                return false;
            };
            if !self.eat(b':') {
                return false;
            }
            if serde_json::from_slice::<String>(key).is_ok_and(|key| key == "responses") {
                return self.eat(b'[');
            }
            if self.value().is_none() || !self.eat(b',') {
                return false;
            }
        }
    }

    /// Inside an array: hands each complete element to `f`, at most `max`.
    fn each_element(&mut self, max: usize, mut f: impl FnMut(&'a [u8])) {
        if self.eat(b']') {
            return;
        }
        for _ in 0..max {
            let Some(element) = self.value() else {
                return;
            };
            f(element);
            if !self.eat(b',') {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// The shape `API_FACTS.md` gives, with one success, one rate limit, one
    /// concurrency refusal and one success again.
    const BATCH: &str = r#"{"responses":[
        {"id":"1","status":200,"headers":{"Content-Type":"application/json"},"body":{"value":[{"id":"AAMk","subject":"hi \"there\" ]}"}]}},
        {"id":"2","status":429,"headers":{"Retry-After":"5","Content-Type":"application/json"},"body":{"error":{"code":"TooManyRequests","message":"Please retry again later.","innerError":{}}}},
        {"id":"3","status":429,"headers":{},"body":{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}},
        {"id":"4","status":200,"headers":{},"body":{}}
    ]}"#;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + S(1_700_000_000)
    }

    fn ids(body: &[u8]) -> Vec<String> {
        throttled(body, now())
            .iter()
            .map(|t| t.id().to_owned())
            .collect()
    }

    #[test]
    fn throttled_sub_requests_are_found_with_their_own_signals() {
        let found = throttled(BATCH.as_bytes(), now());
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].id(), "2");
        assert_eq!(found[0].status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(found[0].throttle().kind(), ThrottleKind::Rate);
        assert_eq!(found[0].throttle().scope(), ThrottleScope::Key);
        assert_eq!(found[0].throttle().retry_after(), Some(S(5)));
        assert_eq!(found[0].throttle().source(), ThrottleSource::RetryAfter);
        assert_eq!(found[1].id(), "3");
        assert_eq!(found[1].throttle().kind(), ThrottleKind::Concurrency);
        assert_eq!(found[1].throttle().retry_after(), None);
    }

    #[test]
    fn the_batch_signal_is_concurrency_with_the_largest_hint() {
        let throttle = graph_batch(
            StatusCode::OK,
            &HeaderMap::new(),
            Some(BATCH.as_bytes()),
            now(),
        )
        .unwrap();
        assert_eq!(throttle.kind(), ThrottleKind::Concurrency);
        assert_eq!(throttle.scope(), ThrottleScope::Key);
        assert_eq!(throttle.retry_after(), Some(S(5)));
        assert_eq!(throttle.source(), ThrottleSource::GraphBatch);

        let two_hints = r#"{"responses":[
            {"id":"a","status":429,"headers":{"retry-after":"3"}},
            {"id":"b","status":503,"headers":{"Retry-After":30}},
            {"id":"c","status":429,"headers":{"Retry-After":"7"}}]}"#;
        let throttle = graph_batch(
            StatusCode::OK,
            &HeaderMap::new(),
            Some(two_hints.as_bytes()),
            now(),
        )
        .unwrap();
        assert_eq!(throttle.kind(), ThrottleKind::Rate);
        assert_eq!(throttle.scope(), ThrottleScope::Key);
        assert_eq!(throttle.retry_after(), Some(S(30)));
        assert_eq!(ids(two_hints.as_bytes()), ["a", "b", "c"]);
    }

    #[test]
    fn a_batch_without_throttled_sub_requests_gives_no_signal() {
        let fine = r#"{"responses":[{"id":"1","status":200,"body":{}},{"id":"2","status":404,"body":{"error":{"code":"ErrorItemNotFound"}}}]}"#;
        assert_eq!(
            graph_batch(
                StatusCode::OK,
                &HeaderMap::new(),
                Some(fine.as_bytes()),
                now()
            ),
            None
        );
        assert_eq!(
            graph_batch(StatusCode::OK, &HeaderMap::new(), None, now()),
            None
        );
    }

    #[test]
    fn a_refused_batch_is_classified_as_graph_does() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("12"));
        let throttle = graph_batch(StatusCode::TOO_MANY_REQUESTS, &headers, None, now()).unwrap();
        assert_eq!(throttle.retry_after(), Some(S(12)));
        assert_eq!(throttle.source(), ThrottleSource::RetryAfter);
    }

    #[test]
    fn hints_are_dates_or_seconds_and_capped() {
        let body = r#"{"responses":[
            {"id":"date","status":429,"headers":{"Retry-After":"Tue, 14 Nov 2023 22:14:20 GMT"}},
            {"id":"huge","status":429,"headers":{"Retry-After":"1000000000000"}},
            {"id":"junk","status":429,"headers":{"Retry-After":"soon","Bad Name":"x","x-bad-value":"a\nb"}}]}"#;
        let found = throttled(body.as_bytes(), now());
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].throttle().retry_after(), Some(S(60)));
        assert_eq!(
            found[1].throttle().retry_after(),
            Some(crate::classify::MAX_HINT)
        );
        assert_eq!(found[2].throttle().retry_after(), None);
    }

    #[test]
    fn a_body_cut_short_gives_the_complete_sub_responses() {
        let bytes = BATCH.as_bytes();
        let third = BATCH.find(r#"{"id":"3""#).unwrap();
        assert_eq!(ids(&bytes[..third]), ["2"]);
        assert_eq!(ids(&bytes[..third + 10]), ["2"]);
        let fourth = BATCH.find(r#"{"id":"4""#).unwrap();
        assert_eq!(ids(&bytes[..fourth]), ["2", "3"]);
        assert!(ids(&bytes[..20]).is_empty());
    }

    #[test]
    fn the_responses_key_may_come_anywhere_and_ids_may_be_numbers() {
        let body = r#" { "@odata.context" : {"responses":[{"id":"no"}]}, "nextLink": "x\"y",
            "responses" : [ {"id":7,"status":429} ] } "#;
        assert_eq!(ids(body.as_bytes()), ["7"]);
    }

    #[test]
    fn at_most_the_cap_of_sub_responses_is_read() {
        let entries: Vec<String> = (0..MAX_SUB_RESPONSES + 5)
            .map(|i| format!(r#"{{"id":"{i}","status":429}}"#))
            .collect();
        let body = format!(r#"{{"responses":[{}]}}"#, entries.join(","));
        assert_eq!(throttled(body.as_bytes(), now()).len(), MAX_SUB_RESPONSES);
    }

    #[test]
    fn garbage_and_deep_nesting_give_nothing() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{",
            b"{\"responses\"",
            b"{\"responses\":",
            b"{\"responses\":{}}",
            b"{\"responses\":[1,\"x\",null,{\"id\":{}}]}",
            b"{\"responses\":[{\"id\":\"1\",\"status\":99999}]}",
            b"{\"responses\":[{\"id\":\"1\",\"status\":-429}]}",
            b"{\"responses\":[}]",
            b"\xff\xfe",
        ] {
            assert!(throttled(body, now()).is_empty(), "{body:?}");
        }
        let deep = format!(
            r#"{{"responses":[{}{}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(throttled(deep.as_bytes(), now()).is_empty());
        let unclosed = format!(r#"{{"responses":[{}"#, "{\"a\":".repeat(100_000));
        assert!(throttled(unclosed.as_bytes(), now()).is_empty());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = throttled(&body, now());
            let _ = graph_batch(StatusCode::OK, &HeaderMap::new(), Some(&body), now());
        }

        #[test]
        fn never_panics_on_json_like_text(body in r#"[{}\[\]",:\\ a-z0-9]{0,200}"#) {
            let body = format!(r#"{{"responses":[{body}"#);
            let _ = throttled(body.as_bytes(), now());
        }

        #[test]
        fn a_prefix_finds_a_prefix_of_the_ids(cut in 0..BATCH.len()) {
            let all = ids(BATCH.as_bytes());
            let some = ids(&BATCH.as_bytes()[..cut]);
            prop_assert!(all.starts_with(&some));
        }
    }
}
