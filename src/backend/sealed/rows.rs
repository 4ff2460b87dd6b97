//! The row codecs: each authoritative row (session, refresh families,
//! revocation entry, not-before cut-off, user-revocation marker) encoded and
//! sealed under its key with the row key ([`super::mac`]), and opened and
//! decoded back, a failure becoming a `Corrupt` storage error.

use std::sync::Arc;

use super::mac::{self, RowMac, RowTable};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::refresh::Families;
use crate::session::Record;
use crate::token::SessionId;

fn corrupt_row(e: crate::session::RecordError) -> Error {
    StorageError::with_source(StorageErrorKind::Corrupt, e).into()
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

/// The sealed row of a user-revocation marker (the key says it all).
pub(crate) fn seal_cut(mac: &RowMac, key: &str) -> Vec<u8> {
    mac.seal(RowTable::Cut, key.as_bytes(), Vec::new())
}

/// Checks a marker row's tag.
pub(crate) fn mac_cut(mac: &RowMac, key: &str, row: &[u8]) -> Result<(), Error> {
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
