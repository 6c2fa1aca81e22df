//! The Telegram broadcast client of `telegram_broadcast` (and of `goodput`'s Telegram
//! scenario): `sendMessage` to many chats within the Bot FAQ's limits, 1 message per
//! second per chat and 30 per second per bot.
//!
//! See `examples/examples/telegram_broadcast.rs` for why the stack is built this way
//! (the order of the two quota layers, the chat key in a header, the bot layer obeying
//! global throttles only).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::time::Instant;
use tollgate::classify::ThrottleClassifierLayer;
use tollgate::key::{Constant, Header};
use tollgate::quota::{ObeyThrottles, Quota};
use tollgate::{ErrorKind, QuotaWindowLayer, RetryAfterBackoffLayer};
use tollgate_sim::TelegramSim;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use crate::strategy::{Strategy, Svc, boxed, naive_retry};

/// Per chat: 1 message per `CHAT_WINDOW`.
pub const CHAT_WINDOW: Duration = Duration::from_secs(1);
/// Per bot: `BOT_LIMIT` messages per [`BOT_WINDOW`].
pub const BOT_LIMIT: u32 = 30;
/// The window of [`BOT_LIMIT`].
pub const BOT_WINDOW: Duration = Duration::from_secs(1);
/// The flood wait the simulator hands out (the figure seen in the wild).
pub const FLOOD_WAIT: Duration = Duration::from_secs(4310);
/// `429`s in a row that put a chat under the flood wait.
pub const FLOOD_AFTER: u32 = 3;
/// Time between our admission and the server's count: loopback takes well under a
/// millisecond. Every millisecond here costs 0.1 % of the bot's throughput (the window
/// is 1 s). Against a real server, use the jitter of its latency.
pub const MARGIN: Duration = Duration::from_millis(5);
/// How long each delivered message is held by the simulator.
pub const LATENCY: Duration = Duration::from_millis(5);
/// Chat ids: private chats (positive ids) from here.
pub const FIRST_CHAT_ID: i64 = 1000;

/// The id of chat number `index`.
#[must_use]
pub fn chat_id(index: usize) -> i64 {
    FIRST_CHAT_ID + index as i64
}

/// The Telegram simulator with these limits and flood waits.
pub fn simulator() -> TelegramSim {
    TelegramSim::new()
        .per_chat(1, CHAT_WINDOW)
        .overall(BOT_LIMIT, BOT_WINDOW)
        .flood_wait(FLOOD_WAIT)
        .flood_after(FLOOD_AFTER)
        .latency(LATENCY)
}

/// The client of `strategy`:
///
/// - `tollgate`: `RetryAfterBackoff` (Telegram preset) → `QuotaWindow` per bot
///   (constant key, sliding 30 per 1 s, queue released at the default spacing, nine
///   tenths of `W / N`, obeying global throttles only) →
///   `QuotaWindow` per chat (`x-chat-id` header, smooth 1 per 1 s) →
///   `ThrottleClassifier` (Telegram preset) → `hyper_util` client; both quotas widened
///   by [`MARGIN`];
/// - `retry-only`: `RetryAfterBackoff` → `ThrottleClassifier` → client;
/// - `naive`: the bare client (see [`send`] for its retries).
///
/// # Errors
///
/// If a quota is invalid (they are not).
pub fn build_client(strategy: Strategy) -> Result<Svc<Full<Bytes>>, BoxError> {
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    Ok(match strategy {
        Strategy::Tollgate => {
            let per_chat = QuotaWindowLayer::new(
                Quota::smooth(1, CHAT_WINDOW)?.with_margin(MARGIN)?,
                Header::new("x-chat-id"),
            );
            let per_bot = QuotaWindowLayer::new(
                Quota::sliding(BOT_LIMIT, BOT_WINDOW)?.with_margin(MARGIN)?,
                Constant::new("bot"),
            )
            .obey_throttles(ObeyThrottles::GlobalOnly);
            boxed(
                ServiceBuilder::new()
                    .layer(RetryAfterBackoffLayer::telegram())
                    .layer(per_bot)
                    .layer(per_chat)
                    .layer(ThrottleClassifierLayer::telegram())
                    .service(http),
            )
        }
        Strategy::RetryOnly => boxed(
            ServiceBuilder::new()
                .layer(RetryAfterBackoffLayer::telegram())
                .layer(ThrottleClassifierLayer::telegram())
                .service(http),
        ),
        Strategy::Naive => boxed(http),
    })
}

/// A `sendMessage` request to `chat`, the chat id also in `x-chat-id` for the
/// per-chat key (the simulator, like the Bot API, ignores the header).
///
/// # Errors
///
/// If `url` is not a valid URI.
pub fn send_request(url: &str, chat: i64, text: &str) -> Result<Request<Full<Bytes>>, BoxError> {
    let body = json!({ "chat_id": chat, "text": text }).to_string();
    Ok(Request::post(url)
        .header("content-type", "application/json")
        .header("x-chat-id", chat.to_string())
        .body(Full::new(Bytes::from(body)))?)
}

/// What became of one message.
#[derive(Debug)]
pub enum Delivery {
    /// Answered `200` with `"ok": true`.
    Delivered,
    /// Handed back to the caller to be sent again at this instant (a flood wait too
    /// long to wait inline: `ErrorKind::RetryLater`).
    Rescheduled(Instant),
    /// Failed for good (after the strategy's retries), with the reason.
    Failed(String),
}

async fn send_once(
    client: Svc<Full<Bytes>>,
    url: &str,
    chat: i64,
    text: &str,
) -> Result<(), BoxError> {
    let response = client.oneshot(send_request(url, chat, text)?).await?;
    let ok = response.status() == StatusCode::OK
        && serde_json::from_slice::<Value>(response.body()).is_ok_and(|v| v["ok"] == true);
    if ok {
        Ok(())
    } else {
        Err(format!("status {}", response.status()).into())
    }
}

/// Sends one message with the strategy's retries: tollgate and retry-only retry in the
/// stack; naive retries here, blind to `retry_after`.
pub async fn send(
    strategy: Strategy,
    client: Svc<Full<Bytes>>,
    url: &str,
    chat: i64,
    text: &str,
) -> Delivery {
    let sent = if strategy == Strategy::Naive {
        naive_retry(move || send_once(client.clone(), url, chat, text)).await
    } else {
        send_once(client, url, chat, text).await
    };
    match sent {
        Ok(()) => Delivery::Delivered,
        Err(err) => match err.downcast_ref::<tollgate::Error>() {
            Some(e) if e.kind() == ErrorKind::RetryLater => {
                Delivery::Rescheduled(e.retry_at().unwrap_or_else(Instant::now))
            }
            _ => Delivery::Failed(err.to_string()),
        },
    }
}
