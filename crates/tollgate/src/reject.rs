//! How a layer hands its rejections back: as an error, or as an HTTP response.
//!
//! Every tollgate layer has an output parameter `O`:
//!
//! - [`Throw`] (the default, for clients): rejections are errors. The service's error
//!   type is [`BoxError`], as in tower; `err.downcast_ref::<tollgate::Error>()` gives the
//!   typed [`Error`].
//! - [`Respond`] (for servers): rejections are HTTP responses, `429 Too Many Requests`
//!   with `Retry-After` (or the status of [`ErrorKind::status`]), and the service keeps
//!   the inner service's error type. In axum that means `Router::layer` works directly,
//!   with no `HandleErrorLayer`. The typed [`Error`] is still there, in the response's
//!   extensions.

use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::ResponseBody;
use crate::{Error, ErrorKind};

/// The boxed error type of tower services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Rejections become errors: [`BoxError`] holding a [`tollgate::Error`](Error).
///
/// A rustc limitation shared by every tower middleware whose error is `BoxError` (tower's
/// own `Timeout` included): when the *inner* service's error is itself `BoxError`, a
/// future of the stack passed to `tokio::spawn` may fail to compile with
/// "implementation of `From` is not general enough". Inner services with a concrete
/// error type (hyper-util's client, axum's `Infallible`) are not affected.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throw;

/// Rejections become HTTP responses; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct Respond;

/// Why a layer's future failed before the output type is chosen: the inner service's
/// error, or tollgate's own rejection.
#[derive(Debug)]
pub(crate) enum Failure<E> {
    Inner(E),
    Rejected(Error),
}

impl<E: Into<BoxError>> Failure<E> {
    /// The [`Throw`] form.
    pub(crate) fn throw(self) -> BoxError {
        match self {
            Failure::Inner(err) => err.into(),
            Failure::Rejected(err) => Box::new(err),
        }
    }
}

impl<E> Failure<E> {
    /// The [`Respond`] form: rejections become responses.
    pub(crate) fn respond<B, G>(
        self,
        status: StatusCode,
    ) -> Result<Response<ResponseBody<B, G>>, E> {
        match self {
            Failure::Inner(err) => Err(err),
            Failure::Rejected(err) => Ok(rejection_response(err, status)),
        }
    }
}

/// Writes the response for a rejection.
///
/// `limited` is the status used for rejections of the client's own limits (429 unless
/// configured otherwise); other kinds use [`ErrorKind::status`]. `Retry-After` is whole
/// seconds rounded **up**, and at least 1: a sub-second wait never becomes `0`, which
/// clients read as "retry now".
pub(crate) fn rejection_response<B, G>(
    err: Error,
    limited: StatusCode,
) -> Response<ResponseBody<B, G>> {
    let status = match err.kind().status() {
        StatusCode::TOO_MANY_REQUESTS => limited,
        other => other,
    };
    let text = match err.kind() {
        ErrorKind::Key => "no usable rate-limit key in request\n",
        ErrorKind::TooManyKeys | ErrorKind::StoreUnavailable => {
            "rate limiter unavailable, try again later\n"
        }
        _ => "too many requests\n",
    };
    let mut response = Response::new(ResponseBody::local(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(after) = err.retry_after() {
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(after)));
    }
    response.extensions_mut().insert(err);
    response
}

/// Whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(after: Duration) -> u64 {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(4310)), 4310);
    }

    #[test]
    fn rejection_responses_carry_status_retry_after_and_the_typed_error() {
        let err = Error::new(ErrorKind::ConcurrencyLimited)
            .with_retry_after(Instant::now(), Duration::from_millis(200));
        let res: Response<ResponseBody<(), ()>> =
            rejection_response(err, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[RETRY_AFTER], "1");
        let typed = res.extensions().get::<Error>().unwrap();
        assert_eq!(typed.kind(), ErrorKind::ConcurrencyLimited);

        let res: Response<ResponseBody<(), ()>> = rejection_response(
            Error::new(ErrorKind::WaitExceeded),
            StatusCode::SERVICE_UNAVAILABLE,
        );
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().get(RETRY_AFTER).is_none());

        let res: Response<ResponseBody<(), ()>> =
            rejection_response(Error::new(ErrorKind::Key), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
}
