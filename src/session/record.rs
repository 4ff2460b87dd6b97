//! The record a session is stored and cached as, its live (atomic) state,
//! and its versioned encoding.
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

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::bytes::{Reader, RecordError};
use super::input::{EMPTY_META, MAX_USER_ID_LEN, Meta, NewSession};
use crate::clock::duration_millis;
use crate::token::{SecretHash, SessionId};

const RECORD_FORMAT: u8 = 2;
/// The first record format: the ip as text. Read, never written.
const RECORD_FORMAT_V1: u8 = 1;
const FIXED_LEN: usize = 1 + 8 + 32 + 8 * 5;

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
pub(super) fn deadline(expires_at: u64, idle_timeout: u64, last_seen: u64) -> u64 {
    expires_at.min(idle_deadline(idle_timeout, last_seen))
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
