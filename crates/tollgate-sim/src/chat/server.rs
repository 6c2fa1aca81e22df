//! The Chat simulator's HTTP side: routing, the three endpoints and admission.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::response::Response;
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, Uri};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{ChatSim, ChatStats, DEFAULT_PROJECT, ProjectStats, SpaceStats, body};
use crate::lock;
use crate::response;
use crate::running::sealed::Serve;
use crate::stats::{Limit, TimelineBucket};
use crate::timing::Timing;
use crate::window::{Counted, admit_all, retry_after_secs};

/// The page size of a listing without `pageSize`.
const DEFAULT_PAGE_SIZE: usize = 25;
/// The largest `pageSize` honoured; larger values are clamped.
const MAX_PAGE_SIZE: usize = 1000;

/// The configured quotas.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) space_reads: Limit,
    pub(crate) space_writes: Limit,
    pub(crate) project_reads: Limit,
    pub(crate) project_writes: Limit,
    pub(crate) space_creations: Limit,
    pub(crate) space_creations_long: Limit,
    pub(crate) retry_after: bool,
}

/// State shared by every handler of one running simulator (`pub` in a private module:
/// see [`Serve::Shared`](crate::running::sealed::Serve::Shared)).
#[expect(missing_debug_implementations, reason = "not reachable")]
pub struct Shared {
    pub(crate) config: Config,
    pub(crate) timing: Timing,
    pub(crate) state: Mutex<State>,
}

/// Everything counted, behind one lock.
#[derive(Default)]
pub(crate) struct State {
    spaces: BTreeMap<String, SpaceState>,
    projects: BTreeMap<String, ProjectState>,
    created: u64,
    not_found: u64,
    bad_requests: u64,
    timeline: Vec<TimelineBucket>,
}

struct SpaceState {
    reads: Counted,
    writes: Counted,
    /// The texts written, oldest first.
    messages: Vec<String>,
    stats: SpaceStats,
}

struct ProjectState {
    reads: Counted,
    writes: Counted,
    creations: Counted,
    creations_long: Counted,
    stats: ProjectStats,
}

impl State {
    pub(crate) fn add_space(&mut self, name: String, config: &Config) {
        self.spaces.insert(
            name,
            SpaceState {
                reads: Counted::new(config.space_reads),
                writes: Counted::new(config.space_writes),
                messages: Vec::new(),
                stats: SpaceStats::default(),
            },
        );
    }
}

/// What a request does, for admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Read,
    Write,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn project<'a>(
        &self,
        projects: &'a mut BTreeMap<String, ProjectState>,
        name: &str,
    ) -> &'a mut ProjectState {
        let config = &self.config;
        projects
            .entry(name.to_owned())
            .or_insert_with(|| ProjectState {
                reads: Counted::new(config.project_reads),
                writes: Counted::new(config.project_writes),
                creations: Counted::new(config.space_creations),
                creations_long: Counted::new(config.space_creations_long),
                stats: ProjectStats::default(),
            })
    }

    /// A message read or write on `space` for `project`; `Ok` carries the body.
    fn message(
        &self,
        class: Class,
        project: &str,
        space: &str,
        text: Option<String>,
        page_size: usize,
    ) -> Result<Value, Answer> {
        let now = Instant::now();
        let mut guard = self.lock();
        let State {
            spaces,
            projects,
            not_found,
            timeline,
            ..
        } = &mut *guard;
        let Some(space_state) = spaces.get_mut(space) else {
            *not_found += 1;
            return Err(Answer::not_found(space));
        };
        let project_state = self.project(projects, project);
        let (space_counted, space_stats, project_counted, project_stats) = match class {
            Class::Read => (
                &mut space_state.reads,
                &mut space_state.stats.reads,
                &mut project_state.reads,
                &mut project_state.stats.message_reads,
            ),
            Class::Write => (
                &mut space_state.writes,
                &mut space_state.stats.writes,
                &mut project_state.writes,
                &mut project_state.stats.message_writes,
            ),
        };
        space_counted.arrive(space_stats, now);
        project_counted.arrive(project_stats, now);
        let decision = admit_all(
            &mut [&mut space_counted.quota, &mut project_counted.quota],
            now,
        );
        self.timing.record(timeline, now, decision.is_ok());
        if let Err(wait) = decision {
            space_stats.settle(false, 0);
            project_stats.settle(false, 0);
            return Err(Answer::throttled(wait, self.config.retry_after));
        }
        let (served, answer) = match (class, text) {
            (Class::Write, text) => {
                let text = text.unwrap_or_default();
                space_state.messages.push(text.clone());
                let n = space_state.messages.len();
                (1, message_json(space, n, &text))
            }
            (Class::Read, _) => {
                let messages: Vec<Value> = space_state
                    .messages
                    .iter()
                    .take(page_size)
                    .enumerate()
                    .map(|(i, text)| message_json(space, i + 1, text))
                    .collect();
                let mut page = Map::new();
                let count = messages.len() as u64;
                if count > 0 {
                    page.insert("messages".into(), messages.into());
                }
                (count, page.into())
            }
        };
        space_stats.settle(true, served);
        project_stats.settle(true, served);
        Ok(answer)
    }

    /// A space creation for `project`; `Ok` carries the body.
    fn create_space(&self, project: &str, request: &Map<String, Value>) -> Result<Value, Answer> {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let project_state = self.project(&mut state.projects, project);
        let stats = &mut project_state.stats;
        project_state
            .creations
            .arrive(&mut stats.space_creations, now);
        stats.space_creations_max_in_long_window = project_state.creations_long.peak.see(now);
        let decision = admit_all(
            &mut [
                &mut project_state.creations.quota,
                &mut project_state.creations_long.quota,
            ],
            now,
        );
        stats.space_creations.settle(decision.is_ok(), 0);
        self.timing
            .record(&mut state.timeline, now, decision.is_ok());
        if let Err(wait) = decision {
            return Err(Answer::throttled(wait, self.config.retry_after));
        }
        state.created += 1;
        let id = format!("created-{}", state.created);
        state.add_space(id.clone(), &self.config);
        let mut space = Map::new();
        space.insert("name".into(), format!("spaces/{id}").into());
        for key in ["spaceType", "displayName"] {
            if let Some(value) = request.get(key) {
                space.insert(key.into(), value.clone());
            }
        }
        Ok(space.into())
    }
}

fn message_json(space: &str, n: usize, text: &str) -> Value {
    json!({
        "name": format!("spaces/{space}/messages/{n}"),
        "text": text,
        "space": { "name": format!("spaces/{space}") },
    })
}

/// A non-`200` answer.
struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    body: Value,
}

impl Answer {
    fn throttled(wait: Duration, send_retry_after: bool) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: send_retry_after.then(|| retry_after_secs(wait)),
            body: body::resource_exhausted(wait),
        }
    }

    fn not_found(space: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            retry_after: None,
            body: body::error(
                404,
                "NOT_FOUND",
                &format!("Requested entity was not found: spaces/{space}."),
            ),
        }
    }

    fn bad_request(message: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            retry_after: None,
            body: body::error(400, "INVALID_ARGUMENT", message),
        }
    }
}

/// Holds an admitted request for the configured latency, then answers.
async fn answer(shared: &Shared, result: Result<Value, Answer>) -> Response {
    if result.is_ok() {
        shared.timing.hold().await;
    }
    respond(result)
}

fn respond(result: Result<Value, Answer>) -> Response {
    let answer = result.map_or_else(|e| e, Answer::from);
    response::json(
        answer.status,
        "application/json; charset=UTF-8",
        answer.retry_after,
        &answer.body,
    )
}

impl From<Value> for Answer {
    fn from(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            retry_after: None,
            body,
        }
    }
}

impl Serve for ChatSim {
    const NAME: &'static str = "RunningChatSim";
    type Shared = Shared;

    fn router(shared: Arc<Shared>) -> Router {
        Router::new()
            .route("/v1/spaces", post(create_space))
            .route(
                "/v1/spaces/{space}/messages",
                get(list_messages).post(create_message),
            )
            .fallback(fallback)
            .with_state(shared)
    }

    fn stats(shared: &Shared) -> ChatStats {
        let state = shared.lock();
        let config = &shared.config;
        ChatStats {
            per_space: state
                .spaces
                .iter()
                .map(|(name, space)| (name.clone(), space.stats))
                .collect(),
            per_project: state
                .projects
                .iter()
                .map(|(name, project)| (name.clone(), project.stats))
                .collect(),
            not_found: state.not_found,
            bad_requests: state.bad_requests,
            space_reads_limit: config.space_reads,
            space_writes_limit: config.space_writes,
            project_reads_limit: config.project_reads,
            project_writes_limit: config.project_writes,
            space_creations_limit: config.space_creations,
            space_creations_long_limit: config.space_creations_long,
            timeline: state.timeline.clone(),
        }
    }
}

async fn fallback(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    shared.lock().not_found += 1;
    respond(Err(Answer {
        status: StatusCode::NOT_FOUND,
        retry_after: None,
        body: body::error(404, "NOT_FOUND", "Requested entity was not found."),
    }))
}

fn project(headers: &HeaderMap) -> &str {
    headers
        .get("x-goog-user-project")
        .and_then(|v| v.to_str().ok())
        .filter(|p| !p.is_empty())
        .unwrap_or(DEFAULT_PROJECT)
}

/// A JSON object body; an empty body is an empty object.
fn object(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("Invalid JSON payload: expected an object.".to_owned()),
        Err(e) => Err(format!("Invalid JSON payload received. {e}.")),
    }
}

fn page_size(query: Option<&str>) -> Result<usize, String> {
    let mut size = DEFAULT_PAGE_SIZE;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        if let Some(value) = pair.strip_prefix("pageSize=") {
            size = value
                .parse()
                .map_err(|_| format!("Invalid value at 'page_size' ({value})."))?;
        }
    }
    Ok(size.clamp(1, MAX_PAGE_SIZE))
}

fn bad_request(shared: &Shared, message: &str) -> Response {
    shared.lock().bad_requests += 1;
    respond(Err(Answer::bad_request(message)))
}

/// `POST /v1/spaces/{space}/messages`.
async fn create_message(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(space): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match object(&body) {
        Ok(request) => request,
        Err(message) => return bad_request(&shared, &message),
    };
    let text = request
        .get("text")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let result = shared.message(Class::Write, project(&headers), &space, text, 0);
    answer(&shared, result).await
}

/// `GET /v1/spaces/{space}/messages`.
async fn list_messages(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(space): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let size = match page_size(uri.query()) {
        Ok(size) => size,
        Err(message) => return bad_request(&shared, &message),
    };
    let result = shared.message(Class::Read, project(&headers), &space, None, size);
    answer(&shared, result).await
}

/// `POST /v1/spaces`.
async fn create_space(
    AxumState(shared): AxumState<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match object(&body) {
        Ok(request) => request,
        Err(message) => return bad_request(&shared, &message),
    };
    let result = shared.create_space(project(&headers), &request);
    answer(&shared, result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_and_clamps() {
        assert_eq!(page_size(None), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(Some("pageSize=3&filter=x")), Ok(3));
        assert_eq!(page_size(Some("pageSize=0")), Ok(1));
        assert_eq!(page_size(Some("pageSize=5000")), Ok(MAX_PAGE_SIZE));
        assert!(page_size(Some("pageSize=x")).is_err());
    }

    #[test]
    fn bodies_must_be_json_objects_or_empty() {
        assert_eq!(object(b" ").map(|m| m.len()), Ok(0));
        assert!(object(b"[1]").is_err());
        assert!(object(b"{").is_err());
        assert_eq!(object(br#"{"text":"hi"}"#).map(|m| m.len()), Ok(1));
    }
}
