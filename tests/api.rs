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

mod api {
    mod common;

    mod bad_input;
    mod concurrency;
    mod expiry;
    mod faults;
    mod faulty;
    mod files;
    mod lifecycle;
    mod model;
    mod persistence;
    mod policy;
    mod revocation;
    mod sweep;
    mod tamper;
    mod tokens;
    mod writes;
}
