//! The Redis backend (feature `redis`): sessions shared by every node of an
//! app through one Redis (or Valkey) server, with the synchronous `redis`
//! client (no async runtime inside the library) and a small connection pool.
//!
//! Key layout (all keys under the hash tag `{prefix}`, default `{cloakroom}`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:s:<id hex>` | hash | `r` sealed record, `num` storage number, `ser` serial, `sh` secret hash, `id`, `u` user, `f` sealed refresh families; `PEXPIRE` to the session's deadline |
//! | `{p}:u:<user>` | zset | the user's session ids (hex), scored by absolute deadline |
//! | `{p}:rv` | hash | revoked serial → id ‖ secret hash |
//! | `{p}:rvt` | zset | revoked serial, scored by prune-after (ms) |
//! | `{p}:nb` | hash | user → not-before (ms) |
//! | `{p}:meta` | hash | `format`: the layout version (1); `keycheck`: a hash derived from the server key; `instance`: this store's identity (random, recorded by its first open); `serial`: the serial counter |
//! | `{p}:kids` | hash | access-token kid → keyed hash of its algorithm and verification key |
//! | `{p}:ev` | channel | revocations (`R`), changed sessions (`U`), not-before (`N`) |
//!
//! A create is one MULTI/EXEC transaction (unconditional writes); writes that
//! decide on the server (revoke, a user's revocation, pruning) are one script
//! each. Writes that build a new record
//! from the stored one (touch, data update, rotation, a refresh-family
//! decision) read the row, decide in Rust, and apply with one compare-and-swap
//! script, retried if another node changed the row in between: two round trips,
//! exactly-once across nodes.
//!
//! A wiped store (a `FLUSHALL`, or a server restarted without writes it had
//! acknowledged) is noticed by its missing or other `instance`, or by a serial
//! counter behind what this node reserved (see [`Instance`]): the node then
//! refuses every call with a `Storage` error of kind `Wiped` until reopened.

mod ops;
mod resp;
mod scripts;
pub(crate) mod sync;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use redis::{Client, Connection};

use self::resp::{Arg, Packed};
use self::scripts::Scripts;
use crate::backend::coherence::Coherence;
use crate::backend::sealed::mac::RowMac;
use crate::backend::sealed::rows::{decode_family, decode_session};
use crate::backend::{Backend, Failure, Op, Outcome, Revoked, Wait};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::refresh::Families;
use crate::session::Record;
use crate::token::{SecretHash, SessionId};

/// The Redis key layout's version, recorded in `{p}:meta` as `format` by the
/// first open; a store whose recorded layout is another one is refused.
pub(crate) const LAYOUT_FORMAT: u32 = 1;

/// How many times a compare-and-swap is retried after losing to another
/// writer before the op reports [`Error::Busy`].
const CAS_TRIES: usize = 64;

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

/// The key names of one store, built once.
#[derive(Clone)]
pub(crate) struct Keys {
    session_prefix: String,
    user_prefix: String,
    revoked: String,
    revoked_times: String,
    not_before: String,
    cuts: String,
    meta: String,
    kids: String,
    events: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        let k = |name: &str| format!("{{{prefix}}}:{name}");
        Keys {
            session_prefix: k("s:"),
            user_prefix: k("u:"),
            revoked: k("rv"),
            revoked_times: k("rvt"),
            not_before: k("nb"),
            cuts: k("cuts"),
            meta: k("meta"),
            kids: k("kids"),
            events: k("ev"),
        }
    }
    /// A session's key, as a command argument.
    fn session<'a>(&'a self, id: &'a SessionId) -> Arg<'a> {
        Arg::Hex(&self.session_prefix, id.as_bytes())
    }
    /// A user's index key, as a command argument.
    fn user<'a>(&'a self, user: &'a str) -> Arg<'a> {
        Arg::Cat(&self.user_prefix, user.as_bytes())
    }
    fn user_key(&self, user: &str) -> String {
        format!("{}{user}", self.user_prefix)
    }
    pub(crate) fn revoked(&self) -> &str {
        &self.revoked
    }
    pub(crate) fn revoked_times(&self) -> &str {
        &self.revoked_times
    }
    pub(crate) fn not_before(&self) -> &str {
        &self.not_before
    }
    /// The hash of user-wide revocations in progress (field: the marker key).
    pub(crate) fn cuts(&self) -> &str {
        &self.cuts
    }
    pub(crate) fn events(&self) -> &str {
        &self.events
    }
}

/// Lowercase hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    let mut v = Vec::with_capacity(2 * b.len());
    resp::push_hex(&mut v, b);
    String::from_utf8(v).unwrap_or_default()
}

/// A Redis failure as the store reports it: the server could not be reached
/// or did not answer in time (`Unavailable`), or it answered with an error.
pub(crate) fn unavailable(e: redis::RedisError) -> Error {
    StorageError::with_source(StorageErrorKind::Unavailable, e).into()
}

/// A small pool of connections, each with the configured timeouts.
pub(crate) struct Pool {
    client: Client,
    idle: Mutex<Vec<Connection>>,
    cap: usize,
    timeout: Duration,
    /// `cloakroom.redis.round_trips`: one per request sent through the pool.
    round_trips: crate::telemetry::Counter,
}

impl Pool {
    pub(crate) fn new(url: &str, cap: usize, timeout: Duration) -> Result<Pool, Error> {
        let client = Client::open(url).map_err(|e| Error::Config(format!("bad Redis URL: {e}")))?;
        let round_trips = crate::telemetry::Counter::new("cloakroom.redis.round_trips");
        Ok(Pool { client, idle: Mutex::new(Vec::new()), cap, timeout, round_trips })
    }

    /// A new connection with the pool's timeouts (not pooled).
    pub(crate) fn connect(&self) -> Result<Connection, Error> {
        let con = self.client.get_connection_with_timeout(self.timeout).map_err(unavailable)?;
        con.set_read_timeout(Some(self.timeout)).map_err(unavailable)?;
        con.set_write_timeout(Some(self.timeout)).map_err(unavailable)?;
        Ok(con)
    }

    /// Runs `f` on a pooled connection. A connection that saw an I/O error is
    /// dropped, not returned to the pool.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T, Error> {
        let pooled = self.idle.lock().pop();
        let mut con = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        // One request (a command, a pipeline or a transaction: one round trip).
        self.round_trips.increment(1);
        let out = f(&mut con);
        let healthy = out.as_ref().err().is_none_or(|e| {
            !e.is_io_error() && !e.is_timeout() && !e.is_connection_dropped() && !e.is_unrecoverable_error()
        });
        if healthy {
            let mut idle = self.idle.lock();
            if idle.len() < self.cap {
                idle.push(con);
            }
        }
        out.map_err(unavailable)
    }

    /// Drops every idle connection (after the server went away).
    pub(crate) fn clear(&self) {
        self.idle.lock().clear();
    }
}

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

/// One session row of a listing: `r`, `num`, `id`.
type ListedRow = (Option<Vec<u8>>, Option<u64>, Option<Vec<u8>>);

/// Sets `field` of hash `key` to `value` unless it is set already; returns
/// what is recorded there now (this value, or the one recorded first).
fn record_once(pool: &Pool, key: &str, field: &str, value: &str) -> Result<Option<String>, Error> {
    pool.with(|c| {
        redis::pipe()
            .cmd("HSETNX")
            .arg(key)
            .arg(field)
            .arg(value)
            .ignore()
            .cmd("HGET")
            .arg(key)
            .arg(field)
            .query::<(Option<String>,)>(c)
            .map(|(v,)| v)
    })
}

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

/// `id ‖ secret hash` (48 bytes) as stored in the revoked hash and events.
pub(crate) fn split_id_hash(v: &[u8]) -> Option<(SessionId, SecretHash)> {
    let id: [u8; 16] = v.get(..16)?.try_into().ok()?;
    let sh: [u8; 32] = v.get(16..48)?.try_into().ok()?;
    (v.len() == 48).then_some((SessionId::from_bytes(id), SecretHash(sh)))
}

/// The instance of a store's Redis data this node opened: the identity its
/// first open recorded in `{p}:meta`, and the highest serial this node
/// reserved or read. The data was wiped (or went back in time) under this
/// node when the identity is missing or another one, or the serial counter is
/// behind a serial this node reserved or read (every serial was reserved from
/// that counter first).
pub(crate) struct Instance {
    /// The recorded identity (32 hex digits of OS randomness).
    id: String,
    /// The highest serial this node reserved (a block's end) or read.
    highest: AtomicU64,
    /// Reserves a serial block only while the identity is this one.
    reserve: redis::Script,
}

/// `KEYS[1]` meta; `ARGV[1]` the identity, `ARGV[2]` how many serials. The
/// new counter, or nil (and nothing changed) if the identity is not recorded.
const RESERVE: &str = r"
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1] then return false end
return redis.call('HINCRBY', KEYS[1], 'serial', ARGV[2])";

impl Instance {
    /// Records a new identity unless one is recorded; this store's identity.
    fn record(pool: &Pool, meta: &str) -> Result<Instance, Error> {
        let mut fresh = [0u8; 16];
        crate::token::os_random(&mut fresh)?;
        let recorded = record_once(pool, meta, "instance", &hex(&fresh))?;
        let id = recorded.ok_or_else(|| StorageError::new(StorageErrorKind::Wiped))?;
        Ok(Instance { id, highest: AtomicU64::new(0), reserve: redis::Script::new(RESERVE) })
    }

    /// Whether the data under the prefix is still this instance: the identity
    /// recorded, and the serial counter not behind a serial this node
    /// reserved or read. Asked by the follower at every (re)connect and every
    /// ping interval.
    pub(crate) fn current(&self, pool: &Pool, keys: &Keys) -> Result<bool, Error> {
        // Read before the counter: a serial reserved or read meanwhile was
        // counted by the server before this read.
        let highest = self.highest.load(Ordering::Acquire);
        let (id, serial): (Option<String>, Option<u64>) =
            pool.with(|c| redis::cmd("HMGET").arg(&keys.meta).arg("instance").arg("serial").query(c))?;
        Ok(id.as_deref() == Some(self.id.as_str()) && serial.unwrap_or(0) >= highest)
    }

    /// Notes a serial this node read from the store (a row, an event).
    pub(crate) fn saw(&self, serial: u64) {
        self.highest.fetch_max(serial, Ordering::AcqRel);
    }
}

/// What the touch thread receives: a touch, or a barrier answered once every
/// touch queued before it was applied.
enum Queued {
    Touch(SessionId, u64),
    Barrier(Sender<()>),
}

/// Counters of the backend.
#[derive(Default)]
struct Counters {
    touches: AtomicU64,
    dropped_touches: AtomicU64,
    corrupt: AtomicU64,
    writes: AtomicU64,
}

pub(crate) struct RedisBackend {
    shared: Arc<Core>,
    touch_tx: Mutex<Option<Sender<Queued>>>,
    toucher: Mutex<Option<JoinHandle<()>>>,
}

struct Core {
    pool: Arc<Pool>,
    /// This node's sync state and clock (wiped: every call is refused).
    coherence: Arc<Coherence>,
    instance: Arc<Instance>,
    keys: Keys,
    mac: RowMac,
    scripts: Scripts,
    counters: Counters,
    /// The server was checked to fsync every write (`appendfsync always`).
    fsync_always: bool,
    /// Touches queued but not yet written (id → last seen): reads of this
    /// node see them, as the redb backend's reads see its unapplied rows, so a
    /// re-read never moves a session's last-seen time back.
    pending: Mutex<std::collections::HashMap<SessionId, u64>>,
}

impl RedisBackend {
    /// Connects, checks the server key and the access-token keys against
    /// those recorded in Redis (recording them on first use), records or
    /// reads the store's instance identity, and checks the server's fsync
    /// policy.
    pub(crate) fn open(
        pool: Arc<Pool>,
        keys: Keys,
        server_key: &[u8; 32],
        keyring: &crate::jwt::Keyring,
        need_fsync_always: bool,
        coherence: Arc<Coherence>,
    ) -> Result<RedisBackend, Error> {
        let check = hex(&blake3::derive_key("cloakroom 2026 redis server-key check v1", server_key));
        let meta = keys.meta.as_str();
        let format = record_once(&pool, meta, "format", &LAYOUT_FORMAT.to_string())?;
        if format.and_then(|f| f.parse().ok()) != Some(LAYOUT_FORMAT) {
            // Written by another (newer, or unknown) version: nothing is touched.
            return Err(StorageError::new(StorageErrorKind::NewerFormat).into());
        }
        if record_once(&pool, meta, "keycheck", &check)?.as_deref() != Some(check.as_str()) {
            return Err(StorageError::new(StorageErrorKind::KeyMismatch).into());
        }
        let instance = Arc::new(Instance::record(&pool, meta)?);
        // Each access-token kid names one key on every node: a kid recorded
        // with other material is refused (new kids are recorded, so keys can be
        // added and rotated node by node).
        let kid_key = blake3::derive_key("cloakroom 2026 redis access-key check v1", server_key);
        for (kid, print) in keyring.fingerprints(&kid_key) {
            let print = hex(&print);
            if record_once(&pool, &keys.kids, &kid, &print)?.as_deref() != Some(print.as_str()) {
                return Err(Error::Config(format!(
                    "access-token key {kid:?} differs from the key other nodes recorded under that kid in Redis: \
                     give every node the same keyring (or a new kid for a new key)"
                )));
            }
        }
        if need_fsync_always {
            // A server that refuses CONFIG (some managed services) reads as
            // "unknown" and is refused: accept it with require_fsync_always = false.
            let conf: Vec<(String, String)> =
                pool.with(|c| redis::cmd("CONFIG").arg("GET").arg("append*").query(c)).unwrap_or_default();
            let get = |k: &str| conf.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            if get("appendonly") != Some("yes") || get("appendfsync") != Some("always") {
                return Err(Error::Config(format!(
                    "Durability::Immediate needs the Redis server to fsync every write (appendonly yes, \
                     appendfsync always); it runs appendonly {}, appendfsync {}. Change the server's \
                     config, or accept its policy with RedisOptions::require_fsync_always = false",
                    get("appendonly").unwrap_or("unknown (CONFIG GET refused)"),
                    get("appendfsync").unwrap_or("unknown")
                )));
            }
        }
        let shared = Arc::new(Core {
            pool,
            coherence,
            instance,
            keys,
            mac: RowMac::new(server_key),
            scripts: Scripts::new(),
            counters: Counters::default(),
            fsync_always: need_fsync_always,
            pending: Mutex::new(std::collections::HashMap::new()),
        });
        let (tx, rx) = crossbeam_channel::bounded(4096);
        let worker = Arc::clone(&shared);
        let toucher = std::thread::Builder::new()
            .name("cloakroom-redis-touch".into())
            .spawn(move || touch_loop(&worker, &rx))
            .map_err(|e| StorageError::with_source(StorageErrorKind::Io, e))?;
        Ok(RedisBackend { shared, touch_tx: Mutex::new(Some(tx)), toucher: Mutex::new(Some(toucher)) })
    }

    /// Waits until every touch queued so far was applied (or failed).
    fn drain_touches(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sent = self.touch_tx.lock().as_ref().is_some_and(|q| q.send(Queued::Barrier(tx)).is_ok());
        if sent {
            let _ = rx.recv();
        }
    }

    /// The store's instance, for the follower and serial reservations.
    pub(crate) fn instance(&self) -> Arc<Instance> {
        Arc::clone(&self.shared.instance)
    }

    /// Reserves `n` serials shared by every node; returns the first. Only
    /// while the data is still this instance: a wiped store's counter starts
    /// again from 0, and serials this node's cache and bitmap hold would be
    /// handed out again.
    pub(crate) fn reserve(
        pool: &Pool,
        keys: &Keys,
        instance: &Instance,
        coherence: &Coherence,
        n: u64,
    ) -> Result<u64, Error> {
        coherence.check_wiped()?;
        let mut p = Packed::new();
        p.evalsha(&instance.reserve, &[keys.meta.as_str().into()], &[instance.id.as_str().into(), Arg::U(n)]);
        let end: Option<u64> = pool.with(|c| p.invoke(c, &instance.reserve))?;
        let Some(end) = end else {
            coherence.set_wiped();
            return Err(StorageError::new(StorageErrorKind::Wiped).into());
        };
        instance.saw(end);
        Ok(end - n + 1)
    }
}

impl Core {
    /// Refuses a write to a wiped store. While the follower is not following
    /// (it checks the instance at every reconnect and every 250 ms), a write
    /// first asks the server itself: after a restart that lost the data, no
    /// write lands in it before the follower is back.
    fn check_instance(&self) -> Result<(), Error> {
        let c = &self.coherence;
        c.check_wiped()?;
        if !c.synced() && !self.instance.current(&self.pool, &self.keys)? {
            c.set_wiped();
            return c.check_wiped();
        }
        Ok(())
    }
}

fn touch_loop(shared: &Core, rx: &Receiver<Queued>) {
    for q in rx {
        match q {
            // A failed touch only shortens the session (fail closed): ignore
            // errors. Nothing is written to a wiped store.
            Queued::Touch(id, last_seen) => {
                if !shared.coherence.wiped() {
                    let _ = shared.apply(Op::Touch { id, last_seen });
                }
                let mut pending = shared.pending.lock();
                if pending.get(&id).is_some_and(|&t| t <= last_seen) {
                    pending.remove(&id);
                }
            }
            Queued::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

impl Backend for RedisBackend {
    fn get(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        // A pending touch is looked up before and after the read: one applied
        // (and forgotten) while the read was on its way may be missing from both
        // the row read and the map after it, but then it was in the map before.
        let pending = || self.shared.pending.lock().get(id).copied();
        let coherence = &self.shared.coherence;
        coherence.check_wiped()?;
        // Freshness counts from before the read, on this node's clock (never
        // the row's own times: another node's clock).
        let read_at = coherence.now_ms();
        let before = pending();
        let Some(mut rec) = self.shared.read(id)?.map(|s| s.rec) else { return Ok(None) };
        rec.live.fetched.store(read_at, Ordering::Relaxed);
        self.shared.instance.saw(rec.serial);
        if let Some(t) = before.max(pending())
            && t > rec.last_seen
        {
            rec.last_seen = t;
            rec.live.last_seen.fetch_max(t, Ordering::Relaxed);
            rec.live.persisted.fetch_max(t, Ordering::Relaxed);
        }
        Ok(Some(rec))
    }

    fn shared(&self) -> bool {
        true
    }

    fn prune_margin(&self, ms: u64) -> Result<u64, Error> {
        // Entries any node wrote carry at least the smallest recorded
        // horizon: kept until the largest one has passed for all of them.
        record_horizon(&self.shared.pool, &self.shared.keys, ms).map(|(max, min)| max.saturating_sub(min))
    }

    fn list_user(&self, user: &str) -> Result<Vec<Record>, Error> {
        let sh = &self.shared;
        sh.coherence.check_wiped()?;
        let members: Vec<String> =
            sh.pool.with(|c| redis::cmd("ZRANGE").arg(sh.keys.user_key(user)).arg(0).arg(-1).query(c))?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for m in &members {
            p.cmd("HMGET").arg(format!("{}{m}", sh.keys.session_prefix)).arg("r").arg("num").arg("id");
        }
        let rows: Vec<ListedRow> = sh.pool.with(|c| p.query(c))?;
        let mut out = Vec::with_capacity(rows.len());
        let mut gone = Vec::new();
        for (m, (r, num, id)) in members.iter().zip(rows) {
            let (Some(r), Some(num), Some(id)) = (r, num, id) else {
                gone.push(m);
                continue;
            };
            let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) else { continue };
            match decode_session(&sh.mac, SessionId::from_bytes(id), num, &r) {
                Ok(rec) => out.push(rec),
                Err(_) => {
                    sh.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Index entries of sessions Redis expired: dropped here (best effort;
        // a leftover entry only costs a lookup that finds nothing).
        if !gone.is_empty() {
            let _ = sh.pool.with(|c| redis::cmd("ZREM").arg(sh.keys.user_key(user)).arg(&gone).query::<()>(c));
        }
        Ok(out)
    }

    fn families(&self, id: &SessionId) -> Result<Option<Families>, Error> {
        self.shared.coherence.check_wiped()?;
        let Some(s) = self.shared.read(id)? else { return Ok(None) };
        s.f.map(|row| decode_family(&self.shared.mac, s.rec.number, &row)).transpose()
    }

    fn expired(
        &self,
        _now: u64,
        _after: Option<(u64, u64)>,
        _limit: usize,
    ) -> Result<Vec<(u64, u64, SessionId)>, Error> {
        Ok(Vec::new())
    }

    fn submit(&self, op: Op, _wait: Wait) -> Result<Outcome, Failure> {
        // Every op is applied on the server before it returns; durability is
        // the server's (see `RedisOptions::require_fsync_always`). A flush
        // also waits for the touches queued before it.
        if matches!(op, Op::Flush) {
            self.drain_touches();
        }
        self.shared.check_instance()?;
        let out = self.shared.apply(op);
        if out.is_ok() {
            self.shared.counters.writes.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    fn offer(&self, op: Op) {
        if let Op::Touch { id, last_seen } = op
            && let Some(tx) = &*self.touch_tx.lock()
        {
            {
                let mut pending = self.shared.pending.lock();
                let t = pending.entry(id).or_insert(0);
                *t = (*t).max(last_seen);
            }
            if let Err(TrySendError::Full(_)) = tx.try_send(Queued::Touch(id, last_seen)) {
                // Dropped: the session only gets shorter (fail closed).
                self.shared.pending.lock().remove(&id);
                self.shared.counters.dropped_touches.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn checkpoint(&self) -> Result<(), Error> {
        self.drain_touches();
        Ok(())
    }

    fn close(&self) -> Result<(), Error> {
        drop(self.touch_tx.lock().take());
        if let Some(h) = self.toucher.lock().take() {
            let _ = h.join();
        }
        Ok(())
    }

    fn stats(&self, s: &mut crate::stats::Stats) {
        let c = &self.shared.counters;
        s.touch_writes = c.touches.load(Ordering::Relaxed);
        s.dropped_touches = c.dropped_touches.load(Ordering::Relaxed);
        s.corrupt_rows = c.corrupt.load(Ordering::Relaxed);
        // Redis expires sessions by itself, without telling: not counted here.
        s.sessions_stored = None;
        let writes = c.writes.load(Ordering::Relaxed);
        s.write_ops = writes;
        s.commits = writes;
        s.durable_commits = if self.shared.fsync_always { writes } else { 0 };
    }
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
