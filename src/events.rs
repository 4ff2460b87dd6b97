//! Session events for audit logs and alerts. They carry ids, never secrets.
//!
//! Each variant says when it fires. In short: an event that reports a write
//! fires after that write is durable, except [`Event::Created`] under
//! `Durability::Eventual` (fired once the create is queued, before it is
//! durable) and [`Event::Expired`] from a sweep (fired once the removal is
//! applied, durable or not); [`Event::Expired`] from a check and
//! [`Event::CorruptRow`] report what a read found and write nothing. A write
//! that fails emits nothing.

use std::sync::Arc;

use crate::token::SessionId;

/// Why sessions were revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevokeReason {
    /// `revoke` of one session.
    Session,
    /// `revoke_user` with `Scope::All`.
    AllOfUser,
    /// `revoke_user` with `Scope::Others`.
    OthersOfUser,
    /// Replaced by `rotate`.
    Rotated,
    /// A refresh token was replayed.
    ReuseDetected,
    /// `logout_everywhere`.
    LogoutEverywhere,
    /// A create past the user's session cap revoked the user's oldest
    /// session(s) (`ConfigBuilder::max_sessions_per_user` with `OnLimit::RevokeOldest`).
    SessionLimit,
}

/// Something that happened to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A session was created. With `Durability::Immediate`, fires after the
    /// create is durable. With `Durability::Eventual`, fires as soon as the
    /// create is queued for the writer (and the session cached), *before* it
    /// is durable: if its batch then fails to commit, the session is forgotten
    /// (counted in `Stats::lost_eventual_writes`) and no event says so.
    Created {
        /// The new session.
        session: SessionId,
        /// Its user.
        user: String,
    },
    /// `rotate` gave a session a new secret and serial. The id stays the same
    /// for the session's whole life (`old == new`); the old token and the old
    /// serial (and so every access token naming it) are dead. Fires after the
    /// rotation is durable, followed by [`Event::Revoked`] with
    /// [`RevokeReason::Rotated`].
    Rotated {
        /// The session id before rotation.
        old: SessionId,
        /// The session id after rotation (the same id).
        new: SessionId,
    },
    /// Access and refresh tokens were issued or rotated. Fires after the new
    /// refresh generation is durable (`issue_tokens`, `refresh`); not for a
    /// replay within the grace window, which returns the current pair and
    /// writes no new generation.
    Refreshed {
        /// The session.
        session: SessionId,
        /// The refresh generation now current.
        generation: u64,
    },
    /// An old refresh token was replayed; the session was revoked. Alert on
    /// this. Fires after the revocation is durable, followed by
    /// [`Event::Revoked`] with [`RevokeReason::ReuseDetected`].
    ReuseDetected {
        /// The session.
        session: SessionId,
        /// Its user.
        user: String,
        /// The generation presented.
        presented: u64,
        /// The generation that was current.
        current: u64,
    },
    /// Sessions were revoked. Fires after the revocation is durable, and only
    /// when it revoked at least one session. A revocation whose commit failed
    /// (the call returned `Error::Storage`) emits nothing, although the store
    /// already refuses those sessions in memory.
    Revoked {
        /// The sessions.
        sessions: Vec<SessionId>,
        /// Why.
        reason: RevokeReason,
    },
    /// A session was found past its absolute deadline or idle timeout.
    /// Either a check (validate, authenticate, issue_tokens, refresh) found it
    /// expired: nothing is written, and it fires each time a check finds it
    /// so (possibly more than once for one session); or a sweep removed it:
    /// fires once the removal is applied (visible to reads), not necessarily
    /// durable yet, on the thread that ran the sweep (the background sweeper's
    /// own thread, or the caller of `Store::sweep`).
    Expired {
        /// The session.
        session: SessionId,
    },
    /// A stored session row failed its authentication tag or did not decode
    /// (the file was damaged, or edited without the server key). The request
    /// that read it failed closed; `cloakroom verify` lists every such row.
    /// Fires when a read finds the damage; nothing is written.
    CorruptRow {
        /// The session whose row is damaged.
        session: SessionId,
    },
    /// `logout_everywhere` ran for a user. Fires after the not-before cut-off
    /// and the revocations are durable (then [`Event::Revoked`] follows if any
    /// session was revoked).
    LogoutEverywhere {
        /// The user.
        user: String,
        /// How many sessions were revoked.
        sessions: usize,
    },
}

/// A callback receiving events, set with `ConfigBuilder::on_event`. Called on
/// the thread that made the call (the sweeper's thread for the expiries it
/// finds), when each [`Event`] variant says: for most writes after the change
/// is durable, but not for an Eventual `Created` (before) or a sweep's
/// `Expired` (once applied). Keep it fast (e.g. push into a channel).
pub type EventHandler = Arc<dyn Fn(&Event) + Send + Sync>;
