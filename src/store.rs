//! [`Store`]: the facade. Every public operation starts here and delegates to the
//! token parser, the session table (cache, revocation state and backend), the
//! refresh policy and the keyring.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::backend::coherence::Coherence;
use crate::backend::redb::{Redb, Tuning};
use crate::backend::{Backend, FamilyFn, LostHook, Op, Outcome, Wait};
use crate::cache::Cache;
use crate::clock::{duration_millis, to_millis};
use crate::config::{Config, Durability};
use crate::db::journal::Journal;
use crate::db::{Db, LegacyTokens, Loaded};
use crate::error::{Error, InputError, JwtError, Malformed};
use crate::events::{Event, RevokeReason};
use crate::jwt::{AccessClaims, Keyring, Policy, RESERVED_CLAIMS};
use crate::keys::{Derived, default_keyring};
use crate::refresh::{FamilyReply, Verdict, unpack};
use crate::revocation::Revocation;
use crate::session::{NewSession, Record, RecordParts, Session, check_user};
use crate::sweeper::{SweepReport, Sweeper};
use crate::table::SessionTable;
use crate::token::{REFRESH_PREFIX, RefreshToken, SESSION_PREFIX, looks_like_jwt};
use crate::token::{SecretHash, SessionId, SessionToken, TagState};

/// Which of a user's sessions [`Store::revoke_user`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Every session of the user.
    All,
    /// Every session except this one ("sign out other devices").
    Others(SessionId),
}

/// A newly issued session: the token to hand to the client, and the session.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The bearer token. Send it to the client once (e.g. in a `Secure; HttpOnly` cookie);
    /// it cannot be recovered from the store.
    pub token: SessionToken,
    /// The stored session.
    pub session: Session,
}

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

/// What the shared layers load from a backend at open.
struct Boot<'a> {
    /// The next session serial to hand out.
    next_serial: u64,
    /// Which pre-tag session tokens are still accepted.
    legacy: LegacyTokens,
    /// (serial, prune-after ms, session id) of every revocation entry.
    revoked: &'a [(u64, u64, SessionId)],
    /// (user, not-before ms).
    not_before: Vec<(String, u64)>,
}

/// Where session serials come from: this process's counter (the only writer
/// of its database), or blocks reserved from a backend shared by several nodes.
enum Serials {
    Local(AtomicU64),
    Blocks {
        blocks: parking_lot::Mutex<Blocks>,
        /// Reserves this many serials; returns the first.
        reserve: Box<dyn Fn(u64) -> Result<u64, Error> + Send + Sync>,
    },
}

/// The serial blocks a node holds: the current one and, once half of it is
/// used, the next (reserved by one caller outside the lock, so the others
/// never wait for that round trip).
#[derive(Default)]
struct Blocks {
    /// The next serial of the current block, and the block's end (exclusive).
    current: (u64, u64),
    /// The next block, reserved ahead.
    spare: Option<u64>,
    /// A caller is reserving the spare.
    reserving: bool,
}

/// Serials a node reserves from a shared backend at a time (one round trip per block).
const SERIAL_BLOCK: u64 = 1024;

impl Serials {
    fn take(&self) -> Result<u64, Error> {
        match self {
            Serials::Local(n) => Ok(n.fetch_add(1, Ordering::Relaxed)),
            Serials::Blocks { blocks, reserve } => {
                let mut b = blocks.lock();
                if b.current.0 >= b.current.1 {
                    let first = match b.spare.take() {
                        Some(first) => first,
                        // None ahead (the first take, or a reservation still
                        // on its way or failed): reserve one now, under the lock.
                        None => reserve(SERIAL_BLOCK)?,
                    };
                    b.current = (first, first + SERIAL_BLOCK);
                }
                let serial = b.current.0;
                b.current.0 += 1;
                let low = b.current.1 - b.current.0 < SERIAL_BLOCK / 2;
                if low && b.spare.is_none() && !b.reserving {
                    b.reserving = true;
                    drop(b);
                    // A failed reservation is retried by a later take (under
                    // the lock if the current block runs out first).
                    let next = reserve(SERIAL_BLOCK);
                    let mut b = blocks.lock();
                    b.reserving = false;
                    if let Ok(first) = next {
                        b.spare = Some(first);
                    }
                }
                Ok(serial)
            }
        }
    }
}

/// What a backend shared by several nodes adds to the shared layers: serials
/// reserved in blocks, and a follower thread that keeps this node's cache and
/// revocation bitmap coherent with the other nodes' writes.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
struct SharedTier {
    reserve: Box<dyn Fn(u64) -> Result<u64, Error> + Send + Sync>,
    coherence: Arc<Coherence>,
    follow: Follow,
}

/// Starts a shared backend's follower thread over this store's cache and bitmap.
type Follow = Box<dyn FnOnce(Arc<Cache>, Arc<Revocation>) -> Result<std::thread::JoinHandle<()>, Error>>;

/// Whom an access token is minted for: the session's user, serial and deadline.
struct Holder<'a> {
    id: SessionId,
    user: &'a str,
    serial: u64,
    expires_at: u64,
}

/// A parsed session token whose tag checked out.
struct Checked {
    tok: SessionToken,
    /// Carries the pre-tag checksum (accepted only for sessions from before the tag).
    legacy: bool,
}

/// The session and token store. Cheap to clone; all clones share one store.
///
/// Dropping the last clone closes it (flushes and joins the writer thread).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    table: SessionTable,
    keyring: Keyring,
    derived: Derived,
    policy: Policy,
    serials: Serials,
    /// For a backend shared by several nodes: whether cached entries may answer.
    coherence: Option<Arc<Coherence>>,
    /// The follower thread of a shared backend (joined at drop).
    follower: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Which pre-tag session tokens this store still accepts.
    legacy: LegacyTokens,
    closed: AtomicBool,
    sweeper: Option<Sweeper>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(s) = &self.sweeper {
            s.stop();
        }
        if let Some(c) = &self.coherence {
            c.stop();
        }
        if let Some(h) = self.follower.lock().take() {
            let _ = h.join();
        }
        let _ = self.table.backend.close();
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in the redb file at `path`.
    ///
    /// # Errors
    /// [`Error::Storage`] if the file cannot be opened, is not a cloakroom
    /// database, is corrupt, was written by a newer format, or is already open.
    /// The file is never modified in those cases.
    ///
    /// Access-token keys: the config's keyring if set; else the key file
    /// `<path>.keys` if present (see [`Keyring::save`]); else one HS256 key
    /// derived from the server key.
    ///
    /// The server key file `<path>.key` (unless the config names a key) is read
    /// only after the database opened and was recognised, and created only
    /// together with a new database: a failed open leaves no file behind, and an
    /// existing database without its key file is refused with
    /// [`Error::ServerKeyMissing`].
    pub fn open(path: impl AsRef<Path>, mut config: Config) -> Result<Store, Error> {
        let path = path.as_ref();
        let key_present = || config.server_key.check_existing(path);
        let pending = Db::open(path, config.db_cache_bytes, config.scratch, &key_present)?;
        let created = pending.owns_file;
        let key = (|| {
            let key = config.server_key.resolve(Some((path, pending.state)))?;
            let keys = Self::keys_path(path);
            if config.keyring.is_none() && keys.exists() {
                config.keyring = Some(Keyring::load(&keys)?);
            }
            Ok(key)
        })();
        let opened = key.and_then(|key| {
            let now = to_millis(config.clock.now());
            pending.finish(&key, now).map(|done| (done, key))
        });
        match opened {
            Ok((done, key)) => Self::start(done, config, &key),
            Err(e) => {
                if created {
                    // This open made the file; leave nothing behind.
                    let _ = std::fs::remove_file(path);
                    for seg in crate::db::journal::segment_paths(path) {
                        let _ = std::fs::remove_file(seg);
                    }
                }
                Err(e)
            }
        }
    }

    /// `<db>.keys`: the access-token key file `Store::open` loads by default.
    #[must_use]
    pub fn keys_path(db: &Path) -> std::path::PathBuf {
        crate::keys::keys_path(db)
    }

    /// `<db>.journal` and `<db>.journal.1`: the journal segments beside the
    /// database. They are part of the database: copy them with it (see the
    /// README on backups) and never delete them while they hold records.
    #[must_use]
    pub fn journal_paths(db: &Path) -> [std::path::PathBuf; 2] {
        crate::db::journal::segment_paths(db)
    }

    /// `<db>.key`: the server key file `Store::open` reads (or creates with a new
    /// database) when the config sets no server key.
    #[must_use]
    pub fn server_key_path(db: &Path) -> std::path::PathBuf {
        crate::keys::key_path(db)
    }

    /// A store backed by memory only (tests, demos). Nothing survives the process.
    ///
    /// # Errors
    /// [`Error::Storage`] if the in-memory database cannot be initialised.
    pub fn in_memory(config: Config) -> Result<Store, Error> {
        let key = config.server_key.resolve(None)?;
        let done = Db::in_memory()?.finish(&key, to_millis(config.clock.now()))?;
        Self::start(done, config, &key)
    }

    /// A store whose sessions live in a Redis (or Valkey) server shared by
    /// several nodes of an app, with [`RedisOptions`](crate::RedisOptions)'
    /// defaults. See [`Store::redis_with`].
    ///
    /// # Errors
    /// As [`Store::redis_with`].
    #[cfg(feature = "redis")]
    pub fn redis(url: &str, config: Config) -> Result<Store, Error> {
        Self::redis_with(url, crate::RedisOptions::default(), config)
    }

    /// A store whose sessions live in a Redis (or Valkey, Redis ≥ 7.0) server
    /// at `url` (`redis://host:port/db`), shared by every node that opens the
    /// same server and prefix. The API, tokens and guarantees are those of
    /// [`Store::open`]; each node keeps its own cache and revocation bitmap in
    /// front of Redis, kept coherent by the server's pub/sub (see the README's
    /// "Scaling out" and `docs/architecture.md`).
    ///
    /// Every node must use the same server key ([`ConfigBuilder::server_key`](crate::ConfigBuilder::server_key)
    /// or `server_key_env`) and the same access-token keyring: the first open
    /// records a check value derived from the key in Redis, and a node with
    /// another key is refused.
    ///
    /// # Errors
    /// [`Error::Config`] without a configured server key, for a bad URL, or
    /// when `Durability::Immediate` is asked of a server that does not fsync
    /// every write (see [`RedisOptions::require_fsync_always`](crate::RedisOptions::require_fsync_always));
    /// [`Error::Storage`] of kind `Unavailable` if the server cannot be reached,
    /// or `KeyMismatch` if the data was written under another server key.
    #[cfg(feature = "redis")]
    pub fn redis_with(url: &str, options: crate::RedisOptions, config: Config) -> Result<Store, Error> {
        use crate::backend::redis::{Keys, Pool, RedisBackend, load, sync};
        if matches!(config.server_key, crate::keys::ServerKey::Default | crate::keys::ServerKey::ReplaceLost) {
            return Err(Error::Config(
                "a Redis-backed store needs the same server key on every node: set it with \
                 ConfigBuilder::server_key or server_key_env"
                    .into(),
            ));
        }
        let key = config.server_key.resolve(None)?;
        let pool = Arc::new(Pool::new(url, options.pool_size, options.timeout)?);
        let keys = Keys::new(&options.prefix);
        let fsync = options.require_fsync_always && config.durability == Durability::Immediate;
        let keyring = match &config.keyring {
            Some(k) => k.clone(),
            None => default_keyring(&Derived::new(&key))?,
        };
        let backend = RedisBackend::open(Arc::clone(&pool), keys.clone(), &key, &keyring, fsync)?;
        let loaded = load(&pool, &keys)?;
        // The revocation state is applied by `sync::catch_up` below, as the
        // follower does on every (re)connect.
        let boot = Boot {
            next_serial: 1,
            legacy: LegacyTokens { tagged_since: 0, until: 0 },
            revoked: &[],
            not_before: Vec::new(),
        };
        let coherence = Arc::new(Coherence::new(options.staleness));
        let (reserve_pool, reserve_keys) = (Arc::clone(&pool), keys.clone());
        let follow_coherence = Arc::clone(&coherence);
        let tier = SharedTier {
            reserve: Box::new(move |n| RedisBackend::reserve(&reserve_pool, &reserve_keys, n)),
            coherence,
            follow: Box::new(move |cache, revocation| {
                sync::start(pool, keys, sync::Targets { cache, revocation }, follow_coherence)
            }),
        };
        let store = Self::assemble(config, &key, boot, |_lost| Ok(Box::new(backend) as Box<dyn Backend>), Some(tier))?;
        // Before the first call (the follower catches up again when it connects).
        sync::catch_up(&store.inner.table.revocation, &loaded);
        Ok(store)
    }

    /// Opens a store on a custom redb storage backend (fault injection in tests).
    ///
    /// `make` builds the database backend: once now, and again whenever the
    /// store reopens the database after an I/O failure (so it must return a
    /// backend over the same underlying storage). `journal` holds the journal's
    /// two segments. Reopening a store on the same storage replays its journal.
    ///
    /// # Errors
    /// As [`Store::open`].
    #[cfg(feature = "test-util")]
    pub fn open_with_backend<B: redb::StorageBackend, J: redb::StorageBackend>(
        make: impl Fn() -> B + Send + Sync + 'static,
        journal: [J; 2],
        config: Config,
    ) -> Result<Store, Error> {
        let key = config.server_key.resolve(None)?;
        let done = Db::with_backend(make, journal)?.finish(&key, to_millis(config.clock.now()))?;
        Self::start(done, config, &key)
    }

    /// Starts a store on an opened redb database.
    fn start(
        (db, loaded, journal): (Db, Loaded, Journal),
        config: Config,
        server_key: &[u8; 32],
    ) -> Result<Store, Error> {
        let tuning = Tuning {
            flush_interval: config.flush_interval,
            checkpoint_interval: config.checkpoint_interval,
            queue: config.write_queue,
        };
        let boot = Boot {
            next_serial: loaded.next_serial,
            legacy: loaded.legacy,
            revoked: &loaded.revoked,
            not_before: loaded.not_before.clone(),
        };
        Self::assemble(
            config,
            server_key,
            boot,
            |lost| Ok(Box::new(Redb::start(db, &loaded, journal, lost, tuning)?) as Box<dyn Backend>),
            None,
        )
    }

    /// Builds the shared layers (keys, keyring, revocation state, cache, session
    /// table, sweeper) over the backend `make` returns; `make` gets the hook
    /// through which the backend reports eventual creates it lost.
    fn assemble(
        config: Config,
        server_key: &[u8; 32],
        boot: Boot<'_>,
        make: impl FnOnce(LostHook) -> Result<Box<dyn Backend>, Error>,
        tier: Option<SharedTier>,
    ) -> Result<Store, Error> {
        let derived = Derived::new(server_key);
        let keyring = match &config.keyring {
            Some(k) => k.clone(),
            None => default_keyring(&derived)?,
        };
        let policy = Policy::new(config.issuer.clone(), config.audience.clone(), config.leeway);
        let revocation = Arc::new(Revocation::load(boot.revoked, boot.not_before));
        let cache = Arc::new(Cache::new(config.cache_capacity, config.cache_shards));
        revocation.set_marker(crate::cache::revocation_marker(Arc::clone(&cache)));
        let lost_cache = Arc::clone(&cache);
        let lost: LostHook = Arc::new(move |ids: Vec<SessionId>| ids.iter().for_each(|id| lost_cache.remove(id)));
        let backend = make(lost)?;
        let (serials, coherence, follower) = match tier {
            None => (Serials::Local(AtomicU64::new(boot.next_serial.max(1))), None, None),
            Some(t) => {
                let follower = (t.follow)(Arc::clone(&cache), Arc::clone(&revocation))?;
                let serials = Serials::Blocks { blocks: parking_lot::Mutex::default(), reserve: t.reserve };
                (serials, Some(t.coherence), Some(follower))
            }
        };
        let table = SessionTable::new(cache, revocation, backend, config.touch_granularity, config.on_event.clone());
        let interval = config.sweep_interval;
        let inner = Arc::new_cyclic(|weak| Inner {
            table,
            keyring,
            derived,
            policy,
            serials,
            coherence,
            follower: parking_lot::Mutex::new(follower),
            legacy: boot.legacy,
            closed: AtomicBool::new(false),
            sweeper: interval.and_then(|every| {
                Sweeper::start(weak.clone(), every, |inner| {
                    let _ = Store { inner: Arc::clone(inner) }.sweep();
                })
            }),
            config,
        });
        Ok(Store { inner })
    }

    fn live(&self) -> Result<&Inner, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(&self.inner)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        to_millis(self.inner.config.clock.now())
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Creates a session and returns its token.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty or over-long user id, over-large data or
    /// metadata, or a zero TTL; [`Error::Storage`] if the write failed (nothing
    /// was stored); [`Error::Busy`] if the write queue stayed full.
    pub fn create(&self, new: NewSession) -> Result<Issued, Error> {
        self.create_with(new, SessionToken::generate)
    }

    /// Creates a session under the token `token` makes from the store's tag
    /// key (a fresh random one for [`Store::create`], one derived from a
    /// framework's session id for the adapters).
    pub(crate) fn create_with(
        &self,
        new: NewSession,
        token: impl FnOnce(&crate::token::TagKey) -> Result<SessionToken, Error>,
    ) -> Result<Issued, Error> {
        let inner = self.live()?;
        let cfg = &inner.config;
        check_user(&new.user)?;
        if new.data.len() > cfg.max_data_len {
            return Err(InputError::DataTooLarge { len: new.data.len(), max: cfg.max_data_len }.into());
        }
        new.meta.check()?;
        let ttl = new.ttl.unwrap_or(cfg.session_ttl);
        let idle = new.idle_timeout.unwrap_or(cfg.idle_timeout);
        check_lifetime("ttl", ttl)?;
        if let Some(i) = idle {
            check_lifetime("idle_timeout", i)?;
            if i <= cfg.touch_granularity {
                let granularity_ms = duration_millis(cfg.touch_granularity);
                return Err(InputError::IdleBelowGranularity { granularity_ms }.into());
            }
        }
        let token = token(&inner.derived.token_tag)?;
        let serial = inner.serials.take()?;
        let rec = Arc::new(
            RecordParts {
                id: token.id(),
                serial,
                secret_hash: token.secret_hash(),
                now: self.now_ms(),
                ttl,
                idle_timeout: idle,
            }
            .build(new),
        );
        let wait = match cfg.durability {
            Durability::Eventual => {
                self.inner.table.fill(Arc::clone(&rec));
                Wait::Queued
            }
            Durability::Immediate => Wait::Durable,
        };
        if let Err(e) = inner.table.submit(Op::Create(Arc::clone(&rec)), wait) {
            // Not stored: an Eventual create must not stay visible from the cache.
            inner.table.cache.remove(&rec.id);
            return Err(e);
        }
        if wait == Wait::Durable {
            // (An Eventual create is already cached; filling again here could
            // undo the writer's eviction of a create whose batch failed.)
            self.inner.table.fill(Arc::clone(&rec));
        }
        self.emit(|| Event::Created { session: rec.id, user: rec.user.to_string() });
        let last_seen = rec.last_seen;
        Ok(Issued { token, session: Session::of(&rec, last_seen) })
    }

    /// As [`Store::validate`], but always reads the session from the backend
    /// (and refreshes the cached copy) instead of answering from the cache.
    /// With a Redis-backed store this sees every other node's write that
    /// returned before it, whatever the staleness bound; use it where one
    /// stale answer matters (a payment, a password change). On a redb store
    /// it is an uncached validate.
    ///
    /// # Errors
    /// As [`Store::validate`].
    pub fn validate_strict(&self, token: &str) -> Result<Session, Error> {
        let tok = self.parse_session(token)?;
        self.live()?;
        self.check_stored(&tok, self.now_ms())
    }

    /// Checks a session token: format, secret, revocation, absolute deadline and
    /// idle timeout; then slides the idle deadline. The hot path: a cache hit
    /// takes no write lock and does no I/O.
    ///
    /// # Errors
    /// [`Error::Malformed`] (no lookup was made), [`Error::NotFound`],
    /// [`Error::Revoked`], [`Error::Expired`], or [`Error::Storage`] on a failed
    /// read after a cache miss.
    pub fn validate(&self, token: &str) -> Result<Session, Error> {
        let tok = self.parse_session(token)?;
        self.live()?;
        self.check(&tok)
    }

    /// As [`Store::validate`], for a token already in hand (an adapter's
    /// derived token: its tag is this store's by construction).
    #[cfg(any(feature = "tower-sessions", feature = "tower-sessions-015"))]
    pub(crate) fn validate_token(&self, tok: &SessionToken) -> Result<Session, Error> {
        self.live()?;
        self.check(&Checked { tok: tok.clone(), legacy: false })
    }

    /// The session token a framework's own session id stands for: id and
    /// secret are keyed hashes of it (see `SessionToken::derived`), so the
    /// backend never holds the framework's id.
    #[cfg(any(feature = "tower-sessions", feature = "tower-sessions-015"))]
    pub(crate) fn derived_token(&self, foreign: &[u8]) -> SessionToken {
        SessionToken::derived(foreign, &self.inner.derived.foreign, &self.inner.derived.token_tag)
    }

    /// Parses a session token and checks its tag: a token this store did not
    /// issue is refused here, before any lookup (one keyed hash).
    fn parse_session(&self, token: &str) -> Result<Checked, Error> {
        let tok = SessionToken::parse(token)?;
        let until = self.inner.legacy.until;
        // The clock is read only for a tag that failed, and only if pre-tag tokens exist.
        match tok.tag_state(&self.inner.derived.token_tag, || until > 0 && self.now_ms() < until) {
            TagState::Keyed => Ok(Checked { tok, legacy: false }),
            TagState::Legacy => Ok(Checked { tok, legacy: true }),
            TagState::Bad => Err(Malformed::BadChecksum.into()),
        }
    }

    /// Validates an already-parsed token (see [`Store::validate`]). A cache
    /// hit is checked on the cached record in place (lent by the cache, not
    /// cloned out), so it writes no memory shared with other validates.
    fn check(&self, checked: &Checked) -> Result<Session, Error> {
        let tok = &checked.tok;
        let (id, hash) = (tok.id(), tok.secret_hash());
        let now = self.now_ms();
        // A node of a shared backend answers from its cache only while it is
        // following the other nodes' writes, and only within the staleness bound.
        let fresh = |rec: &Record| {
            self.inner.coherence.as_ref().is_none_or(|c| c.fresh(rec.live.fetched.load(Ordering::Relaxed), now))
        };
        let cached =
            self.inner.table.cache.get_with(&id, |rec| fresh(rec).then(|| self.admit(rec, checked.legacy, &hash, now)));
        if let Some(Some(verdict)) = cached {
            return verdict;
        }
        self.check_stored(checked, now)
    }

    /// Validates against the backend, bypassing (and refilling) the cache.
    fn check_stored(&self, checked: &Checked, now: u64) -> Result<Session, Error> {
        let tok = &checked.tok;
        let (id, hash) = (tok.id(), tok.secret_hash());
        match self.inner.table.load(&id)? {
            Some(rec) => {
                rec.live.fetched.fetch_max(now, Ordering::Relaxed);
                self.admit(&rec, checked.legacy, &hash, now)
            }
            None => Err(self.revoked_or_unknown(&id, &hash)),
        }
    }

    /// `Revoked` only for the holder of the revoked secret; a guess, a stale
    /// copy of another secret or a bare id reads `NotFound` (no oracle).
    fn revoked_or_unknown(&self, id: &SessionId, hash: &SecretHash) -> Error {
        if self.inner.table.revocation.revoked_with_secret(id, hash) { Error::Revoked } else { Error::NotFound }
    }

    /// The checks of a found record: secret, revocation, deadlines; then the
    /// visit is remembered (sliding expiry, written once per granularity).
    fn admit(&self, rec: &Record, legacy: bool, hash: &SecretHash, now: u64) -> Result<Session, Error> {
        // A pre-tag token is only good for a session that predates the tag:
        // every later serial (e.g. rotated since the upgrade) has a keyed tag.
        if (legacy && rec.serial >= self.inner.legacy.tagged_since) || !rec.secret_hash.matches(hash) {
            return Err(self.revoked_or_unknown(&rec.id, hash)); // e.g. the token from before a rotation
        }
        self.status(rec, now)?;
        let last_seen = now.max(rec.seen());
        self.inner.table.touch(rec, now);
        Ok(Session::of(rec, last_seen))
    }

    /// Gives a session a new token (new secret) and a new serial, and kills the
    /// old token and every access token of the old serial (session-fixation
    /// defence: call it on login and privilege change). The session keeps its
    /// id for life, so a devices page and an admin `revoke` keep naming it.
    /// User, data (including writes that returned before the rotation), version,
    /// metadata, creation time and absolute deadline carry over; refresh tokens
    /// issued before die. Always durable.
    ///
    /// # Errors
    /// As [`Store::validate`]; [`Error::NotFound`] if a concurrent rotate or revoke won.
    pub fn rotate(&self, token: &str) -> Result<Issued, Error> {
        let checked = self.parse_session(token)?;
        self.live()?;
        let old = self.check(&checked)?;
        let tok = &checked.tok;
        let inner = &self.inner;
        let id = old.id();
        let token = SessionToken::with_new_secret(id, &inner.derived.token_tag)?;
        let now = self.now_ms();
        let serial = inner.serials.take()?;
        let prune_after = self.prune_after(now);
        let op =
            Op::Rotate { id, expected: tok.secret_hash(), serial, secret_hash: token.secret_hash(), now, prune_after };
        let Outcome::Rotated { rec, .. } = inner.table.submit(op, Wait::Durable)? else {
            return Err(Error::NotFound);
        };
        // Replaces the pre-rotation entry (higher serial), never a newer update's.
        self.inner.table.fill_written(Arc::clone(&rec));
        self.emit(|| Event::Rotated { old: id, new: id });
        self.emit(|| Event::Revoked { sessions: vec![id], reason: RevokeReason::Rotated });
        Ok(Issued { token, session: Session::of(&rec, now) })
    }

    /// Replaces a session's data unconditionally; returns the new version.
    ///
    /// Prefer [`Store::update_data_if`] when concurrent requests may update the
    /// same session: this one lets the last writer win.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Input`] if too large, [`Error::Storage`].
    pub fn update_data(&self, id: SessionId, data: impl Into<Vec<u8>>) -> Result<u64, Error> {
        self.update(id, None, data.into())
    }

    /// Replaces a session's data only if its version is still `version`
    /// (compare-and-swap); returns the new version.
    ///
    /// # Errors
    /// [`Error::Conflict`] with the current version if another update came first:
    /// re-read and retry. Otherwise as [`Store::update_data`].
    pub fn update_data_if(&self, id: SessionId, version: u64, data: impl Into<Vec<u8>>) -> Result<u64, Error> {
        self.update(id, Some(version), data.into())
    }

    fn update(&self, id: SessionId, expected: Option<u64>, data: Vec<u8>) -> Result<u64, Error> {
        self.update_with(id, expected, Some(data), None)
    }

    /// Replaces the data (if given) and moves the absolute deadline to
    /// `expires_at` (ms since the epoch, if given); returns the new version.
    /// For the framework adapters, whose framework owns the expiry.
    fn update_with(
        &self,
        id: SessionId,
        expected: Option<u64>,
        data: Option<Vec<u8>>,
        expires_at: Option<u64>,
    ) -> Result<u64, Error> {
        let inner = self.live()?;
        if let Some(data) = &data
            && data.len() > inner.config.max_data_len
        {
            return Err(InputError::DataTooLarge { len: data.len(), max: inner.config.max_data_len }.into());
        }
        let now = self.now_ms();
        let expires = match expires_at {
            Some(at) if at <= now => return Err(InputError::Ttl("expiry").into()),
            Some(at) => {
                check_lifetime("expiry", Duration::from_millis(at - now))?;
                Some(crate::backend::Expires { at, now })
            }
            None => None,
        };
        let wait = match inner.config.durability {
            Durability::Eventual => Wait::Applied,
            Durability::Immediate => Wait::Durable,
        };
        let op = Op::UpdateData { id, expected, data: data.map(Vec::into_boxed_slice), expires };
        match inner.table.submit(op, wait)? {
            Outcome::Updated(rec) => {
                let v = rec.version;
                self.inner.table.fill_written(rec);
                Ok(v)
            }
            _ => Err(Error::NotFound),
        }
    }

    /// A framework adapter's write of a session it loaded: new data (if
    /// given) and a new absolute deadline. A session revoked, deleted or
    /// expired since is not written (and not an error): it stays gone.
    #[cfg(any(feature = "tower-sessions", feature = "tower-sessions-015", feature = "actix"))]
    pub(crate) fn rewrite(&self, id: SessionId, data: Option<Vec<u8>>, expires_at: u64) -> Result<(), Error> {
        match self.update_with(id, None, data, Some(expires_at)) {
            Ok(_) | Err(Error::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// When a serial revoked at `now` may leave the revocation set.
    fn prune_after(&self, now: u64) -> u64 {
        now.saturating_add(duration_millis(self.inner.config.revocation_horizon()))
    }

    /// Revokes one session. Durable; after it returns no validate on any thread
    /// succeeds. Revoking an unknown or already revoked id is not an error.
    ///
    /// # Errors
    /// [`Error::Storage`] if the commit failed: the session is still refused in
    /// this process (fail closed), but retry so the revocation is persisted.
    pub fn revoke(&self, id: SessionId) -> Result<(), Error> {
        let prune_after = self.prune_after(self.now_ms());
        // Fail closed even if the writer never reaches the op (e.g. the database
        // cannot be reopened): refuse the session in memory first.
        match self.inner.table.lookup(&id) {
            Ok(Some(rec)) => self.inner.table.refuse(&[(rec.serial, id)]),
            Ok(None) => {}
            // The row cannot be read (storage fault): refuse the id whatever its
            // serial turns out to be, so it cannot validate once the disk recovers.
            Err(_) => {
                self.inner.table.revocation.block_id(id);
                self.inner.table.cache.remove(&id);
            }
        }
        let ids = self.revoke_op(Op::Revoke { id, prune_after })?;
        if !ids.is_empty() {
            self.emit(|| Event::Revoked { sessions: ids, reason: RevokeReason::Session });
        }
        Ok(())
    }

    /// Revokes a user's sessions: all of them, or all but one. Returns how many
    /// were revoked. Durable.
    ///
    /// # Errors
    /// [`Error::Input`] for an invalid user id; [`Error::Storage`] as for [`Store::revoke`].
    pub fn revoke_user(&self, user: &str, scope: Scope) -> Result<usize, Error> {
        check_user(user)?;
        let except = match scope {
            Scope::All => None,
            Scope::Others(id) => Some(id),
        };
        let prune_after = self.prune_after(self.now_ms());
        self.revoke_in_memory(user, except);
        let ids = self.revoke_op(Op::RevokeUser { user: user.into(), except, prune_after })?;
        let n = ids.len();
        if n > 0 {
            let reason = if except.is_some() { RevokeReason::OthersOfUser } else { RevokeReason::AllOfUser };
            self.emit(|| Event::Revoked { sessions: ids, reason });
        }
        Ok(n)
    }

    /// Best effort, before a user-wide revocation is submitted: refuse the user's
    /// stored sessions in memory, so a failed commit still fails closed.
    fn revoke_in_memory(&self, user: &str, except: Option<SessionId>) {
        if let Ok(recs) = self.inner.table.backend.list_user(user) {
            let pairs: Vec<(u64, SessionId)> =
                recs.iter().filter(|r| Some(r.id) != except).map(|r| (r.serial, r.id)).collect();
            self.inner.table.refuse(&pairs);
        }
    }

    /// Submits a revoking op; returns the ids it revoked (the session table
    /// has applied them to the bitmap and the cache).
    fn revoke_op(&self, op: Op) -> Result<Vec<SessionId>, Error> {
        match self.live()?.table.submit(op, Wait::Durable)? {
            Outcome::Revoked(list) => Ok(list.iter().map(|r| r.id).collect()),
            _ => Ok(Vec::new()),
        }
    }

    /// A user's live sessions (expired and revoked ones left out), oldest first,
    /// for a "your devices" page.
    ///
    /// # Errors
    /// [`Error::Input`] for an invalid user id; [`Error::Storage`] on a failed read.
    pub fn list_user(&self, user: &str) -> Result<Vec<Session>, Error> {
        check_user(user)?;
        let inner = self.live()?;
        let now = self.now_ms();
        let mut out: Vec<Session> = inner
            .table
            .backend
            .list_user(user)?
            .into_iter()
            .map(|rec| {
                let seen = inner.table.cache.get(&rec.id).map_or(rec.last_seen, |c| c.seen().max(rec.last_seen));
                Session::of(&rec, seen)
            })
            .filter(|s| now < s.deadline_ms() && !inner.table.revocation.is_revoked(s.serial()))
            .collect();
        out.sort_by_key(|s| (s.created_at, s.serial()));
        Ok(out)
    }

    /// The live session with this id, if any (not revoked, not expired): for
    /// admin tools that act on an id shown by a devices page. Does not slide
    /// the session's expiry.
    ///
    /// # Errors
    /// [`Error::Storage`] if the read fails; [`Error::Closed`] after `close`.
    pub fn session(&self, id: SessionId) -> Result<Option<Session>, Error> {
        let inner = self.live()?;
        let now = self.now_ms();
        let rec = match inner.table.cache.get(&id) {
            Some(r) => r,
            None => match inner.table.backend.get(&id)? {
                Some(r) => Arc::new(r),
                None => return Ok(None),
            },
        };
        let last_seen = rec.seen().max(rec.last_seen);
        if inner.table.revocation.is_revoked(rec.serial) || now >= rec.deadline(last_seen) {
            return Ok(None);
        }
        Ok(Some(Session::of(&rec, last_seen)))
    }

    /// The live refresh families of a live session (one per `issue_tokens`
    /// call: a device or tab), oldest first; empty for an unknown, revoked or
    /// expired session.
    ///
    /// # Errors
    /// [`Error::Storage`] if the read fails; [`Error::Closed`] after `close`.
    pub fn refresh_families(&self, id: SessionId) -> Result<Vec<crate::RefreshFamily>, Error> {
        if self.session(id)?.is_none() {
            return Ok(Vec::new());
        }
        let mut list = self.inner.table.backend.families(&id)?.map(|f| f.listing()).unwrap_or_default();
        list.sort_by_key(|f| f.family);
        Ok(list)
    }

    /// The web layer's CSRF key (derived from the server key).
    #[cfg(feature = "axum")]
    pub(crate) fn csrf_key(&self) -> &[u8; 32] {
        &self.inner.derived.csrf
    }

    /// Is the session this token names in the cache? (Then `validate` does no
    /// I/O and may run on an async worker.) Parses only; no secret check.
    #[cfg(any(feature = "axum", feature = "actix"))]
    pub(crate) fn is_cached(&self, token: &str) -> bool {
        self.parse_session(token).is_ok_and(|t| self.is_cached_id(&t.tok.id()))
    }

    /// Is session `id` in the cache? (See [`Store::is_cached`].)
    #[cfg(any(feature = "axum", feature = "actix", feature = "tower-sessions", feature = "tower-sessions-015"))]
    pub(crate) fn is_cached_id(&self, id: &SessionId) -> bool {
        self.inner.table.cache.peek(id).is_some()
    }

    fn emit(&self, event: impl FnOnce() -> Event) {
        self.inner.table.emit(event);
    }

    /// Revoked → `Revoked`; past the absolute deadline or idle → `Expired`.
    fn status(&self, rec: &Record, now: u64) -> Result<(), Error> {
        // The record's own flag (set by every revocation of its serial, and at
        // fill for one revoked before): no lock shared across sessions.
        if rec.live.revoked.load(Ordering::Acquire) {
            self.inner.table.cache.remove(&rec.id);
            return Err(Error::Revoked);
        }
        if now >= rec.deadline(rec.seen()) {
            self.emit(|| Event::Expired { session: rec.id });
            return Err(Error::Expired);
        }
        Ok(())
    }

    /// The access-token keyring: add and promote keys, list them, export JWKS.
    #[must_use]
    pub fn keyring(&self) -> &Keyring {
        &self.inner.keyring
    }

    /// Retires an access-token key: it stops signing and keeps verifying until
    /// every token it signed has expired (access TTL + leeway from now).
    ///
    /// # Errors
    /// [`Error::Config`] if the kid is unknown or still the signing key.
    pub fn retire_key(&self, kid: &str) -> Result<(), Error> {
        let until = self.inner.config.clock.now() + self.inner.config.revocation_horizon();
        self.inner.keyring.retire(kid, until)
    }

    /// Issues an access token and a refresh token for a valid session.
    ///
    /// # Errors
    /// As [`Store::validate`]; [`Error::Storage`] if the family could not be stored.
    pub fn issue_tokens(&self, session_token: &str) -> Result<TokenPair, Error> {
        self.issue_tokens_with(session_token, BTreeMap::new())
    }

    /// As [`Store::issue_tokens`], with application claims (e.g. `roles`) put in
    /// every access token of this session, including those minted by `refresh`.
    ///
    /// # Errors
    /// [`Error::Input`] if a claim name is reserved (iss, aud, sub, sid, jti, iat,
    /// nbf, exp) or the claims exceed 4 KiB; otherwise as [`Store::issue_tokens`].
    pub fn issue_tokens_with(
        &self,
        session_token: &str,
        claims: BTreeMap<String, serde_json::Value>,
    ) -> Result<TokenPair, Error> {
        if let Some(k) = claims.keys().find(|k| RESERVED_CLAIMS.contains(&k.as_str())) {
            return Err(InputError::ReservedClaim(k.clone()).into());
        }
        let claims_json = serde_json::to_vec(&claims).map_err(|e| InputError::ClaimsNotJson(e.to_string()))?;
        if claims_json.len() > MAX_CLAIMS_LEN {
            return Err(InputError::ClaimsTooLarge { len: claims_json.len(), max: MAX_CLAIMS_LEN }.into());
        }
        let session = self.validate(session_token)?;
        let now = self.now_ms();
        let deadline = session.expires_at;
        let f = crate::refresh::issue(now, deadline, claims_json);
        let reply = self.family_op(session.id(), f)?.ok_or(Error::NotFound)?;
        let Verdict::Rotated(generation) = reply.verdict else { return Err(Error::NotFound) };
        self.emit(|| Event::Refreshed { session: session.id(), generation });
        let holder =
            Holder { id: session.id(), user: session.user(), serial: session.serial(), expires_at: session.expires_at };
        self.pair(&holder, reply.family, generation, &reply.claims, now)
    }

    fn family_op(&self, id: SessionId, f: FamilyFn) -> Result<Option<FamilyReply>, Error> {
        let prune_after = self.prune_after(self.now_ms());
        match self.live()?.table.submit(Op::Family { id, prune_after, f }, Wait::Durable)? {
            Outcome::Family { reply, .. } => Ok(reply),
            _ => Ok(None),
        }
    }

    fn pair(
        &self,
        rec: &Holder<'_>,
        family: u32,
        generation: u64,
        claims_json: &[u8],
        now_ms: u64,
    ) -> Result<TokenPair, Error> {
        let inner = &self.inner;
        let now_s = now_ms / 1000;
        // Never outlive the session: cap at its absolute deadline.
        let exp = (now_s + inner.config.access_ttl.as_secs()).min(rec.expires_at / 1000);
        let extra = if claims_json.is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_slice(claims_json).map_err(|_| Error::Jwt(JwtError::Signing))?
        };
        let mut jti = [0u8; 16];
        crate::token::os_random(&mut jti)?;
        let claims = AccessClaims {
            iss: inner.policy.issuer.clone(),
            aud: inner.policy.audience.clone(),
            sub: rec.user.to_string(),
            sid: rec.serial,
            jti: format!("{:032x}", u128::from_be_bytes(jti)),
            iat: now_s,
            nbf: now_s,
            exp,
            extra,
        };
        Ok(TokenPair {
            access: inner.keyring.sign(&claims)?,
            refresh: inner.derived.mint(rec.id, family, generation),
            access_expires_at: std::time::UNIX_EPOCH + Duration::from_secs(exp),
            refresh_expires_at: crate::clock::from_millis(rec.expires_at),
        })
    }

    /// Rotates a refresh token: returns a new access token and a new refresh
    /// token, and retires the presented one. Re-checks the session (revoked,
    /// expired, idle, user not-before) and counts as activity. Always durable.
    ///
    /// Replaying an older generation revokes the session (see [`crate::Reuse`]);
    /// concurrent refreshes with the same token rotate exactly once.
    ///
    /// # Errors
    /// [`Error::Malformed`]; [`Error::NotFound`] for a token this store did not
    /// mint (bad MAC, unknown session, or a generation ahead of the stored one);
    /// [`Error::Revoked`]; [`Error::Expired`]; [`Error::ReuseDetected`] (the
    /// session is now revoked); [`Error::Storage`].
    pub fn refresh(&self, refresh_token: &str) -> Result<TokenPair, Error> {
        let t = RefreshToken::parse(refresh_token)?;
        let inner = self.live()?;
        if !inner.derived.authentic(&t) {
            return Err(Error::NotFound);
        }
        let Some(rec) = self.inner.table.lookup(&t.id)? else {
            return Err(if inner.table.revocation.is_revoked_id(&t.id) { Error::Revoked } else { Error::NotFound });
        };
        let now = self.now_ms();
        self.status(&rec, now)?;
        if inner.table.revocation.not_before(&rec.user).is_some_and(|nb| rec.created_at < nb) {
            return Err(Error::Revoked);
        }
        let ((family, presented), reuse) = (unpack(t.generation), inner.config.reuse);
        let f = crate::refresh::rotate(family, presented, now, reuse);
        let reply = self.family_op(t.id, f)?.ok_or(Error::NotFound)?;
        match reply.verdict {
            Verdict::Rotated(generation) | Verdict::Current(generation) => {
                self.inner.table.touch(&rec, now);
                if matches!(reply.verdict, Verdict::Rotated(_)) {
                    self.emit(|| Event::Refreshed { session: rec.id, generation });
                }
                let holder = Holder { id: rec.id, user: &rec.user, serial: rec.serial, expires_at: rec.expires_at };
                self.pair(&holder, family, generation, &reply.claims, now)
            }
            Verdict::Reuse { current } => {
                // (The session table has revoked the session and evicted it.)
                self.emit(|| Event::ReuseDetected { session: rec.id, user: rec.user.to_string(), presented, current });
                self.emit(|| Event::Revoked { sessions: vec![rec.id], reason: RevokeReason::ReuseDetected });
                Err(Error::ReuseDetected)
            }
            Verdict::Ahead | Verdict::Dead => Err(Error::NotFound),
        }
    }

    /// Verifies an access token: length cap, compact JWS, header, signature,
    /// claims and time (with leeway), then the session's revocation bit by `sid`
    /// and the user's not-before by `iat`. No I/O.
    ///
    /// # Errors
    /// [`Error::Jwt`] with the reason, or [`Error::Revoked`].
    pub fn verify_access(&self, jwt: &str) -> Result<AccessClaims, Error> {
        let inner = &self.inner;
        if jwt.len() > inner.config.max_token_len {
            return Err(JwtError::Malformed.into());
        }
        self.live()?;
        let c = inner.keyring.verify(jwt, &inner.policy, inner.config.clock.now())?;
        if inner.table.revocation.is_revoked(c.sid) {
            return Err(Error::Revoked);
        }
        // Second resolution: tokens issued in the cut-off second pass this check,
        // but their sessions were revoked by serial in the same logout.
        if inner.table.revocation.not_before(&c.sub).is_some_and(|nb| c.iat < nb / 1000) {
            return Err(Error::Revoked);
        }
        Ok(c)
    }

    /// Authenticates a bearer credential: an access JWT or an opaque session
    /// token, with or without a `Bearer ` prefix. The common hybrid pattern
    /// (JWT first, session-table fallback) in one call.
    ///
    /// # Errors
    /// [`Error::Malformed`] (`WrongKind` for a refresh token, which is never
    /// accepted here); otherwise as [`Store::validate`] or [`Store::verify_access`].
    pub fn authenticate(&self, bearer: &str) -> Result<Principal, Error> {
        if bearer.len() > self.inner.config.max_token_len {
            return Err(Malformed::TooLong.into());
        }
        let cred = match bearer.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("bearer ") => &bearer[7..],
            _ => bearer,
        };
        if cred.starts_with(REFRESH_PREFIX) {
            return Err(Malformed::WrongKind.into());
        }
        if cred.starts_with(SESSION_PREFIX) {
            let s = self.validate(cred)?;
            return Ok(Principal {
                user: s.user().to_owned(),
                serial: s.serial(),
                session: Some(s.id()),
                source: Source::Session,
                claims: None,
            });
        }
        if looks_like_jwt(cred.as_bytes()) {
            let c = self.verify_access(cred)?;
            return Ok(Principal {
                user: c.sub.clone(),
                serial: c.sid,
                session: None,
                source: Source::AccessToken,
                claims: Some(c),
            });
        }
        Err(if cred.trim().is_empty() { Malformed::Empty } else { Malformed::WrongPrefix }.into())
    }

    /// Logs a user out everywhere: revokes all their sessions (and with them
    /// their refresh families and live access tokens) and sets a persisted
    /// not-before, so access tokens issued before now fail `verify_access` at
    /// once. Durable. Returns how many sessions were revoked.
    ///
    /// # Errors
    /// [`Error::Input`] for an invalid user id; [`Error::Storage`] (the cut-off
    /// still applies in this process: fail closed; retry to persist it).
    pub fn logout_everywhere(&self, user: &str) -> Result<usize, Error> {
        check_user(user)?;
        let now = self.now_ms();
        self.live()?.table.revocation.set_not_before(user, now);
        self.revoke_in_memory(user, None);
        let prune_after = self.prune_after(now);
        let ids = self.revoke_op(Op::LogoutEverywhere { user: user.into(), at: now, prune_after })?;
        let n = ids.len();
        self.emit(|| Event::LogoutEverywhere { user: user.to_owned(), sessions: n });
        if n > 0 {
            self.emit(|| Event::Revoked { sessions: ids, reason: RevokeReason::LogoutEverywhere });
        }
        Ok(n)
    }

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
        report.duration = started.elapsed();
        Ok(report)
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
        let inner = self.live()?;
        let now = self.now_ms();
        let entries = inner.table.revocation.due(now);
        let not_before =
            inner.table.revocation.stale_not_before(now, duration_millis(inner.config.revocation_horizon()));
        let (pruned, users) = match inner.table.submit(Op::PruneRevoked { entries, not_before }, Wait::Durable)? {
            Outcome::Pruned(p, u) => (p, u),
            _ => (Vec::new(), Vec::new()),
        };
        inner.table.revocation.forget(&pruned);
        inner.table.revocation.forget_not_before(&users);
        let keys = inner.keyring.prune(inner.config.clock.now());
        Ok((pruned.len(), keys))
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
        if let Some(c) = &inner.coherence {
            stats.following = Some(c.synced());
            stats.resyncs = c.resyncs.load(Ordering::Relaxed);
        }
        stats
    }

    /// Makes every write queued so far durable (including pending sliding-expiry touches).
    ///
    /// # Errors
    /// [`Error::Storage`] if the commit failed; [`Error::Closed`].
    pub fn flush(&self) -> Result<(), Error> {
        self.live()?.table.submit(Op::Flush, Wait::Durable).map(|_| ())
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
        self.live()?.table.backend.checkpoint()
    }

    /// Flushes everything, stops the writer thread and releases the file. Every
    /// clone of this store is closed; later calls return [`Error::Closed`].
    /// Dropping the last clone does the same.
    ///
    /// # Errors
    /// [`Error::Storage`] if the final flush failed.
    pub fn close(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        if let Some(s) = &inner.sweeper {
            s.stop();
        }
        inner.table.backend.close()
    }
}

/// A pair of tokens for one session: a short-lived access JWT and a refresh token.
#[derive(Clone)]
pub struct TokenPair {
    /// The access token (compact JWS, `typ: at+jwt`).
    pub access: String,
    /// The refresh token (`crr_…`). Rotates on every use.
    pub refresh: RefreshToken,
    /// When the access token expires.
    pub access_expires_at: SystemTime,
    /// When the refresh token stops working (the session's absolute deadline).
    pub refresh_expires_at: SystemTime,
}

impl fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPair")
            .field("access", &"<redacted>")
            .field("refresh", &self.refresh)
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .finish()
    }
}

/// What kind of bearer credential authenticated a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// An opaque session token (`crs_…`), checked against the session table.
    Session,
    /// An access JWT, checked by signature, claims and revocation.
    AccessToken,
}

/// Who is calling, as established by [`Store::authenticate`].
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user id.
    pub user: String,
    /// The session serial (the JWT `sid`).
    pub serial: u64,
    /// The session id, when the credential was a session token.
    pub session: Option<SessionId>,
    /// Which credential was presented.
    pub source: Source,
    /// The verified claims, when the credential was an access token.
    pub claims: Option<AccessClaims>,
}

/// Largest accepted application-claims object, serialized.
const MAX_CLAIMS_LEN: usize = 4096;

fn check_lifetime(what: &'static str, d: Duration) -> Result<(), Error> {
    if d.is_zero() || d > Duration::from_secs(100 * 365 * 24 * 3600) {
        return Err(InputError::Ttl(what).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serials from blocks: every take is unique, a block is reserved ahead
    /// once half of the current one is used, and a failed reservation only
    /// delays the next block.
    #[test]
    fn serial_blocks_are_unique_and_reserved_ahead() {
        let calls = Arc::new(AtomicU64::new(0));
        let fail_next = Arc::new(AtomicBool::new(false));
        let (c, f) = (Arc::clone(&calls), Arc::clone(&fail_next));
        let next = parking_lot::Mutex::new(1u64);
        let serials = Serials::Blocks {
            blocks: parking_lot::Mutex::default(),
            reserve: Box::new(move |n| {
                c.fetch_add(1, Ordering::SeqCst);
                if f.swap(false, Ordering::SeqCst) {
                    return Err(Error::Busy);
                }
                let mut x = next.lock();
                let first = *x;
                *x += n;
                Ok(first)
            }),
        };
        let half = SERIAL_BLOCK / 2;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..=half {
            assert!(seen.insert(serials.take().unwrap()));
        }
        // One reservation for the first block, one ahead at the half.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        for _ in half + 1..SERIAL_BLOCK {
            assert!(seen.insert(serials.take().unwrap()));
        }
        // The next block was reserved ahead: switching to it costs no call.
        assert!(seen.insert(serials.take().unwrap()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The reservation ahead fails: the block after is reserved when needed.
        fail_next.store(true, Ordering::SeqCst);
        for _ in 0..2 * SERIAL_BLOCK {
            assert!(seen.insert(serials.take().unwrap()));
        }
        assert_eq!(seen.len() as u64, 3 * SERIAL_BLOCK + 1);
        // From 8 threads at once: still unique.
        let all = parking_lot::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let mine: Vec<u64> = (0..3000).map(|_| serials.take().unwrap()).collect();
                    all.lock().extend(mine);
                });
            }
        });
        let all = all.into_inner();
        let unique: std::collections::HashSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len());
        assert!(unique.is_disjoint(&seen));
    }
}
