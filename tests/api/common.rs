use std::time::Duration;

use cloakroom::{Config, Error, ManualClock, StorageErrorKind, Store};

pub(crate) const MIN: Duration = Duration::from_secs(60);
pub(crate) const HOUR: Duration = Duration::from_secs(3600);

/// An in-memory store on a manual clock, with 1 h sessions and a 10 min idle timeout.
pub(crate) fn store() -> (Store, ManualClock) {
    let clock = ManualClock::fixed();
    let cfg = Config::builder()
        .session_ttl(HOUR)
        .idle_timeout(Some(10 * MIN))
        .touch_granularity(MIN)
        .clock(clock.clone())
        .build()
        .unwrap();
    (open(cfg), clock)
}

/// The kind of a `Storage` error; panics on anything else (the error, or `Ok`).
#[allow(dead_code)] // `tests/api_redis.rs` runs none of the (file-backed) tests that use it
pub(crate) fn storage_kind<T>(r: Result<T, Error>) -> StorageErrorKind {
    match r {
        Err(Error::Storage(e)) => e.kind(),
        Err(e) => panic!("expected a storage error, got {e:?}"),
        Ok(_) => panic!("expected a storage error, got Ok"),
    }
}

/// The server key `open` gives a Redis-backed store whose config sets none.
pub(crate) const REDIS_SERVER_KEY: [u8; 32] = [0x5e; 32];

/// A store on the backend under test: in memory, or (in `tests/api_redis.rs`)
/// on this test thread's `redis-server` under a fresh key prefix, with
/// [`REDIS_SERVER_KEY`] as its server key.
pub(crate) fn open(cfg: Config) -> Store {
    if crate::REDIS { open_as_is(with_redis_key(cfg)) } else { Store::in_memory(cfg).unwrap() }
}

/// `cfg` with [`REDIS_SERVER_KEY`] as its server key.
fn with_redis_key(cfg: Config) -> Config {
    cfg.to_builder().server_key(&REDIS_SERVER_KEY).build().unwrap()
}

/// As `open`, keeping the config's own server key (which a Redis-backed store needs).
pub(crate) fn open_as_is(cfg: Config) -> Store {
    if crate::REDIS { redis::open(cfg) } else { Store::in_memory(cfg).unwrap() }
}

/// Where a store's data outlives the store, so a test can close it and open
/// it again: a redb file, or (in `tests/api_redis.rs`) a key prefix of its own
/// on this thread's `redis-server`.
pub(crate) struct Durable {
    dir: tempfile::TempDir,
    #[cfg(feature = "redis")]
    options: cloakroom::RedisOptions,
}

impl Durable {
    pub(crate) fn new() -> Durable {
        if crate::REDIS {
            redis::require();
        }
        Durable {
            dir: tempfile::tempdir().unwrap(),
            #[cfg(feature = "redis")]
            options: redis::options(),
        }
    }

    /// Opens (again) the store on this place.
    pub(crate) fn open(&self, cfg: Config) -> Store {
        #[cfg(feature = "redis")]
        if crate::REDIS {
            return redis::open_with(with_redis_key(cfg), self.options.clone());
        }
        Store::open(self.dir.path().join("store.redb"), cfg).unwrap()
    }
}

#[cfg(feature = "redis")]
pub(crate) mod redis {
    use std::cell::RefCell;

    use cloakroom::{Config, RedisOptions, Store};

    use crate::redis_side::RedisServer;

    thread_local! {
        /// This test thread's server: killed when the thread ends, pass or fail.
        static SERVER: RefCell<Option<RedisServer>> = const { RefCell::new(None) };
    }

    /// The URL of this thread's `redis-server` (started on first use).
    pub(crate) fn url() -> String {
        require();
        SERVER.with(|s| {
            let mut s = s.borrow_mut();
            if s.is_none() {
                *s = Some(RedisServer::start("always").unwrap_or_else(|e| panic!("{e}")));
            }
            s.as_ref().map(RedisServer::url).unwrap_or_default()
        })
    }

    /// Options with a key prefix no other store of this process uses.
    pub(crate) fn options() -> RedisOptions {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let mut o = RedisOptions::default();
        o.prefix = format!("t{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        o
    }

    pub(crate) fn open(cfg: Config) -> Store {
        open_with(cfg, options())
    }

    /// A store on this thread's server with these options (e.g. a prefix to
    /// reopen), once its follower is caught up: until then a node answers no
    /// validate from its cache (by design, docs/security.md N2), and the
    /// suite's cache assertions (hit counts) are about a node in service.
    /// Bounded poll of 1 ms, at most 5000 times.
    pub(crate) fn open_with(cfg: Config, options: RedisOptions) -> Store {
        let store = Store::redis_with(&url(), options, cfg).unwrap();
        for _ in 0..5000 {
            if store.stats().following == Some(true) {
                return store;
            }
            std::thread::sleep(std::time::Duration::from_millis(1)); // waiting for a thread to subscribe, not for time
        }
        panic!("the Redis follower did not catch up within 5000 polls of 1 ms");
    }

    /// Every test of the Redis run of the suite needs `redis-server`, and
    /// none may run on another backend under the Redis expectations. Without
    /// it (and without `CLOAKROOM_REQUIRE_REDIS`, which makes this panic, as
    /// in CI) the first test to ask prints one `SKIPPED: redis-server not
    /// installed` line and ends this test binary with success: no test body
    /// runs past its first store. (libtest cannot mark one test skipped; under
    /// a runner with one process per test, such as nextest, each test says
    /// so and passes.) Tests asking meanwhile wait here until the exit.
    pub(crate) fn require() {
        static CHECKED: std::sync::Once = std::sync::Once::new();
        CHECKED.call_once(|| {
            if !crate::redis_side::available_for_tests("tests/api_redis.rs: every test of this binary needs it") {
                std::process::exit(0);
            }
        });
    }
}

#[cfg(not(feature = "redis"))]
pub(crate) mod redis {
    pub(crate) fn open(_: cloakroom::Config) -> cloakroom::Store {
        unreachable!("tests/api_redis.rs runs only with --features redis")
    }

    pub(crate) fn require() {
        unreachable!("tests/api_redis.rs runs only with --features redis")
    }
}

/// The same configuration for a file-backed store.
#[allow(dead_code)] // `tests/api_redis.rs` runs none of the file-backed tests that use it
pub(crate) fn config(clock: &ManualClock) -> Config {
    Config::builder()
        .session_ttl(HOUR)
        .idle_timeout(Some(10 * MIN))
        .touch_granularity(MIN)
        .clock(clock.clone())
        .build()
        .unwrap()
}
