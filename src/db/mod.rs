//! Persistence: the API the rest of the crate uses. No redb types leave this module
//! (apart from the test-only backend hook).

mod tables;
pub(crate) mod writer;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use redb::{ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _, TableHandle as _};

use crate::error::{Error, StorageError, StorageErrorKind};
use crate::keys::DbState;
use crate::session::Record;
use crate::token::SessionId;
use tables::{
    EXPIRY, FORMAT_VERSION, META, META_FORMAT, META_NEXT_SERIAL, META_SCRATCH, NOT_BEFORE, REFRESH, REVOKED, SESSIONS,
    USER_SESSIONS,
};

/// Reopens the database file after an I/O failure (redb refuses every operation
/// on a handle that saw one). `None` for in-memory databases, which have no file.
type Opener = Box<dyn Fn() -> Result<redb::Database, Error> + Send + Sync>;

/// The database handle shared by readers and the writer. Cheap to clone.
///
/// After a failed write the writer calls [`Db::reset`]; the next batch calls
/// [`Db::reopen`], so the store recovers once the fault clears.
#[derive(Clone)]
pub(crate) struct Db {
    shared: Arc<Shared>,
}

struct Shared {
    current: parking_lot::RwLock<Option<Arc<redb::Database>>>,
    opener: Option<Opener>,
    closed: std::sync::atomic::AtomicBool,
}

/// What `open` learned from the file.
pub(crate) struct Loaded {
    /// Whether this open initialised the database (it had no tables).
    pub(crate) state: DbState,
    /// Whether this open also created the file, so a later failure may remove it.
    pub(crate) owns_file: bool,
    pub(crate) next_serial: u64,
    /// (serial, prune-after ms, session id) of every revoked entry.
    pub(crate) revoked: Vec<(u64, u64, SessionId)>,
    /// (user, not-before ms).
    pub(crate) not_before: Vec<(String, u64)>,
}

pub(crate) fn storage(kind: StorageErrorKind) -> impl FnOnce(redb::Error) -> Error {
    move |e| Error::Storage(StorageError::with_source(kind, e))
}

fn io<E: Into<redb::Error>>(e: E) -> Error {
    let e: redb::Error = e.into();
    let kind = match &e {
        redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) => StorageErrorKind::Corrupt,
        redb::Error::DatabaseAlreadyOpen => StorageErrorKind::AlreadyOpen,
        redb::Error::RepairAborted => StorageErrorKind::NeedsRecovery,
        // redb reports a file without its magic number ("Not a redb database") as InvalidData.
        redb::Error::Io(x) if x.kind() == std::io::ErrorKind::InvalidData => StorageErrorKind::NotCloakroom,
        redb::Error::Io(x) if x.kind() == std::io::ErrorKind::IsADirectory => StorageErrorKind::Directory,
        _ => StorageErrorKind::Io,
    };
    match e {
        // Keep the OS error itself as the cause, so the message is not "I/O error: I/O error: ...".
        redb::Error::Io(x) => StorageError::with_source(kind, x).into(),
        e => storage(kind)(e),
    }
}

/// Refuses a directory before redb sees it (its message would name neither).
fn not_a_directory(path: &Path) -> Result<(), Error> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(StorageError::new(StorageErrorKind::Directory).into());
    }
    Ok(())
}

/// A panic inside redb while opening a damaged file becomes a `Corrupt` error.
fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(StorageError::new(StorageErrorKind::Corrupt).into()))
}

impl Db {
    /// Opens or creates a cloakroom file. A file that is not redb, is corrupt, was
    /// written by another application or by a newer format is left untouched.
    ///
    /// `existing` runs after an existing file was recognised as a cloakroom
    /// database and before the read-write open (which may write to it), so a
    /// caller can refuse without touching the file. `scratch` marks a database
    /// this call creates as a tool's throwaway (see `META_SCRATCH`).
    ///
    /// A failed open leaves nothing behind: the file is created with
    /// create-new semantics, and removed again if this call created it,
    /// initialised it and then failed.
    pub(crate) fn open(
        path: &Path,
        cache_bytes: usize,
        scratch: bool,
        existing: &dyn Fn() -> Result<(), Error>,
    ) -> Result<(Db, Loaded), Error> {
        not_a_directory(path)?;
        let made_file = match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io(redb::Error::Io(e))),
        };
        let mut initialised = false;
        let r = guarded(|| {
            let mut b = redb::Database::builder();
            b.set_cache_size(cache_bytes);
            if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
                Self::inspect(&b, path)?;
                existing()?;
            }
            let db = b.create(path).map_err(io)?;
            let path = path.to_owned();
            let opener: Opener = Box::new(move || {
                let mut b = redb::Database::builder();
                b.set_cache_size(cache_bytes);
                guarded(|| b.create(&path).map_err(io))
            });
            Self::init(db, Some(opener), scratch, &mut initialised)
        });
        match r {
            Ok((db, mut loaded)) => {
                loaded.owns_file = made_file && loaded.state == DbState::Created;
                Ok((db, loaded))
            }
            Err(e) => {
                // Ours to remove: we created the file and either initialised it
                // ourselves or failed before anyone did (still empty, and not
                // because another opener holds it). Never a file another opener uses.
                let busy = matches!(&e, Error::Storage(s) if s.kind() == StorageErrorKind::AlreadyOpen);
                let empty = std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
                if made_file && (initialised || (empty && !busy)) {
                    let _ = std::fs::remove_file(path);
                }
                Err(e)
            }
        }
    }

    /// Opens an existing file read-only: nothing is written, no file is created,
    /// and a file that is not a cloakroom database is refused.
    pub(crate) fn open_read_only(path: &Path) -> Result<ReadOnly, Error> {
        not_a_directory(path)?;
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::new(StorageErrorKind::Missing).into());
            }
            Err(e) => return Err(StorageError::with_source(StorageErrorKind::Io, e).into()),
            // An empty file is nobody's database, and a read-only open must not make it one.
            Ok(m) if m.len() == 0 => return Err(StorageError::new(StorageErrorKind::NotCloakroom).into()),
            Ok(_) => {}
        }
        guarded(|| {
            let db = redb::Database::builder().open_read_only(path).map_err(io)?;
            let rtx = db.begin_read().map_err(io)?;
            let names = table_names(&rtx)?;
            let format = stored_format(&rtx, &names)?;
            if check_format(&names, format)? == Fresh::Yes {
                // A valid but empty redb file: not ours.
                return Err(StorageError::new(StorageErrorKind::NotCloakroom).into());
            }
            drop(rtx);
            Ok(ReadOnly { db })
        })
    }

    /// Checks an existing file through a read-only open, which writes nothing, so a
    /// foreign, corrupt or newer file is refused before redb's read-write open
    /// touches its header. A file that needs crash recovery cannot be opened
    /// read-only; it is left to the read-write open, which repairs it.
    fn inspect(b: &redb::Builder, path: &Path) -> Result<(), Error> {
        let ro = match b.open_read_only(path) {
            Ok(ro) => ro,
            Err(redb::DatabaseError::RepairAborted) => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        let rtx = ro.begin_read().map_err(io)?;
        let names = table_names(&rtx)?;
        let format = stored_format(&rtx, &names)?;
        check_format(&names, format).map(|_| ())
    }

    /// An in-memory database (tests, demos).
    pub(crate) fn in_memory() -> Result<(Db, Loaded), Error> {
        guarded(|| {
            let db =
                redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(io)?;
            Self::init(db, None, false, &mut false)
        })
    }

    /// Opens a database on backends made by `make` (fault-injection tests): one
    /// now, and a fresh one for each reopen after an I/O failure.
    #[cfg(feature = "test-util")]
    pub(crate) fn with_backend<B: redb::StorageBackend>(
        make: impl Fn() -> B + Send + Sync + 'static,
    ) -> Result<(Db, Loaded), Error> {
        guarded(|| {
            let db = redb::Database::builder().create_with_backend(make()).map_err(io)?;
            let opener: Opener =
                Box::new(move || guarded(|| redb::Database::builder().create_with_backend(make()).map_err(io)));
            Self::init(db, Some(opener), false, &mut false)
        })
    }

    /// The live handle.
    pub(crate) fn handle(&self) -> Result<Arc<redb::Database>, Error> {
        if let Some(db) = &*self.shared.current.read() {
            return Ok(Arc::clone(db));
        }
        if self.shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.reopen()?;
        self.shared.current.read().clone().ok_or_else(|| StorageError::new(StorageErrorKind::Io).into())
    }

    /// Drops the handle after a failed write, so the next [`Db::reopen`] starts
    /// clean; says whether it did. In-memory databases cannot be reopened and
    /// keep their handle (and their non-durable commits).
    pub(crate) fn reset(&self) -> bool {
        if self.shared.opener.is_some() {
            return self.shared.current.write().take().is_some();
        }
        false
    }

    /// Reopens the file if the handle was reset. Fails (to be retried) while a
    /// reader still holds the old handle or the fault persists.
    pub(crate) fn reopen(&self) -> Result<(), Error> {
        let mut cur = self.shared.current.write();
        if cur.is_some() || self.shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let open = self.shared.opener.as_ref().ok_or(Error::Closed)?;
        *cur = Some(Arc::new(open()?));
        Ok(())
    }

    /// Releases the handle for good (after the writer has stopped).
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, std::sync::atomic::Ordering::Release);
        self.shared.current.write().take();
    }

    /// Creates the tables of a fresh database (setting `initialised`), upgrades
    /// an older format, and loads what the store needs in memory.
    fn init(
        db: redb::Database,
        opener: Option<Opener>,
        scratch: bool,
        initialised: &mut bool,
    ) -> Result<(Db, Loaded), Error> {
        let rtx = db.begin_read().map_err(io)?;
        let existing = table_names(&rtx)?;
        let format = stored_format(&rtx, &existing)?;
        drop(rtx);
        let fresh = check_format(&existing, format)?;
        if fresh == Fresh::No && format.is_some_and(|v| v < FORMAT_VERSION) {
            // Format 1 → 2: every format-1 record stays readable; new records may use
            // record format 2, so stamp the file for older readers to refuse it.
            let wtx = db.begin_write().map_err(io)?;
            wtx.open_table(META).map_err(io)?.insert(META_FORMAT, FORMAT_VERSION).map_err(io)?;
            wtx.commit().map_err(io)?;
        }
        if fresh == Fresh::Yes {
            *initialised = true;
            {
                let wtx = db.begin_write().map_err(io)?;
                {
                    let mut meta = wtx.open_table(META).map_err(io)?;
                    meta.insert(META_FORMAT, FORMAT_VERSION).map_err(io)?;
                    meta.insert(META_NEXT_SERIAL, 1).map_err(io)?;
                    if scratch {
                        meta.insert(META_SCRATCH, 1).map_err(io)?;
                    }
                    wtx.open_table(SESSIONS).map_err(io)?;
                    wtx.open_table(USER_SESSIONS).map_err(io)?;
                    wtx.open_table(EXPIRY).map_err(io)?;
                    wtx.open_table(REVOKED).map_err(io)?;
                    wtx.open_table(REFRESH).map_err(io)?;
                    wtx.open_table(NOT_BEFORE).map_err(io)?;
                }
                debug_assert_eq!(tables::names().len(), 7);
                wtx.commit().map_err(io)?;
            }
        }
        let db = Db {
            shared: Arc::new(Shared {
                current: parking_lot::RwLock::new(Some(Arc::new(db))),
                opener,
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let mut loaded = db.load()?;
        if fresh == Fresh::Yes {
            loaded.state = DbState::Created;
        }
        Ok((db, loaded))
    }

    fn load(&self) -> Result<Loaded, Error> {
        let rtx = self.handle()?.begin_read().map_err(io)?;
        let meta = rtx.open_table(META).map_err(io)?;
        let next_serial = meta.get(META_NEXT_SERIAL).map_err(io)?.map_or(1, |v| v.value());
        let revoked = rtx.open_table(REVOKED).map_err(io)?;
        let mut list = Vec::with_capacity(usize::try_from(revoked.len().map_err(io)?).unwrap_or(0));
        for row in revoked.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let (prune_after, id) = v.value();
            list.push((k.value(), prune_after, SessionId::from_bytes(*id)));
        }
        let nb = rtx.open_table(NOT_BEFORE).map_err(io)?;
        let mut not_before = Vec::new();
        for row in nb.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            not_before.push((k.value().to_owned(), v.value()));
        }
        Ok(Loaded { state: DbState::Existing, owns_file: false, next_serial, revoked: list, not_before })
    }

    /// Reads one session.
    pub(crate) fn get(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        get_in(&self.handle()?.begin_read().map_err(io)?, id)
    }

    /// Reads every session of `user`.
    pub(crate) fn list_user(&self, user: &str) -> Result<Vec<Record>, Error> {
        list_user_in(&self.handle()?.begin_read().map_err(io)?, user)
    }

    /// Up to `limit` rows of the expiry index with deadline ≤ `now`, after `after`.
    pub(crate) fn expired(
        &self,
        now: u64,
        after: Option<(u64, SessionId)>,
        limit: usize,
    ) -> Result<Vec<(u64, SessionId)>, Error> {
        use std::ops::Bound;
        let rtx = self.handle()?.begin_read().map_err(io)?;
        let t = rtx.open_table(EXPIRY).map_err(io)?;
        let after_key = after.map(|(d, id)| (d, *id.as_bytes()));
        let lo = match &after_key {
            Some((d, id)) => Bound::Excluded((*d, id)),
            None => Bound::Unbounded,
        };
        let hi = Bound::Included((now, &[0xffu8; 16]));
        let mut out = Vec::with_capacity(limit.min(4096));
        for row in t.range::<(u64, &[u8; 16])>((lo, hi)).map_err(io)?.take(limit) {
            let (k, _) = row.map_err(io)?;
            let (d, id) = k.value();
            out.push((d, SessionId::from_bytes(*id)));
        }
        Ok(out)
    }

    /// Number of stored sessions.
    pub(crate) fn session_count(&self) -> Result<u64, Error> {
        session_count_in(&self.handle()?.begin_read().map_err(io)?)
    }
}

/// A database opened read-only (admin reads): redb's `ReadOnlyDatabase`, which
/// writes no byte of the file.
pub(crate) struct ReadOnly {
    db: redb::ReadOnlyDatabase,
}

impl ReadOnly {
    fn rtx(&self) -> Result<redb::ReadTransaction, Error> {
        self.db.begin_read().map_err(io)
    }

    /// Reads every session of `user`.
    pub(crate) fn list_user(&self, user: &str) -> Result<Vec<Record>, Error> {
        list_user_in(&self.rtx()?, user)
    }

    /// Number of stored sessions.
    pub(crate) fn session_count(&self) -> Result<u64, Error> {
        session_count_in(&self.rtx()?)
    }

    /// Number of rows in the revocation table.
    pub(crate) fn revoked_count(&self) -> Result<u64, Error> {
        self.rtx()?.open_table(REVOKED).map_err(io)?.len().map_err(io)
    }

    /// Whether `serial` is in the revocation table.
    pub(crate) fn is_revoked(&self, serial: u64) -> Result<bool, Error> {
        Ok(self.rtx()?.open_table(REVOKED).map_err(io)?.get(serial).map_err(io)?.is_some())
    }

    /// Whether a tool created this file as a throwaway (`META_SCRATCH`).
    pub(crate) fn is_scratch(&self) -> Result<bool, Error> {
        let rtx = self.rtx()?;
        Ok(rtx.open_table(META).map_err(io)?.get(META_SCRATCH).map_err(io)?.is_some_and(|v| v.value() == 1))
    }

    /// The stored format version.
    pub(crate) fn format(&self) -> Result<u64, Error> {
        let rtx = self.rtx()?;
        Ok(rtx.open_table(META).map_err(io)?.get(META_FORMAT).map_err(io)?.map_or(0, |v| v.value()))
    }
}

fn table_names(rtx: &redb::ReadTransaction) -> Result<Vec<String>, Error> {
    Ok(rtx.list_tables().map_err(io)?.map(|t| t.name().to_owned()).collect())
}

fn stored_format(rtx: &redb::ReadTransaction, names: &[String]) -> Result<Option<u64>, Error> {
    if !names.iter().any(|n| n == "meta") {
        return Ok(None);
    }
    Ok(rtx.open_table(META).map_err(io)?.get(META_FORMAT).map_err(io)?.map(|v| v.value()))
}

fn get_in(rtx: &redb::ReadTransaction, id: &SessionId) -> Result<Option<Record>, Error> {
    let t = rtx.open_table(SESSIONS).map_err(io)?;
    let Some(v) = t.get(id.as_bytes()).map_err(io)? else {
        return Ok(None);
    };
    decode(*id, v.value()).map(Some)
}

fn list_user_in(rtx: &redb::ReadTransaction, user: &str) -> Result<Vec<Record>, Error> {
    let idx = rtx.open_table(USER_SESSIONS).map_err(io)?;
    let sessions = rtx.open_table(SESSIONS).map_err(io)?;
    let mut out = Vec::new();
    for row in idx.range((user, &[0u8; 16])..=(user, &[0xffu8; 16])).map_err(io)? {
        let (k, _) = row.map_err(io)?;
        let id = SessionId::from_bytes(*k.value().1);
        if let Some(v) = sessions.get(id.as_bytes()).map_err(io)? {
            out.push(decode(id, v.value())?);
        }
    }
    Ok(out)
}

fn session_count_in(rtx: &redb::ReadTransaction) -> Result<u64, Error> {
    rtx.open_table(SESSIONS).map_err(io)?.len().map_err(io)
}

#[derive(Debug, PartialEq, Eq)]
enum Fresh {
    Yes,
    No,
}

/// Decides from the table names and stored format version whether a file is a
/// new (empty) database, one of ours, or to be refused.
fn check_format(tables: &[String], format: Option<u64>) -> Result<Fresh, Error> {
    match format {
        Some(v) if v > FORMAT_VERSION => Err(StorageError::new(StorageErrorKind::NewerFormat).into()),
        Some(_) => Ok(Fresh::No),
        None if tables.is_empty() => Ok(Fresh::Yes),
        None => Err(StorageError::new(StorageErrorKind::NotCloakroom).into()),
    }
}

pub(crate) fn decode(id: SessionId, bytes: &[u8]) -> Result<Record, Error> {
    Record::decode(id, bytes).map_err(|e| StorageError::with_source(StorageErrorKind::Corrupt, e).into())
}
