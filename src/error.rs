//! The one error type of the crate, and its small category enums.

use std::fmt;
use std::sync::Arc;

/// Everything that can go wrong in a cloakroom call.
///
/// Every validation failure (`Malformed`, `NotFound`, `Expired`, `Revoked`,
/// `ReuseDetected`, `Jwt`) should map to HTTP 401 in a web handler; log the
/// variant, never the token.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token failed the format check (prefix, length, base64) or, for a
    /// session token, its keyed tag.
    /// Rejected before any cache or disk access. Treat as unauthenticated.
    #[error("malformed token: {0}")]
    Malformed(Malformed),
    /// No live session matches the token or id (never issued, deleted, or the
    /// secret does not match). Treat as unauthenticated.
    #[error("session not found")]
    NotFound,
    /// The session passed its absolute deadline or its idle timeout.
    /// The user must sign in again.
    #[error("session expired")]
    Expired,
    /// The session was revoked (logout, rotation, reuse detection, admin action).
    #[error("session revoked")]
    Revoked,
    /// A refresh token from an old generation was replayed; the session has been
    /// revoked as a precaution. Alert on this: a token was probably stolen.
    #[error("refresh token reuse detected; session revoked")]
    ReuseDetected,
    /// `update_data_if` was given a stale version; re-read the session and retry.
    #[error("version conflict: session data is at version {current}")]
    Conflict {
        /// The version currently stored.
        current: u64,
    },
    /// An access token (JWT) was rejected.
    #[error("invalid access token: {0}")]
    Jwt(JwtError),
    /// Input supplied by the application was out of bounds (user id, data size, metadata).
    /// Fix the calling code; this is never caused by a presented token.
    #[error("invalid input: {0}")]
    Input(InputError),
    /// The writer queue is full; retry later or lower the load.
    #[error("store busy: write queue full")]
    Busy,
    /// The database could not be read or written. The store stays usable;
    /// the operation did not take effect (for `Durability::Immediate`).
    #[error("storage error: {0}")]
    Storage(StorageError),
    /// The configuration is invalid; the message says which setting and why.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database exists but its server key file (`<db>.key`) does not. The
    /// key cannot be recreated: without it every refresh token and default-key
    /// access token of this database is dead. Restore the file from where you
    /// keep secrets, or knowingly start over with a new key
    /// ([`crate::ConfigBuilder::replace_lost_server_key`], `--new-server-key` on
    /// the command line, or [`crate::ConfigBuilder::server_key`]).
    #[error(
        "server key file {} is missing for an existing database: restore it from your secret backups, \
         or start over with a new key (--new-server-key / ConfigBuilder::replace_lost_server_key), \
         which ends every refresh token and default-key access token issued so far",
        path.display()
    )]
    ServerKeyMissing {
        /// The key file that was expected.
        path: std::path::PathBuf,
    },
    /// The operating system's random number generator failed.
    #[error("OS random number generator failed")]
    Entropy,
    /// The store was closed.
    #[error("store closed")]
    Closed,
    /// The user already holds the most live sessions
    /// [`ConfigBuilder::max_sessions_per_user`](crate::ConfigBuilder::max_sessions_per_user)
    /// allows, and the policy is [`OnLimit::Refuse`](crate::OnLimit::Refuse):
    /// nothing was stored. Sign a session out (a devices page) and retry.
    #[error("session limit reached: the user already holds {max} live sessions")]
    SessionLimit {
        /// The configured cap.
        max: usize,
    },
}

/// Why a token failed the format check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// Empty or whitespace-only input.
    #[error("empty")]
    Empty,
    /// Longer than the configured cap.
    #[error("too long")]
    TooLong,
    /// The prefix is missing or names another kind of token.
    #[error("wrong prefix")]
    WrongPrefix,
    /// A token of another kind (e.g. a refresh token where a session token is expected).
    #[error("wrong token kind")]
    WrongKind,
    /// Not the exact length of this token kind.
    #[error("wrong length")]
    WrongLength,
    /// Not strict, unpadded, canonical base64url.
    #[error("bad encoding")]
    BadEncoding,
    /// A session token's keyed tag does not match: a typo, a truncated copy,
    /// a token of another server key, or a forgery. Checked before any lookup.
    #[error("bad checksum")]
    BadChecksum,
}

/// Why application-supplied input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// User ids must be 1..=256 bytes of UTF-8.
    #[error("user id must be 1 to {max} bytes, got {len}")]
    UserId {
        /// Length given.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// Session data exceeds `Config::max_data_len`.
    #[error("session data is {len} bytes, more than the configured maximum of {max}")]
    DataTooLarge {
        /// Length given.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// A metadata field (ip, user agent, label) exceeds its cap.
    #[error("metadata field `{field}` is {len} bytes, more than {max}")]
    MetaTooLong {
        /// Which field.
        field: &'static str,
        /// Length given.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// An application claim uses a name cloakroom sets itself.
    #[error("claim `{0}` is reserved")]
    ReservedClaim(String),
    /// Application claims exceed the cap once serialized.
    #[error("application claims are {len} bytes, more than {max}")]
    ClaimsTooLarge {
        /// Serialized length.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// Application claims could not be serialized as JSON.
    #[error("application claims are not serializable as JSON: {0}")]
    ClaimsNotJson(String),
    /// A session's idle timeout is not longer than the touch granularity, so
    /// its activity could never be recorded in time.
    #[error("idle_timeout must be longer than the touch granularity ({granularity_ms} ms)")]
    IdleBelowGranularity {
        /// The configured touch granularity, in ms.
        granularity_ms: u64,
    },
    /// A time-to-live is zero or too large to represent.
    #[error("{0} must be non-zero and below 100 years")]
    Ttl(&'static str),
}

/// Why an access token was rejected. Deliberately coarse for the client;
/// precise for your logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not a compact JWS, oversized, or not strict base64url/JSON.
    #[error("malformed")]
    Malformed,
    /// The header is unacceptable: unknown kid, wrong alg for the kid, wrong typ, crit present.
    #[error("bad header: {0}")]
    Header(&'static str),
    /// Signature verification failed.
    #[error("bad signature")]
    Signature,
    /// A required claim is missing, has the wrong type or the wrong value.
    #[error("bad claim: {0}")]
    Claim(&'static str),
    /// `exp` is in the past (beyond the leeway).
    #[error("expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("not yet valid")]
    NotYetValid,
    /// Signing failed (a key problem on our side).
    #[error("signing failed")]
    Signing,
    /// The verification key could not be used (a key problem on our side, not
    /// the token's): check the keyring.
    #[error("verification key unusable")]
    Key,
}

/// A storage failure. Opaque: inspect [`StorageError::kind`] and the `source()` chain.
#[derive(Clone)]
pub struct StorageError {
    kind: StorageErrorKind,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// The category of a [`StorageError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// An I/O error (disk full, permission denied, ...).
    Io,
    /// The file is not a valid redb database or is corrupt. It was not modified.
    Corrupt,
    /// The file is a redb database that was not written by cloakroom. It was not modified.
    NotCloakroom,
    /// The file was written by a newer cloakroom format; upgrade cloakroom.
    NewerFormat,
    /// Another process (or another `Store` in this one) holds the file open.
    AlreadyOpen,
    /// A write transaction failed to commit; nothing of it is visible.
    Commit,
    /// The path names a directory, not a database file. Nothing was created.
    Directory,
    /// The file does not exist (read-only opens never create one).
    Missing,
    /// The file needs crash recovery, which a read-only open cannot do; open it
    /// once read-write (`Store::open`, or a writing command such as `cloakroom sweep`).
    NeedsRecovery,
    /// A journal record is damaged and valid records follow it (not a torn
    /// tail from a crash): the database and journal were left untouched.
    /// Restore the database and its journal files from a backup.
    JournalCorrupt,
    /// The journal files beside the database belong to another database (a
    /// copy from elsewhere) or were written under another server key: nothing
    /// was changed. Put back the right files or the right key.
    JournalMismatch,
    /// The database file is older than its journal: the journal's first
    /// record follows a point the file never reached (the file was restored
    /// from an older backup than its journal). Records in between are
    /// missing, so nothing was opened or changed; the message names the
    /// missing seqs. Copy the database file and its journal files together.
    JournalGap,
    /// The Redis server could not be reached, or did not answer within the
    /// configured timeout, or answered with an error. Nothing is assumed
    /// written; retry when it is back.
    Unavailable,
    /// The Redis database was first used under another server key: every node
    /// of an app must be configured with the same server key.
    KeyMismatch,
    /// The Redis data this store opened is gone or went back in time under it
    /// (a `FLUSHALL`, or a server restarted without the writes it had
    /// acknowledged): this node refuses every call from then on, and holds
    /// nothing it could serve. Reopen the store (`Store::redis_with`) on every
    /// node; sessions and tokens issued before the wipe are unknown after it.
    Wiped,
}

impl StorageError {
    pub(crate) fn new(kind: StorageErrorKind) -> Self {
        Self { kind, source: None }
    }

    pub(crate) fn with_source(kind: StorageErrorKind, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self { kind, source: Some(Arc::new(source)) }
    }

    /// The category of the failure.
    #[must_use]
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }
}

impl fmt::Debug for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageError").field("kind", &self.kind).field("source", &self.source).finish()
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            StorageErrorKind::Io => "I/O error",
            StorageErrorKind::Corrupt => "database file is corrupt (left untouched)",
            StorageErrorKind::NotCloakroom => "not a cloakroom database (left untouched)",
            StorageErrorKind::NewerFormat => "database was written by a newer cloakroom format; upgrade cloakroom",
            StorageErrorKind::AlreadyOpen => "database file is already open in another process or Store",
            StorageErrorKind::Commit => "commit failed; the operation did not take effect",
            StorageErrorKind::Directory => "the path is a directory, not a database file (nothing was created)",
            StorageErrorKind::Missing => "no such database file",
            StorageErrorKind::NeedsRecovery => {
                "database needs crash recovery, which a read-only open cannot do; open it read-write once"
            }
            StorageErrorKind::JournalCorrupt => {
                "journal is damaged before its end (left untouched); restore the database and journal from a backup"
            }
            StorageErrorKind::JournalMismatch => {
                "journal files belong to another database or server key (left untouched)"
            }
            StorageErrorKind::JournalGap => {
                "database file is older than its journal (records are missing; left untouched): restore the \
                 database file and its journal files from the same backup"
            }
            StorageErrorKind::Unavailable => "Redis server unavailable or did not answer in time",
            StorageErrorKind::KeyMismatch => {
                "this Redis database was first used under another server key; configure every node with the same key"
            }
            StorageErrorKind::Wiped => {
                "the Redis data this store opened was wiped or lost acknowledged writes; this node refuses \
                 service until the store is reopened"
            }
        };
        // The cause adds information only where the category does not say it all.
        match (&self.source, self.kind) {
            (
                Some(s),
                StorageErrorKind::Io
                | StorageErrorKind::Commit
                | StorageErrorKind::Unavailable
                | StorageErrorKind::JournalGap,
            ) => {
                write!(f, "{what}: {s}")
            }
            _ => f.write_str(what),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Storage(e)
    }
}

impl From<Malformed> for Error {
    fn from(e: Malformed) -> Self {
        Error::Malformed(e)
    }
}

impl From<InputError> for Error {
    fn from(e: InputError) -> Self {
        Error::Input(e)
    }
}

impl From<JwtError> for Error {
    fn from(e: JwtError) -> Self {
        Error::Jwt(e)
    }
}

/// Shorthand for `Result<T, cloakroom::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
