#![allow(clippy::disallowed_methods)] // benchmarks measure wall time
//! cloakroom vs a real `redis-server`, side by side in one run.
//!
//! The bench starts `redis-server` itself on free 127.0.0.1 ports (`--save ''
//! --appendonly yes`, one with `appendfsync always`, one with `everysec`) and
//! stops it at the end. Without `redis-server` on PATH it says how to install it
//! and runs only the cloakroom half. `CLOAKROOM_BENCH_QUICK=1` shortens every
//! measurement (used by CI to catch regressions in the comparison code).
//!
//! Run: `cargo bench --bench vs_redis` (with `--features redis` it also
//! benches cloakroom on Redis, `Store::redis`, against the plain Redis store on
//! the same server: groups `on-redis-*`). Ratios are printed after each pair
//! from criterion's medians.

#[path = "../src/bin/cloakroom/redis_side.rs"]
mod redis_side;

use std::hint::black_box;

use std::time::Duration;

use cloakroom::{Config, Durability, NewSession, Scope, Store};
use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use redis_side::{RedisServer, RedisSessions};

const TTL: u64 = 7 * 24 * 3600;

#[path = "support/harness.rs"]
mod harness;

fn quick() -> bool {
    std::env::var_os("CLOAKROOM_BENCH_QUICK").is_some()
}

fn tune(g: &mut BenchmarkGroup<'_, WallTime>, slow: bool) {
    if quick() {
        g.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_secs(1));
    } else if slow {
        g.sample_size(10).measurement_time(Duration::from_secs(8));
    }
}

fn median_ns(group: &str, bench: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    // criterion stores `a/b` benchmark ids in directories named `a_b`.
    let path = format!("{dir}/criterion/{group}/{}/new/estimates.json", bench.replace('/', "_"));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

/// Said at the start and end of a quick run, so its figures are never quoted as the documented ones.
const QUICK_NOTE: &str = "vs_redis: QUICK MODE (CLOAKROOM_BENCH_QUICK): a smoke run of the comparison code \
(10,000 loaded sessions, 0.2 s warm-up, 1 s per measurement, 10 samples). Its figures are NOT the \
documented ones: docs/benchmarks-history.md explains why they differ; docs/benchmarks.md has the full run.";

fn ratio(group: &str, what: &str) {
    ratio_of(group, what, &format!("cloakroom/{what}"), &format!("redis/{what}"));
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
/// Prints redis/cloakroom of the medians of benches `ours` and `theirs` in `group`.
fn ratio_of(group: &str, what: &str, ours: &str, theirs: &str) {
    let (c, r) = (median_ns(group, ours), median_ns(group, theirs));
    if let (Some(c), Some(r)) = (c, r) {
        println!(
            "RATIO{} {group}/{what}: redis/cloakroom time = {:.1}× (cloakroom {:.0} ns, redis {:.0} ns median)",
            if quick() { " (smoke run)" } else { "" },
            r / c,
            c,
            r
        );
    }
}

fn store(dir: &std::path::Path, name: &str, durability: Durability) -> Store {
    let mut b = Config::builder();
    b.durability(durability).sweep_interval(None);
    Store::open(dir.join(name), b.build().unwrap()).unwrap()
}

fn main() {
    if quick() {
        println!("{QUICK_NOTE}");
    }
    let mut c = Criterion::default().configure_from_args();
    let dir = tempfile::tempdir().unwrap();
    let servers = match (RedisServer::start("always"), RedisServer::start("everysec")) {
        (Ok(a), Ok(e)) => Some((a, e)),
        (Err(m), _) | (_, Err(m)) => {
            eprintln!("vs_redis: {m}\nvs_redis: running the cloakroom half only");
            None
        }
    };
    let url = |durable: bool| servers.as_ref().map(|(a, e)| if durable { a.url() } else { e.url() });
    let n_loaded = if quick() { 10_000 } else { 100_000 };

    // ---- validate (hit) ----
    {
        let s = store(dir.path(), "validate.redb", Durability::Eventual);
        let toks: Vec<String> = (0..n_loaded)
            .map(|i| s.create(NewSession::new(format!("u{}", i % 1000))).unwrap().token.to_string())
            .collect();
        // Measure with the setup folded into the file, not while the applier folds it.
        s.checkpoint().unwrap();
        let mut g = c.benchmark_group("validate");
        tune(&mut g, false);
        g.throughput(Throughput::Elements(1));
        let mut i = 0usize;
        g.bench_function("cloakroom/1-caller", |b| {
            b.iter(|| {
                i = i.wrapping_add(7919);
                black_box(s.validate(&toks[i % toks.len()]).unwrap())
            })
        });
        if let Some(u) = url(false) {
            let mut r = RedisSessions::connect(&u, TTL).unwrap();
            let users: Vec<String> = (0..n_loaded).map(|i| format!("u{}", i % 1000)).collect();
            let rt: Vec<String> = users.chunks(1000).flat_map(|c| r.create_many(c).unwrap()).map(|c| c.token).collect();
            g.bench_function("redis/1-caller", |b| {
                b.iter(|| {
                    i = i.wrapping_add(7919);
                    assert!(r.validate(&rt[i % rt.len()]).unwrap());
                })
            });
        }
        g.finish();
        ratio("validate", "1-caller");
    }

    // ---- create: durable and eventual, 1 and 64 callers ----
    for (mode, durability, durable) in
        [("immediate-vs-always", Durability::Immediate, true), ("eventual-vs-everysec", Durability::Eventual, false)]
    {
        let group = format!("create-{mode}");
        let s = store(dir.path(), &format!("create-{mode}.redb"), durability);
        let mut g = c.benchmark_group(&group);
        tune(&mut g, true);
        g.throughput(Throughput::Elements(1));
        g.bench_function("cloakroom/1-caller", |b| b.iter(|| black_box(s.create(NewSession::new("u")).unwrap())));
        let per = if quick() { 5 } else { 20 };
        g.throughput(Throughput::Elements(64 * per as u64));
        g.bench_function("cloakroom/64-callers", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        harness::parallel(64, per, &|t, _| drop(s.create(NewSession::new(format!("u{t}"))).unwrap()))
                    })
                    .sum()
            })
        });
        if let Some(u) = url(durable) {
            let mut r = RedisSessions::connect(&u, TTL).unwrap();
            g.throughput(Throughput::Elements(1));
            g.bench_function("redis/1-caller", |b| b.iter(|| black_box(r.create("u").unwrap())));
            let conns: Vec<std::sync::Mutex<RedisSessions>> =
                (0..64).map(|_| std::sync::Mutex::new(RedisSessions::connect(&u, TTL).unwrap())).collect();
            g.throughput(Throughput::Elements(64 * per as u64));
            g.bench_function("redis/64-callers", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            harness::parallel(64, per, &|t, _| {
                                drop(conns[t].lock().unwrap().create(&format!("u{t}")).unwrap())
                            })
                        })
                        .sum()
                })
            });
        }
        g.finish();
        ratio(&group, "1-caller");
        ratio(&group, "64-callers");
    }

    // ---- revoke one; revoke all of a user's 10 sessions; refresh rotation ----
    {
        let s = store(dir.path(), "revoke.redb", Durability::Immediate);
        let mut g = c.benchmark_group("revoke");
        tune(&mut g, true);
        g.bench_function("cloakroom/one", |b| {
            b.iter_batched(
                || s.create(NewSession::new("u")).unwrap().session.id(),
                |id| s.revoke(id).unwrap(),
                criterion::BatchSize::SmallInput,
            )
        });
        let mut k = 0u64;
        g.bench_function("cloakroom/user-10", |b| {
            b.iter_batched(
                || {
                    k += 1;
                    let u = format!("ten-{k}");
                    for _ in 0..10 {
                        s.create(NewSession::new(u.clone())).unwrap();
                    }
                    u
                },
                |u| assert_eq!(s.revoke_user(&u, Scope::All).unwrap(), 10),
                criterion::BatchSize::PerIteration,
            )
        });
        let mut pair = s.issue_tokens(&s.create(NewSession::new("r")).unwrap().token.to_string()).unwrap();
        g.bench_function("cloakroom/refresh", |b| b.iter(|| pair = s.refresh(&pair.refresh.to_string()).unwrap()));
        if let Some(u) = url(true) {
            // Setup and measured routine both need the connection: a RefCell, used one at a time.
            let r = std::cell::RefCell::new(RedisSessions::connect(&u, TTL).unwrap());
            g.bench_function("redis/one", |b| {
                b.iter_batched(
                    || r.borrow_mut().create("u").unwrap().id,
                    |id| r.borrow_mut().revoke(&id, "u").unwrap(),
                    criterion::BatchSize::SmallInput,
                )
            });
            g.bench_function("redis/user-10", |b| {
                b.iter_batched(
                    || {
                        k += 1;
                        let u = format!("ten-{k}");
                        for _ in 0..10 {
                            r.borrow_mut().create(&u).unwrap();
                        }
                        u
                    },
                    |u| assert_eq!(r.borrow_mut().revoke_user(&u).unwrap(), 10),
                    criterion::BatchSize::PerIteration,
                )
            });
            let id = r.borrow_mut().create("r").unwrap().id;
            let mut rt = r.borrow_mut().issue_refresh(&id).unwrap();
            g.bench_function("redis/refresh", |b| b.iter(|| rt = r.borrow_mut().refresh(&rt).unwrap().unwrap()));
        }
        g.finish();
        for w in ["one", "user-10", "refresh"] {
            ratio("revoke", w);
        }
    }
    // ---- cloakroom on Redis (`Store::redis`, feature `redis`) vs the plain Redis store ----
    #[cfg(feature = "redis")]
    if let Some(u) = url(true) {
        on_redis(&mut c, &u, n_loaded);
    }
    c.final_summary();
    drop(servers);
}

/// The same Store API on a Redis server (`appendfsync always`, Immediate
/// durability) against the hand-written Redis store on the same server: a
/// cached validate, a validate that must ask Redis (`validate_strict`, one
/// round trip), and create, revoke and refresh at 1 and 64 callers.
#[cfg(feature = "redis")]
fn on_redis(c: &mut Criterion, url: &str, n_loaded: usize) {
    use cloakroom::RedisOptions;
    let cfg = Config::builder().server_key(&[0x5a; 32]).sweep_interval(None).build().unwrap();
    let mut o = RedisOptions::default();
    o.prefix = "bench".into();
    o.pool_size = 64;
    let s = Store::redis_with(url, o, cfg).unwrap();
    for _ in 0..5000 {
        if s.stats().following == Some(true) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1)); // the follower's first connect, not time
    }
    let mut r = RedisSessions::connect(url, TTL).unwrap();
    let conns: Vec<std::sync::Mutex<RedisSessions>> =
        (0..64).map(|_| std::sync::Mutex::new(RedisSessions::connect(url, TTL).unwrap())).collect();
    let per = if quick() { 5 } else { 20 };

    // validate: hit (node cache) and a read from Redis, vs a Redis GET. The
    // hit's working set is 1,000 sessions, each validated again within the
    // staleness bound (1 s), so about one validate per session per second
    // re-reads Redis, as in an app whose active sessions make requests more
    // often than once a second; a session seen less often than the bound
    // costs one round trip (the "miss" line).
    {
        let n = n_loaded.min(1_000);
        let toks: Vec<String> =
            (0..n).map(|i| s.create(NewSession::new(format!("u{}", i % 1000))).unwrap().token.to_string()).collect();
        let users: Vec<String> = (0..n).map(|i| format!("u{}", i % 1000)).collect();
        let rt: Vec<String> = users.chunks(1000).flat_map(|c| r.create_many(c).unwrap()).map(|c| c.token).collect();
        let mut g = c.benchmark_group("on-redis-validate");
        tune(&mut g, false);
        g.throughput(Throughput::Elements(1));
        let mut i = 0usize;
        g.bench_function("cloakroom/hit", |b| {
            b.iter(|| {
                i = i.wrapping_add(7919);
                black_box(s.validate(&toks[i % toks.len()]).unwrap())
            })
        });
        g.bench_function("cloakroom/miss", |b| {
            b.iter(|| {
                i = i.wrapping_add(7919);
                black_box(s.validate_strict(&toks[i % toks.len()]).unwrap())
            })
        });
        g.bench_function("redis/get", |b| {
            b.iter(|| {
                i = i.wrapping_add(7919);
                assert!(r.validate(&rt[i % rt.len()]).unwrap());
            })
        });
        g.finish();
        ratio_of("on-redis-validate", "hit", "cloakroom/hit", "redis/get");
        ratio_of("on-redis-validate", "miss", "cloakroom/miss", "redis/get");
    }

    // create, revoke, refresh at 1 and 64 callers.
    let mut g = c.benchmark_group("on-redis-write");
    tune(&mut g, true);
    g.throughput(Throughput::Elements(1));
    g.bench_function("cloakroom/create-1", |b| b.iter(|| black_box(s.create(NewSession::new("u")).unwrap())));
    g.bench_function("redis/create-1", |b| b.iter(|| black_box(r.create("u").unwrap())));
    g.bench_function("cloakroom/revoke-1", |b| {
        b.iter_batched(
            || s.create(NewSession::new("u")).unwrap().session.id(),
            |id| s.revoke(id).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    let rc = std::cell::RefCell::new(&mut r);
    g.bench_function("redis/revoke-1", |b| {
        b.iter_batched(
            || rc.borrow_mut().create("u").unwrap().id,
            |id| rc.borrow_mut().revoke(&id, "u").unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut pair = s.issue_tokens(&s.create(NewSession::new("r")).unwrap().token.to_string()).unwrap();
    g.bench_function("cloakroom/refresh-1", |b| b.iter(|| pair = s.refresh(&pair.refresh.to_string()).unwrap()));
    let id = rc.borrow_mut().create("r").unwrap().id;
    let mut rt = rc.borrow_mut().issue_refresh(&id).unwrap();
    g.bench_function("redis/refresh-1", |b| b.iter(|| rt = rc.borrow_mut().refresh(&rt).unwrap().unwrap()));

    g.throughput(Throughput::Elements(64 * per as u64));
    g.bench_function("cloakroom/create-64", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| harness::parallel(64, per, &|t, _| drop(s.create(NewSession::new(format!("u{t}"))).unwrap())))
                .sum()
        })
    });
    g.bench_function("redis/create-64", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    harness::parallel(64, per, &|t, _| drop(conns[t].lock().unwrap().create(&format!("u{t}")).unwrap()))
                })
                .sum()
        })
    });
    // Revokes of sessions made before the timed part: each caller revokes its own.
    g.bench_function("cloakroom/revoke-64", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let ids: Vec<std::sync::Mutex<Vec<_>>> = (0..64)
                        .map(|_| (0..per).map(|_| s.create(NewSession::new("u")).unwrap().session.id()).collect())
                        .map(std::sync::Mutex::new)
                        .collect();
                    harness::parallel(64, per, &|t, _| {
                        let id = ids[t].lock().unwrap().pop().unwrap();
                        s.revoke(id).unwrap();
                    })
                })
                .sum()
        })
    });
    g.bench_function("redis/revoke-64", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let ids: Vec<std::sync::Mutex<Vec<String>>> = (0..64)
                        .map(|t| (0..per).map(|_| conns[t].lock().unwrap().create("u").unwrap().id).collect())
                        .map(std::sync::Mutex::new)
                        .collect();
                    harness::parallel(64, per, &|t, _| {
                        let id = ids[t].lock().unwrap().pop().unwrap();
                        conns[t].lock().unwrap().revoke(&id, "u").unwrap();
                    })
                })
                .sum()
        })
    });
    // Refresh chains, one per caller.
    let chains: Vec<std::sync::Mutex<String>> = (0..64)
        .map(|t| {
            let tok = s.create(NewSession::new(format!("r{t}"))).unwrap().token.to_string();
            std::sync::Mutex::new(s.issue_tokens(&tok).unwrap().refresh.to_string())
        })
        .collect();
    g.bench_function("cloakroom/refresh-64", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    harness::parallel(64, per, &|t, _| {
                        let mut rt = chains[t].lock().unwrap();
                        *rt = s.refresh(&rt).unwrap().refresh.to_string();
                    })
                })
                .sum()
        })
    });
    let rchains: Vec<std::sync::Mutex<String>> = (0..64)
        .map(|t| {
            let mut con = conns[t].lock().unwrap();
            let id = con.create(&format!("r{t}")).unwrap().id;
            std::sync::Mutex::new(con.issue_refresh(&id).unwrap())
        })
        .collect();
    g.bench_function("redis/refresh-64", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    harness::parallel(64, per, &|t, _| {
                        let mut rt = rchains[t].lock().unwrap();
                        let next = conns[t].lock().unwrap().refresh(&rt).unwrap().unwrap();
                        *rt = next;
                    })
                })
                .sum()
        })
    });
    g.finish();
    for w in ["create-1", "revoke-1", "refresh-1", "create-64", "revoke-64", "refresh-64"] {
        ratio("on-redis-write", w);
    }
}
