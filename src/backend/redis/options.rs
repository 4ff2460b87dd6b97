//! The settings of a Redis-backed store.

use std::time::Duration;

/// Settings of a Redis-backed store ([`crate::store::Store::redis_with`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Key prefix; every key is under the hash tag `{prefix}`. Default `cloakroom`.
    pub prefix: String,
    /// Idle connections kept for reuse. Default 16.
    pub pool_size: usize,
    /// Connect, read and write timeout of every call: an op against a server
    /// that does not answer fails with a `Storage` error of kind
    /// `Unavailable` after at most about this long. Default 1 s.
    pub timeout: Duration,
    /// How long a node serves a session from its cache without asking Redis
    /// again, should an invalidation event have been missed (counted on the
    /// node's own clock from when it read the row). Events normally
    /// invalidate within milliseconds; this bounds the damage of a lost one.
    /// It also bounds how long a node that is not following the other nodes'
    /// writes (cut off from Redis) keeps verifying access tokens against the
    /// revocations it holds: past it, `verify_access` and `authenticate`
    /// refuse them with a `Storage` error of kind `Unavailable`. Default 1 s.
    pub staleness: Duration,
    /// With `Durability::Immediate`, refuse to open unless the server runs
    /// `appendonly yes` with `appendfsync always` (an acknowledged write then
    /// survives a crash of the Redis host). Default `true`; set `false` to
    /// accept the server's weaker setting (what it is shows in the error).
    pub require_fsync_always: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "cloakroom".into(),
            pool_size: 16,
            timeout: Duration::from_secs(1),
            staleness: Duration::from_secs(1),
            require_fsync_always: true,
        }
    }
}
