use std::time::Duration;

use http::{Request, Response, StatusCode};
use sfv::{BareItem, List, ListEntry, Parser};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower_test::mock;

use super::*;
use crate::key::{Header, Key};
use crate::reject::BoxError;
use crate::{Error, ErrorKind};

type Req = Request<&'static str>;
type Res = Response<&'static str>;

const SEC: Duration = Duration::from_secs(1);

fn req(key: &'static str) -> Req {
    Request::builder().header("x-key", key).body(key).unwrap()
}

fn kind(err: &BoxError) -> ErrorKind {
    err.downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a tollgate::Error: {err}"))
        .kind()
}

fn fixed(n: u32, w: Duration) -> Quota {
    Quota::fixed(n, w).unwrap()
}

/// Calls the service once and, if the call reaches the mock, answers 200.
async fn call_through<S>(
    svc: &mut mock::Spawn<S>,
    handle: &mut mock::Handle<Req, Res>,
    key: &'static str,
) -> Result<S::Response, S::Error>
where
    S: tower_service::Service<Req>,
    S::Error: std::fmt::Debug,
{
    assert_ready_ok!(svc.poll_ready());
    let future = svc.call(req(key));
    let answer = async {
        if let Some((_, send)) = handle.next_request().await {
            send.send_response(Response::new("ok"));
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        result = future => result,
        () = answer => unreachable!(),
    }
}

#[tokio::test(start_paused = true)]
async fn wait_mode_holds_a_request_until_its_window_has_room() {
    let layer = QuotaWindowLayer::new(fixed(2, 10 * SEC), Header::new("x-key"))
        .release_spacing(Duration::ZERO);
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let start = Instant::now();
    for _ in 0..2 {
        call_through(&mut svc, &mut handle, "a").await.unwrap();
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    call_through(&mut svc, &mut handle, "a").await.unwrap();
    assert_eq!(
        start.elapsed(),
        10 * SEC,
        "admitted at the next aligned window"
    );
    // Another key was never held.
    let before = Instant::now();
    call_through(&mut svc, &mut handle, "b").await.unwrap();
    assert_eq!(before.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn reject_mode_fails_with_the_exact_wait() {
    let layer = QuotaWindowLayer::new(fixed(1, 10 * SEC), Header::new("x-key")).reject();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    tokio::time::advance(3 * SEC).await;
    call_through(&mut svc, &mut handle, "a").await.unwrap();
    let err = call_through(&mut svc, &mut handle, "a").await.unwrap_err();
    assert_eq!(kind(&err), ErrorKind::QuotaExceeded);
    let err = err.downcast_ref::<Error>().unwrap();
    assert_eq!(err.retry_after(), Some(7 * SEC));
    assert_eq!(err.key(), Some(Key::from_static("a").id()));
}

#[tokio::test(start_paused = true)]
async fn respond_mode_answers_429_with_retry_after_and_ratelimit_fields_that_parse_back() {
    let minute = Quota::sliding(2, 60 * SEC).unwrap();
    let hour = Quota::sliding(100, 3600 * SEC).unwrap();
    let quotas = QuotaSet::new([minute, hour]).unwrap();
    let layer = QuotaWindowLayer::new(quotas, Header::new("x-key"))
        .x_ratelimit_headers(true)
        .respond();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);

    let admitted = call_through(&mut svc, &mut handle, "a").await.unwrap();
    assert_eq!(admitted.status(), StatusCode::OK);
    let policy = parse(&admitted.headers()["ratelimit-policy"]);
    assert_eq!(
        items(&policy),
        [
            named("2-per-60s", &[("q", 2), ("w", 60)]),
            named("100-per-3600s", &[("q", 100), ("w", 3600)]),
        ]
    );
    let state = parse(&admitted.headers()["ratelimit"]);
    let state = items(&state);
    assert_eq!(state[0].1[0], ("r".to_owned(), 1));
    assert_eq!(state[1].1[0], ("r".to_owned(), 99));
    assert_eq!(admitted.headers()["x-ratelimit-remaining"], "1");

    tokio::time::advance(Duration::from_millis(400)).await;
    call_through(&mut svc, &mut handle, "a").await.unwrap();
    let refused = call_through(&mut svc, &mut handle, "a").await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let err = refused.extensions().get::<Error>().unwrap().clone();
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    let exact = err.retry_after().unwrap();
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        Duration::from_secs(retry_after) >= exact,
        "Retry-After earlier than admission"
    );
    assert!(Duration::from_secs(retry_after) < exact + SEC);
    let state = parse(&refused.headers()["ratelimit"]);
    assert_eq!(
        items(&state),
        [named("2-per-60s", &[("r", 0), ("t", retry_after as i64)])]
    );

    // Waiting the announced Retry-After is enough.
    tokio::time::advance(Duration::from_secs(retry_after)).await;
    let again = call_through(&mut svc, &mut handle, "a").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

fn named(name: &str, params: &[(&str, i64)]) -> (String, Vec<(String, i64)>) {
    let params = params.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    (name.to_owned(), params)
}

fn parse(value: &http::HeaderValue) -> List {
    Parser::new(value.to_str().unwrap())
        .parse::<List>()
        .unwrap()
}

/// Each item of a parsed list as (name, [(parameter, integer)]).
fn items(list: &List) -> Vec<(String, Vec<(String, i64)>)> {
    list.iter()
        .map(|entry| match entry {
            ListEntry::Item(item) => {
                let BareItem::String(name) = &item.bare_item else {
                    panic!("policy names are strings")
                };
                let params = item
                    .params
                    .iter()
                    .map(|(k, v)| match v {
                        BareItem::Integer(n) => (k.as_str().to_owned(), i64::from(*n)),
                        other => panic!("{other:?}"),
                    })
                    .collect();
                (name.as_str().to_owned(), params)
            }
            ListEntry::InnerList(_) => panic!("no inner lists"),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn handlers_see_the_decision() {
    let layer = QuotaWindowLayer::new(fixed(5, 10 * SEC), Header::new("x-key")).headers(true);
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut future = task::spawn(svc.call(req("a")));
    assert_pending!(future.poll());
    let (request, send) = handle.next_request().await.unwrap();
    let decision = request.extensions().get::<QuotaDecision>().unwrap();
    assert_eq!(decision.key(), Key::from_static("a").id());
    assert_eq!(decision.cost(), 1);
    assert_eq!(decision.usage()[0].remaining, 4);
    send.send_response(Response::new("ok"));
    assert_ready_ok!(future.poll());
}

#[tokio::test(start_paused = true)]
async fn a_local_rejection_further_in_gives_the_quota_back_and_a_server_error_does_not() {
    let layer = QuotaWindowLayer::new(fixed(1, 60 * SEC), Header::new("x-key")).reject();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);

    assert_ready_ok!(svc.poll_ready());
    let mut first = task::spawn(svc.call(req("a")));
    assert_pending!(first.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(Error::new(ErrorKind::ConcurrencyLimited));
    assert_eq!(
        kind(&assert_ready_err!(first.poll())),
        ErrorKind::ConcurrencyLimited
    );

    // Refunded: the next request is admitted and reaches the server, which fails it.
    assert_ready_ok!(svc.poll_ready());
    let mut second = task::spawn(svc.call(req("a")));
    assert_pending!(second.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error("connection reset by peer");
    assert_ready_err!(second.poll());

    // Not refunded: it may have reached the server.
    let err = call_through(&mut svc, &mut handle, "a").await.unwrap_err();
    assert_eq!(kind(&err), ErrorKind::QuotaExceeded);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_consumes_nothing() {
    let layer = QuotaWindowLayer::new(fixed(1, 10 * SEC), Header::new("x-key"));
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    call_through(&mut svc, &mut handle, "a").await.unwrap();
    assert_ready_ok!(svc.poll_ready());
    let mut waiting = task::spawn(svc.call(req("a")));
    assert_pending!(waiting.poll());
    drop(waiting);
    tokio::time::advance(10 * SEC).await;
    // Exactly one unit is available in the new window: the cancelled wait took none.
    call_through(&mut svc, &mut handle, "a").await.unwrap();
    let start = Instant::now();
    call_through(&mut svc, &mut handle, "a").await.unwrap();
    assert_eq!(start.elapsed(), 10 * SEC);
}

#[tokio::test(start_paused = true)]
async fn costs_come_from_the_request_and_a_cost_above_capacity_fails_at_once() {
    let layer = QuotaWindowLayer::new(fixed(20, 60 * SEC), Header::new("x-key")).reject();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let batch = |cost| {
        let mut r = req("mailbox");
        r.extensions_mut().insert(Cost(cost));
        r
    };
    assert_ready_ok!(svc.poll_ready());
    let mut f = task::spawn(svc.call(batch(21)));
    assert_eq!(kind(&assert_ready_err!(f.poll())), ErrorKind::CostTooHigh);
    assert_ready_ok!(svc.poll_ready());
    let mut f = task::spawn(svc.call(batch(20)));
    assert_pending!(f.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new("ok"));
    assert_ready_ok!(f.poll());
    let err = call_through(&mut svc, &mut handle, "mailbox")
        .await
        .unwrap_err();
    assert_eq!(kind(&err), ErrorKind::QuotaExceeded);
}

#[tokio::test(start_paused = true)]
async fn reads_and_writes_of_one_key_have_their_own_quotas() {
    let reads = QuotaSet::from(fixed(3, 60 * SEC));
    let writes = QuotaSet::from(fixed(1, 60 * SEC));
    let layer = QuotaWindowLayer::new(fixed(1000, 60 * SEC), Header::new("x-key"))
        .classify(ReadWrite)
        .quotas_for(move |_, class| match class {
            "read" => Some(reads.clone()),
            "write" => Some(writes.clone()),
            _ => None,
        })
        .reject();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let write = || {
        let mut r = req("space");
        *r.method_mut() = http::Method::POST;
        r
    };
    assert_ready_ok!(svc.poll_ready());
    let mut w = task::spawn(svc.call(write()));
    assert_pending!(w.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new("ok"));
    assert_ready_ok!(w.poll());
    assert_ready_ok!(svc.poll_ready());
    let mut w = task::spawn(svc.call(write()));
    assert_eq!(kind(&assert_ready_err!(w.poll())), ErrorKind::QuotaExceeded);
    for _ in 0..3 {
        call_through(&mut svc, &mut handle, "space").await.unwrap();
    }
    let err = call_through(&mut svc, &mut handle, "space")
        .await
        .unwrap_err();
    assert_eq!(kind(&err), ErrorKind::QuotaExceeded);
}

#[tokio::test(start_paused = true)]
async fn a_cooldown_holds_its_key_only() {
    let layer = QuotaWindowLayer::new(fixed(100, SEC), Header::new("x-key")).reject();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    svc.get_ref()
        .cooldown(&Key::from_static("a"), "", Instant::now() + 30 * SEC)
        .unwrap();
    let err = call_through(&mut svc, &mut handle, "a").await.unwrap_err();
    assert_eq!(kind(&err), ErrorKind::Throttled);
    assert_eq!(
        err.downcast_ref::<Error>().unwrap().retry_after(),
        Some(30 * SEC)
    );
    call_through(&mut svc, &mut handle, "b").await.unwrap();
    tokio::time::advance(30 * SEC).await;
    call_through(&mut svc, &mut handle, "a").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_wait_known_to_exceed_max_wait_fails_at_once() {
    let layer = QuotaWindowLayer::new(fixed(1, 60 * SEC), Header::new("x-key")).max_wait(5 * SEC);
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    call_through(&mut svc, &mut handle, "a").await.unwrap();
    let start = Instant::now();
    let err = call_through(&mut svc, &mut handle, "a").await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(kind(&err), ErrorKind::WaitExceeded);
    assert_eq!(
        err.downcast_ref::<Error>().unwrap().retry_after(),
        Some(60 * SEC)
    );
}

mod obeying_the_server {
    use super::*;
    use crate::classify::{Throttle, ThrottleKind, ThrottleScope, ThrottleSource};

    /// Answers the next request that reaches the mock with `throttle` attached.
    async fn answer_with(handle: &mut mock::Handle<Req, Res>, throttle: Throttle) {
        let (_, send) = handle.next_request().await.unwrap();
        let mut response = Response::new("throttled");
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        response.extensions_mut().insert(throttle);
        send.send_response(response);
    }

    fn signal(scope: ThrottleScope) -> Throttle {
        Throttle::new(ThrottleKind::Rate, scope, ThrottleSource::RetryAfter)
            .with_retry_after(10 * SEC)
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_throttle_holds_that_key_until_the_hint_and_no_other() {
        let layer = QuotaWindowLayer::new(fixed(100, SEC), Header::new("x-key"))
            .release_spacing(Duration::ZERO);
        let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
        assert_ready_ok!(svc.poll_ready());
        let mut first = task::spawn(svc.call(req("a")));
        assert_pending!(first.poll());
        answer_with(&mut handle, signal(ThrottleScope::Key)).await;
        assert_eq!(
            assert_ready_ok!(first.poll()).status(),
            StatusCode::TOO_MANY_REQUESTS
        );

        let start = Instant::now();
        call_through(&mut svc, &mut handle, "b").await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "another key was held");
        call_through(&mut svc, &mut handle, "a").await.unwrap();
        let held = start.elapsed();
        assert!(
            held >= 10 * SEC,
            "the key went {held:?} after a hint of 10 s"
        );
        assert!(held <= 11 * SEC, "jitter beyond 1 s: {held:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_global_throttle_holds_every_key() {
        let layer = QuotaWindowLayer::new(fixed(100, SEC), Header::new("x-key")).reject();
        let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
        assert_ready_ok!(svc.poll_ready());
        let mut first = task::spawn(svc.call(req("a")));
        assert_pending!(first.poll());
        answer_with(&mut handle, signal(ThrottleScope::Global)).await;
        assert_ready_ok!(first.poll());
        let err = call_through(&mut svc, &mut handle, "b").await.unwrap_err();
        assert_eq!(kind(&err), ErrorKind::Throttled);
        let wait = err.downcast_ref::<Error>().unwrap().retry_after().unwrap();
        assert!((10 * SEC..=11 * SEC).contains(&wait), "{wait:?}");
        tokio::time::advance(wait).await;
        call_through(&mut svc, &mut handle, "b").await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_that_says_nothing_remains_clamps_the_key_until_its_reset() {
        let layer = QuotaWindowLayer::new(fixed(100, SEC), Header::new("x-key")).reject();
        let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
        assert_ready_ok!(svc.poll_ready());
        let mut first = task::spawn(svc.call(req("a")));
        assert_pending!(first.poll());
        let (_, send) = handle.next_request().await.unwrap();
        let mut response = Response::new("ok");
        response.extensions_mut().insert(
            Throttle::new(
                ThrottleKind::Quota,
                ThrottleScope::Key,
                ThrottleSource::RateLimit,
            )
            .with_remaining(0)
            .with_reset_after(30 * SEC),
        );
        send.send_response(response);
        assert_eq!(assert_ready_ok!(first.poll()).status(), StatusCode::OK);
        let err = call_through(&mut svc, &mut handle, "a").await.unwrap_err();
        assert_eq!(kind(&err), ErrorKind::Throttled);
        let wait = err.downcast_ref::<Error>().unwrap().retry_after().unwrap();
        assert!((30 * SEC..=31 * SEC).contains(&wait), "{wait:?}");
    }

    #[test]
    fn cooldowns_get_an_upward_jitter_of_at_most_a_tenth_and_1_s() {
        use crate::quota::future::{MAX_COOLDOWN_JITTER, cooldown_jitter};
        for hint in [Duration::from_millis(300), 5 * SEC, 4310 * SEC] {
            let bound = (hint / 10).min(MAX_COOLDOWN_JITTER);
            let draws: Vec<Duration> = (0..200).map(|_| cooldown_jitter(hint)).collect();
            assert!(
                draws.iter().all(|d| *d <= bound),
                "{hint:?}: beyond {bound:?}"
            );
            // Spread over the range, so that a fleet does not come back at once.
            let (least, most) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
            assert!(
                *least < bound / 4 && *most > bound * 3 / 4,
                "{hint:?}: {least:?}..{most:?}"
            );
        }
        assert_eq!(cooldown_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_without_a_time_leaves_the_key_alone() {
        let layer = QuotaWindowLayer::new(fixed(100, SEC), Header::new("x-key")).reject();
        let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
        assert_ready_ok!(svc.poll_ready());
        let mut first = task::spawn(svc.call(req("a")));
        assert_pending!(first.poll());
        answer_with(
            &mut handle,
            Throttle::new(
                ThrottleKind::Overload,
                ThrottleScope::Unknown,
                ThrottleSource::Status,
            ),
        )
        .await;
        assert_ready_ok!(first.poll());
        call_through(&mut svc, &mut handle, "a").await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_outer_layer_obeying_global_signals_only_ignores_a_per_key_throttle() {
        for (obey, key_signal_holds, global_signal_holds) in [
            (ObeyThrottles::GlobalOnly, false, true),
            (ObeyThrottles::Ignore, false, false),
            (ObeyThrottles::Key, true, true),
        ] {
            for (scope, expect_hold) in [
                (ThrottleScope::Key, key_signal_holds),
                (ThrottleScope::Global, global_signal_holds),
            ] {
                let layer = QuotaWindowLayer::new(fixed(100, SEC), Header::new("x-key"))
                    .reject()
                    .obey_throttles(obey);
                let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
                assert_ready_ok!(svc.poll_ready());
                let mut first = task::spawn(svc.call(req("a")));
                assert_pending!(first.poll());
                answer_with(&mut handle, signal(scope)).await;
                assert_ready_ok!(first.poll());
                let next = call_through(&mut svc, &mut handle, "a").await;
                assert_eq!(
                    next.is_err(),
                    expect_hold,
                    "{obey:?} with a {scope:?} signal"
                );
            }
        }
    }
}
