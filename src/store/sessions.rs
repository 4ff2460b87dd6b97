//! Session operations: create, validate, rotate, update, revoke, list.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::handle::{Checked, Issued, Store, check_lifetime};
use crate::backend::contract::Wait;
use crate::backend::op::{Create, Op, Outcome, Replace};
use crate::backend::rules;
use crate::clock::duration_millis;
use crate::config::Durability;
use crate::error::{Error, InputError, Malformed};
use crate::events::{Event, RevokeReason};
use crate::session::{NewSession, Record, RecordParts, Session, check_user};
use crate::token::{SecretHash, SessionId, SessionToken, TagState};

impl Store {
    /// Creates a session and returns its token.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty or over-long user id, over-large data or
    /// metadata, or a zero TTL; [`Error::Storage`] if the write failed (nothing
    /// was stored); [`Error::Busy`] if the write queue stayed full.
    pub fn create(&self, new: NewSession) -> Result<Issued, Error> {
        crate::telemetry::run(
            tracing::debug_span!("session.create", backend = self.backend_name(), outcome = tracing::field::Empty),
            "session.create",
            true,
            || self.create_with(new, SessionToken::generate, Creation::RANDOM),
        )
    }

    /// Creates a session under the token `token` makes from the store's tag
    /// key (a fresh random one for [`Store::create`], one derived from a
    /// framework's session id for the adapters).
    pub(crate) fn create_with(
        &self,
        new: NewSession,
        token: impl FnOnce(&crate::token::TagKey) -> Result<SessionToken, Error>,
        how: Creation,
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
        let cap = if how.capped { cfg.session_cap } else { None };
        // A create whose decision can refuse it (an id that may be taken, a
        // cap) waits for that decision even with Eventual durability.
        let decides = how.replace != Replace::Nothing || !how.random_id || cap.is_some();
        let wait = match cfg.durability {
            Durability::Eventual if decides => Wait::Applied,
            Durability::Eventual => {
                self.inner.table.fill(Arc::clone(&rec));
                Wait::Queued
            }
            Durability::Immediate => Wait::Durable,
        };
        // The session a create replaces (an adapter's user change) is refused
        // in memory before the create is decided, as `revoke` refuses first:
        // between the commit and this thread's eviction after it, no other
        // thread may answer from a cached copy of the replaced session. Only
        // a serial already gone can be refused for nothing: a replace names
        // the session its caller wants gone.
        if let Replace::Serial(old) = how.replace {
            inner.table.refuse(&[(old, rec.id)]);
        }
        let op = Op::Create(Create {
            rec: Arc::clone(&rec),
            replace: how.replace,
            cap,
            random_id: how.random_id,
            prune_after: self.prune_after(rec.created_at),
        });
        let revoked = match inner.table.submit(op, wait) {
            Ok(Outcome::Created(revoked)) => revoked,
            Ok(_) => Vec::new(),
            Err(e) => {
                // Not stored: an Eventual create must not stay visible from the cache.
                inner.table.cache.remove(&rec.id);
                return Err(e);
            }
        };
        if wait != Wait::Queued {
            // (An Eventual create is already cached; filling again here could
            // undo the writer's eviction of a create whose batch failed.)
            self.inner.table.fill(Arc::clone(&rec));
        }
        if !revoked.is_empty() {
            let reason =
                if how.replace == Replace::Nothing { RevokeReason::SessionLimit } else { RevokeReason::Session };
            self.emit(|| Event::Revoked { sessions: revoked.iter().map(|r| r.id).collect(), reason });
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
        crate::telemetry::run(
            tracing::debug_span!(
                "session.validate_strict",
                backend = self.backend_name(),
                outcome = tracing::field::Empty
            ),
            "session.validate_strict",
            true,
            || {
                let tok = self.parse_session(token)?;
                self.live()?;
                self.check_stored(&tok, self.now_ms())
            },
        )
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
        crate::telemetry::run(
            tracing::trace_span!("session.validate", backend = self.backend_name(), outcome = tracing::field::Empty),
            "session.validate",
            false,
            || {
                let tok = self.parse_session(token)?;
                self.live()?;
                self.check(&tok)
            },
        )
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
    pub(super) fn parse_session(&self, token: &str) -> Result<Checked, Error> {
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
    pub(super) fn check(&self, checked: &Checked) -> Result<Session, Error> {
        let tok = &checked.tok;
        let (id, hash) = (tok.id(), tok.secret_hash());
        let now = self.now_ms();
        let cached = self.inner.table.cache.get_with(&id, |rec| {
            self.inner.table.may_answer(rec, now).then(|| self.admit(rec, checked.legacy, &hash, now))
        });
        if let Some(Some(verdict)) = cached {
            return verdict;
        }
        self.check_stored(checked, now)
    }

    /// Validates against the backend, bypassing (and refilling) the cache.
    pub(super) fn check_stored(&self, checked: &Checked, now: u64) -> Result<Session, Error> {
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
    pub(super) fn revoked_or_unknown(&self, id: &SessionId, hash: &SecretHash) -> Error {
        if self.inner.table.revocation.revoked_with_secret(id, hash) { Error::Revoked } else { Error::NotFound }
    }

    /// The checks of a found record: secret, revocation, deadlines; then the
    /// visit is remembered (sliding expiry, written once per granularity).
    pub(super) fn admit(&self, rec: &Record, legacy: bool, hash: &SecretHash, now: u64) -> Result<Session, Error> {
        // A pre-tag token is only good for a session that predates the tag:
        // every later serial (e.g. rotated since the upgrade) has a keyed tag.
        if (legacy && rec.serial >= self.inner.legacy.tagged_since) || !rec.secret_hash.matches(hash) {
            return Err(self.revoked_or_unknown(&rec.id, hash)); // e.g. the token from before a rotation
        }
        self.inner.table.status(rec, now)?;
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
        crate::telemetry::run(
            tracing::debug_span!("session.rotate", backend = self.backend_name(), outcome = tracing::field::Empty),
            "session.rotate",
            true,
            || {
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
                let op = Op::Rotate {
                    id,
                    expected: tok.secret_hash(),
                    serial,
                    secret_hash: token.secret_hash(),
                    now,
                    prune_after,
                };
                let Outcome::Rotated { rec, .. } = inner.table.submit(op, Wait::Durable)? else {
                    return Err(Error::NotFound);
                };
                // Replaces the pre-rotation entry (higher serial), never a newer update's.
                self.inner.table.fill_written(Arc::clone(&rec));
                self.emit(|| Event::Rotated { old: id, new: id });
                self.emit(|| Event::Revoked { sessions: vec![id], reason: RevokeReason::Rotated });
                Ok(Issued { token, session: Session::of(&rec, now) })
            },
        )
    }

    /// Replaces a session's data unconditionally; returns the new version.
    ///
    /// Prefer [`Store::update_data_if`] when concurrent requests may update the
    /// same session: this one lets the last writer win.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Input`] if too large, [`Error::Storage`].
    pub fn update_data(&self, id: SessionId, data: impl Into<Vec<u8>>) -> Result<u64, Error> {
        crate::telemetry::run(
            tracing::debug_span!("session.update", backend = self.backend_name(), session = %id, outcome = tracing::field::Empty),
            "session.update",
            true,
            || self.update(id, None, data.into()),
        )
    }

    /// Replaces a session's data only if its version is still `version`
    /// (compare-and-swap); returns the new version.
    ///
    /// # Errors
    /// [`Error::Conflict`] with the current version if another update came first:
    /// re-read and retry. Otherwise as [`Store::update_data`].
    pub fn update_data_if(&self, id: SessionId, version: u64, data: impl Into<Vec<u8>>) -> Result<u64, Error> {
        crate::telemetry::run(
            tracing::debug_span!("session.update", backend = self.backend_name(), session = %id, outcome = tracing::field::Empty),
            "session.update",
            true,
            || self.update(id, Some(version), data.into()),
        )
    }

    pub(super) fn update(&self, id: SessionId, expected: Option<u64>, data: Vec<u8>) -> Result<u64, Error> {
        self.update_with(id, expected, None, Some(data), None)
    }

    /// Replaces the data (if given) and moves the absolute deadline to
    /// `expires_at` (ms since the epoch, if given); returns the new version.
    /// For the framework adapters, whose framework owns the expiry.
    pub(super) fn update_with(
        &self,
        id: SessionId,
        expected: Option<u64>,
        serial: Option<u64>,
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
                Some(crate::backend::op::Expires { at, now })
            }
            None => None,
        };
        let wait = match inner.config.durability {
            Durability::Eventual => Wait::Applied,
            Durability::Immediate => Wait::Durable,
        };
        let op = Op::UpdateData { id, expected, serial, now, data: data.map(Vec::into_boxed_slice), expires };
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
    /// expired since is not written (and not an error): it stays gone. With
    /// `serial`, the write lands only on the session of that serial (the one
    /// the adapter read): `Conflict` if it was replaced since (re-read).
    #[cfg(any(feature = "tower-sessions", feature = "tower-sessions-015", feature = "actix"))]
    pub(crate) fn rewrite(
        &self,
        id: SessionId,
        serial: Option<u64>,
        data: Option<Vec<u8>>,
        expires_at: u64,
    ) -> Result<(), Error> {
        match self.update_with(id, None, serial, data, Some(expires_at)) {
            Ok(_) | Err(Error::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// When a serial revoked at `now` may leave the revocation set.
    pub(super) fn prune_after(&self, now: u64) -> u64 {
        now.saturating_add(self.inner.horizon_ms)
    }

    /// A user's live sessions (expired and revoked ones left out), oldest first,
    /// for a "your devices" page.
    ///
    /// # Errors
    /// [`Error::Input`] for an invalid user id; [`Error::Storage`] on a failed read.
    pub fn list_user(&self, user: &str) -> Result<Vec<Session>, Error> {
        crate::telemetry::run(
            tracing::debug_span!("session.list_user", backend = self.backend_name(), outcome = tracing::field::Empty),
            "session.list_user",
            true,
            || {
                check_user(user)?;
                let inner = self.live()?;
                let now = self.now_ms();
                let mut out: Vec<Session> = inner
                    .table
                    .backend
                    .list_user(user)?
                    .into_iter()
                    .filter(|rec| rules::owned_by(rec, user) && !inner.table.revocation.cut_session(user, &rec.id))
                    .map(|rec| {
                        let seen =
                            inner.table.cache.get(&rec.id).map_or(rec.last_seen, |c| c.seen().max(rec.last_seen));
                        Session::of(&rec, seen)
                    })
                    .filter(|s| now < s.deadline_ms() && !inner.table.revocation.is_revoked(s.serial()))
                    .collect();
                out.sort_by_key(|s| (s.created_at, s.serial()));
                Ok(out)
            },
        )
    }

    /// The live session with this id, if any (not revoked, not expired): for
    /// admin tools that act on an id shown by a devices page. Does not slide
    /// the session's expiry.
    ///
    /// # Errors
    /// [`Error::Storage`] if the read fails; [`Error::Closed`] after `close`.
    pub fn session(&self, id: SessionId) -> Result<Option<Session>, Error> {
        crate::telemetry::run(
            tracing::debug_span!("session.get", backend = self.backend_name(), session = %id, outcome = tracing::field::Empty),
            "session.get",
            false,
            || {
                let inner = self.live()?;
                let now = self.now_ms();
                // A cached copy answers only under the validate hit's rule
                // (on a shared backend: following, and fresh on this node's clock).
                let rec = match inner.table.cache.get(&id).filter(|r| inner.table.may_answer(r, now)) {
                    Some(r) => r,
                    None => match inner.table.backend.get(&id)? {
                        Some(r) => Arc::new(r),
                        None => return Ok(None),
                    },
                };
                let last_seen = rec.seen().max(rec.last_seen);
                if inner.table.revocation.is_revoked(rec.serial)
                    || inner.table.revocation.cut_session(&rec.user, &rec.id)
                    || now >= rec.deadline(last_seen)
                {
                    return Ok(None);
                }
                Ok(Some(Session::of(&rec, last_seen)))
            },
        )
    }

    /// The live refresh families of a live session (one per `issue_tokens`
    /// call: a device or tab), oldest first; empty for an unknown, revoked or
    /// expired session.
    ///
    /// # Errors
    /// [`Error::Storage`] if the read fails; [`Error::Closed`] after `close`.
    pub fn refresh_families(&self, id: SessionId) -> Result<Vec<crate::refresh::RefreshFamily>, Error> {
        crate::telemetry::run(
            tracing::debug_span!("session.families", backend = self.backend_name(), session = %id, outcome = tracing::field::Empty),
            "session.families",
            false,
            || {
                if self.session(id)?.is_none() {
                    return Ok(Vec::new());
                }
                let mut list = self.inner.table.backend.families(&id)?.map(|f| f.listing()).unwrap_or_default();
                list.sort_by_key(|f| f.family);
                Ok(list)
            },
        )
    }

    /// The web layer's CSRF key (derived from the server key).
    #[cfg(feature = "axum")]
    pub(crate) fn csrf_key(&self) -> &[u8; 32] {
        &self.inner.derived.csrf
    }
}

/// How a create treats the id it is given and the user's cap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Creation {
    /// What a row already under the id means (see [`Replace`]).
    pub(crate) replace: Replace,
    /// The id is fresh from the OS random generator.
    pub(crate) random_id: bool,
    /// The user's session cap applies (not to an adapter's placeholder user).
    pub(crate) capped: bool,
}

impl Creation {
    /// [`Store::create`]: a random id, capped.
    pub(crate) const RANDOM: Creation = Creation { replace: Replace::Nothing, random_id: true, capped: true };
}
