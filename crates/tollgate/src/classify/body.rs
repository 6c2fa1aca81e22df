//! The response body of [`ThrottleClassifier`](super::ThrottleClassifier).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that went through
    /// [`ThrottleClassifier`](super::ThrottleClassifier): the inner body, unchanged.
    ///
    /// When the layer read the start of the body to classify it, this body first
    /// replays the frames read (data and trailers, in their order), then the error
    /// the inner body gave while they were read, if any, then the rest of the inner
    /// body. The caller receives exactly the frames, bytes and error the inner body
    /// produced, at the same points.
    ///
    /// Its data type is [`Bytes`], like hyper's and axum's bodies: the inner body's data
    /// must convert into it.
    //
    // Bounded on `B: Body` (against tower's habit) because a field holds `B::Error`.
    pub struct ClassifiedBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        Passthrough {
            #[pin]
            body: B,
        },
        Replay {
            // Frames read while classifying, to give back first.
            prefix: VecDeque<Frame<Bytes>>,
            // Data bytes left in `prefix`.
            prefix_len: u64,
            // The error that ended the reading, to give back after `prefix`.
            error: Option<B::Error>,
            // The rest of the inner body, if it had not ended.
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B: Body> ClassifiedBody<B> {
    /// The inner body, untouched.
    pub(super) fn passthrough(body: B) -> Self {
        ClassifiedBody {
            kind: Kind::Passthrough { body },
        }
    }

    /// `prefix`, then `error` if any, then `rest` if any.
    pub(super) fn replay(
        prefix: VecDeque<Frame<Bytes>>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
    ) -> Self {
        let prefix_len = prefix
            .iter()
            .filter_map(Frame::data_ref)
            .map(|data| data.len() as u64)
            .sum();
        ClassifiedBody {
            kind: Kind::Replay {
                prefix,
                prefix_len,
                error,
                rest,
            },
        }
    }

    /// Whether the layer read the start of this body (for tests and diagnostics).
    pub fn was_buffered(&self) -> bool {
        matches!(self.kind, Kind::Replay { .. })
    }
}

impl<B> Body for ClassifiedBody<B>
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
            KindProj::Passthrough { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map(|frame| frame.map_data(Into::into)))),
            KindProj::Replay {
                prefix,
                prefix_len,
                error,
                rest,
            } => {
                if let Some(frame) = prefix.pop_front() {
                    if let Some(data) = frame.data_ref() {
                        *prefix_len -= data.remaining() as u64;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(error) = error.take() {
                    *rest = None;
                    return Poll::Ready(Some(Err(error)));
                }
                let Some(body) = rest else {
                    return Poll::Ready(None);
                };
                let frame = match body.as_mut().poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(frame) => frame,
                };
                if !matches!(frame, Some(Ok(_))) {
                    // Ended or failed: never poll it again.
                    *rest = None;
                }
                Poll::Ready(frame.map(|frame| frame.map(|frame| frame.map_data(Into::into))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { body } => body.is_end_stream(),
            Kind::Replay {
                prefix,
                error,
                rest,
                ..
            } => {
                prefix.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|rest| rest.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { body } => body.size_hint(),
            Kind::Replay {
                prefix_len,
                error,
                rest,
                ..
            } => match rest {
                _ if error.is_some() => {
                    let mut hint = SizeHint::new();
                    hint.set_lower(*prefix_len);
                    hint
                }
                None => SizeHint::with_exact(*prefix_len),
                Some(rest) => {
                    let inner = rest.size_hint();
                    let mut hint = SizeHint::new();
                    hint.set_lower(inner.lower().saturating_add(*prefix_len));
                    if let Some(upper) = inner.upper().and_then(|u| u.checked_add(*prefix_len)) {
                        hint.set_upper(upper);
                    }
                    hint
                }
            },
        }
    }
}

impl<B: Body> fmt::Debug for ClassifiedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Passthrough { .. } => f
                .debug_struct("ClassifiedBody::Passthrough")
                .finish_non_exhaustive(),
            Kind::Replay {
                prefix,
                prefix_len,
                error,
                rest,
            } => f
                .debug_struct("ClassifiedBody::Replay")
                .field("prefix_frames", &prefix.len())
                .field("prefix_len", prefix_len)
                .field("error", &error.is_some())
                .field("rest", &rest.is_some())
                .finish(),
        }
    }
}
