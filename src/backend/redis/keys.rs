//! The key names of one store (the layout in the module docs above) and the
//! encodings of what they hold.

use super::resp::{self, Arg};
use crate::token::{SecretHash, SessionId};

/// The Redis key layout's version, recorded in `{p}:meta` as `format` by the
/// first open; a store whose recorded layout is another one is refused.
pub(crate) const LAYOUT_FORMAT: u32 = 1;

/// The key names of one store, built once.
#[derive(Clone)]
pub(crate) struct Keys {
    pub(super) session_prefix: String,
    pub(super) user_prefix: String,
    revoked: String,
    revoked_times: String,
    not_before: String,
    cuts: String,
    pub(super) meta: String,
    pub(super) kids: String,
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
    pub(super) fn session<'a>(&'a self, id: &'a SessionId) -> Arg<'a> {
        Arg::Hex(&self.session_prefix, id.as_bytes())
    }
    /// A user's index key, as a command argument.
    pub(super) fn user<'a>(&'a self, user: &'a str) -> Arg<'a> {
        Arg::Cat(&self.user_prefix, user.as_bytes())
    }
    pub(super) fn user_key(&self, user: &str) -> String {
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

/// `id ‖ secret hash` (48 bytes) as stored in the revoked hash and events.
pub(crate) fn split_id_hash(v: &[u8]) -> Option<(SessionId, SecretHash)> {
    let id: [u8; 16] = v.get(..16)?.try_into().ok()?;
    let sh: [u8; 32] = v.get(16..48)?.try_into().ok()?;
    (v.len() == 48).then_some((SessionId::from_bytes(id), SecretHash(sh)))
}
