//! The backend contract: the [`Backend`] trait every store of sessions
//! implements, how long a write waits ([`Wait`]), the hook for lost eventual
//! creates ([`LostHook`]), and the one narrow way a shared backend reaches up
//! to the session table ([`Invalidation`]).

use std::sync::Arc;

use super::op::{Failure, Op, Outcome, Revoked, UserCut};
use crate::error::Error;
use crate::refresh::Families;
use crate::session::Record;
use crate::token::SessionId;

/// What a shared backend's follower does to this node's session table when
/// other nodes write: the one narrow way a backend reaches up (implemented by
/// [`crate::table::Invalidator`]).
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // (only the Redis follower calls it)
pub(crate) trait Invalidation: Send + Sync {
    /// Sessions revoked elsewhere: refuse them, drop their cached copies.
    fn revoked(&self, entries: &[Revoked]);
    /// A session changed elsewhere: drop its cached copy.
    fn changed(&self, id: &SessionId);
    /// A user's not-before cut-off, raised elsewhere.
    fn not_before(&self, user: &str, at: u64);
    /// A user-wide revocation began (`on`) or ended elsewhere.
    fn cut(&self, user: &str, cut: UserCut, on: bool);
    /// The user-wide revocations in progress, as stored (after a reconnect:
    /// any this node missed the end of are dropped).
    fn cuts(&self, stored: &[(String, UserCut)]);
    /// Whatever is cached may have missed events: drop all of it.
    fn flush(&self);
}

/// Called after a failed batch with the ids of its Eventual creates (never
/// stored), for the session table to forget from its cache.
pub(crate) type LostHook = Arc<dyn Fn(Vec<SessionId>) + Send + Sync>;

/// How long `submit` waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Until the op is durable.
    Durable,
    /// Until the op is applied (visible to reads), durable or not.
    Applied,
    /// Only until the op is queued.
    Queued,
}

/// Where sessions are stored. Reads may run on any thread; writes go through
/// [`Backend::submit`] (and [`Backend::offer`] for droppable touches).
pub(crate) trait Backend: Send + Sync {
    /// The stored record of `id`, if any (expired or not).
    fn get(&self, id: &SessionId) -> Result<Option<Record>, Error>;
    /// Every stored record the user's index names. An index entry may be
    /// stale and name another user's row: the caller keeps only the records
    /// [`rules::owned_by`](super::rules::owned_by) the user (one rule for
    /// both backends).
    fn list_user(&self, user: &str) -> Result<Vec<Record>, Error>;
    /// The refresh families of session `id`.
    fn families(&self, id: &SessionId) -> Result<Option<Families>, Error>;
    /// Up to `limit` expiry entries (deadline, number, id) with a deadline at
    /// or before `now`, after `after` (deadline, number), in order. A backend
    /// that expires rows by itself returns none.
    fn expired(&self, now: u64, after: Option<(u64, u64)>, limit: usize) -> Result<Vec<(u64, u64, SessionId)>, Error>;
    /// Applies `op` and waits as `wait` says (`Outcome::Done` for [`Wait::Queued`]).
    fn submit(&self, op: Op, wait: Wait) -> Result<Outcome, Failure>;
    /// As `submit` with [`Wait::Queued`], but never blocks: a full queue drops
    /// the op (touches, whose loss only shortens a session).
    fn offer(&self, op: Op);
    /// Makes everything acknowledged so far part of the backend's durable,
    /// compacted state (redb: one checkpoint of the journal into the file).
    fn checkpoint(&self) -> Result<(), Error>;
    /// Flushes and stops. Idempotent.
    fn close(&self) -> Result<(), Error>;
    /// The backend's counters, into `stats`.
    fn stats(&self, stats: &mut crate::stats::Stats);
    /// How much longer than its own prune-after time a revocation entry must
    /// be kept (ms), given this opener's horizon `ms`: on a backend several
    /// nodes write, an entry may have been written under a smaller horizon
    /// than the largest any node uses (Redis: largest - smallest recorded).
    /// 0 for redb, whose every opener writes under the recorded largest.
    fn prune_margin(&self, ms: u64) -> Result<u64, Error> {
        let _ = ms;
        Ok(0)
    }
    /// Whether other processes write the same sessions (Redis): then a write's
    /// result is not put in the cache (another node's newer write, or its
    /// invalidation event, may already have passed), and the session table
    /// brackets each write with epoch bumps so that no racing fill caches
    /// what it read.
    fn shared(&self) -> bool {
        false
    }
}
