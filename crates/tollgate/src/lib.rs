//! Tower middleware that keeps HTTP traffic inside rate limits, per key.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod concurrency;
mod error;
pub mod key;
pub mod quota;
pub mod reject;
pub mod store;

pub use concurrency::{ConcurrencyPerKey, ConcurrencyPerKeyLayer};
pub use error::{Error, ErrorKind};
pub use quota::{QuotaWindow, QuotaWindowLayer};

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
