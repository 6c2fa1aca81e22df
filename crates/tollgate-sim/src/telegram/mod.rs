//! A Telegram Bot API-like server: `sendMessage` with per-chat, per-group and per-bot
//! limits, answering throttled requests as the Bot API server does, and an optional
//! long flood wait.
//!
//! # Endpoint
//!
//! - `POST /bot{token}/sendMessage` with a JSON body `{"chat_id": <int or string>,
//!   "text": "..."}` or a form-encoded one (`chat_id=...&text=...`, sent with
//!   `Content-Type: application/x-www-form-urlencoded`). Success is `200` with
//!   `{"ok":true,"result":{"message_id":N,"date":<unix seconds>,"chat":{"id":...,"type":...},"text":"..."}}`;
//!   `message_id` counts from 1 per bot and chat. A `chat_id` string holding an
//!   integer is that integer; any other string must be a `@username`. An empty
//!   `chat_id` or `text`, or a text over 4096 characters, is `400`
//!   `{"ok":false,"error_code":400,"description":"Bad Request: ..."}`; any other path or
//!   method is `404` `{"ok":false,"error_code":404,"description":"Not Found"}`.
//!
//! # Throttling (from `shared/API_FACTS.md`)
//!
//! - Per bot and chat [`per_chat`](TelegramSim::per_chat) (default 1 message per
//!   1 s); per bot and group chat additionally [`per_group`](TelegramSim::per_group)
//!   (default 20 per 60 s; a chat is a group when its id is negative or a `@username`,
//!   that is a group, supergroup or channel); per bot token
//!   [`overall`](TelegramSim::overall) (default 30 per 1 s over all its chats). Each is
//!   counted exactly over a sliding window, on the messages admitted: a `429` does not
//!   use up quota. Any non-empty token is accepted and is its own bot.
//! - Over any of them: `429`, `Retry-After: N` and exactly
//!   `{"ok":false,"error_code":429,"description":"Too Many Requests: retry after N","parameters":{"retry_after":N}}`,
//!   where `N` is the exact time until the message would be admitted (the longest of
//!   the limits' waits, if nothing else arrives), in whole seconds rounded up, at least 1.
//! - With [`flood_wait`](TelegramSim::flood_wait), a bot's chat answered `429`
//!   [`flood_after`](TelegramSim::flood_after) times in a row (default 3) is put under a
//!   flood wait (at least as long as the limits' own wait): that `429` and every request
//!   of that bot for that chat until the wait has passed are answered with the rest of
//!   the wait (seeds show 4310 s; a client must hand such a deadline back instead of
//!   sleeping on it). An admitted message resets the count.
//!
//! All state sits behind one lock, so a message is checked against its chat, group
//! and bot limits atomically.

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

/// A syntactically valid bot token for tests and demos; the simulator accepts any
/// non-empty token and counts each one as its own bot.
pub const TEST_TOKEN: &str = "123456789:AAH-tollgate-sim-test-token";

/// Builder of a Telegram Bot API-like simulated server. [`TelegramSim::new`] has the
/// published limits; shrink the windows so tests and demos run in seconds.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tollgate_sim::telegram::TEST_TOKEN;
/// use tollgate_sim::TelegramSim;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let sim = TelegramSim::new()
///     .per_chat(1, Duration::from_millis(100))
///     .overall(30, Duration::from_millis(100))
///     .flood_wait(Duration::from_secs(4310))
///     .start()
///     .await?;
/// assert!(sim.send_message_url(TEST_TOKEN).ends_with("/sendMessage"));
/// let stats = sim.shutdown().await;
/// assert_eq!(stats.overall.requests, 0);
/// assert_eq!(stats.per_chat_limit.limit, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct TelegramSim {
    per_chat: Limit,
    per_group: Limit,
    overall: Limit,
    flood_wait: Option<Duration>,
    flood_after: u32,
    latency: Duration,
    timeline_bucket: Duration,
}

impl Default for TelegramSim {
    fn default() -> Self {
        Self::new()
    }
}

impl TelegramSim {
    /// The Bot FAQ's limits: 1 message per second per chat, 20 per minute per group,
    /// 30 per second per bot; no flood wait, no added latency.
    pub fn new() -> Self {
        Self {
            per_chat: Limit::new(1, Duration::from_secs(1)),
            per_group: Limit::new(20, Duration::from_secs(60)),
            overall: Limit::new(30, Duration::from_secs(1)),
            flood_wait: None,
            flood_after: 3,
            latency: Duration::ZERO,
            timeline_bucket: Duration::from_millis(100),
        }
    }

    /// The limit per chat: at most `limit` messages in any `window`.
    ///
    /// # Panics
    ///
    /// If `limit` or `window` is zero.
    pub fn per_chat(mut self, limit: u32, window: Duration) -> Self {
        self.per_chat = Limit::checked(limit, window);
        self
    }

    /// The additional limit per group chat (negative id or `@username`).
    ///
    /// # Panics
    ///
    /// If `limit` or `window` is zero.
    pub fn per_group(mut self, limit: u32, window: Duration) -> Self {
        self.per_group = Limit::checked(limit, window);
        self
    }

    /// The limit per bot token, over all its chats.
    ///
    /// # Panics
    ///
    /// If `limit` or `window` is zero.
    pub fn overall(mut self, limit: u32, window: Duration) -> Self {
        self.overall = Limit::checked(limit, window);
        self
    }

    /// Turns on flood waits of length `wait` (off by default): see the
    /// [module documentation](self).
    ///
    /// # Panics
    ///
    /// If `wait` is zero.
    pub fn flood_wait(mut self, wait: Duration) -> Self {
        assert!(!wait.is_zero(), "the flood wait must not be zero");
        self.flood_wait = Some(wait);
        self
    }

    /// How many `429`s in a row put a chat under the flood wait (default 3).
    ///
    /// # Panics
    ///
    /// If `count` is zero.
    pub fn flood_after(mut self, count: u32) -> Self {
        assert!(count > 0, "flood_after must be at least 1");
        self.flood_after = count;
        self
    }

    /// How long each admitted request is held before its answer (default none).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The bucket length of [`TelegramStats::timeline`] (default 100 ms).
    ///
    /// # Panics
    ///
    /// If `bucket` is zero.
    pub fn timeline_bucket(mut self, bucket: Duration) -> Self {
        assert!(!bucket.is_zero(), "the timeline bucket must not be zero");
        self.timeline_bucket = bucket;
        self
    }

    /// Binds `127.0.0.1:0` and serves in a spawned task until
    /// [`Running::shutdown`] (or until it is dropped).
    ///
    /// Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// If the listener cannot be bound.
    pub async fn start(self) -> io::Result<RunningTelegramSim> {
        Running::start(|_| Shared {
            config: Config {
                per_chat: self.per_chat,
                per_group: self.per_group,
                overall: self.overall,
                flood_wait: self.flood_wait,
                flood_after: self.flood_after,
            },
            timing: Timing::start(self.latency, self.timeline_bucket),
            state: Mutex::new(State::default()),
        })
        .await
    }
}

impl Simulator for TelegramSim {
    type Stats = TelegramStats;
}

/// A [`TelegramSim`] serving on loopback (see [`Running`]).
pub type RunningTelegramSim = Running<TelegramSim>;

impl Running<TelegramSim> {
    /// The `sendMessage` URL of a bot: `{base}/bot{token}/sendMessage`.
    #[must_use]
    pub fn send_message_url(&self, token: &str) -> String {
        format!("{}/bot{token}/sendMessage", self.base_url())
    }
}

/// A snapshot of everything a [`TelegramSim`] server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelegramStats {
    /// Per chat that was sent to, by normalised chat id (`"42"`, `"-1001"`,
    /// `"@channel"`), over all bots. `max_in_window` is the most requests one bot
    /// sent to the chat in any window of the per-chat limit; `messages_served` counts
    /// messages delivered.
    pub per_chat: BTreeMap<String, KeyStats>,
    /// Per bot token that sent; `max_in_window` is over the window of the overall
    /// limit.
    pub per_bot: BTreeMap<String, KeyStats>,
    /// Sums over bots; `max_in_window` is the maximum over bots.
    pub overall: KeyStats,
    /// The most requests one group chat received in any window of the group limit.
    pub group_max_in_window: u64,
    /// `429`s answered with a flood wait (included in `throttled_quota`).
    pub flood_waits: u64,
    /// Malformed requests answered `400`.
    pub bad_requests: u64,
    /// Requests for an unknown path or method, answered `404`.
    pub not_found: u64,
    /// The configured limit per chat.
    pub per_chat_limit: Limit,
    /// The configured additional limit per group chat.
    pub per_group_limit: Limit,
    /// The configured limit per bot token.
    pub overall_limit: Limit,
    /// Requests received over time, in buckets of the configured length (see
    /// [`TelegramSim::timeline_bucket`]) from the server's start, all chats together;
    /// empty buckets included.
    pub timeline: Vec<TimelineBucket>,
}
