//! Freshness of what a node knows about a backend shared by several nodes
//! (Redis): whether this node's follower is connected and caught up (and since
//! when it is not), the staleness bound, and whether the shared data was
//! found wiped. The hit path and access-token checks read it; the follower
//! writes it.
//!
//! Every time here is the store's own [`Clock`] (this node's clock), never a
//! time another node wrote: freshness is measured where it is used.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::clock::{Clock, to_millis};
use crate::error::{Error, StorageError, StorageErrorKind};

/// `unsynced_since` while the follower is connected and caught up.
const FOLLOWING: u64 = u64::MAX;

/// What the hit path reads to decide whether a cached entry may be served.
pub(crate) struct Coherence {
    /// Since when (ms, this node's monotonic time) the follower has not been
    /// following; [`FOLLOWING`] while it is.
    unsynced_since: AtomicU64,
    /// The store's clock.
    clock: Arc<dyn Clock>,
    /// Cached entries older than this (ms) are re-read, and a node that has
    /// not been following for longer refuses access tokens.
    pub(crate) bound_ms: u64,
    /// The shared data was wiped, or lost writes, under this node: every call
    /// is refused until the store is reopened.
    wiped: AtomicBool,
    stop: AtomicBool,
    /// Wakes the subscriber's reconnect wait at close.
    wake: (Mutex<bool>, Condvar),
    /// Times the node flushed its cache and reloaded (connects and reconnects).
    pub(crate) resyncs: AtomicU64,
}

/// Why a node that is not following refuses an access token (the source of
/// its `Unavailable` error).
#[derive(Debug)]
struct NotFollowing {
    for_ms: u64,
    bound_ms: u64,
}

impl std::fmt::Display for NotFollowing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this node has not followed the other nodes' revocations for {} ms (longer than the staleness \
             bound, {} ms): access tokens are refused until its follower is connected again",
            self.for_ms, self.bound_ms
        )
    }
}

impl std::error::Error for NotFollowing {}

// Built and driven by the Redis follower only.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Coherence {
    /// Not following yet (since now, on `clock`).
    pub(crate) fn new(bound: Duration, clock: Arc<dyn Clock>) -> Coherence {
        let now = crate::clock::duration_millis(clock.monotonic());
        Coherence {
            unsynced_since: AtomicU64::new(now.min(FOLLOWING - 1)),
            clock,
            bound_ms: u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
            wiped: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            resyncs: AtomicU64::new(0),
        }
    }

    /// This node's monotonic time (ms, [`Clock::monotonic`]).
    fn mono_ms(&self) -> u64 {
        crate::clock::duration_millis(self.clock.monotonic())
    }

    /// This node's time (ms), on the store's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        to_millis(self.clock.now())
    }

    /// Whether a cached copy this node read (or made) at `fetched` (ms, this
    /// node's clock; 0 for never) may answer at `now` without asking the
    /// backend: only while following, never after a wipe, and only within the
    /// staleness bound. A `fetched` later than `now` (this clock moved back)
    /// is not fresh.
    pub(crate) fn fresh(&self, fetched: u64, now: u64) -> bool {
        self.synced() && !self.wiped() && now.checked_sub(fetched).is_some_and(|age| age <= self.bound_ms)
    }

    /// Whether this node may answer from what it holds in memory now (an
    /// access token's revocation and not-before checks): not after a wipe
    /// (`Wiped`), nor once it has not been following for longer than the
    /// staleness bound (`Unavailable`): it may have missed revocations since.
    /// How long is measured on the clock's monotonic time, so a wall clock
    /// stepped back does not restart the count (a node cut off stays refused).
    pub(crate) fn usable(&self) -> Result<(), Error> {
        let now = self.mono_ms();
        if self.wiped() {
            return Err(StorageError::new(StorageErrorKind::Wiped).into());
        }
        let since = self.unsynced_since.load(Ordering::Acquire);
        if since != FOLLOWING {
            let for_ms = now.saturating_sub(since);
            if for_ms > self.bound_ms {
                let why = NotFollowing { for_ms, bound_ms: self.bound_ms };
                return Err(StorageError::with_source(StorageErrorKind::Unavailable, why).into());
            }
        }
        Ok(())
    }

    /// Set by the subscriber: connected and caught up, or not. Going out of
    /// sync records when (an earlier, still unresolved, loss is kept).
    pub(crate) fn set_synced(&self, on: bool) {
        if on {
            self.unsynced_since.store(FOLLOWING, Ordering::Release);
        } else {
            let now = self.mono_ms().min(FOLLOWING - 1);
            let _ = self.unsynced_since.compare_exchange(FOLLOWING, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Whether the subscriber is connected and caught up.
    pub(crate) fn synced(&self) -> bool {
        self.unsynced_since.load(Ordering::Acquire) == FOLLOWING
    }

    /// Records that the shared data was wiped (or lost writes) under this
    /// node: from now on it serves nothing until reopened.
    pub(crate) fn set_wiped(&self) {
        self.wiped.store(true, Ordering::Release);
        self.set_synced(false);
    }

    /// Whether the shared data was found wiped.
    pub(crate) fn wiped(&self) -> bool {
        self.wiped.load(Ordering::Acquire)
    }

    /// `Err(Storage(Wiped))` once the shared data was found wiped.
    pub(crate) fn check_wiped(&self) -> Result<(), Error> {
        if self.wiped() { Err(StorageError::new(StorageErrorKind::Wiped).into()) } else { Ok(()) }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn kind(r: Result<(), Error>) -> Option<StorageErrorKind> {
        match r {
            Err(Error::Storage(e)) => Some(e.kind()),
            _ => None,
        }
    }

    /// Freshness is measured on this node's clock: not while unsynced, not
    /// past the bound, not for a stamp from this clock's future, never after
    /// a wipe; a node out of sync for longer than the bound refuses what it
    /// holds in memory (`Unavailable`), and `Wiped` once wiped.
    #[test]
    fn freshness_and_service_follow_this_nodes_clock_and_sync_state() {
        let clock = ManualClock::fixed();
        let c = Coherence::new(Duration::from_secs(1), Arc::new(clock.clone()));
        let now = c.now_ms();
        assert!(!c.fresh(now, now), "not fresh before the follower caught up");
        assert_eq!(kind(c.usable()), None, "within the bound of the open");
        c.set_synced(true);
        assert!(c.fresh(now, now));
        assert!(c.fresh(now, now + 1000));
        assert!(!c.fresh(now, now + 1001), "past the bound");
        assert!(!c.fresh(now + 1, now), "stamped in this clock's future");
        assert!(!c.fresh(0, now), "never fetched");
        c.set_synced(false);
        assert!(!c.fresh(now, now));
        clock.advance(Duration::from_millis(600));
        c.set_synced(false); // a later report keeps the first loss
        clock.advance(Duration::from_millis(401));
        assert_eq!(kind(c.usable()), Some(StorageErrorKind::Unavailable));
        c.set_synced(true);
        assert_eq!(kind(c.usable()), None);
        c.set_wiped();
        assert_eq!(kind(c.usable()), Some(StorageErrorKind::Wiped));
        assert!(!c.fresh(c.now_ms(), c.now_ms()));
    }

    /// Review finding: the fail-closed count of a node cut off from its
    /// backend runs on monotonic time. Stepping the wall clock back (NTP, an
    /// operator) used to restart it, and the node served access tokens
    /// again without following. Fails with the wall clock in `usable`.
    #[test]
    fn a_wall_clock_stepped_back_does_not_restart_the_fail_closed_count() {
        let clock = ManualClock::fixed();
        let c = Coherence::new(Duration::from_secs(1), Arc::new(clock.clone()));
        c.set_synced(true);
        c.set_synced(false);
        clock.advance(Duration::from_millis(1001));
        assert_eq!(kind(c.usable()), Some(StorageErrorKind::Unavailable));
        let back = clock.now() - Duration::from_secs(3600);
        clock.set(back);
        assert_eq!(kind(c.usable()), Some(StorageErrorKind::Unavailable), "still cut off after the wall step");
    }
}
