//! The Lua scripts of the Redis backend. Each multi-key mutation is one script
//! (sent by `EVALSHA`, loaded again after a `NOSCRIPT`), so it is atomic on the
//! server and costs one round trip.
//!
//! Every key of one store shares the hash tag `{prefix}`, so on a Redis Cluster
//! the scripts run within one slot. Session keys that a script reaches through
//! the user index are built inside the script from `ARGV[1]` (the session key
//! prefix); they are in the same slot.

use redis::Script;

/// `record`: records the revocation of the session whose hash fields are
/// `h` = {ser, sh, id} (`ser → id ‖ sh` in the revoked hash, its prune time in
/// the revoked zset) and publishes it; `revoke` also deletes the session at `k`.
const REVOKE_FN: &str = r"
local function record(h, rv, rvt, ev, prune)
  redis.call('HSET', rv, h[1], h[3] .. h[2])
  redis.call('ZADD', rvt, prune, h[1])
  redis.call('PUBLISH', ev, 'R' .. h[1] .. ':' .. prune .. ':' .. h[3] .. h[2])
end
local function revoke(k, h, rv, rvt, ev, prune)
  record(h, rv, rvt, ev, prune)
  redis.call('DEL', k)
end
";

/// Compare-and-swap on one session. KEYS: session, user index, revoked hash,
/// revoked zset, events channel. ARGV:
/// 1 expected `r` (`*`: any), 2 expected `f` (`*` any, `` absent),
/// 3 mode (`put` or `del`), 4 new `r` (`` keep), 5 new `f` (`` keep),
/// 6 ttl ms (`` keep), 7 new serial (`` keep), 8 new secret hash,
/// 9 prune-after of a revocation, 10 index member, 11 revoke the old serial
/// on `put` (`1`: a rotation), 12 event on `put` (`` none, else published as is),
/// 13 new score of the member in the user index on `put` (`` keep).
/// Returns {1} when applied, {0} if the session is gone, or {-1} if it
/// changed since it was read (the caller reads again and retries).
const CAS: &str = r"
local h = redis.call('HMGET', KEYS[1], 'ser', 'sh', 'id', 'r', 'f')
if not h[1] then return {0} end
if ARGV[1] ~= '*' and h[4] ~= ARGV[1] then return {-1} end
if ARGV[2] ~= '*' then
  if ARGV[2] == '' then
    if h[5] then return {-1} end
  elseif h[5] ~= ARGV[2] then return {-1} end
end
if ARGV[3] == 'del' then
  revoke(KEYS[1], h, KEYS[3], KEYS[4], KEYS[5], ARGV[9])
  redis.call('ZREM', KEYS[2], ARGV[10])
  return {1}
end
if ARGV[11] == '1' then record(h, KEYS[3], KEYS[4], KEYS[5], ARGV[9]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'r', ARGV[4]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'ser', ARGV[7], 'sh', ARGV[8]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'f', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
if ARGV[13] ~= '' then redis.call('ZADD', KEYS[2], ARGV[13], ARGV[10]) end
if ARGV[12] ~= '' then redis.call('PUBLISH', KEYS[5], ARGV[12]) end
return {1}
";

/// Revokes one session. KEYS: session, revoked hash, revoked zset, events
/// channel. ARGV: user index key prefix, prune-after, index member, owner
/// (empty: any row; else only a row whose `u` is that user, `rules::owned_by`).
/// Returns {ser, sh}, or {} if there is no such session (or not the owner's).
const REVOKE: &str = r"
local h = redis.call('HMGET', KEYS[1], 'ser', 'sh', 'id', 'u')
if not h[1] then return {} end
if ARGV[4] ~= '' and h[4] ~= ARGV[4] then return {} end
revoke(KEYS[1], h, KEYS[2], KEYS[3], KEYS[4], ARGV[2])
if h[4] then redis.call('ZREM', ARGV[1] .. h[4], ARGV[3]) end
return {h[1], h[2]}
";

/// Revokes one step of a user's sessions: the first `limit` members of the
/// user index other than the one to keep (it reads `limit + 2`, so that with
/// the kept one among them it still sees whether more remain). KEYS: user index, revoked hash, revoked zset, events channel,
/// not-before hash, marker hash. ARGV: session key prefix, member to keep
/// (`` none), prune-after, not-before user (`` none), not-before time, limit,
/// user, marker key (`backend::UserCut::key`), `1` for the series' first step.
/// Only sessions whose `u` is the user are revoked; every member looked at
/// leaves the index (gone, another user's row, or revoked). Returns
/// {more, ser, id, sh, ...}: `more` is 1 when the step used its whole limit
/// (the caller runs another).
const REVOKE_USER: &str = r"
if ARGV[4] ~= '' then
  local cur = tonumber(redis.call('HGET', KEYS[5], ARGV[4]) or '0')
  if tonumber(ARGV[5]) > cur then
    redis.call('HSET', KEYS[5], ARGV[4], ARGV[5])
    redis.call('PUBLISH', KEYS[4], 'N' .. ARGV[5] .. ':' .. ARGV[4])
  end
end
local limit = tonumber(ARGV[6])
local members = redis.call('ZRANGE', KEYS[1], 0, limit + 1)
-- The series' marker (rules::cut_change): stored by a first step that leaves
-- more, before its revocations are published; removed by a later step that
-- leaves none, after them.
local cands = 0
for _, m in ipairs(members) do
  if m ~= ARGV[2] then cands = cands + 1 end
end
local more = cands > limit
if ARGV[9] == '1' and more then
  redis.call('HSET', KEYS[6], ARGV[8], '1')
  redis.call('PUBLISH', KEYS[4], 'C' .. ARGV[8])
end
local out = {0}
local seen = 0
for _, m in ipairs(members) do
  if m ~= ARGV[2] then
    if seen == limit then out[1] = 1; break end
    seen = seen + 1
    local k = ARGV[1] .. m
    local h = redis.call('HMGET', k, 'ser', 'sh', 'id', 'u')
    if h[1] and h[4] == ARGV[7] then
      revoke(k, h, KEYS[2], KEYS[3], KEYS[4], ARGV[3])
      table.insert(out, h[1]); table.insert(out, h[3]); table.insert(out, h[2])
    end
    redis.call('ZREM', KEYS[1], m)
  end
end
if ARGV[9] ~= '1' and not more then
  redis.call('HDEL', KEYS[6], ARGV[8])
  redis.call('PUBLISH', KEYS[4], 'c' .. ARGV[8])
end
return out
";

/// A create that decides on the server: the id must be free (or hold the
/// session to replace), and the user's cap is applied. KEYS: session, user
/// index, revoked hash, revoked zset, events channel. ARGV: 1 sealed `r`,
/// 2 num, 3 ser, 4 sh, 5 id, 6 user, 7 ttl ms, 8 index score, 9 index
/// member, 10 trim bound (exclusive, `(n`), 11 serial of the session to
/// replace (`` none: the id must be free), 12 prune-after, 13 cap (`` none),
/// 14 `refuse` or `oldest`, 15 session key prefix, 16 user index key prefix,
/// 17 created-at ms (field `c`, the cap's order).
/// Returns {1, ser, id, sh, ...} of what it revoked, {-1} if the id is
/// taken (by another session than the one to replace), {-2} if the cap
/// refuses it.
const CREATE: &str = r"
local h = redis.call('HMGET', KEYS[1], 'ser', 'sh', 'id', 'u')
local out = {1}
-- Every decision before any change (rules::create, then rules::cap): a
-- refused create leaves the row it would have replaced.
if h[1] then
  if ARGV[11] == '' or h[1] ~= ARGV[11] then return {-1} end
elseif ARGV[11] ~= '' then
  return {-1}
end
local over = {}
if ARGV[13] ~= '' then
  local max = tonumber(ARGV[13])
  local live, dead = {}, {}
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local k = ARGV[15] .. m
    if k ~= KEYS[1] then -- (the replaced row leaves with this create)
      local o = redis.call('HMGET', k, 'ser', 'sh', 'id', 'u', 'c', 'num')
      if o[1] and o[4] == ARGV[6] then
        table.insert(live, {tonumber(o[6] or o[1]), k, m, o, tonumber(o[5] or '0')})
      elseif not o[1] then
        table.insert(dead, m)
      end
    end
  end
  if #live >= max and ARGV[14] == 'refuse' then return {-2} end
  -- (members whose row is gone leave the index once the create is decided)
  for _, m in ipairs(dead) do redis.call('ZREM', KEYS[2], m) end
  if #live >= max then
    -- rules::cap: creation time (field c; 0 for rows written before it), then number
    table.sort(live, function(a, b) if a[5] ~= b[5] then return a[5] < b[5] end return a[1] < b[1] end)
    for i = 1, #live + 1 - max do table.insert(over, live[i]) end
  end
end
if h[1] then
  revoke(KEYS[1], h, KEYS[3], KEYS[4], KEYS[5], ARGV[12])
  if h[4] then redis.call('ZREM', ARGV[16] .. h[4], ARGV[9]) end
  table.insert(out, h[1]); table.insert(out, h[3]); table.insert(out, h[2])
end
for _, e in ipairs(over) do
  revoke(e[2], e[4], KEYS[3], KEYS[4], KEYS[5], ARGV[12])
  redis.call('ZREM', KEYS[2], e[3])
  table.insert(out, e[4][1]); table.insert(out, e[4][3]); table.insert(out, e[4][2])
end
redis.call('HSET', KEYS[1], 'r', ARGV[1], 'num', ARGV[2], 'ser', ARGV[3], 'sh', ARGV[4], 'id', ARGV[5], 'u', ARGV[6], 'c', ARGV[17])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[8], ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[10])
return out
";

/// Prunes revocation and not-before entries. KEYS: revoked hash, revoked
/// zset, not-before hash. ARGV: n, n serials, then (user, at) pairs. Returns
/// the users whose entry was removed (unchanged since it was picked).
const PRUNE: &str = r"
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
end
local out = {}
for i = n + 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[3], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[3], ARGV[i])
    table.insert(out, ARGV[i])
  end
end
return out
";

/// The scripts, hashed once.
pub(crate) struct Scripts {
    pub(crate) cas: Script,
    pub(crate) revoke: Script,
    pub(crate) revoke_user: Script,
    pub(crate) create: Script,
    pub(crate) prune: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            cas: Script::new(&format!("{REVOKE_FN}{CAS}")),
            revoke: Script::new(&format!("{REVOKE_FN}{REVOKE}")),
            revoke_user: Script::new(&format!("{REVOKE_FN}{REVOKE_USER}")),
            create: Script::new(&format!("{REVOKE_FN}{CREATE}")),
            prune: Script::new(PRUNE),
        }
    }
}
