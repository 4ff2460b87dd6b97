//! What an open does to the files around it: refusals leave nothing behind, the
//! server key file is created only with a new database, read-only opens write
//! nothing, and a format-1 file from the previous version still opens.

use std::path::Path;
use std::time::Duration;

use cloakroom::{Config, Error, ManualClock, NewSession, ReadOnlyStore, StorageErrorKind, Store};

use super::common::{config, storage_kind};

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn hash(path: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(path).unwrap())
}

#[test]
fn a_text_file_is_refused_in_one_phrase_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "shopping list\n- milk\n").unwrap();
    let err = Store::open(&path, config(&ManualClock::fixed())).unwrap_err();
    assert_eq!(err.to_string(), "storage error: not a cloakroom database (left untouched)");
    assert_eq!(files_in(dir.path()), ["notes.txt"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "shopping list\n- milk\n");
    // The same through the read-only open.
    assert_eq!(storage_kind(ReadOnlyStore::open(&path)), StorageErrorKind::NotCloakroom);
    assert_eq!(files_in(dir.path()), ["notes.txt"]);
}

#[test]
fn random_bytes_are_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob.bin");
    let bytes: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(storage_kind(Store::open(&path, config(&ManualClock::fixed()))), StorageErrorKind::NotCloakroom);
    assert_eq!(files_in(dir.path()), ["blob.bin"]);
    assert!(std::fs::read(&path).unwrap() == bytes);
}

#[test]
fn a_directory_gets_its_own_error_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sessions.redb");
    std::fs::create_dir(&sub).unwrap();
    let err = Store::open(&sub, config(&ManualClock::fixed())).unwrap_err();
    assert!(matches!(&err, Error::Storage(s) if s.kind() == StorageErrorKind::Directory), "{err:?}");
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert_eq!(storage_kind(ReadOnlyStore::open(&sub)), StorageErrorKind::Directory);
    assert_eq!(files_in(dir.path()), ["sessions.redb"]);
    assert_eq!(files_in(&sub).len(), 0);
}

#[test]
fn a_failed_open_of_a_new_path_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let cfg = Config::builder().server_key_env("CLOAKROOM_TEST_KEY_THAT_IS_NEVER_SET").build().unwrap();
    assert!(matches!(Store::open(&path, cfg), Err(Error::Config(_))));
    assert_eq!(files_in(dir.path()), Vec::<String>::new());
}

#[test]
fn an_existing_database_without_its_key_file_is_refused_until_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::fixed();
    let token = {
        let s = Store::open(&path, config(&clock)).unwrap();
        let t = s.create(NewSession::new("alice")).unwrap().token.to_string();
        s.close().unwrap();
        t
    };
    let key = Store::server_key_path(&path);
    std::fs::rename(&key, dir.path().join("elsewhere")).unwrap();
    let before = hash(&path);
    match Store::open(&path, config(&clock)) {
        Err(Error::ServerKeyMissing { path: p }) => assert_eq!(p, key),
        other => panic!("expected ServerKeyMissing, got {other:?}"),
    }
    let msg = Store::open(&path, config(&clock)).unwrap_err().to_string();
    assert!(msg.contains(&key.display().to_string()) && msg.contains("restore"), "{msg}");
    assert!(!key.exists(), "refusing must not create a key");
    assert_eq!(hash(&path), before, "refusing must not touch the database");
    // Knowingly starting over: a new key. Rows sealed under the lost key can no
    // longer be authenticated, so the old sessions fail closed; new ones work.
    let mut b = Config::builder();
    b.clock(clock.clone()).replace_lost_server_key();
    let s = Store::open(&path, b.build().unwrap()).unwrap();
    assert!(key.exists());
    // A token issued under the lost key fails its tag before any lookup (and
    // its row, sealed under that key, would fail as corrupt).
    match s.validate(&token) {
        Err(Error::Malformed(cloakroom::Malformed::BadChecksum)) => {}
        other => panic!("a token of the lost key was served: {other:?}"),
    }
    let fresh = s.create(NewSession::new("bob")).unwrap().token.to_string();
    assert_eq!(s.validate(&fresh).unwrap().user(), "bob");
    s.close().unwrap();
    // Restoring the old key brings the old sessions back (and refuses the new one).
    std::fs::rename(dir.path().join("elsewhere"), &key).unwrap();
    let s = Store::open(&path, config(&clock)).unwrap();
    assert_eq!(s.validate(&token).unwrap().user(), "alice");
    assert!(s.validate(&fresh).is_err());
    s.close().unwrap();
}

#[test]
fn racing_opens_of_a_fresh_path_end_with_one_key_that_the_winner_uses() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("s{round}.redb"));
        let barrier = std::sync::Barrier::new(4);
        let refresh: Vec<Option<String>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let cfg = Config::builder().sweep_interval(None).build().unwrap();
                        let store = match Store::open(&path, cfg) {
                            Ok(st) => st,
                            Err(Error::Storage(e)) if e.kind() == StorageErrorKind::AlreadyOpen => return None,
                            Err(e) => panic!("unexpected {e:?}"),
                        };
                        let t = store.create(NewSession::new("u")).unwrap().token.to_string();
                        let r = store.issue_tokens(&t).unwrap().refresh.to_string();
                        store.close().unwrap();
                        Some(r)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Every opener that won (one at a time) used the one key now on disk.
        let store = Store::open(&path, Config::builder().sweep_interval(None).build().unwrap()).unwrap();
        for r in refresh.iter().flatten() {
            store.refresh(r).unwrap();
        }
        assert!(refresh.iter().any(Option::is_some));
        let keys: Vec<String> = files_in(dir.path()).into_iter().filter(|f| f.contains(".key")).collect();
        assert_eq!(keys, [format!("s{round}.redb.key")], "exactly one key file, no temp files");
    }
}

#[test]
fn read_only_opens_change_no_byte_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let s = Store::open(&path, Config::builder().sweep_interval(None).build().unwrap()).unwrap();
        for i in 0..20 {
            s.create(NewSession::new(if i % 2 == 0 { "alice" } else { "bob" })).unwrap();
        }
        let gone = s.create(NewSession::new("alice")).unwrap();
        s.revoke(gone.session.id()).unwrap();
        s.close().unwrap();
    }
    let before = hash(&path);
    let listing = files_in(dir.path());
    let ro = ReadOnlyStore::open(&path).unwrap();
    assert_eq!(ro.sessions_stored().unwrap(), 20, "a revoked session's row is deleted");
    assert_eq!(ro.revoked_serials().unwrap(), 1);
    assert_eq!(ro.list_user("alice", cloakroom::Clock::now(&cloakroom::SystemClock)).unwrap().sessions.len(), 10);
    assert!(!ro.is_scratch().unwrap());
    assert_eq!(ro.keys().unwrap().unwrap().len(), 1);
    drop(ro);
    assert_eq!(hash(&path), before, "a read-only open changed the file");
    assert_eq!(files_in(dir.path()), listing);

    // An empty file stays empty; a missing one is not created.
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(storage_kind(ReadOnlyStore::open(&empty)), StorageErrorKind::NotCloakroom);
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    let missing = dir.path().join("missing.redb");
    assert_eq!(storage_kind(ReadOnlyStore::open(&missing)), StorageErrorKind::Missing);
    assert!(!missing.exists());

    // A file held open read-write by a store is refused, not read half-written.
    let live = Store::open(&path, Config::builder().sweep_interval(None).build().unwrap()).unwrap();
    assert_eq!(storage_kind(ReadOnlyStore::open(&path)), StorageErrorKind::AlreadyOpen);
    live.close().unwrap();
}

#[test]
fn scratch_marks_only_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.redb");
    Store::open(&path, Config::builder().scratch(true).sweep_interval(None).build().unwrap()).unwrap().close().unwrap();
    assert!(ReadOnlyStore::open(&path).unwrap().is_scratch().unwrap());
    let other = dir.path().join("real.redb");
    Store::open(&other, Config::builder().sweep_interval(None).build().unwrap()).unwrap().close().unwrap();
    Store::open(&other, Config::builder().scratch(true).sweep_interval(None).build().unwrap())
        .unwrap()
        .close()
        .unwrap();
    assert!(!ReadOnlyStore::open(&other).unwrap().is_scratch().unwrap(), "an existing file never becomes scratch");
}

/// One line of a fixture's token listing (`tests/fixtures/v*.tokens`):
/// token, user, ip (`-` for none), data or a marker (REVOKED, REFRESH, ...).
struct Listed {
    token: String,
    user: String,
    ip: String,
    data: String,
}

fn listing(name: &str) -> Vec<Listed> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            Listed { token: f[0].into(), user: f[1].into(), ip: f[2].into(), data: f[3].into() }
        })
        .collect()
}

/// A listed live session validates with its user, data and ip.
fn validates_as_listed(store: &Store, l: &Listed) -> cloakroom::Session {
    let s = store.validate(&l.token).unwrap();
    assert_eq!((s.user(), s.data()), (l.user.as_str(), l.data.as_bytes()));
    assert_eq!(s.meta().ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()), l.ip);
    s
}

/// `tests/fixtures/v1.redb` was written by cloakroom 0.1.0 at commit cc9de33
/// (format 1, ips stored as text), with server key [7; 32]; `v1.tokens` lists
/// its tokens, users, ips and data.
#[test]
fn a_format_1_file_opens_and_serves_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.redb");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1.redb"), &path).unwrap();
    assert_eq!(ReadOnlyStore::open(&path).unwrap().format_version().unwrap(), 1);
    let cfg = Config::builder().server_key(&[7; 32]).sweep_interval(None).build().unwrap();
    let store = Store::open(&path, cfg.clone()).unwrap();
    let mut seen = 0;
    for l in listing("v1.tokens") {
        match l.data.as_str() {
            "REVOKED" => assert!(matches!(store.validate(&l.token), Err(Error::NotFound))),
            "REFRESH" => assert_eq!(store.refresh(&l.token).unwrap().refresh.generation(), 2),
            _ => {
                validates_as_listed(&store, &l);
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 3);
    // New records are written in the new format next to the old ones.
    let alice = store.list_user("alice").unwrap();
    assert_eq!(alice.len(), 2);
    store.update_data(alice[0].id(), b"new".to_vec()).unwrap();
    store.close().unwrap();
    assert_eq!(ReadOnlyStore::open_with_server_key(&path, &[7; 32]).unwrap().format_version().unwrap(), 3);
    let store = Store::open(&path, cfg).unwrap();
    let again = store.list_user("alice").unwrap();
    assert_eq!(again[0].data(), b"new");
    assert_eq!(again[0].meta().ip, alice[0].meta().ip);
}

/// `tests/fixtures/v2.redb` was written at commit 408498a (format 2: unsealed
/// rows, journal-less writes) with server key [7; 32]; `v2.tokens` lists its
/// tokens. Opening it migrates it to format 3 (every row sealed, journal
/// beside it) in one durable transaction; every session, revocation, refresh
/// family and not-before cut-off survives, and `verify` finds nothing wrong.
#[test]
fn a_format_2_file_is_migrated_to_sealed_rows_and_serves_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.redb");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v2.redb"), &path).unwrap();
    assert_eq!(ReadOnlyStore::open(&path).unwrap().format_version().unwrap(), 2);
    let cfg =
        Config::builder().server_key(&[7; 32]).sweep_interval(None).reuse(cloakroom::Reuse::Strict).build().unwrap();
    let listed = listing("v2.tokens");
    for round in 0..2 {
        let store = Store::open(&path, cfg.clone()).unwrap();
        let mut seen = 0;
        for l in &listed {
            match l.data.as_str() {
                "REVOKED" => assert!(store.validate(&l.token).is_err(), "{} revived", l.user),
                "REFRESH" if round == 0 => assert_eq!(store.refresh(&l.token).unwrap().refresh.generation(), 2),
                "REFRESH" => assert!(matches!(store.refresh(&l.token), Err(Error::ReuseDetected))),
                _ => {
                    let s = validates_as_listed(&store, l);
                    assert_eq!(s.meta().user_agent.as_deref(), Some("fixture-agent"));
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 3);
        // erin's logout_everywhere cut-off survived the move to the sealed table.
        assert_eq!(store.stats().not_before_users, 1);
        store.close().unwrap();
        let ro = ReadOnlyStore::open_with_server_key(&path, &[7; 32]).unwrap();
        assert_eq!(ro.format_version().unwrap(), 3);
        assert_eq!(ro.verify().unwrap().bad_rows(), 0, "{:?}", ro.verify().unwrap());
    }
}

/// No `Display` of an error repeats a prefix ("I/O error: I/O error: ...").
#[test]
fn error_messages_do_not_repeat_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "x").unwrap();
    let unreadable = dir.path().join("nowhere").join("s.redb");
    let mut messages = vec![
        Store::open(&text, Config::default()).unwrap_err().to_string(),
        Store::open(dir.path(), Config::default()).unwrap_err().to_string(),
        Store::open(&unreadable, Config::default()).unwrap_err().to_string(),
        ReadOnlyStore::open(dir.path().join("missing")).unwrap_err().to_string(),
        Error::ServerKeyMissing { path: "s.redb.key".into() }.to_string(),
    ];
    messages.extend(
        [Error::NotFound, Error::Expired, Error::Revoked, Error::ReuseDetected, Error::Busy, Error::Closed]
            .iter()
            .map(ToString::to_string),
    );
    for m in &messages {
        let parts: Vec<String> = m.split(": ").map(str::to_lowercase).collect();
        for w in parts.windows(2) {
            assert!(!w[1].starts_with(&w[0]), "repeated prefix in {m:?}");
        }
        let words: Vec<&str> = m.split_whitespace().collect();
        for w in words.windows(4) {
            let rest = m.split_once(&w.join(" ")).map_or("", |x| x.1);
            assert!(!rest.contains(&w.join(" ")), "repeated phrase {:?} in {m:?}", w.join(" "));
        }
    }
    assert!(messages[2].starts_with("storage error: I/O error: "), "{}", messages[2]);
}

/// The pre-tag checksum of src/token.rs (tokens issued before the keyed tag):
/// multiply-xorshift over 8-byte words of id ‖ secret. Re-encodes `good` with it.
fn with_legacy_checksum(good: &str) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut raw = e.decode(&good[4..]).unwrap();
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = u64::from(u32::from_le_bytes(*b"crs_")) ^ 48u64.wrapping_mul(K);
    for c in raw[..48].chunks_exact(8) {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(K);
        h ^= h >> 29;
    }
    h ^= h >> 32;
    raw[48..].copy_from_slice(&(h as u32).to_le_bytes());
    format!("crs_{}", e.encode(raw))
}

/// `tests/fixtures/v3.redb` was written at commit 8b4c623 (format 3, session
/// tokens with the unkeyed checksum) with server key [7; 32]; `v3.tokens`
/// lists its tokens. The first open by the keyed-tag version records which
/// serials predate the tag: their old tokens keep working (no forced logout),
/// a rotation hands out a tagged token, and no session created later accepts
/// an untagged one, in this open or the next.
#[test]
fn untagged_tokens_of_a_format_3_file_keep_working_for_its_sessions_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.redb");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v3.redb"), &path).unwrap();
    let clock = ManualClock::new(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_200_000));
    let mut b = Config::builder();
    b.server_key(&[7; 32]).sweep_interval(None).reuse(cloakroom::Reuse::Strict).clock(clock.clone());
    let cfg = b.build().unwrap();
    let listed = listing("v3.tokens");
    let mut later = None;
    for round in 0..2 {
        let store = Store::open(&path, cfg.clone()).unwrap();
        let mut seen = 0;
        for l in &listed {
            let token = l.token.as_str();
            match l.data.as_str() {
                "REVOKED" => assert!(matches!(store.validate(token), Err(Error::NotFound | Error::Revoked))),
                "ROTATED" => {
                    assert!(matches!(store.validate(token), Err(Error::NotFound | Error::Revoked)), "{}", l.user);
                }
                "REFRESH" if round == 0 => assert_eq!(store.refresh(token).unwrap().refresh.generation(), 2),
                "REFRESH" => assert!(matches!(store.refresh(token), Err(Error::ReuseDetected))),
                _ => {
                    validates_as_listed(&store, l);
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 4);
        // A session created by this version: its tagged token works, the same
        // id and secret under the old checksum do not (in this open and the next).
        let fresh = store.create(NewSession::new("frank")).unwrap().token.to_string();
        for t in std::iter::once(&fresh).chain(later.as_ref()) {
            assert!(store.validate(t).is_ok());
            assert!(matches!(store.validate(&with_legacy_checksum(t)), Err(Error::NotFound)));
        }
        later = Some(fresh);
        store.close().unwrap();
    }
    // Rotating an old token hands out a tagged one; the old one is dead.
    let store = Store::open(&path, cfg.clone()).unwrap();
    let bob = &listed.iter().find(|l| l.user == "bob").unwrap().token;
    let rotated = store.rotate(bob).unwrap().token.to_string();
    assert!(matches!(store.validate(bob), Err(Error::Revoked)));
    assert!(matches!(store.validate(&with_legacy_checksum(&rotated)), Err(Error::NotFound)));
    assert_eq!(store.validate(&rotated).unwrap().user(), "bob");
    // Once the last pre-tag session's deadline has passed, an untagged token is
    // refused by its tag, before any lookup.
    clock.advance(Duration::from_secs(101 * 365 * 24 * 3600));
    let alice = &listed[0].token;
    let before = store.stats();
    assert!(matches!(store.validate(alice), Err(Error::Malformed(cloakroom::Malformed::BadChecksum))));
    assert_eq!(store.stats().cache_misses, before.cache_misses);
}

/// `tests/fixtures/j1.redb` with its journal `j1.redb.journal{,.1}` was left by
/// a process killed at commit 3596c07 (journal format 1: frames without an
/// epoch), server key [7; 32]: the database is checkpointed up to seq 83 and
/// the journal holds records 83–86 (dave created, carol revoked, alice's
/// data updated after the checkpoint), followed by stale frames of an
/// earlier use of the segment. `j1.tokens` lists what must hold afterwards.
/// The open replays the old format, then writes the journal in the current one.
#[test]
fn a_journal_written_in_format_1_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j1.redb");
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    for f in ["j1.redb", "j1.redb.journal", "j1.redb.journal.1"] {
        std::fs::copy(format!("{fixtures}/{f}"), dir.path().join(f)).unwrap();
    }
    // The database alone misses acknowledged writes: a read-only open refuses it.
    assert_eq!(storage_kind(ReadOnlyStore::open(&path)), StorageErrorKind::NeedsRecovery);
    let mut b = Config::builder();
    b.server_key(&[7; 32]).sweep_interval(None).idle_timeout(None);
    let cfg = b.build().unwrap();
    let listed = listing("j1.tokens");
    for round in 0..2 {
        let store = Store::open(&path, cfg.clone()).unwrap();
        assert_eq!(store.stats().replayed_records, if round == 0 { 3 } else { 0 });
        for l in &listed {
            match l.data.as_str() {
                "REVOKED" => assert!(store.validate(&l.token).is_err(), "{} revived", l.user),
                _ => {
                    validates_as_listed(&store, l);
                }
            }
        }
        store.close().unwrap();
        ReadOnlyStore::open(&path).unwrap();
    }
}
