//! What every simulator does the same way with time: holding admitted requests for
//! the configured latency, and counting arrivals into a timeline from the server's
//! start.

use std::time::Duration;

use tokio::time::Instant;

use crate::stats::{TimelineBucket, record_arrival};

/// A running simulator's latency and timeline clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    latency: Duration,
    started: Instant,
    bucket: Duration,
}

impl Timing {
    /// Starts the timeline now, in buckets of `bucket` (not zero).
    pub(crate) fn start(latency: Duration, bucket: Duration) -> Self {
        Self {
            latency,
            started: Instant::now(),
            bucket,
        }
    }

    /// Counts one arrival at `now` into `timeline`.
    pub(crate) fn record(&self, timeline: &mut Vec<TimelineBucket>, now: Instant, admitted: bool) {
        record_arrival(
            timeline,
            self.bucket,
            now.saturating_duration_since(self.started),
            admitted,
        );
    }

    /// Holds an admitted request for the configured latency (no wait without one).
    pub(crate) async fn hold(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}
