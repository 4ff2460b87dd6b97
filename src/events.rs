//! Session events for audit logs and alerts. They carry ids, never secrets.

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
}

/// Something that happened to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A session was created.
    Created {
        /// The new session.
        session: SessionId,
        /// Its user.
        user: String,
    },
    /// `rotate` gave a session a new secret and serial. The id stays the same
    /// for the session's whole life (`old == new`); the old token and the old
    /// serial (and so every access token naming it) are dead.
    Rotated {
        /// The session id before rotation.
        old: SessionId,
        /// The session id after rotation (the same id).
        new: SessionId,
    },
    /// Access and refresh tokens were issued or rotated.
    Refreshed {
        /// The session.
        session: SessionId,
        /// The refresh generation now current.
        generation: u64,
    },
    /// An old refresh token was replayed; the session was revoked. Alert on this.
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
    /// Sessions were revoked.
    Revoked {
        /// The sessions.
        sessions: Vec<SessionId>,
        /// Why.
        reason: RevokeReason,
    },
    /// A validate found the session expired.
    Expired {
        /// The session.
        session: SessionId,
    },
    /// A stored session row failed its authentication tag or did not decode
    /// (the file was damaged, or edited without the server key). The request
    /// that read it failed closed; `cloakroom verify` lists every such row.
    CorruptRow {
        /// The session whose row is damaged.
        session: SessionId,
    },
    /// `logout_everywhere` ran for a user.
    LogoutEverywhere {
        /// The user.
        user: String,
        /// How many sessions were revoked.
        sessions: usize,
    },
}

/// A callback receiving events, set with `ConfigBuilder::on_event`. Called on the
/// thread that made the call, after the change is durable; keep it fast (e.g.
/// push into a channel).
pub type EventHandler = Arc<dyn Fn(&Event) + Send + Sync>;
