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

use std::collections::HashMap;
use std::sync::Arc;

use super::mutation::Mutation;

/// A row's latest value (`None`: deleted) and the seq of the batch that wrote it.
type Slot<V> = (u64, Option<V>);

#[derive(Default)]
pub(crate) struct Overlay {
    /// By session number.
    pub(crate) sessions: HashMap<u64, Slot<Arc<[u8]>>>,
    /// By session number.
    pub(crate) refresh: HashMap<u64, Slot<Arc<[u8]>>>,
    pub(crate) not_before: HashMap<Box<str>, Slot<Arc<[u8]>>>,
}

impl Overlay {
    /// Records a batch's changes to the tables readers look up.
    pub(crate) fn apply(&mut self, seq: u64, muts: &[Mutation]) {
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

    /// Drops entries whose last write is durable in redb.
    pub(crate) fn prune(&mut self, upto: u64) {
        self.sessions.retain(|_, e| e.0 > upto);
        self.refresh.retain(|_, e| e.0 > upto);
        self.not_before.retain(|_, e| e.0 > upto);
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.sessions.len() + self.refresh.len() + self.not_before.len()
    }
}
