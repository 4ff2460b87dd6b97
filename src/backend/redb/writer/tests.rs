//! Unit tests of the writer thread on an in-memory database: group commit,
//! the batch byte bound, logical failures that write nothing, a full queue
//! dropping touches, and close.
//!
//! Batching is made deterministic with a gate: a refresh-family op whose
//! decision blocks (on a channel) until the test releases it, so the jobs
//! the test enqueues meanwhile are all waiting when the writer takes its
//! next batch. No test waits for time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::ScopedJoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};

use super::{BATCH_BYTES, Start, Writer};
use crate::backend::op::{Create, Replace};
use crate::backend::redb::handle::Db;
use crate::backend::{Failure, LostHook, Op, Outcome, Wait};
use crate::error::Error;
use crate::refresh::FamilyChange;
use crate::session::{NewSession, Record, RecordParts};
use crate::token::{SecretHash, SessionId};

fn id(n: u64) -> SessionId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[8] = 0xA5;
    SessionId::from_bytes(b)
}

/// Session `n` (serial `n`) of `alice`, created at 1 000 ms, an hour to
/// live, idle timeout 60 s.
fn session(n: u64, data: Vec<u8>) -> Arc<Record> {
    Arc::new(
        RecordParts {
            id: id(n),
            serial: n,
            secret_hash: SecretHash([n as u8; 32]),
            now: 1_000,
            ttl: Duration::from_secs(3_600),
            idle_timeout: Some(Duration::from_secs(60)),
        }
        .build(NewSession::new("alice").data(data)),
    )
}

fn create(n: u64, data: Vec<u8>) -> Op {
    Op::Create(Create { rec: session(n, data), replace: Replace::Nothing, cap: None, random_id: true, prune_after: 0 })
}

/// A writer over a fresh in-memory database, its queue `queue` jobs deep.
fn start(queue: usize) -> (Db, Writer) {
    let (db, loaded, journal) = Db::in_memory().unwrap().finish(&[7; 32], 0).unwrap();
    let lost: LostHook = Arc::new(|_| {});
    let writer = Writer::start(Start {
        db: db.clone(),
        journal,
        checkpointed: loaded.checkpointed,
        lost,
        flush_interval: Duration::from_millis(20),
        checkpoint_interval: Duration::from_secs(3_600),
        queue,
    })
    .unwrap();
    (db, writer)
}

/// Holds the writer inside one op (a family decision on session `n`, which
/// must exist) until the returned sender is dropped or sent to; returns once
/// the writer is inside it. The op itself changes nothing.
fn gate<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    w: &'s Writer,
    n: u64,
) -> (ScopedJoinHandle<'s, Result<Outcome, Failure>>, Sender<()>) {
    let (entered_tx, entered_rx) = bounded::<()>(1);
    let (release_tx, release_rx) = bounded::<()>(1);
    let f = Box::new(move |_: Option<&[u8]>| {
        let _ = entered_tx.send(());
        let _ = release_rx.recv();
        FamilyChange::none()
    });
    let held =
        s.spawn(move || w.submit(Op::Family { id: id(n), serial: n, now: 2_000, prune_after: 0, f }, Wait::Durable));
    entered_rx.recv().unwrap();
    (held, release_tx)
}

/// Waits (without sleeping) until `n` jobs are queued behind the gate;
/// panics (releasing the gate as it unwinds) if one of `threads` ended
/// first, e.g. its submit was refused, so the wait can never hang.
fn queued<T>(w: &Writer, n: usize, threads: &[ScopedJoinHandle<'_, T>]) {
    while w.tx.len() < n {
        assert!(!threads.iter().any(ScopedJoinHandle::is_finished), "a submitter ended before its job was queued");
        std::thread::yield_now(); // waiting for threads to enqueue, not for time
    }
}

fn commits(w: &Writer) -> (u64, u64) {
    (w.stats.commits.load(Ordering::Relaxed), w.stats.durable_commits.load(Ordering::Relaxed))
}

#[test]
fn durable_jobs_queued_together_share_one_record_and_one_sync() {
    let (db, w) = start(1_024);
    assert!(matches!(w.submit(create(1, Vec::new()), Wait::Durable), Ok(Outcome::Created(v)) if v.is_empty()));
    let before = commits(&w);
    std::thread::scope(|s| {
        let (held, release) = gate(s, &w, 1);
        let w = &w;
        let creators: Vec<_> =
            (2..34).map(|n| s.spawn(move || w.submit(create(n, Vec::new()), Wait::Durable))).collect();
        queued(w, 32, &creators);
        release.send(()).unwrap();
        assert!(matches!(held.join().unwrap(), Ok(Outcome::Family { reply: None, revoked: None })));
        for c in creators {
            assert!(matches!(c.join().unwrap(), Ok(Outcome::Created(v)) if v.is_empty()));
        }
    });
    let after = commits(&w);
    // The gate wrote nothing (no record, nothing to sync); the 32 creates one record, one sync.
    assert_eq!(after.0 - before.0, 1, "32 durable creates queued together: one journal record");
    assert_eq!(after.1 - before.1, 1, "and one fdatasync for all of them");
    for n in 2..34 {
        assert_eq!(db.get(&id(n)).unwrap().map(|r| r.serial), Some(n), "session {n} readable once acknowledged");
    }
}

#[test]
fn a_batch_ends_once_its_row_changes_pass_the_byte_bound() {
    let (db, w) = start(1_024);
    w.submit(create(1, Vec::new()), Wait::Durable).unwrap();
    // Each row just over a quarter of the bound: the fourth takes a record
    // past it, so six queued creates go in two records (four, then two).
    let len = BATCH_BYTES / 4 + 1;
    let before = commits(&w);
    std::thread::scope(|s| {
        let (held, release) = gate(s, &w, 1);
        let w = &w;
        let creators: Vec<_> =
            (2..8).map(|n| s.spawn(move || w.submit(create(n, vec![n as u8; len]), Wait::Durable))).collect();
        queued(w, 6, &creators);
        release.send(()).unwrap();
        held.join().unwrap().unwrap();
        for c in creators {
            assert!(matches!(c.join().unwrap(), Ok(Outcome::Created(_))));
        }
    });
    let after = commits(&w);
    assert_eq!(after.0 - before.0, 2, "six rows of BATCH_BYTES/4 + 1: two records");
    for n in 2..8 {
        let rec = db.get(&id(n)).unwrap().unwrap();
        assert!(rec.data.len() == len && rec.data.iter().all(|&b| b == n as u8), "session {n}'s data intact");
    }
}

#[test]
fn a_refused_op_writes_nothing_and_leaves_the_row_as_it_was() {
    let (db, w) = start(64);
    w.submit(create(1, b"first".to_vec()), Wait::Durable).unwrap();
    let before = commits(&w);
    // The same id again (a create never overwrites), and a stale compare-and-swap.
    let dup = Op::Create(Create {
        rec: session(1, b"second".to_vec()),
        replace: Replace::Nothing,
        cap: None,
        random_id: false,
        prune_after: 0,
    });
    assert!(matches!(w.submit(dup, Wait::Durable).map_err(|f| f.error), Err(Error::Conflict { current: 1 })));
    let stale = Op::UpdateData {
        id: id(1),
        expected: Some(7),
        serial: None,
        now: 2_000,
        data: Some(b"x".to_vec().into()),
        expires: None,
    };
    assert!(matches!(w.submit(stale, Wait::Durable).map_err(|f| f.error), Err(Error::Conflict { current: 1 })));
    let gone = Op::UpdateData {
        id: id(9),
        expected: None,
        serial: None,
        now: 2_000,
        data: Some(b"x".to_vec().into()),
        expires: None,
    };
    assert!(matches!(w.submit(gone, Wait::Durable).map_err(|f| f.error), Err(Error::NotFound)));
    assert_eq!(commits(&w), before, "no journal record, no sync");
    let rec = db.get(&id(1)).unwrap().unwrap();
    assert_eq!((&*rec.data, rec.version), (&b"first"[..], 1));
    // A matching compare-and-swap still lands.
    let ok = Op::UpdateData {
        id: id(1),
        expected: Some(1),
        serial: Some(1),
        now: 2_000,
        data: Some(b"y".to_vec().into()),
        expires: None,
    };
    assert!(matches!(w.submit(ok, Wait::Durable), Ok(Outcome::Updated(r)) if r.version == 2));
    assert_eq!(commits(&w).0, before.0 + 1);
}

#[test]
fn a_full_queue_drops_offered_touches_and_counts_them() {
    let (db, w) = start(2);
    w.submit(create(1, Vec::new()), Wait::Durable).unwrap();
    let touches = w.stats.touches.load(Ordering::Relaxed);
    std::thread::scope(|s| {
        let (held, release) = gate(s, &w, 1);
        // The gate is out of the queue; two touches fill it, three are dropped.
        for t in 0..5 {
            w.offer(Op::Touch { id: id(1), last_seen: 10_000 + t });
        }
        assert_eq!(w.stats.dropped_touches.load(Ordering::Relaxed), 3);
        release.send(()).unwrap();
        held.join().unwrap().unwrap();
    });
    w.submit(Op::Flush, Wait::Durable).unwrap();
    assert_eq!(db.get(&id(1)).unwrap().unwrap().last_seen, 10_001, "the first two offered touches were kept");
    // In order: each moved last_seen forward (reversed, the second would write nothing).
    assert_eq!(w.stats.touches.load(Ordering::Relaxed) - touches, 2, "both queued touches wrote, in order");
}

#[test]
fn close_writes_every_queued_job_then_refuses_new_ones() {
    let (db, w) = start(64);
    w.submit(create(100, Vec::new()), Wait::Durable).unwrap();
    std::thread::scope(|s| {
        // Ten eventual creates acknowledged on enqueue and still queued
        // (the writer is held) when close is called.
        let (held, release) = gate(s, &w, 100);
        for n in 1..=10 {
            assert!(matches!(w.submit(create(n, Vec::new()), Wait::Queued), Ok(Outcome::Done)));
        }
        assert_eq!(w.tx.len(), 10);
        let w = &w;
        let closing = s.spawn(move || w.close());
        queued(w, 11, std::slice::from_ref(&closing)); // close's own flush, behind them
        for n in 1..=10 {
            assert!(db.get(&id(n)).unwrap().is_none(), "create {n} not written before close");
        }
        release.send(()).unwrap();
        held.join().unwrap().unwrap();
        closing.join().unwrap().unwrap();
    });
    for n in 1..=10 {
        assert!(db.get(&id(n)).unwrap().is_some(), "eventual create {n} was written by close");
    }
    assert!(matches!(w.submit(create(11, Vec::new()), Wait::Durable).map_err(|f| f.error), Err(Error::Closed)));
    w.offer(Op::Touch { id: id(1), last_seen: 5_000 }); // a no-op, never a panic or a block
    w.close().unwrap(); // idempotent
    assert!(db.get(&id(11)).unwrap().is_none());
}

#[test]
fn a_revocation_made_for_an_owner_leaves_another_users_row() {
    let (db, w) = start(64);
    w.submit(create(1, Vec::new()), Wait::Durable).unwrap(); // alice's
    let before = commits(&w);
    let revoke = |owner: &str| Op::Revoke { id: id(1), owner: Some(owner.into()), prune_after: 0 };
    assert!(matches!(w.submit(revoke("mallory"), Wait::Durable), Ok(Outcome::Revoked(v)) if v.is_empty()));
    assert_eq!(commits(&w), before, "nothing written");
    assert!(db.get(&id(1)).unwrap().is_some(), "alice's session stays");
    match w.submit(revoke("alice"), Wait::Durable) {
        Ok(Outcome::Revoked(v)) => assert_eq!(v.iter().map(|r| r.serial).collect::<Vec<_>>(), vec![1]),
        _ => panic!("the owner's revocation did not revoke"),
    }
    assert!(db.get(&id(1)).unwrap().is_none());
    let unowned = Op::Revoke { id: id(2), owner: Some("alice".into()), prune_after: 0 };
    assert!(matches!(w.submit(unowned, Wait::Durable), Ok(Outcome::Revoked(v)) if v.is_empty()), "no such row");
}

#[test]
fn a_create_refused_by_the_cap_leaves_the_row_it_would_replace() {
    use crate::config::{Cap, OnLimit};
    let (db, w) = start(64);
    w.submit(create(1, Vec::new()), Wait::Durable).unwrap(); // alice's session under id 1
    let mut bobs = (*session(2, Vec::new())).clone();
    bobs.user = "bob".into();
    w.submit(
        Op::Create(Create {
            rec: Arc::new(bobs),
            replace: Replace::Nothing,
            cap: None,
            random_id: true,
            prune_after: 0,
        }),
        Wait::Durable,
    )
    .unwrap();
    let before = commits(&w);
    // A user change of id 1 to bob, who is at his cap of one session.
    let mut change = (*session(3, Vec::new())).clone();
    (change.id, change.user) = (id(1), "bob".into());
    let cap = Some(Cap { max: 1, on_limit: OnLimit::Refuse });
    let op = Op::Create(Create {
        rec: Arc::new(change),
        replace: Replace::Serial(1),
        cap,
        random_id: false,
        prune_after: 0,
    });
    assert!(matches!(w.submit(op, Wait::Durable).map_err(|f| f.error), Err(Error::SessionLimit { max: 1 })));
    assert_eq!(commits(&w), before, "a refused create writes nothing");
    let kept = db.get(&id(1)).unwrap().expect("the row it would have replaced stays");
    assert_eq!((kept.serial, &*kept.user), (1, "alice"));
}
