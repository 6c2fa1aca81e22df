//! [`ThrottleClassifier`] against the example responses of `shared/API_FACTS.md`, and
//! the guarantee that the caller receives the body unchanged.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

use super::*;

const GRAPH_CONCURRENCY: &[u8] = br#"{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}"#;
const TELEGRAM_4310: &[u8] = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 4310","parameters":{"retry_after":4310}}"#;

/// 2026-05-28, a fixed wall clock.
fn fixed_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000)
}

fn response<B>(status: StatusCode, headers: &[(&'static str, &str)], body: B) -> Response<B> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in headers {
        response
            .headers_mut()
            .append(*name, HeaderValue::from_str(value).unwrap());
    }
    response
}

fn request() -> Request<()> {
    Request::new(())
}

/// Sends one request through `layer` to a service answering `answer`.
async fn through<C, B>(
    layer: ThrottleClassifierLayer<C>,
    answer: Response<B>,
) -> Response<ClassifiedBody<B>>
where
    C: ClassifyThrottle + Clone,
    B: Body + Send + 'static,
    B::Data: Into<Bytes>,
{
    let mut answer = Some(answer);
    let service = ServiceBuilder::new()
        .layer(layer.clock(fixed_now))
        .service(service_fn(move |_req: Request<()>| {
            let answer = answer.take().expect("called once");
            async move { Ok::<_, Infallible>(answer) }
        }));
    service.oneshot(request()).await.unwrap()
}

/// Like [`through`], but the response must be ready at the first poll: the layer did
/// not wait for the body.
fn through_at_once<C, B>(
    layer: ThrottleClassifierLayer<C>,
    answer: Response<B>,
) -> Response<ClassifiedBody<B>>
where
    C: ClassifyThrottle + Clone,
    B: Body + Send + 'static,
    B::Data: Into<Bytes>,
{
    let mut future = tokio_test::task::spawn(through(layer, answer));
    tokio_test::assert_ready!(future.poll())
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BodyError(u32);

/// One step of a [`Scripted`] body.
#[derive(Debug, Clone)]
enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    Error(u32),
    /// Returns `Pending` once (waking at once), as a network body would.
    Pending,
}

/// A body that plays a script, counting how often it is polled.
#[derive(Debug)]
struct Scripted {
    steps: VecDeque<Step>,
    polls: Arc<AtomicUsize>,
}

impl Scripted {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Scripted {
            steps: steps.into_iter().collect(),
            polls: Arc::default(),
        }
    }

    fn chunks(bytes: &[u8], size: usize) -> Self {
        Self::new(
            bytes
                .chunks(size)
                .map(|chunk| Step::Data(Bytes::copy_from_slice(chunk))),
        )
    }
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(match self.steps.pop_front() {
            None => None,
            Some(Step::Data(data)) => Some(Ok(Frame::data(data))),
            Some(Step::Trailers(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Some(Step::Error(code)) => Some(Err(BodyError(code))),
            Some(Step::Pending) => {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.steps.is_empty()
    }
}

/// A body that must not be read before the caller reads it.
#[derive(Debug)]
struct MustNotBeRead;

impl Body for MustNotBeRead {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        panic!("the layer read a body it had no reason to read");
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(7)
    }
}

/// Everything the caller reads: the data, the trailers, and the error that ended it.
#[derive(Debug, Default, PartialEq)]
struct Read {
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    error: Option<BodyError>,
}

async fn read_all<B>(body: B) -> Read
where
    B: Body<Data = Bytes, Error = BodyError>,
{
    let mut body = std::pin::pin!(body);
    let mut read = Read::default();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => read.data.extend_from_slice(&data),
                Err(frame) => read.trailers = frame.into_trailers().ok(),
            },
            Err(error) => {
                read.error = Some(error);
                break;
            }
        }
    }
    assert!(body.frame().await.is_none(), "nothing after the end");
    read
}

#[tokio::test]
async fn a_graph_mailbox_concurrency_429_is_a_concurrency_signal_for_the_key_and_the_body_is_unchanged()
 {
    let answer = response(
        StatusCode::TOO_MANY_REQUESTS,
        &[("content-type", "application/json")],
        Full::new(Bytes::from_static(GRAPH_CONCURRENCY)),
    );
    let response = through(ThrottleClassifierLayer::graph(), answer).await;

    let throttle = response.extensions().get::<Throttle>().unwrap();
    assert_eq!(throttle.kind(), ThrottleKind::Concurrency);
    assert_eq!(throttle.scope(), ThrottleScope::Key);
    assert!(response.body().was_buffered());
    assert_eq!(
        response.body().size_hint().exact(),
        Some(GRAPH_CONCURRENCY.len() as u64)
    );
    assert!(!response.body().is_end_stream());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], GRAPH_CONCURRENCY);
}

#[tokio::test]
async fn a_telegram_429_carries_its_4310_second_hint_and_the_same_body() {
    let answer = response(
        StatusCode::TOO_MANY_REQUESTS,
        &[
            ("content-type", "application/json"),
            ("retry-after", "4310"),
        ],
        Full::new(Bytes::from_static(TELEGRAM_4310)),
    );
    let response = through(ThrottleClassifierLayer::telegram(), answer).await;

    let throttle = response.extensions().get::<Throttle>().unwrap();
    assert_eq!(throttle.kind(), ThrottleKind::Rate);
    assert_eq!(throttle.scope(), ThrottleScope::Key);
    assert_eq!(throttle.retry_after(), Some(Duration::from_secs(4310)));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], TELEGRAM_4310);
}

#[tokio::test]
async fn a_200_has_no_signal_and_its_body_is_never_read_by_the_layer() {
    let answer = response(
        StatusCode::OK,
        &[("content-type", "application/json")],
        MustNotBeRead,
    );
    let response = through(ThrottleClassifierLayer::graph(), answer).await;

    assert!(response.extensions().get::<Throttle>().is_none());
    assert!(!response.body().was_buffered());
    assert_eq!(response.body().size_hint().exact(), Some(7));
}

#[tokio::test]
async fn a_200_response_is_returned_before_its_body_has_any_data() {
    let (mut sender, channel) = Channel::<Bytes, Infallible>::new(4);
    let answer = response(StatusCode::OK, &[], channel);
    let response = through_at_once(ThrottleClassifierLayer::google(), answer);
    assert!(response.extensions().get::<Throttle>().is_none());

    sender
        .send_data(Bytes::from_static(b"hello"))
        .await
        .unwrap();
    drop(sender);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
}

#[tokio::test]
async fn a_429_whose_classifier_needs_no_body_is_returned_before_its_body_has_any_data() {
    let (mut sender, channel) = Channel::<Bytes, Infallible>::new(4);
    let answer = response(
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "7")],
        channel,
    );
    let response = through_at_once(ThrottleClassifierLayer::standard(), answer);
    let throttle = response.extensions().get::<Throttle>().unwrap();
    assert_eq!(throttle.retry_after(), Some(Duration::from_secs(7)));

    sender
        .send_data(Bytes::from_static(b"slow down"))
        .await
        .unwrap();
    drop(sender);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"slow down");
}

#[tokio::test]
async fn a_body_longer_than_the_cap_is_replayed_whole_and_classified_from_its_start_only() {
    let answer = |body| {
        response(
            StatusCode::TOO_MANY_REQUESTS,
            &[("content-type", "application/json"), ("retry-after", "5")],
            body,
        )
    };
    // The cap cuts the JSON one byte short: the body's 4310 s is not seen, the
    // header's 5 s is.
    let cap = TELEGRAM_4310.len() - 1;
    let layer = ThrottleClassifierLayer::telegram().body_cap(cap);
    let response = through(layer, answer(Scripted::chunks(TELEGRAM_4310, 10))).await;
    let throttle = response.extensions().get::<Throttle>().unwrap();
    assert_eq!(throttle.retry_after(), Some(Duration::from_secs(5)));
    let read = read_all(response.into_body()).await;
    assert_eq!(read.data, TELEGRAM_4310);
    assert_eq!(read.error, None);

    // With the whole JSON under the cap, the body's hint wins.
    let layer = ThrottleClassifierLayer::telegram().body_cap(TELEGRAM_4310.len());
    let response = through(layer, answer(Scripted::chunks(TELEGRAM_4310, 10))).await;
    let throttle = response.extensions().get::<Throttle>().unwrap();
    assert_eq!(throttle.retry_after(), Some(Duration::from_secs(4310)));

    // A cap of 20 stops after two frames; the rest comes from the inner body.
    let mut body = Scripted::chunks(TELEGRAM_4310, 10);
    body.steps.push_back(Step::Trailers(HeaderMap::new()));
    let polls = body.polls.clone();
    let layer = ThrottleClassifierLayer::telegram().body_cap(20);
    let response = through(layer, answer(body)).await;
    assert_eq!(polls.load(Ordering::SeqCst), 2);
    assert_eq!(response.body().size_hint().lower(), 20);
    assert!(!response.body().is_end_stream());
    let read = read_all(response.into_body()).await;
    assert_eq!(read.data, TELEGRAM_4310);
    assert_eq!(read.trailers, Some(HeaderMap::new()));
}

#[tokio::test]
async fn a_body_error_while_buffering_reaches_the_caller_after_the_same_bytes() {
    let body = Scripted::new([
        Step::Data(Bytes::from_static(br#"{"error":"#)),
        Step::Pending,
        Step::Data(Bytes::from_static(br#"{"code":"Application"#)),
        Step::Error(7),
        Step::Data(Bytes::from_static(b"never read")),
    ]);
    let answer = response(
        StatusCode::TOO_MANY_REQUESTS,
        &[("content-type", "application/json")],
        body,
    );
    let response = through(ThrottleClassifierLayer::graph(), answer).await;

    // Classified from the head: a Graph 429 without a readable body is a rate signal.
    let throttle = response.extensions().get::<Throttle>().unwrap();
    assert_eq!(throttle.kind(), ThrottleKind::Rate);
    assert_eq!(throttle.scope(), ThrottleScope::Key);
    let read = read_all(response.into_body()).await;
    assert_eq!(read.data, br#"{"error":{"code":"Application"#);
    assert_eq!(read.error, Some(BodyError(7)));
}

#[tokio::test]
async fn a_candidate_body_streamed_in_one_byte_frames_is_classified_and_replayed() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-trailer", HeaderValue::from_static("end"));
    let steps = GRAPH_CONCURRENCY
        .iter()
        .flat_map(|byte| [Step::Pending, Step::Data(Bytes::copy_from_slice(&[*byte]))])
        .chain([Step::Trailers(trailers.clone())]);
    let answer = response(
        StatusCode::TOO_MANY_REQUESTS,
        &[("content-type", "application/json")],
        Scripted::new(steps),
    );
    let response = through(ThrottleClassifierLayer::graph(), answer).await;

    let throttle = response.extensions().get::<Throttle>().unwrap();
    assert_eq!(throttle.kind(), ThrottleKind::Concurrency);
    let read = read_all(response.into_body()).await;
    assert_eq!(read.data, GRAPH_CONCURRENCY);
    assert_eq!(read.trailers, Some(trailers));
}

#[tokio::test]
async fn a_cap_of_zero_classifies_from_the_head_and_never_reads_the_body() {
    let answer = response(
        StatusCode::TOO_MANY_REQUESTS,
        &[("content-type", "application/json")],
        MustNotBeRead,
    );
    let response = through(ThrottleClassifierLayer::graph().body_cap(0), answer).await;
    let throttle = response.extensions().get::<Throttle>().unwrap();
    assert_eq!(throttle.kind(), ThrottleKind::Rate);
    assert!(!response.body().was_buffered());
}

#[tokio::test]
async fn a_closure_classifies_from_the_head_without_the_body() {
    let layer =
        ThrottleClassifierLayer::new(|status: StatusCode, _: &HeaderMap, body: Option<&[u8]>| {
            assert!(body.is_none());
            (status.as_u16() == 509).then(|| {
                Throttle::new(
                    ThrottleKind::Quota,
                    ThrottleScope::Key,
                    ThrottleSource::Status,
                )
            })
        });
    let answer = response(StatusCode::from_u16(509).unwrap(), &[], MustNotBeRead);
    let response = through(layer, answer).await;
    let throttle = response.extensions().get::<Throttle>().unwrap();
    assert_eq!(throttle.kind(), ThrottleKind::Quota);
}

#[tokio::test]
async fn the_unit_classifier_attaches_nothing() {
    let answer = response(
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "10")],
        MustNotBeRead,
    );
    let response = through(ThrottleClassifierLayer::new(()), answer).await;
    assert!(response.extensions().get::<Throttle>().is_none());
}

#[tokio::test]
async fn an_inner_error_is_returned_as_it_is() {
    let service = ThrottleClassifier::new(
        service_fn(|_req: Request<()>| async { Err::<Response<Full<Bytes>>, _>(BodyError(3)) }),
        Preset::Graph,
    );
    assert_eq!(service.oneshot(request()).await.unwrap_err(), BodyError(3));
}

#[tokio::test]
async fn poll_ready_asks_the_inner_service() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<Full<Bytes>>>();
    let mut service = tower_test::mock::Spawn::new(ThrottleClassifierLayer::graph().layer(mock));
    handle.allow(0);
    tokio_test::assert_pending!(service.poll_ready());
    handle.allow(1);
    tokio_test::assert_ready_ok!(service.poll_ready());
    assert!(format!("{:?}", service.get_ref()).contains("body_cap"));
}

fn any_steps() -> impl Strategy<Value = (Vec<u8>, Vec<Step>)> {
    (
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::collection::vec((1usize..64, any::<bool>()), 1..40),
    )
        .prop_map(|(bytes, splits)| {
            let mut steps = Vec::new();
            let mut rest = &bytes[..];
            let mut splits = splits.into_iter().cycle();
            while !rest.is_empty() {
                let (size, pending) = splits.next().unwrap();
                if pending {
                    steps.push(Step::Pending);
                }
                let (chunk, tail) = rest.split_at(size.min(rest.len()));
                steps.push(Step::Data(Bytes::copy_from_slice(chunk)));
                rest = tail;
            }
            (bytes, steps)
        })
}

proptest! {
    #[test]
    fn the_caller_receives_exactly_the_bytes_of_the_inner_body(
        (bytes, steps) in any_steps(),
        cap in 0usize..800,
        error in proptest::option::of(any::<u32>()),
        trailers in any::<bool>(),
    ) {
        let mut steps = steps;
        match (error, trailers) {
            (Some(code), _) => steps.push(Step::Error(code)),
            (None, true) => steps.push(Step::Trailers(HeaderMap::new())),
            (None, false) => {}
        }
        let answer = response(
            StatusCode::TOO_MANY_REQUESTS,
            &[("content-type", "application/json")],
            Scripted::new(steps),
        );
        let layer = ThrottleClassifierLayer::graph().body_cap(cap);
        let read = tokio_test::block_on(async {
            let response = through(layer, answer).await;
            read_all(response.into_body()).await
        });
        prop_assert_eq!(read.data, bytes);
        prop_assert_eq!(read.error, error.map(BodyError));
        prop_assert_eq!(read.trailers.is_some(), error.is_none() && trailers);
    }
}

#[test]
fn the_service_its_future_and_its_body_are_send_and_sync_when_the_inner_ones_are() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let mut service =
        ThrottleClassifierLayer::graph().layer(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    send_sync(&service);
    let future = tower::Service::call(&mut service, request());
    send(&future);
    send_sync(&ClassifiedBody::passthrough(Full::new(Bytes::new())));
}
