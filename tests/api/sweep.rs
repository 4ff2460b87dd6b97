use std::time::Duration;

use cloakroom::{Config, Error, Event, ManualClock, NewSession, Store};

use super::common::{HOUR, MIN};

fn store(clock: &ManualClock) -> Store {
    let cfg = Config::builder()
        .session_ttl(HOUR)
        .idle_timeout(Some(10 * MIN))
        .touch_granularity(MIN)
        .sweep_interval(None)
        .clock(clock.clone())
        .build()
        .unwrap();
    Store::in_memory(cfg).unwrap()
}

#[test]
fn sweep_removes_expired_sessions_by_reason_with_their_rows() {
    let clock = ManualClock::fixed();
    let s = store(&clock);
    let short: Vec<String> =
        (0..5).map(|_| s.create(NewSession::new("a").ttl(5 * MIN)).unwrap().token.to_string()).collect();
    let idle: Vec<String> = (0..3).map(|_| s.create(NewSession::new("b")).unwrap().token.to_string()).collect();
    for t in &idle {
        s.issue_tokens(t).unwrap(); // refresh families go with the session
    }
    let live = s.create(NewSession::new("c").without_idle_timeout()).unwrap().token.to_string();
    assert_eq!(s.sweep().unwrap().sessions_removed(), 0, "nothing expired yet");

    clock.advance(11 * MIN); // short: past 5 min deadline; idle: 11 min idle > 10
    let r = s.sweep().unwrap();
    assert_eq!((r.expired_absolute, r.expired_idle, r.refresh_families), (5, 3, 3), "{r:?}");
    s.checkpoint().unwrap();
    assert_eq!(s.stats().sessions_stored, Some(1));
    assert!(s.list_user("a").unwrap().is_empty() && s.list_user("b").unwrap().is_empty());
    for t in short.iter().chain(&idle) {
        assert!(matches!(s.validate(t), Err(Error::NotFound)));
    }
    s.validate(&live).unwrap();
    // Idempotent.
    let again = s.sweep().unwrap();
    assert_eq!((again.sessions_removed(), again.rows_scanned), (0, 0));
}

#[test]
fn sweep_keeps_a_session_active_since_its_last_persisted_touch() {
    let clock = ManualClock::fixed();
    let s = store(&clock);
    let t = s.create(NewSession::new("a")).unwrap().token.to_string();
    // Validate at +9m30s: last persisted touch is at +9m (granularity 1 min)...
    clock.advance(9 * MIN);
    s.validate(&t).unwrap();
    clock.advance(Duration::from_secs(30));
    s.validate(&t).unwrap(); // in memory only: within the granularity
    s.flush().unwrap();
    // ...so at +19m15s the persisted deadline (+19m) has passed but the real one (+19m30s) has not.
    clock.advance(9 * MIN + Duration::from_secs(45));
    let r = s.sweep().unwrap();
    assert_eq!(r.sessions_removed(), 0, "{r:?}");
    s.validate(&t).unwrap();
}

#[test]
fn sweep_prunes_revocations_after_the_horizon() {
    let clock = ManualClock::fixed();
    let s = store(&clock);
    let id = s.create(NewSession::new("a")).unwrap().session.id();
    s.revoke(id).unwrap();
    assert_eq!(s.sweep().unwrap().revocations_pruned, 0);
    clock.advance(6 * MIN); // access TTL 5 min + leeway 30 s
    assert_eq!(s.sweep().unwrap().revocations_pruned, 1);
    assert_eq!(s.stats().revoked_serials, 0);
}

#[test]
fn sweep_handles_more_rows_than_one_batch() {
    let clock = ManualClock::fixed();
    let mut b = Config::builder();
    b.clock(clock.clone()).sweep_interval(None).durability(cloakroom::Durability::Eventual).cache_capacity(64);
    let s = Store::in_memory(b.build().unwrap()).unwrap();
    for i in 0..2500 {
        s.create(NewSession::new(format!("u{i}")).ttl(MIN)).unwrap();
    }
    for i in 0..10 {
        s.create(NewSession::new(format!("keep{i}"))).unwrap();
    }
    clock.advance(2 * MIN);
    let r = s.sweep().unwrap();
    assert_eq!((r.expired_absolute, r.batches), (2500, 3), "{r:?}");
    s.checkpoint().unwrap();
    assert_eq!(s.stats().sessions_stored, Some(10));
}

#[test]
fn background_sweeper_runs_and_stops_with_the_store() {
    let clock = ManualClock::fixed();
    let (tx, rx) = crossbeam_channel::unbounded();
    let cfg = Config::builder()
        .clock(clock.clone())
        .sweep_interval(Some(Duration::from_millis(20)))
        .on_event(move |e| {
            let _ = tx.send(e.clone());
        })
        .build()
        .unwrap();
    let s = Store::in_memory(cfg).unwrap();
    let id = s.create(NewSession::new("a").ttl(MIN)).unwrap().session.id();
    clock.advance(2 * MIN);
    // Wait for the sweeper's event (not for time).
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Event::Expired { session }) if session == id => break,
            Ok(_) => continue,
            Err(e) => panic!("no sweep within 20 s: {e}"),
        }
    }
    s.checkpoint().unwrap();
    assert_eq!(s.stats().sessions_stored, Some(0));
    drop(s); // stops and joins the sweeper thread (would hang otherwise)
}
