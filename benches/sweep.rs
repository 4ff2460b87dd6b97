#![allow(clippy::disallowed_methods)] // benchmarks measure wall time
//! Sweeper cost and reader latency during a sweep. Run: `cargo bench --bench sweep`.
//!
//! 1. `sweep/10k-expired-among-1M-live` vs `sweep/10k-expired-among-10k`: the cost
//!    follows the expired rows, not the table size. Timed: `sweep()` plus the
//!    checkpoint that folds its deletes into the file durably.
//! 2. Validate latency percentiles (p50, p99) of live sessions while a sweep
//!    deletes 1,000,000 expired sessions, against the same loop with no sweep.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cloakroom::{Config, Durability, ManualClock, NewSession, Store};
use criterion::{Criterion, Throughput};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn store(dir: &std::path::Path, name: &str, clock: &ManualClock) -> Store {
    let mut b = Config::builder();
    b.durability(Durability::Eventual).sweep_interval(None).clock(clock.clone()).session_ttl(7 * DAY);
    Store::open(dir.join(name), b.build().unwrap()).unwrap()
}

fn live(s: &Store, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| s.create(NewSession::new(format!("live-{i}")).without_idle_timeout()).unwrap().token.to_string())
        .collect()
}

fn doomed(s: &Store, n: usize) {
    for i in 0..n {
        s.create(NewSession::new(format!("doomed-{}", i % 5000)).ttl(Duration::from_secs(1))).unwrap();
    }
    // Measure with the setup folded into the file, not while the applier folds it.
    s.checkpoint().unwrap();
}

fn sweep_cost(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("sweep");
    g.sample_size(10).throughput(Throughput::Elements(10_000));
    for (name, n_live) in [("10k-expired-among-1M-live", 1_000_000), ("10k-expired-among-10k", 0)] {
        let clock = ManualClock::fixed();
        let s = store(dir.path(), name, &clock);
        live(&s, n_live);
        // Measure with the setup folded into the file, not while the applier folds it.
        s.checkpoint().unwrap();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    doomed(&s, 10_000);
                    clock.advance(Duration::from_secs(2));
                    // The creates' own fold into the file is not the sweep's cost.
                    s.checkpoint().unwrap();
                    let t = Instant::now();
                    let r = black_box(s.sweep().unwrap());
                    // Timed to the end: the deletes folded into the file durably.
                    s.checkpoint().unwrap();
                    total += t.elapsed();
                    assert_eq!(r.sessions_removed(), 10_000);
                }
                total
            });
        });
    }
    g.finish();
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Validates `tokens` round-robin until `stop` says so (or `n` calls); returns latencies in ns.
fn validate_loop(s: &Store, tokens: &[String], n: usize, until: impl Fn() -> bool) -> Vec<u64> {
    let mut lat = Vec::with_capacity(n.min(1 << 24));
    let mut i = 0;
    while lat.len() < n && !until() {
        let t = Instant::now();
        black_box(s.validate(&tokens[i % tokens.len()]).unwrap());
        lat.push(t.elapsed().as_nanos() as u64);
        i += 1;
    }
    lat.sort_unstable();
    lat
}

fn readers_during_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::fixed();
    let s = store(dir.path(), "readers.redb", &clock);
    let tokens = live(&s, 10_000);
    eprintln!("readers-during-sweep: creating 1,000,000 sessions to expire...");
    doomed(&s, 1_000_000);
    for t in &tokens {
        s.validate(t).unwrap(); // warm
    }
    let idle = validate_loop(&s, &tokens, 2_000_000, || false);
    clock.advance(Duration::from_secs(2));
    let done = std::sync::atomic::AtomicBool::new(false);
    let (during, report) = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let r = s.sweep().unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        });
        let lat = validate_loop(&s, &tokens, usize::MAX, || done.load(std::sync::atomic::Ordering::SeqCst));
        (lat, h.join().unwrap())
    });
    assert_eq!(report.sessions_removed(), 1_000_000);
    let (i50, i99) = (percentile(&idle, 0.5), percentile(&idle, 0.99));
    let (d50, d99) = (percentile(&during, 0.5), percentile(&during, 0.99));
    println!(
        "readers-during-sweep: sweep removed {} sessions in {:?} ({} batches)",
        report.sessions_removed(),
        report.duration,
        report.batches
    );
    println!("readers-during-sweep: idle   validate p50 {i50} ns, p99 {i99} ns ({} samples)", idle.len());
    println!("readers-during-sweep: during validate p50 {d50} ns, p99 {d99} ns ({} samples)", during.len());
    println!("readers-during-sweep: p99 ratio during/idle = {:.2}", d99 as f64 / i99 as f64);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    sweep_cost(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        readers_during_sweep();
    }
}
