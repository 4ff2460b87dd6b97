//! Refresh tokens: the server key, MACs, family state and the reuse policy.
//!
//! One family = one session. The `refresh` table keeps its current generation,
//! when it last rotated and its deadline; a token carries (session id,
//! generation, key id, MAC) where the MAC is keyed blake3 under a key derived
//! from the server key, which is never stored in the database. Rotation itself
//! (the generation compare-and-increment) runs in the writer thread, so
//! concurrent refreshes of one session are serialised and rotate exactly once.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, StorageError, StorageErrorKind};
use crate::token::{RefreshToken, SessionId, os_random};

/// What to do when an old refresh token is presented again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reuse {
    /// Any replay of an old generation revokes the session.
    Strict,
    /// Within the window after a rotation, a replay of the *previous* generation
    /// gets the current pair back (two tabs refreshing at once both succeed);
    /// any other replay revokes the session. Default: 10 s, as GoTrue.
    Grace(Duration),
}

impl Default for Reuse {
    fn default() -> Self {
        Reuse::Grace(Duration::from_secs(10))
    }
}

/// Where the 32-byte server key comes from.
#[derive(Clone)]
pub(crate) enum ServerKey {
    /// Given in the config.
    Bytes([u8; 32]),
    /// Hex in an environment variable, read at open.
    Env(String),
    /// A key file beside the database (created 0600 if missing); random for in-memory stores.
    Default,
    /// A configured key shorter than 32 bytes (its length); refused by `ConfigBuilder::build`.
    TooShort(usize),
}

impl ServerKey {
    /// Resolves the key. `db` is the database path (`None` for in-memory).
    pub(crate) fn resolve(&self, db: Option<&Path>) -> Result<[u8; 32], Error> {
        match self {
            ServerKey::Bytes(b) => Ok(*b),
            ServerKey::TooShort(n) => Err(Error::Config(format!("server key is {n} bytes; at least 32 are needed"))),
            ServerKey::Env(var) => {
                let v = std::env::var(var).map_err(|_| Error::Config(format!("server key: ${var} is not set")))?;
                parse_hex_key(v.trim())
                    .ok_or_else(|| Error::Config(format!("server key: ${var} must be 64 hex digits")))
            }
            ServerKey::Default => match db {
                Some(p) => key_file(&key_path(p)),
                None => {
                    let mut k = [0u8; 32];
                    os_random(&mut k)?;
                    Ok(k)
                }
            },
        }
    }
}

fn parse_hex_key(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `<db>.key`.
pub(crate) fn key_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".key");
    PathBuf::from(s)
}

fn io_err(e: std::io::Error) -> Error {
    Error::Storage(StorageError::with_source(StorageErrorKind::Io, e))
}

/// Reads a secret file, refusing one that others can read.
pub(crate) fn read_private_file(path: &Path) -> Result<Vec<u8>, Error> {
    let mut f = std::fs::File::open(path).map_err(io_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = f.metadata().map_err(io_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::Config(format!(
                "{} is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let mut buf = Vec::new();
    std::io::Read::by_ref(&mut f).take(1 << 20).read_to_end(&mut buf).map_err(io_err)?;
    Ok(buf)
}

/// Writes a secret file with mode 0600, atomically (temp file, fsync, rename).
pub(crate) fn write_private_file(path: &Path, data: &[u8]) -> Result<(), Error> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io_err)?;
    f.write_all(data).map_err(io_err)?;
    f.sync_all().map_err(io_err)?;
    std::fs::rename(&tmp, path).map_err(io_err)
}

/// Reads the key file, or creates it with 32 random bytes and mode 0600.
fn key_file(path: &Path) -> Result<[u8; 32], Error> {
    let mut key = [0u8; 32];
    if path.exists() {
        let buf = read_private_file(path)?;
        if buf.len() != 32 {
            return Err(Error::Config(format!("server key file {} must hold exactly 32 bytes", path.display())));
        }
        key.copy_from_slice(&buf);
    } else {
        os_random(&mut key)?;
        write_private_file(path, &key)?;
    }
    Ok(key)
}

/// Keys derived from the server key. Never stored in the database.
pub(crate) struct Derived {
    mac: [u8; 32],
    /// Identifies the MAC key; a token under another key is refused cheaply.
    key_id: u32,
    /// Seed of the default HS256 access-token key.
    pub(crate) access_hs256: [u8; 32],
}

impl Derived {
    pub(crate) fn new(server_key: &[u8; 32]) -> Self {
        let mac = blake3::derive_key("cloakroom 2026 refresh-token MAC v1", server_key);
        let access_hs256 = blake3::derive_key("cloakroom 2026 access-token HS256 v1", server_key);
        let fp = blake3::hash(&mac);
        let mut id = [0u8; 4];
        id.copy_from_slice(&fp.as_bytes()[..4]);
        Self { mac, key_id: u32::from_le_bytes(id), access_hs256 }
    }

    fn mac(&self, id: &SessionId, generation: u64) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac, &RefreshToken::mac_input(id, generation, self.key_id)).as_bytes()
    }

    /// The refresh token for (session, generation). Deterministic: the same
    /// generation always yields the same token.
    pub(crate) fn mint(&self, id: SessionId, generation: u64) -> RefreshToken {
        RefreshToken { id, generation, key_id: self.key_id, mac: self.mac(&id, generation) }
    }

    /// Is this token's MAC ours? Constant-time.
    pub(crate) fn authentic(&self, t: &RefreshToken) -> bool {
        t.key_id == self.key_id && t.mac_matches(&self.mac(&t.id, t.generation))
    }
}

/// Family state as stored in the `refresh` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Family {
    pub(crate) generation: u64,
    pub(crate) rotated_at: u64,
    pub(crate) deadline: u64,
    /// Application claims (JSON object) to put in every access token of the family.
    pub(crate) claims: Vec<u8>,
}

const FAMILY_FORMAT: u8 = 1;

impl Family {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 24 + 4 + self.claims.len());
        out.push(FAMILY_FORMAT);
        for v in [self.generation, self.rotated_at, self.deadline] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        #[allow(clippy::cast_possible_truncation)] // claims are capped at 4 KiB
        out.extend_from_slice(&(self.claims.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.claims);
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Family> {
        if b.len() < 29 || b[0] != FAMILY_FORMAT {
            return None;
        }
        let u = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        let n = b.get(25..29).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)? as usize;
        let claims = b.get(29..)?;
        if claims.len() != n {
            return None;
        }
        Some(Family { generation: u(1)?, rotated_at: u(9)?, deadline: u(17)?, claims: claims.to_vec() })
    }
}

/// The writer's verdict on a refresh attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Rotated (or first issued): the new generation.
    Rotated(u64),
    /// A replay of the previous generation inside the grace window: the current generation.
    Current(u64),
    /// An old generation was replayed: the session has been revoked.
    Reuse { current: u64 },
    /// A generation ahead of the stored one: forged or from a rolled-back store.
    Ahead,
}

/// Decides a refresh given the stored family. Pure; the writer applies it.
pub(crate) fn decide(family: &Family, presented: u64, now: u64, reuse: Reuse) -> Verdict {
    let cur = family.generation;
    if presented == cur {
        return Verdict::Rotated(cur + 1);
    }
    if presented > cur {
        return Verdict::Ahead;
    }
    if let Reuse::Grace(w) = reuse {
        let window = u64::try_from(w.as_millis()).unwrap_or(u64::MAX);
        if presented + 1 == cur && now.saturating_sub(family.rotated_at) <= window {
            return Verdict::Current(cur);
        }
    }
    Verdict::Reuse { current: cur }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fam(g: u64, at: u64) -> Family {
        Family { generation: g, rotated_at: at, deadline: u64::MAX, claims: b"{}".to_vec() }
    }

    #[test]
    fn decide_covers_every_case() {
        let grace = Reuse::Grace(Duration::from_secs(10));
        assert_eq!(decide(&fam(3, 0), 3, 1, grace), Verdict::Rotated(4));
        assert_eq!(decide(&fam(3, 1000), 2, 11_000, grace), Verdict::Current(3));
        assert_eq!(decide(&fam(3, 1000), 2, 11_001, grace), Verdict::Reuse { current: 3 });
        assert_eq!(decide(&fam(3, 1000), 1, 1001, grace), Verdict::Reuse { current: 3 });
        assert_eq!(decide(&fam(3, 1000), 2, 1001, Reuse::Strict), Verdict::Reuse { current: 3 });
        assert_eq!(decide(&fam(3, 1000), 4, 1001, grace), Verdict::Ahead);
    }

    #[test]
    fn family_round_trip_and_rejects_garbage() {
        let f = fam(7, 9);
        assert_eq!(Family::decode(&f.encode()), Some(f.clone()));
        let e = f.encode();
        for i in 0..e.len() {
            assert!(Family::decode(&e[..i]).is_none());
        }
    }

    #[test]
    fn mac_binds_id_and_generation() {
        let d = Derived::new(&[1; 32]);
        let id = SessionId::from_bytes([2; 16]);
        let t = d.mint(id, 5);
        assert!(d.authentic(&t));
        let mut forged = t.clone();
        forged.generation = 6;
        assert!(!d.authentic(&forged));
        assert!(!Derived::new(&[2; 32]).authentic(&t));
        assert_eq!(d.mint(id, 5).to_string(), t.to_string(), "deterministic per generation");
    }

    #[test]
    fn key_file_is_created_private_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.redb.key");
        let k1 = key_file(&p).unwrap();
        let k2 = key_file(&p).unwrap();
        assert_eq!(k1, k2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(key_file(&p), Err(Error::Config(_))));
        }
    }

    #[test]
    fn hex_keys() {
        assert_eq!(parse_hex_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert!(parse_hex_key(&"ab".repeat(31)).is_none());
        assert!(parse_hex_key(&"zz".repeat(32)).is_none());
    }
}
