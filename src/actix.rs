//! An [actix-session] 0.11 session store backed by cloakroom (feature
//! `actix`): swap `RedisSessionStore`/`CookieSessionStore` for
//! [`CloakroomStore`] in `SessionMiddleware` and keep the app's code,
//! actix-identity included.
//!
//! ```no_run
//! # fn app() -> Result<(), cloakroom::Error> {
//! use actix_session::SessionMiddleware;
//! use actix_web::cookie::Key;
//! use cloakroom::{Config, Store, actix::CloakroomStore};
//!
//! let store = Store::open("sessions.redb", Config::default())?;
//! let middleware = SessionMiddleware::new(CloakroomStore::new(store.clone()), Key::generate());
//! // App::new().wrap(middleware)...; later, from an admin page:
//! store.revoke_user("user-42", cloakroom::Scope::All)?; // their next request is anonymous
//! # Ok(()) }
//! ```
//!
//! # What is stored
//!
//! The session key actix-session puts in its cookie is a cloakroom session
//! token (`crs_…`: 128-bit id, 256-bit secret, keyed tag), so a forged or
//! foreign cookie is refused by a tag check before any lookup, and the store
//! keeps only the secret's hash. The session state (actix-session's string
//! map) is stored as the session's data (JSON), the TTL as its absolute
//! deadline (moved by `update` and `update_ttl`), and the user is read from
//! actix-identity's `"actix_identity.user_id"` entry when present, so
//! [`Store::list_user`], [`Store::revoke_user`] and
//! [`Store::logout_everywhere`] work on these sessions. A session with no
//! user is filed under a placeholder ([`ANONYMOUS`] unless set otherwise).
//!
//! # Semantics
//!
//! - **Renewal** (`Session::renew`, which actix-identity's `login` calls) is
//!   delete + save in actix-session: the old key is revoked and the state
//!   moves to a new session with a new token (a new session id on a devices
//!   page; [`Store::rotate`] would keep it).
//! - **A user change without renewal** (state written with a new
//!   `actix_identity.user_id`) revokes the old session and creates a new one
//!   under the new user; `update` returns the new key, so the cookie changes
//!   (no session fixation). Should the create fail, the old session is
//!   already gone: the caller gets the error and is signed out, and no
//!   session is left alive that nobody holds a key to.
//! - **A revoked session stays revoked**: an `update` or `update_ttl` for a
//!   session revoked (or expired) after the request loaded it writes nothing
//!   and keeps the dead key, so the next request arrives anonymous. (actix's
//!   Redis store would save the state under a fresh key instead, logging the
//!   user back in.)
//! - **Last writer wins**: actix-session writes the whole state with no
//!   version, like its other stores.
//!
//! # Threads
//!
//! A load whose session is in cloakroom's cache runs on the actix worker (no
//! I/O); every other call runs on the blocking pool.
//!
//! [actix-session]: https://docs.rs/actix-session/0.11

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time::Duration as Ttl;

use crate::error::Error;
use crate::session::NewSession;
use crate::session::Session;
use crate::store::Store;

/// The user a session with no user is filed under (see [`CloakroomStore::anonymous_user`]).
pub const ANONYMOUS: &str = "actix-session:anonymous";

/// The state key actix-identity 0.9 keeps the logged-in user's id under.
pub const IDENTITY_KEY: &str = "actix_identity.user_id";

/// actix-session's session state.
type State = HashMap<String, String>;

/// An `actix_session::storage::SessionStore` over a cloakroom [`Store`].
/// Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct CloakroomStore {
    store: Store,
    anonymous: Arc<str>,
}

impl std::fmt::Debug for CloakroomStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloakroomStore").field("anonymous", &self.anonymous).finish_non_exhaustive()
    }
}

/// A store call's failure, for actix-session's `anyhow` errors. Keeps the
/// typed [`Error`] as the source (`err.downcast_ref::<cloakroom::Error>()`).
fn other(e: Error) -> anyhow::Error {
    anyhow::Error::new(e)
}

impl CloakroomStore {
    /// A session store over `store`.
    #[must_use]
    pub fn new(store: Store) -> Self {
        Self { store, anonymous: ANONYMOUS.into() }
    }

    /// Files sessions with no user under `user` instead of [`ANONYMOUS`].
    #[must_use]
    pub fn anonymous_user(mut self, user: impl Into<String>) -> Self {
        self.anonymous = user.into().into();
        self
    }

    /// The cloakroom store underneath (for `list_user`, `revoke_user`, stats).
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The user of a state: actix-identity's id (stored JSON-encoded by
    /// actix-session; a JSON string is unquoted), else the placeholder.
    fn user(&self, state: &State) -> String {
        match state.get(IDENTITY_KEY) {
            Some(raw) => match serde_json::from_str::<serde_json::Value>(raw) {
                Ok(serde_json::Value::String(s)) => s,
                _ => raw.clone(),
            },
            None => self.anonymous.to_string(),
        }
    }

    /// The live session of `key`: validated (secret, revocation, expiry)
    /// before anything acts on it. `None` for an unknown, revoked, expired,
    /// malformed or foreign key.
    async fn live(&self, key: &SessionKey) -> Result<Option<Session>, Error> {
        let token = key.as_ref();
        let found = if self.store.is_cached(token) {
            self.store.validate(token)
        } else {
            let (t, store) = (token.to_owned(), self.store.clone());
            crate::blocking::run(move || Ok(store.validate(&t))).await?
        };
        match found {
            Ok(s) => Ok(Some(s)),
            Err(Error::NotFound | Error::Revoked | Error::Expired | Error::Malformed(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        crate::blocking::run(move || f(&store)).await
    }

    /// Creates a session holding `state` for `ttl`; returns its key.
    async fn create(&self, state: &State, ttl: &Ttl) -> Result<SessionKey, SaveError> {
        let data = serde_json::to_vec(state).map_err(|e| SaveError::Serialization(e.into()))?;
        self.create_encoded(self.user(state), data, ttl).await
    }

    /// Creates a session for `user` holding `data` (the state as JSON) for `ttl`.
    async fn create_encoded(&self, user: String, data: Vec<u8>, ttl: &Ttl) -> Result<SessionKey, SaveError> {
        // The placeholder user of anonymous sessions is never capped.
        let how = crate::store::Creation { capped: *user != *self.anonymous, ..crate::store::Creation::RANDOM };
        let new = NewSession::new(user).data(data).ttl(lifetime(ttl)).without_idle_timeout();
        let issued = self
            .blocking(move |s| s.create_with(new, crate::token::SessionToken::generate, how))
            .await
            .map_err(|e| SaveError::Other(other(e)))?;
        SessionKey::try_from(issued.token.to_string()).map_err(|e| SaveError::Other(e.into()))
    }
}

/// A TTL as a session lifetime (at least 1 ms: actix never asks for less).
fn lifetime(ttl: &Ttl) -> Duration {
    Duration::from_millis(u64::try_from(ttl.whole_milliseconds()).unwrap_or(0).max(1))
}

/// actix-session's TTL as an absolute deadline from the store's clock.
fn deadline(store: &Store, ttl: &Ttl) -> u64 {
    store.now_ms().saturating_add(u64::try_from(lifetime(ttl).as_millis()).unwrap_or(u64::MAX))
}

impl SessionStore for CloakroomStore {
    async fn load(&self, key: &SessionKey) -> Result<Option<State>, LoadError> {
        let Some(session) = self.live(key).await.map_err(|e| LoadError::Other(other(e)))? else {
            return Ok(None);
        };
        serde_json::from_slice(session.data()).map(Some).map_err(|e| LoadError::Deserialization(e.into()))
    }

    async fn save(&self, state: State, ttl: &Ttl) -> Result<SessionKey, SaveError> {
        self.create(&state, ttl).await
    }

    async fn update(&self, key: SessionKey, state: State, ttl: &Ttl) -> Result<SessionKey, UpdateError> {
        let up = |e: Error| UpdateError::Other(other(e));
        let Some(current) = self.live(&key).await.map_err(up)? else {
            return Ok(key); // revoked or expired since the load: stays dead
        };
        let data = serde_json::to_vec(&state).map_err(|e| UpdateError::Serialization(e.into()))?;
        let user = self.user(&state);
        if current.user() != user {
            // The old session goes first: should the create then fail, the
            // caller gets an error and no session lives on that nobody holds
            // a key to (fail closed: signed out, never two live sessions).
            let id = current.id();
            self.blocking(move |s| s.revoke(id)).await.map_err(up)?;
            return self.create_encoded(user, data, ttl).await.map_err(|e| match e {
                SaveError::Serialization(e) => UpdateError::Serialization(e),
                SaveError::Other(e) => UpdateError::Other(e),
            });
        }
        let (id, ttl) = (current.id(), *ttl);
        self.blocking(move |s| s.rewrite(id, None, Some(data), deadline(s, &ttl))).await.map_err(up)?;
        Ok(key)
    }

    async fn update_ttl(&self, key: &SessionKey, ttl: &Ttl) -> Result<(), anyhow::Error> {
        let Some(current) = self.live(key).await.map_err(other)? else { return Ok(()) };
        let (id, ttl) = (current.id(), *ttl);
        self.blocking(move |s| s.rewrite(id, None, None, deadline(s, &ttl))).await.map_err(other)
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), anyhow::Error> {
        let Some(current) = self.live(key).await.map_err(other)? else { return Ok(()) };
        let id = current.id();
        self.blocking(move |s| s.revoke(id)).await.map_err(other)
    }
}
