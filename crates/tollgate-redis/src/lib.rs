//! Redis store for tollgate.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod concurrency;
mod keys;
mod maintenance;
mod queue;
mod quota;
mod scripts;
mod store;

pub use concurrency::{RedisAcquire, RedisPermit};
pub use quota::RedisQuotaAcquire;
pub use store::{FailurePolicy, RedisStore, RedisStoreBuilder, StoreFailure};
