//! [`SessionToken`]: the `crs_` token of a server-side session.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use super::id::SessionId;
use super::layout::{
    B64, ID_LEN, SECRET_LEN, SESSION_PREFIX, SESSION_RAW_LEN, SESSION_TOKEN_LEN, TAG_LEN, check_frame, decode_exact,
};
use super::secret::{Secret, SecretHash, os_random};
use super::tag::{TagKey, TagState, legacy_checksum};
use crate::error::{Error, Malformed};

/// An opaque session token: the id plus a 256-bit secret (and the issuing
/// store's tag over both).
///
/// `Display` yields the `crs_…` string to hand to the client (e.g. in a cookie).
/// `Debug` shows only the id.
#[derive(Clone)]
pub struct SessionToken {
    id: SessionId,
    secret: Secret,
    tag: [u8; TAG_LEN],
}

impl SessionToken {
    pub(crate) fn generate(key: &TagKey) -> Result<Self, Error> {
        // Id and secret from one read of the OS CSPRNG (one system call).
        let mut raw = [0u8; ID_LEN + SECRET_LEN];
        os_random(&mut raw)?;
        Ok(Self::from_raw(&raw, key))
    }

    /// A token for an existing session id with a fresh secret (rotation).
    pub(crate) fn with_new_secret(id: SessionId, key: &TagKey) -> Result<Self, Error> {
        let mut s = [0u8; SECRET_LEN];
        os_random(&mut s)?;
        Ok(Self::tagged(id, Secret(s), key))
    }

    /// The token whose id is the first 16 bytes of `raw` and secret the rest.
    fn from_raw(raw: &[u8; ID_LEN + SECRET_LEN], key: &TagKey) -> Self {
        let (mut id, mut s) = ([0u8; ID_LEN], [0u8; SECRET_LEN]);
        id.copy_from_slice(&raw[..ID_LEN]);
        s.copy_from_slice(&raw[ID_LEN..]);
        Self::tagged(SessionId(id), Secret(s), key)
    }

    /// The token of this id and secret, with its tag.
    fn tagged(id: SessionId, secret: Secret, key: &TagKey) -> Self {
        let tag = key.tag(&id, &secret);
        Self { id, secret, tag }
    }

    /// The token a framework's own session id (`foreign`, e.g. tower-sessions'
    /// 128-bit cookie value) stands for: 48 bytes of a keyed blake3 of it give
    /// the id (16) and the secret (32). The same foreign id always gives the
    /// same token; without `key` neither half can be computed from it, and
    /// the foreign id cannot be recovered from the stored id or secret hash.
    #[cfg(any(feature = "tower-sessions", feature = "tower-sessions-015"))]
    pub(crate) fn derived(foreign: &[u8], key: &[u8; 32], tag: &TagKey) -> Self {
        let mut out = [0u8; ID_LEN + SECRET_LEN];
        blake3::Hasher::new_keyed(key).update(foreign).finalize_xof().fill(&mut out);
        Self::from_raw(&out, tag)
    }

    /// The session id (not secret).
    #[must_use]
    pub fn id(&self) -> SessionId {
        self.id
    }

    pub(crate) fn secret_hash(&self) -> SecretHash {
        self.secret.hash()
    }

    /// Checks the tag against `key` (constant time), then, if `legacy()` says
    /// pre-tag tokens are still accepted, against the pre-tag checksum.
    pub(crate) fn tag_state(&self, key: &TagKey, legacy: impl FnOnce() -> bool) -> TagState {
        if bool::from(key.tag(&self.id, &self.secret).ct_eq(&self.tag)) {
            TagState::Keyed
        } else if legacy() && legacy_checksum(&self.id, &self.secret) == self.tag {
            TagState::Legacy
        } else {
            TagState::Bad
        }
    }

    /// Parses a `crs_…` token: prefix, length and strict base64url. Rejects
    /// every malformed input with [`Error::Malformed`]; never panics, never
    /// allocates. The tag needs the server key: the store checks it
    /// ([`Malformed::BadChecksum`] from `validate`), before any lookup.
    ///
    /// # Errors
    /// [`Error::Malformed`] with the reason.
    pub fn parse(s: &str) -> Result<Self, Error> {
        parse_session(s.as_bytes()).map_err(Error::Malformed)
    }
}

fn parse_session(s: &[u8]) -> Result<SessionToken, Malformed> {
    check_frame(s, SESSION_PREFIX, SESSION_TOKEN_LEN)?;
    let raw: [u8; SESSION_RAW_LEN] = decode_exact(&s[SESSION_PREFIX.len()..])?;
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&raw[..ID_LEN]);
    let mut secret = [0u8; SECRET_LEN];
    secret.copy_from_slice(&raw[ID_LEN..ID_LEN + SECRET_LEN]);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&raw[ID_LEN + SECRET_LEN..]);
    Ok(SessionToken { id: SessionId(id), secret: Secret(secret), tag })
}

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = [0u8; SESSION_RAW_LEN];
        raw[..ID_LEN].copy_from_slice(&self.id.0);
        raw[ID_LEN..ID_LEN + SECRET_LEN].copy_from_slice(&self.secret.0);
        raw[ID_LEN + SECRET_LEN..].copy_from_slice(&self.tag);
        let mut buf = [0u8; 72];
        let n = B64.encode_slice(raw, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(SESSION_PREFIX)?;
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionToken").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

impl FromStr for SessionToken {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> TagKey {
        TagKey::new(&[b; 32])
    }

    #[test]
    fn session_token_round_trips_and_has_fixed_length() {
        let t = SessionToken::generate(&key(5)).unwrap();
        let s = t.to_string();
        assert_eq!(s.len(), SESSION_TOKEN_LEN);
        assert!(s.starts_with("crs_"));
        let p = SessionToken::parse(&s).unwrap();
        assert_eq!(p.id(), t.id());
        assert!(p.secret_hash().matches(&t.secret_hash()));
    }

    #[test]
    fn debug_never_shows_secret() {
        let t = SessionToken::generate(&key(5)).unwrap();
        let s = t.to_string();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(&s[4..]), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn every_truncation_is_rejected() {
        let s = SessionToken::generate(&key(5)).unwrap().to_string();
        for i in 0..s.len() {
            assert!(SessionToken::parse(&s[..i]).is_err(), "prefix of len {i} accepted");
        }
    }

    #[test]
    fn every_single_char_change_is_rejected() {
        let s = SessionToken::generate(&key(5)).unwrap().to_string();
        for i in 4..s.len() {
            let mut b = s.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let m = String::from_utf8(b).unwrap();
            let checked = SessionToken::parse(&m).map(|t| t.tag_state(&key(5), || true));
            assert!(!matches!(checked, Ok(TagState::Keyed | TagState::Legacy)), "mutation at {i} accepted");
        }
    }

    #[test]
    fn the_tag_is_keyed_and_stable() {
        let (id, secret) = (SessionId([0; 16]), Secret([0; 32]));
        // Pinned: changing the tag invalidates every token in circulation.
        assert_eq!(key(5).tag(&id, &secret), [235, 64, 224, 93]);
        assert_ne!(key(6).tag(&id, &secret), key(5).tag(&id, &secret));
        let t = SessionToken::generate(&key(5)).unwrap();
        assert_eq!(t.tag_state(&key(5), || false), TagState::Keyed);
        assert_eq!(t.tag_state(&key(6), || true), TagState::Bad);
        let old = SessionToken { tag: legacy_checksum(&t.id, &t.secret), ..t.clone() };
        assert_eq!(old.tag_state(&key(5), || true), TagState::Legacy);
        assert_eq!(old.tag_state(&key(5), || false), TagState::Bad);
    }

    #[test]
    fn non_canonical_trailing_bits_are_rejected() {
        let s = SessionToken::generate(&key(5)).unwrap().to_string();
        let mut b = s.into_bytes();
        let last = b.len() - 1;
        // The final char carries 2 data bits + 4 zero bits: set one of those.
        let value = B64_ALPHABET.iter().position(|&c| c == b[last]).unwrap();
        b[last] = B64_ALPHABET[value | 1];
        assert!(matches!(parse_session(&b), Err(Malformed::BadEncoding)));
    }

    const B64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
}
