//! [`RefreshToken`]: the `crr_` token that rotates an access token pair.

use std::fmt;

use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use super::id::SessionId;
use super::layout::{
    B64, ID_LEN, MAC_LEN, REFRESH_PREFIX, REFRESH_RAW_LEN, REFRESH_TOKEN_LEN, check_frame, decode_exact, unpack,
};
use crate::error::{Error, Malformed};

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

#[cfg(test)]
mod tests {
    use super::super::session_token::SessionToken;
    use super::super::tag::TagKey;
    use super::*;

    #[test]
    fn refresh_token_round_trips() {
        let t = RefreshToken { id: SessionId([7; 16]), generation: 9, key_id: 3, mac: [1; 32] };
        let s = t.to_string();
        assert_eq!(s.len(), REFRESH_TOKEN_LEN);
        let p = RefreshToken::parse(&s).unwrap();
        assert_eq!((p.id, p.generation, p.key_id, p.mac), (t.id, 9, 3, [1; 32]));
        assert!(SessionToken::parse(&s).is_err());
        assert!(matches!(
            RefreshToken::parse(&SessionToken::generate(&TagKey::new(&[5; 32])).unwrap().to_string()),
            Err(Error::Malformed(Malformed::WrongKind))
        ));
    }
}
