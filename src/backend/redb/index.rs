//! In-memory indexes: session id → session number (the ordered storage key),
//! and user → session ids. Rebuilt at open by one scan of the sessions table,
//! kept current by the writer thread (after a batch is journaled, before it is
//! acknowledged), so a lookup by id needs no disk read and no per-user table is
//! ever written: each create writes two rows (session, expiry) that both append
//! at the right-most leaves.
//!
//! A well-formed token whose id was never issued misses here and is refused
//! without touching the database.
//!
//! Sharded by id and by user, each shard a `parking_lot::RwLock`: the miss path
//! takes one shared read lock; writers (one thread) take a shard's write lock
//! briefly per changed session.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher as _, Hasher as _};

use parking_lot::RwLock;

use crate::token::{IdHash, SessionId};

const SHARDS: usize = 16;

/// One change to the indexes, recorded by the writer as it decides a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IndexOp {
    Add {
        id: [u8; 16],
        number: u64,
        user: Box<str>,
    },
    /// A row that failed its tag at open, under the id it claims: indexed by id
    /// only, so its token reaches the row and fails closed as corrupt (counted,
    /// reported) instead of reading as unknown.
    AddDamaged {
        id: [u8; 16],
        number: u64,
    },
    Remove {
        id: [u8; 16],
        user: Box<str>,
    },
}

/// id → number.
/// Keyed by the id's first word ([`IdHash`]): ids come from the CSPRNG, and the
/// lookup of a never-issued id costs one probe and no SipHash.
type IdShard = RwLock<HashMap<SessionId, u64, IdHash>>;
/// user → ids (a set: a user may hold very many sessions, and adds and
/// removes must not scan them).
type UserShard = RwLock<HashMap<Box<str>, HashSet<[u8; 16]>>>;

pub(crate) struct Index {
    ids: Box<[IdShard]>,
    users: Box<[UserShard]>,
    /// Fixed-key hasher for picking a user's shard (the maps themselves use
    /// randomly keyed SipHash against hash flooding).
    shard_hasher: std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            ids: (0..SHARDS).map(|_| RwLock::new(HashMap::default())).collect(),
            users: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            shard_hasher: std::hash::BuildHasherDefault::default(),
        }
    }
}

impl Index {
    fn id_shard(id: &[u8; 16]) -> usize {
        // Ids come from the CSPRNG; a forged id only picks a shard.
        usize::from(id[15]) % SHARDS
    }

    fn user_shard(&self, user: &str) -> usize {
        let mut h = self.shard_hasher.build_hasher();
        h.write(user.as_bytes());
        #[allow(clippy::cast_possible_truncation)] // only the low bits pick a shard
        let x = h.finish() as usize;
        x % SHARDS
    }

    /// The storage number of session `id`, if it is stored.
    pub(crate) fn number(&self, id: &[u8; 16]) -> Option<u64> {
        self.ids[Self::id_shard(id)].read().get(&SessionId::from_bytes(*id)).copied()
    }

    /// The ids of `user`'s stored sessions.
    pub(crate) fn user_ids(&self, user: &str) -> Vec<[u8; 16]> {
        self.users[self.user_shard(user)].read().get(user).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    /// Up to `n` ids of `user`'s stored sessions that `keep` accepts (a
    /// bounded step of a user-wide revocation: no copy of a huge user's set).
    pub(crate) fn user_ids_upto(&self, user: &str, n: usize, mut keep: impl FnMut(&[u8; 16]) -> bool) -> Vec<[u8; 16]> {
        self.users[self.user_shard(user)]
            .read()
            .get(user)
            .map(|s| s.iter().filter(|id| keep(id)).take(n).copied().collect())
            .unwrap_or_default()
    }

    pub(crate) fn apply(&self, ops: &[IndexOp]) {
        for op in ops {
            match op {
                IndexOp::Add { id, number, user } => {
                    self.ids[Self::id_shard(id)].write().insert(SessionId::from_bytes(*id), *number);
                    let mut users = self.users[self.user_shard(user)].write();
                    users.entry(user.clone()).or_default().insert(*id);
                }
                IndexOp::AddDamaged { id, number } => {
                    self.ids[Self::id_shard(id)].write().insert(SessionId::from_bytes(*id), *number);
                }
                IndexOp::Remove { id, user } => {
                    self.ids[Self::id_shard(id)].write().remove(&SessionId::from_bytes(*id));
                    let mut users = self.users[self.user_shard(user)].write();
                    if let Some(set) = users.get_mut(&**user) {
                        set.remove(id);
                        if set.is_empty() {
                            users.remove(&**user);
                        }
                    }
                }
            }
        }
    }

    /// Sessions indexed.
    pub(crate) fn len(&self) -> usize {
        self.ids.iter().map(|s| s.read().len()).sum()
    }

    /// Approximate heap bytes held (for `Stats` and the docs' memory figure).
    pub(crate) fn heap_bytes(&self) -> usize {
        let ids: usize = self.ids.iter().map(|s| s.read().capacity() * (16 + 8 + 1)).sum();
        let users: usize = self
            .users
            .iter()
            .map(|s| {
                let m = s.read();
                m.capacity() * (16 + 48 + 1) + m.iter().map(|(u, v)| u.len() + v.capacity() * (16 + 1)).sum::<usize>()
            })
            .sum();
        ids + users
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_and_removes_keep_both_indexes_in_step() {
        let ix = Index::default();
        let add = |id: u8, n: u64, u: &str| IndexOp::Add { id: [id; 16], number: n, user: u.into() };
        ix.apply(&[add(1, 10, "a"), add(2, 11, "a"), add(3, 12, "b"), add(1, 10, "a")]);
        assert_eq!(ix.number(&[2; 16]), Some(11));
        let mut a = ix.user_ids("a");
        a.sort_unstable();
        assert_eq!(a, vec![[1; 16], [2; 16]]);
        ix.apply(&[IndexOp::Remove { id: [1; 16], user: "a".into() }]);
        assert_eq!(ix.number(&[1; 16]), None);
        assert_eq!(ix.user_ids("a"), vec![[2; 16]]);
        ix.apply(&[IndexOp::Remove { id: [2; 16], user: "a".into() }]);
        assert!(ix.user_ids("a").is_empty());
        assert_eq!(ix.len(), 1);
    }
}
