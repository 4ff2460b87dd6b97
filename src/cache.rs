//! Sharded, bounded session cache with CLOCK eviction and lock-free reads.
//!
//! The map is a `papaya` concurrent hash map (lock-free reads; memory of
//! removed entries reclaimed by `seize` once no reader holds it). `get` pins
//! the map and probes: no lock, and the pin writes only a per-thread slot, so
//! concurrent validates of one session or of many write no shared memory. The
//! record is lent to the caller's closure, never cloned out (its `Arc` count is
//! not touched). Writers (insert, remove, eviction) take their shard's mutex,
//! which guards the shard's CLOCK ring and orders its map changes. Hit and miss counters are striped by
//! thread. The cache never talks to the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::revocation::{Marker, Revocation};
use crate::session::Record;
use crate::sync::{Mutex, step};
use crate::token::{IdHash, SessionId};

/// What only writers touch: the CLOCK ring (a second `Arc` to each record,
/// which knows its ring position, `Live::slot`, so removal is O(1)).
struct Ring {
    ring: Vec<Option<Arc<Record>>>,
    free: Vec<u32>,
    hand: usize,
    capacity: usize,
    len: usize,
}

/// One shard: its writers' mutex and CLOCK ring, padded to its own cache lines.
#[repr(align(128))]
struct Shard {
    ring: Mutex<Ring>,
}

type Map = papaya::HashMap<SessionId, Arc<Record>, IdHash>;

fn evict_one(map: &Map, ring: &mut Ring) -> Option<u32> {
    // Each pass clears at most `len` bits, so two passes always find a victim.
    for _ in 0..ring.ring.len() * 2 {
        let i = ring.hand;
        ring.hand = (ring.hand + 1) % ring.ring.len();
        if let Some(r) = &ring.ring[i] {
            if r.live.referenced.swap(false, Ordering::Relaxed) {
                continue;
            }
            map.pin().remove(&r.id);
            step();
            ring.ring[i] = None;
            ring.len -= 1;
            #[allow(clippy::cast_possible_truncation)]
            // capacity per shard < 2^32 (config check)
            return Some(i as u32);
        }
    }
    None
}

/// Counters striped by thread: each thread bumps its own cache line (threads
/// are dealt stripes round-robin), so counting a hit writes nothing another
/// thread's hit writes. Statistics only: a bump is a plain load and store.
struct Striped {
    stripes: Box<[Stripe]>,
}

#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
}

const STRIPES: usize = 64;

fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    MINE.with(|i| *i)
}

fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

impl Striped {
    fn new() -> Self {
        Self { stripes: (0..STRIPES).map(|_| Stripe::default()).collect() }
    }

    fn mine(&self) -> &Stripe {
        &self.stripes[stripe_index()]
    }

    fn totals(&self) -> (u64, u64) {
        self.stripes
            .iter()
            .fold((0, 0), |(h, m), s| (h + s.hits.load(Ordering::Relaxed), m + s.misses.load(Ordering::Relaxed)))
    }
}

pub(crate) struct Cache {
    map: Map,
    shards: Box<[Shard]>,
    mask: u64,
    counters: Striped,
    evictions: AtomicU64,
}

/// Cache counters for [`crate::stats::Stats`].
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
        let shards: Box<[Shard]> = (0..shards)
            .map(|_| Shard {
                ring: Mutex::new(Ring { ring: Vec::new(), free: Vec::new(), hand: 0, capacity: per, len: 0 }),
            })
            .collect();
        let mask = (shards.len() as u64).saturating_sub(1);
        // Grown as it fills (incrementally): a table sized for the full capacity up
        // front would spread a few entries over many pages.
        let map = Map::with_capacity_and_hasher(capacity.min(4096), IdHash::default());
        Self { map, shards, mask, counters: Striped::new(), evictions: AtomicU64::new(0) }
    }

    fn shard(&self, id: &SessionId) -> &Shard {
        // Bytes 8..16 pick the shard; bytes 0..8 feed the map, so the two are independent.
        #[allow(clippy::cast_possible_truncation)] // masked to < shard count
        &self.shards[(id.shard_word() & self.mask) as usize]
    }

    /// Looks up a session and lends it to `f`; marks it recently used. No lock,
    /// no write shared with other threads (the CLOCK bit is written only when
    /// clear, once per eviction sweep).
    pub(crate) fn get_with<R>(&self, id: &SessionId, f: impl FnOnce(&Arc<Record>) -> R) -> Option<R> {
        let map = self.map.pin();
        let found = map.get(id).map(|r| {
            if !r.live.referenced.load(Ordering::Relaxed) {
                r.live.referenced.store(true, Ordering::Relaxed);
            }
            f(r)
        });
        let stripe = self.counters.mine();
        bump(if found.is_some() { &stripe.hits } else { &stripe.misses });
        found
    }

    /// Looks up a session (a clone of its `Arc`); marks it recently used.
    pub(crate) fn get(&self, id: &SessionId) -> Option<Arc<Record>> {
        self.get_with(id, Arc::clone)
    }

    /// Looks up a session without marking it used or counting (maintenance reads).
    pub(crate) fn peek(&self, id: &SessionId) -> Option<Arc<Record>> {
        self.map.pin().get(id).cloned()
    }

    /// Inserts or replaces a record. A replacement with an older data version
    /// (a racing writer's stale result) is ignored; the newest `last_seen` is kept.
    pub(crate) fn insert(&self, rec: Arc<Record>) {
        let mut ring = self.shard(&rec.id).ring.lock();
        let map = self.map.pin();
        let old = map.get(&rec.id);
        step();
        if let Some(old) = old {
            // Keep the newest: a rotation raises the serial (ids are stable), an
            // update the version. A slow caller must never put back an older record.
            if (old.serial, old.version) > (rec.serial, rec.version) {
                return;
            }
            rec.live.last_seen.fetch_max(old.seen(), Ordering::Relaxed);
            rec.live.persisted.fetch_max(old.live.persisted.load(Ordering::Relaxed), Ordering::Relaxed);
            let i = old.live.slot.load(Ordering::Relaxed);
            rec.live.slot.store(i, Ordering::Relaxed);
            ring.ring[i as usize] = Some(Arc::clone(&rec));
            step();
            map.insert(rec.id, rec);
            return;
        }
        let idx = if let Some(i) = ring.free.pop() {
            i
        } else if ring.ring.len() < ring.capacity {
            ring.ring.push(None);
            #[allow(clippy::cast_possible_truncation)] // capacity per shard < 2^32
            let i = (ring.ring.len() - 1) as u32;
            i
        } else if let Some(i) = evict_one(&self.map, &mut ring) {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            i
        } else {
            return;
        };
        rec.live.slot.store(idx, Ordering::Relaxed);
        ring.ring[idx as usize] = Some(Arc::clone(&rec));
        ring.len += 1;
        step();
        map.insert(rec.id, rec);
    }

    /// Drops a session from the cache (revocation, deletion).
    pub(crate) fn remove(&self, id: &SessionId) {
        let mut ring = self.shard(id).ring.lock();
        if let Some(r) = self.map.pin().remove(id) {
            step();
            let i = r.live.slot.load(Ordering::Relaxed);
            ring.ring[i as usize] = None;
            ring.free.push(i);
            ring.len -= 1;
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// Drops every entry (a Redis-backed node that may have missed
    /// invalidation events). Each id is removed under its shard's lock.
    pub(crate) fn clear(&self) {
        let ids: Vec<SessionId> = self.map.pin().keys().copied().collect();
        for id in &ids {
            self.remove(id);
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let (hits, misses) = self.counters.totals();
        let entries = self.shards.iter().map(|s| s.ring.lock().len).sum();
        CacheStats { entries, hits, misses, evictions: self.evictions.load(Ordering::Relaxed) }
    }
}

/// Puts a record in the cache unless it has been revoked meanwhile. Checking
/// the bit after the insert closes the race with a concurrent revocation,
/// which sets the bit before it flags cached records (see [`revocation_marker`]).
pub(crate) fn fill(cache: &Cache, revocation: &Revocation, rec: Arc<Record>) {
    let (id, serial) = (rec.id, rec.serial);
    cache.insert(Arc::clone(&rec));
    step();
    if revocation.is_revoked(serial) {
        rec.live.revoked.store(true, Ordering::Release);
        cache.remove(&id);
    }
}

/// The revocation marker of a store: flags the cached record of a revoked
/// (serial, id) — `None` serial: whatever serial it has — so a hit reads the
/// record's own flag, not the shared bitmap.
pub(crate) fn revocation_marker(cache: Arc<Cache>) -> Marker {
    Box::new(move |serial, id| {
        if let Some(r) = cache.peek(id)
            && serial.is_none_or(|s| s == r.serial)
        {
            r.live.revoked.store(true, Ordering::Release);
        }
    })
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

    /// Records whose ids share their hash word (one probe chain): every
    /// insert, replacement, removal and eviction keeps each cached record
    /// findable and the ring and map in step (checked against a model).
    #[test]
    fn colliding_ids_stay_findable_through_removals_and_evictions() {
        let c = Cache::new(8, 1); // a ring of 8
        let mut model: std::collections::BTreeMap<u64, ()> = std::collections::BTreeMap::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let colliding = |n: u64| {
            let mut id = [0u8; 16];
            // Only four hash words: long collision chains.
            id[..8].copy_from_slice(&((n % 4) * 5 + 12).to_le_bytes());
            id[8..].copy_from_slice(&n.to_le_bytes());
            let mut r = (*rec(n)).clone();
            r.id = SessionId::from_bytes(id);
            Arc::new(r)
        };
        for _ in 0..5000 {
            let n = next() % 24;
            if next() % 3 == 0 {
                c.remove(&colliding(n).id);
                model.remove(&n);
            } else {
                let before = c.stats().evictions;
                c.insert(colliding(n));
                model.insert(n, ());
                if c.stats().evictions > before {
                    // Which one went is CLOCK's choice: forget what is gone.
                    model.retain(|m, ()| c.peek(&colliding(*m).id).is_some());
                }
            }
            for m in 0..24 {
                let found = c.peek(&colliding(m).id);
                assert_eq!(found.is_some(), model.contains_key(&m), "record {m}");
                if let Some(r) = found {
                    assert_eq!(r.serial, m);
                }
            }
            assert_eq!(c.stats().entries, model.len());
            assert!(model.len() <= 8);
        }
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

/// Model-checked interleavings (`RUSTFLAGS="--cfg shuttle" cargo test --lib shuttle`).
#[cfg(all(test, shuttle))]
mod shuttle_tests {
    use super::*;
    use crate::session::{NewSession, RecordParts};
    use crate::token::SecretHash;
    use shuttle::thread;
    use std::time::Duration;

    const RUNS: usize = 3000;

    fn rec(n: u64, serial: u64) -> Arc<Record> {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_le_bytes());
        id[8..].copy_from_slice(&n.to_le_bytes());
        Arc::new(
            RecordParts {
                id: SessionId::from_bytes(id),
                serial,
                secret_hash: SecretHash([0; 32]),
                now: 0,
                ttl: Duration::from_secs(1),
                idle_timeout: None,
            }
            .build(NewSession::new("u")),
        )
    }

    fn store_parts() -> (Arc<Cache>, Arc<Revocation>) {
        let cache = Arc::new(Cache::new(2, 1));
        let revocation = Arc::new(Revocation::default());
        revocation.set_marker(revocation_marker(Arc::clone(&cache)));
        (cache, revocation)
    }

    /// Runs a fill of `rec` and a revocation of (`serial`, `id`) on two threads.
    fn race_fill_and_revoke(cache: &Arc<Cache>, revocation: &Arc<Revocation>, rec: Arc<Record>, serial: u64) {
        let id = rec.id;
        let (c, v) = (Arc::clone(cache), Arc::clone(revocation));
        let filler = thread::spawn(move || fill(&c, &v, rec));
        let v = Arc::clone(revocation);
        let revoker = thread::spawn(move || v.revoke(&[(serial, id)], None));
        filler.join().unwrap();
        revoker.join().unwrap();
    }

    /// A fill (after a miss) racing a revocation of the same serial: whatever
    /// the order, no unflagged record of that serial stays cached.
    #[test]
    fn a_fill_racing_a_revocation_never_leaves_a_live_cached_record() {
        shuttle::check_random(
            || {
                let (cache, revocation) = store_parts();
                let r = rec(1, 10);
                let id = r.id;
                race_fill_and_revoke(&cache, &revocation, r, 10);
                if let Some(cached) = cache.peek(&id) {
                    assert!(cached.live.revoked.load(Ordering::Acquire), "a revoked serial is served from the cache");
                }
                assert!(revocation.is_revoked(10));
            },
            RUNS,
        );
    }

    /// A rotation's fill (new serial) racing a revocation of the old serial
    /// of the same id: the new record is never flagged by the old revocation,
    /// the old one never survives unflagged.
    #[test]
    fn a_revocation_of_the_old_serial_never_flags_the_rotated_record() {
        shuttle::check_random(
            || {
                let (cache, revocation) = store_parts();
                let old = rec(1, 10);
                let id = old.id;
                fill(&cache, &revocation, Arc::clone(&old));
                let new = Arc::new(Record { serial: 11, ..(*old).clone() });
                // The revocation names the old serial (10); the fill brings the new one.
                race_fill_and_revoke(&cache, &revocation, new, 10);
                let cached = cache.peek(&id).expect("the rotated record is cached");
                assert_eq!(cached.serial, 11);
                assert!(!cached.live.revoked.load(Ordering::Acquire), "the new serial was flagged");
                assert!(old.live.revoked.load(Ordering::Acquire) || !Arc::ptr_eq(&cached, &old));
            },
            RUNS,
        );
    }

    /// Inserts racing an eviction and a removal in a 2-entry cache, with a
    /// reader: the ring and the map stay in step (entries = findable records,
    /// never over capacity), and a lookup only ever returns the id it asked for.
    #[test]
    fn inserts_evictions_and_removals_keep_ring_and_map_in_step() {
        shuttle::check_random(
            || {
                let cache = Arc::new(Cache::new(2, 1));
                let recs: Vec<Arc<Record>> = (1..=4).map(|n| rec(n, n)).collect();
                cache.insert(Arc::clone(&recs[0]));
                cache.insert(Arc::clone(&recs[1]));
                let mut hs = Vec::new();
                for r in [&recs[2], &recs[3]] {
                    let (c, r) = (Arc::clone(&cache), Arc::clone(r));
                    hs.push(thread::spawn(move || c.insert(r)));
                }
                let (c, id) = (Arc::clone(&cache), recs[0].id);
                hs.push(thread::spawn(move || c.remove(&id)));
                let (c, ids) = (Arc::clone(&cache), recs.iter().map(|r| r.id).collect::<Vec<_>>());
                hs.push(thread::spawn(move || {
                    for id in &ids {
                        if let Some(found) = c.get_with(id, |r| r.id) {
                            assert_eq!(found, *id);
                        }
                    }
                }));
                for h in hs {
                    h.join().unwrap();
                }
                let present = recs.iter().filter(|r| cache.peek(&r.id).is_some()).count();
                let st = cache.stats();
                assert_eq!(st.entries, present, "ring and map disagree");
                assert!(present <= 2, "over capacity: {present}");
            },
            RUNS,
        );
    }

    /// Two revocations of serials in the same bitmap shard racing a prune of a
    /// third: copy-on-write loses no bit and revives none.
    #[test]
    fn concurrent_revocations_and_a_prune_lose_no_bit() {
        shuttle::check_random(
            || {
                let revocation = Arc::new(Revocation::default());
                let id = |n: u8| SessionId::from_bytes([n; 16]);
                revocation.revoke(&[(48, id(3))], Some(0));
                let mut hs = Vec::new();
                for (s, n) in [(16u64, 1u8), (32, 2)] {
                    let v = Arc::clone(&revocation);
                    hs.push(thread::spawn(move || v.revoke(&[(s, id(n))], Some(5))));
                }
                let v = Arc::clone(&revocation);
                hs.push(thread::spawn(move || v.forget(&[(48, id(3))])));
                for h in hs {
                    h.join().unwrap();
                }
                assert!(revocation.is_revoked(16) && revocation.is_revoked(32), "a concurrent revocation was lost");
                assert!(!revocation.is_revoked(48), "the pruned serial is still revoked");
            },
            RUNS,
        );
    }
}
