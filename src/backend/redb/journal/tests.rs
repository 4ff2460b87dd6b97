//! Tests of the whole journal: writing, replaying, switching, tearing.

use std::sync::Arc;

use super::append::Journal;
use super::format::{FRAME_HEAD, HEADER_LEN, Logged, first_frame_is_new, v1};
use super::replay::{GAP, Replay, has_records};
use super::segment::{JournalIo, SEGMENT_BYTES, open_files};
use crate::backend::redb::mutation::Mutation;
use crate::error::{Error, StorageErrorKind};

/// Segment storage shared with the test, so a "reopen" sees the same bytes.
#[derive(Clone, Default)]
struct SharedBytes(Arc<parking_lot::Mutex<Vec<u8>>>);
impl JournalIo for SharedBytes {
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

/// As `SharedBytes`, but preallocated (as segment files are): fixed length, zeros.
#[derive(Clone)]
struct Pre(SharedBytes);
impl Pre {
    fn new() -> Pre {
        Pre(SharedBytes(Arc::new(parking_lot::Mutex::new(vec![0u8; 1 << 16]))))
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

fn open(a: &SharedBytes, b: &SharedBytes) -> Result<(Journal, Replay), Error> {
    open_with(a, b, 0)
}

fn seqs(r: &Replay) -> Vec<u64> {
    r.records.iter().map(|r| r.0).collect()
}

fn muts(i: u64) -> Vec<Mutation> {
    vec![Mutation::NextSerial(i), Mutation::DelSession(i)]
}

/// Records 1..=n, synced once at the end (`each`: after every append).
fn written_with(n: u64, each: bool) -> (SharedBytes, SharedBytes) {
    let (a, b) = (SharedBytes::default(), SharedBytes::default());
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

fn written(n: u64) -> (SharedBytes, SharedBytes) {
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
        let a = SharedBytes(Arc::new(parking_lot::Mutex::new(full[..cut].to_vec())));
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
    let (a, b) = (SharedBytes::default(), SharedBytes::default());
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
    inner: SharedBytes,
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
        |s: &SharedBytes| Counting { inner: s.clone(), writer: std::thread::current().id(), syncs: Arc::clone(&syncs) };
    let (sa, sb) = (SharedBytes::default(), SharedBytes::default());
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
    durable: SharedBytes,
    live: SharedBytes,
    unsynced: Arc<parking_lot::Mutex<Writes>>,
}
/// (offset, bytes) of each write since the last sync.
type Writes = Vec<(u64, Vec<u8>)>;
impl Disk {
    /// What a power cut leaves, keeping the unsynced sectors `keep` picks.
    fn cut(&self, mut keep: impl FnMut() -> bool) -> SharedBytes {
        let img = SharedBytes(Arc::new(parking_lot::Mutex::new(self.durable.0.lock().clone())));
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
        let (a, b) = (Disk::default(), SharedBytes::default());
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
    let records: Vec<Logged> = (10..14).map(|s| (s, muts(s))).collect();
    let mut seg = v1::write::segment(&key, 77, 10, &records);
    // Then frames of an earlier use: expiry moves naming seq 14 after a
    // timestamp's high half (the pattern of issue 25 item 2), many of them.
    for s in 0..100 {
        v1::write::frame(&key, &mut seg, s % 9 + 1, &[Mutation::DelExpiry(1_780_000_000_000, 14)]);
    }
    seg.resize(seg.len() + 4096, 0);
    let a = SharedBytes(Arc::new(parking_lot::Mutex::new(seg)));
    let (_, r) = open_with(&a, &SharedBytes::default(), 11).unwrap();
    assert_eq!(seqs(&r), [12, 13]);
    assert_eq!(r.records[0].1, muts(12));
    // The database must hold what precedes it.
    assert_eq!(kind(open_with(&a, &SharedBytes::default(), 8)), GAP);
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
