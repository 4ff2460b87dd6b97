//! The revocation state a node loads from Redis, and the revocation horizons
//! the nodes record.

use super::keys::{Keys, split_id_hash};
use super::pool::Pool;
use crate::backend::Revoked;
use crate::error::Error;

/// What the store loads from Redis at open and after a reconnect.
pub(crate) struct RevocationState {
    /// (serial, prune-after ms, id, secret hash) of every revocation entry.
    pub(crate) revoked: Vec<Revoked>,
    /// (user, not-before ms).
    pub(crate) not_before: Vec<(String, u64)>,
    /// User-wide revocations in progress.
    pub(crate) cuts: Vec<(String, crate::backend::UserCut)>,
}

/// What `load` reads in one pipeline: the revoked hash, the revoked zset
/// (serial, prune-after), the not-before hash and the marker hash.
type LoadReply = (Vec<(u64, Vec<u8>)>, Vec<(u64, u64)>, Vec<(String, u64)>, Vec<String>);

/// Reads the revocation entries and not-before cut-offs.
pub(crate) fn load(pool: &Pool, keys: &Keys) -> Result<RevocationState, Error> {
    let (rv, rvt, nb, cuts): LoadReply = pool.with(|c| {
        redis::pipe()
            .cmd("HGETALL")
            .arg(keys.revoked())
            .cmd("ZRANGE")
            .arg(keys.revoked_times())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("HGETALL")
            .arg(keys.not_before())
            .cmd("HKEYS")
            .arg(keys.cuts())
            .query(c)
    })?;
    let times: std::collections::HashMap<u64, u64> = rvt.into_iter().collect();
    let revoked = rv
        .into_iter()
        .filter_map(|(serial, v)| {
            let (id, sh) = split_id_hash(&v)?;
            Some(Revoked { serial, id, secret_hash: sh, prune_after: times.get(&serial).copied().unwrap_or(0) })
        })
        .collect();
    let cuts = cuts.iter().filter_map(|k| crate::backend::UserCut::parse(k)).collect();
    Ok(RevocationState { revoked, not_before: nb, cuts })
}

/// Records `ms` in the revocation horizons of `{p}:meta`: `horizon` (the
/// largest any node used) and `horizon_min` (the smallest); returns both
/// (largest, smallest). Every node writes revocations under the largest it
/// knows, and prunes only once the largest has passed even for an entry
/// written under the smallest (see `backend::redb::horizon` for the redb file's).
pub(crate) fn record_horizon(pool: &Pool, keys: &Keys, ms: u64) -> Result<(u64, u64), Error> {
    const RECORD: &str = "local n = tonumber(ARGV[1]) \
        local hi = tonumber(redis.call('HGET', KEYS[1], 'horizon') or '0') \
        local lo = tonumber(redis.call('HGET', KEYS[1], 'horizon_min') or tostring(n)) \
        if n > hi then hi = n; redis.call('HSET', KEYS[1], 'horizon', ARGV[1]) end \
        if n < lo or redis.call('HEXISTS', KEYS[1], 'horizon_min') == 0 then \
          if n < lo then lo = n end; redis.call('HSET', KEYS[1], 'horizon_min', tostring(lo)) end \
        return {hi, lo}";
    pool.with(|c| redis::Script::new(RECORD).key(keys.meta.as_str()).arg(ms).invoke::<(u64, u64)>(c))
}
