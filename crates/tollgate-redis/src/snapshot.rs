//! [`RedisStore::snapshot`]: a key's state in Redis, for operators and tests.

use std::time::Duration;

use tokio::time::Instant;
use tollgate::Error;
use tollgate::key::Key;
use tollgate::store::{QuotaSet, QuotaUsage};

use crate::keys;
use crate::quota::Params;
use crate::scripts::SCRIPTS;
use crate::store::{RedisStore, Shared};

/// A key's state in Redis at one moment, as every worker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisSnapshot {
    /// Concurrency leases in force (not expired), held by any worker.
    pub in_flight: u32,
    /// When the key's own cooldown ends, if one is pending (the global cooldown is not
    /// included).
    pub cooldown_until: Option<Instant>,
    /// Each quota's usage now, in the order of the set asked about; a fresh key's
    /// when Redis holds no state for the key under this set.
    pub usage: Vec<QuotaUsage>,
}

impl RedisStore {
    /// The state of `key` under `quotas`, read in one round trip without changing it.
    ///
    /// The quota layer keeps a class's state under the key composed with the class
    /// (see `QuotaWindow::cooldown`); pass that key to see it.
    pub async fn snapshot(&self, key: &Key, quotas: &QuotaSet) -> Result<RedisSnapshot, Error> {
        let shared = &self.shared;
        let quota_key = keys::state_key(&shared.prefix, key, b'q');
        let lease_key = keys::state_key(&shared.prefix, key, b'c');
        let params = Params::new(quotas);
        let mut invocation = SCRIPTS.peek.key(&quota_key);
        invocation.key(&lease_key).arg(&params.set[..]);
        let mut conn = shared.conn.clone();
        let reply: Vec<i64> = shared
            .bounded(invocation.invoke_async(&mut conn))
            .await
            .map_err(|failure| Shared::unavailable(key.id(), failure))?;
        let num = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
        let cooldown = num(1);
        Ok(RedisSnapshot {
            in_flight: u32::try_from(num(0)).unwrap_or(u32::MAX),
            cooldown_until: (cooldown > 0)
                .then(|| Instant::now() + Duration::from_micros(cooldown)),
            usage: (0..quotas.len())
                .map(|i| QuotaUsage {
                    remaining: u32::try_from(num(2 + 2 * i)).unwrap_or(u32::MAX),
                    reset_after: Duration::from_micros(num(3 + 2 * i)),
                })
                .collect(),
        })
    }
}
