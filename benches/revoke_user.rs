//! A user-wide revocation under load: `revoke_user` of a user with many
//! sessions while another thread serves a bystander user (issue 24 item 7:
//! the bystander's calls keep completing, p99 under 50 ms).
//!
//!     cargo bench --bench revoke_user                      # redb, 200,000 sessions
//!     cargo bench --all-features --bench revoke_user       # and on redis-server, 20,000
//!     CLOAKROOM_BENCH_QUICK=1 cargo bench --bench revoke_user   # 20,000 / 2,000 (smoke test)
//!
//! The bystander runs rounds of validate + create + flush (its create waits
//! for the writer, so a round measures the write path's latency as the
//! revocation's steps go by, not an enqueue); the figures are the rounds'
//! p50, p99 and worst during the revocation, and how many rounds ran.
//! Not criterion: what is measured is another thread's tail during one long
//! call, which criterion's per-iteration sampling does not express. The
//! Redis run starts its own `redis-server` on a free loopback port (the
//! shared runner of `src/bin/cloakroom/redis_side.rs`) and stops it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a bench: wall time is what it measures

#[cfg(feature = "redis")]
#[path = "../src/bin/cloakroom/redis_side.rs"]
#[allow(unreachable_pub)]
mod redis_side;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cloakroom::{Config, Durability, NewSession, Scope, Store};

fn quick() -> bool {
    std::env::var_os("CLOAKROOM_BENCH_QUICK").is_some()
}

fn config() -> Config {
    Config::builder().durability(Durability::Eventual).cache_capacity(1 << 20).build().unwrap()
}

/// Revokes `n` sessions of one user while a bystander thread runs rounds;
/// prints one line of figures.
fn run(label: &str, s: &Store, n: usize) {
    for _ in 0..n {
        s.create(NewSession::new("whale")).unwrap();
    }
    s.flush().unwrap();
    let bystander = s.create(NewSession::new("bystander")).unwrap().token.to_string();
    let done = AtomicBool::new(false);
    let (revoked, took, mut lat) = std::thread::scope(|sc| {
        let other = sc.spawn(|| {
            let mut lat = Vec::new();
            while !done.load(Ordering::Acquire) {
                let t0 = Instant::now();
                s.validate(&bystander).unwrap();
                s.create(NewSession::new("bystander")).unwrap();
                s.flush().unwrap();
                lat.push(t0.elapsed());
            }
            lat
        });
        let t0 = Instant::now();
        let revoked = s.revoke_user("whale", Scope::All).unwrap();
        let took = t0.elapsed();
        done.store(true, Ordering::Release);
        (revoked, took, other.join().unwrap())
    });
    assert_eq!(revoked, n, "every session of the user revoked");
    lat.sort_unstable();
    let at = |q: usize| lat.get((lat.len() * q / 100).min(lat.len().saturating_sub(1))).copied().unwrap_or_default();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "revoke_user/{label}: {n} sessions revoked in {:.0} ms; bystander rounds during it: {}, \
         p50 {:.2} ms, p99 {:.2} ms, worst {:.2} ms",
        ms(took),
        lat.len(),
        ms(at(50)),
        ms(at(99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
}

fn main() {
    let n = if quick() { 20_000 } else { 200_000 };
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("revoke.redb"), config()).unwrap();
    run("redb", &s, n);
    s.close().unwrap();

    #[cfg(feature = "redis")]
    match redis_side::RedisServer::start("always") {
        Ok(server) => {
            let cfg = config().to_builder().server_key(&[7; 32]).build().unwrap();
            let s = Store::redis(&server.url(), cfg).unwrap();
            run("redis", &s, n / 10);
            s.close().unwrap();
        }
        Err(m) => eprintln!("revoke_user: {m}; the Redis run is left out"),
    }
}
