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
        "tower_governor" => {
            #[derive(Clone)]
            struct K;
            impl tower_governor::key_extractor::KeyExtractor for K {
                type Key = HeaderValue;
                fn extract<B>(
                    &self,
                    r: &Request<B>,
                ) -> Result<HeaderValue, tower_governor::GovernorError> {
                    r.headers()
                        .get("x-key")
                        .cloned()
                        .ok_or(tower_governor::GovernorError::UnableToExtractKey)
                }
            }
            let config = GovernorConfigBuilder::default()
                .key_extractor(K)
                .period(Duration::from_secs(1))
                .burst_size(1_000_000)
                .finish()
                .unwrap();
            let layer = tower_governor::GovernorLayer::new(config)
                .error_handler(|e| -> Response<Body> { panic!("{e}") });
            drive(layer.layer(body), n).await;
        }
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
        other => panic!("unknown id {other}"),
    }
    println!("{id} {n}");
}
