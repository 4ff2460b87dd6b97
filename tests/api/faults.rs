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

fn eventual(flush: std::time::Duration) -> Config {
    let mut b = Config::builder();
    b.sweep_interval(None).durability(cloakroom::Durability::Eventual).flush_interval(flush);
    b.build().unwrap()
}

/// Defect 6: an Eventual create whose commit fails must not stay visible from
/// the cache (validate succeeding, update saying NotFound, a restart forgetting it).
#[test]
fn an_eventual_create_whose_commit_failed_is_forgotten_and_counted() {
    let (store, backend) = faulty_store(eventual(std::time::Duration::from_secs(1)));
    backend.fail.store(true, Ordering::SeqCst);
    let lost = store.create(NewSession::new("alice")).unwrap(); // acknowledged on enqueue
    assert!(store.flush().is_err(), "the batch after it fails too");
    backend.fail.store(false, Ordering::SeqCst);
    assert!(matches!(store.validate(&lost.token.to_string()), Err(Error::NotFound)));
    assert!(store.stats().lost_eventual_writes >= 1);
    assert!(store.list_user("alice").unwrap().is_empty());
}

/// Defect 4: after a failed durable commit the writer neither spins (reopen,
/// fail, reopen...) nor keeps serving what redb dropped with the handle.
#[test]
fn a_failed_commit_drops_unflushed_state_and_the_writer_backs_off() {
    // A 1 ms flush interval: a writer that kept its flush deadline after a
    // failure would retry in a tight loop.
    let (store, backend) = faulty_store(eventual(std::time::Duration::from_millis(1)));
    let durable = store.create(NewSession::new("bob")).unwrap();
    store.flush().unwrap();
    let unflushed = store.create(NewSession::new("bob")).unwrap();
    // Applied (committed without fsync) but not durable:
    store.update_data(durable.session.id(), b"unflushed".to_vec()).unwrap();
    backend.fail.store(true, Ordering::SeqCst);
    assert!(store.flush().is_err());
    let failed = store.stats().failed_commits;
    for _ in 0..5 {
        assert!(store.flush().is_err());
    }
    let extra = store.stats().failed_commits - failed;
    assert!(extra <= 5, "the writer retried on its own {extra} times for 5 calls");
    backend.fail.store(false, Ordering::SeqCst);
    // What redb dropped is not served from the cache.
    let d = store.validate(&durable.token.to_string()).unwrap();
    let u = store.validate(&unflushed.token.to_string());
    assert_eq!(store.stats().sessions_stored, Some(1), "redb dropped the unflushed create with the handle");
    assert!(matches!(u, Err(Error::NotFound)), "a dropped create was served from the cache");
    assert_eq!(d.data(), b"", "a dropped update was served from the cache");
}

/// Defect 7: revoking an uncached session while its row cannot be read still
/// refuses it once the disk recovers (fail closed).
#[test]
fn a_revoke_during_a_fault_refuses_an_uncached_session_after_recovery() {
    let backend = Faulty::default();
    let b = backend.clone();
    let cfg = || {
        let mut c = Config::builder();
        c.sweep_interval(None);
        c.build().unwrap()
    };
    let token = {
        let s = Store::open_with_backend(move || b.clone(), cfg()).unwrap();
        let t = s.create(NewSession::new("carol")).unwrap();
        s.close().unwrap();
        t
    };
    let b = backend.clone();
    let store = Store::open_with_backend(move || b.clone(), cfg()).unwrap(); // nothing cached
    backend.fail.store(true, Ordering::SeqCst);
    // A failed commit drops the database handle; with reads failing too, the
    // revoke's lookup of the (uncached) row cannot reopen it.
    assert!(store.create(NewSession::new("dave")).is_err());
    backend.fail_reads.store(true, Ordering::SeqCst);
    assert!(matches!(store.revoke(token.session.id()), Err(Error::Storage(_))));
    backend.fail.store(false, Ordering::SeqCst);
    backend.fail_reads.store(false, Ordering::SeqCst);
    assert!(matches!(store.validate(&token.token.to_string()), Err(Error::Revoked)));
    assert!(store.list_user("carol").unwrap().is_empty());
    store.revoke(token.session.id()).unwrap(); // the retry persists it
    assert!(store.validate(&token.token.to_string()).is_err());
}
