//! The [`Journal`] as the writer drives it: appending records, syncing them,
//! cutting back a failed batch, and moving between segments.

use super::format::{ALIGN, FRAME_HEAD, HEADER_LEN, MAGIC, MAX_RECORD, TAG_LEN, frame_tag, header_tag};
use super::segment::{GROW, SEGMENT_BYTES, Segment, grow, io_err, now};
use crate::backend::redb::mutation::{self, Mutation};
use crate::error::{Error, StorageError, StorageErrorKind};
use crate::telemetry::JournalMetrics;

/// The buffer of unsynced bytes is shrunk back after a sync once its capacity passes this.
const KEEP_BUFFER: usize = 64 << 20;

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
    pub(super) key: [u8; 32],
    pub(super) id: u64,
    pub(super) segs: [Segment; 2],
    /// Index of the active segment.
    pub(super) active: usize,
    /// Every record up to this seq is durable.
    pub(super) synced_seq: u64,
    /// Where the durable bytes of the active segment end.
    pub(super) synced_len: u64,
    /// The bytes of the active segment from `synced_len` to its end, as
    /// written (frames are encoded here): written again after a failed sync.
    pub(super) pending: Vec<u8>,
    /// A sync failed since `pending` was written: write it again before the next sync.
    pub(super) rewrite: bool,
    /// A cut not yet done (it failed): redone before anything else is written.
    pub(super) cut_at: Option<u64>,
    /// A cut done since the last sync (redone if that sync fails).
    pub(super) cut_unsynced: Option<u64>,
    /// Whether the active segment has bytes not yet synced.
    pub(super) unsynced: bool,
    /// The fsync histograms (no-ops until the writer sets them).
    pub(super) metrics: JournalMetrics,
}

impl Journal {
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
    pub(super) fn settle_all(&mut self) {
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
