//! Memory per key of the in-memory store, measured with a counting global allocator.
//!
//! For [`MemoryStore`], through the [`ConcurrencyStore`] trait, with 100,000 keys:
//!
//! 1. **in flight**: each key holds one permit (`acquire(&key, 1, WaitPolicy::Reject)`);
//!    the live bytes the store added, per key.
//! 2. **idle**: every permit dropped. The store evicts a key as soon as it is fresh, so
//!    what remains is the capacity its hash tables keep (they do not shrink): reported
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
//! Bytes are the sizes requested from the allocator; the allocator's own overhead
//! (about 8 to 16 bytes per live allocation with glibc) comes on top, hence the column
//! of live allocations.
//!
//! Run: `cargo bench -p tollgate-benches --bench memory`.
#![allow(clippy::print_stdout)] // a report printed to stdout is the point

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, Stats, StatsAlloc};
use tollgate::key::Key;
use tollgate::store::{Admission, ConcurrencyStore, MemoryPermit, MemoryStore, WaitPolicy};

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

fn main() {
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
        "Idle rows: every key was evicted (keys held 0); what remains is the capacity of \
         the shards' hash tables (one allocation each), which never shrink. Their bytes \
         per key are that total over the {KEYS} keys once held. Table capacity grows in \
         powers of two per shard, so bytes per key at another key count differ."
    );
}
