//! The server key, the keys derived from it, and the private key files beside
//! a database.
//!
//! `<db>.key` holds the 32-byte server key (refresh-token MACs, the default
//! HS256 access-token key); `<db>.keys` holds a saved [`crate::Keyring`]. Both
//! are secrets: mode 0600, never inside the database file.
//!
//! The server key file is resolved only after the database has been opened (and
//! locked) and recognised, so a failed open leaves no file behind; it is created
//! only for a database that was created by the same open, with create-new
//! semantics, so two processes racing on a fresh path end with one key on disk.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::jwt::Keyring;
use crate::keyfile::{create_private_file, io_err, read_private_file};
use crate::token::pack;
use crate::token::{RefreshToken, SessionId, TagKey, os_random};

/// Where the 32-byte server key comes from.
#[derive(Clone)]
pub(crate) enum ServerKey {
    /// Given in the config.
    Bytes([u8; 32]),
    /// Hex in an environment variable, read at open.
    Env(String),
    /// A key file beside the database (created 0600 with a new database); random
    /// for in-memory stores.
    Default,
    /// As `Default`, but an existing database whose key file is missing gets a
    /// new key file instead of an error (the operator accepted losing every
    /// refresh token and default-key access token issued before).
    ReplaceLost,
    /// A configured key shorter than 32 bytes (its length); refused by `ConfigBuilder::build`.
    TooShort(usize),
}

/// Whether the database beside the key file was created by this open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DbState {
    /// Created by this open: a missing key file is created.
    Created,
    /// Existed before: a missing key file is an error (unless `ReplaceLost`).
    Existing,
}

impl ServerKey {
    /// Resolves the key. `db` is the (already opened) database path and whether
    /// this open created it; `None` for stores without a file.
    pub(crate) fn resolve(&self, db: Option<(&Path, DbState)>) -> Result<[u8; 32], Error> {
        match (self, db) {
            (ServerKey::Bytes(b), _) => Ok(*b),
            (ServerKey::TooShort(n), _) => {
                Err(Error::Config(format!("server key is {n} bytes; at least 32 are needed")))
            }
            (ServerKey::Env(var), _) => {
                let v = std::env::var(var).map_err(|_| Error::Config(format!("server key: ${var} is not set")))?;
                parse_hex_key(v.trim())
                    .ok_or_else(|| Error::Config(format!("server key: ${var} must be 64 hex digits")))
            }
            (ServerKey::Default | ServerKey::ReplaceLost, None) => {
                let mut k = [0u8; 32];
                os_random(&mut k)?;
                Ok(k)
            }
            (ServerKey::Default, Some((p, state))) => key_file(&key_path(p), state == DbState::Created),
            (ServerKey::ReplaceLost, Some((p, _))) => key_file(&key_path(p), true),
        }
    }
}

impl ServerKey {
    /// For an existing database at `db`: refuses with [`Error::ServerKeyMissing`]
    /// when the key would come from a key file that is not there. Checked before
    /// the database is opened for writing, so a refusal changes nothing.
    pub(crate) fn check_existing(&self, db: &Path) -> Result<(), Error> {
        let path = key_path(db);
        if matches!(self, ServerKey::Default) && std::fs::symlink_metadata(&path).is_err() {
            return Err(Error::ServerKeyMissing { path });
        }
        Ok(())
    }
}

fn parse_hex_key(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *o = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// `<db>.key`: the server key file.
pub(crate) fn key_path(db: &Path) -> PathBuf {
    sibling(db, ".key")
}

/// `<db>.keys`: the access-token key file.
pub(crate) fn keys_path(db: &Path) -> PathBuf {
    sibling(db, ".keys")
}

fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn read_key(path: &Path) -> Result<[u8; 32], Error> {
    let buf = read_private_file(path)?;
    <[u8; 32]>::try_from(buf.as_slice())
        .map_err(|_| Error::Config(format!("server key file {} must hold exactly 32 bytes", path.display())))
}

/// Reads the key file. If it is missing: creates it (32 random bytes, mode
/// 0600, create-new) when `may_create`, else refuses with
/// [`Error::ServerKeyMissing`].
fn key_file(path: &Path, may_create: bool) -> Result<[u8; 32], Error> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => return read_key(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    if !may_create {
        return Err(Error::ServerKeyMissing { path: path.to_owned() });
    }
    let mut key = [0u8; 32];
    os_random(&mut key)?;
    if create_private_file(path, &key)? {
        Ok(key)
    } else {
        // Another process created it between our check and our write: use theirs.
        read_key(path)
    }
}

/// Keys derived from the server key. Never stored in the database.
pub(crate) struct Derived {
    mac: [u8; 32],
    /// Identifies the MAC key; a token under another key is refused cheaply.
    key_id: u32,
    /// Seed of the default HS256 access-token key.
    pub(crate) access_hs256: [u8; 32],
    /// Key of the web layer's CSRF tokens (a keyed hash of the session id).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) csrf: [u8; 32],
    /// Key of the session-token tag (checked before any lookup).
    pub(crate) token_tag: TagKey,
    /// Key of the hashes that turn a framework's session id (tower-sessions)
    /// into a session id and secret.
    #[cfg_attr(not(any(feature = "tower-sessions", feature = "tower-sessions-015")), allow(dead_code))]
    pub(crate) foreign: [u8; 32],
}

impl Derived {
    pub(crate) fn new(server_key: &[u8; 32]) -> Self {
        let mac = blake3::derive_key("cloakroom 2026 refresh-token MAC v1", server_key);
        let access_hs256 = blake3::derive_key("cloakroom 2026 access-token HS256 v1", server_key);
        let fp = blake3::hash(&mac);
        let mut id = [0u8; 4];
        id.copy_from_slice(&fp.as_bytes()[..4]);
        let csrf = blake3::derive_key("cloakroom 2026 web CSRF token v1", server_key);
        let token_tag = TagKey::new(&blake3::derive_key("cloakroom 2026 session token tag v1", server_key));
        let foreign = blake3::derive_key("cloakroom 2026 framework session id v1", server_key);
        Self { mac, key_id: u32::from_le_bytes(id), access_hs256, csrf, token_tag, foreign }
    }

    fn mac(&self, id: &SessionId, generation: u64) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac, &RefreshToken::mac_input(id, generation, self.key_id)).as_bytes()
    }

    /// The refresh token for (session, family, generation). Deterministic: the
    /// same generation of a family always yields the same token.
    pub(crate) fn mint(&self, id: SessionId, family: u32, generation: u64) -> RefreshToken {
        let counter = pack(family, generation);
        RefreshToken { id, generation: counter, key_id: self.key_id, mac: self.mac(&id, counter) }
    }

    /// Is this token's MAC ours? Constant-time.
    pub(crate) fn authentic(&self, t: &RefreshToken) -> bool {
        t.key_id == self.key_id && t.mac_matches(&self.mac(&t.id, t.generation))
    }
}

/// The keyring used when the config sets none: one HS256 key derived from the
/// server key, with kid `hs256-<first 4 bytes of its blake3 fingerprint, hex>`.
pub(crate) fn default_keyring(derived: &Derived) -> Result<Keyring, Error> {
    let fp = blake3::hash(&derived.access_hs256);
    let mut head = [0u8; 4];
    head.copy_from_slice(&fp.as_bytes()[..4]);
    let k = Keyring::new();
    k.add_hs256(&format!("hs256-{:08x}", u32::from_be_bytes(head)), &derived.access_hs256)?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.redb.key");
        let k1 = key_file(&p, true).unwrap();
        let k2 = key_file(&p, false).unwrap();
        assert_eq!(k1, k2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(key_file(&p, false), Err(Error::Config(_))));
        }
    }

    #[test]
    fn a_missing_key_file_is_refused_unless_creation_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.redb.key");
        match key_file(&p, false) {
            Err(Error::ServerKeyMissing { path }) => assert_eq!(path, p),
            other => panic!("expected ServerKeyMissing, got {other:?}"),
        }
        assert!(!p.exists(), "refusing must not create the file");
    }

    #[test]
    fn create_new_never_replaces_an_existing_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.redb.key");
        assert!(create_private_file(&p, &[1; 32]).unwrap());
        assert!(!create_private_file(&p, &[2; 32]).unwrap());
        assert_eq!(read_key(&p).unwrap(), [1; 32]);
        // No temp files are left behind either way.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn racing_creators_end_with_one_key_that_both_use() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.redb.key");
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| key_file(&p, true).unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = read_key(&p).unwrap();
        assert!(keys.iter().all(|k| *k == on_disk));
    }

    #[test]
    fn hex_keys() {
        assert_eq!(parse_hex_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert!(parse_hex_key(&"ab".repeat(31)).is_none());
        assert!(parse_hex_key(&"zz".repeat(32)).is_none());
        assert!(parse_hex_key(&"+a".repeat(32)).is_none());
    }

    #[test]
    fn mac_binds_id_and_generation() {
        let d = Derived::new(&[1; 32]);
        let id = SessionId::from_bytes([2; 16]);
        let t = d.mint(id, 0, 5);
        assert!(d.authentic(&t));
        let mut forged = t.clone();
        forged.generation = 6;
        assert!(!d.authentic(&forged));
        let mut other_family = t.clone();
        other_family.generation = pack(1, 5);
        assert!(!d.authentic(&other_family));
        assert!(!Derived::new(&[2; 32]).authentic(&t));
        assert_eq!(d.mint(id, 0, 5).to_string(), t.to_string(), "deterministic per generation");
    }
}
