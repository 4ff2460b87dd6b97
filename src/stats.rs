//! [`Stats`]: the counters a store reports. A leaf module: the facade and
//! every backend fill it, and it depends on nothing of theirs.

/// Counters describing a store. Cheap to take.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Sessions stored (every acknowledged one, including expired ones not yet
    /// swept); `None` if the count failed, and always on a Redis-backed store
    /// (Redis expires sessions by itself, uncounted).
    pub sessions_stored: Option<u64>,
    /// Sessions held in the cache.
    pub cached_sessions: usize,
    /// Cache hits since open (approximate under heavy concurrency).
    pub cache_hits: u64,
    /// Cache misses since open (approximate under heavy concurrency).
    pub cache_misses: u64,
    /// Cache evictions since open.
    pub cache_evictions: u64,
    /// Serials in the revocation set.
    pub revoked_serials: u64,
    /// Users with a not-before cut-off (from `logout_everywhere`) not yet pruned.
    pub not_before_users: usize,
    /// Write transactions committed.
    pub commits: u64,
    /// Of which durable (fsynced).
    pub durable_commits: u64,
    /// Write ops applied (committed or failed).
    pub write_ops: u64,
    /// `last_seen` writes made by sliding expiry.
    pub touch_writes: u64,
    /// Transactions whose commit failed.
    pub failed_commits: u64,
    /// Eventual-durability writes lost to a failed commit.
    pub lost_eventual_writes: u64,
    /// `last_seen` writes skipped because the queue was full (sessions only get shorter).
    pub dropped_touches: u64,
    /// Stored rows found damaged or tampered with (failed authentication tag or
    /// decode) since open; each failed closed. Run `cloakroom verify`.
    pub corrupt_rows: u64,
    /// Durable checkpoints of the journal into the database file.
    pub checkpoints: u64,
    /// Duration of the last checkpoint, in µs (it never delays an acknowledgement).
    pub last_checkpoint_us: u64,
    /// Failed commits of the applier into the database file (retried; nothing
    /// acknowledged is lost: the journal holds it).
    pub failed_checkpoints: u64,
    /// Bytes in the journal files.
    pub journal_bytes: u64,
    /// Rows written since the last checkpoint, held in memory until it lands.
    pub unapplied_rows: usize,
    /// Journal records replayed into the database file by this open (non-zero
    /// after a crash).
    pub replayed_records: usize,
    /// Approximate heap bytes of the in-memory id and user indexes.
    pub index_bytes: usize,
    /// For a store on a backend shared by several nodes (Redis): whether its
    /// event follower is connected and caught up (while it is not, every
    /// validate asks the backend). `None` for a redb store.
    pub following: Option<bool>,
    /// For a store on a shared backend: how many times the follower
    /// (re)connected, flushed the cache and reloaded the revocation state.
    pub resyncs: u64,
    /// Times writes waited for a checkpoint because a million rows were not yet
    /// folded into the file (a sustained write rate above what the file takes).
    pub lag_waits: u64,
}
