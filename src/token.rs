//! Token formats: generate, encode, parse. No I/O here: this is the fuzz surface.
//!
//! Session token: `crs_` + base64url(id 16 B ‖ secret 32 B ‖ tag 4 B), 74 chars.
//! Refresh token: `crr_` + base64url(id 16 B ‖ generation 8 B ‖ key id 4 B ‖ MAC 32 B), 84 chars.
//!
//! The tag is SipHash-1-3 (a keyed PRF built for short inputs; the 128-bit key is
//! derived from the server key) over id ‖ secret, folded to 4 bytes. The store that issued a token checks
//! it before any lookup, so a typo, a truncated copy or a token forged without
//! the server key is refused in one hash, never reaching the cache, the index or
//! the disk. It is a filter, not the security boundary: the secret (compared as
//! a blake3 hash) and the refresh MAC are.
//!
//! Tokens issued before the tag (cloakroom 0.1 up to the keyed-tag change)
//! carried an unkeyed checksum in the same 4 bytes ([`TagState::Legacy`]). A
//! store accepts those only for sessions that existed when its file was first
//! opened by a tagging version, and only until the last of them expires.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rand::TryRng as _;
use subtle::ConstantTimeEq as _;

use crate::error::{Error, Malformed};

/// Strict base64url: no padding accepted, non-zero trailing bits rejected (canonical).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Prefix of opaque session tokens.
pub const SESSION_PREFIX: &str = "crs_";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "crr_";

const ID_LEN: usize = 16;
const SECRET_LEN: usize = 32; // 256 bits from the OS CSPRNG (SECURITY.md S1)
const TAG_LEN: usize = 4;
const SESSION_RAW_LEN: usize = ID_LEN + SECRET_LEN + TAG_LEN; // 52
/// Length of an encoded session token: 4-char prefix + ceil(52 * 4 / 3) = 74.
pub const SESSION_TOKEN_LEN: usize = SESSION_PREFIX.len() + (SESSION_RAW_LEN * 4).div_ceil(3);
const MAC_LEN: usize = 32;
const REFRESH_RAW_LEN: usize = ID_LEN + 8 + 4 + MAC_LEN; // 60
/// Length of an encoded refresh token: 4 + 60 * 4 / 3 = 84.
pub const REFRESH_TOKEN_LEN: usize = REFRESH_PREFIX.len() + REFRESH_RAW_LEN * 4 / 3;

/// Longest input any opaque-token parser looks at (the default `max_token_len`).
const MAX_OPAQUE_LEN: usize = 4096;

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn os_random(buf: &mut [u8]) -> Result<(), Error> {
    rand::rngs::SysRng.try_fill_bytes(buf).map_err(|_| Error::Entropy)
}

/// The public, non-secret identifier of a session (16 random bytes).
///
/// Safe to log. Displays as 22 base64url characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionId([u8; ID_LEN]);

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

/// The 32-byte secret half of a session token. Never displayed.
#[derive(Clone)]
pub(crate) struct Secret([u8; SECRET_LEN]);

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

/// The key of the session-token tag, derived from the server key.
pub(crate) struct TagKey(siphasher::sip::SipHasher13);

impl TagKey {
    /// A tag key from 32 derived bytes (SipHash takes the first 16).
    pub(crate) fn new(derived: &[u8; 32]) -> Self {
        let mut k = [0u8; 16];
        k.copy_from_slice(&derived[..16]);
        Self(siphasher::sip::SipHasher13::new_with_key(&k))
    }

    fn tag(&self, id: &SessionId, secret: &Secret) -> [u8; TAG_LEN] {
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

/// The checksum of pre-tag tokens over prefix ‖ id ‖ secret: a
/// multiply-xorshift mix of 8-byte words folded to 32 bits. Unkeyed: anyone can
/// compute it, so it only admits tokens to the legacy path's full check.
fn legacy_checksum(id: &SessionId, secret: &Secret) -> [u8; TAG_LEN] {
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

/// Shared front checks for every token kind: emptiness, cap, prefix, exact length.
fn check_frame(s: &[u8], prefix: &str, len: usize) -> Result<(), Malformed> {
    // Cap first, so nothing below scans an attacker-sized input.
    if s.len() > MAX_OPAQUE_LEN {
        return Err(Malformed::TooLong);
    }
    if s.iter().all(u8::is_ascii_whitespace) {
        return Err(Malformed::Empty);
    }
    let other = if prefix == SESSION_PREFIX { REFRESH_PREFIX } else { SESSION_PREFIX };
    if s.starts_with(other.as_bytes()) {
        return Err(Malformed::WrongKind);
    }
    if !s.starts_with(prefix.as_bytes()) {
        if looks_like_jwt(s) {
            return Err(Malformed::WrongKind);
        }
        return Err(Malformed::WrongPrefix);
    }
    if s.len() != len {
        return Err(if s.len() > len { Malformed::TooLong } else { Malformed::WrongLength });
    }
    Ok(())
}

/// A compact JWS starts with a base64url header `eyJ` (`{"`).
pub(crate) fn looks_like_jwt(s: &[u8]) -> bool {
    s.starts_with(b"eyJ")
}

fn decode_exact<const N: usize>(b64: &[u8]) -> Result<[u8; N], Malformed> {
    let mut buf = [0u8; 64];
    let n = B64.decode_slice(b64, &mut buf).map_err(|_| Malformed::BadEncoding)?;
    if n != N {
        return Err(Malformed::WrongLength);
    }
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[..N]);
    Ok(out)
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

/// A refresh token: (session id, family ‖ generation, key id, MAC).
///
/// `Display` yields the `crr_…` string; `Debug` hides the MAC.
#[derive(Clone)]
pub struct RefreshToken {
    pub(crate) id: SessionId,
    pub(crate) generation: u64,
    pub(crate) key_id: u32,
    pub(crate) mac: [u8; MAC_LEN],
}

impl RefreshToken {
    /// The session this token refreshes.
    #[must_use]
    pub fn session_id(&self) -> SessionId {
        self.id
    }

    /// The rotation generation this token carries within its family.
    #[must_use]
    pub fn generation(&self) -> u64 {
        unpack(self.generation).1
    }

    /// The refresh family (one per `issue_tokens` call: a device or tab) this
    /// token belongs to, numbered from 0 within its session.
    #[must_use]
    pub fn family(&self) -> u32 {
        unpack(self.generation).0
    }

    /// Parses a `crr_…` token (format only: the MAC is checked by the store).
    ///
    /// # Errors
    /// [`Error::Malformed`] with the reason.
    pub fn parse(s: &str) -> Result<Self, Error> {
        parse_refresh(s.as_bytes()).map_err(Error::Malformed)
    }

    /// The bytes the MAC covers: prefix ‖ id ‖ generation ‖ key id.
    pub(crate) fn mac_input(id: &SessionId, generation: u64, key_id: u32) -> [u8; 32] {
        let mut m = [0u8; 32];
        m[..4].copy_from_slice(REFRESH_PREFIX.as_bytes());
        m[4..20].copy_from_slice(&id.0);
        m[20..28].copy_from_slice(&generation.to_le_bytes());
        m[28..].copy_from_slice(&key_id.to_le_bytes());
        m
    }

    /// Constant-time MAC comparison.
    pub(crate) fn mac_matches(&self, expected: &[u8; MAC_LEN]) -> bool {
        self.mac.ct_eq(expected).into()
    }
}

fn parse_refresh(s: &[u8]) -> Result<RefreshToken, Malformed> {
    check_frame(s, REFRESH_PREFIX, REFRESH_TOKEN_LEN)?;
    let raw: [u8; REFRESH_RAW_LEN] = decode_exact(&s[REFRESH_PREFIX.len()..])?;
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&raw[..16]);
    let mut g = [0u8; 8];
    g.copy_from_slice(&raw[16..24]);
    let mut k = [0u8; 4];
    k.copy_from_slice(&raw[24..28]);
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&raw[28..]);
    Ok(RefreshToken { id: SessionId(id), generation: u64::from_le_bytes(g), key_id: u32::from_le_bytes(k), mac })
}

impl fmt::Display for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = [0u8; REFRESH_RAW_LEN];
        raw[..16].copy_from_slice(&self.id.0);
        raw[16..24].copy_from_slice(&self.generation.to_le_bytes());
        raw[24..28].copy_from_slice(&self.key_id.to_le_bytes());
        raw[28..].copy_from_slice(&self.mac);
        let mut buf = [0u8; 80];
        let n = B64.encode_slice(raw, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(REFRESH_PREFIX)?;
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshToken")
            .field("session", &self.id)
            .field("generation", &self.generation)
            .field("key_id", &self.key_id)
            .field("mac", &"<redacted>")
            .finish()
    }
}

/// A token's 64-bit counter: family number in the high 24 bits, generation in
/// the low 40. Tokens minted before families existed have family 0, which is
/// what a format-1/2 row decodes as, so they keep working.
const GENERATION_BITS: u32 = 40;
const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;

pub(crate) fn pack(family: u32, generation: u64) -> u64 {
    (u64::from(family) << GENERATION_BITS) | (generation & GENERATION_MASK)
}

pub(crate) fn unpack(counter: u64) -> (u32, u64) {
    #[allow(clippy::cast_possible_truncation)] // 64 - 40 = 24 bits
    let family = (counter >> GENERATION_BITS) as u32;
    (family, counter & GENERATION_MASK)
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

    #[test]
    fn refresh_token_round_trips() {
        let t = RefreshToken { id: SessionId([7; 16]), generation: 9, key_id: 3, mac: [1; 32] };
        let s = t.to_string();
        assert_eq!(s.len(), REFRESH_TOKEN_LEN);
        let p = RefreshToken::parse(&s).unwrap();
        assert_eq!((p.id, p.generation, p.key_id, p.mac), (t.id, 9, 3, [1; 32]));
        assert!(SessionToken::parse(&s).is_err());
        assert!(matches!(
            RefreshToken::parse(&SessionToken::generate(&key(5)).unwrap().to_string()),
            Err(Error::Malformed(Malformed::WrongKind))
        ));
    }

    #[test]
    fn session_id_display_parse_round_trip() {
        let id = SessionId::random().unwrap();
        assert_eq!(id.to_string().parse::<SessionId>().unwrap(), id);
        assert!("short".parse::<SessionId>().is_err());
    }
}
