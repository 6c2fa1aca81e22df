//! [`RedisStore`], its builder, and what every call to Redis goes through: a bounded
//! timeout and the [`FailurePolicy`].

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, Script, ScriptInvocation, ToRedisArgs, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tollgate::key::KeyId;
use tollgate::store::MemoryStore;
use tollgate::{Error, ErrorKind};

use crate::batch::{self, Batcher, Call};
use crate::keys;
use crate::maintenance::{self, Msg};
use crate::queue::Queues;
use crate::scripts::SCRIPTS;

/// What a [`RedisStore`] does when Redis cannot be reached, answers an error, or does
/// not answer within the store's [`timeout`](RedisStoreBuilder::timeout).
///
/// After a failure that says Redis cannot serve (a timeout, a connection failure, a
/// server loading, busy, read-only or without a master) the store treats Redis as down
/// for [`retry_interval`](RedisStoreBuilder::retry_interval): requests meanwhile get
/// the policy's answer at once, without waiting for another timeout. An error Redis
/// answers for one request only (another program's value of another type under a
/// tollgate key name) gives that request the policy's answer and marks nothing down. The first request
/// after that tries Redis again (the connection manager reconnects in the
/// background), so admissions go back to Redis as soon as it answers: nothing hangs,
/// and no request waits more than one timeout for a dead server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Admit every request: quotas and concurrency are not enforced while Redis is
    /// down (the upstream's own limits still apply). Refunds of these admissions do
    /// nothing; permits hold no slot.
    FailOpen,
    /// Refuse every request with [`ErrorKind::StoreUnavailable`] (a `503` on a
    /// server): never more than the limits, at the price of availability.
    FailClosed,
    /// Enforce the limits in this process's memory (a [`MemoryStore`] owned by the
    /// store), each divided by `fleet_size`: a quota of `N` becomes `⌊N / fleet_size⌋`
    /// (at least 1) per process, a smooth quota's burst likewise, a concurrency limit
    /// of `M` becomes `⌊M / fleet_size⌋` (at least 1). With at most `fleet_size`
    /// processes the fleet then stays within the limits (within
    /// `max(N, fleet_size)`, since each process keeps at least one unit), counting
    /// from the failure: what the fleet admitted through Redis just before is not
    /// known locally. A request costing more than the divided capacity is refused
    /// with [`ErrorKind::CostTooHigh`]. Cooldowns are applied to the local store too.
    Fallback {
        /// How many processes share the limits.
        fleet_size: NonZeroU32,
    },
}

impl FailurePolicy {
    /// [`FailurePolicy::Fallback`] for `fleet_size` processes (0 counts as 1).
    pub fn fallback(fleet_size: u32) -> Self {
        FailurePolicy::Fallback {
            fleet_size: NonZeroU32::new(fleet_size).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// Why a call to Redis failed: the source of a [`ErrorKind::StoreUnavailable`] error.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum StoreFailure {
    /// No answer within the store's timeout.
    Timeout(Duration),
    /// Redis answered an error, or the connection failed.
    Redis(RedisError),
    /// A call failed less than `retry_interval` ago; Redis is not asked again yet.
    Down,
}

impl fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreFailure::Timeout(after) => write!(f, "redis did not answer within {after:?}"),
            StoreFailure::Redis(err) => write!(f, "redis failed: {err}"),
            StoreFailure::Down => f.write_str("redis failed recently; not retried yet"),
        }
    }
}

impl std::error::Error for StoreFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreFailure::Redis(err) => Some(err),
            _ => None,
        }
    }
}

enum Connection {
    Url(String),
    Client(redis::Client),
    Manager(ConnectionManager),
}

/// Builds a [`RedisStore`]; from [`RedisStore::builder`] or
/// [`RedisStore::from_connection_manager`].
#[must_use]
pub struct RedisStoreBuilder {
    connection: Connection,
    prefix: String,
    timeout: Duration,
    retry_interval: Duration,
    lease_ttl: Duration,
    global_refresh: Duration,
    max_poll: Duration,
    policy: FailurePolicy,
    batch: usize,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("retry_interval", &self.retry_interval)
            .field("lease_ttl", &self.lease_ttl)
            .field("global_refresh", &self.global_refresh)
            .field("max_poll", &self.max_poll)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    fn new(connection: Connection) -> Self {
        RedisStoreBuilder {
            connection,
            prefix: String::from("tollgate:"),
            timeout: Duration::from_millis(250),
            retry_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(10),
            global_refresh: Duration::from_millis(200),
            max_poll: Duration::from_millis(50),
            policy: FailurePolicy::FailClosed,
            batch: 16,
        }
    }

    /// Prepended to every Redis key name (default `tollgate:`), to share a database
    /// with other data or keep separate fleets apart.
    ///
    /// # Panics
    ///
    /// If `prefix` contains `{` or `}`: it would change the keys' Cluster hash tag.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        assert!(
            keys::valid_prefix(&prefix),
            "a RedisStore prefix must not contain `{{` or `}}` (they would change the Cluster hash tag): {prefix:?}"
        );
        self.prefix = prefix;
        self
    }

    /// The longest any call to Redis may take (default 250 ms): connecting, a script,
    /// a refund, a renewal. Past it the call counts as failed and the
    /// [`failure_policy`](Self::failure_policy) applies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a failed call, how long Redis is treated as down (default 1 s): requests
    /// get the failure policy's answer at once instead of each waiting for a timeout.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// How long a concurrency lease lives without renewal (default 10 s): the time
    /// after which a slot held by a process that died is reclaimed. Held leases are
    /// renewed every third of it by one background task per store.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(3));
        self
    }

    /// How often the store reads the global cooldown set by other workers (default
    /// 200 ms): a `cooldown_all` by one worker is obeyed by the others within this
    /// interval (and at once by the worker that set it).
    pub fn global_cooldown_refresh(mut self, interval: Duration) -> Self {
        self.global_refresh = interval.max(Duration::from_millis(1));
        self
    }

    /// The longest a waiting concurrency request sleeps between two tries (default
    /// 50 ms). Tries back off from 2 ms up to this, and never sleep past the moment the
    /// oldest lease of the key expires; a slot released by this process wakes its
    /// waiter at once.
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.max_poll = interval.max(Duration::from_millis(1));
        self
    }

    /// What to do when Redis is unreachable (default [`FailurePolicy::FailClosed`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The most quota admissions, or lease acquisitions, sent in one call (default
    /// 16; 1 sends each alone).
    ///
    /// Those queued while four earlier calls are in flight go out together, as one
    /// `EVALSHA` that decides each of them alone; below four calls in flight nothing
    /// waits. With many admissions in flight this cuts Redis's CPU time per admission
    /// by about 40 %.
    /// After a `CROSSSLOT` answer (Redis Cluster, or a proxy in front of one) batches
    /// hold admissions of one key only. See the crate docs, "Batched admissions".
    pub fn admission_batch(mut self, max: usize) -> Self {
        self.batch = max.clamp(1, 256);
        self
    }

    /// Builds the store. Connects lazily: building succeeds while Redis is down (its
    /// requests then get the failure policy) and fails only for an invalid URL.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: the store spawns its background task (lease
    /// renewals and releases, global cooldown reads) on the current runtime.
    pub fn build(self) -> Result<RedisStore, RedisError> {
        let conn = match self.connection {
            Connection::Manager(conn) => conn,
            Connection::Url(url) => redis::Client::open(url)?
                .get_connection_manager_lazy(manager_config(self.timeout, self.retry_interval))?,
            Connection::Client(client) => client
                .get_connection_manager_lazy(manager_config(self.timeout, self.retry_interval))?,
        };
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = mpsc::unbounded_channel();
        let queues = Arc::new(Queues::default());
        let origin = Instant::now();
        let global = Arc::new(AtomicU64::new(0));
        let global_key = keys::global_key(&self.prefix);
        let nonce = nonce();
        // Hash the scripts now rather than on the first request.
        LazyLock::force(&SCRIPTS);
        handle.spawn(maintenance::run(maintenance::Task {
            conn: conn.clone(),
            rx,
            queues: Arc::clone(&queues),
            global: Arc::clone(&global),
            global_key: global_key.clone(),
            origin,
            timeout: self.timeout,
            lease_ttl: self.lease_ttl,
            global_refresh: self.global_refresh,
            nonce,
        }));
        let batch = self.batch;
        Ok(RedisStore {
            shared: Arc::new_cyclic(|weak| Shared {
                batcher: (batch > 1).then(|| Batcher::start(weak.clone(), batch)),
                conn,
                prefix: self.prefix,
                global_key,
                timeout: self.timeout,
                retry_interval: self.retry_interval,
                lease_ttl: self.lease_ttl,
                max_poll: self.max_poll,
                policy: self.policy,
                fallback: MemoryStore::new(),
                origin,
                down_until: AtomicU64::new(0),
                global,
                cooldowns: Mutex::new(HashMap::new()),
                queues,
                tx,
                handle,
                next_lease: AtomicU64::new(0),
                nonce,
            }),
        })
    }
}

fn manager_config(timeout: Duration, retry_interval: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(retry_interval.max(Duration::from_millis(20)))
        .set_number_of_retries(4)
}

/// A number that tells this store's leases from every other process's.
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Per-key quotas, concurrency leases and cooldowns kept in Redis, shared by every
/// process that uses the same server (and [prefix](RedisStoreBuilder::prefix)).
///
/// Implements [`QuotaStore`](tollgate::store::QuotaStore) and
/// [`ConcurrencyStore`](tollgate::store::ConcurrencyStore): give it to
/// `QuotaWindowLayer::store` and `ConcurrencyPerKeyLayer::store`. Cloning is cheap
/// and clones share one connection and one background task. See the [crate
/// docs](crate) for the key layout, the scripts and the failure policies.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) conn: ConnectionManager,
    pub(crate) prefix: String,
    pub(crate) global_key: Vec<u8>,
    pub(crate) timeout: Duration,
    retry_interval: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) max_poll: Duration,
    pub(crate) policy: FailurePolicy,
    pub(crate) fallback: MemoryStore,
    /// The store's local clock: microseconds since this instant.
    origin: Instant,
    /// Redis is treated as down until then (local µs).
    down_until: AtomicU64,
    /// The global cooldown as this process knows it (local µs).
    pub(crate) global: Arc<AtomicU64>,
    /// Per-key cooldowns set by this process, obeyed locally before Redis has them.
    cooldowns: Mutex<HashMap<Vec<u8>, Instant>>,
    pub(crate) queues: Arc<Queues>,
    pub(crate) tx: mpsc::UnboundedSender<Msg>,
    pub(crate) handle: tokio::runtime::Handle,
    next_lease: AtomicU64,
    nonce: u64,
    /// Where quota admissions go out in batches; `None` for `admission_batch(1)`.
    batcher: Option<Batcher>,
}

impl RedisStore {
    /// A builder for a store on the Redis server at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Connection::Url(url.into()))
    }

    /// A builder for a store on `client`'s server.
    pub fn from_client(client: redis::Client) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Connection::Client(client))
    }

    /// A builder for a store sharing an existing connection manager (its own
    /// timeouts and reconnection settings apply underneath the store's
    /// [`timeout`](RedisStoreBuilder::timeout)).
    pub fn from_connection_manager(conn: ConnectionManager) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Connection::Manager(conn))
    }

    /// Asks Redis for a `PONG`, within the store's timeout.
    pub async fn ping(&self) -> Result<(), Error> {
        let mut conn = self.shared.conn.clone();
        let ping = redis::cmd("PING");
        let reply: Result<String, StoreFailure> = self
            .shared
            .bounded(async move { ping.query_async(&mut conn).await })
            .await;
        reply
            .map(|_| ())
            .map_err(|f| Error::new(ErrorKind::StoreUnavailable).with_source(f))
    }

    /// The connection the store uses (a cheap clone shares it), for callers that want
    /// to talk to the same Redis, such as a benchmark's baseline.
    pub fn connection_manager(&self) -> &ConnectionManager {
        &self.shared.conn
    }

    /// The prefix of the store's Redis key names.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The failure policy in force.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.shared.policy
    }

    /// The in-memory store used by [`FailurePolicy::Fallback`] while Redis is down,
    /// for snapshots and tests.
    pub fn fallback_store(&self) -> &MemoryStore {
        &self.shared.fallback
    }

    /// Whether Redis is being used now: false for [`retry_interval`] after a failed
    /// call.
    ///
    /// [`retry_interval`]: RedisStoreBuilder::retry_interval
    pub fn is_available(&self) -> bool {
        self.shared.available()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.shared.prefix)
            .field("policy", &self.shared.policy)
            .field("available", &self.shared.available())
            .finish_non_exhaustive()
    }
}

/// Whether `err` says Redis cannot serve requests now (as opposed to an error answered
/// for one request): connection failures, and servers loading, busy, read-only or
/// without a master.
fn unavailable(err: &RedisError) -> bool {
    use redis::{ErrorKind as Kind, ServerErrorKind as Server};
    match err.kind() {
        Kind::Io | Kind::ClusterConnectionNotFound | Kind::AuthenticationFailed => true,
        Kind::Server(
            Server::BusyLoading
            | Server::TryAgain
            | Server::ClusterDown
            | Server::MasterDown
            | Server::ReadOnly,
        ) => true,
        Kind::Extension => err.code() == Some("BUSY"),
        _ => err.is_unrecoverable_error(),
    }
}

/// `d` in whole microseconds, rounded up, saturating.
pub(crate) fn micros_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX)
}

impl Shared {
    /// `at` on the store's local clock, in microseconds.
    pub(crate) fn local(&self, at: Instant) -> u64 {
        micros_up(at.saturating_duration_since(self.origin))
    }

    pub(crate) fn available(&self) -> bool {
        self.local(Instant::now()) >= self.down_until.load(Ordering::Relaxed)
    }

    fn failed(&self, failure: &StoreFailure) {
        let until = self.local(Instant::now() + self.retry_interval);
        let before = self.down_until.fetch_max(until, Ordering::Relaxed);
        if before < self.local(Instant::now()) {
            tracing::warn!(target: "tollgate::redis", error = %failure, retry_in = ?self.retry_interval, policy = ?self.policy, "redis unavailable");
        }
    }

    /// Runs one call to Redis within the timeout; a failure marks Redis as down.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreFailure> {
        let failure = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                if self.down_until.load(Ordering::Relaxed) != 0
                    && self.down_until.swap(0, Ordering::Relaxed) != 0
                {
                    tracing::info!(target: "tollgate::redis", "redis available again");
                }
                return Ok(value);
            }
            Ok(Err(err)) if !unavailable(&err) => {
                // Redis is up and answered this request with an error (a key of another
                // type under our name, say): this request gets the failure policy, the
                // others keep using Redis.
                tracing::warn!(target: "tollgate::redis", error = %err, "redis refused a call");
                return Err(StoreFailure::Redis(err));
            }
            Ok(Err(err)) => StoreFailure::Redis(err),
            Err(_) => StoreFailure::Timeout(self.timeout),
        };
        self.failed(&failure);
        Err(failure)
    }

    /// Runs `script` on one key, within the timeout.
    pub(crate) async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        key: &[u8],
        args: impl ToRedisArgs,
    ) -> Result<T, StoreFailure> {
        let mut invocation = script.key(key);
        invocation.arg(args);
        self.invoke(&invocation).await
    }

    /// Runs a prepared script invocation, within the timeout.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreFailure> {
        let mut conn = self.conn.clone();
        self.bounded(invocation.invoke_async(&mut conn)).await
    }

    /// Runs `call` (an admission or a lease) for the key `name`: in a batch with
    /// others when batching is on (see `batch.rs`), else alone.
    pub(crate) async fn call(&self, name: &Arc<[u8]>, call: Call) -> Result<Value, StoreFailure> {
        batch::run(self, self.batcher.as_ref(), name, call).await
    }

    /// The error a request gets under [`FailurePolicy::FailClosed`].
    pub(crate) fn unavailable(key: KeyId, failure: StoreFailure) -> Error {
        Error::new(ErrorKind::StoreUnavailable)
            .with_key(key)
            .with_source(failure)
    }

    /// How long nothing may be admitted for `key` (its Redis quota name) as this
    /// process knows it: the global cooldown, and cooldowns it set itself that Redis
    /// may not have yet. Microseconds from now.
    pub(crate) fn hold(&self, name: &[u8]) -> u64 {
        let now = Instant::now();
        let global = self
            .global
            .load(Ordering::Relaxed)
            .saturating_sub(self.local(now));
        let mut cooldowns = self
            .cooldowns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let own = match cooldowns.get(name) {
            Some(&until) if until > now => micros_up(until - now),
            Some(_) => {
                cooldowns.remove(name);
                0
            }
            None => 0,
        };
        global.max(own)
    }

    pub(crate) fn remember_cooldown(&self, name: &[u8], until: Instant) {
        let now = Instant::now();
        let mut cooldowns = self
            .cooldowns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cooldowns.len() >= 4096 {
            cooldowns.retain(|_, until| *until > now);
        }
        let entry = cooldowns.entry(name.to_vec()).or_insert(until);
        *entry = (*entry).max(until);
    }

    pub(crate) fn remember_global(&self, until: Instant) {
        self.global.fetch_max(self.local(until), Ordering::Relaxed);
    }

    /// A lease id unique in this store.
    pub(crate) fn lease_id(&self) -> u64 {
        self.next_lease.fetch_add(1, Ordering::Relaxed)
    }

    /// The Redis member naming lease `id` of this store.
    pub(crate) fn lease_member(&self, id: u64) -> String {
        maintenance::member(self.nonce, id)
    }
}
