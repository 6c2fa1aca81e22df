//! The [`ThrottleClassifier`] service.

use std::fmt;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Config;
use super::{ClassifiedBody, ClassifyThrottle, ThrottleClassifierLayer};

/// Classifies every response of the inner service and attaches the
/// [`Throttle`](super::Throttle) signal, if any, to the response's extensions.
///
/// Never fails by itself: its error is the inner service's. See the
/// [module docs](super).
#[derive(Clone)]
pub struct ThrottleClassifier<S, C = super::Preset> {
    inner: S,
    config: Config<C>,
}

impl<S, C> ThrottleClassifier<S, C> {
    /// Wraps `inner`, classifying its responses with `classifier` and the
    /// [layer's](ThrottleClassifierLayer) defaults.
    pub fn new(inner: S, classifier: C) -> Self {
        Self::from_config(inner, ThrottleClassifierLayer::new(classifier).config)
    }

    /// A [`ThrottleClassifierLayer`] with `classifier`.
    pub fn layer(classifier: C) -> ThrottleClassifierLayer<C> {
        ThrottleClassifierLayer::new(classifier)
    }

    pub(super) fn from_config(inner: S, config: Config<C>) -> Self {
        ThrottleClassifier { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, R, B> Service<R> for ThrottleClassifier<S, C>
where
    S: Service<R, Response = Response<B>>,
    C: ClassifyThrottle + Clone,
    B: Body,
    B::Data: Into<Bytes>,
{
    type Response = Response<ClassifiedBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        ResponseFuture::new(self.inner.call(request), self.config.clone())
    }
}

impl<S: fmt::Debug, C> fmt::Debug for ThrottleClassifier<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ThrottleClassifier");
        d.field("inner", &self.inner);
        self.config.fmt_fields(&mut d)
    }
}
