//! The instance of a store's Redis data a node opened: how a wiped store is
//! noticed.

use std::sync::atomic::{AtomicU64, Ordering};

use super::keys::{Keys, hex};
use super::pool::{Pool, record_once};
use crate::error::{Error, StorageError, StorageErrorKind};

/// The instance of a store's Redis data this node opened: the identity its
/// first open recorded in `{p}:meta`, and the highest serial this node
/// reserved or read. The data was wiped (or went back in time) under this
/// node when the identity is missing or another one, or the serial counter is
/// behind a serial this node reserved or read (every serial was reserved from
/// that counter first).
pub(crate) struct Instance {
    /// The recorded identity (32 hex digits of OS randomness).
    pub(super) id: String,
    /// The highest serial this node reserved (a block's end) or read.
    highest: AtomicU64,
    /// Reserves a serial block only while the identity is this one.
    pub(super) reserve: redis::Script,
}

/// `KEYS[1]` meta; `ARGV[1]` the identity, `ARGV[2]` how many serials. The
/// new counter, or nil (and nothing changed) if the identity is not recorded.
const RESERVE: &str = r"
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1] then return false end
return redis.call('HINCRBY', KEYS[1], 'serial', ARGV[2])";

impl Instance {
    /// Records a new identity unless one is recorded; this store's identity.
    pub(super) fn record(pool: &Pool, meta: &str) -> Result<Instance, Error> {
        let mut fresh = [0u8; 16];
        crate::token::os_random(&mut fresh)?;
        let recorded = record_once(pool, meta, "instance", &hex(&fresh))?;
        let id = recorded.ok_or_else(|| StorageError::new(StorageErrorKind::Wiped))?;
        Ok(Instance { id, highest: AtomicU64::new(0), reserve: redis::Script::new(RESERVE) })
    }

    /// Whether the data under the prefix is still this instance: the identity
    /// recorded, and the serial counter not behind a serial this node
    /// reserved or read. Asked by the follower at every (re)connect and every
    /// ping interval.
    pub(crate) fn current(&self, pool: &Pool, keys: &Keys) -> Result<bool, Error> {
        // Read before the counter: a serial reserved or read meanwhile was
        // counted by the server before this read.
        let highest = self.highest.load(Ordering::Acquire);
        let (id, serial): (Option<String>, Option<u64>) =
            pool.with(|c| redis::cmd("HMGET").arg(&keys.meta).arg("instance").arg("serial").query(c))?;
        Ok(id.as_deref() == Some(self.id.as_str()) && serial.unwrap_or(0) >= highest)
    }

    /// Notes a serial this node read from the store (a row, an event).
    pub(crate) fn saw(&self, serial: u64) {
        self.highest.fetch_max(serial, Ordering::AcqRel);
    }
}
