//! A damaged or tampered database file never authenticates anyone as someone
//! else (issue 10): every stored row carries a tag under a key derived from the
//! server key, checked on every read.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use cloakroom::{Config, Error, Event, ManualClock, NewSession, ReadOnlyStore, Scope, StorageErrorKind, Store};
use redb::{ReadableDatabase as _, TableDefinition};

use super::common::config;

/// Format 3: session number → (id ‖ record ‖ tag).
const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions_v3");
const KEY: [u8; 32] = [5; 32];

fn cfg() -> Config {
    let mut b = Config::builder();
    b.server_key(&KEY).sweep_interval(None).session_ttl(std::time::Duration::from_secs(30 * 86_400));
    b.idle_timeout(None);
    b.build().unwrap()
}

/// (token, user, data) of `n` sessions written to `path` and closed cleanly.
fn populate(path: &Path, n: usize) -> Vec<(String, String, Vec<u8>)> {
    let store = Store::open(path, cfg()).unwrap();
    let out = (0..n)
        .map(|i| {
            let user = format!("{}{i}", if i % 2 == 0 { 'd' } else { 't' });
            let data = format!("data of {user}").into_bytes();
            let s = store.create(NewSession::new(user.clone()).data(data.clone())).unwrap();
            (s.token.to_string(), user, data)
        })
        .collect();
    store.close().unwrap();
    out
}

/// xorshift64*: a fixed, seeded stream (reproducible failures).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn bit_flips_anywhere_in_the_file_never_serve_a_wrong_answer() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.redb");
    let sessions = populate(&clean, 300);
    let original = std::fs::read(&clean).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut opened, mut refused, mut served, mut failed) = (0, 0, 0, 0);
    for copy in 0..300 {
        let path = dir.path().join(format!("c{copy}.redb"));
        let mut bytes = original.clone();
        let flips = 1 + rng.next() % 16;
        for _ in 0..flips {
            let bit = rng.next() % (bytes.len() as u64 * 8);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        std::fs::write(&path, &bytes).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let store = match Store::open(&path, cfg()) {
                Ok(s) => s,
                Err(Error::Storage(_)) => return (false, 0, 0),
                Err(e) => panic!("copy {copy}: untyped refusal {e:?}"),
            };
            let (mut ok, mut err) = (0, 0);
            for (token, user, data) in &sessions {
                match store.validate(token) {
                    Ok(s) => {
                        assert_eq!(s.user(), user, "copy {copy}: a token validated as another user");
                        assert_eq!(s.data(), &data[..], "copy {copy}: a session served damaged data");
                        ok += 1;
                    }
                    Err(_) => err += 1,
                }
            }
            let _ = store.close();
            (true, ok, err)
        }));
        let (was_opened, ok, err) = outcome.unwrap_or_else(|p| {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("copy {copy}: panicked: {msg:?}")
        });
        if was_opened {
            opened += 1
        } else {
            refused += 1
        }
        served += ok;
        failed += err;
        let _ = std::fs::remove_file(&path);
        for p in Store::journal_paths(&path) {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_file(Store::server_key_path(&path));
    }
    eprintln!("300 damaged copies: {opened} opened, {refused} refused; {served} correct answers, {failed} refusals");
    assert!(opened > 0 && served > 0, "the test must reach the read path");
}

/// The number and row of the session whose row starts with `id`.
fn find(db: &redb::Database, id: &[u8; 16]) -> (u64, Vec<u8>) {
    let r = db.begin_read().unwrap();
    let t = r.open_table(SESSIONS).unwrap();
    let found = redb::ReadableTable::iter(&t)
        .unwrap()
        .map(|row| row.unwrap())
        .find(|(_, v)| v.value().starts_with(id))
        .map(|(k, v)| (k.value(), v.value().to_vec()));
    found.expect("row present")
}

fn rewrite_row(path: &Path, id: &[u8; 16], f: impl FnOnce(&mut Vec<u8>)) {
    let db = redb::Database::create(path).unwrap();
    let (n, mut row) = find(&db, id);
    f(&mut row);
    let w = db.begin_write().unwrap();
    w.open_table(SESSIONS).unwrap().insert(n, row.as_slice()).unwrap();
    w.commit().unwrap();
}

fn raw_row(path: &Path, id: &[u8; 16]) -> Vec<u8> {
    find(&redb::Database::create(path).unwrap(), id).1
}

fn replace(row: &mut [u8], from: &[u8], to: &[u8]) {
    let at = row.windows(from.len()).position(|w| w == from).expect("field present");
    row[at..at + to.len()].copy_from_slice(to);
}

#[test]
fn rewriting_a_rows_user_without_the_key_is_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.redb");
    let store = Store::open(&path, cfg()).unwrap();
    let d = store.create(NewSession::new("d161").data(b"mine".to_vec())).unwrap();
    let t = store.create(NewSession::new("t161").data(b"theirs".to_vec())).unwrap();
    let other = store.create(NewSession::new("x999")).unwrap();
    store.close().unwrap();
    let (d_id, t_id) = (*d.session.id().as_bytes(), *t.session.id().as_bytes());

    // A valid encoding with another user in it, tag left as it was.
    rewrite_row(&path, &d_id, |row| replace(row, b"d161", b"t161"));
    let events = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&events);
    let mut b = Config::builder();
    b.server_key(&KEY).sweep_interval(None).on_event(move |e| seen.lock().push(e.clone()));
    let store = Store::open(&path, b.build().unwrap()).unwrap();
    match store.validate(&d.token.to_string()) {
        Err(Error::Storage(e)) => assert_eq!(e.kind(), StorageErrorKind::Corrupt),
        other => panic!("a re-pointed row was served: {other:?}"),
    }
    assert!(store.stats().corrupt_rows >= 1);
    assert!(events.lock().contains(&Event::CorruptRow { session: d.session.id() }));
    // The rest of the store keeps serving.
    assert_eq!(store.validate(&t.token.to_string()).unwrap().user(), "t161");
    assert_eq!(store.validate(&other.token.to_string()).unwrap().user(), "x999");
    store.close().unwrap();

    // Copying another user's whole row (tag included) under this session's
    // number: refused too (the tag covers the key, and the row names its id).
    let theirs = raw_row(&path, &t_id);
    rewrite_row(&path, &d_id, |row| *row = theirs);
    let store = Store::open(&path, cfg()).unwrap();
    assert!(store.validate(&d.token.to_string()).is_err());
    // The copy names t161's id; it never takes over t161's own sound row.
    assert_eq!(store.validate(&t.token.to_string()).unwrap().user(), "t161");
    store.close().unwrap();

    // `verify` finds the row; the rest is clean.
    let ro = ReadOnlyStore::open_with_server_key(&path, &KEY).unwrap();
    let report = ro.verify().unwrap();
    let sessions = report.tables.iter().find(|t| t.table == "sessions").unwrap();
    assert_eq!((sessions.rows, sessions.bad), (3, 1), "{report:?}");
}

#[test]
fn verify_reports_nothing_on_a_clean_file_and_needs_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.redb");
    populate(&path, 20);
    let report = ReadOnlyStore::open_with_server_key(&path, &KEY).unwrap().verify().unwrap();
    assert_eq!(report.bad_rows(), 0, "{report:?}");
    assert_eq!(report.tables.iter().find(|t| t.table == "sessions").unwrap().rows, 20);
    // Under another key every session row fails.
    let wrong = ReadOnlyStore::open_with_server_key(&path, &[6; 32]).unwrap().verify().unwrap();
    assert!(wrong.bad_rows() >= 20, "{wrong:?}");
    // Without a key file (the key came from config), verify says what it needs.
    assert!(!Store::server_key_path(&path).exists());
    assert!(matches!(ReadOnlyStore::open(&path).unwrap().verify(), Err(Error::Config(_))));
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
