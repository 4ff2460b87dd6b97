use std::time::Duration;

use cloakroom::{Config, ManualClock, Store};

pub(crate) const MIN: Duration = Duration::from_secs(60);
pub(crate) const HOUR: Duration = Duration::from_secs(3600);

/// An in-memory store on a manual clock, with 1 h sessions and a 10 min idle timeout.
pub(crate) fn store() -> (Store, ManualClock) {
    let clock = ManualClock::fixed();
    let cfg = Config::builder()
        .session_ttl(HOUR)
        .idle_timeout(Some(10 * MIN))
        .touch_granularity(MIN)
        .clock(clock.clone())
        .build()
        .unwrap();
    (Store::in_memory(cfg).unwrap(), clock)
}

/// The same configuration for a file-backed store.
pub(crate) fn config(clock: &ManualClock) -> Config {
    Config::builder()
        .session_ttl(HOUR)
        .idle_timeout(Some(10 * MIN))
        .touch_granularity(MIN)
        .clock(clock.clone())
        .build()
        .unwrap()
}
