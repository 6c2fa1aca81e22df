//! Replaying requests: which bodies can be sent again.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// A request body that can be sent again, for a retry.
///
/// Implemented for every `Clone` body (`String`, `Vec<u8>`, `Bytes`, `()`,
/// http-body-util's `Full<Bytes>` and `Empty<Bytes>`: cloning them copies a pointer or
/// the bytes), and by [`SendOnce`], which never replays. A streaming body (hyper's
/// `Incoming`, a `BoxBody`) is not `Clone`: read it with [`buffer`] (replayable when it
/// fits a cap you choose), or wrap it in [`SendOnce`].
pub trait ReplayBody: Sized {
    /// A copy holding the same bytes, or `None` when the body cannot be sent again.
    fn replay_body(&self) -> Option<Self>;
}

impl<B: Clone> ReplayBody for B {
    fn replay_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

pin_project! {
    /// A body that is sent once and never replayed: a request with it goes through
    /// `RetryAfterBackoff` exactly once, whatever the answer (the response says so in its
    /// [`Attempts`](super::Attempts) extension). It forwards every frame of `B`.
    ///
    /// A retry is never sent without its body: a body that cannot be copied is not
    /// retried at all.
    #[derive(Debug, Default)]
    pub struct SendOnce<B> {
        #[pin]
        body: B,
    }
}

impl<B> SendOnce<B> {
    /// Wraps `body`.
    pub fn new(body: B) -> Self {
        SendOnce { body }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.body
    }
}

impl<B> ReplayBody for SendOnce<B> {
    fn replay_body(&self) -> Option<Self> {
        None
    }
}

impl<B: Body> Body for SendOnce<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A copy of `request` for the next attempt: method, URI, version, headers, every
/// extension (they are `Clone` in http 1.x), and the body's replay; `None` when the
/// body cannot be replayed.
pub(super) fn replay<B: ReplayBody>(request: &Request<B>) -> Option<Request<B>> {
    let body = request.body().replay_body()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

pin_project! {
    /// A body read ahead by [`buffer`]: replayable when it fitted the cap (the whole body
    /// and its trailers are held), otherwise sent once (the bytes read so far, then the
    /// rest of the original body).
    ///
    /// It is deliberately not `Clone`: [`ReplayBody::replay_body`] copies it only when it
    /// is whole.
    #[derive(Debug)]
    pub struct Buffered<B> {
        #[pin]
        kind: BufferedKind<B>,
    }
}

pin_project! {
    #[project = BufferedProj]
    #[derive(Debug)]
    enum BufferedKind<B> {
        Whole {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
        },
        Partial {
            prefix: Option<Bytes>,
            #[pin]
            rest: B,
        },
    }
}

impl<B> Buffered<B> {
    /// Whether the whole body is held (and so can be replayed).
    pub fn is_whole(&self) -> bool {
        matches!(self.kind, BufferedKind::Whole { .. })
    }
}

impl<B> ReplayBody for Buffered<B> {
    fn replay_body(&self) -> Option<Self> {
        match &self.kind {
            BufferedKind::Whole { data, trailers } => Some(Buffered {
                kind: BufferedKind::Whole {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
            }),
            BufferedKind::Partial { .. } => None,
        }
    }
}

impl<B> Body for Buffered<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            BufferedProj::Whole { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            BufferedProj::Partial { prefix, rest } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                rest.poll_frame(cx).map(|frame| {
                    frame.map(|frame| {
                        frame.map(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                    })
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BufferedKind::Whole { data, trailers } => data.is_none() && trailers.is_none(),
            BufferedKind::Partial { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BufferedKind::Whole { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            BufferedKind::Partial { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
        }
    }
}

/// Reads `body` ahead, up to `cap` data bytes, so that a request with a streaming body
/// can be retried: when the whole body (and its trailers) fits, the result is
/// replayable; otherwise (or when the body announces more than `cap` bytes, which is
/// then not read at all) the result is sent once, with every byte, and the response's
/// [`Attempts::replayable`](super::Attempts::replayable) is `false`.
///
/// The bytes are held until the call ends; pick `cap` accordingly (the Graph SDKs
/// retry only bodies they already hold). An error while reading is returned.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tollgate::retry::{ReplayBody, buffer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let streaming = Full::new(Bytes::from_static(b"{}")).boxed(); // not `Clone`
/// let body = buffer(streaming, 64 * 1024).await.unwrap();
/// assert!(body.is_whole());
/// assert!(body.replay_body().is_some());
/// # }
/// ```
pub async fn buffer<B>(mut body: B, cap: usize) -> Result<Buffered<B>, B::Error>
where
    B: Body + Unpin,
{
    let partial = |prefix: BytesMut, rest| Buffered {
        kind: BufferedKind::Partial {
            prefix: (!prefix.is_empty()).then(|| prefix.freeze()),
            rest,
        },
    };
    if body
        .size_hint()
        .lower()
        .try_into()
        .map_or(true, |lower: usize| lower > cap)
    {
        return Ok(partial(BytesMut::new(), body));
    }
    let mut held = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = match frame?.into_data() {
            Ok(mut data) => {
                let fits = held.len().saturating_add(data.remaining()) <= cap;
                while data.has_remaining() {
                    let chunk = data.chunk();
                    held.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
                if !fits {
                    return Ok(partial(held, body));
                }
                continue;
            }
            Err(frame) => frame,
        };
        match frame.into_trailers() {
            Ok(t) => match &mut trailers {
                Some(existing) => existing.extend(t),
                None => trailers = Some(t),
            },
            // Unreachable with http-body 1 (a frame is data or trailers); kept total.
            Err(_) => return Ok(partial(held, body)),
        }
    }
    Ok(Buffered {
        kind: BufferedKind::Whole {
            data: (!held.is_empty()).then(|| held.freeze()),
            trailers,
        },
    })
}
