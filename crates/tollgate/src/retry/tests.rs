use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::classify::{Throttle, ThrottleKind, ThrottleScope, ThrottleSource};
use crate::quota::Cost;
use crate::reject::BoxError;
use crate::{Error, ErrorKind};

const S: fn(u64) -> Duration = Duration::from_secs;

/// One scripted answer of the inner service.
#[derive(Clone, Debug)]
enum Answer {
    /// A response with this status and, if given, a throttle signal with this hint.
    Status(u16, Option<Throttle>),
    /// A tollgate rejection from a layer further in.
    Local(ErrorKind),
    /// A transport failure (not a tollgate error).
    Transport,
}

fn throttled(hint: Option<Duration>) -> Answer {
    let throttle = Throttle::new(
        ThrottleKind::Rate,
        ThrottleScope::Key,
        ThrottleSource::RetryAfter,
    );
    Answer::Status(
        429,
        Some(match hint {
            Some(hint) => throttle.with_retry_after(hint),
            None => throttle,
        }),
    )
}

fn ok() -> Answer {
    Answer::Status(200, None)
}

/// What the inner service saw of one attempt.
#[derive(Clone, Debug)]
struct Seen {
    called: Instant,
    answered: Instant,
    retry_attempt: Option<String>,
    body: String,
    cost: Option<Cost>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An inner service answering `script` in order (the last answer repeats), after
/// `latency[n]` (or none) for attempt `n`, logging every attempt.
fn scripted(
    script: Vec<Answer>,
    latency: Vec<Duration>,
) -> (
    impl Service<Request<String>, Response = Response<String>, Error = BoxError, Future: Send>
    + Clone
    + Send,
    Log,
) {
    let log: Log = Arc::default();
    let script = Arc::new(script);
    let latency = Arc::new(latency);
    let seen = Arc::clone(&log);
    let service = service_fn(move |request: Request<String>| {
        let (script, latency, seen) =
            (Arc::clone(&script), Arc::clone(&latency), Arc::clone(&seen));
        async move {
            let called = Instant::now();
            let n = seen.lock().unwrap().len();
            if let Some(d) = latency.get(n) {
                tokio::time::sleep(*d).await;
            }
            seen.lock().unwrap().push(Seen {
                called,
                answered: Instant::now(),
                retry_attempt: request
                    .headers()
                    .get("retry-attempt")
                    .map(|v| v.to_str().unwrap().to_owned()),
                body: request.body().clone(),
                cost: request.extensions().get::<Cost>().copied(),
            });
            match script[n.min(script.len() - 1)].clone() {
                Answer::Status(status, throttle) => {
                    let mut response = Response::builder()
                        .status(status)
                        .body(format!("answer {n}"))
                        .unwrap();
                    if let Some(throttle) = throttle {
                        response.extensions_mut().insert(throttle);
                    }
                    Ok(response)
                }
                Answer::Local(kind) => Err(Error::new(kind).into()),
                Answer::Transport => {
                    Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into())
                }
            }
        }
    });
    (service, log)
}

/// Standard preset, no jitter, no budget, generous bounds.
fn quiet() -> RetryAfterBackoffLayer {
    RetryAfterBackoffLayer::standard()
        .jitter(Jitter::from_fn(|| 0.0))
        .no_budget()
        .max_inline_wait(S(86_400))
        .max_elapsed(S(86_400))
}

fn request(method: Method, body: &str) -> Request<String> {
    Request::builder()
        .method(method)
        .uri("/v1.0/users/alice/messages")
        .body(body.to_owned())
        .unwrap()
}

fn kind(err: &BoxError) -> ErrorKind {
    err.downcast_ref::<Error>()
        .expect("a tollgate::Error")
        .kind()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn never_retries_before_the_hint(
        attempts in proptest::collection::vec(
            (proptest::option::of(0_u64..120_000), 0_u64..5_000),
            1..6,
        ),
        seed in any::<u64>(),
        hint_jitter in 0.0_f64..1.0,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let hints: Vec<Option<Duration>> =
            attempts.iter().map(|(h, _)| h.map(Duration::from_millis)).collect();
        let mut latency: Vec<Duration> =
            attempts.iter().map(|(_, l)| Duration::from_millis(*l)).collect();
        latency.push(Duration::ZERO);
        let mut script: Vec<Answer> = hints.iter().map(|h| throttled(*h)).collect();
        script.push(ok());
        let retries = u32::try_from(hints.len()).unwrap();
        let log = runtime.block_on(async move {
            let (inner, log) = scripted(script, latency);
            let layer = RetryAfterBackoffLayer::standard()
                .jitter(Jitter::seeded(seed))
                .hint_jitter(hint_jitter)
                .no_budget()
                .max_retries(retries)
                .max_inline_wait(S(86_400))
                .max_elapsed(S(86_400));
            let response = layer.layer(inner).oneshot(request(Method::POST, "x")).await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.extensions().get::<Attempts>().unwrap().sent(), retries + 1);
            log
        });
        let log = log.lock().unwrap();
        prop_assert_eq!(log.len(), hints.len() + 1);
        for (n, hint) in hints.iter().enumerate() {
            let gap = log[n + 1].called - log[n].answered;
            prop_assert!(gap >= hint.unwrap_or_default(), "attempt {} after {:?}, hint {:?}", n + 1, gap, hint);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_long_hint_returns_retry_later_at_once() {
    let (inner, log) = scripted(vec![throttled(Some(S(4310)))], vec![]);
    let service = RetryAfterBackoffLayer::telegram().layer(inner);
    let start = Instant::now();
    let err = service
        .oneshot(request(Method::POST, "{}"))
        .await
        .unwrap_err();
    assert_eq!(Instant::now(), start, "nothing waited");
    let err = err.downcast_ref::<Error>().unwrap();
    assert_eq!(err.kind(), ErrorKind::RetryLater);
    assert!(!err.kind().never_sent());
    assert_eq!(err.retry_after(), Some(S(4310)));
    assert_eq!(err.retry_at(), Some(start + S(4310)));
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_retries_returns_the_last_response() {
    let (inner, log) = scripted(vec![throttled(Some(S(1)))], vec![]);
    let service = quiet().max_retries(2).layer(inner);
    let response = service.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.body(), "answer 2");
    assert!(response.extensions().get::<Throttle>().is_some());
    assert_eq!(response.extensions().get::<Attempts>().unwrap().sent(), 3);
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn exhausted_error_carries_the_last_hint() {
    let (inner, log) = scripted(vec![throttled(Some(S(2)))], vec![]);
    let service = quiet().max_retries(1).exhausted_error(true).layer(inner);
    let err = service.oneshot(request(Method::GET, "")).await.unwrap_err();
    let err = err.downcast_ref::<Error>().unwrap();
    assert_eq!(err.kind(), ErrorKind::RetriesExhausted);
    assert!(!err.kind().never_sent());
    assert_eq!(err.retry_after(), Some(S(2)));
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_stops_retries_that_would_end_too_late() {
    let (inner, log) = scripted(vec![throttled(Some(S(10)))], vec![]);
    let service = quiet()
        .hint_jitter(0.0)
        .max_retries(10)
        .max_elapsed(S(25))
        .layer(inner);
    let start = Instant::now();
    let response = service.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(response.status(), 429);
    // Attempts at 0, 10 and 20 s; the next would be at 30 s > 25 s.
    let log = log.lock().unwrap();
    let at: Vec<Duration> = log.iter().map(|s| s.called - start).collect();
    assert_eq!(at, vec![S(0), S(10), S(20)]);
    assert_eq!(Instant::now() - start, S(20));
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_retries_when_many_requests_fail_at_once() {
    let (inner, log) = scripted(vec![throttled(Some(S(1)))], vec![]);
    // 10 % of first attempts, no floor: one initial token.
    let layer = quiet().max_retries(3).budget(RetryBudget::new(0.1, 0.0));
    let service = layer.layer(inner);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let service = service.clone();
        tasks.spawn(service.oneshot(request(Method::GET, "")));
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap().status(), 429);
    }
    let calls = log.lock().unwrap().len();
    // Without a budget: 200 calls. With it: 50 first attempts + at most 1 + 50 × 0.1.
    assert!(calls > 50, "some retries were made: {calls}");
    assert!(calls <= 56, "the budget capped retries: {calls}");
}

#[tokio::test(start_paused = true)]
async fn a_503_for_post_is_not_retried_but_a_429_for_post_is() {
    let overload = Throttle::new(
        ThrottleKind::Overload,
        ThrottleScope::Unknown,
        ThrottleSource::Status,
    );
    let (inner, log) = scripted(
        vec![Answer::Status(503, Some(overload.clone())), ok()],
        vec![],
    );
    let response = quiet()
        .layer(inner)
        .oneshot(request(Method::POST, "x"))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(log.lock().unwrap().len(), 1);

    let (inner, log) = scripted(vec![Answer::Status(503, Some(overload)), ok()], vec![]);
    let response = quiet()
        .layer(inner)
        .oneshot(request(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(log.lock().unwrap().len(), 2);

    let (inner, log) = scripted(vec![Answer::Status(504, None), ok()], vec![]);
    let mut marked = request(Method::POST, "x");
    marked.extensions_mut().insert(Idempotent);
    let response = quiet().layer(inner).oneshot(marked).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(log.lock().unwrap().len(), 2);

    let (inner, log) = scripted(vec![throttled(None), ok()], vec![]);
    let response = quiet()
        .layer(inner)
        .oneshot(request(Method::POST, "x"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_tollgate_rejection_passes_through_unretried() {
    for local in [ErrorKind::QuotaExceeded, ErrorKind::WaitExceeded] {
        let (inner, log) = scripted(vec![Answer::Local(local), ok()], vec![]);
        let err = quiet()
            .layer(inner)
            .oneshot(request(Method::GET, ""))
            .await
            .unwrap_err();
        assert_eq!(kind(&err), local);
        assert_eq!(log.lock().unwrap().len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried_for_idempotent_requests_only() {
    let (inner, log) = scripted(vec![Answer::Transport, ok()], vec![]);
    let response = quiet()
        .layer(inner)
        .oneshot(request(Method::PUT, "x"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(log.lock().unwrap().len(), 2);

    let (inner, log) = scripted(vec![Answer::Transport, ok()], vec![]);
    let err = quiet()
        .layer(inner)
        .oneshot(request(Method::POST, "x"))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<std::io::Error>().is_some());
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_attempt_header_counts_the_retries() {
    let script = vec![
        throttled(Some(S(1))),
        throttled(Some(S(1))),
        throttled(Some(S(1))),
        ok(),
    ];
    let (inner, log) = scripted(script, vec![]);
    let service = RetryAfterBackoffLayer::graph()
        .jitter(Jitter::from_fn(|| 0.0))
        .layer(inner);
    let response = service.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(response.status(), 200);
    let headers: Vec<Option<String>> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.retry_attempt.clone())
        .collect();
    assert_eq!(
        headers,
        vec![None, Some("1".into()), Some("2".into()), Some("3".into())]
    );
}

#[tokio::test(start_paused = true)]
async fn no_retry_attempt_header_by_default() {
    let (inner, log) = scripted(vec![throttled(Some(S(1))), ok()], vec![]);
    quiet()
        .layer(inner)
        .oneshot(request(Method::GET, ""))
        .await
        .unwrap();
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|s| s.retry_attempt.is_none())
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_carries_the_same_body_and_extensions() {
    let (inner, log) = scripted(
        vec![throttled(Some(S(1))), throttled(Some(S(1))), ok()],
        vec![],
    );
    let mut batch = request(Method::POST, r#"{"requests":[]}"#);
    batch.extensions_mut().insert(Cost(20));
    quiet().layer(inner).oneshot(batch).await.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3);
    for seen in log.iter() {
        assert_eq!(seen.body, r#"{"requests":[]}"#);
        assert_eq!(seen.cost, Some(Cost(20)));
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_replayed_is_sent_once() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&calls);
    let inner = service_fn(move |request: Request<SendOnce<String>>| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push(request.into_body().into_inner());
            let mut response = Response::builder().status(429).body(String::new()).unwrap();
            if let Answer::Status(_, Some(t)) = throttled(Some(S(1))) {
                response.extensions_mut().insert(t);
            }
            Ok::<_, BoxError>(response)
        }
    });
    let request = Request::post("/upload")
        .body(SendOnce::new(String::from("stream")))
        .unwrap();
    let response = quiet().layer(inner).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 429);
    let attempts = response.extensions().get::<Attempts>().unwrap();
    assert_eq!((attempts.sent(), attempts.replayable()), (1, false));
    assert_eq!(*calls.lock().unwrap(), vec![String::from("stream")]);
}

#[tokio::test(start_paused = true)]
async fn the_wait_is_the_larger_of_hint_and_own_backoff() {
    // Own backoff: full jitter with the unit 1.0, so exactly 1 s, 2 s, ...
    let (inner, log) = scripted(
        vec![
            throttled(Some(Duration::from_millis(100))),
            throttled(None),
            ok(),
        ],
        vec![],
    );
    let service = quiet()
        .jitter(Jitter::from_fn(|| 1.0))
        .hint_jitter(0.0)
        .layer(inner);
    let start = Instant::now();
    service.oneshot(request(Method::GET, "")).await.unwrap();
    let at: Vec<Duration> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.called - start)
        .collect();
    assert_eq!(at, vec![S(0), S(1), S(3)]);
}

#[tokio::test(start_paused = true)]
async fn google_preset_waits_by_googles_formula() {
    let (inner, log) = scripted(vec![Answer::Status(503, None)], vec![]);
    let service = RetryAfterBackoffLayer::google()
        .jitter(Jitter::from_fn(|| 0.5))
        .no_budget()
        .layer(inner);
    let start = Instant::now();
    let response = service.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(response.status(), 503);
    let at: Vec<Duration> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.called - start)
        .collect();
    let ms = Duration::from_millis;
    // 1.5 s, 2.5 s, 4.5 s, 8.5 s, 16.5 s between attempts.
    assert_eq!(
        at,
        vec![
            ms(0),
            ms(1_500),
            ms(4_000),
            ms(8_500),
            ms(17_000),
            ms(33_500)
        ]
    );
}

#[test]
fn layers_and_services_are_debug_and_clone() {
    let layer = RetryAfterBackoffLayer::graph();
    let text = format!("{layer:?}");
    assert!(text.contains("max_retries: 3"), "{text}");
    let service = layer.layer(service_fn(|_: Request<String>| async {
        Ok::<_, BoxError>(Response::new(String::new()))
    }));
    let text = format!("{:?}", service.clone());
    assert!(text.starts_with("RetryAfterBackoff {"), "{text}");
    assert!(format!("{layer:?}").contains("retry_attempt_header: true"));
}

#[tokio::test(start_paused = true)]
async fn each_retry_polls_the_service_ready_first() {
    use tokio_test::{assert_pending, assert_ready_ok, task};
    use tower_test::mock;

    let (mut service, mut handle) =
        mock::spawn_layer::<Request<String>, Response<String>, _>(quiet().hint_jitter(0.0));
    handle.allow(1);
    assert_ready_ok!(service.poll_ready());
    let mut call = task::spawn(service.call(request(Method::GET, "a")));
    assert_pending!(call.poll());
    let (first, send) = handle.next_request().await.unwrap();
    assert_eq!(first.body(), "a");
    let mut throttled_response = Response::builder().status(429).body(String::new()).unwrap();
    if let Answer::Status(_, Some(t)) = throttled(Some(S(5))) {
        throttled_response.extensions_mut().insert(t);
    }
    send.send_response(throttled_response);
    assert_pending!(call.poll());
    tokio::time::advance(S(5)).await;
    // The wait is over, but the service has no capacity: the retry waits for it.
    assert_pending!(call.poll());
    assert!(handle.poll_request().is_pending());
    handle.allow(1);
    assert!(call.is_woken());
    assert_pending!(call.poll());
    let (second, send) = handle.next_request().await.unwrap();
    assert_eq!(second.body(), "a");
    send.send_response(Response::new(String::from("done")));
    let response = assert_ready_ok!(call.poll());
    assert_eq!(response.body(), "done");
    assert_eq!(response.extensions().get::<Attempts>().unwrap().sent(), 2);
}

#[tokio::test(start_paused = true)]
async fn with_the_classifier_a_retry_after_header_is_obeyed() {
    use crate::classify::ThrottleClassifierLayer;

    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&calls);
    let inner = service_fn(move |_: Request<String>| {
        let seen = Arc::clone(&seen);
        async move {
            let mut seen = seen.lock().unwrap();
            seen.push(Instant::now());
            let response = if seen.len() == 1 {
                Response::builder()
                    .status(429)
                    .header("retry-after", "7")
                    .body(String::new())
            } else {
                Response::builder().status(200).body(String::from("ok"))
            };
            Ok::<_, BoxError>(response.unwrap())
        }
    });
    let client = tower::ServiceBuilder::new()
        .layer(RetryAfterBackoffLayer::standard())
        .layer(ThrottleClassifierLayer::standard())
        .service(inner);
    let response = client.oneshot(request(Method::POST, "x")).await.unwrap();
    assert_eq!(response.status(), 200);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    let gap = calls[1] - calls[0];
    // The hint, plus at most 10 % upward jitter (the own backoff is at most 1 s).
    assert!(
        gap >= S(7) && gap <= Duration::from_millis(7_700),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_classifier_a_bare_429_still_obeys_retry_after() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&calls);
    let inner = service_fn(move |_: Request<String>| {
        let seen = Arc::clone(&seen);
        async move {
            let mut seen = seen.lock().unwrap();
            seen.push(Instant::now());
            let status = if seen.len() == 1 { 429 } else { 200 };
            let response = Response::builder()
                .status(status)
                .header("retry-after", "3")
                .body(String::new());
            Ok::<_, BoxError>(response.unwrap())
        }
    });
    let response = quiet()
        .hint_jitter(0.0)
        .layer(inner)
        .oneshot(request(Method::POST, "x"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let calls = calls.lock().unwrap();
    assert_eq!(calls[1] - calls[0], S(3));
}

#[tokio::test(start_paused = true)]
async fn hint_jitter_never_waits_past_the_inline_bound() {
    let (inner, log) = scripted(vec![throttled(Some(S(59))), ok()], vec![]);
    let service = RetryAfterBackoffLayer::telegram()
        .jitter(Jitter::from_fn(|| 1.0))
        .hint_jitter(1.0)
        .layer(inner);
    service.oneshot(request(Method::GET, "")).await.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log[1].called - log[0].answered, S(60));
}

mod buffered {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, combinators::BoxBody};

    type Streaming = BoxBody<Bytes, std::convert::Infallible>;

    fn streaming(text: &'static str) -> Streaming {
        Full::new(Bytes::from_static(text.as_bytes())).boxed()
    }

    /// Answers 429 (with a 1 s hint) first, then 200, collecting every body it gets.
    type Bodies = Arc<Mutex<Vec<Bytes>>>;

    fn collecting() -> (
        impl Service<
            Request<Buffered<Streaming>>,
            Response = Response<String>,
            Error = BoxError,
            Future: Send,
        > + Clone,
        Bodies,
    ) {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&bodies);
        let service = service_fn(move |request: Request<Buffered<Streaming>>| {
            let seen = Arc::clone(&seen);
            async move {
                let bytes = request.into_body().collect().await?.to_bytes();
                let mut seen = seen.lock().unwrap();
                seen.push(bytes);
                let mut response = Response::builder()
                    .status(if seen.len() == 1 { 429 } else { 200 })
                    .body(String::new())
                    .unwrap();
                if seen.len() == 1 {
                    if let Answer::Status(_, Some(t)) = throttled(Some(S(1))) {
                        response.extensions_mut().insert(t);
                    }
                }
                Ok::<_, BoxError>(response)
            }
        });
        (service, bodies)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_within_the_cap_is_retried_with_its_bytes() {
        let (inner, bodies) = collecting();
        let body = buffer(streaming("hello"), 16).await.unwrap();
        assert!(body.is_whole());
        let request = Request::post("/upload").body(body).unwrap();
        let response = quiet().layer(inner).oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(*bodies.lock().unwrap(), vec![Bytes::from("hello"); 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_over_the_cap_is_sent_once_with_every_byte() {
        let (inner, bodies) = collecting();
        // `Full` announces its length: over the cap, it is not read ahead at all.
        let body = buffer(streaming("0123456789"), 4).await.unwrap();
        assert!(!body.is_whole());
        let request = Request::post("/upload").body(body).unwrap();
        let response = quiet().layer(inner).oneshot(request).await.unwrap();
        assert_eq!(response.status(), 429);
        let attempts = response.extensions().get::<Attempts>().unwrap();
        assert_eq!((attempts.sent(), attempts.replayable()), (1, false));
        assert_eq!(*bodies.lock().unwrap(), vec![Bytes::from("0123456789")]);
    }

    #[tokio::test]
    async fn a_body_read_past_the_cap_keeps_the_bytes_read() {
        let (mut tx, rx) = http_body_util::Channel::<Bytes, std::convert::Infallible>::new(4);
        tokio::spawn(async move {
            for chunk in ["abc", "def", "ghi"] {
                tx.send_data(Bytes::from_static(chunk.as_bytes()))
                    .await
                    .unwrap();
            }
        });
        let body = buffer(rx, 4).await.unwrap();
        assert!(!body.is_whole());
        assert!(body.replay_body().is_none());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdefghi");
    }

    #[tokio::test]
    async fn trailers_are_kept_and_replayed() {
        let (mut tx, rx) = http_body_util::Channel::<Bytes, std::convert::Infallible>::new(4);
        tokio::spawn(async move {
            tx.send_data(Bytes::from_static(b"abc")).await.unwrap();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("checksum", "42".parse().unwrap());
            tx.send_trailers(trailers).await.unwrap();
        });
        let body = buffer(rx, 4).await.unwrap();
        assert!(body.is_whole());
        let copy = body.replay_body().unwrap();
        for body in [body, copy] {
            let collected = body.collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["checksum"], "42");
            assert_eq!(collected.to_bytes(), "abc");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn unbounded_settings_do_not_overflow() {
    let (inner, log) = scripted(vec![throttled(None), ok()], vec![]);
    let service = quiet()
        .backoff(Backoff::full_jitter(Duration::MAX, Duration::MAX))
        .jitter(Jitter::from_fn(|| 1.0))
        .max_elapsed(Duration::MAX)
        .max_inline_wait(S(10))
        .layer(inner);
    let err = service.oneshot(request(Method::GET, "")).await.unwrap_err();
    assert_eq!(kind(&err), ErrorKind::RetryLater);
    assert_eq!(log.lock().unwrap().len(), 1);

    let (inner, log) = scripted(vec![throttled(Some(S(1))), ok()], vec![]);
    let service = quiet().max_elapsed(Duration::MAX).layer(inner);
    let response = service.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(log.lock().unwrap().len(), 2);
}
