//! Runnable examples of tollgate: see `examples/examples/`.
//!
//! This library holds what several examples share, so that the comparison of
//! strategies (`goodput`) drives exactly the clients and workloads of the scenario
//! examples (`mailbox_sync`, `telegram_broadcast`, `chat_space_writes`):
//!
//! - [`strategy`]: the three client strategies, the boxed client type and the naive
//!   retry loop;
//! - [`graph`]: the mailbox sync against the Graph simulator;
//! - [`telegram`]: the Telegram broadcast client;
//! - [`chat`]: the Google Chat client with per-space and per-project quotas.

pub mod chat;
pub mod graph;
pub mod strategy;
pub mod telegram;
