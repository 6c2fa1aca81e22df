//! A client configured for more concurrency than the server accepts learns the server's
//! limit from its MailboxConcurrency answers.
//!
//! The Graph-like simulator accepts 4 requests in flight per mailbox and answers a fifth
//! with `429 ApplicationThrottled`, counting on its own side. The client stack allows 8:
//! `ConcurrencyPerKey(8)` → `ThrottleClassifier::graph()` → `hyper_util` client. The same
//! load runs twice against fresh simulators, once with the classifier (the adaptive limit
//! sees the concurrency signal) and once without it (the control: nothing tells the
//! limit), and the server's own counts are compared.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::key::PathSegment;
use tollgate::{ConcurrencyPerKeyLayer, ThrottleClassifierLayer};
use tollgate_sim::GraphSim;
use tower::util::BoxCloneService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

const REQUESTS: usize = 240;

type StatusClient = BoxCloneService<Request<Empty<Bytes>>, http::StatusCode, BoxError>;

/// Sends `REQUESTS` requests for one mailbox, 16 callers at a time, through `client`,
/// and returns the server's statistics for that mailbox.
async fn run(adaptive: bool) -> tollgate_sim::KeyStats {
    let sim = GraphSim::new()
        .mailboxes(1)
        .messages_per_mailbox(10)
        .concurrency(4)
        .quota(1_000_000, Duration::from_secs(60))
        .latency(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    let mailbox = GraphSim::mailbox_name(0);
    let url = sim.messages_url(&mailbox);
    let key = PathSegment::pattern("/v1.0/users/{id}/messages", "id").unwrap();
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let limited = ConcurrencyPerKeyLayer::new(8, key).max_wait(Duration::from_secs(30));
    let client: StatusClient = if adaptive {
        ServiceBuilder::new()
            .layer(limited)
            .layer(ThrottleClassifierLayer::graph())
            .service(http)
            .map_response(|r| r.status())
            .boxed_clone()
    } else {
        ServiceBuilder::new()
            .layer(limited)
            .service(http)
            .map_response(|r| r.status())
            .boxed_clone()
    };
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..16 {
        let client = client.clone();
        let url = url.clone();
        callers.spawn(async move {
            for _ in (caller..REQUESTS).step_by(16) {
                let request = Request::get(&url).body(Empty::new()).unwrap();
                client.clone().oneshot(request).await.unwrap();
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }
    let stats = sim.shutdown().await;
    stats.per_mailbox[&mailbox]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_answers_teach_the_client_the_servers_limit() {
    let control = run(false).await;
    let adaptive = run(true).await;
    assert_eq!(control.requests as usize, REQUESTS);
    assert_eq!(adaptive.requests as usize, REQUESTS);
    // Without the signal the client keeps 8 in flight: about half are refused.
    assert!(
        control.throttled_concurrency as usize > REQUESTS / 4,
        "control run refused only {} of {REQUESTS}: the test load is too light",
        control.throttled_concurrency
    );
    // With it, the limit in force falls to what the server accepts and only probes
    // above it once per hold period (8 refusals against 158; 24 when every round of
    // the additive increase probed).
    assert!(
        adaptive.throttled_concurrency * 10 < control.throttled_concurrency,
        "adaptive {} vs control {} concurrency refusals",
        adaptive.throttled_concurrency,
        control.throttled_concurrency
    );
    assert!(adaptive.ok > control.ok);
}
