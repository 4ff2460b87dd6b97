//! Expiry sweeping: [`SweepReport`] and the background thread.
//!
//! A sweep range-scans the `expiry` index from the start up to now, in bounded
//! batches, so its cost follows the number of expired rows, not the table size.
//! Each batch is one writer transaction (no fsync; the sweep ends with one
//! durable flush), so readers never wait (redb MVCC) and other writes keep
//! flowing between batches. It then prunes revocation entries and retired keys
//! whose windows have passed.

use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::backend::{Op, Outcome, Wait};
use crate::error::Error;
use crate::events::Event;
use crate::table::SessionTable;

/// What a sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Sessions removed because their absolute deadline passed.
    pub expired_absolute: usize,
    /// Sessions removed because they were idle too long.
    pub expired_idle: usize,
    /// Refresh families removed with those sessions.
    pub refresh_families: usize,
    /// Revocation entries pruned (no access token can name them any more).
    pub revocations_pruned: usize,
    /// Retired access-token keys dropped.
    pub keys_pruned: usize,
    /// Expiry-index rows checked.
    pub rows_scanned: usize,
    /// Write transactions used.
    pub batches: usize,
    /// Expired rows skipped because they failed to decode (left for `cloakroom
    /// verify` to report); the rest of the sweep went on.
    pub corrupt_rows: usize,
    /// Wall time of the sweep.
    pub duration: Duration,
}

impl SweepReport {
    /// Sessions removed for either reason.
    #[must_use]
    pub fn sessions_removed(&self) -> usize {
        self.expired_absolute + self.expired_idle
    }
}

/// Expiry-index rows handled per write transaction.
pub(crate) const BATCH: usize = 1000;

/// Removes the table's expired sessions at `now` in batches of [`BATCH`]
/// through the backend, into `report`. A session the cache saw active more
/// recently than its persisted `last_seen` is kept, and its touch is written.
/// The caller has checkpointed first, so the backend's expiry index holds
/// everything acknowledged.
pub(crate) fn sweep_expired(table: &SessionTable, now: u64, report: &mut SweepReport) -> Result<(), Error> {
    let mut after = None;
    loop {
        let rows = table.backend.expired(now, after, BATCH)?;
        let full = rows.len() == BATCH;
        report.rows_scanned += rows.len();
        after = rows.last().map(|&(d, n, _)| (d, n));
        let mut doomed = Vec::with_capacity(rows.len());
        for (deadline, number, id) in rows {
            if let Some(c) = table.cache.peek(&id) {
                let seen = c.seen();
                if now < c.deadline(seen) {
                    // Alive by a visit not yet written: write it, keep the session.
                    table.backend.offer(Op::Touch { id, last_seen: seen });
                    continue;
                }
            }
            doomed.push((deadline, number, id));
        }
        if !doomed.is_empty() {
            report.batches += 1;
            if let Outcome::Swept(sw) = table.submit(Op::Sweep { rows: doomed, now }, Wait::Applied)? {
                for id in sw.absolute.iter().chain(&sw.idle) {
                    table.cache.remove(id);
                    table.emit(|| Event::Expired { session: *id });
                }
                report.expired_absolute += sw.absolute.len();
                report.expired_idle += sw.idle.len();
                report.refresh_families += sw.families;
                report.corrupt_rows += sw.corrupt;
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// The background sweeper thread. It holds only a weak reference to the store,
/// so dropping the last `Store` still closes it; `stop` ends it promptly.
pub(crate) struct Sweeper {
    stop: Sender<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Sweeper {
    /// Starts a thread that calls `sweep` on the store behind `store` every `interval`.
    pub(crate) fn start<T: Send + Sync + 'static>(
        store: Weak<T>,
        interval: Duration,
        sweep: fn(&std::sync::Arc<T>),
    ) -> Option<Sweeper> {
        let (stop, rx): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("cloakroom-sweeper".into())
            .spawn(move || {
                loop {
                    match rx.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let Some(s) = store.upgrade() else { return };
                    sweep(&s);
                }
            })
            .ok()?;
        Some(Sweeper { stop, thread: Mutex::new(Some(thread)) })
    }

    /// Stops and joins the thread (unless called from the thread itself, which
    /// happens when the thread held the last store reference).
    pub(crate) fn stop(&self) {
        let _ = self.stop.try_send(());
        if let Some(h) = self.thread.lock().take()
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}
