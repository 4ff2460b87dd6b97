//! Sessions: [`Session`], [`NewSession`], [`Meta`], and the versioned record encoding.
//!
//! Record layout (format 2, little-endian), keyed by the session id in the `sessions` table:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | record format (= 2) |
//! | 8 | serial |
//! | 32 | blake3(secret) |
//! | 8 × 5 | created_at, expires_at, idle_timeout (0 = none), last_seen (ms since epoch), data version |
//! | 2 + n | user id (UTF-8, 1..=256) |
//! | 1 + n | ip: tag 0 = absent, 4 = IPv4 (4 raw bytes), 6 = IPv6 (16 raw bytes) |
//! | 2 + n (× 2) | user agent, label (UTF-8, empty = absent) |
//! | 4 + n | data |
//!
//! Format 1 (still read, never written) stored the ip as length-prefixed text.
//! Decoding rejects unknown formats, bad lengths, bad UTF-8, unknown ip tags and
//! trailing bytes.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::clock::{duration_millis, from_millis};
use crate::error::InputError;
use crate::token::{SecretHash, SessionId};

/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 256;
/// Longest accepted user agent, in bytes.
pub const MAX_USER_AGENT_LEN: usize = 512;
/// Longest accepted label, in bytes.
pub const MAX_LABEL_LEN: usize = 256;
const RECORD_FORMAT: u8 = 2;
/// The first record format: the ip as text. Read, never written.
const RECORD_FORMAT_V1: u8 = 1;
const FIXED_LEN: usize = 1 + 8 + 32 + 8 * 5;

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
    fn is_empty(&self) -> bool {
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

static EMPTY_META: Meta = Meta { ip: None, user_agent: None, label: None };

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

/// Mutable per-entry state, updated with atomics so `validate` never takes a write lock.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// Latest validate time (ms), possibly not yet written.
    pub(crate) last_seen: AtomicU64,
    /// The `last_seen` value last handed to the writer.
    pub(crate) persisted: AtomicU64,
    /// CLOCK reference bit.
    pub(crate) referenced: AtomicBool,
    /// Position in its cache shard's CLOCK ring (meaningful only while cached).
    pub(crate) slot: AtomicU32,
    /// Set once this record's serial is revoked: what a cache hit checks, so
    /// the hit path reads no memory shared across sessions for revocation.
    pub(crate) revoked: AtomicBool,
    /// When (ms, on this node's own clock) this copy was read from a shared
    /// backend or made here; 0 for a row decoded from storage that no reader
    /// has stamped yet. A Redis-backed node re-reads entries older than its
    /// staleness bound. Never a time taken from the row (another node's clock).
    pub(crate) fetched: AtomicU64,
}

/// A stored session as kept in the cache and on disk. Immutable once built apart
/// from [`Live`]; changes produce a new record.
///
/// Field order is fixed (`repr(C)`) for the validate hot path: after the 16-byte
/// `Arc` header, the secret hash, serial, expiry and idle timeout fill the first
/// 64 bytes and `live` follows, so a cache hit touches two adjacent cache lines.
#[repr(C)]
pub(crate) struct Record {
    pub(crate) secret_hash: SecretHash,
    pub(crate) serial: u64,
    pub(crate) expires_at: u64,
    /// Idle timeout in ms; 0 means none.
    pub(crate) idle_timeout: u64,
    pub(crate) live: Live,
    pub(crate) id: SessionId,
    /// The session's storage key for life: the serial it was created with.
    pub(crate) number: u64,
    pub(crate) created_at: u64,
    pub(crate) last_seen: u64,
    pub(crate) version: u64,
    pub(crate) user: Box<str>,
    pub(crate) meta: Option<Box<Meta>>,
    pub(crate) data: Box<[u8]>,
}

/// The idle deadline (ms) given a last-seen time; `u64::MAX` without an idle timeout (0).
fn idle_deadline(idle_timeout: u64, last_seen: u64) -> u64 {
    if idle_timeout == 0 { u64::MAX } else { last_seen.saturating_add(idle_timeout) }
}

/// min(absolute deadline, idle deadline), in ms.
fn deadline(expires_at: u64, idle_timeout: u64, last_seen: u64) -> u64 {
    expires_at.min(idle_deadline(idle_timeout, last_seen))
}

/// Why a stored record failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record was written by a newer format.
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    /// The record is shorter than its fields say.
    #[error("record truncated")]
    Truncated,
    /// Bytes left over after the last field.
    #[error("trailing bytes after record")]
    Trailing,
    /// A text field is not valid UTF-8 or an IP address does not parse.
    #[error("invalid text field")]
    BadText,
    /// The IP address field has an unknown tag.
    #[error("invalid ip address tag {0}")]
    BadIpTag(u8),
    /// The user id is empty or too long.
    #[error("invalid user id")]
    BadUser,
    /// The row's authentication tag does not match: the file was damaged, or
    /// edited by someone without the server key (or another server key is in use).
    #[error("row authentication failed")]
    BadTag,
}

impl Clone for Record {
    fn clone(&self) -> Self {
        let ls = self.live.last_seen.load(Ordering::Relaxed).max(self.last_seen);
        Record {
            live: Live::new(ls, self.live.persisted.load(Ordering::Relaxed), self.live.fetched.load(Ordering::Relaxed)),
            id: self.id,
            number: self.number,
            serial: self.serial,
            secret_hash: self.secret_hash,
            created_at: self.created_at,
            expires_at: self.expires_at,
            idle_timeout: self.idle_timeout,
            last_seen: self.last_seen,
            version: self.version,
            user: self.user.clone(),
            meta: self.meta.clone(),
            data: self.data.clone(),
        }
    }
}

impl Live {
    /// `fetched`: when (ms, this node's clock) the copy was known current.
    pub(crate) fn new(last_seen: u64, persisted: u64, fetched: u64) -> Self {
        Live {
            last_seen: AtomicU64::new(last_seen),
            persisted: AtomicU64::new(persisted),
            referenced: AtomicBool::new(false),
            slot: AtomicU32::new(0),
            revoked: AtomicBool::new(false),
            fetched: AtomicU64::new(fetched),
        }
    }
}

impl Record {
    /// The latest known last-seen time (ms).
    pub(crate) fn seen(&self) -> u64 {
        self.live.last_seen.load(Ordering::Relaxed)
    }

    /// When this session stops being valid, given a last-seen time: the key of the `expiry` index.
    pub(crate) fn deadline(&self, last_seen: u64) -> u64 {
        deadline(self.expires_at, self.idle_timeout, last_seen)
    }

    pub(crate) fn meta(&self) -> &Meta {
        self.meta.as_deref().unwrap_or(&EMPTY_META)
    }

    /// A copy under a new serial and secret, seen at `now`: what `rotate` stores.
    /// Keeps the id, user, data and version, metadata, creation time and
    /// absolute deadline.
    pub(crate) fn rotated(&self, serial: u64, secret_hash: SecretHash, now: u64) -> Record {
        let mut r = self.clone();
        r.live = Live::new(now, now, now);
        r.serial = serial;
        r.secret_hash = secret_hash;
        r.last_seen = now;
        r
    }

    /// Encodes the record (format 2).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let m = self.meta();
        let ua = m.user_agent.as_deref().unwrap_or("");
        let label = m.label.as_deref().unwrap_or("");
        let mut out =
            Vec::with_capacity(FIXED_LEN + 2 * 3 + 17 + self.user.len() + ua.len() + label.len() + 4 + self.data.len());
        out.push(RECORD_FORMAT);
        out.extend_from_slice(&self.serial.to_le_bytes());
        out.extend_from_slice(&self.secret_hash.0);
        for v in [self.created_at, self.expires_at, self.idle_timeout, self.last_seen, self.version] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let text = |out: &mut Vec<u8>, s: &str| {
            // Lengths are bounded by the input checks (≤ 512), so they fit in u16.
            #[allow(clippy::cast_possible_truncation)]
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        text(&mut out, &self.user);
        match m.ip {
            None => out.push(0),
            Some(IpAddr::V4(a)) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            Some(IpAddr::V6(a)) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
            }
        }
        text(&mut out, ua);
        text(&mut out, label);
        #[allow(clippy::cast_possible_truncation)] // data ≤ max_data_len ≤ u32::MAX (config check)
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Decodes a record stored under `id` (its `number` is left 0 for the
    /// caller, who knows the storage key). Never panics on any input.
    pub(crate) fn decode(id: SessionId, bytes: &[u8]) -> Result<Record, RecordError> {
        let mut r = Reader::new(bytes);
        let format = r.u8()?;
        if format != RECORD_FORMAT && format != RECORD_FORMAT_V1 {
            return Err(RecordError::UnknownFormat(format));
        }
        let serial = r.u64()?;
        let mut h = [0u8; 32];
        h.copy_from_slice(r.take(32)?);
        let (created_at, expires_at, idle_timeout, last_seen, version) =
            (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let user = r.text()?;
        if user.is_empty() || user.len() > MAX_USER_ID_LEN {
            return Err(RecordError::BadUser);
        }
        let ip = if format == RECORD_FORMAT_V1 {
            let ip = r.text()?;
            if ip.is_empty() { None } else { Some(ip.parse().map_err(|_| RecordError::BadText)?) }
        } else {
            match r.u8()? {
                0 => None,
                4 => Some(IpAddr::from(r.array::<4>()?)),
                6 => Some(IpAddr::from(r.array::<16>()?)),
                t => return Err(RecordError::BadIpTag(t)),
            }
        };
        let ua = r.text()?;
        let label = r.text()?;
        let data = r.bytes_u32()?;
        r.finish()?;
        let meta = Meta {
            ip,
            user_agent: (!ua.is_empty()).then(|| ua.to_owned()),
            label: (!label.is_empty()).then(|| label.to_owned()),
        };
        Ok(Record {
            // `last_seen` is the writer's clock: the reader stamps `fetched`.
            live: Live::new(last_seen, last_seen, 0),
            id,
            number: 0,
            serial,
            secret_hash: SecretHash(h),
            created_at,
            expires_at,
            idle_timeout,
            last_seen,
            version,
            user: user.into(),
            meta: (!meta.is_empty()).then(|| Box::new(meta)),
            data: data.into(),
        })
    }
}

/// A cursor over a little-endian stored row; every read checks the length.
/// Shared by the session record and the refresh family codecs.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.b.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn text(&mut self) -> Result<&'a str, RecordError> {
        let n = u16::from_le_bytes(self.array()?) as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| RecordError::BadText)
    }
    /// A byte string with a u32 length prefix.
    pub(crate) fn bytes_u32(&mut self) -> Result<&'a [u8], RecordError> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        self.take(n)
    }
    /// Whether every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
    /// Fails if any bytes are left.
    pub(crate) fn finish(self) -> Result<(), RecordError> {
        if self.b.is_empty() { Ok(()) } else { Err(RecordError::Trailing) }
    }
}

/// Builds a record for a new session. Inputs must already be checked.
pub(crate) struct RecordParts {
    pub(crate) id: SessionId,
    pub(crate) serial: u64,
    pub(crate) secret_hash: SecretHash,
    pub(crate) now: u64,
    pub(crate) ttl: Duration,
    pub(crate) idle_timeout: Option<Duration>,
}

impl RecordParts {
    pub(crate) fn build(self, new: NewSession) -> Record {
        Record {
            live: Live::new(self.now, self.now, self.now),
            id: self.id,
            number: self.serial,
            serial: self.serial,
            secret_hash: self.secret_hash,
            created_at: self.now,
            expires_at: self.now.saturating_add(duration_millis(self.ttl)),
            idle_timeout: self.idle_timeout.map_or(0, |d| duration_millis(d).max(1)),
            last_seen: self.now,
            version: 1,
            user: new.user.into_boxed_str(),
            meta: (!new.meta.is_empty()).then(|| Box::new(new.meta)),
            data: new.data.into_boxed_slice(),
        }
    }
}

/// A live session, as returned by `validate`, `create` and `list_user`.
///
/// A copy of the stored record's public fields, owned by the caller: it holds
/// no reference into the cache, so returning one writes nothing shared with
/// other threads' validates.
#[derive(Clone)]
pub struct Session {
    id: SessionId,
    serial: u64,
    pub(crate) number: u64,
    pub(crate) created_at: u64,
    pub(crate) expires_at: u64,
    idle_timeout: u64,
    pub(crate) last_seen: u64,
    version: u64,
    user: Small,
    data: Small,
    meta: Option<Box<Meta>>,
}

/// Inline capacity of [`Small`]: a UUID user id (36 bytes) and small data fit.
const SMALL_INLINE: usize = 54;

/// Bytes owned by a [`Session`]: inline up to [`SMALL_INLINE`], else on the
/// heap. A validate of a session with a short user id and small data copies
/// them without allocating: an allocation per hit costs ~20 ns, and where the
/// allocator places two threads' blocks near each other it writes lines both
/// threads use (measured: one hot session on 2 threads went 1.3x-2.0x from
/// run to run with glibc's per-thread cache on, a steady 2.0x without it).
#[derive(Clone)]
enum Small {
    Inline { len: u8, buf: [u8; SMALL_INLINE] },
    Heap(Box<[u8]>),
}

impl Small {
    fn copy_of(bytes: &[u8]) -> Small {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= SMALL_INLINE => {
                let mut buf = [0u8; SMALL_INLINE];
                buf[..bytes.len()].copy_from_slice(bytes);
                Small::Inline { len, buf }
            }
            _ => Small::Heap(bytes.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Small::Inline { len, buf } => &buf[..usize::from(*len)],
            Small::Heap(b) => b,
        }
    }
}

impl Session {
    /// The caller's copy of `rec`, last seen at `last_seen`.
    pub(crate) fn of(rec: &Record, last_seen: u64) -> Self {
        Self {
            id: rec.id,
            serial: rec.serial,
            number: rec.number,
            created_at: rec.created_at,
            expires_at: rec.expires_at,
            idle_timeout: rec.idle_timeout,
            last_seen,
            version: rec.version,
            user: Small::copy_of(rec.user.as_bytes()),
            data: Small::copy_of(&rec.data),
            meta: rec.meta.clone(),
        }
    }

    /// min(absolute deadline, last seen + idle timeout), in ms.
    pub(crate) fn deadline_ms(&self) -> u64 {
        deadline(self.expires_at, self.idle_timeout, self.last_seen)
    }

    /// The session id (safe to log).
    #[must_use]
    pub fn id(&self) -> SessionId {
        self.id
    }
    /// The user this session belongs to.
    #[must_use]
    pub fn user(&self) -> &str {
        // Always valid: copied from a `str` (`Session::of`).
        std::str::from_utf8(self.user.as_bytes()).unwrap_or_default()
    }
    /// The monotonic serial number of this session; access tokens carry it as `sid`.
    #[must_use]
    pub fn serial(&self) -> u64 {
        self.serial
    }
    /// When the session was created.
    #[must_use]
    pub fn created_at(&self) -> SystemTime {
        from_millis(self.created_at)
    }
    /// The absolute deadline.
    #[must_use]
    pub fn expires_at(&self) -> SystemTime {
        from_millis(self.expires_at)
    }
    /// The idle timeout, if any.
    #[must_use]
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout != 0).then(|| Duration::from_millis(self.idle_timeout))
    }
    /// When the session expires if it stays idle from now on: min(absolute deadline, last seen + idle timeout).
    #[must_use]
    pub fn idle_deadline(&self) -> SystemTime {
        from_millis(self.deadline_ms())
    }
    /// The last time the session was validated.
    #[must_use]
    pub fn last_seen(&self) -> SystemTime {
        from_millis(self.last_seen)
    }
    /// The data version; starts at 1 and grows with each `update_data`.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }
    /// Application data.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        self.data.as_bytes()
    }
    /// Client metadata.
    #[must_use]
    pub fn meta(&self) -> &Meta {
        self.meta.as_deref().unwrap_or(&EMPTY_META)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id())
            .field("user", &self.user())
            .field("serial", &self.serial())
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("last_seen", &self.last_seen)
            .field("version", &self.version())
            .field("data_len", &self.data().len())
            .field("meta", self.meta())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(user: &str, data: Vec<u8>, meta: Meta) -> Record {
        RecordParts {
            id: SessionId::from_bytes([3; 16]),
            serial: 42,
            secret_hash: SecretHash([9; 32]),
            now: 1_000,
            ttl: Duration::from_secs(60),
            idle_timeout: Some(Duration::from_secs(10)),
        }
        .build(NewSession::new(user).data(data).meta(meta))
    }

    fn same(a: &Record, b: &Record) -> bool {
        a.id == b.id
            && a.serial == b.serial
            && a.secret_hash.0 == b.secret_hash.0
            && (a.created_at, a.expires_at, a.idle_timeout, a.last_seen, a.version)
                == (b.created_at, b.expires_at, b.idle_timeout, b.last_seen, b.version)
            && a.user == b.user
            && a.meta() == b.meta()
            && a.data == b.data
    }

    /// A session's copy of user and data is the record's, inline or on the
    /// heap, at and around the inline capacity, with multi-byte UTF-8.
    #[test]
    fn session_copies_user_and_data_inline_or_on_the_heap() {
        for len in [0, 1, SMALL_INLINE - 1, SMALL_INLINE, SMALL_INLINE + 1, 300] {
            let user: String = "é".repeat(len / 2) + &"u".repeat(len % 2 + 1);
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let rec = sample(&user, data.clone(), Meta::default());
            let s = Session::of(&rec, 5);
            assert_eq!(s.user(), user, "user of {} bytes", user.len());
            assert_eq!(s.data(), &data[..], "data of {len} bytes");
            assert_eq!(matches!(s.data, Small::Inline { .. }), len <= SMALL_INLINE);
            let c = s.clone();
            assert_eq!((c.user(), c.data()), (s.user(), s.data()));
        }
    }

    #[test]
    fn decode_rejects_every_truncation_and_trailing_bytes() {
        let meta = Meta { ip: Some("10.0.0.1".parse().unwrap()), user_agent: Some("ua".into()), label: None };
        let enc = sample("alice", b"hello".to_vec(), meta).encode();
        for i in 0..enc.len() {
            assert!(Record::decode(SessionId::from_bytes([3; 16]), &enc[..i]).is_err(), "len {i}");
        }
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(Record::decode(SessionId::from_bytes([3; 16]), &long).err(), Some(RecordError::Trailing));
        let mut newer = enc.clone();
        newer[0] = 3;
        assert_eq!(Record::decode(SessionId::from_bytes([3; 16]), &newer).err(), Some(RecordError::UnknownFormat(3)));
        // The ip tag is checked.
        let ip_at = 1 + 8 + 32 + 8 * 5 + 2 + "alice".len();
        assert_eq!(enc[ip_at], 4);
        let mut bad_tag = enc;
        bad_tag[ip_at] = 5;
        assert_eq!(Record::decode(SessionId::from_bytes([3; 16]), &bad_tag).err(), Some(RecordError::BadIpTag(5)));
    }

    /// A format-1 record (ip as text), as the previous version wrote it, still decodes.
    #[test]
    fn format_1_records_still_decode() {
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&7u64.to_le_bytes());
        v1.extend_from_slice(&[9; 32]);
        for v in [100u64, 200, 0, 150, 3] {
            v1.extend_from_slice(&v.to_le_bytes());
        }
        for s in ["alice", "192.0.2.7", "ua", ""] {
            v1.extend_from_slice(&(s.len() as u16).to_le_bytes());
            v1.extend_from_slice(s.as_bytes());
        }
        v1.extend_from_slice(&2u32.to_le_bytes());
        v1.extend_from_slice(b"hi");
        let r = Record::decode(SessionId::from_bytes([3; 16]), &v1).unwrap();
        assert_eq!((r.serial, r.expires_at, r.version, &*r.user, &*r.data), (7, 200, 3, "alice", &b"hi"[..]));
        assert_eq!(r.meta().ip, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(r.meta().user_agent.as_deref(), Some("ua"));
        // Re-encoded in format 2, with the same fields.
        let again = Record::decode(r.id, &r.encode()).unwrap();
        assert_eq!(r.encode()[0], 2);
        assert_eq!(again.meta().ip, r.meta().ip);
    }

    #[test]
    fn user_limits() {
        assert!(check_user("").is_err());
        assert!(check_user(&"x".repeat(256)).is_ok());
        assert!(check_user(&"x".repeat(257)).is_err());
        assert!(check_user("ユーザー\u{200d}🙂").is_ok());
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(
            user in "\\PC{1,64}",
            data in proptest::collection::vec(any::<u8>(), 0..512),
            ua in proptest::option::of("\\PC{0,40}"),
            ip in proptest::option::of(any::<std::net::Ipv6Addr>()),
        ) {
            let meta = Meta { ip: ip.map(IpAddr::V6), user_agent: ua.filter(|s| !s.is_empty()), label: Some("l".into()) };
            let r = sample(&user, data, meta);
            let d = Record::decode(r.id, &r.encode()).unwrap();
            prop_assert!(same(&r, &d));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Record::decode(SessionId::from_bytes([0; 16]), &bytes);
        }
    }
}
