//! Resident memory per cached session.
//!
//! `cargo run --release --example memory -- 1000000 1000000` fills a store with
//! 1,000,000 sessions (64-byte data) and a cache of 1,000,000, then prints the
//! resident set size. Run again with a cache of 64 and compare: the difference
//! divided by the session count is the cache's cost per session.

use cloakroom::{Config, Durability, NewSession, Store};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() -> Result<(), cloakroom::Error> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().unwrap_or(0));
    let n = args.next().unwrap_or(1_000_000);
    let cache = args.next().unwrap_or(n).max(64);
    // Removed on drop, whatever happens below.
    let dir = tempfile::tempdir().map_err(|_| cloakroom::Error::Closed)?;
    let mut b = Config::builder();
    b.durability(Durability::Eventual).cache_capacity(cache).cache_shards(64).db_cache_bytes(1 << 20);
    let store = Store::open(dir.path().join("m.redb"), b.build()?)?;
    let before = rss_bytes();
    for i in 0..n {
        store.create(NewSession::new(format!("user-{}", i % 100_000)).data(vec![0; 64]))?;
    }
    store.flush()?;
    let after = rss_bytes();
    let st = store.stats();
    println!(
        "sessions={n} cache_capacity={cache} cached={} rss_before={before} rss_after={after} delta_per_session={:.1}",
        st.cached_sessions,
        (after - before) as f64 / n as f64
    );
    store.close()?;
    Ok(())
}
