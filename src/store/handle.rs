//! The [`Store`] handle and the value types of its public methods: the
//! store's shared state ([`Inner`]: config, session table, keyring, serial
//! allocation, follower and sweeper), `live()`, and close. (The status rule every read
//! applies lives in the session table: [`SessionTable::status`].)

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::serials::Serials;
use crate::backend::redb::open::LegacyTokens;
use crate::clock::to_millis;
use crate::config::Config;
use crate::error::{Error, InputError};
use crate::events::Event;
use crate::jwt::{Keyring, Policy};
use crate::keys::Derived;
use crate::session::Session;
use crate::sweeper::Sweeper;
use crate::table::SessionTable;
use crate::token::{SessionId, SessionToken};

/// Which of a user's sessions [`Store::revoke_user`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Every session of the user.
    All,
    /// Every session except this one ("sign out other devices").
    Others(SessionId),
}

/// A newly issued session: the token to hand to the client, and the session.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The bearer token. Send it to the client once (e.g. in a `Secure; HttpOnly` cookie);
    /// it cannot be recovered from the store.
    pub token: SessionToken,
    /// The stored session.
    pub session: Session,
}

/// A parsed session token whose tag checked out.
pub(super) struct Checked {
    pub(super) tok: SessionToken,
    /// Carries the pre-tag checksum (accepted only for sessions from before the tag).
    pub(super) legacy: bool,
}

/// The session and token store. Cheap to clone; all clones share one store.
///
/// Dropping the last clone closes it (flushes and joins the writer thread).
#[derive(Clone)]
pub struct Store {
    pub(super) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(super) table: SessionTable,
    pub(super) keyring: Keyring,
    pub(super) derived: Derived,
    pub(super) policy: Policy,
    pub(super) serials: Serials,
    /// The follower thread of a shared backend (joined at drop).
    pub(super) follower: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Which pre-tag session tokens this store still accepts.
    pub(super) legacy: LegacyTokens,
    /// How long a revocation entry, a not-before cut-off or a retired key
    /// must outlive its creation (ms): the largest access TTL + leeway any
    /// opener of this store recorded (issue 25 item 1), never just this config's.
    pub(super) horizon_ms: u64,
    pub(super) closed: AtomicBool,
    pub(super) sweeper: Option<Sweeper>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(s) = &self.sweeper {
            s.stop();
        }
        if let Some(c) = &self.table.coherence {
            c.stop();
        }
        if let Some(h) = self.follower.lock().take() {
            let _ = h.join();
        }
        let _ = self.table.backend.close();
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Store {
    /// The backend's name, for telemetry: `redb` or `redis`.
    pub(crate) fn backend_name(&self) -> &'static str {
        if self.inner.table.backend.shared() { "redis" } else { "redb" }
    }

    pub(super) fn live(&self) -> Result<&Inner, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(&self.inner)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        to_millis(self.inner.config.clock.now())
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(super) fn emit(&self, event: impl FnOnce() -> Event) {
        self.inner.table.emit(event);
    }

    /// The access-token keyring: add and promote keys, list them, export JWKS.
    #[must_use]
    pub fn keyring(&self) -> &Keyring {
        &self.inner.keyring
    }

    /// Flushes everything, stops the writer thread and releases the file. Every
    /// clone of this store is closed; later calls return [`Error::Closed`].
    /// Dropping the last clone does the same.
    ///
    /// # Errors
    /// [`Error::Storage`] if the final flush failed.
    pub fn close(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        if let Some(s) = &inner.sweeper {
            s.stop();
        }
        let r = inner.table.backend.close();
        match &r {
            Ok(()) => tracing::info!(backend = self.backend_name(), "store closed"),
            Err(e) => tracing::warn!(backend = self.backend_name(), error = %e, "store closed; its final flush failed"),
        }
        r
    }
}

/// Largest accepted application-claims object, serialized.
pub(super) const MAX_CLAIMS_LEN: usize = 4096;

pub(super) fn check_lifetime(what: &'static str, d: Duration) -> Result<(), Error> {
    if d.is_zero() || d > Duration::from_secs(100 * 365 * 24 * 3600) {
        return Err(InputError::Ttl(what).into());
    }
    Ok(())
}
