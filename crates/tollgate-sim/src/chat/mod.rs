//! A Google Chat API-like server: message writes and reads per space and per project,
//! space creation under two windows at once, answering throttled requests with
//! Google's `RESOURCE_EXHAUSTED` envelope and `RetryInfo`.
//!
//! # Endpoints
//!
//! - `POST /v1/spaces/{space}/messages` (a message write, `spaces.messages.create`)
//!   with a JSON body such as `{"text":"..."}`: `200` with the message,
//!   `{"name":"spaces/{space}/messages/{n}","text":"...","space":{"name":"spaces/{space}"}}`.
//! - `GET /v1/spaces/{space}/messages?pageSize=N` (a message read,
//!   `spaces.messages.list`): `200` with `{"messages":[...]}`, the first `N` (default
//!   25, at most 1000) messages written to the space, oldest first; `{}` when there are
//!   none.
//! - `POST /v1/spaces` (space creation) with a JSON body such as
//!   `{"spaceType":"SPACE","displayName":"..."}`: `200` with
//!   `{"name":"spaces/created-{n}","spaceType":...,"displayName":...}`; the new space
//!   then takes messages like the configured ones.
//!
//! The project is the `x-goog-user-project` request header (Google's quota-project
//! header), [`DEFAULT_PROJECT`] without it. Unknown spaces are `404` and malformed
//! bodies `400`, in Google's error envelope (`NOT_FOUND`, `INVALID_ARGUMENT`).
//!
//! # Throttling (from `shared/API_FACTS.md`)
//!
//! - Per space (shared by all apps and projects): 900 reads and 60 writes per 60 s
//!   ([`space_reads`](ChatSim::space_reads), [`space_writes`](ChatSim::space_writes)).
//! - Per project: 3000 message reads and 3000 message writes per 60 s
//!   ([`project_reads`](ChatSim::project_reads),
//!   [`project_writes`](ChatSim::project_writes)); space creation 35 per 60 s *and* 800
//!   per 3600 s ([`space_creations`](ChatSim::space_creations),
//!   [`space_creations_long`](ChatSim::space_creations_long)).
//! - A request is admitted only if every quota it is subject to admits it (a write:
//!   its space's writes and its project's writes; a read likewise; a creation: both
//!   creation windows), and then counts in all of them. Each is counted exactly over a
//!   sliding window, on admitted requests: a `429` does not use up quota.
//! - Over any: `429` with exactly
//!   `{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"<d>"}]}}`.
//!   `<d>` is the exact time until the request would be admitted (the longest of the
//!   quotas' waits, if nothing else arrives) rounded *up* to the millisecond and
//!   written as a proto3 JSON duration: `"31s"` for whole seconds, otherwise three
//!   fractional digits (`"0.500s"`, `"12.345s"`). `Retry-After` (whole seconds rounded
//!   up, at least 1) is sent only with [`retry_after(true)`](ChatSim::retry_after),
//!   since whether Chat sends it is not confirmed.
//!
//! All state sits behind one lock, so a request is checked against all its quotas
//! atomically.

mod body;
mod server;

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use crate::running::{Running, Simulator};
use crate::stats::{KeyStats, Limit, TimelineBucket};
use crate::timing::Timing;
use server::{Config, Shared, State};

/// The project of requests without an `x-goog-user-project` header.
pub const DEFAULT_PROJECT: &str = "default";

/// Builder of a Google Chat-like simulated server. [`ChatSim::new`] has the
/// documented quotas; shrink the windows so tests and demos run in seconds.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tollgate_sim::ChatSim;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let sim = ChatSim::new()
///     .spaces(2)
///     .space_writes(6, Duration::from_millis(600))
///     .start()
///     .await?;
/// let url = sim.messages_url(&ChatSim::space_name(1));
/// assert!(url.ends_with("/v1/spaces/space-1/messages"));
/// let stats = sim.shutdown().await;
/// assert_eq!(stats.per_space.len(), 2);
/// assert_eq!(stats.space_writes_limit.limit, 6);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ChatSim {
    spaces: usize,
    config: Config,
    latency: Duration,
    timeline_bucket: Duration,
}

impl Default for ChatSim {
    fn default() -> Self {
        Self::new()
    }
}

impl ChatSim {
    /// Chat's quotas: per space 900 reads and 60 writes per minute; per project 3000
    /// message reads and 3000 message writes per minute, 35 space creations per minute
    /// and 800 per hour; no `Retry-After`; one space; no added latency.
    pub fn new() -> Self {
        let minute = Duration::from_secs(60);
        Self {
            spaces: 1,
            config: Config {
                space_reads: Limit::new(900, minute),
                space_writes: Limit::new(60, minute),
                project_reads: Limit::new(3000, minute),
                project_writes: Limit::new(3000, minute),
                space_creations: Limit::new(35, minute),
                space_creations_long: Limit::new(800, Duration::from_secs(3600)),
                retry_after: false,
            },
            latency: Duration::ZERO,
            timeline_bucket: Duration::from_millis(100),
        }
    }

    /// The number of spaces that exist from the start, named by
    /// [`ChatSim::space_name`].
    pub fn spaces(mut self, count: usize) -> Self {
        self.spaces = count;
        self
    }

    /// Reads per space: at most `limit` in any `window`.
    ///
    /// # Panics
    ///
    /// If `limit` or `window` is zero (so for every limit setter below).
    pub fn space_reads(mut self, limit: u32, window: Duration) -> Self {
        self.config.space_reads = Limit::checked(limit, window);
        self
    }

    /// Writes per space.
    ///
    /// # Panics
    ///
    /// If `limit` or `window` is zero.
    pub fn space_writes(mut self, limit: u32, window: Duration) -> Self {
        self.config.space_writes = Limit::checked(limit, window);
        self
    }

    /// Message reads per project.
    ///
    /// # Panics
    ///
    /// If `limit` or `window` is zero.
    pub fn project_reads(mut self, limit: u32, window: Duration) -> Self {
        self.config.project_reads = Limit::checked(limit, window);
        self
    }

    /// Message writes per project.
    ///
    /// # Panics
    ///
    /// If `limit` or `window` is zero.
    pub fn project_writes(mut self, limit: u32, window: Duration) -> Self {
        self.config.project_writes = Limit::checked(limit, window);
        self
    }

    /// Space creations per project, the short window (default 35 per minute).
    ///
    /// # Panics
    ///
    /// If `limit` or `window` is zero.
    pub fn space_creations(mut self, limit: u32, window: Duration) -> Self {
        self.config.space_creations = Limit::checked(limit, window);
        self
    }

    /// Space creations per project, the long window enforced at the same time
    /// (default 800 per hour).
    ///
    /// # Panics
    ///
    /// If `limit` or `window` is zero.
    pub fn space_creations_long(mut self, limit: u32, window: Duration) -> Self {
        self.config.space_creations_long = Limit::checked(limit, window);
        self
    }

    /// Whether `429`s also carry `Retry-After` (default `false`: not confirmed for
    /// Chat; the `RetryInfo` in the body is always there).
    pub fn retry_after(mut self, send: bool) -> Self {
        self.config.retry_after = send;
        self
    }

    /// How long each admitted request is held before its answer (default none).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The bucket length of [`ChatStats::timeline`] (default 100 ms).
    ///
    /// # Panics
    ///
    /// If `bucket` is zero.
    pub fn timeline_bucket(mut self, bucket: Duration) -> Self {
        assert!(!bucket.is_zero(), "the timeline bucket must not be zero");
        self.timeline_bucket = bucket;
        self
    }

    /// The name of configured space `index` (`space-0`, `space-1`, ...), as it
    /// appears in URLs (the resource name is `spaces/space-0`).
    #[must_use]
    pub fn space_name(index: usize) -> String {
        format!("space-{index}")
    }

    /// Binds `127.0.0.1:0` and serves in a spawned task until
    /// [`Running::shutdown`] (or until it is dropped).
    ///
    /// Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// If the listener cannot be bound.
    pub async fn start(self) -> io::Result<RunningChatSim> {
        let mut state = State::default();
        for index in 0..self.spaces {
            state.add_space(Self::space_name(index), &self.config);
        }
        Running::start(|_| Shared {
            config: self.config,
            timing: Timing::start(self.latency, self.timeline_bucket),
            state: Mutex::new(state),
        })
        .await
    }
}

impl Simulator for ChatSim {
    type Stats = ChatStats;
}

/// A [`ChatSim`] serving on loopback (see [`Running`]).
pub type RunningChatSim = Running<ChatSim>;

impl Running<ChatSim> {
    /// The messages URL of `space` (write with `POST`, read with `GET`):
    /// `{base}/v1/spaces/{space}/messages`.
    #[must_use]
    pub fn messages_url(&self, space: &str) -> String {
        format!("{}/v1/spaces/{space}/messages", self.base_url())
    }

    /// The space creation URL: `{base}/v1/spaces`.
    #[must_use]
    pub fn spaces_url(&self) -> String {
        format!("{}/v1/spaces", self.base_url())
    }
}

/// What one space saw, reads and writes apart.
///
/// `max_in_window` is over the space's read (resp. write) window; `messages_served`
/// counts messages returned by reads (resp. written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpaceStats {
    /// Message reads.
    pub reads: KeyStats,
    /// Message writes.
    pub writes: KeyStats,
}

/// What one project saw.
///
/// `max_in_window` is over the project's read, write, and short creation window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectStats {
    /// Message reads, over all spaces.
    pub message_reads: KeyStats,
    /// Message writes, over all spaces.
    pub message_writes: KeyStats,
    /// Space creations.
    pub space_creations: KeyStats,
    /// The most space creations requested in any long creation window.
    pub space_creations_max_in_long_window: u64,
}

/// A snapshot of everything a [`ChatSim`] server saw.
///
/// A request counts in the `requests` of every key it is subject to, and a `429` in
/// the `throttled_quota` of every one of them, whichever quota refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChatStats {
    /// Per space, by name (configured and created spaces, used or not).
    pub per_space: BTreeMap<String, SpaceStats>,
    /// Per project that sent a request, by name.
    pub per_project: BTreeMap<String, ProjectStats>,
    /// Requests for an unknown space or path, answered `404`.
    pub not_found: u64,
    /// Malformed requests answered `400`.
    pub bad_requests: u64,
    /// The configured read limit per space.
    pub space_reads_limit: Limit,
    /// The configured write limit per space.
    pub space_writes_limit: Limit,
    /// The configured message read limit per project.
    pub project_reads_limit: Limit,
    /// The configured message write limit per project.
    pub project_writes_limit: Limit,
    /// The configured space creation limit per project, short window.
    pub space_creations_limit: Limit,
    /// The configured space creation limit per project, long window.
    pub space_creations_long_limit: Limit,
    /// Requests received over time, in buckets of the configured length (see
    /// [`ChatSim::timeline_bucket`]) from the server's start, all keys together;
    /// empty buckets included.
    pub timeline: Vec<TimelineBucket>,
}
