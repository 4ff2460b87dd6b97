//! The decisions a write makes against the stored row, written once for every
//! backend.
//!
//! Each function here is pure: it takes the row as the backend read it (inside
//! the redb writer's batch, or in a Redis compare-and-swap loop) and the op's
//! preconditions, and says what the new row is or why the op is refused. A
//! backend only reads rows and applies what was decided, so a rule (and a
//! fix to it) has one home. An op authorised by a presented secret carries
//! what it was authorised against (the session's serial or secret hash), and
//! the rule refuses it when the stored row no longer matches: a check made in
//! the facade is repeated where the data is.

/// (Re-exported for the adapters, which name it with the rule.)
pub(crate) use super::op::Replace;
use super::op::{Expires, UserCut};
use crate::config::{Cap, OnLimit};
use crate::error::Error;
use crate::session::Record;
use crate::token::{SecretHash, SessionId};

/// A sliding-expiry touch: the row with `last_seen` moved forward, or `None`
/// when the stored row is already as recent (nothing to write).
pub(crate) fn touch(rec: &Record, last_seen: u64) -> Option<Record> {
    (last_seen > rec.last_seen).then(|| {
        let mut new = rec.clone();
        new.last_seen = last_seen;
        new
    })
}

/// A data update (and/or a new absolute deadline): the row with the version
/// raised, or `Conflict` when `expected` no longer matches (compare-and-swap).
pub(crate) fn update(
    rec: &Record,
    expected: Option<u64>,
    serial: Option<u64>,
    now: u64,
    data: Option<&[u8]>,
    expires: Option<Expires>,
) -> Result<Record, Error> {
    live(rec, now).map_err(|_| Error::NotFound)?;
    if expected.is_some_and(|v| v != rec.version) || serial.is_some_and(|s| s != rec.serial) {
        return Err(Error::Conflict { current: rec.version });
    }
    let mut new = rec.clone();
    new.version += 1;
    if let Some(data) = data {
        new.data = data.into();
    }
    if let Some(e) = expires {
        new.expires_at = e.at;
    }
    Ok(new)
}

/// A rotation: the row under a new secret and serial, if its secret is still
/// the one the caller presented (`NotFound` when a concurrent rotate won).
pub(crate) fn rotate(
    rec: &Record,
    expected: &SecretHash,
    serial: u64,
    secret_hash: SecretHash,
    now: u64,
) -> Result<Record, Error> {
    if !rec.secret_hash.matches(expected) {
        return Err(Error::NotFound);
    }
    live(rec, now).map_err(|_| Error::NotFound)?;
    Ok(rec.rotated(serial, secret_hash, now))
}

/// The precondition of a refresh-family op: the session still has the serial
/// the caller was authorised against (its session token validated, or its
/// refresh token's session looked up, under that serial). A rotation since
/// changed it: the op is refused (`Revoked`, as the presented credential
/// now is), so no family starts or rotates on a session the presenter no
/// longer holds.
pub(crate) fn family_authorised(rec: &Record, serial: u64, now: u64) -> Result<(), Error> {
    if rec.serial != serial {
        return Err(Error::Revoked);
    }
    live(rec, now)
}

/// A stored row answers a write only before its deadline (absolute or idle,
/// by its stored `last_seen`): an expired row not yet swept is not brought
/// back by an update or a rotation (the same answer as Redis, which has
/// expired the key by then).
fn live(rec: &Record, now: u64) -> Result<(), Error> {
    if now < rec.deadline(rec.last_seen) { Ok(()) } else { Err(Error::Expired) }
}

/// Whether a refresh-family decision accepted the presented credential (a new
/// family, a rotation, a grace-window retry): only then does the request count
/// as the session's activity.
pub(crate) fn accepted(reply: Option<&crate::refresh::FamilyReply>) -> bool {
    reply
        .is_some_and(|r| matches!(r.verdict, crate::refresh::Verdict::Rotated(_) | crate::refresh::Verdict::Current(_)))
}

/// Decides a create against the row stored under its id: `Ok(None)` to
/// insert, `Ok(Some(old))` to revoke `old` and insert in one step, or
/// `Conflict` (with the stored version) when the id is taken by another
/// session than the one to replace (a lost race: re-read and retry).
pub(crate) fn create(stored: Option<&Record>, replace: Replace) -> Result<Option<&Record>, Error> {
    match (stored, replace) {
        (None, Replace::Nothing) => Ok(None),
        (Some(old), Replace::Serial(s)) if old.serial == s => Ok(Some(old)),
        (Some(old), _) => Err(Error::Conflict { current: old.version }),
        (None, Replace::Serial(_)) => Err(Error::Conflict { current: 0 }),
    }
}

/// Whether a user-scoped read or revocation may touch `rec`: only the
/// records of that user (an index entry that names another user's row is
/// stale, never a reason to act on it).
pub(crate) fn owned_by(rec: &Record, user: &str) -> bool {
    &*rec.user == user
}

/// Decides the cap at a create: given the user's live sessions as
/// (created_at ms, number, serial), the ones to revoke (oldest first) so the
/// new one fits, or `Refused` under [`OnLimit::Refuse`](OnLimit::Refuse).
/// Oldest is the earliest creation time (a rotation keeps it), then the
/// lowest number (the serial a session was created with, kept for life).
/// Not the current serial: on Redis each node hands out
/// serials from its own block, so serial order is not time order across
/// nodes. Both backends (the Redis CREATE script sorts by the row's `c`
/// field, then `num`, the same way).
pub(crate) fn cap(cap: Cap, mut live: Vec<(u64, u64, u64)>) -> Result<Vec<(u64, u64, u64)>, Error> {
    if live.len() < cap.max {
        return Ok(Vec::new());
    }
    match cap.on_limit {
        OnLimit::Refuse => Err(Error::SessionLimit { max: cap.max }),
        OnLimit::RevokeOldest => {
            live.sort_unstable();
            let excess = live.len() + 1 - cap.max;
            live.truncate(excess);
            Ok(live)
        }
    }
}

/// What a step of a user-wide revocation does to its marker: the first step
/// stores it unless it already finished the series (`Some(true)`), the step
/// that finishes a longer series removes it (`Some(false)`).
pub(crate) fn cut_change(first: bool, more: bool) -> Option<bool> {
    match (first, more) {
        (true, true) => Some(true),
        (false, false) => Some(false),
        _ => None,
    }
}

/// Whether a user-wide revocation in progress (`cut`) refuses a session of
/// its user with this id: every one but the session it keeps. Exactly what
/// the steps revoke (they take every session of the user but the kept one,
/// also one signed in while they run), so no session validates and is then
/// revoked by a later step; and no wall clock is compared (a creation time
/// written by another node's clock would let a covered session escape).
pub(crate) fn cut_refuses(cut: &UserCut, id: &SessionId) -> bool {
    cut.except.is_none_or(|(keep, _)| keep != *id)
}

/// As [`cut_refuses`] for an access token under session serial `sid`: every
/// one but the kept session's (as of the start of the revocation).
pub(crate) fn cut_refuses_access(cut: &UserCut, sid: u64) -> bool {
    cut.except.is_none_or(|(_, keep)| keep != sid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{NewSession, RecordParts};
    use std::time::Duration;

    /// A stored row: created at 1 000 ms, serial (and number) 7, an hour to
    /// live, idle timeout 60 s, version 1, user `alice`, data `v1`.
    fn row() -> Record {
        RecordParts {
            id: SessionId::from_bytes([1; 16]),
            serial: 7,
            secret_hash: SecretHash([5; 32]),
            now: 1_000,
            ttl: Duration::from_secs(3_600),
            idle_timeout: Some(Duration::from_secs(60)),
        }
        .build(NewSession::new("alice").data(b"v1".to_vec()))
    }

    #[test]
    fn a_touch_moves_last_seen_forward_only() {
        let r = row();
        assert_eq!(touch(&r, 5_000).map(|n| n.last_seen), Some(5_000));
        assert!(touch(&r, 1_000).is_none(), "as recent as stored: nothing to write");
        assert!(touch(&r, 999).is_none(), "an older touch (a racing request) never moves it back");
    }

    #[test]
    fn an_update_raises_the_version_under_its_preconditions() {
        let r = row();
        let n = update(&r, None, None, 2_000, Some(b"v2"), None).unwrap();
        assert_eq!((n.version, &*n.data, n.serial), (2, &b"v2"[..], 7));
        // Compare-and-swap on the version, and on the serial it was authorised under.
        assert!(matches!(update(&r, Some(1), Some(7), 2_000, Some(b"v2"), None), Ok(n) if n.version == 2));
        assert!(matches!(update(&r, Some(2), None, 2_000, Some(b"v2"), None), Err(Error::Conflict { current: 1 })));
        assert!(matches!(update(&r, None, Some(8), 2_000, Some(b"v2"), None), Err(Error::Conflict { current: 1 })));
        // A new absolute deadline without data keeps the data.
        let e = update(&r, None, None, 2_000, None, Some(Expires { at: 9_000, now: 2_000 })).unwrap();
        assert_eq!((e.expires_at, &*e.data, e.version), (9_000, &b"v1"[..], 2));
        // An expired row (idle: 60 s after its stored last_seen) is not brought back.
        assert!(matches!(update(&r, None, None, 61_000, Some(b"v2"), None), Err(Error::NotFound)));
        assert!(update(&r, None, None, 60_999, Some(b"v2"), None).is_ok());
    }

    #[test]
    fn a_rotation_needs_the_presented_secret_and_a_live_row() {
        let r = row();
        let n = rotate(&r, &SecretHash([5; 32]), 99, SecretHash([6; 32]), 3_000).unwrap();
        assert_eq!((n.serial, n.number, n.last_seen, n.created_at, n.version), (99, 7, 3_000, 1_000, 1));
        assert!(n.secret_hash.matches(&SecretHash([6; 32])));
        assert_eq!((n.id, &*n.user, &*n.data, n.expires_at), (r.id, "alice", &b"v1"[..], r.expires_at));
        // A concurrent rotation won (the stored secret is another).
        assert!(matches!(rotate(&r, &SecretHash([4; 32]), 99, SecretHash([6; 32]), 3_000), Err(Error::NotFound)));
        assert!(matches!(rotate(&r, &SecretHash([5; 32]), 99, SecretHash([6; 32]), 61_000), Err(Error::NotFound)));
    }

    #[test]
    fn a_family_op_is_refused_once_the_serial_it_was_authorised_under_is_gone() {
        let r = row();
        assert!(family_authorised(&r, 7, 2_000).is_ok());
        assert!(matches!(family_authorised(&r, 6, 2_000), Err(Error::Revoked)), "rotated since");
        assert!(matches!(family_authorised(&r, 7, 61_000), Err(Error::Expired)));
        let rotated = r.rotated(8, SecretHash([6; 32]), 2_000);
        assert!(matches!(family_authorised(&rotated, 7, 2_000), Err(Error::Revoked)));
    }

    #[test]
    fn a_create_never_overwrites_a_row_it_was_not_told_to_replace() {
        let r = row();
        assert!(matches!(create(None, Replace::Nothing), Ok(None)));
        assert!(matches!(create(Some(&r), Replace::Nothing), Err(Error::Conflict { current: 1 })));
        assert!(matches!(create(Some(&r), Replace::Serial(7)), Ok(Some(old)) if old.serial == 7));
        // Another save replaced it first (a lost race): re-read and retry.
        assert!(matches!(create(Some(&r), Replace::Serial(6)), Err(Error::Conflict { current: 1 })));
        assert!(matches!(create(None, Replace::Serial(7)), Err(Error::Conflict { current: 0 })));
    }

    #[test]
    fn user_scoped_work_touches_only_that_users_rows() {
        let r = row();
        assert!(owned_by(&r, "alice"));
        assert!(!owned_by(&r, "bob"));
        assert!(!owned_by(&r, "alic"));
        assert!(!owned_by(&r, "alice "));
    }

    #[test]
    fn a_series_stores_its_marker_first_and_removes_it_last() {
        assert_eq!(cut_change(true, true), Some(true), "first of several steps: store the marker");
        assert_eq!(cut_change(false, true), None, "a middle step");
        assert_eq!(cut_change(false, false), Some(false), "the last step: remove it");
        assert_eq!(cut_change(true, false), None, "one step does it all: no marker");
    }

    #[test]
    fn only_a_rotation_or_a_grace_retry_counts_as_activity() {
        use crate::refresh::{FamilyReply, Verdict};
        let reply = |verdict| FamilyReply { verdict, family: 1, claims: Vec::new() };
        assert!(!accepted(None), "no family op ran (e.g. refused before)");
        assert!(accepted(Some(&reply(Verdict::Rotated(2)))));
        assert!(accepted(Some(&reply(Verdict::Current(2)))), "a retry inside the grace window");
        assert!(!accepted(Some(&reply(Verdict::Reuse { current: 3 }))));
        assert!(!accepted(Some(&reply(Verdict::Ahead))));
        assert!(!accepted(Some(&reply(Verdict::Dead))));
    }

    #[test]
    fn cap_revokes_the_oldest_or_refuses() {
        let c = Cap { max: 2, on_limit: OnLimit::RevokeOldest };
        assert_eq!(cap(c, vec![(5, 1, 1)]).unwrap(), vec![]);
        assert_eq!(cap(c, vec![(9, 3, 3), (5, 1, 1)]).unwrap(), vec![(5, 1, 1)]);
        assert_eq!(cap(c, vec![(9, 3, 3), (5, 1, 1), (7, 2, 2)]).unwrap(), vec![(5, 1, 1), (7, 2, 2)]);
        // Time first: number 1026 of another node's block, created first.
        assert_eq!(cap(c, vec![(9, 2, 2), (5, 1026, 1026), (7, 3, 3)]).unwrap(), vec![(5, 1026, 1026), (7, 3, 3)]);
        // Same millisecond: the number, not the serial a rotation changed.
        assert_eq!(cap(c, vec![(5, 1, 9), (5, 2, 2), (5, 3, 3)]).unwrap(), vec![(5, 1, 9), (5, 2, 2)]);
        let r = Cap { max: 2, on_limit: OnLimit::Refuse };
        assert!(matches!(cap(r, vec![(9, 3, 3), (5, 1, 1)]), Err(Error::SessionLimit { max: 2 })));
        assert_eq!(cap(r, vec![(9, 3, 3)]).unwrap(), vec![]);
    }

    #[test]
    fn a_user_cut_refuses_what_it_covers_and_keeps_the_kept() {
        let keep = SessionId::from_bytes([7; 16]);
        let other = SessionId::from_bytes([8; 16]);
        let all = crate::backend::op::UserCut { at: 5_000, except: None };
        assert!(cut_refuses(&all, &other));
        assert!(cut_refuses(&all, &keep));
        let others = crate::backend::op::UserCut { at: 5_000, except: Some((keep, 42)) };
        assert!(!cut_refuses(&others, &keep));
        assert!(cut_refuses(&others, &other));
        assert!(cut_refuses_access(&all, 42));
        assert!(!cut_refuses_access(&others, 42), "the kept session's serial");
        assert!(cut_refuses_access(&others, 43));
    }

    #[test]
    fn a_user_cut_key_round_trips_with_any_user_text() {
        let keep = SessionId::from_bytes([7; 16]);
        for cut in [
            crate::backend::op::UserCut { at: 9, except: None },
            crate::backend::op::UserCut { at: 1, except: Some((keep, 3)) },
        ] {
            for user in ["bob", "a:b:c", "::", "\u{0}x"] {
                assert_eq!(crate::backend::op::UserCut::parse(&cut.key(user)), Some((user.to_owned(), cut)));
            }
        }
        assert_eq!(crate::backend::op::UserCut::parse("x::0:bob"), None);
        assert_eq!(crate::backend::op::UserCut::parse("1::0:"), None);
    }
}
