//! The session table: the cache, the backend and the revocation state as one
//! thing the store reads and writes through — lookup (cache, then backend,
//! filled under the revocation epoch), touch (sliding expiry, written once per
//! granularity) and submit (a backend op, whose revocations are applied to the
//! bitmap and the cache here, whether the op committed or failed).
//!
//! The table also owns the checks a found record must pass before it answers
//! ([`SessionTable::may_answer`]: whether a cached copy is fresh enough to
//! answer without I/O; [`SessionTable::status`]: revoked, cut by a user-wide
//! revocation, expired), so every read path applies the same rule.
//!
//! Every backend gets the same cache and revocation logic; only
//! [`Backend`] differs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::backend::coherence::Coherence;
use crate::backend::{Backend, Invalidation, Op, Outcome, Revoked, Wait};
use crate::cache::Cache;
use crate::clock::duration_millis;
use crate::error::{Error, StorageErrorKind};
use crate::events::{Event, EventHandler};
use crate::revocation::Revocation;
use crate::session::Record;
use crate::token::SessionId;

pub(crate) struct SessionTable {
    pub(crate) cache: Arc<Cache>,
    pub(crate) revocation: Arc<Revocation>,
    pub(crate) backend: Box<dyn Backend>,
    /// For a backend shared by several nodes: whether cached entries may
    /// answer (following, not wiped, within the staleness bound).
    pub(crate) coherence: Option<Arc<Coherence>>,
    /// `last_seen` is persisted at most once per granularity (ms).
    granularity_ms: u64,
    on_event: Option<EventHandler>,
}

impl SessionTable {
    pub(crate) fn new(
        cache: Arc<Cache>,
        revocation: Arc<Revocation>,
        backend: Box<dyn Backend>,
        coherence: Option<Arc<Coherence>>,
        granularity: std::time::Duration,
        on_event: Option<EventHandler>,
    ) -> SessionTable {
        SessionTable { cache, revocation, backend, coherence, granularity_ms: duration_millis(granularity), on_event }
    }

    /// Whether a cached copy of a session may answer a read at `now` without
    /// asking the backend. A node of a shared backend answers from its cache
    /// only while it is following the other nodes' writes, never after its
    /// store was wiped, and only within the staleness bound of when this node
    /// read the copy (on its own clock).
    pub(crate) fn may_answer(&self, rec: &Record, now: u64) -> bool {
        self.coherence.as_ref().is_none_or(|c| c.fresh(rec.live.fetched.load(Ordering::Relaxed), now))
    }

    /// The status rule every read of a found record applies: revoked →
    /// `Revoked` (and the cached copy goes); covered by a user-wide
    /// revocation in progress → `Revoked`; past the absolute deadline or idle
    /// → `Expired` (with its event).
    pub(crate) fn status(&self, rec: &Record, now: u64) -> Result<(), Error> {
        // The record's own flag (set by every revocation of its serial, and at
        // fill for one revoked before): no lock shared across sessions.
        if rec.live.revoked.load(Ordering::Acquire) {
            self.cache.remove(&rec.id);
            return Err(Error::Revoked);
        }
        // A user-wide revocation in progress (here or on another node, or
        // interrupted by a crash and not yet finished).
        if self.revocation.cut_session(&rec.user, &rec.id) {
            return Err(Error::Revoked);
        }
        if now >= rec.deadline(rec.seen()) {
            self.emit(|| Event::Expired { session: rec.id });
            return Err(Error::Expired);
        }
        Ok(())
    }

    /// The follower's way into this table (see [`Invalidator`]).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn invalidator(&self) -> Invalidator {
        Invalidator { cache: Arc::clone(&self.cache), revocation: Arc::clone(&self.revocation) }
    }

    /// Tells the configured event handler, if any.
    pub(crate) fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(handler) = &self.on_event {
            handler(&event());
        }
    }

    /// The record for `id`, from the cache or else the backend (filling the cache).
    pub(crate) fn lookup(&self, id: &SessionId) -> Result<Option<Arc<Record>>, Error> {
        if let Some(r) = self.cache.get(id) {
            return Ok(Some(r));
        }
        self.load(id)
    }

    /// The record for `id` from the backend, filled into the cache (the caller
    /// has missed the cache).
    ///
    /// A fill is guarded by the revocation epoch: if any revocation happened
    /// while the row was being read, what was read may predate it (and its bit
    /// may even have been pruned since), so it is not cached and is read again.
    pub(crate) fn load(&self, id: &SessionId) -> Result<Option<Arc<Record>>, Error> {
        for attempt in 0..3 {
            let epoch = self.revocation.epoch();
            let rec = match self.backend.get(id) {
                Ok(Some(rec)) => rec,
                Ok(None) => return Ok(None),
                Err(Error::Storage(e)) if e.kind() == StorageErrorKind::Corrupt => {
                    tracing::warn!(session = %id, "stored session row failed its tag or decode: refused (run `cloakroom verify`)");
                    self.emit(|| Event::CorruptRow { session: *id });
                    return Err(Error::Storage(e));
                }
                Err(e) => return Err(e),
            };
            // Revoked while the row could not be read (storage fault): refuse it now.
            self.revocation.blocked(id, rec.serial);
            let rec = Arc::new(rec);
            if self.revocation.is_revoked(rec.serial) {
                rec.live.revoked.store(true, Ordering::Release);
            }
            if attempt == 2 {
                return Ok(Some(rec)); // fresh enough to answer from; not cached
            }
            self.fill(Arc::clone(&rec));
            if self.revocation.epoch() == epoch {
                return Ok(Some(rec));
            }
            self.cache.remove(id);
        }
        Ok(None)
    }

    /// Puts a record in the cache unless it has been revoked meanwhile. Checking the
    /// bit after the insert closes the race with a concurrent revoke, which sets the
    /// bit before its commit and evicts after it.
    pub(crate) fn fill(&self, rec: Arc<Record>) {
        crate::cache::fill(&self.cache, &self.revocation, rec);
    }

    /// Marks activity on a session; writes `last_seen` at most once per granularity.
    pub(crate) fn touch(&self, rec: &Record, now: u64) {
        // Written at most once per resolution (granularity / 16, at most 1 s), not
        // on every hit: a hot session's line is not written by every request. A
        // racing older value, or the skipped part, only shortens the session.
        let resolution = (self.granularity_ms / 16).clamp(1, 1000);
        if now >= rec.seen().saturating_add(resolution) {
            rec.live.last_seen.store(now, Ordering::Relaxed);
        }
        let persisted = rec.live.persisted.load(Ordering::Relaxed);
        if rec.idle_timeout != 0
            && now.saturating_sub(persisted) >= self.granularity_ms
            && rec.live.persisted.compare_exchange(persisted, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.backend.offer(Op::Touch { id: rec.id, last_seen: now });
        }
    }

    /// Refuses these (serial, id) pairs in memory now, before the backend is
    /// asked to revoke them, so a failed commit still fails closed.
    pub(crate) fn refuse(&self, pairs: &[(u64, SessionId)]) {
        self.revocation.revoke(pairs, None);
    }

    /// Applies `op` through the backend. What it revoked is applied to the
    /// bitmap and evicted from the cache before this returns — also what a
    /// failed op had decided to revoke (fail closed).
    pub(crate) fn submit(&self, op: Op, wait: Wait) -> Result<Outcome, Error> {
        if self.backend.shared() {
            // Bump, write, evict, bump: a fill that read before the write lands
            // sees the epoch move and drops what it cached (see `load`).
            let rewritten = op.rewrites();
            self.revocation.bump_epoch();
            let out = self.submit_inner(op, wait);
            if let Some(id) = rewritten {
                self.cache.remove(&id);
            }
            self.revocation.bump_epoch();
            return out;
        }
        self.submit_inner(op, wait)
    }

    /// Puts the record a write returned in the cache — unless other nodes
    /// write the same sessions, where only reads fill it.
    pub(crate) fn fill_written(&self, rec: Arc<Record>) {
        if !self.backend.shared() {
            self.fill(rec);
        }
    }

    fn submit_inner(&self, op: Op, wait: Wait) -> Result<Outcome, Error> {
        match self.backend.submit(op, wait) {
            Ok(out) => {
                let revoked = out.revoked();
                if !revoked.is_empty() {
                    crate::telemetry::count("cloakroom.sessions.revoked", revoked.len() as u64);
                }
                // Flags a cached record of each revoked serial (the marker).
                self.revocation.revoke_committed(revoked);
                // A revoked session is deleted, so its entry goes. A rotated one
                // lives on under a new serial: its entry may already be a newer
                // update's, so it stays (the caller fills the rotated record).
                if !matches!(out, Outcome::Rotated { .. }) {
                    for r in revoked {
                        self.cache.remove(&r.id);
                    }
                }
                Ok(out)
            }
            Err(f) => {
                let pairs: Vec<(u64, SessionId)> = f.unsaved.iter().map(|r| (r.serial, r.id)).collect();
                self.refuse(&pairs);
                for (_, id) in &pairs {
                    self.cache.remove(id);
                }
                Err(f.error)
            }
        }
    }
}

/// The follower's way into this node's cache and revocation state (see
/// [`Invalidation`]): every change a cached fill might race is bracketed by
/// an eviction and an epoch bump, so a fill that read before it drops what
/// it cached (see [`SessionTable::load`]).
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // (only the Redis follower uses it)
pub(crate) struct Invalidator {
    pub(crate) cache: Arc<Cache>,
    pub(crate) revocation: Arc<Revocation>,
}

impl Invalidation for Invalidator {
    fn revoked(&self, entries: &[Revoked]) {
        self.revocation.revoke_committed(entries);
        for e in entries {
            self.cache.remove(&e.id);
        }
        self.revocation.bump_epoch();
    }

    fn changed(&self, id: &SessionId) {
        // Evict, then bump: a fill that read the old row sees the bump.
        self.cache.remove(id);
        self.revocation.bump_epoch();
    }

    fn not_before(&self, user: &str, at: u64) {
        self.revocation.set_not_before(user, at);
    }

    fn cut(&self, user: &str, cut: crate::backend::UserCut, on: bool) {
        if on {
            self.revocation.add_cut(user, cut, false);
        } else {
            self.revocation.remove_cut(user, &cut);
        }
    }

    fn cuts(&self, stored: &[(String, crate::backend::UserCut)]) {
        self.revocation.sync_cuts(stored);
    }

    fn flush(&self) {
        self.cache.clear();
        self.revocation.bump_epoch();
    }
}
