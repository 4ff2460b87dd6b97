//! The key file: [`Keyring::save`] writes every key with its material and
//! state (JSON, mode 0600), [`Keyring::load`] reads it back.

use base64::Engine as _;

use super::keyring::{KeyState, Keyring, Material};
use crate::clock::to_millis;
use crate::error::Error;

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
}
