//! Admin reads: a database opened read-only ([`ReadOnly`], redb's
//! `ReadOnlyDatabase`, which writes no byte of the file), its counts and
//! per-user listing, and the full verification scan ([`ReadOnly::verify`]:
//! every sealed row's tag and decoding, and the expiry index against the
//! sessions).

use std::path::Path;

use redb::{ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _, TableHandle as _};

use super::format::{Fresh, check_format, not_a_directory, open_if_present, stored_format, table_names};
use super::handle::{Db, guarded, io};
use super::journal;
use super::tables::{
    EXPIRY, META, META_SCRATCH, NOT_BEFORE, REFRESH, REVOKED, REVOKED_V2, SESSIONS, SESSIONS_V2, USER_CUTS,
    USER_SESSIONS_V2,
};
use crate::backend::op::UserCut;
use crate::backend::sealed::mac::{RowMac, RowTable};
use crate::backend::sealed::rows::{decode_family, decode_not_before, decode_revoked, decode_row, mac_cut};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::refresh::Families;
use crate::session::Record;
use crate::token::SessionId;

impl Db {
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

    /// The user-wide revocations in progress of `user` (markers a store left
    /// unfinished: the next `Store::open` finishes them). A marker row whose
    /// tag fails still counts (it only refuses).
    pub(crate) fn cuts_of(&self, user: &str) -> Result<Vec<UserCut>, Error> {
        let rtx = self.rtx()?;
        let mut out = Vec::new();
        if self.format >= 3
            && let Some(table) = open_if_present(&rtx, USER_CUTS)?
        {
            for row in table.iter().map_err(io)? {
                let (k, _) = row.map_err(io)?;
                if let Some((u, cut)) = UserCut::parse(k.value())
                    && u == user
                {
                    out.push(cut);
                }
            }
        }
        Ok(out)
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
                mac_cut(mac, key, v).is_ok() && UserCut::parse(key).is_some()
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
