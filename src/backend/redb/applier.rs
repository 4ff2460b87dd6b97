//! The applier thread: folds journaled batches into redb.
//!
//! Batches arrive already durable in the journal (or, for Eventual writes, on
//! their way there) and already visible through the overlay, so nothing waits
//! for this thread: it commits with `Durability::None` as batches come, and
//! every checkpoint interval (`Config::checkpoint_interval`, or [`CHECKPOINT_MUTATIONS`] changes, or on
//! request) makes one durable commit — the checkpoint — that also records the
//! last applied seq in `meta`. Only then may the writer prune the overlay and
//! clear journal segments up to that seq.
//!
//! A failed commit drops the handle (redb refuses it after an I/O error, and
//! the reopened file has lost the non-durable commits); the applier backs off,
//! reopens and re-applies every batch since the last checkpoint. Nothing
//! acknowledged is lost: the journal and the overlay still hold it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use redb::ReadableTable as _;

use super::mutation::Mutation;
use super::overlay::Dropped;
use super::tables::{
    EXPIRY, META, META_JOURNAL_SEQ, META_NEXT_SERIAL, NOT_BEFORE, REFRESH, REVOKED, SESSIONS, USER_CUTS,
};
use super::{Db, io};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::telemetry::Hist;

/// Non-durable commits gather at least this long (or [`APPLY_MUTATIONS`]
/// changes): every commit costs redb a fixed overhead (page checksums, the
/// allocator state), and nothing waits for them (readers use the overlay).
pub(crate) const APPLY_INTERVAL: Duration = Duration::from_millis(50);
/// Row changes that trigger a non-durable commit before [`APPLY_INTERVAL`].
pub(crate) const APPLY_MUTATIONS: usize = 20_000;
/// A checkpoint is also due after this many row changes.
pub(crate) const CHECKPOINT_MUTATIONS: usize = 200_000;

const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// One writer batch's row changes, as journaled under `seq`.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) seq: u64,
    pub(crate) muts: Vec<Mutation>,
}

enum Msg {
    /// Checkpoint now (everything handed over before) and report the seq covered.
    Checkpoint(Sender<Result<u64, Error>>),
}

/// Batches handed over and not yet taken by the applier. A plain queue, not a
/// channel: handing over never wakes the applier thread (which takes the queue
/// every [`APPLY_INTERVAL`] or on a checkpoint request), so the writer pays no
/// futex wake per batch.
type Handover = Arc<Mutex<Vec<Arc<Batch>>>>;
type Garbage = Arc<Mutex<Vec<Dropped>>>;

/// Applier counters and progress.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Every batch up to this seq is durable in redb.
    pub(crate) checkpointed: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) failed_commits: AtomicU64,
    /// Duration of the last checkpoint commit, µs.
    pub(crate) last_checkpoint_us: AtomicU64,
}

pub(crate) struct Applier {
    tx: Mutex<Option<Sender<Msg>>>,
    queue: Handover,
    /// Overlay generations the writer pruned, freed here (off the write path).
    garbage: Garbage,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) progress: Arc<Progress>,
}

impl Applier {
    pub(crate) fn start(db: Db, checkpointed: u64, interval: Duration) -> Result<Applier, Error> {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let progress = Arc::new(Progress::default());
        progress.checkpointed.store(checkpointed, Ordering::Release);
        let p = Arc::clone(&progress);
        let queue: Handover = Arc::default();
        let q = Arc::clone(&queue);
        let garbage: Garbage = Arc::default();
        let g = Arc::clone(&garbage);
        let thread = std::thread::Builder::new()
            .name("cloakroom-applier".into())
            .spawn(move || {
                let metrics = Metrics::new();
                Worker { db, progress: p, last_seq: checkpointed, interval, queue: q, garbage: g, metrics }.run(&rx)
            })
            .map_err(|e| Error::Storage(StorageError::with_source(StorageErrorKind::Io, e)))?;
        Ok(Applier { tx: Mutex::new(Some(tx)), queue, garbage, thread: Mutex::new(Some(thread)), progress })
    }

    /// Hands a journaled batch over (never blocks; the writer bounds the lag by
    /// the rows not yet checkpointed).
    pub(crate) fn send(&self, batch: Arc<Batch>) {
        self.queue.lock().push(batch);
    }

    /// Hands pruned overlay generations over, to be freed by the applier
    /// thread at its next wake (never blocks the writer on freeing them).
    pub(crate) fn discard(&self, dropped: Dropped) {
        self.garbage.lock().push(dropped);
    }

    /// Checkpoints everything sent so far; returns the seq covered.
    pub(crate) fn checkpoint(&self) -> Result<u64, Error> {
        let (s, r) = crossbeam_channel::bounded(1);
        match &*self.tx.lock() {
            Some(tx) => tx.send(Msg::Checkpoint(s)).map_err(|_| Error::Closed)?,
            None => return Err(Error::Closed),
        }
        r.recv().unwrap_or(Err(Error::Closed))
    }

    /// Stops the thread after a final checkpoint attempt and joins it.
    pub(crate) fn stop(&self) {
        self.tx.lock().take();
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }
}

struct Worker {
    db: Db,
    progress: Arc<Progress>,
    /// Seq of the last batch received.
    last_seq: u64,
    /// Longest time between checkpoints while batches are pending.
    interval: Duration,
    queue: Handover,
    garbage: Garbage,
    metrics: Metrics,
}

/// Why a checkpoint ran (a bounded label).
#[derive(Clone, Copy)]
enum Trigger {
    Interval,
    Rows,
    Request,
    Close,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Interval => "interval",
            Trigger::Rows => "rows",
            Trigger::Request => "request",
            Trigger::Close => "close",
        }
    }
}

/// `cloakroom.applier.checkpoint.duration` by trigger, and `.rows`.
struct Metrics {
    duration: [Hist; 4],
    rows: Hist,
}

impl Metrics {
    fn new() -> Metrics {
        let h = |t: Trigger| Hist::labelled("cloakroom.applier.checkpoint.duration", "trigger", t.name());
        Metrics {
            duration: [h(Trigger::Interval), h(Trigger::Rows), h(Trigger::Request), h(Trigger::Close)],
            rows: Hist::new("cloakroom.applier.checkpoint.rows"),
        }
    }
}

impl Worker {
    #[allow(clippy::disallowed_methods)] // checkpoint deadlines are real time, not session time
    fn now() -> Instant {
        Instant::now()
    }

    fn run(mut self, rx: &Receiver<Msg>) {
        let _thread = tracing::info_span!("applier").entered();
        // Batches since the last checkpoint, and how many of them are applied.
        let mut pending: Vec<Arc<Batch>> = Vec::new();
        let mut applied = 0;
        let mut rows = 0;
        let mut last_checkpoint = Self::now();
        let mut last_apply = Self::now();
        // Row changes received but not yet applied.
        let mut unapplied = 0;
        let mut backoff: Option<Duration> = None;
        let mut waiters: Vec<Sender<Result<u64, Error>>> = Vec::new();
        let mut stopping = false;
        loop {
            // Wake to take the handover queue, to apply, or to checkpoint.
            let poll = APPLY_INTERVAL.min(self.interval);
            let wait = if pending.is_empty() {
                poll
            } else if applied < pending.len() {
                poll.saturating_sub(last_apply.elapsed())
            } else {
                poll.min(self.interval.saturating_sub(last_checkpoint.elapsed()))
            };
            match rx.recv_timeout(wait) {
                Ok(Msg::Checkpoint(w)) => waiters.push(w),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stopping = true,
            }
            while let Ok(Msg::Checkpoint(w)) = rx.try_recv() {
                waiters.push(w);
            }
            // Freed here, outside the lock.
            drop(std::mem::take(&mut *self.garbage.lock()));
            // Taken after the requests: every batch handed over before a
            // checkpoint request is in this checkpoint.
            for b in std::mem::take(&mut *self.queue.lock()) {
                rows += b.muts.len();
                unapplied += b.muts.len();
                self.last_seq = b.seq;
                pending.push(b);
            }
            let due = !waiters.is_empty()
                || stopping
                || (!pending.is_empty()
                    && (last_checkpoint.elapsed() >= self.interval || rows >= CHECKPOINT_MUTATIONS));
            let apply_due = last_apply.elapsed() >= APPLY_INTERVAL || unapplied >= APPLY_MUTATIONS;
            let work = (applied < pending.len() && apply_due) || (due && !pending.is_empty());
            let result = if work {
                let started = Self::now();
                let r = super::guarded(|| self.commit(&pending[applied..], due));
                if r.is_ok() && due {
                    let took = started.elapsed();
                    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                    self.progress.last_checkpoint_us.store(us, Ordering::Relaxed);
                    let trigger = if stopping {
                        Trigger::Close
                    } else if !waiters.is_empty() {
                        Trigger::Request
                    } else if rows >= CHECKPOINT_MUTATIONS {
                        Trigger::Rows
                    } else {
                        Trigger::Interval
                    };
                    self.metrics.duration[trigger as usize].seconds(took);
                    #[allow(clippy::cast_precision_loss)] // counts far below 2^53
                    self.metrics.rows.record(rows as f64);
                    let overlay_rows = self.db.overlay().read().len();
                    tracing::debug!(
                        trigger = trigger.name(),
                        ms = us / 1000,
                        rows,
                        batches = pending.len(),
                        seq = self.last_seq,
                        overlay_rows,
                        "checkpoint committed"
                    );
                }
                r
            } else {
                Ok(())
            };
            match result {
                Ok(()) => {
                    backoff = None;
                    if work {
                        last_apply = Self::now();
                        unapplied = 0;
                        applied = pending.len();
                    }
                    if due {
                        if !pending.is_empty() {
                            self.progress.checkpoints.fetch_add(1, Ordering::Relaxed);
                            self.progress.checkpointed.store(self.last_seq, Ordering::Release);
                        }
                        pending.clear();
                        applied = 0;
                        rows = 0;
                        last_checkpoint = Self::now();
                        let covered = self.progress.checkpointed.load(Ordering::Acquire);
                        for w in waiters.drain(..) {
                            let _ = w.send(Ok(covered));
                        }
                    }
                }
                Err(e) => {
                    self.progress.failed_commits.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        error = crate::telemetry::error_kind(&e),
                        checkpoint = due,
                        "applier commit failed; nothing acknowledged is lost (the journal holds it), retrying"
                    );
                    // The reopened file holds only the last checkpoint: apply
                    // every pending batch again (the changes are idempotent).
                    if self.db.reset() {
                        applied = 0;
                    }
                    for w in waiters.drain(..) {
                        let _ = w.send(Err(e.clone()));
                    }
                    if stopping {
                        // The journal keeps what could not be applied; the next open replays it.
                        break;
                    }
                    let pause = backoff.map_or(MIN_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                    backoff = Some(pause);
                    std::thread::sleep(pause);
                }
            }
            if stopping {
                break;
            }
        }
    }

    fn commit(&self, batches: &[Arc<Batch>], durable: bool) -> Result<(), Error> {
        self.db.reopen()?;
        let db = self.db.handle()?;
        let mut wtx = db.begin_write().map_err(io)?;
        wtx.set_durability(if durable { redb::Durability::Immediate } else { redb::Durability::None }).map_err(io)?;
        apply_all(&wtx, batches.iter().map(|b| &b.muts[..]), self.last_seq)?;
        wtx.commit().map_err(|e| Error::Storage(StorageError::with_source(StorageErrorKind::Commit, e)))?;
        self.progress.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Applies row changes inside `wtx` and records `last_seq` as applied.
pub(crate) fn apply_all<'a>(
    wtx: &redb::WriteTransaction,
    batches: impl Iterator<Item = &'a [Mutation]>,
    last_seq: u64,
) -> Result<(), Error> {
    let mut sessions = wtx.open_table(SESSIONS).map_err(io)?;
    let mut expiry = wtx.open_table(EXPIRY).map_err(io)?;
    let mut revoked = wtx.open_table(REVOKED).map_err(io)?;
    let mut refresh = wtx.open_table(REFRESH).map_err(io)?;
    let mut not_before = wtx.open_table(NOT_BEFORE).map_err(io)?;
    let mut cuts = wtx.open_table(USER_CUTS).map_err(io)?;
    let mut meta = wtx.open_table(META).map_err(io)?;
    let mut next_serial = 0;
    for muts in batches {
        for m in muts {
            match m {
                Mutation::PutSession(n, v) => {
                    sessions.insert(*n, &**v).map_err(io)?;
                }
                Mutation::DelSession(n) => {
                    sessions.remove(*n).map_err(io)?;
                }
                Mutation::PutExpiry(d, n, id) => {
                    expiry.insert((*d, *n), id).map_err(io)?;
                }
                Mutation::DelExpiry(d, n) => {
                    expiry.remove((*d, *n)).map_err(io)?;
                }
                Mutation::PutRevoked(s, v) => {
                    revoked.insert(*s, &**v).map_err(io)?;
                }
                Mutation::DelRevoked(s) => {
                    revoked.remove(*s).map_err(io)?;
                }
                Mutation::PutRefresh(n, v) => {
                    refresh.insert(*n, &**v).map_err(io)?;
                }
                Mutation::DelRefresh(n) => {
                    refresh.remove(*n).map_err(io)?;
                }
                Mutation::PutNotBefore(u, v) => {
                    not_before.insert(&**u, &**v).map_err(io)?;
                }
                Mutation::DelNotBefore(u) => {
                    not_before.remove(&**u).map_err(io)?;
                }
                Mutation::PutCut(k, v) => {
                    cuts.insert(&**k, &**v).map_err(io)?;
                }
                Mutation::DelCut(k) => {
                    cuts.remove(&**k).map_err(io)?;
                }
                Mutation::NextSerial(n) => next_serial = next_serial.max(*n),
            }
        }
    }
    if next_serial > 0 {
        let stored = meta.get(META_NEXT_SERIAL).map_err(io)?.map_or(1, |v| v.value());
        if next_serial > stored {
            meta.insert(META_NEXT_SERIAL, next_serial).map_err(io)?;
        }
    }
    meta.insert(META_JOURNAL_SEQ, last_seq).map_err(io)?;
    Ok(())
}
