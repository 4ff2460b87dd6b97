//! Row authentication (format 3): every stored row that carries authority
//! (sessions, refresh families, revocations, not-before cut-offs) ends with a
//! 128-bit keyed blake3 tag over its table, its key and its value, under a key
//! derived from the server key (which is never in the database file). A flipped
//! bit, or an edit by someone who can write the file but lacks the server key,
//! fails the tag and the row is treated as corrupt: never served.

use subtle::ConstantTimeEq as _;

use crate::session::RecordError;

/// Bytes of the tag appended to each authenticated row.
pub(crate) const TAG_LEN: usize = 16;

/// Which table a row belongs to: part of the tag input, so a row copied from
/// one table to another (or under another key) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowTable {
    Session = 1,
    Refresh = 2,
    Revoked = 3,
    NotBefore = 4,
    Cut = 5,
}

impl RowTable {
    /// The table's name as `cloakroom verify` reports it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RowTable::Session => "sessions",
            RowTable::Refresh => "refresh",
            RowTable::Revoked => "revoked",
            RowTable::NotBefore => "not_before",
            RowTable::Cut => "user_cuts",
        }
    }
}

/// The row-authentication key.
#[derive(Clone)]
pub(crate) struct RowMac {
    key: [u8; 32],
}

impl std::fmt::Debug for RowMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowMac(<redacted>)")
    }
}

impl RowMac {
    pub(crate) fn new(server_key: &[u8; 32]) -> Self {
        RowMac { key: blake3::derive_key("cloakroom 2026 stored-row MAC v1", server_key) }
    }

    fn tag(&self, table: RowTable, key: &[u8], value: &[u8]) -> [u8; TAG_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&[table as u8]);
        // Keys have fixed or bounded lengths, but length-prefix anyway so no
        // (key, value) split of the same bytes can collide.
        #[allow(clippy::cast_possible_truncation)] // keys are ≤ 256 bytes
        h.update(&(key.len() as u32).to_le_bytes());
        h.update(key);
        h.update(value);
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
        out
    }

    /// `value ‖ tag`.
    pub(crate) fn seal(&self, table: RowTable, key: &[u8], mut value: Vec<u8>) -> Vec<u8> {
        let tag = self.tag(table, key, &value);
        value.extend_from_slice(&tag);
        value
    }

    /// The value of a sealed row whose tag verifies (constant-time compare).
    pub(crate) fn open<'a>(&self, table: RowTable, key: &[u8], row: &'a [u8]) -> Result<&'a [u8], RecordError> {
        let Some(split) = row.len().checked_sub(TAG_LEN) else {
            return Err(RecordError::Truncated);
        };
        let (value, tag) = row.split_at(split);
        if bool::from(self.tag(table, key, value).ct_eq(tag)) { Ok(value) } else { Err(RecordError::BadTag) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_opens_only_under_its_key_table_and_bytes() {
        let mac = RowMac::new(&[1; 32]);
        let row = mac.seal(RowTable::Session, b"k1", b"value".to_vec());
        assert_eq!(mac.open(RowTable::Session, b"k1", &row).unwrap(), b"value");
        assert_eq!(mac.open(RowTable::Session, b"k2", &row), Err(RecordError::BadTag));
        assert_eq!(mac.open(RowTable::Refresh, b"k1", &row), Err(RecordError::BadTag));
        assert_eq!(RowMac::new(&[2; 32]).open(RowTable::Session, b"k1", &row), Err(RecordError::BadTag));
        for i in 0..row.len() * 8 {
            let mut bad = row.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(mac.open(RowTable::Session, b"k1", &bad).is_err(), "bit {i}");
        }
        assert_eq!(mac.open(RowTable::Session, b"k1", &row[..3]), Err(RecordError::Truncated));
    }
}
