//! A redb store on storage that fails on demand (used by `faults` and `bad_input`).

#![allow(dead_code)] // `tests/api_redis.rs` uses only `faulty_store`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cloakroom::{Config, Error, Store};
use redb::StorageBackend;
use redb::backends::InMemoryBackend;

/// Shared in-memory storage whose writes and syncs fail while `fail` is set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Faulty {
    inner: Arc<InMemoryBackend>,
    pub(crate) fail: Arc<AtomicBool>,
    /// Reads fail too while set.
    pub(crate) fail_reads: Arc<AtomicBool>,
    pub(crate) reads: Arc<AtomicU64>,
}

impl Faulty {
    fn check(&self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "injected: disk full"));
        }
        Ok(())
    }

    /// Storage of its own with the same fault switches.
    fn sibling(&self) -> Faulty {
        Faulty { inner: Arc::default(), ..self.clone() }
    }
}

impl StorageBackend for Faulty {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: read error"));
        }
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
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
        let j = Faulty::default();
        Rig { journal: [j.clone(), j.sibling()], db }
    }

    pub(crate) fn open(&self, cfg: Config) -> Result<Store, Error> {
        let b = self.db.clone();
        Store::open_with_backend(move || b.clone(), self.journal.clone(), cfg)
    }

    /// Every write (database and journal) fails while set.
    pub(crate) fn fail(&self, on: bool) {
        self.db.fail.store(on, Ordering::SeqCst);
        self.journal[0].fail.store(on, Ordering::SeqCst);
    }
}

pub(crate) fn faulty_store(cfg: Config) -> (Store, Rig) {
    let rig = Rig::new();
    (rig.open(cfg).unwrap(), rig)
}
