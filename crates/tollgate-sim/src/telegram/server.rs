//! The Telegram simulator's HTTP side: routing, request parsing and admission.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::response::Response;
use axum::routing::post;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::Value;
use tokio::time::Instant;

use super::{TelegramSim, TelegramStats, body};
use crate::lock;
use crate::response;
use crate::running::sealed::Serve;
use crate::stats::{KeyStats, Limit, TimelineBucket};
use crate::timing::Timing;
use crate::window::{Counted, admit_all, retry_after_secs};

/// The longest text `sendMessage` accepts, in characters.
const MAX_TEXT_CHARS: usize = 4096;

/// The configured limits.
pub(crate) struct Config {
    pub(crate) per_chat: Limit,
    pub(crate) per_group: Limit,
    pub(crate) overall: Limit,
    pub(crate) flood_wait: Option<Duration>,
    pub(crate) flood_after: u32,
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
    /// By bot token and chat: the limits are per bot.
    chats: BTreeMap<(String, String), ChatState>,
    bots: BTreeMap<String, BotState>,
    flood_waits: u64,
    bad_requests: u64,
    not_found: u64,
    timeline: Vec<TimelineBucket>,
}

struct ChatState {
    per_chat: Counted,
    /// For group chats: the group quota.
    group: Option<Counted>,
    /// `429`s in a row.
    violations: u32,
    flooded_until: Option<Instant>,
    next_message_id: u64,
    stats: KeyStats,
}

struct BotState {
    overall: Counted,
    stats: KeyStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Decides on one message to `chat` from bot `token` arriving now: `Ok(message_id)`
    /// or `Err(retry_after seconds)`.
    fn admit(&self, token: &str, chat: &ChatId) -> Result<u64, u64> {
        let now = Instant::now();
        let config = &self.config;
        let mut guard = self.lock();
        let State {
            chats,
            bots,
            flood_waits,
            timeline,
            ..
        } = &mut *guard;
        let bot = bots.entry(token.to_owned()).or_insert_with(|| BotState {
            overall: Counted::new(config.overall),
            stats: KeyStats::default(),
        });
        let key = (token.to_owned(), chat.key.clone());
        let state = chats.entry(key).or_insert_with(|| ChatState {
            per_chat: Counted::new(config.per_chat),
            group: chat.is_group().then(|| Counted::new(config.per_group)),
            violations: 0,
            flooded_until: None,
            next_message_id: 1,
            stats: KeyStats::default(),
        });
        bot.overall.arrive(&mut bot.stats, now);
        state.per_chat.arrive(&mut state.stats, now);
        if let Some(group) = &mut state.group {
            group.peak.see(now);
        }

        let decision = match state.flooded_until {
            Some(until) if now < until => {
                *flood_waits += 1;
                Err(until - now)
            }
            _ => {
                state.flooded_until = None;
                let mut quotas = vec![&mut state.per_chat.quota, &mut bot.overall.quota];
                if let Some(group) = &mut state.group {
                    quotas.push(&mut group.quota);
                }
                admit_all(&mut quotas, now).map_err(|wait| {
                    state.violations += 1;
                    match config.flood_wait {
                        Some(flood) if state.violations >= config.flood_after => {
                            // Never shorter than the quota's own wait, so the end of
                            // the flood wait is a time the message is admitted.
                            let flood = flood.max(wait);
                            state.flooded_until = Some(now + flood);
                            state.violations = 0;
                            *flood_waits += 1;
                            flood
                        }
                        _ => wait,
                    }
                })
            }
        };
        self.timing.record(timeline, now, decision.is_ok());
        match decision {
            Ok(()) => {
                state.violations = 0;
                state.stats.settle(true, 1);
                bot.stats.settle(true, 1);
                let id = state.next_message_id;
                state.next_message_id += 1;
                Ok(id)
            }
            Err(wait) => {
                state.stats.settle(false, 0);
                bot.stats.settle(false, 0);
                Err(retry_after_secs(wait))
            }
        }
    }
}

impl Serve for TelegramSim {
    const NAME: &'static str = "RunningTelegramSim";
    type Shared = Shared;

    fn router(shared: Arc<Shared>) -> Router {
        Router::new()
            .route("/{bot}/sendMessage", post(send_message))
            .fallback(fallback)
            .with_state(shared)
    }

    fn stats(shared: &Shared) -> TelegramStats {
        let state = shared.lock();
        let mut per_chat = BTreeMap::<String, KeyStats>::new();
        for ((_, id), chat) in &state.chats {
            per_chat
                .entry(id.clone())
                .or_default()
                .accumulate(&chat.stats);
        }
        let mut overall = KeyStats::default();
        let per_bot = state
            .bots
            .iter()
            .map(|(token, bot)| {
                overall.accumulate(&bot.stats);
                (token.clone(), bot.stats)
            })
            .collect();
        TelegramStats {
            per_chat,
            per_bot,
            overall,
            group_max_in_window: state
                .chats
                .values()
                .filter_map(|c| c.group.as_ref().map(|group| group.peak.max()))
                .max()
                .unwrap_or(0),
            flood_waits: state.flood_waits,
            bad_requests: state.bad_requests,
            not_found: state.not_found,
            per_chat_limit: shared.config.per_chat,
            per_group_limit: shared.config.per_group,
            overall_limit: shared.config.overall,
            timeline: state.timeline.clone(),
        }
    }
}

fn respond(status: StatusCode, retry_after: Option<u64>, body: &Value) -> Response {
    response::json(status, "application/json", retry_after, body)
}

fn not_found(shared: &Shared) -> Response {
    shared.lock().not_found += 1;
    respond(StatusCode::NOT_FOUND, None, &body::error(404, "Not Found"))
}

async fn fallback(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    not_found(&shared)
}

/// A normalised chat id: the map key, and the id as the answer echoes it.
#[derive(Debug, PartialEq)]
struct ChatId {
    key: String,
    json: Value,
}

impl ChatId {
    fn parse(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => n.as_i64().map(Self::numeric),
            Value::String(s) => Self::parse_str(s),
            _ => None,
        }
    }

    fn parse_str(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Ok(n) = s.parse::<i64>() {
            return Some(Self::numeric(n));
        }
        (s.len() > 1 && s.starts_with('@')).then(|| Self {
            key: s.to_owned(),
            json: s.into(),
        })
    }

    fn numeric(n: i64) -> Self {
        Self {
            key: n.to_string(),
            json: n.into(),
        }
    }

    /// Negative ids are groups, supergroups and channels; so are `@username`s.
    fn is_group(&self) -> bool {
        self.key.starts_with('-') || self.key.starts_with('@')
    }

    fn chat_type(&self) -> &'static str {
        if self.key.starts_with('@') {
            "channel"
        } else if self.key.starts_with("-100") {
            "supergroup"
        } else if self.key.starts_with('-') {
            "group"
        } else {
            "private"
        }
    }
}

/// `chat_id` and `text` from a JSON or form-encoded body.
fn parse_params(headers: &HeaderMap, body: &[u8]) -> Result<(ChatId, String), &'static str> {
    let form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let (chat_id, text) = if form {
        let mut chat_id = None;
        let mut text = None;
        for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let pair = String::from_utf8_lossy(pair).replace('+', " ");
            let (key, value) = pair.split_once('=').unwrap_or((&pair, ""));
            let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
            match key {
                "chat_id" => chat_id = Some(Value::String(value)),
                "text" => text = Some(value),
                _ => {}
            }
        }
        (chat_id, text)
    } else {
        let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        (
            value.get("chat_id").cloned(),
            value.get("text").and_then(Value::as_str).map(str::to_owned),
        )
    };
    let chat_id = match chat_id {
        None | Some(Value::Null) => return Err("Bad Request: chat_id is empty"),
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err("Bad Request: chat_id is empty");
        }
        Some(value) => ChatId::parse(&value).ok_or("Bad Request: chat not found")?,
    };
    let text = text.unwrap_or_default();
    if text.trim().is_empty() {
        return Err("Bad Request: message text is empty");
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err("Bad Request: message is too long");
    }
    Ok((chat_id, text))
}

/// `POST /bot{token}/sendMessage`.
async fn send_message(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(bot): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = bot.strip_prefix("bot").filter(|t| !t.is_empty()) else {
        return not_found(&shared);
    };
    let (chat, text) = match parse_params(&headers, &body) {
        Ok(params) => params,
        Err(description) => {
            shared.lock().bad_requests += 1;
            return respond(
                StatusCode::BAD_REQUEST,
                None,
                &body::error(400, description),
            );
        }
    };
    match shared.admit(token, &chat) {
        Ok(message_id) => {
            shared.timing.hold().await;
            let date = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            respond(
                StatusCode::OK,
                None,
                &body::sent(message_id, date, &chat.json, chat.chat_type(), &text),
            )
        }
        Err(secs) => respond(
            StatusCode::TOO_MANY_REQUESTS,
            Some(secs),
            &body::too_many_requests(secs),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(content_type: &str, body: &str) -> Result<(ChatId, String), &'static str> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, content_type.parse().expect("header"));
        parse_params(&headers, body.as_bytes())
    }

    #[test]
    fn chat_ids_are_normalised_and_groups_recognised() {
        let json = params("application/json", r#"{"chat_id":"-42","text":"hi"}"#);
        let (chat, text) = json.expect("valid");
        assert_eq!(
            (chat.key.as_str(), &chat.json, text.as_str()),
            ("-42", &json!(-42), "hi")
        );
        assert!(chat.is_group());
        let form = params(
            "application/x-www-form-urlencoded",
            "chat_id=%40news&text=hello+world%21",
        );
        let (chat, text) = form.expect("valid");
        assert_eq!(
            (chat.key.as_str(), text.as_str()),
            ("@news", "hello world!")
        );
        assert_eq!(chat.chat_type(), "channel");
        assert_eq!(ChatId::numeric(7).chat_type(), "private");
        assert!(!ChatId::numeric(7).is_group());
    }

    #[test]
    fn bad_parameters_are_described_as_the_bot_api_does() {
        assert_eq!(
            params("application/json", r#"{"text":"hi"}"#).err(),
            Some("Bad Request: chat_id is empty")
        );
        assert_eq!(
            params("application/json", r#"{"chat_id":1,"text":""}"#).err(),
            Some("Bad Request: message text is empty")
        );
        assert_eq!(
            params("application/json", r#"{"chat_id":"nobody","text":"x"}"#).err(),
            Some("Bad Request: chat not found")
        );
        let long = format!(r#"{{"chat_id":1,"text":"{}"}}"#, "x".repeat(4097));
        assert_eq!(
            params("application/json", &long).err(),
            Some("Bad Request: message is too long")
        );
    }
}
