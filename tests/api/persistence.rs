use std::sync::{Arc, Barrier};

use cloakroom::{Config, Durability, Error, ManualClock, NewSession, Scope, StorageErrorKind, Store};

use super::common::{HOUR, MIN, config};

fn kind(r: Result<Store, Error>) -> StorageErrorKind {
    match r {
        Err(Error::Storage(e)) => e.kind(),
        other => panic!("expected a storage error, got {other:?}"),
    }
}

#[test]
fn sessions_revocations_and_expiry_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::fixed();
    let (live, revoked, rotated_old, rotated_new, short, user_tokens);
    {
        let s = Store::open(&path, config(&clock)).unwrap();
        live = s.create(NewSession::new("a").data(b"keep".to_vec())).unwrap();
        revoked = s.create(NewSession::new("a")).unwrap();
        s.revoke(revoked.session.id()).unwrap();
        let r = s.create(NewSession::new("b")).unwrap();
        rotated_old = r.token.to_string();
        rotated_new = s.rotate(&rotated_old).unwrap().token.to_string();
        short = s.create(NewSession::new("c").ttl(5 * MIN)).unwrap().token.to_string();
        user_tokens = [s.create(NewSession::new("d")).unwrap(), s.create(NewSession::new("d")).unwrap()];
        s.revoke_user("d", Scope::All).unwrap();
        s.close().unwrap();
    }
    clock.advance(6 * MIN);
    let s = Store::open(&path, config(&clock)).unwrap();
    let v = s.validate(&live.token.to_string()).unwrap();
    assert_eq!((v.user(), v.data(), v.serial()), ("a", &b"keep"[..], live.session.serial()));
    // Revoked before the restart: no secret hash is kept across it, so NotFound.
    assert!(matches!(s.validate(&revoked.token.to_string()), Err(Error::NotFound)));
    assert!(matches!(s.validate(&rotated_old), Err(Error::NotFound)));
    assert!(s.validate(&rotated_new).is_ok());
    assert!(matches!(s.validate(&short), Err(Error::Expired)));
    for t in &user_tokens {
        assert!(matches!(s.validate(&t.token.to_string()), Err(Error::NotFound)));
    }
    // Serials keep growing after reopen.
    let n = s.create(NewSession::new("e")).unwrap();
    assert!(n.session.serial() > user_tokens[1].session.serial());
    assert_eq!(s.stats().revoked_serials, 4);
    drop(s);
    clock.advance(HOUR);
    let s = Store::open(&path, config(&clock)).unwrap();
    assert!(matches!(s.validate(&live.token.to_string()), Err(Error::Expired)));
}

#[test]
fn last_seen_is_persisted_with_granularity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::fixed();
    let t;
    {
        let s = Store::open(&path, config(&clock)).unwrap();
        t = s.create(NewSession::new("a")).unwrap().token.to_string();
        clock.advance(8 * MIN);
        s.validate(&t).unwrap(); // moves last_seen by > 1 min: written
    }
    // 8 + 9 = 17 min after creation; alive only if the touch at 8 min was persisted.
    clock.advance(9 * MIN);
    let s = Store::open(&path, config(&clock)).unwrap();
    assert!(s.validate(&t).is_ok());
}

#[test]
fn eventual_writes_are_durable_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::fixed();
    let mut b = cloakroom::Config::builder();
    b.clock(clock.clone()).durability(cloakroom::Durability::Eventual);
    let toks: Vec<String> = {
        let s = Store::open(&path, b.build().unwrap()).unwrap();
        (0..100).map(|i| s.create(NewSession::new(format!("u{i}"))).unwrap().token.to_string()).collect()
    };
    let s = Store::open(&path, b.build().unwrap()).unwrap();
    for t in &toks {
        s.validate(t).unwrap();
    }
}

#[test]
fn second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::fixed();
    let s = Store::open(&path, config(&clock)).unwrap();
    assert_eq!(kind(Store::open(&path, config(&clock))), StorageErrorKind::AlreadyOpen);
    s.close().unwrap();
    Store::open(&path, config(&clock)).unwrap();
}

#[test]
fn non_redb_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let clock = ManualClock::fixed();
    let k = kind(Store::open(&path, config(&clock)));
    assert_eq!(k, StorageErrorKind::NotCloakroom);
    assert!(std::fs::read(&path).unwrap() == content, "file was modified");
    assert!(!Store::server_key_path(&path).exists(), "a failed open must not leave a key file");
}

#[test]
fn corrupt_store_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::fixed();
    {
        let s = Store::open(&path, config(&clock)).unwrap();
        for i in 0..50 {
            s.create(NewSession::new(format!("u{i}"))).unwrap();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    // Damage the header (magic number and god byte region).
    for b in &mut bytes[0..64] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let k = kind(Store::open(&path, config(&clock)));
    // The magic number is gone, so redb no longer recognises the file at all.
    assert!(matches!(k, StorageErrorKind::Corrupt | StorageErrorKind::NotCloakroom), "{k:?}");
    assert!(std::fs::read(&path).unwrap() == bytes, "file was modified");
}

#[test]
fn foreign_redb_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<&str, u64>::new("orders")).unwrap().insert("x", 1).unwrap();
        w.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    assert_eq!(kind(Store::open(&path, config(&ManualClock::fixed()))), StorageErrorKind::NotCloakroom);
    assert!(std::fs::read(&path).unwrap() == before, "file was modified");
}

#[test]
fn newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::fixed();
    Store::open(&path, config(&clock)).unwrap().close().unwrap();
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap().insert("format_version", 99).unwrap();
        w.commit().unwrap();
    }
    assert_eq!(kind(Store::open(&path, config(&clock))), StorageErrorKind::NewerFormat);
}

/// Issue 25 item 2, the reported case: a session whose storage number equals
/// the journal's next seq, rotated 33 times (each rotation moves its expiry
/// row: the number right after a timestamp), then a clean close. The segment
/// is reused with those frames still in it; every later open must succeed.
#[test]
fn a_session_rotated_33_times_whose_number_is_the_next_seq_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::fixed();
    Store::open(&path, config(&clock)).unwrap().close().unwrap();
    // White-box: the next session gets number (serial) 40.
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap().insert("next_serial", 40).unwrap();
        w.commit().unwrap();
    }
    let s = Store::open(&path, config(&clock)).unwrap();
    let t = s.create(NewSession::new("a")).unwrap();
    assert_eq!(t.session.serial(), 40);
    let mut token = t.token.to_string();
    for _ in 0..33 {
        token = s.rotate(&token).unwrap().token.to_string();
    }
    // One journal record per call: fill up to seq 39, so the next is 40.
    while s.stats().commits < 39 {
        s.update_data(t.session.id(), b"x".to_vec()).unwrap();
    }
    assert_eq!(s.stats().commits, 39);
    s.close().unwrap();
    for _ in 0..3 {
        let s = Store::open(&path, config(&clock)).unwrap();
        assert_eq!(s.validate(&token).unwrap().data(), b"x");
        s.close().unwrap();
    }
}

/// Issue 25 item 6: a database file restored from an older backup beside its
/// newer journal is refused (never served without the revocation made in
/// between), with an error saying which records are missing and what to copy;
/// the files are left as they are. With the matching file it opens.
#[test]
fn a_database_file_older_than_its_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let backup = dir.path().join("backup.redb");
    let clock = ManualClock::fixed();
    let s = Store::open(&path, config(&clock)).unwrap();
    let victim = s.create(NewSession::new("a")).unwrap();
    s.close().unwrap();
    std::fs::copy(&path, &backup).unwrap(); // the database file only
    let s = Store::open(&path, config(&clock)).unwrap();
    s.revoke(victim.session.id()).unwrap();
    s.close().unwrap();
    let newer = dir.path().join("newer.redb");
    std::fs::copy(&path, &newer).unwrap();
    std::fs::copy(&backup, &path).unwrap();
    let journal: Vec<Vec<u8>> = Store::journal_paths(&path).iter().map(|p| std::fs::read(p).unwrap()).collect();
    let err = Store::open(&path, config(&clock)).expect_err("an old file beside a newer journal opened");
    let Error::Storage(e) = &err else { panic!("{err:?}") };
    assert_eq!(e.kind(), StorageErrorKind::JournalGap, "{err}");
    let why = std::error::Error::source(e).map(ToString::to_string).unwrap_or_default();
    assert!(why.contains("records 2..=2") && why.contains("copied together"), "{why}");
    let after: Vec<Vec<u8>> = Store::journal_paths(&path).iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(journal == after, "the journal was changed");
    // Put back the file that goes with the journal: it opens, the revocation holds.
    std::fs::copy(&newer, &path).unwrap();
    let s = Store::open(&path, config(&clock)).unwrap();
    assert!(s.validate(&victim.token.to_string()).is_err());
}

/// Issue 25 item 7: Eventual creates racing `close()`. Each returns `Ok` (and
/// is then durable) or an error (`Closed`; `Busy` if the one-slot queue stayed
/// full); none is acknowledged and then dropped. The queue holds one job, so
/// at the close most creates wait for room in it, racing its shutdown.
#[test]
fn an_eventual_create_racing_close_is_stored_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::fixed();
    let mut b = config(&clock).to_builder();
    b.durability(cloakroom::Durability::Eventual).sweep_interval(None).write_queue(1);
    let cfg = b.build().unwrap();
    let mut total = 0;
    for round in 0..30 {
        let store = Store::open(&path, cfg.clone()).unwrap();
        let started = std::sync::atomic::AtomicUsize::new(0);
        let tokens: Vec<String> = std::thread::scope(|sc| {
            let workers: Vec<_> = (0..16)
                .map(|w| {
                    let (store, started) = (&store, &started);
                    sc.spawn(move || {
                        let mut mine = Vec::new();
                        loop {
                            match store.create(NewSession::new(format!("r{round}w{w}"))) {
                                Ok(i) => mine.push(i.token.to_string()),
                                Err(Error::Closed) => return mine,
                                Err(Error::Busy) => {}
                                Err(e) => panic!("{e:?}"),
                            }
                            started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            while started.load(std::sync::atomic::Ordering::Relaxed) < 100 {
                std::thread::yield_now();
            }
            store.close().unwrap();
            workers.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let store = Store::open(&path, cfg.clone()).unwrap();
        let lost = tokens.iter().filter(|t| store.validate(t).is_err()).count();
        assert_eq!(lost, 0, "round {round}: {lost} of {} acknowledged creates gone", tokens.len());
        total += tokens.len();
        store.close().unwrap();
    }
    assert!(total > 0);
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
