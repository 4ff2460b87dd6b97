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

use crate::error::Error;

/// A short, bounded name for an operation's result: `ok` or the error's kind.
pub(crate) fn outcome<T>(r: &Result<T, Error>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => error_kind(e),
    }
}

/// The error's kind as a static label.
pub(crate) fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Malformed(_) => "malformed",
        Error::NotFound => "not_found",
        Error::Expired => "expired",
        Error::Revoked => "revoked",
        Error::ReuseDetected => "reuse_detected",
        Error::Conflict { .. } => "conflict",
        Error::Jwt(_) => "jwt",
        Error::Input(_) => "input",
        Error::Busy => "busy",
        Error::Storage(_) => "storage",
        Error::Config(_) => "config",
        Error::ServerKeyMissing { .. } => "server_key_missing",
        Error::Entropy => "entropy",
        Error::Closed => "closed",
        Error::SessionLimit { .. } => "session_limit",
    }
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
        metrics::counter!("cloakroom.ops", "op" => op, "outcome" => outcome(&r)).increment(1);
        if let Some(t) = started {
            metrics::histogram!("cloakroom.op.duration", "op" => op).record(t.elapsed().as_secs_f64());
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = op;
    r
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

/// Describes every metric (name, unit, meaning) to the installed recorder:
/// called once per store open (cheap; recorders keep the first description).
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
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
        describe_gauge!("cloakroom.follower.resyncs", Unit::Count, "Follower (re)connects since open.");
        describe_histogram!("cloakroom.sweep.duration", Unit::Seconds, "Duration of a sweep.");
        describe_histogram!("cloakroom.checkpoint.duration", Unit::Seconds, "Duration of an explicit checkpoint.");
    }
}
