//! Access-token verification, bearer authentication, and whether a cached
//! entry may answer without I/O.

use super::Store;
use crate::error::{Error, JwtError, Malformed};
use crate::jwt::AccessClaims;
use crate::token::SessionId;
use crate::token::{REFRESH_PREFIX, SESSION_PREFIX, looks_like_jwt};

impl Store {
    /// Whether a cached copy of a session may answer a validate at `now`
    /// without asking the backend. A node of a shared backend answers from its
    /// cache only while it is following the other nodes' writes, and only
    /// within the staleness bound.
    pub(super) fn cache_may_answer(&self, rec: &crate::session::Record, now: u64) -> bool {
        self.inner
            .coherence
            .as_ref()
            .is_none_or(|c| c.fresh(rec.live.fetched.load(std::sync::atomic::Ordering::Relaxed), now))
    }

    /// Verifies an access token: length cap, compact JWS, header, signature,
    /// claims and time (with leeway), then the session's revocation bit by `sid`
    /// and the user's not-before by `iat`. No I/O.
    ///
    /// # Errors
    /// [`Error::Jwt`] with the reason, or [`Error::Revoked`].
    pub fn verify_access(&self, jwt: &str) -> Result<AccessClaims, Error> {
        let inner = &self.inner;
        if jwt.len() > inner.config.max_token_len {
            return Err(JwtError::Malformed.into());
        }
        self.live()?;
        let c = inner.keyring.verify(jwt, &inner.policy, inner.config.clock.now())?;
        if inner.table.revocation.is_revoked(c.sid) {
            return Err(Error::Revoked);
        }
        // Second resolution: tokens issued in the cut-off second pass this check,
        // but their sessions were revoked by serial in the same logout.
        if inner.table.revocation.not_before(&c.sub).is_some_and(|nb| c.iat < nb / 1000) {
            return Err(Error::Revoked);
        }
        Ok(c)
    }

    /// Authenticates a bearer credential: an access JWT or an opaque session
    /// token, with or without a `Bearer ` prefix. The common hybrid pattern
    /// (JWT first, session-table fallback) in one call.
    ///
    /// # Errors
    /// [`Error::Malformed`] (`WrongKind` for a refresh token, which is never
    /// accepted here); otherwise as [`Store::validate`] or [`Store::verify_access`].
    pub fn authenticate(&self, bearer: &str) -> Result<Principal, Error> {
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
    }

    /// Is the session this token names in the cache? (Then `validate` does no
    /// I/O and may run on an async worker.) Parses only; no secret check.
    #[cfg(any(feature = "axum", feature = "actix"))]
    pub(crate) fn is_cached(&self, token: &str) -> bool {
        self.parse_session(token).is_ok_and(|t| self.is_cached_id(&t.tok.id()))
    }

    /// Is session `id` in the cache? (See [`Store::is_cached`].)
    #[cfg(any(feature = "axum", feature = "actix", feature = "tower-sessions", feature = "tower-sessions-015"))]
    pub(crate) fn is_cached_id(&self, id: &SessionId) -> bool {
        self.inner.table.cache.peek(id).is_some()
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
