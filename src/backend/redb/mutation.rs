//! Row-level changes: what the writer decides, the journal records and the
//! applier folds into redb. Physical and idempotent (a put or a delete of one
//! row), so replaying a journal record twice leaves the same state.

use std::sync::Arc;

use crate::session::{Reader, RecordError};

/// One row change. Values of authenticated tables are sealed (`mac.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mutation {
    /// (number, sealed id ‖ record)
    PutSession(u64, Arc<[u8]>),
    DelSession(u64),
    /// (deadline, number, id)
    PutExpiry(u64, u64, [u8; 16]),
    DelExpiry(u64, u64),
    PutRevoked(u64, Arc<[u8]>),
    DelRevoked(u64),
    PutRefresh(u64, Arc<[u8]>),
    DelRefresh(u64),
    PutNotBefore(Box<str>, Arc<[u8]>),
    DelNotBefore(Box<str>),
    /// (marker key [`crate::backend::UserCut::key`], sealed empty row): a
    /// user-wide revocation in progress.
    PutCut(Box<str>, Arc<[u8]>),
    DelCut(Box<str>),
    /// Raise the stored next serial to at least this.
    NextSerial(u64),
}

impl Mutation {
    fn tag(&self) -> u8 {
        match self {
            Mutation::PutSession(..) => 1,
            Mutation::DelSession(..) => 2,
            Mutation::PutExpiry(..) => 5,
            Mutation::DelExpiry(..) => 6,
            Mutation::PutRevoked(..) => 7,
            Mutation::DelRevoked(..) => 8,
            Mutation::PutRefresh(..) => 9,
            Mutation::DelRefresh(..) => 10,
            Mutation::PutNotBefore(..) => 11,
            Mutation::DelNotBefore(..) => 12,
            Mutation::NextSerial(..) => 13,
            Mutation::PutCut(..) => 14,
            Mutation::DelCut(..) => 15,
        }
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    #[allow(clippy::cast_possible_truncation)] // user ids are ≤ 256 bytes (input check)
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    #[allow(clippy::cast_possible_truncation)] // rows are ≤ max_data_len + headers < 4 GiB (config check)
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The length of `m`'s encoding (what [`encode`] appends for it).
pub(crate) fn encoded_len(m: &Mutation) -> usize {
    1 + match m {
        Mutation::PutSession(_, v) | Mutation::PutRefresh(_, v) | Mutation::PutRevoked(_, v) => 8 + 4 + v.len(),
        Mutation::DelSession(_) | Mutation::DelRefresh(_) | Mutation::DelRevoked(_) | Mutation::NextSerial(_) => 8,
        Mutation::PutExpiry(..) => 8 + 8 + 16,
        Mutation::DelExpiry(..) => 8 + 8,
        Mutation::PutNotBefore(u, v) | Mutation::PutCut(u, v) => 2 + u.len() + 4 + v.len(),
        Mutation::DelNotBefore(u) | Mutation::DelCut(u) => 2 + u.len(),
    }
}

/// Appends the encoding of `muts` to `out`.
pub(crate) fn encode(muts: &[Mutation], out: &mut Vec<u8>) {
    for m in muts {
        out.push(m.tag());
        match m {
            Mutation::PutSession(n, v) | Mutation::PutRefresh(n, v) | Mutation::PutRevoked(n, v) => {
                out.extend_from_slice(&n.to_le_bytes());
                bytes(out, v);
            }
            Mutation::DelSession(n) | Mutation::DelRefresh(n) | Mutation::DelRevoked(n) | Mutation::NextSerial(n) => {
                out.extend_from_slice(&n.to_le_bytes());
            }
            Mutation::PutExpiry(d, n, id) => {
                out.extend_from_slice(&d.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
                out.extend_from_slice(id);
            }
            Mutation::DelExpiry(d, n) => {
                out.extend_from_slice(&d.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
            }
            Mutation::PutNotBefore(u, v) | Mutation::PutCut(u, v) => {
                text(out, u);
                bytes(out, v);
            }
            Mutation::DelNotBefore(u) | Mutation::DelCut(u) => text(out, u),
        }
    }
}

/// Decodes what [`encode`] wrote. Never panics.
pub(crate) fn decode(b: &[u8]) -> Result<Vec<Mutation>, RecordError> {
    let mut r = Reader::new(b);
    let mut out = Vec::new();
    while !r.is_empty() {
        let text = |r: &mut Reader<'_>| -> Result<Box<str>, RecordError> {
            let n = u16::from_le_bytes(r.array()?) as usize;
            Ok(std::str::from_utf8(r.take(n)?).map_err(|_| RecordError::BadText)?.into())
        };
        let m = match r.u8()? {
            1 => Mutation::PutSession(r.u64()?, r.bytes_u32()?.into()),
            2 => Mutation::DelSession(r.u64()?),
            5 => Mutation::PutExpiry(r.u64()?, r.u64()?, r.array()?),
            6 => Mutation::DelExpiry(r.u64()?, r.u64()?),
            7 => Mutation::PutRevoked(r.u64()?, r.bytes_u32()?.into()),
            8 => Mutation::DelRevoked(r.u64()?),
            9 => Mutation::PutRefresh(r.u64()?, r.bytes_u32()?.into()),
            10 => Mutation::DelRefresh(r.u64()?),
            11 => Mutation::PutNotBefore(text(&mut r)?, r.bytes_u32()?.into()),
            12 => Mutation::DelNotBefore(text(&mut r)?),
            13 => Mutation::NextSerial(r.u64()?),
            14 => Mutation::PutCut(text(&mut r)?, r.bytes_u32()?.into()),
            15 => Mutation::DelCut(text(&mut r)?),
            t => return Err(RecordError::UnknownFormat(t)),
        };
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mutation_round_trips_and_truncations_fail() {
        let v: Arc<[u8]> = Arc::from(&b"row"[..]);
        let all = vec![
            Mutation::PutSession(1, v.clone()),
            Mutation::DelSession(2),
            Mutation::PutExpiry(5, 55, [5; 16]),
            Mutation::DelExpiry(6, 66),
            Mutation::PutRevoked(7, v.clone()),
            Mutation::DelRevoked(8),
            Mutation::PutRefresh(9, v.clone()),
            Mutation::DelRefresh(10),
            Mutation::PutNotBefore("nb".into(), v.clone()),
            Mutation::PutCut("1::0:u".into(), v),
            Mutation::DelCut("1::0:u".into()),
            Mutation::DelNotBefore("nb".into()),
            Mutation::NextSerial(13),
        ];
        let mut b = Vec::new();
        encode(&all, &mut b);
        assert_eq!(decode(&b).unwrap(), all);
        assert_eq!(b.len(), all.iter().map(encoded_len).sum::<usize>(), "encoded_len is exact");
        for n in 0..b.len() {
            // A prefix either decodes to fewer mutations or fails; never panics.
            if let Ok(d) = decode(&b[..n]) {
                assert!(d.len() < all.len());
            }
        }
    }
}
