//! cloakroom in an [axum] 0.8 app (feature `axum`).
//!
//! One middleware authenticates every request once — the session cookie, or an
//! `Authorization: Bearer` access JWT or session token, through
//! [`Store::authenticate`](crate::store::Store::authenticate) — and enforces CSRF on
//! cookie-authenticated unsafe requests. Handlers then take [`Auth`] (required:
//! 401, or a redirect for page navigations) or `Option<Auth>`. [`Web`] holds
//! the helpers for login (with session-fixation defence), logout, logout
//! everywhere, and the token endpoints (an access JWT in the response, the
//! refresh token in an `HttpOnly` cookie scoped to the refresh path).
//!
//! ```no_run
//! use axum::{Router, routing::get, middleware};
//! use cloakroom::axum::{Auth, Web, WebConfig};
//! use cloakroom::{Config, Store};
//!
//! # fn main() -> Result<(), cloakroom::Error> {
//! let store = Store::open("sessions.redb", Config::default())?;
//! let web = Web::new(store, WebConfig::default())?;
//! let app: Router = Router::new()
//!     .route("/me", get(|auth: Auth| async move { auth.user().to_owned() }))
//!     .layer(middleware::from_fn_with_state(web.clone(), cloakroom::axum::authenticate))
//!     .with_state(web);
//! # Ok(()) }
//! ```
//!
//! # Async rule
//!
//! No fsync and no Redis round trip runs on a runtime worker thread. A
//! validate runs inline only when it will do no I/O: its session is cached
//! and the cached copy may answer (on a Redis-backed store: the node is
//! following and the copy is within the staleness bound of its read) — a few
//! hundred nanoseconds. Every other validate (a miss, a stale copy, any while
//! the node is not following), and every write (login, logout, token issue
//! and refresh), runs on tokio's blocking pool (`spawn_blocking`). Access
//! tokens are verified inline: `verify_access` never does I/O.
//!
//! # Cookies
//!
//! Defaults: the session cookie `__Host-session` and the refresh cookie
//! `__Secure-refresh` (`Path=/auth/refresh`), both `HttpOnly`, `Secure`,
//! `SameSite=Lax`, no `Domain`. Every attribute is configurable; a setting the
//! browser would silently drop (a `__Host-` cookie that is not `Secure`, has a
//! `Domain` or a path other than `/`) is refused by [`Web::new`]. Plain-HTTP
//! development needs [`WebConfig::insecure_dev_mode_plain_http`], by name.
//!
//! # CSRF
//!
//! A cookie-authenticated `POST`/`PUT`/`PATCH`/`DELETE` must carry the
//! session's synchronizer token ([`Auth::csrf_token`]: a keyed hash of the
//! session id and serial under a key derived from the server key, so
//! [`Store::rotate`](crate::store::Store::rotate) retires it) in the `x-csrf-token`
//! header or a `csrf_token` form field, compared in constant time; and its
//! `Origin` (when sent) must be an allowed origin and its `Sec-Fetch-Site`
//! (when sent) `same-origin` or `none`. Bearer-authenticated requests are
//! exempt (a browser never attaches a bearer on its own). A refused request
//! gets 403 with a plain-text reason and never reaches the handler.

mod config;
mod csrf;
mod endpoints;
mod error;
mod layer;

use std::sync::Arc;

use crate::error::Error;
use crate::store::Store;

pub use config::{CookieSettings, Unauthenticated, WebConfig};
pub use endpoints::{AccessTokenResponse, LoggedIn};
pub use error::WebError;
pub use layer::{Auth, authenticate};

/// The web layer's state: the store, the cookie and CSRF settings, and the
/// CSRF key. Cheap to clone (shared); use it as (part of) the router state.
#[derive(Clone)]
pub struct Web {
    inner: Arc<WebInner>,
}

struct WebInner {
    store: Store,
    config: WebConfig,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Web {
    /// Wraps a store with web settings.
    ///
    /// # Errors
    /// [`Error::Config`] for cookie settings a browser would drop or that
    /// weaken the defaults without [`WebConfig::insecure_dev_mode_plain_http`].
    pub fn new(store: Store, config: WebConfig) -> Result<Web, Error> {
        config.check()?;
        Ok(Web { inner: Arc::new(WebInner { store, config }) })
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &WebConfig {
        &self.inner.config
    }

    /// The CSRF token of a session as it is now (what [`Auth::csrf_token`]
    /// returns for it): bound to its id and serial, so it changes when the
    /// session is rotated.
    #[must_use]
    pub fn csrf_token(&self, session: &crate::session::Session) -> String {
        csrf::token(self.inner.store.csrf_key(), &session.id(), session.serial())
    }
}

/// Runs a blocking store call on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, WebError> {
    crate::blocking::run(f).await.map_err(WebError::from)
}
