use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cloakroom::{Config, Durability, NewSession, Store};

/// After `revoke` returns, no validate on any thread succeeds.
#[test]
fn no_validate_succeeds_after_revoke_returns() {
    let store = super::common::open(Config::default());
    let violations = AtomicUsize::new(0);
    for round in 0..200 {
        let issued = store.create(NewSession::new(format!("u{round}"))).unwrap();
        let token = issued.token.to_string();
        let revoked = AtomicBool::new(false);
        let barrier = Barrier::new(5);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    barrier.wait();
                    let mut after = 0;
                    while after < 50 {
                        let was_revoked = revoked.load(Ordering::SeqCst);
                        let ok = store.validate(&token).is_ok();
                        if was_revoked {
                            after += 1;
                            if ok {
                                violations.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                });
            }
            barrier.wait();
            // Let validators warm the cache for a moment, then revoke.
            for _ in 0..(round % 7) * 100 {
                std::hint::spin_loop();
            }
            store.revoke(issued.session.id()).unwrap();
            revoked.store(true, Ordering::SeqCst);
        });
    }
    assert_eq!(violations.load(Ordering::SeqCst), 0);
}

/// Many threads creating at once share commits (group commit) and lose nothing.
#[test]
fn concurrent_creates_are_all_stored_and_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.redb"), Config::default()).unwrap();
    let tokens = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for t in 0..16 {
            let store = &store;
            let tokens = &tokens;
            sc.spawn(move || {
                for i in 0..50 {
                    let tok = store.create(NewSession::new(format!("t{t}-{i}"))).unwrap().token.to_string();
                    tokens.lock().unwrap().push(tok);
                }
            });
        }
    });
    store.checkpoint().unwrap();
    let st = store.stats();
    assert_eq!(st.sessions_stored, Some(800));
    assert!(st.durable_commits < 800, "expected group commit, got {} commits for 800 creates", st.durable_commits);
    for t in tokens.lock().unwrap().iter() {
        store.validate(t).unwrap();
    }
}

/// Eventual creates are visible at once and durable after close.
#[test]
fn eventual_creates_from_many_threads() {
    let mut b = Config::builder();
    b.durability(Durability::Eventual);
    let store = super::common::open(b.build().unwrap());
    std::thread::scope(|sc| {
        for t in 0..8 {
            let store = &store;
            sc.spawn(move || {
                for i in 0..100 {
                    let tok = store.create(NewSession::new(format!("t{t}-{i}"))).unwrap().token.to_string();
                    store.validate(&tok).unwrap();
                }
            });
        }
    });
    store.flush().unwrap();
    store.checkpoint().unwrap();
    // Every session is stored (a Redis-backed store does not count them:
    // each user's listing is checked instead).
    if crate::REDIS {
        let listed: usize = (0..8)
            .flat_map(|t| (0..100).map(move |i| format!("t{t}-{i}")))
            .map(|u| store.list_user(&u).unwrap().len())
            .sum();
        assert_eq!(listed, 800);
    } else {
        assert_eq!(store.stats().sessions_stored, Some(800));
    }
}
