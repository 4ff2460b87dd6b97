//! Storage faults: a redb backend that fails writes on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cloakroom::{Config, Error, NewSession, StorageErrorKind, Store};
use redb::StorageBackend;
use redb::backends::InMemoryBackend;

/// Shared in-memory storage whose writes and syncs fail while `fail` is set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Faulty {
    inner: Arc<InMemoryBackend>,
    pub(crate) fail: Arc<AtomicBool>,
    pub(crate) reads: Arc<AtomicU64>,
}

impl Faulty {
    fn check(&self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "injected: disk full"));
        }
        Ok(())
    }
}

impl StorageBackend for Faulty {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
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

pub(crate) fn faulty_store(cfg: Config) -> (Store, Faulty) {
    let backend = Faulty::default();
    let b = backend.clone();
    (Store::open_with_backend(move || b.clone(), cfg).unwrap(), backend)
}

fn storage_kind<T: std::fmt::Debug>(r: Result<T, Error>) -> StorageErrorKind {
    match r {
        Err(Error::Storage(e)) => e.kind(),
        other => panic!("expected a storage error, got {other:?}"),
    }
}

#[test]
fn failed_commits_report_storage_errors_fail_closed_and_recover() {
    let mut b = Config::builder();
    b.sweep_interval(None);
    let (store, backend) = faulty_store(b.build().unwrap());
    let keep = store.create(NewSession::new("alice").data(b"v1".to_vec())).unwrap();
    let victim = store.create(NewSession::new("alice")).unwrap();
    let before = store.stats().sessions_stored;

    backend.fail.store(true, Ordering::SeqCst);
    // A create fails and leaves nothing behind.
    let k = storage_kind(store.create(NewSession::new("bob")));
    assert!(matches!(k, StorageErrorKind::Commit | StorageErrorKind::Io), "{k:?}");
    // An update fails and the old data stays.
    assert!(matches!(store.update_data(keep.session.id(), b"v2".to_vec()), Err(Error::Storage(_))));
    // A revoke fails to persist, but the session is refused at once (fail closed).
    assert!(matches!(store.revoke(victim.session.id()), Err(Error::Storage(_))));
    assert!(matches!(store.validate(&victim.token.to_string()), Err(Error::Revoked)));
    assert!(store.stats().failed_commits >= 3);

    // The fault clears: the store reopens the database and carries on.
    backend.fail.store(false, Ordering::SeqCst);
    let bob = store.create(NewSession::new("bob")).unwrap();
    store.validate(&bob.token.to_string()).unwrap();
    let s = store.validate(&keep.token.to_string()).unwrap();
    assert_eq!(s.data(), b"v1", "the failed update is not visible");
    assert!(matches!(store.validate(&victim.token.to_string()), Err(Error::Revoked)), "still refused");
    store.revoke(victim.session.id()).unwrap(); // retry persists it
    assert_eq!(store.stats().sessions_stored, before.map(|n| n + 1 - 1)); // +bob, -victim
    assert_eq!(store.list_user("bob").unwrap().len(), 1);
}

#[test]
fn a_failed_batch_fails_every_waiting_caller_and_no_one_else() {
    let mut b = Config::builder();
    b.sweep_interval(None);
    let (store, backend) = faulty_store(b.build().unwrap());
    backend.fail.store(true, Ordering::SeqCst);
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                s.spawn({
                    let store = &store;
                    move || store.create(NewSession::new(format!("u{i}")))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|r| matches!(r, Err(Error::Storage(_)))));
    backend.fail.store(false, Ordering::SeqCst);
    assert_eq!(store.stats().sessions_stored, Some(0), "nothing half-written");
    store.create(NewSession::new("after")).unwrap();
    assert_eq!(store.stats().sessions_stored, Some(1));
}
