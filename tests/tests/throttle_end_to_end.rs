//! The client stack obeys a real server's throttling answer, for the right key only.
//!
//! `QuotaWindow` (wait mode) → `ThrottleClassifier` (Graph preset) → `hyper_util`
//! client → a hyper server on loopback that answers the first request of mailbox K with
//! Graph's `429` and `Retry-After: 1`, and stamps every arrival on its own clock. After
//! the 429 the server must receive nothing for K for a full second, while mailbox L keeps
//! flowing at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tollgate::classify::{Throttle, ThrottleKind, ThrottleScope};
use tollgate::key::Header;
use tollgate::quota::Quota;
use tollgate::{QuotaWindowLayer, ThrottleClassifierLayer};
use tower::{ServiceBuilder, ServiceExt};

const GRAPH_429: &str =
    r#"{"error":{"code":"TooManyRequests","message":"Please retry again later.","innerError":{}}}"#;

#[derive(Default)]
struct Seen {
    arrivals: HashMap<String, Vec<Instant>>,
    throttled_at: Option<Instant>,
}

/// Answers the first request of mailbox `k` with a 429 and `Retry-After: 1`, all
/// others with 200; records arrival times per mailbox.
async fn server() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let server_seen = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&server_seen);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let seen = Arc::clone(&seen);
                async move {
                    let mailbox = req.headers()["x-mailbox"].to_str().unwrap().to_owned();
                    let mut seen = seen.lock().unwrap();
                    let now = Instant::now();
                    seen.arrivals.entry(mailbox.clone()).or_default().push(now);
                    let response = if mailbox == "k" && seen.throttled_at.is_none() {
                        seen.throttled_at = Some(now);
                        Response::builder()
                            .status(StatusCode::TOO_MANY_REQUESTS)
                            .header("retry-after", "1")
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(GRAPH_429.as_bytes())))
                            .unwrap()
                    } else {
                        Response::new(Full::new(Bytes::from_static(b"{}")))
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_429_the_server_hears_nothing_from_that_key_until_retry_after_and_others_flow() {
    let (addr, seen) = server().await;
    let client = ServiceBuilder::new()
        .layer(QuotaWindowLayer::new(
            Quota::sliding(1000, Duration::from_secs(60)).unwrap(),
            Header::new("x-mailbox"),
        ))
        .layer(ThrottleClassifierLayer::graph())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let get = |mailbox: &'static str| {
        let client = client.clone();
        async move {
            let request = Request::get(format!("http://{addr}/v1.0/users/{mailbox}/messages"))
                .header("x-mailbox", mailbox)
                .body(Empty::new())
                .unwrap();
            let response = client.oneshot(request).await.unwrap();
            let status = response.status();
            let throttle = response.extensions().get::<Throttle>().cloned();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, throttle, body)
        }
    };

    // The 429 reaches the caller unchanged, with the signal the quota layer obeyed.
    let (status, throttle, body) = get("k").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body, GRAPH_429.as_bytes());
    let throttle = throttle.expect("the classifier attached a signal");
    assert_eq!(throttle.kind(), ThrottleKind::Rate);
    assert_eq!(throttle.scope(), ThrottleScope::Key);
    assert_eq!(throttle.retry_after(), Some(Duration::from_secs(1)));

    // K waits out the hint inside the stack; L is not held.
    let k_again = tokio::spawn(get("k"));
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(get("l").await.0, StatusCode::OK);
    }
    assert!(started.elapsed() < Duration::from_millis(500), "L was held");
    assert_eq!(k_again.await.unwrap().0, StatusCode::OK);

    let seen = seen.lock().unwrap();
    let throttled_at = seen.throttled_at.unwrap();
    let k = &seen.arrivals["k"];
    assert_eq!(k.len(), 2);
    let gap = k[1] - throttled_at;
    assert!(
        gap >= Duration::from_secs(1),
        "K reached the server {gap:?} after its 429, before Retry-After"
    );
    assert!(
        gap < Duration::from_secs(2),
        "K was held far past the hint: {gap:?}"
    );
    let l = &seen.arrivals["l"];
    assert_eq!(l.len(), 5);
    assert!(l.iter().all(|&at| at < k[1]), "L waited for K");
}
