//! The response future of [`ThrottleClassifier`](super::ThrottleClassifier).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http::response::Parts;
use http_body::{Body, Frame};
use pin_project_lite::pin_project;

use super::layer::Config;
use super::{ClassifiedBody, ClassifyThrottle, Throttle};

pin_project! {
    /// Response future of [`ThrottleClassifier`](super::ThrottleClassifier): drives the
    /// inner future, reads the start of a candidate response's body if the classifier
    /// needs it, and attaches the [`Throttle`] signal.
    pub struct ResponseFuture<F, C, B> {
        #[pin]
        future: F,
        state: State<B>,
        config: Config<C>,
    }
}

enum State<B> {
    /// Waiting for the inner future.
    Calling,
    /// Reading the start of a candidate body.
    Buffering {
        parts: Parts,
        // Boxed so it can move, still pinned, into the response body: candidate
        // responses are the rare path.
        body: Pin<Box<B>>,
        prefix: VecDeque<Frame<Bytes>>,
        len: usize,
    },
    Done,
}

/// Why the reading of a body stopped.
enum Stop<E> {
    /// The body ended: nothing is left to read.
    End,
    /// The cap was reached: the rest is still in the body.
    Cap,
    /// The body failed: it is given back after the frames read.
    Error(E),
}

impl<F, C, B> ResponseFuture<F, C, B> {
    pub(super) fn new(future: F, config: Config<C>) -> Self {
        ResponseFuture {
            future,
            state: State::Calling,
            config,
        }
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: ClassifyThrottle,
    B: Body,
    B::Data: Into<Bytes>,
{
    type Output = Result<Response<ClassifiedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let config = &*this.config;
        loop {
            match this.state {
                State::Calling => {
                    let (mut parts, body) = match ready!(this.future.as_mut().poll(cx)) {
                        Ok(response) => response.into_parts(),
                        Err(error) => {
                            *this.state = State::Done;
                            return Poll::Ready(Err(error));
                        }
                    };
                    let read = config.body_cap > 0
                        && config.classifier.needs_body(parts.status, &parts.headers);
                    if !read || body.is_end_stream() {
                        // Head only, or nothing to read: the body goes through as it is.
                        let seen = if read { Some(&[][..]) } else { None };
                        attach(&mut parts, config, seen);
                        *this.state = State::Done;
                        let body = ClassifiedBody::passthrough(body);
                        return Poll::Ready(Ok(Response::from_parts(parts, body)));
                    }
                    *this.state = State::Buffering {
                        parts,
                        body: Box::pin(body),
                        prefix: VecDeque::new(),
                        len: 0,
                    };
                }
                State::Buffering {
                    body, prefix, len, ..
                } => {
                    let stop = loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                let frame = frame.map_data(Into::into);
                                if let Some(data) = frame.data_ref() {
                                    *len = len.saturating_add(data.len());
                                }
                                prefix.push_back(frame);
                                if body.is_end_stream() {
                                    break Stop::End;
                                }
                                if *len >= config.body_cap {
                                    break Stop::Cap;
                                }
                            }
                            Some(Err(error)) => break Stop::Error(error),
                            None => break Stop::End,
                        }
                    };
                    let State::Buffering {
                        mut parts,
                        body,
                        prefix,
                        ..
                    } = mem::replace(this.state, State::Done)
                    else {
                        unreachable!("in the buffering state");
                    };
                    let body = match stop {
                        Stop::End | Stop::Cap => {
                            let seen = contiguous(&prefix, config.body_cap);
                            attach(&mut parts, config, Some(&seen));
                            let rest = matches!(stop, Stop::Cap).then_some(body);
                            ClassifiedBody::replay(prefix, None, rest)
                        }
                        Stop::Error(error) => {
                            // A broken body says nothing reliable: the head decides.
                            attach(&mut parts, config, None);
                            ClassifiedBody::replay(prefix, Some(error), None)
                        }
                    };
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                State::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// Classifies the head (and `body`), and puts the signal, if any, in the extensions.
fn attach<C: ClassifyThrottle>(parts: &mut Parts, config: &Config<C>, body: Option<&[u8]>) {
    let now = (config.clock)();
    let Some(throttle) = config
        .classifier
        .classify(parts.status, &parts.headers, body, now)
    else {
        return;
    };
    tracing::debug!(
        target: "tollgate::classify",
        status = parts.status.as_u16(),
        kind = ?throttle.kind(),
        scope = ?throttle.scope(),
        source = ?throttle.source(),
        retry_after = ?throttle.retry_after(),
        "throttle"
    );
    parts.extensions.insert::<Throttle>(throttle);
}

/// The first `cap` data bytes of `prefix`, borrowed when one frame holds them all.
fn contiguous(prefix: &VecDeque<Frame<Bytes>>, cap: usize) -> Cow<'_, [u8]> {
    let mut data = prefix.iter().filter_map(Frame::data_ref);
    let first = data.next().map_or(&[][..], |bytes| &bytes[..]);
    if first.len() >= cap {
        return Cow::Borrowed(&first[..cap]);
    }
    let Some(second) = data.next() else {
        return Cow::Borrowed(first);
    };
    let mut joined = Vec::with_capacity(cap);
    for bytes in [first, &second[..]].into_iter().chain(data.map(|b| &b[..])) {
        let take = bytes.len().min(cap - joined.len());
        joined.extend_from_slice(&bytes[..take]);
        if joined.len() == cap {
            break;
        }
    }
    Cow::Owned(joined)
}

impl<F, C, B> fmt::Debug for ResponseFuture<F, C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Calling => "calling",
            State::Buffering { .. } => "buffering",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
