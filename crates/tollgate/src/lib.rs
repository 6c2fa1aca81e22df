//! Tower middleware that keeps HTTP traffic inside rate limits, per key.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
pub mod key;
pub mod store;

pub use error::{Error, ErrorKind};
