//! Login, logout and token endpoints as helpers on [`Web`]. Every store write
//! runs on the blocking pool.

use axum::Json;
use axum::http::HeaderMap;
use axum_extra::extract::cookie::CookieJar;
use serde::Serialize;

use super::error::WebError;
use super::layer::Auth;
use super::layer::{check_csrf_token, check_origin};
use super::web::{Web, blocking};
use crate::error::Error;
use crate::session::NewSession;
use crate::session::Session;
use crate::store::Scope;
use crate::token::RefreshToken;
use crate::token::SessionId;

/// The result of [`Web::login`]. Its `Debug` output redacts the CSRF token.
#[derive(Clone)]
pub struct LoggedIn {
    /// The new session.
    pub session: Session,
    /// Its CSRF token (for the next page's forms).
    pub csrf_token: String,
}

impl std::fmt::Debug for LoggedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedIn").field("session", &self.session).field("csrf_token", &"<redacted>").finish()
    }
}

/// The JSON body of the token endpoints (OAuth 2.0 token response shape).
#[derive(Clone, Serialize)]
pub struct AccessTokenResponse {
    /// The access JWT: send it as `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The session's CSRF token, for the `x-csrf-token` header of the next
    /// refresh call.
    pub csrf_token: String,
}

impl std::fmt::Debug for AccessTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokenResponse").field("expires_in", &self.expires_in).finish_non_exhaustive()
    }
}

impl Web {
    fn now(&self) -> std::time::SystemTime {
        self.store().config().clock().now()
    }

    /// Signs in: revokes the session the request's cookie names, if any
    /// (session-fixation defence: a token planted before login dies, and the
    /// new session has a new id and secret), creates `new`, and sets the
    /// session cookie. Check the password before calling this. The pre-login
    /// session's data is not carried over: read it first (e.g. an anonymous
    /// cart) and pass it in `new` if you need it.
    ///
    /// # Errors
    /// [`WebError::BadRequest`] for invalid session input; store failures.
    pub async fn login(&self, jar: CookieJar, new: NewSession) -> Result<(CookieJar, LoggedIn), WebError> {
        let store = self.store().clone();
        let pre_login = jar.get(&self.config().session.name).map(|c| c.value().to_owned());
        let issued = blocking(move || {
            if let Some(old) = pre_login {
                match store.validate(&old) {
                    Ok(s) => match store.revoke(s.id()) {
                        Ok(()) | Err(Error::NotFound | Error::Revoked) => {}
                        Err(e) => return Err(e),
                    },
                    Err(Error::Storage(e)) => return Err(Error::Storage(e)),
                    Err(_) => {} // already dead
                }
            }
            store.create(new)
        })
        .await?;
        let cookie = self.config().session.build(issued.token.to_string(), issued.session.expires_at(), self.now());
        let csrf_token = self.csrf_token(&issued.session);
        let jar = jar.add(cookie).remove(self.config().refresh.removal());
        Ok((jar, LoggedIn { session: issued.session, csrf_token }))
    }

    /// Signs out this session: revokes it (and with it its refresh families
    /// and access tokens) and deletes both cookies.
    ///
    /// # Errors
    /// [`WebError::BadRequest`] when an access JWT authenticated (sign out
    /// with the session cookie or token); store failures.
    pub async fn logout(&self, jar: CookieJar, auth: &Auth) -> Result<CookieJar, WebError> {
        let id =
            auth.session_id().ok_or_else(|| WebError::BadRequest("sign out needs the session, not a JWT".into()))?;
        let store = self.store().clone();
        blocking(move || match store.revoke(id) {
            Ok(()) | Err(Error::NotFound | Error::Revoked) => Ok(()),
            Err(e) => Err(e),
        })
        .await?;
        Ok(self.clear(jar))
    }

    /// Signs the user out everywhere: every session revoked, every access
    /// token issued before now refused. Deletes this client's cookies.
    /// Returns how many sessions were revoked.
    ///
    /// # Errors
    /// Store failures.
    pub async fn logout_everywhere(&self, jar: CookieJar, auth: &Auth) -> Result<(CookieJar, usize), WebError> {
        let (store, user) = (self.store().clone(), auth.user().to_owned());
        let n = blocking(move || store.logout_everywhere(&user)).await?;
        Ok((self.clear(jar), n))
    }

    /// Revokes one of the caller's own sessions (a "your devices" page).
    ///
    /// # Errors
    /// [`WebError::Forbidden`] if the session is not the caller's (or does
    /// not exist: no oracle on other users' ids); store failures.
    pub async fn revoke_device(&self, auth: &Auth, id: SessionId) -> Result<(), WebError> {
        let (store, user) = (self.store().clone(), auth.user().to_owned());
        // Whose session it is is decided with the revocation, where the row
        // is: an id another user's session took since (an adapter's user
        // change keeps the id) is not revoked.
        blocking(move || store.revoke_owned(id, &user)).await?.then_some(()).ok_or(WebError::Forbidden)
    }

    /// Revokes every session of the caller except the current one
    /// ("sign out everywhere else"). Returns how many were revoked.
    ///
    /// # Errors
    /// Store failures.
    pub async fn revoke_others(&self, auth: &Auth) -> Result<usize, WebError> {
        let (store, user) = (self.store().clone(), auth.user().to_owned());
        // One durable batch through the store's own scope (an access JWT names
        // no session to keep: all of the user's sessions end).
        let scope = auth.session_id().map_or(Scope::All, Scope::Others);
        blocking(move || store.revoke_user(&user, scope)).await
    }

    /// The token endpoint: for a session-authenticated caller, issues an
    /// access JWT (in the JSON body) and a new refresh family whose token goes
    /// in the `HttpOnly` refresh cookie, scoped to the refresh path.
    ///
    /// # Errors
    /// [`WebError::BadRequest`] when an access JWT authenticated; store failures.
    pub async fn issue_tokens(
        &self,
        jar: CookieJar,
        auth: &Auth,
    ) -> Result<(CookieJar, Json<AccessTokenResponse>), WebError> {
        let token = auth
            .session_token()
            .ok_or_else(|| WebError::BadRequest("tokens are issued for a session, not for a JWT".into()))?
            .to_owned();
        let store = self.store().clone();
        let pair = blocking(move || store.issue_tokens(&token)).await?;
        let csrf = auth.csrf_token().unwrap_or_default();
        Ok(self.token_response(jar, pair, csrf))
    }

    /// The refresh endpoint: rotates the refresh token from the refresh
    /// cookie (reuse of an old one revokes the session), after the CSRF
    /// checks (`Origin`, `Sec-Fetch-Site`, and the `x-csrf-token` header for
    /// the token's session at its current serial). A refresh token the store refuses (malformed,
    /// unknown, expired, revoked, replayed) has its cookie deleted; a failed
    /// CSRF check or a store failure (503 busy, 500 storage or closed) keeps
    /// it, so the client can retry.
    ///
    /// # Errors
    /// `(jar, error)`: 401 for a missing, dead or replayed refresh token, 403
    /// for a failed CSRF check, store failures.
    pub async fn refresh(
        &self,
        jar: CookieJar,
        headers: &HeaderMap,
    ) -> Result<(CookieJar, Json<AccessTokenResponse>), (CookieJar, WebError)> {
        let unauth = WebError::Unauthenticated { redirect: None };
        let Some(value) = jar.get(&self.config().refresh.name).map(|c| c.value().to_owned()) else {
            return Err((jar, unauth));
        };
        let Ok(parsed) = RefreshToken::parse(&value) else {
            return Err((self.clear_refresh(jar), unauth));
        };
        if let Err(e) = check_origin(self, headers) {
            return Err((jar, e));
        }
        // The CSRF token is bound to the session's current serial.
        let (store, id) = (self.store().clone(), parsed.session_id());
        let session = match blocking(move || store.session(id)).await {
            Ok(Some(s)) => s,
            // No live session: the store would refuse the token.
            Ok(None) => return Err((self.clear_refresh(jar), unauth)),
            Err(e) => return Err((jar, e)),
        };
        if let Err(e) = check_csrf_token(self, &session, headers) {
            return Err((jar, e));
        }
        let store = self.store().clone();
        match blocking(move || store.refresh(&value)).await {
            Ok(pair) => {
                // (A rotation since the lookup would have retired this refresh token.)
                let csrf = self.csrf_token(&session);
                Ok(self.token_response(jar, pair, csrf))
            }
            // Only a token the store refused is dead: after a transient failure
            // (busy, storage, closed) the client retries with the same cookie.
            Err(e) if e.refuses_credential() => Err((self.clear_refresh(jar), e)),
            Err(e) => Err((jar, e)),
        }
    }

    fn token_response(
        &self,
        jar: CookieJar,
        pair: crate::store::TokenPair,
        csrf_token: String,
    ) -> (CookieJar, Json<AccessTokenResponse>) {
        let now = self.now();
        let cookie = self.config().refresh.build(pair.refresh.to_string(), pair.refresh_expires_at, now);
        let expires_in = pair.access_expires_at.duration_since(now).map_or(0, |d| d.as_secs());
        let body = AccessTokenResponse { access_token: pair.access, token_type: "Bearer", expires_in, csrf_token };
        (jar.add(cookie), Json(body))
    }

    fn clear_refresh(&self, jar: CookieJar) -> CookieJar {
        jar.remove(self.config().refresh.removal())
    }

    fn clear(&self, jar: CookieJar) -> CookieJar {
        self.clear_refresh(jar).remove(self.config().session.removal())
    }
}
