//! Time sources: [`Clock`], [`SystemClock`] and [`ManualClock`] for tests.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time. Injected through [`crate::Config`] so tests can
/// move time without sleeping.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// Time elapsed on a clock that never steps (no NTP correction, no
    /// manual set), from any fixed origin. Pruning of revocation entries
    /// never runs ahead of it, so a wall clock that jumps forward and is then
    /// stepped back cannot prune an entry a live token still needs. The
    /// default follows [`Clock::now`] (no such protection): a clock that can
    /// step should override it.
    fn monotonic(&self) -> Duration {
        self.now().duration_since(UNIX_EPOCH).unwrap_or_default()
    }
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned call
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    #[allow(clippy::disallowed_methods)] // the monotonic counterpart of the one sanctioned call
    fn monotonic(&self) -> Duration {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
    /// The monotonic time (ms): moved by `advance`, not by `set`.
    mono: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock set to `start`.
    #[must_use]
    pub fn new(start: SystemTime) -> Self {
        Self { millis: Arc::new(AtomicU64::new(to_millis(start))), mono: Arc::new(AtomicU64::new(0)) }
    }

    /// A clock set to a fixed, realistic instant (2026-01-01T00:00:00Z).
    #[must_use]
    pub fn fixed() -> Self {
        Self::new(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
    }

    /// Moves the clock forward by `d`: time passes (wall and monotonic).
    pub fn advance(&self, d: Duration) {
        self.millis.fetch_add(duration_millis(d), Ordering::SeqCst);
        self.mono.fetch_add(duration_millis(d), Ordering::SeqCst);
    }

    /// Sets the wall clock to `t`, forward or backward, without time passing
    /// (a step, as NTP or an operator makes: [`Clock::monotonic`] stays).
    pub fn set(&self, t: SystemTime) {
        self.millis.store(to_millis(t), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        from_millis(self.millis.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.mono.load(Ordering::SeqCst))
    }
}

/// Milliseconds since the Unix epoch; times before it clamp to 0.
pub(crate) fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, duration_millis)
}

pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_advances_and_clones_share_time() {
        let c = ManualClock::fixed();
        let c2 = c.clone();
        let t0 = c.now();
        c.advance(Duration::from_secs(5));
        assert_eq!(c2.now().duration_since(t0).unwrap(), Duration::from_secs(5));
    }

    #[test]
    fn millis_round_trip() {
        let t = from_millis(1_767_225_600_123);
        assert_eq!(to_millis(t), 1_767_225_600_123);
        assert_eq!(to_millis(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
