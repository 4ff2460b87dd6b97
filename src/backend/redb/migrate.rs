//! Formats 1 and 2 → 3 (see [`migrate`]).

use redb::{ReadableDatabase as _, ReadableTable as _, TableHandle as _};

use super::format::{random_u64, stored_format, table_names};
use super::handle::io;
use super::tables::{
    EXPIRY, EXPIRY_V2, FORMAT_VERSION, META, META_FORMAT, META_JOURNAL_ID, META_JOURNAL_SEQ, NOT_BEFORE, NOT_BEFORE_V2,
    REFRESH, REFRESH_V2, REVOKED, REVOKED_V2, SESSIONS, SESSIONS_V2, USER_SESSIONS_V2,
};
use crate::backend::sealed::mac::{RowMac, RowTable};
use crate::backend::sealed::rows::{seal_not_before, seal_revoked, seal_session};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::refresh::Families;
use crate::session::Record;
use crate::token::SessionId;

/// Formats 1 and 2 → 3, in one durable transaction: every session moves to
/// its number (its current serial, unique among live sessions) in the ordered
/// table, sealed; expiry and refresh rows follow it; revocations and not-before
/// cut-offs move to their sealed tables; the per-user table is dropped (the
/// index lives in memory); the file gets a journal id. A crash before the
/// commit leaves the old file as it was.
pub(super) fn migrate(db: &redb::Database, mac: &RowMac) -> Result<(), Error> {
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
