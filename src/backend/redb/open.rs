//! Opening a database read-write: recognise the file (or make an in-memory
//! or fault-injection one) and create the tables of a fresh one
//! ([`Pending`]); once the server key is known, migrate an older format,
//! replay the journal and load what the store keeps in memory
//! ([`Pending::finish`] → [`Db`], [`Loaded`]).

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _};

use super::applier;
use super::format::{Fresh, check_format, not_a_directory, open_if_present, random_u64, stored_format, table_names};
use super::handle::{Db, Opener, guarded, io};
use super::index::IndexOp;
#[cfg(feature = "test-util")]
use super::journal::JournalIo;
use super::journal::{self, Journal};
use super::migrate::migrate;
use super::mutation;
use super::tables::{
    EXPIRY, FORMAT_VERSION, META, META_FORMAT, META_JOURNAL_ID, META_JOURNAL_SEQ, META_LEGACY_UNTIL, META_NEXT_SERIAL,
    META_SCRATCH, META_TAGGED_SINCE, NOT_BEFORE, REFRESH, REVOKED, SESSIONS, USER_CUTS,
};
use crate::backend::op::UserCut;
use crate::backend::sealed::mac::RowMac;
use crate::backend::sealed::rows::{decode_not_before, decode_revoked, decode_row, mac_cut};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::keys::DbState;
use crate::token::SessionId;

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
    /// User-wide revocations in progress (see [`UserCut`]).
    pub(crate) cuts: Vec<(String, UserCut)>,
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
        let db = Db::new(db, opener, mac);
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
                    self.count_corrupt();
                    if let Some(id) = v.value().first_chunk::<16>() {
                        damaged.push(IndexOp::AddDamaged { id: *id, number: n });
                    }
                }
            }
            if ops.len() >= 4096 {
                self.index().apply(&ops);
                ops.clear();
            }
        }
        self.index().apply(&ops);
        // After every sound row: a damaged row never takes over a sound session's id.
        damaged.retain(|op| matches!(op, IndexOp::AddDamaged { id, .. } if self.index().number(id).is_none()));
        self.index().apply(&damaged);
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
                    self.count_corrupt();
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
                self.count_corrupt();
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
                    self.count_corrupt();
                }
                match UserCut::parse(k.value()) {
                    Some(cut) => cuts.push(cut),
                    None => {
                        self.count_corrupt();
                        tracing::warn!(
                            "a user-revocation marker's key does not parse: ignored (run `cloakroom verify`)"
                        );
                    }
                }
            }
        }
        Ok(Loaded { next_serial, legacy, revoked: list, not_before, cuts, checkpointed: 0, replayed: 0 })
    }
}
