//! What a caller gives to create a session: [`NewSession`], [`Meta`], their
//! limits and the checks on them.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::error::InputError;

/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 256;
/// Longest accepted user agent, in bytes.
pub const MAX_USER_AGENT_LEN: usize = 512;
/// Longest accepted label, in bytes.
pub const MAX_LABEL_LEN: usize = 256;

/// Descriptive metadata about the client that created a session, for a
/// "your devices" page. All fields optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Client IP address.
    pub ip: Option<IpAddr>,
    /// Client user agent (at most 512 bytes).
    pub user_agent: Option<String>,
    /// A free label, e.g. "Work laptop" (at most 256 bytes).
    pub label: Option<String>,
}

impl Meta {
    pub(super) fn is_empty(&self) -> bool {
        self.ip.is_none() && self.user_agent.is_none() && self.label.is_none()
    }

    pub(crate) fn check(&self) -> Result<(), InputError> {
        check_len("user_agent", self.user_agent.as_deref(), MAX_USER_AGENT_LEN)?;
        check_len("label", self.label.as_deref(), MAX_LABEL_LEN)
    }
}

fn check_len(field: &'static str, v: Option<&str>, max: usize) -> Result<(), InputError> {
    match v {
        Some(s) if s.len() > max => Err(InputError::MetaTooLong { field, len: s.len(), max }),
        _ => Ok(()),
    }
}

pub(super) static EMPTY_META: Meta = Meta { ip: None, user_agent: None, label: None };

/// Checks a user id: 1..=256 bytes (UTF-8 is guaranteed by `&str`).
pub(crate) fn check_user(user: &str) -> Result<(), InputError> {
    if user.is_empty() || user.len() > MAX_USER_ID_LEN {
        return Err(InputError::UserId { len: user.len(), max: MAX_USER_ID_LEN });
    }
    Ok(())
}

/// What to create: built with [`NewSession::new`] and passed to `Store::create`.
#[derive(Clone)]
pub struct NewSession {
    pub(crate) user: String,
    pub(crate) data: Vec<u8>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) idle_timeout: Option<Option<Duration>>,
    pub(crate) meta: Meta,
}

impl NewSession {
    /// A session for `user` with empty data and the configured lifetimes.
    #[must_use]
    pub fn new(user: impl Into<String>) -> Self {
        Self { user: user.into(), data: Vec::new(), ttl: None, idle_timeout: None, meta: Meta::default() }
    }

    /// Application data stored with the session (at most `Config::max_data_len`).
    #[must_use]
    pub fn data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }

    /// Absolute lifetime; defaults to `Config::session_ttl` (7 days).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Idle timeout; defaults to `Config::idle_timeout` (24 h).
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(Some(idle));
        self
    }

    /// No idle timeout for this session: only the absolute deadline applies.
    #[must_use]
    pub fn without_idle_timeout(mut self) -> Self {
        self.idle_timeout = Some(None);
        self
    }

    /// Client metadata.
    #[must_use]
    pub fn meta(mut self, meta: Meta) -> Self {
        self.meta = meta;
        self
    }
}

impl fmt::Debug for NewSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSession")
            .field("user", &self.user)
            .field("data_len", &self.data.len())
            .field("ttl", &self.ttl)
            .field("idle_timeout", &self.idle_timeout)
            .field("meta", &self.meta)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_limits() {
        assert!(check_user("").is_err());
        assert!(check_user(&"x".repeat(256)).is_ok());
        assert!(check_user(&"x".repeat(257)).is_err());
        assert!(check_user("ユーザー\u{200d}🙂").is_ok());
    }
}
