//! The locks the cache and the revocation state use, and their interleaving
//! points. Normally `parking_lot`'s locks and a no-op [`step`]; built with
//! `RUSTFLAGS="--cfg shuttle"` they are `shuttle`'s, and [`step`] lets the
//! model checker switch threads, so the shuttle tests explore the
//! interleavings of cache fill, revocation, eviction and pruning.

#[cfg(not(shuttle))]
pub(crate) use parking_lot::{Mutex, RwLock};

/// A point where another thread may run (a model-checker yield under shuttle).
#[cfg(not(shuttle))]
#[inline(always)]
pub(crate) fn step() {}

#[cfg(shuttle)]
pub(crate) use model::{Mutex, RwLock, step};

#[cfg(shuttle)]
mod model {
    use std::sync::PoisonError;

    /// shuttle's mutex with `parking_lot`'s signature (no poisoning).
    #[derive(Default)]
    pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(shuttle::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> shuttle::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// shuttle's reader-writer lock with `parking_lot`'s signature.
    #[derive(Default)]
    pub(crate) struct RwLock<T>(shuttle::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub(crate) fn read(&self) -> shuttle::sync::RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(PoisonError::into_inner)
        }
        pub(crate) fn write(&self) -> shuttle::sync::RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(PoisonError::into_inner)
        }
    }

    pub(crate) fn step() {
        shuttle::thread::yield_now();
    }
}
