//! Revocation: one session, a user's sessions (in bounded steps), and
//! logout everywhere.

use super::{Scope, Store};
use crate::backend::rules::{self};
use crate::backend::{Op, Outcome, Wait};
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
        crate::telemetry::run(
            tracing::debug_span!("session.revoke", backend = self.backend_name(), session = %id, outcome = tracing::field::Empty),
            "session.revoke",
            true,
            || {
                let prune_after = self.prune_after(self.now_ms());
                // Fail closed even if the writer never reaches the op (e.g. the database
                // cannot be reopened): refuse the session in memory first.
                match self.inner.table.lookup(&id) {
                    Ok(Some(rec)) => self.inner.table.refuse(&[(rec.serial, id)]),
                    Ok(None) => {}
                    // The row cannot be read (storage fault): refuse the id whatever its
                    // serial turns out to be, so it cannot validate once the disk recovers.
                    Err(_) => {
                        self.inner.table.revocation.block_id(id);
                        self.inner.table.cache.remove(&id);
                    }
                }
                let ids = self.revoke_op(Op::Revoke { id, prune_after })?;
                if !ids.is_empty() {
                    self.emit(|| Event::Revoked { sessions: ids, reason: RevokeReason::Session });
                }
                Ok(())
            },
        )
    }

    /// Revokes a user's sessions: all of them, or all but one. Returns how many
    /// were revoked. Durable.
    ///
    /// # Errors
    /// [`Error::Input`] for an invalid user id; [`Error::Storage`] as for [`Store::revoke`].
    pub fn revoke_user(&self, user: &str, scope: Scope) -> Result<usize, Error> {
        crate::telemetry::run(
            tracing::debug_span!("session.revoke_user", backend = self.backend_name(), outcome = tracing::field::Empty),
            "session.revoke_user",
            true,
            || {
                check_user(user)?;
                let except = match scope {
                    Scope::All => None,
                    Scope::Others(id) => Some(id),
                };
                let prune_after = self.prune_after(self.now_ms());
                self.revoke_in_memory(user, except);
                let ids = self.revoke_user_steps(Op::RevokeUser {
                    user: user.into(),
                    except,
                    limit: USER_STEP,
                    prune_after,
                })?;
                let n = ids.len();
                if n > 0 {
                    let reason = if except.is_some() { RevokeReason::OthersOfUser } else { RevokeReason::AllOfUser };
                    self.emit(|| Event::Revoked { sessions: ids, reason });
                }
                Ok(n)
            },
        )
    }

    /// Best effort, before a user-wide revocation is submitted: refuse the user's
    /// stored sessions in memory, so a failed commit still fails closed.
    pub(super) fn revoke_in_memory(&self, user: &str, except: Option<SessionId>) {
        if let Ok(recs) = self.inner.table.backend.list_user(user) {
            let pairs: Vec<(u64, SessionId)> = recs
                .iter()
                .filter(|r| Some(r.id) != except && rules::owned_by(r, user))
                .map(|r| (r.serial, r.id))
                .collect();
            self.inner.table.refuse(&pairs);
        }
    }

    /// Runs a user-wide revocation as a series of bounded steps (`first`,
    /// then `RevokeUser` ops of the same scope) until the user has none of the
    /// sessions left: no single op, journal record or Redis script grows with
    /// the user's session count, and other callers' writes interleave with
    /// the steps. The caller has refused the user's sessions in memory
    /// first, so readers see the whole revocation at once; each step is
    /// durable before the next starts.
    pub(super) fn revoke_user_steps(&self, first: Op) -> Result<Vec<SessionId>, Error> {
        let (user, except, prune_after) = match &first {
            Op::RevokeUser { user, except, prune_after, .. } => (user.clone(), *except, *prune_after),
            Op::LogoutEverywhere { user, prune_after, .. } => (user.clone(), None, *prune_after),
            _ => return self.revoke_op(first),
        };
        let mut ids = Vec::new();
        let mut op = first;
        loop {
            match self.live()?.table.submit(op, Wait::Durable)? {
                Outcome::RevokedUser { revoked, more } => {
                    ids.extend(revoked.iter().map(|r| r.id));
                    if !more {
                        return Ok(ids);
                    }
                }
                Outcome::Revoked(list) => {
                    ids.extend(list.iter().map(|r| r.id));
                    return Ok(ids);
                }
                _ => return Ok(ids),
            }
            op = Op::RevokeUser { user: user.clone(), except, limit: USER_STEP, prune_after };
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
                self.revoke_in_memory(user, None);
                let prune_after = self.prune_after(now);
                let first = Op::LogoutEverywhere { user: user.into(), at: now, limit: USER_STEP, prune_after };
                let ids = self.revoke_user_steps(first)?;
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
