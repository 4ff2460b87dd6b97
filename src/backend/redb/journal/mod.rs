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
mod append;
mod format;
mod replay;
mod segment;
#[cfg(test)]
mod tests;

pub(crate) use append::Journal;
pub(crate) use replay::{fuzz_segment, has_records};
#[cfg(feature = "test-util")]
pub(crate) use segment::{BackendIo, JournalIo};
pub(crate) use segment::{MemIo, open_files, segment_paths};
