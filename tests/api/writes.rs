//! Write-path defects found by reading the writer: acknowledged writes that
//! could be lost or dodged. Each test failed before its fix.

use std::sync::{Arc, Barrier};

use cloakroom::{Config, Durability, Error, ManualClock, NewSession, Scope, Store};

use super::common::{config, store};

/// Defect 1: an `update_data` that returned `Ok` while a rotate was in flight
/// must not be lost: rotation carries the stored row's latest data and version.
#[test]
fn an_update_racing_a_rotate_is_never_lost() {
    let (s, _clock) = store();
    for round in 0..300 {
        let issued = s.create(NewSession::new("alice").data(b"v1".to_vec())).unwrap();
        let (id, token) = (issued.session.id(), issued.token.to_string());
        s.validate(&token).unwrap(); // cached
        let barrier = Barrier::new(2);
        let data = format!("round {round}").into_bytes();
        let (updated, rotated) = std::thread::scope(|sc| {
            let u = sc.spawn(|| {
                barrier.wait();
                s.update_data(id, data.clone())
            });
            let r = sc.spawn(|| {
                barrier.wait();
                s.rotate(&token)
            });
            (u.join().unwrap(), r.join().unwrap())
        });
        let rotated = rotated.unwrap();
        let now = s.validate(&rotated.token.to_string()).unwrap();
        if let Ok(v) = updated {
            assert_eq!(now.data(), &data[..], "round {round}: an acknowledged update was lost by rotate");
            assert_eq!(now.version(), v);
        }
    }
}

/// Defect 2: after a rotation, revoking the id a devices page showed (the old
/// one) kills the session it became.
#[test]
fn revoking_the_id_shown_before_a_rotation_kills_the_rotated_session() {
    let (s, _clock) = store();
    let issued = s.create(NewSession::new("alice")).unwrap();
    let shown = s.list_user("alice").unwrap()[0].id();
    let rotated = s.rotate(&issued.token.to_string()).unwrap();
    assert_eq!(rotated.session.id(), shown, "the id stays for the session's life");
    s.revoke(shown).unwrap();
    assert!(matches!(s.validate(&rotated.token.to_string()), Err(Error::Revoked)));
    assert!(s.list_user("alice").unwrap().is_empty());
}

/// Defect 2, concurrently: an admin revoke queued behind a rotate still wins.
#[test]
fn a_revoke_racing_a_rotate_always_kills_the_session() {
    let (s, _clock) = store();
    for _ in 0..200 {
        let issued = s.create(NewSession::new("bob")).unwrap();
        let (id, token) = (issued.session.id(), issued.token.to_string());
        let barrier = Barrier::new(2);
        let rotated = std::thread::scope(|sc| {
            let r = sc.spawn(|| {
                barrier.wait();
                s.rotate(&token)
            });
            sc.spawn(|| {
                barrier.wait();
                s.revoke(id).unwrap();
            });
            r.join().unwrap()
        });
        if let Ok(r) = rotated {
            assert!(s.validate(&r.token.to_string()).is_err(), "a revoked session survived through rotate");
        }
        assert!(s.validate(&token).is_err());
    }
    assert!(s.list_user("bob").unwrap().is_empty());
}

/// Rotation kills refresh tokens issued before it, and the family's counter
/// goes on (a restarted counter would mint the old tokens again).
#[test]
fn refresh_tokens_from_before_a_rotation_stay_dead() {
    let (s, _clock) = store();
    let t = s.create(NewSession::new("carol")).unwrap().token.to_string();
    let before = s.issue_tokens(&t).unwrap();
    let rotated = s.rotate(&t).unwrap().token.to_string();
    assert!(matches!(s.verify_access(&before.access), Err(Error::Revoked)), "the old serial's JWTs die");
    let after = s.issue_tokens(&rotated).unwrap();
    assert_ne!(after.refresh.to_string(), before.refresh.to_string());
    assert!(matches!(s.refresh(&before.refresh.to_string()), Err(Error::NotFound)));
    // Not a reuse signal: the rotated session lives on.
    s.refresh(&after.refresh.to_string()).unwrap();
    s.validate(&rotated).unwrap();
}

/// Defect 8: two concurrent `close()` calls both wait for the one final flush.
#[test]
fn concurrent_closes_both_wait_for_the_final_flush() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let clock = ManualClock::fixed();
        let mut b = Config::builder();
        b.durability(Durability::Eventual).sweep_interval(None).clock(clock.clone());
        let s = Store::open(&path, b.build().unwrap()).unwrap();
        let tokens: Vec<String> =
            (0..500).map(|i| s.create(NewSession::new(format!("u{i}"))).unwrap().token.to_string()).collect();
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<Result<(), Error>> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let (s, barrier) = (s.clone(), Arc::clone(&barrier));
                    sc.spawn(move || {
                        barrier.wait();
                        s.close()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(Result::is_ok), "round {round}: {results:?}");
        drop(s);
        let s = Store::open(&path, config(&clock)).unwrap();
        for t in &tokens {
            s.validate(t).unwrap_or_else(|e| panic!("round {round}: an acknowledged create was lost: {e:?}"));
        }
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

/// Defect 5: one corrupt row reached by a sweep or a user-wide revoke fails
/// only what read it; the rest of the batch (and the store) goes on.
#[test]
fn a_corrupt_row_fails_only_the_op_that_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::fixed();
    let (short, doomed_id) = {
        let s = Store::open(&path, config(&clock)).unwrap();
        let short: Vec<String> = (0..3)
            .map(|_| {
                s.create(NewSession::new("eve").ttl(std::time::Duration::from_secs(60))).unwrap().token.to_string()
            })
            .collect();
        let doomed = s.create(NewSession::new("eve").ttl(std::time::Duration::from_secs(60))).unwrap();
        s.close().unwrap();
        (short, doomed.session.id())
    };
    {
        // Format 3: number → id ‖ record ‖ tag. Keep the id, break the rest.
        let def = redb::TableDefinition::<u64, &[u8]>::new("sessions_v3");
        let db = redb::Database::create(&path).unwrap();
        let n = {
            let r = redb::ReadableDatabase::begin_read(&db).unwrap();
            let t = r.open_table(def).unwrap();
            let found = redb::ReadableTable::iter(&t)
                .unwrap()
                .map(|row| row.unwrap())
                .find(|(_, v)| v.value().starts_with(doomed_id.as_bytes()))
                .map(|(k, _)| k.value());
            found.unwrap()
        };
        let mut garbage = doomed_id.as_bytes().to_vec();
        garbage.extend_from_slice(&[9u8, 1, 2, 3]);
        let w = db.begin_write().unwrap();
        w.open_table(def).unwrap().insert(n, garbage.as_slice()).unwrap();
        w.commit().unwrap();
    }
    let s = Store::open(&path, config(&clock)).unwrap();
    clock.advance(std::time::Duration::from_secs(120));
    let report = s.sweep().unwrap();
    assert_eq!((report.sessions_removed(), report.corrupt_rows), (3, 1));
    for t in &short {
        assert!(s.validate(t).is_err());
    }
    // The store keeps serving; a user-wide revoke removes the undecodable row too.
    let live = s.create(NewSession::new("eve")).unwrap();
    assert_eq!(s.revoke_user("eve", Scope::All).unwrap(), 1);
    assert!(s.validate(&live.token.to_string()).is_err());
    s.create(NewSession::new("frank")).unwrap();
}

/// Defect 10: pruning takes only the entries that are due (by an in-memory
/// time index, not a scan of the `revoked` table) and prunes not-before
/// entries once every access token they could cut off has expired.
#[test]
fn pruning_takes_what_is_due_and_not_before_entries_too() {
    let (s, clock) = store();
    let first: Vec<_> = (0..50).map(|i| s.create(NewSession::new(format!("a{i}"))).unwrap().session.id()).collect();
    for id in &first {
        s.revoke(*id).unwrap();
    }
    s.logout_everywhere("grace").unwrap();
    clock.advance(std::time::Duration::from_secs(200));
    let second: Vec<_> = (0..30).map(|i| s.create(NewSession::new(format!("b{i}"))).unwrap().session.id()).collect();
    for id in &second {
        s.revoke(*id).unwrap();
    }
    assert_eq!((s.stats().revoked_serials, s.stats().not_before_users), (80, 1));
    // Horizon = access TTL 300 s + leeway 30 s: the first batch is due at 330 s.
    clock.advance(std::time::Duration::from_secs(131));
    assert_eq!(s.prune_revocations().unwrap().0, 50);
    assert_eq!((s.stats().revoked_serials, s.stats().not_before_users), (30, 0));
    assert_eq!(s.prune_revocations().unwrap().0, 0, "nothing else is due");
    clock.advance(std::time::Duration::from_secs(200));
    assert_eq!(s.prune_revocations().unwrap().0, 30);
    for id in first.iter().chain(&second) {
        assert!(s.session(*id).unwrap().is_none(), "pruned sessions stay dead");
    }
}
