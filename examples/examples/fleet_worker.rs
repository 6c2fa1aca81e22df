//! One worker of a fleet that syncs the same mailboxes of a Graph-like server, all the
//! workers sharing each mailbox's quota and concurrency limit through Redis.
//!
//! Run several of these processes at once against one server and one Redis: each
//! sends its requests through the full client stack of `mailbox_sync`
//! (`RetryAfterBackoff` → `QuotaWindow` → `ConcurrencyPerKey` → `ThrottleClassifier` →
//! `hyper_util` client), both limit layers keyed by mailbox and backed by **one**
//! `tollgate_redis::RedisStore`. The quota (sliding, the server's, with a safety
//! margin) and the concurrency limit (4) therefore hold for the fleet as a whole: N
//! workers together send no more to a mailbox than one would be allowed to. With
//! `--store memory` each worker limits only itself, so N workers send up to N times
//! the quota and N times the concurrency: the failure that the Redis store prevents.
//!
//! Each worker syncs its own slice of every mailbox: worker `k` with `R` pages per
//! mailbox fetches pages `k·R .. (k+1)·R` (`$top=25`, `$skip` = page × 25), with 8
//! requests of its own in flight per mailbox (twice what Graph allows), so the fleet
//! together asks for far more than the limits. The target's mailboxes must hold at
//! least `(k + 1) · R · 25` messages: a page that comes back short counts as lost.
//!
//! ```text
//! # a Graph simulator on :8080 (or any server with /v1.0/users/{mailbox}/messages), then:
//! for k in 0 1 2; do
//!   cargo run --release -p tollgate-examples --example fleet_worker -- \
//!     --redis redis://127.0.0.1:6379/ --target http://127.0.0.1:8080 \
//!     --mailboxes 2 --requests 40 --worker-id $k --json &
//! done; wait
//! ```
//!
//! Flags:
//!
//! - `--redis URL`: the Redis every worker shares (required with `--store redis`);
//! - `--target URL`: the server (required); requests go to
//!   `URL/v1.0/users/{mailbox}/messages`;
//! - `--mailboxes a,b,..` (names) or `--mailboxes N` (`mailbox-0` .. `mailbox-{N-1}`,
//!   the simulator's names; default 1);
//! - `--worker-id K` (default 0): which slice of each mailbox this worker syncs;
//! - `--requests R` pages per mailbox (default 40), or `--messages M` per mailbox
//!   (`⌈M/25⌉` pages);
//! - `--quota N` (40), `--window-ms W` (2000): the server's quota per mailbox, `N` per
//!   sliding `W`; `--concurrency C` (4) per mailbox; `--margin-ms` (100) added to the
//!   window on the client's side, for the time between an admission and the server's
//!   count (see below);
//! - `--store redis|memory` (default `redis`), `--prefix P` (the Redis key prefix,
//!   default `tollgate:`; give separate fleets separate prefixes);
//! - `--json`: the last line of output is one JSON object: `worker`, `store`,
//!   `requests` (pages asked), `requests_sent` (to the HTTP client, retries included),
//!   `ok` (pages received), `server_429` (`429` answers seen), `failed` (pages given up),
//!   `lost` (messages neither received nor in a failed page), `messages_synced`,
//!   `duplicates`, `started_unix_ms`, `finished_unix_ms`, `elapsed_s`.
//!
//! The exit code is 1 if a message is lost or received twice, 2 for bad flags.
//!
//! # The safety margin
//!
//! The quota admits a request when it leaves the quota layer; the server counts it when
//! it arrives. In between, the request may wait for a concurrency slot, which in a
//! fleet is freed by another process and seen at this process's next poll of Redis
//! (every 10 ms at most here). A request admitted late in a window and held up there
//! arrives in the next one; 100 ms of margin (5 % of the 2 s window) covers a queue of
//! a few such waits, and costs at most 5 % of the goodput.
//!
//! # When Redis is unreachable
//!
//! The store fails closed (the default policy): requests are refused with `503`
//! (`StoreUnavailable`) and reported as failed pages, never sent over the limits.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tollgate::store::MemoryStore;
use tollgate_examples::graph::{self, Limits, PAGE, QUOTA, WINDOW};
use tollgate_examples::strategy::Svc;
use tollgate_redis::RedisStore;
use tollgate_sim::GraphSim;
use tower::{BoxError, ServiceBuilder};

/// Requests of this worker in flight per mailbox: twice what Graph allows.
const TASKS_PER_MAILBOX: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreKind {
    Redis,
    Memory,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Redis => "redis",
            StoreKind::Memory => "memory",
        }
    }
}

#[derive(Debug)]
struct Args {
    redis: Option<String>,
    target: String,
    mailboxes: Vec<String>,
    worker: u64,
    pages: u64,
    limits: Limits,
    store: StoreKind,
    prefix: Option<String>,
    json: bool,
}

const USAGE: &str = "usage: fleet_worker --target URL [--redis URL] [--mailboxes a,b,..|N] \
     [--worker-id K] [--requests R | --messages M] [--quota N] [--window-ms W] \
     [--concurrency C] [--margin-ms M] [--store redis|memory] [--prefix P] [--json]";

fn parse_args() -> Result<Args, String> {
    let mut redis = None;
    let mut target = None;
    let mut mailboxes = vec![GraphSim::mailbox_name(0)];
    let mut worker = 0;
    let mut pages = 40;
    let mut limits = Limits {
        quota: QUOTA,
        window: WINDOW,
        margin: Duration::from_millis(100),
        ..Limits::default()
    };
    let mut store = StoreKind::Redis;
    let mut prefix = None;
    let mut json = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        let millis = |v: String| number(v).map(Duration::from_millis);
        let small = |v: String| {
            v.parse::<u32>()
                .map_err(|e| format!("{flag}: {e}"))
                .and_then(|n| match n {
                    0 => Err(format!("{flag} must be at least 1")),
                    n => Ok(n),
                })
        };
        match flag.as_str() {
            "--redis" => redis = Some(value()?),
            "--target" => target = Some(value()?.trim_end_matches('/').to_owned()),
            "--mailboxes" => {
                let list = value()?;
                mailboxes = match list.parse::<usize>() {
                    Ok(count) => (0..count).map(GraphSim::mailbox_name).collect(),
                    Err(_) => list
                        .split(',')
                        .filter(|name| !name.is_empty())
                        .map(str::to_owned)
                        .collect(),
                };
            }
            "--worker-id" => worker = number(value()?)?,
            "--requests" => pages = number(value()?)?,
            "--messages" => pages = number(value()?)?.div_ceil(PAGE),
            "--quota" => limits.quota = small(value()?)?,
            "--window-ms" => limits.window = millis(value()?)?,
            "--concurrency" => limits.concurrency = small(value()?)?,
            "--margin-ms" => limits.margin = millis(value()?)?,
            "--store" => {
                store = match value()?.as_str() {
                    "redis" => StoreKind::Redis,
                    "memory" => StoreKind::Memory,
                    other => return Err(format!("unknown store {other:?}")),
                };
            }
            "--prefix" => prefix = Some(value()?),
            "--json" => json = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown flag {other:?} (try --help)")),
        }
    }
    let target = target.ok_or_else(|| format!("--target is required\n{USAGE}"))?;
    if store == StoreKind::Redis && redis.is_none() {
        return Err(format!("--redis is required with --store redis\n{USAGE}"));
    }
    if mailboxes.is_empty() {
        return Err("--mailboxes names no mailbox".to_owned());
    }
    if limits.window.is_zero() {
        return Err("--window-ms must be at least 1".to_owned());
    }
    Ok(Args {
        redis,
        target,
        mailboxes,
        worker,
        pages,
        limits,
        store,
        prefix,
        json,
    })
}

/// What the worker counts on its own side.
#[derive(Default)]
struct Counters {
    /// Requests handed to the HTTP client, retries included.
    sent: AtomicU64,
    /// `429` answers received (before the retry layer saw them).
    throttled: AtomicU64,
}

/// The client of `--store`, counting what goes out and what comes back under the
/// classifier, so that retries and `429`s are counted as the server sees them.
fn build_client(args: &Args, counters: &Arc<Counters>) -> Result<Svc<Empty<Bytes>>, BoxError> {
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let (out, back) = (Arc::clone(counters), Arc::clone(counters));
    let http = ServiceBuilder::new()
        .map_request(move |request: Request<Empty<Bytes>>| {
            out.sent.fetch_add(1, Ordering::Relaxed);
            request
        })
        .map_response(move |response: Response<_>| {
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                back.throttled.fetch_add(1, Ordering::Relaxed);
            }
            response
        })
        .service(http);
    match (args.store, &args.redis) {
        (StoreKind::Redis, Some(url)) => {
            let mut builder = RedisStore::builder(url.as_str())
                // Slots freed by other workers are seen at the next poll: poll often
                // enough that a freed slot does not stay idle for long next to the
                // server's latency (the default, 50 ms, suits slower upstreams).
                .max_poll_interval(Duration::from_millis(10));
            if let Some(prefix) = &args.prefix {
                builder = builder.prefix(prefix.as_str());
            }
            graph::client(args.limits, builder.build()?, http)
        }
        (StoreKind::Redis, None) => Err("--redis is required with --store redis".into()),
        (StoreKind::Memory, _) => graph::client(args.limits, MemoryStore::new(), http),
    }
}

/// What the worker got from its slice of one mailbox.
#[derive(Default)]
struct Slice {
    ids: HashSet<String>,
    duplicates: u64,
    ok: u64,
    failed: u64,
    /// Messages of the failed pages.
    failed_messages: u64,
}

/// Fetches pages `first .. first + pages` of `mailbox`, `TASKS_PER_MAILBOX` at a time.
async fn sync_slice(
    client: Svc<Empty<Bytes>>,
    base: &str,
    mailbox: &str,
    first: u64,
    pages: u64,
) -> Slice {
    let next = Arc::new(AtomicU64::new(first));
    let slice = Arc::new(Mutex::new(Slice::default()));
    let mut tasks = JoinSet::new();
    for _ in 0..TASKS_PER_MAILBOX {
        let (client, next, slice) = (client.clone(), Arc::clone(&next), Arc::clone(&slice));
        let url = format!("{base}/v1.0/users/{mailbox}/messages");
        tasks.spawn(async move {
            loop {
                let page = next.fetch_add(1, Ordering::Relaxed);
                if page >= first + pages {
                    return;
                }
                let uri = format!("{url}?$top={PAGE}&$skip={}", page * PAGE);
                let result = graph::get_page(client.clone(), &uri).await;
                let mut s = slice.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(page) => {
                        s.ok += 1;
                        for id in page.ids {
                            if !s.ids.insert(id) {
                                s.duplicates += 1;
                            }
                        }
                    }
                    Err(_) => {
                        s.failed += 1;
                        s.failed_messages += PAGE;
                    }
                }
            }
        });
    }
    // A task that panicked leaves its pages unaccounted for: they show up as lost.
    while tasks.join_next().await.is_some() {}
    let mut slice = slice.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *slice)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let counters = Arc::new(Counters::default());
    let client = build_client(&args, &counters)?;

    let started_unix_ms = unix_ms();
    let started = Instant::now();
    let first = args.worker * args.pages;
    let mut mailboxes = JoinSet::new();
    for name in &args.mailboxes {
        let (client, base, name) = (client.clone(), args.target.clone(), name.clone());
        let pages = args.pages;
        mailboxes.spawn(async move {
            let slice = sync_slice(client, &base, &name, first, pages).await;
            (name, slice)
        });
    }
    let mut slices = Vec::new();
    while let Some(joined) = mailboxes.join_next().await {
        slices.push(joined?);
    }
    let elapsed = started.elapsed();
    let finished_unix_ms = unix_ms();
    slices.sort_by(|a, b| a.0.cmp(&b.0));

    let asked = args.pages * args.mailboxes.len() as u64;
    let expected = asked * PAGE;
    let sum = |f: fn(&Slice) -> u64| slices.iter().map(|(_, s)| f(s)).sum::<u64>();
    let ok = sum(|s| s.ok);
    let failed = sum(|s| s.failed);
    let synced = sum(|s| s.ids.len() as u64);
    let duplicates = sum(|s| s.duplicates);
    let lost = expected.saturating_sub(synced + sum(|s| s.failed_messages));
    let sent = counters.sent.load(Ordering::Relaxed);
    let throttled = counters.throttled.load(Ordering::Relaxed);

    println!(
        "worker {} ({} store): pages {}..{} of {}; {ok}/{asked} pages ok, {failed} failed; \
         {synced}/{expected} messages, {lost} lost, {duplicates} duplicates; \
         {sent} requests sent, {throttled} answered 429; {:.2} s",
        args.worker,
        args.store.name(),
        first,
        first + args.pages,
        args.mailboxes.join(","),
        elapsed.as_secs_f64(),
    );
    if args.json {
        let line = json!({
            "worker": args.worker,
            "store": args.store.name(),
            "mailboxes": args.mailboxes,
            "requests": asked,
            "requests_sent": sent,
            "ok": ok,
            "server_429": throttled,
            "failed": failed,
            "lost": lost,
            "messages_synced": synced,
            "duplicates": duplicates,
            "started_unix_ms": started_unix_ms,
            "finished_unix_ms": finished_unix_ms,
            "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        });
        println!("{line}");
    }
    if lost > 0 || duplicates > 0 {
        std::process::exit(1);
    }
    Ok(())
}
