//! The HTTP answer every simulator sends: a JSON body, its content type and, on
//! some `429`s, `Retry-After`.

use axum::body::Body;
use axum::response::Response;
use http::StatusCode;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::Value;

/// `status` with `body` as `content_type`, and `Retry-After: <secs>` when given.
pub(crate) fn json(
    status: StatusCode,
    content_type: &'static str,
    retry_after: Option<u64>,
    body: &Value,
) -> Response {
    let mut builder = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type);
    if let Some(secs) = retry_after {
        builder = builder.header(RETRY_AFTER, secs);
    }
    builder
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}
