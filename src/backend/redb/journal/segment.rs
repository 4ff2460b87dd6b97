//! Segment storage: the [`JournalIo`] trait, file and memory segments, the
//! segment files of a database, and a segment's clearing and preparation.

use std::path::{Path, PathBuf};

use super::format::{FRAME_HEAD, HEADER_LEN};
use crate::error::{Error, StorageError, StorageErrorKind};

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
pub(super) const GROW: u64 = 1 << 20;

/// Extends `io` with written zeros from `from` to at least `to` (in [`GROW`] steps).
pub(super) fn grow(io: &dyn JournalIo, from: u64, to: u64) -> std::io::Result<u64> {
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

pub(super) fn io_err(e: std::io::Error) -> Error {
    StorageError::with_source(StorageErrorKind::Io, e).into()
}

/// Real time, for the fsync durations.
#[allow(clippy::disallowed_methods)]
pub(super) fn now() -> std::time::Instant {
    std::time::Instant::now()
}

pub(super) struct Segment {
    /// Shared with the helper thread that prepares the segment while it is
    /// inactive (see [`Segment::prepare`]).
    pub(super) io: std::sync::Arc<dyn JournalIo>,
    /// Write position (0: clear).
    pub(super) len: u64,
    /// Bytes of the preallocated file (0 for other storage).
    pub(super) cap: u64,
    /// Seq of the last record in it (if none, of the last before its first).
    pub(super) last_seq: u64,
    /// This use's epoch.
    pub(super) epoch: u64,
    /// A preparation running on a helper thread (clear, preallocate, sync):
    /// nothing else touches the segment until it is joined.
    pub(super) prep: Option<std::thread::JoinHandle<std::io::Result<u64>>>,
    /// Whether the segment is clear (durably) and preallocated, ready to be
    /// started without a sync of its own.
    pub(super) ready: bool,
}

impl Segment {
    pub(super) fn new(io: Box<dyn JournalIo>) -> Segment {
        Segment { io: io.into(), len: 0, cap: 0, last_seq: 0, epoch: 0, prep: None, ready: false }
    }

    /// Clears the segment, preallocates it to a whole segment and syncs it,
    /// on a helper thread (the segment is inactive: the writer does not wait
    /// for this fsync, nor for the zeros; see [`Journal::checkpointed`]).
    /// Done in place if no thread can be started.
    pub(super) fn prepare(&mut self, fsync: crate::telemetry::Hist) {
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
    pub(super) fn settle(&mut self) -> Result<(), Error> {
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

    pub(super) fn finish(&mut self, r: std::io::Result<u64>) {
        if let Ok(cap) = r {
            self.cap = cap;
            self.ready = true;
        }
    }

    /// Makes the segment hold nothing (durably): a zeroed header, or length 0.
    pub(super) fn clear(&mut self) -> Result<(), Error> {
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
    pub(super) fn idle(&self) -> bool {
        self.prep.is_none() && !self.ready
    }

    /// Removes whatever starts at `at` (not yet synced).
    pub(super) fn cut(&self, at: u64) -> std::io::Result<()> {
        if self.io.preallocated() {
            // Zero its head: no longer a frame of this epoch.
            self.io.write(at, &[0u8; FRAME_HEAD])
        } else {
            self.io.set_len(at)
        }
    }
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
