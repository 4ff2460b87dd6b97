//! The write ops on Redis: a create as one MULTI/EXEC, the server-side
//! revocations as scripts, and the writes that build a new record from the
//! stored one (touch, update, rotation, refresh-family decisions) as a read,
//! a decision in Rust, and a compare-and-swap script retried until it lands.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::Value;

use super::backend::{CAS_TRIES, Core};
use super::keys::split_id_hash;
use super::resp::{Arg, Packed};
use crate::backend::rules::{self, Replace, accepted};
use crate::backend::sealed::mac::RowTable;
use crate::backend::sealed::rows::{decode_family, decode_session, seal_session};
use crate::backend::{Create, Failure, Op, Outcome, Revoked, Swept};
use crate::config::OnLimit;
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::refresh::FamilyChange;
use crate::session::Record;
use crate::token::{SecretHash, SessionId};

/// A stored session as read for a compare-and-swap.
pub(super) struct Stored {
    /// The sealed record bytes, as compared by the script.
    pub(super) r: Vec<u8>,
    /// The sealed family bytes, if any.
    pub(super) f: Option<Vec<u8>>,
    pub(super) rec: Record,
}

/// What a compare-and-swap writes.
pub(super) struct Cas<'a> {
    pub(super) expect_r: &'a [u8],
    pub(super) expect_f: Option<&'a [u8]>,
    pub(super) delete: bool,
    pub(super) new_r: Option<Vec<u8>>,
    /// New sealed families (`None`: keep).
    pub(super) new_f: Option<Vec<u8>>,
    pub(super) ttl_ms: Option<u64>,
    pub(super) new_serial: Option<(u64, SecretHash)>,
    pub(super) prune_after: u64,
    pub(super) revoke_old: bool,
    pub(super) event: Option<Vec<u8>>,
    /// A new score of the session in its user index (its absolute deadline,
    /// when an update moved it).
    pub(super) user_score: Option<u64>,
}

/// The answer of the CAS script.
pub(super) enum CasResult {
    Done,
    Gone,
    Changed,
}

impl Core {
    pub(super) fn read(&self, id: &SessionId) -> Result<Option<Stored>, Error> {
        let mut p = Packed::new();
        p.cmd(&["HMGET".into(), self.keys.session(id), "r".into(), "num".into(), "f".into()]);
        let (r, num, f): (Option<Vec<u8>>, Option<u64>, Option<Vec<u8>>) = self.pool.with(|c| p.query(c))?;
        let (Some(r), Some(num)) = (r, num) else { return Ok(None) };
        let rec = decode_session(&self.mac, *id, num, &r).inspect_err(|_| {
            self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        })?;
        Ok(Some(Stored { r, f, rec }))
    }

    fn cas(&self, id: &SessionId, user: &str, c: &Cas<'_>) -> Result<CasResult, Error> {
        let ttl = c.ttl_ms.map(Arg::U).unwrap_or(Arg::B(b""));
        let (serial, hash) = match &c.new_serial {
            Some((serial, sh)) => (Arg::U(*serial), Arg::B(sh.0.as_slice())),
            None => (Arg::B(b""), Arg::B(b"")),
        };
        let mut p = Packed::new();
        p.evalsha(
            &self.scripts.cas,
            &[
                self.keys.session(id),
                self.keys.user(user),
                self.keys.revoked().into(),
                self.keys.revoked_times().into(),
                self.keys.events().into(),
            ],
            &[
                Arg::B(c.expect_r),
                Arg::B(c.expect_f.unwrap_or(b"")),
                Arg::B(if c.delete { b"del" } else { b"put" }),
                Arg::B(c.new_r.as_deref().unwrap_or(b"")),
                Arg::B(c.new_f.as_deref().unwrap_or(b"")),
                ttl,
                serial,
                hash,
                Arg::U(c.prune_after),
                Arg::Hex("", id.as_bytes()),
                Arg::B(if c.revoke_old { b"1" } else { b"0" }),
                Arg::B(c.event.as_deref().unwrap_or(b"")),
                c.user_score.map(Arg::U).unwrap_or(Arg::B(b"")),
            ],
        );
        let v: Vec<Value> = self.pool.with(|con| p.invoke(con, &self.scripts.cas))?;
        match v.first() {
            Some(Value::Int(1)) => Ok(CasResult::Done),
            Some(Value::Int(0)) => Ok(CasResult::Gone),
            _ => Ok(CasResult::Changed),
        }
    }

    /// Reads, decides with `plan`, and compare-and-swaps until it lands.
    fn cas_loop(
        &self,
        id: &SessionId,
        mut plan: impl FnMut(&Stored) -> Result<Step, Failure>,
    ) -> Result<Outcome, Failure> {
        for _ in 0..CAS_TRIES {
            let Some(stored) = self.read(id)? else { return Err(Error::NotFound.into()) };
            let (cas, done) = match plan(&stored)? {
                Step::Write(cas, done) => (cas, done),
                Step::Answer(out) => return Ok(out),
            };
            let cas = Cas { expect_r: &stored.r, expect_f: stored.f.as_deref(), ..cas };
            match self.cas(id, &stored.rec.user, &cas) {
                Ok(CasResult::Done) => return Ok(done),
                Ok(CasResult::Gone) => return Err(Error::NotFound.into()),
                Ok(CasResult::Changed) => {}
                // The script may or may not have run: report what it decided
                // to revoke as unsaved, so this process refuses it anyway.
                Err(error) => return Err(Failure { error, unsaved: done.revoked().to_vec() }),
            }
        }
        Err(Error::Busy.into())
    }

    fn seal_families(&self, n: u64, bytes: Vec<u8>) -> Vec<u8> {
        self.mac.seal(RowTable::Refresh, &n.to_le_bytes(), bytes)
    }

    pub(super) fn apply(&self, op: Op) -> Result<Outcome, Failure> {
        match op {
            Op::Create(c) => self.create(&c),
            Op::Touch { id, last_seen } => {
                let mut wrote = false;
                let out = self.cas_loop(&id, |s| {
                    let Some(new) = rules::touch(&s.rec, last_seen) else {
                        wrote = false;
                        return Ok(Step::Answer(Outcome::Done));
                    };
                    let cas = Cas {
                        new_r: Some(seal_session(&self.mac, &new).to_vec()),
                        ttl_ms: Some(ttl(new.deadline(last_seen), last_seen)),
                        ..Cas::keep()
                    };
                    wrote = true;
                    Ok(Step::Write(cas, Outcome::Done))
                });
                if wrote && out.is_ok() {
                    self.counters.touches.fetch_add(1, Ordering::Relaxed);
                }
                match out {
                    Err(Failure { error: Error::NotFound, .. }) => Ok(Outcome::Done),
                    other => other,
                }
            }
            Op::UpdateData { id, expected, serial, now, data, expires } => self.cas_loop(&id, |s| {
                let new = rules::update(&s.rec, expected, serial, now, data.as_deref(), expires)?;
                let cas = Cas {
                    new_r: Some(seal_session(&self.mac, &new).to_vec()),
                    ttl_ms: expires.map(|e| ttl(new.deadline(new.last_seen), e.now)),
                    user_score: expires.map(|e| e.at),
                    event: Some(changed_event(&id)),
                    ..Cas::keep()
                };
                Ok(Step::Write(cas, Outcome::Updated(Arc::new(new))))
            }),
            Op::Rotate { id, expected, serial, secret_hash, now, prune_after } => self.cas_loop(&id, |s| {
                let new = rules::rotate(&s.rec, &expected, serial, secret_hash, now)?;
                let new_f = match &s.f {
                    Some(row) => {
                        let mut fam = decode_family(&self.mac, s.rec.number, row)?;
                        fam.drop_all();
                        Some(self.seal_families(s.rec.number, fam.encode()))
                    }
                    None => None,
                };
                let cas = Cas {
                    new_r: Some(seal_session(&self.mac, &new).to_vec()),
                    new_f,
                    ttl_ms: Some(ttl(new.deadline(now), now)),
                    new_serial: Some((serial, secret_hash)),
                    prune_after,
                    revoke_old: true,
                    event: Some(changed_event(&id)),
                    ..Cas::keep()
                };
                Ok(Step::Write(cas, Outcome::Rotated { rec: Arc::new(new), old: Revoked::of(&s.rec, prune_after) }))
            }),
            Op::Revoke { id, owner, prune_after } => {
                let mut p = Packed::new();
                p.evalsha(
                    &self.scripts.revoke,
                    &[
                        self.keys.session(&id),
                        self.keys.revoked().into(),
                        self.keys.revoked_times().into(),
                        self.keys.events().into(),
                    ],
                    &[
                        self.keys.user_prefix.as_str().into(),
                        Arg::U(prune_after),
                        Arg::Hex("", id.as_bytes()),
                        owner.as_deref().map_or(Arg::B(b""), Into::into),
                    ],
                );
                let v: Vec<Vec<u8>> = self.pool.with(|c| p.invoke(c, &self.scripts.revoke))?;
                let serial = v.first().and_then(|b| std::str::from_utf8(b).ok()).and_then(|s| s.parse().ok());
                let hash = v.get(1).and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok());
                match (serial, hash) {
                    (Some(serial), Some(h)) => {
                        Ok(Outcome::Revoked(vec![Revoked { serial, id, secret_hash: SecretHash(h), prune_after }]))
                    }
                    _ => Ok(Outcome::Revoked(Vec::new())),
                }
            }
            Op::RevokeUser { user, cut, first, not_before, limit, prune_after } => {
                self.revoke_user(&user, cut, first, limit, prune_after, not_before)
            }
            Op::Family { id, serial, now, prune_after, f } => self.cas_loop(&id, |s| {
                rules::family_authorised(&s.rec, serial, now)?;
                let n = s.rec.number;
                let opened = match &s.f {
                    Some(row) => Some(
                        self.mac
                            .open(RowTable::Refresh, &n.to_le_bytes(), row)
                            .map_err(|e| Error::from(StorageError::with_source(StorageErrorKind::Corrupt, e)))?
                            .to_vec(),
                    ),
                    None => None,
                };
                let FamilyChange { write, revoke_session, reply } = f(opened.as_deref());
                if revoke_session {
                    let revoked = Revoked::of(&s.rec, prune_after);
                    let cas = Cas { delete: true, prune_after, ..Cas::keep() };
                    return Ok(Step::Write(cas, Outcome::Family { reply, revoked: Some(revoked) }));
                }
                // A request its family accepted counts as activity, durably with the family.
                let touched = rules::touch(&s.rec, now).filter(|_| accepted(reply.as_ref()));
                if write.is_none() && touched.is_none() {
                    return Ok(Step::Answer(Outcome::Family { reply, revoked: None }));
                }
                let cas = Cas {
                    new_f: write.map(|bytes| self.seal_families(n, bytes)),
                    new_r: touched.as_ref().map(|t| seal_session(&self.mac, t).to_vec()),
                    ttl_ms: touched.as_ref().map(|t| ttl(t.deadline(now), now)),
                    ..Cas::keep()
                };
                Ok(Step::Write(cas, Outcome::Family { reply, revoked: None }))
            }),
            // Redis expires sessions itself (`PEXPIRE`): the sweeper finds none.
            Op::Sweep { .. } => Ok(Outcome::Swept(Swept::default())),
            Op::PruneRevoked { entries, not_before } => {
                let mut args: Vec<Arg<'_>> = Vec::with_capacity(1 + entries.len() + 2 * not_before.len());
                args.push(Arg::U(entries.len() as u64));
                args.extend(entries.iter().map(|(serial, _)| Arg::U(*serial)));
                for (user, at) in &not_before {
                    args.push(user.as_str().into());
                    args.push(Arg::U(*at));
                }
                let mut p = Packed::new();
                p.evalsha(
                    &self.scripts.prune,
                    &[self.keys.revoked().into(), self.keys.revoked_times().into(), self.keys.not_before().into()],
                    &args,
                );
                let users: Vec<String> = self.pool.with(|c| p.invoke(c, &self.scripts.prune))?;
                let pruned = not_before.into_iter().filter(|(u, _)| users.contains(u)).collect();
                Ok(Outcome::Pruned(entries, pruned))
            }
            Op::Flush => Ok(Outcome::Done),
        }
    }

    fn revoke_user(
        &self,
        user: &str,
        cut: crate::backend::UserCut,
        first: bool,
        limit: usize,
        prune_after: u64,
        not_before: Option<u64>,
    ) -> Result<Outcome, Failure> {
        let marker = cut.key(user);
        let mut p = Packed::new();
        p.evalsha(
            &self.scripts.revoke_user,
            &[
                self.keys.user(user),
                self.keys.revoked().into(),
                self.keys.revoked_times().into(),
                self.keys.events().into(),
                self.keys.not_before().into(),
                self.keys.cuts().into(),
            ],
            &[
                self.keys.session_prefix.as_str().into(),
                cut.except.as_ref().map_or(Arg::B(b""), |(id, _)| Arg::Hex("", id.as_bytes())),
                Arg::U(prune_after),
                if not_before.is_some() { user.into() } else { "".into() },
                Arg::U(not_before.unwrap_or(0)),
                Arg::U(limit as u64),
                user.into(),
                marker.as_str().into(),
                if first { "1".into() } else { "".into() },
            ],
        );
        let flat: Vec<Value> = self.pool.with(|c| p.invoke(c, &self.scripts.revoke_user))?;
        let more = matches!(flat.first(), Some(Value::Int(1)));
        Ok(Outcome::RevokedUser {
            revoked: revoked_triples(&bulk(flat.get(1..).unwrap_or_default()), prune_after),
            more,
        })
    }

    /// A create decided on the server (the id may be taken, a session is
    /// replaced, or the user's cap applies): one script, atomic with the
    /// insert. A create under a fresh random id with no cap is one
    /// unconditional MULTI/EXEC instead (cheaper for the server); its id is
    /// 128 bits from the OS generator, so no row holds it.
    fn create(&self, c: &Create) -> Result<Outcome, Failure> {
        let rec = &c.rec;
        let key = self.keys.session(&rec.id);
        let user = self.keys.user(&rec.user);
        let sealed = seal_session(&self.mac, rec);
        // Members are scored by their session's absolute deadline (kept
        // current by updates that move it). Trimmed here so an index only ever
        // written to (a placeholder user of the framework adapters) stays
        // bounded: only members past their deadline by
        // `USER_INDEX_TRIM_MARGIN_MS`, so a node whose clock runs ahead never
        // drops a session another node still serves (revoke_user would miss it).
        let trim_below = format!("({}", rec.created_at.saturating_sub(USER_INDEX_TRIM_MARGIN_MS));
        let ttl_ms = ttl(rec.deadline(rec.last_seen), rec.last_seen);
        if c.random_id && c.replace == Replace::Nothing && c.cap.is_none() {
            let mut p = Packed::transaction();
            p.cmd(&[
                "HSET".into(),
                key,
                "r".into(),
                Arg::B(&sealed),
                "num".into(),
                Arg::U(rec.number),
                "ser".into(),
                Arg::U(rec.serial),
                "sh".into(),
                Arg::B(rec.secret_hash.0.as_slice()),
                "id".into(),
                Arg::B(rec.id.as_bytes().as_slice()),
                "u".into(),
                rec.user.as_ref().into(),
                "c".into(),
                Arg::U(rec.created_at),
            ])
            .cmd(&["PEXPIRE".into(), key, Arg::U(ttl_ms)])
            .cmd(&["ZADD".into(), user, Arg::U(rec.expires_at), Arg::Hex("", rec.id.as_bytes())])
            .cmd(&["ZREMRANGEBYSCORE".into(), user, "-inf".into(), trim_below.as_str().into()]);
            self.pool.with(|con| p.exec(con))?;
            return Ok(Outcome::Created(Vec::new()));
        }
        let replace = match c.replace {
            Replace::Nothing => Arg::B(b""),
            Replace::Serial(s) => Arg::U(s),
        };
        let (cap, policy) = match c.cap {
            Some(cap) => {
                (Arg::U(cap.max as u64), Arg::B(if cap.on_limit == OnLimit::Refuse { b"refuse" } else { b"oldest" }))
            }
            None => (Arg::B(b""), Arg::B(b"")),
        };
        let mut p = Packed::new();
        p.evalsha(
            &self.scripts.create,
            &[key, user, self.keys.revoked().into(), self.keys.revoked_times().into(), self.keys.events().into()],
            &[
                Arg::B(&sealed),
                Arg::U(rec.number),
                Arg::U(rec.serial),
                Arg::B(rec.secret_hash.0.as_slice()),
                Arg::B(rec.id.as_bytes().as_slice()),
                rec.user.as_ref().into(),
                Arg::U(ttl_ms),
                Arg::U(rec.expires_at),
                Arg::Hex("", rec.id.as_bytes()),
                trim_below.as_str().into(),
                replace,
                Arg::U(c.prune_after),
                cap,
                policy,
                self.keys.session_prefix.as_str().into(),
                self.keys.user_prefix.as_str().into(),
                Arg::U(rec.created_at),
            ],
        );
        let v: Vec<Value> = self.pool.with(|con| p.invoke(con, &self.scripts.create))?;
        match v.first() {
            Some(Value::Int(1)) => Ok(Outcome::Created(revoked_triples(&bulk(&v[1..]), c.prune_after))),
            Some(Value::Int(-2)) => Err(Error::SessionLimit { max: c.cap.map_or(0, |c| c.max) }.into()),
            // The id is taken (by another session than the one to replace).
            _ => Err(Error::Conflict { current: 0 }.into()),
        }
    }
}

/// A step of a compare-and-swap loop: write (and answer this if it lands),
/// or answer without writing.
enum Step {
    Write(Cas<'static>, Outcome),
    Answer(Outcome),
}

impl Cas<'static> {
    /// A `put` that changes nothing yet; expected values are filled in by the loop.
    fn keep() -> Cas<'static> {
        Cas {
            expect_r: b"*",
            expect_f: Some(b"*"),
            delete: false,
            new_r: None,
            new_f: None,
            ttl_ms: None,
            new_serial: None,
            prune_after: 0,
            revoke_old: false,
            event: None,
            user_score: None,
        }
    }
}

/// `U` ‖ id: a session changed (data or secret); other nodes drop their copy.
fn changed_event(id: &SessionId) -> Vec<u8> {
    let mut v = Vec::with_capacity(17);
    v.push(b'U');
    v.extend_from_slice(id.as_bytes());
    v
}

/// How long past its deadline a member stays in a user index before a create
/// trims it: far beyond any clock skew between nodes.
const USER_INDEX_TRIM_MARGIN_MS: u64 = 24 * 3600 * 1000;

/// Milliseconds from `now` to `deadline`, at least 1 (Redis refuses 0).
fn ttl(deadline: u64, now: u64) -> u64 {
    deadline.saturating_sub(now).max(1)
}

/// The revocations a script reports as a flat list {ser, id, sh, ...}.
fn revoked_triples(flat: &[Vec<u8>], prune_after: u64) -> Vec<Revoked> {
    let mut out = Vec::with_capacity(flat.len() / 3);
    for t in flat.chunks_exact(3) {
        let serial = std::str::from_utf8(&t[0]).ok().and_then(|s| s.parse().ok());
        let mut v = t[1].clone();
        v.extend_from_slice(&t[2]);
        if let (Some(serial), Some((id, secret_hash))) = (serial, split_id_hash(&v)) {
            out.push(Revoked { serial, id, secret_hash, prune_after });
        }
    }
    out
}

/// A script reply's values as bytes (integers in decimal).
fn bulk(v: &[Value]) -> Vec<Vec<u8>> {
    v.iter()
        .map(|x| match x {
            Value::BulkString(b) => b.clone(),
            Value::Int(n) => n.to_string().into_bytes(),
            _ => Vec::new(),
        })
        .collect()
}
