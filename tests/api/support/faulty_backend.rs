//! A redb store on storage that fails on demand (used by `faults` and `bad_input`).
//!
//! The storage also models a crash: it keeps what the last successful
//! `sync_data` made durable, and [`Rig::crash`] throws away everything since
//! (on the database and on both journal segments) and fences off the store
//! that was using it, as a power cut would.

#![allow(dead_code)] // `tests/api_redis.rs` uses only `faulty_store`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cloakroom::{Config, Error, Store};
use parking_lot::Mutex;
use redb::StorageBackend;

/// The bytes of one device: as the running process sees them, and as the
/// last sync left them on disk.
#[derive(Debug, Default)]
struct Device {
    live: Mutex<Vec<u8>>,
    durable: Mutex<Vec<u8>>,
}

/// Shared in-memory storage whose writes and syncs fail while `fail` is set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Faulty {
    device: Arc<Device>,
    pub(crate) fail: Arc<AtomicBool>,
    /// Reads fail too while set.
    pub(crate) fail_reads: Arc<AtomicBool>,
    pub(crate) reads: Arc<AtomicU64>,
    /// The next this many `sync_data` calls fail (this device only).
    pub(crate) fail_syncs: Arc<AtomicU64>,
    /// The next this many `set_len` calls that shrink the device fail (this device only).
    pub(crate) fail_shrinks: Arc<AtomicU64>,
    /// Crashes of the rig so far, and how many there had been when this
    /// handle was made: a handle from before a crash belongs to the process
    /// that "died", and every call on it fails.
    crashes: Arc<AtomicU64>,
    born: u64,
}

fn injected(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::StorageFull, format!("injected: {what}"))
}

/// Takes one from `n` if it is above zero; says whether it did.
fn take_one(n: &AtomicU64) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)).is_ok()
}

impl Faulty {
    fn check(&self) -> std::io::Result<()> {
        self.alive()?;
        if self.fail.load(Ordering::SeqCst) {
            return Err(injected("disk full"));
        }
        Ok(())
    }

    fn alive(&self) -> std::io::Result<()> {
        if self.crashes.load(Ordering::SeqCst) != self.born {
            return Err(std::io::Error::other("this process crashed"));
        }
        Ok(())
    }

    /// Storage of its own with the same fault switches (but its own one-shot faults).
    fn sibling(&self) -> Faulty {
        Faulty { device: Arc::default(), fail_syncs: Arc::default(), fail_shrinks: Arc::default(), ..self.clone() }
    }

    /// This storage, for a process started now.
    fn current(&self) -> Faulty {
        Faulty { born: self.crashes.load(Ordering::SeqCst), ..self.clone() }
    }

    /// Loses everything written since the last sync.
    fn lose_unsynced(&self) {
        let durable = self.device.durable.lock().clone();
        *self.device.live.lock() = durable;
    }
}

impl StorageBackend for Faulty {
    fn len(&self) -> std::io::Result<u64> {
        self.alive()?;
        Ok(self.device.live.lock().len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.alive()?;
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: read error"));
        }
        let live = self.device.live.lock();
        let at = usize::try_from(offset).map_err(std::io::Error::other)?;
        let src =
            live.get(at..at + out.len()).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        let mut live = self.device.live.lock();
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        if len < live.len() && take_one(&self.fail_shrinks) {
            return Err(injected("set_len failed"));
        }
        live.resize(len, 0);
        Ok(())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        if take_one(&self.fail_syncs) {
            return Err(injected("sync failed"));
        }
        let live = self.device.live.lock().clone();
        *self.device.durable.lock() = live;
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        let mut live = self.device.live.lock();
        let at = usize::try_from(offset).map_err(std::io::Error::other)?;
        if live.len() < at + data.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        live[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// A database backend and two journal segments. By default the journal fails
/// together with the database; [`Rig::split`] gives it switches of its own.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rig {
    pub(crate) db: Faulty,
    pub(crate) journal: [Faulty; 2],
}

impl Rig {
    pub(crate) fn new() -> Rig {
        let db = Faulty::default();
        let journal = [db.sibling(), db.sibling()];
        Rig { db, journal }
    }

    /// Database and journal fail independently.
    pub(crate) fn split() -> Rig {
        let db = Faulty::default();
        let j = Faulty { crashes: Arc::clone(&db.crashes), ..Faulty::default() };
        Rig { journal: [j.clone(), j.sibling()], db }
    }

    pub(crate) fn open(&self, cfg: Config) -> Result<Store, Error> {
        let b = self.db.current();
        Store::open_with_backend(move || b.clone(), [self.journal[0].current(), self.journal[1].current()], cfg)
    }

    /// Every write (database and journal) fails while set.
    pub(crate) fn fail(&self, on: bool) {
        self.db.fail.store(on, Ordering::SeqCst);
        self.journal[0].fail.store(on, Ordering::SeqCst);
    }

    /// A power cut: every store opened on the rig so far is cut off (each of
    /// its calls fails from now on: pass it to `std::mem::forget`), and the
    /// database and journal keep only what their last sync made durable.
    /// Faults still armed are cleared. [`Rig::open`] then starts a new process.
    pub(crate) fn crash(&self) {
        self.db.crashes.fetch_add(1, Ordering::SeqCst);
        self.fail(false);
        self.db.fail_reads.store(false, Ordering::SeqCst);
        for d in std::iter::once(&self.db).chain(&self.journal) {
            d.fail_syncs.store(0, Ordering::SeqCst);
            d.fail_shrinks.store(0, Ordering::SeqCst);
            d.lose_unsynced();
        }
    }
}

pub(crate) fn faulty_store(cfg: Config) -> (Store, Rig) {
    let rig = Rig::new();
    (rig.open(cfg).unwrap(), rig)
}
