//! What the simulator tests share: a plain `hyper_util` client (no tollgate), the
//! answers it reads, and sums over a timeline.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tollgate_sim::TimelineBucket;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response, its body parsed as JSON (`null` when it is not JSON).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    /// The value of header `name`, if it is there and is text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts that the answer is a `200`, showing its body if not.
    #[track_caller]
    pub(crate) fn assert_ok(&self) {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
    }
}

/// Sends `body` with `headers` and reads the whole answer.
pub(crate) async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let mut request = Request::builder().method(method).uri(url);
    for &(name, value) in headers {
        request = request.header(name, value);
    }
    let request = request.body(Full::new(body)).expect("valid request");
    let response = client.request(request).await.expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body read")
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// [`send`] with `Content-Type: application/json` (first, then `headers`) and `body`
/// as JSON, or empty.
pub(crate) async fn send_json(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let headers: Vec<(&str, &str)> = [("content-type", "application/json")]
        .into_iter()
        .chain(headers.iter().copied())
        .collect();
    send(client, method, url, &headers, body).await
}

/// The requests a timeline counts as admitted and as throttled, over all buckets.
pub(crate) fn admitted_and_throttled(timeline: &[TimelineBucket]) -> (u64, u64) {
    timeline
        .iter()
        .fold((0, 0), |(a, t), b| (a + b.admitted, t + b.throttled))
}
