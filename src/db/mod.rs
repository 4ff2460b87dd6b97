//! Persistence: the API the rest of the crate uses. No redb types leave this module
//! (apart from the test-only backend hook).
//!
//! The write path (format 3): the writer thread decides each batch against
//! redb plus the [`overlay::Overlay`] of rows written since the last checkpoint,
//! appends the batch's row changes to the [`journal`] and acknowledges after one
//! `fdatasync`; the [`applier`] folds batches into redb and checkpoints. Every
//! authoritative row is sealed with a tag under a key derived from the server
//! key ([`mac`]).

pub(crate) mod applier;
mod horizon;
pub(crate) mod index;
pub(crate) mod journal;
pub(crate) mod mac;
pub(crate) mod mutation;
pub(crate) mod overlay;
mod tables;
mod view;
pub(crate) mod writer;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _, TableHandle as _};

use crate::error::{Error, StorageError, StorageErrorKind};
use crate::keys::DbState;
use crate::refresh::Families;
use crate::session::Record;
use crate::token::{SessionId, os_random};
use index::{Index, IndexOp};
use journal::Journal;
#[cfg(feature = "test-util")]
use journal::JournalIo;
use mac::{RowMac, RowTable};
use overlay::Overlay;
use tables::{
    EXPIRY, EXPIRY_V2, FORMAT_VERSION, META, META_FORMAT, META_JOURNAL_ID, META_JOURNAL_SEQ, META_LEGACY_UNTIL,
    META_NEXT_SERIAL, META_SCRATCH, META_TAGGED_SINCE, NOT_BEFORE, NOT_BEFORE_V2, REFRESH, REFRESH_V2, REVOKED,
    REVOKED_V2, SESSIONS, SESSIONS_V2, USER_CUTS, USER_SESSIONS_V2,
};

/// Reopens the database file after an I/O failure (redb refuses every operation
/// on a handle that saw one). `None` for in-memory databases, which have no file.
type Opener = Box<dyn Fn() -> Result<redb::Database, Error> + Send + Sync>;

/// The database handle shared by readers, the writer and the applier. Cheap to clone.
///
/// After a failed write the applier calls [`Db::reset`]; the next commit calls
/// [`Db::reopen`], so the store recovers once the fault clears.
#[derive(Clone)]
pub(crate) struct Db {
    shared: Arc<Shared>,
}

struct Shared {
    current: parking_lot::RwLock<Option<Arc<redb::Database>>>,
    opener: Option<Opener>,
    closed: std::sync::atomic::AtomicBool,
    overlay: parking_lot::RwLock<Overlay>,
    index: Index,
    mac: RowMac,
    /// Rows that failed their tag or did not decode, since open.
    corrupt_rows: AtomicU64,
}

/// Where the journal lives.
enum JournalPlace {
    /// `<db>.journal` and `<db>.journal.1`.
    Files(PathBuf),
    /// In-memory stores: nothing to replay.
    Memory,
    /// Fault-injection tests.
    #[cfg(feature = "test-util")]
    Custom([Box<dyn JournalIo>; 2]),
}

/// A database opened and recognised, before the server key is known: it may
/// still need its format migrated and its journal replayed ([`Pending::finish`]).
pub(crate) struct Pending {
    db: redb::Database,
    opener: Option<Opener>,
    journal: JournalPlace,
    /// Whether this open initialised the database (it had no tables).
    pub(crate) state: DbState,
    /// Whether this open also created the file, so a later failure may remove it.
    pub(crate) owns_file: bool,
}

/// What opening learned from the file.
pub(crate) struct Loaded {
    pub(crate) next_serial: u64,
    /// Which pre-tag session tokens the file's sessions may still present.
    pub(crate) legacy: LegacyTokens,
    /// (serial, prune-after ms, session id) of every revoked entry.
    pub(crate) revoked: Vec<(u64, u64, SessionId)>,
    /// (user, not-before ms).
    pub(crate) not_before: Vec<(String, u64)>,
    /// User-wide revocations in progress (see [`crate::backend::op::UserCut`]).
    pub(crate) cuts: Vec<(String, crate::backend::op::UserCut)>,
    /// The last journal seq folded into redb durably.
    pub(crate) checkpointed: u64,
    /// Journal records replayed by this open.
    pub(crate) replayed: usize,
}

/// Session tokens issued before the keyed tag carry an unkeyed checksum. A
/// store accepts them only for sessions whose serial is below `tagged_since`
/// (the next serial when a tagging version first opened the file) and only
/// before `until` (ms: the latest absolute deadline among those sessions, after
/// which none can be alive). A file created by a tagging version has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LegacyTokens {
    pub(crate) tagged_since: u64,
    pub(crate) until: u64,
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
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(StorageError::new(StorageErrorKind::Corrupt).into()))
}

/// Drops a database handle; redb's close (it trims and commits its allocator
/// state) can panic on a damaged file, which must not unwind into the caller.
fn release(db: Option<Arc<redb::Database>>) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
}

fn corrupt_row(e: crate::session::RecordError) -> Error {
    StorageError::with_source(StorageErrorKind::Corrupt, e).into()
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
    ) -> Result<Pending, Error> {
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
            let state = Self::init(&db, scratch, &mut initialised)?;
            Ok((db, opener, state))
        });
        match r {
            Ok((db, opener, state)) => Ok(Pending {
                db,
                opener: Some(opener),
                journal: JournalPlace::Files(path.to_owned()),
                state,
                owns_file: made_file && state == DbState::Created,
            }),
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
    /// and a file that is not a cloakroom database is refused. A file whose
    /// journal holds records not yet folded in is refused with `NeedsRecovery`.
    pub(crate) fn open_read_only(path: &Path, server_key: Option<&[u8; 32]>) -> Result<ReadOnly, Error> {
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
            if format.is_some_and(|f| f >= 3) && journal::has_records(path) {
                return Err(StorageError::new(StorageErrorKind::NeedsRecovery).into());
            }
            Ok(ReadOnly { db, format: format.unwrap_or(0), mac: server_key.map(RowMac::new) })
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
    pub(crate) fn in_memory() -> Result<Pending, Error> {
        guarded(|| {
            let db =
                redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(io)?;
            let state = Self::init(&db, false, &mut false)?;
            Ok(Pending { db, opener: None, journal: JournalPlace::Memory, state, owns_file: false })
        })
    }

    /// Opens a database on backends made by `make` (fault-injection tests): one
    /// now, and a fresh one for each reopen after an I/O failure; the journal's
    /// two segments on `journal`.
    #[cfg(feature = "test-util")]
    pub(crate) fn with_backend<B: redb::StorageBackend, J: redb::StorageBackend>(
        make: impl Fn() -> B + Send + Sync + 'static,
        journal: [J; 2],
    ) -> Result<Pending, Error> {
        guarded(|| {
            let db = redb::Database::builder().create_with_backend(make()).map_err(io)?;
            let opener: Opener =
                Box::new(move || guarded(|| redb::Database::builder().create_with_backend(make()).map_err(io)));
            let state = Self::init(&db, false, &mut false)?;
            let [a, b] = journal;
            let segs: [Box<dyn JournalIo>; 2] = [Box::new(journal::BackendIo(a)), Box::new(journal::BackendIo(b))];
            Ok(Pending { db, opener: Some(opener), journal: JournalPlace::Custom(segs), state, owns_file: false })
        })
    }

    /// Creates the tables of a fresh database (setting `initialised`).
    fn init(db: &redb::Database, scratch: bool, initialised: &mut bool) -> Result<DbState, Error> {
        let rtx = db.begin_read().map_err(io)?;
        let existing = table_names(&rtx)?;
        let format = stored_format(&rtx, &existing)?;
        drop(rtx);
        if check_format(&existing, format)? == Fresh::No {
            return Ok(DbState::Existing);
        }
        *initialised = true;
        let wtx = db.begin_write().map_err(io)?;
        {
            let mut meta = wtx.open_table(META).map_err(io)?;
            meta.insert(META_FORMAT, FORMAT_VERSION).map_err(io)?;
            meta.insert(META_NEXT_SERIAL, 1).map_err(io)?;
            meta.insert(META_TAGGED_SINCE, 1).map_err(io)?;
            meta.insert(META_LEGACY_UNTIL, 0).map_err(io)?;
            meta.insert(META_JOURNAL_ID, random_u64()?).map_err(io)?;
            meta.insert(META_JOURNAL_SEQ, 0).map_err(io)?;
            if scratch {
                meta.insert(META_SCRATCH, 1).map_err(io)?;
            }
            wtx.open_table(SESSIONS).map_err(io)?;
            wtx.open_table(EXPIRY).map_err(io)?;
            wtx.open_table(REVOKED).map_err(io)?;
            wtx.open_table(REFRESH).map_err(io)?;
            wtx.open_table(NOT_BEFORE).map_err(io)?;
            wtx.open_table(USER_CUTS).map_err(io)?;
        }
        wtx.commit().map_err(io)?;
        Ok(DbState::Created)
    }

    fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The live handle.
    pub(crate) fn handle(&self) -> Result<Arc<redb::Database>, Error> {
        if let Some(db) = &*self.shared.current.read() {
            return Ok(Arc::clone(db));
        }
        if self.shared.closed.load(Ordering::Acquire) {
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
            let old = self.shared.current.write().take();
            let had = old.is_some();
            release(old);
            return had;
        }
        false
    }

    /// Reopens the file if the handle was reset. Fails (to be retried) while a
    /// reader still holds the old handle or the fault persists.
    pub(crate) fn reopen(&self) -> Result<(), Error> {
        let mut cur = self.shared.current.write();
        if cur.is_some() || self.shared.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let open = self.shared.opener.as_ref().ok_or(Error::Closed)?;
        *cur = Some(Arc::new(open()?));
        Ok(())
    }

    /// Releases the handle for good (after the writer has stopped).
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let old = self.shared.current.write().take();
        release(old);
    }

    pub(crate) fn overlay(&self) -> &parking_lot::RwLock<Overlay> {
        &self.shared().overlay
    }

    pub(crate) fn mac(&self) -> &RowMac {
        &self.shared().mac
    }

    pub(crate) fn index(&self) -> &Index {
        &self.shared().index
    }

    /// Rows found damaged or tampered with since open.
    pub(crate) fn corrupt_rows(&self) -> u64 {
        self.shared.corrupt_rows.load(Ordering::Relaxed)
    }

    /// Counts a damaged row (and passes the error on).
    pub(crate) fn corrupt(&self, e: Error) -> Error {
        self.shared.corrupt_rows.fetch_add(1, Ordering::Relaxed);
        e
    }

    /// Reads one session: the index (no disk read for an id never stored),
    /// then the overlay, then redb. A panic inside redb on a damaged page
    /// becomes a `Corrupt` error.
    pub(crate) fn get(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        let Some(n) = self.shared.index.number(id.as_bytes()) else { return Ok(None) };
        guarded(|| self.get_number(*id, n))
    }

    fn get_number(&self, id: SessionId, n: u64) -> Result<Option<Record>, Error> {
        let pending = self.shared.overlay.read().sessions.get(&n).map(|e| e.1.clone());
        // An overlay row is shared, not copied.
        let row: Option<Arc<[u8]>> = match pending {
            Some(r) => r,
            None => {
                let rtx = self.handle()?.begin_read().map_err(io)?;
                let t = rtx.open_table(SESSIONS).map_err(io)?;
                t.get(n).map_err(io)?.map(|v| Arc::from(v.value()))
            }
        };
        row.map(|r| decode_session(&self.shared.mac, id, n, &r).map_err(|e| self.corrupt(e))).transpose()
    }

    /// Reads a session's refresh families: the overlay first, then redb.
    pub(crate) fn families(&self, id: &SessionId) -> Result<Option<Families>, Error> {
        let Some(n) = self.shared.index.number(id.as_bytes()) else { return Ok(None) };
        guarded(|| {
            let pending = self.shared.overlay.read().refresh.get(&n).map(|e| e.1.clone());
            // An overlay row is shared, not copied.
            let row: Option<Arc<[u8]>> = match pending {
                Some(r) => r,
                None => {
                    let rtx = self.handle()?.begin_read().map_err(io)?;
                    let t = rtx.open_table(REFRESH).map_err(io)?;
                    t.get(n).map_err(io)?.map(|v| Arc::from(v.value()))
                }
            };
            row.map(|r| decode_family(&self.shared.mac, n, &r).map_err(|e| self.corrupt(e))).transpose()
        })
    }

    /// Reads every session of `user` (ids from the in-memory index).
    pub(crate) fn list_user(&self, user: &str) -> Result<Vec<Record>, Error> {
        let mut out = Vec::new();
        for id in self.shared.index.user_ids(user) {
            if let Some(rec) = self.get(&SessionId::from_bytes(id))? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Up to `limit` rows of the expiry index with deadline ≤ `now`, after
    /// `after`, as applied to redb (the sweep re-checks each row in the writer).
    pub(crate) fn expired(
        &self,
        now: u64,
        after: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Vec<(u64, u64, SessionId)>, Error> {
        guarded(|| {
            use std::ops::Bound;
            let rtx = self.handle()?.begin_read().map_err(io)?;
            let t = rtx.open_table(EXPIRY).map_err(io)?;
            let lo = match after {
                Some(k) => Bound::Excluded(k),
                None => Bound::Unbounded,
            };
            let mut out = Vec::with_capacity(limit.min(4096));
            for row in t.range::<(u64, u64)>((lo, Bound::Included((now, u64::MAX)))).map_err(io)?.take(limit) {
                let (k, v) = row.map_err(io)?;
                let (d, n) = k.value();
                out.push((d, n, SessionId::from_bytes(*v.value())));
            }
            Ok(out)
        })
    }

    /// Number of stored sessions (every acknowledged one, including expired
    /// ones not yet swept): the size of the in-memory index.
    pub(crate) fn session_count(&self) -> Result<u64, Error> {
        Ok(self.shared.index.len() as u64)
    }
}

impl Pending {
    /// Migrates an older format, replays the journal, and loads what the store
    /// keeps in memory. `now` (ms) stands in for a damaged not-before row (fail
    /// closed: every token issued before this open dies).
    pub(crate) fn finish(self, server_key: &[u8; 32], now: u64) -> Result<(Db, Loaded, Journal), Error> {
        let Pending { db, opener, journal, .. } = self;
        let mac = RowMac::new(server_key);
        guarded(|| migrate(&db, &mac))?;
        let (journal_id, checkpointed) = {
            let rtx = db.begin_read().map_err(io)?;
            let meta = rtx.open_table(META).map_err(io)?;
            let get = |k| -> Result<u64, Error> { Ok(meta.get(k).map_err(io)?.map_or(0, |v| v.value())) };
            (get(META_JOURNAL_ID)?, get(META_JOURNAL_SEQ)?)
        };
        let segs = match journal {
            JournalPlace::Files(path) => journal::open_files(&path)?,
            JournalPlace::Memory => [journal::MemIo::boxed(), journal::MemIo::boxed()],
            #[cfg(feature = "test-util")]
            JournalPlace::Custom(segs) => segs,
        };
        let (mut journal, replay) = Journal::open(segs, server_key, journal_id, checkpointed)?;
        let todo: Vec<&(u64, Vec<mutation::Mutation>)> = replay.records.iter().filter(|r| r.0 > checkpointed).collect();
        let mut last = checkpointed.max(replay.records.last().map_or(0, |r| r.0));
        if let Some(top) = todo.last().map(|r| r.0) {
            let wtx = db.begin_write().map_err(io)?;
            applier::apply_all(&wtx, todo.iter().map(|r| &r.1[..]), top)?;
            wtx.commit().map_err(|e| Error::Storage(StorageError::with_source(StorageErrorKind::Commit, e)))?;
            last = last.max(top);
        } else if last > checkpointed {
            // Records all covered: only the stored seq is behind (cannot happen
            // unless meta was edited); keep seqs increasing.
            let wtx = db.begin_write().map_err(io)?;
            wtx.open_table(META).map_err(io)?.insert(META_JOURNAL_SEQ, last).map_err(io)?;
            wtx.commit().map_err(io)?;
        }
        let replayed = todo.len();
        journal.reset(last)?;
        let db = Db {
            shared: Arc::new(Shared {
                current: parking_lot::RwLock::new(Some(Arc::new(db))),
                opener,
                closed: std::sync::atomic::AtomicBool::new(false),
                overlay: parking_lot::RwLock::new(Overlay::default()),
                index: Index::default(),
                mac,
                corrupt_rows: AtomicU64::new(0),
            }),
        };
        let mut loaded = guarded(|| db.load(now))?;
        loaded.checkpointed = last;
        loaded.replayed = replayed;
        Ok((db, loaded, journal))
    }
}

impl Db {
    fn load(&self, now: u64) -> Result<Loaded, Error> {
        let rtx = self.handle()?.begin_read().map_err(io)?;
        // The in-memory indexes: one scan of the sessions table (ordered by number).
        let sessions = rtx.open_table(SESSIONS).map_err(io)?;
        let mut ops = Vec::new();
        let mut damaged = Vec::new();
        let mut latest_deadline = 0;
        for row in sessions.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let n = k.value();
            match decode_row(self.mac(), n, v.value()) {
                Ok(rec) => {
                    latest_deadline = latest_deadline.max(rec.expires_at);
                    ops.push(IndexOp::Add { id: *rec.id.as_bytes(), number: n, user: rec.user });
                }
                // Fail closed: indexed by the id it claims only, so its token fails as corrupt.
                Err(_) => {
                    self.shared.corrupt_rows.fetch_add(1, Ordering::Relaxed);
                    if let Some(id) = v.value().first_chunk::<16>() {
                        damaged.push(IndexOp::AddDamaged { id: *id, number: n });
                    }
                }
            }
            if ops.len() >= 4096 {
                self.shared.index.apply(&ops);
                ops.clear();
            }
        }
        self.shared.index.apply(&ops);
        // After every sound row: a damaged row never takes over a sound session's id.
        damaged.retain(|op| matches!(op, IndexOp::AddDamaged { id, .. } if self.shared.index.number(id).is_none()));
        self.shared.index.apply(&damaged);
        drop(sessions);
        let meta = rtx.open_table(META).map_err(io)?;
        let next_serial = meta.get(META_NEXT_SERIAL).map_err(io)?.map_or(1, |v| v.value());
        let legacy = match (meta.get(META_TAGGED_SINCE).map_err(io)?, meta.get(META_LEGACY_UNTIL).map_err(io)?) {
            (Some(since), Some(until)) => LegacyTokens { tagged_since: since.value(), until: until.value() },
            // First open by a tagging version: every session here was issued
            // an untagged token. Recorded before any new session is created.
            _ => {
                let legacy = LegacyTokens { tagged_since: next_serial, until: latest_deadline };
                let wtx = self.handle()?.begin_write().map_err(io)?;
                {
                    let mut meta = wtx.open_table(META).map_err(io)?;
                    meta.insert(META_TAGGED_SINCE, legacy.tagged_since).map_err(io)?;
                    meta.insert(META_LEGACY_UNTIL, legacy.until).map_err(io)?;
                }
                wtx.commit().map_err(io)?;
                legacy
            }
        };
        let revoked = rtx.open_table(REVOKED).map_err(io)?;
        let mut list = Vec::with_capacity(usize::try_from(revoked.len().map_err(io)?).unwrap_or(0));
        for row in revoked.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let serial = k.value();
            match decode_revoked(self.mac(), serial, v.value()) {
                Ok((prune_after, id)) => list.push((serial, prune_after, id)),
                // Fail closed: a damaged revocation still revokes its serial, for good.
                Err(_) => {
                    self.shared.corrupt_rows.fetch_add(1, Ordering::Relaxed);
                    list.push((serial, u64::MAX, SessionId::from_bytes([0; 16])));
                }
            }
        }
        let nb = rtx.open_table(NOT_BEFORE).map_err(io)?;
        let mut not_before = Vec::new();
        for row in nb.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let user = k.value();
            let at = decode_not_before(self.mac(), user, v.value()).unwrap_or_else(|_| {
                // Fail closed: tokens of this user issued before now die.
                self.shared.corrupt_rows.fetch_add(1, Ordering::Relaxed);
                now
            });
            not_before.push((user.to_owned(), at));
        }
        let mut cuts = Vec::new();
        if let Some(table) = open_if_present(&rtx, USER_CUTS)? {
            for row in table.iter().map_err(io)? {
                let (k, v) = row.map_err(io)?;
                if mac_cut(self.mac(), k.value(), v.value()).is_err() {
                    // Fail closed: a damaged marker still refuses what it names.
                    self.shared.corrupt_rows.fetch_add(1, Ordering::Relaxed);
                }
                match crate::backend::op::UserCut::parse(k.value()) {
                    Some(cut) => cuts.push(cut),
                    None => {
                        self.shared.corrupt_rows.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("a user-revocation marker's key does not parse: ignored (run `cloakroom verify`)");
                    }
                }
            }
        }
        Ok(Loaded { next_serial, legacy, revoked: list, not_before, cuts, checkpointed: 0, replayed: 0 })
    }
}

fn random_u64() -> Result<u64, Error> {
    let mut b = [0u8; 8];
    os_random(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Formats 1 and 2 → 3, in one durable transaction: every session moves to
/// its number (its current serial, unique among live sessions) in the ordered
/// table, sealed; expiry and refresh rows follow it; revocations and not-before
/// cut-offs move to their sealed tables; the per-user table is dropped (the
/// index lives in memory); the file gets a journal id. A crash before the
/// commit leaves the old file as it was.
fn migrate(db: &redb::Database, mac: &RowMac) -> Result<(), Error> {
    let rtx = db.begin_read().map_err(io)?;
    let names = table_names(&rtx)?;
    let format = stored_format(&rtx, &names)?.unwrap_or(FORMAT_VERSION);
    drop(rtx);
    let has = |t: &str| names.iter().any(|n| n == t);
    if format >= FORMAT_VERSION {
        if !has(SESSIONS.name()) {
            // Only a development snapshot of format 3 lacks it; never released.
            return Err(StorageError::new(StorageErrorKind::NotCloakroom).into());
        }
        return Ok(());
    }
    let wtx = db.begin_write().map_err(io)?;
    {
        let mut sessions = wtx.open_table(SESSIONS).map_err(io)?;
        let mut expiry = wtx.open_table(EXPIRY).map_err(io)?;
        let mut numbers = std::collections::HashMap::new();
        if has(SESSIONS_V2.name()) {
            let old = wtx.open_table(SESSIONS_V2).map_err(io)?;
            for row in old.iter().map_err(io)? {
                let (k, v) = row.map_err(io)?;
                let id = SessionId::from_bytes(*k.value());
                // A row that does not decode cannot be placed; it is dropped (it could
                // never be served) and counted by nobody: `verify` predates it.
                let Ok(mut rec) = Record::decode(id, v.value()) else { continue };
                rec.number = rec.serial;
                numbers.insert(*id.as_bytes(), rec.number);
                sessions.insert(rec.number, &*seal_session(mac, &rec)).map_err(io)?;
                expiry.insert((rec.deadline(rec.last_seen), rec.number), id.as_bytes()).map_err(io)?;
            }
            drop(old);
            wtx.delete_table(SESSIONS_V2).map_err(io)?;
        }
        let mut refresh = wtx.open_table(REFRESH).map_err(io)?;
        if has(REFRESH_V2.name()) {
            let old = wtx.open_table(REFRESH_V2).map_err(io)?;
            for row in old.iter().map_err(io)? {
                let (k, v) = row.map_err(io)?;
                if let (Some(n), Some(_)) = (numbers.get(k.value()), Families::decode(v.value())) {
                    let sealed = mac.seal(RowTable::Refresh, &n.to_le_bytes(), v.value().to_vec());
                    refresh.insert(*n, sealed.as_slice()).map_err(io)?;
                }
            }
            drop(old);
            wtx.delete_table(REFRESH_V2).map_err(io)?;
        }
        for t in [USER_SESSIONS_V2.name(), EXPIRY_V2.name()] {
            if has(t) {
                wtx.delete_table(redb::TableDefinition::<(), ()>::new(t)).map_err(io)?;
            }
        }
        let mut revoked = wtx.open_table(REVOKED).map_err(io)?;
        if has(REVOKED_V2.name()) {
            let old = wtx.open_table(REVOKED_V2).map_err(io)?;
            for row in old.iter().map_err(io)? {
                let (k, v) = row.map_err(io)?;
                let (prune_after, id) = v.value();
                revoked.insert(k.value(), seal_revoked(mac, k.value(), prune_after, id).as_slice()).map_err(io)?;
            }
            drop(old);
            wtx.delete_table(REVOKED_V2).map_err(io)?;
        }
        let mut not_before = wtx.open_table(NOT_BEFORE).map_err(io)?;
        if has(NOT_BEFORE_V2.name()) {
            let old = wtx.open_table(NOT_BEFORE_V2).map_err(io)?;
            for row in old.iter().map_err(io)? {
                let (k, v) = row.map_err(io)?;
                not_before.insert(k.value(), seal_not_before(mac, k.value(), v.value()).as_slice()).map_err(io)?;
            }
            drop(old);
            wtx.delete_table(NOT_BEFORE_V2).map_err(io)?;
        }
        let mut meta = wtx.open_table(META).map_err(io)?;
        meta.insert(META_FORMAT, FORMAT_VERSION).map_err(io)?;
        meta.insert(META_JOURNAL_ID, random_u64()?).map_err(io)?;
        meta.insert(META_JOURNAL_SEQ, 0).map_err(io)?;
    }
    wtx.commit().map_err(io)
}

/// A sealed session row under number `n`, whatever its id.
pub(crate) fn decode_row(mac: &RowMac, n: u64, row: &[u8]) -> Result<Record, Error> {
    let bytes = mac.open(RowTable::Session, &n.to_le_bytes(), row).map_err(corrupt_row)?;
    let Some((id, rest)) = bytes.split_first_chunk::<16>() else {
        return Err(corrupt_row(crate::session::RecordError::Truncated));
    };
    let mut rec = Record::decode(SessionId::from_bytes(*id), rest).map_err(corrupt_row)?;
    rec.number = n;
    Ok(rec)
}

/// A sealed session row under number `n` that must belong to session `id`.
pub(crate) fn decode_session(mac: &RowMac, id: SessionId, n: u64, row: &[u8]) -> Result<Record, Error> {
    let rec = decode_row(mac, n, row)?;
    if rec.id != id {
        return Err(corrupt_row(crate::session::RecordError::BadTag));
    }
    Ok(rec)
}

/// `id ‖ record`, sealed under the session's number.
pub(crate) fn seal_session(mac: &RowMac, rec: &Record) -> Arc<[u8]> {
    let mut v = Vec::with_capacity(16 + 128 + rec.data.len());
    v.extend_from_slice(rec.id.as_bytes());
    v.extend_from_slice(&rec.encode());
    mac.seal(RowTable::Session, &rec.number.to_le_bytes(), v).into()
}

pub(crate) fn decode_family(mac: &RowMac, n: u64, row: &[u8]) -> Result<Families, Error> {
    let bytes = mac.open(RowTable::Refresh, &n.to_le_bytes(), row).map_err(corrupt_row)?;
    Families::decode(bytes).ok_or_else(|| corrupt_row(crate::session::RecordError::Truncated))
}

pub(crate) fn seal_revoked(mac: &RowMac, serial: u64, prune_after: u64, id: &[u8; 16]) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + mac::TAG_LEN);
    v.extend_from_slice(&prune_after.to_le_bytes());
    v.extend_from_slice(id);
    mac.seal(RowTable::Revoked, &serial.to_le_bytes(), v)
}

pub(crate) fn decode_revoked(mac: &RowMac, serial: u64, row: &[u8]) -> Result<(u64, SessionId), Error> {
    let b = mac.open(RowTable::Revoked, &serial.to_le_bytes(), row).map_err(corrupt_row)?;
    let mut r = crate::session::Reader::new(b);
    let prune_after = r.u64().map_err(corrupt_row)?;
    let id = r.array::<16>().map_err(corrupt_row)?;
    r.finish().map_err(corrupt_row)?;
    Ok((prune_after, SessionId::from_bytes(id)))
}

/// A table, or `None` in a file written before the table existed.
fn open_if_present<K: redb::Key + 'static, V: redb::Value + 'static>(
    rtx: &redb::ReadTransaction,
    def: redb::TableDefinition<'_, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, Error> {
    match rtx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// The sealed row of a user-revocation marker (the key says it all).
pub(crate) fn seal_cut(mac: &RowMac, key: &str) -> Vec<u8> {
    mac.seal(RowTable::Cut, key.as_bytes(), Vec::new())
}

/// Checks a marker row's tag.
fn mac_cut(mac: &RowMac, key: &str, row: &[u8]) -> Result<(), Error> {
    let b = mac.open(RowTable::Cut, key.as_bytes(), row).map_err(corrupt_row)?;
    crate::session::Reader::new(b).finish().map_err(corrupt_row)
}

pub(crate) fn seal_not_before(mac: &RowMac, user: &str, at: u64) -> Vec<u8> {
    mac.seal(RowTable::NotBefore, user.as_bytes(), at.to_le_bytes().to_vec())
}

pub(crate) fn decode_not_before(mac: &RowMac, user: &str, row: &[u8]) -> Result<u64, Error> {
    let b = mac.open(RowTable::NotBefore, user.as_bytes(), row).map_err(corrupt_row)?;
    let mut r = crate::session::Reader::new(b);
    let at = r.u64().map_err(corrupt_row)?;
    r.finish().map_err(corrupt_row)?;
    Ok(at)
}

/// One table's result in a full verification scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TableCheck {
    pub(crate) rows: u64,
    pub(crate) bad: u64,
}

/// What [`ReadOnly::list_user`] read: the user's sessions, and how many session
/// rows could not be read (failed their tag or did not decode).
#[derive(Default)]
pub(crate) struct UserRows {
    pub(crate) records: Vec<Record>,
    pub(crate) damaged: u64,
}

/// A database opened read-only (admin reads): redb's `ReadOnlyDatabase`, which
/// writes no byte of the file.
pub(crate) struct ReadOnly {
    db: redb::ReadOnlyDatabase,
    format: u64,
    /// The row key, when the server key is known (needed to read sealed rows).
    mac: Option<RowMac>,
}

impl ReadOnly {
    fn rtx(&self) -> Result<redb::ReadTransaction, Error> {
        self.db.begin_read().map_err(io)
    }

    fn mac(&self) -> Result<&RowMac, Error> {
        self.mac.as_ref().ok_or_else(|| Error::Config("reading sessions needs the server key".into()))
    }

    /// Reads every session of `user`, and counts the session rows that fail
    /// their tag or do not decode instead of failing on the first one (as
    /// `verify` does). Admin reads have no in-memory index: format 3 is
    /// scanned in full (about a second per million sessions), and a damaged
    /// row's user cannot be trusted, so every such row in the file is
    /// counted; formats 1 and 2 count only the rows `user`'s index names.
    pub(crate) fn list_user(&self, user: &str) -> Result<UserRows, Error> {
        guarded(|| {
            let rtx = self.rtx()?;
            let mut out = UserRows::default();
            if self.format >= 3 {
                let mac = self.mac()?;
                for row in rtx.open_table(SESSIONS).map_err(io)?.iter().map_err(io)? {
                    let (k, v) = row.map_err(io)?;
                    match decode_row(mac, k.value(), v.value()) {
                        Ok(rec) if &*rec.user == user => out.records.push(rec),
                        Ok(_) => {}
                        Err(_) => out.damaged += 1,
                    }
                }
                return Ok(out);
            }
            let sessions = rtx.open_table(SESSIONS_V2).map_err(io)?;
            let idx = rtx.open_table(USER_SESSIONS_V2).map_err(io)?;
            for row in idx.range((user, &[0u8; 16])..=(user, &[0xffu8; 16])).map_err(io)? {
                let (k, _) = row.map_err(io)?;
                let id = *k.value().1;
                if let Some(v) = sessions.get(&id).map_err(io)? {
                    match Record::decode(SessionId::from_bytes(id), v.value()) {
                        Ok(rec) => out.records.push(rec),
                        Err(_) => out.damaged += 1,
                    }
                }
            }
            Ok(out)
        })
    }

    /// A format-3 session's refresh families, by its storage number (older
    /// formats have none listed: they kept one unnumbered family per session).
    pub(crate) fn families(&self, number: u64) -> Result<Option<Families>, Error> {
        if self.format < 3 {
            return Ok(None);
        }
        let mac = self.mac()?;
        let rtx = self.rtx()?;
        let row = rtx.open_table(REFRESH).map_err(io)?.get(number).map_err(io)?;
        row.map(|v| decode_family(mac, number, v.value())).transpose()
    }

    /// Number of stored sessions.
    pub(crate) fn session_count(&self) -> Result<u64, Error> {
        let rtx = self.rtx()?;
        if self.format >= 3 {
            rtx.open_table(SESSIONS).map_err(io)?.len().map_err(io)
        } else {
            rtx.open_table(SESSIONS_V2).map_err(io)?.len().map_err(io)
        }
    }

    /// Number of rows in the revocation table.
    pub(crate) fn revoked_count(&self) -> Result<u64, Error> {
        let rtx = self.rtx()?;
        if self.format >= 3 {
            rtx.open_table(REVOKED).map_err(io)?.len().map_err(io)
        } else {
            rtx.open_table(REVOKED_V2).map_err(io)?.len().map_err(io)
        }
    }

    /// Whether `serial` is in the revocation table.
    pub(crate) fn is_revoked(&self, serial: u64) -> Result<bool, Error> {
        let rtx = self.rtx()?;
        if self.format >= 3 {
            Ok(rtx.open_table(REVOKED).map_err(io)?.get(serial).map_err(io)?.is_some())
        } else {
            Ok(rtx.open_table(REVOKED_V2).map_err(io)?.get(serial).map_err(io)?.is_some())
        }
    }

    /// Whether a tool created this file as a throwaway (`META_SCRATCH`).
    pub(crate) fn is_scratch(&self) -> Result<bool, Error> {
        let rtx = self.rtx()?;
        Ok(rtx.open_table(META).map_err(io)?.get(META_SCRATCH).map_err(io)?.is_some_and(|v| v.value() == 1))
    }

    /// The stored format version.
    pub(crate) fn format(&self) -> Result<u64, Error> {
        Ok(self.format)
    }

    /// Checks every authenticated row's tag and decoding, and that the user and
    /// expiry indexes point at stored sessions (and every session has both).
    /// Returns (table name, result) per table. Needs format 3 and the server key.
    pub(crate) fn verify(&self) -> Result<Vec<(&'static str, TableCheck)>, Error> {
        guarded(|| self.verify_unguarded())
    }

    fn verify_unguarded(&self) -> Result<Vec<(&'static str, TableCheck)>, Error> {
        if self.format < 3 {
            return Err(Error::Config(format!(
                "format {} has no row tags to verify; open it once with this version to migrate it",
                self.format
            )));
        }
        let mac = self.mac()?;
        let rtx = self.rtx()?;
        let mut out = Vec::new();
        let sessions = rtx.open_table(SESSIONS).map_err(io)?;
        let mut check = TableCheck::default();
        // number → (id, deadline) of every readable session.
        let mut live: std::collections::HashMap<u64, ([u8; 16], u64)> = std::collections::HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for row in sessions.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            check.rows += 1;
            match decode_row(mac, k.value(), v.value()) {
                // Two rows claiming one id: the second is bad.
                Ok(rec) if ids.insert(*rec.id.as_bytes()) => {
                    live.insert(k.value(), (*rec.id.as_bytes(), rec.deadline(rec.last_seen)));
                }
                _ => check.bad += 1,
            }
        }
        out.push((RowTable::Session.name(), check));
        let refresh = rtx.open_table(REFRESH).map_err(io)?;
        let check = tally(refresh.iter().map_err(io)?, |n, v| decode_family(mac, n, v).is_ok())?;
        out.push((RowTable::Refresh.name(), check));
        let revoked = rtx.open_table(REVOKED).map_err(io)?;
        let check = tally(revoked.iter().map_err(io)?, |serial, v| decode_revoked(mac, serial, v).is_ok())?;
        out.push((RowTable::Revoked.name(), check));
        let nb = rtx.open_table(NOT_BEFORE).map_err(io)?;
        let check = tally(nb.iter().map_err(io)?, |user, v| decode_not_before(mac, user, v).is_ok())?;
        out.push((RowTable::NotBefore.name(), check));
        if let Some(cuts) = open_if_present(&rtx, USER_CUTS)? {
            let check = tally(cuts.iter().map_err(io)?, |key, v| {
                mac_cut(mac, key, v).is_ok() && crate::backend::op::UserCut::parse(key).is_some()
            })?;
            out.push((RowTable::Cut.name(), check));
        }
        // Every readable session needs its current expiry row, or it would never
        // be swept; a stale expiry row is harmless (the sweeper drops it), but
        // one naming a session under another id is not.
        let expiry = rtx.open_table(EXPIRY).map_err(io)?;
        let mut check = TableCheck::default();
        let mut indexed = std::collections::HashSet::new();
        for row in expiry.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let (deadline, n) = k.value();
            check.rows += 1;
            match live.get(&n) {
                Some((id, d)) if id == v.value() && *d == deadline => {
                    indexed.insert(n);
                }
                Some((id, _)) if id == v.value() => {}
                Some(_) => check.bad += 1,
                None => {}
            }
        }
        check.bad += live.keys().filter(|n| !indexed.contains(*n)).count() as u64;
        out.push((EXPIRY.name(), check));
        Ok(out)
    }
}

/// Counts a table's rows and those `sound` refuses.
fn tally<K: redb::Key + 'static, V: redb::Value + 'static>(
    rows: redb::Range<'_, K, V>,
    mut sound: impl for<'a> FnMut(K::SelfType<'a>, V::SelfType<'a>) -> bool,
) -> Result<TableCheck, Error> {
    let mut check = TableCheck::default();
    for row in rows {
        let (k, v) = row.map_err(io)?;
        check.rows += 1;
        if !sound(k.value(), v.value()) {
            check.bad += 1;
        }
    }
    Ok(check)
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
