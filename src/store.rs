//! [`Store`]: the facade. Every public operation starts here and delegates to the
//! token parser, cache, revocation set, database and writer.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

use crate::cache::Cache;
use crate::clock::{duration_millis, to_millis};
use crate::config::{Config, Durability};
use crate::db::writer::{Op, Outcome, Wait, Writer};
use crate::db::{Db, Loaded};
use crate::error::{Error, InputError};
use crate::revocation::Revocation;
use crate::session::{NewSession, Record, RecordParts, Session, check_user};
use crate::token::{SessionId, SessionToken};

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
    /// Sessions in the database (including expired ones not yet swept); `None` if the read failed.
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
    db: RwLock<Option<Db>>,
    writer: Writer,
    cache: Cache,
    pub(crate) revocation: Arc<Revocation>,
    next_serial: AtomicU64,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.writer.close();
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in the redb file at `path`.
    ///
    /// # Errors
    /// [`Error::Storage`] if the file cannot be opened, is not a cloakroom
    /// database, is corrupt, was written by a newer format, or is already open.
    /// The file is never modified in those cases.
    pub fn open(path: impl AsRef<Path>, config: Config) -> Result<Store, Error> {
        Self::start(Db::open(path.as_ref(), config.db_cache_bytes)?, config)
    }

    /// A store backed by memory only (tests, demos). Nothing survives the process.
    ///
    /// # Errors
    /// [`Error::Storage`] if the in-memory database cannot be initialised.
    pub fn in_memory(config: Config) -> Result<Store, Error> {
        Self::start(Db::in_memory()?, config)
    }

    /// Opens a store on a custom redb storage backend (fault injection in tests).
    ///
    /// # Errors
    /// As [`Store::open`].
    #[cfg(feature = "test-util")]
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        config: Config,
    ) -> Result<Store, Error> {
        Self::start(Db::with_backend(backend)?, config)
    }

    fn start((db, loaded): (Db, Loaded), config: Config) -> Result<Store, Error> {
        let revocation = Arc::new(Revocation::load(&loaded.revoked, loaded.not_before));
        let hook_rev = Arc::clone(&revocation);
        let writer = Writer::start(
            db.handle(),
            Arc::new(move |pairs: &[(u64, SessionId)]| hook_rev.revoke(pairs)),
            config.flush_interval,
            config.write_queue,
        )?;
        let cache = Cache::new(config.cache_capacity, config.cache_shards);
        Ok(Store {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(db)),
                writer,
                cache,
                revocation,
                next_serial: AtomicU64::new(loaded.next_serial.max(1)),
                closed: AtomicBool::new(false),
                config,
            }),
        })
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
        let inner = self.live()?;
        let cfg = &inner.config;
        check_user(&new.user)?;
        if new.data.len() > cfg.max_data_len {
            return Err(InputError::DataTooLarge {
                len: new.data.len(),
                max: cfg.max_data_len,
            }
            .into());
        }
        new.meta.check()?;
        let ttl = new.ttl.unwrap_or(cfg.session_ttl);
        let idle = new.idle_timeout.unwrap_or(cfg.idle_timeout);
        check_lifetime("ttl", ttl)?;
        if let Some(i) = idle {
            check_lifetime("idle_timeout", i)?;
        }
        let token = SessionToken::generate()?;
        let rec = Arc::new(
            RecordParts {
                id: token.id(),
                serial: inner.next_serial.fetch_add(1, Ordering::Relaxed),
                secret_hash: token.secret_hash(),
                now: self.now_ms(),
                ttl,
                idle_timeout: idle,
            }
            .build(new),
        );
        let wait = match cfg.durability {
            Durability::Eventual => {
                self.fill(Arc::clone(&rec));
                Wait::Queued
            }
            Durability::Immediate => Wait::Durable,
        };
        inner.writer.submit(Op::Create(Arc::clone(&rec)), wait)?;
        self.fill(Arc::clone(&rec));
        let last_seen = rec.last_seen;
        Ok(Issued {
            token,
            session: Session {
                record: rec,
                last_seen,
            },
        })
    }

    /// Puts a record in the cache unless it has been revoked meanwhile. Checking the
    /// bit after the insert closes the race with a concurrent revoke, which sets the
    /// bit before its commit and evicts after it.
    fn fill(&self, rec: Arc<Record>) {
        let inner = &self.inner;
        let (id, serial) = (rec.id, rec.serial);
        inner.cache.insert(rec);
        if inner.revocation.is_revoked(serial) {
            inner.cache.remove(&id);
        }
    }

    /// The record for `id`, from the cache or else the database (filling the cache).
    pub(crate) fn lookup(&self, id: &SessionId) -> Result<Option<Arc<Record>>, Error> {
        if let Some(r) = self.inner.cache.get(id) {
            return Ok(Some(r));
        }
        let db = self.inner.db.read().clone().ok_or(Error::Closed)?;
        let Some(rec) = db.get(id)? else {
            return Ok(None);
        };
        let rec = Arc::new(rec);
        self.fill(Arc::clone(&rec));
        Ok(Some(rec))
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
        let tok = SessionToken::parse(token)?;
        self.live()?;
        self.check(&tok)
    }

    /// Validates an already-parsed token (see [`Store::validate`]).
    pub(crate) fn check(&self, tok: &SessionToken) -> Result<Session, Error> {
        let inner = &self.inner;
        let Some(rec) = self.lookup(&tok.id())? else {
            return Err(if inner.revocation.is_revoked_id(&tok.id()) {
                Error::Revoked
            } else {
                Error::NotFound
            });
        };
        if !rec.secret_hash.matches(&tok.secret_hash()) {
            return Err(Error::NotFound);
        }
        if inner.revocation.is_revoked(rec.serial) {
            inner.cache.remove(&rec.id);
            return Err(Error::Revoked);
        }
        let now = self.now_ms();
        let seen = rec.seen();
        if now >= rec.deadline(seen) {
            return Err(Error::Expired);
        }
        // Sliding expiry: remember the visit (a plain store: a racing older value
        // only shortens the session, fail closed); write it once per granularity.
        if now > seen {
            rec.live.last_seen.store(now, Ordering::Relaxed);
        }
        let persisted = rec.live.persisted.load(Ordering::Relaxed);
        if rec.idle_timeout != 0
            && now.saturating_sub(persisted) >= duration_millis(inner.config.touch_granularity)
            && rec
                .live
                .persisted
                .compare_exchange(persisted, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            inner.writer.offer(Op::Touch {
                id: rec.id,
                last_seen: now,
            });
        }
        let last_seen = now.max(seen);
        Ok(Session {
            record: rec,
            last_seen,
        })
    }

    /// Replaces a session by a new one with a new token and serial, and kills
    /// the old token (session-fixation defence: call it on login and privilege
    /// change). Data, metadata, creation time and absolute deadline carry over.
    /// Always durable.
    ///
    /// # Errors
    /// As [`Store::validate`]; [`Error::NotFound`] if a concurrent rotate or revoke won.
    pub fn rotate(&self, token: &str) -> Result<Issued, Error> {
        let old = self.validate(token)?;
        let inner = &self.inner;
        let token = SessionToken::generate()?;
        let now = self.now_ms();
        let serial = inner.next_serial.fetch_add(1, Ordering::Relaxed);
        let rec = Arc::new(
            old.record
                .rotated(token.id(), serial, token.secret_hash(), now),
        );
        let prune_after = self.prune_after(now);
        inner.writer.submit(
            Op::Rotate {
                old: old.id(),
                new: Arc::clone(&rec),
                prune_after,
            },
            Wait::Durable,
        )?;
        inner.cache.remove(&old.id());
        self.fill(Arc::clone(&rec));
        Ok(Issued {
            token,
            session: Session {
                record: rec,
                last_seen: now,
            },
        })
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
    pub fn update_data_if(
        &self,
        id: SessionId,
        version: u64,
        data: impl Into<Vec<u8>>,
    ) -> Result<u64, Error> {
        self.update(id, Some(version), data.into())
    }

    fn update(&self, id: SessionId, expected: Option<u64>, data: Vec<u8>) -> Result<u64, Error> {
        let inner = self.live()?;
        if data.len() > inner.config.max_data_len {
            return Err(InputError::DataTooLarge {
                len: data.len(),
                max: inner.config.max_data_len,
            }
            .into());
        }
        let wait = match inner.config.durability {
            Durability::Eventual => Wait::Applied,
            Durability::Immediate => Wait::Durable,
        };
        let op = Op::UpdateData {
            id,
            expected,
            data: data.into_boxed_slice(),
        };
        match inner.writer.submit(op, wait)? {
            Outcome::Updated(rec) => {
                let v = rec.version;
                self.fill(rec);
                Ok(v)
            }
            _ => Err(Error::NotFound),
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
        let ids = self.revoke_op(Op::Revoke { id, prune_after })?;
        debug_assert!(ids.len() <= 1);
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
        Ok(self
            .revoke_op(Op::RevokeUser {
                user: user.into(),
                except,
                prune_after,
            })?
            .len())
    }

    pub(crate) fn revoke_op(&self, op: Op) -> Result<Vec<SessionId>, Error> {
        let inner = self.live()?;
        let ids = match inner.writer.submit(op, Wait::Durable)? {
            Outcome::Revoked(ids) => ids,
            _ => Vec::new(),
        };
        for id in &ids {
            inner.cache.remove(id);
        }
        Ok(ids)
    }

    /// A user's live sessions (expired and revoked ones left out), oldest first,
    /// for a "your devices" page.
    ///
    /// # Errors
    /// [`Error::Input`] for an invalid user id; [`Error::Storage`] on a failed read.
    pub fn list_user(&self, user: &str) -> Result<Vec<Session>, Error> {
        check_user(user)?;
        let inner = self.live()?;
        let db = inner.db.read().clone().ok_or(Error::Closed)?;
        let now = self.now_ms();
        let mut out: Vec<Session> = db
            .list_user(user)?
            .into_iter()
            .map(|rec| {
                let seen = inner
                    .cache
                    .get(&rec.id)
                    .map_or(rec.last_seen, |c| c.seen().max(rec.last_seen));
                Session {
                    record: Arc::new(rec),
                    last_seen: seen,
                }
            })
            .filter(|s| {
                now < s.record.deadline(s.last_seen) && !inner.revocation.is_revoked(s.serial())
            })
            .collect();
        out.sort_by_key(|s| (s.record.created_at, s.serial()));
        Ok(out)
    }

    /// Counters: sizes, cache hit rate, writer activity.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        let c = inner.cache.stats();
        let w = &inner.writer.stats;
        let sessions_stored = inner
            .db
            .read()
            .clone()
            .and_then(|db| db.session_count().ok());
        Stats {
            sessions_stored,
            cached_sessions: c.entries,
            cache_hits: c.hits,
            cache_misses: c.misses,
            cache_evictions: c.evictions,
            revoked_serials: inner.revocation.len(),
            commits: w.commits.load(Ordering::Relaxed),
            durable_commits: w.durable_commits.load(Ordering::Relaxed),
            write_ops: w.ops.load(Ordering::Relaxed),
            touch_writes: w.touches.load(Ordering::Relaxed),
            failed_commits: w.failed_commits.load(Ordering::Relaxed),
            lost_eventual_writes: w.lost_eventual.load(Ordering::Relaxed),
            dropped_touches: w.dropped_touches.load(Ordering::Relaxed),
        }
    }

    /// Makes every write queued so far durable (including pending sliding-expiry touches).
    ///
    /// # Errors
    /// [`Error::Storage`] if the commit failed; [`Error::Closed`].
    pub fn flush(&self) -> Result<(), Error> {
        self.live()?
            .writer
            .submit(Op::Flush, Wait::Durable)
            .map(|_| ())
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
        let r = inner.writer.close();
        inner.db.write().take();
        r
    }
}

fn check_lifetime(what: &'static str, d: Duration) -> Result<(), Error> {
    if d.is_zero() || d > Duration::from_secs(100 * 365 * 24 * 3600) {
        return Err(InputError::Ttl(what).into());
    }
    Ok(())
}
