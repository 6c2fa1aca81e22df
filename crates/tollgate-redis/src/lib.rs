//! tollgate's limit state in Redis: one set of per-key quotas, concurrency slots and
//! cooldowns for a whole fleet of workers.
//!
//! When several processes share one third-party quota (sync workers hitting the same
//! mailboxes, bot instances behind one IP, apps in one Chat space), in-memory limits
//! multiply the allowed rate by the number of processes. [`RedisStore`] keeps the state
//! in Redis instead, behind the same store traits as tollgate's
//! [`MemoryStore`](tollgate::store::MemoryStore), so the layers take it unchanged:
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate::key::PathSegment;
//! use tollgate::quota::Quota;
//! use tollgate::{ConcurrencyPerKeyLayer, QuotaWindowLayer};
//! use tollgate_redis::{FailurePolicy, RedisStore};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // One store per process; every worker of the fleet points at the same Redis.
//! let store = RedisStore::builder("redis://127.0.0.1:6379/")
//!     .timeout(Duration::from_millis(250))
//!     .failure_policy(FailurePolicy::fallback(4)) // 4 workers share the limits
//!     .build()?;
//! let mailbox = PathSegment::pattern("/v1.0/users/{id}/{*rest}", "id")?;
//! let client = ServiceBuilder::new()
//!     // 10,000 requests per 10 minutes per mailbox, for the whole fleet...
//!     .layer(
//!         QuotaWindowLayer::new(Quota::sliding(10_000, Duration::from_secs(600))?, mailbox.clone())
//!             .store(store.clone()),
//!     )
//!     // ...and at most 4 in flight per mailbox, fleet-wide.
//!     .layer(ConcurrencyPerKeyLayer::new(4, mailbox).store(store))
//!     .service(service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     }));
//! let request = http::Request::get("/v1.0/users/alice/messages").body(String::new())?;
//! client.oneshot(request).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Building a store
//!
//! [`RedisStore::builder`] (a URL), [`RedisStore::from_client`] or
//! [`RedisStore::from_connection_manager`] (share a connection you already have), then
//! [`build`](RedisStoreBuilder::build) inside a Tokio runtime. The connection is a
//! redis-rs [`ConnectionManager`](redis::aio::ConnectionManager): one multiplexed
//! connection per store, reconnected in the background after a failure. Building
//! never waits for Redis: a store built while Redis is down answers by its
//! [`FailurePolicy`] until Redis is reachable. Clones of a store share everything;
//! make one per process and clone it into every layer.
//!
//! # Quotas: one script, one round trip, Redis's clock
//!
//! Each admission is one `EVALSHA` of a Lua script, alone or with other admissions
//! in flight at the same time (see "Batched admissions"). Scripts are loaded once
//! per server; redis-rs loads one again and retries after a `NOSCRIPT` answer, as
//! after a restart or a failover. The script reads Redis `TIME`, so the workers' own
//! clocks never matter,
//! then runs the window maths of [`tollgate::quota`] on the key's state, for every
//! quota of the set, and commits to all of them or to none. The kinds keep their
//! semantics and worst cases exactly:
//!
//! - **sliding**: 32 buckets of `⌈W/32⌉`; a bucket counts until its last instant is `W`
//!   old, so never more than `N` units in any interval of length `W` (stored as the
//!   non-empty buckets only: at most 33 pairs);
//! - **fixed**: never more than `N` per window `[kW, (k+1)W)` aligned on the Unix epoch
//!   (so whole UTC minutes and hours, as providers count), `2N` in the worst unaligned
//!   interval;
//! - **smooth** (GCRA with burst `b`): at most `b + N − 1` in any interval of length `W`,
//!   units spaced `⌈W/N⌉` after the burst.
//!
//! A property test drives the scripts (in a real Redis, on a clock it controls) and
//! `tollgate::quota` through the same random steps, several quotas at once, with
//! refunds: they make the same decisions, name the same refusing quota and the same
//! wait, and report the same usage.
//!
//! Redis's clock has microseconds, so the script works in microseconds: every quota
//! duration (window, bucket, emission interval) is rounded **up** to a whole
//! microsecond, which can only make a quota stricter, by less than a microsecond per
//! window (and caps a smooth rate at one unit per microsecond per key). Numbers stay
//! below 2^53, exact in Lua's doubles for 285 years of Unix time. Per key, time never
//! runs backwards: the script clamps `TIME` to the latest time the key has seen, so a
//! wall clock stepped back by NTP reopens nothing.
//!
//! A refusal carries the exact wait until the same request would be admitted, from
//! Redis's clock at the refusal; measured from its arrival here it is never early. A
//! grant carries its Redis time (`admitted_at`, nanoseconds since the Unix epoch) and
//! cost, which is what a refund needs: the refund script takes the cost out of the
//! bucket or window of that time, or drains a smooth window as tollgate's maths does,
//! so a refund is exact (sliding, fixed; smooth when refunded promptly) and never
//! gives back more than the admission holds. Refunds, like cooldowns, are sent by a
//! spawned task: [`QuotaStore::refund`](tollgate::store::QuotaStore::refund) never
//! blocks. A key's state expires once it no longer matters: at the earliest
//! `forget_after` after its last admission (the longest of `W + g`, `W`, `b·T` over
//! its quotas), or when its cooldown ends if later, and at the latest twice that
//! after the admission that last set its TTL (see below): an idle key costs nothing.
//!
//! With headers on, the same round trip returns each quota's remaining units and reset
//! time, for the `RateLimit` fields.
//!
//! ## What an admission costs
//!
//! An admission is one `EVALSHA` (alone, or in a batch: see below) with three
//! commands inside: `TIME` (once per call), `GET`, and a `SET` when it admits (a
//! refusal writes nothing). With many admissions in
//! flight, Redis's time in the script is what bounds their rate, so the script is
//! written for that path. What a script costs was counted in instructions (callgrind
//! on redis-server 7.0, 3,000 calls over 10,000 keys; timings on a shared two-core VM
//! are too noisy to compare variants, and `INFO commandstats`' `usec_per_call` is wall
//! time, which counts the time the server was descheduled too). An `EVALSHA` of
//! `return 1` with one key costs about 12,000; on top of that:
//!
//! - each `redis.call` costs 4,000 to 7,000: Redis converts the arguments, runs the
//!   command through its full dispatch (lookup, ACL, statistics, latency histogram),
//!   then writes the reply as RESP and parses it back into Lua. `TIME` costs 6,500
//!   (a table of two fresh strings), a `GET` of a state 5,000, the `SET` with its four
//!   arguments 12,000;
//! - each `ARGV` element about 2,000 (Redis builds `KEYS` and `ARGV` afresh on every
//!   call), a returned table about 4,500 for `{1, now}` (against 250 for a number),
//!   each `local function` 400 to 800 (a closure built on every call), each bytecode
//!   instruction about 50, each string the script makes (`sub`, `..`,
//!   `string.format`) 1,000 to 2,500, `string.format('%.0f')` of a time 5,000, and
//!   `tonumber` of a string 1,300 (it parses the string twice).
//!
//! Hence:
//!
//! - one argument besides the key: the request (cost, hold, spacing, report,
//!   `forget_after`) then the quota set, little-endian doubles read by
//!   `struct.unpack` without parsing decimals;
//! - the state is one string of doubles led by the set's 52-bit signature (a hash
//!   made by the caller), read with one `struct.unpack` and written with one
//!   `struct.pack`: 4,000 instructions where MessagePack (the set's bytes inside,
//!   cut out and compared as a string) cost 14,000;
//! - one pass over the quotas computes each wait and builds the new state, which a
//!   refusal throws away: no table per quota or per window;
//! - the answer to an admission without headers is `now` as a bare integer;
//! - the TTL is set only when needed: the state records the end of the TTL the
//!   script last set, which is twice what the state needs; while that end is far
//!   enough, the `SET` is `KEEPTTL`, which saves about 5,000 instructions (a third of
//!   the `SET`). No script shortens a TTL (a refund keeps it, a cooldown only
//!   lengthens it), so the key lives at least until the recorded end. The price: an
//!   idle key's state stays up to twice its `forget_after`;
//! - when the TTL is set, its milliseconds are a string (`redis.call` writes a number
//!   argument with `%.17g`, as dear as the `SET` itself);
//! - the new state's table is made with room for twelve numbers: a Lua table that
//!   outgrows its array part is rehashed, and that cost 6,600 instructions per
//!   admission (54,500 → 47,900 through the store, 32 in flight);
//! - `TIME`'s strings are converted by arithmetic, not `tonumber`.
//!
//! An admission of one sliding quota went from 97,000 instructions to 81,000 (two
//! sliding quotas 117,000 to 97,000, a smooth quota 95,000 to 80,000); a lease from
//! 77,000 to 49,000 (see `lua/lease_acquire.lua`). What remains is mostly fixed: the
//! `EVALSHA` itself, `KEYS` and `ARGV`, `TIME`, `GET` and `SET` come to about 40,000.
//! Tried and not taken:
//!
//! - Redis 7 Functions (`FUNCTION LOAD` once, `FCALL`): they would save only the
//!   closures, and need Redis 7, a load on every node and again after a restart or a
//!   flush, and a fallback for older servers;
//! - skipping `TIME`: a script has no other clock (a key's TTL gives milliseconds and
//!   costs a command too), and the workers' clocks must not matter;
//! - `PSETEX` for `SET … PX` (350 instructions fewer), and building the `usage`
//!   closure only when headers are asked for (1,300 fewer): not worth the tangle.
//!
//! ## Batched admissions
//!
//! What is fixed per call (the `EVALSHA`, `TIME`, the closures) is shared by the
//! admissions that are in flight together: the store sends its quota admissions
//! through one dispatcher task, which keeps at most four calls in flight and sends
//! what queued up meanwhile (up to [`admission_batch`](RedisStoreBuilder::admission_batch),
//! 16 by default) as one call of a batch script. That script runs the admission
//! function once per admission, in queue order, on one reading of `TIME`, each under
//! `pcall`:
//!
//! - each admission is decided alone and atomically, as a call of its own at that
//!   time would be; admissions of one key in one batch see each other in FIFO order;
//! - an error met by one admission (another program's value under its key) is that
//!   admission's failure only; a call that fails or times out gives each of its
//!   admissions the failure;
//! - below four calls in flight nothing waits: a lone admission goes out at once, as
//!   a call of the single-admission script;
//! - an admission is sent once, in one call: at most one round trip per admission;
//! - a batch names keys of many hash slots. A Cluster node (or a proxy in front of a
//!   cluster) refuses it with `CROSSSLOT` before running anything; the store then
//!   sends those admissions again one per call and from then on batches only
//!   admissions of one key. A proxy that refuses such scripts another way needs
//!   `admission_batch(1)`.
//!
//! Counted with callgrind on redis-server 7.0 (admissions through the store, 32 in
//! flight, so batches of up to 16), Redis spends about 48,000 instructions per
//! admission of one sliding quota (46,000 for a smooth quota) against 81,000 for one
//! call per admission. `benches/benches/redis.rs` measures the rates; the figures
//! are in the README.
//!
//! Lease acquisitions (see below) are batched the same way, in batches of their own.
//!
//! ## Wait mode and fairness
//!
//! A request that must wait joins this process's FIFO queue for its key. Only the
//! head talks to Redis: it sleeps until exactly the time its refusal named, then tries
//! again; the others sleep until they become the head. So within one process, waiters
//! of a key are served first come, first served, one round trip per try. Across
//! processes there is no shared queue: each process's head retries at its exact time,
//! and whoever reaches Redis first is admitted, so fleet-wide order is approximate: a
//! request of one process may be admitted before an older one of another process. A
//! known wait beyond `max_wait` fails at once with
//! [`ErrorKind::WaitExceeded`](tollgate::ErrorKind::WaitExceeded); a queue longer than
//! `max_queue` with `QueueFull`.
//!
//! Release spacing holds **fleet-wide**: when a request that waited is admitted, the
//! script records `now + spacing` in the key's state, and no admission of the key, by
//! any worker, happens before it. When a window frees, waiters across the fleet are
//! released one spacing apart, not in a flood.
//!
//! # Concurrency: leases
//!
//! A slot is a **lease** in a sorted set per key, scored by its expiry on Redis's
//! clock. The acquire script drops expired leases when the set looks full (below the
//! limit, the unexpired ones are fewer still), then takes one if fewer than
//! the limit remain. While a [`RedisPermit`] lives, the store's one background task
//! renews all its leases every third of the [lease TTL](RedisStoreBuilder::lease_ttl)
//! (default 10 s) in one pipeline; if the process dies, its leases expire and their
//! slots are reclaimed after at most the TTL. Dropping a permit (completion, error,
//! cancellation, a body dropped) sends the release to the background task, so the drop
//! never blocks; releases are batched into one pipeline. A lease that Redis granted to
//! a call that then timed out or was cancelled is released the same way.
//!
//! Waiting for a slot: a FIFO queue per key in this process, whose head polls Redis
//! with a backoff from 2 ms to [`max_poll_interval`](RedisStoreBuilder::max_poll_interval)
//! (default 50 ms), never sleeping past the moment the key's oldest lease expires;
//! a release by this process wakes the head at once. Releases by other processes are
//! seen at the next poll.
//!
//! Adaptive limits ([`ConcurrencyFeedback`](tollgate::store::ConcurrencyFeedback)) are
//! not applied to leases (only to the local fallback's permits): see [`RedisPermit`].
//!
//! # Cooldowns
//!
//! A per-key cooldown (a `429` with `Retry-After` seen by any worker) is stored in the
//! key's quota state, so every worker's next admission script refuses the key until
//! it ends, with [`ErrorKind::Throttled`](tollgate::ErrorKind::Throttled). The worker
//! that set it obeys it at once (it keeps it locally until Redis has it).
//!
//! The global cooldown ([`cooldown_all`](tollgate::store::QuotaStore::cooldown_all)) is
//! one key, `<prefix>{_global}:cooldown`, in its own slot: on Redis Cluster a script
//! cannot read a key of another slot. So each store reads it every
//! [`global_cooldown_refresh`](RedisStoreBuilder::global_cooldown_refresh) (default
//! 200 ms) in its background task and passes the deadline it knows to every admission
//! script. A global cooldown set by one worker is obeyed by the others within that
//! interval plus one round trip, and by the worker that set it at once.
//!
//! Cooldown ends are given to Redis as "this long from now", read when the request
//! leaves, and to other workers as "this long from now" as Redis reads it: each hop may
//! make a cooldown end up to one request's latency later than asked, never earlier.
//!
//! # Key layout (Redis Cluster)
//!
//! ```text
//! <prefix>{<hex of the key>}:q    quota state: little-endian doubles
//!                                  [sig, lt, cd, nr, ex, n1, ..., n2, ...]
//!                                  (the quota set's signature, latest time,
//!                                  cooldown end, next release, end of the TTL
//!                                  last set, then per quota a count and its
//!                                  window's numbers)
//! <prefix>{<hex of the key>}:c    concurrency leases: sorted set, member = lease id,
//!                                  score = expiry (Redis µs)
//! <prefix>{_global}:cooldown      the global cooldown's end (Redis µs)
//! ```
//!
//! A tollgate key is arbitrary bytes (up to 512), written in hex inside the hash tag,
//! so no byte of it can close the tag or clash with another key; `_global` is not hex.
//! The [prefix](RedisStoreBuilder::prefix) (default `tollgate:`) may not contain `{`
//! or `}`. Every script touches the names of one tollgate key only, declared in
//! `KEYS` and sharing its hash tag, so every call is valid on Redis Cluster; renewals
//! and releases are pipelines of single-key commands. A batch of admissions names
//! several keys, and falls back to one key per call on Cluster (see "Batched
//! admissions").
//! The connection here is a single-endpoint `ConnectionManager` (a standalone Redis,
//! or a proxy in front of a cluster); nothing in the layout or the scripts would change
//! for redis-rs's cluster connection. The behaviour suite runs against a standalone
//! server and against a Redis Cluster node (one node owning every slot, which refuses
//! any command or script whose keys span two slots).
//!
//! # When Redis is unreachable: [`FailurePolicy`]
//!
//! Every call has a bounded [timeout](RedisStoreBuilder::timeout) (default 250 ms,
//! also the connection manager's connect and response timeouts). A call that times
//! out or cannot reach a serving Redis marks Redis down for
//! [`retry_interval`](RedisStoreBuilder::retry_interval)
//! (default 1 s), during which requests get the policy's answer at once; then the next
//! request tries Redis again, while the connection manager reconnects in the
//! background. So a dead Redis costs a request at most one timeout, and admissions go
//! back to Redis as soon as it answers.
//!
//! | policy | while Redis is down | bound |
//! |---|---|---|
//! | [`FailClosed`](FailurePolicy::FailClosed) (default) | every request refused with [`ErrorKind::StoreUnavailable`](tollgate::ErrorKind::StoreUnavailable) (`503`) | never above the limits |
//! | [`FailOpen`](FailurePolicy::FailOpen) | every request admitted | none: only the upstream's own limits |
//! | [`Fallback`](FailurePolicy::Fallback) | limits enforced in this process's memory, divided by the fleet size | the fleet within the limits (`max(N, fleet)`), counted from the failure |
//!
//! Leases held when Redis goes down keep their slots in Redis until they expire. Once
//! Redis answers again, the background task renews them, and puts back any that
//! expired meanwhile or were lost with a restart: a lease stands for a request really
//! in flight, so the count tells the truth again (above the limit for a moment if
//! others took the slot; new acquisitions wait until it is below). Quota state is not
//! rebuilt: a Redis that restarts without persistence forgets the admissions of the
//! current windows (run it with AOF, or replicas and failover, if that matters).
//!
//! # What differs from `MemoryStore`
//!
//! - Every admission is a round trip (tens to hundreds of microseconds on a LAN),
//!   returned as a future ([`Admission::Wait`](tollgate::store::Admission::Wait)) even
//!   when it ends at once; the memory store answers synchronously.
//! - Times are Redis's, in microseconds (durations rounded up); fixed windows align on
//!   the Unix epoch, not on the store's creation.
//! - Queues are per process: FIFO within a process, approximate across the fleet.
//! - Refunds and cooldowns reach Redis in the background, within one round trip; a
//!   global cooldown reaches other workers within the refresh interval.
//! - No adaptive concurrency limit, no `max_keys` (Redis's `maxmemory` is the bound;
//!   every key expires once idle); [`RedisStore::snapshot`] is a round trip.
//! - A quota set's state is keyed by its signature: workers configured with different
//!   quotas for one key restart each other's windows; give every worker the same
//!   quotas.
//!
//! # Tests
//!
//! The crate's tests start their own `redis-server` (from `PATH`) on a free loopback
//! port. Without it they fail and say how to install it (`apt-get install -y
//! redis-server`), unless `TOLLGATE_SKIP_REDIS_TESTS=1` is set.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod batch;
mod concurrency;
mod keys;
mod maintenance;
mod queue;
mod quota;
mod scripts;
mod snapshot;
mod store;

#[cfg(test)]
mod model_tests;
// The test support module (shared with tests/) names the crate.
#[cfg(test)]
extern crate self as tollgate_redis;

pub use concurrency::{RedisAcquire, RedisPermit};
pub use quota::RedisQuotaAcquire;
pub use snapshot::RedisSnapshot;
pub use store::{FailurePolicy, RedisStore, RedisStoreBuilder, StoreFailure};
