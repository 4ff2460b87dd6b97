//! User-wide revocation in bounded steps, the per-user session cap, and
//! user-scoped operations touching only that user's records.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cloakroom::{Config, Durability, Error, NewSession, OnLimit, Scope};

use super::common::{Durable, open};

fn capped(max: usize, policy: OnLimit) -> Config {
    Config::builder().max_sessions_per_user(Some(max)).on_session_limit(policy).build().unwrap()
}

/// The (n+1)-th create revokes the user's oldest session.
#[test]
fn the_session_cap_revokes_the_oldest() {
    let s = open(capped(3, OnLimit::RevokeOldest));
    let tokens: Vec<String> = (0..5).map(|_| s.create(NewSession::new("capped")).unwrap().token.to_string()).collect();
    assert!(matches!(s.validate(&tokens[0]), Err(Error::Revoked | Error::NotFound)));
    assert!(matches!(s.validate(&tokens[1]), Err(Error::Revoked | Error::NotFound)));
    for t in &tokens[2..] {
        s.validate(t).unwrap();
    }
    assert_eq!(s.list_user("capped").unwrap().len(), 3);
    // Another user is not affected.
    s.create(NewSession::new("other")).unwrap();
    assert_eq!(s.list_user("capped").unwrap().len(), 3);
}

/// "Oldest" is the session created longest ago, and a rotation keeps its
/// age, on both backends alike (Redis went by serial: a rotated session
/// counted as new there, and across nodes serials from separate blocks are
/// not in time order; redb by creation time).
#[test]
fn the_session_cap_revokes_the_one_created_longest_ago_even_if_rotated() {
    let s = open(capped(2, OnLimit::RevokeOldest));
    let a = s.create(NewSession::new("rot")).unwrap().token.to_string();
    let b = s.create(NewSession::new("rot")).unwrap().token.to_string();
    let a = s.rotate(&a).unwrap().token.to_string();
    let c = s.create(NewSession::new("rot")).unwrap().token.to_string();
    assert!(matches!(s.validate(&a), Err(Error::Revoked | Error::NotFound)), "a was created first");
    s.validate(&b).unwrap();
    s.validate(&c).unwrap();
}

/// With `OnLimit::Refuse` the (n+1)-th create is refused and stores nothing.
#[test]
fn the_session_cap_refuses() {
    let s = open(capped(2, OnLimit::Refuse));
    let a = s.create(NewSession::new("refused")).unwrap().token.to_string();
    s.create(NewSession::new("refused")).unwrap();
    assert!(matches!(s.create(NewSession::new("refused")), Err(Error::SessionLimit { max: 2 })));
    assert_eq!(s.list_user("refused").unwrap().len(), 2);
    s.validate(&a).unwrap();
    // Eventual durability waits for the cap's decision too.
    let e = open(
        Config::builder()
            .max_sessions_per_user(Some(1))
            .on_session_limit(OnLimit::Refuse)
            .durability(Durability::Eventual)
            .build()
            .unwrap(),
    );
    e.create(NewSession::new("ev")).unwrap();
    assert!(matches!(e.create(NewSession::new("ev")), Err(Error::SessionLimit { max: 1 })));
}

/// The cap holds under 32 concurrent creates of one user.
#[test]
fn the_session_cap_holds_under_concurrent_creates() {
    for policy in [OnLimit::RevokeOldest, OnLimit::Refuse] {
        let s = open(capped(4, policy));
        let ok = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..32 {
                sc.spawn(|| match s.create(NewSession::new("herd")) {
                    Ok(_) => drop(ok.fetch_add(1, Ordering::Relaxed)),
                    Err(Error::SessionLimit { .. }) => assert_eq!(policy, OnLimit::Refuse),
                    Err(e) => panic!("{e}"),
                });
            }
        });
        assert_eq!(s.list_user("herd").unwrap().len(), 4, "{policy:?}");
        if policy == OnLimit::Refuse {
            assert_eq!(ok.load(Ordering::Relaxed), 4);
        }
    }
}

/// Issue 24 item 7: a user-wide revocation of many sessions runs in bounded
/// steps: another user's validates and creates keep completing during it, and
/// every one of the user's sessions is refused once it returns, also after a
/// reopen.
#[test]
fn revoking_a_huge_user_does_not_stall_others() {
    let n = if crate::REDIS { 20_000 } else { 200_000 };
    let place = Durable::new();
    let cfg = || Config::builder().durability(Durability::Eventual).cache_capacity(1 << 20).build().unwrap();
    let s = place.open(cfg());
    let tokens: Vec<String> = (0..n).map(|_| s.create(NewSession::new("whale")).unwrap().token.to_string()).collect();
    s.flush().unwrap();
    let bystander = s.create(NewSession::new("bystander")).unwrap().token.to_string();
    let done = AtomicBool::new(false);
    let (revoked, during, worst) = std::thread::scope(|sc| {
        let other = sc.spawn(|| {
            let mut lat = Vec::new();
            while !done.load(Ordering::Acquire) {
                #[allow(clippy::disallowed_methods)] // the bystander's latency is wall time
                let t0 = Instant::now();
                s.validate(&bystander).unwrap();
                s.create(NewSession::new("bystander")).unwrap();
                // (Eventual creates are acknowledged on enqueue: wait for this
                // one, so the loop measures the writer's latency instead of
                // filling its queue.)
                s.flush().unwrap();
                lat.push(t0.elapsed());
            }
            lat.sort_unstable();
            let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or_default();
            (lat.len(), (p99, lat.last().copied().unwrap_or_default()))
        });
        let revoked = s.revoke_user("whale", Scope::All).unwrap();
        done.store(true, Ordering::Release);
        let (calls, worst) = other.join().unwrap();
        (revoked, calls, worst)
    });
    assert_eq!(revoked, n);
    assert!(during > 0, "the other user's calls must interleave with the revocation");
    println!(
        "revoke_user of {n} sessions: {during} bystander validate+create+flush rounds meanwhile, p99 {:?}, worst {:?}",
        worst.0, worst.1
    );
    for t in tokens.iter().step_by(97) {
        assert!(matches!(s.validate(t), Err(Error::Revoked | Error::NotFound)));
    }
    assert!(s.list_user("whale").unwrap().is_empty());
    s.close().unwrap();
    drop(s);
    let s = place.open(cfg());
    for t in tokens.iter().step_by(97) {
        assert!(matches!(s.validate(t), Err(Error::Revoked | Error::NotFound)));
    }
    assert!(s.list_user("whale").unwrap().is_empty());
    s.validate(&bystander).unwrap();
}

/// Issue 25 item 5: a forward jump of the wall clock prunes no revocation
/// early: revoke, the clock jumps 6 min ahead (no time passes), a prune runs,
/// the clock is stepped back, and the revoked access token is still refused.
/// Once the time has really passed, the entry goes.
#[test]
fn a_forward_clock_jump_prunes_no_revocation_early() {
    let clock = cloakroom::ManualClock::fixed();
    let cfg = Config::builder().access_ttl(Duration::from_secs(300)).clock(clock.clone()).build().unwrap();
    let s = open(cfg);
    let issued = s.create(NewSession::new("jumper")).unwrap();
    let pair = s.issue_tokens(&issued.token.to_string()).unwrap();
    s.revoke(issued.session.id()).unwrap();
    let start = cloakroom::Clock::now(&clock);
    clock.set(start + Duration::from_secs(360));
    assert_eq!(s.prune_revocations().unwrap().0, 0, "pruned on a jumped clock");
    clock.set(start + Duration::from_secs(10));
    assert!(matches!(s.verify_access(&pair.access), Err(Error::Revoked)));
    // Time really passes: past the access TTL + leeway the entry is pruned.
    clock.advance(Duration::from_secs(400));
    assert!(s.prune_revocations().unwrap().0 >= 1);
    assert!(s.verify_access(&pair.access).is_err());
}

/// Issue 25 item 1: the revocation horizon is the store's, recorded by every
/// opener: a revocation written by an opener with the default (5 min) access
/// TTL — the CLI — stays in force for an app whose access tokens live an hour,
/// also across a sweep, and so does one written after a restart with a
/// shorter TTL.
#[test]
fn revocations_outlive_the_longest_access_ttl_any_opener_used() {
    let clock = cloakroom::ManualClock::fixed();
    let app = || {
        Config::builder()
            .access_ttl(Duration::from_secs(3600))
            .sweep_interval(None)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let cli = || Config::builder().sweep_interval(None).clock(clock.clone()).build().unwrap();
    let place = Durable::new();
    let s = place.open(app());
    let issued = s.create(NewSession::new("long-ttl")).unwrap();
    let pair = s.issue_tokens(&issued.token.to_string()).unwrap();
    let other = s.create(NewSession::new("long-ttl-2")).unwrap();
    let pair2 = s.issue_tokens(&other.token.to_string()).unwrap();
    s.close().unwrap();
    drop(s);
    // The CLI (default config) revokes; then the app restarts.
    let c = place.open(cli());
    c.revoke(issued.session.id()).unwrap();
    c.close().unwrap();
    drop(c);
    // A restart with a shorter TTL revokes the other session.
    let short = place.open(cli());
    short.revoke(other.session.id()).unwrap();
    clock.advance(Duration::from_secs(6 * 60));
    short.sweep().unwrap();
    assert!(matches!(short.verify_access(&pair2.access), Err(Error::Revoked)));
    short.close().unwrap();
    drop(short);
    let s = place.open(app());
    assert!(matches!(s.verify_access(&pair.access), Err(Error::Revoked)));
    clock.advance(Duration::from_secs(10 * 60));
    s.sweep().unwrap();
    assert!(matches!(s.verify_access(&pair.access), Err(Error::Revoked)), "pruned on the CLI's horizon");
    assert!(matches!(s.verify_access(&pair2.access), Err(Error::Revoked)), "pruned on a shorter restart's horizon");
    // Past the hour (+ leeway) the tokens are expired anyway and the entries may go.
    clock.advance(Duration::from_secs(3600));
    s.sweep().unwrap();
    assert!(s.verify_access(&pair.access).is_err());
}

/// "Sign out other devices" over more sessions than one step takes, with the
/// kept session first in the user index (the shortest deadline): every other
/// session is revoked, the kept one stays.
#[test]
fn revoking_others_spans_steps_and_keeps_the_one() {
    let s = open(Config::builder().durability(Durability::Eventual).build().unwrap());
    let keep = s.create(NewSession::new("many").ttl(Duration::from_secs(3600))).unwrap();
    let others: Vec<String> = (0..600).map(|_| s.create(NewSession::new("many")).unwrap().token.to_string()).collect();
    s.flush().unwrap();
    assert_eq!(s.revoke_user("many", Scope::Others(keep.session.id())).unwrap(), 600);
    s.validate(&keep.token.to_string()).unwrap();
    for t in &others {
        assert!(matches!(s.validate(t), Err(Error::Revoked | Error::NotFound)));
    }
    assert_eq!(s.list_user("many").unwrap().len(), 1);
}
