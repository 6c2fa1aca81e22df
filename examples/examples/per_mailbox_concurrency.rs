//! Per-mailbox concurrency in front of a real HTTP client.
//!
//! Microsoft Graph allows 4 concurrent requests per mailbox; a fifth gets
//! `429 ApplicationThrottled` ("MailboxConcurrency"). This example starts a small
//! server on loopback that counts, on its own side, how many requests it has in flight
//! per mailbox, then fires 200 requests over 5 mailboxes at once through a `hyper_util`
//! client wrapped in `ConcurrencyPerKeyLayer::new(4, ..)`, and prints what the server
//! saw: never more than 4 per mailbox, though all 200 were issued at once.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p tollgate-examples --example per_mailbox_concurrency
//! ```
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tollgate::ConcurrencyPerKeyLayer;
use tollgate::key::PathSegment;
use tower::{BoxError, ServiceBuilder, ServiceExt};

const MAILBOXES: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

#[derive(Default)]
struct Seen {
    in_flight: BTreeMap<String, u32>,
    peak: BTreeMap<String, u32>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let server_seen = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&server_seen);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let seen = Arc::clone(&seen);
                async move {
                    // /v1.0/users/{mailbox}/messages
                    let mailbox = req.uri().path().split('/').nth(3).unwrap_or("").to_owned();
                    {
                        let mut seen = seen.lock().unwrap();
                        let now = {
                            let n = seen.in_flight.entry(mailbox.clone()).or_default();
                            *n += 1;
                            *n
                        };
                        let peak = seen.peak.entry(mailbox.clone()).or_default();
                        *peak = (*peak).max(now);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    *seen.lock().unwrap().in_flight.get_mut(&mailbox).unwrap() -= 1;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });

    let mailbox = PathSegment::pattern("/v1.0/users/{id}/{*rest}", "id")?;
    let client = ServiceBuilder::new()
        .layer(ConcurrencyPerKeyLayer::new(4, mailbox).max_wait(Duration::from_secs(30)))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    let started = tokio::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = client.clone();
        let uri = format!("http://{addr}/v1.0/users/{}/messages", MAILBOXES[i % 5]);
        calls.spawn(async move {
            let response = client
                .oneshot(Request::get(uri).body(Empty::new())?)
                .await?;
            response.into_body().collect().await?;
            Ok::<_, BoxError>(())
        });
    }
    let mut ok = 0;
    while let Some(result) = calls.join_next().await {
        result??;
        ok += 1;
    }

    println!(
        "{ok} requests over {} mailboxes in {:.2?}",
        MAILBOXES.len(),
        started.elapsed()
    );
    println!("| mailbox | peak in flight seen by the server | limit |");
    println!("|---|---|---|");
    for (mailbox, peak) in &seen.lock().unwrap().peak {
        println!("| {mailbox} | {peak} | 4 |");
    }
    Ok(())
}
