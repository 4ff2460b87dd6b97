//! Maintenance: sweep, pruning, stats, flush, checkpoint.

use std::sync::atomic::Ordering;

use super::Store;
use crate::backend::{Op, Outcome, Wait};
use crate::error::Error;
use crate::stats::Stats;
use crate::sweeper::SweepReport;

/// Most revocation entries (and, separately, not-before entries) one prune
/// op drops.
const PRUNE_STEP: usize = 1024;

impl Store {
    /// Removes expired sessions (absolute deadline or idle timeout passed) with
    /// their index rows, refresh families and cache entries, then prunes the
    /// revocation set and retired keys. Runs in bounded batches through the
    /// writer; its cost follows the number of expired rows, not the table size.
    /// The background sweeper calls this every `sweep_interval`.
    ///
    /// A session the cache saw active more recently than its persisted
    /// `last_seen` is kept, and its touch is written.
    ///
    /// # Errors
    /// [`Error::Storage`]; batches already applied stay applied.
    #[allow(clippy::disallowed_methods)] // the report's duration is wall time
    pub fn sweep(&self) -> Result<SweepReport, Error> {
        crate::telemetry::run(
            tracing::debug_span!("sweep", backend = self.backend_name(), outcome = tracing::field::Empty),
            "sweep",
            true,
            || {
                let started = std::time::Instant::now();
                let inner = self.live()?;
                // Barrier: everything acknowledged before the sweep is in the database
                // file, whose expiry index the sweep scans.
                self.checkpoint()?;
                let mut report = SweepReport::default();
                crate::sweeper::sweep_expired(&inner.table, self.now_ms(), &mut report)?;
                // Durable: also makes the sweep batches above durable.
                let (revocations, keys) = self.prune_revocations()?;
                report.revocations_pruned = revocations;
                report.keys_pruned = keys;
                // User-wide revocations left unfinished by a failed step or a
                // dead node (older than a minute: a live series is its
                // runner's), so their markers do not refuse the user forever.
                self.finish_user_revocations(None, self.now_ms().saturating_sub(60_000));
                report.duration = started.elapsed();
                crate::telemetry::count("cloakroom.sweep.removed", report.sessions_removed() as u64);
                crate::telemetry::sample("cloakroom.sweep.duration", report.duration.as_secs_f64());
                self.publish_gauges();
                Ok(report)
            },
        )
    }

    /// Drops revocation entries that no access token can name any more (revoked
    /// longer ago than the access TTL plus leeway) and retired keys past their
    /// window. Keeps the revocation set proportional to recent revocations.
    /// Returns (revocation entries pruned, keys pruned).
    ///
    /// A session whose entry is pruned stays dead: its row was deleted when it
    /// was revoked, so its token reads as `NotFound`.
    ///
    /// # Errors
    /// [`Error::Storage`]; nothing is forgotten in memory unless the commit succeeded.
    pub fn prune_revocations(&self) -> Result<(usize, usize), Error> {
        crate::telemetry::run(
            tracing::debug_span!("revocation.prune", backend = self.backend_name(), outcome = tracing::field::Empty),
            "revocation.prune",
            true,
            || {
                let inner = self.live()?;
                // The prune clock, not the wall clock: a forward jump prunes nothing early.
                let now = self.prune_now();
                // On a backend several nodes write (Redis), an entry may have
                // been written under a smaller horizon than the largest any
                // node uses: keep every entry the difference longer.
                let margin = inner.table.backend.prune_margin(inner.horizon_ms)?;
                let now = now.saturating_sub(margin);
                let entries = inner.table.revocation.due(now);
                let not_before = inner.table.revocation.stale_not_before(now, inner.horizon_ms);
                // In bounded steps: no journal record or Redis script grows
                // with how many entries fell due at once (a revoke_user of a
                // large user makes them due together). A failed step leaves
                // the rest for the next prune; what a step pruned is
                // forgotten in memory only once it committed.
                let (mut entries, mut not_before) = (entries.chunks(PRUNE_STEP), not_before.chunks(PRUNE_STEP));
                let mut pruned_n = 0;
                loop {
                    let (e, n) = (entries.next().unwrap_or_default(), not_before.next().unwrap_or_default());
                    if e.is_empty() && n.is_empty() {
                        break;
                    }
                    let op = Op::PruneRevoked { entries: e.to_vec(), not_before: n.to_vec() };
                    if let Outcome::Pruned(pruned, users) = inner.table.submit(op, Wait::Durable)? {
                        inner.table.revocation.forget(&pruned);
                        inner.table.revocation.forget_not_before(&users);
                        pruned_n += pruned.len();
                    }
                }
                let keys = inner.keyring.prune(crate::clock::from_millis(now));
                Ok((pruned_n, keys))
            },
        )
    }

    /// Counters: sizes, cache hit rate, writer activity.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        let c = inner.table.cache.stats();
        let mut stats = Stats {
            cached_sessions: c.entries,
            cache_hits: c.hits,
            cache_misses: c.misses,
            cache_evictions: c.evictions,
            revoked_serials: inner.table.revocation.len(),
            not_before_users: inner.table.revocation.not_before_len(),
            ..Stats::default()
        };
        inner.table.backend.stats(&mut stats);
        if let Some(c) = &inner.table.coherence {
            stats.following = Some(c.synced());
            stats.resyncs = c.resyncs.load(Ordering::Relaxed);
        }
        stats
    }

    /// Publishes the pull-style counters of [`Store::stats`] as gauges (with
    /// the `metrics` feature): on every sweep, and whenever called.
    pub fn publish_gauges(&self) {
        #[cfg(feature = "metrics")]
        {
            use crate::telemetry::gauge;
            #[allow(clippy::cast_precision_loss)] // counters far below 2^53
            let f = |v: u64| v as f64;
            let s = self.stats();
            gauge("cloakroom.cache.entries", f(s.cached_sessions as u64));
            gauge("cloakroom.cache.hits", f(s.cache_hits));
            gauge("cloakroom.cache.misses", f(s.cache_misses));
            gauge("cloakroom.revoked.serials", f(s.revoked_serials));
            gauge("cloakroom.journal.bytes", f(s.journal_bytes));
            gauge("cloakroom.overlay.rows", f(s.unapplied_rows as u64));
            gauge("cloakroom.commits.failed", f(s.failed_commits));
            gauge("cloakroom.corrupt_rows", f(s.corrupt_rows));
            // (The follower thread also sets it at every change, and counts
            // `cloakroom.follower.resyncs`.)
            if let Some(on) = s.following {
                gauge("cloakroom.follower.synced", if on { 1.0 } else { 0.0 });
            }
        }
    }

    /// Makes every write queued so far durable (including pending sliding-expiry touches).
    ///
    /// # Errors
    /// [`Error::Storage`] if the commit failed; [`Error::Closed`].
    pub fn flush(&self) -> Result<(), Error> {
        crate::telemetry::run(
            tracing::debug_span!("flush", backend = self.backend_name(), outcome = tracing::field::Empty),
            "flush",
            true,
            || self.live()?.table.submit(Op::Flush, Wait::Durable).map(|_| ()),
        )
    }

    /// Folds every write acknowledged so far into the database file with one
    /// durable commit, so the journal holds nothing more to replay. The
    /// background applier does this on its own at least every second while
    /// writes come in; call it before counting rows with [`Store::stats`] or
    /// reading the file with another tool.
    ///
    /// # Errors
    /// [`Error::Storage`] if the commit failed (nothing acknowledged is lost:
    /// the journal still holds it, and the applier retries); [`Error::Closed`].
    pub fn checkpoint(&self) -> Result<(), Error> {
        crate::telemetry::run(
            tracing::debug_span!("checkpoint", backend = self.backend_name(), outcome = tracing::field::Empty),
            "checkpoint",
            true,
            || {
                #[allow(clippy::disallowed_methods)] // a checkpoint's duration is wall time
                let started = std::time::Instant::now();
                let r = self.live()?.table.backend.checkpoint();
                crate::telemetry::sample("cloakroom.checkpoint.duration", started.elapsed().as_secs_f64());
                r
            },
        )
    }

    /// The time pruning goes by: the wall clock held to the monotonic time
    /// elapsed (see `Revocation::prune_clock`).
    pub(super) fn prune_now(&self) -> u64 {
        let clock = &self.inner.config.clock;
        self.inner.table.revocation.prune_clock(self.now_ms(), crate::clock::duration_millis(clock.monotonic()))
    }
}
