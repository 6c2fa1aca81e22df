//! Runs configurations of the `overhead` bench outside criterion, in two modes.
//!
//! - `profile ID N`: one configuration for a fixed number of requests, for instruction
//!   counts under `valgrind --tool=callgrind` (which counts the same on every run,
//!   whatever else the machine is doing): the instructions per request are the
//!   difference between two runs of different lengths, divided by the difference in
//!   requests.
//! - `profile interleave ROUNDS N ID...`: wall-clock time, with the configurations
//!   interleaved. Each round times a batch of `N` requests through every ID in turn
//!   (all services built, and their keys warmed, before the first round), so that a
//!   change in the machine's load during the run hits every ID alike instead of
//!   whichever criterion happened to be measuring. It prints, per ID, the median over
//!   rounds of the time per request and of the time added over the first ID (the
//!   baseline, e.g. `bare`): the added time is taken within each round, then the median
//!   is taken, which cancels the drift between rounds.
//!
//! `cargo run --release -p tollgate-benches --example profile -- ID N` or
//! `-- interleave 31 20000 bare tower per_key`.
#![allow(missing_docs, clippy::print_stdout)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use http::{HeaderName, HeaderValue, Request, Response};
use tokio::time::Instant;
use tollgate::key::{Header, Key};
use tollgate::quota::{Quota, QuotaSet, QuotaWindowLayer};
use tollgate::{ConcurrencyPerKeyLayer, RetryAfterBackoffLayer, ThrottleClassifierLayer};
use tower::limit::ConcurrencyLimit;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_governor::governor::GovernorConfigBuilder;

const N_KEYS: u64 = 10_000;

/// The requests' keys, each as a [`Key`] (for the extensions) and a header value.
type Keys = [(Key, HeaderValue)];

fn keys() -> Vec<(Key, HeaderValue)> {
    (0..N_KEYS)
        .map(|i| (Key::from(i), HeaderValue::from_str(&i.to_string()).unwrap()))
        .collect()
}

/// Sends requests `from..from + n` (keys in rotation) through `service`; returns the
/// time taken.
async fn drive<S, B>(service: &mut S, keys: &Keys, from: u64, n: u64) -> Duration
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let name = HeaderName::from_static("x-key");
    let start = Instant::now();
    for i in from..from + n {
        let (key, value) = &keys[(i % N_KEYS) as usize];
        let mut request = Request::new(());
        request.extensions_mut().insert(key.clone());
        request.headers_mut().insert(&name, value.clone());
        let ready = service.ready().await.unwrap();
        let response = ready.call(request).await.unwrap();
        drop(black_box(response));
    }
    start.elapsed()
}

/// A configuration, whatever its service's type.
trait Run {
    fn run<'a>(
        &'a mut self,
        keys: &'a Keys,
        from: u64,
        n: u64,
    ) -> Pin<Box<dyn Future<Output = Duration> + 'a>>;
}

struct Svc<S>(S);

impl<S, B> Run for Svc<S>
where
    S: Service<Request<()>, Response = Response<B>> + 'static,
    S::Error: std::fmt::Debug,
    B: 'static,
{
    fn run<'a>(
        &'a mut self,
        keys: &'a Keys,
        from: u64,
        n: u64,
    ) -> Pin<Box<dyn Future<Output = Duration> + 'a>> {
        Box::pin(drive(&mut self.0, keys, from, n))
    }
}

fn boxed<S, B>(service: S) -> Box<dyn Run>
where
    S: Service<Request<()>, Response = Response<B>> + 'static,
    S::Error: std::fmt::Debug,
    B: 'static,
{
    Box::new(Svc(service))
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

/// The configuration `id` of the `overhead` bench, ready to run.
fn build(id: &str) -> Box<dyn Run> {
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
    match id {
        "bare" => boxed(string),
        "bare_body" => boxed(body),
        "tower" => boxed(ConcurrencyLimit::new(string, 1_000_000)),
        "per_key" => boxed(ConcurrencyPerKeyLayer::new(1000, key_of).layer(string)),
        "tower_governor" => boxed(tower_governor_service(body)),
        "sliding" => boxed(QuotaWindowLayer::new(sliding, header).layer(body)),
        "gcra" => boxed(QuotaWindowLayer::new(gcra, header).layer(body)),
        "multi" => {
            let set = QuotaSet::new([
                Quota::sliding(1_000_000, Duration::from_secs(60)).unwrap(),
                Quota::sliding(10_000_000, Duration::from_secs(3600)).unwrap(),
            ])
            .unwrap();
            boxed(QuotaWindowLayer::new(set, header).layer(body))
        }
        "stack" => boxed(
            RetryAfterBackoffLayer::standard().layer(
                QuotaWindowLayer::new(sliding, header.clone()).layer(
                    ConcurrencyPerKeyLayer::new(1000, header)
                        .layer(ThrottleClassifierLayer::standard().layer(body)),
                ),
            ),
        ),
        "retry" => boxed(RetryAfterBackoffLayer::standard().layer(body)),
        "classifier" => boxed(ThrottleClassifierLayer::standard().layer(body)),
        "per_key_header" => boxed(ConcurrencyPerKeyLayer::new(1000, header).layer(body)),
        other => panic!("unknown id {other}"),
    }
}

/// The sizes of the response futures.
fn sizes() {
    let body =
        service_fn(|_r: Request<()>| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
    let header = Header::from_name(HeaderName::from_static("x-key"));
    let sliding = Quota::sliding(1_000_000, Duration::from_secs(3600)).unwrap();
    let mut q = QuotaWindowLayer::new(sliding, header.clone()).layer(body);
    let mut c = ConcurrencyPerKeyLayer::new(1000, header).layer(body);
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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The quartiles of `values` (sorted by [`median`] first).
fn quartiles(values: &[f64]) -> (f64, f64) {
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.75))
}

/// `interleave ROUNDS N ID...`: see the module docs.
async fn interleave(args: &[String]) {
    let rounds: usize = args.first().expect("a number of rounds").parse().unwrap();
    let n: u64 = args.get(1).expect("a batch size").parse().unwrap();
    let ids = &args[2..];
    assert!(ids.len() >= 2, "a baseline ID and at least one other");
    let keys = keys();
    let mut runs: Vec<Box<dyn Run>> = ids.iter().map(|id| build(id)).collect();
    for run in &mut runs {
        run.run(&keys, 0, N_KEYS.max(n)).await;
    }
    // ns per request, per ID and round; the order of the IDs rotates every round.
    let mut times = vec![Vec::with_capacity(rounds); ids.len()];
    for round in 0..rounds {
        for k in 0..ids.len() {
            let j = (k + round) % ids.len();
            let elapsed = runs[j].run(&keys, round as u64 * n, n).await;
            times[j].push(elapsed.as_nanos() as f64 / n as f64);
        }
    }
    let added: Vec<Vec<f64>> = times
        .iter()
        .map(|t| t.iter().zip(&times[0]).map(|(a, b)| a - b).collect())
        .collect();
    let mut reference = added[1].clone();
    let reference = median(&mut reference);
    println!(
        "{rounds} rounds of {n} requests per ID; added = ID - {} within a round; ratio = added / added of {}",
        ids[0], ids[1]
    );
    println!("| id | ns per request (median) | added ns (median) | added, quartiles | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for (j, id) in ids.iter().enumerate() {
        let mut t = times[j].clone();
        let mut a = added[j].clone();
        let (t, a_med) = (median(&mut t), median(&mut a));
        let (q1, q3) = quartiles(&a);
        println!(
            "| {id} | {t:.1} | {a_med:.1} | {q1:.1} to {q3:.1} | {:.2} |",
            a_med / reference
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("interleave") => interleave(&args[1..]).await,
        Some("sizes") => sizes(),
        Some(id) => {
            let n: u64 = args.get(1).expect("a count").parse().unwrap();
            build(id).run(&keys(), 0, n).await;
            println!("{id} {n}");
        }
        None => panic!("usage: profile ID N | profile interleave ROUNDS N ID... | profile sizes"),
    }
}
