//! The one timing harness of the multi-caller benches: `threads` threads
//! released together by a barrier, each calling `f(thread, i)` `per` times;
//! the time is from the release to the last thread's end.

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Wall time of `threads` × `per` calls of `f(thread, i)`, all threads
/// started at once.
pub fn parallel(threads: usize, per: usize, f: &(dyn Fn(usize, usize) + Sync)) -> Duration {
    let barrier = Barrier::new(threads + 1);
    let mut start = Instant::now();
    // The scope joins the threads before it returns: timed from the common
    // start to the last thread's end.
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for i in 0..per {
                    f(t, i);
                }
            });
        }
        barrier.wait();
        start = Instant::now();
    });
    start.elapsed()
}
