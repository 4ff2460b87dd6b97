//! Moved to `support/faulty_backend.rs` (issue 26: not to be confused with
//! `faults.rs`, the tests). `tests/api_redis.rs`, `tests/web.rs` and
//! `bad_input.rs` (compiled by both API suites) still name this path; it
//! goes when they name the new one.

#[path = "support/faulty_backend.rs"]
mod faulty_backend;

pub(crate) use faulty_backend::*;
