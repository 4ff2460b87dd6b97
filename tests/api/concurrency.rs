use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cloakroom::{Config, Durability, Error, ManualClock, NewSession, Scope, Store};

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

/// Defect 3: a session whose create returned before `revoke_user` or
/// `logout_everywhere` was called never survives it.
#[test]
fn creates_that_returned_before_a_user_wide_revocation_never_survive_it() {
    for eventual in [false, true] {
        let clock = ManualClock::fixed();
        let mut b = Config::builder();
        b.clock(clock.clone()).sweep_interval(None);
        if eventual {
            b.durability(Durability::Eventual);
        }
        let s = super::common::open(b.build().unwrap());
        for round in 0..100 {
            let user = format!("dave{round}");
            let done: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());
            let stop = std::sync::atomic::AtomicBool::new(false);
            let before: Vec<String> = std::thread::scope(|sc| {
                for _ in 0..2 {
                    sc.spawn(|| {
                        // Bounded, so an Eventual flood never fills the queue.
                        for _ in 0..64 {
                            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                break;
                            }
                            match s.create(NewSession::new(user.clone())) {
                                Ok(i) => done.lock().push(i.token.to_string()),
                                Err(Error::Busy) => std::thread::yield_now(), // queue full: back off
                                Err(e) => panic!("{e:?}"),
                            }
                        }
                    });
                }
                while done.lock().len() < 5 {
                    std::thread::yield_now();
                }
                // (the creators stop by themselves after 64 each)
                let before = done.lock().clone();
                if round % 2 == 0 {
                    s.revoke_user(&user, Scope::All).unwrap();
                } else {
                    s.logout_everywhere(&user).unwrap();
                }
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                before
            });
            for t in &before {
                assert!(s.validate(t).is_err(), "eventual={eventual} round {round}: a session survived");
            }
        }
    }
}
