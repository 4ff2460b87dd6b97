//! The journal: where a durable write is acknowledged.
//!
//! Each writer batch becomes one record — its row changes ([`Mutation`]s) —
//! appended to the active segment and made durable with one `fdatasync`, the
//! cost of Redis's `appendfsync always`. The applier folds the same batches
//! into redb without fsync and makes them durable by periodic checkpoints; a
//! segment is cleared once a checkpoint covers its last record.
//!
//! Two segment files, `<db>.journal` and `<db>.journal.1`, take turns: when the
//! active one passes [`SEGMENT_BYTES`] and the other is clear, appends move to
//! the other, so clearing never waits for a checkpoint and never rewrites a
//! record. A segment is "clear" when empty (length 0).
//!
//! Layout: header `MAGIC ‖ journal id u64 ‖ first seq u64 ‖ key check (16 B)`
//! (the key check, a tag over the id, refuses a journal written under another
//! server key instead of mistaking its records for a torn tail), then records
//! `len u32 ‖ seq u64 ‖ payload ‖ tag`, where the tag is keyed blake3 (a key
//! derived from the server key) over len, seq and payload, truncated to 16
//! bytes. On open a record that fails its tag ends the replay if nothing valid
//! follows it (a torn tail from a crash inside an append); a failing record
//! followed by a valid one is corruption, and the open is refused with the
//! files untouched.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq as _;

use super::mutation::{self, Mutation};
use crate::error::{Error, StorageError, StorageErrorKind};

const MAGIC: &[u8; 8] = b"CLKJRNL\x01";
const HEADER_LEN: u64 = 40;
const FRAME_HEAD: usize = 12;
const TAG_LEN: usize = 16;
/// Records larger than this are refused on replay (and never written: a batch
/// holds at most `MAX_BATCH` ops of bounded size).
const MAX_RECORD: usize = 1 << 30;
/// The active segment moves on once it is this long.
pub(crate) const SEGMENT_BYTES: u64 = 8 << 20;

/// Byte storage for one segment: a file, or (fault-injection tests) a custom backend.
pub(crate) trait JournalIo: Send + Sync {
    fn len(&self) -> std::io::Result<u64>;
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()>;
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()>;
    fn set_len(&self, len: u64) -> std::io::Result<()>;
    fn sync_data(&self) -> std::io::Result<()>;
    /// Whether the storage keeps a fixed, zero-written length (files): records
    /// are then overwritten in place, so a sync flushes data only, never the
    /// file's size; a segment is cleared by zeroing its header.
    fn preallocated(&self) -> bool {
        false
    }
}

/// A segment file.
struct FileIo(std::fs::File);

impl JournalIo for FileIo {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        self.0.read_exact_at(out, offset)
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        self.0.write_all_at(data, offset)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
    fn preallocated(&self) -> bool {
        true
    }
}

/// Segment files grow by this much written zeros at a time: an `fdatasync`
/// after an in-place overwrite costs ~135 µs here, after an append that grows
/// the file ~200 µs (it must flush the new size too), so only one sync per
/// step pays for a size change.
const GROW: u64 = 1 << 20;

/// Extends `io` with written zeros from `from` to at least `to` (in [`GROW`] steps).
fn grow(io: &dyn JournalIo, from: u64, to: u64) -> std::io::Result<u64> {
    let zeros = vec![0u8; GROW as usize];
    let mut at = from;
    while at < to {
        io.write(at, &zeros)?;
        at += GROW;
    }
    Ok(at)
}

/// A redb storage backend used as a journal segment (fault-injection tests).
#[cfg(feature = "test-util")]
pub(crate) struct BackendIo<B>(pub(crate) B);

#[cfg(feature = "test-util")]
impl<B: redb::StorageBackend> JournalIo for BackendIo<B> {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        // redb backends are sized before they are written.
        let end = offset + data.len() as u64;
        if self.0.len()? < end {
            self.0.set_len(end)?;
        }
        self.0.write(offset, data)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
}

/// The two segment paths of a database file.
pub(crate) fn segment_paths(db: &Path) -> [PathBuf; 2] {
    let mut a = db.as_os_str().to_owned();
    a.push(".journal");
    let mut b = a.clone();
    b.push(".1");
    [PathBuf::from(a), PathBuf::from(b)]
}

/// Opens (creating if absent) both segment files of `db`, 0600.
pub(crate) fn open_files(db: &Path) -> Result<[Box<dyn JournalIo>; 2], Error> {
    let open = |p: &Path| -> Result<Box<dyn JournalIo>, Error> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            o.mode(0o600);
        }
        Ok(Box::new(FileIo(o.open(p).map_err(io_err)?)))
    };
    let [a, b] = segment_paths(db);
    let segs = [open(&a)?, open(&b)?];
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the segment files' names durable before anything is acknowledged in them.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(segs)
}

/// Whether any segment of `db` holds records (a read-only open must refuse: the
/// database alone would be missing acknowledged writes). Looks at the header
/// and the first frame's length and seq (no key needed): a record is there when
/// the frame after a valid header is not empty and not older than the header.
pub(crate) fn has_records(db: &Path) -> bool {
    use std::io::Read as _;
    segment_paths(db).iter().any(|p| {
        let mut b = [0u8; HEADER_LEN as usize + FRAME_HEAD];
        let Ok(mut f) = std::fs::File::open(p) else { return false };
        f.read_exact(&mut b).is_ok() && &b[..8] == MAGIC && first_frame_is_new(&b)
    })
}

fn io_err(e: std::io::Error) -> Error {
    StorageError::with_source(StorageErrorKind::Io, e).into()
}

fn corrupt(what: &'static str) -> Error {
    StorageError::with_source(StorageErrorKind::JournalCorrupt, std::io::Error::other(what)).into()
}

struct Segment {
    io: Box<dyn JournalIo>,
    /// Write position (0: clear).
    len: u64,
    /// Bytes of the preallocated file (0 for other storage).
    cap: u64,
    /// Seq of the last record in it (0: none).
    last_seq: u64,
}

impl Segment {
    /// Makes the segment hold nothing (durably): a zeroed header, or length 0.
    fn clear(&mut self) -> Result<(), Error> {
        if self.io.preallocated() {
            self.io.write(0, &[0u8; HEADER_LEN as usize]).map_err(io_err)?;
        } else {
            self.io.set_len(0).map_err(io_err)?;
        }
        self.io.sync_data().map_err(io_err)?;
        self.len = 0;
        self.last_seq = 0;
        Ok(())
    }

    /// Removes whatever starts at `at` (a failed or unacknowledged record).
    fn cut(&mut self, at: u64) -> Result<(), Error> {
        if self.io.preallocated() {
            // Zero its head: the length and seq no longer describe a record.
            self.io.write(at, &[0u8; FRAME_HEAD]).map_err(io_err)
        } else {
            self.io.set_len(at).map_err(io_err)
        }
    }
}

/// Whether a segment's first frame looks like a record written since its header
/// (non-empty, seq not below the header's first seq). Needs no key: stale
/// frames from an earlier use of a preallocated segment have lower seqs.
fn first_frame_is_new(b: &[u8]) -> bool {
    let word = |r: std::ops::Range<usize>| b.get(r).and_then(|x| x.try_into().ok()).map_or(0, u64::from_le_bytes);
    let len = b.get(40..44).and_then(|x| x.try_into().ok()).map_or(0, u32::from_le_bytes);
    b.len() >= HEADER_LEN as usize + FRAME_HEAD && len != 0 && word(44..52) >= word(16..24)
}

/// The journal, owned by the writer thread.
pub(crate) struct Journal {
    key: [u8; 32],
    id: u64,
    segs: [Segment; 2],
    /// Index of the active segment.
    active: usize,
    /// Whether the active segment has bytes not yet synced.
    unsynced: bool,
    /// Reused encoding buffer.
    buf: Vec<u8>,
    /// Where the last record appended starts.
    last_start: u64,
}

/// One journal record: its seq and row changes.
pub(crate) type Record = (u64, Vec<Mutation>);

/// What replay found: records to apply, in seq order.
pub(crate) struct Replay {
    pub(crate) records: Vec<Record>,
}

impl Journal {
    /// Reads both segments and validates every record, changing nothing.
    /// Segments with another journal id (a journal of another database) are refused.
    pub(crate) fn open(
        io: [Box<dyn JournalIo>; 2],
        server_key: &[u8; 32],
        id: u64,
    ) -> Result<(Journal, Replay), Error> {
        let key = blake3::derive_key("cloakroom 2026 journal record MAC v1", server_key);
        let [a, b] = io;
        let mut segs = [Segment { io: a, len: 0, cap: 0, last_seq: 0 }, Segment { io: b, len: 0, cap: 0, last_seq: 0 }];
        let mut found: Vec<(u64, usize, Vec<Record>)> = Vec::new();
        for (i, seg) in segs.iter_mut().enumerate() {
            let len = seg.io.len().map_err(io_err)?;
            if seg.io.preallocated() {
                seg.cap = len;
            }
            if len < HEADER_LEN {
                // Empty, or a header torn while starting the segment: holds nothing.
                continue;
            }
            let n = usize::try_from(len).map_err(|_| corrupt("journal segment too large"))?;
            let mut bytes = vec![0u8; n];
            seg.io.read(0, &mut bytes).map_err(io_err)?;
            if bytes[..8].iter().all(|&b| b == 0) {
                continue; // cleared
            }
            if &bytes[..8] != MAGIC {
                return Err(corrupt("journal segment has no cloakroom journal header"));
            }
            let ours = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()) == id
                && bool::from(key_check(&key, id).ct_eq(&bytes[24..40]));
            if !ours {
                if !first_frame_is_new(&bytes) {
                    // No records: nothing to lose (e.g. a clean close, then a
                    // replaced server key). The segment is rewritten at reset.
                    continue;
                }
                return Err(StorageError::new(StorageErrorKind::JournalMismatch).into());
            }
            let first = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
            let (records, end) = parse_records(&key, &bytes, first)?;
            seg.len = end;
            seg.last_seq = records.last().map_or(0, |r| r.0);
            found.push((first, i, records));
        }
        found.sort_by_key(|f| f.0);
        let active = found.last().map_or(0, |f| f.1);
        let mut records = Vec::new();
        for (_, _, rs) in found {
            for r in rs {
                if records.last().is_some_and(|l: &Record| l.0 >= r.0) {
                    return Err(corrupt("journal records out of order"));
                }
                records.push(r);
            }
        }
        Ok((Journal { key, id, segs, active, unsynced: false, buf: Vec::new(), last_start: 0 }, Replay { records }))
    }

    fn tag(&self, head: &[u8], payload: &[u8]) -> [u8; TAG_LEN] {
        frame_tag(&self.key, head, payload)
    }

    /// Clears both segments and starts the active one at `next_seq` (after a
    /// replay has been checkpointed).
    pub(crate) fn reset(&mut self, next_seq: u64) -> Result<(), Error> {
        for seg in &mut self.segs {
            seg.clear()?;
        }
        self.active = 0;
        self.start_segment(0, next_seq)
    }

    fn start_segment(&mut self, i: usize, first_seq: u64) -> Result<(), Error> {
        let mut h = Vec::with_capacity(HEADER_LEN as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&self.id.to_le_bytes());
        h.extend_from_slice(&first_seq.to_le_bytes());
        h.extend_from_slice(&key_check(&self.key, self.id));
        let seg = &mut self.segs[i];
        if seg.io.preallocated() {
            if seg.cap < GROW {
                seg.cap = grow(&*seg.io, seg.cap, GROW).map_err(io_err)?;
            }
        } else {
            seg.io.set_len(0).map_err(io_err)?;
        }
        seg.io.write(0, &h).map_err(io_err)?;
        seg.io.sync_data().map_err(io_err)?;
        seg.len = HEADER_LEN;
        seg.last_seq = 0;
        Ok(())
    }

    /// Appends one record (not yet synced). On failure nothing of it remains
    /// readable: the segment is cut back to its previous length.
    pub(crate) fn append(&mut self, seq: u64, muts: &[Mutation]) -> Result<(), Error> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&[0u8; FRAME_HEAD]);
        mutation::encode(muts, &mut buf);
        let payload_len = buf.len() - FRAME_HEAD;
        let len = u32::try_from(payload_len).map_err(|_| corrupt("journal record too large"))?;
        buf[..4].copy_from_slice(&len.to_le_bytes());
        buf[4..12].copy_from_slice(&seq.to_le_bytes());
        let tag = self.tag(&buf[..FRAME_HEAD], &buf[FRAME_HEAD..]);
        buf.extend_from_slice(&tag);
        let seg = &mut self.segs[self.active];
        let n = buf.len() as u64;
        if seg.io.preallocated() && seg.len + n > seg.cap {
            seg.cap = grow(&*seg.io, seg.cap, seg.len + n).map_err(io_err)?;
        }
        let r = seg.io.write(seg.len, &buf);
        self.buf = buf;
        match r {
            Ok(()) => {
                self.last_start = seg.len;
                seg.len += n;
                seg.last_seq = seq;
                self.unsynced = true;
                Ok(())
            }
            Err(e) => {
                let at = seg.len;
                let _ = seg.cut(at);
                Err(io_err(e))
            }
        }
    }

    /// Makes every appended record durable (one `fdatasync`).
    pub(crate) fn sync(&mut self) -> Result<(), Error> {
        if self.unsynced {
            self.segs[self.active].io.sync_data().map_err(io_err)?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Removes the last record appended (its sync failed, so it was never
    /// acknowledged and must not be replayed).
    pub(crate) fn abort_last(&mut self) -> Result<(), Error> {
        let seg = &mut self.segs[self.active];
        if self.last_start >= HEADER_LEN && self.last_start < seg.len {
            let at = self.last_start;
            seg.cut(at)?;
            seg.len = at;
            seg.io.sync_data().map_err(io_err)?;
        }
        Ok(())
    }

    /// Whether appended records await a sync.
    pub(crate) fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// Called with the seq up to which redb holds every record durably: clears
    /// the inactive segment once covered, and moves appends to it when the
    /// active one is long. `next_seq` is the seq the next record will get.
    pub(crate) fn checkpointed(&mut self, upto: u64, next_seq: u64) -> Result<(), Error> {
        let other = 1 - self.active;
        if self.segs[other].len > 0 && self.segs[other].last_seq <= upto {
            self.segs[other].clear()?;
        }
        if self.segs[self.active].len >= SEGMENT_BYTES && self.segs[other].len == 0 {
            // Everything in the old segment must be durable before the new one is
            // the only one written (an Eventual record could otherwise be lost
            // behind durable ones).
            self.sync()?;
            self.start_segment(other, next_seq)?;
            self.active = other;
        }
        Ok(())
    }

    /// Bytes held in both segments.
    pub(crate) fn bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.len).sum()
    }
}

/// Binds a segment to the server key: a tag over the journal id.
fn key_check(key: &[u8; 32], id: u64) -> [u8; TAG_LEN] {
    frame_tag(key, b"cloakroom journal header", &id.to_le_bytes())
}

fn frame_tag(key: &[u8; 32], head: &[u8], payload: &[u8]) -> [u8; TAG_LEN] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(head);
    h.update(payload);
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
    t
}

/// The record starting at `pos`, if one is whole and its tag verifies:
/// (seq, payload, end).
fn frame_at<'a>(key: &[u8; 32], b: &'a [u8], pos: usize) -> Option<(u64, &'a [u8], usize)> {
    let head = b.get(pos..pos + FRAME_HEAD)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    if len > MAX_RECORD {
        return None;
    }
    let seq = u64::from_le_bytes(head[4..12].try_into().ok()?);
    let payload = b.get(pos + FRAME_HEAD..pos + FRAME_HEAD + len)?;
    let tag = b.get(pos + FRAME_HEAD + len..pos + FRAME_HEAD + len + TAG_LEN)?;
    if !bool::from(frame_tag(key, head, payload).ct_eq(tag)) {
        return None;
    }
    Some((seq, payload, pos + FRAME_HEAD + len + TAG_LEN))
}

/// Parses a segment's records. Returns them and the end of the last valid one.
fn parse_records(key: &[u8; 32], b: &[u8], first_seq: u64) -> Result<(Vec<Record>, u64), Error> {
    let mut pos = HEADER_LEN as usize;
    let mut out: Vec<Record> = Vec::new();
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
                // A torn tail has nothing valid after it; anything valid after a
                // bad record means the bad one was damaged in place.
                if valid_record_after(key, b, pos, expect) {
                    return Err(corrupt("a damaged journal record is followed by valid ones"));
                }
                break;
            }
        }
    }
    Ok((out, pos as u64))
}

/// Whether a valid record starts anywhere after `pos`, so the bad record at
/// `pos` was damaged in place rather than torn by a crash. Records carry
/// consecutive seqs, so the candidates are frames whose seq is the one the bad
/// record should have had or the next, whose length fits in the file: anything
/// else is not a record of this journal's current run (stale frames of a reused
/// segment have lower seqs). Each candidate costs one tag check; the filter
/// keeps them rare (a u64 equal to one of two values), so a scan of a long
/// torn tail stays linear.
///
/// More than [`MAX_CANDIDATES`] candidates that fail their tag is not a torn
/// tail either (a crafted file could otherwise make the scan quadratic): the
/// journal is then reported as damaged, never silently cut.
fn valid_record_after(key: &[u8; 32], b: &[u8], pos: usize, expect: u64) -> bool {
    const MAX_CANDIDATES: usize = 64;
    let mut candidates = 0;
    let mut p = pos + 1;
    while p + FRAME_HEAD + TAG_LEN <= b.len() {
        let seq = b.get(p + 4..p + 12).and_then(|x| x.try_into().ok()).map_or(0, u64::from_le_bytes);
        if seq == expect || seq == expect + 1 {
            let len = b.get(p..p + 4).and_then(|x| x.try_into().ok()).map_or(u32::MAX, u32::from_le_bytes) as usize;
            if p + FRAME_HEAD + len + TAG_LEN <= b.len() {
                if frame_at(key, b, p).is_some() {
                    return true;
                }
                candidates += 1;
                if candidates > MAX_CANDIDATES {
                    return true;
                }
            }
        }
        p += 1;
    }
    false
}

/// Opens a journal whose first segment holds `data` (fuzzing): every path of
/// the header check, frame parse and torn-tail scan, under a fixed key.
pub(crate) fn fuzz_segment(data: &[u8]) {
    let a = MemIo::boxed();
    let _ = a.write(0, data);
    let _ = Journal::open(
        [a, MemIo::boxed()],
        &[0; 32],
        u64::from_le_bytes(*data.get(8..16).and_then(|b| b.first_chunk::<8>()).unwrap_or(&[0; 8])),
    );
}

/// A journal that is kept only in memory: in-memory stores have nothing to replay.
pub(crate) struct MemIo(parking_lot::Mutex<Vec<u8>>);

impl MemIo {
    pub(crate) fn boxed() -> Box<dyn JournalIo> {
        Box::new(MemIo(parking_lot::Mutex::new(Vec::new())))
    }
}

impl JournalIo for MemIo {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.lock().len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let v = self.0.lock();
        let o = usize::try_from(offset).map_err(std::io::Error::other)?;
        let src = v.get(o..o + out.len()).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut v = self.0.lock();
        let o = usize::try_from(offset).map_err(std::io::Error::other)?;
        if v.len() < o + data.len() {
            v.resize(o + data.len(), 0);
        }
        v[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.lock().resize(usize::try_from(len).map_err(std::io::Error::other)?, 0);
        Ok(())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Segment storage shared with the test, so a "reopen" sees the same bytes.
    #[derive(Clone, Default)]
    struct Shared(Arc<parking_lot::Mutex<Vec<u8>>>);
    impl JournalIo for Shared {
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.0.lock().len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            let o = offset as usize;
            out.copy_from_slice(&self.0.lock()[o..o + out.len()]);
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            let mut v = self.0.lock();
            let o = offset as usize;
            if v.len() < o + data.len() {
                v.resize(o + data.len(), 0);
            }
            v[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.lock().resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// As `Shared`, but preallocated (as segment files are): fixed length, zeros.
    #[derive(Clone)]
    struct Pre(Shared);
    impl Pre {
        fn new() -> Pre {
            Pre(Shared(Arc::new(parking_lot::Mutex::new(vec![0u8; 1 << 16]))))
        }
    }
    impl JournalIo for Pre {
        fn len(&self) -> std::io::Result<u64> {
            self.0.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.0.read(offset, out)
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.0.write(offset, data)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn preallocated(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_reused_preallocated_segment_replays_only_its_new_records() {
        let (a, b) = (Pre::new(), Pre::new());
        let open = || Journal::open([Box::new(a.clone()), Box::new(b.clone())], &[9; 32], 77);
        let (mut j, _) = open().unwrap();
        j.reset(1).unwrap();
        for i in 1..=5 {
            j.append(i, &muts(i)).unwrap();
        }
        j.sync().unwrap();
        assert_eq!(open().unwrap().1.records.len(), 5);
        assert!(first_frame_is_new(&a.0.0.lock()));
        // A clean close: checkpointed, then reset. Old frames stay in the file.
        let len = a.0.0.lock().len();
        j.reset(6).unwrap();
        assert_eq!(a.0.0.lock().len(), len, "clearing never changes the length");
        assert!(open().unwrap().1.records.is_empty());
        assert!(!first_frame_is_new(&a.0.0.lock()), "stale frames are not records");
        j.append(6, &[Mutation::NextSerial(6)]).unwrap();
        j.sync().unwrap();
        let (_, r) = open().unwrap();
        assert_eq!(r.records.iter().map(|r| r.0).collect::<Vec<_>>(), [6]);
        // An unacknowledged record cut off is gone.
        j.append(7, &muts(7)).unwrap();
        j.abort_last().unwrap();
        assert_eq!(open().unwrap().1.records.len(), 1);
    }

    fn open(a: &Shared, b: &Shared) -> Result<(Journal, Replay), Error> {
        Journal::open([Box::new(a.clone()), Box::new(b.clone())], &[9; 32], 77)
    }

    fn muts(i: u64) -> Vec<Mutation> {
        vec![Mutation::NextSerial(i), Mutation::DelSession(i)]
    }

    fn written(n: u64) -> (Shared, Shared) {
        let (a, b) = (Shared::default(), Shared::default());
        let (mut j, r) = open(&a, &b).unwrap();
        assert!(r.records.is_empty());
        j.reset(1).unwrap();
        for i in 1..=n {
            j.append(i, &muts(i)).unwrap();
        }
        j.sync().unwrap();
        (a, b)
    }

    fn kind(r: Result<(Journal, Replay), Error>) -> StorageErrorKind {
        match r {
            Err(Error::Storage(e)) => e.kind(),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn records_replay_in_order() {
        let (a, b) = written(5);
        let (_, r) = open(&a, &b).unwrap();
        let seqs: Vec<u64> = r.records.iter().map(|r| r.0).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(r.records[2].1, muts(3));
    }

    #[test]
    fn a_torn_tail_at_every_length_is_dropped_cleanly() {
        let (a, b) = written(3);
        let full = a.0.lock().clone();
        let two = {
            let (a2, b2) = written(2);
            let n = a2.0.lock().len();
            drop(b2);
            n
        };
        for cut in two..full.len() {
            let a = Shared(Arc::new(parking_lot::Mutex::new(full[..cut].to_vec())));
            let (_, r) = open(&a, &b).unwrap();
            assert_eq!(r.records.len(), 2, "cut at {cut}");
        }
    }

    #[test]
    fn a_damaged_record_followed_by_valid_ones_is_refused_untouched() {
        let (a, b) = written(3);
        let before = a.0.lock().clone();
        // Flip a payload byte of the first record.
        a.0.lock()[HEADER_LEN as usize + FRAME_HEAD + 1] ^= 0x40;
        let damaged = a.0.lock().clone();
        assert_eq!(kind(open(&a, &b)), StorageErrorKind::JournalCorrupt);
        assert_eq!(*a.0.lock(), damaged, "left untouched");
        assert_ne!(damaged, before);
        // Damage in the last record only: a torn tail.
        let (a, b) = written(3);
        let n = a.0.lock().len();
        a.0.lock()[n - 3] ^= 1;
        assert_eq!(open(&a, &b).unwrap().1.records.len(), 2);
    }

    #[test]
    fn another_databases_journal_is_refused() {
        let (a, b) = written(1);
        let r = Journal::open([Box::new(a), Box::new(b)], &[9; 32], 78);
        assert_eq!(kind(r), StorageErrorKind::JournalMismatch);
    }

    #[test]
    fn a_journal_under_another_server_key_is_refused_not_dropped() {
        let (a, b) = written(2);
        let r = Journal::open([Box::new(a), Box::new(b)], &[8; 32], 77);
        assert_eq!(kind(r), StorageErrorKind::JournalMismatch);
    }

    #[test]
    fn segments_take_turns_and_clear_after_a_checkpoint() {
        let (a, b) = (Shared::default(), Shared::default());
        let (mut j, _) = open(&a, &b).unwrap();
        j.reset(1).unwrap();
        let big = vec![Mutation::PutSession(1, vec![0u8; 1 << 20].into())];
        let mut seq = 0;
        while a.0.lock().len() < SEGMENT_BYTES as usize {
            seq += 1;
            j.append(seq, &big).unwrap();
        }
        j.checkpointed(0, seq + 1).unwrap();
        assert!(b.0.lock().len() as u64 == HEADER_LEN, "appends moved to the second segment");
        seq += 1;
        j.append(seq, &muts(seq)).unwrap();
        j.sync().unwrap();
        let (_, r) = open(&a, &b).unwrap();
        assert_eq!(r.records.len() as u64, seq, "both segments replay, in order");
        j.checkpointed(seq - 1, seq + 1).unwrap();
        assert!(a.0.lock().is_empty(), "the covered segment is cleared");
        let (_, r) = open(&a, &b).unwrap();
        assert_eq!(r.records.iter().map(|r| r.0).collect::<Vec<_>>(), [seq]);
    }
}
