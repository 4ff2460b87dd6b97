//! [`Config`], its builder, and [`Durability`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::events::{Event, EventHandler};
use crate::jwt::Keyring;
use crate::keys::ServerKey;
use crate::refresh::Reuse;

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Acknowledged after the commit is durable (fsync). The default; always
    /// used for revocations whatever the setting.
    #[default]
    Immediate,
    /// Acknowledged when queued; made durable within `Config::flush_interval`
    /// (like Redis `appendfsync everysec`). A crash may lose the last interval of
    /// creates and updates, never a revocation.
    Eventual,
}

/// Store configuration. Build with [`Config::builder`]; `Config::default()` gives the
/// documented defaults.
#[derive(Clone)]
pub struct Config {
    pub(crate) session_ttl: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) touch_granularity: Duration,
    pub(crate) max_data_len: usize,
    pub(crate) cache_capacity: usize,
    pub(crate) cache_shards: usize,
    pub(crate) durability: Durability,
    pub(crate) flush_interval: Duration,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) max_token_len: usize,
    pub(crate) write_queue: usize,
    pub(crate) db_cache_bytes: usize,
    pub(crate) access_ttl: Duration,
    pub(crate) leeway: Duration,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) reuse: Reuse,
    pub(crate) keyring: Option<Keyring>,
    pub(crate) server_key: ServerKey,
    pub(crate) on_event: Option<EventHandler>,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) scratch: bool,
    pub(crate) session_cap: Option<Cap>,
}

impl Default for Config {
    fn default() -> Self {
        // The builder's defaults are valid by construction.
        ConfigBuilder::default().unchecked()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("session_ttl", &self.session_ttl)
            .field("idle_timeout", &self.idle_timeout)
            .field("touch_granularity", &self.touch_granularity)
            .field("max_data_len", &self.max_data_len)
            .field("cache_capacity", &self.cache_capacity)
            .field("cache_shards", &self.cache_shards)
            .field("durability", &self.durability)
            .field("flush_interval", &self.flush_interval)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("max_token_len", &self.max_token_len)
            .field("access_ttl", &self.access_ttl)
            .field("leeway", &self.leeway)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("reuse", &self.reuse)
            .field("keyring", &self.keyring)
            .field("clock", &self.clock)
            .field("session_cap", &self.session_cap)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A builder starting from the defaults.
    #[must_use]
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The clock in use.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// How long a revoked serial must stay in the revocation set: until every
    /// access token that could name it has expired (access TTL + leeway).
    pub(crate) fn revocation_horizon(&self) -> Duration {
        self.access_ttl + self.leeway
    }

    /// A builder holding this configuration, to derive a variant of it (e.g.
    /// the same settings with a server key for `Store::redis`).
    #[must_use]
    pub fn to_builder(&self) -> ConfigBuilder {
        ConfigBuilder {
            cfg: self.clone(),
            touch_granularity: Some(self.touch_granularity),
            max_sessions_per_user: self.session_cap.map(|c| c.max),
            on_session_limit: self.session_cap.map_or(OnLimit::RevokeOldest, |c| c.on_limit),
        }
    }

    /// The default write durability.
    #[must_use]
    pub fn durability(&self) -> Durability {
        self.durability
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);
const MAX_DATA_LEN_CAP: usize = 16 << 20; // 16 MiB: a session is not a blob store
const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What a create does when the user already holds
/// [`ConfigBuilder::max_sessions_per_user`] live sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnLimit {
    /// Revoke the user's oldest live session(s) so the new one fits (as
    /// GoTrue's and Kratos's session caps do): the ones created longest ago
    /// (creation time, as the creating node's clock wrote it; a
    /// [`Store::rotate`](crate::Store::rotate) keeps it). The revoked ones are reported
    /// in an [`Event::Revoked`](crate::Event::Revoked) with reason
    /// [`RevokeReason::SessionLimit`](crate::RevokeReason::SessionLimit).
    RevokeOldest,
    /// Refuse the create with [`Error::SessionLimit`].
    Refuse,
}

/// A per-user cap on live sessions ([`crate::ConfigBuilder::max_sessions_per_user`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cap {
    /// Most live sessions a user may hold.
    pub(crate) max: usize,
    /// What the create that would pass it does.
    pub(crate) on_limit: OnLimit,
}

/// Builder for [`Config`]. Setters document their defaults; [`ConfigBuilder::build`] validates.
#[derive(Clone)]
pub struct ConfigBuilder {
    /// Every setting but the ones below, as the built [`Config`] holds them.
    cfg: Config,
    /// `None`: derived from the idle timeout at build.
    touch_granularity: Option<Duration>,
    max_sessions_per_user: Option<usize>,
    on_session_limit: OnLimit,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.unchecked().fmt(f)
    }
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self {
            cfg: Config {
                session_ttl: 7 * DAY,
                idle_timeout: Some(DAY),
                // (Replaced at build, see `unchecked`.)
                touch_granularity: Duration::from_secs(60),
                max_data_len: 64 * 1024,
                cache_capacity: 1_000_000,
                cache_shards: 64,
                durability: Durability::Immediate,
                flush_interval: Duration::from_secs(1),
                checkpoint_interval: Duration::from_secs(1),
                max_token_len: 4096,
                write_queue: 65_536,
                db_cache_bytes: 1 << 30,
                access_ttl: Duration::from_secs(300),
                leeway: Duration::from_secs(30),
                issuer: "cloakroom".to_owned(),
                audience: "cloakroom".to_owned(),
                reuse: Reuse::default(),
                keyring: None,
                server_key: ServerKey::Default,
                on_event: None,
                sweep_interval: Some(Duration::from_secs(30)),
                clock: Arc::new(SystemClock),
                scratch: false,
                session_cap: None,
            },
            touch_granularity: None,
            max_sessions_per_user: None,
            on_session_limit: OnLimit::RevokeOldest,
        }
    }
}

impl ConfigBuilder {
    /// Absolute session lifetime. Default: 7 days.
    pub fn session_ttl(&mut self, d: Duration) -> &mut Self {
        self.cfg.session_ttl = d;
        self
    }
    /// Idle timeout (`None` disables it). Default: 24 hours.
    pub fn idle_timeout(&mut self, d: Option<Duration>) -> &mut Self {
        self.cfg.idle_timeout = d;
        self
    }
    /// How far `last_seen` must move before it is written again, so a hot
    /// session is written at most once per granularity.
    /// Default: min(idle timeout / 10, 60 s).
    pub fn touch_granularity(&mut self, d: Duration) -> &mut Self {
        self.touch_granularity = Some(d);
        self
    }
    /// Largest accepted session data, in bytes. Default: 64 KiB; at most 16 MiB.
    pub fn max_data_len(&mut self, n: usize) -> &mut Self {
        self.cfg.max_data_len = n;
        self
    }
    /// Sessions kept in memory. Default: 1,000,000.
    pub fn cache_capacity(&mut self, n: usize) -> &mut Self {
        self.cfg.cache_capacity = n;
        self
    }
    /// Number of cache shards, a power of two in 1..=4096. Default: 64.
    pub fn cache_shards(&mut self, n: usize) -> &mut Self {
        self.cfg.cache_shards = n;
        self
    }
    /// Default durability of creates and updates. Default: [`Durability::Immediate`].
    pub fn durability(&mut self, d: Durability) -> &mut Self {
        self.cfg.durability = d;
        self
    }
    /// Longest time an [`Durability::Eventual`] write stays non-durable. Default: 1 s; at most 60 s.
    pub fn flush_interval(&mut self, d: Duration) -> &mut Self {
        self.cfg.flush_interval = d;
        self
    }
    /// Longest time between checkpoints while writes come in: a checkpoint is
    /// one durable commit that folds the journal into the database file, off
    /// the path of any acknowledgement. Shorter means less to replay after a
    /// crash and less held in memory; longer means fewer, larger commits.
    /// Default: 1 s; between 1 ms and 60 s.
    pub fn checkpoint_interval(&mut self, d: Duration) -> &mut Self {
        self.cfg.checkpoint_interval = d;
        self
    }
    /// Longest bearer token accepted by any parser. Default: 4 KiB.
    pub fn max_token_len(&mut self, n: usize) -> &mut Self {
        self.cfg.max_token_len = n;
        self
    }
    /// Capacity of the writer queue; callers wait up to 1 s for room, then get
    /// [`Error::Busy`]. Default: 65,536.
    pub fn write_queue(&mut self, n: usize) -> &mut Self {
        self.cfg.write_queue = n;
        self
    }
    /// Memory redb may use for its page cache (allocated as pages are used). Default: 1 GiB, as redb.
    pub fn db_cache_bytes(&mut self, n: usize) -> &mut Self {
        self.cfg.db_cache_bytes = n;
        self
    }
    /// Lifetime of access tokens (JWTs). Default: 5 minutes; at most 1 hour.
    pub fn access_ttl(&mut self, d: Duration) -> &mut Self {
        self.cfg.access_ttl = d;
        self
    }
    /// Clock leeway applied to `exp`/`nbf`/`iat` of access tokens. Default: 30 s; at most 60 s.
    pub fn leeway(&mut self, d: Duration) -> &mut Self {
        self.cfg.leeway = d;
        self
    }
    /// `iss` of access tokens, checked on verify. Default: `"cloakroom"`.
    pub fn issuer(&mut self, iss: impl Into<String>) -> &mut Self {
        self.cfg.issuer = iss.into();
        self
    }
    /// `aud` of access tokens, checked on verify. Default: `"cloakroom"`.
    pub fn audience(&mut self, aud: impl Into<String>) -> &mut Self {
        self.cfg.audience = aud.into();
        self
    }
    /// Refresh-token reuse policy. Default: [`Reuse::Grace`] of 10 s.
    pub fn reuse(&mut self, reuse: Reuse) -> &mut Self {
        self.cfg.reuse = reuse;
        self
    }
    /// Access-token keys. Default: one HS256 key derived from the server key
    /// (kid `hs256-<fingerprint>`), enough for a single service.
    pub fn keyring(&mut self, keyring: Keyring) -> &mut Self {
        self.cfg.keyring = Some(keyring);
        self
    }
    /// The server key (at least 32 bytes; longer input is hashed down) from which
    /// the refresh-token MAC key and the default HS256 key are derived. It is never
    /// stored in the database. Default: a key file `<db>.key` beside the database,
    /// created with mode 0600 (a random key for in-memory stores).
    ///
    /// # Security
    /// Anyone holding this key and the database can mint refresh tokens and
    /// forge stored rows. Keep it out of backups of the database file. Losing
    /// it loses every stored session (their rows no longer authenticate).
    pub fn server_key(&mut self, key: &[u8]) -> &mut Self {
        self.cfg.server_key = if key.len() < 32 {
            ServerKey::TooShort(key.len())
        } else if key.len() == 32 {
            let mut k = [0u8; 32];
            k.copy_from_slice(key);
            ServerKey::Bytes(k)
        } else {
            ServerKey::Bytes(*blake3::hash(key).as_bytes())
        };
        self
    }
    /// Starts over with a new server key file when the database exists but its
    /// `<db>.key` file is missing, instead of refusing with
    /// [`Error::ServerKeyMissing`]. Every session, refresh token and default-key
    /// access token issued under the lost key stops working: stored rows are
    /// authenticated under a key derived from the server key, so rows sealed
    /// under the lost one read as corrupt (fail closed) and are swept when they
    /// expire. Use only after deciding the old key cannot be restored. Default: off.
    pub fn replace_lost_server_key(&mut self) -> &mut Self {
        self.cfg.server_key = ServerKey::ReplaceLost;
        self
    }
    /// Reads the server key, as 64 hex digits, from environment variable `var` at open.
    pub fn server_key_env(&mut self, var: impl Into<String>) -> &mut Self {
        self.cfg.server_key = ServerKey::Env(var.into());
        self
    }
    /// How often the background sweeper removes expired sessions and prunes the
    /// revocation set (real time); `None` disables the thread (call
    /// `Store::sweep` yourself). Default: 30 s.
    pub fn sweep_interval(&mut self, every: Option<Duration>) -> &mut Self {
        self.cfg.sweep_interval = every;
        self
    }
    /// Receives every [`Event`]. Default: none.
    pub fn on_event(&mut self, handler: impl Fn(&Event) + Send + Sync + 'static) -> &mut Self {
        self.cfg.on_event = Some(Arc::new(handler));
        self
    }
    /// Marks a database file that `Store::open` creates as a scratch file: a
    /// throwaway made by a tool (`cloakroom demo`, `cloakroom bench`) that the
    /// tool may later reset without asking. Has no effect on an existing file.
    /// Default: false. See [`crate::ReadOnlyStore::is_scratch`].
    pub fn scratch(&mut self, yes: bool) -> &mut Self {
        self.cfg.scratch = yes;
        self
    }
    /// Most live sessions one user may hold (`None`, the default: unlimited).
    /// A create that would pass it does what
    /// [`ConfigBuilder::on_session_limit`] says, atomically with the insert on
    /// every backend. Sessions the framework adapters file under their
    /// placeholder user for anonymous visitors are never capped.
    pub fn max_sessions_per_user(&mut self, n: Option<usize>) -> &mut Self {
        self.max_sessions_per_user = n;
        self
    }

    /// What a create past [`ConfigBuilder::max_sessions_per_user`] does.
    /// Default: [`OnLimit::RevokeOldest`].
    pub fn on_session_limit(&mut self, policy: OnLimit) -> &mut Self {
        self.on_session_limit = policy;
        self
    }

    /// The time source. Default: [`SystemClock`].
    pub fn clock(&mut self, clock: impl Clock) -> &mut Self {
        self.cfg.clock = Arc::new(clock);
        self
    }

    fn unchecked(&self) -> Config {
        let touch = self.touch_granularity.unwrap_or_else(|| {
            self.cfg.idle_timeout.map_or(Duration::from_secs(60), |i| (i / 10).min(Duration::from_secs(60)))
        });
        Config {
            touch_granularity: touch,
            session_cap: self.max_sessions_per_user.map(|max| Cap { max, on_limit: self.on_session_limit }),
            ..self.cfg.clone()
        }
    }

    /// Validates the settings and returns the [`Config`].
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid setting.
    pub fn build(&self) -> Result<Config, Error> {
        let c = self.unchecked();
        let bad = |m: &str| Err(Error::Config(m.to_owned()));
        if c.session_ttl.is_zero() || c.session_ttl > MAX_LIFETIME {
            return bad("session_ttl must be non-zero and below 100 years");
        }
        if let Some(i) = c.idle_timeout {
            if i.is_zero() || i > MAX_LIFETIME {
                return bad("idle_timeout must be non-zero and below 100 years");
            }
            if c.touch_granularity >= i {
                return bad("touch_granularity must be shorter than idle_timeout");
            }
        }
        if c.max_data_len > MAX_DATA_LEN_CAP {
            return bad("max_data_len must be at most 16 MiB");
        }
        if !c.cache_shards.is_power_of_two() || c.cache_shards > 4096 {
            return bad("cache_shards must be a power of two between 1 and 4096");
        }
        if c.cache_capacity < c.cache_shards {
            return bad("cache_capacity must be at least cache_shards");
        }
        if c.flush_interval.is_zero() || c.flush_interval > Duration::from_secs(60) {
            return bad("flush_interval must be between 1 ms and 60 s");
        }
        if c.checkpoint_interval < Duration::from_millis(1) || c.checkpoint_interval > Duration::from_secs(60) {
            return bad("checkpoint_interval must be between 1 ms and 60 s");
        }
        if !(256..=65_536).contains(&c.max_token_len) {
            return bad("max_token_len must be between 256 and 65536 bytes");
        }
        if c.access_ttl.is_zero() || c.access_ttl > Duration::from_secs(3600) {
            return bad("access_ttl must be between 1 s and 1 hour");
        }
        if c.leeway > Duration::from_secs(60) {
            return bad("leeway must be at most 60 s");
        }
        match &c.server_key {
            ServerKey::TooShort(_) => return bad("server_key must be at least 32 bytes"),
            ServerKey::Env(v) if v.is_empty() => return bad("server_key_env needs a variable name"),
            _ => {}
        }
        if let Reuse::Grace(w) = c.reuse
            && w > Duration::from_secs(300)
        {
            return bad("the reuse grace window must be at most 5 minutes");
        }
        if c.issuer.is_empty() || c.audience.is_empty() {
            return bad("issuer and audience must be non-empty");
        }
        if c.keyring.as_ref().is_some_and(Keyring::is_empty) {
            return bad("keyring has no keys");
        }
        if c.sweep_interval.is_some_and(|d| d.is_zero()) {
            return bad("sweep_interval must be non-zero (use None to disable)");
        }
        if c.write_queue == 0 {
            return bad("write_queue must be at least 1");
        }
        if c.session_cap.is_some_and(|cap| cap.max == 0) {
            return bad("max_sessions_per_user must be at least 1 (or None for no cap)");
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_builder_gives_back_the_same_settings() {
        let c = Config::builder()
            .session_ttl(Duration::from_secs(90))
            .idle_timeout(None)
            .touch_granularity(Duration::from_secs(7))
            .durability(Durability::Eventual)
            .issuer("iss")
            .server_key(&[3; 32])
            .build()
            .unwrap();
        let again = c.to_builder().build().unwrap();
        assert_eq!(format!("{c:?}"), format!("{again:?}"));
        assert_eq!(again.touch_granularity, Duration::from_secs(7));
        assert!(matches!(again.server_key, ServerKey::Bytes(k) if k == [3; 32]));
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::builder().build().unwrap();
        assert_eq!(c.session_ttl, 7 * DAY);
        assert_eq!(c.idle_timeout, Some(DAY));
        assert_eq!(c.touch_granularity, Duration::from_secs(60));
        assert_eq!(c.max_data_len, 65_536);
        assert_eq!(c.cache_capacity, 1_000_000);
        assert_eq!(c.durability, Durability::Immediate);
        assert_eq!(c.max_token_len, 4096);
    }

    #[test]
    fn touch_granularity_defaults_to_a_tenth_of_short_idle() {
        let c = Config::builder().idle_timeout(Some(Duration::from_secs(100))).build().unwrap();
        assert_eq!(c.touch_granularity, Duration::from_secs(10));
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(Config::builder().cache_shards(3).build().is_err());
        assert!(Config::builder().session_ttl(Duration::ZERO).build().is_err());
        assert!(Config::builder().max_data_len(17 << 20).build().is_err());
        assert!(Config::builder().cache_capacity(1).build().is_err());
        assert!(Config::builder().flush_interval(Duration::ZERO).build().is_err());
        assert!(Config::builder().checkpoint_interval(Duration::ZERO).build().is_err());
        assert!(Config::builder().checkpoint_interval(Duration::from_secs(61)).build().is_err());
        // L4: the clock leeway is small.
        assert!(Config::builder().leeway(Duration::from_secs(60)).build().is_ok());
        assert!(Config::builder().leeway(Duration::from_secs(61)).build().is_err());
        // L3: access tokens are short-lived, 5 minutes by default.
        assert_eq!(Config::default().access_ttl, Duration::from_secs(300));
        assert!(Config::builder().access_ttl(Duration::from_secs(3601)).build().is_err());
        assert!(Config::builder().server_key(&[0; 31]).build().is_err());
        assert!(
            Config::builder()
                .idle_timeout(Some(Duration::from_secs(10)))
                .touch_granularity(Duration::from_secs(10))
                .build()
                .is_err()
        );
    }
}
