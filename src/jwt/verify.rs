//! Verification of access tokens (the store's path) and of other compact
//! JWS ([`Keyring::verify_signature`]), in the order of the parent module's docs.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use jsonwebtoken::Validation;
use serde::Deserialize;

use super::claims::{ACCESS_TYP, AccessClaims};
use super::keyring::{KeyState, Keyring};
use crate::clock::to_millis;
use crate::error::{Error, JwtError};

impl Keyring {
    /// Verifies an access token's shape, header, signature and claims (not
    /// revocation). One pass: the compact shape is checked once, the header
    /// decoded and parsed once, the signature checked by jsonwebtoken's crypto
    /// layer (`crypto::verify`, the `rust_crypto` backend) over the signing
    /// input, and the claims decoded and parsed once by the single-pass
    /// [`AccessClaims`] deserializer. The key comes from the keyring's
    /// snapshot: no lock, no shared write, no copy of the key.
    pub(crate) fn verify(&self, token: &str, policy: &Policy, now: SystemTime) -> Result<AccessClaims, JwtError> {
        check_compact(token)?;
        let (signing_input, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
        let (header_b64, claims_b64) = signing_input.split_once('.').ok_or(JwtError::Malformed)?;
        if header_b64.len() > 1024 {
            return Err(JwtError::Malformed);
        }
        let json =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header_b64).map_err(|_| JwtError::Malformed)?;
        let header = RawHeader::parse(&json)?;
        if header.enc.is_some() || header.zip.is_some() {
            return Err(JwtError::Header("JWE is not accepted"));
        }
        if !is_access_typ(header.typ.as_deref()) {
            return Err(JwtError::Header("typ must be at+jwt"));
        }
        let kid = header.kid.as_deref().ok_or(JwtError::Header("kid missing"))?;
        let keys = self.keys.read();
        let key = keys
            .iter()
            .find(|k| k.kid == kid && !matches!(k.state, KeyState::Retired { until } if until <= now))
            .ok_or(JwtError::Header("unknown kid"))?;
        // The allow-list: the kid's one algorithm, compared as an exact string.
        if header.alg != key.alg.name() {
            return Err(JwtError::Header("alg not allowed for this kid"));
        }
        match jsonwebtoken::crypto::verify(signature, signing_input.as_bytes(), &key.decoding, key.alg.jwt()) {
            Ok(true) => {}
            Ok(false) => return Err(JwtError::Signature),
            Err(e) => return Err(map_error(e)),
        }
        let claims_json =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims_b64).map_err(|_| JwtError::Malformed)?;
        let c: AccessClaims =
            serde_json::from_slice(&claims_json).map_err(|_| JwtError::Claim("wrong type or missing"))?;
        if c.iss != policy.issuer {
            return Err(JwtError::Claim("iss"));
        }
        if c.aud != policy.audience {
            return Err(JwtError::Claim("aud"));
        }
        if c.sub.is_empty() {
            return Err(JwtError::Claim("sub"));
        }
        if c.jti.is_empty() {
            return Err(JwtError::Claim("jti"));
        }
        if expired(c.exp, now, policy.leeway) {
            return Err(JwtError::Expired);
        }
        let (now_s, leeway) = (to_millis(now) / 1000, policy.leeway.as_secs());
        if c.nbf > now_s.saturating_add(leeway) || c.iat > now_s.saturating_add(leeway) {
            return Err(JwtError::NotYetValid);
        }
        Ok(c)
    }

    /// Verifies only the signature and `alg` of a compact JWS against key `kid`,
    /// and `exp` if present (with `leeway`), returning the claims. For interop
    /// with tokens that are not cloakroom access tokens; use
    /// `Store::verify_access` for ours. The same caps as `verify_access` apply:
    /// at most 4 KiB, compact shape, no `crit`, and a retired key stops
    /// verifying at the end of its window.
    ///
    /// # Errors
    /// [`Error::Jwt`] with the reason.
    pub fn verify_signature(
        &self,
        token: &str,
        kid: &str,
        now: SystemTime,
        leeway: Duration,
    ) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
        if token.len() > MAX_VERIFY_LEN {
            return Err(JwtError::Malformed.into());
        }
        let json = header_json(token)?;
        let header = RawHeader::parse(&json)?;
        let keys = self.keys.read();
        let key = keys
            .iter()
            .find(|k| k.kid == kid && !matches!(k.state, KeyState::Retired { until } if until <= now))
            .ok_or(JwtError::Header("unknown kid"))?;
        if header.alg != key.alg.name() {
            return Err(JwtError::Header("alg not allowed for this kid").into());
        }
        let mut v = Validation::new(key.alg.jwt());
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.decoding, &v)
            .map_err(map_error)?
            .claims;
        if let Some(exp) = claims.get("exp") {
            let exp = exp.as_u64().ok_or(JwtError::Claim("exp"))?;
            if expired(exp, now, leeway) {
                return Err(JwtError::Expired.into());
            }
        }
        Ok(claims)
    }
}

/// The header fields verification looks at. Duplicate fields are a parse error;
/// unknown fields (including `jwk`, `jku`, `x5u`, `x5c`) are ignored, never used.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    typ: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    kid: Option<std::borrow::Cow<'a, str>>,
    /// Any `crit` member, even `"crit": null`, counts as present.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
    enc: Option<serde::de::IgnoredAny>,
    zip: Option<serde::de::IgnoredAny>,
}

impl<'a> RawHeader<'a> {
    /// Parses the JSON from [`header_json`]; a `crit` header is refused here,
    /// for every verification path.
    fn parse(json: &'a [u8]) -> Result<RawHeader<'a>, JwtError> {
        let h: RawHeader<'a> = serde_json::from_slice(json).map_err(|_| JwtError::Malformed)?;
        if h.crit {
            return Err(JwtError::Header("crit is not supported"));
        }
        Ok(h)
    }
}

/// Deserializes any value (including `null`) as "the member is present".
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// RFC 9068 §4: `typ` is `at+jwt` or `application/at+jwt`, compared
/// case-insensitively (RFC 7515 §4.1.9); nothing else.
fn is_access_typ(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        let t = t.as_bytes();
        let bare = if t.len() > 12 && t[..12].eq_ignore_ascii_case(b"application/") { &t[12..] } else { t };
        bare.eq_ignore_ascii_case(ACCESS_TYP.as_bytes())
    })
}

/// The longest token [`Keyring::verify_signature`] looks at (the default
/// `max_token_len` of `Store::verify_access`).
const MAX_VERIFY_LEN: usize = 4096;

/// Is a token with `exp` (Unix seconds) expired at `now`, given the leeway?
fn expired(exp: u64, now: SystemTime, leeway: Duration) -> bool {
    to_millis(now) / 1000 >= exp.saturating_add(leeway.as_secs())
}

/// Checks the compact-JWS shape, then base64url-decodes the header segment (capped at 1 KiB).
fn header_json(token: &str) -> Result<Vec<u8>, JwtError> {
    check_compact(token)?;
    let seg = token.split('.').next().ok_or(JwtError::Malformed)?;
    if seg.len() > 1024 {
        return Err(JwtError::Malformed);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seg).map_err(|_| JwtError::Malformed)
}

/// What verification checks claims against.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) leeway: Duration,
}

impl Policy {
    pub(crate) fn new(issuer: String, audience: String, leeway: Duration) -> Self {
        Self { issuer, audience, leeway }
    }
}

/// base64url alphabet value of each byte, or 0xff (0xfe for '.').
const B64URL: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 26 {
        t[b'A' as usize + i] = i as u8;
        t[b'a' as usize + i] = 26 + i as u8;
        i += 1;
    }
    let mut d = 0;
    while d < 10 {
        t[b'0' as usize + d] = 52 + d as u8;
        d += 1;
    }
    t[b'-' as usize] = 62;
    t[b'_' as usize] = 63;
    t[b'.' as usize] = 0xfe;
    t
};

/// Compact JWS only: three non-empty segments of strict, canonical base64url.
fn check_compact(token: &str) -> Result<(), JwtError> {
    let b = token.as_bytes();
    let (mut dots, mut start) = (0usize, 0usize);
    for i in 0..=b.len() {
        let v = if i == b.len() { 0xfe } else { B64URL[b[i] as usize] };
        if v == 0xff {
            return Err(JwtError::Malformed);
        }
        if v == 0xfe {
            dots += usize::from(i < b.len());
            let len = i - start;
            // Canonical: no 1-char remainder; unused low bits of the last character zero.
            let ok = len > 0
                && match len % 4 {
                    0 => true,
                    2 => B64URL[b[i - 1] as usize] & 0x0f == 0,
                    3 => B64URL[b[i - 1] as usize] & 0x03 == 0,
                    _ => false,
                };
            if !ok || dots > 2 {
                return Err(JwtError::Malformed);
            }
            start = i + 1;
        }
    }
    if dots != 2 {
        return Err(JwtError::Malformed);
    }
    Ok(())
}

fn map_error(e: jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => JwtError::Signature,
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidIssuer => JwtError::Claim("iss"),
        K::InvalidAudience => JwtError::Claim("aud"),
        K::InvalidSubject => JwtError::Claim("sub"),
        K::MissingRequiredClaim(_) => JwtError::Claim("missing required claim"),
        K::InvalidClaimFormat(_) | K::Json(_) => JwtError::Claim("wrong type or missing"),
        K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName => JwtError::Header("alg"),
        // A key that cannot be used for this token is our problem, not a malformed token.
        K::InvalidKeyFormat | K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) => JwtError::Key,
        _ => JwtError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_shape_checks() {
        assert!(check_compact("YWJj.YWJj.YWJj").is_ok()); // "abc"
        assert!(check_compact("YWI.YWI.YWI").is_ok()); // "ab", canonical
        for bad in [
            "",
            "a.b",
            "YWJj.YWJj",
            "YWJj.YWJj.YWJj.YWJj",
            "YWJj..YWJj",
            "YWJj.YWJj.YWI=",
            "YWJj.YWJj.YW+j",
            "YWJj.YWJj.YW/j",
            "YW Jj.YWJj.YWJj",
            "YWJj.YWJj.YWJjY",
        ] {
            assert!(check_compact(bad).is_err(), "{bad:?}");
        }
        // "YWJ" decodes like "YWI" but with a non-zero trailing bit: non-canonical.
        assert!(check_compact("YWJj.YWJj.YWJ").is_err());
    }
}
