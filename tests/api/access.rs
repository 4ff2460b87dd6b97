//! Access tokens (JWT) against their session and their keys: expiry capped
//! at the session's deadline, and `Keyring::verify_signature` under the same
//! caps as `verify_access`. Backend-independent (also run on Redis).

use std::time::Duration;

use cloakroom::{Config, Error, JwtError, ManualClock, NewSession};

use super::common::store;

/// An access token never outlives its session's absolute deadline.
#[test]
fn access_token_exp_is_capped_at_the_session_deadline() {
    let (s, _clock) = store();
    let t = s.create(NewSession::new("alice").ttl(Duration::from_secs(60))).unwrap();
    let pair = s.issue_tokens(&t.token.to_string()).unwrap();
    let claims = s.verify_access(&pair.access).unwrap();
    assert!(claims.exp - claims.iat <= 60, "a 5-minute JWT for a session with 60 s left");
    assert!(pair.access_expires_at <= t.session.expires_at());
    assert!(pair.refresh_expires_at <= t.session.expires_at());
}

/// `Keyring::verify_signature` has the same caps as `verify_access`: a length
/// cap, no `crit`, and retired keys stop verifying after their window.
#[test]
fn verify_signature_has_the_caps_of_verify_access() {
    let clock = ManualClock::fixed();
    let keys = cloakroom::Keyring::new();
    keys.add_hs256("old", &[1; 32]).unwrap();
    keys.add_hs256("new", &[2; 32]).unwrap();
    let cfg = Config::builder().keyring(keys.clone()).clock(clock.clone()).build().unwrap();
    let s = super::common::open(cfg);
    let t = s.create(NewSession::new("dave")).unwrap().token.to_string();
    let jwt = s.issue_tokens(&t).unwrap().access; // signed by "old"
    let now = cloakroom::Clock::now(&clock);
    keys.verify_signature(&jwt, "old", now, Duration::ZERO).unwrap();

    let long = format!("{jwt}{}", "A".repeat(5000));
    assert!(matches!(keys.verify_signature(&long, "old", now, Duration::ZERO), Err(Error::Jwt(JwtError::Malformed))));

    keys.promote("new").unwrap();
    s.retire_key("old").unwrap(); // verifies for access TTL + leeway
    keys.verify_signature(&jwt, "old", now, Duration::ZERO).unwrap();
    let later = now + Duration::from_secs(331);
    assert!(matches!(
        keys.verify_signature(&jwt, "old", later, Duration::from_secs(100_000)),
        Err(Error::Jwt(JwtError::Header("unknown kid")))
    ));
}
