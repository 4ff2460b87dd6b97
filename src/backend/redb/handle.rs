//! The database handle ([`Db`]) shared by readers, the writer and the
//! applier: the live redb handle and its reopening after an I/O failure, the
//! in-memory overlay and index, the row key, the corrupt-row count, and the
//! reads every backend call makes (index, then overlay, then redb). Also the
//! mapping of redb errors ([`io`], [`storage`]) and the panic guard
//! ([`guarded`]) every file in `db` uses.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::ReadableDatabase as _;

use super::index::Index;
use super::overlay::Overlay;
use super::tables::{EXPIRY, REFRESH, SESSIONS};
use crate::backend::sealed::mac::RowMac;
use crate::backend::sealed::rows::{decode_family, decode_session};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::refresh::Families;
use crate::session::Record;
use crate::token::SessionId;

/// Reopens the database file after an I/O failure (redb refuses every operation
/// on a handle that saw one). `None` for in-memory databases, which have no file.
pub(super) type Opener = Box<dyn Fn() -> Result<redb::Database, Error> + Send + Sync>;

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

pub(crate) fn storage(kind: StorageErrorKind) -> impl FnOnce(redb::Error) -> Error {
    move |e| Error::Storage(StorageError::with_source(kind, e))
}

pub(crate) fn io<E: Into<redb::Error>>(e: E) -> Error {
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

/// A panic inside redb while opening a damaged file becomes a `Corrupt` error.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(StorageError::new(StorageErrorKind::Corrupt).into()))
}

/// Drops a database handle; redb's close (it trims and commits its allocator
/// state) can panic on a damaged file, which must not unwind into the caller.
fn release(db: Option<Arc<redb::Database>>) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
}

impl Db {
    /// The handle over a database just opened (and migrated and replayed),
    /// with an empty overlay and index (filled by the load).
    pub(super) fn new(db: redb::Database, opener: Option<Opener>, mac: RowMac) -> Db {
        Db {
            shared: Arc::new(Shared {
                current: parking_lot::RwLock::new(Some(Arc::new(db))),
                opener,
                closed: std::sync::atomic::AtomicBool::new(false),
                overlay: parking_lot::RwLock::new(Overlay::default()),
                index: Index::default(),
                mac,
                corrupt_rows: AtomicU64::new(0),
            }),
        }
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

    /// Counts a damaged row found without an error to pass on (a load that
    /// fails closed on it).
    pub(super) fn count_corrupt(&self) {
        self.shared.corrupt_rows.fetch_add(1, Ordering::Relaxed);
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
