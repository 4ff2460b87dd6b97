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
mod web;

pub use config::{CookieSettings, Unauthenticated, WebConfig};
pub use endpoints::{AccessTokenResponse, LoggedIn};
pub use error::WebError;
pub use layer::{Auth, authenticate};
pub use web::Web;
