use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use http_body_util::channel::Channel;
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok, task};
use tower_test::mock;

use super::*;
use crate::key::{Header, Key};
use crate::reject::BoxError;
use crate::store::MemoryStore;
use crate::{Error, ErrorKind};

type Req = Request<String>;
type Res = Response<String>;

fn req(key: &str) -> Req {
    Request::builder()
        .header("x-key", key)
        .body(key.to_owned())
        .unwrap()
}

fn layer(max: u32) -> ConcurrencyPerKeyLayer<Header> {
    ConcurrencyPerKeyLayer::new(max, Header::new("x-key"))
}

fn kind(err: &BoxError) -> ErrorKind {
    err.downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a tollgate::Error: {err}"))
        .kind()
}

fn in_flight(store: &MemoryStore, key: &str) -> u32 {
    store
        .concurrency_snapshot(&Key::new(key).unwrap())
        .map_or(0, |s| s.in_flight)
}

#[tokio::test(start_paused = true)]
async fn a_request_for_a_full_key_waits_until_the_first_body_is_dropped() {
    let layer = layer(1);
    let store = layer.get_store().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);

    assert_ready_ok!(svc.poll_ready());
    let mut first = task::spawn(svc.call(req("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut second = task::spawn(svc.call(req("a")));

    assert_pending!(first.poll());
    let (_, send) = handle.next_request().await.unwrap();
    assert_pending!(second.poll());
    assert!(
        handle.poll_request().is_pending(),
        "second reached the inner service"
    );

    send.send_response(Response::new("one".into()));
    let response = assert_ready_ok!(first.poll());
    assert!(response.body().holds_guard());
    assert_pending!(second.poll());
    assert!(
        handle.poll_request().is_pending(),
        "slot freed before the body ended"
    );

    drop(response);
    assert!(second.is_woken());
    assert_pending!(second.poll());
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request.body(), "a");
    send.send_response(Response::new("two".into()));
    let body = assert_ready_ok!(second.poll()).into_body();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "two");
    assert_eq!(in_flight(&store, "a"), 0);
    store.evict_idle();
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn one_busy_key_never_delays_another() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer(1));
    assert_ready_ok!(svc.poll_ready());
    let mut a1 = task::spawn(svc.call(req("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut a2 = task::spawn(svc.call(req("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut b1 = task::spawn(svc.call(req("b")));
    assert_pending!(a1.poll());
    assert_pending!(a2.poll());
    assert_pending!(b1.poll());
    let (first, _send_a) = handle.next_request().await.unwrap();
    let (second, send_b) = handle.next_request().await.unwrap();
    assert_eq!((first.body().as_str(), second.body().as_str()), ("a", "b"));
    send_b.send_response(Response::new("b".into()));
    assert_ready_ok!(b1.poll());
    assert_pending!(a2.poll());
}

#[tokio::test(start_paused = true)]
async fn waiters_are_called_in_arrival_order() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer(1));
    let mut futures = Vec::new();
    for i in 0..4 {
        assert_ready_ok!(svc.poll_ready());
        let mut request = req("a");
        *request.body_mut() = i.to_string();
        futures.push(task::spawn(svc.call(request)));
    }
    for expected in 0..4 {
        for f in futures.iter_mut().skip(expected) {
            assert_pending!(f.poll());
        }
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(request.body(), &expected.to_string());
        assert!(handle.poll_request().is_pending());
        send.send_response(Response::new(String::new()));
        drop(assert_ready_ok!(futures[expected].poll()));
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_a_response_future_frees_its_slot_or_its_place() {
    let layer = layer(1);
    let store = layer.get_store().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut calling = task::spawn(svc.call(req("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut waiting = task::spawn(svc.call(req("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut last = task::spawn(svc.call(req("a")));
    assert_pending!(calling.poll());
    assert_pending!(waiting.poll());
    assert_pending!(last.poll());
    let _in_inner = handle.next_request().await.unwrap();
    assert_eq!(
        store
            .concurrency_snapshot(&Key::from_static("a"))
            .unwrap()
            .waiting,
        2
    );

    drop(waiting); // cancelled in the queue
    assert_eq!(
        store
            .concurrency_snapshot(&Key::from_static("a"))
            .unwrap()
            .waiting,
        1
    );
    drop(calling); // cancelled while the inner service works on it
    assert!(last.is_woken());
    assert_pending!(last.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(String::new()));
    drop(assert_ready_ok!(last.poll()));
    store.evict_idle();
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_inner_error_frees_the_slot_and_is_passed_through() {
    let layer = layer(1);
    let store = layer.get_store().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut f = task::spawn(svc.call(req("a")));
    assert_pending!(f.poll());
    let (_, send) = handle.next_request().await.unwrap();
    assert_eq!(in_flight(&store, "a"), 1);
    send.send_error("connection reset");
    let err = assert_ready_err!(f.poll());
    assert!(err.downcast_ref::<Error>().is_none());
    assert_eq!(err.to_string(), "connection reset");
    store.evict_idle();
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_service_leaves_its_futures_working() {
    let layer = layer(1);
    let store = layer.get_store().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut first = task::spawn(svc.call(req("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut second = task::spawn(svc.call(req("a")));
    drop(svc);
    assert_pending!(first.poll());
    assert_pending!(second.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(String::new()));
    drop(assert_ready_ok!(first.poll()));
    assert_pending!(second.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(String::new()));
    drop(assert_ready_ok!(second.poll()));
    store.evict_idle();
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn max_wait_ends_the_wait_with_a_typed_error_naming_the_key() {
    let layer = layer(1).max_wait(Duration::from_secs(5));
    let store = layer.get_store().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut first = task::spawn(svc.call(req("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut second = task::spawn(svc.call(req("a")));
    assert_pending!(first.poll());
    let _held = handle.next_request().await.unwrap();
    assert_pending!(second.poll());

    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_pending!(second.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    let err = assert_ready_err!(second.poll());
    assert_eq!(kind(&err), ErrorKind::WaitExceeded);
    let err = err.downcast_ref::<Error>().unwrap();
    assert_eq!(err.key(), Some(Key::from_static("a").id()));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(
        store
            .concurrency_snapshot(&Key::from_static("a"))
            .unwrap()
            .waiting,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_fails_at_once() {
    let (mut svc, _handle) = mock::spawn_layer::<Req, Res, _>(layer(1).max_queue(1));
    assert_ready_ok!(svc.poll_ready());
    let mut first = task::spawn(svc.call(req("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut queued = task::spawn(svc.call(req("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut overflow = task::spawn(svc.call(req("a")));
    assert_pending!(first.poll());
    assert_pending!(queued.poll());
    assert_eq!(
        kind(&assert_ready_err!(overflow.poll())),
        ErrorKind::QueueFull
    );
}

#[tokio::test(start_paused = true)]
async fn reject_mode_fails_at_once() {
    let (mut svc, _handle) = mock::spawn_layer::<Req, Res, _>(layer(1).reject());
    assert_ready_ok!(svc.poll_ready());
    let mut first = task::spawn(svc.call(req("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut second = task::spawn(svc.call(req("a")));
    assert_pending!(first.poll());
    let err = assert_ready_err!(second.poll());
    assert_eq!(kind(&err), ErrorKind::ConcurrencyLimited);
}

#[tokio::test(start_paused = true)]
async fn respond_mode_answers_429_with_retry_after_and_the_typed_error() {
    let layer = layer(1)
        .reject()
        .retry_after(Duration::from_millis(1500))
        .respond();
    let (mut svc, _handle) = mock::spawn_layer::<Req, Res, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut first = task::spawn(svc.call(req("a")));
    assert_ready_ok!(svc.poll_ready());
    let mut second = task::spawn(svc.call(req("a")));
    assert_pending!(first.poll());
    let response = assert_ready_ok!(second.poll());
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "2");
    let err = response.extensions().get::<Error>().unwrap();
    assert_eq!(err.kind(), ErrorKind::ConcurrencyLimited);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "too many requests\n");
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_key_is_refused_not_put_in_a_shared_bucket() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer(1));
    assert_ready_ok!(svc.poll_ready());
    let mut f = task::spawn(svc.call(Request::new(String::new())));
    assert_eq!(kind(&assert_ready_err!(f.poll())), ErrorKind::Key);
    assert!(handle.poll_request().is_pending());

    let (mut svc, _handle) = mock::spawn_layer::<Req, Res, _>(layer(1).respond());
    assert_ready_ok!(svc.poll_ready());
    let mut f = task::spawn(svc.call(Request::new(String::new())));
    assert_eq!(assert_ready_ok!(f.poll()).status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(start_paused = true)]
async fn release_on_head_frees_the_slot_when_the_response_arrives() {
    let layer = layer(1).release(Release::Head);
    let store = layer.get_store().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut f = task::spawn(svc.call(req("a")));
    assert_pending!(f.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new("body".into()));
    let response = assert_ready_ok!(f.poll());
    assert!(!response.body().holds_guard());
    store.evict_idle();
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn limits_may_differ_per_key() {
    let layer = layer(1)
        .reject()
        .limit_per_key(|key| if key == "vip" { 2 } else { 1 });
    let (mut svc, _handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let mut calls = Vec::new();
    for key in ["vip", "vip", "vip", "std", "std"] {
        assert_ready_ok!(svc.poll_ready());
        calls.push(task::spawn(svc.call(req(key))));
    }
    let outcomes: Vec<bool> = calls.iter_mut().map(|f| f.poll().is_pending()).collect();
    assert_eq!(outcomes, [true, true, false, true, false]);
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_layer_share_their_limits() {
    let layer = layer(1).reject();
    let (mut svc1, _h1) = mock::spawn_layer::<Req, Res, _>(layer.clone());
    let (mut svc2, _h2) = mock::spawn_layer::<Req, Res, _>(layer);
    assert_ready_ok!(svc1.poll_ready());
    let mut first = task::spawn(svc1.call(req("a")));
    assert_ready_ok!(svc2.poll_ready());
    let mut second = task::spawn(svc2.call(req("a")));
    assert_pending!(first.poll());
    assert_eq!(
        kind(&assert_ready_err!(second.poll())),
        ErrorKind::ConcurrencyLimited
    );
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_keeps_its_slot_until_its_last_frame() {
    let layer = layer(1);
    let store = layer.get_store().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<Channel<Bytes>>, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut f = task::spawn(svc.call(req("a")));
    assert_pending!(f.poll());
    let (_, send) = handle.next_request().await.unwrap();
    let (mut tx, body) = Channel::<Bytes>::new(4);
    send.send_response(Response::new(body));
    let mut body = assert_ready_ok!(f.poll()).into_body();

    tx.send_data(Bytes::from_static(b"part 1")).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "part 1");
    assert_eq!(in_flight(&store, "a"), 1, "slot freed mid-stream");

    tx.send_data(Bytes::from_static(b"part 2")).await.unwrap();
    drop(tx);
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "part 2");
    assert!(body.frame().await.is_none());
    assert_eq!(in_flight(&store, "a"), 0, "slot kept after the end");
    assert!(!body.holds_guard());
}

#[tokio::test(start_paused = true)]
async fn a_body_that_knows_its_end_frees_the_slot_with_its_last_frame() {
    let layer = layer(1);
    let store = layer.get_store().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut f = task::spawn(svc.call(req("a")));
    assert_pending!(f.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new("whole".into()));
    let mut body = assert_ready_ok!(f.poll()).into_body();
    let mut cx = task::spawn(());
    let frame = cx.enter(|cx, _| assert_ready!(std::pin::Pin::new(&mut body).poll_frame(cx)));
    assert_eq!(
        frame.unwrap().unwrap().into_data().ok(),
        Some(Bytes::from_static(b"whole"))
    );
    assert!(body.is_end_stream());
    assert_eq!(in_flight(&store, "a"), 0);
    let _: Option<Frame<Bytes>> = None;
}

#[tokio::test(start_paused = true)]
async fn a_mailbox_concurrency_answer_lowers_the_keys_limit_and_successes_restore_it() {
    use crate::classify::{Throttle, ThrottleKind, ThrottleScope, ThrottleSource};
    let layer = layer(4).reject();
    let store = layer.get_store().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let effective = || {
        store
            .concurrency_snapshot(&Key::from_static("a"))
            .unwrap()
            .effective_limit
    };
    assert_ready_ok!(svc.poll_ready());
    let mut f = task::spawn(svc.call(req("a")));
    assert_pending!(f.poll());
    let (_, send) = handle.next_request().await.unwrap();
    let mut throttled = Response::new(String::new());
    *throttled.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    throttled.extensions_mut().insert(Throttle::new(
        ThrottleKind::Concurrency,
        ThrottleScope::Key,
        ThrottleSource::GraphBody,
    ));
    send.send_response(throttled);
    drop(assert_ready_ok!(f.poll()));
    assert_eq!(effective(), 2);

    // Two in flight now fill the key; a third is refused.
    let mut held = Vec::new();
    for _ in 0..2 {
        assert_ready_ok!(svc.poll_ready());
        let mut f = task::spawn(svc.call(req("a")));
        assert_pending!(f.poll());
        held.push((f, handle.next_request().await.unwrap().1));
    }
    assert_ready_ok!(svc.poll_ready());
    let mut third = task::spawn(svc.call(req("a")));
    assert_eq!(
        kind(&assert_ready_err!(third.poll())),
        ErrorKind::ConcurrencyLimited
    );
    // Their successes are a round at the lowered limit: one slot comes back.
    for (mut f, send) in held {
        send.send_response(Response::new(String::new()));
        drop(assert_ready_ok!(f.poll()));
    }
    assert_eq!(effective(), 3);
}
