//! The mailbox sync of `mailbox_sync` (and of `goodput`'s Graph scenario): every
//! message of a mailbox paged out of a Microsoft Graph-like server by several workers
//! at once, through the client of a [`Strategy`].
//!
//! The limits are the Graph simulator's, shrunk: [`QUOTA`] requests per sliding
//! [`WINDOW`] and [`CONCURRENCY`] in flight per mailbox (Graph: 10,000 per 10 minutes
//! and 4). See `examples/examples/mailbox_sync.rs` for the whole story.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::ProgressBar;
use serde_json::Value;
use tollgate::classify::ThrottleClassifierLayer;
use tollgate::key::PathSegment;
use tollgate::quota::Quota;
use tollgate::retry::Backoff;
use tollgate::store::{ConcurrencyStore, MemoryStore, QuotaStore};
use tollgate::{ConcurrencyPerKeyLayer, QuotaWindowLayer, RetryAfterBackoffLayer};
use tollgate_sim::GraphSim;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use crate::strategy::{Strategy, Svc, boxed, naive_retry};

/// Messages per page (`$top`).
pub const PAGE: u64 = 25;
/// Workers paging one mailbox at once: twice what Graph allows in flight.
pub const WORKERS_PER_MAILBOX: usize = 8;
/// Graph's concurrency limit per mailbox.
pub const CONCURRENCY: u32 = 4;
/// The simulator's quota per mailbox: `QUOTA` requests in any sliding `WINDOW`.
pub const QUOTA: u32 = 40;
/// The window of [`QUOTA`]: Graph's 10 minutes shrunk to 2 s.
pub const WINDOW: Duration = Duration::from_secs(2);
/// How long the simulator holds each admitted request.
pub const LATENCY: Duration = Duration::from_millis(20);
/// The quota's safety margin, for the time between our admission and the server's
/// count. Loopback takes well under a millisecond, but a request admitted by the
/// quota layer may then wait for a concurrency slot below it: while the first window
/// fills (8 workers, 4 slots) that is up to one latency (20 ms), more on a busy
/// machine. Measured with `mailbox_sync` on this 2-core machine at a load average of
/// 5 (a cold build alongside): with 25 ms, 7 of 1,280 requests were answered `429` in
/// one of three runs and goodput fell to 0.84; with 50 ms, none in three runs and
/// goodput 0.95 to 0.96 (0.97 to 0.98 on a quiet machine). Every millisecond costs
/// 0.05 % of goodput (the window is 2 s).
pub const MARGIN: Duration = Duration::from_millis(50);

/// The Graph simulator with these limits, `mailboxes` mailboxes of `messages` each.
pub fn simulator(mailboxes: usize, messages: u64) -> GraphSim {
    GraphSim::new()
        .mailboxes(mailboxes)
        .messages_per_mailbox(messages)
        .quota(QUOTA, WINDOW)
        .concurrency(CONCURRENCY)
        .latency(LATENCY)
}

/// Graph's retry preset with its own backoff (3 s base, 180 s cap) scaled down to the
/// simulator's 2 s window; hints (`Retry-After`) are obeyed as they come.
pub fn retry_layer() -> RetryAfterBackoffLayer {
    RetryAfterBackoffLayer::graph()
        .backoff(Backoff::full_jitter(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .max_inline_wait(Duration::from_secs(10))
        .max_elapsed(Duration::from_secs(30))
}

/// The limits the tollgate client keeps per mailbox.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests allowed in any sliding `window`.
    pub quota: u32,
    /// The quota's window.
    pub window: Duration,
    /// Added to the window on the client's side, for the time between the client's
    /// admission and the server's count (see `QuotaWindowLayer::safety_margin`).
    pub margin: Duration,
    /// Requests in flight at once.
    pub concurrency: u32,
}

impl Default for Limits {
    /// The simulator's: [`QUOTA`] per [`WINDOW`], [`CONCURRENCY`] in flight, and
    /// [`MARGIN`].
    fn default() -> Self {
        Limits {
            quota: QUOTA,
            window: WINDOW,
            margin: MARGIN,
            concurrency: CONCURRENCY,
        }
    }
}

/// The full tollgate client stack over `http`: `RetryAfterBackoff` → `QuotaWindow` →
/// `ConcurrencyPerKey` → `ThrottleClassifier` (Graph preset), both limit layers keyed
/// by mailbox and kept in `store` (a `MemoryStore` for one process, a
/// `tollgate_redis::RedisStore` for a fleet).
///
/// # Errors
///
/// If `limits` make no valid quota (a zero quota or window).
pub fn client<St, H, B>(limits: Limits, store: St, http: H) -> Result<Svc<Empty<Bytes>>, BoxError>
where
    St: QuotaStore + ConcurrencyStore,
    H: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + Sync,
{
    let mailbox = PathSegment::pattern("/v1.0/users/{id}/messages", "id")?;
    Ok(boxed(
        ServiceBuilder::new()
            .layer(retry_layer())
            .layer(
                QuotaWindowLayer::new(
                    Quota::sliding(limits.quota, limits.window)?,
                    mailbox.clone(),
                )
                .safety_margin(limits.margin)?
                .store(store.clone()),
            )
            .layer(ConcurrencyPerKeyLayer::new(limits.concurrency, mailbox).store(store))
            .layer(ThrottleClassifierLayer::graph())
            .service(http),
    ))
}

/// The client of `strategy`; `sent` counts every request handed to the HTTP client,
/// retries included.
///
/// # Errors
///
/// If the mailbox key pattern does not parse (it does).
pub fn build_client(
    strategy: Strategy,
    sent: &Arc<AtomicU64>,
) -> Result<Svc<Empty<Bytes>>, BoxError> {
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let counter = Arc::clone(sent);
    let count = move |request: Request<Empty<Bytes>>| {
        counter.fetch_add(1, Ordering::Relaxed);
        request
    };
    let http = ServiceBuilder::new().map_request(count).service(http);
    Ok(match strategy {
        Strategy::Tollgate => client(Limits::default(), MemoryStore::new(), http)?,
        Strategy::RetryOnly => boxed(
            ServiceBuilder::new()
                .layer(retry_layer())
                .layer(ThrottleClassifierLayer::graph())
                .service(http),
        ),
        Strategy::Naive => boxed(http),
    })
}

/// One page: the message ids and the next link, if any.
#[derive(Debug)]
pub struct Page {
    /// The ids of the page's messages.
    pub ids: Vec<String>,
    /// `@odata.nextLink`, if the server has more.
    pub next: Option<String>,
}

/// Fetches and parses one page at `uri`; anything but a `200` with a `value` array is
/// an error.
///
/// # Errors
///
/// The client's error, a status other than `200`, or a body that is not a page.
pub async fn get_page(client: Svc<Empty<Bytes>>, uri: &str) -> Result<Page, String> {
    let request = Request::get(uri)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = client.oneshot(request).await.map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let body: Value = serde_json::from_slice(response.body()).map_err(|e| e.to_string())?;
    let ids = body["value"]
        .as_array()
        .ok_or("no `value` array")?
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    let next = body["@odata.nextLink"].as_str().map(str::to_owned);
    Ok(Page { ids, next })
}

/// Fetches one page with the strategy's own retries: tollgate and retry-only retry in
/// the stack; naive retries here, blind to `Retry-After`.
///
/// # Errors
///
/// The last failure (a status other than `200`, a transport error, a bad body).
pub async fn fetch(
    strategy: Strategy,
    client: Svc<Empty<Bytes>>,
    uri: &str,
) -> Result<Page, String> {
    if strategy == Strategy::Naive {
        naive_retry(move || get_page(client.clone(), uri)).await
    } else {
        get_page(client, uri).await
    }
}

/// What one mailbox's sync produced.
#[derive(Debug, Default)]
pub struct MailboxResult {
    /// The distinct message ids received.
    pub ids: HashSet<String>,
    /// Ids received more than once.
    pub duplicates: u64,
    /// Pages received.
    pub ok_pages: u64,
    /// Pages that still failed after the strategy's retries.
    pub failed_pages: u64,
    /// Messages in pages that failed (planned pages only: a followed link's size is
    /// unknown, so it counts as a failed page without messages).
    pub failed_messages: u64,
}

/// Syncs every message of `mailbox` (`expected` of them) from `base`, with
/// [`WORKERS_PER_MAILBOX`] workers each taking the next `$skip` offset; the last
/// page's `@odata.nextLink` is followed if the server has more. `bar` counts this
/// mailbox's messages, `total_bar` all of them (hidden bars draw nothing).
pub async fn sync_mailbox(
    strategy: Strategy,
    client: Svc<Empty<Bytes>>,
    base: String,
    mailbox: String,
    expected: u64,
    bar: ProgressBar,
    total_bar: ProgressBar,
) -> MailboxResult {
    let offsets: Vec<u64> = (0..expected.div_ceil(PAGE)).map(|p| p * PAGE).collect();
    let next = Arc::new(AtomicU64::new(0));
    let offsets = Arc::new(offsets);
    let result = Arc::new(Mutex::new(MailboxResult::default()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS_PER_MAILBOX {
        let (client, base, mailbox) = (client.clone(), base.clone(), mailbox.clone());
        let (bar, total_bar) = (bar.clone(), total_bar.clone());
        let (next, offsets, result) =
            (Arc::clone(&next), Arc::clone(&offsets), Arc::clone(&result));
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(&skip) = usize::try_from(index).ok().and_then(|i| offsets.get(i)) else {
                    return;
                };
                let mut uri =
                    format!("{base}/v1.0/users/{mailbox}/messages?$top={PAGE}&$skip={skip}");
                let mut planned = Some(PAGE.min(expected - skip));
                // Follow `@odata.nextLink` past the planned pages, if the server has more.
                loop {
                    match fetch(strategy, client.clone(), &uri).await {
                        Ok(page) => {
                            let mut r = result.lock().unwrap();
                            let len = page.ids.len() as u64;
                            for id in page.ids {
                                if !r.ids.insert(id) {
                                    r.duplicates += 1;
                                }
                            }
                            r.ok_pages += 1;
                            drop(r);
                            bar.inc(len);
                            total_bar.inc(len);
                            // Only the last planned page, and the pages after it, lead on.
                            let last = planned.is_none() || skip + PAGE >= expected;
                            match page.next {
                                Some(link) if last => {
                                    uri = link;
                                    planned = None;
                                }
                                _ => break,
                            }
                        }
                        Err(_) => {
                            let mut r = result.lock().unwrap();
                            r.failed_pages += 1;
                            r.failed_messages += planned.unwrap_or(0);
                            bar.set_message(format!("{} failed pages", r.failed_pages));
                            break;
                        }
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    bar.finish();
    Arc::try_unwrap(result)
        .ok()
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default()
}
