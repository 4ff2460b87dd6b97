use cloakroom::{Error, InputError, Meta, NewSession, Scope};

use super::common::store;

#[test]
fn create_validate_update_rotate_revoke() {
    let (s, _) = store();
    let meta = Meta { ip: Some("192.0.2.7".parse().unwrap()), user_agent: Some("curl/8".into()), label: None };
    let issued = s.create(NewSession::new("alice").data(b"v1".to_vec()).meta(meta.clone())).unwrap();
    let tok = issued.token.to_string();
    let v = s.validate(&tok).unwrap();
    assert_eq!((v.user(), v.data(), v.version(), v.meta()), ("alice", &b"v1"[..], 1, &meta));
    assert_eq!(v.id(), issued.session.id());

    assert_eq!(s.update_data(v.id(), b"v2".to_vec()).unwrap(), 2);
    assert_eq!(s.validate(&tok).unwrap().data(), b"v2");

    let rotated = s.rotate(&tok).unwrap();
    let rtok = rotated.token.to_string();
    assert_eq!(rotated.session.id(), v.id(), "a session keeps its id across rotations");
    assert_ne!(rotated.session.serial(), v.serial());
    assert!(matches!(s.validate(&tok), Err(Error::Revoked)), "old token must die on rotate");
    let r = s.validate(&rtok).unwrap();
    assert_eq!((r.user(), r.data(), r.meta()), ("alice", &b"v2"[..], &meta));
    assert_eq!(r.expires_at(), v.expires_at(), "rotate keeps the absolute deadline");

    s.revoke(r.id()).unwrap();
    assert!(matches!(s.validate(&rtok), Err(Error::Revoked)));
    // Unknown and repeated revocations are not errors (no oracle).
    s.revoke(r.id()).unwrap();
    s.revoke("AAAAAAAAAAAAAAAAAAAAAA".parse().unwrap()).unwrap();
}

#[test]
fn update_data_if_detects_stale_versions() {
    let (s, _) = store();
    let id = s.create(NewSession::new("bob")).unwrap().session.id();
    assert_eq!(s.update_data_if(id, 1, b"a".to_vec()).unwrap(), 2);
    match s.update_data_if(id, 1, b"b".to_vec()) {
        Err(Error::Conflict { current }) => assert_eq!(current, 2),
        other => panic!("expected conflict, got {other:?}"),
    }
    assert_eq!(s.update_data_if(id, 2, b"c".to_vec()).unwrap(), 3);
    assert!(matches!(s.update_data_if("AAAAAAAAAAAAAAAAAAAAAA".parse().unwrap(), 1, vec![]), Err(Error::NotFound)));
}

#[test]
fn concurrent_compare_and_swap_loses_no_update() {
    let (s, _) = store();
    let id = s.create(NewSession::new("carol").data(0u64.to_le_bytes().to_vec())).unwrap().session.id();
    let tok = {
        // Re-read through list_user, as a handler would through validate.
        s.list_user("carol").unwrap()[0].id()
    };
    assert_eq!(tok, id);
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                for _ in 0..25 {
                    loop {
                        let cur = s.list_user("carol").unwrap().remove(0);
                        let n = u64::from_le_bytes(cur.data().try_into().unwrap());
                        match s.update_data_if(id, cur.version(), (n + 1).to_le_bytes().to_vec()) {
                            Ok(_) => break,
                            Err(Error::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    let end = s.list_user("carol").unwrap().remove(0);
    assert_eq!(u64::from_le_bytes(end.data().try_into().unwrap()), 100);
    assert_eq!(end.version(), 101);
}

#[test]
fn revoke_user_scopes_and_list_user() {
    let (s, _) = store();
    let toks: Vec<_> = (0..3).map(|_| s.create(NewSession::new("dave")).unwrap()).collect();
    let other = s.create(NewSession::new("erin")).unwrap();
    let listed = s.list_user("dave").unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        listed.iter().map(|x| x.id()).collect::<Vec<_>>(),
        toks.iter().map(|t| t.session.id()).collect::<Vec<_>>()
    );

    let keep = toks[1].session.id();
    assert_eq!(s.revoke_user("dave", Scope::Others(keep)).unwrap(), 2);
    assert!(s.validate(&toks[0].token.to_string()).is_err());
    assert!(s.validate(&toks[1].token.to_string()).is_ok());
    assert!(s.validate(&toks[2].token.to_string()).is_err());
    assert_eq!(s.list_user("dave").unwrap().len(), 1);

    assert_eq!(s.revoke_user("dave", Scope::All).unwrap(), 1);
    assert!(s.validate(&toks[1].token.to_string()).is_err());
    assert!(s.list_user("dave").unwrap().is_empty());
    assert!(s.validate(&other.token.to_string()).is_ok(), "other users untouched");
    assert_eq!(s.revoke_user("nobody", Scope::All).unwrap(), 0);
}

#[test]
fn user_id_and_data_limits() {
    let (s, _) = store();
    assert!(matches!(s.create(NewSession::new("")), Err(Error::Input(InputError::UserId { len: 0, .. }))));
    assert!(s.create(NewSession::new("u".repeat(256))).is_ok());
    assert!(matches!(
        s.create(NewSession::new("u".repeat(257))),
        Err(Error::Input(InputError::UserId { len: 257, .. }))
    ));
    // Odd Unicode is fine as long as it fits.
    let odd = s.create(NewSession::new("Zoë\u{200d}\u{1F600}\u{202E}x")).unwrap();
    assert_eq!(s.validate(&odd.token.to_string()).unwrap().user(), "Zoë\u{200d}\u{1F600}\u{202E}x");

    assert!(s.create(NewSession::new("u").data(vec![0; 64 * 1024])).is_ok());
    assert!(matches!(
        s.create(NewSession::new("u").data(vec![0; 64 * 1024 + 1])),
        Err(Error::Input(InputError::DataTooLarge { len: 65_537, max: 65_536 }))
    ));
    let id = odd.session.id();
    assert!(matches!(s.update_data(id, vec![0; 64 * 1024 + 1]), Err(Error::Input(InputError::DataTooLarge { .. }))));
    let long_ua = Meta { user_agent: Some("a".repeat(513)), ..Meta::default() };
    assert!(matches!(s.create(NewSession::new("u").meta(long_ua)), Err(Error::Input(InputError::MetaTooLong { .. }))));
    assert!(matches!(
        s.create(NewSession::new("u").ttl(std::time::Duration::ZERO)),
        Err(Error::Input(InputError::Ttl(_)))
    ));
}

#[test]
fn closed_store_refuses_calls() {
    let (s, _) = store();
    let t = s.create(NewSession::new("u")).unwrap().token.to_string();
    let clone = s.clone();
    s.close().unwrap();
    assert!(matches!(clone.validate(&t), Err(Error::Closed)));
    assert!(matches!(clone.create(NewSession::new("u")), Err(Error::Closed)));
    s.close().unwrap(); // idempotent
}

#[test]
fn stats_count_hits_misses_and_sessions() {
    let (s, _) = store();
    let t = s.create(NewSession::new("u")).unwrap().token.to_string();
    for _ in 0..10 {
        s.validate(&t).unwrap();
    }
    s.checkpoint().unwrap();
    let st = s.stats();
    // Redis expires sessions by itself, so a Redis-backed store does not count them.
    assert_eq!(st.sessions_stored, if crate::REDIS { None } else { Some(1) });
    assert_eq!(st.cached_sessions, 1);
    assert!(st.cache_hits >= 10);
    assert!(st.durable_commits >= 1);
}

#[test]
fn eventual_create_on_a_closed_store_is_refused_and_caches_nothing() {
    let mut b = cloakroom::Config::builder();
    b.durability(cloakroom::Durability::Eventual).sweep_interval(None);
    let s = super::common::open(b.build().unwrap());
    let clone = s.clone();
    s.close().unwrap();
    assert!(matches!(clone.create(NewSession::new("u")), Err(Error::Closed)));
    assert_eq!(clone.stats().cached_sessions, 0);
}
