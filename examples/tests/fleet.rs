//! The fleet test: several `fleet_worker` OS processes sync the same mailboxes of the
//! Graph simulator at once, sharing each mailbox's quota and concurrency limit through
//! one `redis-server`; the simulator, counting on its own side, sees no more than the
//! quota in any window and no more than 4 in flight per mailbox, and every request is
//! accounted for. A control runs the same workers with in-memory stores and shows that
//! the simulator does catch a fleet that limits each process on its own.
//!
//! The test starts its own `redis-server` (from `PATH`) on a free loopback port, and the
//! simulator in process on a real port. Without `redis-server` it fails and says how to
//! install it, unless `TOLLGATE_SKIP_REDIS_TESTS=1` is set (CI never sets it).
//!
//! The worker binary is `target/<profile>/examples/fleet_worker`, next to this test's
//! own executable. A plain `cargo test` builds it; when the test runs under cargo, it
//! asks cargo to bring it up to date first (`cargo build --example fleet_worker`, a
//! no-op when it is), so that `cargo test --test fleet` never runs a stale worker.
//!
//! Each test prints what every worker reported and what the simulator counted per
//! mailbox (shown on failure, or with `-- --nocapture`): the figures behind the
//! assertions.
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tollgate_examples::graph::PAGE;
use tollgate_sim::{GraphSim, SimStats};

// The tollgate-redis tests' own launcher: one place for how a test starts its
// `redis-server`, waits for it, stops it, and what it says when the binary is missing.
#[path = "../../crates/tollgate-redis/tests/support/mod.rs"]
mod support;
use support::RedisServer;

/// The simulator's limits per mailbox: `QUOTA` per sliding `WINDOW` (Graph's 10,000
/// per 10 minutes, shrunk as in `mailbox_sync`) and `CONCURRENCY` in flight.
const QUOTA: u32 = 40;
const WINDOW: Duration = Duration::from_secs(2);
const CONCURRENCY: u32 = 4;
/// How long the simulator holds each admitted request: long enough that the fleet's
/// first burst (a window's worth of requests at once) queues for the 4 slots, so the
/// concurrency limit binds as well as the quota (4 slots turn over 40 times a second,
/// twice the quota's steady rate).
const LATENCY: Duration = Duration::from_millis(100);
/// The longest a worker may run before it is killed and the test fails. A run takes a
/// few seconds; this is for a machine under heavy load, and against a hang.
const WORKER_TIMEOUT: Duration = Duration::from_secs(90);

/// The tests of this file run one at a time: each loads both cores with its workers,
/// and the fleet's safety margin is sized for one fleet at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// 4 workers × 25 pages on each of 2 mailboxes: 100 requests per mailbox, 2.5 times
/// the quota, up to 32 at once per mailbox (8 per worker) against a limit of 4. The
/// run spans about three windows: the quota binds, and in the first burst so does the
/// concurrency limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_sharing_redis_stays_within_each_mailbox_quota_and_concurrency() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let fleet = Fleet {
        workers: 4,
        mailboxes: 2,
        pages: 25,
        store: "redis",
    };
    let run = fleet.run(Some(&redis.url())).await;
    let stats = &run.stats;
    let per_mailbox = fleet.workers * fleet.pages;
    assert!(per_mailbox > u64::from(QUOTA), "the quota must bind");

    for name in fleet.mailbox_names() {
        let m = &stats.per_mailbox[&name];
        eprintln!(
            "{name}: {} requests, {} ok, {} answered 429, peak {} in flight, at most {} in any {WINDOW:?}",
            m.requests,
            m.ok,
            m.throttled(),
            m.peak_concurrency,
            m.max_in_window
        );
        assert!(
            m.max_in_window <= u64::from(QUOTA),
            "{name}: the server saw {} requests in one window (quota {QUOTA})",
            m.max_in_window
        );
        assert!(
            m.peak_concurrency <= u64::from(CONCURRENCY),
            "{name}: the server saw {} in flight (limit {CONCURRENCY})",
            m.peak_concurrency
        );
        assert_eq!(m.throttled(), 0, "{name}: the server answered 429");
        assert_eq!(m.ok, per_mailbox, "{name}: every page served once");
    }
    // Every request accounted for, on both sides.
    let asked = run.sum("requests");
    assert_eq!(asked, fleet.workers * fleet.mailboxes * fleet.pages);
    assert_eq!(run.sum("ok") + run.sum("failed"), asked);
    assert_eq!(run.sum("failed"), 0, "no page failed");
    assert_eq!(run.sum("lost"), 0, "no message lost");
    assert_eq!(run.sum("duplicates"), 0);
    assert_eq!(stats.totals.ok, run.sum("ok"), "served = received");
    assert_eq!(stats.totals.requests, run.sum("requests_sent"));
    assert_eq!(stats.totals.throttled(), run.sum("server_429"));
    // The workers really ran at once: each started before any finished.
    let last_start = run.max("started_unix_ms");
    let first_end = run.min("finished_unix_ms");
    assert!(
        last_start < first_end,
        "the workers did not overlap (last start {last_start}, first end {first_end})"
    );
}

/// The control: the same workers, each with its own in-memory store. Every process
/// keeps the limits on its own, so the fleet goes over them at the server: this is
/// what the fleet test would see if the Redis store shared nothing. Kept small: 4
/// workers × 12 pages of one mailbox (48 requests, 16 at once at first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_fleet_with_in_memory_stores_exceeds_the_limits_at_the_server() {
    let _one = ONE_AT_A_TIME.lock().await;
    let fleet = Fleet {
        workers: 4,
        mailboxes: 1,
        pages: 12,
        store: "memory",
    };
    let run = fleet.run(None).await;
    let m = &run.stats.per_mailbox[&GraphSim::mailbox_name(0)];
    eprintln!(
        "in-memory control: {} requests, {} ok, {} answered 429, peak {} in flight, at most {} in any {WINDOW:?}",
        m.requests,
        m.ok,
        m.throttled(),
        m.peak_concurrency,
        m.max_in_window
    );
    assert!(
        m.peak_concurrency > u64::from(CONCURRENCY) || m.max_in_window > u64::from(QUOTA),
        "in-memory stores kept the fleet within the limits: the fleet test could not fail"
    );
    assert!(m.throttled() > 0, "the server throttled the fleet");
    // Still every request accounted for: the stack recovers from the 429s.
    assert_eq!(run.sum("ok") + run.sum("failed"), run.sum("requests"));
    assert_eq!(run.sum("lost"), 0);
}

/// A fleet of `workers` processes, each syncing its own `pages` pages of every one of
/// `mailboxes` mailboxes, through `store`.
struct Fleet {
    workers: u64,
    mailboxes: u64,
    pages: u64,
    store: &'static str,
}

/// What one run produced: the simulator's counts and each worker's JSON line.
struct Run {
    stats: SimStats,
    reports: Vec<Value>,
}

impl Run {
    fn field(&self, name: &str) -> impl Iterator<Item = u64> {
        self.reports.iter().map(move |report| {
            report[name]
                .as_u64()
                .unwrap_or_else(|| panic!("no `{name}` in {report}"))
        })
    }

    fn sum(&self, name: &str) -> u64 {
        self.field(name).sum()
    }

    fn max(&self, name: &str) -> u64 {
        self.field(name).max().unwrap_or(0)
    }

    fn min(&self, name: &str) -> u64 {
        self.field(name).min().unwrap_or(0)
    }
}

impl Fleet {
    fn mailbox_names(&self) -> Vec<String> {
        (0..self.mailboxes as usize)
            .map(GraphSim::mailbox_name)
            .collect()
    }

    /// Starts the simulator, runs every worker at once, waits for all of them (killing
    /// them all after [`WORKER_TIMEOUT`]) and returns what they reported.
    async fn run(&self, redis: Option<&str>) -> Run {
        let binary = worker_binary();
        let sim = GraphSim::new()
            .mailboxes(self.mailboxes as usize)
            .messages_per_mailbox(self.workers * self.pages * PAGE)
            .quota(QUOTA, WINDOW)
            .concurrency(CONCURRENCY)
            .latency(LATENCY)
            .start()
            .await
            .expect("start the Graph simulator");
        // A prefix of its own, so that runs never meet in one Redis.
        let prefix = format!("fleet-test-{}:", std::process::id());
        let mut workers = Vec::new();
        for worker in 0..self.workers {
            let mut command = Command::new(&binary);
            command
                .args(["--target", sim.base_url()])
                .args(["--mailboxes", &self.mailboxes.to_string()])
                .args(["--worker-id", &worker.to_string()])
                .args(["--requests", &self.pages.to_string()])
                .args(["--quota", &QUOTA.to_string()])
                .args(["--window-ms", &WINDOW.as_millis().to_string()])
                .args(["--concurrency", &CONCURRENCY.to_string()])
                .args(["--store", self.store])
                .args(["--prefix", &prefix])
                .arg("--json")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            if let Some(url) = redis {
                command.args(["--redis", url]);
            }
            let child: Child = command
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            workers.push(child);
        }
        // Dropping the set (on a timeout, or a panic) drops the children: they are killed.
        let mut waiting = JoinSet::new();
        for (index, child) in workers.into_iter().enumerate() {
            waiting.spawn(async move { (index, child.wait_with_output().await) });
        }
        let outputs = tokio::time::timeout(WORKER_TIMEOUT, waiting.join_all())
            .await
            .unwrap_or_else(|_| panic!("the workers did not finish within {WORKER_TIMEOUT:?}"));
        let stats = sim.shutdown().await;
        let mut outputs = outputs;
        outputs.sort_by_key(|(index, _)| *index);
        let reports = outputs
            .into_iter()
            .map(|(worker, output)| report(worker, &output.expect("wait for a worker")))
            .collect();
        Run { stats, reports }
    }
}

/// The worker's JSON line, after checking that it succeeded.
fn report(worker: usize, output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "worker {worker} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("worker {worker}: {line}");
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("worker {worker}: last line is not JSON ({e}): {stdout}"))
}

/// `target/<profile>/examples/fleet_worker`, next to this test's executable
/// (`target/<profile>/deps/fleet-<hash>`), brought up to date by cargo when the test
/// runs under cargo.
fn worker_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test's own path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("the test runs from target/<profile>/deps");
            let binary = profile_dir
                .join("examples")
                .join(format!("fleet_worker{}", std::env::consts::EXE_SUFFIX));
            if let Some(cargo) = std::env::var_os("CARGO") {
                build_worker(&cargo, profile_dir);
            }
            assert!(
                binary.is_file(),
                "{} is missing: build it with `cargo build -p tollgate-examples --example fleet_worker`",
                binary.display()
            );
            binary
        })
        .clone()
}

/// `cargo build --example fleet_worker` into the profile directory of this test: a
/// `cargo test --test fleet` does not build examples, and a stale worker would test old
/// code. A no-op when the worker is up to date (as after a plain `cargo test`).
fn build_worker(cargo: &std::ffi::OsStr, profile_dir: &Path) {
    let profile = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .expect("a profile directory");
    let target_dir = profile_dir.parent().expect("a target directory");
    let mut command = std::process::Command::new(cargo);
    command
        .args(["build", "--quiet", "-p", "tollgate-examples"])
        .args(["--example", "fleet_worker"])
        .env("CARGO_TARGET_DIR", target_dir);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let output = command.output().expect("run cargo");
    assert!(
        output.status.success(),
        "cargo build --example fleet_worker failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
