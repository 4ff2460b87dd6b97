//! Access-token verification, bearer authentication, and whether a cached
//! entry may answer without I/O.

use super::handle::Store;
use crate::error::{Error, JwtError, Malformed};
use crate::jwt::AccessClaims;
use crate::token::SessionId;
use crate::token::{REFRESH_PREFIX, SESSION_PREFIX, looks_like_jwt};

impl Store {
    /// Verifies an access token: length cap, compact JWS, header, signature,
    /// claims and time (with leeway), then the session's revocation bit by `sid`
    /// and the user's not-before by `iat`. No I/O.
    ///
    /// On a Redis-backed store the revocation state is this node's copy, kept
    /// current by its follower. A node whose follower has not been following
    /// for longer than the staleness bound (`RedisOptions::staleness`)
    /// may have missed revocations, so it refuses every access token until it
    /// follows again (fail closed); within the bound it answers from what it
    /// holds.
    ///
    /// # Errors
    /// [`Error::Jwt`] with the reason, or [`Error::Revoked`]; on Redis,
    /// [`Error::Storage`] of kind `Unavailable` from a node that has not been
    /// following for longer than the staleness bound, or `Wiped` after its
    /// store was wiped.
    pub fn verify_access(&self, jwt: &str) -> Result<AccessClaims, Error> {
        crate::telemetry::run(
            tracing::trace_span!("access.verify", backend = self.backend_name(), outcome = tracing::field::Empty),
            "access.verify",
            false,
            || {
                let inner = &self.inner;
                if jwt.len() > inner.config.max_token_len {
                    return Err(JwtError::Malformed.into());
                }
                self.live()?;
                let now = inner.config.clock.now();
                if let Some(c) = &inner.table.coherence {
                    c.usable()?;
                }
                let c = inner.keyring.verify(jwt, &inner.policy, now)?;
                if inner.table.revocation.is_revoked(c.sid) {
                    return Err(Error::Revoked);
                }
                // Second resolution: tokens issued in the cut-off second pass this check,
                // but their sessions were revoked by serial in the same logout.
                if inner.table.revocation.not_before(&c.sub).is_some_and(|nb| c.iat < nb / 1000)
                    || inner.table.revocation.cut_access(&c.sub, c.sid)
                {
                    return Err(Error::Revoked);
                }
                Ok(c)
            },
        )
    }

    /// Authenticates a bearer credential: an access JWT or an opaque session
    /// token, with or without a `Bearer ` prefix. The common hybrid pattern
    /// (JWT first, session-table fallback) in one call.
    ///
    /// # Errors
    /// [`Error::Malformed`] (`WrongKind` for a refresh token, which is never
    /// accepted here); otherwise as [`Store::validate`] or [`Store::verify_access`]
    /// (so on Redis a node that has not been following for longer than the
    /// staleness bound refuses access tokens with `Storage(Unavailable)`).
    pub fn authenticate(&self, bearer: &str) -> Result<Principal, Error> {
        crate::telemetry::run(
            tracing::trace_span!("authenticate", backend = self.backend_name(), outcome = tracing::field::Empty),
            "authenticate",
            false,
            || {
                if bearer.len() > self.inner.config.max_token_len {
                    return Err(Malformed::TooLong.into());
                }
                let cred = match bearer.get(..7) {
                    Some(p) if p.eq_ignore_ascii_case("bearer ") => &bearer[7..],
                    _ => bearer,
                };
                if cred.starts_with(REFRESH_PREFIX) {
                    return Err(Malformed::WrongKind.into());
                }
                if cred.starts_with(SESSION_PREFIX) {
                    let s = self.validate(cred)?;
                    return Ok(Principal {
                        user: s.user().to_owned(),
                        serial: s.serial(),
                        session: Some(s.id()),
                        source: Source::Session,
                        claims: None,
                    });
                }
                if looks_like_jwt(cred.as_bytes()) {
                    let c = self.verify_access(cred)?;
                    return Ok(Principal {
                        user: c.sub.clone(),
                        serial: c.sid,
                        session: None,
                        source: Source::AccessToken,
                        claims: Some(c),
                    });
                }
                Err(if cred.trim().is_empty() { Malformed::Empty } else { Malformed::WrongPrefix }.into())
            },
        )
    }

    /// Would a `validate` of this token now do no I/O? True when the session
    /// it names is cached and that copy may answer (see
    /// [`SessionTable::may_answer`](crate::table::SessionTable::may_answer): on Redis, while following and within the
    /// staleness bound), so the call may run inline on an async worker; false
    /// for a miss, a stale copy or a node that is not following, which read
    /// the backend. Parses only; no secret check. (A copy can turn stale in
    /// the instant between this and the validate: then that one validate
    /// reads the backend.)
    #[cfg(any(feature = "axum", feature = "actix"))]
    pub(crate) fn is_cached(&self, token: &str) -> bool {
        self.parse_session(token).is_ok_and(|t| self.is_cached_id(&t.tok.id()))
    }

    /// Would a `validate` of session `id` now do no I/O? (See [`Store::is_cached`].)
    #[cfg(any(feature = "axum", feature = "actix", feature = "tower-sessions", feature = "tower-sessions-015"))]
    pub(crate) fn is_cached_id(&self, id: &SessionId) -> bool {
        let now = self.now_ms();
        self.inner.table.cache.peek(id).is_some_and(|rec| self.inner.table.may_answer(&rec, now))
    }
}

/// What kind of bearer credential authenticated a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// An opaque session token (`crs_…`), checked against the session table.
    Session,
    /// An access JWT, checked by signature, claims and revocation.
    AccessToken,
}

/// Who is calling, as established by [`Store::authenticate`].
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user id.
    pub user: String,
    /// The session serial (the JWT `sid`).
    pub serial: u64,
    /// The session id, when the credential was a session token.
    pub session: Option<SessionId>,
    /// Which credential was presented.
    pub source: Source,
    /// The verified claims, when the credential was an access token.
    pub claims: Option<AccessClaims>,
}
