//! The redb backend: one redb file (or memory), its journal and the writer
//! thread. [`adapter::Redb`] implements the backend contract over them. No
//! redb types leave this module (apart from the test-only backend hook).
//!
//! The write path (format 3): the writer thread decides each batch against
//! redb plus the [`overlay::Overlay`] of rows written since the last checkpoint,
//! appends the batch's row changes to the [`journal`] and acknowledges after one
//! `fdatasync`; the [`applier`] folds batches into redb and checkpoints. Every
//! authoritative row is sealed with a tag under a key derived from the server
//! key ([`crate::backend::sealed`], shared with the Redis backend).
//!
//! Layout: [`handle`] (the shared [`Db`] handle, its reads, redb error
//! mapping), [`open`] (open read-write, replay, load: [`open::Pending`],
//! [`open::Loaded`]), `migrate` (formats 1 and 2 → 3), [`verify`] (the
//! read-only admin handle and the full scan), `format` (recognising a
//! file), [`adapter`] (the [`crate::backend::Backend`] implementation); the write path in [`writer`],
//! [`journal`], [`applier`], [`overlay`], [`index`] and `view`.

pub(crate) mod adapter;
pub(crate) mod applier;
mod format;
pub(crate) mod handle;
mod horizon;
pub(crate) mod index;
pub(crate) mod journal;
mod migrate;
pub(crate) mod mutation;
pub(crate) mod open;
pub(crate) mod overlay;
mod tables;
pub(crate) mod verify;
mod view;
pub(crate) mod writer;

pub(crate) use handle::{Db, guarded, io};
pub(crate) use verify::ReadOnly;
