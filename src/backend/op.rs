//! The write ops a backend applies ([`Op`]) and what they report
//! ([`Outcome`], [`Failure`]), with the values they carry: a create
//! ([`Create`]), a new deadline ([`Expires`]), a revoked serial
//! ([`Revoked`]), a user-wide revocation's marker ([`UserCut`]) and a sweep
//! batch's counts ([`Swept`]).

use std::sync::Arc;

use crate::error::Error;
use crate::refresh::FamilyFn;
use crate::refresh::FamilyReply;
use crate::session::Record;
use crate::token::{SecretHash, SessionId};

/// A write. Each variant checks its preconditions before changing anything.
pub(crate) enum Op {
    /// Insert a new session (see [`Create`]).
    Create(Create),
    /// Persist a newer `last_seen` and move the session's expiry row.
    Touch { id: SessionId, last_seen: u64 },
    /// Replace the data (if given; the version goes up either way) and move
    /// the absolute deadline (if given); `expected` makes it a compare-and-swap
    /// on the version.
    /// `serial`, if given, is the session serial the caller read (an
    /// adapter's save): a session replaced since refuses the update. `now`:
    /// a row already past its deadline is refused (`NotFound`).
    UpdateData {
        id: SessionId,
        expected: Option<u64>,
        serial: Option<u64>,
        now: u64,
        data: Option<Box<[u8]>>,
        expires: Option<Expires>,
    },
    /// Give session `id` a new secret and serial, built from the *stored* row (so
    /// no data written before is lost), if its secret is still `expected`;
    /// revoke the old serial and drop the refresh families. The id stays.
    Rotate { id: SessionId, expected: SecretHash, serial: u64, secret_hash: SecretHash, now: u64, prune_after: u64 },
    /// Delete one session and record its serial as revoked. With `owner`,
    /// only if the stored row is that user's ([`super::rules::owned_by`]): a
    /// revocation a user was authorised to make on their own session (a
    /// devices page) never ends another user's session that took the id
    /// since the check (an adapter's user change keeps the id).
    Revoke { id: SessionId, owner: Option<Box<str>>, prune_after: u64 },
    /// Revoke up to `limit` of a user's sessions, except one if given (a
    /// user-wide revocation runs as a series of these, so no op, journal
    /// record or Redis script grows with the user's session count; the
    /// outcome's list shorter than `limit` means none is left).
    ///
    /// `cut` is the series' marker (see [`UserCut`]): the `first` step
    /// stores it (and, for a logout everywhere, raises the user's
    /// not-before cut-off to `not_before` ms), the step that finds nothing
    /// left removes it — each in the same durable write as its revocations.
    RevokeUser { user: Box<str>, cut: UserCut, first: bool, not_before: Option<u64>, limit: usize, prune_after: u64 },
    /// Read-modify-write of a session's refresh families: `f` sees the stored
    /// family bytes, tag checked (`None` if absent), and decides. `NotFound` if
    /// the session is gone. A backend may call `f` more than once (an optimistic
    /// backend retries after a lost compare-and-swap); only the last call's
    /// change is applied.
    /// `serial` is the session serial the caller was authorised against (see
    /// [`super::rules::family_authorised`]): a session rotated since refuses the op.
    /// `now` is the request's time: the row's `last_seen` is moved to it in
    /// the same durable write (an access token minted from this op is capped
    /// by the idle deadline counted from `now`, so the stored deadline must
    /// be at least that late on every node), and a row past its deadline is
    /// refused (`Expired`).
    Family { id: SessionId, serial: u64, now: u64, prune_after: u64, f: FamilyFn },
    /// Delete the sessions of these expiry rows (deadline, number, id) that are
    /// still expired at `now`.
    Sweep { rows: Vec<(u64, u64, SessionId)>, now: u64 },
    /// Drop these revocation entries (serial, id) — picked by the in-memory
    /// time index, so no table scan — and these not-before entries (user, at)
    /// unless raised since.
    PruneRevoked { entries: Vec<(u64, SessionId)>, not_before: Vec<(String, u64)> },
    /// No change; a durable barrier.
    Flush,
}

/// A user-wide revocation in progress: from its first durable step until its
/// last, the user's sessions created at or before `at` (ms), all but
/// `except`, are refused — by every node (the marker travels with the
/// revocation events) and across a crash (it is stored with the first step,
/// removed with the last, and an open finishes any series it finds). So the
/// revocation is atomic to readers however many bounded steps it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct UserCut {
    pub(crate) at: u64,
    /// The session kept (`Scope::Others`) and the serial it had when the
    /// revocation began (its access tokens carry that serial).
    pub(crate) except: Option<(SessionId, u64)>,
}

impl UserCut {
    /// The marker's stored key, the same on both backends:
    /// `at:except-id:except-serial:user` (the id empty for none; a session id
    /// is base64url, so the first three fields hold no `:`).
    pub(crate) fn key(&self, user: &str) -> String {
        match self.except {
            Some((id, serial)) => format!("{}:{id}:{serial}:{user}", self.at),
            None => format!("{}::0:{user}", self.at),
        }
    }

    /// Parses [`UserCut::key`]: (user, marker).
    pub(crate) fn parse(key: &str) -> Option<(String, UserCut)> {
        let mut parts = key.splitn(4, ':');
        let at = parts.next()?.parse().ok()?;
        let id = parts.next()?;
        let serial: u64 = parts.next()?.parse().ok()?;
        let user = parts.next()?;
        let except = if id.is_empty() { None } else { Some((id.parse().ok()?, serial)) };
        (!user.is_empty()).then(|| (user.to_owned(), UserCut { at, except }))
    }
}

/// A create: the new record and what the id and the user's sessions must
/// look like for it to land ([`super::rules::create`], [`super::rules::cap`]).
pub(crate) struct Create {
    pub(crate) rec: Arc<Record>,
    /// A row already under the id: refused, or replaced (an adapter's user change).
    pub(crate) replace: Replace,
    /// The user's session cap, if one applies to this create.
    pub(crate) cap: Option<crate::config::Cap>,
    /// The id came from the OS random generator (128 bits): a backend may
    /// skip looking for a row already under it (Redis keeps its create one
    /// unconditional transaction then; redb checks every create anyway).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // (read by the Redis backend)
    pub(crate) random_id: bool,
    /// Prune-after time of revocation entries the create makes (a replaced
    /// row, or the oldest sessions over the cap).
    pub(crate) prune_after: u64,
}

/// What a create does to the row stored under its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replace {
    /// The id must be free: a create over an existing row is refused.
    Nothing,
    /// The row must be the session of this serial; it is revoked and the new
    /// one takes its id in the same step (an adapter's user change).
    #[cfg_attr(not(any(feature = "tower-sessions", feature = "tower-sessions-015")), allow(dead_code))]
    Serial(u64),
}

/// A new absolute deadline for a session (ms), set by an update at `now` (the
/// adapters of frameworks that own the expiry, e.g. tower-sessions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expires {
    pub(crate) at: u64,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // (Redis sets its TTL from it)
    pub(crate) now: u64,
}

/// A session serial an op revoked: the bitmap bit, the id (so a token whose
/// row is gone reads `Revoked`), the secret hash (so only its holder learns
/// that) and when the entry may be pruned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Revoked {
    pub(crate) serial: u64,
    pub(crate) id: SessionId,
    pub(crate) secret_hash: SecretHash,
    pub(crate) prune_after: u64,
}

impl Revoked {
    pub(crate) fn of(rec: &Record, prune_after: u64) -> Revoked {
        Revoked { serial: rec.serial, id: rec.id, secret_hash: rec.secret_hash, prune_after }
    }
}

/// What a successful op reports.
pub(crate) enum Outcome {
    Done,
    /// The record as stored after an update.
    Updated(Arc<Record>),
    /// The record as stored after a rotation, and the old serial it revoked.
    Rotated {
        rec: Arc<Record>,
        old: Revoked,
    },
    /// The sessions deleted and revoked.
    Revoked(Vec<Revoked>),
    /// What a `Family` closure decided (`None`: no usable family), and the
    /// session's revocation if it decided one (reuse).
    Family {
        reply: Option<FamilyReply>,
        revoked: Option<Revoked>,
    },
    /// (serial, id) of the revocation entries pruned, and the not-before
    /// entries (user, at) removed.
    Pruned(Vec<(u64, SessionId)>, Vec<(String, u64)>),
    /// What a sweep batch removed.
    Swept(Swept),
    /// One step of a user-wide revocation: the sessions it revoked, and
    /// whether the user may have more (run another step).
    RevokedUser {
        revoked: Vec<Revoked>,
        more: bool,
    },
    /// A create landed, revoking these sessions (a replaced row, or the
    /// user's oldest sessions over the cap).
    Created(Vec<Revoked>),
}

impl Outcome {
    /// The revocations this op made.
    pub(crate) fn revoked(&self) -> &[Revoked] {
        match self {
            Outcome::Rotated { old, .. } => std::slice::from_ref(old),
            Outcome::Revoked(list) | Outcome::Created(list) | Outcome::RevokedUser { revoked: list, .. } => list,
            Outcome::Family { revoked: Some(r), .. } => std::slice::from_ref(r),
            _ => &[],
        }
    }
}

/// An op that did not take effect: why, and the revocations it had decided
/// before its batch failed (the session table still refuses them in memory:
/// fail closed).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) unsaved: Vec<Revoked>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure { error, unsaved: Vec::new() }
    }
}

/// Counts of one sweep batch.
#[derive(Debug, Default)]
pub(crate) struct Swept {
    pub(crate) absolute: Vec<SessionId>,
    pub(crate) idle: Vec<SessionId>,
    pub(crate) families: usize,
    /// Rows skipped because they failed to decode.
    pub(crate) corrupt: usize,
}

impl Op {
    /// The one session this op rewrites in place, if any.
    pub(crate) fn rewrites(&self) -> Option<SessionId> {
        match self {
            // (A family op changes no cached field: the record stays cached.)
            Op::UpdateData { id, .. } | Op::Rotate { id, .. } => Some(*id),
            _ => None,
        }
    }
}
