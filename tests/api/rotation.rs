//! Rotation (`Store::rotate`): a new secret under the same id, the old token
//! dead; writes racing a rotation are neither lost nor dodged, and refresh
//! tokens from before it stay dead. Backend-independent (also run on Redis).

use std::sync::Barrier;

use cloakroom::{Error, NewSession};

use super::common::store;

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
