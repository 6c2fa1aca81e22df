//! The Chat simulator over loopback, driven by a plain `hyper_util` client (no
//! tollgate): what it answers and what it records.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Answer, HttpClient, admitted_and_throttled, client, send_json};
use tollgate_sim::ChatSim;
use tollgate_sim::chat::DEFAULT_PROJECT;

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    project: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let project = project.map(|p| ("x-goog-user-project", p));
    send_json(client, method, url, project.as_slice(), body).await
}

async fn write(client: &HttpClient, url: &str, text: &str) -> Answer {
    send(
        client,
        Method::POST,
        url,
        None,
        Some(json!({ "text": text })),
    )
    .await
}

async fn read(client: &HttpClient, url: &str) -> Answer {
    send(client, Method::GET, url, None, None).await
}

async fn create(client: &HttpClient, url: &str) -> Answer {
    let space = json!({"spaceType":"SPACE","displayName":"Team"});
    send(client, Method::POST, url, None, Some(space)).await
}

/// Asserts the exact `RESOURCE_EXHAUSTED` answer and returns its `retryDelay`.
fn assert_resource_exhausted(answer: &Answer) -> Duration {
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.body
    );
    let delay = answer.body["error"]["details"][0]["retryDelay"]
        .as_str()
        .expect("retryDelay")
        .to_owned();
    assert_eq!(
        answer.body,
        json!({"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":delay}]}})
    );
    let seconds: f64 = delay
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .expect("a proto duration");
    assert!(seconds > 0.0, "{delay}");
    Duration::from_secs_f64(seconds)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test]
async fn space_writes_give_resource_exhausted_and_retry_delay_is_exact() {
    let sim = ChatSim::new()
        .spaces(2)
        .space_writes(3, ms(1000))
        .start()
        .await
        .expect("sim starts");
    let client = client();
    let url = sim.messages_url("space-0");
    for i in 0..3 {
        let ok = write(&client, &url, &format!("m{i}")).await;
        ok.assert_ok();
    }
    tokio::time::sleep(ms(300)).await;
    let throttled = write(&client, &url, "late").await;
    let delay = assert_resource_exhausted(&throttled);
    // About 0.7 s: the first write leaves the window 1 s after it came.
    assert!(delay > ms(400) && delay <= ms(700), "{delay:?}");
    assert_eq!(throttled.header("retry-after"), None);
    // Another space, and reads of this one, are not affected.
    write(&client, &sim.messages_url("space-1"), "x")
        .await
        .assert_ok();
    read(&client, &url).await.assert_ok();
    // Retrying exactly after retryDelay is admitted.
    tokio::time::sleep(delay).await;
    let ok = write(&client, &url, "on time").await;
    ok.assert_ok();
    assert_eq!(
        ok.body,
        json!({"name":"spaces/space-0/messages/4","text":"on time","space":{"name":"spaces/space-0"}})
    );

    let stats = sim.shutdown().await;
    let space = stats.per_space["space-0"];
    assert_eq!(
        (
            space.writes.requests,
            space.writes.ok,
            space.writes.throttled_quota
        ),
        (5, 4, 1)
    );
    assert_eq!(space.writes.max_in_window, 4);
    assert_eq!(space.writes.messages_served, 4);
    assert_eq!((space.reads.requests, space.reads.messages_served), (1, 3));
    let project = stats.per_project[DEFAULT_PROJECT];
    assert_eq!(
        (project.message_writes.requests, project.message_writes.ok),
        (6, 5)
    );
    assert_eq!(project.message_writes.throttled_quota, 1);
    assert_eq!(admitted_and_throttled(&stats.timeline).1, 1);
}

#[tokio::test]
async fn space_reads_are_limited_apart_and_list_what_was_written() {
    let sim = ChatSim::new()
        .space_reads(2, ms(800))
        .retry_after(true)
        .start()
        .await
        .expect("sim starts");
    let client = client();
    let url = sim.messages_url("space-0");
    let empty = read(&client, &url).await;
    assert_eq!((empty.status, &empty.body), (StatusCode::OK, &json!({})));
    write(&client, &url, "hello").await;
    let page = read(&client, &url).await;
    assert_eq!(page.body["messages"][0]["text"], "hello");
    let throttled = read(&client, &url).await;
    let delay = assert_resource_exhausted(&throttled);
    assert!(delay <= ms(800), "{delay:?}");
    // With retry_after(true): whole seconds, rounded up.
    assert_eq!(throttled.header("retry-after"), Some("1"));
    write(&client, &url, "still").await.assert_ok();
    tokio::time::sleep(delay).await;
    let page = read(&client, &format!("{url}?pageSize=1")).await;
    page.assert_ok();
    assert_eq!(page.body["messages"].as_array().map(Vec::len), Some(1));

    let stats = sim.shutdown().await;
    let space = stats.per_space["space-0"];
    assert_eq!(
        (
            space.reads.requests,
            space.reads.ok,
            space.reads.throttled()
        ),
        (4, 3, 1)
    );
    assert_eq!(space.reads.messages_served, 2);
    assert_eq!((space.writes.requests, space.writes.ok), (2, 2));
    assert_eq!(stats.space_reads_limit.limit, 2);
}

#[tokio::test]
async fn project_quotas_span_spaces_and_projects_are_apart() {
    let sim = ChatSim::new()
        .spaces(3)
        .project_writes(4, ms(1000))
        .start()
        .await
        .expect("sim starts");
    let client = client();
    for space in ["space-0", "space-1", "space-2", "space-0"] {
        let ok = write(&client, &sim.messages_url(space), "x").await;
        ok.assert_ok();
    }
    let url = sim.messages_url("space-2");
    let delay = assert_resource_exhausted(&write(&client, &url, "x").await);
    // Another project writes to the same space.
    let other = send(
        &client,
        Method::POST,
        &url,
        Some("other-project"),
        Some(json!({"text":"x"})),
    )
    .await;
    other.assert_ok();
    tokio::time::sleep(delay).await;
    write(&client, &url, "x").await.assert_ok();

    let stats = sim.shutdown().await;
    let main = stats.per_project[DEFAULT_PROJECT].message_writes;
    assert_eq!((main.requests, main.ok, main.throttled_quota), (6, 5, 1));
    assert_eq!(main.max_in_window, 5);
    assert_eq!(stats.per_project["other-project"].message_writes.ok, 1);
    // The refusal counts for the space too, although its own quota had room.
    assert_eq!(stats.per_space["space-2"].writes.throttled_quota, 1);
    assert_eq!(stats.per_space["space-2"].writes.ok, 3);
}

#[tokio::test]
async fn space_creation_is_under_two_windows_at_once() {
    let sim = ChatSim::new()
        .space_creations(2, ms(500))
        .space_creations_long(3, ms(2000))
        .start()
        .await
        .expect("sim starts");
    let client = client();
    let url = sim.spaces_url();
    let first = create(&client, &url).await;
    assert_eq!(
        first.body,
        json!({"name":"spaces/created-1","spaceType":"SPACE","displayName":"Team"})
    );
    create(&client, &url).await.assert_ok();
    // The short window is full for about 0.5 s.
    let short = assert_resource_exhausted(&create(&client, &url).await);
    assert!(short <= ms(500), "{short:?}");
    tokio::time::sleep(short).await;
    create(&client, &url).await.assert_ok();
    // 0.5 s later the short window has room, but the long one is full until the
    // first creation leaves it, 2 s after it came.
    tokio::time::sleep(ms(500)).await;
    let long = assert_resource_exhausted(&create(&client, &url).await);
    assert!(long > ms(500) && long <= ms(1000), "{long:?}");
    // Five requests, refused ones included, within one long window so far.
    let mid = sim.stats().per_project[DEFAULT_PROJECT];
    assert_eq!(mid.space_creations_max_in_long_window, 5);
    tokio::time::sleep(long).await;
    let ok = create(&client, &url).await;
    assert_eq!(ok.body["name"], "spaces/created-4");
    // A created space takes messages.
    let message = write(&client, &sim.messages_url("created-4"), "hi").await;
    message.assert_ok();

    let stats = sim.shutdown().await;
    let project = stats.per_project[DEFAULT_PROJECT];
    let creations = project.space_creations;
    assert_eq!(
        (creations.requests, creations.ok, creations.throttled_quota),
        (6, 4, 2)
    );
    assert_eq!(creations.max_in_window, 3);
    assert_eq!(stats.per_space.len(), 5);
    assert_eq!(stats.space_creations_long_limit.window, ms(2000));
}

#[tokio::test]
async fn unknown_spaces_and_bad_bodies() {
    let sim = ChatSim::new().start().await.expect("sim starts");
    let client = client();
    let unknown = write(&client, &sim.messages_url("nowhere"), "x").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["error"]["status"], "NOT_FOUND");
    let path = read(
        &client,
        &format!("{}/v1/spaces/space-0/members", sim.base_url()),
    )
    .await;
    assert_eq!(path.status, StatusCode::NOT_FOUND);
    let bad = send(
        &client,
        Method::POST,
        &sim.messages_url("space-0"),
        None,
        Some(json!([1])),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["status"], "INVALID_ARGUMENT");
    let stats = sim.shutdown().await;
    assert_eq!((stats.not_found, stats.bad_requests), (2, 1));
    assert_eq!(stats.per_space["space-0"].writes.requests, 0);
    assert!(stats.per_project.is_empty());
}

#[tokio::test]
async fn admitted_requests_are_held_for_the_latency_and_refusals_are_not() {
    let sim = ChatSim::new()
        .space_writes(1, Duration::from_secs(10))
        .latency(ms(300))
        .start()
        .await
        .expect("sim starts");
    let client = client();
    let url = sim.messages_url("space-0");
    let start = tokio::time::Instant::now();
    write(&client, &url, "x").await.assert_ok();
    assert!(start.elapsed() >= ms(300), "{:?}", start.elapsed());
    let start = tokio::time::Instant::now();
    assert_resource_exhausted(&write(&client, &url, "x").await);
    assert!(start.elapsed() < ms(300), "{:?}", start.elapsed());
    sim.shutdown().await;
}
