//! A Microsoft Graph-like mail server: per-mailbox quota and concurrency, paged
//! message listing and `$batch`, answering throttled requests as Graph does.
//!
//! # Endpoints
//!
//! - `GET /v1.0/users/{mailbox}/messages?$top=N&$skip=K`: one page,
//!   `{"@odata.context": ..., "value": [{"id": ..., "subject": ...}], "@odata.nextLink": ...}`,
//!   the link present while messages remain (an absolute URL with `%24top`/`%24skip`,
//!   as Graph writes it). `$top` defaults to [`DEFAULT_PAGE_SIZE`] and is clamped to
//!   `1..=`[`MAX_PAGE_SIZE`].
//! - `POST /v1.0/$batch` with `{"requests":[{"id":"1","method":"GET","url":"/users/{m}/messages?..."}]}`:
//!   up to [`MAX_BATCH_REQUESTS`] sub-requests, each counted against its mailbox
//!   exactly like a direct request, at most [`GraphSim::batch_parallelism`] at a time
//!   (Outlook runs 4). The batch answers `200` with
//!   `{"responses":[{"id","status","headers","body"}]}` in request order; a throttled
//!   sub-request is a `429` inside, with `Retry-After` in its `headers` object.
//!
//! # Throttling (from `shared/API_FACTS.md`)
//!
//! - Over the quota (N requests per window W per mailbox, counted exactly over a
//!   sliding window): `429`, `Retry-After: <seconds>` (the exact time until a request
//!   would be admitted, rounded up, at least 1; omitted with
//!   [`retry_after(false)`](GraphSim::retry_after)) and
//!   `{"error":{"code":"TooManyRequests","message":"Please retry again later.","innerError":{"date","request-id","client-request-id"}}}`.
//! - Over the concurrency limit (admitted requests still in flight for that mailbox):
//!   `429` with
//!   `{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}`
//!   and no `Retry-After` (the facts record only the body).
//! - By default rejected requests still count against the quota, as Graph "continues
//!   to log resource usage while a client is being throttled"
//!   ([`count_throttled`](GraphSim::count_throttled)).
//! - One mailbox's limits never affect another's. Unknown mailboxes get `404`.
//!
//! Admitted requests are held for [`latency`](GraphSim::latency) before the answer, so
//! that concurrency builds up as it does against a real server.

mod body;
mod server;

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::running::{Running, Simulator};
use crate::stats::SimStats;
use crate::timing::Timing;
use crate::window::{KeyState, Limits};
use server::Shared;

/// The most sub-requests Graph accepts in one `$batch`.
pub const MAX_BATCH_REQUESTS: usize = 20;
/// The page size of a message listing without `$top` (Graph's default for messages).
pub const DEFAULT_PAGE_SIZE: u64 = 10;
/// The largest `$top` honoured; larger values are clamped.
pub const MAX_PAGE_SIZE: u64 = 1000;

/// Builder of a Graph-like simulated server. [`GraphSim::new`] has Graph's real limits;
/// shrink the window so tests and demos run in seconds.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tollgate_sim::GraphSim;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let sim = GraphSim::new()
///     .mailboxes(3)
///     .messages_per_mailbox(250)
///     .quota(100, Duration::from_secs(1))
///     .latency(Duration::from_millis(5))
///     .start()
///     .await?;
/// let url = sim.messages_url(&GraphSim::mailbox_name(0));
/// assert!(url.ends_with("/v1.0/users/mailbox-0/messages"));
/// let stats = sim.shutdown().await;
/// assert_eq!(stats.totals.requests, 0);
/// assert_eq!(stats.limit_in_window, 100);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct GraphSim {
    mailboxes: usize,
    messages_per_mailbox: u64,
    quota: usize,
    window: Duration,
    concurrency: usize,
    retry_after: bool,
    count_throttled: bool,
    latency: Duration,
    batch_parallelism: usize,
    timeline_bucket: Duration,
}

impl Default for GraphSim {
    fn default() -> Self {
        Self::new()
    }
}

impl GraphSim {
    /// Graph's limits: 10,000 requests per 10 minutes and 4 concurrent requests per
    /// mailbox, `Retry-After` sent, rejected requests counted, `$batch` run 4 at a time;
    /// one mailbox of 100 messages, no added latency.
    pub fn new() -> Self {
        Self {
            mailboxes: 1,
            messages_per_mailbox: 100,
            quota: 10_000,
            window: Duration::from_secs(600),
            concurrency: 4,
            retry_after: true,
            count_throttled: true,
            latency: Duration::ZERO,
            batch_parallelism: 4,
            timeline_bucket: Duration::from_millis(100),
        }
    }

    /// The number of mailboxes served, named by [`GraphSim::mailbox_name`].
    pub fn mailboxes(mut self, count: usize) -> Self {
        self.mailboxes = count;
        self
    }

    /// The number of messages in every mailbox.
    pub fn messages_per_mailbox(mut self, count: u64) -> Self {
        self.messages_per_mailbox = count;
        self
    }

    /// The quota per mailbox: at most `limit` requests in any `window`.
    ///
    /// # Panics
    ///
    /// If `limit` is zero or `window` is zero.
    pub fn quota(mut self, limit: u32, window: Duration) -> Self {
        assert!(limit > 0, "the quota limit must be at least 1");
        assert!(!window.is_zero(), "the quota window must not be zero");
        self.quota = limit as usize;
        self.window = window;
        self
    }

    /// The concurrency limit per mailbox (default 4).
    ///
    /// # Panics
    ///
    /// If `limit` is zero.
    pub fn concurrency(mut self, limit: u32) -> Self {
        assert!(limit > 0, "the concurrency limit must be at least 1");
        self.concurrency = limit as usize;
        self
    }

    /// Whether quota `429`s carry `Retry-After` (default `true`). Graph sometimes
    /// omits it; clients must then fall back to exponential backoff.
    pub fn retry_after(mut self, send: bool) -> Self {
        self.retry_after = send;
        self
    }

    /// Whether requests answered `429` still count against the quota (default `true`,
    /// as Graph keeps logging usage while throttling: retrying at once makes it worse).
    pub fn count_throttled(mut self, count: bool) -> Self {
        self.count_throttled = count;
        self
    }

    /// How long each admitted request is held before its answer (default none).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// How many sub-requests of one `$batch` run at once (default 4, as Outlook).
    ///
    /// # Panics
    ///
    /// If `parallelism` is zero.
    pub fn batch_parallelism(mut self, parallelism: u32) -> Self {
        assert!(parallelism > 0, "the batch parallelism must be at least 1");
        self.batch_parallelism = parallelism as usize;
        self
    }

    /// The bucket length of [`SimStats::timeline`] (default 100 ms).
    ///
    /// # Panics
    ///
    /// If `bucket` is zero.
    pub fn timeline_bucket(mut self, bucket: Duration) -> Self {
        assert!(!bucket.is_zero(), "the timeline bucket must not be zero");
        self.timeline_bucket = bucket;
        self
    }

    /// The name of mailbox `index` (`mailbox-0`, `mailbox-1`, ...).
    #[must_use]
    pub fn mailbox_name(index: usize) -> String {
        format!("mailbox-{index}")
    }

    /// Binds `127.0.0.1:0` and serves in a spawned task until
    /// [`Running::shutdown`] (or until the [`Running`] handle is dropped).
    ///
    /// Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// If the listener cannot be bound.
    pub async fn start(self) -> io::Result<RunningSim> {
        let names: Vec<String> = (0..self.mailboxes).map(Self::mailbox_name).collect();
        Running::start(|base_url| Shared {
            limits: Limits {
                quota: self.quota,
                window: self.window,
                concurrency: self.concurrency,
                count_throttled: self.count_throttled,
            },
            retry_after: self.retry_after,
            batch_parallelism: self.batch_parallelism,
            messages_per_mailbox: self.messages_per_mailbox,
            base_url: base_url.to_owned(),
            index: names
                .iter()
                .enumerate()
                .map(|(i, name)| (name.clone(), i))
                .collect::<HashMap<_, _>>(),
            mailboxes: names
                .into_iter()
                .map(|name| (name, Mutex::new(KeyState::new(self.window))))
                .collect(),
            batches: AtomicU64::new(0),
            not_found: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            next_request_id: AtomicU64::new(1),
            timing: Timing::start(self.latency, self.timeline_bucket),
            timeline: Mutex::new(Vec::new()),
        })
        .await
    }
}

impl Simulator for GraphSim {
    type Stats = SimStats;
}

/// A [`GraphSim`] serving on loopback (see [`Running`]).
pub type RunningSim = Running<GraphSim>;

impl Running<GraphSim> {
    /// The listing URL of `mailbox`, without query: `{base}/v1.0/users/{mailbox}/messages`.
    #[must_use]
    pub fn messages_url(&self, mailbox: &str) -> String {
        format!("{}/v1.0/users/{mailbox}/messages", self.base_url())
    }

    /// The `$batch` URL: `{base}/v1.0/$batch`.
    #[must_use]
    pub fn batch_url(&self) -> String {
        format!("{}/v1.0/$batch", self.base_url())
    }

    /// The names of the mailboxes served, in order.
    pub fn mailboxes(&self) -> impl Iterator<Item = &str> {
        self.shared()
            .mailboxes
            .iter()
            .map(|(name, _)| name.as_str())
    }
}
