//! Opening a store: the redb file, memory, Redis or a custom redb backend,
//! and the composition of the shared layers over the backend.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::handle::{Inner, Store};
use super::serials::Serials;
use crate::backend::coherence::Coherence;
use crate::backend::contract::{Backend, LostHook};
use crate::backend::redb::adapter::{Redb, Tuning};
use crate::backend::redb::handle::Db;
use crate::backend::redb::journal::Journal;
use crate::backend::redb::open::{LegacyTokens, Loaded};
use crate::cache::Cache;
use crate::clock::to_millis;
use crate::config::Config;
use crate::error::Error;
use crate::jwt::{Keyring, Policy};
use crate::keys::{Derived, default_keyring};
use crate::revocation::Revocation;
use crate::sweeper::Sweeper;
use crate::table::SessionTable;
use crate::token::SessionId;

/// What the shared layers load from a backend at open.
pub(super) struct Boot<'a> {
    /// The next session serial to hand out.
    next_serial: u64,
    /// Which pre-tag session tokens are still accepted.
    legacy: LegacyTokens,
    /// (serial, prune-after ms, session id) of every revocation entry.
    revoked: &'a [(u64, u64, SessionId)],
    /// (user, not-before ms).
    not_before: Vec<(String, u64)>,
    /// User-wide revocations in progress.
    cuts: Vec<(String, crate::backend::op::UserCut)>,
    /// The revocation horizon recorded by the backend (ms): the largest any
    /// opener used, this one's included (see `backend::redb::horizon`).
    horizon_ms: u64,
}

/// What a backend shared by several nodes adds to the shared layers: serials
/// reserved in blocks, and a follower thread that keeps this node's cache and
/// revocation bitmap coherent with the other nodes' writes.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(super) struct SharedTier {
    reserve: Box<dyn Fn(u64) -> Result<u64, Error> + Send + Sync>,
    coherence: Arc<Coherence>,
    follow: Follow,
}

/// Starts a shared backend's follower thread over this store's cache and bitmap.
pub(super) type Follow =
    Box<dyn FnOnce(Arc<dyn crate::backend::contract::Invalidation>) -> Result<std::thread::JoinHandle<()>, Error>>;

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
                    for seg in crate::backend::redb::journal::segment_paths(path) {
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
        crate::backend::redb::journal::segment_paths(db)
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
    /// several nodes of an app, with [`RedisOptions`](crate::backend::redis::RedisOptions)'
    /// defaults. See [`Store::redis_with`].
    ///
    /// # Errors
    /// As [`Store::redis_with`].
    #[cfg(feature = "redis")]
    pub fn redis(url: &str, config: Config) -> Result<Store, Error> {
        Self::redis_with(url, crate::backend::redis::RedisOptions::default(), config)
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
    /// every write (see [`RedisOptions::require_fsync_always`](crate::backend::redis::RedisOptions::require_fsync_always));
    /// [`Error::Storage`] of kind `Unavailable` if the server cannot be reached,
    /// or `KeyMismatch` if the data was written under another server key.
    ///
    /// Each store on Redis has an instance identity, recorded in `{prefix}:meta`
    /// by its first open. A node whose store is wiped under it (a `FLUSHALL`,
    /// or a server restarted without writes it had acknowledged) notices at
    /// its follower's next check (every reconnect, and every 250 ms), drops
    /// what it cached and refuses every call with [`Error::Storage`] of kind
    /// `Wiped` until the store is reopened with this function.
    #[cfg(feature = "redis")]
    pub fn redis_with(url: &str, options: crate::backend::redis::RedisOptions, config: Config) -> Result<Store, Error> {
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
        let fsync = options.require_fsync_always && config.durability == crate::config::Durability::Immediate;
        let keyring = match &config.keyring {
            Some(k) => k.clone(),
            None => default_keyring(&Derived::new(&key))?,
        };
        // Not following yet, since now: the follower catches up once connected.
        let coherence = Arc::new(Coherence::new(options.staleness, Arc::clone(&config.clock)));
        let backend =
            RedisBackend::open(Arc::clone(&pool), keys.clone(), &key, &keyring, fsync, Arc::clone(&coherence))?;
        let instance = backend.instance();
        let loaded = load(&pool, &keys)?;
        // The revocation state is applied by `sync::catch_up` below, as the
        // follower does on every (re)connect.
        let (horizon_ms, _) = crate::backend::redis::record_horizon(
            &pool,
            &keys,
            crate::clock::duration_millis(config.revocation_horizon()),
        )?;
        let boot = Boot {
            next_serial: 1,
            legacy: LegacyTokens { tagged_since: 0, until: 0 },
            revoked: &[],
            not_before: Vec::new(),
            cuts: Vec::new(),
            horizon_ms,
        };
        let (reserve_pool, reserve_keys, reserve_instance) = (Arc::clone(&pool), keys.clone(), Arc::clone(&instance));
        let (reserve_coherence, follow_coherence) = (Arc::clone(&coherence), Arc::clone(&coherence));
        let tier = SharedTier {
            reserve: Box::new(move |n| {
                RedisBackend::reserve(&reserve_pool, &reserve_keys, &reserve_instance, &reserve_coherence, n)
            }),
            coherence,
            follow: Box::new(move |targets| sync::start(pool, keys, instance, targets, follow_coherence)),
        };
        let store = Self::assemble(config, &key, boot, |_lost| Ok(Box::new(backend) as Box<dyn Backend>), Some(tier))?;
        // Before the first call (the follower catches up again when it connects).
        sync::catch_up(&store.inner.table.invalidator(), &loaded);
        store.finish_user_revocations(None, u64::MAX);
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
    pub(super) fn start(
        (db, loaded, journal): (Db, Loaded, Journal),
        config: Config,
        server_key: &[u8; 32],
    ) -> Result<Store, Error> {
        let tuning = Tuning {
            flush_interval: config.flush_interval,
            checkpoint_interval: config.checkpoint_interval,
            queue: config.write_queue,
        };
        let horizon_ms = db.record_horizon(crate::clock::duration_millis(config.revocation_horizon()))?;
        let boot = Boot {
            next_serial: loaded.next_serial,
            legacy: loaded.legacy,
            revoked: &loaded.revoked,
            not_before: loaded.not_before.clone(),
            cuts: loaded.cuts.clone(),
            horizon_ms,
        };
        let store = Self::assemble(
            config,
            server_key,
            boot,
            |lost| Ok(Box::new(Redb::start(db, &loaded, journal, lost, tuning)?) as Box<dyn Backend>),
            None,
        )?;
        store.finish_user_revocations(None, u64::MAX);
        Ok(store)
    }

    /// Builds the shared layers (keys, keyring, revocation state, cache, session
    /// table, sweeper) over the backend `make` returns; `make` gets the hook
    /// through which the backend reports eventual creates it lost.
    pub(super) fn assemble(
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
        let revocation = Arc::new(Revocation::load(boot.revoked, boot.not_before, boot.cuts));
        // The prune clock starts at open (see `Revocation::prune_clock`).
        revocation.prune_clock(to_millis(config.clock.now()), crate::clock::duration_millis(config.clock.monotonic()));
        let cache = Arc::new(Cache::new(config.cache_capacity, config.cache_shards));
        revocation.set_marker(crate::cache::revocation_marker(Arc::clone(&cache)));
        let lost_cache = Arc::clone(&cache);
        let lost: LostHook = Arc::new(move |ids: Vec<SessionId>| ids.iter().for_each(|id| lost_cache.remove(id)));
        let backend = make(lost)?;
        let (serials, coherence, follower) = match tier {
            None => (Serials::Local(AtomicU64::new(boot.next_serial.max(1))), None, None),
            Some(t) => {
                let invalidator =
                    crate::table::Invalidator { cache: Arc::clone(&cache), revocation: Arc::clone(&revocation) };
                let follower = (t.follow)(Arc::new(invalidator))?;
                let serials = Serials::Blocks { blocks: parking_lot::Mutex::default(), reserve: t.reserve };
                (serials, Some(t.coherence), Some(follower))
            }
        };
        let table =
            SessionTable::new(cache, revocation, backend, coherence, config.touch_granularity, config.on_event.clone());
        let interval = config.sweep_interval;
        let inner = Arc::new_cyclic(|weak| Inner {
            table,
            keyring,
            derived,
            policy,
            serials,
            follower: parking_lot::Mutex::new(follower),
            legacy: boot.legacy,
            horizon_ms: boot.horizon_ms,
            closed: AtomicBool::new(false),
            sweeper: interval.and_then(|every| {
                Sweeper::start(weak.clone(), every, |inner| {
                    let _ = Store { inner: Arc::clone(inner) }.sweep();
                })
            }),
            config,
        });
        crate::telemetry::describe();
        let store = Store { inner };
        tracing::info!(backend = store.backend_name(), "store opened");
        Ok(store)
    }
}
