//! The Telegram simulator over loopback, driven by a plain `hyper_util` client (no
//! tollgate): what it answers and what it records.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Answer, HttpClient, admitted_and_throttled, client, send_json};
use tollgate_sim::telegram::TEST_TOKEN;
use tollgate_sim::{RunningTelegramSim, TelegramSim};

async fn post(client: &HttpClient, url: &str, content_type: &str, body: String) -> Answer {
    let headers = [("content-type", content_type)];
    support::send(client, Method::POST, url, &headers, body.into()).await
}

/// `sendMessage` with a JSON body.
async fn send(client: &HttpClient, url: &str, chat_id: Value, text: &str) -> Answer {
    let body = json!({ "chat_id": chat_id, "text": text });
    send_json(client, Method::POST, url, &[], Some(body)).await
}

/// Starts `sim`; a client and the `sendMessage` URL of [`TEST_TOKEN`].
async fn start(sim: TelegramSim) -> (RunningTelegramSim, HttpClient, String) {
    let sim = sim.start().await.expect("sim starts");
    let url = sim.send_message_url(TEST_TOKEN);
    (sim, client(), url)
}

fn retry_after(answer: &Answer) -> Option<u64> {
    answer.header("retry-after").and_then(|v| v.parse().ok())
}

/// Asserts the exact `429` of the Bot API with `retry_after` `n`, header and body.
fn assert_too_many_requests(answer: &Answer, n: u64) {
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.body
    );
    assert_eq!(retry_after(answer), Some(n));
    assert_eq!(
        answer.body,
        json!({"ok":false,"error_code":429,"description":format!("Too Many Requests: retry after {n}"),"parameters":{"retry_after":n}})
    );
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test]
async fn per_chat_limit_gives_the_bot_api_429_and_retry_after_is_never_early() {
    let (sim, client, url) =
        start(TelegramSim::new().per_chat(1, Duration::from_millis(1500))).await;
    let ok = send(&client, &url, json!(42), "one").await;
    ok.assert_ok();
    let throttled = send(&client, &url, json!(42), "two").await;
    // 1.5 s remain, rounded up.
    assert_too_many_requests(&throttled, 2);
    assert_eq!(throttled.header("content-type"), Some("application/json"));
    // Another chat is not affected.
    send(&client, &url, json!(43), "x").await.assert_ok();
    // One second later 0.5 s remain: still refused, and told 1 (rounded up).
    tokio::time::sleep(secs(1)).await;
    assert_too_many_requests(&send(&client, &url, json!(42), "three").await, 1);
    // Honouring that is exactly enough.
    tokio::time::sleep(secs(1)).await;
    let ok = send(&client, &url, json!(42), "four").await;
    ok.assert_ok();
    assert_eq!(ok.body["result"]["message_id"], 2);

    let stats = sim.shutdown().await;
    let chat = stats.per_chat["42"];
    assert_eq!((chat.requests, chat.ok, chat.throttled_quota), (4, 2, 2));
    assert_eq!(chat.messages_served, 2);
    // At 0, 0 and 1 s: three within one 1.5 s window.
    assert_eq!(chat.max_in_window, 3);
    assert_eq!(stats.overall.requests, 5);
    assert_eq!(stats.overall.throttled(), 2);
    assert_eq!(stats.flood_waits, 0);
    assert_eq!(admitted_and_throttled(&stats.timeline), (3, 2));
    assert_eq!(stats.per_chat_limit.window, Duration::from_millis(1500));
}

#[tokio::test]
async fn group_chats_have_their_own_limit_on_top_of_the_per_chat_one() {
    let (sim, client, url) = start(
        TelegramSim::new()
            .per_chat(1, Duration::from_millis(100))
            .per_group(3, Duration::from_millis(1800)),
    )
    .await;
    for chat in [json!(-1001), json!(7)] {
        for i in 0..4 {
            let answer = send(&client, &url, chat.clone(), "hi").await;
            let group = chat == json!(-1001);
            if group && i == 3 {
                // The first of the three leaves the group window 1.8 s after it came.
                assert_too_many_requests(&answer, 2);
            } else {
                assert_eq!(answer.status, StatusCode::OK, "{chat} #{i}");
            }
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    }
    // Strings holding integers and `@usernames` are chats too; usernames are groups.
    let answer = send(&client, &url, json!("-1001"), "again").await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    let channel = send(&client, &url, json!("@news"), "hi").await;
    assert_eq!(
        channel.body["result"]["chat"],
        json!({"id":"@news","type":"channel"})
    );

    tokio::time::sleep(secs(retry_after(&answer).expect("retry-after"))).await;
    let ok = send(&client, &url, json!(-1001), "late").await;
    ok.assert_ok();
    assert_eq!(
        ok.body["result"]["chat"],
        json!({"id":-1001,"type":"supergroup"})
    );

    let stats = sim.shutdown().await;
    let group = stats.per_chat["-1001"];
    assert_eq!((group.requests, group.ok, group.throttled_quota), (6, 4, 2));
    assert_eq!(stats.per_chat["7"].ok, 4);
    assert_eq!(stats.group_max_in_window, 5);
    assert_eq!(stats.per_group_limit.limit, 3);
}

#[tokio::test]
async fn the_overall_limit_is_per_bot_token() {
    let (sim, client, url) = start(TelegramSim::new().overall(3, secs(1))).await;
    for chat in 1..=3 {
        send(&client, &url, json!(chat), "x").await.assert_ok();
    }
    assert_too_many_requests(&send(&client, &url, json!(4), "x").await, 1);
    // Another bot has its own overall and per-chat limits.
    let other = sim.send_message_url("987654:other");
    for chat in [4, 1] {
        send(&client, &other, json!(chat), "x").await.assert_ok();
    }
    tokio::time::sleep(secs(1)).await;
    send(&client, &url, json!(5), "x").await.assert_ok();
    let stats = sim.shutdown().await;
    assert_eq!(stats.overall.requests, 7);
    assert_eq!(stats.overall.ok, 6);
    assert_eq!(stats.overall.max_in_window, 4);
    let bot = stats.per_bot[TEST_TOKEN];
    assert_eq!((bot.requests, bot.ok, bot.throttled_quota), (5, 4, 1));
    assert_eq!(bot.max_in_window, 4);
    assert_eq!(stats.per_bot["987654:other"].ok, 2);
    // Per chat, over both bots.
    assert_eq!(stats.per_chat["4"].throttled_quota, 1);
    assert_eq!(stats.per_chat["1"].ok, 2);
    assert_eq!(stats.per_chat["1"].max_in_window, 1);
    assert_eq!(stats.overall_limit.limit, 3);
}

#[tokio::test]
async fn consecutive_violations_put_a_chat_under_a_long_flood_wait() {
    let (sim, client, url) = start(
        TelegramSim::new()
            .per_chat(1, secs(10))
            .flood_wait(secs(4310))
            .flood_after(2),
    )
    .await;
    send(&client, &url, json!(1), "x").await.assert_ok();
    assert_too_many_requests(&send(&client, &url, json!(1), "x").await, 10);
    // The second in a row starts the flood wait, and every request is told the rest.
    assert_too_many_requests(&send(&client, &url, json!(1), "x").await, 4310);
    assert_too_many_requests(&send(&client, &url, json!(1), "x").await, 4310);
    // Other chats are not affected.
    send(&client, &url, json!(2), "x").await.assert_ok();
    let stats = sim.shutdown().await;
    assert_eq!(stats.flood_waits, 2);
    assert_eq!(stats.per_chat["1"].throttled_quota, 3);
}

#[tokio::test]
async fn a_flood_wait_ends_when_it_has_passed() {
    let (sim, client, url) = start(
        TelegramSim::new()
            .per_chat(1, Duration::from_millis(100))
            .flood_wait(Duration::from_millis(1500))
            .flood_after(1),
    )
    .await;
    send(&client, &url, json!(1), "x").await.assert_ok();
    assert_too_many_requests(&send(&client, &url, json!(1), "x").await, 2);
    // Long after the per-chat window, the flood wait still holds: 0.5 s remain.
    tokio::time::sleep(secs(1)).await;
    assert_too_many_requests(&send(&client, &url, json!(1), "x").await, 1);
    tokio::time::sleep(secs(1)).await;
    send(&client, &url, json!(1), "x").await.assert_ok();
    let stats = sim.shutdown().await;
    assert_eq!(stats.flood_waits, 2);
    assert_eq!(stats.per_chat["1"].ok, 2);
}

#[tokio::test]
async fn form_bodies_success_shape_and_errors() {
    let (sim, client, url) = start(TelegramSim::new().per_chat(10, secs(1))).await;
    let form = "application/x-www-form-urlencoded";
    let ok = post(&client, &url, form, "chat_id=42&text=hello+there%21".into()).await;
    ok.assert_ok();
    let result = &ok.body["result"];
    assert_eq!(ok.body["ok"], true);
    assert_eq!(result["message_id"], 1);
    assert_eq!(result["chat"], json!({"id":42,"type":"private"}));
    assert_eq!(result["text"], "hello there!");
    assert!(result["date"].as_u64().is_some_and(|d| d > 1_700_000_000));
    let second = send(&client, &url, json!(42), "again").await;
    assert_eq!(second.body["result"]["message_id"], 2);

    let empty = post(&client, &url, form, "chat_id=42".into()).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        empty.body,
        json!({"ok":false,"error_code":400,"description":"Bad Request: message text is empty"})
    );
    let no_chat = send(&client, &url, Value::Null, "x").await;
    assert_eq!(no_chat.body["description"], "Bad Request: chat_id is empty");
    let base = sim.base_url().to_owned();
    let wrong = post(
        &client,
        &format!("{base}/nobot/sendMessage"),
        form,
        String::new(),
    )
    .await;
    assert_eq!(
        wrong.body,
        json!({"ok":false,"error_code":404,"description":"Not Found"})
    );
    let method = post(
        &client,
        &format!("{base}/bot1:x/getMe"),
        form,
        String::new(),
    )
    .await;
    assert_eq!(method.status, StatusCode::NOT_FOUND);

    let stats = sim.shutdown().await;
    assert_eq!((stats.bad_requests, stats.not_found), (2, 2));
    assert_eq!(stats.overall.requests, 2);
    assert_eq!(stats.per_chat["42"].messages_served, 2);
}

#[tokio::test]
async fn admitted_messages_are_held_for_the_latency() {
    let (sim, client, url) = start(TelegramSim::new().latency(Duration::from_millis(300))).await;
    let start = tokio::time::Instant::now();
    send(&client, &url, json!(1), "x").await.assert_ok();
    assert!(start.elapsed() >= Duration::from_millis(300));
    let start = tokio::time::Instant::now();
    assert_too_many_requests(&send(&client, &url, json!(1), "x").await, 1);
    assert!(start.elapsed() < Duration::from_millis(300));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_flood_wait_is_never_shorter_than_the_limit_it_punishes() {
    let (sim, client, url) = start(
        TelegramSim::new()
            .per_chat(1, secs(3))
            .flood_wait(secs(1))
            .flood_after(1),
    )
    .await;
    send(&client, &url, json!(1), "x").await.assert_ok();
    // The per-chat limit holds for 3 s, longer than the 1 s flood wait.
    assert_too_many_requests(&send(&client, &url, json!(1), "x").await, 3);
    assert_too_many_requests(&send(&client, &url, json!(1), "x").await, 3);
    let stats = sim.shutdown().await;
    assert_eq!(stats.flood_waits, 2);
}
