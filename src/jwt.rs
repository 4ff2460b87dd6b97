//! Access tokens: the [`Keyring`], [`AccessClaims`], issue and verify.
//! The only file that names `jsonwebtoken`.
//!
//! Verification order (RFC 8725): length cap → compact JWS shape with strict,
//! canonical base64url → header (`typ` = `at+jwt`, no `crit`, no `enc`, a `kid`
//! that exactly names a live key, `alg` equal to that key's one algorithm) →
//! signature → claims (iss, aud, sub, sid, jti, iat, nbf, exp) → time with
//! leeway. Header-embedded keys (`jwk`, `jku`, `x5u`, `x5c`) are never used:
//! the key always comes from the keyring.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::to_millis;
use crate::error::{Error, JwtError};
use crate::snapshot::Snapshot;

/// A signature algorithm. Each key is bound to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// HMAC-SHA256 with a shared secret (≥ 32 bytes).
    HS256,
    /// Ed25519 signatures (public keys exportable as JWKS).
    EdDSA,
}

impl Algorithm {
    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }

    /// The JOSE name ("HS256", "EdDSA").
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// Signs new tokens (exactly one key) and verifies.
    Signing,
    /// Verifies only.
    Verifying,
    /// Verifies tokens until `until` (the longest access TTL plus leeway after
    /// retirement), then is dropped.
    Retired {
        /// When the key stops verifying.
        until: SystemTime,
    },
}

/// A description of one key (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id (`kid`).
    pub kid: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Its state.
    pub state: KeyState,
}

#[derive(Clone)]
struct Key {
    kid: String,
    alg: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    state: KeyState,
    /// The key material as given, for [`Keyring::save`].
    material: Material,
}

/// Key material as supplied, kept so a keyring can be saved to a key file.
#[derive(Clone)]
enum Material {
    Hs256(Vec<u8>),
    EdDsa { private_pem: Option<Vec<u8>>, public_pem: Vec<u8> },
}

/// The access-token keys: `kid` → (algorithm, key). One key signs; any number
/// verify. Share one keyring between processes that must verify each other's
/// tokens. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Keyring {
    /// The keys as a read-mostly snapshot: verification loads the current
    /// list without a lock or a shared write; a change publishes a new list.
    keys: Arc<Snapshot<Vec<Key>>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys()).finish()
    }
}

const MIN_HMAC_KEY: usize = 32;

fn key_error(what: &str) -> Error {
    Error::Config(format!("keyring: {what}"))
}

/// An Ed25519 verification key from a SubjectPublicKeyInfo PEM (jsonwebtoken's
/// PEM parser; it refuses keys of other types).
fn ed25519_decoding_key(pem: &[u8]) -> Result<DecodingKey, Error> {
    let key = DecodingKey::from_ed_pem(pem).map_err(|_| key_error("not an Ed25519 public key (SPKI PEM)"))?;
    // A public key of another algorithm parses as PEM; only 32 raw bytes are Ed25519.
    match key.try_get_as_bytes() {
        Ok(b) if b.len() == 32 => Ok(key),
        _ => Err(key_error("not an Ed25519 public key (SPKI PEM)")),
    }
}

/// The key file written by [`Keyring::save`] (format 1).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: u32,
    keys: Vec<KeyFileEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileEntry {
    kid: String,
    alg: String,
    state: KeyFileState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    private_pem: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum KeyFileState {
    Signing,
    Verifying,
    Retired,
}

impl Keyring {
    /// An empty keyring.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, key: Key) -> Result<(), Error> {
        if key.kid.is_empty() || key.kid.len() > 64 || !key.kid.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(key_error("kid must be 1 to 64 printable ASCII characters"));
        }
        self.keys.write(|keys| {
            if keys.iter().any(|k| k.kid == key.kid) {
                return Err(key_error("duplicate kid"));
            }
            let mut key = key;
            if key.encoding.is_some() && !keys.iter().any(|k| k.state == KeyState::Signing) {
                key.state = KeyState::Signing;
            }
            keys.push(key);
            Ok(())
        })
    }

    /// Adds an HS256 key (secret of at least 32 bytes). It signs if no key signs yet.
    ///
    /// # Errors
    /// [`Error::Config`] for a short secret, a bad or duplicate kid.
    pub fn add_hs256(&self, kid: &str, secret: &[u8]) -> Result<(), Error> {
        if secret.len() < MIN_HMAC_KEY {
            return Err(key_error("HS256 secret must be at least 32 bytes"));
        }
        self.add(Key {
            kid: kid.to_owned(),
            alg: Algorithm::HS256,
            encoding: Some(EncodingKey::from_secret(secret)),
            decoding: DecodingKey::from_secret(secret),
            state: KeyState::Verifying,
            material: Material::Hs256(secret.to_vec()),
        })
    }

    /// Adds an Ed25519 signing key from PKCS#8 and SPKI PEM. It signs if no key signs yet.
    ///
    /// # Errors
    /// [`Error::Config`] for unparsable keys, a bad or duplicate kid.
    pub fn add_eddsa(&self, kid: &str, private_pem: &[u8], public_pem: &[u8]) -> Result<(), Error> {
        let encoding = EncodingKey::from_ed_pem(private_pem).map_err(|_| key_error("bad Ed25519 private key PEM"))?;
        let decoding = ed25519_decoding_key(public_pem)?;
        // Refuse a mismatched pair: sign a probe and verify it.
        let probe =
            jsonwebtoken::encode(&Header::new(jsonwebtoken::Algorithm::EdDSA), &serde_json::json!({}), &encoding)
                .map_err(|_| key_error("Ed25519 key cannot sign"))?;
        let mut v = Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(&probe, &decoding, &v)
            .map_err(|_| key_error("Ed25519 private and public keys do not match"))?;
        self.add(Key {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            encoding: Some(encoding),
            decoding,
            state: KeyState::Verifying,
            material: Material::EdDsa { private_pem: Some(private_pem.to_vec()), public_pem: public_pem.to_vec() },
        })
    }

    /// Adds an Ed25519 verify-only key (e.g. another service's) from SPKI PEM.
    ///
    /// # Errors
    /// [`Error::Config`] for an unparsable key, a bad or duplicate kid.
    pub fn add_eddsa_public(&self, kid: &str, public_pem: &[u8]) -> Result<(), Error> {
        let decoding = ed25519_decoding_key(public_pem)?;
        self.add(Key {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            encoding: None,
            decoding,
            state: KeyState::Verifying,
            material: Material::EdDsa { private_pem: None, public_pem: public_pem.to_vec() },
        })
    }

    /// Makes `kid` the signing key; the previous signing key keeps verifying.
    ///
    /// # Errors
    /// [`Error::Config`] if the kid is unknown, retired, or has no private key.
    pub fn promote(&self, kid: &str) -> Result<(), Error> {
        self.keys.write(|keys| {
            let Some(i) = keys.iter().position(|k| k.kid == kid) else { return Err(key_error("unknown kid")) };
            if keys[i].encoding.is_none() || matches!(keys[i].state, KeyState::Retired { .. }) {
                return Err(key_error("key cannot sign (verify-only or retired)"));
            }
            for k in keys.iter_mut().filter(|k| k.state == KeyState::Signing) {
                k.state = KeyState::Verifying;
            }
            keys[i].state = KeyState::Signing;
            Ok(())
        })
    }

    /// Retires `kid`: it stops signing at once and verifies until `until`.
    /// Use `Store::retire_key`, which computes `until` from the access TTL and leeway.
    ///
    /// # Errors
    /// [`Error::Config`] if the kid is unknown or is the signing key (promote another first).
    pub fn retire(&self, kid: &str, until: SystemTime) -> Result<(), Error> {
        self.keys.write(|keys| {
            let Some(k) = keys.iter_mut().find(|k| k.kid == kid) else { return Err(key_error("unknown kid")) };
            if k.state == KeyState::Signing {
                return Err(key_error("cannot retire the signing key; promote another key first"));
            }
            k.state = KeyState::Retired { until };
            Ok(())
        })
    }

    /// Drops retired keys whose verification window has passed; returns how many.
    pub fn prune(&self, now: SystemTime) -> usize {
        self.keys.write(|keys| {
            let before = keys.len();
            keys.retain(|k| !matches!(k.state, KeyState::Retired { until } if until <= now));
            before - keys.len()
        })
    }

    /// Every key's id, algorithm and state.
    #[must_use]
    pub fn keys(&self) -> Vec<KeyInfo> {
        self.keys.read().iter().map(|k| KeyInfo { kid: k.kid.clone(), algorithm: k.alg, state: k.state }).collect()
    }

    /// The public keys of the EdDSA keys as a JWKS document (RFC 7517), for
    /// other services to verify our access tokens. HS256 keys are never exported.
    #[must_use]
    pub fn jwks(&self) -> String {
        use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
        let keys: Vec<Jwk> = self
            .keys
            .read()
            .iter()
            .filter(|k| k.alg == Algorithm::EdDSA)
            .filter_map(|k| {
                let mut jwk = Jwk::from_decoding_key(&k.decoding, Some(jsonwebtoken::Algorithm::EdDSA)).ok()?;
                jwk.common.key_id = Some(k.kid.clone());
                jwk.common.public_key_use = Some(PublicKeyUse::Signature);
                Some(jwk)
            })
            .collect();
        serde_json::to_string(&JwkSet { keys }).unwrap_or_else(|_| r#"{"keys":[]}"#.to_owned())
    }

    /// Writes every key, with its secret material and state, to a key file (JSON,
    /// created with mode 0600, replaced atomically). `Store::open` loads
    /// `<db>.keys` when the config sets no keyring; `cloakroom keys --rotate` writes it.
    ///
    /// # Security
    /// The file holds signing secrets: keep it out of database backups.
    ///
    /// # Errors
    /// [`Error::Storage`] if the file cannot be written.
    pub fn save(&self, path: &std::path::Path) -> Result<(), Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let keys = self
            .keys
            .read()
            .iter()
            .map(|k| {
                let (state, retired_until_ms) = match k.state {
                    KeyState::Signing => (KeyFileState::Signing, None),
                    KeyState::Verifying => (KeyFileState::Verifying, None),
                    KeyState::Retired { until } => (KeyFileState::Retired, Some(to_millis(until))),
                };
                let mut e = KeyFileEntry {
                    kid: k.kid.clone(),
                    alg: k.alg.name().to_owned(),
                    state,
                    retired_until_ms,
                    secret_b64: None,
                    public_pem: None,
                    private_pem: None,
                };
                match &k.material {
                    Material::Hs256(s) => e.secret_b64 = Some(b64.encode(s)),
                    Material::EdDsa { private_pem, public_pem } => {
                        e.public_pem = Some(String::from_utf8_lossy(public_pem).into_owned());
                        e.private_pem = private_pem.as_ref().map(|p| String::from_utf8_lossy(p).into_owned());
                    }
                }
                e
            })
            .collect();
        let text = serde_json::to_vec(&KeyFile { format: 1, keys })
            .map_err(|e| Error::Config(format!("keyring: cannot serialise the key file: {e}")))?;
        crate::keyfile::write_private_file(path, &text)
    }

    /// Reads a key file written by [`Keyring::save`].
    ///
    /// # Errors
    /// [`Error::Config`] if the file is malformed or its keys are invalid;
    /// [`Error::Storage`] if it cannot be read.
    pub fn load(path: &std::path::Path) -> Result<Keyring, Error> {
        let bad = |m: &str| Error::Config(format!("key file {}: {m}", path.display()));
        let text = crate::keyfile::read_private_file(path)?;
        let doc: KeyFile = serde_json::from_slice(&text).map_err(|e| bad(&format!("not a key file ({e})")))?;
        if doc.format != 1 {
            return Err(bad("unknown format"));
        }
        let ring = Keyring::new();
        let mut signing = None;
        for k in &doc.keys {
            let kid = k.kid.as_str();
            match k.alg.as_str() {
                "HS256" => {
                    let s = k.secret_b64.as_deref().ok_or_else(|| bad("secret missing"))?;
                    let s = base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| bad("bad secret"))?;
                    ring.add_hs256(kid, &s)?;
                }
                "EdDSA" => {
                    let public = k.public_pem.as_deref().ok_or_else(|| bad("public key missing"))?;
                    match k.private_pem.as_deref() {
                        Some(p) => ring.add_eddsa(kid, p.as_bytes(), public.as_bytes())?,
                        None => ring.add_eddsa_public(kid, public.as_bytes())?,
                    }
                }
                _ => return Err(bad("unknown alg")),
            }
            match k.state {
                KeyFileState::Signing => signing = Some(kid.to_owned()),
                KeyFileState::Retired => {
                    let until = k.retired_until_ms.ok_or_else(|| bad("retired key without until"))?;
                    ring.demote(kid);
                    ring.retire(kid, crate::clock::from_millis(until))?;
                }
                KeyFileState::Verifying => ring.demote(kid),
            }
        }
        match signing {
            Some(kid) => ring.promote(&kid)?,
            None => return Err(bad("no signing key")),
        }
        Ok(ring)
    }

    /// Makes `kid` verify-only (used while loading a key file).
    fn demote(&self, kid: &str) {
        self.keys.write(|keys| {
            for k in keys.iter_mut().filter(|k| k.kid == kid && k.state == KeyState::Signing) {
                k.state = KeyState::Verifying;
            }
        });
    }

    /// (kid, keyed hash of its algorithm and verification material) of every
    /// key, under `key`: what a Redis-backed store records so that two nodes
    /// never hold different keys under one kid.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fingerprints(&self, key: &[u8; 32]) -> Vec<(String, [u8; 32])> {
        self.keys
            .read()
            .iter()
            .map(|k| {
                let mut h = blake3::Hasher::new_keyed(key);
                h.update(k.alg.name().as_bytes());
                h.update(&[0]);
                match &k.material {
                    Material::Hs256(s) => h.update(s),
                    Material::EdDsa { public_pem, .. } => h.update(public_pem),
                };
                (k.kid.clone(), *h.finalize().as_bytes())
            })
            .collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.read().is_empty()
    }

    /// Signs `claims` with the signing key.
    pub(crate) fn sign(&self, claims: &AccessClaims) -> Result<String, Error> {
        let keys = self.keys.read();
        let key = keys.iter().find(|k| k.state == KeyState::Signing).ok_or_else(|| key_error("no signing key"))?;
        let enc = key.encoding.as_ref().ok_or(Error::Jwt(JwtError::Signing))?;
        let mut header = Header::new(key.alg.jwt());
        header.typ = Some(ACCESS_TYP.to_owned());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, enc).map_err(|_| Error::Jwt(JwtError::Signing))
    }

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

/// The `typ` header of access tokens (RFC 9068).
pub(crate) const ACCESS_TYP: &str = "at+jwt";

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

/// The claims of a cloakroom access token (RFC 9068 profile).
///
/// Deserialization is single-pass and rejects duplicate registered claims.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessClaims {
    /// Issuer (`Config::issuer`).
    pub iss: String,
    /// Audience (`Config::audience`).
    pub aud: String,
    /// Subject: the user id.
    pub sub: String,
    /// The session serial the token is bound to; revocation is keyed on it.
    pub sid: u64,
    /// Unique token id.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Expires (Unix seconds).
    pub exp: u64,
    /// Application claims given at issue time (e.g. `roles`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl<'de> Deserialize<'de> for AccessClaims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error as _, MapAccess, Visitor};

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AccessClaims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JWT claims object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<AccessClaims, A::Error> {
                fn set<T, E: serde::de::Error>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), E> {
                    if slot.replace(v).is_some() {
                        return Err(E::duplicate_field(name));
                    }
                    Ok(())
                }
                let (mut iss, mut aud, mut sub, mut jti) = (None, None, None, None);
                let (mut sid, mut iat, mut nbf, mut exp) = (None, None, None, None);
                let mut extra = BTreeMap::new();
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*k {
                        "iss" => set(&mut iss, m.next_value::<String>()?, "iss")?,
                        "aud" => set(&mut aud, m.next_value::<String>()?, "aud")?,
                        "sub" => set(&mut sub, m.next_value::<String>()?, "sub")?,
                        "jti" => set(&mut jti, m.next_value::<String>()?, "jti")?,
                        "sid" => set(&mut sid, m.next_value::<u64>()?, "sid")?,
                        "iat" => set(&mut iat, m.next_value::<u64>()?, "iat")?,
                        "nbf" => set(&mut nbf, m.next_value::<u64>()?, "nbf")?,
                        "exp" => set(&mut exp, m.next_value::<u64>()?, "exp")?,
                        _ => {
                            let v = m.next_value::<serde_json::Value>()?;
                            if extra.insert(k.into_owned(), v).is_some() {
                                return Err(A::Error::custom("duplicate claim"));
                            }
                        }
                    }
                }
                Ok(AccessClaims {
                    iss: iss.ok_or_else(|| A::Error::missing_field("iss"))?,
                    aud: aud.ok_or_else(|| A::Error::missing_field("aud"))?,
                    sub: sub.ok_or_else(|| A::Error::missing_field("sub"))?,
                    sid: sid.ok_or_else(|| A::Error::missing_field("sid"))?,
                    jti: jti.ok_or_else(|| A::Error::missing_field("jti"))?,
                    iat: iat.ok_or_else(|| A::Error::missing_field("iat"))?,
                    nbf: nbf.ok_or_else(|| A::Error::missing_field("nbf"))?,
                    exp: exp.ok_or_else(|| A::Error::missing_field("exp"))?,
                    extra,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// Claim names the application may not set.
pub(crate) const RESERVED_CLAIMS: [&str; 8] = ["iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp"];

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

    #[test]
    fn hs256_keys_must_be_long_and_kids_unique() {
        let k = Keyring::new();
        assert!(k.add_hs256("a", &[1; 31]).is_err());
        k.add_hs256("a", &[1; 32]).unwrap();
        assert!(k.add_hs256("a", &[2; 32]).is_err());
        assert!(k.add_hs256("bad kid", &[2; 32]).is_err());
        assert_eq!(k.keys()[0].state, KeyState::Signing);
    }
}
