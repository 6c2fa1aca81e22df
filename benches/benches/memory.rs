//! Memory per key of the in-memory store, measured with a counting global allocator.
//!
//! # Concurrency state
//!
//! For [`MemoryStore`], through the [`ConcurrencyStore`] trait, with 100,000 keys:
//!
//! 1. **in flight**: each key holds one permit (`acquire(&key, 1, WaitPolicy::Reject)`);
//!    the live bytes the store added, per key.
//! 2. **idle**: every permit dropped, then [`MemoryStore::evict_idle`] run (a dropped
//!    permit only decrements its key's counter; fresh keys leave the table in sweeps).
//!    What remains is the capacity the hash tables keep (they do not shrink): reported
//!    in total and per key that was held.
//!
//! Both for inline keys (decimal ids, at most 30 bytes) and for heap keys (longer than
//! 30 bytes, behind an `Arc`). Each key is built inside the measured region and the
//! caller's copy dropped right after `acquire`, as an extractor's key is at the end of
//! `call`, so a heap key's allocation is counted once, for the store that keeps it. The
//! permits themselves are kept in a vector allocated before the region: each is
//! `size_of::<MemoryPermit>()` bytes inline in the response body that holds it, shown
//! apart in the table and not counted in the store's bytes.
//!
//! # Quota state
//!
//! For [`MemoryStore`], through the [`QuotaStore`] trait, with 100,000 inline keys, one
//! row per window kind (sliding, fixed, smooth) and one for a set of two sliding
//! windows:
//!
//! 1. **held**: each key admitted once (`admit(&key, &QuotaAsk::new(&set, 1))`, reject
//!    mode); the live bytes the store added, per key. The grants are dropped at once
//!    (they hold no heap memory).
//! 2. **replenished, evicted**: after every window has replenished (a sleep on a
//!    current-thread tokio runtime, built before the region) and
//!    [`MemoryStore::evict_idle`] ran. What remains is again the capacity of the hash
//!    tables, in total and per key that was held.
//!
//! The windows are about a second long, not a few milliseconds: admitting 100,000
//! keys takes tens of milliseconds, and a key whose window has replenished is fresh,
//! so the amortised sweeps of inserts would evict the first keys before the last were
//! admitted. The bench checks that all 100,000 keys are held before it measures.
//!
//! Bytes are the sizes requested from the allocator; the allocator's own overhead
//! (about 8 to 16 bytes per live allocation with glibc) comes on top, hence the column
//! of live allocations. The store's tables are split into shards by the number of
//! CPUs; table capacity grows in powers of two per shard, so bytes per key at another
//! key count, or on another machine, differ.
//!
//! Run: `cargo bench -p tollgate-benches --bench memory`.
#![allow(clippy::print_stdout)] // a report printed to stdout is the point

use std::alloc::System;
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, Stats, StatsAlloc};
use tokio::runtime::Runtime;
use tollgate::key::Key;
use tollgate::quota::{Quota, QuotaSet, WindowState};
use tollgate::store::{
    Admission, ConcurrencyStore, MemoryPermit, MemoryStore, QuotaAsk, QuotaStore, WaitPolicy,
};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const KEYS: usize = 100_000;

/// Live bytes and live allocations added since a region began.
#[derive(Clone, Copy)]
struct Live {
    bytes: isize,
    allocations: isize,
}

impl From<Stats> for Live {
    fn from(s: Stats) -> Self {
        Live {
            bytes: s.bytes_allocated as isize - s.bytes_deallocated as isize,
            allocations: s.allocations as isize - s.deallocations as isize,
        }
    }
}

struct Measured {
    in_flight: Live,
    idle: Live,
    keys_held_in_flight: usize,
    keys_held_idle: usize,
}

/// Takes one permit for each of `KEYS` keys made by `make_key`, then drops them all.
fn measure(make_key: impl Fn(usize) -> Key) -> Measured {
    let store = MemoryStore::new();
    let mut permits: Vec<MemoryPermit> = Vec::with_capacity(KEYS);
    let region = Region::new(GLOBAL);
    for i in 0..KEYS {
        let key = make_key(i);
        match store.acquire(&key, 1, WaitPolicy::Reject) {
            Admission::Ready(permit) => permits.push(permit),
            other => panic!("key {i} was not admitted: {other:?}"),
        }
    }
    let in_flight = Live::from(region.change());
    let keys_held_in_flight = store.len();
    permits.clear();
    store.evict_idle();
    let idle = Live::from(region.change());
    Measured {
        in_flight,
        idle,
        keys_held_in_flight,
        keys_held_idle: store.len(),
    }
}

fn row(case: &str, keys_held: usize, live: Live) {
    let per_key = live.bytes as f64 / KEYS as f64;
    let allocations_per_key = live.allocations as f64 / KEYS as f64;
    println!(
        "| {case} | {keys_held} | {} | {per_key:.1} | {} ({allocations_per_key:.2}/key) |",
        live.bytes, live.allocations
    );
}

/// Admits each of `KEYS` inline keys once under `quotas`, then lets every window
/// replenish and evicts.
fn measure_quota(runtime: &Runtime, quotas: &QuotaSet) -> Measured {
    let replenished = quotas
        .iter()
        .map(|q| q.window() + q.granularity().unwrap_or_default())
        .max()
        .unwrap_or_default();
    let store = MemoryStore::new();
    let ask = QuotaAsk::new(quotas, 1);
    let region = Region::new(GLOBAL);
    for i in 0..KEYS {
        let key = Key::from(i as u64);
        match store.admit(&key, &ask) {
            Admission::Ready(_grant) => {}
            other => panic!("key {i} was not admitted: {other:?}"),
        }
    }
    let held = Live::from(region.change());
    let keys_held = store.len();
    assert_eq!(
        keys_held, KEYS,
        "no key replenished before the last was admitted"
    );
    let wait = replenished + Duration::from_millis(100);
    runtime.block_on(async { tokio::time::sleep(wait).await });
    store.evict_idle();
    let evicted = Live::from(region.change());
    Measured {
        in_flight: held,
        idle: evicted,
        keys_held_in_flight: keys_held,
        keys_held_idle: store.len(),
    }
}

fn main() {
    concurrency();
    println!();
    quota();
}

fn concurrency() {
    let heap_key = |i: usize| format!("tenant-{i:010}/mailbox-user@contoso.example");
    let heap_key_len = heap_key(0).len();
    let inline = measure(|i| Key::from(i as u64));
    let heap = measure(|i| {
        let text = heap_key(i);
        assert_eq!(text.len(), heap_key_len, "heap keys all have one length");
        Key::new(text).expect("a key shorter than Key::MAX_LEN")
    });

    println!("MemoryStore, {KEYS} keys, one permit each (`WaitPolicy::Reject`, limit 1).");
    println!(
        "Permits are not counted: each is {} bytes inline in the response body holding it.",
        size_of::<MemoryPermit>()
    );
    println!();
    println!("| case | keys held | live bytes | bytes per key | live allocations |");
    println!("|---|---:|---:|---:|---:|");
    row(
        "inline keys (≤ 30 B), in flight",
        inline.keys_held_in_flight,
        inline.in_flight,
    );
    row(
        "inline keys, idle (retained)",
        inline.keys_held_idle,
        inline.idle,
    );
    row(
        &format!("heap keys ({heap_key_len} B), in flight"),
        heap.keys_held_in_flight,
        heap.in_flight,
    );
    row("heap keys, idle (retained)", heap.keys_held_idle, heap.idle);
    println!();
    println!(
        "Idle rows: every permit dropped and `evict_idle` run; what remains is the capacity of \
         the shards' hash tables (one allocation each), which a sweep shrinks to their \
         minimum once they are mostly empty. Their bytes per key are that total over the \
         {KEYS} keys once held."
    );
}

fn quota() {
    const SECOND: Duration = Duration::from_secs(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime with a timer");
    // Sets the timer up before any region counts.
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
    let valid = "a valid quota";
    let cases = [
        (
            "sliding (10 per 1 s)",
            QuotaSet::from(Quota::sliding(10, SECOND).expect(valid)),
        ),
        (
            "fixed (10 per 1 s)",
            QuotaSet::from(Quota::fixed(10, SECOND).expect(valid)),
        ),
        (
            "smooth (10 per 1 s, burst 1)",
            QuotaSet::from(Quota::smooth(10, SECOND).expect(valid)),
        ),
        (
            "two sliding (10 per 0.5 s, 100 per 1 s)",
            QuotaSet::new([
                Quota::sliding(10, SECOND / 2).expect(valid),
                Quota::sliding(100, SECOND).expect(valid),
            ])
            .expect("two quotas"),
        ),
    ];
    let measured: Vec<_> = cases
        .iter()
        .map(|(case, quotas)| (case, measure_quota(&runtime, quotas)))
        .collect();

    println!("MemoryStore quota state, {KEYS} inline keys, each admitted once (reject mode).");
    println!(
        "One window's state (`WindowState`) is {} bytes whatever its kind.",
        size_of::<WindowState>()
    );
    println!();
    println!("| case | keys held | live bytes | bytes per key | live allocations |");
    println!("|---|---:|---:|---:|---:|");
    for (case, m) in &measured {
        row(&format!("{case}, held"), m.keys_held_in_flight, m.in_flight);
        row(
            &format!("{case}, replenished, evicted"),
            m.keys_held_idle,
            m.idle,
        );
    }
    println!();
    println!(
        "Evicted rows: every window had replenished and `evict_idle` ran; what remains \
         is the capacity of the shards' hash tables (one allocation each), shrunk by the \
         sweep to their minimum. Their bytes per key are that total over the {KEYS} keys \
         once held."
    );
}
