//! The keyed tag that ends a session token (checked before any lookup), and
//! the unkeyed checksum of tokens issued before the tag existed.

use super::id::SessionId;
use super::layout::{ID_LEN, SECRET_LEN, TAG_LEN};
use super::secret::Secret;

/// The key of the session-token tag, derived from the server key.
pub(crate) struct TagKey(siphasher::sip::SipHasher13);

impl TagKey {
    /// A tag key from 32 derived bytes (SipHash takes the first 16).
    pub(crate) fn new(derived: &[u8; 32]) -> Self {
        let mut k = [0u8; 16];
        k.copy_from_slice(&derived[..16]);
        Self(siphasher::sip::SipHasher13::new_with_key(&k))
    }

    pub(super) fn tag(&self, id: &SessionId, secret: &Secret) -> [u8; TAG_LEN] {
        // 48 bytes, six SipHash blocks; the derived key separates the domain.
        let mut m = [0u8; ID_LEN + SECRET_LEN];
        m[..ID_LEN].copy_from_slice(&id.0);
        m[ID_LEN..].copy_from_slice(&secret.0);
        let h = self.0.hash(&m);
        #[allow(clippy::cast_possible_truncation)] // folding 64 bits to 32 on purpose
        let folded = (h ^ (h >> 32)) as u32;
        folded.to_le_bytes()
    }
}

/// How a parsed session token's last 4 bytes check out against a store's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagState {
    /// The keyed tag of this store: issued by it (or by a store with its server key).
    Keyed,
    /// The unkeyed checksum of tokens issued before the tag existed.
    Legacy,
    /// Neither: a typo, a truncated copy, another store's token or a forgery.
    Bad,
}

/// The checksum of pre-tag tokens over prefix ‖ id ‖ secret: a
/// multiply-xorshift mix of 8-byte words folded to 32 bits. Unkeyed: anyone can
/// compute it, so it only admits tokens to the legacy path's full check.
pub(super) fn legacy_checksum(id: &SessionId, secret: &Secret) -> [u8; TAG_LEN] {
    let mut payload = [0u8; ID_LEN + SECRET_LEN];
    payload[..ID_LEN].copy_from_slice(&id.0);
    payload[ID_LEN..].copy_from_slice(&secret.0);
    checksum(b"crs_", &payload)
}

/// Word-at-a-time, so checking one costs ~7 multiplies.
fn checksum(prefix: &[u8; 4], payload: &[u8]) -> [u8; TAG_LEN] {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = u64::from(u32::from_le_bytes(*prefix)) ^ (payload.len() as u64).wrapping_mul(K);
    let mut chunks = payload.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
        h ^= h >> 29;
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K);
    }
    h ^= h >> 32;
    #[allow(clippy::cast_possible_truncation)] // folding to 32 bits on purpose
    let folded = h as u32;
    folded.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_stable() {
        // Pinned: pre-tag tokens in circulation carry it.
        assert_eq!(checksum(b"crs_", &[0u8; 48]), [44, 13, 126, 101]);
    }

    #[test]
    fn siphash_is_siphash_2_4() {
        // The reference vector of the SipHash paper (Aumasson, Bernstein), appendix A.
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0u8..15).collect();
        assert_eq!(siphasher::sip::SipHasher24::new_with_key(&key).hash(&msg), 0xa129_ca61_49be_45e5);
    }
}
