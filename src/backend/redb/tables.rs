//! The only place that names redb tables.

use redb::TableDefinition;

/// On-disk format written by this version. Bump on any incompatible change.
///
/// - 1: the first format.
/// - 2: session records may use record format 2 (IP addresses as a tag plus raw
///   bytes) and refresh families format 2 (a generation floor).
/// - 3: sessions are stored under an ordered key, their *number* (the serial
///   they were created with, kept for life), so a batch of creates appends to
///   the right-most leaves; the id → number and user → sessions indexes live in
///   memory, rebuilt at open by one scan (no per-user table is written). Every
///   session, refresh, revocation and not-before row ends with a 128-bit tag
///   under a key derived from the server key (`mac.rs`). Writes are
///   acknowledged from the journal beside the file; `meta` records the last
///   journal seq folded in (`journal_seq`) and the journal's id. Formats 1 and
///   2 are migrated at the first read-write open, in one durable transaction
///   (so a crash leaves the old file as it was).
pub(crate) const FORMAT_VERSION: u64 = 3;

/// session number → sealed (session id ‖ record) (see `session.rs` for the record).
pub(crate) const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions_v3");
/// (deadline ms, session number) → session id : the expiry index the sweeper range-scans.
pub(crate) const EXPIRY: TableDefinition<(u64, u64), &[u8; 16]> = TableDefinition::new("expiry_v3");
/// revoked session serial → sealed (prune-after ms u64 ‖ session id). Kept until
/// no access token can name the serial any more.
pub(crate) const REVOKED: TableDefinition<u64, &[u8]> = TableDefinition::new("revoked_v3");
/// session number → sealed refresh families.
pub(crate) const REFRESH: TableDefinition<u64, &[u8]> = TableDefinition::new("refresh_v3");
/// user → sealed not-before (ms u64): tokens issued before it are dead.
pub(crate) const NOT_BEFORE: TableDefinition<&str, &[u8]> = TableDefinition::new("not_before_v3");
/// marker key (see `backend::UserCut::key`) → sealed empty row: a user-wide
/// revocation in progress, written with its first step and removed with its
/// last (absent in files of earlier versions: created at open).
pub(crate) const USER_CUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("user_cuts_v3");
/// "format_version", "next_serial", "journal_seq", "journal_id", and "scratch"
/// (1 when a tool such as `cloakroom demo` created the file as a throwaway it may reset).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Formats 1 and 2: session id → record.
pub(crate) const SESSIONS_V2: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("sessions");
/// Formats 1 and 2: (user, session id) → ().
pub(crate) const USER_SESSIONS_V2: TableDefinition<(&str, &[u8; 16]), ()> = TableDefinition::new("user_sessions");
/// Formats 1 and 2: (deadline ms, session id) → ().
pub(crate) const EXPIRY_V2: TableDefinition<(u64, &[u8; 16]), ()> = TableDefinition::new("expiry");
/// Formats 1 and 2: session id → refresh family.
pub(crate) const REFRESH_V2: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("refresh");
/// Formats 1 and 2: revoked serial → (prune-after ms, session id).
pub(crate) const REVOKED_V2: TableDefinition<u64, (u64, &[u8; 16])> = TableDefinition::new("revoked");
/// Formats 1 and 2: user → not-before ms.
pub(crate) const NOT_BEFORE_V2: TableDefinition<&str, u64> = TableDefinition::new("not_before");

pub(crate) const META_FORMAT: &str = "format_version";
pub(crate) const META_NEXT_SERIAL: &str = "next_serial";
pub(crate) const META_SCRATCH: &str = "scratch";
pub(crate) const META_JOURNAL_SEQ: &str = "journal_seq";
pub(crate) const META_JOURNAL_ID: &str = "journal_id";
/// The first serial issued with a keyed session-token tag (see `LegacyTokens`).
pub(crate) const META_TAGGED_SINCE: &str = "tagged_since";
/// Pre-tag session tokens are refused from this time on (ms since epoch).
pub(crate) const META_LEGACY_UNTIL: &str = "legacy_tokens_until";
