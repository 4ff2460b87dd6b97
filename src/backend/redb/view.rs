//! One batch's view of the stored rows, and the decisions the writer makes
//! against it: each op reads the rows it needs (this batch's changes first,
//! then the overlay of rows not yet checkpointed, then redb) and stages its
//! row changes, which the writer journals as one record.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::handle::io;
use super::index::{Index, IndexOp};
use super::mutation::Mutation;
use super::overlay::Overlay;
use crate::backend::rules::accepted;
use crate::backend::sealed::mac::{RowMac, RowTable};
use crate::backend::sealed::rows::{
    decode_family, decode_not_before, decode_session, seal_cut, seal_not_before, seal_revoked, seal_session,
};
use crate::backend::{Create, Op, Outcome, Revoked, Swept, rules};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::refresh::Families;
use crate::session::Record;
use crate::token::SessionId;

/// What the ops of one batch see and write: their own changes first, then the
/// overlay (rows not yet checkpointed) and the in-memory indexes, then redb as
/// of the batch's start.
pub(super) struct View<'a> {
    pub(super) mac: &'a RowMac,
    pub(super) overlay: &'a parking_lot::RwLock<Overlay>,
    pub(super) index: &'a Index,
    pub(super) sessions: redb::ReadOnlyTable<u64, &'static [u8]>,
    pub(super) refresh: redb::ReadOnlyTable<u64, &'static [u8]>,
    pub(super) not_before: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    pub(super) staged: Overlay,
    /// This batch's index changes: id → (number if added, user).
    pub(super) staged_index: HashMap<[u8; 16], (Option<u64>, Box<str>)>,
    pub(super) index_ops: Vec<IndexOp>,
    pub(super) muts: Vec<Mutation>,
    pub(super) max_serial: u64,
    /// Rows that failed their tag or decode.
    pub(super) corrupt: u64,
}

impl View<'_> {
    /// Decides one op against the batch's view and stages its row changes.
    pub(super) fn apply(&mut self, op: &mut Op, touches: &AtomicU64) -> Result<Outcome, Error> {
        let t = self;
        match op {
            Op::Create(c) => t.create(c),
            Op::Touch { id, last_seen } => {
                let Some(rec) = t.get(id)? else {
                    return Ok(Outcome::Done);
                };
                let Some(new) = rules::touch(&rec, *last_seen) else {
                    return Ok(Outcome::Done);
                };
                let (old, n) = (rec.deadline(rec.last_seen), rec.number);
                t.put(Mutation::DelExpiry(old, n));
                t.put(Mutation::PutExpiry(new.deadline(*last_seen), n, *id.as_bytes()));
                t.put(Mutation::PutSession(n, seal_session(t.mac, &new)));
                touches.fetch_add(1, Ordering::Relaxed);
                Ok(Outcome::Done)
            }
            Op::UpdateData { id, expected, serial, now, data, expires } => {
                let Some(rec) = t.get(id)? else {
                    return Err(Error::NotFound);
                };
                let new = rules::update(&rec, *expected, *serial, *now, data.as_deref(), *expires)?;
                if expires.is_some() {
                    let n = new.number;
                    t.put(Mutation::DelExpiry(rec.deadline(rec.last_seen), n));
                    t.put(Mutation::PutExpiry(new.deadline(new.last_seen), n, *id.as_bytes()));
                }
                t.put(Mutation::PutSession(new.number, seal_session(t.mac, &new)));
                Ok(Outcome::Updated(Arc::new(new)))
            }
            Op::Rotate { id, expected, serial, secret_hash, now, prune_after } => {
                let Some(rec) = t.get(id)? else {
                    return Err(Error::NotFound);
                };
                let new = rules::rotate(&rec, expected, *serial, *secret_hash, *now)?;
                let n = rec.number;
                t.put(Mutation::DelExpiry(rec.deadline(rec.last_seen), n));
                // The id stays, so refresh tokens issued before must die without the
                // family numbers restarting (a restarted number would mint the same
                // tokens again): drop every family, keep the counter.
                if let Some(mut families) = t.families(id)? {
                    families.drop_all();
                    let row = t.mac.seal(RowTable::Refresh, &n.to_le_bytes(), families.encode());
                    t.put(Mutation::PutRefresh(n, row.into()));
                }
                t.revoke(rec.serial, *id, *prune_after);
                t.put(Mutation::PutSession(n, seal_session(t.mac, &new)));
                t.put(Mutation::PutExpiry(new.deadline(new.last_seen), n, *id.as_bytes()));
                t.max_serial = t.max_serial.max(*serial);
                Ok(Outcome::Rotated { rec: Arc::new(new), old: Revoked::of(&rec, *prune_after) })
            }
            Op::Revoke { id, owner, prune_after } => {
                if let Some(user) = owner.as_deref()
                    && !t.get(id)?.is_some_and(|rec| rules::owned_by(&rec, user))
                {
                    return Ok(Outcome::Revoked(Vec::new()));
                }
                let Some(rec) = t.delete(id)? else {
                    return Ok(Outcome::Revoked(Vec::new()));
                };
                t.revoke(rec.serial, *id, *prune_after);
                Ok(Outcome::Revoked(vec![Revoked::of(&rec, *prune_after)]))
            }
            Op::RevokeUser { user, cut, first, not_before, limit, prune_after } => {
                if let Some(at) = *not_before {
                    let stored = t.not_before_of(user)?.unwrap_or(0);
                    if at > stored {
                        let row = seal_not_before(t.mac, user, at);
                        t.put(Mutation::PutNotBefore(user.clone(), row.into()));
                    }
                }
                let out = t.revoke_user(user, cut.except.map(|(id, _)| id), *limit, *prune_after)?;
                let more = matches!(out, Outcome::RevokedUser { more: true, .. });
                let key = cut.key(user);
                match rules::cut_change(*first, more) {
                    Some(true) => {
                        let row = seal_cut(t.mac, &key);
                        t.put(Mutation::PutCut(key.into(), row.into()));
                    }
                    Some(false) => t.put(Mutation::DelCut(key.into())),
                    None => {}
                }
                Ok(out)
            }
            Op::Family { id, serial, now, prune_after, f } => {
                let Some(rec) = t.get(id)? else {
                    return Err(Error::NotFound);
                };
                rules::family_authorised(&rec, *serial, *now)?;
                let n = rec.number;
                let stored = t.family_bytes(n)?;
                let change = f(stored.as_deref());
                let mut revoked = None;
                if change.revoke_session {
                    if let Some(rec) = t.delete(id)? {
                        t.revoke(rec.serial, *id, *prune_after);
                        revoked = Some(Revoked::of(&rec, *prune_after));
                    }
                } else {
                    if let Some(bytes) = change.write {
                        let row = t.mac.seal(RowTable::Refresh, &n.to_le_bytes(), bytes);
                        t.put(Mutation::PutRefresh(n, row.into()));
                    }
                    // A request its family accepted counts as activity,
                    // durably with the family.
                    if let Some(new) = rules::touch(&rec, *now).filter(|_| accepted(change.reply.as_ref())) {
                        t.put(Mutation::DelExpiry(rec.deadline(rec.last_seen), n));
                        t.put(Mutation::PutExpiry(new.deadline(new.last_seen), n, *id.as_bytes()));
                        t.put(Mutation::PutSession(n, seal_session(t.mac, &new)));
                    }
                }
                Ok(Outcome::Family { reply: change.reply, revoked })
            }
            Op::Sweep { rows, now } => {
                let mut out = Swept::default();
                for (deadline, number, id) in rows.iter() {
                    let rec = match t.get(id) {
                        Ok(r) => r.filter(|r| r.number == *number),
                        // A corrupt row is left for `cloakroom verify` to report; the
                        // other rows of the sweep go on.
                        Err(Error::Storage(e)) if e.kind() == StorageErrorKind::Corrupt => {
                            out.corrupt += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let Some(rec) = rec else {
                        t.put(Mutation::DelExpiry(*deadline, *number)); // stale index row
                        continue;
                    };
                    let current = rec.deadline(rec.last_seen);
                    if current != *deadline {
                        t.put(Mutation::DelExpiry(*deadline, *number)); // superseded index row
                    }
                    if current > *now {
                        continue; // touched since the scan
                    }
                    if t.raw_family(rec.number)?.is_some() {
                        out.families += 1;
                    }
                    t.delete(id)?;
                    if *now >= rec.expires_at { out.absolute.push(*id) } else { out.idle.push(*id) }
                }
                Ok(Outcome::Swept(out))
            }
            Op::PruneRevoked { entries, not_before } => {
                // Point deletes of the entries the in-memory time index named: the
                // cost follows what is pruned, never the size of the table.
                for (serial, _) in entries.iter() {
                    t.put(Mutation::DelRevoked(*serial));
                }
                let mut users = Vec::new();
                for (user, at) in not_before.iter() {
                    // A damaged row is dropped too: it was loaded as "now" (fail closed).
                    let stored = t.not_before_of(user).unwrap_or(Some(*at));
                    if stored == Some(*at) {
                        t.put(Mutation::DelNotBefore(user.as_str().into()));
                        users.push((user.clone(), *at));
                    }
                }
                Ok(Outcome::Pruned(std::mem::take(entries), users))
            }
            Op::Flush => Ok(Outcome::Done),
        }
    }
    /// Records a change: visible to the rest of this batch, journaled with it.
    fn put(&mut self, m: Mutation) {
        self.staged.apply(0, std::slice::from_ref(&m));
        self.muts.push(m);
    }

    fn index_op(&mut self, op: IndexOp) {
        match &op {
            IndexOp::Add { id, number, user } => self.staged_index.insert(*id, (Some(*number), user.clone())),
            IndexOp::AddDamaged { id, number } => self.staged_index.insert(*id, (Some(*number), "".into())),
            IndexOp::Remove { id, user } => self.staged_index.insert(*id, (None, user.clone())),
        };
        self.index_ops.push(op);
    }

    /// The storage number of session `id`: this batch's changes, then the index.
    fn number(&self, id: &SessionId) -> Option<u64> {
        match self.staged_index.get(id.as_bytes()) {
            Some((n, _)) => *n,
            None => self.index.number(id.as_bytes()),
        }
    }

    /// The sealed session row under number `n`, from the batch, the overlay or redb.
    fn raw_row(&self, n: u64) -> Result<Option<Arc<[u8]>>, Error> {
        if let Some(e) = self.staged.sessions.get(&n) {
            return Ok(e.1.clone());
        }
        if let Some(e) = self.overlay.read().sessions.get(&n) {
            return Ok(e.1.clone());
        }
        Ok(self.sessions.get(n).map_err(io)?.map(|v| Arc::from(v.value())))
    }

    fn get(&mut self, id: &SessionId) -> Result<Option<Record>, Error> {
        let Some(n) = self.number(id) else { return Ok(None) };
        match self.raw_row(n)? {
            Some(row) => decode_session(self.mac, *id, n, &row).map(Some).inspect_err(|_| self.corrupt += 1),
            None => Ok(None),
        }
    }

    fn raw_family(&self, n: u64) -> Result<Option<Arc<[u8]>>, Error> {
        if let Some(e) = self.staged.refresh.get(&n) {
            return Ok(e.1.clone());
        }
        if let Some(e) = self.overlay.read().refresh.get(&n) {
            return Ok(e.1.clone());
        }
        Ok(self.refresh.get(n).map_err(io)?.map(|v| Arc::from(v.value())))
    }

    /// The families' bytes with their tag checked.
    fn family_bytes(&mut self, n: u64) -> Result<Option<Vec<u8>>, Error> {
        match self.raw_family(n)? {
            Some(row) => match self.mac.open(RowTable::Refresh, &n.to_le_bytes(), &row) {
                Ok(b) => Ok(Some(b.to_vec())),
                Err(e) => {
                    self.corrupt += 1;
                    Err(StorageError::with_source(StorageErrorKind::Corrupt, e).into())
                }
            },
            None => Ok(None),
        }
    }

    fn families(&mut self, id: &SessionId) -> Result<Option<Families>, Error> {
        let Some(n) = self.number(id) else { return Ok(None) };
        match self.raw_family(n)? {
            Some(row) => decode_family(self.mac, n, &row).map(Some).inspect_err(|_| self.corrupt += 1),
            None => Ok(None),
        }
    }

    fn not_before_of(&mut self, user: &str) -> Result<Option<u64>, Error> {
        let row = if let Some(e) = self.staged.not_before.get(user) {
            e.1.clone()
        } else if let Some(e) = self.overlay.read().not_before.get(user) {
            e.1.clone()
        } else {
            self.not_before.get(user).map_err(io)?.map(|v| Arc::from(v.value()))
        };
        match row {
            Some(r) => decode_not_before(self.mac, user, &r).map(Some).inspect_err(|_| self.corrupt += 1),
            None => Ok(None),
        }
    }

    /// `user`'s session ids: the index with this batch's changes.
    fn user_ids(&self, user: &str) -> Vec<SessionId> {
        let mut ids: Vec<[u8; 16]> =
            self.index.user_ids(user).into_iter().filter(|id| !self.staged_index.contains_key(id)).collect();
        for (id, (n, u)) in &self.staged_index {
            if n.is_some() && &**u == user {
                ids.push(*id);
            }
        }
        ids.into_iter().map(SessionId::from_bytes).collect()
    }

    /// A create, decided by [`rules::create`] and [`rules::cap`] against the
    /// row under its id and the user's live sessions.
    fn create(&mut self, c: &Create) -> Result<Outcome, Error> {
        let rec = &c.rec;
        let stored = self.get(&rec.id)?;
        // Every decision before any change: a create refused (the id taken,
        // the cap) writes nothing, also not the removal of the row it would
        // have replaced.
        let replaced = rules::create(stored.as_ref(), c.replace)?.cloned();
        let mut over = Vec::new();
        if let Some(cap) = c.cap {
            let mut live = Vec::new();
            for id in self.user_ids(&rec.user) {
                if replaced.as_ref().is_some_and(|old| old.id == id) {
                    continue; // leaves with this create
                }
                if let Ok(Some(r)) = self.get(&id)
                    && rules::owned_by(&r, &rec.user)
                    && rec.created_at < r.deadline(r.last_seen)
                {
                    live.push((r.created_at, r.number, r.serial, id));
                }
            }
            let by_serial: HashMap<u64, SessionId> = live.iter().map(|&(_, _, s, id)| (s, id)).collect();
            for (_, _, serial) in rules::cap(cap, live.into_iter().map(|(c, n, s, _)| (c, n, s)).collect())? {
                over.extend(by_serial.get(&serial).copied());
            }
        }
        let mut revoked = Vec::new();
        if let Some(old) = replaced {
            self.delete(&old.id)?;
            self.revoke(old.serial, old.id, c.prune_after);
            revoked.push(Revoked::of(&old, c.prune_after));
        }
        for id in &over {
            if let Some(old) = self.delete(id)? {
                self.revoke(old.serial, old.id, c.prune_after);
                revoked.push(Revoked::of(&old, c.prune_after));
            }
        }
        self.put_new(rec);
        Ok(Outcome::Created(revoked))
    }

    /// Up to `n` of `user`'s session ids that a step may take, plus the
    /// ones this batch added (the index with this batch's changes).
    fn user_ids_upto(&self, user: &str, n: usize) -> Vec<SessionId> {
        let staged = &self.staged_index;
        let mut ids: Vec<[u8; 16]> = self.index.user_ids_upto(user, n, |id| !staged.contains_key(id));
        for (id, (num, u)) in staged {
            if num.is_some() && &**u == user {
                ids.push(*id);
            }
        }
        ids.into_iter().map(SessionId::from_bytes).collect()
    }

    fn put_new(&mut self, rec: &Record) {
        let (id, n) = (*rec.id.as_bytes(), rec.number);
        self.put(Mutation::PutSession(n, seal_session(self.mac, rec)));
        self.put(Mutation::PutExpiry(rec.deadline(rec.last_seen), n, id));
        self.index_op(IndexOp::Add { id, number: n, user: rec.user.clone() });
        self.max_serial = self.max_serial.max(rec.serial);
    }

    /// Deletes a session with its expiry row and refresh state; returns what was stored.
    fn delete(&mut self, id: &SessionId) -> Result<Option<Record>, Error> {
        let Some(rec) = self.get(id)? else {
            return Ok(None);
        };
        let n = rec.number;
        self.put(Mutation::DelSession(n));
        self.put(Mutation::DelExpiry(rec.deadline(rec.last_seen), n));
        self.put(Mutation::DelRefresh(n));
        self.index_op(IndexOp::Remove { id: *id.as_bytes(), user: rec.user.clone() });
        Ok(Some(rec))
    }

    /// Deletes and revokes a user's sessions (all, or all but `except`).
    fn revoke_user(
        &mut self,
        user: &str,
        except: Option<SessionId>,
        limit: usize,
        prune_after: u64,
    ) -> Result<Outcome, Error> {
        // Only the user's own rows (an index entry naming another user's row
        // is stale, never a reason to act on it); a row that does not decode
        // is taken (removed below, fail closed). The step looks at `limit + 1`
        // candidates: more than `limit` means another step is needed (unless
        // this one took nothing, which ends the series).
        let candidates: Vec<SessionId> =
            self.user_ids_upto(user, limit.saturating_add(2)).into_iter().filter(|id| Some(*id) != except).collect();
        let mut ids = Vec::new();
        for id in candidates.iter().take(limit) {
            let owned = match self.get(id) {
                Ok(Some(rec)) => rules::owned_by(&rec, user),
                Ok(None) => false,
                Err(_) => true,
            };
            if owned {
                ids.push(*id);
            }
        }
        let more = candidates.len() > limit && !ids.is_empty();
        let mut revoked = Vec::with_capacity(ids.len());
        for id in ids {
            match self.delete(&id) {
                Ok(Some(rec)) => {
                    self.revoke(rec.serial, id, prune_after);
                    revoked.push(Revoked::of(&rec, prune_after));
                }
                Ok(None) => {}
                // A row that does not decode cannot be served anyway; remove what
                // can be named (fail closed) and go on with the user's other sessions.
                Err(Error::Storage(e)) if e.kind() == StorageErrorKind::Corrupt => {
                    if let Some(n) = self.number(&id) {
                        self.put(Mutation::DelSession(n));
                        self.put(Mutation::DelRefresh(n));
                    }
                    self.index_op(IndexOp::Remove { id: *id.as_bytes(), user: user.into() });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Outcome::RevokedUser { revoked, more })
    }

    fn revoke(&mut self, serial: u64, id: SessionId, prune_after: u64) {
        let row = seal_revoked(self.mac, serial, prune_after, id.as_bytes());
        self.put(Mutation::PutRevoked(serial, row.into()));
    }
}
