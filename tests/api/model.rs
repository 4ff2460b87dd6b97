//! Model-based test: random operation sequences against the store and a simple
//! reference model; every validate result must match the model's prediction.

use std::time::Duration;

use cloakroom::{Clock as _, Config, Error, ManualClock, NewSession, Scope};
use proptest::prelude::*;

const USERS: usize = 3;
const TTL_S: u64 = 3600;
const IDLE_S: u64 = 600;

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Validate(usize),
    Rotate(usize),
    Revoke(usize),
    RevokeUser(usize, bool),
    Advance(u64),
    Reopen,
    Issue(usize),
    /// Refresh with the family's token `back` generations behind the current one.
    Refresh(usize, u8),
    Verify(usize),
    LogoutEverywhere(usize),
    /// `update_data` of the session an entry names, with one byte of data.
    Update(usize, u8),
    /// `update_data_if`, with the current version or (`stale`) the one before.
    UpdateIf(usize, bool, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..USERS).prop_map(Op::Create),
        6 => any::<usize>().prop_map(Op::Validate),
        1 => any::<usize>().prop_map(Op::Rotate),
        1 => any::<usize>().prop_map(Op::Revoke),
        1 => ((0..USERS), any::<bool>()).prop_map(|(u, o)| Op::RevokeUser(u, o)),
        3 => prop_oneof![0..120u64, 500..700u64, 3000..4000u64].prop_map(Op::Advance),
        1 => Just(Op::Reopen),
        2 => any::<usize>().prop_map(Op::Issue),
        4 => (any::<usize>(), prop_oneof![4 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)]).prop_map(|(i, b)| Op::Refresh(i, b)),
        3 => any::<usize>().prop_map(Op::Verify),
        1 => (0..USERS).prop_map(Op::LogoutEverywhere),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Op::Update(i, b)),
        2 => (any::<usize>(), any::<bool>(), any::<u8>()).prop_map(|(i, s, b)| Op::UpdateIf(i, s, b)),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Ok,
    Expired,
    Revoked,
    NotFound,
}

struct M {
    token: String,
    id: cloakroom::SessionId,
    user: usize,
    expires: u64,
    last_seen: u64,
    revoked: bool,
    /// Revoked before a reopen: the store no longer knows the secret's hash,
    /// so the session token reads `NotFound` (refresh and access tokens still
    /// read `Revoked`).
    forgotten: bool,
    /// This entry is a session's token from before a rotation: the session
    /// lives on (same id) in a later entry; this token and its refresh tokens
    /// are dead (`NotFound`), its access tokens revoked.
    rotated_away: bool,
    /// The latest refresh family's tokens by generation (index 0 = generation
    /// 1). Each `issue_tokens` starts a new family; earlier ones are left alone.
    refresh: Vec<String>,
    rotated_at: u64,
    /// Access tokens: (jwt, exp in seconds).
    access: Vec<(String, u64)>,
}

impl M {
    /// What a session-token call (validate, rotate, issue_tokens) answers.
    fn want_session(&self, now: u64) -> Want {
        if self.revoked && self.forgotten { Want::NotFound } else { self.want(now) }
    }

    fn want(&self, now: u64) -> Want {
        if self.revoked {
            Want::Revoked
        } else if now >= self.expires || now >= self.last_seen + IDLE_S * 1000 {
            Want::Expired
        } else {
            Want::Ok
        }
    }
}

fn got<T>(r: &Result<T, Error>) -> Want {
    match r {
        Ok(_) => Want::Ok,
        Err(Error::Expired | Error::Jwt(cloakroom::JwtError::Expired)) => Want::Expired,
        Err(Error::Revoked) => Want::Revoked,
        Err(Error::NotFound) => Want::NotFound,
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

/// A token from before a rotation: refused as unknown, or as revoked once the
/// session it belonged to is gone (the id is in the revocation set).
fn dead<T>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::NotFound | Error::Revoked))
}

const GRACE_MS: u64 = 10_000;
const ACCESS_TTL_S: u64 = 300;
const LEEWAY_S: u64 = 30;

fn config(clock: &ManualClock) -> Config {
    Config::builder()
        .session_ttl(Duration::from_secs(TTL_S))
        .idle_timeout(Some(Duration::from_secs(IDLE_S)))
        .touch_granularity(Duration::from_millis(1)) // every move of last_seen persists: exact model
        .cache_capacity(8)
        .cache_shards(2) // tiny cache: exercise misses and evictions
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let place = super::common::Durable::new();
    let clock = ManualClock::fixed();
    let mut now = clock.now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut store = place.open(config(&clock));
    let mut model: Vec<M> = Vec::new();
    // Data version and data of each session, by id (a rotation keeps both).
    let mut data: std::collections::HashMap<cloakroom::SessionId, (u64, Vec<u8>)> = std::collections::HashMap::new();
    for op in ops {
        match op {
            Op::Create(u) => {
                let i = store.create(NewSession::new(format!("user{u}"))).unwrap();
                data.insert(i.session.id(), (1, Vec::new()));
                model.push(M {
                    token: i.token.to_string(),
                    id: i.session.id(),
                    user: u,
                    expires: now + TTL_S * 1000,
                    last_seen: now,
                    revoked: false,
                    forgotten: false,
                    rotated_away: false,
                    refresh: Vec::new(),
                    rotated_at: 0,
                    access: Vec::new(),
                });
            }
            Op::Validate(i) if !model.is_empty() => {
                let k = i % model.len();
                let m = &mut model[k];
                if m.rotated_away {
                    prop_assert!(dead(&store.validate(&m.token)), "pre-rotation token validated");
                    continue;
                }
                let want = m.want_session(now);
                let r = store.validate(&m.token);
                prop_assert_eq!(got(&r), want, "validate {}", m.id);
                if let Ok(s) = r {
                    m.last_seen = now;
                    let (version, bytes) = &data[&m.id];
                    prop_assert_eq!((s.version(), s.data()), (*version, &bytes[..]), "data of {}", m.id);
                }
            }
            Op::Rotate(i) if !model.is_empty() => {
                let k = i % model.len();
                if model[k].rotated_away {
                    prop_assert!(dead(&store.rotate(&model[k].token)), "pre-rotation token rotated");
                    continue;
                }
                let want = model[k].want_session(now);
                let r = store.rotate(&model[k].token);
                match (&r, want) {
                    (Ok(new), Want::Ok) => {
                        let m = &mut model[k];
                        prop_assert_eq!(new.session.id(), m.id, "rotation keeps the id");
                        m.rotated_away = true;
                        let (user, expires) = (m.user, m.expires);
                        // Every family issued so far is dead (the old entry keeps its tokens).
                        model.push(M {
                            token: new.token.to_string(),
                            id: new.session.id(),
                            user,
                            expires,
                            last_seen: now,
                            revoked: false,
                            forgotten: false,
                            rotated_away: false,
                            refresh: Vec::new(),
                            rotated_at: 0,
                            access: Vec::new(),
                        });
                    }
                    (Err(Error::Expired), Want::Expired)
                    | (Err(Error::Revoked), Want::Revoked)
                    | (Err(Error::NotFound), Want::NotFound) => {}
                    _ => prop_assert!(false, "rotate: got {:?}, want {:?}", r.map(|_| ()), want),
                }
            }
            Op::Revoke(i) if !model.is_empty() => {
                // Any id the model ever saw (a devices page may be old) revokes the
                // session it names now, rotated or not.
                let k = i % model.len();
                let id = model[k].id;
                store.revoke(id).unwrap();
                for m in model.iter_mut().filter(|m| m.id == id) {
                    m.revoked = true;
                }
            }
            Op::RevokeUser(u, others) => {
                let keep =
                    if others { model.iter().rev().find(|m| m.user == u && !m.revoked).map(|m| m.id) } else { None };
                let scope = keep.map_or(Scope::All, Scope::Others);
                let n = store.revoke_user(&format!("user{u}"), scope).unwrap();
                let mut expect = 0;
                for m in model.iter_mut().filter(|m| m.user == u && !m.revoked && Some(m.id) != keep) {
                    if m.rotated_away {
                        m.revoked = true;
                        continue; // counted with the live entry of the same id
                    }
                    m.revoked = true;
                    expect += 1;
                }
                prop_assert_eq!(n, expect);
            }
            Op::Issue(i) if !model.is_empty() => {
                let k = i % model.len();
                let m = &mut model[k];
                if m.rotated_away {
                    prop_assert!(dead(&store.issue_tokens(&m.token)), "pre-rotation token issued tokens");
                    continue;
                }
                let want = m.want_session(now);
                let r = store.issue_tokens(&m.token);
                prop_assert_eq!(got(&r), want, "issue_tokens {}", m.id);
                if let Ok(p) = r {
                    m.last_seen = now;
                    m.rotated_at = now;
                    // A new family (a new tab) starts at generation 1.
                    prop_assert_eq!(p.refresh.generation(), 1);
                    m.refresh = vec![p.refresh.to_string()];
                    m.access.push((p.access, now / 1000 + ACCESS_TTL_S));
                }
            }
            Op::Refresh(i, back) if !model.is_empty() => {
                let k = i % model.len();
                let m = &mut model[k];
                let cur = m.refresh.len();
                if cur == 0 || (back as usize) >= cur {
                    continue;
                }
                let presented = cur - back as usize; // generation
                let r = store.refresh(&m.refresh[presented - 1]);
                if m.rotated_away {
                    // The session's own state is checked first, so an expired one says so.
                    let gone = dead(&r) || matches!(r, Err(Error::Expired));
                    prop_assert!(gone, "pre-rotation refresh: {:?}", r.map(|_| ()));
                    continue;
                }
                match m.want(now) {
                    Want::Ok => {
                        if back == 0 || (back == 1 && now - m.rotated_at <= GRACE_MS) {
                            let p = r.map_err(|e| TestCaseError::fail(format!("refresh {back} behind: {e:?}")))?;
                            m.last_seen = now;
                            if back == 0 {
                                m.rotated_at = now;
                                prop_assert_eq!(p.refresh.generation(), cur as u64 + 1);
                                m.refresh.push(p.refresh.to_string());
                            } else {
                                prop_assert_eq!(
                                    p.refresh.to_string(),
                                    m.refresh[cur - 1].clone(),
                                    "grace returns current"
                                );
                            }
                            m.access.push((p.access, now / 1000 + ACCESS_TTL_S));
                        } else {
                            prop_assert!(matches!(r, Err(Error::ReuseDetected)), "reuse: {:?}", r.map(|_| ()));
                            m.revoked = true;
                        }
                    }
                    want => prop_assert_eq!(got(&r), want, "refresh of a dead session"),
                }
            }
            Op::Verify(i) if !model.is_empty() => {
                let k = i % model.len();
                let m = &model[k];
                if let Some((jwt, exp)) = m.access.last() {
                    let want = if now / 1000 >= exp + LEEWAY_S {
                        Want::Expired
                    } else if m.revoked || m.rotated_away {
                        Want::Revoked
                    } else {
                        Want::Ok
                    };
                    prop_assert_eq!(got(&store.verify_access(jwt)), want, "verify_access");
                }
            }
            Op::LogoutEverywhere(u) => {
                let n = store.logout_everywhere(&format!("user{u}")).unwrap();
                let mut expect = 0;
                for m in model.iter_mut().filter(|m| m.user == u && !m.revoked) {
                    m.revoked = true;
                    expect += usize::from(!m.rotated_away);
                }
                prop_assert_eq!(n, expect);
            }
            Op::Update(i, b) | Op::UpdateIf(i, _, b) if !model.is_empty() => {
                let id = model[i % model.len()].id;
                // The entry that holds the session now (the latest with this id).
                let live = model.iter().rev().find(|m| m.id == id).map(|m| m.want(now));
                let (version, _) = data[&id];
                let (r, conflict) = match op {
                    Op::UpdateIf(_, true, _) if version > 1 => (store.update_data_if(id, version - 1, vec![b]), true),
                    Op::UpdateIf(..) => (store.update_data_if(id, version, vec![b]), false),
                    _ => (store.update_data(id, vec![b]), false),
                };
                match (live, &r) {
                    (Some(Want::Ok), _) if conflict => {
                        prop_assert!(matches!(r, Err(Error::Conflict { current }) if current == version), "{:?}", r)
                    }
                    (Some(Want::Ok), Ok(v)) => {
                        prop_assert_eq!(*v, version + 1);
                        data.insert(id, (version + 1, vec![b]));
                    }
                    (Some(Want::Ok), Err(e)) => prop_assert!(false, "update of a live session: {:?}", e),
                    // A revoked session's data can no longer be changed.
                    (Some(Want::Revoked), _) => prop_assert!(r.is_err(), "update of a revoked session"),
                    // Expired but not yet swept: whatever it answers, no validate
                    // will show the data again; keep the model in step.
                    (_, Ok(v)) => {
                        data.insert(id, (*v, vec![b]));
                    }
                    _ => {}
                }
            }
            Op::Advance(s) => {
                clock.advance(Duration::from_secs(s));
                now += s * 1000;
            }
            Op::Reopen => {
                // A redb store keeps a revoked secret's hash in memory only: after
                // a reopen its holder reads NotFound. Redis keeps it with the
                // revocation entry, so a Redis-backed store still says Revoked.
                if !crate::REDIS {
                    for m in model.iter_mut().filter(|m| m.revoked) {
                        m.forgotten = true;
                    }
                }
                store.close().unwrap();
                drop(store);
                store = place.open(config(&clock));
            }
            _ => {}
        }
        // Invariant: list_user shows exactly the model's live sessions.
        for u in 0..USERS {
            let mut listed: Vec<_> = store.list_user(&format!("user{u}")).unwrap().iter().map(|s| s.id()).collect();
            let mut live: Vec<_> = model
                .iter()
                .filter(|m| m.user == u && !m.rotated_away && m.want(now) == Want::Ok)
                .map(|m| m.id)
                .collect();
            listed.sort();
            live.sort();
            prop_assert_eq!(listed, live, "list_user(user{})", u);
        }
    }
    Ok(())
}

proptest! {
    // 1,000 random sequences on redb; 200 on Redis, where every write is a
    // round trip and an fsync of the server's AOF.
    #![proptest_config(ProptestConfig { cases: if crate::REDIS { 200 } else { 1000 }, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
