//! Simulated upstream APIs that throttle like the real ones, for testing and measuring
//! tollgate.
//!
//! Each simulator is a real HTTP server on loopback that enforces the documented limits
//! of an API with its own, deliberately simple and exact counting (it never uses
//! tollgate's limiters: a judge must not be built from what it judges), answers as the
//! real API does (status, headers, body) and records what it saw: requests, `429`s,
//! peak concurrency and the most requests in any window, per key.
//!
//! - [`GraphSim`]: Microsoft Graph mail, per-mailbox quota and concurrency, paged
//!   listing and `$batch` (see [`graph`]).
//! - [`TelegramSim`]: the Telegram Bot API's `sendMessage`, per-chat, per-group and
//!   per-bot limits, `retry_after` and long flood waits (see [`telegram`]).
//! - [`ChatSim`]: Google Chat messages and spaces, per-space and per-project quotas for
//!   reads and writes, space creation under two windows at once, `RESOURCE_EXHAUSTED`
//!   with `RetryInfo` (see [`chat`]).
//!
//! Each builder's `start` returns a [`Running`] handle (aliased [`RunningSim`],
//! [`RunningTelegramSim`], [`RunningChatSim`]): the address, the simulator's URLs,
//! statistics so far and a graceful shutdown that returns the final ones.
//!
//! Windows are configurable durations, so a test or demo can run a 10-minute quota
//! shrunk to a second.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tollgate_sim::GraphSim;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let sim = GraphSim::new()
//!     .mailboxes(2)
//!     .quota(50, Duration::from_secs(1))
//!     .start()
//!     .await?;
//! println!("GET {}?$top=25", sim.messages_url("mailbox-1"));
//! let stats = sim.shutdown().await;
//! assert!(stats.totals.max_in_window <= stats.limit_in_window);
//! # Ok(())
//! # }
//! ```

pub mod chat;
pub mod graph;
mod response;
mod running;
mod stats;
pub mod telegram;
mod timing;
mod window;

pub use chat::{ChatSim, ChatStats, ProjectStats, RunningChatSim, SpaceStats};
pub use graph::{GraphSim, RunningSim};
pub use running::{Running, Simulator};
pub use stats::{KeyStats, Limit, SimStats, TimelineBucket};
pub use telegram::{RunningTelegramSim, TelegramSim, TelegramStats};

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, also after a handler panicked while holding it: what it counted is
/// still worth reporting.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
