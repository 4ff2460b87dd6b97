//! Store calls from async code: anything that may block (a write and its
//! fsync, a cache miss that reads redb or asks Redis) runs on tokio's blocking
//! pool, never on a runtime worker. Used by the web layer and the adapters.

use crate::error::Error;
use crate::error::StorageError;
use crate::error::StorageErrorKind;

/// Runs `f` on tokio's blocking pool and returns its result.
///
/// # Errors
/// What `f` returns; [`Error::Storage`] (kind `Io`) if the task panicked or
/// the runtime is shutting down.
pub(crate) async fn run<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::Storage(StorageError::with_source(StorageErrorKind::Io, e))),
    }
}
