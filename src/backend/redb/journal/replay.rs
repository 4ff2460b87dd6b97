//! Reading the segments back at open: [`Replay`], the order of the two
//! segments, and telling a torn tail from damage.

use std::path::Path;

use subtle::ConstantTimeEq as _;

use super::append::Journal;
use super::format::{
    ALIGN, FRAME_HEAD, HEADER_LEN, Logged, MAGIC, MAGIC_V1, TAG_LEN, corrupt, first_frame_is_new, frame_at, header_tag,
    torn_header, u64_at, v1,
};
use super::segment::{JournalIo, MemIo, Segment, io_err, segment_paths};
use crate::backend::redb::mutation;
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::telemetry::JournalMetrics;

/// What the open refuses a database file older than its journal with (the
/// source says which seqs are missing).
pub(super) const GAP: StorageErrorKind = StorageErrorKind::JournalGap;

/// Whether any segment of `db` holds records (a read-only open must refuse: the
/// database alone would be missing acknowledged writes). Looks at the header
/// and the first frame (no key needed): a record is there when the frame after
/// a header belongs to it (format 2: carries its epoch; format 1: is not empty
/// and not older than the header). Errs on the side of "yes".
pub(crate) fn has_records(db: &Path) -> bool {
    use std::io::Read as _;
    segment_paths(db).iter().any(|p| {
        let Ok(f) = std::fs::File::open(p) else { return false };
        let mut b = Vec::with_capacity(HEADER_LEN as usize + FRAME_HEAD);
        if f.take(HEADER_LEN + FRAME_HEAD as u64).read_to_end(&mut b).is_err() {
            return true;
        }
        match b.get(..8) {
            Some(m) if m == MAGIC => first_frame_is_new(&b),
            Some(m) if m == MAGIC_V1 => v1::first_frame_is_new(&b),
            _ => false,
        }
    })
}

/// The database file holds records up to `covered`, its journal continues after `after`.
fn gap(covered: u64, after: u64) -> Error {
    StorageError::with_source(
        GAP,
        std::io::Error::other(format!(
            "the database file is older than its journal: journal records {}..={after} are in neither (the \
             file holds them up to {covered}); a database file and its journal files (<db>.journal, \
             <db>.journal.1) must be copied together, from the same moment",
            covered + 1
        )),
    )
    .into()
}

/// What replay found: the records the database does not hold yet, in seq order.
pub(crate) struct Replay {
    pub(crate) records: Vec<Logged>,
}

/// One segment as read at open.
struct Found {
    index: usize,
    after: u64,
    records: Vec<Logged>,
}

impl Journal {
    /// Reads both segments and validates every record, changing nothing.
    /// `covered` is the seq up to which the database holds every record: the
    /// replay returns the records after it, and refuses a journal that starts
    /// after it (the records between are in neither). Segments with another
    /// journal id (a journal of another database) or key are refused.
    pub(crate) fn open(
        io: [Box<dyn JournalIo>; 2],
        server_key: &[u8; 32],
        id: u64,
        covered: u64,
    ) -> Result<(Journal, Replay), Error> {
        let key = blake3::derive_key("cloakroom 2026 journal record MAC v2", server_key);
        let [a, b] = io;
        let mut segs = [Segment::new(a), Segment::new(b)];
        let mut found: Vec<Found> = Vec::new();
        for (index, seg) in segs.iter_mut().enumerate() {
            let len = seg.io.len().map_err(io_err)?;
            if seg.io.preallocated() {
                seg.cap = len;
            }
            if len < 8 {
                // Empty, or a header torn while starting the segment: holds nothing.
                continue;
            }
            let n = usize::try_from(len).map_err(|_| corrupt("journal segment too large"))?;
            let mut bytes = vec![0u8; n];
            seg.io.read(0, &mut bytes).map_err(io_err)?;
            let (after, records) = if bytes[..8].iter().all(|&b| b == 0) {
                continue; // cleared
            } else if &bytes[..8] == MAGIC {
                if bytes.len() < HEADER_LEN as usize {
                    continue; // a header torn while starting the segment
                }
                let after = u64_at(&bytes, 16);
                let epoch = u64_at(&bytes, 24);
                let ours =
                    u64_at(&bytes, 8) == id && bool::from(header_tag(&key, id, after, epoch).ct_eq(&bytes[32..48]));
                if !ours {
                    if !first_frame_is_new(&bytes) {
                        // No records: nothing to lose (a clean close, then a
                        // replaced server key; or a torn header). Rewritten at reset.
                        continue;
                    }
                    return Err(StorageError::new(StorageErrorKind::JournalMismatch).into());
                }
                let (records, end) = parse_records(&key, &bytes, epoch, after)?;
                seg.len = end;
                seg.epoch = epoch;
                (after, records)
            } else if &bytes[..8] == MAGIC_V1 {
                let v1_key = blake3::derive_key("cloakroom 2026 journal record MAC v1", server_key);
                match v1::read(&v1_key, &bytes, id)? {
                    Some((after, records, end)) => {
                        seg.len = end;
                        (after, records)
                    }
                    None => continue,
                }
            } else if torn_header(&bytes[..8]) {
                continue; // a header torn while starting the segment: no records yet
            } else {
                return Err(corrupt("journal segment has no cloakroom journal header"));
            };
            seg.last_seq = records.last().map_or(after, |r| r.0);
            found.push(Found { index, after, records });
        }
        let records = chain(found, covered)?;
        let journal = Journal {
            key,
            id,
            segs,
            active: 0,
            synced_seq: covered,
            synced_len: 0,
            pending: Vec::new(),
            rewrite: false,
            cut_at: None,
            cut_unsynced: None,
            unsynced: false,
            metrics: JournalMetrics::noop(),
        };
        Ok((journal, Replay { records }))
    }
}

/// Puts the segments' records in order and checks that none is missing: each
/// segment must start where the database or the segment before it ends.
/// Returns the records after `covered`.
fn chain(mut found: Vec<Found>, covered: u64) -> Result<Vec<Logged>, Error> {
    found.sort_by_key(|f| (f.after, f.index));
    let mut have = covered;
    let mut out: Vec<Logged> = Vec::new();
    for (i, f) in found.into_iter().enumerate() {
        if f.after > have {
            if i == 0 {
                // The journal starts after what the database holds: the file is
                // older than its journal (restored alone from a backup).
                return Err(gap(covered, f.after));
            }
            // The segment before was synced in full before this one started, so
            // a crash cannot have left it short.
            return Err(corrupt("a journal segment lacks records the next one follows"));
        }
        for r in f.records {
            if r.0 > have {
                have = r.0;
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Parses a format-2 segment's records (epoch `epoch`, after seq `after`).
/// Returns them and the end of the last valid one.
fn parse_records(key: &[u8; 32], b: &[u8], epoch: u64, after: u64) -> Result<(Vec<Logged>, u64), Error> {
    let mut pos = HEADER_LEN as usize;
    let mut out: Vec<Logged> = Vec::new();
    let mut last = after;
    loop {
        match frame_at(key, b, pos, epoch) {
            Some(f) if f.seq > last => {
                let muts = mutation::decode(f.payload).map_err(|_| corrupt("journal record does not decode"))?;
                out.push((f.seq, muts));
                last = f.seq;
                pos = f.end;
            }
            _ => {
                // The end of the records: a torn tail, or damage. Damage only if
                // a valid record after it says a record past `last` was durable.
                if durable_after(key, b, pos, epoch, last) {
                    return Err(corrupt("a damaged journal record is followed by valid ones"));
                }
                break;
            }
        }
    }
    Ok((out, pos as u64))
}

/// Whether a valid record of this epoch after `pos` was written once a record
/// past `last` was durable: then the record at `pos` (which replay could not
/// read) had been synced, and no crash undoes that. Records written after
/// `pos` while it was still unsynced are what a power cut may leave without
/// it (pages reach the disk in any order): those are a torn tail.
fn durable_after(key: &[u8; 32], b: &[u8], pos: usize, epoch: u64, last: u64) -> bool {
    let mut p = pos.next_multiple_of(ALIGN) + ALIGN;
    while p + FRAME_HEAD + TAG_LEN <= b.len() {
        if u64_at(b, p) == epoch
            && let Some(f) = frame_at(key, b, p, epoch)
        {
            if f.synced > last {
                return true;
            }
            p = f.end;
            continue;
        }
        p += ALIGN;
    }
    false
}

/// Opens a journal whose first segment holds `data` (fuzzing): every path of
/// the header check, frame parse and torn-tail scan, under a fixed key.
pub(crate) fn fuzz_segment(data: &[u8]) {
    let a = MemIo::boxed();
    let _ = a.write(0, data);
    let _ = Journal::open([a, MemIo::boxed()], &[0; 32], u64_at(data, 8), 0);
}
