//! The backend-independent part of the API suite (the same files as
//! `tests/api.rs`, not copies), run on Redis-backed stores: each test thread
//! starts its own `redis-server` on a free 127.0.0.1 port (stopped when the
//! thread ends, pass or fail), and each store gets its own key prefix.
//!
//! Without a `redis-server` that runs, no test body runs on any other backend
//! (its expectations are Redis's): the first test to open a store prints one
//! `SKIPPED: redis-server not installed` line and ends the binary with success
//! (see `common::redis::require`), so the README's test command passes on a
//! fresh machine; with `CLOAKROOM_REQUIRE_REDIS` set (as `.ci/run`, which
//! installs redis-server, does) it fails instead.

/// Whether this binary runs the suite on Redis (see `common::open`).
const REDIS: bool = true;

#[path = "../src/bin/cloakroom/redis_side.rs"]
#[allow(clippy::disallowed_methods, unreachable_pub)] // the Redis baseline times its own server start
mod redis_side;

/// The backend-independent capability files of `tests/api.rs` (the files
/// that open redb files or inject storage faults run there only).
#[path = "api"]
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
    mod lifecycle;
    mod model;
    mod pruning;
    mod revocation;
    mod rotation;
    mod tokens;
}
