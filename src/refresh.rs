//! Refresh tokens: family state and the reuse policy (the token MAC's key is
//! derived in [`crate::keys`]).
//!
//! Each `issue_tokens` call starts one family (one device or tab) under its
//! session; the `refresh` table keeps a session's [`Families`]: for each, its
//! current generation, when it last rotated and its deadline. A token carries
//! (session id, family ‖ generation, key id, MAC) where the MAC is keyed blake3
//! under a key derived from the server key, which is never stored in the
//! database. Rotation itself (the generation compare-and-increment) runs in the
//! writer thread, so concurrent refreshes of one family are serialised and
//! rotate exactly once; families rotate and detect reuse independently.

use std::time::Duration;

use crate::session::Reader;

/// What to do when an old refresh token is presented again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reuse {
    /// Any replay of an old generation revokes the session.
    Strict,
    /// Within the window after a rotation, a replay of the *previous* generation
    /// gets the current pair back (two tabs refreshing at once both succeed);
    /// any other replay revokes the session. Default: 10 s, as GoTrue.
    Grace(Duration),
}

impl Default for Reuse {
    fn default() -> Self {
        Reuse::Grace(Duration::from_secs(10))
    }
}

/// Highest family number (24 bits).
const MAX_FAMILY: u32 = (1 << 24) - 1;
/// Live families kept per session; issuing one more drops the one rotated
/// least recently (its refresh token then reads as dead, not as reuse).
pub(crate) const MAX_FAMILIES: usize = 32;

/// One family's state, as stored in its session's [`Families`] row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Family {
    /// The family's number within its session.
    pub(crate) number: u32,
    pub(crate) generation: u64,
    pub(crate) rotated_at: u64,
    pub(crate) deadline: u64,
    /// Application claims (JSON object) to put in every access token of the family.
    pub(crate) claims: Vec<u8>,
    /// Generations at or below this are dead without being a reuse signal: the
    /// session was rotated after they were issued (its id stays, so its old
    /// refresh tokens must not come back to life). 0 = none.
    pub(crate) floor: u64,
}

/// Row formats: 1 one family (no floor), 2 one family with a floor, 3 a set
/// of families. Formats 1 and 2 decode as family 0 of a set.
const FAMILIES_FORMAT: u8 = 3;
const FAMILY_FORMAT_V2: u8 = 2;
const FAMILY_FORMAT_V1: u8 = 1;

/// A session's refresh families: the `refresh` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Families {
    /// The number the next family gets (numbers are never reused, so a token
    /// of a dropped family can never match a new one).
    pub(crate) next: u32,
    pub(crate) list: Vec<Family>,
}

/// What the families of a session say about a presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    /// The family is live.
    Live(&'a Family),
    /// It existed and was dropped (rotation of the session, or the cap).
    Dropped,
    /// A number never issued: forged, or from a rolled-back store.
    Unknown,
}

impl Families {
    pub(crate) fn get(&self, number: u32) -> Lookup<'_> {
        match self.list.iter().find(|f| f.number == number) {
            Some(f) => Lookup::Live(f),
            None if number < self.next => Lookup::Dropped,
            None => Lookup::Unknown,
        }
    }

    /// Starts a family at generation 1; `None` once the session has issued
    /// 2^24 families (rotate the session to go on).
    pub(crate) fn issue(&mut self, now: u64, deadline: u64, claims: Vec<u8>) -> Option<u32> {
        if self.next > MAX_FAMILY {
            return None;
        }
        let number = self.next;
        self.next += 1;
        self.list.push(Family { number, generation: 1, rotated_at: now, deadline, claims, floor: 0 });
        if self.list.len() > MAX_FAMILIES
            && let Some(oldest) = self.list.iter().enumerate().min_by_key(|(_, f)| f.rotated_at).map(|(i, _)| i)
        {
            self.list.remove(oldest);
        }
        Some(number)
    }

    /// Records a rotation of family `number` to `generation` at `now`.
    pub(crate) fn rotated(&mut self, number: u32, generation: u64, now: u64) {
        if let Some(f) = self.list.iter_mut().find(|f| f.number == number) {
            f.generation = generation;
            f.rotated_at = now;
        }
    }

    /// The session was rotated: every family dies; numbers keep counting.
    pub(crate) fn drop_all(&mut self) {
        self.list.clear();
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + self.list.iter().map(|f| 44 + f.claims.len()).sum::<usize>());
        out.push(FAMILIES_FORMAT);
        out.extend_from_slice(&self.next.to_le_bytes());
        #[allow(clippy::cast_possible_truncation)] // at most MAX_FAMILIES
        out.push(self.list.len() as u8);
        for f in &self.list {
            out.extend_from_slice(&f.number.to_le_bytes());
            for v in [f.generation, f.rotated_at, f.deadline, f.floor] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            #[allow(clippy::cast_possible_truncation)] // claims are capped at 4 KiB
            out.extend_from_slice(&(f.claims.len() as u32).to_le_bytes());
            out.extend_from_slice(&f.claims);
        }
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Families> {
        let mut r = Reader::new(b);
        let format = r.u8().ok()?;
        if format == FAMILY_FORMAT_V1 || format == FAMILY_FORMAT_V2 {
            let (generation, rotated_at, deadline) = (r.u64().ok()?, r.u64().ok()?, r.u64().ok()?);
            let floor = if format == FAMILY_FORMAT_V2 { r.u64().ok()? } else { 0 };
            let claims = r.bytes_u32().ok()?.to_vec();
            r.finish().ok()?;
            let f = Family { number: 0, generation, rotated_at, deadline, claims, floor };
            return Some(Families { next: 1, list: vec![f] });
        }
        if format != FAMILIES_FORMAT {
            return None;
        }
        let next = u32::from_le_bytes(r.array().ok()?);
        let n = r.u8().ok()? as usize;
        if n > MAX_FAMILIES {
            return None;
        }
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            let number = u32::from_le_bytes(r.array().ok()?);
            let (generation, rotated_at, deadline, floor) =
                (r.u64().ok()?, r.u64().ok()?, r.u64().ok()?, r.u64().ok()?);
            let claims = r.bytes_u32().ok()?.to_vec();
            if number >= next {
                return None;
            }
            list.push(Family { number, generation, rotated_at, deadline, claims, floor });
        }
        r.finish().ok()?;
        Some(Families { next, list })
    }
}

/// One refresh family of a session (a device or tab that called
/// `issue_tokens`), as listed by [`crate::Store::refresh_families`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshFamily {
    /// The family's number within its session (see [`crate::RefreshToken::family`]).
    pub family: u32,
    /// Its current generation (1 after `issue_tokens`, +1 per refresh).
    pub generation: u64,
    /// When it was issued or last refreshed.
    pub last_rotated: std::time::SystemTime,
    /// When its refresh tokens stop working (the session's absolute deadline).
    pub expires_at: std::time::SystemTime,
}

impl Families {
    /// The live families, for listing.
    pub(crate) fn listing(&self) -> Vec<RefreshFamily> {
        self.list
            .iter()
            .map(|f| RefreshFamily {
                family: f.number,
                generation: f.generation,
                last_rotated: crate::clock::from_millis(f.rotated_at),
                expires_at: crate::clock::from_millis(f.deadline),
            })
            .collect()
    }
}

/// What a refresh-family operation decided, handed back from the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FamilyReply {
    pub(crate) verdict: Verdict,
    /// The family the verdict is about.
    pub(crate) family: u32,
    /// The family's application claims (JSON).
    pub(crate) claims: Vec<u8>,
}

/// The writer's verdict on a refresh attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Rotated (or first issued): the new generation.
    Rotated(u64),
    /// A replay of the previous generation inside the grace window: the current generation.
    Current(u64),
    /// An old generation was replayed: the session has been revoked.
    Reuse { current: u64 },
    /// A generation ahead of the stored one: forged or from a rolled-back store.
    Ahead,
    /// A generation issued before the session was rotated: dead, not a reuse signal.
    Dead,
}

/// Decides a refresh given the stored family. Pure; the writer applies it.
pub(crate) fn decide(family: &Family, presented: u64, now: u64, reuse: Reuse) -> Verdict {
    let cur = family.generation;
    if presented <= family.floor {
        return Verdict::Dead;
    }
    if presented == cur {
        return Verdict::Rotated(cur + 1);
    }
    if presented > cur {
        return Verdict::Ahead;
    }
    if let Reuse::Grace(w) = reuse {
        let window = u64::try_from(w.as_millis()).unwrap_or(u64::MAX);
        if presented + 1 == cur && now.saturating_sub(family.rotated_at) <= window {
            return Verdict::Current(cur);
        }
    }
    Verdict::Reuse { current: cur }
}

/// The family op of `issue_tokens`: a new family (one per device or tab),
/// expiring with the session at `deadline`. Earlier families keep rotating on
/// their own, so a second tab never turns the first one's token into a "reuse".
pub(crate) fn issue(now: u64, deadline: u64, claims: Vec<u8>) -> FamilyFn {
    Box::new(move |stored: Option<&[u8]>| {
        let mut set = match stored {
            Some(b) => match Families::decode(b) {
                Some(set) => set,
                None => return FamilyChange::none(),
            },
            None => Families::default(),
        };
        let Some(family) = set.issue(now, deadline, claims.clone()) else {
            return FamilyChange::none();
        };
        FamilyChange {
            write: Some(set.encode()),
            revoke_session: false,
            reply: Some(FamilyReply { verdict: Verdict::Rotated(1), family, claims: claims.clone() }),
        }
    })
}

/// The family op of `refresh`: rotate family `family` if `presented` is its
/// current generation, else decide by the reuse policy (see [`decide`]); a
/// reuse revokes the session.
pub(crate) fn rotate(family: u32, presented: u64, now: u64, reuse: Reuse) -> FamilyFn {
    Box::new(move |stored: Option<&[u8]>| {
        let Some(mut set) = stored.and_then(Families::decode) else { return FamilyChange::none() };
        let only = |verdict| FamilyChange {
            write: None,
            revoke_session: false,
            reply: Some(FamilyReply { verdict, family, claims: Vec::new() }),
        };
        let fam = match set.get(family) {
            Lookup::Live(fam) => fam.clone(),
            // Dropped by a rotation of the session or by the cap: dead, no reuse signal.
            Lookup::Dropped => return only(Verdict::Dead),
            Lookup::Unknown => return only(Verdict::Ahead),
        };
        if now >= fam.deadline {
            // The family's own deadline (the session's at issue time) has passed.
            return FamilyChange::none();
        }
        let verdict = decide(&fam, presented, now, reuse);
        let write = match verdict {
            Verdict::Rotated(generation) => {
                set.rotated(family, generation, now);
                Some(set.encode())
            }
            _ => None,
        };
        let revoke_session = matches!(verdict, Verdict::Reuse { .. });
        FamilyChange { write, revoke_session, reply: Some(FamilyReply { verdict, family, claims: fam.claims }) }
    })
}

/// A refresh-family decision, run where the op is applied (inside the write
/// transaction, or in a compare-and-swap loop). Pure: it may run more than once.
pub(crate) type FamilyFn = Box<dyn Fn(Option<&[u8]>) -> FamilyChange + Send>;

/// What a [`FamilyFn`] wants done.
pub(crate) struct FamilyChange {
    /// New family bytes to store, if any.
    pub(crate) write: Option<Vec<u8>>,
    /// Revoke the session (and with it the family).
    pub(crate) revoke_session: bool,
    /// Handed back to the caller in `Outcome::Family`.
    pub(crate) reply: Option<FamilyReply>,
}

impl FamilyChange {
    /// No change and no usable family.
    pub(crate) fn none() -> FamilyChange {
        FamilyChange { write: None, revoke_session: false, reply: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{pack, unpack};

    fn fam(g: u64, at: u64) -> Family {
        Family { number: 0, generation: g, rotated_at: at, deadline: u64::MAX, claims: b"{}".to_vec(), floor: 0 }
    }

    #[test]
    fn decide_covers_every_case() {
        let grace = Reuse::Grace(Duration::from_secs(10));
        assert_eq!(decide(&fam(3, 0), 3, 1, grace), Verdict::Rotated(4));
        assert_eq!(decide(&fam(3, 1000), 2, 11_000, grace), Verdict::Current(3));
        assert_eq!(decide(&fam(3, 1000), 2, 11_001, grace), Verdict::Reuse { current: 3 });
        assert_eq!(decide(&fam(3, 1000), 1, 1001, grace), Verdict::Reuse { current: 3 });
        assert_eq!(decide(&fam(3, 1000), 2, 1001, Reuse::Strict), Verdict::Reuse { current: 3 });
        assert_eq!(decide(&fam(3, 1000), 4, 1001, grace), Verdict::Ahead);
        let rotated = Family { floor: 3, ..fam(3, 1000) };
        assert_eq!(decide(&rotated, 3, 1001, grace), Verdict::Dead);
        assert_eq!(decide(&rotated, 2, 1001, Reuse::Strict), Verdict::Dead);
    }

    #[test]
    fn families_round_trip_old_rows_decode_as_family_0_and_garbage_is_refused() {
        let mut set = Families::default();
        assert_eq!(set.issue(5, u64::MAX, b"{}".to_vec()), Some(0));
        assert_eq!(set.issue(6, u64::MAX, b"{\"r\":1}".to_vec()), Some(1));
        set.rotated(1, 4, 7);
        assert_eq!(Families::decode(&set.encode()), Some(set.clone()));
        // A format-1 row (no floor) still decodes, as family 0.
        let mut v1 = vec![1u8];
        for v in [7u64, 9, u64::MAX] {
            v1.extend_from_slice(&v.to_le_bytes());
        }
        v1.extend_from_slice(&2u32.to_le_bytes());
        v1.extend_from_slice(b"{}");
        assert_eq!(Families::decode(&v1), Some(Families { next: 1, list: vec![fam(7, 9)] }));
        let e = set.encode();
        for i in 0..e.len() {
            assert!(Families::decode(&e[..i]).is_none());
        }
    }

    #[test]
    fn families_are_capped_numbers_never_reused_and_rotation_drops_all() {
        let mut set = Families::default();
        for i in 0..(MAX_FAMILIES as u64 + 3) {
            set.issue(i, u64::MAX, Vec::new()).unwrap();
        }
        assert_eq!(set.list.len(), MAX_FAMILIES);
        assert_eq!(set.get(0), Lookup::Dropped, "the least recently rotated went first");
        assert!(matches!(set.get(MAX_FAMILIES as u32 + 2), Lookup::Live(_)));
        assert_eq!(set.get(MAX_FAMILIES as u32 + 3), Lookup::Unknown);
        set.drop_all();
        assert_eq!(set.get(5), Lookup::Dropped);
        assert_eq!(set.issue(0, 0, Vec::new()), Some(MAX_FAMILIES as u32 + 3));
        assert_eq!(unpack(pack(7, 9)), (7, 9));
        assert_eq!(unpack(5), (0, 5), "pre-family tokens are family 0");
    }
}
