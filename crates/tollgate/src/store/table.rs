//! A sharded key → state table with eviction of fresh entries and a global key bound.
//!
//! Why not `dashmap`: each request hashes its key once and uses that hash both to pick
//! the shard and to probe the shard's table (`hashbrown::HashTable`), and sweeps of
//! evictable entries run per shard, amortised over inserts. dashmap hashes twice and has
//! no per-shard retain without its unstable raw API.
//!
//! Eviction is amortised: when a shard's table reaches `sweep_at` entries, an insert
//! first removes every fresh entry of that shard, then sets `sweep_at` to twice the
//! entries left (at least 64). So a shard holds at most about twice its live keys plus
//! 64 idle ones, each sweep costs O(entries) once per doubling, and no background task
//! is needed. A sweep that leaves a shard's table less than a quarter full shrinks it,
//! so the memory of a burst of keys is given back once they are idle. When `max_keys`
//! is reached, every shard is swept before a new key is refused.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

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
}

pub(crate) struct Shard<V> {
    map: HashTable<Slot<V>>,
    /// Sweep for fresh entries when `map.len()` reaches this (amortised O(1) per insert).
    sweep_at: usize,
}

const MIN_SWEEP: usize = 64;

pub(crate) struct Table<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    shift: u32,
    hasher: foldhash::fast::RandomState,
    max_keys: usize,
    keys: AtomicUsize,
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
                    })
                })
                .collect(),
            shift: 64 - shards.trailing_zeros(),
            hasher: foldhash::fast::RandomState::default(),
            max_keys,
            keys: AtomicUsize::new(0),
        }
    }

    pub(crate) fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key.as_bytes())
    }

    pub(crate) fn lock(&self, hash: u64) -> ShardGuard<'_, V> {
        // The top bits pick the shard; hashbrown uses the low bits and the top 7 bits
        // for its own probing, so with a 64-bit hash the overlap is harmless.
        let index = (hash >> self.shift) as usize;
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

    /// Removes every fresh entry of every shard.
    pub(crate) fn sweep_all(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            sweep(&mut shard, &self.keys, now);
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

fn sweep<V: Fresh>(shard: &mut Shard<V>, keys: &AtomicUsize, now: u64) {
    let before = shard.map.len();
    shard.map.retain(|slot| !slot.value.is_fresh(now));
    let len = shard.map.len();
    keys.fetch_sub(before - len, Ordering::Relaxed);
    shard.sweep_at = (len * 2).max(MIN_SWEEP);
    // Give memory back after a burst of keys: a table left mostly empty shrinks to
    // twice what it holds, so idle keys cost nothing once swept.
    if shard.map.capacity() > 4 * shard.sweep_at {
        shard.map.shrink_to(shard.sweep_at, |slot| slot.hash);
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
    pub(crate) fn get_or_insert(
        &mut self,
        hash: u64,
        key: &Key,
        now: u64,
        make: impl FnOnce() -> V,
    ) -> Result<&mut V, Full> {
        let shard = &mut *self.shard;
        if shard.map.len() >= shard.sweep_at {
            sweep(shard, &self.table.keys, now);
        }
        match shard
            .map
            .entry(hash, |slot| slot.key == *key, |slot| slot.hash)
        {
            Entry::Occupied(entry) => Ok(&mut entry.into_mut().value),
            Entry::Vacant(entry) => {
                if !self.table.try_reserve_key() {
                    return Err(Full);
                }
                let slot = Slot {
                    hash,
                    key: key.clone(),
                    value: make(),
                };
                Ok(&mut entry.insert(slot).into_mut().value)
            }
        }
    }
}
