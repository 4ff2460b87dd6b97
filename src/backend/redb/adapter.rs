//! The embedded backend: a redb file (or redb's in-memory backend), the
//! journal and the writer thread of `crate::db`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::backend::contract::{Backend, LostHook, Wait};
use crate::backend::op::{Failure, Op, Outcome};
use crate::backend::redb::handle::Db;
use crate::backend::redb::journal::Journal;
use crate::backend::redb::open::Loaded;
use crate::backend::redb::writer::{Start, Writer};
use crate::error::Error;
use crate::refresh::Families;
use crate::session::Record;
use crate::token::SessionId;

/// A redb database with its writer.
pub(crate) struct Redb {
    db: Db,
    writer: Writer,
    /// Journal records replayed at open.
    replayed: usize,
}

/// The writer's timing and queue settings.
pub(crate) struct Tuning {
    pub(crate) flush_interval: Duration,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) queue: usize,
}

impl Redb {
    /// Starts the writer over an opened database. `lost` hears of eventual
    /// creates whose batch failed (never stored).
    pub(crate) fn start(db: Db, loaded: &Loaded, journal: Journal, lost: LostHook, t: Tuning) -> Result<Redb, Error> {
        let writer = Writer::start(Start {
            db: db.clone(),
            journal,
            checkpointed: loaded.checkpointed,
            lost,
            flush_interval: t.flush_interval,
            checkpoint_interval: t.checkpoint_interval,
            queue: t.queue,
        })?;
        Ok(Redb { db, writer, replayed: loaded.replayed })
    }
}

impl Backend for Redb {
    fn get(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        self.db.get(id)
    }

    fn list_user(&self, user: &str) -> Result<Vec<Record>, Error> {
        self.db.list_user(user)
    }

    fn families(&self, id: &SessionId) -> Result<Option<Families>, Error> {
        self.db.families(id)
    }

    fn expired(&self, now: u64, after: Option<(u64, u64)>, limit: usize) -> Result<Vec<(u64, u64, SessionId)>, Error> {
        self.db.expired(now, after, limit)
    }

    fn submit(&self, op: Op, wait: Wait) -> Result<Outcome, Failure> {
        self.writer.submit(op, wait)
    }

    fn offer(&self, op: Op) {
        self.writer.offer(op);
    }

    fn checkpoint(&self) -> Result<(), Error> {
        // Every batch queued before has reached the applier once this returns.
        self.writer.submit(Op::Flush, Wait::Applied).map_err(|f| f.error)?;
        self.writer.applier.checkpoint().map(|_| ())
    }

    fn close(&self) -> Result<(), Error> {
        let r = self.writer.close();
        self.db.close();
        r
    }

    fn stats(&self, s: &mut crate::stats::Stats) {
        let w = &self.writer.stats;
        let a = &self.writer.applier.progress;
        s.sessions_stored = self.db.session_count().ok();
        s.commits = w.commits.load(Ordering::Relaxed);
        s.durable_commits = w.durable_commits.load(Ordering::Relaxed);
        s.write_ops = w.ops.load(Ordering::Relaxed);
        s.touch_writes = w.touches.load(Ordering::Relaxed);
        s.failed_commits = w.failed_commits.load(Ordering::Relaxed);
        s.lost_eventual_writes = w.lost_eventual.load(Ordering::Relaxed);
        s.dropped_touches = w.dropped_touches.load(Ordering::Relaxed);
        s.corrupt_rows = self.db.corrupt_rows();
        s.checkpoints = a.checkpoints.load(Ordering::Relaxed);
        s.last_checkpoint_us = a.last_checkpoint_us.load(Ordering::Relaxed);
        s.failed_checkpoints = a.failed_commits.load(Ordering::Relaxed);
        s.journal_bytes = w.journal_bytes.load(Ordering::Relaxed);
        s.unapplied_rows = self.db.overlay().read().len();
        s.replayed_records = self.replayed;
        s.index_bytes = self.db.index().heap_bytes();
        s.lag_waits = w.lag_waits.load(Ordering::Relaxed);
    }
}
