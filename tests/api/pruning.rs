//! Pruning the revoked set: an entry is dropped once no token it could refuse
//! can still verify, and not before. Backend-independent (also run on Redis).

use cloakroom::NewSession;

use super::common::store;

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

/// Entries that fall due together (a user-wide revocation makes thousands
/// due at once) are pruned in bounded steps: no single journal record or
/// Redis script grows with their number (it was one op for all of them).
#[test]
fn a_large_prune_is_written_in_bounded_steps() {
    let (s, clock) = store();
    let n = 2_500;
    for _ in 0..n {
        s.create(NewSession::new("whale")).unwrap();
    }
    assert_eq!(s.revoke_user("whale", cloakroom::Scope::All).unwrap(), n);
    clock.advance(std::time::Duration::from_secs(331)); // past the horizon (300 s + 30 s)
    let commits = s.stats().commits;
    assert_eq!(s.prune_revocations().unwrap().0, n);
    let steps = s.stats().commits - commits;
    assert!(steps >= 3, "2,500 entries in steps of at most 1,024: at least 3 writes, saw {steps}");
    // (On Redis this node's follower may still be applying the events of
    // its own revocation steps, and puts an entry it had pruned back in
    // memory until the next prune: only the file-backed store is exact here.)
    if !crate::REDIS {
        assert_eq!(s.stats().revoked_serials, 0);
        assert_eq!(s.prune_revocations().unwrap().0, 0, "nothing left");
    }
}
