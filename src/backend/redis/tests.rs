//! Unit tests of the Redis backend's ops, on a `redis-server` this test
//! starts on a free loopback port (the one runner the tests, benches and
//! the CLI share) and stops when it ends, pass or fail. Without
//! `redis-server` each test prints one `SKIPPED` line and passes
//! (`CLOAKROOM_REQUIRE_REDIS` makes that a failure).
//!
//! Each test drives the backend through the `Backend` contract, as the
//! session table does, and reads the keys behind it where the op's effect
//! is on the server (the revocation hash, the user-revocation markers).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use super::{Keys, Pool, RedisBackend};
use crate::backend::coherence::Coherence;
use crate::backend::op::{Create, Replace, UserCut};
use crate::backend::{Backend, Op, Outcome, Wait};
use crate::clock::{Clock, ManualClock};
use crate::error::Error;
use crate::refresh::FamilyChange;
use crate::session::{NewSession, Record, RecordParts};
use crate::token::{SecretHash, SessionId};

#[path = "../../bin/cloakroom/redis_side.rs"]
#[allow(clippy::disallowed_methods, unreachable_pub)]
mod redis_side;

use redis_side::RedisServer;

const KEY: [u8; 32] = [0x42; 32];

/// A server for one test, or `None` where `redis-server` is missing (skipped).
fn server() -> Option<RedisServer> {
    redis_side::available_for_tests("src/backend/redis/tests.rs").then(|| RedisServer::start("always").unwrap())
}

/// A backend on `server` under a key prefix no other test uses.
fn open(server: &RedisServer) -> (RedisBackend, String) {
    static N: AtomicU64 = AtomicU64::new(0);
    let prefix = format!("unit{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let pool = Arc::new(Pool::new(&server.url(), 4, Duration::from_secs(2)).unwrap());
    let keyring = crate::keys::default_keyring(&crate::keys::Derived::new(&KEY)).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000)));
    let coherence = Arc::new(Coherence::new(Duration::from_millis(250), clock));
    let keys = Keys::new(&prefix);
    let b = RedisBackend::open(Arc::clone(&pool), keys.clone(), &KEY, &keyring, false, Arc::clone(&coherence)).unwrap();
    // The serials the tests' sessions use, reserved as a node does (a
    // serial counter behind what a node read reads as a wiped store).
    RedisBackend::reserve(&pool, &keys, &b.instance(), &coherence, 1_000).unwrap();
    (b, prefix)
}

fn id(n: u64) -> SessionId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[8] = 0x5A;
    SessionId::from_bytes(b)
}

/// Session `n` of `user` (serial and number `n`), created at 1 000 000 ms
/// (the test clock's now), an hour to live.
fn session(n: u64, user: &str, data: &[u8]) -> Arc<Record> {
    Arc::new(
        RecordParts {
            id: id(n),
            serial: n,
            secret_hash: SecretHash([n as u8; 32]),
            now: 1_000_000,
            ttl: Duration::from_secs(3_600),
            idle_timeout: None,
        }
        .build(NewSession::new(user).data(data.to_vec())),
    )
}

/// A create decided by the server's script (a derived id: no random-id fast path).
fn create(rec: Arc<Record>, replace: Replace) -> Op {
    Op::Create(Create { rec, replace, cap: None, random_id: false, prune_after: 9_000_000 })
}

fn submit(b: &RedisBackend, op: Op) -> Result<Outcome, Error> {
    b.submit(op, Wait::Durable).map_err(|f| f.error)
}

/// The serials in the store's revocation hash.
fn revoked_serials(server: &RedisServer, prefix: &str) -> Vec<u64> {
    let v = server.cmd(redis::cmd("HKEYS").arg(format!("{{{prefix}}}:rv"))).unwrap();
    let mut s: Vec<u64> =
        redis::from_redis_value::<Vec<String>>(v).unwrap().iter().map(|k| k.parse().unwrap()).collect();
    s.sort_unstable();
    s
}

fn markers(server: &RedisServer, prefix: &str) -> i64 {
    redis::from_redis_value(server.cmd(redis::cmd("HLEN").arg(format!("{{{prefix}}}:cuts"))).unwrap()).unwrap()
}

#[test]
fn a_create_never_overwrites_a_row_and_a_replace_takes_it_in_one_step() {
    let Some(server) = server() else { return };
    let (b, prefix) = open(&server);
    assert!(
        matches!(submit(&b, create(session(1, "bob", b"first"), Replace::Nothing)), Ok(Outcome::Created(v)) if v.is_empty())
    );
    // The same id again: refused, the stored row untouched.
    let mut again = (*session(2, "carol", b"second")).clone();
    again.id = id(1);
    assert!(matches!(submit(&b, create(Arc::new(again.clone()), Replace::Nothing)), Err(Error::Conflict { .. })));
    assert!(matches!(submit(&b, create(Arc::new(again.clone()), Replace::Serial(7))), Err(Error::Conflict { .. })));
    let stored = b.get(&id(1)).unwrap().unwrap();
    assert_eq!((stored.serial, &*stored.user, &*stored.data), (1, "bob", &b"first"[..]));
    assert!(revoked_serials(&server, &prefix).is_empty());
    // Replacing the serial it names: the old session revoked, the new one under the id.
    match submit(&b, create(Arc::new(again), Replace::Serial(1))) {
        Ok(Outcome::Created(v)) => assert_eq!(v.iter().map(|r| r.serial).collect::<Vec<_>>(), vec![1]),
        other => panic!("expected Created, got {:?}", other.err()),
    }
    let stored = b.get(&id(1)).unwrap().unwrap();
    assert_eq!((stored.serial, &*stored.user), (2, "carol"));
    assert_eq!(revoked_serials(&server, &prefix), vec![1]);
    assert!(b.list_user("bob").unwrap().is_empty(), "bob's index no longer yields the replaced row");
}

#[test]
fn updates_and_rotations_decide_against_the_stored_row() {
    let Some(server) = server() else { return };
    let (b, prefix) = open(&server);
    submit(&b, create(session(1, "bob", b"v1"), Replace::Nothing)).unwrap();
    let update = |expected, data: &[u8]| Op::UpdateData {
        id: id(1),
        expected,
        serial: None,
        now: 1_000_500,
        data: Some(data.to_vec().into()),
        expires: None,
    };
    assert!(matches!(submit(&b, update(Some(5), b"x")), Err(Error::Conflict { current: 1 })));
    assert!(matches!(submit(&b, update(Some(1), b"v2")), Ok(Outcome::Updated(r)) if r.version == 2));
    let rotate = |expected| Op::Rotate {
        id: id(1),
        expected,
        serial: 50,
        secret_hash: SecretHash([50; 32]),
        now: 1_001_000,
        prune_after: 9_000_000,
    };
    // Not the stored secret (a concurrent rotate won): nothing changes.
    assert!(matches!(submit(&b, rotate(SecretHash([9; 32]))), Err(Error::NotFound)));
    assert!(revoked_serials(&server, &prefix).is_empty());
    match submit(&b, rotate(SecretHash([1; 32]))) {
        Ok(Outcome::Rotated { rec, old }) => assert_eq!((rec.serial, old.serial), (50, 1)),
        other => panic!("expected Rotated, got {:?}", other.err()),
    }
    let stored = b.get(&id(1)).unwrap().unwrap();
    assert_eq!((stored.serial, stored.version, &*stored.data), (50, 2, &b"v2"[..]), "built from the stored row");
    assert_eq!(revoked_serials(&server, &prefix), vec![1]);
    // The same rotation again: the secret changed, so it is refused.
    assert!(matches!(submit(&b, rotate(SecretHash([1; 32]))), Err(Error::NotFound)));
}

#[test]
fn a_family_op_authorised_under_a_rotated_serial_is_refused_before_deciding() {
    let Some(server) = server() else { return };
    let (b, _) = open(&server);
    submit(&b, create(session(1, "bob", b""), Replace::Nothing)).unwrap();
    let rotate = Op::Rotate {
        id: id(1),
        expected: SecretHash([1; 32]),
        serial: 2,
        secret_hash: SecretHash([2; 32]),
        now: 1_000_100,
        prune_after: 9_000_000,
    };
    submit(&b, rotate).unwrap();
    let decided = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&decided);
    let f = Box::new(move |_: Option<&[u8]>| {
        seen.store(true, Ordering::SeqCst);
        FamilyChange::none()
    });
    let op = Op::Family { id: id(1), serial: 1, now: 1_000_200, prune_after: 9_000_000, f };
    assert!(matches!(submit(&b, op), Err(Error::Revoked)));
    assert!(!decided.load(Ordering::SeqCst), "the family decision never ran");
    let f = Box::new(|_: Option<&[u8]>| FamilyChange::none());
    let op = Op::Family { id: id(1), serial: 2, now: 1_000_200, prune_after: 9_000_000, f };
    assert!(matches!(submit(&b, op), Ok(Outcome::Family { reply: None, revoked: None })));
    let f = Box::new(|_: Option<&[u8]>| FamilyChange::none());
    let op = Op::Family { id: id(9), serial: 9, now: 1_000_200, prune_after: 9_000_000, f };
    assert!(matches!(submit(&b, op), Err(Error::NotFound)));
}

#[test]
fn a_users_revocation_runs_in_steps_touching_only_that_users_rows_under_one_marker() {
    let Some(server) = server() else { return };
    let (b, prefix) = open(&server);
    for n in 1..=5 {
        submit(&b, create(session(n, "bob", b""), Replace::Nothing)).unwrap();
    }
    submit(&b, create(session(6, "alice", b""), Replace::Nothing)).unwrap();
    // A stale index entry: alice's session listed under bob.
    let alice_hex: String = id(6).as_bytes().iter().map(|x| format!("{x:02x}")).collect();
    server.cmd(redis::cmd("ZADD").arg(format!("{{{prefix}}}:u:bob")).arg(u64::MAX / 4).arg(&alice_hex)).unwrap();
    let cut = UserCut { at: 1_000_000, except: Some((id(5), 5)) };
    let step =
        |first| Op::RevokeUser { user: "bob".into(), cut, first, not_before: None, limit: 2, prune_after: 9_000_000 };
    let mut revoked = Vec::new();
    let mut finished = false;
    // Four sessions in steps of two: three steps (more, more, done); a
    // series that never reports done fails here instead of hanging.
    for i in 0..8 {
        let (r, more) = match submit(&b, step(i == 0)) {
            Ok(Outcome::RevokedUser { revoked, more }) => (revoked, more),
            Ok(_) => panic!("step {i}: not a RevokedUser outcome"),
            Err(e) => panic!("step {i} failed: {e:?}"),
        };
        revoked.extend(r.iter().map(|r| r.serial));
        if !more {
            finished = true;
            break;
        }
        assert_eq!(markers(&server, &prefix), 1, "the marker stays while steps remain");
    }
    assert!(finished, "the revocation never reported its last step");
    assert_eq!(markers(&server, &prefix), 0, "the last step removes the marker");
    revoked.sort_unstable();
    assert_eq!(revoked, vec![1, 2, 3, 4], "every one of bob's sessions but the kept one");
    assert_eq!(revoked_serials(&server, &prefix), vec![1, 2, 3, 4]);
    for n in 1..=4 {
        assert!(b.get(&id(n)).unwrap().is_none());
    }
    assert!(b.get(&id(5)).unwrap().is_some(), "the kept session");
    assert_eq!(b.get(&id(6)).unwrap().map(|r| r.user.to_string()).as_deref(), Some("alice"), "alice's row untouched");
}

#[test]
fn a_revocation_made_for_an_owner_leaves_another_users_row() {
    let Some(server) = server() else { return };
    let (b, prefix) = open(&server);
    submit(&b, create(session(1, "bob", b""), Replace::Nothing)).unwrap();
    let revoke = |owner: Option<&str>| Op::Revoke { id: id(1), owner: owner.map(Into::into), prune_after: 9_000_000 };
    assert!(matches!(submit(&b, revoke(Some("mallory"))), Ok(Outcome::Revoked(v)) if v.is_empty()));
    assert!(b.get(&id(1)).unwrap().is_some(), "bob's session stays");
    assert!(revoked_serials(&server, &prefix).is_empty());
    assert!(matches!(submit(&b, revoke(Some("bob"))), Ok(Outcome::Revoked(v)) if v.len() == 1));
    assert!(b.get(&id(1)).unwrap().is_none());
    assert_eq!(revoked_serials(&server, &prefix), vec![1]);
    // Without an owner (an admin's revoke): any row.
    submit(&b, create(session(2, "carol", b""), Replace::Nothing)).unwrap();
    let admin = Op::Revoke { id: id(2), owner: None, prune_after: 9_000_000 };
    assert!(matches!(submit(&b, admin), Ok(Outcome::Revoked(v)) if v.len() == 1));
}

#[test]
fn a_create_refused_by_the_cap_leaves_the_row_it_would_replace() {
    use crate::config::{Cap, OnLimit};
    let Some(server) = server() else { return };
    let (b, prefix) = open(&server);
    submit(&b, create(session(1, "alice", b""), Replace::Nothing)).unwrap();
    submit(&b, create(session(2, "bob", b""), Replace::Nothing)).unwrap();
    // A user change of id 1 to bob, who is at his cap of one session.
    let mut change = (*session(3, "bob", b"")).clone();
    change.id = id(1);
    let cap = Some(Cap { max: 1, on_limit: OnLimit::Refuse });
    let op = Op::Create(Create {
        rec: Arc::new(change),
        replace: Replace::Serial(1),
        cap,
        random_id: false,
        prune_after: 9_000_000,
    });
    assert!(matches!(submit(&b, op), Err(Error::SessionLimit { max: 1 })));
    let kept = b.get(&id(1)).unwrap().expect("the row it would have replaced stays");
    assert_eq!((kept.serial, &*kept.user), (1, "alice"));
    assert!(revoked_serials(&server, &prefix).is_empty(), "nothing revoked");
}
