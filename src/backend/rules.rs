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

/// Decides the cap at a create: given the serials of the user's live
/// sessions, the ones to revoke (oldest first) so the new one fits, or
/// `Refused` under [`OnLimit::Refuse`](OnLimit::Refuse). Oldest is the
/// lowest serial: the session signed in longest ago (a rotation, done on
/// sign-in and privilege change, gives a new serial). Both backends (the
/// Redis CREATE script sorts by `ser` the same way).
pub(crate) fn cap(cap: Cap, mut live: Vec<u64>) -> Result<Vec<u64>, Error> {
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
/// its user created at `created_at` (ms) with this id: created at or before
/// the revocation began, and not the one it keeps.
pub(crate) fn cut_refuses(cut: &UserCut, created_at: u64, id: &SessionId) -> bool {
    created_at <= cut.at && cut.except.is_none_or(|(keep, _)| keep != *id)
}

/// As [`cut_refuses`] for an access token issued at `iat` (Unix seconds)
/// under session serial `sid`. A token of the same second as the cut is
/// refused (fail closed: seconds cannot order it).
pub(crate) fn cut_refuses_access(cut: &UserCut, iat: u64, sid: u64) -> bool {
    iat <= cut.at / 1000 && cut.except.is_none_or(|(_, keep)| keep != sid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_revokes_the_oldest_or_refuses() {
        let c = Cap { max: 2, on_limit: OnLimit::RevokeOldest };
        assert_eq!(cap(c, vec![1]).unwrap(), Vec::<u64>::new());
        assert_eq!(cap(c, vec![3, 1]).unwrap(), vec![1]);
        assert_eq!(cap(c, vec![3, 1, 2]).unwrap(), vec![1, 2]);
        let r = Cap { max: 2, on_limit: OnLimit::Refuse };
        assert!(matches!(cap(r, vec![3, 1]), Err(Error::SessionLimit { max: 2 })));
        assert_eq!(cap(r, vec![3]).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn a_user_cut_refuses_what_it_covers_and_keeps_the_kept() {
        let keep = SessionId::from_bytes([7; 16]);
        let other = SessionId::from_bytes([8; 16]);
        let all = crate::backend::op::UserCut { at: 5_000, except: None };
        assert!(cut_refuses(&all, 5_000, &other), "created at the cut: refused");
        assert!(!cut_refuses(&all, 5_001, &other), "created after: untouched");
        let others = crate::backend::op::UserCut { at: 5_000, except: Some((keep, 42)) };
        assert!(!cut_refuses(&others, 10, &keep));
        assert!(cut_refuses(&others, 10, &other));
        assert!(cut_refuses_access(&all, 5, 1), "same second: refused (fail closed)");
        assert!(!cut_refuses_access(&all, 6, 1));
        assert!(!cut_refuses_access(&others, 1, 42), "the kept session's serial");
        assert!(cut_refuses_access(&others, 1, 43));
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
