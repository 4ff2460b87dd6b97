//! The bytes of a segment: magic, header and frame layout, tags, and the
//! encoding of formats 2 (written) and 1 (read only).

use subtle::ConstantTimeEq as _;

use crate::backend::redb::mutation::{self, Mutation};
use crate::error::{Error, StorageError, StorageErrorKind};

/// Format 2 (the one written).
pub(super) const MAGIC: &[u8; 8] = b"CLKJRNL\x02";
/// Format 1 (read only).
pub(super) const MAGIC_V1: &[u8; 8] = b"CLKJRNL\x01";
pub(super) const HEADER_LEN: u64 = 48;
pub(super) const FRAME_HEAD: usize = 32;
pub(super) const TAG_LEN: usize = 16;
/// Frames start at multiples of this.
pub(super) const ALIGN: usize = 8;
/// Records with a longer payload are refused on replay, and [`Journal::append`]
/// refuses to write one (the writer bounds a batch far below: `BATCH_BYTES`).
pub(crate) const MAX_RECORD: usize = 1 << 30;

pub(super) fn corrupt(what: &'static str) -> Error {
    StorageError::with_source(StorageErrorKind::JournalCorrupt, std::io::Error::other(what)).into()
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|x| x.try_into().ok()).map_or(0, u64::from_le_bytes)
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|x| x.try_into().ok()).map_or(0, u32::from_le_bytes)
}

/// Whether `magic` is a header's magic torn while being written over zeros
/// (each byte either still zero or already written).
pub(super) fn torn_header(magic: &[u8]) -> bool {
    magic.iter().zip(MAGIC).all(|(&b, &m)| b == 0 || b == m)
}

/// Whether a format-2 segment's first frame carries the header's epoch (a
/// record written since the header, or one torn while being written).
pub(super) fn first_frame_is_new(b: &[u8]) -> bool {
    let h = HEADER_LEN as usize;
    b.len() >= h + FRAME_HEAD && u64_at(b, h) == u64_at(b, 24) && u64_at(b, 24) != 0
}

/// One journal record: its seq and row changes.
pub(crate) type Logged = (u64, Vec<Mutation>);

/// The tag over a format-2 header's fields.
pub(super) fn header_tag(key: &[u8; 32], id: u64, after: u64, epoch: u64) -> [u8; TAG_LEN] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"cloakroom journal header v2");
    h.update(&id.to_le_bytes());
    h.update(&after.to_le_bytes());
    h.update(&epoch.to_le_bytes());
    truncate(h)
}

pub(super) fn frame_tag(key: &[u8; 32], frame: &[u8]) -> [u8; TAG_LEN] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(frame);
    truncate(h)
}

fn truncate(h: blake3::Hasher) -> [u8; TAG_LEN] {
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
    t
}

/// A format-2 frame.
pub(super) struct Frame<'a> {
    pub(super) seq: u64,
    pub(super) synced: u64,
    pub(super) payload: &'a [u8],
    pub(super) end: usize,
}

/// The record starting at `pos`, if it carries `epoch`, is whole and its tag verifies.
pub(super) fn frame_at<'a>(key: &[u8; 32], b: &'a [u8], pos: usize, epoch: u64) -> Option<Frame<'a>> {
    let head = b.get(pos..pos + FRAME_HEAD)?;
    if u64_at(head, 0) != epoch || u32_at(head, 28) != 0 {
        return None;
    }
    let (seq, synced, len) = (u64_at(head, 8), u64_at(head, 16), u32_at(head, 24) as usize);
    if len > MAX_RECORD || synced >= seq {
        return None;
    }
    let body = pos + FRAME_HEAD + len.next_multiple_of(ALIGN);
    let tag = b.get(body..body + TAG_LEN)?;
    if !bool::from(frame_tag(key, b.get(pos..body)?).ct_eq(tag)) {
        return None;
    }
    Some(Frame { seq, synced, payload: b.get(pos + FRAME_HEAD..pos + FRAME_HEAD + len)?, end: body + TAG_LEN })
}

/// Format 1, read to replay a journal an older version left.
pub(super) mod v1 {
    use subtle::ConstantTimeEq as _;

    use super::{Error, Logged, StorageError, StorageErrorKind, corrupt, mutation, u32_at, u64_at};

    const HEADER_LEN: usize = 40;
    const FRAME_HEAD: usize = 12;
    const TAG_LEN: usize = 16;

    /// Whether the first frame is not empty and not older than the header
    /// (stale frames from an earlier use of the segment have lower seqs).
    pub(crate) fn first_frame_is_new(b: &[u8]) -> bool {
        b.len() >= HEADER_LEN + FRAME_HEAD && u32_at(b, 40) != 0 && u64_at(b, 44) >= u64_at(b, 16)
    }

    /// (after, records, end) of a format-1 segment of journal `id`; `None` if
    /// it holds nothing (a header without records under another id or key).
    pub(crate) fn read(key: &[u8; 32], b: &[u8], id: u64) -> Result<Option<(u64, Vec<Logged>, u64)>, Error> {
        if b.len() < HEADER_LEN {
            return Ok(None);
        }
        let ours = u64_at(b, 8) == id && bool::from(key_check(key, id).ct_eq(&b[24..40]));
        if !ours {
            if !first_frame_is_new(b) {
                return Ok(None);
            }
            return Err(StorageError::new(StorageErrorKind::JournalMismatch).into());
        }
        let first = u64_at(b, 16);
        let (records, end) = parse(key, b, first)?;
        Ok(Some((first.saturating_sub(1), records, end)))
    }

    fn key_check(key: &[u8; 32], id: u64) -> [u8; TAG_LEN] {
        tag(key, b"cloakroom journal header", &id.to_le_bytes())
    }

    fn tag(key: &[u8; 32], head: &[u8], payload: &[u8]) -> [u8; TAG_LEN] {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(head);
        h.update(payload);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
        t
    }

    /// The record at `pos` if whole and its tag verifies: (seq, payload, end).
    fn frame_at<'a>(key: &[u8; 32], b: &'a [u8], pos: usize) -> Option<(u64, &'a [u8], usize)> {
        let head = b.get(pos..pos + FRAME_HEAD)?;
        let len = u32_at(head, 0) as usize;
        if len > super::MAX_RECORD {
            return None;
        }
        let payload = b.get(pos + FRAME_HEAD..pos + FRAME_HEAD + len)?;
        let t = b.get(pos + FRAME_HEAD + len..pos + FRAME_HEAD + len + TAG_LEN)?;
        if !bool::from(tag(key, head, payload).ct_eq(t)) {
            return None;
        }
        Some((u64_at(head, 4), payload, pos + FRAME_HEAD + len + TAG_LEN))
    }

    fn parse(key: &[u8; 32], b: &[u8], first_seq: u64) -> Result<(Vec<Logged>, u64), Error> {
        let mut pos = HEADER_LEN;
        let mut out: Vec<Logged> = Vec::new();
        let mut expect = first_seq;
        while pos < b.len() {
            match frame_at(key, b, pos) {
                Some((seq, payload, end)) if seq >= expect => {
                    let muts = mutation::decode(payload).map_err(|_| corrupt("journal record does not decode"))?;
                    out.push((seq, muts));
                    expect = seq + 1;
                    pos = end;
                }
                _ => {
                    if valid_record_after(key, b, pos, expect) {
                        return Err(corrupt("a damaged journal record is followed by valid ones"));
                    }
                    break;
                }
            }
        }
        Ok((out, pos as u64))
    }

    /// Whether a valid record of this run (seq `expect` or the next; stale
    /// frames of a reused segment have lower seqs) starts after `pos`. Format 1
    /// records do not say what was durable, so any such record counts as
    /// damage, as it did when they were written. A candidate that fails its
    /// tag is just bytes; the tag checks are bounded (a crafted file cannot
    /// make the scan quadratic), and past the bound the tail counts as torn.
    fn valid_record_after(key: &[u8; 32], b: &[u8], pos: usize, expect: u64) -> bool {
        let mut budget = b.len().saturating_mul(16).max(1 << 20);
        let mut p = pos + 1;
        while p + FRAME_HEAD + TAG_LEN <= b.len() {
            let seq = u64_at(b, p + 4);
            if seq == expect || seq == expect + 1 {
                let len = u32_at(b, p) as usize;
                if p + FRAME_HEAD + len + TAG_LEN <= b.len() {
                    if frame_at(key, b, p).is_some() {
                        return true;
                    }
                    budget = match budget.checked_sub(len + FRAME_HEAD) {
                        Some(left) => left,
                        None => return false,
                    };
                }
            }
            p += 1;
        }
        false
    }

    #[cfg(test)]
    pub(crate) mod write {
        //! Writes format-1 segments (tests of the reader).
        use super::*;
        use crate::backend::redb::mutation::Mutation;

        pub(crate) fn segment(key: &[u8; 32], id: u64, first: u64, records: &[(u64, Vec<Mutation>)]) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(super::super::MAGIC_V1);
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&first.to_le_bytes());
            b.extend_from_slice(&key_check(key, id));
            for (seq, muts) in records {
                frame(key, &mut b, *seq, muts);
            }
            b
        }

        pub(crate) fn frame(key: &[u8; 32], b: &mut Vec<u8>, seq: u64, muts: &[Mutation]) {
            let mut p = Vec::new();
            mutation::encode(muts, &mut p);
            let mut head = Vec::new();
            head.extend_from_slice(&(p.len() as u32).to_le_bytes());
            head.extend_from_slice(&seq.to_le_bytes());
            let t = tag(key, &head, &p);
            b.extend_from_slice(&head);
            b.extend_from_slice(&p);
            b.extend_from_slice(&t);
        }
    }
}
