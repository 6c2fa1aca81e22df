//! The response body of tollgate's layers: the inner body, holding a guard until it
//! ends, or the short text of a rejection.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A response body that is either the inner service's body, carrying a guard (a
    /// concurrency slot) that is released when the body ends, errors, or is dropped;
    /// or the body of a response tollgate wrote itself (a `429`).
    ///
    /// The guard is released as soon as the body reports its end: when `poll_frame`
    /// returns `None` or an error, or when `is_end_stream()` becomes true after a frame,
    /// whichever comes first, and otherwise when the body is dropped.
    ///
    /// Its data type is [`Bytes`], like hyper's and axum's bodies: the inner body's data
    /// must convert into it.
    pub struct ResponseBody<B, G> {
        #[pin]
        kind: Kind<B, G>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B, G> {
        Inner {
            #[pin]
            body: B,
            guard: Option<G>,
        },
        Local {
            data: Option<Bytes>,
        },
    }
}

impl<B, G> ResponseBody<B, G> {
    pub(crate) fn new(body: B, guard: Option<G>) -> Self {
        ResponseBody {
            kind: Kind::Inner { body, guard },
        }
    }

    pub(crate) fn local(text: &'static str) -> Self {
        ResponseBody {
            kind: Kind::Local {
                data: Some(Bytes::from_static(text.as_bytes())),
            },
        }
    }

    /// Whether the body still holds its guard (for tests and diagnostics).
    pub fn holds_guard(&self) -> bool {
        matches!(self.kind, Kind::Inner { guard: Some(_), .. })
    }
}

impl<B, G> Body for ResponseBody<B, G>
where
    B: Body,
    B::Data: Into<Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { mut body, guard } => {
                let frame = match body.as_mut().poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(frame) => frame,
                };
                match &frame {
                    Some(Ok(_)) if !body.is_end_stream() => {}
                    _ => drop(guard.take()),
                }
                Poll::Ready(frame.map(|f| f.map(|f| f.map_data(Into::into))))
            }
            KindProj::Local { data } => {
                Poll::Ready(data.take().map(|bytes| Ok(Frame::data(bytes))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Local { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B, G> fmt::Debug for ResponseBody<B, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { guard, .. } => f
                .debug_struct("ResponseBody::Inner")
                .field("holds_guard", &guard.is_some())
                .finish_non_exhaustive(),
            Kind::Local { data } => f
                .debug_struct("ResponseBody::Local")
                .field("data", data)
                .finish(),
        }
    }
}
