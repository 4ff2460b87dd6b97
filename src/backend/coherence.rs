//! Freshness of cached entries for a backend shared by several nodes (Redis):
//! whether this node's subscriber is connected and caught up, and the
//! staleness bound. The hit path reads it; only the subscriber writes it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// What the hit path reads to decide whether a cached entry may be served.
pub(crate) struct Coherence {
    synced: AtomicBool,
    /// Cached entries older than this (ms) are re-read.
    pub(crate) bound_ms: u64,
    stop: AtomicBool,
    /// Wakes the subscriber's reconnect wait at close.
    wake: (Mutex<bool>, Condvar),
    /// Times the node flushed its cache and reloaded (connects and reconnects).
    pub(crate) resyncs: AtomicU64,
}

// Built and driven by the Redis follower only.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Coherence {
    pub(crate) fn new(bound: Duration) -> Coherence {
        Coherence {
            synced: AtomicBool::new(false),
            bound_ms: u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            resyncs: AtomicU64::new(0),
        }
    }

    /// Whether a cached copy fetched at `fetched` may answer at `now`.
    pub(crate) fn fresh(&self, fetched: u64, now: u64) -> bool {
        self.synced.load(Ordering::Acquire) && now.saturating_sub(fetched) <= self.bound_ms
    }

    /// Set by the subscriber: connected and caught up, or not.
    pub(crate) fn set_synced(&self, on: bool) {
        self.synced.store(on, Ordering::Release);
    }

    /// Whether the subscriber is connected and caught up.
    pub(crate) fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Stops the subscriber (it notices within one ping interval).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let mut woken = self.wake.0.lock();
        *woken = true;
        self.wake.1.notify_all();
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Waits up to `d` before the next connect attempt, or until stopped.
    pub(crate) fn pause(&self, d: Duration) {
        let mut woken = self.wake.0.lock();
        if !*woken {
            self.wake.1.wait_for(&mut woken, d);
        }
    }
}
