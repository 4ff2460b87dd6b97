//! [`ReadOnlyStore`]: a read-only view of a store file for admin tools.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::clock::to_millis;
use crate::db::{Db, ReadOnly};
use crate::error::Error;
use crate::jwt::{KeyInfo, Keyring};
use crate::session::{Session, check_user};

/// A store file opened read-only (redb's read-only database): no byte of the
/// file is written, no file is created, and no writer or sweeper thread runs.
/// For admin tools (`cloakroom stats`, `sessions`, `keys`) and inspection.
///
/// Opening fails with a typed [`Error::Storage`] for a missing file, a
/// directory, an empty or foreign file, a corrupt or newer-format file, a file
/// that another process holds open read-write, or one that needs crash recovery
/// (open it once with [`crate::Store::open`]).
pub struct ReadOnlyStore {
    db: ReadOnly,
    path: PathBuf,
}

impl std::fmt::Debug for ReadOnlyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl ReadOnlyStore {
    /// Opens an existing store file read-only.
    ///
    /// # Errors
    /// [`Error::Storage`] as described on the type; the file is never modified.
    pub fn open(path: impl AsRef<Path>) -> Result<ReadOnlyStore, Error> {
        let path = path.as_ref();
        Ok(ReadOnlyStore { db: Db::open_read_only(path)?, path: path.to_owned() })
    }

    /// Sessions stored, including expired ones not yet swept.
    ///
    /// # Errors
    /// [`Error::Storage`] if the read fails.
    pub fn sessions_stored(&self) -> Result<u64, Error> {
        self.db.session_count()
    }

    /// Rows in the revocation table (serials kept until no access token can name them).
    ///
    /// # Errors
    /// [`Error::Storage`] if the read fails.
    pub fn revoked_serials(&self) -> Result<u64, Error> {
        self.db.revoked_count()
    }

    /// The file's format version.
    ///
    /// # Errors
    /// [`Error::Storage`] if the read fails.
    pub fn format_version(&self) -> Result<u64, Error> {
        self.db.format()
    }

    /// Whether a tool created this file as a scratch database it may reset
    /// (see [`crate::ConfigBuilder::scratch`]).
    ///
    /// # Errors
    /// [`Error::Storage`] if the read fails.
    pub fn is_scratch(&self) -> Result<bool, Error> {
        self.db.is_scratch()
    }

    /// A user's live sessions (not revoked, not expired at `now`), oldest first.
    ///
    /// # Errors
    /// [`Error::Input`] for an invalid user id; [`Error::Storage`] if a read fails.
    pub fn list_user(&self, user: &str, now: SystemTime) -> Result<Vec<Session>, Error> {
        check_user(user)?;
        let now = to_millis(now);
        let mut out = Vec::new();
        for rec in self.db.list_user(user)? {
            if now < rec.deadline(rec.last_seen) && !self.db.is_revoked(rec.serial)? {
                let last_seen = rec.last_seen;
                out.push(Session { record: Arc::new(rec), last_seen });
            }
        }
        out.sort_by_key(|s| (s.record.created_at, s.serial()));
        Ok(out)
    }

    /// The access-token keys a [`crate::Store`] opened on this file with the
    /// default configuration would use: the `<db>.keys` file if present, else
    /// the HS256 key derived from the `<db>.key` server key file. `None` when
    /// neither file exists. Reads only; never creates a key file.
    ///
    /// # Errors
    /// [`Error::Config`] or [`Error::Storage`] if a key file is unreadable or malformed.
    pub fn keys(&self) -> Result<Option<Vec<KeyInfo>>, Error> {
        let keys = crate::keys::keys_path(&self.path);
        if keys.exists() {
            return Ok(Some(Keyring::load(&keys)?.keys()));
        }
        let key = crate::keys::key_path(&self.path);
        if !key.exists() {
            return Ok(None);
        }
        let server_key = crate::keys::ServerKey::Default.resolve(Some((&self.path, crate::keys::DbState::Existing)))?;
        Ok(Some(crate::store::default_keyring(&crate::refresh::Derived::new(&server_key))?.keys()))
    }
}
