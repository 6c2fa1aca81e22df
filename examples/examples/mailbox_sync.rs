//! The main job: sync every message of M mailboxes from a Microsoft Graph-like server
//! that throttles like Graph, through the whole tollgate client stack.
//!
//! By default the example starts the Graph simulator of `tollgate-sim` in process:
//! 8 mailboxes of 4,000 messages, pages of `$top=25` (160 pages per mailbox), 20 ms
//! per request, at most 4 requests in flight per mailbox and a quota of 40 requests per
//! sliding 2 s per mailbox. Graph allows 10,000 requests per 10 minutes per mailbox;
//! the simulator keeps the same shape (N per sliding window, counted by the server,
//! `429` + `Retry-After` in whole seconds, rejected requests counted too) with the
//! window shrunk from 600 s to 2 s and the limit scaled with it, so that a run spans a
//! few windows in seconds instead of hours.
//!
//! Every mailbox is paged by 8 workers at once (each takes the next `$skip` offset;
//! the last page's `@odata.nextLink` is followed if the server has more), twice the
//! concurrency Graph allows, so a client without limits goes over both the
//! concurrency limit and the quota. `--strategy` picks the client:
//!
//! - `tollgate` (default): `RetryAfterBackoff` (Graph preset, backoff scaled to the
//!   simulator's time) → `QuotaWindow` (sliding, the simulator's quota, 50 ms of
//!   margin, queued requests released at the default spacing, 45 ms) → `ConcurrencyPerKey` (4)
//!   → `ThrottleClassifier` (Graph preset) → `hyper_util` client, the limits keyed by
//!   mailbox (the client is in `tollgate_examples::graph`, which says why those
//!   figures);
//! - `retry-only`: `RetryAfterBackoff` → `ThrottleClassifier` → client, no limits;
//! - `naive`: 4 tries with exponential backoff (100 ms · 2^n) ignoring `Retry-After`,
//!   no limits, as common clients do.
//!
//! `goodput_ratio` is pages received per second over the rate the simulator allows
//! (mailboxes × 40 / 2 s); it means something only for runs that span several windows
//! (a run shorter than one window is not held back by the quota at all).
//!
//! Pages that still fail are reported as failed; `lost` (messages neither synced nor
//! reported failed) must be 0. The server's own counts (requests, `429`s, peak
//! concurrency, most requests in any window) come from the simulator.
//!
//! Run it with:
//!
//! ```text
//! cargo run --release -p tollgate-examples --example mailbox_sync
//! cargo run --release -p tollgate-examples --example mailbox_sync -- --strategy naive --json
//! ```
//!
//! Flags: `--mailboxes N` (8), `--messages N` per mailbox (4000), `--strategy
//! tollgate|retry-only|naive`, `--json` (the last line of output is one JSON object),
//! `--quiet` (no progress bars), `--target URL` (sync `URL/v1.0/users/mailbox-{i}/messages`
//! on a running server instead of the simulator; no server statistics then).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::time::Instant;
use tollgate_examples::graph::{
    CONCURRENCY, PAGE, QUOTA, WINDOW, build_client, simulator, sync_mailbox,
};
use tollgate_examples::strategy::Strategy;
use tollgate_sim::{GraphSim, SimStats};
use tower::BoxError;

#[derive(Debug)]
struct Args {
    mailboxes: usize,
    messages: u64,
    strategy: Strategy,
    json: bool,
    quiet: bool,
    target: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        mailboxes: 8,
        messages: 4000,
        strategy: Strategy::Tollgate,
        json: false,
        quiet: false,
        target: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--mailboxes" => {
                args.mailboxes = value()?.parse().map_err(|e| format!("--mailboxes: {e}"))?;
            }
            "--messages" => {
                args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?;
            }
            "--strategy" => {
                let name = value()?;
                args.strategy = Strategy::from_name(&name)
                    .ok_or_else(|| format!("unknown strategy {name:?}"))?;
            }
            "--target" => args.target = Some(value()?.trim_end_matches('/').to_owned()),
            "--json" => args.json = true,
            "--quiet" => args.quiet = true,
            "-h" | "--help" => {
                return Err("usage: mailbox_sync [--mailboxes N] [--messages N] \
                     [--strategy tollgate|retry-only|naive] [--json] [--quiet] [--target URL]"
                    .to_owned());
            }
            other => return Err(format!("unknown flag {other:?} (try --help)")),
        }
    }
    if args.mailboxes == 0 {
        return Err("--mailboxes must be at least 1".to_owned());
    }
    Ok(args)
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

    let sim = match &args.target {
        Some(_) => None,
        None => Some(simulator(args.mailboxes, args.messages).start().await?),
    };
    let base = match (&args.target, &sim) {
        (Some(target), _) => target.clone(),
        (None, Some(sim)) => sim.base_url().to_owned(),
        (None, None) => unreachable!("a simulator is started when there is no target"),
    };

    let sent = Arc::new(AtomicU64::new(0));
    let client = build_client(args.strategy, &sent)?;

    let progress = MultiProgress::with_draw_target(if args.json || args.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos:>5}/{len} {msg}")?
        .progress_chars("=> ");
    let total_bar = progress.add(ProgressBar::new(args.messages * args.mailboxes as u64));
    total_bar.set_style(style.clone());
    total_bar.set_prefix("all");

    let started = Instant::now();
    let mut mailboxes = tokio::task::JoinSet::new();
    for i in 0..args.mailboxes {
        let name = GraphSim::mailbox_name(i);
        let bar = progress.add(ProgressBar::new(args.messages));
        bar.set_style(style.clone());
        bar.set_prefix(name.clone());
        let total_bar = total_bar.clone();
        let (client, base) = (client.clone(), base.clone());
        let (strategy, messages) = (args.strategy, args.messages);
        mailboxes.spawn(async move {
            let result = sync_mailbox(
                strategy,
                client,
                base,
                name.clone(),
                messages,
                bar,
                total_bar,
            )
            .await;
            (i, name, result)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = mailboxes.join_next().await {
        results.push(joined?);
    }
    let elapsed = started.elapsed();
    total_bar.finish();
    results.sort_by_key(|(i, _, _)| *i);
    let stats: Option<SimStats> = match sim {
        Some(sim) => Some(sim.shutdown().await),
        None => None,
    };

    let expected = args.messages * args.mailboxes as u64;
    let synced: u64 = results.iter().map(|(_, _, r)| r.ids.len() as u64).sum();
    let failed: u64 = results.iter().map(|(_, _, r)| r.failed_messages).sum();
    let failed_pages: u64 = results.iter().map(|(_, _, r)| r.failed_pages).sum();
    let duplicates: u64 = results.iter().map(|(_, _, r)| r.duplicates).sum();
    let lost = expected.saturating_sub(synced + failed);
    let requests_sent = sent.load(Ordering::Relaxed);
    // Successful requests: pages answered 200.
    let pages_ok: u64 = results.iter().map(|(_, _, r)| r.ok_pages).sum();
    let allowed_per_sec = args.mailboxes as f64 * f64::from(QUOTA) / WINDOW.as_secs_f64();
    let goodput_ratio = pages_ok as f64 / elapsed.as_secs_f64() / allowed_per_sec;

    let mut table = String::new();
    let _ = writeln!(
        table,
        "\nstrategy {}, {} mailboxes x {} messages, pages of {PAGE}, quota {QUOTA} per {:?} and {CONCURRENCY} in flight per mailbox",
        args.strategy.name(),
        args.mailboxes,
        args.messages,
        WINDOW
    );
    let _ = writeln!(
        table,
        "| mailbox | synced | failed pages | duplicates | server requests | server 429 | peak in flight | most in a window |"
    );
    let _ = writeln!(table, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (_, name, r) in &results {
        let server = stats.as_ref().and_then(|s| s.per_mailbox.get(name));
        let cell = |f: fn(&tollgate_sim::KeyStats) -> u64| {
            server.map_or_else(|| "-".to_owned(), |k| f(k).to_string())
        };
        let _ = writeln!(
            table,
            "| {name} | {}/{} | {} | {} | {} | {} | {} | {} |",
            r.ids.len(),
            args.messages,
            r.failed_pages,
            r.duplicates,
            cell(|k| k.requests),
            cell(tollgate_sim::KeyStats::throttled),
            cell(|k| k.peak_concurrency),
            cell(|k| k.max_in_window),
        );
    }
    let _ = writeln!(
        table,
        "\n{synced}/{expected} messages synced, {failed} in {failed_pages} failed pages, {lost} lost, \
         {duplicates} duplicates; {requests_sent} requests sent in {:.2} s; goodput {:.0} % of the allowed {allowed_per_sec:.0} requests/s",
        elapsed.as_secs_f64(),
        goodput_ratio * 100.0
    );
    match &stats {
        Some(s) => {
            let _ = writeln!(
                table,
                "server: {} requests, {} answered 429 ({} quota, {} concurrency), peak {} in flight (limit {}), at most {} in any {:?} (limit {})",
                s.totals.requests,
                s.totals.throttled(),
                s.totals.throttled_quota,
                s.totals.throttled_concurrency,
                s.totals.peak_concurrency,
                s.concurrency_limit,
                s.totals.max_in_window,
                s.window,
                s.limit_in_window
            );
        }
        None => {
            let _ = writeln!(
                table,
                "server: {base} (not the simulator: no server-side statistics)"
            );
        }
    }
    progress.clear()?;
    print!("{table}");

    if args.json {
        let server = stats.as_ref();
        let line = json!({
            "strategy": args.strategy.name(),
            "mailboxes": args.mailboxes,
            "messages_expected": expected,
            "messages_synced": synced,
            "messages_failed": failed,
            "duplicates": duplicates,
            "requests_sent": requests_sent,
            "server_requests": server.map(|s| s.totals.requests),
            "server_429": server.map(|s| s.totals.throttled()),
            "server_peak_concurrency": server.map(|s| s.totals.peak_concurrency),
            "server_max_in_window": server.map(|s| s.totals.max_in_window),
            "limit_in_window": QUOTA,
            "goodput_ratio": (goodput_ratio * 1000.0).round() / 1000.0,
            "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "lost": lost,
        });
        println!("{line}");
    }
    if lost > 0 || duplicates > 0 {
        std::process::exit(1);
    }
    Ok(())
}
