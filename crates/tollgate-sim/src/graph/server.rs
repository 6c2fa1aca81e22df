//! The Graph simulator's HTTP side: routing, the two endpoints and `$batch` dispatch.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, Uri};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{DEFAULT_PAGE_SIZE, GraphSim, MAX_BATCH_REQUESTS, MAX_PAGE_SIZE, body};
use crate::lock;
use crate::response;
use crate::running::sealed::Serve;
use crate::stats::{KeyStats, SimStats, TimelineBucket};
use crate::timing::Timing;
use crate::window::{Decision, KeyState, Limits, retry_after_secs};

/// State shared by every handler of one running simulator (`pub` in a private module:
/// see [`Serve::Shared`](crate::running::sealed::Serve::Shared)).
#[expect(missing_debug_implementations, reason = "not reachable")]
pub struct Shared {
    pub(crate) limits: Limits,
    pub(crate) retry_after: bool,
    pub(crate) batch_parallelism: usize,
    pub(crate) messages_per_mailbox: u64,
    pub(crate) base_url: String,
    pub(crate) mailboxes: Vec<(String, Mutex<KeyState>)>,
    pub(crate) index: HashMap<String, usize>,
    pub(crate) batches: AtomicU64,
    pub(crate) not_found: AtomicU64,
    pub(crate) bad_requests: AtomicU64,
    pub(crate) next_request_id: AtomicU64,
    pub(crate) timing: Timing,
    pub(crate) timeline: Mutex<Vec<TimelineBucket>>,
}

impl Shared {
    fn request_id(&self) -> String {
        let n = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        format!("00000000-0000-4000-8000-{n:012x}")
    }
}

impl Serve for GraphSim {
    const NAME: &'static str = "RunningSim";
    type Shared = Shared;

    fn router(shared: Arc<Shared>) -> Router {
        Router::new()
            .route("/v1.0/users/{mailbox}/messages", get(messages))
            .route("/v1.0/$batch", post(batch))
            .fallback(fallback)
            .with_state(shared)
    }

    fn stats(shared: &Shared) -> SimStats {
        let mut totals = KeyStats::default();
        let per_mailbox = shared
            .mailboxes
            .iter()
            .map(|(name, state)| {
                let stats = lock(state).stats;
                totals.accumulate(&stats);
                (name.clone(), stats)
            })
            .collect();
        SimStats {
            per_mailbox,
            totals,
            batches: shared.batches.load(Ordering::Relaxed),
            not_found: shared.not_found.load(Ordering::Relaxed),
            bad_requests: shared.bad_requests.load(Ordering::Relaxed),
            limit_in_window: shared.limits.quota as u64,
            window: shared.limits.window,
            concurrency_limit: shared.limits.concurrency as u64,
            timeline: lock(&shared.timeline).clone(),
        }
    }
}

/// One answer, before it becomes an HTTP response or a `$batch` sub-response.
struct Outcome {
    status: StatusCode,
    retry_after: Option<u64>,
    body: Value,
}

impl Outcome {
    fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            retry_after: None,
            body,
        }
    }

    fn into_response(self) -> Response {
        response::json(
            self.status,
            "application/json",
            self.retry_after,
            &self.body,
        )
    }

    fn into_sub_response(self, id: &str) -> Value {
        let mut headers = Map::new();
        headers.insert("Content-Type".into(), "application/json".into());
        if let Some(secs) = self.retry_after {
            headers.insert("Retry-After".into(), secs.to_string().into());
        }
        json!({
            "id": id,
            "status": self.status.as_u16(),
            "headers": headers,
            "body": self.body,
        })
    }
}

/// Holds one admitted request's concurrency slot; frees it on drop, also when the
/// client goes away and the handler future is dropped.
struct InFlight<'a>(&'a Mutex<KeyState>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.0).depart();
    }
}

fn client_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    Path(mailbox): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let crid = client_request_id(&headers);
    list_messages(&shared, &mailbox, uri.query(), crid.as_deref())
        .await
        .into_response()
}

async fn fallback(State(shared): State<Arc<Shared>>) -> Response {
    shared.not_found.fetch_add(1, Ordering::Relaxed);
    Outcome::new(
        StatusCode::NOT_FOUND,
        body::error("ResourceNotFound", "Resource not found."),
    )
    .into_response()
}

/// `GET /users/{mailbox}/messages`: admission, latency, then one page.
async fn list_messages(
    shared: &Shared,
    mailbox: &str,
    query: Option<&str>,
    client_request_id: Option<&str>,
) -> Outcome {
    let Some(&index) = shared.index.get(mailbox) else {
        shared.not_found.fetch_add(1, Ordering::Relaxed);
        return Outcome::new(
            StatusCode::NOT_FOUND,
            body::error(
                "ErrorInvalidUser",
                &format!("The requested user '{mailbox}' is invalid."),
            ),
        );
    };
    let state = &shared.mailboxes[index].1;
    let now = Instant::now();
    let decision = lock(state).arrive(now, &shared.limits);
    shared.timing.record(
        &mut lock(&shared.timeline),
        now,
        decision == Decision::Admit,
    );
    match decision {
        Decision::Admit => {}
        Decision::OverConcurrency => {
            return Outcome::new(StatusCode::TOO_MANY_REQUESTS, body::application_throttled());
        }
        Decision::OverQuota { wait } => {
            let request_id = shared.request_id();
            let crid = client_request_id.map_or_else(|| request_id.clone(), str::to_owned);
            return Outcome {
                status: StatusCode::TOO_MANY_REQUESTS,
                retry_after: shared.retry_after.then(|| retry_after_secs(wait)),
                body: body::too_many_requests(&request_id, &crid),
            };
        }
    }

    let _slot = InFlight(state);
    shared.timing.hold().await;
    let (top, skip) = match page_params(query) {
        Ok(params) => params,
        Err(message) => {
            shared.bad_requests.fetch_add(1, Ordering::Relaxed);
            return Outcome::new(StatusCode::BAD_REQUEST, body::error("BadRequest", &message));
        }
    };
    let total = shared.messages_per_mailbox;
    let start = skip.min(total);
    let end = skip.saturating_add(top).min(total);
    let value: Vec<Value> = (start..end)
        .map(|n| {
            json!({
                "id": format!("AAMk-{mailbox}-{n:06}"),
                "subject": format!("Message {n} of {mailbox}"),
            })
        })
        .collect();
    {
        let mut state = lock(state);
        state.stats.ok += 1;
        state.stats.messages_served += end - start;
    }
    let mut page = Map::new();
    page.insert(
        "@odata.context".into(),
        format!(
            "{}/v1.0/$metadata#users('{mailbox}')/messages",
            shared.base_url
        )
        .into(),
    );
    page.insert("value".into(), value.into());
    if end < total {
        // Graph writes `$` as `%24` in its links; clients follow them verbatim.
        let next = format!(
            "{}/v1.0/users/{mailbox}/messages?%24top={top}&%24skip={end}",
            shared.base_url
        );
        page.insert("@odata.nextLink".into(), next.into());
    }
    Outcome::new(StatusCode::OK, page.into())
}

/// `$top` and `$skip` from a query string (keys may be percent-encoded, as in
/// Graph's own links); other parameters are ignored. `$top` is clamped to
/// `1..=MAX_PAGE_SIZE`.
fn page_params(query: Option<&str>) -> Result<(u64, u64), String> {
    let mut top = DEFAULT_PAGE_SIZE;
    let mut skip = 0;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode_str(key).decode_utf8_lossy();
        let value = percent_decode_str(value).decode_utf8_lossy();
        let parse = |name: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("Invalid value '{value}' for query option '{name}'."))
        };
        match key.as_ref() {
            "$top" => top = parse("$top")?,
            "$skip" => skip = parse("$skip")?,
            _ => {}
        }
    }
    Ok((top.clamp(1, MAX_PAGE_SIZE), skip))
}

/// One parsed `$batch` sub-request.
struct SubRequest {
    id: String,
    method: String,
    url: String,
}

fn parse_batch(body: &[u8]) -> Result<Vec<SubRequest>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid batch payload: {e}."))?;
    let requests = value
        .get("requests")
        .and_then(Value::as_array)
        .ok_or("Invalid batch payload: 'requests' must be an array.")?;
    if requests.is_empty() || requests.len() > MAX_BATCH_REQUESTS {
        return Err(format!(
            "The number of batch requests must be between 1 and {MAX_BATCH_REQUESTS}."
        ));
    }
    let mut ids = HashSet::new();
    requests
        .iter()
        .map(|request| {
            let field = |name: &str| {
                request
                    .get(name)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| format!("Invalid batch request: '{name}' is required."))
            };
            let sub = SubRequest {
                id: field("id")?,
                method: field("method")?,
                url: field("url")?,
            };
            if !ids.insert(sub.id.clone()) {
                return Err(format!("Batch request id '{}' is not unique.", sub.id));
            }
            Ok(sub)
        })
        .collect()
}

/// `POST /$batch`: each sub-request goes through the same admission as a direct
/// request, at most `batch_parallelism` at a time; the batch itself is `200`.
async fn batch(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.batches.fetch_add(1, Ordering::Relaxed);
    let requests = match parse_batch(&body) {
        Ok(requests) => requests,
        Err(message) => {
            shared.bad_requests.fetch_add(1, Ordering::Relaxed);
            return Outcome::new(StatusCode::BAD_REQUEST, body::error("BadRequest", &message))
                .into_response();
        }
    };
    let crid = client_request_id(&headers);
    let permits = Arc::new(Semaphore::new(shared.batch_parallelism));
    let mut responses: Vec<Value> = requests
        .iter()
        .map(|sub| {
            Outcome::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                body::error("InternalServerError", "The sub-request failed."),
            )
            .into_sub_response(&sub.id)
        })
        .collect();
    let mut tasks = JoinSet::new();
    for (position, sub) in requests.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let permits = Arc::clone(&permits);
        let crid = crid.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let outcome = sub_request(&shared, &sub, crid.as_deref()).await;
            (position, outcome.into_sub_response(&sub.id))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((position, response)) = joined {
            responses[position] = response;
        }
    }
    Outcome::new(StatusCode::OK, json!({ "responses": responses })).into_response()
}

async fn sub_request(shared: &Shared, sub: &SubRequest, crid: Option<&str>) -> Outcome {
    if !sub.method.eq_ignore_ascii_case("GET") {
        shared.bad_requests.fetch_add(1, Ordering::Relaxed);
        return Outcome::new(
            StatusCode::METHOD_NOT_ALLOWED,
            body::error("MethodNotAllowed", "Only GET is simulated."),
        );
    }
    // Relative to the version, as Graph expects; an absolute link of this server (an
    // `@odata.nextLink`) is accepted too.
    let url = sub.url.strip_prefix(&shared.base_url).unwrap_or(&sub.url);
    let url = url.strip_prefix("/v1.0").unwrap_or(url);
    let url = url.strip_prefix('/').unwrap_or(url);
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    };
    let mut segments = path.split('/');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some("users"), Some(mailbox), Some("messages"), None) => {
            let mailbox = percent_decode_str(mailbox).decode_utf8_lossy();
            list_messages(shared, &mailbox, query, crid).await
        }
        _ => {
            shared.not_found.fetch_add(1, Ordering::Relaxed);
            Outcome::new(
                StatusCode::NOT_FOUND,
                body::error("ResourceNotFound", "Resource not found."),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_params_accept_graph_links_and_clamp_top() {
        assert_eq!(page_params(None), Ok((DEFAULT_PAGE_SIZE, 0)));
        assert_eq!(page_params(Some("%24top=5&%24skip=10")), Ok((5, 10)));
        assert_eq!(page_params(Some("$top=0&$select=id")), Ok((1, 0)));
        assert_eq!(page_params(Some("$top=5000")), Ok((MAX_PAGE_SIZE, 0)));
        assert!(page_params(Some("$skip=x")).is_err());
    }

    #[test]
    fn batch_payloads_are_validated() {
        assert!(parse_batch(b"nope").is_err());
        assert!(parse_batch(br#"{"requests":[]}"#).is_err());
        assert!(parse_batch(br#"{"requests":[{"id":"1","method":"GET"}]}"#).is_err());
        let dup = br#"{"requests":[{"id":"1","method":"GET","url":"/a"},{"id":"1","method":"GET","url":"/b"}]}"#;
        assert!(parse_batch(dup).is_err());
        let ok = br#"{"requests":[{"id":"1","method":"GET","url":"/users/a/messages"}]}"#;
        assert_eq!(parse_batch(ok).map(|r| r.len()), Ok(1));
    }
}
