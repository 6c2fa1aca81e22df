//! A sharded key → state table with eviction of fresh entries and a global key bound.
//!
//! Why not `dashmap`: each request hashes its key once and uses that hash both to pick
//! the shard and to probe the shard's table (`hashbrown::HashTable`), and sweeps of
//! evictable entries run per shard, amortised over inserts. dashmap hashes twice and has
//! no per-shard retain without its unstable raw API.
//!
//! Eviction is amortised: when a shard's table reaches `sweep_at` entries, an insert
//! sweeps that shard, then sets `sweep_at` to twice the entries left (at least 64).
//! While a shard is small (under [`RETAIN_IDLE`] entries, 2048), two rules keep a key
//! that keeps coming back from being dropped and re-created (an allocation, and for the
//! concurrency table a new `Arc`) on every visit when it is idle between its requests:
//!
//! - **At most one sweep per shard per [`MIN_SWEEP_INTERVAL`]** (1 s): a shard that
//!   fills up sooner doubles `sweep_at` instead.
//! - **Second chance** (the CLOCK rule): a sweep removes a fresh entry only if nothing
//!   has looked it up since the shard's previous sweep, and clears the mark of the
//!   others.
//!
//! A larger shard is swept eagerly (every fresh entry goes), because a table that keeps
//! every idle key of a large rotation no longer fits the caches, and its lookups cost
//! more than re-creating entries. Measured with `concurrency/per_key_*` (one run each
//! policy): 10,000 keys in rotation took 349 ns per request retained against 393 ns
//! eager; 1,000,000 keys took 721 ns retained against 385 ns eager.
//!
//! So a key used at least once a second in a small shard is never evicted, an idle key
//! goes at the latest at the second sweep after its last use, and a shard holds at
//! most [`RETAIN_IDLE`] idle keys beyond its live ones (about twice its live keys once
//! those are more). Each sweep costs O(entries) once per
//! doubling, and no background task is needed; the clock is read only when a sweep is
//! due, never per request. A sweep that leaves a shard's table less than a quarter full
//! shrinks it, so the memory of a burst of keys is given back once they are idle. When
//! `max_keys` is reached, and when an operator calls `evict_idle`, every shard is swept
//! at once with no second chances before a new key is refused.
//!
//! The shard is picked by hash bits 32 and up (below the top seven, which hashbrown
//! uses as each entry's tag, and above the low bits, which it uses for positions), so
//! the entries of one shard still differ in both.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::time::Instant;

use crate::key::Key;

/// State that can tell when it is indistinguishable from a key never seen before.
pub(crate) trait Fresh {
    /// True when dropping this entry at `now` (the store's clock, in nanoseconds)
    /// changes no future decision.
    fn is_fresh(&self, now: u64) -> bool;
}

pub(crate) struct Slot<V> {
    pub(crate) hash: u64,
    pub(crate) key: Key,
    pub(crate) value: V,
    /// Looked up since the shard's last sweep: survives the next one even if fresh.
    touched: bool,
}

pub(crate) struct Shard<V> {
    map: HashTable<Slot<V>>,
    /// Sweep for fresh entries when `map.len()` reaches this (amortised O(1) per insert).
    sweep_at: usize,
    /// When this shard was last swept (nanoseconds since the table's `origin`).
    swept_at: u64,
}

const MIN_SWEEP: usize = 64;
/// The entries below which a shard retains idle keys (see the module docs).
pub(crate) const RETAIN_IDLE: usize = 2048;
/// The least time between two amortised sweeps of one shard.
pub(crate) const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The lowest hash bit of the shard index (at most 256 shards: bits 32 to 39).
const SHARD_SHIFT: u32 = 32;

pub(crate) struct Table<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    /// `shards.len() - 1`: the shard is `(hash >> SHARD_SHIFT) & mask`.
    mask: usize,
    hasher: foldhash::fast::RandomState,
    max_keys: usize,
    keys: AtomicUsize,
    /// The clock of the sweep intervals.
    origin: Instant,
}

/// The key table holds `max_keys` entries and none of them is fresh.
pub(crate) struct Full;

impl<V: Fresh> Table<V> {
    pub(crate) fn new(max_keys: usize) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = (parallelism * 4).next_power_of_two().clamp(4, 256);
        Table {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashTable::new(),
                        sweep_at: MIN_SWEEP,
                        swept_at: 0,
                    })
                })
                .collect(),
            mask: shards - 1,
            hasher: foldhash::fast::RandomState::default(),
            max_keys,
            keys: AtomicUsize::new(0),
            origin: Instant::now(),
        }
    }

    pub(crate) fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key.as_bytes())
    }

    pub(crate) fn lock(&self, hash: u64) -> ShardGuard<'_, V> {
        let index = (hash >> SHARD_SHIFT) as usize & self.mask;
        ShardGuard {
            table: self,
            shard: self.shards[index]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Number of keys held.
    pub(crate) fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Removes every fresh entry of every shard (no second chances).
    pub(crate) fn sweep_all(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let Shard { map, sweep_at, .. } = &mut *shard;
            sweep(map, sweep_at, &self.keys, now, false);
        }
    }

    fn try_reserve_key(&self) -> bool {
        self.keys
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_ok()
    }
}

/// Removes the fresh entries of a shard's `map` and resets its `sweep_at`; with `second_chance`,
/// only those not looked up since the previous sweep.
fn sweep<V: Fresh>(
    map: &mut HashTable<Slot<V>>,
    sweep_at: &mut usize,
    keys: &AtomicUsize,
    now: u64,
    second_chance: bool,
) {
    let before = map.len();
    map.retain(|slot| {
        let keep = (second_chance && slot.touched) || !slot.value.is_fresh(now);
        slot.touched = false;
        keep
    });
    let len = map.len();
    keys.fetch_sub(before - len, Ordering::Relaxed);
    *sweep_at = (len * 2).max(MIN_SWEEP);
    // Give memory back after a burst of keys: a table left mostly empty shrinks to
    // twice what it holds, so idle keys cost nothing once swept.
    if map.capacity() > 4 * *sweep_at {
        map.shrink_to(*sweep_at, |slot| slot.hash);
    }
}

pub(crate) struct ShardGuard<'a, V> {
    table: &'a Table<V>,
    shard: MutexGuard<'a, Shard<V>>,
}

impl<V: Fresh> ShardGuard<'_, V> {
    pub(crate) fn get(&mut self, hash: u64, key: &Key) -> Option<&mut V> {
        self.shard
            .map
            .find_mut(hash, |slot| slot.key == *key)
            .map(|slot| &mut slot.value)
    }

    /// The entry for `key`, inserted with `make` if absent. Fails when the table holds
    /// `max_keys` keys; the caller may then [`Table::sweep_all`] (with no shard locked)
    /// and try once more.
    ///
    /// A key already held (the common case) costs one probe, the hash compared before
    /// the key bytes, inline in the caller; only a miss calls out to the sweep check
    /// and the insert.
    #[inline(always)]
    pub(crate) fn get_or_insert(
        &mut self,
        hash: u64,
        key: &Key,
        now: u64,
        make: impl FnOnce() -> V,
    ) -> Result<&mut V, Full> {
        let table = self.table;
        let Shard {
            map,
            sweep_at,
            swept_at,
        } = &mut *self.shard;
        match map.find_entry(hash, |slot| slot.hash == hash && slot.key == *key) {
            Ok(entry) => {
                let slot = entry.into_mut();
                slot.touched = true;
                Ok(&mut slot.value)
            }
            Err(absent) => insert(
                table,
                absent.into_table(),
                (sweep_at, swept_at),
                (hash, key, now),
                make,
            ),
        }
    }
}

/// [`ShardGuard::get_or_insert`] for a key not in `map`: sweeps the shard if due, then
/// inserts the key if the table has room.
#[cold]
#[inline(never)]
fn insert<'m, V: Fresh>(
    table: &Table<V>,
    map: &'m mut HashTable<Slot<V>>,
    (sweep_at, swept_at): (&mut usize, &mut u64),
    (hash, key, now): (u64, &Key, u64),
    make: impl FnOnce() -> V,
) -> Result<&'m mut V, Full> {
    if map.len() >= *sweep_at {
        let retain = map.len() < RETAIN_IDLE;
        let clock = crate::quota::nanos(table.origin.elapsed());
        if !retain || clock.saturating_sub(*swept_at) >= crate::quota::nanos(MIN_SWEEP_INTERVAL) {
            sweep(map, sweep_at, &table.keys, now, retain);
            *swept_at = clock;
        } else {
            *sweep_at = sweep_at.saturating_mul(2).min(RETAIN_IDLE);
        }
    }
    if !table.try_reserve_key() {
        return Err(Full);
    }
    let slot = Slot {
        hash,
        key: key.clone(),
        value: make(),
        touched: true,
    };
    Ok(&mut map
        .insert_unique(hash, slot, |slot| slot.hash)
        .into_mut()
        .value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value whose freshness the test sets.
    struct Idle(bool);

    impl Fresh for Idle {
        fn is_fresh(&self, _now: u64) -> bool {
            self.0
        }
    }

    fn key(i: usize) -> Key {
        Key::from(i as u64)
    }

    /// Looks `i` up (inserting it idle if absent); true if it had to be inserted.
    fn visit(table: &Table<Idle>, i: usize) -> bool {
        let key = key(i);
        let hash = table.hash(&key);
        let mut inserted = false;
        let _ = table.lock(hash).get_or_insert(hash, &key, 0, || {
            inserted = true;
            Idle(true)
        });
        inserted
    }

    fn held(table: &Table<Idle>, i: usize) -> bool {
        let key = key(i);
        let hash = table.hash(&key);
        table.lock(hash).get(hash, &key).is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn keys_that_keep_coming_back_survive_sweeps_and_forgotten_ones_go() {
        const ROTATION: usize = 2000;
        const ONE_SHOTS: usize = 200;
        let table = Table::<Idle>::new(usize::MAX);
        let mut one_shot = 1_000_000;
        // Every 0.5 s, the same 2000 keys (idle between visits) and 200 keys seen
        // once, which keep the shards filling up and being swept (each shard staying
        // under RETAIN_IDLE).
        for round in 0..20 {
            for i in 0..ROTATION {
                let inserted = visit(&table, i);
                assert!(
                    round == 0 || !inserted,
                    "key {i} re-created in round {round}"
                );
            }
            for _ in 0..ONE_SHOTS {
                assert!(visit(&table, one_shot));
                one_shot += 1;
            }
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        // Idle keys are retained, but never more than RETAIN_IDLE per shard.
        assert!(
            table.len() <= RETAIN_IDLE * table.shards.len(),
            "{} held",
            table.len()
        );
        // The rotation stops and a flood of one-shot keys comes: the old keys go, in
        // second-chance sweeps or in the eager ones of shards grown past RETAIN_IDLE.
        for _ in 0..20 {
            for _ in 0..25 * ONE_SHOTS {
                visit(&table, one_shot);
                one_shot += 1;
            }
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        let old_left = (0..ROTATION).filter(|&i| held(&table, i)).count();
        assert_eq!(
            old_left, 0,
            "{old_left} of {ROTATION} forgotten keys still held"
        );
        // An operator's sweep gives no second chance and waits for no interval.
        table.sweep_all(0);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn small_shards_wait_for_the_interval_and_large_ones_sweep_at_once() {
        let table = Table::<Idle>::new(usize::MAX);
        let shards = table.shards.len();
        // Outside a runtime, the clock is real: all of this takes far less than 1 s.
        // Under RETAIN_IDLE per shard, idle keys are kept...
        let small = RETAIN_IDLE / 2 * shards;
        for i in 0..small {
            visit(&table, i);
        }
        assert_eq!(table.len(), small);
        assert!((0..small).all(|i| held(&table, i)));
        // ...beyond it, sweeps come as the shard fills, whatever the interval.
        for i in small..20 * RETAIN_IDLE * shards {
            visit(&table, i);
        }
        assert!(
            table.len() <= 2 * RETAIN_IDLE * shards,
            "{} held after {} idle keys",
            table.len(),
            20 * RETAIN_IDLE * shards
        );
    }

    #[test]
    fn busy_entries_are_never_evicted() {
        let table = Table::<Idle>::new(usize::MAX);
        let busy = key(usize::MAX);
        let hash = table.hash(&busy);
        let _ = table
            .lock(hash)
            .get_or_insert(hash, &busy, 0, || Idle(false));
        for i in 0..10 * MIN_SWEEP * table.shards.len() {
            visit(&table, i);
        }
        table.sweep_all(0);
        assert!(table.lock(hash).get(hash, &busy).is_some());
        assert_eq!(table.len(), 1);
    }
}
