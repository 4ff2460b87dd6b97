//! The [`Keyring`]: keys, their algorithms and states, rotation, JWKS export
//! and signing.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};

use super::claims::{ACCESS_TYP, AccessClaims};
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
    pub(super) fn jwt(self) -> jsonwebtoken::Algorithm {
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
pub(super) struct Key {
    pub(super) kid: String,
    pub(super) alg: Algorithm,
    pub(super) encoding: Option<EncodingKey>,
    pub(super) decoding: DecodingKey,
    pub(super) state: KeyState,
    /// The key material as given, for [`Keyring::save`].
    pub(super) material: Material,
}

/// Key material as supplied, kept so a keyring can be saved to a key file.
#[derive(Clone)]
pub(super) enum Material {
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
    pub(super) keys: Arc<Snapshot<Vec<Key>>>,
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

    /// Makes `kid` verify-only (used while loading a key file).
    pub(super) fn demote(&self, kid: &str) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
