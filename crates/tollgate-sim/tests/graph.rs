//! The Graph simulator over loopback, driven by a plain `hyper_util` client (no
//! tollgate): what it answers and what it records.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Answer, HttpClient, admitted_and_throttled, client, send_json};
use tollgate_sim::GraphSim;

async fn send(client: &HttpClient, method: Method, url: &str, body: Option<Value>) -> Answer {
    send_json(client, method, url, &[], body).await
}

async fn get(client: &HttpClient, url: &str) -> Answer {
    send(client, Method::GET, url, None).await
}

fn assert_too_many_requests_body(body: &Value) {
    let error = &body["error"];
    assert_eq!(error["code"], "TooManyRequests");
    assert_eq!(error["message"], "Please retry again later.");
    let inner = error["innerError"].as_object().expect("innerError object");
    for key in ["date", "request-id", "client-request-id"] {
        assert!(inner[key].is_string(), "innerError.{key} in {body}");
    }
    assert_eq!(error.as_object().map(|e| e.len()), Some(3), "{body}");
}

fn batch_of(mailbox: &str, count: usize) -> Value {
    let requests: Vec<Value> = (0..count)
        .map(|i| {
            json!({
                "id": (i + 1).to_string(),
                "method": "GET",
                "url": format!("/users/{mailbox}/messages?$top=1&$skip={i}"),
            })
        })
        .collect();
    json!({ "requests": requests })
}

#[tokio::test]
async fn paging_returns_every_message_exactly_once() {
    let sim = GraphSim::new()
        .mailboxes(3)
        .messages_per_mailbox(25)
        .start()
        .await
        .expect("sim starts");
    let client = client();
    let mut all = HashSet::new();
    let mailboxes: Vec<String> = sim.mailboxes().map(str::to_owned).collect();
    for mailbox in &mailboxes {
        let mut url = format!("{}?$top=7", sim.messages_url(mailbox));
        let mut pages = 0;
        loop {
            let answer = get(&client, &url).await;
            answer.assert_ok();
            pages += 1;
            for message in answer.body["value"].as_array().expect("value array") {
                let id = message["id"].as_str().expect("id").to_owned();
                assert!(all.insert(id), "served twice: {message}");
            }
            match answer.body["@odata.nextLink"].as_str() {
                Some(next) => url = next.to_owned(),
                None => break,
            }
        }
        assert_eq!(pages, 4, "25 messages in pages of 7");
    }
    assert_eq!(all.len(), 75);
    let stats = sim.shutdown().await;
    assert_eq!(stats.totals.messages_served, 75);
    assert_eq!(stats.totals.requests, 12);
    assert_eq!(stats.totals.ok, 12);
    assert_eq!(stats.totals.throttled(), 0);
    for mailbox in &mailboxes {
        assert_eq!(stats.per_mailbox[mailbox].messages_served, 25);
    }
}

#[tokio::test]
async fn exceeding_the_quota_gives_429_with_retry_after_and_the_graph_body() {
    let sim = GraphSim::new()
        .mailboxes(2)
        .quota(3, Duration::from_secs(1))
        .start()
        .await
        .expect("sim starts");
    let client = client();
    let url = sim.messages_url("mailbox-0");
    for _ in 0..3 {
        get(&client, &url).await.assert_ok();
    }
    let throttled = get(&client, &url).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.header("retry-after"), Some("1"));
    assert_eq!(throttled.header("content-type"), Some("application/json"));
    assert_too_many_requests_body(&throttled.body);
    // Another mailbox is not affected.
    get(&client, &sim.messages_url("mailbox-1"))
        .await
        .assert_ok();
    // Honouring Retry-After works.
    tokio::time::sleep(Duration::from_secs(1)).await;
    get(&client, &url).await.assert_ok();
    let stats = sim.shutdown().await;
    let m0 = stats.per_mailbox["mailbox-0"];
    assert_eq!((m0.requests, m0.ok, m0.throttled_quota), (5, 4, 1));
    assert_eq!(m0.throttled_concurrency, 0);
    assert_eq!(m0.max_in_window, 4);
    assert_eq!(admitted_and_throttled(&stats.timeline), (5, 1));
}

#[tokio::test]
async fn throttled_requests_count_against_the_quota_unless_configured_otherwise() {
    for (count_throttled, expected_ok) in [(true, 3), (false, 4)] {
        let sim = GraphSim::new()
            .quota(2, Duration::from_millis(600))
            .count_throttled(count_throttled)
            .start()
            .await
            .expect("sim starts");
        let client = client();
        let url = sim.messages_url("mailbox-0");
        // Two admitted, then a rejected one 300 ms later.
        get(&client, &url).await;
        get(&client, &url).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            get(&client, &url).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // 650 ms after the first two they have expired; the rejected one still takes
        // a slot if it counts, so only one of these two is admitted.
        tokio::time::sleep(Duration::from_millis(350)).await;
        get(&client, &url).await;
        get(&client, &url).await;
        let stats = sim.shutdown().await;
        assert_eq!(
            stats.totals.ok, expected_ok,
            "count_throttled {count_throttled}"
        );
    }
}

#[tokio::test]
async fn exceeding_concurrency_gives_the_application_throttled_body() {
    let sim = GraphSim::new()
        .concurrency(2)
        .latency(Duration::from_millis(500))
        .start()
        .await
        .expect("sim starts");
    let client = client();
    let url = sim.messages_url("mailbox-0");
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move { get(&client, &url).await }));
    }
    let mut throttled = Vec::new();
    for task in tasks {
        let answer = task.await.expect("task");
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            throttled.push(answer);
        } else {
            answer.assert_ok();
        }
    }
    assert_eq!(throttled.len(), 1);
    assert_eq!(
        throttled[0].body,
        json!({"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}})
    );
    let stats = sim.shutdown().await;
    let m0 = stats.per_mailbox["mailbox-0"];
    assert_eq!(m0.peak_concurrency, 3);
    assert_eq!(m0.throttled_concurrency, 1);
    assert_eq!(m0.ok, 2);
}

#[tokio::test]
async fn batch_counts_each_sub_request_and_throttles_inside_a_200() {
    let sim = GraphSim::new()
        .mailboxes(2)
        .messages_per_mailbox(50)
        .quota(5, Duration::from_secs(10))
        .latency(Duration::from_millis(20))
        .start()
        .await
        .expect("sim starts");
    let client = client();
    let batch = send(
        &client,
        Method::POST,
        &sim.batch_url(),
        Some(batch_of("mailbox-0", 8)),
    )
    .await;
    batch.assert_ok();
    let responses = batch.body["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), 8);
    let ids: Vec<&str> = responses.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6", "7", "8"]);
    let mut ok = 0;
    for response in responses {
        match response["status"].as_u64() {
            Some(200) => {
                ok += 1;
                assert_eq!(response["body"]["value"].as_array().map(Vec::len), Some(1));
            }
            Some(429) => {
                let seconds: u64 = response["headers"]["Retry-After"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("Retry-After inside");
                assert!((1..=10).contains(&seconds), "{seconds}");
                assert_too_many_requests_body(&response["body"]);
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!(ok, 5);

    // 21 sub-requests are refused as a whole; nothing is counted.
    let too_big = send(
        &client,
        Method::POST,
        &sim.batch_url(),
        Some(batch_of("mailbox-1", 21)),
    )
    .await;
    assert_eq!(too_big.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_big.body["error"]["code"], "BadRequest");

    let stats = sim.shutdown().await;
    let m0 = stats.per_mailbox["mailbox-0"];
    assert_eq!((m0.requests, m0.ok, m0.throttled_quota), (8, 5, 3));
    assert_eq!(m0.messages_served, 5);
    // Sub-requests run 4 at a time, within the concurrency limit of 4.
    assert_eq!(m0.throttled_concurrency, 0);
    assert!(m0.peak_concurrency <= 4, "{}", m0.peak_concurrency);
    assert_eq!(stats.per_mailbox["mailbox-1"].requests, 0);
    assert_eq!((stats.batches, stats.bad_requests), (2, 1));
}

#[tokio::test]
async fn stats_report_peak_concurrency_and_max_in_window() {
    let sim = GraphSim::new()
        .concurrency(10)
        .quota(100, Duration::from_secs(1))
        .latency(Duration::from_millis(400))
        .start()
        .await
        .expect("sim starts");
    let client = client();
    let url = sim.messages_url("mailbox-0");
    let burst = |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move { get(&client, &url).await.status })
            })
            .collect();
        async move {
            for task in tasks {
                assert_eq!(task.await.expect("task"), StatusCode::OK);
            }
        }
    };
    burst(6).await;
    let mid = sim.stats().per_mailbox["mailbox-0"];
    assert_eq!((mid.peak_concurrency, mid.max_in_window), (6, 6));
    // More than a window later: a smaller burst changes neither maximum.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    burst(2).await;
    let stats = sim.shutdown().await;
    let m0 = stats.per_mailbox["mailbox-0"];
    assert_eq!((m0.peak_concurrency, m0.max_in_window), (6, 6));
    assert_eq!(m0.requests, 8);
    assert_eq!(stats.totals.peak_concurrency, 6);
    assert_eq!(stats.window, Duration::from_secs(1));
    // The timeline (100 ms buckets) holds both bursts, apart.
    let busy: Vec<u64> = stats
        .timeline
        .iter()
        .map(|b| b.requests)
        .filter(|&n| n > 0)
        .collect();
    assert_eq!(busy.iter().sum::<u64>(), 8);
    assert!(stats.timeline.len() >= 15, "{:?}", stats.timeline);
    assert_eq!(stats.limit_in_window, 100);
}

#[tokio::test]
async fn retry_after_can_be_omitted() {
    let sim = GraphSim::new()
        .quota(1, Duration::from_secs(10))
        .retry_after(false)
        .start()
        .await
        .expect("sim starts");
    let client = client();
    let url = sim.messages_url("mailbox-0");
    get(&client, &url).await.assert_ok();
    let throttled = get(&client, &url).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.header("retry-after"), None);
    assert_too_many_requests_body(&throttled.body);
    let batch = send(
        &client,
        Method::POST,
        &sim.batch_url(),
        Some(batch_of("mailbox-0", 1)),
    )
    .await;
    let sub = &batch.body["responses"][0];
    assert_eq!(sub["status"], 429);
    assert!(sub["headers"].get("Retry-After").is_none(), "{sub}");
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_mailboxes_and_paths_are_404() {
    let sim = GraphSim::new().start().await.expect("sim starts");
    let client = client();
    let unknown = get(&client, &sim.messages_url("nobody")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["error"]["code"], "ErrorInvalidUser");
    let path = get(&client, &format!("{}/v1.0/me/events", sim.base_url())).await;
    assert_eq!(path.status, StatusCode::NOT_FOUND);
    let stats = sim.shutdown().await;
    assert_eq!(stats.not_found, 2);
    assert_eq!(stats.totals.requests, 0);
}
