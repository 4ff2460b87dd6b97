//! The Redis backend (feature `redis`): sessions shared by every node of an
//! app through one Redis (or Valkey) server, with the synchronous `redis`
//! client (no async runtime inside the library) and a small connection pool.
//!
//! Key layout (all keys under the hash tag `{prefix}`, default `{cloakroom}`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:s:<id hex>` | hash | `r` sealed record, `num` storage number, `ser` serial, `sh` secret hash, `id`, `u` user, `f` sealed refresh families; `PEXPIRE` to the session's deadline |
//! | `{p}:u:<user>` | zset | the user's session ids (hex), scored by absolute deadline |
//! | `{p}:rv` | hash | revoked serial → id ‖ secret hash |
//! | `{p}:rvt` | zset | revoked serial, scored by prune-after (ms) |
//! | `{p}:nb` | hash | user → not-before (ms) |
//! | `{p}:meta` | hash | `format`: the layout version (1); `keycheck`: a hash derived from the server key; `instance`: this store's identity (random, recorded by its first open); `serial`: the serial counter |
//! | `{p}:kids` | hash | access-token kid → keyed hash of its algorithm and verification key |
//! | `{p}:ev` | channel | revocations (`R`), changed sessions (`U`), not-before (`N`) |
//!
//! A create is one MULTI/EXEC transaction (unconditional writes); writes that
//! decide on the server (revoke, a user's revocation, pruning) are one script
//! each. Writes that build a new record
//! from the stored one (touch, data update, rotation, a refresh-family
//! decision) read the row, decide in Rust, and apply with one compare-and-swap
//! script, retried if another node changed the row in between: two round trips,
//! exactly-once across nodes.
//!
//! A wiped store (a `FLUSHALL`, or a server restarted without writes it had
//! acknowledged) is noticed by its missing or other `instance`, or by a serial
//! counter behind what this node reserved (see [`Instance`](instance::Instance)):
//! the node then refuses every call with a `Storage` error of kind `Wiped`
//! until reopened.

mod backend;
mod instance;
mod keys;
mod ops;
mod options;
mod pool;
mod resp;
mod scripts;
mod state;
pub(crate) mod sync;

pub(crate) use backend::RedisBackend;
pub(crate) use keys::Keys;
pub use options::RedisOptions;
pub(crate) use pool::Pool;
pub(crate) use state::{load, record_horizon};

#[cfg(test)]
mod tests;
