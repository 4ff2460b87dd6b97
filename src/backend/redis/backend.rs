//! The Redis backend itself: its open checks, reads, the touch thread, and
//! the `Backend` impl (the writes are in `ops`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use super::instance::Instance;
use super::keys::{Keys, LAYOUT_FORMAT, hex};
use super::pool::{Pool, record_once};
use super::resp::{Arg, Packed};
use super::scripts::Scripts;
use super::state::record_horizon;
use crate::backend::coherence::Coherence;
use crate::backend::sealed::mac::RowMac;
use crate::backend::sealed::rows::{decode_family, decode_session};
use crate::backend::{Backend, Failure, Op, Outcome, Wait};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::refresh::Families;
use crate::session::Record;
use crate::token::SessionId;

/// How many times a compare-and-swap is retried after losing to another
/// writer before the op reports [`Error::Busy`].
pub(super) const CAS_TRIES: usize = 64;

/// One session row of a listing: `r`, `num`, `id`.
type ListedRow = (Option<Vec<u8>>, Option<u64>, Option<Vec<u8>>);

/// What the touch thread receives: a touch, or a barrier answered once every
/// touch queued before it was applied.
enum Queued {
    Touch(SessionId, u64),
    Barrier(Sender<()>),
}

/// Counters of the backend.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) touches: AtomicU64,
    dropped_touches: AtomicU64,
    pub(super) corrupt: AtomicU64,
    writes: AtomicU64,
}

pub(crate) struct RedisBackend {
    shared: Arc<Core>,
    touch_tx: Mutex<Option<Sender<Queued>>>,
    toucher: Mutex<Option<JoinHandle<()>>>,
}

pub(super) struct Core {
    pub(super) pool: Arc<Pool>,
    /// This node's sync state and clock (wiped: every call is refused).
    coherence: Arc<Coherence>,
    instance: Arc<Instance>,
    pub(super) keys: Keys,
    pub(super) mac: RowMac,
    pub(super) scripts: Scripts,
    pub(super) counters: Counters,
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
