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
//! | `{p}:meta` | hash | `format`: the layout version (1); `keycheck`: a hash derived from the server key; `serial`: the serial counter |
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

mod resp;
mod scripts;
pub(crate) mod sync;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use redis::{Client, Connection, Value};

use self::resp::{Arg, Packed};
use self::scripts::Scripts;
use crate::backend::{Backend, Failure, FamilyChange, Op, Outcome, Revoked, Swept, Wait};
use crate::db::mac::{RowMac, RowTable};
use crate::db::{decode_family, decode_session, seal_session};
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

/// Settings of a Redis-backed store ([`crate::Store::redis_with`]).
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
    /// again, should an invalidation event have been missed. Events normally
    /// invalidate within milliseconds; this bounds the damage of a lost one.
    /// Default 1 s.
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
}

impl Pool {
    pub(crate) fn new(url: &str, cap: usize, timeout: Duration) -> Result<Pool, Error> {
        let client = Client::open(url).map_err(|e| Error::Config(format!("bad Redis URL: {e}")))?;
        Ok(Pool { client, idle: Mutex::new(Vec::new()), cap, timeout })
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
pub(crate) struct Loaded {
    /// (serial, prune-after ms, id, secret hash) of every revocation entry.
    pub(crate) revoked: Vec<Revoked>,
    /// (user, not-before ms).
    pub(crate) not_before: Vec<(String, u64)>,
}

/// What `load` reads in one pipeline: the revoked hash, the revoked zset
/// (serial, prune-after) and the not-before hash.
type LoadReply = (Vec<(u64, Vec<u8>)>, Vec<(u64, u64)>, Vec<(String, u64)>);

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
pub(crate) fn load(pool: &Pool, keys: &Keys) -> Result<Loaded, Error> {
    let (rv, rvt, nb): LoadReply = pool.with(|c| {
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
    Ok(Loaded { revoked, not_before: nb })
}

/// `id ‖ secret hash` (48 bytes) as stored in the revoked hash and events.
pub(crate) fn split_id_hash(v: &[u8]) -> Option<(SessionId, SecretHash)> {
    let id: [u8; 16] = v.get(..16)?.try_into().ok()?;
    let sh: [u8; 32] = v.get(16..48)?.try_into().ok()?;
    (v.len() == 48).then_some((SessionId::from_bytes(id), SecretHash(sh)))
}

/// A stored session as read for a compare-and-swap.
struct Stored {
    /// The sealed record bytes, as compared by the script.
    r: Vec<u8>,
    /// The sealed family bytes, if any.
    f: Option<Vec<u8>>,
    rec: Record,
}

/// What a compare-and-swap writes.
struct Cas<'a> {
    expect_r: &'a [u8],
    expect_f: Option<&'a [u8]>,
    delete: bool,
    new_r: Option<Vec<u8>>,
    /// New sealed families (`None`: keep).
    new_f: Option<Vec<u8>>,
    ttl_ms: Option<u64>,
    new_serial: Option<(u64, SecretHash)>,
    prune_after: u64,
    revoke_old: bool,
    event: Option<Vec<u8>>,
    /// A new score of the session in its user index (its absolute deadline,
    /// when an update moved it).
    user_score: Option<u64>,
}

/// The answer of the CAS script.
enum CasResult {
    Done,
    Gone,
    Changed,
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
    shared: Arc<Shared>,
    touch_tx: Mutex<Option<Sender<Queued>>>,
    toucher: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    pool: Arc<Pool>,
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
    /// those recorded in Redis (recording them on first use) and the server's
    /// fsync policy.
    pub(crate) fn open(
        pool: Arc<Pool>,
        keys: Keys,
        server_key: &[u8; 32],
        keyring: &crate::Keyring,
        need_fsync_always: bool,
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
        let shared = Arc::new(Shared {
            pool,
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

    /// Reserves `n` serials shared by every node; returns the first.
    pub(crate) fn reserve(pool: &Pool, keys: &Keys, n: u64) -> Result<u64, Error> {
        let end: u64 = pool.with(|c| redis::cmd("HINCRBY").arg(&keys.meta).arg("serial").arg(n).query(c))?;
        Ok(end - n + 1)
    }
}

fn touch_loop(shared: &Shared, rx: &Receiver<Queued>) {
    for q in rx {
        match q {
            // A failed touch only shortens the session (fail closed): ignore errors.
            Queued::Touch(id, last_seen) => {
                let _ = shared.apply(Op::Touch { id, last_seen });
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

impl Shared {
    fn read(&self, id: &SessionId) -> Result<Option<Stored>, Error> {
        let mut p = Packed::new();
        p.cmd(&["HMGET".into(), self.keys.session(id), "r".into(), "num".into(), "f".into()]);
        let (r, num, f): (Option<Vec<u8>>, Option<u64>, Option<Vec<u8>>) = self.pool.with(|c| p.query(c))?;
        let (Some(r), Some(num)) = (r, num) else { return Ok(None) };
        let rec = decode_session(&self.mac, *id, num, &r).inspect_err(|_| {
            self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        })?;
        Ok(Some(Stored { r, f, rec }))
    }

    fn cas(&self, id: &SessionId, user: &str, c: &Cas<'_>) -> Result<CasResult, Error> {
        let ttl = c.ttl_ms.map(Arg::U).unwrap_or(Arg::B(b""));
        let (serial, hash) = match &c.new_serial {
            Some((serial, sh)) => (Arg::U(*serial), Arg::B(sh.0.as_slice())),
            None => (Arg::B(b""), Arg::B(b"")),
        };
        let mut p = Packed::new();
        p.evalsha(
            &self.scripts.cas,
            &[
                self.keys.session(id),
                self.keys.user(user),
                self.keys.revoked().into(),
                self.keys.revoked_times().into(),
                self.keys.events().into(),
            ],
            &[
                Arg::B(c.expect_r),
                Arg::B(c.expect_f.unwrap_or(b"")),
                Arg::B(if c.delete { b"del" } else { b"put" }),
                Arg::B(c.new_r.as_deref().unwrap_or(b"")),
                Arg::B(c.new_f.as_deref().unwrap_or(b"")),
                ttl,
                serial,
                hash,
                Arg::U(c.prune_after),
                Arg::Hex("", id.as_bytes()),
                Arg::B(if c.revoke_old { b"1" } else { b"0" }),
                Arg::B(c.event.as_deref().unwrap_or(b"")),
                c.user_score.map(Arg::U).unwrap_or(Arg::B(b"")),
            ],
        );
        let v: Vec<Value> = self.pool.with(|con| p.invoke(con, &self.scripts.cas))?;
        match v.first() {
            Some(Value::Int(1)) => Ok(CasResult::Done),
            Some(Value::Int(0)) => Ok(CasResult::Gone),
            _ => Ok(CasResult::Changed),
        }
    }

    /// Reads, decides with `plan`, and compare-and-swaps until it lands.
    fn cas_loop(
        &self,
        id: &SessionId,
        mut plan: impl FnMut(&Stored) -> Result<Step, Failure>,
    ) -> Result<Outcome, Failure> {
        for _ in 0..CAS_TRIES {
            let Some(stored) = self.read(id)? else { return Err(Error::NotFound.into()) };
            let (cas, done) = match plan(&stored)? {
                Step::Write(cas, done) => (cas, done),
                Step::Answer(out) => return Ok(out),
            };
            let cas = Cas { expect_r: &stored.r, expect_f: stored.f.as_deref(), ..cas };
            match self.cas(id, &stored.rec.user, &cas) {
                Ok(CasResult::Done) => return Ok(done),
                Ok(CasResult::Gone) => return Err(Error::NotFound.into()),
                Ok(CasResult::Changed) => {}
                // The script may or may not have run: report what it decided
                // to revoke as unsaved, so this process refuses it anyway.
                Err(error) => return Err(Failure { error, unsaved: done.revoked().to_vec() }),
            }
        }
        Err(Error::Busy.into())
    }

    fn seal_families(&self, n: u64, bytes: Vec<u8>) -> Vec<u8> {
        self.mac.seal(RowTable::Refresh, &n.to_le_bytes(), bytes)
    }

    fn apply(&self, op: Op) -> Result<Outcome, Failure> {
        match op {
            Op::Create(rec) => {
                // Unconditional writes: a MULTI/EXEC transaction (atomic, one
                // round trip) costs the server less than a script. The id is
                // 128 random bits, so it is never taken.
                let key = self.keys.session(&rec.id);
                let user = self.keys.user(&rec.user);
                let sealed = seal_session(&self.mac, &rec);
                // Members are scored by their session's absolute deadline
                // (kept current by updates that move it). Trimmed here so an
                // index only ever written to (a placeholder user of the
                // framework adapters) stays bounded: only members past their
                // deadline by `USER_INDEX_TRIM_MARGIN_MS`, so a node whose
                // clock runs ahead never drops a session another node still
                // serves (revoke_user would miss it).
                let trim_below = format!("({}", rec.created_at.saturating_sub(USER_INDEX_TRIM_MARGIN_MS));
                let mut p = Packed::transaction();
                p.cmd(&[
                    "HSET".into(),
                    key,
                    "r".into(),
                    Arg::B(&sealed),
                    "num".into(),
                    Arg::U(rec.number),
                    "ser".into(),
                    Arg::U(rec.serial),
                    "sh".into(),
                    Arg::B(rec.secret_hash.0.as_slice()),
                    "id".into(),
                    Arg::B(rec.id.as_bytes().as_slice()),
                    "u".into(),
                    rec.user.as_ref().into(),
                ])
                .cmd(&["PEXPIRE".into(), key, Arg::U(ttl(rec.deadline(rec.last_seen), rec.last_seen))])
                .cmd(&["ZADD".into(), user, Arg::U(rec.expires_at), Arg::Hex("", rec.id.as_bytes())])
                .cmd(&["ZREMRANGEBYSCORE".into(), user, "-inf".into(), trim_below.as_str().into()]);
                self.pool.with(|c| p.exec(c))?;
                Ok(Outcome::Done)
            }
            Op::Touch { id, last_seen } => {
                let mut wrote = false;
                let out = self.cas_loop(&id, |s| {
                    if last_seen <= s.rec.last_seen {
                        wrote = false;
                        return Ok(Step::Answer(Outcome::Done));
                    }
                    let mut new = s.rec.clone();
                    new.last_seen = last_seen;
                    let cas = Cas {
                        new_r: Some(seal_session(&self.mac, &new).to_vec()),
                        ttl_ms: Some(ttl(new.deadline(last_seen), last_seen)),
                        ..Cas::keep()
                    };
                    wrote = true;
                    Ok(Step::Write(cas, Outcome::Done))
                });
                if wrote && out.is_ok() {
                    self.counters.touches.fetch_add(1, Ordering::Relaxed);
                }
                match out {
                    Err(Failure { error: Error::NotFound, .. }) => Ok(Outcome::Done),
                    other => other,
                }
            }
            Op::UpdateData { id, expected, data, expires } => self.cas_loop(&id, |s| {
                if expected.is_some_and(|v| v != s.rec.version) {
                    return Err(Error::Conflict { current: s.rec.version }.into());
                }
                let mut new = s.rec.clone();
                new.version += 1;
                if let Some(data) = &data {
                    new.data = data.clone();
                }
                if let Some(e) = expires {
                    new.expires_at = e.at;
                }
                let cas = Cas {
                    new_r: Some(seal_session(&self.mac, &new).to_vec()),
                    ttl_ms: expires.map(|e| ttl(new.deadline(new.last_seen), e.now)),
                    user_score: expires.map(|e| e.at),
                    event: Some(changed_event(&id)),
                    ..Cas::keep()
                };
                Ok(Step::Write(cas, Outcome::Updated(Arc::new(new))))
            }),
            Op::Rotate { id, expected, serial, secret_hash, now, prune_after } => self.cas_loop(&id, |s| {
                if !s.rec.secret_hash.matches(&expected) {
                    return Err(Error::NotFound.into()); // a concurrent rotate won
                }
                let new = s.rec.rotated(serial, secret_hash, now);
                let new_f = match &s.f {
                    Some(row) => {
                        let mut fam = decode_family(&self.mac, s.rec.number, row)?;
                        fam.drop_all();
                        Some(self.seal_families(s.rec.number, fam.encode()))
                    }
                    None => None,
                };
                let cas = Cas {
                    new_r: Some(seal_session(&self.mac, &new).to_vec()),
                    new_f,
                    ttl_ms: Some(ttl(new.deadline(now), now)),
                    new_serial: Some((serial, secret_hash)),
                    prune_after,
                    revoke_old: true,
                    event: Some(changed_event(&id)),
                    ..Cas::keep()
                };
                Ok(Step::Write(cas, Outcome::Rotated { rec: Arc::new(new), old: Revoked::of(&s.rec, prune_after) }))
            }),
            Op::Revoke { id, prune_after } => {
                let mut p = Packed::new();
                p.evalsha(
                    &self.scripts.revoke,
                    &[
                        self.keys.session(&id),
                        self.keys.revoked().into(),
                        self.keys.revoked_times().into(),
                        self.keys.events().into(),
                    ],
                    &[self.keys.user_prefix.as_str().into(), Arg::U(prune_after), Arg::Hex("", id.as_bytes())],
                );
                let v: Vec<Vec<u8>> = self.pool.with(|c| p.invoke(c, &self.scripts.revoke))?;
                let serial = v.first().and_then(|b| std::str::from_utf8(b).ok()).and_then(|s| s.parse().ok());
                let hash = v.get(1).and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok());
                match (serial, hash) {
                    (Some(serial), Some(h)) => {
                        Ok(Outcome::Revoked(vec![Revoked { serial, id, secret_hash: SecretHash(h), prune_after }]))
                    }
                    _ => Ok(Outcome::Revoked(Vec::new())),
                }
            }
            Op::RevokeUser { user, except, prune_after } => {
                Ok(Outcome::Revoked(self.revoke_user(&user, except, prune_after, None)?))
            }
            Op::LogoutEverywhere { user, at, prune_after } => {
                Ok(Outcome::Revoked(self.revoke_user(&user, None, prune_after, Some(at))?))
            }
            Op::Family { id, prune_after, f } => self.cas_loop(&id, |s| {
                let n = s.rec.number;
                let opened = match &s.f {
                    Some(row) => Some(
                        self.mac
                            .open(RowTable::Refresh, &n.to_le_bytes(), row)
                            .map_err(|e| Error::from(StorageError::with_source(StorageErrorKind::Corrupt, e)))?
                            .to_vec(),
                    ),
                    None => None,
                };
                let FamilyChange { write, revoke_session, reply } = f(opened.as_deref());
                if revoke_session {
                    let revoked = Revoked::of(&s.rec, prune_after);
                    let cas = Cas { delete: true, prune_after, ..Cas::keep() };
                    return Ok(Step::Write(cas, Outcome::Family { reply, revoked: Some(revoked) }));
                }
                match write {
                    Some(bytes) => {
                        let cas = Cas { new_f: Some(self.seal_families(n, bytes)), ..Cas::keep() };
                        Ok(Step::Write(cas, Outcome::Family { reply, revoked: None }))
                    }
                    None => Ok(Step::Answer(Outcome::Family { reply, revoked: None })),
                }
            }),
            // Redis expires sessions itself (`PEXPIRE`): the sweeper finds none.
            Op::Sweep { .. } => Ok(Outcome::Swept(Swept::default())),
            Op::PruneRevoked { entries, not_before } => {
                let mut args: Vec<Arg<'_>> = Vec::with_capacity(1 + entries.len() + 2 * not_before.len());
                args.push(Arg::U(entries.len() as u64));
                args.extend(entries.iter().map(|(serial, _)| Arg::U(*serial)));
                for (user, at) in &not_before {
                    args.push(user.as_str().into());
                    args.push(Arg::U(*at));
                }
                let mut p = Packed::new();
                p.evalsha(
                    &self.scripts.prune,
                    &[self.keys.revoked().into(), self.keys.revoked_times().into(), self.keys.not_before().into()],
                    &args,
                );
                let users: Vec<String> = self.pool.with(|c| p.invoke(c, &self.scripts.prune))?;
                let pruned = not_before.into_iter().filter(|(u, _)| users.contains(u)).collect();
                Ok(Outcome::Pruned(entries, pruned))
            }
            Op::Flush => Ok(Outcome::Done),
        }
    }

    fn revoke_user(
        &self,
        user: &str,
        except: Option<SessionId>,
        prune_after: u64,
        not_before: Option<u64>,
    ) -> Result<Vec<Revoked>, Failure> {
        let mut p = Packed::new();
        p.evalsha(
            &self.scripts.revoke_user,
            &[
                self.keys.user(user),
                self.keys.revoked().into(),
                self.keys.revoked_times().into(),
                self.keys.events().into(),
                self.keys.not_before().into(),
            ],
            &[
                self.keys.session_prefix.as_str().into(),
                except.as_ref().map_or(Arg::B(b""), |id| Arg::Hex("", id.as_bytes())),
                Arg::U(prune_after),
                if not_before.is_some() { user.into() } else { "".into() },
                Arg::U(not_before.unwrap_or(0)),
            ],
        );
        let flat: Vec<Vec<u8>> = self.pool.with(|c| p.invoke(c, &self.scripts.revoke_user))?;
        let mut out = Vec::with_capacity(flat.len() / 3);
        for t in flat.chunks_exact(3) {
            let serial = std::str::from_utf8(&t[0]).ok().and_then(|s| s.parse().ok());
            let mut v = t[1].clone();
            v.extend_from_slice(&t[2]);
            if let (Some(serial), Some((id, secret_hash))) = (serial, split_id_hash(&v)) {
                out.push(Revoked { serial, id, secret_hash, prune_after });
            }
        }
        Ok(out)
    }
}

/// A step of a compare-and-swap loop: write (and answer this if it lands),
/// or answer without writing.
enum Step {
    Write(Cas<'static>, Outcome),
    Answer(Outcome),
}

impl Cas<'static> {
    /// A `put` that changes nothing yet; expected values are filled in by the loop.
    fn keep() -> Cas<'static> {
        Cas {
            expect_r: b"*",
            expect_f: Some(b"*"),
            delete: false,
            new_r: None,
            new_f: None,
            ttl_ms: None,
            new_serial: None,
            prune_after: 0,
            revoke_old: false,
            event: None,
            user_score: None,
        }
    }
}

/// `U` ‖ id: a session changed (data or secret); other nodes drop their copy.
fn changed_event(id: &SessionId) -> Vec<u8> {
    let mut v = Vec::with_capacity(17);
    v.push(b'U');
    v.extend_from_slice(id.as_bytes());
    v
}

/// Milliseconds from `now` to `deadline`, at least 1 (Redis refuses 0).
/// How long past its deadline a member stays in a user index before a create
/// trims it: far beyond any clock skew between nodes.
const USER_INDEX_TRIM_MARGIN_MS: u64 = 24 * 3600 * 1000;

fn ttl(deadline: u64, now: u64) -> u64 {
    deadline.saturating_sub(now).max(1)
}

impl Backend for RedisBackend {
    fn get(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        // A pending touch is looked up before and after the read: one applied
        // (and forgotten) while the read was on its way may be missing from both
        // the row read and the map after it, but then it was in the map before.
        let pending = || self.shared.pending.lock().get(id).copied();
        let before = pending();
        let Some(mut rec) = self.shared.read(id)?.map(|s| s.rec) else { return Ok(None) };
        if let Some(t) = before.max(pending()) {
            if t > rec.last_seen {
                rec.last_seen = t;
                rec.live.last_seen.fetch_max(t, Ordering::Relaxed);
                rec.live.persisted.fetch_max(t, Ordering::Relaxed);
            }
        }
        Ok(Some(rec))
    }

    fn shared(&self) -> bool {
        true
    }

    fn list_user(&self, user: &str) -> Result<Vec<Record>, Error> {
        let sh = &self.shared;
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
        let out = self.shared.apply(op);
        if out.is_ok() {
            self.shared.counters.writes.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    fn offer(&self, op: Op) {
        if let Op::Touch { id, last_seen } = op {
            if let Some(tx) = &*self.touch_tx.lock() {
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

    fn stats(&self, s: &mut crate::Stats) {
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
