//! Revocation: one session, a user's sessions (in bounded steps), and
//! logout everywhere.

use super::handle::{Scope, Store};
use crate::backend::contract::Wait;
use crate::backend::op::{Op, Outcome, UserCut};
use crate::backend::rules::{self};
use crate::error::Error;
use crate::events::{Event, RevokeReason};
use crate::session::check_user;
use crate::token::SessionId;

impl Store {
    /// Revokes one session. Durable; after it returns no validate on any thread
    /// succeeds. Revoking an unknown or already revoked id is not an error.
    ///
    /// # Errors
    /// [`Error::Storage`] if the commit failed: the session is still refused in
    /// this process (fail closed), but retry so the revocation is persisted.
    pub fn revoke(&self, id: SessionId) -> Result<(), Error> {
        self.revoke_one(id, None).map(drop)
    }

    /// Revokes session `id` only if it is `user`'s: the check and the
    /// revocation are one decision where the row is (an id whose session was
    /// replaced by another user's since the caller looked is left alone).
    /// Returns whether it revoked. For the web layer's devices page.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn revoke_owned(&self, id: SessionId, user: &str) -> Result<bool, Error> {
        check_user(user)?; // (an empty owner would mean "any" to the Redis script)
        self.revoke_one(id, Some(user))
    }

    fn revoke_one(&self, id: SessionId, owner: Option<&str>) -> Result<bool, Error> {
        crate::telemetry::run(
            tracing::debug_span!("session.revoke", backend = self.backend_name(), session = %id, outcome = tracing::field::Empty),
            "session.revoke",
            true,
            || {
                let prune_after = self.prune_after(self.now_ms());
                // Fail closed even if the writer never reaches the op (e.g. the database
                // cannot be reopened): refuse the session in memory first — for an
                // owner's revocation, only a row of that owner.
                match self.inner.table.lookup(&id) {
                    Ok(Some(rec)) if owner.is_none_or(|u| rules::owned_by(&rec, u)) => {
                        self.inner.table.refuse(&[(rec.serial, id)]);
                    }
                    Ok(_) => {}
                    // The row cannot be read (storage fault): refuse the id whatever its
                    // serial turns out to be, so it cannot validate once the disk recovers
                    // (not for an owner's revocation: whose row it is cannot be known).
                    Err(_) if owner.is_none() => {
                        self.inner.table.revocation.block_id(id);
                        self.inner.table.cache.remove(&id);
                    }
                    Err(_) => {}
                }
                let ids = self.revoke_op(Op::Revoke { id, owner: owner.map(Into::into), prune_after })?;
                let revoked = !ids.is_empty();
                if revoked {
                    self.emit(|| Event::Revoked { sessions: ids, reason: RevokeReason::Session });
                }
                Ok(revoked)
            },
        )
    }

    /// Revokes a user's sessions: all of them, or all but one. Returns how many
    /// were revoked. Durable, and atomic to readers: once it returns (or, after
    /// a crash mid-way, once the store is reopened) none of them validates, on
    /// any node, however many bounded steps it took.
    ///
    /// # Errors
    /// [`Error::Input`] for an invalid user id; [`Error::Storage`] as for
    /// [`Store::revoke`] (the user's sessions stay refused: fail closed; the
    /// next open finishes the revocation).
    pub fn revoke_user(&self, user: &str, scope: Scope) -> Result<usize, Error> {
        crate::telemetry::run(
            tracing::debug_span!("session.revoke_user", backend = self.backend_name(), outcome = tracing::field::Empty),
            "session.revoke_user",
            true,
            || {
                check_user(user)?;
                let except = match scope {
                    Scope::All => None,
                    Scope::Others(id) => Some((id, self.kept_serial(user, id))),
                };
                let now = self.now_ms();
                let ids = self.revoke_user_at(user, UserCut { at: now, except }, None, now)?;
                let n = ids.len();
                if n > 0 {
                    let reason = if except.is_some() { RevokeReason::OthersOfUser } else { RevokeReason::AllOfUser };
                    self.emit(|| Event::Revoked { sessions: ids, reason });
                }
                Ok(n)
            },
        )
    }

    /// The serial of the session a `Scope::Others` revocation keeps (its access
    /// tokens carry it); 0 (none) when it is not a session of this user.
    fn kept_serial(&self, user: &str, id: SessionId) -> u64 {
        match self.inner.table.lookup(&id) {
            Ok(Some(rec)) if rules::owned_by(&rec, user) => rec.serial,
            _ => 0,
        }
    }

    /// A user-wide revocation: the marker refuses the covered sessions in
    /// memory at once (a failed commit still fails closed), and the bounded
    /// durable steps store it, revoke, and remove it.
    fn revoke_user_at(
        &self,
        user: &str,
        cut: UserCut,
        not_before: Option<u64>,
        now: u64,
    ) -> Result<Vec<SessionId>, Error> {
        // The marker refuses every session of the user but the kept one, in
        // memory at once (no read of the user's rows), before any step.
        self.live()?.table.revocation.add_cut(user, cut, true);
        let ids = self.revoke_user_steps(user, cut, not_before, true, self.prune_after(now))?;
        // An older series of this user that stopped (a failed step, or a
        // node that died mid-way) is finished now, not left refusing.
        self.finish_user_revocations(Some(user), u64::MAX);
        Ok(ids)
    }

    /// Runs a user-wide revocation as a series of bounded `RevokeUser` steps
    /// until the user has none of the sessions left: no single op, journal
    /// record or Redis script grows with the user's session count, and other
    /// callers' writes interleave with the steps. Each step is durable before
    /// the next starts; the first stores the marker `cut` (unless it finished
    /// the series), the last removes it. `first` is false when an open
    /// finishes a series a crash interrupted.
    fn revoke_user_steps(
        &self,
        user: &str,
        cut: UserCut,
        not_before: Option<u64>,
        first: bool,
        prune_after: u64,
    ) -> Result<Vec<SessionId>, Error> {
        let ids = self.run_steps(user, cut, not_before, first, prune_after);
        match ids {
            Ok(ids) => {
                // Every session the marker covered is revoked now (and the
                // stored marker is gone with the last step).
                self.inner.table.revocation.remove_cut(user, &cut);
                Ok(ids)
            }
            Err(e) => {
                // Stays refusing (fail closed); a later revocation of the
                // user, the sweeper or the next open finishes it.
                self.inner.table.revocation.stop_cut(user, &cut);
                Err(e)
            }
        }
    }

    fn run_steps(
        &self,
        user: &str,
        cut: UserCut,
        not_before: Option<u64>,
        first: bool,
        prune_after: u64,
    ) -> Result<Vec<SessionId>, Error> {
        let mut ids = Vec::new();
        let mut first = first;
        loop {
            let op = Op::RevokeUser {
                user: user.into(),
                cut,
                first,
                not_before: not_before.filter(|_| first),
                limit: USER_STEP,
                prune_after,
            };
            match self.live()?.table.submit(op, Wait::Durable)? {
                Outcome::RevokedUser { revoked, more } => {
                    ids.extend(revoked.iter().map(|r| r.id));
                    if !more {
                        break;
                    }
                }
                _ => break,
            }
            first = false;
        }
        Ok(ids)
    }

    /// Finishes the user-wide revocations a crash, a failed step or a dead
    /// node left unfinished (markers no thread of this process runs), of
    /// `user` or of everyone, begun at or before `before` (ms): at open,
    /// before the store is handed out (all of them); after a user's series
    /// (that user's); from the sweep (those older than a minute, so another
    /// node's live series is left to it). A failure leaves the marker
    /// refusing what it covers (fail closed) for the next try.
    pub(crate) fn finish_user_revocations(&self, user: Option<&str>, before: u64) {
        for (user, cut) in self.inner.table.revocation.unfinished(user, before) {
            let prune_after = self.prune_after(self.now_ms());
            self.inner.table.revocation.add_cut(&user, cut, true);
            match self.revoke_user_steps(&user, cut, None, false, prune_after) {
                Ok(ids) => {
                    tracing::info!(
                        sessions = ids.len(),
                        "finished a user-wide revocation an earlier run left unfinished"
                    );
                    if !ids.is_empty() {
                        let reason =
                            if cut.except.is_some() { RevokeReason::OthersOfUser } else { RevokeReason::AllOfUser };
                        self.emit(|| Event::Revoked { sessions: ids, reason });
                    }
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not finish an interrupted user-wide revocation: its sessions stay refused; retried by the next sweep or open"
                ),
            }
        }
    }

    /// Submits a revoking op; returns the ids it revoked (the session table
    /// has applied them to the bitmap and the cache).
    pub(super) fn revoke_op(&self, op: Op) -> Result<Vec<SessionId>, Error> {
        match self.live()?.table.submit(op, Wait::Durable)? {
            Outcome::Revoked(list) => Ok(list.iter().map(|r| r.id).collect()),
            _ => Ok(Vec::new()),
        }
    }

    /// Logs a user out everywhere: revokes all their sessions (and with them
    /// their refresh families and live access tokens) and sets a persisted
    /// not-before, so access tokens issued before now fail `verify_access` at
    /// once. Durable. Returns how many sessions were revoked.
    ///
    /// # Errors
    /// [`Error::Input`] for an invalid user id; [`Error::Storage`] (the cut-off
    /// still applies in this process: fail closed; retry to persist it).
    pub fn logout_everywhere(&self, user: &str) -> Result<usize, Error> {
        crate::telemetry::run(
            tracing::debug_span!(
                "session.logout_everywhere",
                backend = self.backend_name(),
                outcome = tracing::field::Empty
            ),
            "session.logout_everywhere",
            true,
            || {
                check_user(user)?;
                let now = self.now_ms();
                self.live()?.table.revocation.set_not_before(user, now);
                let ids = self.revoke_user_at(user, UserCut { at: now, except: None }, Some(now), now)?;
                let n = ids.len();
                self.emit(|| Event::LogoutEverywhere { user: user.to_owned(), sessions: n });
                if n > 0 {
                    self.emit(|| Event::Revoked { sessions: ids, reason: RevokeReason::LogoutEverywhere });
                }
                Ok(n)
            },
        )
    }
}

/// Sessions one step of a user-wide revocation revokes at most.
const USER_STEP: usize = 256;
