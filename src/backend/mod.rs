//! The backend boundary: what differs between "one redb file" and any other
//! place sessions are kept.
//!
//! A backend stores session records, refresh families, revocation entries and
//! not-before cut-offs, and applies the write ops of [`op`], each atomically
//! with its preconditions ([`contract::Backend`]). It does not know about the cache, the revocation bitmap,
//! token formats or the refresh policy: those are shared by every backend and
//! live above it ([`crate::table`], [`crate::refresh`]). A backend never calls
//! back up: what an op revoked comes back in its [`Outcome`] (or, if the op
//! failed after deciding, in its [`Failure`]), and the session table applies it.
//!
//! Implementations: [`redb::adapter::Redb`] (the embedded default, in
//! `redb/`: a redb file or memory, the journal and the writer thread) and, with the
//! `redis` feature, `redis::RedisBackend` (one Redis shared by several nodes;
//! each node's cache is kept coherent by `redis::sync`). Both store rows
//! in the same sealed encodings ([`sealed`]).

pub(crate) mod coherence;
pub(crate) mod contract;
pub(crate) mod op;
pub(crate) mod redb;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod rules;
pub(crate) mod sealed;

pub(crate) use contract::{Backend, Invalidation, LostHook, Wait};
pub(crate) use op::{Create, Failure, Op, Outcome, Revoked, Swept, UserCut};
