//! Refresh tokens: the server key, MACs, family state and the reuse policy.
//!
//! One family = one session. The `refresh` table keeps its current generation,
//! when it last rotated and its deadline; a token carries (session id,
//! generation, key id, MAC) where the MAC is keyed blake3 under a key derived
//! from the server key, which is never stored in the database. Rotation itself
//! (the generation compare-and-increment) runs in the writer thread, so
//! concurrent refreshes of one session are serialised and rotate exactly once.

use std::time::Duration;

use crate::session::Reader;
use crate::token::{RefreshToken, SessionId};

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
    /// Generations at or below this are dead without being a reuse signal: the
    /// session was rotated after they were issued (its id stays, so its old
    /// refresh tokens must not come back to life). 0 = none.
    pub(crate) floor: u64,
}

/// Family row format: 2 adds `floor`; format 1 rows (no floor) are still read.
const FAMILY_FORMAT: u8 = 2;
const FAMILY_FORMAT_V1: u8 = 1;

impl Family {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 32 + 4 + self.claims.len());
        out.push(FAMILY_FORMAT);
        for v in [self.generation, self.rotated_at, self.deadline, self.floor] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        #[allow(clippy::cast_possible_truncation)] // claims are capped at 4 KiB
        out.extend_from_slice(&(self.claims.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.claims);
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Family> {
        let mut r = Reader::new(b);
        let format = r.u8().ok()?;
        if format != FAMILY_FORMAT && format != FAMILY_FORMAT_V1 {
            return None;
        }
        let (generation, rotated_at, deadline) = (r.u64().ok()?, r.u64().ok()?, r.u64().ok()?);
        let floor = if format == FAMILY_FORMAT { r.u64().ok()? } else { 0 };
        let claims = r.bytes_u32().ok()?.to_vec();
        r.finish().ok()?;
        Some(Family { generation, rotated_at, deadline, claims, floor })
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
    /// A generation issued before the session was rotated: dead, not a reuse signal.
    Dead,
}

/// Decides a refresh given the stored family. Pure; the writer applies it.
pub(crate) fn decide(family: &Family, presented: u64, now: u64, reuse: Reuse) -> Verdict {
    let cur = family.generation;
    if presented <= family.floor {
        return Verdict::Dead;
    }
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
        Family { generation: g, rotated_at: at, deadline: u64::MAX, claims: b"{}".to_vec(), floor: 0 }
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
        let rotated = Family { floor: 3, ..fam(3, 1000) };
        assert_eq!(decide(&rotated, 3, 1001, grace), Verdict::Dead);
        assert_eq!(decide(&rotated, 2, 1001, Reuse::Strict), Verdict::Dead);
    }

    #[test]
    fn family_round_trip_and_rejects_garbage() {
        let f = Family { floor: 4, ..fam(7, 9) };
        assert_eq!(Family::decode(&f.encode()), Some(f.clone()));
        // A format-1 row (no floor) still decodes.
        let mut v1 = vec![1u8];
        for v in [7u64, 9, u64::MAX] {
            v1.extend_from_slice(&v.to_le_bytes());
        }
        v1.extend_from_slice(&2u32.to_le_bytes());
        v1.extend_from_slice(b"{}");
        assert_eq!(Family::decode(&v1), Some(fam(7, 9)));
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
}
