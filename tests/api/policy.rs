//! No tests of its own: they moved to the capability files (issue 26) —
//! `access` here, and `bad_input`. `tests/api_redis.rs` still names this
//! module, so it runs the moved backend-independent file from here until it
//! names it itself; then this file goes.

use super::common;

#[path = "access.rs"]
mod access;
