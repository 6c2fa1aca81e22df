//! Admissions per second of `tollgate_redis::RedisStore` from one process over loopback,
//! against a trivial `EVALSHA` through the same connection, in one run.
//!
//! The bench starts its own `redis-server` (from `PATH`, on a free loopback port, no
//! persistence) and one store on it, with the default settings; without the binary
//! it says so and measures nothing (benches are only compiled in CI). Every id runs one
//! operation per iteration on a current-thread tokio runtime, on which the store's
//! background task (releases, renewals, global cooldown reads) runs too, so its work
//! is measured with the operations.
//!
//! | id | one iteration | keys in rotation |
//! |---|---|---|
//! | `evalsha_baseline` | `EVALSHA` of `return 1` with one key, through the store's own `ConnectionManager` (`RedisStore::connection_manager`) | 10,000 |
//! | `quota_sliding` | `QuotaStore::admit` of the layer's default ask (wait mode, cost 1) on `Quota::sliding(1_000_000, 1 h)`, awaited | 10,000 |
//! | `quota_gcra` | the same on `Quota::smooth(3600, 1 h).burst(1_000_000)` | 10,000 |
//! | `quota_multi` | the same on `[sliding(1_000_000, 1 min), sliding(10_000_000, 1 h)]` | 10,000 |
//! | `concurrency` | `ConcurrencyStore::acquire` (limit 1000, wait mode) awaited, then the permit dropped (its release goes out from the background task) | 10,000 |
//!
//! Nothing is ever refused and nothing waits: each key is visited once per 10,000
//! operations, far below its limits. Each id has keys of its own (a key's quota state
//! belongs to one quota set).
//!
//! Two groups run the same ids:
//!
//! - `redis_sequential`: one operation at a time, each awaited before the next: the
//!   latency of one admission (a round trip, the script, the client's work);
//! - `redis_pipelined_32`: 32 tasks share the iterations, so 32 operations are in
//!   flight at once on the one multiplexed connection (redis-rs pipelines them): the
//!   throughput one process gets from one connection. The store, with its default
//!   `admission_batch`, sends the quota admissions that queue up meanwhile together,
//!   several per `EVALSHA` (the baseline stays one call per operation: it is the
//!   price of one round trip); leases go one per call.
//!
//! Criterion reports time per operation and operations per second (`thrpt`). The
//! figure of merit is each id's rate as a fraction of `evalsha_baseline`'s **in the
//! same group**; the target is at least 50 %. Since criterion measures the ids one
//! after the other, a machine whose load changes meanwhile skews that fraction: the
//! bench therefore also prints it measured interleaved (blocks of 500 operations of
//! the id and of the baseline alternating, 10 times), before criterion's runs, with
//! Redis's CPU time per operation (`INFO cpu`) and the client thread's
//! (`/proc/thread-self/schedstat`, the runtime being current-thread).
//!
//! Before measuring, the bench checks what each operation sends to Redis: it runs
//! 1,000 of them one at a time on a store of its own (background reads of the global
//! cooldown and lease renewals pushed out to an hour, so that they do not count) and
//! prints the difference of `INFO commandstats` over them, per operation. One
//! `EVALSHA` per admission is one round trip per admission; a lease adds its `ZREM`,
//! sent off the request's path by the background task.
//!
//! Run: `cargo bench -p tollgate-benches --bench redis` (one group:
//! `... -- redis_sequential`).
// The round-trip check and a missing redis-server are reported on the terminal, next
// to criterion's own output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use redis::Script;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tollgate::key::Key;
use tollgate::quota::{Quota, QuotaSet};
use tollgate::store::{Admission, ConcurrencyStore, QuotaAsk, QuotaStore, WaitPolicy};
use tollgate_redis::RedisStore;

/// Keys in rotation per id.
const KEYS: usize = 10_000;
/// Operations in flight at once in the pipelined group.
const IN_FLIGHT: usize = 32;
/// The concurrency limit per key: never reached.
const LIMIT: u32 = 1000;
/// Operations of the round-trip check, per id.
const CHECKED: u64 = 1000;
/// The interleaved ratios: rounds, and operations per id and round.
const PAIRED_ROUNDS: u32 = 10;
const PAIRED_BLOCK: u64 = 500;
const SECOND: Duration = Duration::from_secs(1);

/// The layer's default ask: wait mode, 1024 deep, at most 30 s, released `W/N` apart.
fn layer_ask(quotas: &QuotaSet) -> QuotaAsk<'_> {
    QuotaAsk::new(quotas, 1).wait(1024, 30 * SECOND, quotas.release_spacing())
}

/// One benchmarked operation, on key `index` of its rotation.
#[derive(Clone)]
enum Op {
    Baseline {
        conn: ConnectionManager,
        script: Arc<Script>,
        names: Arc<[String]>,
    },
    Quota {
        store: RedisStore,
        quotas: QuotaSet,
        keys: Arc<[Key]>,
    },
    Concurrency {
        store: RedisStore,
        keys: Arc<[Key]>,
    },
}

impl Op {
    async fn run(&self, index: usize) {
        match self {
            Op::Baseline {
                conn,
                script,
                names,
            } => {
                let mut conn = conn.clone();
                let one: i64 = script
                    .key(&names[index])
                    .invoke_async(&mut conn)
                    .await
                    .expect("EVALSHA of `return 1`");
                assert_eq!(one, 1);
            }
            Op::Quota {
                store,
                quotas,
                keys,
            } => {
                let grant = match store.admit(&keys[index], &layer_ask(quotas)) {
                    Admission::Ready(grant) => grant,
                    Admission::Wait(wait) => wait.await.expect("nothing is refused"),
                    Admission::Rejected(err) => panic!("refused: {err}"),
                };
                black_box(grant);
            }
            Op::Concurrency { store, keys } => {
                let permit = match store.acquire(&keys[index], LIMIT, WaitPolicy::DEFAULT) {
                    Admission::Ready(permit) => permit,
                    Admission::Wait(wait) => wait.await.expect("a slot is always free"),
                    Admission::Rejected(err) => panic!("refused: {err}"),
                };
                // The release: a message to the store's background task.
                drop(black_box(permit));
            }
        }
    }
}

/// The ids, in order, each with its operation on `store` and keys of its own.
fn ops(store: &RedisStore) -> Vec<(&'static str, Op)> {
    let keys = |id: &str| -> Arc<[Key]> {
        (0..KEYS)
            .map(|i| Key::new(format!("{id}-{i}")).expect("a short key"))
            .collect()
    };
    let sliding = Quota::sliding(1_000_000, 3600 * SECOND).expect("a valid quota");
    let gcra = Quota::smooth(3600, 3600 * SECOND)
        .and_then(|q| q.burst(1_000_000))
        .expect("a valid quota");
    let multi = QuotaSet::new([
        Quota::sliding(1_000_000, 60 * SECOND).expect("a valid quota"),
        Quota::sliding(10_000_000, 3600 * SECOND).expect("a valid quota"),
    ])
    .expect("two quotas");
    let quota = |id, quotas: QuotaSet| Op::Quota {
        store: store.clone(),
        quotas,
        keys: keys(id),
    };
    vec![
        (
            "evalsha_baseline",
            Op::Baseline {
                conn: store.connection_manager().clone(),
                script: Arc::new(Script::new("return 1")),
                names: (0..KEYS).map(|i| format!("bench-baseline:{i}")).collect(),
            },
        ),
        ("quota_sliding", quota("quota_sliding", sliding.into())),
        ("quota_gcra", quota("quota_gcra", gcra.into())),
        ("quota_multi", quota("quota_multi", multi)),
        (
            "concurrency",
            Op::Concurrency {
                store: store.clone(),
                keys: keys("concurrency"),
            },
        ),
    ]
}

/// Runs `iters` operations, `in_flight` at a time, on the keys in rotation from
/// `next`; returns the time taken.
async fn run(op: &Op, next: &Arc<AtomicUsize>, iters: u64, in_flight: usize) -> Duration {
    let start = Instant::now();
    if in_flight == 1 {
        for _ in 0..iters {
            op.run(next.fetch_add(1, Ordering::Relaxed) % KEYS).await;
        }
    } else {
        let mut tasks = JoinSet::new();
        let per_task = iters / in_flight as u64;
        for task in 0..in_flight as u64 {
            // The first `iters % in_flight` tasks take one more.
            let share = per_task + u64::from(task < iters % in_flight as u64);
            let (op, next) = (op.clone(), Arc::clone(next));
            tasks.spawn(async move {
                for _ in 0..share {
                    op.run(next.fetch_add(1, Ordering::Relaxed) % KEYS).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a benchmark task");
        }
    }
    start.elapsed()
}

fn group(
    c: &mut Criterion,
    runtime: &Runtime,
    name: &str,
    ops: &[(&'static str, Op)],
    in_flight: usize,
) {
    let mut group: BenchmarkGroup<'_, WallTime> = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for (id, op) in ops {
        let next = Arc::new(AtomicUsize::new(0));
        group.bench_function(*id, |b| {
            b.to_async(runtime)
                .iter_custom(|iters| run(op, &next, iters, in_flight));
        });
    }
    group.finish();
}

/// Per command name, calls and microseconds spent, from `INFO commandstats` (which
/// counts the commands that scripts run too).
async fn command_stats(conn: &mut MultiplexedConnection) -> BTreeMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    // Lines like `cmdstat_evalsha:calls=1000,usec=52000,usec_per_call=52.00,...`.
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |f: &str| {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            Some((name.to_owned(), (field("calls"), field("usec"))))
        })
        .collect()
}

/// `redis-cli monitor` on the bench's server: every command Redis runs, as it runs it,
/// those sent by clients apart from those run by scripts (`[0 lua]`).
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    /// Starts one and waits until it sees commands; `None` without `redis-cli`.
    async fn start(port: u16, conn: &mut MultiplexedConnection) -> Option<Monitor> {
        let mut child = Command::new(find_on_path("redis-cli")?)
            .args(["-p", &port.to_string(), "monitor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut monitor = Monitor { child, lines };
        monitor.until(conn, "tollgate-bench:ready").await;
        Some(monitor)
    }

    /// Sends `marker` (an `ECHO`) and returns every line seen until it.
    async fn until(&mut self, conn: &mut MultiplexedConnection, marker: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..500 {
            let _: String = redis::cmd("ECHO")
                .arg(marker)
                .query_async(conn)
                .await
                .expect("ECHO");
            tokio::time::sleep(Duration::from_millis(10)).await;
            while let Ok(line) = self.lines.try_recv() {
                if line.contains(marker) {
                    return seen;
                }
                seen.push(line);
            }
        }
        panic!("redis-cli monitor never showed {marker:?}");
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Commands per name in `MONITOR` lines (`<time> [<db> <client>] "CMD" ...`), those
/// sent by clients and those run by scripts.
fn by_sender(lines: &[String]) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let (mut clients, mut scripts) = (BTreeMap::new(), BTreeMap::new());
    for line in lines {
        let Some((sender, command)) = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once("] "))
        else {
            continue;
        };
        let name = command
            .split('"')
            .nth(1)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let counts = if sender.ends_with(" lua") {
            &mut scripts
        } else {
            &mut clients
        };
        *counts.entry(name).or_insert(0) += 1;
    }
    (clients, scripts)
}

fn per_op(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .filter(|(name, _)| name.as_str() != "echo")
        .map(|(name, &n)| format!("{name} {:.2}", n as f64 / CHECKED as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs [`CHECKED`] operations of every id one at a time, on a store without periodic
/// background calls, twice: once reading Redis's time in `EVALSHA` (`INFO
/// commandstats`), once under `redis-cli monitor`, counting the commands the store
/// sent (each one a round trip when nothing is pipelined) and those its scripts ran.
async fn check_round_trips(url: &str, port: u16) {
    let store = RedisStore::builder(url)
        .global_cooldown_refresh(3600 * SECOND)
        .lease_ttl(3 * 3600 * SECOND)
        .build()
        .expect("a valid URL");
    let mut conn = redis::Client::open(url)
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("a connection of the check's own");
    let ops = ops(&store);
    let run_all = |op: &Op| {
        let op = op.clone();
        async move {
            for i in 1..=CHECKED {
                op.run(i as usize % KEYS).await;
            }
            // Releases go out from the background task: let the last one leave.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut server_time = Vec::new();
    for (_, op) in &ops {
        // Loads the scripts (a first `NOSCRIPT`) and lets the store's first
        // background ticks pass.
        op.run(0).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = command_stats(&mut conn).await;
        run_all(op).await;
        let after = command_stats(&mut conn).await;
        let usec = |stats: &BTreeMap<String, (u64, u64)>| {
            stats.get("evalsha").map_or(0, |&(_, usec)| usec)
        };
        server_time.push((usec(&after) - usec(&before)) as f64 / CHECKED as f64);
    }
    println!("What Redis saw per operation ({CHECKED} operations of each id, one at a time):");
    let Some(mut monitor) = Monitor::start(port, &mut conn).await else {
        println!("  (redis-cli is not on PATH: commands not counted)");
        for ((id, _), usec) in ops.iter().zip(&server_time) {
            println!("  {id:<18} {usec:5.1} µs in EVALSHA (wall)");
        }
        return;
    };
    for ((id, op), usec) in ops.iter().zip(&server_time) {
        monitor
            .until(&mut conn, &format!("tollgate-bench:{id}:start"))
            .await;
        run_all(op).await;
        let lines = monitor
            .until(&mut conn, &format!("tollgate-bench:{id}:end"))
            .await;
        let (clients, scripts) = by_sender(&lines);
        println!(
            "  {id:<18} {usec:5.1} µs in EVALSHA (wall); sent {}; scripts ran {}",
            per_op(&clients),
            per_op(&scripts)
        );
    }
}

/// Redis's CPU time so far (`used_cpu_user` + `used_cpu_sys` of `INFO cpu`), in
/// seconds.
async fn server_cpu(conn: &mut MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .expect("INFO cpu");
    info.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            matches!(name, "used_cpu_user" | "used_cpu_sys")
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The CPU time of this thread so far, in seconds, from `/proc/thread-self/schedstat`
/// (Linux; 0 elsewhere): nanoseconds on a CPU. The runtime is a current-thread one
/// on this thread, so this is the client's work: the store, its background task and
/// redis-rs's connection driver.
fn client_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

/// Each id's rate as a fraction of the baseline's, measured interleaved: blocks of
/// [`PAIRED_BLOCK`] operations of the id and of the baseline alternate
/// [`PAIRED_ROUNDS`] times, so that a change in the machine's load (a shared 2-core
/// VM) weighs on both alike. Printed before criterion's own measurements, which run
/// the ids one after the other.
///
/// With each ratio, Redis's CPU time per operation over the same blocks (`INFO cpu`,
/// read between blocks): what bounds the rate once the server is the busier side.
/// `INFO commandstats`' `usec_per_call` (the check above) is wall time inside the
/// command, which also counts the time the server waited for a CPU.
async fn paired_ratios(ops: &[(&'static str, Op)], conn: &mut MultiplexedConnection) {
    let Some(((_, baseline), rest)) = ops.split_first() else {
        return;
    };
    for in_flight in [1, IN_FLIGHT] {
        println!(
            "Rate against evalsha_baseline, {in_flight} in flight (interleaved, \
             {PAIRED_ROUNDS} × {PAIRED_BLOCK} operations each):"
        );
        for (id, op) in rest {
            let next = Arc::new(AtomicUsize::new(0));
            let (mut base, mut own) = (Duration::ZERO, Duration::ZERO);
            let (mut base_cpu, mut own_cpu) = (0.0, 0.0);
            let (mut base_client, mut own_client) = (0.0, 0.0);
            for _ in 0..PAIRED_ROUNDS {
                let before = server_cpu(conn).await;
                let client_before = client_cpu();
                base += run(baseline, &next, PAIRED_BLOCK, in_flight).await;
                let between = server_cpu(conn).await;
                let client_between = client_cpu();
                own += run(op, &next, PAIRED_BLOCK, in_flight).await;
                let after = server_cpu(conn).await;
                let client_after = client_cpu();
                base_cpu += between - before;
                own_cpu += after - between;
                base_client += client_between - client_before;
                own_client += client_after - client_between;
            }
            let ops = f64::from(PAIRED_ROUNDS) * PAIRED_BLOCK as f64;
            println!(
                "  {id:<18} {:>4.0} % ({:.1} µs per operation, baseline {:.1} µs; \
                 server CPU {:.1} µs per operation, baseline {:.1} µs; \
                 client CPU {:.1} µs, baseline {:.1} µs)",
                base.as_secs_f64() / own.as_secs_f64() * 100.0,
                own.as_secs_f64() * 1e6 / ops,
                base.as_secs_f64() * 1e6 / ops,
                own_cpu * 1e6 / ops,
                base_cpu * 1e6 / ops,
                own_client * 1e6 / ops,
                base_client * 1e6 / ops,
            );
        }
    }
}

/// A `redis-server` of the bench's own on a free loopback port, stopped when dropped
/// or when the bench exits.
struct RedisServer {
    child: Child,
    port: u16,
    url: String,
}

impl RedisServer {
    fn start(runtime: &Runtime) -> Option<RedisServer> {
        let binary = find_on_path("redis-server")?;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free loopback port")
                .port();
            // The server lives exactly as long as this process: a shell holds it and
            // waits on a pipe from us; when the bench exits, however it exits (criterion's
            // `--list` ends the process without running destructors; a kill), the pipe
            // closes, `read` returns, and the shell stops the server.
            let child = Command::new("sh")
                .arg("-c")
                .arg(r#""$0" "$@" & server=$!; read line; kill $server; wait $server"#)
                .arg(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            let server = RedisServer {
                child,
                port,
                url: format!("redis://127.0.0.1:{port}/"),
            };
            if runtime.block_on(server.answers_within(10 * SECOND)) {
                return Some(server);
            }
        }
        panic!("redis-server did not answer PING");
    }

    async fn answers_within(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let store = RedisStore::builder(self.url.as_str())
                .build()
                .expect("a valid URL");
            if store.ping().await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Closing the pipe stops the server; the shell exits once it has.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn main() {
    // Criterion's flags first: a bad one exits the process, which must not leave a
    // redis-server behind.
    let mut criterion = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let Some(server) = RedisServer::start(&runtime) else {
        eprintln!(
            "redis-server is not on PATH: the Redis benchmark needs a real Redis \
             (Debian/Ubuntu: `apt-get install -y redis-server`); nothing measured"
        );
        return;
    };
    runtime.block_on(check_round_trips(&server.url, server.port));

    // The store is built inside the runtime: it spawns its background task there.
    let store = runtime.block_on(async {
        RedisStore::builder(server.url.as_str())
            .build()
            .expect("a valid URL")
    });
    let ops = ops(&store);
    runtime.block_on(async {
        let mut conn = redis::Client::open(server.url.as_str())
            .expect("a valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("a connection for INFO");
        paired_ratios(&ops, &mut conn).await;
    });
    group(&mut criterion, &runtime, "redis_sequential", &ops, 1);
    group(
        &mut criterion,
        &runtime,
        &format!("redis_pipelined_{IN_FLIGHT}"),
        &ops,
        IN_FLIGHT,
    );
    criterion.final_summary();
}
