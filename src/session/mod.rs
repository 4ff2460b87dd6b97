//! Sessions: the public [`Session`], [`NewSession`] and [`Meta`], and the
//! record a session is stored and cached as.
//!
//! | file | what it holds |
//! |---|---|
//! | `bytes.rs` | the byte reader every row codec uses, and [`RecordError`] |
//! | `input.rs` | what a caller gives: [`NewSession`], [`Meta`], their limits and checks |
//! | `record.rs` | the stored and cached record, its live state and its versioned encoding |
//! | `view.rs` | [`Session`]: the caller's copy of a record |
//!
//! Dependencies point one way: `view` uses `record` and `input`; `record`
//! uses `input` and `bytes`. `bytes` is general (the refresh families and
//! the redb backend's rows use it too); it sits here only because a new
//! top-level module needs a line in `lib.rs`.

mod bytes;
mod input;
mod record;
mod view;

pub(crate) use input::check_user;
pub use input::{MAX_LABEL_LEN, MAX_USER_AGENT_LEN, MAX_USER_ID_LEN, Meta, NewSession};
pub(crate) use record::{Record, RecordParts};
pub use view::Session;

pub(crate) use bytes::Reader;
pub use bytes::RecordError;
