//! The in-memory revocation state: a roaring bitmap of revoked session serials,
//! and (for access tokens) per-user not-before cut-offs.
//!
//! Both are persisted by the writer (`revoked` and `not_before` tables) and loaded
//! at open. Bits are set before the durable commit, so after a revoke returns no
//! check on any thread passes, and a failed commit leaves them set (fail closed).

use std::collections::HashMap;

use parking_lot::RwLock;
use roaring::RoaringTreemap;

#[derive(Default)]
pub(crate) struct Revocation {
    revoked: RwLock<RoaringTreemap>,
    not_before: RwLock<HashMap<Box<str>, u64>>,
}

impl Revocation {
    pub(crate) fn load(serials: impl IntoIterator<Item = u64>, not_before: Vec<(String, u64)>) -> Self {
        let mut bits = RoaringTreemap::new();
        bits.extend(serials);
        Self {
            revoked: RwLock::new(bits),
            not_before: RwLock::new(not_before.into_iter().map(|(u, t)| (u.into_boxed_str(), t)).collect()),
        }
    }

    /// Is this session serial revoked?
    pub(crate) fn is_revoked(&self, serial: u64) -> bool {
        self.revoked.read().contains(serial)
    }

    /// Marks serials revoked.
    pub(crate) fn revoke(&self, serials: &[u64]) {
        if serials.is_empty() {
            return;
        }
        let mut bits = self.revoked.write();
        for &s in serials {
            bits.insert(s);
        }
    }

    /// Forgets serials whose entries were pruned.
    pub(crate) fn forget(&self, serials: &[u64]) {
        let mut bits = self.revoked.write();
        for &s in serials {
            bits.remove(s);
        }
    }

    /// How many serials are held.
    pub(crate) fn len(&self) -> u64 {
        self.revoked.read().len()
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
        let r = Revocation::load([1, 5], Vec::new());
        assert!(r.is_revoked(5));
        r.revoke(&[u64::MAX - 1, 7]);
        assert!(r.is_revoked(u64::MAX - 1));
        assert_eq!(r.len(), 4);
        r.forget(&[5]);
        assert!(!r.is_revoked(5));
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
