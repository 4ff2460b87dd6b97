//! Recognising a file: its table names and stored format version decide
//! whether it is a new (empty) database, one of ours, or to be refused; and
//! the small helpers opening, migrating and verifying share (a table that may
//! be absent from an older file, a new journal id).

use std::path::Path;

use redb::TableHandle as _;

use super::handle::io;
use super::tables::{FORMAT_VERSION, META, META_FORMAT};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::token::os_random;

/// Refuses a directory before redb sees it (its message would name neither).
pub(super) fn not_a_directory(path: &Path) -> Result<(), Error> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(StorageError::new(StorageErrorKind::Directory).into());
    }
    Ok(())
}

pub(super) fn random_u64() -> Result<u64, Error> {
    let mut b = [0u8; 8];
    os_random(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A table, or `None` in a file written before the table existed.
pub(super) fn open_if_present<K: redb::Key + 'static, V: redb::Value + 'static>(
    rtx: &redb::ReadTransaction,
    def: redb::TableDefinition<'_, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, Error> {
    match rtx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

pub(super) fn table_names(rtx: &redb::ReadTransaction) -> Result<Vec<String>, Error> {
    Ok(rtx.list_tables().map_err(io)?.map(|t| t.name().to_owned()).collect())
}

pub(super) fn stored_format(rtx: &redb::ReadTransaction, names: &[String]) -> Result<Option<u64>, Error> {
    if !names.iter().any(|n| n == "meta") {
        return Ok(None);
    }
    Ok(rtx.open_table(META).map_err(io)?.get(META_FORMAT).map_err(io)?.map(|v| v.value()))
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fresh {
    Yes,
    No,
}

/// Decides from the table names and stored format version whether a file is a
/// new (empty) database, one of ours, or to be refused.
pub(super) fn check_format(tables: &[String], format: Option<u64>) -> Result<Fresh, Error> {
    match format {
        Some(v) if v > FORMAT_VERSION => Err(StorageError::new(StorageErrorKind::NewerFormat).into()),
        Some(_) => Ok(Fresh::No),
        None if tables.is_empty() => Ok(Fresh::Yes),
        None => Err(StorageError::new(StorageErrorKind::NotCloakroom).into()),
    }
}
