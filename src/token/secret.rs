//! Randomness from the OS, a session token's secret and its stored hash.

use std::fmt;

use rand::TryRng as _;
use subtle::ConstantTimeEq as _;

use super::layout::SECRET_LEN;
use crate::error::Error;

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn os_random(buf: &mut [u8]) -> Result<(), Error> {
    rand::rngs::SysRng.try_fill_bytes(buf).map_err(|_| Error::Entropy)
}

/// The 32-byte secret half of a session token. Never displayed.
#[derive(Clone)]
pub(crate) struct Secret(pub(super) [u8; SECRET_LEN]);

impl Secret {
    /// blake3 of the secret: what the database stores (SECURITY.md S2).
    pub(crate) fn hash(&self) -> SecretHash {
        SecretHash(*blake3::hash(&self.0).as_bytes())
    }
}

/// blake3 hash of a session secret, as stored at rest.
#[derive(Clone, Copy)]
pub(crate) struct SecretHash(pub(crate) [u8; 32]);

impl SecretHash {
    /// Constant-time comparison (SECURITY.md S3).
    pub(crate) fn matches(&self, other: &SecretHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}
