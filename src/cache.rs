//! Sharded, bounded session cache with CLOCK eviction.
//!
//! `get` takes only a shard read lock and sets the entry's CLOCK bit with a relaxed
//! atomic, so concurrent validates never serialise on a write lock. Inserts and
//! removals take the shard write lock. The cache never talks to the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::session::Record;
use crate::token::{IdHash, SessionId};

type IdMap = HashMap<SessionId, Arc<Record>, IdHash>;

/// One shard: the map answers lookups with one probe straight to the record;
/// the ring (a second `Arc` to each record) drives CLOCK eviction. Each record
/// knows its ring position (`Live::slot`), so removal is O(1).
struct Shard {
    map: IdMap,
    ring: Vec<Option<Arc<Record>>>,
    free: Vec<u32>,
    hand: usize,
    capacity: usize,
}

impl Shard {
    fn evict_one(&mut self) -> Option<u32> {
        // Each pass clears at most `len` bits, so two passes always find a victim.
        for _ in 0..self.ring.len() * 2 {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.ring.len();
            if let Some(r) = &self.ring[i] {
                if r.live.referenced.swap(false, Ordering::Relaxed) {
                    continue;
                }
                self.map.remove(&r.id);
                self.ring[i] = None;
                #[allow(clippy::cast_possible_truncation)]
                // capacity per shard < 2^32 (config check)
                return Some(i as u32);
            }
        }
        None
    }
}

/// Counts without a locked read-modify-write: concurrent bumps of one shard's
/// counter may occasionally lose an increment. Statistics only.
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// One shard plus its counters, padded to its own cache lines.
#[repr(align(128))]
struct Slot {
    shard: RwLock<Shard>,
    hits: AtomicU64,
    misses: AtomicU64,
}

pub(crate) struct Cache {
    shards: Box<[Slot]>,
    mask: u64,
    evictions: AtomicU64,
}

/// Cache counters for [`crate::Stats`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CacheStats {
    pub(crate) entries: usize,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) evictions: u64,
}

impl Cache {
    pub(crate) fn new(capacity: usize, shards: usize) -> Self {
        let per = capacity.div_ceil(shards).max(1);
        let shards: Box<[Slot]> = (0..shards)
            .map(|_| Slot {
                shard: RwLock::new(Shard {
                    map: IdMap::default(),
                    ring: Vec::new(),
                    free: Vec::new(),
                    hand: 0,
                    capacity: per,
                }),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            })
            .collect();
        let mask = (shards.len() as u64).saturating_sub(1);
        Self { shards, mask, evictions: AtomicU64::new(0) }
    }

    fn slot(&self, id: &SessionId) -> &Slot {
        // Bytes 8..16 pick the shard; bytes 0..8 feed the shard's map, so the two are independent.
        #[allow(clippy::cast_possible_truncation)] // masked to < shard count
        &self.shards[(id.shard_word() & self.mask) as usize]
    }

    /// Looks up a session; marks it recently used.
    pub(crate) fn get(&self, id: &SessionId) -> Option<Arc<Record>> {
        let slot = self.slot(id);
        let found = {
            let shard = slot.shard.read();
            shard.map.get(id).cloned()
        };
        match &found {
            Some(r) => {
                if !r.live.referenced.load(Ordering::Relaxed) {
                    r.live.referenced.store(true, Ordering::Relaxed);
                }
                bump(&slot.hits);
            }
            None => bump(&slot.misses),
        }
        found
    }

    /// Looks up a session without marking it used or counting (maintenance reads).
    pub(crate) fn peek(&self, id: &SessionId) -> Option<Arc<Record>> {
        self.slot(id).shard.read().map.get(id).cloned()
    }

    /// Inserts or replaces a record. A replacement with an older data version
    /// (a racing writer's stale result) is ignored; the newest `last_seen` is kept.
    pub(crate) fn insert(&self, rec: Arc<Record>) {
        let slot = self.slot(&rec.id);
        let mut shard = slot.shard.write();
        if let Some(old) = shard.map.get(&rec.id) {
            // Keep the newest: a rotation raises the serial (ids are stable), an
            // update the version. A slow caller must never put back an older record.
            if (old.serial, old.version) > (rec.serial, rec.version) {
                return;
            }
            rec.live.last_seen.fetch_max(old.seen(), Ordering::Relaxed);
            rec.live.persisted.fetch_max(old.live.persisted.load(Ordering::Relaxed), Ordering::Relaxed);
            let i = old.live.slot.load(Ordering::Relaxed);
            rec.live.slot.store(i, Ordering::Relaxed);
            shard.ring[i as usize] = Some(Arc::clone(&rec));
            shard.map.insert(rec.id, rec);
            return;
        }
        let idx = if let Some(i) = shard.free.pop() {
            i
        } else if shard.ring.len() < shard.capacity {
            shard.ring.push(None);
            #[allow(clippy::cast_possible_truncation)] // capacity per shard < 2^32
            let i = (shard.ring.len() - 1) as u32;
            i
        } else if let Some(i) = shard.evict_one() {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            i
        } else {
            return;
        };
        rec.live.slot.store(idx, Ordering::Relaxed);
        shard.ring[idx as usize] = Some(Arc::clone(&rec));
        shard.map.insert(rec.id, rec);
    }

    /// Drops a session from the cache (revocation, deletion).
    pub(crate) fn remove(&self, id: &SessionId) {
        let mut shard = self.slot(id).shard.write();
        if let Some(r) = shard.map.remove(id) {
            let i = r.live.slot.load(Ordering::Relaxed);
            shard.ring[i as usize] = None;
            shard.free.push(i);
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let mut s = CacheStats { evictions: self.evictions.load(Ordering::Relaxed), ..CacheStats::default() };
        for slot in &*self.shards {
            s.entries += slot.shard.read().map.len();
            s.hits += slot.hits.load(Ordering::Relaxed);
            s.misses += slot.misses.load(Ordering::Relaxed);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{NewSession, RecordParts};
    use crate::token::SecretHash;
    use std::time::Duration;

    fn rec(n: u64) -> Arc<Record> {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        id[8..].copy_from_slice(&n.to_le_bytes());
        Arc::new(
            RecordParts {
                id: SessionId::from_bytes(id),
                serial: n,
                secret_hash: SecretHash([0; 32]),
                now: 0,
                ttl: Duration::from_secs(1),
                idle_timeout: None,
            }
            .build(NewSession::new("u")),
        )
    }

    #[test]
    fn capacity_is_bounded_and_hot_entries_survive() {
        let c = Cache::new(64, 4);
        let hot: Vec<_> = (0..8).map(rec).collect();
        for r in &hot {
            c.insert(Arc::clone(r));
        }
        for n in 100..1100 {
            for r in &hot {
                assert!(c.get(&r.id).is_some(), "hot entry {} evicted", r.serial);
            }
            c.insert(rec(n));
        }
        let s = c.stats();
        assert!(s.entries <= 64, "{}", s.entries);
        assert!(s.evictions >= 1000 - 64);
    }

    #[test]
    fn remove_frees_the_slot_and_stale_versions_are_ignored() {
        let c = Cache::new(16, 1);
        let r = rec(1);
        c.insert(Arc::clone(&r));
        let mut newer = (*r).clone();
        newer.version = 2;
        c.insert(Arc::new(newer));
        c.insert(Arc::clone(&r)); // stale: version 1
        assert_eq!(c.get(&r.id).unwrap().version, 2);
        c.remove(&r.id);
        assert!(c.get(&r.id).is_none());
        assert_eq!(c.stats().entries, 0);
    }
}
