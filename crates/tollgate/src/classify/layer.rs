//! [`ThrottleClassifierLayer`]: the builder of [`ThrottleClassifier`].

use std::fmt;
use std::time::SystemTime;

use tower_layer::Layer;

use super::{Preset, ThrottleClassifier};

/// How many body bytes the layer reads by default to classify a response: 16 KiB.
///
/// Every throttling body in `API_FACTS.md` (Graph, Telegram, Google, GitHub) is well
/// under 1 KiB; Google's envelope with several `details` stays under 4 KiB.
pub const DEFAULT_BODY_CAP: usize = 16 * 1024;

/// Applies [`ThrottleClassifier`] to a service: every response is classified, and a
/// [`Throttle`](super::Throttle) signal, if any, is put in its extensions.
///
/// The layer is its own builder. Defaults: the body is read (only for candidate
/// responses) up to [`DEFAULT_BODY_CAP`] bytes, and `now` is [`SystemTime::now`].
/// Cloning the layer clones the classifier; it holds no state. See the
/// [module docs](super) for an example.
#[must_use]
#[derive(Clone)]
pub struct ThrottleClassifierLayer<C = Preset> {
    pub(super) config: Config<C>,
}

#[derive(Clone)]
pub(super) struct Config<C> {
    pub(super) classifier: C,
    pub(super) body_cap: usize,
    pub(super) clock: fn() -> SystemTime,
}

impl<C> ThrottleClassifierLayer<C> {
    /// Classifies responses with `classifier`: a [`Preset`], `()`, a closure, or any
    /// [`ClassifyThrottle`](super::ClassifyThrottle).
    ///
    /// The classifier is cloned for every request (presets and plain closures are
    /// `Copy`): wrap a costly one's state in an `Arc`.
    pub fn new(classifier: C) -> Self {
        ThrottleClassifierLayer {
            config: Config {
                classifier,
                body_cap: DEFAULT_BODY_CAP,
                clock: SystemTime::now,
            },
        }
    }

    /// Reads at most `bytes` of a candidate response's body to classify it (default
    /// [`DEFAULT_BODY_CAP`], 16 KiB).
    ///
    /// The read stops at the end of the frame that reaches the cap, so up to one frame
    /// more may be held in memory, but the classifier sees only the first `bytes`. A
    /// body longer than the cap is classified from its start, which is where every
    /// known error envelope puts its fields. `0` never reads bodies: responses are
    /// classified from their head only.
    pub fn body_cap(mut self, bytes: usize) -> Self {
        self.config.body_cap = bytes;
        self
    }

    /// The wall clock the classifier measures HTTP dates against (`Retry-After` as a
    /// date, epoch resets), [`SystemTime::now`] by default. For tests.
    pub fn clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.config.clock = clock;
        self
    }

    /// The classifier.
    pub fn classifier(&self) -> &C {
        &self.config.classifier
    }
}

impl ThrottleClassifierLayer<Preset> {
    /// The [`standard`](super::standard) preset: `429`/`503` and the standard headers.
    pub fn standard() -> Self {
        Self::new(Preset::Standard)
    }

    /// The [`graph`](super::graph) preset: Microsoft Graph / Outlook, including the
    /// MailboxConcurrency body.
    pub fn graph() -> Self {
        Self::new(Preset::Graph)
    }

    /// The [`graph_batch`](super::batch::graph_batch) preset with a body cap of
    /// [`DEFAULT_BATCH_BODY_CAP`](super::DEFAULT_BATCH_BODY_CAP) (1 MiB), for the stack
    /// that sends Graph `$batch` requests: a `200` body is read for throttled
    /// sub-requests, whose largest hint cools the mailbox down. The batch is not
    /// resent; see [`batch`](super::batch) for resubmitting the throttled ids.
    pub fn graph_batch() -> Self {
        Self::new(Preset::GraphBatch).body_cap(super::DEFAULT_BATCH_BODY_CAP)
    }

    /// The [`telegram`](super::telegram) preset: the Telegram Bot API.
    pub fn telegram() -> Self {
        Self::new(Preset::Telegram)
    }

    /// The [`google`](super::google) preset: Google APIs' error envelope.
    pub fn google() -> Self {
        Self::new(Preset::Google)
    }

    /// The [`github`](super::github) preset: the GitHub REST API.
    pub fn github() -> Self {
        Self::new(Preset::GitHub)
    }
}

impl<S, C: Clone> Layer<S> for ThrottleClassifierLayer<C> {
    type Service = ThrottleClassifier<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ThrottleClassifier::from_config(inner, self.config.clone())
    }
}

impl<C> fmt::Debug for ThrottleClassifierLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config
            .fmt_fields(&mut f.debug_struct("ThrottleClassifierLayer"))
    }
}

impl<C> Config<C> {
    pub(super) fn fmt_fields(&self, d: &mut fmt::DebugStruct<'_, '_>) -> fmt::Result {
        d.field("classifier", &std::any::type_name::<C>())
            .field("body_cap", &self.body_cap)
            .finish_non_exhaustive()
    }
}
