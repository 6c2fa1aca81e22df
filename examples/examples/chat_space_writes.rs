//! Write messages to (and read them back from) several Google Chat spaces, within the
//! per-space and the per-project quotas at once, reads and writes counted apart.
//!
//! The example starts the Chat simulator of `tollgate-sim` in process. Chat allows per
//! space 900 reads and 60 writes per minute, and per project 3000 message reads and
//! 3000 message writes per minute. The simulator keeps the same shape (sliding windows
//! counted by the server, `429` `RESOURCE_EXHAUSTED` with a `RetryInfo` delay) with the
//! minute shrunk to 2 s: per space 90 reads and 6 writes per 2 s (the real 15 to 1),
//! per project 360 reads and 24 writes per 2 s. The project quotas are four spaces'
//! worth instead of Chat's fifty, so that with 8 spaces the project quota binds as well
//! as the space quota (with Chat's ratio it takes over 50 busy spaces).
//!
//! `--spaces` spaces (8) are written to at once, each by its own task, in order: space
//! 0 is busy (`--hot-writes`, 20 messages), the others get `--writes` (6) each, and
//! every write is followed by a read of the space's messages (`GET ...?pageSize=1000`).
//! A last read of each space checks that every message written is there. The client:
//!
//! `RetryAfterBackoff` (Google preset, its 1 s, 2 s, 4 s, ... backoff scaled down to
//! 100 ms from the simulator's 2 s windows; the server's `RetryInfo` is obeyed as it
//! comes) → `QuotaWindow` per project (a constant key, the one project this client
//! bills to, `.classify(ReadWrite)`, `.quotas_for(..)`: 360 reads or 24 writes per
//! 2 s) → `QuotaWindow` per space (`PathSegment` `/v1/spaces/{space}/messages`, also
//! classed: 90 reads or 6 writes per 2 s) → `ThrottleClassifier` (Google preset) →
//! `hyper_util` client.
//!
//! **Order of the two quota layers**: a layer counts a request when it admits it, the
//! server when it arrives; a request that then waits in the other quota layer's queue
//! reaches the server later than the outer layer counted it, so the outer layer's
//! guarantee holds at admission, not on the wire. Only the innermost layer is exact.
//! The space layer is innermost because the busy space waits longest there; with the
//! project layer innermost instead, the server sees 7 writes to space 0 in one window
//! and answers one `429` (which the retry layer then obeys). Every quota is sliding and widened by 20 ms for the time
//! between our admission and the server's count. Writes carry a `Full<Bytes>` body,
//! which the retry layer can replay; `429`s are retried for any method (the request was
//! not processed).
//!
//! The summary shows each space and the project as the server saw them (requests,
//! `429`s, most requests in any window against the limit); the server's `429` count
//! should be 0. The exit code is 1 if a message was lost (written but not read back, or
//! neither written nor reported failed) or a request failed.
//!
//! Run it with:
//!
//! ```text
//! cargo run --release -p tollgate-examples --example chat_space_writes
//! cargo run --release -p tollgate-examples --example chat_space_writes -- --spaces 4 --writes 10
//! ```
//!
//! Flags: `--spaces N` (8), `--writes N` per space (6), `--hot-writes N` for space 0
//! (20).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashSet;

use bytes::Bytes;
use http_body_util::Full;

use tokio::time::Instant;
use tollgate_examples::chat::{
    PROJECT_READS, PROJECT_WRITES, SPACE_READS, SPACE_WRITES, WINDOW, build_client, read,
    simulator, write,
};
use tollgate_examples::strategy::{Strategy, Svc};
use tollgate_sim::ChatSim;
use tower::BoxError;

/// The strategy of this example: the full tollgate stack.
const STRATEGY: Strategy = Strategy::Tollgate;

struct Args {
    spaces: usize,
    writes: usize,
    hot_writes: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        spaces: 8,
        writes: 6,
        hot_writes: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let mut number = |name: &str| -> Result<usize, String> {
            value()?.parse().map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--spaces" => args.spaces = number("--spaces")?,
            "--writes" => args.writes = number("--writes")?,
            "--hot-writes" => args.hot_writes = number("--hot-writes")?,
            "-h" | "--help" => {
                return Err(
                    "usage: chat_space_writes [--spaces N] [--writes N] [--hot-writes N]"
                        .to_owned(),
                );
            }
            other => return Err(format!("unknown flag {other:?} (try --help)")),
        }
    }
    if args.spaces == 0 {
        return Err("--spaces must be at least 1".to_owned());
    }
    Ok(args)
}

#[derive(Default)]
struct SpaceResult {
    writes_ok: usize,
    reads_ok: usize,
    failed: Vec<String>,
    /// Written (answered 200) but missing from the last read.
    missing: usize,
}

async fn work_space(
    client: Svc<Full<Bytes>>,
    url: String,
    space: String,
    writes: usize,
) -> SpaceResult {
    let mut result = SpaceResult::default();
    let mut written = Vec::new();
    for n in 0..writes {
        let text = format!("{space} message {n}");
        match write(STRATEGY, client.clone(), &url, &text).await {
            Ok(()) => {
                result.writes_ok += 1;
                written.push(text);
            }
            Err(e) => result.failed.push(format!("write {n}: {e}")),
        }
        match read(STRATEGY, client.clone(), &url).await {
            Ok(_) => result.reads_ok += 1,
            Err(e) => result.failed.push(format!("read after write {n}: {e}")),
        }
    }
    match read(STRATEGY, client.clone(), &url).await {
        Ok(texts) => {
            result.reads_ok += 1;
            let seen: HashSet<String> = texts.into_iter().collect();
            result.missing = written.iter().filter(|t| !seen.contains(*t)).count();
        }
        Err(e) => {
            result.failed.push(format!("final read: {e}"));
            result.missing = written.len();
        }
    }
    result
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

    let sim = simulator(args.spaces).start().await?;

    let client = build_client(STRATEGY)?;
    let planned = |index: usize| {
        if index == 0 {
            args.hot_writes
        } else {
            args.writes
        }
    };
    let started = Instant::now();
    let mut spaces = tokio::task::JoinSet::new();
    for index in 0..args.spaces {
        let space = ChatSim::space_name(index);
        let url = sim.messages_url(&space);
        let (client, writes) = (client.clone(), planned(index));
        spaces.spawn(async move {
            let result = work_space(client, url, space.clone(), writes).await;
            (index, space, result)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = spaces.join_next().await {
        results.push(joined?);
    }
    let elapsed = started.elapsed();
    results.sort_by_key(|(index, _, _)| *index);
    let stats = sim.shutdown().await;

    println!(
        "\n{} spaces; per space {SPACE_READS} reads and {SPACE_WRITES} writes per {WINDOW:?}, \
         per project {PROJECT_READS} reads and {PROJECT_WRITES} writes per {WINDOW:?}",
        args.spaces
    );
    println!(
        "| space | writes | reads | failed | missing | server writes | server reads | server 429 | most writes in a window | most reads in a window |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (index, space, r) in &results {
        let (writes, reads) = stats
            .per_space
            .get(space)
            .map(|s| (s.writes, s.reads))
            .unwrap_or_default();
        println!(
            "| {space} | {}/{} | {} | {} | {} | {} | {} | {} | {} / {SPACE_WRITES} | {} / {SPACE_READS} |",
            r.writes_ok,
            planned(*index),
            r.reads_ok,
            r.failed.len(),
            r.missing,
            writes.requests,
            reads.requests,
            writes.throttled() + reads.throttled(),
            writes.max_in_window,
            reads.max_in_window,
        );
    }
    println!(
        "\n| project | server writes | server reads | server 429 | most writes in a window | most reads in a window |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (project, p) in &stats.per_project {
        println!(
            "| {project} | {} | {} | {} | {} / {PROJECT_WRITES} | {} / {PROJECT_READS} |",
            p.message_writes.requests,
            p.message_reads.requests,
            p.message_writes.throttled() + p.message_reads.throttled(),
            p.message_writes.max_in_window,
            p.message_reads.max_in_window,
        );
    }
    for (_, space, r) in &results {
        for failure in &r.failed {
            eprintln!("{space}: {failure}");
        }
    }

    let expected: usize = (0..args.spaces).map(planned).sum();
    let written: usize = results.iter().map(|(_, _, r)| r.writes_ok).sum();
    let failed: usize = results.iter().map(|(_, _, r)| r.failed.len()).sum();
    let missing: usize = results.iter().map(|(_, _, r)| r.missing).sum();
    let write_failures: usize = results
        .iter()
        .map(|(_, _, r)| r.failed.iter().filter(|f| f.starts_with("write")).count())
        .sum();
    let lost = expected.saturating_sub(written + write_failures) + missing;
    let server_429: u64 = stats
        .per_project
        .values()
        .map(|p| p.message_writes.throttled() + p.message_reads.throttled())
        .sum();
    let server_requests: u64 = stats
        .per_project
        .values()
        .map(|p| p.message_writes.requests + p.message_reads.requests)
        .sum();
    println!(
        "\n{written}/{expected} messages written and read back, {failed} failed requests, {lost} lost, \
         in {:.2} s; server: {server_requests} requests, {server_429} answered 429",
        elapsed.as_secs_f64()
    );
    if lost > 0 || failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
