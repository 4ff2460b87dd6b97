//! Integration tests, built as one binary (faster to compile and link).
//!
//! The backend-independent modules open their stores through
//! `common::open`; `tests/api_redis.rs` runs those same modules again on a
//! Redis-backed store.

/// Whether this binary runs the suite on Redis (see `common::open`).
const REDIS: bool = false;

#[cfg(feature = "redis")]
#[path = "../src/bin/cloakroom/redis_side.rs"]
#[allow(clippy::disallowed_methods, unreachable_pub)] // the Redis baseline times its own server start
mod redis_side;

/// One file per capability; shared helpers in `common` and `support/`.
mod api {
    mod common;
    /// Test doubles: `faulty_backend`, storage that fails on demand.
    mod support {
        pub(crate) mod faulty_backend;
    }

    mod access;
    mod bad_input;
    mod concurrency;
    mod expiry;
    mod faults;
    mod files;
    mod lifecycle;
    mod model;
    mod persistence;
    mod pruning;
    mod revocation;
    mod rotation;
    mod sweep;
    mod tamper;
    mod tokens;
}
