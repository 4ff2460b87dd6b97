//! The `cloakroom` binary as a user meets it: which files it refuses to touch,
//! what read-only commands write (nothing), and what its messages say.
#![cfg(feature = "cli")]

#[path = "../src/bin/cloakroom/redis_side.rs"]
#[allow(clippy::disallowed_methods, unreachable_pub)] // the Redis baseline times its own server start
mod redis_side;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cloakroom::{Config, NewSession, Store};

fn cloakroom(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloakroom"))
        .args(args)
        .current_dir(dir)
        .env("TMPDIR", dir.join("tmp"))
        .output()
        .expect("run cloakroom")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn hash(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tmp")).unwrap();
    let p = dir.path().to_owned();
    (dir, p)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A real (non-scratch) database with sessions for alice.
fn real_db(path: &Path) -> Vec<String> {
    let s = Store::open(path, Config::builder().sweep_interval(None).build().unwrap()).unwrap();
    let ids = (0..3).map(|_| s.create(NewSession::new("alice")).unwrap().session.id().to_string()).collect();
    s.close().unwrap();
    ids
}

#[test]
fn demo_refuses_a_text_file_unless_forced() {
    let (_t, dir) = setup();
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "my notes\n").unwrap();
    let o = cloakroom(&["demo", "--db", "victim.txt"], &dir);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("refusing to replace it") && stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "my notes\n");
    assert_eq!(entries(&dir), ["tmp", "victim.txt"]);
    let o = cloakroom(&["demo", "--db", "victim.txt", "--force"], &dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(cloakroom::ReadOnlyStore::open(&victim).unwrap().is_scratch().unwrap());
}

#[test]
fn demo_refuses_a_foreign_redb_file_and_a_real_database() {
    let (_t, dir) = setup();
    let foreign = dir.join("orders.redb");
    {
        let db = redb::Database::create(&foreign).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<&str, u64>::new("orders")).unwrap().insert("x", 1).unwrap();
        w.commit().unwrap();
    }
    let before = hash(&foreign);
    let o = cloakroom(&["demo", "--db", "orders.redb"], &dir);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(hash(&foreign), before);

    let real = dir.join("sessions.redb");
    real_db(&real);
    let before = hash(&real);
    let o = cloakroom(&["demo", "--db", "sessions.redb"], &dir);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(hash(&real), before);
    assert!(Store::server_key_path(&real).exists(), "the key file must survive a refusal");
}

#[test]
fn demo_and_bench_refuse_a_database_held_by_a_running_store_even_with_force() {
    let (_t, dir) = setup();
    let held = dir.join("held.redb");
    let live = Store::open(&held, Config::builder().sweep_interval(None).build().unwrap()).unwrap();
    let token = live.create(NewSession::new("alice")).unwrap().token.to_string();
    for args in [
        &["demo", "--db", "held.redb", "--force"][..],
        &["bench", "--db", "held.redb", "--force", "--sessions", "10", "--duration", "0.1", "--threads", "1"][..],
    ] {
        let o = cloakroom(args, &dir);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("held open by another process"), "{}", stderr(&o));
    }
    assert_eq!(live.validate(&token).unwrap().user(), "alice");
    live.close().unwrap();
}

#[test]
fn demo_resets_its_own_previous_database() {
    let (_t, dir) = setup();
    let o = cloakroom(&["demo", "--db", "d.redb"], &dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("done; file kept at d.redb"));
    let o = cloakroom(&["demo", "--db", "d.redb"], &dir);
    assert_eq!(code(&o), 0, "second run: {}", stderr(&o));
    assert_eq!(entries(&dir), ["d.redb", "d.redb.journal", "d.redb.journal.1", "d.redb.key", "tmp"]);
}

/// Issue 24 item 10: the demo's stale compare-and-swap line says which version
/// the update expected and which one is stored (it printed "version conflict:
/// session data is at version 2; current is 2" for an update of version 1).
#[test]
fn demo_says_what_a_stale_update_expected_and_what_is_stored() {
    let (_t, dir) = setup();
    let o = cloakroom(&["demo", "--db", "d.redb"], &dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let line = out.lines().find(|l| l.contains("stale update")).unwrap_or_default();
    assert!(line.contains("expected version 1") && line.contains("version 2 is stored"), "{line:?}");
    assert!(!line.contains("current is"), "{line:?}");
}

#[test]
fn read_only_commands_change_no_byte() {
    let (_t, dir) = setup();
    let db = dir.join("s.redb");
    real_db(&db);
    let (before, key_before) = (hash(&db), hash(&Store::server_key_path(&db)));
    let listing = entries(&dir);
    for args in [
        &["stats", "--db", "s.redb"][..],
        &["sessions", "--db", "s.redb", "--user", "alice"],
        &["keys", "--db", "s.redb"],
    ] {
        let o = cloakroom(args, &dir);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
    }
    let o = cloakroom(&["sessions", "--db", "s.redb", "--user", "alice"], &dir);
    assert!(stdout(&o).contains("3 live session(s) for alice"), "{}", stdout(&o));
    assert_eq!(hash(&db), before, "a read-only command wrote to the database");
    assert_eq!(hash(&Store::server_key_path(&db)), key_before);
    assert_eq!(entries(&dir), listing);

    // An empty file is not turned into a database.
    std::fs::write(dir.join("empty.redb"), b"").unwrap();
    let o = cloakroom(&["stats", "--db", "empty.redb"], &dir);
    assert_eq!(code(&o), 1);
    assert_eq!(std::fs::metadata(dir.join("empty.redb")).unwrap().len(), 0);
}

#[test]
fn bad_files_get_one_clear_message_and_leave_nothing_behind() {
    let (_t, dir) = setup();
    std::fs::write(dir.join("notes.txt"), "hello\n").unwrap();
    std::fs::write(dir.join("random.bin"), (0..9000u32).map(|i| ((i * 7919) >> 3) as u8).collect::<Vec<u8>>()).unwrap();
    std::fs::create_dir(dir.join("adir")).unwrap();
    let listing = entries(&dir);
    for cmd in ["stats", "sweep"] {
        for (file, want) in [
            ("notes.txt", "notes.txt: not a cloakroom database (left untouched)"),
            ("random.bin", "random.bin: not a cloakroom database (left untouched)"),
            ("adir", "adir: the path is a directory"),
            ("missing.redb", "missing.redb: no such database file"),
        ] {
            let o = cloakroom(&[cmd, "--db", file], &dir);
            let err = stderr(&o);
            assert_eq!(code(&o), 1, "{cmd} {file}: {err}");
            assert!(err.contains(want), "{cmd} {file}: {err}");
            assert!(!err.contains("invalid configuration"), "{cmd} {file}: {err}");
            assert!(!err.contains("I/O error: I/O error"), "{cmd} {file}: {err}");
        }
    }
    assert_eq!(entries(&dir), listing, "no key file or database may be left behind");
}

#[test]
fn a_file_in_use_is_not_a_configuration_error() {
    let (_t, dir) = setup();
    let db = dir.join("s.redb");
    let live = Store::open(&db, Config::builder().sweep_interval(None).build().unwrap()).unwrap();
    for args in [&["stats", "--db", "s.redb"][..], &["sweep", "--db", "s.redb"]] {
        let o = cloakroom(args, &dir);
        assert_eq!(code(&o), 1);
        assert!(stderr(&o).contains("is in use by another process"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("invalid configuration"), "{}", stderr(&o));
    }
    live.close().unwrap();
}

#[test]
fn revoke_messages() {
    let (_t, dir) = setup();
    let db = dir.join("s.redb");
    let ids = real_db(&db);
    let o = cloakroom(&["revoke", "--db", "s.redb"], &dir);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--session") && stderr(&o).contains("--user"), "{}", stderr(&o));
    let o = cloakroom(&["revoke", "--db", "s.redb", "--session", ids[0].as_str(), "--everywhere"], &dir);
    assert_eq!(code(&o), 2, "--everywhere needs --user: {}", stderr(&o));
    let o = cloakroom(&["revoke", "--db", "s.redb", "--session", "not-an-id"], &dir);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("invalid session id"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("token"), "{}", stderr(&o));
    let o = cloakroom(&["revoke", "--db", "s.redb", "--session", ids[0].as_str()], &dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("revoked session {}", ids[0])), "{}", stdout(&o));
    let o = cloakroom(&["revoke", "--db", "s.redb", "--session", ids[0].as_str()], &dir);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("no live session with id"), "{}", stdout(&o));
    let o = cloakroom(&["revoke", "--db", "s.redb", "--user", "alice", "--everywhere"], &dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("logged alice out everywhere: 2 session(s)"), "{}", stdout(&o));
}

#[test]
fn a_lost_server_key_is_refused_until_replaced_knowingly() {
    let (_t, dir) = setup();
    let db = dir.join("s.redb");
    real_db(&db);
    std::fs::remove_file(Store::server_key_path(&db)).unwrap();
    let before = hash(&db);
    let o = cloakroom(&["sweep", "--db", "s.redb"], &dir);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("s.redb.key is missing") && stderr(&o).contains("--new-server-key"), "{}", stderr(&o));
    assert_eq!(hash(&db), before);
    assert!(!Store::server_key_path(&db).exists());
    let o = cloakroom(&["sweep", "--db", "s.redb", "--new-server-key"], &dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(Store::server_key_path(&db).exists());
}

#[test]
fn bench_checks_its_arguments_and_cleans_up() {
    let (_t, dir) = setup();
    let o = cloakroom(&["bench", "--threads", "0"], &dir);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = cloakroom(&["bench", "--mix", "validate=90,create=5"], &dir);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("sum to 100"), "{}", stderr(&o));
    let o = cloakroom(
        &[
            "bench",
            "--sessions",
            "200",
            "--threads",
            "2",
            "--duration",
            "0.2",
            "--mix",
            "validate=100",
            "--plot",
            "l.svg",
        ],
        &dir,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("latency chart written to l.svg"), "{}", stderr(&o));
    let svg = std::fs::read_to_string(dir.join("l.svg")).unwrap();
    assert!(svg.contains("cloakroom") && !svg.contains("Redis"), "the title names only the systems that ran");
    // Rates print as integers with separators, e.g. "1,234,567" (no decimals).
    let line = stdout(&o).lines().find(|l| l.starts_with("validate")).unwrap().to_owned();
    let rate = line.split_whitespace().nth(2).unwrap();
    assert!(rate.chars().all(|c| c.is_ascii_digit() || c == ','), "{line}");
    // The default database lived in a temp dir that is gone now; the cwd has only the chart.
    assert_eq!(entries(&dir), ["l.svg", "tmp"]);
    assert_eq!(entries(&dir.join("tmp")).len(), 0, "bench left its temp dir behind");
}

/// `cloakroom bench --backend redis`: cloakroom on a redis-server the bench
/// starts (and stops) itself, against the plain Redis store on the same server.
#[test]
fn bench_runs_on_the_redis_backend() {
    if !redis_side::available_for_tests("cloakroom bench --backend redis") {
        return;
    }
    let (_t, dir) = setup();
    let args = ["bench", "--backend", "redis", "--redis", "local", "--sessions", "50", "--threads", "2"];
    let o = cloakroom(&[&args[..], &["--duration", "0.3", "--json"]].concat(), &dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["backend"], "redis");
    for system in ["cloakroom", "redis"] {
        let ops = v[system]["validate"]["count"].as_u64().unwrap_or(0);
        assert!(ops > 0, "{system} ran no validate: {v}");
    }
    assert_eq!(entries(&dir), ["tmp"], "nothing left in the working directory");
}

/// `cloakroom verify`: a clean file passes (exit 0, a line per table, nothing
/// written); a row edited without the key fails (exit 1) and is counted.
#[test]
fn verify_reports_rows_that_fail_their_tag_and_exits_non_zero() {
    let (_t, dir) = setup();
    let path = dir.join("v.redb");
    let s = Store::open(&path, Config::builder().sweep_interval(None).build().unwrap()).unwrap();
    let victim = s.create(NewSession::new("d161")).unwrap();
    s.create(NewSession::new("t161")).unwrap();
    s.close().unwrap();
    let before = hash(&path);
    let o = cloakroom(&["verify", "--db", "v.redb"], &dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("sessions") && stdout(&o).contains("ok:"), "{}", stdout(&o));
    assert_eq!(hash(&path), before, "verify writes nothing");
    // Re-point d161's row to t161 without the key.
    {
        let def = redb::TableDefinition::<u64, &[u8]>::new("sessions_v3");
        let db = redb::Database::create(&path).unwrap();
        let (n, mut row) = {
            let r = redb::ReadableDatabase::begin_read(&db).unwrap();
            let t = r.open_table(def).unwrap();
            let found = redb::ReadableTable::iter(&t)
                .unwrap()
                .map(|x| x.unwrap())
                .find(|(_, v)| v.value().starts_with(victim.session.id().as_bytes()))
                .map(|(k, v)| (k.value(), v.value().to_vec()));
            found.unwrap()
        };
        let at = row.windows(4).position(|w| w == b"d161").unwrap();
        row[at] = b't';
        let w = db.begin_write().unwrap();
        w.open_table(def).unwrap().insert(n, row.as_slice()).unwrap();
        w.commit().unwrap();
    }
    let o = cloakroom(&["verify", "--db", "v.redb"], &dir);
    assert_eq!(code(&o), 1, "{}\n{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("1 rows failed"), "{}", stderr(&o));
    let line = stdout(&o).lines().find(|l| l.starts_with("sessions")).unwrap().to_owned();
    assert!(line.split_whitespace().eq(["sessions", "2", "1"]), "{line}");
}

/// Rewrites one row of `table` (keyed by u64) in the file at `path` without
/// the server key: the row whose value satisfies `pick` gets `edit` applied.
fn tamper(path: &Path, table: &str, mut pick: impl FnMut(&[u8]) -> bool, edit: impl FnOnce(&mut Vec<u8>)) {
    let def = redb::TableDefinition::<u64, &[u8]>::new(table);
    let db = redb::Database::create(path).unwrap();
    let (n, mut row) = {
        let r = redb::ReadableDatabase::begin_read(&db).unwrap();
        let t = r.open_table(def).unwrap();
        let found = redb::ReadableTable::iter(&t)
            .unwrap()
            .map(|x| x.unwrap())
            .find(|(_, v)| pick(v.value()))
            .map(|(k, v)| (k.value(), v.value().to_vec()));
        found.unwrap()
    };
    edit(&mut row);
    let w = db.begin_write().unwrap();
    w.open_table(def).unwrap().insert(n, row.as_slice()).unwrap();
    w.commit().unwrap();
}

/// Issue 25: one damaged session row (here bob's, edited without the key)
/// no longer fails `cloakroom sessions` for every user: alice's sessions are
/// listed, and the damaged row is reported.
#[test]
fn sessions_lists_the_readable_rows_and_reports_a_damaged_one() {
    let (_t, dir) = setup();
    let path = dir.join("d.redb");
    let s = Store::open(&path, Config::builder().sweep_interval(None).build().unwrap()).unwrap();
    s.create(NewSession::new("alice")).unwrap();
    s.create(NewSession::new("alice")).unwrap();
    let bob = s.create(NewSession::new("bob")).unwrap();
    s.close().unwrap();
    tamper(
        &path,
        "sessions_v3",
        |v| v.starts_with(bob.session.id().as_bytes()),
        |row| {
            let at = row.windows(3).position(|w| w == b"bob").unwrap();
            row[at] = b'B';
        },
    );
    let o = cloakroom(&["sessions", "--db", "d.redb", "--user", "alice"], &dir);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("2 live session(s) for alice"), "{}", stdout(&o));
    assert!(stderr(&o).contains("1 damaged session row(s)"), "{}", stderr(&o));
    let o = cloakroom(&["sessions", "--db", "d.redb", "--user", "bob"], &dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("0 live session(s) for bob"), "{}", stdout(&o));
    assert!(stderr(&o).contains("1 damaged session row(s)"), "{}", stderr(&o));
}

/// A damaged refresh-family row fails only its own line of `cloakroom
/// sessions`: the session and the user's other sessions are still listed.
#[test]
fn sessions_lists_past_a_damaged_refresh_row() {
    let (_t, dir) = setup();
    let path = dir.join("r.redb");
    let s = Store::open(&path, Config::builder().sweep_interval(None).build().unwrap()).unwrap();
    let one = s.create(NewSession::new("carol")).unwrap().token.to_string();
    let two = s.create(NewSession::new("carol")).unwrap().token.to_string();
    s.issue_tokens(&one).unwrap();
    s.issue_tokens(&two).unwrap();
    s.close().unwrap();
    let mut first = true;
    tamper(
        &path,
        "refresh_v3",
        |_| std::mem::take(&mut first),
        |row| {
            let last = row.len() - 1;
            row[last] ^= 1; // the tag
        },
    );
    let o = cloakroom(&["sessions", "--db", "r.redb", "--user", "carol"], &dir);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("2 live session(s) for carol"), "{out}");
    assert_eq!(out.matches("refresh families: row damaged").count(), 1, "{out}");
    assert_eq!(out.lines().filter(|l| l.trim_start().starts_with("refresh family ")).count(), 1, "{out}");
    assert!(stderr(&o).contains("refresh-family rows of 1 session(s) are damaged"), "{}", stderr(&o));
}

/// `cloakroom sessions` lists each session's refresh families (one per
/// `issue_tokens`: a device or tab), with their generations.
#[test]
fn sessions_lists_refresh_families() {
    let (_t, dir) = setup();
    let db = dir.join("f.redb");
    let s = Store::open(&db, Config::builder().sweep_interval(None).build().unwrap()).unwrap();
    let tok = s.create(NewSession::new("carol")).unwrap().token.to_string();
    let first = s.issue_tokens(&tok).unwrap();
    s.issue_tokens(&tok).unwrap();
    s.refresh(&first.refresh.to_string()).unwrap();
    s.close().unwrap();
    let o = cloakroom(&["sessions", "--db", "f.redb", "--user", "carol"], &dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let families: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with("refresh family")).collect();
    assert_eq!(families.len(), 2, "{out}");
    assert!(families[0].contains("generation 2"), "{out}");
    assert!(families[1].contains("generation 1"), "{out}");
}

#[test]
fn stats_json_is_one_object_with_the_same_figures_as_the_text() {
    let (_t, dir) = setup();
    let db = dir.join("s.redb");
    let ids = real_db(&db);
    let s = Store::open(&db, Config::builder().sweep_interval(None).build().unwrap()).unwrap();
    s.revoke(ids[0].parse().unwrap()).unwrap();
    s.close().unwrap();
    let before = hash(&db);

    let o = cloakroom(&["stats", "--db", "s.redb", "--json"], &dir);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "one line: {out:?}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    let obj = v.as_object().unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["db", "file_bytes", "format_version", "revoked_serials", "sessions_stored"]);
    assert_eq!(v["db"], "s.redb");
    assert_eq!(v["file_bytes"], std::fs::metadata(&db).unwrap().len());

    // The same figures as the aligned text.
    let text = stdout(&cloakroom(&["stats", "--db", "s.redb"], &dir));
    let figure = |label: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label}: {text}"));
        line[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    for (key, label) in [
        ("sessions_stored", "sessions stored"),
        ("revoked_serials", "revoked serials"),
        ("format_version", "format version"),
        ("file_bytes", "file size"),
    ] {
        assert_eq!(v[key].as_u64(), Some(figure(label)), "{key}: {out} vs\n{text}");
    }
    assert!(v["revoked_serials"].as_u64().unwrap() >= 1, "the revocation is counted: {out}");
    assert_eq!(hash(&db), before, "read-only");

    // A failure prints no partial object.
    let o = cloakroom(&["stats", "--db", "missing.redb", "--json"], &dir);
    assert_eq!(code(&o), 1);
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("missing.redb: no such database file"), "{}", stderr(&o));
}
