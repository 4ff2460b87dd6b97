//! No tests of its own: they moved to the capability files (issue 26) —
//! rotation and pruning here, and `concurrency`, `persistence`, `tamper`.
//! `tests/api_redis.rs` still names this module, so it runs the moved
//! backend-independent files from here until it names them itself; then
//! this file goes.

use super::common;

#[path = "pruning.rs"]
mod pruning;
#[path = "rotation.rs"]
mod rotation;
