//! The byte layout of opaque tokens, the strict base64url framing they share,
//! and the family ‖ generation bits of a refresh token's counter.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::error::Malformed;

/// Strict base64url: no padding accepted, non-zero trailing bits rejected (canonical).
pub(super) const B64: GeneralPurpose = GeneralPurpose::new(
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

pub(super) const ID_LEN: usize = 16;
pub(super) const SECRET_LEN: usize = 32; // 256 bits from the OS CSPRNG (SECURITY.md S1)
pub(super) const TAG_LEN: usize = 4;
pub(super) const SESSION_RAW_LEN: usize = ID_LEN + SECRET_LEN + TAG_LEN; // 52
/// Length of an encoded session token: 4-char prefix + ceil(52 * 4 / 3) = 74.
pub const SESSION_TOKEN_LEN: usize = SESSION_PREFIX.len() + (SESSION_RAW_LEN * 4).div_ceil(3);
pub(super) const MAC_LEN: usize = 32;
pub(super) const REFRESH_RAW_LEN: usize = ID_LEN + 8 + 4 + MAC_LEN; // 60
/// Length of an encoded refresh token: 4 + 60 * 4 / 3 = 84.
pub const REFRESH_TOKEN_LEN: usize = REFRESH_PREFIX.len() + REFRESH_RAW_LEN * 4 / 3;

/// Longest input any opaque-token parser looks at (the default `max_token_len`).
const MAX_OPAQUE_LEN: usize = 4096;

/// Shared front checks for every token kind: emptiness, cap, prefix, exact length.
pub(super) fn check_frame(s: &[u8], prefix: &str, len: usize) -> Result<(), Malformed> {
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

pub(super) fn decode_exact<const N: usize>(b64: &[u8]) -> Result<[u8; N], Malformed> {
    let mut buf = [0u8; 64];
    let n = B64.decode_slice(b64, &mut buf).map_err(|_| Malformed::BadEncoding)?;
    if n != N {
        return Err(Malformed::WrongLength);
    }
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[..N]);
    Ok(out)
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
