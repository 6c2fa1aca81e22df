//! The Google Chat client of `chat_space_writes` (and of `goodput`'s Chat scenario):
//! message writes and reads under per-space and per-project quotas at once, reads and
//! writes counted apart.
//!
//! Chat allows per space 900 reads and 60 writes per minute, per project 3000 message
//! reads and 3000 message writes per minute. The simulator keeps the shape with the
//! minute shrunk to [`WINDOW`] (2 s): per space 90 reads and 6 writes, per project 360
//! reads and 24 writes (four spaces' worth). See
//! `examples/examples/chat_space_writes.rs` for why the stack is built this way.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tollgate::classify::ThrottleClassifierLayer;
use tollgate::key::{Constant, PathSegment};
use tollgate::quota::{Quota, QuotaSet, ReadWrite};
use tollgate::retry::Backoff;
use tollgate::{QuotaWindowLayer, RetryAfterBackoffLayer};
use tollgate_sim::ChatSim;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use crate::strategy::{Strategy, Svc, boxed, naive_retry};

/// Chat's minute, shrunk.
pub const WINDOW: Duration = Duration::from_secs(2);
/// Reads per space per [`WINDOW`].
pub const SPACE_READS: u32 = 90;
/// Writes per space per [`WINDOW`].
pub const SPACE_WRITES: u32 = 6;
/// Message reads per project per [`WINDOW`].
pub const PROJECT_READS: u32 = 360;
/// Message writes per project per [`WINDOW`].
pub const PROJECT_WRITES: u32 = 24;
/// The project this client bills to (`x-goog-user-project`).
pub const PROJECT: &str = "tollgate-demo";
/// Time between our admission and the server's count.
pub const MARGIN: Duration = Duration::from_millis(20);
/// How long the simulator holds each admitted request.
pub const LATENCY: Duration = Duration::from_millis(5);

/// The Chat simulator with these quotas and `spaces` spaces.
pub fn simulator(spaces: usize) -> ChatSim {
    ChatSim::new()
        .spaces(spaces)
        .space_reads(SPACE_READS, WINDOW)
        .space_writes(SPACE_WRITES, WINDOW)
        .project_reads(PROJECT_READS, WINDOW)
        .project_writes(PROJECT_WRITES, WINDOW)
        .latency(LATENCY)
}

fn sliding(limit: u32) -> Result<QuotaSet, BoxError> {
    Ok(QuotaSet::from(
        Quota::sliding(limit, WINDOW)?.with_margin(MARGIN)?,
    ))
}

/// The retry layer of `tollgate` and `retry-only`: Google's preset with its 1 s, 2 s,
/// 4 s, ... backoff scaled down to 100 ms (capped at one window); the server's
/// `RetryInfo` is obeyed as it comes.
pub fn retry_layer() -> RetryAfterBackoffLayer {
    RetryAfterBackoffLayer::google()
        .backoff(Backoff::full_jitter(Duration::from_millis(100), WINDOW))
        .max_elapsed(Duration::from_secs(30))
}

/// The client of `strategy`:
///
/// - `tollgate`: `RetryAfterBackoff` ([`retry_layer`]) → `QuotaWindow` per project
///   (constant key, classed reads/writes) → `QuotaWindow` per space (`PathSegment`,
///   classed) → `ThrottleClassifier` (Google preset) → `hyper_util` client, every
///   quota sliding and widened by [`MARGIN`];
/// - `retry-only`: [`retry_layer`] → `ThrottleClassifier` → client;
/// - `naive`: the bare client (see [`write`](fn@write) and [`read`] for its retries).
///
/// # Errors
///
/// If a quota or the space key pattern is invalid (they are not).
pub fn build_client(strategy: Strategy) -> Result<Svc<Full<Bytes>>, BoxError> {
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    Ok(match strategy {
        Strategy::Tollgate => {
            let (space_reads, space_writes) = (sliding(SPACE_READS)?, sliding(SPACE_WRITES)?);
            let per_space = QuotaWindowLayer::new(
                space_writes.clone(),
                PathSegment::pattern("/v1/spaces/{space}/messages", "space")?,
            )
            .classify(ReadWrite)
            .quotas_for(move |_space, class| {
                Some(if class == "read" {
                    space_reads.clone()
                } else {
                    space_writes.clone()
                })
            });

            let (project_reads, project_writes) =
                (sliding(PROJECT_READS)?, sliding(PROJECT_WRITES)?);
            let per_project = QuotaWindowLayer::new(project_writes.clone(), Constant::new(PROJECT))
                .classify(ReadWrite)
                .quotas_for(move |_project, class| {
                    Some(if class == "read" {
                        project_reads.clone()
                    } else {
                        project_writes.clone()
                    })
                });

            boxed(
                ServiceBuilder::new()
                    .layer(retry_layer())
                    .layer(per_project)
                    .layer(per_space)
                    .layer(ThrottleClassifierLayer::google())
                    .service(http),
            )
        }
        Strategy::RetryOnly => boxed(
            ServiceBuilder::new()
                .layer(retry_layer())
                .layer(ThrottleClassifierLayer::google())
                .service(http),
        ),
        Strategy::Naive => boxed(http),
    })
}

async fn call(client: Svc<Full<Bytes>>, request: Request<Full<Bytes>>) -> Result<Value, String> {
    let response = client.oneshot(request).await.map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    serde_json::from_slice(response.body()).map_err(|e| e.to_string())
}

async fn write_once(client: Svc<Full<Bytes>>, url: &str, text: &str) -> Result<(), String> {
    let body = json!({ "text": text }).to_string();
    let request = Request::post(url)
        .header("content-type", "application/json")
        .header("x-goog-user-project", PROJECT)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    call(client, request).await.map(drop)
}

async fn read_once(client: Svc<Full<Bytes>>, url: &str) -> Result<Vec<String>, String> {
    let request = Request::get(format!("{url}?pageSize=1000"))
        .header("x-goog-user-project", PROJECT)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let body = call(client, request).await?;
    Ok(body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Writes a message `text` to the space at `url` (its messages URL), with the
/// strategy's retries: tollgate and retry-only retry in the stack; naive retries here,
/// blind to `RetryInfo`.
///
/// # Errors
///
/// The last failure (a status other than `200`, a transport error, a bad body).
pub async fn write(
    strategy: Strategy,
    client: Svc<Full<Bytes>>,
    url: &str,
    text: &str,
) -> Result<(), String> {
    if strategy == Strategy::Naive {
        naive_retry(move || write_once(client.clone(), url, text)).await
    } else {
        write_once(client, url, text).await
    }
}

/// The texts of the space's messages (the first 1000), with the strategy's retries.
///
/// # Errors
///
/// The last failure (a status other than `200`, a transport error, a bad body).
pub async fn read(
    strategy: Strategy,
    client: Svc<Full<Bytes>>,
    url: &str,
) -> Result<Vec<String>, String> {
    if strategy == Strategy::Naive {
        naive_retry(move || read_once(client.clone(), url)).await
    } else {
        read_once(client, url).await
    }
}
