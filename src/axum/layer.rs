//! The middleware that authenticates each request once, and the [`Auth`]
//! extractor that reads its result.

use axum::body::Body;
use axum::extract::{FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;

use super::config::{Unauthenticated, WebConfig};
use super::csrf;
use super::error::WebError;
use super::web::Web;
use crate::error::Error;
use crate::jwt::AccessClaims;
use crate::session::Session;
use crate::store::Principal;
use crate::store::Source;
use crate::token::SessionId;

/// The authenticated caller of a request, put there by [`authenticate`].
///
/// As an extractor it requires a credential: without one the request gets
/// 401 (or a redirect to the login page for page navigations, see
/// [`Unauthenticated`]). Take `Option<Auth>` where signing in is optional.
#[derive(Clone)]
pub struct Auth {
    principal: Principal,
    via_cookie: bool,
    /// The session token that authenticated (cookie or bearer), kept to issue
    /// access tokens for it. Never printed.
    session_token: Option<String>,
    /// The CSRF key (a copy: no shared counter touched per request); the
    /// token is computed only when a page asks for it.
    csrf_key: [u8; 32],
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("user", &self.principal.user)
            .field("serial", &self.principal.serial)
            .field("session", &self.principal.session)
            .field("via_cookie", &self.via_cookie)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// The user id.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.principal.user
    }

    /// The session serial (the access token's `sid`).
    #[must_use]
    pub fn serial(&self) -> u64 {
        self.principal.serial
    }

    /// The session id, when a session token (cookie or bearer) authenticated;
    /// `None` for an access JWT.
    #[must_use]
    pub fn session_id(&self) -> Option<SessionId> {
        self.principal.session
    }

    /// Did the session cookie authenticate (so CSRF checks applied)?
    #[must_use]
    pub fn via_cookie(&self) -> bool {
        self.via_cookie
    }

    /// Which kind of credential authenticated.
    #[must_use]
    pub fn source(&self) -> Source {
        self.principal.source
    }

    /// The verified access-token claims, when an access JWT authenticated.
    #[must_use]
    pub fn claims(&self) -> Option<&AccessClaims> {
        self.principal.claims.as_ref()
    }

    /// The session's CSRF token, to put in forms (`csrf_token` field) or in
    /// the `x-csrf-token` header of `fetch` calls. `None` for an access JWT.
    /// Bound to the session's serial: after [`crate::store::Store::rotate`] the
    /// session has a new token (render it from the request that carries the
    /// new session cookie).
    #[must_use]
    pub fn csrf_token(&self) -> Option<String> {
        self.principal.session.map(|id| csrf::token(&self.csrf_key, &id, self.principal.serial))
    }

    pub(crate) fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }
}

/// What the middleware found, as a request extension.
#[derive(Clone)]
enum Credential {
    Signed(Box<Auth>),
    Anonymous { redirect: Option<String> },
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Credential>() {
            Some(Credential::Signed(a)) => Ok(Auth::clone(a)),
            Some(Credential::Anonymous { redirect }) => Err(WebError::Unauthenticated { redirect: redirect.clone() }),
            None => Err(WebError::Internal("the cloakroom::axum::authenticate middleware is not installed")),
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Auth {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        match parts.extensions.get::<Credential>() {
            Some(Credential::Signed(a)) => Ok(Some(Auth::clone(a))),
            Some(Credential::Anonymous { .. }) => Ok(None),
            None => Err(WebError::Internal("the cloakroom::axum::authenticate middleware is not installed")),
        }
    }
}

/// The middleware: install with
/// `axum::middleware::from_fn_with_state(web.clone(), cloakroom::axum::authenticate)`.
///
/// Reads the session cookie and any `Authorization: Bearer` credential,
/// authenticates them (inline when the validate will do no I/O — a fresh cached copy —, else on the
/// blocking pool), refuses a cookie and a bearer that name different sessions
/// (401), runs the CSRF checks on unsafe requests that are not
/// bearer-authenticated (403), and records the result for [`Auth`]. A session
/// cookie that no longer authenticates is deleted in the response.
pub async fn authenticate(State(web): State<Web>, req: Request, next: Next) -> Response {
    match run(&web, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(web: &Web, req: Request, next: Next) -> Result<Response, WebError> {
    let config = web.config();
    let (mut parts, body) = req.into_parts();
    let cookie_bytes: usize = parts.headers.get_all(header::COOKIE).iter().map(HeaderValue::len).sum();
    let auth_headers: Vec<&HeaderValue> = parts.headers.get_all(header::AUTHORIZATION).iter().collect();
    if cookie_bytes > config.max_credential_header_bytes
        || auth_headers.iter().any(|v| v.len() > config.max_credential_header_bytes)
    {
        return Err(WebError::HeaderTooLarge);
    }
    let bearer = match auth_headers.as_slice() {
        [] => None,
        [one] => bearer_credential(one),
        _ => return Err(WebError::Unauthenticated { redirect: None }), // ambiguous
    };
    let jar = CookieJar::from_headers(&parts.headers);
    let cookie = jar.get(&config.session.name).map(|c| c.value().to_owned());

    let by_bearer = match bearer {
        Some(b) => Some(principal(web, b).await?),
        None => None,
    };
    let by_cookie = match &cookie {
        Some(c) => Some(principal(web, c.clone()).await?),
        None => None,
    };
    let unsafe_method = csrf::is_unsafe(&parts.method);
    let clear_cookie = matches!(by_cookie, Some(Err(_)));
    let found = match (by_bearer, by_cookie) {
        (Some(Ok(b)), Some(Ok(c))) if b.principal.serial != c.principal.serial => {
            return Err(WebError::CredentialsDisagree);
        }
        (Some(Ok(b)), _) => Credential::Signed(Box::new(b)),
        (Some(Err(_)), _) => Credential::Anonymous { redirect: None },
        (None, Some(Ok(mut c))) => {
            c.via_cookie = true;
            c.session_token = cookie;
            Credential::Signed(Box::new(c))
        }
        (None, _) => Credential::Anonymous { redirect: redirect_for(&parts.method, &parts.headers, config) },
    };
    let mut body = body;
    if unsafe_method && !matches!(&found, Credential::Signed(a) if !a.via_cookie) {
        if let Some(why) = csrf::origin_problem(&parts.headers, config) {
            return Err(WebError::Csrf(why));
        }
        if let Credential::Signed(a) = &found {
            let (ok, rebuilt) = token_presented(web, a, &parts.headers, body).await?;
            if !ok {
                return Err(WebError::Csrf("missing or wrong CSRF token"));
            }
            body = rebuilt;
        }
    }
    parts.extensions.insert(found);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if clear_cookie
        && !sets_cookie(&response, &config.session.name)
        && let Ok(v) = HeaderValue::from_str(&config.session.removal().to_string())
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(response)
}

/// Authenticates one credential; `Err` inside for a refused credential,
/// outside for a failure of the store (500/503).
async fn principal(web: &Web, credential: String) -> Result<Result<Auth, Error>, WebError> {
    let store = web.store().clone();
    let cached_or_jwt = !credential.starts_with(crate::token::SESSION_PREFIX) || store.is_cached(&credential);
    let r = if cached_or_jwt {
        store.authenticate(&credential)
    } else {
        let c = credential.clone();
        crate::blocking::run(move || Ok(store.authenticate(&c))).await.map_err(WebError::from)?
    };
    match r {
        Ok(p) => {
            let session_token = p.session.map(|_| credential);
            let csrf_key = *web.store().csrf_key();
            Ok(Ok(Auth { principal: p, via_cookie: false, session_token, csrf_key }))
        }
        Err(e) => match WebError::from(e.clone()) {
            WebError::Unauthenticated { .. } => Ok(Err(e)),
            other => Err(other),
        },
    }
}

/// The credential of an `Authorization: Bearer …` header; other schemes are ignored.
fn bearer_credential(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let (scheme, rest) = s.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_owned())
}

/// A page navigation (GET/HEAD accepting HTML) is redirected when so configured.
fn redirect_for(method: &Method, headers: &HeaderMap, config: &WebConfig) -> Option<String> {
    let Unauthenticated::RedirectPages(to) = &config.unauthenticated else { return None };
    let page = matches!(*method, Method::GET | Method::HEAD)
        && headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    page.then(|| to.clone())
}

/// Checks the CSRF token in the header, or else in an urlencoded form body
/// (read up to the configured limit and handed on unchanged).
async fn token_presented(web: &Web, a: &Auth, headers: &HeaderMap, body: Body) -> Result<(bool, Body), WebError> {
    let Some(id) = a.session_id() else { return Ok((false, body)) };
    let (key, serial) = (web.store().csrf_key(), a.serial());
    if let Some(ok) = csrf::header_matches(key, &id, serial, headers) {
        return Ok((ok, body));
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Ok((false, body));
    }
    let bytes = axum::body::to_bytes(body, web.config().max_form_bytes).await.map_err(|_| WebError::BodyTooLarge)?;
    let ok = csrf::form_field(&bytes).is_some_and(|t| csrf::matches(key, &id, serial, &t));
    Ok((ok, Body::from(bytes)))
}

fn sets_cookie(r: &Response, name: &str) -> bool {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split_once('=').is_some_and(|(n, _)| n.trim() == name)))
}

/// The `Origin` / `Sec-Fetch-Site` half of the CSRF checks, for a request
/// checked outside the middleware (the refresh endpoint).
pub(crate) fn check_origin(web: &Web, headers: &HeaderMap) -> Result<(), WebError> {
    match csrf::origin_problem(headers, web.config()) {
        Some(why) => Err(WebError::Csrf(why)),
        None => Ok(()),
    }
}

/// The token half of the CSRF checks outside the middleware: the
/// `x-csrf-token` header must hold the token of `session` as it is now.
pub(crate) fn check_csrf_token(web: &Web, session: &Session, headers: &HeaderMap) -> Result<(), WebError> {
    if csrf::header_matches(web.store().csrf_key(), &session.id(), session.serial(), headers) == Some(true) {
        Ok(())
    } else {
        Err(WebError::Csrf("missing or wrong CSRF token"))
    }
}
