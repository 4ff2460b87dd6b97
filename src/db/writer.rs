//! The writer thread: the only owner of redb write transactions.
//!
//! Callers enqueue a [`Job`] on a bounded crossbeam channel. The thread takes
//! everything queued (up to [`MAX_BATCH`]), applies it in one transaction and
//! commits once, so N concurrent callers share one fsync (group commit). A batch
//! holding any durable job commits with fsync; a batch of only eventual jobs
//! commits without, and a durable commit follows within the flush interval.
//!
//! Ops check their preconditions before writing, so a logical failure
//! (`NotFound`, `Conflict`) writes nothing. A storage failure aborts the whole
//! batch and is reported to every waiting caller; the thread carries on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use redb::{ReadableTable as _, Table};

use super::tables::{EXPIRY, META, META_NEXT_SERIAL, NOT_BEFORE, REFRESH, REVOKED, SESSIONS, USER_SESSIONS};
use super::{decode, io};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::refresh::Family;
use crate::session::{LAST_SEEN_OFFSET, Record};
use crate::token::{SecretHash, SessionId};

/// Most jobs applied in one transaction.
const MAX_BATCH: usize = 4096;
/// How long a caller waits for room in a full queue before `Error::Busy`.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// A write. Each variant checks its preconditions before changing anything.
pub(crate) enum Op {
    /// Insert a new session.
    Create(Arc<Record>),
    /// Persist a newer `last_seen` and move the session's expiry row.
    Touch { id: SessionId, last_seen: u64 },
    /// Replace the data; `expected` makes it a compare-and-swap on the version.
    UpdateData { id: SessionId, expected: Option<u64>, data: Box<[u8]> },
    /// Give session `id` a new secret and serial, built from the *stored* row (so
    /// no data written before is lost), if its secret is still `expected`;
    /// revoke the old serial and drop the refresh family. The id stays.
    Rotate { id: SessionId, expected: SecretHash, serial: u64, secret_hash: SecretHash, now: u64, prune_after: u64 },
    /// Delete one session and record its serial as revoked.
    Revoke { id: SessionId, prune_after: u64 },
    /// Revoke all of a user's sessions, except one if given.
    RevokeUser { user: Box<str>, except: Option<SessionId>, prune_after: u64 },
    /// Raise a user's not-before cut-off to `at` (ms) and revoke all their sessions.
    LogoutEverywhere { user: Box<str>, at: u64, prune_after: u64 },
    /// Read-modify-write of a session's refresh family: `f` sees the stored bytes
    /// (`None` if absent) and decides. `NotFound` if the session is gone. (`Option`
    /// so the writer can take the `FnOnce` out.)
    Family { id: SessionId, prune_after: u64, f: Option<FamilyFn> },
    /// Delete the sessions of these expiry rows that are still expired at `now`.
    Sweep { rows: Vec<(u64, SessionId)>, now: u64 },
    /// Drop these revocation entries (serial, id) — picked by the in-memory
    /// time index, so no table scan — and these not-before entries (user, at)
    /// unless raised since.
    PruneRevoked { entries: Vec<(u64, SessionId)>, not_before: Vec<(String, u64)> },
    /// No change; a durable barrier.
    Flush,
}

/// What a successful op reports.
pub(crate) enum Outcome {
    Done,
    Updated(Arc<Record>),
    /// Ids of the sessions deleted and revoked.
    Revoked(Vec<SessionId>),
    /// What a `Family` closure returned.
    Family(Box<dyn std::any::Any + Send>),
    /// (serial, id) of the revocation entries pruned, and the not-before
    /// entries (user, at) removed.
    Pruned(Vec<(u64, SessionId)>, Vec<(String, u64)>),
    /// What a sweep batch removed.
    Swept(Swept),
}

/// Counts of one sweep batch.
#[derive(Debug, Default)]
pub(crate) struct Swept {
    pub(crate) absolute: Vec<SessionId>,
    pub(crate) idle: Vec<SessionId>,
    pub(crate) families: usize,
    /// Rows skipped because they failed to decode.
    pub(crate) corrupt: usize,
}

/// A refresh-family decision, run inside the write transaction.
pub(crate) type FamilyFn = Box<dyn FnOnce(Option<&[u8]>) -> FamilyChange + Send>;

/// What a [`FamilyFn`] wants done.
pub(crate) struct FamilyChange {
    /// New family bytes to store, if any.
    pub(crate) write: Option<Vec<u8>>,
    /// Revoke the session (and with it the family).
    pub(crate) revoke_session: bool,
    /// Handed back to the caller as `Outcome::Family`.
    pub(crate) reply: Box<dyn std::any::Any + Send>,
}

/// How long `submit` waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Until the op's transaction is durably committed (fsync).
    Durable,
    /// Until the op's transaction is committed, durable or not.
    Applied,
    /// Only until the op is queued.
    Queued,
}

type Ack = Sender<Result<Outcome, Error>>;

struct Job {
    op: Op,
    durable: bool,
    ack: Option<Ack>,
}

enum Msg {
    Job(Job),
    Shutdown,
}

/// Called with the (serial, id) pairs an op revokes and their prune-after
/// time, before the commit (fail closed).
pub(crate) type RevokeHook = Arc<dyn Fn(&[(u64, SessionId, SecretHash)], u64) + Send + Sync>;

/// What a failed commit took with it, for the store to forget from its cache.
#[derive(Debug)]
pub(crate) enum Lost {
    /// Eventual creates of the failed batch: never stored.
    Sessions(Vec<SessionId>),
    /// Earlier non-durable commits that redb dropped with the handle: the cache
    /// may hold records (creates, updates) that no longer exist on disk.
    Unflushed,
}

/// Called after a failed commit with what was lost.
pub(crate) type LostHook = Arc<dyn Fn(Lost) + Send + Sync>;

/// First pause after a failed commit; doubles per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// Writer counters.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub(crate) commits: AtomicU64,
    pub(crate) durable_commits: AtomicU64,
    pub(crate) ops: AtomicU64,
    pub(crate) touches: AtomicU64,
    pub(crate) failed_commits: AtomicU64,
    pub(crate) lost_eventual: AtomicU64,
    pub(crate) dropped_touches: AtomicU64,
}

pub(crate) struct Writer {
    tx: Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) stats: Arc<WriterStats>,
}

impl Writer {
    pub(crate) fn start(
        db: super::Db,
        hook: RevokeHook,
        lost: LostHook,
        flush_interval: Duration,
        queue: usize,
    ) -> Result<Writer, Error> {
        let (tx, rx) = crossbeam_channel::bounded(queue);
        let stats = Arc::new(WriterStats::default());
        let st = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("cloakroom-writer".into())
            .spawn(move || {
                Worker { db, hook, lost, flush_interval, stats: st, dirty_since: None, backoff: None }.run(&rx)
            })
            .map_err(|e| Error::Storage(StorageError::with_source(StorageErrorKind::Io, e)))?;
        Ok(Writer { tx, thread: Mutex::new(Some(thread)), stats })
    }

    /// Enqueues `op` and waits as `wait` says; returns the op's outcome
    /// (`Outcome::Done` for [`Wait::Queued`]).
    pub(crate) fn submit(&self, op: Op, wait: Wait) -> Result<Outcome, Error> {
        let durable = wait == Wait::Durable;
        let (ack, rx) = if wait == Wait::Queued {
            (None, None)
        } else {
            let (s, r) = crossbeam_channel::bounded(1);
            (Some(s), Some(r))
        };
        match self.tx.send_timeout(Msg::Job(Job { op, durable, ack }), ENQUEUE_TIMEOUT) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => return Err(Error::Busy),
            Err(SendTimeoutError::Disconnected(_)) => return Err(Error::Closed),
        }
        match rx {
            // A dropped ack means the writer stopped before reaching the job.
            Some(rx) => rx.recv().unwrap_or(Err(Error::Closed)),
            None => Ok(Outcome::Done),
        }
    }

    /// Like [`Self::submit`] with [`Wait::Queued`], but never blocks: if the queue is
    /// full the op is dropped (used for touches, whose loss only shortens a session).
    pub(crate) fn offer(&self, op: Op) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Job(Job { op, durable: false, ack: None })) {
            self.stats.dropped_touches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Flushes everything queued durably, stops the thread and joins it.
    /// Idempotent, and a concurrent second call waits until the first has
    /// finished (the lock is held throughout), so no caller sees the store
    /// closed while the final flush is still running.
    pub(crate) fn close(&self) -> Result<(), Error> {
        let mut thread = self.thread.lock();
        let Some(handle) = thread.take() else {
            return Ok(());
        };
        let flushed = self.submit(Op::Flush, Wait::Durable).map(|_| ());
        let _ = self.tx.send(Msg::Shutdown);
        let joined = handle.join();
        drop(thread);
        flushed?;
        joined.map_err(|_| Error::Storage(StorageError::new(StorageErrorKind::Commit)))
    }
}

struct Worker {
    db: super::Db,
    hook: RevokeHook,
    lost: LostHook,
    flush_interval: Duration,
    stats: Arc<WriterStats>,
    /// When the oldest non-durable commit happened, if one is pending.
    dirty_since: Option<Instant>,
    /// The pause before the next attempt after consecutive failed commits.
    backoff: Option<Duration>,
}

/// The tables a batch writes, opened once per transaction.
struct Tables<'t> {
    sessions: Table<'t, &'static [u8; 16], &'static [u8]>,
    users: Table<'t, (&'static str, &'static [u8; 16]), ()>,
    expiry: Table<'t, (u64, &'static [u8; 16]), ()>,
    revoked: Table<'t, u64, (u64, &'static [u8; 16])>,
    refresh: Table<'t, &'static [u8; 16], &'static [u8]>,
    not_before: Table<'t, &'static str, u64>,
    max_serial: u64,
}

impl Worker {
    #[allow(clippy::disallowed_methods)] // flush deadlines are real time, not session time
    fn now() -> Instant {
        Instant::now()
    }

    fn run(mut self, rx: &Receiver<Msg>) {
        let mut batch: Vec<Job> = Vec::new();
        loop {
            let first = match self.dirty_since {
                Some(t) => match rx.recv_timeout(self.flush_interval.saturating_sub(t.elapsed())) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                },
            };
            let mut shutdown = false;
            match first {
                Some(Msg::Job(j)) => batch.push(j),
                Some(Msg::Shutdown) => shutdown = true,
                None => {}
            }
            while !shutdown && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Job(j)) => batch.push(j),
                    Ok(Msg::Shutdown) => shutdown = true,
                    Err(_) => break,
                }
            }
            let overdue = self.dirty_since.is_some_and(|t| t.elapsed() >= self.flush_interval);
            if !batch.is_empty() || overdue || (shutdown && self.dirty_since.is_some()) {
                let durable = overdue || shutdown || batch.iter().any(|j| j.durable);
                self.run_batch(&mut batch, durable);
            }
            if shutdown {
                break;
            }
        }
        // Jobs still queued after shutdown: their acks drop, callers see `Closed`.
    }

    fn run_batch(&mut self, batch: &mut Vec<Job>, durable: bool) {
        let result = self.apply_and_commit(batch, durable);
        self.stats.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
        match result {
            Ok(outcomes) => {
                self.backoff = None;
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                if durable {
                    self.stats.durable_commits.fetch_add(1, Ordering::Relaxed);
                    self.dirty_since = None;
                } else if self.dirty_since.is_none() {
                    self.dirty_since = Some(Self::now());
                }
                for (job, out) in batch.drain(..).zip(outcomes) {
                    if let Some(ack) = job.ack {
                        let _ = ack.send(out);
                    }
                }
            }
            Err(e) => {
                // redb refuses every later operation on a handle that saw an I/O
                // error; reopening drops the non-durable commits made since the
                // last durable one, so the store must forget what it cached of them.
                let dropped = self.db.reset();
                if dropped && self.dirty_since.is_some() {
                    (self.lost)(Lost::Unflushed);
                }
                // Nothing is pending any more: no flush deadline to chase (the
                // writer would otherwise retry a failing flush in a tight loop).
                self.dirty_since = None;
                self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                let mut lost = Vec::new();
                for job in batch.drain(..) {
                    match job.ack {
                        Some(ack) => {
                            let _ = ack.send(Err(e.clone()));
                        }
                        None => {
                            self.stats.lost_eventual.fetch_add(1, Ordering::Relaxed);
                            if let Op::Create(rec) = &job.op {
                                lost.push(rec.id);
                            }
                        }
                    }
                }
                if !lost.is_empty() {
                    (self.lost)(Lost::Sessions(lost));
                }
                // Back off before touching the storage again.
                let pause = self.backoff.map_or(MIN_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                self.backoff = Some(pause);
                std::thread::sleep(pause);
            }
        }
    }

    /// Applies every job in one transaction. `Err` means nothing was committed.
    fn apply_and_commit(&self, batch: &mut [Job], durable: bool) -> Result<Vec<Result<Outcome, Error>>, Error> {
        self.db.reopen()?;
        let db = self.db.handle()?;
        let mut wtx = db.begin_write().map_err(io)?;
        wtx.set_durability(if durable { redb::Durability::Immediate } else { redb::Durability::None }).map_err(io)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut t = Tables {
                sessions: wtx.open_table(SESSIONS).map_err(io)?,
                users: wtx.open_table(USER_SESSIONS).map_err(io)?,
                expiry: wtx.open_table(EXPIRY).map_err(io)?,
                revoked: wtx.open_table(REVOKED).map_err(io)?,
                refresh: wtx.open_table(REFRESH).map_err(io)?,
                not_before: wtx.open_table(NOT_BEFORE).map_err(io)?,
                max_serial: 0,
            };
            for job in batch.iter_mut() {
                match self.apply(&mut t, &mut job.op) {
                    // A corrupt row fails only the op that read it; the batch commits.
                    Err(Error::Storage(e)) if e.kind() != StorageErrorKind::Corrupt => {
                        return Err(Error::Storage(e));
                    }
                    other => outcomes.push(other),
                }
            }
            if t.max_serial > 0 {
                let mut meta = wtx.open_table(META).map_err(io)?;
                let stored = meta.get(META_NEXT_SERIAL).map_err(io)?.map_or(1, |v| v.value());
                meta.insert(META_NEXT_SERIAL, stored.max(t.max_serial + 1)).map_err(io)?;
            }
        }
        wtx.commit().map_err(|e| Error::Storage(StorageError::with_source(StorageErrorKind::Commit, e)))?;
        Ok(outcomes)
    }

    fn apply(&self, t: &mut Tables<'_>, op: &mut Op) -> Result<Outcome, Error> {
        match op {
            Op::Create(rec) => {
                t.put_new(rec)?;
                Ok(Outcome::Done)
            }
            Op::Touch { id, last_seen } => {
                let Some(mut bytes) = t.sessions.get(id.as_bytes()).map_err(io)?.map(|v| v.value().to_vec()) else {
                    return Ok(Outcome::Done);
                };
                let rec = decode(*id, &bytes)?; // corrupt: this op fails, the batch commits
                if *last_seen <= rec.last_seen {
                    return Ok(Outcome::Done);
                }
                bytes[LAST_SEEN_OFFSET..LAST_SEEN_OFFSET + 8].copy_from_slice(&last_seen.to_le_bytes());
                t.expiry.remove((rec.deadline(rec.last_seen), id.as_bytes())).map_err(io)?;
                t.expiry.insert((rec.deadline(*last_seen), id.as_bytes()), ()).map_err(io)?;
                t.sessions.insert(id.as_bytes(), bytes.as_slice()).map_err(io)?;
                self.stats.touches.fetch_add(1, Ordering::Relaxed);
                Ok(Outcome::Done)
            }
            Op::UpdateData { id, expected, data } => {
                let Some(rec) = t.get(id)? else {
                    return Err(Error::NotFound);
                };
                if expected.is_some_and(|v| v != rec.version) {
                    return Err(Error::Conflict { current: rec.version });
                }
                let mut new = rec;
                new.version += 1;
                new.data = data.clone();
                t.sessions.insert(id.as_bytes(), new.encode().as_slice()).map_err(io)?;
                Ok(Outcome::Updated(Arc::new(new)))
            }
            Op::Rotate { id, expected, serial, secret_hash, now, prune_after } => {
                let Some(rec) = t.get(id)? else {
                    return Err(Error::NotFound);
                };
                if !rec.secret_hash.matches(expected) {
                    return Err(Error::NotFound); // a concurrent rotate won
                }
                let new = rec.rotated(*serial, *secret_hash, *now);
                let key = id.as_bytes();
                t.expiry.remove((rec.deadline(rec.last_seen), key)).map_err(io)?;
                // The id stays, so refresh tokens issued before must die without the
                // generation counter restarting (a restarted counter would mint the
                // same tokens again): raise the family's floor to its generation.
                let family = t.refresh.get(key).map_err(io)?.and_then(|v| Family::decode(v.value()));
                if let Some(f) = family {
                    let floor = f.generation;
                    t.refresh.insert(key, Family { floor, ..f }.encode().as_slice()).map_err(io)?;
                }
                t.revoke(rec.serial, *id, *prune_after)?;
                (self.hook)(&[(rec.serial, *id, rec.secret_hash)], *prune_after);
                t.sessions.insert(key, new.encode().as_slice()).map_err(io)?;
                t.expiry.insert((new.deadline(new.last_seen), key), ()).map_err(io)?;
                t.max_serial = t.max_serial.max(*serial);
                Ok(Outcome::Updated(Arc::new(new)))
            }
            Op::Revoke { id, prune_after } => {
                let Some(rec) = t.delete(id)? else {
                    return Ok(Outcome::Revoked(Vec::new()));
                };
                t.revoke(rec.serial, *id, *prune_after)?;
                (self.hook)(&[(rec.serial, *id, rec.secret_hash)], *prune_after);
                Ok(Outcome::Revoked(vec![*id]))
            }
            Op::RevokeUser { user, except, prune_after } => {
                let revoked = t.revoke_user(user, *except, *prune_after)?;
                (self.hook)(&revoked, *prune_after);
                Ok(Outcome::Revoked(revoked.into_iter().map(|(_, id, _)| id).collect()))
            }
            Op::LogoutEverywhere { user, at, prune_after } => {
                let stored = t.not_before.get(&**user).map_err(io)?.map_or(0, |v| v.value());
                if *at > stored {
                    t.not_before.insert(&**user, *at).map_err(io)?;
                }
                let revoked = t.revoke_user(user, None, *prune_after)?;
                (self.hook)(&revoked, *prune_after);
                Ok(Outcome::Revoked(revoked.into_iter().map(|(_, id, _)| id).collect()))
            }
            Op::Family { id, prune_after, f } => {
                let Some(f) = f.take() else { return Err(Error::NotFound) };
                if t.sessions.get(id.as_bytes()).map_err(io)?.is_none() {
                    return Err(Error::NotFound);
                }
                let stored = t.refresh.get(id.as_bytes()).map_err(io)?.map(|v| v.value().to_vec());
                let change = f(stored.as_deref());
                if change.revoke_session {
                    if let Some(rec) = t.delete(id)? {
                        t.revoke(rec.serial, *id, *prune_after)?;
                        (self.hook)(&[(rec.serial, *id, rec.secret_hash)], *prune_after);
                    }
                } else if let Some(bytes) = change.write {
                    t.refresh.insert(id.as_bytes(), bytes.as_slice()).map_err(io)?;
                }
                Ok(Outcome::Family(change.reply))
            }
            Op::Sweep { rows, now } => {
                let mut out = Swept::default();
                for (deadline, id) in rows.iter() {
                    let key = (*deadline, id.as_bytes());
                    let rec = match t.get(id) {
                        Ok(r) => r,
                        // A corrupt row is left for `cloakroom verify` to report; the
                        // other rows of the sweep go on.
                        Err(Error::Storage(e)) if e.kind() == StorageErrorKind::Corrupt => {
                            out.corrupt += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let Some(rec) = rec else {
                        t.expiry.remove(key).map_err(io)?; // stale index row
                        continue;
                    };
                    let current = rec.deadline(rec.last_seen);
                    if current != *deadline {
                        t.expiry.remove(key).map_err(io)?; // superseded index row
                    }
                    if current > *now {
                        continue; // touched since the scan
                    }
                    if t.refresh.get(id.as_bytes()).map_err(io)?.is_some() {
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
                    t.revoked.remove(*serial).map_err(io)?;
                }
                let mut users = Vec::new();
                for (user, at) in not_before.iter() {
                    let stored = t.not_before.get(user.as_str()).map_err(io)?.map(|v| v.value());
                    if stored == Some(*at) {
                        t.not_before.remove(user.as_str()).map_err(io)?;
                        users.push((user.clone(), *at));
                    }
                }
                Ok(Outcome::Pruned(std::mem::take(entries), users))
            }
            Op::Flush => Ok(Outcome::Done),
        }
    }
}

impl Tables<'_> {
    fn get(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        match self.sessions.get(id.as_bytes()).map_err(io)? {
            Some(v) => decode(*id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put_new(&mut self, rec: &Record) -> Result<(), Error> {
        let id = rec.id.as_bytes();
        self.sessions.insert(id, rec.encode().as_slice()).map_err(io)?;
        self.users.insert((&*rec.user, id), ()).map_err(io)?;
        self.expiry.insert((rec.deadline(rec.last_seen), id), ()).map_err(io)?;
        self.max_serial = self.max_serial.max(rec.serial);
        Ok(())
    }

    /// Deletes a session with its index rows and refresh state; returns what was stored.
    fn delete(&mut self, id: &SessionId) -> Result<Option<Record>, Error> {
        let Some(rec) = self.get(id)? else {
            return Ok(None);
        };
        let key = id.as_bytes();
        self.sessions.remove(key).map_err(io)?;
        self.users.remove((&*rec.user, key)).map_err(io)?;
        self.expiry.remove((rec.deadline(rec.last_seen), key)).map_err(io)?;
        self.refresh.remove(key).map_err(io)?;
        Ok(Some(rec))
    }

    /// Deletes and revokes a user's sessions (all, or all but `except`).
    fn revoke_user(
        &mut self,
        user: &str,
        except: Option<SessionId>,
        prune_after: u64,
    ) -> Result<Vec<(u64, SessionId, SecretHash)>, Error> {
        let mut ids = Vec::new();
        for row in self.users.range((user, &[0u8; 16])..=(user, &[0xffu8; 16])).map_err(io)? {
            let id = SessionId::from_bytes(*row.map_err(io)?.0.value().1);
            if Some(id) != except {
                ids.push(id);
            }
        }
        let mut revoked = Vec::with_capacity(ids.len());
        for id in ids {
            match self.delete(&id) {
                Ok(Some(rec)) => {
                    self.revoke(rec.serial, id, prune_after)?;
                    revoked.push((rec.serial, id, rec.secret_hash));
                }
                Ok(None) => {}
                // A row that does not decode cannot be served anyway; remove what
                // can be named (fail closed) and go on with the user's other sessions.
                Err(Error::Storage(e)) if e.kind() == StorageErrorKind::Corrupt => {
                    let key = id.as_bytes();
                    self.sessions.remove(key).map_err(io)?;
                    self.users.remove((user, key)).map_err(io)?;
                    self.refresh.remove(key).map_err(io)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(revoked)
    }

    fn revoke(&mut self, serial: u64, id: SessionId, prune_after: u64) -> Result<(), Error> {
        self.revoked.insert(serial, (prune_after, id.as_bytes())).map_err(io)?;
        Ok(())
    }
}
