//! `ConcurrencyPerKey` end to end over loopback:
//!
//! - on the calling side, in a `ServiceBuilder` in front of a real `hyper_util` client
//!   talking to a real hyper server that counts concurrency per key on its own side;
//! - on the providing side, as an axum `Router::layer` (no `HandleErrorLayer`), answered
//!   by a real client: `429` with `Retry-After`, other keys untouched.

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
use tokio::sync::Semaphore;
use tollgate::key::{Header, PeerIp};
use tollgate::{ConcurrencyPerKeyLayer, Error, ErrorKind};
use tower::{ServiceBuilder, ServiceExt};

/// What the server saw, counted by the server alone.
#[derive(Default)]
struct Seen {
    in_flight: HashMap<String, u32>,
    peak: HashMap<String, u32>,
    requests: u32,
}

/// A hyper server on loopback that holds each request for a few milliseconds and
/// records, per `x-mailbox`, how many it had in flight at once.
async fn counting_server() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let server_seen = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&server_seen);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let mailbox = req.headers()["x-mailbox"].to_str().unwrap().to_owned();
                        {
                            let mut seen = seen.lock().unwrap();
                            seen.requests += 1;
                            let now = {
                                let n = seen.in_flight.entry(mailbox.clone()).or_default();
                                *n += 1;
                                *n
                            };
                            let peak = seen.peak.entry(mailbox.clone()).or_default();
                            *peak = (*peak).max(now);
                        }
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        *seen.lock().unwrap().in_flight.get_mut(&mailbox).unwrap() -= 1;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(mailbox))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hyper_client_behind_the_layer_never_exceeds_the_limit_at_the_server() {
    let (addr, seen) = counting_server().await;
    let layer = ConcurrencyPerKeyLayer::new(2, Header::new("x-mailbox"));
    let store = layer.get_store().clone();
    let client = ServiceBuilder::new()
        .layer(layer)
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..40 {
        let client = client.clone();
        let mailbox = ["alice", "bob", "carol"][i % 3];
        calls.spawn(async move {
            let request = Request::get(format!("http://{addr}/messages"))
                .header("x-mailbox", mailbox)
                .body(Empty::new())
                .unwrap();
            let response = client.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, mailbox);
        });
    }
    while let Some(result) = calls.join_next().await {
        result.unwrap();
    }

    let seen = seen.lock().unwrap();
    assert_eq!(seen.requests, 40);
    for mailbox in ["alice", "bob", "carol"] {
        assert_eq!(seen.peak[mailbox], 2, "server-side peak for {mailbox}");
    }
    store.evict_idle();
    assert!(store.is_empty(), "slots left behind: {}", store.len());
}

async fn serve_axum(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// A handler that says when a request entered it, then holds it until the test adds a
/// permit to the gate: no sleeps needed to know where requests are.
struct Gate {
    permits: Arc<Semaphore>,
    entered: tokio::sync::mpsc::UnboundedReceiver<()>,
}

fn gated_route() -> (axum::routing::MethodRouter, Gate) {
    let permits = Arc::new(Semaphore::new(0));
    let (tx, entered) = tokio::sync::mpsc::unbounded_channel();
    let handler_permits = Arc::clone(&permits);
    let route = axum::routing::get(move || {
        let permits = Arc::clone(&handler_permits);
        let tx = tx.clone();
        async move {
            tx.send(()).unwrap();
            permits.acquire().await.unwrap().forget();
            "done"
        }
    });
    (route, Gate { permits, entered })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_router_answers_429_with_retry_after_per_api_key() {
    let (route, mut gate) = gated_route();
    let app = axum::Router::new().route("/work", route).layer(
        ConcurrencyPerKeyLayer::new(1, Header::new("x-api-key"))
            .reject()
            .retry_after(Duration::from_millis(2500))
            .respond(),
    );
    let addr = serve_axum(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = |key: &str| {
        let mut request = Request::get(format!("http://{addr}/work"));
        if !key.is_empty() {
            request = request.header("x-api-key", key);
        }
        client.request(request.body(Empty::new()).unwrap())
    };

    // The first request of key A is held in the handler.
    let first = tokio::spawn(get("A"));
    gate.entered.recv().await.unwrap();

    // A second one for A is refused at once, with the headers a client needs.
    let refused = get("A").await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "3");
    let text = refused.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "too many requests\n");

    // Key B is untouched by A being full.
    let other = tokio::spawn(get("B"));
    gate.entered.recv().await.unwrap();
    gate.permits.add_permits(2);
    for response in [first.await.unwrap().unwrap(), other.await.unwrap().unwrap()] {
        assert_eq!(response.status(), StatusCode::OK);
    }

    // A request without the key is a 400, not a shared bucket.
    let keyless = get("").await.unwrap();
    assert_eq!(keyless.status(), StatusCode::BAD_REQUEST);

    // A is free again once its request completed.
    let again = tokio::spawn(get("A"));
    gate.entered.recv().await.unwrap();
    gate.permits.add_permits(1);
    assert_eq!(again.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_connect_info_keys_by_peer_ip_and_the_typed_error_is_available() {
    let (route, mut gate) = gated_route();
    let app = axum::Router::new()
        .route("/", route)
        .layer(axum::middleware::map_response(
            |response: axum::response::Response| async move {
                // A user who wants the typed error finds it in the extensions.
                if let Some(err) = response.extensions().get::<Error>() {
                    assert_eq!(err.kind(), ErrorKind::ConcurrencyLimited);
                    assert!(err.key().is_some());
                }
                response
            },
        ))
        .layer(
            ConcurrencyPerKeyLayer::new(1, PeerIp::new())
                .reject()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .respond(),
        );
    let addr = serve_axum(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = || {
        client.request(
            Request::get(format!("http://{addr}/"))
                .body(Empty::new())
                .unwrap(),
        )
    };

    let first = tokio::spawn(get());
    gate.entered.recv().await.unwrap();
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    gate.permits.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
}
