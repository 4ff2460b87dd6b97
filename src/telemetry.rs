//! Telemetry: a `tracing` span around every public store operation, and (with
//! the `metrics` feature) counters and histograms through the `metrics`
//! facade. A library links the facades only; the application installs a
//! subscriber or a recorder (see `docs/metrics.md`).
//!
//! What is recorded is bounded and never secret (S6): operation names,
//! outcomes and backends are static strings; a session appears only as its
//! public id (the `Display` form of [`crate::SessionId`]); no token, secret,
//! CSRF token, JWT or refresh token is ever a field or a label. Without a
//! subscriber a span costs one relaxed load of its callsite's interest.
//!
//! The handles of `cloakroom.ops` (one per op and outcome) and
//! `cloakroom.op.duration` are registered once and cached ([`OpTable`]), so an
//! operation's count costs one atomic add in the recorder, not a key lookup
//! (which allocates the label set and hashes it). The cache binds to the
//! recorder in effect when a store opens: install the recorder before opening
//! the store (a store opened earlier counts into the recorder it saw).
//! The writer, applier and follower threads register their handles when they
//! start ([`Hist`], [`Gauge`], [`Counter`]).

use crate::error::Error;

/// Every outcome label, `ok` first, then each error kind (indexed by [`outcome_index`]).
pub(crate) const OUTCOMES: [&str; 16] = [
    "ok",
    "malformed",
    "not_found",
    "expired",
    "revoked",
    "reuse_detected",
    "conflict",
    "jwt",
    "input",
    "busy",
    "storage",
    "config",
    "server_key_missing",
    "entropy",
    "closed",
    "session_limit",
];

/// The index in [`OUTCOMES`] of an operation's result.
fn outcome_index<T>(r: &Result<T, Error>) -> usize {
    match r {
        Ok(_) => 0,
        Err(e) => error_index(e),
    }
}

fn error_index(e: &Error) -> usize {
    match e {
        Error::Malformed(_) => 1,
        Error::NotFound => 2,
        Error::Expired => 3,
        Error::Revoked => 4,
        Error::ReuseDetected => 5,
        Error::Conflict { .. } => 6,
        Error::Jwt(_) => 7,
        Error::Input(_) => 8,
        Error::Busy => 9,
        Error::Storage(_) => 10,
        Error::Config(_) => 11,
        Error::ServerKeyMissing { .. } => 12,
        Error::Entropy => 13,
        Error::Closed => 14,
        Error::SessionLimit { .. } => 15,
    }
}

/// A short, bounded name for an operation's result: `ok` or the error's kind.
pub(crate) fn outcome<T>(r: &Result<T, Error>) -> &'static str {
    OUTCOMES[outcome_index(r)]
}

/// The error's kind as a static label.
pub(crate) fn error_kind(e: &Error) -> &'static str {
    OUTCOMES[error_index(e)]
}

/// Runs one operation inside `span` (made by the caller's `*_span!` macro, so
/// its callsite is static), records its outcome on the span and, with the
/// `metrics` feature, counts it (`cloakroom.ops` by op and outcome) and,
/// when `timed`, records its duration (`cloakroom.op.duration`, seconds;
/// left out for the nanosecond-scale hits, whose clock reads would cost more
/// than the work).
#[inline]
pub(crate) fn run<T>(
    span: tracing::Span,
    op: &'static str,
    timed: bool,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    #[cfg(feature = "metrics")]
    #[allow(clippy::disallowed_methods)] // an operation's duration is wall time
    let started = timed.then(std::time::Instant::now);
    #[cfg(not(feature = "metrics"))]
    let _ = timed;
    let r = {
        let _entered = span.enter();
        f()
    };
    if !span.is_disabled() {
        span.record("outcome", outcome(&r));
    }
    #[cfg(feature = "metrics")]
    {
        let i = outcome_index(&r);
        match ops::handles(op) {
            Some(h) => {
                h.counts[i].increment(1);
                if let Some(t) = started {
                    h.duration.record(t.elapsed().as_secs_f64());
                }
            }
            None => ops::uncached(op, i, started),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = op;
    r
}

/// The cached handles of `cloakroom.ops` and `cloakroom.op.duration`.
#[cfg(feature = "metrics")]
mod ops {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, OnceLock};

    use metrics::{Counter, Histogram};

    use super::OUTCOMES;

    /// Distinct op names the table holds (there are about 25).
    const SLOTS: usize = 64;
    /// Recorders the cache is built for at most (one global recorder, or a
    /// few local ones in tests); past this, every op goes through the lookup.
    const TABLES: usize = 8;

    /// One op's handles, registered with the recorder once.
    pub(super) struct OpHandles {
        /// `cloakroom.ops` by outcome (indexed as [`OUTCOMES`]).
        pub(super) counts: [Counter; OUTCOMES.len()],
        pub(super) duration: Histogram,
        len: usize,
    }

    /// An op's slot: its name's address (0: free) and its handles.
    struct Slot {
        key: AtomicUsize,
        handles: OnceLock<OpHandles>,
    }

    /// The handles of every op seen, for one recorder.
    pub(super) struct OpTable {
        recorder: usize,
        slots: [Slot; SLOTS],
    }

    static BUILT: [OnceLock<OpTable>; TABLES] = [const { OnceLock::new() }; TABLES];
    /// 1 + the index in [`BUILT`] of the table in use (0: none).
    static CURRENT: AtomicUsize = AtomicUsize::new(0);
    static BINDING: Mutex<()> = Mutex::new(());

    /// The address of the recorder the macros would use now.
    fn recorder() -> usize {
        metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize)
    }

    /// Builds (once per recorder) the table for the recorder in effect: called
    /// at every store open.
    pub(super) fn bind() {
        let id = recorder();
        let _g = BINDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cur = CURRENT.load(Ordering::Acquire);
        if cur > 0 && BUILT[cur - 1].get().is_some_and(|t| t.recorder == id) {
            return;
        }
        let free = BUILT.iter().position(|t| t.get().is_none());
        match free {
            Some(i) => {
                let _ = BUILT[i].set(OpTable {
                    recorder: id,
                    slots: std::array::from_fn(|_| Slot { key: AtomicUsize::new(0), handles: OnceLock::new() }),
                });
                CURRENT.store(i + 1, Ordering::Release);
            }
            // Out of tables: every op looks its handles up.
            None => CURRENT.store(0, Ordering::Release),
        }
    }

    fn slot_of(addr: usize) -> usize {
        (addr >> 3 ^ addr >> 9) % SLOTS
    }

    /// The cached handles of `op` (registering them at its first use), or
    /// `None` (no table, a full one, or a slot being filled by another thread).
    #[inline]
    pub(super) fn handles(op: &'static str) -> Option<&'static OpHandles> {
        let cur = CURRENT.load(Ordering::Acquire);
        let table = BUILT.get(cur.checked_sub(1)?)?.get()?;
        let addr = op.as_ptr() as usize;
        let mut i = slot_of(addr);
        for _ in 0..SLOTS {
            let slot = &table.slots[i];
            match slot.key.load(Ordering::Acquire) {
                k if k == addr => match slot.handles.get() {
                    Some(h) if h.len == op.len() => return Some(h),
                    Some(_) => {}
                    None => return None,
                },
                0 => return claim(slot, op),
                _ => {}
            }
            i = (i + 1) % SLOTS;
        }
        None
    }

    #[cold]
    fn claim(slot: &'static Slot, op: &'static str) -> Option<&'static OpHandles> {
        let addr = op.as_ptr() as usize;
        slot.key.compare_exchange(0, addr, Ordering::AcqRel, Ordering::Acquire).ok()?;
        Some(slot.handles.get_or_init(|| OpHandles {
            counts: std::array::from_fn(|i| metrics::counter!("cloakroom.ops", "op" => op, "outcome" => OUTCOMES[i])),
            duration: metrics::histogram!("cloakroom.op.duration", "op" => op),
            len: op.len(),
        }))
    }

    /// The lookup path (no table for this recorder).
    #[cold]
    pub(super) fn uncached(op: &'static str, outcome: usize, started: Option<std::time::Instant>) {
        metrics::counter!("cloakroom.ops", "op" => op, "outcome" => OUTCOMES[outcome]).increment(1);
        if let Some(t) = started {
            metrics::histogram!("cloakroom.op.duration", "op" => op).record(t.elapsed().as_secs_f64());
        }
    }
}

/// Counts an event of the store (`cloakroom.<name>`), with the `metrics` feature.
#[inline]
pub(crate) fn count(name: &'static str, n: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!(name).increment(n);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, n);
}

/// Sets a gauge (`cloakroom.<name>`).
#[cfg(feature = "metrics")]
#[inline]
pub(crate) fn gauge(name: &'static str, v: f64) {
    metrics::gauge!(name).set(v);
}

/// Records a histogram sample, with the `metrics` feature.
#[inline]
pub(crate) fn sample(name: &'static str, v: f64) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(name).record(v);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, v);
}

/// A histogram handle, registered once by a background thread (a no-op
/// without the `metrics` feature).
#[derive(Clone)]
pub(crate) struct Hist(#[cfg(feature = "metrics")] metrics::Histogram);

impl Hist {
    /// Registers `name` (no labels).
    pub(crate) fn new(name: &'static str) -> Hist {
        #[cfg(feature = "metrics")]
        return Hist(metrics::histogram!(name));
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Hist()
        }
    }

    /// Registers `name` with one bounded label.
    pub(crate) fn labelled(name: &'static str, key: &'static str, value: &'static str) -> Hist {
        #[cfg(feature = "metrics")]
        return Hist(metrics::histogram!(name, key => value));
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, key, value);
            Hist()
        }
    }

    /// A handle that records nothing.
    pub(crate) const fn noop() -> Hist {
        Hist(
            #[cfg(feature = "metrics")]
            metrics::Histogram::noop(),
        )
    }

    /// Records one sample.
    #[inline]
    pub(crate) fn record(&self, v: f64) {
        #[cfg(feature = "metrics")]
        self.0.record(v);
        #[cfg(not(feature = "metrics"))]
        let _ = v;
    }

    /// Records a duration, in seconds.
    #[inline]
    pub(crate) fn seconds(&self, d: std::time::Duration) {
        self.record(d.as_secs_f64());
    }
}

/// A gauge handle (see [`Hist`]).
#[derive(Clone)]
pub(crate) struct Gauge(#[cfg(feature = "metrics")] metrics::Gauge);

impl Gauge {
    /// Registers `name` (no labels).
    pub(crate) fn new(name: &'static str) -> Gauge {
        #[cfg(feature = "metrics")]
        return Gauge(metrics::gauge!(name));
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Gauge()
        }
    }

    /// Sets the gauge.
    #[inline]
    #[allow(clippy::cast_precision_loss)] // sizes far below 2^53
    pub(crate) fn set(&self, v: u64) {
        #[cfg(feature = "metrics")]
        self.0.set(v as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = v;
    }
}

/// A counter handle (see [`Hist`]).
#[derive(Clone)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // the Redis backend's
pub(crate) struct Counter(#[cfg(feature = "metrics")] metrics::Counter);

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Counter {
    /// Registers `name` (no labels).
    pub(crate) fn new(name: &'static str) -> Counter {
        #[cfg(feature = "metrics")]
        return Counter(metrics::counter!(name));
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Counter()
        }
    }

    /// Adds `n`.
    #[inline]
    pub(crate) fn increment(&self, n: u64) {
        #[cfg(feature = "metrics")]
        self.0.increment(n);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }
}

/// The writer thread's metrics (registered when it starts).
pub(crate) struct WriterMetrics {
    /// `cloakroom.writer.queue.wait`: submit → taken into a batch, per job.
    pub(crate) queue_wait: Hist,
    /// `cloakroom.writer.queue.depth`: jobs queued when a batch is taken.
    pub(crate) queue_depth: Gauge,
    /// `cloakroom.writer.commit.duration`: submit → acknowledged, per durable job.
    pub(crate) commit: Hist,
    /// `cloakroom.writer.batch.ops` / `.bytes`: per journal record.
    pub(crate) batch_ops: Hist,
    pub(crate) batch_bytes: Hist,
    /// `cloakroom.writer.stall.duration` by cause: writer time spent between
    /// batches (acknowledgements queued behind it wait).
    pub(crate) stall_prune: Hist,
    pub(crate) stall_segment: Hist,
    pub(crate) stall_lag: Hist,
    /// `cloakroom.overlay.rows`, `cloakroom.journal.bytes`.
    pub(crate) overlay_rows: Gauge,
    pub(crate) journal_bytes: Gauge,
}

impl WriterMetrics {
    /// Registers the writer's handles with the recorder in effect.
    pub(crate) fn new() -> WriterMetrics {
        let stall = |cause| Hist::labelled("cloakroom.writer.stall.duration", "cause", cause);
        WriterMetrics {
            queue_wait: Hist::new("cloakroom.writer.queue.wait"),
            queue_depth: Gauge::new("cloakroom.writer.queue.depth"),
            commit: Hist::new("cloakroom.writer.commit.duration"),
            batch_ops: Hist::new("cloakroom.writer.batch.ops"),
            batch_bytes: Hist::new("cloakroom.writer.batch.bytes"),
            stall_prune: stall("overlay_prune"),
            stall_segment: stall("segment"),
            stall_lag: stall("lag"),
            overlay_rows: Gauge::new("cloakroom.overlay.rows"),
            journal_bytes: Gauge::new("cloakroom.journal.bytes"),
        }
    }
}

/// The journal's fsync histograms: `cloakroom.journal.fsync.duration` by
/// `sync` (`batch`: a group commit; `segment`: clearing or starting a segment).
pub(crate) struct JournalMetrics {
    pub(crate) batch: Hist,
    pub(crate) segment: Hist,
}

impl JournalMetrics {
    /// Registers them with the recorder in effect.
    pub(crate) fn new() -> JournalMetrics {
        let h = |s| Hist::labelled("cloakroom.journal.fsync.duration", "sync", s);
        JournalMetrics { batch: h("batch"), segment: h("segment") }
    }

    /// Handles that record nothing (a journal not owned by a writer).
    pub(crate) const fn noop() -> JournalMetrics {
        JournalMetrics { batch: Hist::noop(), segment: Hist::noop() }
    }
}

/// Describes every metric (name, unit, meaning) to the installed recorder, and
/// binds the operation handles' cache to it: called once per store open
/// (cheap; recorders keep the first description).
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        ops::bind();
        describe_counter!("cloakroom.ops", Unit::Count, "Store operations by op and outcome.");
        describe_histogram!("cloakroom.op.duration", Unit::Seconds, "Duration of write and token operations, by op.");
        describe_counter!("cloakroom.refresh.rotated", Unit::Count, "Refresh tokens rotated.");
        describe_counter!(
            "cloakroom.refresh.grace",
            Unit::Count,
            "Refresh tokens answered within the reuse grace window."
        );
        describe_counter!(
            "cloakroom.refresh.reuse",
            Unit::Count,
            "Refresh-token reuse detected (the session was revoked)."
        );
        describe_counter!("cloakroom.sessions.revoked", Unit::Count, "Sessions revoked (any reason).");
        describe_counter!("cloakroom.sweep.removed", Unit::Count, "Expired sessions removed by sweeps.");
        describe_gauge!(
            "cloakroom.corrupt_rows",
            Unit::Count,
            "Stored rows that failed their tag or decode, since open."
        );
        describe_gauge!("cloakroom.cache.entries", Unit::Count, "Sessions in the cache.");
        describe_gauge!("cloakroom.cache.hits", Unit::Count, "Cache hits since open.");
        describe_gauge!("cloakroom.cache.misses", Unit::Count, "Cache misses since open.");
        describe_gauge!("cloakroom.revoked.serials", Unit::Count, "Serials in the revocation set.");
        describe_gauge!("cloakroom.journal.bytes", Unit::Bytes, "Bytes in the journal files.");
        describe_gauge!("cloakroom.overlay.rows", Unit::Count, "Rows written since the last checkpoint.");
        describe_gauge!("cloakroom.commits.failed", Unit::Count, "Journal batches whose commit failed since open.");
        describe_gauge!(
            "cloakroom.follower.synced",
            Unit::Count,
            "1 while a Redis node's follower is caught up, else 0."
        );
        describe_counter!("cloakroom.follower.resyncs", Unit::Count, "Follower (re)connects and catch-ups.");
        describe_counter!("cloakroom.redis.round_trips", Unit::Count, "Requests sent to the Redis server.");
        describe_histogram!("cloakroom.sweep.duration", Unit::Seconds, "Duration of a sweep.");
        describe_histogram!("cloakroom.checkpoint.duration", Unit::Seconds, "Duration of an explicit checkpoint.");
        describe_histogram!(
            "cloakroom.applier.checkpoint.duration",
            Unit::Seconds,
            "Duration of the applier's durable checkpoint commit, by trigger."
        );
        describe_histogram!("cloakroom.applier.checkpoint.rows", Unit::Count, "Row changes folded by a checkpoint.");
        describe_histogram!(
            "cloakroom.writer.commit.duration",
            Unit::Seconds,
            "Durable write: submit to acknowledgement (journal synced)."
        );
        describe_histogram!(
            "cloakroom.writer.queue.wait",
            Unit::Seconds,
            "Write: submit to being taken into a writer batch."
        );
        describe_gauge!("cloakroom.writer.queue.depth", Unit::Count, "Writes queued when the writer took a batch.");
        describe_histogram!("cloakroom.writer.batch.ops", Unit::Count, "Writes per journal record (group commit).");
        describe_histogram!("cloakroom.writer.batch.bytes", Unit::Bytes, "Encoded row changes per journal record.");
        describe_histogram!(
            "cloakroom.writer.stall.duration",
            Unit::Seconds,
            "Writer time between batches, by cause (overlay_prune, segment, lag)."
        );
        describe_histogram!(
            "cloakroom.journal.fsync.duration",
            Unit::Seconds,
            "Journal fdatasync, by sync (batch, segment)."
        );
    }
}
