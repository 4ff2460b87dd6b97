//! The writer thread: the only one that decides writes.
//!
//! Callers enqueue a [`Job`] on a bounded crossbeam channel. The thread takes
//! everything queued (up to [`MAX_BATCH`]), decides the ops against a [`View`]
//! (this batch's changes, then the overlay of rows not yet checkpointed, then a
//! redb read transaction) until their row changes pass [`BATCH_BYTES`] (the
//! rest form the next batch), appends the batch's row changes to the journal as
//! one record and, if any job is durable, syncs it once: N concurrent callers
//! share one `fdatasync` (group commit), and no acknowledgement waits for redb.
//! The batch then enters the overlay (visible to readers) and goes to the
//! applier. A batch of only eventual jobs is synced within the flush interval.
//!
//! Ops check their preconditions before writing, so a logical failure
//! (`NotFound`, `Conflict`) writes nothing; a corrupt row fails only the op that
//! read it. A journal failure aborts the whole batch (nothing of it is visible
//! or replayable, its seq is never used again; records of earlier batches
//! stay) and is reported to every waiting caller; the thread carries on, and
//! the journal refuses further records until it is back in a known state.
//!
//! `close` stops taking jobs before it sends the shutdown, so every job a
//! caller was told is queued is written before the writer stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use redb::ReadableDatabase as _;

use super::applier::{Applier, Batch};
use super::io;
use super::journal::Journal;
use super::mutation::{self, Mutation};
use super::overlay::Overlay;
use super::tables::{NOT_BEFORE, REFRESH, SESSIONS};
use super::view::View;
use crate::backend::{Failure, LostHook, Op, Outcome, Wait};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::telemetry::{JournalMetrics, WriterMetrics};

/// Most jobs applied in one transaction.
const MAX_BATCH: usize = 4096;
/// A batch takes no more jobs once its row changes encode to more than this
/// (the rest go in the next batch): a journal record stays far below what
/// replay accepts ([`super::journal::MAX_RECORD`]), whatever the data sizes.
const BATCH_BYTES: usize = 64 << 20;
/// Rows written but not yet checkpointed beyond which the writer waits for a
/// checkpoint (the memory bound of the overlay).
const MAX_LAG_ROWS: usize = 1_000_000;
/// A stall between batches at least this long is also a DEBUG event.
const STALL_EVENT: Duration = Duration::from_millis(1);
/// How long a caller waits for room in a full queue before `Error::Busy`.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(1);

type Ack = Sender<Result<Outcome, Failure>>;

struct Job {
    op: Op,
    durable: bool,
    ack: Option<Ack>,
    /// When it was submitted (queue wait and commit latency are measured from here).
    queued: Instant,
}

enum Msg {
    Job(Job),
    Shutdown,
}

/// First pause after a failed batch; doubles per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// Writer counters.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    /// Batches journaled.
    pub(crate) commits: AtomicU64,
    /// Journal syncs (`fdatasync`).
    pub(crate) durable_commits: AtomicU64,
    /// Bytes in the journal segments.
    pub(crate) journal_bytes: AtomicU64,
    /// Times the writer waited for a checkpoint because the lag bound was reached.
    pub(crate) lag_waits: AtomicU64,
    pub(crate) ops: AtomicU64,
    pub(crate) touches: AtomicU64,
    pub(crate) failed_commits: AtomicU64,
    pub(crate) lost_eventual: AtomicU64,
    pub(crate) dropped_touches: AtomicU64,
}

pub(crate) struct Writer {
    tx: Sender<Msg>,
    /// Whether jobs are still taken. Every enqueue holds it shared while it
    /// sends; `close` takes it exclusively to clear it and send the shutdown,
    /// so no job is ever queued behind the shutdown (where it would be dropped
    /// after its caller was told `Ok`).
    open: RwLock<bool>,
    thread: Mutex<Option<JoinHandle<Result<(), Error>>>>,
    pub(crate) stats: Arc<WriterStats>,
    pub(crate) applier: Arc<Applier>,
}

/// What the writer thread starts from.
pub(crate) struct Start {
    pub(crate) db: super::Db,
    pub(crate) journal: Journal,
    /// Seq covered by redb's last durable commit (the next record gets seq + 1).
    pub(crate) checkpointed: u64,
    pub(crate) lost: LostHook,
    pub(crate) flush_interval: Duration,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) queue: usize,
}

impl Writer {
    pub(crate) fn start(s: Start) -> Result<Writer, Error> {
        let (tx, rx) = crossbeam_channel::bounded(s.queue);
        let stats = Arc::new(WriterStats::default());
        let applier = Arc::new(Applier::start(s.db.clone(), s.checkpointed, s.checkpoint_interval)?);
        let mut journal = s.journal;
        journal.set_metrics(JournalMetrics::new());
        let worker = Worker {
            db: s.db,
            journal,
            applier: Arc::clone(&applier),
            next_seq: s.checkpointed + 1,
            published: s.checkpointed,
            pruned_upto: s.checkpointed,
            lost: s.lost,
            flush_interval: s.flush_interval,
            stats: Arc::clone(&stats),
            dirty_since: None,
            backoff: None,
            metrics: WriterMetrics::new(),
        };
        let thread = std::thread::Builder::new()
            .name("cloakroom-writer".into())
            .spawn(move || worker.run(&rx))
            .map_err(|e| Error::Storage(StorageError::with_source(StorageErrorKind::Io, e)))?;
        Ok(Writer { tx, open: RwLock::new(true), thread: Mutex::new(Some(thread)), stats, applier })
    }

    /// Enqueues `op` and waits as `wait` says; returns the op's outcome
    /// (`Outcome::Done` for [`Wait::Queued`]). A job taken is decided before
    /// the writer stops (so a `Queued` one is written by `close`); once
    /// `close` has begun to stop it, `Error::Closed`.
    pub(crate) fn submit(&self, op: Op, wait: Wait) -> Result<Outcome, Failure> {
        let durable = wait == Wait::Durable;
        let (ack, rx) = if wait == Wait::Queued {
            (None, None)
        } else {
            let (s, r) = crossbeam_channel::bounded(1);
            (Some(s), Some(r))
        };
        {
            let open = self.open.read();
            if !*open {
                return Err(Error::Closed.into());
            }
            match self.tx.send_timeout(Msg::Job(Job { op, durable, ack, queued: Worker::now() }), ENQUEUE_TIMEOUT) {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(_)) => return Err(Error::Busy.into()),
                Err(SendTimeoutError::Disconnected(_)) => return Err(Error::Closed.into()),
            }
        }
        match rx {
            // A dropped ack means the writer stopped before reaching the job.
            Some(rx) => rx.recv().unwrap_or_else(|_| Err(Error::Closed.into())),
            None => Ok(Outcome::Done),
        }
    }

    /// Like [`Self::submit`] with [`Wait::Queued`], but never blocks: if the queue is
    /// full the op is dropped (used for touches, whose loss only shortens a session).
    pub(crate) fn offer(&self, op: Op) {
        // Never waits for `close`: a touch it would race is dropped.
        let Some(open) = self.open.try_read() else { return };
        if !*open {
            return;
        }
        let job = Job { op, durable: false, ack: None, queued: Worker::now() };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Job(job)) {
            self.stats.dropped_touches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Flushes everything queued durably, checkpoints it into redb, clears the
    /// journal, stops both threads and joins them. Idempotent, and a concurrent
    /// second call waits until the first has finished (the lock is held
    /// throughout), so no caller sees the store closed while the final flush is
    /// still running.
    pub(crate) fn close(&self) -> Result<(), Error> {
        let mut thread = self.thread.lock();
        let Some(handle) = thread.take() else {
            return Ok(());
        };
        let flushed = self.submit(Op::Flush, Wait::Durable).map(|_| ()).map_err(|f| f.error);
        {
            // Every job an enqueue sent is ahead of the shutdown; later ones are refused.
            let mut open = self.open.write();
            *open = false;
            let _ = self.tx.send(Msg::Shutdown);
        }
        let joined = handle.join();
        drop(thread);
        flushed?;
        joined.map_err(|_| Error::Storage(StorageError::new(StorageErrorKind::Commit)))?
    }
}

struct Worker {
    db: super::Db,
    journal: Journal,
    applier: Arc<Applier>,
    /// Seq of the next journal record. Never reused: a record that failed
    /// leaves its seq unused.
    next_seq: u64,
    /// Seq of the last record published (journaled and handed to the applier).
    published: u64,
    /// The overlay holds nothing at or below this seq.
    pruned_upto: u64,
    lost: LostHook,
    flush_interval: Duration,
    stats: Arc<WriterStats>,
    /// When the oldest unsynced journal record was written, if one is pending.
    dirty_since: Option<Instant>,
    /// The pause before the next attempt after consecutive failed batches.
    backoff: Option<Duration>,
    metrics: WriterMetrics,
}

impl Worker {
    #[allow(clippy::disallowed_methods)] // flush deadlines are real time, not session time
    fn now() -> Instant {
        Instant::now()
    }

    fn run(mut self, rx: &Receiver<Msg>) -> Result<(), Error> {
        // Every event of this thread (batches, stalls, segment switches) is inside it.
        let _thread = tracing::info_span!("writer").entered();
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
            if !batch.is_empty() {
                let taken = Self::now();
                self.metrics.queue_depth.set((batch.len() + rx.len()) as u64);
                for j in &batch {
                    self.metrics.queue_wait.seconds(taken.saturating_duration_since(j.queued));
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
        // Nothing is queued after the shutdown (see `Writer::open`).
        self.finish()
    }

    /// Final checkpoint; a journal fully covered by it is cleared, so a clean
    /// close leaves nothing to replay.
    fn finish(&mut self) -> Result<(), Error> {
        let r = self.applier.checkpoint();
        self.applier.stop();
        let covered = r?;
        if covered >= self.published {
            self.journal.reset(covered)?;
        }
        Ok(())
    }

    /// Between batches: forget overlay rows a checkpoint covers, and let the
    /// journal clear or switch segments.
    fn maintain(&mut self) {
        // Bound the lag: past this many rows not yet checkpointed, wait for the
        // applier to checkpoint them (backpressure on callers; `Busy` past the
        // enqueue timeout), so memory stays bounded under a sustained overload.
        if self.db.overlay().read().len() > MAX_LAG_ROWS {
            self.stats.lag_waits.fetch_add(1, Ordering::Relaxed);
            let t = Self::now();
            let _ = self.applier.checkpoint();
            self.stall(&t, "lag");
        }
        let upto = self.applier.progress.checkpointed.load(Ordering::Acquire);
        if upto > self.pruned_upto {
            let t = Self::now();
            // O(1) under the lock: whole generations go (see `overlay`), and
            // their memory is freed by the applier thread.
            let (dropped, rows) = {
                let mut overlay = self.db.overlay().write();
                let dropped = overlay.prune(upto);
                (dropped, overlay.len())
            };
            if !dropped.is_empty() {
                self.applier.discard(dropped);
            }
            self.pruned_upto = upto;
            self.metrics.overlay_rows.set(rows as u64);
            self.stall(&t, "overlay_prune");
        }
        let t = Self::now();
        // A failure here only delays clearing a segment; appends report their own.
        if self.journal.checkpointed(upto).unwrap_or(true) {
            self.stall(&t, "segment");
        }
        let bytes = self.journal.bytes();
        self.stats.journal_bytes.store(bytes, Ordering::Relaxed);
        self.metrics.journal_bytes.set(bytes);
    }

    /// Records the writer's time since `t` spent on `cause` between batches
    /// (every acknowledgement queued meanwhile waits for it).
    fn stall(&self, t: &Instant, cause: &'static str) {
        let d = t.elapsed();
        let h = match cause {
            "lag" => &self.metrics.stall_lag,
            "overlay_prune" => &self.metrics.stall_prune,
            _ => &self.metrics.stall_segment,
        };
        h.seconds(d);
        if d >= STALL_EVENT {
            let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            tracing::debug!(cause, us, "writer stalled between batches");
        }
    }

    /// Runs `batch` as one or more journal records: a record takes jobs until
    /// their row changes pass [`BATCH_BYTES`], the rest go in the next.
    /// `force_sync`: sync even if no job is durable (a flush deadline, the shutdown).
    fn run_batch(&mut self, batch: &mut Vec<Job>, force_sync: bool) {
        loop {
            self.maintain();
            // A panic inside redb on a damaged page fails the batch, not the thread.
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut taken = batch.len();
            let result = super::guarded(|| self.decide_and_journal(batch, force_sync, &mut taken, &mut outcomes));
            let taken = taken.min(batch.len());
            self.stats.ops.fetch_add(taken as u64, Ordering::Relaxed);
            let durable = force_sync || batch[..taken].iter().any(|j| j.durable);
            match result {
                Ok(()) => {
                    self.backoff = None;
                    if durable {
                        self.dirty_since = None;
                    } else if self.journal.unsynced() && self.dirty_since.is_none() {
                        self.dirty_since = Some(Self::now());
                    }
                    let acked = Self::now();
                    for (job, out) in batch.drain(..taken).zip(outcomes) {
                        if job.durable {
                            self.metrics.commit.seconds(acked.saturating_duration_since(job.queued));
                        }
                        if let Some(ack) = job.ack {
                            let _ = ack.send(out.map_err(Failure::from));
                        }
                    }
                }
                Err(e) => {
                    self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                    let mut lost = Vec::new();
                    let mut decided = outcomes.into_iter();
                    for job in batch.drain(..taken) {
                        // What the op had decided to revoke before the batch failed:
                        // the store still refuses it in memory (fail closed).
                        let unsaved = match decided.next() {
                            Some(Ok(out)) => out.revoked().to_vec(),
                            _ => Vec::new(),
                        };
                        match job.ack {
                            Some(ack) => {
                                let _ = ack.send(Err(Failure { error: e.clone(), unsaved }));
                            }
                            None => {
                                self.stats.lost_eventual.fetch_add(1, Ordering::Relaxed);
                                if let Op::Create(c) = &job.op {
                                    lost.push(c.rec.id);
                                }
                            }
                        }
                    }
                    if !lost.is_empty() {
                        (self.lost)(lost);
                    }
                    // Records of earlier batches still unsynced (Eventual ones)
                    // stay, to be synced at the next deadline; nothing else is
                    // pending (the back-off below keeps a failing sync from
                    // being retried in a tight loop).
                    self.dirty_since = self.journal.unsynced().then(Self::now);
                    // Back off before touching the storage again.
                    let pause = self.backoff.map_or(MIN_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                    self.backoff = Some(pause);
                    std::thread::sleep(pause);
                }
            }
            if batch.is_empty() {
                break;
            }
        }
    }

    /// Decides jobs from the front of `batch` until their row changes pass
    /// [`BATCH_BYTES`] (at least one, all if they fit; `taken` says how many),
    /// journals them as one record and publishes it (overlay, index, the
    /// applier's handover queue: a plain push that wakes no thread), all before
    /// any ack, so a `Flush` acked means every batch before it reached the
    /// applier (what `Store::checkpoint` relies on). Syncs if `force_sync` or a
    /// job taken is durable. `Err` means nothing of the record is visible,
    /// journaled or applied (records of earlier batches stay).
    /// `outcomes` gets each op's decision, in order, as it is made (also when
    /// the batch then fails).
    fn decide_and_journal(
        &mut self,
        batch: &mut [Job],
        force_sync: bool,
        taken: &mut usize,
        outcomes: &mut Vec<Result<Outcome, Error>>,
    ) -> Result<(), Error> {
        let db = self.db.handle()?;
        let rtx = db.begin_read().map_err(io)?;
        let mut v = View {
            mac: self.db.mac(),
            overlay: self.db.overlay(),
            index: self.db.index(),
            sessions: rtx.open_table(SESSIONS).map_err(io)?,
            refresh: rtx.open_table(REFRESH).map_err(io)?,
            not_before: rtx.open_table(NOT_BEFORE).map_err(io)?,
            staged: Overlay::default(),
            staged_index: HashMap::new(),
            index_ops: Vec::new(),
            muts: Vec::new(),
            max_serial: 0,
            corrupt: 0,
        };
        let mut bytes = 0;
        for (i, job) in batch.iter_mut().enumerate() {
            let before = v.muts.len();
            match v.apply(&mut job.op, &self.stats.touches) {
                // A corrupt row fails only the op that read it; the batch goes on.
                Err(Error::Storage(e)) if e.kind() != StorageErrorKind::Corrupt => {
                    *taken = i + 1;
                    return Err(Error::Storage(e));
                }
                other => outcomes.push(other),
            }
            bytes += v.muts[before..].iter().map(mutation::encoded_len).sum::<usize>();
            if bytes > BATCH_BYTES {
                break;
            }
        }
        *taken = outcomes.len();
        let durable = force_sync || batch[..*taken].iter().any(|j| j.durable);
        if v.max_serial > 0 {
            v.muts.push(Mutation::NextSerial(v.max_serial + 1));
        }
        for _ in 0..v.corrupt {
            let _ = self.db.corrupt(StorageError::new(StorageErrorKind::Corrupt).into());
        }
        let muts = std::mem::take(&mut v.muts);
        let index_ops = std::mem::take(&mut v.index_ops);
        drop(v);
        drop(rtx);
        let seq = self.next_seq;
        let mark = self.journal.mark();
        if !muts.is_empty() {
            // Taken even if the append fails: no seq ever names two records.
            self.next_seq += 1;
            self.journal.append(seq, &muts)?;
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            #[allow(clippy::cast_precision_loss)] // counts far below 2^53
            {
                self.metrics.batch_ops.record(*taken as f64);
                self.metrics.batch_bytes.record(bytes as f64);
            }
        }
        let mut fsync_us = 0;
        if durable {
            let started = Self::now();
            let synced = self.journal.sync();
            fsync_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            match synced {
                Ok(synced) => {
                    if synced {
                        self.stats.durable_commits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    // Not acknowledged, so it must not come back at replay
                    // either; only this batch's record goes (an earlier one,
                    // unsynced, stays and is synced by the next attempt).
                    self.journal.abort_to(mark);
                    return Err(e);
                }
            }
        }
        if !muts.is_empty() {
            let rows = {
                let mut overlay = self.db.overlay().write();
                overlay.apply(seq, &muts);
                overlay.len()
            };
            self.metrics.overlay_rows.set(rows as u64);
            self.db.index().apply(&index_ops);
            self.published = seq;
            self.applier.send(Arc::new(Batch { seq, muts }));
        }
        tracing::trace!(seq, ops = *taken, bytes, durable, fsync_us, "writer batch");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
