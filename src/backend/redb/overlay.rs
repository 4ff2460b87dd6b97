//! Rows written since the last durable checkpoint: the journal holds them
//! durably, redb may not yet. Every reader consults this before redb, so what
//! was acknowledged is visible at once, whatever the applier's lag, and stays
//! visible if a failed redb commit drops non-durable state.
//!
//! The writer thread is the only one that adds entries (after the journal
//! append) and prunes them (entries whose last write is covered by a
//! checkpoint). Readers look here first and then open a redb read transaction:
//! an entry pruned before the look is in redb's durable state, which the
//! transaction opened after it sees.
//!
//! Entries live in generations: the writer starts a new one each time it sees
//! a checkpoint, and drops a whole generation once a checkpoint covers its
//! last batch. A prune is then O(1) under the write lock (the generation's
//! memory is freed by the applier thread, off the write path), where a scan of
//! every entry held (100k rows after a busy second) would stall the writer
//! and every acknowledgement queued behind it for milliseconds. A lookup asks
//! the newest generation first; an entry shadowed by a newer write of the same
//! row is never read and goes with its generation.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use super::mutation::Mutation;

/// A row's latest value (`None`: deleted) and the seq of the batch that wrote it.
type Slot<V> = (u64, Option<V>);

/// One table's entries, by generation (oldest first; never empty).
pub(crate) struct Table<K> {
    gens: Vec<HashMap<K, Slot<Arc<[u8]>>>>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table { gens: vec![HashMap::new()] }
    }
}

impl<K: Hash + Eq> Table<K> {
    /// The newest entry of `k`.
    pub(crate) fn get<Q>(&self, k: &Q) -> Option<&Slot<Arc<[u8]>>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.gens.iter().rev().find_map(|g| g.get(k))
    }

    fn insert(&mut self, k: K, v: Slot<Arc<[u8]>>) {
        if let Some(g) = self.gens.last_mut() {
            g.insert(k, v);
        }
    }

    fn len(&self) -> usize {
        self.gens.iter().map(HashMap::len).sum()
    }
}

/// Generations dropped by a prune, to be freed off the write path.
pub(crate) struct Dropped(#[allow(dead_code)] Vec<Box<dyn Send + Sync>>);

impl Dropped {
    /// Whether nothing was dropped.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Default)]
pub(crate) struct Overlay {
    /// By session number.
    pub(crate) sessions: Table<u64>,
    /// By session number.
    pub(crate) refresh: Table<u64>,
    pub(crate) not_before: Table<Box<str>>,
    /// The last seq of every generation but the newest (oldest first).
    bounds: Vec<u64>,
    /// The highest seq applied.
    last_seq: u64,
}

impl Overlay {
    /// Records a batch's changes to the tables readers look up (in the newest
    /// generation). Seq 0 is a batch being decided (the writer's staging).
    pub(crate) fn apply(&mut self, seq: u64, muts: &[Mutation]) {
        self.last_seq = self.last_seq.max(seq);
        for m in muts {
            match m {
                Mutation::PutSession(id, v) => {
                    self.sessions.insert(*id, (seq, Some(Arc::clone(v))));
                }
                Mutation::DelSession(id) => {
                    self.sessions.insert(*id, (seq, None));
                }
                Mutation::PutRefresh(id, v) => {
                    self.refresh.insert(*id, (seq, Some(Arc::clone(v))));
                }
                Mutation::DelRefresh(id) => {
                    self.refresh.insert(*id, (seq, None));
                }
                Mutation::PutNotBefore(u, v) => {
                    self.not_before.insert(u.clone(), (seq, Some(Arc::clone(v))));
                }
                Mutation::DelNotBefore(u) => {
                    self.not_before.insert(u.clone(), (seq, None));
                }
                // Read only by the sweeper and at open, which tolerate the lag.
                Mutation::PutExpiry(..)
                | Mutation::DelExpiry(..)
                | Mutation::PutRevoked(..)
                | Mutation::DelRevoked(..)
                | Mutation::NextSerial(..)
                // Read only at open (see `backend::UserCut`).
                | Mutation::PutCut(..)
                | Mutation::DelCut(..) => {}
            }
        }
    }

    /// Drops every generation whose last batch is durable in redb (seq ≤
    /// `upto`), then starts a new one (so what is held now goes once a later
    /// checkpoint covers it). O(generations); the dropped entries are returned
    /// to be freed elsewhere.
    #[must_use]
    pub(crate) fn prune(&mut self, upto: u64) -> Dropped {
        let n = self.bounds.iter().take_while(|&&b| b <= upto).count();
        let mut dropped: Vec<Box<dyn Send + Sync>> = Vec::new();
        if n > 0 {
            self.bounds.drain(..n);
            dropped.push(Box::new(self.sessions.gens.drain(..n).collect::<Vec<_>>()));
            dropped.push(Box::new(self.refresh.gens.drain(..n).collect::<Vec<_>>()));
            dropped.push(Box::new(self.not_before.gens.drain(..n).collect::<Vec<_>>()));
        }
        let newest_empty = self.sessions.gens.last().is_none_or(HashMap::is_empty)
            && self.refresh.gens.last().is_none_or(HashMap::is_empty)
            && self.not_before.gens.last().is_none_or(HashMap::is_empty);
        if self.last_seq <= upto && newest_empty {
            // Nothing held: no generation to start.
        } else if self.last_seq <= upto {
            // Everything held is covered: the newest goes too.
            dropped.push(Box::new(std::mem::take(&mut self.sessions.gens)));
            dropped.push(Box::new(std::mem::take(&mut self.refresh.gens)));
            dropped.push(Box::new(std::mem::take(&mut self.not_before.gens)));
            self.bounds.clear();
            self.sessions = Table::default();
            self.refresh = Table::default();
            self.not_before = Table::default();
        } else if !newest_empty {
            self.bounds.push(self.last_seq);
            self.sessions.gens.push(HashMap::new());
            self.refresh.gens.push(HashMap::new());
            self.not_before.gens.push(HashMap::new());
        }
        Dropped(dropped)
    }

    /// Entries held (a row written in two generations counts twice).
    pub(crate) fn len(&self) -> usize {
        self.sessions.len() + self.refresh.len() + self.not_before.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(n: u64) -> Mutation {
        Mutation::PutSession(n, Arc::from(&n.to_le_bytes()[..]))
    }

    /// A prune drops exactly the generations a checkpoint covers, the newest
    /// write of a row wins, and a row rewritten after the checkpoint stays.
    #[test]
    fn prune_drops_covered_generations_and_keeps_newer_writes() {
        let mut o = Overlay::default();
        o.apply(1, &[put(1), put(2)]);
        o.apply(2, &[put(2)]);
        // A checkpoint covered seq 1 only: nothing can go yet (the generation
        // also holds seq 2); a new generation starts.
        assert!(o.prune(1).is_empty());
        o.apply(3, &[Mutation::DelSession(1)]);
        assert_eq!(o.sessions.get(&1).map(|e| e.0), Some(3));
        assert_eq!(o.sessions.get(&2).map(|e| e.0), Some(2));
        // Seq 2 covered: the first generation goes; the delete of 1 stays.
        assert!(!o.prune(2).is_empty());
        assert_eq!(o.sessions.get(&1).map(|e| (e.0, e.1.is_none())), Some((3, true)));
        assert!(o.sessions.get(&2).is_none());
        // Everything covered: nothing is held.
        let _ = o.prune(3);
        assert_eq!(o.len(), 0);
        assert!(o.sessions.get(&1).is_none());
        o.apply(4, &[put(9)]);
        assert_eq!(o.len(), 1);
    }
}
