//! Access and refresh tokens: issue, refresh, key retirement.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use super::handle::{MAX_CLAIMS_LEN, Store};
use crate::backend::contract::Wait;
use crate::backend::op::{Op, Outcome};
use crate::error::{Error, InputError, JwtError};
use crate::events::{Event, RevokeReason};
use crate::jwt::{AccessClaims, RESERVED_CLAIMS};
use crate::refresh::FamilyFn;
use crate::refresh::{FamilyReply, Verdict};
use crate::token::RefreshToken;
use crate::token::SessionId;
use crate::token::unpack;

/// Whom an access token is minted for: the session's user, serial and deadline.
pub(super) struct Holder<'a> {
    id: SessionId,
    user: &'a str,
    serial: u64,
    /// The session's absolute deadline (ms): the refresh token's end.
    expires_at: u64,
    /// When the session would end if not seen again (ms): the absolute
    /// deadline or, sooner, the idle deadline counted from this request.
    deadline: u64,
}

impl Store {
    /// Retires an access-token key: it stops signing and keeps verifying until
    /// every token it signed has expired (access TTL + leeway from now).
    ///
    /// # Errors
    /// [`Error::Config`] if the kid is unknown or still the signing key.
    pub fn retire_key(&self, kid: &str) -> Result<(), Error> {
        let until = self.inner.config.clock.now() + std::time::Duration::from_millis(self.inner.horizon_ms);
        let r = self.inner.keyring.retire(kid, until);
        if r.is_ok() {
            tracing::info!(kid, "access-token key retired (verifies until every token it signed expired)");
        }
        r
    }

    /// Issues an access token and a refresh token for a valid session.
    ///
    /// # Errors
    /// As [`Store::validate`]; [`Error::Storage`] if the family could not be stored.
    pub fn issue_tokens(&self, session_token: &str) -> Result<TokenPair, Error> {
        self.issue_tokens_with(session_token, BTreeMap::new())
    }

    /// As [`Store::issue_tokens`], with application claims (e.g. `roles`) put in
    /// every access token of this session, including those minted by `refresh`.
    ///
    /// # Errors
    /// [`Error::Input`] if a claim name is reserved (iss, aud, sub, sid, jti, iat,
    /// nbf, exp) or the claims exceed 4 KiB; otherwise as [`Store::issue_tokens`].
    pub fn issue_tokens_with(
        &self,
        session_token: &str,
        claims: BTreeMap<String, serde_json::Value>,
    ) -> Result<TokenPair, Error> {
        crate::telemetry::run(
            tracing::debug_span!("tokens.issue", backend = self.backend_name(), outcome = tracing::field::Empty),
            "tokens.issue",
            true,
            || {
                if let Some(k) = claims.keys().find(|k| RESERVED_CLAIMS.contains(&k.as_str())) {
                    return Err(InputError::ReservedClaim(k.clone()).into());
                }
                let claims_json = serde_json::to_vec(&claims).map_err(|e| InputError::ClaimsNotJson(e.to_string()))?;
                if claims_json.len() > MAX_CLAIMS_LEN {
                    return Err(InputError::ClaimsTooLarge { len: claims_json.len(), max: MAX_CLAIMS_LEN }.into());
                }
                let session = self.validate(session_token)?;
                let now = self.now_ms();
                let deadline = session.expires_at;
                let f = crate::refresh::issue(now, deadline, claims_json);
                let reply = self.family_op(session.id(), session.serial(), f)?.ok_or(Error::NotFound)?;
                let Verdict::Rotated(generation) = reply.verdict else { return Err(Error::NotFound) };
                self.emit(|| Event::Refreshed { session: session.id(), generation });
                let holder = Holder {
                    id: session.id(),
                    user: session.user(),
                    serial: session.serial(),
                    expires_at: session.expires_at,
                    deadline: session.deadline_ms(),
                };
                self.pair(&holder, reply.family, generation, &reply.claims, now)
            },
        )
    }

    /// A refresh-family op on session `id`, authorised against its `serial`
    /// (refused if the session was rotated since).
    pub(super) fn family_op(&self, id: SessionId, serial: u64, f: FamilyFn) -> Result<Option<FamilyReply>, Error> {
        let prune_after = self.prune_after(self.now_ms());
        let now = self.now_ms();
        match self.live()?.table.submit(Op::Family { id, serial, now, prune_after, f }, Wait::Durable)? {
            Outcome::Family { reply, .. } => Ok(reply),
            _ => Ok(None),
        }
    }

    pub(super) fn pair(
        &self,
        rec: &Holder<'_>,
        family: u32,
        generation: u64,
        claims_json: &[u8],
        now_ms: u64,
    ) -> Result<TokenPair, Error> {
        let inner = &self.inner;
        let now_s = now_ms / 1000;
        // Never outlive the session: the token (with the verifier's leeway)
        // must be dead by the time the session could have ended, absolute or
        // idle (the idle deadline only moves later with activity), so no
        // revocation entry is needed for a session that expires.
        let exp = access_exp(now_s, inner.config.access_ttl.as_secs(), rec.deadline, inner.config.leeway.as_secs());
        let extra = if claims_json.is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_slice(claims_json).map_err(|_| Error::Jwt(JwtError::Signing))?
        };
        let mut jti = [0u8; 16];
        crate::token::os_random(&mut jti)?;
        let claims = AccessClaims {
            iss: inner.policy.issuer.clone(),
            aud: inner.policy.audience.clone(),
            sub: rec.user.to_string(),
            sid: rec.serial,
            jti: format!("{:032x}", u128::from_be_bytes(jti)),
            iat: now_s,
            nbf: now_s,
            exp,
            extra,
        };
        Ok(TokenPair {
            access: inner.keyring.sign(&claims)?,
            refresh: inner.derived.mint(rec.id, family, generation),
            access_expires_at: std::time::UNIX_EPOCH + Duration::from_secs(exp),
            refresh_expires_at: crate::clock::from_millis(rec.expires_at),
        })
    }

    /// Rotates a refresh token: returns a new access token and a new refresh
    /// token, and retires the presented one. Re-checks the session (revoked,
    /// expired, idle, user not-before) and counts as activity. Always durable.
    ///
    /// Replaying an older generation revokes the session (see [`crate::Reuse`]);
    /// concurrent refreshes with the same token rotate exactly once.
    ///
    /// # Errors
    /// [`Error::Malformed`]; [`Error::NotFound`] for a token this store did not
    /// mint (bad MAC, unknown session, or a generation ahead of the stored one);
    /// [`Error::Revoked`]; [`Error::Expired`]; [`Error::ReuseDetected`] (the
    /// session is now revoked); [`Error::Storage`].
    pub fn refresh(&self, refresh_token: &str) -> Result<TokenPair, Error> {
        crate::telemetry::run(
            tracing::debug_span!("refresh.rotate", backend = self.backend_name(), outcome = tracing::field::Empty),
            "refresh.rotate",
            true,
            || {
                let t = RefreshToken::parse(refresh_token)?;
                let inner = self.live()?;
                if !inner.derived.authentic(&t) {
                    return Err(Error::NotFound);
                }
                // A cached copy only under the validate hit's rule (on Redis: fresh
                // and following), else the backend's row.
                let now = self.now_ms();
                let cached = self.inner.table.cache.get(&t.id).filter(|r| self.inner.table.may_answer(r, now));
                let found = match cached {
                    Some(r) => Some(r),
                    None => self.inner.table.load(&t.id)?,
                };
                let Some(rec) = found else {
                    return Err(if inner.table.revocation.is_revoked_id(&t.id) {
                        Error::Revoked
                    } else {
                        Error::NotFound
                    });
                };

                self.inner.table.status(&rec, now)?;
                if inner.table.revocation.not_before(&rec.user).is_some_and(|nb| rec.created_at < nb) {
                    return Err(Error::Revoked);
                }
                let ((family, presented), reuse) = (unpack(t.generation), inner.config.reuse);
                let f = crate::refresh::rotate(family, presented, now, reuse);
                let reply = self.family_op(t.id, rec.serial, f)?.ok_or(Error::NotFound)?;
                match reply.verdict {
                    Verdict::Rotated(generation) | Verdict::Current(generation) => {
                        self.inner.table.touch(&rec, now);
                        if matches!(reply.verdict, Verdict::Rotated(_)) {
                            crate::telemetry::count("cloakroom.refresh.rotated", 1);
                            self.emit(|| Event::Refreshed { session: rec.id, generation });
                        } else {
                            crate::telemetry::count("cloakroom.refresh.grace", 1);
                        }
                        let holder = Holder {
                            id: rec.id,
                            user: &rec.user,
                            serial: rec.serial,
                            expires_at: rec.expires_at,
                            deadline: rec.deadline(now),
                        };
                        self.pair(&holder, family, generation, &reply.claims, now)
                    }
                    Verdict::Reuse { current } => {
                        // (The session table has revoked the session and evicted it.)
                        crate::telemetry::count("cloakroom.refresh.reuse", 1);
                        tracing::warn!(session = %rec.id, presented, current, "refresh token reuse detected: session revoked");
                        self.emit(|| Event::ReuseDetected {
                            session: rec.id,
                            user: rec.user.to_string(),
                            presented,
                            current,
                        });
                        self.emit(|| Event::Revoked { sessions: vec![rec.id], reason: RevokeReason::ReuseDetected });
                        Err(Error::ReuseDetected)
                    }
                    Verdict::Ahead | Verdict::Dead => Err(Error::NotFound),
                }
            },
        )
    }
}

/// A pair of tokens for one session: a short-lived access JWT and a refresh token.
#[derive(Clone)]
pub struct TokenPair {
    /// The access token (compact JWS, `typ: at+jwt`).
    pub access: String,
    /// The refresh token (`crr_…`). Rotates on every use.
    pub refresh: RefreshToken,
    /// When the access token expires.
    pub access_expires_at: SystemTime,
    /// When the refresh token stops working (the session's absolute deadline).
    pub refresh_expires_at: SystemTime,
}

impl fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPair")
            .field("access", &"<redacted>")
            .field("refresh", &self.refresh)
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .finish()
    }
}

/// An access token's `exp` (s): `ttl` from now, but early enough that it is
/// refused (even with `leeway`) from the second the session's `deadline` (ms)
/// falls in. The verifier refuses once `now_s ≥ exp + leeway` (whole seconds,
/// see `jwt::expired`), and the session is over once `now_ms ≥ deadline`, so
/// `exp` is at most `deadline / 1000 - leeway`. Near the deadline that is
/// before `now`: such a token lives only within the leeway, never past the
/// session.
fn access_exp(now_s: u64, ttl: u64, deadline_ms: u64, leeway: u64) -> u64 {
    (now_s + ttl).min((deadline_ms / 1000).saturating_sub(leeway))
}

#[cfg(test)]
mod tests {
    use super::access_exp;

    /// With the verifier's leeway, a token is accepted while `now_s < exp +
    /// leeway`; it must be refused at every second from the deadline on.
    #[test]
    fn an_access_token_dies_before_its_session() {
        let base = 1_700_000_000_000u64;
        for deadline_ms in [0, 999, 1000, 61_000, 61_999, 3_600_000].map(|d| base + d) {
            for leeway in [0, 1, 30] {
                for now_s in (base / 1000 - 100)..(deadline_ms / 1000) {
                    let exp = access_exp(now_s, 300, deadline_ms, leeway);
                    assert!(exp <= now_s + 300);
                    // The first whole second at or past the deadline:
                    let first_dead_s = deadline_ms / 1000;
                    assert!(first_dead_s >= exp + leeway, "deadline {deadline_ms} leeway {leeway} now {now_s}");
                }
            }
        }
        // Far from the deadline, the full TTL.
        assert_eq!(access_exp(1_000_000, 300, 10_000_000_000, 30), 1_000_300);
    }
}
