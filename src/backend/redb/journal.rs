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
//! record. A segment is "clear" when empty (length 0, or a zeroed header).
//! Clearing the covered segment, preallocating it and its fsync run on a
//! helper thread while the segment is inactive, and the switch writes the new
//! header without a sync of its own (the first batch's sync of the new
//! segment makes both durable; a failed sync writes the header again with the
//! records): no acknowledgement waits behind a segment's housekeeping. The
//! header is only written over a durably clear segment, so a torn header reads
//! as clear, never as a mix of two.
//!
//! Layout (format 2): header `MAGIC ‖ journal id u64 ‖ after u64 ‖ epoch u64 ‖
//! tag`, then records `epoch u64 ‖ seq u64 ‖ synced u64 ‖ len u32 ‖ 0 u32 ‖
//! payload ‖ zero padding to 8 bytes ‖ tag`. Tags are keyed blake3 (a key
//! derived from the server key) truncated to 16 bytes; the header's covers the
//! id, `after` and the epoch, so a journal written under another server key is
//! refused instead of mistaken for a torn tail. `after` is the seq of the last
//! record before the segment's first (everything up to it is in the other
//! segment or in redb). The epoch is random and new each time a segment is
//! started, and every record carries it: the frames a reused segment still
//! holds from an earlier use carry another epoch, so neither replay nor the
//! torn-tail scan can take them (or any foreign bytes) for a record. Seqs
//! increase along a segment but may skip: a record cut off after a failed
//! sync leaves its seq unused, and no seq is ever given to two records.
//!
//! `synced` is the seq up to which every record was durable when the record
//! was written. It tells a torn tail from damage. A crash can leave any subset
//! of the bytes written since the last sync (the kernel writes pages back in
//! any order), so a bad record followed by valid ones is what a power cut
//! produces when those were written after the bad one's last sync; but a
//! valid record that says the bad one was already durable when it was written
//! proves damage in place, which no crash causes: only then is the open refused
//! (`JournalCorrupt`, files untouched). Frames start at multiples of 8 bytes,
//! and the scan after a bad record looks only there, and only at frames whose
//! epoch is the segment's, so it stays linear.
//!
//! Format 1 (`CLKJRNL\x01`: header `MAGIC ‖ id ‖ first seq ‖ key check`,
//! records `len u32 ‖ seq u64 ‖ payload ‖ tag`) is still read, so a journal
//! left by an older version replays; the open then rewrites both segments in
//! format 2.
//!
//! After a failed write or sync the journal knows what it holds: the failed
//! batch's record is cut off (and the cut retried before anything else is
//! written, so no later record follows it), and the records appended before
//! it whose sync failed are written again from memory before the next sync (a
//! failed `fdatasync` may have dropped their pages).

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq as _;

use super::mutation::{self, Mutation};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::telemetry::JournalMetrics;

/// Format 2 (the one written).
const MAGIC: &[u8; 8] = b"CLKJRNL\x02";
/// Format 1 (read only).
const MAGIC_V1: &[u8; 8] = b"CLKJRNL\x01";
const HEADER_LEN: u64 = 48;
const FRAME_HEAD: usize = 32;
const TAG_LEN: usize = 16;
/// Frames start at multiples of this.
const ALIGN: usize = 8;
/// Records with a longer payload are refused on replay, and [`Journal::append`]
/// refuses to write one (the writer bounds a batch far below: `BATCH_BYTES`).
pub(crate) const MAX_RECORD: usize = 1 << 30;
/// The active segment moves on once it is this long.
pub(crate) const SEGMENT_BYTES: u64 = 8 << 20;
/// The buffer of unsynced bytes is shrunk back after a sync once its capacity passes this.
const KEEP_BUFFER: usize = 64 << 20;
/// What the open refuses a database file older than its journal with (the
/// source says which seqs are missing).
const GAP: StorageErrorKind = StorageErrorKind::JournalGap;

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

fn io_err(e: std::io::Error) -> Error {
    StorageError::with_source(StorageErrorKind::Io, e).into()
}

fn corrupt(what: &'static str) -> Error {
    StorageError::with_source(StorageErrorKind::JournalCorrupt, std::io::Error::other(what)).into()
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

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|x| x.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// Real time, for the fsync durations.
#[allow(clippy::disallowed_methods)]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|x| x.try_into().ok()).map_or(0, u32::from_le_bytes)
}

struct Segment {
    /// Shared with the helper thread that prepares the segment while it is
    /// inactive (see [`Segment::prepare`]).
    io: std::sync::Arc<dyn JournalIo>,
    /// Write position (0: clear).
    len: u64,
    /// Bytes of the preallocated file (0 for other storage).
    cap: u64,
    /// Seq of the last record in it (if none, of the last before its first).
    last_seq: u64,
    /// This use's epoch.
    epoch: u64,
    /// A preparation running on a helper thread (clear, preallocate, sync):
    /// nothing else touches the segment until it is joined.
    prep: Option<std::thread::JoinHandle<std::io::Result<u64>>>,
    /// Whether the segment is clear (durably) and preallocated, ready to be
    /// started without a sync of its own.
    ready: bool,
}

impl Segment {
    fn new(io: Box<dyn JournalIo>) -> Segment {
        Segment { io: io.into(), len: 0, cap: 0, last_seq: 0, epoch: 0, prep: None, ready: false }
    }

    /// Clears the segment, preallocates it to a whole segment and syncs it,
    /// on a helper thread (the segment is inactive: the writer does not wait
    /// for this fsync, nor for the zeros; see [`Journal::checkpointed`]).
    /// Done in place if no thread can be started.
    fn prepare(&mut self, fsync: crate::telemetry::Hist) {
        self.len = 0;
        self.ready = false;
        let io = std::sync::Arc::clone(&self.io);
        let cap = self.cap;
        let work = move || -> std::io::Result<u64> {
            let mut cap = cap;
            if io.preallocated() {
                io.write(0, &[0u8; HEADER_LEN as usize])?;
                if cap < SEGMENT_BYTES + GROW {
                    cap = grow(&*io, cap, SEGMENT_BYTES + GROW)?;
                }
            } else {
                io.set_len(0)?;
            }
            let started = now();
            io.sync_data()?;
            fsync.seconds(started.elapsed());
            Ok(cap)
        };
        match std::thread::Builder::new().name("cloakroom-journal-prep".into()).spawn(work.clone()) {
            Ok(h) => self.prep = Some(h),
            Err(_) => self.finish(work()),
        }
    }

    /// Waits for a running preparation (it has had the time the active
    /// segment took to fill); on failure the segment is cleared here.
    fn settle(&mut self) -> Result<(), Error> {
        if let Some(h) = self.prep.take() {
            let r = h.join().unwrap_or_else(|_| Err(std::io::Error::other("journal preparation panicked")));
            self.finish(r);
        }
        if !self.ready {
            self.clear()?;
            self.ready = true;
        }
        Ok(())
    }

    fn finish(&mut self, r: std::io::Result<u64>) {
        if let Ok(cap) = r {
            self.cap = cap;
            self.ready = true;
        }
    }

    /// Makes the segment hold nothing (durably): a zeroed header, or length 0.
    fn clear(&mut self) -> Result<(), Error> {
        if self.io.preallocated() {
            self.io.write(0, &[0u8; HEADER_LEN as usize]).map_err(io_err)?;
        } else {
            self.io.set_len(0).map_err(io_err)?;
        }
        self.io.sync_data().map_err(io_err)?;
        self.len = 0;
        Ok(())
    }

    /// Whether a preparation may start: clear or covered, none running, not ready yet.
    fn idle(&self) -> bool {
        self.prep.is_none() && !self.ready
    }

    /// Removes whatever starts at `at` (not yet synced).
    fn cut(&self, at: u64) -> std::io::Result<()> {
        if self.io.preallocated() {
            // Zero its head: no longer a frame of this epoch.
            self.io.write(at, &[0u8; FRAME_HEAD])
        } else {
            self.io.set_len(at)
        }
    }
}

/// Whether `magic` is a header's magic torn while being written over zeros
/// (each byte either still zero or already written).
fn torn_header(magic: &[u8]) -> bool {
    magic.iter().zip(MAGIC).all(|(&b, &m)| b == 0 || b == m)
}

/// Whether a format-2 segment's first frame carries the header's epoch (a
/// record written since the header, or one torn while being written).
fn first_frame_is_new(b: &[u8]) -> bool {
    let h = HEADER_LEN as usize;
    b.len() >= h + FRAME_HEAD && u64_at(b, h) == u64_at(b, 24) && u64_at(b, 24) != 0
}

/// Where an abort cuts back to (see [`Journal::mark`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    active: usize,
    len: u64,
    last_seq: u64,
    pending: usize,
}

/// The journal, owned by the writer thread.
pub(crate) struct Journal {
    key: [u8; 32],
    id: u64,
    segs: [Segment; 2],
    /// Index of the active segment.
    active: usize,
    /// Every record up to this seq is durable.
    synced_seq: u64,
    /// Where the durable bytes of the active segment end.
    synced_len: u64,
    /// The bytes of the active segment from `synced_len` to its end, as
    /// written (frames are encoded here): written again after a failed sync.
    pending: Vec<u8>,
    /// A sync failed since `pending` was written: write it again before the next sync.
    rewrite: bool,
    /// A cut not yet done (it failed): redone before anything else is written.
    cut_at: Option<u64>,
    /// A cut done since the last sync (redone if that sync fails).
    cut_unsynced: Option<u64>,
    /// Whether the active segment has bytes not yet synced.
    unsynced: bool,
    /// The fsync histograms (no-ops until the writer sets them).
    metrics: JournalMetrics,
}

/// One journal record: its seq and row changes.
pub(crate) type Record = (u64, Vec<Mutation>);

/// What replay found: the records the database does not hold yet, in seq order.
pub(crate) struct Replay {
    pub(crate) records: Vec<Record>,
}

/// One segment as read at open.
struct Found {
    index: usize,
    after: u64,
    records: Vec<Record>,
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

    /// Records fsync durations into `m` from now on.
    pub(crate) fn set_metrics(&mut self, m: JournalMetrics) {
        self.metrics = m;
    }

    /// Clears both segments and starts the first after seq `after` (once a
    /// replay or everything written is checkpointed: the database holds every
    /// record up to `after`).
    pub(crate) fn reset(&mut self, after: u64) -> Result<(), Error> {
        for seg in &mut self.segs {
            if let Some(h) = seg.prep.take() {
                let _ = h.join();
            }
            seg.clear()?;
            seg.ready = false;
        }
        self.pending.clear();
        self.rewrite = false;
        self.cut_at = None;
        self.cut_unsynced = None;
        self.unsynced = false;
        self.synced_seq = after;
        self.active = 0;
        self.start_segment(0, after)?;
        self.segs[0].io.sync_data().map_err(io_err)?;
        Ok(())
    }

    /// Starts segment `i` after seq `after` under a new epoch, writing its
    /// header (not synced: the caller syncs it, or the next batch's sync of
    /// the segment does). Everything before must be durable, and the segment
    /// durably clear (a header written over an old one could tear into a mix
    /// of both; over zeros it tears into what reads as clear).
    fn start_segment(&mut self, i: usize, after: u64) -> Result<Vec<u8>, Error> {
        let mut e = [0u8; 8];
        crate::token::os_random(&mut e)?;
        // Never 0: a zeroed head must not carry it.
        let epoch = u64::from_le_bytes(e) | 1;
        let mut h = Vec::with_capacity(HEADER_LEN as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&self.id.to_le_bytes());
        h.extend_from_slice(&after.to_le_bytes());
        h.extend_from_slice(&epoch.to_le_bytes());
        h.extend_from_slice(&header_tag(&self.key, self.id, after, epoch));
        let seg = &mut self.segs[i];
        if seg.io.preallocated() {
            if seg.cap < GROW {
                seg.cap = grow(&*seg.io, seg.cap, GROW).map_err(io_err)?;
            }
        } else {
            seg.io.set_len(0).map_err(io_err)?;
        }
        seg.io.write(0, &h).map_err(io_err)?;
        seg.len = HEADER_LEN;
        seg.last_seq = after;
        seg.epoch = epoch;
        seg.ready = false;
        if i == self.active {
            self.synced_len = HEADER_LEN;
        }
        Ok(h)
    }

    /// Where [`Self::abort_to`] cuts back to: taken before a batch appends.
    pub(crate) fn mark(&self) -> Mark {
        let seg = &self.segs[self.active];
        Mark { active: self.active, len: seg.len, last_seq: seg.last_seq, pending: self.pending.len() }
    }

    /// Redoes what a failure left undone, before anything else is written: a
    /// cut that failed, and the bytes whose sync failed. Until this succeeds
    /// every append and sync fails (the writer refuses writes).
    fn repair(&mut self) -> Result<(), Error> {
        let seg = &self.segs[self.active];
        if let Some(at) = self.cut_at {
            seg.cut(at).map_err(io_err)?;
            self.cut_at = None;
            self.cut_unsynced = Some(self.cut_unsynced.map_or(at, |c| c.min(at)));
            self.unsynced = true;
        }
        if self.rewrite {
            seg.io.write(self.synced_len, &self.pending).map_err(io_err)?;
            self.rewrite = false;
            self.unsynced = true;
        }
        Ok(())
    }

    /// Appends one record (not yet synced) under `seq`, which must be above
    /// every seq appended before. On failure nothing of it remains readable
    /// (its bytes are cut off now, or before the next write), and a record
    /// replay would refuse (longer than [`MAX_RECORD`]) is never written.
    pub(crate) fn append(&mut self, seq: u64, muts: &[Mutation]) -> Result<(), Error> {
        let payload_len: usize = muts.iter().map(mutation::encoded_len).sum();
        if payload_len > MAX_RECORD {
            return Err(StorageError::with_source(
                StorageErrorKind::Commit,
                std::io::Error::other("journal record too large (a batch over 1 GiB); nothing was written"),
            )
            .into());
        }
        self.repair()?;
        let start = self.pending.len();
        let seg = &self.segs[self.active];
        let buf = &mut self.pending;
        buf.reserve(FRAME_HEAD + payload_len + ALIGN + TAG_LEN);
        buf.extend_from_slice(&seg.epoch.to_le_bytes());
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&self.synced_seq.to_le_bytes());
        #[allow(clippy::cast_possible_truncation)] // ≤ MAX_RECORD, checked above
        buf.extend_from_slice(&(payload_len as u32).to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        mutation::encode(muts, buf);
        debug_assert_eq!(buf.len() - start - FRAME_HEAD, payload_len);
        buf.resize(start + FRAME_HEAD + payload_len.next_multiple_of(ALIGN), 0);
        let tag = frame_tag(&self.key, &buf[start..]);
        buf.extend_from_slice(&tag);
        let n = (buf.len() - start) as u64;
        let seg = &mut self.segs[self.active];
        let at = seg.len;
        let written = (|| {
            if seg.io.preallocated() && at + n > seg.cap {
                seg.cap = grow(&*seg.io, seg.cap, at + n)?;
            }
            seg.io.write(at, &self.pending[start..])
        })();
        match written {
            Ok(()) => {
                seg.len += n;
                seg.last_seq = seq;
                self.unsynced = true;
                Ok(())
            }
            Err(e) => {
                self.pending.truncate(start);
                // Part of it may be there: cut it off before anything follows.
                self.cut_at = Some(at);
                let _ = self.repair();
                Err(io_err(e))
            }
        }
    }

    /// Makes every appended record durable (one `fdatasync`), after redoing
    /// what a failure left undone. Returns whether it synced.
    pub(crate) fn sync(&mut self) -> Result<bool, Error> {
        self.repair()?;
        if !self.unsynced {
            return Ok(false);
        }
        let seg = &self.segs[self.active];
        let started = now();
        let synced = seg.io.sync_data();
        self.metrics.batch.seconds(started.elapsed());
        match synced {
            Ok(()) => {
                self.synced_len = seg.len;
                self.synced_seq = seg.last_seq;
                self.pending.clear();
                if self.pending.capacity() > KEEP_BUFFER {
                    self.pending = Vec::new();
                }
                self.cut_unsynced = None;
                self.unsynced = false;
                Ok(true)
            }
            Err(e) => {
                // The pages may be gone (a failed fdatasync can drop them): write
                // the unsynced bytes again, and redo the cut, before the next sync.
                self.rewrite = !self.pending.is_empty();
                if let Some(c) = self.cut_unsynced.take() {
                    self.cut_at = Some(self.cut_at.map_or(c, |x| x.min(c)));
                }
                Err(io_err(e))
            }
        }
    }

    /// Removes what was appended since `m` (a batch whose sync failed: it was
    /// never acknowledged and must not be replayed), and only that: records
    /// appended before `m` stay (and are written again before the next sync).
    /// A cut that fails now is redone before anything else is written.
    pub(crate) fn abort_to(&mut self, m: Mark) {
        if m.active != self.active || m.len < self.synced_len {
            return;
        }
        let seg = &mut self.segs[self.active];
        if seg.len <= m.len {
            return;
        }
        seg.len = m.len;
        seg.last_seq = m.last_seq;
        self.pending.truncate(m.pending);
        self.cut_at = Some(self.cut_at.map_or(m.len, |c| c.min(m.len)));
        // Make the cut durable now if the storage lets us; else the next write does.
        if self.repair().is_ok() {
            let _ = self.sync();
        }
    }

    /// Whether the journal awaits a sync (records appended since the last one,
    /// or a failure's repair).
    pub(crate) fn unsynced(&self) -> bool {
        self.unsynced || self.rewrite || self.cut_at.is_some()
    }

    /// Called with the seq up to which redb holds every record durably: clears
    /// the inactive segment once covered, and moves appends to it when the
    /// active one is long. Returns whether it did either.
    pub(crate) fn checkpointed(&mut self, upto: u64) -> Result<bool, Error> {
        let other = 1 - self.active;
        let mut did = false;
        // Clearing the covered segment (and preallocating it, and its fsync)
        // runs on a helper thread: no acknowledgement waits for it.
        let covered = self.segs[other].len > 0 && self.segs[other].last_seq <= upto;
        if self.segs[other].idle() && (covered || self.segs[other].len == 0) {
            self.segs[other].prepare(self.metrics.segment.clone());
            tracing::debug!(segment = other, covered = upto, "journal segment clearing");
            did = true;
        }
        // The switch waits for no fsync but the old segment's (already done by
        // the last durable batch): while the other segment's preparation still
        // runs, appends stay in the active one (it grows past SEGMENT_BYTES).
        let prepared = self.segs[other].prep.as_ref().is_none_or(std::thread::JoinHandle::is_finished);
        if self.segs[self.active].len >= SEGMENT_BYTES && self.segs[other].len == 0 && prepared {
            let started = now();
            self.segs[other].settle()?;
            // Everything in the old segment must be durable before the new one is
            // the only one written (an Eventual record could otherwise be lost
            // behind durable ones, and the new segment's `after` says so).
            self.sync()?;
            let after = self.segs[self.active].last_seq;
            let header = self.start_segment(other, after)?;
            let bytes = self.segs[self.active].len;
            self.active = other;
            // The header is durable with the first record's sync (one fsync
            // of the new segment, not two); until then it is pending, so a
            // failed sync writes it again with the records.
            self.synced_len = 0;
            self.pending = header;
            self.unsynced = true;
            let took = started.elapsed();
            let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            tracing::debug!(segment = other, after, bytes, us, "journal segment switched");
            did = true;
        }
        Ok(did)
    }

    /// Waits for the helper threads' preparations (tests look at the files).
    #[cfg(test)]
    fn settle_all(&mut self) {
        for seg in &mut self.segs {
            if let Some(h) = seg.prep.take() {
                let r = h.join().unwrap_or_else(|_| Err(std::io::Error::other("panicked")));
                seg.finish(r);
            }
        }
    }

    /// Bytes held in both segments.
    pub(crate) fn bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.len).sum()
    }
}

/// Puts the segments' records in order and checks that none is missing: each
/// segment must start where the database or the segment before it ends.
/// Returns the records after `covered`.
fn chain(mut found: Vec<Found>, covered: u64) -> Result<Vec<Record>, Error> {
    found.sort_by_key(|f| (f.after, f.index));
    let mut have = covered;
    let mut out: Vec<Record> = Vec::new();
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

/// The tag over a format-2 header's fields.
fn header_tag(key: &[u8; 32], id: u64, after: u64, epoch: u64) -> [u8; TAG_LEN] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"cloakroom journal header v2");
    h.update(&id.to_le_bytes());
    h.update(&after.to_le_bytes());
    h.update(&epoch.to_le_bytes());
    truncate(h)
}

fn frame_tag(key: &[u8; 32], frame: &[u8]) -> [u8; TAG_LEN] {
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
struct Frame<'a> {
    seq: u64,
    synced: u64,
    payload: &'a [u8],
    end: usize,
}

/// The record starting at `pos`, if it carries `epoch`, is whole and its tag verifies.
fn frame_at<'a>(key: &[u8; 32], b: &'a [u8], pos: usize, epoch: u64) -> Option<Frame<'a>> {
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

/// Parses a format-2 segment's records (epoch `epoch`, after seq `after`).
/// Returns them and the end of the last valid one.
fn parse_records(key: &[u8; 32], b: &[u8], epoch: u64, after: u64) -> Result<(Vec<Record>, u64), Error> {
    let mut pos = HEADER_LEN as usize;
    let mut out: Vec<Record> = Vec::new();
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

/// Format 1, read to replay a journal an older version left.
mod v1 {
    use subtle::ConstantTimeEq as _;

    use super::{Error, Record, StorageError, StorageErrorKind, corrupt, mutation, u32_at, u64_at};

    const HEADER_LEN: usize = 40;
    const FRAME_HEAD: usize = 12;
    const TAG_LEN: usize = 16;

    /// Whether the first frame is not empty and not older than the header
    /// (stale frames from an earlier use of the segment have lower seqs).
    pub(super) fn first_frame_is_new(b: &[u8]) -> bool {
        b.len() >= HEADER_LEN + FRAME_HEAD && u32_at(b, 40) != 0 && u64_at(b, 44) >= u64_at(b, 16)
    }

    /// (after, records, end) of a format-1 segment of journal `id`; `None` if
    /// it holds nothing (a header without records under another id or key).
    pub(super) fn read(key: &[u8; 32], b: &[u8], id: u64) -> Result<Option<(u64, Vec<Record>, u64)>, Error> {
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

    fn parse(key: &[u8; 32], b: &[u8], first_seq: u64) -> Result<(Vec<Record>, u64), Error> {
        let mut pos = HEADER_LEN;
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
    pub(super) mod write {
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

/// Opens a journal whose first segment holds `data` (fuzzing): every path of
/// the header check, frame parse and torn-tail scan, under a fixed key.
pub(crate) fn fuzz_segment(data: &[u8]) {
    let a = MemIo::boxed();
    let _ = a.write(0, data);
    let _ = Journal::open([a, MemIo::boxed()], &[0; 32], u64_at(data, 8), 0);
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

    const KEY: [u8; 32] = [9; 32];

    fn open_with<A: JournalIo + Clone + 'static, B: JournalIo + Clone + 'static>(
        a: &A,
        b: &B,
        covered: u64,
    ) -> Result<(Journal, Replay), Error> {
        Journal::open([Box::new(a.clone()), Box::new(b.clone())], &KEY, 77, covered)
    }

    fn open(a: &Shared, b: &Shared) -> Result<(Journal, Replay), Error> {
        open_with(a, b, 0)
    }

    fn seqs(r: &Replay) -> Vec<u64> {
        r.records.iter().map(|r| r.0).collect()
    }

    fn muts(i: u64) -> Vec<Mutation> {
        vec![Mutation::NextSerial(i), Mutation::DelSession(i)]
    }

    /// Records 1..=n, synced once at the end (`each`: after every append).
    fn written_with(n: u64, each: bool) -> (Shared, Shared) {
        let (a, b) = (Shared::default(), Shared::default());
        let (mut j, r) = open(&a, &b).unwrap();
        assert!(r.records.is_empty());
        j.reset(0).unwrap();
        for i in 1..=n {
            j.append(i, &muts(i)).unwrap();
            if each {
                j.sync().unwrap();
            }
        }
        j.sync().unwrap();
        (a, b)
    }

    fn written(n: u64) -> (Shared, Shared) {
        written_with(n, false)
    }

    fn kind(r: Result<(Journal, Replay), Error>) -> StorageErrorKind {
        match r {
            Err(Error::Storage(e)) => e.kind(),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn a_reused_preallocated_segment_replays_only_its_new_records() {
        let (a, b) = (Pre::new(), Pre::new());
        let (mut j, _) = open_with(&a, &b, 0).unwrap();
        j.reset(0).unwrap();
        for i in 1..=5 {
            j.append(i, &muts(i)).unwrap();
        }
        j.sync().unwrap();
        assert_eq!(open_with(&a, &b, 0).unwrap().1.records.len(), 5);
        assert!(first_frame_is_new(&a.0.0.lock()));
        // A clean close: checkpointed, then reset. Old frames stay in the file.
        let len = a.0.0.lock().len();
        j.reset(5).unwrap();
        assert_eq!(a.0.0.lock().len(), len, "clearing never changes the length");
        assert!(open_with(&a, &b, 5).unwrap().1.records.is_empty());
        assert!(!first_frame_is_new(&a.0.0.lock()), "stale frames are not records");
        j.append(6, &[Mutation::NextSerial(6)]).unwrap();
        j.sync().unwrap();
        let (_, r) = open_with(&a, &b, 5).unwrap();
        assert_eq!(seqs(&r), [6]);
        // An unacknowledged record cut off is gone.
        let m = j.mark();
        j.append(7, &muts(7)).unwrap();
        j.abort_to(m);
        assert_eq!(seqs(&open_with(&a, &b, 5).unwrap().1), [6]);
        // The next record takes its place (and a new seq).
        j.append(8, &muts(8)).unwrap();
        j.sync().unwrap();
        assert_eq!(seqs(&open_with(&a, &b, 5).unwrap().1), [6, 8]);
    }

    #[test]
    fn records_replay_in_order() {
        let (a, b) = written(5);
        let (_, r) = open(&a, &b).unwrap();
        assert_eq!(seqs(&r), [1, 2, 3, 4, 5]);
        assert_eq!(r.records[2].1, muts(3));
        // Those the database holds are not replayed.
        assert_eq!(seqs(&open_with(&a, &b, 3).unwrap().1), [4, 5]);
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
        let (a, b) = written_with(3, true);
        let before = a.0.lock().clone();
        // Flip a payload byte of the first record: synced before the second was written.
        a.0.lock()[HEADER_LEN as usize + FRAME_HEAD + 1] ^= 0x40;
        let damaged = a.0.lock().clone();
        assert_eq!(kind(open(&a, &b)), StorageErrorKind::JournalCorrupt);
        assert_eq!(*a.0.lock(), damaged, "left untouched");
        assert_ne!(damaged, before);
        // Its head too.
        let (a, b) = written_with(3, true);
        a.0.lock()[HEADER_LEN as usize + 9] ^= 1;
        assert_eq!(kind(open(&a, &b)), StorageErrorKind::JournalCorrupt);
        // Damage in the last record only: a torn tail.
        let (a, b) = written_with(3, true);
        let n = a.0.lock().len();
        a.0.lock()[n - 3] ^= 1;
        assert_eq!(open(&a, &b).unwrap().1.records.len(), 2);
        // Records synced together: the later ones were written while the first
        // was not yet durable, which a power cut can leave without it.
        let (a, b) = written_with(3, false);
        a.0.lock()[HEADER_LEN as usize + FRAME_HEAD + 1] ^= 0x40;
        assert!(open(&a, &b).unwrap().1.records.is_empty());
    }

    #[test]
    fn another_databases_journal_is_refused() {
        let (a, b) = written(1);
        let r = Journal::open([Box::new(a), Box::new(b)], &KEY, 78, 0);
        assert_eq!(kind(r), StorageErrorKind::JournalMismatch);
    }

    #[test]
    fn a_journal_under_another_server_key_is_refused_not_dropped() {
        let (a, b) = written(2);
        let r = Journal::open([Box::new(a), Box::new(b)], &[8; 32], 77, 0);
        assert_eq!(kind(r), StorageErrorKind::JournalMismatch);
    }

    #[test]
    fn segments_take_turns_and_clear_after_a_checkpoint() {
        let (a, b) = (Shared::default(), Shared::default());
        let (mut j, _) = open(&a, &b).unwrap();
        j.reset(0).unwrap();
        let big = vec![Mutation::PutSession(1, vec![0u8; 1 << 20].into())];
        let mut seq = 0;
        while a.0.lock().len() < SEGMENT_BYTES as usize {
            seq += 1;
            j.append(seq, &big).unwrap();
        }
        // The first call starts preparing the second segment on a helper
        // thread; the switch happens once that is done.
        j.checkpointed(0).unwrap();
        j.settle_all();
        j.checkpointed(0).unwrap();
        assert!(b.0.lock().len() as u64 == HEADER_LEN, "appends moved to the second segment");
        seq += 1;
        j.append(seq, &muts(seq)).unwrap();
        j.sync().unwrap();
        let (_, r) = open(&a, &b).unwrap();
        assert_eq!(r.records.len() as u64, seq, "both segments replay, in order");
        j.checkpointed(seq - 2).unwrap();
        assert!(!a.0.lock().is_empty(), "a segment is kept until its last record is checkpointed");
        j.checkpointed(seq - 1).unwrap();
        // (Cleared by a helper thread: the writer does not wait for it.)
        j.settle_all();
        assert!(a.0.lock().is_empty(), "the covered segment is cleared");
        let (_, r) = open_with(&a, &b, seq - 1).unwrap();
        assert_eq!(seqs(&r), [seq]);
        // The database must hold what the cleared segment held.
        assert_eq!(kind(open_with(&a, &b, seq - 2)), GAP);
    }

    /// Segment storage that counts the syncs made on one thread (the writer's).
    #[derive(Clone)]
    struct Counting {
        inner: Shared,
        writer: std::thread::ThreadId,
        syncs: Arc<std::sync::atomic::AtomicUsize>,
    }
    impl JournalIo for Counting {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.inner.read(offset, out)
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.inner.write(offset, data)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            if std::thread::current().id() == self.writer {
                self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            self.inner.sync_data()
        }
    }

    /// Issue 27 item 8: the writer makes no fsync of its own for a segment's
    /// housekeeping — clearing the covered segment runs on a helper thread,
    /// and the switch's new header is made durable by the next batch's sync —
    /// so no acknowledgement waits behind it (before: one fsync for the clear
    /// and one for the header, on the writer, between two batches).
    #[test]
    fn segment_switch_and_clear_cost_the_writer_no_fsync() {
        let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mk =
            |s: &Shared| Counting { inner: s.clone(), writer: std::thread::current().id(), syncs: Arc::clone(&syncs) };
        let (sa, sb) = (Shared::default(), Shared::default());
        let (a, b) = (mk(&sa), mk(&sb));
        let (mut j, _) = open_with(&a, &b, 0).unwrap();
        j.reset(0).unwrap();
        j.checkpointed(0).unwrap(); // starts preparing the second segment
        let big = vec![Mutation::PutSession(1, vec![0u8; 1 << 20].into())];
        let mut seq = 0;
        while sa.0.lock().len() < SEGMENT_BYTES as usize {
            seq += 1;
            j.append(seq, &big).unwrap();
            j.sync().unwrap();
        }
        j.settle_all(); // (in a store, long done by the time a segment fills)
        let count = || syncs.load(std::sync::atomic::Ordering::SeqCst);
        let before = count();
        assert!(j.checkpointed(0).unwrap(), "switched");
        assert_eq!(sb.0.lock().len() as u64, HEADER_LEN, "appends moved to the second segment");
        assert_eq!(count(), before, "the switch synced on the writer");
        seq += 1;
        j.append(seq, &muts(seq)).unwrap();
        j.sync().unwrap();
        assert_eq!(count(), before + 1, "one sync makes the header and the record durable");
        // The first segment, covered: cleared off the writer.
        assert!(j.checkpointed(seq - 1).unwrap());
        assert_eq!(count(), before + 1, "the clear synced on the writer");
        j.settle_all();
        assert!(sa.0.lock().is_empty(), "the covered segment is cleared");
        let (_, r) = open_with(&a, &b, seq - 1).unwrap();
        assert_eq!(seqs(&r), [seq], "the new segment's header and record replay");
    }

    /// Issue 25 item 2: a reused segment keeps the frames of its earlier use,
    /// whose payloads hold (as expiry moves do) the seq the scan expects right
    /// after a u32 that reads as a fitting length. None of it is a record.
    #[test]
    fn stale_frames_that_name_the_next_seq_are_never_taken_for_records() {
        let (a, b) = (Pre::new(), Pre::new());
        let (mut j, _) = open_with(&a, &b, 0).unwrap();
        j.reset(0).unwrap();
        let next = 40;
        for seq in 1..next {
            // A rotation's expiry move of session number `next`, deadlines ~2026 in ms.
            let m = vec![
                Mutation::DelExpiry(1_780_000_000_000 + seq, next),
                Mutation::PutExpiry(1_780_000_060_000 + seq, next, [7; 16]),
            ];
            j.append(seq, &m).unwrap();
            j.sync().unwrap();
        }
        j.reset(next - 1).unwrap(); // a clean close
        for _ in 0..3 {
            let (mut j, r) = open_with(&a, &b, next - 1).unwrap();
            assert!(r.records.is_empty());
            j.reset(next - 1).unwrap();
        }
        // And with a record of the new use, then a torn one over the stale frames.
        let (mut j, _) = open_with(&a, &b, next - 1).unwrap();
        j.reset(next - 1).unwrap();
        j.append(next, &muts(next)).unwrap();
        j.sync().unwrap();
        j.append(next + 1, &muts(next + 1)).unwrap();
        let end = j.segs[0].len as usize;
        a.0.0.lock()[end - 1] ^= 1;
        assert_eq!(seqs(&open_with(&a, &b, next - 1).unwrap().1), [next]);
    }

    /// Storage that keeps what each sync made durable, and the writes since,
    /// so a test can cut the power: every write since the last sync reaches
    /// the disk or not, in 512-byte sectors, in any combination.
    #[derive(Clone, Default)]
    struct Disk {
        durable: Shared,
        live: Shared,
        unsynced: Arc<parking_lot::Mutex<Writes>>,
    }
    /// (offset, bytes) of each write since the last sync.
    type Writes = Vec<(u64, Vec<u8>)>;
    impl Disk {
        /// What a power cut leaves, keeping the unsynced sectors `keep` picks.
        fn cut(&self, mut keep: impl FnMut() -> bool) -> Shared {
            let img = Shared(Arc::new(parking_lot::Mutex::new(self.durable.0.lock().clone())));
            for (off, data) in self.unsynced.lock().iter() {
                let mut at = 0;
                while at < data.len() {
                    let sector_end = ((*off as usize + at) / 512 + 1) * 512 - *off as usize;
                    let end = sector_end.min(data.len());
                    if keep() {
                        img.write(*off + at as u64, &data[at..end]).unwrap();
                    }
                    at = end;
                }
            }
            img
        }
    }
    impl JournalIo for Disk {
        fn len(&self) -> std::io::Result<u64> {
            self.live.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.live.read(offset, out)
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.unsynced.lock().push((offset, data.to_vec()));
            self.live.write(offset, data)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.live.set_len(len)?;
            self.sync_data()
        }
        fn sync_data(&self) -> std::io::Result<()> {
            *self.durable.0.lock() = self.live.0.lock().clone();
            self.unsynced.lock().clear();
            Ok(())
        }
        fn preallocated(&self) -> bool {
            true
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Issue 25 item 2: several records written after the last sync (Eventual
    /// batches), persisted in any order and in part at a power cut, never
    /// turn into a refusal: the open replays every synced record and a prefix
    /// of the others, each intact.
    #[test]
    fn unsynced_records_persisted_out_of_order_never_refuse_the_open() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for trial in 0..300 {
            let (a, b) = (Disk::default(), Shared::default());
            a.write(0, &vec![0u8; 1 << 16]).unwrap();
            a.sync_data().unwrap();
            let (mut j, _) = open_with(&a, &b, 0).unwrap();
            j.reset(0).unwrap();
            let record = |seq: u64, len: u64| vec![Mutation::PutSession(seq, vec![seq as u8; len as usize].into())];
            let mut all = Vec::new();
            let synced = 1 + rng.next() % 4;
            let total = synced + 1 + rng.next() % 6;
            for seq in 1..=total {
                let m = record(seq, 20 + rng.next() % 1500);
                j.append(seq, &m).unwrap();
                all.push((seq, m));
                if seq <= synced {
                    j.sync().unwrap();
                }
            }
            let odds = 1 + rng.next() % 3;
            let img = a.cut(|| rng.next() % 4 < odds);
            let (_, r) = Journal::open([Box::new(img), Box::new(b.clone())], &KEY, 77, 0)
                .unwrap_or_else(|e| panic!("trial {trial}: {e:?}"));
            let n = r.records.len();
            assert!(n as u64 >= synced, "trial {trial}: synced records lost ({n} < {synced})");
            assert_eq!(r.records, all[..n], "trial {trial}");
        }
    }

    /// Issue 25 item 6: a journal that starts after what the database holds
    /// (the database file restored from an older backup) is refused, naming
    /// the missing seqs; one the database is ahead of opens.
    #[test]
    fn a_database_older_than_its_journal_is_refused_with_the_missing_seqs() {
        let (a, b) = written(5);
        let (mut j, _) = open_with(&a, &b, 5).unwrap();
        j.reset(5).unwrap(); // a clean close at seq 5
        let err = open_with(&a, &b, 2).err().unwrap();
        let Error::Storage(e) = &err else { panic!("{err:?}") };
        assert_eq!(e.kind(), GAP);
        let why = std::error::Error::source(e).unwrap().to_string();
        assert!(why.contains("3..=5") && why.contains("copied together"), "{why}");
        assert!(open_with(&a, &b, 5).is_ok());
        assert!(open_with(&a, &b, 9).is_ok(), "a database ahead of its journal");
        // With records: the first after the database's seq must follow it.
        let (a, b) = written(5);
        let (mut j, _) = open_with(&a, &b, 5).unwrap();
        j.reset(5).unwrap();
        j.append(6, &muts(6)).unwrap();
        j.sync().unwrap();
        assert_eq!(kind(open_with(&a, &b, 4)), GAP);
        assert_eq!(seqs(&open_with(&a, &b, 5).unwrap().1), [6]);
    }

    #[test]
    fn a_record_replay_would_refuse_is_never_written() {
        let (a, b) = written(1);
        let before = a.0.lock().clone();
        let (mut j, _) = open(&a, &b).unwrap();
        j.reset(1).unwrap();
        let len = a.0.lock().len();
        // 65 rows sharing one 16 MiB buffer: over 1 GiB encoded, nothing allocated.
        let row: Arc<[u8]> = vec![0u8; 16 << 20].into();
        let huge: Vec<Mutation> = (0..65).map(|n| Mutation::PutSession(n, Arc::clone(&row))).collect();
        let Err(Error::Storage(e)) = j.append(2, &huge) else { panic!("accepted") };
        assert_eq!(e.kind(), StorageErrorKind::Commit);
        assert_eq!(a.0.lock().len(), len, "nothing written");
        assert!(!j.unsynced());
        drop(before);
    }

    /// Format 1 (read only): records replay, and stale payload bytes that look
    /// like candidates are no longer counted as damage.
    #[test]
    fn a_format_1_segment_replays() {
        let key = blake3::derive_key("cloakroom 2026 journal record MAC v1", &KEY);
        let records: Vec<Record> = (10..14).map(|s| (s, muts(s))).collect();
        let mut seg = v1::write::segment(&key, 77, 10, &records);
        // Then frames of an earlier use: expiry moves naming seq 14 after a
        // timestamp's high half (the pattern of issue 25 item 2), many of them.
        for s in 0..100 {
            v1::write::frame(&key, &mut seg, s % 9 + 1, &[Mutation::DelExpiry(1_780_000_000_000, 14)]);
        }
        seg.resize(seg.len() + 4096, 0);
        let a = Shared(Arc::new(parking_lot::Mutex::new(seg)));
        let (_, r) = open_with(&a, &Shared::default(), 11).unwrap();
        assert_eq!(seqs(&r), [12, 13]);
        assert_eq!(r.records[0].1, muts(12));
        // The database must hold what precedes it.
        assert_eq!(kind(open_with(&a, &Shared::default(), 8)), GAP);
    }

    /// What a read-only open relies on (found sound in issue 25; kept): a
    /// journal holding records is seen without the key, a cleared one (stale
    /// frames after a fresh header) is not.
    #[test]
    fn has_records_sees_records_and_not_stale_frames() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.redb");
        let open = || Journal::open(open_files(&db).unwrap(), &KEY, 77, 0).unwrap().0;
        let mut j = open();
        j.reset(0).unwrap();
        assert!(!has_records(&db));
        for seq in 1..=3 {
            j.append(seq, &muts(seq)).unwrap();
        }
        j.sync().unwrap();
        assert!(has_records(&db));
        drop(j);
        let mut j = Journal::open(open_files(&db).unwrap(), &KEY, 77, 0).unwrap().0;
        j.reset(3).unwrap();
        assert!(!has_records(&db), "stale frames after a clean close");
    }
}
