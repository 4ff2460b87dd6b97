//! [`SessionId`], the public half of a session token, and the hasher of maps keyed by it.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;

use super::layout::{B64, ID_LEN};
#[cfg(test)]
use super::secret::os_random;
use crate::error::{Error, Malformed};

/// The public, non-secret identifier of a session (16 random bytes).
///
/// Safe to log. Displays as 22 base64url characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionId(pub(super) [u8; ID_LEN]);

impl SessionId {
    #[cfg(test)]
    pub(crate) fn random() -> Result<Self, Error> {
        let mut b = [0u8; ID_LEN];
        os_random(&mut b)?;
        Ok(Self(b))
    }

    pub(crate) fn from_bytes(b: [u8; ID_LEN]) -> Self {
        Self(b)
    }

    /// The raw 16 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// The first 8 bytes as a little-endian word. The id is uniformly random, so
    /// this is already a good hash; the cache uses it directly.
    pub(crate) fn hash_word(&self) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(w)
    }

    /// Bytes 8..16 as a word: picks the cache shard, independent of [`Self::hash_word`]
    /// which the shard's hash map uses for buckets.
    pub(crate) fn shard_word(&self) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.0[8..]);
        u64::from_le_bytes(w)
    }
}

/// Session ids are uniformly random, so their first word is already a good hash.
/// Attackers cannot choose which ids get inserted (only stored sessions are), so
/// this is not a hash-flooding risk: a forged id only costs its own probe.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `SessionId::hash`; fold anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Builds [`IdHasher`]s: the hasher of every map keyed by [`SessionId`].
pub(crate) type IdHash = std::hash::BuildHasherDefault<IdHasher>;

impl std::hash::Hash for SessionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash_word());
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 24];
        let n = B64.encode_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl FromStr for SessionId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.len() != 22 {
            return Err(Malformed::WrongLength.into());
        }
        let mut buf = [0u8; 18];
        let n = B64.decode_slice(s, &mut buf).map_err(|_| Malformed::BadEncoding)?;
        if n != ID_LEN {
            return Err(Malformed::WrongLength.into());
        }
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&buf[..ID_LEN]);
        Ok(Self(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_display_parse_round_trip() {
        let id = SessionId::random().unwrap();
        assert_eq!(id.to_string().parse::<SessionId>().unwrap(), id);
        assert!("short".parse::<SessionId>().is_err());
    }
}
