#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

//! # cloakroom
//!
//! An embedded, in-process session and token store: server-side sessions with
//! opaque tokens, instant revocation, absolute and idle expiry with sliding
//! renewal, and crash-safe persistence in a single [redb] file — with no Redis,
//! no database server and no network hop. A cached `validate` costs a few hundred
//! nanoseconds.
//!
//! # Example
//!
//! ```
//! use cloakroom::{Config, Error, NewSession, Scope, Store};
//!
//! # fn main() -> Result<(), Error> {
//! let store = Store::in_memory(Config::default())?; // or Store::open("sessions.redb", ...)
//! let issued = store.create(NewSession::new("user-42").data(b"{\"cart\":[]}".to_vec()))?;
//! let token = issued.token.to_string(); // "crs_…": hand this to the client
//!
//! let session = store.validate(&token)?;
//! assert_eq!(session.user(), "user-42");
//!
//! let v = store.update_data_if(session.id(), session.version(), b"{\"cart\":[1]}".to_vec())?;
//! assert_eq!(v, 2);
//!
//! let rotated = store.rotate(&token)?; // on login / privilege change: new secret, same id
//! assert!(matches!(store.validate(&token), Err(Error::Revoked)));
//! assert_eq!(rotated.session.id(), session.id());
//!
//! store.revoke_user("user-42", Scope::All)?;
//! assert!(store.validate(&rotated.token.to_string()).is_err());
//! store.close()?;
//! # Ok(()) }
//! ```
//!
//! # Durability and crash safety
//!
//! One writer thread owns every write transaction and commits all queued writes
//! together (group commit). With [`Durability::Immediate`] (the default) a call
//! returns after the fsync; with [`Durability::Eventual`] it returns once queued
//! and the write is durable within `flush_interval`. Revocations and rotations
//! are always durable, and the revocation bit is set in memory before the commit:
//! after `revoke` returns no validate on any thread succeeds, and a crash cannot
//! bring the session back. Sliding-expiry `last_seen` updates are written lazily,
//! at most once per `touch_granularity`; losing one only shortens a session.
//!
//! # Security
//!
//! Tokens carry a 256-bit secret from the OS CSPRNG. The database stores only
//! blake3 hashes of secrets, compared in constant time, so the file alone does
//! not let anyone replay a token. Token parsing rejects malformed input before
//! any cache or disk access. `Debug` never prints a secret. See `docs/security.md`.
//!
//! # Crate features
//!
//! | feature | what it adds |
//! |---|---|
//! | `cli` | the `cloakroom` binary (`demo`) |
//! | `axum` | [`axum`](mod@crate::axum): session extractor, secure cookies, CSRF, login/logout and token endpoints for axum 0.8 |
//! | `tower-sessions` | [`tower_sessions`](mod@crate::tower_sessions): a tower-sessions 0.14 `SessionStore` (axum-login on top) |
//! | `tower-sessions-015` | the same store for tower-sessions 0.15 |
//! | `actix` | [`actix`](mod@crate::actix): an actix-session 0.11 `SessionStore` keyed by `crs_` tokens |
//! | `redis` | `Store::redis`: the same API over a Redis/Valkey server shared by several nodes ([`RedisOptions`]) |
//! | `test-util` | [`Store::open_with_backend`] for fault-injection tests |
//!
//! [redb]: https://docs.rs/redb

#[cfg(feature = "actix")]
pub mod actix;
#[cfg(feature = "axum")]
pub mod axum;
mod backend;
#[cfg(any(feature = "axum", feature = "tower-sessions", feature = "tower-sessions-015", feature = "actix"))]
mod blocking;
mod cache;
mod clock;
mod config;
mod error;
mod events;
mod jwt;
mod keyfile;
mod keys;
mod readonly;
mod refresh;
mod revocation;
mod session;
mod snapshot;
mod stats;
mod store;
mod sweeper;
mod sync;
mod table;
mod telemetry;
mod token;
#[cfg(any(feature = "tower-sessions", feature = "tower-sessions-015"))]
pub mod tower_sessions;

/// The README's examples compile and run as doctests (with `--all-features`,
/// the README's test command: its "Scaling out" example needs `redis`, its
/// adapters example `tower-sessions` and `actix`).
#[cfg(all(doctest, feature = "redis", feature = "tower-sessions", feature = "actix"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

// The public interface is:
#[cfg(feature = "redis")]
pub use backend::redis::RedisOptions;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, ConfigBuilder, Durability, OnLimit};
pub use error::{Error, InputError, JwtError, Malformed, Result, StorageError, StorageErrorKind};
pub use events::{Event, EventHandler, RevokeReason};
pub use jwt::{AccessClaims, Algorithm, KeyInfo, KeyState, Keyring};
pub use readonly::{ReadOnlyStore, TableReport, UserSessions, VerifyReport};
pub use refresh::{RefreshFamily, Reuse};
pub use session::{MAX_LABEL_LEN, MAX_USER_AGENT_LEN, MAX_USER_ID_LEN, Meta, NewSession, RecordError, Session};
pub use stats::Stats;
pub use store::{Issued, Principal, Scope, Source, Store, TokenPair};
pub use sweeper::SweepReport;
pub use token::{
    REFRESH_PREFIX, REFRESH_TOKEN_LEN, RefreshToken, SESSION_PREFIX, SESSION_TOKEN_LEN, SessionId, SessionToken,
};

/// Entry points for fuzz targets. Not part of the API; may change at any time.
#[doc(hidden)]
pub mod fuzzing;
