//! Read-mostly state behind a swapped pointer.
//!
//! A reader loads the current value with no lock and no write to memory shared
//! with other threads (an `ArcSwap` load uses a per-thread slot); a writer
//! copies the value under a mutex, changes the copy and publishes it. For
//! state read on every request and changed rarely: the access-token keys, the
//! revocation bits read by `verify_access`, the not-before cut-offs.

use std::sync::Arc;

use crate::sync::{Mutex, step};
use arc_swap::ArcSwap;

/// A value readers load without locking; writers replace it copy-on-write.
#[derive(Default)]
pub(crate) struct Snapshot<T> {
    current: ArcSwap<T>,
    edit: Mutex<()>,
}

impl<T: Clone> Snapshot<T> {
    pub(crate) fn new(value: T) -> Self {
        Self { current: ArcSwap::from_pointee(value), edit: Mutex::new(()) }
    }

    /// The current value. Hold the guard briefly: it pins this version.
    pub(crate) fn read(&self) -> arc_swap::Guard<Arc<T>> {
        self.current.load()
    }

    /// Applies `f` to a copy of the current value and publishes the copy.
    /// Writers are serialised, so no change is lost; readers see the old or
    /// the new value, never a mix.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let _edit = self.edit.lock();
        let mut value = T::clone(&self.current.load());
        step();
        let r = f(&mut value);
        self.current.store(Arc::new(value));
        r
    }

    /// Like [`Snapshot::write`], but only when `needed` says the current value
    /// must change (checked under the writers' lock, so no change is missed):
    /// a no-op costs no copy.
    pub(crate) fn write_if(&self, needed: impl FnOnce(&T) -> bool, f: impl FnOnce(&mut T)) {
        let _edit = self.edit.lock();
        let current = self.current.load_full();
        if !needed(&current) {
            return;
        }
        let mut value = T::clone(&current);
        step();
        f(&mut value);
        self.current.store(Arc::new(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_keep_their_version_while_a_writer_publishes() {
        let s = Snapshot::new(vec![1]);
        let old = s.read();
        s.write(|v| v.push(2));
        assert_eq!(**old, vec![1]);
        assert_eq!(**s.read(), vec![1, 2]);
    }

    #[test]
    fn write_if_publishes_only_a_needed_change() {
        let s = Snapshot::new(vec![1]);
        let before = s.read();
        s.write_if(|v| !v.contains(&1), |v| v.push(1));
        assert!(Arc::ptr_eq(&before, &s.read()), "nothing needed: the same value, no copy");
        s.write_if(|v| !v.contains(&2), |v| v.push(2));
        assert_eq!(**s.read(), vec![1, 2]);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let s = Arc::new(Snapshot::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || (0..500).for_each(|_| s.write(|n| *n += 1)))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(**s.read(), 2000);
    }
}
