//! Broadcast messages to many Telegram chats within the Bot API's limits, handing a
//! long flood wait back to the caller as a reschedule time instead of sleeping on it.
//!
//! The example starts the Telegram simulator of `tollgate-sim` in process with the
//! Bot FAQ's limits (1 message per second per chat, 30 per second per bot; private
//! chats only, so the per-group limit does not apply) and flood waits of 4310 s. Before
//! the broadcast, a careless client (no limits, no retries) floods one chat (`--flooded`,
//! chat 1007 by default) with four messages at once: the simulator puts that chat under
//! a 4310 s flood wait, as Telegram does to a bot that keeps ignoring `retry_after`.
//! The broadcast starts a little over a second later (out of the bot's window, well
//! inside the flood wait); server figures below are the broadcast's own, except the
//! flooded chat's row, which includes the careless client's four requests.
//!
//! Then `--chats` chats (40) get `--messages` messages each (3), every chat sent
//! in order by its own task, all chats at once, through:
//!
//! `RetryAfterBackoff` (Telegram preset: waits over 60 s go back to the caller as
//! `ErrorKind::RetryLater` with `retry_at`) → `QuotaWindow` per bot (constant key,
//! sliding, 30 per 1 s) → `QuotaWindow` per chat (smooth, 1 per 1 s) →
//! `ThrottleClassifier` (Telegram preset) → `hyper_util` client, `POST
//! /bot{token}/sendMessage` with a JSON body in a `Full<Bytes>` (`Clone`, so retries
//! can replay it). Both quotas are widened by 5 ms for the time between our admission
//! and the server's count, and the per-bot queue releases at least 30 ms apart (a
//! little under 1 s / 30, so that timer lateness does not add up; see
//! `tollgate_examples::telegram`, where this client is shared with the `goodput`
//! comparison).
//!
//! **Order of the two quota layers**: a layer counts a request when it admits it, the
//! server when it arrives; a request that then waits in the other quota layer's queue
//! reaches the server later than the outer layer counted it, so only the innermost
//! layer is exact on the wire. The per-chat layer is innermost: with it outermost, a
//! chat's message held in the bot's queue for 400 ms was followed 650 ms later by the
//! chat's next one, and the server answered `429` (seen with 20 chats).
//!
//! **The chat key**: the chat id lives in the JSON body, which a `KeyExtractor` cannot
//! read cheaply (it runs synchronously on the request head), so every request also
//! carries the chat id in an `x-chat-id` header, keyed with `Header::new("x-chat-id")`.
//! The simulator ignores the header; a real Bot API server does too.
//!
//! **The flood wait and the bot key**: the Telegram classifier scopes a `429` to "the
//! key the request went under" (Telegram's answer does not say which limit it was),
//! and a `QuotaWindow` cools its own key down on such a signal. The per-bot layer's key
//! is the whole bot, so obeying a 4310 s flood wait on one chat there would stop every
//! other chat for 71 minutes. The per-bot layer is therefore built with
//! `.obey_throttles(ObeyThrottles::GlobalOnly)`: the per-chat layer cools the flooded
//! chat down, the bot layer keeps pacing the bot at 30/s, and the retry layer hands the
//! flood wait back as `RetryLater`.
//!
//! A chat whose send comes back as `RetryLater` is rescheduled with the rest of its
//! messages (`chat X: rescheduled in N s`); the run asserts that it took seconds, not
//! the flood wait. The summary table shows, per chat, what was sent and rescheduled,
//! with the server's own counts; the exit code is 1 if a message was neither delivered
//! nor rescheduled, or if a rescheduled send had been waited out.
//!
//! Run it with:
//!
//! ```text
//! cargo run --release -p tollgate-examples --example telegram_broadcast
//! cargo run --release -p tollgate-examples --example telegram_broadcast -- --chats 20 --messages 3
//! ```
//!
//! Flags: `--chats N` (40), `--messages N` per chat (3), `--flooded N` (the index of
//! the pre-flooded chat, 7; `--flooded none` for no flood), `--quiet` (no per-chat
//! table).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::time::Instant;
use tollgate::ErrorKind;
use tollgate_examples::strategy::{Strategy, Svc};
use tollgate_examples::telegram::{
    BOT_WINDOW, FLOOD_AFTER, build_client, chat_id, send_request, simulator,
};
use tollgate_sim::telegram::TEST_TOKEN;
use tower::{BoxError, ServiceExt};

struct Args {
    chats: usize,
    messages: usize,
    flooded: Option<usize>,
    quiet: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        chats: 40,
        messages: 3,
        flooded: Some(7),
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--chats" => args.chats = value()?.parse().map_err(|e| format!("--chats: {e}"))?,
            "--messages" => {
                args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?;
            }
            "--flooded" => {
                args.flooded = match value()?.as_str() {
                    "none" => None,
                    n => Some(n.parse().map_err(|e| format!("--flooded: {e}"))?),
                };
            }
            "--quiet" => args.quiet = true,
            "-h" | "--help" => {
                return Err("usage: telegram_broadcast [--chats N] [--messages N] \
                            [--flooded N|none] [--quiet]"
                    .to_owned());
            }
            other => return Err(format!("unknown flag {other:?} (try --help)")),
        }
    }
    if args.chats == 0 || args.messages == 0 {
        return Err("--chats and --messages must be at least 1".to_owned());
    }
    if args.flooded.is_some_and(|f| f >= args.chats) {
        return Err("--flooded must be below --chats".to_owned());
    }
    Ok(args)
}

/// What happened to one chat's messages.
#[derive(Default)]
struct ChatResult {
    delivered: usize,
    /// Messages handed back for later, and when.
    rescheduled: usize,
    retry_in: Option<Duration>,
    failed: Vec<String>,
    /// Sends (including tollgate's own retries) that came back through the stack.
    attempts: u32,
}

async fn broadcast_chat(
    client: Svc<Full<Bytes>>,
    url: String,
    chat: i64,
    messages: usize,
) -> ChatResult {
    let mut result = ChatResult::default();
    for n in 0..messages {
        let text = format!("broadcast {n} to chat {chat}");
        let request = match send_request(&url, chat, &text) {
            Ok(request) => request,
            Err(e) => {
                result.failed.push(e.to_string());
                continue;
            }
        };
        match client.clone().oneshot(request).await {
            Ok(response) => {
                result.attempts += response
                    .extensions()
                    .get::<tollgate::retry::Attempts>()
                    .map_or(1, tollgate::retry::Attempts::sent);
                let ok = response.status() == StatusCode::OK
                    && serde_json::from_slice::<Value>(response.body())
                        .is_ok_and(|v| v["ok"] == true);
                if ok {
                    result.delivered += 1;
                } else {
                    result.failed.push(format!("status {}", response.status()));
                }
            }
            Err(err) => match err.downcast_ref::<tollgate::Error>() {
                // A long flood wait: this and the chat's remaining messages go back
                // to the caller's queue, to be sent at `retry_at`.
                Some(e) if e.kind() == ErrorKind::RetryLater => {
                    let at = e.retry_at().unwrap_or_else(Instant::now);
                    let wait = at.saturating_duration_since(Instant::now());
                    println!(
                        "chat {chat}: rescheduled in {} s",
                        wait.as_secs_f64().round()
                    );
                    result.rescheduled = messages - n;
                    result.retry_in = Some(wait);
                    return result;
                }
                _ => result.failed.push(err.to_string()),
            },
        }
    }
    result
}

/// The careless client of a previous run: no limits, no retries, four messages at once.
async fn flood(url: &str, chat: i64) -> Result<(), BoxError> {
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut sends = tokio::task::JoinSet::new();
    for n in 0..=FLOOD_AFTER {
        let request = send_request(url, chat, &format!("careless {n}"))?;
        let http = http.clone();
        sends.spawn(async move { http.request(request).await });
    }
    while let Some(sent) = sends.join_next().await {
        sent??;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };

    let sim = simulator().start().await?;
    let url = sim.send_message_url(TEST_TOKEN);

    if let Some(index) = args.flooded {
        flood(&url, chat_id(index)).await?;
        // Some time later: the flood is out of the bot's window, not out of the wait.
        tokio::time::sleep(BOT_WINDOW + Duration::from_millis(100)).await;
    }
    let before = sim.stats();
    let flooded_now = before.flood_waits;
    if args.flooded.is_some() {
        println!(
            "a careless client flooded chat {}: {} requests, {} answered 429, {} with the flood wait",
            chat_id(args.flooded.unwrap_or(0)),
            before.overall.requests,
            before.overall.throttled(),
            flooded_now
        );
    }

    let client = build_client(Strategy::Tollgate)?;
    let started = Instant::now();
    let mut chats = tokio::task::JoinSet::new();
    for index in 0..args.chats {
        let (client, url, messages) = (client.clone(), url.clone(), args.messages);
        chats.spawn(async move {
            let chat = chat_id(index);
            (chat, broadcast_chat(client, url, chat, messages).await)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = chats.join_next().await {
        results.push(joined?);
    }
    let elapsed = started.elapsed();
    results.sort_by_key(|(chat, _)| *chat);
    let stats = sim.shutdown().await;

    let expected = args.chats * args.messages;
    let delivered: usize = results.iter().map(|(_, r)| r.delivered).sum();
    let rescheduled: usize = results.iter().map(|(_, r)| r.rescheduled).sum();
    let failed: usize = results.iter().map(|(_, r)| r.failed.len()).sum();
    let attempts: u32 = results.iter().map(|(_, r)| r.attempts).sum();
    let lost = expected.saturating_sub(delivered + rescheduled + failed);
    let requests = stats.overall.requests - before.overall.requests;
    let server_429 = stats.overall.throttled() - before.overall.throttled();
    let floods = stats.flood_waits - before.flood_waits;

    if !args.quiet {
        println!(
            "\n| chat | delivered | rescheduled | retry in | failed | server requests | server 429 | most in 1 s |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (chat, r) in &results {
            let server = stats.per_chat.get(&chat.to_string());
            let cell = |f: fn(&tollgate_sim::KeyStats) -> u64| {
                server.map_or_else(|| "-".to_owned(), |k| f(k).to_string())
            };
            println!(
                "| {chat} | {}/{} | {} | {} | {} | {} | {} | {} |",
                r.delivered,
                args.messages,
                r.rescheduled,
                r.retry_in
                    .map_or_else(|| "-".to_owned(), |d| format!("{:.0} s", d.as_secs_f64())),
                r.failed.len(),
                cell(|k| k.requests),
                cell(tollgate_sim::KeyStats::throttled),
                cell(|k| k.max_in_window),
            );
        }
    }
    for (chat, r) in &results {
        for failure in &r.failed {
            eprintln!("chat {chat}: failed: {failure}");
        }
    }
    println!(
        "\n{delivered}/{expected} messages delivered, {rescheduled} rescheduled, {failed} failed, {lost} lost, \
         in {:.2} s ({attempts} sends through the stack)",
        elapsed.as_secs_f64()
    );
    println!(
        "server (broadcast only): {requests} requests, {server_429} answered 429 ({floods} with the flood wait); \
         over the whole run, most per bot in any {:?}: {} (limit {}), most per chat in any {:?} (the flooded chat aside): {} (limit {})",
        stats.overall_limit.window,
        stats.overall.max_in_window,
        stats.overall_limit.limit,
        stats.per_chat_limit.window,
        stats
            .per_chat
            .iter()
            .filter(|(chat, _)| args
                .flooded
                .is_none_or(|f| **chat != chat_id(f).to_string()))
            .map(|(_, k)| k.max_in_window)
            .max()
            .unwrap_or(0),
        stats.per_chat_limit.limit,
    );

    // The flood wait was handed back, not waited out: the run takes seconds.
    let quick = elapsed < Duration::from_secs(60);
    if !quick {
        eprintln!("the run took {elapsed:?}: a flood wait was waited out");
    }
    if lost > 0 || failed > 0 || !quick {
        std::process::exit(1);
    }
    Ok(())
}
