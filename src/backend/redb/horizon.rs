//! The revocation horizon recorded in the file: the longest access-token
//! lifetime plus leeway any opener of this database has used (ms). Every
//! opener prunes by the largest recorded horizon, so revocation entries,
//! not-before cut-offs and retired keys outlive every token that could name
//! them, whichever config (the app's, the CLI's defaults, a restart with a
//! shorter TTL) opened the file last.
//!
//! One meta key, only ever raised, written in its own durable transaction
//! when an opener's horizon is larger. It is not journaled: it is monotonic
//! and idempotent, and an open that crashed before recording it records it
//! again at the next open.

use redb::ReadableDatabase as _;

use super::tables::META;
use super::{Db, io};
use crate::error::Error;

/// The meta key of the horizon (absent in files written before it existed:
/// read as 0, then raised by the first opener).
const META_HORIZON: &str = "revocation_horizon_ms";

impl Db {
    /// Raises the recorded horizon to `ms` if it is lower; returns the
    /// horizon to prune by (the larger of the two).
    pub(crate) fn record_horizon(&self, ms: u64) -> Result<u64, Error> {
        let db = self.handle()?;
        let recorded = {
            let rtx = db.begin_read().map_err(io)?;
            let meta = rtx.open_table(META).map_err(io)?;
            meta.get(META_HORIZON).map_err(io)?.map_or(0, |v| v.value())
        };
        if recorded >= ms {
            return Ok(recorded);
        }
        let wtx = db.begin_write().map_err(io)?;
        wtx.open_table(META).map_err(io)?.insert(META_HORIZON, ms).map_err(io)?;
        wtx.commit().map_err(io)?;
        Ok(ms)
    }
}
