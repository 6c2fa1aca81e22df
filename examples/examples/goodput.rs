//! The goodput comparison: the three client strategies against the Graph, Telegram and
//! Google Chat simulators, all in one run, judged by the servers' own counts.
//!
//! Every (scenario, strategy) pair gets a fresh simulator of `tollgate-sim` in process
//! and the same workload, one pair after the other in the same process, so the
//! figures are comparable. The strategies are those of `mailbox_sync`, with the
//! clients of the scenario examples (shared through the `tollgate_examples` library):
//!
//! - `tollgate`: the full stack configured with the API's limits (per-key quotas,
//!   Graph's concurrency cap, the API's classifier preset, `RetryAfterBackoff`);
//! - `retry-only`: `RetryAfterBackoff` and its classifier, no limits;
//! - `naive`: no limits, 4 tries with exponential backoff (100 ms · 2^n) ignoring
//!   `Retry-After` and `retry_after`, as common clients do.
//!
//! The scenarios, each with more demand than its quota allows:
//!
//! - **Graph** (the `mailbox_sync` job): 8 mailboxes of 4,000 messages, paged 25 at
//!   a time by 8 workers per mailbox; the simulator allows 40 requests per sliding 2 s
//!   and 4 in flight per mailbox (Graph's 10,000 per 10 minutes, window shrunk), so
//!   160 requests/s in all.
//! - **Telegram** (the `telegram_broadcast` client): 45 private chats, 5 messages
//!   each, every chat sent in order by its own task; 1 message per second per chat
//!   and 30 per second per bot (real time: the Bot API's `retry_after` is in whole
//!   seconds), so 30 requests/s. Flood waits are on as in `telegram_broadcast` (a chat
//!   answered `429` 3 times in a row gets 4310 s): a message handed back with
//!   `RetryLater` is counted **rescheduled**, neither delivered nor lost, and the run
//!   does not wait for it; its time is excluded from the completion time. There is no
//!   careless pre-flood here: whatever flood waits appear, the strategy earned.
//! - **Chat** (the `chat_space_writes` client): 4 spaces, 20 message writes each by 2
//!   writers per space; per space 6 writes per sliding 2 s and per project 24 per 2 s
//!   (Chat's 60 per minute per space, minute shrunk to 2 s, project quota four
//!   spaces' worth), so both quotas bind at once: 12 writes/s.
//!
//! Columns of the table:
//!
//! - `items`: messages to sync (Graph) or to send/write (Telegram, Chat);
//! - `delivered`: distinct messages received (Graph) or answered as delivered;
//! - `failed`: messages the client reported failed after its retries (for Graph, the
//!   messages of the failed pages);
//! - `rescheduled`: messages handed back for later (Telegram flood waits);
//! - `lost`: items neither delivered, nor reported failed, nor rescheduled, plus any
//!   delivery the server does not confirm: it must be 0 for every strategy (failing
//!   is allowed, losing track is not);
//! - `requests`, `server 429`, `429 %`: what the simulator received and how many it
//!   answered `429`, counted on its own side, retries included;
//! - `goodput`: successful requests (the simulator's count of requests it served) per
//!   second of completion time, over the rate the simulator allows (the binding quota:
//!   160/s, 30/s, 12/s). This is `mailbox_sync`'s `goodput_ratio`. A client that
//!   bursts into an empty window can exceed 1 by up to one window's worth;
//! - `time`: completion time, from the first request to the last item delivered or
//!   given up.
//!
//! The targets of the `tollgate` strategy are 0 lost, at most 0.5 % of requests
//! answered `429`, and goodput of at least 0.95 in every scenario; the exit code is 1
//! (and the misses are printed) if one is missed, or if any strategy lost an item.
//! The other strategies' rates are measured, not judged.
//!
//! The chart plots, per scenario, the requests the simulator received per second over
//! the quota's window (trailing, from 100 ms buckets) for each strategy, against the
//! allowed rate.
//!
//! Run it with (about a minute in release mode):
//!
//! ```text
//! cargo run --release -p tollgate-examples --example goodput -- --out docs
//! ```
//!
//! Flags: `--out DIR` writes `DIR/goodput.md` (the table, the command and a reading)
//! and `DIR/goodput.svg` (the chart); without it only the table is printed.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::ProgressBar;
use plotters::prelude::*;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tollgate_examples::strategy::Strategy;
use tollgate_examples::telegram::Delivery;
use tollgate_examples::{chat, graph, telegram};
use tollgate_sim::telegram::TEST_TOKEN;
use tollgate_sim::{ChatSim, GraphSim, TimelineBucket};
use tower::BoxError;

const GRAPH_MAILBOXES: usize = 8;
const GRAPH_MESSAGES: u64 = 4000;
const TELEGRAM_CHATS: usize = 45;
const TELEGRAM_MESSAGES: usize = 5;
const CHAT_SPACES: usize = 4;
const CHAT_WRITES: usize = 20;
const CHAT_WRITERS_PER_SPACE: usize = 2;
/// The simulators' timeline buckets.
const BUCKET: Duration = Duration::from_millis(100);

/// Targets of the `tollgate` strategy.
const MAX_429_PERCENT: f64 = 0.5;
const MIN_GOODPUT: f64 = 0.95;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Graph,
    Telegram,
    Chat,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Graph, Scenario::Telegram, Scenario::Chat];

    fn name(self) -> &'static str {
        match self {
            Scenario::Graph => "Graph",
            Scenario::Telegram => "Telegram",
            Scenario::Chat => "Chat",
        }
    }

    /// Requests per second the simulator allows this workload: its binding quota.
    fn allowed_per_sec(self) -> f64 {
        let rate = |limit: u32, window: Duration| f64::from(limit) / window.as_secs_f64();
        match self {
            Scenario::Graph => GRAPH_MAILBOXES as f64 * rate(graph::QUOTA, graph::WINDOW),
            Scenario::Telegram => rate(telegram::BOT_LIMIT, telegram::BOT_WINDOW)
                .min(TELEGRAM_CHATS as f64 * rate(1, telegram::CHAT_WINDOW)),
            Scenario::Chat => (CHAT_SPACES as f64 * rate(chat::SPACE_WRITES, chat::WINDOW))
                .min(rate(chat::PROJECT_WRITES, chat::WINDOW)),
        }
    }

    /// The window of the binding quota (the chart's averaging window).
    fn window(self) -> Duration {
        match self {
            Scenario::Graph => graph::WINDOW,
            Scenario::Telegram => telegram::BOT_WINDOW,
            Scenario::Chat => chat::WINDOW,
        }
    }

    fn describe(self) -> String {
        match self {
            Scenario::Graph => format!(
                "{GRAPH_MAILBOXES} mailboxes × {GRAPH_MESSAGES} messages, {} per mailbox per {}, {} in flight",
                graph::QUOTA,
                secs(graph::WINDOW),
                graph::CONCURRENCY
            ),
            Scenario::Telegram => format!(
                "{TELEGRAM_CHATS} chats × {TELEGRAM_MESSAGES} messages, 1 per chat per {}, {} per bot per {}",
                secs(telegram::CHAT_WINDOW),
                telegram::BOT_LIMIT,
                secs(telegram::BOT_WINDOW)
            ),
            Scenario::Chat => format!(
                "{CHAT_SPACES} spaces × {CHAT_WRITES} writes, {} per space and {} per project per {}",
                chat::SPACE_WRITES,
                chat::PROJECT_WRITES,
                secs(chat::WINDOW)
            ),
        }
    }

    async fn run(self, strategy: Strategy) -> Result<Run, BoxError> {
        match self {
            Scenario::Graph => run_graph(strategy).await,
            Scenario::Telegram => run_telegram(strategy).await,
            Scenario::Chat => run_chat(strategy).await,
        }
    }
}

/// `2 s`, `0.5 s`.
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// What one (scenario, strategy) run did, by the client's and the server's accounts.
#[derive(Debug)]
struct Run {
    scenario: Scenario,
    strategy: Strategy,
    items: u64,
    delivered: u64,
    failed: u64,
    rescheduled: u64,
    /// Deliveries the client counted that the server does not confirm (or duplicates).
    unconfirmed: u64,
    /// Server side: requests received, served, answered `429`.
    requests: u64,
    served: u64,
    throttled: u64,
    /// Of those, answered `429` for concurrency (Graph's MailboxConcurrency).
    throttled_concurrency: u64,
    elapsed: Duration,
    timeline: Vec<TimelineBucket>,
}

impl Run {
    fn lost(&self) -> u64 {
        self.items
            .saturating_sub(self.delivered + self.failed + self.rescheduled)
            + self.unconfirmed
    }

    fn throttled_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            100.0 * self.throttled as f64 / self.requests as f64
        }
    }

    fn goodput(&self) -> f64 {
        self.served as f64 / self.elapsed.as_secs_f64() / self.scenario.allowed_per_sec()
    }

    /// The targets this run misses: nothing lost, for every strategy (anything else is
    /// a bookkeeping error); the rate targets for the `tollgate` strategy only.
    fn misses(&self) -> Vec<String> {
        let mut misses = Vec::new();
        if self.lost() > 0 {
            misses.push(format!("{} lost (target 0)", self.lost()));
        }
        if self.strategy != Strategy::Tollgate {
            return misses;
        }
        if self.throttled_percent() > MAX_429_PERCENT {
            misses.push(format!(
                "{:.2} % of requests answered 429 (target at most {MAX_429_PERCENT} %)",
                self.throttled_percent()
            ));
        }
        if self.goodput() < MIN_GOODPUT {
            misses.push(format!(
                "goodput {:.3} (target at least {MIN_GOODPUT})",
                self.goodput()
            ));
        }
        misses
    }

    /// Requests received per second over the trailing quota window, at the end of
    /// every timeline bucket.
    fn rate_series(&self) -> Vec<(f64, f64)> {
        let window = self.scenario.window();
        let span = usize::try_from(window.as_nanos() / BUCKET.as_nanos())
            .unwrap_or(1)
            .max(1);
        let mut in_window = 0u64;
        self.timeline
            .iter()
            .enumerate()
            .map(|(i, bucket)| {
                in_window += bucket.requests;
                if i >= span {
                    in_window -= self.timeline[i - span].requests;
                }
                let end = (bucket.start + BUCKET).as_secs_f64();
                (end, in_window as f64 / window.as_secs_f64())
            })
            .collect()
    }
}

async fn run_graph(strategy: Strategy) -> Result<Run, BoxError> {
    let sim = graph::simulator(GRAPH_MAILBOXES, GRAPH_MESSAGES)
        .timeline_bucket(BUCKET)
        .start()
        .await?;
    let client = graph::build_client(strategy, &Arc::new(AtomicU64::new(0)))?;
    let started = Instant::now();
    let mut mailboxes = JoinSet::new();
    for i in 0..GRAPH_MAILBOXES {
        let (client, base) = (client.clone(), sim.base_url().to_owned());
        mailboxes.spawn(graph::sync_mailbox(
            strategy,
            client,
            base,
            GraphSim::mailbox_name(i),
            GRAPH_MESSAGES,
            ProgressBar::hidden(),
            ProgressBar::hidden(),
        ));
    }
    let (mut delivered, mut failed, mut duplicates, mut pages) = (0, 0, 0, 0);
    while let Some(mailbox) = mailboxes.join_next().await {
        let mailbox = mailbox?;
        delivered += mailbox.ids.len() as u64;
        failed += mailbox.failed_messages;
        duplicates += mailbox.duplicates;
        pages += mailbox.ok_pages;
    }
    let elapsed = started.elapsed();
    let stats = sim.shutdown().await;
    Ok(Run {
        scenario: Scenario::Graph,
        strategy,
        items: GRAPH_MAILBOXES as u64 * GRAPH_MESSAGES,
        delivered,
        failed,
        rescheduled: 0,
        // Every page the client read is one the server served, and no message twice.
        unconfirmed: duplicates + pages.saturating_sub(stats.totals.ok),
        requests: stats.totals.requests,
        served: stats.totals.ok,
        throttled: stats.totals.throttled(),
        throttled_concurrency: stats.totals.throttled_concurrency,
        elapsed,
        timeline: stats.timeline,
    })
}

/// What became of one chat's messages.
#[derive(Default)]
struct ChatOutcome {
    delivered: u64,
    failed: u64,
    rescheduled: u64,
}

async fn run_telegram(strategy: Strategy) -> Result<Run, BoxError> {
    let sim = telegram::simulator()
        .timeline_bucket(BUCKET)
        .start()
        .await?;
    let url = sim.send_message_url(TEST_TOKEN);
    let client = telegram::build_client(strategy)?;
    let started = Instant::now();
    let mut chats = JoinSet::new();
    for index in 0..TELEGRAM_CHATS {
        let (client, url) = (client.clone(), url.clone());
        chats.spawn(async move {
            let chat = telegram::chat_id(index);
            let mut outcome = ChatOutcome::default();
            for n in 0..TELEGRAM_MESSAGES {
                let text = format!("goodput {n} to chat {chat}");
                match telegram::send(strategy, client.clone(), &url, chat, &text).await {
                    Delivery::Delivered => outcome.delivered += 1,
                    Delivery::Failed(_) => outcome.failed += 1,
                    // This message and the chat's later ones go back to the caller's
                    // queue, to be sent at the deadline (after this run).
                    Delivery::Rescheduled(_) => {
                        outcome.rescheduled = (TELEGRAM_MESSAGES - n) as u64;
                        break;
                    }
                }
            }
            outcome
        });
    }
    let (mut delivered, mut failed, mut rescheduled) = (0, 0, 0);
    while let Some(chat) = chats.join_next().await {
        let chat = chat?;
        delivered += chat.delivered;
        failed += chat.failed;
        rescheduled += chat.rescheduled;
    }
    let elapsed = started.elapsed();
    let stats = sim.shutdown().await;
    Ok(Run {
        scenario: Scenario::Telegram,
        strategy,
        items: (TELEGRAM_CHATS * TELEGRAM_MESSAGES) as u64,
        delivered,
        failed,
        rescheduled,
        unconfirmed: delivered.saturating_sub(stats.overall.messages_served),
        requests: stats.overall.requests,
        served: stats.overall.ok,
        throttled: stats.overall.throttled(),
        throttled_concurrency: 0,
        elapsed,
        timeline: stats.timeline,
    })
}

async fn run_chat(strategy: Strategy) -> Result<Run, BoxError> {
    let sim = chat::simulator(CHAT_SPACES)
        .timeline_bucket(BUCKET)
        .start()
        .await?;
    let client = chat::build_client(strategy)?;
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for index in 0..CHAT_SPACES {
        let space = ChatSim::space_name(index);
        let url = sim.messages_url(&space);
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..CHAT_WRITERS_PER_SPACE {
            let (client, url, space, next) = (
                client.clone(),
                url.clone(),
                space.clone(),
                Arc::clone(&next),
            );
            writers.spawn(async move {
                let (mut delivered, mut failed) = (0u64, 0u64);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= CHAT_WRITES {
                        return (delivered, failed);
                    }
                    let text = format!("{space} message {n}");
                    match chat::write(strategy, client.clone(), &url, &text).await {
                        Ok(()) => delivered += 1,
                        Err(_) => failed += 1,
                    }
                }
            });
        }
    }
    let (mut delivered, mut failed) = (0, 0);
    while let Some(writer) = writers.join_next().await {
        let (d, f) = writer?;
        delivered += d;
        failed += f;
    }
    let elapsed = started.elapsed();
    let stats = sim.shutdown().await;
    let written: u64 = stats
        .per_space
        .values()
        .map(|s| s.writes.messages_served)
        .sum();
    let (requests, served, throttled) = stats.per_project.values().fold((0, 0, 0), |acc, p| {
        let (w, r) = (&p.message_writes, &p.message_reads);
        (
            acc.0 + w.requests + r.requests,
            acc.1 + w.ok + r.ok,
            acc.2 + w.throttled() + r.throttled(),
        )
    });
    Ok(Run {
        scenario: Scenario::Chat,
        strategy,
        items: (CHAT_SPACES * CHAT_WRITES) as u64,
        delivered,
        failed,
        rescheduled: 0,
        unconfirmed: delivered.saturating_sub(written),
        requests,
        served,
        throttled,
        throttled_concurrency: 0,
        elapsed,
        timeline: stats.timeline,
    })
}

fn table(runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | strategy | items | delivered | failed | rescheduled | lost | requests | server 429 | 429 % | goodput | time (s) |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.3} | {:.2} |",
            r.scenario.name(),
            r.strategy,
            r.items,
            r.delivered,
            r.failed,
            r.rescheduled,
            r.lost(),
            r.requests,
            r.throttled,
            r.throttled_percent(),
            r.goodput(),
            r.elapsed.as_secs_f64(),
        );
    }
    out
}

/// `f` of the strategy's run in each scenario: "a (Graph), b (Telegram), c (Chat)".
fn per_scenario(runs: &[Run], strategy: Strategy, f: impl Fn(&Run) -> String) -> String {
    runs.iter()
        .filter(|r| r.strategy == strategy)
        .map(|r| format!("{} ({})", f(r), r.scenario.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A paragraph reading the figures (written from them, not about them).
fn reading(runs: &[Run]) -> String {
    let percent = |r: &Run| format!("{:.1} %", r.throttled_percent());
    let goodput = |r: &Run| format!("{:.2}", r.goodput());
    let short = |r: &Run| format!("{} of {}", r.failed + r.rescheduled + r.lost(), r.items);
    let tollgate = Strategy::Tollgate;
    let lost: u64 = runs
        .iter()
        .filter(|r| r.strategy == tollgate)
        .map(Run::lost)
        .sum();
    let mut text = format!(
        "In one run against fresh simulators, `tollgate` had {} of its requests answered \
         `429`, lost {lost} items, left {} items failed or rescheduled, and reached a \
         goodput of {}.",
        per_scenario(runs, tollgate, percent),
        per_scenario(runs, tollgate, short),
        per_scenario(runs, tollgate, goodput),
    );
    for strategy in [Strategy::RetryOnly, Strategy::Naive] {
        let _ = write!(
            text,
            " `{strategy}` had {} answered `429`, left {} items failed or rescheduled \
             (lost: {}), goodput {}.",
            per_scenario(runs, strategy, percent),
            per_scenario(runs, strategy, short),
            per_scenario(runs, strategy, |r| r.lost().to_string()),
            per_scenario(runs, strategy, goodput),
        );
    }
    let bursts: Vec<String> = runs
        .iter()
        .filter(|r| r.goodput() > 1.0)
        .map(|r| format!("{} in {}", r.strategy, r.scenario.name()))
        .collect();
    if !bursts.is_empty() {
        let _ = write!(
            text,
            " A goodput above 1 ({}) comes from bursting into the empty windows at the \
             start of a run a few windows long; the items that failed show what the \
             bursts cost.",
            bursts.join(", ")
        );
    }
    text
}

const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
];

fn color(strategy: Strategy) -> RGBColor {
    match strategy {
        Strategy::Tollgate => COLORS[0],
        Strategy::RetryOnly => COLORS[1],
        Strategy::Naive => COLORS[2],
    }
}

fn chart(runs: &[Run], path: &std::path::Path) -> Result<(), BoxError> {
    let root = SVGBackend::new(path, (960, 1080)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Requests per second received by the simulator, per strategy, against the quota",
        ("sans-serif", 20),
    )?;
    let panels = root.split_evenly((Scenario::ALL.len(), 1));
    for (scenario, panel) in Scenario::ALL.into_iter().zip(panels.iter()) {
        let of: Vec<&Run> = runs.iter().filter(|r| r.scenario == scenario).collect();
        let series: Vec<(Strategy, Vec<(f64, f64)>)> =
            of.iter().map(|r| (r.strategy, r.rate_series())).collect();
        let allowed = scenario.allowed_per_sec();
        let x_max = series
            .iter()
            .filter_map(|(_, s)| s.last().map(|p| p.0))
            .fold(1.0, f64::max);
        let y_max = series
            .iter()
            .flat_map(|(_, s)| s.iter().map(|p| p.1))
            .fold(allowed * 1.25, f64::max)
            // Room for the legend above the highest line.
            * 1.3;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{}: {}", scenario.name(), scenario.describe()),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the start")
            .y_desc(format!(
                "requests received/s (trailing {})",
                secs(scenario.window())
            ))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        // The quota first and the tollgate line last, so that a client running at the
        // quota is drawn on top of it.
        let quota = RGBColor(60, 60, 60).stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, allowed), (x_max, allowed)],
                8,
                5,
                quota,
            ))?
            .label(format!("quota ({allowed:.0}/s)"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], quota));
        for (strategy, points) in series.iter().rev() {
            let style = color(*strategy).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))?
                .label(strategy.name())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn parse_args() -> Result<Option<PathBuf>, String> {
    let mut out = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(it.next().ok_or("--out needs a value")?)),
            "-h" | "--help" => return Err("usage: goodput [--out DIR]".to_owned()),
            other => return Err(format!("unknown flag {other:?} (try --help)")),
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let out = match parse_args() {
        Ok(out) => out,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };

    let mut runs = Vec::new();
    for scenario in Scenario::ALL {
        for strategy in Strategy::ALL {
            let run = scenario.run(strategy).await?;
            eprintln!(
                "{} / {strategy}: {} requests, {} answered 429 ({} for concurrency), goodput {:.3}, {:.2} s",
                scenario.name(),
                run.requests,
                run.throttled,
                run.throttled_concurrency,
                run.goodput(),
                run.elapsed.as_secs_f64()
            );
            runs.push(run);
        }
    }

    let table = table(&runs);
    println!("\n{table}");
    let misses: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.misses()
                .into_iter()
                .map(move |miss| format!("{} / {}: {miss}", r.scenario.name(), r.strategy))
        })
        .collect();

    if let Some(dir) = out {
        std::fs::create_dir_all(&dir)?;
        let mut md = String::new();
        let _ = writeln!(md, "# Goodput comparison\n");
        let _ = writeln!(
            md,
            "Generated by `cargo run --release -p tollgate-examples --example goodput -- --out {}` \
             (see the top of `examples/examples/goodput.rs` for the scenarios and columns).\n",
            dir.display()
        );
        for scenario in Scenario::ALL {
            let _ = writeln!(
                md,
                "- {}: {}; allowed {:.0} requests/s.",
                scenario.name(),
                scenario.describe(),
                scenario.allowed_per_sec()
            );
        }
        let _ = writeln!(md, "\n{table}\n{}\n", reading(&runs));
        let _ = writeln!(md, "![requests per second per strategy](goodput.svg)");
        std::fs::write(dir.join("goodput.md"), md)?;
        chart(&runs, &dir.join("goodput.svg"))?;
        println!(
            "wrote {} and {}",
            dir.join("goodput.md").display(),
            dir.join("goodput.svg").display()
        );
    }

    if !misses.is_empty() {
        for miss in &misses {
            eprintln!("target missed: {miss}");
        }
        std::process::exit(1);
    }
    Ok(())
}
