//! The in-memory revocation state: a roaring bitmap of revoked session serials,
//! and (for access tokens) per-user not-before cut-offs.
//!
//! Both are read by every `verify_access` (and every cache fill), so both are
//! [`Snapshot`]s: a check loads the current bitmap or map with no lock and no
//! shared write. The bitmap is split by serial into [`BIT_SHARDS`] snapshots so
//! a revocation copies only 1/16 of it.
//!
//! Both are persisted by the backend (redb: the `revoked` and `not_before`
//! tables) and loaded at open. A revoke sets its bits before it is submitted and
//! again with what the backend committed, so after a revoke returns no check on
//! any thread passes, and a failed commit leaves them set (fail closed).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sync::{RwLock, step};
use roaring::RoaringTreemap;

use crate::backend::Revoked as Committed;
use crate::backend::{UserCut, rules};
use crate::snapshot::Snapshot;
use crate::token::{IdHash, SecretHash, SessionId};

/// The ids of the revoked sessions, so a token whose row is gone still reads
/// as `Revoked`, and what pruning needs. (The serials are in `Revocation::bits`.)
#[derive(Default)]
struct RevokedSet {
    /// id → serial of its latest revocation; [`UNKNOWN_SERIAL`] for an id
    /// refused before its serial could be read (a revoke during a storage fault).
    ids: HashMap<SessionId, u64, IdHash>,
    /// (prune-after ms, serial, id): what pruning may drop, in time order, so a
    /// prune never scans the whole `revoked` table.
    due: BTreeSet<(u64, u64, SessionId)>,
    /// blake3(secret) of revoked sessions, when the revocation came through the
    /// writer in this process: so a token answers `Revoked` only to whoever
    /// holds its secret (anyone else gets `NotFound`: no oracle on ids).
    secrets: HashMap<SessionId, SecretHash, IdHash>,
}

/// One revocation mark: serial, id, prune-after (if committed), secret hash (if known).
type Mark = (u64, SessionId, Option<u64>, Option<SecretHash>);

/// User-wide revocations in progress by user, each flagged when this process runs it.
type Cuts = HashMap<Box<str>, Vec<(UserCut, bool)>>;

/// Serials start at 1; 0 marks an id revoked while its serial was unknown.
const UNKNOWN_SERIAL: u64 = 0;

/// Called with each (serial, id) revoked (`None` serial: whatever the id's
/// serial is), so the store can flag a cached record: the hit path then reads
/// the record's own flag instead of this shared set.
pub(crate) type Marker = Box<dyn Fn(Option<u64>, &SessionId) + Send + Sync>;

/// How many snapshots the revoked-serial bitmap is split into (by serial).
const BIT_SHARDS: usize = 16;

/// Revoked serials, checked by every verify and cache fill: shard `s % 16`
/// holds serial `s`.
type Bits = [Snapshot<RoaringTreemap>; BIT_SHARDS];

#[derive(Default)]
pub(crate) struct Revocation {
    bits: Bits,
    revoked: RwLock<RevokedSet>,
    marker: std::sync::OnceLock<Marker>,
    not_before: Snapshot<HashMap<Box<str>, u64>>,
    /// User-wide revocations in progress (see [`UserCut`]), by user; the flag
    /// marks one this process is running (kept by [`Revocation::sync_cuts`]).
    cuts: Snapshot<Cuts>,
    /// Whether `cuts` holds any: the hot paths skip the map when not.
    any_cut: std::sync::atomic::AtomicBool,
    /// Bumped by every revocation, before its commit. A cache fill compares it
    /// before and after its database read, so a reader that stalled across a
    /// revocation (and its later pruning) never caches what it read.
    epoch: AtomicU64,
    /// The prune clock's last (value, monotonic ms) (see [`Revocation::prune_clock`]).
    prune_clock: parking_lot::Mutex<Option<(u64, u64)>>,
}

impl Revocation {
    pub(crate) fn load(
        revoked: &[(u64, u64, SessionId)],
        not_before: Vec<(String, u64)>,
        cuts: Vec<(String, UserCut)>,
    ) -> Self {
        let r = Self {
            any_cut: std::sync::atomic::AtomicBool::new(!cuts.is_empty()),
            cuts: Snapshot::new(cuts.into_iter().fold(HashMap::new(), |mut m, (u, c)| {
                m.entry(u.into_boxed_str()).or_insert_with(Vec::new).push((c, false));
                m
            })),
            bits: Bits::default(),
            revoked: RwLock::default(),
            marker: std::sync::OnceLock::new(),
            not_before: Snapshot::new(not_before.into_iter().map(|(u, t)| (u.into_boxed_str(), t)).collect()),
            epoch: AtomicU64::new(0),
            prune_clock: parking_lot::Mutex::new(None),
        };
        {
            let mut w = r.revoked.write();
            for &(s, prune_after, id) in revoked {
                w.ids.insert(id, s);
                w.due.insert((prune_after, s, id));
            }
        }
        r.set_bits(revoked.iter().map(|&(s, _, _)| s), true);
        r
    }

    fn shard(&self, serial: u64) -> &Snapshot<RoaringTreemap> {
        #[allow(clippy::cast_possible_truncation)] // < BIT_SHARDS
        &self.bits[(serial % BIT_SHARDS as u64) as usize]
    }

    /// Sets (`on`) or clears serials, publishing each touched shard once.
    fn set_bits(&self, serials: impl IntoIterator<Item = u64>, on: bool) {
        let mut by_shard: [Vec<u64>; BIT_SHARDS] = Default::default();
        for s in serials {
            #[allow(clippy::cast_possible_truncation)] // < BIT_SHARDS
            by_shard[(s % BIT_SHARDS as u64) as usize].push(s);
        }
        for (shard, serials) in self.bits.iter().zip(by_shard) {
            if serials.is_empty() {
                continue;
            }
            // Most marks repeat one made moments ago (the provisional mark
            // before the commit, then the writer's): copy a shard only to change it.
            shard.write_if(
                |bits| serials.iter().any(|&s| bits.contains(s) != on),
                |bits| {
                    for &s in &serials {
                        if on {
                            bits.insert(s);
                        } else {
                            bits.remove(s);
                        }
                    }
                },
            );
        }
    }

    /// Bumps the epoch without a revocation: a session changed elsewhere (a
    /// write of this node to a shared backend, or another node's event), so a
    /// fill racing it must not cache what it read.
    pub(crate) fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The revocation epoch (see the field).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Refuses `id` before its serial is known (its row could not be read):
    /// the next read of the row revokes whatever serial it holds. Fail closed.
    pub(crate) fn block_id(&self, id: SessionId) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.revoked.write().ids.entry(id).or_insert(UNKNOWN_SERIAL);
        self.mark(None, &id);
    }

    /// Installs the marker (once, at store start).
    pub(crate) fn set_marker(&self, marker: Marker) {
        let _ = self.marker.set(marker);
    }

    fn mark(&self, serial: Option<u64>, id: &SessionId) {
        if let Some(m) = self.marker.get() {
            m(serial, id);
        }
    }

    /// For a row just read: if its id was blocked with an unknown serial,
    /// revokes that serial now and says so.
    pub(crate) fn blocked(&self, id: &SessionId, serial: u64) -> bool {
        if self.revoked.read().ids.get(id) != Some(&UNKNOWN_SERIAL) {
            return false;
        }
        self.set_bits([serial], true);
        true
    }

    /// Entries whose prune-after time is at or before `now`.
    /// The time pruning may go by (ms): the wall time `wall`, but never more
    /// than the monotonic time elapsed since the last reading ahead of the
    /// last value. A forward jump of the wall clock does not move it (so no
    /// entry is pruned early and lost when the clock is stepped back), and a
    /// backward step holds it back until the wall clock catches up. Every
    /// revocation and prune reads it (`mono` is [`crate::Clock::monotonic`], ms).
    pub(crate) fn prune_clock(&self, wall: u64, mono: u64) -> u64 {
        let mut state = self.prune_clock.lock();
        let now = match *state {
            None => wall,
            Some((prev, prev_mono)) => wall.min(prev.saturating_add(mono.saturating_sub(prev_mono))),
        };
        *state = Some((now, mono));
        now
    }

    pub(crate) fn due(&self, now: u64) -> Vec<(u64, SessionId)> {
        self.revoked
            .read()
            .due
            .range(..(now.saturating_add(1), 0, SessionId::from_bytes([0; 16])))
            .map(|&(_, s, id)| (s, id))
            .collect()
    }

    /// Users whose not-before cut-off is older than `horizon_ms` at `now`: every
    /// access token issued before it has expired, so the entry can go.
    pub(crate) fn stale_not_before(&self, now: u64, horizon_ms: u64) -> Vec<(String, u64)> {
        self.not_before
            .read()
            .iter()
            .filter(|(_, at)| at.saturating_add(horizon_ms) <= now)
            .map(|(u, at)| (u.to_string(), *at))
            .collect()
    }

    /// Forgets not-before entries that were pruned on disk (unless raised since).
    pub(crate) fn forget_not_before(&self, entries: &[(String, u64)]) {
        self.not_before.write(|map| {
            for (u, at) in entries {
                if map.get(u.as_str()) == Some(at) {
                    map.remove(u.as_str());
                }
            }
        });
    }

    /// Starts refusing the sessions `cut` covers: a user-wide revocation
    /// this process runs (`local`) or another node began.
    pub(crate) fn add_cut(&self, user: &str, cut: UserCut, local: bool) {
        self.cuts.write(|map| {
            let list = map.entry(user.into()).or_default();
            match list.iter_mut().find(|(c, _)| *c == cut) {
                Some(entry) => entry.1 |= local,
                None => list.push((cut, local)),
            }
        });
        self.any_cut.store(true, Ordering::SeqCst);
    }

    /// Replaces the markers of other nodes' revocations with `stored` (what
    /// the shared backend holds after a reconnect: one whose end this node
    /// missed is gone there); the ones this process runs stay.
    pub(crate) fn sync_cuts(&self, stored: &[(String, UserCut)]) {
        self.cuts.write(|map| {
            for list in map.values_mut() {
                list.retain(|(_, local)| *local);
            }
            for (user, cut) in stored {
                let list = map.entry(user.as_str().into()).or_default();
                if !list.iter().any(|(c, _)| c == cut) {
                    list.push((*cut, false));
                }
            }
            map.retain(|_, list| !list.is_empty());
            self.any_cut.store(!map.is_empty(), Ordering::SeqCst);
        });
    }

    /// Ends a user-wide revocation: every session it covered is revoked.
    pub(crate) fn remove_cut(&self, user: &str, cut: &UserCut) {
        self.cuts.write(|map| {
            if let Some(list) = map.get_mut(user) {
                list.retain(|(c, _)| c != cut);
                if list.is_empty() {
                    map.remove(user);
                }
            }
            self.any_cut.store(!map.is_empty(), Ordering::SeqCst);
        });
    }

    /// The user-wide revocations no thread of this process is running (one
    /// loaded at open, one whose step failed, another node's), of `user` or
    /// of everyone, started at or before `before` (ms): (user, marker).
    pub(crate) fn unfinished(&self, user: Option<&str>, before: u64) -> Vec<(String, UserCut)> {
        if !self.any_cut.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.cuts
            .read()
            .iter()
            .filter(|(u, _)| user.is_none_or(|want| &***u == want))
            .flat_map(|(u, list)| {
                list.iter().filter(|(c, local)| !local && c.at <= before).map(|(c, _)| (u.to_string(), *c))
            })
            .collect()
    }

    /// A revocation of this process stopped (a step failed): its marker
    /// stays (fail closed) for [`Revocation::unfinished`] to pick up.
    pub(crate) fn stop_cut(&self, user: &str, cut: &UserCut) {
        self.cuts.write(|map| {
            if let Some(e) = map.get_mut(user).and_then(|l| l.iter_mut().find(|(c, _)| c == cut)) {
                e.1 = false;
            }
        });
    }

    /// Whether a user-wide revocation in progress refuses this session.
    pub(crate) fn cut_session(&self, user: &str, id: &SessionId) -> bool {
        self.any_cut.load(Ordering::Acquire)
            && self.cuts.read().get(user).is_some_and(|l| l.iter().any(|(c, _)| rules::cut_refuses(c, id)))
    }

    /// Whether a user-wide revocation in progress refuses this access token.
    pub(crate) fn cut_access(&self, user: &str, sid: u64) -> bool {
        self.any_cut.load(Ordering::Acquire)
            && self.cuts.read().get(user).is_some_and(|l| l.iter().any(|(c, _)| rules::cut_refuses_access(c, sid)))
    }

    /// Is this session serial revoked?
    pub(crate) fn is_revoked(&self, serial: u64) -> bool {
        self.shard(serial).read().contains(serial)
    }

    /// Was the session with this id revoked (and not yet pruned)? Only for
    /// credentials already authenticated otherwise (refresh-token MACs).
    pub(crate) fn is_revoked_id(&self, id: &SessionId) -> bool {
        self.revoked.read().ids.contains_key(id)
    }

    /// Was a session with this id revoked while `secret` was its secret? Constant-time compare.
    pub(crate) fn revoked_with_secret(&self, id: &SessionId, secret: &SecretHash) -> bool {
        self.revoked.read().secrets.get(id).is_some_and(|h| h.matches(secret))
    }

    /// The mark of revocations a backend committed: each serial with its id,
    /// secret hash and prune-after time.
    pub(crate) fn revoke_committed(&self, entries: &[Committed]) {
        let marks: Vec<Mark> =
            entries.iter().map(|e| (e.serial, e.id, Some(e.prune_after), Some(e.secret_hash))).collect();
        self.mark_all(&marks);
    }

    /// Marks (serial, id) pairs revoked. `prune_after`: when they may be
    /// pruned (`None` for a provisional in-memory mark before the commit; the
    /// committed mark adds it).
    pub(crate) fn revoke(&self, pairs: &[(u64, SessionId)], prune_after: Option<u64>) {
        let marks: Vec<Mark> = pairs.iter().map(|&(s, id)| (s, id, prune_after, None)).collect();
        self.mark_all(&marks);
    }

    fn mark_all(&self, marks: &[Mark]) {
        if marks.is_empty() {
            return;
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.set_bits(marks.iter().map(|m| m.0), true);
        step();
        {
            let mut r = self.revoked.write();
            for &(s, id, prune_after, secret) in marks {
                if prune_after.is_some() {
                    r.ids.insert(id, s);
                } else {
                    // A provisional mark (before a commit) never replaces what
                    // the id already maps to: a later committed revocation, or
                    // the unknown-serial block of a row that could not be read.
                    r.ids.entry(id).or_insert(s);
                }
                if let Some(p) = prune_after {
                    r.due.insert((p, s, id));
                }
                if let Some(h) = secret {
                    r.secrets.insert(id, h);
                }
            }
        }
        // After the bits: a record cached before them is flagged here; one
        // cached after them sees the bits when it is filled.
        for &(s, id, ..) in marks {
            self.mark(Some(s), &id);
        }
    }

    /// Forgets pruned entries.
    pub(crate) fn forget(&self, pairs: &[(u64, SessionId)]) {
        let mut r = self.revoked.write();
        let pairs: std::collections::HashSet<(u64, SessionId)> = pairs.iter().copied().collect();
        r.due.retain(|(_, s, id)| !pairs.contains(&(*s, *id)));
        self.set_bits(pairs.iter().map(|&(s, _)| s), false);
        for (s, id) in &pairs {
            // A session keeps its id across rotations: only drop the id if it
            // still names this serial (not a later revocation of the same id).
            if r.ids.get(id) == Some(s) {
                r.ids.remove(id);
                r.secrets.remove(id);
            }
        }
    }

    /// How many serials are held.
    pub(crate) fn len(&self) -> u64 {
        self.bits.iter().map(|b| b.read().len()).sum()
    }

    /// How many users have a not-before cut-off.
    pub(crate) fn not_before_len(&self) -> usize {
        self.not_before.read().len()
    }

    /// The user's not-before cut-off (ms), if any.
    pub(crate) fn not_before(&self, user: &str) -> Option<u64> {
        self.not_before.read().get(user).copied()
    }

    /// Raises the user's not-before cut-off to `at` (ms).
    pub(crate) fn set_not_before(&self, user: &str, at: u64) {
        self.not_before.write(|map| {
            let e = map.entry(user.into()).or_insert(0);
            *e = (*e).max(at);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_and_forget_large_serials() {
        let id = |b| SessionId::from_bytes([b; 16]);
        let r = Revocation::load(&[(1, 0, id(1)), (5, 0, id(5))], Vec::new(), Vec::new());
        assert!(r.is_revoked(5) && r.is_revoked_id(&id(5)));
        r.revoke(&[(u64::MAX - 1, id(9)), (7, id(7))], Some(100));
        assert!(r.is_revoked(u64::MAX - 1));
        assert_eq!(r.len(), 4);
        assert_eq!(r.due(50).len(), 2, "the loaded entries (prune-after 0)");
        assert_eq!(r.due(100).len(), 4);
        r.forget(&r.due(50));
        assert_eq!((r.len(), r.due(100).len()), (2, 2));
        assert!(!r.is_revoked(5) && r.is_revoked(7));
    }

    #[test]
    fn not_before_only_moves_forward() {
        let r = Revocation::default();
        r.set_not_before("u", 10);
        r.set_not_before("u", 5);
        assert_eq!(r.not_before("u"), Some(10));
        assert_eq!(r.not_before("v"), None);
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn a_blocked_id_revokes_whatever_serial_it_turns_out_to_have() {
        let r = Revocation::default();
        let id = SessionId::from_bytes([3; 16]);
        let e = r.epoch();
        r.block_id(id);
        assert!(r.epoch() > e);
        assert!(!r.blocked(&SessionId::from_bytes([4; 16]), 9));
        assert!(r.blocked(&id, 9));
        assert!(r.is_revoked(9));
        // The writer's real mark replaces the provisional one.
        r.revoke(&[(9, id)], Some(5));
        assert!(!r.blocked(&id, 9));
    }

    #[test]
    fn stale_not_before_entries_are_found_and_forgotten_unless_raised() {
        let r = Revocation::default();
        r.set_not_before("a", 100);
        r.set_not_before("b", 900);
        let stale = r.stale_not_before(1000, 500);
        assert_eq!(stale, vec![("a".to_string(), 100)]);
        r.set_not_before("a", 950);
        r.forget_not_before(&stale);
        assert_eq!(r.not_before("a"), Some(950), "raised since: kept");
    }
}
