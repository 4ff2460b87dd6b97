#![no_main]
//! Drives an in-memory store on a manual clock with arbitrary operations and
//! checks each result against a small reference model.

use std::time::Duration;

use arbitrary::Arbitrary;
use cloakroom::{Config, Error, ManualClock, NewSession, Scope, Store};

#[derive(Arbitrary, Debug)]
enum Op {
    Create(u8),
    Validate(u8),
    Rotate(u8),
    Revoke(u8),
    RevokeUser(u8, bool),
    Issue(u8),
    Refresh(u8),
    Verify(u8),
    Logout(u8),
    Advance(u16),
    Sweep,
    Garbage(String),
}

struct M {
    token: String,
    id: cloakroom::SessionId,
    user: u8,
    expires: u64,
    last_seen: u64,
    revoked: bool,
    refresh: Option<String>,
    access: Option<(String, u64)>,
}

const TTL: u64 = 3600;
const IDLE: u64 = 600;

libfuzzer_sys::fuzz_target!(|ops: Vec<Op>| {
    let clock = ManualClock::fixed();
    let cfg = Config::builder()
        .session_ttl(Duration::from_secs(TTL))
        .idle_timeout(Some(Duration::from_secs(IDLE)))
        .touch_granularity(Duration::from_millis(1))
        .sweep_interval(None)
        .cache_capacity(4)
        .cache_shards(2)
        .server_key(&[9; 32])
        .clock(clock.clone())
        .build()
        .unwrap();
    let store = Store::in_memory(cfg).unwrap();
    let mut now: u64 = 0; // seconds since start
    let mut model: Vec<M> = Vec::new();
    for op in ops.into_iter().take(64) {
        let alive = |m: &M, now: u64| !m.revoked && now < m.expires && now < m.last_seen + IDLE;
        match op {
            Op::Create(u) => {
                let u = u % 3;
                let i = store.create(NewSession::new(format!("u{u}"))).unwrap();
                model.push(M { token: i.token.to_string(), id: i.session.id(), user: u, expires: now + TTL,
                    last_seen: now, revoked: false, refresh: None, access: None });
            }
            Op::Validate(i) if !model.is_empty() => {
                let k = i as usize % model.len();
                let ok = store.validate(&model[k].token).is_ok();
                assert_eq!(ok, alive(&model[k], now), "validate");
                if ok {
                    model[k].last_seen = now;
                }
            }
            Op::Rotate(i) if !model.is_empty() => {
                let k = i as usize % model.len();
                let r = store.rotate(&model[k].token);
                assert_eq!(r.is_ok(), alive(&model[k], now), "rotate");
                if let Ok(n) = r {
                    model[k].revoked = true;
                    let (user, expires) = (model[k].user, model[k].expires);
                    model.push(M { token: n.token.to_string(), id: n.session.id(), user, expires, last_seen: now,
                        revoked: false, refresh: None, access: None });
                }
            }
            Op::Revoke(i) if !model.is_empty() => {
                let k = i as usize % model.len();
                store.revoke(model[k].id).unwrap();
                model[k].revoked = true;
            }
            Op::RevokeUser(u, others) => {
                let u = u % 3;
                let keep = if others { model.iter().rev().find(|m| m.user == u && !m.revoked).map(|m| m.id) } else { None };
                store.revoke_user(&format!("u{u}"), keep.map_or(Scope::All, Scope::Others)).unwrap();
                for m in model.iter_mut().filter(|m| m.user == u && Some(m.id) != keep) {
                    m.revoked = true;
                }
            }
            Op::Logout(u) => {
                let u = u % 3;
                store.logout_everywhere(&format!("u{u}")).unwrap();
                for m in model.iter_mut().filter(|m| m.user == u) {
                    m.revoked = true;
                }
            }
            Op::Issue(i) if !model.is_empty() => {
                let k = i as usize % model.len();
                let r = store.issue_tokens(&model[k].token);
                assert_eq!(r.is_ok(), alive(&model[k], now), "issue_tokens");
                if let Ok(p) = r {
                    model[k].last_seen = now;
                    model[k].refresh = Some(p.refresh.to_string());
                    model[k].access = Some((p.access, now + 300));
                }
            }
            Op::Refresh(i) if !model.is_empty() => {
                let k = i as usize % model.len();
                if let Some(rt) = model[k].refresh.clone() {
                    let r = store.refresh(&rt);
                    assert_eq!(r.is_ok(), alive(&model[k], now), "refresh of the current token");
                    if let Ok(p) = r {
                        model[k].last_seen = now;
                        model[k].refresh = Some(p.refresh.to_string());
                        model[k].access = Some((p.access, now + 300));
                    }
                }
            }
            Op::Verify(i) if !model.is_empty() => {
                let k = i as usize % model.len();
                if let Some((jwt, exp)) = &model[k].access {
                    let ok = store.verify_access(jwt).is_ok();
                    assert_eq!(ok, !model[k].revoked && now < exp + 30, "verify_access");
                }
            }
            Op::Advance(s) => {
                let s = u64::from(s % 4000);
                clock.advance(Duration::from_secs(s));
                now += s;
            }
            Op::Sweep => {
                store.sweep().unwrap();
                // Swept sessions read as NotFound; the model treats them as dead already.
            }
            Op::Garbage(s) => {
                for r in [store.validate(&s).err(), store.refresh(&s).err(), store.authenticate(&s).err()] {
                    assert!(!matches!(r, Some(Error::Storage(_) | Error::Closed)), "{r:?}");
                }
            }
            _ => {}
        }
    }
});
