//! Token-policy defects found by independent tests (each failed before its fix).

use std::time::Duration;

use cloakroom::{Config, Error, InputError, JwtError, ManualClock, NewSession};

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

/// A per-session idle timeout not longer than the touch granularity is refused.
#[test]
fn idle_timeout_below_the_touch_granularity_is_refused() {
    let (s, _clock) = store(); // touch granularity 1 min
    let r = s.create(NewSession::new("bob").idle_timeout(Duration::from_secs(30)));
    assert!(matches!(r, Err(Error::Input(InputError::IdleBelowGranularity { granularity_ms: 60_000 }))), "{r:?}");
    s.create(NewSession::new("bob").idle_timeout(Duration::from_secs(61))).unwrap();
}

/// `Revoked` is answered only to the holder of the revoked secret; a token
/// with the same id and any other secret reads `NotFound` (no oracle on ids).
#[test]
fn a_revoked_id_without_its_secret_reads_not_found() {
    let (s, _clock) = store();
    let first = s.create(NewSession::new("carol")).unwrap().token.to_string();
    let second = s.rotate(&first).unwrap().token.to_string(); // same id, new secret
    s.revoke(s.validate(&second).unwrap().id()).unwrap();
    assert!(matches!(s.validate(&second), Err(Error::Revoked)), "the holder learns it was revoked");
    assert!(matches!(s.validate(&first), Err(Error::NotFound)), "another secret learns nothing");
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
