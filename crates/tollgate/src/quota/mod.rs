//! Quota windows: at most `N` units per window `W`, per key, several quotas at once.
//!
//! [`QuotaWindow`] is the layer: for each key (a mailbox, a chat, a space), every
//! request must fit every quota of the key's [`QuotaSet`] ("35 per minute AND 800 per
//! hour"), admitted all-or-nothing. Below it, this module holds the maths: value types
//! ([`Quota`]) and per-key state machines ([`WindowState`]) that are pure functions of
//! `(state, now)`, with no clock, lock, I/O or allocation; the store
//! ([`QuotaStore`](crate::store::QuotaStore)) holds the states under its own locks and
//! passes the time in.
//!
//! # The layer
//!
//! ```
//! use std::time::Duration;
//! use tollgate::quota::{Quota, QuotaWindowLayer};
//! use tollgate::key::PathSegment;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // Microsoft Graph: 10,000 requests per 10 minutes per mailbox, never more in any
//! // sliding 10 minutes, with 1 s of margin for the latency to the server's count.
//! let graph = Quota::sliding(10_000, Duration::from_secs(600))?;
//! let mailbox = PathSegment::pattern("/v1.0/users/{id}/{*rest}", "id")?;
//! let client = ServiceBuilder::new()
//!     .layer(QuotaWindowLayer::new(graph, mailbox).safety_margin(Duration::from_secs(1))?)
//!     .service(service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     }));
//! let request = http::Request::get("/v1.0/users/alice/messages").body(String::new())?;
//! assert_eq!(client.oneshot(request).await?.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! - **Wait mode** (default, for clients): a request that does not fit waits in its
//!   key's FIFO queue (at most `max_queue`, at most `max_wait`; a wait known in advance
//!   to be longer fails at once with [`ErrorKind::WaitExceeded`](crate::ErrorKind::WaitExceeded)
//!   and the time it would have taken). The head of the queue sleeps until the exact
//!   instant its request fits; when room returns, waiters are released in order and at
//!   least `release_spacing` apart (by default nine tenths of the shortest `W / N` of the
//!   set), not as a flood. Waits end on tokio's timer, which fires on whole milliseconds: an
//!   admission may come up to 1 ms after the exact instant, never before it.
//! - **Reject mode** ([`reject`](QuotaWindowLayer::reject); [`respond`](QuotaWindowLayer::respond)
//!   for servers): a request that does not fit fails at once with
//!   [`ErrorKind::QuotaExceeded`](crate::ErrorKind::QuotaExceeded) and the exact time until it would
//!   fit. As a response: `429` with `Retry-After` in whole seconds rounded **up** (never
//!   `0`), `RateLimit-Policy` and `RateLimit` (draft-10) and optionally the
//!   `X-RateLimit-*` trio. Admitted responses carry the same headers, and handlers find
//!   the [`QuotaDecision`] in the request's extensions.
//! - **Cost and class**: a request costs [`Cost`] units (1 by default); a [`Classify`]
//!   (such as [`ReadWrite`]) gives it a class, which selects its quotas through
//!   [`quotas_for`](QuotaWindowLayer::quotas_for) and keeps its own state. A cost above a
//!   quota's capacity fails at once with [`ErrorKind::CostTooHigh`](crate::ErrorKind::CostTooHigh).
//! - **Refunds**: a request admitted here but refused by a layer further in (its
//!   [`Error`](crate::Error) says [`never_sent`](crate::ErrorKind::never_sent)) gets
//!   its quota back. A request that reached the inner service is never refunded,
//!   whatever it got back: the server counted it, 429 or not. A request cancelled while
//!   it waits never took anything. A request cancelled while a layer further in holds
//!   it (waiting for a concurrency slot, say) is not refunded: from here, it may have
//!   been sent.
//! - **Cooldown**: [`QuotaWindow::cooldown`] (or the store's
//!   [`cooldown`](crate::store::QuotaStore::cooldown)) admits nothing for a key until a
//!   time, in both modes; other keys are untouched. `cooldown_all` holds every key.
//! - **Obeying the server**: when a response carries a
//!   [`Throttle`](crate::classify::Throttle) (put there by a
//!   [`ThrottleClassifier`](crate::classify::ThrottleClassifier) further in) with a time
//!   ([`resume_after`](crate::classify::Throttle::resume_after): a `Retry-After`, a body's
//!   `retry_after`, or a reset with nothing remaining, as in `RateLimit: "q";r=0;t=30`),
//!   the key cools down until then: queued and new requests of that key wait (or fail
//!   if that exceeds their `max_wait`), other keys go on. Scope global cools down every
//!   key of the store; an unknown scope cools down the key whose response carried it.
//!   When the cooldown ends, queued requests are released in order and spaced as
//!   above. [`obey_throttles`](QuotaWindowLayer::obey_throttles) narrows this for the
//!   outer layers of a stack ([`ObeyThrottles::GlobalOnly`]: a per-chat 429 must not
//!   pause a per-bot key). The cooldown ends at the server's hint plus an upward
//!   jitter, uniform up to a tenth of the hint and at most 1 s, so that the workers of
//!   a fleet that saw the same `429` do not all return in the same instant; never
//!   before the hint.
//!
//! # Order and sharing
//!
//! Client stack: `RetryAfterBackoff` → `QuotaWindow` → `ConcurrencyPerKey` →
//! `ThrottleClassifier` → client. Retries pass through again and take quota like any
//! request. Clones of the layer and its services share one store; `poll_ready` only
//! asks the inner service (the key is known in `call`), and a request that must wait
//! takes the ready inner service with it, exactly as
//! [`ConcurrencyPerKey`](crate::concurrency) does.
//!
//! **Quotas of different keys** (Telegram's 1 per second per chat *and* 30 per second
//! per bot; Chat's per-space *and* per-project quotas) take one layer per key, stacked.
//! Only the innermost layer counts at the instant the request leaves for the server:
//! an outer layer counts when it admits, and a request it admitted may then wait in an
//! inner layer's queue. So the outer bound holds on admissions, and on arrivals at the
//! server only up to that wait: requests the outer layer spread out can reach the
//! server closer together after waiting in different inner queues. Put the layer whose
//! quota is the tighter one for the traffic (the one that makes requests wait) innermost,
//! run the outer ones in reject mode or with a short `max_wait`, or give the outer
//! quota a [`safety_margin`](QuotaWindowLayer::safety_margin) of the inner wait. One
//! layer admitting under several keys' quotas at once, all or nothing, would remove
//! this; it is not built yet.
//!
//! # The maths
//!
//! Google Chat lets an app create fewer than 35 spaces per minute *and* 800 per hour:
//!
//! ```
//! use std::time::Duration;
//! use tollgate::quota::{self, Quota, Wait};
//!
//! let quotas = [
//!     Quota::sliding(34, Duration::from_secs(60))?,
//!     Quota::sliding(799, Duration::from_secs(3600))?,
//! ];
//! let now = 0; // nanoseconds on the caller's clock
//! let mut states: Vec<_> = quota::fresh_states(&quotas, now).collect();
//!
//! quota::admit_all(&quotas, &mut states, now, 34).expect("a fresh key has room");
//! let denied = quota::admit_all(&quotas, &mut states, now, 1).unwrap_err();
//! assert_eq!(denied.index(), 0); // the per-minute quota refused
//! // The 35th unit fits once the first 1.875 s bucket is a full minute old.
//! let wait = denied.wait().duration().unwrap();
//! assert_eq!(wait, Duration::from_millis(61_875) - Duration::from_nanos(1));
//! assert!(quota::check_all(&quotas, &states, now + wait.as_nanos() as u64, 1).is_ok());
//!
//! // A cost above what a window can ever hold is refused for good, not queued.
//! assert_eq!(quota::check_all(&quotas, &states, now, 35).unwrap_err().wait(), Wait::Never);
//! # Ok::<(), tollgate::quota::QuotaError>(())
//! ```
//!
//! # Time
//!
//! `now` is a `u64` count of nanoseconds since an origin the caller picks: the memory
//! store converts `tokio::time::Instant` (so paused test time drives it); a Redis store
//! uses Redis `TIME`. Durations at the public API are [`Duration`]s, except [`Wait`],
//! which carries nanoseconds on the same clock (and converts with
//! [`Wait::duration`]). 64 bits of nanoseconds last 584 years from the origin; the
//! arithmetic saturates, so nothing panics at the end of the clock.
//!
//! Read the clock *under the key's lock*, so that the calls on one state see a
//! non-decreasing `now`. Calls that arrive slightly out of order anyway (a request read
//! the clock, then waited for the lock behind a later one) are still safe: each
//! guarantee below holds for the callers' timestamps whatever order the calls are
//! processed in. A `now` further behind than the state remembers (about `W` for a
//! sliding window, the previous window for a fixed one; a smooth window has no such
//! horizon) is refused until the forgotten history has expired: history the state no
//! longer keeps counts as full, never as empty. Property tests drive each kind with
//! such jitter. [`WindowState::is_fresh`] speaks about instants from its `now` on.
//!
//! # Window kinds
//!
//! Users get window semantics wrong (governor's `Quota::per_minute(60)` admits 119 in a
//! sliding minute), so each kind states its exact guarantee and worst case. "Units" are
//! request costs (a Microsoft Graph `$batch` of 20 costs 20); intervals are half-open,
//! `(t − L, t]`, and only admissions that were not refunded count.
//!
//! | kind | guarantee | most units in any interval of length `W` | state |
//! |---|---|---|---|
//! | [sliding](Quota::sliding) | `≤ N` in every interval of length `W` | `N` | 144 B |
//! | [fixed](Quota::fixed) | `≤ N` in every aligned `[kW, (k+1)W)` | `2N` | 16 B |
//! | [smooth](Quota::smooth) | `≤ b + ⌈L/T⌉ − 1` in every interval of length `L` | `b + N − 1` (`N` with the default `b = 1`) | 16 B |
//!
//! A [`WindowState`] is the enum of the three, 160 bytes whatever `N` (the sliding
//! ring sets the size).
//!
//! ## Sliding
//!
//! Never more than `N` units in *any* interval of length `W`: what a client needs
//! against a server whose algorithm it does not know.
//!
//! The window is split into [`Quota::SLIDING_BUCKETS`] = 32 buckets of granularity
//! `g = ⌈W/32⌉`, aligned on the clock origin, with one `u32` counter each in a ring of
//! 33 (a window overlaps at most 33 aligned buckets), so memory does not depend on `N`.
//! An admission is counted in the bucket of its `now`, and a bucket `[s, s + g)` stops
//! counting at `s + g − 1 + W`, the instant its last nanosecond leaves the window.
//! Every admission is therefore counted for at least `W`, which makes the guarantee
//! exact; the counting is conservative by less than one bucket: an admission is
//! remembered for between `W` (made in the last nanosecond of its bucket) and
//! `W + g − 1` (made in the first). The cost is throughput: a client that sends
//! whenever allowed gets at least `N` per `W + g`, that is `32/33 ≈ 97 %` of `N` per
//! `W`. [`Wait`]s are exact for this model: the time until enough of the oldest buckets
//! have stopped counting for the cost to fit.
//!
//! ## Fixed
//!
//! Never more than `N` units in each aligned window `[kW, (k+1)W)`, as many providers
//! count. In an unaligned interval of `L` nanoseconds it admits up to
//! `N·(⌈(L − 1)/W⌉ + 1)`: for `L = W`, `2N`, reached by `N` units in the last
//! nanosecond of one window and `N` in the first of the next. Windows are aligned on
//! the caller's clock origin: on Redis `TIME` (the Unix epoch) that is whole UTC
//! minutes and hours, like most providers' counters; on the memory store's arbitrary
//! origin, a client's windows do not line up with a server's, so clients should prefer
//! sliding or smooth windows. A refused request waits for the next window.
//!
//! ## Smooth (GCRA)
//!
//! Units evenly spaced, one per emission interval `T = ⌈W/N⌉` (rounded up to a whole
//! nanosecond, so the rate never exceeds `N/W`), after a burst of up to `b` units
//! ([`Quota::burst`]). This is the generic cell rate algorithm: the state is the
//! theoretical arrival time `tat`, each admission of `c` units pushes it `c·T` further,
//! and an admission at `t` must leave `tat ≤ t + b·T`. So `U` units admitted within
//! `[a, c]` push `tat` by `U·T` while time drains at most `c − a` of it, which gives
//! `U·T ≤ b·T + (c − a)` in any processing order (the proof is in `smooth.rs`). Exact
//! bounds:
//!
//! - at most `b + ⌈L/T⌉ − 1` units in any interval of length `L`; so at most
//!   `b + N − 1` in any interval of length `W`, reached (`b` at once, then one per `T`)
//!   when `(N − 1)·T < W`;
//! - spacing: `U` units admitted within a closed interval `[a, c]` need
//!   `c − a ≥ (U − b)·T`; once the burst is spent, each unit waits `T` for the next.
//!
//! **The default burst is 1**, not `N` (governor's default). With `b = 1`,
//! `Quota::smooth(N, W)` keeps the sliding guarantee, never more than `N` in any
//! interval of length `W`, and adds even spacing, so it is safe against an unknown
//! server and releases waiting requests one by one instead of in a flood when capacity
//! returns. A burst is a deliberate choice with a stated price: `b − 1` more units in
//! some window of length `W`.
//!
//! # Costs
//!
//! A request costs `cost` units (0 is allowed and admitted unless the window is
//! [blocked](WindowState::block_until)). A cost above [`Quota::capacity`] (`N`, or `b`
//! for smooth) can never be admitted: [`WindowState::check`] answers [`Wait::Never`]
//! rather than a wait, so the layer fails the request with a clear error instead of
//! waiting forever.
//!
//! # Several quotas: all or nothing
//!
//! A key may have several quotas ("35/min AND 800/hour"). [`check_all`] asks every
//! window and changes nothing; [`commit_all`] records the admission in every window;
//! [`admit_all`] is both, so a request refused by one window consumes nothing from the
//! others. The refusal, [`Denied`], names the quota with the longest wait and that wait,
//! which is exactly when all windows would admit: every kind's admissible instants are
//! upward-closed (admitted at `t`, admitted at any later `t'` if nothing else happens),
//! so the joint earliest instant is the latest of the individual ones.
//!
//! # Refunds
//!
//! [`WindowState::refund`] undoes an admission for a request that never reached the
//! server (cancelled while queued, rejected further in). It gives back only what the
//! admission still holds: nothing once it has left the window or drained, so it is
//! safe at any time and never drives a count below zero. Sliding and fixed windows give
//! it back exactly (the state then decides as if the admission had never happened);
//! a smooth window gives back `min(c·T, t_i + c·T − now')`, `now'` the later of the
//! refund's `now` and the latest commit: everything when refunded at the instant of
//! admission, and after that never more than is provably free, so the bound above still
//! holds (a naive `tat −= c·T` would let two units through at one instant with `b = 1`).
//! A request that was sent is never refunded, even if it got `429`: the server counted
//! it.
//!
//! # Blocks and cooldowns
//!
//! [`WindowState::block_until`] stops one window admitting anything before an instant
//! (and [`WindowState::clamp_exhausted`] is the same from a `RateLimit: r=0;t=30` hint):
//! it reports 0 remaining until then, and its own accounting applies again after. It
//! composes exactly with the window's waits (the later of the two). It is meant for
//! hints about one quota; a key-wide cooldown (a `Retry-After` for the key, or a global
//! one) also stops requests of keys or classes that have no quota here, so it belongs
//! to the caller, next to the windows.
//!
//! # Eviction
//!
//! [`WindowState::is_fresh`] is true exactly when the state makes the same decisions as
//! a [new](WindowState::new) one at every instant from `now` on, whatever happens next;
//! that is exactly when a request of the full capacity would be admitted at `now`.
//! [`WindowState::replenished_after`] says when that will be. A store may drop a fresh
//! state (and must not drop one that is not: that would forget admissions).
//!
//! # `RateLimit` header fields
//!
//! For draft-ietf-httpapi-ratelimit-headers-10, `r` is [`WindowState::remaining`] and
//! `t` is [`WindowState::reset_after`]. The draft defines `t` as the seconds until the
//! quota resets, that is until more quota is available; a sliding or smooth window
//! refills gradually, so this picks the reading that keeps a `Retry-After` never earlier
//! than `t`: when `r = 0`, the time until at least one unit is available; otherwise the
//! time until the window is fully replenished (0 if it is). For a fixed window that is
//! the end of the current window whenever anything was admitted in it, and 0 if
//! nothing was. Round up to whole seconds when writing the field.
//!
//! # Why not governor
//!
//! The GCRA here is the same algorithm as governor's (`gcra.rs`), written out in a few
//! lines rather than used, because governor's `Gcra` is crate-private and reachable only
//! through `RateLimiter`, which does not fit this use:
//!
//! - its check *is* its commit (`StateStore::measure_and_replace`): there is no
//!   check-without-commit, so all-or-nothing admission across several windows would
//!   need a rollback that governor cannot do;
//! - there is no refund;
//! - time comes from its `Clock`/`Reference` traits and state from its `StateStore`
//!   (with its own locking and keyed maps), where we need a plain `u64` state inside
//!   our own sharded table, under our own lock, on the caller's `u64` nanoseconds (the
//!   same maths must run against Redis `TIME`);
//! - its `Quota::per_second(n)`/`per_minute(n)` round the interval *down* to whole
//!   nanoseconds (`60 s / 7` admits slightly more than 7 per minute in the long run)
//!   and default the burst to `n`; here the interval rounds up and the burst defaults
//!   to 1, so the stated bounds hold exactly.
//!
//! The per-request cost of both will be measured side by side in the benchmark crate.

use std::time::Duration;

mod class;
mod fixed;
pub mod future;
pub(crate) mod headers;
mod layer;
mod service;
mod sliding;
mod smooth;
mod spec;
mod state;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
mod windows;

pub use crate::store::{QuotaSet, QuotaSetError};
pub use class::{Classified, Classify, Cost, ReadWrite};
pub use headers::{RATELIMIT, RATELIMIT_POLICY};
pub use layer::QuotaWindowLayer;
pub use service::QuotaWindow;
pub use spec::{Quota, QuotaError, WindowKind};
pub use state::{Wait, WindowState};
pub(crate) use windows::admit_all_now;
pub use windows::{
    Denied, admit_all, all_fresh, check_all, commit_all, fresh_states, refund_all,
    replenished_after_all,
};

/// A [`Duration`] in whole nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What [`QuotaWindow`] decided for an admitted request, put in its extensions when
/// headers are on, for handlers that want to show or log it.
#[derive(Clone, Debug)]
pub struct QuotaDecision {
    key: crate::key::KeyId,
    class: &'static str,
    quotas: QuotaSet,
    grant: crate::store::QuotaGrant,
}

impl QuotaDecision {
    pub(crate) fn new(
        key: crate::key::KeyId,
        class: &'static str,
        quotas: QuotaSet,
        grant: crate::store::QuotaGrant,
    ) -> Self {
        QuotaDecision {
            key,
            class,
            quotas,
            grant,
        }
    }

    /// The key's fingerprint.
    pub fn key(&self) -> crate::key::KeyId {
        self.key
    }

    /// The request's class (`""` by default).
    pub fn class(&self) -> &'static str {
        self.class
    }

    /// Units the request took.
    pub fn cost(&self) -> u32 {
        self.grant.cost()
    }

    /// The quotas the request was admitted under.
    pub fn quotas(&self) -> &QuotaSet {
        &self.quotas
    }

    /// Each quota's state right after the admission, in the order of
    /// [`quotas`](Self::quotas).
    pub fn usage(&self) -> &[crate::store::QuotaUsage] {
        self.grant.usage()
    }
}

/// Which server throttle signals (a [`Throttle`](crate::classify::Throttle) on a
/// response) a [`QuotaWindow`] obeys by cooling its key down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObeyThrottles {
    /// The default: a signal of scope key or unknown cools down this layer's key, a
    /// global one every key.
    #[default]
    Key,
    /// Only global signals, which cool down every key. For an outer layer of a stack
    /// (per bot around per chat) whose key is not the one a per-key signal is about.
    GlobalOnly,
    /// None: the layer counts, the server's signals are left to other layers.
    Ignore,
}
