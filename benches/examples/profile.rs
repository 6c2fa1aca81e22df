//! Runs one configuration of the `overhead` bench for a fixed number of requests, for
//! instruction counts under `valgrind --tool=callgrind` (which counts the same on every
//! run, whatever else the machine is doing): the instructions per request are the
//! difference between two runs of different lengths, divided by the difference in
//! requests. `cargo run --release -p tollgate-benches --example profile -- ID N`.
#![allow(missing_docs, clippy::print_stdout)]

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use axum::body::Body;
use http::{HeaderName, HeaderValue, Request, Response};
use tollgate::key::{Header, Key};
use tollgate::quota::{Quota, QuotaSet, QuotaWindowLayer};
use tollgate::{ConcurrencyPerKeyLayer, RetryAfterBackoffLayer, ThrottleClassifierLayer};
use tower::limit::ConcurrencyLimit;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_governor::governor::GovernorConfigBuilder;

const N_KEYS: u64 = 10_000;

async fn drive<S, B>(mut service: S, n: u64)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let name = HeaderName::from_static("x-key");
    let keys: Vec<(Key, HeaderValue)> = (0..N_KEYS)
        .map(|i| (Key::from(i), HeaderValue::from_str(&i.to_string()).unwrap()))
        .collect();
    for i in 0..n {
        let (key, value) = &keys[(i % N_KEYS) as usize];
        let mut request = Request::new(());
        request.extensions_mut().insert(key.clone());
        request.headers_mut().insert(&name, value.clone());
        let ready = service.ready().await.unwrap();
        let response = ready.call(request).await.unwrap();
        drop(black_box(response));
    }
}

fn key_of(request: &Request<()>) -> Option<Key> {
    request.extensions().get::<Key>().cloned()
}

/// The header's value, as the governor extractor of the `overhead` bench takes it.
#[derive(Clone)]
struct HeaderKey;

impl tower_governor::key_extractor::KeyExtractor for HeaderKey {
    type Key = HeaderValue;
    fn extract<B>(&self, r: &Request<B>) -> Result<HeaderValue, tower_governor::GovernorError> {
        r.headers()
            .get("x-key")
            .cloned()
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

fn tower_governor_service<S>(
    inner: S,
) -> <tower_governor::GovernorLayer<
    HeaderKey,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    Body,
> as Layer<S>>::Service
where
    tower_governor::GovernorLayer<
        HeaderKey,
        governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
        Body,
    >: Layer<S>,
{
    let config = GovernorConfigBuilder::default()
        .key_extractor(HeaderKey)
        .period(Duration::from_secs(1))
        .burst_size(1_000_000)
        .finish()
        .unwrap();
    tower_governor::GovernorLayer::new(config)
        .error_handler(|e| -> Response<Body> { panic!("{e}") })
        .layer(inner)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let id = args.next().expect("an id");
    let n: u64 = args.next().expect("a count").parse().unwrap();
    let string =
        service_fn(|_r: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
    let body =
        service_fn(|_r: Request<()>| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
    let header = Header::from_name(HeaderName::from_static("x-key"));
    let sliding = Quota::sliding(1_000_000, Duration::from_secs(3600)).unwrap();
    let gcra = Quota::smooth(3600, Duration::from_secs(3600))
        .unwrap()
        .burst(1_000_000)
        .unwrap();
    match id.as_str() {
        "bare" => drive(string, n).await,
        "bare_body" => drive(body, n).await,
        "tower" => drive(ConcurrencyLimit::new(string, 1_000_000), n).await,
        "per_key" => drive(ConcurrencyPerKeyLayer::new(1000, key_of).layer(string), n).await,
        "tower_governor" => drive(tower_governor_service(body), n).await,
        "sliding" => drive(QuotaWindowLayer::new(sliding, header).layer(body), n).await,
        "gcra" => drive(QuotaWindowLayer::new(gcra, header).layer(body), n).await,
        "multi" => {
            let set = QuotaSet::new([
                Quota::sliding(1_000_000, Duration::from_secs(60)).unwrap(),
                Quota::sliding(10_000_000, Duration::from_secs(3600)).unwrap(),
            ])
            .unwrap();
            drive(QuotaWindowLayer::new(set, header).layer(body), n).await;
        }
        "stack" => {
            let full = RetryAfterBackoffLayer::standard().layer(
                QuotaWindowLayer::new(sliding, header.clone()).layer(
                    ConcurrencyPerKeyLayer::new(1000, header)
                        .layer(ThrottleClassifierLayer::standard().layer(body)),
                ),
            );
            drive(full, n).await;
        }
        "retry" => drive(RetryAfterBackoffLayer::standard().layer(body), n).await,
        "classifier" => drive(ThrottleClassifierLayer::standard().layer(body), n).await,
        "per_key_header" => drive(ConcurrencyPerKeyLayer::new(1000, header).layer(body), n).await,
        "sizes" => {
            let mut q = QuotaWindowLayer::new(sliding, header.clone()).layer(body);
            let mut c = ConcurrencyPerKeyLayer::new(1000, header.clone()).layer(body);
            let mut g = tower_governor_service(body);
            let req = || {
                let mut r = Request::new(());
                r.headers_mut()
                    .insert("x-key", HeaderValue::from_static("1"));
                r
            };
            println!("quota future {}", size_of_val(&q.call(req())));
            println!("concurrency future {}", size_of_val(&c.call(req())));
            println!("governor future {}", size_of_val(&g.call(req())));
            println!("bare future {}", size_of_val(&body.clone().call(req())));
        }
        other => panic!("unknown id {other}"),
    }
    println!("{id} {n}");
}
