//! The only place that names redb tables.

use redb::TableDefinition;

/// On-disk format written by this version. Bump on any incompatible change.
///
/// - 1: the first format.
/// - 2: session records may use record format 2 (IP addresses as a tag plus raw
///   bytes) and refresh families format 2 (a generation floor, raised when a
///   session is rotated). Every format-1 row stays readable, so a format-1 file is
///   upgraded in place by stamping 2 at its first read-write open; a cloakroom
///   that only knows format 1 then refuses the file with `NewerFormat` instead of
///   misreading records.
pub(crate) const FORMAT_VERSION: u64 = 2;

/// session id → record (see `session.rs` for the layout).
pub(crate) const SESSIONS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("sessions");
/// (user, session id) → () : the per-user index.
pub(crate) const USER_SESSIONS: TableDefinition<(&str, &[u8; 16]), ()> = TableDefinition::new("user_sessions");
/// (deadline ms, session id) → () : the expiry index the sweeper range-scans.
pub(crate) const EXPIRY: TableDefinition<(u64, &[u8; 16]), ()> = TableDefinition::new("expiry");
/// revoked session serial → (prune-after ms, session id). Kept until no access token
/// can name the serial any more.
pub(crate) const REVOKED: TableDefinition<u64, (u64, &[u8; 16])> = TableDefinition::new("revoked");
/// session id → refresh family state.
pub(crate) const REFRESH: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("refresh");
/// user → not-before (ms): tokens issued before it are dead.
pub(crate) const NOT_BEFORE: TableDefinition<&str, u64> = TableDefinition::new("not_before");
/// "format_version", "next_serial", and "scratch" (1 when a tool such as
/// `cloakroom demo` created the file as a throwaway it may reset).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(crate) const META_FORMAT: &str = "format_version";
pub(crate) const META_NEXT_SERIAL: &str = "next_serial";
pub(crate) const META_SCRATCH: &str = "scratch";

/// Every table, for creation at initialisation.
pub(crate) fn names() -> [&'static str; 7] {
    ["sessions", "user_sessions", "expiry", "revoked", "refresh", "not_before", "meta"]
}
