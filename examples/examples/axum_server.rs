//! The providing side: an axum API that enforces, per API key, a quota and a
//! concurrency limit, and answers `429 Too Many Requests` with `Retry-After` and the
//! draft-10 `RateLimit-Policy` / `RateLimit` fields, with no `HandleErrorLayer`.
//!
//! - `GET /messages` (a read) and `POST /messages` (a write), keyed by `x-api-key`:
//!   reads 10 per 10 s and writes 3 per 10 s per key (separate windows per class), and
//!   at most 2 requests of a key in flight at once.
//! - A request without `x-api-key` is a `400`: there is no shared anonymous bucket.
//! - `GET /slow` holds a request for 2 s, to see the concurrency limit at work.
//!
//! Run it and try it with curl:
//!
//! ```text
//! cargo run -p tollgate-examples --example axum_server            # listens on 127.0.0.1:3000
//! curl -i -H 'x-api-key: alice' localhost:3000/messages           # RateLimit: "10-per-10s";r=9;t=10
//! for i in 1 2 3 4; do curl -si -X POST -H 'x-api-key: alice' localhost:3000/messages | head -1; done
//! curl -i -X POST -H 'x-api-key: alice' localhost:3000/messages   # 429, Retry-After, RateLimit r=0
//! curl -i localhost:3000/messages                                 # 400: no key
//! ```
//!
//! `--addr HOST:PORT` listens elsewhere; `--demo` starts the server, sends the requests
//! above itself, prints the answers and exits (what CI runs).
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::key::Header;
use tollgate::quota::{Quota, QuotaDecision, QuotaSet, ReadWrite};
use tollgate::{ConcurrencyPerKeyLayer, QuotaWindowLayer};
use tower::BoxError;

fn app() -> Result<Router, BoxError> {
    let window = Duration::from_secs(10);
    let reads = QuotaSet::from(Quota::sliding(10, window)?);
    let writes = QuotaSet::from(Quota::sliding(3, window)?);
    let quota = QuotaWindowLayer::new(reads.clone(), Header::new("x-api-key"))
        .classify(ReadWrite)
        .quotas_for(move |_key, class| match class {
            "write" => Some(writes.clone()),
            _ => Some(reads.clone()),
        })
        .respond();
    let concurrency = ConcurrencyPerKeyLayer::new(2, Header::new("x-api-key"))
        .reject()
        .respond();
    Ok(Router::new()
        .route("/messages", get(list).post(create))
        .route("/slow", get(slow))
        // Outermost first: the quota is spent only by requests that also get a slot
        // (a request refused for concurrency gives its quota back).
        .layer(concurrency)
        .layer(quota))
}

async fn list(Extension(decision): Extension<QuotaDecision>) -> String {
    format!(
        "{{\"value\":[],\"remaining_reads\":{}}}\n",
        decision.usage()[0].remaining
    )
}

async fn create() -> (StatusCode, &'static str) {
    (StatusCode::CREATED, "{\"id\":\"1\"}\n")
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(2)).await;
    "done\n"
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:3000".parse()?;
    let mut demo = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?.parse()?,
            "--demo" => demo = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if demo {
        addr = "127.0.0.1:0".parse()?;
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let server =
        tokio::spawn(async move { axum::serve(listener, app()?).await.map_err(BoxError::from) });
    if !demo {
        println!("listening on http://{addr} (ctrl-c to stop)");
        tokio::select! {
            result = server => result??,
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(());
    }

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let send = |method: Method, path: &str, key: Option<&str>| {
        let label = format!("{method} {path}");
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let request = request.body(Empty::new());
        let client = client.clone();
        let key = key.unwrap_or("(none)").to_owned();
        async move {
            let response = client.request(request?).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            println!(
                "{label} key={} -> {} retry-after={} ratelimit={} body={}",
                key,
                parts.status,
                header("retry-after"),
                header("ratelimit"),
                String::from_utf8_lossy(&body).trim(),
            );
            Ok::<_, BoxError>(parts.status)
        }
    };
    assert_eq!(
        send(Method::GET, "/messages", Some("alice")).await?,
        StatusCode::OK
    );
    for _ in 0..3 {
        assert_eq!(
            send(Method::POST, "/messages", Some("alice")).await?,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        send(Method::POST, "/messages", Some("alice")).await?,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(Method::POST, "/messages", Some("bob")).await?,
        StatusCode::CREATED
    );
    assert_eq!(
        send(Method::GET, "/messages", None).await?,
        StatusCode::BAD_REQUEST
    );
    server.abort();
    Ok(())
}
