//! The in-memory revocation state: a roaring bitmap of revoked session serials,
//! and (for access tokens) per-user not-before cut-offs.
//!
//! Both are persisted by the writer (`revoked` and `not_before` tables) and loaded
//! at open. Bits are set before the durable commit, so after a revoke returns no
//! check on any thread passes, and a failed commit leaves them set (fail closed).

use std::collections::HashMap;

use parking_lot::RwLock;
use roaring::RoaringTreemap;

use crate::token::SessionId;

/// Revoked serials (checked on every validate and verify) plus the ids of the
/// revoked sessions, so a token whose row is gone still reads as `Revoked`.
#[derive(Default)]
struct Revoked {
    bits: RoaringTreemap,
    ids: HashMap<SessionId, u64>,
}

#[derive(Default)]
pub(crate) struct Revocation {
    revoked: RwLock<Revoked>,
    not_before: RwLock<HashMap<Box<str>, u64>>,
}

impl Revocation {
    pub(crate) fn load(revoked: &[(u64, u64, SessionId)], not_before: Vec<(String, u64)>) -> Self {
        let r = Self {
            revoked: RwLock::default(),
            not_before: RwLock::new(not_before.into_iter().map(|(u, t)| (u.into_boxed_str(), t)).collect()),
        };
        let pairs: Vec<(u64, SessionId)> = revoked.iter().map(|&(s, _, id)| (s, id)).collect();
        r.revoke(&pairs);
        r
    }

    /// Is this session serial revoked?
    pub(crate) fn is_revoked(&self, serial: u64) -> bool {
        self.revoked.read().bits.contains(serial)
    }

    /// Was the session with this id revoked (and not yet pruned)?
    pub(crate) fn is_revoked_id(&self, id: &SessionId) -> bool {
        self.revoked.read().ids.contains_key(id)
    }

    /// Marks (serial, id) pairs revoked.
    pub(crate) fn revoke(&self, pairs: &[(u64, SessionId)]) {
        if pairs.is_empty() {
            return;
        }
        let mut r = self.revoked.write();
        for &(s, id) in pairs {
            r.bits.insert(s);
            r.ids.insert(id, s);
        }
    }

    /// Forgets pruned entries.
    pub(crate) fn forget(&self, pairs: &[(u64, SessionId)]) {
        let mut r = self.revoked.write();
        for (s, id) in pairs {
            r.bits.remove(*s);
            // A session keeps its id across rotations: only drop the id if it
            // still names this serial (not a later revocation of the same id).
            if r.ids.get(id) == Some(s) {
                r.ids.remove(id);
            }
        }
    }

    /// How many serials are held.
    pub(crate) fn len(&self) -> u64 {
        self.revoked.read().bits.len()
    }

    /// The user's not-before cut-off (ms), if any.
    pub(crate) fn not_before(&self, user: &str) -> Option<u64> {
        self.not_before.read().get(user).copied()
    }

    /// Raises the user's not-before cut-off to `at` (ms).
    pub(crate) fn set_not_before(&self, user: &str, at: u64) {
        let mut map = self.not_before.write();
        let e = map.entry(user.into()).or_insert(0);
        *e = (*e).max(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_and_forget_large_serials() {
        let id = |b| SessionId::from_bytes([b; 16]);
        let r = Revocation::load(&[(1, 0, id(1)), (5, 0, id(5))], Vec::new());
        assert!(r.is_revoked(5) && r.is_revoked_id(&id(5)));
        r.revoke(&[(u64::MAX - 1, id(9)), (7, id(7))]);
        assert!(r.is_revoked(u64::MAX - 1));
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn not_before_only_moves_forward() {
        let r = Revocation::default();
        r.set_not_before("u", 10);
        r.set_not_before("u", 5);
        assert_eq!(r.not_before("u"), Some(10));
        assert_eq!(r.not_before("v"), None);
    }
}
